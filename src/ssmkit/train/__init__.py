"""Training helpers (optimizer groups now; the Lightning module comes with the training issue)."""

from ssmkit.train.optim import param_groups

__all__ = ["param_groups"]
