"""The typed training configuration (what ``ssmkit train`` reads from YAML and the command line)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from ssmkit.layers.checks import check_flag
from ssmkit.train.transfer import split_parts

PRECISIONS = ("32", "64", "bf16-mixed", "16-mixed")
TEST_WEIGHTS = ("final", "best_val")


@dataclass
class TrainConfig:
    """How one model is trained: optimiser, schedule, budget, precision, checkpoints, data parallelism.

    Args:
        batch_size: samples per process and optimizer step (default 32).
        lr: the global peak learning rate of AdamW (SSM parameters keep the rate their layer marks, see
            :func:`ssmkit.train.param_groups`; default 3e-3).
        weight_decay: AdamW's weight decay for unmarked weights (never on SSM parameters, norms or biases; default
            0.05).
        max_steps: the optimizer steps of the run (the budget; the schedule ends here; default 1000).
        max_time: also stop after this many seconds of training (default None: no time limit); the schedule still
            spans ``max_steps``, so a run stopped by time ends before its learning rate has decayed.
        warmup_steps: linear warm-up steps before the cosine decay (default 100).
        lr_floor: the cosine schedule's final factor (default 0: the rate decays to zero).
        grad_clip: clip the gradient norm to this value (default None: no clipping).
        precision: ``"32"`` (the default), ``"64"`` (float64 parameters), ``"bf16-mixed"`` or ``"16-mixed"``
            (autocast; the SSM cores stay float32; ``"16-mixed"`` on a GPU only: the CPU has no float16 autocast,
            and :func:`ssmkit.train.fit` refuses it there rather than train in bfloat16 under its name).
        seed: the seed of the initialisation, the batch order and a random transform's draws, in [0, 2**32 - 1]
            (default 0).
        val_every: validate every this many steps (0: only at the end; default 250); a period longer than
            ``max_steps`` never validates (``ssmkit train`` refuses it with ``test_weights`` ``"best_val"`` or
            ``early_stopping``).
        checkpoint_every: write a checkpoint every this many steps (0: only at the end; default 250); each replaces
            the one before (``checkpoints/step<N>.ckpt`` and ``last.ckpt`` hold the newest), so earlier steps are
            not kept.
        early_stopping: stop after this many validations in a row without a lower validation loss (default None:
            never); the count is part of every checkpoint, and a resume may change the patience.
        devices: processes (CPU) or GPUs used for data parallelism (default 1).
        strategy: Lightning's strategy, ``"auto"`` (the default) or ``"ddp"``, ``"ddp_spawn"``, ...
        accelerator: ``"cpu"`` (the default), ``"gpu"`` or ``"auto"``.
        eval_batch_size: batch size of validation and test (default None: ``batch_size``).
        log_every: write the training metrics every this many steps (default 50).
        test_weights: which weights give the result's ``test_<metric>`` (and each extra test split's): ``"final"``
            (the default: the weights at the end of training, what ``trainer.test(model)`` scores in Lightning) or
            ``"best_val"`` (the weights of the validation with the best ``val_<metric>``: accuracy highest, MSE
            lowest, the first of equal scores; how the published LRA numbers are selected, docs/design.md
            "besttest"). Both are always recorded, as ``test_<metric>_final`` and ``test_<metric>_best_val``;
            ``"best_val"`` needs a validation split.
        activation_checkpointing: keep only each block's input in the training forward and recompute the block in
            the backward (``SequenceModel.activation_checkpointing``): the activations of one block in memory instead
            of every block's, for one more forward pass; the same gradients, dropout masks and batch-norm statistics.
            True or False (False, the default).
        micro_batches: split each step's ``batch_size`` samples into this many parts, run one after the other with
            their gradients accumulated before the update (gradient accumulation): the activations of one part in
            memory, the same step (the gradient of the whole batch's mean loss, each part weighted by the items it
            scores; batch norm takes each part's statistics, dropout draws a mask per part). At most ``batch_size``
            (default 1).
        init_from: start from another run's weights (fine-tuning): a run folder (its ``checkpoints/last.ckpt``, the
            final weights) or a checkpoint file (``best_val.ckpt``, ``step<N>.ckpt``, or a file of
            ``torch.save(model.state_dict())``). Every parameter and buffer is loaded from the tensor of the same
            name and shape; a head of another size (another number of classes or outputs) keeps its fresh
            initialisation, and a model that differs elsewhere is refused (:func:`ssmkit.train.load_weights`). The
            optimiser, schedule and step start afresh (default None: the model's own initialisation).
        freeze: the parts of the model kept fixed (left out of the optimiser): ``backbone`` (all but the head: train
            the head only), ``ssm`` (the SSM parameters Δ, A/Λ, B, P) or module names (``encoder``, ``blocks.0``,
            ...; :func:`ssmkit.train.freeze_parameters`), several separated by commas as in ssm,encoder (default
            None: every parameter trains).
    """

    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.05
    max_steps: int = 1000
    max_time: float | None = None
    warmup_steps: int = 100
    lr_floor: float = 0.0
    grad_clip: float | None = None
    precision: str = "32"
    seed: int = 0
    val_every: int = 250
    checkpoint_every: int = 250
    early_stopping: int | None = None
    devices: int = 1
    strategy: str = "auto"
    accelerator: str = "cpu"
    eval_batch_size: int | None = None
    log_every: int = 50
    test_weights: str = "final"
    activation_checkpointing: bool = False
    micro_batches: int = 1
    init_from: str | None = None
    freeze: str | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "devices", "log_every", "micro_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        for name in ("warmup_steps", "val_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0; got {value!r}")
        if self.micro_batches > self.batch_size:
            raise ValueError(f"micro_batches must be <= batch_size = {self.batch_size} (each part holds a sample at "
                             f"least); got {self.micro_batches}")
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps must be < max_steps = {self.max_steps}; got {self.warmup_steps}")
        # numpy's range, which Lightning's seed_everything enforces (it raised only when fit started)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32 - 1]; got {self.seed!r}")
        # a bool is an int to Python: True would have become lr 1, a 1-second max_time, a clip at norm 1
        if not (_is_number(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a number > 0; got {self.lr!r}")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0; got {self.weight_decay!r}")
        if not (_is_number(self.lr_floor) and 0 <= self.lr_floor <= 1):
            raise ValueError(f"lr_floor must be a number in [0, 1] (the schedule's final factor); got {self.lr_floor!r}")
        if self.grad_clip is not None and not (_is_number(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be None or a number > 0; got {self.grad_clip!r}")
        if self.max_time is not None and not (_is_number(self.max_time) and self.max_time > 0):
            raise ValueError(f"max_time must be None or a number of seconds > 0; got {self.max_time!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if self.early_stopping is not None and (not isinstance(self.early_stopping, int) or isinstance(
                self.early_stopping, bool) or self.early_stopping < 1):
            raise ValueError(f"early_stopping must be None or a positive int; got {self.early_stopping!r}")
        if self.test_weights not in TEST_WEIGHTS:
            raise ValueError(f"test_weights must be one of {TEST_WEIGHTS}; got {self.test_weights!r}")
        check_flag(self.activation_checkpointing, "activation_checkpointing")
        if self.init_from is not None and not (isinstance(self.init_from, (str, os.PathLike))
                                               and os.fspath(self.init_from)):
            raise ValueError(f"init_from must be None or a path (a run folder or a checkpoint file); got "
                             f"{self.init_from!r}")
        if self.init_from is not None:
            self.init_from = os.fspath(self.init_from)  # a plain string in train.json and the checkpoints
        if self.freeze is not None and not (isinstance(self.freeze, str) and all(self.frozen_parts())):
            raise ValueError(f"freeze must be None or comma-separated part names (e.g. 'backbone' or 'ssm,encoder'); "
                             f"got {self.freeze!r}")
        if self.eval_batch_size is not None and (not isinstance(self.eval_batch_size, int) or isinstance(
                self.eval_batch_size, bool) or self.eval_batch_size < 1):
            raise ValueError(f"eval_batch_size must be None or a positive int; got {self.eval_batch_size!r}")

    def frozen_parts(self) -> list[str]:
        """The parts ``freeze`` names, as a list (``"ssm, encoder"`` → ``["ssm", "encoder"]``; None → []), split as
        :func:`ssmkit.train.freeze_parameters` splits a string (:func:`~ssmkit.train.transfer.split_parts`)."""
        return [] if self.freeze is None else split_parts(self.freeze)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; unknown keys raise ``ValueError`` naming them and the valid keys.

        Args:
            data: option names and values.

        Returns:
            the configuration.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {names}")
        return cls(**data)


def _is_number(value: object) -> bool:
    """A finite int or float, not a bool (an inf rate or decay would train to NaN; None says "no limit")."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
