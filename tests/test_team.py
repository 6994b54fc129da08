"""The team's setup: PostgreSQL and `mlflow server` with basic-auth, one search over workers.

A throwaway PostgreSQL cluster and a real `mlflow server` are started once for this module
by `team_server.py start`, and stopped by `team_server.py stop`. Clients run the real
commands from folders that share nothing with the server's folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY_TRAINING, VENV_BIN, Store, free_port, running
from test_real_pipeline import STAGES

from mnist_pipeline.training import checkpoints
from tests.helpers import render_digit

POSTGRES_MISSING = shutil.which("pg_config") is None and not list(
    Path("/usr/lib/postgresql").glob("*/bin/initdb")
)
pytestmark = pytest.mark.skipif(
    POSTGRES_MISSING and not os.environ.get("CI"),
    reason="PostgreSQL is not installed (apt-get install postgresql); CI installs it",
)


CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def clean_environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OPTUNA_"))}
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "GIT_PYTHON_REFRESH": "quiet",
        }
    )
    return env


class TeamServer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port, self.db_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self, *words: str, check: bool = True, input: str | None = None):
        result = subprocess.run(
            [sys.executable, str(REPO / "team_server.py"), *words, "--dir", str(self.folder)]
            + ["--port", str(self.port), "--db-port", str(self.db_port), "--workers", "2"],
            env=clean_environment(),
            capture_output=True,
            text=True,
            input=input,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"team_server.py {words} failed:\n{result.stderr[-3000:]}")
        return result

    def secret(self, name: str) -> str:
        return (self.folder / "secrets" / name).read_text().strip()

    @property
    def storage(self) -> str:
        password = self.secret("optuna_password")
        return f"postgresql://optuna:{password}@127.0.0.1:{self.db_port}/optuna"

    def client(self, folder: Path, user: str = "admin", password: str | None = None) -> Store:
        """A team member's shell: in its own folder, with the exports the README shows."""
        folder.mkdir(parents=True, exist_ok=True)
        env = clean_environment()
        env.update(
            {
                "MLFLOW_TRACKING_URI": self.url,
                "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": password or self.secret("admin_password"),
                "OPTUNA_STORAGE": self.storage,
            }
        )
        return Store(folder, env)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    # PostgreSQL runs as the `postgres` user when we are root: its folder must be reachable.
    base = Path(tempfile.mkdtemp(prefix="team-server-"))
    base.chmod(0o755)
    # In the default folder of a clone of the project, whose `git status` must stay clean.
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(base / "project")], check=True)
    server = TeamServer(base / "project" / "team-server")
    server.command("start")
    # This process reads the server too (the tests' own look-ups), as the admin.
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(
        dict(zip(CREDENTIALS, ("admin", server.secret("admin_password")), strict=True))
    )
    try:
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.command("stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def team_pipeline(team, tmp_path_factory, tiny_data):
    """`main` from a client folder that shares nothing with the server's folder."""
    client = team.client(tmp_path_factory.mktemp("client-main"))
    client.env["TMPDIR"] = str(tmp_path_factory.mktemp("client-main-tmp"))
    client.main = (
        ["mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "team"]
        + ["-P", f"source={tiny_data}", "-P", "allow_unverified=true"]
        + ["-P", f"output_dir={client.root / 'model'}"]
        + [arg for name, value in TINY_TRAINING.items() for arg in ("-P", f"{name}={value}")]
    )
    client.run(client.main)
    return client


def get(url: str, auth: tuple[str, str] | None = None, host: str | None = None) -> int:
    import base64

    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_server_asks_for_credentials_and_a_second_start_reuses_it(team):
    search = f"{team.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert get(search) == 401
    assert get(search, ("admin", "not-the-password")) == 401
    assert get(search, ("admin", team.secret("admin_password"))) == 200

    started = time.monotonic()
    again = team.command("start")
    assert "already runs at" in again.stderr
    assert "(stop it first to change its address)" in again.stderr
    assert time.monotonic() - started < 30
    assert f"MLFLOW_TRACKING_URI={team.url}" in again.stdout

    # Without the ports it started on, later commands find them.
    status = subprocess.run(
        [sys.executable, str(REPO / "team_server.py"), "status", "--dir", str(team.folder)],
        env=clean_environment(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert f"running on port {team.db_port}" in status.stderr
    assert f"MLFLOW_TRACKING_URI={team.url}" in status.stdout

    added = team.command("add-user", "alice", input="a-long-password-1\n")
    assert "Warning" not in added.stderr
    assert get(search, ("alice", "a-long-password-1")) == 200
    again = team.command("add-user", "alice", input="a-long-password-2\n", check=False)
    assert again.stderr == "team_server.py: error: user 'alice' exists already\n"
    short = team.command("add-user", "bob", input="short\n", check=False)
    assert short.returncode != 0
    assert short.stderr.count("\n") == 1


@pytest.mark.parametrize("taken", ["--port", "--db-port"])
def test_a_start_on_a_port_in_use_is_refused_before_it_makes_anything(team, tmp_path, taken):
    """The running team server holds both ports: a second one there would seem to start,
    and its exports would lead to the first one."""
    ports = {"--port": str(free_port()), "--db-port": str(free_port())}
    ports[taken] = str(team.port if taken == "--port" else team.db_port)
    command = [sys.executable, str(REPO / "team_server.py"), "start", "--dir", str(tmp_path / "s")]
    command += [word for pair in ports.items() for word in pair]
    result = subprocess.run(
        command, env=clean_environment(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"team_server.py: error: port {ports[taken]} on 127.0.0.1 is in use by another program; "
        f"choose a free one with {taken}\n"
    )
    assert not (tmp_path / "s").exists()


def test_a_clone_stays_clean_when_the_server_starts_and_stops(team):
    """What start and stop make is in ./team-server, which the clone's .gitignore ignores.

    The clone is of HEAD: a change to .gitignore counts once it is committed. Started again
    with `--allowed-hosts`, the server answers those names and still its own 127.0.0.1.
    """

    def changes() -> str:
        status = ["git", "status", "--porcelain", "--untracked-files=all"]
        return subprocess.run(status, cwd=team.folder.parent, capture_output=True, text=True,
                              check=True).stdout  # fmt: skip

    assert (team.folder / "secrets").stat().st_mode & 0o777 == 0o700
    assert changes() == ""
    team.command("stop")
    try:
        assert changes() == ""
        nothing = team.command("stop")
        assert nothing.stderr == f"Nothing to stop: no team server runs in {team.folder}\n"
    finally:
        again = team.command("start", "--allowed-hosts", "203.0.113.7:*")
    assert "Initialising" not in again.stderr  # the cluster, and its passwords, are reused
    assert changes() == ""
    search = f"{team.url}/api/2.0/mlflow/experiments/search?max_results=1"
    admin = ("admin", team.secret("admin_password"))
    assert get(search, admin) == 200
    assert get(search, admin, host=f"203.0.113.7:{team.port}") == 200
    assert get(search, admin, host=f"203.0.113.8:{team.port}") == 403  # Invalid Host header


def test_main_runs_through_the_server_with_nothing_on_the_client(team, team_pipeline):
    client = team_pipeline
    runs = client.runs()
    stages = {run.data.tags.get("stage") for run in runs}
    assert {"main", "get_data", "explore_data", "preprocess", "train", "package"} <= stages
    assert all(run.info.status == "FINISHED" for run in runs)
    # Artifacts went through the server's proxy, into the server's folder.
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:") for run in runs)
    assert not (client.root / "mlruns").exists()
    assert not (client.root / "mlflow.db").exists()
    # The stages downloaded the runs they read (train: the preprocess run's arrays) and
    # removed them when done.
    assert not [path.name for path in Path(client.env["TMPDIR"]).rglob("*.np[yz]")]
    assert any((team.folder / "artifacts").rglob("transform.json"))
    # "Created by" in the UI is the login, not the OS user running the commands.
    assert {run.data.tags["mlflow.user"] for run in runs} == {"admin"}
    versions = client.client().search_model_versions("name = 'mnist'")
    package_run = client.last_run("package").info.run_id
    assert [version.run_id for version in versions] == [package_run]

    # As on another member's machine, which never had ./model (here: deleted): main reuses
    # all five stages and downloads the package run's model through the server, registering
    # no other version.
    shutil.rmtree(client.root / "model")
    again = client.run(client.main)
    assert client.last_run("main").data.tags["reused_stages"] == ",".join(STAGES)
    assert f"did not hold run {package_run}'s model: downloaded models:/m-" in again.stderr
    assert (client.root / "model" / "MLmodel").exists()
    assert len(client.client().search_model_versions("name = 'mnist'")) == 1


def start(store: Store, *params: str, folder: Path | None = None) -> subprocess.Popen:
    command = ["mlflow", "run", str(REPO), "-e", "train_batch", "--env-manager", "local"]
    command += ["--experiment-name", "search"]
    for param in params:
        command += ["-P", param]
    log = open((folder or store.root) / "output.log", "w")  # noqa: SIM115 (closed by the OS)
    return subprocess.Popen(
        command,
        cwd=folder or store.root,
        env=store.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_one_search_over_three_workers_survives_a_killed_one(team, team_pipeline, tmp_path):
    preprocess_run = team_pipeline.last_run("preprocess").info.run_id
    machines = [team.client(tmp_path / f"machine-{n}") for n in (1, 2, 3)]
    first = start(
        machines[0],
        f"preprocess_run={preprocess_run}",
        "strategy=random",
        "trials=5",
        "lr=0.002:0.008",
        "nr_conv_1=4:8",
        "epochs=4",
        "batch_size=32",
        "heartbeat_seconds=1",
        "grace_seconds=5",
    )
    parent = wait_for(
        lambda: next(
            (run for run in machines[0].runs("train_batch") if run.info.status == "RUNNING"), None
        ),
        120,
        "the search's parent run",
    )
    parent_id = parent.info.run_id
    joiners = [start(machine, f"join={parent_id}") for machine in machines[1:]]
    doomed = joiners[1]

    def a_trial_of_the_doomed_worker():
        for run in machines[0].children_of(parent_id):
            pid = int(run.data.tags["worker"].rsplit(":", 1)[1])
            try:
                training = run.info.status == "RUNNING" and "lr" in run.data.params
                if training and os.getpgid(pid) == doomed.pid:
                    return run
            except ProcessLookupError:
                continue
        return None

    killed_trial = wait_for(a_trial_of_the_doomed_worker, 240, "a trial on the third machine")

    def its_checkpoint():
        machines[0].client()  # MLflow pointed at the team's server
        return checkpoints.latest(killed_trial.info.run_id)

    # Killed once the trial has a checkpoint, from which its retry goes on.
    wait_for(its_checkpoint, 120, "the trial's first checkpoint")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()

    for worker in (first, joiners[0]):
        assert worker.wait(timeout=600) == 0, (machines[0].root / "output.log").read_text()[-3000:]

    children = machines[0].children_of(parent_id)
    by_id = {run.info.run_id: run for run in children}
    assert by_id[killed_trial.info.run_id].info.status == "KILLED"
    retry = next(
        run for run in children if run.data.tags.get("retry_of") == killed_trial.info.run_id
    )
    assert retry.info.status == "FINISHED"
    assert retry.data.params["lr"] == killed_trial.data.params["lr"]
    assert retry.data.tags["resumed_from"] == killed_trial.info.run_id
    assert int(retry.data.tags["resumed_after_epoch"]) >= 1
    # Every trial is accounted for, once with an answer, whichever machine ran it. Optuna's
    # MaxTrialsCallback lets a live worker finish a trial begun before the fifth answer.
    answered = [run for run in children if run.info.status == "FINISHED"]
    numbers = sorted(int(run.data.tags["trial"]) for run in answered)
    assert numbers == list(range(1, len(numbers) + 1)) and 5 <= len(numbers) <= 7, numbers
    assert len({run.data.tags["worker"] for run in children}) == 3
    # Every train run of the experiment is a child of the one parent, and nothing is RUNNING.
    store = machines[0]
    every = store.runs(experiment="search")
    for run in every:
        assert run.info.status != "RUNNING", run.data.tags.get("mlflow.runName")
        if run.data.tags.get("stage") == "train":
            assert run.data.tags["mlflow.parentRunId"] == parent_id
    workers = [
        run for run in store.runs("train_batch_worker") if run.data.tags["joined"] == parent_id
    ]
    assert sorted(run.info.status for run in workers) == ["FINISHED", "KILLED"]
    assert all(run.data.tags["mlflow.runName"].startswith("train_batch_worker ") for run in workers)

    parent = store.client().get_run(parent_id)
    assert parent.info.status == "FINISHED"
    best = max(answered, key=lambda run: run.data.metrics["accuracy"])
    assert parent.data.metrics["best_accuracy"] == best.data.metrics["accuracy"]
    assert (
        by_id[parent.data.tags["best_run_id"]].data.metrics["accuracy"]
        == (best.data.metrics["accuracy"])
    )
    artifacts = {item.path for item in store.client().list_artifacts(parent_id)}
    assert {"trials.csv", "accuracy_by_hyperparameter.png"} <= artifacts
    table = pd.read_csv(store.client().download_artifacts(parent_id, "trials.csv"))
    row = table.set_index("run_id").loc[killed_trial.info.run_id]
    assert row["state"] == "FAIL" and row["error"].endswith("stopped sending heartbeats")
    said = "".join((machine.root / "output.log").read_text() for machine in machines[:2])
    assert f"trial {killed_trial.data.tags['trial']}'s worker stopped" in said

    # The best trial, packaged on the server, is served from a third folder.
    machines[1].script(
        "package_model.py",
        *("--train_run", "best", "--parent_run", parent_id),
        *("--output_dir", str(machines[1].root / "model")),
    )
    elsewhere = team.client(tmp_path / "serving")
    port = free_port()
    serve = ["mlflow", "models", "serve", "-m", "models:/mnist@champion"]
    serve += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    # A 3 in white on black, 28x28 as MNIST's (a blank is refused: nothing to classify).
    a_digit = cv2.resize(render_digit(3, np.random.default_rng(0)), (28, 28))
    with running(serve, f"http://127.0.0.1:{port}/ping", cwd=elsewhere.root, env=elsewhere.env):
        import json

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": [a_digit.tolist()]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        assert set(answer["predictions"][0]) >= {"label", "class_name", "probability"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"MLFLOW_TRACKING_PASSWORD": "wrong-password"}, "refused the credentials"),
        ({"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "cannot reach the tracking server"),
        ({"OPTUNA_STORAGE": "http://example.org/optuna"}, "is not a database URL"),
        ({"OPTUNA_STORAGE": "postgresql://optuna:wrong@127.0.0.1:{db_port}/optuna"},
         "cannot open the study storage postgresql://optuna:***@"),
    ],
)  # fmt: skip
def test_bad_team_settings_are_one_line_and_create_nothing(team, team_pipeline, change, message):
    import optuna

    store = team.client(team_pipeline.root.parent / "bad-settings")
    store.env.update({k: v.format(db_port=team.db_port) for k, v in change.items()})
    studies = len(optuna.get_all_study_names(team.storage))
    before = len(team_pipeline.runs())
    result = store.script(
        "batch_train.py", "--strategy", "tpe", "--lr", "0.001:0.01", "--trials", "2", check=False
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert len(optuna.get_all_study_names(team.storage)) == studies
    assert len(team_pipeline.runs()) == before


def test_bad_join_and_grid_requests_are_one_line(team, team_pipeline):
    store = team_pipeline
    train_run = store.last_run("train").info.run_id
    cases = [
        (["--join", "0" * 32], "does not exist"),
        (["--join", train_run], "is not a train_batch run"),
        (["--strategy", "grid", "--lr", "0.001:0.01"], "strategy grid cannot search ranges"),
    ]
    for arguments, message in cases:
        result = store.call("batch_train.py", *arguments)
        assert result.returncode != 0, arguments
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
