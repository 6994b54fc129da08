"""Benchmark: re-running `main` with nothing changed reuses every stage, quickly.

Target (from the issue): a second `mlflow run <repo>` with the same parameters starts no
stage again (all five reused, per the parent run's `reused_stages` tag, and no new stage
run in the store) and finishes in <= 30 s of wall time. Baseline, measured in the same
run: the first, cold run of the same command. Training is one epoch by default, which
only shortens the baseline.

$ python benchmarks/bench_rerun.py [--quick] [--epochs 1]
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

TARGET_SECONDS = 30.0
STAGES = ("get_data", "explore_data", "preprocess", "train", "package")


def stage_run_count() -> int:
    """How many stage runs (everything but the main runs) the store holds."""
    import mlflow

    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    runs = mlflow.search_runs(experiment_ids=experiments, filter_string="tags.stage != 'main'",
                              output_format="list")  # fmt: skip
    return len(runs)


def run_main(environment: dict, root: Path, epochs: int) -> dict:
    """Run the pipeline once; return its wall time and what the parent run recorded."""
    before = stage_run_count()
    wall = mlflow_run(environment, root, "main", source=MIRROR / "mnist", epochs=epochs,
                      data_dir=root / "data", output_dir=root / "model")  # fmt: skip
    parent = newest_run("main")
    reused = parent.data.tags.get("reused_stages", "")
    reused_stages = [] if reused in ("", "none") else reused.split(",")
    return {"run_id": parent.info.run_id, "wall_seconds": wall, "reused_stages": reused_stages,
            "new_stage_runs": stage_run_count() - before,
            "stage_runs": {s: parent.data.tags.get(f"{s}_run") for s in STAGES}}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same (already short)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the pipeline")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and print it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with temporary_folder("bench_rerun", args.keep) as root:
        environment = make_store(root)
        try:
            first = run_main(environment, root, args.epochs)
            second = run_main(environment, root, args.epochs)
        except CommandFailed as error:
            print(f"bench_rerun: {error}", file=sys.stderr)
            return 2

    all_reused = set(second["reused_stages"]) == set(STAGES) and second["new_stage_runs"] == 0
    same_runs = first["stage_runs"] == second["stage_runs"]
    passed = all_reused and same_runs and second["wall_seconds"] <= TARGET_SECONDS
    print_table(
        "Re-running main with nothing changed",
        [
            {"run": "first (cold, baseline)", "wall_s": first["wall_seconds"],
             "reused": f"{len(first['reused_stages'])}/{len(STAGES)}",
             "new_stage_runs": first["new_stage_runs"], "target": "baseline", "result": "-"},
            {"run": "second (nothing changed)", "wall_s": second["wall_seconds"],
             "reused": f"{len(second['reused_stages'])}/{len(STAGES)}",
             "new_stage_runs": second["new_stage_runs"],
             "target": f"{len(STAGES)}/{len(STAGES)} reused, <= {TARGET_SECONDS:.0f} s",
             "result": verdict(passed)},
        ],
    )  # fmt: skip
    ran_again = [stage for stage in STAGES if stage not in second["reused_stages"]]
    ratio = second["wall_seconds"] / first["wall_seconds"]
    print(f"Second run: {ratio:.2f}x the first run's time; "
          f"stages started again: {', '.join(ran_again) or 'none'}; "
          f"same stage run IDs: {'yes' if same_runs else 'no'}")  # fmt: skip
    write_results("bench_rerun", {
        "quick": args.quick, "epochs": args.epochs, "target_seconds": TARGET_SECONDS,
        "first": first, "second": second, "all_reused": all_reused,
        "same_stage_runs": same_runs, "passed": passed,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
