"""Masks probe of 2026-12-05: the two gaps the padding probe left in ``SequenceModel(pad_id=...)``'s right-padded
batches, against float64 references (torch's ``F.batch_norm`` over the concatenated tokens; each item run alone).

Found (fixed):

1. *Training-mode batch norm took its statistics over the padding.* ``Block(norm="batch")`` in training mode
   normalised by, and moved its running mean and variance towards, the mean and variance of every position of the
   batch, padding included, so a padded batch trained differently from the batch of its tokens. Hybrid
   S4D(bidirectional) + Mega(bidirectional) + Mamba, H 5, weights moved off init, lengths 17, 11, 6, 1 padded to 17,
   against the reference (each block's batch norm by ``F.batch_norm`` over the concatenated tokens, each layer on
   each item alone), max relative error pre-norm / post-norm: logits 0.27 / 0.82, parameter gradients 4.0 / 5.6,
   running statistics 1.8 / 2.0; at the default init (2 blocks, H 64, L 256, lengths 256, 180, 90, 20): logits 0.36
   (S4D) and 0.13 (S5), gradients 9.5 and 12. Now the block's batch norm, when it takes batch statistics (training
   mode, or no running statistics), takes them over the positions the mask marks (``masked_batch_norm``: masked mean,
   biased variance to normalise, unbiased n / (n - 1) for running_var, momentum None as torch's cumulative average):
   logits <= 3.4e-16, gradients <= 1.9e-14, running statistics <= 4.7e-16. Without a mask, and in eval mode, the norm
   runs torch's own op as before (bit for bit). ``SyncBatchNorm`` was left as it was (it counted the padding) until
   the next round (tests/models/test_sync_batch_norm.py: its statistics over every process's tokens).
2. *Mega with padding ran each item's unpadded prefix, one call per distinct length* (a synchronisation and up to B
   calls). Mega's EMA is y = K ⊛ u + ω u with no bias, so zeros at the padding add exactly nothing in either
   direction; its attention and gates are position by position but for the keys; there is no norm over time inside
   it. So ``Mega.forward(x, mask=...)`` (keyword-only, bidirectional only; True at the tokens, as Hugging Face's
   ``attention_mask``) reads zeros into the EMA at the padding, gives padded keys weight 0 (the Laplace τ counts the
   item's keys), lets a chunk of padding only see its own keys (a softmax over no key is NaN, which the mean pool's
   product would spread), and runs to the longest item's end only: each item gets its own outputs in one call
   (measured <= 6.7e-16 relative on the four test variants, 1.1e-16 at the timing's size in float64; gradients too),
   and ``Block`` hands Mega its mask (a layer that declares ``takes_mask``);
   the per-length path stays for any other bidirectional layer without a kernel (none registered). Still one
   synchronisation: the check that the padding trails (a ValueError otherwise). The price is the padding's work:
   Block forward+backward, B 16, L 1000, H 64, Mega defaults (full attention: chunk_size 1024 > L), lengths 102-1000
   (Σ n / (B L) = 0.61, Σ n² / (B L²) = 0.45), float32, 1 thread, paired interleaved runs, best of 3, two runs on
   this 2-core machine shared with other jobs: per-length 315 / 440 ms, masked 717 / 740 ms (2.3x: the masked call
   does B L² of attention, the per-length calls Σ n²); chunk_size 128: 184 / 140 ms and 274 / 201 ms (1.5x, ~B L /
   Σ n); without padding 1 030 and 961 ms (the same one call). On the CPU the per-length calls are faster by the
   padding they skip; the masked call is one call over all B items and the mask's work is the padded call's, which
   is what a GPU wants (not measured here: no GPU in this session). Two threads: too noisy under the other jobs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ssmkit.layers import SequenceLayer, layer_class
from ssmkit.models import Block, SequenceModel
from ssmkit.models.block import _BatchNorm
from tests.conftest import rel_err, variants
from tests.probes.test_probe_padding_2026_12_05 import _batch  # (B, L) ids with trailing PAD, the same sizes

F64 = torch.float64
H, V, PAD, Y = 5, 11, 0, 3
LENGTHS, L = (17, 11, 6, 1), 17
TOL = 1e-12  # float64: the padded and the reference runs differ only by round-off
MEGA = {**variants("mega")[0], "bidirectional": True}  # chunk_size 8: L = 17 is three chunks


def _mask(lengths, length) -> torch.Tensor:
    return torch.arange(length) < torch.tensor(lengths)[:, None]  # (B, L)


def _moved(module: nn.Module, seed: int, scale: float = 0.2) -> nn.Module:
    """Parameters moved off their init (Mega's κ, μ and bias are 0.02-sized there: attention would be near uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# ---------------------------------------------------------------------------------------------------------------------
# 1. training-mode batch norm over the tokens only


def _reference_logits(model: SequenceModel, x: torch.Tensor, lengths) -> torch.Tensor:
    """The model on the batch of its unpadded sequences: each block's batch norm by ``F.batch_norm`` over the
    concatenated tokens (N, H) (updating the norm's running statistics), each layer on each item alone, mean pool."""
    hs = [model.encoder(x[i, :n]) for i, n in enumerate(lengths)]  # (n, H) each

    def bn(norm, rows):
        out = F.batch_norm(torch.cat(rows), norm.running_mean, norm.running_var, norm.weight, norm.bias, True,
                           norm.momentum, norm.eps)  # (N, H)
        return list(out.split(list(lengths)))

    for block in model.blocks:
        zs = bn(block.norm, hs) if block.prenorm else hs
        zs = [block.layer(z[None], return_state=False)[0][0] for z in zs]
        ys = [h + block.out(block.activation(z)) for h, z in zip(hs, zs)]
        hs = ys if block.prenorm else bn(block.norm, ys)
    return model.head(torch.stack([model.final_norm(h).mean(0) for h in hs]))  # (B, Y)


@pytest.mark.parametrize("prenorm", [True, False])
def test_training_on_a_padded_batch_is_training_on_its_tokens(prenorm):
    """Logits, every parameter's gradient and the running statistics of a training-mode batch-norm model with
    padding = the reference on the tokens alone (a bidirectional convolution, Mega and a causal Mamba)."""
    pattern = ["s4d", "mega", "mamba"]
    options = {"s4d": {"bidirectional": True}, "mega": MEGA}
    torch.manual_seed(0)
    model = SequenceModel(1, H, 3, pattern, options, d_output=Y, vocab_size=V, pad_id=PAD, norm="batch",
                          prenorm=prenorm, dtype=F64)
    model = _moved(model, 1).train()
    reference = copy.deepcopy(model)
    x = _batch()
    w = torch.randn(len(LENGTHS), Y, dtype=F64, generator=torch.Generator().manual_seed(7))
    logits, _ = model(x)
    want = _reference_logits(reference, x, LENGTHS)
    assert rel_err(logits, want) < TOL
    (logits * w).sum().backward()
    (want * w).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert rel_err(p.grad, q.grad) < 1e-11, name  # sums over the tokens in another order
    for block, ref in zip(model.blocks, reference.blocks):
        assert rel_err(block.norm.running_mean, ref.norm.running_mean) < TOL
        assert rel_err(block.norm.running_var, ref.norm.running_var) < TOL
        assert int(block.norm.num_batches_tracked) == 1


@pytest.mark.parametrize("momentum, track", [(0.1, True), (None, True), (0.3, False)])
def test_the_blocks_masked_batch_norm_is_torchs_over_the_tokens(momentum, track):
    """``_normalize(x, mask)`` in training mode, twice (momentum None averages over num_batches_tracked), and without
    running statistics (batch statistics in eval mode too): outputs and x's gradient at the tokens, running
    statistics, against ``F.batch_norm`` on the tokens; the gradient at the padding is exactly 0."""
    lengths = (7, 3, 0, 5)
    torch.manual_seed(3)
    block = Block(layer_class("s4d")(H, dtype=F64), norm="batch", dtype=F64)
    block.norm = _moved(_BatchNorm(H, momentum=momentum, track_running_stats=track, dtype=F64), 4)
    want_norm = copy.deepcopy(block.norm)
    mask = _mask(lengths, 7)
    for call in range(2):
        block.train(call == 0 or track)  # without running statistics: eval mode takes batch statistics too
        x = (3.0 * torch.randn(4, 7, H, dtype=F64) + 1.0).requires_grad_()
        g = torch.randn(4, 7, H, dtype=F64) * mask[..., None]  # d loss / d y: 0 at the padding
        y = block._normalize(x, mask)
        x_tok = x.detach()[mask].requires_grad_()  # (N, H)
        want = F.batch_norm(x_tok, want_norm.running_mean, want_norm.running_var, want_norm.weight, want_norm.bias,
                            True, 0.0 if momentum is None and not track else (momentum or 1.0 / (call + 1)),
                            want_norm.eps)
        assert rel_err(y[mask], want) < TOL
        (y * g).sum().backward()
        (want * g[mask]).sum().backward()
        assert rel_err(x.grad[mask], x_tok.grad) < TOL
        assert torch.equal(x.grad[~mask], torch.zeros_like(x.grad[~mask]))
        if track:
            assert rel_err(block.norm.running_mean, want_norm.running_mean) < TOL
            assert rel_err(block.norm.running_var, want_norm.running_var) < TOL
            assert int(block.norm.num_batches_tracked) == call + 1
        else:
            assert block.norm.running_mean is None and block.norm.num_batches_tracked is None


def test_batch_norm_without_a_mask_or_in_eval_mode_runs_torchs_op_as_before():
    """Bit for bit: no mask in training mode = torch's batch norm of every position; eval mode with a mask = without."""
    torch.manual_seed(5)
    block = Block(layer_class("s4d")(H, dtype=F64), norm="batch", dtype=F64)
    _moved(block.norm, 6)
    x = torch.randn(3, 8, H, dtype=F64)
    mask = _mask((8, 5, 2), 8)
    rm, rv = block.norm.running_mean.clone(), block.norm.running_var.clone()
    want = F.batch_norm(x.transpose(1, 2), rm, rv, block.norm.weight, block.norm.bias, True, 0.1, 1e-5).transpose(1, 2)
    assert torch.equal(block.train()._normalize(x), want)
    assert torch.equal(block.norm.running_mean, rm) and torch.equal(block.norm.running_var, rv)
    block.eval()
    assert torch.equal(block._normalize(x, mask), block._normalize(x))
    assert rel_err(block._normalize(x, mask), (x - rm) / torch.sqrt(rv + 1e-5) * block.norm.weight + block.norm.bias) < TOL


def test_a_batch_of_fewer_than_two_tokens_leaves_the_running_statistics():
    """n = 1 token: normalised to 0 (output = the bias there) and no update (torch refuses one value per channel, and
    the unbiased variance 0 / 0 is undefined); n = 0: finite, no update. No synchronisation is spent to raise."""
    torch.manual_seed(8)
    block = Block(layer_class("s4d")(H, dtype=F64), norm="batch", dtype=F64).train()
    _moved(block.norm, 9)
    rm, rv = block.norm.running_mean.clone(), block.norm.running_var.clone()
    x = torch.randn(2, 4, H, dtype=F64)
    y = block._normalize(x, _mask((1, 0), 4))
    assert rel_err(y[0, 0], block.norm.bias) < TOL
    y = block._normalize(x, _mask((0, 0), 4))
    assert torch.isfinite(y).all()
    assert torch.equal(block.norm.running_mean, rm) and torch.equal(block.norm.running_var, rv)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Mega's key-padding mask


def _mega(options: dict, seed: int = 0) -> SequenceLayer:
    torch.manual_seed(seed)
    return _moved(layer_class("mega")(H, dtype=F64, **{**options, "bidirectional": True}), seed + 1, 0.5)


def _padded(lengths, length, seed=2) -> torch.Tensor:
    """(B, L, H): each item's tokens, then large finite values at its padding (which must not be read)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), length, H, dtype=F64, generator=g)
    return torch.where(_mask(lengths, length)[..., None], x, 1e3 * x)


@pytest.mark.parametrize("options", variants("mega"), ids=lambda o: f"{o.get('attention', 'softmax')}-"
                                                                  f"{o['chunk_size']}-{o.get('positional', 'simple')}")
def test_a_masked_mega_gives_each_item_its_sequence_alone(options):
    """Softmax and Laplace, chunks and none, simple and rotary bias; lengths across chunk ends, one of a single token
    and one of padding only: outputs, x's gradient (exactly 0 at the padding) and parameter gradients."""
    lengths, length = (17, 11, 8, 1, 0), 17
    layer = _mega(options)
    x = _padded(lengths, length).requires_grad_()
    mask = _mask(lengths, length)
    g = torch.randn(len(lengths), length, H, dtype=F64, generator=torch.Generator().manual_seed(3)) * mask[..., None]
    y, state = layer(x, mask=mask)
    assert state is None and torch.isfinite(y).all()
    (y * g).sum().backward()
    got = {k: p.grad.clone() for k, p in layer.named_parameters()}
    layer.zero_grad()
    for i, n in enumerate(lengths):
        if n:
            x_i = x.detach()[i : i + 1, :n].requires_grad_()
            y_i, _ = layer(x_i)
            assert rel_err(y[i, :n], y_i[0]) < TOL
            (y_i * g[i : i + 1, :n]).sum().backward()
            assert rel_err(x.grad[i, :n], x_i.grad[0]) < TOL
    assert torch.equal(x.grad[~mask], torch.zeros_like(x.grad[~mask]))
    for k, p in layer.named_parameters():
        assert rel_err(got[k], p.grad) < 1e-11, k


def test_a_masked_mega_runs_to_the_longest_item_only():
    """Without chunks the simple bias spans max_positions: a batch padded past it runs (its items are shorter),
    and an item longer than it raises as it does alone."""
    layer = _mega({**variants("mega")[1], "max_positions": 12})  # no chunks, laplace
    lengths = (12, 5)
    x = _padded(lengths, 20)
    y, _ = layer(x, mask=_mask(lengths, 20))
    assert y.shape == x.shape
    for i, n in enumerate(lengths):
        assert rel_err(y[i, :n], layer(x[i : i + 1, :n])[0][0]) < TOL
    with pytest.raises(ValueError, match="attends over at most 12 positions"):
        layer(x, mask=_mask((13, 5), 20))
    assert torch.equal(layer(x, mask=_mask((0, 0), 20))[0], torch.zeros_like(x))


def test_megas_mask_is_checked():
    layer = _mega(variants("mega")[0])
    x = torch.randn(2, 6, H, dtype=F64)
    with pytest.raises(ValueError, match=r"mask must be a \(B, L\) bool tensor of x's \(B, L\) = \(2, 6\); got "
                                         r"\(2, 5\) torch.bool"):
        layer(x, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got \(2, 6\) torch.int64"):
        layer(x, mask=torch.ones(2, 6, dtype=torch.long))
    mask = _mask((6, 4), 6)
    mask[1, 1] = False  # padding before a token
    with pytest.raises(ValueError, match=r"Mega\(bidirectional=True\) with padding .* must trail every sequence"):
        layer(x, mask=mask)
    with pytest.raises(TypeError):
        layer(x, None, False, _mask((6, 4), 6))  # keyword-only
    torch.manual_seed(0)
    causal = layer_class("mega")(H, dtype=F64, **variants("mega")[0])
    with pytest.raises(ValueError, match=r"mask is for Mega\(bidirectional=True\)"):
        causal(x, mask=_mask((6, 4), 6))


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_mega_without_a_mask_runs_the_protocols_forward():
    """The same ops and outputs, bit for bit, as ``SequenceLayer.forward`` (no mask: nothing added)."""
    layer = _mega(variants("mega")[0])
    x = torch.randn(2, 17, H, dtype=F64)
    with torch.no_grad(), _Ops() as plain:
        y_plain, _ = SequenceLayer.forward(layer, x, None, False)
    with torch.no_grad(), _Ops() as got:
        y, _ = layer(x, return_state=False, mask=None)
    assert got.ops == plain.ops and torch.equal(y, y_plain)
    assert "aten.where" not in got.ops


def test_the_block_hands_mega_its_mask_and_keeps_the_per_length_path_for_other_layers():
    """One Mega call with the mask; a bidirectional layer without a kernel that takes no mask runs each length
    (the fallback), and both equal each item alone."""
    lengths, length = (17, 11, 11, 0, 4), 17
    torch.manual_seed(0)
    block = _moved(Block(layer_class("mega")(H, dtype=F64, **MEGA), norm="layer", dtype=F64), 1, 0.5)
    calls = []
    block.layer.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs.get("mask") is not None),
                                      with_kwargs=True)
    x, mask = _padded(lengths, length), _mask(lengths, length)
    with torch.no_grad():
        y, _ = block(x, mask=mask)
        assert calls == [True]
        block.layer.takes_mask = False  # as a user's layer: no mask argument
        calls.clear()
        y_per_length, _ = block(x, mask=mask)
        assert calls == [False] * 3  # lengths 17, 11, 4
        for i, n in enumerate(lengths):
            if n:  # (item 3 is padding only)
                alone = block(x[i : i + 1, :n])[0][0]
                assert rel_err(y[i, :n], alone) < TOL and rel_err(y_per_length[i, :n], alone) < TOL
