"""SequenceModels built from configurations no hand-written test names keep the model's equalities.

Each configuration is drawn from a seeded generator: one registered layer (with one of its tests/conftest.py variants)
or a pattern of two, real inputs or tokens (with or without ``pad_id`` and tied embeddings), every head, pool, norm,
activation and mixer output, pre- or post-norm, pairs. A configuration the constructor refuses must be refused with a
``ValueError``; every model built must, in float64 and eval mode:

- give each item of a batch what it gives alone;
- be rebuilt exactly from ``model.config`` and its ``state_dict``;
- per step (``pool=None``, causal): equal its one pass when fed in two chunks (the state carried), never let a later
  input change an earlier output, and equal its one pass step by step (``step``, where every layer has one);
- pooled or bidirectional: give an item shortened by ``lengths`` (real inputs) or by ``pad_id`` (tokens) what the
  shortened item gives alone.

Half the draws use only layers that take sampling intervals and run every comparison with random intervals. A
throw-away run of the same drawing over ~8 000 configurations (session of 2026-12-07, stop 71) found no failure.
"""

from __future__ import annotations

import random

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.models import SequenceModel
from tests.conftest import NEEDED_AT_TINY_WIDTH, VARIANTS

SEED = 20261207
N_DRAWS = 40
TOL = 1e-10


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _config(rng: random.Random, with_intervals: bool) -> dict:
    names = [n for n in layers.available() if layers.layer_class(n).takes_intervals or not with_intervals]
    picked = [rng.choice(names) for _ in range(rng.choice([1, 1, 2]))]
    if len(picked) == 1:
        options = {**rng.choice(VARIANTS.get(picked[0], [{}])), **NEEDED_AT_TINY_WIDTH.get(picked[0], {})}
    else:
        options = {"headdim": 2} if "mamba2" in picked else {}
    config = dict(d_input=rng.choice([1, 2, 3]), d_model=rng.choice([4, 6]), n_layers=rng.choice([1, 2]),
                  layer=picked[0] if len(picked) == 1 else picked, d_output=rng.choice([1, 3]), layer_options=options,
                  head=rng.choice(["classify", "regress", "lm"]), pool=rng.choice(["mean", "last", None]),
                  norm=rng.choice(["layer", "batch", "rms", None]), prenorm=rng.random() < 0.5,
                  activation=rng.choice(["auto", "gelu", "silu", "relu", "tanh", None]),
                  mixer_out=rng.choice(["auto", "glu", "linear", None]), pair=rng.random() < 0.15)
    if len(picked) == 2:
        config["n_layers"] = 2
    if rng.random() < 0.4:
        config["vocab_size"] = 7
        if rng.random() < 0.5:
            config["pad_id"] = 0
        config["tie_embeddings"] = rng.random() < 0.3
    return config


def _draws() -> list:
    rng = random.Random(SEED)
    return [pytest.param(k % 2 == 1, rng.randrange(10**6), id=f"{'intervals' if k % 2 else 'regular'}-{k}")
            for k in range(N_DRAWS)]


def _model(rng: random.Random, with_intervals: bool) -> tuple[SequenceModel, dict]:
    """The first drawn configuration the constructor accepts (a refusal must be a ValueError)."""
    for _ in range(50):
        config = _config(rng, with_intervals)
        torch.manual_seed(rng.randrange(1000))
        try:
            return SequenceModel(**config, dtype=torch.float64).eval(), config
        except ValueError as refusal:
            assert str(refusal)
    raise AssertionError("50 configurations refused in a row")


@pytest.mark.parametrize("with_intervals,seed", _draws())
def test_a_drawn_configuration_keeps_the_model_equalities(with_intervals, seed):
    rng = random.Random(seed)
    model, config = _model(rng, with_intervals)
    B, L = 3, rng.choice([5, 11, 23])
    gen = torch.Generator().manual_seed(seed)
    shape = (B, 2, L) if config["pair"] else (B, L)
    tokens = "vocab_size" in config
    low = 1 if config.get("pad_id") == 0 else 0  # no padding inside the sequences
    x = (torch.randint(low, 7, shape, generator=gen) if tokens
         else torch.randn(*shape, config["d_input"], generator=gen, dtype=torch.float64))
    iv = (torch.rand(B, L, generator=gen, dtype=torch.float64) * 2 + 0.05
          if with_intervals and not config["pair"] else None)

    def run(inputs, state=None, intervals=None, **options):
        return model(inputs, state, **({"intervals": intervals} if intervals is not None else {}), **options)

    with torch.no_grad():
        y, _ = run(x, intervals=iv)
        assert torch.isfinite(y).all()
        assert _rel(run(x[:1], intervals=None if iv is None else iv[:1])[0], y[:1]) < TOL  # batch independence
        rebuilt = SequenceModel.from_config(model.config, dtype=torch.float64).eval()
        rebuilt.load_state_dict(model.state_dict())
        assert torch.equal(rebuilt(x, **({"intervals": iv} if iv is not None else {}))[0], y)
        if config["pair"]:
            return
        causal = not any(getattr(m, "bidirectional", False) for m in model.modules())
        part = (lambda t, s: None if t is None else t[:, s])
        if config["pool"] is None and causal:
            for c in (1, L // 2):
                y1, h1 = run(x[:, :c], intervals=part(iv, slice(None, c)))
                y2, _ = run(x[:, c:], h1, intervals=part(iv, slice(c, None)))
                assert _rel(torch.cat([y1, y2], 1), y) < TOL, ("chunked", c)
            changed = x.clone()
            if tokens:
                changed[:, L // 2:] = changed[:, L // 2:] % 6 + 1
            else:
                changed[:, L // 2:] += 1.0
            # causality (to rounding: an FFT convolution mixes every step's rounding into every output)
            assert _rel(run(changed, intervals=iv)[0][:, :L // 2], y[:, :L // 2]) < TOL
            if all(block.layer.supports("step") for block in model.blocks):
                state, outputs = model.initial_state(B), []
                for t in range(L):
                    y_t, state = model.step(x[:, t], state, **({"interval": iv[:, t]} if iv is not None else {}))
                    outputs.append(y_t)
                assert _rel(torch.stack(outputs, 1), y) < TOL
        elif not tokens or config.get("pad_id") == 0:
            m = L - 2  # item 0 shortened to m steps
            if tokens:
                padded = x.clone()
                padded[0, m:] = 0
                given = {}
            else:
                padded, given = x, {"lengths": torch.tensor([m, L, L])}
            gaps = None if iv is None else torch.cat([iv[:1, :m], torch.ones(1, L - m, dtype=iv.dtype)], 1)
            gaps = None if iv is None else torch.cat([gaps, iv[1:]], 0)
            y_padded, _ = run(padded, intervals=gaps, **given)
            alone, _ = run(x[:1, :m], intervals=None if iv is None else iv[:1, :m])
            first = y_padded[:1] if config["pool"] is not None else y_padded[:1, :m]
            assert _rel(first, alone) < TOL
