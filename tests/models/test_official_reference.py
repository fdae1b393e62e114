"""``ssmkit.models.load_mamba`` / ``mamba_state_dict`` against a float64 reference of the official Mamba LMs.

The reference here uses no ssmkit layer: it is the official forward written out from the official equations
(state-spaces/mamba at e9594ce: ``modules/mamba_simple.py``, ``modules/mamba2.py``, ``models/mixer_seq_simple.py``,
``modules/block.py``, ``selective_scan_ref``, ``layernorm_gated.rms_norm_ref``) as a plain time loop:

    h_0 = E[ids];  h_{l+1} = h_l + Mixer_l(RMSNorm_l(h_l));  logits = RMSNorm_f(h_n) W_headᵀ     (ε = 1e-5)

Mamba (Gu & Dao, arXiv 2312.00752, Alg. 2): x, z = in_proj(u); x = silu(conv(x)); (δ, B, C) = x_proj(x);
Δ = softplus(dt_proj(δ)); A = -exp(A_log); h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t; y_t = C_t h_t + D x_t;
out_proj(y ⊙ silu(z)).
Mamba-2 (Dao & Gu, arXiv 2405.21060, §7): z, xBC, dt = in_proj(u); x, B, C = silu(conv(xBC));
Δ = softplus(dt + b); per head k (group g = k // (heads / groups)): h_t = exp(Δ_t a_k) h_{t-1} + Δ_t x_t B_{g,t}ᵀ;
y_t = h_t C_{g,t} + D x_t; out_proj(RMSNorm_group(y ⊙ silu(z))) (the official ``norm_before_gate=False``, one RMS
per group of channels).

The state dicts are random official-format ones (both key styles: state-spaces/mamba's ``MambaLMHeadModel`` and Hugging
Face's ``Mamba(2)ForCausalLM``), every parameter far from any initialisation.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from ssmkit.models import load_mamba, mamba_state_dict
from tests.conftest import run_steps

F64 = torch.float64
D_MODEL = 16
N_LAYER = 2
VOCAB = 37  # the tokenizer's; the embedding holds the padded vocabulary
VOCAB_PADDED = 40  # pad_vocab_size_multiple = 8 (the official default)
E = 2 * D_MODEL  # d_inner (expand = 2)
HEADDIM = 8  # Mamba-2: E / HEADDIM = 4 heads
EPS = 1e-5  # the official blocks' and norm_f's RMSNorm ε, and the gated norm's
TOL64 = 1e-10  # float64 against float64 (the loop sums at most a few hundred terms: round-off ~1e-14)
TOL32 = 1e-4  # the float32 default against float64 (2 layers, L = 11: float32 round-off ~1e-6 of the logits)
L = 11
BATCH = 2


# ----------------------------------------------------------------------------------------------------------------------
# the reference: the official forward as a plain float64 time loop


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x / √(mean(x²) + ε) · w over the last axis (the official RMSNorm, ε = 1e-5)."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def _linear(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    """x Wᵀ (+ b) of the official nn.Linear ``name``."""
    y = x @ sd[name + ".weight"].T
    bias = sd.get(name + ".bias")
    return y if bias is None else y + bias


def _causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The official depthwise Conv1d (padding K - 1, first L outputs): y_t[c] = Σ_k w[c, 0, k] x_{t-K+1+k}[c] + b[c].

    x (B, L, C), weight (C, 1, K) -> (B, L, C).
    """
    K = weight.shape[-1]
    y = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                y[:, t] += weight[:, 0, k] * x[:, s]
    return y if bias is None else y + bias


def _mamba1_mixer(u: torch.Tensor, sd: dict) -> torch.Tensor:
    """The official Mamba mixer (mamba_simple.Mamba without the fast path) on u (B, L, H) -> (B, L, H)."""
    N = sd["A_log"].shape[1]
    R = sd["x_proj.weight"].shape[0] - 2 * N
    x, z = _linear(u, sd, "in_proj").chunk(2, dim=-1)  # (B, L, E) each
    x = F.silu(_causal_conv(x, sd["conv1d.weight"], sd.get("conv1d.bias")))
    dt_r, Bm, Cm = (x @ sd["x_proj.weight"].T).split([R, N, N], dim=-1)  # (B, L, R), (B, L, N), (B, L, N)
    dt = F.softplus(dt_r @ sd["dt_proj.weight"].T + sd["dt_proj.bias"])  # (B, L, E)
    A = -torch.exp(sd["A_log"])  # (E, N)
    h = torch.zeros(u.shape[0], A.shape[0], N, dtype=u.dtype)  # (B, E, N)
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * Bm[:, t, None, :] * x[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + sd["D"] * x[:, t])  # (B, E)
    y = torch.stack(ys, 1) * F.silu(z)  # (B, L, E)
    return _linear(y, sd, "out_proj")


def _mamba2_mixer(u: torch.Tensor, sd: dict, ngroups: int) -> torch.Tensor:
    """The official Mamba-2 mixer (mamba2.Mamba2, rmsnorm=True, norm_before_gate=False) on u (B, L, H) -> (B, L, H)."""
    d_inner = sd["norm.weight"].shape[0]
    nheads = sd["dt_bias"].shape[0]
    P = d_inner // nheads
    GN = (sd["conv1d.weight"].shape[0] - d_inner) // 2
    N = GN // ngroups
    Bsz, Lu = u.shape[:2]
    z, xBC, dt = _linear(u, sd, "in_proj").split([d_inner, d_inner + 2 * GN, nheads], dim=-1)
    xBC = F.silu(_causal_conv(xBC, sd["conv1d.weight"], sd.get("conv1d.bias")))
    x, Bm, Cm = xBC.split([d_inner, GN, GN], dim=-1)
    x = x.reshape(Bsz, Lu, nheads, P)  # (B, L, heads, P)
    Bm = Bm.reshape(Bsz, Lu, ngroups, N)  # (B, L, G, N)
    Cm = Cm.reshape(Bsz, Lu, ngroups, N)  # (B, L, G, N)
    dt = F.softplus(dt + sd["dt_bias"])  # (B, L, heads)
    A = -torch.exp(sd["A_log"])  # (heads,)
    D = sd["D"].reshape(nheads, -1)  # (heads, 1) or (heads, P) for D_has_hdim
    group = [k // (nheads // ngroups) for k in range(nheads)]
    h = torch.zeros(Bsz, nheads, P, N, dtype=u.dtype)  # (B, heads, P, N)
    y = torch.zeros(Bsz, Lu, nheads, P, dtype=u.dtype)
    for t in range(Lu):
        for k in range(nheads):
            g = group[k]
            decay = torch.exp(dt[:, t, k] * A[k])[:, None, None]  # (B, 1, 1)
            h[:, k] = decay * h[:, k] + dt[:, t, k, None, None] * x[:, t, k, :, None] * Bm[:, t, g, None, :]
            y[:, t, k] = (h[:, k] * Cm[:, t, g, None, :]).sum(-1) + D[k] * x[:, t, k]
    gated = y.reshape(Bsz, Lu, d_inner) * F.silu(z)  # (B, L, E)
    normed = _rms_norm(gated.reshape(Bsz, Lu, ngroups, d_inner // ngroups), 1.0).reshape(Bsz, Lu, d_inner)
    return _linear(normed * sd["norm.weight"], sd, "out_proj")


def reference_logits(sd: dict, ids: torch.Tensor, ngroups: int = 1) -> torch.Tensor:
    """The official LM's logits (B, L, V_padded) for token ids (B, L), from an official state dict (either style)."""
    embedding = sd.get("backbone.embedding.weight", sd.get("backbone.embeddings.weight"))
    h = embedding[ids]  # (B, L, H)
    layer = 0
    while f"backbone.layers.{layer}.norm.weight" in sd:
        prefix = f"backbone.layers.{layer}."
        mixer = {k[len(prefix) + 6:]: v for k, v in sd.items() if k.startswith(prefix + "mixer.")}
        u = _rms_norm(h, sd[prefix + "norm.weight"])
        h = h + (_mamba2_mixer(u, mixer, ngroups) if "dt_bias" in mixer else _mamba1_mixer(u, mixer))
        layer += 1
    head = sd.get("lm_head.weight", embedding)  # absent: tied (Hugging Face's saved form)
    return _rms_norm(h, sd["backbone.norm_f.weight"]) @ head.T


# ----------------------------------------------------------------------------------------------------------------------
# random official-format state dicts


def _mixer1(g: torch.Generator, N: int, R: int, bias: bool) -> dict:
    """A random Mamba mixer's parameters (official names and shapes), far from the official init."""
    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=F64) * scale

    sd = {
        "A_log": torch.log(torch.rand(E, N, generator=g, dtype=F64) * 3 + 0.3),  # A in (-3.3, -0.3), unsorted
        "D": rnd(E),
        "in_proj.weight": rnd(2 * E, D_MODEL, scale=D_MODEL ** -0.5),
        "conv1d.weight": rnd(E, 1, 4, scale=0.5),
        "conv1d.bias": rnd(E, scale=0.3),
        "x_proj.weight": rnd(R + 2 * N, E, scale=E ** -0.5),
        "dt_proj.weight": rnd(E, R, scale=R ** -0.5),
        "dt_proj.bias": rnd(E, scale=0.5) - 2.0,  # softplus -> Δ around 0.13, each channel its own
        "out_proj.weight": rnd(D_MODEL, E, scale=E ** -0.5),
    }
    if bias:
        sd["in_proj.bias"] = rnd(2 * E, scale=0.2)
        sd["out_proj.bias"] = rnd(D_MODEL, scale=0.2)
    return sd


def _mixer2(g: torch.Generator, N: int, G: int, bias: bool, D_has_hdim: bool = False) -> dict:
    """A random Mamba-2 mixer's parameters (official names and shapes), far from the official init."""
    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=F64) * scale

    nheads = E // HEADDIM
    conv = E + 2 * G * N
    sd = {
        "dt_bias": rnd(nheads, scale=0.5) - 1.5,
        "A_log": torch.log(torch.rand(nheads, generator=g, dtype=F64) * 3 + 0.3),
        "D": rnd(E if D_has_hdim else nheads),
        "in_proj.weight": rnd(2 * E + 2 * G * N + nheads, D_MODEL, scale=D_MODEL ** -0.5),
        "conv1d.weight": rnd(conv, 1, 4, scale=0.5),
        "conv1d.bias": rnd(conv, scale=0.3),
        "norm.weight": 1.0 + rnd(E, scale=0.3),
        "out_proj.weight": rnd(D_MODEL, E, scale=E ** -0.5),
    }
    if bias:
        sd["in_proj.bias"] = rnd(2 * E + 2 * G * N + nheads, scale=0.2)
        sd["out_proj.bias"] = rnd(D_MODEL, scale=0.2)
    return sd


def official_state_dict(layer: str = "mamba", style: str = "mamba_ssm", *, N: int = 6, R: int = 2, G: int = 1,
                        bias: bool = False, tied: bool = True, head_key: bool = True, D_has_hdim: bool = False,
                        conv_bias: bool = True, seed: int = 0) -> dict:
    """A random official LM state dict: ``style`` "mamba_ssm" (backbone.embedding) or "hf" (backbone.embeddings);
    tied: lm_head.weight is the embedding itself (present when ``head_key``), else its own matrix."""
    g = torch.Generator().manual_seed(seed)
    emb_key = "backbone.embedding.weight" if style == "mamba_ssm" else "backbone.embeddings.weight"
    embedding = torch.randn(VOCAB_PADDED, D_MODEL, generator=g, dtype=F64)
    sd = {emb_key: embedding}
    for i in range(N_LAYER):
        sd[f"backbone.layers.{i}.norm.weight"] = 1.0 + 0.3 * torch.randn(D_MODEL, generator=g, dtype=F64)
        mixer = _mixer1(g, N, R, bias) if layer == "mamba" else _mixer2(g, N, G, bias, D_has_hdim)
        if not conv_bias:  # the official conv_bias=False (HF use_conv_bias)
            del mixer["conv1d.bias"]
        sd.update({f"backbone.layers.{i}.mixer.{k}": v for k, v in mixer.items()})
    sd["backbone.norm_f.weight"] = 1.0 + 0.3 * torch.randn(D_MODEL, generator=g, dtype=F64)
    if not tied:
        sd["lm_head.weight"] = torch.randn(VOCAB_PADDED, D_MODEL, generator=g, dtype=F64) * 0.5
    elif head_key:
        sd["lm_head.weight"] = embedding
    return sd


def _ids(seed: int = 1, length: int = L) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, length), generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.double() - b).abs().max() / b.abs().max())


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


# ----------------------------------------------------------------------------------------------------------------------
# the logits


CASES = [
    # (layer, style, options): both styles, biases, convolutions without a bias, ties (with and without lm_head),
    # state sizes, Δ ranks and D per channel each appear; two groups need their config
    # (test_two_groups_need_the_config_and_then_match)
    ("mamba", "mamba_ssm", {"N": 6, "R": 2}),
    ("mamba", "hf", {"N": 4, "R": 1, "bias": True, "tied": False}),
    ("mamba", "hf", {"N": 8, "R": 3, "head_key": False}),
    ("mamba", "mamba_ssm", {"N": 4, "R": 2, "conv_bias": False}),
    ("mamba2", "mamba_ssm", {"N": 6}),
    ("mamba2", "mamba_ssm", {"N": 4, "bias": True, "tied": False, "D_has_hdim": True}),
    ("mamba2", "hf", {"N": 8, "head_key": False}),
    ("mamba2", "hf", {"N": 5, "bias": True, "tied": False}),
    ("mamba2", "hf", {"N": 4, "conv_bias": False}),
]


@pytest.mark.parametrize("layer, style, options", CASES)
def test_logits_equal_the_official_forward_in_float64(layer, style, options):
    sd = official_state_dict(layer, style, **options)
    ids = _ids()
    expected = reference_logits(sd, ids)
    model = load_mamba(sd, dtype=F64)
    assert not model.training
    assert model.vocab_size == VOCAB_PADDED and model.config.d_output == VOCAB_PADDED
    assert model.config.layer == layer and model.config.tie_embeddings == options.get("tied", True)
    logits = _logits(model, ids)
    assert logits.shape == (BATCH, L, VOCAB_PADDED) and logits.dtype == F64
    assert _rel(logits, expected) < TOL64


@pytest.mark.parametrize("layer, style, options", [CASES[1], CASES[5]])
def test_the_float32_default_is_within_float32_round_off(layer, style, options):
    sd = official_state_dict(layer, style, **options)
    ids = _ids(seed=2)
    model = load_mamba(sd)  # dtype float32
    assert next(model.parameters()).dtype == torch.float32
    assert _rel(_logits(model, ids), reference_logits(sd, ids)) < TOL32


def test_a_hand_computed_value_with_silent_mixers():
    # every out_proj zero: the blocks add nothing, so logits = RMSNorm_f(E[id]) Eᵀ with norm_f's weight 1. With the
    # rows E[3] = (1, ..., 1) and E[5] = (2, ..., 2): RMSNorm(E[3]) = 1/√(1 + ε) per entry, so the logit of token 3
    # after token 3 is 16/√(1 + ε) and that of token 5 is 32/√(1 + ε)
    for layer in ("mamba", "mamba2"):
        sd = official_state_dict(layer, "hf", N=4, head_key=False)
        for key in [k for k in sd if k.endswith("out_proj.weight")]:
            sd[key] = torch.zeros_like(sd[key])
        sd["backbone.norm_f.weight"] = torch.ones(D_MODEL, dtype=F64)
        sd["backbone.embeddings.weight"] = sd["backbone.embeddings.weight"].clone()
        sd["backbone.embeddings.weight"][3] = 1.0
        sd["backbone.embeddings.weight"][5] = 2.0
        logits = _logits(load_mamba(sd, dtype=F64), torch.tensor([[3]]))
        assert logits[0, 0, 3].item() == pytest.approx(16 / math.sqrt(1 + EPS), rel=1e-13)
        assert logits[0, 0, 5].item() == pytest.approx(32 / math.sqrt(1 + EPS), rel=1e-13)


def test_a_reference_sanity_check_each_mixer_moves_the_logits():
    # the reference is not vacuous: zeroing one layer's out_proj (the mixer's contribution) changes the logits
    for layer in ("mamba", "mamba2"):
        sd = official_state_dict(layer)
        ids = _ids()
        cut = dict(sd, **{"backbone.layers.1.mixer.out_proj.weight": torch.zeros(D_MODEL, E, dtype=F64)})
        assert _rel(reference_logits(cut, ids), reference_logits(sd, ids)) > 1e-2


def test_two_groups_need_the_config_and_then_match():
    # Mamba-2 with ngroups = 2: the shapes alone read ngroups = 1 (B and C of one group of 2N), which the gated norm's
    # groups and the heads' B, C make a different model; the config's n_groups / ngroups gives the official one
    sd = official_state_dict("mamba2", "hf", N=4, G=2, tied=False, seed=3)
    ids = _ids()
    expected = reference_logits(sd, ids, ngroups=2)
    assert _rel(reference_logits(sd, ids, ngroups=1), expected) > 1e-3  # the two readings differ
    hf = _hf_config("mamba2", N=4, G=2, tied=False)
    assert _rel(_logits(load_mamba(sd, hf, dtype=F64), ids), expected) < TOL64
    ssm = _ssm_config("mamba2", N=4, G=2, tied=False)
    sd_ssm = _restyle(sd, "mamba_ssm")
    assert _rel(_logits(load_mamba(sd_ssm, ssm, dtype=F64), ids), expected) < TOL64


# ----------------------------------------------------------------------------------------------------------------------
# the inverse


def _restyle(sd: dict, style: str) -> dict:
    """The same weights under the other key style's embedding name."""
    out = {}
    for k, v in sd.items():
        if k in ("backbone.embedding.weight", "backbone.embeddings.weight"):
            k = "backbone.embedding.weight" if style == "mamba_ssm" else "backbone.embeddings.weight"
        out[k] = v
    return out


@pytest.mark.parametrize("layer", ["mamba", "mamba2"])
@pytest.mark.parametrize("style", ["mamba_ssm", "hf"])
@pytest.mark.parametrize("tied, head_key", [(False, True), (True, True), (True, False)])
def test_mamba_state_dict_gives_back_the_official_keys_and_values(layer, style, tied, head_key):
    sd = official_state_dict(layer, style, N=4, bias=layer == "mamba2", tied=tied, head_key=head_key, seed=5)
    model = load_mamba(sd, dtype=F64)
    out = mamba_state_dict(model, style)
    embedding = sd["backbone.embedding.weight" if style == "mamba_ssm" else "backbone.embeddings.weight"]
    # a tied model's lm_head.weight is the embedding, which the official MambaLMHeadModel.state_dict() holds under
    # both names (its load_state_dict(strict=True) asks for both); a Hugging Face file may leave it out
    keys_in, keys_out = set(sd), set(out)
    if tied:
        if style == "mamba_ssm":
            assert "lm_head.weight" in keys_out
        if "lm_head.weight" in keys_out:
            assert torch.equal(out["lm_head.weight"], embedding)
        keys_in.discard("lm_head.weight")
        keys_out.discard("lm_head.weight")
    assert keys_out == keys_in
    for k in keys_in:
        assert out[k].shape == sd[k].shape, k
        assert torch.equal(out[k], sd[k]), k
    # and the other style holds the same tensors under its embedding name
    other = "hf" if style == "mamba_ssm" else "mamba_ssm"
    restyled = mamba_state_dict(model, other)
    for k, v in _restyle(sd, other).items():
        if k != "lm_head.weight":
            assert torch.equal(restyled[k], v), k


# ----------------------------------------------------------------------------------------------------------------------
# files


def _ssm_config(layer: str, *, N: int, G: int = 1, R: int | None = None, tied: bool = True, **extra) -> dict:
    """state-spaces/mamba's config.json (MambaConfig's fields) for the test's sizes."""
    ssm_cfg = {"d_state": N, "d_conv": 4, "expand": 2}
    if layer == "mamba2":
        ssm_cfg.update({"layer": "Mamba2", "headdim": HEADDIM, "ngroups": G})
    elif R is not None:
        ssm_cfg["dt_rank"] = R
    config = {"d_model": D_MODEL, "d_intermediate": 0, "n_layer": N_LAYER, "vocab_size": VOCAB, "ssm_cfg": ssm_cfg,
              "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": tied}
    config.update(extra)
    return config


def _hf_config(layer: str, *, N: int, G: int = 1, R: int = 2, tied: bool = True, **extra) -> dict:
    """Hugging Face's config.json (MambaConfig / Mamba2Config fields) for the test's sizes."""
    config = {"hidden_size": D_MODEL, "num_hidden_layers": N_LAYER, "vocab_size": VOCAB_PADDED, "state_size": N,
              "expand": 2, "conv_kernel": 4, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": tied,
              "use_bias": False, "use_conv_bias": True, "residual_in_fp32": True, "rms_norm": True}
    if layer == "mamba2":
        config.update({"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "n_groups": G,
                       "head_dim": HEADDIM, "num_heads": E // HEADDIM, "norm_before_gate": False,
                       "time_step_limit": [0.0, math.inf]})
    else:
        config.update({"architectures": ["MambaForCausalLM"], "model_type": "mamba", "time_step_rank": R})
    config.update(extra)
    return config


def _save_folder(path, sd: dict, config: dict) -> None:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))  # inf -> Infinity, as Python's json writes HF's limit
    torch.save(sd, path / "pytorch_model.bin")


def test_a_mamba_ssm_folder_with_config_json_loads(tmp_path):
    # as state-spaces/mamba-130m: ssm_cfg {} (d_state 16, d_conv 4, dt_rank "auto" = ceil(16 / 16) = 1), tied
    sd = official_state_dict("mamba", "mamba_ssm", N=16, R=1, seed=7)
    config = _ssm_config("mamba", N=16)
    config["ssm_cfg"] = {}
    del config["tie_embeddings"], config["d_intermediate"], config["attn_layer_idx"], config["attn_cfg"]
    _save_folder(tmp_path / "m1", sd, config)
    ids = _ids(seed=8)
    model = load_mamba(tmp_path / "m1", dtype=F64)
    assert model.config.tie_embeddings
    assert _rel(_logits(model, ids), reference_logits(sd, ids)) < TOL64
    model = load_mamba(str(tmp_path / "m1" / "pytorch_model.bin"), dtype=F64)  # the weights file alone, as a str
    assert _rel(_logits(model, ids), reference_logits(sd, ids)) < TOL64


def test_a_hugging_face_folder_with_two_groups_loads(tmp_path):
    sd = official_state_dict("mamba2", "hf", N=4, G=2, tied=False, bias=False, seed=9)
    _save_folder(tmp_path / "m2", sd, _hf_config("mamba2", N=4, G=2, tied=False))
    ids = _ids(seed=10)
    model = load_mamba(tmp_path / "m2", dtype=F64)
    assert _rel(_logits(model, ids), reference_logits(sd, ids, ngroups=2)) < TOL64


def test_a_sharded_folder_loads(tmp_path):
    # Hugging Face's sharded form: pytorch_model.bin.index.json maps each key to its shard file
    sd = official_state_dict("mamba", "hf", N=4, R=2, tied=False, seed=16)
    folder = tmp_path / "sharded"
    folder.mkdir()
    keys = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, part in shards.items():
        torch.save({k: sd[k] for k in part}, folder / name)
    weight_map = {k: name for name, part in shards.items() for k in part}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(_hf_config("mamba", N=4, R=2, tied=False)))
    ids = _ids(seed=17)
    assert _rel(_logits(load_mamba(folder, dtype=F64), ids), reference_logits(sd, ids)) < TOL64


def test_a_safetensors_folder_loads(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="the safetensors package is not installed")
    sd = official_state_dict("mamba2", "hf", N=4, G=2, tied=True, head_key=False, seed=11)
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_hf_config("mamba2", N=4, G=2, tied=True)))
    safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    ids = _ids(seed=12)
    expected = reference_logits(sd, ids, ngroups=2)
    assert _rel(_logits(load_mamba(folder, dtype=F64), ids), expected) < TOL64
    sd1 = official_state_dict("mamba", "hf", N=4, R=1, tied=False, seed=13)
    safetensors_torch.save_file(sd1, str(tmp_path / "w.safetensors"))
    assert _rel(_logits(load_mamba(tmp_path / "w.safetensors", dtype=F64), ids), reference_logits(sd1, ids)) < TOL64


# ----------------------------------------------------------------------------------------------------------------------
# decoding


@pytest.mark.parametrize("layer, options", [("mamba", {"N": 6, "bias": True}), ("mamba2", {"N": 4, "G": 2})])
def test_step_by_step_decoding_follows_the_reference(layer, options):
    G = options.get("G", 1)
    sd = official_state_dict(layer, "hf", tied=False, seed=14, **options)
    config = _hf_config(layer, N=options["N"], G=G, tied=False) if layer == "mamba2" else None
    model = load_mamba(sd, config, dtype=F64)
    ids = _ids(seed=15, length=7)
    expected = reference_logits(sd, ids, ngroups=G)
    with torch.no_grad():
        steps, _ = run_steps(model, ids)
    for t in range(ids.shape[1]):
        assert _rel(steps[:, t], expected[:, t]) < TOL64, t
    # greedy generation: each new token is the reference's argmax after the sequence so far
    prompt = ids[:, :3]
    generated = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert generated.shape == (BATCH, 9) and torch.equal(generated[:, :3], prompt)
    ref = reference_logits(sd, generated[:, :-1], ngroups=G)  # (B, 8, V)
    assert torch.equal(generated[:, 3:], ref[:, 2:].argmax(-1))


# ----------------------------------------------------------------------------------------------------------------------
# refusals


def _with(sd: dict, **changes) -> dict:
    out = dict(sd)
    for k, v in changes.items():
        out[k.replace("__", ".")] = v
    return out


def _refused(source, config=None, *words: str) -> None:
    with pytest.raises(ValueError) as info:
        load_mamba(source, config)
    message = str(info.value)
    assert any(re.search(w, message, re.IGNORECASE) for w in words), message


def test_blocks_with_an_mlp_are_refused():
    sd = official_state_dict("mamba2", N=4)
    mlp = _with(sd, **{"backbone__layers__0__norm2__weight": torch.ones(D_MODEL, dtype=F64),
                       "backbone__layers__0__mlp__fc1__weight": torch.zeros(64, D_MODEL, dtype=F64),
                       "backbone__layers__0__mlp__fc2__weight": torch.zeros(D_MODEL, 32, dtype=F64)})
    _refused(mlp, None, "mlp", "d_intermediate")
    _refused(sd, _ssm_config("mamba2", N=4, d_intermediate=32), "mlp", "d_intermediate")


def test_attention_layers_are_refused():
    sd = official_state_dict("mamba", N=4)
    for qkv in ("in_proj", "Wqkv"):  # mamba_ssm's MHA (modules/mha.py) and flash-attn's older MHA
        attn = {k: v for k, v in sd.items() if not k.startswith("backbone.layers.1.mixer.")}
        attn[f"backbone.layers.1.mixer.{qkv}.weight"] = torch.zeros(3 * D_MODEL, D_MODEL, dtype=F64)
        attn["backbone.layers.1.mixer.out_proj.weight"] = torch.zeros(D_MODEL, D_MODEL, dtype=F64)
        _refused(attn, None, "attention", "attn", "Wqkv")
    _refused(sd, _ssm_config("mamba", N=4, R=2, attn_layer_idx=[1]), "attention", "attn")


def test_layer_norm_models_are_refused():
    sd = official_state_dict("mamba", N=4)
    # each named as a LayerNorm model, not only as an unexpected key
    _refused(_with(sd, backbone__norm_f__bias=torch.zeros(D_MODEL, dtype=F64)), None, "layernorm", "layer norm",
             "rms_norm")
    _refused(_with(sd, backbone__layers__1__norm__bias=torch.zeros(D_MODEL, dtype=F64)), None, "layernorm",
             "layer norm", "rms_norm")
    _refused(sd, _ssm_config("mamba", N=4, R=2, rms_norm=False), "layernorm", "layer norm", "rms")


def test_a_finite_time_step_limit_is_refused():
    sd = official_state_dict("mamba2", "hf", N=4)
    _refused(sd, _hf_config("mamba2", N=4, time_step_limit=[0.001, 0.1]), "time_step_limit", "dt_limit", "limit")
    config = _ssm_config("mamba2", N=4)
    config["ssm_cfg"]["dt_limit"] = [0.0, 0.1]
    _refused(_restyle(sd, "mamba_ssm"), config, "dt_limit", "time_step_limit", "limit")


def test_another_epsilon_is_refused():
    sd = official_state_dict("mamba", "hf", N=4)
    _refused(sd, _hf_config("mamba", N=4, layer_norm_epsilon=1e-6), "eps", "epsilon")
    _refused(sd, _hf_config("mamba", N=4, layer_norm_epsilon=1e-5 * (1 + 1e-3)), "eps", "epsilon")


def test_unknown_and_missing_keys_are_refused():
    sd = official_state_dict("mamba", N=4)
    _refused(_with(sd, backbone__layers__0__mixer__extra=torch.zeros(3, dtype=F64)), None, "unknown",
             "unexpected", "mixer.extra")
    for extra in ("lm_head.bias", "backbone.extra.weight"):  # outside the blocks too
        _refused(_with(sd, **{extra.replace(".", "__"): torch.zeros(3, dtype=F64)}), None, re.escape(extra))
    missing = {k: v for k, v in sd.items() if k != "backbone.layers.1.mixer.D"}
    _refused(missing, None, "missing", r"mixer\.D")
    no_norm = {k: v for k, v in sd.items() if k != "backbone.norm_f.weight"}
    _refused(no_norm, None, "missing", "norm_f")
    no_embedding = {k: v for k, v in sd.items() if k != "backbone.embedding.weight"}
    _refused(no_embedding, None, "embedding")


def test_shapes_that_disagree_are_refused():
    sd = official_state_dict("mamba", N=4)
    bad = _with(sd, backbone__layers__1__mixer__A_log=torch.zeros(E, 5, dtype=F64))
    _refused(bad, None, "shape", "A_log", r"\(32, 5\)")
    sd2 = official_state_dict("mamba2", N=4)
    bad2 = _with(sd2, backbone__layers__0__mixer__dt_bias=torch.zeros(3, dtype=F64))
    _refused(bad2, None, "shape", "dt_bias", "heads")
    head = _with(sd, lm_head__weight=torch.zeros(VOCAB_PADDED + 1, D_MODEL, dtype=F64))
    _refused(head, None, "shape", "lm_head")
    _refused(sd, _ssm_config("mamba", N=4, R=2, d_model=D_MODEL * 2), "d_model", "shape", "disagree")
    _refused(sd, _ssm_config("mamba", N=4, R=2, n_layer=N_LAYER + 1), "n_layer", "shape", "disagree")


@pytest.mark.parametrize("layer, style, change", [
    ("mamba", "mamba_ssm", {"d_state": 8}),
    ("mamba", "mamba_ssm", {"d_conv": 3}),
    ("mamba", "mamba_ssm", {"expand": 3}),
    ("mamba", "mamba_ssm", {"dt_rank": 3}),
    ("mamba", "hf", {"state_size": 8}),
    ("mamba", "hf", {"time_step_rank": 3}),
    ("mamba", "hf", {"conv_kernel": 3}),
    ("mamba2", "mamba_ssm", {"headdim": 16}),
    ("mamba2", "hf", {"head_dim": 16}),
    ("mamba2", "hf", {"num_heads": 8}),
    ("mamba2", "hf", {"state_size": 2}),  # 2 groups of 2 would fit the conv's 2·G·N = 8 channels: still not N = 4
])
def test_a_config_whose_sizes_disagree_with_the_tensors_is_refused(layer, style, change):
    # the docstring's promise: "Sizes come from the shapes either way, and a config that disagrees with them is
    # refused" -- a config.json from another checkpoint than the weights must not load silently
    sd = official_state_dict(layer, style, N=4, R=2)
    config = (_ssm_config(layer, N=4, R=2) if style == "mamba_ssm" else _hf_config(layer, N=4, R=2))
    load_mamba(sd, config)  # the matching config loads
    target = config["ssm_cfg"] if style == "mamba_ssm" else config
    target.update(change)
    _refused(sd, config, *change, "disagree", "shape")
