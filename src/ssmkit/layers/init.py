"""Initialisations shared by several layers."""

from __future__ import annotations

import math

import torch


def log_uniform_log_dt(shape: tuple[int, ...], dt_min: float, dt_max: float) -> torch.Tensor:
    """log Δ with Δ log-uniform in [dt_min, dt_max] (the S4 family's init, arXiv 2206.11893 §4).

    Args:
        shape: the shape of the draw (e.g. (H,) for one step size per channel).
        dt_min, dt_max: the range of Δ, 0 < dt_min <= dt_max.

    Returns:
        float64 tensor of the given shape holding log Δ.
    """
    low, high = math.log(dt_min), math.log(dt_max)
    return torch.rand(shape, dtype=torch.float64) * (high - low) + low
