"""train: fit the Keras CNN on a preprocess run's arrays; logs the model as 'model'.

Reads `--preprocess_run`, the workshop's `--input_dir` (a preprocess run's artifact
folder under ./mlruns), or the newest finished preprocess run of `--dataset`. With
`--augment true`, trains on randomly distorted digits; logs the distortions as
augment_* params (0 when off). `--synthetic 0.1` (the default) adds 10 % more digits,
typed and pen-drawn from fonts (training/synthetic.py; `synthetic_images` says how many).
`--feedback feedback` adds the training part of the drawings confirmed on the drawing page
(mnist_pipeline/feedback.py; `feedback_images` says how many). Logs per-epoch train_/val_
loss and accuracy, the test `loss` and `accuracy`, a confusion matrix picture, and the Keras
model with its signature and an input example. After each epoch it logs a checkpoint: the
CNN as a logged model with the epoch's validation metrics, and what resuming needs
(training/checkpoints.py). `--resume <run id>` continues a stopped train run from its last
checkpoint.

$ mlflow run . -e train --env-manager local -P preprocess_run=<run id> -P nr_conv_1=16
"""

import sys
import time

import numpy as np

from mnist_pipeline import plots
from mnist_pipeline.cli import (
    USER_ERRORS,
    Parser,
    arguments_for,
    defaults_of,
    fail,
    stage_run,
)
from mnist_pipeline.data.catalogue import dataset_spec, sha256_of_file
from mnist_pipeline.data.transform import (
    TRANSFORM_FILE,
    TransformSpec,
    arrays_path,
    load_arrays,
    normalize,
)
from mnist_pipeline.errors import UserError
from mnist_pipeline.training.hyperparameters import HYPERPARAMETERS
from mnist_pipeline.training.model import Augmentation

VALIDATION_FRACTION = 0.1


def add_hyperparameters(parser: Parser) -> None:
    """Add train's hyperparameters, with their types and defaults, to `parser` (main's too)."""
    defaults = defaults_of(train)
    for hyperparameter in HYPERPARAMETERS:
        parser.add_argument(
            f"--{hyperparameter.name}",
            type=hyperparameter.check,
            default=defaults[hyperparameter.name],
            help=hyperparameter.help,
            choices=hyperparameter.choices if hyperparameter.check is str else None,
        )


def build_parser() -> Parser:
    parser = Parser(prog="train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--preprocess_run", help="a preprocess run ID")
    parser.add_argument("--input_dir", help="or ./mlruns/<exp>/<run id>/artifacts of one")
    parser.add_argument("--dataset", help="mnist or fashion, to find the newest preprocess run")
    parser.add_argument(
        "--feedback", help="also train on the drawing page's feedback: an experiment or run ID"
    )
    add_hyperparameters(parser)
    parser.add_argument(
        "--resume", help="a stopped train run to continue from its last checkpoint (same settings)"
    )
    parser.take_defaults_from(train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = None
    try:
        with stage_run("train", parser, args, __file__, system_metrics=True) as run:
            accuracy, seconds = train(**arguments_for(train, args))
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run ended KILLED
        if run is not None and resumable(run.info.run_id):
            print(
                f"train run {run.info.run_id} ended KILLED; go on from its last checkpoint "
                f"with the same parameters and -P resume={run.info.run_id}",
                file=sys.stderr,
            )
        raise
    if accuracy is None:
        print(f"train run {run.info.run_id}: pruned by its search after {seconds:.1f} s")
        return 0
    print(
        f"train run {run.info.run_id}: test accuracy {accuracy:.4f} after {seconds:.1f} s of training"
    )
    return 0


def resumable(run_id: str) -> bool:
    """Whether the stopped run `run_id` has a whole checkpoint to go on from."""
    from mnist_pipeline.training import checkpoints

    try:
        return checkpoints.latest(run_id) is not None
    except Exception:  # the store itself may be what stopped it
        return False


def resolve_preprocess_run(preprocess_run: str = "", input_dir: str = "", dataset: str = "") -> str:
    """Return the ID of the preprocess run named by ID or by path, else the newest of `dataset`."""
    from mnist_pipeline.tracking import runs

    if preprocess_run and input_dir:
        raise UserError("give either preprocess_run or input_dir, not both")
    if input_dir:
        run_id = runs.run_id_from_path(input_dir)
    elif preprocess_run:
        run_id = preprocess_run
    else:
        return runs.latest_run("preprocess", dataset).info.run_id
    return runs.get_run(run_id, "preprocess").info.run_id


def train(
    preprocess_run: str = "",
    input_dir: str = "",
    dataset: str = "mnist",
    batch_size: int = 256,
    epochs: int | None = None,
    lr: float = 0.006,
    nr_conv_1: int = 16,
    architecture: str = "deeper",
    augment: bool = True,
    synthetic: float = 0.1,
    label_smoothing: float | None = None,
    seed: int = 42,
    feedback: str = "",
    resume: str = "",
) -> tuple[float | None, float]:
    """Train the CNN on a preprocess run's arrays; return the test accuracy and the seconds

    (the accuracy is None when the search that started this run pruned it).

    The preprocess run is `preprocess_run`, the one whose artifacts are at `input_dir`,
    or the newest finished one of `dataset`. With `augment`, and a dataset of digits,
    every training image is randomly distorted (see model.Augmentation) each time it is
    seen; the logged model never is. Logs to the active MLflow run (MLflow starts one if none is active): the
    augmentation settings, the curves per epoch, the test loss and accuracy, a confusion
    matrix and the Keras model as 'model'; after each epoch, a checkpoint (see
    training/checkpoints.py). With `resume`, the ID of a stopped train run, training goes
    on from that run's last checkpoint, with the same settings (the preprocess run is
    the stopped run's unless given).
    """
    import mlflow

    from mnist_pipeline.tracking import runs
    from mnist_pipeline.training import checkpoints

    # Before TensorFlow is imported: a wrong run is said in a few seconds, not ten.
    resumed = checkpoint = None
    if resume:
        resumed, checkpoint = checkpoints.to_resume(resume)
        if not (preprocess_run or input_dir):
            preprocess_run = resumed.data.tags.get("preprocess_run", "")
    preprocess_run = resolve_preprocess_run(preprocess_run, input_dir, dataset)

    import keras
    import tensorflow as tf
    from mlflow.models import infer_signature

    from mnist_pipeline.serving import requirements
    from mnist_pipeline.training.model import build_cnn, compile_cnn, epoch_logger, training_dtype
    from mnist_pipeline.training.pruning import pruning_callbacks, was_pruned

    artifacts = runs.artifact_dir(preprocess_run)
    spec = TransformSpec.load(artifacts / TRANSFORM_FILE)
    # Left empty, epochs and label_smoothing take the dataset's defaults (the catalogue's).
    # The values used are logged as <name>_used: `mlflow run` has logged an empty one as "".
    used = dataset_spec(spec.dataset).training_values(
        epochs=epochs, label_smoothing=label_smoothing
    )
    mlflow.log_params({f"{name}_used": value for name, value in used.items()})
    epochs, label_smoothing = used["epochs"], used["label_smoothing"]
    # What a resumed run must share with the stopped one, and a checkpoint records.
    settings = {
        "preprocess_run": preprocess_run,
        "batch_size": batch_size,
        "epochs": epochs,
        "lr": lr,
        "nr_conv_1": nr_conv_1,
        "architecture": architecture,
        "augment": augment,
        "synthetic": synthetic,
        "label_smoothing": label_smoothing,
        "seed": seed,
        "feedback": feedback,
    }
    if resume:
        checkpoints.checked_settings(resume, checkpoint, settings)
    mlflow.set_tags(
        {
            "dataset": spec.dataset,
            "preprocess_run": preprocess_run,
            # With the seed and the code version, the bytes trained on make the run repeatable.
            "sha256.train.npz": sha256_of_file(arrays_path(artifacts, "train")),
            "sha256.test.npz": sha256_of_file(arrays_path(artifacts, "test")),
        }
    )
    x_all, y_all = load_arrays(artifacts, "train")
    x_test, y_test = load_arrays(artifacts, "test")
    validation_size = max(1, int(len(y_all) * VALIDATION_FRACTION))
    x_train, y_train = x_all[:-validation_size], y_all[:-validation_size]
    x_val, y_val = x_all[-validation_size:], y_all[-validation_size:]
    runs.log_input(
        mlflow.data.from_numpy(x_train, targets=y_train, name=f"{spec.dataset}-train"),
        context="training",
    )
    validation = mlflow.data.from_numpy(x_val, targets=y_val, name=f"{spec.dataset}-validation")
    runs.log_input(validation, context="validation")
    if feedback:  # read first: a name that holds no drawing fails before the slow part
        from mnist_pipeline.feedback import sha256_of, training_part

        # Only the training part: the evaluation part judges this version (see package).
        x_feedback, y_feedback, kept_back = training_part(feedback, spec)
        # Drawings keep coming in: a resumed run must train on the very ones it began with.
        digest = sha256_of(x_feedback.tobytes() + y_feedback.tobytes())
        drawings = {"drawings": len(y_feedback), "sha256": digest}
        if resume and checkpoint["settings"].get("feedback_drawings") != drawings:
            then = checkpoint["settings"].get("feedback_drawings", {}).get("drawings", "?")
            raise UserError(
                f"resume: the feedback in {feedback!r} changed since train run {resume} read it "
                f"({then} drawings then, {len(y_feedback)} now): resuming would train on other "
                "drawings; start a new training"
            )
        settings["feedback_drawings"] = drawings  # recorded with each checkpoint
    # Digits only: typed and pen-drawn digits from fonts that no evaluation set uses.
    added = round(len(y_train) * synthetic) if spec.image_style == "digit" else 0
    mlflow.log_param("synthetic_images", added)
    if added:
        from mnist_pipeline.training.synthetic import supplement

        print(f"Synthetic digits: {added:,} (made once per process and seed)...", flush=True)
        x_synthetic, y_synthetic = supplement(added, seed)
        runs.log_input(
            mlflow.data.from_numpy(x_synthetic, targets=y_synthetic, name="synthetic digits"),
            context="training",
        )
        x_train = np.concatenate([x_train, normalize(x_synthetic, spec)])
        y_train = np.concatenate([y_train, y_synthetic])
    if feedback:
        print(
            f"Adding {len(y_feedback)} feedback drawings (the training part; "
            f"{kept_back} more are kept to evaluate on)",
            flush=True,
        )
        mlflow.log_param("feedback_images", len(y_feedback))
        name = f"feedback {feedback} (training part)"
        dataset = mlflow.data.from_numpy(x_feedback, targets=y_feedback, name=name)
        runs.log_input(dataset, context="training")
        x_train = np.concatenate([x_train, normalize(x_feedback, spec)])
        y_train = np.concatenate([y_train, y_feedback])
    runs.log_input(
        mlflow.data.from_numpy(x_test, targets=y_test, name=f"{spec.dataset}-test"),
        context="evaluation",
    )

    # The same seed and the same data give the same weights, on the CPU at least.
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    dtype = training_dtype()
    mlflow.log_param("training_dtype", dtype)
    model = build_cnn(nr_conv_1, len(spec.class_names), architecture, dtype)
    # The distortions are those of handwriting (see model.Augmentation). Clothes are
    # not drawn, and Fashion-MNIST lost accuracy with them in five epochs: only
    # datasets of digits are augmented. The logged params say what was done.
    augmented = augment and spec.image_style == "digit"
    augmentation = Augmentation() if augmented else Augmentation(0, 0, 0, 0, 0)
    mlflow.log_params(augmentation.params())
    trained = model
    if augmented:
        # The augmentation sits in front of the model in a training-only wrapper: the
        # logged model, and so the served one, is the bare CNN. What a rotation or a
        # shift uncovers is filled with a blank pixel, in normalised units.
        background = (0.0 - spec.mean) / spec.std
        trained = keras.Sequential([augmentation.layers(background, seed), model])
    steps = epochs * int(np.ceil(len(y_train) / batch_size))
    compile_cnn(trained, lr, steps, label_smoothing)
    # Label smoothing needs the labels one-hot: Keras's sparse loss has no such option.
    classes = len(spec.class_names)
    y_train_fit, y_val_fit = (keras.utils.to_categorical(y, classes) for y in (y_train, y_val))

    def servable():
        """The bare CNN in float32, as it is logged and served, whatever dtype it trains in."""
        if dtype == "float32":
            return model
        copy = build_cnn(nr_conv_1, classes, architecture)
        copy.set_weights(model.get_weights())
        return copy

    first_epoch = 0
    if resume:
        first_epoch = checkpoints.restore(trained, resumed, checkpoint)
        print(f"Resuming train run {resume} after epoch {first_epoch} of {epochs}")
    # Written out for the checkpoints and the model: inferring them would load each model
    # again in a new process.
    model_requirements = requirements.pinned(requirements.KERAS_MODEL_PACKAGES)
    pruning = pruning_callbacks()  # none unless a search started this run
    # The checkpoints log the validation metrics themselves, linked to each epoch's model.
    callbacks = [epoch_logger(validation=not checkpoints.enabled), *pruning]
    if checkpoints.enabled:
        callbacks.append(
            checkpoints.epoch_checkpoint(
                servable,
                trained,
                settings,
                validation,
                x_val[:1],
                model_requirements,
            )
        )
    started = time.perf_counter()
    trained.fit(
        x_train,
        y_train_fit,
        batch_size=batch_size,
        epochs=epochs,
        initial_epoch=first_epoch,
        validation_data=(x_val, y_val_fit),
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    seconds = time.perf_counter() - started
    if was_pruned(pruning):
        # The search stopped this trial early: no test accuracy and no model, so that
        # nothing ever picks it as the best.
        mlflow.log_metric("train_seconds", seconds)
        return None, seconds
    # The model is logged, served and measured in float32, wherever it runs: the same
    # weights (kept in float32 while training in mixed precision) in a float32 CNN.
    model = servable()
    # The bare model is measured (the augmenting wrapper is what was compiled).
    probabilities = model.predict(x_test, batch_size=1024, verbose=0)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
    loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y_test, probabilities)))

    matrix = plots.confusion_matrix(y_test, probabilities.argmax(axis=1), spec.class_names)
    mlflow.log_figure(matrix, "confusion_matrix.png")
    example = x_test[:1]
    logged = mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=infer_signature(example, probabilities[:1]),
        input_example=example,
        pip_requirements=model_requirements,
    )
    # Linked to the model explicitly: MLflow would link a metric of step 0 to the first
    # epoch's checkpoint.
    mlflow.log_metrics(
        {"loss": loss, "accuracy": accuracy, "train_seconds": seconds}, model_id=logged.model_id
    )
    return accuracy, seconds


if __name__ == "__main__":
    sys.exit(main())
