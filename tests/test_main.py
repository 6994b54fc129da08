"""main's refusals; main itself, nesting and reusing the stages, is in test_real_pipeline.py."""

from __future__ import annotations


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
