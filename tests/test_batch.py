"""train_batch: trials as nested runs in parallel trial processes, failed ones too.

A TPE search over ranges, and the best trial packaged as champion and served, are
tested by the README's batch block (tests/test_readme.py), which does both.
"""

from __future__ import annotations

from pathlib import Path

import pytest


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


def test_every_trial_is_a_nested_child_with_its_metrics(batch):
    children = batch["children"]
    assert len(children) == 4
    finished = [run for run in children if run.info.status == "FINISHED"]
    assert sorted(run.data.params["nr_conv_1"] for run in finished) == ["4", "8"]
    client = batch["store"].client()
    for run in finished:
        assert run.data.tags["stage"] == "train"
        assert {"accuracy", "loss", "train_loss", "val_accuracy"} <= set(run.data.metrics)
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3


def test_a_failed_trial_ends_failed_and_the_batch_carries_on(batch):
    failed = [run for run in batch["children"] if run.info.status == "FAILED"]
    assert len(failed) == 2
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
        ({"dropout": "0.5"}, "unknown hyperparameter 'dropout'; choose from batch_size"),
        ({"strategy": "grid", "lr": "0.001:0.01"}, "strategy grid cannot search ranges (lr)"),
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


def test_package_best_without_train_runs_is_one_line(pipeline):
    store = pipeline["store"]
    result = store.call("package_model.py", "--train_run", "best", experiment="empty")
    assert result.returncode != 0
    assert "train_run=best: no finished train run with an accuracy in experiment" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_summary_written_by_two_workers_at_once_is_written_once_more(store):
    """The worker that loses the race for a new tag writes it again; other errors are raised."""
    from mlflow.exceptions import MlflowException

    from mnist_pipeline.search.trials import despite_a_concurrent_writer

    client = store.client()
    run_id = client.create_run("0").info.run_id
    # What the PostgreSQL of a team server answered the worker that came second.
    lost = MlflowException(
        "BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique "
        'constraint "tag_pk"'
    )
    calls = []

    def set_tag(*args):
        calls.append(args)
        if len(calls) == 1:
            raise lost
        client.set_tag(*args)

    despite_a_concurrent_writer(set_tag, run_id, "best_run_id", "a" * 32)
    assert len(calls) == 2
    assert client.get_run(run_id).data.tags["best_run_id"] == "a" * 32

    calls.clear()

    def set_tag_of_a_missing_run(*args):
        calls.append(args)
        client.set_tag(*args)

    with pytest.raises(MlflowException, match="not found"):
        despite_a_concurrent_writer(set_tag_of_a_missing_run, "0" * 32, "best_run_id", "a" * 32)
    assert len(calls) == 1  # not a race: said at once


def trial_run(client, parent: str, number: int, nr_conv_1: int) -> str:
    """A RUNNING child of `parent` in the Default experiment, as a batch makes for a trial."""
    child = client.create_run("0", tags={"mlflow.parentRunId": parent, "trial": str(number)})
    client.log_param(child.info.run_id, "nr_conv_1", nr_conv_1)
    return child.info.run_id


def test_a_summary_written_twice_keeps_one_row_per_trial(store):
    """Every worker of a shared search writes the summary; trials.json is replaced, not appended."""
    import mlflow

    from mnist_pipeline.search.trials import write_summary

    client = store.client()
    parent = client.create_run("0").info.run_id
    for number, (nr_conv_1, accuracy) in enumerate([(4, 0.91), (8, 0.93)], start=1):
        child = trial_run(client, parent, number, nr_conv_1)
        client.log_metric(child, "accuracy", accuracy)
        client.set_terminated(child)
    for _ in range(2):
        summary = write_summary(parent, "0", ["nr_conv_1"])
    assert "2 of 2 trials finished" in summary
    table = mlflow.load_table("trials.json", run_ids=[parent])
    assert sorted(table["nr_conv_1"]) == [4, 8]
    run = client.get_run(parent)
    assert run.data.tags["mlflow.loggedArtifacts"] == '[{"path": "trials.json", "type": "table"}]'
    assert run.data.tags["best_run_id"] == table.loc[table["accuracy"].idxmax(), "run_id"]


def test_a_trial_that_ends_while_the_summary_is_written_is_in_it(store, monkeypatch):
    """A worker reads the trials, another machine's trial ends, and then the write lands.

    The summary is read again once written, and written again: it ends with the trial.
    """
    import mlflow

    from mnist_pipeline import plots
    from mnist_pipeline.search.choices import trials

    client = store.client()
    parent = client.create_run("0").info.run_id
    children = [
        trial_run(client, parent, number, nr_conv_1)
        for number, nr_conv_1 in enumerate([4, 8], start=1)
    ]
    client.log_metric(children[0], "accuracy", 0.91)
    client.set_terminated(children[0])
    drawn = []
    draw = plots.metric_against_params

    def the_other_trial_ends_meanwhile(*args, **kwargs):
        if not drawn:  # the first write, from the trials as first read
            client.log_metric(children[1], "accuracy", 0.95)
            client.set_terminated(children[1])
        drawn.append(len(args[0]))
        return draw(*args, **kwargs)

    monkeypatch.setattr(plots, "metric_against_params", the_other_trial_ends_meanwhile)
    summary = trials.write_summary(parent, "0", ["nr_conv_1"])

    assert drawn == [1, 2]  # written from one finished trial, then again from both
    assert "2 of 2 trials finished" in summary
    table = mlflow.load_table("trials.json", run_ids=[parent])
    assert list(table["status"]) == ["FINISHED", "FINISHED"]
    run = client.get_run(parent)
    assert run.data.tags["best_run_id"] == children[1]
    assert run.data.metrics["best_accuracy"] == 0.95
    assert run.data.metrics["trials_finished"] == 2
    csv = Path(client.download_artifacts(parent, "trials.csv", str(store.root))).read_text()
    assert "RUNNING" not in csv and csv.count("FINISHED") == 2


def test_a_summary_of_a_run_without_trials_is_one_line(store):
    from mnist_pipeline.errors import UserError
    from mnist_pipeline.search.trials import write_summary

    parent = store.client().create_run("0").info.run_id
    with pytest.raises(UserError, match=f"run {parent} has no trial runs to sum up"):
        write_summary(parent, "0", ["nr_conv_1"])
