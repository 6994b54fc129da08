"""What every benchmark shares: a temporary store, running the project's commands, the report.

Each benchmark creates a tracking store of its own (a SQLite database and ./mlruns in a
temporary folder, the database created before anything else writes to it, as the tests
do), runs the real commands in that folder, prints a table of its figures with the
baseline measured in the same run, and writes the same figures to
benchmarks/results/<name>.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

# A benchmark runs as a script from benchmarks/; the project's package is one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import helpers as testing  # noqa: E402 (found through the path above)
from tests.helpers import MIRROR, REPO, VENV_BIN  # noqa: E402, F401 (for the benchmarks)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The baselines import TensorFlow here too; its start-up chatter is noise on a CPU machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class CommandFailed(RuntimeError):
    """A project command exited non-zero; the message holds the end of its output."""


@contextlib.contextmanager
def temporary_folder(name: str, keep: bool = False) -> Iterator[Path]:
    """A fresh folder for one benchmark's store and outputs, removed afterwards unless `keep`."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        yield folder
    finally:
        if keep:
            print(f"Kept the store and outputs in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def make_store(root: Path) -> dict[str, str]:
    """Create an empty tracking store in `root`; return the environment that points at it.

    The benchmark process itself is pointed at the same store (MLFLOW_TRACKING_URI).
    """
    store = testing.make_store(root)
    os.environ["MLFLOW_TRACKING_URI"] = store.uri
    return store.env


def run_command(command: list[str], environment: dict, cwd: Path, timeout: float = 3600) -> float:
    """Run `command` to completion in `cwd`; return its wall time in seconds."""
    print(f"$ {' '.join(str(part) for part in command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = testing.Store(cwd, environment).run(command, check=False, timeout=timeout)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise CommandFailed(
            f"{command[0]} {command[1]} exited {result.returncode} after "
            f"{seconds:.0f} s\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    print(f"  done in {seconds:.1f} s", file=sys.stderr, flush=True)
    return seconds


def mlflow_run(
    environment: dict, cwd: Path, entry_point: str = "main", timeout: float = 3600, **parameters
) -> float:
    """`mlflow run <repo> -e <entry_point> --env-manager local -P ...`; return its wall time."""
    command = ["mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local"]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    return run_command(command, environment, cwd, timeout)


def newest_run(stage: str):
    """Return the newest run tagged `stage` in the store of MLFLOW_TRACKING_URI (any status)."""
    return testing.Store(Path.cwd(), dict(os.environ)).last_run(stage)


def verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "MISS")


def print_table(title: str, rows: list[dict]) -> None:
    """Print `rows` (dicts with the same keys) as an aligned text table under `title`."""
    columns = list(rows[0])
    shown = [[_shown(row.get(column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in shown)) for i, column in enumerate(columns)
    ]
    print(f"\n{title}")
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)))
    print("  ".join("-" * width for width in widths))
    for line in shown:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _shown(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return (
            f"{value:.4f}"
            if abs(value) < 1
            else f"{value:.2f}"
            if abs(value) < 100
            else f"{value:.0f}"
        )
    return str(value)


def write_results(name: str, figures: dict) -> Path:
    """Write `figures`, with when and where they were measured, to results/<name>.json."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {
        "benchmark": name,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **figures,
    }
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(record, indent=2, default=str) + "\n")
    partial.replace(path)
    print(f"\nFigures written to {path}")
    return path


def directory_megabytes(folder: Path) -> float:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file()) / 1e6
