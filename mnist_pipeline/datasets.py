"""Dataset specs, IDX files, and fetching the four canonical files from a mirror."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
IMAGE_SIDE = 28
OFFICIAL = "official"


@dataclass(frozen=True)
class IdxFile:
    """One of the four canonical files, with the checksums of its official version.

    `sha256` is that of the decompressed file, `gz_md5` that of the official `.gz`
    (the form torchvision pins). Either one matching makes the file verified.
    """

    name: str
    kind: str  # "images" or "labels"
    split: str  # "train" or "test"
    count: int
    sha256: str | None
    gz_md5: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    mirrors: tuple[str, ...]
    files: tuple[IdxFile, ...]
    class_names: tuple[str, ...]


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        mirrors=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        files=(
            IdxFile(
                "train-images-idx3-ubyte.gz",
                "images",
                "train",
                60000,
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            ),
            IdxFile(
                "train-labels-idx1-ubyte.gz",
                "labels",
                "train",
                60000,
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "d53e105ee54ea40749a09fcbcd1e9432",
            ),
            IdxFile(
                "t10k-images-idx3-ubyte.gz",
                "images",
                "test",
                10000,
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "9fb629c4189551a2d022fa330f9573f3",
            ),
            IdxFile(
                "t10k-labels-idx1-ubyte.gz",
                "labels",
                "test",
                10000,
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
        class_names=tuple(str(digit) for digit in range(10)),
    ),
    "fashion": DatasetSpec(
        name="fashion",
        title="Fashion-MNIST",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        ),
        files=(
            IdxFile(
                "train-images-idx3-ubyte.gz",
                "images",
                "train",
                60000,
                None,
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            ),
            IdxFile(
                "train-labels-idx1-ubyte.gz",
                "labels",
                "train",
                60000,
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "25c81989df183df01b3e8a0aad5dffbe",
            ),
            IdxFile(
                "t10k-images-idx3-ubyte.gz",
                "images",
                "test",
                10000,
                None,
                "bef4ecab320f06d8554ea6380940ec79",
            ),
            IdxFile(
                "t10k-labels-idx1-ubyte.gz",
                "labels",
                "test",
                10000,
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    """Return the spec of `name`, or raise ValueError listing the choices."""
    try:
        return DATASETS[name]
    except KeyError:
        choices = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; choose one of: {choices}") from None


# ---------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Return the array in an IDX file (gzip-compressed or not).

    Images come back as uint8 of shape (n, 28, 28), labels as uint8 of shape (n,).
    Raises ValueError naming the file for anything that is not a well-formed IDX file.
    """
    path = Path(path)
    try:
        raw = _read_maybe_gzip(path)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path.name}: cannot read ({error})") from None
    return parse_idx(raw, path.name)


def parse_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """Return the uint8 array in decompressed IDX bytes; see read_idx."""
    if len(raw) < 8:
        raise ValueError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic == IMAGE_MAGIC:
        count, rows, cols = struct.unpack(">III", raw[4:16]) if len(raw) >= 16 else (0, 0, 0)
        if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(f"{name}: images are {rows}x{cols}, expected 28x28")
        header, shape = 16, (count, rows, cols)
    elif magic == LABEL_MAGIC:
        (count,) = struct.unpack(">I", raw[4:8])
        header, shape = 8, (count,)
    else:
        raise ValueError(
            f"{name}: bad IDX magic 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x} (images) "
            f"or 0x{LABEL_MAGIC:08x} (labels)"
        )
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{name}: {len(raw)} bytes, expected {expected} for {count:,} items")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write uint8 images (n, 28, 28) or labels (n,) as a gzip-compressed IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim == 3:
        header = struct.pack(">IIII", IMAGE_MAGIC, *array.shape)
    elif array.ndim == 1:
        header = struct.pack(">II", LABEL_MAGIC, array.shape[0])
    else:
        raise ValueError(f"expected images (n, 28, 28) or labels (n,), got shape {array.shape}")
    with gzip.open(path, "wb", compresslevel=6) as handle:
        handle.write(header + array.tobytes())


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


@dataclass
class Dataset:
    """The four arrays of a dataset folder: uint8 images (n, 28, 28) and labels (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_folder(folder: str | os.PathLike, expect_full: bool = False) -> Dataset:
    """Read the four canonical files from `folder`, checking that they fit together.

    With expect_full, the counts must be the canonical 60,000 and 10,000.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of IDX files")
    arrays = {}
    for idx_file in DATASETS["mnist"].files:
        path = folder / idx_file.name
        if not path.exists():
            # Accept folders whose files were decompressed by hand.
            path = folder / idx_file.name.removesuffix(".gz")
        if not path.exists():
            raise FileNotFoundError(f"{folder / idx_file.name}: file missing")
        array = read_idx(path)
        expected_dims = 3 if idx_file.kind == "images" else 1
        if array.ndim != expected_dims:
            raise ValueError(f"{path.name}: holds {_kind_of(array)}, expected {idx_file.kind}")
        if expect_full and array.shape[0] != idx_file.count:
            raise ValueError(f"{path.name}: {array.shape[0]:,} items, expected {idx_file.count:,}")
        arrays[(idx_file.split, idx_file.kind)] = array
    for split in ("train", "test"):
        images, labels = arrays[(split, "images")], arrays[(split, "labels")]
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{folder}: {split} set has {images.shape[0]:,} images "
                f"but {labels.shape[0]:,} labels"
            )
        if labels.size and labels.max() >= 10:
            raise ValueError(f"{folder}: {split} labels go up to {labels.max()}, expected 0-9")
    return Dataset(
        arrays[("train", "images")],
        arrays[("train", "labels")],
        arrays[("test", "images")],
        arrays[("test", "labels")],
    )


def pixel_statistics(images: np.ndarray) -> tuple[float, float]:
    """Return the mean and standard deviation of all pixels, on the 0-255 scale."""
    pixels = np.asarray(images, dtype=np.float64)
    return float(pixels.mean()), float(pixels.std())


def _kind_of(array: np.ndarray) -> str:
    return "images" if array.ndim == 3 else "labels"


# ---------------------------------------------------------------- fetching


@dataclass
class FetchedFile:
    name: str
    source: str
    sha256: str  # of the decompressed content, as seen
    verified: bool
    count: int
    size_bytes: int


def fetch_dataset(
    spec: DatasetSpec,
    source: str,
    destination: str | os.PathLike,
    allow_unverified: bool = False,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
) -> list[FetchedFile]:
    """Fetch the four files of `spec` from `source` into `destination` and verify them.

    `source` is "official" (the spec's mirrors, in order), a local folder, or a base URL
    (http, https or file) holding the four `*-idx?-ubyte.gz` files. Each file is checked
    for IDX structure and against the official checksums; files that differ from the
    official ones raise ValueError unless allow_unverified is set. Nothing is written
    into `destination` before all four files have passed: they are fetched into a
    temporary folder beside it and moved into place one by one with os.replace.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    fetched = []
    with tempfile.TemporaryDirectory(dir=destination, prefix=".fetch-") as staging:
        for idx_file in spec.files:
            staged = Path(staging) / idx_file.name
            origin = _fetch_one(idx_file.name, source, spec, staged, progress)
            fetched.append(_verify(idx_file, staged, origin, allow_unverified))
        for idx_file in spec.files:
            os.replace(Path(staging) / idx_file.name, destination / idx_file.name)
    return fetched


def _fetch_one(name, source, spec, target: Path, progress) -> str:
    if source == OFFICIAL:
        errors = []
        for mirror in spec.mirrors:
            try:
                download(mirror + name, target, progress)
                return mirror + name
            except DownloadError as error:
                errors.append(str(error))
        raise DownloadError(
            f"{name}: every official mirror failed ({errors[-1]}); if you are offline or "
            "behind a proxy, fetch the four files by hand and pass -P source=<folder or base URL>"
        )
    if "://" in source and not source.startswith("file://"):
        url = source.rstrip("/") + "/" + name
        try:
            download(url, target, progress)
        except DownloadError as error:
            raise DownloadError(
                f"{error}; check -P source, or fetch the files by hand and pass -P source=<folder>"
            ) from None
        return url
    folder = Path(source.removeprefix("file://")).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"source {source!r} is neither 'official', a URL, nor an existing folder"
        )
    path = folder / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: file missing from source folder")
    shutil.copyfile(path, target)
    return str(path.resolve())


def _verify(idx_file: IdxFile, path: Path, origin: str, allow_unverified: bool) -> FetchedFile:
    compressed = path.read_bytes()
    try:
        raw = gzip.decompress(compressed) if compressed[:2] == b"\x1f\x8b" else compressed
    except (OSError, EOFError) as error:
        raise ValueError(f"{idx_file.name}: corrupt gzip data ({error})") from None
    array = parse_idx(raw, idx_file.name)
    expected_dims = 3 if idx_file.kind == "images" else 1
    if array.ndim != expected_dims:
        raise ValueError(f"{idx_file.name}: holds {_kind_of(array)}, expected {idx_file.kind}")
    sha256 = hashlib.sha256(raw).hexdigest()
    gz_md5 = hashlib.md5(compressed, usedforsecurity=False).hexdigest()
    verified = sha256 == idx_file.sha256 or gz_md5 == idx_file.gz_md5
    if not verified and not allow_unverified:
        raise ValueError(
            f"{idx_file.name}: content differs from the official file (SHA-256 {sha256}); "
            "pass -P allow_unverified=true to use this mirror anyway"
        )
    return FetchedFile(idx_file.name, origin, sha256, verified, array.shape[0], len(raw))


class DownloadError(OSError):
    """A download failed; the message is one line naming the URL and the reason."""


def _wait_seconds() -> float:
    """Scale of the back-off between retries (1: 1 s, 2 s, 4 s...); tests set it to 0."""
    return 1.0


_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code in _TRANSIENT_HTTP
    if isinstance(error, urllib.error.URLError):
        # Name resolution and refused connections are what being offline looks like:
        # retrying them only delays the message that tells the user what to do.
        reason = error.reason
        return isinstance(reason, (TimeoutError, socket.timeout, ConnectionResetError))
    return isinstance(error, (TimeoutError, ConnectionResetError))


def download(
    url: str,
    target: Path,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
    attempts: int = 4,
) -> None:
    """Download `url` to `target` through a temporary file, retrying transient errors.

    `progress(name, total_bytes)` may return a callback that is given each chunk's size.
    Raises DownloadError with a one-line message.
    """
    from tenacity import (
        retry,
        retry_if_exception,
        stop_after_attempt,
        wait_exponential,
    )

    @retry(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(attempts),
        wait=lambda state: wait_exponential(multiplier=1, max=10)(state) * _wait_seconds(),
        reraise=True,
    )
    def attempt() -> None:
        partial = target.with_name(target.name + ".part")
        request = urllib.request.Request(url, headers={"User-Agent": "mlflow-mnist-pipeline"})
        with urllib.request.urlopen(request, timeout=30) as response:
            total = response.headers.get("Content-Length")
            update = progress(target.name, int(total) if total else None) if progress else None
            with open(partial, "wb") as handle:
                while chunk := response.read(1 << 16):
                    handle.write(chunk)
                    if update:
                        update(len(chunk))
        os.replace(partial, target)

    try:
        attempt()
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise DownloadError(f"{url}: {error.reason}") from None
    except (TimeoutError, ConnectionError) as error:
        raise DownloadError(f"{url}: {error}") from None


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_idx_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 of an IDX file's decompressed content (what the checksums pin)."""
    path = Path(path)
    if not path.exists() and Path(str(path).removesuffix(".gz")).exists():
        path = Path(str(path).removesuffix(".gz"))
    if not path.exists():
        raise FileNotFoundError(f"{path}: file missing")
    return hashlib.sha256(_read_maybe_gzip(path)).hexdigest()
