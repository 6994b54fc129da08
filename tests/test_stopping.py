"""Stopping: SIGINT and SIGTERM to `mlflow run` end every run it started as KILLED.

Each command runs in a session of its own and gets its signal through os.killpg, as a
terminal's Ctrl-C or a CI timeout would send it. The signal is sent as soon as the stage
of interest has a RUNNING run, not after a fixed sleep. Afterwards no run is RUNNING, no
process of the command is left, ./model is whole or absent, and a rerun finishes.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_TRAINING, make_store

from mnist_pipeline.tracking.signals import PROCESS_TAG

# Every test here starts real stages, trainings among them, and signals them: not `make check`.
pytestmark = pytest.mark.full

# Short: the tests only need a training that is still going when the signal arrives.
QUICK_TRAINING = {**TINY_TRAINING, "epochs": "2"}
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def start(store, entry_point: str, experiment: str | None = None, **params) -> subprocess.Popen:
    """Start `mlflow run` in a session of its own, as a user's terminal would run it."""
    command = ["mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local"]
    for name, value in params.items():
        command += ["-P", f"{name}={value}"]
    if experiment:
        command += ["--experiment-name", experiment]
    log = open(store.root / f"{entry_point}-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        command,
        cwd=store.root,
        env=store.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # pytest may itself run with SIGINT ignored (a background job of a script), and
        # the command would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    process.log = log
    return process


def output(process: subprocess.Popen) -> str:
    process.log.seek(0)
    return process.log.read()


def wait_for_running(
    store, process, query: str, count: int = 1, experiment: str | None = None, timeout: float = 180
) -> list:
    """Wait until `count` runs matching `query` are RUNNING; fail if the command ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = store.runs(
            experiment=experiment, query=f"attributes.status = 'RUNNING' and {query}"
        )
        if len(running) >= count:
            return running
        if process.poll() is not None:
            raise AssertionError(f"ended with {process.returncode} first:\n{output(process)}")
        time.sleep(0.25)
    raise AssertionError(f"no RUNNING run for {query} after {timeout} s:\n{output(process)}")


def stop_with(process: subprocess.Popen, signum: int, within: float = 30) -> float:
    """Send `signum` to the command's process group; return how long it took to end.

    Fails if the command, or any process it started, is still there after `within` s.
    """
    started = time.monotonic()
    os.killpg(process.pid, signum)
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(
            f"still running {within} s after {signum!r}:\n{output(process)}"
        ) from None
    while time.monotonic() - started < within:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"a process of the command outlived it:\n{output(process)}")


def statuses(store, query: str = "") -> dict[str, str]:
    return {
        run.data.tags.get("mlflow.runName", run.info.run_id): run.info.status
        for run in store.runs(query=query)
    }


def assert_nothing_running(store) -> None:
    running = store.runs(query="attributes.status = 'RUNNING'")
    assert not running, f"runs left RUNNING: {[run.info.run_id for run in running]}"


def assert_whole_or_absent(model_dir: Path) -> None:
    if model_dir.exists():
        assert (model_dir / "MLmodel").exists(), sorted(p.name for p in model_dir.iterdir())
    leftovers = [p.name for p in model_dir.parent.glob(f".{model_dir.name}.*")]
    assert not leftovers, f"half-done model folders left: {leftovers}"


@contextlib.contextmanager
def held_mirror(folder: Path):
    """Serve `folder` over HTTP, holding every request until the block ends.

    A download from it is under way for as long as the test needs, so that a signal
    reaches get_data mid-download however fast the machine is.
    """
    released = threading.Event()

    class Held(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            released.wait(timeout=120)
            super().do_GET()

        def log_message(self, *args):
            pass

    handler = lambda *args, **kwargs: Held(*args, directory=str(folder), **kwargs)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        released.set()
        server.shutdown()
        server.server_close()


# A signal that lands inside one of MLflow's database sessions (about one SIGTERM in
# twenty during a loop of log_metric calls) used to leave that SQLite connection, with
# the write lock of its open transaction, to the garbage collector. Ending the run then
# waited for MLflow's busy timeout (20 s, twice) and failed, leaving the run RUNNING.
# This sends the signal from inside a real session, as it is about to commit.
SIGNAL_DURING_A_WRITE = """
import os, signal, time, mlflow, sqlalchemy
from mnist_pipeline.tracking import signals

signals.install()
with mlflow.start_run() as run, signals.killed_when_stopped():
    print(run.info.run_id, flush=True)
    engine = mlflow.MlflowClient()._tracking_client.store.engine
    sigterm = lambda connection: os.kill(os.getpid(), signal.SIGTERM)
    sqlalchemy.event.listen(engine, "commit", sigterm, once=True)
    mlflow.set_tag("written", "before the stop")
    time.sleep(30)  # not reached: the stop comes as the session ends
"""


def test_a_signal_during_a_database_write_stops_the_process_after_the_write(tmp_path):
    store = make_store(tmp_path / "store")
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_A_WRITE],
        cwd=store.root,
        env={**store.env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert finished.returncode != 0, finished.stderr[-3000:]
    assert "stopped by SIGTERM" in finished.stderr, finished.stderr[-3000:]
    assert "database is locked" not in finished.stderr, finished.stderr[-3000:]
    run = store.client().get_run(finished.stdout.split()[0])
    assert run.info.status == "KILLED", finished.stderr[-3000:]
    assert run.data.tags["written"] == "before the stop"
    assert seconds < 15


# A search's process and the pool that runs its trials, as search/study.py makes it.
SEARCH_WITH_A_TRIAL_PROCESS = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from mnist_pipeline.search.study import follow_the_search

if __name__ == "__main__":
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, spawn, initializer=follow_the_search) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        time.sleep(120)
"""


@pytest.mark.full
def test_a_trial_process_exits_when_its_searchs_process_is_killed_alone(tmp_path):
    """SIGKILL (or the OOM killer) for batch_train.py alone: its trial process ignores SIGINT
    and SIGTERM, and used to train on as an orphan that nobody waited for."""
    import psutil

    script = tmp_path / "search.py"
    script.write_text(SEARCH_WITH_A_TRIAL_PROCESS)
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    search = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=environment
    )
    trial = psutil.Process(int(search.stdout.readline()))
    assert trial.ppid() == search.pid
    search.kill()
    search.wait()
    try:
        trial.wait(timeout=10)
    except psutil.TimeoutExpired:
        trial.kill()
        raise AssertionError("the trial process outlived its search's process") from None


def test_a_folder_moved_into_place_has_the_mode_of_any_new_folder(tmp_path):
    """./model is staged and renamed into place; it is as readable as a folder made with mkdir."""
    from mnist_pipeline import files

    staged = files.staging_folder(tmp_path, ".model.new-")
    (tmp_path / "plain").mkdir()
    files.swap_into_place(staged, tmp_path / "model")
    assert (tmp_path / "model").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_get_data_stopped_at_once_then_killed_with_sigkill(tmp_path, tiny_data):
    with held_mirror(tiny_data) as url:
        _stop_get_data_then_kill(tmp_path, tiny_data, url)


def _stop_get_data_then_kill(tmp_path, tiny_data, url):
    store = make_store(tmp_path / "store")
    outdir = store.root / "data" / "mnist"
    params = {"source": url, "allow_unverified": "true", "outdir": outdir}

    # SIGTERM as soon as `mlflow run` created the run, before the script is under way.
    process = start(store, "get_data", **params)
    (created,) = wait_for_running(store, process, "tags.`mlflow.project.entryPoint` = 'get_data'")
    seconds = stop_with(process, signal.SIGTERM)
    assert store.client().get_run(created.info.run_id).info.status == "KILLED", output(process)
    assert seconds < 15
    if outdir.exists():
        names = sorted(path.name for path in outdir.iterdir())
        assert set(names) <= set(IDX_FILES), names
        for name in names:
            assert (outdir / name).stat().st_size == (tiny_data / name).stat().st_size

    # SIGKILL leaves the run RUNNING; end_stale_runs.py tells it from live ones and ends it.
    process = start(store, "get_data", **params)
    (killed,) = wait_for_running(store, process, "tags.stage = 'get_data'")
    stop_with(process, signal.SIGKILL)
    assert store.client().get_run(killed.info.run_id).info.status == "RUNNING"
    listed = store.script("end_stale_runs.py", "--dry_run")
    assert killed.info.run_id in listed.stdout
    assert store.client().get_run(killed.info.run_id).info.status == "RUNNING"
    ended = store.script("end_stale_runs.py")
    assert f"KILLED  {killed.info.run_id}" in ended.stdout
    assert_nothing_running(store)

    params["source"] = tiny_data
    store.mlflow_run("get_data", **params)
    assert store.last_run("get_data").info.status == "FINISHED"
    assert sorted(path.name for path in outdir.iterdir()) == sorted(IDX_FILES)


def test_a_stages_process_killed_alone_leaves_its_run_killed(tmp_path, tiny_data):
    """The OOM killer sends SIGKILL to the stage's process, not to `mlflow run`, and so does
    a `kill` of the python process a user found in `ps`. Either way the run ends KILLED, as
    resuming and `main` expect, not FAILED: MLflow ends it FAILED when that process exits."""
    store = make_store(tmp_path / "store")
    with held_mirror(tiny_data) as url:
        params = {"source": url, "allow_unverified": "true", "outdir": store.root / "data"}
        for signum in (signal.SIGTERM, signal.SIGKILL):
            process = start(store, "get_data", **params)
            (run,) = wait_for_running(store, process, "tags.stage = 'get_data'")
            os.kill(int(run.data.tags[PROCESS_TAG].rpartition(":")[2]), signum)
            assert process.wait(timeout=60) != 0
            ended = store.client().get_run(run.info.run_id)
            assert ended.info.status == "KILLED", (signum, output(process))
            if signum == signal.SIGKILL:
                assert ended.data.tags["error"].endswith("was killed (SIGKILL, or out of memory)")
    assert_nothing_running(store)


def test_main_stopped_in_train_and_in_package_then_rerun_reuses(tmp_path, tiny_data):
    store = make_store(tmp_path / "store")
    model_dir = store.root / "model"
    params = {
        "source": tiny_data,
        "allow_unverified": "true",
        "data_dir": store.root / "data",
        "output_dir": model_dir,
        **QUICK_TRAINING,
    }

    # Ctrl-C while train runs: main and train end KILLED, the stages before stay FINISHED.
    process = start(store, "main", **params)
    wait_for_running(store, process, "tags.stage = 'train'")
    stop_with(process, signal.SIGINT)
    assert store.last_run("train").info.status == "KILLED", output(process)
    assert store.last_run("main").info.status == "KILLED", output(process)
    assert store.last_run("main").info.run_name == "main mnist"  # named from its start
    for stage in ("get_data", "explore_data", "preprocess"):
        assert store.last_run(stage).info.status == "FINISHED"
    assert_nothing_running(store)
    assert_whole_or_absent(model_dir)

    # SIGTERM while package runs: package and main end KILLED, ./model is whole or absent.
    process = start(store, "main", **params)
    wait_for_running(store, process, "tags.stage = 'package'")
    stop_with(process, signal.SIGTERM)
    assert store.last_run("package").info.status == "KILLED", output(process)
    assert store.last_run("main").info.status == "KILLED", output(process)
    assert store.last_run("train").info.status == "FINISHED"
    assert_nothing_running(store)
    assert_whole_or_absent(model_dir)

    # A run whose process died without a word (SIGKILL): main says so in one line.
    client = store.client()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    stale = client.create_run(
        store.last_run("main").info.experiment_id,
        tags={"stage": "train", "process": f"{os.uname().nodename}:{gone}"},
    )
    rerun = store.mlflow_run("main", **params)
    warnings = [line for line in rerun.stderr.splitlines() if "stale RUNNING" in line]
    assert len(warnings) == 1, rerun.stderr[-3000:]
    assert "python end_stale_runs.py" in warnings[0]
    main_run = store.last_run("main")
    assert main_run.info.status == "FINISHED"
    assert main_run.data.tags["reused_stages"] == "get_data,explore_data,preprocess,train"
    assert (model_dir / "MLmodel").exists()
    assert_whole_or_absent(model_dir)
    store.script("end_stale_runs.py")
    assert client.get_run(stale.info.run_id).info.status == "KILLED"
    assert_nothing_running(store)


def test_train_batch_outlives_a_killed_trial_process_then_stops_with_two_workers(pipeline):
    """A trial process killed as the OOM killer would (SIGKILL) costs only its own trial: the
    other worker's trial goes on, and the next trial starts in a new process. SIGTERM then
    ends the search and all its runs KILLED."""
    store = pipeline["store"]
    experiment = "stopping-train-batch"
    process = start(
        store,
        "train_batch",
        experiment=experiment,
        preprocess_run=pipeline["preprocess_run"],
        nr_conv_1="4,8,12",
        epochs="200",
        batch_size="32",
        workers="2",
    )
    (batch,) = wait_for_running(store, process, "tags.stage = 'train_batch'", experiment=experiment)
    trials_query = f"tags.mlflow.parentRunId = '{batch.info.run_id}' and tags.stage = 'train'"
    doomed, other = wait_for_running(store, process, trials_query, count=2, experiment=experiment)
    os.kill(int(doomed.data.tags[PROCESS_TAG].rsplit(":", 1)[1]), signal.SIGKILL)
    (third,) = wait_for_running(
        store, process, f"{trials_query} and tags.trial = '3'", experiment=experiment
    )
    client = store.client()
    killed = client.get_run(doomed.info.run_id)
    assert killed.info.status == "KILLED", output(process)
    assert killed.data.tags["error"] == "the trial's process was killed"
    assert client.get_run(other.info.run_id).info.status == "RUNNING", output(process)

    seconds = stop_with(process, signal.SIGTERM)
    assert seconds < 20
    found = {run.info.run_id: run.info.status for run in store.runs(experiment=experiment)}
    assert found[batch.info.run_id] == "KILLED", output(process)
    assert found[other.info.run_id] == found[third.info.run_id] == "KILLED", output(process)
    assert set(found.values()) == {"KILLED"}, found
