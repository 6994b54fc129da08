"""The CNN's architectures, the training-only augmentation (model.py) and the pruning
callback (pruning.py), on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_pipeline.training.hyperparameters import ARCHITECTURES
from mnist_pipeline.training.model import Augmentation, build_cnn, training_dtype

BACKGROUND = -0.42  # a blank pixel after MNIST's normalisation


def digits(count: int = 8) -> np.ndarray:
    """float32 (count, 28, 28, 1): a 2-pixel-wide bar on the background, as normalised digits."""
    images = np.full((count, 28, 28, 1), BACKGROUND, dtype=np.float32)
    images[:, 6:22, 13:15, 0] = 2.8
    return images


def test_augmentation_changes_images_in_training_only():
    augmentation = Augmentation().layers(BACKGROUND, seed=1)
    images = digits()
    np.testing.assert_array_equal(augmentation(images, training=False).numpy(), images)
    distorted = augmentation(images, training=True).numpy()
    assert not np.allclose(distorted, images)
    # What a rotation or shift uncovers is background, never 0 (a grey in these units).
    assert distorted.min() == pytest.approx(BACKGROUND, abs=1e-5)
    assert distorted[:, 0, 0, 0] == pytest.approx(np.full(len(images), BACKGROUND), abs=1e-5)


def test_stroke_width_thickens_and_thins():
    only_strokes = Augmentation(0, 0, 0, 0, stroke=1.0).layers(BACKGROUND, seed=3)
    images = digits(64)
    ink = (only_strokes(images, training=True).numpy() > 0).sum(axis=(1, 2, 3))
    original = (images[0] > 0).sum()
    assert ink.max() > original and ink.min() < original


def test_augmentation_settings_are_params():
    assert Augmentation().params() == {
        "augment_rotation_degrees": 20.0,
        "augment_shear": 0.15,
        "augment_zoom": 0.1,
        "augment_shift": 0.1,
        "augment_stroke": 1.0,
    }


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_gives_probabilities(architecture):
    model = build_cnn(4, num_classes=10, architecture=architecture)
    probabilities = model(digits(2), training=False).numpy()
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="architecture must be one of deeper, classic"):
        build_cnn(4, architecture="resnet")


def test_the_training_dtype_follows_the_cpu_unless_onednn_is_capped(monkeypatch, tmp_path):
    """Read from the CPU's flags, given here, so that every case runs on any CPU."""
    from mnist_pipeline.training import model

    def cpu_with(flags: str) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
        monkeypatch.setattr(model, "Path", lambda _: cpuinfo)

    for flags, dtype in [
        ("avx2 avx512f avx512_bf16", "mixed_bfloat16"),  # AMD EPYC (Zen 4), Intel Cooper Lake
        ("avx2 avx512f amx_bf16 amx_tile", "mixed_bfloat16"),  # Intel Sapphire Rapids
        ("avx2 avx512f", "float32"),
        ("avx2 fma", "float32"),  # many participants' laptops
    ]:
        cpu_with(flags)
        assert training_dtype() == dtype, flags
    # What a participant whose CPU has AVX2 alone trains in, on any CPU.
    cpu_with("avx2 avx512f avx512_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert training_dtype() == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    assert training_dtype() == "mixed_bfloat16"
    # With oneDNN off, TensorFlow's bfloat16 is emulated.
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert training_dtype() == "float32"


@pytest.mark.parametrize(("epochs", "trained"), [(3, 1), (1, 1)])
def test_a_trial_is_pruned_before_its_last_epoch_never_after_it(
    store, monkeypatch, epochs, trained
):
    """A pruner that prunes everything (Optuna's ThresholdPruner above any accuracy) stops a
    three-epoch trial after its first epoch; a one-epoch trial has nothing left to save."""
    import mlflow
    import optuna

    from mnist_pipeline.training import pruning

    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    monkeypatch.setattr(pruning, "trial", study.ask())
    callbacks = pruning.pruning_callbacks()
    model = build_cnn(4, num_classes=10, architecture="classic")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    images, labels = digits(4), np.arange(4)
    experiment = store.client().create_experiment("pruning")
    with mlflow.start_run(experiment_id=experiment) as run:
        history = model.fit(
            images, labels, validation_data=(images, labels), epochs=epochs, verbose=0,
            callbacks=callbacks,
        )  # fmt: skip
    assert len(history.history["val_accuracy"]) == trained
    assert pruning.was_pruned(callbacks) == (trained < epochs)
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags.get("pruned_at_epoch") == ("1" if trained < epochs else None)


def test_the_pictures_logged_with_runs_leave_no_figure_open(tmp_path):
    """A search's trial process trains one model after another, each logging a confusion
    matrix: figures of pyplot's would pile up there (Matplotlib warns past 20)."""
    import cv2
    import matplotlib.pyplot as plt

    from mnist_pipeline import plots

    names = [str(digit) for digit in range(10)]
    before = plt.get_fignums()  # what other code in this process left open (MLflow's evaluator)
    for _ in range(21):
        figure = plots.confusion_matrix(np.arange(100) % 10, np.arange(100) % 7, names)
    figure.savefig(tmp_path / "confusion.png")
    assert plt.get_fignums() == before
    assert cv2.imread(str(tmp_path / "confusion.png")).shape == (600, 700, 3)
