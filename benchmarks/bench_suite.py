"""Benchmark: what the test suite costs, in CPU-seconds, against a baseline commit.

CPU-seconds transfer across machines better than wall time: a 2-core laptop and a
2-core server spend about the same number of them, however long the wait. This runs the
full suite (`python -m pytest`, as `make test` does) at the working tree and, with
--baseline, at an earlier commit checked out in a temporary git worktree, one after the
other in the same run. It reports each suite's CPU-seconds (pytest and every process it
waited for: xdist workers, `mlflow run`, servers), its wall time, and the test files that
cost the most, measured per test by the plugin below, and what the tests that both suites
have cost in each.

$ python benchmarks/bench_suite.py [--baseline 5ccd1e6] [-- pytest options...]

The same file is the pytest plugin (`-p bench_suite`): around each test it reads
getrusage for the worker and for the children it has waited for.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REPORT_ENV = "BENCH_SUITE_REPORT"


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The plugin: one CSV line per test (its file, name and CPU-seconds) to $BENCH_SUITE_REPORT."""
    before = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)
    yield
    spent = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN) - before
    report = os.environ.get(REPORT_ENV)
    if report:
        with open(report, "a", newline="") as f:
            csv.writer(f).writerow([item.location[0], item.name, f"{spent:.2f}"])


def install(tree: Path) -> None:
    """Install `tree`'s project into the venv (`pip install -e`, as make setup does): its
    MLflow plugin names its own modules, and servers started in other folders load it."""
    pip = [str(REPO / ".venv" / "bin" / "pip"), "install", "-q", "--no-deps", "-e", str(tree)]
    subprocess.run(pip, check=True, capture_output=True)


def run_suite(tree: Path, pytest_args: list[str], report: Path) -> tuple[float, float, int]:
    """Run the suite in `tree`; return its CPU-seconds, wall seconds and exit code."""
    install(tree)
    env = dict(os.environ, PYTHONPATH=str(HERE), **{REPORT_ENV: str(report)})
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    before = cpu_seconds(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "pytest", "-p", "bench_suite", *pytest_args],
                           cwd=tree, env=env)  # fmt: skip
    return cpu_seconds(resource.RUSAGE_CHILDREN) - before, time.monotonic() - start, code


def costs_of(report: Path) -> tuple[collections.Counter, collections.Counter]:
    """CPU-seconds by test file, and by test, from the plugin's CSV."""
    files: collections.Counter = collections.Counter()
    tests: collections.Counter = collections.Counter()
    with open(report, newline="") as f:
        for path, name, seconds in csv.reader(f):
            files[path] += float(seconds)
            tests[f"{path}::{name}"] += float(seconds)
    return files, tests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a commit to measure first, in a temporary worktree")
    parser.add_argument("--top", type=int, default=12, help="how many test files to list")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args()

    trees = [("working tree", REPO)]
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as scratch:
        if args.baseline:
            # Beside the project, so that ../shared (the datasets' mirror) resolves there too.
            worktree = REPO.parent / f"bench-suite-baseline-{os.getpid()}"
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline],
                           cwd=REPO, check=True, capture_output=True)  # fmt: skip
            (worktree / ".venv").symlink_to(REPO / ".venv")
            trees.insert(0, (f"baseline {args.baseline}", worktree))
        results = []
        try:
            for label, tree in trees:
                report = Path(scratch) / f"{len(results)}.csv"
                report.touch()
                print(f"=== {label}: python -m pytest {' '.join(args.pytest_args)}", flush=True)
                cpu, wall, code = run_suite(tree, args.pytest_args, report)
                results.append((label, cpu, wall, code, *costs_of(report)))
        finally:
            if args.baseline:
                install(REPO)
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO)

    print(f"\n{'suite':<28} {'CPU-s':>8} {'wall':>8} {'exit':>5} {'ratio':>6}")
    for label, cpu, wall, code, *_ in results:
        print(f"{label:<28} {cpu:8.0f} {wall:7.0f}s {code:5d} {cpu / results[0][1]:6.2f}")
    for label, _cpu, _wall, _code, files, tests in results:
        print(f"\nCPU-s by test file, {label} (measured per test; the rest is start-up):")
        for path, seconds in files.most_common(args.top):
            print(f"  {seconds:7.1f}  {path}")
        print(f"  {sum(files.values()):7.1f}  all tests\n\nThe costliest tests, {label}:")
        for test, seconds in tests.most_common(args.top):
            print(f"  {seconds:7.1f}  {test}")
    if len(results) == 2:  # the tests that both suites have, and those added since
        before, after = results[0][-1], results[1][-1]
        shared = before.keys() & after.keys()
        added = after.keys() - before.keys()
        then, now = (sum(tests[name] for name in shared) for tests in (before, after))
        print(f"\nThe {len(shared)} tests of both suites: {then:.0f} CPU-s, then {now:.0f}")
        print(f"The {len(added)} tests added: {sum(after[name] for name in added):.0f} CPU-s")
    return max(code for _, _, _, code, *_ in results)


if __name__ == "__main__":
    sys.exit(main())
