"""Running one training trial as a child run, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

import mlflow
from mlflow.tracking import MlflowClient

from mnist_pipeline.runs import PROJECT_DIR


class TrialRunner:
    """Starts train.py in a subprocess for each trial, as a nested run of `parent_run_id`.

    The child run is created here with the parent's ID in `mlflow.parentRunId` and handed
    to the process through MLFLOW_RUN_ID: MLflow's fluent active run is thread-local, so
    nesting is never left to it. Each process gets an equal share of the CPU cores.
    """

    def __init__(
        self, parent_run_id: str, experiment_id: str, preprocess_run: str, workers: int, total: int
    ):
        self.client = MlflowClient()
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id
        self.preprocess_run = preprocess_run
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.total = total
        self.results: list[dict] = []
        self._lock = threading.Lock()
        self._count = 0

    def run(self, params: dict) -> dict:
        with self._lock:
            self._count += 1
            number = self._count
        child = self.client.create_run(
            self.experiment_id,
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "trial": str(number),
                "mlflow.runName": f"trial-{number}",
            },
        )
        run_id = child.info.run_id
        command = [
            sys.executable,
            str(PROJECT_DIR / "train.py"),
            "--preprocess_run",
            self.preprocess_run,
        ]
        for name, value in params.items():
            command += [f"--{name}", str(value)]
        environment = {
            **os.environ,
            "MLFLOW_RUN_ID": run_id,
            "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
            "TF_NUM_INTRAOP_THREADS": str(self.threads),
            "TF_NUM_INTEROP_THREADS": "1",
            "OMP_NUM_THREADS": str(self.threads),
        }
        started = time.perf_counter()
        with tempfile.TemporaryFile(mode="w+") as log:
            returncode = subprocess.call(
                command, cwd=PROJECT_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
            log.seek(0)
            output = log.read()
        seconds = time.perf_counter() - started
        run = self.client.get_run(run_id)
        if returncode != 0 or run.info.status != "FINISHED":
            if run.info.status == "RUNNING":
                # The process died before MLflow could end its run (killed, or it
                # refused its arguments): the run must not stay RUNNING forever.
                self.client.set_terminated(run_id, "FAILED")
            self.client.log_text(run_id, output, "trial_output.txt")
            reason = _last_error_line(output)
            status, accuracy = "FAILED", None
        else:
            reason, status = "", "FINISHED"
            accuracy = run.data.metrics.get("accuracy")
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
            done = len(self.results)
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        outcome = f"accuracy {accuracy:.4f}" if accuracy is not None else f"FAILED: {reason}"
        print(
            f"[train_batch] trial {number} ({done}/{self.total} done) {shown}: {outcome} "
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
