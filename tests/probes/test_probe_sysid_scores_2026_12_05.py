"""Probe of 2026-12-05: the validation score of multi-output system identification, and per-output sensor ranges.

The data: one input through a pole 0.9 into output 0 (with 5 % noise) and through a pole 0.5 and a tanh into output 1
(buried in unit-variance noise, so its validation error rises while output 0's still falls), each output multiplied
by a unit factor; "(1, 1e4)" and "(1e4, 1)" are the same experiment with one output in units 1e4 times smaller.
Training is invariant to those factors (the model and its loss normalise each output by its std: the per-output
validation RMSEs of the two runs agree to 1e-15 after the factors), so every choice made on validation must be too.
References are numpy: the per-output RMSE and population std of the scored validation samples, the old and new
selection rules replayed on the recorded validation curves, np.clip per column, the censored error element by element.

Findings (fixed; a test each that fails before the fix):

1. *Early stopping and the kept weights followed the largest-unit output* (``fit.fit_simulation``): the score was the
   mean over the outputs of the RMSEs in physical units. On the (1, 1e4) data (seed 1, validation every 5 steps) the
   kept step was 40, the minimum of output 1's RMSE alone; the same run in (1e4, 1) units kept step 55, output 0's
   minimum (held-out k-fold block [200, 400), seed 2: steps 70 and 95). The score is now the NRMSE averaged over the
   outputs, RMSE_k / s_k with s_k the population std of output k over the scored validation samples (1 for an output
   constant there, the model normalisation's rule): both units keep step 60 (block: 75), mean NRMSE 0.695 against
   0.813 at step 40 and 0.700 at step 55. With one output the score is RMSE / s, a monotone transform: the same step,
   the same early stop (tested).
2. *The choice between restarts and of the best run per k-fold block* (``workflow.identify``, ``combine="best"``,
   ``validation="kfold"``) compared the runs' mean physical RMSEs: of 3 restarts the old code kept run 1 in units
   (1, 1e4) and run 2 in (1e4, 1). They are ranked by the score now (run 2 in both: mean NRMSE 0.770 against 0.813
   and 0.873); on k-fold block 1 the mean RMSE in units (1, 1e4) would keep run 3 (5 526 against 5 686), the score
   keeps run 1 (0.981 against 1.061). The ensembles' histories (``combine="average"``, k-fold) report the score of
   the averaged or out-of-fold simulation, s_k from the pooled scored samples.
3. *One ``output_range`` for every output* (``DeepWiener``, ``Recipe.output_range``): a range given per output was
   refused, and one range in one output's unit is wrong for outputs in other units. It now takes one pair of limits
   for every output (as before) or one pair per output (None: no limit on that output), clips and censors per output
   (forward, step, the censored loss, the ONNX step export), and says which shape it expects when refused.
4. *One ``level_weight`` level for every output* (``SimulationFit.level_weight``) compared outputs in other units
   against one level: the level is now one number for every output or one per output (None: not weighed).

New history entries (``fit_simulation`` and ``identify``): ``best_val_nrmse`` (the score), ``best_val_rmse_per_output``
(physical units), ``val_nrmse`` and ``val_y_std``; ``best_val_rmse`` stays the mean of the per-output RMSEs at the
kept step (as before for one output, or outputs in one unit).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import signal

from ssmkit.sysid import fit as fit_module
from ssmkit.sysid.commands import _parser, recipe_from_args
from ssmkit.sysid.fit import SimulationFit, fit_simulation, fold_blocks, validation_score
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import build_model, identify

F64 = torch.float64
A, B = (1.0, 1e4), (1e4, 1.0)  # the same data in two unit systems


def two_outputs(n: int, seed: int, units=(1.0, 1.0), n_out: int = 2) -> IORecord:
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, 1))
    y0 = signal.lfilter([0.1], [1, -0.9], u[:, 0]) + 0.05 * rng.standard_normal(n)
    y1 = np.tanh(signal.lfilter([0.3], [1, -0.5], u[:, 0])) + rng.standard_normal(n)
    y = np.stack([y0 * units[0], y1 * units[1]], 1)[:, :n_out]
    return IORecord(torch.tensor(u), torch.tensor(y), 0.1, f"r{seed}")


def small(n_out: int = 2, **kw) -> DeepWiener:
    return DeepWiener(1, n_out, d_model=8, n_layers=2, layer_options={"d_state": 4}, dt=0.1, dtype=F64, **kw)


CFG = SimulationFit(window=64, batch_size=4, steps=80, lr=1e-2, val_fraction=0.3, val_every=5, patience=None,
                    washout=10, seed=1)


def fit(units, n_out: int = 2, cfg: SimulationFit = CFG, model_seed: int = 1, **kw):
    torch.manual_seed(model_seed)
    model = small(n_out)
    history = fit_simulation(model, [two_outputs(600, 1, units, n_out)], config=cfg, **kw)
    return model, history


def np_rmse_std(y_hat: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.sqrt(np.mean((y_hat - y) ** 2, axis=0)), np.sqrt(np.mean((y - y.mean(0)) ** 2, axis=0))


def first_min(values) -> int:
    """The index of the first strict minimum (a later equal value does not replace it; NaN never wins)."""
    best, where = math.inf, -1
    for i, v in enumerate(values):
        if v < best:
            best, where = v, i
    return where


def old_stop(scores, steps, patience):
    """The old loop replayed: (best step, last step) of early stopping on these scores."""
    best, best_step, bad = math.inf, 0, 0
    for s, v in zip(steps, scores):
        if v < best:
            best, best_step, bad = v, s, 0
        else:
            bad += 1
            if patience is not None and bad >= patience:
                return best_step, s
    return best_step, steps[-1]


# ----------------------------------------------------------------------------------------------------------------
# the score of fit_simulation


def test_one_output_keeps_the_step_and_the_early_stop_of_the_rmse():
    cfg = dataclasses.replace(CFG, steps=200, patience=3)
    model, h = fit((1.0, 1.0), n_out=1, cfg=cfg)
    steps = [s for s, _ in h["val_rmse"]]
    rmse = [v[0] for _, v in h["val_rmse"]]
    best_step, last = old_stop(rmse, steps, 3)
    assert (h["best_step"], h["steps"]) == (best_step, last) and last < 200  # it stopped early, where it did before
    rec = two_outputs(600, 1, n_out=1)
    tail = rec.y[420:].numpy()  # the validated 30 %: cut round(600 · 0.7) = 420
    s = tail.std(0)
    np.testing.assert_allclose(h["val_y_std"], s, rtol=1e-12)
    np.testing.assert_allclose([v[0] for _, v in h["val_nrmse"]], np.array(rmse) / s[0], rtol=1e-12)
    with torch.no_grad():
        y_hat = model(rec.u[420:][None])[0][0].numpy()
    r, _ = np_rmse_std(y_hat, tail)
    assert h["best_val_rmse"] == pytest.approx(r[0], rel=1e-10) and h["best_val_rmse"] == min(rmse)
    assert h["best_val_nrmse"] == pytest.approx(r[0] / s[0], rel=1e-10)
    assert h["best_val_rmse_per_output"] == [h["best_val_rmse"]]


def test_two_outputs_1e4_apart_keep_the_same_step_in_either_unit():
    """Finding 1."""
    (ma, ha), (_, hb) = fit(A), fit(B)
    steps = [s for s, _ in ha["val_rmse"]]
    va, vb = (np.array([v for _, v in h["val_rmse"]]) for h in (ha, hb))
    np.testing.assert_allclose(va * [1e4, 1e-4], vb, rtol=1e-9)  # the same training, in other units
    rec = two_outputs(600, 1, A)
    s = rec.y[420:].numpy().std(0)
    want = steps[first_min((va / s).mean(1))]
    assert ha["best_step"] == hb["best_step"] == want
    np.testing.assert_allclose(ha["val_y_std"], s, rtol=1e-12)
    np.testing.assert_allclose(hb["val_y_std"], s * [1e4, 1e-4], rtol=1e-12)
    assert ha["best_val_nrmse"] == pytest.approx(hb["best_val_nrmse"], rel=1e-9)
    # not vacuous: the old rule (mean of the physical RMSEs) keeps each unit's larger output's best step
    old_a, old_b = steps[first_min(va.mean(1))], steps[first_min(vb.mean(1))]
    assert old_a == steps[first_min(va[:, 1])] and old_b == steps[first_min(vb[:, 0])] and old_a != old_b
    assert len({old_a, old_b, want}) == 3  # (40, 55, 60)
    # what is kept and reported, against numpy on the kept weights' simulation of the validated tail
    with torch.no_grad():
        y_hat = ma(rec.u[420:][None])[0][0].numpy()
    r, _ = np_rmse_std(y_hat, rec.y[420:].numpy())
    np.testing.assert_allclose(ha["best_val_rmse_per_output"], r, rtol=1e-10)
    assert ha["best_val_rmse"] == pytest.approx(r.mean(), rel=1e-10)
    assert ha["best_val_nrmse"] == pytest.approx((r / s).mean(), rel=1e-10)
    np.testing.assert_allclose(hb["best_val_rmse_per_output"], r * [1e4, 1e-4], rtol=1e-9)


def test_held_out_blocks_are_scored_on_their_own_std_in_either_unit():
    """k-fold blocks: s_k is the std of the blocks' scored samples (after an encoder's first samples)."""
    blocks = fold_blocks([600], 3, 1)  # samples [200, 400)
    cfg = dataclasses.replace(CFG, steps=100, seed=2)
    ha, hb = (fit_simulation(seeded(encoder_window=5), [two_outputs(600, 1, u)], config=cfg, blocks=blocks)
              for u in (A, B))
    va, vb = (np.array([v for _, v in h["val_rmse"]]) for h in (ha, hb))
    np.testing.assert_allclose(va * [1e4, 1e-4], vb, rtol=1e-9)
    y = two_outputs(600, 1, A).y[200:400].numpy()
    steps = [s for s, _ in ha["val_rmse"]]
    assert ha["best_step"] == hb["best_step"] == steps[first_min((va / y.std(0)).mean(1))]
    old = steps[first_min(va.mean(1))], steps[first_min(vb.mean(1))]  # the old rule: steps 70 and 95 (the new: 75)
    assert old[0] != old[1]
    np.testing.assert_allclose(ha["val_y_std"], y.std(0), rtol=1e-12)
    # an encoder window reaching into the block leaves its first samples unscored: Block(0, 0, 200) scores [5, 200)
    h = fit_simulation(seeded(encoder_window=5), [two_outputs(600, 1, A)], config=dataclasses.replace(cfg, steps=5),
                       blocks=fold_blocks([600], 3, 0))
    np.testing.assert_allclose(h["val_y_std"], two_outputs(600, 1, A).y[5:200].numpy().std(0), rtol=1e-12)


def seeded(**kw) -> DeepWiener:
    """The same starting weights for every unit system."""
    torch.manual_seed(1)
    return small(encoder_hidden=8, **kw)


def test_a_constant_validation_output_is_scored_in_its_own_unit_not_divided_by_zero(monkeypatch):
    """s_k = 1 for an output constant over the validated samples (the model normalisation's rule), not 0 (an inf
    score at every step would keep the starting weights); the RMSEs are scripted."""
    script = iter([[0.5, 3.0], [0.4, 1.0], [0.45, 0.5]])
    monkeypatch.setattr(fit_module, "validation_rmse", lambda model, records, from_rest=False: next(script))
    rec = two_outputs(200, 3)
    const = IORecord(rec.u, torch.cat([rec.y[:, :1], torch.full((200, 1), 7.0, dtype=F64)], 1), 0.1, "c")
    torch.manual_seed(0)
    cfg = SimulationFit(window=32, batch_size=2, steps=3, val_every=1, val_fraction=0.3, patience=None)
    h = fit_simulation(small(), [const], config=cfg)
    s0 = const.y[140:, 0].numpy().std()
    assert h["val_y_std"] == [pytest.approx(s0, rel=1e-12), 1.0]
    nrmse = [(0.5 / s0 + 3.0) / 2, (0.4 / s0 + 1.0) / 2, (0.45 / s0 + 0.5) / 2]
    assert h["best_step"] == 1 + int(np.argmin(nrmse)) and h["best_val_nrmse"] == pytest.approx(min(nrmse))
    with pytest.raises(ValueError, match="one entry per output; got 2 and 3"):
        validation_score([1.0, 2.0], [1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------------------------------------------
# restarts and ensembles


def bench(units) -> SysidBenchmark:
    return SysidBenchmark("two", "two outputs", [two_outputs(600, 1, units)], [two_outputs(300, 9, units)], 0, "SI")


RECIPE = Recipe(d_model=8, n_layers=2, d_state=4, window=64, batch_size=4, steps=40, lr=1e-2, val_every=5,
                patience=100, washout=10, val_fraction=0.3)


def test_restarts_keep_the_same_run_in_either_unit():
    """Finding 2 (``combine="best"``): seed 0 trains runs 0-2."""
    (ma, ha), (mb, hb) = (identify(bench(u), "s4d", dataclasses.replace(RECIPE, restarts=3), dtype=F64) for u in (A, B))
    assert ha["seed"] == hb["seed"]
    sa, sb = ([r["best_val_nrmse"] for r in h["restarts"]] for h in (ha, hb))
    np.testing.assert_allclose(sa, sb, rtol=1e-9)
    assert ha["seed"] == hb["seed"] == int(np.argmin(sa))
    assert ha["best_val_nrmse"] == sa[ha["seed"]] and ha["best_step"] == hb["best_step"]
    np.testing.assert_allclose(ma.decoder.weight.detach().numpy(), mb.decoder.weight.detach().numpy(), rtol=1e-7)
    # not vacuous: ranked by the mean of the physical RMSEs, each unit would put another run first
    ra, rb = ([r["best_val_rmse"] for r in h["restarts"]] for h in (ha, hb))
    assert int(np.argmin(ra)) != int(np.argmin(rb))


def _mean_sim(members, u: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return np.mean([m(u[None])[0][0].numpy() for m in members], axis=0)


def test_ensembles_report_the_score_of_the_averaged_and_the_out_of_fold_simulation():
    for units in (A, B):
        ens, h = identify(bench(units), "s4d", dataclasses.replace(RECIPE, restarts=2, combine="average", steps=10),
                          dtype=F64)
        tail = bench(units).train[0]
        y = tail.y[420:].numpy()
        r, s = np_rmse_std(_mean_sim(ens.members, tail.u[420:]), y)
        np.testing.assert_allclose(h["best_val_rmse_per_output"], r, rtol=1e-10)
        assert h["best_val_rmse"] == pytest.approx(r.mean(), rel=1e-10)
        assert h["best_val_nrmse"] == pytest.approx((r / s).mean(), rel=1e-10)
    # k-fold, the best run of each block: kept by the score, the same runs in either unit; the out-of-fold score
    recipe = dataclasses.replace(RECIPE, restarts=4, folds=2, validation="kfold", combine="best", steps=20)
    (ea, ha), (eb, hb) = (identify(bench(u), "s4d", recipe, dtype=F64) for u in (A, B))
    assert [r["kept"] for r in ha["restarts"]] == [r["kept"] for r in hb["restarts"]]
    for f in (0, 1):
        runs = [r for r in ha["restarts"] if r["fold"] == f]
        assert min(runs, key=lambda r: r["best_val_nrmse"])["kept"]
    block = [r for r in ha["restarts"] if r["fold"] == 1]  # not vacuous: by the mean RMSE in units A, another run
    assert min(block, key=lambda r: r["best_val_rmse"]) is not min(block, key=lambda r: r["best_val_nrmse"])
    rec = bench(A).train[0]
    errors, measured = [], []
    for member, (lo, hi) in zip(ea.members, ((0, 300), (300, 600))):  # kept in block order
        with torch.no_grad():
            y_hat = member(rec.u[None])[0][0].numpy()
        errors.append(y_hat[lo:hi] - rec.y[lo:hi].numpy())
        measured.append(rec.y[lo:hi].numpy())
    r = np.sqrt(np.mean(np.concatenate(errors) ** 2, axis=0))
    s = np.concatenate(measured).std(0)
    np.testing.assert_allclose(ha["best_val_rmse_per_output"], r, rtol=1e-10)
    assert ha["best_val_nrmse"] == pytest.approx((r / s).mean(), rel=1e-10)
    assert hb["best_val_nrmse"] == pytest.approx(ha["best_val_nrmse"], rel=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# output_range per output


LIMITS = [(-0.5, 0.4), None, (None, 2e3)]  # output 0 both sides, output 1 free, output 2 from above only


def three_out(**kw) -> DeepWiener:
    torch.manual_seed(4)
    model = DeepWiener(1, 3, d_model=4, n_layers=1, layer_options={"d_state": 4}, dt=0.1, dtype=F64, **kw)
    with torch.no_grad():
        model.y_std.copy_(torch.tensor([1.0, 5.0, 1e4]))  # outputs ~1, ~5 and ~1e4
    return model


def np_limits(ranges) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([-np.inf if r is None or r[0] is None else r[0] for r in ranges])
    hi = np.array([np.inf if r is None or r[1] is None else r[1] for r in ranges])
    return lo, hi


def test_a_range_per_output_clips_each_output_at_its_own_limits():
    """Finding 3."""
    free, clipped = three_out(), three_out(output_range=LIMITS)
    u = 3 * torch.randn(2, 40, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        y, _ = free(u)
        got, _ = clipped(u)
        raw, _ = clipped(u, saturate=False)
        state, steps = clipped.initial_state(2), []
        for t in range(u.shape[1]):
            y_t, state = clipped.step(u[:, t], state)
            steps.append(y_t)
    lo, hi = np_limits(LIMITS)
    ref = np.clip(y.numpy(), lo, hi)
    assert (y.numpy()[..., 0] > 0.4).any() and (y.numpy()[..., 0] < -0.5).any() and (y.numpy()[..., 2] > 2e3).any()
    assert (np.abs(y.numpy()[..., 1]) > 0.5).any()  # output 1 goes beyond output 0's limits, unclipped
    np.testing.assert_array_equal(got.numpy(), ref)
    np.testing.assert_array_equal(raw.numpy(), y.numpy())
    np.testing.assert_allclose(torch.stack(steps, 1).numpy(), ref, rtol=1e-12, atol=1e-12)
    assert clipped.output_range == ((-0.5, 0.4), None, (None, 2000.0))
    again = DeepWiener.from_checkpoint(clipped.checkpoint())
    assert again.output_range == clipped.output_range
    # one pair for every output, as before: the same limits on each
    shared = three_out(output_range=[-0.5, 2e3])
    assert shared.output_range == (-0.5, 2000.0)
    with torch.no_grad():
        np.testing.assert_array_equal(shared(u)[0].numpy(), np.clip(y.numpy(), -0.5, 2e3))


def test_the_onnx_step_export_clips_each_output_at_its_own_limits(tmp_path):
    pytest.importorskip("onnxruntime")
    from ssmkit.analysis.onnx_export import export_onnx
    from tests.analysis.test_export import _run_onnx, _run_step

    torch.manual_seed(0)
    limits = [(-0.2, 0.2), None, (None, 0.0)]
    model = DeepWiener(1, 3, d_model=3, n_layers=1, layer_options={"d_state": 4}, output_range=limits).eval()
    u = torch.randn(2, 12, 1, generator=torch.Generator().manual_seed(1)) * 3
    y_ref, _ = _run_step(model, u)
    free = model(u, saturate=False)[0].detach()
    lo, hi = np_limits(limits)
    np.testing.assert_allclose(y_ref.numpy(), np.clip(free.numpy(), lo, hi), rtol=0, atol=1e-6)
    assert int((y_ref[..., 0] == 0.2).sum()) > 3 and int((y_ref[..., 2] == 0.0).sum()) > 3
    assert float(y_ref[..., 1].abs().max()) > 0.2  # output 1 is not clipped at output 0's limits
    y_onnx, _ = _run_onnx(model, export_onnx(model, str(tmp_path / "ranges.onnx")), u)
    assert float((y_onnx - y_ref).abs().max()) <= 1e-5


def test_the_censored_error_per_output_against_its_definition():
    model = three_out(output_range=LIMITS)
    g = torch.Generator().manual_seed(5)
    y_hat = torch.randn(2, 30, 3, generator=g, dtype=F64) * torch.tensor([1.0, 1.0, 2e3]) + torch.tensor([0, 0, 1.5e3])
    y = model.saturate(torch.randn(2, 30, 3, generator=g, dtype=F64) * torch.tensor([1.0, 1.0, 2e3])
                       + torch.tensor([0, 0, 1.5e3]))
    lo, hi = np_limits(LIMITS)
    ref = np.empty(y.shape)
    for idx in np.ndindex(*y.shape):
        a, b, k = float(y_hat[idx]), float(y[idx]), idx[-1]
        ref[idx] = min(a - hi[k], 0.0) if b >= hi[k] else max(a - lo[k], 0.0) if b <= lo[k] else a - b
    assert int((y[..., 0] == 0.4).sum()) > 3 and int((y[..., 2] == 2e3).sum()) > 3 and (y[..., 1].abs() > 0.5).any()
    np.testing.assert_array_equal(model.censored_error(y_hat, y).numpy(), ref)


@pytest.mark.parametrize("bad, message", [
    ([(0.0, 1.0), (0.0, 2.0)], r"or n_outputs = 3 pairs, one per output .*; got 2 entries"),
    ([(0.0, 1.0), (2.0, 1.0), None], r"with lo < hi; got \(2.0, 1.0\) for output 1"),
    ([(0.0, math.inf), None, None], r"got \(0.0, inf\) for output 0"),
    ([None, (None, None), None], r"and at least one limit set \(else pass None\)"),
    ([(0.0, 1.0), "x", None], r"got 'x' for output 1"),
    ((None, None), r"output_range must be None or one \(lo, hi\) pair for every output .* at least one limit set"),
    ((0.0, 1.0, 2.0), r"output_range must be None or"),
], ids=["count", "order", "inf", "none-set", "not-a-pair", "empty-pair", "triple"])
def test_bad_ranges_are_refused_naming_the_expected_shape(bad, message):
    with pytest.raises(ValueError, match=message):
        DeepWiener(1, 3, output_range=bad)


def test_a_recipe_and_the_command_line_give_a_range_per_output():
    cfg = _parser("ssmkit sysid").parse_args(["--benchmark", "two", "--recipe.output_range", "[[-0.5, 0.4], null]"])
    recipe = recipe_from_args("two", cfg)
    model = build_model(bench(A), "s4d", dataclasses.replace(RECIPE, output_range=recipe.output_range), dtype=F64)
    assert model.output_range == ((-0.5, 0.4), None)
    cfg = _parser("ssmkit sysid").parse_args(["--benchmark", "two", "--recipe.output_range", "[null, 10]"])
    assert build_model(bench(A), "s4d", recipe_from_args("two", cfg)).output_range == (None, 10.0)  # as before


# ----------------------------------------------------------------------------------------------------------------
# training with per-output limits and levels


def _first_loss_reference(model: DeepWiener, rec: IORecord, ranges, level_weight=None) -> float:
    """mean_t,k w_tk (e_tk / σ_k)² of the starting weights on the whole record, the normalisation from numpy, e the
    censored error per output (ranges) and w the per-output level weights, all in numpy."""
    u, y = rec.u.numpy(), rec.y.numpy()
    start = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in (("u_mean", u.mean(0)), ("u_std", u.std(0)), ("y_mean", y.mean(0)), ("y_std", y.std(0))):
            getattr(start, name).copy_(torch.tensor(value))
        y_hat = start(rec.u[None], saturate=False)[0][0].numpy()
    lo, hi = np_limits(ranges) if ranges is not None else (np.full(2, -np.inf), np.full(2, np.inf))
    e = np.where(y >= hi, np.minimum(y_hat - hi, 0.0), np.where(y <= lo, np.maximum(y_hat - lo, 0.0), y_hat - y))
    w = np.ones_like(y)
    if level_weight is not None:
        levels, weight = level_weight
        w = np.where(y >= np.array([np.inf if v is None else v for v in levels]), weight, 1.0)
    return float(np.mean(w * (e / y.std(0)) ** 2))


def test_training_censors_and_weighs_each_output_at_its_own_limit_and_level():
    """Findings 3 and 4: the first training loss (one window covering the record) against numpy."""
    rec = two_outputs(120, 2, A)
    y = rec.y.numpy()
    top = (float(np.quantile(y[:, 0], 0.9)), float(np.quantile(y[:, 1], 0.8)))
    clipped = IORecord(rec.u, torch.tensor(np.minimum(y, top)), 0.1, "sat")  # each sensor saturates at its own top
    ranges = [(None, top[0]), (None, top[1])]
    cfg = SimulationFit(window=120, batch_size=3, steps=1, val_fraction=0.0)
    torch.manual_seed(2)
    model = small(output_range=ranges)
    ref = _first_loss_reference(model, clipped, ranges)
    h = fit_simulation(model, [clipped], config=cfg)
    assert h["train_loss"][0] == pytest.approx(ref, rel=1e-12)
    assert ref != pytest.approx(_first_loss_reference(model, clipped, None), rel=1e-3)  # the censoring matters
    levels = ([float(np.quantile(y[:, 0], 0.7)), None], 4.0)  # output 1 (units 1e4 apart) not weighed
    torch.manual_seed(2)
    model = small()
    ref = _first_loss_reference(model, rec, None, levels)
    h = fit_simulation(model, [rec], config=dataclasses.replace(cfg, level_weight=levels))
    assert h["train_loss"][0] == pytest.approx(ref, rel=1e-12)
    one = (float(np.quantile(y[:, 0], 0.7)), 4.0)  # one level for both outputs: as before
    torch.manual_seed(2)
    model = small()
    ref = _first_loss_reference(model, rec, None, ([one[0], one[0]], 4.0))
    assert fit_simulation(model, [rec], config=dataclasses.replace(cfg, level_weight=one))["train_loss"][0] == (
        pytest.approx(ref, rel=1e-12))
    with pytest.raises(ValueError, match=r"level_weight's level must be one number for every output or n_outputs = 2 "
                                         r"levels \(None for an output not weighed\); got 3"):
        fit_simulation(small(), [rec], config=dataclasses.replace(cfg, level_weight=([1.0, 2.0, 3.0], 2.0)))
    with pytest.raises(ValueError, match=r"level_weight must be None or \(level, w\)"):
        fit_simulation(small(), [rec], config=dataclasses.replace(cfg, level_weight=([None, None], 2.0)))
