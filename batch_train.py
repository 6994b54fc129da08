"""train_batch: many trainings as nested runs of one parent, the best one named.

Each hyperparameter takes one value (`16`), a grid list (`8,16,24`; several lists give
their product) or a range (`8:64`) searched by Optuna (`--strategy random` or `tpe`,
`--trials` of them). Every trial is a full train.py run, nested under this run;
`--workers` of them run at once, each worker in a process of its own that imports
TensorFlow once and runs its trials one after another. The parent logs `best_accuracy`, the tag
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
    arguments_for,
    defaults_of,
    fail,
    positive_int,
    stage_run,
)
from mnist_pipeline.errors import UserError

HYPERPARAMETERS = ("batch_size", "epochs", "lr", "nr_conv_1", "seed")


def build_parser() -> Parser:
    parser = Parser(prog="batch_train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--preprocess_run", help="a preprocess run ID (default: the newest)")
    parser.add_argument("--dataset", help="mnist or fashion, to find the newest preprocess run")
    for name in HYPERPARAMETERS:
        parser.add_argument(f"--{name}", help="a value, a list a,b,c, or a range lo:hi")
    parser.add_argument(
        "--strategy", help="grid, random or tpe (auto: grid for lists, tpe when there is a range)"
    )
    parser.add_argument("--trials", type=positive_int, help="trials for random and tpe")
    parser.add_argument("--workers", type=positive_int, help="trials run at the same time here")
    parser.add_argument("--pruner", help="none, median or hyperband: stop trials that lag behind")
    parser.add_argument(
        "--join", default="", help="the run ID of a search to work on (its study: OPTUNA_STORAGE)"
    )
    parser.add_argument(
        "--heartbeat_seconds",
        type=positive_int,
        help="how often a worker tells the shared study that its trials are alive",
    )
    parser.add_argument(
        "--grace_seconds",
        type=positive_int,
        help="a trial silent this long is taken as dead, ended KILLED and run again",
    )
    parser.add_argument(
        "--retry_seconds",
        type=positive_int,
        help="how long a worker waits for a study storage that went away before it stops",
    )
    # The study storage comes from the environment only, never from a parameter that
    # `mlflow run` would log with its password.
    defaults = defaults_of(train_batch)
    del defaults["storage"]
    parser.set_defaults(**defaults)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    from mnist_pipeline.search import choices as search
    from mnist_pipeline.search import study
    from mnist_pipeline.tracking import runs

    try:
        if unknown:
            name = unknown[0].lstrip("-").split("=")[0]
            raise UserError(
                f"unknown hyperparameter {name!r}; choose from {', '.join(search.HYPERPARAMETERS)}"
            )
        storage = os.environ.get(study.STORAGE_ENV, "")
        # Everything a user can get wrong is checked before this process's run exists.
        runs.check_tracking_server()
        if args.join:
            study.StudySearch.join(args.join, storage, args.retry_seconds)
            with stage_run("train_batch_worker", parser, args, __file__) as run:
                summary = join_search(**arguments_for(join_search, args), storage=storage)
        else:
            check_batch(**arguments_for(check_batch, args), storage=storage)
            with stage_run("train_batch", parser, args, __file__) as run:
                summary = train_batch(**arguments_for(train_batch, args), storage=storage)
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    print(f"train_batch run {run.info.run_id}: {summary}")
    return 0


def check_batch(
    batch_size: str,
    epochs: str,
    lr: str,
    nr_conv_1: str,
    seed: str,
    strategy: str,
    pruner: str,
    storage: str,
) -> tuple[list, str]:
    """Return the parsed hyperparameter choices and the strategy; UserError if anything is off.

    Called with train_batch's arguments, whose defaults are the only ones.

    With a `storage`, the study database is opened once, so that a wrong URL or password
    is said before anything is created.
    """
    from mnist_pipeline.search import choices as search
    from mnist_pipeline.search import study

    texts = {"batch_size": batch_size, "epochs": epochs, "lr": lr, "nr_conv_1": nr_conv_1}
    choices = search.parse_choices({**texts, "seed": seed})
    strategy = search.resolve_strategy(choices, strategy, shared=bool(storage))
    search.make_pruner(pruner)
    if strategy != "grid" and storage:
        study.open_storage(storage)
    return choices, strategy


def train_batch(
    preprocess_run: str = "",
    dataset: str = "mnist",
    batch_size: str = "256",
    epochs: str = "5",
    lr: str = "0.006",
    nr_conv_1: str = "8,16,24,32",
    seed: str = "42",
    strategy: str = "auto",
    trials: int = 8,
    workers: int = 1,
    pruner: str = "none",
    heartbeat_seconds: int = 20,
    grace_seconds: int = 60,
    retry_seconds: int = 120,
    storage: str = "",
) -> str:
    """Run a batch of train runs as children of the active run; return its summary line.

    Each hyperparameter is a value ("16"), a list ("8,16,24") or a range ("8:64"). The
    preprocess run is `preprocess_run`, or the newest finished one of `dataset`. Lists make
    a grid on this machine; ranges are searched by Optuna's `strategy` (random or tpe) for
    `trials` trials, `workers` at a time, in a study that other machines can join when
    `storage` is a database URL. `pruner` (median or hyperband) stops lagging trials.
    """
    import mlflow

    from mnist_pipeline.search import study
    from mnist_pipeline.search.trials import TrialRunner, write_summary
    from mnist_pipeline.tracking import runs

    choices, strategy = check_batch(
        batch_size, epochs, lr, nr_conv_1, seed, strategy, pruner, storage
    )
    storage = storage if strategy != "grid" else ""
    if preprocess_run:
        preprocess = runs.get_run(preprocess_run, "preprocess")
    else:
        preprocess = runs.latest_run("preprocess", dataset)
    parent = mlflow.active_run() or mlflow.start_run()
    settings = study.SearchSettings(
        parent_run_id=parent.info.run_id,
        experiment_id=parent.info.experiment_id,
        preprocess_run=preprocess.info.run_id,
        hyperparameters={choice.name: text for choice, text in zip(
            choices, (batch_size, epochs, lr, nr_conv_1, seed), strict=True)},
        strategy=strategy,
        trials=trials,
        pruner=pruner,
        seed=_sampler_seed(choices),
        heartbeat_seconds=heartbeat_seconds,
        grace_seconds=grace_seconds,
    )  # fmt: skip
    tags = {
        "dataset": preprocess.data.tags.get("dataset", dataset),
        "preprocess_run": preprocess.info.run_id,
        "strategy": strategy,
        study.SEARCH_TAG: "shared" if storage else "local",
    }
    if strategy == "grid":
        batch = study.GridSearch(choices)
    else:
        batch = study.StudySearch.create(settings, storage, retry_seconds)
        tags[study.STUDY_TAG] = batch.study.study_name
        if storage:
            tags[study.STORAGE_TAG] = study.redacted(storage)
    mlflow.set_tags(tags)
    where = f", shared through {study.redacted(storage)}" if storage else ""
    print(
        f"[train_batch] {batch.total} trials ({strategy}), {workers} at a time here, "
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
        workers=workers,
        total=batch.total,
        searched=settings.searched,
    )
    try:
        study.run_workers(lambda: batch.work(runner), workers)
    finally:
        runner.close()
    return write_summary(parent.info.run_id, parent.info.experiment_id, settings.searched)


def join_search(join: str, workers: int = 1, retry_seconds: int = 120, storage: str = "") -> str:
    """Run trials of the search whose parent run is `join`, until it is done; sum it up.

    The search's study is in `storage` (the database URL it was started with); everything
    else, the hyperparameters and the number of trials included, comes from the study.
    """
    import mlflow

    from mnist_pipeline.search import study
    from mnist_pipeline.search.trials import HOST, TrialRunner, write_summary

    shared = study.StudySearch.join(join, storage, retry_seconds)
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
    try:
        study.run_workers(lambda: shared.work(runner), workers)
    finally:
        runner.close()
    mlflow.log_metric("trials_run_here", len(runner.results))
    # Every worker writes the summary as it ends, and again if a trial ended meanwhile:
    # the last one to end leaves the whole search's.
    summary = write_summary(settings.parent_run_id, settings.experiment_id, settings.searched)
    return f"ran {len(runner.results)} trials of search {settings.parent_run_id}; {summary}"


def _sampler_seed(choices) -> int:
    """The search itself is seeded by the (first) training seed, so a batch can be repeated."""
    seed = next(choice for choice in choices if choice.name == "seed")
    return int(seed.values[0]) if seed.values else int(seed.low)


if __name__ == "__main__":
    sys.exit(main())
