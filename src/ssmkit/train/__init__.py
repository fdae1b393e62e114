"""Training: optimizer groups (pure torch) and the Lightning trainer (``fit``; needs ``pip install lightning``).

    from ssmkit.train import TrainConfig, fit
    fit(model_config, TrainConfig(max_steps=2000), train=(inputs, targets), val=val_split, test=test_split, out_dir="runs/a")

``param_groups``, ``TrainConfig``, ``warmup_cosine``, the batch order and fine-tuning's ``load_weights`` and
``freeze_parameters`` import only torch; ``fit`` and ``SequenceLightningModule`` import Lightning when first used.
"""

from ssmkit.train.batches import StepBatches, eval_batches
from ssmkit.train.config import TrainConfig
from ssmkit.train.objective import summed_loss_and_metric
from ssmkit.train.optim import param_groups
from ssmkit.train.schedule import WarmupCosine, warmup_cosine
from ssmkit.train.transfer import LoadReport, freeze_parameters, load_weights

__all__ = [
    "LoadReport",
    "StepBatches",
    "TrainConfig",
    "WarmupCosine",
    "eval_batches",
    "fit",
    "freeze_parameters",
    "load_weights",
    "param_groups",
    "summed_loss_and_metric",
    "warmup_cosine",
]


def __getattr__(name: str):
    if name == "fit":
        from ssmkit.train.run import fit

        return fit
    if name in ("SequenceLightningModule", "NonFiniteLossError", "TensorDataModule"):
        from ssmkit.train import module

        return getattr(module, name)
    raise AttributeError(f"module 'ssmkit.train' has no attribute {name!r}")
