"""The drawn-digits evaluation set: digits as people draw them, generated from a seed.

Each image is one digit on a canvas of its own size, drawn one of two ways: strokes along a
jittered path defined per digit here (DIGIT_STROKES), or OpenCV's single-stroke Hershey
fonts. Each then gets a medium, the `kind` in labels.csv:

    pencil     1 px grey lines on white (PNG, grey)
    pen        2-5 px ink, dark on white or white on black (PNG, grey)
    brush      fat strokes, mostly white on black as MNIST (PNG, grey)
    font       a Hershey font, either polarity (PNG, grey)
    rgba       a browser canvas: opaque coloured ink on transparency (PNG, RGBA)
    photo      a phone photo of ink on paper: uneven light, noise, blur (JPEG, colour)
    european1  the 1 with a long flag and often a foot, in any of the media above
    crossed7   the 7 with a bar through its stem, in any of the media above

Every image has its own random generator, seeded by (seed, label, number), so that the
first n images of each digit are the same files whatever `per_digit` is. The set is for
evaluation only: nothing trains on it.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mnist_pipeline.errors import UserError
from mnist_pipeline.pictures import image_to_pixels
from mnist_pipeline.stopping import staging_folder

DRAWN_DIGITS = Path(__file__).resolve().parent.parent / "drawn_digits"
LABELS_FILE = "labels.csv"
COLUMNS = ("file", "label", "kind")
MEDIA = ("pencil", "pen", "brush", "font", "rgba", "photo")
KINDS = (*MEDIA, "european1", "crossed7")
# Every other 1 and 7 is written the German way: the workshop's participants write them so.
GERMAN_KINDS = {1: "european1", 7: "crossed7"}

# Each digit's strokes, as a person draws them: lists of points in a unit box (x to the
# right, y down), each smoothed into a curve through its points. A stroke whose name starts
# with "line" is drawn straight from point to point, for the corners of a 4 or a 7.
# Several shapes per digit, as people write them differently.
Stroke = tuple[str, tuple[tuple[float, float], ...]]
DIGIT_STROKES: dict[int, tuple[tuple[Stroke, ...], ...]] = {
    0: (
        (
            (
                "curve",
                (
                    (0.55, 0.0),
                    (0.2, 0.12),
                    (0.08, 0.5),
                    (0.22, 0.9),
                    (0.5, 1.0),
                    (0.8, 0.88),
                    (0.92, 0.5),
                    (0.8, 0.12),
                    (0.5, 0.02),
                    (0.4, 0.06),
                ),
            ),
        ),
    ),
    1: (
        (("line", ((0.5, 0.0), (0.5, 1.0))),),
        (("line", ((0.3, 0.2), (0.55, 0.0), (0.55, 1.0))),),
    ),
    2: (
        (
            (
                "curve",
                ((0.1, 0.25), (0.3, 0.03), (0.65, 0.0), (0.85, 0.22), (0.72, 0.5), (0.1, 1.0)),
            ),
            ("line", ((0.1, 1.0), (0.92, 0.98))),
        ),
        (
            ("curve", ((0.12, 0.2), (0.5, 0.0), (0.85, 0.25), (0.55, 0.65), (0.12, 0.98))),
            ("curve", ((0.12, 0.98), (0.3, 0.9), (0.6, 0.98), (0.9, 0.95))),
        ),
    ),
    3: (
        (
            ("curve", ((0.12, 0.15), (0.5, 0.0), (0.85, 0.18), (0.75, 0.42), (0.42, 0.5))),
            ("curve", ((0.42, 0.5), (0.85, 0.62), (0.85, 0.88), (0.5, 1.0), (0.1, 0.86))),
        ),
        (
            ("line", ((0.12, 0.02), (0.85, 0.02), (0.45, 0.42))),
            ("curve", ((0.45, 0.42), (0.85, 0.58), (0.82, 0.9), (0.45, 1.0), (0.1, 0.85))),
        ),
    ),
    4: (
        (("line", ((0.62, 0.0), (0.08, 0.68), (0.92, 0.68))), ("line", ((0.7, 0.3), (0.7, 1.0)))),
        (("line", ((0.15, 0.0), (0.1, 0.6), (0.92, 0.6))), ("line", ((0.72, 0.0), (0.72, 1.0)))),
    ),
    5: (
        (
            ("line", ((0.85, 0.0), (0.25, 0.0), (0.2, 0.45))),
            (
                "curve",
                ((0.2, 0.45), (0.5, 0.37), (0.85, 0.55), (0.85, 0.85), (0.5, 1.0), (0.1, 0.88)),
            ),
        ),
    ),
    6: (
        (
            (
                "curve",
                (
                    (0.75, 0.0),
                    (0.35, 0.25),
                    (0.15, 0.65),
                    (0.3, 0.98),
                    (0.65, 0.98),
                    (0.85, 0.75),
                    (0.65, 0.5),
                    (0.3, 0.55),
                    (0.17, 0.72),
                ),
            ),
        ),
    ),
    7: (
        (("line", ((0.08, 0.0), (0.9, 0.0), (0.38, 1.0))),),
        (("line", ((0.08, 0.12), (0.1, 0.0), (0.9, 0.02), (0.45, 1.0))),),
    ),
    8: (
        (
            (
                "curve",
                (
                    (0.8, 0.15),
                    (0.5, 0.0),
                    (0.2, 0.15),
                    (0.25, 0.35),
                    (0.5, 0.5),
                    (0.82, 0.7),
                    (0.75, 0.95),
                    (0.5, 1.0),
                    (0.2, 0.92),
                    (0.2, 0.7),
                    (0.5, 0.5),
                    (0.75, 0.32),
                    (0.8, 0.15),
                ),
            ),
        ),
    ),
    9: (
        (
            (
                "curve",
                ((0.82, 0.2), (0.55, 0.0), (0.2, 0.1), (0.2, 0.38), (0.5, 0.48), (0.82, 0.3)),
            ),
            ("line", ((0.82, 0.12), (0.78, 1.0))),
        ),
        (
            (
                "curve",
                ((0.8, 0.22), (0.5, 0.0), (0.18, 0.15), (0.25, 0.42), (0.6, 0.42), (0.8, 0.22)),
            ),
            ("curve", ((0.8, 0.1), (0.8, 0.6), (0.72, 0.9), (0.45, 1.0))),
        ),
    ),
}
# The European 1: a long upstroke (the flag) and, more often than not, a foot.
EUROPEAN_ONE_FLAG: Stroke = ("line", ((0.12, 0.38), (0.58, 0.0), (0.58, 1.0)))
EUROPEAN_ONE_FOOT: Stroke = ("line", ((0.28, 1.0), (0.88, 1.0)))
CROSSED_SEVEN_BAR: Stroke = ("line", ((0.35, 0.52), (0.85, 0.5)))

HERSHEY_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
    cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC,
)
# Ink as BGR: blue and black ballpoints, a red felt-tip, a pencil's grey.
PEN_INKS = ((150, 60, 20), (40, 35, 30), (120, 40, 10), (30, 30, 170))
PNG_SETTINGS = [cv2.IMWRITE_PNG_COMPRESSION, 9]


@dataclass(frozen=True)
class DrawnDigit:
    """One picture of the set: its file name in the folder, its label, its kind, its bytes."""

    file: str
    label: int
    kind: str
    data: bytes


def drawn_digits(per_digit: int, seed: int) -> Iterator[DrawnDigit]:
    """Yield `per_digit` pictures of each digit 0-9, label by label, as PNG or JPEG bytes."""
    for label in range(10):
        for number in range(per_digit):
            yield drawn_digit(label, number, seed)


def drawn_digit(label: int, number: int, seed: int) -> DrawnDigit:
    """Return picture `number` of digit `label`; the same three numbers give the same bytes."""
    rng = np.random.default_rng([seed, label, number])
    medium = MEDIA[number % len(MEDIA)]
    german = label in GERMAN_KINDS and number % 2 == 1
    if german and medium == "font":
        # Fonts have no German 1 or 7; draw those with a pen instead.
        medium = "pen"
    kind = GERMAN_KINDS[label] if german else medium
    height, width = _canvas_size(rng, medium)
    if medium == "font":
        ink = _font_ink(rng, label, height, width)
    else:
        ink = _stroke_ink(rng, _strokes(rng, label, german), height, width, medium)
    data, extension = _picture(rng, ink, medium)
    return DrawnDigit(f"{label}-{number:03d}-{kind}.{extension}", label, kind, data)


def _canvas_size(rng: np.random.Generator, medium: str) -> tuple[int, int]:
    """Return (height, width) in pixels: small for pencils and photos, large for brushes."""
    low, high = {
        "pencil": (100, 200),
        "pen": (120, 400),
        "brush": (200, 600),
        "font": (100, 400),
        "rgba": (200, 500),
        "photo": (120, 260),
    }[medium]
    height = int(rng.integers(low, high + 1))
    # Half the canvases are not square, as a browser window or a photo is.
    aspect = 1.0 if rng.random() < 0.5 else float(rng.uniform(0.7, 1.5))
    return height, int(np.clip(round(height * aspect), 100, 600))


def _strokes(rng: np.random.Generator, label: int, german: bool) -> tuple[Stroke, ...]:
    if german and label == 1:
        return (
            (EUROPEAN_ONE_FLAG, EUROPEAN_ONE_FOOT) if rng.random() < 0.7 else (EUROPEAN_ONE_FLAG,)
        )
    shapes = DIGIT_STROKES[label]
    strokes = shapes[int(rng.integers(len(shapes)))]
    if german and label == 7:
        return (*strokes, CROSSED_SEVEN_BAR)
    return strokes


def _placement(
    rng: np.random.Generator, height: int, width: int, digit_height: float, digit_width: float
) -> np.ndarray:
    """Return a 2x3 affine matrix from a unit box to the canvas: slant, rotation, off-centre.

    The digit is `digit_height` pixels tall, leaning by up to 0.3 of its height and turned by
    up to 15 degrees, somewhere on the canvas but never cut by its edge.
    """
    slant = float(rng.uniform(-0.15, 0.35))  # Right-handed writers lean forward more often.
    angle = np.deg2rad(rng.uniform(-15, 15))
    # Unit box centred at 0, scaled, slanted (the top moves right), then turned.
    scale = np.array([[digit_width, 0], [0, digit_height]])
    shear = np.array([[1, -slant], [0, 1]])
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = turn @ shear @ scale
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]) @ linear.T
    margin = 0.06 * min(height, width) + 2
    low = -corners.min(axis=0) + margin
    high = np.array([width, height]) - corners.max(axis=0) - margin
    centre = rng.uniform(np.minimum(low, high), np.maximum(low, high))
    offset = centre - linear @ np.array([0.5, 0.5])
    return np.hstack([linear, offset[:, np.newaxis]])


def _digit_size(rng: np.random.Generator, height: int, width: int) -> tuple[float, float]:
    """Return (height, width) in pixels of a digit's box: 35-80% of the canvas's shorter side."""
    digit_height = float(rng.uniform(0.35, 0.8)) * min(height, width)
    return digit_height, digit_height * float(rng.uniform(0.55, 0.8))


def _stroke_ink(
    rng: np.random.Generator, strokes: tuple[Stroke, ...], height: int, width: int, medium: str
) -> np.ndarray:
    """Return float32 (height, width), 1 where ink is, drawn along jittered paths."""
    digit_height, digit_width = _digit_size(rng, height, width)
    if medium == "pencil":
        # A 1 px line stays visible in 28x28 only if the digit is small on its canvas.
        digit_height, digit_width = min(digit_height, 110.0), min(digit_width, 80.0)
    thickness = _thickness(rng, medium, digit_height)
    matrix = _placement(rng, height, width, digit_height, digit_width)
    # Subpixel coordinates: cv2 draws with 4 fractional bits.
    shift = 4
    canvas = np.zeros((height, width), dtype=np.uint8)
    jitter = float(rng.uniform(0.01, 0.035))
    for name, points in strokes:
        control = np.array(points) + rng.normal(0.0, jitter, size=(len(points), 2))
        path = control if name == "line" else _smooth(control)
        on_canvas = path @ matrix[:, :2].T + matrix[:, 2]
        fixed = np.rint(on_canvas * (1 << shift)).astype(np.int32)
        cv2.polylines(canvas, [fixed], False, 255, thickness, cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255.0


def _thickness(rng: np.random.Generator, medium: str, digit_height: float) -> int:
    """Return a pen's width in pixels: 1 for a pencil, up to a fifth of the digit for a brush."""
    if medium == "pencil":
        return 1
    low, high = {
        "pen": (0.02, 0.06),
        "brush": (0.1, 0.2),
        "rgba": (0.05, 0.13),
        "photo": (0.03, 0.07),
    }[medium]
    return max(2, round(float(rng.uniform(low, high)) * digit_height))


def _smooth(points: np.ndarray, steps: int = 12) -> np.ndarray:
    """Return a Catmull-Rom curve through `points` (n, 2), `steps` points per segment."""
    padded = np.vstack([points[:1], points, points[-1:]])
    t = np.linspace(0.0, 1.0, steps, endpoint=False)[:, np.newaxis]
    pieces = []
    for p0, p1, p2, p3 in zip(padded, padded[1:], padded[2:], padded[3:], strict=False):
        pieces.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
        )
    return np.vstack([*pieces, points[-1:]])


def _font_ink(rng: np.random.Generator, label: int, height: int, width: int) -> np.ndarray:
    """Return float32 (height, width), 1 where ink is: the digit in a Hershey font."""
    font = HERSHEY_FONTS[int(rng.integers(len(HERSHEY_FONTS)))]
    digit_height, _ = _digit_size(rng, height, width)
    # Hershey digits are about 22 px tall at scale 1.
    font_scale = digit_height / 22.0
    thickness = max(1, round(float(rng.uniform(0.03, 0.15)) * digit_height))
    text = str(label)
    (text_width, text_height), baseline = cv2.getTextSize(text, font, font_scale, thickness)
    pad = thickness + 4
    glyph = np.zeros((text_height + baseline + 2 * pad, text_width + 2 * pad), dtype=np.uint8)
    cv2.putText(
        glyph, text, (pad, pad + text_height), font, font_scale, 255, thickness, cv2.LINE_AA
    )
    rows, cols = np.nonzero(glyph)
    glyph = glyph[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    # Place the glyph's box as a path's unit box is placed: the same slants and turns.
    glyph_height, glyph_width = glyph.shape
    matrix = _placement(rng, height, width, glyph_height, glyph_width)
    to_unit = np.array([[1 / glyph_width, 0, 0], [0, 1 / glyph_height, 0], [0, 0, 1]])
    matrix = matrix @ to_unit
    canvas = cv2.warpAffine(glyph, matrix, (width, height), flags=cv2.INTER_LINEAR)
    return canvas.astype(np.float32) / 255.0


def _picture(rng: np.random.Generator, ink: np.ndarray, medium: str) -> tuple[bytes, str]:
    """Return (file bytes, extension): `ink` (float 0-1) rendered in `medium`."""
    if medium == "rgba":
        blue, green, red = (
            PEN_INKS[int(rng.integers(len(PEN_INKS)))] if rng.random() < 0.5 else (0, 0, 0)
        )
        alpha = np.rint(ink * 255).astype(np.uint8)
        colour = np.empty((*ink.shape, 4), dtype=np.uint8)
        colour[..., 0], colour[..., 1], colour[..., 2], colour[..., 3] = blue, green, red, alpha
        return _encode(".png", colour), "png"
    if medium == "photo":
        return _encode(
            ".jpg", _photo(rng, ink), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 86))]
        ), "jpg"
    if medium == "pencil":
        paper, lead = 255.0, float(rng.uniform(40, 120))
    elif rng.random() < (0.6 if medium == "brush" else 0.3):
        paper, lead = 0.0, 255.0
    else:
        paper, lead = 255.0, 0.0
    gray = paper + (lead - paper) * ink
    return _encode(".png", np.rint(gray).astype(np.uint8)), "png"


def _photo(rng: np.random.Generator, ink: np.ndarray) -> np.ndarray:
    """Return uint8 BGR (h, w, 3): ink on paper in uneven light, noisy and a little blurred."""
    height, width = ink.shape
    paper = np.array([rng.uniform(200, 225), rng.uniform(215, 235), rng.uniform(225, 245)])
    # Light falls from one side: the far side of the sheet is up to 12% darker.
    direction = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[0:height, 0:width]
    along = np.cos(direction) * cols / width + np.sin(direction) * rows / height
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    light = 1.0 - float(rng.uniform(0.04, 0.12)) * along
    ink_colour = np.array(PEN_INKS[int(rng.integers(len(PEN_INKS) - 1))], dtype=np.float64)
    ink = cv2.GaussianBlur(ink, (0, 0), float(rng.uniform(0.5, 1.2)))[..., np.newaxis]
    image = (paper * (1 - ink) + ink_colour * ink) * light[..., np.newaxis]
    image += rng.normal(0.0, float(rng.uniform(1.5, 4.0)), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _encode(extension: str, image: np.ndarray, settings: list[int] | None = None) -> bytes:
    ok, encoded = cv2.imencode(extension, image, settings or PNG_SETTINGS)
    if not ok:
        raise ValueError(f"cv2 could not encode a {image.shape} image as {extension}")
    return encoded.tobytes()


def write_drawn_set(folder: str | os.PathLike, per_digit: int, seed: int) -> list[DrawnDigit]:
    """Write the set's files and labels.csv to `folder`, replacing it whole; return the digits.

    The files are written to a staging folder beside it and renamed into place, so that
    `folder` is never half-written.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder.parent, f".{folder.name}-")
    try:
        digits = list(drawn_digits(per_digit, seed))
        for digit in digits:
            (staging / digit.file).write_bytes(digit.data)
        (staging / LABELS_FILE).write_text(labels_csv(digits))
        if folder.exists():
            old = staging_folder(folder.parent, f".{folder.name}-old-")
            folder.rename(old / folder.name)
            staging.rename(folder)
            shutil.rmtree(old)
        else:
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return digits


def labels_csv(digits: list[DrawnDigit]) -> str:
    """Return labels.csv's text: a header `file,label,kind`, then one row per digit."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((digit.file, digit.label, digit.kind) for digit in digits)
    return text.getvalue()


def read_drawn_set(folder: str | os.PathLike = DRAWN_DIGITS) -> pd.DataFrame:
    """Columns file (str), label (int), kind (str), image (bytes: the file's content), in labels.csv order.

    Raises UserError in one line if the folder or labels.csv is missing or names a missing file.
    """
    folder = Path(folder)
    labels = folder / LABELS_FILE
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; make it with `python make_drawn_digits.py`")
    if not labels.is_file():
        raise UserError(f"{labels}: no such file; make the set with `python make_drawn_digits.py`")
    frame = pd.read_csv(labels, dtype={"file": str, "label": int, "kind": str})
    if list(frame.columns) != list(COLUMNS):
        raise UserError(f"{labels}: columns {list(frame.columns)}, expected {list(COLUMNS)}")
    missing = [name for name in frame.file if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{labels}: names {len(missing)} missing file(s), the first {missing[0]}")
    frame["image"] = [(folder / name).read_bytes() for name in frame.file]
    return frame


def contact_sheet(digits: list[DrawnDigit], tile: int = 84) -> np.ndarray:
    """Return uint8 BGR: per digit, the picture as drawn and the 28x28 the model sees, side by side.

    One row per digit in order, tiles of `tile` pixels; the picture is shown on a grey
    checkerboard where it is transparent, and the model's view enlarged without smoothing.
    """
    columns = 10
    pair_width = 2 * tile + 6
    rows = -(-len(digits) // columns)
    sheet = np.full((rows * (tile + 6), columns * (pair_width + 10), 3), 255, dtype=np.uint8)
    for index, digit in enumerate(digits):
        top = (index // columns) * (tile + 6)
        left = (index % columns) * (pair_width + 10)
        sheet[top : top + tile, left : left + tile] = _thumbnail(digit.data, tile)
        seen = image_to_pixels(digit.data)
        view = cv2.resize(seen, (tile, tile), interpolation=cv2.INTER_NEAREST)
        sheet[top : top + tile, left + tile + 4 : left + 2 * tile + 4] = view[..., np.newaxis]
    return sheet


def _thumbnail(data: bytes, tile: int) -> np.ndarray:
    """Return uint8 BGR (tile, tile, 3): the picture fitted into the tile, transparency checked."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255.0
        checks = (np.indices(image.shape[:2]).sum(axis=0) // 8 % 2 * 40 + 190)[..., np.newaxis]
        image = np.rint(image[..., :3] * alpha + checks * (1 - alpha)).astype(np.uint8)
    height, width = image.shape[:2]
    scale = tile / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fitted = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    thumbnail = np.full((tile, tile, 3), 160, dtype=np.uint8)
    top, left = (tile - size[1]) // 2, (tile - size[0]) // 2
    thumbnail[top : top + size[1], left : left + size[0]] = fitted
    return thumbnail
