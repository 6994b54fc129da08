"""Runs read well in `mlflow ui`: named by what they are, described, linked to their inputs."""

from __future__ import annotations

import argparse
import re

import mlflow
import pytest
from conftest import REPO, signal_handlers_kept

from mnist_pipeline import cli

NOTE = "mlflow.note.content"


def link(run) -> str:
    """The Markdown link to `run` that a description holds: its name, and its page."""
    return f"[{run.info.run_name}](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})"


def test_the_pipelines_runs_have_names_and_descriptions_that_link_their_inputs(pipeline):
    store = pipeline["store"]
    client = store.client()
    get_data = client.get_run(pipeline["data_run"])
    preprocess = client.get_run(pipeline["preprocess_run"])
    train = client.get_run(pipeline["train_run"])
    # The pipeline's own runs, in the Default experiment: other tests add theirs to the
    # shared store in experiments of their own, a package run stopped half-way among them.
    explore = store.last_run("explore_data", experiment="Default")
    package = next(
        run
        for run in store.runs("package", experiment="Default")
        if run.data.tags.get("train_run") == train.info.run_id
    )

    assert get_data.info.run_name == "get_data mnist"
    assert explore.info.run_name == "explore_data mnist"
    assert preprocess.info.run_name == "preprocess mnist"
    assert train.info.run_name == "train nr_conv_1=8 lr=0.004 epochs=8 classic"
    assert re.fullmatch(r"package mnist v\d+", package.info.run_name)

    described = {
        run.info.run_name: run.data.tags.get(NOTE, "")
        for run in (get_data, explore, preprocess, train, package)
    }
    assert described["get_data mnist"].startswith("Fetched the four IDX files of **mnist**")
    assert "600 training and 200 test images" in described["get_data mnist"]
    assert link(get_data) in described["explore_data mnist"]
    assert link(get_data) in described["preprocess mnist"]
    assert link(explore) in described["preprocess mnist"]
    train_text = described[train.info.run_name]
    assert link(preprocess) in train_text
    assert f"Test accuracy **{train.data.metrics['accuracy']:.4f}**" in train_text
    package_text = described[package.info.run_name]
    assert link(train) in package_text and link(preprocess) in package_text
    version = package.info.run_name.rsplit("v", 1)[1]
    assert f"registered as **mnist** version {version}" in package_text
    served = package.data.metrics["served_accuracy"]
    assert f"Served, it answered right **{served:.4f}** on the test images" in package_text

    experiment = client.get_experiment(train.info.experiment_id)
    assert "**Model training**" in experiment.tags[NOTE]


def test_a_train_run_names_its_architecture_and_augmentation():
    from types import SimpleNamespace

    from mnist_pipeline.tracking.naming import name_and_text

    params = {"nr_conv_1": "16", "lr": "0.006", "epochs": "5", "architecture": "deeper"}
    params["augment_rotation_degrees"] = "10.0"
    run = SimpleNamespace(
        data=SimpleNamespace(tags={"stage": "train"}, metrics={}, params=params),
        info=SimpleNamespace(run_id="0" * 32),
    )
    name, text = name_and_text(run, client=None)
    assert name == "train nr_conv_1=16 lr=0.006 epochs=5 deeper augmented"
    assert "architecture=deeper, on randomly distorted digits" in text
    run.data.params = {**params, "architecture": "classic", "augment_rotation_degrees": "0.0"}
    assert name_and_text(run, client=None)[0] == "train nr_conv_1=16 lr=0.006 epochs=5 classic"
    # A run from before the architecture was a param trained the classic CNN.
    run.data.params = {"nr_conv_1": "16", "lr": "0.006", "epochs": "5"}
    assert name_and_text(run, client=None)[0] == "train nr_conv_1=16 lr=0.006 epochs=5 classic"
    # A value left to the dataset's default is not shown empty; a pruned trial says so.
    run.data.params |= {"label_smoothing": ""}
    run.data.tags |= {"pruned": "true", "pruned_at_epoch": "2"}
    name, text = name_and_text(run, client=None)
    assert "label_smoothing" not in text
    assert "Pruned after epoch 2:" in text
    # Left empty under `mlflow run` (logged as ''), epochs is named by what train used.
    run.data.params = {**params, "epochs": "''", "epochs_used": "5"}
    assert (
        name_and_text(run, client=None)[0]
        == "train nr_conv_1=16 lr=0.006 epochs=5 deeper augmented"
    )


def test_a_package_or_main_run_stopped_early_is_named_from_the_dataset_asked_for(store):
    """Before package has found its train run's dataset (a tag), the param names it; and a
    run named by its stage alone is still renamed once it knows more."""
    from mnist_pipeline.tracking import naming

    client = store.client()
    for stage in ("package", "main"):
        run_id = client.create_run("0", tags={"stage": stage}).info.run_id
        naming.describe(run_id, client)
        assert client.get_run(run_id).info.run_name == stage
        client.log_param(run_id, "dataset", "fashion")
        naming.describe(run_id, client)
        assert client.get_run(run_id).info.run_name == f"{stage} fashion"


def test_a_stage_that_fails_is_named_from_what_it_found_before(store):
    """package, asked for no dataset (the param says mnist), found a fashion train run and
    then failed: its run is named from the train run's dataset, as a finished one is."""
    client = store.client()
    args = argparse.Namespace(dataset="mnist")
    # stage_run installs the stages' signal handlers: this process gets its own back after.
    with (
        signal_handlers_kept(),
        pytest.raises(RuntimeError),
        cli.stage_run(
            "package", argparse.ArgumentParser(), args, str(REPO / "package_model.py")
        ) as run,
    ):
        mlflow.set_tag("dataset", "fashion")
        raise RuntimeError("the evaluation failed")
    ended = client.get_run(run.info.run_id)
    assert (ended.info.status, ended.info.run_name) == ("FAILED", "package fashion")
