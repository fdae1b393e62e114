"""Final state of dense LTI recurrences (ssmkit.ops.dense): chunked GEMM path against the loop."""

from __future__ import annotations

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.dense import dense_final_state, dense_final_state_chunked, dense_final_state_reference
from tests.conftest import rel_err

COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def system(H, N, dtype, complex_, device, seed=0):
    """A stable random Ā (spectral radius < 1) and B̄, real or complex."""
    g = torch.Generator().manual_seed(seed)
    kind = COMPLEX_OF[dtype] if complex_ else dtype
    A = torch.randn(H, N, N, dtype=kind, generator=g) / (2 * N**0.5)
    B = torch.randn(H, N, dtype=kind, generator=g)
    return A.to(device), B.to(device)


def test_by_hand(device):
    # N = 1: Ā = 1/2, B̄ = 1, u = (1, 2, 3): x = 1/4 + 2/2 + 3 = 4.25; with x_{-1} = 4 add 4/8 = 0.5.
    u = torch.tensor([[[1.0], [2.0], [3.0]]], dtype=torch.float64, device=device)
    A = torch.full((1, 1, 1), 0.5, dtype=torch.float64, device=device)
    B = torch.ones(1, 1, dtype=torch.float64, device=device)
    s = torch.full((1, 1, 1), 4.0, dtype=torch.float64, device=device)
    for f in (dense_final_state_reference, dense_final_state_chunked):
        assert f(u, A, B).item() == pytest.approx(4.25, abs=1e-15)
        assert f(u, A, B, s).item() == pytest.approx(4.75, abs=1e-15)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", [1, 2, 7, 13, 64, 100])
def test_chunked_equals_reference(L, dtype, complex_, with_state, device):
    H, N, Bsz = 3, 5, 2
    A, B = system(H, N, dtype, complex_, device)
    u = torch.randn(Bsz, L, H, dtype=dtype, device=device)
    s = torch.randn(Bsz, H, N, dtype=A.dtype, device=device) if with_state else None
    out = dense_final_state_chunked(u, A, B, s)
    assert out.shape == (Bsz, H, N) and out.dtype == A.dtype
    wide = torch.complex128 if complex_ else torch.float64
    ref = dense_final_state_reference(u.double(), A.to(wide), B.to(wide), None if s is None else s.to(wide))
    # float64: sums of <= 100 terms in a different order; float32: the GEMM and carry round at ~1e-7 per term.
    assert rel_err(out, ref) < (1e-13 if dtype == torch.float64 else 2e-6)


def test_double_precision_matrix_with_float32_input(device):
    # A_bar in float64 with a float32 u: tables from the exact matrix, result in complex64.
    H, N, L = 2, 6, 300
    A, B = system(H, N, torch.float64, True, device, seed=1)
    A = A / A.abs().amax((-1, -2), keepdim=True) * 0.25 + torch.eye(N, device=device) * 0.7  # slow modes
    u = torch.randn(2, L, H, dtype=torch.float32, device=device)
    s = torch.randn(2, H, N, dtype=torch.complex64, device=device)
    ref = dense_final_state_reference(u.double(), A, B, s.to(torch.complex128))
    for f in (dense_final_state_chunked, dense_final_state_reference):
        out = f(u, A, B, s)
        assert out.dtype == torch.complex64
        assert rel_err(out, ref) < 2e-6  # float32 GEMM/carry over 300 steps (measured ~2e-7)


def test_gradcheck(device):
    H, N, L = 2, 3, 11
    for complex_ in (False, True):
        A, B = system(H, N, torch.float64, complex_, device, seed=2)
        u = torch.randn(2, L, H, dtype=torch.float64, device=device)
        s = torch.randn(2, H, N, dtype=A.dtype, device=device)
        leaves = tuple(t.clone().requires_grad_() for t in (u, A, B, s))
        assert torch.autograd.gradcheck(dense_final_state_chunked, leaves)


def test_gradients_equal_reference(device):
    H, N, L = 3, 4, 37
    A, B = system(H, N, torch.float64, True, device, seed=3)
    u = torch.randn(2, L, H, dtype=torch.float64, device=device)
    s = torch.randn(2, H, N, dtype=A.dtype, device=device)
    g = torch.randn(2, H, N, dtype=A.dtype, device=device)
    grads = []
    for f in (dense_final_state_chunked, dense_final_state_reference):
        leaves = [t.clone().requires_grad_() for t in (u, A, B, s)]
        grads.append(torch.autograd.grad((f(*leaves) * g.conj()).real.sum(), leaves))
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-12  # float64, different summation order


def test_dispatch_and_errors(device):
    A, B = system(2, 3, torch.float64, False, device)
    u = torch.randn(1, 9, 2, dtype=torch.float64, device=device)
    with ops.use_backend("reference"):
        assert torch.equal(dense_final_state(u, A, B), dense_final_state_reference(u, A, B))
    for backend in ("auto", "chunked"):
        with ops.use_backend(backend):
            assert torch.equal(dense_final_state(u, A, B), dense_final_state_chunked(u, A, B))
    with ops.use_backend("triton"), pytest.raises(RuntimeError, match="triton"):
        dense_final_state(u, A, B)
    # no "fft" path: a final state has no frequency-domain form, so "fft" raises, per call or from the context
    with pytest.raises(RuntimeError, match="dense_final_state: backend 'fft'.*'auto', 'reference', 'chunked'"):
        dense_final_state(u, A, B, backend="fft")
    with ops.use_backend("fft"), pytest.raises(RuntimeError, match="dense_final_state: backend 'fft'"):
        dense_final_state(u, A, B)
    with pytest.raises(ValueError, match=r"u must be a real \(B, L, H\)"):
        dense_final_state(u.to(torch.complex128), A, B)
    with pytest.raises(ValueError, match=r"u must be \(B, L, H\) with L >= 1"):
        dense_final_state(u[:, :0], A, B)
    with pytest.raises(ValueError, match=r"A_bar must be \(H, N, N\) with H = 2"):
        dense_final_state(u, A[:1], B)
    with pytest.raises(ValueError, match="A_bar must have u's precision"):
        dense_final_state(u.double(), A.float(), B.float())
    with pytest.raises(ValueError, match=r"B_bar must be \(H, N\) = \(2, 3\)"):
        dense_final_state(u, A, B[:, :2])
    with pytest.raises(ValueError, match=r"state must be \(B, H, N\) = \(1, 2, 3\)"):
        dense_final_state(u, A, B, torch.zeros(2, 2, 3, dtype=torch.float64, device=device))


def test_tabled_refuses_mismatched_inputs(device):
    from ssmkit.ops.dense import dense_final_state_tabled, dense_state_tables

    A, B = system(3, 5, torch.float64, False, device)
    u = torch.randn(2, 20, 3, dtype=torch.float64, device=device)
    tables = dense_state_tables(A, B, 20, torch.float64, initial_state=True)
    s = torch.randn(2, 3, 5, dtype=torch.float64, device=device)
    assert rel_err(dense_final_state_tabled(u, tables, s), dense_final_state_reference(u, A, B, s)) < 1e-13
    with pytest.raises(ValueError, match=r"u must be \(B, 20, 3\) torch.float64"):
        dense_final_state_tabled(u[:, :10], tables)
    with pytest.raises(ValueError, match=r"state must be \(B, H, N\) = \(2, 3, 5\); got \(2, 5, 3\)"):
        dense_final_state_tabled(u, tables, s.transpose(1, 2))
    with pytest.raises(ValueError, match="initial_state=True"):
        dense_final_state_tabled(u, dense_state_tables(A, B, 20, torch.float64), s)


def test_matrix_power_bits_equals_matrix_power_and_by_hand(device):
    """Ā^n by squarings over a fixed bit count (the exponent a value, not an int the graph specialises) against
    ``torch.linalg.matrix_power`` for every n < 2^bits, and a 2×2 by hand: [[1, 1], [0, 1]]^n = [[1, n], [0, 1]]."""
    from ssmkit.ops.dense import matrix_power_bits

    A, _ = system(3, 4, torch.float64, True, device, seed=4)
    for n in range(32):
        # float64: a few squarings in another order (matrix_power's own binary powering)
        assert rel_err(matrix_power_bits(A, n, 5), torch.linalg.matrix_power(A, n)) < 1e-13
    shear = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64, device=device)
    assert torch.equal(matrix_power_bits(shear, 13, 4), torch.tensor([[1.0, 13.0], [0.0, 1.0]], dtype=torch.float64,
                                                                     device=device))
    assert torch.equal(matrix_power_bits(shear, 0, 1), torch.eye(2, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match=r"n must be in \[0, 2\^bits\) = \[0, 16\); got 16"):
        matrix_power_bits(shear, 16, 4)
    with pytest.raises(ValueError, match="bits must be an int >= 1; got 0"):
        matrix_power_bits(shear, 0, 0)


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("L", [1, 5, 33, 100])
def test_tables_of_any_chunk_and_a_length_bound_give_the_same_final_state(L, complex_, device):
    """Under torch.compile S4 forms the tables with the chunk length of its attuned length L_k (a constant per octave)
    and Ā^L by L's bits over L_k's (``chunk``, ``max_length``); every power-of-two chunk, shorter or longer than L,
    gives the loop's final state."""
    from ssmkit.ops.dense import dense_final_state_tabled, dense_state_tables

    A, B = system(3, 5, torch.float64, complex_, device, seed=5)
    u = torch.randn(2, L, 3, dtype=torch.float64, device=device)
    s = torch.randn(2, 3, 5, dtype=A.dtype, device=device)
    ref = dense_final_state_reference(u, A, B, s)
    for chunk in (1, 4, 16, 128):
        for bound in (None, 128):
            tables = dense_state_tables(A, B, L, A.dtype, True, chunk=chunk, max_length=bound)
            assert tables.W.shape[-1] == chunk
            assert rel_err(dense_final_state_tabled(u, tables, s), ref) < 1e-13  # float64, another summation order
    with pytest.raises(ValueError, match="chunk must be a power of two >= 1, or None; got 12"):
        dense_state_tables(A, B, L, A.dtype, chunk=12)
    with pytest.raises(ValueError, match="max_length must be an int >= 1, or None; got 0"):
        dense_state_tables(A, B, L, A.dtype, max_length=0)
    with pytest.raises(ValueError, match="L must be <= max_length = 200; got 300"):
        dense_state_tables(A, B, 300, A.dtype, True, max_length=200)


def test_chunk_length_is_the_power_of_two_nearest_the_root():
    """T = 2^round(log2(L)/2): 1 for L 1-2, 8 for 100 (√100 = 10), 64 for 4 096; a non-int or L < 1 is refused."""
    from ssmkit.ops.dense import chunk_length

    assert [chunk_length(L) for L in (1, 2, 3, 100, 4096)] == [1, 1, 2, 8, 64]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="L must be an int >= 1; got"):
            chunk_length(bad)
