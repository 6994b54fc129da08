"""A process that runs train.py for one trial after another, with TensorFlow imported once.

A batch's runner (trials.py) starts one per worker and sends it one JSON line per trial on
stdin: train.py's arguments, the environment of that trial (MLFLOW_RUN_ID, the study
to report to) and the file its output goes to. The process runs train.py's `main()` on
them, as `python train.py ...` would, and answers with train.py's exit code on a line
of its own. Starting Python, MLflow and TensorFlow costs about 10 CPU-seconds, more
than a short trial's own training; this way a batch pays it once per worker.

A trial that fails, or that a signal stops, ends the process, so that nothing it left
behind reaches the next trial: the runner starts a fresh process for the next one.

$ python -m mnist_pipeline.search.trial_process   # started by trials.TrialRunner, not by hand
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path


def main() -> int:
    # train.py's output goes to each trial's log; the answers go to the runner's pipe,
    # and nothing else does: what is printed between trials goes where stderr goes.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    import keras

    import train  # the project's train.py (the process starts in the project's folder)

    for line in sys.stdin:
        trial = json.loads(line)
        with _environment(trial["environment"]), _output_to(Path(trial["log"])):
            returncode = _exit_code_of(train.main, trial["argv"])
        keras.utils.clear_session(free_memory=True)
        print(returncode, file=answers, flush=True)
        if returncode != 0:
            return returncode
    return 0


def _exit_code_of(main, argv: list[str]) -> int:
    """What `python train.py <argv>` would exit with; what it would print goes to stderr."""
    try:
        return main(argv)
    except SystemExit as exit:  # argparse refusing an argument
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except BaseException as error:  # a bug, or SIGINT or SIGTERM (see tracking/signals.py)
        sys.excepthook(type(error), error, error.__traceback__)
        return 130 if isinstance(error, KeyboardInterrupt) else 1


@contextmanager
def _environment(variables: dict[str, str]):
    """Set `variables` in os.environ for the `with` block, then remove them again."""
    os.environ.update(variables)
    try:
        yield
    finally:
        for name in variables:
            os.environ.pop(name, None)


@contextmanager
def _output_to(log: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2) to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log, "w") as handle:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


if __name__ == "__main__":
    sys.exit(main())
