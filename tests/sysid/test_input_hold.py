"""Which input acts over the gap before sample k (``IORecord.held_previous``, ``from_arrays``/``from_csv(hold=)``):
the models hold u_k over (t_{k-1}, t_k]; commands applied at the sample times by an actuator's zero-order hold act
with u_{k-1} there. Checked against scipy's exact sampling of a continuous second-order system driven that way."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ssmkit.sysid.fit import simulate_record
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.userdata import from_arrays, from_csv
from tests.sysid.test_irregular_records import TS, A, B, C, realisation, write_csv

F64 = torch.float64


def actuated(t: np.ndarray, u: np.ndarray) -> np.ndarray:
    """y (L, 1) of the system at the times t, each command u_k applied at t_k and held until t_{k+1} (from rest one
    Ts before t_0 with the command u_0): the state at t_k is driven by u_{k-1} over (t_{k-1}, t_k]."""
    x, ys = np.zeros(2), []
    gaps = np.r_[TS, np.diff(t)]
    held = np.r_[u[0], u[:-1]]
    for gap, u_k in zip(gaps, held):
        m = scipy.linalg.expm(np.block([[A, B], [np.zeros((1, 3))]]) * gap)
        x = m[:2, :2] @ x + m[:2, 2] * u_k
        ys.append(C @ x)
    return np.array(ys)


def _log(seed: int = 0, length: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = 2.0 + np.cumsum(TS * rng.uniform(0.2, 3.0, length))
    u = rng.standard_normal(length)  # a new command at every sample: the hold matters at every gap
    return t, u, actuated(t, u)


def test_held_previous_shifts_the_inputs_by_one_sample_and_keeps_the_rest():
    t, u, y = _log()
    r = IORecord(torch.tensor(u[:, None]), torch.tensor(y), TS, "log", t=torch.tensor(t))
    h = r.held_previous()
    assert torch.equal(h.u[1:], r.u[:-1]) and torch.equal(h.u[0], r.u[0])
    assert torch.equal(h.y, r.y) and torch.equal(h.t, r.t) and h.dt == r.dt and h.name == r.name


def test_commands_held_from_their_sample_are_simulated_exactly_with_hold_previous():
    """The oracle model simulates from_arrays(hold="previous") records as scipy samples the actuated system (1e-10,
    train and test records); as given (hold "sample") the same data are far off."""
    model, _ = realisation()
    t, u, y = _log()
    split = 60
    errors = {}
    for hold in ("previous", "sample"):
        bench = from_arrays(u[:split], y[:split], TS, t=t[:split], test=(u[split:], y[split:], t[split:]),
                            hold=hold)
        train, test = bench.train[0], bench.test[0]
        with torch.no_grad():
            y_train, _ = simulate_record(model, train)
        errors[hold] = float((y_train - train.y).abs().max())
        if hold == "previous":  # the test record starts from rest one Ts before its first sample, driven by u_0
            want = actuated(t[split:], u[split:])
            with torch.no_grad():
                y_test, _ = simulate_record(model, test)
            assert np.abs(y_test.numpy() - want).max() < 1e-10
    assert errors["previous"] < 1e-10
    assert errors["sample"] > 0.05


def test_from_csv_holds_every_record_and_refuses_an_unknown_hold(tmp_path):
    t, u, y = _log(1, 60)
    path = tmp_path / "log.csv"
    write_csv(path, t, u, y[:, 0])
    bench = from_csv(path, "u", "y", time="t", irregular=True, hold="previous")
    plain = from_csv(path, "u", "y", time="t", irregular=True)
    for held, given in zip(bench.train + bench.test, plain.train + plain.test):
        assert torch.equal(held.t, given.t)
    # the whole log held before the tail is split off: the test record starts with the known command u_{cut-1}
    held = torch.cat([r.u for r in bench.train + bench.test])[:, 0].numpy()
    assert np.array_equal(held, np.concatenate([u[:1], u[:-1]]))
    assert held[len(bench.train[0])] == u[len(bench.train[0]) - 1]
    assert "held from its sample" in bench.notes
    for bad in ("next", None, 1):
        with pytest.raises(ValueError, match="hold must be one of"):
            from_csv(path, "u", "y", time="t", irregular=True, hold=bad)
        with pytest.raises(ValueError, match="hold must be one of"):
            from_arrays(u, y, TS, t=t, hold=bad)


def test_from_arrays_holds_each_experiment_before_the_split():
    """Found by a mutation probe: the tail split came first, so the test record's first input was its own u_cut
    (unknown over the gap before it), not u_{cut-1}; a separate test experiment is held on its own."""
    u = np.arange(1.0, 11.0)
    bench = from_arrays(u, np.zeros(10), 0.1, hold="previous", n_init=0)
    assert bench.train[0].u[:, 0].tolist() == [1, 1, 2, 3, 4, 5, 6, 7]
    assert bench.test[0].u[:, 0].tolist() == [8, 9]
    other = from_arrays(u, np.zeros(10), 0.1, test=(u[:4] + 20, np.zeros(4)), hold="previous", n_init=0)
    assert other.train[0].u[:, 0].tolist() == [1, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert other.test[0].u[:, 0].tolist() == [21, 21, 22, 23]


def test_the_command_reads_held_commands_and_says_so(tmp_path, capsys):
    """ssmkit sysid --hold previous: the test RMSE in results.json is that of the saved model simulating the held
    inputs (u_{k-1} at sample k) at the sample times; --hold goes with --data only."""
    import json

    from ssmkit.cli import main
    from ssmkit.sysid import DeepWiener
    from tests.sysid.test_irregular_workflow import SMALL

    torch.set_num_threads(1)
    t, u, y = _log(2, 300)
    path = tmp_path / "log.csv"
    write_csv(path, t, u, y[:, 0])
    out = tmp_path / "run"
    assert main(["sysid", "--data", str(path), "--inputs", "u", "--outputs", "y", "--time", "t", "--irregular",
                 "--hold", "previous", *SMALL, "--out", str(out), "--no-plots"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["hold"] == "previous"
    model = DeepWiener.from_checkpoint(torch.load(out / "model.pt", weights_only=True))
    bench = from_csv(path, "u", "y", time="t", irregular=True, hold="previous")
    with torch.no_grad():
        y_sim, n = simulate_record(model, bench.test[0])
    rmse = float((y_sim - bench.test[0].y)[n:].square().mean().sqrt())
    assert res["test"][0]["rmse"][0] == pytest.approx(rmse, rel=1e-5)
    capsys.readouterr()
    assert main(["sysid", "--benchmark", "cascaded_tanks", "--hold", "previous", *SMALL,
                 "--out", str(tmp_path / "never")]) == 2
    assert "--hold describe your own data and go with --data" in capsys.readouterr().err
