"""The README's two commands on whichever supported Python a newcomer has (issue 13).

The Makefile's choice of Python is checked with stand-ins for the interpreters: small shell
scripts that answer its version probe and build a pretend virtualenv, so these tests take
a second. One slower test runs the real `make run` (the install and a tiny pipeline) on a
second supported Python; it takes a few minutes, so `make test-pythons` and CI run it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import copy_of_the_working_tree

REPO = Path(__file__).resolve().parent.parent
SUPPORTED = ("3.13", "3.12", "3.11")

FAKE_PYTHON = """#!/bin/sh
# A stand-in for Python {version}: answers the Makefile's probes and makes a pretend venv.
case "$*" in
  *version_info*) echo {version} ;;
  "-m venv "*)
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
    printf '#!/bin/sh\\necho "$@" >> "$(dirname "$0")/../pip.log"\\n' > "$3/bin/pip"
    chmod +x "$3/bin/pip" ;;
esac
"""
# What a pyenv shim for a version that is not selected does.
BROKEN_SHIM = """#!/bin/sh
echo "pyenv: $(basename "$0"): command not found" >&2
exit 127
"""


def project_with_pythons(tmp_path: Path, **pythons: str | None) -> tuple[Path, dict]:
    """A folder with the Makefile, and a PATH whose `python3_12=...` etc. are stand-ins.

    A version string makes a working stand-in; None makes a broken pyenv shim.
    """
    project = tmp_path / "project"
    project.mkdir()
    makefile = (REPO / "Makefile").read_text()
    (project / "Makefile").write_text(makefile)
    # The files the virtualenv is made from (the READY rule's); the stand-in pip reads none.
    for name in re.search(r"^\$\(READY\):(.*)$", makefile, re.MULTILINE).group(1).split():
        (project / name).touch()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, version in pythons.items():
        script = fake_bin / name.replace("_", ".")
        script.write_text(FAKE_PYTHON.format(version=version) if version else BROKEN_SHIM)
        script.chmod(0o755)
    make_dir = Path(shutil.which("make")).parent
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{make_dir}{os.pathsep}/usr/bin:/bin"}
    env.pop("PYTHON", None)
    return project, env


def make(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_chooses_the_newest_supported_python_that_runs(tmp_path):
    project, env = project_with_pythons(
        tmp_path, python3_13=None, python3_12="3.12", python3_11="3.11", python3="3.11"
    )
    plan = make(project, env, "-n", "setup")
    assert plan.returncode == 0, plan.stderr
    assert "python3.12 -m venv .venv" in plan.stdout


def test_python_on_the_command_line_or_in_the_environment_wins(tmp_path):
    project, env = project_with_pythons(tmp_path, python3_13="3.13", python3_12="3.12")
    assert "python3.12 -m venv" in make(project, env, "-n", "setup", "PYTHON=python3.12").stdout
    plan = make(project, {**env, "PYTHON": "python3.12"}, "-n", "test")
    assert "python3.12 -m venv" in plan.stdout


@pytest.mark.parametrize(
    ("python", "said"),
    [("", "python3 is Python 3.10"), ("PYTHON=python3.13", "python3.13 does not run here")],
)
def test_an_unsupported_python_gets_one_line(tmp_path, python, said):
    project, env = project_with_pythons(
        tmp_path, python3_13=None, python3_12=None, python3_11=None, python3="3.10"
    )
    result = make(project, env, "run", *filter(None, [python]))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert said in lines[0] and "3.11, 3.12 or 3.13" in lines[0] and "PYTHON=" in lines[0]
    assert not (project / ".venv").exists()
    assert make(project, env, "-n", "clean").returncode == 0, "clean needs no Python"


def test_a_venv_made_with_another_python_is_rebuilt_once(tmp_path):
    project, env = project_with_pythons(tmp_path, python3_13=None, python3_12="3.12")
    old_bin = project / ".venv" / "bin"
    old_bin.mkdir(parents=True)
    (old_bin / "python").write_text(FAKE_PYTHON.format(version="3.11"))
    (old_bin / "python").chmod(0o755)
    (project / ".venv" / "left-by-3.11").touch()

    first = make(project, env, "setup")
    assert first.returncode == 0, first.stderr
    assert (
        "Rebuilding .venv with python3.12 (Python 3.12): it was made with Python 3.11"
        in first.stdout
    )
    assert not (project / ".venv" / "left-by-3.11").exists()
    assert (project / ".venv" / ".ready-python3.12").exists()
    installs = (project / ".venv" / "pip.log").read_text()
    assert "install -r requirements-dev.txt" in installs

    again = make(project, env, "setup")
    assert again.returncode == 0 and "Rebuilding" not in again.stdout
    assert (project / ".venv" / "pip.log").read_text() == installs, "a ready venv is reused"


# --------------------------------------------------- the real install on a second Python


def second_python() -> tuple[str, str] | None:
    """(version, path) of the newest supported Python other than this one, if any runs here.

    Looks on PATH, then among pyenv's versions (whose shims fail for versions not selected).
    """
    this = f"{sys.version_info.major}.{sys.version_info.minor}"
    pyenv_roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    for version in SUPPORTED:
        if version == this:
            continue
        candidates = [shutil.which(f"python{version}") or ""]
        for root in filter(None, pyenv_roots):
            candidates += sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
        for candidate in filter(None, candidates):
            probe = subprocess.run(
                [candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
            )
            if probe.returncode == 0 and probe.stdout.strip() == str(
                tuple(int(part) for part in version.split("."))
            ):
                return version, candidate
    return None


@pytest.mark.skipif(
    not os.environ.get("TEST_SECOND_PYTHON"),
    reason="installs the requirements into a new virtualenv on a second Python (about 3 min): "
    "`make test-pythons` runs it, and CI does",
)
def test_make_run_on_a_second_python(tmp_path, tiny_data):
    found = second_python()
    if found is None:
        pytest.skip(
            f"no second supported Python ({', '.join(SUPPORTED)}) besides this "
            f"{sys.version_info.major}.{sys.version_info.minor}, on PATH or in pyenv"
        )
    version, python = found
    project = copy_of_the_working_tree(tmp_path / "project")
    this_venv = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != this_venv)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    command = [
        "make", "run", f"PYTHON={python}", f"SOURCE={tiny_data}",
        "ARGS=-P allow_unverified=true -P epochs=1 -P nr_conv_1=4",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}"
    )
    assert (project / ".venv" / f".ready-python{version}").exists()
    # The packaged model records the Python that made it.
    assert f"python_version: {version}." in (project / "model" / "MLmodel").read_text()
