"""make_font_digits: generate the font-digits evaluation set (font_digits/) from a seed.

Writes digits typed in the fonts of EVALUATION_FONTS (mnist_pipeline/data/fonts.py), as
print, on transparency, inverted, at low resolution, blurred, grey, faint and as JPEG, with
labels.csv (file,label,kind) and fonts.txt (the faces used). The same seed gives the same
bytes. Nothing trains or tunes on this set. With --sheet, also a contact sheet. With
--glyphs, also renders the glyphs of training's synthetic supplement from the other list,
SUPPLEMENT_FONTS, into mnist_pipeline/training/font_glyphs.npz. Both need the fonts
installed (fonts.py lists the Debian packages); both are checked in, so nothing else does.

$ python make_font_digits.py --sheet docs/font-digits.png --glyphs
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mnist_pipeline.cli import USER_ERRORS, Parser, fail, positive_int
from mnist_pipeline.serving.drawn_digits import write_contact_sheet, write_picture_set, wrote
from mnist_pipeline.serving.font_digits import (
    FONT_DIGITS,
    FONTS_FILE,
    KINDS,
    font_digits,
    fonts_txt,
)
from mnist_pipeline.training.synthetic import GLYPHS_FILE, write_glyphs


def build_parser() -> Parser:
    parser = Parser(prog="make_font_digits.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(FONT_DIGITS.name), help="the folder to (re)write"
    )
    parser.add_argument(
        "--per_kind", type=positive_int, default=6, help="pictures of each digit in each kind"
    )
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same files")
    parser.add_argument("--sheet", type=Path, help="also write a contact sheet PNG here")
    parser.add_argument("--glyphs", action="store_true", help="also render the supplement's glyphs")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        digits = list(font_digits(args.per_kind, args.seed))
        write_picture_set(args.out, digits, {FONTS_FILE: fonts_txt()})
        if args.sheet:
            write_contact_sheet(args.sheet, digits, KINDS)
        if args.glyphs:
            glyphs = write_glyphs()
            print(f"Wrote {glyphs} glyphs of the synthetic supplement to {GLYPHS_FILE}")
    except (*USER_ERRORS, OSError) as error:  # OSError: writing the folder or the sheet
        return fail(parser.prog, error)
    print(f"{wrote(digits, args.out)} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
