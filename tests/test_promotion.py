"""The promotion gate: `package -P champion=auto` moves `@champion` only to a version no worse.

A store of this module's own (the registered model is named after the dataset, `mnist`, and
the session's pipeline store keeps its own `mnist`), with two train runs of the tiny data:
a weak one (one epoch at a tiny learning rate) and the tiny pipeline's training. The weak
one is packaged first, then the good one, then the weak one again, each with champion=auto.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY_TRAINING, make_store, stop

from mnist_pipeline.serving import promotion

pytestmark = pytest.mark.full  # trains twice and packages three times
FIGURES = ("served_accuracy", "served_png_accuracy", "drawn_accuracy")
WEAK_TRAINING = {**TINY_TRAINING, "epochs": "1", "lr": "0.00005"}


def package_auto(store, train_run: str):
    called = store.call(
        "package_model.py",
        *("--train_run", train_run, "--champion", "auto"),
        *("--output_dir", str(store.root / "model")),
    )
    assert called.returncode == 0, called.stderr
    [gate_line] = [line for line in called.stdout.splitlines() if line.startswith("gate: ")]
    run = store.last_run("package")
    [version] = store.client().search_model_versions(f"run_id = '{run.info.run_id}'")
    return gate_line, run, version


@pytest.fixture(scope="module")
def gated(tmp_path_factory, tiny_data) -> dict:
    """The store after the weak, the good and again the weak version went through the gate."""
    store = make_store(tmp_path_factory.mktemp("promotion") / "store")
    outdir = store.root / "data" / "mnist"
    source = ("--source", str(tiny_data), "--allow_unverified", "true")
    assert store.call("download.py", *source, "--outdir", str(outdir)).returncode == 0
    data_run = store.last_run("get_data").info.run_id
    assert store.call("preprocess.py", "--data_run", data_run).returncode == 0
    preprocess_run = store.last_run("preprocess").info.run_id
    train_runs = {}
    for kind, training in (("weak", WEAK_TRAINING), ("good", TINY_TRAINING)):
        arguments = [f"--{name}={value}" for name, value in training.items()]
        called = store.call("train.py", "--preprocess_run", preprocess_run, *arguments)
        assert called.returncode == 0, called.stderr
        train_runs[kind] = store.last_run("train").info.run_id
    steps = {
        step: package_auto(store, train_runs[kind])
        for step, kind in (("first", "weak"), ("better", "good"), ("worse", "weak"))
    }
    return {"store": store, "client": store.client(), "train_runs": train_runs, **steps}


def test_the_first_version_becomes_champion(gated):
    line, run, version = gated["first"]
    assert line == f"gate: version {version.version} becomes champion: no champion before"
    assert run.data.tags["gate_verdict"] == "champion"
    assert run.data.tags["gate_reason"] == "no champion before"
    tags = gated["client"].get_model_version("mnist", version.version).tags
    for figure in FIGURES:
        assert tags[f"gate_{figure}"] == run.data.tags[figure], figure
    assert tags["champion_reason"] == "no champion before"


def test_a_better_version_becomes_champion(gated):
    line, run, version = gated["better"]
    _, _, before = gated["first"]
    assert line.startswith(f"gate: version {version.version} becomes champion: served_accuracy ")
    for figure in FIGURES:
        assert f"{figure} {run.data.metrics[figure]:.4f} >= " in line, figure
    assert f"(champion v{before.version} " in line
    # The champion's figures were measured again, in a run nested under the package run.
    [nested] = gated["store"].children_of(run.info.run_id)
    assert nested.info.run_name == f"champion v{before.version} on the sets of v{version.version}"
    client = gated["client"]
    tags_before = client.get_model_version("mnist", before.version).tags
    for figure in FIGURES:
        assert tags_before[f"gate_{figure}"] == f"{nested.data.metrics[figure]:.4f}", figure
        assert run.data.tags[f"gate_{figure}"] == (
            f"v{version.version} {run.data.metrics[figure]:.4f}, "
            f"champion v{before.version} {nested.data.metrics[figure]:.4f}"
        )
    assert tags_before["gate_verdict"] == f"replaced by version {version.version}"


def test_a_worse_version_stays_behind_and_says_why(gated):
    line, run, version = gated["worse"]
    _, _, champion = gated["better"]
    client = gated["client"]
    assert client.get_model_version_by_alias("mnist", "champion").version == champion.version
    assert line.startswith(
        f"gate: version {version.version} stays behind champion v{champion.version}: "
    )
    assert " < " in line and " >= " not in line
    assert run.data.tags["gate_verdict"] == f"behind champion v{champion.version}"
    assert run.data.tags["gate_reason"] in line
    tags = client.get_model_version("mnist", version.version).tags
    champion_tags = client.get_model_version("mnist", champion.version).tags
    assert tags["gate_reason"] == champion_tags["gate_reason"] == run.data.tags["gate_reason"]
    assert champion_tags["gate_verdict"] == f"kept against version {version.version}"
    for figure in FIGURES:
        assert float(tags[f"gate_{figure}"]) == pytest.approx(run.data.metrics[figure], abs=1e-4)
        assert f"gate_{figure}" in champion_tags
    assert "champion_reason" not in tags


def test_judge_lets_a_version_through_within_the_margin():
    champion = {"served_accuracy": 0.9941, "drawn_accuracy": 0.990}
    close = promotion.judge(
        "3", {"served_accuracy": 0.9931, "drawn_accuracy": 0.990}, "2", champion
    )
    assert close.promoted
    assert close.line() == (
        "gate: version 3 becomes champion: "
        "served_accuracy 0.9931 >= 0.9921 (champion v2 0.9941 - 0.002), "
        "drawn_accuracy 0.9900 >= 0.9880 (champion v2 0.9900 - 0.002)"
    )
    behind = promotion.judge(
        "3", {"served_accuracy": 0.995, "drawn_accuracy": 0.912}, "2", champion
    )
    assert not behind.promoted
    assert behind.line() == (
        "gate: version 3 stays behind champion v2: "
        "drawn_accuracy 0.9120 < 0.9880 (champion v2 0.9900 - 0.002)"
    )


def test_champion_maybe_is_a_one_line_error(store):
    called = store.call("package_model.py", "--champion", "maybe")
    assert called.returncode == 2
    assert called.stderr == (
        "package_model.py: error: argument --champion: expected true, false or auto, got 'maybe'\n"
    )
    assert store.runs("package") == []


def test_stopped_while_the_champion_is_evaluated_ends_both_runs_killed(gated):
    """SIGTERM to package alone, while its child evaluates the champion: both stop at once."""
    store = gated["store"]
    command = [
        *(sys.executable, str(REPO / "package_model.py"), "--champion", "auto"),
        *("--train_run", gated["train_runs"]["weak"], "--output_dir", "stopped-model"),
    ]
    process = subprocess.Popen(
        command,
        cwd=store.root,
        env=store.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        for line in process.stderr:
            if line.startswith("Evaluated the served model"):
                break
        package_run = store.last_run("package")
        deadline = time.monotonic() + 120
        while not store.children_of(package_run.info.run_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        os.kill(process.pid, signal.SIGTERM)  # the parent only, not its process group
        rest = process.stderr.read()
        process.wait(timeout=120)
    finally:
        stop(process)
    assert process.returncode != 0
    assert "package_model.py: stopped by SIGTERM" in rest
    [nested] = store.children_of(package_run.info.run_id)
    assert store.client().get_run(package_run.info.run_id).info.status == "KILLED"
    assert nested.info.status == "KILLED"
