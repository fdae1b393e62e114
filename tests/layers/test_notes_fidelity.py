"""Every registered layer's defaults, initial distributions and optimiser marks, pinned to the checked notes.

The references are the notes checked line by line against the official code (notes/core-checked.md,
notes/layers-checked.md, notes/dlr-applications-checked.md, REFERENCE.md §1) and, where ssmkit departs on purpose,
docs/design.md ("Probe 9" lists each item). Each distribution is tested over a large sample with a fixed seed: a
Kolmogorov-Smirnov test against the stated law (p > 1e-3). Its power grows with the sample: a standard deviation
2.5 % off gives p ~ 1e-8 over the 2.6·10⁵ values of S4D's C and p ~ 1e-5 over 10⁵, while the per-channel vectors
(D, 4096 values or fewer) catch a wrong law or scale (N(0, 1) against a constant, against std 0.02 or √½), not a
few per cent. Closed-form values (eigenvalues, ranges, constants) are compared exactly or to float rounding. The
eigenvalue references are computed here from the HiPPO formulas with numpy, not with ssmkit.ops.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import ssmkit.layers as layers

F64 = torch.float64
P_MIN = 1e-3  # smallest accepted KS p-value (the seed is fixed, so each test is deterministic)


def ks_pvalue(sample: torch.Tensor, law: str, *args: float) -> float:
    """p-value of the one-sample KS test of ``sample`` against scipy's ``law`` with ``args``. The law is frozen with its
    args and its cdf passed (scipy 1.18.1's kstest called ``special.ndtr`` with the args for ``"norm"``: TypeError)."""
    x = sample.detach().to(F64).flatten().cpu().numpy()
    return float(stats.kstest(x, getattr(stats, law)(*args).cdf).pvalue)


def assert_law(sample: torch.Tensor, law: str, *args: float) -> None:
    p = ks_pvalue(sample, law, *args)
    assert p > P_MIN, f"{sample.numel()} values do not follow {law}{args}: KS p = {p:.2e}"


def assert_log_uniform(values: torch.Tensor, low: float, high: float) -> None:
    """values log-uniform on [low, high]."""
    values = values.detach()
    assert float(values.min()) >= low * (1 - 1e-6) and float(values.max()) <= high * (1 + 1e-6)
    assert_law(values.log(), "uniform", math.log(low), math.log(high) - math.log(low))


def legs_normal_part_eigenvalues(N: int) -> np.ndarray:
    """The N eigenvalues of the normal part S = A_LegS + P Pᵀ (P_n = √(n+½)) of HiPPO-LegS, Im ascending
    (notes/core-checked.md §1: S = -½ I + skew)."""
    n = np.arange(N)
    R = np.sqrt(2 * n + 1)
    A = -np.tril(np.outer(R, R), -1) - np.diag(n + 1.0)
    P = np.sqrt(n + 0.5)
    S = A + np.outer(P, P)
    w = np.linalg.eigvals(S)
    return w[np.argsort(w.imag)]


def built(name: str, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return layers.layer_class(name)(dtype=F64, **options)


# ------------------------------------------------------------------------------------------------------------------
# Constructor defaults (the notes' defaults; the deliberate departures are in docs/design.md "Probe 9")

DEFAULTS = {
    "s4d": dict(d_state=64, init="legs", discretization="zoh", dt_min=1e-3, dt_max=1e-1, lr=1e-3, bidirectional=False),
    "s4": dict(d_state=64, l_max=1024, init="legs", dt_min=1e-3, dt_max=1e-1, n_ssm=1, lr=1e-3, bidirectional=False,
               B_clip=2.0),
    "dss": dict(d_state=64, version="exp", l_max=None, dt_min=1e-3, dt_max=1e-1, separate_dt=True, lr=1e-3,
                bidirectional=False),
    "s5": dict(d_state=64, blocks=8, discretization="zoh", C_init="trunc_standard_normal", dt_min=1e-3, dt_max=1e-1,
               conj_sym=True, clip_eigs=False, step_rescale=1.0, lr=1e-3, bidirectional=False),
    "lru": dict(d_state=64, r_min=0.0, r_max=1.0, max_phase=6.28, lr=5e-4, bidirectional=False),
    "rglru": dict(lru_width=None, n_heads=1, conv_width=4, c=8.0, init="ring", a_min=0.9, a_max=0.999,
                  out_init_scale=1.0, lr=None),
    "mamba": dict(d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=1e-3, dt_max=1e-1, dt_init="random",
                  dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False, lr=None),
    "mamba2": dict(d_state=128, d_conv=4, expand=2, headdim=64, ngroups=1, A_init_range=(1.0, 16.0), dt_min=1e-3,
                   dt_max=1e-1, dt_init_floor=1e-4, chunk_size=64, rmsnorm=True, norm_before_gate=False,
                   D_has_hdim=False, bias=False, conv_bias=True, lr=None),
    "ema": dict(d_state=16, lr=None, bidirectional=False),
    "mega": dict(d_state=16, d_qk=64, d_v=None, attention="softmax", chunk_size=1024, positional="simple",
                 max_positions=1024, bidirectional=False, lr=None),
    "gss": dict(d_state=64, expand=4, bottleneck=4, lr=1e-3),
    "liquid_s4": dict(d_state=64, l_max=1024, liquid_kernel="pb", liquid_degree=2, liquid_contract=None, init="legs",
                      dt_min=1e-3, dt_max=1e-1, n_ssm=1, lr=1e-3, B_clip=2.0),
    "sgconv": dict(l_max=1024, kernel_dim=64, decay_min=2.0, decay_max=2.0, lr=1e-3, bidirectional=False),
    "h3": dict(d_state=64, head_dim=1, init="lin", discretization="bilinear", dt_min=1e-3, dt_max=1e-1, lr=1e-3),
    "hyena": dict(l_max=1024, order=2, filter_width=64, emb_dim=3, n_inner=2, sine_freq=1.0, short_width=3, lr=1e-3),
    "dlr": dict(d_state=64, init="omega", dt_min=1e-4, dt_max=1e-1, lr=1e-4, lr_W=None, bidirectional=False),
    "attention": dict(n_heads=None, head_dim=64, bias=False, positional="rotary", window=None, rotary_base=10000.0),
}


def test_every_registered_layer_is_pinned() -> None:
    assert set(DEFAULTS) == set(layers.available())


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_constructor_defaults(name: str) -> None:
    signature = inspect.signature(layers.layer_class(name)).parameters
    found = {k: p.default for k, p in signature.items()
             if p.default is not inspect.Parameter.empty and k not in ("device", "dtype")}
    assert found == DEFAULTS[name]


# ------------------------------------------------------------------------------------------------------------------
# Optimiser marks: which parameters are SSM parameters, their lr and weight decay (notes §5 of core-checked.md and
# each model's lr/wd line; departures in docs/design.md)

WD0 = {"weight_decay": 0.0}
MARKS = {
    "s4d": {n: {"lr": 1e-3, **WD0} for n in ("log_dt", "log_A_real", "A_imag", "B")},
    "s4": {n: {"lr": 1e-3, **WD0} for n in ("log_dt", "log_A_real", "A_imag", "P", "B")},
    "liquid_s4": {n: {"lr": 1e-3, **WD0} for n in ("log_dt", "log_A_real", "A_imag", "P", "B")},
    "dss": {n: {"lr": 1e-3, **WD0} for n in ("log_dt", "log_A_real", "A_imag")},
    "s5": {n: {"lr": 1e-3, **WD0} for n in ("A_real", "A_imag", "B", "log_dt")},
    "lru": {n: {"lr": 5e-4, **WD0} for n in ("log_nu", "log_theta", "log_gamma", "B")},
    "rglru": {"Lambda": WD0},
    "mamba": {"dt_bias": WD0, "A_log": WD0},
    "mamba2": {"dt_bias": WD0, "A_log": WD0},
    "ema": {n: WD0 for n in ("logit_alpha", "logit_delta", "beta")},
    "mega": {f"ema.{n}": WD0 for n in ("logit_alpha", "logit_delta", "beta")},
    "gss": {f"ssm.{n}": {"lr": 1e-3, **WD0} for n in ("log_A_real", "log_A_imag")},
    "sgconv": {"sub_kernels": {"lr": 1e-3, **WD0}},
    "h3": {"B": {"lr": 1e-3, **WD0},
           **{f"ssm.{n}": {"lr": 1e-3, **WD0} for n in ("log_dt", "log_A_real", "A_imag", "B")}},
    "hyena": {f"filter.{n}": {"lr": 1e-3, **WD0} for n in ("w_in", "b_in", "w_hidden", "b_hidden", "w_out", "freq")},
    "dlr": {n: {"lr": 1e-4, **WD0} for n in ("A_sqrt_neg_real", "A_imag")},
    "attention": {},
}


@pytest.mark.parametrize("name", sorted(MARKS))
def test_optimiser_marks(name: str) -> None:
    options = {"headdim": 8} if name == "mamba2" else {}
    layer = layers.layer_class(name)(16, **options)
    found = {n: dict(m) for n, _, m in layers.marked_parameters(layer) if m is not None}
    assert found == MARKS[name]


def test_dlr_official_W_group() -> None:
    """dlr.yaml: W lr 1e-4, weight decay 0 (ssmkit's ``lr_W=1e-4``; the default trains W like every layer's C)."""
    layer = layers.DLR(4, lr_W=1e-4)
    assert layers.optim_marks(layer)["W"] == {"lr": 1e-4, "weight_decay": 0.0}


def test_frozen_buffers() -> None:
    """GSS's B = 1 and Hyena's decay rates δ are frozen (official lr 0): buffers, not parameters."""
    gss, hyena = layers.GSS(8), layers.Hyena(8)
    assert "B" in dict(gss.ssm.named_buffers()) and "B" not in dict(gss.ssm.named_parameters())
    assert "deltas" in dict(hyena.filter.named_buffers())


# ------------------------------------------------------------------------------------------------------------------
# S4D (core-checked.md §2)


@pytest.mark.parametrize("init", ["legs", "inv", "lin", "real"])
def test_s4d_eigenvalues(init: str) -> None:
    N = 64
    layer = built("s4d", d_model=2, d_state=N, init=init)
    lam = torch.complex(-layer.log_A_real.exp(), layer.A_imag).detach()
    n = torch.arange(N // 2, dtype=F64)
    if init == "legs":  # the kept Im < 0 half of the normal part of LegS(N), most negative first
        w = legs_normal_part_eigenvalues(N)[: N // 2]
        expected = torch.complex(torch.full((N // 2,), -0.5, dtype=F64), torch.from_numpy(w.imag.copy()))
    elif init == "inv":  # N = d_state, not the number of modes
        expected = torch.complex(torch.full_like(n, -0.5), -(N / math.pi) * (N / (2 * n + 1) - 1))
    elif init == "lin":
        expected = torch.complex(torch.full_like(n, -0.5), -math.pi * n)
    else:
        expected = torch.complex(-(n + 1), torch.zeros_like(n))
    torch.testing.assert_close(lam, expected.expand(2, -1), rtol=1e-9, atol=1e-9)
    if init == "inv":  # the numbers quoted in the note
        assert [round(float(v), 0) for v in -lam[0, :3].imag] == [1283, 414, 240]


def test_s4d_legs_input_matrix_clip() -> None:
    """B = V*B_HiPPO with Im clipped to ±2: 11 of 32 entries clipped at N = 64, |Re B| <= 0.53, no ½."""
    layer = built("s4d", d_model=1)
    B = torch.view_as_complex(layer.B.detach())[0]
    assert int((B.imag.abs() > 2 - 1e-12).sum()) == 11
    assert float(B.imag.abs().max()) == pytest.approx(2.0)
    assert 0.52 < float(B.real.abs().max()) < 0.53


def test_s4d_random_inits() -> None:
    """C ~ CN(0, 1) (real and imaginary parts each N(0, ½)); D ~ N(0, 1); log Δ ~ U[log 1e-3, log 1e-1] per
    channel."""
    layer = built("s4d", d_model=4096)
    assert_law(layer.C, "norm", 0.0, math.sqrt(0.5))
    assert_law(layer.D, "norm", 0.0, 1.0)
    assert layer.log_dt.shape == (4096,)
    assert_log_uniform(layer.log_dt.exp(), 1e-3, 1e-1)


# ------------------------------------------------------------------------------------------------------------------
# S4 (core-checked.md §1, §3)


def test_s4_init() -> None:
    """Λ, P, B tied (n_ssm = 1) from the LegS NPLR; C_true ~ CN(0, 1) behind C̃ = (I - Ā^L)ᵀ C_true."""
    layer = built("s4", d_model=2048, l_max=64)
    assert layer.log_A_real.shape == (1, 32) and layer.P.shape == (1, 1, 32, 2) and layer.B.shape == (1, 32, 2)
    lam = torch.complex(-layer.log_A_real.exp(), layer.A_imag).detach()[0]
    w = legs_normal_part_eigenvalues(64)[:32]
    torch.testing.assert_close(lam.imag, torch.from_numpy(w.imag.copy()), rtol=1e-9, atol=1e-9)
    assert torch.allclose(lam.real, torch.full_like(lam.real, -0.5))
    P = torch.view_as_complex(layer.P.detach())[0, 0]
    assert float(P.abs().square().sum()) == pytest.approx(sum(n + 0.5 for n in range(64)) / 2, rel=1e-9)
    C = layer._C_true().detach()
    assert_law(torch.cat([C.real.flatten(), C.imag.flatten()]), "norm", 0.0, math.sqrt(0.5))
    assert_law(layer.D, "norm", 0.0, 1.0)
    assert_log_uniform(layer.log_dt.exp(), 1e-3, 1e-1)


@pytest.mark.parametrize("init,rank", [("legt", 2), ("lagt", 1), ("fout", 1)])
def test_s4_zero_real_part_clamped(init: str, rank: int) -> None:
    """LegT, LagT, FouT have Re λ = 0 after the NPLR; -Re λ is clamped to 1e-4 (official inv_transform)."""
    layer = built("s4", d_model=1, init=init)
    assert torch.allclose(-layer.log_A_real.exp(), torch.full((1, 32), -1e-4, dtype=F64))
    assert layer.P.shape[0] == rank


# ------------------------------------------------------------------------------------------------------------------
# DSS (core-checked.md §4)


def test_dss_init() -> None:
    """Λ = the Im > 0 eigenvalues of the skew part of LegS(2M), minus ½, shared by the channels; W parts N(0, 1);
    D ~ N(0, 1); one log-uniform Δ per channel for both the real and imaginary step."""
    layer = built("dss", d_model=2048, d_state=64)
    lam = torch.complex(-layer.log_A_real.exp(), layer.A_imag).detach()
    w = legs_normal_part_eigenvalues(64)[32:][::-1]  # Im > 0, largest first
    torch.testing.assert_close(lam, torch.from_numpy(w.copy()), rtol=1e-9, atol=1e-9)
    assert layer.log_A_real.shape == (32,)
    assert torch.equal(layer.log_dt[:, 0], layer.log_dt[:, 1])
    assert_log_uniform(layer.log_dt[:, 0].exp(), 1e-3, 1e-1)
    assert_law(layer.W, "norm", 0.0, 1.0)
    assert_law(layer.D, "norm", 0.0, 1.0)


# ------------------------------------------------------------------------------------------------------------------
# S5 (layers-checked.md "S5")

_TRUNC_STD = 0.87962566103423978  # std of N(0, 1) truncated to ±2 (JAX's truncated_normal)


def test_s5_eigenvalues() -> None:
    """Λ: the Im < 0 half of the normal part of LegS on blocks of P/J, repeated J times."""
    layer = built("s5", d_model=2, d_state=256, blocks=8)
    lam = torch.complex(layer.A_real, layer.A_imag).detach()
    block = torch.from_numpy(legs_normal_part_eigenvalues(32)[:16].copy())
    torch.testing.assert_close(lam, block.repeat(8), rtol=1e-9, atol=1e-9)


def test_s5_B_and_C() -> None:
    """B (P, H) real, truncated normal with variance 1/P (fan-in = the full state size, not H), B̃ = V*B;
    C̃ = C V with C's real and imaginary parts of variance 1/P."""
    P, H = 256, 512
    layer = built("s5", d_model=H, d_state=P)
    from ssmkit.ops.hippo import s5_eigen

    _, V = s5_eigen(P, 8)
    B_tilde = torch.view_as_complex(layer.B.detach())  # (P/2, H)
    B = 2 * (V @ B_tilde).real  # B real: B = V_f V_f* B = V B̃ + conj(V B̃), V_f = [V, conj V] unitary
    bound = 2 * math.sqrt(1 / P) / _TRUNC_STD
    assert float(B.abs().max()) <= bound
    assert_law(B / (bound / 2), "truncnorm", -2.0, 2.0)
    C_tilde = torch.view_as_complex(layer.C.detach())[0]  # (H, P/2)
    for part in (C_tilde.real, C_tilde.imag):
        assert float(part.square().mean()) * P == pytest.approx(1.0, abs=0.03)
    assert_law(layer.D, "norm", 0.0, 1.0)
    assert layer.log_dt.shape == (P // 2,)
    assert_log_uniform(layer.log_dt.exp(), 1e-3, 1e-1)


def test_s5_C_init_options() -> None:
    """C_init="lecun_normal": variance 1/(P·H) (H counts as the receptive field); "complex_normal": C̃ parts
    N(0, ½)."""
    P, H = 256, 64
    lecun = torch.view_as_complex(built("s5", d_model=H, d_state=P, C_init="lecun_normal").C.detach())
    assert float(lecun.real.square().mean()) * P * H == pytest.approx(1.0, abs=0.03)
    assert_law(built("s5", d_model=H, d_state=P, C_init="complex_normal").C, "norm", 0.0, math.sqrt(0.5))


# ------------------------------------------------------------------------------------------------------------------
# LRU (layers-checked.md "LRU"; paper App. A)


@pytest.mark.parametrize("r_min,r_max,max_phase", [(0.0, 1.0, 6.28), (0.9, 0.999, 0.314)])
def test_lru_eigenvalues(r_min: float, r_max: float, max_phase: float) -> None:
    """|λ|² ~ U[r_min², r_max²] (uniform on the ring's area), arg λ ~ U[0, max_phase], γ = √(1 - |λ|²)."""
    layer = built("lru", d_model=2, d_state=8192, r_min=r_min, r_max=r_max, max_phase=max_phase)
    lam = layer.eigenvalues().detach()
    assert_law(lam.abs().square(), "uniform", r_min**2, r_max**2 - r_min**2)
    assert_law(layer.log_theta.exp(), "uniform", 0.0, max_phase)
    torch.testing.assert_close(layer.log_gamma.exp().detach(), torch.sqrt(1 - lam.abs().square()), rtol=1e-9, atol=0)


def test_lru_matrices() -> None:
    """B_re, B_im each N(0, 1/(2H)); C_re, C_im each N(0, 1/M) (a complex C entry has variance 2/M); D ~ N(0, 1)."""
    H, M = 256, 1024
    layer = built("lru", d_model=H, d_state=2 * M)
    assert_law(layer.B, "norm", 0.0, math.sqrt(1 / (2 * H)))
    assert_law(layer.C, "norm", 0.0, math.sqrt(1 / M))
    assert_law(layer.D, "norm", 0.0, 1.0)


# ------------------------------------------------------------------------------------------------------------------
# RG-LRU / Hawk (layers-checked.md "RG-LRU"; recurrentgemma)


def test_rglru_lambda_inits() -> None:
    """"ring" (recurrentgemma's code): a = σ(Λ), a² ~ U[0.9², 0.999²], so a^8 ∈ [0.43, 0.992];
    "paper" (§2.4 text): a^8 ~ U[0.9, 0.999]."""
    # 256 gate blocks: Λ's law does not depend on them, and one 8192-wide block was two 8192² float64 matrices (1 GiB,
    # 12 s to draw)
    ring = torch.sigmoid(built("rglru", d_model=4, lru_width=8192, n_heads=256).Lambda.detach())
    assert_law(ring.square(), "uniform", 0.81, 0.999**2 - 0.81)
    assert 0.43 <= float(ring.pow(8).min()) and float(ring.pow(8).max()) <= 0.9921
    paper = torch.sigmoid(built("rglru", d_model=4, lru_width=8192, n_heads=256, init="paper").Lambda.detach())
    assert_law(paper.pow(8), "uniform", 0.9, 0.099)


def test_rglru_weights() -> None:
    """W_x, W_y ~ N(0, 1/H); W_out ~ N(0, 1/D); gate blocks N(0, 1/block width); conv taps N(0, 0.01/4) with a
    bias; every bias 0."""
    H, D, heads = 256, 1024, 4
    layer = built("rglru", d_model=H, lru_width=D, n_heads=heads)
    assert_law(layer.in_x.weight, "norm", 0.0, math.sqrt(1 / H))
    assert_law(layer.in_gate.weight, "norm", 0.0, math.sqrt(1 / H))
    assert_law(layer.out.weight, "norm", 0.0, math.sqrt(1 / D))
    assert layer.gate_a.weight.shape == (heads, D // heads, D // heads)
    for gate in (layer.gate_a, layer.gate_x):
        assert_law(gate.weight, "norm", 0.0, math.sqrt(heads / D))
    assert_law(layer.conv.weight, "norm", 0.0, math.sqrt(0.01 / 4))
    for bias in (layer.in_x.bias, layer.in_gate.bias, layer.conv.bias, layer.out.bias, layer.gate_a.bias,
                 layer.gate_x.bias):
        assert bias is not None and not bias.any()


# ------------------------------------------------------------------------------------------------------------------
# Mamba-1 and Mamba-2 (layers-checked.md)


def test_mamba_init() -> None:
    """R = ⌈d_model/16⌉; W_Δ ~ U(±R^{-½}); softplus(b_Δ) log-uniform in [1e-3, 1e-1]; A_log = log(1..N); D = 1;
    no bias on in_proj, x_proj, dt_proj (its bias is dt_bias), out_proj; the conv has one, both U(±1/√4)."""
    layer = built("mamba", d_model=512)
    R = 32
    assert layer.rank == R and layer.dt_proj.weight.shape == (1024, R)
    assert_law(layer.dt_proj.weight, "uniform", -R**-0.5, 2 * R**-0.5)
    assert_log_uniform(F.softplus(layer.dt_bias.detach()), 1e-3, 1e-1)
    assert torch.equal(layer.A_log.detach(), torch.log(torch.arange(1, 17, dtype=F64)).expand(1024, -1))
    assert torch.equal(layer.D.detach(), torch.ones(1024, dtype=F64))
    assert [m.bias is None for m in (layer.in_proj, layer.x_proj, layer.dt_proj, layer.out_proj)] == [True] * 4
    assert_law(layer.conv1d.weight, "uniform", -0.5, 1.0)
    assert_law(layer.conv1d.bias, "uniform", -0.5, 1.0)
    assert layer.x_proj.weight.shape == (R + 2 * 16, 1024)  # [δ, B, C]: B, C shared by all inner channels


def test_mamba2_init() -> None:
    """A ~ U[1, 16] per head; softplus(dt_bias) log-uniform per head; D = 1 per head; in_proj [z, x, B, C, dt]
    without bias; gated RMSNorm weight 1, eps 1e-5, after the gate."""
    layer = built("mamba2", d_model=512, headdim=2)  # 512 heads
    assert_law(layer.A_log.exp(), "uniform", 1.0, 15.0)
    assert layer.dt_bias.shape == (512,) and layer.D.shape == (512,)
    assert_log_uniform(F.softplus(layer.dt_bias.detach()), 1e-3, 1e-1)
    assert torch.equal(layer.D.detach(), torch.ones(512, dtype=F64))
    assert layer.in_proj.bias is None and layer.out_proj.bias is None and layer.conv.bias is not None
    assert layer.in_proj.weight.shape[0] == 2 * 1024 + 2 * 128 + 512
    assert layer.norm.eps == 1e-5 and not layer.norm.norm_before_gate and torch.equal(
        layer.norm.weight.detach(), torch.ones(1024, dtype=F64))


# ------------------------------------------------------------------------------------------------------------------
# Mega EMA and Mega (layers-checked.md "Mega EMA"; facebookresearch/mega)


def test_ema_init() -> None:
    """Both logits N(0, 0.2²) (0.2 is the std); β = +1, -1, ... plus N(0, 0.02²); γ, ω ~ N(0, 1); C = γ/√N."""
    N = 16
    layer = built("ema", d_model=1024, d_state=N)
    assert_law(layer.logit_alpha, "norm", 0.0, 0.2)
    assert_law(layer.logit_delta, "norm", 0.0, 0.2)
    signs = torch.tensor([1.0, -1.0] * (N // 2), dtype=F64)
    assert_law(layer.beta.detach() - signs, "norm", 0.0, 0.02)
    assert_law(layer.gamma, "norm", 0.0, 1.0)
    assert_law(layer.D, "norm", 0.0, 1.0)
    A_bar, B_bar, C = layer.directions()
    alpha, delta = torch.sigmoid(layer.logit_alpha), torch.sigmoid(layer.logit_delta)
    torch.testing.assert_close(A_bar, 1 - alpha * delta)
    torch.testing.assert_close(B_bar, alpha * layer.beta)
    torch.testing.assert_close(C, layer.gamma / math.sqrt(N))


def test_ema_bidirectional_doubles_all_but_omega() -> None:
    layer = layers.EMA(4, 16, bidirectional=True)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {
        "logit_alpha": (2, 4, 16), "logit_delta": (2, 4, 16), "beta": (2, 4, 16), "gamma": (2, 4, 16), "D": (4,)}


def test_mega_init() -> None:
    """Weights (projections, κ, the relative bias) N(0, 0.02²), biases and μ zero; v = 2·d_model."""
    layer = built("mega", d_model=256)
    assert layer.W_v.shape == (512, 256)
    for weight in (layer.W_v, layer.W_mx, layer.U_h):
        assert_law(weight, "norm", 0.0, 0.02)
    for bias in (layer.b_v, layer.b_mx, layer.b_h, layer.mu):
        assert not bias.any()


# ------------------------------------------------------------------------------------------------------------------
# GSS (layers-checked.md "GSS"; lucidrains' reading of the paper, docs/design.md)


def test_gss_init() -> None:
    """λ = -exp(a) + i exp(b), a, b ~ N(0, 1) shared by the SSM channels; C parts N(0, 1); D ~ N(0, 1); B = 1;
    gate width 4E, SSM width E/4; only the output projection has a bias."""
    layer = built("gss", d_model=1024, d_state=2048)
    ssm = layer.ssm
    assert ssm.d_model == 256 and layer.gate.weight.shape == (4096, 1024)
    assert ssm.log_A_real.shape == (1024,)
    assert_law(ssm.log_A_real, "norm", 0.0, 1.0)
    assert_law(ssm.log_A_imag, "norm", 0.0, 1.0)
    assert_law(ssm.C, "norm", 0.0, 1.0)
    assert_law(ssm.D, "norm", 0.0, 1.0)
    assert torch.equal(torch.view_as_complex(ssm.B), torch.ones(256, 1024, dtype=torch.complex128))
    assert [m.bias is not None for m in (layer.gate, layer.down, layer.up, layer.out)] == [False, False, False, True]


# ------------------------------------------------------------------------------------------------------------------
# SGConv (layers-checked.md "SGConv")


def test_sgconv_kernel_init() -> None:
    """l_max 1024, d 64: S = 5 scales, 1024 taps; w_i ~ N(0, 1); the kernel equals the official form
    concat_i decay^(S-1-i)·Upsample_{2^max(i-1,0)}(w_i) normalised to unit L2 norm per channel; D ~ N(0, 1)."""
    layer = built("sgconv", d_model=512)
    assert layer.n_scales == 5 and layer.kernel_length == 1024
    assert_law(layer.sub_kernels, "norm", 0.0, 1.0)
    assert_law(layer.D, "norm", 0.0, 1.0)
    w = layer.sub_kernels.detach()[:, 0]  # (S, H, d)
    parts = [F.interpolate(w[i : i + 1], scale_factor=2 ** max(0, i - 1), mode="linear")[0] * 2.0 ** (4 - i)
             for i in range(5)]
    K = torch.cat(parts, dim=-1)
    K = K / K.norm(dim=-1, keepdim=True)
    found = layer.kernel(1024).detach().clone()
    found[:, 0] -= layer.D.detach()
    torch.testing.assert_close(found, K, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# Hyena (layers-checked.md "Hyena")


def test_hyena_filter_init() -> None:
    """δ linspace from log(1e-2)/1.5 to log(1e-2)/0.3 over the (order-1)·H filter channels; one sine frequency
    vector, 1 at init; filter bias N(0, 1); PosEnc = [t, cos, -sin] on normalised time; FFN as nn.Linear, the last
    layer without bias; short conv width 3 with a bias."""
    layer = built("hyena", d_model=1024, l_max=256)
    f = layer.filter
    expected = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, 1024, dtype=F64)
    torch.testing.assert_close(f.deltas, expected, rtol=1e-12, atol=0)
    assert torch.equal(f.freq.detach(), torch.ones(64, dtype=F64))
    assert_law(layer.filter_bias, "norm", 0.0, 1.0)
    z, t = f.positional_encoding(256)
    n = torch.arange(256, dtype=F64)[:, None]
    torch.testing.assert_close(t, torch.linspace(0, 1, 256, dtype=F64)[:, None], rtol=0, atol=1e-15)
    phase = 1e-4 * 2 * math.pi * n / 256  # emb_dim 3: one band at f = 1e-4
    torch.testing.assert_close(z, torch.cat([t, phase.cos(), -phase.sin()], dim=-1), rtol=0, atol=1e-15)
    assert_law(f.w_out, "uniform", -1 / 8, 2 / 8)  # fan-in 64
    assert "b_out" not in dict(f.named_parameters())
    assert layer.short_conv.width == 3 and layer.short_conv.bias is not None


# ------------------------------------------------------------------------------------------------------------------
# H3 (layers-checked.md "H3"; HazyResearch/H3 ss_kernel.py)


def test_h3_init() -> None:
    """Shift SSM: B = e₁ (trained), C ~ U(±1/√N) (Conv1d kaiming-uniform with fan-in N), D_k ~ N(0, 1); diagonal
    SSM: S4D-Lin, bilinear, λ = -½ - iπn; q, k, v and output projections with bias."""
    N = 64
    layer = built("h3", d_model=1024, d_state=N)
    e1 = torch.zeros(1024, N, dtype=F64)
    e1[:, 0] = 1
    assert torch.equal(layer.B.detach(), e1)
    assert_law(layer.C, "uniform", -1 / math.sqrt(N), 2 / math.sqrt(N))
    assert_law(layer.D_k, "norm", 0.0, 1.0)
    assert layer.ssm.init == "lin" and layer.ssm.discretization == "bilinear"
    lam = torch.complex(-layer.ssm.log_A_real.exp(), layer.ssm.A_imag).detach()[0]
    n = torch.arange(N // 2, dtype=F64)
    torch.testing.assert_close(lam, torch.complex(torch.full_like(n, -0.5), -math.pi * n))
    assert layer.in_proj.bias is not None and layer.out_proj.bias is not None


# ------------------------------------------------------------------------------------------------------------------
# DLR (dlr-applications-checked.md §1.3)


@pytest.mark.parametrize("init", ["omega", "randn"])
def test_dlr_init(init: str) -> None:
    """Λ_n = -Δ_n/2 + i b_n with Δ_n log-uniform in [1e-4, 1e-1] per mode (a = √(Δ/2)); b_n = 2πn/M ("omega") or
    N(0, 1) mod 2π ("randn"); W parts N(0, 1)/M; D ~ N(0, 1)."""
    M = 4096
    layer = built("dlr", d_model=8, d_state=2 * M, init=init)
    assert_log_uniform(2 * layer.A_sqrt_neg_real.detach().square(), 1e-4, 1e-1)
    b = layer.A_imag.detach()
    if init == "omega":
        torch.testing.assert_close(b, 2 * math.pi * torch.arange(M, dtype=F64) / M, rtol=1e-15, atol=0)
    else:
        assert 0 <= float(b.min()) and float(b.max()) < 2 * math.pi
        folded = torch.remainder(torch.randn(8 * M, dtype=F64), 2 * math.pi)  # N(0, 1) mod 2π, a second sample
        assert stats.ks_2samp(b.numpy(), folded.numpy()).pvalue > P_MIN
    assert_law(layer.W * M, "norm", 0.0, 1.0)
    assert_law(layer.D, "norm", 0.0, 1.0)


# ------------------------------------------------------------------------------------------------------------------
# Liquid-S4 (layers-checked.md "Liquid-S4"): S4's parameters and initialisation


def test_liquid_s4_has_s4_init() -> None:
    liquid, s4 = built("liquid_s4", d_model=8, seed=3), built("s4", d_model=8, seed=3)
    assert {n: p.shape for n, p in liquid.named_parameters()} == {n: p.shape for n, p in s4.named_parameters()}
    for (name, p), (_, q) in zip(liquid.named_parameters(), s4.named_parameters()):
        assert torch.equal(p, q), name
