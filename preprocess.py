"""preprocess: normalise a dataset with the one transform that the served model applies too.

Reads a get_data run (`--data_run`), a folder (`--in_data`), or the newest finished
get_data run of `--dataset`. `--mean` and `--std` default to what explore_data
measured on the same data (`--explore_run`, or the newest such run). Logs
`arrays/train.npz` and `arrays/test.npz` (x: float32 (n, 28, 28, 1), y: uint8 (n,))
and `transform.json`, the spec that train.py and package_model.py read.

$ mlflow run . -e preprocess --env-manager local -P data_run=<get_data run id>
"""

from __future__ import annotations

import argparse
import sys

from mnist_pipeline.cli import USER_ERRORS, Parser, fail, stage_run

ARRAYS = "arrays"


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
    parser.add_argument("--data_run", default="", help="a get_data run ID")
    parser.add_argument("--in_data", default="", help="or a folder of the four IDX files")
    parser.add_argument(
        "--dataset", default="mnist", help="mnist or fashion, to find the newest get_data run"
    )
    parser.add_argument(
        "--explore_run", default="", help="the explore_data run whose mean and std to use"
    )
    parser.add_argument(
        "--mean", type=optional_float, default=None, help="pixel mean (0-255 scale)"
    )
    parser.add_argument("--std", type=optional_float, default=None, help="pixel standard deviation")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.std is not None and not args.std > 0:
        return fail(parser.prog, ValueError(f"std must be greater than 0, got {args.std}"))
    try:
        with stage_run("preprocess", parser, args, __file__) as run:
            spec, megabytes = preprocess(args)
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    print(
        f"preprocess run {run.info.run_id}: (pixel - {spec.mean:.3f}) / {spec.std:.3f}, "
        f"artifacts {megabytes:.1f} MB"
    )
    return 0


def preprocess(args):
    import tempfile
    import time
    from pathlib import Path

    import mlflow
    import numpy as np

    from mnist_pipeline import runs
    from mnist_pipeline.datasets import dataset_spec, load_folder
    from mnist_pipeline.transform import TRANSFORM_FILE, TransformSpec, normalize

    started = time.perf_counter()
    folder, data_run, dataset_name = runs.resolve_data(args.data_run, args.in_data, args.dataset)
    dataset = dataset_spec(dataset_name)
    tags = {
        "dataset": dataset.name,
        **({"data_run": data_run} if data_run else {}),
        **({"in_data": args.in_data} if args.in_data else {}),
    }
    data = load_folder(folder)

    mean, std = args.mean, args.std
    if mean is None or std is None:
        measured_mean, measured_std, source = _mean_and_std(args, data_run, data)
        mean = measured_mean if mean is None else mean
        std = measured_std if std is None else std
        tags["mean_std_from"] = source
        if source.startswith("explore_data run "):
            tags["explore_run"] = source.split()[-1]
    else:
        tags["mean_std_from"] = "parameters"
    mlflow.set_tags(tags)

    spec = TransformSpec(
        dataset=dataset.name,
        mean=float(mean),
        std=float(std),
        class_names=dataset.class_names,
        image_style="digit" if dataset.name == "mnist" else "object",
    )
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        (staging / ARRAYS).mkdir()
        np.savez_compressed(
            staging / ARRAYS / "train.npz", x=normalize(data.x_train, spec), y=data.y_train
        )
        np.savez_compressed(
            staging / ARRAYS / "test.npz", x=normalize(data.x_test, spec), y=data.y_test
        )
        spec.save(staging / TRANSFORM_FILE)
        megabytes = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file()) / 1e6
        mlflow.log_artifacts(str(staging))
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


def _mean_and_std(args, data_run, data) -> tuple[float, float, str]:
    """Return mean, std and where they came from: the explore_data run, or measured here."""
    from mnist_pipeline import runs
    from mnist_pipeline.datasets import pixel_statistics

    if args.explore_run:
        explore_run = runs.get_run(args.explore_run, "explore_data")
    elif data_run:
        try:
            explore_run = runs.latest_run("explore_data", lineage={"data_run": data_run})
        except ValueError:
            explore_run = None
    else:
        explore_run = None
    if explore_run is not None:
        metrics = explore_run.data.metrics
        return metrics["mean"], metrics["std"], f"explore_data run {explore_run.info.run_id}"
    mean, std = pixel_statistics(data.x_train)
    return mean, std, "measured by preprocess (no explore_data run for this data)"


if __name__ == "__main__":
    sys.exit(main())
