"""Continuous-time Gramians, Hankel singular values, H2 norm and balanced truncation (``StateSpace.from_continuous``
banks, ``ssmkit.analysis.reduction``) against independent references: SciPy's Bartels-Stewart Lyapunov solver, the
closed forms of first-order and diagonal (S4D-like) systems, the energy of scipy.signal's impulse response,
python-control's H2 norm (its ``gram``, ``hsvd`` and ``balred`` need slycot, not a dependency), a balanced truncation
built here from SciPy's Gramians (its transfer function is unique when σ_r > σ_{r+1}), and the error bound
‖G − G_r‖_∞ ≤ 2 Σ_{i>r} σ_i on a frequency grid.

Not tested, because theory does not make it an identity: the Gramians of `to_continuous()` of a sampled bank against
the discrete ones, and "balred then to_discrete" against "to_discrete then balred" (the ZOH map changes the Hankel
singular values; the Tustin map keeps them and keeps a balanced realisation balanced, but the leading block of
(I + αA)(I − αA)^{-1} is not the image of the leading block of A, so truncation does not commute with it). What the
Tustin map does keep is tested instead."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.signal

from ssmkit.analysis import StateSpace
from ssmkit.analysis.reduction import h2_and_hankel, solve_lyapunov


def _random_continuous(G=2, n=5, m=2, p=3, seed=0, feedthrough=False) -> StateSpace:
    """G random Hurwitz-stable, non-normal real systems: A shifted so that its rightmost pole has Re s = -0.3."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((G, n, n))
    A -= (np.linalg.eigvals(A).real.max(1) + 0.3)[:, None, None] * np.eye(n)
    D = rng.standard_normal((G, p, m)) if feedthrough else np.zeros((G, p, m))
    return StateSpace.from_continuous(A, rng.standard_normal((G, n, m)), rng.standard_normal((G, p, n)), D)


def _transfer(A, B, C, D, omega):
    """(W, p, m) H(jω) = C (jωI − A)^{-1} B + D by dense solves (numpy)."""
    eye = np.eye(A.shape[0])
    return np.stack([C @ np.linalg.solve(1j * w * eye - A, B) + D for w in omega])


def _reference_balred(A, B, C, D, r):
    """Balanced truncation from SciPy's Gramians: Cholesky factors, one SVD, the first r balanced states."""
    P = scipy.linalg.solve_continuous_lyapunov(A, -B @ B.T)
    Q = scipy.linalg.solve_continuous_lyapunov(A.T, -C.T @ C)
    R = scipy.linalg.cholesky(P, lower=True)
    L = scipy.linalg.cholesky(Q, lower=True)
    U, s, Vt = np.linalg.svd(L.T @ R)
    T = R @ Vt[:r].T / np.sqrt(s[:r])
    Ti = (U[:, :r] / np.sqrt(s[:r])).T @ L.T
    return Ti @ A @ T, Ti @ B, C @ T, D


def test_gramians_solve_the_continuous_lyapunov_equations_and_match_scipy():
    ct = _random_continuous(G=3, n=6, m=2, p=3)
    P, Q = ct.gram("c"), ct.gram("o")
    assert P.shape == Q.shape == (3, 6, 6) and P.dtype == np.float64
    for g in range(3):
        A, B, C = ct.A[g], ct.B[g], ct.C[g]
        assert np.abs(A @ P[g] + P[g] @ A.T + B @ B.T).max() < 1e-12 * np.abs(P[g]).max() * np.abs(A).max()
        assert np.abs(A.T @ Q[g] + Q[g] @ A + C.T @ C).max() < 1e-12 * np.abs(Q[g]).max() * np.abs(A).max()
        ref_P = scipy.linalg.solve_continuous_lyapunov(A, -B @ B.T)
        ref_Q = scipy.linalg.solve_continuous_lyapunov(A.T, -C.T @ C)
        assert np.abs(P[g] - ref_P).max() < 1e-10 * np.abs(ref_P).max()
        assert np.abs(Q[g] - ref_Q).max() < 1e-10 * np.abs(ref_Q).max()
        assert np.array_equal(P[g], P[g].T) and np.linalg.eigvalsh(P[g]).min() > 0


def test_gramians_of_a_diagonal_system_against_the_closed_form():
    # A = diag(a), a_i < 0: Wc_ij = -b_i b_j / (a_i + a_j), Wo_ij = -c_i c_j / (a_i + a_j)
    a = np.array([-0.01, -0.5, -2.0, -40.0])
    b = np.array([1.0, -2.0, 0.5, 3.0])
    c = np.array([0.3, 1.0, -1.5, 2.0])
    ct = StateSpace.from_continuous(np.diag(a)[None], b[None, :, None], c[None, None, :], np.zeros((1, 1, 1)))
    den = a[:, None] + a[None, :]
    assert np.abs(ct.gram("c")[0] - (-np.outer(b, b) / den)).max() < 1e-12
    assert np.abs(ct.gram("o")[0] - (-np.outer(c, c) / den)).max() < 1e-12


def test_solve_lyapunov_on_triangular_and_diagonal_complex_matrices():
    rng = np.random.default_rng(1)
    t = np.array([-1e-6 + 0.0j, -0.1 + 3j, -2.0 - 1j, -50.0 + 0.5j])  # one pole close to the imaginary axis
    b = rng.standard_normal(4) + 1j * rng.standard_normal(4)
    Q = np.outer(b, b.conj())
    for adjoint, exact in ((False, -Q / (t[:, None] + t.conj()[None, :])), (True, -Q / (t.conj()[:, None] + t[None, :]))):
        X = solve_lyapunov(np.diag(t)[None], Q[None], adjoint)[0]
        assert np.abs(X - exact).max() < 1e-14 * np.abs(exact).max()
    T = np.triu(rng.standard_normal((5, 5)) + 1j * rng.standard_normal((5, 5)), 1) + np.diag(
        -rng.uniform(0.1, 2.0, 5) + 1j * rng.standard_normal(5))
    Q = rng.standard_normal((2, 5, 5)) + 1j * rng.standard_normal((2, 5, 5))
    Y = solve_lyapunov(np.stack([T, T]), Q, False)
    for g in range(2):
        assert np.abs(T @ Y[g] + Y[g] @ T.conj().T + Q[g]).max() < 1e-13 * np.abs(Y[g]).max() * 5
    Y = solve_lyapunov(T[None], Q[:1], True)[0]
    assert np.abs(T.conj().T @ Y + Y @ T + Q[0]).max() < 1e-13 * np.abs(Y).max() * 5


def test_hankel_singular_values_against_scipy_gramians_a_change_of_basis_and_the_tustin_map():
    ct = _random_continuous(G=2, n=5, m=2, p=3, seed=2)
    hsv = ct.hsvd()
    assert hsv.shape == (2, 5) and np.all(np.diff(hsv, axis=1) <= 0) and hsv.min() > 0
    for g in range(2):
        A, B, C = ct.A[g], ct.B[g], ct.C[g]
        P = scipy.linalg.solve_continuous_lyapunov(A, -B @ B.T)
        Q = scipy.linalg.solve_continuous_lyapunov(A.T, -C.T @ C)
        ref = np.sqrt(np.sort(np.linalg.eigvals(P @ Q).real)[::-1])
        assert np.abs(hsv[g] - ref).max() < 1e-9 * ref[0]
    rng = np.random.default_rng(3)
    T = rng.standard_normal((5, 5)) + 3 * np.eye(5)
    Ti = np.linalg.inv(T)
    moved = StateSpace.from_continuous(Ti @ ct.A @ T, Ti @ ct.B, ct.C @ T, ct.D)
    assert np.abs(moved.hsvd() - hsv).max() < 1e-9 * hsv.max()
    # the bilinear map s = (2/dt)(z − 1)/(z + 1) keeps the Hankel operator's singular values; ZOH does not
    for dt in (0.05, 1.0):
        assert np.abs(ct.to_discrete(dt, "bilinear").hsvd() - hsv).max() < 1e-9 * hsv.max()
    assert np.abs(ct.to_discrete(1.0, "zoh").hsvd() - hsv).max() > 1e-3 * hsv.max()


def test_h2_norm_of_a_first_order_system_is_the_closed_form():
    # H(s) = c b / (s + a): ‖H‖₂² = ∫ (c b e^{-at})² dt = c² b² / (2a)
    a, b, c = np.array([0.5, 3.0, 100.0]), np.array([2.0, -1.0, 0.3]), np.array([1.5, 4.0, -2.0])
    ct = StateSpace.from_continuous(-a[:, None, None], b[:, None, None], c[:, None, None], np.zeros((3, 1, 1)))
    assert np.abs(ct.h2_norm() - np.sqrt(c ** 2 * b ** 2 / (2 * a))).max() < 1e-13


def test_h2_norm_is_the_energy_of_the_impulse_response_and_python_control_agrees():
    ct = _random_continuous(G=2, n=4, m=2, p=2, seed=4)
    h2 = ct.h2_norm()
    t = np.linspace(0.0, 60.0, 60001)  # slowest pole Re s = -0.3: e^{-36} at the end
    for g in range(2):
        energy = 0.0
        for j in range(2):  # one impulse per input: Σ_j ∫ ‖C e^{At} B e_j‖² dt = ∫ ‖C e^{At} B‖_F² dt
            _, y = scipy.signal.impulse((ct.A[g], ct.B[g][:, j:j + 1], ct.C[g], ct.D[g][:, j:j + 1]), T=t)
            y = y.reshape(len(t), -1)
            energy += scipy.integrate.trapezoid(np.sum(y ** 2, axis=1), t)
        assert h2[g] == pytest.approx(np.sqrt(energy), rel=1e-6)
    control = pytest.importorskip("control")
    for g in range(2):
        ref = control.norm(control.ss(ct.A[g], ct.B[g], ct.C[g], ct.D[g]), p=2)
        assert h2[g] == pytest.approx(ref, rel=1e-10)


def test_h2_norm_is_inf_with_a_feedthrough_or_an_unstable_pole_as_in_python_control():
    ct = _random_continuous(G=2, n=3, m=1, p=1, seed=5, feedthrough=True)
    assert np.isinf(ct.h2_norm()).all()
    control = pytest.importorskip("control")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "System has a direct feedthrough term!"
        assert np.isinf(control.norm(control.ss(ct.A[0], ct.B[0], ct.C[0], ct.D[0]), p=2))
    # a bank of three: stable with D = 0, unstable, stable with D ≠ 0; the Hankel values do not depend on D
    A = np.array([[[-1.0]], [[0.5]], [[-2.0]]])
    bank = StateSpace.from_continuous(A, np.ones((3, 1, 1)), np.ones((3, 1, 1)), np.array([[[0.0]], [[0.0]], [[1.0]]]))
    h2, hsv = h2_and_hankel(bank, hankel=True)
    assert h2[0] == pytest.approx(np.sqrt(1 / 2), rel=1e-14) and np.isinf(h2[1:]).all()
    assert hsv[0, 0] == pytest.approx(1 / 2, rel=1e-14) and np.isnan(hsv[1, 0]) and hsv[2, 0] == pytest.approx(1 / 4)
    assert np.array_equal(bank.h2_norm(), h2)


def test_a_complex_diagonal_bank_against_the_closed_form_of_its_real_part_output():
    # y(t) = Re f(t), f = Σ_n c_n b_n e^{λ_n t}: ∫ (Re f)² = ½ ∫ |f|² + ½ Re ∫ f², each a double sum of -1/(λ_i + λ_j')
    lam = np.array([-0.2 + 1.0j, -1.0 - 3.0j, -0.05 + 0.2j])
    b = np.array([1.0 + 0.5j, -0.3j, 0.8])
    c = np.array([0.5 - 1.0j, 2.0, 1.0 + 1.0j])
    w = c * b
    energy = 0.5 * np.sum(-np.outer(w, w.conj()) / (lam[:, None] + lam.conj()[None, :])).real
    energy += 0.5 * np.sum(-np.outer(w, w) / (lam[:, None] + lam[None, :])).real
    ct = StateSpace.from_continuous(np.diag(lam)[None], b[None, :, None], c[None, None, :], np.zeros((1, 1, 1)))
    assert ct.is_complex and ct.h2_norm()[0] == pytest.approx(np.sqrt(energy), rel=1e-13)
    real = ct.to_real()
    assert ct.gram("c").shape == (1, 6, 6) and np.abs(ct.gram("o") - real.gram("o")).max() == 0
    assert np.abs(ct.hsvd() - real.hsvd()).max() == 0
    reduced = ct.balred(2)
    assert reduced.is_continuous and not reduced.is_complex and reduced.nstates == 2


@pytest.mark.parametrize("order", [1, 2, 4])
def test_balanced_truncation_is_continuous_stable_balanced_and_within_its_error_bound(order):
    ct = _random_continuous(G=2, n=6, m=2, p=2, seed=6, feedthrough=True)
    hsv = ct.hsvd()
    reduced = ct.balred(order)
    assert reduced.is_continuous and reduced.dt == 0.0 and reduced.nstates == order
    assert reduced.is_stable() and np.array_equal(reduced.D, ct.D)
    omega = np.concatenate([[0.0], np.logspace(-3, 3, 400)])
    for g in range(2):
        Ar, Br, Cr, Dr = reduced.A[g], reduced.B[g], reduced.C[g], reduced.D[g]
        # balanced: both Gramians (SciPy's) are diag(σ_1, ..., σ_r)
        P = scipy.linalg.solve_continuous_lyapunov(Ar, -Br @ Br.T)
        Q = scipy.linalg.solve_continuous_lyapunov(Ar.T, -Cr.T @ Cr)
        for W in (P, Q):
            assert np.abs(W - np.diag(hsv[g, :order])).max() < 1e-9 * hsv[g, 0]
        full = _transfer(ct.A[g], ct.B[g], ct.C[g], ct.D[g], omega)
        mine = _transfer(Ar, Br, Cr, Dr, omega)
        ref = _transfer(*_reference_balred(ct.A[g], ct.B[g], ct.C[g], ct.D[g], order), omega)
        assert np.abs(mine - ref).max() < 1e-8 * np.abs(full).max()
        error = np.linalg.norm(full - mine, ord=2, axis=(1, 2)).max()
        bound = 2 * hsv[g, order:].sum()
        assert hsv[g, order] * (1 - 1e-9) <= bound and error <= bound * (1 + 1e-9)
        assert error >= 0.5 * hsv[g, order]  # not vacuous: the error's H∞ norm is at least σ_{r+1}, grid-sampled


def test_full_order_balancing_keeps_the_transfer_function():
    ct = _random_continuous(G=1, n=4, m=1, p=2, seed=7)
    full = ct.balred(4)
    omega = np.logspace(-2, 2, 50)
    H = _transfer(ct.A[0], ct.B[0], ct.C[0], ct.D[0], omega)
    assert np.abs(_transfer(full.A[0], full.B[0], full.C[0], full.D[0], omega) - H).max() < 1e-10 * np.abs(H).max()


def test_the_tustin_image_of_a_continuous_balanced_truncation_is_balanced():
    # with P = I − (dt/2) A the Tustin image has B_d = dt P^{-1} B, C_d = C P^{-1}: its Gramians are dt Wc and Wo / dt
    # (Al-Saggaf & Franklin, IEEE TAC 32(9), 1987, with the symmetric √dt scaling), so diagonal again
    ct = _random_continuous(G=1, n=5, m=2, p=2, seed=8)
    reduced = ct.balred(3)
    sigma = ct.hsvd()[0, :3]
    for dt in (0.1, 2.0):
        image = reduced.to_discrete(dt, "bilinear")
        assert np.abs(image.gram("c")[0] - dt * np.diag(sigma)).max() < 1e-9 * dt * sigma[0]
        assert np.abs(image.gram("o")[0] - np.diag(sigma) / dt).max() < 1e-9 * sigma[0] / dt


def test_unstable_and_marginal_continuous_systems_are_refused_with_the_rightmost_real_part():
    bank = StateSpace.from_continuous(np.array([[[-1.0]], [[0.25]], [[0.0]]]), np.ones((3, 1, 1)), np.ones((3, 1, 1)),
                                      np.zeros((3, 1, 1)))
    message = (r"needs Hurwitz-stable systems \(every pole Re s < 0\) in continuous time; not stable: "
               r"system 1 \(max Re s = 0\.25\), 2 \(max Re s = 0\)$")
    for what, call in (("a Gramian", bank.gram), ("a Gramian", bank.hsvd), ("balanced truncation", lambda: bank.balred(1))):
        with pytest.raises(ValueError, match=rf"^{what} {message}"):
            call()
    assert bank[0].gram("c")[0, 0, 0] == pytest.approx(0.5, rel=1e-15)
    with pytest.raises(ValueError, match=r"order must be an int r with 1 <= r <= n = 1"):
        bank[0].balred(2)
    with pytest.raises(ValueError, match=r"kind must be 'c' \(controllability\) or 'o' \(observability\); got 'x'"):
        bank[0].gram("x")
