"""Picture files sent to the served model: PNG or JPEG bytes to 28x28 pixels, as MNIST looks.

The scoring request parser (request_formats.py) and png_to_pandas.py both use
image_to_pixels, so a drawing converted on a participant's machine and the same file sent to
the server give the same pixels. A file's declared size is read from its header before any
pixel is decoded.

A digit is made to look like MNIST's: a sheet or a note photographed on a table is cut out
of it (the table becomes the sheet's level), the ink is the side, dark or light, that
stands out of the background (dark ink on a dim photo, light ink on coloured paper, a sheet
on a dark table; ink as bright as its paper, blue on dark grey, by its colour), an image
editor's checkerboard behind a transparent layer is made one level, the paper's level is
fitted as a smooth surface (so that uneven light is not ink) and raised under a shadow cast
across the sheet, a glare that washes out the ink under it is divided out, ink is what
stands out of the paper's noise, what is not the digit is left out (the lines of ruled or
squared paper, the dots of dotted paper, a frame around the picture; a sheet's edge, the
table or a shadow apart from the digit; a box, a circle, a stain or a line under it), a
digit drawn in dots or broken dashes is kept whole, the digit is cropped, thin strokes are
widened to MNIST's 2-3 px, and it is fitted into 20x20 at full brightness and centred by its
centre of mass. An MNIST image sent as a PNG comes back as it was, to within one grey level.
Digits side by side (a number) are refused: there is no one digit to answer.
"""

from __future__ import annotations

import functools
import io
import itertools

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_pipeline.data.transform import IMAGE_SHAPE
from mnist_pipeline.errors import UserError

# The largest picture we agree to decode: 25 megapixels is a photo from a good phone.
# Anything larger is refused from its header, before a single pixel is decompressed.
MAX_IMAGE_PIXELS = 25_000_000
# MPO is how Pillow names a camera's JPEG that carries a preview picture.
ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG", "MPO")
# A smaller picture (on its longer side) holds no digit that can be read: one dark pixel of
# a 2x2 picture would be fitted into MNIST's box as a 20x20 square.
MIN_IMAGE_SIDE = 8
# A larger picture is averaged down to this many pixels on its longer side before its ink is
# found: enough for a 20x20 digit with room to spare, and what keeps a phone's photo fast.
WORK_SIDE = 1024
# IMREAD_COLOR applies a JPEG's EXIF orientation, and so do its reduced variants.
JPEG_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
# The paper's level is fitted on a copy at most this many pixels wide or high, in this
# many rounds, and its noise measured on about this many pixels.
PAPER_GRID = 64
PAPER_FIT_ROUNDS = 3
PAPER_NOISE_SAMPLE = 20_000
# LeCun's MNIST: the digit is fitted into a 20x20 box of the 28x28 image.
MNIST_BOX = 20
# Strokes are measured, widened and thinned on the digit fitted into this many pixels, to
# be from about this wide to this wide once fitted into MNIST_BOX (MNIST's 25th percentile
# is 2.0 px, its median 2.4 and its 75th percentile 2.8).
STROKE_WORK_SIDE = 80
MIN_STROKE_WIDTH = 2.0
MAX_STROKE_WIDTH = 2.6
# In that copy, a stroke is where the ink reaches this fraction of its peak.
STROKE_LEVEL = 0.1
# What is not the digit is found on a copy at most this many pixels wide or high.
ANALYSIS_SIDE = 512
# Ruled or squared paper: this many straight lines or more, parallel to a side, across this
# fraction of the picture, and no wider than this fraction of it or this many pixels of the
# copy (a 2 px line with its blurred edges), whichever is more. One line alone is the
# paper's only if it spans this fraction of the picture and touches no other ink.
MIN_RULED_LINES = 3
RULED_LINE_LENGTH = 0.85
RULED_LINE_WIDTH = 0.01
RULED_LINE_PIXELS = 6.0
FULL_SPAN = 0.95
# In the thresholded ink, a line's dashes (a blurred JPEG of a faint grid) closer than this
# fraction of the picture are one line.
RULED_LINE_GAP = 0.015
# Where a line is found before the ink is thresholded, its level across the picture is the
# median of this many samples or more.
RULED_LINE_SAMPLES = 128
# A sheet photographed a little turned: its lines are looked for in strips this many pixels
# wide across the picture, and are its lines if every strip holds them.
RULED_LINE_STRIP = 12
# Such lines within this fraction of the picture of three or four of its edges are a frame
# around it (a canvas exported with a border), even where they touch the digit.
FRAME_BAND = 0.03
# Ink closer than this fraction of the picture is one part. The digit is the heaviest part
# away from the edges with at least this share of the ink; parts within this fraction of its
# size of it are kept.
PART_GAP = 0.02
MIN_DIGIT_SHARE = 0.05
DIGIT_MARGIN = 0.25
# ...and parts that hold less than this share of the ink away from the edges and the marks
# around or under the digit are the pieces of a broken line, joined across wider gaps.
DIGIT_INK_SHARE = 0.5
# Ink of another colour than its paper (_with_colour_contrast). A picture whose channels
# differ from its first by no more levels than this is grey.
GREY_SPREAD = 12.0
# Else the ink is the pixels above this percentile of the colour difference from the paper,
# told by hue when their difference in colour is this many times their difference in
# brightness, and at least this far (CIELAB, 0-100 lightness).
INK_PERCENTILE = 99.5
HUE_RATIO = 2.0
MIN_COLOUR_CONTRAST = 15.0
# The background's level is the median of a band this fraction of the picture wide along its
# edges; the ink is on the side that reaches this many times as far from it.
BORDER_BAND = 0.05
# A backdrop whose edges differ by more grey levels than this has light falling across it.
BACKDROP_LEVELS = 12.0
INK_SIDE_RATIO = 2.0
# ...or, where neither does, the side whose far pixels are this many times narrower than
# the other side's, if the other's cover at least this share of the picture.
THIN_SIDE_RATIO = 3.0
BACKGROUND_SHARE = 0.15
# ...or, where neither is, dark ink unless the background is darker than this: kraft paper
# and dim photos of white paper lie at 100-130, a chalkboard or a dark canvas far below.
DARK_BACKGROUND = 80.0
# A picture whose middle is this many levels lighter than that band, and whose light part is
# this solid (its area over its convex hull's), is a sheet of paper on a darker table: the
# sheet is the background.
SHEET_CONTRAST = 40.0
SHEET_SOLIDITY = 0.9
# A sheet or a note on a table that holds most of the picture (_on_its_sheet), looked for at
# SHEET_SIDE pixels: the table covers this share of the picture's edges at least, the ink
# this share of the sheet, the table holds fewer pixels than this darker than itself by half
# the contrast (a stroke), and the sheet's outline, straightened to within this share of its
# length, has four corners at most inside the picture.
SHEET_SIDE = 256
SHEET_BORDER = 0.15
SHEET_INK = 0.002
SHEET_DARK_TABLE = 4
SHEET_STRAIGHT = 0.02
# A part whose strokes are wider than this fraction of its size is a stain, not a digit. One
# with ink in this many of 16 directions around another part at least this fraction of its
# size is a box or a circle around it, if no more than this share of its ink lies deeper
# inside its convex hull than this fraction of its size (the outline of a hollow 6 or 9
# surrounds the hole of its loop, but its tail lies inside). A part this flat under the
# digit is a line under it.
BLOB_WIDTH = 0.4
SURROUNDING_DIRECTIONS = 12
SURROUNDED_SIZE = 0.4
INSIDE_HULL_SHARE = 0.1
INSIDE_HULL_DEPTH = 0.1
FLAT = 0.25
# A part that touches the box or the circle around it is one with it: the box or the circle
# is its ink within INSIDE_HULL_DEPTH of its convex hull's edge, if the part fills this share
# of its hull and that ink is a loop closed around a drawing of its own, one that holds this
# share of the part's ink, lies this much inside the loop, no more than this share of it
# within this many stroke widths of the loop, and is not a straight stroke this many stroke
# widths wide (the slash of a 0).
LOOP_SOLIDITY = 0.9
LOOP_SHARE = 0.2
LOOP_INSIDE = 0.9
LOOP_NEAR = 0.4
LOOP_REACH = 0.5
SLASH_WIDTHS = 2.0
# Printed lines around the digit (a row of a form's cells) are no wider than this fraction
# of their part, and hold at least this share of its ink.
PRINTED_WIDTH = 0.05
PRINTED_SHARE = 0.9
# ...and, where the digit touches them, they are the ink narrower than this fraction of the
# digit's widest strokes, in shapes that hold this share of their ink in straight runs
# across or down at least this fraction of the strokes' size long; that are at least this
# many of those widths wide and high (a comb, a corner: not a 9's thin tail), or that hold
# that share in one line across, from beyond the strokes' left to beyond their right (a line
# to write on); and that lie along the strokes for no more than this share of their ink (not
# a bold stroke's edge).
# Only if the strokes away from the picture's edges hold this share of the ink left.
FORM_LINE_WIDTH = 0.6
FORM_LINE_SHARE = 0.75
FORM_LINE_LENGTH = 0.5
FORM_SHAPE_WIDTHS = 2.0
FORM_ALONG_STROKES = 0.5
FORM_DIGIT_SHARE = 0.8
# A shadow cast across the sheet has an edge sharper than a fitted surface follows. What is
# wider than this many times the strokes' width, reaches the border and lies between these
# two fractions of the ink's level (on average) is background too, where it covers at least
# this share of the border band (a pen's shadow, crossing it once, covers about a fiftieth),
# and where this share of the strokes (the ink at this fraction of its peak) keeps half its
# level above it.
SHADOW_WIDTHS = 3.0
SHADOW_LEVEL = 0.15
SHADOW_INK_LEVEL = 0.85
SHADOW_AREA = 0.01
SHADOW_STROKES_KEPT = 0.9
SHADOW_STROKE_LEVEL = 0.6
# A glare (a lamp on glossy paper or a whiteboard) lightens the paper and the ink under it
# alike. It is where the background keeps less than GLARE_RATIO of the fitted paper's level,
# on paper at least GLARE_PAPER grey levels from white (here: above black), lightened by
# more than GLARE_GRAIN times the paper's noise (a blotchy sheet's light patches are not),
# over SHADOW_AREA of the picture at least, with no ink under it at half the strokes' level
# (the white strokes of a digit whose grey drop shadow is the ink are no glare). Out to where
# the background keeps GLARE_EDGE of the paper's level, it is scaled back up, at most
# GLARE_GAIN times.
GLARE_RATIO = 0.35
GLARE_PAPER = 20.0
GLARE_GRAIN = 5.0
GLARE_EDGE = 0.8
GLARE_GAIN = 8.0
# Dotted paper (_dot_grid): from this many dots to this many, each at most this share of
# the picture's side wide, with this many neighbours within this many times the median
# distance to the nearest one, spread over this share of the picture's width and height.
GRID_DOTS = 40
MAX_GRID_DOTS = 2000
GRID_DOT_SIDE = 0.015
GRID_NEIGHBOURS = 3
GRID_PITCH_SPREAD = 1.25
GRID_SPREAD = 0.6
# A part near the digit with less than this share of the digit's ink is a speck; one whose
# ink is fainter than this share of the digit's strokes (their 90th percentile), with
# strokes at least this many times as wide, is a stain or a shadow.
SPECK_SHARE = 0.03
FAINT_SHARE = 0.3
BLOT_WIDTHS = 1.5
# A part that touches one edge is the digit if it is this many times as heavy as the
# heaviest part away from the edges (a dot or a line beside a digit cut by the edge).
EDGE_DIGIT_WEIGHT = 2.0
# Another digit beside the digit (a number): a part at least this share of its height and of
# the two's together, level with it, apart from it by at least this share of its height (and
# at most its height), nothing between the two, and the two as wide as they are tall.
BESIDE_HEIGHT = 0.8
BESIDE_GAP = 0.1
# Ink is what stands out of the paper by more than this many deviations of its noise.
INK_NOISE_MULTIPLE = 5.0
# ...and, on a picture with no noise at all (a PNG drawn on a computer), by more than this
# many grey levels: below it a picture is a single flat colour.
FLAT_LEVELS = 4.0
# A screenshot of a drawing on a transparent layer shows the editor's checkerboard behind
# it: two exact levels, together at least this share of the picture's outermost pixels,
# alternating along each of its edges at least this many times, in runs whose median
# lengths differ by at most this factor (the squares of the checks).
CHECK_SHARE = 0.9
CHECK_RUNS = 4
CHECK_RUN_RATIO = 1.5


ONLY_LINES = "image holds only the lines of ruled or squared paper: no digit"
DIGITS_SIDE_BY_SIDE = "image holds digits side by side: send one digit to a picture"


def image_to_pixels(data: bytes, style: str = "digit") -> np.ndarray:
    """Return uint8 (28, 28), white on black, from the bytes of a PNG or JPEG file.

    Any size, colour or grey, with or without transparency, dark on light or light on
    dark. `style` is a TransformSpec's image_style: "digit" or "object". Raises UserError
    with a one-line reason for anything else.
    """
    image_format, (width, height) = _declared_format_and_size(data)
    # A PNG may carry transparency, which only IMREAD_UNCHANGED keeps. A JPEG has none,
    # but a phone's photo is stored sideways with an EXIF orientation that only
    # IMREAD_COLOR applies.
    if image_format == "PNG":
        flags = cv2.IMREAD_UNCHANGED
    else:
        # A photo of millions of pixels ends as 28x28: libjpeg decodes it at a half, a
        # quarter or an eighth of its size for a fraction of the time.
        flags = JPEG_REDUCED_FLAGS[_reduction(width, height)]
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if decoded is None:
        raise UserError("image data is damaged and cannot be decoded")
    gray = _checkerboard_flattened(_shrunk(_to_gray(decoded, lossless=image_format == "PNG")))
    if style == "digit":
        gray = _on_its_sheet(gray)
    gray = _light_on_dark(gray, style == "digit")
    ink = _digit_ink(gray) if style == "digit" else _object_ink(gray)
    if ink.max() == 0 and style == "digit" and _stands_out_of_its_border(gray):
        # A broad, soft stroke (a thick grey bar scanned at low resolution) is smooth enough
        # for the fitted paper surface to take it in: the paper is then the border's level.
        ink = _stretched(gray - _border_level(gray), _border_noise(gray), keep_edges=True)
    if ink.max() == 0 and style == "digit" and _digit_ink(gray, without_lines=False).max() > 0:
        raise UserError(ONLY_LINES)
    if ink.max() == 0:
        raise UserError("image is a single flat colour: there is nothing to classify")
    if style == "digit":
        ink = _digit_alone(ink)
        if ink.max() == 0:
            raise UserError(ONLY_LINES)
        return _fit_like_mnist(ink)
    return _fit_like_fashion(ink)


def _reduction(width: int, height: int) -> int:
    """Return 1, 2, 4 or 8: the largest that keeps the picture's longer side >= WORK_SIDE."""
    reduction = 1
    while reduction < 8 and max(width, height) // (2 * reduction) >= WORK_SIDE:
        reduction *= 2
    return reduction


def _shrunk(gray: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """Return `gray` averaged down to at most `side` pixels on its longer side."""
    height, width = gray.shape[:2]
    if max(height, width) <= side:
        return gray
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def declared_pixels(data: bytes) -> int:
    """How many pixels the file's header declares; UserError if it is not a PNG or JPEG, or
    declares more than MAX_IMAGE_PIXELS."""
    _, (width, height) = _declared_format_and_size(data)
    return width * height


def _declared_format_and_size(data: bytes) -> tuple[str, tuple[int, int]]:
    """Read the format, width and height from the file's header without decoding any pixel,
    and refuse a file that declares more than MAX_IMAGE_PIXELS."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, size = image.format, image.size
    except Image.DecompressionBombError:
        raise UserError(
            f"image declares more pixels than the {MAX_IMAGE_PIXELS:,} accepted"
        ) from None
    except UnidentifiedImageError:
        if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:2] == b"\xff\xd8":
            raise UserError("image header is damaged or declares an impossible size") from None
        raise UserError("bytes are not a PNG or JPEG image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"image header cannot be read ({error})") from None
    if image_format not in ACCEPTED_IMAGE_FORMATS:
        raise UserError(f"image is {image_format}, expected PNG or JPEG")
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise UserError(
            f"image declares {size[0]}x{size[1]} pixels, more than the {MAX_IMAGE_PIXELS:,} "
            "accepted"
        )
    if max(size) < MIN_IMAGE_SIDE:
        raise UserError(
            f"image is {size[0]}x{size[1]} pixels: too small to hold a digit (at least "
            f"{MIN_IMAGE_SIDE} on its longer side)"
        )
    return image_format, size


def _to_gray(decoded: np.ndarray, lossless: bool = False) -> np.ndarray:
    """Return float32 grey levels 0-255 (h, w); transparent pixels become background.

    A PNG saved from an array of another scale is read at that scale: a mask of 0s and 1s
    (`lossless`: in a JPEG, levels 0 and 1 are a black photo), or 0-255 levels in a 16-bit
    file. At the file's own scale it would be a blank, or strokes too faint to tell from the
    paper.
    """
    image = decoded.astype(np.float32)
    colour = image if image.ndim == 2 else image[:, :, :3]  # a view, without the alpha
    top = float(colour.max())
    if decoded.dtype == np.uint16:  # a PNG of 16 bits
        if image.ndim == 3 and image.shape[2] == 4:
            image[:, :, 3] /= 257.0
        if top > 255.0:  # else 0-255 levels, saved as 16 bits
            colour /= 257.0
    if lossless and top == 1.0:  # a mask
        colour *= 255.0
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    gray = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    if channels == 3 or image[:, :, 3].min() == 255.0:  # opaque
        return _with_colour_contrast(colour, gray)
    # Strokes drawn on a transparent canvas: composite them onto a background that
    # contrasts with the opaque pixels, so that light and dark ink both show.
    alpha = image[:, :, 3] / 255.0
    opaque = gray[alpha > 0.5]
    background = 255.0 if (opaque.size == 0 or opaque.mean() < 128) else 0.0
    return gray * alpha + background * (1.0 - alpha)


def _with_colour_contrast(colour: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Return `gray`, or, where the ink differs from its paper by hue far more than by
    brightness (blue ink on dark grey paper, red on green), grey levels whose contrast is
    the colour difference: by brightness alone the ink would vanish.

    The paper is the median colour of a band along the edges; the ink, the pixels that
    differ most from it in colour (CIELAB distance, of about 128x128 of the pixels). A
    grey picture, or blue ballpoint on white paper, differs as much in brightness and
    keeps its grey levels.
    """
    step = max(1, max(gray.shape) // 128)
    sample = np.ascontiguousarray(colour[::step, ::step])
    if float(np.abs(sample - sample[:, :, :1]).max()) <= GREY_SPREAD:  # grey: no hue
        return gray
    sample = cv2.cvtColor(sample / 255.0, cv2.COLOR_BGR2Lab)
    paper = np.median(sample[_border_band(sample.shape[:2])], axis=0)
    difference = np.linalg.norm(sample - paper, axis=2)
    ink = difference >= np.percentile(difference, INK_PERCENTILE)
    colour_contrast = float(difference[ink].mean())
    brightness_contrast = float(np.abs(sample[ink, 0] - paper[0]).mean())
    if colour_contrast < MIN_COLOUR_CONTRAST or colour_contrast < HUE_RATIO * brightness_contrast:
        return gray
    lab = cv2.cvtColor(colour / 255.0, cv2.COLOR_BGR2Lab)
    return np.clip(255.0 - 2.55 * np.linalg.norm(lab - paper, axis=2), 0.0, 255.0)


def _checkerboard_flattened(gray: np.ndarray) -> np.ndarray:
    """Return `gray` with an image editor's transparency checkerboard, seen in a screenshot
    of a drawing on a transparent layer, made one level: the mean of its two.

    The checks are the two commonest levels of the picture's outermost pixels (to within a
    level), where together they make up CHECK_SHARE of them and alternate along each edge in
    runs of like length: squares. No photo has two exact levels; a frame, stripes across the
    picture and the lines of ruled paper do not alternate along every edge, or not in runs of
    like length. (Diagonal stripes do, and are made one level too.) It is done before the
    ink's side is chosen, which two levels of background would mislead.
    """
    edges = [np.rint(edge) for edge in _edges(gray)]
    border = np.concatenate(edges)
    levels, counts = np.unique(border, return_counts=True)
    if levels.size < 2:
        return gray
    low, high = np.sort(levels[np.argsort(counts)[-2:]])
    if high - low <= FLAT_LEVELS:
        return gray
    if np.mean((np.abs(border - low) <= 1) | (np.abs(border - high) <= 1)) < CHECK_SHARE:
        return gray
    runs = {False: [], True: []}
    for edge in edges:
        is_low, is_high = np.abs(edge - low) <= 1, np.abs(edge - high) <= 1
        checks = is_high[is_low | is_high]
        starts = np.flatnonzero(np.diff(checks)) + 1
        if starts.size + 1 < CHECK_RUNS:
            return gray
        # The runs between the first change and the last are whole squares.
        for level, length in zip(checks[starts[:-1]], np.diff(starts), strict=True):
            runs[bool(level)].append(length)
    low_run, high_run = np.median(runs[False]), np.median(runs[True])
    if max(low_run, high_run) > CHECK_RUN_RATIO * min(low_run, high_run):
        return gray
    checks = (np.abs(gray - low) <= 1) | (np.abs(gray - high) <= 1)
    return np.where(checks, np.float32((low + high) / 2), gray)


def _edges(gray: np.ndarray) -> list[np.ndarray]:
    """Return the picture's outermost pixels: its top and bottom rows, left and right columns."""
    return [gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]]


def _border_level(gray: np.ndarray) -> float:
    """Return the median of the picture's outermost pixels: its background, as a first guess."""
    return float(np.median(np.concatenate(_edges(gray))))


def _border_noise(gray: np.ndarray) -> float:
    """Return the deviation of the border's pixels from their median (robust: 1.4826 MAD)."""
    border = np.concatenate(_edges(gray))
    return 1.4826 * float(np.median(np.abs(border - np.median(border))))


def _stands_out_of_its_border(gray: np.ndarray) -> bool:
    """Whether anything inside the picture is brighter than its border by more than noise.

    A picture is a single flat colour when nothing in it (averaged over 3x3 pixels, so that
    one noisy pixel does not count) rises above the border's level by more than
    INK_NOISE_MULTIPLE deviations of the border's own noise, nor by more than FLAT_LEVELS.
    A blank page with sensor grain (deviation 2) saved as a JPEG reaches 6 levels above its
    median at its 99.9th percentile, under 5 deviations; the faintest ink we accept is a few
    levels darker than clean paper. A sheet lit unevenly has a border that varies as much
    as its inside, so it stays blank.
    """
    smooth = cv2.blur(gray, (3, 3))
    rise = float(smooth.max()) - _border_level(gray)
    return rise > max(FLAT_LEVELS, INK_NOISE_MULTIPLE * _border_noise(gray))


def _light_on_dark(gray: np.ndarray, on_paper: bool = True) -> np.ndarray:
    """Return `gray` turned so that the background is dark and the ink light.

    The background is the median of a band along the edges (a frame drawn around the
    picture is too thin to be it), or, `on_paper`, the sheet of paper on a darker table
    that fills most of a photo (a garment, solid and light, is not a sheet). The ink is on
    the side, darker or lighter, that reaches twice as far from it: dark ink on a dim photo
    of white paper, light ink on coloured paper. Where neither does, a background that is
    not dark has dark ink.
    """
    # Medians from about 256x256 of the picture's pixels: of a band along its edges, and of all.
    step = max(1, max(gray.shape) // 256)
    sample = gray[::step, ::step]
    in_band = _border_band(sample.shape)
    level, middle = float(np.median(sample[in_band])), float(np.median(sample))
    if on_paper and middle > level + SHEET_CONTRAST and _is_a_sheet(sample > (level + middle) / 2):
        level = middle
    smooth = cv2.blur(gray, (3, 3))
    darker, lighter = level - float(smooth.min()), float(smooth.max()) - level
    if darker > INK_SIDE_RATIO * lighter:
        dark_ink = True
    elif lighter > INK_SIDE_RATIO * darker:
        dark_ink = False
    else:
        dark_ink = _strokes_on_the_dark_side(smooth, level - darker / 2, level + lighter / 2)
        if dark_ink is None:
            dark_ink = level > DARK_BACKGROUND
    return 255.0 - gray if dark_ink else gray


def _strokes_on_the_dark_side(smooth: np.ndarray, dark: float, light: float) -> bool | None:
    """Whether the pixels below `dark` are the strokes and those above `light` a broad
    region of the background; False for the other way round; None if neither.

    A shadow over half the sheet makes the picture's border half paper, half shadow, and
    its level lies between them: the lit paper reaches as far from it as the ink does.
    """
    sides = smooth < dark, smooth > light
    widths = [_stroke_width(255.0 * side.astype(np.float32)) for side in sides]
    broad = int(np.argmax(widths))
    if min(widths) == 0 or widths[broad] < THIN_SIDE_RATIO * min(widths):
        return None
    if np.mean(sides[broad]) < BACKGROUND_SHARE:  # lit paper covers more than strokes do
        return None
    return broad == 1


def _border_band(shape: tuple[int, int]) -> np.ndarray:
    """Return bool `shape`: True in a band BORDER_BAND of the picture wide along its edges."""
    band = max(1, round(BORDER_BAND * min(shape)))
    in_band = np.ones(shape, dtype=bool)
    in_band[band:-band, band:-band] = False
    return in_band


def _is_a_sheet(light: np.ndarray) -> bool:
    """Whether the largest part of the boolean `light` is a solid shape, as a sheet of paper
    on a table is (the digit on it counts as part of it; a bold light digit is not solid)."""
    contours, _ = cv2.findContours(
        light.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return False
    outline = max(contours, key=cv2.contourArea)
    return cv2.contourArea(outline) >= SHEET_SOLIDITY * cv2.contourArea(cv2.convexHull(outline))


def _on_its_sheet(gray: np.ndarray) -> np.ndarray:
    """Return `gray` with the table around a sheet of paper (or a note) made the sheet's level.

    The sheet is the largest part lighter than Otsu's threshold, filled where the digit is
    written. It is one only if it is solid, with four corners where the picture's edges do
    not cut it (a light 0 on a dark canvas has more), SHEET_CONTRAST lighter than the table,
    which runs along the picture's edges (a stroke that reaches an edge does not), and with
    dark ink inside it and none on the table (a stroke that runs on into a shadow). A sheet
    that fills most of the picture is found again by _light_on_dark, where this finds no ink.
    """
    if max(gray.shape) <= 2 * IMAGE_SHAPE[0]:
        return gray
    small = _shrunk(gray, SHEET_SIDE).astype(np.uint8)
    _, light = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    light = cv2.morphologyEx(light, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(light, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return gray
    outline = max(contours, key=cv2.contourArea)
    within = cv2.drawContours(np.zeros_like(light), [outline], -1, 1, cv2.FILLED)
    inside = cv2.erode(within, np.ones((5, 5), np.uint8))
    table = within == 0
    if np.mean(np.concatenate(_edges(table))) < SHEET_BORDER or not _is_a_sheet(light):
        return gray
    level = float(np.median(small[(within == 1) & (light == 1)]))
    contrast = level - float(np.median(small[table]))
    ink = (inside == 1) & (small < level - contrast / 2)
    if contrast < SHEET_CONTRAST or ink.sum() < SHEET_INK * within.sum():
        return gray
    if np.count_nonzero(table & (small < level - 1.5 * contrast)) >= SHEET_DARK_TABLE:
        return gray
    height, width = small.shape
    polygon = cv2.approxPolyDP(outline, SHEET_STRAIGHT * cv2.arcLength(outline, True), True)
    x, y = polygon[:, 0, 0], polygon[:, 0, 1]
    if np.count_nonzero((x > 2) & (x < width - 3) & (y > 2) & (y < height - 3)) > 4:
        return gray
    # The table becomes the sheet's level at its nearest edge: light falls unevenly.
    local = cv2.inpaint(small, 1 - inside, 3, cv2.INPAINT_TELEA).astype(np.float32)
    size = gray.shape[::-1]
    inside = cv2.resize(inside, size, interpolation=cv2.INTER_NEAREST)
    local = cv2.resize(local, size, interpolation=cv2.INTER_LINEAR)
    return np.where(inside == 1, gray, local)


def _object_ink(gray: np.ndarray) -> np.ndarray:
    """Return float32 (h, w): 0 where the background is, up to 255 where the object is brightest.

    A garment is a large filled shape, so the background is one level, the border's median;
    or, on a backdrop that light falls across, a surface fitted to the border's band.
    """
    return _stretched(gray - _backdrop(gray), noise=0.0)


def _backdrop(gray: np.ndarray) -> np.ndarray | float:
    """Return the background's level: the border's median where half of a band along the
    edges is within FLAT_LEVELS of it (Fashion-MNIST's black, a studio's white), else a
    quadratic surface fitted to the band without the object, if it spans more than
    BACKDROP_LEVELS grey levels."""
    coarse = _shrunk(gray, PAPER_GRID)
    in_band = _border_band(coarse.shape)
    around = coarse[in_band]
    if np.mean(np.abs(around - np.median(around)) <= FLAT_LEVELS) >= 0.5:
        return _border_level(gray)  # one level, but where the object reaches the edges
    terms, values = _quadratic_terms(*coarse.shape), coarse.reshape(-1, 1).astype(np.float64)
    kept = in_band.ravel()
    for _ in range(PAPER_FIT_ROUNDS):  # the object is lighter: leave out what lies above
        if kept.sum() < 4 * terms.shape[1]:
            return _border_level(gray)
        coefficients, residuals, spread = _fit_round(terms, values, kept)
        kept = in_band.ravel() & (residuals <= max(3.0 * spread, 2.0))
    surface = (terms @ coefficients).reshape(coarse.shape).astype(np.float32)
    # A smooth backdrop fits within a few levels; a bag that fills the picture does not.
    if float(np.ptp(surface[in_band])) <= BACKDROP_LEVELS or spread > FLAT_LEVELS:
        return _border_level(gray)
    height, width = gray.shape
    return cv2.resize(surface, (width, height), interpolation=cv2.INTER_LINEAR)


def _digit_ink(gray: np.ndarray, without_lines: bool = True) -> np.ndarray:
    """Return float32 (h, w): 0 where the paper is, up to 255 where the ink is strongest.

    The paper is a smooth surface fitted to the pixels that are not ink, so that the light
    falling across a photographed sheet is not taken for ink; and, under a shadow cast
    across it, the shadow's level (see _under_shadows). With `without_lines`, the lines of
    ruled or squared paper are taken away too, at their own level (see _without_lines).
    """
    paper = _paper_surface(gray)
    above_paper = cv2.subtract(gray, paper)
    noise = _paper_noise(above_paper)
    mnist_sized = max(gray.shape) <= 2 * IMAGE_SHAPE[0]
    unglared = None if mnist_sized else _out_of_glare(gray, paper, above_paper, noise)
    if unglared is not None:
        gray = unglared
        above_paper = cv2.subtract(gray, paper)
        noise = _paper_noise(above_paper)
    if without_lines and not mnist_sized:
        unlined = _without_lines(above_paper, noise)
        if unlined is not above_paper:  # lines were taken away: measure the paper again
            above_paper, noise = unlined, _paper_noise(unlined)
    ink = _stretched(above_paper, noise=noise, keep_edges=True)
    if mnist_sized:
        return ink
    above_shadows = _under_shadows(gray, paper, above_paper, ink)
    if above_shadows is None:
        return ink
    return _stretched(above_shadows, noise=_paper_noise(above_shadows), keep_edges=True)


def _without_lines(above_paper: np.ndarray, noise: float) -> np.ndarray:
    """Return `above_paper` less the lines of ruled or squared paper, each at its level (the
    same array, where it has none).

    A printed line runs across the picture, so its level is the median of its row (or
    column), which the strokes of a digit that crosses it do not move. Found before the ink
    is thresholded, a faint line that a blurred JPEG breaks into dashes is still whole.
    """
    for transposed in (False, True):  # the rows, then the columns
        image = above_paper.T if transposed else above_paper
        line = _lines_along(image, noise)
        if line is not None:
            # Ink twice as dark as the line, where the digit crosses it, is left whole.
            on_line = (line > 0) & (image <= 2 * line)
            image = np.where(on_line, np.maximum(image - line, 0), image)
            above_paper = image.T if transposed else image
    return above_paper


def _lines_along(image: np.ndarray, noise: float) -> np.ndarray | None:
    """Return the level of the printed lines along the rows of `image`, (h, 1) or, on a
    turned sheet, (h, w), where each strip RULED_LINE_STRIP wide has its own; or None."""
    levels = _lines_across(image, noise)
    if levels.any():
        return levels[:, None]
    # A line turned by a degree or two is thin and straight still within a strip.
    line = np.empty(image.shape, np.float32)
    strips = max(1, image.shape[1] // RULED_LINE_STRIP)
    bounds = np.linspace(0, image.shape[1], strips + 1).astype(int)
    for start, end in itertools.pairwise(bounds):
        levels = _lines_across(image[:, start:end], noise)
        if not levels.any():
            return None
        line[:, start:end] = levels[:, None]
    return line


def _lines_across(image: np.ndarray, noise: float) -> np.ndarray:
    """Return, for each row of `image`, the level of the printed line along it, or 0.

    The lines are as _ruled_lines finds them: MIN_RULED_LINES or more, each at a level that
    it keeps across RULED_LINE_LENGTH of the picture, and no wider at half that level than
    RULED_LINE_PIXELS or RULED_LINE_WIDTH of the picture. What is taken away is the row's
    median, but no more than the lines' usual peak: where a bold stroke of the digit covers
    most of a line, the median is the stroke's.
    """
    samples = image[:, :: max(1, image.shape[1] // RULED_LINE_SAMPLES)]
    kept = np.percentile(samples, 100 * (1 - RULED_LINE_LENGTH), axis=1)
    count, labels = cv2.connectedComponents(
        (kept > max(3.0 * noise, 2.0)).astype(np.uint8)[:, None]
    )
    labels = labels[:, 0]
    thinnest = max(RULED_LINE_PIXELS, RULED_LINE_WIDTH * max(image.shape))
    lines = []
    for line in range(1, count):
        at = kept[labels == line]
        if np.count_nonzero(at >= 0.5 * at.max()) <= thinnest:
            lines.append(line)
    if len(lines) < MIN_RULED_LINES:
        return np.zeros(len(image), np.float32)
    level = np.percentile(samples, 50, axis=1)
    peak = np.median([level[labels == line].max() for line in lines])
    return np.where(np.isin(labels, lines), np.minimum(level, peak), 0).astype(np.float32)


def _under_shadows(
    gray: np.ndarray, paper: np.ndarray, above_paper: np.ndarray, ink: np.ndarray
) -> np.ndarray | None:
    """Return what lies above the paper and above any shadow cast across it, or None where
    there is no such shadow, or where taking it away would take the strokes with it.

    A shadow (of a hand, a phone, the edge of a book) has an edge that no smooth surface
    follows. It is wider than the strokes, so a grey opening whose square is SHADOW_WIDTHS
    times as wide as the strokes keeps it and takes the strokes out: the classic top-hat
    for uneven light. What the opening keeps is taken away where it reaches the picture's
    border, as a shadow cast from outside does, if that leaves the strokes whole: where a
    digit's own ink is that wide (a bold loop filled in, a frame or a box read as
    strokes), the opening would hollow the strokes out.
    """
    peak = above_paper.max()
    in_band = _border_band(gray.shape)
    # Most pictures: nothing wide at the border. The opening lies nowhere above the picture,
    # so where the picture does not stand out of the paper at the border, it does not either.
    if np.mean((cv2.subtract(gray, paper) > SHADOW_LEVEL * peak)[in_band]) < SHADOW_AREA:
        return None
    stroke = ink > SHADOW_STROKE_LEVEL * 255.0
    square = _wider_than(stroke, gray.shape)
    if square is None:
        return None
    shadows = cv2.morphologyEx(gray, cv2.MORPH_OPEN, square)
    level = cv2.subtract(shadows, paper)
    wide = level > SHADOW_LEVEL * peak
    if np.mean(wide[in_band]) < SHADOW_AREA:
        return None
    # A shadow is cast from outside the picture: it reaches the border. It is lighter than
    # the ink: a wide part at the ink's level is ink (a bold digit cut by the border).
    cast = _reaching(wide, in_band, level, below=SHADOW_INK_LEVEL * peak)
    # What is as wide but stays inside the picture (a bold loop filled in) is the digit's.
    background = np.where(wide & ~cast, paper, np.maximum(paper, shadows))
    above_shadows = cv2.subtract(gray, background)
    kept = stroke & (above_shadows >= 0.5 * above_paper)
    # The shadow reaches the border away from the strokes; the soft edge of a blurred
    # stroke that fills the picture, wider than its core, lies beside the stroke.
    beside_strokes = cv2.dilate(kept.astype(np.uint8), square) > 0
    if np.mean((cast & ~beside_strokes)[in_band]) < SHADOW_AREA:
        return None
    strokes = stroke & ~cast
    standing_out = stroke & (above_shadows > SHADOW_LEVEL * peak)
    if strokes.sum() < MIN_DIGIT_SHARE * standing_out.sum():
        # The digit lies in the shadow: the ink's core, darker than any shadow, must stand
        # out of it still (a bold digit joined to the shadow would be hollowed out).
        core = ink > SHADOW_INK_LEVEL * 255.0
        out_of_it = above_shadows[core] > SHADOW_LEVEL * peak
        return above_shadows if np.mean(out_of_it) >= SHADOW_STROKES_KEPT else None
    # The strokes outside it must keep their level: those inside the border band, as ink
    # that reaches it may be the false ink of a glare that the fitted surface did not follow
    # (on a whiteboard); all of them where only specks are inside (the digit reaches it).
    inside = strokes & ~_reaching(strokes, in_band)
    if inside.sum() < MIN_DIGIT_SHARE * strokes.sum():
        inside = strokes
    if not inside.any() or np.mean(kept[inside]) < SHADOW_STROKES_KEPT:
        return None
    return above_shadows


def _out_of_glare(
    gray: np.ndarray, paper: np.ndarray, above_paper: np.ndarray, noise: float
) -> np.ndarray | None:
    """Return `gray` with a glare on the paper taken out, or None where there is none.

    Here the ink is light on dark paper, so a glare, which adds a share of the light that
    the paper and the ink lack, scales both down by the same factor: a stroke under it keeps
    only a fraction of its contrast, and the fitted surface, which does not follow so local
    a light, lies above it. The background (a grey opening as wide as a shadow's, which
    takes the strokes out) over the paper's level is that factor; the picture is divided by
    it where the glare is (see GLARE_RATIO).
    """
    # Most pictures: white paper, or none of it lighter than the fitted surface by far.
    grey_paper = paper >= GLARE_PAPER
    if np.mean(grey_paper & (above_paper < -GLARE_GRAIN * noise)) < SHADOW_AREA:
        return None
    stroke = _stretched(above_paper, noise=noise, keep_edges=True) > SHADOW_STROKE_LEVEL * 255.0
    square = _wider_than(stroke, gray.shape)
    if square is None:
        return None
    background = cv2.blur(cv2.morphologyEx(gray, cv2.MORPH_OPEN, square), square.shape)
    kept = background / np.maximum(paper, np.float32(1e-3))
    glare = grey_paper & (kept < GLARE_RATIO) & (paper - background > GLARE_GRAIN * noise)
    if np.mean(glare) < SHADOW_AREA:
        return None
    # A glare lightens the ink under it too: where that ink is as strong as the rest, the
    # light part is something else (a white digit's strokes beside its grey drop shadow).
    if np.percentile(gray[glare], 99) > 0.5 * np.median(gray[stroke]):
        return None
    lightened = _reaching(kept < GLARE_EDGE, glare)
    gain = np.clip(paper / np.maximum(background, np.float32(1.0)), 1.0, GLARE_GAIN)
    return np.where(lightened, gray * gain, gray).astype(np.float32)


def _wider_than(stroke: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Return a square SHADOW_WIDTHS times as wide as the strokes of boolean `stroke`, with
    which a grey opening takes the strokes out and keeps what is wider (a shadow, the paper
    under a glare); None where there are no strokes, or it would be half the picture wide."""
    side = 2 * round(SHADOW_WIDTHS * _stroke_width(stroke * np.float32(255.0)) / 2) + 1
    if not stroke.any() or side >= min(shape) // 2:
        return None
    return np.ones((side, side), np.uint8)


def _reaching(
    mask: np.ndarray, band: np.ndarray, level: np.ndarray | None = None, below: float = 0.0
) -> np.ndarray:
    """Return the parts of boolean `mask` (8-connected) that reach into boolean `band`;
    given `level`, only those whose mean level is below `below`."""
    count, parts = cv2.connectedComponents(mask.astype(np.uint8))
    chosen = np.zeros(count, bool)
    chosen[parts[band & mask]] = True
    if level is not None:
        totals = np.bincount(parts.ravel(), level.ravel(), count)
        chosen &= totals < below * np.bincount(parts.ravel(), minlength=count)
    return chosen[parts]


def _stretched(above_background: np.ndarray, noise: float, keep_edges: bool = False) -> np.ndarray:
    """Return float32 (h, w): what lies above the background, scaled to peak at 255, and 0
    where it does not stand out of the background's noise.

    With `keep_edges`, the faint edge of a stroke (its anti-aliasing, a photo's blur) is
    kept where it touches ink that stands out; a faint speck on its own is not.
    """
    peak = float(above_background.max())
    if peak <= 0:
        return np.zeros_like(above_background)
    ink = above_background * np.float32(255.0 / peak)
    # Faint noise (JPEG artefacts, paper grain) is not ink: below a tenth of the peak, or
    # below what the paper itself reaches, whichever is higher.
    noise_floor = INK_NOISE_MULTIPLE * noise * 255.0 / peak
    strong = _at_least(ink, max(0.1 * 255.0, noise_floor))
    if not keep_edges:
        return strong
    touching = cv2.dilate((strong > 0).astype(np.uint8), np.ones((3, 3), np.uint8))
    # Half a grey level: what a fitted surface leaves on a perfectly flat background.
    faint = _at_least(ink, max(0.5 * 255.0 / peak, noise_floor))
    return np.where(touching > 0, faint, strong)


def _at_least(image: np.ndarray, level: float) -> np.ndarray:
    """Return float32 `image` with the pixels below `level` at 0."""
    # THRESH_TOZERO keeps what is above its threshold: the float32 just below `level`.
    below = float(np.nextafter(np.float32(level), np.float32(-np.inf)))
    return cv2.threshold(image, below, 0, cv2.THRESH_TOZERO)[1]


def _paper_surface(gray: np.ndarray) -> np.ndarray:
    """Return float32 (h, w): the paper's level, a quadratic surface fitted to the non-ink pixels.

    Light on a sheet changes slowly: a quadratic in x and y follows a gradient and a darker
    corner. It is fitted on a coarse copy of the picture, first to the pixels on the paper's
    side of Otsu's threshold, then again to those within a few deviations of the first fit,
    so that ink of any width (a pencil line or a brush) leaves it unchanged.
    """
    height, width = gray.shape
    coarse = _shrunk(gray, PAPER_GRID)
    terms = _quadratic_terms(*coarse.shape)
    values = coarse.reshape(-1, 1).astype(np.float64)
    threshold, _ = cv2.threshold(
        np.clip(coarse, 0, 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
    )
    on_paper = values[:, 0] <= threshold
    coefficients = None
    for _ in range(PAPER_FIT_ROUNDS):
        if on_paper.sum() < 4 * terms.shape[1]:
            break
        coefficients, residuals, spread = _fit_round(terms, values, on_paper)
        on_paper = residuals <= max(3.0 * spread, 2.0)
    if coefficients is None:
        # Too few paper pixels to fit a surface: the paper is one level, the border's median.
        return np.full_like(gray, _border_level(gray))
    # Where the sheet is all ink (a corner under a brush stroke) the fit is extrapolated:
    # keep it within the levels the paper really has.
    paper_levels = values[on_paper] if on_paper.any() else values
    surface = np.clip(terms @ coefficients, paper_levels.min(), paper_levels.max())
    surface = surface.reshape(coarse.shape).astype(np.float32)
    if surface.shape == gray.shape:
        return surface
    return cv2.resize(surface, (width, height), interpolation=cv2.INTER_LINEAR)


def _fit_round(
    terms: np.ndarray, values: np.ndarray, kept: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit `terms` to the `kept` ones of `values` (n, 1) by least squares; return the
    coefficients, every value's residual (n,) and the kept ones' spread (1.4826 MAD)."""
    # OpenCV's least squares by the normal equations (six well-scaled terms): NumPy's
    # lstsq goes through a threaded BLAS that costs ten times as much on a busy machine.
    _, coefficients = cv2.solve(terms[kept], values[kept], flags=cv2.DECOMP_SVD | cv2.DECOMP_NORMAL)
    residuals = (values - terms @ coefficients)[:, 0]
    spread = 1.4826 * float(np.median(np.abs(residuals[kept])))
    return coefficients, residuals, spread


@functools.lru_cache(maxsize=64)
def _quadratic_terms(height: int, width: int) -> np.ndarray:
    """Return float64 (height * width, 6): 1, x, y, x², xy, y² on a grid scaled to -1..1."""
    rows, cols = np.mgrid[0:height, 0:width]
    y = (rows.ravel() + 0.5) / height * 2 - 1
    x = (cols.ravel() + 0.5) / width * 2 - 1
    terms = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    terms.flags.writeable = False
    return terms


def _paper_noise(above_paper: np.ndarray) -> float:
    """Return the paper's noise: the deviation of its pixels from the fitted level.

    Ink only ever lies above the paper, so the pixels below it are paper alone; for
    Gaussian noise, the median of their distance below is 0.6745 deviations.
    """
    step = max(1, int(np.sqrt(above_paper.size / PAPER_NOISE_SAMPLE)))
    below = above_paper[::step, ::step]
    below = below[below < 0]
    return float(np.median(-below)) / 0.6745 if below.size else 0.0


def _digit_alone(ink: np.ndarray) -> np.ndarray:
    """Return `ink` without what is not the digit: the lines of ruled or squared paper or of
    a frame, what lies apart from the digit (a sheet's edge, a table, a shadow, a speck), and
    the marks around or under it (a box, a circle, a stain, an underline). Raises UserError
    for digits side by side.

    A picture of MNIST's size is left as it is. The rest is decided on a copy at most
    ANALYSIS_SIDE pixels wide or high, where a gap that a removed line leaves in a stroke is
    too narrow to matter once the digit is fitted into MNIST's box.
    """
    height, width = ink.shape
    if max(height, width) <= 2 * IMAGE_SHAPE[0]:
        return ink
    small = _shrunk(ink, ANALYSIS_SIDE)
    inked = (small > 0).astype(np.uint8)
    lines = _ruled_lines(inked)
    if lines.any():
        # Strokes that crossed a line are joined again across it (7 px: wider than its band).
        unlined = np.where(lines, 0, inked).astype(np.uint8)
        closed = cv2.morphologyEx(unlined, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
        inked = np.where(lines, closed, unlined).astype(np.uint8)
    # A box or a circle drawn close around the digit is a part of its own only as drawn,
    # before the strokes close to each other are joined: it is left out here, and so is
    # one that touches the digit, the loop along their part's convex hull.
    inked = np.where(_frames(inked), 0, inked).astype(np.uint8)
    # The printed lines of a form that the digit touches (a row of cells it stands in).
    inked = np.where(_form_lines(inked), 0, inked).astype(np.uint8)
    # The dots of dotted paper, which a wider gap below would join into one part.
    inked = np.where(_dot_grid(inked), 0, inked).astype(np.uint8)
    # Strokes a few pixels apart (a pencil's broken line, a 4 in two strokes) are one part. A
    # digit drawn in dots or dashes further apart than that is joined at twice, then four
    # times the gap, until its parts hold most of the ink away from the edges.
    # (Not if that joins it to the picture's edges: the dots of dotted paper are not ink.)
    gap = max(3, round(max(small.shape) * PART_GAP))
    labels, share, _, beside = _digit_parts(small, inked, gap)
    if beside:
        raise UserError(DIGITS_SIDE_BY_SIDE)
    for _ in range(2):
        if share >= DIGIT_INK_SHARE:
            break
        gap *= 2
        wider, wider_share, at_edge, _ = _digit_parts(small, inked, gap)
        if wider_share > share and not at_edge:
            labels, share = wider, wider_share
    if small is ink:
        return np.where(labels > 0, ink, np.float32(0))
    keep = cv2.resize(
        (labels > 0).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
    )
    return np.where(keep > 0, ink, np.float32(0))


def _digit_parts(
    small: np.ndarray, inked: np.ndarray, gap: int
) -> tuple[np.ndarray, float, bool, bool]:
    """Return the labels of the digit's parts in `inked` (0 elsewhere), ink closer than `gap`
    pixels being one part; the share they hold of the ink away from the edges and marks;
    whether one of them reaches an edge; and whether another digit stands beside the digit.

    The digit is the heaviest part away from the picture's edges; the parts near it are its
    own, and so are those near what it has gathered (the dots of a dotted line).
    """
    joined = cv2.dilate(inked, np.ones((gap, gap), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(joined)
    labels[inked == 0] = 0
    if count == 1:  # no ink left once the lines of ruled paper are gone
        return labels, 1.0, False, False
    height, width = inked.shape
    mass = np.bincount(labels.ravel(), weights=small.ravel(), minlength=count)
    left, top, w, h = (stats[:, index] for index in range(4))
    right, bottom = left + w, top + h
    edges = np.sum([left == 0, top == 0, right == width, bottom == height], axis=0)
    at_edge = edges > 0
    parts = np.arange(1, count)
    heavy = parts[mass[1:] >= MIN_DIGIT_SHARE * mass[1:].sum()]
    stains, frames = _stains_and_frames(labels, stats, heavy)
    marks = stains | frames
    # The digit: the heaviest part away from the picture's edges, which a sheet's edge,
    # a table or a shadow touch; or the heaviest of all, if the digit itself does.
    inside = heavy[(edges[heavy] == 0) & ~marks[heavy]]
    candidates = inside if inside.size else parts
    digit = candidates[np.argmax(mass[candidates])]
    # A digit that touches one edge outweighs a dot or a line drawn beside it.
    at_one = heavy[(edges[heavy] == 1) & ~marks[heavy]]
    heaviest = at_one[np.argmax(mass[at_one])] if at_one.size else digit
    if mass[heaviest] > EDGE_DIGIT_WEIGHT * mass[digit]:
        digit = heaviest
    extent = np.maximum(w, h)
    # Near the digit, what reaches the edge and is larger than the digit is not its own,
    # nor a box or a circle around it, nor a line drawn under it, nor a speck of dust or
    # pencil beside it. (A blob near it may be its own: the round end of a stroke.)
    own = ~frames & (mass >= SPECK_SHARE * mass[digit])
    own[0] = False
    # ...nor a stain or a shadow beside it: a blot far fainter than its strokes, and wider
    # (a stroke of its own that a pencil pressed lightly drew is faint too, but as thin).
    level, width = _level_and_width(small, labels == digit)
    for part in np.flatnonzero(own):
        part_level, part_width = _level_and_width(small, labels == part)
        own[part] = part_level >= FAINT_SHARE * level or part_width < BLOT_WIDTHS * width

    def near(kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The parts of the digit near the `kept` ones, and the lines under them."""
        box_left, box_top = left[kept].min(), top[kept].min()
        box_right, box_bottom = right[kept].max(), bottom[kept].max()
        box_width, size = box_right - box_left, max(box_right - box_left, box_bottom - box_top)
        margin = DIGIT_MARGIN * size
        close = (left < box_right + margin) & (right > box_left - margin)
        close &= (top < box_bottom + margin) & (bottom > box_top - margin)
        underline = (top >= box_bottom) & (h <= FLAT * w) & (w >= 0.5 * box_width)
        return close & own & ~underline & (~at_edge | (extent <= size)), underline

    beside = _beside(stats, own & ~at_edge & ~marks, digit)
    seed = np.arange(count) == digit
    kept, underline = near(seed)
    kept |= seed
    # ...and, away from the edges, near what it has gathered: the dots of a dotted line.
    while (more := near(kept & ~at_edge | seed)[0] & ~at_edge & ~kept).any():
        kept |= more
    away = np.zeros(count, dtype=bool)
    away[parts] = ~(at_edge | marks | underline)[parts]
    share = float(mass[kept].sum() / mass[kept | away].sum())
    return np.where(kept[labels], labels, 0), share, bool(at_edge[kept].any()), beside


def _beside(stats: np.ndarray, parts: np.ndarray, digit: int) -> bool:
    """Whether one of `parts` (a mask of the labels of cv2's `stats`) is another digit beside
    `digit`: about as tall as it, both about as tall as the parts together, level with it,
    apart from it on one side, no part between the two (the dots of a dot-matrix 0), and the
    two as wide as they are tall (a 0 of a typeface whose hairlines were lost is narrower)."""
    left, top, width, height = (stats[:, index] for index in range(4))
    right, bottom = left + width, top + height
    parts = parts.copy()
    parts[[0, digit]] = [False, True]
    together = bottom[parts].max() - top[parts].min()
    lower = np.minimum(height, height[digit])
    level = np.minimum(bottom, bottom[digit]) - np.maximum(top, top[digit])
    apart = np.maximum(left - right[digit], left[digit] - right)
    beside = parts & (lower >= BESIDE_HEIGHT * np.maximum(height, height[digit]))
    beside &= (lower >= BESIDE_HEIGHT * together) & (level >= BESIDE_HEIGHT * lower)
    # (The digit itself is not: its `apart` is minus its width.)
    beside &= (apart >= BESIDE_GAP * height[digit]) & (apart <= height[digit])
    for part in np.flatnonzero(beside):
        gap_left, gap_right = min(right[part], right[digit]), max(left[part], left[digit])
        between = parts & (left < gap_right) & (right > gap_left)
        between[[part, digit]] = False
        wide = max(right[part], right[digit]) - min(left[part], left[digit]) >= together
        if wide and not between.any():
            return True
    return False


def _dot_grid(inked: np.ndarray) -> np.ndarray:
    """Where in the uint8 mask `inked` the dots of dotted paper are: many small dots, most
    with three or four others at the same distance (the grid's pitch), spread over the
    picture, and the dots next to them. A digit drawn in dots has two neighbours to a dot,
    along its strokes; a dot-matrix digit has fewer dots, and they do not spread so far."""
    grid = np.zeros(inked.shape, dtype=bool)
    _, labels, stats, centres = cv2.connectedComponentsWithStats(inked)
    side = max(2.0, GRID_DOT_SIDE * max(inked.shape))
    dots = 1 + np.flatnonzero(stats[1:, 2:4].max(axis=1) <= side)
    if not GRID_DOTS <= dots.size <= MAX_GRID_DOTS:
        return grid
    points = centres[dots].astype(np.float32)
    distances = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    at_pitch = distances < GRID_PITCH_SPREAD * float(np.median(distances.min(axis=1)))
    on_grid = np.count_nonzero(at_pitch, axis=1) >= GRID_NEIGHBOURS
    spread = np.ptp(points[on_grid], axis=0) / inked.shape[::-1] if on_grid.any() else 0
    if np.count_nonzero(on_grid) < GRID_DOTS or np.min(spread) < GRID_SPREAD:
        return grid
    next_to_grid = at_pitch[:, on_grid].any(axis=1)
    return np.isin(labels, dots[on_grid | next_to_grid])


def _frames(inked: np.ndarray) -> np.ndarray:
    """Where in the uint8 mask `inked` a box or a circle is drawn around another part, or
    around the digit that it touches."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inked)
    area = stats[:, cv2.CC_STAT_AREA]
    heavy = 1 + np.flatnonzero(area[1:] >= MIN_DIGIT_SHARE * area[1:].sum())
    left, top = stats[heavy, 0], stats[heavy, 1]
    right, bottom = left + stats[heavy, 2], top + stats[heavy, 3]
    within = (left[:, None] <= left) & (top[:, None] <= top)
    within &= (right <= right[:, None]) & (bottom <= bottom[:, None])
    if np.count_nonzero(within) == heavy.size:  # no part lies within another's box
        frames = np.zeros(inked.shape, dtype=bool)
    else:
        frames = _stains_and_frames(labels, stats, heavy)[1][labels]
    for part in heavy:
        left, top, w, h = stats[part, :4]
        box = slice(top, top + h), slice(left, left + w)
        alone = labels[box] == part
        if not frames[box][alone].any() and (loop := _loop_around(alone)) is not None:
            frames[box] |= loop
    return frames


def _loop_around(part: np.ndarray) -> np.ndarray | None:
    """Return the ink of boolean `part` that is a loop along its convex hull, closed around
    a drawing of its own that touches it (a box or a circle drawn close around the digit);
    None if there is none.

    Such a part fills its hull, as a 0 or a blob does and a 2 or a 7 does not. A 0 has
    nothing inside its loop, and an 8's waist breaks its loop. The drawing inside holds a
    share of the ink, and most of it lies away from the loop: not the inner edge of a
    grainy pencil 0, nor the dot of a typed one. Nor is it one straight stroke: a 0 with a
    slash through it is likelier than a 1 circled.
    """
    ink = part.astype(np.uint8)
    contours, _ = cv2.findContours(ink, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = max(contours, key=cv2.contourArea)
    hull = cv2.convexHull(outline)
    if cv2.contourArea(outline) <= LOOP_SOLIDITY * cv2.contourArea(hull):  # or a line
        return None
    size = max(part.shape)
    loop = part & (_depth_inside(hull, part.shape) <= INSIDE_HULL_DEPTH * size)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink & ~loop)
    if count == 1:
        return None
    inner = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    extent = max(stats[inner, cv2.CC_STAT_WIDTH], stats[inner, cv2.CC_STAT_HEIGHT])
    if extent < SURROUNDED_SIZE * size or stats[inner, cv2.CC_STAT_AREA] < LOOP_SHARE * ink.sum():
        return None
    drawing = labels == inner
    contours, _ = cv2.findContours(
        loop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    enclosed = cv2.drawContours(np.zeros_like(ink), contours, -1, 1, cv2.FILLED)
    if np.mean(enclosed[drawing]) < LOOP_INSIDE:  # the loop is open: a C, a 6's tail
        return None
    stroke = _width(part)
    away = drawing & (
        cv2.distanceTransform((~loop).astype(np.uint8), cv2.DIST_L2, 3) > LOOP_REACH * stroke
    )
    if np.count_nonzero(away) < (1 - LOOP_NEAR) * np.count_nonzero(drawing):
        return None
    points = np.column_stack(np.nonzero(away)).astype(np.float32)
    return None if min(cv2.minAreaRect(points)[1]) <= SLASH_WIDTHS * stroke else loop


def _stains_and_frames(
    labels: np.ndarray, stats: np.ndarray, heavy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return two booleans per label: which of the parts `heavy` are stains, and which are
    frames, a box or a circle drawn around another of the parts.

    A stain is a filled blob, whose strokes are half as wide as it is large. A frame's ink
    lies in most directions from the other part's centre, and along its own convex hull; or
    it is printed: straight lines along the sides, each longer than the other part (a row
    of a form's cells, however small the digit in one of them).
    """
    stains = np.zeros(len(stats), dtype=bool)
    frames = np.zeros(len(stats), dtype=bool)
    for part in heavy:
        left, top, w, h = stats[part, :4]
        alone = labels[top : top + h, left : left + w] == part
        if _width(alone) > BLOB_WIDTH * max(w, h):
            stains[part] = True
            continue
        rows, cols = np.nonzero(alone)
        for other in heavy:
            o_left, o_top, o_w, o_h = stats[other, :4]
            inside = left <= o_left and o_left + o_w <= left + w
            inside = inside and top <= o_top and o_top + o_h <= top + h
            if other == part or not inside:
                continue
            printed = _printed_lines(alone, max(o_w, o_h))
            # ...and not a piece of a digit whose other strokes curl around it (a 3's middle).
            if max(o_w, o_h) < SURROUNDED_SIZE * max(w, h) and not printed:
                continue
            angles = np.arctan2(rows + top - (o_top + o_h / 2), cols + left - (o_left + o_w / 2))
            directions = np.unique(((angles + np.pi) / (2 * np.pi) * 16).astype(int) % 16)
            if directions.size >= SURROUNDING_DIRECTIONS:
                frames[part] = printed or _along_its_hull(rows, cols, max(w, h))
                break
    return stains, frames


def _printed_lines(part: np.ndarray, inner: int) -> bool:
    """Whether boolean `part` is printed around another part `inner` pixels large: thin
    straight lines parallel to the sides, each longer than that part and than half the
    narrower side of `part`, which hold nearly all its ink (not a bold digit's straight
    sides around a dot of its own, as a dotted 0's)."""
    height, width = part.shape
    if _width(part) > PRINTED_WIDTH * max(height, width):
        return False
    length = max(inner, min(height, width) // 2)
    ink = part.astype(np.uint8)
    return np.count_nonzero(_straight_runs(ink, length)) >= PRINTED_SHARE * np.count_nonzero(ink)


def _straight_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """Return where the uint8 `mask` lies in straight runs across or down, `length` long."""
    along = [np.ones((1, length), np.uint8), np.ones((length, 1), np.uint8)]
    return np.maximum(*(cv2.morphologyEx(mask, cv2.MORPH_OPEN, line) for line in along)) > 0


def _form_lines(inked: np.ndarray) -> np.ndarray:
    """Return where in the uint8 mask `inked` the thin straight lines of a printed form are
    (a row of cells, a box, a line to write on), where the digit touches them too.

    The digit's strokes are what an opening by a disk FORM_LINE_WIDTH times as wide as they
    are keeps; the lines are in what it leaves. A line that passes under the strokes is cut
    there, and its pieces go. Nothing goes unless the strokes away from the picture's edges
    (not a shadow, nor a table's edge) are most of the ink left.
    """
    lines = np.zeros(inked.shape, dtype=bool)
    # The ink's box and a pixel around it: OpenCV takes what lies beyond an edge for ink.
    left, top, width, height = cv2.boundingRect(inked)
    left, top = max(0, left - 1), max(0, top - 1)
    box = slice(top, top + height + 2), slice(left, left + width + 2)
    ink = inked[box] > 0
    if not ink.any():
        return lines
    depth = cv2.distanceTransform(ink.view(np.uint8), cv2.DIST_L2, 3)
    side = round(FORM_LINE_WIDTH * 2 * float(np.percentile(depth[ink], 95)))
    if side < 3:  # strokes as thin as the lines
        return lines
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    opened = cv2.morphologyEx(ink.view(np.uint8), cv2.MORPH_OPEN, disk)
    # ...not the specks smaller than two disks that it keeps where two lines meet.
    _, parts, part_stats, _ = cv2.connectedComponentsWithStats(opened)
    large = part_stats[:, cv2.CC_STAT_AREA] >= 2 * np.count_nonzero(disk)
    large[0] = False
    strokes = large[parts].view(np.uint8)
    if not strokes.any():  # no strokes wider than the lines
        return lines
    thin = (ink & (strokes == 0)).view(np.uint8)
    first, _, wide, high = cv2.boundingRect(strokes)
    length = max(3, round(FORM_LINE_LENGTH * max(wide, high)))
    if not (_may_hold_a_run(thin, length) or _may_hold_a_run(thin.T, length)):  # most pictures
        return lines
    count, labels, stats, _ = cv2.connectedComponentsWithStats(thin)
    area = stats[:, cv2.CC_STAT_AREA]
    # Pieces of a comb, a U or a corner: straight, and wider and higher than one line...
    straight = _straight_runs(thin, length)
    shapes = np.bincount(labels[straight], minlength=count) >= FORM_LINE_SHARE * area
    narrower = np.minimum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    shapes &= narrower >= FORM_SHAPE_WIDTHS * side
    # ...or of one line to write on, which runs under (or over) the strokes from a disk
    # beyond their left to a disk beyond their right: a digit's own strokes end in its box.
    row = np.ones((1, wide + 2 * side), np.uint8)
    _, runs, run_stats, _ = cv2.connectedComponentsWithStats(
        cv2.morphologyEx(ink.view(np.uint8), cv2.MORPH_OPEN, row)
    )
    run_end = run_stats[:, cv2.CC_STAT_LEFT] + run_stats[:, cv2.CC_STAT_WIDTH]
    crossing = (run_stats[:, cv2.CC_STAT_LEFT] <= first - side) & (run_end >= first + wide + side)
    crossing[0] = False
    under = np.bincount(labels[crossing[runs] & (thin > 0)], minlength=count)
    shapes |= under >= FORM_LINE_SHARE * area
    # ...and not the edge of a bold stroke, which the disks leave along its straight sides.
    beside = cv2.dilate(strokes, np.ones((3, 3), np.uint8))
    shapes &= np.bincount(labels[beside > 0], minlength=count) <= FORM_ALONG_STROKES * area
    shapes[0] = False
    lines[box] = shapes[labels]
    if not lines.any():
        return lines
    start = part_stats[:, :2] + (left, top)
    end = start + part_stats[:, 2:4]
    away = large & (start > 0).all(axis=1) & (end < inked.shape[::-1]).all(axis=1)
    if np.count_nonzero(away[parts]) < FORM_DIGIT_SHARE * np.count_nonzero(ink & ~lines[box]):
        lines[:] = False
    return lines


def _width(part: np.ndarray) -> float:
    """The mean width of the strokes of `part` (booleans): twice its area over its outline."""
    contours, _ = cv2.findContours(part.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return 2.0 * part.sum() / max(sum(cv2.arcLength(contour, True) for contour in contours), 1.0)


def _level_and_width(ink: np.ndarray, part: np.ndarray) -> tuple[float, float]:
    """The level of the strokes of `part` in `ink` (their 90th percentile), and their width."""
    return float(np.percentile(ink[part], 90)), _width(part)


def _along_its_hull(rows: np.ndarray, cols: np.ndarray, size: int) -> bool:
    """Whether nearly all the ink at `rows`, `cols` lies near the edge of its convex hull, as a
    box's or a circle's does, and a hollow digit's outline does not."""
    hull = cv2.convexHull(np.column_stack([cols, rows]).astype(np.int32))
    depth = _depth_inside(hull, (rows.max() + 1, cols.max() + 1))[rows, cols]
    return (depth > INSIDE_HULL_DEPTH * size).mean() <= INSIDE_HULL_SHARE


def _depth_inside(hull: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Return float32 `shape`: how far each pixel lies inside the convex polygon `hull`."""
    inside = np.zeros((shape[0] + 2, shape[1] + 2), np.uint8)  # the hull's edge lies inside
    cv2.fillConvexPoly(inside, hull + 1, 1)
    return cv2.distanceTransform(inside, cv2.DIST_L2, 3)[1:-1, 1:-1]


def _ruled_lines(inked: np.ndarray) -> np.ndarray:
    """Return where the lines of ruled or squared paper are in the uint8 mask `inked`: thin
    straight lines across most of the picture, parallel to a side, MIN_RULED_LINES of them or
    more. Fewer, or thicker, may be the digit's own (a 0 or an 8 that fills the picture, a
    7's bar) and are kept, unless one runs from edge to edge touching no other ink (a
    notebook's margin, a sheet's edge), or they frame the picture on three or four sides.
    """
    height, width = inked.shape
    thinnest = max(RULED_LINE_PIXELS, RULED_LINE_WIDTH * max(height, width))
    lines = np.zeros(inked.shape, dtype=bool)
    frame, sides = np.zeros(inked.shape, dtype=bool), set()
    for horizontal in (True, False):
        span = width if horizontal else height
        length = max(3, round(RULED_LINE_LENGTH * span))
        gap = max(1, round(RULED_LINE_GAP * span))
        bridged = cv2.morphologyEx(
            inked, cv2.MORPH_CLOSE, np.ones((1, gap) if horizontal else (gap, 1), np.uint8)
        )
        if not _may_hold_a_run(bridged if horizontal else bridged.T, length):
            continue  # most pictures: the opening below would leave nothing
        runs = cv2.morphologyEx(
            bridged, cv2.MORPH_OPEN, np.ones((1, length) if horizontal else (length, 1), np.uint8)
        )
        _, labels, stats, _ = cv2.connectedComponentsWithStats(runs)
        extent = stats[:, cv2.CC_STAT_WIDTH if horizontal else cv2.CC_STAT_HEIGHT]
        thin = 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] <= thinnest * extent[1:])
        full = [line for line in thin if extent[line] >= FULL_SPAN * span]
        # Where each full line lies across the picture, and whether at its first or last edge.
        across = height if horizontal else width
        start = stats[:, cv2.CC_STAT_TOP if horizontal else cv2.CC_STAT_LEFT]
        end = start + stats[:, cv2.CC_STAT_HEIGHT if horizontal else cv2.CC_STAT_WIDTH]
        band = max(2, FRAME_BAND * across)
        for line in full:
            for side, at_edge in enumerate((start[line] <= band, end[line] >= across - band)):
                if at_edge:
                    frame |= labels == line
                    sides.add((horizontal, side))
        if thin.size < MIN_RULED_LINES:
            thin = [line for line in full if _apart(labels == line, inked)]
        lines |= np.isin(labels, thin)
    if len(sides) >= 3:  # a frame around the picture, even where the digit touches it
        lines |= frame
    return cv2.dilate(lines.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def _may_hold_a_run(mask: np.ndarray, length: int) -> bool:
    """Whether an opening of the uint8 `mask` by a row of `length` pixels can keep anything:
    a row holds `length` inked pixels, or a run from its first pixel or to its last that
    OpenCV's opening keeps (it takes the picture to go on beyond its edges)."""
    if np.count_nonzero(mask, axis=1).max() >= length:
        return True
    return bool(mask[:, : length - length // 2].all(axis=1).any()) or bool(
        mask[:, max(0, mask.shape[1] - (length // 2 + 1)) :].all(axis=1).any()
    )


def _apart(line: np.ndarray, inked: np.ndarray) -> bool:
    """Whether `inked` has ink besides the boolean `line`, none of which touches it."""
    around = cv2.dilate(line.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    rest = (inked > 0) & ~line
    return bool(rest.any()) and not (rest & around).any()


def _bounding_box(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _resize_to_fit(image: np.ndarray, box: int) -> np.ndarray:
    height, width = image.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def _fit_like_mnist(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit into 20x20, centre by centre of mass in 28x28 (as LeCun did)."""
    digit = _bounding_box(ink)
    if max(digit.shape) > MNIST_BOX:
        # On a copy a few times the size of the box: fine enough to measure, widen and thin
        # a stroke, small enough to stay fast for a photo of millions of pixels.
        digit = _mnist_strokes(_resize_to_fit(digit, STROKE_WORK_SIDE))
    enlarged = max(digit.shape) < MNIST_BOX
    digit = _resize_to_fit(digit, MNIST_BOX)
    # MNIST's strokes peak at full brightness, whatever the pen's shade or width.
    level = float(digit.max())
    if enlarged:
        # A thumbnail's one-pixel strokes are grey, darkest where a stroke fell on a pixel:
        # enlarged, they reach full brightness along their length, not at one dark spot.
        level = float(np.median(digit[digit > 0.5 * level]))
    canvas = _centred(np.minimum(digit * (255.0 / level), 255.0))
    moments = cv2.moments(canvas)
    if moments["m00"] > 0:
        # Whole pixels: a sub-pixel shift would blur every stroke, so that an MNIST image
        # sent as a PNG would no longer be the image the model was trained on.
        shift_x = round(14.0 - moments["m10"] / moments["m00"])
        shift_y = round(14.0 - moments["m01"] / moments["m00"])
        matrix = np.float32([[1, 0, shift_x], [0, 1, shift_y]])
        canvas = cv2.warpAffine(canvas, matrix, IMAGE_SHAPE[::-1], flags=cv2.INTER_NEAREST)
    return _as_pixels(canvas)


def _mnist_strokes(digit: np.ndarray) -> np.ndarray:
    """Return `digit` with strokes widened or thinned to MNIST's, for its size.

    MNIST's strokes, fitted in a 20-pixel box, are 1.7 to 3.3 pixels wide (10th to 90th
    percentile). A pencil's 1 px line on a large canvas would come out a fraction of a pixel
    wide and dim, so it is widened here, before the box is shrunk. A marker's stroke, or
    the drawing page's pen on a small digit, would come out a blob with its loops closed,
    so it is thinned, and the loops open again.
    """
    scale = max(digit.shape) / MNIST_BOX
    width = _stroke_width(digit)
    if width > MAX_STROKE_WIDTH * scale:
        radius = round((width - MAX_STROKE_WIDTH * scale) / 2)
        thinned = cv2.erode(digit, _disk(radius)) if radius else digit
        return _bounding_box(thinned) if thinned.max() > 0 else digit
    radius = int(np.ceil((MIN_STROKE_WIDTH * scale - width) / 2))
    if radius < 1:
        return digit
    padded = cv2.copyMakeBorder(digit, radius, radius, radius, radius, cv2.BORDER_CONSTANT)
    widened = cv2.dilate(padded, _disk(radius))
    # A line much thinner than a pixel of this copy is faint in it, and its widened band
    # as faint: bring the band's typical level to full brightness, as MNIST's strokes are.
    level = float(np.median(widened[widened > STROKE_LEVEL * float(widened.max())]))
    return np.minimum(widened * (255.0 / level), 255.0)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _stroke_width(digit: np.ndarray) -> float:
    """Return the strokes' mean width in pixels: their ink over their length.

    The ink is counted in full-brightness pixels, so that a line thinner than a pixel of
    this copy, faint in it, counts for what it is; the length is half the outline of
    everything inked.
    """
    strokes = (digit > STROKE_LEVEL * float(digit.max())).astype(np.uint8)
    contours, _ = cv2.findContours(strokes, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    outline = sum(cv2.arcLength(contour, True) for contour in contours)
    return 2.0 * float(digit.sum()) / 255.0 / max(outline, 1.0)


def _fit_like_fashion(ink: np.ndarray) -> np.ndarray:
    """Crop to the object, fit its longer side to 28 and pad the other, centred."""
    return _as_pixels(_centred(_resize_to_fit(_bounding_box(ink), IMAGE_SHAPE[0])))


def _centred(image: np.ndarray) -> np.ndarray:
    """Return float32 (28, 28) with `image` (at most 28x28) pasted in the middle."""
    canvas = np.zeros(IMAGE_SHAPE, dtype=np.float32)
    height, width = image.shape
    top, left = (IMAGE_SHAPE[0] - height) // 2, (IMAGE_SHAPE[1] - width) // 2
    canvas[top : top + height, left : left + width] = image
    return canvas


def _as_pixels(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
