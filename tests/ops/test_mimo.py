"""Tests of ssmkit.ops.mimo: the MIMO diagonal SSM (S5, LRU) against an independent float64 loop, hand values,
the chunked path's outputs, final states and every gradient, the kernel and the step."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.ops.backend import use_backend
from ssmkit.ops.mimo import (
    mimo_kernel,
    mimo_kernel_gemm,
    mimo_kernel_reference,
    mimo_scan,
    mimo_scan_chunked,
    mimo_scan_reference,
    mimo_ssm_step,
    mimo_step_coefficients,
)
from tests.conftest import rel_err

Bsz, H, M = 2, 3, 5  # pairwise distinct, so a swapped axis cannot broadcast
TOL64 = 1e-10  # float64 paths sum the same terms in another order (observed ~1e-15)


def system(dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64
    r = 0.5 + 0.49 * torch.rand(M, generator=g, dtype=real)
    if dtype.is_complex:
        A = torch.polar(r, math.pi * (2 * torch.rand(M, generator=g, dtype=real) - 1))  # (M,)
        B = torch.randn(M, H, generator=g, dtype=dtype)
        C = torch.randn(H, M, generator=g, dtype=dtype)
    else:
        A = r * torch.sign(torch.randn(M, generator=g, dtype=real))
        B = torch.randn(M, H, generator=g, dtype=dtype)
        C = torch.randn(H, M, generator=g, dtype=dtype)
    D = torch.randn(H, generator=g, dtype=real)
    return A.to(dtype).to(device), B.to(device), C.to(device), D.to(device)


def independent_loop(u, A, B, C, x0, D):
    """Float64 loop with explicit sums over the modes and channels (no matmul), the oracle's oracle."""
    Bn, L, Hn = u.shape
    x = x0.clone().to(torch.complex128)
    A, B, C = A.to(torch.complex128), B.to(torch.complex128), C.to(torch.complex128)
    ys = torch.zeros(Bn, L, Hn, dtype=torch.float64)
    for t in range(L):
        for m in range(A.shape[0]):
            x[:, m] = A[m] * x[:, m] + sum(B[m, i] * u[:, t, i] for i in range(Hn))
        for o in range(Hn):
            ys[:, t, o] = sum(C[o, m] * x[:, m] for m in range(A.shape[0])).real + D[o] * u[:, t, o]
    return ys, x


REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_reference_equals_an_independent_loop(dtype):
    A, B, C, D = system(dtype, torch.device("cpu"))
    u = torch.randn(Bsz, 11, H, dtype=torch.float64)
    x0 = torch.randn(Bsz, M, dtype=dtype)
    y, x = mimo_scan_reference(u, A, B, C, x0, D)
    y_ref, x_ref = independent_loop(u, A, B, C, x0, D)
    assert rel_err(y, y_ref) < 1e-13 and rel_err(x, x_ref) < 1e-13


def test_hand_value():
    # one mode a = 0.5, B̄ = [1, 2], C = [[1], [-1]], D = [0, 1]; u_0 = (1, 0), u_1 = (0, 1), x_{-1} = 4
    # x_0 = 2 + 1 = 3, y_0 = (3, -3 + 0) ; x_1 = 1.5 + 2 = 3.5, y_1 = (3.5, -3.5 + 1)
    A = torch.tensor([0.5], dtype=torch.float64)
    B = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    C = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    D = torch.tensor([0.0, 1.0], dtype=torch.float64)
    u = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    x0 = torch.tensor([[4.0]], dtype=torch.float64)
    expect = torch.tensor([[[3.0, -3.0], [3.5, -2.5]]], dtype=torch.float64)
    for fn in (mimo_scan_reference, mimo_scan_chunked):
        y, x = fn(u, A, B, C, x0, D)
        assert torch.allclose(y, expect) and float(x) == 3.5


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float32, torch.float64])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("L,chunk_size", [(1, None), (13, None), (13, 4), (130, None), (130, 7)])
def test_chunked_equals_reference(L, chunk_size, with_state, dtype, device):
    A, B, C, D = system(dtype, device)
    real = REAL.get(dtype, dtype)
    u = torch.randn(Bsz, L, H, dtype=real, device=device)
    D = D.to(real)
    x0 = torch.randn(Bsz, M, dtype=dtype, device=device) if with_state else None
    y, x = mimo_scan_chunked(u, A, B, C, x0, D, chunk_size=chunk_size)
    y_ref, x_ref = mimo_scan_reference(u, A, B, C, x0, D)
    assert y.shape == (Bsz, L, H) and y.dtype == real and x.shape == (Bsz, M) and x.dtype == dtype
    tol = 1e-5 if real == torch.float32 else TOL64  # float32: reassociated chunk products (<= 64 gates)
    assert rel_err(y, y_ref) < tol and rel_err(x, x_ref) < tol
    y2, none = mimo_scan_chunked(u, A, B, C, x0, D, return_state=False)
    assert none is None and rel_err(y2, y_ref) < tol


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_chunked_gradients_equal_the_reference(dtype, device):
    A, B, C, D = system(dtype, device)
    leaves = [
        torch.randn(Bsz, 70, H, dtype=torch.float64, device=device),
        A, B, C, torch.randn(Bsz, M, dtype=dtype, device=device), D,
    ]
    leaves = [t.clone().requires_grad_() for t in leaves]
    u, A, B, C, x0, D = leaves
    g = torch.randn(Bsz, 70, H, dtype=torch.float64, device=device)

    def loss(fn):
        y, x = fn(u, A, B, C, x0, D, chunk_size=8) if fn is mimo_scan_chunked else fn(u, A, B, C, x0, D)
        return (y * g).sum() + (x.abs() ** 2).sum()

    grads = torch.autograd.grad(loss(mimo_scan_chunked), leaves)
    grads_ref = torch.autograd.grad(loss(mimo_scan_reference), leaves)
    for a, b in zip(grads, grads_ref):
        assert rel_err(a, b) < TOL64


def test_dispatch(device):
    A, B, C, D = system(torch.complex128, device)
    u = torch.randn(Bsz, 9, H, dtype=torch.float64, device=device)
    y_ref, _ = mimo_scan_reference(u, A, B, C, None, D)
    with use_backend("reference"):
        assert torch.equal(mimo_scan(u, A, B, C, None, D)[0], y_ref)
    assert rel_err(mimo_scan(u, A, B, C, None, D, backend="chunked")[0], y_ref) < TOL64
    for missing in ("fft", "triton"):
        with pytest.raises(RuntimeError, match=f"mimo_scan: backend '{missing}' was forced"):
            mimo_scan(u, A, B, C, backend=missing)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_kernel_is_the_impulse_response(dtype, device):
    A, B, C, _ = system(dtype, device)
    L = 17
    K_ref = mimo_kernel_reference(A, B, C, L)
    assert K_ref.shape == (H, H, L)
    assert rel_err(mimo_kernel_gemm(A, B, C, L), K_ref) < TOL64
    assert rel_err(mimo_kernel(A, B, C, L), K_ref) < TOL64
    u = torch.zeros(H, L, H, dtype=torch.float64, device=device)
    u[torch.arange(H), 0, torch.arange(H)] = 1  # sequence i: impulse on channel i
    y, _ = mimo_scan_reference(u, A, B, C)  # y[i, t, o] = K[o, i, t]
    assert rel_err(y.permute(2, 0, 1), K_ref) < 1e-12
    # several output matrices at once (the bidirectional layer's two C)
    C2 = torch.stack([C, 2 * C])  # (2, H, M)
    K2 = mimo_kernel_gemm(A, B, C2, L)
    assert K2.shape == (2, H, H, L) and rel_err(K2[1], 2 * K_ref) < TOL64
    assert rel_err(mimo_kernel_reference(A, B, C2, L), K2) < TOL64


def test_kernel_hand_value():
    # one real mode 0.5: K_l[o, i] = C_o B_i 0.5^l
    A = torch.tensor([0.5], dtype=torch.float64)
    B = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    C = torch.tensor([[3.0], [4.0]], dtype=torch.float64)
    K = mimo_kernel_gemm(A, B, C, 3)
    expect = torch.tensor([[3.0, 6.0], [4.0, 8.0]], dtype=torch.float64)[..., None] * torch.tensor([1.0, 0.5, 0.25])
    assert torch.allclose(K, expect.double())


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float64])
def test_step_equals_the_scan(dtype, device):
    A, B, C, D = system(dtype, device)
    real = REAL.get(dtype, dtype)
    D = D.to(real)
    u = torch.randn(Bsz, 20, H, dtype=real, device=device)
    x = torch.randn(Bsz, M, dtype=dtype, device=device)
    y_ref, x_ref = mimo_scan_reference(u, A, B, C, x, D)
    coeffs = mimo_step_coefficients(A, B, C)
    ys = []
    for t in range(u.shape[1]):
        y_t, x = mimo_ssm_step(u[:, t], coeffs, x, D)
        ys.append(y_t)
    tol = 1e-6 if real == torch.float32 else 1e-13  # the same arithmetic in another association
    assert rel_err(torch.stack(ys, 1), y_ref) < tol and rel_err(x, x_ref) < tol


def test_errors_name_the_expected_shape():
    A, B, C, D = system(torch.complex128, torch.device("cpu"))
    u = torch.randn(Bsz, 9, H, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"u must be \(B, L, H\)"):
        mimo_scan(u[:, 0], A, B, C)
    with pytest.raises(ValueError, match=r"u must be \(B, L, H\)"):
        mimo_scan(u[:, :0], A, B, C)
    with pytest.raises(ValueError, match=r"A_bar must be \(M,\)"):
        mimo_scan_reference(u, A[None], B, C)
    with pytest.raises(ValueError, match=r"B_bar must be \(M, H\) = \(5, 3\)"):
        mimo_scan_chunked(u, A, B.T, C)
    with pytest.raises(ValueError, match=r"C must be \(H, M\) = \(3, 5\)"):
        mimo_scan(u, A, B, C.T)
    with pytest.raises(ValueError, match=r"state must be \(B, M\) = \(2, 5\)"):
        mimo_scan(u, A, B, C, torch.zeros(2, 4, dtype=torch.complex128))
    with pytest.raises(ValueError, match="mixed precisions"):
        mimo_scan(u.float(), A, B, C)
    with pytest.raises(ValueError, match=r"D must be \(H,\)"):
        mimo_scan(u, A, B, C, None, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="share one dtype"):
        mimo_scan(u, A, B.to(torch.complex64), C)
    with pytest.raises(ValueError, match="L must be an int >= 1"):
        mimo_kernel(A, B, C, 0)


def test_each_argument_is_named_when_it_is_not_what_is_expected():
    # the checks a coverage run found untested: each argument by type, dtype, device-independent shape and the
    # kernel's own checks
    A, B, C, D = system(torch.complex128, torch.device("cpu"))
    u = torch.randn(Bsz, 9, H, dtype=torch.float64)
    for i, name in ((1, "A_bar"), (2, "B_bar"), (3, "C")):
        args = [u, A, B, C]
        args[i] = args[i].tolist()
        with pytest.raises(ValueError, match=f"{name} must be a torch.Tensor; got list"):
            mimo_scan(*args)
        args[i] = torch.ones(3, dtype=torch.int64)
        with pytest.raises(ValueError, match=f"{name} must be complex64/complex128 or float32/float64; got torch.int64"):
            mimo_scan(*args)
    with pytest.raises(ValueError, match=r"state must be \(B, M\) = \(2, 5\); got list"):
        mimo_scan(u, A, B, C, [[0.0] * M] * Bsz)
    with pytest.raises(ValueError, match=r"state must have the dtype of A_bar \(torch.complex128\); got torch.complex64"):
        mimo_scan(u, A, B, C, torch.zeros(Bsz, M, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"D must be \(H,\) = \(3,\) \(from u\); got list"):
        mimo_scan(u, A, B, C, None, [0.0] * H)
    with pytest.raises(ValueError, match="D must be real with u's dtype torch.float64 on cpu; got torch.float32 on cpu"):
        mimo_scan(u, A, B, C, None, D.float())
    # the kernel
    with pytest.raises(ValueError, match="B_bar must be a complex or real floating torch.Tensor; got torch.int64"):
        mimo_kernel(A, B.long(), C, 4)
    with pytest.raises(ValueError, match="A_bar, B_bar and C must share one dtype; A_bar is torch.complex128 but C is"):
        mimo_kernel(A, B, C.to(torch.complex64), 4)
    with pytest.raises(ValueError, match=r"A_bar must be \(M,\); got shape \(1, 5\)"):
        mimo_kernel(A[None], B, C, 4)
    with pytest.raises(ValueError, match=r"B_bar must be \(M, H\) with M = 5 \(from A_bar\); got \(3, 5\)"):
        mimo_kernel(A, B.T, C, 4)
    with pytest.raises(ValueError, match=r"C must be \(H, M\) or \(C, H, M\) with M = 5 \(from A_bar\); got \(5, 3\)"):
        mimo_kernel(A, B, C.T, 4)
    for bad in (2.0, True):
        with pytest.raises(ValueError, match="L must be an int >= 1"):
            mimo_kernel(A, B, C, bad)


# ----------------------------------------------------------------------------------------------------
# Probe 21 (mutation testing): cases no test reached
# ----------------------------------------------------------------------------------------------------

PATHS = ("reference", "chunked", "native")


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_every_path_without_a_skip_and_with_the_default_final_state(backend, dtype):
    # D = None (no test ran the chunked path without a skip) and return_state's default True through mimo_scan,
    # against the independent loop with D = 0
    A, B, C, _ = system(dtype, torch.device("cpu"), seed=5)
    u = torch.randn(Bsz, 12, H, dtype=torch.float64)
    x0 = torch.randn(Bsz, M, dtype=dtype)
    y_ref, x_ref = independent_loop(u, A, B, C, x0, torch.zeros(H, dtype=torch.float64))
    y, x = mimo_scan(u, A, B, C, x0, backend=backend)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(x, x_ref) < 1e-12
    y, x = mimo_scan(u, A, B, C, backend=backend)  # from rest
    y_ref, x_ref = independent_loop(u, A, B, C, torch.zeros(Bsz, M, dtype=dtype), torch.zeros(H, dtype=torch.float64))
    assert rel_err(y, y_ref) < 1e-12 and rel_err(x, x_ref) < 1e-12


@pytest.mark.parametrize("backend", PATHS)
def test_u_that_is_no_float_tensor_is_named(backend):
    A, B, C, _ = system(torch.complex128, torch.device("cpu"))
    u = torch.randn(Bsz, 9, H, dtype=torch.float64)
    with pytest.raises(ValueError, match="u must be a torch.Tensor; got list"):
        mimo_scan(u.tolist(), A, B, C, backend=backend)
    with pytest.raises(ValueError, match=r"u must have a floating-point dtype \(float32 or float64\); got torch.int64"):
        mimo_scan(u.long(), A, B, C, backend=backend)


@pytest.mark.parametrize("backend", PATHS)
def test_a_missing_C_is_named(backend):
    A, B, _, _ = system(torch.complex128, torch.device("cpu"))
    u = torch.randn(Bsz, 9, H, dtype=torch.float64)
    # C = None reached C.transpose / C.is_complex and raised AttributeError until probe 21
    with pytest.raises(ValueError, match="C must be a torch.Tensor; got NoneType"):
        mimo_scan(u, A, B, None, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_each_argument_on_another_device_is_named(backend):
    # the meta device stands in for a second device on a CPU-only machine
    A, B, C, D = system(torch.complex128, torch.device("cpu"))
    u = torch.randn(Bsz, 9, H, dtype=torch.float64)
    x0 = torch.zeros(Bsz, M, dtype=torch.complex128)
    for i, name in ((1, "A_bar"), (2, "B_bar"), (3, "C"), (4, "state")):
        args = [u, A, B, C, x0, D]
        args[i] = args[i].to("meta")
        with pytest.raises(ValueError, match=f"{name} must be on u's device cpu; got meta"):
            mimo_scan(*args, backend=backend)
    with pytest.raises(ValueError, match="D must be real with u's dtype torch.float64 on cpu; got torch.float64 on meta"):
        mimo_scan(u, A, B, C, x0, D.to("meta"), backend=backend)


def test_native_path_refuses_a_non_cpu_input_and_says_when_it_cannot_run(monkeypatch):
    import ssmkit.ops.native.gate as native_gate  # (the forced path's checks: gate.require_native)

    A, B, C, _ = system(torch.complex128, torch.device("cpu"))
    u = torch.randn(Bsz, 9, H, dtype=torch.float64)
    # a non-CPU input must never reach the C kernel (which would read its data pointer)
    meta = [t.to("meta") for t in (u, A, B, C)]
    with pytest.raises(RuntimeError, match="mimo_scan: backend 'native' runs on the CPU; u is on meta"):
        mimo_scan(*meta, backend="native")
    monkeypatch.setattr(native_gate, "native_status", lambda op, dtype: (False, "no C compiler (test)"))
    with pytest.raises(RuntimeError, match=r"mimo_scan: backend 'native' cannot run here: no C compiler \(test\)"):
        mimo_scan(u, A, B, C, backend="native")


def test_auto_takes_the_native_path_where_the_gate_prefers_it(monkeypatch):
    import ssmkit.ops.mimo as mimo_module

    A, B, C, _ = system(torch.complex128, torch.device("cpu"))
    u = torch.randn(Bsz, 9, H, dtype=torch.float64)
    for prefer, path in ((True, "native"), (False, "chunked")):
        calls = []
        for name in ("chunked", "native"):
            monkeypatch.setitem(mimo_module._SCAN, name, lambda *a, _n=name, **k: calls.append(_n))
        monkeypatch.setattr(mimo_module, "prefer_native", lambda op, x, _p=prefer: _p)
        mimo_scan(u, A, B, C, backend="auto")
        assert calls == [path]


@pytest.mark.parametrize("fn", [mimo_kernel_reference, mimo_kernel_gemm])
def test_kernel_of_length_one_and_the_reference_kernels_checks(fn):
    # L = 1: K_0 = Re(C B̄) (no power of Ā); one complex mode c = 1 + 2i, b = 3 - i: Re(c b) = 3 + 2 = 5
    A = torch.tensor([0.5 + 0.5j], dtype=torch.complex128)
    B = torch.tensor([[3.0 - 1.0j]], dtype=torch.complex128)
    C = torch.tensor([[1.0 + 2.0j]], dtype=torch.complex128)
    K = fn(A, B, C, 1)
    assert K.shape == (1, 1, 1) and K.dtype == torch.float64 and float(K) == 5.0
    # each check, on this path too
    with pytest.raises(ValueError, match="L must be an int >= 1; got 0"):
        fn(A, B, C, 0)
    with pytest.raises(ValueError, match=r"A_bar must be \(M,\); got shape \(1, 1\)"):
        fn(A[None], B, C, 2)
    with pytest.raises(ValueError, match="C must be a complex or real floating torch.Tensor; got None"):
        fn(A, B, None, 2)
