"""explore_data: measure a dataset and draw it.

Reads a get_data run (`--data_run`), a folder of IDX files (`--in_data`), or else the
newest finished get_data run of `--dataset`. Logs the training set's pixel `mean` and
`std` as metrics, the class counts (metrics and a table), and pictures: examples per
class, images per class, and the pixel histogram.

$ mlflow run . -e explore_data --env-manager local -P data_run=<get_data run id>
"""

import sys

import numpy as np
import pandas as pd

from mnist_pipeline import plots
from mnist_pipeline.cli import USER_ERRORS, Parser, arguments_for, fail, stage_run
from mnist_pipeline.data.catalogue import dataset_spec
from mnist_pipeline.data.idx import load_folder
from mnist_pipeline.data.transform import pixel_statistics


def build_parser() -> Parser:
    parser = Parser(prog="explore.py", description=__doc__.splitlines()[0])
    parser.add_data_arguments()
    parser.take_defaults_from(explore)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stage_run("explore_data", parser, args, __file__) as run:
            mean, std = explore(**arguments_for(explore, args))
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    print(f"explore_data run {run.info.run_id}: mean {mean:.3f}, std {std:.3f}")
    return 0


def explore(data_run: str = "", in_data: str = "", dataset: str = "mnist") -> tuple[float, float]:
    """Measure and draw a get_data run's files (or a folder's); return the pixel mean and std.

    Logs to the active MLflow run (MLflow starts one if none is active).
    """
    import mlflow

    from mnist_pipeline.tracking import runs

    folder, tags = runs.resolve_data(data_run, in_data, dataset)
    spec = dataset_spec(tags["dataset"])
    mlflow.set_tags(tags)
    data = load_folder(folder, spec)
    mean, std = pixel_statistics(data.x_train)
    train_counts = np.bincount(data.y_train, minlength=len(spec.class_names))
    test_counts = np.bincount(data.y_test, minlength=len(spec.class_names))
    mlflow.log_metrics(
        {"mean": mean, "std": std, "train_count": len(data.y_train), "test_count": len(data.y_test)}
    )
    mlflow.log_metrics(
        {f"train_count_{label}": int(count) for label, count in enumerate(train_counts)}
    )
    mlflow.log_table(
        pd.DataFrame(
            {
                "label": range(len(spec.class_names)),
                "class_name": spec.class_names,
                "train": train_counts,
                "test": test_counts,
            }
        ),
        "class_counts.json",
    )
    mlflow.log_figure(
        plots.examples_grid(data.x_train, data.y_train, spec.class_names), "examples_per_class.png"
    )
    mlflow.log_figure(
        plots.class_histogram(train_counts, test_counts, spec.class_names), "class_histogram.png"
    )
    mlflow.log_figure(plots.pixel_histogram(data.x_train, mean, std), "pixel_histogram.png")
    print(f"Measured {len(data.y_train):,} training images of {spec.title}", file=sys.stderr)
    return mean, std


if __name__ == "__main__":
    sys.exit(main())
