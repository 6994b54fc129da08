"""First use, many at once: commands started together on a fresh folder all work.

MLflow creates and migrates a new SQLite store in whichever process opens it first, and
two processes doing that at once can damage it for good. The project's MLflow plugin
(mnist_store_plugin.py and mnist_pipeline/tracking/store.py, installed by `make setup`) creates it once, under a lock, in
`mlflow run` and `mlflow ui` as well as in the scripts.
"""

from __future__ import annotations

import importlib.metadata
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
from conftest import REPO, free_port, make_store, stop, store_environment, wait_until_up

from tests.helpers import ONE_UI_PROCESS


def test_the_store_plugin_is_installed():
    plugins = {
        group: {entry.name: entry.value for entry in importlib.metadata.entry_points(group=group)}
        for group in ("mlflow.tracking_store", "mlflow.model_registry_store")
    }
    assert plugins["mlflow.tracking_store"].get("sqlite") == "mnist_store_plugin:tracking_store", (
        "`make setup` installs the project's MLflow plugin (pip install -e .)"
    )
    assert plugins["mlflow.model_registry_store"].get("sqlite") == (
        "mnist_store_plugin:registry_store"
    )


@pytest.mark.full  # four MLflow commands at once, one of them a stage
def test_four_commands_at_once_on_a_fresh_folder(tmp_path, tiny_data):
    root = tmp_path / "fresh"
    root.mkdir()
    env = store_environment(root)
    port = free_port()
    get_data = ["mlflow", "run", str(REPO), "-e", "get_data", "--env-manager", "local"]
    get_data += ["-P", f"source={tiny_data}", "-P", "allow_unverified=true"]
    commands = [
        [*get_data, "-P", f"outdir={root / 'data' / 'a'}"],
        [*get_data, "-P", f"outdir={root / 'data' / 'b'}"],
        [sys.executable, str(REPO / "end_stale_runs.py"), "--dry_run"],
    ]
    log = root / "ui.log"
    with open(log, "w") as ui_output:
        ui = subprocess.Popen(
            ["mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env={**env, **ONE_UI_PROCESS},
            stdout=ui_output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes = [
            subprocess.Popen(
                command,
                cwd=root,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for command in commands
        ]
        try:
            for command, process in zip(commands, processes, strict=True):
                out, _ = process.communicate(timeout=300)
                assert process.returncode == 0, f"{' '.join(command)}:\n{out[-4000:]}"
            url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5"
            wait_until_up(url, ui, log, timeout=180)
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with direct.open(url, timeout=10) as response:
                assert b"Default" in response.read()
        finally:
            stop(ui)

    store = make_store(root)  # opens the store once more, as the next command would
    finished = store.runs("get_data", query="attributes.status = 'FINISHED'")
    assert len(finished) == 2
    with sqlite3.connect(root / "mlflow.db") as connection:
        leftovers = connection.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE '%alembic_tmp%'"
        ).fetchall()
    assert not leftovers


def test_a_damaged_store_is_explained_in_one_line_and_kept(tmp_path):
    store = make_store(tmp_path / "store")
    database = store.root / "mlflow.db"
    # What two first-time migrations at once leave behind: a migration cut in half.
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'a8c4a736bde6'")
        connection.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
    result = store.mlflow_run("get_data", check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert "damaged" in last_line
    assert f"mv {database} {database}.damaged" in last_line
    assert database.exists()
