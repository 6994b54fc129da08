"""A user's mistake is one line; anything else is a bug and fails loudly, with its traceback.

Each stage's main runs in the test's process (Store.call), against a store of its own, so
that the run it starts is the only one there. Both kinds of error end the run FAILED, with
the error's first line as its tag `error`. One test of each kind runs the script itself,
for what Python does with them: the exit code, and the traceback on stderr.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

import pytest
from conftest import REPO

from tests.helpers import finished_run

MISSING_RUN = "0" * 32
# Something each stage calls once its run has started: the module and the name to break.
INSIDE_THE_STAGE = {
    "download.py": ("download", "fetch_dataset"),
    "explore.py": ("mnist_pipeline.tracking.runs", "resolve_data"),
    "preprocess.py": ("mnist_pipeline.tracking.runs", "resolve_data"),
    "train.py": ("train", "resolve_preprocess_run"),
    "package_model.py": ("mnist_pipeline.tracking.runs", "latest_run"),
}
# A mistake a user can make with each stage, and the line that tells them.
USER_MISTAKES = [
    ("download.py", ["--source", "no/such/folder"], "is neither 'official', a URL, nor"),
    ("explore.py", ["--data_run", MISSING_RUN], f"run '{MISSING_RUN}' does not exist"),
    ("preprocess.py", ["--data_run", MISSING_RUN], f"run '{MISSING_RUN}' does not exist"),
    ("train.py", ["--preprocess_run", MISSING_RUN], f"run '{MISSING_RUN}' does not exist"),
    ("package_model.py", ["--train_run", MISSING_RUN], f"run '{MISSING_RUN}' does not exist"),
]


def only_run(store):
    [run] = store.runs()
    return run


@pytest.mark.parametrize(("script", "arguments", "expected"), USER_MISTAKES)
def test_a_user_error_is_one_line_and_a_failed_run(store, script, arguments, expected):
    result = store.call(script, *arguments)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"{script}: error: ")
    assert expected in result.stderr.strip().splitlines()[-1]
    run = only_run(store)
    assert run.info.status == "FAILED"
    # The UI says why, too: the same line as a tag and in the run's description.
    line = result.stderr.strip().splitlines()[-1].removeprefix(f"{script}: error: ")
    assert run.data.tags["error"] == line
    assert run.data.tags["mlflow.note.content"].endswith(f"**Failed:** {line}")


def test_a_user_error_from_the_command_line_exits_1_with_one_line(store):
    script, arguments, expected = next(case for case in USER_MISTAKES if case[0] == "train.py")
    result = store.script(script, *arguments, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"{script}: error: {expected}")
    assert only_run(store).info.status == "FAILED"


def break_the_stage(monkeypatch, script: str) -> None:
    """Make what `script`'s stage calls once its run has started raise a RuntimeError."""
    module, name = INSIDE_THE_STAGE[script]

    def broken(*args, **kwargs):
        raise RuntimeError("an internal mistake")

    monkeypatch.setattr(importlib.import_module(module), name, broken)


@pytest.mark.parametrize("script", INSIDE_THE_STAGE)
def test_a_bug_inside_a_stage_is_raised_and_fails_the_run(store, monkeypatch, script):
    """The stage's work raises what no user can cause: it is raised, not made one line."""
    break_the_stage(monkeypatch, script)
    with pytest.raises(RuntimeError, match="an internal mistake"):
        store.call(script)
    run = only_run(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: an internal mistake"


def test_a_bug_from_the_command_line_prints_its_traceback(store):
    script = "package_model.py"
    module, name = INSIDE_THE_STAGE[script]
    probe = "\n".join(
        [
            "import importlib, sys",
            f"import {script.removesuffix('.py')} as stage",
            "def broken(*args, **kwargs):",
            "    raise RuntimeError('an internal mistake')",
            f"setattr(importlib.import_module({module!r}), {name!r}, broken)",
            "sys.exit(stage.main([]))",
        ]
    )
    result = store.run([sys.executable, "-c", probe], check=False)
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: an internal mistake" in result.stderr
    assert f"{script}: error:" not in result.stderr
    assert only_run(store).info.status == "FAILED"


def test_a_tracking_uri_in_a_message_hides_its_password(monkeypatch):
    """MLflow takes credentials in its tracking URI (a database's URL, or a server's); a
    message that names the store shows *** for the password."""
    import mlflow

    from mnist_pipeline.errors import UserError
    from mnist_pipeline.tracking import runs

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri("http://team:s3cret@127.0.0.1:9")  # nothing listens on port 9
    try:
        with pytest.raises(UserError) as refused:
            runs.get_run(MISSING_RUN, "train")
    finally:
        mlflow.set_tracking_uri(previous)
    assert "http://team:***@127.0.0.1:9" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    database = "postgresql://mlflow:s3cret@db:5432/mlflow"
    assert runs.redacted(database) == "postgresql://mlflow:***@db:5432/mlflow"


def test_a_refused_command_names_and_tags_the_run_that_mlflow_run_made(store, monkeypatch):
    """`mlflow run` makes the run before the script parses its parameters; refused, the run
    ends FAILED, and the UI says why rather than showing MLflow's random name."""
    import train

    client = store.client()
    made = client.create_run("0", run_name="peaceful-vole-324").info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", made)
    with pytest.raises(SystemExit):
        train.main(["--nr_conv1", "16"])
    tags = client.get_run(made).data.tags
    assert tags["error"] == "unrecognized arguments: --nr_conv1 16 (did you mean --nr_conv_1?)"
    assert tags["mlflow.runName"] == "train (refused)"
    # A batch's trial keeps its name.
    trial = client.create_run("0", run_name="trial 3/4", tags={"trial": "3"}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", trial)
    with pytest.raises(SystemExit):
        train.main(["--batch_size", "0"])
    tags = client.get_run(trial).data.tags
    assert tags["error"].startswith("argument --batch_size: ")
    assert tags["mlflow.runName"] == "trial 3/4"
    # Refused after parsing too: a join on a run that does not exist. `mlflow run . -e
    # train_batch` tags its run with the entry point, which names the refused run.
    import batch_train

    entry_point = {"mlflow.project.entryPoint": "train_batch"}
    made = client.create_run("0", run_name="wistful-conch-49", tags=entry_point).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", made)
    assert batch_train.main(["--join", MISSING_RUN]) == 1
    tags = client.get_run(made).data.tags
    assert tags["error"].startswith(f"run '{MISSING_RUN}' does not exist in ")
    assert tags["mlflow.runName"] == "train_batch (refused)"


def test_a_deleted_run_is_not_taken_as_a_stages_input(store):
    """`mlflow gc` may have removed a deleted run's artifacts: it is out of play."""
    data_run = finished_run(store.client(), "0", {"stage": "get_data", "dataset": "mnist"})
    store.client().delete_run(data_run)
    result = store.call("explore.py", "--data_run", data_run)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"explore.py: error: get_data run {data_run} is deleted: restore it, or name another"
    )


def test_preprocess_refuses_the_mean_and_std_that_another_dataset_measured(store, tiny_data):
    explored = finished_run(
        store.client(),
        "0",
        {"stage": "explore_data", "dataset": "fashion"},
        {"mean": 72.9, "std": 90.0},
    )
    result = store.call("preprocess.py", "--in_data", tiny_data, "--explore_run", explored)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"preprocess.py: error: explore_run {explored} measured fashion, not mnist: its mean "
        "and std are not this data's"
    )


@pytest.mark.parametrize("script", ["explore.py", "end_stale_runs.py"])
def test_an_unreachable_tracking_server_is_one_line_at_once(store, script):
    """Said at once, not after MLflow's minutes of retries, and with no traceback."""
    environment = {**store.env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(REPO / script)],
        env=environment,
        cwd=store.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 60
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{script}: error: cannot reach the tracking server http://127.0.0.1:9")
