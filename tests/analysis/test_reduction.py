"""Gramians, Hankel singular values, the H2 norm and balanced truncation (``ssmkit.analysis.reduction``) against
independent references: SciPy's Kronecker-product Stein solver, truncated sums of A^k, the singular values of a
finite block-Hankel matrix of Markov parameters, the impulse response's energy, python-control's H2 norm, and the
balanced-truncation error bounds. (Checked once against SLICOT's AB09AD through slycot, which is not a dependency:
Hankel singular values and reduced transfer functions agreed to 3e-14; docs/design.md.)"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import ssmkit.layers as layers
from ssmkit.analysis import StateSpace, balanced_truncation, gramians, h2_norm, hankel_singular_values
from ssmkit.analysis.reduction import solve_stein


def _random_bank(G=3, n=6, m=2, p=2, rho=0.9, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((G, n, n))
    A *= (rho / np.abs(np.linalg.eigvals(A)).max(1))[:, None, None]  # spectral radius rho, non-normal
    return StateSpace(A, rng.standard_normal((G, n, m)), rng.standard_normal((G, p, n)),
                      rng.standard_normal((G, p, m)))


def _markov(sys: StateSpace, g: int, K: int) -> list[np.ndarray]:
    """g_1 .. g_K = C A^{k-1} B of system g, by repeated multiplication."""
    out, AkB = [], sys.B[g]
    for _ in range(K):
        out.append(sys.C[g] @ AkB)
        AkB = sys.A[g] @ AkB
    return out


def test_gramians_equal_the_kronecker_solution_and_the_series():
    sys = _random_bank()
    Wc, Wo = gramians(sys)
    for g in range(sys.nsystems):
        A, B, C = sys.A[g], sys.B[g], sys.C[g]
        for W, (M, Q) in ((Wc[g], (A, B @ B.T)), (Wo[g], (A.T, C.T @ C))):
            ref = scipy.linalg.solve_discrete_lyapunov(M, Q, method="direct")  # vec(X) = (I - M ⊗ M)^{-1} vec(Q)
            assert np.abs(W - ref).max() < 1e-12 * np.abs(ref).max()
            series, Mk = np.zeros_like(Q), np.eye(len(M))
            for _ in range(600):  # 0.9^1200 ~ 1e-55
                series += Mk @ Q @ Mk.T
                Mk = M @ Mk
            assert np.abs(W - series).max() < 1e-12 * np.abs(series).max()
        assert np.allclose(Wc[g], Wc[g].T, rtol=0, atol=0) and np.linalg.eigvalsh(Wc[g]).min() > 0


def test_stein_solver_near_the_unit_circle():
    # poles at 1 - 1e-6 (a slow S4D mode): the column recursions against the closed forms of a diagonal system,
    # X_ij = q_ij / (1 - t_i conj(t_j)) for X = T X T^H + Q and q_ij / (1 - conj(t_i) t_j) for X = T^H X T + Q
    t = np.array([1 - 1e-6, 0.999 * np.exp(0.3j), -0.5, 0.2j])
    rng = np.random.default_rng(3)
    b = rng.standard_normal(4) + 1j * rng.standard_normal(4)
    Q = np.outer(b, b.conj())
    for adjoint, exact in ((False, Q / (1 - np.outer(t, t.conj()))), (True, Q / (1 - np.outer(t.conj(), t)))):
        X = solve_stein(np.diag(t)[None], Q[None], adjoint)[0]
        assert np.abs(X - exact).max() < 1e-14 * np.abs(exact).max()
    # an upper triangular T: the residual of each equation
    T = np.triu(rng.standard_normal((5, 5)) + 1j * rng.standard_normal((5, 5)), 1) * 0.3 + np.diag(
        0.95 * np.exp(1j * rng.uniform(0, np.pi, 5)))
    Q = rng.standard_normal((5, 5)) + 1j * rng.standard_normal((5, 5))
    Y = solve_stein(T[None], Q[None], False)[0]
    assert np.abs(T @ Y @ T.conj().T + Q - Y).max() < 1e-13 * np.abs(Y).max()
    Y = solve_stein(T[None], Q[None], True)[0]
    assert np.abs(T.conj().T @ Y @ T + Q - Y).max() < 1e-13 * np.abs(Y).max()


def test_hankel_singular_values_are_those_of_the_block_hankel_matrix():
    sys = _random_bank(G=2, n=5, m=2, p=3, rho=0.8)
    hsv = hankel_singular_values(sys)
    assert hsv.shape == (2, 5) and np.all(np.diff(hsv, axis=1) <= 0)
    K = 120  # 0.8^120 ~ 2e-12
    for g in range(2):
        h = _markov(sys, g, 2 * K)
        hankel = np.block([[h[i + j] for j in range(K)] for i in range(K)])  # (K p, K m): H_ij = g_{i+j+1}
        ref = np.linalg.svd(hankel, compute_uv=False)[:5]
        assert np.abs(hsv[g] - ref).max() < 1e-9 * ref[0]


def test_hankel_singular_values_are_invariant_under_a_change_of_state_basis():
    sys = _random_bank(G=1, n=6)
    S = np.random.default_rng(5).standard_normal((6, 6)) + 3 * np.eye(6)
    Si = np.linalg.inv(S)
    other = StateSpace(Si @ sys.A @ S, Si @ sys.B, sys.C @ S, sys.D)
    assert np.abs(other.hsvd() - sys.hsvd()).max() < 1e-10 * sys.hsvd().max()
    assert np.abs(other.gram("c") - sys.gram("c")).max() > 1e-3  # the Gramians themselves do change


def test_h2_norm_is_the_energy_of_the_impulse_response_and_python_control_agrees():
    sys = _random_bank(G=3, n=4, m=2, p=3, rho=0.85)
    energy = [np.sum(sys.D[g] ** 2) + sum(np.sum(M ** 2) for M in _markov(sys, g, 400)) for g in range(3)]
    assert np.abs(sys.h2_norm() - np.sqrt(energy)).max() < 1e-12 * max(energy) ** 0.5
    assert np.array_equal(h2_norm(sys), sys.h2_norm())
    control = pytest.importorskip("control")
    for g in range(3):
        ref = control.norm(control.ss(sys.A[g], sys.B[g], sys.C[g], sys.D[g], 1.0), p=2)
        assert sys.h2_norm()[g] == pytest.approx(ref, rel=1e-10)


def test_complex_banks_are_analysed_through_their_physical_real_part():
    rng = np.random.default_rng(7)
    lam = 0.95 * np.exp(1j * rng.uniform(0, np.pi, (2, 3)))  # (G, n)
    A = np.stack([np.diag(l) for l in lam])
    B = rng.standard_normal((2, 3, 1)) + 1j * rng.standard_normal((2, 3, 1))
    C = rng.standard_normal((2, 1, 3)) + 1j * rng.standard_normal((2, 1, 3))
    sys = StateSpace(A, B, C, np.zeros((2, 1, 1)))
    # the physical output y = Re(C x): its impulse response is Re(C A^{k-1} B)
    energy = [sum(np.sum(np.real(M) ** 2) for M in _markov(sys, g, 800)) for g in range(2)]
    assert np.abs(sys.h2_norm() - np.sqrt(energy)).max() < 1e-10
    assert np.array_equal(sys.hsvd(), sys.to_real().hsvd()) and sys.hsvd().shape == (2, 6)
    reduced = sys.balred(4)
    assert not reduced.is_complex and reduced.nstates == 4


def test_the_full_balanced_realisation_has_equal_diagonal_gramians():
    sys = _random_bank(G=2, n=5)
    full = balanced_truncation(sys, 5)
    Wc, Wo = gramians(full)
    hsv = sys.hsvd()
    for g in range(2):
        assert np.abs(Wc[g] - np.diag(hsv[g])).max() < 1e-10 * hsv[g, 0]
        assert np.abs(Wo[g] - np.diag(hsv[g])).max() < 1e-10 * hsv[g, 0]
    w = np.linspace(0, np.pi, 257)
    assert np.abs(full.frequency_response(w) - sys.frequency_response(w)).max() < 1e-11 * np.abs(
        sys.frequency_response(w)).max()


@pytest.mark.parametrize("order", [1, 2, 4])
def test_balanced_truncation_is_stable_and_within_its_error_bounds(order):
    sys = _random_bank(G=3, n=6, m=2, p=2, rho=0.95, seed=2)
    reduced = sys.balred(order)
    assert (reduced.nstates, reduced.ninputs, reduced.noutputs, reduced.dt) == (order, 2, 2, sys.dt)
    assert reduced.is_stable() and np.array_equal(reduced.D, sys.D)
    n = sys.nstates
    difference = StateSpace(  # G - G_r as one system: blockdiag(A, A_r), [B; B_r], [C, -C_r], 0
        np.block([[sys.A, np.zeros((3, n, order))], [np.zeros((3, order, n)), reduced.A]]),
        np.concatenate([sys.B, reduced.B], 1), np.concatenate([sys.C, -reduced.C], 2), np.zeros((3, 2, 2)))
    err = difference.hinf_bounds()  # certified [lo, hi]
    hsv = sys.hsvd()
    assert np.all(err[:, 1] <= 2 * hsv[:, order:].sum(1))  # Al-Saggaf & Franklin's bound
    assert np.all(err[:, 0] >= hsv[:, order] * (1 - 1e-9))  # no order-r system comes closer than σ_{r+1}


def test_a_non_minimal_system_reduces_exactly_to_its_minimal_order():
    rng = np.random.default_rng(11)
    A1 = rng.standard_normal((3, 3))
    A1 *= 0.9 / np.abs(np.linalg.eigvals(A1)).max()
    # two extra states: one uncontrollable (no input reaches it), one unobservable (C does not see it)
    A = scipy.linalg.block_diag(A1, 0.5, -0.3)
    B = np.vstack([rng.standard_normal((3, 1)), [[0.0]], [[1.0]]])
    C = np.hstack([rng.standard_normal((1, 3)), [[1.0]], [[0.0]]])
    sys = StateSpace(A[None], B[None], C[None], np.ones((1, 1, 1)))
    hsv = sys.hsvd()[0]
    assert hsv[2] > 1e-3 and hsv[3] < 1e-12 * hsv[0]
    reduced = sys.balred(3)
    w = np.linspace(0, np.pi, 513)
    assert np.abs(reduced.frequency_response(w) - sys.frequency_response(w)).max() < 1e-10
    with pytest.raises(ValueError, match=r"order 4 exceeds the numerical order of system 0 \(3: .*supports order <= 3"):
        sys.balred(4)


def test_an_s4d_layer_reduces_within_its_bound():
    torch.manual_seed(0)
    layer = layers.build("s4d", d_model=2, d_state=16, dtype=torch.float64)
    sys = layer.state_space()
    hsv = sys.hsvd()
    assert hsv.shape == (2, 16)
    reduced = sys.balred(6)
    u = torch.randn(1, 300, 2, dtype=torch.float64)
    y, y_r = sys.simulate(u), reduced.simulate(u)
    # ‖y − y_r‖_2 ≤ ‖G − G_r‖_∞ ‖u‖_2 per channel (signals from rest; finite windows only lower the left side)
    for g in range(2):
        assert float((y - y_r)[0, :, g].norm()) <= 2 * hsv[g, 6:].sum() * float(u[0, :, g].norm())


def test_errors():
    unstable = StateSpace(np.array([[[0.5]], [[1.0]], [[-1.2]]]), np.ones((3, 1, 1)), np.ones((3, 1, 1)),
                          np.zeros((3, 1, 1)))
    for call in (lambda: unstable.gram("c"), unstable.hsvd, lambda: unstable.balred(1)):
        with pytest.raises(ValueError, match=r"needs Schur-stable systems .*not stable: system 1 \(\|z\| = 1\), 2 \(\|z\| = 1.2\)"):
            call()
    h2 = unstable.h2_norm()
    assert h2[0] == pytest.approx(1 / np.sqrt(1 - 0.25), rel=1e-14) and np.isinf(h2[1:]).all()  # Σ 0.5^{2k}
    sys = _random_bank(G=1, n=3)
    for bad in (0, 4, 2.0, True, "2"):
        with pytest.raises(ValueError, match=r"order must be an int r with 1 <= r <= n = 3"):
            sys.balred(bad)
    with pytest.raises(ValueError, match="kind must be 'c' .* or 'o'"):
        sys.gram("x")


def test_reduced_order_is_the_smallest_order_the_bound_certifies():
    from ssmkit.analysis.layerwise import reduced_order

    hsv = np.array([[4.0, 1.0, 0.02, 0.01, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0], [np.nan] * 5])
    hinf = np.array([5.0, 5.0, np.inf])
    want = []
    for g in range(2):  # brute force: the first r with 2 Σ_{i>=r} σ_i <= 0.01 H∞ (0-based tail)
        want.append(next(r for r in range(6) if 2 * hsv[g, r:].sum() <= 0.01 * hinf[g]))
    assert want == [3, 5]  # 2·(0.01 + 0) <= 0.05 < 2·(0.02 + 0.01 + 0)
    assert reduced_order(hsv, hinf, 0.01).tolist() == [3, 5, -1]
    assert reduced_order(hsv, hinf, 0.5).tolist() == [1, 4, -1]  # 2·1.03 <= 2.5; 2·1 <= 2.5 < 2·2
    with pytest.raises(ValueError, match="rel must be a number > 0"):
        reduced_order(hsv, hinf, 0.0)


def test_a_layers_reduced_order_keeps_its_promise():
    from ssmkit.analysis import analyze_model

    torch.manual_seed(3)
    layer = layers.build("s4d", d_model=3, d_state=16, dtype=torch.float64)
    with torch.no_grad():  # a trained-looking layer: a few channels dominate the output
        layer.C.mul_(torch.logspace(0, -4, 8, dtype=torch.float64)[:, None])
    (result,) = analyze_model(layer)
    assert np.array_equal(result.h2, result.system.h2_norm())
    assert np.array_equal(result.hankel, result.system.hsvd())
    orders = result.reduced_order(0.01)
    assert orders.max() < 16  # something to drop
    for g, r in enumerate(orders):
        sub = result.system[g]
        if r == 0:
            continue
        reduced = sub.balred(int(r))
        n = sub.nstates
        difference = StateSpace(np.block([[sub.A, np.zeros((1, n, r))], [np.zeros((1, r, n)), reduced.A]]),
                                np.concatenate([sub.B, reduced.B], 1), np.concatenate([sub.C, -reduced.C], 2),
                                np.zeros((1, 1, 1)))
        assert difference.hinf_bounds()[0, 1] <= 0.01 * result.hinf[g]


def test_large_banks_are_solved_in_parts_with_the_same_result(monkeypatch):
    import ssmkit.analysis.reduction as reduction

    sys = _random_bank(G=5, n=4)
    whole = gramians(sys)
    monkeypatch.setattr(reduction, "_CHUNK_ELEMENTS", 2 * 16)  # two systems per pass: passes of 2, 2 and 1
    parts = gramians(sys)
    for a, b in zip(whole, parts):
        assert np.abs(a - b).max() <= 1e-14 * np.abs(a).max()  # equal up to how a batch size rounds


# ---------------------------------------------------------------------------------------------------------------
# Probe 24 (mutation testing): the cases the mutants of analysis/reduction showed untested.
# ---------------------------------------------------------------------------------------------------------------


def _triangular(G, n, seed):
    rng = np.random.default_rng(seed)
    T = np.triu(rng.standard_normal((G, n, n)) + 1j * rng.standard_normal((G, n, n)), 1) * 0.3
    T += np.stack([np.diag(0.9 * np.exp(1j * rng.uniform(0, np.pi, n))) for _ in range(G)])
    return T, rng.standard_normal((G, n, n)) + 1j * rng.standard_normal((G, n, n))


@pytest.mark.parametrize(("n", "chunk", "passes"), [(4, None, [5]), (4, 32, [5, 2, 2, 1]), (4, 8, [5, 1, 1, 1, 1, 1]),
                                                    (1, 4, [5, 4, 1])])
def test_solve_stein_takes_a_bank_in_passes_of_chunk_elements_over_n_squared(monkeypatch, n, chunk, passes):
    # systems per pass = max(1, chunk // n²): the whole bank of 5 at the default 2^22 (None), 32 // 16 = 2, 8 // 16 -> 1,
    # 4 // 1 = 4; every system's solution against the residual of its own equation
    import ssmkit.analysis.reduction as reduction

    calls, inner = [], reduction.solve_stein

    def spy(T, Q, adjoint):
        calls.append(T.shape[0])
        return inner(T, Q, adjoint)

    monkeypatch.setattr(reduction, "solve_stein", spy)
    if chunk is not None:
        monkeypatch.setattr(reduction, "_CHUNK_ELEMENTS", chunk)
    T, Q = _triangular(5, n, seed=n)
    for adjoint in (False, True):
        calls.clear()
        Y = reduction.solve_stein(T, Q, adjoint)
        assert calls == passes and Y.shape == (5, n, n)
        for g in range(5):
            M = T[g].conj().T if adjoint else T[g]
            assert np.abs(M @ Y[g] @ M.conj().T + Q[g] - Y[g]).max() < 1e-13 * np.abs(Y[g]).max()


def test_gramians_and_h2_of_diagonal_systems_against_the_closed_forms():
    # A = diag(a): Wc_ij = (B Bᵀ)_ij / (1 - a_i a_j), Wo_ij = (Cᵀ C)_ij / (1 - a_i a_j); a small gain (‖G‖₂ < 1:
    # the energy is not clipped at 1) and a pole near the circle
    a = np.array([0.5, -0.8, 0.999, 0.1])
    rng = np.random.default_rng(4)
    B, C = 0.01 * rng.standard_normal((4, 2)), 0.02 * rng.standard_normal((3, 4))
    D = 0.01 * rng.standard_normal((3, 2))
    sys = StateSpace(np.diag(a)[None], B[None], C[None], D[None])
    Wc, Wo = gramians(sys)
    den = 1 - np.outer(a, a)
    assert np.abs(Wc[0] - B @ B.T / den).max() < 1e-13 * np.abs(B @ B.T / den).max()
    assert np.abs(Wo[0] - C.T @ C / den).max() < 1e-13 * np.abs(C.T @ C / den).max()
    h2 = np.sqrt(np.sum(D ** 2) + np.trace(C @ (B @ B.T / den) @ C.T))
    assert h2 < 0.1 and h2_norm(sys)[0] == pytest.approx(h2, rel=1e-12)


def test_h2_and_hankel_defaults_and_an_all_unstable_bank():
    from ssmkit.analysis.reduction import h2_and_hankel

    sys = _random_bank(G=2, n=3)
    h2, hsv = h2_and_hankel(sys)
    assert hsv is None and np.array_equal(h2, sys.h2_norm())
    unstable = StateSpace(np.array([[[1.5]], [[1.0]]]), np.ones((2, 1, 1)), np.ones((2, 1, 1)), np.zeros((2, 1, 1)))
    h2, hsv = h2_and_hankel(unstable, hankel=True)
    assert np.isinf(h2).all() and hsv.shape == (2, 1) and np.isnan(hsv).all()


def test_the_unstable_systems_message_shows_the_spectral_radius_and_at_most_five():
    two = StateSpace(np.diag([0.5, -1.5])[None], np.ones((1, 2, 1)), np.ones((1, 1, 2)), np.zeros((1, 1, 1)))
    with pytest.raises(ValueError) as info:
        two.hsvd()
    assert str(info.value).endswith("not stable: system 0 (|z| = 1.5)")
    for G, tail in ((5, "4 (|z| = 1.5)"), (6, "4 (|z| = 1.5) …"), (7, "4 (|z| = 1.5) …")):
        poles = 1.1 + 0.1 * np.arange(G)
        bank = StateSpace(poles[:, None, None], np.ones((G, 1, 1)), np.ones((G, 1, 1)), np.zeros((G, 1, 1)))
        with pytest.raises(ValueError) as info:
            bank.balred(1)
        assert str(info.value).endswith("not stable: system 0 (|z| = 1.1), 1 (|z| = 1.2), 2 (|z| = 1.3), "
                                        "3 (|z| = 1.4), " + tail)


def test_balanced_truncation_does_not_depend_on_the_scale_of_the_gains():
    # the rank test is relative to σ_1: a bank scaled by 1e-8 (σ ~ 1e-8) reduces like the original, scaled
    sys = _random_bank(G=2, n=5, seed=6)
    zero_d = np.zeros_like(sys.D)
    base = StateSpace(sys.A, sys.B, sys.C, zero_d).balred(2)
    small = StateSpace(sys.A, 1e-4 * sys.B, 1e-4 * sys.C, zero_d).balred(2)
    w = np.linspace(0, np.pi, 65)
    ref = 1e-8 * base.frequency_response(w)
    assert np.abs(small.frequency_response(w) - ref).max() < 1e-10 * np.abs(ref).max()


def test_balanced_truncation_refuses_a_system_with_no_input_and_an_order_past_any_systems_rank():
    sys = _random_bank(G=1, n=3)
    dead = StateSpace(sys.A, np.zeros_like(sys.B), sys.C, sys.D)  # every σ is 0: numerical order 0
    assert np.array_equal(dead.hsvd(), np.zeros((1, 3)))
    # it said "supports order <= 0", then refused order 0
    with pytest.raises(ValueError, match=r"system 0 has no reachable and observable state \(its Hankel singular values "
                                         r"are all 0, G\(z\) = D\): balanced truncation has no order >= 1"):
        dead.balred(1)
    # a bank: system 1 is minimal of order 3 inside 5 states (two decoupled modes, one unreached, one unseen)
    rng = np.random.default_rng(11)
    A1 = rng.standard_normal((3, 3))
    A1 *= 0.9 / np.abs(np.linalg.eigvals(A1)).max()
    A = np.stack([_random_bank(G=1, n=5, seed=8).A[0], scipy.linalg.block_diag(A1, 0.5, -0.3)])
    B = np.stack([rng.standard_normal((5, 1)), np.vstack([rng.standard_normal((3, 1)), [[0.0]], [[1.0]]])])
    C = np.stack([rng.standard_normal((1, 5)), np.hstack([rng.standard_normal((1, 3)), [[1.0]], [[0.0]]])])
    bank = StateSpace(A, B, C, np.zeros((2, 1, 1)))
    assert bank.balred(3).nstates == 3
    with pytest.raises(ValueError, match=r"order 4 exceeds the numerical order of system 1 \(3: .*supports order <= 3"):
        bank.balred(4)


def test_a_shift_register_against_its_finite_hankel_matrix():
    # A nilpotent (every pole at 0, |T_ii| = 0 in the Stein solver): x shifts down, y = c x, an FIR g_k = c_k;
    # ‖G‖₂ = ‖c‖ and the Hankel operator is the finite 5 x 5 Hankel matrix of c (zeros below the anti-diagonal)
    shift = np.diag(np.ones(4), -1)
    b = np.eye(5)[:, :1]
    c = np.array([[1.0, -2.0, 3.0, 0.5, 4.0]])
    fir = StateSpace(shift[None], b[None], c[None], np.full((1, 1, 1), 0.25))
    assert fir.h2_norm()[0] == pytest.approx(np.sqrt(0.25 ** 2 + np.sum(c ** 2)), rel=1e-14)
    ref = np.linalg.svd(scipy.linalg.hankel(c[0], np.zeros(5)), compute_uv=False)
    assert np.abs(fir.hsvd()[0] - ref).max() < 1e-13 * ref[0]
