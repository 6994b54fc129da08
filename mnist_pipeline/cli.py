"""What every stage script shares: argument types, the one-line error, the stage's run."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import inspect
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator

from mnist_pipeline.errors import UserError

# TensorFlow's start-up chatter about missing GPUs is noise on a CPU machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow draws a progress bar even for copying a few local files; stages print their own.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Errors that a user can cause and that get one line, not a traceback. Anything else is
# a bug: it fails loudly, with its traceback.
USER_ERRORS = (UserError,)
# How often a run that records system metrics samples CPU and memory use, in seconds.
SYSTEM_METRICS_SECONDS = 5


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `train.py: error: argument --lr: ...`,
    and which takes no abbreviations: `-P epoch=1` is a typo, not `--epochs`, and its error
    names the option meant."""

    def __init__(self, *args, **kwargs):
        self.options: list[str] = []  # before argparse adds --help through add_argument
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def add_argument(self, *names, **kwargs):
        self.options += [name for name in names if name.startswith("--")]
        return super().add_argument(*names, **kwargs)

    def error(self, message: str):
        typo = re.search(r"unrecognized arguments: (--[\w-]+)", message)
        if typo and (meant := difflib.get_close_matches(typo[1], self.options, n=1)):
            message += f" (did you mean {meant[0]}?)"
        if run_id := os.environ.get("MLFLOW_RUN_ID"):  # the run `mlflow run` made for us
            _say_why_refused(run_id, self.prog, message)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def add_data_arguments(self) -> None:
        """Add what a stage that reads a dataset takes: a get_data run, a folder, or the newest."""
        self.add_argument("--data_run", help="a get_data run ID")
        self.add_argument("--in_data", help="or a folder of the four IDX files")
        self.add_argument("--dataset", help="mnist or fashion, to find the newest get_data run")

    def take_defaults_from(self, function: Callable) -> None:
        """Give each argument the default of `function`'s parameter of the same name.

        The script and a notebook that calls the stage function then cannot drift apart.
        """
        self.set_defaults(**defaults_of(function))


def _say_why_refused(run_id: str, prog: str, message: str) -> None:
    """Tag the run that `mlflow run` made, which ends FAILED, with why its command was
    refused, and name it so in the UI, rather than MLflow's random `peaceful-vole-324`."""
    with contextlib.suppress(Exception):  # stderr says it either way
        from mlflow import MlflowClient

        from mnist_pipeline.tracking import naming

        client = MlflowClient()
        client.set_tag(run_id, naming.ERROR_TAG, message)
        run = client.get_run(run_id)
        if naming.may_rename(run):
            # Named after the MLproject entry point, as the stages' runs are (get_data).
            entry_point = run.data.tags.get(naming.ENTRY_POINT_TAG, prog.removesuffix(".py"))
            client.set_tag(run_id, naming.RUN_NAME_TAG, f"{entry_point} (refused)")


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
    return _whole_number(text, at_least=1)


def seed_number(text: str) -> int:
    """argparse type: a seed, a whole number from 0 to 2**32 - 1 (what NumPy takes)."""
    return _whole_number(text, at_least=0, at_most=2**32 - 1)


def _whole_number(text: str, at_least: int, at_most: int | None = None) -> int:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if number < at_least:
        raise argparse.ArgumentTypeError(
            f"expected a number of at least {at_least}, got {int(number)}"
        )
    if at_most is not None and number > at_most:
        raise argparse.ArgumentTypeError(
            f"expected a number of at most {at_most:,}, got {int(number):,}"
        )
    return int(number)


def positive_float(text: str) -> float:
    """argparse type: a number greater than 0."""
    number = _number(text)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {number}")
    return number


def non_negative_float(text: str) -> float:
    """argparse type: a number of 0 or more."""
    number = _number(text)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {number}")
    return number


def fraction(text: str) -> float:
    """argparse type: a number from 0 up to, not including, 1."""
    number = _number(text)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to below 1, got {number}")
    return number


def _number(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return number


def or_dataset_default(kind: Callable[[str], object]) -> Callable[[str], object]:
    """argparse type: `kind`, or None for "" (MLproject's empty value: the dataset's default)."""

    def parse(text: str):
        return None if str(text).strip() == "" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def param_text(value) -> str:
    """Return a parameter's value as a run logs it: MLproject's true/false, floats in full.

    A value left unset is "", as MLproject passes it, so that a run that a script logged
    compares equal with one that `mlflow run` started.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def defaults_of(function: Callable) -> dict:
    """Return the default of every parameter of `function` that has one."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def arguments_for(function: Callable, args: argparse.Namespace) -> dict:
    """Return the parsed arguments that `function` takes, by name."""
    accepted = inspect.signature(function).parameters
    return {name: value for name, value in vars(args).items() if name in accepted}


def fail(prog: str, error: BaseException) -> int:
    """Print a user's error as one line on stderr and return the exit code. Under `mlflow
    run`, its run, which ends FAILED, gets the line as its tag `error` too."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if run_id := os.environ.get("MLFLOW_RUN_ID"):
        _say_why_refused(run_id, prog, message)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


def error_line(error: BaseException) -> str:
    """A user's error as `fail` prints it; a bug's first line with its type: `KeyError: 'x'`."""
    if isinstance(error, USER_ERRORS) and str(error).strip():
        return str(error).strip().splitlines()[0]
    return traceback.format_exception_only(error)[0].strip().splitlines()[0]


@contextlib.contextmanager
def stage_run(
    stage: str,
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    script: str,
    system_metrics: bool = False,
) -> Iterator[object]:
    """Start (or join, under `mlflow run`) the run of `stage`, tagged and with its params.

    The run ends FINISHED, or FAILED if the body raises, with the error's first line as its
    tag `error` (and in its description), or KILLED if SIGINT or SIGTERM stops it (see
    tracking/signals.py). With `system_metrics`, the run records the machine's CPU and
    memory use every SYSTEM_METRICS_SECONDS (`system/...` metrics).
    """
    from mnist_pipeline.tracking import signals

    signals.install()
    import mlflow

    from mnist_pipeline.tracking import naming, runs
    from mnist_pipeline.tracking.code_version import code_version

    runs.check_tracking_server()  # an unreachable server: one line now, not minutes of retries
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    with (
        mlflow.start_run(log_system_metrics=system_metrics) as run,
        signals.killed_when_stopped(),
    ):
        mlflow.set_tags(
            {
                runs.STAGE_TAG: stage,
                runs.CODE_VERSION_TAG: code_version(script),
                signals.PROCESS_TAG: signals.process_tag(),
            }
        )
        canonical = {name: param_text(value) for name, value in vars(args).items()}
        # `mlflow run` has already logged the MLproject parameters as the user typed
        # them; MLflow refuses to change a logged value, so only the rest are added.
        logged = mlflow.get_run(run.info.run_id).data.params
        mlflow.log_params({k: v for k, v in canonical.items() if k not in logged})
        # Named and described from the start, so that a run that fails reads well too,
        # and again at the end, with its results or what it found before it failed.
        naming.describe(run.info.run_id)
        try:
            yield run
        except Exception as error:
            with contextlib.suppress(Exception):  # the store may be what failed
                mlflow.set_tag(naming.ERROR_TAG, error_line(error))
            raise
        finally:
            naming.describe(run.info.run_id)
