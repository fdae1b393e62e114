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


# Standard deviation of a standard normal truncated to [-2, 2] (JAX's truncated_normal divides by it).
_TRUNCATED_STD = 0.87962566103423978


def lecun_normal(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
    """A truncated normal on ±2 standard deviations with variance exactly 1/fan_in (JAX's ``lecun_normal``).

    S5 (arXiv 2208.04933) draws B and C this way; JAX counts ``fan_in`` along the second-to-last axis times the
    receptive field, so the caller states it.

    Args:
        shape: the shape of the draw.
        fan_in: the number of inputs the variance is scaled by.

    Returns:
        float64 tensor of the given shape.
    """
    x = torch.nn.init.trunc_normal_(torch.empty(shape, dtype=torch.float64), mean=0.0, std=1.0, a=-2.0, b=2.0)
    return x * (math.sqrt(1.0 / fan_in) / _TRUNCATED_STD)
