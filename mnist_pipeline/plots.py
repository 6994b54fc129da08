"""Pictures logged with the runs: example grids, class histograms, confusion matrices."""

from __future__ import annotations

import numpy as np


def _figure(**options):
    """A figure of its own, not one of pyplot's: nothing to close, so none pile up in a
    process that makes many (a search's trial process trains one model after another)."""
    from matplotlib.figure import Figure

    return Figure(**options)


def examples_grid(images: np.ndarray, labels: np.ndarray, class_names, per_class: int = 10):
    """Return a figure with `per_class` training images of each class, one class per row.

    Each row is one picture of its images side by side with a white gap between them:
    ten axes rather than a hundred, which Matplotlib lays out and draws in a fraction
    of the time.
    """
    import matplotlib

    height, width = images.shape[1:3]
    gap = max(1, width // 4)
    figure = _figure(figsize=(per_class * 0.8, len(class_names) * 0.85))
    axes = figure.subplots(len(class_names), 1, squeeze=False)
    colours = matplotlib.colormaps["gray"].with_extremes(bad="white")
    for row, name in enumerate(class_names):
        strip = np.full((height, per_class * (width + gap) - gap), np.nan)
        for column, index in enumerate(np.flatnonzero(labels == row)[:per_class]):
            left = column * (width + gap)
            strip[:, left : left + width] = images[index]
        axis = axes[row, 0]
        axis.imshow(np.ma.masked_invalid(strip), cmap=colours, vmin=0, vmax=255)
        axis.axis("off")
        axis.set_title(name, fontsize=8, loc="left")
    figure.suptitle("Examples per class")
    figure.tight_layout()
    return figure


def class_histogram(train_counts: np.ndarray, test_counts: np.ndarray, class_names):
    """Return a bar chart of how many training and test images each class has."""
    positions = np.arange(len(class_names))
    figure = _figure(figsize=(8, 4))
    axis = figure.subplots()
    axis.bar(positions - 0.2, train_counts, width=0.4, label="train")
    axis.bar(positions + 0.2, test_counts, width=0.4, label="test")
    axis.set_xticks(positions, class_names, rotation=30, ha="right")
    axis.set_ylabel("images")
    axis.set_title("Images per class")
    axis.legend()
    figure.tight_layout()
    return figure


def pixel_histogram(images: np.ndarray, mean: float, std: float):
    """Return a histogram of the training pixels, with the mean and one std marked."""
    figure = _figure(figsize=(7, 3.5))
    axis = figure.subplots()
    counts = np.bincount(images.ravel(), minlength=256)
    axis.bar(np.arange(256), counts, width=1.0)
    axis.set_yscale("log")
    axis.axvline(mean, color="red", label=f"mean {mean:.2f}")
    axis.axvspan(
        max(0, mean - std), min(255, mean + std), color="red", alpha=0.1, label=f"± std {std:.2f}"
    )
    axis.set_xlabel("pixel value")
    axis.set_ylabel("pixels (log)")
    axis.set_title("Pixel values of the training set")
    axis.legend()
    figure.tight_layout()
    return figure


def confusion_matrix(y_true: np.ndarray, y_predicted: np.ndarray, class_names):
    """Return scikit-learn's heat map of the counts of (true, predicted) classes, on a log
    scale so that a handful of mistakes shows."""
    from matplotlib.colors import SymLogNorm
    from sklearn.metrics import ConfusionMatrixDisplay

    figure = _figure(figsize=(7, 6))
    axis = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_predicted,
        labels=range(len(class_names)),
        display_labels=class_names,
        ax=axis,
        cmap="Blues",
        xticks_rotation=45,
        im_kw={"norm": SymLogNorm(linthresh=1)},
        text_kw={"fontsize": 7},
    )
    axis.set_title("Confusion matrix (test set)")
    figure.tight_layout()
    return figure


def metric_against_params(table, metric: str, params: list[str]):
    """Return one scatter plot per searched hyperparameter: `metric` against its values."""
    figure = _figure(figsize=(4 * max(1, len(params)), 3.5))
    axes = figure.subplots(1, max(1, len(params)), squeeze=False)
    finished = table[table[metric].notna()]
    for axis, param in zip(axes[0], params, strict=False):
        axis.scatter(finished[param].astype(float), finished[metric], color="tab:blue")
        axis.set_xlabel(param)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        if param == "lr":
            from matplotlib import ticker

            # Plain numbers, tilted, at 1, 2 and 5 per decade where the values span fewer
            # than two: matplotlib's own labels of a narrow range fall on top of each other.
            values = finished[param].astype(float)
            narrow = len(values) and values.max() < 100 * values.min()
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5) if narrow else (1,)))
            axis.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:.2g}"))
            axis.xaxis.set_minor_formatter(ticker.NullFormatter())
            axis.tick_params(axis="x", labelrotation=30)
    figure.suptitle(f"{metric} by trial")
    figure.tight_layout()
    return figure
