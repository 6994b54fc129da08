"""Nothing half-written: folders are staged beside their target and renamed into place.

A staging folder carries the name of the process that made it (`<host>:<pid>`), so the
next process that stages into the same place can remove the leftovers of one that was
killed, and leave those of a live one alone.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from mnist_pipeline.tracking.signals import deferred, process_tag
from mnist_pipeline.tracking.stale_runs import process_is_gone


def staging_folder(parent: Path, prefix: str) -> Path:
    """Make a new folder `<prefix><host>:<pid>-<random>` in `parent` for work renamed into place.

    Folders with the same prefix whose process is gone (killed with SIGKILL, a power cut)
    are removed first; those of live processes, such as a second command at work on the
    same folder, are left alone.
    """
    for folder in Path(parent).glob(f"{prefix}*"):
        owner = folder.name[len(prefix) :].rpartition("-")[0]
        if process_is_gone(owner):
            shutil.rmtree(folder, ignore_errors=True)
    folder = Path(parent) / f"{prefix}{process_tag()}-{secrets.token_hex(4)}"
    folder.mkdir()  # with the mode of any new folder (tempfile.mkdtemp's is 0700)
    return folder


def swap_into_place(staged: Path, target: Path) -> None:
    """Put the folder `staged` at `target`, replacing what was there, in two renames.

    The old folder is moved into a staging folder beside `target` (see staging_folder)
    and deleted once the new one is in place. SIGINT and SIGTERM wait for the swap:
    stopped between the two renames, it would leave no folder at all.
    """
    staged, target = Path(staged), Path(target)
    with deferred():
        retired = None
        if target.exists():
            retired = staging_folder(target.parent, f".{target.name}.old-")
            target.rename(retired / target.name)
        staged.rename(target)
        if retired is not None:
            shutil.rmtree(retired)
