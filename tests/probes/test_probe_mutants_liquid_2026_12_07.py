"""Mutation probe (2026-12-07, helper round h8) of layers/liquid.py (Liquid-S4), ops/irregular_discrete.py,
ops/irregular_dplr.py, analysis/layerwise.py, bench/crossover.py and bench/contention.py: the mutants that the
modules' own tests (test_liquid, test_liquid_dlr_gss_reference, test_irregular_discrete,
test_mutants_irregular_discrete, test_native_irregular_dplr, test_irregular_s4, test_layerwise,
test_layerwise_reference, test_sampling_time and the crossover/contention tests of test_bench_reference) let survive.
Each test names the mutants it kills (ids of the round's table in the report) and checks the real code against an
independent reference: the official LeCun constants written out in float64, a float64 loop over the input products,
the branch of the angle worked by hand, a dense matrix exponential (scipy.linalg.expm) of the zero-order hold over
irregular gaps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from torch import nn

from ssmkit.analysis import analyze_model
from ssmkit.analysis.layerwise import sampling_time
from ssmkit.layers.liquid import contract, liquid_input, liquid_input_step
from ssmkit.models import SequenceModel
from ssmkit.ops.irregular_discrete import hold_ratio, principal_angle, rglru_irregular
from tests.conftest import DEVICE

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------------------
# layers/liquid.py


def _lecun64(v: np.ndarray) -> np.ndarray:
    """f(v) = 1.7159 tanh(0.666 v), the official liquid-s4 constants, in float64 numpy."""
    return 1.7159 * np.tanh(0.666 * v)


def test_lecun_contraction_in_float32_uses_the_official_constants():
    """Kills L7 (inner 0.666 -> 0.667 in the float32 branch) and L17 (outer 1.7159 -> 1.716 there): the float64 tests
    only reach the float64 branch of ``contract``."""
    v = torch.linspace(-3.0, 3.0, 61, dtype=torch.float32, device=DEVICE)
    got = contract(v, "lecun")
    assert got.dtype == torch.float32
    expected = _lecun64(v.double().cpu().numpy())
    np.testing.assert_allclose(got.double().cpu().numpy(), expected, rtol=0, atol=1e-6)
    # the float64 branch gives the same function to rounding
    np.testing.assert_allclose(contract(v.double(), "lecun").cpu().numpy(), expected, rtol=1e-15, atol=1e-15)


def test_float32_liquid_input_with_lecun_is_the_float64_loop():
    """Kills L7, L17 through the sequence and step forms: s_t = Σ_{p=2}^{P} β^{p-1} f(u_t ... u_{t-p+1}) computed in
    float32 against a float64 loop over the products (P = 3, past inputs given)."""
    gen = torch.Generator().manual_seed(3)
    B, L, H, P = 2, 5, 3, 3
    u = torch.randn(B, L, H, generator=gen)
    past = torch.randn(B, H, P - 1, generator=gen)
    beta = torch.tensor([0.7, -1.3, 2.1])
    seq = np.concatenate([past.double().numpy().transpose(0, 2, 1), u.double().numpy()], axis=1)  # u_t at P-1+t
    b = beta.double().numpy()
    expected = np.zeros((B, L, H))
    for t in range(L):
        for p in range(2, P + 1):
            product = np.prod([seq[:, P - 1 + t - j] for j in range(p)], axis=0)
            expected[:, t] += b ** (p - 1) * _lecun64(product)
    s, last = liquid_input(u.to(DEVICE), past.to(DEVICE), beta.to(DEVICE), P, "lecun")
    np.testing.assert_allclose(s.double().cpu().numpy(), expected, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(last.cpu().numpy(), u[:, -(P - 1):].transpose(1, 2).numpy())
    state = past.to(DEVICE)
    for t in range(L):
        s_t, state = liquid_input_step(u[:, t].to(DEVICE), state, beta.to(DEVICE), P, "lecun")
        np.testing.assert_allclose(s_t.double().cpu().numpy(), expected[:, t], rtol=0, atol=2e-5)


# ------------------------------------------------------------------------------------------------------------------
# ops/irregular_discrete.py


def test_principal_angle_cut_sits_a_millionth_past_pi():
    """Kills D1 (BRANCH_CUT = π exactly): the documented range is (BRANCH_CUT − 2π, BRANCH_CUT], BRANCH_CUT = π + 1e-6,
    so a float64 phase 5e-7 past π stays where it is, one 2e-6 past π wraps by −2π, and π read in float32 (π + 8.7e-8)
    and in float64 (π − 1.2e-16) are both +π (worked by hand)."""
    phases = torch.tensor([math.pi + 5e-7, math.pi + 2e-6, -math.pi, 3 * math.pi, 0.25], dtype=F64, device=DEVICE)
    expected = [math.pi + 5e-7, math.pi + 2e-6 - 2 * math.pi, math.pi, math.pi, 0.25]
    np.testing.assert_allclose(principal_angle(phases).cpu().numpy(), expected, rtol=0, atol=1e-12)
    pi32 = torch.tensor([math.pi], dtype=torch.float32, device=DEVICE)
    assert principal_angle(pi32).item() == pytest.approx(math.pi, abs=1e-6)


def _zoh_expm(log_a: float, tau: float) -> tuple[float, float]:
    """(a^τ, (a^τ − 1)/(a − 1)) from the dense matrix exponential of the hold: dx/ds = z x + z/(a − 1) v with z = log a,
    over τ periods, exp(τ [[z, z/(a − 1)], [0, 0]]) = [[Ā_τ, B̄_τ], [0, 1]] (module docstring of irregular_discrete)."""
    a = math.exp(log_a)
    M = tau * np.array([[log_a, log_a / (a - 1.0)], [0.0, 0.0]])
    E = expm(M)
    return E[0, 0], E[0, 1]


def test_hold_ratio_and_rglru_irregular_are_the_zoh_matrix_exponential():
    """Kills no survivor (D3, D6, D7, D8, D11, D12 die in the existing tests too): the ZOH of the module docstring
    against scipy.linalg.expm of the held system at irregular gaps, an independent reference for the closed form
    that the existing tests share with the code (D3: the ratio divided by log a; D6: the sign of Λ; D7: √(1 − a);
    D8: a^τ read as a; D11: each step reading the previous gap; D12: the input gate dropped)."""
    log_a = torch.tensor([-0.05, -0.7, -2.3], dtype=F64)
    tau = torch.tensor([0.3, 1.0, 2.7], dtype=F64)
    ratio = hold_ratio(log_a[:, None].to(DEVICE), tau[None, :].to(DEVICE)).cpu().numpy()  # (3, 3)
    for j, la in enumerate(log_a.tolist()):
        for k, t in enumerate(tau.tolist()):
            assert ratio[j, k] == pytest.approx(_zoh_expm(la, t)[1], rel=1e-12)
    # the RG-LRU at irregular gaps: h_t = a_t^τ h + B̄_τ √(1 − a_t²) i_t x_t, a_t = σ(Λ)^{c r_t}
    gen = torch.Generator().manual_seed(11)
    Bsz, L, H, c = 2, 4, 3, 8.0
    x, r, i = torch.randn(Bsz, L, H, generator=gen, dtype=F64), *torch.rand(2, Bsz, L, H, generator=gen, dtype=F64)
    Lam = torch.randn(H, generator=gen, dtype=F64)
    gaps = 0.2 + 2.5 * torch.rand(Bsz, L, generator=gen, dtype=F64)
    h0 = torch.randn(Bsz, H, generator=gen, dtype=F64)
    expected = np.zeros((Bsz, L, H))
    for b in range(Bsz):
        for h in range(H):
            state = h0[b, h].item()
            for t in range(L):
                la = c * r[b, t, h].item() * math.log(1 / (1 + math.exp(-Lam[h].item())))
                A_tau, B_tau = _zoh_expm(la, gaps[b, t].item())
                state = A_tau * state + B_tau * math.sqrt(1 - math.exp(2 * la)) * i[b, t, h].item() * x[b, t, h].item()
                expected[b, t, h] = state
    for backend in ("reference", "chunked"):
        hs, last = rglru_irregular(*(v.to(DEVICE) for v in (x, r, i, Lam)), c, gaps.to(DEVICE), h0.to(DEVICE),
                                   backend=backend)
        np.testing.assert_allclose(hs.cpu().numpy(), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(last.cpu().numpy(), expected[:, -1], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# analysis/layerwise.py


def test_a_bool_dt_attribute_is_not_a_sampling_time():
    """Kills W10 (the ``bool`` exclusion dropped from the model's own dt): a flag ``dt = True`` on a model is not a
    number (``check_sampling_time`` refuses bools), so the model is analysed in samples, dt = 1, as one without a dt,
    rather than refused."""
    holder = nn.Module()
    holder.dt = True
    assert sampling_time(holder) == (1.0, False)
    model = SequenceModel(d_input=1, d_model=2, n_layers=1, layer="s4d", d_output=1, head="regress", pool=None)
    model.dt = True
    (result,) = analyze_model(model)
    assert result.system.dt == 1.0
    z = result.poles.astype(np.complex128)
    np.testing.assert_allclose(result.poles_continuous, np.log(z), rtol=1e-12, atol=0)  # s = log z / 1
