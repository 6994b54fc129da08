"""Fetching a dataset's four files from a mirror, a base URL or a folder, and verifying them.

Nothing is half-written: files are downloaded to a temporary name and renamed into place,
and the four files reach their destination only once all of them have passed the checks.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from mnist_pipeline.data.catalogue import DATASETS, DatasetSpec, IdxFile
from mnist_pipeline.data.idx import check_kind, parse_idx, read_idx_sha256, unzipped
from mnist_pipeline.errors import UserError
from mnist_pipeline.files import staging_folder
from mnist_pipeline.tracking.signals import deferred

OFFICIAL = "official"
# `progress(name, total_bytes)` may return a callback that is given each chunk's size.
Progress = Callable[[str, int | None], Callable[[int], None]]


@dataclass(frozen=True)
class Retry:
    """How often a transient download error is retried, and how long to wait in between.

    The waits double from `first_wait_seconds` (1 s, 2 s, 4 s...) up to `max_wait_seconds`.
    """

    attempts: int = 4
    first_wait_seconds: float = 1.0
    max_wait_seconds: float = 10.0


DEFAULT_RETRY = Retry()


@dataclass
class FetchedFile:
    name: str
    source: str
    sha256: str  # of the decompressed content, as seen
    verified: bool
    count: int
    size_bytes: int


class DownloadError(UserError):
    """A download failed; the message is one line naming the URL and the reason."""


def fetch_dataset(
    spec: DatasetSpec,
    source: str,
    destination: str | os.PathLike,
    allow_unverified: bool = False,
    progress: Progress | None = None,
    retries: Retry = DEFAULT_RETRY,
) -> list[FetchedFile]:
    """Fetch the four files of `spec` from `source` into `destination` and verify them.

    `source` is "official" (the spec's mirrors, in order), a local folder, or a base URL
    (http, https or file) holding the four `*-idx?-ubyte.gz` files (a folder may hold them
    gunzipped). Each file is checked for IDX structure and against the official checksums;
    files that differ from the official ones raise UserError unless allow_unverified is
    set. Nothing is written into `destination` before all four files have passed: they are
    fetched into a temporary folder inside it and then moved into place together, a stop
    waiting for the four moves. If they do not all pass, the folders made for them are
    removed again.
    A destination that holds another dataset's official files is refused before any fetch.
    """
    destination = Path(destination)
    _check_not_another_datasets(destination, spec)
    made = [folder for folder in (destination, *destination.parents) if not folder.exists()]
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{destination}: cannot create the folder ({error.strerror})") from None
    fetched = []
    staging = staging_folder(destination, ".fetch-")
    try:
        for idx_file in spec.files:
            staged = staging / idx_file.name
            origin = _fetch_one(idx_file.name, source, spec, staged, progress, retries)
            fetched.append(_verify(idx_file, staged, origin, allow_unverified))
        with deferred():
            for idx_file in spec.files:
                os.replace(staging / idx_file.name, destination / idx_file.name)
        made = []
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # deepest first; only while empty
            with contextlib.suppress(OSError):
                folder.rmdir()
    return fetched


def _fetch_one(
    name: str,
    source: str,
    spec: DatasetSpec,
    target: Path,
    progress: Progress | None,
    retries: Retry,
) -> str:
    if source == OFFICIAL:
        errors = []
        for mirror in spec.mirrors:
            try:
                download(mirror + name, target, progress, retries)
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
            download(url, target, progress, retries)
        except DownloadError as error:
            raise DownloadError(
                f"{error}; check -P source, or fetch the files by hand and pass -P source=<folder>"
            ) from None
        return url
    folder = Path(source.removeprefix("file://")).expanduser()
    if not folder.is_dir():
        raise UserError(f"source {source!r} is neither 'official', a URL, nor an existing folder")
    path = folder / name
    if not path.exists():  # gunzipped, as `gunzip *.gz` or Kaggle's copy leaves it
        raw = name.removesuffix(".gz")
        for gunzipped in (folder / raw, folder / raw.replace("-idx", ".idx")):
            if gunzipped.is_file():
                path = gunzipped
                break
    if not path.exists():
        raise UserError(f"{path}: file missing from source folder")
    if not path.is_file():
        raise UserError(f"{path}: a folder, expected the file of that name")
    if path.name == name:
        shutil.copyfile(path, target)
    else:  # compressed as the catalogue names it; its checksum is of the content
        target.write_bytes(gzip.compress(path.read_bytes(), compresslevel=6, mtime=0))
    return str(path.resolve())


def _verify(idx_file: IdxFile, path: Path, origin: str, allow_unverified: bool) -> FetchedFile:
    compressed = path.read_bytes()
    raw = unzipped(compressed, idx_file.name)
    array = parse_idx(raw, idx_file.name)
    check_kind(array, idx_file, idx_file.name)
    sha256 = hashlib.sha256(raw).hexdigest()
    gz_md5 = hashlib.md5(compressed, usedforsecurity=False).hexdigest()
    verified = sha256 == idx_file.sha256 or gz_md5 == idx_file.gz_md5
    if not verified and (other := _official_elsewhere(idx_file.name, sha256)):
        raise UserError(
            f"{idx_file.name}: the official file of {other}, not of this dataset: check "
            f"-P source, or choose -P dataset={other}"
        )
    if not verified and not allow_unverified:
        raise UserError(
            f"{idx_file.name}: content differs from the official file (SHA-256 {sha256}); "
            "pass -P allow_unverified=true to use this mirror anyway"
        )
    return FetchedFile(idx_file.name, origin, sha256, verified, array.shape[0], len(raw))


def _check_not_another_datasets(destination: Path, spec: DatasetSpec) -> None:
    """Refuse `destination` if it holds another dataset's official files, which the fetch
    would replace: Fashion-MNIST's fetched into MNIST's folder, say."""
    for idx_file in spec.files:
        try:
            sha256 = read_idx_sha256(destination / idx_file.name)
        except (OSError, UserError):  # missing, or not a file that anyone would miss
            continue
        if (other := _official_elsewhere(idx_file.name, sha256)) not in (None, spec.name):
            raise UserError(
                f"{destination} holds the official files of {other}, which {spec.name}'s "
                "would replace: choose another -P outdir"
            )


def _official_elsewhere(name: str, sha256: str) -> str | None:
    """The dataset whose official file `name` this is, when it is another's (MNIST's files
    given as Fashion-MNIST's, say, which allow_unverified would otherwise let through)."""
    for dataset, spec in DATASETS.items():
        if any(file.name == name and file.sha256 == sha256 for file in spec.files):
            return dataset
    return None


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
    progress: Progress | None = None,
    retries: Retry = DEFAULT_RETRY,
) -> None:
    """Download `url` to `target` (in a staging folder), retrying transient errors.

    Raises DownloadError with a one-line message.
    """

    @retry(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(retries.attempts),
        wait=wait_exponential(multiplier=retries.first_wait_seconds, max=retries.max_wait_seconds),
        reraise=True,
    )
    def attempt() -> None:
        request = urllib.request.Request(url, headers={"User-Agent": "mlflow-mnist-pipeline"})
        with urllib.request.urlopen(request, timeout=30) as response:
            total = response.headers.get("Content-Length")
            update = progress(target.name, int(total) if total else None) if progress else None
            with open(target, "wb") as handle:
                while chunk := response.read(1 << 16):
                    handle.write(chunk)
                    if update:
                        update(len(chunk))

    try:
        attempt()
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise DownloadError(f"{url}: {error.reason}") from None
    except (TimeoutError, ConnectionError) as error:
        raise DownloadError(f"{url}: {error}") from None
