"""png_to_pandas.py run as a participant runs it, from a folder holding their drawings.

No server here (tests/test_serving.py posts the script's requests to a real one): these
tests read what the script wrote and printed, and compare the pixels with what the served
model computes from the same files (pictures.image_to_pixels).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, drawing

from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

SCRIPT = REPO / "png_to_pandas.py"
COLUMNS = [str(column) for column in range(28)]


def run(folder: Path, *args: str, python_options=()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, *python_options, str(SCRIPT), *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result


def save(folder: Path, name: str, image: np.ndarray) -> bytes:
    ok_, data = cv2.imencode(Path(name).suffix, image)
    assert ok_
    (folder / name).write_bytes(data.tobytes())
    return data.tobytes()


def curl(source: str, port: int = 5000) -> str:
    return f"curl -d {source} -H 'Content-Type: application/json' localhost:{port}/invocations"


def test_a_drawing_becomes_the_workshops_28x28_frame(tmp_path):
    data = save(tmp_path, "my_digit.png", drawing(4, corner="bottom-right"))
    result = ok(run(tmp_path, "my_digit.png"))
    request = json.loads((tmp_path / "example.json").read_text())
    assert request == {
        "dataframe_split": {"columns": COLUMNS, "data": image_to_pixels(data).tolist()}
    }
    pixels = np.array(request["dataframe_split"]["data"])
    assert pixels.shape == (28, 28) and pixels.min() == 0 and pixels.max() == 255
    assert result.stdout.splitlines() == [
        "Wrote 1 image(s) to example.json (frame format)",
        curl("@example.json"),
    ]
    assert result.stderr == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["example.json", "my_digit.png"]


def test_several_files_stack_as_28_row_blocks_in_order(tmp_path):
    files = [
        save(tmp_path, "a.png", drawing(1)),
        save(tmp_path, "b.jpg", drawing(7, corner="bottom-left")),
        save(tmp_path, "c.png", drawing(3, ink=255, paper=0)),
    ]
    ok(run(tmp_path, "a.png", "b.jpg", "c.png", "--port", "5001"))
    rows = json.loads((tmp_path / "example.json").read_text())["dataframe_split"]["data"]
    assert len(rows) == 3 * 28
    expected = np.concatenate([image_to_pixels(data) for data in files])
    assert np.array_equal(np.array(rows), expected)


def test_base64_format_sends_the_files_as_they_are(tmp_path):
    files = [save(tmp_path, "a.png", drawing(2)), save(tmp_path, "b.jpg", drawing(5))]
    result = ok(run(tmp_path, "a.png", "b.jpg", "--format", "base64", "--port", "8080"))
    request = json.loads((tmp_path / "example.json").read_text())
    assert list(request) == ["dataframe_records"]
    assert [
        base64.b64decode(r["image"], validate=True) for r in request["dataframe_records"]
    ] == files
    assert result.stdout.splitlines() == [
        "Wrote 2 image(s) to example.json (base64 format)",
        curl("@example.json", 8080),
    ]


def test_output_dash_writes_the_json_alone_on_stdout(tmp_path):
    data = save(tmp_path, "my_digit.png", drawing(8))
    result = ok(run(tmp_path, "my_digit.png", "--output", "-"))
    assert json.loads(result.stdout)["dataframe_split"]["data"] == image_to_pixels(data).tolist()
    assert len(result.stdout.strip().splitlines()) == 1
    assert result.stderr.strip().splitlines() == [curl("@-")]
    assert not (tmp_path / "example.json").exists()


def test_output_to_a_named_file_and_the_curl_names_it(tmp_path):
    save(tmp_path, "my_digit.png", drawing(6))
    (tmp_path / "my requests").mkdir()
    result = ok(run(tmp_path, "my_digit.png", "-o", "my requests/six.json"))
    assert (tmp_path / "my requests" / "six.json").exists()
    # Quoted, so that the curl pasted into a shell reads the file whose name has a space.
    assert result.stdout.splitlines()[-1] == curl("'@my requests/six.json'")
    assert shlex.split(result.stdout.splitlines()[-1])[2] == "@my requests/six.json"
    assert sorted(path.name for path in (tmp_path / "my requests").iterdir()) == ["six.json"]


def test_an_existing_example_is_replaced(tmp_path):
    save(tmp_path, "my_digit.png", drawing(0))
    (tmp_path / "example.json").write_text("old")
    ok(run(tmp_path, "my_digit.png"))
    assert "dataframe_split" in json.loads((tmp_path / "example.json").read_text())


def test_fashion_fits_pictures_as_objects(tmp_path):
    data = save(tmp_path, "item.png", drawing(1))
    ok(run(tmp_path, "item.png", "--dataset", "fashion"))
    rows = json.loads((tmp_path / "example.json").read_text())["dataframe_split"]["data"]
    assert rows == image_to_pixels(data, "object").tolist()
    assert rows != image_to_pixels(data, "digit").tolist()


@pytest.mark.parametrize(
    ("make", "args", "code", "expected"),
    [
        pytest.param(
            None, ["missing.png"], 1, "No such file or directory: 'missing.png'", id="missing-file"
        ),
        pytest.param(
            lambda f: (f / "notes.png").write_text("not a picture"),
            ["notes.png"],
            1,
            "notes.png: bytes are not a PNG or JPEG image",
            id="not-an-image",
        ),
        pytest.param(
            lambda f: save(f, "blank.png", np.full((300, 400), 255, np.uint8)),
            ["blank.png"],
            1,
            "blank.png: image is a single flat colour",
            id="blank-page",
        ),
        pytest.param(
            lambda f: save(f, "huge.png", np.zeros((6000, 6000), np.uint8)),
            ["huge.png"],
            1,
            "huge.png: image declares 6000x6000 pixels",
            id="decompression-bomb",
        ),
        pytest.param(
            lambda f: save(f, "d.png", drawing(3)),
            ["d.png", "--format", "pixels"],
            2,
            "argument --format: invalid choice: 'pixels'",
            id="unknown-format",
        ),
        pytest.param(None, [], 2, "the following arguments are required: images", id="no-file"),
        pytest.param(
            lambda f: save(f, "d.png", drawing(3)),
            ["d.png", "--output", "no/such/folder/example.json"],
            1,
            "cannot write no/such/folder/example.json: there is no folder no/such/folder",
            id="output-into-a-missing-folder",
        ),
        pytest.param(
            lambda f: (save(f, "d.png", drawing(3)), (f / "out").mkdir()),
            ["d.png", "--output", "out"],
            1,
            "cannot write out: it is a folder; name a file",
            id="output-onto-a-folder",
        ),
        pytest.param(
            lambda f: cv2.imwrite(str(f / "d.webp"), drawing(3)),
            ["d.webp", "--format", "base64"],
            1,
            "d.webp: image is WEBP, expected PNG or JPEG",
            id="webp-as-base64",
        ),
    ],
)
def test_a_mistake_is_one_line_and_writes_nothing(tmp_path, make, args, code, expected):
    if make:
        make(tmp_path)
    (tmp_path / "example.json").write_text("previous")
    result = run(tmp_path, *args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("png_to_pandas.py: error: "), result.stderr
    assert expected in lines[0]
    assert result.stdout == ""
    assert (tmp_path / "example.json").read_text() == "previous"
    assert not list(tmp_path.rglob("*.part"))


def test_converting_a_drawing_does_not_import_tensorflow(tmp_path):
    """A quick command: importing TensorFlow alone takes seconds (PITFALLS 10)."""
    save(tmp_path, "my_digit.png", drawing(9))
    result = ok(run(tmp_path, "my_digit.png", python_options=("-X", "importtime")))
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not {
        name for name in imported if name.split(".")[0] in ("tensorflow", "keras", "mlflow")
    }
