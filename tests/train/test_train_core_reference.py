"""The training core against references written here (probe 39): the summed losses and metrics of the three heads
(float64 cross-entropy, squared error and accuracy with the ``-100`` mask), the warm-up-cosine factor in closed
form at every step, the optimizer groups against the layers' marks (arXiv 2111.00396 App. D: SSM parameters with
their own lr and no weight decay), the batches of every step against a hand loop over seeded permutations, the
best-validation callback against the offered values, and the checkpoint files. No Lightning fit runs here.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("lightning")

from ssmkit.layers import register_ssm_parameter  # noqa: E402
from ssmkit.train import StepBatches, WarmupCosine, eval_batches, param_groups, summed_loss_and_metric, warmup_cosine  # noqa: E402
from ssmkit.train.batches import seeded_rngs  # noqa: E402
from ssmkit.train.best import BestValidation, is_better, monitored  # noqa: E402
from ssmkit.train.checkpoint import AtomicCheckpointIO, load_checkpoint, save_atomic  # noqa: E402
from ssmkit.train.objective import IGNORE, METRIC_NAMES  # noqa: E402


# ----------------------------------------------------------------------------------------------------- objective


def _cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per-row cross-entropy in float64: log Σ_j exp(z_j) − z_target, written out."""
    rows = []
    for z, t in zip(logits.double().tolist(), targets.tolist()):
        m = max(z)
        rows.append(m + math.log(sum(math.exp(v - m) for v in z)) - z[t])
    return rows


def _argmax(z: list[float]) -> int:
    """The index of the largest entry (the logits here have no ties)."""
    return max(range(len(z)), key=lambda j: z[j])


def test_classification_sums_cross_entropy_and_correct_predictions():
    g = torch.Generator().manual_seed(1)
    out = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 4, 1, 1, 2, 0])
    out.data[0, 0] += 5.0  # a few rows certainly right, one certainly wrong: the count is neither 0 nor 7
    out.data[1, 3] += 5.0
    out.data[2, 0] += 5.0
    loss, metric, count = summed_loss_and_metric("classify", out, y)
    # a float64 output is scored in float64 (it was rounded to float32 first: 1.7e-8 relative here)
    assert loss.item() == pytest.approx(sum(_cross_entropy_rows(out.detach(), y)), rel=1e-14)
    right = sum(_argmax(z) == t for z, t in zip(out.tolist(), y.tolist()))
    assert 0 < right < 7 and metric.item() == right and count.item() == 7.0
    assert loss.dtype == metric.dtype == count.dtype == torch.float64 and loss.dim() == metric.dim() == count.dim() == 0
    for half in (torch.bfloat16, torch.float16):  # autocast's logits: scored in float32
        parts = summed_loss_and_metric("classify", out.detach().to(half), y)
        assert all(p.dtype == torch.float32 for p in parts)
        assert parts[0].item() == pytest.approx(sum(_cross_entropy_rows(out.detach().to(half).double(), y)), rel=1e-6)
    loss.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    for bad_out, bad_y in [(out.detach(), y[:, None]), (out.detach()[:, :, None], y), (out.detach(), torch.cat([y, y[:1]]))]:
        with pytest.raises(ValueError, match="classification needs logits"):
            summed_loss_and_metric("classify", bad_out, bad_y)


def test_regression_sums_squared_errors_over_every_element():
    g = torch.Generator().manual_seed(2)
    out = torch.randn(3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    loss, metric, count = summed_loss_and_metric("regress", out, y)
    ref = sum((a - b) ** 2 for a, b in zip(out.detach().flatten().tolist(), y.flatten().tolist()))
    assert loss.item() == pytest.approx(ref, rel=1e-14) and metric.item() == pytest.approx(ref, rel=1e-14)
    assert count.item() == 24.0 and count.dtype == loss.dtype == torch.float64
    assert loss.requires_grad and not metric.requires_grad  # the metric is a detached copy
    with pytest.raises(ValueError, match="regression targets must have the output's shape"):
        summed_loss_and_metric("regress", out, y[:, :3])


def test_language_modelling_scores_only_the_unmasked_steps():
    g = torch.Generator().manual_seed(3)
    out = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([[IGNORE, 2, IGNORE, 5, 0], [1, IGNORE, IGNORE, 3, 4]])
    out[0, 1, 2] += 6.0  # right
    out[1, 0, 1] += 6.0  # right
    out[0, 3, 0] += 6.0  # wrong
    out[0, 0, 0] += 6.0  # masked: never counted, whatever the prediction
    out[1, 4, 4] += 6.0  # right
    loss, metric, count = summed_loss_and_metric("lm", out, y)
    scored = [(b, t) for b in range(2) for t in range(5) if y[b, t] != -100]
    rows = _cross_entropy_rows(torch.stack([out[b, t] for b, t in scored]), torch.tensor([int(y[b, t]) for b, t in scored]))
    right = sum(_argmax(out[b, t].tolist()) == y[b, t] for b, t in scored)
    assert IGNORE == -100 and count.item() == len(scored) == 6
    assert loss.item() == pytest.approx(sum(rows), rel=1e-14) and loss.dtype == count.dtype == torch.float64
    assert 0 < right < 6 and right != 6 - right and metric.item() == right  # right and wrong counts differ
    for bad_out, bad_y in [(out[:, 0], y), (out, y[:, :4])]:
        with pytest.raises(ValueError, match="language modelling needs logits"):
            summed_loss_and_metric("lm", bad_out, bad_y)
    with pytest.raises(ValueError, match="head must be"):
        summed_loss_and_metric("rank", out, y)


def test_metric_names_and_their_directions():
    assert METRIC_NAMES == {"classify": "accuracy", "regress": "mse", "lm": "accuracy"}
    assert monitored("lm") == ("val_accuracy", "max") and monitored("regress") == ("val_mse", "min")


# ------------------------------------------------------------------------------------------------------ schedule


def _factor(s: int, w: int, T: int, r: float) -> float:
    """The closed form of the schedule's docstring (S4's and S5's ``cosine_warmup``)."""
    if s < w:
        return (s + 1) / w
    if s >= T:
        return r
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * (s - w) / (T - w)))


@pytest.mark.parametrize("w, T, r", [(0, 7, 0.0), (3, 11, 0.25), (5, 6, 1.0), (2, 9, 0.0)])
def test_warmup_cosine_factor_is_the_closed_form_at_every_step(w, T, r):
    f = WarmupCosine(w, T, floor=r)
    assert (f.warmup_steps, f.total_steps, f.floor) == (w, T, r)
    for s in range(T + 4):
        assert f(s) == pytest.approx(_factor(s, w, T, r), abs=1e-15), s


def test_warmup_cosine_scheduler_scales_each_groups_own_rate_and_defaults_to_a_zero_floor():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.003}], lr=0.1)
    sched = warmup_cosine(opt, 2, 9)
    for s in range(12):
        assert [grp["lr"] for grp in opt.param_groups] == pytest.approx([0.1 * _factor(s, 2, 9, 0.0), 0.003 * _factor(s, 2, 9, 0.0)], abs=1e-15)
        opt.step()
        sched.step()
    assert WarmupCosine(1, 4)(10) == 0.0
    f = pickle.loads(pickle.dumps(WarmupCosine(2, 9, 0.5)))
    assert [f(s) for s in range(12)] == [_factor(s, 2, 9, 0.5) for s in range(12)]


@pytest.mark.parametrize("args, name", [((-1, 5), "warmup_steps"), ((1.0, 5), "warmup_steps"), ((True, 5), "warmup_steps"),
                                        ((3, 3), "total_steps"), ((3, 2), "total_steps"), ((0, True), "total_steps"),
                                        ((0, 5.0), "total_steps"), ((1, 5, -0.01), "floor"), ((1, 5, 1.01), "floor"),
                                        ((1, 5, True), "floor"), ((1, 5, "0.1"), "floor"),
                                        ((1, 5, float("nan")), "floor")])
def test_warmup_cosine_refuses_bad_settings_by_name(args, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        WarmupCosine(*args)


# --------------------------------------------------------------------------------------------------------- optim


class _Toy(nn.Module):
    """An SSM-like block: two marked parameters (own lr; global lr), a linear layer with bias, norms, a frozen
    weight and a top-level bias, so that every grouping rule shows."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Module()
        register_ssm_parameter(self.inner, "A", torch.randn(3), lr=1e-3, weight_decay=0.0)
        register_ssm_parameter(self.inner, "B", torch.randn(3), lr=None, weight_decay=0.02)
        self.proj = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(4))
        self.scale = nn.Parameter(torch.ones(4))


def _named_groups(model: nn.Module, groups: list[dict]) -> list[tuple[float, float, set[str]]]:
    """(lr, weight decay, parameter names) of each group: the first (the decayed one) first, then the others sorted."""
    names = {id(p): n for n, p in model.named_parameters()}
    named = [(g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in groups]
    return named[:1] + sorted(named[1:], key=lambda g: (g[0], g[1]))


def test_param_groups_follow_the_marks_and_keep_norms_and_biases_undecayed(capsys):
    model = _Toy()
    groups = param_groups(model, lr=0.01, weight_decay=0.1, verbose=True)
    assert _named_groups(model, groups) == [
        (0.01, 0.1, {"proj.weight", "scale"}),
        (0.001, 0.0, {"inner.A"}),
        (0.01, 0.0, {"proj.bias", "norm.weight", "norm.bias", "bn.weight", "bn.bias", "bias"}),
        (0.01, 0.02, {"inner.B"}),
    ]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "param group: 2 tensors, 16 parameters, lr=0.01, weight_decay=0.1" and sorted(printed[1:]) == [
        "param group: 1 tensors, 3 parameters, lr=0.001, weight_decay=0",
        "param group: 1 tensors, 3 parameters, lr=0.01, weight_decay=0.02",
        "param group: 6 tensors, 24 parameters, lr=0.01, weight_decay=0",
    ]
    everything = param_groups(model, lr=0.01, weight_decay=0.1, decay_norms_and_biases=True)
    assert _named_groups(model, everything) == [
        (0.01, 0.1, {"proj.weight", "proj.bias", "norm.weight", "norm.bias", "bn.weight", "bn.bias", "bias", "scale"}),
        (0.001, 0.0, {"inner.A"}),
        (0.01, 0.02, {"inner.B"}),
    ]
    assert capsys.readouterr().out == ""


def test_param_groups_with_no_weight_decay_merge_and_refuse_bad_rates():
    model = _Toy()
    groups = param_groups(model, lr=0.5, weight_decay=0.0)
    assert _named_groups(model, groups) == [
        (0.5, 0.0, {"proj.weight", "proj.bias", "norm.weight", "norm.bias", "bn.weight", "bn.bias", "bias", "scale"}),
        (0.001, 0.0, {"inner.A"}),
        (0.5, 0.02, {"inner.B"}),
    ]
    only_ssm = nn.Module()
    register_ssm_parameter(only_ssm, "A", torch.randn(2), lr=2e-4)
    assert _named_groups(only_ssm, param_groups(only_ssm, lr=1.0, weight_decay=0.3)) == [(2e-4, 0.0, {"A"})]
    for lr, wd, name in [(0.0, 0.1, "lr"), (-1.0, 0.1, "lr"), (float("nan"), 0.1, "lr"), (0.1, -1e-9, "weight_decay"),
                         (0.1, float("nan"), "weight_decay")]:
        with pytest.raises(ValueError, match=f"^{name} must be"):
            param_groups(model, lr=lr, weight_decay=wd)


# ------------------------------------------------------------------------------------------------------- batches


def _hand_indices(n: int, batch: int, world: int, rank: int, seed: int, step: int, shuffle: bool = True) -> list[int]:
    """Step ``step``'s samples of rank ``rank``, one position at a time: position p of the endless stream is sample
    order_e[p mod n] of epoch e = ⌊p / n⌋, the order a permutation drawn with a generator seeded seed·1000003 + e."""
    out = []
    for k in range(batch):
        p = step * batch * world + rank * batch + k
        e = p // n
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e)) if shuffle else torch.arange(n)
        out.append(int(order[p % n]))
    return out


@pytest.mark.parametrize("n, batch, world, seed", [(11, 3, 2, 5), (7, 4, 1, 0), (5, 7, 3, 2)])
def test_step_batches_follow_the_hand_loop_on_every_rank(n, batch, world, seed):
    x = torch.arange(n, dtype=torch.float64)[:, None] * 10
    y = torch.arange(n)
    for rank in range(world):
        batches = StepBatches((x, y), batch, seed=seed, start_step=2, rank=rank, world_size=world)
        assert (batches.n, batches.batch_size, batches.seed, batches.rank, batches.world_size) == (n, batch, seed, rank, world)
        stream = iter(batches)
        for step in range(2, 9):
            want = _hand_indices(n, batch, world, rank, seed, step)
            assert batches.indices(step).tolist() == want
            bx, by = next(stream)
            assert by.tolist() == want and torch.equal(bx[:, 0], 10 * by.double())
        for step in (3, 0, 8):  # out of order: the cached epoch order is replaced, not reused
            assert batches.indices(step).tolist() == _hand_indices(n, batch, world, rank, seed, step)
        plain = StepBatches((x, y), batch, seed=seed, rank=rank, world_size=world, shuffle=False)
        for step in range(4):
            assert plain.indices(step).tolist() == _hand_indices(n, batch, world, rank, seed, step, shuffle=False)


def test_step_batches_transform_runs_under_the_step_key_and_leaves_the_global_streams():
    x = torch.zeros(6, 2)
    y = torch.arange(6)

    def noisy(batch):
        return (batch[0] + torch.rand(batch[0].shape), batch[1] + np.random.randint(100) + random.randrange(1000))

    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    stream = iter(StepBatches((x, y), 2, seed=3, start_step=1, rank=1, world_size=2, transform=noisy))
    got = [next(stream) for _ in range(3)]
    assert torch.equal(torch.rand(3), before)  # building batches drew nothing from the global generator
    for step, (bx, by) in zip(range(1, 4), got):
        idx = StepBatches((x, y), 2, seed=3, rank=1, world_size=2).indices(step)
        with seeded_rngs(0x7472, 3, step, 1):
            want = noisy((x[idx], y[idx]))
        assert torch.equal(bx, want[0]) and torch.equal(by, want[1])


def test_seeded_rngs_seeds_the_three_generators_from_the_blake2b_words():
    words = hashlib.blake2b(b"7,-2,30", digest_size=16).digest()
    ref_torch = torch.rand(4, generator=torch.Generator().manual_seed(int.from_bytes(words[:8], "little")))
    ref_np = np.random.RandomState(int.from_bytes(words[8:12], "little")).rand(3)
    ref_py = random.Random(int.from_bytes(words[12:], "little")).random()
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with seeded_rngs(7, -2, 30):
        assert torch.equal(torch.rand(4), ref_torch)
        assert np.array_equal(np.random.rand(3), ref_np) and random.random() == ref_py
    assert torch.equal(torch.get_rng_state(), states[0]) and np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


def test_eval_batches_split_ranks_round_robin_and_batch_in_order():
    n, batch = 11, 3
    x = torch.arange(n, dtype=torch.float64)[:, None]
    y = torch.arange(n)
    for world in (1, 2, 3):
        for rank in range(world):
            mine = list(range(rank, n, world))
            want = [mine[s:s + batch] for s in range(0, len(mine), batch)]
            got = eval_batches((x, y), batch, rank=rank, world_size=world)
            assert len(got) == len(want) and [b[1].tolist() for b in got] == want
            assert all(torch.equal(b[0][:, 0].long(), b[1]) for b in got)

    def shift(b):
        return (b[0] + torch.rand(b[0].shape), b[1])

    got = eval_batches((x, y), 2, rank=1, world_size=3, transform=shift)
    mine = torch.arange(1, n, 3)
    assert len(got) == 2  # samples 1, 4 | 7, 10
    for i, b in enumerate(got):
        idx = mine[2 * i:2 * i + 2]
        with seeded_rngs(0x6576, 1, 3, i):
            want = shift((x[idx], y[idx]))
        assert torch.equal(b[0], want[0]) and torch.equal(b[1], want[1])
    with pytest.raises(ValueError, match="at least world_size = 4 samples"):
        eval_batches((x[:3], y[:3]), 2, rank=0, world_size=4)
    assert len(eval_batches((x[:3], y[:3]), 2, rank=2, world_size=3)) == 1


@pytest.mark.parametrize("tensors, message", [((), "non-empty sequence"), ((torch.zeros(3), [1, 2, 3]), "non-empty sequence"),
                                              ((torch.zeros(0, 2),), "same number n >= 1"),
                                              ((torch.zeros(3), torch.zeros(4)), "same number n >= 1")])
def test_batches_refuse_bad_tensors(tensors, message):
    with pytest.raises(ValueError, match=message):
        StepBatches(tensors, 2)
    with pytest.raises(ValueError, match=message):
        eval_batches(tensors, 2)


@pytest.mark.parametrize("options, name", [(dict(batch_size=0), "batch_size"), (dict(world_size=0), "world_size"),
                                           (dict(rank=-1), "rank"), (dict(rank=2, world_size=2), "rank"),
                                           (dict(start_step=-1), "start_step"), (dict(start_step=1.0), "start_step")])
def test_step_batches_refuse_bad_options_by_name(options, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        StepBatches((torch.zeros(4),), **{"batch_size": 2, **options})
    if name == "batch_size":
        with pytest.raises(ValueError, match="^batch_size must be"):
            eval_batches((torch.zeros(4),), 0)


def test_batches_defaults_are_seed_0_step_0_one_shuffled_process():
    x = torch.arange(10)
    stream = iter(StepBatches((x,), 3))
    for step in range(5):
        assert next(stream)[0].tolist() == _hand_indices(10, 3, 1, 0, 0, step)
    assert [b[0].tolist() for b in eval_batches((x,), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(eval_batches((x[:3],), 1, world_size=3, rank=2)) == 1


# ---------------------------------------------------------------------------------------------------------- best


def test_is_better_is_strict_and_never_nan():
    nan = float("nan")
    assert is_better(0.5, None, "max") and is_better(0.5, None, "min") and not is_better(nan, None, "max")
    assert is_better(0.6, 0.5, "max") and not is_better(0.5, 0.5, "max") and not is_better(0.4, 0.5, "max")
    assert is_better(0.4, 0.5, "min") and not is_better(0.5, 0.5, "min") and not is_better(0.6, 0.5, "min")


class _Scored(nn.Module):
    """A module with a weight and a buffer whose ``score`` returns fixed means (what a validation would log)."""

    def __init__(self, means: dict[str, float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.register_buffer("count", torch.zeros(()))
        self.means, self.scored = means, []

    def score(self, batches):
        self.scored.append(list(batches))
        return {k: torch.tensor(v) for k, v in self.means.items()}


def _trainer(step: int, metrics: dict[str, float], val_batches=(1,), sanity: bool = False) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, sanity_checking=sanity, callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
                           datamodule=SimpleNamespace(val_dataloader=lambda: list(val_batches)))


def test_best_validation_keeps_the_first_best_of_the_offered_values():
    cb = BestValidation("classify", val_interval=2)
    module = _Scored({})
    assert (cb.key, cb.mode, cb.val_interval, cb.step, cb.score, cb.loss, cb.weights) == ("val_accuracy", "max", 2, None, None, None, None)
    log = [(2, 0.5, 0.875), (4, 0.75, 0.625), (6, 0.75, 0.5), (8, float("nan"), 0.125), (10, 0.25, 0.375)]
    for step, acc, loss in log:
        with torch.no_grad():
            module.w.fill_(step)
            module.count.fill_(-step)
        cb.on_validation_end(_trainer(step, {"val_accuracy": acc, "val_loss": loss}), module)
        assert cb.last_validated == step
    assert (cb.step, cb.score, cb.loss) == (4, 0.75, 0.625)
    assert torch.equal(cb.weights["w"], torch.full((2,), 4.0)) and cb.weights["count"].item() == -4.0
    with torch.no_grad():
        module.w.add_(1.0)
    assert torch.equal(cb.weights["w"], torch.full((2,), 4.0))  # a copy, not the live tensor
    cb.on_validation_end(_trainer(12, {"val_accuracy": 1.0, "val_loss": 0.0}, sanity=True), module)
    cb.on_validation_end(_trainer(12, {"val_loss": 0.0}), module)
    assert (cb.step, cb.last_validated) == (4, 10)
    mse = BestValidation("regress", val_interval=1)
    for step, value in [(1, 3.0), (2, 2.0), (3, 2.5)]:
        mse.on_validation_end(_trainer(step, {"val_mse": value, "val_loss": value}), module)
    assert (mse.key, mse.mode, mse.step, mse.score) == ("val_mse", "min", 2, 2.0)


def test_best_validation_catch_up_scores_only_an_unseen_validation_step():
    module = _Scored({"accuracy": 0.5, "loss": 0.25})
    cb = BestValidation("lm", val_interval=1)
    cb.on_train_start(_trainer(1, {}, val_batches=("a", "b")), module)
    assert module.scored == [["a", "b"]] and (cb.step, cb.score, cb.loss, cb.last_validated) == (1, 0.5, 0.25, 1)
    cb.catch_up(_trainer(1, {}), module)  # seen
    assert len(module.scored) == 1
    cb = BestValidation("classify", val_interval=3)
    for step in (0, 4, 5):  # not a validation step
        cb.catch_up(_trainer(step, {}), module)
    cb.catch_up(_trainer(6, {}, val_batches=()), module)  # nothing to score
    assert len(module.scored) == 1 and cb.step is None
    cb.catch_up(_trainer(6, {}), module)
    assert len(module.scored) == 2 and (cb.step, cb.last_validated) == (6, 6)


def test_best_validation_state_round_trips_and_refuses_another_monitor():
    module = _Scored({})
    cb = BestValidation("classify", val_interval=2)
    cb.on_validation_end(_trainer(2, {"val_accuracy": 0.5, "val_loss": 0.3}), module)
    state = cb.state_dict()
    assert state == {"key": "val_accuracy", "mode": "max", "step": 2, "score": 0.5, "loss": pytest.approx(0.3),
                     "weights": cb.weights, "last_validated": 2}
    other = BestValidation("lm", val_interval=2)
    other.load_state_dict(state)
    assert (other.step, other.score, other.loss, other.weights, other.last_validated) == (2, 0.5, state["loss"], cb.weights, 2)
    with pytest.raises(ValueError, match="this run monitors 'val_mse'"):
        BestValidation("regress", val_interval=2).load_state_dict(state)
    with pytest.raises(ValueError, match="kept the best 'val_accuracy' \\(min\\)"):
        BestValidation("classify", val_interval=2).load_state_dict({**state, "mode": "min"})


# ---------------------------------------------------------------------------------------------------- checkpoint


class _RunsCode:
    """A pickle that calls a function when loaded (``print`` here; an attacker's would be ``os.system``): what a
    weights-only load must refuse. (An exception object was used before: torch 2.14 loads built-in exceptions.)"""

    def __reduce__(self):
        return print, ("a checkpoint ran code while loading",)


def test_checkpoint_io_writes_reads_with_map_location_and_removes(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "a.ckpt"
    io.save_checkpoint({"w": torch.arange(3.0), "step": 4}, path)
    assert os.listdir(tmp_path / "sub") == ["a.ckpt"]
    back = io.load_checkpoint(path)
    assert back["step"] == 4 and torch.equal(back["w"], torch.arange(3.0)) and back["w"].device.type == "cpu"
    assert io.load_checkpoint(path, map_location="meta")["w"].device.type == "meta"
    assert load_checkpoint(path, map_location="meta")["w"].device.type == "meta"
    with pytest.raises(ValueError, match="storage_options"):
        io.save_checkpoint({"w": torch.zeros(1)}, path, storage_options={})
    torch.save({"obj": _RunsCode()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        io.load_checkpoint(tmp_path / "unsafe.ckpt")
    io.remove_checkpoint(path)
    assert not path.exists()
    io.remove_checkpoint(path)  # already gone: nothing to do
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(path)
    save_atomic([1, 2], tmp_path / "b.ckpt")
    assert load_checkpoint(tmp_path / "b.ckpt") == [1, 2]
