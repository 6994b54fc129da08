"""The promotion gate: `package -P champion=auto` moves `@champion` only to a version no worse.

A store of this module's own (the registered model is named after the dataset, `mnist`, and
the session's pipeline store keeps its own `mnist`), with two train runs of the tiny data:
a weak one (one epoch at a tiny learning rate) and the tiny pipeline's training. The weak
one is packaged first, then train_run=best (which finds the good one), then the weak one
again, each with champion=auto. The experiment `feedback` holds 20 drawings of the
drawing page to evaluate on, so the gate judges both versions on them too.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass

import pytest
from conftest import REPO, TINY_TRAINING, make_store, stop

import package_model
from mnist_pipeline.serving import promotion
from tests.helpers import a_sample_of, digit_pngs, kept_drawings, started_reading_stderr

pytestmark = pytest.mark.full  # trains twice and packages three times
FIGURES = (
    "served_accuracy",
    "served_png_accuracy",
    "drawn_accuracy",
    "fonts_accuracy",
    "feedback_accuracy",
)
WEAK_TRAINING = {**TINY_TRAINING, "epochs": "1", "lr": "0.00005"}


@dataclass
class Step:
    """One package run with champion=auto, and the registry right after it."""

    line: str  # the gate's verdict line
    run: object  # the package run
    version: str  # the version it registered
    champion: str  # the version @champion names after it
    stdout: str
    stderr: str
    tags: dict[str, dict]  # every version's tags after it


def package_auto(store, train_run: str) -> Step:
    called = store.call(
        "package_model.py",
        *("--train_run", train_run, "--champion", "auto"),
        *("--output_dir", str(store.root / "model")),
    )
    assert called.returncode == 0, called.stderr
    [line] = [line for line in called.stdout.splitlines() if line.startswith("gate: ")]
    run = store.last_run("package")
    client = store.client()
    [version] = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    return Step(
        line=line,
        run=run,
        version=version.version,
        champion=client.get_model_version_by_alias("mnist", "champion").version,
        stdout=called.stdout,
        stderr=called.stderr,
        tags={each.version: each.tags for each in client.search_model_versions("name = 'mnist'")},
    )


@pytest.fixture(scope="module")
def gated(tmp_path_factory, tiny_data) -> dict:
    """The store after the weak, the best (the good) and the weak again went through the gate."""
    store = make_store(tmp_path_factory.mktemp("promotion") / "store")
    outdir = store.root / "data" / "mnist"
    source = ("--source", str(tiny_data), "--allow_unverified", "true")
    assert store.call("download.py", *source, "--outdir", str(outdir)).returncode == 0
    data_run = store.last_run("get_data").info.run_id
    assert store.call("preprocess.py", "--data_run", data_run).returncode == 0
    preprocess_run = store.last_run("preprocess").info.run_id
    # The drawing page's feedback, 20 drawings to evaluate on: one more set for the gate.
    kept_drawings(store, "feedback", digit_pngs(20, seed=0, for_training=False))
    train_runs = {}
    for kind, training in (("weak", WEAK_TRAINING), ("good", TINY_TRAINING)):
        arguments = [f"--{name}={value}" for name, value in training.items()]
        called = store.call("train.py", "--preprocess_run", preprocess_run, *arguments)
        assert called.returncode == 0, called.stderr
        train_runs[kind] = store.last_run("train").info.run_id
    order = (("first", "weak"), ("better", "best"), ("worse", "weak"))
    # The gate compares the versions on every set; a sample of the drawn and the font
    # digits is enough for that (five evaluations, some 30 CPU-seconds less).
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DRAWN_DIGITS", "FONT_DIGITS"):
            folder = getattr(package_model, name)
            patch.setattr(package_model, name, a_sample_of(folder, store.root / folder.name))
        steps = {step: package_auto(store, train_runs.get(kind, kind)) for step, kind in order}
    return {"store": store, "train_runs": train_runs, **steps}


def test_the_first_version_becomes_champion(gated):
    first = gated["first"]
    assert first.line == f"gate: version {first.version} becomes champion: no champion before"
    assert first.champion == first.version
    assert first.run.data.tags["gate_verdict"] == "champion"
    assert first.run.data.tags["gate_reason"] == "no champion before"
    tags = first.tags[first.version]
    for figure in FIGURES:
        assert tags[f"gate_{figure}"] == first.run.data.tags[figure], figure
    assert tags["champion_reason"] == "no champion before"


def test_a_better_version_becomes_champion(gated):
    better, before = gated["better"], gated["first"].version
    assert better.champion == better.version
    assert better.line.startswith(
        f"gate: version {better.version} becomes champion: served_accuracy "
    )
    metrics = better.run.data.metrics
    for figure in FIGURES:
        assert f"{figure} {metrics[figure]:.4f} >= " in better.line, figure
    assert f"(champion v{before} " in better.line
    # The champion's figures were measured again, in a run nested under the package run.
    [nested] = gated["store"].children_of(better.run.info.run_id)
    assert nested.info.run_name == f"champion v{before} on the sets of v{better.version}"
    tags_before = better.tags[before]
    for figure in FIGURES:
        assert tags_before[f"gate_{figure}"] == f"{nested.data.metrics[figure]:.4f}", figure
        assert better.run.data.tags[f"gate_{figure}"] == (
            f"v{better.version} {metrics[figure]:.4f}, "
            f"champion v{before} {nested.data.metrics[figure]:.4f}"
        )
    assert tags_before["gate_verdict"] == f"replaced by version {better.version}"
    assert better.tags[better.version]["champion_reason"] == better.run.data.tags["gate_reason"]


def test_a_worse_version_stays_behind_and_says_why(gated):
    worse, champion = gated["worse"], gated["better"].version
    assert worse.champion == champion
    assert worse.line.startswith(
        f"gate: version {worse.version} stays behind champion v{champion}: "
    )
    assert " < " in worse.line and " >= " not in worse.line
    # ./model holds the version kept behind: the summary says where the champion is.
    assert f"; models:/mnist@champion stays on version {champion}\n" in worse.stdout
    reason = worse.run.data.tags["gate_reason"]
    assert worse.run.data.tags["gate_verdict"] == f"behind champion v{champion}"
    assert worse.line.endswith(reason)
    tags, champion_tags = worse.tags[worse.version], worse.tags[champion]
    assert tags["gate_reason"] == champion_tags["gate_reason"] == reason
    assert champion_tags["gate_verdict"] == f"kept against version {worse.version}"
    for figure in FIGURES:
        assert tags[f"gate_{figure}"] == worse.run.data.tags[figure], figure
        assert f"gate_{figure}" in champion_tags
    assert "champion_reason" not in tags


def test_best_with_champion_auto_chooses_by_test_accuracy_then_goes_through_the_gate(gated):
    best, before = gated["better"], gated["first"].version
    assert best.run.data.tags["train_run"] == gated["train_runs"]["good"]
    assert "Best train run: " in best.stderr
    assert best.line.startswith(f"gate: version {best.version} becomes champion: ")
    assert f"(champion v{before} " in best.line
    assert best.champion == best.version


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
    # 477 of 480 font digits against 478 of 480 less the margin: both 0.9938 to 4 decimals.
    fonts = {"fonts_accuracy": 478 / 480}
    barely = promotion.judge("3", {"fonts_accuracy": 477 / 480}, "2", fonts)
    assert not barely.promoted
    assert barely.reason == "fonts_accuracy 0.99375 < 0.99383 (champion v2 0.99583 - 0.002)"


def test_a_champion_moved_while_the_gate_evaluates_is_judged_again(store, monkeypatch):
    """Two packages with champion=auto at once: the second to finish judges its version
    against the champion that the first made, not the one it read when it began."""
    import mlflow

    client = store.client()
    client.create_registered_model("mnist")
    for _ in range(3):
        client.create_model_version("mnist", source=str(store.root))
    client.set_registered_model_alias("mnist", "champion", "1")
    accuracy = {"models:/mnist/1": 0.90, "models:/mnist/2": 0.99}
    evaluated = []

    def evaluate_in_own_process(model_uri: str, run_name: str, request_sets) -> dict:
        evaluated.append(model_uri)
        if len(evaluated) == 1:  # meanwhile, another package makes version 2 champion
            client.set_registered_model_alias("mnist", "champion", "2")
        return {"served_accuracy": accuracy[model_uri]}

    monkeypatch.setattr(promotion, "evaluate_in_own_process", evaluate_in_own_process)
    with mlflow.start_run():
        verdict = promotion.gate("mnist", "3", {"served_accuracy": 0.95}, [])
    assert evaluated == ["models:/mnist/1", "models:/mnist/2"]
    assert (str(verdict.champion), verdict.promoted) == ("2", False)
    assert str(client.get_model_version_by_alias("mnist", "champion").version) == "2"


def test_champion_maybe_or_a_negative_margin_is_a_one_line_error(store):
    called = store.call("package_model.py", "--champion", "maybe")
    assert called.returncode == 2
    assert called.stderr == (
        "package_model.py: error: argument --champion: expected true, false or auto, got 'maybe'\n"
    )
    called = store.call("package_model.py", "--champion", "auto", "--margin", "-0.01")
    assert called.returncode == 2
    assert called.stderr == (
        "package_model.py: error: argument --margin: expected 0 or more, got -0.01\n"
    )
    assert store.runs("package") == []


def test_stopped_while_the_champion_is_evaluated_ends_both_runs_killed(gated):
    """SIGTERM to package alone, while its child evaluates the champion: both stop at once."""
    store = gated["store"]
    shutil.copytree(store.root / "model", store.root / "stopped-model")  # an older model
    before = (store.root / "stopped-model" / "MLmodel").read_bytes()
    command = [
        *(sys.executable, str(REPO / "package_model.py"), "--champion", "auto"),
        *("--train_run", gated["train_runs"]["weak"], "--output_dir", "stopped-model"),
    ]
    process = started_reading_stderr(command, store.root, store.env)
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
    # Stopped before the verdict: no version of it is left ungated, ./model as it was.
    client = store.client()
    assert client.search_model_versions(f"run_id = '{package_run.info.run_id}'") == []
    assert (store.root / "stopped-model" / "MLmodel").read_bytes() == before
