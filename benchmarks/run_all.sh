#!/usr/bin/env bash
# Run every benchmark in turn, on a quiet machine; `--quick` is passed on to each.
#   benchmarks/run_all.sh            # full runs, about 30 minutes on 2 CPU cores
#   benchmarks/run_all.sh --quick    # smoke runs, about 17 minutes
# Each prints its table and writes benchmarks/results/<name>.json. A benchmark that
# fails to run is reported and the others still run; the exit code says whether any failed.
set -u
if [ $# -gt 1 ] || { [ $# -eq 1 ] && [ "$1" != "--quick" ]; }; then
    echo "usage: benchmarks/run_all.sh [--quick]  (other options: run the scripts one by one)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
# `mlflow models serve` starts uvicorn through the shell: the venv's bin must be on PATH.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    . .venv/bin/activate
fi
failed=()
for name in bench_preprocess bench_rerun bench_training bench_resume bench_accuracy bench_drawings bench_serving bench_load bench_batch bench_draw; do
    echo "=== $name $* ($(date +%H:%M:%S))"
    SECONDS=0
    python "benchmarks/$name.py" "$@" || failed+=("$name")
    echo "=== $name took ${SECONDS} s"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "Failed to run: ${failed[*]}" >&2
    exit 1
fi
