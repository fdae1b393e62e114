"""Forward-mode AD through every registered layer: ``torch.autograd.forward_ad``, ``torch.func.jvp``, ``jacfwd`` and
``hessian`` (= jacfwd(jacrev)), for tangents on the input, the initial state and the parameters.

Parametrised over ``ssmkit.layers.available()`` (each layer's first test variant, float64, B 2, L 7, H 3), so a new
layer is tested the moment it registers. The independent reference is reverse mode on the default path (``"auto"``:
the C kernels and the hand-written backwards): the full Jacobian of the outputs (y and the final state), one
``torch.autograd.grad`` per output entry, contracted with the tangent. Forward AD runs other code (the ops' ``jvp``
methods and the PyTorch paths: ``ssmkit.ops.backend.forward_ad_active``), so agreement to 1e-10 relative (float64:
the two differ only in summation order, observed ~1e-14) checks both. A forced kernel backend (``"native"``) cannot
compute tangents and must raise.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import func

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.models import SequenceModel
from ssmkit.layers.state import map_state
from tests.conftest import DEVICE, H, NEEDED_AT_TINY_WIDTH, leaves, make_layer, rel_err, run_steps, variants

NAMES = layers.available()
TOL = 1e-10  # float64; forward and reverse mode sum in different orders (observed <= 1e-13 relative)
F64 = torch.float64
Bsz, L = 2, 7


def _floats(state) -> list[torch.Tensor]:
    """The floating-point leaves of a layer state (None: none), complex ones as real views (..., 2)."""
    if state is None:
        return []
    return [torch.view_as_real(t) if t.is_complex() else t for t in leaves(state) if t.is_floating_point() or t.is_complex()]


def _with_floats(state, values: list[torch.Tensor]):
    """``state`` with its floating-point leaves replaced, in order, by ``values`` (real views of the complex ones, as
    :func:`_floats` gives them)."""
    it = iter(values)

    def swap(t):
        if t.is_complex():
            return torch.view_as_complex(next(it))
        return next(it) if t.is_floating_point() else t

    return map_state(swap, state)


def _jacobian(out: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The reverse-mode Jacobian (outputs, inputs) of the flat ``out`` with respect to the leaves ``inputs`` (each
    flattened, in order): one ``torch.autograd.grad`` per output entry."""
    rows = []
    for i in range(out.numel()):
        grads = torch.autograd.grad(out[i], inputs, retain_graph=True, allow_unused=True)
        rows.append(_flat([torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]))
    return torch.stack(rows).detach()


@functools.lru_cache(maxsize=None)
def _case(name: str):
    """The layer, its input x (B, L, H), an initial state h0 (None for a two-sided layer) and the reverse-mode Jacobian
    of (y, final state) with respect to [x, h0's leaves, parameters] (cached per layer: two tests read it)."""
    layer = make_layer(name, dtype=F64)
    torch.manual_seed(3)
    x = torch.randn(Bsz, L, H, dtype=F64, device=DEVICE)
    h0 = None
    if not layer.bidirectional:
        h0 = map_state(lambda t: t + 0.3 * torch.randn_like(t) if t.is_floating_point() else t, layer.initial_state(Bsz))
    x_l = x.clone().requires_grad_()
    h_l = [t.clone().requires_grad_() for t in _floats(h0)]
    y, h = layer(x_l, None if h0 is None else _with_floats(h0, h_l))
    params = [p for p in layer.parameters() if p.requires_grad]
    return layer, x, h0, _jacobian(_outputs(y, h), [x_l, *h_l, *params])


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _tangents(like: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, dtype=t.dtype, generator=g).to(t.device) for t in like]


def _outputs(y, h) -> torch.Tensor:
    """(y, the final state's floating leaves), flattened into one vector."""
    return _flat([y, *_floats(h)])


@pytest.mark.parametrize("name", NAMES)
def test_forward_ad_input_tangent_equals_reverse_jacobian(name):
    # torch.autograd.forward_ad: tangents on x and on the initial state; the tangent of (y, final state)
    layer, x, h0, J = _case(name)
    h_leaves = _floats(h0)
    v = _tangents([x, *h_leaves], seed=5)
    with fwAD.dual_level():
        x_d = fwAD.make_dual(x, v[0])
        h_d = None if h0 is None else _with_floats(h0, [fwAD.make_dual(t, dt) for t, dt in zip(h_leaves, v[1:])])
        y, h = layer(x_d, h_d)
        got = _flat([fwAD.unpack_dual(t).tangent for t in [y, *_floats(h)]])
    want = J[:, : x.numel() + sum(t.numel() for t in h_leaves)] @ _flat(v)
    assert got.shape == want.shape and rel_err(got, want) < TOL


BACKEND_CASES = [(name, i, backend) for name in NAMES for i, _ in enumerate(variants(name))
                 for backend in ("auto", *layers.layer_class(name).backends) if backend not in ("native", "triton")]


@pytest.mark.parametrize("name,variant,backend", BACKEND_CASES, ids=[f"{n}-{i}-{b}" for n, i, b in BACKEND_CASES])
def test_forward_ad_of_every_variant_and_backend(name, variant, backend):
    # every option set of the tests and every backend that can compute tangents, at a length past the kernels' and
    # scans' first chunk boundaries; against reverse mode through the reference backend (the double-backward trick
    # of torch.autograd.functional.jvp)
    layer = make_layer(name, variants(name)[variant], dtype=F64)
    x = torch.randn(Bsz, 21, H, dtype=F64, device=DEVICE)
    v = torch.randn_like(x)
    with ops.use_backend(backend), fwAD.dual_level():
        got = fwAD.unpack_dual(layer(fwAD.make_dual(x, v), return_state=False)[0]).tangent
    with ops.use_backend("reference"):
        _, want = torch.autograd.functional.jvp(lambda x: layer(x, return_state=False)[0], x, v)
    assert rel_err(got, want) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_jvp_parameter_tangent_equals_reverse_jacobian(name):
    # torch.func.jvp over functional_call: a tangent on every parameter (x and h0 fixed)
    layer, x, h0, J = _case(name)
    params = {k: p.detach() for k, p in layer.named_parameters() if p.requires_grad}
    v = dict(zip(params, _tangents(list(params.values()), seed=7)))

    def run(p):
        return _outputs(*func.functional_call(layer, p, (x, h0)))

    _, got = func.jvp(run, (params,), (v,))
    start = x.numel() + sum(t.numel() for t in _floats(h0))
    want = J[:, start:] @ _flat(list(v.values()))
    assert rel_err(got, want) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_jacfwd_equals_jacrev(name):
    layer = make_layer(name, dtype=F64)
    x = torch.randn(1, 4, H, dtype=F64, device=DEVICE)
    f = lambda x: layer(x, return_state=False)[0]  # noqa: E731
    fwd = func.jacfwd(f)(x)
    rev = func.jacrev(f)(x)
    assert fwd.shape == (1, 4, H, 1, 4, H) and rel_err(fwd, rev) < TOL
    assert rev.abs().max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_hessian_equals_double_backward(name):
    # torch.func.hessian (forward over reverse) against autograd's double backward (reverse over reverse, "auto")
    layer = make_layer(name, dtype=F64)
    torch.manual_seed(4)
    x = torch.randn(1, 3, H, dtype=F64, device=DEVICE)
    w = torch.randn(1, 3, H, dtype=F64, device=DEVICE)

    def loss(x):
        return (torch.tanh(layer(x, return_state=False)[0]) * w).sum()  # a curved loss: a nonzero Hessian from it

    got = func.hessian(loss)(x)
    with ops.use_backend("reference"):  # the loops: autograd through every step (PyTorch's CPU flash attention,
        want = torch.autograd.functional.hessian(loss, x)  # attention's "auto", has no double backward)
    assert got.shape == (1, 3, H, 1, 3, H) and rel_err(got, want) < TOL
    assert want.abs().max() > 0
    assert rel_err(got, got.transpose(0, 3).transpose(1, 4).transpose(2, 5)) < TOL  # symmetric


@pytest.mark.parametrize("name", NAMES)
def test_hessian_vector_product_on_parameters(name):
    # forward over reverse (torch.func.jvp of torch.func.grad) on every parameter and the input, against reverse over
    # reverse (the gradient's gradient, under the reference backend), at a length with several chunks of the scans
    layer = make_layer(name, dtype=F64)
    x = torch.randn(Bsz, 19, H, dtype=F64, device=DEVICE)
    w = torch.randn(Bsz, 19, H, dtype=F64, device=DEVICE)
    params = {k: p.detach() for k, p in layer.named_parameters() if p.requires_grad}
    tx, *tp = _tangents([x, *params.values()], seed=11)

    def loss(x, p):
        return (torch.tanh(func.functional_call(layer, p, (x,), {"return_state": False})[0]) * w).sum()

    _, got = func.jvp(func.grad(loss, argnums=(0, 1)), (x, params), (tx, dict(zip(params, tp))))
    got = _flat([got[0], *got[1].values()])
    leaves_in = [x.clone().requires_grad_(), *[p.clone().requires_grad_() for p in params.values()]]
    with ops.use_backend("reference"):
        grads = torch.autograd.grad(loss(leaves_in[0], dict(zip(params, leaves_in[1:]))), leaves_in, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, [tx, *tp]))
        want = torch.autograd.grad(dot, leaves_in, allow_unused=True)
    want = _flat([torch.zeros_like(t) if g is None else g for g, t in zip(want, leaves_in)])
    assert rel_err(got, want) < TOL and want.abs().max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_sequence_model_jvp(name):
    # a SequenceModel of two blocks: the tangent on the input and on every parameter against the reverse Jacobian
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=H, n_layers=2, layer=name,
                          layer_options={**variants(name)[0], **NEEDED_AT_TINY_WIDTH.get(name, {})},
                          d_output=2, pool=None, device=DEVICE, dtype=F64)
    x = torch.randn(Bsz, 5, 2, dtype=F64, device=DEVICE)
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    tx, *tp = _tangents([x, *params.values()], seed=9)

    def run(x, p):
        return func.functional_call(model, p, (x,), {"return_state": False})[0]

    _, got = func.jvp(run, (x, params), (tx, dict(zip(params, tp))))
    leaves_in = [x.clone().requires_grad_(), *[p.clone().requires_grad_() for p in params.values()]]
    J = _jacobian(run(leaves_in[0], dict(zip(params, leaves_in[1:]))).reshape(-1), leaves_in)
    assert rel_err(got.reshape(-1), J @ _flat([tx, *tp])) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_step_tangent_equals_forward_tangent(name):
    # the recurrent step under forward AD (its fused C step is skipped there): step by step = the whole sequence
    layer, x, h0, _ = _case(name)
    if not layer.supports("step"):
        pytest.skip(f"{name} has no step")
    v = _tangents([x], seed=13)[0]
    with fwAD.dual_level():
        y_seq, _ = layer(fwAD.make_dual(x, v), h0)
        y_steps, _ = run_steps(layer, fwAD.make_dual(x, v), h0)
        got, want = fwAD.unpack_dual(y_steps).tangent, fwAD.unpack_dual(y_seq).tangent
    assert rel_err(got, want) < TOL and want.abs().max() > 0


INTERVAL_NAMES = [n for n in NAMES if layers.layer_class(n).takes_intervals]


@pytest.mark.parametrize("name", INTERVAL_NAMES)
def test_forward_ad_at_irregular_times(name):
    # irregularly sampled sequences: tangents on the input and on the sampling intervals, against reverse mode through
    # the reference backend
    layer = make_layer(name, dtype=F64)
    x = torch.randn(Bsz, 21, H, dtype=F64, device=DEVICE)
    tau = 0.5 + torch.rand(Bsz, 21, dtype=F64, device=DEVICE)
    v, v_tau = _tangents([x, tau], seed=15)
    f = lambda x, tau: layer(x, intervals=tau, return_state=False)[0]  # noqa: E731
    with fwAD.dual_level():
        got = fwAD.unpack_dual(f(fwAD.make_dual(x, v), fwAD.make_dual(tau, v_tau))).tangent
    with ops.use_backend("reference"):
        _, want = torch.autograd.functional.jvp(f, (x, tau), (v, v_tau))
    assert rel_err(got, want) < TOL
    assert rel_err(func.jvp(f, (x, tau), (v, v_tau))[1], want) < TOL


KERNEL_NAMES = [n for n in NAMES if "native" in layers.layer_class(n).backends]


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_forced_native_backend_raises_under_forward_ad(name):
    layer = make_layer(name, dtype=F64)
    x = torch.randn(Bsz, L, H, dtype=F64, device=DEVICE)
    with ops.use_backend("native"):
        with fwAD.dual_level(), pytest.raises(RuntimeError, match="cannot run under forward-mode AD"):
            layer(fwAD.make_dual(x, torch.ones_like(x)))
        with pytest.raises(RuntimeError, match="cannot run under forward-mode AD"):
            func.jvp(lambda x: layer(x)[0], (x,), (torch.ones_like(x),))
