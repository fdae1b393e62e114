"""``ssmkit.ops.chunked``'s branches that tests/ops/test_scan.py does not reach, against a float64 Python loop
(x_t = Ā x_{t-1} + B̄ u_t, y_t = Re Σ_n C_n x_t,n + D u_t, one step at a time in complex128): the length-generic
compiled branch (``LENGTH_GENERIC_COMPILE``: ``_carry_doubling`` and ``_last_chunk_state``), the exported branch with
a symbolic length, and the two-level carry's group shapes (probe 24, mutation testing)."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.ops.chunked as chunked
from ssmkit.ops.chunked import ssm_scan_chunked
from tests.conftest import rel_err


def loop(u, A_bar, B_bar, C, state=None, D=None):
    """The recurrence in complex128, one step at a time: y (B, L, H) float64, x (B, H, N) complex128."""
    u = u.double()
    A, Bb, Cc = (p.to(torch.complex128) for p in (A_bar, B_bar, C))
    x = state.to(torch.complex128) if state is not None else torch.zeros(u.shape[0], *A.shape, dtype=torch.complex128)
    ys = []
    for t in range(u.shape[1]):
        x = A * x + Bb * u[:, t, :, None]
        y = (Cc * x).sum(-1).real
        ys.append(y + D.double() * u[:, t] if D is not None else y)
    return torch.stack(ys, 1), x


def _params(kind, H=2, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mag = 0.6 + 0.39 * torch.rand(H, N, generator=g, dtype=torch.float64)
    if kind == "complex":
        A = torch.polar(mag, math.pi * (2 * torch.rand(H, N, generator=g, dtype=torch.float64) - 1))
        B = torch.randn(H, N, generator=g, dtype=torch.complex128)
        C = torch.randn(H, N, generator=g, dtype=torch.complex128)
    else:
        A = mag * torch.where(torch.rand(H, N, generator=g) < 0.3, -1.0, 1.0).double()
        B = torch.randn(H, N, generator=g, dtype=torch.float64)
        C = torch.randn(H, N, generator=g, dtype=torch.float64)
    return A, B, C, torch.randn(H, generator=g, dtype=torch.float64)


def _check(y, x, want_y, want_x, kind):
    assert rel_err(y, want_y) < 1e-12
    assert rel_err(x, want_x if kind == "complex" else want_x.real) < 1e-12


@pytest.mark.parametrize("kind", ["complex", "real"])
def test_the_length_generic_branch_run_eagerly_equals_the_loop(monkeypatch, kind):
    # the branch torch.compile takes with LENGTH_GENERIC_COMPILE (one more chunk, all padding; the doubling carry over
    # groups of 8 chunks; the last chunk's r real steps as a number), run eagerly by letting is_compiling say True:
    # L = 1..T (one real chunk), multiples of T, and 1..16 groups of chunks, with and without a state and a skip
    A, B, C, D = _params(kind)
    monkeypatch.setattr(chunked, "LENGTH_GENERIC_COMPILE", True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(chunked, "_carry", None)  # the eager branch's carry: taking it would fail
    g = torch.Generator().manual_seed(1)
    for L in (1, 3, 4, 5, 8, 12, 29, 32, 33, 63, 64, 65, 130):
        u = torch.randn(2, L, 2, generator=g, dtype=torch.float64)
        x0 = 0.5 * torch.randn(2, 2, 3, generator=g, dtype=A.dtype)
        for state, skip in ((None, None), (x0, D)):
            y, x = ssm_scan_chunked(u, A, B, C, state, skip, chunk_size=4)
            _check(y, x, *loop(u, A, B, C, state, skip), kind)
    y, none = ssm_scan_chunked(u, A, B, C, x0, D, return_state=False, chunk_size=4)
    assert none is None and rel_err(y, loop(u, A, B, C, x0, D)[0]) < 1e-12


@pytest.mark.parametrize("kind", ["complex", "real"])
def test_the_exported_branch_with_a_symbolic_length_equals_the_loop(kind):
    from torch.export import Dim

    A, B, C, D = _params(kind, seed=2)

    class Scan(torch.nn.Module):
        def forward(self, u, x0):
            return ssm_scan_chunked(u, A, B, C, x0, D, chunk_size=8)

    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 2, 3, generator=g, dtype=A.dtype)  # B 3, H 2, N 3: no two axes alike
    with torch.no_grad():
        program = torch.export.export(Scan(), (torch.randn(3, 20, 2, dtype=torch.float64), x0),
                                      dynamic_shapes=({1: Dim("L", min=2, max=300)}, None)).module()
        for L in (2, 7, 8, 9, 16, 17, 100, 300):
            u = torch.randn(3, L, 2, generator=g, dtype=torch.float64)
            y, x = program(u, x0)
            assert y.shape == (3, L, 2) and x.shape == (3, 2, 3)
            _check(y, x, *loop(u, A, B, C, x0, D), kind)


@pytest.mark.parametrize("compiling", [False, True])
def test_eager_and_default_compiled_calls_take_the_two_level_carry(monkeypatch, compiling):
    # LENGTH_GENERIC_COMPILE is off by default: eagerly and under torch.compile (is_compiling True) the scan runs
    # ⌈L/T⌉ chunks through `_carry`, never the doubling carry or the symbolic last-chunk state
    A, B, C, D = _params("complex", seed=4)
    monkeypatch.setattr(chunked, "_carry_doubling", None)
    monkeypatch.setattr(chunked, "_last_chunk_state", None)
    if compiling:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    g = torch.Generator().manual_seed(5)
    for L in (3, 8, 13, 40):
        u = torch.randn(2, L, 2, generator=g, dtype=torch.float64)
        x0 = torch.randn(2, 2, 3, generator=g, dtype=A.dtype)
        y, x = ssm_scan_chunked(u, A, B, C, x0, D, chunk_size=8)
        _check(y, x, *loop(u, A, B, C, x0, D), "complex")


def test_the_chunk_length_is_chunk_size_capped_at_L(monkeypatch):
    # T = min(chunk_size, L) (64 by default); the length-generic compiled branch keeps T = chunk_size (its padding)
    seen, inner = [], chunked._chunk_operators

    def spy(A_bar, B_bar, C, T, D=None):
        seen.append(T)
        return inner(A_bar, B_bar, C, T, D)

    monkeypatch.setattr(chunked, "_chunk_operators", spy)
    A, B, C, _ = _params("real", seed=6)
    for L, kwargs, T in ((200, {}, 64), (50, {}, 50), (200, {"chunk_size": 8}, 8), (5, {"chunk_size": 8}, 5)):
        seen.clear()
        u = torch.randn(1, L, 2, dtype=torch.float64)
        y, x = ssm_scan_chunked(u, A, B, C, **kwargs)
        assert seen == [T]
        _check(y, x, *loop(u, A, B, C), "real")
    monkeypatch.setattr(chunked, "LENGTH_GENERIC_COMPILE", True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    seen.clear()
    ssm_scan_chunked(torch.randn(1, 3, 2, dtype=torch.float64), A, B, C, chunk_size=4)
    assert seen == [4]


def _chunk_loop(z, A_T, x0):
    """x_c = Ā^T x_{c-1} + z_c in complex128, chunk by chunk: the state before each chunk and after the last."""
    x = x0.to(torch.complex128) if x0 is not None else torch.zeros_like(z[:, :, 0], dtype=torch.complex128)
    before = []
    for c in range(z.shape[2]):
        before.append(x)
        x = A_T[:, None].to(torch.complex128) * x + z[:, :, c]
    return torch.stack(before, 2), x


def _count_addcmul(monkeypatch):
    calls, inner = [], torch.addcmul
    monkeypatch.setattr(torch, "addcmul", lambda *a, **k: calls.append(1) or inner(*a, **k))
    return calls


def test_the_two_level_carry_against_a_chunk_loop_and_its_step_count(monkeypatch):
    # nc chunks in ng = ⌈nc/G⌉ groups of G = ⌈√nc⌉: G - 1 steps inside the groups, ng - 1 across their ends, one
    # product for every chunk's carried state and one for the final state
    g = torch.Generator().manual_seed(7)
    A_T = torch.polar(torch.rand(2, 3, generator=g, dtype=torch.float64) * 0.4 + 0.55,
                      torch.rand(2, 3, generator=g, dtype=torch.float64) * 3)
    calls = _count_addcmul(monkeypatch)
    for nc in (1, 2, 3, 4, 5, 9, 10, 17, 26):
        z = torch.randn(2, 4, nc, 3, generator=g, dtype=torch.complex128)
        for x0 in (None, torch.randn(2, 4, 3, generator=g, dtype=torch.complex128)):
            calls.clear()
            prev, last = chunked._carry(z, A_T, x0)
            G = math.isqrt(nc - 1) + 1
            assert len(calls) == (G - 1) + (-(-nc // G) - 1) + 2, nc
            prev_ref, last_ref = _chunk_loop(z, A_T, x0)
            assert rel_err(prev, prev_ref) < 1e-13 and rel_err(last, last_ref) < 1e-13


def test_the_doubling_carry_against_a_chunk_loop_and_its_step_count(monkeypatch):
    # groups of G = 8 chunks, ng = ⌊nc/8⌋ + 1 groups (1 to 8 chunks of padding): 7 steps inside the groups, one for
    # x0, ⌈log2 ng⌉ doubling steps across the group ends, one product for the carried states and one for the last
    g = torch.Generator().manual_seed(8)
    A_T = torch.rand(2, 3, generator=g, dtype=torch.float64) * 0.4 + 0.55
    calls = _count_addcmul(monkeypatch)
    for nc in (1, 7, 8, 15, 16, 24, 31, 32, 40, 70):
        z = torch.randn(2, 4, nc, 3, generator=g, dtype=torch.float64)
        for x0 in (None, torch.randn(2, 4, 3, generator=g, dtype=torch.float64)):
            calls.clear()
            prev, last = chunked._carry_doubling(z, A_T, x0)
            ng = nc // 8 + 1
            assert len(calls) == 7 + (x0 is not None) + math.ceil(math.log2(ng)) + 2, nc
            prev_ref, last_ref = _chunk_loop(z, A_T, x0)
            assert rel_err(prev, prev_ref) < 1e-13 and rel_err(last, last_ref) < 1e-13


def test_pack_interleaves_real_and_imaginary_parts_at_every_rank():
    # (..., N) complex -> (..., 2N) real [Re z_0, Im z_0, Re z_1, ...]; unpack inverts it; real tensors pass through
    g = torch.Generator().manual_seed(9)
    for shape in ((3,), (2, 3), (2, 1, 3), (2, 2, 1, 3)):
        z = torch.randn(*shape, generator=g, dtype=torch.complex128)
        p = chunked.pack(z)
        want = torch.stack([z.real, z.imag], -1).reshape(*shape[:-1], 2 * shape[-1])
        assert p.shape == want.shape and torch.equal(p, want)
        assert torch.equal(chunked.unpack(p.contiguous(), True), z)
        r = z.real.contiguous()
        assert chunked.pack(r) is r and chunked.unpack(r, False) is r


def test_vmap_over_the_state_alone_equals_the_loop():
    # vmap batches the carried states but not the inputs' GEMM output y_c: the state's contribution is added out of
    # place there (an in-place baddbmm_ into the unbatched y_c cannot hold a batched result)
    A, B, C, D = _params("complex", seed=10)
    g = torch.Generator().manual_seed(11)
    u = torch.randn(2, 21, 2, generator=g, dtype=torch.float64)
    states = torch.randn(3, 2, 2, 3, generator=g, dtype=torch.complex128)
    ys, xs = torch.func.vmap(lambda s: ssm_scan_chunked(u, A, B, C, s, D, chunk_size=8))(states)
    for k in range(3):
        _check(ys[k], xs[k], *loop(u, A, B, C, states[k], D), "complex")
