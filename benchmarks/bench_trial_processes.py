"""Benchmark: a batch's trials in one trial process per worker, against one process per trial.

Target (issue 9, the test loop, and any search of many short trials): a train_batch of
short trials pays for starting Python, MLflow and TensorFlow once per worker rather than
once per trial. The baseline is the same batch run by an earlier revision of this
repository (`--baseline`, by default the one before trial processes, before trained
models logged their requirements rather than MLflow inferring them in another process,
and before training in mixed bfloat16 where the CPU has it), checked out with
`git worktree` and run in the same store on the same preprocess run, the two taking
turns. Both the wall time and the CPU seconds of the whole `mlflow run` are printed: the
CPU seconds hardly depend on what else the machine is doing.

$ python benchmarks/bench_trial_processes.py [--quick] [--baseline <git revision>]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

from bench_batch import prepare
from common import (
    REPO,
    CommandFailed,
    make_store,
    newest_run,
    print_table,
    run_command,
    temporary_folder,
    write_results,
)

# The last commit that started a process per trial (and inferred each model's requirements).
BASELINE_REVISION = "16adc51"
GRID = "4,5,6,7,8,9,10,11"


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_batch(repository: Path, environment: dict, root: Path, preprocess_run: str) -> dict:
    """Run the grid batch with the code in `repository`; return its wall and CPU seconds."""
    command = ["mlflow", "run", str(repository), "-e", "train_batch", "--env-manager", "local"]
    parameters = {"preprocess_run": preprocess_run, "nr_conv_1": GRID, "epochs": 1, "workers": 2}
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    cpu_before = children_cpu_seconds()
    seconds = run_command(command, {**environment, "PYTHONPATH": str(repository)}, root)
    parent = newest_run("train_batch")
    return {
        "seconds": seconds,
        "cpu_seconds": children_cpu_seconds() - cpu_before,
        "trials_finished": int(parent.data.metrics["trials_finished"]),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of two")
    parser.add_argument(
        "--baseline", default=BASELINE_REVISION, help="the revision that runs the baseline"
    )
    parser.add_argument("--train-images", type=int, default=3000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rounds = 1 if args.quick else 2
    with temporary_folder("bench-trial-processes") as root:
        baseline = root / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(baseline), args.baseline],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        try:
            environment = make_store(root / "store")
            preprocess_run = prepare(environment, root / "store", args.train_images)
            rows = []
            for number in range(1, rounds + 1):
                for name, repository in (("one process per trial", baseline),
                                         ("a trial process per worker", REPO)):  # fmt: skip
                    figures = run_batch(repository, environment, root / "store", preprocess_run)
                    rows.append({"round": number, "trials run by": name, **figures,
                                 "load": "/".join(f"{x:.1f}" for x in os.getloadavg())})  # fmt: skip
        except CommandFailed as error:
            print(error, file=sys.stderr)
            return 1
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, check=False
            )
    print_table(
        f"train_batch, 8 one-epoch trials on {args.train_images} images, workers=2 "
        f"(baseline: {args.baseline})",
        rows,
    )
    write_results("trial_processes", {"baseline_revision": args.baseline, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
