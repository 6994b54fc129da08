"""Digits rendered from the OS's TrueType and OpenType fonts, from two lists that share nothing.

EVALUATION_FONTS render font_digits/, an evaluation set that nothing trains on
(make_font_digits.py). SUPPLEMENT_FONTS render the glyphs of training's synthetic supplement
(training/synthetic.py). The lists share no family, nor a family drawn from another's:
FreeFont and TeX Gyre come from URW's fonts and Liberation from Croscore's, so all three
are on the evaluation side, and neither URW's nor Croscore's designs are in the supplement.
A model is never judged on a typeface it trained on (tests/test_font_digits.py checks).

Rendering needs the fonts only when the files are made again; the pictures and the glyphs
are checked in. On Debian:

    apt-get install fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf fonts-urw-base35 \
        fonts-texgyre fonts-noto-core fonts-noto-mono fonts-roboto fonts-open-sans \
        fonts-lato fonts-crosextra-caladea fonts-crosextra-carlito fonts-linuxlibertine \
        fonts-cantarell fonts-comic-neue fonts-courier-prime fonts-go fonts-inconsolata \
        fonts-cmu fonts-b612 fonts-firacode
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_pipeline.errors import UserError

# Family: its faces' files. Serif, sans, mono, italic, bold, condensed and script faces.
EVALUATION_FONTS = {
    "DejaVu": (
        "DejaVuSans.ttf",
        "DejaVuSans-Bold.ttf",
        "DejaVuSans-Oblique.ttf",
        "DejaVuSansCondensed.ttf",
        "DejaVuSerif.ttf",
        "DejaVuSerif-Bold.ttf",
        "DejaVuSerif-Italic.ttf",
        "DejaVuSerifCondensed.ttf",
        "DejaVuSansMono.ttf",
        "DejaVuSansMono-Bold.ttf",
    ),
    "Liberation": (
        "LiberationSans-Regular.ttf",
        "LiberationSans-Bold.ttf",
        "LiberationSansNarrow-Regular.ttf",
        "LiberationSerif-Regular.ttf",
        "LiberationSerif-Bold.ttf",
        "LiberationSerif-Italic.ttf",
        "LiberationMono-Regular.ttf",
        "LiberationMono-Bold.ttf",
    ),
    "FreeFont": (
        "FreeSerif.ttf",
        "FreeSerifBold.ttf",
        "FreeSerifItalic.ttf",
        "FreeSans.ttf",
        "FreeSansBold.ttf",
        "FreeSansOblique.ttf",
        "FreeMono.ttf",
        "FreeMonoBold.ttf",
    ),
    "URW": (
        "NimbusRoman-Regular.otf",
        "C059-Roman.otf",
        "P052-Roman.otf",
        "URWBookman-Light.otf",
        "URWGothic-Book.otf",
        "NimbusSansNarrow-Regular.otf",
        "NimbusMonoPS-Regular.otf",
        "Z003-MediumItalic.otf",
    ),
    "TeX Gyre": (
        "texgyretermes-regular.otf",
        "texgyrepagella-regular.otf",
        "texgyrebonum-bold.otf",
        "texgyreschola-italic.otf",
        "texgyreheros-regular.otf",
        "texgyreadventor-regular.otf",
        "texgyrecursor-bold.otf",
    ),
}
SUPPLEMENT_FONTS = {
    "Noto": (
        "NotoSans-Regular.ttf",
        "NotoSans-Bold.ttf",
        "NotoSans-Italic.ttf",
        "NotoSerif-Regular.ttf",
        "NotoSerif-Bold.ttf",
        "NotoSerif-Italic.ttf",
        "NotoMono-Regular.ttf",
    ),
    "Roboto": (
        "Roboto-Regular.ttf",
        "Roboto-Bold.ttf",
        "Roboto-LightItalic.ttf",
        "RobotoCondensed-Regular.ttf",
    ),
    "Open Sans": ("OpenSans-Regular.ttf", "OpenSans-Bold.ttf", "OpenSans-CondLight.ttf"),
    "Lato": ("Lato-Regular.ttf", "Lato-BoldItalic.ttf"),
    "Caladea": ("Caladea-Regular.ttf", "Caladea-Bold.ttf"),
    "Carlito": ("Carlito-Regular.ttf", "Carlito-Italic.ttf"),
    "Linux Libertine": (
        "LinLibertine_R.otf",
        "LinLibertine_RB.otf",
        "LinLibertine_RI.otf",
        "LinLibertine_M.otf",
        "LinBiolinum_R.otf",
    ),
    "Cantarell": ("Cantarell-Regular.otf", "Cantarell-Bold.otf"),
    "Comic Neue": ("ComicNeue-Regular.otf", "ComicNeue-BoldItalic.otf"),
    "Courier Prime": ("Courier Prime.otf", "Courier Prime Bold.otf", "Courier Prime Sans.otf"),
    "Go": ("Go-Regular.ttf", "Go-Bold.ttf", "Go-Mono.ttf"),
    "Inconsolata": ("Inconsolata.otf",),
    "Computer Modern": ("cmunrm.ttf", "cmunbx.ttf", "cmunss.ttf", "cmuntt.ttf", "cmunti.ttf"),
    "B612": ("B612-Regular.otf", "B612Mono-Regular.otf"),
    "Fira Code": ("FiraCode-Regular.ttf", "FiraCode-Bold.ttf"),
}
FONT_FOLDERS = (Path("/usr/share/fonts"), Path("/usr/share/texmf/fonts"), Path.home() / ".fonts")


def faces(families: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """(family, file) of every face, family by family."""
    return [(family, file) for family, files in families.items() for file in files]


def font_path(file: str) -> Path:
    """The font file named `file` in the OS's font folders; UserError if it is not installed."""
    for folder in FONT_FOLDERS:
        found = next(folder.rglob(file), None) if folder.is_dir() else None
        if found:
            return found
    raise UserError(
        f"font {file} is not installed; see mnist_pipeline/data/fonts.py for the packages"
    )


def render(path: Path, digit: int, size: int) -> np.ndarray:
    """Return float32 ink (0 to 1) of `digit` in the font at `path`, `size` pixels to the em,
    cropped to its ink."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(path), size)
    image = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(image).text((size, size), str(digit), fill=255, font=font, anchor="mm")
    ink = np.asarray(image, dtype=np.float32) / 255.0
    rows, columns = np.nonzero(ink > 0.1)
    if rows.size == 0:
        raise UserError(f"{path.name} draws no {digit}")
    return ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
