"""A scoring server started with `mlflow models serve`, and a keep-alive client to time it.

The server runs in a process group of its own, so that stopping it also stops the
uvicorn process it starts through the shell; it is always stopped on leaving the `with`.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import testing

from tests.helpers import free_port  # noqa: F401 (the benchmarks import it from here)

START_TIMEOUT_SECONDS = 240
WARM_UP_REQUESTS = 10


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
        url = f"http://127.0.0.1:{self.port}/ping"
        testing.wait_until_up(url, self.process, self.log_path, START_TIMEOUT_SECONDS)
        print(f"  ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)

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
        if self.process is not None:
            testing.stop(self.process)


def time_requests(server: ScoringServer, bodies: list[bytes], warm_up: int = 3) -> list[float]:
    """Send `bodies` one after the other (after `warm_up` of them); return seconds each."""
    for body in bodies[:warm_up]:
        server.post(body)
    return [server.post(body)[0] for body in bodies]


def percentiles(seconds: list[float]) -> dict:
    """Return p50, p90 and p99 in milliseconds."""
    values = np.asarray(seconds) * 1000
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}
