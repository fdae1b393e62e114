"""Mutation probe (2026-12-06) of the code of the continuous-time export and the float ``lengths`` paths: the
mutants of ``analysis/sampling.py``, ``StateSpace.to_continuous`` / ``to_discrete`` / the continuous H∞ scale,
the continuous parts of ``analysis/reduction.py``, ``ContinuousWiener``, ``utils.length_mask`` / ``check_lengths``,
``SequenceModel``'s lengths, and the objective's and batches' per-step scoring that the existing tests
(test_continuous_export, test_continuous_reduction, the 2026-12-06 continuous, new-features and float-lengths probes,
test_float_lengths, test_float_lengths_fit) let survive. Each test names the mutant it kills and checks the real code
against an independent reference (scipy, a closed form, a float64 loop, the unpadded sequence).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from ssmkit.analysis import StateSpace
from ssmkit.analysis import reduction
from tests.conftest import DEVICE

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------------------
# sampling.py and StateSpace.to_continuous / hinf


def _zoh_residual(A: np.ndarray, B: np.ndarray) -> float:
    """‖exp(L) − Φ‖₁/‖Φ‖₁ of scipy's principal logarithm L of Φ = [[A, B], [0, I]] (the reference residual)."""
    n, m = B.shape
    Phi = np.block([[A, B], [np.zeros((m, n)), np.eye(m)]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L = np.real(2 * scipy.linalg.logm(scipy.linalg.sqrtm(Phi)))
    return float(np.linalg.norm(scipy.linalg.expm(L) - Phi, 1) / np.linalg.norm(Phi, 1))


def test_an_inaccurate_zoh_logarithm_is_refused_rather_than_returned():
    """Kills _LOG_RESIDUAL = 1e-2 (a logarithm missing [[A, B], [0, I]] by 1e-7 .. 2e-4 accepted). Far-from-normal A
    (eigenvalues 0.2 .. 0.9, off-diagonal entries c): whatever converts samples back to A and B to 1e-8 (scipy's
    expm), and c = 30, whose logarithm misses by 2e-4 (scipy's own), is refused."""
    n, dt = 8, 0.1
    for c in (3.0, 10.0, 30.0):
        A = np.diag(np.linspace(0.2, 0.9, n)) + np.triu(np.full((n, n), c), 1)
        B = np.ones((n, 1))
        system = StateSpace(A[None], B[None], np.ones((1, 1, n)), np.zeros((1, 1, 1)), dt=dt)
        try:
            ct = system.to_continuous()
        except ValueError as err:
            assert "inaccurate" in str(err)
            assert _zoh_residual(A, B) > 1e-8  # refused only where the logarithm does miss
            continue
        Phi = scipy.linalg.expm(dt * np.block([[ct.A[0], ct.B[0]], [np.zeros((1, n + 1))]]))
        assert np.linalg.norm(Phi[:n] - np.concatenate([A, B], 1), 1) <= 1e-8 * np.linalg.norm(A, 1), c
        assert c < 30.0  # c = 30 misses by far more than 1e-8: it must be refused
    assert _zoh_residual(np.diag(np.linspace(0.2, 0.9, n)) + np.triu(np.full((n, n), 30.0), 1), np.ones((n, 1))) > 1e-6


def test_hold_sample_keeps_a_genuine_feedthrough_far_below_the_terms():
    """Kills a rounding cut 1e8 times too wide in ``sample_hold_output``: D_paper = 1e-10 (terms of order 1, a
    well-conditioned A: rounding 1e-16) comes back as D_c = D_paper to 1e-4, C_c = C_paper, and H2 is inf."""
    rng = np.random.default_rng(3)
    V = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    A = V @ np.diag([0.5, 0.7, 0.8]) @ V.T
    B, C_p = rng.standard_normal((3, 2)), rng.standard_normal((2, 3))
    D_p = np.array([[1e-10, -3e-10], [0.0, 2e-10]])
    ct = StateSpace(A[None], B[None], (C_p @ A)[None], (D_p + C_p @ B)[None], dt=0.2).to_continuous("zoh", hold="sample")
    np.testing.assert_allclose(ct.D[0], D_p, rtol=1e-4, atol=1e-15)
    np.testing.assert_allclose(ct.C[0], C_p, rtol=0, atol=1e-12)
    assert np.isinf(ct.h2_norm()[0])


def _resonance(wn: float, zeta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A unit-DC-gain resonance in modal form: peak gain 1 / (2 ζ √(1 − ζ²))."""
    wd, sigma = wn * np.sqrt(1 - zeta**2), -zeta * wn
    A = np.array([[sigma, wd], [-wd, sigma]])
    B = np.array([[0.0], [1.0]])
    C = np.array([[1.0, 0.0]])
    return A, B, C / (C @ np.linalg.solve(-A, B))[0, 0]


def test_continuous_hinf_of_one_system_with_modes_six_decades_apart():
    """Kills ω₀ = min |s| (instead of √(min |s| max |s|)) in the Tustin image of `hinf_norm`: one MIMO system of a
    resonance at 10⁻³ rad/s (ζ = 1e-2) on one channel and one at 10³ rad/s (ζ = 1e-3) on the other: σ_max G(jω) is the
    larger channel's gain, so H∞ = 1/(2ζ√(1−ζ²)) of the second (closed form); at ω₀ = 10⁻³ the fast pair lies
    within 4e-9 of the unit circle and the norm erred by 8e-8, outside its bracket."""
    (A1, B1, C1), (A2, B2, C2) = _resonance(1e-3, 1e-2), _resonance(1e3, 1e-3)
    A, B, C = (scipy.linalg.block_diag(P, Q) for P, Q in ((A1, A2), (B1, B2), (C1, C2)))
    bank = StateSpace.from_continuous(A[None], B[None], C[None], np.zeros((1, 2, 2)))
    exact = 1 / (2e-3 * np.sqrt(1 - 1e-6))
    np.testing.assert_allclose(bank.hinf_norm()[0], exact, rtol=1e-9)
    low, high = bank.hinf_bounds(1e-10)[0]
    assert low <= exact * (1 + 1e-12) and exact <= high * (1 + 1e-12), (low / exact - 1, high / exact - 1)


def test_a_fast_but_nonzero_mode_converts_exactly():
    """Kills a zero-eigenvalue threshold 1e8 times too wide (``_near_singular``): z = 1e-6 (s = ln(1e-6)/dt, a
    fast decay, not a delay) converts to the poles ln z / dt and samples back to A and B (scipy's expm)."""
    A, B, dt = np.diag([1e-6, 0.5]), np.array([[1.0], [2.0]]), 0.1
    ct = StateSpace(A[None], B[None], np.ones((1, 1, 2)), np.zeros((1, 1, 1)), dt=dt).to_continuous()
    np.testing.assert_allclose(np.sort(ct.poles()[0].real), np.log([1e-6, 0.5]) / dt, rtol=1e-12)
    Phi = scipy.linalg.expm(dt * np.block([[ct.A[0], ct.B[0]], [np.zeros((1, 3))]]))
    np.testing.assert_allclose(Phi[:2], np.concatenate([A, B], 1), rtol=0, atol=1e-13)


def test_to_discrete_checks_dt_before_sampling():
    """Kills a dropped ``check_sampling_time`` in ``to_discrete`` (the constructor checks dt again, after the sampling):
    a string dt met numpy's UFuncTypeError inside expm, not the ValueError naming dt."""
    ct = StateSpace.from_continuous(np.array([[[-1.0]]]), np.ones((1, 1, 1)), np.ones((1, 1, 1)), np.zeros((1, 1, 1)))
    for method in ("zoh", "bilinear"):
        with pytest.raises(ValueError, match=r"dt must be the sampling time in seconds, a finite number > 0; got '0.1'"):
            ct.to_discrete("0.1", method)
    np.testing.assert_allclose(ct.to_discrete(0.1).A[0, 0, 0], np.exp(-0.1), rtol=1e-15)


def test_continuous_hinf_of_an_integrator_or_an_unstable_system_is_inf():
    """Kills taking every system's Tustin image in `hinf_norm` (not the stable ones only): 1/s and 1/(s − 1) have
    no finite H∞ norm (inf; the image of s = 0 needs dt = 2/0, that of s = 1 sits at 2/dt), 1/(s + 1) has 1."""
    bank = StateSpace.from_continuous(np.array([[[0.0]], [[-1.0]], [[1.0]]]), np.ones((3, 1, 1)),
                                      np.ones((3, 1, 1)), np.zeros((3, 1, 1)))
    np.testing.assert_allclose(bank.hinf_norm(), [np.inf, 1.0, np.inf], rtol=1e-10)
    np.testing.assert_allclose(bank.hinf_bounds()[[0, 2]], np.inf)


# ------------------------------------------------------------------------------------------------------------------
# reduction.py, continuous time


def test_the_refusal_names_the_rightmost_pole_of_a_system_with_several():
    """Kills min for max in the refusal's 'max Re s' (the existing test has one state a system): poles −2 and 0.5."""
    A = np.array([[[-2.0, 1.0], [0.0, 0.5]]])
    bank = StateSpace.from_continuous(A, np.ones((1, 2, 1)), np.ones((1, 1, 2)), np.zeros((1, 1, 1)))
    with pytest.raises(ValueError, match=r"not stable: system 0 \(max Re s = 0\.5\)$"):
        bank.gram("c")


def test_continuous_gramians_of_a_bank_solved_in_passes_match_scipy(monkeypatch):
    """Kills a swapped ``adjoint`` in `solve_lyapunov`'s passes over a large bank (the existing pass test covers
    `solve_stein` only): with two systems a pass, each Gramian solves its own Lyapunov equation (scipy)."""
    rng = np.random.default_rng(5)
    G, n = 5, 4
    A = rng.standard_normal((G, n, n))
    A -= (np.linalg.eigvals(A).real.max(1) + 0.5)[:, None, None] * np.eye(n)
    bank = StateSpace.from_continuous(A, rng.standard_normal((G, n, 2)), rng.standard_normal((G, 3, n)),
                                      np.zeros((G, 3, 2)))
    monkeypatch.setattr(reduction, "_CHUNK_ELEMENTS", 2 * n * n)  # passes of 2, 2 and 1 systems
    Wc, Wo = reduction.gramians(bank)
    for g in range(G):
        P = scipy.linalg.solve_continuous_lyapunov(A[g], -bank.B[g] @ bank.B[g].T)
        Q = scipy.linalg.solve_continuous_lyapunov(A[g].T, -bank.C[g].T @ bank.C[g])
        np.testing.assert_allclose(Wc[g], P, rtol=0, atol=1e-10 * np.abs(P).max())
        np.testing.assert_allclose(Wo[g], Q, rtol=0, atol=1e-10 * np.abs(Q).max())


def test_continuous_balanced_truncation_refuses_an_order_past_the_numerical_order():
    """Kills a zero rounding floor in `balanced_truncation`: A = diag(−1, −2, −3) with its third state all but
    uncontrollable (B = (1, 1, 1e-15)): σ_3 > 0 (a minimal system) but σ_3 <= σ_1 of 1e-15/(s + 3) = 1e-15/6 (Weyl's
    inequality for the Hankel operator), below the rounding level n eps σ_1, so the numerical order is 2 and order 3
    is refused (it would divide by σ_3); σ_1, σ_2 from the closed-form Gramians b_i b_j / −(a_i + a_j) and
    c_i c_j / −(a_i + a_j); order 2 keeps the DC gain 1/1 + 1/2."""
    a, b = np.array([-1.0, -2.0, -3.0]), np.array([1.0, 1.0, 1e-15])
    bank = StateSpace.from_continuous(np.diag(a)[None], b[None, :, None], np.ones((1, 1, 3)), np.zeros((1, 1, 1)))
    P, Q = np.outer(b, b) / -(a[:, None] + a[None, :]), 1 / -(a[:, None] + a[None, :])
    exact = np.sqrt(np.sort(np.abs(np.linalg.eigvals(P @ Q)))[::-1])
    assert 1e-15 / 6 < 3 * np.finfo(np.float64).eps * exact[0]
    np.testing.assert_allclose(bank.hsvd()[0, :2], exact[:2], rtol=1e-12)
    with pytest.raises(ValueError, match=r"order 3 exceeds the numerical order of system 0 \(2: .*supports order <= 2"):
        bank.balred(3)
    np.testing.assert_allclose(bank.balred(2).dcgain()[0, 0, 0], 1.5, rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# ContinuousWiener


def test_continuous_wiener_operating_point_refuses_a_block_with_an_exact_integrator():
    """Kills a dropped integrator check in ``ContinuousWiener.operating_point``: a DLR block with a mode λ = e^0 = 1
    (a = b = 0) has a continuous pole s = 0 (scipy's logarithm of that block is 0), so no unique equilibrium: a
    ValueError naming the block, not torch's singular-matrix error. A slow mode is not refused: its equilibrium output
    is the discrete model's (Newton on the sampled model), where f = 0."""
    from ssmkit.analysis.nonlinear import ContinuousWiener, NonlinearSystem
    from ssmkit.sysid.wiener import DeepWiener

    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer="dlr", layer_options={"d_state": 4}, dt=0.5).double()
    with torch.no_grad():
        model.layers[0].A_sqrt_neg_real[0] = 0.0
        model.layers[0].A_imag[0] = 0.0
    flow = ContinuousWiener(model)
    assert np.abs(np.linalg.eigvals(flow.blocks[0].A[0])).min() <= 1e-12
    with pytest.raises(ValueError, match=r"operating_point: block 0 has a pole at s = 0 \(an integrator\)"):
        flow.operating_point(0.3)
    with torch.no_grad():  # a slow mode, s = −a²/dt = −8e-4 per second, is no integrator (kills a threshold of 1e-3)
        model.layers[0].A_sqrt_neg_real[0] = 0.02
    slow = ContinuousWiener(model)
    x_star, y_star, _ = slow.operating_point(0.3)
    np.testing.assert_allclose(y_star, NonlinearSystem(model).equilibrium(0.3)[1], rtol=1e-9)  # the discrete one
    np.testing.assert_allclose(slow.derivative(x_star, 0.3), 0.0, atol=1e-10)


def test_continuous_wiener_leaves_the_model_it_was_given_as_it_was():
    """Kills converting the model itself rather than a copy in ``ContinuousWiener``: a float32 model in training
    mode stays float32, trainable and in training mode (the flow is float64 and frozen), and a later change to the
    model's weights does not change the flow's derivative."""
    from ssmkit.analysis.nonlinear import ContinuousWiener
    from ssmkit.sysid.wiener import DeepWiener

    torch.manual_seed(1)
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer="s4d", layer_options={"d_state": 2}, dt=0.5).train()
    flow = ContinuousWiener(model)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters()) and model.training
    x = np.random.default_rng(0).standard_normal(flow.n_states)
    before = flow.derivative(x, 0.4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    np.testing.assert_array_equal(flow.derivative(x, 0.4), before)


# ------------------------------------------------------------------------------------------------------------------
# lengths: SequenceModel's token inputs, the objective's pooled outputs, the batch forms


def test_token_inputs_refuse_bad_lengths_as_real_inputs_do():
    """Kills a dropped ``check_lengths`` on the token path of ``SequenceModel._encode``: lengths past L, of 0, or
    real-valued were taken silently (t < 7 keeps all of 6 steps); each is refused naming what was expected, and good
    lengths give each item the answer of its unpadded ids alone."""
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(1, 4, 1, "s4d", {"d_state": 4, "bidirectional": True}, 2, vocab_size=7, pool="mean",
                          dtype=F64, device=DEVICE).eval()
    tokens = torch.tensor([[3, 1, 4, 1, 5, 6], [2, 6, 5, 1, 2, 3]], device=DEVICE)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, L = 6\] .*; found 2 to 7"):
        model(tokens, lengths=torch.tensor([7, 2], device=DEVICE))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, L = 6\] .*; found 0 to 6"):
        model(tokens, lengths=torch.tensor([6, 0], device=DEVICE))
    with pytest.raises(ValueError, match=r"lengths must be an integer tensor \(2,\) .*; got a tensor of torch.float64"):
        model(tokens, lengths=torch.tensor([6.0, 2.0], dtype=F64, device=DEVICE))
    with pytest.raises(ValueError, match=r"lengths must be an integer tensor \(2,\) .*; got a tensor of torch.complex64"):
        model(tokens, lengths=torch.tensor([6, 2], dtype=torch.complex64, device=DEVICE))  # kills a dropped is_complex
    with torch.no_grad():
        out = model(tokens, return_state=False, lengths=torch.tensor([6, 2], device=DEVICE))[0]
        for b, n in enumerate((6, 2)):
            alone = model(tokens[b:b + 1, :n], return_state=False)[0][0]
            assert torch.allclose(out[b], alone, rtol=1e-12, atol=1e-12)


def test_a_pooled_regression_is_scored_whole_whatever_the_lengths():
    """Kills masking a pooled (B, d_output) output by the lengths (``_within`` for dim < 2, and ``scored_count``'s
    per-step test for regress y.dim() >= 2): one target a sequence, so every one of the B·d values counts (numpy
    sums), with lengths shorter than d_output too."""
    from ssmkit.train.objective import scored_count, summed_loss_and_metric

    g = torch.Generator().manual_seed(0)
    out, y = (torch.randn(3, 4, generator=g, dtype=F64) for _ in range(2))
    lengths = torch.tensor([1, 2, 9])
    loss, metric, count = summed_loss_and_metric("regress", out, y, lengths)
    reference = float(((out.numpy() - y.numpy()) ** 2).sum())
    assert loss.item() == pytest.approx(reference, rel=1e-14) and metric.item() == pytest.approx(reference, rel=1e-14)
    assert count.item() == 12.0
    assert scored_count("regress", y, lengths).item() == 12.0


def test_a_bool_third_entry_is_not_read_as_lengths():
    """Kills ``is_lengths`` taking bool tensors: lengths are integers "bool aside", so a (B, L) bool padding mask in a
    batch's third place is not lengths (it goes where intervals go, which the model refuses as not real)."""
    from ssmkit.train.batches import is_lengths, unpack_batch

    x, y = torch.zeros(2, 5, 1), torch.zeros(2, 5, 1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert not is_lengths(mask) and not is_lengths(torch.tensor([True, False]))
    assert is_lengths(torch.tensor([5, 3])) and is_lengths(torch.tensor([5, 3], dtype=torch.uint8))
    _, _, intervals, lengths = unpack_batch((x, y, mask))
    assert intervals is mask and lengths is None
