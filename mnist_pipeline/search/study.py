"""Running a search: an Optuna study whose trials are train runs nested under one parent run.

`study.optimize(objective, n_jobs=workers)` runs `workers` trials at a time. The objective
creates each trial's run under the parent (`mlflow.parentRunId`: the active run is
thread-local) and runs train.py's `main` in a pool of spawned processes that import
TensorFlow once each. The run reaches the process as MLFLOW_RUN_ID, and the process reports
val_accuracy per epoch to the trial, whose pruner may stop it (training/pruning.py).

Locally, the study is a journal file that this machine's processes share. In a database
(OPTUNA_STORAGE), workers on other machines join it, each until the study has `trials`
answers (MaxTrialsCallback: up to workers-1 more may run). A trial whose heartbeats stop is
failed by the storage, its runs ended KILLED and the trial queued again (end_stale_trial).

The summary has one writer, the process that started the search, once every trial has
ended: the table is logged once (`mlflow.log_table` appends to an existing one).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from mnist_pipeline import plots
from mnist_pipeline.errors import UserError
from mnist_pipeline.search import space
from mnist_pipeline.tracking import signals
from mnist_pipeline.training import pruning

STORAGE_ENV = "OPTUNA_STORAGE"  # a database URL, as Optuna's own CLI reads it
HOST = socket.gethostname()
WORKER = f"{HOST}:{os.getpid()}"
# The search prints a line per trial itself. Heartbeats and retries are "experimental".
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class Search:
    """What every worker of a search needs, kept in the study so that joining takes one ID."""

    parent_run_id: str
    experiment_id: str
    preprocess_run: str
    hyperparameters: dict[str, str]
    strategy: str
    trials: int
    pruner: str
    heartbeat_seconds: int
    grace_seconds: int


class TrialFailed(Exception):
    """A trial's training failed: the study records it as FAIL, and the search goes on."""


def create(search: Search, url: str) -> optuna.Study:
    """Create the study of `search`, in the database at `url` or in a temporary journal."""
    if url:
        storage = open_storage(url, search)
    else:
        folder = tempfile.mkdtemp(prefix="train_batch-study-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        storage = optuna.storages.JournalStorage(JournalFileBackend(f"{folder}/study.log"))
    study = optuna.create_study(
        study_name=f"train_batch-{search.parent_run_id}",
        storage=storage,
        direction="maximize",
        sampler=space.make_sampler(search.hyperparameters, search.strategy, search.trials),
        pruner=space.make_pruner(search.pruner),
    )
    study.set_user_attr("search", asdict(search))
    return study


def join(parent_run_id: str, url: str) -> tuple[optuna.Study, Search]:
    """The study of the search whose parent run is `parent_run_id`; UserError if none."""
    try:
        parent = mlflow.MlflowClient().get_run(parent_run_id)
    except MlflowException:
        where = mlflow.get_tracking_uri()
        raise UserError(f"run {parent_run_id!r} does not exist in {where}") from None
    tags, status = parent.data.tags, parent.info.status
    for wrong, problem in (
        (tags.get("stage") != "train_batch", "is not a train_batch run; join a search's run"),
        (tags.get("search") != "shared", f"ran on one machine; start one with {STORAGE_ENV}"),
        (status != "RUNNING", f"has ended ({status})"),
        (not url, f"is shared through {tags.get('study_storage')}: set {STORAGE_ENV}"),
    ):
        if wrong:
            raise UserError(f"run {parent_run_id} {problem}")
    try:
        found = optuna.load_study(study_name=tags["study_name"], storage=open_storage(url))
    except KeyError:
        raise UserError(f"study {tags['study_name']} is not in {redacted(url)}") from None
    search = Search(**found.user_attrs["search"])
    sampler = space.make_sampler(search.hyperparameters, search.strategy, search.trials, False)
    storage, pruner = open_storage(url, search), space.make_pruner(search.pruner)
    name = found.study_name
    return optuna.load_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner
    ), search


def open_storage(url: str, search: Search | None = None) -> optuna.storages.RDBStorage:
    """Optuna's storage in the database at `url`, with `search`'s heartbeats; UserError if
    `url` is not a database URL or the database cannot be opened."""
    heartbeats = search and {
        "heartbeat_interval": search.heartbeat_seconds,
        "grace_period": search.grace_seconds,
        "heartbeat_stale_trial_callback": end_stale_trial,
    }
    try:
        return optuna.storages.RDBStorage(url, {"pool_pre_ping": True}, **(heartbeats or {}))
    except ArgumentError:  # no such database dialect: http://, a path...
        raise UserError(
            f"study storage {redacted(url)} is not a database URL; expected one such as "
            "postgresql://optuna:<password>@<host>:5433/optuna"
        ) from None
    except (SQLAlchemyError, ImportError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"cannot open the study storage {redacted(url)}: {first_line}") from None


def optimize(study: optuna.Study, search: Search, workers: int, shared: bool) -> int:
    """Run trials of `search` here, `workers` at a time, until it is done; return how many.

    The process that started a shared search then waits for the trials of other machines.
    """
    chosen, client, ran = space.parse_space(search.hyperparameters), mlflow.MlflowClient(), []
    tags = {"mlflow.parentRunId": search.parent_run_id, "host": HOST, "worker": WORKER}
    active = mlflow.active_run().info.run_id
    if joined := active != search.parent_run_id:
        tags["worker_run"] = active  # a joined worker's run, ended KILLED if it dies

    def objective(trial: optuna.Trial) -> float:
        params, trials = space.suggest(trial, chosen), study.get_trials(deepcopy=False)
        this = trials[trial.number]  # trials come in the order of their numbers
        retry_of = Retry.retried_trial_number(this)
        # Numbered from 1 without retries: a retry has the number of the trial it repeats.
        first = [t.number for t in trials if Retry.retried_trial_number(t) is None]
        number = 1 + sum(n < (trial.number if retry_of is None else retry_of) for n in first)
        retry = {} if retry_of is None else {"retry_of": this.user_attrs["mlflow_run_id"]}
        shown = [
            f"{n}={params[n]:.2g}" if isinstance(params[n], float) else f"{n}={params[n]}"
            for n in space.searched(chosen)
        ]
        title = " ".join([f"trial {number}/{search.trials}", *shown])
        run = client.create_run(
            search.experiment_id, run_name=title, tags={**tags, "trial": str(number), **retry}
        )
        trial.set_user_attr("mlflow_run_id", run_id := run.info.run_id)
        trial.set_user_attr("trial", number)
        trial.set_user_attr("host", HOST)
        arguments = ["--preprocess_run", search.preprocess_run]
        arguments += [f"--{name}={value}" for name, value in params.items()]
        environment = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
        started = time.perf_counter()
        try:
            error = pool.submit(run_trial, arguments, environment, trial).result()
        except Exception as failure:  # a bug in train, or a process that died
            error = f"{type(failure).__name__}: {failure}"
        finally:
            if client.get_run(run_id).info.status == "RUNNING":  # it never ended its run
                client.set_terminated(run_id, "KILLED" if signals.stopping() else "FAILED")
        if signals.stopping():
            if shared:  # the other workers run it again, as they would a dead worker's
                Retry(max_retry=2)(study, study.get_trials(deepcopy=False)[trial.number])
            raise signals.Stopped("the search is stopping")
        ran.append(run_id)
        run = client.get_run(run_id)
        pruned, accuracy = run.data.tags.get("pruned") == "true", run.data.metrics.get("accuracy")
        if not pruned and accuracy is None:
            client.set_tag(run_id, "error", error[:500])
            trial.set_user_attr("error", error[:500])
        outcome = "pruned" if pruned else error if accuracy is None else f"accuracy {accuracy:.4f}"
        seconds = time.perf_counter() - started
        print(f"[train_batch] {title} on {HOST}: {outcome} in {seconds:.0f} s", file=sys.stderr)
        if pruned:
            raise optuna.TrialPruned()
        if accuracy is None:
            raise TrialFailed(error)
        return accuracy

    def stop_when_answered(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # A retry's answer stands for its dead worker's trial, which counts as failed too.
        trials = study.get_trials(deepcopy=False)
        retries = sum(Retry.retried_trial_number(t) is not None for t in trials)
        answers = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        optuna.study.MaxTrialsCallback(search.trials + retries, states=answers)(study, trial)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # Each process gets its share of the cores. One that imported TensorFlow must not fork.
    threads, context = max(1, (cores or 1) // workers), multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, _share_cores, (threads,)) as pool:
        # A signal to this process alone ends the trials too: their runs end KILLED.
        signals.on_stop(lambda: [child.terminate() for child in multiprocessing.active_children()])
        # Locally, this process runs every trial; shared, each worker runs until they are done.
        count = {"n_trials": search.trials} if not shared else {"callbacks": [stop_when_answered]}
        study.optimize(objective, n_jobs=workers, catch=(TrialFailed,), **count)
        # The search's own process waits for the trials running elsewhere. optimize fails a
        # dead worker's trial only when it starts one, and none starts once the search has
        # its answers, so it asks the storage itself, and runs the retry if nobody else does.
        unfinished = (TrialState.RUNNING, TrialState.WAITING)
        while shared and not joined and study.get_trials(states=unfinished):
            time.sleep(search.heartbeat_seconds)
            optuna.storages.fail_stale_trials(study)
            if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    return len(ran)


def _share_cores(threads: int) -> None:
    """In a new pool process, before TensorFlow starts: use `threads` cores."""
    os.environ.update(TF_NUM_INTRAOP_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"


def run_trial(arguments: list[str], environment: dict[str, str], trial: optuna.Trial) -> str:
    """In a pool process: run `python train.py <arguments>`'s main; return its last error line.

    The trial arrives pickled, as Optuna's Study and storages allow (they reconnect when
    unpickled): the process reports to the very trial that optimize asked for, with the
    public Trial.report and should_prune, and needs neither a trial ID nor a look-up.
    """
    import keras

    import train  # the project's train.py, on the path of the process that made the pool

    os.environ.update(environment)
    pruning.trial, errors = trial, io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            train.main(arguments)
    except SystemExit:  # argparse refusing an argument, which it said on stderr
        pass
    finally:
        pruning.trial = None
        keras.utils.clear_session(free_memory=True)
        sys.stderr.write(errors.getvalue())  # Python's own messages; TensorFlow's are not held
    lines = [line for line in errors.getvalue().splitlines() if "error" in line.lower()]
    return (lines or ["train.py ended without an accuracy; see its output"])[-1].strip()


def end_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """The storage failed `trial`, whose worker stopped sending heartbeats: end the runs of
    the trial and of its worker (if it joined) KILLED, and queue the trial again."""
    client = mlflow.MlflowClient()
    if trial_run := trial.user_attrs.get("mlflow_run_id"):  # none if it died at once
        run = client.get_run(trial_run)
        for run_id in filter(None, (trial_run, run.data.tags.get("worker_run"))):
            if client.get_run(run_id).info.status == "RUNNING":
                worker = run.data.tags["worker"]
                client.set_tag(run_id, "error", f"{worker} stopped sending heartbeats")
                client.set_terminated(run_id, "KILLED")
    print(f"[train_batch] trial {trial.number}'s worker stopped: it runs again", file=sys.stderr)
    Retry(max_retry=2)(study, trial)


def write_summary(study: optuna.Study, search: Search) -> str:
    """Log the search's summary to the active run, its parent; return it in one line.

    The study's trials as `trials.json` (a table in the UI) and `trials.csv`, the counts,
    `best_accuracy`, the tag `best_run_id` and accuracy against each searched value.
    """
    table = study.trials_dataframe(("user_attrs", "state", "params", "value", "duration"))
    if table.empty:
        raise UserError(f"search {search.parent_run_id} has no trials to sum up")
    table.columns = [c.removeprefix("user_attrs_").removeprefix("params_") for c in table]
    table = table.rename(columns={"mlflow_run_id": "run_id", "value": "accuracy"})
    table["seconds"] = table.pop("duration").dt.total_seconds().round(1)
    searched = space.searched(space.parse_space(search.hyperparameters))
    columns = ["trial", "run_id", "state", *searched, "accuracy", "seconds", "host", "error"]
    table = table.reindex(columns=columns).sort_values("trial").fillna({"error": ""})
    seconds = time.time() - mlflow.active_run().info.start_time / 1000
    mlflow.log_table(table, "trials.json")
    mlflow.log_text(table.to_csv(index=False), "trials.csv")
    counts, finished = table["state"].value_counts(), table[table["state"] == "COMPLETE"]
    words = {"FAIL": ("failed", "FAILED"), "PRUNED": ("pruned", "pruned")}
    metrics = {f"trials_{name}": int(counts.get(state, 0)) for state, (name, _) in words.items()}
    mlflow.log_metrics({"trials_finished": len(finished), "batch_seconds": seconds, **metrics})
    numbers = [name for name in searched if table[name].dtype.kind in "biuf"]
    if numbers and len(finished):
        figure = plots.metric_against_params(finished, "accuracy", numbers)
        mlflow.log_figure(figure, "accuracy_by_hyperparameter.png")
    print(table.to_string(index=False), file=sys.stderr)
    if finished.empty:
        raise UserError(f"none of the {len(table)} trials finished; see the child runs' logs")
    best = finished.loc[finished["accuracy"].idxmax()]
    mlflow.log_metric("best_accuracy", float(best["accuracy"]))
    mlflow.set_tag("best_run_id", best["run_id"])
    hosts = table["host"].nunique()
    return (
        f"{len(finished)} of {len(table)} trials finished in {seconds:.0f} s"
        + (f" on {hosts} machines" if hosts > 1 else "")
        + "".join(
            f", {counts[state]} {word}" for state, (_, word) in words.items() if state in counts
        )
        + f"; best {best['run_id']} with accuracy {best['accuracy']:.4f}"
    )


def redacted(url: str) -> str:
    """`url` with its password replaced by ***, for messages and tags."""
    try:
        return make_url(url).render_as_string(hide_password=True) if url else ""
    except ArgumentError:
        return "<unparsable URL>"
