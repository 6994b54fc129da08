"""Pruning: a Keras callback that reports val_accuracy after each epoch to an Optuna trial.

A search (search/study.py) runs train.py's `main` in a process of its own, with `trial` set
to the Optuna trial of that train run. The callback reports each epoch to it, and stops
training when the study's pruner says the trial has fallen behind, before its last epoch:
a trial that has trained every epoch is finished, and keeps its test accuracy and model.
Run by hand, train has no trial, and gets no callback.
"""

from __future__ import annotations

trial = None  # the Optuna trial of the train run under way in this process, if any


def pruning_callbacks() -> list:
    """A Keras callback that reports each epoch to `trial`; none without a trial."""
    if trial is None:
        return []
    import keras
    import mlflow

    reported = trial

    class ReportToStudy(keras.callbacks.Callback):
        """Report val_accuracy after each epoch; stop training if the study's pruner says so."""

        pruned = False

        def on_epoch_end(self, epoch, logs=None):
            accuracy = float((logs or {}).get("val_accuracy", 0.0))
            reported.report(accuracy, step=epoch)
            if epoch + 1 < self.params["epochs"] and reported.should_prune():
                self.pruned = self.model.stop_training = True
                mlflow.set_tags({"pruned": "true", "pruned_at_epoch": str(epoch + 1)})
                print(f"Pruned after epoch {epoch + 1}: val_accuracy {accuracy:.4f} is behind")

    return [ReportToStudy()]


def was_pruned(callbacks: list) -> bool:
    return any(getattr(callback, "pruned", False) for callback in callbacks)
