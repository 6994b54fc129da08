"""main's refusals; main itself, nesting and reusing the stages, is in test_real_pipeline.py."""

from __future__ import annotations


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
