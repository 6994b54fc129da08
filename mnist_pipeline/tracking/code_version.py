"""The code a stage runs: its script and the package modules it imports, found by reading them.

A stage's code version hashes exactly those files, so an edit to a module that the stage
never imports (the team server's, a test helper) leaves its finished runs reusable, and an
edit to one it does import makes it run again. Imports are read with `ast`, including those
inside functions, and followed through the modules they reach.

The same list is what a served model carries: package_model.py copies the modules that
served_model.py imports, and nothing else, into the model's `code/` folder.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROJECT_DIR = PACKAGE_DIR.parent
PACKAGE = PACKAGE_DIR.name


def imported_files(script: str | Path) -> list[Path]:
    """Return `script` and every project file it imports, directly or through others, sorted.

    Project files are this package's modules (with the `__init__.py` of each package on
    the way) and the top-level scripts (`import train`).
    """
    found: set[Path] = set()
    waiting = [Path(script).resolve()]
    while waiting:
        path = waiting.pop()
        if path in found:
            continue
        found.add(path)
        for name in _imported_names(path):
            waiting += _project_files(name)
    return sorted(found)


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


def _imported_names(path: Path) -> set[str]:
    """The absolute module names that `path` imports, anywhere in it; `from a import b` gives both a and a.b."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _project_files(name: str) -> list[Path]:
    """The files that importing module `name` runs, if it is the project's; else none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        script = PROJECT_DIR / f"{name}.py"
        return [script] if len(parts) == 1 and script.is_file() else []
    files = []
    folder = PROJECT_DIR
    for part in parts:
        folder = folder / part
        if (folder / "__init__.py").is_file():
            files.append(folder / "__init__.py")
        elif folder.with_suffix(".py").is_file():
            files.append(folder.with_suffix(".py"))
            break
        else:
            break
    return files
