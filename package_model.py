"""package: bundle a trained CNN with its preprocessing into a pyfunc model, saved to ./model.

Reads a train run (`--train_run`, or `best`: the finished train run with the highest
test accuracy in `--experiment` or under `--parent_run`), or the workshop's
`--model_dir` (a train run's logged model under ./mlruns). Follows the lineage back
to the preprocess run's `transform.json`, logs the model from code (served_model.py)
to this run, registers a new version of the model named after the dataset, and saves
the same model to `--output_dir`, replacing what was there in one move.

Then evaluates the logged model as it is served (see mnist_pipeline/serving/evaluation.py): all
test images as frames, 2,000 of them as PNG files and, for mnist, the drawn digits of
drawn_digits/ and the typed ones of font_digits/, and the evaluation part of the drawing
page's feedback in the experiment `--feedback` once it holds 20 drawings
(mnist_pipeline/feedback.py). Logs `served_accuracy`, `served_png_accuracy`,
`drawn_accuracy`, `fonts_accuracy` and `feedback_accuracy` with the evaluator's metrics,
per-class reports and confusion matrices, and tags the run and the registered version with
the same figures.

`--champion true` moves the alias `champion` to the new version; `--champion auto` moves
it only if the new version is no worse than the current champion, by more than `--margin`,
on the same sets (see mnist_pipeline/serving/promotion.py).

$ mlflow run . -e package --env-manager local -P train_run=<train run id>
$ mlflow run . -e package --env-manager local -P train_run=<train run id> -P champion=auto
"""

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from mnist_pipeline import files
from mnist_pipeline.cli import (
    USER_ERRORS,
    Parser,
    arguments_for,
    boolean,
    fail,
    non_negative_float,
    stage_run,
)
from mnist_pipeline.data.transform import TRANSFORM_FILE, TransformSpec, load_arrays
from mnist_pipeline.errors import UserError
from mnist_pipeline.feedback import FEEDBACK_EXPERIMENT, MIN_EVALUATION_DRAWINGS, evaluation_part
from mnist_pipeline.serving import evaluation, promotion, requirements
from mnist_pipeline.serving.drawn_digits import DRAWN_DIGITS
from mnist_pipeline.serving.font_digits import FONT_DIGITS
from mnist_pipeline.tracking.code_version import PROJECT_DIR, copy_package_modules

SERVED_MODEL_CODE = "mnist_pipeline/serving/served_model.py"
CHAMPION = promotion.CHAMPION


def build_parser() -> Parser:
    parser = Parser(prog="package_model.py", description=__doc__.splitlines()[0])
    parser.add_argument("--train_run", help="a train run ID, or 'best'")
    parser.add_argument("--model_dir", help="or a train run's logged model under ./mlruns")
    parser.add_argument("--dataset", help="mnist or fashion: of the newest or best train run")
    parser.add_argument("--experiment", help="with train_run=best: an experiment name or ID")
    parser.add_argument("--parent_run", help="with train_run=best: a train_batch run ID")
    parser.add_argument("--output_dir", help="where the served model is saved")
    parser.add_argument(
        "--register",
        type=boolean,
        help="register a new version of the model named after the dataset",
    )
    parser.add_argument(
        "--champion",
        type=champion_argument,
        help="true: move the alias 'champion' to the new version (implied by train_run=best); "
        "auto: only if it is no worse than the champion on the same sets",
    )
    parser.add_argument(
        "--margin",
        type=non_negative_float,
        help="with champion=auto: how much lower than the champion's each accuracy may be",
    )
    parser.add_argument(
        "--feedback",
        help="evaluate on the drawing page's feedback in this experiment too ('' for none)",
    )
    parser.take_defaults_from(package)
    return parser


def champion_argument(text: str) -> str:
    """argparse type for --champion: true, false or auto."""
    try:
        return promotion.champion_mode(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("champion: ")) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stage_run("package", parser, args, __file__) as run:
            summary = package(**arguments_for(package, args))
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    print(f"package run {run.info.run_id}: {summary}")
    # Absolute, as the stage may run in another folder (mlflow run), and quoted for pasting.
    model = shlex.quote(str(Path(args.output_dir).resolve()))
    print(f"Serve it with: mlflow models serve -m {model} --env-manager local -p 5000")
    return 0


def package(
    train_run: str = "",
    model_dir: str = "",
    dataset: str = "mnist",
    experiment: str = "",
    parent_run: str = "",
    output_dir: str | Path = "model",
    register: bool = True,
    champion: str = "false",
    margin: float = promotion.MARGIN,
    feedback: str = FEEDBACK_EXPERIMENT,
) -> str:
    """Bundle a train run's model with its transform, log it, save it to `output_dir`.

    The train run is `train_run` (an ID, or "best": the highest test accuracy in
    `experiment` or under `parent_run`), the one whose logged model is at `model_dir`,
    or the newest finished one of `dataset`. Logs to the active MLflow run (MLflow starts
    one if none is active), registers a new version of the model named after the dataset
    if `register`, and moves the alias `champion` to it if `champion` is "true", or if it is
    "auto" and the version passes the promotion gate (no accuracy lower than the champion's
    by more than `margin`; see promotion.gate). Before saving, evaluates the logged model as
    it is served (see evaluate_served), with the feedback in the experiment `feedback`, and
    tags the version with the figures. Returns a summary line.
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from mnist_pipeline.tracking import runs

    if train_run and model_dir:
        raise UserError("give either train_run or model_dir, not both")
    champion = promotion.champion_mode(champion)
    if margin < 0:
        raise UserError(f"margin: expected 0 or more, got {margin}")
    if champion == "auto" and not register:
        raise UserError("champion=auto compares registered versions: it needs register=true")
    check_output_dir(output_dir)
    logged = runs.logged_model_at(model_dir) if model_dir else None
    if train_run == "best":
        chosen = runs.best_train_run(experiment, parent_run, dataset)
    elif logged is not None:
        chosen = runs.get_run(logged.source_run_id, "train")
    elif model_dir:
        chosen = runs.get_run(runs.run_id_from_path(model_dir), "train")
    elif train_run:
        chosen = runs.get_run(train_run, "train")
    else:
        chosen = runs.latest_run("train", dataset)
    train_run_id = chosen.info.run_id
    accuracy = chosen.data.metrics.get("accuracy")  # its final model's, on the test set
    if logged is not None and logged.name != "model":  # a checkpoint, say, which has none
        accuracy = None
        which = f"{logged.name} {logged.model_id} of train run {train_run_id}"
        print(f"Packaging {which}, not its final model", file=sys.stderr)
    preprocess_run = chosen.data.tags.get("preprocess_run")
    if not preprocess_run:
        raise UserError(f"train run {train_run_id} does not name its preprocess run")
    preprocess_dir = runs.artifact_dir(preprocess_run)
    transform_path = preprocess_dir / TRANSFORM_FILE
    spec = TransformSpec.load(transform_path)
    keras_model_uri = model_dir or runs.logged_model_uri(chosen)
    if train_run == "best" and champion == "false":
        champion = "true"
    mlflow.set_tags(
        {"dataset": spec.dataset, "train_run": train_run_id, "preprocess_run": preprocess_run}
    )
    if train_run == "best":
        print(f"Best train run: {train_run_id} (test accuracy {accuracy:.4f})", file=sys.stderr)

    x_test, y_test = load_arrays(preprocess_dir, "test")
    test_pixels = evaluation.pixels_from_arrays(x_test, spec)
    input_example = pd.DataFrame(test_pixels[0], columns=[str(column) for column in range(28)])
    # The model takes several request formats (see mnist_pipeline/serving/request_formats.py), so only
    # the answer has a fixed schema; an input schema would refuse all but one of them.
    signature = ModelSignature(
        outputs=Schema(
            [
                ColSpec("long", "label"),
                ColSpec("string", "class_name"),
                ColSpec("double", "probability"),
            ]
        ),
        # `"params": {"details": true}` adds the top three classes and the 28x28 image seen.
        params=ParamSchema([ParamSpec("details", "boolean", False)]),
    )

    with tempfile.TemporaryDirectory() as staging:
        keras_path = Path(staging) / "model.keras"
        mlflow.tensorflow.load_model(keras_model_uri).save(keras_path)
        # The model carries the package modules that serving runs, and nothing else.
        served_code = PROJECT_DIR / SERVED_MODEL_CODE
        package_code = copy_package_modules(served_code, Path(staging) / "code")
        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(served_code),
            artifacts={"keras_model": str(keras_path), "transform": str(transform_path)},
            code_paths=[str(package_code)],
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements.pinned(requirements.SERVED_MODEL_PACKAGES),
            tags={"train_run": train_run_id},
        )
    if accuracy is not None:
        mlflow.log_metric("accuracy", accuracy)
    # Evaluated, registered and judged before it replaces the saved model: a model that
    # fails its evaluation, or a package stopped before the verdict, leaves `output_dir` and
    # the registry as they were.
    # Made once: the champion is judged on the very same sets.
    request_sets = evaluation.served_request_sets(
        test_pixels,
        y_test,
        spec,
        DRAWN_DIGITS,
        FONT_DIGITS,
        feedback_to_evaluate(feedback, spec.dataset),
    )
    served = evaluate_served(model_info.model_uri, model_info.model_id, request_sets)
    summary = (
        f"saved {output_dir}/ from train run {train_run_id}, "
        f"served accuracy {served['served_accuracy']:.4f}"
    )
    if register:
        # The version says what it is: its train run, test accuracy and served figures.
        tags = {"train_run": train_run_id} | {k: f"{v:.4f}" for k, v in served.items()}
        if accuracy is not None:
            tags["accuracy"] = f"{accuracy:.4f}"
        version = mlflow.register_model(model_info.model_uri, spec.dataset, tags=tags).version
        try:
            summary += choose_champion(
                spec.dataset, version, train_run, accuracy, served, champion, request_sets, margin
            )
        except KeyboardInterrupt:  # stopped (Ctrl-C, SIGTERM) before the verdict
            mlflow.MlflowClient().delete_model_version(spec.dataset, version)
            raise
    replace_directory(model_info.model_uri, Path(output_dir))
    return summary


def choose_champion(
    name: str,
    version: str,
    train_run: str,
    accuracy: float | None,
    served: dict[str, float],
    champion: str,
    request_sets: list[evaluation.RequestSet],
    margin: float,
) -> str:
    """Move `@champion` to the registered `version` when `champion` says so: "true" at once,
    "auto" through the gate. Return the summary's end."""
    summary = f"; registered {name} version {version}"
    if champion == "auto":
        verdict = promotion.gate(name, version, served, request_sets, margin)
        print(verdict.line())
        if not verdict.promoted:  # ./model holds this version, which the gate kept behind
            return summary + f"; models:/{name}@{CHAMPION} stays on version {verdict.champion}"
    elif champion == "true":
        if train_run == "best":
            reason = f"highest test accuracy ({accuracy:.4f}) of the train runs compared"
        else:
            reason = "champion=true: moved without comparing"
        promotion.crown(name, version, reason)
    else:
        return summary
    return summary + f" as models:/{name}@{CHAMPION}"


def evaluate_served(
    model_uri: str, model_id: str | None, request_sets: list[evaluation.RequestSet]
) -> dict[str, float]:
    """Evaluate the model at `model_uri` as it is served, on `request_sets` (see
    evaluation.served_request_sets); log and tag the run; return the figures,
    {"served_accuracy": ..., ...}."""
    import mlflow

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    served = {}
    for request_set in request_sets:
        result = evaluation.evaluate(model, request_set, model_id)
        print(result.summary(), file=sys.stderr)
        served[result.metric] = result.accuracy
    mlflow.log_metrics(served)
    mlflow.set_tags({name: f"{figure:.4f}" for name, figure in served.items()})
    print(f"Evaluated the served model in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return served


def feedback_to_evaluate(experiment: str, dataset: str) -> pd.DataFrame | None:
    """The evaluation part of the drawing page's feedback in `experiment`, or None when it
    holds fewer than MIN_EVALUATION_DRAWINGS (a line on stderr then says so)."""
    if not experiment:
        return None
    drawings = evaluation_part(experiment, dataset)
    if len(drawings) < MIN_EVALUATION_DRAWINGS:
        print(
            f"{len(drawings)} feedback drawings to evaluate on in {experiment!r}, "
            f"{MIN_EVALUATION_DRAWINGS} needed: no feedback_accuracy",
            file=sys.stderr,
        )
        return None
    return drawings


def check_output_dir(output_dir: str | Path) -> None:
    """Refuse an `output_dir` that package could not replace, or should not: a file, a folder
    under a file, or a folder of other things than a model (`.`, `data`, `mlruns`), which
    the model would replace whole. A model's folder, an empty one or none is taken."""
    path = Path(output_dir)
    if under := next((p for p in path.resolve().parents if p.is_file()), None):
        raise UserError(f"output_dir {output_dir}: {under} is a file, not a folder")
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir {output_dir} is a file: name a folder for the model")
    if path.is_dir() and any(path.iterdir()) and not (path / "MLmodel").is_file():
        raise UserError(
            f"output_dir {output_dir} holds other things than a model, which package would "
            "replace whole: name a new or empty folder, or one that holds a model"
        )


def replace_directory(model_uri: str, output_dir: str | Path) -> None:
    """Download the logged model and put it at `output_dir`, never leaving it half-written.

    The model is downloaded beside `output_dir`, then swapped in with two renames; an
    interrupted download leaves the old model untouched.
    """
    import mlflow

    output_dir = Path(output_dir).resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = files.staging_folder(output_dir.parent, f".{output_dir.name}.new-")
    try:
        downloaded = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(staging)))
        files.swap_into_place(downloaded, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def saved_model_matches(output_dir: str | Path, package_run) -> bool:
    """True when `output_dir` holds the model that `package_run` saved."""
    import mlflow

    mlmodel = Path(output_dir) / "MLmodel"
    if not mlmodel.exists():
        return False
    return mlflow.models.Model.load(mlmodel).run_id == package_run.info.run_id


if __name__ == "__main__":
    sys.exit(main())
