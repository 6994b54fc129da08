"""The real thing, on the local mirror of MNIST: main, and the README's commands as written.

Slow (minutes): these run the real pipeline on 70,000 images. They are skipped where the
mirror (../shared/data/mnist from the repository) is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import MIRROR, REPO, free_port, make_store, running

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MIRROR / "mnist").is_dir(), reason="no local mirror of MNIST"),
]
STAGES = ["get_data", "explore_data", "preprocess", "train", "package"]


def test_main_on_mnist_nests_reuses_and_learns(tmp_path):
    store = make_store(tmp_path / "store")
    params = {
        "source": MIRROR / "mnist",
        "epochs": "1",
        "data_dir": store.root / "data",
        "output_dir": store.root / "model",
    }
    store.mlflow_run("main", **params)
    parent = store.last_run("main")
    import mlflow

    store.client()
    children = mlflow.search_runs(
        experiment_ids=["0"],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    assert sorted(run.data.tags["stage"] for run in children) == sorted(STAGES)
    data_run = next(run for run in children if run.data.tags["stage"] == "get_data")
    assert data_run.data.tags["verified"] == "true"
    assert data_run.data.metrics["train_count"] == 60000
    train_run = next(run for run in children if run.data.tags["stage"] == "train")
    assert train_run.data.metrics["accuracy"] >= 0.98

    started = time.monotonic()
    store.mlflow_run("main", **params)
    rerun_seconds = time.monotonic() - started
    rerun = store.last_run("main")
    assert rerun.data.tags["reused_stages"] == ",".join(STAGES)
    assert rerun_seconds < 60


def copy_of_the_project(tmp_path):
    """The working tree as a user has it after cloning, with ../shared beside it."""
    project = tmp_path / "project"
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    (tmp_path / "shared").symlink_to(MIRROR.parent)
    return project


def readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block after `heading` in README.md."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_stage_by_stage_commands_as_written(tmp_path):
    project = copy_of_the_project(tmp_path)
    store = make_store(project)
    env = {**store.env}
    env.pop("MLFLOW_TRACKING_URI")  # the README relies on MLflow's default store
    store.env = env
    placeholders = {
        "get_data": "<get_data run id>",
        "preprocess": "<preprocess run id>",
        "train": "<train run id>",
    }
    commands = readme_block("## The pipeline, stage by stage")
    assert commands[-1] == "mlflow ui"
    for line in commands[:-1]:
        for stage, placeholder in placeholders.items():
            if placeholder in line:
                line = line.replace(placeholder, last_run_id(project, stage))
        store.run(["bash", "-c", line], cwd=project, timeout=900)
    assert (project / "mlflow.db").exists() and (project / "model" / "MLmodel").exists()

    port = free_port()
    ui = ["bash", "-c", f"mlflow ui --port {port}"]
    with running(ui, f"http://127.0.0.1:{port}/", cwd=project, env=env, timeout=90):
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
        assert b"MLflow" in page or b"mlflow" in page


def last_run_id(project, stage: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow, sys; from mnist_pipeline import runs; "
            f"print(runs.finished_runs('{stage}', max_results=1)[0].info.run_id)",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "PYTHONPATH": str(project),
        },
    )
    return result.stdout.strip().splitlines()[-1]
