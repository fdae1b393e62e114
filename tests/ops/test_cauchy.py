"""Cauchy sums and the S4 DPLR kernel (ssmkit.ops.cauchy) against direct formulas and dense matrices."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.ops as ops
import ssmkit.ops.cauchy as cauchy_mod
from ssmkit.ops.cauchy import (
    cauchy,
    cauchy_matmul,
    cauchy_reference,
    dplr_kernel,
    dplr_kernel_fast,
    dplr_kernel_reference,
)
from ssmkit.ops.hippo import MEASURES, nplr
from ssmkit.ops.native import cauchy_native, native_available
from tests.conftest import rel_err

C64, C128 = torch.complex64, torch.complex128


def crandn(*shape, dtype=C128, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------------------
# cauchy


def _native(device) -> tuple:
    """The C kernel's path where it runs (the CPU with a C compiler), for the lists of paths under test."""
    return (cauchy_native,) if torch.device(device).type == "cpu" and native_available("cauchy", torch.float64) else ()


def test_cauchy_by_hand(device):
    v = torch.tensor([1.0, 2.0], dtype=C128, device=device)
    w = torch.tensor([0.0, 1.0 + 1.0j], dtype=C128, device=device)
    z = torch.tensor([2.0, 1.0j], dtype=C128, device=device)
    # z=2: 1/2 + 2/(1 - 1j) = 0.5 + (1 + 1j);  z=i: 1/i + 2/(-1) = -i - 2
    want = torch.tensor([1.5 + 1.0j, -2.0 - 1.0j], dtype=C128, device=device)
    for f in (cauchy_reference, cauchy_matmul, *_native(device)):
        assert torch.allclose(f(v, z, w), want, atol=1e-15)


@pytest.mark.parametrize("dtype", [C64, C128])
def test_cauchy_matmul_equals_reference(dtype, device, monkeypatch):
    # v has two leading "product" dims (K = 2*5) that z and w lack; the channels (H=3) are shared.
    v = crandn(2, 5, 3, 7, dtype=dtype, device=device)
    w = crandn(3, 7, dtype=dtype, device=device)
    z = crandn(3, 11, dtype=dtype, device=device) * 3
    ref = cauchy_reference(v.to(C128), z.to(C128), w.to(C128))
    tol = 1e-13 if dtype == C128 else 1e-5  # 7-term sums of well-separated poles: a few ulps
    monkeypatch.setattr(cauchy_mod, "_BLOCK_BYTES", 3 * 7 * 16 * 4)  # force blocks of 4 points (11 = 4+4+3)
    out = cauchy_matmul(v, z, w)
    assert out.shape == (2, 5, 3, 11) and out.dtype == dtype
    assert rel_err(out, ref) < tol
    # z shared by all channels, w per channel: broadcast batch dims
    out = cauchy_matmul(v, z[0], w)
    assert rel_err(out, cauchy_reference(v, z[0], w)) < tol
    # w shared by all channels (1-D), z per channel: against a Python loop over the sums
    out = cauchy_matmul(v, z, w[0])
    loop = torch.tensor([[[[sum(complex(v[i, j, h, n]) / (complex(z[h, m]) - complex(w[0, n])) for n in range(7))
                            for m in range(11)] for h in range(3)] for j in range(5)] for i in range(2)], dtype=C128)
    assert out.shape == (2, 5, 3, 11) and rel_err(out, loop) < tol
    assert rel_err(cauchy_reference(v, z, w[0]), loop) < tol


@pytest.mark.parametrize("dtype", [C64, C128])
@pytest.mark.parametrize("W", [1, 64, 65, 300])
def test_cauchy_native_equals_reference(dtype, W, device):
    # the forward's blocks of 64 points and the backward's of 256: one point, one whole forward block, a block and one
    # point, four blocks and a tail of 44 (a backward block and a tail); v with two leading numerator dims (2 x 5)
    # over 3 channels, then z shared by every channel
    if not _native(device):
        pytest.skip("the native kernel runs on the CPU where a C compiler builds it")
    v = crandn(2, 5, 3, 7, dtype=dtype, device=device)
    w = crandn(3, 7, dtype=dtype, device=device)
    z = crandn(3, W, dtype=dtype, device=device) * 3
    ref = cauchy_reference(v.to(C128), z.to(C128), w.to(C128))
    tol = 1e-13 if dtype == C128 else 1e-5
    out = cauchy_native(v, z, w)
    assert out.shape == (2, 5, 3, W) and out.dtype == dtype
    assert rel_err(out, ref) < tol
    assert rel_err(cauchy_native(v, z[0], w), cauchy_reference(v, z[0], w)) < tol
    # lazy conj() views (their memory holds the unconjugated values)
    assert rel_err(cauchy_native(v.conj(), z.conj(), w.conj()), cauchy_reference(v.conj(), z.conj(), w.conj())) < tol
    g = crandn(2, 5, 3, W, dtype=C128, device=device)
    grads = []
    for f, args in ((cauchy_native, (v, z, w)), (cauchy_reference, (v.to(C128), z.to(C128), w.to(C128)))):
        leaves = [t.clone().requires_grad_() for t in args]
        grads.append(torch.autograd.grad((f(*leaves) * g.to(leaves[0].dtype).conj()).real.sum(), leaves))
    for a, b in zip(*grads):
        assert rel_err(a, b) < 10 * tol


def test_cauchy_gradcheck(device):
    v = crandn(2, 3, 4, device=device).requires_grad_()
    z = (crandn(3, 5, device=device) * 3).requires_grad_()
    w = crandn(3, 4, device=device).requires_grad_()
    assert torch.autograd.gradcheck(cauchy_matmul, (v, z, w))


def test_cauchy_gradients_equal_reference(device):
    v, z, w = crandn(4, 2, 6, device=device), 2 * crandn(2, 9, device=device), crandn(2, 6, device=device)
    g = crandn(4, 2, 9, device=device)
    grads = []
    for f in (cauchy_reference, cauchy_matmul, *_native(device)):
        leaves = [t.clone().requires_grad_() for t in (v, z, w)]
        out = f(*leaves)
        grads.append(torch.autograd.grad((out * g.conj()).real.sum(), leaves))
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):
            assert rel_err(a, b) < 1e-13  # same sums, different order
    if _native(device):  # only the gradients asked for are computed (the others stay None)
        leaves = [v.clone().requires_grad_(), z, w.clone().requires_grad_()]
        g_v, g_w = torch.autograd.grad((cauchy_native(*leaves) * g.conj()).real.sum(), [leaves[0], leaves[2]])
        assert rel_err(g_v, grads[0][0]) < 1e-13 and rel_err(g_w, grads[0][2]) < 1e-13


def test_cauchy_dispatch(device):
    v, z, w = crandn(3, 4, device=device), crandn(3, 5, device=device), crandn(3, 4, device=device)
    with ops.use_backend("reference"):
        assert torch.equal(cauchy(v, z, w), cauchy_reference(v, z, w))
    with ops.use_backend("chunked"):
        assert torch.equal(cauchy(v, z, w), cauchy_matmul(v, z, w))
    with ops.use_backend("auto"):  # the C kernel on the CPU where it runs (eager mode), else the blocked GEMM
        assert torch.equal(cauchy(v, z, w), (_native(device) or (cauchy_matmul,))[0](v, z, w))
    with ops.use_backend("triton"), pytest.raises(RuntimeError, match="triton"):
        cauchy(v, z, w)
    # the blocked GEMM is a time-domain ("chunked") algorithm: no "fft" path
    with ops.use_backend("fft"), pytest.raises(RuntimeError, match="cauchy: backend 'fft'"):
        cauchy(v, z, w)
    assert torch.equal(cauchy(v, z, w, backend="reference"), cauchy_reference(v, z, w))


def test_cauchy_bad_inputs(device):
    v, z, w = crandn(3, 4, device=device), crandn(3, 5, device=device), crandn(3, 4, device=device)
    with pytest.raises(ValueError, match=r"v must be \(\.\.\., N\) complex"):
        cauchy(v.real, z, w)
    with pytest.raises(ValueError, match="share one complex dtype"):
        cauchy(v.to(C64), z, w)
    with pytest.raises(ValueError, match=r"v must be \(\.\.\., N\) with N = 4"):
        cauchy(crandn(3, 6, device=device), z, w)
    with pytest.raises(ValueError, match="must broadcast"):
        cauchy(v, crandn(2, 5, device=device), w)


def test_cauchy_matmul_in_blocks_under_torch_func_and_to_second_order(device, monkeypatch):
    """Blocks of 4 points over W = 11 (4 + 4 + 3) in every pass the single-block tests do not split: the backward's
    blocks (∂v, ∂z, ∂w, and each alone), the forward's concatenated blocks under torch.func (vmap, grad) and the
    double backward (gradients of the gradients, summed block by block out of place), each against autograd of the
    direct formula; then blocks of one point (a block size below one point's bytes)."""
    from torch import func

    v, z, w = crandn(2, 3, 7, device=device), 3 * crandn(3, 11, device=device), crandn(3, 7, device=device)
    g = crandn(2, 3, 11, device=device)
    monkeypatch.setattr(cauchy_mod, "_BLOCK_BYTES", 3 * 7 * 16 * 4)  # 4 points per block
    loss = {f: (lambda a, b, c, _f=f: (_f(a, b, c) * g.conj()).real.sum()) for f in (cauchy_matmul, cauchy_reference)}
    grads, second = [], []
    for f in (cauchy_matmul, cauchy_reference):
        leaves = [t.clone().requires_grad_() for t in (v, z, w)]
        first = torch.autograd.grad(loss[f](*leaves), leaves, create_graph=True)
        grads.append(first)
        second.append(torch.autograd.grad(sum((d.abs() ** 2).sum() for d in first), leaves))
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-13
    for a, b in zip(*second):
        assert rel_err(a, b) < 1e-12
    for wanted in ((0,), (1,), (2,), (0, 2)):  # only the gradients asked for (the others' inputs need none)
        leaves = [t.clone().requires_grad_(i in wanted) for i, t in enumerate((v, z, w))]
        got = torch.autograd.grad(loss[cauchy_matmul](*leaves), [leaves[i] for i in wanted])
        for i, a in zip(wanted, got):
            assert rel_err(a, grads[1][i]) < 1e-13
    vs = torch.stack([v, 2 * v.flip(-1)])  # (2, 2, 3, 7): vmap over a leading axis
    for W in (11, 8):  # three blocks, two
        batched = func.vmap(lambda a: cauchy_matmul(a, z[:, :W], w))(vs)
        for i in range(2):
            assert rel_err(batched[i], cauchy_reference(vs[i], z[:, :W], w)) < 1e-13
    for a, b in zip(func.grad(loss[cauchy_matmul], argnums=(0, 1, 2))(v, z, w), grads[1]):
        assert rel_err(a, b) < 1e-13
    monkeypatch.setattr(cauchy_mod, "_BLOCK_BYTES", 3)  # below one point's bytes: blocks of one point (the floor)
    leaves = [t.clone().requires_grad_() for t in (v, z, w)]
    out = cauchy_matmul(*leaves)
    assert rel_err(out, cauchy_reference(v, z, w)) < 1e-13
    for a, b in zip(torch.autograd.grad((out * g.conj()).real.sum(), leaves), grads[1]):
        assert rel_err(a, b) < 1e-13


def test_cauchy_checks_each_argument(device):
    """Every path names the argument at fault: a non-tensor or a real z or w (not only the shared-dtype check), and
    a 0-d v, z or w (no last dimension)."""
    v, z, w = crandn(3, 4, device=device), crandn(3, 5, device=device), crandn(3, 4, device=device)
    for f in (cauchy_reference, cauchy_matmul):
        with pytest.raises(ValueError, match=r"v must be a complex torch.Tensor \(\.\.\., N\); got list"):
            f(v.tolist(), z, w)
        with pytest.raises(ValueError, match=r"z must be \(\.\.\., W\) complex \(complex64 or complex128\); got torch.float64"):
            f(v, z.real, w)
        with pytest.raises(ValueError, match=r"w must be \(\.\.\., N\) complex \(complex64 or complex128\); got torch.float64"):
            f(v, z, w.real)
        for i in range(3):
            args = [v, z, w]
            args[i] = args[i][0, 0]  # 0-d
            with pytest.raises(ValueError, match=r"v, z, w need a last dimension \(N, W, N\)"):
                f(*args)


# ---------------------------------------------------------------------------------------------------------------
# dplr_kernel


def dense_system(Lambda, P, B, dt):
    """Full conjugate-pair A (H, N, N), bilinear Ā, B̄ (S, H, N), independent of the module under test."""
    full = lambda x: torch.cat([x, x.conj()], -1)  # noqa: E731
    N = 2 * Lambda.shape[-1]
    A = torch.diag_embed(full(Lambda)) - torch.einsum("ihn,ihm->hnm", full(P), full(P).conj())
    eye = torch.eye(N, dtype=A.dtype, device=A.device)
    M_inv = torch.linalg.inv(eye - dt[:, None, None] / 2 * A)
    return M_inv @ (eye + dt[:, None, None] / 2 * A), torch.einsum("hnm,shm->shn", M_inv, dt[:, None] * full(B))


def direct_kernel(A_bar, B_bar, C_true_f, L):
    """K[s, c, h, l] = C_trueᵀ Ā^l B̄_s by a loop (no C̃ involved)."""
    taps, x = [], B_bar
    for _ in range(L):
        taps.append(torch.einsum("chn,shn->sch", C_true_f, x).real)
        x = torch.einsum("hnm,shm->shn", A_bar, x)
    return torch.stack(taps, -1)


def hippo_case(measure, N, H, S, n_out, L, device, seed=0):
    """A float64 DPLR system from the HiPPO init (Re λ clamped to <= -1e-4 as the layer), C̃ from a random C_true."""
    g = torch.Generator().manual_seed(seed)
    init = nplr(measure, N)
    Lambda = torch.complex(init.Lambda.real.clamp(max=-1e-4), init.Lambda.imag).expand(H, -1)
    P = init.P[:, None].expand(-1, H, -1)
    B = init.B * (1 + 0.3 * torch.randn(S, H, N // 2, dtype=C128, generator=g))  # S different input vectors
    dt = torch.exp(torch.rand(H, dtype=torch.float64, generator=g) * math.log(100) + math.log(1e-3))
    C_true = torch.randn(n_out, H, N // 2, dtype=C128, generator=g)
    Lambda, P, B, dt, C_true = (t.to(device) for t in (Lambda, P, B, dt, C_true))
    A_bar, B_bar = dense_system(Lambda, P, B, dt)
    C_f = torch.cat([C_true, C_true.conj()], -1)
    C_tilde = C_f - torch.einsum("hmn,chm->chn", torch.linalg.matrix_power(A_bar, L), C_f)  # (I - Ā^L)ᵀ C
    return (Lambda, P, B, C_tilde[..., : N // 2], dt), direct_kernel(A_bar, B_bar, C_f, L)


def test_dplr_kernel_by_hand(device):
    # One pair, λ = -1, P = 1, B = 1, Δ = 1: A = [[-2, -1], [-1, -2]], and B_f = [1, 1] is its eigenvector for
    # -3, so Ā = (1 - 3/2)/(1 + 3/2) = -0.2, B̄ = [0.4, 0.4]; with C_true = 1 (C_f = [1, 1]) K_l = 0.8 (-0.2)^l
    # and C̃ = (1 - (-0.2)^L) = 0.9984 for L = 4.
    one = torch.ones(1, 1, 1, dtype=C128, device=device)
    args = (-one[0], one, one, 0.9984 * one, torch.ones(1, dtype=torch.float64, device=device))
    want = torch.tensor([0.8, -0.16, 0.032, -0.0064], dtype=torch.float64, device=device)
    for f in (dplr_kernel_fast, dplr_kernel_reference):
        assert torch.allclose(f(*args, 4)[0, 0, 0], want, atol=1e-14)
    # Rank 0 (diagonal): K_l = 2 C B̄ Ā^l with Ā = 1/3, B̄ = 2/3, C̃ = 1 - 1/27 for L = 3.
    no_P = torch.zeros(0, 1, 1, dtype=C128, device=device)
    args = (-one[0], no_P, one, (26 / 27) * one, torch.ones(1, dtype=torch.float64, device=device))
    want = torch.tensor([4 / 3, 4 / 9, 4 / 27], dtype=torch.float64, device=device)
    for f in (dplr_kernel_fast, dplr_kernel_reference):
        assert torch.allclose(f(*args, 3)[0, 0, 0], want, atol=1e-14)


@pytest.mark.parametrize("L", [13, 16])
@pytest.mark.parametrize("measure", MEASURES)
def test_dplr_kernel_equals_dense_float64(measure, L, device):
    # S = 2 input vectors, C = 2 output vectors, H = 3, N = 8 (rank 2 for legt).
    args, K_direct = hippo_case(measure, 8, 3, 2, 2, L, device)
    K = dplr_kernel_fast(*args, L)
    assert K.shape == (2, 2, 3, L) and K.dtype == torch.float64
    # The fast path against the loop with C_true: 1e-10. FouT has a decoupled mode with λ = -1e-4, so
    # 1 - Ā^L ≈ LΔ·1e-4 and the conversion C̃ <-> C_true costs up to ~1e5 in conditioning
    # (measured 1.4e-12 for FouT, 6e-16 for LegS).
    assert rel_err(K, K_direct) < 1e-10
    # The oracle (dense, solving for C_true from C̃) agrees as well.
    assert rel_err(K, dplr_kernel_reference(*args, L)) < 1e-10


@pytest.mark.parametrize("measure", MEASURES)
def test_dplr_kernel_float32(measure, device):
    L = 256
    args, K_direct = hippo_case(measure, 32, 4, 1, 1, L, device, seed=1)
    args32 = [t.to(C64) if t.is_complex() else t.float() for t in args]
    err = rel_err(dplr_kernel_fast(*args32, L), K_direct)
    # LegS (Re λ = -1/2): measured 5e-7 here, 3e-7..8e-7 for N = 8..64 and L up to 1024 (a few ulps). With
    # Re λ = -1e-4 (LegT/LagT/FouT) the Cauchy sums near z ≈ Im λ reach ~1/(Δ·1e-4) and the Woodbury step cancels
    # them: complex64 kernels lose digits (measured here 2e-6 LegT, 5e-6 LagT, 3e-5 FouT; up to 3e-4 at N = 64,
    # L = 1024). This is why the S4 layer
    # computes its kernel in float64 for every dtype.
    assert err < (2e-6 if measure == "legs" else 2e-3)


def test_dplr_kernel_long_even_and_odd(device):
    for L in (1024, 1023):
        args, K_direct = hippo_case("legs", 16, 2, 1, 1, L, device, seed=2)
        assert rel_err(dplr_kernel_fast(*args, L), K_direct) < 1e-12  # measured 6e-15


def test_dplr_kernel_gradients_equal_reference(device):
    args, _ = hippo_case("legt", 4, 2, 2, 1, 7, device, seed=3)
    g = torch.randn(2, 1, 2, 7, dtype=torch.float64, device=device)
    grads = []
    for f in (dplr_kernel_fast, dplr_kernel_reference):
        leaves = [t.clone().requires_grad_() for t in args]
        grads.append(torch.autograd.grad((f(*leaves, 7) * g).sum(), leaves))
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-9  # LegT, Re λ = -1e-4: the C̃ -> C_true solve is mildly ill-conditioned


def test_dplr_kernel_gradcheck(device):
    args, _ = hippo_case("legs", 4, 2, 1, 1, 6, device, seed=4)
    leaves = tuple(t.clone().requires_grad_() for t in args)
    assert torch.autograd.gradcheck(lambda *a: dplr_kernel_fast(*a, 6), leaves)


def test_dplr_kernel_dispatch_and_errors(device):
    args, _ = hippo_case("legs", 4, 2, 1, 1, 5, device)
    with ops.use_backend("reference"):
        assert torch.equal(dplr_kernel(*args, 5), dplr_kernel_reference(*args, 5))
    with ops.use_backend("fft"):
        assert torch.equal(dplr_kernel(*args, 5), dplr_kernel_fast(*args, 5))
    with ops.use_backend("triton"), pytest.raises(RuntimeError, match="triton"):
        dplr_kernel(*args, 5)
    # Algorithm 1 evaluates the generating function at the roots of unity and inverts an FFT: no "chunked" path
    with ops.use_backend("chunked"), pytest.raises(RuntimeError, match="dplr_kernel: backend 'chunked'"):
        dplr_kernel(*args, 5)
    assert torch.equal(dplr_kernel(*args, 5, backend="auto"), dplr_kernel_fast(*args, 5))
    Lambda, P, B, C, dt = args
    with pytest.raises(ValueError, match=r"Lambda must be \(H, N/2\) complex"):
        dplr_kernel(Lambda.real, P, B, C, dt, 5)
    with pytest.raises(ValueError, match=r"P must be \(r, H, N/2\) = \(\?, 2, 2\)"):
        dplr_kernel(Lambda, P[:, :1], B, C, dt, 5)
    with pytest.raises(ValueError, match=r"B must be \(S, H, N/2\)"):
        dplr_kernel(Lambda, P, B[0], C, dt, 5)
    with pytest.raises(ValueError, match=r"dt must be \(H,\) = \(2,\) torch.float64"):
        dplr_kernel(Lambda, P, B, C, dt.float(), 5)
    with pytest.raises(ValueError, match="L must be an int >= 1"):
        dplr_kernel(Lambda, P, B, C, dt, 0)


def test_dplr_kernel_checks_each_argument_on_both_paths(device):
    """Both paths refuse: a real P, B or C by name (not only by the dtype check after it), a 1-D or 3-D Lambda, B or C
    of another complex dtype, no input or output vector (S = 0, C = 0), dt not a tensor, L = 0; L = 1 is accepted
    (the one-pair system of ``test_dplr_kernel_by_hand``: C̃ = 1 - (-0.2) = 1.2 for C_true = 1, K = [0.8])."""
    args, _ = hippo_case("legs", 4, 2, 1, 1, 5, device)
    Lambda, P, B, C, dt = args
    for f in (dplr_kernel_fast, dplr_kernel_reference):
        for i, name, letters in ((1, "P", "r"), (2, "B", "S"), (3, "C", "C")):
            bad = list(args)
            bad[i] = bad[i].real
            with pytest.raises(ValueError, match=rf"{name} must be \({letters}, H, N/2\) complex \(complex64 or complex128\)"):
                f(*bad, 5)
            bad[i] = args[i].to(C64)
            with pytest.raises(ValueError, match=rf"{name} must have Lambda's dtype torch.complex128; got torch.complex64"):
                f(*bad, 5)
        for bad_Lambda in (Lambda[0], Lambda[None]):
            with pytest.raises(ValueError, match=r"Lambda must be \(H, N/2\) complex; got shape"):
                f(bad_Lambda, P, B, C, dt, 5)
        with pytest.raises(ValueError, match=r"B and C need at least one vector \(S, C >= 1\); got \(0, 2, 2\), \(1, 2, 2\)"):
            f(Lambda, P, B[:0], C, dt, 5)
        with pytest.raises(ValueError, match=r"B and C need at least one vector \(S, C >= 1\); got \(1, 2, 2\), \(0, 2, 2\)"):
            f(Lambda, P, B, C[:0], dt, 5)
        with pytest.raises(ValueError, match=r"dt must be \(H,\) = \(2,\) torch.float64 \(the real dtype of Lambda\); got list"):
            f(Lambda, P, B, C, dt.tolist(), 5)
        with pytest.raises(ValueError, match=r"dt must be \(H,\) = \(2,\) torch.float64 .*; got \(1,\) torch.float64"):
            f(Lambda, P, B, C, dt[:1], 5)
        for bad_L in (0, 2.0, True):
            with pytest.raises(ValueError, match="L must be an int >= 1; got"):
                f(Lambda, P, B, C, dt, bad_L)
        one = torch.ones(1, 1, 1, dtype=C128, device=device)
        K = f(-one[0], one, one, 1.2 * one, torch.ones(1, dtype=torch.float64, device=device), 1)
        assert K.shape == (1, 1, 1, 1) and K.item() == pytest.approx(0.8, abs=1e-14)


def test_dplr_kernel_cauchy_sums_follow_the_context(device, monkeypatch):
    # inside Algorithm 1 the Cauchy sums take the context's backend where the Cauchy op has it, else "auto" (a context
    # "fft" selects the kernel itself and must not reach the Cauchy op, which has no "fft" path)
    args, _ = hippo_case("legs", 4, 2, 1, 1, 5, device)
    used = []
    for name in ("reference", "chunked", "native"):  # the sums over conjugate pairs (cauchy_pairs), as S4 has them
        impl = cauchy_mod._CAUCHY_PAIRS[name]
        monkeypatch.setitem(cauchy_mod._CAUCHY_PAIRS, name, lambda *a, _n=name, _f=impl: used.append(_n) or _f(*a))
    exact = dplr_kernel_reference(*args, 5)
    for context, path in (("chunked", "chunked"), ("reference", "reference"), ("fft", None)):
        with ops.use_backend(context):
            K = dplr_kernel(*args, 5, backend="fft")
        assert used.pop() == (path or ("native" if _native(device) else "chunked"))
        assert rel_err(K, exact) < 1e-10
