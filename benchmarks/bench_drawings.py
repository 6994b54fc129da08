"""Benchmark: training with the synthetic supplement against training without it, in one run.

Issue 23. For each seed, trains MNIST with today's defaults at each `--synthetic` share (0 is
the baseline: the defaults before the supplement), packages each model (register=false) and
reads the figures of the served path that package logged: `fonts_accuracy` (font_digits/,
which chose nothing), `drawn_accuracy` (drawn_digits/), and from the train run its test
accuracy, the validation accuracy of its last epoch, and its seconds of training. The share
is chosen on the drawn set and the validation split only. With --fashion, also trains
Fashion-MNIST with its own defaults, once per seed (the supplement is for digits only).
Training seconds depend on the machine and its load: compare the ratio within one run.

$ python benchmarks/bench_drawings.py --seeds 1 2 3 --synthetic 0 0.05 0.1 --fashion
$ python benchmarks/bench_drawings.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time

from bench_accuracy import load_average, prepare
from common import (
    CommandFailed,
    make_store,
    mlflow_run,
    newest_run,
    print_table,
    temporary_folder,
    write_results,
)

TARGETS = {"fonts": 0.98, "drawn": 0.99, "mnist": 0.994, "fashion": 0.925}


def trained(dataset, preprocess_run, environment, root, **parameters) -> dict:
    """Train with `parameters`; for MNIST, package too; return the figures."""
    mlflow_run(environment, root, "train", preprocess_run=preprocess_run, **parameters)
    run = newest_run("train")
    figures = {
        "test": run.data.metrics["accuracy"],
        "val": run.data.metrics["val_accuracy"],
        "train_s": run.data.metrics["train_seconds"],
        "load": load_average(),
    }
    if dataset == "mnist":
        mlflow_run(environment, root, "package", train_run=run.info.run_id, register="false",
                   output_dir=root / "model")  # fmt: skip
        served = newest_run("package").data.metrics
        figures |= {"drawn": served.get("drawn_accuracy"), "fonts": served.get("fonts_accuracy")}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--synthetic", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--fashion", action="store_true", help="Fashion-MNIST's defaults too")
    parser.add_argument("--epochs", default="", help="for a smoke run: fewer epochs")
    parser.add_argument("--quick", action="store_true", help="smoke run: seed 1, 1 epoch")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = [1], "1"
    rows = []
    started = time.perf_counter()
    with temporary_folder("bench_drawings", args.keep) as root:
        environment = make_store(root)
        try:
            mnist = prepare("mnist", environment, root)
            fashion = prepare("fashion", environment, root) if args.fashion else None
            for seed in args.seeds:
                for share in args.synthetic:
                    print(f"[mnist] seed {seed}, synthetic {share}", file=sys.stderr)
                    figures = trained("mnist", mnist, environment, root, seed=seed,
                                      synthetic=share, epochs=args.epochs)  # fmt: skip
                    rows.append({"dataset": "mnist", "seed": seed, "synthetic": share, **figures})
                if fashion:
                    print(f"[fashion] seed {seed}", file=sys.stderr)
                    figures = trained("fashion", fashion, environment, root, seed=seed,
                                      epochs=args.epochs)  # fmt: skip
                    rows.append({"dataset": "fashion", "seed": seed, "synthetic": 0, **figures})
        except CommandFailed as error:
            print(f"bench_drawings: {error}", file=sys.stderr)
            return 2
    print_table("The synthetic supplement: served accuracy per seed and share", rows)
    mnist_rows = [row for row in rows if row["dataset"] == "mnist"]
    for share in args.synthetic:
        chosen = [row for row in mnist_rows if row["synthetic"] == share]
        baseline = [row for row in mnist_rows if row["synthetic"] == args.synthetic[0]]
        seconds = sum(r["train_s"] for r in chosen) / sum(r["train_s"] for r in baseline)
        worst = {name: min(row[name] for row in chosen) for name in ("fonts", "drawn", "test")}
        print(
            f"synthetic {share}: worst seed fonts {worst['fonts']:.4f} (target "
            f"{TARGETS['fonts']}), drawn {worst['drawn']:.4f} ({TARGETS['drawn']}), MNIST test "
            f"{worst['test']:.4f} ({TARGETS['mnist']}); training time {seconds:.2f}x "
            f"synthetic {args.synthetic[0]}'s"
        )
    print(f"{time.perf_counter() - started:.0f} s in all; load now {load_average()}")
    write_results("bench_drawings", {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
