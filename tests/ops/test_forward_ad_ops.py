"""Forward-mode AD through the ops: the ``jvp`` of every ``torch.autograd.Function`` that has one, the detector
``ssmkit.ops.backend.forward_ad_active`` and the routing it drives.

Each ``jvp`` is checked, in float64, against the forward-AD tangent of the op's reference (a loop or the direct formula,
whose every step PyTorch differentiates itself) or against a closed form, under ``torch.autograd.forward_ad`` and
``torch.func.jvp``; at sizes with several chunks or blocks, so that the carries between them are differentiated too.
Forward over reverse (``torch.func.jvp`` of ``torch.func.grad``, the Hessian-vector product that ``torch.func.hessian``
is made of) is checked against reverse over reverse through the reference. Tolerance 1e-10 relative: the two sides
differ by summation order only (observed <= 1e-13).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import func

import ssmkit.ops as ops
from ssmkit.ops import cauchy as cauchy_module
from ssmkit.ops import triton_gate
from ssmkit.ops.backend import forward_ad_active, tracing
from ssmkit.ops.cauchy import cauchy_matmul, cauchy_reference
from ssmkit.ops.chunked import transpose
from ssmkit.ops.discretize import _Expm1
from ssmkit.ops.fftconv import bidirectional_conv_fft, bidirectional_conv_reference, causal_conv_fft, causal_conv_reference
from ssmkit.ops.function_call import apply_function, jvp_twin
from ssmkit.ops.opaque import custom_ops_allowed
from ssmkit.ops.powers import power_table
from ssmkit.ops.recurrence import _LinearRecurrence, linear_recurrence_chunked, linear_recurrence_reference
from ssmkit.ops.rglru import MAX_SQRT_GRADIENT, rglru, sqrt_bounded_gradient
from ssmkit.ops.selective import selective_scan_chunked, selective_scan_reference
from tests.conftest import DEVICE, rel_err

TOL = 1e-10
F64, C128 = torch.float64, torch.complex128


def rand(*shape, dtype=F64, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(*shape, dtype=dtype, generator=g).to(DEVICE)


def tangent_of(fn, primals, tangents):
    """The forward-AD tangents of ``fn(*primals)`` (a tensor or a tuple of tensors) under ``torch.autograd.forward_ad``
    (a None primal passes as None)."""
    with fwAD.dual_level():
        duals = [None if p is None else fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        out = fn(*duals)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(fwAD.unpack_dual(o).tangent for o in outs)


def assert_close(got, want, tol=TOL):
    for g, w in zip(got, want, strict=True):
        assert g is not None and g.shape == w.shape and rel_err(g, w) < tol


def hvp_pair(loss, ref_loss, primals, tangents):
    """(forward over reverse: jvp of grad of ``loss``; reverse over reverse: the gradient of ⟨∇ ``ref_loss``, v⟩)."""
    n = len(primals)
    _, got = func.jvp(func.grad(loss, argnums=tuple(range(n))), tuple(primals), tuple(tangents))
    leaves = [p.clone().requires_grad_() for p in primals]
    grads = torch.autograd.grad(ref_loss(*leaves), leaves, create_graph=True)
    dot = sum((g * t.conj()).real.sum() if g.is_complex() else (g * t).sum() for g, t in zip(grads, tangents))
    want = torch.autograd.grad(dot, leaves)
    return got, want


# --------------------------------------------------------------------------------------------------
# the detector and the routing


def test_forward_ad_active_in_each_context():
    seen = {}

    def probe(key):
        def f(x):
            seen[key] = (forward_ad_active(), tracing(), custom_ops_allowed())
            return x * 2
        return f

    x = torch.randn(3, dtype=F64)
    probe("eager")(x)
    with fwAD.dual_level():
        probe("dual_level")(x)  # inside the level: plain tensors too
        probe("dual")(fwAD.make_dual(x, x))
    func.jvp(probe("jvp"), (x,), (x,))
    func.jacfwd(probe("jacfwd"))(x)
    func.hessian(lambda x: probe("hessian")(x).sum())(x)
    func.vmap(probe("vmap"))(x[None])
    func.grad(lambda x: probe("grad")(x).sum())(x)
    func.vmap(lambda x: func.jvp(probe("vmap(jvp)"), (x,), (x,))[1])(x[None])
    # a jvp transform seen on functorch's interpreter stack alone (the dual level's counter hidden while it runs)
    def hidden_level(x):
        level, fwAD._current_level = fwAD._current_level, -1
        try:
            seen["jvp, no dual level"] = (forward_ad_active(), tracing(), custom_ops_allowed())
        finally:
            fwAD._current_level = level
        return x * 2

    func.jvp(hidden_level, (x,), (x,))
    assert seen["eager"] == (False, False, True)
    assert seen["jvp, no dual level"] == (True, True, False)
    for key in ("dual_level", "dual", "jvp", "jacfwd", "hessian", "vmap(jvp)"):
        assert seen[key] == (True, True, False), key
    for key in ("vmap", "grad"):  # transforms without a jvp: traced (functional paths), no forward AD
        assert seen[key] == (False, True, False), key


def test_forced_kernel_backends_raise_under_forward_ad():
    u, delta = rand(2, 5, 3, seed=0), rand(2, 5, 3, seed=1)
    A, Bm = -torch.rand(3, 2, dtype=F64).to(DEVICE) - 0.5, rand(2, 5, 2, seed=2)
    message = "backend 'native' cannot run under forward-mode AD"
    with fwAD.dual_level():
        u_d = fwAD.make_dual(u, torch.ones_like(u))
        with pytest.raises(RuntimeError, match=message):
            ops.selective_scan(u_d, delta, A, Bm, Bm, backend="native")
        with pytest.raises(RuntimeError, match=message):
            ops.linear_recurrence(torch.rand_like(u), u_d, backend="native")
        with pytest.raises(RuntimeError, match=message), ops.use_backend("native"):
            ops.causal_conv1d(u_d, rand(3, 4, seed=3))
        with pytest.raises(RuntimeError, match=message):  # the RG-LRU's forced kernel is chosen outside dispatch
            rglru(u_d, torch.rand_like(u), torch.rand_like(u), rand(3, seed=4), backend="native")
        with pytest.raises(RuntimeError, match="backend 'triton' cannot run under forward-mode AD"):
            ops.selective_scan(u_d, delta, A, Bm, Bm, backend="triton")
        with pytest.raises(RuntimeError, match="backend 'triton' cannot run under forward-mode AD"):
            triton_gate.selective_scan_triton(u_d, delta, A, Bm, Bm)  # its own check, before any availability
    with pytest.raises(RuntimeError, match=message):
        func.jvp(lambda u: ops.selective_scan(u, delta, A, Bm, Bm, backend="native")[0], (u,), (u,))


def test_a_twin_must_add_jvp_to_a_function_without_one():
    class Base(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return 2 * x

    with pytest.raises(TypeError, match="the twin of Base must be a subclass of it that defines jvp"):
        jvp_twin(Base)(type("NoJvp", (Base,), {}))
    with pytest.raises(TypeError, match="the twin of Base must be a subclass of it that defines jvp"):
        jvp_twin(Base)(type("Other", (torch.autograd.Function,), {"jvp": staticmethod(lambda ctx, x: x)}))
    with_jvp = type("WithJvp", (Base,), {"jvp": staticmethod(lambda ctx, x: 2 * x)})
    with pytest.raises(TypeError, match="WithJvp defines jvp itself"):
        jvp_twin(with_jvp)(type("Twin", (with_jvp,), {"jvp": staticmethod(lambda ctx, x: 2 * x)}))


# --------------------------------------------------------------------------------------------------
# _LinearRecurrence: ḣ_t = a_t ḣ_{t-1} + ȧ_t h_{t-1} + ḃ_t by the same chunked scan


RECURRENCE_CASES = [(dtype, invariant, with_h0) for dtype in (F64, C128) for invariant in (False, True)
                    for with_h0 in (False, True)]


def recurrence_inputs(dtype, invariant, with_h0, seed=0, S=(3,)):
    g = torch.Generator().manual_seed(seed)
    Bsz, L = 2, 11
    shape = S if invariant else (Bsz, L, *S)
    a = (0.3 + 0.65 * torch.rand(*shape, dtype=F64, generator=g)).to(dtype)  # |a| < 1
    if dtype == C128:
        a = a * torch.exp(1j * torch.rand(*shape, dtype=F64, generator=g))
    b = torch.randn(Bsz, L, *S, dtype=dtype, generator=g)
    h0 = torch.randn(Bsz, *S, dtype=dtype, generator=g) if with_h0 else None
    return [t if t is None else t.to(DEVICE) for t in (a, b, h0)]


@pytest.mark.parametrize("dtype,invariant,with_h0", RECURRENCE_CASES)
def test_recurrence_jvp_equals_the_loop(dtype, invariant, with_h0):
    primals = recurrence_inputs(dtype, invariant, with_h0)
    tangents = [None if p is None else torch.randn_like(p) for p in primals]
    fast = lambda a, b, h0: linear_recurrence_chunked(a, b, h0, chunk_size=4)  # noqa: E731  (3 chunks of 11 steps)
    want = tangent_of(linear_recurrence_reference, primals, tangents)
    assert_close(tangent_of(fast, primals, tangents), want)
    n = 3 if with_h0 else 2
    _, got = func.jvp(lambda *p: fast(*p, *([None] * (3 - n))), tuple(primals[:n]), tuple(tangents[:n]))
    assert_close(got, want)
    # a tangent on b alone (ȧ None inside the jvp), and on h0 alone
    b_only = [torch.zeros_like(primals[0]), tangents[1], None if not with_h0 else torch.zeros_like(primals[2])]
    with fwAD.dual_level():
        got_b = fwAD.unpack_dual(fast(primals[0], fwAD.make_dual(primals[1], tangents[1]), primals[2])[0]).tangent
    assert rel_err(got_b, tangent_of(linear_recurrence_reference, primals, b_only)[0]) < TOL


def test_recurrence_jvp_with_a_channel_shape_and_gate_logs():
    # S = (3, 2) channels; real gates with their logs given (the chunk products as exp(Σ log a), RG-LRU's)
    a, b, h0 = recurrence_inputs(F64, False, True, seed=1, S=(3, 2))
    log_a = a.log()
    tangents = [torch.randn_like(t) for t in (a, b, h0)]
    fast = lambda a, b, h0: linear_recurrence_chunked(a, b, h0, chunk_size=4, log_a=log_a)  # noqa: E731
    assert_close(tangent_of(fast, (a, b, h0), tangents), tangent_of(linear_recurrence_reference, (a, b, h0), tangents))


@pytest.mark.parametrize("dtype", [F64, C128])
def test_recurrence_jvp_backwards_in_time(dtype):
    # the reversed direction (the adjoint scan, whose jvp forward over reverse runs): the loop on the flipped inputs
    a, b, h0 = recurrence_inputs(dtype, False, True, seed=2)
    tangents = [torch.randn_like(t) for t in (a, b, h0)]
    fast = lambda a, b, h0: apply_function(_LinearRecurrence, a, b, h0, 4, True, None, 0)  # noqa: E731
    flipped = lambda a, b, h0: linear_recurrence_reference(a.flip(1), b.flip(1), h0)[0].flip(1)  # noqa: E731
    assert_close(tangent_of(fast, (a, b, h0), tangents), tangent_of(flipped, (a, b, h0), tangents))


@pytest.mark.parametrize("invariant", [False, True])
def test_recurrence_forward_over_reverse(invariant):
    a, b, h0 = recurrence_inputs(F64, invariant, True, seed=3)
    w = torch.randn_like(b)

    def loss(fn):
        return lambda a, b, h0: (torch.sin(fn(a, b, h0)[0]) * w).sum() + fn(a, b, h0)[1].square().sum()

    fast = lambda a, b, h0: linear_recurrence_chunked(a, b, h0, chunk_size=4)  # noqa: E731
    tangents = [torch.randn_like(t) for t in (a, b, h0)]
    assert_close(*hvp_pair(loss(fast), loss(linear_recurrence_reference), (a, b, h0), tangents))


# --------------------------------------------------------------------------------------------------
# _SelectiveScan: the tangent recurrence beside the recomputed states, chunk by chunk


def selective_inputs(grouped: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Bsz, L, H, N = 2, 11, 4, 3
    r = lambda *s: torch.randn(*s, dtype=F64, generator=g).to(DEVICE)  # noqa: E731
    BC = (Bsz, L, 2, N) if grouped else (Bsz, L, N)
    A = (-0.5 - torch.rand(H, N, dtype=F64, generator=g)).to(DEVICE)
    return [r(Bsz, L, H), 0.5 * r(Bsz, L, H), A, r(*BC), r(*BC), r(H), r(Bsz, L, H), r(H), r(Bsz, H, N)]


def selective(fn, **kw):
    """fn(u, δ, A, B, C, D, z, b_Δ, softplus, state) with softplus on, as a function of the nine tensors."""
    return lambda u, d, A, Bm, C, D, z, b, s: fn(u, d, A, Bm, C, D, z, b, True, s, **kw)


@pytest.mark.parametrize("grouped", [False, True])
def test_selective_jvp_equals_the_loop(grouped):
    primals = selective_inputs(grouped)
    tangents = [torch.randn_like(p) for p in primals]
    fast = selective(selective_scan_chunked, chunk_size=4)  # 3 chunks of 11 steps
    want = tangent_of(selective(selective_scan_reference), primals, tangents)
    assert_close(tangent_of(fast, primals, tangents), want)
    _, got = func.jvp(fast, tuple(primals), tuple(tangents))
    assert_close(got, want)
    # tangents on some inputs only (the jvp's None branches): Δ and C, then u and the state
    for picked in ((1, 4), (0, 8), (2,), (3,)):
        part = [t if i in picked else torch.zeros_like(t) for i, t in enumerate(tangents)]
        with fwAD.dual_level():
            args = [fwAD.make_dual(p, t) if i in picked else p for i, (p, t) in enumerate(zip(primals, tangents))]
            got = tuple(fwAD.unpack_dual(o).tangent for o in fast(*args))
        assert_close(got, tangent_of(selective(selective_scan_reference), primals, part))


def test_selective_forward_over_reverse():
    # the backward recomputes its chunk starts under forward AD (the saved ones carry no tangent)
    primals = selective_inputs(True, seed=1)
    w = torch.randn_like(primals[0])

    def loss(fn):
        return lambda *p: (torch.tanh(fn(*p)[0]) * w).sum() + fn(*p)[1].square().sum()

    tangents = [torch.randn_like(p) for p in primals]
    got, want = hvp_pair(loss(selective(selective_scan_chunked, chunk_size=4)), loss(selective(selective_scan_reference)),
                         primals, tangents)
    assert_close(got, want)
    # and by torch.autograd.forward_ad alone (the backward under a dual level, grad mode off); without the gate z:
    # PyTorch's silu_backward has no forward derivative (torch 2.13; torch.func decomposes it)
    keep = [0, 1, 2, 3, 4, 5, 7, 8]  # u, δ, A, B, C, D, b_Δ, h0

    def loss_no_gate(fn, **kw):
        def run(u, d, A, Bm, C, D, b, s):
            y, h = fn(u, d, A, Bm, C, D, None, b, True, s, **kw)
            return (torch.tanh(y) * w).sum() + h.square().sum()
        return run

    fast = loss_no_gate(selective_scan_chunked, chunk_size=4)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(primals[i].clone().requires_grad_(), tangents[i]) for i in keep]
        got = tuple(fwAD.unpack_dual(g).tangent for g in torch.autograd.grad(fast(*duals), duals))
    want = hvp_pair(fast, loss_no_gate(selective_scan_reference), [primals[i] for i in keep], [tangents[i] for i in keep])[1]
    assert_close(got, want)


# --------------------------------------------------------------------------------------------------
# _CircularConv, _CauchyMatmul, _PowerTable, _Expm1, _SqrtBoundedGradient, _Transpose


@pytest.mark.parametrize("two_sided", [False, True])
def test_fft_convolution_jvp_and_forward_over_reverse(two_sided):
    u = rand(2, 9, 3, seed=0)
    K = rand(*((2, 3, 12) if two_sided else (3, 12)), seed=1)
    fast, ref = (bidirectional_conv_fft, bidirectional_conv_reference) if two_sided else (causal_conv_fft, causal_conv_reference)
    tangents = [rand(*u.shape, seed=2), rand(*K.shape, seed=3)]
    want = tangent_of(ref, (u, K), tangents)
    assert_close(tangent_of(fast, (u, K), tangents), want)
    assert_close((func.jvp(fast, (u, K), tuple(tangents))[1],), want)
    assert_close(tangent_of(lambda u: fast(u, K), (u,), tangents[:1]), tangent_of(lambda u: ref(u, K), (u,), tangents[:1]))
    w = rand(*u.shape, seed=4)
    loss = lambda fn: lambda u, K: (torch.tanh(fn(u, K)) * w).sum()  # noqa: E731
    assert_close(*hvp_pair(loss(fast), loss(ref), (u, K), tangents))
    # forward over reverse by torch.autograd.forward_ad alone: the gradients' tangents (∂u's depends on k̇ through the
    # backward's spectra, which it recomputes from the dual inputs)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p.clone().requires_grad_(), t) for p, t in zip((u, K), tangents)]
        grads = torch.autograd.grad(loss(fast)(*duals), duals)
        got = tuple(fwAD.unpack_dual(g).tangent for g in grads)
    assert_close(got, hvp_pair(loss(fast), loss(ref), (u, K), tangents)[1])


@pytest.mark.parametrize("blocks", [1, 3])
def test_cauchy_jvp_equals_the_formula(blocks, monkeypatch):
    G, S, N, W = 3, 2, 5, 7
    if blocks > 1:  # 3 points per block (the blocks' size in bytes: G·N·3 complex128 values)
        monkeypatch.setattr(cauchy_module, "_BLOCK_BYTES", G * N * 3 * 16)
    c = lambda *s, seed: torch.complex(rand(*s, seed=seed), rand(*s, seed=seed + 50))  # noqa: E731
    v, z, w = c(S, G, N, seed=0), c(G, W, seed=1), c(G, N, seed=2)
    tangents = [c(S, G, N, seed=3), c(G, W, seed=4), c(G, N, seed=5)]
    want = tangent_of(cauchy_reference, (v, z, w), tangents)
    assert_close(tangent_of(cauchy_matmul, (v, z, w), tangents), want)
    for i in range(3):  # each input's tangent alone
        part = [t if j == i else torch.zeros_like(t) for j, t in enumerate(tangents)]
        with fwAD.dual_level():
            args = [fwAD.make_dual(p, tangents[i]) if j == i else p for j, p in enumerate((v, z, w))]
            got = fwAD.unpack_dual(cauchy_matmul(*args)).tangent
        assert rel_err(got, tangent_of(cauchy_reference, (v, z, w), part)[0]) < TOL
    # forward over reverse, on real views of the complex inputs (torch.func.grad needs real inputs)
    loss = lambda fn: lambda vr, wr: fn(torch.view_as_complex(vr), z, torch.view_as_complex(wr)).abs().square().sum()  # noqa: E731
    real = [torch.view_as_real(t).contiguous() for t in (v, w)]
    assert_close(*hvp_pair(loss(cauchy_matmul), loss(cauchy_reference), real,
                           [torch.view_as_real(t).contiguous() for t in (tangents[0], tangents[2])]))


@pytest.mark.parametrize("dtype", [F64, C128])
def test_power_table_jvp(dtype):
    a = torch.tensor([0.0, 0.7, -1.3, 2.0], dtype=F64).to(dtype).to(DEVICE)
    if dtype == C128:
        a = a * torch.exp(0.4j * torch.ones_like(a))
    a_dot = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype).to(DEVICE)
    (got,) = tangent_of(lambda a: power_table(a, 6), (a,), (a_dot,))
    powers = [torch.ones_like(a)]  # a^0 .. a^4 by repeated products (complex 0 ** 0 is NaN in torch)
    for _ in range(4):
        powers.append(powers[-1] * a)
    want = torch.stack([torch.zeros_like(a)] + [k * powers[k - 1] * a_dot for k in range(1, 6)], dim=-1)  # k a^{k-1} ȧ
    assert rel_err(got, want) < TOL
    assert got[0].tolist() == [0, 1, 0, 0, 0, 0]  # at a = 0: d(a^k)/da = 1 for k = 1 only (by hand), times ȧ = 1


def test_expm1_jvp_is_exp():
    # ż e^z, also where Re z << 0 (e^z ≈ 0, not expm1's rounding); by hand at z = 0: ż
    z = torch.tensor([0.0, 1e-8 + 2j, -40.0 + 1j, 3.0 - 1j], dtype=C128).to(DEVICE)
    z_dot = torch.tensor([1.5, 1j, 2.0, -1.0 + 0.5j], dtype=C128).to(DEVICE)
    (got,) = tangent_of(lambda z: apply_function(_Expm1, z), (z,), (z_dot,))
    assert rel_err(got, z_dot * torch.exp(z)) < 1e-15 and got[0] == 1.5
    assert abs(got[2] - 2.0 * math.exp(-40.0) * complex(math.cos(1), math.sin(1))) < 1e-30


def test_sqrt_bounded_gradient_jvp_matches_its_backward():
    v = torch.tensor([4.0, 0.25, 1e-12, 0.0], dtype=F64).to(DEVICE)
    v_dot = torch.tensor([1.0, 2.0, 3.0, 1.0], dtype=F64).to(DEVICE)
    (got,) = tangent_of(sqrt_bounded_gradient, (v,), (v_dot,))
    # by hand: 1/(2√v) = 1/4, 1; clipped at G = 1000 where 4v < 1/G² (v = 1e-12, v = 0)
    assert torch.allclose(got, torch.tensor([0.25, 2.0, 3 * MAX_SQRT_GRADIENT, MAX_SQRT_GRADIENT], dtype=F64).to(DEVICE))
    fwd = func.jacfwd(sqrt_bounded_gradient)(v)
    rev = func.jacrev(sqrt_bounded_gradient)(v)
    assert torch.equal(fwd, rev)


def test_transpose_jvp():
    x, x_dot = rand(4, 3, seed=0), rand(4, 3, seed=1)
    (got,) = tangent_of(transpose, (x,), (x_dot,))
    assert torch.equal(got, x_dot.t()) and got.is_contiguous()
    assert torch.equal(func.jvp(transpose, (x,), (x_dot,))[1], x_dot.t())


# --------------------------------------------------------------------------------------------------
# attention: PyTorch's math kernel under forward AD (the CPU flash kernel has no forward derivative)


@pytest.mark.parametrize("Lq,K,window", [(9, 9, None), (9, 9, 3), (1, 6, None), (4, 9, 5)])
def test_attention_jvp(Lq, K, window):
    q, k, v = rand(2, 2, Lq, 4, seed=0), rand(2, 2, K, 4, seed=1), rand(2, 2, K, 4, seed=2)
    tangents = [rand(*t.shape, seed=3 + i) for i, t in enumerate((q, k, v))]
    fast = lambda q, k, v: ops.causal_attention(q, k, v, window, backend="chunked")  # noqa: E731
    ref = lambda q, k, v: ops.causal_attention_reference(q, k, v, window)  # noqa: E731
    want = tangent_of(ref, (q, k, v), tangents)
    assert_close(tangent_of(fast, (q, k, v), tangents), want)
    assert_close((func.jvp(fast, (q, k, v), tuple(tangents))[1],), want)
