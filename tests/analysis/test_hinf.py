"""The certified H∞ norm: Cayley map, Hamiltonian test, closed forms, the grid search and python-control."""

import math

import numpy as np
import pytest

from ssmkit.analysis import StateSpace
from ssmkit.analysis.hinf import cayley, hamiltonian, hinf_bracket, imaginary_frequencies


def _random_stable(rng, n, m, p, radius=0.9):
    A = rng.standard_normal((n, n))
    A *= radius / np.abs(np.linalg.eigvals(A)).max()
    return A, rng.standard_normal((n, m)), rng.standard_normal((p, n)), rng.standard_normal((p, m))


def _response(A, B, C, D, z):
    return C @ np.linalg.solve(z * np.eye(A.shape[0]) - A, B) + D


def test_cayley_realisation_has_the_same_response():
    rng = np.random.default_rng(0)
    A, B, C, D = _random_stable(rng, 5, 2, 3)
    Ac, Bc, Cc, Dc = cayley(A, B, C, D)
    assert np.abs(np.linalg.eigvals(Ac).real).min() > 0 and np.linalg.eigvals(Ac).real.max() < 0  # Hurwitz
    for omega in (0.0, 0.3, 2.0, 40.0):
        z = (1 + 1j * omega) / (1 - 1j * omega)
        Gc = _response(Ac, Bc, Cc, Dc, 1j * omega)
        np.testing.assert_allclose(Gc, _response(A, B, C, D, z), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Dc, _response(A, B, C, D, -1.0), rtol=1e-12, atol=1e-12)  # ω = ∞ ↔ z = -1


def test_hamiltonian_has_jw_at_every_singular_value():
    # γ = σ_i(G_c(jω0)) > σ_max(D_c) puts jω0 among H(γ)'s eigenvalues (ZDG Lemma 4.7), for each i
    rng = np.random.default_rng(1)
    A, B, C, D = _random_stable(rng, 4, 2, 2)
    Ac, Bc, Cc, Dc = cayley(A, B, C, D)
    omega0 = 0.7
    for s in np.linalg.svd(_response(Ac, Bc, Cc, Dc, 1j * omega0), compute_uv=False):
        if s <= np.linalg.norm(Dc, 2):
            continue
        lam = np.linalg.eigvals(hamiltonian(Ac, Bc, Cc, Dc, s))
        assert np.abs(lam - 1j * omega0).min() < 1e-8
        assert np.any(np.abs(imaginary_frequencies(hamiltonian(Ac, Bc, Cc, Dc, s)) - omega0) < 1e-8)


@pytest.mark.parametrize("a", [0.5, -0.8, 0.999])
def test_first_order_closed_form(a):
    # G(z) = b / (z - a): the peak b / (1 - |a|) at θ = 0 (a > 0) or θ = π (a < 0)
    b = 0.7
    ss = StateSpace([[[a]]], [[[b]]], [[[1.0]]], [[[0.0]]])
    lo, hi = ss.hinf_bounds()[0]
    exact = b / (1 - abs(a))
    assert lo <= exact * (1 + 1e-12) and exact <= hi * (1 + 1e-12)
    assert ss.hinf_norm()[0] == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("r", [0.9, 0.999, 1 - 1e-6])
def test_second_order_resonance_closed_form(r):
    # G(z) = 1 / ((z - λ)(z - λ̄)), λ = r e^{jφ}: |G| peaks at 1 / (sin φ (1 - r²)) (at cos θ = (1 + r²) cos φ / 2r)
    phi = 1.1
    lam = r * np.exp(1j * phi)
    A = np.array([[2 * lam.real, -abs(lam) ** 2], [1.0, 0.0]])
    ss = StateSpace(A[None], [[[1.0], [0.0]]], [[[0.0, 1.0]]], [[[0.0]]])
    exact = 1 / (math.sin(phi) * (1 - r**2))
    lo, hi = ss.hinf_bounds()[0]
    assert lo <= exact * (1 + 1e-9) and exact <= hi * (1 + 1e-9)  # float64 resolution of a peak of width 1 - r


def test_certified_bound_covers_a_dense_grid_and_matches_the_grid_search():
    rng = np.random.default_rng(2)
    mats = [_random_stable(rng, 6, 3, 2, radius=0.97) for _ in range(4)]
    ss = StateSpace(*(np.stack([m[i] for m in mats]) for i in range(4)))
    bounds = ss.hinf_bounds()
    theta = np.linspace(0, np.pi, 20001)
    dense = ss._sigma_max(np.broadcast_to(theta, (4, theta.size))).max(1)  # (4,)
    assert np.all(dense <= bounds[:, 1])  # certified upper bound
    assert np.all(bounds[:, 1] <= bounds[:, 0] * (1 + 2e-10 + 1e-15))
    np.testing.assert_allclose(ss.hinf_norm("hamiltonian"), ss.hinf_norm("grid"), rtol=1e-8)


def test_against_python_control():
    control = pytest.importorskip("control")
    rng = np.random.default_rng(3)
    A, B, C, D = _random_stable(rng, 5, 2, 2, radius=0.95)
    ss = StateSpace(A[None], B[None], C[None], D[None], dt=0.1)
    theirs = control.norm(control.ss(A, B, C, D, 0.1), p="inf", tol=1e-9)
    assert ss.hinf_norm()[0] == pytest.approx(theirs, rel=1e-7)  # their bisection stops at relative 1e-9


def test_zero_system_unstable_and_complex_banks():
    zero = StateSpace(np.full((1, 2, 2), 0.1), np.zeros((1, 2, 1)), np.zeros((1, 1, 2)), np.zeros((1, 1, 1)))
    assert zero.hinf_norm()[0] == 0.0
    assert zero.hinf_bounds()[0].tolist() == [0.0, 0.0]  # G ≡ 0: both ends exactly 0 (probe 19)
    half = StateSpace(np.full((1, 2, 2), 0.1), np.zeros((1, 2, 1)), np.ones((1, 1, 2)), np.zeros((1, 1, 1)))
    assert half.hinf_bounds()[0].tolist() == [0.0, 0.0]  # B = 0 alone (C != 0) also makes G ≡ 0
    bank = StateSpace([[[0.5]], [[1.5]]], [[[1.0]], [[1.0]]], [[[1.0]], [[1.0]]], [[[0.0]], [[0.0]]])
    h = bank.hinf_norm()
    assert h[0] == pytest.approx(2.0, rel=1e-10) and np.isinf(h[1])
    cplx = StateSpace([[[0.6 + 0.5j]]], [[[1.0]]], [[[1.0 - 0.3j]]], [[[0.2]]])
    assert cplx.hinf_norm()[0] == pytest.approx(cplx.to_real().hinf_norm("grid")[0], rel=1e-9)


def test_errors():
    ss = StateSpace([[[0.5]]], [[[1.0]]], [[[1.0]]], [[[0.0]]])
    with pytest.raises(ValueError, match="method must be one of"):
        ss.hinf_norm("bisect")
    with pytest.raises(ValueError, match="tol must be > 0"):
        hinf_bracket(np.array([[0.5]]), np.ones((1, 1)), np.ones((1, 1)), np.zeros((1, 1)), np.abs, tol=0.0)
    with pytest.raises(ValueError, match="Schur stable"):
        hinf_bracket(np.array([[1.5]]), np.ones((1, 1)), np.ones((1, 1)), np.zeros((1, 1)), np.abs)


def _pair(re, im):
    """A real 2x2 block with eigenvalues re ± j im."""
    return np.array([[re, -im], [im, re]])


@pytest.mark.parametrize(
    "re, im, on_axis",
    [
        (5e-7, 100.0, True),  # |Re λ| = 5e-7 <= 1e-8 · |λ| = 1e-6: the tolerance is relative for |λ| > 1
        (2e-6, 100.0, False),
        (5e-9, 0.01, True),  # and absolute (1e-8) for |λ| < 1
        (1.5e-8, 0.01, False),
    ],
)
def test_imaginary_frequencies_axis_tolerance(re, im, on_axis):
    # probe 19: the rule |Re λ| <= tol · max(1, |λ|) on hand-placed eigenvalues re ± j im
    got = imaginary_frequencies(_pair(re, im))
    if on_axis:
        assert got.shape == (1,) and got[0] == pytest.approx(im, rel=1e-12)
    else:
        assert got.size == 0


def test_imaginary_frequencies_keeps_omega_zero():
    # eigenvalues ±1e-12 (on the axis at ω = 0) and ±2j: ω = 0 is a crossing (θ = 0 after the Cayley map)
    H = np.zeros((4, 4))
    H[:2, :2] = np.diag([1e-12, -1e-12])
    H[2:, 2:] = _pair(0.0, 2.0)
    got = imaginary_frequencies(H)
    assert got[0] == 0.0 and got[-1] == pytest.approx(2.0, rel=1e-12)


def test_hinf_bracket_default_tolerance_and_the_stability_boundary():
    # G(z) = 0.7 / (z - 0.5): H∞ = 1.4 at θ = 0; the default tol 1e-10 gives γ_hi <= (1 + 2e-10) γ_lo
    A, B, C, D = np.array([[0.5]]), np.array([[0.7]]), np.array([[1.0]]), np.zeros((1, 1))
    gain = lambda theta: np.abs(0.7 / (np.exp(1j * theta) - 0.5))  # noqa: E731
    lo, hi = hinf_bracket(A, B, C, D, gain)
    assert lo == pytest.approx(1.4, rel=1e-14) and lo <= hi <= lo * (1 + 2e-10 + 1e-15)
    with pytest.raises(ValueError, match="Schur stable"):  # |λ| = 1 is not strictly inside
        hinf_bracket(np.array([[1.0]]), B, C, D, gain)


def test_widened_brackets_are_the_first_certified_rung_of_the_ladder():
    # probe 19: near-marginal random systems (radius 0.999) often get crossings at (1 + 2 tol) γ_lo from rounding
    # alone (about one in five here); hinf_bracket then tries γ_k = (1 + 2 tol 4^k) γ_lo, k = 1, 2, ..., and returns
    # the first γ_k whose Hamiltonian has no imaginary eigenvalue. Checked rung by rung on every system.
    rng = np.random.default_rng(0)
    mats = [_random_stable(rng, 6, 2, 2, radius=0.999) for _ in range(40)]
    ss = StateSpace(*(np.stack([m[i] for m in mats]) for i in range(4)))
    tol = 1e-10
    bounds = ss.hinf_bounds(tol)
    theta = np.linspace(0, np.pi, 4001)
    dense = ss._sigma_max(np.broadcast_to(theta, (40, theta.size))).max(1)  # (40,)
    ks = []
    for g, (A, B, C, D) in enumerate(mats):
        lo, hi = bounds[g]
        assert dense[g] <= hi
        k = round(math.log((hi / lo - 1) / (2 * tol), 4))
        assert hi == pytest.approx((1 + 2 * tol * 4.0**k) * lo, rel=1e-15)  # on the ladder
        Ac, Bc, Cc, Dc = cayley(A, B, C, D)
        assert imaginary_frequencies(hamiltonian(Ac, Bc, Cc, Dc, hi)).size == 0  # certified
        if k >= 1:  # the rung below was not certified
            below = (1 + 2 * tol * 4.0 ** (k - 1)) * lo
            assert imaginary_frequencies(hamiltonian(Ac, Bc, Cc, Dc, below)).size > 0
        ks.append(k)
    assert max(ks) >= 2  # the widening loop ran past its first rung at least once
