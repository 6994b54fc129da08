"""The font-digits evaluation set: typed digits from fonts that training never sees.

Each picture is one digit in one face of data/fonts.py's EVALUATION_FONTS (serif 1s with a
base bar, mono, italic, bold, condensed, a script), on a canvas of its own size, in one of
these kinds, the `kind` in labels.csv:

    print        black on white, any size, anywhere on the canvas (PNG)
    transparent  black or coloured ink on a transparent canvas (PNG, RGBA)
    inverted     white on black, off-centre (PNG)
    lowres       typed 8 to 16 pixels high, then enlarged 3 to 6 times: soft, blocky edges
    blurred      out of focus (PNG)
    grey         thick grey strokes with soft edges (PNG)
    faint        ink a little darker than the paper, with the paper's grain (PNG)
    jpeg         dark ink on off-white paper, compressed hard (JPEG)

The set is made once from a seed by make_font_digits.py and checked in with the list of the
fonts it used (fonts.txt), so that every machine scores the same files. It was never used to
choose any setting of the transform or of training: nothing trains or tunes on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from mnist_pipeline.data.fonts import EVALUATION_FONTS, faces, font_path, render
from mnist_pipeline.serving.drawn_digits import PEN_INKS, DrawnDigit, encode

FONT_DIGITS = Path(__file__).resolve().parents[2] / "font_digits"
FONTS_FILE = "fonts.txt"
KINDS = ("print", "transparent", "inverted", "lowres", "blurred", "grey", "faint", "jpeg")


def font_digits(per_kind: int, seed: int) -> Iterator[DrawnDigit]:
    """Yield `per_kind` pictures of each digit in each kind, digit by digit."""
    for label in range(10):
        for number in range(per_kind * len(KINDS)):
            yield font_digit(label, number, seed)


def font_digit(label: int, number: int, seed: int) -> DrawnDigit:
    """Return picture `number` of digit `label`; the same three numbers give the same bytes."""
    rng = np.random.default_rng([seed, label, number])
    kind = KINDS[number % len(KINDS)]
    every_face = faces(EVALUATION_FONTS)
    _, file = every_face[int(rng.integers(len(every_face)))]
    data, extension = _picture(rng, kind, render(font_path(file), label, 96))
    return DrawnDigit(f"{label}-{number:03d}-{kind}.{extension}", label, kind, data)


def fonts_txt() -> str:
    """The text of fonts.txt: a line `family<TAB>file` per face the set is drawn from."""
    return "".join(f"{family}\t{file}\n" for family, file in faces(EVALUATION_FONTS))


def _picture(rng: np.random.Generator, kind: str, glyph: np.ndarray) -> tuple[bytes, str]:
    """Return (file bytes, extension): the ink `glyph` (float, 0 to 1) drawn as `kind`."""
    if kind == "lowres":
        height = int(rng.integers(8, 17))
        ink = _placed(rng, _scaled(glyph, height), 1.3, 1.8)
        enlarge = float(rng.uniform(3, 6))
        size = (round(ink.shape[1] * enlarge), round(ink.shape[0] * enlarge))
        method = cv2.INTER_CUBIC if rng.random() < 0.5 else cv2.INTER_LINEAR
        ink = np.clip(cv2.resize(ink, size, interpolation=method), 0, 1)
    else:
        height = int(rng.integers(24, 120))
        ink = _placed(rng, _scaled(glyph, height), 1.2, 2.5)
    if kind == "blurred":
        ink = cv2.GaussianBlur(ink, (0, 0), float(rng.uniform(0.02, 0.05)) * height)
    if kind == "grey":
        width = max(3, round(height * float(rng.uniform(0.04, 0.08))))
        ink = cv2.dilate(ink, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width)))
        ink = cv2.GaussianBlur(ink, (0, 0), width / 2) * float(rng.uniform(0.35, 0.65))
    if kind == "transparent":
        colour = PEN_INKS[int(rng.integers(len(PEN_INKS)))] if rng.random() < 0.5 else (0, 0, 0)
        picture = np.zeros((*ink.shape, 4), dtype=np.uint8)
        picture[..., :3] = colour
        picture[..., 3] = np.rint(ink * 255)
        return encode(".png", picture), "png"
    paper, pen = 255.0, 0.0
    if kind == "inverted":
        paper, pen = 0.0, 255.0
    elif kind == "faint":
        paper = float(rng.uniform(200, 245))
        pen = paper - float(rng.uniform(40, 80))
    elif kind == "jpeg":
        paper, pen = float(rng.uniform(215, 245)), float(rng.uniform(10, 60))
    gray = paper + (pen - paper) * ink
    if kind in ("faint", "jpeg"):
        gray += rng.normal(0, 3, gray.shape)
    gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    if kind == "jpeg":
        quality = int(rng.integers(20, 50))
        return encode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality]), "jpg"
    return encode(".png", gray), "png"


def _scaled(glyph: np.ndarray, height: int) -> np.ndarray:
    """`glyph` resized to `height` pixels high, its proportions kept."""
    width = max(1, round(glyph.shape[1] * height / glyph.shape[0]))
    return cv2.resize(glyph, (width, height), interpolation=cv2.INTER_AREA)


def _placed(rng: np.random.Generator, ink: np.ndarray, least: float, most: float) -> np.ndarray:
    """`ink` somewhere on a canvas `least` to `most` times its larger side, each way."""
    side = max(ink.shape)
    height, width = (round(side * float(rng.uniform(least, most))) for _ in range(2))
    height, width = max(height, ink.shape[0] + 2), max(width, ink.shape[1] + 2)
    top = int(rng.integers(1, height - ink.shape[0]))
    left = int(rng.integers(1, width - ink.shape[1]))
    canvas = np.zeros((height, width), dtype=np.float32)
    canvas[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return canvas
