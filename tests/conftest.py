"""Shared fixtures: a tiny learnable dataset, a temporary SQLite store, and CLI runners.

Every test that touches MLflow gets a store of its own in a temporary folder (the
database, and the artifacts beside it in ./mlruns), and runs the real commands in
that folder: `mlflow run <repo> -e ... --env-manager local`, the scripts, the server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VENV_BIN = Path(sys.executable).parent
MIRROR = REPO.parent / "shared" / "data"

# Small and quick, but enough for the tiny glyph dataset to be learnt.
TINY_TRAINING = {"epochs": "8", "batch_size": "32", "nr_conv_1": "8", "lr": "0.004"}


def render_digit(digit: int, rng: np.random.Generator, canvas: int = 64) -> np.ndarray:
    """Return a grey image (canvas x canvas) of `digit` drawn in white with OpenCV's font."""
    import cv2

    image = np.zeros((canvas, canvas), dtype=np.uint8)
    scale = rng.uniform(1.2, 1.8)
    thickness = int(rng.integers(2, 5))
    origin = (int(rng.integers(4, 20)), int(rng.integers(42, 58)))
    cv2.putText(
        image, str(digit), origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA
    )
    return image


def write_tiny_dataset(
    folder: Path, train_per_class: int = 60, test_per_class: int = 20, seed: int = 0
) -> Path:
    """Write the four IDX files of a small digit dataset that a small CNN can learn.

    The digits are OpenCV glyphs at random sizes and places, fitted into 28x28 by the
    same code that fits a drawing sent to the served model.
    """
    import cv2

    from mnist_pipeline.idx import write_idx
    from mnist_pipeline.pictures import image_to_pixels

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = np.stack(
            [
                image_to_pixels(cv2.imencode(".png", render_digit(int(label), rng))[1].tobytes())
                for label in labels
            ]
        )
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "digits")


@dataclass
class Store:
    """A temporary tracking store, and runners for the project's commands inside it."""

    root: Path
    env: dict

    @property
    def uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def run(
        self, command: list[str], check: bool = True, timeout: float = 600, cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            command,
            cwd=cwd or self.root,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}"
            )
        return result

    def mlflow_run(
        self, entry_point: str, check: bool = True, experiment: str | None = None, **params
    ) -> subprocess.CompletedProcess:
        command = ["mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local"]
        for name, value in params.items():
            command += ["-P", f"{name}={value}"]
        if experiment:
            command += ["--experiment-name", experiment]
        return self.run(command, check=check)

    def script(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run([sys.executable, str(REPO / name), *args], check=check)

    def client(self):
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        return mlflow.MlflowClient(self.uri)

    def runs(self, stage: str | None = None, experiment_ids=None) -> list:
        import mlflow

        client = self.client()
        if experiment_ids is None:
            experiment_ids = [e.experiment_id for e in client.search_experiments()]
        query = f"tags.stage = '{stage}'" if stage else ""
        return mlflow.search_runs(
            experiment_ids=experiment_ids,
            filter_string=query,
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )

    def last_run(self, stage: str):
        found = self.runs(stage)
        assert found, f"no {stage} run in the store"
        return found[0]


def make_store(root: Path) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "GIT_PYTHON_REFRESH": "quiet",
        }
    )
    # Create the database before any parallel writer, from this folder, so that the
    # Default experiment keeps its artifacts in <root>/mlruns.
    subprocess.run(
        [sys.executable, "-c", "import mlflow; mlflow.search_experiments()"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    return Store(root, env)


@pytest.fixture
def store(tmp_path) -> Store:
    return make_store(tmp_path / "store")


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, tiny_data):
    """One tiny pipeline run by hand, stage by stage, shared by the tests that read it."""
    shared = make_store(tmp_path_factory.mktemp("pipeline") / "store")
    shared.mlflow_run(
        "get_data", source=tiny_data, allow_unverified="true", outdir=shared.root / "data" / "mnist"
    )
    data_run = shared.last_run("get_data").info.run_id
    shared.mlflow_run("explore_data", data_run=data_run)
    shared.mlflow_run("preprocess", data_run=data_run)
    preprocess_run = shared.last_run("preprocess").info.run_id
    shared.mlflow_run("train", preprocess_run=preprocess_run, **TINY_TRAINING)
    train_run = shared.last_run("train").info.run_id
    shared.mlflow_run("package", train_run=train_run, output_dir=shared.root / "model")
    return {
        "store": shared,
        "data_run": data_run,
        "preprocess_run": preprocess_run,
        "train_run": train_run,
        "model_dir": shared.root / "model",
    }


# ------------------------------------------------------------ servers started by tests


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(
    url: str, process: subprocess.Popen, log: Path | None = None, timeout: float = 120
) -> None:
    """Wait until `url` answers 200, failing with the server's log if it dies or never does."""
    import time
    import urllib.error
    import urllib.request

    # Straight to 127.0.0.1, whatever proxy the environment names.
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            shown = log.read_text() if log and log.exists() else ""
            pytest.fail(f"{url}: the server exited with {process.returncode}\n{shown}")
        try:
            with direct.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    shown = log.read_text() if log and log.exists() else ""
    pytest.fail(f"no answer from {url} after {timeout} s\n{shown}")


def stop(process: subprocess.Popen) -> None:
    """Stop a process started with start_new_session, and everything it started."""
    import signal

    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


@contextlib.contextmanager
def running(
    command: list[str],
    ready_url: str,
    cwd: Path,
    env: dict,
    log: Path | None = None,
    timeout: float = 120,
):
    """Start a server in its own process group, wait until `ready_url` answers, stop it after."""
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        command, cwd=cwd, env=env, start_new_session=True, stdout=output, stderr=subprocess.STDOUT
    )
    try:
        wait_until_up(ready_url, process, log, timeout)
        yield process
    finally:
        stop(process)
        if log:
            output.close()
