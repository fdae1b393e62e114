"""Tests of ssmkit.ops.recurrence: h_t = a_t ⊙ h_{t-1} + b_t over (B, L, *S), time-varying or time-invariant gates.

The chunked scan is compared with the loop on states and every gradient (float64), on hand values, on resets
(a = 0) and huge gates, and under torch.func (tests/ops/test_func.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.ops.backend import use_backend
from ssmkit.ops.recurrence import linear_recurrence, linear_recurrence_chunked, linear_recurrence_reference
from tests.conftest import rel_err

TOL64 = 1e-10  # float64: sums of the same terms in another order; observed ~1e-15..1e-14
Bsz = 2


# ----------------------------------------------------------------------------------------------------
# linear_recurrence
# ----------------------------------------------------------------------------------------------------


def make_gates(L: int, dtype: torch.dtype, device: torch.device, D: int = 5):
    a = torch.rand(Bsz, L, D, dtype=torch.float64) * 1.2 - 0.1  # some negative, some > 1
    if dtype.is_complex:
        a = torch.polar(a.abs(), math.pi * (2 * torch.rand_like(a) - 1))
    a[:, L // 2] = 0  # a reset in the middle
    b = torch.randn(Bsz, L, D, dtype=dtype)
    return a.to(device=device, dtype=dtype), b.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("L", [1, 13, 64, 200])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64])
def test_linear_recurrence_chunked_equals_reference(chunk_size, L, with_h0, dtype, device):
    a, b = make_gates(L, dtype, device)
    h0 = torch.randn(Bsz, 5, dtype=dtype, device=device) if with_h0 else None
    h, h_last = linear_recurrence_chunked(a, b, h0, chunk_size=chunk_size)
    h_ref, h_last_ref = linear_recurrence_reference(a, b, h0)
    assert h.shape == (Bsz, L, 5) and h.dtype == dtype and h_last.shape == (Bsz, 5)
    # the chunked path reassociates products of <= T gates: float32 rounding differs by ~T·eps (gates up to 1.1)
    tol = 1e-5 if dtype in (torch.float32, torch.complex64) else TOL64
    assert rel_err(h, h_ref) < tol
    assert rel_err(h_last, h_last_ref) < tol
    assert rel_err(h_last, h[:, -1]) == 0.0
    with use_backend("reference"):
        assert rel_err(linear_recurrence(a, b, h0)[0], h_ref) == 0.0
    assert rel_err(linear_recurrence(a, b, h0)[0], h_ref) < tol


def test_linear_recurrence_hand_value(device):
    # a = [0.5, 0, 0.5], b = [1, 2, 0], h0 = 4: h = [0.5·4 + 1, 0·3 + 2, 0.5·2 + 0] = [3, 2, 1]
    a = torch.tensor([[[0.5], [0.0], [0.5]]], dtype=torch.float64, device=device)
    b = torch.tensor([[[1.0], [2.0], [0.0]]], dtype=torch.float64, device=device)
    h0 = torch.full((1, 1), 4.0, dtype=torch.float64, device=device)
    for path in (linear_recurrence_reference, linear_recurrence_chunked):
        h, h_last = path(a, b, h0)
        torch.testing.assert_close(h, torch.tensor([[[3.0], [2.0], [1.0]]], dtype=torch.float64, device=device))
        torch.testing.assert_close(h_last, torch.full((1, 1), 1.0, dtype=torch.float64, device=device))


def test_linear_recurrence_large_gates(device):
    # |a| = 2 for 200 steps grows to 2^200 ~ 1.6e60: products only, so no overflow or loss in float64
    a = torch.full((1, 200, 2), 2.0, dtype=torch.float64, device=device)
    b = torch.randn(1, 200, 2, dtype=torch.float64, device=device)
    h, _ = linear_recurrence_chunked(a, b, chunk_size=16)
    h_ref, _ = linear_recurrence_reference(a, b)
    assert rel_err(h, h_ref) < TOL64


def test_linear_recurrence_wide_input_runs_one_chunk(device):
    # B·H >= 8192: chunk_size=None runs a single chunk (the plain loop); same states as the reference
    a, b = make_gates(13, torch.float64, device, D=4096)
    h, h_last = linear_recurrence_chunked(a, b)
    h_ref, _ = linear_recurrence_reference(a, b)
    assert rel_err(h, h_ref) < TOL64


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_linear_recurrence_gradients(dtype, device):
    a, b = make_gates(7, dtype, device, D=2)
    h0 = torch.randn(Bsz, 2, dtype=dtype, device=device)
    inputs = [t.clone().requires_grad_() for t in (a, b, h0)]
    assert torch.autograd.gradcheck(lambda *x: linear_recurrence_chunked(*x, chunk_size=3), inputs)
    # the backward is the same Function in reverse time, so second-order gradients work too
    assert torch.autograd.gradgradcheck(lambda *x: linear_recurrence_chunked(*x, chunk_size=3), inputs)
    a, b = make_gates(200, dtype, device)
    h0 = torch.randn(Bsz, 5, dtype=dtype, device=device)
    gh, gl = torch.randn_like(b), torch.randn_like(h0)
    grads = []
    for path in (linear_recurrence_reference, linear_recurrence_chunked):
        inputs = [t.clone().requires_grad_() for t in (a, b, h0)]
        h, h_last = path(*inputs)
        loss = (h * gh.conj()).real.sum() + (h_last * gl.conj()).real.sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for name, g, g_ref in zip(("a", "b", "h0"), grads[1], grads[0]):
        assert rel_err(g, g_ref) < TOL64, name




@pytest.mark.parametrize(
    "a_shape, b_shape, a_dtype, b_dtype, h0_shape, match",
    [
        ((2, 13, 5), (2, 12, 5), torch.float64, torch.float64, None, r"a and b must both be \(B, L, H\)"),
        ((2, 0, 5), (2, 0, 5), torch.float64, torch.float64, None, r"a and b must have length L >= 1"),
        ((13, 5), (13, 5), torch.float64, torch.float64, None, r"a must be \(B, L, H\)"),
        ((2, 13, 5), (2, 13, 5), torch.float64, torch.complex128, None, r"a and b must share one dtype"),
        ((2, 13, 5), (2, 13, 5), torch.int64, torch.int64, None, r"a must be float32/float64 or complex"),
        ((2, 13, 5), (2, 13, 5), torch.float64, torch.float64, (2, 4), r"h0 must be \(B, H\) = \(2, 5\)"),
    ],
)
def test_linear_recurrence_bad_inputs(a_shape, b_shape, a_dtype, b_dtype, h0_shape, match, device):
    a = torch.zeros(a_shape, dtype=a_dtype, device=device)
    b = torch.zeros(b_shape, dtype=b_dtype, device=device)
    h0 = None if h0_shape is None else torch.zeros(h0_shape, dtype=a_dtype, device=device)
    for path in (linear_recurrence_reference, linear_recurrence_chunked):
        with pytest.raises(ValueError, match=match):
            path(a, b, h0)


# ----------------------------------------------------------------------------------------------------
# Any channel shape S, and time-invariant gates a of shape S
# ----------------------------------------------------------------------------------------------------


def make_invariant(S: tuple[int, ...], L: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """a (*S) with |a| in [0, 1.1] (one exact zero: a reset every step), b (B, L, *S), h0 (B, *S)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*S, dtype=torch.float64, generator=g) * 1.1
    if dtype.is_complex:
        a = torch.polar(a, math.pi * (2 * torch.rand(*S, dtype=torch.float64, generator=g) - 1))
    a.view(-1)[0] = 0
    b = torch.randn(Bsz, L, *S, dtype=dtype, generator=g)
    h0 = torch.randn(Bsz, *S, dtype=dtype, generator=g)
    return a.to(device=device, dtype=dtype), b.to(device), h0.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
@pytest.mark.parametrize("S", [(5,), (3, 4)])
@pytest.mark.parametrize("L", [1, 13, 200])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64])
def test_time_invariant_gate_equals_reference_and_expanded_gate(chunk_size, L, S, dtype, device):
    a, b, h0 = make_invariant(S, L, dtype, device)
    h, h_last = linear_recurrence_chunked(a, b, h0, chunk_size=chunk_size)
    h_ref, h_last_ref = linear_recurrence_reference(a, b, h0)
    assert h.shape == (Bsz, L, *S) and h_last.shape == (Bsz, *S) and h.dtype == dtype
    # the chunk carry multiplies a^T (binary powers) instead of T single gates: float32 rounding ~T·eps (|a| <= 1.1)
    tol = 1e-5 if dtype in (torch.float32, torch.complex64) else TOL64
    assert rel_err(h, h_ref) < tol and rel_err(h_last, h_last_ref) < tol
    # the same recurrence with the gate written out at every step
    h_tv, _ = linear_recurrence_reference(a.expand_as(b), b, h0)
    assert rel_err(h_ref, h_tv) == 0.0
    assert rel_err(linear_recurrence(a, b, h0, backend="reference")[0], h_ref) == 0.0


@pytest.mark.parametrize("S", [(5,), (3, 4)])
def test_time_varying_gate_over_several_channel_axes(S, device):
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(Bsz, 77, *S, dtype=torch.float64, generator=g) * 1.2 - 0.1).to(device)
    b = torch.randn(Bsz, 77, *S, dtype=torch.float64, generator=g).to(device)
    h, h_last = linear_recurrence_chunked(a, b, chunk_size=8)
    # (B, L, *S) is the flattened (B, L, H) recurrence, channel by channel
    h_flat, _ = linear_recurrence_reference(a.flatten(2), b.flatten(2))
    assert h.shape == (Bsz, 77, *S) and rel_err(h.flatten(2), h_flat) < TOL64 and rel_err(h_last, h[:, -1]) == 0.0


def test_time_invariant_hand_value(device):
    # a = 0.5, b = [1, 2, 0], h0 = 4: h = [0.5·4 + 1, 0.5·3 + 2, 0.5·3.5] = [3, 3.5, 1.75]
    a = torch.tensor([0.5], dtype=torch.float64, device=device)
    b = torch.tensor([[[1.0], [2.0], [0.0]]], dtype=torch.float64, device=device)
    h0 = torch.full((1, 1), 4.0, dtype=torch.float64, device=device)
    for path in (linear_recurrence_reference, lambda *x: linear_recurrence_chunked(*x, chunk_size=2)):
        h, h_last = path(a, b, h0)
        torch.testing.assert_close(h, torch.tensor([[[3.0], [3.5], [1.75]]], dtype=torch.float64, device=device))


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_time_invariant_gradients(dtype, device):
    a, b, h0 = make_invariant((2, 3), 7, dtype, device, seed=2)
    a = a + 0.3  # no exact zero: gradcheck's finite differences step across it otherwise
    inputs = [t.clone().requires_grad_() for t in (a, b, h0)]
    assert torch.autograd.gradcheck(lambda *x: linear_recurrence_chunked(*x, chunk_size=3), inputs)
    assert torch.autograd.gradgradcheck(lambda *x: linear_recurrence_chunked(*x, chunk_size=3), inputs)
    a, b, h0 = make_invariant((5,), 200, dtype, device, seed=3)
    gh, gl = torch.randn_like(b), torch.randn_like(h0)
    grads = []
    for path in (linear_recurrence_reference, linear_recurrence_chunked):
        inputs = [t.clone().requires_grad_() for t in (a, b, h0)]
        h, h_last = path(*inputs)
        loss = (h * gh.conj()).real.sum() + (h_last * gl.conj()).real.sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for name, g, g_ref in zip(("a", "b", "h0"), grads[1], grads[0]):
        assert g.shape == g_ref.shape and rel_err(g, g_ref) < TOL64, name


def test_time_invariant_gate_is_never_expanded(device):
    """No op of the forward or backward turns the (H,) gate into a tensor as large as b (B, L, H)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    H, L = 6, 256
    a, b, h0 = make_invariant((H,), L, torch.float64, device, seed=4)
    a = a.requires_grad_()

    class Watch(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            gate_in = any(isinstance(x, torch.Tensor) and tuple(x.shape) == (H,) for x in args)
            outs = out if isinstance(out, (tuple, list)) else [out]
            for o in outs:
                if gate_in and isinstance(o, torch.Tensor):
                    Watch.largest = max(Watch.largest, o.numel())
            return out

    with Watch():
        h, _ = linear_recurrence_chunked(a, b, h0)  # T = 64: 4 chunks
        h.square().sum().backward()
    assert 0 < Watch.largest <= Bsz * H * (L // 64)  # at most one (B, L/T, H) slice per op, never (B, L, H)
    assert a.grad.shape == (H,)


@pytest.mark.parametrize(
    "a_shape, b_shape, match",
    [
        ((4,), (2, 13, 5), r"a and b must both be .* or a must be the time-invariant channel shape S = \(5,\)"),
        ((2, 13, 4, 5), (2, 13, 5, 4), r"a and b must both be"),
        ((5,), (13, 5), r"a must be \(B, L, H\).*b \(B, L, \*S\) of 3 or more dimensions"),
    ],
)
def test_gate_shape_errors(a_shape, b_shape, match, device):
    a, b = torch.zeros(a_shape, device=device), torch.zeros(b_shape, device=device)
    for path in (linear_recurrence_reference, linear_recurrence_chunked, linear_recurrence):
        with pytest.raises(ValueError, match=match):
            path(a, b)
    with pytest.raises(ValueError, match=r"h0 must be \(B, H\) = \(2, 4, 3\)"):
        linear_recurrence(torch.zeros(4, 3), torch.zeros(2, 7, 4, 3), torch.zeros(2, 3, 4))


# ----------------------------------------------------------------------------------------------------
# Probe 21 (mutation testing): cases no test reached
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [linear_recurrence_reference, linear_recurrence_chunked])
def test_h0_of_another_dtype_and_arguments_on_another_device_are_named(path):
    # an h0 of another dtype was silently promoted by the loop (float32 h0 with float64 gates); the meta device
    # stands in for a second device on a CPU-only machine
    a = torch.rand(Bsz, 5, 3, dtype=torch.float64)
    b = torch.randn(Bsz, 5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"h0 must have the dtype of a \(torch.float64\); got torch.float32"):
        path(a, b, torch.zeros(Bsz, 3, dtype=torch.float32))
    # the h0 found is named by its shape, or by its type when it is no tensor
    with pytest.raises(ValueError, match=r"h0 must be \(B, H\) = \(2, 3\) \(\(B, \*S\): b's shape without L\); got \(2, 4\)$"):
        path(a, b, torch.zeros(Bsz, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"h0 must be \(B, H\) = \(2, 3\) .*; got list$"):
        path(a, b, [[0.0] * 3] * Bsz)
    with pytest.raises(ValueError, match="a and b must be on one device; got a on meta and b on cpu"):
        path(a.to("meta"), b)
    with pytest.raises(ValueError, match="a and b must be on one device; got a on cpu and b on meta"):
        path(a, b.to("meta"))
    for gate in (a, a[0, 0]):  # time-varying and time-invariant
        with pytest.raises(ValueError, match="h0 must be on a's device cpu; got meta"):
            path(gate, b, torch.zeros(Bsz, 3, dtype=torch.float64, device="meta"))


def _sequential_steps(fn) -> int:
    """The number of addcmul calls (one per sequential step of the scan) that fn makes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.overloadpacket is torch.ops.aten.addcmul
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


@pytest.mark.parametrize("invariant", [False, True])
def test_default_chunk_size_chunks_narrow_inputs_and_loops_over_wide_ones(invariant):
    # chunk_size=None: T = 64 while B·prod(S) < 8192 (2T + L/T steps: 63 + 4 + 64 = 131 at L = 200), one chunk of
    # T = L from 8192 on (L steps); the states equal the loop's either way
    L = 200
    for S, steps in (((4095, 2), 131), ((8191,), 131), ((4096, 2), L), ((8192,), L)):
        b = torch.randn(1, L, *S, dtype=torch.float64)
        a = torch.rand(*S, dtype=torch.float64) if invariant else torch.rand(1, L, *S, dtype=torch.float64)
        h = []
        assert _sequential_steps(lambda: h.append(linear_recurrence_chunked(a, b)[0])) == steps, S
        assert rel_err(h[0], linear_recurrence_reference(a, b)[0]) < TOL64


@pytest.mark.parametrize("invariant", [False, True])
def test_vmap_and_func_grad_over_several_chunks_with_slow_gates(invariant):
    # under torch.func the scan takes its out-of-place form (ops.backend.tracing); with gates near 1 (memory longer
    # than a chunk: 0.9 <= |a| <= 1.05) an error in any chunk's end state reaches every later state. Against the
    # float64 loop per sample, and the gradient of b against the adjoint loop λ_t = G_t + a_{t+1} λ_{t+1}.
    from torch import func

    g = torch.Generator().manual_seed(11)
    L, S, T = 13, (3,), 4  # 4 chunks, the last one partial
    shape = S if invariant else (Bsz, L, *S)
    a_s = 0.9 + 0.15 * torch.rand(2, *shape, dtype=torch.float64, generator=g)  # a batch of 2 gate sets
    b = torch.randn(Bsz, L, *S, dtype=torch.float64, generator=g)
    h0 = torch.randn(Bsz, *S, dtype=torch.float64, generator=g)

    def loop(a):
        h, out = h0.clone(), []
        for t in range(L):
            h = (a if invariant else a[:, t]) * h + b[:, t]
            out.append(h)
        return torch.stack(out, 1)

    hs = func.vmap(lambda a: linear_recurrence_chunked(a, b, h0, chunk_size=T)[0])(a_s)
    for i in range(2):
        assert rel_err(hs[i], loop(a_s[i])) < TOL64
    G = torch.randn(Bsz, L, *S, dtype=torch.float64, generator=g)
    a = a_s[0]
    grad_b = func.grad(lambda b: (linear_recurrence_chunked(a, b, h0, chunk_size=T)[0] * G).sum())(b)
    lam, want = torch.zeros_like(h0), torch.empty_like(b)
    for t in range(L - 1, -1, -1):
        a_next = 0 if t == L - 1 else (a if invariant else a[:, t + 1])
        lam = G[:, t] + a_next * lam
        want[:, t] = lam
    assert rel_err(grad_b, want) < TOL64
