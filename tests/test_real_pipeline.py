"""main, the whole pipeline: nested stage runs, reuse of what is done, and a model that learns.

On the local mirror of MNIST (../shared/data/mnist from the repository), where it is
present: 70,000 real images, and the model must learn them. Elsewhere on the tiny
generated digits, with the same checks except those on the real data.
"""

from __future__ import annotations

import shutil
import time

import pytest
from conftest import MIRROR, TINY_TRAINING

STAGES = ["get_data", "explore_data", "preprocess", "train", "package"]
ON_THE_MIRROR = (MIRROR / "mnist").is_dir()


def children_of(store, parent_run_id: str) -> dict[str, object]:
    """The stage runs nested under a main run, by stage."""
    return {run.data.tags["stage"]: run for run in store.children_of(parent_run_id)}


@pytest.mark.slow
def test_main_nests_the_stages_reuses_them_and_learns(store, tiny_data, capsys):
    params = {"data_dir": store.root / "data", "output_dir": store.root / "model"}
    if ON_THE_MIRROR:
        # One epoch, and a tenth of the synthetic digits (540: making the default 5,400
        # takes 25 CPU-s, and tests/test_font_digits.py checks what they are).
        params.update(source=MIRROR / "mnist", epochs="1", synthetic="0.01")
        lr = "0.006"  # the default
    else:
        params.update(source=tiny_data, allow_unverified="true", **TINY_TRAINING)
        lr = TINY_TRAINING["lr"]
    first = store.mlflow_run("main", **params)
    parent = store.last_run("main")
    children = children_of(store, parent.info.run_id)
    assert sorted(children) == sorted(STAGES)
    assert all(run.info.status == "FINISHED" for run in children.values())
    # Each stage was handed its upstream run.
    assert children["preprocess"].data.params["data_run"] == children["get_data"].info.run_id
    assert children["train"].data.params["preprocess_run"] == children["preprocess"].info.run_id
    assert children["package"].data.params["train_run"] == children["train"].info.run_id
    assert parent.data.tags["reused_stages"] == "none"
    assert parent.data.metrics["accuracy"] == children["train"].data.metrics["accuracy"]
    assert (store.root / "model" / "MLmodel").exists()
    assert "mlflow ui" in first.stdout and "mlflow models serve" in first.stdout
    if ON_THE_MIRROR:
        assert children["get_data"].data.tags["verified"] == "true"
        assert children["get_data"].data.metrics["train_count"] == 60000
        assert children["train"].data.metrics["accuracy"] >= 0.98

    # The same again, with the learning rate written another way: nothing runs again.
    stage_runs_before = len(store.runs()) - 1
    started = time.monotonic()
    second = store.mlflow_run("main", **{**params, "lr": f"{float(lr):.0e}"})  # "6e-03"
    rerun_seconds = time.monotonic() - started
    rerun = store.last_run("main")
    assert rerun.data.tags["reused_stages"] == ",".join(STAGES)
    assert children_of(store, rerun.info.run_id) == {}
    assert len(store.runs()) - 1 == stage_runs_before + 1  # only the new parent
    for stage in STAGES:
        assert rerun.data.tags[f"{stage}_run"] == children[stage].info.run_id
        assert f"{stage:<13} reused" in second.stdout
    assert rerun_seconds < 60

    # Changed hyperparameters: main's own look-up, asked in this process about the runs
    # above, finds no train run to reuse (so train runs again, and package after it with
    # a new train_run), while every stage upstream is still found. The reruns after a
    # stop (tests/test_stopping.py) run train and package again end to end.
    from main import Pipeline
    from package_model import saved_model_matches

    store.client()  # this process's MLflow reads the store
    pipeline = Pipeline(parent.info.experiment_id)
    for stage in STAGES:
        found = pipeline.reusable(stage, **children[stage].data.params)
        assert found is not None and found.info.run_id == children[stage].info.run_id, stage
    trained = children["train"].data.params
    other = "deeper" if trained["architecture"] == "classic" else "classic"
    for name, value in {"nr_conv_1": "4", "architecture": other, "lr": "0.003"}.items():
        assert pipeline.reusable("train", **{**trained, name: value}) is None, name
    packaged = children["package"].data.params
    assert pipeline.reusable("package", **{**packaged, "train_run": "0" * 32}) is None
    # A package run whose model left output_dir (a team member's machine never had it) is
    # reused all the same: main downloads its model back, and registers no other version.
    capsys.readouterr()
    package_run = children["package"]
    shutil.rmtree(store.root / "model")
    versions = len(store.client().search_model_versions("name = 'mnist'"))
    assert pipeline.stage("package", **packaged) == package_run.info.run_id
    assert (
        f"did not hold run {package_run.info.run_id}'s model: downloaded" in capsys.readouterr().err
    )
    assert saved_model_matches(store.root / "model", package_run)
    assert len(store.client().search_model_versions("name = 'mnist'")) == versions
