"""Feedback from the drawing page: the drawings people confirmed, kept in MLflow and read back.

With `python draw.py --feedback`, the page offers "right" and "wrong, it is a ..." after each
answer. Each confirmed drawing becomes one run of the experiment `feedback`:

- the picture exactly as the browser sent it, as the artifact `picture.png` (or `.jpg`);
- params: `label` (the class's index), `class_name`, `answer` (what the model said),
  `model_version` (draw.py's `--model-version`, else "unknown"), `dataset`, `picture`;
- a one-row dataset named `feedback` (picture, sha256, class_name), logged with mlflow.log_input,
  so that the run's "Datasets used" names the drawing;
- the time: the run's own start time.

The run ends FINISHED only once all of it is logged, and the page answers "kept" only then;
a run that did not finish (the page's process died in the middle) is never read.

read_feedback() reads the finished runs back as pictures and labels. split() divides them
by a hash of each picture's bytes into a training part (about 80 %) and an evaluation part,
the same way every time, so that no version is judged on drawings it trained on:
`train -P feedback=feedback` trains on the first, package and its promotion gate evaluate
on the second once it holds MIN_EVALUATION_DRAWINGS.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mnist_pipeline.data.transform import TransformSpec
from mnist_pipeline.errors import UserError
from mnist_pipeline.tracking.signals import PROCESS_TAG, process_tag

# read_feedback downloads one picture per drawing: no progress bar for each (as in cli.py).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

FEEDBACK_EXPERIMENT = "feedback"
DATASET_NAME = "feedback"
# A picture whose SHA-256 starts with a byte below this is for training: 205 of 256, 80 %.
TRAINING_BELOW = 205
# Fewer evaluation drawings than this say too little to judge a version by.
MIN_EVALUATION_DRAWINGS = 20
COLUMNS = ["run_id", "image", "label", "sha256"]


def picture_file_name(picture: bytes) -> str:
    """`picture.jpg` for the bytes of a JPEG file, else `picture.png`."""
    return "picture.jpg" if picture.startswith(b"\xff\xd8\xff") else "picture.png"


def save_drawing(
    experiment_id: str,
    picture: bytes,
    label: int,
    class_name: str,
    answer: str,
    model_version: str,
    dataset: str,
) -> str:
    """Log one confirmed drawing as a run of `experiment_id`; return the run's ID.

    Each thread has an active run of its own in MLflow, but the drawing page calls this from
    one thread at a time (see drawing_page/server.py for why).
    """
    import mlflow

    name = picture_file_name(picture)
    with tempfile.TemporaryDirectory() as staging:
        path = Path(staging) / name
        path.write_bytes(picture)
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"{class_name} (answered {answer or '?'})",
            # A run that a killed page left RUNNING is then ended by end_stale_runs.py.
            tags={PROCESS_TAG: process_tag()},
        ) as run:
            mlflow.log_params(
                {
                    "label": label,
                    "class_name": class_name,
                    "answer": answer,
                    "model_version": model_version or "unknown",
                    "dataset": dataset,
                    "picture": name,
                }
            )
            mlflow.log_artifact(str(path))
            row = pd.DataFrame(
                {"picture": [name], "sha256": [sha256_of(picture)], "class_name": [class_name]}
            )
            mlflow.log_input(
                mlflow.data.from_pandas(row, targets="class_name", name=DATASET_NAME),
                context="feedback",
            )
    return run.info.run_id


def read_feedback(where: str, dataset: str) -> pd.DataFrame:
    """The confirmed drawings of `dataset` in the experiment named `where`, or in the run with
    that ID, oldest first: columns run_id, image (the picture's bytes), label (int), sha256.

    A picture kept more than once (sent twice, or corrected) counts once, with the label it
    was given last. Empty when there is no such experiment or run, or no finished drawing;
    other runs there (a pipeline's, in an experiment named by mistake) are not drawings.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(where)
    if experiment is not None:
        found = mlflow.search_runs(
            experiment_ids=[experiment.experiment_id],
            filter_string=f"attributes.status = 'FINISHED' and params.dataset = '{dataset}'",
            order_by=["attributes.start_time ASC"],
            output_format="list",
        )
    else:
        try:
            found = [mlflow.get_run(where)]
        except MlflowException:
            found = []
        found = [
            run
            for run in found
            if run.info.status == "FINISHED" and run.data.params.get("dataset") == dataset
        ]
    rows = []
    with tempfile.TemporaryDirectory() as staging:
        for run in [run for run in found if {"picture", "label"} <= run.data.params.keys()]:
            path = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id,
                artifact_path=run.data.params["picture"],
                dst_path=str(Path(staging) / run.info.run_id),
            )
            picture = Path(path).read_bytes()
            label = int(run.data.params["label"])
            rows.append((run.info.run_id, picture, label, sha256_of(picture)))
    drawings = pd.DataFrame(rows, columns=COLUMNS).astype({"label": int})
    return drawings.drop_duplicates("sha256", keep="last").reset_index(drop=True)


def sha256_of(picture: bytes) -> str:
    return hashlib.sha256(picture).hexdigest()


def is_for_training(picture: bytes) -> bool:
    """Whether a picture belongs to the training part: by its bytes alone, so always the same."""
    return hashlib.sha256(picture).digest()[0] < TRAINING_BELOW


def split(drawings: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training part and the evaluation part of `drawings` (read_feedback's columns)."""
    training = np.array([is_for_training(picture) for picture in drawings["image"]], dtype=bool)
    return drawings[training], drawings[~training]


def evaluation_part(where: str, dataset: str) -> pd.DataFrame:
    """The evaluation part of the feedback of `dataset` at `where` (read_feedback's columns)."""
    return split(read_feedback(where, dataset))[1]


def training_pixels(drawings: pd.DataFrame, style: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 28, 28) pixels made by the served transform, and int64 labels (n,).

    `style` is the TransformSpec's image_style. The page keeps only pictures that the
    transform reads, so none is refused here.
    """
    from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

    pixels = [image_to_pixels(picture, style) for picture in drawings["image"]]
    images = np.stack(pixels) if pixels else np.zeros((0, 28, 28), dtype=np.uint8)
    return images, drawings["label"].to_numpy(dtype=np.int64)


def training_part(where: str, spec: TransformSpec) -> tuple[np.ndarray, np.ndarray, int]:
    """The training part of the feedback at `where` (an experiment name or a run ID) as
    uint8 pixels (n, 28, 28), made by the served transform, and int64 labels (n,); and how
    many drawings the evaluation part keeps.

    Raises UserError if `where` holds no drawing of spec.dataset at all.
    """
    drawings = read_feedback(where, spec.dataset)
    if drawings.empty:
        raise UserError(
            f"feedback: no drawings of {spec.dataset} in an experiment or a run named {where!r}"
        )
    training, evaluating = split(drawings)
    return *training_pixels(training, spec.image_style), len(evaluating)
