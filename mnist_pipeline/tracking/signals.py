"""Stopping: SIGINT and SIGTERM end every run a process started as KILLED, never RUNNING.

Left alone, Python turns Ctrl-C (SIGINT) into KeyboardInterrupt, which `with
mlflow.start_run()` ends as FAILED, and dies at once on SIGTERM (CI timeouts, `docker stop`,
systemd), leaving its runs RUNNING for good. `install()` makes both signals raise `Stopped`,
a KeyboardInterrupt, so that MLflow's own `mlflow run` cancels its child process as it does
for Ctrl-C, and `killed_when_stopped()` ends the active run KILLED.

A process killed with SIGKILL cannot clean up. Its runs stay RUNNING; each run names the
process responsible for it (tag `process`, `<host>:<pid>`, see `process_tag()`), so
stale_runs.py can tell them from runs whose process still works.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator

PROCESS_TAG = "process"
SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Whether this process is one of the pipeline's (or `mlflow run`), which install() says.
installed = False
# The signal that is stopping this process, once one arrived.
stopped_by: int | None = None
# Called in the main thread when the first signal arrives, before Stopped is raised:
# for what other threads wait on, such as trial processes (see search/study.py).
_on_stop: list[Callable[[], None]] = []


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


def ignore() -> None:
    """Ignore SIGINT and SIGTERM in this process, and install() leaves them ignored: for a
    search's trial processes, which the search's own process stops (search/study.py)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def stopping() -> bool:
    return stopped_by is not None


def on_stop(callback: Callable[[], None]) -> None:
    """Call `callback` (quick, in a signal handler) when SIGINT or SIGTERM stops this process."""
    _on_stop.append(callback)


def _stop(signum: int, frame) -> None:
    global stopped_by
    if stopped_by is not None:
        # Already stopping: let the clean-up finish (SIGKILL still ends it at once).
        return
    stopped_by = signum
    for callback in _on_stop:
        callback()
    raise Stopped(signal.Signals(signum).name)


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

    For work that must not be cut in half: creating the tracking store, or one of its
    database sessions (see store.py). A signal raised in the middle of a SQLite write
    leaves that write's connection, and its lock on the database, to the garbage collector;
    ending the run KILLED then waits for the lock (MLflow's busy timeout, 20 s, twice) and
    fails. Only the main thread gets signals; elsewhere the body just runs.
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
