"""The store plugin's hold on MLflow: the public members it wraps still exist, as it calls them.

mnist_pipeline/tracking/store.py builds MLflow's own store classes and wraps `create_run`,
`update_run_info` and `ManagedSessionMaker`. If an MLflow upgrade renames or reshapes any of
them, this fails with the name, before the pipeline's runs quietly lose their `process` tag
or end FAILED instead of KILLED.
"""

from __future__ import annotations

import inspect

from mlflow.store.tracking.rest_store import RestStore
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from mnist_pipeline.tracking import signals, store


def test_the_wrapped_members_exist_with_the_arguments_the_plugin_passes():
    for cls in (SqlAlchemyStore, RestStore):
        create = inspect.signature(cls.create_run).parameters
        assert "tags" in create, (cls.__name__, "create_run", list(create))
        update = list(inspect.signature(cls.update_run_info).parameters)
        assert update[1:3] == ["run_id", "run_status"], (cls.__name__, "update_run_info", update)


def test_the_plugin_gives_mlflow_its_store_and_tags_each_run_with_its_process(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    built = store.tracking_store(uri, str(tmp_path / "mlruns"))
    assert isinstance(built, SqlAlchemyStore)
    assert callable(built.ManagedSessionMaker)
    installed = signals.installed
    signals.installed = True  # as in the pipeline's processes
    try:
        run = built.create_run("0", user_id="test", start_time=0, tags=[], run_name="r")
    finally:
        signals.installed = installed
    assert run.data.tags[signals.PROCESS_TAG] == signals.process_tag()
    assert (tmp_path / "mlflow.db.lock").exists()  # built under the lock


def test_new_experiments_keep_their_artifacts_beside_the_database(tmp_path, monkeypatch):
    """Not in ./mlruns of whichever folder a command runs in, where another store's
    experiment of the same ID may keep its own."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'other.db'}"
    (tmp_path / "elsewhere").mkdir()
    built = store.tracking_store(uri)
    for experiment_id in ("0", built.create_experiment("foo")):
        location = built.get_experiment(experiment_id).artifact_location.removeprefix("file://")
        assert location == str(tmp_path / "elsewhere" / "mlruns" / experiment_id)
