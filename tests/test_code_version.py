"""main reuses a finished stage until the code that the stage runs changes, and only that code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from mnist_pipeline.tracking.code_version import imported_files
from tests.helpers import copy_of_the_working_tree

STAGES = {
    "get_data": "download.py",
    "explore_data": "explore.py",
    "preprocess": "preprocess.py",
    "train": "train.py",
    "package": "package_model.py",
}
# Asked in a copy of the project, so that its files can be edited: which of the pipeline's
# runs would main reuse for the same parameters?
REUSABLE = """
import json, sys
import mlflow
from main import Pipeline
ids = json.loads(sys.argv[1])
client = mlflow.MlflowClient()
pipeline = Pipeline(client.get_run(ids["train"]).info.experiment_id)
def asked(params):
    # As main asks: with the values a training used where it took the dataset's default.
    used = {n: params[n + "_used"] for n in ("epochs", "label_smoothing") if n + "_used" in params}
    return {**params, **used}
print(json.dumps({
    stage: pipeline.reusable(stage, **asked(client.get_run(run_id).data.params)) is not None
    for stage, run_id in ids.items()
}))
"""


def stage_runs(pipeline) -> dict[str, str]:
    """The run ID of each of the tiny pipeline's five stages (its first, in Default)."""
    store = pipeline["store"]
    by_upstream = {"explore_data": f"params.data_run = '{pipeline['data_run']}'"}
    by_upstream["package"] = f"params.train_run = '{pipeline['train_run']}'"
    ids = {
        "get_data": pipeline["data_run"],
        "preprocess": pipeline["preprocess_run"],
        "train": pipeline["train_run"],
    }
    for stage, query in by_upstream.items():
        ids[stage] = store.runs(stage, "Default", query)[-1].info.run_id
    return ids


def reusable(pipeline, project: Path, ids: dict[str, str]) -> dict[str, bool]:
    store = pipeline["store"]
    env = {**store.env, "PYTHONPATH": str(project)}
    result = store.run([sys.executable, "-c", REUSABLE, json.dumps(ids)], cwd=project, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


def test_main_reuses_a_stage_until_code_it_imports_changes(pipeline, tmp_path):
    project = copy_of_the_working_tree(tmp_path / "project")
    ids = stage_runs(pipeline)
    assert reusable(pipeline, project, ids) == dict.fromkeys(STAGES, True)

    # The team server's modules, which no stage imports, and a test helper.
    staged = set().union(*(imported_files(REPO / script) for script in STAGES.values()))
    team_only = [path for path in imported_files(REPO / "team_server.py") if path not in staged]
    assert any(REPO / "mnist_pipeline" in path.parents for path in team_only), team_only
    for path in [*team_only, REPO / "tests" / "helpers.py"]:
        edit(project / path.relative_to(REPO))
    assert reusable(pipeline, project, ids) == dict.fromkeys(STAGES, True)

    # A module that train imports, and that no earlier stage does.
    model = REPO / "mnist_pipeline" / "training" / "model.py"
    assert model in imported_files(REPO / "train.py")
    assert model not in imported_files(REPO / "preprocess.py")
    edit(project / model.relative_to(REPO))
    assert reusable(pipeline, project, ids) == {**dict.fromkeys(STAGES, True), "train": False}


def test_a_stage_imports_count_inside_functions_and_through_other_modules(tmp_path):
    # train.py imports runs inside a function; runs imports the catalogue.
    files = imported_files(REPO / "train.py")
    assert REPO / "mnist_pipeline" / "tracking" / "runs.py" in files
    assert REPO / "mnist_pipeline" / "data" / "catalogue.py" in files
    assert REPO / "tests" / "helpers.py" not in files


SERVING_CODE = ("mnist_pipeline/serving/", "mnist_pipeline/data/transform.py")
# In a fresh Python, as a model server loads a model: `import mlflow` first, then the model.
# "elsewhere": the repository is not on sys.path, nor reachable through the virtualenv's
# editable install of the project (its import finder is taken out), as on a machine that has
# the model and its requirements only. "venv": the project's virtualenv, where
# `mlflow models serve --env-manager local` runs and the editable install is there.
LOAD_AND_PREDICT = """
import sys
if sys.argv[2] == "elsewhere":
    sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith("__editable__")]
import mlflow
model_dir = sys.argv[1]
model = mlflow.pyfunc.load_model(model_dir)
answer = model.predict(mlflow.models.Model.load(model_dir).load_input_example(model_dir))
import mnist_pipeline
print(mnist_pipeline.__file__)
print(answer.to_json(orient="records"))
"""


def test_the_logged_model_carries_only_the_code_that_serving_runs(pipeline):
    code = pipeline["model_dir"] / "code"
    carried = sorted(path.relative_to(code).as_posix() for path in code.rglob("*.py"))
    assert "mnist_pipeline/serving/served_model.py" in carried
    assert "mnist_pipeline/data/transform.py" in carried
    others = [
        name
        for name in carried
        if not name.startswith(SERVING_CODE) and not name.endswith(("__init__.py", "errors.py"))
    ]
    assert others == []
    assert not any(part in name for name in carried for part in ("test", "search", "tracking"))


@pytest.mark.parametrize("where", ["elsewhere", "venv"])
def test_the_model_predicts_with_the_code_it_carries(pipeline, tmp_path, where):
    model_dir = tmp_path / "model"
    shutil.copytree(pipeline["model_dir"], model_dir)
    env = {k: v for k, v in pipeline["store"].env.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(model_dir), where],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    package_file, answer = result.stdout.strip().splitlines()[-2:]
    # The package came from the model's own code/ folder, not from the repository, even
    # where the repository's is installed (MLflow loads the store plugin at `import mlflow`).
    assert Path(package_file).is_relative_to(model_dir / "code")
    assert json.loads(answer)[0]["class_name"]
