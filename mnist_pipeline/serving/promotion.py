"""The promotion gate: a new registered version takes `@champion` only if it is no worse.

package_model.py with `champion=auto` has just evaluated the new version through the
served path (see evaluation.py). The gate evaluates the current champion on the same sets,
in a process of its own, and lets `mlflow.validate_evaluation_results` decide: each figure
of the new version must reach the champion's minus `margin`. MetricThreshold's
`min_absolute_change` would demand an improvement; "no worse than the champion by more
than the margin" is an absolute `threshold`. The first version of a model becomes champion.

Both versions and the package run are tagged with the figures (`gate_served_accuracy`, ...),
the verdict (`gate_verdict`) and its reason (`gate_reason`); the champion's evaluation is
a run nested under the package run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from mnist_pipeline.cli import boolean
from mnist_pipeline.errors import UserError
from mnist_pipeline.serving import evaluation
from mnist_pipeline.tracking import signals
from mnist_pipeline.tracking.code_version import PROJECT_DIR

CHAMPION = "champion"
MARGIN = 0.002
PACKAGE = "mnist_pipeline"


def champion_mode(value: str | bool) -> str:
    """Return "true", "false" or "auto" from MLproject's text (yes/no/1/0 too) or a bool."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return "true" if boolean(value) else "false"
    except argparse.ArgumentTypeError:
        raise UserError(f"champion: expected true, false or auto, got {value!r}") from None


@dataclass(frozen=True)
class Verdict:
    """What the gate decided for `version`, against `champion` (None when there was none)."""

    version: str
    champion: str | None
    promoted: bool
    reason: str  # "served_accuracy 0.9931 >= 0.9921 (champion v2 0.9941 - 0.002), ..."
    figures: dict[str, float]  # the new version's
    champion_figures: dict[str, float]  # the champion's, on the same sets

    def line(self) -> str:
        """The one line the package prints: `gate: version 3 becomes champion: ...`."""
        if self.promoted:
            return f"gate: version {self.version} becomes champion: {self.reason}"
        return f"gate: version {self.version} stays behind champion v{self.champion}: {self.reason}"


def judge(
    version: str,
    figures: dict[str, float],
    champion: str,
    champion_figures: dict[str, float],
    margin: float = MARGIN,
) -> Verdict:
    """Compare the figures of two versions on the same sets with mlflow.validate_evaluation_results.

    Every figure of the champion's is a threshold: the new version's must be at least the
    champion's minus `margin`. The reason lists every comparison if it passes, else the
    ones that failed.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult

    # The served accuracy on the whole test set first, as the headline.
    metrics = sorted(champion_figures, key=lambda metric: metric != "served_accuracy")
    thresholds = {
        metric: MetricThreshold(threshold=champion_figures[metric] - margin, greater_is_better=True)
        for metric in metrics
    }
    try:
        mlflow.validate_evaluation_results(
            validation_thresholds=thresholds,
            candidate_result=EvaluationResult(metrics=figures, artifacts={}),
            baseline_result=EvaluationResult(metrics=champion_figures, artifacts={}),
        )
        promoted = True
    except MlflowException as error:
        # ModelValidationFailedException, which MLflow does not export, is a BAD_REQUEST.
        if error.error_code != "BAD_REQUEST":
            raise
        promoted = False
    comparisons = []
    for metric, threshold in thresholds.items():
        value = figures.get(metric)
        passed = value is not None and value >= threshold.threshold
        if promoted or not passed:
            # Four decimals, or as many as it takes for a figure below its threshold to read so.
            digits = 4
            while not passed and value is not None and digits < 8:
                if f"{value:.{digits}f}" != f"{threshold.threshold:.{digits}f}":
                    break
                digits += 1
            shown = "missing" if value is None else f"{value:.{digits}f}"
            comparisons.append(
                f"{metric} {shown} {'>=' if passed else '<'} {threshold.threshold:.{digits}f} "
                f"(champion v{champion} {champion_figures[metric]:.{digits}f} - {margin:g})"
            )
    return Verdict(version, champion, promoted, ", ".join(comparisons), figures, champion_figures)


def gate(
    name: str,
    version: str,
    figures: dict[str, float],
    request_sets: list[evaluation.RequestSet],
    margin: float = MARGIN,
) -> Verdict:
    """Move `@champion` of the registered model `name` to `version` if it is no worse.

    `figures` are the new version's, from the served path on `request_sets`; the champion
    is evaluated on the very same sets in a process of its own. Tags both versions and the
    active run; returns the verdict.
    """
    import mlflow

    client = mlflow.MlflowClient()
    judged, champion = "", client.get_registered_model(name).aliases.get(CHAMPION)
    # Another package may move the alias while this one evaluates (minutes): judge again
    # against the champion that it names now.
    while judged != champion:
        judged = champion
        if champion is None:
            verdict = Verdict(version, None, True, "no champion before", figures, {})
        else:
            champion_figures = evaluate_in_own_process(
                f"models:/{name}/{champion}",
                f"champion v{champion} on the sets of v{version}",
                request_sets,
            )
            verdict = judge(version, figures, champion, champion_figures, margin)
        champion = client.get_registered_model(name).aliases.get(CHAMPION)
    record(name, verdict)
    return verdict


def record(name: str, verdict: Verdict) -> None:
    """Tag both versions and the active run with the verdict; move the alias if promoted."""
    import mlflow

    client = mlflow.MlflowClient()
    outcome = "champion" if verdict.promoted else f"behind champion v{verdict.champion}"
    version_tags = {"gate_verdict": outcome, "gate_reason": verdict.reason}
    for metric, value in verdict.figures.items():
        client.set_model_version_tag(name, verdict.version, f"gate_{metric}", f"{value:.4f}")
    for tag, value in version_tags.items():
        client.set_model_version_tag(name, verdict.version, tag, value)
    run_tags = dict(version_tags)
    for metric, value in verdict.figures.items():
        champion = verdict.champion_figures.get(metric)
        run_tags[f"gate_{metric}"] = (
            f"v{verdict.version} {value:.4f}"
            if champion is None
            else f"v{verdict.version} {value:.4f}, champion v{verdict.champion} {champion:.4f}"
        )
    mlflow.set_tags(run_tags)
    if verdict.champion is not None:
        kept = "replaced by" if verdict.promoted else "kept against"
        for metric, value in verdict.champion_figures.items():
            client.set_model_version_tag(name, verdict.champion, f"gate_{metric}", f"{value:.4f}")
        client.set_model_version_tag(
            name, verdict.champion, "gate_verdict", f"{kept} version {verdict.version}"
        )
        client.set_model_version_tag(name, verdict.champion, "gate_reason", verdict.reason)
    if verdict.promoted:
        crown(name, verdict.version, verdict.reason)


def crown(name: str, version: str, reason: str) -> None:
    """Move `@champion` to `version`, and tag the version with why."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, "champion_reason", reason)
    client.set_registered_model_alias(name, CHAMPION, version)


def evaluate_in_own_process(
    model_uri: str, run_name: str, request_sets: list[evaluation.RequestSet]
) -> dict[str, float]:
    """Evaluate `model_uri` on `request_sets` through the served path in a new Python;
    return its figures.

    The model carries its own copy of this package (code_paths), which this process has
    already imported in another version. The evaluation is logged to a run named
    `run_name`, nested under the active run; its progress lines are printed on stderr.
    """
    import mlflow

    parent = mlflow.active_run()
    # A process that has imported TensorFlow must not fork (PITFALLS.md, item 19).
    context = multiprocessing.get_context("spawn")
    # A spawned process starts with this process's sys.path, where MLflow has put the code
    # folder of every model loaded here first: the child must import this package from the
    # project. The pool starts its process in submit.
    saved_path = list(sys.path)
    sys.path.insert(0, str(PROJECT_DIR))
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            evaluated = pool.submit(
                _evaluate,
                model_uri,
                run_name,
                mlflow.get_tracking_uri(),
                parent.info.experiment_id if parent else None,
                parent.info.run_id if parent else None,
                request_sets,
            )
        finally:
            sys.path[:] = saved_path
        try:
            evaluations = evaluated.result()
        except KeyboardInterrupt:
            # Stopped by SIGINT or SIGTERM (see tracking/signals.py): the child stops too,
            # ending its run KILLED, rather than finishing an evaluation nobody waits for.
            for child in multiprocessing.active_children():
                child.terminate()
            raise
    for summary in evaluations.values():
        print(f"{summary[1]} ({run_name})", file=sys.stderr)
    return {metric: accuracy for metric, (accuracy, _) in evaluations.items()}


def _evaluate(
    model_uri: str,
    run_name: str,
    tracking_uri: str,
    experiment_id: str | None,
    parent_run_id: str | None,
    request_sets: list[evaluation.RequestSet],
) -> dict[str, tuple[float, str]]:
    """In the child process: {metric: (accuracy, progress line)} of `model_uri` on the sets."""
    import mlflow

    signals.install()
    mlflow.set_tracking_uri(tracking_uri)
    with (
        tempfile.TemporaryDirectory() as staging,
        mlflow.start_run(
            experiment_id=experiment_id, parent_run_id=parent_run_id, run_name=run_name
        ),
        signals.killed_when_stopped(),
    ):
        model = _load_with_its_own_code(model_uri, staging)
        results = [evaluation.evaluate(model, request_set) for request_set in request_sets]
        mlflow.log_metrics({result.metric: result.accuracy for result in results})
    return {result.metric: (result.accuracy, result.summary()) for result in results}


def _load_with_its_own_code(model_uri: str, staging: str):
    """Load a pyfunc model so that it runs the package code it carries, not this process's.

    This process imported the project's package to run this function, and Python would
    hand the model those modules. They step aside while the model loads and imports its
    own copy, which the model keeps; then they come back for the evaluation code. The
    model is downloaded to `staging` first: finding it in the store imports the project's
    tracking-store plugin, which must not happen while the model imports its code.
    """
    import mlflow

    local_path = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=staging)
    ours = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == PACKAGE or name.startswith(f"{PACKAGE}.")
    }
    try:
        return mlflow.pyfunc.load_model(local_path)
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]
        sys.modules.update(ours)
