"""Feedback from the drawing page (mnist_pipeline/feedback.py): kept, read back, split, used.

The page's server is the real `draw.py --feedback` in front of a temporary store, with no
model behind it (keeping a drawing needs none). Several people are several client
addresses: the whole of 127.0.0.0/8 is this machine, so each simulated person sends from
an address of their own. The browser's side is in tests/test_draw.py.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, free_port, running
from test_draw import serve_page
from test_readme import guide_block

from mnist_pipeline import feedback
from mnist_pipeline.data.transform import TransformSpec
from mnist_pipeline.serving import evaluation
from mnist_pipeline.serving.picture_to_pixels import image_to_pixels
from tests.helpers import digit_pngs, kept_drawings

GUIDE_HEADING = "## Feedback: draw, correct, retrain"


def post(page_url: str, body: bytes, query: str, source: str = "127.0.0.1") -> tuple[int, dict]:
    """POST `body` to the page's /feedback?`query` from the address `source`: the status, and
    the JSON answer with the response's headers (lower-case) added."""
    address = urlsplit(page_url)
    connection = http.client.HTTPConnection(
        address.hostname, address.port, timeout=60, source_address=(source, 0)
    )
    try:
        connection.request("POST", f"/feedback?{query}", body=body)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, {**json.loads(response.read()), **headers}
    finally:
        connection.close()


def feedback_page(store, tmp_path, experiment: str):
    """`draw.py --feedback <experiment>` on the store, in front of a port where nothing answers."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    return serve_page(nowhere, tmp_path, store.env, "--feedback", experiment, cwd=store.root)


@pytest.fixture(scope="module")
def guide_page(tmp_path_factory) -> dict:
    """The guide's draw.py line as written, with free ports (no model is needed to keep a
    drawing), run beside a store of its own as a participant runs it beside ./mlflow.db."""
    from conftest import make_store

    store = make_store(tmp_path_factory.mktemp("feedback-page") / "store")
    draw = guide_block(GUIDE_HEADING)[0]
    assert draw == (
        'python draw.py --model-url http://127.0.0.1:5000 --feedback --model-version "mnist v1"'
    )
    command = draw.replace("draw.py", str(REPO / "draw.py")).replace("5000", str(free_port()))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["bash", "-c", f"{command} --port {port}"], f"{url}/", store.root, store.env):
        yield {"url": url, "store": store}


@pytest.fixture(scope="module")
def page_url(guide_page) -> str:
    return guide_page["url"]


# ------------------------------------------------------------------------------ the page


def test_twenty_people_at_once_lose_nothing_and_a_crash_after_200_neither(store, tmp_path):
    """20 posts at once, from 20 addresses, all kept; killed with SIGKILL after their 200s,
    the server has left every one of them in the store, readable, with its label."""
    server, url = feedback_page(store, tmp_path, "feedback")
    pictures = digit_pngs(20, seed=1)
    answers = [None] * len(pictures)

    def send(number: int) -> None:
        picture, digit = pictures[number]
        answers[number] = post(url, picture, f"label={digit}&answer=1", f"127.0.0.{10 + number}")

    with server as process:
        threads = [threading.Thread(target=send, args=(n,)) for n in range(len(pictures))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert [status for status, _ in answers] == [200] * len(pictures), answers
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(20)

    store.client()
    kept = feedback.read_feedback("feedback", "mnist")
    assert sorted(kept["run_id"]) == sorted(body["run_id"] for _, body in answers)
    by_run = {body["run_id"]: pictures[n] for n, (_, body) in enumerate(answers)}
    for row in kept.itertuples():
        assert (row.image, row.label) == by_run[row.run_id]
    assert answers[7][1]["message"] == "Kept as 7 in the experiment 'feedback'. Thank you!"


def test_a_bad_label_a_picture_that_is_not_one_and_an_oversized_one_are_refused(page_url):
    picture, _ = digit_pngs(1, seed=2)[0]
    source = "127.0.1.1"
    status, body = post(page_url, picture, "label=11", source)
    assert (status, body["error"]) == (
        400,
        "Label '11' is not one of the model's classes: send a number from 0 to 9.",
    )
    # Not ASCII digits: "²" and full-width "３" pass Python's str.isdigit.
    # Nor is a label of 5,000 digits, which Python's int() refuses.
    for label in ("seven", "%C2%B2", "%EF%BC%93", "9" * 5000):
        status, body = post(page_url, picture, f"label={label}", source)
        assert status == 400 and body["error"].startswith("Label '"), (label, body)
    # A page started for MNIST in front of a Fashion-MNIST model says which --dataset to use.
    status, body = post(page_url, picture, "label=1&answer=Trouser", source)
    assert (status, body["error"]) == (
        400,
        "The model answers 'Trouser', a class of fashion, not mnist: "
        "start draw.py with --dataset fashion.",
    )
    status, body = post(page_url, b"GIF89a not a drawing", "label=3", source)
    assert (status, body["error"]) == (
        400,
        "This picture cannot be kept: bytes are not a PNG or JPEG image",
    )
    status, body = post(page_url, b"\x89PNG" + bytes(9 * 2**20), "label=3", source)
    assert (status, body["error"]) == (
        413,
        "The picture is larger than the 8 MB this page accepts.",
    )


def test_more_than_ten_drawings_a_second_from_one_address_get_429(page_url):
    picture, _ = digit_pngs(1, seed=3)[0]
    # A bad label: refused after the rate is counted, so nothing is written meanwhile.
    statuses = [post(page_url, picture, "label=x", "127.0.2.1") for _ in range(12)]
    codes = [status for status, _ in statuses]
    assert codes.count(429) >= 1 and codes[:10] == [400] * 10, codes
    status, body = statuses[-1]
    assert body["error"] == (
        "Too many drawings from 127.0.2.1: at most 10 a second. Wait a moment, then send it again."
    )
    assert body["retry-after"] == "1"
    # Someone else is not slowed down.
    assert post(page_url, picture, "label=x", "127.0.2.2")[0] == 400


# ------------------------------------------------------------------------------ reading it back


def test_the_hash_split_is_stable_disjoint_and_about_80_percent():
    rng = np.random.default_rng(0)
    pictures = [rng.bytes(64) for _ in range(2000)]
    drawings = pd.DataFrame({"image": pictures, "label": rng.integers(0, 10, len(pictures))})
    training, evaluating = feedback.split(drawings)
    again, _ = feedback.split(drawings.sample(frac=1, random_state=1))
    assert set(training.index) == set(again.index)  # the order of the drawings does not matter
    assert set(training.index).isdisjoint(evaluating.index)
    assert len(training) + len(evaluating) == len(drawings)
    assert 0.77 < len(training) / len(drawings) < 0.83
    # The same bytes are always on the same side, whatever their label or run.
    twice = pd.DataFrame({"image": [pictures[0], pictures[0]], "label": [1, 2]})
    assert len(feedback.split(twice)[0]) in (0, 2)


def test_a_drawing_kept_twice_counts_once_with_the_label_given_last(store, capsys):
    """Sent twice, or corrected: one drawing, so that 20 copies of one picture neither pass
    the promotion gate's minimum nor weigh 20 times in training."""
    from package_model import feedback_to_evaluate

    evaluating = digit_pngs(20, seed=5, for_training=False)
    (picture, digit), *others = evaluating
    experiment = kept_drawings(store, "feedback", [(picture, digit)] * 19 + others[:1])
    assert feedback_to_evaluate("feedback", "mnist") is None
    assert "2 feedback drawings to evaluate on in 'feedback', 20 needed" in capsys.readouterr().err
    corrected = (digit + 1) % 10
    feedback.save_drawing(experiment, picture, corrected, str(corrected), "", "v1", "mnist")
    kept = feedback.read_feedback("feedback", "mnist")
    assert [(row.image, row.label) for row in kept.itertuples()] == [
        others[0],
        (picture, corrected),
    ]


def test_package_evaluates_on_the_feedback_once_its_evaluation_part_holds_20(store, capsys):
    """From Python, as package reads it; the evaluation itself is tested on a served model
    below (and train's mixing in, too)."""
    from package_model import feedback_to_evaluate

    evaluating = digit_pngs(20, seed=5, for_training=False)
    training = digit_pngs(2, seed=4, for_training=True)
    experiment = kept_drawings(store, "feedback", training + evaluating[:19])
    assert feedback_to_evaluate("feedback", "mnist") is None
    assert "19 feedback drawings to evaluate on in 'feedback', 20 needed: no feedback_accuracy" in (
        capsys.readouterr().err
    )
    picture, digit = evaluating[19]
    feedback.save_drawing(experiment, picture, digit, str(digit), "", "v1", "mnist")
    drawings = feedback_to_evaluate("feedback", "mnist")
    assert [(row.image, row.label) for row in drawings.itertuples()] == evaluating
    assert feedback_to_evaluate("feedback", "fashion") is None  # only the dataset's drawings
    assert feedback_to_evaluate("", "mnist") is None

    spec = TransformSpec(dataset="mnist", mean=33.0, std=78.0, class_names=tuple("0123456789"))
    pixels, labels = np.zeros((3, 28, 28), dtype=np.uint8), np.array([0, 1, 2])
    sets = evaluation.served_request_sets(pixels, labels, spec, feedback=drawings)
    [feedback_set] = [each for each in sets if each.prefix == "feedback"]
    assert list(feedback_set.targets) == [str(digit) for _, digit in evaluating]
    assert sets[-1].prefix == "served"  # the frames stay last

    x_train, y_train, kept_back = feedback.training_part("feedback", spec)
    assert kept_back == len(evaluating)
    assert x_train.shape == (2, 28, 28) and x_train.dtype == np.uint8
    expected = [image_to_pixels(picture) for picture, _ in training]
    np.testing.assert_array_equal(x_train, np.stack(expected))
    assert list(y_train) == [0, 1]

    # The guide's Python block, as written, on the same drawings.
    chapter = (REPO / "docs" / "3-serving-and-drawing.md").read_text()
    section = chapter[chapter.index(GUIDE_HEADING) :]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    names = {}
    exec(block, names)
    assert (len(names["training"]), len(names["evaluating"])) == (2, 20)


def test_the_guides_feedback_block_as_written(guide_page):
    """Its draw.py line keeps a drawing in the experiment `feedback` with the model version;
    the train and package lines name parameters that their entry points take (the tests
    below train with feedback; test_promotion.py packages with champion=auto)."""
    import mlflow
    import yaml

    picture, digit = digit_pngs(1, seed=9)[0]
    status, body = post(guide_page["url"], picture, f"label={digit}", "127.0.4.1")
    assert status == 200, body
    guide_page["store"].client()
    run = mlflow.get_run(body["run_id"])
    assert mlflow.get_experiment(run.info.experiment_id).name == "feedback"
    assert run.data.params["model_version"] == "mnist v1"

    _, train, package = guide_block(GUIDE_HEADING)
    entry_points = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for line in (train, package):
        assert line.startswith("mlflow run . -e ")
        parameters = entry_points[re.search(r"-e (\w+)", line).group(1)]["parameters"]
        assert set(re.findall(r"-P (\w+)=", line)) <= set(parameters), line


# ------------------------------------------------------------------------------ used


def test_package_evaluation_reports_feedback_accuracy(pipeline, capsys):
    """package's evaluate_served, in this process, on the tiny pipeline's model: the other
    sets left out (as in test_evaluation.py), 20 feedback drawings in."""
    import mlflow

    from mnist_pipeline.data.transform import TRANSFORM_FILE, load_arrays
    from mnist_pipeline.tracking import runs
    from package_model import evaluate_served

    store = pipeline["store"]
    [package_run] = store.runs(
        "package", experiment="Default", query=f"tags.train_run = '{pipeline['train_run']}'"
    )
    preprocess_dir = runs.artifact_dir(pipeline["preprocess_run"])
    spec = TransformSpec.load(preprocess_dir / TRANSFORM_FILE)
    x_test, y_test = load_arrays(preprocess_dir, "test")
    pictures = digit_pngs(20, seed=6)
    drawings = pd.DataFrame(pictures, columns=["image", "label"])
    experiment = mlflow.create_experiment(
        "feedback-evaluation", artifact_location=(store.root / "mlruns" / "fe").as_uri()
    )
    model_uri = runs.logged_model_uri(package_run)
    with mlflow.start_run(experiment_id=experiment) as run:
        pixels = evaluation.pixels_from_arrays(x_test, spec)
        request_sets = evaluation.served_request_sets(pixels, y_test, spec, feedback=drawings)
        figures = evaluate_served(model_uri, None, request_sets)
    assert set(figures) == {"served_accuracy", "served_png_accuracy", "feedback_accuracy"}
    answers = mlflow.pyfunc.load_model(model_uri).predict(
        evaluation.feedback_pictures(drawings, spec).requests
    )
    right = answers["class_name"].to_numpy() == np.array([str(digit) for _, digit in pictures])
    assert figures["feedback_accuracy"] == pytest.approx(right.mean())
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.metrics["feedback_accuracy"] == figures["feedback_accuracy"]
    assert logged.data.tags["feedback_accuracy"] == f"{figures['feedback_accuracy']:.4f}"
    progress = capsys.readouterr().err
    assert f"Feedback accuracy {figures['feedback_accuracy']:.4f} on 20 feedback drawings" in (
        progress
    )


def test_train_mixes_in_the_training_part_and_logs_it_as_an_input(pipeline):
    import mlflow

    store = pipeline["store"]
    pictures = digit_pngs(5, seed=7, for_training=True)
    pictures += digit_pngs(2, seed=8, for_training=False)
    kept_drawings(store, "feedback-for-train", pictures)
    # Made here, with its artifacts in the store's folder: this process's MLflow has opened
    # the store before, from the tests' working directory, which it would take for ./mlruns.
    artifacts = (store.root / "mlruns" / "train-feedback").as_uri()
    mlflow.create_experiment("train-feedback", artifact_location=artifacts)
    training = ["--epochs=1", "--batch_size=32", "--nr_conv_1=8", "--architecture=classic"]
    training += ["--augment=false", "--synthetic=0", "--preprocess_run", pipeline["preprocess_run"]]
    called = store.call(
        "train.py", *training, "--feedback", "feedback-for-train", experiment="train-feedback"
    )
    assert called.returncode == 0, called.stderr
    run = store.last_run("train", "train-feedback")
    assert run.data.params["feedback"] == "feedback-for-train"
    assert run.data.params["feedback_images"] == "5"
    assert "Adding 5 feedback drawings (the training part; 2 more are kept to evaluate on)" in (
        called.stdout
    )
    inputs = {
        each.dataset.name: {tag.key: tag.value for tag in each.tags}
        for each in mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    }
    assert (
        inputs["feedback feedback-for-train (training part)"]["mlflow.data.context"] == "training"
    )

    # Resumed after more drawings came in, it would train on other data: refused.
    from mnist_pipeline import feedback

    client = mlflow.MlflowClient()
    stopped = client.create_run(run.info.experiment_id, tags={"stage": "train"}).info.run_id
    client.set_terminated(stopped, "KILLED")
    state = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/checkpoints/epoch-1/state.json")
    client.log_dict(stopped, state, "checkpoints/epoch-1/state.json")
    [(picture, digit)] = digit_pngs(1, seed=9, for_training=True)
    drawings = mlflow.get_experiment_by_name("feedback-for-train").experiment_id
    feedback.save_drawing(drawings, picture, digit, str(digit), "", "", "mnist")
    called = store.call(
        "train.py",
        *(*training, "--feedback", "feedback-for-train", "--resume", stopped),
        experiment="train-feedback",
    )
    assert called.returncode == 1
    assert called.stderr.strip().splitlines()[-1] == (
        f"train.py: error: resume: the feedback in 'feedback-for-train' changed since train "
        f"run {stopped} read it (5 drawings then, 6 now): resuming would train on other "
        "drawings; start a new training"
    )

    # A name that holds no drawing, or only other runs (this train run): one line.
    for where in ("nothing-here", "train-feedback"):
        called = store.call("train.py", *training, "--feedback", where, experiment="train-feedback")
        assert called.returncode == 1
        assert called.stderr.strip().splitlines()[-1] == (
            f"train.py: error: feedback: no drawings of mnist in an experiment or a run named "
            f"{where!r}"
        )
