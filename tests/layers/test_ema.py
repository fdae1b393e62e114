"""Mega's EMA (arXiv 2209.10655 eq. 2-3) beyond the protocol suite: the kernel against the float64 sum, a hand-computed
case, the initialisation, the bidirectional kernels and the constructor's errors."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from tests.conftest import DEVICE, H, make_layer, rel_err


def _kernel_by_the_sum(layer, L: int, direction: int = 0) -> torch.Tensor:
    """K_l = Σ_n γ_n/√N · α_n β_n (1 - α_n δ_n)^l + ω δ_l0, in float64 from the raw parameters (the paper's formula)."""
    alpha = torch.sigmoid(layer.logit_alpha[direction].double())  # (H, N)
    delta = torch.sigmoid(layer.logit_delta[direction].double())
    beta, gamma = layer.beta[direction].double(), layer.gamma[direction].double()
    l = torch.arange(L, dtype=torch.float64, device=alpha.device)
    q = (1 - alpha * delta)[..., None] ** l  # (H, N, L)
    K = ((gamma / math.sqrt(layer.d_state) * alpha * beta)[..., None] * q).sum(1)  # (H, L)
    if direction == 0:
        K[:, 0] += layer.D.double()
    return K


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_kernel_equals_the_float64_sum(dtype, backend):
    layer = make_layer("ema", {"d_state": 16}, dtype)
    with torch.no_grad(), ops.use_backend(backend):
        K = layer.kernel(300)
    assert K.shape == (H, 300) and K.dtype == dtype
    assert rel_err(K, _kernel_by_the_sum(layer, 300)) < (1e-6 if dtype == torch.float32 else 1e-13)


def test_hand_computed_one_mode():
    # N = 1, α = δ = σ(0) = 1/2, β = 1, γ = 1, ω = 0: Ā = 3/4, B̄ = 1/2, y_t = Σ_s (1/2)(3/4)^(t-s) u_s.
    layer = make_layer("ema", {"d_state": 1})
    with torch.no_grad():
        layer.logit_alpha.zero_()
        layer.logit_delta.zero_()
        layer.beta.fill_(1.0)
        layer.gamma.fill_(1.0)
        layer.D.zero_()
    x = torch.zeros(1, 4, H, device=DEVICE, dtype=torch.float64)
    x[0, 0] = 1.0
    x[0, 2] = 2.0
    y, h = layer(x)
    expected = torch.tensor([0.5, 0.375, 0.28125 + 1.0, 0.2109375 + 0.75], dtype=torch.float64)
    assert torch.allclose(y[0, :, 0].cpu(), expected, rtol=0, atol=1e-15)
    assert torch.allclose(h[0, :, 0].cpu(), torch.full((H,), 0.2109375 + 0.75, dtype=torch.float64), rtol=0, atol=1e-15)  # y = h (C = 1)


def test_initialisation_follows_the_official_code():
    torch.manual_seed(0)
    layer = layers.build("ema", d_model=256, d_state=16, dtype=torch.float64)
    assert layer.logit_alpha.shape == (1, 256, 16) and layer.D.shape == (256,)
    assert abs(layer.logit_alpha.std().item() - 0.2) < 0.01 and abs(layer.logit_delta.std().item() - 0.2) < 0.01
    signs = torch.tensor([1.0, -1.0] * 8, dtype=torch.float64)
    noise = layer.beta[0] - signs
    assert abs(noise.std().item() - 0.02) < 0.002 and abs(noise.mean().item()) < 0.002
    assert abs(layer.gamma.std().item() - 1.0) < 0.05 and abs(layer.D.std().item() - 1.0) < 0.15
    A_bar, B_bar, C = layer.discrete()
    assert bool(((A_bar > 0) & (A_bar < 1)).all())  # 1 - αδ with α, δ in (0, 1): a stable, non-oscillating decay
    assert set(layers.optim_marks(layer)) == {"logit_alpha", "logit_delta", "beta"}


def test_bidirectional_kernels_have_their_own_parameters():
    layer = make_layer("ema", {"d_state": 3}, bidirectional=True)
    assert layer.logit_alpha.shape == (2, H, 3)
    with torch.no_grad():
        K = layer.kernel(20)
    assert rel_err(K[0], _kernel_by_the_sum(layer, 20, 0)) < 1e-13
    assert rel_err(K[1], _kernel_by_the_sum(layer, 20, 1)) < 1e-13


def test_state_space_is_real_with_n_states():
    layer = make_layer("ema", {"d_state": 5})
    ss = layer.state_space()
    assert ss.A.shape == (H, 5, 5) and not ss.A.dtype.kind == "c"
    assert ss.is_stable()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        layers.build("ema", d_model=H, d_state=0)
    with pytest.raises(ValueError, match="lr must be"):
        layers.build("ema", d_model=H, lr=-1.0)
    with pytest.raises(ValueError, match="dtype must be"):
        layers.build("ema", d_model=H, dtype=torch.float16)
