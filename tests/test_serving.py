"""The packaged model behind `mlflow models serve`: every request format, pictures, refusals.

The session's scoring server (conftest `model_server`) serves the tiny pipeline's model,
started as a participant would start it. Requests go over HTTP exactly as curl would send them; the
answers are checked record by record. Bad requests must get a 400 whose last line is our
one-line reason, with no traceback and no file path, and the server must keep serving.

Every refusal is checked on the request parser itself, given what MLflow's scoring server
would hand the model for the same JSON body; a handful of them also go through the server.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from conftest import REPO, ModelServer, drawing
from mlflow.pyfunc.scoring_server import infer_and_parse_data

from mnist_pipeline.data.transform import TransformSpec
from mnist_pipeline.errors import UserError
from mnist_pipeline.serving import request_formats as serving
from mnist_pipeline.serving.picture_to_pixels import (
    MAX_IMAGE_PIXELS,
    image_to_pixels,
)

COLUMNS = [str(column) for column in range(28)]
WIDE_COLUMNS = [str(column) for column in range(784)]
DIGITS = [2, 7, 0, 9]
# The one-liner the README documents for sending a PNG as it is.
README_CURL = r"""echo "{\"dataframe_records\": [{\"image\": \"$(base64 < my_digit.png | tr -d '\n')\"}]}" | curl -s -H 'Content-Type: application/json' -d @- localhost:5000/invocations"""  # noqa: E501


# --- the server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_server):
    """The session's scoring server (conftest), serving the tiny pipeline's model.

    Module-scoped, so that this module's tests run in one worker, with one server.
    """
    return model_server


# --- pictures and payloads --------------------------------------------------------------


def encoded(image: np.ndarray, extension: str = ".png", *params: int) -> bytes:
    ok, data = cv2.imencode(extension, image, list(params))
    assert ok
    return data.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def glyph_png(digit: int) -> bytes:
    """A small white-on-black glyph like those the tiny model learnt."""
    return encoded(drawing(digit, size=(64, 64), ink=255, paper=0, scale=1.5, thickness=3))


def glyph_pixels(digits) -> np.ndarray:
    """uint8 (n, 28, 28): the glyphs fitted into 28x28, as MNIST images are."""
    return np.stack([image_to_pixels(glyph_png(digit)) for digit in digits])


def frame_split(images: np.ndarray) -> dict:
    rows = np.concatenate(list(images)).tolist()
    return {"dataframe_split": {"columns": COLUMNS, "data": rows}}


def frame_records(images: np.ndarray) -> dict:
    rows = np.concatenate(list(images)).astype(int).tolist()
    return {"dataframe_records": [dict(zip(COLUMNS, row, strict=True)) for row in rows]}


def wide_split(images: np.ndarray) -> dict:
    rows = images.reshape(len(images), 784).astype(int).tolist()
    return {"dataframe_split": {"columns": WIDE_COLUMNS, "data": rows}}


def wide_records(images: np.ndarray) -> dict:
    rows = images.reshape(len(images), 784).astype(int).tolist()
    return {"dataframe_records": [dict(zip(WIDE_COLUMNS, row, strict=True)) for row in rows]}


def image_records(*files: bytes) -> dict:
    return {"dataframe_records": [{"image": b64(data)} for data in files]}


def predictions(response: requests.Response) -> list[dict]:
    """The records of a 200 answer, each checked to be {label, class_name, probability}."""
    assert response.status_code == 200, response.text[-2000:]
    body = response.json()
    assert set(body) == {"predictions"}, body
    for record in body["predictions"]:
        assert set(record) == {"label", "class_name", "probability"}, record
        assert isinstance(record["label"], int)
        assert record["class_name"] == str(record["label"])
        assert isinstance(record["probability"], float)
        assert 0.0 <= record["probability"] <= 1.0
    return body["predictions"]


def labels(response: requests.Response) -> list[int]:
    return [record["label"] for record in predictions(response)]


def assert_no_internals(text: str) -> None:
    for leak in ("Traceback", "stack_trace", 'File "', "/work/", '.py"', str(REPO)):
        assert leak not in text, f"the answer shows {leak!r}:\n{text[-3000:]}"


def our_line(response: requests.Response) -> str:
    """Our one-line reason, from a 400 that the scoring server wrapped around it."""
    assert response.status_code == 400, response.text[-2000:]
    assert_no_internals(response.text)
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE", body
    message = body["message"]
    assert message.startswith("Failed to predict data '"), message[-2000:]
    assert "\nError: " in message, message[-2000:]
    line = message.rsplit("\nError: ", 1)[1]
    assert line and "\n" not in line and line == line.strip(), repr(line)
    return line


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height grey pixels, followed by almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def good_request() -> tuple[dict, int]:
    return {"inputs": glyph_pixels([3])[0].tolist()}, 3


def assert_still_serving(server: ModelServer) -> None:
    payload, digit = good_request()
    assert labels(server.post(payload)) == [digit]


# --- every request format ---------------------------------------------------------------


def files_of(images: np.ndarray) -> list[str]:
    return [b64(encoded(image)) for image in images]


def raw_rows(images: np.ndarray) -> list[str]:
    """Each image as base64 of its 784 raw bytes: the compact `pixels` column."""
    return [b64(image.astype(np.uint8).tobytes()) for image in images]


FORMATS = [
    pytest.param(lambda im: frame_split(im[:1]), 1, id="frame-split-one-28x28-image"),
    pytest.param(frame_split, len(DIGITS), id="frame-split-stacked-28-row-blocks"),
    pytest.param(frame_records, len(DIGITS), id="frame-records-stacked-28-row-blocks"),
    pytest.param(wide_split, len(DIGITS), id="split-784-columns-one-row-per-image"),
    pytest.param(wide_records, len(DIGITS), id="records-784-columns-one-row-per-image"),
    pytest.param(lambda im: {"inputs": im[0].tolist()}, 1, id="inputs-28x28"),
    pytest.param(lambda im: {"inputs": im.tolist()}, len(DIGITS), id="inputs-n-28-28"),
    pytest.param(lambda im: {"inputs": im[..., None].tolist()}, len(DIGITS), id="inputs-n-28-28-1"),
    pytest.param(
        lambda im: {"inputs": im.reshape(-1, 784).tolist()}, len(DIGITS), id="inputs-n-784"
    ),
    pytest.param(lambda im: {"instances": im.tolist()}, len(DIGITS), id="instances-n-28-28"),
    pytest.param(
        lambda im: {"dataframe_records": [{"image": f} for f in files_of(im)]},
        len(DIGITS),
        id="image-files-records",
    ),
    pytest.param(
        lambda im: {"dataframe_split": {"columns": ["image"], "data": [[f] for f in files_of(im)]}},
        len(DIGITS),
        id="image-files-split",
    ),
    pytest.param(
        lambda im: {"inputs": {"image": files_of(im)}}, len(DIGITS), id="image-files-inputs"
    ),
    pytest.param(
        lambda im: {"instances": [{"image": f} for f in files_of(im)]},
        len(DIGITS),
        id="image-files-instances",
    ),
    pytest.param(
        lambda im: {"dataframe_records": [{"pixels": row} for row in raw_rows(im)]},
        len(DIGITS),
        id="raw-pixels-records",
    ),
    pytest.param(
        lambda im: {
            "dataframe_split": {"columns": ["pixels"], "data": [[r] for r in raw_rows(im)]}
        },
        len(DIGITS),
        id="raw-pixels-split",
    ),
    pytest.param(
        lambda im: {"inputs": {"pixels": raw_rows(im)}}, len(DIGITS), id="raw-pixels-inputs"
    ),
    pytest.param(
        lambda im: {"instances": [{"pixels": row} for row in raw_rows(im)]},
        len(DIGITS),
        id="raw-pixels-instances",
    ),
]


@pytest.mark.parametrize(("build", "count"), FORMATS)
def test_every_request_format_gives_one_record_per_image(server, build, count):
    images = glyph_pixels(DIGITS)
    response = server.post(build(images))
    assert labels(response) == DIGITS[:count]
    assert all(record["probability"] > 0.5 for record in predictions(response))
    assert_no_internals(response.text)


def test_the_models_own_serving_example_is_answered(server, pipeline):
    example = (pipeline["model_dir"] / "serving_input_example.json").read_text()
    assert len(predictions(server.post(example))) == 1


# --- pictures as files ------------------------------------------------------------------


def rgba_on_transparent(digit: int, ink: int) -> bytes:
    """Strokes of grey `ink` on a fully transparent canvas, as a paint program saves them."""
    strokes = drawing(digit, corner="bottom-right", ink=255, paper=0)
    rgba = np.zeros((*strokes.shape, 4), dtype=np.uint8)
    rgba[..., :3] = ink
    rgba[..., 3] = strokes
    return encoded(rgba)


PICTURES = [
    pytest.param(
        4, lambda d: encoded(drawing(d, corner="top-left")), id="png-black-on-white-top-left"
    ),
    pytest.param(
        8,
        lambda d: encoded(drawing(d, corner="bottom-right")),
        id="png-black-on-white-bottom-right",
    ),
    pytest.param(
        6,
        lambda d: encoded(drawing(d, size=(1600, 1200), corner="top-right", scale=8, thickness=20)),
        id="png-large-photo-size",
    ),
    pytest.param(5, lambda d: rgba_on_transparent(d, ink=0), id="rgba-black-on-transparent"),
    pytest.param(1, lambda d: rgba_on_transparent(d, ink=255), id="rgba-white-on-transparent"),
    pytest.param(
        3,
        lambda d: encoded(drawing(d, corner="bottom-left"), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 70),
        id="jpeg-black-on-white",
    ),
    pytest.param(
        9,
        lambda d: encoded(drawing(d, ink=(235, 245, 255), paper=(80, 30, 10)), ".jpg"),
        id="jpeg-white-on-dark-blue-colour",
    ),
    pytest.param(
        2,
        lambda d: encoded(drawing(d, corner="top-right", ink=(255, 255, 255), paper=(0, 0, 0))),
        id="png-white-on-black-colour",
    ),
    pytest.param(
        7,
        lambda d: encoded(
            drawing(d, corner="bottom-left", ink=(200, 60, 0), paper=(240, 250, 255))
        ),
        id="png-blue-ink-on-cream-paper",
    ),
    pytest.param(
        0,
        lambda d: encoded(drawing(d).astype(np.uint16) * 257),
        id="png-16-bit-grey",
    ),
]


@pytest.mark.parametrize(("digit", "make"), PICTURES)
def test_a_picture_file_is_classified(server, digit, make):
    assert labels(server.post(image_records(make(digit)))) == [digit]


def test_a_drawing_black_on_white_off_centre_on_a_large_canvas(server):
    """The workshop's case: a thick black digit near a corner of a 400x300 white PNG."""
    picture = drawing(4, size=(400, 300), corner="top-left", ink=0, paper=255, thickness=12)
    assert picture.shape == (300, 400) and picture[150:, 200:].min() == 255  # far from centre
    assert labels(server.post(image_records(encoded(picture)))) == [4]


def test_several_files_in_one_request_keep_their_order(server):
    files = [encoded(drawing(d, corner=c)) for d, c in ((1, "top-left"), (6, "bottom-right"))]
    files.append(encoded(drawing(8, ink=255, paper=0), ".jpg"))
    assert labels(server.post(image_records(*files))) == [1, 6, 8]


def test_as_many_files_as_the_limit_are_accepted(server):
    files = [glyph_png(digit % 10) for digit in range(serving.MAX_FILES_PER_REQUEST)]
    assert labels(server.post(image_records(*files))) == [
        digit % 10 for digit in range(serving.MAX_FILES_PER_REQUEST)
    ]


def test_the_same_picture_as_pixels_and_as_png_gets_the_same_answer(server):
    png = encoded(drawing(7, corner="bottom-right", thickness=12))
    pixels = image_to_pixels(png)
    from_frame = predictions(server.post(frame_split(pixels[None])))
    from_png = predictions(server.post(image_records(png)))
    assert from_frame[0]["label"] == from_png[0]["label"] == 7
    assert from_frame[0]["probability"] == pytest.approx(from_png[0]["probability"], abs=1e-6)
    # The 28x28 pixels themselves, saved as a PNG, are the same digit too.
    assert labels(server.post(image_records(encoded(pixels)))) == [7]


def test_a_camera_jpeg_with_a_multi_picture_thumbnail_is_a_jpeg(server):
    """Cameras and phones append a preview (CIPA Multi-Picture); Pillow names the file "MPO".

    The file is still a .jpg that every viewer and OpenCV decode as its first picture.
    """
    from PIL import Image

    picture = Image.fromarray(drawing(5, corner="top-right")).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, "MPO", save_all=True, append_images=[picture.resize((200, 150))])
    data = buffer.getvalue()
    assert data[:2] == b"\xff\xd8" and cv2.imdecode(np.frombuffer(data, np.uint8), 1) is not None
    assert labels(server.post(image_records(data))) == [5]


def test_a_jpeg_rotated_by_its_exif_orientation_is_read_upright(server):
    """Phones store the sensor's pixels and an EXIF Orientation tag; viewers show it upright."""
    from PIL import Image, ImageOps

    upright = drawing(7, corner="top-left", thickness=12)
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright)))  # turned a quarter left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    assert shown.shape == upright.shape  # what a viewer shows is the upright drawing
    assert labels(server.post(image_records(buffer.getvalue()))) == [7]


# --- refusals ---------------------------------------------------------------------------


def halved(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bad_pixels(value) -> np.ndarray:
    return np.full((28, 28), value, dtype=object)


BAD_INPUTS = [
    # wrong shapes
    pytest.param(
        lambda: {"inputs": [[1, 2, 3]]},
        "expected a tensor of shape (28, 28), (n, 28, 28), (n, 28, 28, 1) or (n, 784); got (1, 3)",
        id="tensor-1x3",
    ),
    pytest.param(
        lambda: {"inputs": np.zeros((2, 28, 28, 3), int).tolist()},
        "expected a tensor of shape (28, 28), (n, 28, 28), (n, 28, 28, 1) or (n, 784)",
        id="tensor-rgb-n-28-28-3",
    ),
    pytest.param(
        lambda: {"dataframe_split": {"columns": COLUMNS, "data": [[0] * 28] * 27}},
        "expected 28 columns with 28 rows per image, or 784 columns with one row per image; "
        "got 27 rows x 28 columns",
        id="frame-27-rows",
    ),
    pytest.param(
        lambda: {"dataframe_records": [{str(c): 0 for c in range(100)}]},
        "expected 28 columns with 28 rows per image, or 784 columns",
        id="frame-100-columns",
    ),
    pytest.param(
        lambda: {"inputs": [b64(glyph_png(3))]},
        "expected pixels, or image files in a column named 'image'",
        id="files-without-the-image-column",
    ),
    pytest.param(
        lambda: {"dataframe_split": {"columns": ["image", "name"], "data": [["AAAA", "x"]]}},
        "expected only the column 'image', no other",
        id="image-column-with-another",
    ),
    pytest.param(
        lambda: {"inputs": {"a": [1], "b": [2]}},
        "expected one tensor or an 'image' input",
        id="two-named-tensors",
    ),
    pytest.param(
        lambda: {"inputs": {f"x{number}": [0] for number in range(100)}},
        "expected one tensor or an 'image' input, got ['x0', 'x1', 'x10', 'x11', 'x12', "
        "'... (100 in all)']",
        id="a-hundred-named-tensors",
    ),
    pytest.param(
        lambda: {"instances": [{"image": b64(glyph_png(3)), "note": "hi"}]},
        "expected one tensor or an 'image' input, got ['image', 'note']",
        id="image-input-with-another",
    ),
    pytest.param(
        lambda: {"dataframe_records": [{"picture": b64(glyph_png(3))}]},
        "expected pixels, or image files in a column named 'image' (raw pixels in 'pixels'); "
        "got a column named 'picture'",
        id="files-in-a-column-named-otherwise",
    ),
    # empty batches
    pytest.param(lambda: {"inputs": []}, "empty batch", id="empty-tensor"),
    pytest.param(lambda: {"dataframe_records": []}, "empty batch", id="empty-records"),
    pytest.param(
        lambda: {"dataframe_split": {"columns": COLUMNS, "data": []}},
        "empty batch",
        id="empty-frame",
    ),
    pytest.param(
        lambda: {"dataframe_split": {"columns": ["image"], "data": []}},
        "empty batch",
        id="empty-image-column",
    ),
    # pixels that are not numbers from 0 to 255
    pytest.param(
        lambda: frame_split(bad_pixels("x")[None]),
        "pixels must be numbers from 0 to 255",
        id="frame-of-letters",
    ),
    pytest.param(
        lambda: {"inputs": bad_pixels("white").tolist()},
        "pixels must be numbers from 0 to 255",
        id="tensor-of-words",
    ),
    pytest.param(
        lambda: frame_split(bad_pixels(None)[None]),
        "pixels must be finite numbers from 0 to 255 (got NaN or infinity",
        id="frame-of-nulls",
    ),
    pytest.param(
        lambda: json.dumps(
            {"inputs": np.full((28, 28), np.nan).tolist()}
        ),  # NaN, as Python writes it
        "pixels must be finite numbers from 0 to 255 (got NaN or infinity",
        id="tensor-of-NaN",
    ),
    pytest.param(
        lambda: '{"inputs": [[' + ", ".join(["1e400"] * 784) + "]]}",  # overflows to infinity
        "pixels must be finite numbers from 0 to 255 (got NaN or infinity",
        id="tensor-of-infinity",
    ),
    pytest.param(
        lambda: {
            "dataframe_records": [
                *wide_records(glyph_pixels([3]))["dataframe_records"],
                {str(pixel): 0 for pixel in range(783)},  # the last pixel left out
            ]
        },
        "(got NaN or infinity, or a row with a pixel missing)",
        id="records-with-a-pixel-missing",
    ),
    pytest.param(
        lambda: frame_split(np.full((1, 28, 28), 300)),
        "pixels must be from 0 to 255; got values from 300 to 300",
        id="pixels-above-255",
    ),
    pytest.param(
        lambda: {"inputs": np.full((1, 784), -1).tolist()},
        "pixels must be from 0 to 255; got values from -1 to -1",
        id="negative-pixels",
    ),
    pytest.param(
        lambda: {"inputs": (glyph_pixels([3]) / 255.0).tolist()},
        "image 1: pixels must be from 0 to 255, and these reach only 1: multiply values from 0 "
        "to 1 by 255",
        id="pixels-from-0-to-1",
    ),
    pytest.param(  # one image of a batch scaled, the others not
        lambda: {"inputs": np.concatenate([glyph_pixels([3]), glyph_pixels([5]) / 255.0]).tolist()},
        "image 2: pixels must be from 0 to 255, and these reach only 1",
        id="one-image-from-0-to-1",
    ),
    # a blank, as pixels: the model would answer it, as it answers any image
    pytest.param(
        lambda: {"inputs": np.zeros((1, 784)).tolist()},
        "image 1: a single flat colour (pixels from 0 to 0): there is nothing to classify",
        id="blank-pixels",
    ),
    pytest.param(
        lambda: {"inputs": np.concatenate([glyph_pixels([3]), np.full((1, 28, 28), 2)]).tolist()},
        "image 2: a single flat colour (pixels from 2 to 2)",
        id="one-blank-of-a-batch",
    ),
    pytest.param(
        lambda: {"dataframe_records": [{"pixels": b64(bytes(784))}]},
        "image 1: a single flat colour (pixels from 0 to 0)",
        id="blank-raw-pixels",
    ),
    # dark ink on light paper, as pixels: the model would answer it, wrongly
    pytest.param(
        lambda: frame_split(np.concatenate([glyph_pixels([3]), 255 - glyph_pixels([5])])),
        "image 2: its edges are light (255 of 255 on average); pixels are white ink on black, "
        "as in MNIST: invert them (255 - value), or send the picture as a file in the column "
        "'image'",
        id="inverted-pixels",
    ),
    pytest.param(
        lambda: {
            "dataframe_records": [{"pixels": row} for row in raw_rows(255 - glyph_pixels([7]))]
        },
        "image 1: its edges are light",
        id="inverted-raw-pixels",
    ),
    # image files that cannot be read
    pytest.param(
        lambda: {"dataframe_records": [{"image": "this is not base64!"}]},
        "image 1: not valid base64",
        id="undecodable-base64",
    ),
    pytest.param(
        lambda: {"dataframe_records": [{"image": "data:image/png;base64," + b64(glyph_png(3))}]},
        "image 1: a data: URL; send only the base64 after its comma",
        id="data-url",
    ),
    pytest.param(
        lambda: {"dataframe_records": [{"image": b64(glyph_png(1))}, {"image": "%%%"}]},
        "image 2: not valid base64",
        id="second-file-undecodable",
    ),
    pytest.param(
        lambda: {"dataframe_records": [{"image": 42}]},
        "image 1: expected a base64 string, got int",
        id="file-not-a-string",
    ),
    pytest.param(
        lambda: image_records(b"%PDF-1.4 a document, not a picture"),
        "image 1: bytes are not a PNG or JPEG image",
        id="bytes-not-an-image",
    ),
    pytest.param(
        lambda: image_records(b""), "image 1: bytes are not a PNG or JPEG image", id="no-bytes"
    ),
    pytest.param(
        lambda: image_records(encoded(drawing(3), ".bmp")),
        "image 1: image is BMP, expected PNG or JPEG",
        id="bmp-file",
    ),
    pytest.param(
        lambda: image_records(halved(encoded(drawing(3)))),
        "image 1: image data is damaged and cannot be decoded",
        id="truncated-png",
    ),
    pytest.param(
        lambda: image_records(encoded(np.array([[0, 255], [255, 255]], np.uint8))),
        "image 1: image is 2x2 pixels: too small to hold a digit (at least 8 on its longer side)",
        id="png-2x2",
    ),
    pytest.param(
        lambda: image_records(encoded(np.full((300, 400), 255, np.uint8))),
        "image 1: image is a single flat colour: there is nothing to classify",
        id="blank-page",
    ),
    # decompression bombs: refused from the header, before any pixel is decoded
    pytest.param(
        lambda: image_records(encoded(np.zeros((6000, 6000), np.uint8))),
        f"image 1: image declares 6000x6000 pixels, more than the {MAX_IMAGE_PIXELS:,} accepted",
        id="png-6000x6000-zeros",
    ),
    pytest.param(
        lambda: image_records(png_declaring(6000, 6000)),
        f"image 1: image declares 6000x6000 pixels, more than the {MAX_IMAGE_PIXELS:,} accepted",
        id="png-header-6000x6000-without-the-pixels",
    ),
    pytest.param(
        lambda: image_records(encoded(np.zeros((6000, 6000), np.uint8), ".jpg")),
        f"image 1: image declares 6000x6000 pixels, more than the {MAX_IMAGE_PIXELS:,} accepted",
        id="jpeg-6000x6000",
    ),
    pytest.param(
        lambda: image_records(png_declaring(15000, 15000)),
        f"than the {MAX_IMAGE_PIXELS:,} accepted",  # beyond Pillow's own limit, still our line
        id="png-header-15000x15000",
    ),
    pytest.param(  # each under the file's limit, together over the request's
        lambda: image_records(*[png_declaring(4000, 6000)] * 5),
        "image 5: with it, the files declare 120,000,000 pixels, more than the 100,000,000 "
        "accepted in one request: send fewer at a time",
        id="five-24-megapixel-headers",
    ),
    # too many images in one request
    pytest.param(
        lambda: image_records(*[glyph_png(1)] * (serving.MAX_FILES_PER_REQUEST + 1)),
        f"{serving.MAX_FILES_PER_REQUEST + 1:,} image files in one request; "
        f"at most {serving.MAX_FILES_PER_REQUEST} are accepted",
        id="too-many-files",
    ),
    pytest.param(
        lambda: frame_split(np.zeros((serving.MAX_IMAGES_PER_REQUEST + 1, 28, 28), np.uint8)),
        f"{serving.MAX_IMAGES_PER_REQUEST + 1:,} images in one request; "
        f"at most {serving.MAX_IMAGES_PER_REQUEST:,} are accepted",
        id="too-many-pixel-images",
    ),
    pytest.param(
        lambda: {"dataframe_records": [{"pixels": b64(bytes(783))}]},
        "image 1: 783 raw bytes, expected 784 (28 x 28)",
        id="raw-pixels-short-row",
    ),
    pytest.param(
        lambda: {"dataframe_records": [{"pixels": "not base64!"}]},
        "image 1: not valid base64",
        id="raw-pixels-bad-base64",
    ),
]


SPEC = TransformSpec("mnist", mean=33.3, std=78.5, class_names=tuple("0123456789"))
# Through the live server as well: one of each kind of refusal.
THROUGH_THE_SERVER = {
    "tensor-1x3",
    "empty-records",
    "tensor-of-NaN",
    "second-file-undecodable",
    "png-header-15000x15000",
    "five-24-megapixel-headers",
    "too-many-files",
}


def as_the_server_parses(body) -> object:
    """What MLflow's scoring server hands the model for the JSON `body` (a str or a dict)."""
    text = body if isinstance(body, str) else json.dumps(body)
    return infer_and_parse_data(json.loads(text))


@pytest.mark.parametrize(("payload", "expected"), BAD_INPUTS)
def test_bad_input_is_refused_with_one_line_saying_what_was_expected(payload, expected):
    with pytest.raises(UserError) as refused:
        serving.pixels_from_request(as_the_server_parses(payload()), SPEC)
    message = str(refused.value)
    assert expected in message
    assert "\n" not in message and message == message.strip()


@pytest.mark.parametrize(
    ("payload", "expected"), [case for case in BAD_INPUTS if case.id in THROUGH_THE_SERVER]
)
def test_bad_input_is_a_400_with_one_line_saying_what_was_expected(server, payload, expected):
    response = server.post(payload())
    assert expected in our_line(response)
    assert_still_serving(server)


def test_a_decompression_bomb_is_refused_without_decoding(monkeypatch):
    """In process: the size check comes from the header; OpenCV is never asked to decode."""

    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called on a decompression bomb")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    bomb = encoded(np.zeros((6000, 6000), np.uint8))
    assert len(bomb) < 200_000
    with pytest.raises(UserError, match="declares 6000x6000 pixels"):
        image_to_pixels(bomb)


def test_pixel_image_limit_is_exact():
    """In process (no model): MAX_IMAGES_PER_REQUEST images pass, one more is refused."""
    limit = serving.MAX_IMAGES_PER_REQUEST
    three = glyph_pixels([3])
    assert len(serving.pixels_from_request(np.repeat(three, limit, axis=0), None)) == limit
    with pytest.raises(UserError, match="at most"):
        serving.pixels_from_request(np.repeat(three, limit + 1, axis=0), None)


def named_pixel_rows(images: np.ndarray, names: list[str]) -> list[dict]:
    """Each image as a JSON object of its pixels under `names`, the keys sorted as text (as
    `json.dumps(sort_keys=True)`, Go's maps and serde_json write them)."""
    rows = images.reshape(len(images), -1).astype(int).tolist()
    return [dict(sorted(zip(names, row, strict=True))) for row in rows]


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda im: {"dataframe_records": named_pixel_rows(im, WIDE_COLUMNS)},
            id="records-784-keys-sorted-as-text",
        ),
        pytest.param(
            lambda im: {"dataframe_records": named_pixel_rows(im.reshape(-1, 28), COLUMNS)},
            id="records-28-keys-sorted-as-text",
        ),
        pytest.param(
            lambda im: {
                "dataframe_records": named_pixel_rows(im, [f"pixel{n}" for n in range(784)])
            },
            id="records-pixel0-to-pixel783",
        ),
        pytest.param(
            lambda im: {
                "dataframe_records": [
                    dict(reversed(row.items()))
                    for row in named_pixel_rows(im, [str(n) for n in range(1, 785)])
                ]
            },
            id="records-1-to-784-reversed",
        ),
        pytest.param(
            lambda im: {"instances": named_pixel_rows(im, WIDE_COLUMNS)},
            id="instances-of-784-named-pixels",
        ),
    ],
)
def test_named_pixels_are_read_in_the_order_their_names_number_them(build):
    """In process: a JSON object's keys have no order, so a row's pixels are taken by name."""
    images = glyph_pixels(DIGITS)
    body = build(images)
    read = serving.pixels_from_request(as_the_server_parses(body), SPEC)
    np.testing.assert_array_equal(read, images)


def test_a_request_without_json_is_refused_without_internals(server):
    response = server.post("this is not JSON")
    assert response.status_code == 400
    assert_no_internals(response.text)
    assert_still_serving(server)


# --- the documented commands ------------------------------------------------------------


def run_shell(command: str, cwd: Path, env: dict, timeout: float = 60) -> str:
    result = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
def test_the_readme_curl_one_liner_sends_a_png(server, tmp_path):
    (tmp_path / "my_digit.png").write_bytes(encoded(drawing(6, corner="bottom-left")))
    command = README_CURL.replace("localhost:5000", f"localhost:{server.port}")
    assert command != README_CURL
    answer = json.loads(run_shell(command, tmp_path, server.env))
    assert [record["label"] for record in answer["predictions"]] == [6]


def test_the_readme_documents_this_one_liner_and_the_limits():
    # The guide: the README and its chapters (the one-liner in 3, the limits in reference.md).
    readme = "".join(
        path.read_text() for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    )
    assert README_CURL in readme
    assert f"at most {serving.MAX_IMAGES_PER_REQUEST:,} images" in readme
    assert f"{serving.MAX_FILES_PER_REQUEST} image files" in readme
    assert f"at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels" in readme
    assert f"request {serving.MAX_REQUEST_PIXELS // 1_000_000} megapixels in all" in readme


def png_to_pandas(server: ModelServer, pipeline, folder: Path, *args: str):
    store = pipeline["store"]
    command = [sys.executable, str(REPO / "png_to_pandas.py"), *args, "--port", str(server.port)]
    return store.run(command, cwd=folder, timeout=120)


def test_png_to_pandas_example_json_is_answered(server, pipeline, tmp_path):
    (tmp_path / "my_digit.png").write_bytes(encoded(drawing(4, corner="bottom-right")))
    result = png_to_pandas(server, pipeline, tmp_path, "my_digit.png")
    curl = (
        f"curl -d @example.json -H 'Content-Type: application/json' "
        f"localhost:{server.port}/invocations"
    )
    assert result.stdout.strip().splitlines()[-1] == curl
    request = json.loads((tmp_path / "example.json").read_text())
    assert set(request) == {"dataframe_split"}
    assert labels(server.post(request)) == [4]
    if shutil.which("curl"):
        answer = json.loads(run_shell(curl, tmp_path, server.env))
        assert [record["label"] for record in answer["predictions"]] == [4]


def test_png_to_pandas_base64_of_several_files_is_answered(server, pipeline, tmp_path):
    (tmp_path / "one.png").write_bytes(encoded(drawing(1, corner="top-left")))
    (tmp_path / "two.jpg").write_bytes(encoded(drawing(2, ink=255, paper=0), ".jpg"))
    png_to_pandas(server, pipeline, tmp_path, "one.png", "two.jpg", "--format", "base64")
    request = json.loads((tmp_path / "example.json").read_text())
    assert set(request) == {"dataframe_records"}
    assert labels(server.post(request)) == [1, 2]


@needs_curl
def test_png_to_pandas_to_stdout_piped_into_its_curl(server, pipeline, tmp_path):
    (tmp_path / "a.png").write_bytes(encoded(drawing(9, corner="top-right")))
    (tmp_path / "b.png").write_bytes(rgba_on_transparent(3, ink=0))
    result = png_to_pandas(server, pipeline, tmp_path, "a.png", "b.png", "--output", "-")
    curl = result.stderr.strip().splitlines()[-1]
    assert curl == (
        f"curl -d @- -H 'Content-Type: application/json' localhost:{server.port}/invocations"
    )
    assert len(json.loads(result.stdout)["dataframe_split"]["data"]) == 56
    script = f"{sys.executable} {REPO / 'png_to_pandas.py'} a.png b.png -o - --port {server.port}"
    answer = json.loads(run_shell(f"{script} | {curl}", tmp_path, server.env))
    assert [record["label"] for record in answer["predictions"]] == [9, 3]


def test_generate_dockerfile_writes_a_dockerfile_with_the_model(pipeline, tmp_path):
    store = pipeline["store"]
    output = tmp_path / "docker"
    store.run(
        [
            "mlflow",
            "models",
            "generate-dockerfile",
            "-m",
            str(pipeline["model_dir"]),
            "-d",
            str(output),
        ],
        timeout=300,
    )
    dockerfile = (output / "Dockerfile").read_text()
    assert "FROM " in dockerfile and "ENTRYPOINT" in dockerfile
    copied = next(output.rglob("MLmodel")).parent
    assert (copied / "artifacts" / "model.keras").exists()
    assert (copied / "code" / "mnist_pipeline" / "serving" / "request_formats.py").exists()
    requirements = (copied / "requirements.txt").read_text()
    for package in ("mlflow==", "keras==", "pillow==", "opencv"):
        assert package in requirements


def test_the_server_is_still_alive_after_all_the_bad_requests(server):
    assert server.process.poll() is None, server.log.read_text()[-3000:]
    assert_still_serving(server)
