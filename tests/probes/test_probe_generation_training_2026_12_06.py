"""Probe of 2026-12-06: generation (``ssmkit.models.generate``, ``next_tokens``, ``filter_logits``), activation
checkpointing (``SequenceModel.activation_checkpointing``, :mod:`ssmkit.models.recompute`) and gradient accumulation
(``TrainConfig.micro_batches``), as a new user would try them. References: ``forward`` re-run on the growing sequence,
argmax / closed-form softmax of the logits, the same model without checkpointing, the same float64 run with
``micro_batches=1``, and a gradient norm computed here by hand.

Findings (fixed in src/ssmkit/models/generate.py and src/ssmkit/models/recompute.py):

1. *A small temperature failed instead of tending to greedy*: ``next_tokens`` divided float32 logits by T, which
   overflowed to inf for T below ~1e-38 (and for |logit| / T above 3.4e38: logits 1e38..3e38 at T = 0.5), and
   ``torch.multinomial`` raised "probability tensor contains either inf, nan or element < 0". Now the draw is taken
   from the logits less the row's largest, in float64: T = 1e-39 ... 5e-324 gives the argmax.
2. *A float64 model's logits were sampled in float32*: logits 1.0 and 1.0 + 1e-9 became equal, and at T = 1e-12
   (a ratio e^1000 between them) the smaller was drawn about half of the time (95 of 200); now never (0 of 200).
3. *NaN or +inf logits*: greedy decoding returned the NaN's token (argmax takes NaN for the largest) without a word,
   sampling raised the multinomial RuntimeError; a +inf logit (drawn for sure) raised it too. Now NaN, and a row with
   no logit above -inf, raise a ValueError naming the row; a +inf logit is drawn.
4. *Activation checkpointing broke torch.func*: ``grad``, ``jacrev`` and ``vmap`` with a backward raised
   "torch.func.{grad, vjp, jacrev, hessian} don't yet support saved tensor hooks" (per-sample gradients of a model
   trained with ``TrainConfig(activation_checkpointing=True)``). Inside functorch transforms the blocks now run
   without the checkpoint: the same gradients as without it.
5. ``filter_logits``'s docstring said top-k keeps "those torch.topk returns" of tied k-th values; it keeps all of
   them (as Hugging Face's top-k filter): the docstring now says so.

Held (no change): greedy generation equals ``forward`` on the growing sequence for hybrids with windowed attention,
Hyena and SGConv past ``l_max``, Mega with chunks, S4 / Liquid-S4 with ``l_max``, RG-LRU, in float32 too, for prompts
of length 1, int32 prompts, ``max_new_tokens`` 1 and an ``eos_id`` at the first new token, and for a model with
``pad_id`` whose generated tokens include ``pad_id`` (the causal layers never read the mask). The checkpoint gives
the same outputs, gradients, running statistics and generator stream with ``pair=True``, ``pad_id``, bidirectional
layers, ``SyncBatchNorm`` (one process), dropout, CPU bf16 autocast, gradients through the returned and initial
states, and inside a user's own reentrant or non-reentrant checkpoint. Micro-batches equal the one-piece step
(float64, 1e-12) for a pair model, a (B, L, d) regression, gradient clipping (clipped once per step, by the norm of
the whole batch's gradient), bf16-mixed (to bf16 round-off), and a resume that changes ``micro_batches``.
"""

from __future__ import annotations

import copy
import csv
import glob
import math
import os

import numpy as np
import pytest
import torch
from torch.utils.checkpoint import checkpoint

from ssmkit.models import SequenceModel, SequenceModelConfig, filter_logits, generate, next_tokens

F64 = torch.float64
V = 11
H = 4


def _lm(pattern, options, dtype=F64, pad_id=None, seed=0):
    torch.manual_seed(seed)
    model = SequenceModel(1, H, len(pattern), pattern, options, V, head="lm", pool=None, vocab_size=V, pad_id=pad_id,
                          dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _greedy_by_forward(model, prompt, n, eos_id=None):
    seq = prompt.long()
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(seq[None], return_state=False)
            token = logits[0, -1].argmax()
            seq = torch.cat([seq, token[None]])
            if eos_id is not None and int(token) == eos_id:
                break
    return seq


# ---------------------------------------------------------------- generation: sampling (findings 1-3, 5)

@pytest.mark.parametrize("temperature", [1e-39, 1e-45, 1e-300, 5e-324])
def test_a_tiny_temperature_draws_the_argmax(temperature):
    logits = torch.randn(50, V, generator=torch.Generator().manual_seed(0))
    want = np.argmax(logits.numpy(), axis=1)
    got = next_tokens(logits, temperature, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(got.numpy(), want)


def test_huge_logits_at_temperature_one_half():
    logits = torch.tensor([[1e38, 3e38, 2e38, -3e38]]).repeat(20, 1)
    assert torch.equal(next_tokens(logits, 0.5, generator=torch.Generator().manual_seed(0)),
                       torch.ones(20, dtype=torch.long))


def test_a_float64_near_tie_is_sampled_by_its_float64_difference():
    # p(token 1) / p(token 2) = exp(-1e-9 / 1e-12) = e^-1000: token 2 every time (float32 rounding made them equal)
    logits = torch.tensor([[0.0, 1.0, 1.0 + 1e-9]], dtype=F64).repeat(200, 1)
    got = next_tokens(logits, 1e-12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, torch.full((200,), 2))


def test_tied_maxima_share_the_draw_at_a_tiny_temperature_and_greedy_takes_the_first():
    logits = torch.tensor([[-math.inf, 2.0, 2.0, 0.0]]).repeat(4000, 1)
    got = next_tokens(logits, 1e-6, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(got, minlength=4)
    assert counts[0] == counts[3] == 0
    assert abs(int(counts[1]) - 2000) < 4 * math.sqrt(4000 * 0.25)  # binomial(4000, 1/2), 4 sigma
    assert int(next_tokens(logits[:1], 0)) == 1


def test_a_plus_inf_logit_is_drawn_for_sure():
    logits = torch.tensor([[1.0, math.inf, 3.0], [math.inf, 0.0, math.inf]])
    got = next_tokens(logits.repeat(100, 1), 1.0, generator=torch.Generator().manual_seed(0)).view(100, 2)
    assert (got[:, 0] == 1).all() and ((got[:, 1] == 0) | (got[:, 1] == 2)).all()


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_nan_logits_and_rows_without_a_token_raise_value_errors(temperature):
    for row in ([math.nan, 2.0, 1.0], [-math.inf, -math.inf, -math.inf]):
        logits = torch.tensor([[0.0, 1.0, 2.0], row])
        with pytest.raises(ValueError, match=r"no NaN and at least one logit above -inf per row; row 1"):
            next_tokens(logits, temperature)


def test_generate_with_nan_weights_raises_instead_of_returning_tokens():
    model = _lm(["s4d"], {"s4d": {"d_state": 4}})
    with torch.no_grad():
        model.head.weight[3, 0] = math.nan
    with pytest.raises(ValueError, match="logits must hold no NaN"):
        generate(model, torch.tensor([[1, 2, 3]]), 4, temperature=0)


def test_top_k_keeps_every_logit_tied_with_the_kth():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 2.0, 0.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))[0].numpy()
    kth = np.sort(logits.numpy()[0])[::-1][1]  # the 2nd largest, 2.0
    assert np.array_equal(kept, logits.numpy()[0] >= kth)  # 4 tokens kept: 3.0 and the three 2.0


# ---------------------------------------------------------------- generation: hybrids and edge cases (held)

HYBRIDS = {
    "window-attention+mamba": (["attention", "mamba"], {"attention": {"n_heads": 2, "head_dim": 2, "window": 3},
                                                        "mamba": {"d_state": 3}}),
    "hyena-past-l_max+rglru": (["hyena", "rglru"], {"hyena": {"l_max": 4, "filter_width": 8},
                                                    "rglru": {"lru_width": 4, "n_heads": 2}}),
    "mega-chunks+s4-l_max": (["mega", "s4"], {"mega": {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 3},
                                              "s4": {"d_state": 4, "l_max": 4}}),
    "sgconv-l_max+liquid": (["sgconv", "liquid_s4"], {"sgconv": {"l_max": 4, "kernel_dim": 2},
                                                      "liquid_s4": {"d_state": 4, "l_max": 4}}),
}


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("hybrid", sorted(HYBRIDS))
def test_greedy_hybrids_past_their_lengths_equal_forward_on_the_growing_sequence(hybrid, dtype):
    pattern, options = HYBRIDS[hybrid]
    model = _lm(pattern, options, dtype)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, V, (n,), generator=g, dtype=torch.int32) for n in (1, 4)]  # int32 ids
    out = generate(model, prompts, 12, temperature=0)
    for prompt, got in zip(prompts, out):
        assert got.dtype == torch.int64
        assert torch.equal(got, _greedy_by_forward(model, prompt, 12))


def test_one_new_token_and_an_eos_at_the_first_new_token():
    model = _lm(["s4d", "attention"], {"s4d": {"d_state": 4}, "attention": {"n_heads": 2, "head_dim": 2}})
    prompt = torch.tensor([[5]])
    one = generate(model, prompt, 1, temperature=0)
    want = _greedy_by_forward(model, prompt[0], 1)
    assert torch.equal(one[0], want)
    eos = int(want[-1])
    assert torch.equal(generate(model, prompt, 9, temperature=0, eos_id=eos)[0], want)  # stops at once
    listed = generate(model, [prompt[0], torch.tensor([5, eos, 2])], 9, temperature=0, eos_id=eos)
    assert torch.equal(listed[0], want)  # an eos inside a prompt does not stop it: only generated ones do
    assert torch.equal(listed[1], _greedy_by_forward(model, torch.tensor([5, eos, 2]), 9, eos_id=eos))


@pytest.mark.parametrize("name", ["mega", "attention"])
def test_a_model_with_pad_id_generates_pad_tokens_as_the_model_without_it(name):
    options = {"mega": {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": None},
               "attention": {"n_heads": 2, "head_dim": 2}}[name]
    base = _lm([name], {name: options})
    prompts = [torch.tensor([3, 1, 4]), torch.tensor([1])]
    free = generate(base, prompts, 10, temperature=0)
    pad = int(free[0][4])  # a token the model generates: now the padding id
    padded = _lm([name], {name: options}, pad_id=pad)
    padded.load_state_dict(base.state_dict())
    out = generate(padded, prompts, 10, temperature=0)
    assert (out[0][3:] == pad).any()  # a generated token is the padding id
    for prompt, got, want in zip(prompts, out, free):
        assert torch.equal(got, want)
        assert torch.equal(got, _greedy_by_forward(padded, prompt, 10))


# ---------------------------------------------------------------- checkpointing (finding 4, and held cases)

def _real_model():
    torch.manual_seed(0)
    return SequenceModel(2, H, 2, ["s4d", "rglru"], {"s4d": {"d_state": 4}, "rglru": {"lru_width": 4, "n_heads": 2}},
                         3, dtype=F64).train()


def test_torch_func_gradients_with_checkpointing_equal_those_without():
    from torch.func import functional_call, grad, jacrev, vmap

    model = _real_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(3, 6, 2, dtype=F64, generator=torch.Generator().manual_seed(1))

    def loss(p, xi):
        return functional_call(model, p, (xi[None],), {"return_state": False})[0].square().sum()

    results = []
    for on in (False, True):
        model.activation_checkpointing = on
        per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
        jac = jacrev(lambda xi: model(xi[None], return_state=False)[0][0])(x[0])
        model.zero_grad(set_to_none=True)
        vmap(lambda xi: functional_call(model, dict(model.named_parameters()), (xi[None],),
                                        {"return_state": False})[0].sum())(x).sum().backward()
        results.append((per_sample, jac, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (g0, j0, b0), (g1, j1, b1) = results
    for k in params:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-12, atol=0)
        torch.testing.assert_close(b1[k], b0[k], rtol=1e-12, atol=0)
    torch.testing.assert_close(j1, j0, rtol=1e-12, atol=0)


def _step(model, fn, on):
    model = copy.deepcopy(model)
    model.activation_checkpointing = on
    torch.manual_seed(5)
    out = fn(model)
    out.backward()
    return (out.detach(), [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()],
            torch.rand(3))


def _same(model, fn):
    a, b = _step(model, fn, False), _step(model, fn, True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[3], b[3])
    for u, v in zip(a[1] + a[2], b[1] + b[2]):
        assert torch.equal(u, v)


def test_checkpointing_a_padded_bidirectional_pair_model_with_sync_batch_norm_and_dropout():
    torch.manual_seed(0)
    model = SequenceModel(1, H, 2, ["s4d", "mega"], {"s4d": {"d_state": 4, "bidirectional": True},
                                                     "mega": {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": None,
                                                              "bidirectional": True}},
                          3, pair=True, pad_id=0, vocab_size=7, norm="batch", dropout=0.1, dtype=F64).train()
    x = torch.randint(1, 7, (3, 2, 9), generator=torch.Generator().manual_seed(1))
    x[0, 1, 6:] = 0
    x[2, 0, 3:] = 0
    _same(model, lambda m: m(x, return_state=False)[0].square().sum())
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert isinstance(synced.blocks[0].norm, torch.nn.SyncBatchNorm)
    _same(synced, lambda m: m(x, return_state=False)[0].square().sum())


def test_checkpointing_states_autocast_and_a_users_own_checkpoint():
    torch.manual_seed(0)
    lm = SequenceModel(1, H, 3, ["s4d", "mamba", "attention"],
                       {"s4d": {"d_state": 4}, "mamba": {"d_state": 3}, "attention": {"n_heads": 2, "head_dim": 2,
                                                                                       "window": 3}},
                       7, head="lm", pool=None, vocab_size=7, dtype=F64, dropout=0.1).train()
    x = torch.randint(0, 7, (2, 8), generator=torch.Generator().manual_seed(1))

    starts = []

    def through_states(m):
        state = m.initial_state(2)
        leaves = [t for t in torch.utils._pytree.tree_leaves(state) if isinstance(t, torch.Tensor)
                  and t.is_floating_point()]
        for i, t in enumerate(leaves):
            t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(i), dtype=t.dtype)).requires_grad_()
        starts.append(leaves)
        out, final = m(x, state=state, return_state=True)
        ends = [t for t in torch.utils._pytree.tree_leaves(final) if isinstance(t, torch.Tensor) and t.requires_grad]
        assert len(ends) >= 3  # every block's final state carries a gradient
        return out.square().sum() + sum(t.abs().square().sum() for t in ends)

    _same(lm, through_states)
    assert len(starts[0]) >= 3
    for u, v in zip(*starts):  # the initial states' gradients
        assert u.grad is not None and torch.equal(u.grad, v.grad)

    def autocast(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x, return_state=False)[0]
        return out.float().square().sum()

    _same(lm.float(), autocast)
    real = _real_model()
    xr = torch.randn(2, 8, 2, dtype=F64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    for reentrant in (True, False):
        _same(real, lambda m: checkpoint(lambda z: m(z, return_state=False)[0], xr,
                                         use_reentrant=reentrant).square().sum())


# ---------------------------------------------------------------- micro-batches (held)

pytest.importorskip("lightning")
from ssmkit.train import TrainConfig, fit  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402


def _fit(out, model, data, micro, resume=False, callbacks=(), **options):
    config = TrainConfig(**{"batch_size": 6, "max_steps": 3, "warmup_steps": 0, "val_every": 0, "checkpoint_every": 0,
                            "lr": 1e-2, "precision": "64", "log_every": 1, "micro_batches": micro, **options})
    fit(model, config, data, None, None, out, progress=False, resume=resume, extra_callbacks=callbacks)
    state = load_checkpoint(os.path.join(out, "checkpoints", "last.ckpt"))["state_dict"]
    losses = []
    for path in sorted(glob.glob(os.path.join(out, "logs", "version_*", "metrics.csv"))):
        with open(path) as f:
            losses += [float(row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")]
    return state, losses


def _close(a, b, rtol):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * 1e-2, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


REGRESS = SequenceModelConfig(d_input=2, d_model=H, n_layers=1, layer="s4d", d_output=3, head="regress", pool=None,
                              layer_options={"d_state": 4})


def _regress_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 8, 2, generator=g, dtype=F64), torch.randn(12, 8, 3, generator=g, dtype=F64)


def test_a_padded_pair_model_in_parts_equals_the_step_in_one_piece(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 7, (12, 2, 8), generator=g)
    x[::3, 1, 5:] = 0
    y = torch.randint(0, 2, (12,), generator=g)
    model = SequenceModelConfig(d_input=1, d_model=H, n_layers=2, layer=["s4d", "mega"], d_output=2, pair=True,
                                vocab_size=7, pad_id=0,
                                layer_options={"s4d": {"d_state": 4, "bidirectional": True},
                                               "mega": {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": None}})
    whole, losses = _fit(tmp_path / "one", model, (x, y), 1)
    parts, part_losses = _fit(tmp_path / "three", model, (x, y), 3)
    _close(parts, whole, 1e-9)
    assert part_losses == pytest.approx(losses, rel=1e-12)


def test_clipping_is_applied_once_per_step_to_the_whole_batchs_gradient(tmp_path, monkeypatch):
    from ssmkit.train.module import SequenceLightningModule
    import lightning.pytorch as pl

    x, y = _regress_data()
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recorded(parameters, max_norm, *args, **kwargs):
        norm = clip(parameters, max_norm, *args, **kwargs)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded)
    whole, _ = _fit(tmp_path / "one", REGRESS, (x, y), 1, batch_size=12, grad_clip=1e-3)
    one_piece, norms[:] = list(norms), []
    parts, _ = _fit(tmp_path / "four", REGRESS, (x, y), 4, batch_size=12, grad_clip=1e-3)
    assert len(norms) == 3  # once per step, not per part
    assert norms == pytest.approx(one_piece, rel=1e-12)
    _close(parts, whole, 1e-9)
    # step 0 by hand: the initial weights (fit seeds, then builds), the whole split (batch_size = 12, any order)
    pl.seed_everything(0, verbose=False)
    model = SequenceLightningModule(REGRESS, TrainConfig(precision="64")).model
    out, _ = model(x, return_state=False)
    ((out - y).square().sum() / y.numel()).backward()
    by_hand = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
    assert norms[0] == pytest.approx(by_hand, rel=1e-12)


def test_bf16_mixed_in_parts_is_the_step_in_one_piece_to_bf16_round_off(tmp_path):
    x, y = (t.float() for t in _regress_data())
    whole, losses = _fit(tmp_path / "one", REGRESS, (x, y), 1, precision="bf16-mixed")
    parts, part_losses = _fit(tmp_path / "two", REGRESS, (x, y), 2, precision="bf16-mixed")
    full, _ = _fit(tmp_path / "f32", REGRESS, (x, y), 1, precision="32")
    gap = max(float((parts[k] - whole[k]).abs().max()) for k in whole if whole[k].is_floating_point())
    bf16_gap = max(float((full[k] - whole[k]).abs().max()) for k in whole if whole[k].is_floating_point())
    assert gap < bf16_gap  # the parts differ from the whole step by less than bf16 differs from float32
    assert part_losses == pytest.approx(losses, rel=1e-3)


def test_a_resume_that_changes_micro_batches_continues_the_weights(tmp_path):
    import lightning.pytorch as pl

    class StopAt2(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.should_stop or trainer.global_step >= 2

    data = _regress_data()
    options = {"max_steps": 4, "checkpoint_every": 2, "grad_clip": 1e-2}
    whole, losses = _fit(tmp_path / "one", REGRESS, data, 1, **options)
    _fit(tmp_path / "two", REGRESS, data, 1, callbacks=[StopAt2()], **options)
    resumed, resumed_losses = _fit(tmp_path / "two", REGRESS, data, 3, resume=True, **options)
    _close(resumed, whole, 1e-9)
    assert resumed_losses == pytest.approx(losses, rel=1e-12)
