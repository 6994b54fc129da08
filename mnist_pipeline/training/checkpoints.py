"""Checkpoints: after each epoch, the CNN as an MLflow logged model, and what resuming needs.

At the end of every epoch, `EpochCheckpoint` logs to the active run:

- the bare CNN (what serving uses) as a logged model named 'checkpoint', with `step` the
  epoch (counted from 0, as the run's per-epoch metrics are), and the epoch's val_loss and
  val_accuracy linked to it and to the validation dataset: the experiment's Models tab
  lists the epochs side by side, and `mlflow.search_logged_models` finds the best. The
  seconds the checkpoint took are its metric `checkpoint_seconds`;
- beside it, as run artifacts in `checkpoints/epoch-<n>/` (n epochs done), what the CNN
  does not hold: `training.weights.h5` (Keras's save_weights of the training model, the
  augmentation in front of the CNN: its weights and the optimizer's moments and step
  count), and `state.json` (the epochs done, the states of the random generators of the
  augmentation and of dropout, the training's settings). state.json is written last: a
  folder without it is a checkpoint cut short, which is never resumed from.

The data order needs nothing saved: Keras shuffles the arrays with the generators that
`keras.utils.set_random_seed` seeds, which a resumed run seeds alike (with Keras 3.15 the
order is even the same in every epoch). Everything lives in the tracking store, so that a
training stopped on one machine resumes on another.

Why a callback of our own: Keras's BackupAndRestore keeps its backup in a local folder,
which another machine does not have. MLflow's MlflowModelCheckpointCallback saves run
artifacts, but tags a checkpoint as the latest before its file is written (a stop in
between points at nothing), keeps no random generator states, and logs no logged models.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from mnist_pipeline.data.transform import IMAGE_SHAPE
from mnist_pipeline.errors import UserError
from mnist_pipeline.tracking import runs, stale_runs
from mnist_pipeline.tracking.signals import PROCESS_TAG

CHECKPOINT_MODEL = "checkpoint"
FOLDER = "checkpoints"
RESUMED_FROM_TAG = "resumed_from"
# False: train logs no checkpoints (benchmarks/bench_resume.py's baseline). A search's trials
# log them too: a dead worker's trial is retried from its last one (see search/study.py).
enabled = True


def epoch_checkpoint(cnn, training_model, settings: dict, validation, example, requirements):
    """Return the Keras callback that checkpoints `training_model` (which holds `cnn`) each epoch.

    `cnn()` returns the bare CNN in float32, as it is served; `settings` are the training's
    values (preprocess run, hyperparameters), which a resumed run must share; `validation`
    is the MLflow dataset of the validation images; `example` one float32 (1, 28, 28, 1)
    image, for the signature; `requirements` the pip requirements of the logged model.
    """
    import keras
    from mlflow.models import infer_signature

    class EpochCheckpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            started = time.perf_counter()
            served = cnn()
            signature = infer_signature(example, served(example, training=False).numpy())
            info = mlflow.tensorflow.log_model(
                served,
                name=CHECKPOINT_MODEL,
                step=epoch,
                signature=signature,
                pip_requirements=requirements,
            )
            validated = {
                name: float(value)
                for name, value in (logs or {}).items()
                if name.startswith("val_")
            }
            mlflow.log_metrics(validated, step=epoch, model_id=info.model_id, dataset=validation)
            state = {
                "epochs_done": epoch + 1,
                "model_id": info.model_id,
                # The seed generators of the augmentation and of dropout, Keras variables
                # that save_weights leaves out.
                "random_states": [
                    v.numpy().tolist() for v in training_model.non_trainable_variables
                ],
                "settings": settings,
            }
            folder = f"{FOLDER}/epoch-{epoch + 1}"
            with tempfile.TemporaryDirectory() as temporary:
                weights = Path(temporary) / "training.weights.h5"
                training_model.save_weights(weights)
                mlflow.log_artifact(str(weights), folder)
            mlflow.log_dict(state, f"{folder}/state.json")  # last: the checkpoint is whole
            # What the checkpoint cost, beside the epoch's time (benchmarks/bench_resume.py).
            seconds = time.perf_counter() - started
            mlflow.log_metric("checkpoint_seconds", seconds, step=epoch, model_id=info.model_id)

    return EpochCheckpoint()


def to_resume(run_id: str):
    """Return the train run `run_id` and its last checkpoint's state, or raise UserError.

    A run is resumed when it ended KILLED (Ctrl-C, SIGTERM) or is RUNNING while the process
    named by its `process` tag is gone (SIGKILL, a power cut), and has a whole checkpoint.
    Not when another run resumes it, or did and finished, or did and got to a checkpoint
    of its own (resume that one).
    """
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(f"run {run_id!r} does not exist in {runs.tracking_uri()}") from None
    stage = run.data.tags.get(runs.STAGE_TAG)
    if stage != "train":
        kind = f"a {stage} run" if stage else "not a pipeline run"
        raise UserError(f"resume: run {run_id} is {kind}, expected a stopped train run")
    status = run.info.status
    if status == "RUNNING":
        process = run.data.tags.get(PROCESS_TAG, "")
        if not stale_runs.process_is_gone(process):
            raise UserError(
                f"resume: train run {run_id} is RUNNING and its process ({process or 'unknown'}) "
                "may still be training; stop it first"
            )
    elif status != "KILLED":
        raise UserError(
            f"resume: train run {run_id} is {status}; only a KILLED run, or a RUNNING one "
            "whose process is gone, is resumed"
        )
    resumers = mlflow.search_runs(
        filter_string=f"tags.{RESUMED_FROM_TAG} = '{run_id}'",
        search_all_experiments=True,
        output_format="list",
    )
    for other in resumers:
        other_id, other_status = other.info.run_id, other.info.status
        process = other.data.tags.get(PROCESS_TAG, "")
        if other_status == "FINISHED":
            raise UserError(
                f"resume: train run {run_id} was resumed already by run {other_id}, "
                "which finished: use that one"
            )
        if other_status == "RUNNING" and not stale_runs.process_is_gone(process):
            raise UserError(
                f"resume: train run {run_id} is being resumed by run {other_id} (process "
                f"{process or 'unknown'}): wait for it, or stop it first"
            )
        if latest(other_id) is not None:
            raise UserError(
                f"resume: train run {run_id} was resumed by run {other_id}, which got further "
                f"and stopped: resume that one (resume={other_id})"
            )
    state = latest(run_id)
    if state is None and (origin := run.data.tags.get(RESUMED_FROM_TAG)):
        raise UserError(
            f"resume: train run {run_id} stopped before a checkpoint of its own; it had "
            f"resumed run {origin}: resume that one (resume={origin})"
        )
    if state is None:
        raise UserError(
            f"resume: train run {run_id} has no checkpoint (it stopped in its first epoch); "
            "start it again instead"
        )
    return run, state


def latest(run_id: str) -> dict | None:
    """Return the state.json of the run's newest whole checkpoint, or None if it has none."""
    client = mlflow.MlflowClient()
    done = sorted(
        (
            int(entry.path.rsplit("-", 1)[1])
            for entry in client.list_artifacts(run_id, FOLDER)
            if entry.is_dir and entry.path.rsplit("-", 1)[-1].isdigit()
        ),
        reverse=True,
    )
    for epochs in done:
        try:
            return mlflow.artifacts.load_dict(f"runs:/{run_id}/{FOLDER}/epoch-{epochs}/state.json")
        except (MlflowException, OSError, ValueError):
            continue  # cut short before state.json was whole: take the one before
    return None


def restore(training_model, run, state: dict) -> int:
    """Load `run`'s checkpoint of `state` (see to_resume) into `training_model`; return its epochs.

    The model must be built and compiled as the stopped run's was. It gets the weights,
    the optimizer's moments and step count (so the learning rate schedule goes on where it
    stopped), and the random generators' states. The active run is tagged as resuming
    `run`, and `run`, if still RUNNING (its process is gone), is ended KILLED.
    """
    run_id = run.info.run_id
    training_model.build((None, *IMAGE_SHAPE, 1))
    # Built, the optimizer has the variables that the file holds values for.
    training_model.optimizer.build(training_model.trainable_variables)
    with tempfile.TemporaryDirectory() as temporary:
        weights = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=f"{FOLDER}/epoch-{state['epochs_done']}/training.weights.h5",
            dst_path=temporary,
        )
        training_model.load_weights(weights)
    variables = training_model.non_trainable_variables
    if len(variables) != len(state["random_states"]):
        raise UserError(f"resume: run {run_id}'s checkpoint is of another model")
    for variable, value in zip(variables, state["random_states"], strict=True):
        variable.assign(value)
    if run.info.status == "RUNNING":
        mlflow.MlflowClient().set_terminated(run_id, "KILLED")
    mlflow.set_tags({RESUMED_FROM_TAG: run_id, "resumed_after_epoch": str(state["epochs_done"])})
    return state["epochs_done"]


def checked_settings(run_id: str, state: dict, settings: dict) -> None:
    """Raise UserError, naming the differences, unless `settings` are those of the checkpoint."""
    saved = state["settings"]
    differ = [
        f"{name}={saved.get(name)!r} (here {value!r})"
        for name, value in settings.items()
        if saved.get(name) != value
    ]
    if differ:
        raise UserError(
            f"resume: train run {run_id} trained with other settings; pass the same: "
            + ", ".join(differ)
        )
