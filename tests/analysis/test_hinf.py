"""The certified H∞ norm: Cayley map, Hamiltonian test, closed forms, the grid search and python-control."""

import math

import numpy as np
import pytest

from ssmkit.analysis import StateSpace
from ssmkit.analysis.hinf import axis_tolerance, balance, cayley, hamiltonian, hinf_bracket, imaginary_frequencies


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
    with pytest.raises(ValueError, match=r"tol must be a finite number > 0 \(the bracket's relative width\); got 0.0"):
        hinf_bracket(np.array([[0.5]]), np.ones((1, 1)), np.ones((1, 1)), np.zeros((1, 1)), np.abs, tol=0.0)
    unstable = StateSpace([[[1.5]]], [[[1.0]]], [[[1.0]]], [[[0.0]]])
    for bad in ("x", True, np.nan, np.inf, -1e-3):  # a string raised TypeError; True was a width of 1
        for system in (ss, unstable):  # checked even when no system is stable enough to read it
            with pytest.raises(ValueError, match="tol must be a finite number > 0"):
                system.hinf_bounds(bad)
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
    # a norm below 1 (0.1 / (z - 0.5): 0.2 at θ = 0), certified with no eigenvalue near the axis at γ_hi
    small = lambda theta: np.abs(0.1 / (np.exp(1j * theta) - 0.5))  # noqa: E731
    lo, hi = hinf_bracket(A, 0.1 * B / 0.7, C, D, small)
    assert lo == pytest.approx(0.2, rel=1e-14) and lo <= hi <= lo * (1 + 2e-10 + 1e-15)


def _resonance(d, phi):
    """G(z) = 1 / (z² - a1 z - a2) with poles (1 - d) e^{±jφ}, and its exact H∞ norm as represented in float64.

    |(e^{jθ} - λ)(e^{jθ} - λ̄)|² = 4r²c² - 4r(1 + r²) cos φ c + (1 + r²)² - 4r² sin² φ in c = cos θ, smallest
    (when |c*| ≤ 1) at sin² φ (1 - r²)², so ||G||_∞ = 1 / (sin φ (1 - r²)), with r² = -a2 and 4r² sin² φ = -4 a2 - a1²
    taken exactly from the rounded entries (Fraction), so the reference is the norm of the matrix actually tested.
    """
    from fractions import Fraction

    r = 1.0 - d
    a1, a2 = 2.0 * r * math.cos(phi), -(r * r)
    A, B, C, D = np.array([[a1, a2], [1.0, 0.0]]), np.array([[1.0], [0.0]]), np.array([[0.0, 1.0]]), np.zeros((1, 1))
    r2 = -Fraction(a2)
    sin_phi = math.sqrt(float((-4 * Fraction(a2) - Fraction(a1) ** 2) / (4 * r2)))
    return (A, B, C, D), 1.0 / (sin_phi * float(1 - r2))


def _gain(A, B, C, D):
    ss = StateSpace(A[None], B[None], C[None], D[None])
    return lambda theta: ss._sigma_max(theta[None])[0]  # noqa: E731


def _certifies(A, B, C, D, lo, gamma, tol):
    # hinf_bracket's certificate, recomputed: no eigenvalue of the balanced H(γ) within axis_tolerance(A) of the axis,
    # and the gain at the frequencies of (and between) those within 1e-6 at most γ_lo (1 + tol)
    lam = np.linalg.eigvals(balance(hamiltonian(*cayley(A, B, C, D), gamma)))
    rel = np.abs(lam.real) / np.maximum(1.0, np.abs(lam))
    near = np.sort(lam.imag[(rel <= 1e-6) & (lam.imag >= 0)])
    theta = 2.0 * np.arctan(np.concatenate([near, 0.5 * (near[:-1] + near[1:])]))
    return not np.any(rel <= axis_tolerance(A)) and (near.size == 0 or _gain(A, B, C, D)(theta).max() <= lo * (1 + tol))


def test_balance_keeps_the_eigenvalues_and_equalises_the_off_diagonal_blocks():
    rng = np.random.default_rng(3)
    A, B, C, D = _random_stable(rng, 5, 2, 3)
    B *= 1e-4  # ‖B R⁻¹ Bᵀ‖ ≪ ‖CᵀC‖
    H = hamiltonian(*cayley(A, B, C, D), 2.0)
    Hb = balance(H)
    top, bottom = np.linalg.norm(Hb[:5, 5:]), np.linalg.norm(Hb[5:, :5])
    assert top == pytest.approx(bottom, rel=1e-12)
    assert top == pytest.approx(math.sqrt(np.linalg.norm(H[:5, 5:]) * np.linalg.norm(H[5:, :5])), rel=1e-12)
    np.testing.assert_array_equal(Hb[:5, :5], H[:5, :5])
    np.testing.assert_array_equal(Hb[5:, 5:], H[5:, 5:])
    a2 = Hb[:5, 5:][0, 0] / H[:5, 5:][0, 0]  # the similarity diag(a I, I / a): same spectrum
    S = np.diag(np.r_[np.full(5, math.sqrt(a2)), np.full(5, 1 / math.sqrt(a2))])
    np.testing.assert_allclose(Hb, S @ H @ np.linalg.inv(S), rtol=1e-12, atol=1e-15)
    small = hamiltonian(*cayley(A, B, 1e-3 * C, D), 2.0)  # both blocks below 1 in norm: balanced all the same
    sb = balance(small)
    assert np.linalg.norm(small[5:, :5]) < 1 and np.linalg.norm(small[:5, 5:]) < 1
    assert np.linalg.norm(sb[:5, 5:]) == pytest.approx(np.linalg.norm(sb[5:, :5]), rel=1e-12)
    for block in (np.s_[:5, 5:], np.s_[5:, :5]):  # a zero block: nothing to balance (and nothing divided by 0)
        Z = H.copy()
        Z[block] = 0.0
        np.testing.assert_array_equal(balance(Z), Z)


def test_axis_tolerance_is_a_sixteenth_of_the_nearest_pole_distance_capped_at_1e_10():
    # Cayley images s = (z - 1)/(z + 1): z = 0.5 -> -1/3, z = -0.3 -> -13/7 (|s| > 1: relative distance 1)
    assert axis_tolerance(np.diag([0.5, -0.3])) == 1e-10
    # z = 1 - 1e-9 -> s = -1e-9 / (2 - 1e-9)
    z = 1.0 - 1e-9
    assert axis_tolerance(np.diag([0.5, z])) == pytest.approx((1 - z) / (1 + z) / 16, rel=1e-6)
    # a complex pair r e^{±jφ}: Re s = (r² - 1) / |z + 1|², relative to max(1, |s|)
    r, phi = 1 - 1e-11, 1.1
    A = np.array([[2 * r * math.cos(phi), -r * r], [1.0, 0.0]])
    s = (r * np.exp(1j * phi) - 1) / (r * np.exp(1j * phi) + 1)
    assert axis_tolerance(A) == pytest.approx(abs(s.real) / max(1.0, abs(s)) / 16, rel=1e-6)


@pytest.mark.parametrize("d", [1e-5, 5e-6, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10])
@pytest.mark.parametrize("phi", [0.01, 0.3, 1.1, 2.5])
def test_near_marginal_resonances_are_bracketed_on_the_ladder(d, phi):
    # poles (1 - d) e^{±jφ}: before balancing and the pole-scaled axis tolerance, d = 1e-9 raised RuntimeError
    # (φ = 0.01, 1.1) and d = 1e-8 gave γ_hi = 4.4 γ_lo (φ = 2.5). Both ends carry the gain's rounding, ~eps/d
    # relative (the peak's condition number); the bracket is on the ladder (1 + 2 tol 4^k) γ_lo, certified, the rung
    # below not, and at most 4e-3 wide. Above the peak γ* the crossing pair sits at δ √(2 (γ/γ* - 1)) from the axis
    # (δ: the pole's), so it clears the 1e-10 tolerance at γ_hi = (1 + 2 tol) γ_lo only for d ≳ 1e-5.
    (A, B, C, D), exact = _resonance(d, phi)
    tol = 1e-10
    lo, hi = hinf_bracket(A, B, C, D, _gain(A, B, C, D), tol)
    slack = 16 * np.finfo(float).eps / d
    assert lo <= exact * (1 + slack) and hi >= exact * (1 - slack)
    assert hi <= lo * (1 + 4e-3)
    k = round(math.log((hi / lo - 1) / (2 * tol), 4))
    assert hi == pytest.approx((1 + 2 * tol * 4.0**k) * lo, rel=1e-15)
    assert _certifies(A, B, C, D, lo, hi, tol)
    if k >= 1:
        assert not _certifies(A, B, C, D, lo, (1 + 2 * tol * 4.0 ** (k - 1)) * lo, tol)
    if d >= 1e-5:
        assert k == 0  # far enough from the circle: the bracket is tol wide


def test_random_near_marginal_systems_need_no_widening():
    # radius 0.999: about one in five went up the ladder (8e-10) before balancing; none does now, and a dense grid
    # never exceeds γ_hi
    rng = np.random.default_rng(0)
    mats = [_random_stable(rng, 6, 2, 2, radius=0.999) for _ in range(40)]
    ss = StateSpace(*(np.stack([m[i] for m in mats]) for i in range(4)))
    bounds = ss.hinf_bounds(1e-10)
    theta = np.linspace(0, np.pi, 4001)
    dense = ss._sigma_max(np.broadcast_to(theta, (40, theta.size))).max(1)  # (40,)
    assert np.all(dense <= bounds[:, 1])
    np.testing.assert_allclose(bounds[:, 1], (1 + 2e-10) * bounds[:, 0], rtol=1e-15)


def test_the_gain_check_alone_still_certifies(monkeypatch):
    # with the axis tolerance at 0 no eigenvalue counts as a crossing: the gain at the frequencies of those within
    # 1e-6 of the axis (the check band) must then find every peak; without that band too the loop stops at the first
    # sampled lower bound, below the norm
    import ssmkit.analysis.hinf as hinf_module

    rng = np.random.default_rng(5)
    mats = [_random_stable(rng, 6, 2, 2, radius=0.99) for _ in range(20)]
    ss = StateSpace(*(np.stack([m[i] for m in mats]) for i in range(4)))
    theta = np.linspace(0, np.pi, 20001)
    dense = ss._sigma_max(np.broadcast_to(theta, (20, theta.size))).max(1)  # (20,)
    monkeypatch.setattr(hinf_module, "_CERT_TOL", 0.0)
    assert np.all(dense <= ss.hinf_bounds()[:, 1])
    monkeypatch.setattr(hinf_module, "_CHECK_BAND", 0.0)
    assert np.any(dense > ss.hinf_bounds()[:, 1] * (1 + 1e-6))


@pytest.mark.parametrize("name", ["s4", "dss", "s4d", "lru"])
def test_lti_layers_at_d_state_8_get_tol_wide_brackets(name):
    # before balancing, one of these 20 S4 channels had γ_hi = 4.4 γ_lo, 3 DSS and 4 S4D channels 4 tol; every
    # channel of 5 seeds is now tol wide and above a dense grid
    import torch

    from ssmkit.layers import build

    for seed in range(5):
        torch.manual_seed(seed)
        ss = build(name, d_model=4, d_state=8).state_space()
        bounds = ss.hinf_bounds(1e-10)
        theta = np.linspace(0, np.pi, 20001)
        dense = ss._sigma_max(np.broadcast_to(theta, (ss.nsystems, theta.size))).max(1)
        assert np.all(dense <= bounds[:, 1])
        np.testing.assert_allclose(bounds[:, 1], (1 + 2e-10) * bounds[:, 0], rtol=1e-15)


def test_hinf_bracket_from_a_gain_that_vanishes_at_every_starting_sample():
    """A G ≢ 0 whose gain is exactly 0 at θ = 0, π, the pole angles and the coarse grid: the iteration started from
    the smallest float, where C/γ overflowed (non-finite Hamiltonian). Its other samples (at most n zeros of each
    entry on the circle) give the true starting value; the bracket is the unmodified system's."""
    rng = np.random.default_rng(7)
    A, B, C, D = _random_stable(rng, 3, 1, 1, radius=0.8)
    true = _gain(A, B, C, D)
    start = np.concatenate([[0.0, np.pi], np.abs(np.angle(np.linalg.eigvals(A))), np.linspace(0.0, np.pi, 9)])

    def vanishing(theta):
        return np.where(np.isin(theta, start), 0.0, true(theta))

    lo, hi = hinf_bracket(A, B, C, D, vanishing)
    want = hinf_bracket(A, B, C, D, true)
    assert lo > 0 and math.isclose(lo, want[0], rel_tol=1e-9) and lo <= hi <= lo * (1 + 1e-9)
