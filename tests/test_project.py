"""The project's own consistency: MLproject against the scripts, conda against pip, README."""

from __future__ import annotations

import importlib
import inspect
import re
import shlex
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from main import canonical_params
from tests.helpers import working_tree_files

MLPROJECT = yaml.safe_load((REPO / "MLproject").read_text())
ENTRY_POINTS = MLPROJECT["entry_points"]
README = (REPO / "README.md").read_text()
# The whole guide: the README and its chapters in docs/.
GUIDE = README + "".join(path.read_text() for path in sorted((REPO / "docs").glob("*.md")))


def script_of(entry_point: str) -> str:
    return re.search(r"python (\w+)\.py", ENTRY_POINTS[entry_point]["command"]).group(1)


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_mlproject_defaults_equal_the_script_defaults(entry_point):
    parser = importlib.import_module(script_of(entry_point)).build_parser()
    declared = {
        name: str(spec["default"]) for name, spec in ENTRY_POINTS[entry_point]["parameters"].items()
    }
    arguments = set(vars(parser.parse_args([])))
    assert set(declared) == arguments, "MLproject and the script declare different parameters"
    assert canonical_params(parser, declared) == canonical_params(parser, {})
    for name in declared:
        assert f"--{name}={{{name}}}" in ENTRY_POINTS[entry_point]["command"]


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_a_parameter_cut_short_is_refused_not_taken_for_the_parameter(entry_point, capsys):
    """`mlflow run . -P epoch=1` passes `--epoch 1`, which argparse would take for
    `--epochs`: a typo must fail, not train with the default while the run logs `epoch`."""
    parser = importlib.import_module(script_of(entry_point)).build_parser()
    name = max(ENTRY_POINTS[entry_point]["parameters"], key=len)
    with pytest.raises(SystemExit):
        parser.parse_args([f"--{name[:-1]}", "1"])
    assert f"unrecognized arguments: --{name[:-1]} 1 (did you mean --{name}?)\n" in (
        capsys.readouterr().err
    )


def test_a_value_that_starts_with_a_dash_reaches_the_script_as_a_value():
    """`mlflow run . -e train_batch -P lr=-1:0.01` substitutes the quoted value into the
    command; the script then refuses the range itself, with a line that says why."""
    import batch_train

    spec = ENTRY_POINTS["train_batch"]
    values = {name: str(parameter["default"]) for name, parameter in spec["parameters"].items()}
    values["lr"] = "-1:0.01"
    command = spec["command"].format(**{name: shlex.quote(v) for name, v in values.items()})
    arguments = shlex.split(command)[2:]  # after `python batch_train.py`
    assert batch_train.build_parser().parse_args(arguments).lr == "-1:0.01"


def test_conda_yaml_mirrors_requirements():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_section = next(item["pip"] for item in conda["dependencies"] if isinstance(item, dict))
    requirements = [
        line.strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pip_section == requirements
    assert "python=3.11" in conda["dependencies"]


# Run in one new Python: each script's `--help` as `python <script>.py --help` runs it,
# then whether it printed its usage and whether TensorFlow has been imported so far.
HELP_PROBE = """
import contextlib, io, runpy, sys
for script in sys.argv[1:]:
    sys.argv = [f"{script}.py", "--help"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        runpy.run_path(f"{script}.py", run_name="__main__")
    print(script, "usage:" in printed.getvalue(), "tensorflow" in sys.modules)
"""


def test_scripts_answer_help_without_importing_tensorflow():
    scripts = ["download", "explore", "preprocess", "train", "batch_train", "package_model"]
    scripts += ["png_to_pandas", "main"]
    result = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, *scripts],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == [f"{script} True False" for script in scripts]


def test_every_stage_is_a_function_with_typed_named_arguments():
    """`from train import train; help(train)` in a notebook shows what to pass, and its type."""
    stages = {
        "download": ("fetch_and_log", "allow_unverified: bool = False"),
        "explore": ("explore", "data_run: str = ''"),
        "preprocess": ("preprocess", "mean: float | None = None"),
        "train": ("train", "epochs: int | None = None, lr: float = 0.006"),
        "package_model": ("package", "register: bool = True"),
    }
    probe = "; ".join(
        f"from {module} import {function}; help({function})"
        for module, (function, _) in stages.items()
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for module, (function, typed) in stages.items():
        assert f"{function}(" in shown and typed in shown, module
    for module in stages:
        parser = importlib.import_module(module).build_parser()
        function = getattr(importlib.import_module(module), stages[module][0])
        defaults = vars(parser.parse_args([]))
        for name, parameter in inspect.signature(function).parameters.items():
            assert defaults[name] == parameter.default, f"{module}: {name}"


def test_readme_names_existing_files_and_entry_points():
    names = {path.rsplit("/", 1)[-1] for path in working_tree_files()}
    for name in set(re.findall(r"\b([\w/-]+\.(?:py|md))\b", GUIDE)):
        if "/" in name:  # a path from the repository's root, as the guide writes them
            assert (REPO / name).is_file(), f"the guide names {name}, which does not exist"
        elif name != "README.md":
            assert name in names, f"the guide names {name}, which does not exist"
    for entry_point in re.findall(r"-e (\w+)", GUIDE):
        assert entry_point in ENTRY_POINTS, f"the guide runs unknown entry point {entry_point}"
    assert "0/" in README


def test_ci_runs_the_readme_test_command():
    test_command = re.search(r"^make test$", README, re.MULTILINE)
    assert test_command, "README gives `make test` as the test command"
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^\s*make test\s*$", ci, re.MULTILINE), "CI runs `make test` on a line"
