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
