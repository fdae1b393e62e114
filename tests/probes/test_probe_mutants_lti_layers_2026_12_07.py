"""Mutation round of 2026-12-07 over four layer modules that had never been mutation-tested as layers:
layers/s4.py, layers/s4d.py, layers/diagonal.py and layers/mimo.py (the S4 numerics in ops/ had been).

Hand mutants (sign flips, dropped conjugates and skips, off-by-one shifts, swapped kernel sides, changed inits and
constants, dropped checks, dropped widening to double, state dropped in the reference and step paths) were run
against the modules' own test files; the tests below kill the survivors that can be killed, each against an
independent reference written here (a NumPy loop of the paper's recurrence, the closed form of the sampled
system, the law of the initialisation). Each test's docstring names the mutants it kills. The equivalent survivors
are listed in the round's report.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from ssmkit.layers.s4d import S4D

F64, F32 = torch.float64, torch.float32


# ------------------------------------------------------------------------------------------------------------------
# layers/s4d.py


def test_s4d_c_is_standard_complex_normal_and_d_standard_normal():
    """S4D's init (arXiv 2206.11893 §4, official code): the stored C ~ CN(0, 1), real and imaginary parts each
    N(0, ½) (y = 2 Re Σ C x), and D ~ N(0, 1). Kills sd-02 (C drawn with parts N(0, 1)) and sd-03 (D = 0).

    4 000 draws of each part of C: the sample variance's standard error is ½·√(2/4000) ≈ 0.011; 2 000 draws of D:
    ≈ 0.032."""
    torch.manual_seed(5)
    layer = S4D(2000, d_state=4, dtype=F64)
    C = layer.C.detach().numpy()[0]  # (H, M, 2)
    for part in (C[..., 0], C[..., 1]):
        assert abs(float(part.mean())) < 0.05 and abs(float(part.var()) - 0.5) < 0.06
    assert abs(float(np.mean(C[..., 0] * C[..., 1]))) < 0.05  # independent parts: circular
    D = layer.D.detach().numpy()
    assert abs(float(D.mean())) < 0.1 and abs(float(D.var()) - 1.0) < 0.15


def test_s4d_float32_irregular_step_after_a_long_gap_keeps_the_phase_in_double():
    """A float32 S4D sampled after a gap of 1e5 periods (Δτ Im λ ≈ 2.5e4 rad): ``continuous`` widens log Δ, a and b
    to double before e^{log Δ} and -e^a, so the phase of exp(Δτλ) is that of the float32 parameters read exactly
    (the module's documented contract). Reference: the ZOH sampling in float64 of the float32 parameters,
    x_0 = (e^{Δλ} - 1)/λ B u_0, x_1 = e^{Δτλ} x_0, y_1 = 2 Re(C x_1). Kills sd-08 (``continuous`` without
    ``widen``: Δ = e^{log Δ} rounded to float32 turns the phase by ≈ Δτ Im λ · 6e-8 ≈ 1.5e-3 rad)."""
    layer = S4D(1, d_state=2, dtype=F32)
    with torch.no_grad():
        layer.log_A_real.fill_(math.log(1e-5))
        layer.A_imag.fill_(100.0)
        layer.log_dt.fill_(math.log(2.5e-3))
        layer.B.copy_(torch.tensor([[[1.0, 0.0]]]))
        layer.C.copy_(torch.tensor([[[[0.5, 0.0]]]]))
        layer.D.zero_()
    a, b, log_dt = (float(p.detach().to(F64)) for p in (layer.log_A_real, layer.A_imag, layer.log_dt))
    lam, dt, tau = complex(-math.exp(a), b), math.exp(log_dt), 1e5
    dt32 = float(torch.exp(layer.log_dt.detach())[0])  # what a float32 e^{log Δ} gives
    assert abs(dt32 - dt) * tau * b > 2e-4  # the setting tells the two apart (a phase of >= 2e-4 rad)
    x0 = (np.exp(dt * lam) - 1) / lam
    expect = (np.exp(dt * tau * lam) * x0).real  # 2 Re(C x_1) with C = ½
    x = torch.tensor([[[1.0], [0.0]]], dtype=F32)  # (B, L, H): an impulse, then the gap
    intervals = torch.tensor([[1.0, tau]], dtype=F32)
    y = layer(x, intervals=intervals)[0].detach()
    assert abs(float(y[0, 0, 0]) - x0.real) < 1e-5 * abs(x0)
    assert abs(float(y[0, 1, 0]) - expect) < 2e-5 * abs(x0), (float(y[0, 1, 0]), expect)


# ------------------------------------------------------------------------------------------------------------------
# layers/s4.py


def test_s4_input_of_exactly_l_max_uses_the_stored_c_tilde_without_a_doubling(monkeypatch):
    """C̃ is attuned to L_k = l_max·2^k >= L with k >= 0 smallest (arXiv 2111.00396 §3.3): an input of exactly l_max
    taps uses the stored C̃ (no Ā^{l_max}, no doubling), one of l_max + 1 doubles once; both kernels are the dense
    recurrence's K_l = C_trueᵀ Ā^l B̄ (+ D on tap 0), checked here from the layer's own state space (float64 loop).
    Kills s4-29 (``L < L_k`` in ``_attuned_C_tilde``: an input of l_max paid an Ā^{l_max} it does not need)."""
    from ssmkit.layers.s4 import S4

    torch.manual_seed(2)
    layer = S4(2, d_state=6, l_max=8, init="legs", dt_min=0.2, dt_max=0.5, dtype=F64)
    ss = layer.state_space()
    # StateSpace.from_ssm: A = Ā, B = B̄, C' = CĀ, D' = D + CB̄
    A, B, C, D = (np.asarray(t, dtype=float) for t in (ss.A, ss.B, ss.C, ss.D))
    calls = []
    real_power = torch.linalg.matrix_power
    monkeypatch.setattr(torch.linalg, "matrix_power", lambda M, n: calls.append(n) or real_power(M, n))
    for L, doublings in ((8, 0), (9, 1)):
        calls.clear()
        with torch.no_grad():
            K = layer.kernel(L).numpy()  # (H, L)
        assert len(calls) == doublings, (L, calls)
        for h in range(2):
            ref, x = [float(D[h, 0, 0])], B[h, :, 0]
            for _ in range(L - 1):
                ref.append(float(C[h, 0] @ x))
                x = A[h] @ x
            assert np.abs(K[h] - ref).max() < 1e-10 * np.abs(ref).max()


# ------------------------------------------------------------------------------------------------------------------
# layers/mimo.py


@pytest.mark.parametrize("name", ["s5", "lru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_mimo_kernel_is_the_impulse_response_with_the_skip_on_tap_0(name, bidirectional):
    """The MIMO layers' kernel (layers/mimo.py; S5 arXiv 2208.04933 eq. 2-3, LRU arXiv 2303.06349 eq. 1) against a
    float64 NumPy loop of the recurrence of the layer's own discrete system (Ā, B̄, C): causal
    K_0[:, :, l] = Re(C_0 diag(Ā^l) B̄) + diag(D) δ_l (+ Re(C_1 B̄) δ_l, the backward scan's lag 0, when two-sided),
    anti-causal K_1[:, :, l] = Re(C_1 diag(Ā^{l+1}) B̄); and the forward's response to a unit impulse in channel j at
    time 0 is the causal column K_0[:, j, :]. Kills mm-02 (the one-sided kernel without diag(D) on tap 0), mm-03 (the
    two-sided causal tap 0 without Re(C_1 B̄)), mm-04 (the anti-causal taps one lag early: K1[..., :-1]), mm-05
    (the skip as the full matrix D 1ᵀ instead of diag(D)) and mm-13 (the anti-causal kernel from C_0)."""
    layer = layers.build(name, d_model=3, d_state=16, bidirectional=bidirectional, dtype=F64)
    with torch.no_grad():
        layer.D.copy_(torch.tensor([0.7, -1.3, 2.1], dtype=F64))  # a skip no draw can hide
    A, B, C = (t.detach().numpy() for t in layer.discrete())  # (M,), (M, H), (C, H, M)
    D, L, H = np.diag(layer.D.detach().numpy()), 6, 3
    power = [A ** l for l in range(L + 1)]  # diag(Ā^l)
    K0 = np.stack([(C[0] @ (power[l][:, None] * B)).real for l in range(L)], -1)  # (H, H, L)
    K0[..., 0] += D
    with torch.no_grad():
        K = layer.kernel(L).numpy()
    if bidirectional:
        K0[..., 0] += (C[1] @ B).real
        K1 = np.stack([(C[1] @ (power[l + 1][:, None] * B)).real for l in range(L)], -1)
        assert np.abs(K[1] - K1).max() < 1e-12 * np.abs(K1).max()
        K = K[0]
    assert np.abs(K - K0).max() < 1e-12 * np.abs(K0).max()
    if not bidirectional:
        for j in range(H):
            x = torch.zeros(1, L, H, dtype=F64)
            x[0, 0, j] = 1.0
            with torch.no_grad():
                y = layer(x)[0][0].numpy()  # (L, H)
            assert np.abs(y.T - K0[:, j]).max() < 1e-12 * np.abs(K0).max()


def test_s4_float32_layer_is_its_float64_copy_widened_exactly():
    """S4's precision contract (module docstring): the kernel, the real-basis Ā, B̄ and C_true are formed in float64
    from the parameters for every layer dtype, so a float32 layer's state space equals that of its float64 copy
    (same values) to double rounding, and its kernel is the float64 copy's kernel rounded once to float32. Kills s4-35
    (Δ = e^{log Δ} taken in float32 before the widening: Ā off by ~1e-8, the kernel's phase by l Δ |Im λ| 6e-8, here
    up to 1e-3 relative at l = 2 048) and s4-36 (-e^a in float32 before the widening: Ā off by ~1e-8)."""
    from ssmkit.layers.s4 import S4

    torch.manual_seed(4)
    layer = S4(3, d_state=64, l_max=2048, init="legs", dt_min=0.05, dt_max=0.1, dtype=F32)
    with torch.no_grad():  # rates off the exactly representable -½, steps at values that a float32 exp rounds
        layer.log_A_real.add_(0.3 * torch.randn(layer.log_A_real.shape))
        layer.log_dt.copy_(torch.tensor([-2.71, -2.53, -2.38]))
    wide = S4(3, d_state=64, l_max=2048, init="legs", dtype=F64)
    wide.load_state_dict({k: v.to(F64) for k, v in layer.state_dict().items()})
    s32, s64 = layer.state_space(), wide.state_space()
    for a, b in zip((s32.A, s32.B, s32.C, s32.D), (s64.A, s64.B, s64.C, s64.D)):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        assert np.abs(a - b).max() <= 1e-13 * np.abs(b).max()
    with torch.no_grad():
        K32, K64 = layer.kernel(2048).double().numpy(), wide.kernel(2048).numpy()
    assert np.abs(K32 - K64).max() <= 1e-7 * np.abs(K64).max()
