"""Mutation round of the S4 core numerics (2026-12-07): ops/cauchy.py, ops/dplr.py, ops/powers.py,
ops/discretize.py and ops/fftblocks.py (the Python paths; the C kernels under ops/native are out of scope).

72 hand mutants were run against the modules' own test files (tests/ops/test_cauchy.py, test_cauchy_pairs.py,
test_dplr.py, test_powers.py, test_discretize.py, test_fftblocks.py): 18 survived. Each test below names, in its
docstring, the survivors it kills, against an independent reference (mpmath, a float64 closed form, a dense matrix
power, a direct Cauchy sum, a circular-convolution loop). Of the 18, C5, D11, D17, P3, P6, Z1, Z2, Z3, Z9, Z10 and
Z14 are also killed by other files (forward-AD, native ZOH, small-Δ and earlier mutant probes) and D12 there only
by a hang; C9, Z7 and F7 are killed only here. D9 (F·base for base·F: powers of one matrix commute), P4 (a last
squaring whose result is unused) and F10 (Σ_b conj(û) dŷ by vecdot for every block size instead of a loop of
addcmul for <= 2 rows: the same sum) are equivalent. The last test covers the round's bug fix (W = 0 under vmap).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.ops import fftblocks
from ssmkit.ops.backend import use_backend
from ssmkit.ops.cauchy import cauchy, dplr_kernel
from ssmkit.ops.discretize import exp_phi_torch, widen, zoh_log, zoh_torch
from ssmkit.ops.dplr import bilinear_dplr_real, increment_power
from ssmkit.ops.powers import power_table

C128, F64 = torch.complex128, torch.float64


def _mp_bilinear_diagonal_kernel(mpmath, lam, B, C_tilde, dt, L):
    """K_l = 2 Re Σ_n C_n B̄_n Ā_n^l (l < L) of the diagonal conjugate-pair system in mpmath, with the bilinear
    Ā = (1 + Δλ/2)/(1 - Δλ/2), B̄ = Δ B/(1 - Δλ/2) and C_true = C̃/(1 - Ā^L) (arXiv 2111.00396 eq. 3-5, r = 0)."""
    out = [mpmath.mpf(0)] * L
    for lam_n, b_n, c_n in zip(lam, B, C_tilde):
        half = mpmath.mpf(dt) * mpmath.mpc(lam_n) / 2
        a_bar, b_bar = (1 + half) / (1 - half), mpmath.mpf(dt) * mpmath.mpc(b_n) / (1 - half)
        c_true = mpmath.mpc(c_n) / (1 - a_bar**L)
        for l in range(L):
            out[l] += 2 * mpmath.re(c_true * b_bar * a_bar**l)
    return [float(x) for x in out]


def test_nyquist_bin_at_a_large_step_against_mpmath(device):
    """Kills C9 (n_reg = L//2 + 1 for even L: the point ω = -1 evaluated by the Cauchy sums at z = i(2/Δ)tan(π/2),
    with tan(π/2) = 1.6e16 in float64, instead of the exact limit (Δ/2) C̃ᵀB_f). Only where Δ|λ| approaches 1e16 do
    the sums at that point differ from the limit (3e-3 relative here); the true kernel is given by mpmath."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    lam = [complex(-0.5, 3e15), complex(-1.0, 1e3), complex(-0.2, 0.5)]
    B = [1 + 0.5j, -0.3 + 1j, 0.7 - 0.2j]
    C = [0.4 - 1j, 1.1 + 0.2j, -0.6 + 0.3j]
    dt, L = 1.0, 6
    args = (torch.tensor([lam], dtype=C128, device=device), torch.zeros(0, 1, 3, dtype=C128, device=device),
            torch.tensor([[B]], dtype=C128, device=device), torch.tensor([[C]], dtype=C128, device=device),
            torch.tensor([dt], dtype=F64, device=device), L)
    want = torch.tensor(_mp_bilinear_diagonal_kernel(mpmath, lam, B, C, dt, L), dtype=F64)
    got = dplr_kernel(*args, backend="fft")[0, 0, 0].cpu()
    assert (got - want).abs().max() <= 1e-14 * want.abs().max()


def test_increment_power_zero_power_and_bool_against_dense_powers(device):
    """Kills D11 (n = 0 returned E instead of 0) and D12 (the n check skipped: a bool taken for an int). F with
    (I + sE)^n = I + sF, compared with the dense float64 matrix power for n = 0..5."""
    g = torch.Generator().manual_seed(0)
    E = torch.randn(2, 3, 3, dtype=F64, generator=g).to(device)
    s = torch.tensor([0.3, 1.7], dtype=F64, device=device)
    eye = torch.eye(3, dtype=F64, device=device)
    for n in range(6):
        dense = torch.linalg.matrix_power(eye + s[:, None, None] * E, n) - eye  # (2, 3, 3): sF
        got = increment_power(E, n, s) * s[:, None, None]
        assert (got - dense).abs().max() <= 1e-13 * (1 + dense.abs().max()), n
    assert torch.equal(increment_power(E, 0), torch.zeros_like(E))
    with pytest.raises(ValueError, match="n must be an int"):
        increment_power(E, True)


def _dense_bilinear_real(Lambda, P, dt):
    """Ā of the full conjugate-pair DPLR system (A = diag(Λ_f) - Σ P_f P_f*) by a dense numpy solve, in the real
    basis z = [Re x, Im x] of the half state: T⁻¹ Ā T with T = [[I, iI], [I, -iI]]."""
    lam_f = np.concatenate([Lambda, Lambda.conj()], -1)  # (H, N)
    P_f = np.concatenate([P, P.conj()], -1)  # (r, H, N)
    out = []
    for h in range(Lambda.shape[0]):
        A = np.diag(lam_f[h]) - np.einsum("rn,rm->nm", P_f[:, h], P_f[:, h].conj())
        eye = np.eye(A.shape[0])
        A_bar = np.linalg.solve(eye - dt[h] / 2 * A, eye + dt[h] / 2 * A)
        M = Lambda.shape[-1]
        T = np.block([[np.eye(M), 1j * np.eye(M)], [np.eye(M), -1j * np.eye(M)]])
        out.append((np.linalg.solve(T, A_bar @ T)).real)
    return np.stack(out)


def test_bilinear_real_minus_identity_against_a_dense_solve(device):
    """Kills D17 (``minus_identity`` ignored: Ā returned where Ā - I was asked for, which S4's small-Δ path reads)."""
    g = torch.Generator().manual_seed(1)
    H, M, r = 2, 3, 2
    Lambda = torch.complex(-torch.rand(H, M, dtype=F64, generator=g) - 0.1, 5 * torch.randn(H, M, dtype=F64,
                                                                                           generator=g))
    P = torch.complex(torch.randn(r, H, M, dtype=F64, generator=g), torch.randn(r, H, M, dtype=F64, generator=g))
    B = torch.complex(torch.randn(H, M, dtype=F64, generator=g), torch.randn(H, M, dtype=F64, generator=g))
    dt = torch.tensor([0.05, 0.7], dtype=F64)
    want = _dense_bilinear_real(Lambda.numpy(), P.numpy(), dt.numpy()) - np.eye(2 * M)
    got, _ = bilinear_dplr_real(Lambda.to(device), P.to(device), B.to(device), dt.to(device), minus_identity=True)
    assert np.abs(got.cpu().numpy() - want).max() <= 1e-13


def test_power_table_jvp_by_the_closed_form(device):
    """Kills P3 (the JVP's k shifted to 1..n) and P6 (a^k in place of a^{k-1}): d(a^k) = k a^{k-1} ȧ, a = 0 too."""
    a = torch.tensor([0.0, 0.9 - 0.4j, -1.3 + 0.2j], dtype=C128, device=device)
    a_dot = torch.tensor([1.0 + 0.5j, -0.7 + 2.0j, 0.3 - 1.1j], dtype=C128, device=device)
    n = 5
    _, tangent = torch.func.jvp(lambda x: power_table(x, n), (a,), (a_dot,))
    want = torch.stack([k * a ** max(k - 1, 0) * a_dot if k else torch.zeros_like(a) for k in range(n)], -1)
    assert (tangent - want).abs().max() <= 1e-14


def test_widen_promises_double_for_both_single_dtypes(device):
    """Kills Z9 (widen a no-op) and Z10 (complex64 not widened): float32 -> float64, complex64 -> complex128."""
    x = torch.tensor([1.5, -2.25], device=device)
    assert widen(x).dtype == torch.float64 and torch.equal(widen(x).float(), x)
    xc = torch.tensor([1.5 - 0.5j], dtype=torch.complex64, device=device)
    assert widen(xc).dtype == C128 and torch.equal(widen(xc).to(torch.complex64), xc)
    d = torch.ones(2, dtype=F64, device=device)
    assert widen(d) is d


def _zoh_float64(lam, dt):
    """(Ā, B̄/B) = (e^z, Δ (e^z - 1)/z), z = Δλ, in float64 from exactly converted single-precision values."""
    z = dt * lam
    return torch.exp(z), dt * torch.expm1(z) / z


def test_zoh_torch_single_precision_is_formed_in_double_and_rounded_once(device):
    """Kills Z1 (zoh_torch without widen: z = Δλ in float32, ~|Im z| eps phase error, 1e-4 here) and Z14 (B̄ left in
    complex128). With |Im z| ~ 1e3 a float32 z is off by 1e3 x 6e-8; the result must be the float64 value rounded."""
    g = torch.Generator().manual_seed(2)
    lam = torch.complex(-torch.rand(2, 4, generator=g), 1500 + 300 * torch.rand(2, 4, generator=g))  # complex64
    dt = (0.3 + torch.rand(2, 1, generator=g))  # float32
    B = torch.ones(2, 4, dtype=torch.complex64)
    A_bar, B_bar = zoh_torch(lam.to(device), B.to(device), dt.to(device))
    assert A_bar.dtype == torch.complex64 and B_bar.dtype == torch.complex64
    A_want, B_want = _zoh_float64(lam.to(C128), dt.to(F64))
    assert ((A_bar.cpu().to(C128) - A_want).abs() / A_want.abs()).max() <= 2e-7
    assert ((B_bar.cpu().to(C128) - B_want).abs() / B_want.abs()).max() <= 2e-7


def test_zoh_log_single_precision_forms_dt_in_double(device):
    """Kills Z2 (zoh_log's Δ = exp(log Δ) in float32: 6e-8 relative in Δ times |Im z| ~ 1.6e3 in the phase). The
    torch path (backend "reference"); |Re z| <= 0.5 keeps the float32 Re λ = -e^a inside the tolerance."""
    g = torch.Generator().manual_seed(3)
    a = torch.log(0.1 + 0.3 * torch.rand(2, 3, generator=g))  # float32: -Re λ in [0.1, 0.4]
    b = 1200 + 400 * torch.rand(2, 3, generator=g)
    log_dt = torch.tensor([0.1, 0.3])
    B = torch.ones(2, 3, dtype=torch.complex64)
    with use_backend("reference"):
        A_bar, B_bar = zoh_log(a.to(device), b.to(device), B.to(device), log_dt.to(device))
    lam = torch.complex(-torch.exp(a.to(F64)), b.to(F64))
    A_want, B_want = _zoh_float64(lam, torch.exp(log_dt.to(F64))[:, None])
    assert ((A_bar.cpu().to(C128) - A_want).abs() / A_want.abs()).max() <= 5e-7
    assert ((B_bar.cpu().to(C128) - B_want).abs() / B_want.abs()).max() <= 5e-7


def test_zoh_torch_phi_between_the_series_radius_and_two_against_mpmath(device):
    """Kills Z3 (series radius 2: the degree-17 series truncated at |z| = 1.95 is 1.4e-12 off). zoh_torch, not zoh:
    on the CPU zoh takes the C code, which has its own series."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    zs = [0.95j, -1.2, 1.5j, -1.95, 1.2 + 1.45j, -1.9j]
    dt = 0.5
    lam = torch.tensor([[z / dt for z in zs]], dtype=C128, device=device)
    _, B_bar = zoh_torch(lam, torch.ones_like(lam), torch.tensor([[dt]], dtype=F64, device=device))
    for got, z in zip(B_bar[0].tolist(), zs):
        want = complex(dt * mpmath.expm1(mpmath.mpc(z)) / z)
        assert abs(got - want) <= 2e-15 * abs(want), z


def test_zoh_gradient_at_zero_is_free_of_nan_under_anomaly_detection(device):
    """Kills Z7 (the direct branch fed z = 0 where |z| < 1: its unused 0/0 makes DivBackward return NaN, which
    torch.where masks but anomaly detection reports). ∂B̄/∂λ = Δ² B φ'(z), φ'(z) = Σ_k k z^{k-1}/(k+1)! = 1/2 + z/3 + z²/8 + z³/30 + O(z⁴)."""
    dt = 0.1
    lam = torch.tensor([[0.0, 1e-3j]], dtype=C128, device=device, requires_grad=True)
    with torch.autograd.detect_anomaly(check_nan=True):
        _, phi = exp_phi_torch(dt * lam)
        phi.real.sum().backward()
    z = dt * lam.detach()
    want = (dt * (0.5 + z / 3 + z**2 / 8 + z**3 / 30)).conj()  # ∂ Re φ(Δλ)/∂λ in torch's convention: conj(Δ φ'(z))
    assert (lam.grad - want).abs().max() <= 1e-15


def test_blocked_conv_forward_with_an_odd_fft_length_against_the_loop(device):
    """Kills F7 (the block's inverse FFT without n=n: length n - 1 for an odd n). y[t] = Σ_{s<L} k[(t - s) mod n] u[s]
    by a float64 loop; conv_forward_blocked's contract allows any n >= L."""
    g = torch.Generator().manual_seed(4)
    Bsz, L, H, n = 2, 7, 3, 11
    u = torch.randn(Bsz, L, H, dtype=F64, generator=g)
    k = torch.randn(H, n, dtype=F64, generator=g)
    y, _, _ = fftblocks.conv_forward_blocked(u, k)
    want = torch.zeros(Bsz, L, H, dtype=F64)
    for t in range(L):
        for s in range(L):
            want[:, t] += k[:, (t - s) % n] * u[:, s]
    assert (y - want).abs().max() <= 1e-13


def test_chunked_cauchy_under_vmap_with_and_without_points_against_the_direct_sum(device):
    """Bug of this round (fixed in ops/cauchy.py): with no evaluation points (W = 0) the blocked forward under
    torch.func (vmap) called torch.cat on an empty list of blocks and raised, where the eager call returns the empty
    (..., 0) sums. With points it must equal the direct Cauchy sum Σ_n v_n/(z_m - w_n) (a Python loop)."""
    g = torch.Generator().manual_seed(5)

    def rand(*shape):
        return torch.complex(torch.randn(*shape, dtype=F64, generator=g), torch.randn(*shape, dtype=F64, generator=g))

    v, w, z = rand(2, 3), rand(3), rand(4)
    got = torch.func.vmap(lambda vv: cauchy(vv, z.to(device), w.to(device), backend="chunked"))(v.to(device)).cpu()
    want = torch.tensor([[sum(complex(v[b, n]) / complex(z[m] - w[n]) for n in range(3)) for m in range(4)]
                         for b in range(2)], dtype=C128)
    assert (got - want).abs().max() <= 1e-13 * want.abs().max()
    empty = z[:0].to(device)
    assert torch.func.vmap(lambda vv: cauchy(vv, empty, w.to(device), backend="chunked"))(v.to(device)).shape == (2, 0)
    assert torch.func.vmap(lambda ww: cauchy(v.to(device), empty, ww, backend="chunked"))(v.to(device)).shape == (
        2, 2, 0)
