"""Stopping: SIGINT and SIGTERM end every run a process started as KILLED, never RUNNING.

Left alone, Python turns Ctrl-C (SIGINT) into KeyboardInterrupt, which `with
mlflow.start_run()` ends as FAILED, and dies at once on SIGTERM (CI timeouts, `docker stop`,
systemd), leaving its runs RUNNING for good. `install()` makes both signals raise `Stopped`,
a KeyboardInterrupt, so that MLflow's own `mlflow run` cancels its child process as it does
for Ctrl-C, and `killed_when_stopped()` ends the active run KILLED.

A process killed with SIGKILL cannot clean up. Its runs stay RUNNING; each run names the
process responsible for it (tag `process`, `<host>:<pid>`), so `stale_runs()` can tell
them from runs whose process still works, and end_stale_runs.py ends them as KILLED. Its
half-done folders carry the same name (`staging_folder()`), and the next process that
stages into the same place removes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

PROCESS_TAG = "process"
SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Whether this process is one of the pipeline's (or `mlflow run`), which install() says.
installed = False
# The signal that is stopping this process, once one arrived.
stopped_by: int | None = None
# Called in the main thread when the first signal arrives, before Stopped is raised:
# for what other threads wait on, such as trial processes (see trials.py).
_on_stop: list[Callable[[], None]] = []
# How many `uninterrupted()` bodies the main thread is in, and whether a signal came
# during one of them.
_uninterruptible = 0
_pending = False


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by the first SIGINT or SIGTERM."""


def install() -> None:
    """Make SIGINT and SIGTERM raise `Stopped` in the main thread (once; later ones wait).

    A signal that is ignored (a background job started by a non-interactive shell ignores
    SIGINT) stays ignored, and a handler that someone else installed is kept.
    """
    global installed
    if threading.current_thread() is not threading.main_thread():
        return
    installed = True
    for signum in SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(signum, _stop)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _one_line_when_stopped


def stopping() -> bool:
    return stopped_by is not None


def on_stop(callback: Callable[[], None]) -> None:
    """Call `callback` (quick, in a signal handler) when SIGINT or SIGTERM stops this process."""
    _on_stop.append(callback)


def _stop(signum: int, frame) -> None:
    global stopped_by, _pending
    if stopped_by is not None:
        # Already stopping: let the clean-up finish (SIGKILL still ends it at once).
        return
    stopped_by = signum
    for callback in _on_stop:
        callback()
    if _uninterruptible:
        _pending = True  # raised when the write under way is done (see uninterrupted)
        return
    raise Stopped(signal.Signals(signum).name)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Let a SIGINT or SIGTERM that arrives during the body stop the process when it ends.

    For the tracking store's database sessions (see store.py). A signal raised in the
    middle of a SQLite write leaves that write's connection, and its lock on the database,
    to the garbage collector; ending the run KILLED then waits for the lock (MLflow's busy
    timeout, 20 s, twice) and fails. Only the main thread gets signals; elsewhere the body
    just runs.
    """
    global _uninterruptible, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _uninterruptible += 1
    try:
        yield
    finally:
        _uninterruptible -= 1
        if not _uninterruptible and _pending:
            _pending = False
            raise Stopped(signal.Signals(stopped_by).name)


def _one_line_when_stopped(kind, value, traceback) -> None:
    if issubclass(kind, KeyboardInterrupt):
        reason = f"by {value}" if isinstance(value, Stopped) else "by Ctrl-C"
        print(f"{os.path.basename(sys.argv[0])}: stopped {reason}", file=sys.stderr)
        return
    sys.__excepthook__(kind, value, traceback)


@contextlib.contextmanager
def killed_when_stopped() -> Iterator[None]:
    """End the active MLflow run as KILLED if the body is interrupted by a signal or Ctrl-C."""
    try:
        yield
    except KeyboardInterrupt:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        raise


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the body is done, then act on them.

    For the few seconds of work that must not be cut in half, such as creating the
    tracking store. Only the main thread can do this; elsewhere the body just runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


def process_tag() -> str:
    """`<host>:<pid>` of this process, the value of the tag `process`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_is_gone(tag: str) -> bool | None:
    """True if the process named by a `process` tag no longer runs, None if unknowable.

    Unknowable for another host, or a tag that is not `<host>:<pid>`. A zombie (exited,
    not yet reaped by its parent) counts as gone.
    """
    host, _, pid_text = tag.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def staging_folder(parent: Path, prefix: str) -> Path:
    """Make a new folder `<prefix><host>:<pid>-<random>` in `parent` for work renamed into place.

    Folders with the same prefix whose process is gone (killed with SIGKILL, a power cut)
    are removed first; those of live processes, such as a second command at work on the
    same folder, are left alone.
    """
    for folder in Path(parent).glob(f"{prefix}*"):
        owner = folder.name[len(prefix) :].rpartition("-")[0]
        if process_is_gone(owner):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{process_tag()}-"))


def swap_into_place(staged: Path, target: Path) -> None:
    """Put the folder `staged` at `target`, replacing what was there, in two renames.

    The old folder is moved into a staging folder beside `target` (see staging_folder)
    and deleted once the new one is in place. SIGINT and SIGTERM wait for the swap:
    stopped between the two renames, it would leave no folder at all.
    """
    staged, target = Path(staged), Path(target)
    with deferred():
        retired = None
        if target.exists():
            retired = staging_folder(target.parent, f".{target.name}.old-")
            target.rename(retired / target.name)
        staged.rename(target)
        if retired is not None:
            shutil.rmtree(retired)


def stale_runs(experiment_ids: list[str] | None = None) -> tuple[list, list]:
    """Return (stale, unknown): RUNNING runs whose process is gone, and those without one.

    `unknown` holds RUNNING runs that name no process (started by another tool) or a
    process on another host; they may well be alive.
    """
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient()
    if experiment_ids is None:
        experiment_ids = [
            e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
        ]
    if not experiment_ids:
        return [], []
    running = mlflow.search_runs(
        experiment_ids=experiment_ids,
        filter_string="attributes.status = 'RUNNING'",
        output_format="list",
    )
    stale, unknown = [], []
    for run in running:
        gone = process_is_gone(run.data.tags.get(PROCESS_TAG, ""))
        if gone is None:
            unknown.append(run)
        elif gone:
            stale.append(run)
    return stale, unknown
