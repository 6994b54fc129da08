"""A search space from train_batch's texts, and the sampler and pruner that search it.

Each hyperparameter is a value (`16`, fixed), a list (`8,16,24`: Optuna's
CategoricalDistribution) or a range (`8:64`: an Int- or FloatDistribution, lr on a log
scale). A grid (GridSampler) tries every combination of the lists; random and tpe sample.
"""

from __future__ import annotations

import argparse
import math

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mnist_pipeline.errors import UserError
from mnist_pipeline.training.hyperparameters import BY_NAME, NAMES

STRATEGIES = ("auto", "grid", "random", "tpe")
RANGES = (IntDistribution, FloatDistribution)
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3),
}


def parse(name: str, text: str) -> object:
    """Return the value of `16`, or the distribution of `8,16,24` or `8:64`, for `name`."""
    kind = BY_NAME[name].kind
    choices = BY_NAME[name].choices
    listed = " or ".join(str(choice).lower() for choice in choices)
    expected = {int: "whole numbers", float: "numbers"}.get(kind, listed)
    text = str(text).strip()
    if not text:  # train's default, which may be the dataset's
        return ""
    bounds = text.split(":")
    if len(bounds) > 1 and choices:
        raise UserError(f"{name}: {text!r} is a range; list values instead ({expected})")
    if len(bounds) > 2:
        raise UserError(f"{name}: malformed range {text!r}, expected low:high")
    items = bounds if len(bounds) == 2 else [item.strip() for item in text.split(",")]
    if "" in items:
        raise UserError(f"{name}: empty value in list {text!r}, expected e.g. 8,16,24")
    try:
        values = [kind(item) for item in items]
    except (ValueError, argparse.ArgumentTypeError):
        raise UserError(f"{name}: expected {expected}, got {text!r}") from None
    if choices and not set(values) <= set(choices):
        raise UserError(f"{name}: expected {expected}, got {text!r}")
    if len(bounds) == 1:  # a listed value that train refuses is a trial that fails
        return values[0] if len(values) == 1 else CategoricalDistribution(values)
    for bound in bounds:  # a range is checked as train checks a value, before any trial
        try:
            BY_NAME[name].check(bound)
        except argparse.ArgumentTypeError as error:
            raise UserError(f"{name}: {error}") from None
    if not values[0] < values[1]:
        raise UserError(f"{name}: range {text!r} needs low < high")
    if kind is int:
        return IntDistribution(*values)
    return FloatDistribution(*values, log=BY_NAME[name].log_scale)


def parse_space(texts: dict[str, str]) -> dict[str, object]:
    """Every hyperparameter of train, parsed, in train's order."""
    return {name: parse(name, texts[name]) for name in NAMES}


def grid(space: dict[str, object]) -> dict[str, list]:
    """The values of each hyperparameter that takes a list: what a grid combines."""
    lists = {name: v for name, v in space.items() if isinstance(v, CategoricalDistribution)}
    return {name: list(distribution.choices) for name, distribution in lists.items()}


def suggest(trial: optuna.Trial, space: dict[str, object]) -> dict[str, object]:
    """Ask `trial` for a value of each searched hyperparameter; keep the fixed ones."""
    params = dict(space)
    for name, value in space.items():
        if isinstance(value, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, value.choices)
        elif isinstance(value, IntDistribution):
            params[name] = trial.suggest_int(name, value.low, value.high)
        elif isinstance(value, FloatDistribution):
            params[name] = trial.suggest_float(name, value.low, value.high, log=value.log)
    return params


def check(texts: dict[str, str], strategy: str, trials: int) -> tuple[str, int]:
    """Return the strategy (auto: grid unless there is a range) and the number of trials.

    Raises UserError for a malformed hyperparameter or a grid of ranges.
    """
    space = parse_space(texts)
    ranges = [name for name, value in space.items() if isinstance(value, RANGES)]
    if strategy == "grid" and ranges:
        raise UserError(f"strategy grid cannot search ranges ({', '.join(ranges)}); use tpe")
    if strategy == "auto":
        strategy = "tpe" if ranges else "grid"
    if strategy == "grid":
        trials = math.prod(len(values) for values in grid(space).values())
    return strategy, trials


def make_sampler(
    texts: dict[str, str], strategy: str, trials: int, seeded: bool = True
) -> optuna.samplers.BaseSampler:
    """Optuna's sampler for `strategy`, seeded by the training seed (when it is one value)
    unless told not to: workers that join a search, seeded alike, would all suggest the
    same first trials."""
    space = parse_space(texts)
    seed = space["seed"] if seeded and isinstance(space["seed"], int) else None
    if strategy == "grid":
        return optuna.samplers.GridSampler(grid(space), seed=seed)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials that run at the same time are told apart, not suggested twice.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=min(4, trials), constant_liar=True
    )
