"""Irregularly sampled records through the system-identification workflow (``IORecord.t``): the records' checks and
intervals, a deep Wiener model with a known realisation against scipy's exact sampling of a continuous-time system at
the records' times, the intervals a training window carries, training that uses the times against training that
ignores them, regular records unchanged, and the user-data loaders.

The oracle: dx/ds = A x + B u, y = C x (second order, s in seconds), each sample's input held over the gap that ends
at it (the SSM convention x_k = Ā_k x_{k-1} + B̄_k u_k, docs/design.md "Stop 61"), sampled exactly by the matrix
exponential of the augmented system [[A, B], [0, 0]] times each gap; from rest one nominal period Ts before the first
sample (τ_0 = 1)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.linalg
import torch

from ssmkit.layers.registry import layer_class
from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.fit import Block, SimulationFit, block_errors, fit_simulation, simulate_record, validation_rmse
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.userdata import from_arrays, from_csv, median_sampling_time
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import evaluate, identify
from tests.conftest import DEVICE

F64 = torch.float64
TS = 0.1  # the nominal sampling time (s)
OMEGA, ZETA = 2 * np.pi * 0.8, 0.15  # a lightly damped resonance at 0.8 Hz
A = np.array([[0.0, 1.0], [-OMEGA ** 2, -2 * ZETA * OMEGA]])
B = np.array([[0.0], [OMEGA ** 2]])
C = np.array([[1.0, 0.0]])


def sampled(t: np.ndarray, u: np.ndarray, x0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(y (L, 1), x (L, 2)) of the continuous system at the times t, u_k held over (t_{k-1}, t_k], the first gap Ts."""
    x = np.zeros(2) if x0 is None else x0
    gaps = np.r_[TS, np.diff(t)]
    ys, xs = [], []
    for gap, u_k in zip(gaps, u):
        m = scipy.linalg.expm(np.block([[A, B], [np.zeros((1, 3))]]) * gap)
        x = m[:2, :2] @ x + m[:2, 2] * u_k
        xs.append(x)
        ys.append(C @ x)
    return np.array(ys), np.array(xs)


def irregular_record(seed: int, length: int, name: str, hold: int = 4) -> IORecord:
    """A record of the oracle at gaps U[0.2, 3]·Ts, its input random levels each held over ``hold`` samples."""
    rng = np.random.default_rng(seed)
    t = 3.0 + np.cumsum(TS * rng.uniform(0.2, 3.0, length))
    u = np.repeat(rng.standard_normal(length // hold + 1), hold)[:length]
    y, _ = sampled(t, u)
    return IORecord(torch.tensor(u[:, None]), torch.tensor(y), TS, name, t=torch.tensor(t))


def regular(r: IORecord) -> IORecord:
    """The same samples with their times ignored (every Ts)."""
    return IORecord(r.u, r.y, r.dt, r.name)


def realisation(encoder_window: int = 0, lr: float | None = 1e-3) -> tuple[DeepWiener, np.ndarray]:
    """A deep Wiener model whose one S4D block is the oracle (float64, no nonlinearity, no skip): the modal form
    z = V⁻¹ x of A's complex pair, λ Ts as the layer's eigenvalue at Δ = 1 (one nominal period per unit of its
    time), Ts · (V⁻¹B)_0 as its B and (CV)_0 as its C, so y = 2 Re(C z); ``lr`` the SSM parameters' marked rate (0:
    frozen). Returns the model and V⁻¹'s row of the mode."""
    lam, v = np.linalg.eig(A)
    k = int(np.argmax(lam.imag))  # the mode with Im λ > 0; its conjugate is the 2 Re(·)
    v_inv = np.linalg.inv(v)
    b, c = (v_inv @ B)[k, 0], (C @ v)[0, k]
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=1, n_layers=1, layer="s4d", layer_options={"d_state": 2, "lr": lr},
                       activation=None, dt=TS, encoder_window=encoder_window, device=DEVICE, dtype=F64)
    layer = model.layers[0]
    with torch.no_grad():
        layer.log_dt.zero_()
        layer.log_A_real.fill_(float(np.log(-lam[k].real * TS)))
        layer.A_imag.fill_(float(lam[k].imag * TS))
        layer.B.copy_(torch.tensor([[[(TS * b).real, (TS * b).imag]]], dtype=F64))
        layer.C.copy_(torch.tensor([[[[c.real, c.imag]]]], dtype=F64))
        layer.D.zero_()
        model.encoder.weight.fill_(1.0)
        model.encoder.bias.zero_()
        model.skips[0].weight.zero_()
        model.decoder.weight.fill_(1.0)
        model.decoder.bias.zero_()
    return model, v_inv[k]


# ------------------------------------------------------------------------------------------------------------
# the record


def test_a_record_refuses_sample_times_that_are_not_times():
    u, y = torch.zeros(5, 1, dtype=F64), torch.zeros(5, 1, dtype=F64)
    cases = [
        (torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0]), r"t must increase strictly .* t\[2\] = 1 s follows t\[1\] = 1 s"),
        (torch.tensor([0.0, 1.0, 2.0, 1.5, 3.0]), r"t must increase strictly .* t\[3\] = 1.5 s follows t\[2\] = 2 s"),
        (torch.arange(4.0), r"t must be None or the \(L,\) sample times .*L = 5\); got shape \(4,\)"),
        (torch.arange(5.0)[:, None], r"t must be None or the \(L,\) sample times .*L = 5\); got shape \(5, 1\)"),
        (torch.tensor([0.0, 1.0, float("nan"), 3.0, 4.0]), r"t must hold finite sample times; t\[2\] = nan"),
        (np.array([0.0, 1.0, 2.0, 3.0, np.inf]), r"t must hold finite sample times; t\[4\] = inf"),
        (torch.arange(5.0) * (1 + 1j), r"t must be None or the \(L,\) real sample times in seconds; got dtype "
                                       "torch.complex64"),
        (torch.ones(5, dtype=torch.bool), r"t must be None or the \(L,\) real sample times .*got dtype torch.bool"),
        (["a", "b", "c", "d", "e"], r"t must be None or the \(L,\) sample times in seconds, L = 5; got list"),
    ]
    for t, message in cases:
        with pytest.raises(ValueError, match=f"record 'r': {message}"):
            IORecord(u, y, 0.5, "r", t=t)
    with pytest.raises(ValueError, match="period needs a regularly sampled record"):
        IORecord(u, y, 0.5, "r", period=5, t=torch.arange(5.0))
    with pytest.raises(ValueError, match=r"gaps of t over dt = 1e-300 s must be finite"):  # 1e300 / 1e-300 = inf
        IORecord(u, y, 1e-300, "r", t=torch.tensor([0.0, 1e300, 2e300, 3e300, 4e300], dtype=F64))


def test_intervals_are_the_gaps_over_dt_with_one_first():
    rng = np.random.default_rng(0)
    t = 1e4 + np.cumsum(rng.uniform(0.01, 0.7, 40))  # float64 times that float32 would round
    r = IORecord(torch.zeros(40, 1, dtype=F64), torch.zeros(40, 1, dtype=F64), 0.25, "r", t=t.tolist())
    assert r.t.dtype == F64 and np.array_equal(r.t.numpy(), t)  # a list of floats is read in float64
    assert r.irregular and r.intervals.dtype == F64
    assert np.array_equal(r.intervals.numpy(), np.r_[1.0, np.diff(t) / 0.25])  # exactly: the same IEEE operations
    assert IORecord(torch.zeros(3, 1), torch.zeros(3, 1), 0.25).intervals is None  # regular: no intervals
    assert not IORecord(torch.zeros(3, 1), torch.zeros(3, 1), 0.25).irregular
    part = r.part(10, 25, "p")
    assert np.array_equal(part.t.numpy(), t[10:25]) and part.name == "p" and len(part) == 15
    assert np.array_equal(part.intervals.numpy(), np.r_[1.0, np.diff(t[10:25]) / 0.25])
    assert IORecord(torch.zeros(3, 1), torch.zeros(3, 1), 0.5, t=np.array([0, 2, 3])).intervals.tolist() == [1, 4, 2]


# ------------------------------------------------------------------------------------------------------------
# simulation against the oracle


def test_a_known_realisation_simulates_the_sampled_continuous_system():
    r = irregular_record(1, 300, "r")
    model, _ = realisation()
    with torch.no_grad():
        y_sim, start = simulate_record(model, r)
        y_regular, _ = simulate_record(model, regular(r))  # the times ignored: another system
    scale = float(r.y.abs().max())
    assert start == 0 and float((y_sim - r.y).abs().max()) < 1e-10 * scale
    assert float((y_regular - r.y).abs().max()) > 0.1 * scale
    (rmse,) = validation_rmse(model, [r])
    assert rmse < 1e-10 * scale and validation_rmse(model, [regular(r)])[0] > 0.05 * scale
    errors, measured = block_errors(model, [r], [Block(0, 100, 180)])
    assert torch.equal(measured, r.y[100:180]) and float(errors.abs().max()) < 1e-10 * scale


def test_after_the_encoder_the_simulation_takes_the_real_gaps():
    # The encoder's estimate is replaced by the oracle's state at sample n − 1 (modal coordinates); the samples after
    # it then follow the oracle only when they are simulated with their own gaps, the first from sample n − 1.
    n = 7
    r = irregular_record(2, 120, "r")
    model, v_row = realisation(encoder_window=n)
    _, x = sampled(r.t.numpy(), r.u[:, 0].numpy())
    z = complex(v_row @ x[n - 1])
    model.estimate_state = lambda u_past, y_past: [torch.tensor([[[z]]], dtype=torch.complex128, device=DEVICE)]
    with torch.no_grad():
        y_sim, start = simulate_record(model, r)
    assert start == n and torch.equal(y_sim[:n], r.y[:n])
    assert float((y_sim[n:] - r.y[n:]).abs().max()) < 1e-10 * float(r.y.abs().max())


# ------------------------------------------------------------------------------------------------------------
# training windows


def spy(model: DeepWiener) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Record the inputs and intervals of every call of ``model`` (its own forward still runs)."""
    calls, forward = [], model.forward

    def recording(u, state=None, return_state=True, saturate=True, intervals=None):
        calls.append((u.detach().cpu().clone(), None if intervals is None else intervals.detach().cpu().clone()))
        return forward(u, state, return_state, saturate, intervals)

    model.forward = recording
    return calls


def offset_of(window: torch.Tensor, u: torch.Tensor) -> int:
    """Where the (T, m) window of inputs sits in the record's (L, m) inputs (the inputs are distinct draws)."""
    found = [o for o in range(len(u) - len(window) + 1) if torch.equal(u[o: o + len(window)], window)]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("encoder_window", [0, 3])
def test_a_training_window_carries_the_intervals_of_its_samples(encoder_window):
    rng = np.random.default_rng(3)
    length, window = 60, 12
    t = np.cumsum(rng.uniform(0.1, 2.0, length)) * TS
    irregular = IORecord(torch.tensor(rng.standard_normal((length, 1))), torch.tensor(rng.standard_normal((length, 1))),
                         TS, "irregular", t=torch.tensor(t))
    plain = IORecord(torch.tensor(rng.standard_normal((40, 1))), torch.tensor(rng.standard_normal((40, 1))), TS,
                     "plain")
    model, _ = realisation(encoder_window)
    calls = spy(model)
    config = SimulationFit(window=window, batch_size=6, steps=4, lr=1e-3, val_fraction=0.0, seed=1)
    fit_simulation(model, [irregular, plain], config=config)
    assert len(calls) == 4
    gaps = np.r_[1.0, np.diff(t) / TS]
    seen = {"irregular": 0, "plain": 0, "first gap not 1": 0}
    for u, tau in calls:
        assert u.shape == (6, window, 1) and tau.shape == (6, window)
        for row, row_tau in zip(u, tau):
            if any(torch.equal(row, plain.u[o: o + window]) for o in range(40 - window + 1)):
                seen["plain"] += 1
                assert torch.equal(row_tau, torch.ones(window, dtype=F64))  # a regular record's gaps are 1
                continue
            o = offset_of(row, irregular.u)
            assert o >= encoder_window  # the encoder read the samples before the window
            assert np.array_equal(row_tau.numpy(), gaps[o: o + window])  # the first: the real gap from sample o − 1
            seen["irregular"] += 1
            seen["first gap not 1"] += o > 0
    assert seen["irregular"] > 0 and seen["plain"] > 0 and seen["first gap not 1"] > 0


def test_validation_records_are_simulated_with_their_intervals():
    # The held-out tail is a record of its own (τ_0 = 1), simulated from rest with its gaps: with every rate 0 and the
    # normalisation kept (the realisation stays the oracle) its RMSE is the oracle's from rest on the tail's times.
    r = irregular_record(4, 100, "r")
    model, _ = realisation(lr=0.0)
    model.set_normalisation = lambda u, y: None
    calls = spy(model)
    config = SimulationFit(window=16, batch_size=2, steps=2, lr=0.0, val_fraction=0.3, val_every=1, seed=0)
    history = fit_simulation(model, [r], config=config)
    tail = [(u, tau) for u, tau in calls if u.shape[0] == 1]  # validation: the held-out tail, whole
    assert len(tail) == 2 and all(u.shape[1] == 30 for u, _ in tail)
    t = r.t.numpy()[70:]
    assert all(np.array_equal(tau[0].numpy(), np.r_[1.0, np.diff(t) / TS]) for _, tau in tail)
    y_rest, _ = sampled(t, r.u[70:, 0].numpy())
    expected = float(np.sqrt(np.mean((y_rest - r.y[70:].numpy()) ** 2)))
    assert expected > 0.1 and abs(history["best_val_rmse"] - expected) < 1e-10 * expected


def test_models_that_take_no_intervals_are_refused_before_training():
    assert not layer_class("liquid_s4").takes_intervals  # every LTI layer takes them; Liquid-S4 does not
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer="liquid_s4", layer_options={"d_state": 4, "l_max": 16},
                       time_varying=True, dt=TS, device=DEVICE, dtype=F64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = irregular_record(5, 80, "r")
    with pytest.raises(ValueError, match="does not take sampling intervals"):
        fit_simulation(model, [r], config=SimulationFit(window=16, batch_size=2, steps=2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step taken
    with pytest.raises(ValueError, match="does not take sampling intervals"):  # an irregular validation record too
        fit_simulation(model, [regular(r)], [r], config=SimulationFit(window=16, batch_size=2, steps=2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nor normalised: refused first
    ensemble = WienerEnsemble([realisation()[0], model])  # an ensemble takes intervals, its members' layers must
    with pytest.raises(ValueError, match="does not take sampling intervals"):
        validation_rmse(ensemble, [r])


# ------------------------------------------------------------------------------------------------------------
# training


def test_training_with_the_times_beats_training_without_them():
    # One S4D block of 4 channels can represent the oracle; trained on the same samples, with the times it reaches a
    # validation RMSE of 0.03-0.08 (seeds 0-4 when written), without them 0.76-0.92 (std of y: 1.6).
    train, val = [irregular_record(11, 2000, "train")], [irregular_record(12, 600, "val")]
    config = SimulationFit(window=64, batch_size=8, steps=300, lr=1e-2, val_every=50, patience=None, washout=16, seed=0)
    best = {}
    for which, (tr, va) in {"times": (train, val), "ignored": ([regular(r) for r in train],
                                                               [regular(r) for r in val])}.items():
        torch.manual_seed(1)
        model = DeepWiener(1, 1, d_model=4, n_layers=1, layer="s4d", layer_options={"d_state": 4, "lr": None},
                           activation=None, dt=TS, timescale=(0.05, 2.0), device=DEVICE, dtype=F64)
        best[which] = fit_simulation(model, tr, va, config=config)["best_val_rmse"]
        if which == "times":  # the kept weights score so on the irregular record, independently of the history
            with torch.no_grad():
                y_sim, _ = simulate_record(model, val[0])
            assert abs(float((y_sim - val[0].y).pow(2).mean().sqrt()) - best[which]) < 1e-12
    std = float(val[0].y.std())
    assert best["times"] < 0.1 * std and best["times"] < 0.25 * best["ignored"]


def test_regular_records_run_as_before_and_a_uniform_clock_runs_alike():
    # t = None: the model is never handed intervals (the regular path, its arithmetic unchanged). Times on a uniform
    # grid (gaps of exactly Ts): the irregular path with unit gaps, the same history to rounding.
    rng = np.random.default_rng(6)
    records = [IORecord(torch.tensor(rng.standard_normal((n, 1))), torch.tensor(rng.standard_normal((n, 1))), 0.5,
                        f"r{n}") for n in (90, 70)]
    uniform = [IORecord(r.u, r.y, r.dt, r.name, t=2.0 + 0.5 * torch.arange(len(r), dtype=F64)) for r in records]
    assert all(torch.equal(r.intervals, torch.ones(len(r), dtype=F64)) for r in uniform)
    config = SimulationFit(window=20, batch_size=4, steps=12, lr=1e-2, val_every=4, seed=3)
    histories = []
    for recs in (records, uniform):
        torch.manual_seed(2)
        model = DeepWiener(1, 1, d_model=3, n_layers=2, layer="s4d", layer_options={"d_state": 4}, dt=0.5,
                           device=DEVICE, dtype=F64)
        calls = spy(model)
        histories.append(fit_simulation(model, recs, config=config))
        assert all((tau is None) == (recs is records) for _, tau in calls)
    a, b = histories
    assert np.allclose(a["train_loss"], b["train_loss"], rtol=1e-9, atol=0)
    assert [s for s, _ in a["val_rmse"]] == [s for s, _ in b["val_rmse"]]
    assert np.allclose([v for _, v in a["val_rmse"]], [v for _, v in b["val_rmse"]], rtol=1e-9, atol=0)
    assert a["best_step"] == b["best_step"]


# ------------------------------------------------------------------------------------------------------------
# your own data and the workflow


def write_csv(path, t, u, y) -> None:
    path.write_text("t,u,y\n" + "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in zip(t.tolist(), u.tolist(), y.tolist())))


def test_a_non_uniform_time_column_is_read_when_asked(tmp_path):
    rng = np.random.default_rng(7)
    t = np.cumsum(rng.uniform(0.05, 0.3, 200))
    u, y = rng.standard_normal(200), rng.standard_normal(200)
    write_csv(tmp_path / "log.csv", t, u, y)
    with pytest.raises(ValueError, match=r"log.csv, column 't' is not uniformly sampled: the stamp of row"):
        from_csv(tmp_path / "log.csv", "u", "y", time="t")  # off: today's refusal
    bench = from_csv(tmp_path / "log.csv", "u", "y", time="t", irregular=True)
    (train,), (test,) = bench.train, bench.test
    assert bench.dt == float(np.median(np.diff(t)))  # the median gap (of the whole file: no output read)
    assert np.array_equal(train.t.numpy(), t[:160]) and np.array_equal(test.t.numpy(), t[160:])
    assert np.array_equal(train.u[:, 0].numpy(), u[:160]) and np.array_equal(test.y[:, 0].numpy(), y[160:])
    assert "irregularly sampled, nominal Ts" in bench.notes
    with pytest.raises(ValueError, match="irregular must be a bool, True only with a time column"):
        from_csv(tmp_path / "log.csv", "u", "y", dt=0.1, irregular=True)
    write_csv(tmp_path / "back.csv", np.r_[t[:50], t[48:100]], u[:102], y[:102])  # a stamp repeated, then earlier
    with pytest.raises(ValueError, match=r"back.csv, column 't': the time stamps must increase strictly; row 51"):
        from_csv(tmp_path / "back.csv", "u", "y", time="t", irregular=True)


def test_from_arrays_takes_sample_times():
    rng = np.random.default_rng(8)
    t = np.cumsum(rng.uniform(0.05, 0.3, 100))
    u, y = rng.standard_normal(100), rng.standard_normal((100, 2))
    bench = from_arrays(u, y, None, t=t)
    assert bench.dt == float(np.median(np.diff(t))) == median_sampling_time(t)
    assert np.array_equal(bench.train[0].t.numpy(), t[:80]) and np.array_equal(bench.test[0].t.numpy(), t[80:])
    assert from_arrays(u, y, 0.2, t=t).dt == 0.2  # a nominal Ts given
    other = from_arrays(u, y, None, test=(u[:30], y[:30], t[:30] + 50), t=t)
    assert np.array_equal(other.test[0].t.numpy(), t[:30] + 50) and np.array_equal(other.train[0].t.numpy(), t)
    with pytest.raises(ValueError, match=r"give the test experiment's too: test=\(u_test, y_test, t_test\)"):
        from_arrays(u, y, None, test=(u[:30], y[:30]), t=t)
    with pytest.raises(ValueError, match="dt must be the sampling time in seconds"):  # no t: dt as today
        from_arrays(u, y, None)
    with pytest.raises(ValueError, match=r"t: the time stamps must increase strictly; row 3"):
        from_arrays(u, y, None, t=np.r_[0.0, 1.0, 0.5, np.arange(97) + 2.0])
    assert from_arrays(u, y, 0.1).train[0].t is None  # regular as before


def test_identify_and_evaluate_an_irregular_benchmark():
    rng = np.random.default_rng(9)
    t = np.cumsum(TS * rng.uniform(0.3, 2.5, 700))
    u = np.repeat(rng.standard_normal(700 // 4 + 1), 4)[:700]
    y, _ = sampled(t, u)
    bench = from_arrays(u, y[:, 0], None, t=t, n_init=10)
    recipe = Recipe(d_model=4, n_layers=1, d_state=4, window=64, batch_size=4, steps=3, val_every=1,
                    encoder_window=10, activation=None)
    model, history = identify(bench, "s4d", recipe, dtype=F64)
    assert np.isfinite(history["best_val_rmse"])
    sims = evaluate(model, bench)["simulations"]
    test = bench.test[0]
    tau = torch.tensor(np.diff(test.t.numpy()) / bench.dt)[None, 9:]  # the gaps after the encoder's 10 samples
    with torch.no_grad():
        state = model.estimate_state(test.u[None, :10], test.y[None, :10])
        expected = model(test.u[None, 10:], state, intervals=tau)[0][0]
    assert torch.equal(sims[0][10:], expected)
    with pytest.raises(ValueError, match="first_layer_init='data'"):  # ensembles: tests/sysid/test_irregular_workflow.py
        identify(bench, "s4d", dataclasses.replace(recipe, first_layer_init="data"), dtype=F64)
    with pytest.raises(ValueError, match="train them by simulation error"):
        identify(bench, "s4d", recipe, mode="prediction", dtype=F64)
