"""Tests for the quick start in 0/: the two scripts and the commands of the two markdown steps.

The scripts run as subprocesses from a temporary folder, against a temporary SQLite store, as
a participant would run them; the tests then read back what they logged. The bash blocks of
third_serving.md and fourth_docker.md run as written (only the port and the image name may be
changed), and their answers are compared with the output blocks that follow them in the docs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import free_port, stop, wait_until_up
from sklearn.datasets import load_iris

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "0"
# The interpreter running the tests is the project's venv; its bin holds mlflow, uvicorn, python.
VENV_BIN = Path(sys.executable).parent
REGISTERED_MODEL_URI = "models:/quickstart-iris/latest"
COLUMN_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SCRIPT_TIMEOUT = 120
SERVER_START_TIMEOUT = 90
FENCED_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


@dataclass
class Workspace:
    """A folder where a participant ran step 1 and step 2 once."""

    path: Path
    env: dict[str, str]
    tracking_uri: str
    first_output: str
    second_output: str

    def run_id(self, output: str) -> str:
        match = re.search(r"Run ID: ([0-9a-f]{32})", output)
        assert match, f"no 'Run ID: …' line in:\n{output}"
        return match.group(1)


def quickstart_env(folder: Path) -> dict[str, str]:
    env = os.environ.copy()
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # MLflow 3's default store, made explicit so that nothing inherited points elsewhere.
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    for inherited in ("MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(inherited, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_command(
    command: str | list[str], workspace: Workspace, timeout: float = SCRIPT_TIMEOUT
) -> subprocess.CompletedProcess:
    arguments = ["bash", "-c", command] if isinstance(command, str) else command
    return subprocess.run(
        arguments,
        cwd=workspace.path,
        env=workspace.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_script(folder: Path, env: dict[str, str], script: str) -> str:
    # Exactly the documented usage line, `python 0/<script>`, from the folder that holds 0/.
    result = subprocess.run(
        ["python", f"0/{script}"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    folder = tmp_path_factory.mktemp("quickstart")
    (folder / "0").symlink_to(QUICKSTART, target_is_directory=True)
    env = quickstart_env(folder)
    first_output = run_script(folder, env, "first_example.py")
    second_output = run_script(folder, env, "second_logging.py")
    return Workspace(folder, env, env["MLFLOW_TRACKING_URI"], first_output, second_output)


def commands_of(markdown: Path) -> list[tuple[str, tuple[str, str] | None]]:
    """The bash blocks of a doc, each with the json or text block that follows it, if any."""
    blocks = [
        (match.group(1), match.group(2)) for match in FENCED_BLOCK.finditer(markdown.read_text())
    ]
    commands = []
    for index, (language, body) in enumerate(blocks):
        if language != "bash":
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        expected = following if following and following[0] in ("json", "text") else None
        commands.append((body.strip(), expected))
    return commands


def check_output(command: str, output: str, expected: tuple[str, str]) -> None:
    language, body = expected
    if language == "json":
        assert json.loads(output) == json.loads(body), f"{command}\nanswered {output}"
        return
    # In a text block, … stands for text left out (IDs, paths); the rest must appear in order.
    position = 0
    for fragment in body.strip().split("…"):
        found = output.find(fragment, position)
        assert found >= 0, f"{command}\nprinted:\n{output}\nwithout {fragment!r}"
        position = found + len(fragment)


def with_port(command: str, documented_port: int, port: int) -> str:
    return re.sub(rf"\b{documented_port}\b", str(port), command)


def start_in_background(command: str, workspace: Workspace, log: Path) -> subprocess.Popen:
    with log.open("w") as log_file:
        return subprocess.Popen(
            ["bash", "-c", command],
            cwd=workspace.path,
            env=workspace.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def docker_engine_problem() -> str | None:
    """Why no image can be built here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "there is no docker command"
    try:
        info = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        return f"`docker info` failed: {(info.stderr or info.stdout).strip().splitlines()[-1]}"
    return None


# Step 1 and step 2: what the scripts logged.


def test_first_example_logs_tag_params_ten_steps_and_artifacts(workspace):
    run_id = workspace.run_id(workspace.first_output)
    assert "mlflow ui" in workspace.first_output
    assert "localhost:5000" in workspace.first_output
    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "quickstart"
    assert run.data.tags["stage"] == "quickstart"
    assert run.data.params == {"start": "1", "stop": "10", "step": "1"}

    history = sorted(client.get_metric_history(run_id, "count"), key=lambda metric: metric.step)
    assert [metric.step for metric in history] == list(range(1, 11))
    assert [metric.value for metric in history] == [float(number) for number in range(1, 11)]
    totals = sorted(client.get_metric_history(run_id, "running_total"), key=lambda m: m.step)
    assert [metric.value for metric in totals][-1] == 55.0 and len(totals) == 10

    notes = client.list_artifacts(run_id, "notes")
    assert sorted(Path(artifact.path).name for artifact in notes) == ["numbers.txt", "summary.txt"]
    # The default artifact store of MLflow 3 is ./mlruns in the folder the script ran from.
    numbers_files = list(workspace.path.glob(f"mlruns/*/{run_id}/artifacts/notes/numbers.txt"))
    assert len(numbers_files) == 1
    assert numbers_files[0].read_text().split() == [str(number) for number in range(1, 11)]


def test_second_logging_logs_params_metrics_and_a_model_that_predicts(workspace):
    run_id = workspace.run_id(workspace.second_output)
    assert REGISTERED_MODEL_URI in workspace.second_output
    client = mlflow.MlflowClient(tracking_uri=workspace.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.params == {"C": "1.0", "max_iter": "500", "test_size": "0.25", "seed": "42"}
    assert run.data.metrics["accuracy"] > 0.85
    assert 0.85 < run.data.metrics["f1_macro"] <= 1.0

    versions = client.search_model_versions("name = 'quickstart-iris'")
    assert [(str(version.version), version.run_id) for version in versions] == [("1", run_id)]

    # Resolved through this client: mlflow.artifacts.download_artifacts("models:/…") would look
    # the name up in the global registry URI, whatever registry_uri it is given (3.17.2).
    assert versions[0].source.startswith("models:/m-")
    logged_model = client.get_logged_model(versions[0].source.removeprefix("models:/"))
    assert logged_model.source_run_id == run_id
    model_folder = Path(logged_model.artifact_location)
    assert model_folder.is_relative_to(workspace.path / "mlruns")
    assert (model_folder / "serving_input_example.json").is_file()
    model = mlflow.pyfunc.load_model(model_folder)
    assert model.metadata.get_input_schema().input_names() == COLUMN_NAMES
    iris = load_iris(as_frame=True)
    predictions = np.asarray(model.predict(iris.data.set_axis(COLUMN_NAMES, axis="columns")))
    assert predictions.shape == (150,)
    assert (predictions == iris.target.to_numpy()).mean() > 0.9


# Step 3: serving, as third_serving.md says.


def test_third_serving_md_commands_work_as_written(workspace, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("the documented requests use curl, which is not installed here")
    commands = commands_of(QUICKSTART / "third_serving.md")
    serve_commands = [
        command for command, _ in commands if command.startswith("mlflow models serve")
    ]
    assert serve_commands == [
        f"mlflow models serve -m {REGISTERED_MODEL_URI} --env-manager local -p 5000"
    ]
    port = free_port()
    log = tmp_path / "serve.log"
    server = start_in_background(with_port(serve_commands[0], 5000, port), workspace, log)
    outputs = {}
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log, SERVER_START_TIMEOUT)
        # Make sure the answer came from this server and not from another one on the same port.
        assert f"Uvicorn running on http://127.0.0.1:{port}" in log.read_text()
        for command, expected in commands:
            if command in serve_commands:
                continue
            if command.startswith("sqlite3") and shutil.which("sqlite3") is None:
                continue  # the doc offers the python one-liner for machines without it
            result = run_command(with_port(command, 5000, port), workspace)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            if expected:
                check_output(command, result.stdout, expected)
            outputs[command] = result.stdout
    finally:
        stop(server)
    assert server.poll() is not None

    answers = list(outputs.values())
    assert '{"predictions": [0, 2]}' in answers
    assert '{"predictions": [0]}' in answers
    assert any(
        answer.startswith("Unrecognized content type parameters: format.") for answer in answers
    )
    assert any("exactly one of the input fields" in answer for answer in answers)
    files = next(output for command, output in outputs.items() if command.startswith("find"))
    assert re.search(r"mlruns/\d+/[0-9a-f]{32}/artifacts/notes/numbers\.txt", files)
    assert re.search(r"mlruns/\d+/models/m-[0-9a-f]+/artifacts/model\.skops", files)


# Step 4: Docker, as fourth_docker.md says.


def docker_command(commands: list[tuple[str, object]], start: str) -> tuple[str, object]:
    matching = [(command, expected) for command, expected in commands if command.startswith(start)]
    assert len(matching) == 1, f"expected one '{start}' block, found {len(matching)}"
    return matching[0]


def test_fourth_docker_md_generates_the_dockerfile(workspace):
    commands = commands_of(QUICKSTART / "fourth_docker.md")
    command, _ = docker_command(commands, "mlflow models generate-dockerfile")
    assert command == (
        f"mlflow models generate-dockerfile -m {REGISTERED_MODEL_URI} -d my-image-dockerfile"
    )
    result = run_command(command, workspace)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"

    output = workspace.path / "my-image-dockerfile"
    dockerfile = (output / "Dockerfile").read_text()
    python = ".".join(str(part) for part in sys.version_info[:2])
    assert re.search(rf"^FROM python:{re.escape(python)}\.\d+-slim$", dockerfile, re.MULTILINE)
    assert f"pip install mlflow=={mlflow.__version__}" in dockerfile
    assert "COPY model_dir /opt/ml/model" in dockerfile
    assert "C._serve('local')" in dockerfile
    model_file = (output / "model_dir" / "MLmodel").read_text()
    assert f"run_id: {workspace.run_id(workspace.second_output)}" in model_file
    assert (output / "model_dir" / "model.skops").is_file()
    assert "quickstart-iris" in (output / "model_dir" / "registered_model_meta").read_text()


def test_fourth_docker_md_build_fails_as_documented_without_an_engine(workspace):
    problem = docker_engine_problem()
    if problem is None:
        pytest.skip("a Docker engine answers here; the build itself is tested below")
    if "Cannot connect to the Docker daemon" not in problem:
        pytest.skip(f"the documented failure is the one of a client without engine; {problem}")
    command, _ = docker_command(
        commands_of(QUICKSTART / "fourth_docker.md"), "mlflow models build-docker"
    )
    image = f"quickstart-test-{uuid.uuid4().hex[:8]}"
    result = run_command(command.replace("my-image", image), workspace)
    assert result.returncode != 0
    printed = result.stdout + result.stderr
    assert "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." in printed
    assert "RuntimeError: Docker build failed." in printed


def test_fourth_docker_md_builds_runs_and_answers(workspace, tmp_path):
    problem = docker_engine_problem()
    if problem is not None:
        pytest.skip(
            "building and running the image needs a Docker engine, and this machine has none "
            f"({problem}); this step is tested on a machine with Docker"
        )
    commands = commands_of(QUICKSTART / "fourth_docker.md")
    build, _ = docker_command(commands, "mlflow models build-docker")
    run, _ = docker_command(commands, "docker run")
    query, expected = docker_command(commands, "curl")
    image = f"quickstart-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    result = run_command(build.replace("my-image", image), workspace, timeout=1800)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    log = tmp_path / "docker-run.log"
    container = start_in_background(
        with_port(run, 5001, port).replace("my-image", image), workspace, log
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", container, log, 300)
        answer = run_command(with_port(query, 5001, port), workspace)
        assert answer.returncode == 0, answer.stderr
        check_output(query, answer.stdout, expected)
        assert json.loads(answer.stdout) == {"predictions": [0, 2]}
    finally:
        stop(container)
        containers = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"ancestor={image}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if containers:
            subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)
