"""What every stage script shares: argument parsing, canonical parameters, the stage run."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Iterator

# TensorFlow's start-up chatter about missing GPUs is noise on a CPU machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow draws a progress bar even for copying a few local files; stages print their own.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Errors that a user can cause and that get one line, not a traceback.
USER_ERRORS = (ValueError, OSError)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `train.py: error: argument --lr: ...`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def boolean(text: str) -> bool:
    """argparse type for MLproject booleans: true/false, yes/no, 1/0."""
    lowered = str(text).strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 ("16", or "16.0" as MLflow may pass it)."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {int(number)}")
    return int(number)


def positive_float(text: str) -> float:
    """argparse type: a number greater than 0."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {number}")
    return number


def canonical_params(parser: argparse.ArgumentParser, values: dict[str, str]) -> dict[str, str]:
    """Return every argument of `parser` as its canonical string, given raw string values.

    "1e-3" and "0.001" both become "0.001", "16" and "16.0" for an int both fail or
    become "16": this is what makes a run logged by hand comparable with one that the
    pipeline is about to start. Values that are not arguments of `parser` are ignored.
    """
    argv = []
    for action in parser._actions:
        if action.dest in values and action.option_strings:
            argv += [action.option_strings[0], _unquoted(str(values[action.dest]))]
    namespace = parser.parse_args(argv)
    return {name: _canonical(value) for name, value in vars(namespace).items()}


def _unquoted(text: str) -> str:
    """Undo the shell quoting that `mlflow run` leaves on logged values ('' for empty)."""
    if text[:1] in ("'", '"'):
        try:
            words = shlex.split(text)
        except ValueError:
            return text
        if len(words) <= 1:
            return words[0] if words else ""
    return text


def _canonical(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def fail(prog: str, error: BaseException) -> int:
    """Print a known error as one line on stderr and return the exit code."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def stage_run(
    stage: str, parser: argparse.ArgumentParser, args: argparse.Namespace, script: str
) -> Iterator[object]:
    """Start (or join, under `mlflow run`) the run of `stage`, tagged and with its params.

    The run ends FAILED if the body raises, FINISHED otherwise.
    """
    import mlflow

    from mnist_pipeline import runs

    with mlflow.start_run() as run:
        mlflow.set_tags({runs.STAGE_TAG: stage, runs.CODE_VERSION_TAG: runs.code_version(script)})
        canonical = {name: _canonical(value) for name, value in vars(args).items()}
        # `mlflow run` has already logged the MLproject parameters as the user typed
        # them; MLflow refuses to change a logged value, so only the rest are added.
        logged = mlflow.get_run(run.info.run_id).data.params
        mlflow.log_params({k: v for k, v in canonical.items() if k not in logged})
        yield run
