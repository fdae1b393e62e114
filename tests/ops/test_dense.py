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


def test_both_paths_check_every_argument(device):
    """The reference and the chunked path run the same checks: a non-tensor u, A_bar, B_bar or state is named by
    its type, a non-square or integer A_bar and a state of another dtype or shape are refused."""
    A, B = system(2, 3, torch.float64, False, device)
    u = torch.randn(1, 9, 2, dtype=torch.float64, device=device)
    s = torch.zeros(1, 2, 3, dtype=torch.float64, device=device)
    for f in (dense_final_state_reference, dense_final_state_chunked):
        with pytest.raises(ValueError, match=r"u must be a real \(B, L, H\) float32 or float64 tensor; got list"):
            f(u.tolist(), A, B)
        with pytest.raises(ValueError, match=r"A_bar must be a \(H, N, N\) float or complex tensor; got "):
            f(u, A.tolist(), B)
        with pytest.raises(ValueError, match=r"A_bar must be a \(H, N, N\) float or complex tensor; got torch.int64"):
            f(u, A.long(), B)
        with pytest.raises(ValueError, match=r"A_bar must be \(H, N, N\) with H = 2 \(from u\); got shape \(2, 3, 2\)"):
            f(u, A[:, :, :2], B[:, :3])
        with pytest.raises(ValueError, match=r"A_bar must be \(H, N, N\) with H = 2 \(from u\); got shape \(2, 3\)"):
            f(u, A[:, 0], B)
        with pytest.raises(ValueError, match=r"B_bar must be \(H, N\) = \(2, 3\) torch.float64 like A_bar; got list"):
            f(u, A, B.tolist())
        with pytest.raises(ValueError, match=r"B_bar must be .* like A_bar; got \(2, 3\) torch.float32"):
            f(u, A, B.float())
        with pytest.raises(ValueError, match=r"state must be \(B, H, N\) = \(1, 2, 3\) torch.float64; got list"):
            f(u, A, B, s.tolist())
        with pytest.raises(ValueError, match=r"state must be \(B, H, N\) = \(1, 2, 3\) torch.float64; got "
                                             r"\(1, 2, 3\) torch.complex128"):
            f(u, A, B, s.to(torch.complex128))
        with pytest.raises(ValueError, match=r"state must be \(B, H, N\) = \(1, 2, 3\) torch.float64; got \(1, 3, 2\)"):
            f(u, A, B, s.transpose(1, 2))
    # a complex A_bar with a float32 u: the state may be A_bar's complex128 or the result's complex64
    Ac, Bc = system(2, 3, torch.float64, True, device)
    names = "torch.complex128 or torch.complex64"
    with pytest.raises(ValueError, match=rf"state must be \(B, H, N\) = \(1, 2, 3\) {names}; got \(1, 2, 3\) torch.float32"):
        dense_final_state_reference(u.float(), Ac, Bc, s.float())


def _carry_loop(u, W, A_T):
    """The carry of steps 2-3 by a float64 Python loop over chunks and steps, u padded in front to whole chunks:
    x_c = A_T x_{c-1} + Σ_j W[:, :, T-1-j] u_{cT+j}, x from zeros; returned (H, B, N)."""
    Bsz, L, H = u.shape
    N, T = W.shape[1], W.shape[2]
    n_chunks = -(-L // T)
    pad = n_chunks * T - L
    x = torch.zeros(H, Bsz, N, dtype=W.dtype)
    for c in range(n_chunks):
        S = torch.zeros(H, Bsz, N, dtype=W.dtype)
        for j in range(T):
            t = c * T + j - pad
            if t >= 0:
                for h in range(H):
                    for b in range(Bsz):
                        S[h, b] = S[h, b] + W[h, :, T - 1 - j] * u[b, t, h]
        x = torch.stack([torch.stack([A_T[h] @ x[h, b] for b in range(Bsz)]) for h in range(H)]) + S
    return x


@pytest.mark.parametrize("L, T", [(13, 4), (7, 4), (3, 4), (8, 1)])
def test_compiled_carry_ops_equal_a_loop_and_its_gradient(L, T):
    """The carry as the two custom ops that a compiled S4 graph holds (``_CompiledCarry``; eager here, where each op
    calls its body): the forward and the hand-written backward (∂u, ∂W, ∂A_T) against a Python loop over chunks and
    its autograd, with W and A_T independent random tables (not Ā^k B̄, Ā^T: every index of the algebra shows);
    two chunks, one chunk (L <= T: no carry, ∂A_T = 0) and T = 1 included; a zero output gradient returns zeros at
    once; each op's fake (the shapes a compiled graph plans with) matches its output (``torch.library.opcheck``)."""
    from ssmkit.ops.dense import _carry_backward, _carry_forward, _CompiledCarry

    g = torch.Generator().manual_seed(6)
    H, N, Bsz = 3, 5, 2
    u = torch.randn(Bsz, L, H, dtype=torch.float64, generator=g)
    W = torch.randn(H, N, T, dtype=torch.float64, generator=g)
    A_T = torch.randn(H, N, N, dtype=torch.float64, generator=g) / N
    gx = torch.randn(H, Bsz, N, dtype=torch.float64, generator=g)
    leaves = [t.clone().requires_grad_() for t in (u, W, A_T)]
    x = _CompiledCarry.apply(*leaves)
    grads = torch.autograd.grad((x * gx).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (u, W, A_T)]
    x_ref = _carry_loop(*ref_leaves)
    ref_grads = torch.autograd.grad((x_ref * gx).sum(), ref_leaves)
    assert x.shape == (H, Bsz, N) and rel_err(x, x_ref) < 1e-13
    for name, got, want in zip(("u", "W", "A_T"), grads, ref_grads):
        assert got.shape == want.shape, name
        if L <= T and name == "A_T":
            assert torch.equal(got, torch.zeros_like(want)) and torch.equal(want, torch.zeros_like(want))
        else:
            assert rel_err(got, want) < 1e-13, name
    zeros = _carry_backward(u, W, A_T, torch.zeros_like(gx))
    for z, t in zip(zeros, (u, W, A_T)):
        assert z.shape == t.shape and not z.any()
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(_carry_forward.op, (u, W, A_T), test_utils=checks)
    torch.library.opcheck(_carry_backward.op, (u, W, A_T, gx), test_utils=checks)


def test_state_tables_check_their_arguments_at_the_edges(device):
    """``dense_state_tables`` refuses L = 0, a float L, chunk = 0 and max_length = 0 (each without a bound too), and
    accepts the edge values L = max_length and max_length = 1 (tables equal to those without the bound)."""
    from ssmkit.ops.dense import dense_final_state_tabled, dense_state_tables

    A, B = system(3, 5, torch.float64, False, device, seed=7)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="L must be an int >= 1; got"):
            dense_state_tables(A, B, bad, A.dtype)
    with pytest.raises(ValueError, match="chunk must be a power of two >= 1, or None; got 0"):
        dense_state_tables(A, B, 4, A.dtype, chunk=0)
    with pytest.raises(ValueError, match="max_length must be an int >= 1, or None; got 0"):
        dense_state_tables(A, B, 4, A.dtype, max_length=0)
    for L in (1, 6):  # L = max_length, and max_length = 1 (one bit)
        u = torch.randn(2, L, 3, dtype=torch.float64, device=device)
        s = torch.randn(2, 3, 5, dtype=torch.float64, device=device)
        tables = dense_state_tables(A, B, L, A.dtype, True, max_length=L)
        want = dense_final_state_reference(u, A, B, s)
        assert rel_err(dense_final_state_tabled(u, tables, s), want) < 1e-13


def test_matrix_power_bits_of_a_four_axis_batch(device):
    """(..., N, N) with two batch axes (2, 3) and N = 4: the identity is N × N whatever the batch sizes."""
    from ssmkit.ops.dense import matrix_power_bits

    g = torch.Generator().manual_seed(8)
    A = (torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g) / 2).to(device)
    for n in (0, 1, 6, 7):
        want = torch.eye(4, dtype=torch.float64, device=device).expand(2, 3, 4, 4)
        for _ in range(n):
            want = want @ A
        assert rel_err(matrix_power_bits(A, n, 3), want) < 1e-13


def test_tabled_with_a_length_bound_pads_to_a_fixed_chunk_count(device):
    """``max_length`` (the traced carry's bound) in eager mode: ⌊max_length/T⌋ + 1 chunks, u padded in front by
    zeros, still the loop's final state for every L <= max_length (T = 4, max_length 13 and 16: L = 13 is a partial
    last chunk, L = 16 whole chunks plus one of padding alone); a bad bound is refused."""
    from ssmkit.ops.dense import dense_final_state_tabled, dense_state_tables

    for complex_ in (False, True):
        A, B = system(3, 5, torch.float64, complex_, device, seed=9)
        for bound in (13, 16):
            for L in (1, 4, 5, 13, bound):
                u = torch.randn(2, L, 3, dtype=torch.float64, device=device)
                s = torch.randn(2, 3, 5, dtype=A.dtype, device=device)
                tables = dense_state_tables(A, B, L, A.dtype, True, chunk=4, max_length=bound)
                got = dense_final_state_tabled(u, tables, s, max_length=bound)
                assert rel_err(got, dense_final_state_reference(u, A, B, s)) < 1e-13
    tables = dense_state_tables(A, B, 4, A.dtype)
    u = torch.randn(2, 4, 3, dtype=torch.float64, device=device)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_length must be an int >= 1, or None; got"):
            dense_final_state_tabled(u, tables, max_length=bad)
    assert rel_err(dense_final_state_tabled(u, tables, max_length=4),
                   dense_final_state_reference(u, A, B)) < 1e-13  # the edge max_length = L
    u1 = u[:, :1]
    got = dense_final_state_tabled(u1, dense_state_tables(A, B, 1, A.dtype), max_length=1)  # the smallest bound
    assert rel_err(got, dense_final_state_reference(u1, A, B)) < 1e-13
