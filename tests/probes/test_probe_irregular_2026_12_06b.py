"""Probe of irregular sampling from a user's side (2026-12-06, second round): what gave silently wrong answers.

- An irregularly sampled record whose nominal ``dt`` is not the model's (another file's median gap, arrays given
  their own Ts) was simulated with its intervals in units of its *own* dt, i.e. at times stretched by the ratio of the
  two periods (a simulation 5.2 off an output of 3.6 at a ratio of 2). The intervals are now in the model's periods.
- Sample times given as float32 (torch's default for ``torch.tensor(list)``) had lost their gaps before the record
  saw them (5.7 % at 1 ms gaps around t = 1 000 s) and were accepted; they are now refused when the rounding may move
  a gap by more than 1e-4 of the smallest one.

References: scipy's matrix exponential of the second-order oracle of tests/sysid/test_irregular_records.py, numpy
gaps in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ssmkit.sysid.fit import simulate_record
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.userdata import from_arrays
from tests.sysid.test_irregular_records import TS, A, B, C, irregular_record, realisation


def oracle(gaps: np.ndarray, u: np.ndarray) -> np.ndarray:
    """y (L, 1) of the continuous oracle from rest, u_k held over gaps[k] seconds (scipy's expm of [[A, B], [0, 0]])."""
    x, ys = np.zeros(2), []
    for gap, u_k in zip(gaps, u):
        m = scipy.linalg.expm(np.block([[A, B], [np.zeros((1, 3))]]) * gap)
        x = m[:2, :2] @ x + m[:2, 2] * u_k
        ys.append(C @ x)
    return np.array(ys)


@pytest.mark.parametrize("ratio", [2.0, 0.5])
def test_a_record_with_another_nominal_period_is_simulated_at_its_real_times(ratio):
    model, _ = realisation()  # one S4D block that is the oracle at the model's dt = TS
    r = irregular_record(0, 60, "r")
    other = IORecord(r.u, r.y, ratio * TS, "other", t=r.t)  # the same times, a nominal period of ratio · TS
    t, u = r.t.numpy(), r.u[:, 0].numpy()
    with torch.no_grad():
        y_sim, start = simulate_record(model, other)
    assert start == 0
    # from rest one of the record's nominal periods (ratio · TS) before its first sample, then the real gaps
    np.testing.assert_allclose(y_sim.numpy(), oracle(np.r_[ratio * TS, np.diff(t)], u), rtol=0, atol=1e-10)


def test_float32_stamps_that_lost_their_gaps_are_refused():
    rng = np.random.default_rng(0)
    t = 1000.0 + np.cumsum(rng.uniform(0.5, 1.5, 50) * 1e-3)  # a logger's clock: ~1 ms gaps around 1 000 s
    u, y = torch.randn(50, 1, dtype=torch.float64), torch.randn(50, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"record 'r': t is torch.float32: .* give the times as float64"):
        IORecord(u, y, 1e-3, "r", t=torch.tensor(t, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"t: t is float32: .* give the times as float64"):
        from_arrays(u, y, None, t=t.astype(np.float32))
    exact = IORecord(u[:5], y[:5], 0.5, "e", t=torch.tensor([0.0, 1.0, 2.5, 3.0, 4.0]))  # float32, exact stamps pass
    np.testing.assert_array_equal(exact.intervals.numpy(), [1.0, 2.0, 3.0, 1.0, 2.0])
    r = IORecord(u, y, 1e-3, "r", t=torch.tensor(t))  # float64: the gaps as numpy computes them
    np.testing.assert_allclose(r.intervals[1:].numpy(), np.diff(t) / 1e-3, rtol=1e-15, atol=0)
