"""main: run the whole pipeline, each stage a nested run, reusing stages that already ran.

get_data → explore_data → preprocess → train → package. A stage that already FINISHED
in this experiment with the same parameters (compared after the stage's own parsing,
so "0.001" equals "1e-3"), the same upstream runs and the same code version is reused,
not run again. A train run that stopped (KILLED, or RUNNING with its process gone) with
the same parameters and code is resumed from its last checkpoint instead of starting
over. The parent run records every stage's run ID and which were reused or resumed.

$ mlflow run . --env-manager local -P source=../shared/data/mnist
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import download
import explore
import package_model
import preprocess
import train
from mnist_pipeline.cli import USER_ERRORS, Parser, boolean, error_line, fail, param_text
from mnist_pipeline.data.catalogue import TRAINING_DEFAULTED, dataset_spec
from mnist_pipeline.errors import UserError
from mnist_pipeline.tracking import signals, stale_runs

PROJECT_DIR = Path(__file__).resolve().parent
PROJECT_VENV = PROJECT_DIR / ".venv"  # what `make setup` makes
STAGES = {
    "get_data": download,
    "explore_data": explore,
    "preprocess": preprocess,
    "train": train,
    "package": package_model,
}


def build_parser() -> Parser:
    parser = Parser(prog="main.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", help="mnist or fashion")
    parser.add_argument(
        "--source", default="official", help="as for get_data: 'official', a folder or a base URL"
    )
    parser.add_argument("--allow_unverified", type=boolean, default=False)
    train.add_hyperparameters(parser)
    parser.add_argument(
        "--data_dir", default="data", help="get_data leaves the files in <data_dir>/<dataset>/"
    )
    parser.add_argument(
        "--output_dir", default="model", help="where package saves the served model"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signals.install()
    import mlflow
    from mlflow.exceptions import ExecutionException

    from mnist_pipeline.tracking import naming, runs

    try:
        dataset_spec(args.dataset)
        package_model.check_output_dir(args.output_dir)  # before any stage runs
        runs.check_tracking_server()
    except UserError as error:
        return fail(parser.prog, error)
    started = time.perf_counter()
    parent = None
    try:
        with mlflow.start_run() as parent, signals.killed_when_stopped():
            mlflow.set_tags(
                {
                    "stage": "main",
                    "dataset": args.dataset,
                    signals.PROCESS_TAG: signals.process_tag(),
                }
            )
            naming.describe(parent.info.run_id)  # so that a pipeline that fails reads well too
            warn_about_stale_runs(parent.info.experiment_id)
            pipeline = Pipeline(parent.info.experiment_id)
            data_run = pipeline.stage(
                "get_data",
                dataset=args.dataset,
                source=args.source,
                allow_unverified=args.allow_unverified,
                outdir=f"{args.data_dir}/{args.dataset}",
            )
            # Every stage gets the dataset, which its run logs as a param: MLproject's
            # default, mnist, would say otherwise in the UI for a Fashion-MNIST run.
            dataset = {"dataset": args.dataset}
            explore_run = pipeline.stage("explore_data", data_run=data_run, **dataset)
            preprocess_run = pipeline.stage(
                "preprocess", data_run=data_run, explore_run=explore_run, **dataset
            )
            # The dataset's defaults where epochs or label_smoothing are left empty, so that
            # reuse compares the values a training really used.
            used = dataset_spec(args.dataset).training_values(
                **{name: getattr(args, name) for name in TRAINING_DEFAULTED}
            )
            train_run = pipeline.stage(
                "train",
                preprocess_run=preprocess_run,
                batch_size=args.batch_size,
                lr=args.lr,
                nr_conv_1=args.nr_conv_1,
                architecture=args.architecture,
                augment=args.augment,
                synthetic=args.synthetic,
                seed=args.seed,
                **used,
                **dataset,
            )
            pipeline.stage("package", train_run=train_run, output_dir=args.output_dir, **dataset)
            pipeline.log_summary()
            accuracy = mlflow.get_run(train_run).data.metrics.get("accuracy")
            if accuracy is not None:
                mlflow.log_metric("accuracy", accuracy)
            naming.describe(parent.info.run_id)
    except (ExecutionException, *USER_ERRORS) as error:
        if parent is not None:
            error = say_why_it_failed(parent.info.run_id, error)
        return fail(parser.prog, error)
    seconds = time.perf_counter() - started
    print(pipeline.report(parent.info.run_id, seconds, args.output_dir, args.dataset))
    return 0


def say_why_it_failed(run_id: str, error: Exception) -> Exception:
    """The error of main's FAILED run `run_id` as a UserError, set as the run's tag `error` and
    the last line of its description, as a stage does. For a stage that failed, that is the
    stage's own reason (its tag `error`), not MLflow's "Run (ID '...') failed"."""
    import mlflow

    from mnist_pipeline.tracking import naming

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if run.info.status != "FAILED":  # KILLED: stopped, which its description says already
        return error
    reason = error_line(error)
    if isinstance(error, mlflow.exceptions.ExecutionException):
        failed = client.search_runs(
            [run.info.experiment_id],
            f"tags.mlflow.parentRunId = '{run_id}' AND attributes.status = 'FAILED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if failed and (why := failed[0].data.tags.get(naming.ERROR_TAG)):
            reason = f"{failed[0].data.tags.get('stage', 'a stage')}: {why}"
    client.set_tag(run_id, naming.ERROR_TAG, reason)
    naming.describe(run_id, client)
    return UserError(reason)


def warn_about_stale_runs(experiment_id: str) -> None:
    """One line when runs of killed processes (SIGKILL) are still RUNNING; they are never reused."""
    stale, _ = stale_runs.stale_runs([experiment_id])
    if stale:
        print(
            f"[main] {len(stale)} stale RUNNING runs (their process was killed), never reused "
            "(a train run with a checkpoint is resumed); "
            "end them as KILLED with: python end_stale_runs.py",
            file=sys.stderr,
        )


def with_its_model(package_run, output_dir: str):
    """`package_run`, once `output_dir` holds the model it saved: downloaded again when it is
    not there (a team member's machine never had it; another package run saved there), so
    that a finished package is never run again, nor its model registered twice. None when
    the model cannot be downloaded: package then runs again."""
    from mlflow.exceptions import MlflowException

    from mnist_pipeline.tracking import runs

    if package_model.saved_model_matches(output_dir, package_run):
        return package_run
    run_id = package_run.info.run_id
    try:
        model_uri = runs.logged_model_uri(package_run)
        package_model.replace_directory(model_uri, output_dir)
    except (MlflowException, UserError) as error:
        print(
            f"[main] package: run {run_id} finished, but its model cannot be downloaded "
            f"({error_line(error)}): packaging again",
            file=sys.stderr,
        )
        return None
    print(
        f"[main] package: {output_dir} did not hold run {run_id}'s model: downloaded {model_uri}",
        file=sys.stderr,
    )
    return package_run


class Pipeline:
    """Runs stages as nested MLflow project runs, or reuses finished ones."""

    def __init__(self, experiment_id: str):
        self.experiment_id = experiment_id
        self.stages: list[dict] = []

    def reusable(self, entry_point: str, **parameters):
        """Return the finished run of `entry_point` that `stage` would reuse, or None."""
        from mnist_pipeline.tracking.code_version import code_version

        module = STAGES[entry_point]
        parser = module.build_parser()
        wanted = canonical_params(parser, {k: param_text(v) for k, v in parameters.items()})
        version = code_version(module.__file__)
        return already_ran(entry_point, parser, wanted, version, self.experiment_id)

    def resumable(self, entry_point: str, **parameters):
        """Return the stopped train run that `stage` would resume, or None (other stages: None)."""
        from mnist_pipeline.tracking import runs
        from mnist_pipeline.tracking.code_version import code_version
        from mnist_pipeline.training import checkpoints

        if entry_point != "train":
            return None
        parser = train.build_parser()
        wanted = canonical_params(parser, {k: param_text(v) for k, v in parameters.items()})
        candidates = runs.stopped_runs(
            "train",
            f"tags.{runs.CODE_VERSION_TAG} = '{code_version(train.__file__)}'",
            [self.experiment_id],
        )
        for run in with_params(candidates, parser, wanted):
            if checkpoints.latest(run.info.run_id) is not None:
                return run
        return None

    def stage(self, entry_point: str, **parameters) -> str:
        """Return the run ID of `entry_point` with `parameters`, reused or freshly run."""
        import mlflow

        found = self.reusable(entry_point, **parameters)
        if found is not None and entry_point == "package":
            found = with_its_model(found, parameters["output_dir"])
        stopped = None
        if found is not None:
            run_id, reused = found.info.run_id, True
            print(f"[main] {entry_point}: reusing finished run {run_id}", file=sys.stderr)
        else:
            stopped = self.resumable(entry_point, **parameters)
            if stopped is not None:
                parameters = {**parameters, "resume": stopped.info.run_id}
                print(f"[main] {entry_point}: resuming run {stopped.info.run_id}", file=sys.stderr)
            else:
                print(f"[main] {entry_point}: starting", file=sys.stderr)
            submitted = mlflow.projects.run(
                uri=str(PROJECT_DIR),
                entry_point=entry_point,
                parameters={k: param_text(v) for k, v in parameters.items()},
                env_manager="local",
                experiment_id=self.experiment_id,
                synchronous=True,
            )
            run_id, reused = submitted.run_id, False
        self.stages.append({"stage": entry_point, "run_id": run_id, "reused": reused})
        if stopped is not None:
            self.stages[-1]["resumed_from"] = stopped.info.run_id
        return run_id

    def log_summary(self) -> None:
        import mlflow

        reused = [stage["stage"] for stage in self.stages if stage["reused"]]
        mlflow.set_tags({f"{stage['stage']}_run": stage["run_id"] for stage in self.stages})
        mlflow.set_tag("reused_stages", ",".join(reused) if reused else "none")
        mlflow.log_dict({"stages": self.stages}, "pipeline.json")

    def report(self, run_id: str, seconds: float, output_dir: str, dataset: str) -> str:
        lines = [f"Pipeline run {run_id} finished in {seconds:.1f} s:"]
        for stage in self.stages:
            how = "reused" if stage["reused"] else "resumed" if "resumed_from" in stage else "ran"
            lines.append(f"  {stage['stage']:<13} {how:<7} {stage['run_id']}")
        from mnist_pipeline.tracking import runs

        tracking = runs.tracking_uri()
        compare = "mlflow ui   # compare the runs at http://localhost:5000"
        if tracking.startswith(("http://", "https://")):  # the tracking server shows them
            compare = f"# compare the runs at {tracking}"
        # Absolute and quoted: `mlflow run <project>` from another folder runs the stages in
        # the project's folder, so ./model is there, not where the command was typed.
        model = shlex.quote(str(Path(output_dir).resolve()))
        script = shlex.quote(str(Path(__file__).resolve().with_name("png_to_pandas.py")))
        picture = "my_digit.png" if dataset == "mnist" else f"--dataset {dataset} my_picture.png"
        lines.append("Next:")
        # Run by `make run`, in the project's virtualenv, which the terminal has not activated.
        if sys.prefix != sys.base_prefix and os.environ.get("VIRTUAL_ENV") != sys.prefix:
            venv = Path(sys.prefix)
            shown = ".venv" if venv == PROJECT_VENV else str(venv)
            lines.append(f"  . {shlex.quote(shown)}/bin/activate   # in each new terminal")
        lines += [
            f"  {compare}",
            f"  mlflow models serve -m {model} --env-manager local -p 5000",
            f"  python {script} {picture}   # then the curl command it prints",
        ]
        return "\n".join(lines)


def already_ran(
    stage: str,
    parser: argparse.ArgumentParser,
    wanted: dict[str, str],
    version: str,
    experiment_id: str,
):
    """Return the newest FINISHED run of `stage` with the same code and the same parameters.

    Parameters are compared after both sides went through the stage's own parser, so
    "0.001" matches "1e-3" and "16" matches "16", never a string against an int.
    """
    from mnist_pipeline.tracking import runs

    candidates = runs.finished_runs(
        stage, f"tags.{runs.CODE_VERSION_TAG} = '{version}'", experiment_ids_=[experiment_id]
    )
    return next(with_params(candidates, parser, wanted), None)


def with_params(candidates: list, parser: argparse.ArgumentParser, wanted: dict[str, str]):
    """Yield the runs of `candidates` whose parameters, parsed by `parser`, are `wanted`.

    `resume` is not compared: a train run that resumed another trained what it asks.
    """
    wanted = {name: value for name, value in wanted.items() if name != "resume"}
    for run in candidates:
        # A train run that took the dataset's default logged the value as <name>_used.
        used = {
            name: run.data.params[f"{name}_used"]
            for name in TRAINING_DEFAULTED
            if f"{name}_used" in run.data.params
        }
        try:
            logged = canonical_params(parser, {**run.data.params, **used})
        except UserError:
            continue  # a run whose parameters no longer parse cannot be reused
        if {name: value for name, value in logged.items() if name != "resume"} == wanted:
            yield run


def canonical_params(parser: argparse.ArgumentParser, values: dict[str, str]) -> dict[str, str]:
    """Return every argument of `parser` as its canonical string, given raw string values.

    "1e-3" and "0.001" both become "0.001", "16" and "16.0" for an int both fail or
    become "16": this is what makes a run logged by hand comparable with one that the
    pipeline is about to start. Values that are not arguments of `parser` are ignored;
    values that it refuses raise UserError.
    """
    known = vars(parser.parse_args([]))
    argv = []
    for name, value in values.items():
        if name in known:
            argv.append(f"--{name}={_unquoted(str(value))}")
    # Refused values raise argparse.ArgumentError here instead of ending the process.
    parser.exit_on_error = False
    try:
        namespace = parser.parse_args(argv)
    except argparse.ArgumentError as error:
        raise UserError(str(error)) from None
    return {name: param_text(value) for name, value in vars(namespace).items()}


def _unquoted(text: str) -> str:
    """Undo the shell quoting that `mlflow run` leaves on logged values ('' for empty)."""
    if text[:1] in ("'", '"'):
        try:
            words = shlex.split(text)
        except ValueError:
            return text
        if len(words) <= 1:
            return words[0] if words else ""
    return text


if __name__ == "__main__":
    sys.exit(main())
