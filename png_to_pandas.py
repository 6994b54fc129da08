"""png_to_pandas: turn drawings into a scoring request (example.json) and print the curl.

Reads PNG or JPEG files of any size, as a paint program saves them. By default each
becomes the workshop's 28x28 frame of 0-255 pixels (white on black, cropped, fitted
and centred as the served model does it; several files stack as 28-row blocks). With
`--format base64` the files are sent as they are, for the model to convert.

$ python png_to_pandas.py my_digit.png
$ curl -d @example.json -H 'Content-Type: application/json' localhost:5000/invocations
"""

from __future__ import annotations

import base64
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from mnist_pipeline.cli import USER_ERRORS, Parser, fail
from mnist_pipeline.errors import UserError
from mnist_pipeline.serving.picture_to_pixels import image_to_pixels


def build_parser() -> Parser:
    parser = Parser(prog="png_to_pandas.py", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files")
    parser.add_argument(
        "--format",
        choices=("frame", "base64"),
        default="frame",
        help="frame: 28x28 pixel frames (the workshop's); base64: the files themselves",
    )
    parser.add_argument(
        "--dataset",
        choices=("mnist", "fashion"),
        default="mnist",
        help="how a picture is fitted into 28x28: as a digit or as a Fashion item",
    )
    parser.add_argument("--output", "-o", default="example.json", help="a file, or - for stdout")
    parser.add_argument(
        "--port", type=int, default=5000, help="the port in the printed curl command"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        text = json.dumps(build_request(args.images, args.format, args.dataset))
        if args.output != "-":
            output = Path(args.output)
            if not output.parent.is_dir():
                raise UserError(f"cannot write {output}: there is no folder {output.parent}")
            if output.is_dir():
                raise UserError(f"cannot write {output}: it is a folder; name a file")
            partial = output.with_name(output.name + ".part")
            partial.write_text(text)
            partial.replace(output)
    except (*USER_ERRORS, OSError) as error:  # OSError: reading the files, writing the output
        return fail(parser.prog, error)
    if args.output == "-":
        print(text)
        hint = sys.stderr
    else:
        hint = sys.stdout
        print(
            f"Wrote {len(args.images)} image(s) to {args.output} ({args.format} format)", file=hint
        )
    source = shlex.quote(f"@{args.output}")  # a path with spaces, pasted, stays one word
    print(
        f"curl -d {source} -H 'Content-Type: application/json' localhost:{args.port}/invocations",
        file=hint,
    )
    return 0


def build_request(paths: list[Path], request_format: str, dataset: str) -> dict:
    """Return the JSON request body for `paths` in the scoring server's current format."""
    style = "digit" if dataset == "mnist" else "object"
    files = [path.read_bytes() for path in paths]
    frames = []
    for path, data in zip(paths, files, strict=True):
        try:  # in both formats: what the model would refuse is refused here, in one line
            frames.append(image_to_pixels(data, style))
        except UserError as error:
            raise UserError(f"{path}: {error}") from None
    if request_format == "base64":
        records = [{"image": base64.b64encode(data).decode("ascii")} for data in files]
        return {"dataframe_records": records}
    rows = np.concatenate(frames).astype(int).tolist()
    return {"dataframe_split": {"columns": [str(column) for column in range(28)], "data": rows}}


if __name__ == "__main__":
    sys.exit(main())
