"""Mutation probe (2026-12-07) of ``analysis/norms.py``, ``analysis/hinf.py`` and ``analysis/statespace.py``: the
mutants that the tests referencing these modules (test_norms, test_hinf, test_statespace, test_control_export,
test_continuous_export, test_prewarp, test_sampling_time, test_discretisation_conventions and the analysis probes)
let survive. Each test names the mutant it kills and checks the real code against an independent reference (a
closed form, a float64 modal sum, scipy.signal, python-control).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from ssmkit.analysis import StateSpace
from ssmkit.analysis.norms import hinf_norm, sigma_max

# ------------------------------------------------------------------------------------------------------------------
# norms.py: the grid search


def _rotation(r: float, phi: float) -> np.ndarray:
    """(2, 2) real block of the pole pair r e^{±jφ}."""
    return r * np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])


@pytest.mark.parametrize("phi2, c2", [(2.6e-3, 3e-4), (6e-4, 1e-3)])
def test_grid_brackets_a_narrow_resonance_beside_a_wider_one_by_its_pole_samples(phi2, c2):
    # mutants: only the pole angle itself sampled (offsets {0} instead of {0, ±½, ±1, ±2} widths), or the sample
    # width 1 - |λ| floored at 1e-3 instead of 1e-12. A resonance 1e-5 wide at θ = 1e-4 beside a wider one (1 - |λ| =
    # 3e-4) at φ₂, both below the first uniform node (π/511): the narrow one's bracket then reached to the wide one's
    # samples, and golden section, whose first points lay 1e-4 to 1e-3 away, converged on the wide resonance's flank
    # (7e-4 low for φ₂ = 2.6e-3 without offsets; 1.4e-2 low for φ₂ = 6e-4 with the floor). Reference: the certified
    # Hamiltonian bracket and a float64 modal sum on a 1e-10 grid over the narrow peak.
    A = scipy.linalg.block_diag(_rotation(1 - 1e-5, 1e-4), _rotation(1 - 3e-4, phi2))  # (4, 4)
    B = np.array([[1.0], [0.0], [1.0], [0.0]])  # (4, 1)
    C = np.array([[1e-5, 0.0, c2, 0.0]])  # (1, 4)
    ss = StateSpace(A[None], B[None], C[None], np.zeros((1, 1, 1)))
    lo, hi = ss.hinf_bounds()[0]
    # modal sum: H(z) = Σ_i (C v_i)(w_i B) / (z - λ_i) with A = V diag(λ) V⁻¹
    lam, V = np.linalg.eig(A)
    res = (C @ V)[0] * np.linalg.solve(V, B)[:, 0]  # (4,)
    theta = np.linspace(9.5e-5, 1.05e-4, 100001)  # (W,) 1e-10 steps over the narrow peak
    ref = np.abs((res[:, None] / (np.exp(1j * theta)[None] - lam[:, None])).sum(0)).max()
    got = ss.hinf_norm("grid")[0]
    assert got >= ref * (1 - 1e-9)
    assert lo * (1 - 1e-9) <= got <= hi * (1 + 1e-12)


def test_grid_returns_the_largest_value_seen_even_when_no_bracket_refines_it():
    # mutant: the result is the last golden-section values only, dropping the grid's (and earlier steps') maxima.
    # gain 1 + 0.1 sin θ + 2 exp(-((θ - θ_s)/1e-7)²) with the spike on uniform node 200: golden section in the spike's
    # bracket [θ_199, θ_201] never comes within 1e-7 of it, so only the grid saw it. Closed form: 3 + 0.1 sin θ_s.
    theta_s = np.linspace(0.0, np.pi, 512)[200]

    def gain(theta):  # (G, W) -> (G, W)
        return 1.0 + 0.1 * np.sin(theta) + 2.0 * np.exp(-(((theta - theta_s) / 1e-7) ** 2))

    got = hinf_norm(gain, np.array([[0.5]], np.complex128))[0]
    assert got == pytest.approx(3.0 + 0.1 * math.sin(theta_s), rel=1e-15)


def test_grid_reaches_a_peak_at_pi_far_from_every_pole_angle():
    # mutant: the uniform grid over [0, π/2] instead of [0, π]. The FIR y[k] = u[k] - 2 u[k-1] + u[k-2] (poles at 0,
    # so pole samples only at θ = 0, ½, 1, 2) peaks at θ = π, where nothing sampled it: found 4 sin²(1) = 2.83.
    # Closed form: |1 - e^{-jθ}|² = 4 sin²(θ/2), maximal 4 at θ = π; the certified method agrees.
    ss = StateSpace(np.array([[[0.0, 0.0], [1.0, 0.0]]]), np.array([[[1.0], [0.0]]]), np.array([[[-2.0, 1.0]]]),
                    np.array([[[1.0]]]))
    assert ss.hinf_norm("grid")[0] == pytest.approx(4.0, rel=1e-14)
    assert ss.hinf_norm()[0] == pytest.approx(4.0, rel=1e-9)


def test_copies_of_a_repeated_pole_angle_take_one_bracket():
    # mutant: every copy of a repeated angle counts as a local maximum. Four poles at 0.5 put 8 samples at θ = 1
    # (offsets ±2 widths of 0.5); with the gain's bump of 2.9 there they filled the 4 brackets, and the peak of 3 at
    # θ_p, midway between two uniform nodes (which see 1.7), was never refined. Closed form: the peak height, 3.
    step = np.pi / 511
    theta_p = 300.5 * step

    def gain(theta):  # (G, W) -> (G, W)
        return np.maximum(2.9 * np.exp(-(((theta - 1.0) / 0.05) ** 2)), 3.0 * np.exp(-(((theta - theta_p) / 4e-3) ** 2)))

    got = hinf_norm(gain, np.full((1, 4), 0.5, np.complex128))[0]
    assert got == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_sigma_max_of_a_vector_neither_underflows_nor_overflows(scale):
    # bug (found with the sigma_max mutants): a row or column's σ_max was √Σ|H|², whose squares underflow below
    # 1e-154 and overflow above 1e154 (0 or inf; the SVD branch scales). Closed form: ‖(3, 4i)‖ = 5 and a 3x3 SVD.
    col = np.zeros((1, 2, 1, 1), np.complex128)
    col[0, :, 0, 0] = [3.0 * scale, 4.0j * scale]
    assert sigma_max(col)[0, 0] == pytest.approx(5.0 * scale, rel=1e-15, abs=0.0)
    row = col.transpose(0, 2, 1, 3)  # (1, 1, 2, 1)
    assert sigma_max(row)[0, 0] == pytest.approx(5.0 * scale, rel=1e-15, abs=0.0)


@pytest.mark.parametrize("b", [1e-200, 1e-160, 1e160, 1e200])
def test_norms_of_a_first_order_system_at_extreme_scales(b):
    # bug: hinf_norm() raised LinAlgError "Singular matrix" for a norm below ~1e-154 (R = γ² I - D_cᵀ D_c underflowed
    # to 0) and gave inf above 1e154 (the gain overflowed). Closed form: ‖b / (z - a)‖_∞ = |b| / (1 - |a|), a = 0.6.
    a = 0.6
    ss = StateSpace(np.array([[[a]]]), np.array([[[1.0]]]), np.array([[[b]]]), np.zeros((1, 1, 1)))
    exact = b / (1 - a)
    lo, hi = ss.hinf_bounds()[0]
    assert lo <= exact * (1 + 1e-14) and hi >= exact * (1 - 1e-14) and hi <= lo * (1 + 3e-10)
    assert ss.hinf_norm()[0] == pytest.approx(exact, rel=1e-12, abs=0.0)
    assert ss.hinf_norm("grid")[0] == pytest.approx(exact, rel=1e-12, abs=0.0)


def test_a_system_with_b_and_c_on_different_modes_has_norm_zero():
    # bug: G(z) = C (zI - A)^{-1} B ≡ 0 with B and C both nonzero (C sees only a mode B does not reach) raised
    # LinAlgError "Singular matrix": only B = 0 or C = 0 was recognised as the zero system. Closed form: 0; the
    # real system with C on the reached mode as well has the first-order norm 1 / (1 - 0.5).
    A = np.diag([0.5, 0.3])[None]
    B = np.array([[[1.0], [0.0]]])
    ss = StateSpace(A, B, np.array([[[0.0, 1.0]]]), np.zeros((1, 1, 1)))
    assert ss.hinf_bounds().tolist() == [[0.0, 0.0]]
    assert ss.hinf_norm().tolist() == [0.0] and ss.hinf_norm("grid").tolist() == [0.0]
    seen = StateSpace(A, B, np.array([[[1.0, 1.0]]]), np.zeros((1, 1, 1)))
    assert seen.hinf_norm()[0] == pytest.approx(2.0, rel=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# statespace.py


def test_zeros_drop_an_infinite_zero_that_rounding_left_finite():
    # mutant: every generalised eigenvalue with β ≠ 0 taken as finite. With a rank-one D the pencil has an infinite
    # eigenvalue whose β comes out 1.3e-16, not 0 (python-control reports it as a zero at 2.4e16). Reference: the
    # zeros are the roots of p(z) = det [[zI - A, -B], [C, D]] = det(zI - A) det H(z), interpolated at n + 1 points:
    # degree 4 (its z⁵ coefficient is rounding), so 4 finite zeros.
    rng = np.random.default_rng(2)
    n = 5
    A = rng.standard_normal((n, n)) * 0.3
    B = rng.standard_normal((n, 2))
    C = rng.standard_normal((2, n))
    u = rng.standard_normal((2, 1))
    D = u @ u.T  # (2, 2) rank one
    points = np.exp(2j * np.pi * np.arange(n + 1) / (n + 1))  # (n + 1,) roots of unity: a well-conditioned fit
    values = [np.linalg.det(np.block([[z * np.eye(n) - A, -B], [C, D]])) for z in points]
    coeffs = np.linalg.solve(np.vander(points), values).real  # (n + 1,) real coefficients, highest power first
    assert abs(coeffs[0]) < 1e-12 * abs(coeffs[1])
    ref = np.roots(coeffs[1:])  # (4,)
    got = StateSpace(A[None], B[None], C[None], D[None]).zeros()[0]
    assert got.shape == (4,)
    assert np.abs(got[:, None] - ref[None, :]).min(0).max() < 1e-9  # every reference zero found
    assert np.abs(got[:, None] - ref[None, :]).min(1).max() < 1e-9  # and nothing else

