"""package's evaluation of the served model: metrics, artifacts and tags, and what they measure.

The session pipeline's package run (a real `mlflow run . -e package`) is read for what it
logged; the figures are checked against the logged model asked directly, here, on the same
requests. The drawn-digits set is a small folder written by the test.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import signal
import sys
import warnings

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, render_digit, stop

from mnist_pipeline.data.transform import TRANSFORM_FILE, TransformSpec, load_arrays
from mnist_pipeline.serving import evaluation
from mnist_pipeline.serving.drawn_digits import DRAWN_DIGITS, read_drawn_set
from mnist_pipeline.serving.font_digits import FONT_DIGITS
from mnist_pipeline.serving.request_formats import IMAGE_COLUMN
from tests.helpers import another_run_logs_each_dataset_first, started_reading_stderr

FIGURES = ("served_accuracy", "served_png_accuracy", "drawn_accuracy", "fonts_accuracy")


@pytest.fixture(scope="module")
def served(pipeline) -> dict:
    """The pipeline's package run, its logged model loaded here, and the test set as pixels."""
    import mlflow

    from mnist_pipeline.tracking import runs

    store = pipeline["store"]
    client = store.client()
    [package_run] = store.runs(
        "package", experiment="Default", query=f"tags.train_run = '{pipeline['train_run']}'"
    )
    model_uri = runs.logged_model_uri(package_run)
    preprocess_dir = runs.artifact_dir(pipeline["preprocess_run"])
    spec = TransformSpec.load(preprocess_dir / TRANSFORM_FILE)
    x_test, y_test = load_arrays(preprocess_dir, "test")
    return {
        "store": store,
        "client": client,
        "run": package_run,
        "model_uri": model_uri,
        "model_dir": pipeline["model_dir"],
        "model": mlflow.pyfunc.load_model(model_uri),
        "spec": spec,
        "pixels": evaluation.pixels_from_arrays(x_test, spec),
        "labels": y_test,
    }


def an_older_model_at(output_dir, served) -> bytes:
    """Put a saved model at `output_dir`, as an earlier package left it; return its MLmodel."""
    shutil.copytree(served["model_dir"], output_dir)
    return (output_dir / "MLmodel").read_bytes()


def assert_kept(output_dir, before: bytes) -> None:
    assert (output_dir / "MLmodel").read_bytes() == before
    assert not list(output_dir.parent.glob(f".{output_dir.name}.*")), "a staged copy was left"


def accuracy_asked_directly(model, request_set: evaluation.RequestSet) -> float:
    step = request_set.rows_per_request
    requests = request_set.requests
    answers = pd.concat(
        [
            model.predict(requests.iloc[start : start + step])
            for start in range(0, len(requests), step)
        ]
    )
    return float(np.mean(answers["class_name"].to_numpy() == request_set.targets))


def write_drawn_folder(folder, count: int = 12) -> list[int]:
    """A small drawn set: digits as PNG files, and one as a JPEG photo, with labels.csv."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    rows = ["file,label,kind"]
    labels = []
    for number in range(count):
        digit = number % 10
        # Dark ink on white paper, as people draw; the served model inverts it.
        picture = 255 - render_digit(digit, rng, canvas=96)
        kind, extension = ("photo", ".jpg") if number == 0 else ("pencil", ".png")
        name = f"{digit}-{number:03d}-{kind}{extension}"
        cv2.imwrite(str(folder / name), picture)
        rows.append(f"{name},{digit},{kind}")
        labels.append(digit)
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return labels


def test_package_logs_the_served_figures_and_tags_run_and_version(served):
    run = served["run"]
    metrics, tags = run.data.metrics, run.data.tags
    for figure in FIGURES:
        assert 0 <= metrics[figure] <= 1, figure
        # The evaluator's own name for the same figure, beside the short one.
        assert metrics[figure] == metrics[f"{figure}_score"], figure
        assert tags[figure] == f"{metrics[figure]:.4f}", figure
    test_images = len(served["labels"])
    assert metrics["served_example_count"] == test_images
    assert metrics["served_png_example_count"] == min(evaluation.PNG_SAMPLE, test_images)
    assert metrics["drawn_example_count"] == len(read_drawn_set())

    [version] = served["client"].search_model_versions(f"run_id = '{run.info.run_id}'")
    for figure in FIGURES:
        assert version.tags[figure] == tags[figure], figure
    assert version.tags["accuracy"] == f"{metrics['accuracy']:.4f}"

    artifacts = {item.path for item in served["client"].list_artifacts(run.info.run_id)}
    for prefix in ("served", "served_png", "drawn"):
        assert f"{prefix}_confusion_matrix.png" in artifacts
        assert f"{prefix}_per_class_metrics.csv" in artifacts
    assert "drawn_accuracy_per_kind.csv" in artifacts
    inputs = {each.dataset.name for each in run.inputs.dataset_inputs}
    assert {"mnist test frames", "mnist test PNG files (seed 0)"} <= inputs


def test_served_figures_are_what_the_model_answers_to_the_same_requests(served):
    model, spec, metrics = served["model"], served["spec"], served["run"].data.metrics
    frames = evaluation.test_frames(served["pixels"], served["labels"], spec)
    assert list(frames.targets) == [str(label) for label in served["labels"]]
    # Figures of the served path, and independently, Keras's test accuracy in train.py on
    # the same test set: the same model gives the same answers either way.
    assert metrics["served_accuracy"] == pytest.approx(metrics["accuracy"], abs=0.01)
    assert list(frames.requests.columns) == [str(column) for column in range(784)]
    assert frames.requests.to_numpy().max() > 1  # 0-255 pixels, as clients send them
    assert accuracy_asked_directly(model, frames) == pytest.approx(metrics["served_accuracy"])

    png = evaluation.test_png_files(served["pixels"], served["labels"], spec)
    first = base64.b64decode(png.requests[IMAGE_COLUMN][0])
    assert first.startswith(b"\x89PNG")
    assert accuracy_asked_directly(model, png) == pytest.approx(metrics["served_png_accuracy"])

    drawn = evaluation.picture_files(DRAWN_DIGITS, spec, "drawn", "drawn digits")
    assert len(drawn.requests) == len(read_drawn_set(DRAWN_DIGITS))
    assert accuracy_asked_directly(model, drawn) == pytest.approx(metrics["drawn_accuracy"])
    fonts = evaluation.picture_files(FONT_DIGITS, spec, "fonts", "font digits")
    assert len(fonts.requests) == len(read_drawn_set(FONT_DIGITS))
    assert accuracy_asked_directly(model, fonts) == pytest.approx(metrics["fonts_accuracy"])


def test_pixels_from_arrays_gives_back_the_idx_pixels(served):
    from mnist_pipeline.data.transform import normalize

    pixels = served["pixels"]
    assert pixels.dtype == np.uint8 and pixels.shape[1:] == (28, 28)
    again = evaluation.pixels_from_arrays(normalize(pixels, served["spec"]), served["spec"])
    assert np.array_equal(again, pixels)


def test_png_sample_is_seeded_and_at_most_the_test_set(served):
    spec, pixels, labels = served["spec"], served["pixels"], served["labels"]
    first = evaluation.test_png_files(pixels, labels, spec, count=50, seed=1)
    again = evaluation.test_png_files(pixels, labels, spec, count=50, seed=1)
    other = evaluation.test_png_files(pixels, labels, spec, count=50, seed=2)
    assert first.requests.equals(again.requests)
    assert not first.requests.equals(other.requests)
    assert len(evaluation.test_png_files(pixels, labels, spec, count=10**6).requests) == len(labels)


def test_evaluate_served_with_a_drawn_folder_of_its_own(served, tmp_path, capsys):
    """From Python, as package calls it: a drawn folder of a dozen pictures, then none."""
    import mlflow

    from package_model import evaluate_served

    store, client = served["store"], served["client"]
    experiment = client.create_experiment(
        "served-evaluation",
        artifact_location=(store.root / "mlruns" / "served-evaluation").as_uri(),
    )
    drawn = tmp_path / "drawn"
    labels = write_drawn_folder(drawn)
    model_uri, spec = served["model_uri"], served["spec"]

    def sets(spec, drawn_dir, font_dir=FONT_DIGITS):
        pixels, labels = served["pixels"], served["labels"]
        return evaluation.served_request_sets(pixels, labels, spec, drawn_dir, font_dir)

    with mlflow.start_run(experiment_id=experiment) as run:
        figures = evaluate_served(model_uri, None, sets(spec, drawn))
    assert set(figures) == set(FIGURES)  # font_digits/ too, as package sends it
    request_set = evaluation.picture_files(drawn, spec, "drawn", "drawn digits")
    assert list(request_set.targets) == [str(label) for label in labels]
    assert figures["drawn_accuracy"] == pytest.approx(
        accuracy_asked_directly(served["model"], request_set)
    )
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.metrics["drawn_example_count"] == len(labels)
    assert logged.data.tags["drawn_accuracy"] == f"{figures['drawn_accuracy']:.4f}"
    per_kind = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="drawn_accuracy_per_kind.csv"
        )
    )
    assert dict(zip(per_kind["kind"], per_kind["images"], strict=True)) == {
        "photo": 1,
        "pencil": len(labels) - 1,
    }
    progress = capsys.readouterr().err
    assert f"Drawn accuracy {figures['drawn_accuracy']:.4f} on {len(labels)} drawn digits in " in (
        progress
    )
    assert f"on {len(served['labels']):,} test frames in " in progress

    # No folder: no drawn_accuracy, and one line that says so.
    with mlflow.start_run(experiment_id=experiment):
        figures = evaluate_served(
            model_uri, None, sets(spec, tmp_path / "none", tmp_path / "nothing")
        )
    assert set(figures) == {"served_accuracy", "served_png_accuracy"}
    progress = capsys.readouterr().err
    assert f"No pictures at {tmp_path / 'none'}: no drawn_accuracy" in progress
    assert f"No pictures at {tmp_path / 'nothing'}: no fonts_accuracy" in progress

    # Not digits: the drawn digits say nothing about it, so they are not sent.
    fashion_like = dataclasses.replace(spec, dataset="fashion")
    with mlflow.start_run(experiment_id=experiment):
        figures = evaluate_served(model_uri, None, sets(fashion_like, drawn))
    assert set(figures) == {"served_accuracy", "served_png_accuracy"}
    assert "drawn" not in capsys.readouterr().err


def test_a_small_set_that_lacks_some_classes_is_evaluated_without_warnings(served, tmp_path):
    """The feedback's evaluation part may lack some digits, which then have no precision or
    recall: the report gives them 0, and scikit-learn's warnings about it are held back."""
    import mlflow
    from sklearn.exceptions import UndefinedMetricWarning

    drawn = tmp_path / "drawn"
    write_drawn_folder(drawn, count=3)  # a 0, a 1 and a 2
    request_set = evaluation.picture_files(drawn, served["spec"], "drawn", "drawn digits")
    experiment = served["client"].create_experiment(
        "three-digits",
        artifact_location=(served["store"].root / "mlruns" / "three-digits").as_uri(),
    )
    with warnings.catch_warnings(record=True) as caught, mlflow.start_run(experiment_id=experiment):
        warnings.simplefilter("always")
        result = evaluation.evaluate(served["model"], request_set)
    assert 0 <= result.accuracy <= 1
    assert not [w for w in caught if issubclass(w.category, UndefinedMetricWarning)]


def test_a_set_that_another_package_logs_at_the_same_moment_is_evaluated(store, tmp_path):
    """Two people who package at the same moment on a team's server evaluate on the same
    drawn set; the store refused the second insert of the set (UNIQUE constraint failed),
    and that package failed."""
    import mlflow

    client = store.client()
    write_drawn_folder(drawn := tmp_path / "drawn", count=3)
    spec = TransformSpec("mnist", mean=33.0, std=78.0, class_names=tuple("0123456789"))
    request_set = evaluation.picture_files(drawn, spec, "drawn", "drawn digits")

    class AnswersZero:  # the model does not matter here: what is logged about its set does
        def predict(self, requests: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"class_name": ["0"] * len(requests)})

    with another_run_logs_each_dataset_first(store) as by_the_other, mlflow.start_run() as run:
        result = evaluation.evaluate(AnswersZero(), request_set)
    assert len(by_the_other) == 1
    assert result.accuracy == pytest.approx(1 / 3)  # the 0 of the 0, 1 and 2
    (logged,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.digest == by_the_other[0]
    assert logged.dataset.name == request_set.dataset_name
    assert {tag.key: tag.value for tag in logged.tags} == {"mlflow.data.context": "drawn_"}


def test_package_stopped_during_the_evaluation_ends_killed_and_keeps_the_old_model(served):
    """SIGTERM while the drawn digits and the frames are still to come: no model is saved."""
    store, client = served["store"], served["client"]
    experiment = client.create_experiment(
        "served-evaluation-stopped",
        artifact_location=(store.root / "mlruns" / "served-evaluation-stopped").as_uri(),
    )
    output_dir = store.root / "stopped-model"
    before = an_older_model_at(output_dir, served)
    env = {**store.env, "MLFLOW_EXPERIMENT_ID": experiment}
    command = [
        sys.executable,
        str(REPO / "package_model.py"),
        *("--train_run", served["run"].data.tags["train_run"]),
        *("--output_dir", str(output_dir), "--register", "false"),
    ]
    process = started_reading_stderr(command, store.root, env)
    try:
        for line in process.stderr:
            if line.startswith("Served accuracy on PNG files"):
                os.killpg(process.pid, signal.SIGTERM)
                break
        rest = process.stderr.read()
        process.wait(timeout=300)
    finally:
        stop(process)
    assert process.returncode != 0
    assert "package_model.py: stopped by SIGTERM" in rest
    assert "Traceback" not in rest
    [run] = store.runs("package", experiment="served-evaluation-stopped")
    assert run.info.status == "KILLED"
    assert "served_png_accuracy_score" in run.data.metrics
    assert "served_accuracy" not in run.data.metrics
    assert_kept(output_dir, before)


def test_a_model_that_fails_its_evaluation_is_not_registered(served, monkeypatch):
    """The version is registered only after the evaluation: a failed one leaves none."""
    import package_model
    from mnist_pipeline.errors import UserError

    def fails(*args, **kwargs):
        raise UserError("the evaluation failed")

    monkeypatch.setattr(package_model, "evaluate_served", fails)
    store = served["store"]
    output_dir = store.root / "unevaluated-model"
    before = an_older_model_at(output_dir, served)
    called = store.call(
        "package_model.py",
        *("--train_run", served["run"].data.tags["train_run"], "--output_dir", output_dir),
        experiment="evaluation-failed",
    )
    assert called.returncode == 1 and "the evaluation failed" in called.stderr
    [run] = store.runs("package", experiment="evaluation-failed")
    assert run.info.status == "FAILED"
    assert served["client"].search_model_versions(f"run_id = '{run.info.run_id}'") == []
    assert_kept(output_dir, before)
