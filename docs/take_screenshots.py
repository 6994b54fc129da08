"""Take the guide's screenshots of `mlflow ui` on a real pipeline and batch, in headless Chromium.

Runs, in a new folder, the pipeline on MNIST with one training epoch (`mlflow run .`) and a
batch of four trials (`train_batch`, nr_conv_1=8,16,24,32) in the experiment `conv1`,
then starts `mlflow ui` on that store and saves, under docs/:

- runs-table.png    the batch's runs, its trials expanded, with the accuracy column;
- chart-view.png    the Chart view comparing the trials;
- run-page.png      the train run's page: its description (linking its inputs), params, metrics;
- run-pictures.png  the explore_data run's artifacts, showing its examples per class;
- draw-page.png     the drawing page (draw.py) in front of the pipeline's model, with a 7.

Take them again after MLflow's UI changes. `--store` reuses a folder made before
(`--keep` keeps the new one). Needs Chromium (Debian: apt-get install chromium) and the
local MNIST mirror, or `--source`. About 5 minutes on two cores.

$ python docs/take_screenshots.py [--store DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
# Chromium is started as the browser tests start it.
sys.path.insert(0, str(REPO))
from tests.helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402 (found through the path above)

BATCH_EXPERIMENT = "conv1"
VIEWPORT = {"width": 1280, "height": 720}
# MLflow 3 keeps the GenAI / Model training switch in the browser's local storage; a
# screenshot starts in "Model training", with the assistant's panel closed.
BROWSER_SETTINGS = """
  localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
"""
UI_TIMEOUT_MS = 120_000
RUN_NAME = "[col-id='attributes.`Run Name`']"
# The runs table keeps its column widths in local storage, with the order of the columns.
WIDE_RUN_NAMES = """experimentId => {
  const key = Object.keys(localStorage).find(
    k => k.includes(`ExperimentPage-["${experimentId}"]-ReactComponentState`));
  const state = JSON.parse(localStorage.getItem(key));
  state.columnOrder = Array.from(
    document.querySelectorAll('.ag-header-row-column .ag-header-cell'),
    cell => cell.getAttribute('col-id'));
  state.columnWidths = {'attributes.`Run Name`': 300};
  localStorage.setItem(key, JSON.stringify(state));
}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a folder with mlflow.db from an earlier run")
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--keep", action="store_true", help="keep the new folder")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"take_screenshots.py: error: {CHROMIUM} is missing: apt-get install chromium")
        return 1
    with contextlib.ExitStack() as stack:
        if args.store:
            folder = args.store.resolve()
        else:
            folder = Path(tempfile.mkdtemp(prefix="screenshots-"))
            if not args.keep:
                stack.callback(shutil.rmtree, folder, ignore_errors=True)
            run_pipeline_and_batch(folder, args.source)
        url = stack.enter_context(mlflow_ui(folder))
        take_screenshots(url, folder)
        model_url = stack.enter_context(
            server(folder, ["mlflow", "models", "serve", "-m", "model", "--env-manager", "local"],
                   "ping", "-h", "-p")
        )  # fmt: skip
        page_url = stack.enter_context(
            server(folder, [sys.executable, str(REPO / "draw.py"), "--model-url", model_url],
                   "", "--host", "--port")
        )  # fmt: skip
        take_drawing_page(page_url)
    if args.keep and not args.store:
        print(f"Kept the store in {folder} (--store {folder} reuses it)", file=sys.stderr)
    return 0


def environment(folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["GIT_PYTHON_REFRESH"] = "quiet"
    return env


def run(command: list[str], folder: Path) -> str:
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=folder, env=environment(folder), capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"{command[0]} exited {result.returncode}:\n{result.stderr[-3000:]}")
    print(f"  done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return result.stdout


def run_pipeline_and_batch(folder: Path, source: str) -> None:
    """The guide's commands: the pipeline, then a batch of four trials in `conv1`."""
    mlflow_run = ["mlflow", "run", str(REPO), "--env-manager", "local"]
    pipeline = [*mlflow_run, "-P", f"source={source}", "-P", "epochs=1"]
    run([*pipeline, "-P", f"output_dir={folder / 'model'}"], folder)
    run(["mlflow", "experiments", "create", "-n", BATCH_EXPERIMENT], folder)
    batch = [*mlflow_run, "-e", "train_batch", "--experiment-name", BATCH_EXPERIMENT]
    batch += ["-P", "nr_conv_1=8,16,24,32", "-P", "epochs=1", "-P", "workers=2"]
    run(batch, folder)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mlflow_ui(folder: Path):
    """`mlflow ui` on the folder's store, on a free port; stopped on leaving."""
    command = ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    return server(folder, command, "health", "--host", "--port")


@contextlib.contextmanager
def server(
    folder: Path, command: list[str], ready_path: str, host_flag: str, port_flag: str
) -> Iterator[str]:
    """Start a server on a free local port; yield its URL once `ready_path` answers; stop it."""
    port = free_port()
    command = [*command, host_flag, "127.0.0.1", port_flag, str(port)]
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    log_path = folder / f"server-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 (the server writes to it)
    process = subprocess.Popen(
        command, cwd=folder, env=environment(folder), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with direct.open(f"{url}/{ready_path}", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"{command[0]} did not start:\n{log_path.read_text()[-2000:]}")
                time.sleep(1)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        log.close()


def take_screenshots(url: str, folder: Path) -> None:
    import mlflow
    from playwright.sync_api import sync_playwright

    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    batch_experiment = mlflow.get_experiment_by_name(BATCH_EXPERIMENT).experiment_id
    train = newest(mlflow, "train", "0")
    explore = newest(mlflow, "explore_data", "0")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        context.add_init_script(BROWSER_SETTINGS)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)

        # The runs table: the batch and its trials, with the accuracy column (and without
        # the wide Dataset column, so that the names have room).
        page.goto(f"{url}/#/experiments/{batch_experiment}/runs")
        page.get_by_text(re.compile(r"^[1-9][0-9]* matching runs")).wait_for()
        page.get_by_test_id("column-selection-dropdown").filter(has_text="Columns").click()
        columns = page.get_by_test_id("column-selector-tree")
        columns.get_by_text("Dataset", exact=True).first.click()
        page.get_by_placeholder("Search columns").fill("accuracy")
        columns.get_by_text("accuracy", exact=True).first.click()
        page.keyboard.press("Escape")
        page.get_by_role("columnheader", name="accuracy").first.wait_for()
        page.wait_for_timeout(1000)  # the page saves its columns after a short delay
        page.evaluate(WIDE_RUN_NAMES, batch_experiment)
        page.reload()
        page.get_by_text(re.compile(r"^[1-9][0-9]* matching runs")).wait_for()
        page.locator(RUN_NAME, has_text="train_batch").locator("button").first.click()
        page.get_by_text(re.compile(r"^trial 1/4")).first.wait_for()
        page.mouse.click(VIEWPORT["width"] - 40, VIEWPORT["height"] - 150)  # no focused cell
        page.wait_for_timeout(1000)
        save(page, "runs-table.png")

        # The Chart view, comparing the trials.
        page.locator("label:has(input[value='CHART'])").click()
        page.get_by_text("accuracy", exact=True).first.wait_for()
        # Only the trials: the batch's eye (its first toggle) hides it from the charts.
        batch_row = page.locator(".ag-row", has_text="train_batch").first
        batch_row.locator("[col-id='0'] label:not([data-testid])").first.click()
        page.get_by_text("batch_seconds", exact=True).wait_for(state="detached")
        page.mouse.click(360, VIEWPORT["height"] - 150)  # no focused cell
        page.wait_for_timeout(3000)
        save(page, "chart-view.png")

        # A run's page: its description, with links to the runs it used.
        page.goto(f"{url}/#/experiments/0/runs/{train}")
        page.get_by_text("Trained the CNN").first.wait_for()
        page.wait_for_timeout(2000)
        save(page, "run-page.png")

        # A run's pictures.
        page.goto(f"{url}/#/experiments/0/runs/{explore}")
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("examples_per_class.png").first.click()
        page.get_by_text("Examples per class").or_(
            page.locator("img[src^='blob:']")
        ).first.wait_for()
        page.wait_for_timeout(2000)
        save(page, "run-pictures.png")
        browser.close()


def take_drawing_page(page_url: str) -> None:
    """The drawing page with a 7 drawn on it and the model's answer."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # bypass_csp: Playwright's waits evaluate strings, which the page's policy forbids.
        page = browser.new_page(viewport={"width": 1000, "height": 660}, bypass_csp=True)
        page.goto(page_url)
        page.get_by_text("is ready").wait_for(timeout=UI_TIMEOUT_MS)
        box = page.locator("#pad").bounding_box()
        seven = [(0.28, 0.22), (0.72, 0.22), (0.42, 0.84)]
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in seven]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=12)
        page.mouse.up()
        page.wait_for_function("window.drawPage.timings.length > 0", timeout=UI_TIMEOUT_MS)
        page.wait_for_timeout(500)
        save(page, "draw-page.png")
        browser.close()


def newest(mlflow, stage: str, experiment_id: str) -> str:
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.stage = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not found:
        sys.exit(f"no finished {stage} run in experiment {experiment_id}")
    return found[0].info.run_id


def save(page, name: str) -> None:
    """Save a screenshot as a small PNG: 256 colours are plenty for a web page."""
    from PIL import Image

    path = DOCS / name
    page.screenshot(path=str(path))
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    print(f"  {path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KB", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
