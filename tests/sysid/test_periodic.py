"""The periodic-steady-state score (``workflow.periodic_steady_state``, ``evaluate(..., steady_state=k)``): against a
stable linear system simulated by scipy.signal.dlsim in float64 and its steady state in closed form, bad input, and
the report's two rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

from ssmkit.sysid.metrics import rmse
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.report import results_table
from ssmkit.sysid.workflow import build_model, evaluate, periodic_steady_state, simulate_periodic
from ssmkit.sysid.recipes import Recipe

P = 200  # samples per period
# a stable 2-state system: a resonant pair at |z| = 0.8 (transient after one period: 0.8^200 ≈ 4e-20)
A = np.array([[1.2, -0.64], [1.0, 0.0]])
B = np.array([[1.0], [0.0]])
C = np.array([[0.3, 0.5]])
D = np.array([[0.1]])


def dlsim(u: torch.Tensor) -> torch.Tensor:
    """The system from rest: (L, 1) -> (L, 1), float64 (scipy.signal.dlsim)."""
    _, y, _ = signal.dlsim((A, B, C, D, 1.0), u.numpy())
    return torch.from_numpy(np.asarray(y)).reshape(-1, 1)


def steady_state_closed_form(u_period: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The periodic steady state over one period: the initial state x0 = (I - A^P)^{-1} Σ_j A^{P-1-j} B u_j (the
    state that returns to itself after a period) and y_t = C x_t + D u_t from it."""
    drive = sum(np.linalg.matrix_power(A, P - 1 - j) @ B * u_period[j] for j in range(P))
    x = np.linalg.solve(np.eye(2) - np.linalg.matrix_power(A, P), drive)
    x0 = x.copy()
    ys = []
    for j in range(P):
        ys.append((C @ x + D * u_period[j]).item())
        x = A @ x + B * u_period[j]
    return np.asarray(ys), x0[:, 0]


def periodic_input(periods: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    one = rng.standard_normal(P)
    return torch.from_numpy(np.tile(one, periods)).reshape(-1, 1)


@pytest.mark.parametrize("periods, prime", [(1, 1), (2, 1), (1, 3)])
def test_true_system_in_steady_state_has_no_error_and_from_rest_has_the_transient(periods, prime):
    u = periodic_input(periods)
    y_ss_one, x0 = steady_state_closed_form(u[:P, 0].numpy())
    y_ss = torch.from_numpy(np.tile(y_ss_one, periods)).reshape(-1, 1)  # the "measured" steady-state record
    primed = periodic_steady_state(dlsim, u, period=P, prime=prime)
    assert primed.shape == (periods * P, 1)
    scale = float(y_ss.std())
    assert float(rmse(primed, y_ss)) < 1e-12 * scale  # the true system in steady state: no error
    # from rest, the error is exactly the free response of the steady-state initial state: y_rest - y_ss = -C A^t x0
    rest = dlsim(u)
    transient = np.array([-(C @ np.linalg.matrix_power(A, t) @ x0).item() for t in range(periods * P)])
    np.testing.assert_allclose((rest - y_ss)[:, 0].numpy(), transient, atol=1e-12 * scale)
    assert float(rmse(rest, y_ss)) > 1e-3 * scale  # and it is not small


def test_bad_input_raises():
    u = periodic_input(2)
    with pytest.raises(ValueError, match="dividing the record's length"):
        periodic_steady_state(dlsim, u, period=150)  # 400 samples are not a whole number of 150-sample periods
    with pytest.raises(ValueError, match="dividing the record's length"):
        periodic_steady_state(dlsim, u, period=0)
    with pytest.raises(ValueError, match="not periodic with period 200"):
        periodic_steady_state(dlsim, torch.cat([u[:P], -u[:P]]), period=P)  # the second period differs
    for prime in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="prime must be an int >= 1"):
            periodic_steady_state(dlsim, u, period=P, prime=prime)
    with pytest.raises(ValueError, match="u must be an"):
        periodic_steady_state(dlsim, u[:, 0], period=P)
    with pytest.raises(ValueError, match="as long as its input"):
        periodic_steady_state(lambda v: v[:-1], u, period=P)
    with pytest.raises(ValueError, match="period must be None or an int"):
        IORecord(u, u, 1.0, "bad", period=150)
    with pytest.raises(ValueError, match="has no period"):
        simulate_periodic(None, IORecord(u, u, 1.0, "no period"))


def _bench_of_own_steady_state() -> tuple[SysidBenchmark, object]:
    """A deep Wiener model (float64, random weights, fast modes) and a benchmark whose periodic test record's output
    is that model's own steady state over one period (simulated after 5 periods), plus a non-periodic record."""
    torch.manual_seed(0)
    u = periodic_input(1)
    train = [IORecord(periodic_input(3), torch.zeros(3 * P, 1, dtype=torch.float64), 1.0, "train")]
    bench = SysidBenchmark("toy", "toy", train, [], 0, "V")
    model = build_model(bench, "s4d", Recipe(d_model=3, n_layers=1, d_state=4, timescale=(2.0, 10.0)),
                        dtype=torch.float64)  # Δ of 2-10 samples: modes that fade within a period
    with torch.no_grad():
        y_long, _ = model(torch.cat([u] * 6)[None], return_state=False)
    y_ss = y_long[0, 5 * P:]
    bench.test = [IORecord(u, y_ss, 1.0, "periodic", period=P), IORecord(u, y_ss, 1.0, "not periodic")]
    return bench, model


def test_evaluate_scores_both_ways_and_the_table_shows_both():
    bench, model = _bench_of_own_steady_state()
    plain = evaluate(model, bench)
    assert all("steady_state" not in rec for rec in plain["records"])  # opt-in
    scores = evaluate(model, bench, steady_state=2)
    periodic, other = scores["records"]
    assert "steady_state" not in other  # not periodic: from rest only
    assert periodic["steady_state"]["prime"] == 2
    assert periodic["steady_state"]["rmse"][0] < 1e-3 * periodic["rmse"][0]  # its own steady state
    assert periodic["rmse"][0] == pytest.approx(plain["records"][0]["rmse"][0])  # the headline is unchanged
    table = results_table(bench, "toy model", scores)
    assert "| **toy model** | periodic | " in table and "from rest (official, headline)" in table
    assert "periodic steady state (2 periods of the same input first; not the official protocol)" in table
    assert table.count("periodic steady state") == 1  # no second row for the non-periodic record
    with pytest.raises(ValueError, match="steady_state must be None or an int"):
        evaluate(model, bench, steady_state=0)
    with pytest.raises(ValueError, match="steady_state scores simulation models"):
        evaluate(model, bench, mode="prediction", steady_state=1)


def test_cli_reports_both_scores_for_a_periodic_record(tmp_path, capsys, monkeypatch):
    import json

    import ssmkit.sysid.benchmarks as benchmarks
    from ssmkit.cli import main

    bench, _ = _bench_of_own_steady_state()
    monkeypatch.setattr(benchmarks, "load_benchmark", lambda name, folder, train_records=1: bench)
    args = ["sysid", "--benchmark", "toy", "--steps", "2", "--recipe.d_model", "2", "--recipe.n_layers", "1",
            "--recipe.d_state", "2", "--recipe.window", "64", "--recipe.val_every", "1", "--no-plots"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "| periodic | " in printed and "this run, from rest (official, headline)" in printed
    assert "periodic steady state (1 period of the same input first; not the official protocol)" in printed
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["test"][0]["steady_state"]["prime"] == 1 and "steady_state" not in res["test"][1]
    assert "Periodic steady state:" in (tmp_path / "a" / "report.md").read_text()
    assert main(args + ["--out", str(tmp_path / "b"), "--steady-state-periods", "0"]) == 0  # off
    assert "steady_state" not in json.loads((tmp_path / "b" / "results.json").read_text())["test"][0]
    assert main(args + ["--steady-state-periods", "-1"]) == 2
