"""fit_simulation's pieces against independent references (probe 27): the first AdamW step with gradient clipping and
the marked learning rates written out by hand, the normalisation from the estimation part only, the tail split's
edges, the window draws enumerated from the inputs the model sees, early stopping on a scripted validation sequence."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings

import numpy as np
import pytest
import torch

from ssmkit.layers.marks import marked_parameters
from ssmkit.sysid import fit as fit_module
from ssmkit.sysid.fit import Block, SimulationFit, fit_simulation, split_tail
from ssmkit.sysid.records import IORecord
from tests.conftest import DEVICE
from tests.sysid.test_folds_and_sensor import record, small


def test_the_first_step_is_adamw_on_the_clipped_gradient_with_the_marked_rates():
    # One window fits the record (offset 0, drawn twice): the loss is mean(((ŷ − y)/σ_y)²) of that window. AdamW's
    # first step is p ← p(1 − lr·wd) − lr·g/(|g| + ε) (bias-corrected moments m̂ = g, v̂ = g²), on the gradient
    # scaled by clip/(‖g‖ + 1e-6) when that is < 1 (torch's clip_grad_norm_). The clip is chosen so that |g| ~ ε:
    # without it the step is ≈ lr·sign(g). The SSM parameters step at their marked rate (1e-3) with
    # ssm_weight_decay, the others at lr with weight_decay.
    window, lr, wd, ssm_wd, clip, eps = 25, 0.05, 0.3, 0.7, 1e-7, 1e-8
    r = record(window, seed=3)
    m = small()
    ref = copy.deepcopy(m)
    ref.set_normalisation([r.u], [r.y])
    y_hat, _ = ref(r.u[None].to(DEVICE), return_state=False, saturate=False)
    loss = (((y_hat[0] - r.y.to(DEVICE)) / ref.y_std) ** 2).mean()
    loss.backward()
    params = [(name, p, marks) for name, p, marks in marked_parameters(ref)]
    norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for _, p, _ in params)))
    coef = min(1.0, clip / (norm + 1e-6))
    assert coef < 1e-3  # the clip binds
    want = {}
    for name, p, marks in params:
        rate, decay = (lr, wd) if marks is None else (marks["lr"], ssm_wd)
        g = p.grad.detach() * coef
        want[name] = p.detach() * (1 - rate * decay) - rate * g / (g.abs() + eps)
    cfg = SimulationFit(window=window, batch_size=2, steps=1, lr=lr, weight_decay=wd, ssm_weight_decay=ssm_wd,
                        val_fraction=0.0, grad_clip=clip)
    history = fit_simulation(m, [r], config=cfg)
    assert history["train_loss"][0] == pytest.approx(float(loss.detach()), rel=1e-12)
    got = dict(m.named_parameters())
    assert {marks is None for _, _, marks in params} == {True, False}  # both groups are there
    for name, value in want.items():
        assert torch.allclose(got[name], value, rtol=0, atol=1e-12), name
    assert history["lr"] == [lr]


def test_normalisation_is_set_from_the_estimation_part_only():
    # Pooled over the records, population std (correction 0), from the first 1 − val_fraction of each record.
    r1, r2 = record(80, seed=1), record(120, seed=2)
    m = small()
    fit_simulation(m, [r1, r2], config=SimulationFit(window=20, batch_size=2, steps=0, val_fraction=0.25))
    cut1, cut2 = 60, 90
    u = np.concatenate([r1.u[:cut1].numpy(), r2.u[:cut2].numpy()])
    y = np.concatenate([r1.y[:cut1].numpy(), r2.y[:cut2].numpy()])
    assert float(m.u_mean) == pytest.approx(u.mean(), rel=1e-12)
    assert float(m.u_std) == pytest.approx(u.std(), rel=1e-12)
    assert float(m.y_mean) == pytest.approx(y.mean(), rel=1e-12)
    assert float(m.y_std) == pytest.approx(y.std(), rel=1e-12)
    m0 = small()
    fit_simulation(m0, [r1], config=SimulationFit(window=20, batch_size=2, steps=0, val_fraction=0.0))
    assert float(m0.y_std) == pytest.approx(r1.y.numpy().std(), rel=1e-12)


def test_zero_steps_trains_nothing_and_reports_zero_steps(capsys):
    r = record(60)
    m = small()
    before = {k: v.clone() for k, v in m.state_dict().items() if "mean" not in k and "std" not in k}
    t0 = time.perf_counter()
    history = fit_simulation(m, [r], config=SimulationFit(window=20, batch_size=2, steps=0, val_fraction=0.0))
    elapsed = time.perf_counter() - t0
    assert history["steps"] == 0 and history["train_loss"] == [] and history["val_rmse"] == []
    assert 0 <= history["seconds"] <= elapsed  # the duration of the run, not a clock reading
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert capsys.readouterr().out == ""  # log defaults to False


def test_log_prints_one_line_per_validation(capsys):
    r = record(100)
    cfg = SimulationFit(window=20, batch_size=2, steps=4, val_fraction=0.3, val_every=2, patience=None)
    history = fit_simulation(small(), [r], config=cfg, log=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"]
    assert len(history["val_rmse"]) == 2
    fit_simulation(small(), [r], config=cfg)
    assert capsys.readouterr().out == ""


def test_split_tail_edges():
    r = record(10)
    train, val = split_tail([r], 0.0, 5)
    assert val == [] and train[0] is r  # fraction 0: the records themselves
    train, val = split_tail([r], 0.2, 8)  # cut = 8: a tail of 2 is the default shortest one
    assert len(train[0]) == 8 and len(val[0]) == 2
    assert torch.equal(val[0].u, r.u[8:]) and torch.equal(train[0].y, r.y[:8])
    with pytest.raises(ValueError, match="too short"):
        split_tail([r], 0.2, 8, min_val=3)
    with pytest.raises(ValueError, match="too short"):
        split_tail([r], 0.2, 9)


def test_a_block_is_immutable_and_hashable():
    b = Block(0, 3, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.start = 4
    assert len({b, Block(0, 3, 7)}) == 1


class Recorder:
    """Wraps a model's forward to keep the inputs of every training window (the windows in u's own values)."""

    def __init__(self, model):
        self.model, self.windows = model, []
        self.forward = model.forward

    def __call__(self, u, state=None, return_state=True, saturate=True):
        if not saturate:  # the training windows (validation simulates with the clip)
            self.windows.extend(u.detach()[..., 0].tolist())
        return self.forward(u, state, return_state=return_state, saturate=saturate)


def test_windows_lie_inside_one_record_and_cover_every_offset():
    # u encodes (record, sample) as 1000·record + sample: every drawn window must read consecutive samples of one
    # record, every admissible offset must be drawn (3 records of 23, 30, 26 samples, window 20: 4 + 11 + 7 = 22
    # offsets), and a record's share of the draws must follow its number of offsets (multinomial over them).
    window, lens = 20, [23, 30, 26]
    records = []
    for k, n in enumerate(lens):
        u = (1000.0 * k + torch.arange(n, dtype=torch.float64))[:, None]
        records.append(IORecord(u, torch.zeros(n, 1, dtype=torch.float64) + k, 1.0, f"r{k}"))
    m = small()
    rec = Recorder(m)
    m.forward = rec
    cfg = SimulationFit(window=window, batch_size=64, steps=8, lr=0.0, val_fraction=0.0, grad_clip=None)
    fit_simulation(m, records, config=cfg)
    assert len(rec.windows) == 64 * 8
    seen = {}
    for w in rec.windows:
        k, o = int(round(w[0])) // 1000, int(round(w[0])) % 1000
        assert np.allclose(w, 1000.0 * k + o + np.arange(window), rtol=0, atol=1e-9)
        assert 0 <= o <= lens[k] - window
        seen[(k, o)] = seen.get((k, o), 0) + 1
    admissible = {(k, o) for k, n in enumerate(lens) for o in range(n - window + 1)}
    assert set(seen) == admissible
    share = np.array([sum(c for (k, _), c in seen.items() if k == j) for j in range(3)]) / len(rec.windows)
    expected = np.array([n - window + 1 for n in lens]) / sum(n - window + 1 for n in lens)
    assert np.abs(share - expected).max() < 0.07  # 512 draws: ~3 standard deviations


def test_with_an_encoder_the_windows_start_after_the_encoder_part():
    # encoder_window 5: a draw reads 5 + window samples; the model simulates the last `window` of them.
    window, n_enc, n = 10, 5, 22
    u = torch.arange(n, dtype=torch.float64)[:, None]
    r = IORecord(u, torch.zeros(n, 1, dtype=torch.float64), 1.0, "r")
    m = small(encoder_window=n_enc)
    rec = Recorder(m)
    m.forward = rec
    fit_simulation(m, [r], config=SimulationFit(window=window, batch_size=32, steps=4, lr=0.0, val_fraction=0.0))
    starts = {int(round(w[0])) for w in rec.windows}
    assert starts == set(range(n_enc, n - window + 1))  # offsets 0 … n − window − n_enc, shifted by n_enc


def test_early_stopping_follows_a_scripted_validation_sequence(monkeypatch):
    # Validation RMSEs scripted: the best is kept (strictly lower only), `bad` resets on an improvement, training
    # stops when `patience` validations in a row fail to improve, and the kept weights are those of the best step.
    script = iter([[3.0], [2.0], [2.0], [2.5], [1.0], [1.5], [1.0], [4.0], [0.5]])
    snapshots = {}

    def scripted(model, records, from_rest=False):
        step = len(snapshots) + 1
        snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return next(script)

    monkeypatch.setattr(fit_module, "validation_rmse", scripted)
    r = record(100)
    m = small()
    cfg = SimulationFit(window=20, batch_size=2, steps=50, lr=1e-2, val_fraction=0.3, val_every=1, patience=3)
    history = fit_simulation(m, [r], config=cfg)
    # step: 1 → 3 best, 2 → 2 best, 3 → 2 (bad 1), 4 → 2.5 (bad 2), 5 → 1 best, 6 (bad 1), 7 → 1 (bad 2), 8 (bad 3)
    assert history["steps"] == 8
    assert [s for s, _ in history["val_rmse"]] == list(range(1, 9))
    assert history["best_step"] == 5 and history["best_val_rmse"] == 1.0
    kept = m.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in snapshots[5].items())
    assert not torch.equal(kept["decoder.weight"], snapshots[8]["decoder.weight"])


def test_the_validation_score_is_the_mean_over_the_outputs(monkeypatch):
    # Two outputs: the best step is the one with the lowest mean of the per-output RMSEs, not the first output's.
    script = iter([[1.0, 5.0], [2.0, 2.0], [0.5, 5.0]])
    monkeypatch.setattr(fit_module, "validation_rmse", lambda model, records, from_rest=False: next(script))
    r = record(100)
    r2 = IORecord(r.u, torch.cat([r.y, -r.y], 1), 1.0, "r2")
    m = small(n_outputs=2)
    cfg = SimulationFit(window=20, batch_size=2, steps=3, lr=1e-2, val_fraction=0.3, val_every=1, patience=None)
    history = fit_simulation(m, [r2], config=cfg)
    assert history["best_step"] == 2 and history["best_val_rmse"] == pytest.approx(2.0)
    assert history["steps"] == 3


def test_a_nan_validation_never_counts_as_the_best(monkeypatch):
    # A diverged model scores NaN: not lower than anything, so each one counts against the patience; when every
    # validation is NaN the model ends with the weights it started with (after the normalisation is set), and the
    # caller is warned: an untrained model must not come back silently.
    monkeypatch.setattr(fit_module, "validation_rmse", lambda model, records, from_rest=False: [float("nan")])
    r = record(100)
    m = small()
    start = copy.deepcopy(m)
    cfg = SimulationFit(window=20, batch_size=2, steps=50, lr=1e-2, val_fraction=0.3, val_every=1, patience=2)
    with pytest.warns(RuntimeWarning, match=r"every validation of this run scored NaN or inf \(2 of them, the first at "
                      r"step 1\): the training diverged"):
        history = fit_simulation(m, [r], config=cfg)
    assert history["steps"] == 2 and history["best_step"] == 0 and history["best_val_rmse"] == float("inf")
    start.set_normalisation([r.u[:70]], [r.y[:70]])
    kept = m.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in start.state_dict().items())
    # one finite score (after a NaN) is a best step: no warning then
    scores = iter([[float("nan")], [1.0], [float("nan")]])
    monkeypatch.setattr(fit_module, "validation_rmse", lambda model, records, from_rest=False: next(scores))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        history = fit_simulation(small(), [r], config=SimulationFit(window=20, batch_size=2, steps=3, lr=1e-2,
                                                                     val_fraction=0.3, val_every=1, patience=None))
    assert history["best_step"] == 2 and history["best_val_rmse"] == 1.0


def test_without_validation_no_step_is_best():
    history = fit_simulation(small(), [record(60)], config=SimulationFit(window=20, batch_size=2, steps=2,
                                                                         val_fraction=0.0))
    assert history["best_step"] == 0 and history["best_val_rmse"] == float("inf") and history["steps"] == 2


def test_a_block_holds_out_samples_of_its_own_record_only():
    # Records of 30 and 26 samples, window 20, no encoder; Block(0, 0, 22) holds out the first 22 samples of record
    # 0: its windows must reach sample 22 (offsets 3 … 10), record 1 keeps every offset 0 … 6.
    window = 20
    records = []
    for k, n in enumerate([30, 26]):
        u = (1000.0 * k + torch.arange(n, dtype=torch.float64))[:, None]
        records.append(IORecord(u, torch.sin(u / 7.0), 1.0, f"r{k}"))
    m = small()
    rec = Recorder(m)
    m.forward = rec
    cfg = SimulationFit(window=window, batch_size=64, steps=4, lr=0.0, val_fraction=0.0, val_every=100)
    fit_simulation(m, records, config=cfg, blocks=[Block(0, 0, 22)])
    seen = {(int(round(w[0])) // 1000, int(round(w[0])) % 1000) for w in rec.windows}
    assert seen == {(0, o) for o in range(3, 11)} | {(1, o) for o in range(7)}


@pytest.mark.parametrize("p", [1, 2])
def test_the_loss_with_a_held_out_block_is_the_mean_over_the_scored_samples(p):
    # One window fits the record (offset 0): loss = Σ_t,c w_t m_t e_tc² / (p Σ_t m_t) with m_t = 0 on the block,
    # e_tc the error normalised by channel c's σ_y over the samples outside the block (population std),
    # w_t = γ^t / mean(γ^t).
    window, decay = 30, 0.9
    r = record(window, seed=4)
    if p == 2:
        r = IORecord(r.u, torch.cat([r.y, torch.sin(3 * r.y) + 0.5 * r.u], 1), 1.0, "r2")
    block = Block(0, 5, 12)
    mask = np.ones(window, dtype=bool)
    mask[5:12] = False
    m = small(n_outputs=p)
    ref = copy.deepcopy(m)
    y = r.y.numpy()
    cfg = SimulationFit(window=window, batch_size=2, steps=1, lr=0.0, val_every=100, grad_clip=None, decay=decay)
    fit_simulation(m, [r], config=cfg, blocks=[block])  # sets the normalisation; lr 0 keeps the weights
    assert np.allclose(m.y_std.cpu().numpy(), y[mask].std(0), rtol=1e-12, atol=0)
    assert np.allclose(m.y_mean.cpu().numpy(), y[mask].mean(0), rtol=1e-12, atol=0)
    assert float(m.u_std) == pytest.approx(r.u.numpy().std(), rel=1e-12)  # the inputs are all known
    ref.set_normalisation([r.u], [r.y[torch.from_numpy(mask)]])
    with torch.no_grad():
        y_hat = ref(r.u[None].to(DEVICE), return_state=False, saturate=False)[0][0].cpu().numpy()
    e = (y_hat - y) / y[mask].std(0)
    w = decay ** np.arange(window) / np.mean(decay ** np.arange(window))
    history = fit_simulation(copy.deepcopy(ref), [r], config=cfg, blocks=[block])
    want = float(np.sum(w[:, None] * mask[:, None] * e ** 2) / (p * mask.sum()))
    assert history["train_loss"][0] == pytest.approx(want, rel=1e-12)


def test_a_block_read_by_the_encoder_only_is_refused():
    # encoder_window 5: a block inside the first 5 samples holds nothing the validation scores
    m = small(encoder_window=5)
    cfg = SimulationFit(window=10, batch_size=2, steps=1, val_every=1)
    for bad in (Block(0, 0, 5), Block(0, 2, 5), Block(0, 4, 4)):
        with pytest.raises(ValueError, match="hold a sample after the encoder's first 5"):
            fit_simulation(m, [record(40)], config=cfg, blocks=[bad])
    fit_simulation(m, [record(40)], config=cfg, blocks=[Block(0, 4, 6)])  # sample 5 is scored


def test_average_zero_is_the_last_iterate():
    r = record(60)
    cfg = dict(window=20, batch_size=2, steps=3, lr=1e-2, val_fraction=0.0)
    last, averaged = small(), small()
    fit_simulation(last, [r], config=SimulationFit(**cfg))
    fit_simulation(averaged, [r], config=SimulationFit(**cfg, average=0.0))
    got = averaged.state_dict()
    assert all(torch.allclose(got[k], v, rtol=0, atol=1e-15) for k, v in last.state_dict().items())


def test_a_block_of_one_scored_sample_is_accepted():
    r = record(40)
    history = fit_simulation(small(), [r], config=SimulationFit(window=20, batch_size=2, steps=1, val_every=1),
                             blocks=[Block(0, 39, 40)])
    assert len(history["val_rmse"]) == 1


def test_lengths_against_the_window_and_the_encoder():
    # With an encoder of 5 samples and window 10: an estimation part needs 15 samples, a validation tail 5 + 2
    # (two scored samples); with validation records given, val_fraction must still be < 1 and every training record
    # must hold window + encoder_window samples.
    m = small(encoder_window=5)
    cfg = dict(window=10, batch_size=2, steps=1, val_every=1)
    fit_simulation(small(encoder_window=5), [record(35)], config=SimulationFit(**cfg, val_fraction=0.2))  # 28 + 7
    with pytest.raises(ValueError, match=r"too short for its validation tail: the last 20% holds 6 samples, fewer than the 7"):
        fit_simulation(m, [record(30)], config=SimulationFit(**cfg, val_fraction=0.2))  # 24 + 6: the tail is short
    with pytest.raises(ValueError, match="too short to hold out"):
        fit_simulation(m, [record(30)], config=SimulationFit(**cfg, val_fraction=0.6))  # 12 + 18
    with pytest.raises(ValueError, match="fewer than window \\+ encoder_window = 15"):
        fit_simulation(m, [record(14)], [record(30, seed=1)], config=SimulationFit(**cfg))
    with pytest.raises(ValueError, match="val_fraction must be"):
        fit_simulation(m, [record(40)], [record(30, seed=1)], config=SimulationFit(**cfg, val_fraction=1.0))


def test_blocks_and_an_encoder_admit_the_windows_enumerated_by_hand():
    # A draw reads samples o … o + 5 + 10 − 1: the encoder's o … o + 4 must avoid the block, and one of the scored
    # o + 5 … o + 14 must lie outside it. Record of 40, Block(0, 15, 40): o ∈ {0 … 9} by enumeration.
    window, n_enc, n = 10, 5, 40
    block = set(range(15, 40))
    want = {o for o in range(n - window - n_enc + 1)
            if not block & set(range(o, o + n_enc)) and set(range(o + n_enc, o + n_enc + window)) - block}
    assert want == set(range(10))
    u = torch.arange(n, dtype=torch.float64)[:, None]
    r = IORecord(u, torch.sin(u / 5.0), 1.0, "r")
    m = small(encoder_window=n_enc)
    rec = Recorder(m)
    m.forward = rec
    cfg = SimulationFit(window=window, batch_size=64, steps=3, lr=0.0, val_every=100)
    fit_simulation(m, [r], config=cfg, blocks=[Block(0, 15, 40)])
    assert {int(round(w[0])) - n_enc for w in rec.windows} == want


def test_level_weight_counts_a_sample_at_the_level_and_accepts_w_zero():
    # w_t = 3 where y_t >= level (the level is one of the measured values, so ">=" is tested at equality), else 1
    window = 25
    r = record(window, seed=5)
    y = r.y[:, 0].numpy()
    level = float(np.sort(y)[12])
    m = small()
    ref = copy.deepcopy(m)
    ref.set_normalisation([r.u], [r.y])
    with torch.no_grad():
        y_hat = ref(r.u[None].to(DEVICE), return_state=False, saturate=False)[0][0, :, 0].cpu().numpy()
    e2 = ((y_hat - y) / y.std()) ** 2
    for w in (3.0, 0.0):
        weight = np.where(y >= level, w, 1.0)
        assert (y == level).sum() == 1
        cfg = SimulationFit(window=window, batch_size=2, steps=1, lr=0.0, val_fraction=0.0, level_weight=(level, w))
        loss = fit_simulation(copy.deepcopy(m), [r], config=cfg)["train_loss"][0]
        assert loss == pytest.approx(float(np.mean(weight * e2)), rel=1e-12)


@pytest.mark.parametrize("held_out", [False, True])
def test_a_fit_inside_a_meta_default_device_block_equals_one_outside_it(held_out):
    # `with torch.device("meta")` (or torch.set_default_device("cuda")) moves every factory call without `device=`.
    # The window draws (a CPU generator's rand/randint), the records' lengths and the held-out blocks' masks were made
    # on that device ("Expected a 'cpu' device type for generator", "Cannot copy out of meta tensor"). The same fit
    # in and out of such a block gives the same weights and history.
    records = [record(90, seed=1), record(70, seed=2)]
    blocks = [Block(0, 40, 60)] if held_out else None
    cfg = SimulationFit(window=20, batch_size=3, steps=3, lr=0.01, val_every=2, val_fraction=0.0 if held_out else 0.2)
    results = []
    for block in (False, True):
        torch.manual_seed(0)
        m = small()
        with torch.device("meta") if block else contextlib.nullcontext():
            history = fit_simulation(m, records, config=cfg, blocks=blocks)
        results.append((m.state_dict(), history))
    (weights, history), (weights_in, history_in) = results
    assert history_in["train_loss"] == history["train_loss"] and history_in["val_rmse"] == history["val_rmse"]
    assert len(history["train_loss"]) == 3 and history["val_rmse"]
    for name, value in weights.items():
        assert weights_in[name].device.type == "cpu" and torch.equal(weights_in[name], value), name
