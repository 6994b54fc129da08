"""What the tests and the benchmarks share: a temporary store and the project's commands in it.

A Store is a tracking store in a folder of its own (the SQLite database, and the artifacts
beside it in ./mlruns) with runners for the real commands inside it: `mlflow run <repo>
-e ... --env-manager local`, the scripts, a server started in its own process group. The
digit pictures are what a participant draws, and a tiny dataset that a small CNN learns.
Nothing here is imported by the pipeline itself.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import io
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mnist_pipeline.data.idx import write_idx
from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

REPO = Path(__file__).resolve().parent.parent
# The interpreter running the tests is the project's venv; its bin holds mlflow and uvicorn.
VENV_BIN = Path(sys.executable).parent
MIRROR = REPO.parent / "shared" / "data"
FONT = cv2.FONT_HERSHEY_SIMPLEX
# The system's Chromium (Debian's package: Playwright cannot download its own browsers here),
# started the same way by the browser tests, bench_draw.py and docs/take_screenshots.py.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# `mlflow ui` with one web worker and no job runner (which serves GenAI jobs): the same UI
# on the same store, started for 9 CPU-s instead of the 42 of MLflow 3.17's four workers
# and eight job processes. The command itself creates and migrates the store before it
# starts any of them.
ONE_UI_PROCESS = {"MLFLOW_WORKERS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass
class Called:
    """What a script's main did when Store.call ran it in this process."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class Store:
    """A tracking store in `root`, and runners for the project's commands inside it."""

    root: Path
    env: dict

    @property
    def uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def run(
        self,
        command: list[str],
        check: bool = True,
        timeout: float = 600,
        cwd: Path | None = None,
        env: dict | None = None,
    ) -> subprocess.CompletedProcess:
        """Run `command` in the store's folder; with `check`, fail with its output if it fails."""
        result = subprocess.run(
            [str(part) for part in command],
            cwd=cwd or self.root,
            env=env or self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(str(part) for part in command)} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}"
            )
        return result

    def mlflow_run(
        self, entry_point: str, check: bool = True, experiment: str | None = None, **params
    ) -> subprocess.CompletedProcess:
        """`mlflow run <repo> -e <entry_point> --env-manager local -P name=value ...`."""
        command = ["mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local"]
        for name, value in params.items():
            command += ["-P", f"{name}={value}"]
        if experiment:
            command += ["--experiment-name", experiment]
        return self.run(command, check=check)

    def script(
        self, name: str, *args: str, check: bool = True, experiment: str | None = None
    ) -> subprocess.CompletedProcess:
        """`python <repo>/<name> <args>`, its runs in `experiment` (made if missing) if given."""
        env = self.environment(experiment)
        return self.run([sys.executable, str(REPO / name), *args], check=check, env=env)

    def environment(self, experiment: str | None = None) -> dict:
        """The environment of a script whose runs go to `experiment` (made if missing)."""
        return {**self.env, "MLFLOW_EXPERIMENT_NAME": experiment} if experiment else self.env

    def call(self, name: str, *args: str, experiment: str | None = None) -> Called:
        """`<name>`'s main(args) in this process, in the store's folder and against it.

        For tests of what a script says and records, where a new Python, which spends
        two seconds importing MLflow, is not the point. What main prints to stdout and
        stderr is returned with its exit code; an exception that main lets through (a
        bug) is raised, and so is an AssertionError if main leaves a run active. main sees
        the environment that Store.script gives the script; afterwards this process is as
        before: working directory, environment, MLflow's tracking URI and experiment,
        signal handlers.
        """
        import mlflow
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        module = importlib.import_module(name.removesuffix(".py"))
        stdout, stderr = io.StringIO(), io.StringIO()
        streams = {stdout: sys.stdout, stderr: sys.stderr}
        saved_environment, saved_folder = dict(os.environ), Path.cwd()
        saved_experiment = mlflow.tracking.fluent._active_experiment_id
        os.environ.clear()
        os.environ.update(self.environment(experiment))
        # The experiment comes from the environment, as in a new process, not from an
        # earlier mlflow.set_experiment in this one.
        mlflow.tracking.fluent._active_experiment_id = None
        os.chdir(self.root)
        try:
            with (
                signal_handlers_kept(),
                _use_tracking_uri(self.uri),
                contextlib.redirect_stdout(stdout),
                contextlib.redirect_stderr(stderr),
            ):
                try:
                    code = module.main([str(arg) for arg in args])
                except SystemExit as exit:
                    code = exit.code
                finally:
                    # Raised over any exception of main's, which it then names as its cause.
                    left_active = mlflow.active_run()
                    if left_active:
                        mlflow.end_run("FAILED")
                        raise AssertionError(
                            f"{name} left its run {left_active.info.run_id} active"
                        )
        finally:
            _point_log_handlers_back(streams)
            os.chdir(saved_folder)
            mlflow.tracking.fluent._active_experiment_id = saved_experiment
            os.environ.clear()
            os.environ.update(saved_environment)
        if code is None:
            code = 0
        elif not isinstance(code, int):  # as Python does with sys.exit("message")
            print(code, file=stderr)
            code = 1
        return Called(code, stdout.getvalue(), stderr.getvalue())

    def client(self):
        """This process's MLflow client, pointed at the store."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        return mlflow.MlflowClient(self.uri)

    def experiment_ids(self, experiment: str | None = None) -> list[str]:
        """The IDs of every experiment, or of the one named `experiment`."""
        client = self.client()
        if experiment is not None:
            found = client.get_experiment_by_name(experiment)
            return [found.experiment_id] if found else []
        return [e.experiment_id for e in client.search_experiments()]

    def runs(self, stage: str | None = None, experiment: str | None = None, query: str = ""):
        """Runs of `stage` (any status), in `experiment` or in all of them, newest first."""
        import mlflow

        experiment_ids = self.experiment_ids(experiment)
        if not experiment_ids:
            return []
        conditions = [f"tags.stage = '{stage}'"] if stage else []
        conditions += [query] if query else []
        return mlflow.search_runs(
            experiment_ids=experiment_ids,
            filter_string=" and ".join(conditions),
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )

    def last_run(self, stage: str, experiment: str | None = None):
        found = self.runs(stage, experiment)
        if not found:
            raise AssertionError(f"no {stage} run in the store")
        return found[0]

    def children_of(self, parent_run_id: str) -> list:
        """The runs nested under `parent_run_id`, newest first."""
        return self.runs(query=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def _point_log_handlers_back(streams: dict) -> None:
    """Give the log handlers made during Store.call (optuna's, say) the streams they replaced."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream in streams:
                handler.setStream(streams[handler.stream])


def started_reading_stderr(command: list, cwd: Path, env: dict) -> subprocess.Popen:
    """Start `command` in a session of its own (to be signalled), its stderr a text pipe."""
    return subprocess.Popen(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def working_tree_files() -> list[str]:
    """The project's files as git sees them, new ones too: not .venv, the store or a model."""
    return subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


def copy_of_the_working_tree(destination: Path) -> Path:
    """Copy the working tree's files as a clone has them (no .venv, store or model)."""
    for name in working_tree_files():
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def a_sample_of(picture_set: Path, destination: Path) -> Path:
    """Write to `destination` the first picture of each digit and kind in `picture_set`
    (drawn_digits/, font_digits/), with its labels.csv and the set's other files.

    For tests that package a model where what the sets measure is not the point: package
    evaluates about 150 pictures rather than 1,080, some 6 CPU-seconds less each time.
    """
    import pandas as pd

    from mnist_pipeline.serving.drawn_digits import LABELS_FILE

    labels = pd.read_csv(picture_set / LABELS_FILE, dtype=str)
    sample = labels.groupby(["label", "kind"], sort=False).head(1)
    left_out = set(labels.file) - set(sample.file)
    destination.mkdir(parents=True)
    for path in picture_set.iterdir():
        if path.name not in left_out:
            shutil.copy2(path, destination / path.name)
    sample.to_csv(destination / LABELS_FILE, index=False, lineterminator="\n")
    return destination


def store_environment(root: Path) -> dict:
    """The environment of a command that uses the store in `root`, and nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            # `mlflow models serve` starts uvicorn through the shell: the venv must be on PATH.
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "GIT_PYTHON_REFRESH": "quiet",
            # Servers on 127.0.0.1 are reached directly, whatever proxy the machine names.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return env


def make_store(root: Path) -> Store:
    """Return the tracking store in `root`, created empty if it has no mlflow.db yet.

    The database is a copy of one that MLflow created and migrated once for this process
    (about 4 CPU-seconds, which a test suite would otherwise pay for every store). Only
    the Default experiment's artifact location differs between two empty stores: it is
    <root>/mlruns/0, as if MLflow had created the database from `root`.
    """
    root.mkdir(parents=True, exist_ok=True)
    database = root / "mlflow.db"
    if not database.exists():
        staged = root / "mlflow.db.new"
        shutil.copyfile(_empty_database(), staged)
        with contextlib.closing(sqlite3.connect(staged)) as connection, connection:
            connection.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                (str(root.resolve() / "mlruns" / "0"),),
            )
        staged.rename(database)
    return Store(root, store_environment(root))


@functools.cache
def _empty_database() -> Path:
    """An empty mlflow.db that MLflow created and migrated, once per process."""
    folder = Path(tempfile.mkdtemp(prefix="empty-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-c", "import mlflow; mlflow.search_experiments()"],
        cwd=folder,
        env=store_environment(folder),
        check=True,
        capture_output=True,
    )
    return folder / "mlflow.db"


# ------------------------------------------------------------------------------ servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(
    url: str, process: subprocess.Popen, log: Path | None = None, timeout: float = 300
) -> None:
    """Wait until `url` answers 200; raise with the server's log if it dies or never does."""
    # Straight to 127.0.0.1, whatever proxy the environment names.
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"{url}: the server exited with {process.returncode}\n{_tail(log)}"
            )
        try:
            with direct.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"no answer from {url} after {timeout} s\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    return log.read_text()[-5000:] if log and log.exists() else ""


def stop(process: subprocess.Popen) -> None:
    """Stop a process started with start_new_session, and everything it started."""
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
def signal_handlers_kept() -> Iterator[None]:
    """Give this process back, after the block, the SIGINT and SIGTERM handlers, excepthook
    and `signals.installed` that a stage's code (cli.stage_run, signals.install) replaces."""
    from mnist_pipeline.tracking import signals

    saved_handlers = {signum: signal.getsignal(signum) for signum in signals.SIGNALS}
    saved_hook, saved_installed = sys.excepthook, signals.installed
    try:
        yield
    finally:
        for signum, handler in saved_handlers.items():
            signal.signal(signum, handler)
        sys.excepthook, signals.installed = saved_hook, saved_installed


@contextlib.contextmanager
def another_run_logs_each_dataset_first(store: Store) -> Iterator[list[str]]:
    """Have another run log each dataset, and commit it, just before this process's MLflow
    inserts it: what a run that logs the same dataset at the same moment does between the
    store's lookup and its insert. Yields the digests of the datasets it logged so.

    MLflow's SQL store (3.17) looks a dataset up in the experiment and inserts it if it is
    missing; a real race hits that moment now and then, this every time. SQLAlchemy's public
    event on every engine of this process sees the insert before it is sent.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    logged = []

    def before_the_insert(connection, cursor, statement, parameters, *_) -> None:
        if not statement.startswith("INSERT INTO datasets"):
            return
        uuid, experiment_id, name, digest, *columns = parameters
        if digest not in logged:
            with contextlib.closing(sqlite3.connect(store.root / "mlflow.db")) as other, other:
                other.execute(
                    "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (f"other-{uuid}", experiment_id, name, digest, *columns),
                )
            logged.append(digest)

    event.listen(Engine, "before_cursor_execute", before_the_insert)
    try:
        yield logged
    finally:
        event.remove(Engine, "before_cursor_execute", before_the_insert)


def finished_run(client, experiment_id: str, tags: dict, metrics: dict | None = None) -> str:
    """A FINISHED run made by hand, as a stage would leave it, with `tags` and `metrics`."""
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@contextlib.contextmanager
def running(
    command: list[str],
    ready_url: str,
    cwd: Path,
    env: dict,
    log: Path | None = None,
    timeout: float = 300,
) -> Iterator[subprocess.Popen]:
    """Start a server in its own process group, wait until `ready_url` answers, stop it after."""
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_up(ready_url, process, log, timeout)
        yield process
    finally:
        stop(process)
        if log:
            output.close()


# ------------------------------------------------------------------------------ digits


def drawing(
    digit: int,
    size: tuple[int, int] = (400, 300),
    corner: str = "top-left",
    ink=0,
    paper=255,
    scale: float = 4.0,
    thickness: int = 10,
    margin: int = 12,
) -> np.ndarray:
    """A canvas of `size` (width, height) with `digit` drawn near `corner`, as in a paint program.

    `ink` and `paper` are grey levels (a grey picture), or BGR colours (a colour one).
    """
    width, height = size
    (text_width, text_height), baseline = cv2.getTextSize(str(digit), FONT, scale, thickness)
    x = margin if corner.endswith("left") else width - margin - text_width
    y = margin + text_height if corner.startswith("top") else height - margin - baseline
    colour = not np.isscalar(ink) or not np.isscalar(paper)
    canvas = np.empty((height, width, 3) if colour else (height, width), dtype=np.uint8)
    canvas[:] = paper
    cv2.putText(canvas, str(digit), (x, y), FONT, scale, ink, thickness, cv2.LINE_AA)
    return canvas


def render_digit(digit: int, rng: np.random.Generator, canvas: int = 64) -> np.ndarray:
    """Return a grey image (canvas x canvas) of `digit` in white, at a random size and place."""
    image = np.zeros((canvas, canvas), dtype=np.uint8)
    scale = rng.uniform(1.2, 1.8)
    thickness = int(rng.integers(2, 5))
    origin = (int(rng.integers(4, 20)), int(rng.integers(42, 58)))
    cv2.putText(image, str(digit), origin, FONT, scale, 255, thickness, cv2.LINE_AA)
    return image


def write_tiny_dataset(
    folder: Path, train_per_class: int = 60, test_per_class: int = 20, seed: int = 0
) -> Path:
    """Write the four IDX files of a small digit dataset that a small CNN can learn.

    The digits are OpenCV glyphs at random sizes and places, fitted into 28x28 by the
    same code that fits a drawing sent to the served model.
    """
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


def digit_pngs(count: int, seed: int, for_training: bool | None = None) -> list[tuple]:
    """`count` (PNG bytes, digit) of distinct drawings, dark on white; with `for_training`
    given, only those that the drawing page's feedback puts in that part (feedback.split)."""
    from mnist_pipeline.feedback import is_for_training

    rng = np.random.default_rng(seed)
    pictures = []
    while len(pictures) < count:
        digit = len(pictures) % 10
        picture = cv2.imencode(".png", 255 - render_digit(digit, rng, canvas=96))[1].tobytes()
        if for_training is None or is_for_training(picture) == for_training:
            pictures.append((picture, digit))
    return pictures


def kept_drawings(store: Store, experiment: str, pictures: list[tuple]) -> str:
    """Make the experiment `experiment` in `store` hold `pictures` (bytes, digit) as drawings
    kept by the drawing page (mnist_pipeline/feedback.py); return its ID."""
    import mlflow

    from mnist_pipeline.feedback import save_drawing

    store.client()
    # Its artifacts in the store's folder, not in ./mlruns of this process's working directory.
    artifacts = (store.root / "mlruns" / experiment).as_uri()
    experiment_id = mlflow.create_experiment(experiment, artifact_location=artifacts)
    for picture, digit in pictures:
        save_drawing(experiment_id, picture, digit, str(digit), "", "", "mnist")
    return experiment_id
