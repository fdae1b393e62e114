"""ssmkit.ops.rows: projections by row blocks against F.linear (float64 autograd as the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssmkit.layers as layers
import ssmkit.ops.rows as rows
from ssmkit.ops import use_backend

F64 = torch.float64


def _leaves(g, M, K, sizes, bias):
    x = torch.randn(2, M, K, generator=g, dtype=F64).requires_grad_()
    W = torch.randn(sum(sizes), K, generator=g, dtype=F64).requires_grad_()
    b = torch.randn(sum(sizes), generator=g, dtype=F64).requires_grad_() if bias else None
    return x, W, b


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("sizes, unused", [((7,), None), ((4, 4), None), ((4, 4), 0), ((3, 2, 6), None),
                                           ((3, 2, 6), 2)], ids=["one", "two", "two-first-unused", "three",
                                                                 "three-last-unused"])
def test_split_linear_and_every_gradient_equal_f_linear_in_float64(bias, sizes, unused, monkeypatch):
    # 2 x 23 = 46 rows by blocks of 5: nine full blocks and a last one of 1; the blocked path is taken (asserted).
    monkeypatch.setattr(rows, "ROW_BLOCK", 5)
    g = torch.Generator().manual_seed(0)
    x, W, b = _leaves(g, 23, 6, sizes, bias)
    assert rows._blocked(x, W)
    outs = rows.split_linear(x, W, b, sizes)
    ref = [F.linear(x, w, None if b is None else bb) for w, bb in zip(W.split(sizes), (b.split(sizes) if bias else [None] * len(sizes)))]
    for o, r in zip(outs, ref):
        assert o.is_contiguous()
        torch.testing.assert_close(o, r, rtol=1e-13, atol=1e-13)
    gs = [torch.randn(r.shape, generator=g, dtype=F64) for r in ref]
    used = [k for k in range(len(sizes)) if k != unused]
    leaves = [t for t in (x, W, b) if t is not None]
    got = torch.autograd.grad([outs[k] for k in used], leaves, [gs[k] for k in used])
    want = torch.autograd.grad([ref[k] for k in used], leaves, [gs[k] for k in used])
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)


def _split_penalty(x, W, b, fn):
    xs, z = fn(x, W, b)
    return (xs.tanh() * z).sum()


def _glu_penalty(x, W, b, fn):
    return fn(x, W, b).sin().sum()


@pytest.mark.parametrize("loss, fast, slow", [
    (_split_penalty, lambda x, W, b: rows.split_linear(x, W, b, (4, 4)),
     lambda x, W, b: (F.linear(x, W[:4], b[:4]), F.linear(x, W[4:], b[4:]))),
    (_glu_penalty, rows.linear_glu, lambda x, W, b: F.glu(F.linear(x, W, b), dim=-1)),
], ids=["split_linear", "linear_glu"])
def test_double_backward_equals_f_linear(loss, fast, slow, monkeypatch):
    # A gradient penalty through the blocked op: the second derivative goes through F.linear (ops/twice.py).
    monkeypatch.setattr(rows, "ROW_BLOCK", 5)
    g = torch.Generator().manual_seed(1)
    x, W, b = _leaves(g, 17, 4, (4, 4), True)

    def penalty(fn):
        (gx,) = torch.autograd.grad(loss(x, W, b, fn), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), (x, W, b))

    for a, w in zip(penalty(fast), penalty(slow)):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)


def test_split_linear_float32_equals_f_linear_to_rounding():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, rows.ROW_BLOCK + 26, 64, generator=g)  # more than two blocks of rows, the last one partial
    W = torch.randn(96, 64, generator=g)
    assert rows._blocked(x, W)
    a, c = rows.split_linear(x, W, None, (32, 64))
    torch.testing.assert_close(torch.cat([a, c], -1), F.linear(x, W), rtol=1e-5, atol=1e-5)


def test_split_linear_refuses_sizes_that_do_not_cover_the_weight():
    W = torch.randn(8, 3)
    with pytest.raises(ValueError, match="add up to the weight's 8 rows"):
        rows.split_linear(torch.randn(4, 3), W, None, (4, 3))
    with pytest.raises(ValueError, match="must be positive"):
        rows.split_linear(torch.randn(4, 3), W, None, (8, 0))


def test_the_blocked_path_stands_aside_where_f_linear_must_run(monkeypatch):
    monkeypatch.setattr(rows, "ROW_BLOCK", 5)
    x, W = torch.randn(40, 3), torch.randn(4, 3)
    assert rows._blocked(x, W)
    assert not rows._blocked(x[:10], W)  # two blocks or fewer: one GEMM
    assert not rows._blocked(x.half(), W.half())
    assert not rows._blocked(x.double(), W)  # mixed dtypes: F.linear's error
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not rows._blocked(x, W)
        assert rows.linear(x, W).dtype == torch.bfloat16  # autocast's cast, as F.linear does
    from torch.autograd import forward_ad

    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x, torch.ones_like(x))
        assert not rows._blocked(dual, W)
        tangent = forward_ad.unpack_dual(rows.linear(dual, W)).tangent
        torch.testing.assert_close(tangent, torch.ones_like(x) @ W.mT)
    assert not torch.func.vmap(lambda t: torch.tensor(rows._blocked(t, W)))(x.view(8, 5, 3)).any()


class _Scaled(nn.Linear):
    """A subclass (as a LoRA or quantised wrapper would be): its forward must run, not F.linear on its weight."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_mamba_projections_go_through_a_wrapped_or_hooked_module(monkeypatch):
    # The layer calls its projections by ssmkit.ops.rows only when they are plain nn.Linear without hooks.
    monkeypatch.setattr(rows, "ROW_BLOCK", 5)
    torch.manual_seed(0)
    layer = layers.build("mamba", d_model=8, d_state=4, expand=2, dtype=F64)
    x = torch.randn(2, 13, 8, dtype=F64)
    with use_backend("reference"):
        y = layer(x)[0]
        handle = layer.out_proj.register_forward_hook(lambda m, i, o: 3 * o)
        torch.testing.assert_close(layer(x)[0], 3 * y)
        handle.remove()
        torch.testing.assert_close(layer(x)[0], y)
        calls = []  # the in-projection (split into x and z) went around its module before ssmkit.ops.rows
        handle = layer.in_proj.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape))
        torch.testing.assert_close(layer(x)[0], y)
        assert calls == [x.shape]
        handle.remove()
        handle = layer.dt_proj.register_forward_hook(lambda m, i, o: o + 3.0)  # forward and step both see it
        shifted = layer(x)[0]
        assert (shifted - y).abs().max() > 1e-3
        state, steps = layer.initial_state(2), []
        for t in range(x.shape[1]):
            out, state = layer.step(x[:, t], state)
            steps.append(out)
        torch.testing.assert_close(torch.stack(steps, 1), shifted)
        handle.remove()
        scaled = _Scaled(16, 8, bias=False, dtype=F64)
        scaled.weight.data.copy_(layer.out_proj.weight)
        layer.out_proj = scaled
        torch.testing.assert_close(layer(x)[0], 2 * y)


def _assert_blocks_of_5_equal_whole(module, x, monkeypatch):
    """The output and every gradient (input and parameters) of ``module`` with blocks of 5 rows against F.linear
    (rows.ROW_BLOCK huge), float64; returns the output."""
    x = x.clone().requires_grad_()
    gy = torch.randn(x.shape, dtype=x.dtype)
    result = {}
    for size in (10**9, 5):
        monkeypatch.setattr(rows, "ROW_BLOCK", size)
        module.zero_grad(set_to_none=True)
        x.grad = None
        y = module(x)[0]
        y.backward(gy)
        result[size] = [y.detach(), x.grad] + [p.grad for p in module.parameters()]
    for a, w in zip(result[5], result[10**9]):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)
    return result[5][0]


@pytest.mark.parametrize("name, backend", [("mamba", "reference"), ("mamba", "native"), ("mamba2", "auto"),
                                           ("rglru", "auto")])
def test_mixers_with_row_blocks_equal_f_linear_in_float64(name, backend, monkeypatch):
    # The whole layer, every parameter's gradient, blocks of 5 against F.linear (rows.ROW_BLOCK huge).
    torch.manual_seed(1)
    extra = {"mamba": {"d_state": 4, "expand": 2}, "mamba2": {"d_state": 4, "expand": 2, "headdim": 4}, "rglru": {}}
    layer = layers.build(name, d_model=8, dtype=F64, **extra[name])
    with use_backend(backend):
        _assert_blocks_of_5_equal_whole(layer, torch.randn(2, 13, 8, dtype=F64), monkeypatch)


@pytest.mark.parametrize("mixer_out", ["glu", "linear"])
def test_block_output_projection_by_row_blocks_equals_f_linear_and_keeps_hooks(mixer_out, monkeypatch):
    from ssmkit.models.block import Block

    torch.manual_seed(2)
    block = Block(layers.build("s4d", d_model=6, d_state=4, dtype=F64), mixer_out=mixer_out, dtype=F64)
    x = torch.randn(3, 11, 6, dtype=F64)
    y = _assert_blocks_of_5_equal_whole(block, x, monkeypatch)
    linear = block.out[0] if mixer_out == "glu" else block.out
    for hooked in {block.out, linear}:  # a hook on the projection, or on the Sequential around it, is run
        calls = []
        handle = hooked.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape))
        with torch.no_grad():
            torch.testing.assert_close(block(x)[0], y)
        assert calls == [x.shape]
        handle.remove()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("x_grad", [False, True])
def test_linear_glu_and_every_gradient_equal_f_glu_of_f_linear_in_float64(bias, x_grad, monkeypatch):
    monkeypatch.setattr(rows, "ROW_BLOCK", 5)
    g = torch.Generator().manual_seed(3)
    x, W, b = _leaves(g, 23, 6, (4, 4), bias)
    x.requires_grad_(x_grad)
    assert rows._blocked(x, W)
    y = rows.linear_glu(x, W, b)
    ref = F.glu(F.linear(x, W, b), dim=-1)
    torch.testing.assert_close(y, ref, rtol=1e-13, atol=1e-13)
    gy = torch.randn(ref.shape, generator=g, dtype=F64)
    leaves = [t for t in (x, W, b) if t is not None and t.requires_grad]
    for a, w in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)


def test_linear_glu_refuses_a_weight_without_two_halves():
    with pytest.raises(ValueError, match="even number of rows"):
        rows.linear_glu(torch.randn(4, 3), torch.randn(5, 3))
