"""draw: a page to draw on in the browser, answered by the model that `mlflow models serve` serves.

Each stroke (or a dropped PNG or JPEG) goes to the one model URL given here; the page shows
the class, the three likeliest classes, the 28x28 image the model saw, and the curl command
that sends the same request. Nothing is logged to MLflow.

$ mlflow models serve -m ./model --env-manager local -p 5000
$ python draw.py --model-url http://127.0.0.1:5000      # then open http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import sys

from mnist_pipeline.cli import Parser, fail, positive_float


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def build_parser() -> Parser:
    parser = Parser(prog="draw.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-url",
        default="http://127.0.0.1:5000",
        help="where `mlflow models serve` answers (default: http://127.0.0.1:5000)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address of the page (default: this machine only)"
    )
    parser.add_argument("--port", type=port_number, default=8000, help="port of the page")
    parser.add_argument(
        "--timeout", type=positive_float, default=10.0, help="seconds to wait for the model"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import uvicorn

    from mnist_pipeline.drawing_page.server import create_app

    try:
        app = create_app(args.model_url, timeout=args.timeout)
    except ValueError as error:
        return fail(parser.prog, error)
    print(
        f"Drawing page on http://{args.host}:{args.port}/ asking the model at "
        f"{args.model_url} (Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn ends on SIGINT and SIGTERM alike, closing its connections first.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
