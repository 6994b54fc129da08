"""Shared fixtures: a tiny learnable dataset, a temporary SQLite store, one tiny pipeline.

Every test that writes to MLflow gets a store of its own in a temporary folder (the
database, and the artifacts beside it in ./mlruns), and runs the real commands in that
folder: `mlflow run <repo> -e ... --env-manager local`, the scripts, the server. Tests that
read the tiny pipeline share one per test session, across pytest-xdist's workers too: the
first worker that needs it builds it under a lock, the others wait and read what it left.
The helpers themselves live in tests/helpers.py, which the benchmarks use too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers import (  # noqa: F401 (the tests import these from here)
    MIRROR,
    REPO,
    VENV_BIN,
    Store,
    drawing,
    free_port,
    make_store,
    render_digit,
    running,
    signal_handlers_kept,
    stop,
    store_environment,
    wait_until_up,
    write_tiny_dataset,
)

# Small and quick, but enough for the tiny glyph dataset to be learnt: the workshop's
# classic CNN on undistorted glyphs (the defaults are trained by the guide's blocks and
# by tests/test_real_pipeline.py).
TINY_TRAINING = {
    "epochs": "8",
    "batch_size": "32",
    "nr_conv_1": "8",
    "lr": "0.004",
    "architecture": "classic",
    "augment": "false",
}


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (made if missing) for the `with` block."""
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def once_per_session(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """Return what `build(folder)` returned, building it once for the whole test session.

    With pytest-xdist every worker is a process with its own session fixtures; the
    folder above the workers' own temporary folders is the one they share.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    built = root / f"{name}.json"
    with exclusive(root / f"{name}.lock"):
        if not built.exists():
            folder = root / name
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            folder.mkdir()
            built.write_text(json.dumps(build(folder)))
    return json.loads(built.read_text())


# The longest tests and groups, longest first, from `pytest --durations=30`: the test on
# the real MNIST (marked slow, which starts it first anyway), the team's server and its
# searches (about five minutes on one worker), the batch chapter's block (12 trials in a pool
# of processes), the guide's other blocks, the stopping tests (a pipeline and a batch each),
# the batch's module and the promotion gate's (two trainings and three packages, over two
# minutes: begun last, it ended the suite a minute after the other worker).
LONGEST_FIRST = (
    "test_real_pipeline.py",
    "test_team.py",
    "test_readme.py::test_batch_block_as_written",
    "test_readme.py",
    "test_stopping.py",
    "test_batch.py",
    "test_promotion.py",
)


# The fast tier, `make check`, is every test that needs no training, no model server, no
# browser and no PostgreSQL. A test that asks for one of these fixtures (or for one built on
# them) needs one of those, and so does a test marked `full` because it trains or serves
# inside itself: they run in `make test` only.
FULL_TIER_FIXTURES = {"pipeline", "model_server", "browser", "team", "workspace", "tiny_mirror"}


def _rank(item) -> tuple[bool, int]:
    name = item.nodeid.rsplit("/", 1)[-1]
    found = (n for n, prefix in enumerate(LONGEST_FIRST) if name.startswith(prefix))
    return item.get_closest_marker("slow") is None, next(found, len(LONGEST_FIRST))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Order and group the tests for pytest-xdist (`--dist loadgroup`, see pyproject.toml).

    The tests of a module that share a module-scoped fixture (a server, a batch) form one
    group, which one worker runs, so that the fixture is built once. So do the tests that
    ask the session's model server (test_serving.py, test_draw.py), which each worker
    would otherwise start for itself. Every other test goes to whichever worker is free.
    The longest start first (xdist keeps this order with --no-loadscope-reorder), so that
    none of them starts on one worker while the other worker is about to finish, and the
    two end at about the same time.
    """
    serving = {item.module for item in items if "model_server" in item.fixturenames}
    for item in items:
        if FULL_TIER_FIXTURES & set(item.fixturenames) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.full)
        group = _group_of(item, serving)
        if group is None:
            continue
        item.add_marker(pytest.mark.xdist_group(group))
        if config.getoption("loadgroup", False) and not item.nodeid.endswith(f"@{group}"):
            _name_the_group(item, group)
    items.sort(key=_rank)


def _group_of(item, serving: set) -> str | None:
    """The group whose tests one worker runs, or None for a test any worker may run.

    `serving` holds the modules with tests that ask the session's model server: their
    tests that ask it, or share a module-scoped fixture, form one group.
    """
    fixtures = getattr(item, "_fixtureinfo", None)
    definitions = fixtures.name2fixturedefs.values() if fixtures else ()
    shares = any(each.scope == "module" for defs in definitions for each in defs)
    if item.module in serving and (shares or "model_server" in item.fixturenames):
        return "model_server"
    return item.module.__name__ if shares else None


def _name_the_group(item, group: str) -> None:
    """Append `@<group>` to the item's node ID, which is how xdist's scheduler sees groups.

    pytest-xdist 3.8 does this by setting `item._nodeid`, which pytest 9.2 no longer reads
    (a node ID is `item._id` now): without this, every group was spread over both workers,
    and each of them started its own team server, batch and browser.
    """
    item._id = type(item._id).parse(f"{item.nodeid}@{group}")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The four IDX files of 600 training and 200 test glyphs of the ten digits."""
    return Path(
        once_per_session(
            tmp_path_factory, "tiny", lambda folder: str(write_tiny_dataset(folder / "digits"))
        )
    )


@pytest.fixture
def store(tmp_path) -> Store:
    return make_store(tmp_path / "store")


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, tiny_data) -> dict:
    """One tiny pipeline, run stage by stage with the scripts, shared by the tests that read it.

    Tests that write to its store do so in an experiment of their own, so that what
    they look up is theirs whatever runs beside them.
    """

    def build(folder: Path) -> dict:
        # The scripts, not `mlflow run`: the stages' own tests run the entry points, and
        # this saves MLflow's CLI start (about 4.5 CPU-s) five times on the path that
        # every test of the pipeline waits for.
        shared = make_store(folder / "store")
        outdir = shared.root / "data" / "mnist"
        source = ("--source", str(tiny_data), "--allow_unverified", "true")
        shared.script("download.py", *source, "--outdir", str(outdir))
        data_run = shared.last_run("get_data").info.run_id
        shared.script("explore.py", "--data_run", data_run)
        shared.script("preprocess.py", "--data_run", data_run)
        preprocess_run = shared.last_run("preprocess").info.run_id
        training = [f"--{name}={value}" for name, value in TINY_TRAINING.items()]
        shared.script("train.py", "--preprocess_run", preprocess_run, *training)
        train_run = shared.last_run("train").info.run_id
        shared.script(
            "package_model.py", "--train_run", train_run, "--output_dir", str(shared.root / "model")
        )
        return {
            "root": str(shared.root),
            "data_run": data_run,
            "preprocess_run": preprocess_run,
            "train_run": train_run,
        }

    built = once_per_session(tmp_path_factory, "pipeline", build)
    root = Path(built["root"])
    return {
        "store": Store(root, store_environment(root)),
        "data_run": built["data_run"],
        "preprocess_run": built["preprocess_run"],
        "train_run": built["train_run"],
        "model_dir": root / "model",
    }


@dataclass
class ModelServer:
    """A scoring server started with `mlflow models serve`, and a session to post to it."""

    url: str
    port: int
    process: subprocess.Popen
    log: Path
    env: dict
    session: requests.Session

    def post(self, body, timeout: float = 120) -> requests.Response:
        """POST `body` (a JSON string, bytes, or something to encode) to /invocations."""
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return self.session.post(
            f"{self.url}/invocations",
            data=data,
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def model_server(pipeline, tmp_path_factory) -> Iterator[ModelServer]:
    """The tiny pipeline's model, served as a participant serves it, for tests that only ask it."""
    store = pipeline["store"]
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [
        shutil.which("mlflow", path=store.env["PATH"]),
        *("models", "serve", "-m", str(pipeline["model_dir"]), "--env-manager", "local"),
        *("-h", "127.0.0.1", "-p", str(port)),
    ]
    session = requests.Session()
    session.trust_env = False  # a direct connection, whatever proxy the environment names
    url = f"http://127.0.0.1:{port}"
    with running(command, f"{url}/ping", cwd=store.root, env=store.env, log=log) as process:
        yield ModelServer(url, port, process, log, store.env, session)
    session.close()
