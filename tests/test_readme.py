"""The guide's command blocks (README.md and its chapters, docs/*.md), run as written in a
copy of the project.

Only the placeholders (`<train run id>`, ...) are replaced, by the runs that the commands
before them made, and a server's port by a free one. The copy's `../shared/data` holds a
tiny generated MNIST and Fashion-MNIST, so that the blocks run in seconds rather than
minutes; tests/test_real_pipeline.py is the one that trains on the real mirror.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, free_port, make_store, once_per_session, running, write_tiny_dataset

from mnist_pipeline.data.catalogue import DATASETS
from mnist_pipeline.data.idx import read_idx, read_idx_sha256
from mnist_pipeline.serving.drawn_digits import DRAWN_DIGITS
from mnist_pipeline.serving.font_digits import FONT_DIGITS
from mnist_pipeline.tracking import runs
from mnist_pipeline.tracking.signals import PROCESS_TAG
from tests.helpers import ONE_UI_PROCESS, a_sample_of, copy_of_the_working_tree

# The guide: the README, then its chapters in the order a participant reads them.
GUIDE = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory) -> Path:
    """A `shared/data` folder with a tiny `mnist` and `fashion`, made once per session."""

    def build(folder: Path) -> str:
        write_tiny_dataset(folder / "data" / "mnist", seed=0)
        write_tiny_dataset(folder / "data" / "fashion", seed=1)
        return str(folder)

    return Path(once_per_session(tmp_path_factory, "tiny-mirror", build))


def guide_block(heading: str) -> list[str]:
    """The command lines of the first bash block after the line `heading`, in the one file of
    the guide (README.md or a chapter in docs/) that has that heading."""
    line = re.compile(rf"^{re.escape(heading)}$", re.MULTILINE)
    found = [(path, match) for path in GUIDE if (match := line.search(path.read_text()))]
    assert len(found) == 1, f"{heading!r} is a heading in {[str(path) for path, _ in found]}"
    path, match = found[0]
    section = path.read_text()[match.start() :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_leads_through_the_chapters_in_order():
    """One link per chapter, in the order the file names sort; each chapter has its commands
    and one thing to try; every link and picture of the guide is there."""
    chapters = [path.name for path in GUIDE[1:] if path.name[0].isdigit()]
    readme = GUIDE[0].read_text()
    linked = [name for name in re.findall(r"\]\(docs/([\w-]+\.md)\)", readme) if name[0].isdigit()]
    assert list(dict.fromkeys(linked)) == chapters
    assert "docs/reference.md" in readme
    for path in GUIDE:
        text = path.read_text()
        if path.name in chapters:
            assert "```bash\n" in text and "## Try this" in text, path.name
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name} links {target}"


def copy_of_the_project(tmp_path: Path, mirror: Path):
    """The working tree as a user has it after cloning (../shared beside it), and its store.

    `../shared` is the tiny `mirror`. Its MNIST files are not the official ones, so the
    copy's catalogue pins their checksums instead: get_data verifies them as it would the
    real files, and the guide's commands need no `allow_unverified` that they do not show.
    The drawn and the font digits are a sample, as tiny as the data. The store is MLflow's
    default, ./mlflow.db in the project, as for a user.
    """
    project = copy_of_the_working_tree(tmp_path / "project")
    for picture_set in (DRAWN_DIGITS, FONT_DIGITS):
        shutil.rmtree(project / picture_set.name)
        a_sample_of(picture_set, project / picture_set.name)
    (tmp_path / "shared").symlink_to(mirror)
    catalogue = project / "mnist_pipeline" / "data" / "catalogue.py"
    text = catalogue.read_text()
    for idx_file in DATASETS["mnist"].files:
        tiny = read_idx_sha256(mirror / "data" / "mnist" / idx_file.name)
        assert text.count(idx_file.sha256) == 1, idx_file.name
        text = text.replace(idx_file.sha256, tiny)
    catalogue.write_text(text)
    # A repository, as after `git clone`, so that a test can ask git what the commands left.
    identity = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-q", "-m", "clone"]):
        subprocess.run(["git", *command], cwd=project, check=True, capture_output=True)
    store = make_store(project)
    store.env.pop("MLFLOW_TRACKING_URI")
    return project, store


def untracked_or_changed(project: Path) -> str:
    """What `git status --porcelain` lists: what the commands left that git would commit."""
    status = ["git", "status", "--porcelain", "--untracked-files=all"]
    return subprocess.run(status, cwd=project, capture_output=True, text=True, check=True).stdout


def in_project(project: Path):
    """Point this process's MLflow at the project's store, ./mlflow.db; return a client."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.MlflowClient()


def newest(project: Path, stage: str, experiment: str | None = None) -> str:
    in_project(project)
    experiments = [experiment] if experiment else None
    return runs.finished_runs(stage, experiment_ids_=experiments, max_results=1)[0].info.run_id


def experiment_id(project: Path, name: str) -> str:
    return in_project(project).get_experiment_by_name(name).experiment_id


def tags_of(project: Path, run_id: str) -> dict:
    return in_project(project).get_run(run_id).data.tags


def trial_count(line: str) -> int:
    """How many trials a guide's `train_batch` line asks for: `trials`, or the grid's size."""
    params = dict(re.findall(r"-P (\w+)=(\S+)", line))
    if "trials" in params:
        return int(params["trials"])
    return math.prod(len(value.split(",")) for value in params.values())


def run_lines(store, project: Path, lines: list[str], replace) -> None:
    for line in lines:
        store.run(["bash", "-c", replace(line)], cwd=project, timeout=1200)


def test_stage_by_stage_block_as_written(tmp_path, tiny_mirror):
    project, store = copy_of_the_project(tmp_path, tiny_mirror)
    lines = guide_block("## The pipeline, stage by stage")
    assert lines[-1] == "mlflow ui"

    def replace(line: str) -> str:
        for stage in ("get_data", "preprocess", "train"):
            if f"<{stage} run id>" in line:
                line = line.replace(f"<{stage} run id>", newest(project, stage))
        return line

    run_lines(store, project, lines[:-1], replace)
    assert (project / "mlflow.db").exists() and (project / "model" / "MLmodel").exists()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ui = ["bash", "-c", f"{lines[-1]} --port {port}"]
    env = {**store.env, **ONE_UI_PROCESS}
    with running(ui, f"{url}/", cwd=project, env=env, timeout=300):
        page = urllib.request.urlopen(f"{url}/", timeout=10).read()
        assert b"MLflow" in page or b"mlflow" in page
        # The UI reads the block's runs: the train run in conv1, the others in Default.
        search = urllib.request.Request(
            f"{url}/ajax-api/2.0/mlflow/runs/search",
            data=json.dumps(
                {"experiment_ids": ["0", experiment_id(project, "conv1")], "max_results": 50}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        listed = json.loads(urllib.request.urlopen(search, timeout=30).read())["runs"]
        listed_ids = {run["info"]["run_id"] for run in listed}
        for stage in ("get_data", "explore_data", "preprocess", "train", "package"):
            assert newest(project, stage) in listed_ids, stage
    # Chapter 3 then asks for a picture of a digit: `cp drawn_digits/... my_digit.png`.
    chapter_3 = (REPO / "docs" / "3-serving-and-drawing.md").read_text()
    copy = re.search(r"`(cp drawn_digits/\S+ my_digit\.png)`", chapter_3).group(1)
    store.run(["bash", "-c", copy], cwd=project)
    assert (project / "my_digit.png").exists()
    # The store, its lock, the data, the runs' artifacts, the model and the picture are all
    # ignored.
    assert untracked_or_changed(project) == ""


def test_workshop_block_as_written(tmp_path, tiny_mirror):
    project, store = copy_of_the_project(tmp_path, tiny_mirror)
    lines = guide_block("## The workshop's own commands")
    fashion_starts = next(n for n, line in enumerate(lines) if "experiments create" in line)

    def replace(line: str) -> str:
        if "./mlruns/0/<preprocess run id>" in line:
            line = line.replace("<preprocess run id>", newest(project, "preprocess", "0"))
        if "<exp id>" in line:
            experiment = experiment_id(project, "fashion")
            line = line.replace("<exp id>", experiment)
            if "<preprocess run id>" in line:
                line = line.replace(
                    "<preprocess run id>", newest(project, "preprocess", experiment)
                )
            if "<model id>" in line:
                train_run = newest(project, "train", experiment)
                model = runs.logged_model_uri(in_project(project).get_run(train_run))
                model = model.removeprefix("models:/")
                line = line.replace("<model id>", model)
        assert "<" not in line, line
        return line

    run_lines(store, project, lines[:fashion_starts], replace)
    mnist_train = newest(project, "train", "0")
    # input_dir=./mlruns/0/<id>/artifacts resolves to that preprocess run.
    assert tags_of(project, mnist_train)["preprocess_run"] == newest(project, "preprocess", "0")
    run_lines(store, project, lines[fashion_starts:], replace)
    fashion = experiment_id(project, "fashion")
    runs_of = {
        stage: newest(project, stage, fashion)
        for stage in ("get_data", "explore_data", "preprocess", "train", "package")
    }
    # The workshop's own parameter names (type, outdir, in_data, input_dir, model_dir)
    # each resolve to the run that wrote the folder they name.
    assert tags_of(project, runs_of["explore_data"])["data_run"] == runs_of["get_data"]
    assert tags_of(project, runs_of["preprocess"])["mean_std_from"] == "parameters"
    assert tags_of(project, runs_of["train"])["preprocess_run"] == runs_of["preprocess"]
    tags = tags_of(project, runs_of["package"])
    assert tags["train_run"] == runs_of["train"]
    assert tags["dataset"] == "fashion"
    spec = json.loads((project / "model" / "artifacts" / "transform.json").read_text())
    assert (spec["mean"], spec["std"]) == (72.94, 90.021)
    assert spec["class_names"][-1] == "Ankle boot"
    assert mnist_train != newest(project, "train", fashion)


def test_batch_block_as_written(tmp_path, tiny_mirror):
    """The batch chapter's block, on the tiny dataset: grid, TPE, best, champion, serve.

    It is also the test of a TPE search over ranges and of `train_run=best` with the
    champion alias (tests/test_batch.py tests a grid with failing trials).
    """
    project, store = copy_of_the_project(tmp_path, tiny_mirror)
    digits = tiny_mirror / "data" / "mnist"
    # What the block starts from, a preprocess run, made by the scripts (the other two
    # blocks run these stages with `mlflow run` as written).
    source = ("--source", str(digits), "--allow_unverified", "true")
    store.script("download.py", *source, "--outdir", str(tmp_path / "data"))
    store.script("preprocess.py")
    preprocess_run = newest(project, "preprocess")
    lines = guide_block("## Hyperparameter batches")
    serve = lines.pop()
    assert serve == "mlflow models serve -m models:/mnist@champion --env-manager local"
    run_lines(store, project, lines, lambda line: line.replace("<run id>", preprocess_run))

    conv1 = experiment_id(project, "conv1")
    batch_lines = [line for line in lines if "-e train_batch" in line]
    client = in_project(project)
    batches = runs.finished_runs("train_batch", experiment_ids_=[conv1])
    assert len(batches) == len(batch_lines) == 2
    trials = runs.finished_runs("train", experiment_ids_=[conv1])
    assert len(trials) == sum(trial_count(line) for line in batch_lines)

    # The TPE search: every trial a FINISHED child within the ranges asked for, its
    # trials run by two trial processes, one per worker (TensorFlow started twice).
    (tpe_line,) = [line for line in batch_lines if "strategy=tpe" in line]
    (tpe,) = [run for run in batches if run.data.tags.get("strategy") == "tpe"]
    children = client.search_runs(
        [conv1], f"tags.mlflow.parentRunId = '{tpe.info.run_id}'", max_results=100
    )
    assert len(children) == trial_count(tpe_line)
    ranges = dict(re.findall(r"-P (lr|nr_conv_1)=([0-9.]+:[0-9.]+)", tpe_line))
    for run in children:
        assert run.info.status == "FINISHED"
        for name, bounds in ranges.items():
            low, high = (float(bound) for bound in bounds.split(":"))
            assert low <= float(run.data.params[name]) <= high, (name, run.data.params[name])
    assert len({run.data.tags[PROCESS_TAG] for run in children}) == 2

    # train_run=best packaged the most accurate train run of conv1, from a run in conv1 too,
    # and made it champion.
    assert len(runs.finished_runs("package", experiment_ids_=[conv1])) == 1
    best_accuracy = max(batch.data.metrics["best_accuracy"] for batch in batches)
    version = client.get_model_version_by_alias("mnist", "champion")
    chosen = client.get_run(version.tags["train_run"])
    assert chosen.info.experiment_id == conv1
    assert chosen.data.metrics["accuracy"] == best_accuracy  # ties may name either run
    assert version.tags["accuracy"] == f"{best_accuracy:.4f}"
    assert version.tags["champion_reason"] == (
        f"highest test accuracy ({best_accuracy:.4f}) of the train runs compared"
    )

    port = free_port()
    command = ["bash", "-c", f"{serve} -p {port}"]
    first_test_image = read_idx(digits / "t10k-images-idx3-ubyte.gz")[0]
    with running(command, f"http://127.0.0.1:{port}/ping", cwd=project, env=store.env):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": [first_test_image.tolist()]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        (prediction,) = answer["predictions"]
        assert set(prediction) == {"label", "class_name", "probability"}


def weights_of(path: Path) -> dict:
    """Every array of a Keras .weights.h5 file (the layers' and the optimizer's), by name."""
    import h5py

    arrays = {}
    with h5py.File(path) as weights:
        weights.visititems(
            lambda name, item: (
                arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    return arrays


def stopped_after_first_checkpoint(command: str, project: Path, env: dict, log: Path) -> str:
    """Run `command`, SIGTERM it (as a CI timeout does) once an epoch-1 checkpoint is whole.

    Returns the ID of the run that the checkpoint belongs to.
    """
    before = set(project.glob("mlruns/*/*/artifacts/checkpoints/epoch-1/state.json"))
    with open(log, "w") as output:
        process = subprocess.Popen(
            shlex.split(command),
            cwd=project,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            whole = []
            while not whole and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
                whole = [
                    path
                    for path in project.glob("mlruns/*/*/artifacts/checkpoints/epoch-1/state.json")
                    if path not in before
                ]
            if whole:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert whole, log.read_text()[-3000:]
    return whole[0].parents[3].name


def test_checkpoint_block_as_written(tmp_path, tiny_mirror):
    """The after-the-first-model chapter's block: train, stop, resume, the best checkpoint.

    The first command's training runs once to its end (the uninterrupted training, through
    train.py), and the command itself once, stopped with SIGTERM after its first epoch. The resumed run trains only the remaining epochs
    and ends with the uninterrupted run's whole training state (CNN, augmentation,
    optimizer), within floating-point tolerance.
    """
    import mlflow

    project, store = copy_of_the_project(tmp_path, tiny_mirror)
    source = ("--source", str(tiny_mirror / "data" / "mnist"), "--allow_unverified", "true")
    store.script("download.py", *source, "--outdir", str(tmp_path / "data"))
    store.script("preprocess.py")
    train, resume, best = guide_block("## Train, stop, resume")
    # The uninterrupted training: the same settings, through the script (no `mlflow run`
    # start-up, 4.5 CPU-seconds).
    assert train.endswith("--experiment-name checkpoints -P epochs=3")
    store.script("train.py", "--epochs", "3", experiment="checkpoints")
    experiment = experiment_id(project, "checkpoints")
    uninterrupted = newest(project, "train", experiment)

    stopped = stopped_after_first_checkpoint(train, project, store.env, tmp_path / "train.log")
    client = in_project(project)
    assert client.get_run(stopped).info.status == "KILLED", (tmp_path / "train.log").read_text()
    # It says how to go on, and its description that it stopped.
    assert f"-P resume={stopped}" in (tmp_path / "train.log").read_text()
    assert "**Stopped**" in tags_of(project, stopped)["mlflow.note.content"]
    folder = project / "mlruns" / experiment
    done = sorted(
        int(path.parent.name[6:])
        for path in folder.glob(f"{stopped}/artifacts/checkpoints/*/state.json")
    )
    assert done and done[-1] < 3, done

    run_lines(store, project, [resume], lambda line: line.replace("<stopped run id>", stopped))
    resumed = newest(project, "train", experiment)
    tags = tags_of(project, resumed)
    assert tags["resumed_from"] == stopped
    assert tags["resumed_after_epoch"] == str(done[-1])
    # Only the remaining epochs were trained (the steps count epochs from 0).
    steps = [metric.step for metric in client.get_metric_history(resumed, "val_accuracy")]
    assert steps == list(range(done[-1], 3))
    final = "artifacts/checkpoints/epoch-3/training.weights.h5"
    expected = weights_of(folder / uninterrupted / final)
    actual = weights_of(folder / resumed / final)
    assert sorted(actual) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(actual[name], values, rtol=1e-5, atol=1e-6, err_msg=name)

    # The best checkpoint of the resumed run, by validation accuracy, as the guide asks it.
    line = best.replace("<experiment id>", experiment).replace("<train run id>", resumed)
    printed = store.run(["bash", "-c", line], cwd=project).stdout.split()[0]
    checkpoints = mlflow.search_logged_models(
        experiment_ids=[experiment],
        filter_string=f"source_run_id = '{resumed}' AND name = 'checkpoint'",
        output_format="list",
    )
    accuracy = {
        model.model_id: {metric.key: metric.value for metric in model.metrics}["val_accuracy"]
        for model in checkpoints
    }
    assert len(accuracy) == 3 - done[-1]
    assert accuracy[printed] == max(accuracy.values())
