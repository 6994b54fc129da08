"""Finding runs: by ID, by a path inside ./mlruns, as the latest of a stage, or the best."""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mnist_pipeline.data.catalogue import dataset_spec
from mnist_pipeline.data.idx import read_idx_sha256
from mnist_pipeline.errors import UserError

STAGE_TAG = "stage"
CODE_VERSION_TAG = "code_version"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")


def redacted(url: str) -> str:
    """`url` with its password replaced by ***, for messages and tags."""
    try:
        return make_url(url).render_as_string(hide_password=True) if url else ""
    except ArgumentError:  # shown whole unless it may hold a password
        return "<unparsable URL>" if "@" in url else url


def tracking_uri() -> str:
    """The tracking URI, as a message may show it: a database's password hidden."""
    return redacted(mlflow.get_tracking_uri())


def get_run(run_id: str, stage: str) -> Run:
    """Return the FINISHED run `run_id` of `stage`, or raise UserError saying what it is."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(f"run {run_id!r} does not exist in {tracking_uri()}") from None
    actual = run.data.tags.get(STAGE_TAG)
    if actual != stage:
        kind = f"a {actual} run" if actual else "not a pipeline run"
        raise UserError(f"run {run_id} is {kind}, expected a {stage} run")
    if run.info.status != "FINISHED":
        raise UserError(f"{stage} run {run_id} is {run.info.status}, expected FINISHED")
    if run.info.lifecycle_stage == "deleted":  # `mlflow gc` may remove its artifacts
        raise UserError(f"{stage} run {run_id} is deleted: restore it, or name another")
    return run


def run_id_from_path(path: str | Path) -> str:
    """Return the run behind a path into ./mlruns: run artifacts or an MLflow 3 logged model.

    `./mlruns/<exp>/<run id>/artifacts/...` names the run directly;
    `./mlruns/<exp>/models/<model id>/artifacts` names a logged model, whose source run
    is looked up. Raises UserError for a path that is neither.
    """
    if logged_model := logged_model_at(path):
        return logged_model.source_run_id
    parts = Path(path).resolve().parts
    for index, part in enumerate(parts):
        if _RUN_ID.match(part) and index + 1 < len(parts) and parts[index + 1] == "artifacts":
            return part
    raise UserError(
        f"{path}: not a path into ./mlruns "
        "(expected mlruns/<experiment>/<run id>/artifacts or mlruns/<experiment>/models/<model id>/artifacts)"
    )


def logged_model_at(path: str | Path):
    """Return the logged model at `./mlruns/<exp>/models/<model id>/...`, else None."""
    parts = Path(path).resolve().parts
    for index, part in enumerate(parts):
        if _MODEL_ID.match(part) and index > 0 and parts[index - 1] == "models":
            try:
                return mlflow.get_logged_model(part)
            except MlflowException:
                raise UserError(f"{path}: logged model {part} is not in this store") from None
    return None


def finished_runs(
    stage: str,
    extra_filter: str = "",
    experiment_ids_: list[str] | None = None,
    max_results: int = 1000,
    order_by: tuple[str, ...] = (),
) -> list[Run]:
    """Return FINISHED runs of `stage`, sorted by `order_by`, then newest first.

    Left out: the trials that their search pruned (tag `pruned`), which ended FINISHED too,
    but early and without a model.
    """
    query = f"tags.{STAGE_TAG} = '{stage}' and attributes.status = 'FINISHED'"
    query += " and tags.pruned IS NULL"
    if extra_filter:
        query += f" and {extra_filter}"
    return mlflow.search_runs(
        experiment_ids=experiment_ids_,
        search_all_experiments=True,  # when there are no experiment_ids_
        filter_string=query,
        order_by=[*order_by, "attributes.start_time DESC"],
        max_results=max_results,
        output_format="list",
    )


def stopped_runs(
    stage: str, extra_filter: str = "", experiment_ids_: list[str] | None = None
) -> list[Run]:
    """Return the runs of `stage` that stopped unfinished, newest first.

    Those that ended KILLED (Ctrl-C, SIGTERM) and those still RUNNING whose process is gone
    (SIGKILL, a power cut; see stale_runs.py).
    """
    from mnist_pipeline.tracking.signals import PROCESS_TAG
    from mnist_pipeline.tracking.stale_runs import process_is_gone

    query = f"tags.{STAGE_TAG} = '{stage}' and attributes.status != 'FINISHED'"
    if extra_filter:
        query += f" and {extra_filter}"
    found = mlflow.search_runs(
        experiment_ids=experiment_ids_,
        search_all_experiments=True,
        filter_string=query,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return [
        run
        for run in found
        if run.info.status == "KILLED"
        or (run.info.status == "RUNNING" and process_is_gone(run.data.tags.get(PROCESS_TAG, "")))
    ]


def latest_run(
    stage: str, dataset: str | None = None, lineage: dict[str, str] | None = None
) -> Run:
    """Return the newest FINISHED run of `stage`, of `dataset` and with the given lineage tags.

    Raises UserError when there is none, naming the stage to run first.
    """
    conditions = []
    if dataset:
        conditions.append(f"tags.dataset = '{dataset}'")
    for tag, value in (lineage or {}).items():
        conditions.append(f"tags.{tag} = '{value}'")
    found = finished_runs(stage, " and ".join(conditions), max_results=1)
    if not found:
        which = f" of dataset {dataset!r}" if dataset else ""
        raise UserError(
            f"no finished {stage} run{which} in {tracking_uri()}; "
            f"run `mlflow run . -e {stage}` first or name one"
        )
    return found[0]


def artifact_dir(run_id: str, artifact_path: str = "") -> Path:
    """Return a local folder holding the run's artifacts at `artifact_path`.

    With a local artifact store that is the folder itself. A remote store's (a team's
    server) are downloaded once per process, into a folder removed when the process ends:
    a search's trial process trains one model after another from the same preprocess run.
    """
    root = MlflowClient().get_run(run_id).info.artifact_uri
    parsed = urllib.parse.urlparse(root)
    if parsed.scheme in ("", "file"):
        local = Path(urllib.request.url2pathname(parsed.path)) / artifact_path
        if local.exists():
            return local
    return _downloaded(run_id, artifact_path)


@functools.cache
def _downloaded(run_id: str, artifact_path: str) -> Path:
    folder = tempfile.mkdtemp(prefix=f"mlflow-artifacts-{run_id[:8]}-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=folder
        )
    )


def resolve_data(data_run: str, in_data: str, dataset: str) -> tuple[Path, dict[str, str]]:
    """Return the folder of the four IDX files, and the tags that say where they came from:
    `dataset`, `data_run` (the get_data run, when there is one) and `in_data`.

    `data_run` names a get_data run; `in_data` a folder of IDX files (the workshop's
    way), traced back to the get_data run that wrote it when there is one; with
    neither, the newest finished get_data run of `dataset` is taken.
    """
    if data_run and in_data:
        raise UserError("give either data_run or in_data, not both")
    if in_data:
        folder = Path(in_data)
        if not folder.is_dir():
            raise UserError(f"in_data {in_data}: no such folder")
        digest = read_idx_sha256(folder / "train-images-idx3-ubyte.gz")
        found = finished_runs(
            "get_data", f"tags.`sha256.train-images-idx3-ubyte` = '{digest}'", max_results=1
        )
        if not found:
            return folder, {"dataset": dataset_spec(dataset).name, "in_data": in_data}
        written = found[0]
        dataset = written.data.tags.get("dataset", dataset)
        return folder, {"dataset": dataset, "data_run": written.info.run_id, "in_data": in_data}
    run = (
        get_run(data_run, "get_data")
        if data_run
        else latest_run("get_data", dataset_spec(dataset).name)
    )
    tags = {"dataset": run.data.tags["dataset"], "data_run": run.info.run_id}
    return artifact_dir(run.info.run_id, "data"), tags


def log_input(dataset, context: str) -> None:
    """`mlflow.log_input(dataset, context)`, again once if another run logged the same dataset
    at the same moment.

    MLflow's SQL store (3.17) looks the dataset up in the experiment and inserts it if it is
    missing, so two runs that log it at once (the trials of a search, two packages evaluating
    on the same set) both insert it, and one fails on the table's unique key (SQLite and
    PostgreSQL alike). Its second try finds the row.
    """
    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException as error:
        if "unique constraint" not in str(error).lower():
            raise
        mlflow.log_input(dataset, context=context)


def logged_model_uri(run: Run, name: str = "model") -> str:
    """Return `models:/<model id>` of the model named `name` that `run` logged."""
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{name}'",
        output_format="list",
    )
    if not found:
        raise UserError(f"run {run.info.run_id} logged no model named {name!r}")
    return f"models:/{found[0].model_id}"


def best_train_run(experiment: str = "", parent_run: str = "", dataset: str = "") -> Run:
    """Return the FINISHED train run of `dataset` (any, if empty) with the highest test accuracy.

    Within the children of `parent_run` (a train_batch run) when given, else within
    `experiment` (a name or an ID), else within the active run's experiment.
    """
    if parent_run:
        parent = get_run(parent_run, "train_batch")
        experiment_ids_ = [parent.info.experiment_id]
        extra = f"tags.mlflow.parentRunId = '{parent_run}'"
        where = f"under run {parent_run}"
    else:
        experiment_ids_ = [_experiment_id(experiment)]
        extra = ""
        name = experiment or mlflow.MlflowClient().get_experiment(experiment_ids_[0]).name
        where = f"in experiment {name!r}"
    of_dataset = " and ".join(filter(None, [extra, dataset and f"tags.dataset = '{dataset}'"]))
    found = finished_runs(
        "train", of_dataset, experiment_ids_, max_results=1, order_by=("metrics.accuracy DESC",)
    )
    if not found or "accuracy" not in found[0].data.metrics:
        # A fashion batch packaged without `-P dataset=fashion` (MLproject's default is mnist).
        other = finished_runs("train", extra, experiment_ids_, max_results=1) if dataset else []
        if other and other[0].data.tags.get("dataset", dataset) != dataset:
            theirs = other[0].data.tags["dataset"]
            raise UserError(
                f"train_run=best: no finished {dataset} train run {where}, where they are "
                f"{theirs}: add -P dataset={theirs}"
            )
        raise UserError(f"train_run=best: no finished train run with an accuracy {where}")
    return found[0]


def _experiment_id(experiment: str) -> str:
    if not experiment:
        active = mlflow.active_run()
        return active.info.experiment_id if active else "0"
    client = MlflowClient()
    by_name = client.get_experiment_by_name(experiment)
    if by_name is not None:
        return by_name.experiment_id
    try:
        return client.get_experiment(experiment).experiment_id
    except MlflowException:
        raise UserError(f"experiment {experiment!r} does not exist (by name or ID)") from None


def check_tracking_server() -> None:
    """Raise UserError, in one line, if a tracking server cannot be reached or refuses us.

    Asks once, with few retries, so that a wrong address or password is said at once
    rather than after MLflow's two minutes of retries, and before anything is created.
    """
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
    try:
        MlflowClient().search_experiments(max_results=1)
    except MlflowException as error:
        if (status := error.get_http_status_code()) in (401, 403):
            raise UserError(
                f"{tracking_uri()} refused the credentials in MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD ({status})"
            ) from None
        refused = re.search(r"\[Errno -?\d+\] ([^\"')]+)", error.message)
        reason = refused.group(1) if refused else re.sub(r"\s+", " ", error.message)[-160:]
        raise UserError(f"cannot reach the tracking server {tracking_uri()}: {reason}") from None
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved
