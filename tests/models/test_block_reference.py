"""The residual block (``ssmkit.models.Block``) against its equations written out here in float64:

    prenorm:   y = x + Out(σ(Layer(Norm(x))))        postnorm:  y = Norm(x + Out(σ(Layer(x))))

with each norm (LayerNorm, RMSNorm, BatchNorm over channels in training and eval mode), activation (GELU by erf,
SiLU, ReLU, tanh) and output map (GLU a₁ ⊙ sigmoid(a₂) of a Linear H→2H, a Linear H→H, nothing) by its formula,
every weight moved off its initial value. The sequence layer itself is tested elsewhere; here it is the block's
wiring that is checked (the S4 block of arXiv 2111.00396, the deep Wiener block of arXiv 2312.06211)."""

import math

import pytest
import torch

from ssmkit.layers import build
from ssmkit.models import Block
from tests.conftest import run_steps

F64 = torch.float64
H = 5


def _norm(kind, block, x, training):
    """Norm(x) over the channel axis of (B, L, H), by its formula, with the block's own (moved) weights."""
    n = block.norm
    if kind == "layer":
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * n.weight + n.bias
    if kind == "rms":
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * n.weight
    if kind == "batch":
        if training:
            mu, var = x.mean((0, 1)), x.var((0, 1), unbiased=False)
        else:
            mu, var = n.running_mean, n.running_var
        return (x - mu) / torch.sqrt(var + 1e-5) * n.weight + n.bias
    return x


def _activation(kind, z):
    return {"gelu": lambda: 0.5 * z * (1 + torch.erf(z / math.sqrt(2))), "silu": lambda: z / (1 + torch.exp(-z)),
            "relu": lambda: z.clamp_min(0), "tanh": lambda: torch.tanh(z), None: lambda: z}[kind]()


def _out(kind, block, a):
    if kind == "glu":
        w = block.out[0]
        a = a @ w.weight.T + w.bias
        return a[..., :H] / (1 + torch.exp(-a[..., H:]))
    if kind == "linear":
        return a @ block.out.weight.T + block.out.bias
    return a


def _moved_block(norm, prenorm, activation, mixer_out, seed):
    torch.manual_seed(seed)
    layer = build("s4d", d_model=H, d_state=6, dtype=F64)
    block = Block(layer, norm=norm, prenorm=prenorm, activation=activation, mixer_out=mixer_out, dtype=F64)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if norm == "batch":
            block.norm.running_mean.copy_(torch.randn(H, dtype=F64))
            block.norm.running_var.copy_(torch.rand(H, dtype=F64) + 0.5)
    return block


def _reference(block, x, norm, prenorm, activation, mixer_out, training):
    z = _norm(norm, block, x, training) if prenorm else x
    z, _ = block.layer(z)
    y = x + _out(mixer_out, block, _activation(activation, z))
    return y if prenorm else _norm(norm, block, y, training)


CASES = [("layer", True, "gelu", "glu"), ("rms", True, "silu", "linear"), ("batch", True, "relu", None),
         (None, True, "tanh", "glu"), ("layer", False, None, "linear"), ("rms", False, "gelu", None),
         ("batch", False, "silu", "glu"), (None, False, "relu", "linear")]


@pytest.mark.parametrize("norm, prenorm, activation, mixer_out, seed", [(*case, k) for k, case in enumerate(CASES)])
def test_block_forward_and_step_equal_the_equations(norm, prenorm, activation, mixer_out, seed):
    block = _moved_block(norm, prenorm, activation, mixer_out, seed)
    assert block.d_model == H
    x = torch.randn(3, 7, H, dtype=F64)
    with torch.no_grad():
        if norm == "batch":  # training mode: the batch's statistics over (B, L), per channel
            block.train()
            assert torch.allclose(block(x)[0], _reference(block, x, norm, prenorm, activation, mixer_out, True),
                                  atol=1e-12)
        block.eval()
        if norm == "batch":
            block.norm.running_mean.copy_(torch.randn(H, dtype=F64))  # the pass above moved them toward the batch's
        y, _ = block(x)
        assert torch.allclose(y, _reference(block, x, norm, prenorm, activation, mixer_out, False), atol=1e-12)
        assert torch.allclose(run_steps(block, x)[0], y, atol=1e-11)


def test_a_square_input_is_normalised_over_channels_not_time():
    """L = H = B: a norm over the wrong axis would keep every shape."""
    block = _moved_block("batch", True, "gelu", "glu", seed=2).train()
    x = torch.randn(H, H, H, dtype=F64) * torch.arange(1.0, H + 1, dtype=F64)  # channels of different scales
    with torch.no_grad():
        assert torch.allclose(block(x)[0], _reference(block, x, "batch", True, "gelu", "glu", True), atol=1e-12)


def test_the_options_are_checked_by_name():
    layer = build("s4d", d_model=H, d_state=4)
    for option, value in (("norm", "group"), ("activation", "softplus"), ("mixer_out", "mlp")):
        with pytest.raises(ValueError, match=option):
            Block(layer, **{option: value})
    for dropout in (1.0, -0.1, 2, True, "0.1"):
        with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
            Block(layer, dropout=dropout)
    assert Block(layer, dropout=0.999).dropout.p == 0.999 and Block(layer, dropout=0).dropout.p == 0
