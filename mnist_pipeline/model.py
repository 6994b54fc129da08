"""The CNN and its training loop, with metrics named for the MLflow UI."""

from __future__ import annotations

import numpy as np


def build_cnn(nr_conv_1: int, num_classes: int = 10, dropout_rate: float = 0.4):
    """Return an uncompiled Keras CNN for float32 (n, 28, 28, 1) giving class probabilities.

    Two 5x5 convolution blocks (nr_conv_1, then 2 * nr_conv_1 filters), each followed
    by 2x2 max pooling, then dropout and a softmax layer.
    """
    import keras
    from keras import layers

    if nr_conv_1 < 1:
        raise ValueError(f"nr_conv_1 must be at least 1, got {nr_conv_1}")
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1), name="image"),
            layers.Conv2D(nr_conv_1, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(2 * nr_conv_1, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(dropout_rate),
            layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name="cnn",
    )


def compile_cnn(model, lr: float, steps: int) -> None:
    """Adam with a short linear warm-up to `lr`, then cosine decay over `steps` batches.

    The warm-up lets a high learning rate be used from the first epoch; the decay is
    what lets a few epochs reach the accuracy of many.
    """
    import keras

    warmup = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10,
        decay_steps=max(1, steps - warmup),
        warmup_target=lr,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def epoch_logger():
    """Return a Keras callback that logs each epoch's metrics to the active MLflow run.

    Built on mlflow.keras.MlflowCallback (which also logs the optimizer and the model
    summary), with the names the UI charts side by side: train_loss, train_accuracy,
    val_loss, val_accuracy. The bare `loss` and `accuracy` are kept for the test set.
    """
    import mlflow
    from mlflow.keras import MlflowCallback

    class EpochLogger(MlflowCallback):
        def on_epoch_end(self, epoch, logs=None):
            if logs:
                named = {
                    name if name.startswith("val_") else f"train_{name}": float(value)
                    for name, value in logs.items()
                    if name != "learning_rate"
                }
                mlflow.log_metrics(named, step=epoch)

        def on_test_end(self, logs=None):
            pass  # validation metrics already arrive with on_epoch_end

    return EpochLogger()


def confusion_counts(y_true: np.ndarray, y_predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Return int64 (num_classes, num_classes): counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y_true.astype(np.int64), y_predicted.astype(np.int64)), 1)
    return counts
