"""Benchmark: how the default model reads shapes that MNIST's writers seldom made, against a
baseline commit's model, both trained in the same run.

Trains MNIST with train's defaults once per seed at `--baseline` (a commit, in a temporary
git worktree, first) and at the working tree, on one preprocess run. Then scores every model
through the served path's transform (the working tree's for both, so that only the model
differs) on MNIST test images written as dark ink on a white 160-200 px picture: turned by
up to 30 degrees, slanted, 1s given a long flag (and a foot on some) and 7s given a bar, all
made here and nowhere else; digits other than 1 squeezed to half and to 30 % of their
width; on drawn_digits.py's European 1s and crossed 7s (seeds 100-129);
and on the repository's drawn and font sets. Nothing trains on any of them.

$ python benchmarks/bench_shapes.py --baseline <commit> --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from bench_accuracy import mnist_test_pixels, prepare
from common import (
    REPO,
    VENV_BIN,
    make_store,
    newest_run,
    print_table,
    run_command,
    temporary_folder,
    write_results,
)

TURNS = (-30, -20, 20, 30)  # degrees, counter-clockwise
SLANTS = (-0.4, 0.4)  # the top moves right by this share of the height
NARROWED = (0.5, 0.3)  # digits other than 1, squeezed to this share of their width


def png(canvas: np.ndarray) -> bytes:
    """White-on-black ink as a PNG of dark ink on white paper."""
    return cv2.imencode(".png", 255 - canvas)[1].tobytes()


def placed(digit: np.ndarray, side: int) -> np.ndarray:
    """A 28x28 MNIST digit enlarged to 112 px in the middle of a black `side` px canvas."""
    canvas = np.zeros((side, side), np.uint8)
    start = (side - 112) // 2
    canvas[start : start + 112, start : start + 112] = cv2.resize(
        digit, (112, 112), interpolation=cv2.INTER_CUBIC
    )
    return canvas


def turned(digit: np.ndarray, degrees: float = 0.0, slant: float = 0.0) -> bytes:
    matrix = cv2.getRotationMatrix2D((100, 100), degrees, 1.0)
    matrix[0] += (0, -slant, 100 * slant)
    return png(cv2.warpAffine(placed(digit, 200), matrix, (200, 200), flags=cv2.INTER_LINEAR))


def narrowed(digit: np.ndarray, share: float) -> bytes:
    """A digit squeezed sideways to `share` of its width, as tall narrow handwriting: its
    upright strokes widened back, since a narrow hand keeps its pen."""
    canvas = placed(digit, 200)
    width = round(200 * share)
    squeezed = cv2.resize(canvas, (width, 200), interpolation=cv2.INTER_AREA)
    pen = cv2.getStructuringElement(cv2.MORPH_RECT, (round(12 * (1 - share)) | 1, 1))
    canvas[:] = 0
    canvas[:, (200 - width) // 2 : (200 - width) // 2 + width] = cv2.dilate(squeezed, pen)
    return png(canvas)


def with_a_flag(rng: np.random.Generator, one: np.ndarray) -> bytes:
    """A 1 given a flag from its top, 25-50 % of its height long at 15-50 degrees, bent a
    little, as wide as its stroke; on 40 % of them a foot too."""
    canvas = placed(one, 160)
    rows, columns = np.nonzero(canvas > 128)
    top, bottom = rows.min(), rows.max()
    width = max(3, round((canvas > 128).sum() / (bottom - top)))
    start = columns[rows <= top + 3].mean()
    length, angle = (bottom - top) * rng.uniform(0.25, 0.5), np.deg2rad(rng.uniform(15, 50))
    end = (start - length * np.cos(angle), top + 1 + length * np.sin(angle))
    bend = ((start + end[0]) / 2 + rng.uniform(-3, 3), (top + end[1]) / 2 + rng.uniform(0, 4))
    points = np.array([end, bend, (start, top + 1)], np.int32)
    cv2.polylines(canvas, [points], False, 255, thickness=width, lineType=cv2.LINE_AA)
    if rng.random() < 0.4:
        foot = columns[rows >= bottom - 3].mean()
        left, right = (bottom - top) * rng.uniform(0.1, 0.3, size=2)
        ends = (round(foot - left), int(bottom)), (round(foot + right), int(bottom))
        cv2.line(canvas, *ends, 255, width, cv2.LINE_AA)
    return png(canvas)


def with_a_bar(rng: np.random.Generator, seven: np.ndarray) -> bytes:
    """A 7 crossed at 45-60 % of its height by a bar 30-50 % of its height long."""
    canvas = placed(seven, 160)
    ink = canvas > 128
    rows, columns = np.nonzero(ink)
    top, bottom = rows.min(), rows.max()
    middle = int(top + (bottom - top) * rng.uniform(0.45, 0.6))
    crossing = columns[rows == middle]
    centre = crossing.mean() if crossing.size else columns.mean()
    width = int(min(14, max(3, ink[middle].sum())))
    half, tilt = (bottom - top) * rng.uniform(0.15, 0.25), (bottom - top) * rng.uniform(-0.05, 0.05)
    ends = (
        (round(centre - half), round(middle + tilt)),
        (round(centre + half), round(middle - tilt)),
    )
    cv2.line(canvas, *ends, 255, width, cv2.LINE_AA)
    return png(canvas)


def picture_sets(root: Path) -> dict[str, tuple[list[bytes], np.ndarray]]:
    """Each set's pictures and labels, by name."""
    from mnist_pipeline.serving.drawn_digits import (
        GERMAN_KINDS,
        drawn_digit,
        kind_and_medium,
        read_drawn_set,
    )

    images, labels = mnist_test_pixels(root)
    chosen, rng = slice(2000, 3500), np.random.default_rng(2024)
    sets = {}
    for degrees in TURNS:
        pictures = [turned(image, degrees) for image in images[chosen]]
        sets[f"turned {degrees:+d}"] = (pictures, labels[chosen])
    for slant in SLANTS:
        pictures = [turned(image, 0, slant) for image in images[chosen]]
        sets[f"slanted {slant:+.1f}"] = (pictures, labels[chosen])
    others = np.flatnonzero(labels[chosen] != 1) + chosen.start
    for share in NARROWED:
        pictures = [narrowed(image, share) for image in images[others]]
        sets[f"narrowed {share}"] = (pictures, labels[others])
    ones, sevens = (np.flatnonzero(labels == digit)[:600] for digit in (1, 7))
    sets["1 + flag"] = ([with_a_flag(rng, images[i]) for i in ones], labels[ones])
    sets["7 + bar"] = ([with_a_bar(rng, images[i]) for i in sevens], labels[sevens])
    for label, kind in GERMAN_KINDS.items():
        numbers = [n for n in range(60) if kind_and_medium(label, n)[0] == kind]
        drawn = [drawn_digit(label, n, seed) for seed in range(100, 130) for n in numbers]
        sets[kind] = ([digit.data for digit in drawn], np.full(len(drawn), label))
    for name in ("drawn_digits", "font_digits"):
        table = read_drawn_set(REPO / name)
        sets[name] = (list(table.image), table.label.to_numpy())
    return sets


def scores(train_run: str, sets: dict, pixels: dict) -> dict:
    """The model of `train_run`: its test accuracy and its accuracy on each set."""
    import mlflow

    from mnist_pipeline.data.transform import TransformSpec, normalize

    run = mlflow.get_run(train_run)
    transform = f"runs:/{run.data.tags['preprocess_run']}/transform.json"
    spec = TransformSpec.load(mlflow.artifacts.download_artifacts(transform))
    model = mlflow.tensorflow.load_model(f"runs:/{train_run}/model")
    figures = {"mnist test": run.data.metrics["accuracy"]}
    for name, (_, labels) in sets.items():
        answers = model.predict(normalize(pixels[name], spec), verbose=0).argmax(axis=1)
        figures[name] = float(np.mean(answers == labels))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a commit to train first")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

    # Beside the project, so that ../shared (the datasets' mirror) resolves there too.
    worktree = REPO.parent / f"bench-shapes-baseline-{os.getpid()}"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline],
                   cwd=REPO, check=True, capture_output=True)  # fmt: skip
    rows = []
    try:
        with temporary_folder("bench-shapes") as root:
            environment = make_store(root)
            preprocess_run = prepare("mnist", environment, root)
            sets = picture_sets(root)
            pixels = {name: np.stack([image_to_pixels(data) for data in pictures])
                      for name, (pictures, _) in sets.items()}  # fmt: skip
            for label, tree in ((f"baseline {args.baseline}", worktree), ("working tree", REPO)):
                for seed in args.seeds:
                    train = [str(VENV_BIN / "python"), str(tree / "train.py"), "--seed", str(seed)]
                    run_command([*train, "--preprocess_run", preprocess_run], environment, root)
                    figures = scores(newest_run("train").info.run_id, sets, pixels)
                    rows.append({"model": label, "seed": seed, **figures})
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO)
    print_table("Accuracy through the served transform, by model and seed", rows)
    means = [
        {"model": label, **{name: np.mean([row[name] for row in rows if row["model"] == label])
                            for name in rows[0] if name not in ("model", "seed")}}
        for label in dict.fromkeys(row["model"] for row in rows)
    ]  # fmt: skip
    print_table("Means over the seeds", means)
    write_results("bench_shapes", {"baseline": args.baseline, "rows": rows, "means": means})
    return 0


if __name__ == "__main__":
    sys.exit(main())
