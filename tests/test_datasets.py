"""IDX files and fetching: structure checks, checksums, atomic writes, retries, offline."""

from __future__ import annotations

import gzip
import http.server
import shutil
import socket
import struct
import threading
from dataclasses import replace

import numpy as np
import pytest
from conftest import MIRROR

from mnist_pipeline.data.catalogue import DATASETS
from mnist_pipeline.data.fetch import OFFICIAL, DownloadError, Retry, fetch_dataset
from mnist_pipeline.data.idx import load_folder, read_idx, write_idx
from mnist_pipeline.errors import UserError


def test_read_idx_round_trip(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "images.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "images.gz"), images)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (struct.pack(">IIII", 0x00000804, 1, 28, 28) + bytes(784), "bad IDX magic 0x00000804"),
        (
            struct.pack(">IIII", 0x00000803, 2, 28, 28) + bytes(784),
            "800 bytes, expected 1584 for 2 items",
        ),
        (
            struct.pack(">IIII", 0x00000803, 1, 32, 32) + bytes(1024),
            "images are 32x32, expected 28x28",
        ),
        (b"\x1f\x8b" + b"not really gzip", "cannot read"),
    ],
)
def test_read_idx_refuses_malformed_files(tmp_path, content, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content if content[:2] == b"\x1f\x8b" else gzip.compress(content))
    with pytest.raises(UserError) as error:
        read_idx(path)
    assert message in str(error.value)
    assert str(error.value).startswith("train-images-idx3-ubyte.gz: ")


def test_load_folder_refuses_swapped_files(tmp_path, tiny_data):
    for path in tiny_data.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(tiny_data / "train-labels-idx1-ubyte.gz", tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(UserError, match="holds labels, expected images"):
        load_folder(tmp_path, DATASETS["mnist"])


def test_unverified_files_are_refused_and_nothing_is_written(tmp_path, tiny_data):
    destination = tmp_path / "data" / "out"
    with pytest.raises(UserError, match="differs from the official file .* allow_unverified=true"):
        fetch_dataset(DATASETS["mnist"], str(tiny_data), destination)
    assert list(tmp_path.iterdir()) == []  # not even the folders that it would have made
    fetched = fetch_dataset(DATASETS["mnist"], str(tiny_data), destination, allow_unverified=True)
    assert [file.verified for file in fetched] == [False] * 4
    assert sorted(p.name for p in destination.iterdir()) == sorted(
        p.name for p in tiny_data.iterdir()
    )


class FlakyServer(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, answering 503 to the first request for each file."""

    failed: set = set()

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        if self.path not in self.failed:
            self.failed.add(self.path)
            self.send_error(503, "try again")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_download_retries_transient_errors_and_shows_progress(tmp_path, tiny_data):
    handler = lambda *args, **kwargs: FlakyServer(*args, directory=str(tiny_data), **kwargs)  # noqa: E731
    FlakyServer.failed = set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    progressed = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        fetched = fetch_dataset(
            DATASETS["mnist"],
            url,
            tmp_path,
            allow_unverified=True,
            progress=lambda name, total: progressed.append,
            retries=Retry(first_wait_seconds=0),
        )
    finally:
        server.shutdown()
    assert [file.source for file in fetched][0] == url + "train-images-idx3-ubyte.gz"
    assert len(FlakyServer.failed) == 4  # every file failed once, then arrived
    assert sum(progressed) == sum((tiny_data / f.name).stat().st_size for f in fetched)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_download_fails_in_one_line_naming_the_source_switch(tmp_path):
    unreachable = f"http://127.0.0.1:{closed_port()}/"
    spec = replace(DATASETS["mnist"], mirrors=(unreachable,))
    with pytest.raises(DownloadError) as error:
        fetch_dataset(spec, OFFICIAL, tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "every official mirror failed" in message and "-P source=" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not (MIRROR / "mnist").is_dir(), reason="no local mirror of MNIST")
def test_the_mnist_mirror_matches_the_official_checksums(tmp_path):
    fetched = fetch_dataset(DATASETS["mnist"], str(MIRROR / "mnist"), tmp_path)
    assert all(file.verified for file in fetched)
    assert [file.count for file in fetched] == [60000, 60000, 10000, 10000]


@pytest.mark.skipif(not (MIRROR / "mnist").is_dir(), reason="no local mirror of MNIST")
def test_mnists_files_are_not_taken_as_another_datasets_even_unverified(tmp_path):
    with pytest.raises(UserError) as refused:
        fetch_dataset(DATASETS["fashion"], str(MIRROR / "mnist"), tmp_path, allow_unverified=True)
    assert str(refused.value) == (
        "train-images-idx3-ubyte.gz: the official file of mnist, not of this dataset: check "
        "-P source, or choose -P dataset=mnist"
    )
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(not (MIRROR / "mnist").is_dir(), reason="no local mirror of MNIST")
def test_a_source_folder_of_gunzipped_files_is_fetched_and_verified(tmp_path):
    """As `gunzip *.gz` leaves the files, or Kaggle's copy names them (`train-images.idx3-ubyte`)."""
    source = tmp_path / "source"
    source.mkdir()
    names = [idx_file.name for idx_file in DATASETS["mnist"].files]
    given = ["train-images-idx3-ubyte", "train-labels.idx1-ubyte", *names[2:]]  # two gunzipped
    for name, raw in zip(names, given, strict=True):
        content = (MIRROR / "mnist" / name).read_bytes()
        (source / raw).write_bytes(gzip.decompress(content) if raw != name else content)
    fetched = fetch_dataset(DATASETS["mnist"], str(source), tmp_path / "data")
    assert all(file.verified for file in fetched)
    assert fetched[1].source == str(source / "train-labels.idx1-ubyte")
    images = read_idx(tmp_path / "data" / names[0])
    assert images.shape == (60000, 28, 28)
    assert gzip.decompress((tmp_path / "data" / names[0]).read_bytes())[:4] == b"\0\0\x08\x03"


@pytest.mark.skipif(not (MIRROR / "fashion").is_dir(), reason="no local mirror of Fashion-MNIST")
@pytest.mark.skipif(not (MIRROR / "mnist").is_dir(), reason="no local mirror of MNIST")
def test_a_folder_of_another_datasets_files_is_not_fetched_over(tmp_path):
    """`-P dataset=fashion -P outdir=data/mnist` would replace MNIST's files with Fashion's."""
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for idx_file in DATASETS["mnist"].files:
        (mnist / idx_file.name).symlink_to(MIRROR / "mnist" / idx_file.name)
    with pytest.raises(UserError) as refused:
        fetch_dataset(DATASETS["fashion"], str(MIRROR / "fashion"), mnist, allow_unverified=True)
    assert str(refused.value) == (
        f"{mnist} holds the official files of mnist, which fashion's would replace: "
        "choose another -P outdir"
    )
    assert all(path.is_symlink() for path in mnist.iterdir())  # nothing replaced
    # The same dataset fetched again into its own folder replaces its files, as before.
    fetched = fetch_dataset(DATASETS["mnist"], str(MIRROR / "mnist"), mnist)
    assert all(file.verified for file in fetched)
    assert not any(path.is_symlink() for path in mnist.iterdir())


@pytest.mark.skipif(not (MIRROR / "fashion").is_dir(), reason="no local mirror of Fashion-MNIST")
def test_the_fashion_mirror_is_refused_unless_allowed(tmp_path):
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz: content differs"):
        fetch_dataset(DATASETS["fashion"], str(MIRROR / "fashion"), tmp_path)
    fetched = fetch_dataset(
        DATASETS["fashion"], str(MIRROR / "fashion"), tmp_path, allow_unverified=True
    )
    # The labels are the official files; the rebuilt images are not.
    assert [file.verified for file in fetched] == [False, True, False, True]
    assert fetched[0].sha256 == "38f293c4a3881af2a3950da2d9954219bc9c3be886ca598c16807d354b06895e"
