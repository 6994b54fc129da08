"""train's hyperparameters, named once: what a value is, how train checks it, and its help.

train.py adds them to its parser, train_batch searches lists and ranges of every one of
them, and run names show them (tracking/naming.py), all in this order. Their defaults are
those of `train()` in train.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mnist_pipeline.cli import (
    boolean,
    fraction,
    or_dataset_default,
    positive_float,
    positive_int,
    seed_number,
)

# The CNNs that training/model.py builds. Named here, not imported from there: every stage
# names its runs with this list, and only train runs the model's code.
ARCHITECTURES = ("deeper", "classic")


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    kind: Callable[[str], object]  # a value from its text: int, float, str or cli.boolean
    check: Callable[[str], object]  # train's argparse type, stricter than `kind`
    help: str
    choices: tuple = ()  # the only values a categorical one takes
    log_scale: bool = False  # a range of it is searched on a log scale


HYPERPARAMETERS = (
    Hyperparameter("nr_conv_1", int, positive_int, "filters of the first convolution"),
    Hyperparameter("lr", float, positive_float, "peak learning rate", log_scale=True),
    Hyperparameter(
        "epochs",
        int,
        or_dataset_default(positive_int),
        "passes over the training images (empty: the dataset's default, 5 or 7)",
    ),
    Hyperparameter("batch_size", int, positive_int, "images per gradient step"),
    Hyperparameter(
        "architecture",
        str,
        str,
        "deeper (four convolutions, the default) or classic (the workshop's two 5x5 blocks)",
        choices=ARCHITECTURES,
    ),
    Hyperparameter(
        "augment",
        boolean,
        boolean,
        "randomly rotate, shear, zoom, shift and re-stroke training digits (not clothes)",
        choices=(True, False),
    ),
    Hyperparameter(
        "synthetic",
        float,
        fraction,
        "typed and pen-drawn digits added to training, as a share of its images (not clothes)",
    ),
    Hyperparameter(
        "label_smoothing",
        float,
        or_dataset_default(fraction),
        "the share of each label spread over the other classes (empty: the dataset's, 0 or 0.1)",
    ),
    Hyperparameter(
        "seed", int, seed_number, "seeds the weights, the shuffling and the distortions"
    ),
)
BY_NAME = {hyperparameter.name: hyperparameter for hyperparameter in HYPERPARAMETERS}
NAMES = tuple(BY_NAME)
