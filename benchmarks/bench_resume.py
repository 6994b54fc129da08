"""Benchmark: what resuming saves after a stop in the last epoch, and what checkpoints cost.

On the local MNIST mirror, with the default hyperparameters, in a temporary store:

1. `train.py` without checkpoints or system metrics (the baseline: `train()` called in a
   process of its own with checkpoints.enabled set to False, inside a run that records no
   system metrics), then `train.py` as it is (a checkpoint per epoch and system metrics).
   Their `train_seconds` (the wall time of model.fit, checkpoints included) give the cost,
   which other work on the machine blurs; the run's own `checkpoint_seconds` (the time
   spent in the checkpoints, summed over the epochs) against its `train_seconds` does not.
   Target (from the issue): at most 5 %.
2. `train.py` stopped with SIGTERM halfway through its last epoch, then
   `train.py --resume <run id>`: its wall time against the wall time of the whole
   training from scratch (step 1's), as a ratio.

$ python benchmarks/bench_resume.py [--quick] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import (
    MIRROR,
    REPO,
    CommandFailed,
    make_store,
    newest_run,
    print_table,
    run_command,
    temporary_folder,
    verdict,
    write_results,
)

TARGET_COST = 0.05
# The baseline: train() in a run of its own, with no checkpoints and no system metrics.
PLAIN_TRAINING = """
import json, sys, mlflow
import train
from mnist_pipeline.training import checkpoints

checkpoints.enabled = False
with mlflow.start_run(log_system_metrics=False):
    accuracy, seconds = train.train(preprocess_run=sys.argv[1], epochs=int(sys.argv[2]))
print(json.dumps({"accuracy": accuracy, "train_seconds": seconds}))
"""


def cpu_name() -> str:
    """The CPU's model name and its matrix extensions, as `lscpu` reports them."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    extensions = [flag for flag in ("avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{fields.get('Model name', '?').strip()} ({os.cpu_count()} cores; {', '.join(extensions) or 'no AVX-512'})"


def train_command(*arguments: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *arguments]


def trained(run) -> dict:
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "checkpoint_seconds")
    return {
        "run": run.info.run_id,
        "status": run.info.status,
        "train_seconds": run.data.metrics.get("train_seconds"),
        "checkpoint_seconds": sum(metric.value for metric in history),
        "accuracy": run.data.metrics.get("accuracy"),
    }


def plain_training(environment: dict, root: Path, preprocess_run: str, epochs: int) -> dict:
    print("$ train() without checkpoints or system metrics", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TRAINING, preprocess_run, str(epochs)],
        cwd=root,
        env={**environment, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise CommandFailed(
            f"the baseline training exited {result.returncode}\n{result.stderr[-4000:]}"
        )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["wall_seconds"] = time.perf_counter() - started
    return figures


def stopped_in_last_epoch(environment: dict, root: Path, epochs: int, epoch_seconds: float):
    """Start train.py, SIGTERM it halfway through its last epoch; return its run."""
    print(f"$ train.py --epochs {epochs}, stopped in its last epoch", file=sys.stderr, flush=True)
    before = newest_run("train").info.run_id
    process = subprocess.Popen(
        train_command("--epochs", str(epochs)),
        cwd=root,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while process.poll() is None:
            run = newest_run("train")
            folder = root / "mlruns" / run.info.experiment_id / run.info.run_id / "artifacts"
            if (
                run.info.run_id != before
                and (folder / "checkpoints" / f"epoch-{epochs - 1}" / "state.json").exists()
            ):
                time.sleep(epoch_seconds / 2)
                os.killpg(process.pid, signal.SIGTERM)
                break
            time.sleep(0.5)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return newest_run("train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="at least 2 (default: 5)")
    parser.add_argument("--quick", action="store_true", help="2 epochs instead")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and print it")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 2
    if args.epochs < 2:
        parser.error("--epochs: at least 2, so that the last epoch has a checkpoint before it")
    cpu = cpu_name()
    with temporary_folder("bench_resume", args.keep) as root:
        environment = make_store(root)
        try:
            run_command(
                [
                    sys.executable,
                    str(REPO / "download.py"),
                    "--source",
                    str(MIRROR / "mnist"),
                    "--outdir",
                    str(root / "data"),
                ],
                environment,
                root,
            )
            run_command([sys.executable, str(REPO / "preprocess.py")], environment, root)
            preprocess_run = newest_run("preprocess").info.run_id
            plain = plain_training(environment, root, preprocess_run, args.epochs)
            scratch_wall = run_command(
                train_command("--epochs", str(args.epochs)), environment, root
            )
            checkpointed = trained(newest_run("train"))
            stopped = stopped_in_last_epoch(
                environment, root, args.epochs, checkpointed["train_seconds"] / args.epochs
            )
            resume_wall = run_command(
                train_command("--epochs", str(args.epochs), "--resume", stopped.info.run_id),
                environment,
                root,
            )
            resumed = trained(newest_run("train"))
        except CommandFailed as error:
            print(f"bench_resume: {error}", file=sys.stderr)
            return 2
    cost = checkpointed["train_seconds"] / plain["train_seconds"] - 1
    inside = checkpointed["checkpoint_seconds"] / (
        checkpointed["train_seconds"] - checkpointed["checkpoint_seconds"]
    )
    ratio = resume_wall / scratch_wall
    print_table(
        f"Checkpoints and resuming, MNIST, {args.epochs} epochs, on {cpu}",
        [
            {
                "training": "no checkpoints, no system metrics",
                "train_s": plain["train_seconds"],
                "wall_s": plain["wall_seconds"],
                "accuracy": plain["accuracy"],
            },
            {
                "training": "checkpoints + system metrics (from scratch)",
                "train_s": checkpointed["train_seconds"],
                "wall_s": scratch_wall,
                "accuracy": checkpointed["accuracy"],
            },
            {
                "training": f"resumed after a stop in epoch {args.epochs}",
                "train_s": resumed["train_seconds"],
                "wall_s": resume_wall,
                "accuracy": resumed["accuracy"],
            },
        ],
    )
    print(
        f"\ncheckpoints: {checkpointed['checkpoint_seconds']:.1f} s in {args.epochs} epochs, "
        f"{inside:+.1%} of the training without them, in the same run (target <= "
        f"{TARGET_COST:.0%}: {verdict(inside <= TARGET_COST)}); against the separate training "
        f"without checkpoints or system metrics: {cost:+.1%}. Resuming after a stop "
        f"in the last epoch took {ratio:.2f} of a rerun from scratch ({resume_wall:.0f} s "
        f"against {scratch_wall:.0f} s, stopped run {stopped.info.status})"
    )
    write_results(
        "bench_resume",
        {
            "cpu": cpu,
            "epochs": args.epochs,
            "plain": plain,
            "checkpointed": checkpointed,
            "scratch_wall_seconds": scratch_wall,
            "stopped_status": stopped.info.status,
            "resumed": resumed,
            "resume_wall_seconds": resume_wall,
            "checkpoint_cost": inside,
            "cost_against_plain": cost,
            "resume_ratio": ratio,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
