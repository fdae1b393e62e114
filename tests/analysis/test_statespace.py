"""Tests of ssmkit.analysis.statespace.StateSpace against hand values, scipy.signal and python-control."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import scipy.signal
import torch

from ssmkit.analysis.statespace import StateSpace
from tests.conftest import rel_err

# Pairwise-distinct sizes so a swapped axis cannot broadcast silently.
G, N, M_IN, P_OUT, BATCH, L = 3, 4, 2, 5, 2, 13


def random_bank(
    rng: np.random.Generator, G: int, n: int, m: int, p: int, radius: float = 0.9, complex_: bool = False
) -> tuple[np.ndarray, ...]:
    """Random (A, B, C, D) with every spectral radius = ``radius``."""

    def draw(*shape: int) -> np.ndarray:
        x = rng.standard_normal(shape)
        return x + 1j * rng.standard_normal(shape) if complex_ else x

    A = draw(G, n, n)
    A = A * (radius / np.abs(np.linalg.eigvals(A)).max(1))[:, None, None]  # (G, n, n)
    return A, draw(G, n, m), draw(G, p, n), draw(G, p, m)


def match_sets(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance from each point of a to the nearest unused point of b (a greedy matching)."""
    assert len(a) == len(b), (a, b)
    b = list(b)
    worst = 0.0
    for z in a:
        j = int(np.argmin([abs(z - w) for w in b]))
        worst = max(worst, abs(z - b.pop(j)))
    return worst


def ssm_loop(A_bar, B_bar, C, D, u):
    """SSM-paper convention x_k = Ā x_{k-1} + B̄ u_k, y_k = Re(C x_k + D u_k) in complex128; u (B, L, G*m)."""
    Gs, n, m = B_bar.shape
    u = u.reshape(u.shape[0], u.shape[1], Gs, m).astype(np.complex128)  # (B, L, G, m)
    x = np.zeros((u.shape[0], Gs, n), np.complex128)  # (B, G, n)
    ys = []
    for k in range(u.shape[1]):
        x = np.einsum("gij,bgj->bgi", A_bar, x) + np.einsum("gim,bgm->bgi", B_bar, u[:, k])  # (B, G, n)
        ys.append((np.einsum("gpn,bgn->bgp", C, x) + np.einsum("gpm,bgm->bgp", D, u[:, k])).real)  # (B, G, p)
    return np.stack(ys, 1).reshape(u.shape[0], u.shape[1], -1)  # (B, L, G*p)


# ---------------------------------------------------------------------------------------------------------------
# hand values
def test_poles_hand_2x2():
    ss = StateSpace([[[0.5, 0.1], [0.0, 0.3]]], [[[1.0], [1.0]]], [[[1.0, 2.0]]], [[[0.5]]])
    assert np.allclose(np.sort(ss.poles()[0].real), [0.3, 0.5], atol=1e-15)
    assert ss.poles().shape == (1, 2) and ss.poles().dtype == np.complex128


def test_dcgain_and_zero_first_order_hand():
    # H(z) = b / (z - a) + d: dcgain b / (1 - a) + d; zero where b + d (z - a) = 0, z = a - b / d.
    a, b, d = 0.6, 0.8, 0.5
    ss = StateSpace([[[a]]], [[[b]]], [[[1.0]]], [[[d]]])
    assert ss.dcgain()[0, 0, 0] == pytest.approx(b / (1 - a) + d, rel=1e-14)
    assert ss.zeros()[0] == pytest.approx([a - b / d], rel=1e-12)


def test_zeros_hand_siso_second_order():
    # H(z) = (z - 0.2) / ((z - 0.5)(z - 0.3)) in controllable canonical form: one finite zero at 0.2.
    A = [[[0.8, -0.15], [1.0, 0.0]]]
    ss = StateSpace(A, [[[1.0], [0.0]]], [[[1.0, -0.2]]], [[[0.0]]])
    assert ss.zeros()[0] == pytest.approx([0.2], abs=1e-12)


def test_zeros_hand_mimo_invertible_D():
    # With D invertible the zeros are eig(A - B D^{-1} C) (no infinite generalised eigenvalues).
    rng = np.random.default_rng(1)
    A, B, C, D = random_bank(rng, 2, 5, 3, 3)
    expect = np.linalg.eigvals(A - B @ np.linalg.solve(D, C))  # (G, n)
    got = StateSpace(A, B, C, D).zeros()
    for g in range(2):
        assert match_sets(got[g], expect[g]) < 1e-9  # zeros of a well-conditioned 5-state system: ~1e-13 seen


def test_dcgain_pole_at_one_is_inf():
    ss = StateSpace([[[1.0]]], [[[1.0]]], [[[1.0]]], [[[0.0]]])
    assert np.isinf(ss.dcgain()).all()


# ---------------------------------------------------------------------------------------------------------------
# H-infinity norm
@pytest.mark.parametrize("a", [0.3, 0.9, 0.999, -0.8])
def test_hinf_first_order_closed_form(a):
    # H(z) = b / (z - a): peak at θ = 0 (a > 0) or θ = π (a < 0), H∞ = b / (1 - |a|).
    b = 0.7
    ss = StateSpace([[[a]]], [[[b]]], [[[1.0]]], [[[0.0]]])
    assert ss.hinf_norm()[0] == pytest.approx(b / (1 - abs(a)), rel=1e-6)  # brief's bound; seen ~1e-15


@pytest.mark.parametrize("r", [0.9, 0.99, 0.9999])
def test_hinf_second_order_resonance_closed_form(r):
    # H(z) = 1 / ((z - λ)(z - conj λ)), λ = r e^{iφ}: min over θ of |e^{iθ}-λ||e^{iθ}-conj λ| is sin φ (1 - r²)
    # (attained at cos θ = (1 + r²) cos φ / (2r)), so H∞ = 1 / (sin φ (1 - r²)). r = 0.9999 gives a peak
    # 1e-4 wide, far narrower than the uniform grid: the pole-angle points must find it.
    phi = 1.0
    A = [[[2 * r * math.cos(phi), -(r**2)], [1.0, 0.0]]]
    ss = StateSpace(A, [[[1.0], [0.0]]], [[[0.0, 1.0]]], [[[0.0]]])
    assert ss.hinf_norm()[0] == pytest.approx(1 / (math.sin(phi) * (1 - r**2)), rel=1e-6)


def test_hinf_mimo_vs_fine_grid():
    rng = np.random.default_rng(2)
    ss = StateSpace(*random_bank(rng, G, N, M_IN, P_OUT, radius=0.97), dt=0.1)
    hinf = ss.hinf_norm()
    theta = np.linspace(0.0, math.pi, 1 << 17)  # spacing 2.4e-5: grid misses the peak by ~ curvature * 1e-10
    grid = np.zeros(G)
    for s in range(0, theta.size, 1 << 13):
        H = ss.frequency_response(theta[s : s + (1 << 13)] / ss.dt)  # (G, p, m, W)
        grid = np.maximum(grid, np.linalg.svd(H.transpose(0, 3, 1, 2), compute_uv=False)[..., 0].max(1))
    assert np.all(hinf >= grid * (1 - 1e-12))  # the refined peak is never below a grid sample
    assert np.all(np.abs(hinf - grid) / grid <= 1e-6)  # brief's bound


def test_hinf_unstable_is_inf_and_complex_matches_real():
    rng = np.random.default_rng(3)
    A, B, C, D = random_bank(rng, G, N, 1, 1, complex_=True)
    A[1] *= 1.2  # system 1: spectral radius 1.08
    ss = StateSpace(A, B, C, D)
    h, hr = ss.hinf_norm(), ss.to_real().hinf_norm()
    assert np.isinf(h[1]) and np.isfinite(h[[0, 2]]).all()
    assert rel_err(torch.from_numpy(h[[0, 2]]), torch.from_numpy(hr[[0, 2]])) < 1e-10  # same response, float64


# ---------------------------------------------------------------------------------------------------------------
# frequency response
def test_frequency_response_vs_scipy_dfreqresp():
    rng = np.random.default_rng(4)
    ss = StateSpace(*random_bank(rng, G, N, 1, 1), dt=0.1)
    omega = np.linspace(0.0, math.pi / ss.dt, 37)
    H = ss.frequency_response(omega)
    assert H.shape == (G, 1, 1, 37) and H.dtype == np.complex128
    for g, sys_g in enumerate(ss.to_scipy()):
        _, ref = scipy.signal.dfreqresp(sys_g, w=omega * ss.dt)  # scipy: rad/sample
        assert rel_err(torch.from_numpy(H[g, 0, 0]), torch.from_numpy(ref)) < 1e-10  # float64, n = 4 via tf


def test_frequency_response_vs_control_mimo():
    pytest.importorskip("control")  # used through StateSpace.to_control()
    rng = np.random.default_rng(5)
    ss = StateSpace(*random_bank(rng, G, N, M_IN, P_OUT), dt=0.05)
    omega = np.linspace(0.1, 60.0, 29)
    H = ss.frequency_response(omega)
    assert H.shape == (G, P_OUT, M_IN, 29)
    for g, sys_g in enumerate(ss.to_control()):
        ref = sys_g.frequency_response(omega, squeeze=False).complex  # (p, m, W)
        assert rel_err(torch.from_numpy(H[g]), torch.from_numpy(ref)) < 1e-12  # both backward-stable float64 solves


def test_frequency_response_scalar_omega_and_bad_omega():
    ss = StateSpace([[[0.5]]], [[[1.0]]], [[[1.0]]], [[[0.0]]])
    assert ss.frequency_response(0.0)[0, 0, 0, 0] == pytest.approx(2.0, rel=1e-14)  # 1 / (1 - 0.5)
    with pytest.raises(ValueError, match=r"omega must be a real 1-D array \(W,\)"):
        ss.frequency_response(np.ones((2, 2)))


# ---------------------------------------------------------------------------------------------------------------
# simulation
def test_simulate_vs_scipy_dlsim(device):
    rng = np.random.default_rng(6)
    m, p = 2, 1
    ss = StateSpace(*random_bank(rng, G, N, m, p), dt=0.1)
    u = torch.randn(BATCH, L, G * m, dtype=torch.float64, device=device)
    x0 = torch.randn(BATCH, G, N, dtype=torch.float64, device=device)
    y = ss.simulate(u, x0)
    assert y.shape == (BATCH, L, G * p) and y.dtype == torch.float64 and y.device == u.device
    un, xn, yn = u.cpu().numpy(), x0.cpu().numpy(), y.cpu()
    for g, sys_g in enumerate(ss.to_scipy()):
        for b in range(BATCH):
            _, ref, _ = scipy.signal.dlsim(sys_g, un[b, :, g * m : (g + 1) * m], x0=xn[b, g])  # time on axis 0
            assert rel_err(yn[b, :, g * p : (g + 1) * p], torch.from_numpy(ref)) < 1e-12  # float64, L = 13


def test_simulate_vs_control_forced_response(device):
    control = pytest.importorskip("control")
    rng = np.random.default_rng(7)
    ss = StateSpace(*random_bank(rng, G, N, M_IN, P_OUT), dt=0.1)
    u = torch.randn(BATCH, L, G * M_IN, dtype=torch.float64, device=device)
    y = ss.simulate(u).cpu()
    T = np.arange(L) * ss.dt
    for g, sys_g in enumerate(ss.to_control()):
        for b in range(BATCH):
            U = u[b, :, g * M_IN : (g + 1) * M_IN].cpu().numpy().T  # python-control: time last, (m, L)
            ref = control.forced_response(sys_g, T=T, U=U).outputs  # (p, L)
            assert rel_err(y[b, :, g * P_OUT : (g + 1) * P_OUT], torch.from_numpy(ref.T)) < 1e-12  # float64


def test_simulate_numpy_input_state_chunks_and_complex(device):
    rng = np.random.default_rng(8)
    ss = StateSpace(*random_bank(rng, G, N, M_IN, P_OUT, complex_=True))
    u = rng.standard_normal((BATCH, L, G * M_IN))
    y = ss.simulate(u)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64 and y.device.type == "cpu"
    k = 5
    y1, h = ss.simulate(torch.from_numpy(u[:, :k]).to(device), return_state=True)
    assert h.shape == (BATCH, G, N) and h.dtype == torch.complex128
    y2 = ss.simulate(torch.from_numpy(u[:, k:]).to(device), x0=h)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-13  # same float64 operations in the same order
    # the real realisation gives the same output
    assert rel_err(ss.to_real().simulate(u), y) < 1e-12  # float64 real vs complex arithmetic


def test_simulate_bad_inputs():
    ss = StateSpace(*random_bank(np.random.default_rng(9), G, N, M_IN, P_OUT))
    with pytest.raises(ValueError, match=r"u must be \(B, L, G\*m\) = \(\?, \?, 6\) with B, L >= 1; got \(2, 13, 5"):
        ss.simulate(torch.zeros(2, 13, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"u must be \(B, L, G\*m\).*got \(2, 0, 6\)"):
        ss.simulate(torch.zeros(2, 0, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="u must be a real floating"):
        ss.simulate(torch.zeros(2, 13, 6, dtype=torch.complex128))
    with pytest.raises(ValueError, match=r"x0 must be \(B, G, n\) = \(2, 3, 4\); got \(2, 4, 3\)"):
        ss.simulate(torch.zeros(2, 13, 6, dtype=torch.float64), x0=torch.zeros(2, 4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x0 must be real for a real system"):
        ss.simulate(torch.zeros(2, 13, 6, dtype=torch.float64), x0=torch.zeros(2, 3, 4, dtype=torch.complex128))
    with pytest.raises(ValueError, match=r"u must be a numeric array or tensor; got str \(<U3\)"):  # was TypeError
        ss.simulate("abc")
    with pytest.raises(ValueError, match=r"x0 must be a numeric array or tensor; got list"):
        ss.simulate(torch.zeros(2, 13, 6, dtype=torch.float64), x0=[["a"]])
    with pytest.raises(ValueError, match=r"x0 must be a numeric \(B, G, n\) array; got dtype torch.bool"):
        ss.simulate(torch.zeros(2, 13, 6, dtype=torch.float64), x0=np.zeros((2, 3, 4), dtype=bool))


# ---------------------------------------------------------------------------------------------------------------
# SSM-paper convention
@pytest.mark.parametrize("complex_", [False, True])
def test_from_ssm_equals_paper_loop(complex_, device):
    rng = np.random.default_rng(10)
    A_bar, B_bar, C, D = random_bank(rng, G, N, M_IN, P_OUT, complex_=complex_)
    ss = StateSpace.from_ssm(A_bar, B_bar, C, D, dt=0.5)
    assert np.allclose(ss.C, C @ A_bar, rtol=1e-15) and np.allclose(ss.D, D + C @ B_bar, rtol=1e-15)
    u = rng.standard_normal((BATCH, L, G * M_IN))
    y = ss.simulate(torch.from_numpy(u).to(device))
    assert rel_err(y, torch.from_numpy(ssm_loop(A_bar, B_bar, C, D, u))) < 1e-12  # float64, L = 13


@pytest.mark.parametrize("conjugate_pairs", [True, False])
def test_from_diagonal_equals_complex_loop(conjugate_pairs, device):
    rng = np.random.default_rng(11)
    H, Mm = 3, 4
    A_bar = rng.uniform(0.5, 0.95, (H, Mm)) * np.exp(1j * rng.uniform(0, math.pi, (H, Mm)))  # (H, M) complex
    B_bar = rng.standard_normal((H, Mm)) + 1j * rng.standard_normal((H, Mm))
    C = rng.standard_normal((H, Mm)) + 1j * rng.standard_normal((H, Mm))
    D = rng.standard_normal(H)
    ss = StateSpace.from_diagonal(
        torch.from_numpy(A_bar), torch.from_numpy(B_bar), torch.from_numpy(C), torch.from_numpy(D),
        dt=0.01, conjugate_pairs=conjugate_pairs,
    )
    assert not ss.is_complex and (ss.nsystems, ss.nstates, ss.ninputs, ss.noutputs) == (H, 2 * Mm, 1, 1)
    c = 2.0 if conjugate_pairs else 1.0
    u = rng.standard_normal((BATCH, L, H))
    x = np.zeros((BATCH, H, Mm), np.complex128)  # (B, H, M)
    ref = []
    for k in range(L):
        x = A_bar * x + B_bar * u[:, k, :, None]  # (B, H, M)
        ref.append((c * (C * x).sum(-1)).real + D * u[:, k])  # (B, H)
    y = ss.simulate(torch.from_numpy(u).to(device))
    assert rel_err(y, torch.from_numpy(np.stack(ref, 1))) < 1e-12  # float64, L = 13
    expect = np.concatenate([A_bar, A_bar.conj()], 1)  # (H, 2M)
    for h in range(H):
        assert match_sets(ss.poles()[h], expect[h]) < 1e-12  # 2x2 rotation blocks: exact eigenvalues


def test_from_diagonal_realistic_s4d_like():
    # S4D-Lin-like bank, H = 64 channels, d_state = 64 (32 modes): kernel of the export equals the closed form.
    H, Mm, Lr = 64, 32, 200
    dt = np.exp(np.linspace(np.log(1e-3), np.log(1e-1), H))[:, None]  # (H, 1)
    lam = -0.5 + 1j * math.pi * np.arange(Mm)  # (M,)
    A_bar = np.exp(dt * lam)  # (H, M) ZOH
    B_bar = (A_bar - 1) / lam  # (H, M) ZOH with B = 1
    rng = np.random.default_rng(12)
    C = rng.standard_normal((H, Mm)) + 1j * rng.standard_normal((H, Mm))
    ss = StateSpace.from_diagonal(A_bar, B_bar, C, None)
    u = np.zeros((1, Lr, H))
    u[0, 0] = 1.0
    K = ss.simulate(u)[0].T  # (H, L) impulse response
    ref = 2 * np.einsum("hm,hml->hl", C * B_bar, A_bar[..., None] ** np.arange(Lr)).real  # (H, L)
    assert rel_err(K, torch.from_numpy(ref)) < 1e-11  # float64 powers vs a 200-step recurrence
    assert ss.is_stable() and np.isfinite(ss.hinf_norm()).all()


def test_modal_and_triangular_paths_agree():
    # A from_diagonal bank is normal (Schur form diagonal): the modal sum is used; the back substitution must
    # give the same values on it, and a bank mixing normal and non-normal systems must match python-control.
    rng = np.random.default_rng(19)
    A_bar = rng.uniform(0.5, 0.99, (G, N)) * np.exp(1j * rng.uniform(0, math.pi, (G, N)))  # (H, M) complex
    ss = StateSpace.from_diagonal(A_bar, rng.standard_normal((G, N)), rng.standard_normal((G, N)), np.ones(G))
    T, Bt, Ct, normal = ss._schur_form()
    assert normal.all()
    z = np.exp(1j * np.linspace(0.0, math.pi, 31))[None].repeat(G, 0)  # (G, W)
    tri = StateSpace._triangular(T, Bt, Ct, z) + ss.D[..., None]  # (G, p, m, W)
    assert rel_err(torch.from_numpy(ss._transfer(z)), torch.from_numpy(tri)) < 1e-12  # float64, 2 algorithms
    A, B, C, D = random_bank(rng, 2, 2 * N, 1, 1)  # non-normal, same sizes as the diagonal bank
    mixed = StateSpace(np.concatenate([ss.A, A]), np.concatenate([ss.B, B]), np.concatenate([ss.C, C]),
                       np.concatenate([ss.D, D]))
    assert mixed._schur_form()[3].tolist() == [True] * G + [False] * 2
    pytest.importorskip("control")  # used through StateSpace.to_control()
    omega = np.linspace(0.0, math.pi, 17)
    H = mixed.frequency_response(omega)
    for g, sys_g in enumerate(mixed.to_control()):
        ref = sys_g.frequency_response(omega, squeeze=False).complex  # (p, m, W)
        assert rel_err(torch.from_numpy(H[g]), torch.from_numpy(ref)) < 1e-12  # float64


# ---------------------------------------------------------------------------------------------------------------
# real realisation of a complex bank
def test_to_real_preserves_everything():
    rng = np.random.default_rng(13)
    ss = StateSpace(*random_bank(rng, G, N, M_IN, M_IN, complex_=True), dt=0.2)
    re = ss.to_real()
    assert not re.is_complex and re.nstates == 2 * N and re.to_real() is re
    omega = np.linspace(0.0, math.pi / ss.dt, 23)
    H, H_re = ss.frequency_response(omega), re.frequency_response(omega)
    assert rel_err(torch.from_numpy(H), torch.from_numpy(H_re)) < 1e-12  # float64 solves, n = 4 vs 8
    assert rel_err(torch.from_numpy(ss.dcgain()), torch.from_numpy(re.dcgain())) < 1e-12
    u = rng.standard_normal((BATCH, L, G * M_IN))
    assert rel_err(ss.simulate(u), re.simulate(u)) < 1e-12  # float64 complex vs real arithmetic
    both = np.concatenate([ss.poles(), ss.poles().conj()], 1)  # (G, 2n)
    for g in range(G):
        assert match_sets(re.poles()[g], both[g]) < 1e-10
        assert match_sets(ss.zeros()[g], re.zeros()[g]) == 0.0  # zeros of a complex bank come from to_real


# ---------------------------------------------------------------------------------------------------------------
# zeros, stability, indexing, converters
def test_zeros_vs_control():
    pytest.importorskip("control")  # used through StateSpace.to_control()
    rng = np.random.default_rng(14)
    for m in (1, 2):
        ss = StateSpace(*random_bank(rng, G, N + 1, m, m))
        for g, sys_g in enumerate(ss.to_control()):
            ref = np.asarray(sys_g.zeros())
            assert match_sets(ss.zeros()[g], ref) < 1e-8  # well-separated random zeros; ~1e-14 seen
    with pytest.raises(NotImplementedError, match="square systems"):
        StateSpace(*random_bank(rng, G, N, 2, 1)).zeros()


# ss2tf leaves a ~1e-16 leading numerator coefficient when D = 0, which scipy flags as badly conditioned.
@pytest.mark.filterwarnings("ignore::scipy.signal.BadCoefficients")
def test_zeros_vs_scipy_ss2zpk():
    rng = np.random.default_rng(15)
    A, B, C, D = random_bank(rng, G, N, 1, 1)
    D[:] = 0.0  # relative degree 1: one infinite zero must be dropped
    ss = StateSpace(A, B, C, D)
    for g in range(G):
        ref, _, _ = scipy.signal.ss2zpk(A[g], B[g], C[g], D[g])
        assert len(ss.zeros()[g]) == N - 1
        assert match_sets(ss.zeros()[g], ref) < 1e-8  # polynomial roots (scipy) vs QZ; ~1e-14 seen


def test_stable_mask_and_is_stable():
    A = np.array([[[0.5]], [[1.5]], [[1.0]], [[-0.999]]])
    ss = StateSpace(A, np.ones((4, 1, 1)), np.ones((4, 1, 1)), np.zeros((4, 1, 1)))
    assert ss.stable_mask().tolist() == [True, False, False, True]
    assert not ss.is_stable() and ss[[0, 3]].is_stable()
    assert np.isinf(ss.hinf_norm()[[1, 2]]).all()


def test_getitem_len_and_repr():
    rng = np.random.default_rng(16)
    A, B, C, D = random_bank(rng, G, N, M_IN, P_OUT)
    ss = StateSpace(A, B, C, D, dt=0.25)
    assert len(ss) == G and ss.nsystems == G
    one = ss[-1]
    assert len(one) == 1 and np.array_equal(one.A[0], A[-1]) and one.dt == 0.25
    assert np.array_equal(ss[1:].C, C[1:]) and np.array_equal(ss[np.array([True, False, True])].D, D[[0, 2]])
    assert [len(s) for s in ss] == [1] * G  # iteration through __getitem__ stops at IndexError
    with pytest.raises(IndexError, match="out of range"):
        ss[G]
    assert np.array_equal(ss[-G].A[0], A[0])  # the most negative valid index (probe 19)
    with pytest.raises(IndexError, match=rf"system index {-G - 1} is out of range for a bank of G = {G} systems"):
        ss[-G - 1]
    with pytest.raises(ValueError, match="selects no system"):
        ss[3:]
    with pytest.raises(TypeError, match="index must be"):
        ss[1.5]
    with pytest.raises(TypeError, match="index must be"):  # 1-D but float (probe 19)
        ss[np.array([0.0, 1.0])]
    assert repr(ss) == "StateSpace(nsystems=3, nstates=4, ninputs=2, noutputs=5, dt=0.25, dtype=float64)"


def test_to_scipy_types_and_dt():
    rng = np.random.default_rng(17)
    ss = StateSpace(*random_bank(rng, G, N, M_IN, P_OUT), dt=0.3)
    systems = ss.to_scipy()
    assert len(systems) == G
    for g, s in enumerate(systems):
        assert isinstance(s, scipy.signal.StateSpace) and isinstance(s, scipy.signal.dlti) and s.dt == 0.3
        assert np.array_equal(s.A, ss.A[g]) and np.array_equal(s.D, ss.D[g])


def test_to_control_round_trip():
    control = pytest.importorskip("control")
    rng = np.random.default_rng(18)
    ss = StateSpace(*random_bank(rng, G, N, M_IN, P_OUT), dt=0.3)
    systems = ss.to_control()
    for s in systems:
        assert isinstance(s, control.StateSpace) and s.dt == 0.3
    back = StateSpace(*(np.stack([getattr(s, k) for s in systems]) for k in "ABCD"), dt=systems[0].dt)
    for k in "ABCD":
        assert np.array_equal(getattr(back, k), getattr(ss, k))
    s0 = systems[0]
    assert (back.nstates, back.ninputs, back.noutputs) == (s0.nstates, s0.ninputs, s0.noutputs)


def test_to_control_missing_gives_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "control", None)  # makes `import control` raise ImportError
    ss = StateSpace([[[0.5]]], [[[1.0]]], [[[1.0]]], [[[0.0]]])
    with pytest.raises(ImportError, match="pip install control"):
        ss.to_control()


def test_complex_converters_raise():
    ss = StateSpace([[[0.5j]]], [[[1.0]]], [[[1.0]]], [[[0.0]]])
    with pytest.raises(ValueError, match=r"to_scipy needs a real system.*call to_real\(\) first"):
        ss.to_scipy()
    with pytest.raises(ValueError, match=r"to_control needs a real system.*call to_real\(\) first"):
        ss.to_control()
    assert len(ss.to_real().to_scipy()) == 1


# ---------------------------------------------------------------------------------------------------------------
# construction: conversion and errors
def test_accepts_torch_copies_and_promotes():
    A = torch.full((2, 3, 3), 0.1, dtype=torch.float64)
    C = torch.ones(2, 1, 3, dtype=torch.complex64).conj()  # conj-bit view
    ss = StateSpace(A, torch.ones(2, 3, 1), C, torch.zeros(2, 1, 1))
    assert ss.dtype == np.complex128 and ss.is_complex
    A.fill_(7.0)  # the bank holds a copy
    assert np.allclose(ss.A, 0.1)
    A32 = torch.zeros(1, 2, 2, dtype=torch.float32)
    real = StateSpace(A32, np.ones((1, 2, 1), int), np.ones((1, 1, 2)), [[[0]]])
    assert real.dtype == np.float64 and isinstance(real.A, np.ndarray)
    with pytest.raises(ValueError, match="read-only"):
        real.A[0, 0, 0] = 1.0  # read-only: the cached Schur form stays valid


@pytest.mark.parametrize(
    "shapes, message",
    [
        (
            ((3, 4, 5), (3, 4, 1), (3, 1, 4), (3, 1, 1)),
            r"A must be \(G, n, n\) with square \(n, n\) blocks; got \(3, 4, 5\)",
        ),
        (
            ((4, 4), (3, 4, 1), (3, 1, 4), (3, 1, 1)),
            r"A must be \(G, n, n\) = \(\?, \?, \?\) \(3 dimensions\); got \(4, 4\)",
        ),
        (((3, 4, 4), (3, 5, 1), (3, 1, 4), (3, 1, 1)), r"B must be \(G, n, m\) = \(3, 4, 1\); got \(3, 5, 1\)"),
        (((3, 4, 4), (2, 4, 1), (3, 1, 4), (3, 1, 1)), r"B must be \(G, n, m\) = \(3, 4, 1\); got \(2, 4, 1\)"),
        (
            ((3, 4, 4), (3, 4), (3, 1, 4), (3, 1, 1)),
            r"B must be \(G, n, m\) = \(3, 4, \?\) \(3 dimensions\); got \(3, 4\)",
        ),
        (((3, 4, 4), (3, 4, 1), (3, 1, 5), (3, 1, 1)), r"C must be \(G, p, n\) = \(3, 1, 4\); got \(3, 1, 5\)"),
        (((3, 4, 4), (3, 4, 2), (3, 1, 4), (3, 1, 1)), r"D must be \(G, p, m\) = \(3, 1, 2\); got \(3, 1, 1\)"),
        (((3, 4, 4), (3, 4, 1), (3, 2, 4), (3, 1, 1)), r"D must be \(G, p, m\) = \(3, 2, 1\); got \(3, 1, 1\)"),
    ],
)
def test_shape_errors(shapes, message):
    with pytest.raises(ValueError, match=message):
        StateSpace(*(np.zeros(s) for s in shapes))


@pytest.mark.parametrize("dt", [0.0, -0.1, float("nan"), float("inf"), True, "1"])
def test_dt_errors(dt):
    with pytest.raises(ValueError, match=r"dt must be the sampling time in seconds, a finite number > 0; got "):
        StateSpace(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), dt=dt)


def test_dtype_and_from_ssm_from_diagonal_errors():
    z = np.zeros((1, 1, 1))
    with pytest.raises(ValueError, match="A must be a real or complex numeric array; got dtype bool"):
        StateSpace(np.zeros((1, 1, 1), bool), z, z, z)
    with pytest.raises(ValueError, match=r"B_bar must be \(G, n, m\) = \(1, 1, 1\); got \(1, 2, 1\)"):
        StateSpace.from_ssm(z, np.zeros((1, 2, 1)), z, z)
    c = np.full((3, 4), 0.5 + 0.1j)
    with pytest.raises(ValueError, match=r"A_bar must be \(H, M\) = \(\?, \?\) \(2 dimensions\); got \(3, 4, 1\)"):
        StateSpace.from_diagonal(c[..., None], c, c, np.zeros(3))
    with pytest.raises(ValueError, match=r"B_bar must be \(H, M\) = \(3, 4\); got \(3, 5\)"):
        StateSpace.from_diagonal(c, np.zeros((3, 5)), c, np.zeros(3))
    with pytest.raises(ValueError, match=r"C must be \(H, M\) = \(3, 4\); got \(4, 4\)"):
        StateSpace.from_diagonal(c, c, np.zeros((4, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"D must be \(H,\) = \(3,\) \(1 dimension\); got \(3, 1\)"):
        StateSpace.from_diagonal(c, c, c, np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"D must be real \(H,\) = \(3,\); got a complex array"):
        StateSpace.from_diagonal(c, c, c, np.zeros(3, complex))


@pytest.mark.parametrize("conjugate_pairs", [True, False])
def test_from_diagonal_mimo_equals_complex_loop(conjugate_pairs, device):
    # S5/LRU: one system, M modes, H inputs and outputs; the export simulates the complex MIMO loop.
    rng = np.random.default_rng(13)
    H, Mm = 3, 4
    A_bar = rng.uniform(0.5, 0.95, Mm) * np.exp(1j * rng.uniform(0, math.pi, Mm))  # (M,) complex
    B_bar = rng.standard_normal((Mm, H)) + 1j * rng.standard_normal((Mm, H))
    C = rng.standard_normal((H, Mm)) + 1j * rng.standard_normal((H, Mm))
    D = rng.standard_normal(H)
    ss = StateSpace.from_diagonal_mimo(A_bar, B_bar, torch.from_numpy(C), D, dt=0.5, conjugate_pairs=conjugate_pairs)
    assert not ss.is_complex and (ss.nsystems, ss.nstates, ss.ninputs, ss.noutputs) == (1, 2 * Mm, H, H)
    c = 2.0 if conjugate_pairs else 1.0
    u = rng.standard_normal((BATCH, L, H))
    x = np.zeros((BATCH, Mm), np.complex128)  # (B, M)
    ref = []
    for k in range(L):
        x = A_bar * x + u[:, k] @ B_bar.T  # (B, M)
        ref.append((c * x @ C.T).real + D * u[:, k])  # (B, H)
    y = ss.simulate(torch.from_numpy(u).to(device))
    assert rel_err(y, torch.from_numpy(np.stack(ref, 1))) < 1e-12  # float64, L = 13
    assert match_sets(ss.poles()[0], np.concatenate([A_bar, A_bar.conj()])) < 1e-12  # exact 2x2 blocks
    # hand value: one real mode a = 0.5, B̄ = [1, 2], C = [[3], [4]], D = 0 -> D' = c·C B̄, C' = c·C·a
    one = StateSpace.from_diagonal_mimo(np.array([0.5]), np.array([[1.0, 2.0]]), np.array([[3.0], [4.0]]), None,
                                        conjugate_pairs=conjugate_pairs)
    assert np.allclose(one.D[0], c * np.array([[3.0, 6.0], [4.0, 8.0]]))
    assert np.allclose(one.C[0], c * np.array([[1.5, 0.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match=r"B_bar must be \(M, H\)"):
        StateSpace.from_diagonal_mimo(A_bar, B_bar[:3], C, D)
    with pytest.raises(ValueError, match=r"C must be \(H, M\)"):
        StateSpace.from_diagonal_mimo(A_bar, B_bar, C.T, D)
    with pytest.raises(ValueError, match=r"D must be \(H,\)"):
        StateSpace.from_diagonal_mimo(A_bar, B_bar, C, np.zeros(4))


def test_probe19_input_checks_and_the_default_dt():
    # probe 19 (mutation testing): checks whose removal left every test green
    z = np.zeros((1, 1, 1))
    with pytest.raises(ValueError, match="A must be a real or complex numeric array; got dtype torch.bool"):
        StateSpace(torch.zeros(1, 1, 1, dtype=torch.bool), z, z, z)  # a torch bool, not only a numpy one
    with pytest.raises(ValueError, match=r"A must be \(G, n, n\) = \(\?, \?, \?\); got \(1, 0, 0\)"):
        StateSpace(np.zeros((1, 0, 0)), np.zeros((1, 0, 1)), np.zeros((1, 1, 0)), z)  # "?" is any size >= 1, not 0
    # no inputs or no outputs: python-control accepts them, but the frequency response, H∞ and zeros of such a
    # system failed (ZeroDivisionError) or answered the poles; refused by name since 2026-12-02
    with pytest.raises(ValueError, match=r"B must be \(G, n, m\) = \(1, 2, \?\); got \(1, 2, 0\)"):
        StateSpace(np.diag([0.5, 0.2])[None], np.zeros((1, 2, 0)), np.zeros((1, 0, 2)), np.zeros((1, 0, 0)))
    with pytest.raises(ValueError, match=r"C must be \(G, p, n\) = \(1, \?, 2\); got \(1, 0, 2\)"):
        StateSpace(np.diag([0.5, 0.2])[None], np.ones((1, 2, 1)), np.zeros((1, 0, 2)), np.zeros((1, 0, 1)))
    # a bfloat16 tensor (numpy has no such dtype) is read through float64: 0.5 and 0.25 are exact in bf16
    half = StateSpace(torch.full((1, 1, 1), 0.5, dtype=torch.bfloat16), torch.ones(1, 1, 1, dtype=torch.bfloat16),
                      torch.full((1, 1, 1), 0.25, dtype=torch.bfloat16), torch.zeros(1, 1, 1, dtype=torch.bfloat16))
    assert half.A.dtype == np.float64 and half.A[0, 0, 0] == 0.5 and half.C[0, 0, 0] == 0.25
    # the default dt is 1 s: omega = π rad/s is z = e^{jπ} = -1, where 0.25 / (z - 0.5) = -1/6
    assert half.dt == 1.0
    assert half.frequency_response(np.pi)[0, 0, 0, 0] == pytest.approx(-1 / 6, rel=1e-14)
    # ... and so is that of the two constructors from the SSM-paper convention
    assert StateSpace.from_ssm(z, z, z, z).dt == 1.0
    assert StateSpace.from_diagonal(np.full((1, 1), 0.5), np.ones((1, 1)), np.ones((1, 1)), None).dt == 1.0
    # from_diagonal_mimo's defaults: dt = 1 and the 2·Re output (S5): one mode Ā = 0.5, B̄ = C = 1, so the DC gain is
    # 2 Re(C B̄ / (1 - Ā)) = 4 (it would be 2 with the Re output)
    mimo = StateSpace.from_diagonal_mimo(np.array([0.5 + 0j]), np.ones((1, 1)), np.ones((1, 1)), None)
    assert mimo.dt == 1.0 and mimo.dcgain()[0, 0, 0] == pytest.approx(4.0, rel=1e-15)
    with pytest.raises(ValueError, match=r"A_bar must be \(M,\) = \(\?,\) \(1 dimension\); got \(1, 1\)"):
        StateSpace.from_diagonal_mimo(np.full((1, 1), 0.5), np.ones((1, 1)), np.ones((1, 1)), None)
    with pytest.raises(ValueError, match=r"D must be real \(H,\) = \(1,\); got a complex array"):
        StateSpace.from_diagonal_mimo(np.array([0.5]), np.ones((1, 1)), np.ones((1, 1)), np.ones(1, complex))


def test_probe19_simulate_input_dtypes_and_an_all_unstable_bank():
    # integer inputs are read as float64; bool inputs are refused (neither was tested before probe 19)
    rng = np.random.default_rng(21)
    A, B, C, D = random_bank(rng, 1, 2, 1, 1)
    ss = StateSpace(A, B, C, D)
    u = torch.tensor([[[1], [-2], [3], [0], [5]]])  # (1, 5, 1) int64
    ref = np.zeros(5)
    x = np.zeros(2)
    for k in range(5):  # float64 loop of x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k]
        ref[k] = (C[0] @ x + D[0] @ [float(u[0, k, 0])])[0]
        x = A[0] @ x + B[0, :, 0] * float(u[0, k, 0])
    np.testing.assert_allclose(ss.simulate(u)[0, :, 0].numpy(), ref, rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="u must be a real floating .* got dtype torch.bool"):
        ss.simulate(torch.ones(1, 5, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"u must be \(B, L, G\*m\).*got \(0, 5, 1\)"):  # B = 0 as L = 0
        ss.simulate(torch.zeros(0, 5, 1, dtype=torch.float64))
    # one step (L = 1) from a numpy x0: y[0] = C x0 + D u[0], x[1] = A x0 + B u[0]
    x0 = np.array([[[0.3, -0.7]]])  # (B, G, n) = (1, 1, 2)
    y1, x1 = ss.simulate(np.array([[[2.0]]]), x0=x0, return_state=True)
    assert y1.shape == (1, 1, 1)
    assert float(y1[0, 0, 0]) == pytest.approx((C[0] @ x0[0, 0] + 2.0 * D[0, 0])[0], rel=1e-14)
    np.testing.assert_allclose(x1[0, 0].numpy(), A[0] @ x0[0, 0] + 2.0 * B[0, :, 0], rtol=1e-14)
    # a bank of unstable systems only: inf from both methods (the grid method must not select an empty sub-bank)
    unstable = StateSpace([[[1.5]], [[-2.0]]], np.ones((2, 1, 1)), np.ones((2, 1, 1)), np.zeros((2, 1, 1)))
    assert np.isinf(unstable.hinf_norm("grid")).all() and np.isinf(unstable.hinf_norm()).all()


@pytest.mark.parametrize("name", ["s4", "s4d", "dss", "dlr", "ema"])
def test_zeros_of_lti_layers_make_the_rosenbrock_matrix_singular(name):
    # the layers' poles cluster near z = 1, where zeros through the transfer polynomial (scipy.signal.ss2zpk) come
    # out with σ_min/σ_max of the Rosenbrock matrix [[zI - A, -B], [C, D]] up to 6e-4 (EMA; 5e-6 for S4, 4e-5 for
    # S4D: seed 0, d_state 8). The QZ zeros are backward stable: ~1e-16 at every zero, n of them (D ≠ 0).
    import torch

    from ssmkit.layers import build

    torch.manual_seed(0)
    ss = build(name, d_model=3, d_state=8, dtype=torch.float64).state_space()
    n = ss.nstates
    for g in range(ss.nsystems):
        A, B, C, D = ss.A[g], ss.B[g], ss.C[g], ss.D[g]
        zeros = ss.zeros()[g]
        assert len(zeros) == n
        for z in zeros:
            s = np.linalg.svd(np.block([[z * np.eye(n) - A, -B], [C, D]]), compute_uv=False)
            assert s[-1] <= 1e-13 * s[0]
