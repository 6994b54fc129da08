"""A search: an Optuna study whose trials are train runs nested under one parent run.

`study.optimize(objective, n_jobs=workers)` runs `workers` trials at a time. The objective
creates each trial's run under the parent and runs train.py's `main` in a spawned process of
its thread's own, which imports TensorFlow once and reports each epoch to the trial, whose
pruner may stop it (training/pruning.py). Locally, the study is a journal file. In a
database (OPTUNA_STORAGE), workers on other machines join it; a trial whose heartbeats stop
is failed by the storage, its runs are ended KILLED and it runs again (end_stale_trial).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import multiprocessing
import multiprocessing.connection
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from mnist_pipeline import plots
from mnist_pipeline.errors import UserError
from mnist_pipeline.search import space
from mnist_pipeline.tracking import naming, signals
from mnist_pipeline.tracking.runs import redacted, tracking_uri
from mnist_pipeline.training import checkpoints, pruning

STORAGE_ENV = "OPTUNA_STORAGE"  # a database URL, as Optuna's own CLI reads it
HOST = socket.gethostname()
WORKER = f"{HOST}:{os.getpid()}"
# The search prints a line per trial itself. Heartbeats and retries are "experimental".
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class Search:
    """What every worker of a search needs: the parent run's `search.json`."""

    parent_run_id: str
    experiment_id: str
    preprocess_run: str
    dataset: str
    hyperparameters: dict[str, str]
    strategy: str
    trials: int
    pruner: str
    heartbeat_seconds: int
    grace_seconds: int


def storage_url() -> str:
    """OPTUNA_STORAGE, or "" for a search on this machine alone. Not a parameter, which
    `mlflow run` would log, password and all."""
    return os.environ.get(STORAGE_ENV, "")


def open_storage(heartbeat_seconds: int, grace_seconds: int) -> optuna.storages.RDBStorage | None:
    """The database at OPTUNA_STORAGE, if set, which fails (and retries) the trials whose
    heartbeats stop; UserError if it cannot be opened."""
    if not (url := storage_url()):
        return None
    try:
        return HeartbeatStorage(
            url,
            {"pool_pre_ping": True},
            heartbeat_interval=heartbeat_seconds,
            grace_period=grace_seconds,
            heartbeat_stale_trial_callback=end_stale_trial,
        )
    except ArgumentError:  # no such database dialect: http://, a path...
        raise UserError(
            f"study storage {redacted(url)} is not a database URL; expected one such as "
            "postgresql://optuna:<password>@<host>:5433/optuna"
        ) from None
    except (SQLAlchemyError, ImportError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"cannot open the study storage {redacted(url)}: {first_line}") from None


# What Optuna's RDBStorage raises while its database is away (restarted, say).
DATABASE_AWAY = (optuna.exceptions.StorageInternalError, SQLAlchemyError)


def cause(error: Exception) -> str:
    """The first line of what caused `error`: Optuna wraps a lost connection in a message about
    "invalid data in the commit"."""
    return str(error.__cause__ or error).strip().splitlines()[0]


class HeartbeatStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, whose heartbeats outlive a restart of the database: Optuna's
    heartbeat thread ends at the first beat that fails, and the trial, still training, would
    be taken for dead once the database is back."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except DATABASE_AWAY as error:
            print(
                f"[train_batch] a heartbeat failed, the next tries again: {cause(error)}",
                file=sys.stderr,
            )


def open_study(search: Search, joining: bool = False) -> optuna.Study:
    """The study of `search` in OPTUNA_STORAGE, created or joined; else created in a
    temporary journal file that this machine's processes share."""
    storage = open_storage(search.heartbeat_seconds, search.grace_seconds)
    if storage is None:
        folder = tempfile.mkdtemp(prefix="train_batch-study-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        storage = optuna.storages.JournalStorage(JournalFileBackend(f"{folder}/study.log"))
    name = f"train_batch-{search.parent_run_id}"
    pruner = space.PRUNERS[search.pruner]()
    if not joining:
        sampler = space.make_sampler(search.hyperparameters, search.strategy, search.trials)
        return optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction="maximize"
        )
    sampler = space.make_sampler(search.hyperparameters, search.strategy, search.trials, False)
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise UserError(f"study {name} is not in {redacted(storage_url())}") from None


def join(parent_run_id: str) -> tuple[optuna.Study, Search]:
    """The study and settings of the shared search whose parent run is `parent_run_id`."""
    try:
        parent = mlflow.MlflowClient().get_run(parent_run_id)
    except MlflowException:
        where = tracking_uri()
        if not where.startswith("http"):  # a search shared by machines is on a team's server
            where += " (set MLFLOW_TRACKING_URI to the team's server)"
        raise UserError(f"run {parent_run_id!r} does not exist in {where}") from None
    tags, status = parent.data.tags, parent.info.status
    if tags.get("stage") != "train_batch" or tags.get("search") != "shared":
        raise UserError(f"run {parent_run_id} is not a train_batch run with a shared search")
    if status != "RUNNING":
        raise UserError(f"run {parent_run_id} has ended ({status})")
    if not storage_url():
        where = tags["study_storage"]
        raise UserError(f"run {parent_run_id} is shared through {where}: set {STORAGE_ENV}")
    search = Search(**mlflow.artifacts.load_dict(f"runs:/{parent_run_id}/search.json"))
    return open_study(search, joining=True), search


def optimize(study: optuna.Study, search: Search, workers: int) -> int:
    """Run trials of `search` here, `workers` at a time, until it is done; return how many.
    The process that started a shared search then waits for the other machines' trials."""
    chosen = space.parse_space(search.hyperparameters)
    client = mlflow.MlflowClient()
    # Trials carry the user, source and git commit that mlflow.start_run gave this run.
    this_run, run_tags = mlflow.active_run().info.run_id, mlflow.active_run().data.tags
    tags = {k: v for k, v in run_tags.items() if k.startswith(("mlflow.user", "mlflow.source."))}
    tags |= {"mlflow.parentRunId": search.parent_run_id, "host": HOST, "worker": WORKER}
    joined = this_run != search.parent_run_id
    if joined:
        mlflow.set_tags({"joined": search.parent_run_id, "host": HOST, "worker": WORKER})
        tags["worker_run"] = this_run  # a joined worker's run, ended KILLED if it dies
    shown = f"{search.trials} trials ({search.strategy}), {workers} at a time here"
    print(f"[train_batch] {shown}", file=sys.stderr)
    # Each trial process gets its share of the cores.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = str(max(1, (cores or 1) // workers))
    environment = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "TF_NUM_INTEROP_THREADS": "1"}
    environment |= dict.fromkeys(("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"), threads)
    ran = []

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial, chosen)
        number = trial_number(study, trial)
        title = f"trial {number}/{search.trials}"
        for name, value in trial.params.items():
            title += f" {name}={value:.2g}" if isinstance(value, float) else f" {name}={value}"
        # A retry carries the attributes of the trial it repeats, whose run it names.
        repeated = trial.user_attrs.get("mlflow_run_id")
        if repeated and client.get_run(repeated).info.status == "FINISHED":
            # Taken for dead (its database was away, say), it ran on to its end: that answers.
            run_id, error, started = repeated, "", time.perf_counter()
        else:
            run_tags = tags | {"trial": str(number)} | ({"retry_of": repeated} if repeated else {})
            run_id = client.create_run(
                search.experiment_id, run_name=title, tags=run_tags
            ).info.run_id
            for key, value in {"mlflow_run_id": run_id, "trial": number, "host": HOST}.items():
                trial.set_user_attr(key, value)
            arguments = ["--preprocess_run", search.preprocess_run, "--dataset", search.dataset]
            arguments += [f"--{name}={value}" for name, value in params.items()]
            if repeated and checkpoints.latest(repeated):  # goes on from its last checkpoint
                arguments += ["--resume", repeated]
            print(f"[train_batch] {title} on {HOST}: started, run {run_id}", file=sys.stderr)
            started, killed = time.perf_counter(), False
            if not hasattr(local, "pool"):  # the thread's first trial, or its process was killed
                local.pool = pools.enter_context(
                    ProcessPoolExecutor(1, spawn, initializer=follow_the_search)
                )
            try:
                trial_environment = environment | {"MLFLOW_RUN_ID": run_id}
                error = local.pool.submit(run_trial, arguments, trial_environment, trial).result()
            except BrokenProcessPool:  # its process was killed: by a stop, or by the OOM killer
                killed, error = True, "the trial's process was killed"
                del local.pool
            except Exception as failure:  # a bug in train
                error = f"{type(failure).__name__}: {failure}"
            finally:
                if client.get_run(run_id).info.status == "RUNNING":  # it never ended its run
                    ended = "KILLED" if killed or signals.stopping() else "FAILED"
                    client.set_terminated(run_id, ended)
        if signals.stopping():
            if storage_url():  # the other workers run it again, as they would a dead worker's
                Retry(max_retry=2)(study, study.get_trials(deepcopy=False)[trial.number])
            raise signals.Stopped("the search is stopping")
        ran.append(run_id)
        run = client.get_run(run_id)
        accuracy = run.data.metrics.get("accuracy")
        pruned = run.data.tags.get("pruned") == "true"
        if pruned:
            outcome = "pruned"
        elif accuracy is None:  # the tag that train set, else its last error line
            outcome = run.data.tags.get(naming.ERROR_TAG) or error[:500]
            client.set_tag(run_id, naming.ERROR_TAG, outcome)
        else:
            outcome = f"accuracy {accuracy:.4f}"
        seconds = time.perf_counter() - started
        print(f"[train_batch] {title} on {HOST}: {outcome} in {seconds:.0f} s", file=sys.stderr)
        if pruned:
            raise optuna.TrialPruned()
        return float("nan") if accuracy is None else accuracy  # nan: Optuna fails the trial

    def stop_when_answered(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # A retry's answer stands for its dead worker's trial, which counts as failed too.
        trials = study.get_trials(deepcopy=False)
        retries = sum(Retry.retried_trial_number(t) is not None for t in trials)
        answers = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        optuna.study.MaxTrialsCallback(search.trials + retries, states=answers)(study, trial)

    # Each of optimize's threads has a trial process of its own, so that one killed (by the
    # OOM killer) costs only its trial. Spawned, not forked: a process that imported
    # TensorFlow must not fork. The trial processes ignore SIGINT and SIGTERM, which a Ctrl-C
    # or `kill -- -<pid>` sends them too: this process kills them and ends their runs KILLED.
    spawn, local = multiprocessing.get_context("spawn"), threading.local()
    with contextlib.ExitStack() as pools:
        signals.on_stop(lambda: [child.kill() for child in multiprocessing.active_children()])
        # Locally, this process runs every trial; shared, each worker runs until they are done.
        n_trials = None if storage_url() else search.trials
        study.optimize(objective, n_trials, n_jobs=workers, callbacks=[stop_when_answered])
        if not joined:  # the search's own process waits for the trials running elsewhere
            wait_for_the_others(
                study, search.heartbeat_seconds, lambda: study.optimize(objective, 1)
            )
    mlflow.log_metric("trials_run_here", len(ran))
    return len(ran)


def wait_for_the_others(study: optuna.Study, seconds: int, run_retry: Callable[[], None]) -> None:
    """Wait until no trial of `study` runs or waits, through a restart of its database.

    optimize fails a dead worker's trial only when it starts one, and none starts once the
    search has its answers, so this asks the storage every `seconds`, and calls `run_retry`
    for a trial queued again that nobody else takes.
    """
    unfinished = (TrialState.RUNNING, TrialState.WAITING)
    while True:
        try:
            if not study.get_trials(states=unfinished):
                return
            time.sleep(seconds)
            optuna.storages.fail_stale_trials(study)
            if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                run_retry()
        except DATABASE_AWAY as error:
            print(
                f"[train_batch] waiting for the study's database: {cause(error)}", file=sys.stderr
            )


def trial_number(study: optuna.Study, trial: optuna.Trial) -> int:
    """The trial's number from 1, retries left out: a retry has the number it repeats."""
    trials = study.get_trials(deepcopy=False)  # in the order of their numbers
    repeated = Retry.retried_trial_number(trials[trial.number])
    first = trial.number if repeated is None else repeated
    return 1 + sum(Retry.retried_trial_number(t) is None for t in trials[:first])


def follow_the_search() -> None:
    """Start a trial process: it ignores SIGINT and SIGTERM (the search's process stops it),
    and exits when the search's process dies alone (SIGKILL, the OOM killer). Its trial is then
    taken for dead and run again, not trained on by an orphan that nobody waits for."""
    signals.ignore()
    search = multiprocessing.parent_process()

    def exit_with_the_search() -> None:
        multiprocessing.connection.wait([search.sentinel])
        os._exit(1)

    threading.Thread(target=exit_with_the_search, daemon=True).start()


def run_trial(arguments: list[str], environment: dict[str, str], trial: optuna.Trial) -> str:
    """In a pool process: run `python train.py <arguments>`'s main; return its last error line.

    The trial arrives pickled, as Optuna's Study and storages allow (they reconnect), so the
    process reports to the very trial that optimize asked for, with the public Trial.report.
    """
    os.environ.update(environment)  # before TensorFlow starts: it reads its threads here
    import keras

    import train  # the project's train.py, on the path of the process that made the pool

    pruning.trial = trial
    errors = io.StringIO()
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
                client.set_tag(run_id, naming.ERROR_TAG, f"{worker} stopped sending heartbeats")
                client.set_terminated(run_id, "KILLED")
    number = trial.user_attrs.get("trial", trial.number + 1)
    print(f"[train_batch] trial {number}'s worker stopped: it runs again", file=sys.stderr)
    Retry(max_retry=2)(study, trial)


def write_summary(study: optuna.Study) -> str:
    """Log the search's summary to the active run, its parent; return it in one line: the
    trials as `trials.json` (a table in the UI) and `trials.csv`, the counts, `best_accuracy`,
    the tag `best_run_id` and accuracy against each searched value."""
    parent = mlflow.active_run().info
    table = study.trials_dataframe(("user_attrs", "state", "params", "value", "duration"))
    if table.empty:
        raise UserError(f"search {parent.run_id} has no trials to sum up")
    searched = [column.removeprefix("params_") for column in table if column.startswith("params_")]
    table.columns = [c.removeprefix("user_attrs_").removeprefix("params_") for c in table]
    table = table.rename(columns={"mlflow_run_id": "run_id", "value": "accuracy"})
    table["seconds"] = table.pop("duration").dt.total_seconds().round(1)
    # Optuna gives a pruned trial its last validation accuracy as its value: not a test's.
    table.loc[table["state"] != "COMPLETE", "accuracy"] = None
    # Why a trial failed is its run's tag `error`: set by its worker, or by the one that
    # found its heartbeats stopped.
    children = mlflow.search_runs(
        [parent.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'"
    )
    if "tags.error" in children:
        table["error"] = table["run_id"].map(children.set_index("run_id")["tags.error"])
    columns = ["trial", "run_id", "state", *searched, "accuracy", "seconds", "host", "error"]
    table = table.reindex(columns=columns).sort_values("trial").fillna({"error": ""})
    print(table.to_string(index=False), file=sys.stderr)
    mlflow.log_table(table, "trials.json")
    mlflow.log_text(table.to_csv(index=False), "trials.csv")
    counts = table["state"].value_counts()  # of Optuna's states
    finished, failed, pruned = (int(counts.get(s, 0)) for s in ("COMPLETE", "FAIL", "PRUNED"))
    mlflow.log_metrics(dict(trials_finished=finished, trials_failed=failed, trials_pruned=pruned))
    seconds = time.time() - parent.start_time / 1000
    mlflow.log_metric("batch_seconds", seconds)
    numbers = [name for name in searched if table[name].dtype.kind in "biuf"]
    if numbers and finished:
        figure = plots.metric_against_params(table, "accuracy", numbers)
        mlflow.log_figure(figure, "accuracy_by_hyperparameter.png")
    if not finished:
        raise UserError(f"none of the {len(table)} trials finished; see the child runs' logs")
    best = study.best_trial
    best_run = best.user_attrs["mlflow_run_id"]
    mlflow.log_metric("best_accuracy", best.value)
    mlflow.set_tag("best_run_id", best_run)
    machines = table["host"].nunique()
    where = f" on {machines} machines" if machines > 1 else ""
    return (
        f"{finished} of {len(table)} trials finished in {seconds:.0f} s{where}, {failed} FAILED, "
        f"{pruned} pruned; best {best_run} with accuracy {best.value:.4f}"
    )
