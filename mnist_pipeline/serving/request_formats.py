"""Turning what a client sends to the scoring server into pixels, and answers into records.

Accepted, in any of MLflow's request formats (dataframe_split, dataframe_records,
inputs, instances):

1. a frame of 28 columns: every 28 rows are one image (the workshop's format);
2. a frame of 784 columns: one image per row (columns named by numbers in their order);
3. tensors of shape (28, 28), (n, 28, 28), (n, 28, 28, 1) or (n, 784);
4. a column `image` of base64-encoded PNG or JPEG files, one per row;
5. a column `pixels` of base64-encoded raw pixels, 784 bytes (28 rows of 28) per row: the
   compact form for large batches, since MLflow parses JSON numbers slowly.

Pixels are on the 0-255 scale (not 0-1), white ink on black as in MNIST (an image with light
edges is refused: dark ink on paper, which the model would misread; so is a blank). Anything
else raises UserError with a one-line message saying what was expected.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterator

import numpy as np
import pandas as pd

from mnist_pipeline.data.transform import TransformSpec
from mnist_pipeline.errors import UserError
from mnist_pipeline.serving.picture_to_pixels import FLAT_LEVELS, declared_pixels, image_to_pixels

MAX_IMAGES_PER_REQUEST = 10_000
MAX_FILES_PER_REQUEST = 100
# What the files of one request may declare in all (four 25-megapixel photos): a hundred
# large PNGs would hold the server's cores and gigabytes of memory for minutes.
MAX_REQUEST_PIXELS = 100_000_000
IMAGE_COLUMN = "image"
RAW_COLUMN = "pixels"
SIDE = 28
PIXELS = SIDE * SIDE
# An image's outermost pixels average at most 9 (MNIST) and 108 (Fashion-MNIST) of 255 in
# the datasets' 70,000 images each; inverted, at least 246 and 147.
LIGHT_EDGES = 128


def pixels_from_request(model_input, spec: TransformSpec) -> np.ndarray:
    """Return float32 pixels (n, 28, 28) on the 0-255 scale from a scoring request.

    `model_input` is what MLflow's scoring server hands the model: a DataFrame, a dict
    of named tensors, or an array. Raises UserError for anything it cannot take.
    """
    if isinstance(model_input, dict):  # named tensors: `inputs` or `instances`
        if len(model_input) in (PIXELS, SIDE):  # rows of named pixels, as `instances` sends them
            try:
                model_input = pd.DataFrame(model_input)
            except ValueError:
                raise UserError(
                    "named pixels must each be a list of numbers, all as long"
                ) from None
            return _pixels_from_table(model_input)
        if len(model_input) != 1:
            names = sorted(model_input)
            listed = names if len(names) <= 5 else [*names[:5], f"... ({len(names)} in all)"]
            raise UserError(f"expected one tensor or an {IMAGE_COLUMN!r} input, got {listed}")
        [(name, value)] = model_input.items()
        value = np.asarray(value)
        if name == IMAGE_COLUMN:
            return _decode_files(list(value.ravel()), spec)
        if name == RAW_COLUMN and value.dtype.kind in "OSU":  # base64 text, not numbers
            return _decode_raw(list(value.ravel()), spec)
        return _pixels_from_tensor(value)
    if isinstance(model_input, pd.DataFrame):
        for column, decode in ((IMAGE_COLUMN, _decode_files), (RAW_COLUMN, _decode_raw)):
            if column in model_input.columns:
                if len(model_input.columns) != 1:
                    raise UserError(f"expected only the column {column!r}, no other")
                return decode(model_input[column].tolist(), spec)
        return _pixels_from_table(model_input)
    if isinstance(model_input, (list, np.ndarray)):
        return _pixels_from_tensor(np.asarray(model_input))
    raise UserError(f"expected a frame or a tensor of pixels, got {type(model_input).__name__}")


def _refuse_empty(count: int) -> None:
    if count == 0:
        raise UserError("empty batch: send at least one image")


def _refuse_too_many(count: int, limit: int = MAX_IMAGES_PER_REQUEST, what: str = "images"):
    if count > limit:
        raise UserError(f"{count:,} {what} in one request; at most {limit:,} are accepted")


def _pixels_from_table(frame) -> np.ndarray:
    rows, columns = frame.shape
    _refuse_empty(rows)
    # One column of text: image files, most likely, in a column named otherwise.
    if columns == 1 and not pd.api.types.is_numeric_dtype(frame.dtypes.iloc[0]):
        raise UserError(
            f"expected pixels, or image files in a column named {IMAGE_COLUMN!r} (raw pixels "
            f"in {RAW_COLUMN!r}); got a column named {frame.columns[0]!r}"
        )
    if columns == PIXELS:
        rows_per_image = 1
    elif columns == SIDE and rows % SIDE == 0:
        rows_per_image = SIDE
    else:
        raise UserError(
            f"expected 28 columns with 28 rows per image, or 784 columns with one row per "
            f"image; got {rows} rows x {columns} columns"
        )
    values = _as_numbers(_in_pixel_order(frame).to_numpy())
    return _checked(values.reshape(rows // rows_per_image, SIDE, SIDE))


def _in_pixel_order(frame):
    """`frame` with its columns in the order that their names number them (`0`-`783`,
    `1`-`784`, `pixel0`-`pixel783`, or the same for 28 columns): the keys of a JSON object,
    which is how `dataframe_records` and `instances` send a row, have no order, and
    `json.dumps(sort_keys=True)` sends `0, 1, 10, 100, ...`. Other names keep their order."""
    found = [re.fullmatch(r"\D*(\d+)", str(column)) for column in frame.columns]
    if not all(found):
        return frame
    numbers = [int(match.group(1)) for match in found]
    first = min(numbers)
    if first not in (0, 1) or sorted(numbers) != list(range(first, first + len(numbers))):
        return frame
    return frame.iloc[:, np.argsort(numbers)]


def _pixels_from_tensor(tensor: np.ndarray) -> np.ndarray:
    _refuse_empty(tensor.size)
    if tensor.dtype.kind in "OSU" and tensor.ndim == 1:
        raise UserError(f"expected pixels, or image files in a column named {IMAGE_COLUMN!r}")
    values = _as_numbers(tensor)
    shape = values.shape
    # Every accepted shape becomes (n, 28, 28).
    if shape == (SIDE, SIDE):
        values = values[np.newaxis]
    elif values.ndim == 4 and shape[1:] == (SIDE, SIDE, 1):
        values = values[..., 0]
    elif values.ndim == 2 and shape[1] == PIXELS:
        values = values.reshape(-1, SIDE, SIDE)
    if values.ndim != 3 or values.shape[1:] != (SIDE, SIDE):
        raise UserError(
            f"expected a tensor of shape (28, 28), (n, 28, 28), (n, 28, 28, 1) or (n, 784); "
            f"got {shape}"
        )
    return _checked(values)


def _as_numbers(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "biuf":
        return values.astype(np.float32, copy=False)
    try:
        return values.astype(np.float32)
    except (TypeError, ValueError):
        raise UserError("pixels must be numbers from 0 to 255") from None


def _checked(images: np.ndarray) -> np.ndarray:
    _refuse_too_many(len(images))
    if not np.isfinite(images).all():
        raise UserError(
            "pixels must be finite numbers from 0 to 255 (got NaN or infinity, or a row with "
            "a pixel missing)"
        )
    if images.min() < 0 or images.max() > 255:
        raise UserError(
            f"pixels must be from 0 to 255; got values from {images.min():g} to {images.max():g}"
        )
    peaks = images.reshape(len(images), -1).max(axis=1)
    # Scaled to 0-1 (or booleans), an image is a blank to the model. Per image: one of a
    # batch may be scaled where the others are not.
    if (scaled := np.flatnonzero((peaks > 0) & (peaks <= 1))).size:
        raise UserError(
            f"image {scaled[0] + 1}: pixels must be from 0 to 255, and these reach only "
            f"{peaks[scaled[0]]:g}: multiply values from 0 to 1 by 255"
        )
    return _refuse_blank_or_light(images)


def _refuse_blank_or_light(images: np.ndarray) -> np.ndarray:
    """`images`, unless one is a single flat colour (the model would answer a blank, as it
    does any image) or dark ink on light paper (it would answer that wrongly)."""
    flat_images = images.reshape(len(images), -1)
    lows, peaks = flat_images.min(axis=1), flat_images.max(axis=1)
    if (flat := np.flatnonzero(peaks - lows < FLAT_LEVELS)).size:
        number = flat[0]
        raise UserError(
            f"image {number + 1}: a single flat colour (pixels from {lows[number]:g} to "
            f"{peaks[number]:g}): there is nothing to classify"
        )
    edges = (images[:, 0], images[:, -1], images[:, 1:-1, 0], images[:, 1:-1, -1])
    levels = np.concatenate(edges, axis=1).mean(axis=1)
    if (light := np.flatnonzero(levels >= LIGHT_EDGES)).size:
        raise UserError(
            f"image {light[0] + 1}: its edges are light ({levels[light[0]]:.0f} of 255 on average); "
            "pixels are white ink on black, as in MNIST: invert them (255 - value), or send "
            f"the picture as a file in the column {IMAGE_COLUMN!r}"
        )
    return images


def _decode_raw(encoded: list, spec: TransformSpec) -> np.ndarray:
    _refuse_empty(len(encoded))
    _refuse_too_many(len(encoded))
    images = np.empty((len(encoded), PIXELS), dtype=np.uint8)
    for number, item in enumerate(encoded, start=1):
        data = _base64(item, number)
        if len(data) != PIXELS:
            raise UserError(f"image {number}: {len(data)} raw bytes, expected 784 (28 x 28)")
        images[number - 1] = np.frombuffer(data, dtype=np.uint8)
    return _refuse_blank_or_light(images.reshape(-1, SIDE, SIDE).astype(np.float32))


def _base64(item, number: int) -> bytes:
    if isinstance(item, str):
        if item.startswith("data:"):  # a canvas's toDataURL, copied whole
            raise UserError(f"image {number}: a data: URL; send only the base64 after its comma")
        item = item.encode("ascii", errors="replace")
    if not isinstance(item, bytes):
        raise UserError(f"image {number}: expected a base64 string, got {type(item).__name__}")
    try:
        # Line breaks are allowed, as `base64` and Python's encodebytes write them.
        return base64.b64decode(b"".join(item.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"image {number}: not valid base64") from None


def _decode_files(encoded: list, spec: TransformSpec) -> np.ndarray:
    _refuse_empty(len(encoded))
    _refuse_too_many(len(encoded), MAX_FILES_PER_REQUEST, "image files")
    files = [_base64(item, number) for number, item in enumerate(encoded, start=1)]
    declared = 0
    for number, data in enumerate(files, start=1):  # every header, before any pixel
        with _about_image(number):
            declared += declared_pixels(data)
            if declared > MAX_REQUEST_PIXELS:
                raise UserError(
                    f"with it, the files declare {declared:,} pixels, more than the "
                    f"{MAX_REQUEST_PIXELS:,} accepted in one request: send fewer at a time"
                )
    images = []
    for number, data in enumerate(files, start=1):
        with _about_image(number):
            images.append(image_to_pixels(data, spec.image_style))
    return np.stack(images).astype(np.float32)


@contextlib.contextmanager
def _about_image(number: int) -> Iterator[None]:
    """Say which image of the request a UserError is about."""
    try:
        yield
    except UserError as error:
        raise UserError(f"image {number}: {error}") from None


def answer(probabilities: np.ndarray, class_names) -> object:
    """Return a frame with one record per image: label, class_name, probability."""
    labels = probabilities.argmax(axis=1)
    return pd.DataFrame(
        {
            "label": labels.astype(np.int64),
            "class_name": [class_names[label] for label in labels],
            "probability": probabilities[np.arange(len(labels)), labels].astype(np.float64),
        }
    )


def detailed_answer(probabilities: np.ndarray, class_names, pixels: np.ndarray) -> object:
    """Return `answer` plus, per image, the three likeliest classes and the pixels classified.

    `top` is a list of {class_name, probability}, likeliest first; `pixels` is the 28x28
    image the model saw (uint8 0-255, white on black), base64-encoded like the `pixels` input.
    """
    frame = answer(probabilities, class_names)
    likeliest = np.argsort(-probabilities, axis=1)[:, :3]
    frame["top"] = [
        [{"class_name": class_names[label], "probability": float(row[label])} for label in labels]
        for row, labels in zip(probabilities, likeliest, strict=True)
    ]
    seen = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(len(frame), PIXELS)
    frame["pixels"] = [base64.b64encode(image.tobytes()).decode("ascii") for image in seen]
    return frame
