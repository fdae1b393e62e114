"""The Mamba, Mamba-2 and RG-LRU blocks' fused C steps (ssmkit.ops.native.mamba_step, mamba2_step, rglru_step)
against each layer's step in PyTorch ops (the RG-LRU's with segment starts): every option that changes the step's arithmetic, many tokens from a random state, both dtypes, and the
public step against the forward pass; when a layer takes its kernel (a step that records no gradient, plain modules)
and when not; the smoke calls leave the caller's random generator alone."""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE, rel_err

pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not all(native_available(op, dtype) for op in ("mamba_step", "mamba2_step", "rglru_step")
                                    for dtype in (torch.float32, torch.float64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)

OPTIONS = [("mamba2", {}), ("mamba2", {"ngroups": 3}), ("mamba2", {"norm_before_gate": True}),
           ("mamba2", {"rmsnorm": False}), ("mamba2", {"D_has_hdim": True}), ("mamba2", {"conv_bias": False, "d_conv": 1}),
           ("mamba2", {"d_conv": 2, "ngroups": 3, "norm_before_gate": True, "D_has_hdim": True}),
           ("mamba", {}), ("mamba", {"conv_bias": False, "d_conv": 1}), ("mamba", {"dt_rank": 5, "expand": 3}),
           ("mamba", {"d_conv": 2, "dt_init": "constant"}), ("rglru", {}), ("rglru", {"n_heads": 3}),
           ("rglru", {"conv_width": 1, "c": 2.0}), ("rglru", {"n_heads": 2, "lru_width": 8, "conv_width": 3})]


def _layer(name, options, dtype):
    torch.manual_seed(0)
    if name == "mamba2":  # 9 heads of 4
        layer = layers.build("mamba2", d_model=18, d_state=7, headdim=4, expand=2, dtype=dtype, **options)
    elif name == "mamba":
        layer = layers.build("mamba", d_model=18, d_state=7, dtype=dtype, **options)
    else:
        return layers.build("rglru", d_model=18, dtype=dtype, **options)
    with torch.no_grad():  # D, the norm's weight and A away from their structured inits
        layer.D.add_(torch.randn_like(layer.D))
        layer.A_log.add_(0.3 * torch.randn_like(layer.A_log))
        if getattr(layer, "norm", None) is not None:
            layer.norm.weight.add_(0.3 * torch.randn_like(layer.norm.weight))
    return layer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,options", OPTIONS, ids=[n + ":" + (",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
                                                       for n, o in OPTIONS])
def test_fused_step_equals_the_pytorch_step_over_many_tokens(name, options, dtype):
    layer = _layer(name, options, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 18, generator=g, dtype=dtype)
    start = layer.initial_state(3)
    state = type(start)(*(torch.randn(t.shape, generator=g, dtype=dtype) for t in start))
    fused = slow = state
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    resets = torch.rand(3, x.shape[1], generator=g) < 0.1  # segment starts, for the RG-LRU's step
    with torch.no_grad():
        for t in range(x.shape[1]):
            reset = (resets[:, t],) if name == "rglru" else ()
            y_fast, fused = layer._step_native(x[:, t], fused, *reset)
            y_slow, slow = layer._step_torch(x[:, t], slow, *reset)
            for a, b in zip((y_fast, *fused), (y_slow, *slow)):
                assert a.dtype == b.dtype and a.shape == b.shape and rel_err(a, b) < tol
        # and the public step, which takes the kernel here, continues the forward pass
        y_fwd, end = layer(x, state)
        s, ys = state, []
        for t in range(x.shape[1]):
            y_t, s = layer.step(x[:, t], s)
            ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y_fwd) < (1e-11 if dtype == torch.float64 else 1e-4)
    assert rel_err(s[-1], end[-1]) < (1e-11 if dtype == torch.float64 else 1e-4)  # the SSM state (ssm, h)


@pytest.mark.parametrize("name", ["mamba", "mamba2", "rglru"])
def test_the_layer_takes_the_kernel_only_for_a_step_without_gradients(name, monkeypatch):
    layer = _layer(name, {}, torch.float64)
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
    with torch.no_grad():
        conv = layer.conv1d if name == "mamba" else layer.conv
        handle = conv.register_forward_hook(lambda *a: None)  # a hooked module is called, not stood in for
        layer.step(x, state)
        assert len(calls) == 3
        handle.remove()
        layer.step(x, state)
        assert len(calls) == 4


@pytest.mark.parametrize("op", ["mamba_step", "mamba2_step", "rglru_step"])
def test_the_smoke_call_leaves_the_callers_generator_alone(op, monkeypatch):
    from ssmkit.ops.native import gate

    monkeypatch.setattr(gate, "_STATUS", {})  # as in a fresh process
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    assert gate.native_status(op, torch.float32)[0]
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("name", ["mamba", "mamba2", "rglru"])
def test_a_compiled_step_traces_the_pytorch_step(name):
    """The fused kernels are plain C calls, which dynamo cannot trace: under torch.compile (fullgraph) a step takes
    the PyTorch ops (it failed with "Unsupported method call" when the kernel was taken there), equal to the eager
    step, which takes the kernel."""
    torch._dynamo.reset()
    layer = _layer(name, {}, torch.float32)
    x = torch.randn(2, 18, generator=torch.Generator().manual_seed(2))
    state = layer.initial_state(2)
    with torch.no_grad():
        y, s = torch.compile(layer.step, backend="aot_eager", fullgraph=True)(x, state)
        y_eager, s_eager = layer.step(x, state)
    assert rel_err(y, y_eager) < 1e-5 and all(rel_err(a, b) < 1e-5 for a, b in zip(s, s_eager))
