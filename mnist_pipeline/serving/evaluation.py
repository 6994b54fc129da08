"""The served model's own accuracy: the logged pyfunc, its preprocessing included, on requests.

package_model.py loads the model it has just logged and sends it the test set the way
clients send it, in requests of the sizes the scoring server accepts:

- `served`: every test image as a frame of 784 pixel columns (0-255), one row per image;
- `served_png`: a seeded sample of test images as PNG files, base64 in the column `image`;
- `drawn`: the drawn-digits set (drawn_digits.py), its PNG and JPEG files as they are;
- `fonts`: the font-digits set (font_digits.py), typed in fonts that training never sees;
- `feedback`: the evaluation part of the drawing page's feedback (mnist_pipeline/feedback.py),
  when package found enough of it.

Each goes through `mlflow.models.evaluate` with the classifier evaluator, which logs to the
active run its metrics (`<prefix>_accuracy_score`, ...) and its confusion matrix
(`<prefix>_confusion_matrix.png`), linked to the logged model; the per-class report is
logged here as `<prefix>_per_class_metrics.csv`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mnist_pipeline.data.transform import TransformSpec
from mnist_pipeline.errors import UserError
from mnist_pipeline.serving.request_formats import (
    IMAGE_COLUMN,
    MAX_FILES_PER_REQUEST,
    PIXELS,
)

PNG_SAMPLE = 2_000
SEED = 0
# Frames per request: what a client batching the test set would send. The scoring server
# takes up to 10,000, but the CNN's activations for 10,000 images at once take over a gigabyte.
FRAMES_PER_REQUEST = 1_000
FRAME_COLUMNS = [str(column) for column in range(PIXELS)]
TARGET = "target"
# MLflow's INFO lines during an evaluation (the active model, the inferred classes) say
# nothing a participant needs; the progress line after each evaluation does.
QUIET_LOGGERS = ("mlflow.models.evaluation", "mlflow.tracking.fluent")
# MLflow's hint about integer columns in the schema it infers for each evaluation dataset:
# pixels are integers, and never missing.
QUIET_WARNINGS = (r"Hint: Inferred schema contains integer",)


@dataclass(frozen=True)
class RequestSet:
    """Requests as clients send them, one row per image, and the class each should get."""

    prefix: str  # metric and artifact names start with `<prefix>_`
    title: str  # "Served accuracy", as the progress line says it
    description: str  # "test frames": what the images are, in the progress line
    dataset_name: str  # the evaluation dataset's name in the run's inputs
    requests: pd.DataFrame
    targets: np.ndarray  # class names, str (n,)
    class_names: tuple[str, ...]  # every class the model knows
    rows_per_request: int
    kinds: np.ndarray | None = None  # the drawn set's kind of each picture


@dataclass(frozen=True)
class Evaluation:
    prefix: str
    title: str
    description: str
    images: int
    accuracy: float
    seconds: float
    per_kind: pd.DataFrame | None = None  # kind, images, accuracy (the drawn set only)

    @property
    def metric(self) -> str:
        """The name of the figure as a metric and as a version tag: served_accuracy, ..."""
        return f"{self.prefix}_accuracy"

    def summary(self) -> str:
        return (
            f"{self.title} {self.accuracy:.4f} on {self.images:,} {self.description} "
            f"in {self.seconds:.1f} s"
        )


def pixels_from_arrays(x: np.ndarray, spec: TransformSpec) -> np.ndarray:
    """Return uint8 (n, 28, 28), 0-255, from a preprocess run's normalised float32 (n, 28, 28, 1).

    Undoes transform.normalize; float32 keeps enough digits that rounding gives back the
    very pixels of the IDX file.
    """
    pixels = x.reshape(len(x), *spec.image_shape).astype(np.float64) * spec.std + spec.mean
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def test_frames(pixels: np.ndarray, labels: np.ndarray, spec: TransformSpec) -> RequestSet:
    """Every image as a row of 784 pixel columns named "0" to "783", as JSON clients send it."""
    # The scoring server parses JSON numbers into int64 columns; so are these.
    frame = pd.DataFrame(
        pixels.reshape(len(pixels), PIXELS).astype(np.int64), columns=FRAME_COLUMNS
    )
    return RequestSet(
        prefix="served",
        title="Served accuracy",
        description="test frames",
        dataset_name=f"{spec.dataset} test frames",
        requests=frame,
        targets=_class_names(labels, spec),
        class_names=spec.class_names,
        rows_per_request=FRAMES_PER_REQUEST,
    )


def test_png_files(
    pixels: np.ndarray,
    labels: np.ndarray,
    spec: TransformSpec,
    count: int = PNG_SAMPLE,
    seed: int = SEED,
) -> RequestSet:
    """`count` images drawn at random with `seed`, each a PNG file, base64 in the column `image`."""
    chosen = np.sort(np.random.default_rng(seed).permutation(len(pixels))[:count])
    files = [_base64_png(pixels[index]) for index in chosen]
    name = f"{spec.dataset} test PNG files (seed {seed})"
    title = "Served accuracy on PNG files"
    return _file_requests("served_png", title, "test PNG files", name, files, labels[chosen], spec)


def picture_files(
    folder: str | os.PathLike, spec: TransformSpec, prefix: str, description: str
) -> RequestSet:
    """A set of pictures and labels.csv in `folder` (drawn_digits/, font_digits/), its files
    base64 in the column `image`; its metrics are named `<prefix>_...`."""
    from mnist_pipeline.serving.drawn_digits import read_drawn_set

    pictures = read_drawn_set(folder)
    files = [base64.b64encode(data).decode("ascii") for data in pictures["image"]]
    name = f"{description} ({Path(folder).name})"
    labels, kinds = pictures["label"].to_numpy(), pictures["kind"].to_numpy()
    title = f"{prefix.capitalize()} accuracy"
    return _file_requests(prefix, title, description, name, files, labels, spec, kinds)


def feedback_pictures(drawings: pd.DataFrame, spec: TransformSpec) -> RequestSet:
    """The drawings people confirmed on the drawing page (columns image, label), base64 in the
    column `image`; its metrics are named `feedback_...`."""
    files = [base64.b64encode(data).decode("ascii") for data in drawings["image"]]
    labels = drawings["label"].to_numpy()
    name = "feedback drawings (evaluation part)"
    return _file_requests(
        "feedback", "Feedback accuracy", "feedback drawings", name, files, labels, spec
    )


def _file_requests(
    prefix: str,
    title: str,
    description: str,
    dataset_name: str,
    files: list[str],
    labels: np.ndarray,
    spec: TransformSpec,
    kinds: np.ndarray | None = None,
) -> RequestSet:
    """Picture files (base64 in the column `image`), as many to a request as the server takes."""
    return RequestSet(
        prefix=prefix,
        title=title,
        description=description,
        dataset_name=dataset_name,
        requests=pd.DataFrame({IMAGE_COLUMN: files}),
        targets=_class_names(labels, spec),
        class_names=spec.class_names,
        rows_per_request=MAX_FILES_PER_REQUEST,
        kinds=kinds,
    )


def served_request_sets(
    pixels: np.ndarray,
    labels: np.ndarray,
    spec: TransformSpec,
    drawn_dir: str | os.PathLike | None = None,
    font_dir: str | os.PathLike | None = None,
    feedback: pd.DataFrame | None = None,
) -> list[RequestSet]:
    """The sets package evaluates a served model on: PNG files, drawn digits, font digits,
    the drawing page's feedback, test frames.

    The drawn digits at `drawn_dir` and the font digits at `font_dir` only for MNIST (they
    are digits) and only if the folder exists (a line on stderr says when it does not); the
    `feedback` drawings (image, label) if given. The frames come last: MLflow's unprefixed
    per_class_metrics.csv is the last evaluation's, so it is then the report of the whole
    test set (see evaluate).
    """
    request_sets = [test_png_files(pixels, labels, spec)]
    pictures = ((drawn_dir, "drawn", "drawn digits"), (font_dir, "fonts", "font digits"))
    for folder, prefix, description in pictures:
        if spec.dataset != "mnist" or folder is None:
            continue
        if Path(folder).is_dir():
            request_sets.append(picture_files(folder, spec, prefix, description))
        else:
            print(f"No pictures at {folder}: no {prefix}_accuracy", file=sys.stderr)
    if feedback is not None:
        request_sets.append(feedback_pictures(feedback, spec))
    request_sets.append(test_frames(pixels, labels, spec))
    return request_sets


def evaluate(model, request_set: RequestSet, model_id: str | None = None) -> Evaluation:
    """Send `request_set` to `model` (a loaded pyfunc) and log the evaluation to the active run.

    `model_id` links the metrics to the logged model as well. Raises UserError if the
    model refuses a request, which would be a bug in the model or in the request set.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from mnist_pipeline.tracking import runs

    answers = []

    def predict(requests: pd.DataFrame) -> pd.Series:
        # The served model answers label, class_name and probability; the classifier
        # evaluator takes the whole answer as the prediction (it ignores `predictions=`
        # when given a model, in MLflow 3.17), so this function hands it the class name.
        step = request_set.rows_per_request
        answers.clear()
        # The clients' column names, which a dataset of pixels (see below) renames.
        requests = requests.set_axis(request_set.requests.columns, axis=1)
        for start in range(0, len(requests), step):
            answers.append(model.predict(requests.iloc[start : start + step]))
        return pd.concat(answers, ignore_index=True)["class_name"]

    prefix = f"{request_set.prefix}_"
    started = time.perf_counter()
    try:
        with quiet():
            data = _dataset(request_set)
            # Two packages that evaluate on the same set at once would both insert it into
            # the experiment's datasets, and one would fail (see runs.log_input). Logged
            # here first, with the retry, evaluate finds it logged and links the model to it.
            runs.log_input(data, context=prefix)
            result = mlflow.models.evaluate(
                predict,
                data,
                model_type="classifier",
                # Only the classifier evaluator: SHAP's explanations of 784 pixels would
                # take minutes and say little.
                evaluators="classifier",
                evaluator_config={
                    "metric_prefix": prefix,
                    # Every class in the confusion matrix, even one a small set lacks.
                    "label_list": list(request_set.class_names),
                },
                model_id=model_id,
            )
    except MlflowException as error:
        raise UserError(f"{request_set.dataset_name}: {error.message}") from None
    seconds = time.perf_counter() - started
    # MLflow 3.17 logs the per-class report as per_class_metrics.csv whatever the prefix
    # (the plots do get it), so each evaluation overwrites the last one's; the prefixed
    # copy is this one's.
    report = result.artifacts["per_class_metrics"].content
    with tempfile.TemporaryDirectory() as staging:
        report.to_csv(Path(staging) / f"{prefix}per_class_metrics.csv", index=False)
        per_kind = None
        if request_set.kinds is not None:
            predicted = pd.concat(answers, ignore_index=True)["class_name"].to_numpy()
            per_kind = _accuracy_per_kind(request_set, predicted)
            per_kind.to_csv(Path(staging) / f"{prefix}accuracy_per_kind.csv", index=False)
        mlflow.log_artifacts(staging)
    return Evaluation(
        prefix=request_set.prefix,
        title=request_set.title,
        description=request_set.description,
        images=len(request_set.requests),
        accuracy=float(result.metrics[f"{prefix}accuracy_score"]),
        seconds=seconds,
        per_kind=per_kind,
    )


def _dataset(request_set: RequestSet):
    """The requests and their targets as an MLflow dataset, which the run lists as an input."""
    import mlflow

    requests = request_set.requests
    if requests.columns.equals(pd.Index(FRAME_COLUMNS)):
        # A pandas dataset of 784 columns costs MLflow some 15 s for 10,000 images (its
        # schema inference visits every value in Python); as one array of pixels, 0.2 s.
        return mlflow.data.from_numpy(
            requests.to_numpy(), targets=request_set.targets, name=request_set.dataset_name
        )
    return mlflow.data.from_pandas(
        requests.assign(**{TARGET: request_set.targets}),
        targets=TARGET,
        name=request_set.dataset_name,
    )


def _accuracy_per_kind(request_set: RequestSet, predicted: np.ndarray) -> pd.DataFrame:
    right = pd.Series(predicted == request_set.targets, name="right")
    grouped = right.groupby(pd.Series(request_set.kinds, name="kind"))
    return pd.DataFrame(
        {"images": grouped.size(), "accuracy": grouped.mean().round(4)}
    ).reset_index()


def _class_names(labels: np.ndarray, spec: TransformSpec) -> np.ndarray:
    """Labels as class names, so the report and the confusion matrix read "T-shirt/top", "7"."""
    names = np.asarray(spec.class_names, dtype=object)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise UserError(
            f"labels from {labels.min()} to {labels.max()}, expected 0 to {len(names) - 1}"
        )
    return names[np.asarray(labels, dtype=np.int64)]


def _base64_png(image: np.ndarray) -> str:
    encoded, data = cv2.imencode(".png", image)
    if not encoded:
        raise UserError("OpenCV could not encode a test image as PNG")
    return base64.b64encode(data.tobytes()).decode("ascii")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hold back MLflow's INFO lines and its hint about integer columns for the `with` block,
    and scikit-learn's warnings about a class that a small set (the feedback's) lacks: it
    has no precision or recall, which the per-class report gives as 0."""
    from sklearn.exceptions import UndefinedMetricWarning

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
