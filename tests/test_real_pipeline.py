"""The real thing: main on the local mirror of MNIST.

Slow (minutes): these run the real pipeline on 70,000 images. They are skipped where the
mirror (../shared/data/mnist from the repository) is absent.
"""

from __future__ import annotations

import time

import pytest
from conftest import MIRROR, make_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MIRROR / "mnist").is_dir(), reason="no local mirror of MNIST"),
]
STAGES = ["get_data", "explore_data", "preprocess", "train", "package"]


def test_main_on_mnist_nests_reuses_and_learns(tmp_path):
    store = make_store(tmp_path / "store")
    params = {
        "source": MIRROR / "mnist",
        "epochs": "1",
        "data_dir": store.root / "data",
        "output_dir": store.root / "model",
    }
    store.mlflow_run("main", **params)
    parent = store.last_run("main")
    children = store.children_of(parent.info.run_id)
    assert sorted(run.data.tags["stage"] for run in children) == sorted(STAGES)
    data_run = next(run for run in children if run.data.tags["stage"] == "get_data")
    assert data_run.data.tags["verified"] == "true"
    assert data_run.data.metrics["train_count"] == 60000
    train_run = next(run for run in children if run.data.tags["stage"] == "train")
    assert train_run.data.metrics["accuracy"] >= 0.98

    started = time.monotonic()
    store.mlflow_run("main", **params)
    rerun_seconds = time.monotonic() - started
    rerun = store.last_run("main")
    assert rerun.data.tags["reused_stages"] == ",".join(STAGES)
    assert rerun_seconds < 60
