"""Padding probe of 2026-12-05: ``SequenceModel(pad_id=...)`` on right-padded batches through every registered layer,
bidirectional where the layer has the option, against each sequence run alone without padding (float64); and the
block norms' ε against their closed forms.

Found (fixed):

1. *A padded batch through a bidirectional model classified differently from each sequence alone* (``pad_id`` masked
   only the pooling, so the anti-causal part of every bidirectional layer read the padding back into the tokens).
   Logits of the 2-block token classifier below (H 5, weights moved off init, lengths 17, 11, 6, 1 padded to 17),
   max relative error against the items alone, pool mean / last with pre-LayerNorm (and the worst over the norms
   and post-norm): DLR 0.19 / 0.19 (1.6), DSS 0.017 / 0.033 (0.37), EMA 0.96 / 0.84 (4.2), LRU 0.38 / 0.38 (0.93),
   Mega 1.1 / 0.81 (1.1), S4 0.11 / 0.11 (0.18), S4D 0.050 / 0.042 (0.25), S5 0.38 / 0.38 (0.79), SGConv 0.071 /
   0.071 (0.33); at the default init (H 64, L 256, lengths 256, 180, 90, 20, mean pool) 0.06 (LRU) to 1.1 (DLR). The
   causal layers: <= 8e-16. Now the model hands its (B, L) mask to every block; a bidirectional block zeroes the
   padding at its layer's input when the layer is a convolution (y = K ⊛ u, no bias: a zero input contributes
   exactly 0), and runs each item's unpadded prefix (grouped by length) for any other bidirectional layer (Mega,
   whose attention and gates are not a convolution; it refuses padding that does not trail). Everything else in a
   block acts position by position, and causal layers are left alone (their outputs at the tokens never read the
   padding after them), so every layer, pattern, norm (batch norm in eval mode), pre-/post-norm and pool now gives
   each item its own answer to round-off (measured <= 6e-16).
2. *The block's RMSNorm used torch's default ε*, the dtype's machine ε (1.2e-7 in float32, 2.2e-16 in float64), where
   Mamba's reference models use 1e-5 (and ssmkit's LayerNorms 1e-5): a float32 model and its ``.double()`` copy
   normalised small rows differently. Now ε = 1e-5 for the block's LayerNorm and RMSNorm and the final LayerNorm in
   every dtype. ε is not in the state dict: an older checkpoint loads as before, and its outputs move by about
   ε / (2 mean(x²)) relative at each RMSNorm (5e-6 for rows of unit mean square).

Checked right (guards below): a causal model with ``pad_id`` runs exactly the ops and returns exactly the states of
the same model without it (``step`` continues from them as before); a model without ``pad_id`` runs no extra op in
its blocks; with ``pad_id`` a bidirectional convolution block adds one ``where`` (and its mask's unsqueeze); a dual
encoder's padded pairs equal its head on each document's features alone; the gradients of a padded batch equal the
sum of the items' own.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ssmkit.layers import available, layer_class
from ssmkit.models import Block, SequenceModel
from tests.conftest import NEEDED_AT_TINY_WIDTH, rel_err, variants

F64 = torch.float64
H, V, PAD, Y = 5, 11, 0, 3
LENGTHS, L = (17, 11, 6, 1), 17  # B = 4 items: one unpadded, one of a single token
BIDIRECTIONAL = [n for n in available() if "bidirectional" in inspect.signature(layer_class(n).__init__).parameters]
CAUSAL = [n for n in available() if n not in BIDIRECTIONAL]
TOL = 1e-12  # float64: the padded and the unpadded runs differ only by round-off (FFT lengths, sums of other lengths)


def _options(name: str, bidirectional: bool, **extra) -> dict:
    options = {**NEEDED_AT_TINY_WIDTH.get(name, {}), **variants(name)[0], **extra}
    return {**options, "bidirectional": True} if bidirectional else options


def _moved(model: SequenceModel, seed: int) -> SequenceModel:
    """Weights moved off their init (biases and norm affines off 0 / 1, running statistics off 0 / 1), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=F64))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g, dtype=F64))
    return model.eval()


def _model(layer, options, seed=0, **kw) -> SequenceModel:
    torch.manual_seed(seed)
    kw = {"d_output": Y, "vocab_size": V, "pad_id": PAD, "dtype": F64, **kw}
    return _moved(SequenceModel(1, H, 2 if isinstance(layer, str) else len(layer), layer, options, **kw), seed + 1)


def _batch(lengths=LENGTHS, length=L, seed=1) -> torch.Tensor:
    """(B, L) token ids, item i's first lengths[i] ids in 1..V-1, then PAD."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((len(lengths), length), PAD)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randint(1, V, (n,), generator=g)
    return x


def _alone(model, x, lengths=LENGTHS, features=False):
    """Each item's answer run alone without its padding: (B, ...) stacked."""
    run = model.features if features else model
    return torch.cat([run(x[i : i + 1, :n])[0] for i, n in enumerate(lengths)])


# ---------------------------------------------------------------------------------------------------------------------
# 1. a padded batch = each sequence alone


@pytest.mark.parametrize("norm", ["layer", "rms", "batch", None])
@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("pool", ["mean", "last"])
@pytest.mark.parametrize("name", BIDIRECTIONAL + CAUSAL)
def test_a_padded_batch_classifies_each_item_as_its_sequence_alone(name, pool, prenorm, norm):
    model = _model(name, _options(name, name in BIDIRECTIONAL), pool=pool, prenorm=prenorm, norm=norm)
    x = _batch()
    with torch.no_grad():
        logits, _ = model(x)
        features, _ = model.features(x)
        assert rel_err(logits, _alone(model, x)) < TOL
        assert rel_err(features, _alone(model, x, features=True)) < TOL


@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_per_step_outputs_at_the_tokens_are_the_sequence_alone(name):
    """pool=None: the per-step logits at each item's tokens (the padding positions' are unspecified)."""
    model = _model(name, _options(name, True), pool=None, norm="rms", prenorm=False)
    x = _batch()
    with torch.no_grad():
        y, _ = model(x)
        for i, n in enumerate(LENGTHS):
            assert rel_err(y[i, :n], model(x[i : i + 1, :n])[0][0]) < TOL


@pytest.mark.parametrize("pattern, options", [
    (["s4d", "mamba", "mega", "attention"], {"s4d": _options("s4d", True), "mega": _options("mega", True),
                                            "attention": _options("attention", False)}),
    (["mega", "sgconv", "s5"], {"mega": _options("mega", True, chunk_size=None, max_positions=32, attention="laplace"),
                                "sgconv": _options("sgconv", True), "s5": _options("s5", False)}),
    (["s4", "hyena"], {"s4": _options("s4", True, l_max=8), "hyena": _options("hyena", False)}),  # L > S4's l_max
])
@pytest.mark.parametrize("pool", ["mean", "last"])
def test_hybrids_of_bidirectional_and_causal_blocks(pattern, options, pool):
    model = _model(pattern, options, pool=pool, norm="layer")
    x = _batch()
    with torch.no_grad():
        assert rel_err(model(x)[0], _alone(model, x)) < TOL


def test_a_dual_encoders_padded_pairs_are_its_head_on_each_document_alone():
    model = _model("s4", _options("s4", True), pair=True, norm="batch", prenorm=True)
    lengths = ((17, 4), (9, 12), (1, 17))
    x = torch.stack([_batch(pair, seed=3 + i) for i, pair in enumerate(lengths)])  # (3, 2, L)
    with torch.no_grad():
        got, _ = model(x)
        a = torch.cat([model.features(x[i, 0:1, :na])[0] for i, (na, _) in enumerate(lengths)])  # (3, H)
        b = torch.cat([model.features(x[i, 1:2, :nb])[0] for i, (_, nb) in enumerate(lengths)])  # (3, H)
        assert rel_err(got, model.head(a, b)) < TOL


@pytest.mark.parametrize("name", ["s4d", "mega"])  # a convolution (masked input) and Mega (each prefix alone)
def test_the_gradients_of_a_padded_batch_are_the_sum_of_the_items_own(name):
    model = _model(name, _options(name, True), pool="mean")
    x = _batch()
    w = torch.randn(len(LENGTHS), Y, dtype=F64, generator=torch.Generator().manual_seed(7))
    (model(x)[0] * w).sum().backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    for i, n in enumerate(LENGTHS):
        (model(x[i : i + 1, :n])[0] * w[i]).sum().backward()
    for k, p in model.named_parameters():
        assert rel_err(got[k], p.grad) < 1e-11, k  # float64; sums of B items in another order


def test_mega_refuses_padding_that_does_not_trail_and_skips_an_item_of_padding_only():
    model = _model("mega", _options("mega", True))
    x = _batch()
    x[1, 3] = PAD  # a pad inside item 1's tokens
    with pytest.raises(ValueError, match=r"Mega\(bidirectional=True\) with padding .* must trail every sequence"):
        model(x)
    x = _batch(lengths=(9, 0, 4), length=12)
    with torch.no_grad():
        y, _ = model(x)
        assert torch.isfinite(y).all()
        assert rel_err(y[[0, 2]], torch.cat([model(x[i : i + 1, :n])[0] for i, n in ((0, 9), (2, 4))])) < TOL


def test_blocks_mask_is_checked():
    block = Block(layer_class("s4d")(H, bidirectional=True))
    x = torch.randn(2, 6, H)
    with pytest.raises(ValueError, match=r"mask must be a \(B, L\) bool tensor of x's \(B, L\) = \(2, 6\); got "
                                         r"\(2, 5\) torch.bool"):
        block(x, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got \(2, 6\) torch.int64"):
        block(x, mask=torch.ones(2, 6, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------------
# causal models and models without pad_id: unchanged


def test_a_causal_models_states_and_steps_are_those_without_pad_id():
    """The states forward returns are the ones after the padding (as without pad_id), bit for bit, and step goes on
    from them identically."""
    pattern = ["s4d", "mamba", "attention"]
    options = {"attention": _options("attention", False), "mamba": _options("mamba", False)}
    padded = _model(pattern, options, pool=None, head="lm", d_output=V)
    plain = _model(pattern, options, pool=None, head="lm", d_output=V, pad_id=None)
    plain.load_state_dict(padded.state_dict())
    x = _batch()
    with torch.no_grad():
        y, states = padded(x)
        y_plain, states_plain = plain(x)
        assert torch.equal(y, y_plain)
        nxt = torch.tensor([3, 1, 4, 1])
        y_step, _ = padded.step(nxt, states)
        assert torch.equal(y_step, plain.step(nxt, states_plain)[0])
    for s, s_plain in zip(states, states_plain):
        for t, t_plain in zip(tree_leaves(s), tree_leaves(s_plain)):
            assert torch.equal(t, t_plain)


class _Ops(TorchDispatchMode):
    """The aten ops run inside the blocks (between each block's pre- and post-forward hooks)."""

    def __init__(self, blocks):
        super().__init__()
        self.ops: list[str] = []
        self.inside = False
        for b in blocks:
            b.register_forward_pre_hook(lambda *_: setattr(self, "inside", True))
            b.register_forward_hook(lambda *_: setattr(self, "inside", False))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.inside:
            self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _block_ops(model, x, mask=...):
    """The ops of the blocks in ``model(x)`` (mask=...), or of the blocks called directly with ``mask``."""
    with torch.no_grad(), _Ops(model.blocks) as ops:
        if mask is ...:
            model(x, return_state=False)
        else:
            h = model.encoder(x)
            for block in model.blocks:
                h, _ = block(h, return_state=False, mask=mask)
    return ops.ops


@pytest.mark.parametrize("pattern, pad_id, extra", [
    (["s4d", "mamba"], PAD, []),  # causal with pad_id: the blocks run as without it
    (["s4d", "s5"], None, []),  # bidirectional without pad_id: nothing added
    # bidirectional convolutions with pad_id: one where(mask, z, 0) each
    (["s4d", "s5"], PAD, ["aten.unsqueeze", "aten.scalar_tensor", "aten.where"] * 2),
])
def test_the_blocks_run_no_extra_op_unless_a_bidirectional_layer_must_skip_padding(pattern, pad_id, extra):
    bidirectional = pattern == ["s4d", "s5"]
    options = {n: _options(n, bidirectional and n != "mamba") for n in pattern}
    model = _model(pattern, options, pad_id=pad_id)
    x = _batch()
    got = _block_ops(model, x)
    plain = _block_ops(model, x, mask=None)
    assert len(got) == len(plain) + len(extra)
    for op in plain + extra:
        assert got.count(op) == plain.count(op) + extra.count(op), op


# ---------------------------------------------------------------------------------------------------------------------
# 2. the norms' ε


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("scale", [1.0, 1e-3])  # mean(x²) ~ 1 and ~ 1e-6 (where ε = 1e-5 dominates)
def test_the_blocks_rms_and_layer_norms_use_eps_1e_5(dtype, scale):
    torch.manual_seed(0)
    x = scale * torch.randn(3, 7, H, dtype=F64)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for norm in ("rms", "layer"):
        block = Block(layer_class("s4d")(H, dtype=dtype), norm=norm, dtype=dtype)
        with torch.no_grad():
            block.norm.weight.add_(torch.randn(H, dtype=dtype))
            if norm == "rms":
                want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * block.norm.weight.double()
            else:
                block.norm.bias.add_(torch.randn(H, dtype=dtype))
                mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
                want = (x - mu) / torch.sqrt(var + 1e-5) * block.norm.weight.double() + block.norm.bias.double()
            assert rel_err(block._normalize(x.to(dtype)), want) < tol, norm
    model = SequenceModel(1, H, 1, "s4d", d_output=Y, norm="rms", dtype=dtype)
    assert model.blocks[0].norm.eps == model.final_norm.eps == 1e-5


def test_an_old_checkpoint_loads_and_moves_by_eps_over_twice_the_mean_square():
    """A model saved with torch's default RMSNorm ε (None: machine ε) loads strictly (ε is no tensor), and its outputs
    follow the closed form with ε = 1e-5."""
    torch.manual_seed(2)
    kw = dict(d_input=2, d_model=H, n_layers=1, layer="s4d", d_output=Y, norm="rms", pool=None, head="regress",
              dtype=F64)
    old = SequenceModel(**kw)
    old.blocks[0].norm = nn.RMSNorm(H, dtype=F64)  # as the block built it before
    new = SequenceModel(**kw)
    assert set(new.state_dict()) == set(old.state_dict())
    new.load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(2, 9, 2, dtype=F64)
    h = new.encoder(x)
    ms = (h * h).mean(-1, keepdim=True)
    w = new.blocks[0].norm.weight
    with torch.no_grad():
        assert rel_err(new.blocks[0].norm(h), h / torch.sqrt(ms + 1e-5) * w) < 1e-14
        moved = (new.blocks[0].norm(h) - old.blocks[0].norm(h)).abs() / old.blocks[0].norm(h).abs()
        assert torch.allclose(moved, 1 - torch.sqrt(ms / (ms + 1e-5)), rtol=1e-6, atol=0)  # ≈ ε / (2 mean(x²))
