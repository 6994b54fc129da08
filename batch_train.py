"""train_batch: many trainings as nested runs of one parent, the best one named.

Each of train's hyperparameters takes a value (`16`), a list (`8,16,24`, `classic,deeper`)
or a range (`8:64`). Lists make a grid; ranges are searched by Optuna (`--strategy random`
or `tpe`, `--trials` of them). Every trial is a train run nested under this run,
`--workers` at a time. The parent logs `best_accuracy`, the tag `best_run_id`, the trials
table and accuracy against each searched value. `--pruner median` or `hyperband` stops
trials that fall behind. With OPTUNA_STORAGE set to a database (a team's PostgreSQL),
workers on other machines join the search with `--join <this run's ID>`.

$ mlflow run . -e train_batch --env-manager local -P nr_conv_1=8,16,24,32 -P epochs=1 -P workers=2
$ mlflow run . -e train_batch --env-manager local -P join=<run id>   # another machine
"""

from __future__ import annotations

import os
import sys

from mnist_pipeline import cli
from mnist_pipeline.errors import UserError
from mnist_pipeline.training.hyperparameters import HYPERPARAMETERS, NAMES


def build_parser() -> cli.Parser:
    import train

    parser = cli.Parser(prog="batch_train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--preprocess_run", help="a preprocess run ID (default: the newest)")
    parser.add_argument("--dataset", help="mnist or fashion, to find the newest preprocess run")
    for hyperparameter in HYPERPARAMETERS:
        forms = "a value or a list a,b" if hyperparameter.choices else "a value, a,b or lo:hi"
        parser.add_argument(f"--{hyperparameter.name}", help=f"{hyperparameter.help}: {forms}")
    for name, kind, text in (
        ("strategy", str, "grid, random or tpe (auto: grid unless there is a range)"),
        ("trials", cli.positive_int, "trials for random and tpe"),
        ("workers", cli.positive_int, "trials run at the same time here"),
        ("pruner", str, "none, median or hyperband: stop trials that lag behind"),
        ("join", str, "the run ID of a search to work on (its study: OPTUNA_STORAGE)"),
        ("heartbeat_seconds", cli.positive_int, "how often a running trial says it is alive"),
        ("grace_seconds", cli.positive_int, "a trial silent this long is run again"),
    ):
        parser.add_argument(f"--{name}", type=kind, help=text)
    # train's defaults, and a grid over the first convolution's filters. The study storage
    # is never a parameter, which `mlflow run` would log with its password.
    trained = {name: cli.param_text(value) for name, value in cli.defaults_of(train.train).items()}
    settings = cli.defaults_of(train_batch)
    del settings["storage"]
    parser.set_defaults(**{name: trained[name] for name in NAMES} | {"nr_conv_1": "8,16,24,32"})
    parser.set_defaults(**settings, join="")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    from mnist_pipeline.search import space, study
    from mnist_pipeline.tracking import runs

    hyperparameters = {name: getattr(args, name) for name in NAMES}
    storage = os.environ.get(study.STORAGE_ENV, "")
    try:
        if unknown:
            name = unknown[0].lstrip("-").split("=")[0]
            raise UserError(f"unknown hyperparameter {name!r}; choose from {', '.join(NAMES)}")
        # Everything a user can get wrong is checked before this process's run exists.
        runs.check_tracking_server()
        if args.join:
            study.join(args.join, storage)
            with cli.stage_run("train_batch_worker", parser, args, __file__) as run:
                summary = join_search(args.join, args.workers, storage)
        else:
            space.check(hyperparameters, args.strategy, args.pruner, args.trials)
            if storage:
                study.open_storage(storage)
            with cli.stage_run("train_batch", parser, args, __file__) as run:
                arguments = cli.arguments_for(train_batch, args)
                summary = train_batch(hyperparameters, **arguments, storage=storage)
    except cli.USER_ERRORS as error:
        return cli.fail(parser.prog, error)
    print(f"train_batch run {run.info.run_id}: {summary}")
    return 0


def train_batch(
    hyperparameters: dict[str, str],
    preprocess_run: str = "",
    dataset: str = "mnist",
    strategy: str = "auto",
    trials: int = 8,
    workers: int = 1,
    pruner: str = "none",
    heartbeat_seconds: int = 20,
    grace_seconds: int = 60,
    storage: str = "",
) -> str:
    """Run a search of train runs as children of the active run; return its summary line.

    `hyperparameters` gives each of train's a value ("16"), a list ("8,16,24") or a range
    ("8:64"). The preprocess run is `preprocess_run`, or the newest of `dataset`. `workers`
    trials run at a time, in a study that other machines can join when `storage` is a
    database URL.
    """
    import mlflow

    from mnist_pipeline.search import space, study
    from mnist_pipeline.tracking import runs

    strategy, trials = space.check(hyperparameters, strategy, pruner, trials)
    if preprocess_run:
        preprocess = runs.get_run(preprocess_run, "preprocess")
    else:
        preprocess = runs.latest_run("preprocess", dataset)
    parent = mlflow.active_run() or mlflow.start_run()
    runs_used = (parent.info.run_id, parent.info.experiment_id, preprocess.info.run_id)
    settings = (strategy, trials, pruner, heartbeat_seconds, grace_seconds)
    search = study.Search(*runs_used, hyperparameters, *settings)
    found = study.create(search, storage)
    mlflow.set_tags(
        {
            "dataset": preprocess.data.tags.get("dataset", dataset),
            "preprocess_run": preprocess.info.run_id,
            "strategy": strategy,
            "search": "shared" if storage else "local",
            "study_name": found.study_name,
            "study_storage": study.redacted(storage),
        }
    )
    print(f"[train_batch] {trials} trials ({strategy}), {workers} at a time", file=sys.stderr)
    if storage:
        print(
            f"[train_batch] shared through {study.redacted(storage)}; other machines join with: "
            f"mlflow run . -e train_batch --env-manager local -P join={parent.info.run_id}",
            file=sys.stderr,
        )
    study.optimize(found, search, workers, shared=bool(storage))
    return study.write_summary(found, search)


def join_search(join: str, workers: int = 1, storage: str = "") -> str:
    """Run trials of the search whose parent run is `join` (its study is in `storage`)
    until it has its trials; the process that started it writes the summary."""
    import mlflow

    from mnist_pipeline.search import study

    found, search = study.join(join, storage)
    mlflow.set_tags({"joined": join, "host": study.HOST, "worker": study.WORKER})
    print(f"[train_batch] joining search {join}: {workers} at a time here", file=sys.stderr)
    ran = study.optimize(found, search, workers, shared=True)
    mlflow.log_metric("trials_run_here", ran)
    return f"ran {ran} trials of search {join}; its own run writes the summary"


if __name__ == "__main__":
    sys.exit(main())
