"""train_batch: many trainings as nested runs of one parent, the best one named.

Each of train's hyperparameters takes a value (`16`), a list (`8,16,24`, `classic,deeper`)
or a range (`8:64`). Lists make a grid; ranges are searched by Optuna (`--strategy random`
or `tpe`, `--trials` of them). Every trial is a train run nested under this run,
`--workers` at a time. The parent logs `best_accuracy`, the tag `best_run_id`, the trials
table and accuracy against each searched value. `--pruner median` or `hyperband` stops
trials that fall behind. With OPTUNA_STORAGE set to a database (a team's PostgreSQL),
workers on other machines join the search with `--join <this run's ID>`.

$ mlflow run . -e train_batch --env-manager local -P nr_conv_1=8,16,24,32 -P epochs=1 -P workers=2
$ mlflow run . -e train_batch --env-manager local --experiment-name <experiment> -P join=<run id>
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys

from mnist_pipeline import cli
from mnist_pipeline.errors import UserError
from mnist_pipeline.training.hyperparameters import HYPERPARAMETERS, NAMES


def build_parser() -> cli.Parser:
    import train
    from mnist_pipeline.search import space

    parser = cli.Parser(prog="batch_train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--preprocess_run", help="a preprocess run ID (default: the newest)")
    parser.add_argument("--dataset", help="mnist or fashion, to find the newest preprocess run")
    # Each of train's hyperparameters, as text; train's default, and a grid over nr_conv_1.
    trained = cli.defaults_of(train.train) | {"nr_conv_1": "8,16,24,32"}
    for hyperparameter in HYPERPARAMETERS:
        forms = "a value or a list a,b" if hyperparameter.choices else "a value, a,b or lo:hi"
        parser.add_argument(
            f"--{hyperparameter.name}",
            default=cli.param_text(trained[hyperparameter.name]),
            help=f"{hyperparameter.help}: {forms}",
        )
    parser.add_argument("--strategy", choices=space.STRATEGIES, help="auto: grid unless a range")
    parser.add_argument("--trials", type=cli.positive_int, help="trials for random and tpe")
    parser.add_argument("--workers", type=cli.positive_int, help="trials at a time here")
    parser.add_argument("--pruner", choices=space.PRUNERS, help="stop trials that lag behind")
    parser.add_argument("--join", default="", help="the run ID of a search to work on")
    parser.add_argument("--heartbeat_seconds", type=cli.positive_int, help="heartbeat interval")
    parser.add_argument(
        "--grace_seconds", type=cli.positive_int, help="silent this long: run again"
    )
    parser.take_defaults_from(train_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    import mlflow

    from mnist_pipeline.search import space, study
    from mnist_pipeline.tracking import runs

    hyperparameters = {name: getattr(args, name) for name in NAMES}
    try:
        if unknown:
            name = unknown[0].lstrip("-").split("=")[0]
            raise UserError(f"unknown hyperparameter {name!r}; choose from {', '.join(NAMES)}")
        # Everything a user can get wrong is checked before this process's run exists.
        runs.check_tracking_server()
        if args.join:
            found, search = study.join(args.join)
            if not os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` made the run already
                mlflow.set_experiment(experiment_id=search.experiment_id)
            with cli.stage_run("train_batch_worker", parser, args, __file__) as run:
                ran = study.optimize(found, search, args.workers)
            summary = f"ran {ran} trials of search {args.join}; its own run writes the summary"
        else:
            space.check(hyperparameters, args.strategy, args.trials)
            study.open_storage(args.heartbeat_seconds, args.grace_seconds)
            with cli.stage_run("train_batch", parser, args, __file__) as run:
                summary = train_batch(hyperparameters, **cli.arguments_for(train_batch, args))
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
) -> str:
    """Run the search that the module's docstring describes, in the active run (or a new
    one), which the trials are children of; return its summary line."""
    import mlflow

    from mnist_pipeline.search import space, study
    from mnist_pipeline.tracking import runs

    strategy, trials = space.check(hyperparameters, strategy, trials)
    if preprocess_run:
        preprocess = runs.get_run(preprocess_run, "preprocess")
    else:
        preprocess = runs.latest_run("preprocess", dataset)
    storage = study.storage_url()
    parent = mlflow.active_run() or mlflow.start_run()
    search = study.Search(
        parent_run_id=parent.info.run_id,
        experiment_id=parent.info.experiment_id,
        preprocess_run=preprocess.info.run_id,
        dataset=preprocess.data.tags.get("dataset", dataset),
        hyperparameters=hyperparameters,
        strategy=strategy,
        trials=trials,
        pruner=pruner,
        heartbeat_seconds=heartbeat_seconds,
        grace_seconds=grace_seconds,
    )
    found = study.open_study(search)
    mlflow.log_dict(dataclasses.asdict(search), "search.json")
    mlflow.set_tags(
        {
            "dataset": search.dataset,
            "preprocess_run": preprocess.info.run_id,
            "strategy": strategy,
            "search": "shared" if storage else "local",
            "study_name": found.study_name,
            "study_storage": runs.redacted(storage),
        }
    )
    if storage:
        experiment = shlex.quote(mlflow.get_experiment(parent.info.experiment_id).name)
        join = f"mlflow run . -e train_batch --env-manager local --experiment-name {experiment}"
        join += f" -P join={parent.info.run_id}"
        print(f"[train_batch] other machines join with: {join}", file=sys.stderr)
    study.optimize(found, search, workers)
    return study.write_summary(found)


if __name__ == "__main__":
    sys.exit(main())
