"""Liquid-S4 (arXiv 2209.12951) against float64 evaluations written here from the paper's equations.

The liquid system x_k = (Ā + B̄ u_k 1ᵀ) x_{k-1} + B̄ u_k, y_k = Cᵀ x_k + D u_k is built densely over the full
conjugate-pair state (A = diag(Λ_f) - P_f P_f*, bilinear), independently of ssmkit's DPLR code. The PB and KB
kernels are evaluated as the unrolled sums they keep, lag by lag.
"""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from tests.conftest import DEVICE, H, make_layer, rel_err, run_steps

C128 = torch.complex128


def dense_system(layer):
    """Ā (H, N, N), B̄ (H, N), C_true (H, N) over the full state [x, x̄], complex128, and D (H,)."""
    G = layer.log_A_real.shape[0]
    rep = H // G
    Lam = torch.complex(-torch.exp(layer.log_A_real.double()), layer.A_imag.double()).repeat(rep, 1)  # (H, M)
    P = torch.view_as_complex(layer.P.double()).repeat(1, rep, 1)  # (r, H, M)
    B = torch.view_as_complex(layer.B.double()).repeat(rep, 1)  # (H, M)
    dt = torch.exp(layer.log_dt.double())  # (H,)
    full = lambda v: torch.cat([v, v.conj()], dim=-1)  # noqa: E731
    A = torch.diag_embed(full(Lam)) - torch.einsum("rhn,rhm->hnm", full(P), full(P).conj())  # (H, N, N)
    eye = torch.eye(A.shape[-1], dtype=C128)
    left = eye - dt[:, None, None] / 2 * A
    A_bar = torch.linalg.solve(left, eye + dt[:, None, None] / 2 * A)
    B_bar = torch.linalg.solve(left, (dt[:, None] * full(B))[..., None])[..., 0]  # (H, N)
    C_tilde = full(torch.view_as_complex(layer.C_tilde.double())[0])  # (H, N)
    A_L = torch.linalg.matrix_power(A_bar, layer.l_max)
    C_true = torch.linalg.solve((eye - A_L).mT, C_tilde[..., None])[..., 0]  # (I - Ā^L)ᵀ C_true = C̃
    return A_bar, B_bar, C_true, layer.D.double()


def kernel_taps(A_bar, B_bar, C_true, L):
    """K_l = C_trueᵀ Ā^l B̄ (H, L), by repeated products."""
    taps, v = [], B_bar
    for _ in range(L):
        taps.append((C_true * v).sum(-1).real)
        v = torch.einsum("hnm,hm->hn", A_bar, v)
    return torch.stack(taps, dim=-1)


CONTRACT = {None: lambda v: v, "tanh": torch.tanh, "lecun": lambda v: 1.7159 * torch.tanh(0.666 * v)}


@pytest.mark.parametrize("liquid_kernel,contract", [("pb", None), ("kb", None), ("pb", "lecun"), ("kb", "tanh")])
def test_degree_two_equals_the_unrolled_sum(liquid_kernel, contract):
    # y_k = Σ_l K_l u_{k-l} + D u_k + β K_0 f(u_k u_{k-1}) for PB, + β Σ_l K_l f(u_{k-l} u_{k-l-1}) for KB.
    opts = {"d_state": 8, "l_max": 32, "liquid_kernel": liquid_kernel, "liquid_contract": contract}
    layer = make_layer("liquid_s4", opts).cpu()
    L = 12
    A_bar, B_bar, C_true, D = dense_system(layer)
    beta = B_bar.sum(-1).real  # (H,): 1ᵀ B̄ over the full state
    K = kernel_taps(A_bar, B_bar, C_true, L)  # (H, L)
    u = torch.randn(2, L, H, dtype=torch.float64)
    pair = lambda t: CONTRACT[contract](u[:, t] * u[:, t - 1] if t >= 1 else torch.zeros_like(u[:, 0]))  # noqa: E731
    y_ref = torch.zeros_like(u)
    for k in range(L):
        y_ref[:, k] = D * u[:, k]
        for l in range(k + 1):
            y_ref[:, k] += K[:, l] * u[:, k - l]
            if liquid_kernel == "kb":
                y_ref[:, k] += beta * K[:, l] * pair(k - l)
        if liquid_kernel == "pb":
            y_ref[:, k] += beta * K[:, 0] * pair(k)
    for backend in ("reference", "fft"):
        with torch.no_grad(), ops.use_backend(backend):
            y, _ = layer(u)
        assert rel_err(y, y_ref) < 1e-10, backend  # float64; the dense solve with Ā^{l_max} loses ~1e-13


def test_two_steps_equal_the_liquid_system_run_exactly():
    # For L = 2 the only product term of the liquid system is C B̄ (1ᵀB̄) u_0 u_1 (x_1 = (Ā + B̄u_1 1ᵀ) B̄ u_0 + B̄ u_1),
    # which both kernels keep: the layer equals the bilinear-in-the-state recurrence itself.
    for liquid_kernel in ("pb", "kb"):
        layer = make_layer("liquid_s4", {"d_state": 6, "l_max": 16, "liquid_kernel": liquid_kernel}).cpu()
        A_bar, B_bar, C_true, D = dense_system(layer)
        u = torch.randn(3, 2, H, dtype=torch.float64)
        x = torch.zeros(3, H, A_bar.shape[-1], dtype=C128)
        ys = []
        for k in range(2):
            u_k = u[:, k, :, None].to(C128)  # (B, H, 1)
            x = torch.einsum("hnm,bhm->bhn", A_bar, x) + B_bar * u_k * x.sum(-1, keepdim=True) + B_bar * u_k
            ys.append((C_true * x).sum(-1).real + D * u[:, k])
        with torch.no_grad():
            y, _ = layer(u)
        assert rel_err(y, torch.stack(ys, dim=1)) < 1e-10, liquid_kernel


@pytest.mark.parametrize("opts", [
    {"liquid_kernel": "pb", "liquid_degree": 3, "liquid_contract": "tanh"},
    {"liquid_kernel": "pb", "liquid_degree": 4, "init": "lagt"},
    {"liquid_kernel": "kb", "liquid_degree": 4, "liquid_contract": "lecun"},
])
def test_step_equals_forward_with_carried_inputs(opts):
    # The state carries the last P-1 inputs: a sequence cut inside a product window continues exactly.
    layer = make_layer("liquid_s4", {"d_state": 8, "l_max": 32, **opts})
    x = torch.randn(2, 20, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, h = layer(x)
        y1, h1 = layer(x[:, :7])
        y2, _ = layer(x[:, 7:], h1)
        y_step, h_step = run_steps(layer, x)
    assert torch.equal(h.inputs, x[:, -(opts["liquid_degree"] - 1):].transpose(1, 2))
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10 and rel_err(y_step, y) < 1e-10
    assert rel_err(h_step.ssm, h.ssm) < 1e-10


def test_liquid_terms_change_the_output_and_are_not_linear():
    layer = make_layer("liquid_s4")
    s4 = make_layer("s4", {"d_state": 8, "l_max": 32})
    x = torch.randn(2, 15, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(layer(x)[0], s4(x)[0])  # same seed, same S4 parameters, plus the liquid terms
        assert not torch.allclose(layer(2 * x)[0], 2 * layer(x)[0])
        y_s4 = s4(x)[0]
        s4_part = layer(x)[0] - (layer(2 * x)[0] - 2 * layer(x)[0]) / 2  # degree 2 only: y(2x) - 2y(x) = 2 q(x)
    assert rel_err(s4_part, y_s4) < 1e-10


def test_bad_options_raise():
    with pytest.raises(ValueError, match="liquid_degree must be an int >= 2"):
        layers.build("liquid_s4", d_model=H, liquid_degree=1)
    with pytest.raises(ValueError, match="liquid_kernel must be one of"):
        layers.build("liquid_s4", d_model=H, liquid_kernel="polyb")
    with pytest.raises(ValueError, match="liquid_contract must be one of"):
        layers.build("liquid_s4", d_model=H, liquid_contract="relu")
    layer = layers.build("liquid_s4", d_model=H)
    with pytest.raises(NotImplementedError, match="products of inputs"):
        layer.kernel(4)
    with pytest.raises(NotImplementedError, match="not a linear time-invariant"):
        layer.state_space()
