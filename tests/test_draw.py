"""The drawing page (draw.py) in a real browser: Debian's Chromium, driven by Playwright.

The tests serve the session's tiny model with `mlflow models serve`, start `draw.py` in
front of it, and draw with mouse events as a person would.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from conftest import REPO, free_port, render_digit, running

from tests.helpers import CHROMIUM, CHROMIUM_ARGS

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="needs Chromium from the OS (Debian: apt-get install chromium); .ci/run installs it",
)
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serve_model(pipeline, tmp_path: Path):
    port = free_port()
    command = ["mlflow", "models", "serve", "-m", str(pipeline["model_dir"])]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    store = pipeline["store"]
    server = running(
        command, f"http://127.0.0.1:{port}/ping", store.root, store.env, tmp_path / "model.log"
    )
    return server, f"http://127.0.0.1:{port}"


def serve_page(model_url: str, tmp_path: Path, env: dict, *extra: str, cwd: Path = REPO):
    """draw.py in front of `model_url`; with --feedback, `cwd` is the store's folder, where
    its runs' artifacts go (./mlruns)."""
    port = free_port()
    command = [sys.executable, str(REPO / "draw.py"), "--model-url", model_url]
    command += ["--port", str(port), *extra]
    server = running(command, f"http://127.0.0.1:{port}/", cwd, env, tmp_path / "page.log")
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def model_url(model_server) -> str:
    """The session's server of the tiny model (see conftest.py)."""
    return model_server.url


# The page the browser tests use keeps feedback, in an experiment of this module's own.
FEEDBACK = "drawing-page-feedback"


@pytest.fixture(scope="module")
def page_url(model_url, pipeline, tmp_path_factory):
    store = pipeline["store"]
    folder = tmp_path_factory.mktemp("page")
    server, url = serve_page(model_url, folder, store.env, "--feedback", FEEDBACK, cwd=store.root)
    with server:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Chromium from the OS (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page that records the address of every request it makes."""
    # Playwright's waits evaluate JavaScript strings, which the page's Content-Security-Policy
    # forbids (test_no_request_leaves_127_0_0_1 checks that the policy is sent).
    context = browser.new_context(viewport={"width": 1100, "height": 800}, bypass_csp=True)
    opened = context.new_page()
    opened.requested = []
    opened.on("request", lambda request: opened.requested.append(request.url))
    yield opened
    context.close()


def draw_stroke(page, points: list[tuple[float, float]]) -> None:
    """Draw one stroke through `points`, given as fractions of the pad's width and height."""
    box = page.locator("#pad").bounding_box()

    def at(point):
        return box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"]

    page.mouse.move(*at(points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*at(point), steps=6)
    page.mouse.up()


SEVEN = [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]
ONE = [(0.5, 0.15), (0.5, 0.85)]


def open_ready(page, page_url: str) -> None:
    """Open the drawing page and wait until it says that the model is ready."""
    page.goto(page_url)
    page.wait_for_function("document.getElementById('model-status').textContent.includes('ready')")


def wait_for_answer(page) -> int:
    """Wait until an answer is on screen; return its number."""
    page.wait_for_function(
        "Number(document.getElementById('answer').dataset.seq) > 0", timeout=30_000
    )
    return int(page.locator("#answer").get_attribute("data-seq"))


def wait_for_stroke_answer(page, strokes_before: int = 0) -> int:
    """Wait until the answer about the finished stroke (not a preview of it) is on screen."""
    page.wait_for_function(f"window.drawPage.timings.length > {strokes_before}", timeout=30_000)
    return int(page.locator("#answer").get_attribute("data-seq"))


def ask_model(model_url: str, png: bytes) -> dict:
    """The served model's own answer, with details, for a picture: no page in between."""
    body = {
        "dataframe_records": [{"image": base64.b64encode(png).decode()}],
        "params": {"details": True},
    }
    request = urllib.request.Request(
        f"{model_url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with DIRECT.open(request, timeout=30) as response:
        return json.load(response)["predictions"][0]


def seen_pixels(page) -> np.ndarray:
    """The grey levels of the page's 28x28 view, as the browser drew them."""
    values = page.evaluate(
        """() => Array.from(document.getElementById('seen').getContext('2d')
                 .getImageData(0, 0, 28, 28).data.filter((_, index) => index % 4 === 0))"""
    )
    return np.array(values, dtype=np.uint8).reshape(28, 28)


@needs_chromium
def test_a_stroke_gets_an_answer_three_bars_the_28x28_image_and_the_curl_command(
    page, page_url, model_url
):
    open_ready(page, page_url)
    draw_stroke(page, SEVEN)
    wait_for_stroke_answer(page)

    assert page.locator("#error").is_hidden()
    answer = page.locator("#answer").inner_text()
    assert answer in [str(digit) for digit in range(10)]
    assert page.locator("#top li").count() == 3
    assert page.locator("#top li .name").first.inner_text() == answer
    curl = page.locator("#curl").inner_text()
    assert curl.startswith("echo ") and f"{model_url}/invocations" in curl
    assert '"params": {"details": true}' in curl

    # The 28x28 view is exactly the image that the served model made of this drawing.
    png = base64.b64decode(page.evaluate("document.getElementById('pad').toDataURL()")[22:])
    direct = ask_model(model_url, png)
    expected = np.frombuffer(base64.b64decode(direct["pixels"]), dtype=np.uint8).reshape(28, 28)
    assert expected.max() == 255
    np.testing.assert_array_equal(seen_pixels(page), expected)
    assert direct["class_name"] == answer


@needs_chromium
def test_wrong_it_is_a_7_keeps_the_drawing_in_mlflow_with_its_label(page, page_url, pipeline):
    import mlflow

    from mnist_pipeline import feedback
    from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

    open_ready(page, page_url)
    draw_stroke(page, SEVEN)
    wait_for_stroke_answer(page)
    answer = page.locator("#answer").inner_text()
    page.get_by_role("button", name="Wrong, it is a 7", exact=True).click()
    page.wait_for_function("document.getElementById('feedback-status').dataset.runId")
    status = page.locator("#feedback-status")
    assert status.inner_text() == f"Kept as 7 in the experiment '{FEEDBACK}'. Thank you!"
    run_id = status.get_attribute("data-run-id")

    # Read back with the project's function: the picture the model answered, labelled 7.
    pipeline["store"].client()
    [kept] = feedback.read_feedback(run_id, "mnist").itertuples()
    assert kept.label == 7
    np.testing.assert_array_equal(image_to_pixels(kept.image), seen_pixels(page))
    assert run_id in set(feedback.read_feedback(FEEDBACK, "mnist")["run_id"])
    # And with MLflow's own API: the run, its params, its dataset input and its artifact.
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.params["label"], run.data.params["answer"]) == ("7", answer)
    [drawing] = run.inputs.dataset_inputs
    assert drawing.dataset.name == "feedback"
    assert {tag.key: tag.value for tag in drawing.tags}["mlflow.data.context"] == "feedback"
    picture = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="picture.png")
    assert Path(picture).read_bytes() == kept.image

    # A mis-tap is corrected with another button: the picture counts once, with its last label.
    page.get_by_role("button", name="Wrong, it is a 1", exact=True).click()
    page.wait_for_function(
        f"document.getElementById('feedback-status').dataset.runId !== '{run_id}'"
    )
    assert status.inner_text() == f"Kept as 1 in the experiment '{FEEDBACK}'. Thank you!"
    kept_now = feedback.read_feedback(FEEDBACK, "mnist")
    [corrected] = kept_now[kept_now["sha256"] == kept.sha256].itertuples()
    assert (corrected.label, corrected.run_id) == (1, status.get_attribute("data-run-id"))
    run_id = corrected.run_id

    # "Right" keeps the next drawing with the model's own answer as its label.
    page.locator("#clear").click()
    draw_stroke(page, ONE)
    wait_for_stroke_answer(page, strokes_before=1)
    answer = page.locator("#answer").inner_text()
    page.get_by_role("button", name="Right", exact=True).click()
    page.wait_for_function(
        f"document.getElementById('feedback-status').dataset.runId !== '{run_id}'"
    )
    [kept] = feedback.read_feedback(status.get_attribute("data-run-id"), "mnist").itertuples()
    assert kept.label == int(answer)


@needs_chromium
def test_a_new_stroke_holds_the_feedback_until_its_own_answer_is_on_screen(
    page, page_url, pipeline
):
    """Feedback is for the picture on the pad: while a stroke is drawn, and until the answer
    about it comes, the buttons of the answer before it are disabled."""
    from mnist_pipeline import feedback
    from mnist_pipeline.serving.picture_to_pixels import image_to_pixels

    open_ready(page, page_url)
    draw_stroke(page, ONE)
    wait_for_stroke_answer(page)
    right = page.get_by_role("button", name="Right", exact=True)
    assert right.is_enabled()
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()  # the bar of a 7 begins
    assert right.is_disabled() and page.locator("#classes button").first.is_disabled()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.2 * box["height"], steps=6)
    page.mouse.up()
    wait_for_stroke_answer(page, strokes_before=1)
    right.click()
    page.wait_for_function("document.getElementById('feedback-status').dataset.runId")
    run_id = page.locator("#feedback-status").get_attribute("data-run-id")
    pipeline["store"].client()
    [kept] = feedback.read_feedback(run_id, "mnist").itertuples()
    np.testing.assert_array_equal(image_to_pixels(kept.image), seen_pixels(page))


def pad_ink(page, x: float, y: float) -> bool:
    """Whether the pad is dark at (x, y), given as fractions of its width and height."""
    return page.evaluate(
        """([x, y]) => { const pad = document.getElementById('pad');
             const pixel = pad.getContext('2d').getImageData(
               Math.round(x * pad.width), Math.round(y * pad.height), 1, 1).data;
             return pixel[0] < 128; }""",
        [x, y],
    )


@needs_chromium
def test_a_tap_draws_a_dot_and_a_second_finger_draws_nothing(page, page_url):
    """A click without a move leaves a dot (a line from a point to itself draws nothing),
    and while one pointer draws, another one's moves (a second finger resting on a phone's
    pad) are not joined to its stroke."""
    open_ready(page, page_url)
    box = page.locator("#pad").bounding_box()
    page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
    assert pad_ink(page, 0.5, 0.5)
    wait_for_stroke_answer(page)
    assert page.locator("#error").is_hidden()  # not "a single flat colour"

    page.locator("#clear").click()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.15 * box["height"])
    page.mouse.down()
    page.evaluate(
        """() => { const pad = document.getElementById('pad');
             const box = pad.getBoundingClientRect();
             const at = (x, y, type) => pad.dispatchEvent(new PointerEvent(type, {
               pointerId: 99, pointerType: 'touch', isPrimary: false, bubbles: true,
               clientX: box.left + x * box.width, clientY: box.top + y * box.height }));
             at(0.1, 0.9, 'pointerdown');
             at(0.15, 0.85, 'pointermove');
             at(0.2, 0.8, 'pointermove');
             at(0.2, 0.8, 'pointerup'); }"""
    )
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.85 * box["height"], steps=6)
    page.mouse.up()
    assert pad_ink(page, 0.5, 0.5)  # the stroke drawn
    assert not pad_ink(page, 0.15, 0.85)  # nothing where the other pointer went
    assert not pad_ink(page, 0.3, 0.5)  # nor between the two
    wait_for_stroke_answer(page, strokes_before=1)


@needs_chromium
def test_on_a_phone_the_answer_shows_on_the_pad(browser, page_url, tmp_path):
    """On a phone's screen (375x667), the answer row is below the pad, out of sight: the
    answer and its probability show on the pad too, greyed when the model refuses."""
    context = browser.new_context(
        viewport={"width": 375, "height": 667}, has_touch=True, is_mobile=True, bypass_csp=True
    )
    phone = context.new_page()
    try:
        open_ready(phone, page_url)
        badge = phone.locator("#pad-answer")
        assert badge.is_hidden()
        draw_stroke(phone, SEVEN)
        wait_for_stroke_answer(phone)
        answer = phone.locator("#answer").inner_text()
        probability = phone.locator("#probability").inner_text().removesuffix(" sure")
        assert badge.inner_text() == f"{answer} · {probability}"
        box = badge.bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 667, box  # no scrolling needed
        assert phone.locator("#answer").bounding_box()["y"] > 667  # why the badge is there
        import cv2

        blank = tmp_path / "blank.png"
        blank.write_bytes(cv2.imencode(".png", np.full((64, 64), 255, np.uint8))[1].tobytes())
        phone.locator("#file").set_input_files(str(blank))
        phone.locator("#error").wait_for()  # "a single flat colour"
        assert "stale" in badge.get_attribute("class")
        phone.locator("#clear").click()
        assert badge.is_hidden()
    finally:
        context.close()


@needs_chromium
def test_an_uploaded_png_gets_the_models_answer(page, page_url, model_url, tmp_path):
    import cv2

    # Dark ink on a light background, larger than 28x28, as from a paint program.
    digit = 255 - render_digit(3, np.random.default_rng(7), canvas=120)
    picture = tmp_path / "three.png"
    picture.write_bytes(cv2.imencode(".png", digit)[1].tobytes())

    page.goto(page_url)
    page.locator("#file").set_input_files(str(picture))
    wait_for_answer(page)

    expected = ask_model(model_url, picture.read_bytes())
    assert page.locator("#answer").inner_text() == expected["class_name"]
    assert page.locator("#top li").count() == 3
    assert page.locator("#error").is_hidden()


@needs_chromium
def test_the_curl_command_on_the_page_gets_the_same_answer(page_url, model_url):
    import cv2

    image = np.zeros((64, 64), dtype=np.uint8)
    image[10:54, 30:36] = 255  # a 1
    png = cv2.imencode(".png", image)[1].tobytes()
    request = urllib.request.Request(f"{page_url}/predict", data=png, method="POST")
    with DIRECT.open(request, timeout=30) as response:
        from_page = json.load(response)
    result = subprocess.run(
        ["bash", "-c", from_page["curl"]], capture_output=True, text=True, timeout=60
    )
    from_curl = json.loads(result.stdout)["predictions"][0]
    assert from_curl["class_name"] == from_page["class_name"]
    assert from_curl["pixels"] == from_page["pixels"]


@needs_chromium
def test_no_request_leaves_127_0_0_1(page, page_url):
    page.goto(page_url)
    draw_stroke(page, ONE)
    wait_for_stroke_answer(page)
    page.locator("#clear").click()
    assert page.locator("#answer").inner_text() == "?"

    assert len(page.requested) >= 4  # the page, its style, its script, /model, /predict
    hosts = {urlsplit(url).hostname for url in page.requested if not url.startswith("data:")}
    assert hosts == {"127.0.0.1"}, page.requested
    # And the browser is told to load nothing from elsewhere.
    with DIRECT.open(page_url, timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy


@needs_chromium
def test_a_stopped_model_server_gives_a_readable_line(page, pipeline, tmp_path):
    """The page loaded before its model server starts, which stops later: the line at the
    top follows, with no reload, and a stroke answered while it was down says why."""
    model_server, model_url = serve_model(pipeline, tmp_path)
    page_server, page_url = serve_page(model_url, tmp_path, pipeline["store"].env)
    status = page.locator("#model-status")
    with page_server:
        page.goto(page_url)
        page.wait_for_function("document.getElementById('model-status').classList.contains('down')")
        with model_server as model_process:
            # The line looks again by itself while the model is down: no stroke, no reload.
            page.wait_for_function(
                "!document.getElementById('model-status').classList.contains('down')",
                timeout=30_000,
            )
            assert "is ready" in status.inner_text()
            draw_stroke(page, SEVEN)
            shown = wait_for_stroke_answer(page)
            assert page.locator("#error").is_hidden()

            from conftest import stop

            stop(model_process)
            draw_stroke(page, ONE)
            page.locator("#error").wait_for(state="visible", timeout=30_000)
            line = page.locator("#error").inner_text()
            assert f"The model at {model_url} is not answering" in line
            assert "mlflow models serve" in line
            # The last answer stays, greyed with its bars, rather than a blank or a spinner.
            assert int(page.locator("#answer").get_attribute("data-seq")) == shown
            assert "stale" in page.locator("#answer").get_attribute("class")
            assert "stale" in page.locator("section.result").get_attribute("class")
            page.wait_for_function(
                "document.getElementById('model-status').classList.contains('down')"
            )
            assert "not answering" in status.inner_text()


@needs_chromium
def test_a_picture_the_model_refuses_gives_its_reason(page, page_url, tmp_path):
    import cv2

    blank = tmp_path / "blank.png"
    blank.write_bytes(cv2.imencode(".png", np.full((40, 40), 200, dtype=np.uint8))[1].tobytes())
    page.goto(page_url)
    page.locator("#file").set_input_files(str(blank))
    page.locator("#error").wait_for(state="visible", timeout=30_000)
    line = page.locator("#error").inner_text()
    assert line.startswith("The model could not read this picture: image 1: ")
    assert "single flat colour" in line
    assert "Failed to predict" not in line


@pytest.fixture(scope="module")
def page_without_model(tmp_path_factory):
    """The page in front of a port where no model answers: enough for what it refuses itself."""
    server, url = serve_page(
        f"http://127.0.0.1:{free_port()}", tmp_path_factory.mktemp("alone"), dict(os.environ)
    )
    with server:
        yield url


@needs_chromium
def test_a_20_mb_body_is_refused_with_413(page, page_without_model):
    page_url = page_without_model
    body = b"\x89PNG" + bytes(20 * 1024 * 1024)
    request = urllib.request.Request(f"{page_url}/predict", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        DIRECT.open(request, timeout=30)
    assert refused.value.code == 413
    assert "larger than the 8 MB" in json.load(refused.value)["error"]

    # And from the browser, sent as it would send a picture.
    page.goto(page_url)
    status = page.evaluate(
        """async () => (await fetch('/predict', {method: 'POST',
                 body: new Uint8Array(20 * 1024 * 1024)})).status"""
    )
    assert status == 413


def test_a_model_that_is_not_served_gives_the_command_that_serves_it_on_its_port():
    from mnist_pipeline.drawing_page.server import ModelClient, ModelError

    port = free_port()  # nothing listens there
    with pytest.raises(ModelError) as refused:
        ModelClient(f"http://127.0.0.1:{port}").ask(b"\x89PNG")
    assert refused.value.status == 502
    assert str(refused.value).startswith(f"The model at http://127.0.0.1:{port} is not answering")
    assert str(refused.value).endswith(
        f"Is it being served? mlflow models serve -m ./model --env-manager local -p {port}"
    )


def test_a_model_that_never_answers_gives_a_timeout_line():
    from mnist_pipeline.drawing_page.server import ModelClient, ModelError

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        client = ModelClient(f"http://127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(ModelError) as refused:
            client.ask(b"\x89PNG")
    assert refused.value.status == 504
    assert (
        str(refused.value) == f"The model at http://127.0.0.1:{port} did not answer within 0.5 s."
    )


def test_the_page_server_forwards_only_to_its_model(tmp_path):
    """Whatever the browser sends (a URL in the body or the query, another Host), draw.py
    sends it to the model URL it was started with, and nowhere else."""
    received = []

    class Recorder(threading.Thread):
        def run(self):
            with socket.socket() as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen()
                self.port = listener.getsockname()[1]
                self.ready.set()
                connection, _ = listener.accept()
                with connection:
                    received.append(connection.recv(65536))
                    body = b'{"predictions": [{"class_name": "1", "probability": 0.5}]}'
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )

    recorder = Recorder(daemon=True)
    recorder.ready = threading.Event()
    recorder.start()
    recorder.ready.wait(5)
    server, page_url = serve_page(f"http://127.0.0.1:{recorder.port}", tmp_path, dict(os.environ))
    with server:
        request = urllib.request.Request(
            f"{page_url}/predict?model=http://example.com/&url=http://example.com/",
            data=b"http://example.com/ not a URL to follow",
            headers={"Host": "example.com", "Content-Type": "application/octet-stream"},
            method="POST",
        )
        with DIRECT.open(request, timeout=30) as response:
            answer = json.load(response)
    recorder.join(5)
    assert received[0].startswith(b"POST /invocations HTTP/1.1")
    assert b"Host: 127.0.0.1:" in received[0]
    assert answer["class_name"] == "1"
    assert "package it again" in answer["note"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-url", "ftp://127.0.0.1"], "model URL must look like http://127.0.0.1:5000"),
        (["--model-url", "http://127.0.0.1:99999"], "model URL has no valid port (1 to 65535)"),
        (["--host", "nosuchhost.invalid"], "cannot listen on nosuchhost.invalid ("),
        (["--port", "0"], "argument --port: expected a port from 1 to 65535, got '0'"),
        (["--timeout", "-1"], "argument --timeout: expected a number greater than 0"),
        (["--dataset", "digits"], "argument --dataset: invalid choice: 'digits'"),
        (["--model-version", "mnist v3"], "--model-version is kept with each drawing: it needs"),
    ],
)
def test_draw_py_refuses_bad_arguments_in_one_line(argv, message):
    result = subprocess.run(
        [sys.executable, str(REPO / "draw.py"), *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert result.stderr.startswith("draw.py: error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_refused_in_one_line_before_anything_is_made(store):
    """Not announced as running (the address would show the other page), and no experiment."""
    with socket.socket() as other_page:
        other_page.bind(("127.0.0.1", 0))
        other_page.listen()
        port = other_page.getsockname()[1]
        result = store.call("draw.py", "--port", str(port), "--feedback", "kept-here")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"draw.py: error: cannot listen on 127.0.0.1:{port} (Address already in use): "
        "choose another --port"
    )
    assert store.client().get_experiment_by_name("kept-here") is None


@needs_chromium
def test_the_readme_block_as_written(browser, pipeline, tmp_path):
    """Chapter 3's "Draw in the browser": its two commands, with free ports and the test model."""
    readme = (REPO / "docs" / "3-serving-and-drawing.md").read_text()
    section = readme[readme.index("## Draw in the browser") :]
    block = section[section.index("```bash\n") + 8 : section.index("```\n", 8)]
    serve, draw = [line for line in block.splitlines() if line.strip()]
    assert serve == "mlflow models serve -m ./model --env-manager local -p 5000"
    assert draw == "python draw.py --model-url http://127.0.0.1:5000"
    model_port, page_port = free_port(), free_port()
    serve = serve.replace("./model", str(pipeline["model_dir"])).replace("5000", str(model_port))
    draw = draw.replace("5000", str(model_port)) + f" --port {page_port}"
    env = pipeline["store"].env
    model_ready = f"http://127.0.0.1:{model_port}/ping"
    with running(["bash", "-c", serve], model_ready, REPO, env, tmp_path / "model.log"):
        page_url = f"http://127.0.0.1:{page_port}"
        with running(["bash", "-c", draw], page_url, REPO, env, tmp_path / "page.log"):
            page = browser.new_page(bypass_csp=True)
            page.goto(page_url)
            draw_stroke(page, ONE)
            wait_for_stroke_answer(page)
            assert page.locator("#top li").count() == 3
            page.close()
