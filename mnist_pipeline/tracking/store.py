"""The SQLite tracking store, created once under a lock: an MLflow tracking-store plugin.

MLflow creates and migrates a new SQLite store in whichever process opens it first, and
two processes doing that at once can damage it for good (`table _alembic_tmp_tags already
exists`). `mlflow run` and `mlflow ui` open the store before any of our code runs, so the
only place that covers them is MLflow's plugin system: pyproject.toml registers
`tracking_store` and `registry_store` for the `sqlite` scheme under MLflow's entry-point
groups `mlflow.tracking_store` and `mlflow.model_registry_store` (through
mnist_store_plugin.py, which imports this module only when MLflow builds a store), and
`make setup` installs them (`pip install -e .`). Every process of the virtualenv that
opens a `sqlite:///` store then comes through here and gets MLflow's own SQLAlchemy store,
built:

- by one process at a time, under an exclusive lock on `<database>.lock`, so that the
  store is created and migrated exactly once, with SIGINT and SIGTERM held back meanwhile;
- and when a store that an earlier race damaged cannot be opened, the error is one line
  that says how to recover; nothing is deleted;
- so that every run it creates names its process (tag `process`, see tracking/signals.py), and
  a run that MLflow ends FAILED because a signal stops the process ends KILLED instead, as
  does one that `mlflow run` ends FAILED because the stage's own process was killed (by
  SIGTERM, or SIGKILL as the OOM killer sends it);
- so that SIGINT and SIGTERM stop the process between database sessions, never in the
  middle of one (which would leave the database locked; see signals.deferred).
- with every experiment's artifacts in `mlruns/` beside the database, not in `./mlruns` of
  the working directory.

In the `mlflow run` command itself it also installs signals.py's signal handlers, so that
SIGTERM cancels the entry point's process the way MLflow already does for Ctrl-C.

It builds MLflow's public store classes (SqlAlchemyStore, RestStore) and wraps three of
their public members on the instance: `create_run`, `update_run_info` and, for SQL stores,
`ManagedSessionMaker`. Checked against MLflow 3.17.2; tests/test_store_plugin.py fails
loudly if a later MLflow renames them or changes their arguments.

This module may be imported while MLflow itself is being imported: it imports MLflow lazily.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from mnist_pipeline.errors import UserError
from mnist_pipeline.tracking import signals

LOCK_TIMEOUT_SECONDS = 300
# The databases whose lock this process holds, so that building one store while building
# another does not wait for itself.
_locked_here: set[Path] = set()


class DamagedStoreError(UserError, click.ClickException):
    """A store left half-migrated by an earlier first-time race. One line, also from `mlflow`."""


def tracking_store(store_uri: str, artifact_uri: str | None = None):
    """MLflow's tracking store for `store_uri`, created under the lock (entry point)."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if _is_mlflow_run_command():
        signals.install()
    database = database_path(store_uri)

    # The artifacts go to ./mlruns beside the database, wherever a command runs: MLflow's
    # default, ./mlruns of the working directory, would mix two stores' runs in one folder.
    beside = str(database.parent / "mlruns") if database else DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH

    def build():
        if database is not None and not _has_default_experiment(database):
            # Whoever creates the store decides where the Default experiment keeps its
            # artifacts. `mlflow ui` would choose `mlflow-artifacts:/0`, which only that
            # server's clients can use, so the store is created as any command creates it.
            SqlAlchemyStore(store_uri, beside)
        return SqlAlchemyStore(store_uri, artifact_uri or beside)

    store = _build(store_uri, build)
    _watch_runs(store)
    return store


def rest_tracking_store(store_uri: str, artifact_uri: str | None = None):
    """MLflow's store for a tracking server (`http:`, `https:`), with the same stopping rules.

    The server owns its database; only the `mlflow run` signal handlers and the run
    bookkeeping of `_watch_runs` apply.
    """
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.credentials import get_default_host_creds

    if _is_mlflow_run_command():
        signals.install()
    store = RestStore(functools.partial(get_default_host_creds, store_uri))
    _watch_runs(store)
    return store


def registry_store(store_uri: str, tracking_uri: str | None = None):
    """MLflow's model registry store for `store_uri`, created under the lock (entry point)."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    store = _build(store_uri, lambda: SqlAlchemyStore(store_uri))
    _sessions_uninterrupted(store)
    return store


def database_path(store_uri: str) -> Path | None:
    """The file of a `sqlite:///` URI; None for an in-memory database."""
    from sqlalchemy.engine import make_url

    path = make_url(store_uri).database
    if not path or path == ":memory:":
        return None
    return Path(path).absolute()


def _build(store_uri: str, build):
    database = database_path(store_uri)
    if database is None:
        return build()
    if not database.parent.is_dir():
        return build()  # MLflow's own error says that the folder does not exist
    if database in _locked_here:
        return build()  # a store built while this process builds another one
    with signals.deferred(), _exclusive_lock(database.with_name(database.name + ".lock")):
        _locked_here.add(database)
        try:
            return build()
        except Exception as error:
            # Anything else is re-raised as it is.
            _explain_damage(database, error)
            raise
        finally:
            _locked_here.discard(database)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (released by the OS if the process dies)."""
    with open(path, "a") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(
                        f"{path}: another process has held this lock for "
                        f"{LOCK_TIMEOUT_SECONDS} s while creating the store; is it stuck?"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _has_default_experiment(database: Path) -> bool:
    if not database.exists():
        return False
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return (
            connection.execute("SELECT 1 FROM experiments WHERE experiment_id = 0").fetchone()
            is not None
        )
    except sqlite3.Error:
        return False
    finally:
        connection.close()


def _explain_damage(database: Path, error: Exception) -> None:
    """Raise DamagedStoreError if `error` comes from a migration cut in half by a race.

    MLflow's race leaves `_alembic_tmp_<table>` behind, and every later opening fails on
    it. A store that opens despite such a leftover is used as it is.
    """
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        leftovers = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'"
            )
        ]
        if not leftovers:
            return
        try:
            (runs,) = connection.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.Error:
            runs = 0
    except sqlite3.Error:
        return
    finally:
        connection.close()
    held = "it holds no runs" if runs == 0 else f"it holds {runs} runs: keep the moved file"
    cause = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
    raise DamagedStoreError(
        f"{database}: this MLflow store was damaged while it was being created by two "
        f"commands at once ({cause}); {held}. To start a new store, move it aside and "
        f"rerun: mv {database} {database}.damaged"
    ) from error


def _is_mlflow_run_command() -> bool:
    command = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if command is None:
        return False
    is_mlflow = command.name == "mlflow" or command.parts[-2:] == ("mlflow", "__main__.py")
    return is_mlflow and sys.argv[1:2] == ["run"]


_created_here: list[str] = []


def _watch_runs(store) -> None:
    """Tag the runs this process creates with it; end them KILLED, not FAILED, when stopped."""
    import atexit

    from mlflow.entities import RunStatus, RunTag
    from mlflow.exceptions import MlflowException

    create_run, update_run_info = store.create_run, store.update_run_info

    def create_run_naming_its_process(*args, **kwargs):
        # Only in the pipeline's processes and `mlflow run`: a tracking server that uses
        # this store creates runs for processes elsewhere.
        tags = list(kwargs.get("tags") or [])
        if signals.installed and all(tag.key != signals.PROCESS_TAG for tag in tags):
            kwargs["tags"] = [*tags, RunTag(signals.PROCESS_TAG, signals.process_tag())]
        run = create_run(*args, **kwargs)
        _created_here.append(run.info.run_id)
        return run

    def update_run_info_truthfully(run_id, run_status, *args, **kwargs):
        if run_status == RunStatus.FAILED and signals.stopping():
            run_status = RunStatus.KILLED
        elif run_status == RunStatus.FAILED and signals.installed:
            # `mlflow run` (and main, through mlflow.projects.run) ends FAILED the run of an
            # entry point whose process exited non-zero, a stage that took the run over.
            run = store.get_run(run_id)
            owner = run.data.tags.get(signals.PROCESS_TAG, "")
            if owner != signals.process_tag():
                if run.info.status != "RUNNING":
                    # The stage ended it: KILLED when SIGTERM stopped it. MLflow means to
                    # keep that, but 3.17.2's _maybe_set_run_terminated compares the
                    # status's name with numbers, and never does.
                    return run.info
                from mnist_pipeline.tracking.naming import ERROR_TAG
                from mnist_pipeline.tracking.stale_runs import process_is_gone

                if process_is_gone(owner):  # vanished in mid-run: SIGKILL, the OOM killer
                    run_status = RunStatus.KILLED
                    reason = f"its process {owner} was killed (SIGKILL, or out of memory)"
                    store.set_tag(run_id, RunTag(ERROR_TAG, reason))
        return update_run_info(run_id, run_status, *args, **kwargs)

    def end_runs_left_running() -> None:
        # A signal that arrives between creating a run and starting its process (inside
        # `mlflow run`) would otherwise leave it RUNNING.
        if not signals.stopping():
            return
        for run_id in _created_here:
            with contextlib.suppress(MlflowException):
                if store.get_run(run_id).info.status == "RUNNING":
                    update_run_info(run_id, RunStatus.KILLED, int(time.time() * 1000), None)

    store.create_run = create_run_naming_its_process
    store.update_run_info = update_run_info_truthfully
    atexit.register(end_runs_left_running)
    _sessions_uninterrupted(store)


def _sessions_uninterrupted(store) -> None:
    """Let a signal that arrives during a database session stop the process after it."""
    sessions = getattr(store, "ManagedSessionMaker", None)  # SQL stores only
    if sessions is None:
        return

    @contextlib.contextmanager
    def session_uninterrupted(*args, **kwargs):
        with signals.deferred(), sessions(*args, **kwargs) as session:
            yield session

    store.ManagedSessionMaker = session_uninterrupted
