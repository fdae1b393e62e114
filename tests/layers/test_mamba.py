"""The Mamba mixer: its initialisation, decoding token by token from a prefilled state (fp32 and bf16 autocast), the
same weights in mambapy's MambaBlock giving the same outputs, and its option checks. (The protocol suite covers step =
forward, chunking, causality, every backend's gradients, compile and torch.func.)"""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers import Mamba, MambaState
from tests.conftest import DEVICE, rel_err, run_steps, state_err


def test_initialisation_follows_the_official_code():
    torch.manual_seed(0)
    layer = Mamba(40, d_state=5, expand=3, dt_min=2e-3, dt_max=5e-2, device=DEVICE, dtype=torch.float64)
    assert layer.d_inner == 120 and layer.rank == 3  # dt_rank "auto" = ceil(40 / 16)
    assert layer.in_proj.weight.shape == (240, 40) and layer.in_proj.bias is None
    assert layer.x_proj.weight.shape == (3 + 2 * 5, 120) and layer.out_proj.weight.shape == (40, 120)
    assert layer.conv1d.weight.shape == (120, 4) and layer.conv1d.bias is not None
    assert torch.equal(layer.A_log, torch.log(torch.arange(1.0, 6.0, dtype=torch.float64)).expand(120, 5).to(DEVICE))
    assert torch.equal(layer.D, torch.ones(120, dtype=torch.float64, device=DEVICE))
    dt = torch.nn.functional.softplus(layer.dt_bias.detach())  # the initial Δ: log-uniform in [dt_min, dt_max]
    assert float(dt.min()) >= 2e-3 * (1 - 1e-12) and float(dt.max()) <= 5e-2 * (1 + 1e-12)
    assert float(dt.log().std()) > 0.25 * (math.log(5e-2) - math.log(2e-3)) / math.sqrt(12)  # spread, not constant
    bound = 3**-0.5
    w_max = float(layer.dt_proj.weight.detach().abs().max())
    assert bound * 0.5 < w_max <= bound
    constant = Mamba(8, dt_init="constant", dt_scale=2.0, dt_rank=4, dt_min=1e-5, dt_max=1e-5, dt_init_floor=1e-3)
    assert torch.allclose(constant.dt_proj.weight, torch.full((16, 4), 2.0 * 4**-0.5))
    assert torch.allclose(torch.nn.functional.softplus(constant.dt_bias), torch.full((16,), 1e-3))  # the floor
    unfloored = Mamba(8, dt_min=1e-5, dt_max=1e-5, dt_init_floor=0.0, dtype=torch.float64)  # 0: no floor (as Mamba-2)
    assert torch.allclose(torch.nn.functional.softplus(unfloored.dt_bias), torch.full((16,), 1e-5, dtype=torch.float64),
                          rtol=1e-12, atol=0)
    assert set(layers.optim_marks(layer)) == {"A_log", "dt_bias"}
    assert layer.block_defaults == layers.BlockDefaults(None, None)


def test_state_is_named_and_shaped():
    layer = Mamba(4, d_state=3, d_conv=5, expand=2, device=DEVICE)
    h = layer.initial_state(2)
    assert isinstance(h, MambaState) and h.conv.shape == (2, 8, 4) and h.ssm.shape == (2, 8, 3)
    _, h1 = layer(torch.randn(2, 7, 4, device=DEVICE))
    assert isinstance(h1, MambaState)


def prefilled_decoding(layer, x, k):
    """Forward over x[:, :k], then step through the rest: (y (B, L, H), final state)."""
    y1, h = layer(x[:, :k])
    y2, h = run_steps(layer, x[:, k:], h)
    return torch.cat([y1, y2], 1), h


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_decoding_from_a_prefilled_state_equals_the_forward_fp32(backend):
    torch.manual_seed(1)
    layer = Mamba(8, d_state=6, device=DEVICE)
    x = torch.randn(3, 40, 8, device=DEVICE)
    h0 = MambaState(0.3 * torch.randn(3, 16, 3, device=DEVICE), 0.3 * torch.randn(3, 16, 6, device=DEVICE))
    with torch.no_grad(), ops.use_backend(backend):
        y, h = layer(x, h0)
        y1, h1 = layer(x[:, :25], h0)
        y2, h2 = run_steps(layer, x[:, 25:], h1)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-5 and state_err(h2, h) < 1e-5  # docs/design.md rule 1, fp32


def test_decoding_from_a_prefilled_state_under_bf16_autocast():
    # Under autocast the in- and out-projections run in bf16; the forward and the steps round the same bf16 products
    # (one matmul per token against one per sequence: they may differ by a bf16 unit), and the SSM runs in float32.
    # Tolerance: 2^-8 (bf16) · a few accumulated roundings → 1e-2 of the output's scale; the states stay float32.
    torch.manual_seed(2)
    layer = Mamba(8, d_state=6, device=DEVICE)
    x = torch.randn(3, 40, 8, device=DEVICE)
    with torch.no_grad(), torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
        y, h = layer(x)
        y_dec, h_dec = prefilled_decoding(layer, x, 25)
    assert y.dtype == y_dec.dtype == torch.float32
    assert h.ssm.dtype == h_dec.ssm.dtype == torch.float32
    assert rel_err(y_dec, y) < 1e-2 and state_err(h_dec, h) < 1e-2


def test_gradients_flow_through_the_final_state():
    torch.manual_seed(3)
    layer = Mamba(4, d_state=3, device=DEVICE, dtype=torch.float64)
    h0 = MambaState(*(t.requires_grad_() for t in (torch.randn(2, 8, 3, dtype=torch.float64, device=DEVICE),
                                                   torch.randn(2, 8, 3, dtype=torch.float64, device=DEVICE))))
    x = torch.randn(2, 9, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    for backend in ("reference", "chunked"):
        with ops.use_backend(backend):
            _, h = layer(x, h0)
            grads = torch.autograd.grad(h.ssm.sum() + h.conv.sum(), [x, *h0, layer.A_log, layer.dt_bias])
        assert all(bool(g.abs().sum() > 0) for g in grads), backend


# ---------------------------------------------------------------------------------------------------------------------
# The same weights in mambapy's MambaBlock (mambapy 1.2.0: its own PyTorch port of the official mamba_simple.py)


def to_mambapy(layer: Mamba, pscan: bool):
    """mambapy's MambaBlock with ``layer``'s weights."""
    mamba = pytest.importorskip("mambapy.mamba")
    config = mamba.MambaConfig(d_model=layer.d_model, n_layers=1, dt_rank=layer.rank, d_state=layer.d_state,
                               expand_factor=layer.expand, d_conv=layer.d_conv, bias=layer.bias,
                               conv_bias=layer.conv_bias, pscan=pscan)
    block = mamba.MambaBlock(config).to(device=DEVICE, dtype=layer.A_log.dtype)
    with torch.no_grad():
        block.in_proj.weight.copy_(layer.in_proj.weight)
        block.conv1d.weight.copy_(layer.conv1d.weight.unsqueeze(1))  # nn.Conv1d (H, 1, W)
        if layer.conv_bias:
            block.conv1d.bias.copy_(layer.conv1d.bias)
        block.x_proj.weight.copy_(layer.x_proj.weight)
        block.dt_proj.weight.copy_(layer.dt_proj.weight)
        block.dt_proj.bias.copy_(layer.dt_bias)
        block.A_log.copy_(layer.A_log)
        block.D.copy_(layer.D)
        block.out_proj.weight.copy_(layer.out_proj.weight)
        if layer.bias:
            block.in_proj.bias.copy_(layer.in_proj.bias)
            block.out_proj.bias.copy_(layer.out_proj.bias)
    return block


@pytest.mark.parametrize("pscan", [True, False])
@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_same_weights_give_mambapys_outputs(backend, pscan):
    torch.manual_seed(4)
    layer = Mamba(16, d_state=8, device=DEVICE)
    with torch.no_grad():  # move Δ and the weights away from the init, so every parameter matters
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    block = to_mambapy(layer, pscan)
    x = torch.randn(2, 37, 16, device=DEVICE)
    with torch.no_grad(), ops.use_backend(backend):
        y, _ = layer(x)
        y_ref = block(x)
    assert rel_err(y, y_ref) < 1e-5  # fp32, the same arithmetic up to the order of the sums


def test_same_weights_give_mambapys_steps():
    torch.manual_seed(5)
    layer = Mamba(8, d_state=4, bias=True, device=DEVICE)
    block = to_mambapy(layer, pscan=True)
    x = torch.randn(2, 12, 8, device=DEVICE)
    with torch.no_grad():
        y, h = run_steps(layer, x)
        cache = (None, torch.zeros(2, layer.d_inner, layer.d_conv - 1, device=DEVICE))
        y_ref = []
        for t in range(12):
            out, cache = block.step(x[:, t], cache)
            y_ref.append(out)
    assert rel_err(y, torch.stack(y_ref, 1)) < 1e-5
    assert rel_err(h.ssm, cache[0]) < 1e-5 and rel_err(h.conv, cache[1]) < 1e-5  # same state layout as mambapy


# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,match",
    [
        ({"d_state": 0}, "d_state must be a positive int"),
        ({"d_conv": 1.5}, "d_conv must be a positive int"),
        ({"expand": 0}, "expand must be a positive int"),
        ({"dt_rank": "full"}, r"dt_rank \(or 'auto'\) must be a positive int"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "0 < dt_min <= dt_max"),
        ({"dt_init": "zeros"}, r"dt_init must be one of \('random', 'constant'\)"),
        ({"dt_scale": -1.0}, "dt_scale must be a finite float > 0"),
        ({"dt_init_floor": float("nan")}, "dt_init_floor must be a finite float >= 0"),
        ({"dt_init_floor": -1e-4}, "dt_init_floor must be a finite float >= 0"),
        ({"lr": -1.0}, "lr must be a finite float >= 0"),
        ({"dtype": torch.bfloat16}, "dtype must be torch.float32 or torch.float64"),
    ],
)
def test_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        Mamba(8, **options)


def test_bad_inputs_raise():
    layer = Mamba(4, d_state=3)
    with pytest.raises(ValueError, match=r"x must be \(B, L, 4\)"):
        layer(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"state must be a tuple of 2 states"):
        layer(torch.randn(2, 5, 4), torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match=r"state\[1\] must be \(2, 8, 3\)"):
        layer(torch.randn(2, 5, 4), MambaState(torch.zeros(2, 8, 3), torch.zeros(2, 8, 4)))
    with pytest.raises(NotImplementedError, match="selective"):
        layer.kernel(5)
    with pytest.raises(NotImplementedError, match="no LTI realisation"):
        layer.state_space()
