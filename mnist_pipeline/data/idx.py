"""The IDX format: reading, checking and writing the files MNIST and Fashion-MNIST come in.

An IDX file is a big-endian header (a magic number, then the sizes) followed by uint8
items; the canonical files are gzip-compressed. Every check here raises UserError with
the file's name and what was expected, since a bad file is something a user can fix.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_pipeline.data.catalogue import DatasetSpec, IdxFile
from mnist_pipeline.errors import UserError

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
IMAGE_SIDE = 28
GZIP_MAGIC = b"\x1f\x8b"


def unzipped(data: bytes, name: str) -> bytes:
    """Return the decompressed content of gzip `data`, or `data` itself if it is not gzip."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{name}: corrupt gzip data, cannot read it ({error})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Return the array in an IDX file (gzip-compressed or not).

    Images come back as uint8 of shape (n, 28, 28), labels as uint8 of shape (n,).
    Raises UserError naming the file for anything that is not a well-formed IDX file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file missing") from None
    except OSError as error:
        raise UserError(f"{path.name}: cannot read ({error.strerror})") from None
    return parse_idx(unzipped(data, path.name), path.name)


def parse_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """Return the uint8 array in decompressed IDX bytes; see read_idx."""
    if len(raw) < 8:
        raise UserError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic == IMAGE_MAGIC:
        count, rows, cols = struct.unpack(">III", raw[4:16]) if len(raw) >= 16 else (0, 0, 0)
        if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
            raise UserError(f"{name}: images are {rows}x{cols}, expected 28x28")
        header, shape = 16, (count, rows, cols)
    elif magic == LABEL_MAGIC:
        (count,) = struct.unpack(">I", raw[4:8])
        header, shape = 8, (count,)
    else:
        raise UserError(
            f"{name}: bad IDX magic 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x} (images) "
            f"or 0x{LABEL_MAGIC:08x} (labels)"
        )
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise UserError(f"{name}: {len(raw)} bytes, expected {expected} for {count:,} items")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def check_kind(array: np.ndarray, idx_file: IdxFile, name: str) -> None:
    """Raise UserError if `array` is not what `idx_file` holds (images or labels)."""
    expected_dims = 3 if idx_file.kind == "images" else 1
    if array.ndim != expected_dims:
        held = "images" if array.ndim == 3 else "labels"
        raise UserError(f"{name}: holds {held}, expected {idx_file.kind}")


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write uint8 images (n, 28, 28) or labels (n,) as a gzip-compressed IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim == 3:
        header = struct.pack(">IIII", IMAGE_MAGIC, *array.shape)
    elif array.ndim == 1:
        header = struct.pack(">II", LABEL_MAGIC, array.shape[0])
    else:
        raise ValueError(f"expected images (n, 28, 28) or labels (n,), got shape {array.shape}")
    with gzip.open(path, "wb", compresslevel=6) as handle:
        handle.write(header + array.tobytes())


def read_idx_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 of an IDX file's decompressed content (what the checksums pin)."""
    path = _existing(Path(path))
    return hashlib.sha256(unzipped(path.read_bytes(), path.name)).hexdigest()


@dataclass
class Dataset:
    """The four arrays of a dataset folder: uint8 images (n, 28, 28) and labels (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_folder(folder: str | os.PathLike, spec: DatasetSpec) -> Dataset:
    """Read the four files of `spec` from `folder`, checking that they fit together."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder of IDX files")
    arrays = {}
    for idx_file in spec.files:
        path = _existing(folder / idx_file.name)
        array = read_idx(path)
        check_kind(array, idx_file, path.name)
        arrays[(idx_file.split, idx_file.kind)] = array
    for split in ("train", "test"):
        images, labels = arrays[(split, "images")], arrays[(split, "labels")]
        if images.shape[0] != labels.shape[0]:
            raise UserError(
                f"{folder}: {split} set has {images.shape[0]:,} images "
                f"but {labels.shape[0]:,} labels"
            )
        if labels.size and labels.max() >= len(spec.class_names):
            raise UserError(
                f"{folder}: {split} labels go up to {labels.max()}, "
                f"expected 0-{len(spec.class_names) - 1}"
            )
    return Dataset(
        arrays[("train", "images")],
        arrays[("train", "labels")],
        arrays[("test", "images")],
        arrays[("test", "labels")],
    )


def _existing(path: Path) -> Path:
    """Return `path`, or the same file decompressed by hand (without `.gz`), whichever exists."""
    if path.exists():
        return path
    unpacked = path.with_name(path.name.removesuffix(".gz"))
    if unpacked.exists():
        return unpacked
    raise UserError(f"{path}: file missing")
