"""get_data: fetch MNIST or Fashion-MNIST, verify it, and log the four IDX files.

Reads the official mirrors, a local folder or a base URL (`--source`). Logs the files
as artifacts under `data/`, the datasets with mlflow.log_input, their counts and the
SHA-256 seen. Also leaves the files in `--outdir` (default ./data/<dataset>/).

$ mlflow run . -e get_data --env-manager local -P dataset=mnist -P source=../shared/data/mnist
"""

import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from mnist_pipeline.cli import USER_ERRORS, Parser, boolean, fail, stage_run
from mnist_pipeline.data.catalogue import dataset_spec
from mnist_pipeline.data.fetch import FetchedFile, fetch_dataset
from mnist_pipeline.data.idx import load_folder

DATA_ARTIFACTS = "data"


def build_parser() -> Parser:
    parser = Parser(prog="download.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="mnist or fashion")
    parser.add_argument("--type", default="", help="the workshop's name for --dataset")
    parser.add_argument(
        "--source",
        help="'official' (the official mirrors), a folder, or a base URL of the four .gz files",
    )
    parser.add_argument(
        "--allow_unverified",
        type=boolean,
        help="accept files whose checksums differ from the official ones",
    )
    parser.add_argument("--outdir", help="where the files also land (default ./data/<dataset>/)")
    parser.take_defaults_from(fetch_and_log)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    dataset = args.type or args.dataset
    try:
        spec = dataset_spec(dataset)
        with stage_run("get_data", parser, args, __file__) as run:
            fetched = fetch_and_log(dataset, args.source, args.allow_unverified, args.outdir)
    except USER_ERRORS as error:
        return fail(parser.prog, error)
    verified = all(file.verified for file in fetched)
    print(
        f"get_data run {run.info.run_id}: {spec.title}, "
        f"{'verified against the official checksums' if verified else 'UNVERIFIED mirror (allowed)'}"
    )
    return 0


def fetch_and_log(
    dataset: str = "mnist",
    source: str = "official",
    allow_unverified: bool = False,
    outdir: str | Path = "",
) -> list[FetchedFile]:
    """Fetch `dataset` from `source` into `outdir` (default data/<dataset>), and log it.

    Logs to the active MLflow run (MLflow starts one if none is active): the four files
    under `data/`, `checksums.json`, the SHA-256 seen as tags, the counts as metrics and
    the train and test sets as datasets. Returns what was fetched, file by file.
    """
    import mlflow

    from mnist_pipeline.tracking.runs import log_input

    spec = dataset_spec(dataset)
    outdir = Path(outdir or f"data/{spec.name}")
    mlflow.set_tag("dataset", spec.name)
    bars = []

    def progress(name: str, total: int | None):
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr, leave=False)
        bars.append(bar)
        return bar.update

    started = time.perf_counter()
    try:
        fetched = fetch_dataset(spec, source, outdir, allow_unverified, progress)
    finally:
        for bar in bars:
            bar.close()
    size = sum(file.size_bytes for file in fetched)
    print(
        f"Fetched {len(fetched)} files ({size / 1e6:.1f} MB uncompressed) "
        f"from {source} in {time.perf_counter() - started:.1f} s into {outdir}/",
        file=sys.stderr,
    )

    data = load_folder(outdir, spec)
    mlflow.log_artifacts(str(outdir), DATA_ARTIFACTS)
    verified = all(file.verified for file in fetched)
    mlflow.set_tags(
        {
            "verified": str(verified).lower(),
            "source": source,
            **{f"sha256.{file.name.removesuffix('.gz')}": file.sha256 for file in fetched},
        }
    )
    mlflow.log_metrics({"train_count": len(data.y_train), "test_count": len(data.y_test)})
    mlflow.log_dict(
        {"dataset": spec.name, "verified": verified, "files": [file.__dict__ for file in fetched]},
        "checksums.json",
    )
    for split, images, labels in (
        ("train", data.x_train, data.y_train),
        ("test", data.x_test, data.y_test),
    ):
        origin = next(
            f.source
            for f in fetched
            if f.name.startswith("train-images" if split == "train" else "t10k-images")
        )
        with warnings.catch_warnings():
            # A local path matches two of MLflow's source types; either is right here.
            warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
            dataset_input = mlflow.data.from_numpy(
                images, targets=labels, source=origin, name=f"{spec.name}-{split}"
            )
        log_input(dataset_input, context=split)
    return fetched


if __name__ == "__main__":
    sys.exit(main())
