"""train_batch: many trainings as nested runs of one parent, the best one named.

Each hyperparameter takes one value (`16`), a grid list (`8,16,24`; several lists give
their product) or a range (`8:64`) searched by Optuna (`--strategy random` or `tpe`,
`--trials` of them). Every trial is a full train.py run, nested under this run, in its
own process; `--workers` of them run at once. The parent logs `best_accuracy`, the tag
`best_run_id`, a table of trials and a picture of accuracy against each searched value.

With OPTUNA_STORAGE set to a database (a team's PostgreSQL), the search's Optuna study
lives there, and workers on other machines join it with `--join <this run's ID>`.
`--pruner median` or `hyperband` stops trials that fall behind.

$ mlflow run . -e train_batch --env-manager local -P nr_conv_1=8,16,24,32 -P epochs=1 -P workers=2
$ mlflow run . -e train_batch --env-manager local -P join=<run id>   # another machine
"""

from __future__ import annotations

import os
import sys

from mnist_pipeline.cli import (
    USER_ERRORS,
    Parser,
    fail,
    positive_int,
    stage_run,
)
from mnist_pipeline.errors import UserError

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
        "--workers", type=positive_int, default=1, help="trials run at the same time here"
    )
    parser.add_argument(
        "--pruner", default="none", help="none, median or hyperband: stop trials that lag behind"
    )
    parser.add_argument(
        "--join",
        default="",
        help="the run ID of a search to work on (its study is in OPTUNA_STORAGE)",
    )
    parser.add_argument(
        "--heartbeat_seconds",
        type=positive_int,
        default=20,
        help="how often a worker tells the shared study that its trials are alive",
    )
    parser.add_argument(
        "--grace_seconds",
        type=positive_int,
        default=60,
        help="a trial silent this long is taken as dead, ended KILLED and run again",
    )
    parser.add_argument(
        "--retry_seconds",
        type=positive_int,
        default=120,
        help="how long a worker waits for a study storage that went away before it stops",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    from mnist_pipeline import runs, search, study

    try:
        if unknown:
            name = unknown[0].lstrip("-").split("=")[0]
            raise UserError(
                f"unknown hyperparameter {name!r}; choose from {', '.join(search.HYPERPARAMETERS)}"
            )
        storage = os.environ.get(study.STORAGE_ENV, "")
        runs.check_tracking_server()
        if args.join:
            # Everything is checked before this worker's run starts trials.
            shared = study.StudySearch.join(args.join, storage, args.retry_seconds)
            with stage_run("train_batch_worker", parser, args, __file__) as run:
                summary = work_on(shared, args.workers)
        else:
            choices = search.parse_choices(
                {name: getattr(args, name) for name in search.HYPERPARAMETERS}
            )
            strategy = search.resolve_strategy(choices, args.strategy, shared=bool(storage))
            search.make_pruner(args.pruner)
            if strategy != "grid" and storage:
                study.open_storage(storage)  # a bad URL or password stops us here
            with stage_run("train_batch", parser, args, __file__) as run:
                summary = run_batch(args, choices, strategy, storage if strategy != "grid" else "")
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    print(f"train_batch run {run.info.run_id}: {summary}")
    return 0


def run_batch(args, choices, strategy: str, storage: str) -> str:
    """Run the batch's trials (with other machines, if `storage` is a database) and sum up."""
    import mlflow

    from mnist_pipeline import runs, study
    from mnist_pipeline.trials import TrialRunner, write_summary

    if args.preprocess_run:
        preprocess = runs.get_run(args.preprocess_run, "preprocess")
    else:
        preprocess = runs.latest_run("preprocess", args.dataset)
    parent = mlflow.active_run()
    settings = study.SearchSettings(
        parent_run_id=parent.info.run_id,
        experiment_id=parent.info.experiment_id,
        preprocess_run=preprocess.info.run_id,
        hyperparameters={name: str(getattr(args, name)) for name in HYPERPARAMETER_DEFAULTS},
        strategy=strategy,
        trials=args.trials,
        pruner=args.pruner,
        seed=_sampler_seed(choices),
        heartbeat_seconds=args.heartbeat_seconds,
        grace_seconds=args.grace_seconds,
    )
    tags = {
        "dataset": preprocess.data.tags.get("dataset", args.dataset),
        "preprocess_run": preprocess.info.run_id,
        "strategy": strategy,
        study.SEARCH_TAG: "shared" if storage else "local",
    }
    if strategy == "grid":
        batch = study.GridSearch(choices)
    else:
        batch = study.StudySearch.create(settings, storage, args.retry_seconds)
        tags[study.STUDY_TAG] = batch.study.study_name
        if storage:
            tags[study.STORAGE_TAG] = study.redacted(storage)
    mlflow.set_tags(tags)
    where = f", shared through {study.redacted(storage)}" if storage else ""
    print(
        f"[train_batch] {batch.total} trials ({strategy}), {args.workers} at a time here, "
        f"on preprocess run {preprocess.info.run_id}{where}",
        file=sys.stderr,
    )
    if storage:
        print(
            f"[train_batch] other machines join with: mlflow run . -e train_batch "
            f"--env-manager local -P join={parent.info.run_id}",
            file=sys.stderr,
        )
    runner = TrialRunner(
        parent.info.run_id,
        parent.info.experiment_id,
        preprocess.info.run_id,
        workers=args.workers,
        total=batch.total,
        searched=settings.searched,
    )
    study.run_workers(lambda: batch.work(runner), args.workers)
    return write_summary(parent.info.run_id, parent.info.experiment_id, settings.searched)


def work_on(shared, workers: int) -> str:
    """Run trials of a search that another machine started, until it is done."""
    import mlflow

    from mnist_pipeline import study
    from mnist_pipeline.trials import HOST, TrialRunner, write_summary

    settings = shared.settings
    mlflow.set_tags(
        {"joined": settings.parent_run_id, "host": HOST, "worker": f"{HOST}:{os.getpid()}"}
    )
    print(
        f"[train_batch] joining search {settings.parent_run_id}: {settings.trials} trials "
        f"({settings.strategy}), {workers} at a time here",
        file=sys.stderr,
    )
    runner = TrialRunner(
        settings.parent_run_id,
        settings.experiment_id,
        settings.preprocess_run,
        workers=workers,
        total=settings.trials,
        searched=settings.searched,
    )
    study.run_workers(lambda: shared.work(runner), workers)
    mlflow.log_metric("trials_run_here", len(runner.results))
    # Whoever finishes last writes the summary; each worker writes the same one.
    summary = write_summary(settings.parent_run_id, settings.experiment_id, settings.searched)
    return f"ran {len(runner.results)} trials of search {settings.parent_run_id}; {summary}"


def _sampler_seed(choices) -> int:
    """The search itself is seeded by the (first) training seed, so a batch can be repeated."""
    seed = next(choice for choice in choices if choice.name == "seed")
    return int(seed.values[0]) if seed.values else int(seed.low)


if __name__ == "__main__":
    sys.exit(main())
