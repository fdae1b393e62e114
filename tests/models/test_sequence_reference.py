"""``SequenceModel`` against its composition written out in float64 (encoder Linear, the blocks, the final LayerNorm
of a pre-norm model by its formula, the pool, the head), and the checks of its inputs, states and options, each by
what it names. The blocks are checked against their equations in test_block_reference."""

import pytest
import torch

from ssmkit.models import SequenceModel

F64 = torch.float64


def _moved(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _layer_norm(h, norm):
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    return (h - mu) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias


@pytest.mark.parametrize("norm, prenorm, pool", [("layer", True, None), ("rms", True, "mean"), (None, True, "last"),
                                                 ("layer", False, "mean"), ("batch", False, None)])
def test_the_model_is_its_composition(norm, prenorm, pool):
    torch.manual_seed(0)
    model = SequenceModel(3, 5, 2, "s4d", {"d_state": 4}, 2, head="regress", pool=pool, norm=norm, prenorm=prenorm,
                          dtype=F64).eval()
    _moved(model, 1)
    assert model.d_model == 5 and model.head_name == "regress" and model.pool == pool
    final = prenorm and norm is not None  # a pre-norm stack ends with a LayerNorm; a post-norm one is normalised
    assert isinstance(model.final_norm, torch.nn.LayerNorm if final else torch.nn.Identity)
    x = torch.randn(4, 9, 3, dtype=F64)
    with torch.no_grad():
        y, states = model(x)
        h = x @ model.encoder.weight.T + model.encoder.bias
        for block in model.blocks:
            h, _ = block(h)
        h = _layer_norm(h, model.final_norm) if final else h
        h = {None: h, "mean": h.mean(1), "last": h[:, -1]}[pool]
        expected = h @ model.head.weight.T + model.head.bias
        assert torch.allclose(y, expected, atol=1e-12)
        features, fstates = model.features(x)  # the states by default, as forward
        assert torch.allclose(features, h, atol=1e-12) and len(fstates) == 2
        if pool != "mean":  # step gives the head at each step (pool "last" or None); its final norm included
            s = model.initial_state(4)
            for t in range(9):
                y_t, s = model.step(x[:, t], s)
            assert torch.allclose(y_t, expected if pool == "last" else expected[:, -1], atol=1e-11)


def test_counting_parameters_trainable_or_all():
    model = SequenceModel(3, 4, 1, "s4d", {}, 2)
    total = sum(p.numel() for p in model.parameters())
    model.encoder.requires_grad_(False)
    assert model.num_parameters() == total
    assert model.num_parameters(trainable_only=True) == total - 4 * 3 - 4


def test_check_finite_in_step_names_the_block_and_is_off_by_default():
    x_t = torch.randn(2, 3, dtype=F64)
    for check in (True, False):
        model = SequenceModel(3, 4, 2, "s4d", {}, 2, head="regress", pool=None, check_finite=check, dtype=F64)
        with torch.no_grad():
            model.blocks[1].out[0].weight[0, 0] = float("nan")
        if check:
            with pytest.raises(ValueError, match="the output of block 1"):
                model.step(x_t, model.initial_state(2))
        else:
            assert torch.isnan(model.step(x_t, model.initial_state(2))[0]).all()


def test_inputs_and_states_are_checked_by_what_they_name():
    model = SequenceModel(3, 4, 2, "s4d", {}, 2, head="regress", pool=None)
    with pytest.raises(ValueError, match="state must be a list of 2 block states"):
        model.step(torch.randn(2, 3), None)  # step needs a state: there is no default for a running model
    with pytest.raises(ValueError, match=r"x must be \(B, L, 3\) for d_input=3; got \(2, 0, 3\)"):
        model(torch.randn(2, 0, 3))
    assert model(torch.randn(2, 1, 3))[0].shape == (2, 1, 2)  # one step is a sequence
    with pytest.raises(ValueError, match="x must have batch size B >= 1"):  # the layers' words, not a length error
        model(torch.randn(0, 4, 3))
    tokens = SequenceModel(1, 4, 1, "s4d", {}, 6, vocab_size=6)
    with pytest.raises(ValueError, match=r"x must be integer token ids \(B, L\); got \(2, 5\) torch.float32"):
        tokens(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"x must be integer token ids \(B, L\); got \(2, 5, 1\) torch.int64"):
        tokens(torch.zeros(2, 5, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be integer token ids \(B,\); got \(2, 1\)"):
        tokens.step(torch.zeros(2, 1, dtype=torch.long), tokens.initial_state(2))
    pair = SequenceModel(3, 4, 1, "s4d", {}, 2, pair=True)
    for shape in ((4, 2), (4, 3, 5, 3)):
        with pytest.raises(ValueError, match="a pair model"):
            pair(torch.randn(*shape))
    with pytest.raises(ValueError, match="pool"):
        SequenceModel(3, 4, 1, "s4d", {}, 2, pool="max")


def test_the_config_keeps_a_pattern_as_given_at_construction():
    pattern, options = ("s4d", "lru"), {"s4d": {"d_state": 4}}
    model = SequenceModel(3, 4, 2, pattern, options, 2)
    options["s4d"]["d_state"] = 8  # the caller's dicts edited afterwards
    config = model.config
    assert config.layer == ["s4d", "lru"] and config.layer_options == {"s4d": {"d_state": 4}}
    names = ["s4d", "lru"]
    model = SequenceModel(3, 4, 2, names, None, 2)
    names[1] = "s4d"
    assert model.config.layer == ["s4d", "lru"]
    assert SequenceModel.from_config(model.config).config.layer == ["s4d", "lru"]
