"""Checkpoints and resuming: a logged model per epoch, and what is (not) resumed.

A train run logs, after each epoch, the CNN as a logged model named 'checkpoint' with the
epoch's validation metrics linked to it, and what resuming needs as run artifacts
(training/checkpoints.py). `train.py --resume <run id>` continues a stopped run from its
last checkpoint: tests/test_readme.py::test_checkpoint_block_as_written stops a training
with SIGTERM, resumes it as the guide does, and compares the weights with an uninterrupted
training. The tests here need no training of their own.
"""

from __future__ import annotations

from conftest import REPO, TINY_TRAINING


def test_one_logged_model_per_epoch_with_its_validation_metrics(pipeline):
    import mlflow

    store, train_run = pipeline["store"], pipeline["train_run"]
    store.client()
    run = mlflow.get_run(train_run)
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{train_run}' AND name = 'checkpoint'",
        output_format="list",
    )
    epochs = int(TINY_TRAINING["epochs"])
    assert len(found) == epochs
    history = {
        m.step: m.value for m in mlflow.MlflowClient().get_metric_history(train_run, "val_accuracy")
    }
    steps = []
    for model in found:
        linked = {m.key: m for m in model.metrics if m.key.startswith("val_")}
        assert set(linked) == {"val_loss", "val_accuracy"}, model.model_id
        accuracy = linked["val_accuracy"]
        assert accuracy.dataset_name == "mnist-validation"
        assert history[accuracy.step] == accuracy.value
        steps.append(accuracy.step)
    assert sorted(steps) == list(range(epochs))

    # The guide's command: the run's best checkpoint by validation accuracy.
    (best,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{train_run}' AND name = 'checkpoint'",
        order_by=[{"field_name": "metrics.val_accuracy", "ascending": False}],
        max_results=1,
        output_format="list",
    )
    best_accuracy = max(history.values())
    assert {m.key: m.value for m in best.metrics}["val_accuracy"] == best_accuracy


def test_a_checkpoint_packaged_by_its_path_does_not_take_the_final_models_accuracy(
    pipeline, monkeypatch, tmp_path
):
    """The train run's `accuracy` is its final model's: a checkpoint's package run must not
    carry it, nor its version, which package tags from the same value. (Its served
    accuracy is measured as for any model.)"""
    import urllib.parse

    import mlflow

    import package_model

    store, train_run = pipeline["store"], pipeline["train_run"]
    store.client()
    (checkpoint,) = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_run(train_run).info.experiment_id],
        filter_string=f"source_run_id = '{train_run}' AND name = 'checkpoint'",
        max_results=1,
        output_format="list",
    )
    path = urllib.parse.urlparse(checkpoint.artifact_location).path
    # The evaluation through the served path is tested elsewhere; here it only costs time.
    monkeypatch.setattr(package_model, "evaluate_served", lambda *_: {"served_accuracy": 0.5})
    called = store.call(
        "package_model.py",
        *("--model_dir", path, "--output_dir", tmp_path / "model", "--register", "false"),
        experiment="checkpoint-packaged",
    )
    assert called.returncode == 0, called.stderr
    which = f"checkpoint {checkpoint.model_id} of train run {train_run}"
    assert f"Packaging {which}, not its final model" in called.stderr
    [run] = store.runs("package", experiment="checkpoint-packaged")
    assert run.data.tags["train_run"] == train_run
    assert "accuracy" not in run.data.metrics
    assert (tmp_path / "model" / "MLmodel").is_file()


def test_resume_refuses_what_it_cannot_resume_in_one_line(store):
    client = store.client()
    experiment = client.create_experiment("refusals")
    from mnist_pipeline.tracking.signals import process_tag

    def train_run(status: str, **tags) -> str:
        run = client.create_run(experiment, tags={"stage": "train", **tags})
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    finished, failed = train_run("FINISHED"), train_run("FAILED")
    alive = train_run("RUNNING", process=process_tag())  # this very process: still there
    killed = train_run("KILLED")
    resumed_once = train_run("KILLED")
    resumer = train_run("FINISHED", resumed_from=resumed_once)
    # Resumed by a run that is training now; by one that got to a checkpoint and stopped;
    # and a resumer stopped before a checkpoint of its own.
    being_resumed = train_run("KILLED")
    resuming = train_run("RUNNING", resumed_from=being_resumed, process=process_tag())
    overtaken = train_run("KILLED")
    further = train_run("KILLED", resumed_from=overtaken)
    client.log_dict(further, {"epochs_done": 2}, "checkpoints/epoch-2/state.json")
    stopped_early = train_run("KILLED", resumed_from=killed)
    data_run = client.create_run(experiment, tags={"stage": "get_data"}).info.run_id
    expected = {
        "0" * 32: f"run {'0' * 32!r} does not exist in {store.uri}",
        data_run: f"resume: run {data_run} is a get_data run, expected a stopped train run",
        finished: f"resume: train run {finished} is FINISHED; only a KILLED run, "
        "or a RUNNING one whose process is gone, is resumed",
        failed: f"resume: train run {failed} is FAILED; only a KILLED run, "
        "or a RUNNING one whose process is gone, is resumed",
        alive: f"resume: train run {alive} is RUNNING and its process ({process_tag()}) "
        "may still be training; stop it first",
        killed: f"resume: train run {killed} has no checkpoint (it stopped in its first "
        "epoch); start it again instead",
        resumed_once: f"resume: train run {resumed_once} was resumed already by run "
        f"{resumer}, which finished: use that one",
        being_resumed: f"resume: train run {being_resumed} is being resumed by run {resuming} "
        f"(process {process_tag()}): wait for it, or stop it first",
        overtaken: f"resume: train run {overtaken} was resumed by run {further}, which got "
        f"further and stopped: resume that one (resume={further})",
        stopped_early: f"resume: train run {stopped_early} stopped before a checkpoint of its "
        f"own; it had resumed run {killed}: resume that one (resume={killed})",
    }
    for run_id, message in expected.items():
        called = store.call("train.py", "--resume", run_id)
        assert called.returncode == 1, called.stderr
        assert called.stderr.strip().splitlines()[-1] == f"train.py: error: {message}"
    assert client.get_run(alive).info.status == "RUNNING"  # left to its process
    for run_id in (alive, resuming):
        client.set_terminated(run_id, "KILLED")


def test_main_resumes_a_stopped_train_run_with_the_same_parameters_and_a_checkpoint(store):
    """main's look-up (Pipeline.resumable), on runs made by hand: no training needed."""
    from main import Pipeline
    from mnist_pipeline.tracking.code_version import code_version
    from mnist_pipeline.tracking.signals import process_tag

    client = store.client()
    experiment = client.create_experiment("stopped")
    version = code_version(str(REPO / "train.py"))
    params = {"preprocess_run": "a" * 32, **TINY_TRAINING, "label_smoothing": "0.0"}

    def stopped_train_run(status: str, checkpoint: bool = True, **changed) -> str:
        tags = {"stage": "train", "code_version": version, "process": process_tag()}
        run = client.create_run(experiment, tags=tags)
        for name, value in {**params, **changed}.items():
            client.log_param(run.info.run_id, name, value)
        if checkpoint:
            client.log_dict(run.info.run_id, {"epochs_done": 1}, "checkpoints/epoch-1/state.json")
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    resumable = stopped_train_run("KILLED")
    stopped_train_run("KILLED", checkpoint=False)  # stopped in its first epoch
    stopped_train_run("FAILED")  # a bug, not a stop
    stopped_train_run("KILLED", lr="0.001")  # other parameters
    pipeline = Pipeline(experiment)
    assert pipeline.resumable("train", **params).info.run_id == resumable
    assert pipeline.resumable("train", **{**params, "nr_conv_1": 4}) is None
    assert pipeline.resumable("package", train_run=resumable) is None
