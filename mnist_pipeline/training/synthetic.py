"""Synthetic digits mixed into training: typed ones, and pen strokes along their skeletons.

MNIST holds handwriting only: a printed 1 with a serif and a base bar, a digit typed at 12
pixels and enlarged, or a blurred one, looks like nothing it has seen. The supplement shows
the model such digits. Each is made from a glyph of data/fonts.py's SUPPLEMENT_FONTS
(checked in as font_glyphs.npz, so training needs no fonts installed), either as the font
draws it, a little bolder or lighter, or redrawn as a pen stroke of its own width along the
glyph's skeleton. Half the 1s and 7s are written instead as much of Europe writes them, a 1
with a long flag and a crossed 7, which few of MNIST's American writers did and no typeface
does. A fifth of the digits other than 1 are written tall and narrow, as few of MNIST's
writers did: the model took such a 2, 4 or 8 for a 1. Each is then bent a little, sometimes
shrunk to a few pixels and enlarged, blurred or made grey and faint, put on paper of either
polarity, and turned into 28x28 pixels by the very transform that serves the model
(serving/picture_to_pixels.py). Training's augmentation then distorts it like any MNIST
digit.

None of the fonts is one that font_digits/, the evaluation set, is typed in.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from mnist_pipeline.errors import UserError
from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

GLYPHS_FILE = Path(__file__).with_name("font_glyphs.npz")
GLYPH_SIDE = 64  # each glyph fills the height (or the width) of a 64x64 square, less 4 px


def write_glyphs(path: Path = GLYPHS_FILE) -> int:
    """Render each digit in each face of SUPPLEMENT_FONTS into `path`; return how many.

    Needs the fonts installed (see data/fonts.py).
    """
    from mnist_pipeline.data.fonts import SUPPLEMENT_FONTS, faces, font_path, render

    glyphs, labels, names = [], [], []
    for _, file in faces(SUPPLEMENT_FONTS):
        for digit in range(10):
            glyphs.append(_squared(render(font_path(file), digit, 96)))
            labels.append(digit)
            names.append(file)
    partial = path.with_name(path.name + ".part.npz")
    np.savez_compressed(partial, glyphs=np.stack(glyphs), labels=labels, faces=names)
    partial.replace(path)
    return len(glyphs)


@functools.lru_cache(maxsize=1)
def supplement(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return `count` synthetic digits, uint8 (count, 28, 28) white on black as MNIST's,
    and their labels (count,); the same seed gives the same digits.

    Each digit goes through the served transform, about 5 ms, so the 5,400 of a training on
    MNIST take some 25 s. A search's worker process runs trial after trial with the same
    count and seed: it makes them once, and each trial gets the same read-only arrays.
    """
    bank = np.load(GLYPHS_FILE)
    glyphs, labels = bank["glyphs"].astype(np.float32) / 255.0, bank["labels"]
    skeletons = [_skeleton(glyph > 0.5) for glyph in glyphs]
    rng = np.random.default_rng(seed)
    chosen = rng.integers(len(glyphs), size=count)
    images = np.empty((count, 28, 28), dtype=np.uint8)
    for row, index in enumerate(chosen):
        while True:
            if labels[index] in (1, 7) and rng.random() < 0.5:  # the continental way
                ink = _pen_stroke(rng, _continental(rng, labels[index], skeletons[index]))
            elif labels[index] != 1 and rng.random() < 0.2:  # a narrow 1 is a 1 already
                ink = _pen_stroke(rng, _narrowed(rng, skeletons[index]), widest=6)
            elif rng.random() < 0.5:
                ink = _reweighted(rng, glyphs[index])
            else:
                ink = _pen_stroke(rng, skeletons[index])
            try:
                images[row] = image_to_pixels(_picture(rng, _degraded(rng, _bent(rng, ink))))
                break
            except UserError:  # blurred and faint until the transform sees no ink: again
                continue
    labels = labels[chosen]
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _squared(ink: np.ndarray) -> np.ndarray:
    """uint8 (GLYPH_SIDE, GLYPH_SIDE): `ink` (0 to 1) scaled to fit, centred."""
    inner = GLYPH_SIDE - 4
    scale = inner / max(ink.shape)
    width, height = max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale))
    fitted = cv2.resize(ink, (width, height), interpolation=cv2.INTER_AREA)
    square = np.zeros((GLYPH_SIDE, GLYPH_SIDE), dtype=np.float32)
    top, left = (GLYPH_SIDE - height) // 2, (GLYPH_SIDE - width) // 2
    square[top : top + height, left : left + width] = fitted
    return np.rint(square * 255).astype(np.uint8)


def _skeleton(shape: np.ndarray) -> np.ndarray:
    """The morphological skeleton of the boolean `shape`: the centre lines of its strokes."""
    shape = shape.astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    skeleton = np.zeros_like(shape)
    while shape.any():
        eroded = cv2.erode(shape, cross)
        skeleton |= shape - cv2.dilate(eroded, cross)
        shape = eroded
    return skeleton.astype(np.float32)


def _reweighted(rng: np.random.Generator, glyph: np.ndarray) -> np.ndarray:
    """The glyph as typed, its strokes up to 2 px bolder or lighter."""
    change = int(rng.integers(-2, 3))
    if change == 0:
        return glyph
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(change) + 1,) * 2)
    thinner = cv2.erode(glyph, disc)
    return cv2.dilate(glyph, disc) if change > 0 or thinner.max() < 0.5 else thinner


def _continental(rng: np.random.Generator, label: int, skeleton: np.ndarray) -> np.ndarray:
    """The skeleton of a 1 or a 7 as much of Europe writes them, as tall as `skeleton`, a
    typed one's: a 1 as a stem with a long flag, with or without a foot; the 7 crossed by a
    bar at half its height."""
    rows, columns = np.nonzero(skeleton)
    top, bottom = int(rows.min()), int(rows.max())
    height = bottom - top
    if label == 7:
        middle = (top + bottom) // 2
        crossing = columns[rows == middle]  # none where the skeleton breaks: the centre
        stem = int(crossing.mean()) if crossing.size else GLYPH_SIDE // 2
        half = int(height * rng.uniform(0.12, 0.25))
        crossed = skeleton.copy()
        cv2.line(crossed, (stem - half, middle), (stem + half, middle), 1.0)
        return crossed
    one = np.zeros_like(skeleton)
    stem = GLYPH_SIDE // 2 + int(rng.integers(-2, 8))
    cv2.line(one, (stem, top), (stem, bottom), 1.0)
    length = height * rng.uniform(0.3, 0.6)
    angle = np.deg2rad(rng.uniform(20, 60))  # below the horizontal, to the left
    flag = (round(stem - length * np.cos(angle)), round(top + length * np.sin(angle)))
    cv2.line(one, flag, (stem, top), 1.0)
    if rng.random() < 0.5:
        left, right = height * rng.uniform(0.12, 0.3, size=2)
        cv2.line(one, (round(stem - left), bottom), (round(stem + right), bottom), 1.0)
    return one


def _narrowed(rng: np.random.Generator, skeleton: np.ndarray) -> np.ndarray:
    """The skeleton squeezed sideways until it is 0.22 to 0.5 times as wide as it is tall, as
    some people write (MNIST's fitting keeps that shape: such a 2 is a strip 5 px wide)."""
    rows, columns = np.nonzero(skeleton)
    aspect = (np.ptp(columns) + 1) / (np.ptp(rows) + 1)
    factor = min(1.0, rng.uniform(0.22, 0.5) / aspect)
    centre = (columns.min() + columns.max()) / 2
    narrowed = np.zeros_like(skeleton)
    narrowed[rows, np.rint(centre + (columns - centre) * factor).astype(int)] = 1.0
    return narrowed


def _pen_stroke(rng: np.random.Generator, skeleton: np.ndarray, widest: int = 9) -> np.ndarray:
    """The skeleton drawn over with a round pen 3 to `widest` px wide (which closes its small
    gaps)."""
    width = int(rng.integers(3, widest + 1))
    pen = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width))
    return cv2.GaussianBlur(cv2.dilate(skeleton, pen), (0, 0), 0.7)


def _bent(rng: np.random.Generator, ink: np.ndarray) -> np.ndarray:
    """`ink` moved by a smooth random field of up to about 3 px, as a hand wavers."""
    side = ink.shape[0]
    strength = float(rng.uniform(0, 3))
    field = rng.normal(0, 1, (2, 4, 4)).astype(np.float32)
    dx, dy = (cv2.resize(f, (side, side), interpolation=cv2.INTER_CUBIC) * strength for f in field)
    columns, rows = np.meshgrid(
        np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)
    )
    return cv2.remap(ink, columns + dx, rows + dy, cv2.INTER_LINEAR)


def _degraded(rng: np.random.Generator, ink: np.ndarray) -> np.ndarray:
    """`ink` as it is, or typed small and enlarged, out of focus, or in soft grey."""
    side = ink.shape[0]
    draw = rng.random()
    if draw < 0.25:  # 8 to 16 px high, enlarged back: soft, blocky edges
        small = int(rng.integers(8, 17))
        ink = cv2.resize(ink, (small, small), interpolation=cv2.INTER_AREA)
        method = cv2.INTER_CUBIC if rng.random() < 0.5 else cv2.INTER_LINEAR
        ink = np.clip(cv2.resize(ink, (side, side), interpolation=method), 0, 1)
    elif draw < 0.45:
        ink = cv2.GaussianBlur(ink, (0, 0), float(rng.uniform(1, 3)))
    elif draw < 0.6:
        width = int(rng.integers(3, 7))
        ink = cv2.dilate(ink, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width)))
        ink = cv2.GaussianBlur(ink, (0, 0), width / 2)
    return ink


def _picture(rng: np.random.Generator, ink: np.ndarray) -> bytes:
    """PNG bytes of `ink` on a canvas with a margin, in ink from black to faint grey on paper
    of either polarity, with a little grain."""
    margin = [int(m) for m in rng.integers(2, 40, size=4)]
    ink = cv2.copyMakeBorder(ink, *margin, cv2.BORDER_CONSTANT, value=0)
    paper = float(rng.uniform(190, 255))
    pen = paper - float(rng.uniform(50, paper))
    if rng.random() < 0.3:
        paper, pen = 255 - paper, 255 - pen
    gray = paper + (pen - paper) * ink + rng.normal(0, float(rng.uniform(0, 3)), ink.shape)
    ok, encoded = cv2.imencode(".png", np.clip(np.rint(gray), 0, 255).astype(np.uint8))
    return encoded.tobytes()
