"""Each entry point through `mlflow run . -e ... --env-manager local`, on the tiny dataset.

Refusals that happen inside the stage's script are checked by calling the script's main in
the test's process (Store.call), which saves starting MLflow's CLI and a new Python; one
test shows what `mlflow run` makes of such a refusal.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAINING


def test_get_data_logs_files_checksums_and_datasets(store, tiny_data):
    outdir = store.root / "data" / "tiny"
    # In this process: what get_data logs is the script's (the guide's blocks run the
    # entry point with `mlflow run`).
    called = store.call(
        "download.py", "--source", tiny_data, "--allow_unverified", "true", "--outdir", outdir
    )
    assert called.returncode == 0, called.stderr
    run = store.last_run("get_data")
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset"] == "mnist"
    assert run.data.tags["verified"] == "false"
    assert len(run.data.tags["sha256.train-images-idx3-ubyte"]) == 64
    assert run.data.metrics["train_count"] == 600
    assert run.data.metrics["test_count"] == 200
    client = store.client()
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "data")}
    assert logged == {
        f"data/{name}"
        for name in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    }
    assert sorted(path.name for path in outdir.iterdir()) == sorted(p.split("/")[1] for p in logged)
    contexts = {dataset_input.tags[0].value for dataset_input in run.inputs.dataset_inputs}
    assert contexts == {"train", "test"}


def test_get_data_refuses_unofficial_mirror_and_fails_the_run(store, tiny_data):
    result = store.call(
        "download.py", "--source", tiny_data, "--outdir", store.root / "data" / "refused"
    )
    assert result.returncode != 0
    assert "allow_unverified=true" in result.stderr
    assert "Traceback" not in result.stderr
    assert store.last_run("get_data").info.status == "FAILED"
    # Nothing half-written: the refused files never reached the output folder, which is gone.
    assert not (store.root / "data" / "refused").exists()


def test_get_data_unknown_dataset_lists_choices(store):
    result = store.call("download.py", "--dataset", "cifar")
    assert result.returncode != 0
    assert "unknown dataset 'cifar'; choose one of: fashion, mnist" in result.stderr
    assert "Traceback" not in result.stderr


def test_explore_logs_mean_std_counts_and_pictures(pipeline):
    store = pipeline["store"]
    run = store.last_run("explore_data")
    assert run.data.tags["data_run"] == pipeline["data_run"]
    from mnist_pipeline.data.catalogue import DATASETS
    from mnist_pipeline.data.idx import load_folder

    data = load_folder(store.root / "data" / "mnist", DATASETS["mnist"])
    assert run.data.metrics["mean"] == pytest.approx(data.x_train.mean(), rel=1e-6)
    assert run.data.metrics["std"] == pytest.approx(data.x_train.std(), rel=1e-6)
    assert run.data.metrics["train_count_3"] == 60
    artifacts = {item.path for item in store.client().list_artifacts(run.info.run_id)}
    assert {
        "examples_per_class.png",
        "class_histogram.png",
        "pixel_histogram.png",
        "class_counts.json",
    } <= artifacts


def test_preprocess_uses_explore_statistics_and_writes_the_transform(pipeline):
    store = pipeline["store"]
    run = store.client().get_run(pipeline["preprocess_run"])
    explore = store.last_run("explore_data")
    assert run.data.tags["explore_run"] == explore.info.run_id
    from mnist_pipeline.data.transform import TransformSpec
    from mnist_pipeline.tracking import runs

    store.client()
    folder = runs.artifact_dir(run.info.run_id)
    spec = TransformSpec.load(folder / "transform.json")
    assert spec.mean == pytest.approx(explore.data.metrics["mean"])
    assert spec.std == pytest.approx(explore.data.metrics["std"])
    assert spec.class_names == tuple("0123456789")
    with np.load(folder / "arrays" / "train.npz") as arrays:
        assert arrays["x"].shape == (600, 28, 28, 1) and arrays["x"].dtype == np.float32
        assert abs(float(arrays["x"].mean())) < 1e-3  # normalised by its own mean and std
        assert arrays["y"].shape == (600,)


def test_train_logs_curves_test_metrics_confusion_and_model(pipeline):
    store = pipeline["store"]
    run = store.client().get_run(pipeline["train_run"])
    assert run.info.status == "FINISHED"
    client = store.client()
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(run.info.run_id, name)
        assert len(history) == int(TINY_TRAINING["epochs"]), name
    assert run.data.metrics["accuracy"] > 0.8  # the glyphs are easy
    assert run.data.params["nr_conv_1"] == TINY_TRAINING["nr_conv_1"]
    assert run.data.tags["preprocess_run"] == pipeline["preprocess_run"]
    # What the training cost, beside its accuracy: MLflow's system metrics.
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert "confusion_matrix.png" in artifacts
    import mlflow

    # The final model, beside a checkpoint per epoch (tests/test_resume.py), with the test
    # figures linked to it.
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'",
        output_format="list",
    )
    assert len(models) == 1
    linked = {metric.key: metric.value for metric in models[0].metrics}
    assert linked["accuracy"] == run.data.metrics["accuracy"]
    info = mlflow.models.get_model_info(f"models:/{models[0].model_id}")
    assert info.signature is not None and info.saved_input_example_info is not None
    # The installed versions of what the Keras model imports, pinned (not inferred by
    # loading the model in another process).
    logged = mlflow.artifacts.download_artifacts(f"models:/{models[0].model_id}")
    pins = (Path(logged) / "requirements.txt").read_text().split()
    assert {pin.split("==")[0] for pin in pins} >= {"mlflow", "keras", "numpy"}
    assert any(pin.startswith(("tensorflow-cpu==", "tensorflow==")) for pin in pins)
    assert f"keras=={importlib.metadata.version('keras')}" in pins


def test_train_same_seed_same_result(pipeline):
    """In this process, as from a notebook: `train` is a function with named arguments."""
    import mlflow

    from train import train

    store = pipeline["store"]
    client = store.client()
    # Created here, the experiment would keep its artifacts in this process's ./mlruns.
    experiment = client.create_experiment(
        "same-seed", artifact_location=(store.root / "mlruns" / "same-seed").as_uri()
    )
    # The deeper CNN with augmentation: its random distortions follow the seed too.
    hyperparameters = {"batch_size": 32, "nr_conv_1": 8, "lr": 0.004, "epochs": 2, "seed": 7}
    hyperparameters.update(architecture="deeper", augment=True)
    results = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment) as run:
            train(preprocess_run=pipeline["preprocess_run"], **hyperparameters)
        results.append(mlflow.get_run(run.info.run_id).data.metrics)
    assert results[0]["accuracy"] == results[1]["accuracy"]
    assert results[0]["loss"] == results[1]["loss"]
    assert float(mlflow.get_run(run.info.run_id).data.params["augment_rotation_degrees"]) > 0


@pytest.mark.parametrize(
    ("arguments", "message", "statuses"),
    [
        (["--epochs", "many"], "argument --epochs: expected a whole number, got 'many'", []),
        (["--lr", "fast"], "argument --lr: expected a number, got 'fast'", []),
        (["--seed=-1"], "argument --seed: expected a number of at least 0, got -1", []),
        (
            ["--seed=4294967296"],
            "argument --seed: expected a number of at most 4,294,967,295, got 4,294,967,296",
            [],
        ),
        (["--lr", "inf"], "argument --lr: expected a finite number, got 'inf'", []),
        (["--preprocess_run", "0" * 32], f"run '{'0' * 32}' does not exist", ["FAILED"]),
    ],
)
def test_train_bad_input_is_one_line(pipeline, arguments, message, statuses):
    """train.py's main, in this process: a refused argument starts no run, a missing run fails it."""
    store = pipeline["store"]
    experiment = f"bad-train-{arguments[0].removeprefix('--')}"
    result = store.call("train.py", *arguments, experiment=experiment)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("train.py: error: ")
    assert message in last_line
    assert [run.info.status for run in store.runs(experiment=experiment)] == statuses


def test_bad_input_through_mlflow_run_is_one_line_and_a_failed_run(pipeline):
    """`mlflow run` shows the script's line and ends the run that it started FAILED."""
    store = pipeline["store"]
    result = store.mlflow_run("train", check=False, experiment="bad-train-mlflow-run", lr="fast")
    assert result.returncode != 0
    assert "train.py: error: argument --lr: expected a number, got 'fast'" in result.stderr
    assert "Traceback" not in result.stderr
    [failed] = store.runs(experiment="bad-train-mlflow-run")
    assert failed.info.status == "FAILED"


def test_a_run_of_the_wrong_stage_is_refused(pipeline):
    store = pipeline["store"]
    result = store.call(
        "train.py", "--preprocess_run", pipeline["data_run"], experiment="wrong-stage"
    )
    assert result.returncode != 0
    assert (
        f"run {pipeline['data_run']} is a get_data run, expected a preprocess run" in result.stderr
    )


def test_preprocess_refuses_non_positive_std(pipeline):
    store = pipeline["store"]
    result = store.call(
        "preprocess.py", "--data_run", pipeline["data_run"], "--std", "0", experiment="bad-std"
    )
    assert result.returncode != 0
    assert "std must be greater than 0, got 0.0" in result.stderr
    assert [run.info.status for run in store.runs(experiment="bad-std")] == ["FAILED"]


def test_checksums_are_recorded_as_artifact(pipeline, tiny_data):
    """The SHA-256 of each file's content, as it came (the tiny files are not official)."""
    import gzip
    import hashlib

    store = pipeline["store"]
    from mnist_pipeline.tracking import runs

    store.client()
    checksums = json.loads((runs.artifact_dir(pipeline["data_run"]) / "checksums.json").read_text())
    assert checksums["verified"] is False
    recorded = {entry["name"]: entry["sha256"] for entry in checksums["files"]}
    assert recorded == {
        path.name: hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        for path in tiny_data.glob("*.gz")
    }


def test_get_data_missing_file_is_one_line(store, tiny_data, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for path in tiny_data.glob("train-*"):
        (partial / path.name).write_bytes(path.read_bytes())
    arguments = ["--source", partial, "--allow_unverified", "true"]
    arguments += ["--outdir", store.root / "data" / "partial"]
    result = store.call("download.py", *arguments)
    assert result.returncode != 0
    assert "t10k-images-idx3-ubyte.gz: file missing from source folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert store.last_run("get_data").info.status == "FAILED"


def test_get_data_a_folder_named_like_a_file_is_one_line(store, tiny_data, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    for path in tiny_data.glob("*.gz"):
        (odd / path.name).write_bytes(path.read_bytes())
    (odd / "t10k-labels-idx1-ubyte.gz").unlink()
    (odd / "t10k-labels-idx1-ubyte.gz").mkdir()
    arguments = ["--source", odd, "--allow_unverified", "true", "--outdir", store.root / "odd"]
    result = store.call("download.py", *arguments)
    assert result.returncode != 0
    assert "t10k-labels-idx1-ubyte.gz: a folder, expected the file of that name" in result.stderr
    assert "Traceback" not in result.stderr
    assert store.last_run("get_data").info.status == "FAILED"


def test_get_data_corrupt_file_is_one_line(store, tiny_data, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for path in tiny_data.glob("*.gz"):
        (corrupt / path.name).write_bytes(path.read_bytes())
    (corrupt / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    arguments = ["--source", corrupt, "--allow_unverified", "true"]
    arguments += ["--outdir", store.root / "data" / "corrupt"]
    result = store.call("download.py", *arguments)
    assert result.returncode != 0
    assert "t10k-labels-idx1-ubyte.gz: corrupt gzip data" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_left_empty_takes_the_datasets_defaults_and_logs_them(pipeline):
    from mnist_pipeline.data.catalogue import DATASETS

    # Fashion-MNIST trains longer, with label smoothing; MNIST's labels are left sharp.
    assert DATASETS["fashion"].training_defaults == {"epochs": 7, "label_smoothing": 0.1}
    assert DATASETS["mnist"].training_defaults == {"epochs": 5, "label_smoothing": 0.0}
    store, experiment = pipeline["store"], "dataset-defaults"
    quick = ["--nr_conv_1", "4", "--architecture", "classic", "--augment", "false"]
    arguments = ["--preprocess_run", pipeline["preprocess_run"], *quick]
    result = store.call(
        "train.py", *arguments, "--epochs", "", "--label_smoothing", "", experiment=experiment
    )
    assert result.returncode == 0, result.stderr
    run = store.last_run("train", experiment)
    # As `mlflow run` logs an empty parameter, and the values the training used beside it.
    assert (run.data.params["epochs"], run.data.params["label_smoothing"]) == ("", "")
    assert run.data.params["epochs_used"] == "5"
    assert float(run.data.params["label_smoothing_used"]) == 0.0
    history = store.client().get_metric_history(run.info.run_id, "val_accuracy")
    assert len(history) == 5


def test_a_bad_label_smoothing_is_one_line(pipeline):
    result = pipeline["store"].call(
        "train.py", "--preprocess_run", pipeline["preprocess_run"], "--label_smoothing", "1.5"
    )
    assert result.returncode != 0
    assert "expected a number from 0 to below 1, got 1.5" in result.stderr
