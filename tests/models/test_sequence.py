"""Block and SequenceModel: the three views (forward, chunked forward, step) agree for every layer."""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.layers import build
from ssmkit.models import Block, SequenceModel, SequenceModelConfig
from tests.conftest import DEVICE, H, leaves, rel_err, state_err, variants

NAMES = layers.available()
STEP_NAMES = [name for name in NAMES if layers.layer_class(name).capabilities.step]


def model_for(name: str, **kw) -> SequenceModel:
    torch.manual_seed(3)
    opts = dict(d_input=2, d_model=H, n_layers=2, layer=name, layer_options=variants(name)[0], d_output=3)
    opts.update(kw)
    return SequenceModel(device=DEVICE, dtype=torch.float64, **opts).eval()


@pytest.mark.parametrize("norm", ["layer", "rms", "batch", None])
@pytest.mark.parametrize("name", STEP_NAMES)
def test_model_step_equals_forward(name, norm):
    model = model_for(name, head="regress", pool=None, norm=norm)
    x = torch.randn(2, 19, 2, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, states = model(x)
        s = model.initial_state(2)
        ys = []
        for t in range(19):
            y_t, s = model.step(x[:, t], s)
            ys.append(y_t)
    assert y.shape == (2, 19, 3)
    assert rel_err(torch.stack(ys, 1), y) < 1e-10  # float64 model: DESIGN.md rule 1
    for a, b in zip(s, states):
        assert state_err(a, b) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_model_chunked_equals_one_pass_and_pool_last(name):
    model = model_for(name, head="regress", pool="last")
    x = torch.randn(2, 30, 2, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, states = model(x)
        _, s = model(x[:, :11])
        y2, s2 = model(x[:, 11:], s)
    assert y.shape == (2, 3)
    assert rel_err(y2, y) < 1e-10
    for a, b in zip(s2, states):
        assert state_err(a, b) < 1e-10


def test_mean_pool_and_classification_shapes():
    model = model_for("s4d", head="classify", pool="mean")
    x = torch.randn(5, 12, 2, device=DEVICE, dtype=torch.float64)
    y, _ = model(x)
    per_step, _ = model_for("s4d", head="classify", pool=None)(x)
    assert y.shape == (5, 3)
    # mean pooling commutes with the (affine) head: pooled output = mean of per-step outputs
    assert rel_err(y, per_step.mean(1)) < 1e-12


def test_language_model_with_tokens():
    model = model_for("s4d", head="lm", pool=None, vocab_size=11, d_output=11)
    tokens = torch.randint(0, 11, (2, 9), device=DEVICE)
    with torch.no_grad():
        logits, _ = model(tokens)
        s = model.initial_state(2)
        for t in range(9):
            out, s = model.step(tokens[:, t], s)
    assert logits.shape == (2, 9, 11)
    assert rel_err(out, logits[:, -1]) < 1e-10


def test_model_bad_inputs():
    model = model_for("s4d", head="regress", pool=None)
    with pytest.raises(ValueError, match=r"\(B, L, 2\)"):
        model(torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.ones(2, 5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="list of 2 block states"):
        model(torch.randn(2, 5, 2, dtype=torch.float64, device=DEVICE), state=[None])
    with pytest.raises(ValueError, match=r"x must be on the model's device .*; got meta"):
        model(torch.randn(2, 5, 2, dtype=torch.float64, device="meta"))
    lm = model_for("s4d", head="lm", pool=None, vocab_size=7, d_output=7)
    with pytest.raises(ValueError, match="token ids"):
        lm(torch.randn(2, 5))
    with pytest.raises(ValueError, match="pool must be None"):
        SequenceModel(2, 4, 1, "s4d", {}, 3, head="lm", pool="mean")
    with pytest.raises(ValueError, match="head must be one of"):
        SequenceModel(2, 4, 1, "s4d", {}, 3, head="nope")
    with pytest.raises(ValueError, match="must not set d_model"):
        SequenceModel(2, 4, 1, "s4d", {"d_model": 4}, 3)
    with pytest.raises(ValueError, match="one name per block"):
        SequenceModel(2, 4, 2, ["s4d"], None, 3)
    with pytest.raises(ValueError, match=r"unknown layer names \['nope'\]"):
        SequenceModel(2, 4, 2, ["s4d", "nope"], None, 3)
    with pytest.raises(ValueError, match=r"\['s4'\] are not in the pattern"):
        SequenceModel(2, 4, 2, ["s4d", "dss"], {"s4": {"l_max": 8}}, 3)
    with pytest.raises(TypeError):
        SequenceModel(2, 4, 1, "s4d", {"no_such_option": 1}, 3)
    # ... and a ValueError naming the layer's options, as every configuration error (the CLI's one-line report)
    with pytest.raises(ValueError, match=r"layer 's4d' has no option\(s\) \['dstate'\]; its options are \['d_state', "):
        SequenceModel(2, 4, 1, "s4d", {"dstate": 4}, 3)
    with pytest.raises(ValueError, match=r"layer 'dss' has no option\(s\) \['l_maxx'\]"):
        SequenceModel(2, 4, 2, ["s4d", "dss"], {"dss": {"l_maxx": 8}}, 3)
    with pytest.raises(ValueError, match=r"layer_options must be a dict of the layer's options, or None; got \['d_state', 4\]"):
        SequenceModel(2, 4, 1, "s4d", ["d_state", 4], 3)
    # what a config file may hold: a string "false" is truthy (prenorm "false" built a pre-norm model), vocab_size 0 an
    # empty embedding; both were accepted without a word
    for option, value in (("prenorm", "false"), ("check_finite", "no"), ("pair", 0), ("dropout", "0.1"),
                          ("dropout", True), ("vocab_size", 0), ("vocab_size", 5.0)):
        with pytest.raises(ValueError, match=f"^{option} must be"):
            SequenceModel(2, 4, 1, "s4d", {}, 3, **{option: value})


def test_block_structure_and_batchnorm_step():
    torch.manual_seed(4)
    layer = build("s4d", d_model=4, d_state=8, dtype=torch.float64)
    block = Block(layer, norm="batch", prenorm=False, activation="tanh", mixer_out="linear").double()
    x = torch.randn(3, 10, 4, dtype=torch.float64)
    block(x)  # one training-mode pass updates the running statistics
    with pytest.raises(RuntimeError, match="eval mode"):
        block.step(x[:, 0], layer.initial_state(3))
    block.eval()
    with torch.no_grad():
        y, _ = block(x)
        z, _ = layer(x)
        expected = block.norm(x + block.out(torch.tanh(z)))  # postnorm residual, by hand
        s = layer.initial_state(3)
        for t in range(10):
            y_t, s = block.step(x[:, t], s)
    assert rel_err(y, expected) < 1e-12
    assert rel_err(y_t, y[:, -1]) < 1e-10
    with pytest.raises(ValueError, match="norm must be one of"):
        Block(layer, norm="group")
    with pytest.raises(ValueError, match="dropout"):
        Block(layer, dropout=1.5)


@pytest.mark.parametrize("name", NAMES)
def test_model_runs_under_autocast(name):
    torch.manual_seed(5)
    model = SequenceModel(2, H, 2, name, variants(name)[0], 3, head="regress", pool="last", device=DEVICE).eval()
    x = torch.randn(2, 40, 2, device=DEVICE)
    with torch.no_grad():
        y, _ = model(x)
        with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
            y_amp, states = model(x)
    assert bool(torch.isfinite(y_amp).all())
    assert rel_err(y_amp.float(), y) < 0.1  # bf16 projections (3 significant digits) around a float32 SSM core, H = 3
    # the states keep their declared dtypes (complex64 / float32 SSM states; attention's float64 position), not bf16
    assert [t.dtype for t in leaves(states)] == [t.dtype for t in leaves(model.initial_state(2))]


def test_config_round_trips_through_json_and_yaml(tmp_path):
    model = SequenceModel(3, 8, 2, "s4", {"d_state": 4, "l_max": 16, "init": "legt"}, 5, head="regress", pool=None,
                          norm="rms", dropout=0.1)
    config = model.config
    assert config == SequenceModelConfig(d_input=3, d_model=8, n_layers=2, layer="s4", d_output=5,
                                         layer_options={"d_state": 4, "l_max": 16, "init": "legt"},
                                         head="regress", pool=None, norm="rms", dropout=0.1)
    for name in ("model.json", "model.yaml"):
        config.save(tmp_path / name)
        assert SequenceModelConfig.load(tmp_path / name) == config
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # atomic writes leave no temp file
    torch.manual_seed(0)
    twin = SequenceModel.from_config(SequenceModelConfig.from_json(config.to_json()))
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 7, 3)
    model.eval(), twin.eval()
    assert torch.equal(model(x)[0], twin(x)[0])
    with pytest.raises(ValueError, match=r"unknown SequenceModelConfig keys \['n_layer'\]"):
        SequenceModelConfig.from_dict({**config.to_dict(), "n_layer": 3})
    with pytest.raises(ValueError, match=r"needs the keys \['layer'\]"):
        SequenceModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "layer"})
    with pytest.raises(ValueError, match=r"must end in .json, .yaml or .yml"):
        config.save(tmp_path / "model.txt")


def test_layer_options_default_to_none_and_parameters_are_counted():
    model = SequenceModel(2, 8, 1, "s4d", d_output=3)
    assert model.config.layer_options == {}
    by_hand = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == by_hand and f"parameters={by_hand:,}" in repr(model)
    model.blocks[0].layer.D.requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == by_hand - 8
    with pytest.raises(ValueError, match="d_output is required"):
        SequenceModel(2, 8, 1, "s4d")
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        SequenceModel(2, 8, 0, "s4d", d_output=3)


def test_return_state_false_skips_the_states():
    model = model_for("s4", head="regress", pool=None)
    x = torch.randn(2, 9, 2, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, states = model(x)
        y2, none = model(x, return_state=False)
    assert none is None and torch.equal(y, y2) and len(states) == 2


def test_finite_check_names_the_first_bad_step():
    model = SequenceModel(2, 4, 2, "s4d", {"d_state": 4}, 1, check_finite=True)
    x = torch.randn(3, 1000, 2)
    x[1, 900, 0] = float("nan")
    with pytest.raises(ValueError, match="the input x is not finite .*batch item 1, time step 900"):
        model(x)
    with pytest.raises(ValueError, match="batch item 1"):
        model.step(x[:, 900], model.initial_state(3))
    unchecked = SequenceModel(2, 4, 2, "s4d", {"d_state": 4}, 1)
    assert not bool(torch.isfinite(unchecked(x)[0]).all())  # without the check the NaN goes through silently
    with torch.no_grad():
        model.blocks[1].layer.C.fill_(float("inf"))  # a bad parameter: the input is fine, block 1's output is not
    with pytest.raises(ValueError, match="the output of block 1 is not finite .*time step 0"):
        model(torch.randn(2, 10, 2))


class _Gated(layers.SequenceLayer):
    """A toy mixer with its own gate: it declares no block activation and no output projection."""

    block_defaults = layers.BlockDefaults(activation=None, mixer_out=None)

    def __init__(self, d_model):
        super().__init__()
        self.d_model = d_model
        self.gate = torch.nn.Linear(d_model, d_model)

    def state_spec(self):
        return layers.TensorSpec((self.d_model,), torch.float32)

    def _forward(self, x, state, return_state):
        return x * torch.sigmoid(self.gate(x)), (x[:, -1] if return_state else None)


def test_block_reads_the_layer_defaults():
    lti = Block(build("s4d", d_model=4, d_state=4))
    assert isinstance(lti.activation, torch.nn.GELU) and isinstance(lti.out[1], torch.nn.GLU)
    gated = Block(_Gated(4))
    assert isinstance(gated.activation, torch.nn.Identity) and isinstance(gated.out, torch.nn.Identity)
    forced = Block(_Gated(4), activation="tanh", mixer_out="linear")
    assert isinstance(forced.activation, torch.nn.Tanh) and isinstance(forced.out, torch.nn.Linear)
    x = torch.randn(2, 5, 4)
    y, _ = gated(x)
    z = gated.norm(x)
    assert torch.allclose(y, x + z * torch.sigmoid(gated.layer.gate(z)))


def test_model_reads_any_real_dtype_and_refuses_unknown_token_ids():
    # a float64 or bfloat16 input into a float32 model failed in the encoder ("mat1 and mat2 must have the same
    # dtype"); now it is computed in float32 and answered in the input's dtype, as the layers do
    model = SequenceModel(2, 4, 1, "s4d", {"d_state": 4}, 3, head="regress", pool=None, device=DEVICE)
    x = torch.randn(2, 5, 2, dtype=torch.float64, device=DEVICE)
    y64, _ = model(x)
    y32, _ = model(x.float())
    assert y64.dtype == torch.float64 and torch.equal(y64, y32.double())
    y_t, _ = model.step(x[:, 0].bfloat16(), model.initial_state(2))
    y_t32, _ = model.step(x[:, 0].bfloat16().float(), model.initial_state(2))
    assert y_t.dtype == torch.bfloat16 and torch.equal(y_t, y_t32.bfloat16())
    # token ids outside [0, vocab_size) raised an IndexError from the embedding ("index out of range in self")
    lm = SequenceModel(1, 4, 1, "s4d", {"d_state": 4}, 7, head="lm", pool=None, vocab_size=7, device=DEVICE)
    for bad in (7, -1):
        ids = torch.tensor([[0, 3, bad]], device=DEVICE)
        with pytest.raises(ValueError, match=r"token ids in \[0, vocab_size\) = \[0, 7\)"):
            lm(ids)
        with pytest.raises(ValueError, match=r"token ids in \[0, vocab_size\) = \[0, 7\)"):
            lm.step(ids[:, 2], lm.initial_state(1))


def test_block_reads_any_real_dtype():
    # a float64 input into a float32 Block failed in its LayerNorm ("mixed dtype (CPU)")
    block = Block(build("s4d", d_model=4, d_state=4, device=DEVICE), device=DEVICE)
    x = torch.randn(2, 5, 4, dtype=torch.float64, device=DEVICE)
    y64, h64 = block(x)
    y32, h32 = block(x.float())
    assert y64.dtype == torch.float64 and torch.equal(y64, y32.double()) and torch.equal(h64, h32)
    y_t, _ = block.step(x[:, 0], block.initial_state(2))
    y_t32, _ = block.step(x[:, 0].float(), block.initial_state(2))
    assert y_t.dtype == torch.float64 and torch.equal(y_t, y_t32.double())
