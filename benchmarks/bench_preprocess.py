"""Benchmark: preprocess time on all 70,000 images, and the size of what it keeps per run.

Target (from the issue): preprocess takes <= 10 s on the 70,000 images of MNIST, and its
artifacts stay small enough that ten pipeline runs do not fill a laptop (no number given:
the size per run and for ten runs is reported). Runs get_data and explore_data on the
local mirror in a temporary store, then times `python preprocess.py` (its own
`preprocess_seconds` metric and the command's wall time, which adds Python and MLflow
start-up) and reads `artifact_megabytes`. Baseline, measured in the same run: the same
normalised arrays saved uncompressed with np.save.

$ python benchmarks/bench_preprocess.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import (
    MIRROR,
    REPO,
    CommandFailed,
    directory_megabytes,
    make_store,
    mlflow_run,
    newest_run,
    print_table,
    run_command,
    temporary_folder,
    verdict,
    write_results,
)

TARGET_SECONDS = 10.0
PIPELINE_RUNS = 10


def time_preprocess_script(environment: dict, root: Path, data_run: str, explore_run: str) -> dict:
    """Run preprocess.py once as a user would; return its metrics and the command's wall time."""
    from mnist_pipeline.tracking.runs import artifact_dir

    command = [sys.executable, REPO / "preprocess.py", "--data_run", data_run]
    wall = run_command(command + ["--explore_run", explore_run], environment, root)
    run = newest_run("preprocess")
    return {"run_id": run.info.run_id, "wall_seconds": wall,
            "preprocess_seconds": run.data.metrics["preprocess_seconds"],
            "artifact_megabytes": run.data.metrics["artifact_megabytes"],
            "on_disk_megabytes": directory_megabytes(artifact_dir(run.info.run_id))}  # fmt: skip


def time_uncompressed_baseline(data_folder: Path, preprocess_run: str, output: Path) -> dict:
    """Read, normalise with the run's transform and np.save the four arrays uncompressed."""
    import numpy as np

    from mnist_pipeline.data.catalogue import DATASETS
    from mnist_pipeline.data.idx import load_folder
    from mnist_pipeline.data.transform import TRANSFORM_FILE, TransformSpec, normalize
    from mnist_pipeline.tracking.runs import artifact_dir

    spec = TransformSpec.load(artifact_dir(preprocess_run) / TRANSFORM_FILE)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = load_folder(data_folder, DATASETS["mnist"])
    np.save(output / "x_train.npy", normalize(data.x_train, spec))
    np.save(output / "y_train.npy", data.y_train)
    np.save(output / "x_test.npy", normalize(data.x_test, spec))
    np.save(output / "y_test.npy", data.y_test)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "megabytes": directory_megabytes(output)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat instead of --repeats")
    parser.add_argument("--repeats", type=int, default=3, help="preprocess runs to time (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and print it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)
    with temporary_folder("bench_preprocess", args.keep) as root:
        environment = make_store(root)
        data_folder = root / "data" / "mnist"
        try:
            mlflow_run(environment, root, "get_data", source=MIRROR / "mnist", outdir=data_folder)
            data_run = newest_run("get_data").info.run_id
            mlflow_run(environment, root, "explore_data", data_run=data_run)
            explore_run = newest_run("explore_data").info.run_id
            ours = [
                time_preprocess_script(environment, root, data_run, explore_run)
                for _ in range(repeats)
            ]
        except CommandFailed as error:
            print(f"bench_preprocess: {error}", file=sys.stderr)
            return 2
        baseline = [
            time_uncompressed_baseline(data_folder, ours[0]["run_id"], root / f"baseline-{n}")
            for n in range(repeats)
        ]

    seconds = statistics.median(run["preprocess_seconds"] for run in ours)
    wall = statistics.median(run["wall_seconds"] for run in ours)
    megabytes = ours[0]["artifact_megabytes"]
    baseline_seconds = statistics.median(run["seconds"] for run in baseline)
    baseline_megabytes = baseline[0]["megabytes"]
    passed = seconds <= TARGET_SECONDS
    print_table(
        f"Preprocess: 70,000 MNIST images (median of {repeats})",
        [
            {"method": "preprocess.py (savez_compressed)", "seconds": seconds, "wall_s": wall,
             "MB_per_run": megabytes, f"MB_{PIPELINE_RUNS}_runs": PIPELINE_RUNS * megabytes,
             "target": f"<= {TARGET_SECONDS:.0f} s", "result": verdict(passed)},
            {"method": "np.save uncompressed (baseline)", "seconds": baseline_seconds,
             "wall_s": None, "MB_per_run": baseline_megabytes,
             f"MB_{PIPELINE_RUNS}_runs": PIPELINE_RUNS * baseline_megabytes,
             "target": "baseline", "result": "-"},
        ],
    )  # fmt: skip
    print(f"Artifacts are {baseline_megabytes / megabytes:.1f}x smaller than uncompressed, "
          f"and take {seconds / baseline_seconds:.1f}x the baseline's time; "
          f"on disk per run: {ours[0]['on_disk_megabytes']:.1f} MB")  # fmt: skip
    write_results("bench_preprocess", {
        "quick": args.quick, "repeats": repeats, "target_seconds": TARGET_SECONDS,
        "preprocess_seconds": seconds, "wall_seconds": wall, "megabytes_per_run": megabytes,
        "megabytes_for_ten_runs": PIPELINE_RUNS * megabytes, "passed": passed,
        "baseline_seconds": baseline_seconds, "baseline_megabytes_per_run": baseline_megabytes,
        "runs": ours, "baseline_runs": baseline,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
