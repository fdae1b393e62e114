"""Token-model probe of 2026-12-05 (an ML researcher using ``SequenceModel`` as a small language model and a token
sequence classifier, hunting for silent wrong answers). Each number is checked against a float64 recomputation of the
documented equations from the model's own weights (embedding row lookup -> per block: norm by its formula, the mixer,
the activation by its formula, GLU / Linear by hand, dropout, residual -> final LayerNorm -> head), or against the same
computation done another documented way (forward on the growing sequence, the unpadded sequence, one tower alone).

Findings (fixed):

1. *A pair model's finite check named a batch item of the flattened (2B, L) batch* (``SequenceModel.forward`` with
   ``pair=True, check_finite=True``): a NaN in item 1's second document of a (3, 2, L, d) input was reported at
   "batch item 3" -- row 2i + 1 of the flattened batch, an item the (3, 2, ...) input does not have. Now the check
   reads each item's two sequences side by side and names item 1 (same time step). Reference: where the NaN was put.
2. *A pair model's shape and dtype errors named the flattened shape and asked for one sequence*: a (2, 2, 5, 1) token
   input gave "x must be integer token ids (B, L); got (4, 5, 1)", a (2, 2, 5) float input "... (B, L); got (4, 5)
   torch.float32", a real (2, 2, 5, 3) input to a d_input = 2 pair model "x must be (B, L, 2) ...; got (4, 5, 3)": a
   user told to send (B, L) was then refused with "reads pairs". Now the pair branch checks rank, trailing size and
   token dtype first and names the (B, 2, L) input as given.
3. *``pad_id`` masks the pooling only, and the docs did not say which padding side is meant* (docstring fixed): the
   blocks read every position, so padding must trail. Left padding (as Hugging Face decoders are batched) silently
   changes a causal model's answers against the unpadded sequence -- in a 2-block S4D+Mamba token classifier by 1.7 %
   (pool "last") and 6.3 % (pool "mean"), attention 62 % / 12 %, and an LM's logits at the tokens by 19 % (S4D+Mamba),
   65 % (attention); right padding gives the unpadded answers to 1e-16. The states ``forward`` returns after a
   right-padded prompt are those after the padding: ``step`` continued from them is 14 % (S4D+Mamba) off the
   unpadded prompt's continuation, so a batch of prompts of different lengths cannot be continued from one forward.
   With ``pool=None`` (``head="lm"``) ``pad_id`` changes nothing. The ``pad_id`` docstring now says all of this.

Checked and right (guards below): an LM's logits = the float64 recomputation for hybrids (S4D+Mamba,
attention+RG-LRU, Mega, Hyena+S5) under every norm (layer / rms / batch in eval / None), pre- and post-norm, every
activation and mixer_out (≤ 1e-12 relative); greedy decoding by ``step`` from a prompt processed by ``forward`` (state
handed over) = ``forward`` on the growing sequence (same tokens, logits ≤ 1e-12 in float64, ≤ 1e-5 in float32) for
["mamba", "attention"], ["s4d", "mamba2", "rglru"], Griffin's rglru-rglru-local attention, Mega (chunked, Laplace),
Hyena with generation past its ``l_max``, H3+GSS, every norm / prenorm / activation / mixer_out, prompts of length 1
and 5; right padding with ``pad_id`` = the unpadded sequence (pool last / mean / LM logits); the dual encoder's
features = the single-tower model's (same weights) per document, swapping a and b gives exactly the head on
[b, a, a ⊙ b, b − a] (states of item i at 2i and 2i + 1); Block dropout is element-wise (not tied over time: lag-1
correlation of the mask ~0), keeps 1 − p within 5σ, scales kept values by exactly 1/(1 − p), the backward uses the
forward's mask (float64, ≤ 1e-14), ``torch.manual_seed`` reproduces it, eval is exact; ``config`` -> JSON ->
``from_config`` + ``load_state_dict`` gives bit-identical outputs (hybrid, pair, pad_id, dropout in eval and in train
under one seed); ``num_parameters()`` = the sum of numels, the embedding and the LM head are not tied (and the docs
claim no tying), a tie made by hand is counted once; token ids out of range, negative, of a float / bool / uint8 /
int16 dtype, of the wrong rank, or an L = 0 / B = 0 batch all raise ``ValueError`` naming what is wrong.

Noticed and left (design, for the lead):
- Token ids of dtype uint8 / int16 (the task cache stores int16 and widens on load) are refused with "x must be integer
  token ids (B, L); got (2, 4) torch.int16": the message says "integer", which int16 is; only int64 / int32 are read.
- A Python list of ids raises AttributeError ('list' object has no attribute 'dtype'), not ValueError.
- In training mode, batch norm's statistics include the padding positions, so a token classifier's training-mode
  outputs depend on how much padding its batch holds (eval mode does not).
- Block RMSNorm was ``nn.RMSNorm(H)`` with eps = None, i.e. the dtype's machine epsilon; since the padding probe of
  2026-12-05 every block norm uses eps = 1e-5 (Mamba's reference RMSNorm).
- ``model.check_finite = False`` (what the vmap error message advises) leaves ``model.config.check_finite`` True.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from ssmkit.models import SequenceModel, SequenceModelConfig

F64 = torch.float64
V = 13


# ---------------------------------------------------------------------------------------------------------------------
# the float64 reference of the documented equations


def _norm(name, module, x):
    if name == "layer":
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + module.eps) * module.weight + module.bias
    if name == "rms":
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * module.weight
    if name == "batch":  # eval mode: the running statistics, per channel
        return (x - module.running_mean) / torch.sqrt(module.running_var + module.eps) * module.weight + module.bias
    return x


_ACT = {"gelu": lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2))), "silu": lambda z: z / (1 + torch.exp(-z)),
        "relu": lambda z: z.clamp_min(0), "tanh": torch.tanh, None: lambda z: z}


def lm_by_hand(model, tokens, norm, prenorm, activation, mixer_out):
    """Embedding row lookup -> blocks (prenorm: x + Out(σ(Layer(Norm x))); postnorm: Norm(x + Out(σ(Layer x)))) ->
    final LayerNorm of a pre-norm stack -> head, with Out = GLU (a_1 ⊙ sigmoid(a_2)), Linear or nothing."""
    h = model.encoder.weight[tokens]  # (B, L, H)
    for block in model.blocks:
        act = block.layer.block_defaults.activation if activation == "auto" else activation
        out = block.layer.block_defaults.mixer_out if mixer_out == "auto" else mixer_out
        z = _norm(norm, block.norm, h) if prenorm else h
        z, _ = block.layer(z)  # the mixer itself (each layer is checked against its own reference elsewhere)
        z = _ACT[act](z)
        if out == "glu":
            u = z @ block.out[0].weight.T + block.out[0].bias
            H = h.shape[-1]
            z = u[..., :H] / (1 + torch.exp(-u[..., H:]))
        elif out == "linear":
            z = z @ block.out.weight.T + block.out.bias
        h = h + z if prenorm else _norm(norm, block.norm, h + z)
    if prenorm and norm is not None:
        h = _norm("layer", model.final_norm, h)
    return h @ model.head.weight.T + model.head.bias


def _moved(model, seed, norm=None):
    """Weights moved off their init (biases and norm affines not at 0 / 1), running statistics not at 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        if norm == "batch":
            for block in model.blocks:
                block.norm.running_mean.copy_(torch.randn(block.norm.running_mean.shape, generator=g))
                block.norm.running_var.copy_(0.5 + torch.rand(block.norm.running_var.shape, generator=g))
    return model.eval()


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


OPTIONS = [("layer", True, "auto", "auto"), ("rms", False, "silu", "linear"), (None, True, "tanh", None),
           ("batch", False, "relu", "glu"), ("batch", True, "gelu", "auto"), ("layer", False, None, "glu")]


@pytest.mark.parametrize("pattern", [["s4d", "mamba"], ["attention", "rglru"], ["mega"], ["hyena", "s5"]])
def test_lm_logits_equal_the_float64_equations(pattern):
    torch.manual_seed(0)
    tokens = torch.randint(0, V, (2, 7))
    for i, (norm, prenorm, activation, mixer_out) in enumerate(OPTIONS):
        model = SequenceModel(1, 6, len(pattern), pattern, None, V, head="lm", pool=None, vocab_size=V, norm=norm,
                              prenorm=prenorm, activation=activation, mixer_out=mixer_out, dtype=F64)
        _moved(model, i, norm)
        with torch.no_grad():
            logits, _ = model(tokens)
            want = lm_by_hand(model, tokens, norm, prenorm, activation, mixer_out)
        assert logits.shape == (2, 7, V)
        assert _rel(logits, want) < 1e-12, (norm, prenorm, activation, mixer_out)


# ---------------------------------------------------------------------------------------------------------------------
# greedy generation: prefill by forward, then step, = forward on the growing sequence


def _greedy(model, prompt, n):
    """n greedy tokens: forward on the prompt, its state handed to step; returns (tokens, per-step logits)."""
    with torch.no_grad():
        logits, state = model(prompt)
        outs = [logits[:, -1]]
        token = outs[-1].argmax(-1)
        seq = torch.cat([prompt, token[:, None]], 1)
        for _ in range(n - 1):
            out, state = model.step(token, state)
            outs.append(out)
            token = out.argmax(-1)
            seq = torch.cat([seq, token[:, None]], 1)
    return seq, outs


GENERATORS = [
    (["mamba", "attention"], {}),
    (["s4d", "mamba2", "rglru"], {"mamba2": {"d_state": 4, "headdim": 4, "chunk_size": 4},
                                  "rglru": {"lru_width": 8, "n_heads": 2}}),
    (["rglru", "rglru", "attention"], {"attention": {"window": 4, "n_heads": 2}}),  # Griffin, local attention
    (["mega"], {"mega": {"chunk_size": 4}}),
    (["mega"], {"mega": {"attention": "laplace"}}),
    (["hyena"], {"hyena": {"l_max": 8}}),  # generation runs past l_max
    (["h3", "gss"], {}),
]


@pytest.mark.parametrize("pattern, options", GENERATORS)
def test_greedy_generation_by_step_equals_forward_on_the_growing_sequence(pattern, options):
    torch.manual_seed(1)
    for i, (norm, prenorm, activation, mixer_out) in enumerate(OPTIONS[:4]):
        model = SequenceModel(1, 8, len(pattern), pattern, options, V, head="lm", pool=None, vocab_size=V, norm=norm,
                              prenorm=prenorm, activation=activation, mixer_out=mixer_out, dtype=F64)
        _moved(model, 10 + i, norm)
        for plen in (1, 5):
            prompt = torch.randint(0, V, (2, plen))
            seq, outs = _greedy(model, prompt, 10)
            with torch.no_grad():
                for k, out in enumerate(outs):
                    full, _ = model(seq[:, : plen + k])
                    assert _rel(out, full[:, -1]) < 1e-12, (norm, prenorm, plen, k)
                    assert torch.equal(full[:, -1].argmax(-1), seq[:, plen + k])


def test_float32_greedy_generation_equals_forward():
    torch.manual_seed(2)
    model = SequenceModel(1, 8, 3, ["s4d", "mamba2", "attention"], {"mamba2": {"d_state": 4, "headdim": 4}}, V,
                          head="lm", pool=None, vocab_size=V).eval()
    prompt = torch.randint(0, V, (3, 6))
    seq, outs = _greedy(model, prompt, 12)
    with torch.no_grad():
        for k, out in enumerate(outs):
            full, _ = model(seq[:, : 6 + k])
            assert _rel(out, full[:, -1]) < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# padding


@pytest.mark.parametrize("pattern", [["s4d", "mamba"], ["attention"]])
def test_pad_id_is_for_trailing_padding_only(pattern):
    """Right padding = the unpadded sequence (pool last, mean, LM logits at the tokens); leading padding is read by the
    blocks and changes the answer, and the state after a right-padded prompt is the state after its padding (finding
    3, now in the pad_id docstring)."""
    torch.manual_seed(3)
    doc = torch.randint(1, V, (1, 5))
    pad = torch.zeros(1, 3, dtype=torch.long)
    right, left = torch.cat([doc, pad], 1), torch.cat([pad, doc], 1)
    for pool, head in (("last", "classify"), ("mean", "classify"), (None, "lm")):
        model = SequenceModel(1, 6, len(pattern), pattern, None, 3 if head == "classify" else V, head=head,
                              pool=pool, vocab_size=V, pad_id=0, dtype=F64)
        _moved(model, 4)
        with torch.no_grad():
            alone, s_alone = model(doc)
            y_right, s_right = model(right)
            y_left, _ = model(left)
        if pool is None:
            y_right, y_left = y_right[:, :5], y_left[:, 3:]
            nxt = torch.tensor([4])
            with torch.no_grad():
                want, _ = model.step(nxt, s_alone)
                got, _ = model.step(nxt, s_right)
            assert _rel(got, want) > 1e-2  # the padding moved the state: continue each prompt alone
        assert _rel(y_right, alone) < 1e-13
        assert _rel(y_left, alone) > 1e-2
    doc_text = SequenceModel.__doc__
    assert "right padding" in doc_text and "leading" in doc_text and "after the padding" in doc_text


def test_pad_id_changes_nothing_without_pooling():
    torch.manual_seed(5)
    kw = dict(d_input=1, d_model=6, n_layers=1, layer="s4d", d_output=V, head="lm", pool=None, vocab_size=V)
    masked, plain = SequenceModel(**kw, pad_id=0, dtype=F64), SequenceModel(**kw, dtype=F64)
    plain.load_state_dict(masked.state_dict())
    x = torch.randint(0, V, (2, 9))
    x[:, 6:] = 0
    with torch.no_grad():
        assert torch.equal(masked(x)[0], plain(x)[0])


# ---------------------------------------------------------------------------------------------------------------------
# dual encoder


@pytest.mark.parametrize("norm, pool", [("layer", "mean"), ("batch", "last")])
def test_pair_features_are_the_single_tower_features_and_swapping_follows_the_formula(norm, pool):
    torch.manual_seed(6)
    kw = dict(d_input=1, d_model=6, n_layers=2, layer=["s4d", "mamba"], d_output=3, vocab_size=V, pad_id=0,
              pool=pool, norm=norm, dtype=F64)
    pair = _moved(SequenceModel(**kw, pair=True), 7, norm)
    single = SequenceModel(**kw)
    missing = single.load_state_dict({k: v for k, v in pair.state_dict().items() if not k.startswith("head.")},
                                     strict=False).missing_keys
    assert missing == ["head.weight", "head.bias"]
    single.eval()
    x = torch.randint(1, V, (3, 2, 9))
    x[0, 0, 6:] = 0
    x[1, 1, 3:] = 0
    head = pair.head
    with torch.no_grad():
        logits, states = pair(x)
        swapped, _ = pair(x.flip(1))
        a, sa = single.features(x[:, 0])
        b, sb = single.features(x[:, 1])
        hidden = lambda f: head.out(torch.nn.functional.gelu(head.hidden(f)))  # noqa: E731
        assert _rel(logits, hidden(torch.cat([a, b, a * b, a - b], -1))) < 1e-14
        assert _rel(swapped, hidden(torch.cat([b, a, a * b, b - a], -1))) < 1e-14
        assert _rel(swapped, logits) > 1e-2  # the order matters (a − b)
        leaves = [torch.utils._pytree.tree_leaves(s) for s in (states, sa, sb)]
        assert len(leaves[0]) == len(leaves[1]) >= 3  # S4D's state, Mamba's (conv window, SSM state)
        for s, s_a, s_b in zip(*leaves):  # item i's states at 2i and 2i + 1
            assert _rel(s[0::2], s_a) < 1e-13 and _rel(s[1::2], s_b) < 1e-13  # rounding of other batch sizes


def test_pair_finite_check_names_the_pair_item():
    """Finding 1: a NaN in item 1's second document was reported at batch item 3 (of a 3-item input)."""
    model = SequenceModel(2, 6, 2, "s4d", None, 3, pair=True, check_finite=True)
    x = torch.randn(3, 2, 5, 2)
    x[1, 1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape("the input x is not finite (NaN or inf) from time step 2 on (first "
                                                   "at batch item 1, time step 2; 1 non-finite values in all)")):
        model(x)
    x = torch.randn(3, 2, 5, 2)
    with torch.no_grad():
        model.blocks[1].out[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape("the output of block 1 is not finite (NaN or inf) from time step 0 "
                                                   "on (first at batch item 0, time step 0")):
        model(x)
    tokens = SequenceModel(1, 6, 1, "s4d", None, 3, vocab_size=V, pair=True, check_finite=True)
    with torch.no_grad():
        tokens.encoder.weight[7, 2] = float("inf")
    x = torch.ones(4, 2, 6, dtype=torch.long)
    x[2, 0, 4] = 7
    with pytest.raises(ValueError, match=re.escape("the output of block 0 is not finite (NaN or inf) from time step 4 "
                                                   "on (first at batch item 2, time step 4")):
        tokens(x)


def test_pair_shape_errors_name_the_input_as_given():
    """Finding 2: the checks ran on the flattened (2B, ...) input and asked for (B, L) ids."""
    tokens = SequenceModel(1, 6, 1, "s4d", None, 3, vocab_size=V, pair=True)
    real = SequenceModel(2, 6, 1, "s4d", None, 3, pair=True)
    ids = "integer token ids (B, 2, L); got "
    cases = [(tokens, torch.ones(2, 2, 5, 1, dtype=torch.long), ids + "(2, 2, 5, 1) torch.int64"),
             (tokens, torch.ones(2, 2, 5), ids + "(2, 2, 5) torch.float32"),
             (tokens, torch.ones(2, 2, 5, dtype=torch.int16), ids + "(2, 2, 5) torch.int16"),
             (tokens, torch.ones(2, 3, 5, dtype=torch.long), ids + "(2, 3, 5) torch.int64"),
             (tokens, torch.ones(2, 5, dtype=torch.long), ids + "(2, 5) torch.int64"),
             (real, torch.randn(2, 2, 5, 3), "(B, 2, L, 2) for d_input=2; got (2, 2, 5, 3) torch.float32"),
             (real, torch.randn(2, 2, 5), "(B, 2, L, 2) for d_input=2; got (2, 2, 5) torch.float32")]
    for model, x, want in cases:
        with pytest.raises(ValueError, match=re.escape(f"a pair model (pair=True) reads pairs {want}")):
            model(x)
    with pytest.raises(ValueError, match=r"token ids in \[0, vocab_size\) = \[0, 13\); got ids from 1 to 13"):
        tokens(torch.tensor([[[1, 2], [3, 13]]]))
    assert tokens(torch.ones(2, 2, 5, dtype=torch.int32))[0].shape == (2, 3)
    assert real(torch.randn(2, 2, 5, 2, dtype=F64))[0].shape == (2, 3)


# ---------------------------------------------------------------------------------------------------------------------
# dropout


def test_block_dropout_is_elementwise_with_the_forward_mask_in_the_backward():
    p = 0.3
    model = SequenceModel(1, 16, 1, "s4d", {"d_state": 4}, V, head="lm", pool=None, vocab_size=V, dropout=p,
                          norm=None, dtype=F64)
    block = model.blocks[0]
    g = torch.Generator().manual_seed(8)
    x = torch.randn(8, 64, 16, generator=g, dtype=F64, requires_grad=True)
    block.eval()
    with torch.no_grad():
        inner = block(x)[0] - x  # Out(σ(Layer(x))): eval is the identity dropout
    assert torch.equal(block(x)[0], x + block.out(block.activation(block.layer(x)[0])))
    block.train()
    torch.manual_seed(9)
    y, _ = block(x)
    torch.manual_seed(9)
    assert torch.equal(block(x)[0], y)  # reproducible under the seed
    ratio = ((y - x) / inner).detach()
    mask = ratio != 0
    n = mask.numel()
    assert abs(float(mask.double().mean()) - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert float((ratio[mask] - 1 / (1 - p)).abs().max()) < 1e-9  # kept values scaled by exactly 1/(1 − p)
    m = mask.double() - mask.double().mean()
    for lag in (1, 2):  # element-wise, not tied over time (S4's tied DropoutNd is not mapped: docs/design.md)
        corr = float((m[:, lag:] * m[:, :-lag]).mean() / m.var())
        assert abs(corr) < 5 / math.sqrt(n)
    assert not bool((mask.all(dim=1) | (~mask).all(dim=1)).all())
    grad_out = torch.randn(y.shape, generator=g, dtype=F64)
    (gx,) = torch.autograd.grad(y, x, grad_out)
    x2 = x.detach().requires_grad_(True)
    block.eval()
    f = block(x2)[0] - x2
    (want,) = torch.autograd.grad(f, x2, grad_out * mask / (1 - p))
    assert _rel(gx, grad_out + want) < 1e-14


# ---------------------------------------------------------------------------------------------------------------------
# config and parameters


def test_config_round_trip_gives_identical_outputs_and_parameters_are_counted_once():
    torch.manual_seed(10)
    models = [
        SequenceModel(1, 6, 3, ["s4d", "mamba2", "rglru"], {"mamba2": {"d_state": 4, "headdim": 3}}, V, head="lm",
                      pool=None, vocab_size=V, norm="rms", prenorm=False, activation="silu", mixer_out="linear",
                      dropout=0.2),
        SequenceModel(1, 6, 2, ["mega", "hyena"], {"hyena": {"l_max": 16}}, 3, vocab_size=V, pair=True, pad_id=0,
                      pool="last", dropout=0.1),
    ]
    inputs = [torch.randint(0, V, (2, 9)), torch.randint(0, V, (2, 2, 9))]
    for model, x in zip(models, inputs):
        twin = SequenceModel.from_config(SequenceModelConfig.from_json(model.config.to_json()))
        twin.load_state_dict(model.state_dict())
        assert twin.config == model.config
        for mode in (False, True):
            model.train(mode), twin.train(mode)
            torch.manual_seed(11)
            want = model(x)[0]
            torch.manual_seed(11)
            assert torch.equal(twin(x)[0], want)
        total = sum(p.numel() for p in model.parameters())
        assert model.num_parameters() == total == twin.num_parameters()
    lm = models[0]
    assert lm.head.weight.data_ptr() != lm.encoder.weight.data_ptr()  # not tied (the docs claim no tying)
    # embedding (V, H), head (V, H) + (V,), the blocks; a post-norm stack has no final LayerNorm
    by_hand = V * 6 + 6 * V + V + sum(p.numel() for p in lm.blocks.parameters())
    assert lm.num_parameters() == by_hand
    lm.head.weight = lm.encoder.weight  # tied by hand: (V, H) both; counted once
    assert lm.num_parameters() == by_hand - V * 6


# ---------------------------------------------------------------------------------------------------------------------
# token inputs


def test_bad_token_inputs_raise_value_errors_naming_them():
    model = SequenceModel(1, 6, 1, "s4d", None, V, head="lm", pool=None, vocab_size=V)
    ids = r"token ids in \[0, vocab_size\) = \[0, 13\); got ids from "
    cases = [(torch.full((2, 4), 13), ids + "13 to 13"), (torch.full((2, 4), -1), ids + "-1 to -1"),
             (torch.full((2, 4), 2**40), ids + "1099511627776 to 1099511627776"),
             (torch.zeros(2, 4), r"integer token ids \(B, L\); got \(2, 4\) torch.float32"),
             (torch.zeros(2, 4, dtype=torch.bool), r"integer token ids \(B, L\); got \(2, 4\) torch.bool"),
             (torch.zeros(2, 4, dtype=torch.uint8),
              r"integer token ids \(B, L\); got \(2, 4\) torch.uint8 \(ids are int64 or int32"),
             ([[1, 2, 3]], "x must be a tensor; got list"),
             (torch.zeros(2, 4, 1, dtype=torch.long), r"integer token ids \(B, L\); got \(2, 4, 1\)"),
             (torch.zeros(4, dtype=torch.long), r"integer token ids \(B, L\); got \(4,\)"),
             (torch.zeros(2, 0, dtype=torch.long), "length L >= 1"),
             (torch.zeros(0, 4, dtype=torch.long), "batch size B >= 1")]
    for x, want in cases:
        with pytest.raises(ValueError, match=want):
            model(x)
    state = model.initial_state(2)
    for x, want in ((torch.tensor([3, 13]), ids + "3 to 13"), (torch.tensor(3), r"\(B,\); got \(\)"),
                    (torch.zeros(2, 1, dtype=torch.long), r"\(B,\); got \(2, 1\)"),
                    (torch.zeros(2), r"\(B,\); got \(2,\) torch.float32")):
        with pytest.raises(ValueError, match=want):
            model.step(x, state)
    # int32 ids are the int64 ids' answer
    x = torch.randint(0, V, (2, 4))
    assert torch.equal(model(x.int())[0], model(x)[0])
