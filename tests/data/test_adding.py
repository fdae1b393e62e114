"""The adding-problem generator."""

import pytest
import torch

from ssmkit.data import TRIVIAL_MSE, adding_problem


def test_structure_and_target():
    gen = torch.Generator().manual_seed(0)
    x, y = adding_problem(500, 37, generator=gen)
    assert x.shape == (500, 37, 2) and y.shape == (500, 1)
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((500,), 2.0))
    assert torch.equal(markers[:, :18].sum(1), torch.ones(500))  # one marker in each half
    assert torch.allclose(y[:, 0], (x[..., 0] * markers).sum(1))
    x2, y2 = adding_problem(500, 37, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_trivial_baseline_is_one_sixth():
    _, y = adding_problem(200_000, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mse = ((y - 1.0) ** 2).mean().item()
    # Var(U1 + U2) = 1/6; the standard error of the mean of (y-1)^2 over 2e5 draws is ~3e-4
    assert abs(mse - TRIVIAL_MSE) < 2e-3


def test_bad_sizes():
    with pytest.raises(ValueError, match="length >= 2"):
        adding_problem(3, 1)
