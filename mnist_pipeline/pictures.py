"""Picture files sent to the served model: PNG or JPEG bytes to 28x28 pixels, as MNIST looks.

The scoring request parser (serving.py) and png_to_pandas.py both use image_to_pixels, so a
drawing converted on a participant's machine and the same file sent to the server give the
same pixels. A file's declared size is read from its header before any pixel is decoded.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_pipeline.errors import UserError

IMAGE_SHAPE = (28, 28)
# The largest picture we agree to decode: 25 megapixels is a photo from a good phone.
# Anything larger is refused from its header, before a single pixel is decompressed.
MAX_IMAGE_PIXELS = 25_000_000
# MPO is how Pillow names a camera's JPEG that carries a preview picture.
ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG", "MPO")


def image_to_pixels(data: bytes, style: str = "digit") -> np.ndarray:
    """Return uint8 (28, 28), white on black, from the bytes of a PNG or JPEG file.

    Any size, colour or grey, with or without transparency, dark on light or light on
    dark. `style` is a TransformSpec's image_style: "digit" or "object". Raises UserError
    with a one-line reason for anything else.
    """
    image_format, (width, height) = _declared_format_and_size(data)
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(
            f"image declares {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} accepted"
        )
    # A PNG may carry transparency, which only IMREAD_UNCHANGED keeps. A JPEG has none,
    # but a phone's photo is stored sideways with an EXIF orientation that only
    # IMREAD_COLOR applies.
    flags = cv2.IMREAD_UNCHANGED if image_format == "PNG" else cv2.IMREAD_COLOR
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if decoded is None:
        raise UserError("image data is damaged and cannot be decoded")
    gray = _to_gray(decoded)
    ink = _ink_on_black(gray)
    if ink.max() == 0:
        raise UserError("image is a single flat colour: there is nothing to classify")
    if style == "digit":
        return _fit_like_mnist(ink)
    return _fit_like_fashion(ink)


def _declared_format_and_size(data: bytes) -> tuple[str, tuple[int, int]]:
    """Read the format, width and height from the file's header without decoding any pixel."""
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
    return image_format, size


def _to_gray(decoded: np.ndarray) -> np.ndarray:
    """Return float32 grey levels 0-255 (h, w); transparent pixels become background."""
    image = decoded.astype(np.float32)
    if decoded.dtype == np.uint16:
        image /= 257.0
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    color = image[:, :, :3]
    gray = cv2.cvtColor(color, cv2.COLOR_BGR2GRAY)
    if channels == 4:
        alpha = image[:, :, 3] / 255.0
        if alpha.min() < 1.0:
            # Strokes drawn on a transparent canvas: composite them onto a background
            # that contrasts with the opaque pixels, so that light and dark ink both show.
            opaque = gray[alpha > 0.5]
            background = 255.0 if (opaque.size == 0 or opaque.mean() < 128) else 0.0
            gray = gray * alpha + background * (1.0 - alpha)
    return gray


def _ink_on_black(gray: np.ndarray) -> np.ndarray:
    """Return float32 (h, w): 0 where the background is, up to 255 where the ink is darkest."""
    border = np.concatenate([gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if background > 127:
        gray = 255.0 - gray
        background = 255.0 - background
    ink = np.clip(gray - background, 0, None)
    peak = float(ink.max())
    # Faint noise (JPEG artefacts, paper texture) is not ink.
    if peak > 0:
        ink = ink * (255.0 / peak)
        ink[ink < 255.0 * 0.1] = 0
    return ink


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
    canvas = _centred(_resize_to_fit(_bounding_box(ink), 20))
    moments = cv2.moments(canvas)
    if moments["m00"] > 0:
        # Whole pixels: a sub-pixel shift would blur every stroke, so that an MNIST image
        # sent as a PNG would no longer be the image the model was trained on.
        shift_x = round(14.0 - moments["m10"] / moments["m00"])
        shift_y = round(14.0 - moments["m01"] / moments["m00"])
        matrix = np.float32([[1, 0, shift_x], [0, 1, shift_y]])
        canvas = cv2.warpAffine(canvas, matrix, IMAGE_SHAPE[::-1], flags=cv2.INTER_NEAREST)
    return _as_pixels(canvas)


def _fit_like_fashion(ink: np.ndarray) -> np.ndarray:
    """Crop to the object, fit its longer side to 28 and pad the other, centred."""
    return _as_pixels(_centred(_resize_to_fit(_bounding_box(ink), 28)))


def _centred(image: np.ndarray) -> np.ndarray:
    """Return float32 (28, 28) with `image` (at most 28x28) pasted in the middle."""
    canvas = np.zeros(IMAGE_SHAPE, dtype=np.float32)
    height, width = image.shape
    top, left = (IMAGE_SHAPE[0] - height) // 2, (IMAGE_SHAPE[1] - width) // 2
    canvas[top : top + height, left : left + width] = image
    return canvas


def _as_pixels(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
