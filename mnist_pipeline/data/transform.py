"""The one preprocessing transform, shared by training and by the served model.

preprocess.py measures the pixels (or takes explore_data's figures), writes a
TransformSpec (`transform.json`) and the arrays it normalised (`arrays/<split>.npz`)
into its run; train.py reads those arrays; package_model.py bundles the very same
`transform.json` and this module into the served model, which applies `normalize` to
what clients send. There is no second copy.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mnist_pipeline.errors import UserError

IMAGE_SHAPE = (28, 28)
TRANSFORM_FILE = "transform.json"
# A preprocess run's arrays: arrays/train.npz and arrays/test.npz, each holding
# x, float32 (n, 28, 28, 1), normalised, and y, uint8 (n,).
ARRAYS_DIR = "arrays"


@dataclass(frozen=True)
class TransformSpec:
    """What training saw: pixels (0-255) become (pixel - mean) / std, float32 (n, 28, 28, 1).

    `image_style` says how a picture file is fitted into 28x28: "digit" (crop to the
    ink, fit into 20x20, centre by centre of mass, as MNIST was made) or "object"
    (crop, fit into 28x28 and pad, as Fashion-MNIST was made).
    """

    dataset: str
    mean: float
    std: float
    class_names: tuple[str, ...]
    image_shape: tuple[int, int] = IMAGE_SHAPE
    image_style: str = "digit"

    def __post_init__(self):
        if not np.isfinite(self.std) or self.std <= 0:
            raise UserError(f"std must be a positive number, got {self.std}")
        if not np.isfinite(self.mean):
            raise UserError(f"mean must be a finite number, got {self.mean}")
        if self.image_style not in ("digit", "object"):
            raise UserError(f"image_style must be 'digit' or 'object', got {self.image_style!r}")

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TransformSpec:
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not a transform spec ({error})") from None
        values["class_names"] = tuple(values["class_names"])
        values["image_shape"] = tuple(values["image_shape"])
        return cls(**values)


def normalize(images: np.ndarray, spec: TransformSpec) -> np.ndarray:
    """Return float32 (n, 28, 28, 1) from pixels (n, 28, 28) or (n, 784) on the 0-255 scale."""
    pixels = np.asarray(images, dtype=np.float32).reshape((-1, *spec.image_shape, 1))
    return (pixels - np.float32(spec.mean)) / np.float32(spec.std)


def pixel_statistics(images: np.ndarray) -> tuple[float, float]:
    """Return the mean and standard deviation of all pixels, on the 0-255 scale."""
    pixels = np.asarray(images, dtype=np.float64)
    return float(pixels.mean()), float(pixels.std())


def arrays_path(folder: str | os.PathLike, split: str) -> Path:
    """Return where a preprocess run's artifacts in `folder` keep `split` ("train", "test")."""
    return Path(folder) / ARRAYS_DIR / f"{split}.npz"


def save_arrays(folder: str | os.PathLike, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """Write normalised images `x` and labels `y` to arrays/<split>.npz under `folder`."""
    path = arrays_path(folder, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=x, y=y)


def load_arrays(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y) from arrays/<split>.npz under `folder`; see save_arrays."""
    with np.load(arrays_path(folder, split)) as arrays:
        return arrays["x"], arrays["y"]
