"""Tustin's map with frequency prewarping (``StateSpace.to_discrete`` / ``to_continuous``, ``prewarp_frequency=``)
against python-control's ``sample_system(..., "bilinear", prewarp_frequency=ω)`` and the closed form of a frequency
response, H(s) = C (sI − A)⁻¹ B + D, evaluated by numpy: prewarped at ω, the discrete response at e^{jω dt} equals
the continuous one at jω exactly (the plain map warps ω to (2/dt) tan(ω dt/2))."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssmkit.analysis import StateSpace

control = pytest.importorskip("control")

DT = 0.1


def _bank(seed: int = 0, G: int = 3, n: int = 4, m: int = 2, p: int = 2) -> StateSpace:
    """G stable continuous systems with lightly damped modes near 5-20 rad/s (where Tustin's warping shows at dt 0.1)."""
    rng = np.random.default_rng(seed)
    A = np.empty((G, n, n))
    for g in range(G):
        blocks = []
        for _ in range(n // 2):
            w, zeta = rng.uniform(5, 20), rng.uniform(0.02, 0.2)
            blocks.append(np.array([[-zeta * w, w], [-w, -zeta * w]]))
        T = rng.standard_normal((n, n)) + 3 * np.eye(n)
        A[g] = T @ np.block([[blocks[0], np.zeros((2, 2))], [np.zeros((2, 2)), blocks[1]]]) @ np.linalg.inv(T)
    return StateSpace.from_continuous(A, rng.standard_normal((G, n, m)), rng.standard_normal((G, p, n)),
                                      rng.standard_normal((G, p, m)))


def _response(A, B, C, D, s: complex) -> np.ndarray:
    return C @ np.linalg.solve(s * np.eye(A.shape[0]) - A, B) + D


@pytest.mark.parametrize("w", [1.0, 12.0, 30.0])
def test_prewarped_tustin_equals_python_control(w):
    bank = _bank()
    sampled = bank.to_discrete(DT, "bilinear", prewarp_frequency=w)
    assert sampled.dt == DT
    for g in range(bank.nsystems):
        ref = control.sample_system(control.ss(bank.A[g], bank.B[g], bank.C[g], bank.D[g]), DT, method="bilinear",
                                    prewarp_frequency=w)
        for got, want in zip((sampled.A[g], sampled.B[g], sampled.C[g], sampled.D[g]), (ref.A, ref.B, ref.C, ref.D)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_prewarped_response_is_exact_at_the_frequency_and_the_plain_map_is_not():
    bank, w = _bank(seed=1), 12.0
    warped = bank.to_discrete(DT, "bilinear", prewarp_frequency=w)
    plain = bank.to_discrete(DT, "bilinear")
    z = np.exp(1j * w * DT)
    for g in range(bank.nsystems):
        want = _response(bank.A[g], bank.B[g], bank.C[g], bank.D[g], 1j * w)
        got = _response(warped.A[g], warped.B[g], warped.C[g], warped.D[g], z)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        off = np.abs(_response(plain.A[g], plain.B[g], plain.C[g], plain.D[g], z) - want).max()
        assert off > 1e-2 * np.abs(want).max()  # what prewarping corrects at this ω dt = 1.2


def test_prewarped_to_continuous_inverts_to_discrete_and_matches_at_the_frequency():
    bank, w = _bank(seed=2), 20.0
    sampled = bank.to_discrete(DT, "bilinear", prewarp_frequency=w)
    back = sampled.to_continuous("bilinear", prewarp_frequency=w)
    assert back.is_continuous
    for M, M0 in ((back.A, bank.A), (back.B, bank.B), (back.C, bank.C), (back.D, bank.D)):
        np.testing.assert_allclose(M, M0, rtol=1e-9, atol=1e-9)
    # a discrete bank from elsewhere: its prewarped continuous image responds at jω as it does at e^{jω dt}
    disc = StateSpace(sampled.A, sampled.B, sampled.C, sampled.D, dt=DT)
    cont = disc.to_continuous("bilinear", prewarp_frequency=5.0)
    for g in range(disc.nsystems):
        want = _response(disc.A[g], disc.B[g], disc.C[g], disc.D[g], np.exp(5j * DT))
        got = _response(cont.A[g], cont.B[g], cont.C[g], cont.D[g], 5j)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_no_prewarp_is_the_plain_map():
    bank = _bank(seed=3)
    a, b = bank.to_discrete(DT, "bilinear"), bank.to_discrete(DT, "bilinear", prewarp_frequency=None)
    np.testing.assert_array_equal(a.A, b.A)
    # a tiny ω warps by (ω dt)²/12 only
    c = bank.to_discrete(DT, "bilinear", prewarp_frequency=1e-4)
    np.testing.assert_allclose(c.A, a.A, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.pi / DT, 1e6, float("nan"), float("inf"), True, "10", 1j])
def test_a_frequency_outside_the_nyquist_band_is_refused(bad):
    bank = _bank()
    with pytest.raises(ValueError, match=r"prewarp_frequency must be a frequency in rad/s in \(0, π/dt\)"):
        bank.to_discrete(DT, "bilinear", prewarp_frequency=bad)
    with pytest.raises(ValueError, match=r"prewarp_frequency must be"):
        bank.to_discrete(DT, "bilinear").to_continuous("bilinear", prewarp_frequency=bad)


def test_prewarp_with_zoh_is_refused():
    bank = _bank()
    with pytest.raises(ValueError, match=r"prewarp_frequency is a Tustin \('bilinear'\) option; method='zoh'"):
        bank.to_discrete(DT, "zoh", prewarp_frequency=3.0)
    with pytest.raises(ValueError, match=r"prewarp_frequency is a Tustin"):
        bank.to_discrete(DT, "bilinear").to_continuous("zoh", prewarp_frequency=3.0)
