"""RG-LRU / Hawk recurrent block specifics (arXiv 2402.19427): the layer against an independent float64 loop written
here from the paper's equations (gates included), segment resets = segments run separately, the init distribution
of a², bf16 autocast keeps the state float32, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ssmkit.ops as ops
from ssmkit.layers import RGLRU, RGLRUState
from tests.conftest import DEVICE, leaves, rel_err, run_steps, state_err

H = 3


def paper_loop(layer: RGLRU, u: torch.Tensor, resets: torch.Tensor | None = None, state=None):
    """The Hawk block one step at a time, from the equations (float64, no library code).

    g_t = GeLU_tanh(W_y u_t + b_y); z_t = W_x u_t + b_x; x_t = Σ_k w_k z_{t-k} + b over the segment only;
    r_t = σ(W_a x_t + b_a), i_t = σ(W_i x_t + b_i) with block-diagonal W_a, W_i; a_t = σ(Λ)^{c r_t};
    h_t = a_t h_{t-1} + √(1 - a_t²) i_t x_t (a_t = 0 and multiplier 1 at a segment start); y_t = W_out(g_t h_t) + b.
    """
    p = {k: v.detach().double().cpu() for k, v in layer.named_parameters()}  # the loop runs on the CPU
    W_a = torch.block_diag(*p["gate_a.weight"])  # (D, D): x @ W_a is the block-diagonal map
    W_i = torch.block_diag(*p["gate_x.weight"])
    b_a, b_i = p["gate_a.bias"].flatten(), p["gate_x.bias"].flatten()
    a_base = torch.sigmoid(p["Lambda"])  # (D,)
    Bsz, L, _ = u.shape
    D, Wc = layer.lru_width, layer.conv_width
    past = (torch.zeros(Bsz, Wc - 1, D, dtype=torch.float64) if state is None
            else state.conv.transpose(1, 2).double().cpu())
    h = torch.zeros(Bsz, D, dtype=torch.float64) if state is None else state.h.double().cpu()
    ys = []
    for t in range(L):
        start = torch.zeros(Bsz, dtype=torch.bool) if resets is None else resets[:, t].cpu()
        g = F.gelu(u[:, t] @ p["in_gate.weight"].T + p["in_gate.bias"], approximate="tanh")
        z = u[:, t] @ p["in_x.weight"].T + p["in_x.bias"]  # (B, D)
        past = torch.where(start[:, None, None], torch.zeros_like(past), past)  # a new segment has no past
        window = torch.cat([past, z[:, None]], 1)  # (B, W, D), oldest first
        x = sum(p["conv.weight"][:, k] * window[:, k] for k in range(Wc)) + p["conv.bias"]
        past = window[:, 1:]
        r = torch.sigmoid(x @ W_a + b_a)
        i = torch.sigmoid(x @ W_i + b_i)
        a = a_base ** (layer.c * r)
        mult = torch.sqrt(1 - a**2)
        a = torch.where(start[:, None], torch.zeros_like(a), a)
        mult = torch.where(start[:, None], torch.ones_like(mult), mult)
        h = a * h + mult * i * x
        ys.append((g * h) @ p["out.weight"].T + p["out.bias"])
    return torch.stack(ys, 1), RGLRUState(past.transpose(1, 2), h)


def random_block(seed: int = 0, **options) -> RGLRU:
    torch.manual_seed(seed)
    layer = RGLRU(H, device=DEVICE, dtype=torch.float64, **options)
    with torch.no_grad():  # nonzero biases and a stronger conv, so that every term shows
        for name, p in layer.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
        layer.conv.weight.mul_(10)
    return layer


@pytest.mark.parametrize("options", [{"lru_width": 4, "n_heads": 2}, {"lru_width": 6, "n_heads": 3, "init": "paper"},
                                     {"conv_width": 2, "c": 3.0}])
def test_forward_and_step_equal_the_paper_loop(options):
    layer = random_block(**options)
    u = torch.randn(2, 29, H, dtype=torch.float64, device=DEVICE)
    state = RGLRUState(torch.randn(2, layer.lru_width, layer.conv_width - 1, dtype=torch.float64, device=DEVICE),
                       torch.randn(2, layer.lru_width, dtype=torch.float64, device=DEVICE))
    resets = torch.zeros(2, 29, dtype=torch.bool, device=DEVICE)
    resets[0, [0, 9, 10, 27]] = True
    resets[1, 17] = True
    with torch.no_grad():
        for res in (None, resets):
            y_ref, h_ref = paper_loop(layer, u.cpu(), None if res is None else res, state)
            for backend in ("reference", "chunked"):
                with ops.use_backend(backend):
                    y, h = layer(u, state, resets=res)
                assert rel_err(y, y_ref) < 1e-12 and state_err(h, h_ref) < 1e-12, backend
            h_step, ys = state, []
            for t in range(29):
                y_t, h_step = layer.step(u[:, t], h_step, None if res is None else res[:, t])
                ys.append(y_t)
            assert rel_err(torch.stack(ys, 1), y_ref) < 1e-12 and state_err(h_step, h_ref) < 1e-12


def test_resets_equal_running_the_segments_separately():
    layer = random_block(lru_width=4, n_heads=2)
    u = torch.randn(1, 40, H, dtype=torch.float64, device=DEVICE)
    starts = [0, 3, 5, 21, 39]
    resets = torch.zeros(1, 40, dtype=torch.bool, device=DEVICE)
    resets[0, starts] = True
    h0 = leaves(layer.initial_state(1))
    h0 = RGLRUState(torch.randn_like(h0[0]), torch.randn_like(h0[1]))  # dropped at t = 0
    with torch.no_grad():
        y, h = layer(u, h0, resets=resets)
        pieces = []
        for a, b in zip(starts, starts[1:] + [40]):
            first = torch.zeros(1, b - a, dtype=torch.bool, device=DEVICE)
            first[0, 0] = True  # each segment alone, from its own start
            y_seg, h_seg = layer(u[:, a:b], resets=first)
            pieces.append(y_seg)
        assert rel_err(torch.cat(pieces, 1), y) < 1e-12
        assert state_err(h_seg, h) < 1e-12  # the last segment's state is the packed run's final state
        for k in (4, 6, 22, 38, 39):  # chunk boundaries just after a reset: the conv state must not leak across it
            y1, s1 = layer(u[:, :k], h0, resets=resets[:, :k])
            y2, s2 = layer(u[:, k:], s1, resets=resets[:, k:])
            assert rel_err(torch.cat([y1, y2], 1), y) < 1e-12 and state_err(s2, h) < 1e-12


def test_without_resets_the_first_step_is_normalised():
    # No resets: h_0 = √(1 - a_0²) i_0 x_0 (the state carries on); resets[:, 0] = True gives recurrentgemma's
    # training pass, h_0 = i_0 x_0. The two differ only through that first step.
    layer = random_block()
    u = torch.randn(2, 6, H, dtype=torch.float64, device=DEVICE)
    first = torch.zeros(2, 6, dtype=torch.bool, device=DEVICE)
    first[:, 0] = True
    with torch.no_grad():
        y, _ = layer(u)
        y_reset, _ = layer(u, resets=first)
    assert rel_err(y, paper_loop(layer, u.cpu())[0]) < 1e-12
    assert rel_err(y_reset, paper_loop(layer, u.cpu(), first.cpu())[0]) < 1e-12
    assert not torch.allclose(y, y_reset)


@pytest.mark.parametrize("init,power,low,high", [("ring", 2, 0.9**2, 0.999**2), ("paper", 8, 0.9, 0.999)])
def test_initial_decay_distribution(init, power, low, high):
    # ring: a² ~ U[0.9², 0.999²] (recurrentgemma); paper: a^c ~ U[0.9, 0.999] (arXiv 2402.19427 §2.4), a = σ(Λ).
    torch.manual_seed(3)
    n = 20000
    layer = RGLRU(1, lru_width=n, n_heads=n, init=init, dtype=torch.float64)  # 1×1 gate blocks: small
    v = torch.sigmoid(layer.Lambda.detach()) ** power
    assert float(v.min()) >= low - 1e-12 and float(v.max()) <= high + 1e-12
    # Kolmogorov-Smirnov distance to the uniform law: 1.95/√n is its 0.1 % critical value
    q = ((v - low) / (high - low)).sort().values
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float(torch.maximum((grid - q).abs(), (q - grid + 1 / n).abs()).max()) < 1.95 / math.sqrt(n)


def test_initialisation_scales():
    torch.manual_seed(4)
    layer = RGLRU(256, lru_width=512, n_heads=4, out_init_scale=2.0, dtype=torch.float64)
    sd = {k: float(v.detach().std()) for k, v in layer.named_parameters()}
    assert abs(sd["in_x.weight"] - 1 / 16) < 0.02 / 16 and abs(sd["in_gate.weight"] - 1 / 16) < 0.02 / 16
    assert abs(sd["out.weight"] - math.sqrt(2 / 512)) < 0.02 * math.sqrt(2 / 512)
    assert abs(sd["gate_a.weight"] - 1 / math.sqrt(128)) < 0.02 / math.sqrt(128)  # 1/block width
    assert abs(sd["conv.weight"] - math.sqrt(0.01 / 4)) < 0.1 * math.sqrt(0.01 / 4)
    for name, p in layer.named_parameters():
        if name.endswith("bias"):
            assert not bool(p.any()), name


def test_autocast_keeps_the_state_in_float32():
    layer = RGLRU(H, lru_width=4, n_heads=2, device=DEVICE)
    x = torch.randn(2, 50, H, device=DEVICE)
    with torch.no_grad(), torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
        y, h = layer(x.bfloat16())
        y_t, h_t = layer.step(x[:, 0].bfloat16(), h)
        assert layer.in_x(x).dtype == torch.bfloat16  # the projections do run in bf16
    assert y.dtype == torch.bfloat16 and y_t.dtype == torch.bfloat16
    assert h.h.dtype == torch.float32 and h.conv.dtype == torch.float32
    assert h_t.h.dtype == torch.float32 and h_t.conv.dtype == torch.float32
    double = RGLRU(H, device=DEVICE, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in leaves(double(torch.randn(1, 4, H, device=DEVICE))[1]))


def test_sqrt_clip_reaches_the_parameters():
    # With a_t → 1 (Λ large) 1 - a_t² falls below 2.5e-7, where the true d√v/dv exceeds 1000: the clipped rule keeps
    # the gradient of Λ finite and equal to the clipped formula (recurrentgemma's SqrtBoundDerivative).
    layer = RGLRU(H, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        layer.Lambda.fill_(30.0)  # σ(Λ) = 1 - 9e-14: 1 - a_t² ≈ 1e-12 c r_t
    u = torch.randn(1, 5, H, dtype=torch.float64, device=DEVICE)
    y, _ = layer(u)
    (g,) = torch.autograd.grad(y.sum(), [layer.Lambda])
    assert bool(torch.isfinite(g).all()) and bool(g.abs().max() > 0)


def test_pass_through_of_the_protocol():
    layer = RGLRU(H, lru_width=4, n_heads=2, device=DEVICE, dtype=torch.float64)
    x = torch.randn(2, 11, H, device=DEVICE, dtype=torch.float64)
    y, h = layer(x)
    y_steps, h_steps = run_steps(layer, x)
    assert rel_err(y_steps, y) < 1e-12 and state_err(h_steps, h) < 1e-12
    assert not layer.supports("kernel") and not layer.supports("state_space")
    with pytest.raises(NotImplementedError, match="not a convolution"):
        layer.kernel(5)


def test_bad_inputs_raise_value_errors():
    layer = RGLRU(H, device=DEVICE, dtype=torch.float64)
    x = torch.randn(2, 7, H, device=DEVICE, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"resets must be a \(B, L\) = \(2, 7\) bool tensor"):
        layer(x, resets=torch.zeros(2, 6, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="bool tensor"):
        layer(x, resets=torch.zeros(2, 7, device=DEVICE))
    with pytest.raises(ValueError, match="resets must be on the input's device"):
        layer(x, resets=torch.zeros(2, 7, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match=r"reset must be a \(B,\) = \(2,\) bool tensor"):
        layer.step(x[:, 0], layer.initial_state(2), torch.zeros(3, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="n_heads must divide lru_width = 6"):
        RGLRU(H, lru_width=6, n_heads=4)
    with pytest.raises(ValueError, match="a_min and a_max must satisfy"):
        RGLRU(H, a_min=0.99, a_max=0.9)
    with pytest.raises(ValueError, match=r"a_max must be a float in \(0, 1\)"):
        RGLRU(H, a_max=1.0)
    with pytest.raises(ValueError, match="c must be a finite float > 0"):
        RGLRU(H, c=0.0)
    with pytest.raises(ValueError, match="init must be one of"):
        RGLRU(H, init="uniform")
    with pytest.raises(ValueError, match="conv_width must be a positive int"):
        RGLRU(H, conv_width=0)
    with pytest.raises(ValueError, match="out_init_scale must be a finite float > 0"):
        RGLRU(H, out_init_scale=-1.0)
