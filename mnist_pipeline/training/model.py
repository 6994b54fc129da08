"""The CNN, the augmentation it trains with, and its training loop, with metrics named for the MLflow UI."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mnist_pipeline.data.transform import IMAGE_SHAPE
from mnist_pipeline.training.hyperparameters import ARCHITECTURES

# "deeper", trained on distorted digits with batch 256 and a peak learning rate of 0.006,
# is the default: 0.9946 and 0.9950 on MNIST (two seeds) after 50 s of training, against
# 0.9918 after 34 s for "classic", the workshop's CNN (train.py on the MNIST mirror, one
# series of runs; benchmarks/bench_accuracy.py compares the two).


def build_cnn(
    nr_conv_1: int, num_classes: int = 10, architecture: str = "deeper", dtype: str = "float32"
):
    """Return an uncompiled Keras CNN for float32 (n, 28, 28, 1) giving class probabilities.

    `dtype` is the Keras dtype policy of the hidden layers (see training_dtype); the
    probabilities are always float32.

    "deeper": a 5x5 convolution (nr_conv_1 filters), 2x2 max pooling, two 3x3 convolutions
    (2 * nr_conv_1), 2x2 max pooling, a 3x3 convolution (4 * nr_conv_1), then dropout
    (0.3) and a softmax layer.
    "classic": two 5x5 convolution blocks (nr_conv_1, then 2 * nr_conv_1 filters), each
    followed by 2x2 max pooling, then dropout (0.4) and a softmax layer.
    """
    import keras
    from keras import layers

    if nr_conv_1 < 1:
        raise ValueError(f"nr_conv_1 must be at least 1, got {nr_conv_1}")
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
        )
    if architecture == "classic":
        body = [
            layers.Conv2D(nr_conv_1, 5, padding="same", activation="relu", dtype=dtype),
            layers.MaxPooling2D(dtype=dtype),
            layers.Conv2D(2 * nr_conv_1, 5, padding="same", activation="relu", dtype=dtype),
            layers.MaxPooling2D(dtype=dtype),
            layers.Flatten(dtype=dtype),
            layers.Dropout(0.4, dtype=dtype),
        ]
    else:
        # Two 3x3 convolutions see as far as one 5x5 for fewer multiplications, and the
        # third block's 7x7 maps are cheap. Batch normalisation was measured too: no
        # better here, and on a CPU normalising the 28x28 maps cost as much as the
        # convolutions.
        body = [
            layers.Conv2D(nr_conv_1, 5, padding="same", activation="relu", dtype=dtype),
            layers.MaxPooling2D(dtype=dtype),
            layers.Conv2D(2 * nr_conv_1, 3, padding="same", activation="relu", dtype=dtype),
            layers.Conv2D(2 * nr_conv_1, 3, padding="same", activation="relu", dtype=dtype),
            layers.MaxPooling2D(dtype=dtype),
            layers.Conv2D(4 * nr_conv_1, 3, padding="same", activation="relu", dtype=dtype),
            layers.Flatten(dtype=dtype),
            layers.Dropout(0.3, dtype=dtype),
        ]
    return keras.Sequential(
        [
            keras.Input(shape=(*IMAGE_SHAPE, 1), name="image"),
            *body,
            layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32"),
        ],
        name="cnn",
    )


# The instruction sets without bfloat16 arithmetic that ONEDNN_MAX_CPU_ISA can cap TensorFlow's
# oneDNN kernels at: with ONEDNN_MAX_CPU_ISA=AVX2, this CPU trains as one with AVX2 alone.
WITHOUT_BFLOAT16 = "SSE41 AVX AVX2 AVX2_VNNI AVX2_VNNI_2 AVX512_CORE AVX512_CORE_VNNI".split()


def training_dtype() -> str:
    """Return the Keras dtype policy to train in: "mixed_bfloat16" or "float32".

    On a 2-core CPU that multiplies bfloat16 natively (Intel AMX or AVX-512 BF16), mixed
    bfloat16 trained the classic CNN for 5 epochs in 0.5-0.6 times the seconds of float32
    (0.67 times the CPU seconds), to the same MNIST test accuracy (0.9918 against 0.9920).
    Elsewhere bfloat16 is emulated, which can be slower than float32. The weights stay
    float32 either way. The CPU's features are read from /proc/cpuinfo, so only on Linux,
    and not when a GPU trains, ONEDNN_MAX_CPU_ISA names an instruction set without
    bfloat16, or TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off (Eigen's bfloat16 is emulated:
    one epoch took 13 times as long).
    """
    import tensorflow as tf

    cpuinfo = Path("/proc/cpuinfo")
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in WITHOUT_BFLOAT16
    capped |= os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false")
    if capped or tf.config.list_physical_devices("GPU") or not cpuinfo.exists():
        return "float32"
    flags = set(cpuinfo.read_text().split())
    return "mixed_bfloat16" if flags & {"amx_bf16", "avx512_bf16"} else "float32"


@dataclass(frozen=True)
class Augmentation:
    """How much each training image is randomly distorted, drawn anew for every image.

    Rotation (degrees), shear, zoom and shift (fractions of the image) are up to plus or
    minus the figure; `stroke` thickens or thins the strokes by up to one pixel.
    """

    rotation_degrees: float = 20.0
    shear: float = 0.15
    zoom: float = 0.1
    shift: float = 0.1
    stroke: float = 1.0

    def params(self) -> dict[str, float]:
        """The settings as MLflow params, `augment_rotation_degrees` and so on."""
        return {f"augment_{name}": value for name, value in asdict(self).items()}

    def layers(self, background: float, seed: int = 0):
        """Return a Keras model that distorts float32 (n, 28, 28, 1) in training only.

        `background` is a blank pixel in the units of the images (after normalisation),
        what the corners that a rotation or shift uncovers are filled with.
        """
        import keras

        return keras.Sequential(
            [
                random_affine(
                    background, self.rotation_degrees, self.shear, self.zoom, self.shift, seed
                ),
                random_stroke_width(self.stroke, seed + 1),
            ],
            name="augmentation",
        )


def random_affine(
    fill_value: float, rotation_degrees: float, shear: float, zoom: float, shift: float, seed: int
):
    """Return a Keras layer that rotates, shears, zooms and shifts each image, in training only.

    keras.layers.RandomRotation, RandomShear, RandomZoom and RandomTranslation in a row
    resample an image four times, and it blurs: trained on those, the CNN lost accuracy on
    the sharp MNIST test images. One affine map per image blurs it once.
    """
    import keras
    from keras import ops

    class RandomAffine(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=None):
            if not training:
                return images
            height, width = images.shape[1], images.shape[2]
            draws = keras.random.uniform(
                (5, ops.shape(images)[0]), -1.0, 1.0, seed=self.seed_generator
            )
            angle = draws[0] * (rotation_degrees * np.pi / 180)
            shear_x = draws[1] * shear
            scale = 1.0 + draws[2] * zoom
            shift_x, shift_y = draws[3] * shift * width, draws[4] * shift * height
            # Where each output pixel is read in the input: a rotation after a shear,
            # scaled about the image's centre, then shifted.
            cos, sin = ops.cos(angle) / scale, ops.sin(angle) / scale
            a00, a01 = cos, cos * shear_x - sin
            a10, a11 = sin, sin * shear_x + cos
            centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
            b0 = centre_x - a00 * centre_x - a01 * centre_y - shift_x
            b1 = centre_y - a10 * centre_x - a11 * centre_y - shift_y
            zeros = ops.zeros_like(a00)
            transform = ops.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)
            return ops.image.affine_transform(
                images, transform, fill_mode="constant", fill_value=fill_value
            )

    return RandomAffine(name="random_affine")


def random_stroke_width(strength: float, seed: int):
    """Return a Keras layer that thickens or thins each image's strokes, in training only.

    A 3x3 maximum of the pixels (max pooling at stride 1) is the image with its strokes a
    pixel wider, the 3x3 minimum (minus the maximum of -x) a pixel thinner. Each image
    gets a random mix, from fully thinned (-strength) through itself (0) to fully widened.
    """
    import keras
    from keras import ops

    class RandomStrokeWidth(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=None):
            if not training or not strength:
                return images
            widened = ops.max_pool(images, 3, strides=1, padding="same")
            thinned = -ops.max_pool(-images, 3, strides=1, padding="same")
            mix = keras.random.uniform(
                (ops.shape(images)[0], 1, 1, 1), -strength, strength, seed=self.seed_generator
            )
            return images + ops.relu(mix) * (widened - images) + ops.relu(-mix) * (thinned - images)

    return RandomStrokeWidth(name="random_stroke_width")


def compile_cnn(model, lr: float, steps: int, label_smoothing: float = 0.0) -> None:
    """Adam with a short linear warm-up to `lr`, then cosine decay over `steps` batches.

    The warm-up lets a high learning rate be used from the first epoch; the decay is
    what lets a few epochs reach the accuracy of many. The labels are one-hot, with
    `label_smoothing` of each spread over the other classes.
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
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def epoch_logger(validation: bool = True):
    """Return a Keras callback that logs each epoch's metrics to the active MLflow run.

    Built on mlflow.keras.MlflowCallback (which also logs the optimizer and the model
    summary), with the names the UI charts side by side: train_loss, train_accuracy,
    val_loss, val_accuracy (without `validation`, only the train_ ones: checkpoints log
    the val_ ones, linked to each epoch's model). The bare `loss` and `accuracy` are kept
    for the test set.
    """
    import mlflow
    from mlflow.keras import MlflowCallback

    class EpochLogger(MlflowCallback):
        def on_epoch_end(self, epoch, logs=None):
            if logs:
                named = {
                    name if name.startswith("val_") else f"train_{name}": float(value)
                    for name, value in logs.items()
                    if name != "learning_rate" and (validation or not name.startswith("val_"))
                }
                mlflow.log_metrics(named, step=epoch)

        def on_test_end(self, logs=None):
            pass  # validation metrics already arrive with on_epoch_end

    return EpochLogger()
