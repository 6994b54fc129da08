"""train: fit the Keras CNN on a preprocess run's arrays; logs the model as 'model'.

Reads `--preprocess_run`, the workshop's `--input_dir` (a preprocess run's artifact
folder under ./mlruns), or the newest finished preprocess run of `--dataset`. Logs
per-epoch train_/val_ loss and accuracy, the test `loss` and `accuracy`, a confusion
matrix picture, and the Keras model with its signature and an input example.

$ mlflow run . -e train --env-manager local -P preprocess_run=<run id> -P nr_conv_1=16
"""

from __future__ import annotations

import sys

from mnist_pipeline.cli import (
    USER_ERRORS,
    Parser,
    fail,
    positive_float,
    positive_int,
    stage_run,
)

VALIDATION_FRACTION = 0.1


def build_parser() -> Parser:
    parser = Parser(prog="train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--preprocess_run", default="", help="a preprocess run ID")
    parser.add_argument(
        "--input_dir", default="", help="or ./mlruns/<exp>/<run id>/artifacts of one"
    )
    parser.add_argument(
        "--dataset", default="mnist", help="mnist or fashion, to find the newest preprocess run"
    )
    parser.add_argument("--batch_size", type=positive_int, default=128)
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--lr", type=positive_float, default=0.002, help="peak learning rate")
    parser.add_argument(
        "--nr_conv_1", type=positive_int, default=16, help="filters of the first convolution"
    )
    parser.add_argument("--seed", type=int, default=42)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stage_run("train", parser, args, __file__) as run:
            accuracy, seconds = train(args)
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    print(
        f"train run {run.info.run_id}: test accuracy {accuracy:.4f} after {seconds:.1f} s of training"
    )
    return 0


def resolve_preprocess_run(args) -> str:
    from mnist_pipeline import runs

    if args.preprocess_run and args.input_dir:
        raise ValueError("give either preprocess_run or input_dir, not both")
    if args.input_dir:
        run_id = runs.run_id_from_path(args.input_dir)
    elif args.preprocess_run:
        run_id = args.preprocess_run
    else:
        return runs.latest_run("preprocess", args.dataset).info.run_id
    return runs.get_run(run_id, "preprocess").info.run_id


def train(args) -> tuple[float, float]:
    import time

    import keras
    import mlflow
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    from mnist_pipeline import plots, runs
    from mnist_pipeline.datasets import sha256_of_file
    from mnist_pipeline.model import build_cnn, compile_cnn, confusion_counts, epoch_logger
    from mnist_pipeline.study import pruning_callbacks
    from mnist_pipeline.transform import TRANSFORM_FILE, TransformSpec

    preprocess_run = resolve_preprocess_run(args)
    artifacts = runs.artifact_dir(preprocess_run)
    spec = TransformSpec.load(artifacts / TRANSFORM_FILE)
    mlflow.set_tags(
        {
            "dataset": spec.dataset,
            "preprocess_run": preprocess_run,
            # With the seed and the code version, the bytes trained on make the run repeatable.
            "sha256.train.npz": sha256_of_file(artifacts / "arrays" / "train.npz"),
            "sha256.test.npz": sha256_of_file(artifacts / "arrays" / "test.npz"),
        }
    )
    with np.load(artifacts / "arrays" / "train.npz") as train_arrays:
        x_all, y_all = train_arrays["x"], train_arrays["y"]
    with np.load(artifacts / "arrays" / "test.npz") as test_arrays:
        x_test, y_test = test_arrays["x"], test_arrays["y"]
    validation_size = max(1, int(len(y_all) * VALIDATION_FRACTION))
    x_train, y_train = x_all[:-validation_size], y_all[:-validation_size]
    x_val, y_val = x_all[-validation_size:], y_all[-validation_size:]
    mlflow.log_input(
        mlflow.data.from_numpy(x_train, targets=y_train, name=f"{spec.dataset}-train"),
        context="training",
    )
    mlflow.log_input(
        mlflow.data.from_numpy(x_test, targets=y_test, name=f"{spec.dataset}-test"),
        context="evaluation",
    )

    # The same seed and the same data give the same weights, on the CPU at least.
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_cnn(args.nr_conv_1, num_classes=len(spec.class_names))
    steps = args.epochs * int(np.ceil(len(y_train) / args.batch_size))
    compile_cnn(model, args.lr, steps)

    started = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        callbacks=[epoch_logger(), *pruning_callbacks()],
        verbose=1 if sys.stdout.isatty() else 2,
    )
    seconds = time.perf_counter() - started
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=1024, verbose=0)
    mlflow.log_metrics({"loss": loss, "accuracy": accuracy, "train_seconds": seconds})

    probabilities = model.predict(x_test, batch_size=1024, verbose=0)
    counts = confusion_counts(y_test, probabilities.argmax(axis=1), len(spec.class_names))
    mlflow.log_figure(plots.confusion_matrix(counts, spec.class_names), "confusion_matrix.png")
    example = x_test[:1]
    mlflow.tensorflow.log_model(
        model,
        name="model",
        signature=infer_signature(example, probabilities[:1]),
        input_example=example,
    )
    return accuracy, seconds


if __name__ == "__main__":
    sys.exit(main())
