"""train_batch: many trainings as nested runs of one parent, the best one named.

Each hyperparameter takes one value (`16`), a grid list (`8,16,24`; several lists give
their product) or a range (`8:64`) searched by Optuna (`--strategy random` or `tpe`,
`--trials` of them). Every trial is a full train.py run, nested under this run, in its
own process; `--workers` of them run at once. The parent logs `best_accuracy`, the tag
`best_run_id`, a table of trials and a picture of accuracy against each searched value.

$ mlflow run . -e train_batch --env-manager local -P nr_conv_1=8,16,24,32 -P epochs=1 -P workers=2
"""

from __future__ import annotations

import sys

from mnist_pipeline.cli import (
    USER_ERRORS,
    Parser,
    fail,
    positive_int,
    stage_run,
)

HYPERPARAMETER_DEFAULTS = {
    "batch_size": "128",
    "epochs": "5",
    "lr": "0.002",
    "nr_conv_1": "8,16,24,32",
    "seed": "42",
}


def build_parser() -> Parser:
    parser = Parser(prog="batch_train.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preprocess_run", default="", help="a preprocess run ID (default: the newest)"
    )
    parser.add_argument(
        "--dataset", default="mnist", help="mnist or fashion, to find the newest preprocess run"
    )
    for name, default in HYPERPARAMETER_DEFAULTS.items():
        parser.add_argument(
            f"--{name}", default=default, help="a value, a list a,b,c, or a range lo:hi"
        )
    parser.add_argument(
        "--strategy",
        default="auto",
        help="grid, random or tpe (auto: grid for lists, tpe when there is a range)",
    )
    parser.add_argument("--trials", type=positive_int, default=8, help="trials for random and tpe")
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="trials run at the same time"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    from mnist_pipeline.search import HYPERPARAMETERS, TrialPlan, parse_choice

    if unknown:
        name = unknown[0].lstrip("-").split("=")[0]
        return fail(
            parser.prog,
            ValueError(
                f"unknown hyperparameter {name!r}; choose from {', '.join(HYPERPARAMETERS)}"
            ),
        )
    try:
        choices = [parse_choice(name, getattr(args, name)) for name in HYPERPARAMETERS]
        plan = TrialPlan(
            choices,
            args.strategy,
            args.trials,
            seed=_sampler_seed(choices),
        )
        with stage_run("train_batch", parser, args, __file__) as run:
            summary = run_batch(args, plan)
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    print(f"train_batch run {run.info.run_id}: {summary}")
    return 0


def _sampler_seed(choices) -> int:
    """The search itself is seeded by the (first) training seed, so a batch can be repeated."""
    seed = next(choice for choice in choices if choice.name == "seed")
    return int(seed.values[0]) if seed.values else int(seed.low)


def run_batch(args, plan) -> str:
    import time
    from concurrent.futures import ThreadPoolExecutor

    import mlflow
    import pandas as pd

    from mnist_pipeline import plots, runs
    from mnist_pipeline.trials import TrialRunner

    if args.preprocess_run:
        preprocess = runs.get_run(args.preprocess_run, "preprocess")
    else:
        preprocess = runs.latest_run("preprocess", args.dataset)
    parent = mlflow.active_run()
    mlflow.set_tags(
        {
            "dataset": preprocess.data.tags.get("dataset", args.dataset),
            "preprocess_run": preprocess.info.run_id,
            "strategy": plan.strategy,
        }
    )
    print(
        f"[train_batch] {plan.total} trials ({plan.strategy}), {args.workers} at a time, "
        f"on preprocess run {preprocess.info.run_id}",
        file=sys.stderr,
    )

    runner = TrialRunner(
        parent.info.run_id,
        parent.info.experiment_id,
        preprocess.info.run_id,
        workers=args.workers,
        total=plan.total,
    )
    started = time.perf_counter()

    def worker() -> None:
        while (handed := plan.next()) is not None:
            handle, params = handed
            result = runner.run(params)
            plan.report(handle, result["accuracy"] if result["status"] == "FINISHED" else None)

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for future in [pool.submit(worker) for _ in range(args.workers)]:
            future.result()
    seconds = time.perf_counter() - started

    table = pd.DataFrame(runner.results).sort_values("trial")
    finished = table[table["status"] == "FINISHED"]
    failed = len(table) - len(finished)
    mlflow.log_table(table, "trials.json")
    mlflow.log_text(table.to_csv(index=False), "trials.csv")
    mlflow.log_metrics(
        {"trials_finished": len(finished), "trials_failed": failed, "batch_seconds": seconds}
    )
    if plan.searched and len(finished):
        mlflow.log_figure(
            plots.metric_against_params(table, "accuracy", plan.searched),
            "accuracy_by_hyperparameter.png",
        )
    if finished.empty:
        raise ValueError(f"all {len(table)} trials failed; see the child runs' logs")
    best = finished.loc[finished["accuracy"].idxmax()]
    mlflow.log_metric("best_accuracy", float(best["accuracy"]))
    mlflow.set_tag("best_run_id", best["run_id"])
    summary = (
        f"{len(finished)} of {len(table)} trials finished in {seconds:.0f} s"
        + (f", {failed} FAILED" if failed else "")
        + f"; best {best['run_id']} with accuracy {best['accuracy']:.4f}"
    )
    print(table.to_string(index=False), file=sys.stderr)
    return summary


if __name__ == "__main__":
    sys.exit(main())
