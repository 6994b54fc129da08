"""make_drawn_digits.py run as a user runs it, and the checked-in drawn_digits/ it made.

No TensorFlow here: these tests check that the set is what the script makes, byte for
byte, and that every picture reaches the model as a 28x28 image with ink in it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO

from mnist_pipeline.errors import UserError
from mnist_pipeline.serving.drawn_digits import (
    DRAWN_DIGITS,
    KINDS,
    LABELS_FILE,
    MEDIA,
    drawn_digit,
    kind_and_medium,
    labels_csv,
    read_drawn_set,
)
from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

SCRIPT = REPO / "make_drawn_digits.py"
# Enough pictures of each digit to meet every kind: a run of the media, then a German run.
SMALL = 2 * len(MEDIA)


def run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("drawn") / "drawn_digits"
    result = run(
        "--out", str(folder), "--per_digit", str(SMALL), "--sheet", str(folder.parent / "sheet.png")
    )
    assert result.stdout.startswith(f"Wrote {10 * SMALL} digits (")
    assert "MB) in " in result.stdout
    return folder


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_pictures(small_set, tmp_path):
    again = tmp_path / "again"
    run("--out", str(again), "--per_digit", str(SMALL))
    assert contents(again) == contents(small_set)
    other = tmp_path / "other"
    run("--out", str(other), "--per_digit", "1", "--seed", "1")
    pictures = {name: data for name, data in contents(other).items() if name != LABELS_FILE}
    assert len(pictures) == 10
    assert all(data != contents(small_set)[name] for name, data in pictures.items())


def test_a_second_run_replaces_the_folder_whole(small_set, tmp_path):
    folder = tmp_path / "drawn_digits"
    run("--out", str(folder), "--per_digit", "3")
    (folder / "stray.png").write_bytes(b"left over")
    run("--out", str(folder), "--per_digit", "2")
    pictures = {name: data for name, data in contents(folder).items() if name != LABELS_FILE}
    # The first pictures of each digit are the same whatever the count.
    assert len(pictures) == 20
    assert pictures == {name: contents(small_set)[name] for name in pictures}
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_every_kind_and_label_and_labels_csv_names_exactly_the_files(small_set):
    drawn = read_drawn_set(small_set)
    assert list(drawn.columns) == ["file", "label", "kind", "image"]
    assert set(drawn.kind) == set(KINDS)
    assert drawn.label.value_counts().to_dict() == dict.fromkeys(range(10), SMALL)
    assert sorted(drawn.file) == sorted(
        p.name for p in small_set.iterdir() if p.name != LABELS_FILE
    )
    assert set(drawn[drawn.kind == "european1"].label) == {1}
    assert set(drawn[drawn.kind == "crossed7"].label) == {7}
    extensions = drawn.file.str.rsplit(".", n=1).str[1]
    assert set(extensions[drawn.kind == "photo"]) == {"jpg"}
    assert set(extensions[drawn.kind.isin(MEDIA[:-1])]) == {"png"}


def test_every_picture_decodes_and_reaches_the_model_as_28x28_with_ink(small_set):
    drawn = read_drawn_set(small_set)
    for row in drawn.itertuples():
        decoded = cv2.imdecode(np.frombuffer(row.image, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and min(decoded.shape[:2]) >= 100, row.file
        if row.kind == "rgba":
            assert decoded.shape[2] == 4 and decoded[..., 3].min() == 0, row.file
        pixels = image_to_pixels(row.image)
        assert pixels.shape == (28, 28) and pixels.dtype == np.uint8, row.file
        # Ink over a stroke's length, however dim: a pencil's 1 px line, averaged down to
        # 28x28, peaks at a quarter of full brightness.
        assert pixels.max() >= 48 and (pixels > 32).sum() >= 15, row.file


def test_the_checked_in_set_is_what_the_script_makes_with_its_defaults():
    # Regenerating all 600 takes longer than a test should: labels.csv in full, and the
    # first run of media of each digit and the first German run, byte for byte.
    drawn = read_drawn_set(DRAWN_DIGITS)
    assert len(drawn) == 600
    numbers = drawn.file.str.split("-").str[1].astype(int)
    assert (drawn.label.tolist(), numbers.tolist()) == (
        [label for label in range(10) for _ in range(60)],
        list(range(60)) * 10,
    )
    kinds = [
        kind_and_medium(label, number)[0]
        for label, number in zip(drawn.label, numbers, strict=True)
    ]
    assert drawn.kind.tolist() == kinds
    assert sorted(path.name for path in DRAWN_DIGITS.iterdir()) == sorted(
        [*drawn.file, LABELS_FILE]
    )
    images = dict(zip(drawn.file, drawn.image, strict=True))
    for label in range(10):
        for number in range(2 * len(MEDIA) if label in (1, 7) else len(MEDIA)):
            digit = drawn_digit(label, number, seed=0)
            assert images[digit.file] == digit.data, digit.file


def test_labels_csv_is_the_digits_in_order():
    digits = [drawn_digit(label, 0, seed=0) for label in (3, 1)]
    assert (
        labels_csv(digits)
        == f"file,label,kind\n{digits[0].file},3,pencil\n{digits[1].file},1,pencil\n"
    )


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda folder: folder.rename(folder.with_name("gone")), "no such folder"),
        (lambda folder: (folder / LABELS_FILE).unlink(), "labels.csv: no such file"),
        (lambda folder: (folder / "0-000-pencil.png").unlink(), "names 1 missing file(s)"),
        (lambda folder: (folder / LABELS_FILE).write_text(""), "not a table of file,label,kind"),
        (
            lambda folder: (folder / LABELS_FILE).write_text("file,label,kind\nx.png,one,pen\n"),
            "not a table of file,label,kind",
        ),
    ],
)
def test_a_missing_folder_labels_or_file_is_one_line(tmp_path, break_it, message):
    folder = tmp_path / "drawn_digits"
    folder.mkdir()
    digit = drawn_digit(0, 0, seed=0)
    (folder / digit.file).write_bytes(digit.data)
    (folder / LABELS_FILE).write_text(labels_csv([digit]))
    assert read_drawn_set(folder).image.tolist() == [digit.data]
    break_it(folder)
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        read_drawn_set(folder)
    assert "\n" not in str(caught.value)


def refused(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    assert result.returncode != 0 and result.stdout == ""
    return result


def test_the_script_refuses_a_bad_count_in_one_line():
    result = refused("--per_digit", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "make_drawn_digits.py: error: argument --per_digit: expected a number of at least 1, got 0"
    ]


def test_the_script_never_replaces_a_folder_that_is_not_a_set(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = refused("--out", str(tmp_path), "--per_digit", "1")
    assert result.stderr.strip().splitlines() == [
        f"make_drawn_digits.py: error: {tmp_path}: exists and holds no labels.csv; "
        "choose a new folder"
    ]
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_the_sheet_shows_every_picture_beside_the_models_view(small_set):
    sheet = cv2.imread(str(small_set.parent / "sheet.png"))
    # A line per digit and one for each German digit; six media, each two tiles wide.
    assert sheet.shape[0] == 12 * (84 + 16 + 10)
    assert sheet.shape[1] == len(MEDIA) * (2 * 84 + 4 + 10)
    # Each tile's right half is what the model sees of a picture of the set, enlarged.
    seen = {image_to_pixels(data).tobytes() for data in read_drawn_set(small_set)["image"]}
    shown = set()
    for top in range(16, sheet.shape[0], 84 + 16 + 10):
        for left in range(0, sheet.shape[1], 2 * 84 + 4 + 10):
            view = sheet[top : top + 84, left + 84 + 4 : left + 2 * 84 + 4, 0]
            if (view != 255).any():  # a tile, not the white of a short line's end
                shown.add(np.ascontiguousarray(view[::3, ::3]).tobytes())
    assert len(shown) >= 12 and shown <= seen  # a tile or more on every line
