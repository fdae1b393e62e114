"""Memory-layout and gradient probe of 2026-12-05 (adversarial, through the public API): inputs, states, parameters and
output gradients with the layouts a user's own code produces, on every layer, every backend it lists, and the
sequence model; hunting for silent wrong answers.

Every number is checked against an independent reference: the same computation on contiguous copies, with the
``"reference"`` backend (the step loops and direct formulas), in float64; the segments of a packed sequence run
separately; ``torch.autograd.gradcheck``'s finite differences; the row-blocked projections switched off.

Findings: no silent wrong answer was found; nothing in src/ needed a fix. Checked and right (float64 against the
reference within 1e-12 for outputs, states and input/state gradients and 1e-10 for parameter gradients, unless said;
the tests below keep each layer's first variant, the sweeps over every conftest variant were run once and not kept):

- inputs (B, L, H) seen through a transpose of (L, B, H) storage, a (B, H, L) "channels-last" storage, an (H, L, B)
  permutation, a step of 2 along L and along H, a storage offset of 5 elements, a window of a larger padded buffer,
  and a batch expanded with stride 0, with an initial state transposed in storage or expanded over the batch, every
  backend including ``"native"``: outputs, final states and the gradients of the input, the state and every
  parameter match, and neither the input nor the state given is written. Swept once over every variant at
  (B, L, H) = (3, 9, 3) and (4, 40, 18) in float64 and at (2, 70, 19) in float32 (the C kernels' tiles of 64 steps
  and 16 channels with tails): float32 within 2e-5 for outputs and input gradients, 2e-4 for parameter gradients;
- ``step`` with x_t of channel stride L and a transposed or batch-expanded state, with autograd on and off (the fused
  C steps of Mamba, Mamba-2 and RG-LRU run without a gradient);
- parameters made non-contiguous (``p.data = p.data.transpose(0, 1).contiguous().transpose(0, 1)``, a stride of 2 on
  vectors): forward with and without a state, gradients, step;
- output gradients of stride 0 (``y.sum()``), transposed (``(y * w.mT).sum()`` for a (B, H, L) w), of strided slices,
  of the final state alone, of ``h.imag``, ``h.conj()`` and ``-h``, with the input not requiring a gradient, with
  only the state requiring one;
- ``gradcheck`` (fast mode, eps 1e-6) on (2, 5, 3) channels-last inputs, initial states and every parameter, per
  backend (the C backwards included);
- two ``backward`` calls on one graph (retain_graph) plus a second forward accumulate three times one gradient to
  1e-13; ``torch.autograd.grad`` equals ``.backward()``, and with ``create_graph=True`` (the C backwards then run their
  double-backward PyTorch paths) the first-order gradients are the same to 1e-12;
- one layer applied twice (weights shared by reuse), and a second forward between a forward and its backward: the
  gradients are the sums of two independent copies' (the kernels keep no per-call state in the module);
- writing into the input, the initial state or the parameters between a forward and its backward either raises
  autograd's "modified by an inplace operation" or leaves the gradients unchanged (nothing is saved by pointer only),
  float64 and float32;
- ``SequenceModel`` (2 blocks; norms layer/batch/rms/none, post-norm, GLU/linear/none outputs) with these layouts on
  every backend; at B·L = 4 200 rows (Mamba, Mamba-2, RG-LRU, the S4D Block's GLU: the row-blocked GEMMs of
  ``ssmkit.ops.rows``) a channels-last input gives the unblocked ``F.linear`` path's outputs and gradients to 1e-13
  (float32 3e-6); the model's ``step`` from a transposed / expanded state list equals the reference forward;
- RG-LRU's ``resets`` given as a transposed (L, B) bool tensor: each packed segment equals the segment run alone
  (with its own first-step reset, the documented convention); bidirectional layers (S4, S4D, DSS, DLR, EMA, LRU, S5,
  Mega, SGConv) with strided and expanded inputs.

That the tests can fail was checked by injecting layout bugs with monkeypatching (src untouched): the native
diagonal scan handed a strided input as if contiguous, and its backward reading a transposed output gradient as if
contiguous; both are caught (by the forward-layout and the output-gradient tests).

Noticed and left alone (not layout bugs): S4 with ``init="fout"`` has A_real = -1e-4 (log_A_real = -9.2), so its
log_A_real gradients are ~1e-9 and differ by 1e-7..3e-7 relative between the fft path, the reference and
``create_graph`` (round-off, 1e-16 absolute); its reference forward with an initial state carries ~1e-10 noise (the
documented solve of (I - Ā^l_max)ᵀ C_true = C̃, badly conditioned for a mode at 1), so ``gradcheck`` at eps 1e-6 fails
there on the reference backend and passes on fft. A parameter stored as (..., 2) real pairs made non-contiguous along
that last axis raises torch's "Tensor must have a last dimension with stride 1" from ``view_as_complex`` (loud, and
only after relayouting that axis by hand).
"""

from __future__ import annotations

import copy

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
import ssmkit.ops.rows as rows
from ssmkit.models import SequenceModel
from tests.conftest import leaves, rel_err, runnable_backends, state_map, variants

F64 = torch.float64
B, L, H = 3, 9, 3
NAMES = layers.available()


def _floating(t) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel() > 0


def _f64(t):
    return t.to(torch.complex128 if t.is_complex() else F64) if _floating(t) else t


def _build(name: str, dtype=F64, d_model: int = H, **extra):
    torch.manual_seed(1)
    return layers.build(name, d_model=d_model, dtype=dtype, **{**variants(name)[0], **extra})


def _grad_err(pairs, floor: float = 1e-6) -> float:
    """max |a - b| / max |b| per tensor, the denominator floored at ``floor`` times the largest gradient (a gradient
    that is zero in exact arithmetic, such as a bias before a batch norm, is compared at the others' scale)."""
    pairs = list(pairs)
    assert all(a is None or not a.any() for a, b in pairs if b is None), "a gradient the reference does not have"
    pairs = [(a if a is not None else torch.zeros_like(b), b) for a, b in pairs if b is not None]
    if not pairs:  # nothing reaches any parameter (SGConv's final state is a window of the inputs)
        return 0.0
    scale = max(float(b.abs().max()) for _, b in pairs)
    return max(float((_f64(a) - b).abs().max()) / max(float(b.abs().max()), floor * scale, 1e-300) for a, b in pairs)


def _param_err(layer, ref, floor: float = 1e-6) -> float:
    return _grad_err([(p.grad, q.grad) for p, q in zip(layer.parameters(), ref.parameters())], floor)


def _random_state(layer, batch: int, g: torch.Generator):
    return state_map(lambda t: torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.5 if _floating(t) else t,
                     layer.initial_state(batch))


# Input layouts: (make the storage from the values (B, L, H), view the storage as (B, L, H)).
LAYOUTS = {
    "transposed": (lambda v: v.transpose(0, 1).contiguous(), lambda s: s.transpose(0, 1)),  # (L, B, H) storage
    "channels_last": (lambda v: v.transpose(1, 2).contiguous(), lambda s: s.transpose(1, 2)),  # (B, H, L) storage
    "permuted": (lambda v: v.permute(2, 1, 0).contiguous(), lambda s: s.permute(2, 1, 0)),  # (H, L, B) storage
    "step2_L": (lambda v: torch.stack([v, -v], 2).flatten(1, 2), lambda s: s[:, ::2]),
    "step2_H": (lambda v: torch.stack([v, -v], 3).flatten(2, 3), lambda s: s[..., ::2]),
    "offset": (lambda v: torch.cat([torch.ones(5, dtype=v.dtype), v.flatten()]), lambda s: s[5:].view(B, L, -1)),
    "window": (lambda v: torch.nn.functional.pad(v, (1, 2, 2, 1, 1, 1), value=3.0), lambda s: s[1:-1, 2:-1, 1:-2]),
}


def _view_state(state, kind: str, leaves_out: list):
    """The state's floating tensors as leaves (appended to ``leaves_out``) seen through a layout: ``"transposed"``
    (first and last axes swapped in storage) or ``"expanded"`` (row 0 broadcast over the batch, stride 0)."""

    def one(t):
        if not _floating(t):
            return t
        if kind == "expanded":
            base = t[:1].clone().requires_grad_()
            leaves_out.append(base)
            return base.expand(t.shape)
        base = t.transpose(0, -1).contiguous().requires_grad_() if t.dim() >= 2 else t.clone().requires_grad_()
        leaves_out.append(base)
        return base.transpose(0, -1) if t.dim() >= 2 else base

    return state_map(one, state)


def _state_leaf_grads(bases: list, kind: str) -> list:
    out = []
    for b in bases:
        g = b.grad if b.grad is not None else torch.zeros_like(b)
        out.append(g.transpose(0, -1) if kind == "transposed" and b.dim() >= 2 else g)
    return out


def _loss(y, h, w):
    loss = (y * w.to(y.dtype)).sum()
    for t in leaves(h) if h is not None else []:
        if _floating(t) and t.requires_grad:
            loss = loss + 0.1 * (t.abs().pow(2).sum() if t.is_complex() else t.pow(2).sum())
    return loss


# ---------------------------------------------------------------------------------------------------------------------
# 1. layer forward: every input layout, a transposed or expanded initial state, every backend


def _beside_reference(module0, backend: str, store, view, values: torch.Tensor, w: torch.Tensor):
    """A copy of module0 run on ``backend`` on view(store(values)), and another on the reference backend on the same
    values made contiguous, each backpropagated from Σ w·y: (module, y, base, ref, y_ref, ref_base), the bases being
    the leaves that hold the inputs' gradients."""
    module, ref = copy.deepcopy(module0), copy.deepcopy(module0)
    base, ref_base = store(values).requires_grad_(), store(values).requires_grad_()
    with ops.use_backend(backend):
        y, _ = module(view(base))
    with ops.use_backend("reference"):
        yr, _ = ref(view(ref_base).contiguous())
    (y * w).sum().backward()
    (yr * w).sum().backward()
    return module, y, base, ref, yr, ref_base


@pytest.mark.parametrize("name", NAMES)
def test_forward_input_and_state_layouts_match_the_contiguous_reference(name):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(B, L, H, generator=g, dtype=F64)
    w = torch.randn(B, L, H, generator=g, dtype=F64)
    layer0 = _build(name)
    h_values = _random_state(layer0, B, g)
    h_expanded = state_map(lambda t: t[:1].expand(t.shape).contiguous() if _floating(t) else t, h_values)
    for backend in runnable_backends(layer0):
        for i, (lay, (store, view)) in enumerate(LAYOUTS.items()):
            layer, ref = copy.deepcopy(layer0), copy.deepcopy(layer0)
            kind = ("transposed", "expanded", None)[i % 3]
            h_given = h_expanded if kind == "expanded" else h_values
            base = store(values).requires_grad_()
            before = base.detach().clone()
            bases: list = []
            state = None if kind is None else _view_state(h_given, kind, bases)
            given = [t for t in leaves(state) if isinstance(t, torch.Tensor)] if state is not None else []
            state_before = [t.detach().clone() for t in given]
            with ops.use_backend(backend):
                y, h = layer(view(base), state=state)
            _loss(y, h, w).backward()
            assert torch.equal(base.detach(), before), (backend, lay, "the input was written")
            assert all(torch.equal(a.detach(), b) for a, b in zip(given, state_before)), (backend, lay, "state written")

            ref_base = store(values).requires_grad_()
            ref_bases = [] if kind is None else [(_f64(t).detach().clone().requires_grad_()) for t in leaves(h_given)
                                                 if _floating(t)]
            it = iter(ref_bases)
            ref_state = None if kind is None else state_map(lambda t: next(it) if _floating(t) else t, h_given)
            with ops.use_backend("reference"):
                yr, hr = ref(view(ref_base).contiguous(), state=ref_state)
            _loss(yr, hr, w).backward()
            where = (backend, lay, kind)
            assert rel_err(y, yr) < 1e-12, where
            assert max(rel_err(a, b) for a, b in zip(leaves(h), leaves(hr))) < 1e-12, where
            assert rel_err(base.grad, ref_base.grad) < 1e-12, where
            assert _param_err(layer, ref) < 1e-10, where
            if kind is not None:
                got = _state_leaf_grads(bases, kind)
                want = [b.grad.sum(0, keepdim=True) if kind == "expanded" else b.grad for b in ref_bases]
                assert _grad_err(list(zip(got, want))) < 1e-12, where


@pytest.mark.parametrize("name", ["s4d", "mamba", "mamba2", "rglru", "s5", "lru", "ema", "dss"])
def test_float32_native_kernels_with_strided_inputs_at_tile_sizes(name):
    """(B, L, H) = (2, 70, 19) float32: the C kernels' tiles of 64 steps and 16 channels with tails, inputs seen
    channels-last and with a storage offset, against the float64 reference."""
    Bb, Ll, Hh = 2, 70, 19
    extra = {"headdim": 2} if name == "mamba2" else {}
    g = torch.Generator().manual_seed(1)
    values = torch.randn(Bb, Ll, Hh, generator=g, dtype=F64)
    w = torch.randn(Bb, Ll, Hh, generator=g, dtype=F64)
    layer0 = _build(name, torch.float32, d_model=Hh, **extra)
    ref = copy.deepcopy(layer0).double()
    xr = values.clone().requires_grad_()
    with ops.use_backend("reference"):
        yr, _ = ref(xr)
    (yr * w).sum().backward()
    for backend in runnable_backends(layer0):
        for store, view in ((lambda v: v.transpose(1, 2).contiguous(), lambda s: s.transpose(1, 2)),
                            (lambda v: torch.cat([torch.ones(3, dtype=v.dtype), v.flatten()]),
                             lambda s: s[3:].view(Bb, Ll, Hh))):
            layer = copy.deepcopy(layer0)
            base = store(values.float()).requires_grad_()
            with ops.use_backend(backend):
                y, _ = layer(view(base))
            (y * w.float()).sum().backward()
            assert rel_err(y, yr) < 2e-5, backend
            assert rel_err(view(base.grad), xr.grad) < 2e-5, backend
            assert _param_err(layer, ref) < 2e-4, backend


# ---------------------------------------------------------------------------------------------------------------------
# 2. step: x_t of channel stride L, transposed / expanded states, with and without autograd (the fused C steps)


def _steps(layer, backend, x, h, grad=True):
    ys = []
    with ops.use_backend(backend), torch.set_grad_enabled(grad):
        for t in range(x.shape[1]):
            y, h = layer.step(x[:, t], h)
            ys.append(y)
    return torch.stack(ys, 1), h


STEP_LAYERS = [n for n in NAMES if layers.build(n, d_model=H, **variants(n)[0]).capabilities.step]


@pytest.mark.parametrize("name", STEP_LAYERS)
def test_step_with_strided_input_and_noncontiguous_states(name):
    Ls = 5
    g = torch.Generator().manual_seed(5)
    values = torch.randn(B, Ls, H, generator=g, dtype=F64)
    w = torch.randn(B, Ls, H, generator=g, dtype=F64)
    layer0 = _build(name)
    h_values = _random_state(layer0, B, g)
    for backend in runnable_backends(layer0):
        for kind in ("transposed", "expanded"):
            layer, ref = copy.deepcopy(layer0), copy.deepcopy(layer0)
            h_given = (state_map(lambda t: t[:1].expand(t.shape).contiguous() if _floating(t) else t, h_values)
                       if kind == "expanded" else h_values)
            base = values.transpose(1, 2).contiguous().requires_grad_()  # x[:, t] has channel stride Ls
            bases: list = []
            y, h = _steps(layer, backend, base.transpose(1, 2), _view_state(h_given, kind, bases))
            _loss(y, h, w).backward()
            xr = values.clone().requires_grad_()
            ref_bases = [t.detach().clone().requires_grad_() for t in leaves(h_given) if _floating(t)]
            it = iter(ref_bases)
            yr, hr = _steps(ref, "reference", xr, state_map(lambda t: next(it) if _floating(t) else t, h_given))
            _loss(yr, hr, w).backward()
            where = (backend, kind)
            assert rel_err(y, yr) < 1e-12, where
            assert max(rel_err(a, b) for a, b in zip(leaves(h), leaves(hr))) < 1e-12, where
            assert rel_err(base.grad.transpose(1, 2), xr.grad) < 1e-12, where
            assert _param_err(layer, ref) < 1e-10, where
            want = [b.grad.sum(0, keepdim=True) if kind == "expanded" else b.grad for b in ref_bases]
            assert _grad_err(list(zip(_state_leaf_grads(bases, kind), want))) < 1e-12, where
            with torch.no_grad():  # the fused no-grad steps read the same strided tensors
                y2, h2 = _steps(layer, backend, base.detach().transpose(1, 2),
                                _view_state(h_given, kind, []), grad=False)
            assert rel_err(y2, yr) < 1e-12, where
            assert max(rel_err(a, b) for a, b in zip(leaves(h2), leaves(hr))) < 1e-12, where


# ---------------------------------------------------------------------------------------------------------------------
# 3. non-contiguous parameters


def _relayout_parameters(layer) -> None:
    """``p.data = p.data.transpose(0, 1).contiguous().transpose(0, 1)`` on parameters with two axes > 1 at the front,
    a stride of 2 along the first axis of the others (the last axis of (..., 2) real pairs is left as it is)."""
    for p in layer.parameters():
        if p.dim() >= 2 and p.shape[0] > 1 and p.shape[1] > 1:
            p.data = p.data.transpose(0, 1).contiguous().transpose(0, 1)
        elif p.numel() > 1:
            big = torch.zeros((2 * p.shape[0], *p.shape[1:]), dtype=p.dtype)
            big[::2] = p.data
            p.data = big[::2]


@pytest.mark.parametrize("name", NAMES)
def test_noncontiguous_parameters_give_the_contiguous_layers_answers(name):
    g = torch.Generator().manual_seed(6)
    values = torch.randn(B, L, H, generator=g, dtype=F64)
    w = torch.randn(B, L, H, generator=g, dtype=F64)
    layer0 = _build(name)
    h0 = _random_state(layer0, B, g)
    for backend in runnable_backends(layer0):
        layer, ref = copy.deepcopy(layer0), copy.deepcopy(layer0)
        _relayout_parameters(layer)
        assert any(not p.is_contiguous() for p in layer.parameters())
        for state in (None, h0):
            layer.zero_grad(set_to_none=True)
            ref.zero_grad(set_to_none=True)
            x, xr = values.clone().requires_grad_(), values.clone().requires_grad_()
            with ops.use_backend(backend):
                y, h = layer(x, state=state)
            with ops.use_backend("reference"):
                yr, hr = ref(xr, state=state)
            _loss(y, h, w).backward()
            _loss(yr, hr, w).backward()
            where = (backend, state is None)
            assert rel_err(y, yr) < 1e-12, where
            assert rel_err(x.grad, xr.grad) < 1e-12, where
            assert _param_err(layer, ref) < 1e-10, where
        if layer.capabilities.step:
            with torch.no_grad():
                y2, _ = _steps(layer, backend, values, h0, grad=False)
                y2r, _ = _steps(ref, "reference", values, h0, grad=False)
            assert rel_err(y2, y2r) < 1e-12, backend


# ---------------------------------------------------------------------------------------------------------------------
# 4. gradients: gradcheck per backend, accumulation, autograd.grad vs backward vs create_graph, output-gradient layouts


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_per_backend_with_channels_last_input_and_state(name):
    from torch.func import functional_call

    Bg, Lg = 2, 5
    layer = _build(name)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(Bg, H, Lg, generator=g, dtype=F64).requires_grad_()  # seen as (B, L, H) channels-last
    h0 = state_map(lambda t: (0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype)).requires_grad_()
                   if _floating(t) else t, layer.initial_state(Bg))
    real_state = [t for t in leaves(h0) if _floating(t) and not t.is_complex()]

    for backend in runnable_backends(layer):
        def f(x, *rest):
            it = iter(rest[len(params):])
            st = state_map(lambda t: next(it) if _floating(t) and not t.is_complex() else t, h0)
            with ops.use_backend(backend):
                y, h = functional_call(layer, dict(zip(names, rest[:len(params)])), (x.transpose(1, 2),),
                                       {"state": st})
            return (y, *[torch.view_as_real(t) if t.is_complex() else t for t in leaves(h) if _floating(t)])

        assert torch.autograd.gradcheck(f, (x, *params, *real_state), eps=1e-6, atol=1e-6, rtol=1e-5,
                                        fast_mode=True), backend


@pytest.mark.parametrize("name", NAMES)
def test_gradients_accumulate_and_agree_between_grad_backward_and_create_graph(name):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, H, generator=g, dtype=F64)
    w = torch.randn(2, 7, H, generator=g, dtype=F64)
    layer0 = _build(name)
    for backend in runnable_backends(layer0):
        layer = copy.deepcopy(layer0)
        ps = list(layer.parameters())

        def loss(xx):
            with ops.use_backend(backend):
                return (layer(xx)[0] * w).sum()

        xa = x.clone().requires_grad_()
        once = [t if t is not None else torch.zeros_like(p)
                for t, p in zip(torch.autograd.grad(loss(xa), [xa, *ps], allow_unused=True), [xa, *ps])]
        graph = [t if t is not None else torch.zeros_like(p) for t, p in
                 zip(torch.autograd.grad(loss(xa), [xa, *ps], allow_unused=True, create_graph=True), [xa, *ps])]
        xb = x.clone().requires_grad_()
        out = loss(xb)
        out.backward(retain_graph=True)
        out.backward()
        loss(xb).backward()  # a second forward: three gradients accumulated
        thrice = [xb.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        assert max(rel_err(a, 3 * b) for a, b in zip(thrice, once)) < 1e-13, backend
        assert max(rel_err(a.detach(), b) for a, b in zip(graph, once)) < 1e-12, backend


def _output_losses(wT):
    def states(h):
        return [t for t in leaves(h) if _floating(t)]

    return {
        "sum (stride-0 gradient)": lambda y, h: y.sum(),
        "transposed weights": lambda y, h: (y * wT.transpose(1, 2)).sum(),
        "strided slices": lambda y, h: y[:, -1].pow(2).sum() + y[:, ::2, ::2].sum(),
        "final state only": lambda y, h: sum((t.abs().pow(2) if t.is_complex() else t.pow(2)).sum() for t in states(h)),
        "imag, conj, neg of the state": lambda y, h: y.sum() + sum(
            ((-t).conj().real.sum() + t.conj().imag.pow(2).sum() + 2 * t.imag.sum()) if t.is_complex() else (-t).sum()
            for t in states(h)),
    }


@pytest.mark.parametrize("name", NAMES)
def test_output_gradient_layouts_and_partial_requires_grad(name):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, H, generator=g, dtype=F64)
    wT = torch.randn(2, H, 7, generator=g, dtype=F64)
    layer0 = _build(name)
    h_values = _random_state(layer0, 2, g)
    for backend in runnable_backends(layer0):
        for lname, lossf in _output_losses(wT).items():
            for x_grad, with_state in ((True, False), (False, True)):
                layer, ref = copy.deepcopy(layer0), copy.deepcopy(layer0)
                xa, xr = x.clone().requires_grad_(x_grad), x.clone().requires_grad_(x_grad)
                sa = [t.clone().requires_grad_() for t in leaves(h_values) if _floating(t)] if with_state else []
                sr = [t.detach().clone().requires_grad_() for t in sa]
                it_a, it_r = iter(sa), iter(sr)
                st_a = state_map(lambda t: next(it_a) if _floating(t) else t, h_values) if with_state else None
                st_r = state_map(lambda t: next(it_r) if _floating(t) else t, h_values) if with_state else None
                with ops.use_backend(backend):
                    y, h = layer(xa, state=st_a)
                with ops.use_backend("reference"):
                    yr, hr = ref(xr, state=st_r)
                lossf(y, h).backward()
                lossf(yr, hr).backward()
                where = (backend, lname, x_grad)
                assert _param_err(layer, ref) < 1e-10, where
                if x_grad:
                    assert _grad_err([(xa.grad, xr.grad)]) < 1e-12, where
                for a, b in zip(sa, sr):  # attention's position counter under rotary embeddings: 0 in exact
                    ga = a.grad if a.grad is not None else torch.zeros_like(a)  # arithmetic (relative positions),
                    gb = b.grad if b.grad is not None else torch.zeros_like(b)  # round-off on both paths
                    if float(gb.abs().max()) < 1e-12:
                        assert float(ga.abs().max()) < 1e-12, where
                    else:
                        assert rel_err(ga, gb) < 1e-12, where


# ---------------------------------------------------------------------------------------------------------------------
# 5. weights shared by reuse, interleaved forwards, writes between forward and backward


@pytest.mark.parametrize("name", NAMES)
def test_layer_reused_twice_and_interleaved_forwards(name):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, H, generator=g, dtype=F64)
    w = torch.randn(2, 7, H, generator=g, dtype=F64)
    layer0 = _build(name)
    for backend in runnable_backends(layer0):
        layer, c1, c2 = copy.deepcopy(layer0), copy.deepcopy(layer0), copy.deepcopy(layer0)
        xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        with ops.use_backend(backend):
            y = layer(torch.tanh(layer(xa)[0]))[0]
        with ops.use_backend("reference"):
            yr = c2(torch.tanh(c1(xr)[0]))[0]
        (y * w).sum().backward()
        (yr * w).sum().backward()
        assert rel_err(y, yr) < 1e-12 and rel_err(xa.grad, xr.grad) < 1e-12, backend
        summed = [None if q.grad is None else q.grad + r.grad for q, r in zip(c1.parameters(), c2.parameters())]
        assert _grad_err([(p.grad, s) for p, s in zip(layer.parameters(), summed)]) < 1e-10, backend

        layer.zero_grad(set_to_none=True)
        c1.zero_grad(set_to_none=True)
        xa = x.clone().requires_grad_()
        with ops.use_backend(backend):
            ya = layer(xa)[0]
            layer(2 * x.flip(1).requires_grad_())  # a second forward before the first one's backward
        (ya * w).sum().backward()
        xr = x.clone().requires_grad_()
        with ops.use_backend("reference"):
            (c1(xr)[0] * w).sum().backward()
        assert rel_err(xa.grad, xr.grad) < 1e-12 and _param_err(layer, c1) < 1e-10, backend


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_writes_between_forward_and_backward_raise_or_change_nothing(name, dtype):
    g = torch.Generator().manual_seed(2)
    v = torch.randn(2, 7, H, generator=g, dtype=dtype)
    w = torch.randn(2, 7, H, generator=g, dtype=dtype)
    layer0 = _build(name, dtype)
    h0 = _random_state(layer0, 2, g)
    for backend in runnable_backends(layer0):
        for what in ("x", "state", "param"):
            layer, clean = copy.deepcopy(layer0), copy.deepcopy(layer0)
            x = v.clone()
            st = state_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, h0)
            with ops.use_backend(backend):
                (clean(v.clone(), state=h0)[0] * w).sum().backward()
                y, _ = layer(x, state=st)
            with torch.no_grad():
                if what == "x":
                    x.mul_(2)
                elif what == "state":
                    for t in leaves(st):
                        if _floating(t):
                            t.mul_(2)
                else:
                    for p in layer.parameters():
                        p.mul_(1.5)
            try:
                (y * w).sum().backward()
            except RuntimeError as e:
                assert "inplace" in str(e), (backend, what, str(e)[:200])
                continue
            tol = 1e-12 if dtype == F64 else 1e-6
            assert max(rel_err(p.grad, q.grad) for p, q in zip(layer.parameters(), clean.parameters())
                       if q.grad is not None) < tol, (backend, what)


# ---------------------------------------------------------------------------------------------------------------------
# 6. the sequence model


def _model(name, dtype=F64, d_model=4, **kw):
    torch.manual_seed(1)
    return SequenceModel(d_input=2, d_model=d_model, n_layers=2, layer=name, layer_options=dict(variants(name)[0]),
                         d_output=3, head="regress", pool=None, dtype=dtype, **kw)


BLOCK_OPTIONS = [{}, {"norm": "batch", "prenorm": False, "mixer_out": "linear", "activation": "tanh"},
                 {"norm": "rms", "mixer_out": "glu", "activation": "silu"}, {"norm": None, "mixer_out": None}]


@pytest.mark.parametrize("name", NAMES)
def test_sequence_model_with_input_layouts_and_block_options(name):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 7, 2, generator=g, dtype=F64)
    w = torch.randn(2, 7, 3, generator=g, dtype=F64)
    layouts = [(lambda v: v.transpose(0, 1).contiguous(), lambda s: s.transpose(0, 1)),
               (lambda v: v.transpose(1, 2).contiguous(), lambda s: s.transpose(1, 2)),
               (lambda v: torch.stack([v, v], 2).flatten(1, 2), lambda s: s[:, 1::2]),
               (lambda v: v[:1].clone(), lambda s: s.expand(2, -1, -1))]
    backends = ("auto",) + runnable_backends(_build(name))
    for k, options in enumerate(BLOCK_OPTIONS):
        model0 = _model(name, **options)
        for i, backend in enumerate(backends):
            store, view = layouts[(i + k) % len(layouts)]
            model, y, base, ref, yr, ref_base = _beside_reference(model0, backend, store, view, values, w)
            where = (options, backend)
            assert rel_err(y, yr) < 1e-12, where
            assert rel_err(base.grad, ref_base.grad) < 1e-12, where
            assert _param_err(model, ref, floor=1e-3) < 1e-10, where  # the post-norm blocks' out biases


@pytest.mark.parametrize("name", STEP_LAYERS)
def test_sequence_model_step_from_noncontiguous_states_equals_forward(name):
    g = torch.Generator().manual_seed(7)
    model = _model(name).eval()
    x = torch.randn(2, 6, 2, generator=g, dtype=F64)
    h0 = [_random_state(b.layer, 2, g) for b in model.blocks]
    with ops.use_backend("reference"):
        y_ref, h_ref = model(x, state=h0)
    for kind in ("transposed", "expanded"):
        given = h0 if kind == "transposed" else [state_map(lambda t: t[:1].expand(t.shape).contiguous()
                                                           if _floating(t) else t, h) for h in h0]
        if kind == "expanded":
            with ops.use_backend("reference"):
                y_ref, h_ref = model(x, state=given)
        with torch.no_grad():
            h = [_view_state(s, kind, []) for s in given]
            xs = x.transpose(1, 2).contiguous().transpose(1, 2)  # x[:, t] strided
            ys = []
            for t in range(x.shape[1]):
                y_t, h = model.step(xs[:, t], h)
                ys.append(y_t)
            y_steps = torch.stack(ys, 1)
            with ops.use_backend("auto"):
                y_fwd, h_fwd = model(xs, state=[_view_state(s, kind, []) for s in given])
        assert rel_err(y_steps, y_ref) < 1e-10, kind
        assert rel_err(y_fwd, y_ref) < 1e-12, kind
        assert max(rel_err(a, b) for a, b in zip(leaves(h), leaves(h_ref))) < 1e-10, kind
        assert max(rel_err(a, b) for a, b in zip(leaves(h_fwd), leaves(h_ref))) < 1e-12, kind


@pytest.mark.parametrize("name", ["s4d", "mamba", "mamba2", "rglru"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_row_blocked_projections_with_a_channels_last_input(name, dtype, monkeypatch):
    """B·L = 4 200 rows > 2 blocks of ``ROW_BLOCK``: the blocked GEMMs of the projections and the Block's GLU run; a
    channels-last input gives what the unblocked ``F.linear`` path gives on a contiguous copy."""
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 2100, 2, generator=g, dtype=dtype)
    w = torch.randn(2, 2100, 3, generator=g, dtype=dtype)
    model0 = _model(name, dtype)
    blocked = []
    real_blocked = rows._blocked
    monkeypatch.setattr(rows, "_blocked", lambda x, wt: blocked.append(real_blocked(x, wt)) or blocked[-1])
    model = copy.deepcopy(model0)
    base = values.transpose(1, 2).contiguous().requires_grad_()
    y, _ = model(base.transpose(1, 2))
    (y * w).sum().backward()
    assert any(blocked)
    monkeypatch.setattr(rows, "_blocked", lambda x, wt: False)
    ref = copy.deepcopy(model0)
    xr = values.clone().requires_grad_()
    yr, _ = ref(xr)
    (yr * w).sum().backward()
    tol = 1e-13 if dtype == F64 else 3e-6
    assert rel_err(y, yr) < tol
    assert rel_err(base.grad.transpose(1, 2), xr.grad) < tol
    assert _param_err(model, ref) < 100 * tol


# ---------------------------------------------------------------------------------------------------------------------
# 7. segment resets given transposed; bidirectional layers


def test_rglru_resets_from_a_transposed_mask_equal_the_segments_run_alone():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, L, H, generator=g, dtype=F64)
    starts = {0: [0, 3, 4], 1: [0, 6]}
    mask = torch.zeros(L, 2, dtype=torch.bool)
    for b, ss in starts.items():
        mask[ss, b] = True
    for opts in variants("rglru"):
        torch.manual_seed(1)
        layer = layers.build("rglru", d_model=H, dtype=F64, **opts)
        parts = []
        with ops.use_backend("reference"):
            for b, ss in starts.items():
                bounds = ss + [L]
                parts.append(torch.cat([layer(x[b:b + 1, s:e], resets=torch.arange(e - s).eq(0)[None])[0]
                                        for s, e in zip(bounds[:-1], bounds[1:])], 1))
        want = torch.cat(parts, 0)
        for backend in runnable_backends(layer):
            with ops.use_backend(backend):
                y, _ = layer(x.transpose(0, 1).contiguous().transpose(0, 1), resets=mask.t())
            assert rel_err(y, want) < 1e-12, (opts, backend)


BIDIRECTIONAL = ["dlr", "dss", "ema", "lru", "mega", "s4", "s4d", "s5", "sgconv"]


@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_bidirectional_layers_with_strided_and_expanded_inputs(name):
    g = torch.Generator().manual_seed(2)
    values = torch.randn(2, L, H, generator=g, dtype=F64)
    w = torch.randn(2, L, H, generator=g, dtype=F64)
    layer0 = _build(name, bidirectional=True)
    layouts = [(lambda v: v.transpose(1, 2).contiguous(), lambda s: s.transpose(1, 2)),
               (lambda v: torch.stack([v, v], 2).flatten(1, 2), lambda s: s[:, 1::2]),
               (lambda v: v[:1].clone(), lambda s: s.expand(2, -1, -1))]
    for backend in runnable_backends(layer0):
        for store, view in layouts:
            layer, y, base, ref, yr, ref_base = _beside_reference(layer0, backend, store, view, values, w)
            assert rel_err(y, yr) < 1e-12, backend
            assert rel_err(base.grad, ref_base.grad) < 1e-12, backend
            assert _param_err(layer, ref) < 1e-10, backend
