"""Benchmark: the team's setup: one search on two machines, pruning, the server's cost per trial.

A throwaway team server (`team_server.py start`: PostgreSQL and `mlflow server` with
basic-auth) and a local SQLite store, both with a preprocess run of the local MNIST mirror
(or of its first --train-images). Then, as users run them:

1. 8 trials of 1 epoch (random lr, the same network, so every trial costs the same): one
   worker on one core (taskset -c 0), against two workers joined to the same study, one core
   each (taskset -c 0 and -c 1), two "machines" on this 2-core machine. Target: the ratio of
   wall times well under 1 (ideal 0.5).
2. The same TPE search (8 trials of 3 epochs, 2 at a time) with `pruner=median` and with
   none: wall time and best accuracy.
3. A 4-trial grid of 1 epoch logged to the team server, against the same grid on the local
   SQLite store: the mean seconds of a trial run. Target: the team server costs under 5 % of
   a trial's time.

$ python benchmarks/bench_team.py [--quick] [--train-images 60000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_batch import prepare
from common import (
    REPO,
    VENV_BIN,
    CommandFailed,
    make_store,
    mlflow_run,
    newest_run,
    print_table,
    temporary_folder,
    verdict,
    write_results,
)

from mnist_pipeline.tracking.team_server import ADMIN_USERNAME, TeamServer
from tests.helpers import free_port

SAME_COST = {"lr": "0.001:0.01", "nr_conv_1": "16", "batch_size": "128"}


def start_team_server(folder: Path) -> tuple[dict, list[str]]:
    """Start a team server in `folder`; return a client's environment and the stop command."""
    server = TeamServer(folder, port=free_port(), db_port=free_port())
    command = [sys.executable, str(REPO / "team_server.py"), "start", "--dir", str(folder)]
    command += ["--port", str(server.port), "--db-port", str(server.db_port), "--workers", "2"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environment.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{environment.get('PATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "GIT_PYTHON_REFRESH": "quiet",
            "MLFLOW_TRACKING_URI": server.url,
            "MLFLOW_TRACKING_USERNAME": ADMIN_USERNAME,
            "MLFLOW_TRACKING_PASSWORD": server.secret("admin_password"),
            "OPTUNA_STORAGE": server.database_url("optuna"),
        }
    )
    return environment, [part if part != "start" else "stop" for part in command]


def use(environment: dict) -> None:
    """Point this process's MLflow client at the store of `environment`."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if name in environment:
            os.environ[name] = environment[name]
        else:
            os.environ.pop(name, None)


# The batches this benchmark started, each in its own process group: stopped on the way out.
STARTED: list[subprocess.Popen] = []


def train_batch(environment: dict, cwd: Path, *params: str, cores: str = "") -> subprocess.Popen:
    command = ["taskset", "-c", cores] if cores else []
    command += ["mlflow", "run", str(REPO), "-e", "train_batch", "--env-manager", "local"]
    for param in params:
        command += ["-P", param]
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    process = subprocess.Popen(
        command, cwd=cwd, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    STARTED.append(process)
    return process


def finish(process: subprocess.Popen, timeout: float = 7200) -> None:
    _, errors = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise CommandFailed(f"train_batch exited {process.returncode}\n{errors[-3000:]}")


def search_on_machines(environment: dict, root: Path, preprocess_run: str, machines: int) -> dict:
    """8 trials of 1 epoch through the shared study, on `machines` workers of one core each."""
    params = [f"preprocess_run={preprocess_run}", "strategy=random", "trials=8", "epochs=1"]
    params += [f"{name}={value}" for name, value in SAME_COST.items()]
    started = time.perf_counter()
    first = train_batch(environment, root, *params, cores="0")
    others = []
    if machines > 1:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            parent = newest_run("train_batch")
            if parent.info.status == "RUNNING" and parent.info.start_time > started_ms(started):
                break
            time.sleep(0.5)
        others = [
            train_batch(environment, root, f"join={parent.info.run_id}", cores=str(core))
            for core in range(1, machines)
        ]
    finish(first)
    seconds = time.perf_counter() - started
    for other in others:
        finish(other)
    parent = newest_run("train_batch")
    return {"machines": machines, "wall_seconds": seconds,
            "best_accuracy": parent.data.metrics.get("best_accuracy"),
            "trials_finished": parent.data.metrics.get("trials_finished")}  # fmt: skip


def started_ms(perf_started: float) -> float:
    return (time.time() - (time.perf_counter() - perf_started)) * 1000


def tpe_search(environment: dict, root: Path, preprocess_run: str, pruner: str) -> dict:
    seconds = mlflow_run(environment, root, "train_batch", preprocess_run=preprocess_run,
                         strategy="tpe", trials=8, epochs=3, lr="0.0001:0.02",
                         nr_conv_1="8:32", workers=2, pruner=pruner)  # fmt: skip
    parent = newest_run("train_batch")
    return {"pruner": pruner, "wall_seconds": seconds,
            "best_accuracy": parent.data.metrics.get("best_accuracy"),
            "trials_pruned": parent.data.metrics.get("trials_pruned")}  # fmt: skip


def grid_trial_seconds(environment: dict, root: Path, preprocess_run: str) -> dict:
    """A 4-trial grid of 1 epoch, one at a time; the mean seconds of its trial runs."""
    import mlflow

    # A grid runs on one machine: no shared study, only the tracking store differs.
    environment = {k: v for k, v in environment.items() if k != "OPTUNA_STORAGE"}
    wall = mlflow_run(environment, root, "train_batch", preprocess_run=preprocess_run,
                      nr_conv_1="12,14,16,18", epochs=1, workers=1, strategy="grid")  # fmt: skip
    parent = newest_run("train_batch")
    children = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    durations = [(run.info.end_time - run.info.start_time) / 1000 for run in children]
    return {"wall_seconds": wall, "trial_seconds": sum(durations) / len(durations)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first 6,000 training images")
    parser.add_argument("--train-images", type=int, default=60000, help="training images used")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("taskset") is None:
        print("bench_team: needs taskset (util-linux) to give each worker a core", file=sys.stderr)
        return 2
    train_images = 6000 if args.quick else args.train_images
    # PostgreSQL runs as the postgres user when we are root: its folder must be reachable.
    server_folder = Path(tempfile.mkdtemp(prefix="bench_team-server-"))
    server_folder.chmod(0o755)
    team, stop_command = start_team_server(server_folder / "server")
    try:
        with temporary_folder("bench_team", args.keep) as root:
            (root / "team").mkdir()
            use(team)
            team_preprocess = prepare(team, root / "team", train_images)
            one = search_on_machines(team, root / "team", team_preprocess, 1)
            two = search_on_machines(team, root / "team", team_preprocess, 2)
            unpruned = tpe_search(team, root / "team", team_preprocess, "none")
            pruned = tpe_search(team, root / "team", team_preprocess, "median")
            team_grid = grid_trial_seconds(team, root / "team", team_preprocess)
            local = make_store(root / "local")
            use(local)
            local_grid = grid_trial_seconds(
                local, root / "local", prepare(local, root / "local", train_images)
            )
    except CommandFailed as error:
        print(f"bench_team: {error}", file=sys.stderr)
        return 2
    finally:
        for process in STARTED:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        subprocess.run(stop_command, capture_output=True)
        if not args.keep:
            shutil.rmtree(server_folder, ignore_errors=True)

    ratio = two["wall_seconds"] / one["wall_seconds"]
    cost = team_grid["trial_seconds"] / local_grid["trial_seconds"] - 1
    passed = {"two_machines_faster": ratio < 0.75, "server_cost_under_5_percent": cost < 0.05}
    print_table(
        f"One search of 8 trials (1 epoch, {train_images:,} images) on 1 and 2 machines",
        [
            {**one, "target": "baseline", "result": "-"},
            {**two, "target": "ratio < 0.75", "result": verdict(passed["two_machines_faster"])},
        ],
    )
    print(f"two machines / one machine wall time: {ratio:.2f}")
    print_table("TPE, 8 trials of 3 epochs, 2 at a time, with and without pruning",
                [unpruned, pruned])  # fmt: skip
    print_table(
        "A 4-trial grid of 1 epoch: the mean seconds of a trial run",
        [
            {"store": "local SQLite (today)", **local_grid, "result": "baseline"},
            {"store": "team server", **team_grid,
             "result": f"{cost:+.1%} {verdict(passed['server_cost_under_5_percent'])}"},
        ],
    )  # fmt: skip
    write_results("bench_team", {
        "quick": args.quick, "train_images": train_images, "one_machine": one,
        "two_machines": two, "ratio_two_to_one": ratio, "tpe_unpruned": unpruned,
        "tpe_pruned": pruned, "local_grid": local_grid, "team_grid": team_grid,
        "server_cost_per_trial": cost, "passed": passed,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
