"""train_batch: trials as nested runs in a pool of trial processes, failed ones too.

A TPE search over ranges, and the best trial packaged as champion and served, are
tested by the README's batch block (tests/test_readme.py), which does both.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import another_run_logs_each_dataset_first, finished_run


@pytest.fixture(scope="module")
def batch(pipeline):
    """A grid of four trials, two at a time, one value of which makes two trials fail."""
    store = pipeline["store"]
    result = store.mlflow_run(
        "train_batch",
        experiment="conv1",
        preprocess_run=pipeline["preprocess_run"],
        nr_conv_1="4,8",
        batch_size="32,0",
        epochs="3",
        lr="0.004",
        workers="2",
    )
    # By experiment: other tests run batches in the same store at the same time.
    parent = store.last_run("train_batch", experiment="conv1")
    return {
        "store": store,
        "parent": parent,
        "children": store.children_of(parent.info.run_id),
        "output": result,
    }


def outcomes(children) -> list:
    """What each trial was and how it ended, for an assertion's message."""
    return [
        (run.data.tags.get("mlflow.runName"), run.info.status, run.data.tags.get("error"))
        for run in children
    ]


def test_every_trial_is_a_nested_child_with_its_metrics(batch):
    children = batch["children"]
    assert len(children) == 4, outcomes(children)
    finished = [run for run in children if run.info.status == "FINISHED"]
    nr_conv_1 = sorted(run.data.params["nr_conv_1"] for run in finished)
    assert nr_conv_1 == ["4", "8"], (outcomes(children), batch["output"].stderr[-3000:])
    client = batch["store"].client()
    parent_tags = batch["parent"].data.tags
    for run in children:  # tagged as the parent is, not user "unknown" as create_run leaves it
        assert run.info.user_id == run.data.tags["mlflow.user"] == parent_tags["mlflow.user"]
        assert run.data.tags.get("mlflow.source.git.commit") == parent_tags.get(
            "mlflow.source.git.commit"
        )
    for run in finished:
        assert run.data.tags["stage"] == "train"
        assert {"accuracy", "loss", "train_loss", "val_accuracy"} <= set(run.data.metrics)
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3
    # Each trial says when it starts, with its run, as well as how it ended.
    for run in children:
        started = f"{run.info.run_name} on {run.data.tags['host']}: started, run {run.info.run_id}"
        assert started in batch["output"].stderr


def test_a_failed_trial_ends_failed_and_the_batch_carries_on(batch):
    failed = [run for run in batch["children"] if run.info.status == "FAILED"]
    assert len(failed) == 2, outcomes(batch["children"])
    assert batch["parent"].info.status == "FINISHED"
    assert batch["parent"].data.metrics["trials_failed"] == 2
    assert "2 FAILED" in batch["output"].stdout


def test_parent_names_the_best_trial_and_logs_a_summary(batch):
    parent, children = batch["parent"], batch["children"]
    finished = [run for run in children if run.info.status == "FINISHED"]
    best_accuracy = max(run.data.metrics["accuracy"] for run in finished)
    named = next(run for run in finished if run.info.run_id == parent.data.tags["best_run_id"])
    assert named.data.metrics["accuracy"] == best_accuracy  # ties may name either
    assert parent.data.metrics["best_accuracy"] == best_accuracy
    artifacts = {item.path for item in batch["store"].client().list_artifacts(parent.info.run_id)}
    assert {"trials.json", "trials.csv", "accuracy_by_hyperparameter.png"} <= artifacts


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"nr_conv_1": ","}, "nr_conv_1: empty value in list ','"),
        ({"lr": "0.1:0.01"}, "lr: range '0.1:0.01' needs low < high"),
        ({"lr": "1:2:3"}, "lr: malformed range '1:2:3', expected low:high"),
        ({"workers": "0"}, "argument --workers: expected a number of at least 1, got 0"),
        ({"dropout": "0.5"}, "unknown hyperparameter 'dropout'; choose from nr_conv_1, lr"),
        ({"strategy": "grid", "lr": "0.001:0.01"}, "strategy grid cannot search ranges (lr)"),
        ({"architecture": "classic:deeper"}, "architecture: 'classic:deeper' is a range"),
        ({"architecture": "classic,wide"}, "architecture: expected deeper or classic, got"),
        ({"augment": "true,maybe"}, "augment: expected true or false, got 'true,maybe'"),
        # a range's ends within train's limits, before any trial starts (lr's is searched on
        # a log scale); a listed value that train refuses is a failed trial (below)
        ({"lr": "0:0.01"}, "lr: expected a number greater than 0, got 0.0"),
        ({"nr_conv_1": "0:8"}, "nr_conv_1: expected a number of at least 1, got 0"),
        ({"synthetic": "0.5:2"}, "synthetic: expected a number from 0 to below 1, got 2.0"),
        # joining a team's search with this machine's own store: the exports forgotten
        ({"join": "0" * 32}, "does not exist in sqlite:"),
        ({"join": "0" * 32}, "(set MLFLOW_TRACKING_URI to the team's server)"),
    ],
)
def test_batch_bad_input_is_one_line(pipeline, params, message):
    """The script refuses these before it starts a trial (what `mlflow run` passes it)."""
    arguments = ["--preprocess_run", pipeline["preprocess_run"]]
    for name, value in params.items():
        arguments += [f"--{name}", value]
    result = pipeline["store"].call("batch_train.py", *arguments, experiment="bad")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def finished_train_run(client, experiment_id: str, accuracy: float | None = None, **tags) -> str:
    """A FINISHED train run made by hand (of MNIST unless `dataset` is given); its ID."""
    tags = {"stage": "train", "dataset": "mnist", **tags}
    metrics = {} if accuracy is None else {"accuracy": accuracy}
    return finished_run(client, experiment_id, tags, metrics)


def test_best_is_the_best_train_run_of_the_dataset_asked_for(store):
    """A store of both datasets: MNIST's runs always score higher than Fashion's."""
    from mnist_pipeline.errors import UserError
    from mnist_pipeline.tracking.runs import best_train_run

    client = store.client()
    mixed = client.create_experiment("mixed")
    fashion = finished_train_run(client, mixed, 0.88, dataset="fashion")
    mnist = finished_train_run(client, mixed, 0.99, dataset="mnist")
    assert best_train_run("mixed", dataset="fashion").info.run_id == fashion
    assert best_train_run("mixed", dataset="mnist").info.run_id == mnist
    # A batch of Fashion packaged with MLproject's default dataset: one line that says so.
    finished_train_run(client, client.create_experiment("fbatch"), 0.9, dataset="fashion")
    with pytest.raises(UserError, match="where they are fashion: add -P dataset=fashion"):
        best_train_run("fbatch", dataset="mnist")


def test_a_pruned_trial_is_never_taken_for_a_finished_training(store):
    """A trial that its search pruned ends FINISHED, early and without a model: package's
    newest train run, main's reuse and train_run=best all pass over it."""
    from mnist_pipeline.errors import UserError
    from mnist_pipeline.tracking.runs import best_train_run, latest_run

    client = store.client()
    pruned = {"pruned": "true", "pruned_at_epoch": "1"}
    search = client.create_experiment("search")
    trained = finished_train_run(client, search, 0.98)
    finished_train_run(client, search, **pruned)  # the newest
    assert latest_run("train", "mnist").info.run_id == trained
    finished_train_run(client, client.create_experiment("all pruned"), **pruned)
    with pytest.raises(UserError, match="no finished train run with an accuracy"):
        best_train_run("all pruned")


def test_package_best_without_train_runs_is_one_line(pipeline):
    store = pipeline["store"]
    result = store.call("package_model.py", "--train_run", "best", experiment="empty")
    assert result.returncode != 0
    assert "train_run=best: no finished train run with an accuracy in experiment 'empty'" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_shared_search_summary_names_the_best_trial_with_one_row_per_trial(store):
    """Written once, by the run that started the search, from the trials of every machine."""
    import mlflow
    import optuna

    from mnist_pipeline.search.study import write_summary

    client = store.client()
    study = optuna.create_study(direction="maximize")
    filters = optuna.distributions.CategoricalDistribution([4, 8, 16])
    for number, (nr_conv_1, accuracy, host) in enumerate(
        [(4, 0.91, "here"), (8, 0.95, "there"), (16, None, "there")], start=1
    ):
        attributes = {"trial": number, "mlflow_run_id": f"{number:032d}", "host": host}
        failed = {"state": optuna.trial.TrialState.FAIL} if accuracy is None else {}
        study.add_trial(
            optuna.trial.create_trial(
                params={"nr_conv_1": nr_conv_1},
                distributions={"nr_conv_1": filters},
                value=accuracy,
                user_attrs=attributes
                | ({"error": "train.py: error: out of memory"} if failed else {}),
                **failed,
            )
        )
    with mlflow.start_run(experiment_id="0") as parent:
        summary = write_summary(study)
    assert "2 of 3 trials finished" in summary and "on 2 machines" in summary
    assert "1 FAILED" in summary
    table = mlflow.load_table("trials.json", run_ids=[parent.info.run_id])
    assert list(table["trial"]) == [1, 2, 3] and list(table["nr_conv_1"]) == [4, 8, 16]
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "FAIL"]
    assert table.loc[2, "error"] == "train.py: error: out of memory"
    run = client.get_run(parent.info.run_id)
    assert run.data.tags["best_run_id"] == f"{2:032d}"
    assert run.data.metrics["best_accuracy"] == 0.95
    assert run.data.metrics["trials_finished"] == 2 and run.data.metrics["trials_failed"] == 1
    csv = Path(client.download_artifacts(parent.info.run_id, "trials.csv", str(store.root)))
    assert csv.read_text().count("COMPLETE") == 2
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert "accuracy_by_hyperparameter.png" in artifacts


def test_a_summary_of_a_search_without_trials_is_one_line(store):
    import mlflow
    import optuna

    from mnist_pipeline.errors import UserError
    from mnist_pipeline.search.study import write_summary

    store.client()
    with mlflow.start_run(experiment_id="0") as parent:
        parent_id = parent.info.run_id
        with pytest.raises(UserError, match=f"search {parent_id} has no trials to sum up"):
            write_summary(optuna.create_study())


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_heartbeats_go_on_after_the_study_database_was_away(tmp_path, capsys):
    """Optuna's heartbeat thread ends at the first beat that raises: a trial that trained on
    through a restart of the database was then taken for dead, and run a second time."""
    import sqlite3

    import optuna

    from mnist_pipeline.search.study import HeartbeatStorage

    database = tmp_path / "optuna.db"
    storage = HeartbeatStorage(f"sqlite:///{database}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    trial = storage.get_trial_id_from_study_id_trial_number(study_id, study.ask().number)
    with sqlite3.connect(database) as other:  # the table away, as a database that restarts
        other.execute("ALTER TABLE trial_heartbeats RENAME TO away")
    storage.record_heartbeat(trial)
    assert "a heartbeat failed, the next tries again: " in capsys.readouterr().err
    with sqlite3.connect(database) as other:
        other.execute("ALTER TABLE away RENAME TO trial_heartbeats")
        before = other.execute("SELECT heartbeat FROM trial_heartbeats").fetchall()
    time.sleep(1.1)
    storage.record_heartbeat(trial)
    with sqlite3.connect(database) as other:
        assert other.execute("SELECT heartbeat FROM trial_heartbeats").fetchall() > before


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_the_search_waits_for_other_machines_through_a_restart_of_the_database(tmp_path, capsys):
    """The machine that started a search and has finished its share waits for the others:
    a restart of the database meanwhile ended it FAILED, with no summary of the search."""
    import sqlite3
    import threading

    import optuna
    from optuna.trial import TrialState

    from mnist_pipeline.search.study import HeartbeatStorage, wait_for_the_others

    database = tmp_path / "optuna.db"
    storage = HeartbeatStorage(f"sqlite:///{database}", heartbeat_interval=1, grace_period=60)
    study = optuna.create_study(storage=storage)
    elsewhere = study.ask()  # a trial that another machine runs

    def restart_then_finish() -> None:
        with sqlite3.connect(database) as other:
            other.execute("ALTER TABLE trials RENAME TO away")
        time.sleep(2.5)
        with sqlite3.connect(database) as other:
            other.execute("ALTER TABLE away RENAME TO trials")
        study.tell(elsewhere, 0.9)

    restart = threading.Thread(target=restart_then_finish)
    restart.start()
    wait_for_the_others(study, 1, run_retry=lambda: pytest.fail("no trial was queued again"))
    restart.join()
    assert "waiting for the study's database: " in capsys.readouterr().err
    assert [trial.state for trial in study.get_trials()] == [TrialState.COMPLETE]


def test_lists_and_ranges_become_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from mnist_pipeline.search import space
    from mnist_pipeline.training.hyperparameters import NAMES

    assert space.parse("nr_conv_1", "16") == 16
    assert space.parse("nr_conv_1", "8,16") == CategoricalDistribution([8, 16])
    assert space.parse("nr_conv_1", "8:64") == IntDistribution(8, 64)
    assert space.parse("lr", "0.001:0.01") == FloatDistribution(0.001, 0.01, log=True)
    assert space.parse("augment", "true,false") == CategoricalDistribution([True, False])
    assert space.parse("architecture", "classic") == "classic"
    texts = dict.fromkeys(NAMES, "") | {"nr_conv_1": "4,8,16", "augment": "true,false"}
    assert space.check(texts, "auto", 8) == ("grid", 6)
    assert space.check(texts | {"lr": "0.001:0.01"}, "auto", 8) == ("tpe", 8)


def test_a_local_search_prunes_hopeless_trials(pipeline):
    """Trials that fall behind the median stop early, FINISHED without a test accuracy, and
    are left out of the best. Without OPTUNA_STORAGE, the trial processes report to the
    study's journal file; over PostgreSQL, every team search reports the same way
    (tests/test_team.py)."""
    import pandas as pd

    from mnist_pipeline.tracking.runs import best_train_run

    store = pipeline["store"]
    result = store.call(
        "batch_train.py",
        *("--preprocess_run", pipeline["preprocess_run"], "--strategy", "random"),
        *("--trials", "6", "--pruner", "median", "--lr", "0.0000001,0.004"),
        *("--nr_conv_1", "4", "--epochs", "4", "--batch_size", "32"),
        experiment="pruned-here",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent = store.last_run("train_batch", experiment="pruned-here")
    children = store.children_of(parent.info.run_id)
    pruned = [run for run in children if run.data.tags.get("pruned") == "true"]
    assert pruned and len(children) == 6, [run.data.params for run in children]
    client = store.client()
    for run in pruned:  # stopped before its last epoch, without a test accuracy
        assert run.info.status == "FINISHED"
        assert "accuracy" not in run.data.metrics
        epochs = int(run.data.tags["pruned_at_epoch"])
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == epochs < 4
    assert parent.data.metrics["trials_pruned"] == len(pruned)
    pruned_runs = {run.info.run_id for run in pruned}
    assert parent.data.tags["best_run_id"] not in pruned_runs
    assert best_train_run(parent_run=parent.info.run_id).info.run_id not in pruned_runs
    # Optuna gives a pruned trial its last validation accuracy: the table leaves it out.
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "trials.csv"))
    assert table.loc[table["state"] == "PRUNED", "accuracy"].isna().all()
    assert table.loc[table["state"] == "COMPLETE", "accuracy"].notna().all()


def test_a_grid_runs_over_a_shared_study(pipeline, tmp_path):
    """With OPTUNA_STORAGE, GridSampler hands the grid out through the database."""
    import optuna
    from helpers import Store

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    store = Store(pipeline["store"].root, {**pipeline["store"].env, "OPTUNA_STORAGE": storage})
    result = store.call(
        "batch_train.py",
        *("--preprocess_run", pipeline["preprocess_run"], "--nr_conv_1", "4"),
        *("--architecture", "classic,deeper", "--epochs", "1", "--batch_size", "64"),
        experiment="shared-grid",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent = store.last_run("train_batch", experiment="shared-grid")
    assert parent.data.tags["search"] == "shared"
    children = store.children_of(parent.info.run_id)
    grid = {(run.data.params["nr_conv_1"], run.data.params["architecture"]) for run in children}
    assert len(children) == len(grid) == 2
    (study,) = optuna.get_all_study_summaries(storage)
    assert study.study_name == f"train_batch-{parent.info.run_id}" and study.n_trials == 2


def test_a_retry_of_a_trial_that_finished_after_all_takes_its_run(pipeline):
    """A trial taken for dead (its heartbeats lost while the database was away) that ran on to
    its end: its retry answers with that run rather than train again, or fail to resume it."""
    import mlflow
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from mnist_pipeline.search import study
    from mnist_pipeline.training.hyperparameters import NAMES

    client = pipeline["store"].client()
    finished = client.get_run(pipeline["train_run"])
    experiment = client.create_experiment("retry-of-a-finished-trial")
    with mlflow.start_run(experiment_id=experiment) as parent:
        search = study.Search(
            parent_run_id=parent.info.run_id,
            experiment_id=experiment,
            preprocess_run=pipeline["preprocess_run"],
            dataset="mnist",
            hyperparameters=dict.fromkeys(NAMES, ""),
            strategy="random",
            trials=1,
            pruner="none",
            heartbeat_seconds=20,
            grace_seconds=60,
        )
        found = study.open_study(search)
        lost = found.ask()
        lost.set_user_attr("mlflow_run_id", finished.info.run_id)
        found.tell(lost, state=TrialState.FAIL)
        RetryHeartbeatStaleTrialCallback(max_retry=2)(found, found.get_trials()[0])
        assert study.optimize(found, search, workers=1) == 1
    retry = found.get_trials()[1]
    assert retry.state == TrialState.COMPLETE and retry.value == finished.data.metrics["accuracy"]
    assert retry.user_attrs["mlflow_run_id"] == finished.info.run_id
    # No run was made for it: it trained nothing.
    assert [run.info.run_id for run in client.search_runs([experiment])] == [parent.info.run_id]


def test_trials_that_start_together_log_the_same_dataset_without_failing(store):
    """Every trial of a search logs the same training data as its input at about the same
    moment; the store refused all inserts of it but the first (UNIQUE constraint failed),
    which failed a trial of the batch chapter's block now and then."""
    import mlflow
    import numpy as np

    from mnist_pipeline.tracking.runs import log_input

    client = store.client()
    dataset = mlflow.data.from_numpy(np.full((3, 2), 7), name="mnist-train")
    with another_run_logs_each_dataset_first(store) as by_the_other, mlflow.start_run() as run:
        log_input(dataset, context="training")
    assert by_the_other == [dataset.digest]
    (logged,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.digest == dataset.digest
