"""Mutation round of 2026-12-07 over six modules that had never been mutation-tested: layers/dss.py, layers/dlr.py,
layers/lru.py, ops/kernels.py, ops/diagonal.py and ops/dense.py.

Hand mutants (sign flips, dropped conjugates, off-by-one powers and lengths, swapped dimensions, changed inits and
constants, dropped checks, changed precision of the power tables, inverted eager/traced branches) were run against the
modules' own test files; the tests below kill the survivors that can be killed, each against an independent reference
written here (a Python complex loop of the paper's recurrence, the closed form of the initialisation's distribution,
the documented argument contract). Each test's docstring names the mutants it kills. The equivalent survivors are
listed in the round's report.
"""

from __future__ import annotations

import cmath
import math

import numpy as np
import pytest
import torch

from ssmkit.layers.dss import DSS
from ssmkit.layers.lru import LRU
from ssmkit.ops.dense import dense_final_state_chunked
from ssmkit.ops.diagonal import diagonal_ssm_bidirectional, diagonal_ssm_step, diagonal_step_coefficients
from ssmkit.ops.fftconv import bidirectional_conv
from ssmkit.ops.kernels import (
    initial_state_output,
    initial_state_output_reference,
    initial_state_output_vandermonde,
    vandermonde,
    vandermonde_gemm,
    vandermonde_reference,
)
from tests.conftest import DEVICE

F64, C64, C128 = torch.float64, torch.complex64, torch.complex128


# ------------------------------------------------------------------------------------------------------------------
# ops/kernels.py


def _state_output_loop(C, A_bar, state, L):
    """y0[b, l, h] = Re Σ_n C[h, n] Ā[h, n]^{l+1} s[b, h, n] by Python complex powers (arXiv 2206.11893, S4D state
    forwarding: s is the state before the first input)."""
    Bsz, H, N = state.shape
    out = torch.zeros(Bsz, L, H, dtype=F64)
    for b in range(Bsz):
        for h in range(H):
            for l in range(L):
                out[b, l, h] = sum((complex(C[h, n]) * complex(A_bar[h, n]) ** (l + 1) * complex(state[b, h, n])).real
                                   for n in range(N))
    return out


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_initial_state_output_is_the_free_response_from_the_state_before_the_first_input(backend):
    """Kills K13 (the oracle ``initial_state_output_reference`` read out x before multiplying by Ā: Ā^l s instead of
    Ā^{l+1} s, and the reference is what the chunked path was compared with): both backends against Python complex
    powers, and a one-mode hand value Re(C Ā^{l+1} s) with Ā = i/2, C = 1, s = 1 -> Re((i/2)^{l+1})."""
    g = torch.Generator().manual_seed(7)
    H, N, Bsz, L = 3, 4, 2, 9
    A_bar = (0.95 * torch.rand(H, N, generator=g, dtype=F64)) * torch.exp(1j * math.pi * torch.rand(H, N, generator=g,
                                                                                                    dtype=F64))
    C = torch.randn(H, N, generator=g, dtype=C128)
    state = torch.randn(Bsz, H, N, generator=g, dtype=C128)
    y = initial_state_output(C.to(DEVICE), A_bar.to(DEVICE), state.to(DEVICE), L, backend=backend)
    want = _state_output_loop(C, A_bar, state, L)
    assert y.shape == (Bsz, L, H)
    torch.testing.assert_close(y.cpu(), want, rtol=0, atol=1e-13)
    ones = torch.ones(1, 1, 1, dtype=C128, device=DEVICE)
    one = initial_state_output(ones[0], torch.full((1, 1), 0.5j, dtype=C128, device=DEVICE), ones, 4, backend=backend)
    torch.testing.assert_close(one.flatten().cpu(), torch.tensor([0.0, -0.25, 0.0, 0.0625], dtype=F64),
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("fn", [initial_state_output_reference, initial_state_output_vandermonde])
def test_initial_state_output_refuses_an_empty_batch_a_batched_A_and_mixed_dtypes(fn):
    """Kills K16 (the check of B >= 1 dropped: an empty state batch was accepted), K21 (A_bar's 2-dimension check
    dropped: an (1, H, N) Ā broadcast silently into a wrong output) and K22 (the state's dtype not checked against C and
    Ā: a complex64 state was promoted without a word). The documented contract: C and A_bar (H, N), state (B, H, N),
    one dtype, a clear ValueError otherwise."""
    H, N = 3, 4
    C = torch.randn(H, N, dtype=C128, device=DEVICE)
    A_bar = 0.5 * torch.randn(H, N, dtype=C128, device=DEVICE)
    state = torch.randn(2, H, N, dtype=C128, device=DEVICE)
    with pytest.raises(ValueError, match=r"state must be \(B, H, N\) = \(\?, 3, 4\); got shape \(0, 3, 4\)"):
        fn(C, A_bar, state[:0], 5)
    with pytest.raises(ValueError, match=r"A_bar must be \(H, N\) \(2 dimensions\); got shape \(1, 3, 4\)"):
        fn(C, A_bar[None], state, 5)
    with pytest.raises(ValueError, match=r"one dtype; got torch.complex128, torch.complex128, torch.complex64"):
        fn(C, A_bar, state.to(C64), 5)


def test_float32_gemm_kernel_rounds_only_in_the_gemm():
    """Kills K10 (the power tables Ā^r and Ā^{qT} built in the input precision instead of float64/complex128): the
    module docstring's claim that the only float32 rounding is the GEMM's. Against exact powers of the rounded complex64
    inputs (a complex128 loop), the error relative to Σ_n |W_n| stays at a GEMM's rounding (measured 1.0-1.2e-7 at
    L = 2048 and 4096 for |Ā| in [0.9, 0.99995] and any phase in [0, π)); complex64 tables drift with the doublings
    (measured 4.2-7.1e-7 for the same systems)."""
    g = torch.Generator().manual_seed(0)
    H, N, L = 8, 16, 4096
    mod = 1 - 10 ** (-4 * torch.rand(H, N, generator=g, dtype=F64) - 1)
    A_bar = (mod * torch.exp(1j * math.pi * torch.rand(H, N, generator=g, dtype=F64))).to(C64)
    W = torch.randn(H, N, generator=g, dtype=C64)
    want = vandermonde_reference(W.to(C128), A_bar.to(C128), L)  # (H, L): the exact powers of the rounded Ā
    got = vandermonde_gemm(W.to(DEVICE), A_bar.to(DEVICE), L).cpu()
    assert got.dtype == torch.float32
    err = ((got.to(F64) - want).abs() / W.abs().sum(-1, keepdim=True).to(F64)).max().item()
    assert err < 2.5e-7, err


# ------------------------------------------------------------------------------------------------------------------
# ops/diagonal.py


def test_step_vmapped_over_the_input_alone_equals_a_loop_of_steps():
    """Kills G10 (the eager/traced branch of ``diagonal_ssm_step`` inverted: under vmap the in-place add of a batched
    B̄ u into the fresh unbatched Ā ⊙ x is refused by functorch): vmap over u_t with one shared state equals the
    recurrence x_t = Ā x_{t-1} + B̄ u_t, y_t = Re Σ_n C_n x_{t,n} + D u_t written out in Python complex numbers."""
    g = torch.Generator().manual_seed(3)
    H, M = 3, 4
    A_bar = 0.5 * torch.randn(H, M, generator=g, dtype=C128)
    B_bar, C = torch.randn(H, M, generator=g, dtype=C128), torch.randn(H, M, generator=g, dtype=C128)
    D = torch.randn(H, generator=g, dtype=F64)
    x = torch.randn(2, H, M, generator=g, dtype=C128)
    u = torch.randn(5, 2, H, generator=g, dtype=F64)
    coeffs = diagonal_step_coefficients(A_bar, B_bar, C)
    y, h = torch.func.vmap(lambda u_t: diagonal_ssm_step(u_t, coeffs, x, D))(u)
    for k in range(5):
        for b in range(2):
            for c in range(H):
                x_new = [complex(A_bar[c, n]) * complex(x[b, c, n]) + complex(B_bar[c, n]) * float(u[k, b, c])
                         for n in range(M)]
                y_want = sum((complex(C[c, n]) * x_new[n]).real for n in range(M)) + float(D[c]) * float(u[k, b, c])
                assert abs(float(y[k, b, c]) - y_want) < 1e-13
                assert max(abs(complex(h[k, b, c, n]) - x_new[n]) for n in range(M)) < 1e-14


def test_bidirectional_auto_is_the_fft_path_of_a_gemm_kernel():
    """Kills G11 (``"auto"`` dispatching to the loop path instead of ``"fft"``) and G2 (the ``"fft"`` path building its
    kernel by the loop instead of the power-table GEMM): the docstring's contract, ``"fft"`` = the ``"chunked"``
    Vandermonde kernel + the FFT convolution and ``"auto"`` -> ``"fft"``, bit for bit (the loop path rounds
    differently, which this test checks too, so that the comparison can tell the paths apart)."""
    g = torch.Generator().manual_seed(4)
    H, M, L = 3, 4, 37
    A_bar = 0.9 * torch.rand(H, M, generator=g, dtype=F64) * torch.exp(2j * torch.rand(H, M, generator=g, dtype=F64))
    B_bar, C = torch.randn(H, M, generator=g, dtype=C128), torch.randn(2, H, M, generator=g, dtype=C128)
    u = torch.randn(2, L, H, generator=g, dtype=F64)
    A_bar, B_bar, C, u = (t.to(DEVICE) for t in (A_bar, B_bar, C, u))
    fft = diagonal_ssm_bidirectional(u, A_bar, B_bar, C, backend="fft")
    by_parts = bidirectional_conv(u, vandermonde(C * B_bar, A_bar, L, backend="chunked"), backend="fft")
    loop_kernel = bidirectional_conv(u, vandermonde(C * B_bar, A_bar, L, backend="reference"), backend="fft")
    reference = diagonal_ssm_bidirectional(u, A_bar, B_bar, C, backend="reference")
    assert torch.equal(fft, by_parts)
    assert torch.equal(diagonal_ssm_bidirectional(u, A_bar, B_bar, C, backend="auto"), fft)
    assert not torch.equal(fft, reference) and not torch.equal(fft, loop_kernel)
    torch.testing.assert_close(fft, reference, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# ops/dense.py


def test_dense_chunked_float32_tables_are_formed_in_double():
    """Kills N27 (``dense_state_tables`` doubling Ā^k B̄ and Ā^T in Ā's own float32 precision): the docstring's claim
    that the tables are formed in double whatever the result's precision. A float32 system with its spectral radius
    at 0.999 (non-normal, N = 8) over L = 4 096: the chunked final state against the float64 recurrence
    x_l = Ā x_{l−1} + B̄ u_l (arXiv 2111.00396 eq. 3) of the same float32 Ā, B̄, u, written as a loop here, is within
    2e-6 of max |x| (measured 2.8e-7; float32 tables 1.8e-5)."""
    torch.manual_seed(0)
    H, N, L, rho = 2, 8, 4096, 0.999
    Q, _ = torch.linalg.qr(torch.randn(H, N, N, dtype=F64))
    A = rho * Q @ Q.transpose(1, 2) + 0.3 * torch.randn(H, N, N, dtype=F64) / N
    A = (A / torch.linalg.eigvals(A).abs().max(-1).values[:, None, None] * rho).float()
    B = torch.randn(H, N, dtype=F64).float()
    u = torch.randn(2, L, H, dtype=F64).float()
    A64, B64, u64 = A.double(), B.double(), u.double()
    x = torch.zeros(2, H, N, dtype=F64)
    for l in range(L):
        x = torch.einsum("hnm,bhm->bhn", A64, x) + B64 * u64[:, l, :, None]
    got = dense_final_state_chunked(u.to(DEVICE), A.to(DEVICE), B.to(DEVICE)).cpu()
    assert got.dtype == torch.float32
    err = ((got.double() - x).abs().max() / x.abs().max()).item()
    assert err < 2e-6, err


# ------------------------------------------------------------------------------------------------------------------
# layers/dss.py


def test_dss_softmax_float64_kernel_of_a_mode_grown_past_the_square_of_the_double_range():
    """Kills S1b (``_regularised_reciprocal`` always took the |x|² branch): with l_max·Re z = 400, x = λ(e^{Lz} − 1)
    has |x| ~ e^{400}, whose square overflows float64 (e^{709.8}), so the mutant's W̃ = conj(x)/inf = 0 dropped the
    growing mode from the kernel although its state stays finite (e^{400}). Against DSS-softmax's kernel (arXiv
    2203.14343 §3.2, Prop. 1) K_l = Re Σ_n W_n (1/λ_n) (e^{z_n} − 1) e^{l z_n}/(e^{L z_n} − 1) + D δ_l, written as
    (e^z − 1) e^{(l−L) z}/(1 − e^{−L z}) in Python complex numbers so that nothing overflows."""
    L = 100
    layer = DSS(1, d_state=4, version="softmax", l_max=L, dtype=F64)
    lam = [complex(4.0, 0.3), complex(-0.5, 1.1)]  # a growing mode (L Re z = 400) and a decaying one; Δ = 1
    W = [complex(0.7, -0.2), complex(-1.3, 0.4)]
    with torch.no_grad():
        layer.A_real.copy_(torch.tensor([m.real for m in lam], dtype=F64))
        layer.A_imag.copy_(torch.tensor([m.imag for m in lam], dtype=F64))
        layer.log_dt.zero_()
        layer.W.copy_(torch.tensor([[[[w.real, w.imag] for w in W]]], dtype=F64))
        layer.D.fill_(0.25)
    K = layer.kernel(L).detach().cpu()  # (1, L)
    def term(w, m, l):
        if m.real > 0:  # 1/(λ(e^{Lz} − 1)) = e^{−Lz}/(λ(1 − e^{−Lz})); the regulariser is 1e-7/e^{800} relative
            return w / m * (cmath.exp(m) - 1) * cmath.exp((l - L) * m) / (1 - cmath.exp(-L * m))
        x = m * (cmath.exp(L * m) - 1)  # the official regularised reciprocal conj(x)/(|x|² + 1e-7)
        return w * (cmath.exp(m) - 1) * x.conjugate() / (abs(x) ** 2 + 1e-7) * cmath.exp(l * m)

    want = torch.tensor([sum(term(w, m, l).real for w, m in zip(W, lam)) + (0.25 if l == 0 else 0.0)
                         for l in range(L)], dtype=F64)
    assert abs(float(want[-1])) > 0.1  # the last lags are the growing mode's: O(1), not 0
    torch.testing.assert_close(K[0], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("version", ["exp", "softmax"])
def test_dss_W_and_D_are_drawn_from_standard_normals(version):
    """Kills S12 (W's parts drawn with std 0.5): DSS initialises W's real and imaginary parts each N(0, 1) and D ~
    N(0, 1) (ag1988/dss, /work/shared notes core-checked §4). Over 2·64·64 draws the sample std of N(0, 1) is within
    0.05 of 1 (5 standard errors of 0.0078) and the mean within 0.05 of 0; D over 4 096 channels likewise."""
    torch.manual_seed(11)
    layer = DSS(64, d_state=128, version=version, l_max=50)
    W = layer.W.detach().to(F64)
    assert W.shape == (1, 64, 64, 2)
    assert abs(W.std().item() - 1) < 0.05 and abs(W.mean().item()) < 0.05
    for part in (W[..., 0], W[..., 1]):
        assert abs(part.std().item() - 1) < 0.06
    D = DSS(4096, d_state=2, version=version, l_max=50).D.detach().to(F64)
    assert abs(D.std().item() - 1) < 0.06 and abs(D.mean().item()) < 0.06


@pytest.mark.parametrize("version", ["exp", "softmax"])
def test_dss_init_eigenvalues_are_the_skew_legs_spectrum_minus_a_half(version):
    """Kills S20 (Im λ halved at initialisation): DSS's Λ init (arXiv 2203.14343 §3.3; ag1988/dss) is the eigenvalues
    with positive imaginary part of the skew part of HiPPO-LegS(2M), minus ½. Independent reference: the LegS normal
    part S = A + P Pᵀ (P_n = √(n + ½)) is −½ I + J with J_nk = −½ √((2n+1)(2k+1)) sign(n − k), whose eigenvalues are
    ±iω, by numpy's eigvals of the real skew matrix J (M = 16 modes from a 32 × 32 J)."""
    M = 16
    n = np.arange(2 * M)
    J = -0.5 * np.sqrt(np.outer(2 * n + 1, 2 * n + 1)) * np.sign(n[:, None] - n[None, :])
    omega = np.sort(np.linalg.eigvals(J).imag)[M:]  # the M positive imaginary parts
    layer = DSS(2, d_state=2 * M, version=version, l_max=50, dtype=F64)
    re = -torch.exp(layer.log_A_real) if version == "exp" else layer.A_real
    np.testing.assert_allclose(re.detach().numpy(), -0.5, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.sort(layer.A_imag.detach().numpy()), omega, rtol=1e-9)


def test_dss_float32_discretisation_of_fast_poles_is_formed_in_double():
    """Kills S24 (Δ = e^{log Δ} and z = Δ_re Re λ + i Δ_im Im λ formed in float32): ``DSS.discrete`` forms Δ and z in
    double for a float32 layer and rounds Ā = e^z once (module docstring: a float32 z is off by |Im z|·6e-8). With
    the default init at d_state = 128 (|Im λ| up to ~1.3e3) and Δ in [0.05, 0.1], |Im z| reaches ~1e2; Ā against
    e^z in complex128 from the layer's own float32 parameters (Re λ = −e^a rounded to float32, as the layer keeps it)
    is within one complex64 rounding, √2·2^-25 = 4.3e-8 (a float32 z: ~6e-6)."""
    torch.manual_seed(12)
    layer = DSS(4, d_state=128, version="exp", dt_min=0.05, dt_max=0.1)
    A_bar = layer.discrete()[0].detach()
    assert A_bar.dtype == C64
    re = (-torch.exp(layer.log_A_real.detach())).to(F64)  # (M,): float32 Re λ, as the layer forms it
    dt = torch.exp(layer.log_dt.detach().to(F64))  # (H, 2)
    z = torch.complex(dt[:, :1] * re, dt[:, 1:] * layer.A_imag.detach().to(F64))  # (H, M)
    assert float(z.imag.abs().max()) > 50
    err = (A_bar.to(C128) - torch.exp(z)).abs().max().item()
    assert err < 4.3e-8, err


# ------------------------------------------------------------------------------------------------------------------
# layers/lru.py


def test_lru_continuous_system_of_a_floored_rate_holds_to_the_layers_eigenvalues():
    """Kills R13 (``continuous`` without the rate floor max(e^ν, 1e-6)): the continuous system's unit-step zero-order
    hold must be the layer's recurrence (arXiv 2303.06349 eq. 1 with λ = exp(−max(e^ν, 1e-6) + i e^θ)), so e^z = λ
    and the gain z/(λ − 1) γ B reproduces γ B; with ν = −30 (e^ν ≈ 9e-14, below the floor) the mutant's Re z = −9e-14
    put |e^z| 1e-6 away from |λ| = e^{−1e-6}. Also the forward with unit intervals against a Python loop of
    x_t = λ x_{t−1} + γ B u_t, y_t = Re(C x_t) + D u_t."""
    torch.manual_seed(8)
    H, M, L = 2, 3, 6
    layer = LRU(H, d_state=2 * M, dtype=F64)
    with torch.no_grad():
        layer.log_nu.copy_(torch.tensor([-30.0, -1.0, 0.5], dtype=F64))
    lam = [cmath.exp(complex(-max(math.exp(nu), 1e-6), math.exp(th)))
           for nu, th in zip(layer.log_nu.tolist(), layer.log_theta.tolist())]
    z, B_c, dt = (t.detach() for t in layer.continuous())
    torch.testing.assert_close(torch.exp(z), torch.tensor(lam, dtype=C128), rtol=1e-14, atol=0)
    assert float(z.real[0]) == -1e-6 and torch.equal(dt, torch.ones(M, dtype=F64))
    gamma_B = torch.exp(layer.log_gamma.detach())[:, None] * torch.view_as_complex(layer.B.detach())  # (M, H)
    phi = torch.expm1(z) / z  # the ZOH over a unit step: (e^z − 1)/z · B_c = γ B
    torch.testing.assert_close(phi[:, None] * B_c, gamma_B, rtol=1e-9, atol=0)
    u = torch.randn(1, L, H, dtype=F64)
    C = torch.view_as_complex(layer.C.detach()[0])  # (H, M)
    x, want, D = [0j] * M, torch.zeros(1, L, H, dtype=F64), layer.D.detach()
    for t in range(L):
        x = [lam[m] * x[m] + sum(complex(gamma_B[m, h]) * float(u[0, t, h]) for h in range(H)) for m in range(M)]
        for h in range(H):
            want[0, t, h] = sum((complex(C[h, m]) * x[m]).real for m in range(M)) + float(D[h]) * float(u[0, t, h])
    with torch.no_grad():
        y = layer(u, intervals=torch.ones(1, L, dtype=F64))
    y = y[0] if isinstance(y, tuple) else y
    torch.testing.assert_close(y, want, rtol=0, atol=1e-12)


def test_lru_float32_eigenvalues_are_the_double_formula_rounded_once():
    """Kills R18 (λ formed from float32 e^ν and e^θ): ``LRU.eigenvalues`` forms λ = exp(−max(e^ν, 1e-6) + i e^θ) in
    double and rounds it once, so each part of a float32 layer's λ is within half a complex64 ulp (≤ 3e-8 for |λ| < 1)
    of the complex128 formula of its own parameters: |Δλ| ≤ 4.3e-8 (measured 3.8e-8 over 500 modes of the ring
    [0.999, 0.9999], phases to 6.28). A float32 phase e^θ is off by up to 6.28·6e-8 (measured 2.5e-7)."""
    torch.manual_seed(9)
    layer = LRU(2, d_state=1000, r_min=0.999, r_max=0.9999, max_phase=6.28)
    lam = layer.eigenvalues().detach()
    assert lam.dtype == C64
    nu, theta = layer.log_nu.detach().to(F64), layer.log_theta.detach().to(F64)
    exact = [cmath.exp(complex(-max(math.exp(a), 1e-6), math.exp(b))) for a, b in zip(nu.tolist(), theta.tolist())]
    err = (lam.to(C128) - torch.tensor(exact, dtype=C128)).abs().max().item()
    assert err < 4.3e-8, err
