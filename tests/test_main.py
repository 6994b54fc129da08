"""main's refusals; main itself, nesting and reusing the stages, is in test_real_pipeline.py."""

from __future__ import annotations

import pytest

from mnist_pipeline.errors import UserError
from package_model import check_output_dir


def test_main_rejects_unknown_dataset_in_one_line(store):
    result = store.call("main.py", "--dataset", "emnist")
    assert result.returncode != 0
    assert (
        "main.py: error: unknown dataset 'emnist'; choose one of: fashion, mnist" in result.stderr
    )
    assert "Traceback" not in result.stderr
    # The dataset is checked before main starts its run: nothing is recorded.
    assert store.runs() == []


def test_mains_closing_hints_can_be_pasted_as_they_are(monkeypatch, tmp_path):
    """For the dataset trained, with a model folder whose path has a space, and pointing at
    the tracking server when there is one (`mlflow ui` would open an empty local store)."""
    import shlex

    import mlflow

    import main

    pipeline = main.Pipeline("0")
    pipeline.stages = [{"stage": "train", "run_id": "0" * 32, "reused": False}]
    hints = pipeline.report("1" * 32, 1.0, str(tmp_path / "my model"), "fashion").splitlines()
    serve = next(line for line in hints if "models serve" in line)
    assert shlex.split(serve)[4] == str(tmp_path / "my model")
    assert any("png_to_pandas.py --dataset fashion " in line for line in hints)
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://team:5005")
    hints = pipeline.report("1" * 32, 1.0, "model", "mnist")
    assert "# compare the runs at http://team:5005" in hints
    assert "mlflow ui" not in hints
    # `make run` runs it in the project's virtualenv, which the terminal has not activated.
    import sys

    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    venv = ".venv" if sys.prefix == str(main.PROJECT_VENV) else shlex.quote(sys.prefix)
    activate = f"  . {venv}/bin/activate   # in each new terminal"
    hints = pipeline.report("1" * 32, 1.0, "model", "mnist").splitlines()
    assert hints[hints.index("Next:") + 1] == activate
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
    assert "activate" not in pipeline.report("1" * 32, 1.0, "model", "mnist")


def test_main_refuses_an_output_dir_that_holds_other_things_before_any_stage(store):
    """`-P output_dir=.` would have replaced the project, its store and data with the model."""
    result = store.call("main.py", "--output_dir", ".")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "main.py: error: output_dir . holds other things than a model, which package would "
        "replace whole: name a new or empty folder, or one that holds a model"
    )
    assert store.runs() == []


def test_package_takes_a_models_folder_an_empty_one_or_none(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "important.txt").write_text("mine")
    (tmp_path / "README.md").write_text("# a file")
    for taken in ("model", "empty", "new", "new/deeper"):
        check_output_dir(tmp_path / taken)
    refused = {
        "notes": "holds other things than a model",
        "README.md": "is a file: name a folder for the model",
        "README.md/model": f"{tmp_path / 'README.md'} is a file, not a folder",
    }
    for name, message in refused.items():
        with pytest.raises(UserError, match=message):
            check_output_dir(tmp_path / name)
    assert (tmp_path / "notes" / "important.txt").read_text() == "mine"


@pytest.mark.full  # two `mlflow run` starts
def test_a_stage_that_fails_gives_main_its_reason(store, tmp_path):
    """main's FAILED run says why, as a stage's does: the stage's own line, not MLflow's
    "Run (ID '...') failed", as its last line, its tag `error` and its description's end."""
    result = store.mlflow_run("main", check=False, source=tmp_path / "nowhere")
    assert result.returncode != 0
    reason = f"get_data: source '{tmp_path / 'nowhere'}' is neither 'official', a URL, nor an existing folder"
    # The line above MLflow's own last one, "=== Run (ID '...') failed ===".
    [line] = [line for line in result.stderr.splitlines() if line.startswith("main.py: error:")]
    assert line == f"main.py: error: {reason}"
    main_run = store.last_run("main")
    assert main_run.info.status == "FAILED"
    assert main_run.data.tags["error"] == reason
    assert main_run.data.tags["mlflow.note.content"].endswith(f"**Failed:** {reason}")
