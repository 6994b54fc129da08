"""make_drawn_digits: generate the drawn-digits evaluation set (drawn_digits/) from a seed.

Writes PNG and JPEG pictures of digits as people draw them (pencils to fat brushes,
slanted and off-centre, both polarities, the European 1 and the crossed 7, browser
canvases on transparency, phone photos of paper) and labels.csv (file,label,kind). The
same seed gives the same bytes. With --sheet, also a contact sheet: each picture beside
the 28x28 pixels the served model sees. Nothing trains on this set.

$ python make_drawn_digits.py --sheet docs/drawn-digits.png
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mnist_pipeline.cli import USER_ERRORS, Parser, fail, positive_int
from mnist_pipeline.serving.drawn_digits import (
    DRAWN_DIGITS,
    MEDIA,
    write_contact_sheet,
    write_drawn_set,
    wrote,
)


def build_parser() -> Parser:
    parser = Parser(prog="make_drawn_digits.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(DRAWN_DIGITS.name), help="the folder to (re)write"
    )
    parser.add_argument(
        "--per_digit", type=positive_int, default=60, help="pictures of each digit 0-9"
    )
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same files")
    parser.add_argument("--sheet", type=Path, help="also write a contact sheet PNG here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        digits = write_drawn_set(args.out, args.per_digit, args.seed)
        if args.sheet:
            write_contact_sheet(args.sheet, digits, MEDIA)
    except (*USER_ERRORS, OSError) as error:  # OSError: writing the folder or the sheet
        return fail(parser.prog, error)
    print(f"{wrote(digits, args.out)} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
