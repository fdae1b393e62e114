"""The layer protocol of DESIGN.md, checked for every registered layer.

Parametrised over ``ssmkit.layers.available()``, so a new layer is tested the moment it registers:
step = forward, chunked = one pass (outputs and gradients), causality, gradients of the fast paths
= the reference path, exported state space = forward, bidirectional behaviour, bad inputs.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from tests.conftest import DEVICE, leaves, rel_err, state_err, state_map

NAMES = layers.available()

# Small per-layer options that keep the tests fast; variants widen the grid (every init and
# discretisation of a layer should appear here). A layer not listed is tested with its defaults.
VARIANTS: dict[str, list[dict]] = {
    "s4d": [
        {"d_state": 8, "init": "legs"},
        {"d_state": 6, "init": "inv", "discretization": "bilinear"},
        {"d_state": 4, "init": "lin"},
        {"d_state": 8, "init": "real", "discretization": "bilinear"},
    ],
    "dss": [
        {"d_state": 8, "version": "exp"},
        {"d_state": 6, "version": "softmax", "l_max": 40},
        {"d_state": 8, "version": "exp", "separate_dt": False},
    ],
    "s4": [
        {"d_state": 8, "l_max": 32, "init": "legs"},
        {"d_state": 8, "l_max": 16, "init": "legt"},
        {"d_state": 6, "l_max": 32, "init": "lagt", "n_ssm": None},
        {"d_state": 8, "l_max": 32, "init": "fout"},
    ],
}
# S4-FouT keeps a mode with Re λ = -1e-4 (the official clamp of its zero real parts): converting between
# C̃ and C loses ~4 digits there (1 - Ā^L ≈ L Δ 1e-4), so gradients of different algorithms agree to ~3e-6.
GRAD_TOL = {("s4", "fout"): 1e-5}
CASES = [(name, opts) for name in NAMES for opts in VARIANTS.get(name, [{}])]
IDS = [f"{name}-{i}" for name in NAMES for i in range(len(VARIANTS.get(name, [{}])))]
H = 3
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}  # DESIGN.md rule 1: fp32 1e-5, fp64 1e-10 relative


def make(name: str, opts: dict, dtype: torch.dtype = torch.float64, **extra) -> layers.SequenceLayer:
    torch.manual_seed(1)
    return layers.build(name, d_model=H, device=DEVICE, dtype=dtype, **{**opts, **extra})


def run_steps(layer, x: torch.Tensor, state=None):
    h = layer.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y_t, h = layer.step(x[:, t], h)
        ys.append(y_t)
    return torch.stack(ys, dim=1), h


def supports(name: str, option: str) -> bool:
    return option in inspect.signature(layers.layer_class(name)).parameters


def test_registry_lists_the_core_layers():
    assert {"s4", "s4d", "dss"} <= set(NAMES)
    assert NAMES == sorted(NAMES)


@pytest.mark.parametrize("backend", ["auto", "fft", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_step_equals_forward(name, opts, dtype, backend):
    layer = make(name, opts, dtype)
    x = torch.randn(2, 37, H, device=DEVICE, dtype=dtype)
    h0 = state_map(lambda t: t + 0.3 * torch.randn_like(t), layer.initial_state(2))  # nonzero start
    with ops.use_backend(backend):
        y, h = layer(x, h0)
    y_step, h_step = run_steps(layer, x, h0)
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, y_step) < TOL[dtype]
    assert state_err(h, h_step) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_step_equals_forward_long(name, dtype):
    # L = 4096 with each layer's default options (DESIGN.md rule 1 up to L = 4096).
    torch.manual_seed(2)
    layer = layers.build(name, d_model=H, device=DEVICE, dtype=dtype)
    x = torch.randn(1, 4096, H, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        y, h = layer(x)
        y_step, h_step = run_steps(layer, x)
    assert rel_err(y, y_step) < TOL[dtype]
    assert state_err(h, h_step) < TOL[dtype]


@pytest.mark.parametrize("name", NAMES)
def test_smoke_long_sequence(name):
    layer = layers.build(name, d_model=H, device=DEVICE)
    x = torch.randn(1, 16384, H, device=DEVICE)
    with torch.no_grad():
        y, h = layer(x)
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    assert all(bool(torch.isfinite(t).all()) for t in leaves(h))


@pytest.mark.parametrize("backend", ["auto", "fft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_chunked_equals_one_pass(name, opts, dtype, backend):
    layer = make(name, opts, dtype)
    x = torch.randn(2, 50, H, device=DEVICE, dtype=dtype, requires_grad=True)
    with ops.use_backend(backend):
        y, h = layer(x)
        for k in (1, 17, 49):
            y1, h1 = layer(x[:, :k])
            y2, h2 = layer(x[:, k:], h1)
            assert rel_err(torch.cat([y1, y2], 1), y) < TOL[dtype]
            assert state_err(h2, h) < TOL[dtype]
        g = torch.randn_like(y)
        grads = torch.autograd.grad((y * g).sum(), [x, *layer.parameters()])
        y1, h1 = layer(x[:, :20])
        y2, _ = layer(x[:, 20:], h1)
        grads_chunked = torch.autograd.grad((torch.cat([y1, y2], 1) * g).sum(), [x, *layer.parameters()])
    tol = max(10 * TOL[dtype], GRAD_TOL.get((name, opts.get("init")), 0.0))  # gradients sum many terms
    for a, b in zip(grads_chunked, grads):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_causality(name, opts):
    layer = make(name, opts)
    x = torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 17:] += torch.randn_like(x2[:, 17:])
    with torch.no_grad():
        y, _ = layer(x)
        y2, _ = layer(x2)
    # FFT convolutions mix all times by rounding only (~1e-16 relative); anything larger is a leak.
    assert float((y[:, :17] - y2[:, :17]).abs().max()) < 1e-12 * float(y.abs().max())
    assert not torch.allclose(y[:, 17:], y2[:, 17:])


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_fast_path_gradients_equal_reference(name, opts):
    layer = make(name, opts)
    x = torch.randn(2, 21, H, device=DEVICE, dtype=torch.float64, requires_grad=True)
    h0 = state_map(lambda t: (0.5 * torch.randn_like(t)).requires_grad_(), layer.initial_state(2))
    params = [x, *leaves(h0), *layer.parameters()]

    def objective(y, h):
        return (y * torch.cos(y)).sum() + sum((t.abs() ** 2).sum() for t in leaves(h))

    with ops.use_backend("reference"):
        y_ref, h_ref = layer(x, h0)
        loss = objective(y_ref, h_ref)
        g_ref = torch.autograd.grad(loss, params)
    for backend in ("auto", "fft"):
        with ops.use_backend(backend):
            y, h = layer(x, h0)
            loss = objective(y, h)
            grads = torch.autograd.grad(loss, params)
        tol = GRAD_TOL.get((name, opts.get("init")), 1e-9)  # float64 paths agree to ~1e-12 otherwise
        for a, b in zip(grads, g_ref):
            assert rel_err(a, b) < tol


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_gradcheck_fast_path(name, opts):
    layer = make(name, opts)
    x = torch.randn(1, 9, H, device=DEVICE, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_state_space_simulation_equals_forward(name, opts, dtype):
    if not layers.layer_class(name).is_lti:
        pytest.skip(f"{name} is not LTI: it has no state-space export")
    layer = make(name, opts, dtype)
    ss = layer.state_space()
    assert ss.nsystems * ss.ninputs == H and ss.nsystems * ss.noutputs == H
    x = torch.randn(2, 40, H, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        y, _ = layer(x)
    y_sim = ss.simulate(x.double().cpu())
    assert rel_err(y, y_sim) < TOL[dtype]


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_kernel_is_impulse_response(name, opts):
    layer_cls = layers.layer_class(name)
    if not layer_cls.is_lti:
        pytest.skip(f"{name} is not LTI")
    layer = make(name, opts)
    L = 25
    impulse = torch.zeros(1, L, H, device=DEVICE, dtype=torch.float64)
    impulse[:, 0] = 1
    with torch.no_grad():
        y, _ = layer(impulse)
        K = layer.kernel(L)
    assert K.shape == (H, L)
    direct = K.clone()
    direct[:, 0] += layer.D  # the skip acts at lag 0
    assert rel_err(y[0].T, direct) < 1e-10


@pytest.mark.parametrize("name", [n for n in NAMES if supports(n, "bidirectional")])
def test_bidirectional(name):
    opts = VARIANTS.get(name, [{}])[0]
    layer = make(name, opts, bidirectional=True)
    x = torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64)
    y, h = layer(x)
    assert h is None and y.shape == x.shape
    x2 = x.clone()
    x2[:, 20] += 1.0
    y2, _ = layer(x2)
    assert not torch.allclose(y[:, :20], y2[:, :20])  # the past sees the future
    with pytest.raises(NotImplementedError, match="inputs after t"):
        layer.step(x[:, 0], layer.initial_state(2) if hasattr(layer, "initial_state") else None)
    with pytest.raises(ValueError, match="no recurrent state"):
        layer(x, torch.zeros(1))
    if layer.is_lti:
        K = layer.kernel(30)
        assert K.shape == (2, H, 30)
        # reference: y_t = Σ_{s≤t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s + D u_t
        ref = torch.zeros_like(y)
        for t in range(30):
            for s in range(30):
                k = K[0, :, t - s] if s <= t else K[1, :, s - t - 1]
                ref[:, t] += k * x[:, s]
        ref += layer.D * x
        assert rel_err(y, ref) < 1e-10
        with pytest.raises(ValueError, match="not causal"):
            layer.state_space()


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(name):
    layer = make(name, VARIANTS.get(name, [{}])[0])
    with pytest.raises(ValueError, match=r"\(B, L, H\)"):
        layer(torch.randn(5, H, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"\(B, L, {H}\)"):
        layer(torch.randn(2, 5, H + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="length L >= 1"):
        layer(torch.randn(2, 0, H, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        layer(torch.ones(2, 5, H, dtype=torch.int64))
    bad_state = torch.zeros(3, 1, dtype=torch.complex128)
    with pytest.raises(ValueError, match="initial_state"):
        layer(torch.randn(2, 5, H, dtype=torch.float64), bad_state)
    with pytest.raises(ValueError, match=rf"\(B, {H}\)"):
        layer.step(torch.randn(2, H + 2, dtype=torch.float64), layer.initial_state(2))
    if supports(name, "init"):
        with pytest.raises(ValueError, match="init must be one of"):
            layers.build(name, d_model=H, init="no-such-init")
    with pytest.raises(TypeError):
        layers.build(name, d_model=H, no_such_option=1)


def test_unknown_layer_name():
    with pytest.raises(ValueError, match="available layers"):
        layers.build("no-such-layer", d_model=4)


@pytest.mark.parametrize("name", NAMES)
def test_dtypes_and_initial_state(name):
    for dtype in (torch.float32, torch.float64):
        layer = layers.build(name, d_model=H, dtype=dtype, device=DEVICE)
        for t in leaves(layer.initial_state(4)):
            assert t.shape[0] == 4 and t.device.type == DEVICE.type
            assert not bool(t.abs().sum())
        y, _ = layer(torch.randn(4, 7, H, dtype=dtype, device=DEVICE))
        assert y.dtype == dtype


@pytest.mark.parametrize("name", NAMES)
def test_autocast_keeps_the_core_in_float32(name):
    # DESIGN.md: under autocast the SSM core still runs in float32; y comes back in x's dtype.
    layer = layers.build(name, d_model=H, device=DEVICE)
    x = torch.randn(2, 300, H, device=DEVICE)
    with torch.no_grad():
        y, h = layer(x)
        with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
            y_amp, h_amp = layer(x)
            y_bf16, _ = layer(x.to(torch.bfloat16))
            y_t, _ = layer.step(x[:, 0].to(torch.bfloat16), layer.initial_state(2))
    assert y_amp.dtype == torch.float32 and rel_err(y_amp, y) < 1e-6  # same float32 arithmetic
    assert state_err(h_amp, h) < 1e-6
    assert y_bf16.dtype == torch.bfloat16 and y_t.dtype == torch.bfloat16
    assert rel_err(y_bf16.float(), y) < 2e-2  # bf16 input and output rounding (8-bit mantissa)


@pytest.mark.parametrize("name", NAMES)
def test_ssm_parameters_carry_optimizer_marks(name):
    layer = layers.build(name, d_model=H)
    marked = [n for n, p in layer.named_parameters() if hasattr(p, "_optim")]
    assert marked, f"{name} marks no SSM parameter with _optim"
    for n, p in layer.named_parameters():
        if hasattr(p, "_optim"):
            assert p._optim["weight_decay"] == 0.0 and p._no_reinit
