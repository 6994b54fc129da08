"""The pip requirements logged with each model: the installed version of each package it imports.

Given no requirements, MLflow infers them when a model is logged by loading the model in
a new Python process and recording what it imports: about 8 CPU-seconds for a Keras
model, paid by every train run and every trial of a batch. The models here import a
known, short list of packages, so their pins are written out instead. Each entry lists
the names a package may be installed under, the usual one first.
"""

from __future__ import annotations

import importlib.metadata

# What the trained Keras model imports when MLflow loads it.
KERAS_MODEL_PACKAGES = (
    ("mlflow",),
    ("tensorflow-cpu", "tensorflow"),
    ("keras",),
    ("numpy",),
)
# What the served model (served_model.py, with its picture decoding) imports.
SERVED_MODEL_PACKAGES = (
    *KERAS_MODEL_PACKAGES,
    ("pandas",),
    ("opencv-python-headless", "opencv-python"),
    ("pillow",),
)


def pinned(packages: tuple[tuple[str, ...], ...]) -> list[str]:
    """Return `name==version` for the installed name of each package in `packages`."""
    pins = []
    for alternatives in packages:
        for name in alternatives:
            try:
                pins.append(f"{name}=={importlib.metadata.version(name)}")
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return pins
