"""ssmkit.ops.rows, ssmkit.ops.rglru and ssmkit.ops.twice against references written here in float64: the row-blocked
products and their gradients by numpy (y = x Wᵀ + b, ∂x = Σ_k g_k W_k, ∂W_k = g_kᵀ x, ∂b_k = Σ_rows g_k; GLU
a ⊙ σ(g) of Dauphin et al., arXiv 1612.08083), the RG-LRU by a loop of its equations (De et al., arXiv 2402.19427
§2.4), and the dispatch rules the modules document (which calls go by row blocks, which to the module)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import ssmkit.ops.rows as rows

F64 = torch.float64


@pytest.fixture
def nan_empty():
    """``torch.empty`` fills with NaN (deterministic mode): a buffer read before it is written shows."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture
def gemms(monkeypatch):
    """Counts the GEMM calls of the row-blocked paths (``rows._mm_into``), with blocks of 5 rows."""
    monkeypatch.setattr(rows, "ROW_BLOCK", 5)
    calls = []
    inner = rows._mm_into

    def counted(out, a, b, bias):
        calls.append(a.shape[0])
        return inner(out, a, b, bias)

    monkeypatch.setattr(rows, "_mm_into", counted)
    return calls


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


@pytest.mark.parametrize("M, with_out, blocks", [(23, False, 5), (11, False, 3), (10, False, 0), (7, True, 2)])
def test_mm_rows_is_the_product_with_one_gemm_per_block(M, with_out, blocks, gemms, nan_empty):
    """a @ b by numpy; short a (≤ 2 blocks) one plain product; a given ``out`` is written and returned."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(M, 6, generator=g, dtype=F64), torch.randn(6, 4, generator=g, dtype=F64)
    out = torch.empty(M, 4, dtype=F64) if with_out else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a block written through a view of the wrong size is resized, with a warning
        got = rows.mm_rows(a, b, 5, out)
    np.testing.assert_allclose(_np(got), _np(a) @ _np(b), rtol=1e-13, atol=1e-13)
    assert got.shape == (M, 4) and len(gemms) == blocks
    if with_out:
        assert got is out
    assert all(n <= 5 for n in gemms)


def test_mm_rows_is_one_product_under_vmap(gemms):
    """While a torch.func transform traces, a tall a is one product (no ``out=`` writes)."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 23, 6, generator=g, dtype=F64), torch.randn(6, 4, generator=g, dtype=F64)
    got = torch.func.vmap(lambda t: rows.mm_rows(t, b, 5))(a)
    np.testing.assert_allclose(_np(got), _np(a) @ _np(b), rtol=1e-13, atol=1e-13)
    assert gemms == []


def test_blocked_paths_take_one_gemm_per_block_and_piece(gemms):
    """split_linear and linear at 2 x 23 rows: 10 blocks of 5 (the last of 1) per piece; linear_glu one GEMM per block
    for both halves; 11 rows are more than two blocks (blocked), 10 rows are not (F.linear), as the module docstring
    says."""
    g = torch.Generator().manual_seed(2)
    x, W, b = (torch.randn(2, 23, 6, generator=g, dtype=F64), torch.randn(8, 6, generator=g, dtype=F64),
               torch.randn(8, generator=g, dtype=F64))
    ref = _np(x) @ _np(W).T + _np(b)
    pieces = rows.split_linear(x, W, b, (3, 5))
    np.testing.assert_allclose(np.concatenate([_np(p) for p in pieces], -1), ref, rtol=1e-13, atol=1e-13)
    assert len(gemms) == 20 and sorted(set(gemms)) == [1, 5]
    del gemms[:]
    np.testing.assert_allclose(_np(rows.linear(x, W, b)), ref, rtol=1e-13, atol=1e-13)
    assert len(gemms) == 10
    del gemms[:]
    glu = _np(rows.linear_glu(x, W, b))
    np.testing.assert_allclose(glu, ref[..., :4] * _sigmoid(ref[..., 4:]), rtol=1e-13, atol=1e-13)
    assert len(gemms) == 10
    for n, blocked in ((11, True), (10, False)):
        del gemms[:]
        assert rows._blocked(x[0, :n], W) is blocked
        np.testing.assert_allclose(_np(rows.linear_glu(x[0, :n], W, b)), glu[0, :n], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(_np(rows.split_linear(x[0, :n], W, b, (8,))[0]), ref[0, :n], rtol=1e-13,
                                   atol=1e-13)
        assert len(gemms) == (3 * 2 if blocked else 0)  # per block: the GLU's one, split_linear's one


class _Drop(torch.autograd.Function):
    """Identity whose backward sends no gradient (None): the op before it gets ``None`` for that output."""

    @staticmethod
    def forward(ctx, y):  # type: ignore[override]
        return y.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return None


@pytest.mark.parametrize("used", [(1,), (), (0, 2)], ids=["middle-piece", "none", "outer-pieces"])
def test_unused_pieces_get_zero_gradients(used, monkeypatch, nan_empty):
    """∂x = Σ_k g_k W_k, ∂W_k = g_kᵀ x, ∂b_k = Σ_rows g_k over the used pieces, zeros elsewhere (numpy), also when
    the backward receives no gradient at all; no block is written through a view that must be resized (a warning)."""
    monkeypatch.setattr(rows, "ROW_BLOCK", 5)
    g = torch.Generator().manual_seed(3)
    sizes = (4, 3, 5)
    x = torch.randn(23, 6, generator=g, dtype=F64).requires_grad_()
    W = torch.randn(12, 6, generator=g, dtype=F64).requires_grad_()
    b = torch.randn(12, generator=g, dtype=F64).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs = rows.split_linear(x, W, b, sizes)
        gys = [torch.randn(o.shape, generator=g, dtype=F64) for o in outs]
        loss = sum((outs[k] * gys[k]).sum() for k in used) + _Drop.apply(outs[1]).sum()
        gx, gW, gb = torch.autograd.grad(loss, (x, W, b), materialize_grads=True)
    ref_x, ref_W, ref_b = np.zeros((23, 6)), np.zeros((12, 6)), np.zeros(12)
    starts = np.cumsum((0,) + sizes)
    for k in used:
        s, e = starts[k], starts[k + 1]
        ref_x += _np(gys[k]) @ _np(W)[s:e]
        ref_W[s:e] = _np(gys[k]).T @ _np(x)
        ref_b[s:e] = _np(gys[k]).sum(0)
    for got, want in ((gx, ref_x), (gW, ref_W), (gb, ref_b)):
        np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=1e-12)


def test_linear_glu_gradients_by_hand_without_warnings(monkeypatch):
    """∂a = ∂y σ(g), ∂g = ∂y a σ(g)(1 - σ(g)), then ∂x = ∂a W_1 + ∂g W_2, ∂W = [∂aᵀ x; ∂gᵀ x], ∂b = Σ_rows [∂a, ∂g]
    (numpy), at 23 rows by blocks of 5, with no resize warning from the per-block buffers."""
    monkeypatch.setattr(rows, "ROW_BLOCK", 5)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(23, 6, generator=g, dtype=F64).requires_grad_()
    W = torch.randn(8, 6, generator=g, dtype=F64).requires_grad_()
    b = torch.randn(8, generator=g, dtype=F64).requires_grad_()
    gy = torch.randn(23, 4, generator=g, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gx, gW, gb = torch.autograd.grad(rows.linear_glu(x, W, b), (x, W, b), gy)
    pre = _np(x) @ _np(W).T + _np(b)
    a, s = pre[:, :4], _sigmoid(pre[:, 4:])
    da, dg = _np(gy) * s, _np(gy) * a * s * (1 - s)
    np.testing.assert_allclose(_np(gx), da @ _np(W)[:4] + dg @ _np(W)[4:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(gW), np.concatenate([da.T @ _np(x), dg.T @ _np(x)]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(gb), np.concatenate([da.sum(0), dg.sum(0)]), rtol=1e-12, atol=1e-12)


def test_linear_glu_and_split_linear_check_their_arguments():
    """An odd number of weight rows is refused by linear_glu whatever the columns; a piece of one row is allowed."""
    with pytest.raises(ValueError, match="even number of rows"):
        rows.linear_glu(torch.randn(4, 4), torch.randn(5, 4))
    x, W = torch.randn(4, 3, dtype=F64), torch.randn(3, 3, dtype=F64)
    one, two = rows.split_linear(x, W, None, (1, 2))
    np.testing.assert_allclose(_np(one), _np(x) @ _np(W)[:1].T, rtol=1e-13)
    np.testing.assert_allclose(_np(two), _np(x) @ _np(W)[1:].T, rtol=1e-13)


@pytest.fixture
def spies(monkeypatch):
    """Records the calls of rows.linear, rows.split_linear and rows.linear_glu (by name), blocks of 5 rows."""
    monkeypatch.setattr(rows, "ROW_BLOCK", 5)
    calls = []
    for name in ("linear", "split_linear", "linear_glu"):
        inner = getattr(rows, name)

        def spy(*args, _inner=inner, _name=name):
            calls.append(_name)
            return _inner(*args)

        monkeypatch.setattr(rows, name, spy)
    return calls


def _linear(H_in, H_out, seed):
    torch.manual_seed(seed)
    return nn.Linear(H_in, H_out, dtype=F64)


def _ref_linear(m: nn.Linear, x: np.ndarray) -> np.ndarray:
    return x @ _np(m.weight).T + _np(m.bias)


def test_apply_linear_and_split_go_by_rows_for_a_plain_linear(spies):
    x = torch.randn(2, 12, 5, dtype=F64)
    lin = _linear(5, 6, 0)
    np.testing.assert_allclose(_np(rows.apply_linear(lin, x)), _ref_linear(lin, _np(x)), rtol=1e-13)
    assert spies == ["linear", "split_linear"]
    del spies[:]
    a, c = rows.apply_split_linear(lin, x, (2, 4))
    np.testing.assert_allclose(_np(torch.cat([a, c], -1)), _ref_linear(lin, _np(x)), rtol=1e-13)
    assert spies == ["split_linear"]
    del spies[:]
    seq = nn.Sequential(lin, nn.Tanh())
    np.testing.assert_allclose(_np(rows.apply_module(seq, x)), np.tanh(_ref_linear(lin, _np(x))), rtol=1e-13)
    assert spies == ["linear", "split_linear"]


def test_apply_module_fuses_only_linear_then_glu_on_the_last_dim(spies):
    """Linear + GLU(dim=-1) is linear_glu; a GLU on another dimension, a third module or a hook on the GLU is
    not fused and gives the modules' own result (numpy)."""
    x = torch.randn(2, 12, 5, dtype=F64)
    lin = _linear(5, 6, 1)
    pre = _ref_linear(lin, _np(x))  # (2, 12, 6)
    np.testing.assert_allclose(_np(rows.apply_module(nn.Sequential(lin, nn.GLU(dim=-1)), x)),
                               pre[..., :3] * _sigmoid(pre[..., 3:]), rtol=1e-13)
    assert spies == ["linear_glu"]
    for dim in (0, 1, -2):
        del spies[:]
        half = pre.shape[dim] // 2
        first, second = np.split(pre, [half], axis=dim)
        got = rows.apply_module(nn.Sequential(lin, nn.GLU(dim=dim)), x)
        np.testing.assert_allclose(_np(got), first * _sigmoid(second), rtol=1e-13)
        assert "linear_glu" not in spies
    del spies[:]
    last = _linear(3, 2, 2)
    got = rows.apply_module(nn.Sequential(lin, nn.GLU(dim=-1), last), x)
    np.testing.assert_allclose(_np(got), _ref_linear(last, pre[..., :3] * _sigmoid(pre[..., 3:])), rtol=1e-13)
    assert "linear_glu" not in spies
    del spies[:]
    glu, seen = nn.GLU(dim=-1), []
    glu.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    got = rows.apply_module(nn.Sequential(lin, glu), x)
    np.testing.assert_allclose(_np(got), pre[..., :3] * _sigmoid(pre[..., 3:]), rtol=1e-13)
    assert seen == [(2, 12, 3)] and "linear_glu" not in spies


def _rglru_loop(x, r, i, Lam, c, h0, resets):
    """The RG-LRU of arXiv 2402.19427 §2.4 step by step in numpy: a_t = σ(Λ)^{c r_t},
    h_t = a_t h_{t-1} + √(1 - a_t²) i_t x_t; at a segment start a_t = 0 and the multiplier 1."""
    x, r, i = _np(x), _np(r), _np(i)
    a_base = _sigmoid(_np(Lam))
    h = np.zeros(x.shape[::2]) if h0 is None else _np(h0).copy()
    hs = []
    for t in range(x.shape[1]):
        a = a_base ** (c * r[:, t])
        m = np.sqrt(1.0 - a**2)
        if resets is not None:
            start = _np(resets)[:, t, None]
            a, m = np.where(start, 0.0, a), np.where(start, 1.0, m)
        h = a * h + m * i[:, t] * x[:, t]
        hs.append(h)
    return np.stack(hs, 1), h


def _rglru_inputs(seed, B=2, L=13, H=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, H, generator=g, dtype=F64)
    r, i = torch.rand(B, L, H, generator=g, dtype=F64), torch.rand(B, L, H, generator=g, dtype=F64)
    Lam = torch.randn(H, generator=g, dtype=F64) + 2
    h0 = torch.randn(B, H, generator=g, dtype=F64)
    resets = torch.rand(B, L, generator=g) < 0.25
    return x, r, i, Lam, h0, resets


@pytest.mark.parametrize("c, with_h0, with_resets", [(2.5, False, False), (8.0, True, True), (0.7, True, False)])
def test_rglru_and_its_step_equal_the_loop(c, with_h0, with_resets):
    from ssmkit.ops.rglru import rglru, rglru_step

    x, r, i, Lam, h0, resets = _rglru_inputs(5)
    h0 = h0 if with_h0 else None
    resets = resets if with_resets else None
    want, last = _rglru_loop(x, r, i, Lam, c, h0, resets)
    for backend in ("reference", "chunked"):
        hs, h_last = rglru(x, r, i, Lam, c, h0, resets, backend=backend)
        np.testing.assert_allclose(_np(hs), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_np(h_last), last, rtol=1e-12, atol=1e-12)
    h = torch.zeros(2, 3, dtype=F64) if h0 is None else h0
    for t in range(x.shape[1]):
        h = rglru_step(x[:, t], r[:, t], i[:, t], Lam, c, h, None if resets is None else resets[:, t])
        np.testing.assert_allclose(_np(h), want[:, t], rtol=1e-12, atol=1e-12)


def test_rglru_default_c_is_eight():
    from ssmkit.ops.rglru import rglru

    x, r, i, Lam, _, _ = _rglru_inputs(6)
    np.testing.assert_allclose(_np(rglru(x, r, i, Lam)[0]), _rglru_loop(x, r, i, Lam, 8.0, None, None)[0],
                               rtol=1e-12, atol=1e-12)


def test_sqrt_bounded_gradient_under_torch_func():
    """vmap and torch.func.grad run the clipped square root (its vmap rule is generated): d√v/dv = min(1/(2√v), G)."""
    from ssmkit.ops.rglru import sqrt_bounded_gradient

    v = torch.tensor([[1e-9, 0.04, 1.0], [2.0, 1e-12, 0.25]], dtype=F64)
    np.testing.assert_allclose(_np(torch.func.vmap(sqrt_bounded_gradient)(v)), np.sqrt(_np(v)), rtol=1e-15)
    grad = torch.func.vmap(torch.func.grad(lambda t: sqrt_bounded_gradient(t, 50.0).sum()))(v)
    np.testing.assert_allclose(_np(grad), np.minimum(0.5 / np.sqrt(_np(v)), 50.0), rtol=1e-13)


def _twice_path(seen):
    """(a ⊙ b, sin a, b²) with the backend and autocast state recorded in ``seen`` at the call."""
    from ssmkit.ops.backend import get_backend

    def path(a, b, unused):
        seen.append((get_backend(), torch.is_autocast_enabled("cpu")))
        return a * b, torch.sin(a), b * b

    return path


def test_graph_backward_is_the_partial_vjp_with_its_history():
    """∂/∂a = g₁ b + g₂ cos a, ∂/∂b = g₁ a (+ 2 g₃ b when b² is used) by hand, b computed from a counted as
    fixed (a partial derivative), an unused output's None skipped, and the result differentiable again:
    ∂/∂a Σ(g₁ b + g₂ cos a) = 2 g₁ - g₂ sin a with b = 2a + 1."""
    from ssmkit.ops.twice import graph_backward
    from ssmkit.ops.backend import use_backend

    g = torch.Generator().manual_seed(7)
    a = torch.randn(4, 3, generator=g, dtype=F64).requires_grad_()
    b = 2.0 * a + 1.0  # computed from a: the op's own partial derivative must not follow it
    g1, g2, g3 = (torch.randn(4, 3, generator=g, dtype=F64) for _ in range(3))
    seen = []
    with use_backend("chunked"), torch.autocast("cpu", dtype=torch.bfloat16):
        da, db, du = graph_backward(_twice_path(seen), (a, b, None), (True, True, True), (g1, g2, None))
    assert seen == [("reference", False)]
    assert du is None
    np.testing.assert_allclose(_np(da), _np(g1 * b + g2 * torch.cos(a)), rtol=1e-14)
    np.testing.assert_allclose(_np(db), _np(g1 * a), rtol=1e-14)
    (dda,) = torch.autograd.grad(da.sum(), a)
    np.testing.assert_allclose(_np(dda), _np(2.0 * g1 - g2 * torch.sin(a)), rtol=1e-13)
    da, db, _ = graph_backward(_twice_path([]), (a, b, None), (False, True, False), (None, None, g3))
    assert da is None
    np.testing.assert_allclose(_np(db), _np(2.0 * g3 * b), rtol=1e-14)


def test_graph_backward_with_nothing_to_do_returns_nones():
    from ssmkit.ops.twice import graph_backward

    a = torch.randn(3, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    g = torch.ones(3, dtype=F64)
    assert graph_backward(_twice_path([]), (a, b, None), (False, False, False), (g, g, g)) == [None, None, None]
    assert graph_backward(_twice_path([]), (a, b, None), (True, True, False), (None, None, None)) == [None, None, None]


def test_graph_backward_skips_absent_outputs_and_unreached_inputs():
    """An output the path does not form (None) is skipped even with a gradient; an input no used output reaches
    gets None (∂(sin a)/∂b is not formed), the other ∂/∂a = g cos a."""
    from ssmkit.ops.twice import graph_backward

    a = torch.randn(3, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    g = torch.randn(3, dtype=F64)

    def path(a_, b_):
        return torch.sin(a_), None

    da, db = graph_backward(path, (a, b), (True, True), (g, g))
    assert db is None
    np.testing.assert_allclose(_np(da), _np(g * torch.cos(a)), rtol=1e-14)
