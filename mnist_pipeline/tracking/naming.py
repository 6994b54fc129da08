"""Run names and descriptions that read well in `mlflow ui`.

A run is named by what it is (`get_data mnist`, `train nr_conv_1=16 lr=0.002 epochs=5`,
`package mnist v4`) instead of MLflow's random `dazzling-hawk-970`; a batch's trials are
named `trial 3/12 nr_conv_1=24` by search/study.py. Its description (the tag
`mlflow.note.content`, shown at the top of the run's page) says what it did and links the
runs it used. An experiment without a description gets one that says how to read it.

`describe(run_id)` builds both from what the run has logged (its stage, tags, params and
metrics), so a stage calls it when its run starts and again when it ends. A name that a
user chose (`mlflow run --run-name ...`) is kept.
"""

from __future__ import annotations

import os
import re

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_pipeline.tracking.signals import PROCESS_TAG, stopping
from mnist_pipeline.training.hyperparameters import NAMES as HYPERPARAMETERS

RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
PARENT_TAG = "mlflow.parentRunId"
USER_TAG = "mlflow.user"
ENTRY_POINT_TAG = "mlflow.project.entryPoint"  # set by `mlflow run . -e <entry point>`
ERROR_TAG = "error"  # why a run FAILED: its error's first line
# How MLflow names a run that nobody named: adjective-animal-number.
_RANDOM_NAME = re.compile(r"^[a-z]+-[a-z]+-\d+$")
EXPERIMENT_DESCRIPTION = """\
Runs of the MNIST workshop pipeline: `get_data` → `explore_data` → `preprocess` → `train`
→ `package`, and `train_batch` for batches of trainings (their trials are nested under them).
Each run is named by what it is, and its description links the runs it used.

In MLflow 3's UI, switch the toggle at the top left from **GenAI** to **Model training** to
see these runs. Add the `accuracy` column to compare trainings, and select runs and press
**Compare**, or open the **Chart** view, to compare trials."""


def describe(run_id: str, client: MlflowClient | None = None) -> None:
    """Name and describe the run `run_id` from what it has logged so far.

    Failures to write the tags are not the stage's failures: a run that did its work
    keeps its status even if the tracking server refuses a tag.
    """
    client = client or MlflowClient()
    try:
        run = client.get_run(run_id)
        name, text = name_and_text(run, client)
        tags = {NOTE_TAG: text}
        if name and may_rename(run):
            tags[RUN_NAME_TAG] = name
        # "Created by": on a server with logins, the login rather than the OS user (root, in
        # a container) that MLflow's client puts there.
        if os.environ.get("MLFLOW_TRACKING_USERNAME"):
            tags[USER_TAG] = os.environ["MLFLOW_TRACKING_USERNAME"]
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        describe_experiment(run.info.experiment_id, client)
    except MlflowException:
        pass


def describe_experiment(experiment_id: str, client: MlflowClient | None = None) -> None:
    """Give the experiment a description, unless it has one."""
    client = client or MlflowClient()
    experiment = client.get_experiment(experiment_id)
    if not experiment.tags.get(NOTE_TAG):
        client.set_experiment_tag(experiment_id, NOTE_TAG, EXPERIMENT_DESCRIPTION)


def name_and_text(run, client: MlflowClient) -> tuple[str, str]:
    """Return the run's name (empty to keep it) and its description, in Markdown."""
    stage = run.data.tags.get("stage", "")
    builder = _BUILDERS.get(stage)
    if builder is None:
        return "", ""
    name, text = builder(run, client)
    if error := run.data.tags.get(ERROR_TAG):
        text += f"\n\n**Failed:** {error}"
    elif stopping():  # described as this process stops: the run ends KILLED
        text += "\n\n**Stopped** (Ctrl-C or SIGTERM) before it finished."
    return name, text


# ------------------------------------------------------------------ one builder per stage


def _get_data(run, client) -> tuple[str, str]:
    tags, metrics = run.data.tags, run.data.metrics
    dataset = _dataset(run)
    text = f"Fetched the four IDX files of **{dataset}** from `{tags.get('source', '?')}`"
    if "train_count" in metrics:
        text += (
            f": {int(metrics['train_count']):,} training and {int(metrics['test_count']):,} "
            "test images"
        )
    if "verified" in tags:
        text += (
            ", checked against the official checksums"
            if tags["verified"] == "true"
            else ", **not** verified against the official checksums (`allow_unverified`)"
        )
    text += ". The files are in this run's artifacts, under `data/`."
    return f"get_data {dataset}".strip(), text


def _images_of(run, client, done: str, which: str) -> tuple[dict, dict, str, str]:
    """The run's tags, metrics, dataset, and `<done> the **mnist** <which> of <source>`."""
    tags, metrics = run.data.tags, run.data.metrics
    dataset = _dataset(run)
    named = f"**{dataset}** " if dataset else ""
    return tags, metrics, dataset, f"{done} the {named}{which} of {_source(tags, client)}"


def _mean_and_std(metrics: dict, words: str) -> str:
    if "mean" not in metrics:
        return ""
    return words.format(mean=metrics["mean"], std=metrics["std"])


def _explore_data(run, client) -> tuple[str, str]:
    tags, metrics, dataset, text = _images_of(run, client, "Measured", "training images")
    text += _mean_and_std(metrics, ": pixel mean {mean:.2f}, std {std:.2f}")
    text += (
        ". Drew examples of each class, the class histogram and the pixel histogram "
        "(`examples_per_class.png`, `class_histogram.png`, `pixel_histogram.png`)."
    )
    return f"explore_data {dataset}".strip(), text


def _preprocess(run, client) -> tuple[str, str]:
    tags, metrics, dataset, text = _images_of(run, client, "Normalised", "images")
    text += _mean_and_std(metrics, " with mean {mean:.2f} and std {std:.2f}")
    if "mean" in metrics:
        if tags.get("explore_run"):
            text += f" (measured by {_link(tags['explore_run'], client)})"
        elif tags.get("mean_std_from") == "parameters":
            text += " (given as parameters)"
    text += (
        ". Wrote `arrays/train.npz`, `arrays/test.npz` and `transform.json`, the transform "
        "that the served model applies."
    )
    return f"preprocess {dataset}".strip(), text


def _train(run, client) -> tuple[str, str]:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    # What train used: `epochs` left empty (`''` under `mlflow run`) is the dataset's default,
    # which train logs as `epochs_used`.
    used = {n: params.get(f"{n}_used", params.get(n, "")) for n in HYPERPARAMETERS}
    # The architecture and augmentation are said in words below.
    words = ("architecture", "augment")
    shown = [n for n in HYPERPARAMETERS if used[n] not in ("", "''") and n not in words]
    name = "train " + " ".join(f"{n}={_value(used[n])}" for n in shown[:3])
    settings = ", ".join(f"{n}={_value(used[n])}" for n in shown)
    # The architecture is always named (runs before it was a param trained the classic
    # CNN), and augmentation when there was some.
    architecture = params.get("architecture", "classic")
    name += f" {architecture}"
    settings += f", architecture={architecture}"
    if float(params.get("augment_rotation_degrees", 0) or 0) > 0:
        name += " augmented"
        settings += ", on randomly distorted digits (params `augment_*`)"
    text = f"Trained the CNN ({settings})"
    if tags.get("preprocess_run"):
        text += f" on the arrays of {_link(tags['preprocess_run'], client)}"
    if "accuracy" in metrics:
        text += f". Test accuracy **{metrics['accuracy']:.4f}**"
        if "loss" in metrics:
            text += f" (loss {metrics['loss']:.4f})"
        if "train_seconds" in metrics:
            text += f" after {metrics['train_seconds']:.0f} s of training"
        text += (
            ". The Keras model is logged as `model`; `confusion_matrix.png` shows which "
            "classes it confuses"
        )
    text += "."
    if tags.get("pruned") == "true":
        text += (
            f" Pruned after epoch {tags.get('pruned_at_epoch', '?')}: its validation accuracy "
            "lagged behind the batch's other trials', so it has no test accuracy or model."
        )
    if tags.get("trial") and tags.get(PARENT_TAG):
        text += f"\n\nTrial {tags['trial']} of the batch {_link(tags[PARENT_TAG], client)}."
    return name, text


def _train_batch(run, client) -> tuple[str, str]:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    searched = [n for n in HYPERPARAMETERS if re.search(r"[,:]", params.get(n, ""))]
    strategy = tags.get("strategy") or params.get("strategy", "")
    shown = " ".join(f"{n}={params[n]}" for n in searched)
    # Named from its parameters only, so that the name its trials link to never changes.
    chosen = params.get("strategy", "auto")
    name = f"train_batch {'' if chosen == 'auto' else chosen + ' '}{shown}".strip()
    text = f"A batch of trainings ({strategy}"
    if searched:
        text += ", searching " + ", ".join(f"`{n}` in `{params[n]}`" for n in searched)
    text += ")"
    if tags.get("preprocess_run"):
        text += f" on the arrays of {_link(tags['preprocess_run'], client)}"
    text += f", {params.get('workers', '1')} at a time. Each trial is a nested train run."
    if "trials_finished" in metrics:
        finished, failed = int(metrics["trials_finished"]), int(metrics.get("trials_failed", 0))
        text += f" {finished} finished" + (f", {failed} failed" if failed else "") + "."
    if tags.get("best_run_id") and "best_accuracy" in metrics:
        text += (
            f" The best is {_link(tags['best_run_id'], client)} with test accuracy "
            f"**{metrics['best_accuracy']:.4f}**."
        )
    text += (
        "\n\nTo compare the trials, select them in the runs table and press **Compare**, or "
        "open the **Chart** view; `accuracy_by_hyperparameter.png` is in the artifacts."
    )
    return name, text


def _train_batch_worker(run, client) -> tuple[str, str]:
    tags, metrics = run.data.tags, run.data.metrics
    host = tags.get("host") or tags.get(PROCESS_TAG, "a machine:").rsplit(":", 1)[0]  # host:pid
    name = f"train_batch_worker {host}"
    text = f"A worker on `{host}`"
    if tags.get("joined"):
        text += f" that joined the search {_link(tags['joined'], client)}"
    text += (
        ", whose settings it took from the search's `search.json`: its own parameters, but "
        "for `join` and `workers`, are unused defaults."
    )
    if "trials_run_here" in metrics:
        text += f" It ran {int(metrics['trials_run_here'])} of the search's trials."
    return name, text


def _package(run, client) -> tuple[str, str]:
    tags, metrics = run.data.tags, run.data.metrics
    dataset = _dataset(run)
    version = _registered_version(run.info.run_id, client)
    name = f"package {dataset}".strip() + (f" v{version.version}" if version else "")
    text = "Bundled the CNN"
    if tags.get("train_run"):
        text += f" of {_link(tags['train_run'], client)}"
    if "accuracy" in metrics:
        text += f" (test accuracy **{metrics['accuracy']:.4f}**)"
    if tags.get("preprocess_run"):
        text += f" with the transform of {_link(tags['preprocess_run'], client)}"
    text += " into one pyfunc model, logged as `model`"
    served = [
        f"**{metrics[metric]:.4f}** {what}"
        for metric, what in (
            ("served_accuracy", "on the test images sent as pixels"),
            ("served_png_accuracy", "on test images sent as PNG files"),
            ("drawn_accuracy", "on the drawn digits"),
        )
        if metric in metrics
    ]
    if served:
        text += ". Served, it answered right " + ", ".join(served)
    if version:
        aliases = "".join(f" `@{alias}`" for alias in version.aliases)
        text += (
            f" and registered as **{dataset}** version {version.version}{aliases}. Serve it with "
            f"`mlflow models serve -m models:/{dataset}/{version.version} --env-manager local`"
        )
    text += "."
    return name, text


def _main(run, client) -> tuple[str, str]:
    tags, metrics = run.data.tags, run.data.metrics
    dataset = _dataset(run)
    stages = ("get_data", "explore_data", "preprocess", "train", "package")
    text = f"The whole pipeline on **{dataset}**, one nested run per stage:"
    for stage in stages:
        if tags.get(f"{stage}_run"):
            text += f"\n- {_link(tags[f'{stage}_run'], client)}"
    reused = tags.get("reused_stages", "")
    if reused and reused != "none":
        text += f"\n\nReused finished runs for: {reused.replace(',', ', ')}."
    if "accuracy" in metrics:
        text += f"\n\nTest accuracy **{metrics['accuracy']:.4f}**."
    return f"main {dataset}".strip(), text


_BUILDERS = {
    "get_data": _get_data,
    "explore_data": _explore_data,
    "preprocess": _preprocess,
    "train": _train,
    "train_batch": _train_batch,
    "train_batch_worker": _train_batch_worker,
    "package": _package,
    "main": _main,
}


# ------------------------------------------------------------------------------ helpers


def may_rename(run) -> bool:
    """A run without a name, or with MLflow's random one, or one that we named, is renamed."""
    current = run.info.run_name or run.data.tags.get(RUN_NAME_TAG, "")
    stage = run.data.tags.get("stage", "")
    if run.data.tags.get("trial"):
        return False  # named `trial 3/12 ...` by the batch that started it
    ours = current == stage or current.startswith(f"{stage} ")
    return not current or bool(_RANDOM_NAME.match(current)) or ours


def _dataset(run) -> str:
    """The run's dataset: its tag, once the stage has found it; until then, the one asked for."""
    return run.data.tags.get("dataset") or run.data.params.get("dataset", "")


def _source(tags: dict, client) -> str:
    if tags.get("data_run"):
        return _link(tags["data_run"], client)
    if tags.get("in_data"):
        return f"the folder `{tags['in_data']}`"
    return "its data"


def _link(run_id: str, client) -> str:
    """Return a Markdown link to a run's page in mlflow ui, shown by the run's name."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return f"run `{run_id}`"
    label = run.info.run_name or run_id
    return f"[{label}](#/experiments/{run.info.experiment_id}/runs/{run_id})"


def _registered_version(run_id: str, client):
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version), default=None)


def _value(text) -> str:
    """Show a number as briefly as it reads: 0.0031415 becomes 0.00314, 16.0 becomes 16."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        return str(text)
    if number.is_integer() and "e" not in str(text).lower():
        return str(int(number))
    return f"{number:.3g}"
