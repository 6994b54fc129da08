"""preprocess: normalise a dataset with the one transform that the served model applies too.

Reads a get_data run (`--data_run`), a folder (`--in_data`), or the newest finished
get_data run of `--dataset`. `--mean` and `--std` default to what explore_data
measured on the same data (`--explore_run`, or the newest such run). Logs
`arrays/train.npz` and `arrays/test.npz` (x: float32 (n, 28, 28, 1), y: uint8 (n,))
and `transform.json`, the spec that train.py and package_model.py read.

$ mlflow run . -e preprocess --env-manager local -P data_run=<get_data run id>
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from mnist_pipeline.cli import USER_ERRORS, Parser, arguments_for, fail, stage_run
from mnist_pipeline.data.catalogue import dataset_spec
from mnist_pipeline.data.idx import Dataset, load_folder
from mnist_pipeline.data.transform import (
    TRANSFORM_FILE,
    TransformSpec,
    normalize,
    pixel_statistics,
    save_arrays,
)
from mnist_pipeline.errors import UserError


def optional_float(text: str) -> float | None:
    """argparse type: a number, or empty for 'measure it'."""
    if str(text).strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def build_parser() -> Parser:
    parser = Parser(prog="preprocess.py", description=__doc__.splitlines()[0])
    parser.add_data_arguments()
    parser.add_argument("--explore_run", help="the explore_data run whose mean and std to use")
    parser.add_argument("--mean", type=optional_float, help="pixel mean (0-255 scale)")
    parser.add_argument("--std", type=optional_float, help="pixel standard deviation")
    parser.take_defaults_from(preprocess)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stage_run("preprocess", parser, args, __file__) as run:
            spec, megabytes = preprocess(**arguments_for(preprocess, args))
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    print(
        f"preprocess run {run.info.run_id}: (pixel - {spec.mean:.3f}) / {spec.std:.3f}, "
        f"artifacts {megabytes:.1f} MB"
    )
    return 0


def preprocess(
    data_run: str = "",
    in_data: str = "",
    dataset: str = "mnist",
    explore_run: str = "",
    mean: float | None = None,
    std: float | None = None,
) -> tuple[TransformSpec, float]:
    """Normalise a dataset and log the arrays and the transform; return it and the MB logged.

    `mean` and `std` (0-255 scale) default to what explore_data measured on the same data.
    Logs to the active MLflow run (MLflow starts one if none is active).
    """
    import mlflow

    from mnist_pipeline.tracking import runs

    if std is not None and not std > 0:
        raise UserError(f"std must be greater than 0, got {std}")
    started = time.perf_counter()
    folder, tags = runs.resolve_data(data_run, in_data, dataset)
    catalogued = dataset_spec(tags["dataset"])
    data = load_folder(folder, catalogued)

    if mean is None or std is None:
        measured_mean, measured_std, source = _mean_and_std(
            explore_run, tags.get("data_run"), data, tags["dataset"]
        )
        mean = measured_mean if mean is None else mean
        std = measured_std if std is None else std
        tags["mean_std_from"] = source
        if source.startswith("explore_data run "):
            tags["explore_run"] = source.split()[-1]
    else:
        tags["mean_std_from"] = "parameters"
    mlflow.set_tags(tags)

    spec = TransformSpec(
        dataset=catalogued.name,
        mean=float(mean),
        std=float(std),
        class_names=catalogued.class_names,
        image_style="digit" if catalogued.name == "mnist" else "object",
    )
    with tempfile.TemporaryDirectory() as staging:
        save_arrays(staging, "train", normalize(data.x_train, spec), data.y_train)
        save_arrays(staging, "test", normalize(data.x_test, spec), data.y_test)
        spec.save(Path(staging) / TRANSFORM_FILE)
        megabytes = sum(p.stat().st_size for p in Path(staging).rglob("*") if p.is_file()) / 1e6
        mlflow.log_artifacts(staging)
    seconds = time.perf_counter() - started
    mlflow.log_metrics(
        {
            "mean": spec.mean,
            "std": spec.std,
            "artifact_megabytes": megabytes,
            "preprocess_seconds": seconds,
        }
    )
    images = len(data.y_train) + len(data.y_test)
    print(
        f"Normalised {images:,} images in {seconds:.1f} s; artifacts {megabytes:.1f} MB",
        file=sys.stderr,
    )
    return spec, megabytes


def _mean_and_std(
    explore_run: str, data_run: str | None, data: Dataset, dataset: str
) -> tuple[float, float, str]:
    """Return mean, std and where they came from: the explore_data run, or measured here."""
    from mnist_pipeline.tracking import runs

    if explore_run:
        found = runs.get_run(explore_run, "explore_data")
        measured = found.data.tags.get("dataset", dataset)
        if measured != dataset:
            raise UserError(
                f"explore_run {explore_run} measured {measured}, not {dataset}: its mean and "
                "std are not this data's"
            )
    elif data_run:
        try:
            found = runs.latest_run("explore_data", lineage={"data_run": data_run})
        except UserError:
            found = None
    else:
        found = None
    if found is not None:
        metrics = found.data.metrics
        return metrics["mean"], metrics["std"], f"explore_data run {found.info.run_id}"
    mean, std = pixel_statistics(data.x_train)
    return mean, std, "measured by preprocess (no explore_data run for this data)"


if __name__ == "__main__":
    sys.exit(main())
