"""The layer protocol of docs/design.md, checked for every registered layer.

Parametrised over ``ssmkit.layers.available()`` and each layer's declared capabilities and backends, so a new
layer is tested the moment it registers: step = forward, chunked = one pass (outputs and gradients), causality,
gradients of every backend = the reference backend, exported state space = forward, kernel = impulse response,
bidirectional behaviour, the NotImplementedError of a missing capability, autocast.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
import ssmkit.ops.hippo as hippo
from tests.conftest import (
    DEVICE, H, build_default, leaves, make_layer, rel_err, run_steps, runnable_backends, state_err, state_map, variants,
)

NAMES = layers.available()
# S4-FouT keeps a mode with Re λ = -1e-4 (the official clamp of its zero real parts): converting between C̃ and C
# loses ~4 digits there (1 - Ā^L ≈ L Δ 1e-4), so gradients of different algorithms agree to ~3e-6.
GRAD_TOL = {("s4", "fout"): 1e-5}
CASES = [(name, opts) for name in NAMES for opts in variants(name)]
IDS = [f"{name}-{i}" for name in NAMES for i in range(len(variants(name)))]
BACKEND_CASES = [
    (name, opts, backend) for name, opts in CASES for backend in ("auto", *runnable_backends(layers.layer_class(name)))
]
BACKEND_IDS = [f"{name}-{i}-{b}" for name in NAMES for i, _ in enumerate(variants(name))
               for b in ("auto", *runnable_backends(layers.layer_class(name)))]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}  # docs/design.md rule 1: fp32 1e-5, fp64 1e-10 relative


def supports_option(name: str, option: str) -> bool:
    return option in inspect.signature(layers.layer_class(name)).parameters


def test_registry_builds_every_layer_by_name():
    assert {"s4", "s4d", "dss"} <= set(NAMES)
    for name in NAMES:
        layer = build_default(name, d_model=H)
        assert isinstance(layer, layers.SequenceLayer) and layer.name == name
        assert layers.layer_class(name) is type(layer)
    with pytest.raises(ValueError, match="already registered by"):
        layers.register(NAMES[0])(type("Other", (layers.SequenceLayer,), {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,opts,backend", BACKEND_CASES, ids=BACKEND_IDS)
def test_step_equals_forward(name, opts, backend, dtype):
    layer = make_layer(name, opts, dtype)
    x = torch.randn(2, 37, H, device=DEVICE, dtype=dtype)
    if not layer.supports("step"):
        with pytest.raises(NotImplementedError, match="has no step"):
            layer.step(x[:, 0], layer.initial_state(2))
        return
    h0 = state_map(lambda t: t + 0.3 * torch.randn_like(t), layer.initial_state(2))  # nonzero start
    with torch.no_grad():
        with ops.use_backend(backend):
            y, h = layer(x, h0)
        y_step, h_step = run_steps(layer, x, h0)
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, y_step) < TOL[dtype]
    assert state_err(h, h_step) < TOL[dtype]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_step_equals_forward_long(name, dtype):
    # L = 4096 with each layer's default options (docs/design.md rule 1 up to L = 4096).
    torch.manual_seed(2)
    layer = build_default(name, d_model=H, device=DEVICE, dtype=dtype)
    if not layer.supports("step"):
        pytest.skip(f"{name} has no step (tested in test_step_equals_forward)")
    x = torch.randn(1, 4096, H, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        y, h = layer(x)
        y_step, h_step = run_steps(layer, x)
    assert rel_err(y, y_step) < TOL[dtype]
    assert state_err(h, h_step) < TOL[dtype]


@pytest.mark.parametrize("name", NAMES)
def test_smoke_long_sequence(name):
    layer = build_default(name, d_model=H, device=DEVICE)
    x = torch.randn(1, 16384, H, device=DEVICE)
    with torch.no_grad():
        y, h = layer(x)
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    assert all(bool(torch.isfinite(t).all()) for t in leaves(h))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,opts,backend", BACKEND_CASES, ids=BACKEND_IDS)
def test_chunked_equals_one_pass(name, opts, backend, dtype):
    layer = make_layer(name, opts, dtype)
    x = torch.randn(2, 50, H, device=DEVICE, dtype=dtype, requires_grad=True)
    with ops.use_backend(backend):
        y, h = layer(x)
        y_no_state, none = layer(x, return_state=False)
        assert none is None and torch.equal(y_no_state, y)  # skipping the final state changes nothing else
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
    layer = make_layer(name, opts)
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
def test_every_backend_has_the_reference_gradients(name, opts):
    layer = make_layer(name, opts)
    x = torch.randn(2, 21, H, device=DEVICE, dtype=torch.float64, requires_grad=True)
    h0 = state_map(lambda t: (0.5 * torch.randn_like(t)).requires_grad_(), layer.initial_state(2))
    params = [x, *leaves(h0), *layer.parameters()]

    def objective(y, h):
        return (y * torch.cos(y)).sum() + sum((t.abs() ** 2).sum() for t in leaves(h))

    with ops.use_backend("reference"):
        y_ref, h_ref = layer(x, h0)
        g_ref = torch.autograd.grad(objective(y_ref, h_ref), params)
    for backend in ("auto", *runnable_backends(layer)):
        with ops.use_backend(backend):
            y, h = layer(x, h0)
            grads = torch.autograd.grad(objective(y, h), params)
        tol = GRAD_TOL.get((name, opts.get("init")), 1e-9)  # float64 paths agree to ~1e-12 otherwise
        for a, b in zip(grads, g_ref):
            assert rel_err(a, b) < tol, backend


def _moved_away_from_init(layer, seed: int = 11) -> None:
    """Add to every parameter Gaussian noise as large as its mean magnitude (at least 0.1): a trained-looking point,
    where Δ, the eigenvalues and the gates sit in other branches of the fast paths (series vs direct e^z - 1, chunk
    power tables, clamps) than at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.is_complex():
                noise = torch.complex(noise, torch.randn(p.shape, generator=g, dtype=torch.float64))
            p.add_(noise.to(device=p.device, dtype=p.dtype) * p.detach().abs().mean().clamp_min(0.1))


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_every_backend_equals_the_reference_away_from_init(name, opts):
    """Outputs, final states and gradients of every backend equal the reference loop's at perturbed parameters,
    float64 (docs/design.md, "Fast paths away from init"); the other protocol tests use the init."""
    layer = make_layer(name, opts)
    _moved_away_from_init(layer)
    L = 100  # > one 64-step chunk
    if getattr(layer, "version", None) == "softmax":
        L = layer.l_max  # DSS-softmax normalises over l_max: its modes may grow (Re z > 0) and overflow past it
    if getattr(layer, "positional", None) == "simple" and layer.chunk_size is None:
        L = layer.span  # Mega's simple relative bias covers max_positions
    x = torch.randn(2, L, H, device=DEVICE, dtype=torch.float64, requires_grad=True)
    h0 = state_map(lambda t: (0.5 * torch.randn_like(t)).requires_grad_(), layer.initial_state(2))
    params = [x, *leaves(h0), *layer.parameters()]
    w = torch.randn(2, L, H, device=DEVICE, dtype=torch.float64)

    def run():
        # a loss whose gradient is as well conditioned as the layer: a layer that is not stable by construction (S5
        # without clip_eigs) may leave the unit circle here, and y·cos(y) at |y| ~ 1e60 would be rounding noise
        y, h = layer(x, h0)
        loss = (y * w).sum() + (y ** 2).sum() + sum((t.abs() ** 2).sum() for t in leaves(h))
        return y, h, torch.autograd.grad(loss, params, allow_unused=True)

    with ops.use_backend("reference"):
        y_ref, h_ref, g_ref = run()
    assert torch.isfinite(y_ref).all()
    for backend in ("auto", *runnable_backends(layer)):
        with ops.use_backend(backend):
            y, h, grads = run()
        assert rel_err(y, y_ref) < 1e-10 and state_err(h, h_ref) < 1e-10, backend
        for i, (a, b) in enumerate(zip(grads, g_ref)):
            assert (a is None) == (b is None), (backend, i)
            if b is not None:
                assert rel_err(a, b) < max(1e-7, GRAD_TOL.get((name, opts.get("init")), 0.0)), (backend, i)


# Second derivatives PyTorch itself lacks on some paths (the layer's own code is not the limit).
NO_SECOND_ORDER = {"attention": "PyTorch's fused scaled-dot-product attention kernels have no double backward"}


@pytest.mark.parametrize("name", NAMES)
def test_every_backend_has_the_reference_second_derivatives(name):
    """A gradient penalty (create_graph) through each backend equals the reference's: the C and Triton kernels'
    backwards and the recomputing chunked scans must not drop the second-order terms (docs/design.md, Probe 3)."""
    if name in NO_SECOND_ORDER:
        pytest.skip(NO_SECOND_ORDER[name])
    layer = make_layer(name)
    x = torch.randn(2, 70, H, device=DEVICE, dtype=torch.float64, requires_grad=True)  # > one 64-step chunk
    h0 = state_map(lambda t: (0.5 * torch.randn_like(t)).requires_grad_(), layer.initial_state(2))
    params = [x, *leaves(h0), *layer.parameters()]

    def second_order():
        y, h = layer(x, h0)
        loss = (y * torch.cos(y)).sum() + sum((t.abs() ** 2).sum() for t in leaves(h))
        g_x, = torch.autograd.grad(loss, x, create_graph=True)
        return torch.autograd.grad((g_x ** 2).sum(), params, allow_unused=True)

    with ops.use_backend("reference"):
        want = second_order()
    for backend in ("auto", *runnable_backends(layer)):
        with ops.use_backend(backend):
            got = second_order()
        for i, (a, b) in enumerate(zip(got, want)):
            assert (a is None) == (b is None), (backend, i)
            if b is not None:
                assert rel_err(a, b) < GRAD_TOL.get((name, variants(name)[0].get("init")), 1e-9), (backend, i)


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_gradcheck_fast_path(name, opts):
    layer = make_layer(name, opts)
    x = torch.randn(1, 9, H, device=DEVICE, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_backend_for_the_layer_raises(name):
    layer = make_layer(name)
    missing = [b for b in ops.BACKENDS[1:] if b not in layer.backends]
    for backend in missing:
        with ops.use_backend(backend), pytest.raises(RuntimeError, match=f"backend '{backend}' was forced"):
            layer(torch.randn(2, 5, H, device=DEVICE, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_state_space_simulation_equals_forward(name, opts, dtype):
    layer = make_layer(name, opts, dtype)
    if not layer.supports("state_space"):
        with pytest.raises(NotImplementedError, match="has no state space"):
            layer.state_space()
        return
    ss = layer.state_space()
    assert ss.nsystems * ss.ninputs == H and ss.nsystems * ss.noutputs == H
    x = torch.randn(2, 40, H, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        y, _ = layer(x)
    y_sim = ss.simulate(x.double().cpu())
    assert rel_err(y, y_sim) < TOL[dtype]


def _impulse_responses(L: int) -> torch.Tensor:
    """x (H, L, H): sequence i has a unit impulse on channel i at t = 0."""
    x = torch.zeros(H, L, H, device=DEVICE, dtype=torch.float64)
    x[torch.arange(H), 0, torch.arange(H)] = 1
    return x


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_kernel_is_the_impulse_response(name, opts):
    # y = K ⊛ u exactly (the skip is K's tap 0): the kernel equals the forward's and the exported system's
    # response to unit impulses, read as (H_out, H_in, L) whether the layer is a SISO bank or MIMO.
    layer = make_layer(name, opts)
    L = 25
    if not layer.supports("kernel"):
        with pytest.raises(NotImplementedError, match="has no kernel"):
            layer.kernel(L)
        return
    with torch.no_grad():
        K = layer.kernel(L)
        K = torch.diag_embed(K.transpose(0, 1)).permute(1, 2, 0) if K.dim() == 2 else K  # (H_out, H_in, L)
        assert K.shape == (H, H, L)
        impulses = _impulse_responses(L)
        y, _ = layer(impulses)  # y[i, t, o] = K[o, i, t]
        assert rel_err(y.permute(2, 0, 1), K) < 1e-10
        if layer.supports("state_space"):
            y_sim = layer.state_space().simulate(impulses.cpu())
            assert rel_err(y_sim.permute(2, 0, 1), K) < 1e-10


@pytest.mark.parametrize("name", [n for n in NAMES if supports_option(n, "bidirectional")])
def test_bidirectional(name):
    layer = make_layer(name, bidirectional=True)
    x = torch.randn(2, 30, H, device=DEVICE, dtype=torch.float64)
    y, h = layer(x)
    assert h is None and y.shape == x.shape
    x2 = x.clone()
    x2[:, 20] += 1.0
    y2, _ = layer(x2)
    assert not torch.allclose(y[:, :20], y2[:, :20])  # the past sees the future
    assert not layer.supports("step") and not layer.supports("state_space")
    with pytest.raises(NotImplementedError, match="inputs after t"):
        layer.step(x[:, 0], layer.initial_state(2))
    with pytest.raises(ValueError, match="no recurrent state"):
        layer(x, torch.zeros(1))
    with pytest.raises(NotImplementedError, match="not causal"):
        layer.state_space()
    if layer.supports("kernel"):
        K = layer.kernel(30)
        assert K.shape in ((2, H, 30), (2, H, H, 30))  # a SISO bank or a MIMO system (H_out, H_in)
        # reference: y_t = Σ_{s≤t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s (the skip D is K0's tap 0)
        ref = torch.zeros_like(y)
        for t in range(30):
            for s in range(30):
                k = K[0, ..., t - s] if s <= t else K[1, ..., s - t - 1]  # (H,) or (H_out, H_in)
                ref[:, t] += k * x[:, s] if K.dim() == 3 else x[:, s] @ k.T
        for backend in ("auto", *runnable_backends(layer)):
            with ops.use_backend(backend):
                assert rel_err(layer(x)[0], ref) < 1e-10, backend


@pytest.mark.parametrize("name", [n for n in NAMES if supports_option(n, "bidirectional")])
def test_bidirectional_gradients_agree_across_backends(name):
    """Every backend's input and parameter gradients of a two-sided layer equal the reference backend's (the two-scan
    paths add the anti-causal scan into the causal one's output in place, the skip riding on the causal scan)."""
    layer = make_layer(name, bidirectional=True)
    x = torch.randn(2, 21, H, device=DEVICE, dtype=torch.float64)
    g = torch.randn(2, 21, H, device=DEVICE, dtype=torch.float64)
    params = [p for p in layer.parameters() if p.requires_grad]

    def grads(backend):
        xg = x.clone().requires_grad_()
        with ops.use_backend(backend):
            y, _ = layer(xg)
        return torch.autograd.grad((y * g).sum(), [xg, *params], allow_unused=True)

    ref = grads("reference")
    for backend in ("auto", *runnable_backends(layer)):
        for got, want in zip(grads(backend), ref):
            assert (got is None) == (want is None), backend
            if want is not None:
                assert rel_err(got, want) < 1e-9, backend


@pytest.mark.parametrize("name", NAMES)
def test_dtypes_and_initial_state(name):
    for dtype in (torch.float32, torch.float64):
        layer = build_default(name, d_model=H, dtype=dtype, device=DEVICE)
        for t in leaves(layer.initial_state(4)):
            assert t.shape[0] == 4 and t.device.type == DEVICE.type
            assert not bool(t.abs().sum())
        y, _ = layer(torch.randn(4, 7, H, dtype=dtype, device=DEVICE))
        assert y.dtype == dtype


@pytest.mark.parametrize("name", NAMES)
def test_autocast_keeps_the_core_in_float32(name):
    # docs/design.md: under autocast the SSM core still runs in float32; y comes back in x's dtype.
    layer = build_default(name, d_model=H, device=DEVICE)
    x = torch.randn(2, 300, H, device=DEVICE)
    with torch.no_grad():
        y, h = layer(x)
        with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
            y_amp, h_amp = layer(x)
            y_bf16, _ = layer(x.to(torch.bfloat16))
            y_t, _ = layer.step(x[:, 0].to(torch.bfloat16), layer.initial_state(2))
    # A mixer with its own projections (block_defaults (None, None)) runs them in bf16 under autocast: its output and
    # state carry the bf16 rounding of the projections' inputs and weights (8-bit mantissa, 2^-9 each, summed over a
    # few channels). LTI layers have no projections: the same float32 arithmetic.
    mixer = layer.block_defaults == layers.BlockDefaults(None, None)
    tol = 3e-2 if mixer else 1e-6
    if name == "gss":
        # GSS's LayerNorm over its H_s = 2 bottleneck channels (d_model 3) outputs ±(a - b)/√((a - b)² + 4ε) of the
        # two bf16-rounded projections a, b: where they are close it amplifies their rounding (the SSM input u moves by
        # up to 0.5), y by up to 6.2e-2 and the state by 7.7e-2 (CPU, 20 draws), 1.1e-1 on the H200. That bound
        # cannot tell a float32 core from a bf16 one, so the core is checked on its own: the same u, the same float32
        # arithmetic under autocast
        tol = 2e-1
        u = torch.randn(2, 300, layer.ssm.d_model, device=DEVICE)
        with torch.no_grad():
            s, h_s = layer.ssm(u)
            with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
                s_amp, h_s_amp = layer.ssm(u)
        assert s_amp.dtype == torch.float32 and rel_err(s_amp, s) < 1e-6 and state_err(h_s_amp, h_s) < 1e-6
    assert y_amp.dtype == torch.float32 and rel_err(y_amp, y) < tol
    assert state_err(h_amp, h) < tol
    assert all(t.dtype == s.dtype for t, s in zip(leaves(h_amp), leaves(h)))  # the state keeps its dtype
    assert y_bf16.dtype == torch.bfloat16 and y_t.dtype == torch.bfloat16
    # bf16 input and output rounding (8-bit mantissa) on top
    assert rel_err(y_bf16.float(), y) < (max(tol, 4e-2) if mixer else 2e-2)


@pytest.mark.parametrize("name", NAMES)
def test_capability_declarations_are_consistent(name):
    cls = layers.layer_class(name)
    layer = make_layer(name)
    for capability in ("kernel", "state_space", "step"):
        assert layer.supports(capability) == getattr(cls.capabilities, capability)  # unidirectional default
    assert set(cls.backends) <= set(ops.BACKENDS[1:]) and "reference" in cls.backends
    with pytest.raises(ValueError, match="capability must be one of"):
        layer.supports("teleport")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_block", [False, True], ids=["device_argument", "device_block"])
def test_deferred_initialisation_on_the_meta_device(name, in_block):
    # Large models are built on "meta" (no memory), moved with to_empty and initialised by reset_parameters:
    # the result equals a layer built directly from the same seed. PyTorch's other deferred build,
    # `with torch.device("meta"): ...`, makes meta the default device of every factory call, the init's constants
    # included: the HiPPO/DSS/S5 inits used to build their eigendecompositions there ("Tensor.item() cannot be called
    # on meta tensors") or cache a meta result that failed every later build of that size in the process ("Cannot
    # copy out of meta tensor"). The caches are emptied first so that the block fills them.
    if in_block:
        hippo._nplr_cached.cache_clear()
        hippo._dss_eigenvalues_cached.cache_clear()
        with torch.device("meta"):
            meta = build_default(name, d_model=H)
    else:
        meta = build_default(name, d_model=H, device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert all(t.device.type == "meta" for t in leaves(meta.initial_state(2)))
    layer = meta.to_empty(device=DEVICE)
    torch.manual_seed(4)
    layer.reset_parameters()
    torch.manual_seed(4)
    direct = build_default(name, d_model=H, device=DEVICE)  # after the block: the caches hold CPU tensors
    for (n, a), b in zip(layer.state_dict().items(), direct.state_dict().values()):
        assert torch.equal(a, b), n
    x = torch.randn(2, 9, H, device=DEVICE)
    assert torch.equal(layer(x)[0], direct(x)[0])
