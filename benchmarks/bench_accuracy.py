"""Benchmark: the default CNN against the workshop's classic one, both trained in this run.

Targets (issue 11), each next to the baseline, the defaults before issue 11
(`-P architecture=classic -P augment=false -P batch_size=128 -P lr=0.002`: the two-block
CNN without augmentation), trained in the same run on the same preprocessed arrays as
today's defaults (the deeper CNN on distorted digits, batch 256, peak learning rate 0.006):
  - MNIST test accuracy >= 0.994 within 60 s of training (model.fit) on 2 cores;
  - the drawn-digits set (drawn_digits/, see mnist_pipeline/serving/drawn_digits.py) through `mlflow models serve` >= 0.98;
  - 2,000 MNIST test images sent as PNG files to the server: as accurate as the same
    images sent as arrays;
  - Fashion-MNIST test accuracy >= 0.925 within 60 s.
Runs the real commands (`mlflow run <repo> -e get_data / preprocess / train / package`) on
the local mirror in a temporary store, then serves each packaged MNIST model. Training
seconds depend on the machine's load: the load average is printed with them.

$ python benchmarks/bench_accuracy.py [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

import numpy as np
from bench_serving import inputs, labels_of, png_frame
from common import (
    MIRROR,
    CommandFailed,
    make_store,
    mlflow_run,
    newest_run,
    print_table,
    temporary_folder,
    verdict,
    write_results,
)
from serving_client import ScoringServer

MNIST_TARGET_ACCURACY = 0.994
FASHION_TARGET_ACCURACY = 0.925
TARGET_SECONDS = 60.0
DRAWN_TARGET_ACCURACY = 0.98
PNG_IMAGES = 2_000
PNG_SEED = 0
# The baseline: the defaults as before issue 11 (every parameter passed explicitly, so
# that a change of default cannot move it), and the defaults of today.
BASELINE, CANDIDATE = "old defaults", "defaults"
MODELS = {
    BASELINE: {
        "architecture": "classic",
        "augment": "false",
        "epochs": 5,
        "batch_size": 128,
        "lr": 0.002,
        "nr_conv_1": 16,
    },
    CANDIDATE: {},
}


def load_average() -> str:
    return "/".join(f"{figure:.1f}" for figure in os.getloadavg())


def prepare(dataset: str, environment: dict, root: Path) -> str:
    """get_data and preprocess `dataset` from the mirror; return the preprocess run's ID."""
    extra = {"allow_unverified": "true"} if dataset == "fashion" else {}
    mlflow_run(environment, root, "get_data", dataset=dataset, source=MIRROR / dataset,
               outdir=root / "data" / dataset, **extra)  # fmt: skip
    mlflow_run(environment, root, "preprocess", dataset=dataset)
    return newest_run("preprocess").info.run_id


def train(preprocess_run: str, parameters: dict, environment: dict, root: Path) -> dict:
    """Run the train entry point; return its run ID, test accuracy, seconds and the load."""
    mlflow_run(environment, root, "train", preprocess_run=preprocess_run, **parameters)
    run = newest_run("train")
    return {"train_run": run.info.run_id,
            "epochs": int(run.data.params["epochs"]),
            "accuracy": run.data.metrics["accuracy"],
            "train_seconds": run.data.metrics["train_seconds"],
            "load_average": load_average()}  # fmt: skip


def served_figures(model_dir: Path, environment: dict, root: Path, png_images: int) -> dict:
    """Serve the packaged model; return its accuracy on the drawn set, and on test PNGs and arrays."""
    from mnist_pipeline.serving.drawn_digits import read_drawn_set
    from mnist_pipeline.serving.request_formats import MAX_FILES_PER_REQUEST

    drawn = read_drawn_set()
    drawn_bodies = [
        files_frame(list(drawn.image[start : start + MAX_FILES_PER_REQUEST]))
        for start in range(0, len(drawn), MAX_FILES_PER_REQUEST)
    ]
    pixels, labels = mnist_test_pixels(root)
    chosen = np.sort(np.random.default_rng(PNG_SEED).permutation(len(labels))[:png_images])
    images, truth = pixels[chosen], labels[chosen]
    png_bodies = [
        png_frame(images[start : start + MAX_FILES_PER_REQUEST])
        for start in range(0, len(images), MAX_FILES_PER_REQUEST)
    ]
    with ScoringServer(str(model_dir), environment, root) as server:
        drawn_labels = np.concatenate([labels_of(server.post(body)[1]) for body in drawn_bodies])
        png_labels = np.concatenate([labels_of(server.post(body)[1]) for body in png_bodies])
        array_labels = labels_of(server.post(inputs(images.reshape(-1, 784)))[1])
    correct = drawn_labels == drawn.label.to_numpy()
    return {"drawn_accuracy": float(correct.mean()),
            "drawn_images": len(drawn),
            "drawn_by_kind": {kind: float(correct[(drawn.kind == kind).to_numpy()].mean())
                              for kind in drawn.kind.unique()},
            "png_accuracy": float((png_labels == truth).mean()),
            "array_accuracy": float((array_labels == truth).mean()),
            "png_images": len(truth)}  # fmt: skip


def files_frame(files: list[bytes]) -> bytes:
    """A request with one picture file (PNG or JPEG bytes) per row, base64 in the column `image`."""
    rows = [[base64.b64encode(data).decode("ascii")] for data in files]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


def mnist_test_pixels(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test set as get_data left it: uint8 (10000, 28, 28) and its labels."""
    from mnist_pipeline.data.idx import read_idx

    folder = root / "data" / "mnist"
    return (read_idx(folder / "t10k-images-idx3-ubyte.gz"),
            read_idx(folder / "t10k-labels-idx1-ubyte.gz"))  # fmt: skip


def benchmark_dataset(dataset: str, environment: dict, root: Path, quick: bool) -> dict:
    preprocess_run = prepare(dataset, environment, root)
    results = {}
    for name, parameters in MODELS.items():
        parameters = {**parameters, **({"epochs": 1} if quick else {})}
        print(f"[{dataset}] training, {name} (load {load_average()})", file=sys.stderr)
        results[name] = train(preprocess_run, parameters, environment, root)
        if dataset == "mnist":
            model_dir = root / f"model-{name.replace(' ', '-')}"
            mlflow_run(environment, root, "package", train_run=results[name]["train_run"],
                       output_dir=model_dir, register="false")  # fmt: skip
            png_images = 200 if quick else PNG_IMAGES
            results[name].update(served_figures(model_dir, environment, root, png_images))
    return results


def passed(dataset: str, figures: dict) -> dict:
    """Each target's verdict for one trained model."""
    target = MNIST_TARGET_ACCURACY if dataset == "mnist" else FASHION_TARGET_ACCURACY
    verdicts = {"accuracy": figures["accuracy"] >= target,
                "seconds": figures["train_seconds"] <= TARGET_SECONDS}  # fmt: skip
    if dataset == "mnist":
        verdicts["drawn"] = figures["drawn_accuracy"] >= DRAWN_TARGET_ACCURACY
        verdicts["png"] = figures["png_accuracy"] >= figures["array_accuracy"]
    return verdicts


def report(results: dict) -> None:
    rows = []
    for dataset, models in results.items():
        for name, figures in models.items():
            verdicts = passed(dataset, figures)
            rows.append({"dataset": dataset, "model": name, "epochs": figures["epochs"],
                         "train_s": figures["train_seconds"], "load": figures["load_average"],
                         "test_acc": figures["accuracy"],
                         "drawn_acc": figures.get("drawn_accuracy"),
                         "png_acc": figures.get("png_accuracy"),
                         "array_acc": figures.get("array_accuracy"),
                         "targets": " ".join(f"{what}:{verdict(ok)}"
                                             for what, ok in verdicts.items())})  # fmt: skip
    print_table("Accuracy: the defaults against the classic CNN (the old defaults)", rows)
    print(
        f"targets: MNIST test >= {MNIST_TARGET_ACCURACY}, Fashion-MNIST test >= "
        f"{FASHION_TARGET_ACCURACY}, each within {TARGET_SECONDS:.0f} s of training; drawn "
        f">= {DRAWN_TARGET_ACCURACY} served; PNG files as accurate as arrays (same images). "
        f"Load average (1/5/15 min) now: {load_average()} on {os.cpu_count()} CPUs."
    )
    for dataset, models in results.items():
        before, after = models[BASELINE], models[CANDIDATE]
        error_ratio = (1 - after["accuracy"]) / max(1 - before["accuracy"], 1e-9)
        time_ratio = after["train_seconds"] / max(before["train_seconds"], 1e-9)
        print(
            f"{dataset}: test error {1 - before['accuracy']:.2%} -> {1 - after['accuracy']:.2%} "
            f"({error_ratio:.2f}x), training time {time_ratio:.2f}x the baseline's"
        )
        if "drawn_by_kind" in after:
            kinds = ", ".join(
                f"{kind} {before['drawn_by_kind'][kind]:.2f}->{accuracy:.2f}"
                for kind, accuracy in after["drawn_by_kind"].items()
            )
            print(f"{dataset}: drawn accuracy by kind, baseline->new: {kinds}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: MNIST only, 1 epoch, 200 PNG files"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and print it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    datasets = ["mnist"] if args.quick else ["mnist", "fashion"]
    print(f"Load average at the start: {load_average()}", file=sys.stderr)
    with temporary_folder("bench_accuracy", args.keep) as root:
        environment = make_store(root)
        try:
            results = {
                dataset: benchmark_dataset(dataset, environment, root, args.quick)
                for dataset in datasets
            }
        except CommandFailed as error:
            print(f"bench_accuracy: {error}", file=sys.stderr)
            return 2
    report(results)
    write_results("bench_accuracy", {"quick": args.quick, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
