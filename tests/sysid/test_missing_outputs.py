"""Missing output samples with known inputs (NaN in ``IORecord.y``; ``from_arrays``/``from_csv(missing_outputs=True)``,
``ssmkit sysid --missing-outputs``): the model is simulated over every sample, trained and scored where the output
was measured.

References: numpy masked means and stds over the measured samples (np.nanmean, np.nanstd and hand sums), the records'
own NaN positions, a second-order continuous-time oracle sampled exactly (scipy's matrix exponential), and the same
training on the fully measured record.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from ssmkit.sysid.fit import (Block, SimulationFit, block_rmse, fit_simulation, output_scales, simulate_record,
                              split_tail, validation_rmse)
from ssmkit.sysid.metrics import sysid_metrics
from ssmkit.sysid.prediction import free_run, predict_one_step, prediction_record
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.userdata import from_arrays, from_csv
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import evaluate, identify, outside_blocks
from tests.conftest import DEVICE

F64 = torch.float64
TS = 0.1
OMEGA, ZETA = 2 * np.pi * 0.8, 0.15  # a lightly damped resonance at 0.8 Hz
A = np.array([[0.0, 1.0], [-OMEGA ** 2, -2 * ZETA * OMEGA]])
B = np.array([[0.0], [OMEGA ** 2]])
C = np.array([[1.0, 0.0]])


def oracle(seed: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(u (L,), y (L, 1)) of dx/ds = A x + B u, y = C x sampled exactly every Ts with u_k held over the period that
    ends at sample k (the models' convention), from rest; u random levels held over 4 samples."""
    rng = np.random.default_rng(seed)
    u = np.repeat(rng.standard_normal(length // 4 + 1), 4)[:length]
    m = scipy.linalg.expm(np.block([[A, B], [np.zeros((1, 3))]]) * TS)
    x, ys = np.zeros(2), []
    for u_k in u:
        x = m[:2, :2] @ x + m[:2, 2] * u_k
        ys.append(C @ x)
    return u, np.array(ys)


def dropped(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """y with each sample of each output NaN (missing) with probability ``fraction``."""
    out = np.array(y, dtype=np.float64)
    out[np.random.default_rng(seed).random(out.shape) < fraction] = np.nan
    return out


def record(u: np.ndarray, y: np.ndarray, name: str = "r") -> IORecord:
    return IORecord(torch.tensor(u.reshape(len(u), -1)), torch.tensor(y.reshape(len(y), -1)), TS, name)


def tiny(n_in: int = 1, n_out: int = 1, encoder_window: int = 0, seed: int = 0) -> DeepWiener:
    """A small float64 model whose SSM parameters train at the options' lr (none of their own)."""
    torch.manual_seed(seed)
    return DeepWiener(n_in, n_out, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4, "lr": None}, dt=TS,
                      encoder_window=encoder_window, device=DEVICE, dtype=F64)


def masked_rmse(y_sim: np.ndarray, y: np.ndarray) -> np.ndarray:
    """RMSE per output over the samples where y is not NaN (numpy)."""
    seen = ~np.isnan(y)
    return np.sqrt(np.where(seen, (y_sim - np.nan_to_num(y)) ** 2, 0.0).sum(0) / seen.sum(0))


# ------------------------------------------------------------------------------------------------------------
# training


def test_the_training_loss_is_the_masked_mean_over_the_measured_samples():
    # Two records as long as the window (every draw is a whole record): record 0 with ~30 % of each of its two
    # outputs missing, record 1 not measured at all. With lr = 0 the first loss is that of the model as it is: the
    # mean of ((ŷ - y) / σ)² over the measured cells of the windows drawn, record 1's windows adding nothing (so the
    # mean over record 0's measured cells), σ and μ the population std and mean of the measured samples only.
    rng = np.random.default_rng(3)
    window = 40
    u0, u1 = rng.standard_normal((window, 2)), rng.standard_normal((window, 2))
    y0 = dropped(rng.standard_normal((window, 2)) * [2.0, 0.5] + [1.0, -3.0], 0.3, 4)
    y1 = np.full((window, 2), np.nan)
    model = tiny(2, 2)
    config = SimulationFit(window=window, batch_size=8, steps=1, lr=0.0, val_fraction=0.0, seed=5)
    history = fit_simulation(model, [record(u0, y0, "some"), record(u1, y1, "none")], config=config)
    np.testing.assert_allclose(model.y_mean.cpu().numpy(), np.nanmean(y0, 0), rtol=1e-12)
    np.testing.assert_allclose(model.y_std.cpu().numpy(), np.nanstd(y0, 0), rtol=1e-12)
    draws = torch.multinomial(torch.ones(2, dtype=F64), 8, replacement=True, generator=torch.Generator().manual_seed(5))
    assert 0 < int((draws == 0).sum()) < 8  # both kinds of windows were in the batch (the seed's draw)
    with torch.no_grad():
        y_hat = model(torch.tensor(u0, device=DEVICE)[None], return_state=False, saturate=False)[0][0].cpu().numpy()
    seen = ~np.isnan(y0)
    square = np.where(seen, ((y_hat - np.nan_to_num(y0)) / np.nanstd(y0, 0)) ** 2, 0.0)
    assert history["train_loss"][0] == pytest.approx(square.sum() / seen.sum(), rel=1e-10)


def test_a_held_out_block_and_the_missing_samples_both_stay_out_of_the_loss():
    # k-fold: block [15, 30) of the one record is held out; the window (the whole record) is scored on the measured
    # cells outside it, and μ, σ come from those cells alone.
    rng = np.random.default_rng(30)
    window = 45
    u = rng.standard_normal((window, 1))
    y = dropped(rng.standard_normal((window, 2)) * [3.0, 0.2] + [-1.0, 4.0], 0.3, 31)
    model = tiny(1, 2)
    config = SimulationFit(window=window, batch_size=3, steps=1, lr=0.0, seed=2)
    history = fit_simulation(model, [record(u, y)], config=config, blocks=[Block(0, 15, 30)])
    kept = np.r_[y[:15], y[30:]]
    np.testing.assert_allclose(model.y_mean.cpu().numpy(), np.nanmean(kept, 0), rtol=1e-12)
    np.testing.assert_allclose(model.y_std.cpu().numpy(), np.nanstd(kept, 0), rtol=1e-12)
    with torch.no_grad():
        y_hat = model(torch.tensor(u, device=DEVICE)[None], return_state=False, saturate=False)[0][0].cpu().numpy()
    seen = ~np.isnan(y)
    seen[15:30] = False
    square = np.where(seen, ((y_hat - np.nan_to_num(y)) / np.nanstd(kept, 0)) ** 2, 0.0)
    assert history["train_loss"][0] == pytest.approx(square.sum() / seen.sum(), rel=1e-10)
    block = y[15:30]
    with torch.no_grad():
        y_sim, _ = simulate_record(model, record(u, y))
    assert history["val_rmse"][0][1] == pytest.approx(masked_rmse(y_sim[15:30].numpy(), block).tolist(), rel=1e-12)


def test_windows_without_a_measured_output_give_no_nan_gradient():
    # An encoder window and a training window over a stretch where no output was measured, drawn among others: every
    # loss is finite, those windows' loss is 0, and the weights stay finite after steps with a real learning rate.
    rng = np.random.default_rng(7)
    u = rng.standard_normal(60)
    y = dropped(np.sin(np.arange(60) / 3.0)[:, None], 0.3, 8)
    blank = np.full((60, 1), np.nan)
    model = tiny(encoder_window=5)
    config = SimulationFit(window=20, batch_size=1, steps=12, lr=1e-2, val_fraction=0.0, seed=0)
    history = fit_simulation(model, [record(u, y, "measured"), record(u, blank, "blank")], config=config)
    assert all(np.isfinite(history["train_loss"])) and 0.0 in history["train_loss"]
    assert any(v > 0 for v in history["train_loss"])
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_thirty_percent_missing_trains_to_the_full_records_error():
    # One S4D block of 4 channels can represent the oracle (tests/sysid/test_irregular_records.py's setting). The
    # same model, seed and draws trained on 2 000 samples with 30 % of the outputs missing reach the validation RMSE
    # of the fully measured record (when written: 0.036 and 0.054, std of y 1.4); the missing samples read as zeros
    # (the loss not masked) reached 0.43.
    u, y = oracle(11, 2000)
    u_val, y_val = oracle(12, 600)
    config = SimulationFit(window=64, batch_size=8, steps=300, lr=1e-2, val_every=50, patience=None, washout=16, seed=0)
    best = {}
    for which, outputs in (("full", y), ("missing", dropped(y, 0.3, 5))):
        torch.manual_seed(1)
        model = DeepWiener(1, 1, d_model=4, n_layers=1, layer="s4d", layer_options={"d_state": 4, "lr": None},
                           activation=None, dt=TS, timescale=(0.05, 2.0), device=DEVICE, dtype=F64)
        history = fit_simulation(model, [record(u, outputs, which)], [record(u_val, y_val, "val")], config=config)
        best[which] = history["best_val_rmse"]
    assert best["full"] < 0.1 * float(np.std(y_val))
    assert best["missing"] < 1.5 * best["full"]


def test_the_encoder_reads_a_missing_output_as_the_training_mean():
    model = tiny(encoder_window=6)
    model.set_normalisation([torch.randn(50, 1, dtype=F64)], [3.0 + 2.0 * torch.randn(50, 1, dtype=F64)])
    u = torch.randn(2, 6, 1, dtype=F64, device=DEVICE)
    y = torch.randn(2, 6, 1, dtype=F64, device=DEVICE)
    gaps = y.clone()
    gaps[0, 1:4, 0] = float("nan")
    gaps[1, :, 0] = float("nan")
    filled = torch.where(torch.isnan(gaps), model.y_mean, gaps)
    with torch.no_grad():
        got, want = model.estimate_state(u, gaps), model.estimate_state(u, filled)
        measured = model.estimate_state(u, y)
    for a, b, c in zip(got, want, measured):
        assert torch.equal(a, b) and bool(torch.isfinite(a).all()) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------------------------------
# scores


def test_the_scores_are_numpys_over_the_measured_samples():
    rng = np.random.default_rng(9)
    y = [dropped(rng.standard_normal((30, 2)) * [1.0, 4.0], 0.3, 10), dropped(rng.standard_normal((25, 2)), 0.4, 11)]
    y_sim = [np.nan_to_num(a) + 0.3 * rng.standard_normal(a.shape) for a in y]
    n_init = 4
    got = sysid_metrics([torch.tensor(a) for a in y_sim], [torch.tensor(a) for a in y], n_init=n_init,
                        names=("rmse", "nrmse", "nrmse_range", "fit", "r2", "mae"), skip_missing=True)
    pred, meas = np.concatenate([a[n_init:] for a in y_sim]), np.concatenate([a[n_init:] for a in y])
    seen = ~np.isnan(meas)
    for k in range(2):
        e, m = pred[seen[:, k], k] - meas[seen[:, k], k], meas[seen[:, k], k]
        rmse = np.sqrt(np.mean(e ** 2))
        want = {"rmse": rmse, "nrmse": rmse / np.std(m), "nrmse_range": rmse / np.ptp(m),
                "fit": 100 * (1 - rmse / np.std(m)), "r2": 1 - (rmse / np.std(m)) ** 2, "mae": np.mean(np.abs(e))}
        for name, value in want.items():
            assert got[name][k] == pytest.approx(value, rel=1e-12), name
        assert got["samples"][k] == int(seen[:, k].sum())
    plain = sysid_metrics([torch.tensor(a) for a in y_sim], [torch.tensor(a) for a in y], n_init=n_init)
    assert all(np.isnan(plain["rmse"])) and plain["samples"] == [len(pred)] * 2  # without the option: NaN shows
    broken = [a.copy() for a in y_sim]
    k_seen = int(np.argmax(~np.isnan(y[0][n_init:, 0]))) + n_init
    broken[0][k_seen, 0] = np.nan  # a diverged simulation at a measured sample still shows
    scores = sysid_metrics([torch.tensor(a) for a in broken], [torch.tensor(a) for a in y], n_init=n_init,
                           names=("rmse",), skip_missing=True)
    assert np.isnan(scores["rmse"][0]) and np.isfinite(scores["rmse"][1])


def test_validation_and_the_test_score_use_the_measured_samples():
    u, y = oracle(13, 240)
    y2 = np.concatenate([y, 0.5 * y ** 2], 1)
    gappy = dropped(y2, 0.3, 14)
    model = tiny(1, 2, encoder_window=10)
    model.set_normalisation([torch.tensor(u[:, None])], [torch.tensor(y2)])
    r = record(u, gappy)
    with torch.no_grad():
        y_sim, n = simulate_record(model, r)
    assert n == 10 and bool(torch.isfinite(y_sim[n:]).all())  # the encoder read NaN outputs
    np.testing.assert_allclose(validation_rmse(model, [r]), masked_rmse(y_sim[n:].numpy(), gappy[n:]), rtol=1e-12)
    np.testing.assert_allclose(output_scales(r.y[n:]), np.nanstd(gappy[n:], 0), rtol=1e-12)
    blocks = [Block(0, 100, 180)]
    np.testing.assert_allclose(block_rmse(model, [r], blocks), masked_rmse(y_sim[100:180].numpy(), gappy[100:180]),
                               rtol=1e-12)
    bench = from_arrays(u, gappy, TS, test=(u[:120], gappy[:120]), n_init=10, missing_outputs=True)
    (entry,) = evaluate(model, bench)["records"]
    want = masked_rmse(simulate_record(model, bench.test[0])[0][10:].numpy(), gappy[10:120])
    np.testing.assert_allclose(entry["rmse"], want, rtol=1e-12)
    assert entry["samples"] == (~np.isnan(gappy[10:120])).sum(0).tolist()
    with pytest.raises(ValueError, match=r"output 2 of 2 is not measured at any scored validation sample"):
        output_scales(torch.tensor(np.c_[y[:20], np.full(20, np.nan)]))


# ------------------------------------------------------------------------------------------------------------
# records


def test_the_marks_follow_every_split_fold_and_hold():
    u, y = oracle(15, 200)
    gappy = dropped(y, 0.3, 16)
    nan = np.isnan(gappy[:, 0])
    bench = from_arrays(u, gappy, TS, n_init=5, missing_outputs=True)
    (train,), (test,) = bench.train, bench.test
    assert torch.equal(train.measured[:, 0], torch.tensor(~nan[:160])) and torch.equal(test.measured[:, 0],
                                                                                       torch.tensor(~nan[160:]))
    assert train.n_missing == int(nan[:160].sum()) and "output samples not measured" in bench.notes
    (tr,), (va,) = split_tail([train], 0.25, 10)
    assert torch.equal(tr.measured[:, 0], torch.tensor(~nan[:120])) and torch.equal(va.measured[:, 0],
                                                                                    torch.tensor(~nan[120:160]))
    pieces = outside_blocks([train], [Block(0, 40, 80)])
    assert torch.equal(torch.cat([p.measured for p in pieces])[:, 0], torch.tensor(np.r_[~nan[:40], ~nan[80:160]]))
    held = train.held_previous()
    assert torch.equal(held.measured, train.measured) and torch.equal(held.u[1:], train.u[:-1])
    part = train.part(7, 33, "p")
    assert torch.equal(part.measured[:, 0], torch.tensor(~nan[7:33])) and len(part) == 26
    moved = IORecord(train.u.to(DEVICE), train.y.to(DEVICE), TS, "moved")
    assert torch.equal(moved.measured.cpu(), train.measured) and moved.n_missing == train.n_missing
    whole = IORecord(torch.cat([train.u, test.u]), torch.cat([train.y, test.y]), TS, "joined")
    assert torch.equal(whole.measured[:, 0], torch.tensor(~nan))
    assert record(u, y).n_missing == 0 and bool(record(u, y).measured.all())  # no NaN: measured throughout


def test_inputs_must_be_known_and_outputs_missing_only_on_request():
    u, y = oracle(17, 100)
    gappy = dropped(y, 0.3, 18)
    bad_u = u.copy()
    bad_u[12] = np.nan
    with pytest.raises(ValueError, match=r"u holds 1 non-finite value\(s\); the first is nan at row 12, channel 0: "
                                         r"fill or cut missing samples first \(inputs must be known"):
        from_arrays(bad_u, gappy, TS, missing_outputs=True)
    with pytest.raises(ValueError, match=r"record 'x': u must be finite at every sample.*u\[12, 0\] = nan"):
        IORecord(torch.tensor(bad_u[:, None]), torch.tensor(y), TS, "x")
    with pytest.raises(ValueError, match=r"y holds \d+ non-finite value\(s\).*missing_outputs=True"):
        from_arrays(u, gappy, TS)  # the default refuses them, naming the option
    inf = gappy.copy()
    inf[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"y holds 1 non-finite value\(s\); the first is inf at row 3.*or NaN where"):
        from_arrays(u, inf, TS, missing_outputs=True)
    with pytest.raises(ValueError, match=r"record 'x': y must hold finite measurements, or NaN .*y\[3, 0\] = inf"):
        IORecord(torch.tensor(u[:, None]), torch.tensor(inf), TS, "x")
    with pytest.raises(ValueError, match=r"missing_outputs must be a bool"):
        from_arrays(u, gappy, TS, missing_outputs="yes")
    blank = gappy.copy()
    blank[:80] = np.nan
    with pytest.raises(ValueError, match=r"output 'y' is not measured at any sample of the training records"):
        from_arrays(u, blank, TS, missing_outputs=True)
    blank = gappy.copy()
    blank[85:] = np.nan
    with pytest.raises(ValueError, match=r"output 'y' is not measured at any sample of test record .* after its first "
                                         r"n_init = 4 samples"):
        from_arrays(u, blank, TS, n_init=4, missing_outputs=True)


def test_from_csv_reads_empty_and_nan_output_cells_as_missing(tmp_path):
    path = tmp_path / "log.csv"
    rows = [f"{0.1 * k!r},{float(k % 7)!r},{'' if k % 5 == 2 else ('nan' if k % 5 == 4 else repr(k / 3))}"
            for k in range(60)]
    path.write_text("t,u,y\n" + "\n".join(rows) + "\n")
    bench = from_csv(path, "u", "y", time="t", missing_outputs=True, n_init=2)
    y = torch.cat([bench.train[0].y, bench.test[0].y])[:, 0]
    want = [float("nan") if k % 5 in (2, 4) else k / 3 for k in range(60)]
    assert torch.equal(torch.isnan(y), torch.tensor([k % 5 in (2, 4) for k in range(60)]))
    assert y[~torch.isnan(y)].tolist() == [v for v in want if v == v]
    with pytest.raises(ValueError, match=r"row 3 \(line 4\), column 'y' is empty: every sample must be a number "
                                         r"\(fill or cut missing samples; .*missing_outputs=True.*--missing-outputs"):
        from_csv(path, "u", "y", time="t")
    path.write_text("t,u,y\n0.0,1.0,2.0\n0.1,,3.0\n0.2,1.0,\n" + "".join(f"{0.1 * k!r},1.0,2.0\n" for k in range(3, 30)))
    with pytest.raises(ValueError, match=r"row 2 \(line 3\), column 'u' is empty: every sample must be a number "
                                         r"\(only the output columns \['y'\] may hold missing samples\)"):
        from_csv(path, "u", "y", time="t", missing_outputs=True)


def test_predictors_and_the_data_initialisation_refuse_missing_outputs():
    u, y = oracle(19, 120)
    gappy = dropped(y, 0.3, 20)
    r = record(u, gappy, "gappy")
    predictor = tiny(2, 1)
    for call in (lambda: prediction_record(r), lambda: predict_one_step(predictor, r)):
        with pytest.raises(ValueError, match=r"reads the measured output y_\{t-1\} at every step, and records "
                                             r"'gappy' \(\d+ missing\) have missing outputs"):
            call()
    warm = gappy.copy()
    warm[:10] = y[:10]
    with torch.no_grad():  # after the warm-up the free run reads no measured output: the gaps there do not matter
        assert bool(torch.isfinite(free_run(predictor, record(u, warm), 10)).all())
    warm[4] = np.nan
    with pytest.raises(ValueError, match=r"free_run's warm-up reads the measured output"):
        free_run(predictor, record(u, warm), 10)
    bench = from_arrays(u, gappy, TS, n_init=4, missing_outputs=True)
    recipe = Recipe(d_model=2, n_layers=1, d_state=4, window=16, batch_size=2, steps=1)
    with pytest.raises(ValueError, match=r"have missing outputs .*: train them by simulation error"):
        identify(bench, "s4d", recipe, mode="prediction")
    with pytest.raises(ValueError, match=r"have missing outputs .*first_layer_init='data'"):
        identify(bench, "s4d", Recipe(**{**recipe.__dict__, "first_layer_init": "data"}))
    from ssmkit.sysid.init import init_from_data

    with pytest.raises(ValueError, match=r"records \['gappy'\] have missing outputs \(NaN in IORecord.y\)"):
        init_from_data(tiny(), [r])  # called directly (the SVD of NaN had raised LinAlgError)


def test_the_error_spectrum_of_a_record_with_missing_outputs_is_at_its_measured_samples():
    pytest.importorskip("matplotlib")
    from ssmkit.sysid.report import lomb_scargle_amplitude, spectrum_figure, spectrum_frequencies

    u, y = oracle(27, 200)
    gappy = dropped(y, 0.3, 28)
    bench = from_arrays(u[:100], y[:100], TS, n_init=10, test=(u[100:], gappy[100:]), missing_outputs=True)
    y_sim = torch.tensor(y[100:] * 0.9)  # a simulation 10 % off
    fig = spectrum_figure(bench, [y_sim])
    measured, error = (line.get_ydata() for line in fig.axes[0].get_lines()[:2])
    seen = ~np.isnan(gappy[110:, 0])
    t = np.arange(90) * TS
    f = spectrum_frequencies(t, TS)  # the frequencies of the whole span, as at full rate
    y_seen = gappy[110:, 0][seen]  # = y there
    want = lomb_scargle_amplitude(t[seen] - t[seen][0], np.stack([y_seen - y_seen.mean(), -0.1 * y_seen], 1), f)
    np.testing.assert_allclose(measured, want[:, 0], rtol=1e-12)
    np.testing.assert_allclose(error, want[:, 1], rtol=1e-12)
    assert bool(np.isfinite(measured).all()) and len(measured) == 44


# ------------------------------------------------------------------------------------------------------------
# persistence and the command


def test_a_model_trained_on_missing_outputs_reloads_and_simulates_alike():
    u, y = oracle(21, 300)
    gappy = dropped(y, 0.3, 22)
    model = tiny(encoder_window=8)
    fit_simulation(model, [record(u, gappy)], config=SimulationFit(window=32, batch_size=4, steps=5, lr=1e-2,
                                                                   val_every=5, seed=1))
    again = DeepWiener.from_checkpoint(model.checkpoint())
    assert torch.equal(again.y_mean, model.y_mean) and torch.equal(again.y_std, model.y_std)
    test = record(*oracle(23, 80))
    test_gaps = record(test.u.numpy(), dropped(test.y.numpy(), 0.5, 24))
    with torch.no_grad():
        for r in (test, test_gaps):
            a, n = simulate_record(model, r)
            b, _ = simulate_record(again, r)
            assert torch.equal(a[n:], b[n:]) and bool(torch.isfinite(a[n:]).all())


def test_the_command_trains_and_scores_a_csv_with_missing_outputs(tmp_path, capsys):
    from ssmkit.cli import main

    torch.set_num_threads(1)
    u, y = oracle(25, 300)
    gappy = dropped(y, 0.3, 26)[:, 0]
    path = tmp_path / "log.csv"
    path.write_text("u,y\n" + "".join(f"{a!r},{'' if np.isnan(b) else repr(b)}\n"
                                       for a, b in zip(u.tolist(), gappy.tolist())))
    small = ["--steps", "2", "--recipe.d_model", "2", "--recipe.n_layers", "1", "--recipe.d_state", "4"]
    data = ["--data", str(path), "--inputs", "u", "--outputs", "y", "--dt", str(TS)]
    out = tmp_path / "run"
    assert main(["sysid", *data, *small, "--out", str(out / "never")]) == 2
    assert "--missing-outputs" in capsys.readouterr().err  # the default refuses the empty cells, naming the flag
    assert main(["sysid", *data, "--missing-outputs", *small, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    n_init, cut = res["n_init"], 240  # the last 20 % of 300 samples are the test record
    assert res["data"]["missing_outputs"] is True
    assert res["data"]["test_records"][0]["missing_outputs"] == int(np.isnan(gappy[cut:]).sum())
    assert res["test"][0]["samples"] == [int((~np.isnan(gappy[cut + n_init:])).sum())]
    model = DeepWiener.from_checkpoint(torch.load(out / "model.pt", weights_only=True))
    with torch.no_grad():
        y_sim, n = simulate_record(model, record(u[cut:], gappy[cut:]))
    assert n == n_init
    want = masked_rmse(y_sim[n:].numpy(), gappy[cut + n:, None])
    assert res["test"][0]["rmse"][0] == pytest.approx(float(want[0]), rel=1e-5)
    assert (out / "simulation.png").is_file() and (out / "error_spectrum.png").is_file()
    scored = int((~np.isnan(gappy[cut + n_init:])).sum())
    assert f"samples scored per output (after the init window): log.csv [240:]: {scored} of {60 - n_init}." in \
        (out / "report.md").read_text()
    assert main(["sysid", "--benchmark", "cascaded_tanks", "--missing-outputs", *small,
                 "--out", str(tmp_path / "never2")]) == 2
    assert "--missing-outputs describe your own data and go with --data" in capsys.readouterr().err
