"""Hyperparameter batches: parsing `8,16,24` and `lo:hi`, strategies, samplers and pruners."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from mnist_pipeline.errors import UserError

# The train stage's hyperparameters and their types: the names a batch may search.
HYPERPARAMETERS = {"batch_size": int, "epochs": int, "lr": float, "nr_conv_1": int, "seed": int}
STRATEGIES = ("auto", "grid", "random", "tpe")
PRUNERS = ("none", "median", "hyperband")


@dataclass(frozen=True)
class Choice:
    """A hyperparameter's values: a fixed list, or a range `low:high` for a strategy to search."""

    name: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None

    @property
    def is_range(self) -> bool:
        return self.low is not None

    @property
    def is_searched(self) -> bool:
        return self.is_range or len(self.values) > 1


def parse_choice(name: str, text: str) -> Choice:
    """Parse `16`, `8,16,24` or `8:64` for hyperparameter `name`; raise UserError if malformed."""
    if name not in HYPERPARAMETERS:
        known = ", ".join(HYPERPARAMETERS)
        raise UserError(f"unknown hyperparameter {name!r}; choose from {known}")
    kind = HYPERPARAMETERS[name]
    text = str(text).strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 2:
            raise UserError(f"{name}: malformed range {text!r}, expected low:high")
        low, high = (_number(name, kind, part, text) for part in parts)
        if not low < high:
            raise UserError(f"{name}: range {text!r} needs low < high")
        return Choice(name, low=low, high=high)
    items = [item.strip() for item in text.split(",")]
    if not text or any(item == "" for item in items):
        raise UserError(f"{name}: empty value in list {text!r}, expected e.g. 8,16,24")
    return Choice(name, values=tuple(_number(name, kind, item, text) for item in items))


def parse_choices(texts: dict[str, str]) -> list[Choice]:
    """Parse every hyperparameter of train, in HYPERPARAMETERS' order."""
    return [parse_choice(name, texts[name]) for name in HYPERPARAMETERS]


def _number(name: str, kind: type, item: str, text: str):
    try:
        return kind(item)
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise UserError(f"{name}: {item!r} in {text!r} is not a number; expected {what}") from None


def resolve_strategy(choices: list[Choice], strategy: str, shared: bool) -> str:
    """Return grid, random or tpe for `strategy` (auto included), or raise UserError.

    auto is a grid for lists and tpe when there is a range. A grid is a fixed list of
    trials that one batch hands out on one machine: asking for one explicitly while a
    study storage is `shared` is refused, and auto's grid simply does not use it.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    ranges = [choice.name for choice in choices if choice.is_range]
    if strategy == "grid" and ranges:
        raise UserError(
            f"strategy grid cannot search ranges ({', '.join(ranges)}); use random or tpe"
        )
    if strategy == "grid" and shared:
        raise UserError(
            "strategy grid runs on one machine, not through a shared study storage; "
            "use random or tpe, or unset OPTUNA_STORAGE"
        )
    if strategy == "auto":
        strategy = "tpe" if ranges else "grid"
    return strategy


def grid_points(choices: list[Choice]) -> list[dict]:
    """Every combination of the listed values, in order: the product of the lists."""
    names = [choice.name for choice in choices]
    return [
        dict(zip(names, point, strict=True))
        for point in itertools.product(*(choice.values for choice in choices))
    ]


def suggest(trial, choice: Choice):
    """Ask an Optuna trial for a value of `choice` (lr on a log scale)."""
    if not choice.is_range:
        if len(choice.values) == 1:
            return choice.values[0]
        return trial.suggest_categorical(choice.name, list(choice.values))
    if HYPERPARAMETERS[choice.name] is int:
        return trial.suggest_int(choice.name, int(choice.low), int(choice.high))
    return trial.suggest_float(choice.name, choice.low, choice.high, log=choice.name == "lr")


def make_sampler(strategy: str, seed: int | None, trials: int):
    import optuna

    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials that run at the same time are told apart, not suggested twice.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=min(4, trials), constant_liar=True
    )


def make_pruner(name: str):
    """Optuna's pruner for `name`: median (after 2 finished trials) or hyperband, or none."""
    import optuna

    if name not in PRUNERS:
        raise UserError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()
