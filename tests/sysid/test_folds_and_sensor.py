"""k-fold validation over contiguous blocks of the estimation records (held-out outputs never reach the training),
and the saturating-sensor output (``output_range``): clipping, the censored error, its use in training."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ssmkit.sysid.fit import Block, SimulationFit, block_rmse, fit_simulation, fold_blocks, simulate_record
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import identify, out_of_fold_rmse
from tests.conftest import DEVICE, rel_err, run_steps
from tests.sysid.test_wiener import model
from tests.sysid.test_workflow import wiener_bench


def small(**kw) -> DeepWiener:
    """test_wiener's model with one input, one output and one block of H = 3."""
    return model(**{"n_inputs": 1, "n_outputs": 1, "d_model": 3, "n_layers": 1, **kw})


def record(n: int, seed: int = 0) -> IORecord:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = torch.cumsum(u, 0) * 0.1 + 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return IORecord(u, y, 1.0, f"r{seed}")


def test_output_range_clips_the_simulation_and_step_equals_forward():
    free, clipped = small(), small(output_range=(-0.2, 0.3))
    clipped.load_state_dict(free.state_dict())
    u = torch.randn(2, 30, 1, dtype=torch.float64, device=DEVICE) * 3
    with torch.no_grad():
        y_free, _ = free(u)
        y_clip, _ = clipped(u)
        y_raw, _ = clipped(u, saturate=False)
        y_steps, _ = run_steps(clipped, u)
    assert (y_free > 0.3).any() and (y_free < -0.2).any()  # the limits are reached: the test is not vacuous
    assert torch.equal(y_raw, y_free)
    assert torch.equal(y_clip, torch.from_numpy(np.clip(y_free.cpu().numpy(), -0.2, 0.3)).to(DEVICE))
    assert rel_err(y_steps, y_clip) < 1e-10
    one_sided = small(output_range=(None, 0.3))
    one_sided.load_state_dict(free.state_dict())
    with torch.no_grad():
        assert float(one_sided(u)[0].min()) == float(y_free.min()) < -0.2 and float(one_sided(u)[0].max()) == 0.3
    again = DeepWiener.from_checkpoint(clipped.checkpoint())
    assert again.output_range == (-0.2, 0.3) and "output_range" not in free.arguments
    for bad in ((None, None), (1.0, 0.0), (0.0, math.inf), (0.0,), "10", (True, 2.0)):
        with pytest.raises(ValueError, match="output_range must be"):
            small(output_range=bad)


def test_censored_error_ignores_overshoot_only_at_the_limits():
    m = small(output_range=(0.0, 10.0))
    y = torch.tensor([10.0, 10.0, 5.0, 5.0, 0.0, 0.0], dtype=torch.float64)[:, None]
    y_hat = torch.tensor([11.0, 9.0, 11.0, -1.0, -2.0, 1.0], dtype=torch.float64)[:, None]
    want = [0.0, -1.0, 6.0, -6.0, 0.0, 1.0]  # at 10: min(ŷ − 10, 0); at 0: max(ŷ, 0); elsewhere ŷ − y
    assert m.censored_error(y_hat, y)[:, 0].tolist() == want
    assert small().censored_error(y_hat, y)[:, 0].tolist() == [1.0, -1.0, 6.0, -6.0, -2.0, 1.0]


def test_training_loss_is_the_censored_error_on_the_unclipped_output():
    n, window = 6, 30
    r = record(n + window)
    hi = float(r.y[n:].quantile(0.7))  # a sensor limit inside the data: 30 % of the window is at it
    r = IORecord(r.u, r.y.clamp(max=hi), 1.0, "clipped")
    m = small(output_range=(None, hi), encoder_window=n)
    with torch.no_grad():
        m.decoder.weight.mul_(30.0)  # a wide output: it overshoots the limit both at and away from it
    m.set_normalisation([r.u], [r.y])  # what fit_simulation sets first
    with torch.no_grad():  # before the step (the SSM parameters keep their own rate)
        u, y = r.u.to(DEVICE), r.y.to(DEVICE)  # the records stay on the CPU (fit_simulation moves its windows)
        state = m.estimate_state(u[None, :n], y[None, :n])
        y_hat = m(u[None, n:], state, saturate=False)[0][0, :, 0].cpu().numpy()
    cfg = SimulationFit(window=window, batch_size=2, steps=1, val_fraction=0.0, grad_clip=None)
    history = fit_simulation(m, [r], config=cfg)  # one window fits: offset 0, drawn twice
    y = r.y[n:, 0].numpy()
    err = np.where(y >= hi, np.minimum(y_hat - hi, 0.0), y_hat - y) / float(m.y_std)
    assert ((y >= hi) & (y_hat > hi)).any() and ((y < hi) & (y_hat > hi)).any() and ((y >= hi) & (y_hat < hi)).any()
    assert history["train_loss"][0] == pytest.approx(float(np.mean(err ** 2)), rel=1e-12)


def test_level_weight_weighs_the_samples_at_or_above_the_level_in_the_training_loss():
    n, window = 6, 30
    r = record(n + window)
    hi = float(r.y[n:].quantile(0.7))
    r = IORecord(r.u, r.y.clamp(max=hi), 1.0, "clipped")
    level = float(r.y[n:].quantile(0.5))  # half the window at or above it, the sensor's limit among them
    losses = {}
    for lw in (None, (level, 3.0)):
        m = small(output_range=(None, hi), encoder_window=n)
        m.set_normalisation([r.u], [r.y])
        with torch.no_grad():
            u, y = r.u.to(DEVICE), r.y.to(DEVICE)  # the records stay on the CPU (fit_simulation moves its windows)
            state = m.estimate_state(u[None, :n], y[None, :n])
            y_hat = m(u[None, n:], state, saturate=False)[0][0, :, 0].cpu().numpy()
        cfg = SimulationFit(window=window, batch_size=2, steps=1, val_fraction=0.0, grad_clip=None, level_weight=lw)
        losses[lw is None] = fit_simulation(m, [r], config=cfg)["train_loss"][0]
    y = r.y[n:, 0].numpy()
    err = np.where(y >= hi, np.minimum(y_hat - hi, 0.0), y_hat - y) / float(m.y_std)
    w = np.where(y >= level, 3.0, 1.0)
    assert 0.3 < np.mean(y >= level) < 0.7 and np.all(err != 0)  # both kinds of sample, each with an error
    assert losses[True] == pytest.approx(float(np.mean(err ** 2)), rel=1e-12)
    assert losses[False] == pytest.approx(float(np.mean(w * err ** 2)), rel=1e-12)
    from ssmkit.sysid.workflow import fit_config
    assert fit_config(Recipe(level_weight=(9.5, 3.0))).level_weight == (9.5, 3.0)
    for bad in ((9.5,), (9.5, -1.0), (math.nan, 2.0), "9.5", (9.5, math.inf)):
        with pytest.raises(ValueError, match="level_weight must be"):
            fit_simulation(small(), [r], config=dataclasses.replace(cfg, level_weight=bad))


def test_fold_blocks_split_each_record_into_contiguous_blocks():
    assert [(b.start, b.stop) for i in range(3) for b in fold_blocks([10], 3, i)] == [(0, 3), (3, 7), (7, 10)]
    assert fold_blocks([10, 20], 2, 1) == [Block(0, 5, 10), Block(1, 10, 20)]
    for folds, fold in ((1, 0), (3, 3), (3, -1), (2.0, 0)):
        with pytest.raises(ValueError, match="folds must be|fold must be"):
            fold_blocks([10], folds, fold)


def test_held_out_block_outputs_never_reach_the_training():
    r = record(120)
    block = [Block(0, 50, 80)]
    corrupt = r.y.clone()
    corrupt[50:80] += 100.0  # only the held-out outputs change
    cfg = SimulationFit(window=25, batch_size=3, steps=6, lr=1e-2, val_every=1000, patience=None)
    models = []
    for y in (r.y, corrupt):
        m = small(encoder_window=5)
        history = fit_simulation(m, [IORecord(r.u, y, 1.0, "r")], config=cfg, blocks=block)
        models.append((m, history))
    (a, ha), (b, hb) = models
    for name, value in a.state_dict().items():  # same weights, same normalisation: nothing leaked
        assert torch.equal(value, b.state_dict()[name]), name
    assert float(a.y_mean) == pytest.approx(float(torch.cat([r.y[:50], r.y[80:]]).mean()), rel=1e-12)
    # the validation score: the whole record simulated from its start, the block's samples scored
    with torch.no_grad():
        y_sim, start = simulate_record(a, r)
    want = float((y_sim[50:80] - r.y[50:80]).pow(2).mean().sqrt())
    assert start == 5 and ha["val_rmse"][-1][1][0] == pytest.approx(want, rel=1e-12)
    assert hb["val_rmse"][-1][1][0] > 50  # the corrupted block is scored, not trained on
    # a block at the start is scored after the encoder's samples only
    assert block_rmse(a, [r], [Block(0, 0, 20)])[0] == pytest.approx(
        float((y_sim[5:20] - r.y[5:20]).pow(2).mean().sqrt()), rel=1e-12)
    with pytest.raises(ValueError, match="either validation records"):
        fit_simulation(small(), [r], [r], config=cfg, blocks=block)
    with pytest.raises(ValueError, match="must satisfy"):
        fit_simulation(small(), [r], config=cfg, blocks=[Block(0, 100, 130)])


def test_kfold_identify_averages_the_folds_and_scores_them_out_of_fold():
    bench = wiener_bench(300, 60)
    recipe = Recipe(d_model=2, n_layers=1, d_state=4, timescale=(0.5, 5.0), encoder_window=10, window=40,
                    batch_size=4, steps=8, lr=1e-2, val_every=4, patience=None, restarts=3, combine="average",
                    validation="kfold", output_range=(None, 2.5))
    model, history = identify(bench, "s4d", recipe, seed=1, dtype=torch.float64)
    assert len(model) == 3 and history["validation"] == "kfold" and [r["seed"] for r in history["restarts"]] == [3, 4, 5]
    assert all(m.output_range == (None, 2.5) for m in model.members)
    # independent: member i simulated over the whole record, scored on samples [100 i, 100 i + 100) (the first
    # block after the encoder's 10), the squared errors pooled over the three blocks
    r = bench.train[0]
    errors = []
    for i, m in enumerate(model.members):
        with torch.no_grad():
            y_sim, _ = simulate_record(m, r)
        lo = max(100 * i, 10)
        errors.append((y_sim[lo:100 * i + 100] - r.y[lo:100 * i + 100]).numpy())
    want = float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))
    assert history["best_val_rmse"] == pytest.approx(want, rel=1e-12)
    assert out_of_fold_rmse(list(model.members), bench.train, [0, 1, 2], 3)[0] == pytest.approx(want, rel=1e-12)
    for changes, match in (({"restarts": 1}, "folds = K >= 2"), ({"folds": 2}, "must be a multiple of folds"),
                           ({"validation": "loo"}, "validation must be one of")):
        with pytest.raises(ValueError, match=match):
            identify(bench, "s4d", dataclasses.replace(recipe, **changes))


def test_kfold_best_keeps_the_lowest_scoring_run_of_each_block():
    bench = wiener_bench(300, 60)
    recipe = Recipe(d_model=2, n_layers=1, d_state=4, timescale=(0.5, 5.0), encoder_window=10, window=40,
                    batch_size=4, steps=8, lr=1e-2, val_every=4, patience=None, restarts=4, folds=2,
                    combine="best", validation="kfold")
    model, history = identify(bench, "s4d", recipe, seed=0, dtype=torch.float64)
    runs = history["restarts"]
    assert [r["fold"] for r in runs] == [0, 1, 0, 1] and len(model) == 2 and history["folds"] == 2
    chosen = [min((0, 2), key=lambda i: runs[i]["best_val_rmse"]), min((1, 3), key=lambda i: runs[i]["best_val_rmse"])]
    assert [i for i, r in enumerate(runs) if r["kept"]] == chosen
    assert len({r["best_val_rmse"] for r in runs}) == 4  # distinct scores: the choice is not vacuous
    # the score pools the kept runs' blocks (each run's best score is its block RMSE at the weights it keeps)
    squared = [runs[i]["best_val_rmse"] ** 2 * n for i, n in zip(chosen, (140, 150))]  # blocks [10, 150), [150, 300)
    assert history["best_val_rmse"] == pytest.approx(math.sqrt(sum(squared) / 290), rel=1e-10)


def test_onnx_export_keeps_the_sensor_clip(tmp_path):
    pytest.importorskip("onnxruntime")
    from ssmkit.analysis.onnx_export import export_onnx
    from tests.analysis.test_export import _run_onnx, _run_step

    torch.manual_seed(0)
    free = DeepWiener(n_inputs=1, n_outputs=1, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4}).eval()
    u = torch.randn(2, 12, 1) * 3
    y_free, _ = _run_step(free, u)
    hi = float(y_free.median())
    model = DeepWiener(n_inputs=1, n_outputs=1, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4},
                       output_range=(None, hi)).eval()
    model.load_state_dict(free.state_dict())
    y_ref, _ = _run_step(model, u)
    info = export_onnx(model, str(tmp_path / "clipped.onnx"))
    y_onnx, _ = _run_onnx(model, info, u)
    assert (y_ref == hi).sum() >= 6 and torch.equal(y_ref, y_free.clamp(max=hi))
    assert rel_err(y_onnx, y_ref) <= 1e-5


def test_censor_false_scores_the_limit_as_measured_on_both_sides():
    n, window = 6, 30
    r = record(n + window)
    hi = float(r.y[n:].quantile(0.7))
    r = IORecord(r.u, r.y.clamp(max=hi), 1.0, "clipped")
    losses, y_hats = {}, {}
    for censor in (True, False):
        m = small(output_range=(None, hi), encoder_window=n)
        with torch.no_grad():
            m.decoder.weight.mul_(30.0)  # overshoots the limit at it and away from it
        m.set_normalisation([r.u], [r.y])
        with torch.no_grad():
            state = m.estimate_state(r.u[None, :n], r.y[None, :n])
            y_hats[censor] = m(r.u[None, n:], state, saturate=False)[0][0, :, 0].numpy()
        cfg = SimulationFit(window=window, batch_size=2, steps=1, val_fraction=0.0, grad_clip=None, censor=censor)
        losses[censor] = fit_simulation(m, [r], config=cfg)["train_loss"][0]
        std = float(m.y_std)
    y, y_hat = r.y[n:, 0].numpy(), y_hats[False]
    assert ((y >= hi) & (y_hat > hi)).any()  # where the two differ: overshoot at the limit
    assert losses[False] == pytest.approx(float(np.mean(((y_hat - y) / std) ** 2)), rel=1e-12)
    censored = np.where(y >= hi, np.minimum(y_hat - hi, 0.0), y_hat - y) / std
    assert losses[True] == pytest.approx(float(np.mean(censored ** 2)), rel=1e-12) and losses[True] < losses[False]
    from ssmkit.sysid.workflow import fit_config
    assert fit_config(Recipe()).censor is True and fit_config(Recipe(censor=False)).censor is False
    with pytest.raises(ValueError, match="censor must be a bool"):
        fit_simulation(small(), [r], config=dataclasses.replace(cfg, censor=1))


@pytest.mark.parametrize("decay, washout, n_enc", [(0.9, 0, 0), (None, 5, 0), (0.95, 5, 0), (0.9, 5, 6)])
def test_decaying_weights_and_the_washout_shape_the_training_loss(decay, washout, n_enc):
    # loss = mean_t w_t e_t², w_t = γ^t / mean(γ^t) (the decaying-weight MSE), and without an encoder the first
    # `washout` samples weigh 0, the rest rescaled to mean 1; with an encoder the washout is not applied. A coverage
    # run found both weightings never trained by a test (only their argument checks). One window fits the record:
    # offset 0, drawn twice.
    window = 30
    r = record(n_enc + window)
    m = small(encoder_window=n_enc)
    m.set_normalisation([r.u], [r.y])  # what fit_simulation sets first
    with torch.no_grad():
        u, y = r.u.to(DEVICE), r.y.to(DEVICE)  # the records stay on the CPU (fit_simulation moves its windows)
        state = m.estimate_state(u[None, :n_enc], y[None, :n_enc]) if n_enc else None
        y_hat = m(u[None, n_enc:], state, saturate=False)[0][0, :, 0].cpu().numpy()
    err = (y_hat - r.y[n_enc:, 0].numpy()) / float(m.y_std)
    t = np.arange(window)
    w = np.ones(window) if decay is None else decay ** t / np.mean(decay ** t)
    if washout and not n_enc:
        w[:washout] = 0.0
        w *= window / w.sum()
    cfg = SimulationFit(window=window, batch_size=2, steps=1, val_fraction=0.0, grad_clip=None, decay=decay,
                        washout=washout)
    loss = fit_simulation(m, [r], config=cfg)["train_loss"][0]
    assert loss == pytest.approx(float(np.mean(w * err ** 2)), rel=1e-12)
    assert abs(loss - float(np.mean(err ** 2))) > 1e-3 * loss  # the weights change the loss
