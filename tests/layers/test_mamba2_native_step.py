"""The Mamba-2 mixer's fused C step (ssmkit.ops.native.mamba2_step) against the layer's step in PyTorch ops: every
option that changes the step's arithmetic, many tokens from a random state, both dtypes; when the layer takes it (a
step that records no gradient) and when not; its smoke call leaves the caller's random generator alone."""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE, rel_err

pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not (native_available("mamba2_step", torch.float32)
                                 and native_available("mamba2_step", torch.float64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)

OPTIONS = [{}, {"ngroups": 3}, {"norm_before_gate": True}, {"rmsnorm": False}, {"D_has_hdim": True},
           {"conv_bias": False, "d_conv": 1}, {"d_conv": 2, "ngroups": 3, "norm_before_gate": True, "D_has_hdim": True}]


def _layer(options, dtype):
    torch.manual_seed(0)
    layer = layers.build("mamba2", d_model=18, d_state=7, headdim=4, expand=2, dtype=dtype, **options)  # 9 heads
    with torch.no_grad():  # D and the norm's weight away from their constant inits
        layer.D.add_(torch.randn_like(layer.D))
        if layer.norm is not None:
            layer.norm.weight.add_(0.3 * torch.randn_like(layer.norm.weight))
    return layer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", OPTIONS, ids=[",".join(f"{k}={v}" for k, v in o.items()) or "defaults"
                                                  for o in OPTIONS])
def test_fused_step_equals_the_pytorch_step_over_many_tokens(options, dtype):
    layer = _layer(options, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 18, generator=g, dtype=dtype)
    start = layer.initial_state(3)
    state = type(start)(*(torch.randn(t.shape, generator=g, dtype=dtype) for t in start))
    fused = slow = state
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    with torch.no_grad():
        for t in range(x.shape[1]):
            y_fast, fused = layer._step_native(x[:, t], fused)
            y_slow, slow = layer._step_torch(x[:, t], slow)
            for a, b in zip((y_fast, *fused), (y_slow, *slow)):
                assert a.dtype == b.dtype and a.shape == b.shape and rel_err(a, b) < tol
        # and the public step, which takes the kernel here, continues the forward pass
        y_fwd, end = layer(x, state)
        s, ys = state, []
        for t in range(x.shape[1]):
            y_t, s = layer.step(x[:, t], s)
            ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y_fwd) < (1e-11 if dtype == torch.float64 else 1e-4)
    assert rel_err(s.ssm, end.ssm) < (1e-11 if dtype == torch.float64 else 1e-4)


def test_the_layer_takes_the_kernel_only_for_a_step_without_gradients(monkeypatch):
    layer = _layer({}, torch.float64)
    calls = []
    real = layer._step_native
    monkeypatch.setattr(layer, "_step_native", lambda *a: calls.append(1) or real(*a))
    x, state = torch.randn(2, 18, dtype=torch.float64), layer.initial_state(2)
    with torch.no_grad():
        layer.step(x, state)
    with torch.inference_mode():
        layer.step(x, state)
    assert len(calls) == 2
    y, _ = layer.step(x, state)  # parameters require gradients: the PyTorch step, with its graph
    assert len(calls) == 2 and y.requires_grad
    layer.requires_grad_(False)
    layer.step(x, state)  # nothing requires a gradient: the kernel
    assert len(calls) == 3
    layer.step(x.requires_grad_(), state)
    assert len(calls) == 3


def test_the_smoke_call_leaves_the_callers_generator_alone(monkeypatch):
    from ssmkit.ops.native import gate

    monkeypatch.setattr(gate, "_STATUS", {})  # as in a fresh process
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    assert gate.native_status("mamba2_step", torch.float32)[0]
    assert torch.equal(torch.random.get_rng_state(), before)
