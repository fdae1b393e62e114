"""Mutation probe (2026-12-07, second round) of sysid/fit, sysid/workflow, sysid/commands and sysid/report: the mutants
that the modules' own tests let survive. Each test names the mutants it kills (ids of the round's table in the report)
and checks the code against an independent reference: sums and slices written out in float64 NumPy, a loss computed
from the model's own forward by hand, the closed-form weights of an exponential average, a Lomb-Scargle sum over a
sinusoid of known amplitude.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from ssmkit.sysid.fit import (Block, SimulationFit, block_errors, fit_simulation, measured_rms, output_scales,
                              scored_outputs, validation_rmse, validation_score)
from ssmkit.sysid.records import IORecord
from tests.conftest import DEVICE
from tests.sysid.test_folds_and_sensor import record, small

F64 = torch.float64


def _two_output_record(n: int, seed: int = 0, t: torch.Tensor | None = None) -> IORecord:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 1, generator=g, dtype=F64)
    y1 = torch.cumsum(u, 0) * 0.1 + 0.3 * torch.randn(n, 1, generator=g, dtype=F64)
    y2 = torch.sin(2 * y1) + 0.2 * u
    return IORecord(u, torch.cat([y1, y2], 1), 1.0, f"two{seed}", t=t)


def _simulate(m, u: torch.Tensor, y: torch.Tensor, n_enc: int, intervals: torch.Tensor | None = None,
              saturate: bool = True) -> np.ndarray:
    """The model's simulation of one record after its first n_enc samples (the encoder's), written out with the
    model's own estimate_state and forward, float64 NumPy (L − n_enc, p)."""
    u_, y_ = u[None].to(DEVICE), y[None].to(DEVICE)
    extra = {} if intervals is None else {"intervals": intervals[None, n_enc:].to(DEVICE)}
    with torch.no_grad():
        state = m.estimate_state(u_[:, :n_enc], y_[:, :n_enc]) if n_enc else None
        y_sim, _ = m(u_[:, n_enc:], state, return_state=False, saturate=saturate, **extra)
    return y_sim[0].cpu().double().numpy()


# ------------------------------------------------------------------------------------------------------------------
# fit.py: the validation score's pieces


def test_validation_rmse_leaves_out_the_encoders_samples():
    """Kills F26 (the encoder's samples, copied from the measurement, counted with error 0)."""
    n_enc = 6
    m = small(encoder_window=n_enc)
    recs = [record(40, seed=1), record(31, seed=2)]
    m.set_normalisation([r.u for r in recs], [r.y for r in recs])
    errs = [_simulate(m, r.u, r.y, n_enc) - r.y[n_enc:].numpy() for r in recs]
    pooled = np.concatenate(errs)
    want = np.sqrt((pooled ** 2).mean(0))
    got = validation_rmse(m, recs)
    assert np.allclose(got, want, rtol=1e-10, atol=0)
    # from rest every sample is scored
    errs = [_simulate(m, r.u, r.y, 0) - r.y.numpy() for r in recs]
    want_rest = np.sqrt((np.concatenate(errs) ** 2).mean(0))
    assert np.allclose(validation_rmse(m, recs, from_rest=True), want_rest, rtol=1e-10, atol=0)


def test_scored_outputs_are_the_samples_after_the_encoder_of_every_record_or_block():
    """Kills F30 (a block's samples read by the encoder scored), F31 (a record's encoder samples scored)."""
    r1, r2 = _two_output_record(20, 1), _two_output_record(15, 2)
    got = scored_outputs([r1, r2], 4).numpy()
    want = np.concatenate([r1.y.numpy()[4:], r2.y.numpy()[4:]])
    assert got.shape == (27, 2) and np.array_equal(got, want)
    got = scored_outputs([r1, r2], 4, [Block(0, 2, 9), Block(1, 10, 15)]).numpy()
    want = np.concatenate([r1.y.numpy()[4:9], r2.y.numpy()[10:15]])
    assert got.shape == (10, 2) and np.array_equal(got, want)


def test_block_errors_start_after_the_encoder():
    """Kills F28 (a block that starts inside the encoder's window scored from its start: the copied measurement
    counted with error 0)."""
    n_enc = 5
    m = small(encoder_window=n_enc)
    r = record(30, seed=4)
    m.set_normalisation([r.u], [r.y])
    err, measured = block_errors(m, [r], [Block(0, 2, 12)])
    y_sim = _simulate(m, r.u, r.y, n_enc)  # samples 5 … 29
    want = y_sim[0:7] - r.y.numpy()[5:12]
    assert err.shape == (7, 1) and np.allclose(err.numpy(), want, rtol=0, atol=1e-12)
    assert np.array_equal(measured.numpy(), r.y.numpy()[5:12])


def test_measured_rms_divides_by_the_measured_samples_of_each_output():
    """Kills F25 (the squares summed over the measured samples but divided by every sample)."""
    e = torch.tensor([[1.0, 2.0], [2.0, -1.0], [3.0, 4.0], [-2.0, 0.5]], dtype=F64)
    y = torch.tensor([[0.0, 1.0], [math.nan, 1.0], [0.0, math.nan], [0.0, math.nan]], dtype=F64)
    got = measured_rms(e, y)
    want = [math.sqrt((1 + 9 + 4) / 3), math.sqrt((4 + 1) / 2)]
    assert got == pytest.approx(want, rel=1e-14)


def test_output_scales_are_population_stds_with_the_fallback_only_where_undefined():
    """Kills F32 (sample std, n − 1), F33 (the fallback used for every output once given)."""
    y = torch.tensor([[1.0, 2.0, 5.0], [2.0, 2.0, 7.0], [4.0, 2.0, 6.0], [7.0, 2.0, math.nan]], dtype=F64)
    got = output_scales(y, fallback=[10.0, 20.0, 30.0])
    assert got[0] == pytest.approx(float(np.std([1, 2, 4, 7])), rel=1e-14)
    assert got[1] == 20.0  # constant: σ_k
    assert got[2] == pytest.approx(float(np.std([5, 7, 6])), rel=1e-14)
    got = output_scales(y)
    assert math.isnan(got[1]) and got[0] == pytest.approx(float(np.std([1, 2, 4, 7])), rel=1e-14)


def test_validation_score_leaves_out_undefined_scales_and_keeps_a_diverged_nan():
    """Kills F35 (a NaN scale's NRMSE kept in the mean), F36 (the mean divided by every output), F37 (a diverged
    NaN RMSE of an unscaled output reported as inf)."""
    per, mean = validation_score([1.0, 2.0, 3.0], [2.0, math.nan, 4.0])
    assert per[0] == 0.5 and math.isnan(per[1]) and per[2] == 0.75
    assert mean == pytest.approx((0.5 + 0.75) / 2, rel=1e-15)
    _, mean = validation_score([math.nan, 1.0], [math.nan, 2.0])
    assert math.isnan(mean)
    _, mean = validation_score([math.inf, 1.0], [math.nan, 2.0])
    assert mean == math.inf


# ------------------------------------------------------------------------------------------------------------------
# fit.py: the training loss's weights and the validation scales


def _first_loss(m, r: IORecord, n_enc: int, **options) -> tuple[float, np.ndarray]:
    """(fit_simulation's first training loss on a record that holds exactly one window, the normalised errors
    (window, p) of that window written out from a copy of the model at the same normalisation)."""
    window = len(r) - n_enc
    ref = copy.deepcopy(m)
    ref.set_normalisation([r.u], [r.y])
    e = (_simulate(ref, r.u, r.y, n_enc, saturate=False) - r.y.numpy()[n_enc:]) / r.y.numpy().std(0)
    cfg = SimulationFit(window=window, batch_size=2, steps=1, lr=0.0, val_fraction=0.0, grad_clip=None, **options)
    history = fit_simulation(m, [r], config=cfg)
    return history["train_loss"][0], e


def test_a_washout_leaves_its_samples_out_of_a_mean_over_the_others():
    """Kills F49 (one sample fewer washed out), F51 (the weights not renormalised: the sum over the scored samples
    divided by the whole window)."""
    loss, e = _first_loss(small(), record(24, seed=5), 0, washout=7)
    assert loss == pytest.approx(float((e[7:] ** 2).mean()), rel=1e-10)


def test_with_an_encoder_the_washout_is_not_applied():
    """Kills F50 (the washout zeroing the first samples after the encoder's estimate too; the module docstring: the
    washout is for a model without an encoder)."""
    loss, e = _first_loss(small(encoder_window=5), record(29, seed=6), 5, washout=7)
    assert loss == pytest.approx(float((e ** 2).mean()), rel=1e-10)


def test_the_validation_scales_are_the_validation_stds_with_the_training_sigma_for_a_constant_output():
    """Kills F53 (no fallback: a validation output that is constant got a NaN scale and left the score) and F52
    (validate_from_rest scaling by the samples after the encoder's window only, though every sample is scored)."""
    n_enc = 4
    tr = _two_output_record(60, seed=7)
    va = _two_output_record(25, seed=8)
    va = IORecord(va.u, torch.stack([va.y[:, 0], torch.full((25,), 0.3, dtype=F64)], 1), 1.0, "val")
    cfg = SimulationFit(window=20, batch_size=2, steps=1, lr=0.0, val_every=1, grad_clip=None)
    h = fit_simulation(small(n_outputs=2, encoder_window=n_enc), [tr], [va], config=cfg)
    assert h["val_y_std"][0] == pytest.approx(float(va.y[n_enc:, 0].numpy().std()), rel=1e-12)
    assert h["val_y_std"][1] == pytest.approx(float(tr.y[:, 1].numpy().std()), rel=1e-12)  # σ of the training data
    assert math.isfinite(h["best_val_nrmse"])
    cfg = SimulationFit(window=20, batch_size=2, steps=1, lr=0.0, val_every=1, grad_clip=None,
                        validate_from_rest=True)
    h = fit_simulation(small(n_outputs=2, encoder_window=n_enc), [tr], [va], config=cfg)
    assert h["val_y_std"][0] == pytest.approx(float(va.y[:, 0].numpy().std()), rel=1e-12)


def test_the_best_validation_rmse_is_the_mean_of_the_per_output_rmses():
    """Kills F69 (best_val_rmse the largest output's RMSE)."""
    tr, va = _two_output_record(60, seed=9), _two_output_record(30, seed=10)
    m = small(n_outputs=2)
    cfg = SimulationFit(window=20, batch_size=2, steps=1, lr=0.0, val_every=1, grad_clip=None)
    h = fit_simulation(m, [tr], [va], config=cfg)
    e = _simulate(m, va.u, va.y, 0) - va.y.numpy()
    per = np.sqrt((e ** 2).mean(0))
    assert h["best_val_rmse_per_output"] == pytest.approx(per.tolist(), rel=1e-10)
    assert h["best_val_rmse"] == pytest.approx(float(per.mean()), rel=1e-10)


# ------------------------------------------------------------------------------------------------------------------
# commands.py


def _bench(n_outputs: int, scale, unit, published=(), n_init: int = 3, test=None):
    from ssmkit.sysid.records import SysidBenchmark

    r = _two_output_record(40, 11) if n_outputs == 2 else record(40, 11)
    return SysidBenchmark("b", "B", [r], list(test or [r]), n_init, unit, scale=scale, published=list(published))


def test_validation_in_units_scales_the_mean_by_the_shared_scale_even_without_per_output_rmses():
    """Kills C05 (outputs sharing one scale treated as differing: a history without per-output RMSEs reported None)
    and C06, C07 (the mean not converted; the largest converted output taken for the mean)."""
    from ssmkit.sysid.commands import validation_in_units

    shared = _bench(2, 1000.0, "mV")
    assert validation_in_units(shared, {"best_val_rmse": 0.25}) == {"best_val_rmse": 250.0}
    got = validation_in_units(shared, {"best_val_rmse": 0.25, "best_val_rmse_per_output": [0.2, 0.3]})
    assert got["best_val_rmse"] == pytest.approx(250.0) and got["best_val_rmse_per_output"] == pytest.approx([200, 300])
    mixed = _bench(2, (1000.0, 1.0), ("mV", "m"))
    got = validation_in_units(mixed, {"best_val_rmse": 0.25, "best_val_rmse_per_output": [0.2, 0.3]})
    assert got["best_val_rmse"] == pytest.approx((200.0 + 0.3) / 2, rel=1e-14)
    assert validation_in_units(mixed, {"best_val_rmse": 0.25})["best_val_rmse"] is None


def test_prediction_mode_keeps_a_combine_given_on_the_command_line():
    """Kills C04 (prediction mode replaced a given --recipe.combine by "best" when it set the tail validation)."""
    from ssmkit.sysid.commands import _parser, recipe_from_args

    cfg = _parser("ssmkit sysid").parse_args(["--benchmark", "cascaded_tanks", "--mode", "prediction",
                                               "--recipe.combine", "average"])
    got = recipe_from_args("cascaded_tanks", cfg)
    assert (got.combine, got.validation, got.first_layer_init) == ("average", "tail", "layer")


def test_the_user_data_entry_records_the_default_test_fraction_the_missing_cells_and_a_tab_delimiter(tmp_path):
    """Kills C10 (--delimiter '\\t' typed as backslash-t not read as a tab), C11 (results.json's test_fraction None
    where the default 0.2 was used), C15 (missing_outputs counting every sample instead of the NaN cells)."""
    from ssmkit.sysid.commands import _parser, _user_data

    rows = ["u\ty"] + [f"{math.sin(0.3 * k):.6f}\t{'' if k in (5, 9, 30) else f'{math.cos(0.2 * k):.6f}'}"
                       for k in range(100)]
    path = tmp_path / "log.tsv"
    path.write_text("\n".join(rows) + "\n")
    parser = _parser("ssmkit sysid")
    cfg = parser.parse_args(["--data", str(path), "--inputs", "u", "--outputs", "y", "--dt", "0.5",
                             "--delimiter", "\\t", "--missing-outputs"])
    bench, data = _user_data(parser, cfg)
    assert data["test_fraction"] == 0.2
    assert [len(r) for r in bench.train] == [80] and [len(r) for r in bench.test] == [20]
    assert data["train_records"][0]["missing_outputs"] == 3  # samples 5, 9 and 30, all in the first 80
    assert data["test_records"][0]["missing_outputs"] == 0
    assert float(bench.train[0].u[7, 0]) == pytest.approx(math.sin(2.1), abs=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# report.py


def test_unit_text_and_a_single_outputs_published_record():
    """Kills R01 (two outputs in one unit written "mV, mV") and R02 (a single output's one number called "not
    compared")."""
    from ssmkit.sysid.records import Published
    from ssmkit.sysid.report import published_record, unit_text

    assert unit_text(_bench(2, 1000.0, "mV")) == "mV"
    assert unit_text(_bench(2, (1000.0, 1.0), ("mV", "m"))) == "mV, m"
    pub = Published("someone", 0.5, "a paper")
    one = _bench(1, 1.0, "V", published=[pub])
    assert published_record(one, pub) == "official test"


def test_the_table_aggregates_the_rmses_and_calls_a_nan_fit_undefined():
    """Kills R04 (the aggregate row over the fit % instead of the RMSEs) and R05 (a NaN fit printed "nan")."""
    from ssmkit.sysid.records import Published
    from ssmkit.sysid.report import results_table

    b = _bench(2, 1.0, "V", published=[Published("p", 0.1, "s", aggregate="rms")])
    scores = {"records": [{"name": "t", "rmse": [0.3, 0.4], "fit": [80.0, math.nan]}]}
    table = results_table(b, "me", scores)
    assert f"| me | t, {'root mean square over the outputs'} | {math.sqrt((0.09 + 0.16) / 2):.4g} |" in table
    assert "| 80.00, undefined |" in table and "nan" not in table


def test_time_axis_starts_at_the_first_sample_time():
    """Kills R07 (an irregular record's axis in absolute times)."""
    from ssmkit.sysid.report import time_axis

    t = torch.tensor([5.0, 5.5, 6.25, 7.0], dtype=F64)
    r = IORecord(torch.zeros(4, 1, dtype=F64), torch.zeros(4, 1, dtype=F64), 0.5, "r", t=t)
    assert time_axis(r).tolist() == [0.0, 0.5, 1.25, 2.0]


@pytest.mark.parametrize("L", [10, 11])
def test_spectrum_frequencies_on_a_uniform_grid_are_rfftfreq_without_dc_and_nyquist(L):
    """Kills R09 (the span without its last period: k / ((L − 1) Ts)), R10 (the Nyquist frequency kept)."""
    from ssmkit.sysid.report import spectrum_frequencies

    ts = 0.1
    want = np.fft.rfftfreq(L, ts)[1:]
    want = want[want < 1 / (2 * ts) - 1e-9]
    assert np.allclose(spectrum_frequencies(np.arange(L) * ts, ts), want, rtol=1e-12, atol=0)


def test_measured_period_is_at_least_ts():
    """Kills R11 (a median gap below Ts taken: the band above the nominal Nyquist drawn)."""
    from ssmkit.sysid.report import measured_period

    assert measured_period(np.array([0.0, 0.4, 0.8, 1.3]), 1.0) == 1.0
    assert measured_period(np.array([0.0, 3.0, 6.0, 10.0]), 1.0) == 3.0


def test_lomb_scargle_is_the_least_squares_sinusoid_fit():
    """Kills R12 (τ from Σ sin ωt cos ωt instead of 2×), R13 (sqrt(P) / L), R14 (the sine denominator's cross term
    with the wrong sign). P(ω) is half the sum of squares that the least-squares a cos ωt + b sin ωt explains
    (Lomb 1976), computed here by numpy's lstsq; and |DFT| / L on uniform times."""
    from ssmkit.sysid.report import lomb_scargle_amplitude

    g = np.random.default_rng(0)
    t = np.sort(g.uniform(0, 20, 60))
    x = g.standard_normal((60, 2))
    f = np.array([0.07, 0.31, 0.9, 1.7])
    got = lomb_scargle_amplitude(t, x, f, chunk=3)
    for i, fi in enumerate(f):
        a = np.stack([np.cos(2 * np.pi * fi * t), np.sin(2 * np.pi * fi * t)], 1)
        for j in range(2):
            coef = np.linalg.lstsq(a, x[:, j], rcond=None)[0]
            explained = float(np.sum((a @ coef) ** 2))
            assert got[i, j] == pytest.approx(math.sqrt(0.5 * explained / 60), rel=1e-9)
    tu = np.arange(32) * 0.25
    fu = np.arange(1, 16) / (32 * 0.25)
    assert np.allclose(lomb_scargle_amplitude(tu, x[:32, 0], fu), np.abs(np.fft.rfft(x[:32, 0]))[1:16] / 32,
                       rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# workflow.py


def _scripted(monkeypatch):
    """identify's train_run replaced by the untrained model of torch.manual_seed(run_seed) and a scripted history."""
    from ssmkit.sysid import workflow

    def fake(bench, layer, recipe, train, val, run_seed, mode="simulation", dtype=None, fold=None, log=False,
             device=None):
        torch.manual_seed(run_seed)
        model = workflow.build_model(bench, layer, recipe, mode, dtype)
        return model, {"best_val_nrmse": 0.1 * (run_seed + 1), "best_val_rmse": 0.1, "best_step": 1, "steps": 1,
                       "seconds": 0.0, "mode": mode}

    monkeypatch.setattr(workflow, "train_run", fake)


def _toy_bench(n_init: int, constant_second: bool = False):
    from ssmkit.sysid.records import SysidBenchmark

    g = torch.Generator().manual_seed(12)

    def rec(n, name):
        u = torch.randn(n, 1, generator=g, dtype=F64)
        y = torch.randn(n, 2, generator=g, dtype=F64)
        if constant_second:
            y[:, 1] = 0.7
        return IORecord(u, y, 0.5, name)

    return SysidBenchmark("toy", "toy", [rec(40, "a"), rec(36, "b")], [rec(20, "t")], n_init, "V")


def test_an_averaged_ensemble_with_an_encoder_is_scaled_by_the_samples_it_scores(monkeypatch):
    """Kills W21 (the ensemble's s_k over every validation sample, the encoder's included, while its RMSE leaves
    them out)."""
    from ssmkit.sysid.recipes import Recipe
    from ssmkit.sysid.workflow import identify

    _scripted(monkeypatch)
    bench = _toy_bench(n_init=4)
    recipe = Recipe(d_model=2, n_layers=1, d_state=2, window=8, val_fraction=0.25, encoder_window=4, restarts=2,
                    combine="average")
    model, h = identify(bench, "s4d", recipe, dtype=F64)
    assert model.encoder_window == 4
    tails = [r.part(cut, len(r), "tail") for r, cut in zip(bench.train, (30, 27))]  # round(40·0.75), round(36·0.75)
    rmse_k = validation_rmse(model, tails)
    scored = np.concatenate([r.y.numpy()[4:] for r in tails])
    want = float(np.mean(np.array(rmse_k) / scored.std(0)))
    assert h["best_val_nrmse"] == pytest.approx(want, rel=1e-12)


def test_a_kfold_ensemble_scales_a_constant_output_by_the_members_sigma(monkeypatch):
    """Kills W20 (no fallback: an output constant over the held-out blocks left out of the out-of-fold score)."""
    from ssmkit.sysid.recipes import Recipe
    from ssmkit.sysid.workflow import identify

    _scripted(monkeypatch)
    bench = _toy_bench(n_init=0, constant_second=True)
    recipe = Recipe(d_model=2, n_layers=1, d_state=2, window=8, restarts=2, validation="kfold", combine="average")
    model, h = identify(bench, "s4d", recipe, dtype=F64)
    # member j held out block j of 2 (boundaries round(i L / 2)): a[0:20], b[0:18] for run 0; a[20:40], b[18:36]
    a, b = bench.train
    e, y = [], []
    for member, spans in zip(model.members, (((a, 0, 20), (b, 0, 18)), ((a, 20, 40), (b, 18, 36)))):
        for r, lo, hi in spans:
            e.append(_simulate(member, r.u, r.y, 0)[lo:hi] - r.y.numpy()[lo:hi])
            y.append(r.y.numpy()[lo:hi])
    e, y = np.concatenate(e), np.concatenate(y)
    assert np.all(y[:, 1] == 0.7)
    rmse_k = np.sqrt((e ** 2).mean(0))
    sigma = model.members[0].y_std.cpu().double().numpy()
    assert h["best_val_nrmse"] == pytest.approx(float((rmse_k[0] / y[:, 0].std() + rmse_k[1] / sigma[1]) / 2),
                                                rel=1e-12)


def test_the_spectrum_of_an_output_measured_every_third_sample_stops_at_its_own_nyquist():
    """Kills R21 (the band cut at 1 / (2 Ts) whatever the gaps between the measured samples: the spectrum's images
    drawn as signal). Measured every 3 samples, Ts = 1 s, 90 samples after the init window: f_k = k / 90 s below
    1 / (2 · 3 s), k = 1 … 14."""
    pytest.importorskip("matplotlib")
    from ssmkit.sysid.records import SysidBenchmark
    from ssmkit.sysid.report import spectrum_figure

    n = 100
    k = torch.arange(n, dtype=F64)
    y = torch.sin(2 * math.pi * 0.05 * k)[:, None]
    gappy = torch.full_like(y, math.nan)
    gappy[::3] = y[::3]
    r = IORecord(torch.cos(0.3 * k)[:, None], gappy, 1.0, "gappy")
    bench = SysidBenchmark("g", "G", [r], [r], 10, "V")
    import matplotlib.pyplot as plt

    fig = spectrum_figure(bench, [y * 0.9])
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert np.allclose(lines[0].get_xdata(), np.arange(1, 15) / 90, rtol=1e-12, atol=0)
    plt.close(fig)


def test_the_data_initialisation_reads_the_records_before_their_validation_tails(monkeypatch):
    """Kills W14 (first_layer_init="data" under tail validation reading the whole records, the validated tails too:
    the poles estimated from the outputs early stopping scores)."""
    from ssmkit.sysid import workflow
    from ssmkit.sysid.recipes import Recipe

    seen = {}
    monkeypatch.setattr(workflow, "fit_simulation", lambda model, train, val, config, log, blocks=None: {})
    monkeypatch.setattr(workflow, "init_from_data", lambda model, records, layers: seen.update(records=records))
    bench = _toy_bench(n_init=0)
    recipe = Recipe(d_model=2, n_layers=1, d_state=2, window=8, val_fraction=0.25, first_layer_init="data")
    workflow.train_run(bench, "s4d", recipe, bench.train, None, 0, dtype=F64)
    # cut = round(L · 0.75): 30 of a's 40 samples, 27 of b's 36
    assert [len(r) for r in seen["records"]] == [30, 27]
    for r, full in zip(seen["records"], bench.train):
        assert torch.equal(r.y, full.y[:len(r)]) and torch.equal(r.u, full.u[:len(r)])


def test_outside_blocks_keeps_nothing_of_a_block_that_holds_a_shorter_one():
    """Kills W18 (the cut resumed after the last block's stop, not the furthest: a block nested inside an earlier,
    longer one resurrected the samples between their stops)."""
    from ssmkit.sysid.workflow import outside_blocks

    r = _two_output_record(30, 13)
    pieces = outside_blocks([r], [Block(0, 5, 20), Block(0, 8, 12)])
    assert [(p.name, len(p)) for p in pieces] == [(f"{r.name}[0:5]", 5), (f"{r.name}[20:30]", 10)]
    assert torch.equal(pieces[1].y, r.y[20:30]) and torch.equal(pieces[0].u, r.u[:5])


def test_periodicity_is_checked_per_input_against_its_own_size():
    """Kills W25 (every input checked against the largest input's size: a small input that changes by half of
    itself between periods passed beside a large one)."""
    from ssmkit.sysid.workflow import periodic_steady_state

    big = torch.tensor([1e3, -2e3, 5e2], dtype=F64)
    small_in = torch.tensor([1e-3, 2e-3, -1e-3], dtype=F64)
    u = torch.stack([big.repeat(2), small_in.repeat(2)], 1)
    assert periodic_steady_state(lambda v: v, u, period=3).shape == (6, 2)
    u[4, 1] += 1e-3  # half of input 1's largest |u| = 2e-3, far below 1e-6 of input 0's
    with pytest.raises(ValueError, match="input 1's samples 3 apart differ by up to 0.001"):
        periodic_steady_state(lambda v: v, u, period=3)
