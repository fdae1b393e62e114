"""The weights of the best validation, kept through a run and its resumptions, for a test at the best epoch.

Published LRA numbers are test metrics at the best validation, not at the last step (docs/design.md, "besttest"):
S5 and minimal-LRU test after every epoch and report the test of the epoch whose validation accuracy first reached
its maximum; S4 logs the test at every validation and keeps the checkpoint of the best ``val/accuracy``; Mega keeps
``checkpoint_best.pt`` by validation accuracy. :class:`BestValidation` follows the first rule: after every
validation, if ``val_<metric>`` is strictly better than every earlier one (higher accuracy, lower MSE; NaN never),
a copy of the weights (buffers included) replaces the kept one.

A resumed run must select the same validation as an uninterrupted one. The kept weights, score and step are part of
every checkpoint (the callback's state), so they come back with it. One validation is not: a periodic checkpoint at
step s is written before the validation of step s, and Lightning does not repeat that validation after restoring
the checkpoint; the callback scores it itself when the run starts again (:meth:`SequenceLightningModule.score`, from
the restored weights, which are the weights that validation saw), so the outcome does not depend on where the run
stopped.

Early stopping (:class:`Patience`) counts the same validations, the one a resumed run scores itself included, and its
count is part of every checkpoint too, so a resumed run stops where an uninterrupted one would have.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from ssmkit.train.objective import METRIC_NAMES

# the direction in which each head's validation metric improves
MODES = {"accuracy": "max", "mse": "min"}


def monitored(head: str) -> tuple[str, str]:
    """The validation key a head's best epoch is chosen by, and its mode: ``("val_accuracy", "max")`` for
    ``classify`` and ``lm``, ``("val_mse", "min")`` for ``regress``."""
    metric = METRIC_NAMES[head]
    return f"val_{metric}", MODES[metric]


def is_better(new: float, best: float | None, mode: str) -> bool:
    """Whether ``new`` strictly improves on ``best`` (None: nothing yet) in ``mode``, "max" or "min" (NaN never)."""
    if new != new:
        return False
    if best is None:
        return True
    return new > best if mode == "max" else new < best


class BestValidation(pl.Callback):
    """Keeps a CPU copy of the weights of the best validation (module docstring).

    Args:
        head: the model head, which fixes the monitored metric and its mode (:func:`monitored`).
        val_interval: optimizer steps between validations (validation runs at every multiple of it); the step a
            resumed run starts at is scored again when it is such a multiple.

    After ``fit``: ``step`` (the optimizer step of the best validation, None if none ran), ``score`` (its monitored
    value), ``loss`` (its validation loss) and ``weights`` (the module's ``state_dict`` at that step, on the CPU);
    ``last``, the metrics of the latest validation and its optimizer step (``{"val_loss": ..., "val_<metric>": ...,
    "val_step": ...}``, empty if none ran; the result record said which validation its val_* were of nowhere: with
    ``val_every`` 2 and 3 steps they are step 2's, not the final weights'), kept in every checkpoint too, so that a
    resumed run that validates no more still reports them. ``patience``, an
    optional :class:`Patience`, is told every validation's loss (those :meth:`catch_up` scores included).
    """

    def __init__(self, head: str, val_interval: int) -> None:
        self.key, self.mode = monitored(head)
        self.val_interval = val_interval
        self.step: int | None = None
        self.score: float | None = None
        self.loss: float | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        self.last_validated: int = -1
        self.last: dict[str, float] = {}
        self.patience: Patience | None = None

    def _offer(self, trainer: pl.Trainer, module: pl.LightningModule, step: int, score: float, loss: float) -> None:
        self.last_validated = step
        self.last = {"val_loss": loss, self.key: score, "val_step": step}
        if is_better(score, self.score, self.mode):
            self.step, self.score, self.loss = step, score, loss
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        if self.patience is not None:
            self.patience.validated(trainer, loss)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.key not in trainer.callback_metrics:
            return
        metrics = trainer.callback_metrics
        self._offer(trainer, module, trainer.global_step, float(metrics[self.key]), float(metrics["val_loss"]))

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.catch_up(trainer, module)

    def catch_up(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Score the validation of the current step if the run validates at it and this callback has not seen it:
        the validation a restored checkpoint was written just before (called when training starts and after it)."""
        step = trainer.global_step
        if step == 0 or step % self.val_interval or self.last_validated >= step:
            return
        batches = trainer.datamodule.val_dataloader()
        if len(batches) == 0:
            return
        means = module.score(batches)
        self._offer(trainer, module, step, float(means[self.key.removeprefix("val_")]), float(means["loss"]))

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["ssmkit_last_validation"] = dict(self.last)

    def on_load_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.last = dict(checkpoint.get("ssmkit_last_validation", {}))  # none in a checkpoint written before it was kept

    def state_dict(self) -> dict[str, Any]:
        return {"key": self.key, "mode": self.mode, "step": self.step, "score": self.score, "loss": self.loss,
                "weights": self.weights, "last_validated": self.last_validated}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("key") != self.key or state_dict.get("mode") != self.mode:
            raise ValueError(f"the checkpoint kept the best {state_dict.get('key')!r} ({state_dict.get('mode')}), "
                             f"this run monitors {self.key!r} ({self.mode}): resume with the saved model configuration")
        self.step, self.score, self.loss = state_dict["step"], state_dict["score"], state_dict["loss"]
        self.weights, self.last_validated = state_dict["weights"], state_dict["last_validated"]


# where Lightning's EarlyStopping(monitor="val_loss", mode="min"), which fit used before, kept its state
_LIGHTNING_EARLY_STOPPING = "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"


class Patience(pl.Callback):
    """Early stopping on the validation loss: stop after ``patience`` validations in a row without a lower one.

    Each validation's loss (told by :class:`BestValidation`, which also scores the validation a restored checkpoint was
    written just before) either is strictly below every earlier one, and the count restarts at 0, or adds 1; at
    ``patience`` the run stops, and a non-finite loss stops it at once (the rule of Lightning's
    ``EarlyStopping(monitor="val_loss", mode="min")``). The count and the lowest loss are part of every checkpoint,
    and a run given no patience counts too (stopping never), so a resumed run stops where an uninterrupted run with
    the patience it is given stops, or at once if that step is behind it (a run resumed after it stopped stays
    stopped). Lightning's callback restored the saved patience over a new one, never saw the validation a restored
    checkpoint preceded, and let a run resumed after its stop train on until the next validation without improvement.

    Args:
        patience: validations without improvement that stop the run, or None (count, never stop).
    """

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.wait = 0
        self.non_finite = False

    def validated(self, trainer: pl.Trainer, loss: float) -> None:
        """Count one validation of loss ``loss`` and stop ``trainer`` if the patience is spent."""
        if not math.isfinite(loss):
            self.non_finite = True
        elif loss < self.best_loss:
            self.best_loss, self.wait = loss, 0
        else:
            self.wait += 1
        self._stop_if_spent(trainer)

    def _stop_if_spent(self, trainer: pl.Trainer) -> None:
        if self.patience is not None and (self.non_finite or self.wait >= self.patience):
            trainer.should_stop = True

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._stop_if_spent(trainer)  # after BestValidation's catch-up (it comes first in the callbacks)

    def on_load_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # a checkpoint written with Lightning's callback: its count (load_state_dict then finds no state of ours)
        old = (checkpoint.get("callbacks") or {}).get(_LIGHTNING_EARLY_STOPPING)
        if old is not None:
            self.best_loss, self.wait = float(old["best_score"]), int(old["wait_count"])
            self.non_finite = old.get("stopping_reason") == 4  # Lightning's EarlyStoppingReason.NON_FINITE_METRIC

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "wait": self.wait, "non_finite": self.non_finite}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_loss, self.wait, self.non_finite = (state_dict[k] for k in ("best_loss", "wait", "non_finite"))
