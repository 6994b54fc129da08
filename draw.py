"""draw: a page to draw on in the browser, answered by the model that `mlflow models serve` serves.

Each stroke (or a dropped PNG or JPEG) goes to the one model URL given here; the page shows
the class, the three likeliest classes, the 28x28 image the model saw, and the curl command
that sends the same request. Nothing is logged to MLflow, unless `--feedback`: then the page
asks whether each answer was right, and keeps every drawing a person confirms, with its
label, as a run of the experiment `feedback` (see mnist_pipeline/feedback.py).

$ mlflow models serve -m ./model --env-manager local -p 5000
$ python draw.py --model-url http://127.0.0.1:5000      # then open http://127.0.0.1:8000
$ python draw.py --model-url http://127.0.0.1:5000 --feedback --model-version "mnist v3"
"""

from __future__ import annotations

import argparse
import socket
import sys

from mnist_pipeline.cli import Parser, fail, positive_float
from mnist_pipeline.data.catalogue import DATASETS
from mnist_pipeline.errors import UserError
from mnist_pipeline.feedback import FEEDBACK_EXPERIMENT


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
    parser.add_argument(
        "--feedback",
        nargs="?",
        const=FEEDBACK_EXPERIMENT,
        default="",
        metavar="EXPERIMENT",
        help="keep the drawings people confirm in MLflow, in this experiment "
        f"(default: {FEEDBACK_EXPERIMENT}); off unless given",
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="mnist",
        help="with --feedback: whose classes the labels are (default: mnist)",
    )
    parser.add_argument(
        "--model-version",
        default="",
        help="with --feedback: the model that answers, as kept with each drawing "
        "(e.g. 'mnist v3'; default: unknown)",
    )
    return parser


def check_port_free(host: str, port: int) -> None:
    """Raise UserError if something listens on `port` already (another page, say): before
    the page says where it runs, or makes an experiment. uvicorn binds it right after."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except socket.gaierror as error:
            raise UserError(f"cannot listen on {host} ({error.strerror}): check --host") from None
        except OSError as error:
            raise UserError(
                f"cannot listen on {host}:{port} ({error.strerror}): choose another --port"
            ) from None


def feedback_experiment(name: str, dataset: str, model_version: str):
    """The Feedback that keeps drawings in the experiment `name`, made if missing."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from mnist_pipeline.drawing_page.server import Feedback

    try:
        # Made here, once, before any request: the drawings then only add runs to it.
        experiment = mlflow.set_experiment(name)
    except MlflowException as error:
        raise UserError(f"--feedback {name}: {error.message}") from None
    return Feedback(experiment.experiment_id, name, dataset, model_version)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_version and not args.feedback:
        parser.error("--model-version is kept with each drawing: it needs --feedback")
    import uvicorn

    from mnist_pipeline.drawing_page.server import check_model_url, create_app

    try:
        check_model_url(args.model_url)
        check_port_free(args.host, args.port)
        feedback = None
        if args.feedback:
            feedback = feedback_experiment(args.feedback, args.dataset, args.model_version)
        app = create_app(args.model_url, timeout=args.timeout, feedback=feedback)
    except (ValueError, UserError) as error:
        return fail(parser.prog, error)
    kept = ""
    if feedback:
        from mnist_pipeline.tracking.runs import tracking_uri

        kept = (
            f"; keeping confirmed drawings in the experiment '{args.feedback}' of {tracking_uri()}"
        )
    print(
        f"Drawing page on http://{args.host}:{args.port}/ asking the model at "
        f"{args.model_url}{kept} (Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn ends on SIGINT and SIGTERM alike, closing its connections first (and finishing
    # the drawings being kept). No proxy stands in front of the page: the address that the
    # rate limit counts is the client's own, never an X-Forwarded-For header.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
