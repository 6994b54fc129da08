"""Searches that hand out trials: a grid on one machine, or an Optuna study many workers share.

A study kept in a database (Optuna's RDB storage, PostgreSQL for a team) is how one search
runs on many machines: the run that starts it creates the study, named after the batch's
parent run, and every worker that joins asks the same study for trials until `trials` are
done. Workers send heartbeats; a worker that stops sending them (a machine that died) has its
trial failed by whoever notices, its MLflow run ended KILLED, and the trial run again.
Each trial's train process reports its validation accuracy per epoch to the study, whose
pruner may stop it early.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import mlflow
import optuna
import requests
import tenacity
from mlflow.exceptions import MlflowException
from optuna.storages import RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError

from mnist_pipeline.errors import UserError
from mnist_pipeline.search import choices as search
from mnist_pipeline.tracking import signals
from mnist_pipeline.tracking.runs import experiment_ids

# Where a team's study lives: an SQLAlchemy database URL, as Optuna's own CLI reads it.
STORAGE_ENV = "OPTUNA_STORAGE"
# The batch prints a line per trial itself; Optuna's INFO lines would repeat them.
optuna.logging.set_verbosity(optuna.logging.WARNING)
# How a trial's train process finds its trial, to report each epoch and learn if it is pruned.
TRIAL_STORAGE_ENV, TRIAL_STUDY_ENV, TRIAL_ID_ENV = (
    "MNIST_TRIAL_STORAGE",
    "MNIST_TRIAL_STUDY",
    "MNIST_TRIAL_ID",
)
# Tags on the batch's parent run.
STUDY_TAG, STORAGE_TAG, SEARCH_TAG = "study_name", "study_storage", "search"
MAX_RETRIES = 2  # a trial whose worker died runs again at most this often
POLL_SECONDS = 2.0
DATABASES = ("postgresql", "mysql", "sqlite")


@dataclass
class SearchSettings:
    """What every worker of a search needs, kept in the study so that joining takes one ID."""

    parent_run_id: str
    experiment_id: str
    preprocess_run: str
    hyperparameters: dict[str, str]
    strategy: str
    trials: int
    pruner: str
    seed: int
    heartbeat_seconds: int
    grace_seconds: int

    @property
    def choices(self) -> list[search.Choice]:
        return search.parse_choices(self.hyperparameters)

    @property
    def searched(self) -> list[str]:
        return [choice.name for choice in self.choices if choice.is_searched]


class TrialFailed(Exception):
    """A trial's train process failed: the study records it as FAIL and the search goes on."""


class Surplus(Exception):
    """Two workers asked for the last trial at once: the later one gives its trial back."""


def run_workers(work: Callable[[], None], workers: int) -> None:
    """Run `work` in `workers` threads (each starts trial processes) and wait for them all."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(work) for _ in range(workers)]:
            future.result()


class GridSearch:
    """Every combination of the listed values, handed out once each, on this machine."""

    def __init__(self, choices: list[search.Choice]):
        self.points = search.grid_points(choices)
        self.total = len(self.points)
        self._lock = threading.Lock()
        self._next = 0

    def work(self, runner) -> None:
        while True:
            with self._lock:
                if self._next >= self.total:
                    return
                number, self._next = self._next + 1, self._next + 1
            runner.run(self.points[number - 1], number)


@dataclass
class Progress:
    """A study's trials as a search counts them: each retry belongs to its first attempt."""

    total: int
    planned: int  # trials begun, retries not counted again
    settled: int  # of those, the ones with a final answer (complete, pruned or failed)
    running: int
    waiting: int  # retries of dead workers' trials, not yet taken

    @property
    def done(self) -> bool:
        return self.settled >= self.total and not self.running and not self.waiting

    @property
    def can_start(self) -> bool:
        return bool(self.waiting) or self.planned < self.total


class StudySearch:
    """Trials from an Optuna study, shared by every worker that joins it."""

    def __init__(self, study, settings: SearchSettings, storage_url: str, retry_seconds: float):
        self.study = study
        self.settings = settings
        self.storage_url = storage_url
        self.retry_seconds = retry_seconds
        self.total = settings.trials

    @classmethod
    def create(
        cls, settings: SearchSettings, storage_url: str | None, retry_seconds: float = 120
    ) -> StudySearch:
        """Create the study of the batch `settings.parent_run_id`.

        Without `storage_url` the study lives in a journal file in a temporary folder that
        this machine's trial processes share; with one, in that database for every worker.
        """

        if not storage_url:
            folder = tempfile.mkdtemp(prefix="train_batch-study-")
            storage_url = f"journal:{os.path.join(folder, 'study.log')}"
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
        storage = open_storage(storage_url, settings.heartbeat_seconds, settings.grace_seconds)
        study = optuna.create_study(
            study_name=study_name(settings.parent_run_id),
            storage=storage,
            direction="maximize",
            sampler=search.make_sampler(settings.strategy, settings.seed, settings.trials),
            pruner=search.make_pruner(settings.pruner),
        )
        study.set_user_attr("settings", json.dumps(asdict(settings)))
        return cls(study, settings, storage_url, retry_seconds)

    @classmethod
    def join(cls, parent_run_id: str, storage_url: str, retry_seconds: float = 120) -> StudySearch:
        """Join the search whose parent run is `parent_run_id`; UserError if it is not one."""

        try:
            parent = mlflow.MlflowClient().get_run(parent_run_id)
        except MlflowException:
            raise UserError(
                f"run {parent_run_id!r} does not exist in {mlflow.get_tracking_uri()}"
            ) from None
        tags = parent.data.tags
        if tags.get("stage") != "train_batch":
            raise UserError(f"run {parent_run_id} is not a train_batch run; join a search's run")
        if tags.get(SEARCH_TAG) != "shared":
            raise UserError(
                f"run {parent_run_id} is not a shared search (it ran on one machine); "
                f"start one with {STORAGE_ENV} set"
            )
        if parent.info.status != "RUNNING":
            raise UserError(f"search {parent_run_id} has ended ({parent.info.status})")
        if not storage_url:
            raise UserError(
                f"joining needs the search's storage: set {STORAGE_ENV} "
                f"({tags.get(STORAGE_TAG, 'a database URL')})"
            )
        storage = open_storage(storage_url)
        name = tags[STUDY_TAG]
        try:
            found = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise UserError(
                f"study {name} is not in {redacted(storage_url)}; "
                f"set {STORAGE_ENV} to the storage the search was started with"
            ) from None
        settings = SearchSettings(**json.loads(found.user_attrs["settings"]))
        storage = open_storage(storage_url, settings.heartbeat_seconds, settings.grace_seconds)
        study = optuna.load_study(
            study_name=name,
            storage=storage,
            # Unseeded: workers seeded alike would all suggest the same first trials.
            sampler=search.make_sampler(settings.strategy, None, settings.trials),
            pruner=search.make_pruner(settings.pruner),
        )
        return cls(study, settings, storage_url, retry_seconds)

    # ------------------------------------------------------------------ working

    def work(self, runner) -> None:
        """Run trials until the study has `trials` answers; wait for other workers' last ones."""
        objective = self._objective(runner)
        while True:
            progress = self._with_retries(self.progress)
            if progress.done:
                return
            if progress.can_start:
                self._with_retries(
                    lambda: self.study.optimize(objective, n_trials=1, catch=(TrialFailed, Surplus))
                )
            else:
                # Other workers hold the last trials: notice if one of them died.
                self._with_retries(self._fail_stale_trials)
                time.sleep(POLL_SECONDS)

    def progress(self) -> Progress:

        attempts: dict[int, list] = {}
        for trial in self.study.get_trials(deepcopy=False):
            if trial.user_attrs.get("surplus"):
                continue
            attempts.setdefault(trial.system_attrs.get("failed_trial", trial.number), []).append(
                trial
            )
        answered = (TrialState.COMPLETE, TrialState.PRUNED)
        unfinished = (TrialState.RUNNING, TrialState.WAITING)

        def settled(tries: list) -> bool:
            states = [trial.state for trial in tries]
            return any(s in answered for s in states) or not any(s in unfinished for s in states)

        every = [trial for tries in attempts.values() for trial in tries]
        return Progress(
            total=self.total,
            planned=len(attempts),
            settled=sum(settled(tries) for tries in attempts.values()),
            running=sum(trial.state == TrialState.RUNNING for trial in every),
            waiting=sum(trial.state == TrialState.WAITING for trial in every),
        )

    def _objective(self, runner) -> Callable:

        choices = self.settings.choices

        def objective(trial) -> float:
            trials = self.study.get_trials(deepcopy=False)
            this = next(t for t in trials if t.number == trial.number)
            first = [
                t
                for t in trials
                if "failed_trial" not in t.system_attrs and not t.user_attrs.get("surplus")
            ]
            retry_of = this.system_attrs.get("failed_trial")
            tags = {"optuna_trial": str(trial.number)}
            if retry_of is None:
                number = 1 + sum(t.number < trial.number for t in first)
                if number > self.total:
                    trial.set_user_attr("surplus", True)
                    raise Surplus()
            else:
                number = 1 + sum(t.number < retry_of for t in first)
                tags["retry_of"] = this.user_attrs.get("mlflow_run_id", "")
            params = {choice.name: search.suggest(trial, choice) for choice in choices}
            result = runner.run(
                params,
                number,
                tags=tags,
                environment={
                    TRIAL_STORAGE_ENV: self.storage_url,
                    TRIAL_STUDY_ENV: self.study.study_name,
                    # Optuna names a trial to another process only by its storage ID.
                    TRIAL_ID_ENV: str(trial._trial_id),
                },
                on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
            )
            if signals.stopping():
                # This worker is being stopped: hand its trial back for another to run.
                current = next(t for t in self.study.get_trials() if t.number == trial.number)
                RetryFailedTrialCallback(max_retry=MAX_RETRIES)(self.study, current)
                raise signals.Stopped("the batch is stopping")
            if result["status"] == "PRUNED":
                raise optuna.TrialPruned()
            if result["status"] != "FINISHED" or result["accuracy"] is None:
                raise TrialFailed(result["error"])
            return result["accuracy"]

        return objective

    def _fail_stale_trials(self) -> None:

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def _with_retries(self, action: Callable):
        """Call `action`, riding out a storage that is away for up to `retry_seconds`."""

        def tell(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception()
            print(
                f"[train_batch] the study storage is unreachable ({_first_line(error)}); "
                f"retrying for up to {self.retry_seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_transient),
            wait=tenacity.wait_exponential(multiplier=0.5, max=10),
            stop=tenacity.stop_after_delay(self.retry_seconds),
            before_sleep=tell,
            reraise=True,
        )
        try:
            return retrying(action)
        except Exception as error:
            if _is_transient(error):
                raise UserError(
                    f"lost the study storage {redacted(self.storage_url)} for more than "
                    f"{self.retry_seconds:.0f} s: {_first_line(error)}"
                ) from None
            raise


def study_name(parent_run_id: str) -> str:
    return f"train_batch-{parent_run_id}"


def open_storage(url: str, heartbeat_seconds: int | None = None, grace_seconds: int | None = None):
    """Return Optuna's storage for `url`: a database (RDB), or `journal:<file>` on one machine.

    With `heartbeat_seconds`, running trials send heartbeats, and a trial silent for
    `grace_seconds` is failed, its MLflow run ended KILLED and the trial queued again.
    Raises UserError for a URL that is not a database or a database that cannot be opened.
    """

    if url.startswith("journal:"):
        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))

    expected = "expected a database URL such as postgresql://optuna:<password>@<host>:5433/optuna"
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise UserError(f"study storage {url!r} is not a database URL; {expected}") from None
    if backend not in DATABASES:
        raise UserError(f"study storage {redacted(url)} is not a database URL; {expected}")
    heartbeat = {}
    if heartbeat_seconds:
        heartbeat = {
            "heartbeat_interval": heartbeat_seconds,
            "grace_period": grace_seconds,
            "heartbeat_stale_trial_callback": _end_dead_trial,
        }
    try:
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna since 2.9; they are what we need.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return PatientStorage(url, engine_kwargs={"pool_pre_ping": True}, **heartbeat)
    except (SQLAlchemyError, ImportError) as error:
        raise UserError(
            f"cannot open the study storage {redacted(url)}: {_first_line(error)}"
        ) from None


class PatientStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, with heartbeats that outlive a database away for a moment.

    Optuna records heartbeats from a thread that ends at its first failed write, after
    which a live trial would be taken for dead. Here a missed beat is skipped instead, and
    the next one, once the database is back, keeps the trial alive.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except optuna.exceptions.StorageInternalError:
            pass


def _end_dead_trial(study, trial) -> None:
    """Optuna failed `trial`, whose worker stopped sending heartbeats: end its run, run it again."""

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        client = mlflow.MlflowClient()
        run = client.get_run(run_id)
        if run.info.status == "RUNNING":
            client.set_tag(
                run_id,
                "error",
                f"its worker {run.data.tags.get('worker', '')} stopped sending heartbeats",
            )
            client.set_terminated(run_id, "KILLED")
            _end_dead_worker(client, run)
    print(
        f"[train_batch] optuna trial {trial.number}: its worker stopped answering; "
        "the trial runs again",
        file=sys.stderr,
        flush=True,
    )
    RetryFailedTrialCallback(max_retry=MAX_RETRIES)(study, trial)


def _end_dead_worker(client, trial_run) -> None:
    """End as KILLED the run of the worker that ran `trial_run`, if it joined and died."""

    worker = trial_run.data.tags.get("worker", "")
    parent = trial_run.data.tags.get("mlflow.parentRunId", "")
    for run in mlflow.search_runs(
        experiment_ids=experiment_ids(),
        filter_string=f"tags.joined = '{parent}' and tags.worker = '{worker}' "
        "and attributes.status = 'RUNNING'",
        output_format="list",
    ):
        client.set_tag(run.info.run_id, "error", "this worker stopped sending heartbeats")
        client.set_terminated(run.info.run_id, "KILLED")


def pruning_callbacks() -> list:
    """Keras callbacks that report each epoch to the trial's Optuna study, if there is one.

    A train process started by a search gets its trial through the environment; run by
    hand, train has no study and this returns no callback.
    """
    if not os.environ.get(TRIAL_STUDY_ENV):
        return []
    import keras

    study = optuna.load_study(
        study_name=os.environ[TRIAL_STUDY_ENV],
        storage=_trial_storage(os.environ[TRIAL_STORAGE_ENV]),
    )
    settings = SearchSettings(**json.loads(study.user_attrs["settings"]))
    study.pruner = search.make_pruner(settings.pruner)
    trial = optuna.trial.Trial(study, int(os.environ[TRIAL_ID_ENV]))

    class ReportToStudy(keras.callbacks.Callback):
        """Report val_accuracy after each epoch; stop training if the study's pruner says so."""

        pruned = False

        def on_epoch_end(self, epoch, logs=None):
            accuracy = float((logs or {}).get("val_accuracy", 0.0))
            trial.report(accuracy, step=epoch)
            if trial.should_prune():
                self.pruned = True
                self.model.stop_training = True
                mlflow.set_tags({"pruned": "true", "pruned_at_epoch": str(epoch + 1)})
                print(
                    f"Pruned after epoch {epoch + 1}: val_accuracy {accuracy:.4f} is behind "
                    f"the study's other trials",
                    file=sys.stderr,
                )

    return [ReportToStudy()]


@functools.cache
def _trial_storage(url: str):
    """The study storage at `url`, opened once per process: a trial process runs many trials."""
    return open_storage(url)


def was_pruned(callbacks: list) -> bool:
    return any(getattr(callback, "pruned", False) for callback in callbacks)


def redacted(url: str) -> str:
    """`url` with its password replaced by ***, for messages and tags."""
    if url.startswith("journal:"):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


def _is_transient(error: BaseException) -> bool:

    return isinstance(error, OperationalError | InterfaceError | requests.ConnectionError)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
