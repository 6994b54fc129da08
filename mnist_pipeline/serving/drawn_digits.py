"""The drawn-digits evaluation set: digits as people draw them, generated from a seed.

Each image is one digit on a canvas of its own size, drawn one of two ways: strokes along a
jittered path defined per digit here (DIGIT_SHAPES), or OpenCV's single-stroke Hershey
fonts. Each then gets a medium, the `kind` in labels.csv:

    pencil     1 px grey lines on white (PNG, grey)
    pen        thin ink, 2 px and up, dark on white or white on black (PNG, grey)
    brush      fat strokes, mostly white on black as MNIST (PNG, grey)
    font       a Hershey font, either polarity (PNG, grey)
    rgba       a browser canvas: opaque coloured ink on transparency (PNG, RGBA)
    page       the drawing page's pad (draw.py): 280x280, black on white, its pen of
               4 to 48 px (PNG, RGBA, opaque as a browser exports it)
    photo      a phone photo of ink on paper: uneven light, noise, blur (JPEG, colour)
    european1  the 1 with a long flag and often a foot, in any of the media above
    crossed7   the 7 with a bar through its stem, in any of the media above

Every image has its own random generator, seeded by (seed, label, number), so that the
first n images of each digit are the same files whatever `per_digit` is. The set is for
evaluation only: nothing trains on it.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mnist_pipeline.errors import UserError
from mnist_pipeline.files import staging_folder, swap_into_place
from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

DRAWN_DIGITS = Path(__file__).resolve().parents[2] / "drawn_digits"
LABELS_FILE = "labels.csv"
COLUMNS = ("file", "label", "kind")
MEDIA = ("pencil", "pen", "brush", "font", "rgba", "page", "photo")
KINDS = (*MEDIA, "european1", "crossed7")
# Half the 1s and 7s are written the German way, as the workshop's participants write them:
# the pictures of each digit come in runs of one per medium, and every other run is German.
GERMAN_KINDS = {1: "european1", 7: "crossed7"}

# Each digit's shapes, as people draw them. A shape is strokes separated by "|"; a stroke is
# a pen movement through points x,y of a unit box (x to the right, y down). A "curve" is
# smoothed through its points; a "line" goes straight from point to point, for the corners
# of a 4 or a 7. Several shapes per digit, as people write them differently.
DIGIT_SHAPES = {
    0: (
        "curve .55,0 .2,.12 .08,.5 .22,.9 .5,1 .8,.88 .92,.5 .8,.12 .55,0 .42,0",
        "curve .5,0 .25,.05 .1,.3 .12,.75 .4,1 .75,.9 .9,.5 .82,.15 .6,0 .45,.02",
    ),
    1: ("line .5,0 .5,1", "line .3,.2 .55,0 .55,1"),
    2: (
        "curve .1,.25 .3,.03 .65,0 .85,.22 .72,.5 .1,1 | line .1,1 .92,.98",
        "curve .12,.2 .5,0 .85,.25 .55,.65 .12,.98 | curve .12,.98 .3,.9 .6,.98 .9,.95",
        "curve .12,.22 .45,0 .82,.2 .7,.5 .28,.9 .16,1 .1,.9 .3,.86 .6,.98 .92,.94",
    ),
    3: (
        "curve .12,.15 .5,0 .85,.18 .75,.42 .42,.5 | curve .42,.5 .85,.62 .85,.88 .5,1 .1,.86",
        "line .12,.02 .85,.02 .45,.42 | curve .45,.42 .85,.58 .82,.9 .45,1 .1,.85",
    ),
    4: (
        "line .62,0 .08,.68 .92,.68 | line .7,.3 .7,1",
        "line .15,0 .1,.6 .92,.6 | line .72,0 .72,1",
    ),
    5: (
        "line .85,0 .25,0 .2,.45 | curve .2,.45 .5,.37 .85,.55 .85,.85 .5,1 .1,.88",
        "curve .25,.02 .2,.45 .55,.38 .85,.6 .75,.92 .4,1 .1,.85 | line .25,.02 .88,0",
    ),
    6: (
        "curve .75,0 .35,.25 .15,.65 .3,.98 .65,.98 .85,.75 .65,.5 .3,.55 .17,.72",
        "curve .7,0 .32,.45 .2,.8 .45,1 .78,.85 .72,.6 .42,.58 .22,.78",
    ),
    7: (
        "line .08,0 .9,0 .38,1",
        "line .08,.12 .1,0 .9,.02 .45,1",
        "line .1,.02 .9,0 | curve .9,0 .65,.45 .5,1",
    ),
    8: (
        "curve .8,.15 .5,0 .2,.15 .25,.35 .5,.5 .82,.7 .75,.95 .5,1 .2,.92 .2,.7 .5,.5 .75,.32 .8,.15",
        "curve .5,.48 .22,.3 .5,0 .78,.25 .5,.48 | curve .5,.48 .15,.75 .5,1 .85,.75 .5,.48",
    ),
    9: (
        "curve .82,.2 .55,0 .2,.1 .2,.38 .5,.48 .82,.3 | line .82,.12 .78,1",
        "curve .8,.22 .5,0 .18,.15 .25,.42 .6,.42 .8,.22 | curve .8,.1 .8,.6 .72,.9 .45,1",
    ),
}
CROSSED_SEVEN_BAR = "line .35,.52 .85,.5"

HERSHEY_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
    cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC,
    cv2.FONT_HERSHEY_COMPLEX | cv2.FONT_ITALIC,
    cv2.FONT_HERSHEY_TRIPLEX | cv2.FONT_ITALIC,
)
# Ink as BGR: a blue, a black and a dark blue ballpoint, then a red felt-tip (not in photos).
PEN_INKS = ((150, 60, 20), (40, 35, 30), (120, 40, 10), (30, 30, 170))
PNG_SETTINGS = [cv2.IMWRITE_PNG_COMPRESSION, 9]
# The drawing page's pad (mnist_pipeline/drawing_page/static/draw): its size and its pen's widths in pixels.
PAGE_SIZE = 280
PAGE_PEN_WIDTHS = range(4, 49, 2)


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
    kind, medium = kind_and_medium(label, number)
    german = kind in GERMAN_KINDS.values()
    height, width = _canvas_size(rng, medium)
    if medium == "font":
        ink = _font_ink(rng, label, height, width)
    else:
        ink = _stroke_ink(rng, _strokes(rng, label, german), height, width, medium)
    data, extension = _picture(rng, ink, medium)
    return DrawnDigit(f"{label}-{number:03d}-{kind}.{extension}", label, kind, data)


def kind_and_medium(label: int, number: int) -> tuple[str, str]:
    """Return the kind and the medium of picture `number` of digit `label`, whatever the seed."""
    medium = MEDIA[number % len(MEDIA)]
    if label in GERMAN_KINDS and number // len(MEDIA) % 2 == 1:
        # Fonts have no German 1 or 7; those are drawn with a pen instead.
        return GERMAN_KINDS[label], "pen" if medium == "font" else medium
    return medium, medium


def _canvas_size(rng: np.random.Generator, medium: str) -> tuple[int, int]:
    """Return (height, width) in pixels: small for pencils and photos, large for brushes."""
    if medium == "page":
        return PAGE_SIZE, PAGE_SIZE
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


def _strokes(rng: np.random.Generator, label: int, german: bool) -> list[str]:
    """Return the strokes of one shape of `label`, the German way if `german`."""
    if german and label == 1:
        # The flag is a long upstroke from a third to over half of the way down the stem,
        # straight or sagging so that it meets the stem steeply. Flatter, it would be a 7.
        x, y = rng.uniform(0.1, 0.3), rng.uniform(0.35, 0.6)
        sag = rng.choice([0.0, 0.0, 0.05])
        flag = f"curve {x:.3f},{y:.3f} {(x + 0.6) / 2 + sag:.3f},{y / 2 + sag:.3f} .6,0"
        strokes = [flag, "line .6,0 .6,1"]
        if rng.random() < 0.2:
            return strokes
        # More often than not a foot, a base line under the stem.
        foot = f"line {rng.uniform(0.15, 0.4):.3f},1 {rng.uniform(0.8, 1.0):.3f},1"
        return [*strokes, foot]
    shapes = DIGIT_SHAPES[label]
    strokes = shapes[int(rng.integers(len(shapes)))].split("|")
    if german and label == 7:
        strokes.append(CROSSED_SEVEN_BAR)
    return strokes


def _stroke_points(stroke: str) -> tuple[str, np.ndarray]:
    """Return ("curve" or "line", float (n, 2)) from a stroke such as "line .1,0 .9,0 .4,1"."""
    name, *points = stroke.split()
    return name, np.array([[float(value) for value in point.split(",")] for point in points])


def _placement(
    rng: np.random.Generator, height: int, width: int, digit_height: float, digit_width: float
) -> np.ndarray:
    """Return a 2x3 affine matrix from a unit box to the canvas: slant, rotation, off-centre.

    The digit is `digit_height` pixels tall, slanted by up to 0.4 of its height and turned by
    up to 15 degrees (leaning 25 degrees at most), somewhere on the canvas but never cut by
    its edge.
    """
    slant = float(rng.uniform(-0.15, 0.4))  # Right-handed writers lean forward more often.
    angle = np.deg2rad(rng.uniform(-15, 15))
    # Slant and turn both lean the digit; together, by no more than 25 degrees, or a 7 lies
    # down as a ">".
    lean_limit = np.deg2rad(25)
    angle = float(np.clip(angle, -lean_limit - np.arctan(slant), lean_limit - np.arctan(slant)))
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
    return digit_height, digit_height * float(rng.uniform(0.5, 0.85))


def _stroke_ink(
    rng: np.random.Generator, strokes: list[str], height: int, width: int, medium: str
) -> np.ndarray:
    """Return float32 (height, width), 1 where ink is, drawn along jittered paths."""
    digit_height, digit_width = _digit_size(rng, height, width)
    if medium == "pencil":
        # A 1 px line stays visible in 28x28 only if the digit is small on its canvas.
        digit_height, digit_width = min(digit_height, 130.0), min(digit_width, 100.0)
    # Even the fattest brush leaves a narrow digit's loops open.
    thickness = min(_thickness(rng, medium, digit_height), max(2, round(0.3 * digit_width)))
    matrix = _placement(rng, height, width, digit_height, digit_width)
    # Subpixel coordinates: cv2 draws with 4 fractional bits.
    shift = 4
    canvas = np.zeros((height, width), dtype=np.uint8)
    jitter = float(rng.uniform(0.015, 0.05))
    wobble = float(rng.uniform(0.0, 0.01))
    # A point where two strokes meet (the corner of a 4, the foot of a 1) moves as one.
    moved: dict[tuple[float, float], np.ndarray] = {}
    for stroke in strokes:
        name, points = _stroke_points(stroke)
        control = np.array(
            [
                moved.setdefault(tuple(point), point + rng.normal(0.0, jitter, size=2))
                for point in points
            ]
        )
        path = _shaken(rng, control if name == "line" else _smooth(control), wobble)
        on_canvas = path @ matrix[:, :2].T + matrix[:, 2]
        fixed = np.rint(on_canvas * (1 << shift)).astype(np.int32)
        cv2.polylines(canvas, [fixed], False, 255, thickness, cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255.0


def _thickness(rng: np.random.Generator, medium: str, digit_height: float) -> int:
    """Return a pen's width in pixels: 1 for a pencil, up to 35% of the digit for a brush."""
    if medium == "pencil":
        return 1
    if medium == "page":
        return int(rng.choice(PAGE_PEN_WIDTHS))
    low, high = {
        "pen": (0.015, 0.06),
        "brush": (0.12, 0.35),
        "rgba": (0.04, 0.16),
        "photo": (0.03, 0.07),
    }[medium]
    return max(2, round(float(rng.uniform(low, high)) * digit_height))


def _shaken(rng: np.random.Generator, path: np.ndarray, wobble: float) -> np.ndarray:
    """Return `path` (n, 2) resampled every 0.02 and shaken as a hand shakes a mouse.

    The shake is noise smoothed along the path, of about `wobble` of the digit's height.
    """
    lengths = np.linalg.norm(np.diff(path, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    steps = np.linspace(0.0, along[-1], max(2, int(along[-1] / 0.02) + 1))
    dense = np.column_stack([np.interp(steps, along, path[:, axis]) for axis in (0, 1)])
    # Smoothed over a few points, white noise loses most of its size; 2.5 gives it back.
    shake = cv2.GaussianBlur(rng.normal(0.0, wobble, size=dense.shape), (1, 0), 0, sigmaY=3.0)
    # The ends stay put, so that strokes still meet where they were drawn to meet.
    ends = np.clip(np.minimum(steps, steps[-1] - steps) / 0.1, 0.0, 1.0)[:, np.newaxis]
    return dense + 2.5 * shake * ends


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
        return encode(".png", colour), "png"
    if medium == "page":
        page = np.full((*ink.shape, 4), 255, dtype=np.uint8)
        page[..., :3] = np.rint(255 * (1 - ink))[..., np.newaxis]
        return encode(".png", page), "png"
    if medium == "photo":
        return encode(
            ".jpg", _photo(rng, ink), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 86))]
        ), "jpg"
    if medium == "pencil":
        paper, lead = 255.0, float(rng.uniform(40, 120))
    elif rng.random() < (0.6 if medium == "brush" else 0.3):
        paper, lead = 0.0, 255.0
    else:
        paper, lead = 255.0, 0.0
    gray = paper + (lead - paper) * ink
    return encode(".png", np.rint(gray).astype(np.uint8)), "png"


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


def encode(extension: str, image: np.ndarray, settings: list[int] | None = None) -> bytes:
    ok, encoded = cv2.imencode(extension, image, settings or PNG_SETTINGS)
    if not ok:
        raise ValueError(f"cv2 could not encode a {image.shape} image as {extension}")
    return encoded.tobytes()


def write_drawn_set(folder: str | os.PathLike, per_digit: int, seed: int) -> list[DrawnDigit]:
    """Write the set's files and labels.csv to `folder`, replacing it whole; return the digits."""
    digits = list(drawn_digits(per_digit, seed))
    write_picture_set(folder, digits)
    return digits


def write_picture_set(
    folder: str | os.PathLike, digits: list[DrawnDigit], notes: dict[str, str] | None = None
) -> None:
    """Write the pictures of `digits`, their labels.csv and the text files `notes` (name:
    text) to `folder`, replacing it whole.

    The files are written to a staging folder beside it and renamed into place, so that
    `folder` is never half-written. Raises UserError if `folder` exists and is not a set
    (it has no labels.csv): replacing it would delete someone's files.
    """
    folder = Path(folder).resolve()
    if folder.exists() and not (folder / LABELS_FILE).is_file():
        raise UserError(f"{folder}: exists and holds no {LABELS_FILE}; choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder.parent, f".{folder.name}.new-")
    try:
        for digit in digits:
            (staging / digit.file).write_bytes(digit.data)
        (staging / LABELS_FILE).write_text(labels_csv(digits))
        for name, text in (notes or {}).items():
            (staging / name).write_text(text)
        swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def wrote(digits: list[DrawnDigit], folder: str | os.PathLike) -> str:
    """A line that says how many pictures of which kinds went to `folder`, in how many MB."""
    size = sum(len(digit.data) for digit in digits)
    kinds = ", ".join(f"{kind} {count}" for kind, count in Counter(d.kind for d in digits).items())
    return f"Wrote {len(digits)} digits ({kinds}) to {folder}/ ({size / 1e6:.2f} MB)"


def labels_csv(digits: list[DrawnDigit]) -> str:
    """Return labels.csv's text: a header `file,label,kind`, then one row per digit."""
    rows = [(digit.file, digit.label, digit.kind) for digit in digits]
    return pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False, lineterminator="\n")


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
    try:
        frame = pd.read_csv(labels, dtype={"file": str, "label": int, "kind": str})
    except ValueError as error:  # Also pandas' EmptyDataError and ParserError.
        reason = str(error).strip().splitlines()[0]
        raise UserError(f"{labels}: not a table of file,label,kind ({reason})") from None
    if list(frame.columns) != list(COLUMNS):
        raise UserError(f"{labels}: columns {list(frame.columns)}, expected {list(COLUMNS)}")
    missing = [name for name in frame.file if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{labels}: names {len(missing)} missing file(s), the first {missing[0]}")
    frame["image"] = [(folder / name).read_bytes() for name in frame.file]
    return frame


def write_contact_sheet(path: Path, digits: list[DrawnDigit], kinds: tuple[str, ...]) -> None:
    """Write a contact sheet to `path`: a line per digit, its first picture of each of `kinds`.

    Pictures of other kinds (the German 1 and 7) get a line of their own.
    """
    rows = []
    for label in range(10):
        of_label = [digit for digit in digits if digit.label == label]
        first_of_kind = {}
        for digit in of_label:
            if digit.kind in kinds:
                first_of_kind.setdefault(digit.kind, digit)
        rows.append(list(first_of_kind.values()))
        others = [digit for digit in of_label if digit.kind not in kinds]
        if others:
            rows.append(others[: len(kinds)])
    ok, encoded = cv2.imencode(".png", contact_sheet(rows), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f"{path}: cv2 could not encode the contact sheet")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(encoded.tobytes())
    partial.replace(path)


def contact_sheet(rows: list[list[DrawnDigit]], tile: int = 84) -> np.ndarray:
    """Return uint8 BGR: each picture beside the 28x28 pixels the model sees, under its kind.

    One line of the sheet per list in `rows`, tiles of `tile` pixels. A picture is shown on
    a grey checkerboard where it is transparent, the model's view enlarged without smoothing.
    """
    caption, gap = 16, 10
    pair_width = 2 * tile + 4
    columns = max(len(row) for row in rows)
    sheet = np.full(
        (len(rows) * (tile + caption + gap), columns * (pair_width + gap), 3), 255, dtype=np.uint8
    )
    for row_number, row in enumerate(rows):
        for column, digit in enumerate(row):
            top = row_number * (tile + caption + gap) + caption
            left = column * (pair_width + gap)
            cv2.putText(
                sheet,
                digit.kind,
                (left, top - 4),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (60, 60, 60),
                1,
                cv2.LINE_AA,
            )
            sheet[top : top + tile, left : left + tile] = _thumbnail(digit.data, tile)
            seen = cv2.resize(
                image_to_pixels(digit.data), (tile, tile), interpolation=cv2.INTER_NEAREST
            )
            sheet[top : top + tile, left + tile + 4 : left + pair_width] = seen[..., np.newaxis]
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
