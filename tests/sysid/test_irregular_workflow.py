"""Irregularly sampled records beyond one model: ensembles (``WienerEnsemble`` with ``intervals=``, ``identify`` with
``combine="average"`` and k-fold validation), the report (time axis and error spectrum) and ``ssmkit sysid --data ...
--time t --irregular``.

References: scipy's exact sampling of a second-order continuous-time system at the records' times (the oracle of
tests/sysid/test_irregular_records.py), the members' own simulations, float64 loops, and for the spectrum the
amplitude of a sinusoid (A/2 on |DFT|/L's scale) and numpy's FFT on uniform stamps.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ssmkit.layers.registry import layer_class
from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.fit import fold_blocks, simulate_record, validation_rmse
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.userdata import from_arrays
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import evaluate, identify
from tests.conftest import DEVICE
from tests.sysid.test_irregular_records import F64, TS, irregular_record, realisation, sampled


def member(layer: str, seed: int, encoder_window: int = 0, **options) -> DeepWiener:
    """A random float64 deep Wiener model of one input and output at Ts, two blocks of ``layer`` (tanh between)."""
    torch.manual_seed(seed)
    return DeepWiener(1, 1, d_model=3, n_layers=2, layer=layer, layer_options={"d_state": 4, **options}, dt=TS,
                      encoder_window=encoder_window, device=DEVICE, dtype=F64)


def gaps(n: int, seed: int, batch: int = 2) -> torch.Tensor:
    """(batch, n) gaps in U[0.2, 3] nominal periods, float64."""
    return torch.tensor(np.random.default_rng(seed).uniform(0.2, 3.0, (batch, n)), dtype=F64, device=DEVICE)


# ------------------------------------------------------------------------------------------------------------
# the ensemble's forward and step


def test_an_ensemble_with_intervals_is_the_mean_of_its_members_with_intervals():
    members = [member("s4d", 0), member("dss", 1), member("lru", 2)]
    ensemble = WienerEnsemble(members)
    u = torch.randn(2, 40, 1, dtype=F64, device=DEVICE)
    tau = gaps(40, 0)
    with torch.no_grad():
        y, finals = ensemble(u, intervals=tau)
        each = [m(u, intervals=tau) for m in members]
        y_regular, _ = ensemble(u)
    mean = sum(out for out, _ in each) / 3
    assert float((y - mean).abs().max()) <= 1e-12 * float(mean.abs().max())
    assert float((y - y_regular).abs().max()) > 1e-3  # the gaps changed the simulation: they reached the members
    for got, (_, expected) in zip(finals, each):  # the final states are the members' own
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
    # from a given state (the members' states after a first part): forward's continuation is the members' mean
    with torch.no_grad():
        y2, _ = ensemble(u, finals, intervals=tau.flip(1))
        mean2 = sum(m(u, s, intervals=tau.flip(1))[0] for m, s in zip(members, finals)) / 3
    assert float((y2 - mean2).abs().max()) <= 1e-12 * float(mean2.abs().max())


def test_an_ensemble_of_two_oracles_simulates_their_mean_at_the_sample_times():
    # Member 1 is the oracle (tests/sysid/test_irregular_records.py), member 2 the oracle with its decoder × 3: the
    # ensemble is 2 y of scipy's exact sampling at the record's times.
    r = irregular_record(21, 200, "r")
    first, _ = realisation()
    second, _ = realisation()
    with torch.no_grad():
        second.decoder.weight.fill_(3.0)
    ensemble = WienerEnsemble([first, second])
    with torch.no_grad():
        y_sim, start = simulate_record(ensemble, r)
    scale = float(r.y.abs().max())
    assert start == 0 and float((y_sim - 2 * r.y).abs().max()) < 1e-10 * scale
    (rmse,) = validation_rmse(ensemble, [r])  # the workflow's validation takes the ensemble with the record's gaps
    assert abs(rmse - float(r.y.pow(2).mean().sqrt())) < 1e-10 * scale  # ŷ − y = y


def test_an_ensembles_step_with_intervals_follows_its_forward():
    ensemble = WienerEnsemble([member("s4d", 3), member("s5", 4, d_state=16), member("ema", 5)])
    u = torch.randn(2, 25, 1, dtype=F64, device=DEVICE)
    tau = gaps(25, 1)
    with torch.no_grad():
        y, _ = ensemble(u, intervals=tau)
        state, steps = ensemble.initial_state(2), []
        for k in range(25):
            y_k, state = ensemble.step(u[:, k], state, interval=tau[:, k])
            steps.append(y_k)
    looped = torch.stack(steps, 1)
    assert float((looped - y).abs().max()) <= 1e-10 * float(y.abs().max())


def test_an_ensemble_refuses_intervals_when_a_member_takes_none_before_any_member_runs():
    assert not layer_class("liquid_s4").takes_intervals  # every LTI layer takes them; Liquid-S4 does not
    first = member("s4d", 6)
    torch.manual_seed(7)
    other = DeepWiener(1, 1, d_model=3, n_layers=2, layer="liquid_s4", layer_options={"d_state": 4, "l_max": 16},
                       time_varying=True, dt=TS, device=DEVICE, dtype=F64)
    calls = []
    forward, step = first.forward, first.step
    first.forward = lambda *args, **kwargs: calls.append("forward") or forward(*args, **kwargs)
    first.step = lambda *args, **kwargs: calls.append("step") or step(*args, **kwargs)
    ensemble = WienerEnsemble([first, other])
    u = torch.randn(1, 10, 1, dtype=F64, device=DEVICE)
    with pytest.raises(ValueError, match="does not take sampling intervals"):
        ensemble(u, intervals=gaps(10, 2, 1))
    with pytest.raises(ValueError, match="does not take sampling intervals"):
        ensemble.step(u[:, 0], ensemble.initial_state(1), interval=gaps(1, 3, 1)[:, 0])
    assert calls == []  # refused before the first member ran
    with torch.no_grad():
        ensemble(u)  # without intervals it runs as before
    assert calls == ["forward"]


# ------------------------------------------------------------------------------------------------------------
# identify: averaging and k-fold on an irregular benchmark


def oracle_benchmark(seed: int, length: int, n_init: int = 8):
    """The oracle sampled at gaps U[0.3, 2.5]·Ts, its input random levels held 4 samples; 80 % train, 20 % test."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(TS * rng.uniform(0.3, 2.5, length))
    u = np.repeat(rng.standard_normal(length // 4 + 1), 4)[:length]
    y, _ = sampled(t, u)
    return from_arrays(u, y[:, 0], None, t=t, n_init=n_init)


def hand_simulation(model, r, n: int) -> torch.Tensor:
    """The model's simulation of record r after its encoder's first n samples, by forward with the gaps after them."""
    tau = torch.tensor(np.diff(r.t.numpy()) / r.dt, dtype=F64)[None, n - 1:]
    with torch.no_grad():
        state = model.estimate_state(r.u[None, :n], r.y[None, :n])
        return model(r.u[None, n:], state, intervals=tau)[0][0]


RECIPE = Recipe(d_model=3, n_layers=1, d_state=4, window=32, batch_size=4, steps=2, val_every=1, encoder_window=8,
                activation=None)


def test_identify_averages_restarts_on_an_irregular_benchmark():
    bench = oracle_benchmark(31, 400)
    recipe = dataclasses.replace(RECIPE, restarts=2, combine="average")
    model, history = identify(bench, "s4d", recipe, dtype=F64)
    assert isinstance(model, WienerEnsemble) and len(model) == 2 and history["combine"] == "average"
    assert np.isfinite(history["best_val_rmse"])
    (sim,) = evaluate(model, bench)["simulations"]
    test = bench.test[0]
    expected = hand_simulation(model, test, 8)
    assert torch.equal(sim[8:], expected)  # the test simulation is the ensemble's forward with the gaps
    members = sum(hand_simulation(m, test, 8) for m in model.members) / 2
    assert float((sim[8:] - members).abs().max()) <= 1e-12 * float(members.abs().max())


def test_identify_with_k_fold_validation_on_an_irregular_benchmark():
    bench = oracle_benchmark(32, 400)
    recipe = dataclasses.replace(RECIPE, restarts=2, validation="kfold", folds=2, combine="average")
    model, history = identify(bench, "s4d", recipe, dtype=F64)
    assert isinstance(model, WienerEnsemble) and len(model) == 2 and history["validation"] == "kfold"
    (sim,) = evaluate(model, bench)["simulations"]
    test = bench.test[0]
    assert torch.equal(sim[8:], hand_simulation(model, test, 8))
    # the out-of-fold RMSE: run j simulated on the whole training record with its gaps after the encoder, scored on
    # the block j it held out (the samples the encoder read are not scored)
    (train,) = bench.train
    errors = []
    for j, m in enumerate(model.members):
        (block,) = fold_blocks([len(train)], 2, j)
        y_sim = torch.cat([train.y[:8], hand_simulation(m, train, 8)])
        lo = max(block.start, 8)
        errors.append((y_sim[lo:block.stop] - train.y[lo:block.stop]).numpy())
    rmse = float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))
    assert history["best_val_rmse_per_output"][0] == pytest.approx(rmse, rel=1e-10)
    ignored = []  # the same members with the times ignored score otherwise: the held-out blocks took the gaps
    for j, m in enumerate(model.members):
        (block,) = fold_blocks([len(train)], 2, j)
        with torch.no_grad():
            state = m.estimate_state(train.u[None, :8], train.y[None, :8])
            y_sim = torch.cat([train.y[:8], m(train.u[None, 8:], state)[0][0]])
        lo = max(block.start, 8)
        ignored.append((y_sim[lo:block.stop] - train.y[lo:block.stop]).numpy())
    assert abs(float(np.sqrt(np.mean(np.concatenate(ignored) ** 2))) - rmse) > 1e-3 * rmse


def test_a_predictor_is_not_scored_on_irregular_test_records():
    bench = oracle_benchmark(33, 200)
    model = member("s4d", 8)
    with pytest.raises(ValueError, match=r"irregularly sampled \(IORecord.t\): a predictor's free run"):
        evaluate(model, bench, mode="prediction")


# ------------------------------------------------------------------------------------------------------------
# the report


def report_benchmark(n_init: int = 6):
    """A small irregular benchmark (gaps U[0.2, 3]·Ts, some long) and a simulation of its test record (the measured
    output plus a known error: a sinusoid and noise)."""
    rng = np.random.default_rng(40)
    t = 7.0 + np.cumsum(TS * rng.uniform(0.2, 3.0, 300))
    u, y = rng.standard_normal(300), rng.standard_normal(300)
    bench = from_arrays(u, y, None, t=t, n_init=n_init)
    test = bench.test[0]
    t_test = test.t.numpy()
    error = 0.3 * np.cos(2 * np.pi * 1.1 * t_test) + 0.01 * rng.standard_normal(len(test))
    return bench, [test.y + torch.tensor(error[:, None])], t_test


def test_the_simulation_figure_plots_against_the_sample_times():
    from ssmkit.sysid.report import simulation_figure, time_axis

    bench, sims, t = report_benchmark()
    fig = simulation_figure(bench, sims)
    ax = fig.axes[0]
    for line in ax.lines[:3]:  # measured, simulated, error: each against t − t_0
        assert np.array_equal(line.get_xdata(), t - t[0])
    assert np.array_equal(ax.lines[1].get_ydata(), sims[0][:, 0].numpy())
    (span,) = ax.patches  # the init window: up to the first scored sample's time
    if hasattr(span, "get_width"):  # a Rectangle (matplotlib >= 3.9), else a Polygon
        corners = np.array([span.get_x(), span.get_x() + span.get_width()])
    else:
        corners = np.asarray(span.get_xy())[:, 0]
    assert corners.min() == 0 and corners.max() == t[6] - t[0]
    import matplotlib.pyplot as plt

    plt.close(fig)
    test = bench.test[0]
    regular = IORecord(test.u, test.y, test.dt, "regular")  # the same samples read as regular: k · Ts
    assert np.array_equal(time_axis(regular), np.arange(len(regular)) * bench.dt)


def test_lomb_scargle_amplitude_against_scipy_the_fft_and_a_sinusoid():
    import scipy.signal

    from ssmkit.sysid.report import lomb_scargle_amplitude, spectrum_frequencies

    rng = np.random.default_rng(41)
    t = np.cumsum(rng.uniform(0.02, 0.3, 257))
    t -= t[0]
    x = rng.standard_normal(257)
    f = spectrum_frequencies(t, 0.1)
    power = scipy.signal.lombscargle(t, x, 2 * np.pi * f)  # Lomb-Scargle's unnormalised power, P(ω)
    assert np.allclose(lomb_scargle_amplitude(t, x, f), np.sqrt(power / 257), rtol=1e-10, atol=0)
    assert np.allclose(lomb_scargle_amplitude(t, x, f, chunk=5), lomb_scargle_amplitude(t, x, f), rtol=1e-13, atol=0)
    both = lomb_scargle_amplitude(t, np.stack([x, x[::-1] ** 2], 1), f, chunk=7)  # two signals at the same times
    assert both.shape == (len(f), 2) and np.allclose(both[:, 0], np.sqrt(power / 257), rtol=1e-10, atol=0)
    power2 = scipy.signal.lombscargle(t, x[::-1] ** 2, 2 * np.pi * f)
    assert np.allclose(both[:, 1], np.sqrt(power2 / 257), rtol=1e-10, atol=0)
    # uniform times (as a float clock rounds them): the FFT spectrum of the report, |DFT| / L, at every frequency
    for n in (200, 201):
        grid = 3.0 + 0.05 * np.arange(n)
        xs = rng.standard_normal(n)
        f = spectrum_frequencies(grid, 0.05)
        fft = np.fft.rfftfreq(n, 0.05)[1:(n + 1) // 2]  # without DC and the Nyquist frequency
        assert len(f) == len(fft) and np.allclose(f, fft, rtol=1e-12, atol=0)
        expected = np.abs(np.fft.rfft(xs))[1:(n + 1) // 2] / n
        assert np.allclose(lomb_scargle_amplitude(grid - grid[0], xs, f), expected, rtol=1e-8, atol=1e-12)
    # a sinusoid of amplitude A at irregular times reads A / 2 at its frequency (the FFT spectrum's scale)
    t = np.cumsum(rng.uniform(0.05, 0.15, 4000))
    t -= t[0]
    tone = 0.8 * np.sin(2 * np.pi * 1.3 * t + 0.4)
    (peak,) = lomb_scargle_amplitude(t, tone, np.array([1.3]))
    assert abs(peak - 0.4) < 4e-3


def test_spectrum_frequencies_stay_below_the_nominal_nyquist_and_are_capped():
    from ssmkit.sysid.report import spectrum_frequencies

    t = np.cumsum(np.r_[0.0, np.full(99, 0.1), np.full(10, 2.0)])  # 100 samples at 0.1 s, then a gap-ridden tail
    span = t[-1] - t[0] + 0.1
    f = spectrum_frequencies(t, 0.1)
    assert np.allclose(f, np.arange(1, len(f) + 1) / span, rtol=1e-13, atol=0)
    assert f[-1] < 5.0 <= f[-1] + 1 / span  # every k / T below 1 / (2 Ts), the next one not
    long = np.arange(100_001) * 0.01
    capped = spectrum_frequencies(long, 0.01, most=300)
    assert len(capped) <= 300 and capped[0] == 1 / (long[-1] + 0.01) and capped[-1] < 50.0
    assert np.all(np.diff(capped) > 0) and capped[-1] > 49.9
    assert len(spectrum_frequencies(np.array([0.0, 0.1]), 0.1)) == 0  # two samples: nothing below the Nyquist


def test_the_error_spectrum_of_an_irregular_record_is_its_lomb_scargle_amplitude():
    import matplotlib.pyplot as plt
    import scipy.signal

    from ssmkit.sysid.report import spectrum_figure

    bench, sims, t = report_benchmark()
    fig = spectrum_figure(bench, sims)
    measured, error = fig.axes[0].lines
    assert "Lomb-Scargle" in measured.get_label() and "Lomb-Scargle" in error.get_label()
    f = error.get_xdata()
    rel = t[6:] - t[6]
    e = (sims[0][6:, 0] - bench.test[0].y[6:, 0]).numpy()
    assert np.allclose(error.get_ydata(), np.sqrt(scipy.signal.lombscargle(rel, e, 2 * np.pi * f) / len(e)),
                       rtol=1e-10, atol=0)
    y = bench.test[0].y[6:, 0].numpy()
    assert np.allclose(measured.get_ydata(),
                       np.sqrt(scipy.signal.lombscargle(rel, y - y.mean(), 2 * np.pi * f) / len(y)), rtol=1e-10, atol=0)
    peak = f[np.argmax(error.get_ydata())]  # the error's sinusoid, 0.3 at 1.1 Hz: its peak, about 0.15
    assert abs(peak - 1.1) < 2 / (t[-1] - t[6]) and 0.1 < error.get_ydata().max() < 0.2
    plt.close(fig)


def test_a_report_for_an_irregular_benchmark_is_written(tmp_path):
    from ssmkit.sysid.report import write_report

    bench, sims, _ = report_benchmark()
    scores = {"records": [{"name": bench.test[0].name, "rmse": [0.2], "fit": [50.0]}], "simulations": sims}
    written = write_report(tmp_path, bench, "run", scores, {"seed": 0})
    assert written == ["results.json", "report.md", "simulation.png", "error_spectrum.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in written)
    text = (tmp_path / "report.md").read_text()
    assert f"Irregularly sampled test record ({bench.test[0].name}): simulated at the sample times" in text
    assert "Lomb-Scargle periodograms at the sample times" in text
    assert json.loads((tmp_path / "results.json").read_text())["irregular_test_records"] == [bench.test[0].name]
    regular = from_arrays(np.zeros(100), np.arange(100.0), 0.1, n_init=5)
    write_report(tmp_path / "regular", regular, "run", {"records": [], "simulations": []}, {}, plots=False)
    assert "Irregularly" not in (tmp_path / "regular" / "report.md").read_text()
    assert "irregular_test_records" not in json.loads((tmp_path / "regular" / "results.json").read_text())


# ------------------------------------------------------------------------------------------------------------
# ssmkit sysid --data ... --time t --irregular


def oracle_csv(path, length: int = 300, seed: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The oracle at gaps U[0.3, 2.5]·Ts written as t,u,y (``repr`` of each float64: read back exactly)."""
    rng = np.random.default_rng(seed)
    t = 2.0 + np.cumsum(TS * rng.uniform(0.3, 2.5, length))
    u = np.repeat(rng.standard_normal(length // 4 + 1), 4)[:length]
    y = sampled(t, u)[0][:, 0]
    path.write_text("t,u,y\n" + "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in zip(t.tolist(), u.tolist(), y.tolist())))
    return t, u, y


def hand_test_rmse(model, t, u, y, start: int, n: int) -> float:
    """The RMSE of ``model`` (float32) on the test rows [start:] of the file: its encoder reads the first n of them,
    then forward with the gaps after them, in units of the model's Ts."""
    as32 = lambda a: torch.tensor(a, dtype=torch.float32)[None, :, None]  # noqa: E731
    tau = torch.tensor(np.diff(t[start:]) / model.dt, dtype=F64).to(torch.float32)[None, n - 1:]
    with torch.no_grad():
        state = model.estimate_state(as32(u[start:start + n]), as32(y[start:start + n]))
        y_sim = model(as32(u[start + n:]), state, return_state=False, intervals=tau)[0][0, :, 0].double().numpy()
    return float(np.sqrt(np.mean((y_sim - y[start + n:]) ** 2)))


SMALL = ["--steps", "2", "--recipe.d_model", "2", "--recipe.n_layers", "1", "--recipe.d_state", "4"]


def test_the_command_identifies_an_irregularly_sampled_csv(tmp_path, capsys):
    from ssmkit.cli import main
    from ssmkit.sysid import DeepWiener

    torch.set_num_threads(1)
    path = tmp_path / "log.csv"
    t, u, y = oracle_csv(path)
    data = ["--data", str(path), "--inputs", "u", "--outputs", "y"]
    out = tmp_path / "run"
    assert main(["sysid", *data, "--time", "t", "--irregular", *SMALL, "--out", str(out)]) == 0
    assert "| **deep Wiener s4d (simulation)** | log.csv [240:] |" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["irregular"] is True and res["data"]["time_column"] == "t"
    assert res["data"]["dt"] == float(np.median(np.diff(t)))  # Ts: the median gap
    assert res["irregular_test_records"] == ["log.csv [240:]"] and res["n_init"] == 6
    assert "Lomb-Scargle periodograms at the sample times" in (out / "report.md").read_text()
    assert (out / "simulation.png").is_file() and (out / "error_spectrum.png").is_file()
    model = DeepWiener.from_checkpoint(torch.load(out / "model.pt", weights_only=True))
    (rec,) = res["test"]
    assert rec["rmse"][0] == pytest.approx(hand_test_rmse(model, t, u, y, 240, 6), rel=1e-5)  # simulated at the times


def test_the_command_averages_restarts_on_an_irregularly_sampled_csv(tmp_path, capsys):
    from ssmkit.cli import main

    torch.set_num_threads(1)
    path = tmp_path / "log.csv"
    t, u, y = oracle_csv(path, seed=51)
    out = tmp_path / "run"
    assert main(["sysid", "--data", str(path), "--inputs", "u", "--outputs", "y", "--time", "t", "--irregular",
                 *SMALL, "--recipe.window", "48", "--recipe.restarts", "2", "--recipe.validation", "kfold", "--recipe.combine", "average",
                 "--out", str(out), "--no-plots"]) == 0
    assert "kept the average of 2 runs" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    ensemble = WienerEnsemble.from_checkpoint(torch.load(out / "model.pt", weights_only=True))
    assert len(ensemble) == 2
    assert res["test"][0]["rmse"][0] == pytest.approx(hand_test_rmse(ensemble, t, u, y, 240, 6), rel=1e-5)


def test_the_command_reads_a_time_column_as_uniform_unless_irregular(tmp_path, capsys):
    from ssmkit.cli import main

    path = tmp_path / "log.csv"
    oracle_csv(path, length=120)
    data = ["--data", str(path), "--inputs", "u", "--outputs", "y"]
    cases = [
        ([*data, "--time", "t"], "--data: log.csv, column 't' is not uniformly sampled"),  # the default: as before
        ([*data, "--dt", "0.1", "--irregular"], "--irregular takes the sample times from a time column: give --time"),
        ([*data, "--irregular"], "--data needs the sampling time: --dt Ts (seconds) or --time COLUMN"),
        (["--benchmark", "cascaded_tanks", "--irregular"], "--irregular describe your own data and go with --data"),
    ]
    for argv, message in cases:
        assert main(["sysid", *argv, *SMALL, "--out", str(tmp_path / "never")]) == 2, argv
        assert message in capsys.readouterr().err, (argv, message)
    assert not (tmp_path / "never").exists()
