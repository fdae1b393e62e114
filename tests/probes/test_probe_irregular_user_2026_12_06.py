"""New-user probe of irregular sampling and system identification (2026-12-06): silent wrong answers and unclear
usage found by a control engineer running the documented paths on their own data and on Cascaded Tanks.

- ``predict_one_step`` and ``free_run`` ran an irregularly sampled record sample by sample and ignored its times
  (the one-step record dropped ``t``, the free run stepped without ``interval``); they now refuse it, as ``evaluate``
  already did for a predictor.
- ``simulate_periodic`` (``evaluate(..., steady_state=k)``) ran a record at another rate than the model's ``dt`` in
  samples, at the model's rate, while the official score of the same record ran at its real times (0.05 off on
  an untrained model at a ratio of 2); it now uses the constant intervals Ts / dt too.
- ``model.dt = Ts`` (what ``to_control``'s message advised) was a plain attribute: the repr and the checkpoint kept
  the constructor's dt, so the loaded model simulated the same records with intervals scaled by the ratio.
- ``init_from_data`` wrote poles estimated per record sample into a model at another ``dt`` (continuous poles twice
  too fast at a ratio of 2), and ``subspace_poles`` / ``arx_poles`` read irregularly sampled records as if uniform
  (Re s −0.47 for −0.30); both now refuse.
- ``from_csv(time=, irregular=True)`` / ``ssmkit sysid --time --irregular`` could not take the logger's period as the
  nominal Ts (the median gap is a multiple of it once most samples are dropped: 8 s for Cascaded Tanks' 4 s with
  60 % dropped); ``dt`` / ``--dt`` now may be given with them. A non-uniform time column's error now names
  ``irregular=True``.

References: the continuous second-order oracle of tests/sysid/test_irregular_records.py sampled by scipy's matrix
exponential, its periodic steady state in closed form, numpy's gaps.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.fit import simulate_record
from ssmkit.sysid.init import arx_poles, init_from_data, subspace_poles
from ssmkit.sysid.prediction import free_run, predict_one_step, prediction_record
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.userdata import from_csv
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import simulate_periodic
from tests.sysid.test_irregular_records import TS, A, B, C, F64, irregular_record, realisation, sampled


def _zoh(gap: float) -> tuple[np.ndarray, np.ndarray]:
    """(Ā, B̄) of the oracle sampled with its input held over ``gap`` seconds (scipy's expm of [[A, B], [0, 0]])."""
    m = scipy.linalg.expm(np.block([[A, B], [np.zeros((1, 3))]]) * gap)
    return m[:2, :2], m[:2, 2]


def test_predictors_refuse_irregularly_sampled_records():
    torch.manual_seed(0)
    predictor = DeepWiener(2, 1, d_model=2, n_layers=1, layer_options={"d_state": 2}, dt=TS, dtype=F64)
    record = irregular_record(0, 40, "log")
    for run in (lambda: predict_one_step(predictor, record), lambda: free_run(predictor, record, 5),
                lambda: prediction_record(record)):
        with pytest.raises(ValueError, match=r"records \['log'\] are irregularly sampled \(IORecord.t\)"):
            run()
    # the same samples as a regular record still run, and the free run's first steps read the measurement
    regular = IORecord(record.u, record.y, TS, "regular")
    y = free_run(predictor, regular, 5)
    np.testing.assert_array_equal(y[:5].numpy(), record.y[:5].numpy())


def test_the_periodic_steady_state_of_a_record_at_another_rate_is_at_its_real_times():
    model, _ = realisation()  # one S4D block that is the oracle at the model's dt = TS
    ratio, period, n_periods = 2.0, 25, 2
    rng = np.random.default_rng(3)
    one = np.repeat(rng.standard_normal(period // 5), 5)  # one period of held levels
    u = np.tile(one, n_periods)
    record = IORecord(torch.tensor(u[:, None]), torch.zeros(u.size, 1, dtype=F64), ratio * TS, "multisine",
                      period=period)
    # closed form: x* = (I - Ā^P)^{-1} Σ_k Ā^{P-1-k} B̄ u_k at gaps of ratio·TS, then one pass from x*
    a_d, b_d = _zoh(ratio * TS)
    drive = np.zeros(2)
    for u_k in one:
        drive = a_d @ drive + b_d * u_k
    x = np.linalg.solve(np.eye(2) - np.linalg.matrix_power(a_d, period), drive)
    want = []
    for u_k in u:
        x = a_d @ x + b_d * u_k
        want.append(C @ x)
    # 12 primed periods of 5 s: the transient (decay 0.75/s) is e^-45 of itself
    got = simulate_periodic(model, record, prime=12)
    np.testing.assert_allclose(got.numpy(), np.array(want), rtol=0, atol=1e-10)
    # at the model's rate it is unchanged (no intervals): the same closed form at gaps of TS
    at_rate = IORecord(record.u, record.y, TS, "at rate", period=period)
    a_d, b_d = _zoh(TS)
    drive = np.zeros(2)
    for u_k in one:
        drive = a_d @ drive + b_d * u_k
    x = np.linalg.solve(np.eye(2) - np.linalg.matrix_power(a_d, period), drive)
    want = []
    for u_k in u:
        x = a_d @ x + b_d * u_k
        want.append(C @ x)
    np.testing.assert_allclose(simulate_periodic(model, at_rate, prime=25).numpy(), np.array(want), rtol=0, atol=1e-9)


def test_an_assigned_dt_is_what_the_checkpoint_keeps():
    model, _ = realisation()  # the oracle at one model period per TS
    model.dt = 2 * TS  # re-labelled: each sample now one model period of 0.2 s
    assert "dt=0.2" in repr(model)
    buffer = io.BytesIO()
    torch.save(model.checkpoint(), buffer)
    buffer.seek(0)
    loaded = DeepWiener.from_checkpoint(torch.load(buffer, weights_only=True))
    assert loaded.dt == 2 * TS
    rng = np.random.default_rng(4)
    u = np.repeat(rng.standard_normal(10), 4)
    record = IORecord(torch.tensor(u[:, None]), torch.zeros(u.size, 1, dtype=F64), 2 * TS, "at 0.2 s")
    with torch.no_grad():
        y, _ = simulate_record(loaded, record)
    # one model period per sample: the oracle sampled every TS in its own time (it was at 2x the ratio: gaps 2 TS)
    want, _ = sampled(np.arange(u.size) * TS, u)
    np.testing.assert_allclose(y.numpy(), want, rtol=0, atol=1e-10)
    # an ensemble's dt is its members'
    ensemble = WienerEnsemble([realisation()[0], realisation()[0]])
    ensemble.dt = 0.5
    assert [m.dt for m in ensemble.members] == [0.5, 0.5]
    again = WienerEnsemble.from_checkpoint(ensemble.checkpoint())
    assert again.dt == 0.5 and [m.dt for m in again.members] == [0.5, 0.5]


def _linear_record(dt: float, length: int = 1500, seed: int = 5) -> IORecord:
    """The oracle sampled every ``dt`` from white noise held over each gap (noise-free, linear)."""
    u = np.random.default_rng(seed).standard_normal(length)
    a_d, b_d = _zoh(dt)
    x, y = np.zeros(2), []
    for u_k in u:
        x = a_d @ x + b_d * u_k
        y.append(C @ x)
    return IORecord(torch.tensor(u[:, None]), torch.tensor(np.array(y)), dt, f"every {dt} s")


def test_data_initialisation_refuses_records_at_another_rate_or_irregular():
    lam = np.linalg.eigvals(A)
    slow = lam[np.argmax(lam.imag)]
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 4}, dt=TS, dtype=F64)
    written = init_from_data(model, [_linear_record(TS)], order=2)
    # at the model's rate: the written mode is the oracle's pole e^{λ TS}
    assert abs(written[0] - np.exp(slow * TS)) < 1e-6
    with pytest.raises(ValueError, match=r"the model samples every dt = 0.1 s but record 'every 0.2 s' every Ts = 0.2"):
        init_from_data(model, [_linear_record(2 * TS)], order=2)
    log = irregular_record(1, 300, "log")
    for estimate in (subspace_poles, arx_poles):
        with pytest.raises(ValueError, match=r"records \['log'\] are irregularly sampled"):
            estimate([log], 2)
    with pytest.raises(ValueError, match="every record must be sampled at one Ts"):
        subspace_poles([_linear_record(TS), _linear_record(2 * TS)], 2)
    # the estimate per record sample is right at either rate (what the refusal protects: z per the record's Ts)
    z = subspace_poles([_linear_record(2 * TS)], 2)
    assert abs(z[np.argmax(z.imag)] - np.exp(slow * 2 * TS)) < 1e-6


def _irregular_csv(path, seed: int = 7, length: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The oracle at gaps of 1, 2 or 3 logger periods TS (most samples missing: median gap 2 TS), as t,u,y."""
    rng = np.random.default_rng(seed)
    t = 1.0 + np.cumsum(TS * rng.choice([1, 2, 2, 2, 3], length))
    u = np.repeat(rng.standard_normal(length // 4 + 1), 4)[:length]
    y = sampled(t, u)[0][:, 0]
    path.write_text("t,u,y\n" + "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in zip(t.tolist(), u.tolist(), y.tolist())))
    return t, u


def test_an_irregular_csv_takes_the_loggers_period_as_its_nominal_ts(tmp_path):
    path = tmp_path / "log.csv"
    t, u = _irregular_csv(path)
    median = from_csv(path, "u", "y", time="t", irregular=True)
    assert median.dt == pytest.approx(2 * TS, rel=1e-12)  # the median gap: twice the logger's period
    bench = from_csv(path, "u", "y", dt=TS, time="t", irregular=True)
    assert bench.dt == TS
    record = bench.train[0]
    cut = len(record)
    np.testing.assert_allclose(record.intervals.numpy(), np.r_[1.0, np.diff(t[:cut]) / TS], rtol=1e-12, atol=0)
    model, _ = realisation()  # the oracle at dt = TS: the records are simulated at their real times
    with torch.no_grad():
        y, _ = simulate_record(model, record)
    np.testing.assert_allclose(y.numpy(), sampled(t[:cut], u[:cut])[0], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="one of the two; got dt=0.1, time='t'"):
        from_csv(path, "u", "y", dt=TS, time="t")  # both only with irregular=True
    with pytest.raises(ValueError, match=r"is not uniformly sampled.*from_csv\(\.\.\., irregular=True\)"):
        from_csv(path, "u", "y", time="t")


def test_the_command_takes_dt_as_the_nominal_ts_of_an_irregular_time_column(tmp_path):
    from ssmkit.cli import main

    torch.set_num_threads(1)
    path = tmp_path / "log.csv"
    _irregular_csv(path, length=120)
    out = tmp_path / "run"
    small = ["--steps", "1", "--recipe.d_model", "2", "--recipe.n_layers", "1", "--recipe.d_state", "4",
             "--recipe.window", "16", "--no-plots"]
    assert main(["sysid", "--data", str(path), "--inputs", "u", "--outputs", "y", "--time", "t", "--irregular",
                 "--dt", "0.1", *small, "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["data"]["dt"] == 0.1
    assert torch.load(out / "model.pt", weights_only=True)["deep_wiener"]["dt"] == 0.1
    stamps = np.loadtxt(path, delimiter=",", skiprows=1)[:, 0]
    assert not math.isclose(float(np.median(np.diff(stamps))), 0.1)  # what Ts was without --dt
