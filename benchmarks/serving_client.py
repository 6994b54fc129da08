"""A scoring server started with `mlflow models serve`, and a keep-alive client to time it.

The server runs in a process group of its own, so that stopping it also stops the
uvicorn process it starts through the shell; it is always stopped on leaving the `with`.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

START_TIMEOUT_SECONDS = 240
WARM_UP_REQUESTS = 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ScoringServer:
    """`mlflow models serve -m <model_uri> --env-manager local` on a free local port."""

    def __init__(self, model_uri: str, environment: dict, cwd: Path):
        self.model_uri, self.environment, self.cwd = model_uri, environment, cwd
        self.port = free_port()
        self.log_path = Path(cwd) / f"serve-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.connection: http.client.HTTPConnection | None = None

    def __enter__(self) -> ScoringServer:
        command = ["mlflow", "models", "serve", "-m", self.model_uri, "--env-manager", "local",
                   "-h", "127.0.0.1", "-p", str(self.port)]  # fmt: skip
        print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=self.cwd, env=self.environment,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # fmt: skip
        try:
            self._wait_until_ready()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            for _ in range(WARM_UP_REQUESTS):
                self.ping()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        started = time.perf_counter()
        while time.perf_counter() - started < START_TIMEOUT_SECONDS:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self._log_tail()}")
            try:
                probe = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                probe.request("GET", "/ping")
                if probe.getresponse().status == 200:
                    print(f"  ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {START_TIMEOUT_SECONDS} s:\n{self._log_tail()}")

    def ping(self) -> None:
        self.connection.request("GET", "/ping")
        self.connection.getresponse().read()

    def post(self, body: bytes) -> tuple[float, bytes]:
        """POST a JSON body to /invocations; return (seconds, answer). Non-200 raises."""
        started = time.perf_counter()
        self.connection.request("POST", "/invocations", body,
                                {"Content-Type": "application/json"})  # fmt: skip
        response = self.connection.getresponse()
        answer = response.read()
        seconds = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{self.model_uri}: HTTP {response.status}: {answer[:300]!r}")
        return seconds, answer

    def stop(self) -> None:
        if self.connection is not None:
            self.connection.close()
        if self.process is None or self.process.poll() is not None:
            return
        for sent, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sent)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _log_tail(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else "(no log)"


def time_requests(server: ScoringServer, bodies: list[bytes], warm_up: int = 3) -> list[float]:
    """Send `bodies` one after the other (after `warm_up` of them); return seconds each."""
    for body in bodies[:warm_up]:
        server.post(body)
    return [server.post(body)[0] for body in bodies]


def percentiles(seconds: list[float]) -> dict:
    """Return p50, p90 and p99 in milliseconds."""
    values = np.asarray(seconds) * 1000
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}
