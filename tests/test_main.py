"""main: the stages as nested runs of one parent, reused when nothing changed."""

from __future__ import annotations

from conftest import TINY_TRAINING

STAGES = ["get_data", "explore_data", "preprocess", "train", "package"]


def children_of(store, parent_run_id: str) -> dict[str, object]:
    """The stage runs nested under a main run, by stage."""
    return {run.data.tags["stage"]: run for run in store.children_of(parent_run_id)}


def test_main_runs_nested_stages_then_reuses_them(store, tiny_data):
    params = {
        "source": tiny_data,
        "allow_unverified": "true",
        "data_dir": store.root / "data",
        "output_dir": store.root / "model",
        **TINY_TRAINING,
    }
    first = store.mlflow_run("main", **params)
    parent = store.last_run("main")
    children = children_of(store, parent.info.run_id)
    assert sorted(children) == sorted(STAGES)
    assert all(run.info.status == "FINISHED" for run in children.values())
    # Each stage was handed its upstream run.
    assert children["preprocess"].data.params["data_run"] == children["get_data"].info.run_id
    assert children["train"].data.params["preprocess_run"] == children["preprocess"].info.run_id
    assert children["package"].data.params["train_run"] == children["train"].info.run_id
    assert parent.data.tags["reused_stages"] == "none"
    assert parent.data.metrics["accuracy"] == children["train"].data.metrics["accuracy"]
    assert (store.root / "model" / "MLmodel").exists()
    assert "mlflow ui" in first.stdout and "mlflow models serve" in first.stdout

    # The same again, with the learning rate written another way: nothing runs again.
    stage_runs_before = len(store.runs()) - 1
    lr_in_other_words = f"{float(TINY_TRAINING['lr']):.0e}"  # "4e-03"
    second = store.mlflow_run("main", **{**params, "lr": lr_in_other_words})
    rerun = store.last_run("main")
    assert rerun.data.tags["reused_stages"] == ",".join(STAGES)
    assert children_of(store, rerun.info.run_id) == {}
    assert len(store.runs()) - 1 == stage_runs_before + 1  # only the new parent
    for stage in STAGES:
        assert rerun.data.tags[f"{stage}_run"] == children[stage].info.run_id
        assert f"{stage:<13} reused" in second.stdout

    # A changed hyperparameter runs train again, and package after it, but nothing upstream.
    store.mlflow_run("main", **{**params, "epochs": "2"})
    third = store.last_run("main")
    assert third.data.tags["reused_stages"] == "get_data,explore_data,preprocess"
    assert sorted(children_of(store, third.info.run_id)) == ["package", "train"]


def test_main_rejects_unknown_dataset_in_one_line(store):
    result = store.mlflow_run("main", check=False, dataset="emnist")
    assert result.returncode != 0
    assert (
        "main.py: error: unknown dataset 'emnist'; choose one of: fashion, mnist" in result.stderr
    )
    assert "Traceback" not in result.stderr
    # The dataset is checked before the parent run starts stages: no stage run exists.
    assert store.runs("get_data") == []
    assert store.runs()[0].info.status == "FAILED"
