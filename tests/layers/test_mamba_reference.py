"""Mamba (arXiv 2312.00752) and Mamba-2 (arXiv 2405.21060) against references that do not go through ssmkit's scans:
float64 per-step loops of the blocks written here from the papers' equations (with the official conventions of
layers-checked.md in the shared notes), from random initial states, forward on every backend and step by step, with
every parameter moved off its initial value; and the initialisation laws by Kolmogorov-Smirnov against their closed
forms (probe 30, docs/design.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import ssmkit.layers as layers
from ssmkit.layers import Mamba, MambaState
from ssmkit.ops import use_backend
from tests.conftest import DEVICE, rel_err, run_steps, runnable_backends

F64 = torch.float64


def perturbed(layer, scale=0.2, seed=11):
    """``layer`` with every parameter moved off its initial value (units, ones and log(1..N) all matter)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=F64).to(p))
    return layer


def causal_window(conv0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[the W-1 remembered inputs (B, C, W-1), oldest first; x (B, L, C)] -> (B, W-1+L, C)."""
    return torch.cat([conv0.transpose(1, 2), x], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Mamba-1


def mamba_loop(layer: Mamba, u, conv0, ssm0, dt_weight_scale=1.0):
    """The Mamba-1 mixer, one step at a time in float64 (arXiv 2312.00752 §3.4, Algorithm 2; Euler B̄ = Δ B as in
    the official code): x, z = W_in u; x ← SiLU(Σ_k w_k x_{t-W+1+k} + b); [δ, B, C] = W_x x; Δ = softplus(W_Δ δ + b_Δ);
    h ← exp(Δ A) h + Δ x B; y = C·h + D x; out = W_out(y SiLU(z)). Returns out, the final conv and SSM states."""
    p = {k: v.detach().to(F64).cpu() for k, v in layer.named_parameters()}
    u, conv0, h = u.to(F64).cpu(), conv0.to(F64).cpu(), ssm0.to(F64).cpu().clone()
    Hin, N, R, W = layer.d_inner, layer.d_state, layer.rank, layer.d_conv
    xz = u @ p["in_proj.weight"].T + (p["in_proj.bias"] if layer.bias else 0)
    x, z = xz[..., :Hin], xz[..., Hin:]
    past = causal_window(conv0, x)
    A = -torch.exp(p["A_log"])  # (Hin, N)
    outs = []
    for t in range(u.shape[1]):
        c = sum(p["conv1d.weight"][:, k] * past[:, t + k] for k in range(W))
        xc = F.silu(c + (p["conv1d.bias"] if layer.conv_bias else 0))  # (B, Hin)
        dbc = xc @ p["x_proj.weight"].T
        delta_low, B, C = dbc[:, :R], dbc[:, R : R + N], dbc[:, R + N :]
        delta = F.softplus(delta_low @ (dt_weight_scale * p["dt_proj.weight"]).T + p["dt_bias"])  # (B, Hin)
        h = torch.exp(delta[..., None] * A) * h + (delta * xc)[..., None] * B[:, None, :]
        y = (h * C[:, None, :]).sum(-1) + p["D"] * xc
        outs.append((y * F.silu(z[:, t])) @ p["out_proj.weight"].T + (p["out_proj.bias"] if layer.bias else 0))
    conv = past[:, past.shape[1] - (W - 1) :].transpose(1, 2) if W > 1 else conv0
    return torch.stack(outs, 1), conv, h


MAMBA_CASES = [
    dict(d_state=4),
    dict(d_state=3, d_conv=2, expand=1, dt_rank=2, dt_init="constant", bias=True, conv_bias=False),
    dict(d_state=5, d_conv=3, expand=3, dt_rank=3, bias=True),
    dict(d_state=2, d_conv=1),
]


def mamba_case(opts, dtype=F64, seed=0):
    torch.manual_seed(seed)
    layer = perturbed(Mamba(5, device=DEVICE, dtype=dtype, **opts))
    Hin = layer.d_inner
    conv0 = 0.7 * torch.randn(2, Hin, layer.d_conv - 1, dtype=dtype, device=DEVICE)
    ssm0 = 0.7 * torch.randn(2, Hin, layer.d_state, dtype=dtype, device=DEVICE)
    u = torch.randn(2, 13, 5, dtype=dtype, device=DEVICE)
    return layer, u, MambaState(conv0, ssm0)


def _check_forward_and_steps(layer, u, h0, y_ref, ssm_ref, conv_ref, tol):
    """The block's forward on every backend and its step, from the state h0, against the loop's y and final SSM state
    (to ``tol``) and, when given, its final convolution state (to 1e-15: copied inputs)."""
    with torch.no_grad():
        steps = run_steps(layer, u, h0)
        for backend in runnable_backends(layer):
            with use_backend(backend):
                y, h = layer(u, h0)
            for name, (yy, hh) in ((backend, (y, h)), ("step", steps)):
                assert rel_err(yy, y_ref) < tol and rel_err(hh.ssm, ssm_ref) < tol, name
                if conv_ref is not None:
                    assert hh.conv.shape == conv_ref.shape and rel_err(hh.conv, conv_ref) < 1e-15, name


@pytest.mark.parametrize("i", range(len(MAMBA_CASES)))
def test_mamba_forward_and_steps_equal_the_float64_loop_from_a_given_state(i):
    layer, u, h0 = mamba_case(MAMBA_CASES[i])
    y_ref, conv_ref, ssm_ref = mamba_loop(layer, u, *h0)
    _check_forward_and_steps(layer, u, h0, y_ref, ssm_ref, conv_ref, tol=1e-12)  # observed ~1e-16


def test_mamba_float32_layer_follows_the_float64_loop():
    layer, u, h0 = mamba_case(MAMBA_CASES[0], dtype=torch.float32, seed=3)
    y_ref, _, ssm_ref = mamba_loop(layer, u, *h0)
    _check_forward_and_steps(layer, u, h0, y_ref, ssm_ref, None, tol=1e-5)


def test_mamba_calls_a_hooked_dt_proj_in_forward_and_step():
    # a hooked (or wrapped: LoRA) W_Δ is called, not bypassed by the fused path: a hook doubling its output is W_Δ x 2
    layer, u, h0 = mamba_case(MAMBA_CASES[0], seed=4)
    layer.dt_proj.register_forward_hook(lambda module, args, out: 2 * out)
    y_ref, _, ssm_ref = mamba_loop(layer, u, *h0, dt_weight_scale=2.0)
    with torch.no_grad():
        for backend in runnable_backends(layer):
            with use_backend(backend):
                y, h = layer(u, h0)
            assert rel_err(y, y_ref) < 1e-12 and rel_err(h.ssm, ssm_ref) < 1e-12, backend
        y_steps, h = run_steps(layer, u, h0)
    assert rel_err(y_steps, y_ref) < 1e-12 and rel_err(h.ssm, ssm_ref) < 1e-12


@pytest.mark.parametrize("d_model,rank", [(1, 1), (16, 1), (17, 2), (32, 2), (33, 3)])
def test_mamba_auto_dt_rank_is_the_ceiling_of_d_model_over_16(d_model, rank):
    layer = Mamba(d_model, d_state=2, expand=1)
    assert layer.rank == rank and layer.dt_proj.weight.shape == (d_model, rank)
    assert layer.x_proj.weight.shape == (rank + 4, d_model)
    assert Mamba(d_model, d_state=2, expand=1, dt_rank=5).rank == 5


def ks_pvalue(sample: torch.Tensor, cdf) -> float:
    return float(stats.kstest(sample.detach().double().cpu().numpy().ravel(), cdf).pvalue)


@pytest.mark.parametrize("dt_min,dt_max", [(1e-3, 1e-1), (2e-3, 0.5)])
def test_mamba_initial_delta_is_log_uniform(dt_min, dt_max):
    # Δ₀ = softplus(b_Δ) = exp(U[log dt_min, log dt_max]): log Δ₀ uniform (KS), one per inner channel
    torch.manual_seed(5)
    layer = Mamba(400, d_state=2, expand=2, dt_min=dt_min, dt_max=dt_max, dtype=F64)
    log_dt = F.softplus(layer.dt_bias.detach()).log()
    a, b = math.log(dt_min), math.log(dt_max)
    assert float(log_dt.min()) >= a - 1e-12 and float(log_dt.max()) <= b + 1e-12
    assert ks_pvalue(log_dt, stats.uniform(a, b - a).cdf) > 1e-3


def test_mamba_initial_delta_floor():
    # Δ₀ = max(exp(U[log 1e-4, log 1e-2]), 1e-3): half the channels sit exactly at the floor, the rest log-uniform
    torch.manual_seed(6)
    layer = Mamba(500, d_state=2, expand=2, dt_min=1e-4, dt_max=1e-2, dt_init_floor=1e-3, dtype=F64)
    dt = F.softplus(layer.dt_bias.detach())
    at_floor = (dt - 1e-3).abs() < 1e-15
    assert abs(float(at_floor.double().mean()) - 0.5) < 0.06  # binomial(1000, ½): 4σ = 0.063
    above = dt[~at_floor].log()
    assert float(above.min()) > math.log(1e-3) and float(above.max()) <= math.log(1e-2) + 1e-12
    assert ks_pvalue(above, stats.uniform(math.log(1e-3), math.log(10)).cdf) > 1e-3


@pytest.mark.parametrize("dt_rank,dt_scale", [(4, 1.0), (9, 2.5)])
def test_mamba_dt_proj_init(dt_rank, dt_scale):
    # "random": W_Δ ~ U[±R^{-½}·dt_scale]; "constant": every entry R^{-½}·dt_scale
    torch.manual_seed(7)
    std = dt_rank**-0.5 * dt_scale
    layer = Mamba(100, d_state=2, dt_rank=dt_rank, dt_scale=dt_scale, dtype=F64)
    assert ks_pvalue(layer.dt_proj.weight, stats.uniform(-std, 2 * std).cdf) > 1e-3
    constant = Mamba(6, d_state=2, dt_rank=dt_rank, dt_scale=dt_scale, dt_init="constant", dtype=F64)
    assert torch.equal(constant.dt_proj.weight.detach(), torch.full((12, dt_rank), std, dtype=F64))
    assert layer.dt_proj.bias is None and torch.equal(layer.D.detach(), torch.ones(200, dtype=F64))
    N = torch.arange(1, 3, dtype=F64)
    assert torch.equal(layer.A_log.detach(), N.log().expand(200, 2))


def test_mamba_reset_parameters_redraws_the_initialisation():
    torch.manual_seed(8)
    layer = Mamba(6, d_state=3, bias=True, dtype=F64)
    fresh = {k: v.clone() for k, v in layer.state_dict().items()}
    perturbed(layer)
    torch.manual_seed(8)
    layer.reset_parameters()
    for k, v in layer.state_dict().items():
        assert torch.equal(v, fresh[k]), k


def test_mamba_records_its_options():
    options = dict(d_state=3, d_conv=2, expand=3, dt_rank=2, dt_min=2e-3, dt_max=3e-2, dt_init="constant", dt_scale=1.5,
                   dt_init_floor=2e-4, conv_bias=False, bias=True, lr=1e-3)
    layer = Mamba(7, **options)
    assert layer.d_model == 7 and {k: getattr(layer, k) for k in options} == options
    assert (layer.d_inner, layer.rank) == (21, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Mamba-2


def mamba2_loop(layer, u, conv0, ssm0):
    """The Mamba-2 mixer, one step and one head at a time in float64 (arXiv 2405.21060 §7, Figure 6; the official
    module's conventions): [z, x', B', C', δ] = W_in u; [x, B, C] = SiLU(causal conv [x', B', C']); Δ = softplus(δ +
    dt_bias) per head; A = -exp(A_log) per head; head h of group g = h // (heads/G): H_h ← exp(Δ_h A_h) H_h + Δ_h x_h
    B_gᵀ, y_h = H_h C_g + D x_h (D per head, or per channel); then RMSNorm over G channel groups of y ⊙ SiLU(z) (or of
    y, gated after), eps 1e-5, times w; out = W_out y. Returns out, the final conv and SSM states."""
    p = {k: v.detach().to(F64).cpu() for k, v in layer.named_parameters()}
    u, conv0, state = u.to(F64).cpu(), conv0.to(F64).cpu(), ssm0.to(F64).cpu().clone()  # state (B, heads, P, N)
    E, G, N, nh, P, W = layer.d_inner, layer.ngroups, layer.d_state, layer.nheads, layer.headdim, layer.d_conv
    proj = u @ p["in_proj.weight"].T + (p["in_proj.bias"] if layer.bias else 0)
    z, xBC, delta = proj[..., :E], proj[..., E : 2 * E + 2 * G * N], proj[..., 2 * E + 2 * G * N :]
    assert delta.shape[-1] == nh
    past = causal_window(conv0, xBC)
    A = -torch.exp(p["A_log"])
    outs = []
    for t in range(u.shape[1]):
        c = sum(p["conv.weight"][:, k] * past[:, t + k] for k in range(W))
        xbc = F.silu(c + (p["conv.bias"] if layer.conv_bias else 0))
        x, Bv, Cv = xbc[:, :E], xbc[:, E : E + G * N], xbc[:, E + G * N :]
        dt = F.softplus(delta[:, t] + p["dt_bias"])  # (B, heads)
        y = torch.zeros(u.shape[0], E, dtype=F64)
        for h in range(nh):
            g = h // (nh // G)
            x_h = x[:, h * P : (h + 1) * P]
            B_g, C_g = Bv[:, g * N : (g + 1) * N], Cv[:, g * N : (g + 1) * N]
            state[:, h] = (torch.exp(dt[:, h] * A[h])[:, None, None] * state[:, h]
                           + dt[:, h, None, None] * x_h[:, :, None] * B_g[:, None, :])
            skip = p["D"][h * P : (h + 1) * P] if layer.D_has_hdim else p["D"][h]
            y[:, h * P : (h + 1) * P] = (state[:, h] * C_g[:, None, :]).sum(-1) + skip * x_h
        gate = F.silu(z[:, t])
        if layer.rmsnorm:
            v = y if layer.norm_before_gate else y * gate
            size = E // G
            v = torch.cat([v[:, g * size : (g + 1) * size] / torch.sqrt(v[:, g * size : (g + 1) * size].square().mean(
                -1, keepdim=True) + 1e-5) for g in range(G)], -1) * p["norm.weight"]
            y = v * gate if layer.norm_before_gate else v
        else:
            y = y * gate
        outs.append(y @ p["out_proj.weight"].T + (p["out_proj.bias"] if layer.bias else 0))
    conv = past[:, past.shape[1] - (W - 1) :].transpose(1, 2) if W > 1 else conv0
    return torch.stack(outs, 1), conv, state


MAMBA2_CASES = [
    dict(d_state=4, headdim=2, chunk_size=8),
    dict(d_state=5, expand=6, headdim=5, ngroups=3, chunk_size=4, norm_before_gate=True, D_has_hdim=True, bias=True),
    dict(d_state=3, headdim=2, ngroups=5, chunk_size=5, rmsnorm=False, conv_bias=False, d_conv=2, D_has_hdim=True),
    dict(d_state=2, headdim=5, ngroups=2, chunk_size=64, d_conv=3, expand=4),
    dict(d_state=3, headdim=2, d_conv=1, chunk_size=3, A_init_range=(0.1, 0.3)),
]


def mamba2_case(opts, dtype=F64, seed=0, scale=0.2):
    torch.manual_seed(seed)
    layer = perturbed(layers.build("mamba2", d_model=5, device=DEVICE, dtype=dtype, **opts), scale)
    conv0 = 0.7 * torch.randn(2, *layer.state_spec().conv.shape, dtype=dtype, device=DEVICE)
    ssm0 = 0.7 * torch.randn(2, layer.nheads, layer.headdim, layer.d_state, dtype=dtype, device=DEVICE)
    u = torch.randn(2, 13, 5, dtype=dtype, device=DEVICE)
    return layer, u, type(layer.initial_state(1))(conv0, ssm0)


@pytest.mark.parametrize("i", range(len(MAMBA2_CASES)))
def test_mamba2_forward_and_steps_equal_the_float64_loop_from_a_given_state(i):
    layer, u, h0 = mamba2_case(MAMBA2_CASES[i])
    y_ref, conv_ref, ssm_ref = mamba2_loop(layer, u, *h0)
    _check_forward_and_steps(layer, u, h0, y_ref, ssm_ref, conv_ref, tol=1e-12)  # observed ~1e-16


def test_mamba2_float32_layer_follows_the_float64_loop():
    layer, u, h0 = mamba2_case(MAMBA2_CASES[1], dtype=torch.float32, seed=3)
    y_ref, _, ssm_ref = mamba2_loop(layer, u, *h0)
    _check_forward_and_steps(layer, u, h0, y_ref, ssm_ref, None, tol=1e-5)


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gated_rmsnorm_of_small_groups_feels_eps(norm_before_gate):
    # groups of mean square ~1e-5, as large as eps: v / √(mean v² + 1e-5) per group of E/G channels, times w
    from ssmkit.layers.mamba2 import GatedRMSNorm

    norm = GatedRMSNorm(12, 3, norm_before_gate, dtype=F64)
    assert norm.eps == 1e-5 and torch.equal(norm.weight.detach(), torch.ones(12, dtype=F64))
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(12, dtype=F64))
    scales = torch.tensor([3e-3, 1.0, 7.0], dtype=F64).repeat_interleave(4)
    y, z = torch.randn(4, 12, dtype=F64) * scales, torch.randn(4, 12, dtype=F64)
    v = y if norm_before_gate else y * F.silu(z)
    groups = v.unflatten(-1, (3, 4))
    expected = (groups / torch.sqrt(groups.square().mean(-1, keepdim=True) + 1e-5)).flatten(-2) * norm.weight.detach()
    expected = expected * F.silu(z) if norm_before_gate else expected
    assert rel_err(norm(y, z), expected) < 1e-14


def test_mamba2_initial_A_and_delta_laws():
    # -A ~ U[low, high] per head (A_log = log(-A)); Δ₀ = softplus(dt_bias) = exp(U[log dt_min, log dt_max]) per head
    torch.manual_seed(9)
    layer = layers.build("mamba2", d_model=400, headdim=1, d_state=2, A_init_range=(0.5, 4.0), dt_min=2e-3,
                         dt_max=0.5, dtype=F64)
    assert layer.nheads == 800
    assert ks_pvalue(layer.A_log.exp(), stats.uniform(0.5, 3.5).cdf) > 1e-3
    log_dt = F.softplus(layer.dt_bias.detach()).log()
    a, b = math.log(2e-3), math.log(0.5)
    assert float(log_dt.min()) >= a - 1e-12 and float(log_dt.max()) <= b + 1e-12
    assert ks_pvalue(log_dt, stats.uniform(a, b - a).cdf) > 1e-3
    assert torch.equal(layer.D.detach(), torch.ones(800, dtype=F64))


def test_mamba2_initial_delta_floor():
    torch.manual_seed(10)
    layer = layers.build("mamba2", d_model=500, headdim=1, d_state=2, dt_min=1e-4, dt_max=1e-2, dt_init_floor=1e-3,
                         dtype=F64)
    dt = F.softplus(layer.dt_bias.detach())
    at_floor = (dt - 1e-3).abs() < 1e-15
    assert abs(float(at_floor.double().mean()) - 0.5) < 0.06
    above = dt[~at_floor].log()
    assert float(above.min()) > math.log(1e-3) and float(above.max()) <= math.log(1e-2) + 1e-12
    assert ks_pvalue(above, stats.uniform(math.log(1e-3), math.log(10)).cdf) > 1e-3


def test_mamba2_reset_parameters_redraws_the_initialisation():
    torch.manual_seed(8)
    layer = layers.build("mamba2", d_model=6, headdim=2, d_state=3, bias=True, D_has_hdim=True, dtype=F64)
    fresh = {k: v.clone() for k, v in layer.state_dict().items()}
    perturbed(layer)
    torch.manual_seed(8)
    layer.reset_parameters()
    for k, v in layer.state_dict().items():
        assert torch.equal(v, fresh[k]), k


def test_mamba2_records_its_options():
    options = dict(d_state=3, d_conv=2, expand=3, headdim=3, ngroups=2, A_init_range=(2.0, 5.0), dt_min=2e-3,
                   dt_max=3e-2, dt_init_floor=2e-4, chunk_size=7, rmsnorm=True, norm_before_gate=True,
                   D_has_hdim=True, bias=True, conv_bias=False, lr=1e-3)
    layer = layers.build("mamba2", d_model=4, **options)
    assert layer.d_model == 4 and {k: getattr(layer, k) for k in options} == options
    assert (layer.d_inner, layer.nheads) == (12, 4)
    assert (layer.norm.channels, layer.norm.groups, layer.norm.norm_before_gate) == (12, 2, True)


# ---------------------------------------------------------------------------------------------------------------------
# Both


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_zoo_flags_follow_the_papers(name):
    """Both are selective (Δ_t, B_t, C_t depend on the input: time-varying) and stable for every parameter value:
    A = -exp(A_log) < 0 and Δ = softplus(·) > 0 give exp(Δ A) ∈ (0, 1), so with no input the state only shrinks,
    however large A_log, the Δ bias and the remaining weights are."""
    zoo = layers.layer_class(name).zoo
    assert (zoo.time_varying, zoo.stable_by_construction) == (True, True)
    torch.manual_seed(12)
    opts = {"headdim": 2, "d_state": 3} if name == "mamba2" else {"d_state": 3}
    layer = perturbed(layers.build(name, d_model=4, dtype=F64, **opts), scale=4.0)
    with torch.no_grad():
        layer.A_log.normal_(0.0, 5.0)
        layer.dt_bias.normal_(0.0, 10.0)
        (layer.conv.bias if name == "mamba2" else layer.conv1d.bias).zero_()  # x = 0 when the input and history are 0
        h0 = layer.initial_state(2)._replace(ssm=torch.randn(2, *layer.state_spec().ssm.shape, dtype=F64))
        _, h = layer(torch.zeros(2, 30, 4, dtype=F64), h0)
    assert bool((h.ssm.abs() <= h0.ssm.abs() * (1 + 1e-12)).all())  # elementwise: exp(ΔA) ∈ (0, 1) per entry


@pytest.mark.parametrize("options,match", [
    ({"d_model": 0}, "d_model must be a positive int"),
    ({"dt_scale": 0.0}, "dt_scale must be a finite float > 0"),
    ({"dt_init_floor": -1e-9}, "dt_init_floor must be a finite float >= 0"),
    ({"dt_rank": 0}, r"dt_rank \(or 'auto'\) must be a positive int"),
    ({"conv_bias": 1}, "conv_bias must be True or False"),
    ({"bias": None}, "bias must be True or False"),
])
def test_mamba_refuses_each_bad_option_by_name(options, match):
    with pytest.raises(ValueError, match=match):
        Mamba(**{"d_model": 4, **options})


@pytest.mark.parametrize("dtype,big", [(torch.float32, [3e38, torch.finfo(torch.float32).max, 2.0**127 * 1.5]),
                                       (torch.float64, [1e308, torch.finfo(torch.float64).max])])
@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gated_rmsnorm_of_groups_near_the_largest_float(dtype, big, norm_before_gate):
    # a group whose largest |v| lies in (2^127, 3.4e38] (float32; (2^1023, 1.8e308] in float64) is finite and its norm
    # is ~1, but the scale m = 2^⌈log₂ max|v|⌉ was 2^128 = inf there: v / inf = 0, eps / inf = 0, 0 · rsqrt(0) = NaN.
    # Reference: the group divided by its largest |v| in float64 first (then eps / max² underflows to nothing, as it
    # should: mean((v/max)²) >= 1/size).
    from ssmkit.layers.mamba2 import GatedRMSNorm

    norm = GatedRMSNorm(4 * len(big), len(big), norm_before_gate, dtype=dtype)
    rows = torch.tensor([[b, -0.5 * b, 0.25 * b, 1.0] for b in big], dtype=F64)  # (G, 4): one group per value
    y = rows.flatten()[None]
    z = torch.ones_like(y)  # SiLU(1) = 0.73: the gated group (norm_before_gate False) stays above 2^127 (2^1023)
    out = norm(y.to(dtype), z.to(dtype))
    v = rows if norm_before_gate else rows * F.silu(z.view_as(rows))
    unit = v / v.abs().amax(-1, keepdim=True)
    expected = (unit / torch.sqrt(unit.square().mean(-1, keepdim=True))).flatten()[None]
    expected = expected * F.silu(z) if norm_before_gate else expected
    assert torch.isfinite(out).all() and rel_err(out, expected) < {torch.float32: 1e-6, torch.float64: 1e-14}[dtype]


@pytest.mark.parametrize("options,match", [
    ({"d_model": 0}, "d_model must be a positive int"),
    ({"dt_min": 0.2, "dt_max": 0.1}, "0 < dt_min <= dt_max"),
    ({"dt_min": 0.0}, "0 < dt_min <= dt_max"),
    ({"lr": -1.0}, "lr must be a finite float >= 0"),
    ({"lr": math.nan}, "lr must be a finite float >= 0"),
    ({"dtype": torch.bfloat16}, "dtype must be torch.float32 or torch.float64"),
])
def test_mamba2_refuses_each_bad_option_by_name(options, match):
    with pytest.raises(ValueError, match=match):
        layers.build("mamba2", **{"d_model": 4, "headdim": 2, "d_state": 3, **options})


def test_mamba2_accepts_the_edges_of_its_documented_ranges():
    # A_init_range (low, high) with 0 < low <= high: low = high gives A = -low on every head; dt_init_floor >= 0:
    # 0 floors nothing (Δ₀ = dt_min = dt_max = 1e-6, below Mamba's default floor 1e-4)
    layer = layers.build("mamba2", d_model=4, headdim=2, d_state=3, A_init_range=(2.5, 2.5), dt_min=1e-6,
                         dt_max=1e-6, dt_init_floor=0.0, dtype=F64)
    assert torch.allclose(-layer.A_log.exp(), torch.full((4,), -2.5, dtype=F64), rtol=1e-15, atol=0)
    assert torch.allclose(F.softplus(layer.dt_bias.detach()), torch.full((4,), 1e-6, dtype=F64), rtol=1e-9, atol=0)
