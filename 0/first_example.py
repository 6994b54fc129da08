"""first_example: MLflow without a model. Counts to ten and logs what a training run would.

Logs the tag `stage=quickstart`, the params `start`, `stop` and `step`, the metrics `count`
and `running_total` at each of the ten steps (so the UI draws lines), and a folder `notes/`
of two text files.
No tracking URI is set here: MLflow 3 then writes to ./mlflow.db and ./mlruns in the current
directory, unless MLFLOW_TRACKING_URI says otherwise.

$ python 0/first_example.py
"""

import sys
import tempfile
from pathlib import Path

import mlflow

EXPERIMENT_NAME = "quickstart"
START, STOP, STEP = 1, 10, 1


def write_notes(folder: Path, numbers: list[int]) -> None:
    # Artifacts are plain files: anything written to disk can be kept with the run.
    (folder / "numbers.txt").write_text("\n".join(str(number) for number in numbers) + "\n")
    (folder / "summary.txt").write_text(f"counted {len(numbers)} numbers, total {sum(numbers)}\n")


def main() -> int:
    mlflow.set_experiment(EXPERIMENT_NAME)
    with mlflow.start_run(run_name="count-to-ten") as run:
        mlflow.set_tag("stage", "quickstart")
        mlflow.log_params({"start": START, "stop": STOP, "step": STEP})
        numbers = list(range(START, STOP + 1, STEP))
        running_total = 0
        for step, number in enumerate(numbers, start=1):
            running_total += number
            # One value per step is what the UI draws as a line, like a loss per epoch.
            mlflow.log_metrics({"count": number, "running_total": running_total}, step=step)
        with tempfile.TemporaryDirectory() as folder:
            write_notes(Path(folder), numbers)
            mlflow.log_artifacts(folder, artifact_path="notes")

    print(f"Run ID: {run.info.run_id}")
    print(f"Tracking URI: {mlflow.get_tracking_uri()}")
    print("To look at it: run `mlflow ui` in this folder, then open http://localhost:5000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
