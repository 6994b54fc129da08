"""The code a stage runs: its script and the package modules it imports, found by reading them.

A stage's code version hashes exactly those files, so an edit to a module that the stage
never imports (the team server's, a test helper) leaves its finished runs reusable, and an
edit to one it does import makes it run again. The standard library's `modulefinder` reads
the imports (those inside functions too) and follows them through the modules they reach.

The same list is what a served model carries: package_model.py copies the modules that
served_model.py imports, and nothing else, into the model's `code/` folder.
"""

from __future__ import annotations

import hashlib
import modulefinder
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROJECT_DIR = PACKAGE_DIR.parent
PACKAGE = PACKAGE_DIR.name


def imported_files(script: str | Path) -> list[Path]:
    """Return `script` and every project file it imports, directly or through others, sorted.

    Project files are this package's modules (with the `__init__.py` of each package on
    the way) and the top-level scripts (`import train`); the finder looks nowhere else.
    """
    finder = modulefinder.ModuleFinder(path=[str(PROJECT_DIR)])
    finder.run_script(str(script))
    modules = finder.modules.values()  # built-in ones (sys) have no file
    return sorted({Path(module.__file__).resolve() for module in modules if module.__file__})


def code_version(script: str | Path) -> str:
    """Return a short hash of `script` and of the project files it imports."""
    digest = hashlib.sha256()
    for path in imported_files(script):
        name = path.relative_to(PROJECT_DIR).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def copy_package_modules(script: str | Path, destination: Path) -> Path:
    """Copy the package modules that `script` imports to `destination`/<package>; return it.

    The copy keeps the package's layout, so `import mnist_pipeline.serving...` works from
    a folder that holds nothing else of the project.
    """
    for path in imported_files(script):
        if PACKAGE_DIR in path.parents:
            target = destination / path.relative_to(PROJECT_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return destination / PACKAGE
