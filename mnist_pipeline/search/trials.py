"""Running training trials as child runs, in processes that run one trial after another."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import tenacity
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from mnist_pipeline import plots
from mnist_pipeline.errors import UserError
from mnist_pipeline.search.choices import HYPERPARAMETERS
from mnist_pipeline.tracking import signals
from mnist_pipeline.tracking.runs import PROJECT_DIR

HOST = socket.gethostname()
# A trial's run carries these tags: its number in the batch, the machine and process
# that ran it, and, for a trial that its study stopped early, `pruned`.
TRIAL_TAG, HOST_TAG, WORKER_TAG, PRUNED_TAG, ERROR_TAG = (
    "trial",
    "host",
    "worker",
    "pruned",
    "error",
)


def trial_name(number: int, total: int, params: dict, searched: list[str]) -> str:
    """`trial 3/12 nr_conv_1=24 lr=0.0031`: what mlflow ui shows in its runs table."""
    shown = " ".join(
        f"{name}={params[name]:.3g}"
        if isinstance(params[name], float)
        else f"{name}={params[name]}"
        for name in searched
        if name in params
    )
    return f"trial {number}/{total} {shown}".strip()


class TrialProcess:
    """A `python -m mnist_pipeline.search.trial_process` child, which runs train.py for each trial sent.

    It imports MLflow and TensorFlow once, and runs trials until it is closed or one of
    them fails (see trial_process.py).
    """

    def __init__(self, environment: dict[str, str]):
        self._startup_output = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mnist_pipeline.search.trial_process"],
            cwd=PROJECT_DIR,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._startup_output,
            text=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, arguments: list[str], environment: dict[str, str], log: Path) -> int:
        """Run train.py with `arguments` and `environment`, its output to `log`; return its exit code.

        If the process dies meanwhile (a signal, a crash), its own exit code is returned.
        """
        trial = {"argv": arguments, "environment": environment, "log": str(log)}
        try:
            self.process.stdin.write(json.dumps(trial) + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
        except (BrokenPipeError, ValueError):  # it has died, or close() closed its pipes
            answer = ""
        if answer.strip() == "0":
            return 0
        # A failed trial ends its process: wait for it, so that it is gone when the next starts.
        returncode = self.process.wait()
        return int(answer) if answer.strip() else returncode

    def startup_output(self) -> str:
        """What the process printed outside a trial (an import error, say)."""
        self._startup_output.seek(0)
        return self._startup_output.read()

    def terminate(self) -> None:
        """SIGTERM: the trial under way ends KILLED, and the process exits."""
        if self.alive():
            self.process.terminate()

    def close(self, timeout: float = 30) -> None:
        """Let the process finish after its last trial; kill it if it does not within `timeout`."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self._startup_output.close()


class TrialRunner:
    """Runs each trial as a nested run of `parent_run_id`, in a trial process per worker thread.

    The child run is created here with the parent's ID in `mlflow.parentRunId` and handed
    to the process through MLFLOW_RUN_ID: MLflow's fluent active run is thread-local, so
    nesting is never left to it. Each process gets an equal share of the CPU cores, and
    runs its thread's trials one after another, so that a batch starts TensorFlow once
    per worker rather than once per trial. `close()` ends the processes.
    """

    def __init__(
        self,
        parent_run_id: str,
        experiment_id: str,
        preprocess_run: str,
        workers: int,
        total: int,
        searched: list[str],
    ):
        self.client = MlflowClient()
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id
        self.preprocess_run = preprocess_run
        # The cores this process may use (taskset and containers narrow them), shared out.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.threads = max(1, (cores or 1) // workers)
        self.total = total
        self.searched = searched
        self.results: list[dict] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        # The trial processes started. On SIGINT or SIGTERM they are told to stop (their
        # runs end KILLED) and no new one starts, so that none outlives the batch.
        self._processes: list[TrialProcess] = []
        signals.on_stop(self.stop)

    def stop(self) -> None:
        """Send SIGTERM to every running trial process; `run` starts no new one.

        Called in a signal handler, so it takes no lock that the main thread may hold.
        """
        for process in list(self._processes):
            process.terminate()

    def close(self) -> None:
        """End the trial processes once the batch is done."""
        for process in self._processes:
            process.close()

    def _process_of_this_thread(self) -> TrialProcess:
        """This worker thread's trial process, started if it has none or the last one ended."""
        process = getattr(self._local, "process", None)
        if process is None or not process.alive():
            if process is not None:
                process.close()
                self._processes.remove(process)
            environment = {
                name: value for name, value in os.environ.items() if name != "MLFLOW_RUN_ID"
            }
            process = TrialProcess(
                {
                    **environment,
                    "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
                    "TF_NUM_INTRAOP_THREADS": str(self.threads),
                    "TF_NUM_INTEROP_THREADS": "1",
                    "OMP_NUM_THREADS": str(self.threads),
                }
            )
            self._local.process = process
            self._processes.append(process)
            if signals.stopping():
                process.terminate()  # stop() may have looked just before the append
        return process

    def run(
        self,
        params: dict,
        number: int,
        tags: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> dict:
        """Run trial `number` with `params`; return its result (status FINISHED, PRUNED or FAILED).

        `environment` reaches the train process (how to report to a shared study);
        `on_start` is told the child run's ID before the process starts.
        """
        child = self.client.create_run(
            self.experiment_id,
            run_name=trial_name(number, self.total, params, self.searched),
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                TRIAL_TAG: str(number),
                HOST_TAG: HOST,
                WORKER_TAG: f"{HOST}:{os.getpid()}",
                **(tags or {}),
            },
        )
        run_id = child.info.run_id
        if on_start:
            on_start(run_id)
        arguments = ["--preprocess_run", self.preprocess_run]
        for name, value in params.items():
            arguments += [f"--{name}", str(value)]
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="trial-") as folder:
            log = Path(folder) / "output.txt"
            with self._lock:
                if signals.stopping():
                    self.client.set_terminated(run_id, "KILLED")
                    raise signals.Stopped("the batch is stopping")
                process = self._process_of_this_thread()
            returncode = process.run(
                arguments, {**(environment or {}), "MLFLOW_RUN_ID": run_id}, log
            )
            output = log.read_text() if log.exists() else ""
            if returncode != 0 and not output.strip():
                output = process.startup_output()
        seconds = time.perf_counter() - started
        run = self.client.get_run(run_id)
        accuracy = None
        if returncode == 0 and run.info.status == "FINISHED":
            pruned = run.data.tags.get(PRUNED_TAG) == "true"
            reason, status = "", "PRUNED" if pruned else "FINISHED"
            accuracy = None if pruned else run.data.metrics.get("accuracy")
        else:
            if run.info.status == "RUNNING":
                # The process died before MLflow could end its run (killed, or it
                # refused its arguments): the run must not stay RUNNING forever.
                self.client.set_terminated(run_id, "KILLED" if signals.stopping() else "FAILED")
            self.client.log_text(run_id, output, "trial_output.txt")
            reason = _last_error_line(output)
            self.client.set_tag(run_id, ERROR_TAG, reason[:500])
            status = "FAILED"
        result = {
            "trial": number,
            "run_id": run_id,
            "status": status,
            **params,
            "accuracy": accuracy,
            "seconds": round(seconds, 1),
            "error": reason,
        }
        with self._lock:
            self.results.append(result)
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        outcome = {
            "FINISHED": f"accuracy {accuracy or 0:.4f}",
            "PRUNED": "pruned by the study",
            "FAILED": f"FAILED: {reason}",
        }[status]
        print(
            f"[train_batch] trial {number}/{self.total} on {HOST} {shown}: {outcome} "
            f"in {seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        return result


def _last_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line.strip()
    return lines[-1].strip() if lines else "no output"


def write_summary(parent_run_id: str, experiment_id: str, searched: list[str]) -> str:
    """Log the batch's summary to its parent run, from every child run, whoever ran it.

    Logs `trials.csv` and `trials.json` (which the UI shows as a table), the counts,
    `best_accuracy`, the tag `best_run_id` and a picture of accuracy against each searched
    value. Returns a one-line summary; raises UserError if no trial finished.

    Every worker of a search writes it when it ends, and another machine's trial may
    finish while this one writes: a summary read before that trial finished could land
    after the other worker's complete one. So the trials are read again once written, and
    the summary is written again until it is the one that the store still holds. Two
    writes at the same moment are handled by despite_a_concurrent_writer.
    """
    client = MlflowClient()
    table = trial_table(parent_run_id, experiment_id)
    for _ in range(SUMMARY_ATTEMPTS):
        summary = _log_summary(client, parent_run_id, table, searched)
        now = trial_table(parent_run_id, experiment_id)
        if now.equals(table):
            break
        table = now
    return summary


# How many times a worker writes the summary before it leaves the rest to the worker
# whose trials are still finishing (each of them rewrites it as it ends).
SUMMARY_ATTEMPTS = 5


def trial_table(parent_run_id: str, experiment_id: str) -> pd.DataFrame:
    """One row per child run of `parent_run_id`: trial, run_id, status, the hyperparameters,
    accuracy, seconds, host and error, in the order of the trials. Raises UserError if
    there is none."""
    children = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        output_format="list",
    )
    rows = []
    for run in children:
        status = run.info.status
        if status == "FINISHED" and run.data.tags.get(PRUNED_TAG) == "true":
            status = "PRUNED"
        ended = run.info.end_time or run.info.start_time
        rows.append(
            {
                "trial": int(run.data.tags.get(TRIAL_TAG, 0)),
                "run_id": run.info.run_id,
                "status": status,
                **{
                    name: kind(float(run.data.params[name]))
                    for name, kind in HYPERPARAMETERS.items()
                    if name in run.data.params
                },
                "accuracy": run.data.metrics.get("accuracy") if status == "FINISHED" else None,
                "seconds": round((ended - run.info.start_time) / 1000, 1),
                "host": run.data.tags.get(HOST_TAG, ""),
                "error": run.data.tags.get(ERROR_TAG, ""),
                "started": run.info.start_time,
            }
        )
    if not rows:
        raise UserError(f"run {parent_run_id} has no trial runs to sum up")
    table = pd.DataFrame(rows).sort_values(["trial", "started"]).drop(columns="started")
    return table.reset_index(drop=True)


def _log_summary(
    client: MlflowClient, parent_run_id: str, table: pd.DataFrame, searched: list[str]
) -> str:
    """Log what write_summary logs, from `table`; return the one-line summary."""
    counts = table["status"].value_counts()
    finished = table[(table["status"] == "FINISHED") & table["accuracy"].notna()]
    parent = client.get_run(parent_run_id)
    seconds = (time.time() * 1000 - parent.info.start_time) / 1000
    log_table_whole(client, parent_run_id, table, "trials.json")
    client.log_text(parent_run_id, table.to_csv(index=False), "trials.csv")
    despite_a_concurrent_writer(
        client.log_batch,
        parent_run_id,
        metrics=[
            mlflow.entities.Metric(name, float(value), int(time.time() * 1000), 0)
            for name, value in {
                "trials_finished": len(finished),
                "trials_failed": counts.get("FAILED", 0),
                "trials_pruned": counts.get("PRUNED", 0),
                "trials_killed": counts.get("KILLED", 0),
                "batch_seconds": seconds,
            }.items()
        ],
    )
    if searched and len(finished):
        client.log_figure(
            parent_run_id,
            plots.metric_against_params(finished, "accuracy", searched),
            "accuracy_by_hyperparameter.png",
        )
    print(table.to_string(index=False), file=sys.stderr)
    if finished.empty:
        raise UserError(f"none of the {len(table)} trials finished; see the child runs' logs")
    best = finished.loc[finished["accuracy"].idxmax()]
    despite_a_concurrent_writer(
        client.log_metric, parent_run_id, "best_accuracy", float(best["accuracy"])
    )
    despite_a_concurrent_writer(client.set_tag, parent_run_id, "best_run_id", best["run_id"])
    others = [
        f"{counts[state]} {word}"
        for state, word in (("FAILED", "FAILED"), ("PRUNED", "pruned"), ("KILLED", "killed"))
        if counts.get(state, 0)
    ]
    hosts = table["host"].nunique()
    return (
        f"{len(finished)} of {len(table)} trials finished in {seconds:.0f} s"
        + (f" on {hosts} machines" if hosts > 1 else "")
        + "".join(f", {other}" for other in others)
        + f"; best {best['run_id']} with accuracy {best['accuracy']:.4f}"
    )


def log_table_whole(client: MlflowClient, run_id: str, table: pd.DataFrame, name: str) -> None:
    """Log `table` as the run's table artifact `name`, replacing what an earlier write left.

    MlflowClient.log_table appends to an existing table, and every worker of a shared
    search writes the summary, so its rows would repeat once per worker. This writes the
    file as log_table does (JSON, pandas' "split" layout) and names it in the tag that
    makes the run's Artifacts tab show it as a table, which is also what
    `mlflow.load_table` reads.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        table.to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path))
    entry = {"path": name, "type": "table"}
    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    if entry not in logged:
        despite_a_concurrent_writer(
            client.set_tag, run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry])
        )


def despite_a_concurrent_writer(write: Callable, *args, **kwargs):
    """Call the MLflow `write`, once more if another process wrote the same key at once.

    MLflow's tracking store inserts a new tag, or a metric's latest value, after looking
    for it, without a lock. Two workers that end a search at the same moment both insert
    `best_run_id`, and one fails on the unique key (PostgreSQL: "duplicate key value", SQLite:
    "UNIQUE constraint failed"); a test of the team server saw it. By the next attempt
    the row exists, and the write updates it.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_lost_a_race),
        wait=tenacity.wait_random(0.1, 0.5),
        stop=tenacity.stop_after_attempt(4),
        reraise=True,
    )
    return retrying(write, *args, **kwargs)


def _lost_a_race(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MlflowException) and (
        "duplicate key value" in text or "UNIQUE constraint failed" in text
    )
