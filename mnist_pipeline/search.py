"""Hyperparameter batches: parsing `8,16,24` and `lo:hi`, and choosing trials with Optuna."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

# The train stage's hyperparameters and their types: the names a batch may search.
HYPERPARAMETERS = {"batch_size": int, "epochs": int, "lr": float, "nr_conv_1": int, "seed": int}
STRATEGIES = ("auto", "grid", "random", "tpe")


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


def parse_choice(name: str, text: str) -> Choice:
    """Parse `16`, `8,16,24` or `8:64` for hyperparameter `name`; raise ValueError if malformed."""
    if name not in HYPERPARAMETERS:
        known = ", ".join(HYPERPARAMETERS)
        raise ValueError(f"unknown hyperparameter {name!r}; choose from {known}")
    kind = HYPERPARAMETERS[name]
    text = str(text).strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 2:
            raise ValueError(f"{name}: malformed range {text!r}, expected low:high")
        low, high = (_number(name, kind, part, text) for part in parts)
        if not low < high:
            raise ValueError(f"{name}: range {text!r} needs low < high")
        return Choice(name, low=low, high=high)
    items = [item.strip() for item in text.split(",")]
    if not text or any(item == "" for item in items):
        raise ValueError(f"{name}: empty value in list {text!r}, expected e.g. 8,16,24")
    return Choice(name, values=tuple(_number(name, kind, item, text) for item in items))


def _number(name: str, kind: type, item: str, text: str):
    try:
        return kind(item)
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise ValueError(f"{name}: {item!r} in {text!r} is not a number; expected {what}") from None


class TrialPlan:
    """Hands out trial parameters, thread-safely: every grid point, or `trials` from a sampler.

    Grid: the product of all lists, in order. random/tpe: Optuna's RandomSampler or
    TPESampler through its ask-and-tell interface, so that trials can run in parallel
    and report back as they finish.
    """

    def __init__(self, choices: list[Choice], strategy: str, trials: int, seed: int = 0):
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        ranges = [choice.name for choice in choices if choice.is_range]
        if strategy == "auto":
            strategy = "tpe" if ranges else "grid"
        if strategy == "grid" and ranges:
            raise ValueError(
                f"strategy grid cannot search ranges ({', '.join(ranges)}); use random or tpe"
            )
        if trials < 1:
            raise ValueError(f"trials must be at least 1, got {trials}")
        self.choices = choices
        self.strategy = strategy
        self.searched = [c.name for c in choices if c.is_range or len(c.values) > 1]
        self._lock = threading.Lock()
        if strategy == "grid":
            grid = itertools.product(*(choice.values for choice in choices))
            self._grid = [
                dict(zip((c.name for c in choices), point, strict=True)) for point in grid
            ]
            self.total = len(self._grid)
            self._study = None
        else:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = (
                optuna.samplers.RandomSampler(seed=seed)
                if strategy == "random"
                else optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, trials))
            )
            self._study = optuna.create_study(direction="maximize", sampler=sampler)
            self.total = trials
        self._handed_out = 0

    def next(self):
        """Return (trial handle, parameters) or None when the plan is exhausted."""
        with self._lock:
            if self._handed_out >= self.total:
                return None
            number = self._handed_out
            self._handed_out += 1
            if self._study is None:
                return number, self._grid[number]
            trial = self._study.ask()
            return trial, {choice.name: self._suggest(trial, choice) for choice in self.choices}

    def report(self, handle, accuracy: float | None) -> None:
        """Tell the sampler how a trial went (None: it failed)."""
        if self._study is None:
            return
        import optuna

        with self._lock:
            if accuracy is None:
                self._study.tell(handle, state=optuna.trial.TrialState.FAIL)
            else:
                self._study.tell(handle, accuracy)

    @staticmethod
    def _suggest(trial, choice: Choice):
        if not choice.is_range:
            if len(choice.values) == 1:
                return choice.values[0]
            return trial.suggest_categorical(choice.name, list(choice.values))
        if HYPERPARAMETERS[choice.name] is int:
            return trial.suggest_int(choice.name, int(choice.low), int(choice.high))
        return trial.suggest_float(choice.name, choice.low, choice.high, log=choice.name == "lr")
