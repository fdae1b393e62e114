"""Mamba-2 (arXiv 2405.21060): the mixer against an independent float64 loop written from the equations, decoding
from a prefilled state, continuation from a cached state, initialisation and bad options. (The protocol suite in
test_protocol.py covers step = forward, chunked = one pass with gradients, causality and the backends.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ssmkit.layers as layers
from ssmkit.ops import use_backend
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, run_steps, state_err, variants


def mixer_loop(layer, u: torch.Tensor) -> torch.Tensor:
    """The Mamba-2 mixer from its equations, one time step and one head at a time, in float64 (from zero states).

    [z, x', B', C', δ] = W_in u; [x, B, C] = SiLU(causal depthwise conv [x', B', C']); Δ = softplus(δ + dt_bias);
    A = -exp(A_log); per head h of group g = h // (heads per group): H ← exp(ΔA) H + Δ x_h B_gᵀ, y_h = H C_g + D x_h;
    then y ⊙ SiLU(z) normalised by the RMS of each of G channel groups (or normalised first, then gated), times w;
    out = W_out y.
    """
    p = {k: v.detach().double().cpu() for k, v in layer.named_parameters()}
    u = u.double().cpu()
    Bsz, L, _ = u.shape
    E, G, N, nh, P = layer.d_inner, layer.ngroups, layer.d_state, layer.nheads, layer.headdim
    zxbcdt = u @ p["in_proj.weight"].T + (p["in_proj.bias"] if layer.bias else 0)
    z, xBC, delta = zxbcdt[..., :E], zxbcdt[..., E : 2 * E + 2 * G * N], zxbcdt[..., 2 * E + 2 * G * N :]
    W = layer.d_conv
    past = torch.cat([torch.zeros(Bsz, W - 1, xBC.shape[-1], dtype=torch.float64), xBC], dim=1)
    conv = torch.stack([sum(p["conv.weight"][:, k] * past[:, t + k] for k in range(W)) for t in range(L)], dim=1)
    xBC = F.silu(conv + (p["conv.bias"] if layer.conv_bias else 0))
    x, Bv, Cv = xBC[..., :E], xBC[..., E : E + G * N], xBC[..., E + G * N :]
    dt = F.softplus(delta + p["dt_bias"])  # (B, L, heads)
    A = -torch.exp(p["A_log"])
    D = p["D"]
    y = torch.zeros(Bsz, L, E, dtype=torch.float64)
    for h in range(nh):
        g = h // (nh // G)
        state = torch.zeros(Bsz, P, N, dtype=torch.float64)
        for t in range(L):
            x_h = x[:, t, h * P : (h + 1) * P]  # (B, P)
            B_g, C_g = Bv[:, t, g * N : (g + 1) * N], Cv[:, t, g * N : (g + 1) * N]  # (B, N)
            state = torch.exp(dt[:, t, h] * A[h])[:, None, None] * state + dt[:, t, h, None, None] * x_h[:, :, None] * B_g[:, None, :]
            skip = D[h * P : (h + 1) * P] if layer.D_has_hdim else D[h]
            y[:, t, h * P : (h + 1) * P] = (state * C_g[:, None, :]).sum(-1) + skip * x_h
    if not layer.rmsnorm:
        y = y * F.silu(z)
    else:
        if not layer.norm_before_gate:
            y = y * F.silu(z)
        size = E // G
        for g in range(G):
            block = y[..., g * size : (g + 1) * size]
            y[..., g * size : (g + 1) * size] = block / torch.sqrt(block.square().mean(-1, keepdim=True) + 1e-5)
        y = y * p["norm.weight"]
        if layer.norm_before_gate:
            y = y * F.silu(z)
    return y @ p["out_proj.weight"].T + (p["out_proj.bias"] if layer.bias else 0)


@pytest.mark.parametrize("i", range(len(variants("mamba2"))))
def test_forward_equals_the_equations(i):
    layer = make_layer("mamba2", variants("mamba2")[i])
    with torch.no_grad():  # perturb the unit inits so that D, the norm weight and the biases all matter
        for name, param in layer.named_parameters():
            if name in ("D", "norm.weight") or name.endswith("bias") and name != "dt_bias":
                param.add_(0.3 * torch.randn_like(param))
    u = torch.randn(2, 19, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        for backend in ("chunked", "reference"):
            with use_backend(backend):
                y, _ = layer(u)
            assert rel_err(y, mixer_loop(layer, u)) < 1e-12, backend  # float64, observed ~1e-16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decoding_from_a_prefilled_state_equals_the_full_forward(dtype):
    # generation: prefill a prompt with forward (the chunked SSD, from a cached state), then decode token by token
    layer = make_layer("mamba2", dtype=dtype)
    x = torch.randn(2, 45, H, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        y, h = layer(x)
        _, cache = layer(x[:, :19])
        y_decode, h_decode = run_steps(layer, x[:, 19:], cache)
    tol = {torch.float32: 1e-5, torch.float64: 1e-10}[dtype]  # docs/design.md rule 1
    assert rel_err(y_decode, y[:, 19:]) < tol and state_err(h_decode, h) < tol


def test_decoding_under_bf16_autocast():
    # Under autocast the projections run in bf16 and the conv, scan and norm in float32. Prefill + decode and the full
    # forward round the same projections' inputs to bf16, but a (B, d) and a (B, L, d) bf16 matmul may accumulate in
    # different orders, so a few outputs differ by the bf16 rounding of the projection outputs (2^-9 relative, carried
    # through the norm): tolerance 1e-2 of the largest output (observed on CPU: outputs equal, states 1e-7 apart).
    # The state stays float32.
    layer = make_layer("mamba2", dtype=torch.float32)
    x = torch.randn(2, 45, H, device=DEVICE)
    with torch.no_grad(), torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
        y, h = layer(x)
        _, cache = layer(x[:, :19])
        y_decode, h_decode = run_steps(layer, x[:, 19:], cache)
    assert y.dtype == torch.float32 and all(t.dtype == torch.float32 for t in leaves(h_decode))
    assert rel_err(y_decode, y[:, 19:]) < 1e-2 and state_err(h_decode, h) < 1e-2
    with torch.no_grad():
        y32, _ = layer(x)
    assert rel_err(y, y32) < 3e-2  # bf16 projections against the float32 layer


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gated_norm_of_large_groups_in_float32(norm_before_gate):
    # RMSNorm_G(v) = v / √(mean(v²) + eps) per group: a float32 group above ~1.8e19 used to square to inf and come out
    # as zeros (a Mamba-2 layer fed inputs x 1e5 gave outputs 100% wrong, all finite). Each group here sits at its own
    # scale, tiny to near float32's largest; against the float64 formula, output and gradient.
    from ssmkit.layers.mamba2 import GatedRMSNorm

    norm = GatedRMSNorm(16, 4, norm_before_gate, device=DEVICE)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(16))
    scales = torch.tensor([1e-3, 1.0, 1e20, 1e30], dtype=torch.float64, device=DEVICE).repeat_interleave(4)  # (16,)
    y = torch.randn(3, 5, 16, dtype=torch.float64, device=DEVICE) * scales
    z = torch.randn(3, 5, 16, dtype=torch.float64, device=DEVICE)
    g = torch.randn(3, 5, 16, dtype=torch.float64, device=DEVICE)

    def formula(y, z):
        v = y if norm_before_gate else y * F.silu(z)
        groups = v.unflatten(-1, (4, 4))
        out = (groups / torch.sqrt(groups.square().mean(-1, keepdim=True) + 1e-5)).flatten(-2) * norm.weight.double()
        return out * F.silu(z) if norm_before_gate else out

    y32 = y.float().requires_grad_(True)
    out = norm(y32, z.float())
    out.backward(g.float())
    y64 = y.clone().requires_grad_(True)
    expected = formula(y64, z)
    expected.backward(g)
    assert torch.isfinite(out).all() and rel_err(out, expected) < 1e-5  # observed ~1e-7 (was 1.0)
    for group in range(4):  # the gradients of each scale against their own size (they scale as 1/scale)
        cols = slice(4 * group, 4 * group + 4)
        assert rel_err(y32.grad[..., cols], y64.grad[..., cols]) < 1e-5


def test_large_inputs_in_float32_match_the_float64_equations():
    # x·1e5 drives y ⊙ SiLU(z) to ~1e24 before the norm (float32 squares overflow there); forward and step
    layer = make_layer("mamba2", dtype=torch.float32)
    u = 1e5 * torch.randn(2, 19, H, device=DEVICE, dtype=torch.float64)
    expected = mixer_loop(layer, u)
    with torch.no_grad():
        for backend in ("chunked", "reference"):
            with use_backend(backend):
                y, _ = layer(u.float())
            assert rel_err(y, expected) < 1e-5, backend  # observed ~2e-7 (was 1.0)
        y_steps, _ = run_steps(layer, u.float())
    assert rel_err(y_steps, expected) < 1e-5


def test_continuation_from_a_cached_state_equals_one_pass():
    # the official module's prefill ignores a cache; here every multi-token call continues from the state it is given
    layer = make_layer("mamba2", chunk_size=4)
    x = torch.randn(2, 41, H, device=DEVICE, dtype=torch.float64)
    y, h = layer(x)
    cuts = [0, 3, 4, 11, 29, 30, 41]  # pieces shorter, equal and longer than a chunk, ends inside chunks
    state, pieces = None, []
    for a, b in zip(cuts, cuts[1:]):
        y_piece, state = layer(x[:, a:b], state)
        pieces.append(y_piece)
    assert rel_err(torch.cat(pieces, dim=1), y) < 1e-12 and state_err(state, h) < 1e-12
    zero_start, _ = layer(x, layer.initial_state(2))
    assert torch.equal(zero_start, y)


def test_initialisation():
    torch.manual_seed(0)
    layer = layers.build("mamba2", d_model=64, headdim=2, d_state=4, dt_min=1e-3, dt_max=0.1, device=DEVICE)
    assert layer.nheads == 64 and layer.A_log.shape == (64,) and layer.dt_bias.shape == (64,)
    A = torch.exp(layer.A_log.detach().double())  # -A ~ U[1, 16]
    assert float(A.min()) >= 1 - 1e-6 and float(A.max()) <= 16 + 1e-5 and float(A.max() - A.min()) > 10
    dt = F.softplus(layer.dt_bias.detach().double())  # Δ₀ = softplus(dt_bias) ∈ [dt_min, dt_max], log-uniform
    assert float(dt.min()) >= 1e-3 * (1 - 1e-5) and float(dt.max()) <= 0.1 * (1 + 1e-5)
    assert float(dt.log().max() - dt.log().min()) > 0.7 * math.log(100)
    assert torch.equal(layer.D.detach(), torch.ones(64, device=DEVICE))
    assert torch.equal(layer.norm.weight.detach(), torch.ones(128, device=DEVICE))
    floored = layers.build("mamba2", d_model=64, headdim=2, d_state=4, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-3)
    assert torch.allclose(F.softplus(floored.dt_bias.detach()), torch.full((64,), 1e-3), rtol=1e-5)  # the floor
    ranged = layers.build("mamba2", d_model=8, headdim=2, d_state=4, A_init_range=(2.0, 3.0), D_has_hdim=True)
    assert bool(((ranged.A_log.exp() >= 2 - 1e-6) & (ranged.A_log.exp() <= 3 + 1e-6)).all())
    assert ranged.D.shape == (16,)
    assert layers.optim_marks(layer) == {"dt_bias": {"weight_decay": 0.0}, "A_log": {"weight_decay": 0.0}}
    assert layer.block_defaults == layers.BlockDefaults(None, None)
    spec = layer.state_spec()
    assert spec.conv.shape == (128 + 2 * 4, 3) and spec.ssm.shape == (64, 2, 4)


def test_optimizer_groups():
    from ssmkit.train import param_groups

    layer = layers.build("mamba2", d_model=8, headdim=2, d_state=4, lr=1e-3)
    names = {id(p): n for n, p in layer.named_parameters()}
    groups = {(g["lr"], g["weight_decay"]): sorted(names[id(p)] for p in g["params"])
              for g in param_groups(layer, lr=1e-2, weight_decay=0.1)}
    assert groups[(1e-3, 0.0)] == ["A_log", "dt_bias"]  # the SSM parameters: their own lr, no weight decay
    assert "norm.weight" in groups[(1e-2, 0.0)] and "conv.bias" in groups[(1e-2, 0.0)]  # norms and biases
    assert {"D", "in_proj.weight", "out_proj.weight", "conv.weight"} == set(groups[(1e-2, 0.1)])  # D like any skip


def test_defaults_are_the_official_ones():
    layer = layers.build("mamba2", d_model=64)
    assert (layer.d_state, layer.d_conv, layer.expand, layer.headdim, layer.ngroups, layer.chunk_size) == (128, 4, 2, 64, 1, 64)
    assert layer.nheads == 2 and layer.in_proj.weight.shape == (2 * 128 + 2 * 128 + 2, 64)
    assert layer.in_proj.bias is None and layer.out_proj.bias is None and layer.conv.bias is not None
    assert layer.norm is not None and not layer.norm_before_gate and layer.D.shape == (2,)


def test_bad_options_raise():
    def build(**options):
        return layers.build("mamba2", **{"d_model": H, "headdim": 2, "d_state": 4, **options})

    with pytest.raises(ValueError, match=r"headdim must divide expand·d_model = 2·3 = 6.*headdim=4"):
        build(headdim=4)
    with pytest.raises(ValueError, match="ngroups must divide the 3 heads"):
        build(ngroups=2)
    for name in ("d_conv", "expand", "headdim", "ngroups", "chunk_size", "d_state"):
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            build(**{name: 0})
    for bad in ((0.0, 16.0), (16.0, 1.0), (1.0, math.inf), [1.0, 16.0, 3.0], (1.0,), "1, 16"):
        with pytest.raises(ValueError, match="A_init_range must be a tuple"):
            build(A_init_range=bad)
    for bad in (-1e-4, math.nan, "1e-4"):
        with pytest.raises(ValueError, match="dt_init_floor must be a finite float >= 0"):
            build(dt_init_floor=bad)
    for flag in ("rmsnorm", "norm_before_gate", "D_has_hdim", "bias", "conv_bias"):
        with pytest.raises(ValueError, match=f"{flag} must be True or False"):
            build(**{flag: 1})
    with pytest.raises(TypeError):
        build(dt_limit=(0.0, 1.0))  # not offered (the official default clamps nothing)
    layer = build()
    with pytest.raises(NotImplementedError, match="selective"):
        layer.kernel(4)
    with pytest.raises(NotImplementedError, match="selective"):
        layer.state_space()
    with pytest.raises(ValueError, match=r"state\[1\] must be \(2, 3, 2, 4\)"):
        layer(torch.randn(2, 5, H), layer.initial_state(2)._replace(ssm=torch.zeros(2, 3, 4, 2)))
