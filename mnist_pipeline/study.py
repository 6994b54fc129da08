"""One Optuna study shared by many workers: trials, pruning and the team's search."""

from __future__ import annotations


def pruning_callbacks() -> list:
    """Keras callbacks that report each epoch to the trial's Optuna study, if there is one."""
    return []
