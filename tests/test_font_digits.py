"""make_font_digits.py as a user runs it, the checked-in font_digits/ it made, training's
synthetic supplement, and the rule that keeps the set honest: the supplement never uses a
font family the set is typed in.

No TensorFlow here. Regenerating needs the fonts that .ci/run installs (data/fonts.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from mnist_pipeline.data import fonts
from mnist_pipeline.serving.drawn_digits import read_drawn_set
from mnist_pipeline.serving.font_digits import FONT_DIGITS, FONTS_FILE, KINDS, fonts_txt
from mnist_pipeline.serving.picture_to_pixels import image_to_pixels
from mnist_pipeline.training import synthetic


def test_the_supplement_and_the_evaluation_set_share_no_font():
    evaluation, supplement = fonts.EVALUATION_FONTS, fonts.SUPPLEMENT_FONTS
    assert not set(evaluation) & set(supplement)
    evaluation_files = {file for _, file in fonts.faces(evaluation)}
    supplement_files = {file for _, file in fonts.faces(supplement)}
    assert not evaluation_files & supplement_files
    # The checked-in list is the one the set was made from, and its families are the
    # evaluation's.
    listed = (FONT_DIGITS / FONTS_FILE).read_text()
    assert listed == fonts_txt()
    assert {line.split("\t")[0] for line in listed.splitlines()} == set(evaluation)
    # And the glyphs that training reads are the supplement's.
    assert set(np.load(synthetic.GLYPHS_FILE)["faces"]) == supplement_files


def test_the_checked_in_glyphs_are_what_the_supplement_fonts_render(tmp_path):
    written = synthetic.write_glyphs(tmp_path / "glyphs.npz")
    made, checked_in = np.load(tmp_path / "glyphs.npz"), np.load(synthetic.GLYPHS_FILE)
    assert written == 10 * len(fonts.faces(fonts.SUPPLEMENT_FONTS))
    for name in ("glyphs", "labels", "faces"):
        assert np.array_equal(made[name], checked_in[name]), name
    assert not list(tmp_path.glob("*.part*"))


def test_the_supplement_is_seeded_digits_as_mnist_draws_them():
    images, labels = synthetic.supplement(50, seed=3)
    synthetic.supplement.cache_clear()  # made again, rather than the same arrays handed back
    again, same_labels = synthetic.supplement(50, seed=3)
    other, _ = synthetic.supplement(50, seed=4)
    assert again is not images
    assert images.shape == (50, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, again) and np.array_equal(labels, same_labels)
    assert not np.array_equal(images, other)
    assert set(labels) <= set(range(10)) and len(set(labels)) > 5
    # White on black, inside MNIST's 20x20 box with a border of blank pixels.
    assert (images.max(axis=(1, 2)) > 100).all()
    assert images[:, :2, :].max() == 0 and images[:, :, -2:].max() == 0


def test_a_workers_next_trial_gets_the_supplement_made_for_the_last_one():
    """A search's worker runs trial after trial with one count and seed: the digits are
    made once, and handed out read-only, so that no trial changes another's."""
    synthetic.supplement.cache_clear()
    images, labels = synthetic.supplement(20, seed=7)
    again, same_labels = synthetic.supplement(20, seed=7)
    assert again is images and same_labels is labels
    assert not images.flags.writeable and not labels.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        images[0, 0, 0] = 1
    assert synthetic.supplement(20, seed=8)[0] is not images


def test_the_supplement_writes_ones_with_a_long_flag_and_crossed_sevens():
    """Half of its 1s and 7s: a stem with a long flag down to the left of its top, and a 7
    with a bar across its stem at half its height."""
    bank = np.load(synthetic.GLYPHS_FILE)
    rng = np.random.default_rng(0)
    for index in np.flatnonzero(bank["labels"] == 1)[:10]:
        skeleton = synthetic._skeleton(bank["glyphs"][index] > 127)
        one = synthetic._continental(rng, 1, skeleton) > 0
        rows, columns = np.nonzero(one)
        top, bottom, stem = rows.min(), rows.max(), np.bincount(columns).argmax()
        flag = (columns < stem - 1) & (rows < bottom)  # a foot lies on the bottom row
        reach, drop = stem - columns[flag].min(), rows[flag].max() - top
        assert np.hypot(reach, drop) >= 0.28 * (bottom - top) and drop > 0, index
    for index in np.flatnonzero(bank["labels"] == 7)[:10]:
        skeleton = synthetic._skeleton(bank["glyphs"][index] > 127)
        bar = (synthetic._continental(rng, 7, skeleton) > 0) & (skeleton == 0)
        rows, _ = np.nonzero(skeleton)
        assert bar.any() and set(np.nonzero(bar)[0]) == {(rows.min() + rows.max()) // 2}


def test_the_supplement_writes_digits_tall_and_narrow():
    """A fifth of its digits other than 1 are squeezed sideways, as some people write: the
    model read such a 2, 4 or 8, a strip a few pixels wide once fitted to 20x20, as a 1."""
    images, labels = synthetic.supplement(400, seed=5)
    aspects = []
    for image in images[labels != 1]:
        rows, columns = np.nonzero(image > 64)
        aspects.append((np.ptp(columns) + 1) / (np.ptp(rows) + 1))
    assert np.mean(np.array(aspects) <= 0.5) >= 0.05  # 0.01 before
    bank = np.load(synthetic.GLYPHS_FILE)
    rng = np.random.default_rng(0)
    for index in np.flatnonzero(bank["labels"] != 1)[:20]:
        skeleton = synthetic._skeleton(bank["glyphs"][index] > 127)
        rows, columns = np.nonzero(synthetic._narrowed(rng, skeleton))
        assert set(rows) == set(np.nonzero(skeleton)[0])  # as tall, every row still drawn
        assert (np.ptp(columns) + 1) / (np.ptp(rows) + 1) <= 0.52, index


def test_the_checked_in_set_is_what_the_script_makes(tmp_path):
    """The script's first picture of each kind, for each digit, byte for byte."""
    folder = tmp_path / "font_digits"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    sheet = tmp_path / "sheet.png"
    result = subprocess.run(
        [sys.executable, "make_font_digits.py", "--out", str(folder), "--per_kind", "1"]
        + ["--sheet", str(sheet)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"Wrote {10 * len(KINDS)} digits" in result.stdout
    assert sheet.stat().st_size > 0
    made = read_drawn_set(folder)
    checked_in = read_drawn_set(FONT_DIGITS).set_index("file")
    for row in made.itertuples():
        assert row.image == checked_in.loc[row.file, "image"], row.file
        assert (row.label, row.kind) == tuple(checked_in.loc[row.file, ["label", "kind"]])
    assert (folder / FONTS_FILE).read_text() == fonts_txt()


def test_every_checked_in_picture_reaches_the_model_with_ink():
    pictures = read_drawn_set(FONT_DIGITS)
    assert set(pictures["kind"]) == set(KINDS)
    assert sorted(pictures["label"].unique()) == list(range(10))
    for row in pictures.itertuples():
        pixels = image_to_pixels(row.image)  # a refusal would raise UserError
        assert pixels.shape == (28, 28) and pixels.max() > 100, row.file


def test_a_font_that_is_not_installed_is_named_with_where_to_look():
    with pytest.raises(fonts.UserError, match="font NoSuchFont.ttf is not installed; see "):
        fonts.font_path("NoSuchFont.ttf")
