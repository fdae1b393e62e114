"""Shared fixtures: the test device comes from SSMKIT_TEST_DEVICE (default cpu)."""

import os

import pytest
import torch

import ssmkit.ops as ops

DEVICE = torch.device(os.environ.get("SSMKIT_TEST_DEVICE", "cpu"))


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(autouse=True)
def _reset_backend_and_seed():
    ops.set_backend("auto")
    torch.manual_seed(0)
    yield
    ops.set_backend("auto")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (the error measure of every tolerance in this suite)."""
    a = a.detach().to(torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64).cpu()
    b = b.detach().to(a.dtype).cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def leaves(state) -> list[torch.Tensor]:
    """The tensors of a layer state (a tensor or nested tuples of tensors)."""
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in leaves(s)]
    return [state]


def state_map(fn, state):
    """Apply ``fn`` to every tensor of a state, keeping its structure."""
    if isinstance(state, tuple):
        return tuple(state_map(fn, s) for s in state)
    return fn(state)


def state_err(a, b) -> float:
    """The largest rel_err over the tensors of two states of the same structure."""
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    return max(rel_err(x, y) for x, y in zip(la, lb))
