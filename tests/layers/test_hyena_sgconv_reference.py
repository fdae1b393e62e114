"""Hyena (arXiv 2302.10866) and SGConv (arXiv 2210.09298) against float64 references written here from the papers'
equations, with every parameter and buffer moved off its initial value: Hyena's implicit filter built tap by tap
(positional encoding, sine FFN with a per-unit frequency, the exponential window with signed δ), its long convolutions
as direct sums and its gates in the official order; SGConv's kernel from its sub-kernels (linear upsampling by hand,
decay per channel, the stored normaliser) and its convolution (causal and bidirectional) as a direct sum. Each path
(forward on both backends, forward continued from a state, step) is compared with the reference of the whole
sequence; the options are checked stored, shown and refused by name; the initialisations against their laws."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers.hyena import Hyena, HyenaFilter
from ssmkit.layers.sgconv import SGConv
from tests.conftest import DEVICE, H, rel_err, run_steps

F64 = torch.float64


def d64(t: torch.Tensor) -> torch.Tensor:
    """t detached, as float64 on the CPU."""
    return t.detach().to(F64).cpu()


def perturb(layer: torch.nn.Module, seed: int) -> None:
    """Move every parameter and every float buffer off its initial value (seeded normal draws; buffers named in
    ``positive`` drawn in [0.5, 2))."""
    g = torch.Generator().manual_seed(seed)
    positive = {"kernel_norm"}
    with torch.no_grad():
        for name, t in [*layer.named_parameters(), *layer.named_buffers()]:
            if name.split(".")[-1] in positive:
                new = 0.5 + 1.5 * torch.rand(t.shape, generator=g, dtype=F64)
            else:
                new = 0.7 * torch.randn(t.shape, generator=g, dtype=F64)
            t.copy_(new.to(t.device))


# ------------------------------------------------------------------------------------------------------------- Hyena


def hyena_layer(seed: int = 3, **opts) -> Hyena:
    """A float64 Hyena with d_model = H, every parameter and buffer drawn off its init."""
    torch.manual_seed(seed)
    layer = layers.build("hyena", d_model=H, device=DEVICE, dtype=F64, **opts)
    perturb(layer, seed + 100)
    return layer


def band_frequencies(bands: int) -> list[float]:
    """f_k = linspace(1e-4, bands - 1, bands), written out (one band: f_0 = 1e-4)."""
    if bands == 1:
        return [1e-4]
    return [1e-4 + k * ((bands - 1) - 1e-4) / (bands - 1) for k in range(bands)]


def hyena_filters_ref(layer: Hyena, L: int) -> torch.Tensor:
    """h (O, H, L), tap by tap (arXiv 2302.10866 §3.3): h_c(n) = exp(-|δ_c| t_n) · FFN(PosEnc(n))_c with
    t_n = n/(l_max - 1), PosEnc(n) = [t_n, cos(2π f_k n/l_max), -sin(2π f_k n/l_max)], FFN = sine layers
    sin(ω ⊙ (W z + b)) then a bias-free linear map, c = o·H + channel."""
    f = layer.filter
    w_in, b_in, w_hid, b_hid = d64(f.w_in), d64(f.b_in), d64(f.w_hidden), d64(f.b_hidden)
    w_out, omega, delta = d64(f.w_out), d64(f.freq), d64(f.deltas)
    freqs = band_frequencies((layer.emb_dim - 1) // 2)
    taps = []
    for n in range(L):
        t = n / (layer.l_max - 1)
        enc = [t] + [math.cos(2 * math.pi * fk * n / layer.l_max) for fk in freqs]
        enc += [-math.sin(2 * math.pi * fk * n / layer.l_max) for fk in freqs]
        a = torch.sin(omega * (w_in @ torch.tensor(enc, dtype=F64) + b_in))  # (F,)
        for k in range(layer.n_inner):
            a = torch.sin(omega * (w_hid[k] @ a + b_hid[k]))
        taps.append((w_out @ a) * torch.exp(-delta.abs() * t))  # (O·H,)
    return torch.stack(taps, dim=-1).reshape(layer.order - 1, H, L)


def short_conv_ref(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution from zeros: y_t = b + Σ_k w_k z_{t-W+1+k} per channel, z (B, L, C)."""
    W = w.shape[1]
    y = torch.zeros_like(z) + b
    for t in range(z.shape[1]):
        for k in range(W):
            s = t - W + 1 + k
            if s >= 0:
                y[:, t] += w[:, k] * z[:, s]
    return y


def direct_causal_conv(h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Σ_{s<=t} h_{t-s} z_s per channel: h (H, L), z (B, L, H)."""
    y = torch.zeros_like(z)
    for t in range(z.shape[1]):
        for s in range(t + 1):
            y[:, t] += h[:, t - s] * z[:, s]
    return y


def hyena_ref(layer: Hyena, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The order-N Hyena recurrence (arXiv 2302.10866, Algorithm 3; gates x_{N-1}, ..., x_1 as the official code):
    returns y (B, L, H), each long convolution's inputs (B, O, H, L) and the projected inputs z (B, L, (N+1)H)."""
    N, O = layer.order, layer.order - 1
    x = d64(x)
    z = x @ d64(layer.in_proj.weight).T + d64(layer.in_proj.bias)  # (B, L, (N+1)H)
    zc = short_conv_ref(z, d64(layer.short_conv.weight), d64(layer.short_conv.bias))
    parts = [zc[..., j * H:(j + 1) * H] for j in range(N + 1)]
    gates, v = parts[:N], parts[N]
    h = hyena_filters_ref(layer, x.shape[1])
    bias = d64(layer.filter_bias)
    inputs = []
    for o in range(O):
        u = gates[N - 1 - o] * v
        inputs.append(u.transpose(1, 2))
        v = direct_causal_conv(h[o], u) + bias[o] * u
    y = (gates[0] * v) @ d64(layer.out_proj.weight).T + d64(layer.out_proj.bias)
    return y, torch.stack(inputs, dim=1), z


HYENA_CASES = [
    ({"l_max": 9, "filter_width": 5}, 13),  # L > l_max
    ({"l_max": 12, "order": 3, "filter_width": 4, "emb_dim": 5, "n_inner": 1, "short_width": 2}, 10),
    ({"l_max": 6, "order": 4, "filter_width": 3, "emb_dim": 7, "n_inner": 0, "short_width": 4, "sine_freq": 3.0}, 11),
]


@pytest.mark.parametrize("opts,L", HYENA_CASES)
def test_hyena_filters_equal_the_implicit_parametrisation(opts, L):
    layer = hyena_layer(**opts)
    h = layer.filters(L)
    assert h.shape == (layer.order - 1, H, L) and h.dtype == F64
    assert rel_err(h, hyena_filters_ref(layer, L)) < 1e-13


@pytest.mark.parametrize("opts,L", HYENA_CASES)
def test_hyena_forward_equals_the_recurrence(opts, L):
    layer = hyena_layer(**opts)
    x = torch.randn(2, L, H, device=DEVICE, dtype=F64)
    y_ref, inputs_ref, z_ref = hyena_ref(layer, x)
    W = layer.short_width
    for backend in ("reference", "fft"):
        with ops.use_backend(backend):
            y, state = layer(x)
        assert rel_err(y, y_ref) < 1e-12, backend
        assert rel_err(state.inputs, inputs_ref) < 1e-12, backend  # every input of each long convolution
        assert rel_err(state.conv, z_ref[:, L - (W - 1):].transpose(1, 2)) < 1e-13, backend  # the last W-1 inputs
        y_only, none = layer(x, return_state=False)
        assert none is None and rel_err(y_only, y_ref) < 1e-12


@pytest.mark.parametrize("opts,L", HYENA_CASES)
def test_hyena_chunks_and_steps_equal_the_recurrence_of_the_whole_sequence(opts, L):
    layer = hyena_layer(**opts)
    x = torch.randn(2, L, H, device=DEVICE, dtype=F64)
    y_ref, inputs_ref, _ = hyena_ref(layer, x)
    a, b = 3, 7
    with torch.no_grad():
        y1, s = layer(x[:, :a])
        y2, s = layer(x[:, a:b], s)
        y3, s = run_steps(layer, x[:, b:], s)
    assert rel_err(torch.cat([y1, y2, y3], dim=1), y_ref) < 1e-12
    assert s.inputs.shape == (2, layer.order - 1, H, L) and rel_err(s.inputs, inputs_ref) < 1e-12


def test_hyena_step_sees_a_filter_update_between_steps():
    # order 2: the long convolution's inputs x_1 ⊙ v do not depend on the filter, so after an update of the filter
    # FFN the next step is the recurrence of the whole sequence with the new filter (no stale cached filter)
    layer = hyena_layer(l_max=4, filter_width=3)
    x = torch.randn(2, 9, H, device=DEVICE, dtype=F64)
    with torch.no_grad():
        _, s = run_steps(layer, x[:, :6])
        layer.filter.w_out.mul_(-1.5)
        layer.filter.deltas.add_(0.3)
        y, _ = run_steps(layer, x[:, 6:], s)
    assert rel_err(y, hyena_ref(layer, x)[0][:, 6:]) < 1e-12


def test_hyena_options_are_stored_shown_and_shape_the_parameters():
    opts = {"l_max": 11, "order": 3, "filter_width": 5, "emb_dim": 7, "n_inner": 1, "sine_freq": 2.5,
            "short_width": 4, "lr": 0.02}
    layer = layers.build("hyena", d_model=H, dtype=F64, **opts)
    for name, value in opts.items():
        assert getattr(layer, name) == value, name
    f = layer.filter
    assert (f.channels, f.l_max, f.emb_dim, f.width, f.n_inner, f.sine_freq) == (2 * H, 11, 7, 5, 1, 2.5)
    assert layer.in_proj.weight.shape == (4 * H, H) and layer.short_conv.weight.shape == (4 * H, 4)
    assert f.w_in.shape == (5, 7) and f.w_hidden.shape == (1, 5, 5) and f.w_out.shape == (2 * H, 5)
    assert layer.filter_bias.shape == (2, H) and layer.out_proj.weight.shape == (H, H)
    assert "d_model=3, l_max=11, order=3, filter_width=5" in repr(layer)
    spec = layer.state_spec()
    assert spec.inputs.shape == (2, H, 0) and spec.inputs.growing == 2 and spec.conv.shape == (4 * H, 3)


@pytest.mark.parametrize("name,bad", [
    ("d_model", 0), ("l_max", 1), ("l_max", True), ("l_max", 8.0), ("order", 1), ("order", True), ("order", 2.0),
    ("filter_width", 0), ("emb_dim", 4), ("emb_dim", 1), ("emb_dim", True), ("emb_dim", 5.0), ("n_inner", -1),
    ("n_inner", True), ("n_inner", 1.0), ("sine_freq", math.nan), ("sine_freq", True), ("sine_freq", "1"),
    ("short_width", 0), ("lr", -1.0),
])
def test_hyena_invalid_options_are_refused_by_name(name, bad):
    opts = {"d_model": H, name: bad}
    with pytest.raises(ValueError, match=name):
        Hyena(**opts)


def test_hyena_boundary_options_are_accepted():
    layer = Hyena(H, l_max=2, order=2, emb_dim=3, n_inner=0, sine_freq=2, short_width=1, filter_width=1, lr=None)
    assert layer.filter.w_hidden.shape == (0, 1, 1) and layer.filter.w_in.shape == (1, 3)
    x = torch.randn(1, 5, H)
    assert layer(x)[0].shape == (1, 5, H)


def test_hyena_initialisation_follows_the_official_laws():
    torch.manual_seed(0)
    layer = Hyena(48, l_max=20, order=3, filter_width=40, emb_dim=5, n_inner=2, sine_freq=7.0, dtype=F64)
    perturb(layer, 5)
    layer.reset_parameters()  # the only re-init path restores every law
    f = layer.filter
    assert torch.equal(f.freq, torch.full((40,), 7.0, dtype=F64))
    target = math.log(1e-2)
    expected = torch.tensor([target / 1.5 + c * (target / 0.3 - target / 1.5) / 95 for c in range(96)], dtype=F64)
    expected = expected.reshape(48, 2).T.reshape(96)  # stage o of channel h takes the (2h + o)-th rate (official order)
    assert rel_err(f.deltas, expected) < 1e-14
    for w, fan_in in ((f.w_in, 5), (f.b_in, 5), (f.w_hidden, 40), (f.b_hidden, 40), (f.w_out, 40),
                      (layer.in_proj.weight, 48), (layer.out_proj.weight, 48), (layer.short_conv.weight, 3)):
        bound, w = 1 / math.sqrt(fan_in), w.detach()  # nn.Linear / nn.Conv1d: uniform on ±1/√fan_in
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.8 * bound
        assert abs(float(w.mean())) < 0.25 * bound
    b = layer.filter_bias.detach()  # N(0, 1): 96 draws
    assert b.shape == (2, 48) and 0.75 < float(b.std()) < 1.25 and float(b.abs().max()) > 1.5


def test_hyena_declares_its_paper_and_capabilities():
    layer = hyena_layer()
    assert Hyena.zoo.paper == "arXiv 2302.10866" and Hyena.backends == ("reference", "fft")
    assert Hyena.zoo.time_varying is False and Hyena.zoo.stable_by_construction is True  # FIR filters, no poles
    assert layer.supports("step") and not layer.supports("kernel") and not layer.supports("state_space")
    with pytest.raises(NotImplementedError, match="not linear time-invariant"):
        layer.state_space()


def test_hyena_filters_refuse_a_bad_length_and_half_parameters():
    layer = hyena_layer()
    for bad in (0, -2, 3.0):
        with pytest.raises(ValueError, match="L must"):
            layer.filters(bad)
    with pytest.raises(ValueError, match="parameters are torch.bfloat16"):
        layer.to(torch.bfloat16).filters(4)


def test_hyena_filter_module_defaults_are_the_official_ones():
    f = HyenaFilter(6, 10, dtype=F64)
    f.reset_parameters()
    assert (f.channels, f.l_max, f.emb_dim, f.width, f.n_inner, f.sine_freq) == (6, 10, 3, 64, 2, 1.0)
    assert f.w_in.shape == (64, 3) and f.w_hidden.shape == (2, 64, 64) and f.w_out.shape == (6, 64)
    assert torch.equal(f.freq.detach(), torch.ones(64, dtype=F64))
    assert f._ssm_marks["w_out"] == {"lr": 1e-3, "weight_decay": 0.0} and f._ssm_marks["freq"]["lr"] == 1e-3


# ------------------------------------------------------------------------------------------------------------ SGConv


def sgconv_layer(seed: int = 4, **opts) -> SGConv:
    """A float64 SGConv with d_model = H, sub-kernels, D and the stored normaliser drawn off their init."""
    torch.manual_seed(seed)
    layer = layers.build("sgconv", d_model=H, device=DEVICE, dtype=F64, **opts)
    perturb(layer, seed + 200)
    return layer


def upsample(w: torch.Tensor, r: int) -> torch.Tensor:
    """Linear interpolation of w (..., d) to d·r samples at half-pixel centres: sample j reads the input at
    position (j + ½)/r - ½, clamped to [0, d - 1] (``F.interpolate(mode="linear")``, written as a loop)."""
    d = w.shape[-1]
    out = []
    for j in range(d * r):
        pos = min(max((j + 0.5) / r - 0.5, 0.0), d - 1.0)
        lo = int(math.floor(pos))
        hi = min(lo + 1, d - 1)
        out.append(w[..., lo] * (1 - (pos - lo)) + w[..., hi] * (pos - lo))
    return torch.stack(out, dim=-1)


def sgconv_unnormalised_ref(layer: SGConv) -> torch.Tensor:
    """K̃ (C, H, d·2^{S-1}) = concat_i α_h^i Upsample_{r_i}(w_i), r_0 = 1, r_i = 2^{i-1}, α_h = 1/decay_h with decay
    linearly spaced over the channels (arXiv 2210.09298 §3)."""
    w = d64(layer.sub_kernels)  # (S, C, H, d)
    lo, hi = layer.decay_min, layer.decay_max
    decay = torch.tensor([lo + (hi - lo) * c / max(H - 1, 1) for c in range(H)], dtype=F64)
    parts = []
    for i in range(w.shape[0]):
        r = 1 if i == 0 else 2 ** (i - 1)
        parts.append(upsample(w[i], r) * (1 / decay[:, None]) ** i)
    return torch.cat(parts, dim=-1)


def sgconv_kernel_ref(layer: SGConv) -> torch.Tensor:
    """K (C, H, K_len) = K̃ / the stored normaliser, D on the causal kernel's tap 0."""
    K = sgconv_unnormalised_ref(layer) / d64(layer.kernel_norm)[:, :, None]
    K[0, :, 0] += d64(layer.D)
    return K


def sgconv_ref(layer: SGConv, x: torch.Tensor) -> torch.Tensor:
    """y_t = Σ_{j<K_len, j<=t} K_j u_{t-j} (+ Σ_{j>=0} K^←_j u_{t+1+j} when bidirectional): the direct sums."""
    K = sgconv_kernel_ref(layer)
    u = d64(x)
    L, F = u.shape[1], K.shape[-1]
    y = torch.zeros_like(u)
    for t in range(L):
        for j in range(min(t + 1, F)):
            y[:, t] += K[0, :, j] * u[:, t - j]
        if layer.bidirectional:
            for j in range(min(L - 1 - t, F)):
                y[:, t] += K[1, :, j] * u[:, t + 1 + j]
    return y


SG_CASES = [
    ({"l_max": 13, "kernel_dim": 3, "decay_min": 1.5, "decay_max": 3.5}, 4, 30),  # S = 4, K_len = 24 < L
    ({"l_max": 12, "kernel_dim": 3, "decay_min": 2.5, "decay_max": 1.25}, 3, 9),  # l_max = d·2^2: S = 3, L < K_len
    ({"l_max": 5, "kernel_dim": 7, "decay_min": 0.5, "decay_max": 0.75}, 1, 11),  # l_max <= d: one scale
]


@pytest.mark.parametrize("opts,S,L", SG_CASES)
def test_sgconv_kernel_equals_the_multiscale_formula(opts, S, L):
    layer = sgconv_layer(**opts)
    assert layer.n_scales == S and layer.kernel_length == opts["kernel_dim"] * 2 ** (S - 1)
    assert layer.sub_kernels.shape == (S, 1, H, opts["kernel_dim"]) and layer.kernel_norm.shape == (1, H)  # causal only
    K_ref = sgconv_kernel_ref(layer)[0]  # (H, K_len)
    for n in (L, layer.kernel_length, layer.kernel_length + 4):
        K = layer.kernel(n)
        m = min(n, layer.kernel_length)
        assert K.shape == (H, n) and rel_err(K[:, :m], K_ref[:, :m]) < 1e-13
        assert torch.equal(K[:, m:], torch.zeros_like(K[:, m:]))  # zero beyond K_len
    layer.reset_kernel_norm()  # the normaliser is ‖K̃‖₂ per channel of the current sub-kernels
    assert rel_err(layer.kernel_norm, sgconv_unnormalised_ref(layer).norm(dim=-1)) < 1e-14


@pytest.mark.parametrize("opts,S,L", SG_CASES)
def test_sgconv_forward_chunks_and_steps_equal_the_direct_sum(opts, S, L):
    layer = sgconv_layer(**opts)
    x = torch.randn(2, L, H, device=DEVICE, dtype=F64)
    y_ref = sgconv_ref(layer, x)
    W = layer.kernel_length - 1
    for backend in ("reference", "fft"):
        with ops.use_backend(backend):
            y, state = layer(x)
            assert rel_err(y, y_ref) < 1e-12, backend
            past = torch.cat([torch.zeros(2, W, H, dtype=F64, device=DEVICE), x], dim=1)[:, -W:]
            assert torch.equal(state, past.transpose(1, 2))  # the last K_len - 1 inputs, oldest first
            a, b = 2, 5
            with torch.no_grad():
                y1, s = layer(x[:, :a])
                y2, s = layer(x[:, a:b], s)
                y3, _ = run_steps(layer, x[:, b:], s)
            assert rel_err(torch.cat([y1, y2, y3], dim=1), y_ref) < 1e-12, backend


@pytest.mark.parametrize("opts,S,L", SG_CASES)
def test_sgconv_bidirectional_equals_the_two_sided_sum(opts, S, L):
    layer = sgconv_layer(bidirectional=True, **opts)
    assert layer.sub_kernels.shape == (S, 2, H, opts["kernel_dim"]) and layer.kernel_norm.shape == (2, H)
    x = torch.randn(2, L, H, device=DEVICE, dtype=F64)
    y_ref = sgconv_ref(layer, x)
    for backend in ("reference", "fft"):
        with ops.use_backend(backend):
            y, state = layer(x)
        assert state is None and rel_err(y, y_ref) < 1e-12, backend
    K = layer.kernel(L)
    m = min(L, layer.kernel_length)
    assert K.shape == (2, H, L) and rel_err(K[..., :m], sgconv_kernel_ref(layer)[..., :m]) < 1e-13


def test_sgconv_step_sees_a_parameter_update_between_steps():
    layer = sgconv_layer(l_max=6, kernel_dim=2)
    x = torch.randn(2, 12, H, device=DEVICE, dtype=F64)
    with torch.no_grad():
        _, s = run_steps(layer, x[:, :7])
        layer.sub_kernels.mul_(-2.0)
        layer.D.add_(0.5)
        layer.kernel_norm.mul_(1.7)
        y, _ = run_steps(layer, x[:, 7:], s)
    assert rel_err(y, sgconv_ref(layer, x)[:, 7:]) < 1e-12


def test_sgconv_options_are_stored_and_shown():
    layer = SGConv(H, l_max=20, kernel_dim=3, decay_min=1.5, decay_max=2.5, lr=0.05, bidirectional=True, dtype=F64)
    stored = (layer.d_model, layer.l_max, layer.kernel_dim, layer.decay_min, layer.decay_max, layer.lr,
              layer.bidirectional, layer.n_scales, layer.kernel_length, layer.window)
    assert stored == (H, 20, 3, 1.5, 2.5, 0.05, True, 4, 24, 23)
    assert repr(layer).endswith("(d_model=3, l_max=20, kernel_dim=3, n_scales=4, decay=(1.5, 2.5), "
                                "bidirectional=True, lr=0.05)")
    assert SGConv(H, l_max=3, kernel_dim=3).state_spec().shape == (H, 2)


@pytest.mark.parametrize("name,bad", [
    ("d_model", 0), ("l_max", 0), ("l_max", True), ("kernel_dim", 0), ("kernel_dim", 2.0), ("decay_min", 0.0),
    ("decay_min", -1.0), ("decay_min", True), ("decay_min", "2"), ("decay_max", math.inf), ("decay_max", 0),
    ("lr", math.nan), ("bidirectional", 1), ("bidirectional", None),
])
def test_sgconv_invalid_options_are_refused_by_name(name, bad):
    opts = {"d_model": H, name: bad}
    with pytest.raises(ValueError, match=name):
        SGConv(**opts)


def test_sgconv_initialisation_draws_standard_normals_and_freezes_their_norm():
    torch.manual_seed(0)
    layer = SGConv(40, l_max=32, kernel_dim=8, dtype=F64, bidirectional=True)
    perturb(layer, 6)
    layer.reset_parameters()
    w, D = layer.sub_kernels.detach(), layer.D.detach()
    assert 0.85 < float(w.std()) < 1.15 and abs(float(w.mean())) < 0.1 and float(w.abs().max()) > 2.5  # 1 920 draws
    assert 0.7 < float(D.std()) < 1.3 and float(D.abs().max()) > 1.5  # 40 draws
    decay = torch.full((40,), 2.0, dtype=F64)
    K = torch.cat([w[0], w[1] / decay[:, None], upsample(w[2], 2) / decay[:, None] ** 2], dim=-1)
    assert rel_err(layer.kernel_norm, K.norm(dim=-1)) < 1e-14


def test_sgconv_declares_its_paper_and_capabilities():
    layer = sgconv_layer(l_max=8, kernel_dim=2)
    assert SGConv.zoo.paper == "arXiv 2210.09298" and SGConv.backends == ("reference", "fft")
    assert SGConv.zoo.time_varying is False and SGConv.zoo.stable_by_construction is True
    assert layer.supports("kernel") and layer.supports("step") and not layer.supports("state_space")
    with pytest.raises(NotImplementedError, match="a shift register of K_len - 1 states"):
        layer.state_space()
