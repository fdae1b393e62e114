"""The causal depthwise convolution (``ssmkit.ops.conv``) against a float64 direct sum written here from its definition
y_t = act(b + Σ_k m_{t,k} w_{W-1-k} x_{t-k}) (the short convolution of H3, Hyena, Mamba and Griffin; the document
mask m of Griffin's Conv1D, arXiv 2402.19427: m_{t,k} = 1 iff no segment starts in (t-k, t]), with the carried state
(the last W-1 inputs, those before the latest segment start zeroed): every backend, the step, the segment form, and
each argument refused by name."""

from __future__ import annotations

import pytest
import torch

import ssmkit.ops.conv as conv_module
from ssmkit.ops.conv import (
    activate,
    causal_conv1d,
    causal_conv1d_reference,
    causal_conv1d_segments,
    causal_conv1d_step,
    causal_conv1d_torch,
    check_activation,
)
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE, rel_err

F64 = torch.float64
B, L, C = 2, 9, 5


def conv_ref(x, w, b=None, state=None, resets=None, activation=None):
    """(y (B, L, C), state after x (B, C, W-1)) by loops in float64: input s < 0 is state[..., W-1+s]; a lag k term
    is dropped when a segment starts in (t-k, t]; a state entry at position p is kept iff none starts in (p, L-1]."""
    Bz, Lx, Cx = x.shape
    W = w.shape[1]
    past = torch.zeros(Bz, Cx, W - 1, dtype=F64) if state is None else state.double().cpu()
    xs = torch.cat([past, x.double().cpu().transpose(1, 2)], dim=-1)  # (B, C, W-1+L): position p at W-1+p
    r = torch.zeros(Bz, Lx, dtype=torch.bool) if resets is None else resets.cpu()
    w = w.double().cpu()
    y = torch.zeros(Bz, Lx, Cx, dtype=F64)
    for i in range(Bz):
        for t in range(Lx):
            for k in range(W):
                if not bool(r[i, max(t - k + 1, 0): t + 1].any()):
                    y[i, t] += w[:, W - 1 - k] * xs[i, :, W - 1 + t - k]
    if b is not None:
        y = y + b.double().cpu()
    if activation == "silu":
        y = y / (1 + torch.exp(-y))
    final = torch.zeros(Bz, Cx, W - 1, dtype=F64)
    for i in range(Bz):
        for q in range(W - 1):
            p = Lx - (W - 1) + q
            if not bool(r[i, max(p + 1, 0):].any()):
                final[i, :, q] = xs[i, :, W - 1 + p]
    return y, final


def draw(W: int, seed: int, bias: bool = True, state: bool = True):
    """x (B, L, C), w (C, W), b (C,) or None, state (B, C, W-1) or None: seeded float64 normals."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(DEVICE)

    return r(B, L, C), r(C, W), (r(C) if bias else None), (r(B, C, W - 1) if state else None)


NATIVE = DEVICE.type == "cpu" and native_available("causal_conv1d", F64)
BACKENDS = ["reference", "chunked", "auto"] + (["native"] if NATIVE else [])  # the C kernel where it runs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("W", [1, 2, 3, 5])
@pytest.mark.parametrize("bias,state,activation", [(True, True, None), (False, False, "silu"), (True, False, "silu"),
                                                   (False, True, None)])
def test_every_backend_equals_the_direct_sum(backend, W, bias, state, activation):
    x, w, b, s0 = draw(W, 10 * W + bias + 2 * state, bias, state)
    y_ref, s_ref = conv_ref(x, w, b, s0, activation=activation)
    y, s = causal_conv1d(x, w, b, s0, activation=activation, backend=backend)
    assert rel_err(y, y_ref) < 1e-13 and s.shape == (B, C, W - 1) and rel_err(s, s_ref) == 0.0
    y2, none = causal_conv1d(x, w, b, s0, False, activation=activation, backend=backend)
    assert none is None and rel_err(y2, y_ref) < 1e-13


@pytest.mark.parametrize("W", [1, 2, 4])
def test_torch_path_and_oracle_equal_the_direct_sum(W):
    x, w, b, s0 = draw(W, W)
    y_ref, s_ref = conv_ref(x, w, b, s0, activation="silu")
    y, s = causal_conv1d_torch(x, w, b, s0, activation="silu")
    assert rel_err(y, y_ref) < 1e-13 and torch.equal(s.cpu(), s_ref)
    y, s = causal_conv1d_reference(x, w, None, None)
    y_ref, s_ref = conv_ref(x, w)
    assert rel_err(y, y_ref) < 1e-13 and torch.equal(s.cpu(), s_ref)


@pytest.mark.parametrize("W,bias", [(1, True), (3, False), (4, True)])
def test_steps_equal_the_direct_sum(W, bias):
    x, w, b, s0 = draw(W, 7 + W, bias)
    y_ref, s_ref = conv_ref(x, w, b, s0)
    s, ys = s0, []
    for t in range(L):
        y_t, s = causal_conv1d_step(x[:, t], w, b, s)
        ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y_ref) < 1e-13 and torch.equal(s.cpu(), s_ref)


def resets_draw() -> torch.Tensor:
    """(B, L) bool segment starts: batch 0 starts at 0, 3, 4 and 8; batch 1 at 6 only."""
    r = torch.zeros(B, L, dtype=torch.bool)
    r[0, [0, 3, 4, 8]] = True
    r[1, 6] = True
    return r.to(DEVICE)


@pytest.mark.parametrize("W", [1, 2, 3, 5])
@pytest.mark.parametrize("bias,state", [(True, True), (False, False)])
def test_segments_equal_the_masked_direct_sum(W, bias, state):
    x, w, b, s0 = draw(W, 30 + W, bias, state)
    resets = resets_draw()
    y_ref, s_ref = conv_ref(x, w, b, s0, resets)
    y, s = causal_conv1d_segments(x, w, b, s0, resets)
    assert rel_err(y, y_ref) < 1e-13 and s.shape == (B, C, W - 1) and torch.equal(s.cpu(), s_ref)
    y2, none = causal_conv1d_segments(x, w, b, s0, resets, return_state=False)
    assert none is None and rel_err(y2, y_ref) < 1e-13
    for k in (2, 5, 7):  # cut anywhere, continued from the state: the masked sum of the whole sequence
        y1, s1 = causal_conv1d_segments(x[:, :k], w, b, s0, resets[:, :k])
        y2, s2 = causal_conv1d_segments(x[:, k:], w, b, s1, resets[:, k:])
        assert rel_err(torch.cat([y1, y2], 1), y_ref) < 1e-13 and torch.equal(s2.cpu(), s_ref)


def test_activation_is_checked_and_applied():
    y = torch.tensor([-2.0, 0.5, 3.0], dtype=F64)
    assert torch.equal(activate(y, None), y)
    assert rel_err(activate(y, "silu"), y / (1 + torch.exp(-y))) < 1e-15
    check_activation(None)
    check_activation("silu")
    for bad in ("gelu", "SiLU", 1):
        with pytest.raises(ValueError, match="activation must be one of"):
            check_activation(bad)
        with pytest.raises(ValueError, match="activation must be one of"):
            activate(y, bad)
    x, w, b, s0 = draw(3, 1)
    for fn in (causal_conv1d_torch, causal_conv1d):
        with pytest.raises(ValueError, match="activation must be one of"):
            fn(x, w, b, s0, activation="relu")


def bad_calls():
    """(call, message) for each argument ``_check`` refuses."""
    x, w, b, s0 = draw(3, 2)
    x32 = x.float()
    ints = torch.ones(B, L, C, dtype=torch.int64)
    return [
        (lambda: causal_conv1d(ints, w), "x must"),
        (lambda: causal_conv1d(x[0], w), r"x must be \(B, L, H\) with L >= 1"),
        (lambda: causal_conv1d(x[:, :0], w), r"x must be \(B, L, H\) with L >= 1"),
        (lambda: causal_conv1d(x, w[:4]), r"weight must be \(H, W\) with H=5"),
        (lambda: causal_conv1d(x, w[:, :0]), r"weight must be \(H, W\)"),
        (lambda: causal_conv1d(x, w[0]), r"weight must be \(H, W\)"),
        (lambda: causal_conv1d(x, [1.0, 2.0]), r"weight must be \(H, W\) with H=5 \(from x\) and W >= 1; got list"),
        (lambda: causal_conv1d(x32, w.float(), b), "bias must have x's dtype"),
        (lambda: causal_conv1d(x32, w), "weight must have x's dtype"),
        (lambda: causal_conv1d(x32, w.float(), b.float(), s0), "state must have x's dtype"),
        (lambda: causal_conv1d(x, w, b[:4]), r"bias must be \(H,\) = \(5,\)"),
        (lambda: causal_conv1d(x, w, b, s0[:, :, :1]), r"state must be \(B, H, W-1\) = \(2, 5, 2\)"),
        (lambda: causal_conv1d(x, w, b, s0[:1]), r"state must be \(B, H, W-1\)"),
        (lambda: causal_conv1d_step(x, w, b, s0), r"x_t must be \(B, H\)"),
        (lambda: causal_conv1d_step(ints[:, 0], w, b, s0), "x_t must"),
        (lambda: causal_conv1d_step(x[:, 0], w, b, s0[:, :, 1:]), r"state must be \(B, H, W-1\)"),
        (lambda: causal_conv1d_segments(x, w, b, s0, torch.zeros(B, L)), r"resets must be a \(B, L\)"),
        (lambda: causal_conv1d_segments(x, w, b, s0, torch.zeros(B, L - 1, dtype=torch.bool)),
         r"resets must be a \(B, L\) = \(2, 9\) bool tensor"),
        (lambda: causal_conv1d_segments(x, w, b, s0, [[True]]), "resets must be .* got list"),
        (lambda: causal_conv1d_segments(x[0], w, b, s0, torch.zeros(B, L, dtype=torch.bool)), "x must be"),
    ]


@pytest.mark.parametrize("fn", [causal_conv1d_reference, causal_conv1d_torch])
def test_the_oracle_and_the_torch_path_check_their_arguments(fn):
    x, w, b, s0 = draw(3, 3)
    for args, match in (((x, w[:4]), r"weight must be \(H, W\) with H=5"), ((x[0], w), r"x must be \(B, L, H\)"),
                        ((x, w, b[:2]), r"bias must be \(H,\)"),
                        ((x, w, b, s0[:, :, :1]), r"state must be \(B, H, W-1\)"),
                        ((x.float(), w), "weight must have x's dtype")):
        with pytest.raises(ValueError, match=match):
            fn(*args)


@pytest.mark.parametrize("case", range(20))
def test_bad_arguments_are_refused_by_name(case):
    calls = bad_calls()
    assert len(calls) == 20
    call, match = calls[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_the_loop_oracle_is_the_definition_at_one_point():
    # one output by hand: W = 3, y_1 = w_0 s_1 + w_1 x_0 + w_2 x_1 + b (the state's newest entry s_1 is x_{-1})
    x = torch.tensor([[[2.0], [3.0]]], dtype=F64)
    w = torch.tensor([[5.0, 7.0, 11.0]], dtype=F64)
    s0 = torch.tensor([[[13.0, 17.0]]], dtype=F64)
    y, s = causal_conv1d_reference(x, w, torch.tensor([0.5], dtype=F64), s0)
    assert float(y[0, 1, 0]) == 5 * 17 + 7 * 2 + 11 * 3 + 0.5
    assert float(y[0, 0, 0]) == 5 * 13 + 7 * 17 + 11 * 2 + 0.5
    assert s.tolist() == [[[2.0, 3.0]]]


def test_tensors_on_another_device_are_refused_by_name():
    x, w, b, s0 = draw(3, 4)
    meta = {"device": "meta", "dtype": F64}
    for args, name in (((x, w.to(**meta), b, s0), "weight"), ((x, w, b.to(**meta), s0), "bias"),
                       ((x, w, b, s0.to(**meta)), "state")):
        with pytest.raises(ValueError, match=f"{name} must be on x's device"):
            causal_conv1d(*args)
    resets = torch.zeros(B, L, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match="resets must be on x's device"):
        causal_conv1d_segments(x, w, b, s0, resets)


@pytest.mark.skipif(not NATIVE, reason="the C kernel does not run here")
def test_auto_takes_the_c_kernel_on_the_cpu(monkeypatch):
    calls = []

    def recorder(name, fn):
        """fn, recording ``name`` at each call."""
        def wrapped(*args):
            calls.append(name)
            return fn(*args)
        return wrapped

    for name, fn in list(conv_module._CONV.items()):
        monkeypatch.setitem(conv_module._CONV, name, recorder(name, fn))
    x, w, b, s0 = draw(3, 5)
    y, s = causal_conv1d(x, w, b, s0, backend="auto")
    y_ref, s_ref = conv_ref(x, w, b, s0)
    assert calls == ["native"] and rel_err(y, y_ref) < 1e-13 and torch.equal(s, s_ref)
