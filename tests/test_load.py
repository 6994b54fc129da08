"""The load benchmark's code on a short setting: 8 concurrent clients, 200 mixed requests.

benchmarks/bench_load.py gives the full figures (issue 9, item 3); this runs the same code
against the tiny pipeline's model, served by `mlflow models serve` with 2 workers, and
checks that no request fails. It also checks the scoring server's limits that the README
documents, since they belong to MLflow and may change with its version.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
from conftest import REPO, render_digit

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_load  # noqa: E402 (found through the path above)


def digit_images(count: int) -> np.ndarray:
    """`count` uint8 images (28, 28) of white digits on black."""
    rng = np.random.default_rng(0)
    return np.stack(
        [cv2.resize(render_digit(n % 10, rng), (28, 28), interpolation=cv2.INTER_AREA)
         for n in range(count)]
    )  # fmt: skip


def test_200_mixed_requests_from_8_clients_get_no_error(pipeline, tmp_path):
    environment = {
        **pipeline["store"].env,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    bodies = bench_load.request_bodies(digit_images(20), 200)
    assert {kind for kind, _ in bodies} == {"frame", "png"}

    figures = bench_load.measure(
        str(pipeline["model_dir"]), environment, tmp_path, bodies, clients=8, workers=2,
        big_body_megabytes=2,
    )  # fmt: skip

    assert figures["errors"] == 0, figures["first_errors"]
    assert figures["requests"] == 200 and figures["requests_per_second"] > 0
    assert figures["p99_ms"] >= figures["p50_ms"] > 0
    # What the README says the server does before the model sees a request.
    limits = figures["limits"]
    assert limits["no_content_type_status"] == 500
    assert limits["big_body_status"] == 400
