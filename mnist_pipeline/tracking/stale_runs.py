"""Stale runs: RUNNING runs whose process is gone (killed with SIGKILL, a power cut).

Each run names the process responsible for it (tag `process`, `<host>:<pid>`); a run whose
process no longer exists on this host will never end by itself. end_stale_runs.py ends
such runs as KILLED.
"""

from __future__ import annotations

import os
import socket

from mnist_pipeline.tracking.signals import PROCESS_TAG


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


def stale_runs(experiment_ids: list[str] | None = None) -> tuple[list, list]:
    """Return (stale, unknown): RUNNING runs whose process is gone, and those without one.

    `unknown` holds RUNNING runs that name no process (started by another tool) or a
    process on another host; they may well be alive.
    """
    import mlflow

    running = mlflow.search_runs(
        experiment_ids=experiment_ids,
        filter_string="attributes.status = 'RUNNING'",
        output_format="list",
        search_all_experiments=True,  # when experiment_ids is None
    )
    stale, unknown = [], []
    for run in running:
        gone = process_is_gone(run.data.tags.get(PROCESS_TAG, ""))
        if gone is None:
            unknown.append(run)
        elif gone:
            stale.append(run)
    return stale, unknown
