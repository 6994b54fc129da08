"""Benchmark: the packaged model under load, 8 concurrent clients, 1 and 2 server workers.

Each setting starts `mlflow models serve -m <model> --env-manager local --workers N` on
127.0.0.1 (see serving_client.py), sends the same mixed requests from concurrent clients,
each over its own keep-alive connection, and stops the server. Half the requests are the
workshop's 28-row frame of one MNIST test image, half one PNG file of an image, base64 in
a column `image`. The bodies are encoded before the clock starts. An answer counts as an
error unless it is HTTP 200 with one prediction. Target (issue 9): 0 errors. Baseline,
measured in the same run: the same kind of requests sent one at a time by one client.
It also probes the scoring server's limits that the model cannot change: a request without
a Content-Type, and a large body (the server has no size limit and reads it whole).
Without --model-dir it first runs the pipeline (1 epoch) in a temporary store.

$ python benchmarks/bench_load.py [--model-dir DIR] [--requests 2000] [--clients 8] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_serving import frame_28, png_frame
from common import (
    MIRROR,
    VENV_BIN,
    CommandFailed,
    make_store,
    mlflow_run,
    print_table,
    temporary_folder,
    verdict,
    write_results,
)
from serving_client import ScoringServer

KINDS = ("frame", "png")
REQUEST_TIMEOUT_SECONDS = 120


def request_bodies(images: np.ndarray, count: int) -> list[tuple[str, bytes]]:
    """`count` (kind, JSON body) pairs, alternately a 28-row frame and a PNG of one image."""
    bodies = []
    for index in range(count):
        image = images[index % len(images)]
        kind = KINDS[index % len(KINDS)]
        bodies.append((kind, frame_28(image) if kind == "frame" else png_frame(image[np.newaxis])))
    return bodies


def drive(port: int, bodies: list[tuple[str, bytes]], clients: int) -> dict:
    """Send `bodies` to 127.0.0.1:`port` from `clients` threads; return the figures.

    Each client takes the next body, posts it over its own keep-alive connection and
    waits for the answer before it takes another.
    """
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()
    stopping = threading.Event()  # set when the benchmark is interrupted
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
    errors: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None or stopping.is_set():
                    return
                kind, body = bodies[index]
                started = time.perf_counter()
                problem = post(connection, body)
                seconds = time.perf_counter() - started
                with lock:
                    latencies[kind].append(seconds)
                    if problem:
                        errors.append(f"{kind}: {problem}")
                if problem:
                    connection.close()  # the next request opens a new connection
        finally:
            connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        running = [pool.submit(client) for _ in range(clients)]
        try:
            for each in running:
                each.result()
        finally:
            stopping.set()
    wall_seconds = time.perf_counter() - started
    every = np.concatenate([latencies[kind] for kind in KINDS]) * 1000
    return {
        "requests": len(bodies),
        "clients": clients,
        "wall_seconds": wall_seconds,
        "requests_per_second": len(bodies) / wall_seconds,
        "p50_ms": float(np.percentile(every, 50)),
        "p99_ms": float(np.percentile(every, 99)),
        "p50_ms_by_kind": {
            kind: float(np.percentile(np.asarray(latencies[kind]) * 1000, 50))
            for kind in KINDS
            if latencies[kind]
        },
        "errors": len(errors),
        "first_errors": errors[:5],
    }


def post(connection: http.client.HTTPConnection, body: bytes) -> str:
    """POST one body to /invocations; return what was wrong with the answer, or ''."""
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
    except (OSError, http.client.HTTPException) as error:
        return f"{type(error).__name__}: {error}"
    if response.status != 200:
        return f"HTTP {response.status}: {answer[:200]!r}"
    try:
        predictions = json.loads(answer)["predictions"]
    except (ValueError, KeyError, TypeError):
        return f"not a prediction: {answer[:200]!r}"
    return "" if len(predictions) == 1 else f"{len(predictions)} predictions for one image"


def probe_limits(port: int, body: bytes, big_body_megabytes: int) -> dict:
    """What the scoring server does, before the model sees anything, with two kinds of request.

    A valid body without a Content-Type header, and a body of `big_body_megabytes` MB (one
    base64 "image" of that size): the status and how long the server took to answer.
    """
    figures = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", "/invocations", body)  # http.client adds no Content-Type
        response = connection.getresponse()
        figures["no_content_type_status"] = response.status
        figures["no_content_type_answer"] = response.read()[:200].decode(errors="replace")
    finally:
        connection.close()
    if big_body_megabytes:
        cell = b"A" * (big_body_megabytes * 1_000_000)
        big = b'{"dataframe_split": {"columns": ["image"], "data": [["' + cell + b'"]]}}'
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            started = time.perf_counter()
            connection.request("POST", "/invocations", big, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            figures["big_body_seconds"] = time.perf_counter() - started
            figures["big_body_status"] = response.status
            figures["big_body_megabytes"] = len(big) / 1e6
        finally:
            connection.close()
    return figures


def measure(
    model: str,
    environment: dict,
    cwd: Path,
    bodies: list[tuple[str, bytes]],
    clients: int,
    workers: int,
    big_body_megabytes: int | None = None,
) -> dict:
    """Serve `model` with `workers` uvicorn workers, drive it with `clients`; stop it.

    With `big_body_megabytes` (0 or more), also probe the server's limits (probe_limits).
    """
    print(f"{workers} worker(s), {clients} client(s), {len(bodies):,} requests", file=sys.stderr)
    served = {**environment, "MLFLOW_MODELS_WORKERS": str(workers)}
    with ScoringServer(model, served, cwd) as server:
        # Let every worker load the model before the clock starts.
        drive(server.port, bodies[: 2 * workers * clients], clients)
        figures = {"workers": workers, **drive(server.port, bodies, clients)}
        if big_body_megabytes is not None:
            figures["limits"] = probe_limits(server.port, bodies[0][1], big_body_megabytes)
    return figures


def test_images(count: int = 1000) -> np.ndarray:
    from mnist_pipeline.data.idx import read_idx

    return read_idx(MIRROR / "mnist" / "t10k-images-idx3-ubyte.gz")[:count]


def prepare_model(args, root: Path) -> tuple[dict, str]:
    """Return (environment, packaged model folder), running the pipeline if needed."""
    if args.model_dir:
        environment = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
        environment = {k: v for k, v in environment.items() if k != "MLFLOW_MODELS_WORKERS"}
        return environment, str(Path(args.model_dir).resolve())
    environment = make_store(root)
    mlflow_run(environment, root, "main", source=MIRROR / "mnist", epochs=args.epochs,
               data_dir=root / "data", output_dir=root / "model")  # fmt: skip
    return environment, str(root / "model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="", help="a packaged model (./model after make run)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per setting")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--workers", default="1,2", help="server workers to measure, e.g. 1,2")
    parser.add_argument("--baseline-requests", type=int, default=500,
                        help="requests from one client, one worker (0: no baseline)")  # fmt: skip
    parser.add_argument("--big-body-mb", type=int, default=100, help="the large body sent (MB)")
    parser.add_argument("--epochs", type=int, default=1, help="without --model-dir: pipeline's")
    parser.add_argument("--quick", action="store_true", help="200 requests, 100 for the baseline")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and print it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM ends the benchmark as Ctrl-C does: the servers it started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        workers = [int(count) for count in args.workers.split(",")]
    except ValueError:
        print(f"bench_load: --workers {args.workers!r}: expected numbers like 1,2", file=sys.stderr)
        return 2
    if args.quick:
        args.requests, args.baseline_requests, args.big_body_mb = 200, 100, 10
    images = test_images()
    bodies = request_bodies(images, args.requests)
    settings = []
    with temporary_folder("bench_load", args.keep) as root:
        try:
            environment, model = prepare_model(args, root)
        except CommandFailed as error:
            print(f"bench_load: {error}", file=sys.stderr)
            return 2
        if args.baseline_requests:
            baseline = measure(model, environment, root, bodies[: args.baseline_requests], 1, 1)
            settings.append({"baseline": True, **baseline})
        for count in workers:
            big = args.big_body_mb if count == workers[0] else None
            settings.append(measure(model, environment, root, bodies, args.clients, count, big))
    return report_and_save(args, settings)


def report_and_save(args, settings: list[dict]) -> int:
    rows = []
    for figures in settings:
        is_baseline = figures.get("baseline", False)
        rows.append({
            "server workers": figures["workers"], "clients": figures["clients"],
            "requests": figures["requests"], "requests/s": figures["requests_per_second"],
            "p50 ms": figures["p50_ms"], "p99 ms": figures["p99_ms"],
            "p50 frame/png ms": "/".join(f"{ms:.1f}" for ms in figures["p50_ms_by_kind"].values()),
            "errors": figures["errors"],
            "target": "baseline" if is_baseline else "0 errors",
            "result": "-" if is_baseline else verdict(figures["errors"] == 0),
        })  # fmt: skip
    print_table("Mixed requests (28-row frames and PNG files, one image each)", rows)
    for figures in settings:
        for error in figures["first_errors"]:
            print(f"  error ({figures['workers']} workers): {error}")
    limits = next((figures["limits"] for figures in settings if "limits" in figures), {})
    if limits:
        print(f"\nNo Content-Type header: HTTP {limits['no_content_type_status']} "
              f"{limits['no_content_type_answer']!r}")  # fmt: skip
    if "big_body_seconds" in limits:
        print(f"A {limits['big_body_megabytes']:.0f} MB body: read whole, HTTP "
              f"{limits['big_body_status']} after {limits['big_body_seconds']:.1f} s")  # fmt: skip
    write_results("bench_load", {"quick": args.quick, "settings": settings})
    return 1 if any(figures["errors"] for figures in settings) else 0


if __name__ == "__main__":
    sys.exit(main())
