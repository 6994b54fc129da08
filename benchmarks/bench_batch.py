"""Benchmark: hyperparameter batches (train_batch) in parallel, and 8 writers on one SQLite store.

Targets (from issue 4): a 4-trial batch with workers=2 finishes in less wall time than
the same 4 trials with workers=1 (the ratio is measured in the same run; workers=1 is
the baseline); 8 concurrent trials (workers=8) writing to one SQLite store all complete:
every child run FINISHED, with `accuracy`, `loss` and one value per epoch of train_loss,
train_accuracy, val_loss and val_accuracy. The batches run as a user would:
`mlflow run <repo> -e train_batch --env-manager local -P preprocess_run=<id> ...`, on a
preprocess run of the local MNIST mirror (or of its first --train-images, to be quicker).

$ python benchmarks/bench_batch.py [--quick] [--train-images 60000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import (
    MIRROR,
    CommandFailed,
    make_store,
    mlflow_run,
    newest_run,
    print_table,
    temporary_folder,
    verdict,
    write_results,
)

EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
FINAL_METRICS = ("accuracy", "loss")
FOUR_TRIALS = "4,8,12,16"
EIGHT_TRIALS = "4,6,8,10,12,14,16,18"


def write_subset(folder: Path, train_images: int) -> Path:
    """Write the first `train_images` training and a sixth as many test images as IDX files."""
    from mnist_pipeline.data.catalogue import DATASETS
    from mnist_pipeline.data.idx import load_folder, write_idx

    data = load_folder(MIRROR / "mnist", DATASETS["mnist"])
    test_images = max(10, train_images // 6)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", data.x_train[:train_images])
    write_idx(folder / "train-labels-idx1-ubyte.gz", data.y_train[:train_images])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", data.x_test[:test_images])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", data.y_test[:test_images])
    return folder


def prepare(environment: dict, root: Path, train_images: int) -> str:
    """get_data, explore_data and preprocess; return the preprocess run's ID."""
    if train_images >= 60000:
        source, unverified = MIRROR / "mnist", "false"
    else:
        source, unverified = write_subset(root / "subset", train_images), "true"
    mlflow_run(environment, root, "get_data", source=source, allow_unverified=unverified,
               outdir=root / "data" / "mnist")  # fmt: skip
    data_run = newest_run("get_data").info.run_id
    mlflow_run(environment, root, "explore_data", data_run=data_run)
    mlflow_run(environment, root, "preprocess", data_run=data_run)
    return newest_run("preprocess").info.run_id


def check_children(parent_run_id: str, epochs: int) -> tuple[list[str], int]:
    """Return (one line per problem found in the child runs of `parent_run_id`, their number)."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    problems = []
    for child in children:
        name = child.data.tags.get("mlflow.runName", child.info.run_id)
        if child.info.status != "FINISHED":
            problems.append(f"{name}: {child.info.status}")
        missing = [metric for metric in FINAL_METRICS if metric not in child.data.metrics]
        if missing:
            problems.append(f"{name}: no {', '.join(missing)}")
        for metric in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, metric))
            if steps != list(range(epochs)):
                problems.append(
                    f"{name}: {metric} logged at steps {steps}, expected 0..{epochs - 1}"
                )
    return problems, len(children)


def run_batch(environment: dict, root: Path, preprocess_run: str, values: str, workers: int,
              epochs: int) -> dict:  # fmt: skip
    wall = mlflow_run(environment, root, "train_batch", preprocess_run=preprocess_run,
                      nr_conv_1=values, epochs=epochs, workers=workers)  # fmt: skip
    parent = newest_run("train_batch")
    problems, children = check_children(parent.info.run_id, epochs)
    trials = len(values.split(","))
    complete = children - len({problem.split(":")[0] for problem in problems})
    return {"run_id": parent.info.run_id, "trials": trials, "workers": workers,
            "wall_seconds": wall, "batch_seconds": parent.data.metrics.get("batch_seconds"),
            "complete_runs": complete, "child_runs": children, "problems": problems}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first 6,000 training images")
    parser.add_argument("--train-images", type=int, default=60000, help="training images used")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every trial")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and print it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train_images = 6000 if args.quick else args.train_images
    with temporary_folder("bench_batch", args.keep) as root:
        environment = make_store(root)
        try:
            preprocess_run = prepare(environment, root, train_images)
            one = run_batch(environment, root, preprocess_run, FOUR_TRIALS, 1, args.epochs)
            two = run_batch(environment, root, preprocess_run, FOUR_TRIALS, 2, args.epochs)
            eight = run_batch(environment, root, preprocess_run, EIGHT_TRIALS, 8, args.epochs)
        except CommandFailed as error:
            print(f"bench_batch: {error}", file=sys.stderr)
            return 2

    ratio = two["wall_seconds"] / one["wall_seconds"]
    passed = {"parallel_faster": ratio < 1.0,
              "all_complete": all(b["complete_runs"] == b["child_runs"] == b["trials"]
                                  for b in (one, two, eight))}  # fmt: skip
    targets = [(one, "baseline", "-"),
               (two, "faster than workers=1", verdict(passed["parallel_faster"])),
               (eight, "8/8 runs complete", verdict(passed["all_complete"]))]  # fmt: skip
    rows = []
    for batch, target, result in targets:
        rows.append({"trials": batch["trials"], "workers": batch["workers"],
                     "wall_s": batch["wall_seconds"], "batch_s": batch["batch_seconds"],
                     "complete": f"{batch['complete_runs']}/{batch['trials']}",
                     "target": target, "result": result})  # fmt: skip
    print_table(
        f"train_batch on {train_images:,} training images, {args.epochs} epoch(s) per trial", rows
    )
    print(f"workers=2 / workers=1 wall time: {ratio:.2f} (target < 1)")
    for batch in (one, two, eight):
        for problem in batch["problems"]:
            print(f"  workers={batch['workers']}: {problem}")
    write_results("bench_batch", {
        "quick": args.quick, "train_images": train_images, "epochs": args.epochs,
        "batches": [one, two, eight], "ratio_two_workers_to_one": ratio, "passed": passed,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
