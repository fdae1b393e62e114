"""DSS specifics: the kernel stays accurate in float32 as Δ → 0 (e^z - 1 and e^{Lz} - 1 without cancellation),
against the same layer in float64, and against S4D, whose ZOH already uses the stable form."""

from __future__ import annotations

import copy

import pytest
import torch

from ssmkit.layers import DSS, S4D
from tests.conftest import DEVICE, rel_err


@pytest.mark.parametrize("layer", [
    lambda: DSS(4, d_state=16, version="exp", dt_min=1e-6, dt_max=1e-6, device=DEVICE),
    lambda: DSS(4, d_state=16, version="softmax", l_max=64, dt_min=1e-6, dt_max=1e-6, device=DEVICE),
    lambda: DSS(4, d_state=16, version="exp", separate_dt=False, dt_min=1e-6, dt_max=1e-5, device=DEVICE),
    lambda: S4D(4, d_state=16, dt_min=1e-6, dt_max=1e-6, device=DEVICE),
], ids=["dss-exp", "dss-softmax", "dss-exp-tied", "s4d"])
def test_float32_kernel_at_tiny_steps(layer):
    # The direct (e^z - 1)/λ lost 0.5-6 % of the kernel in float32 at Δ = 1e-6; the float32 rounding of the
    # parameters and of the Vandermonde GEMM leaves ~1e-6 (S4D measured the same).
    torch.manual_seed(0)
    single = layer()
    with torch.no_grad():
        single.D.zero_()  # compare the SSM part: the O(1) skip on tap 0 would hide a ~1e-6 K_0 in float32 rounding
    double = copy.deepcopy(single).double()
    assert rel_err(single.kernel(64), double.kernel(64)) < 1e-4


def test_dss_kernel_by_its_formula():
    # K_l = Re Σ_n W_n (e^{z_n} - 1)/λ_n e^{l z_n} (DSS-exp, arXiv 2203.14343 §3.2), evaluated directly in float64.
    layer = DSS(3, d_state=8, version="exp", device=DEVICE, dtype=torch.float64)
    lam = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag)  # (M,)
    dt = torch.exp(layer.log_dt)  # (H, 2)
    z = torch.complex(dt[:, :1] * lam.real, dt[:, 1:] * lam.imag)  # (H, M)
    W = torch.view_as_complex(layer.W)[0]  # (H, M)
    l = torch.arange(20, dtype=torch.float64, device=DEVICE)
    K = (W[..., None] * ((torch.exp(z) - 1) / lam)[..., None] * torch.exp(z[..., None] * l)).sum(1).real  # (H, L)
    K[:, 0] += layer.D
    assert rel_err(layer.kernel(20), K) < 1e-12


def test_parameter_names_hold_one_quantity():
    exp = DSS(3, d_state=8, version="exp")
    softmax = DSS(3, d_state=8, version="softmax", l_max=10)
    assert "log_A_real" in dict(exp.named_parameters()) and "A_real" not in dict(exp.named_parameters())
    assert "A_real" in dict(softmax.named_parameters())
    assert bool((softmax.A_real == -0.5).all()) and torch.allclose(-torch.exp(exp.log_A_real), softmax.A_real)
