"""Length probe of 2026-12-05: the sequence length L against the layers' length parameters (S4's and Liquid-S4's
``l_max``, DSS-softmax's ``l_max``, SGConv's ``l_max``/``kernel_dim``, Hyena's ``l_max``, Mega's ``chunk_size`` and
``max_positions``, attention's ``window``) at L < l_max, L = l_max, L = l_max + 1 and L >> l_max, against float64
references written from the equations, across backends, ``forward`` / chunked continuation / ``step``, ``kernel(L)``
and ``state_space()``.

Found:

1. S4 (and Liquid-S4, its subclass) and DSS-softmax let ``layer.l_max = n`` be assigned after construction, although
   their docstrings call it a fixed constructor option, and the result depended on the caches. S4 (legt, l_max 16 ->
   32, L 24, float64): under ``torch.no_grad`` ``forward`` and ``step`` kept the old l_max (change 0.0) until a
   parameter changed (or with a gradient at once), then both moved by 5.1 % (C̃ read as another C). DSS-softmax
   (l_max 8 -> 16, L 20): ``forward`` changed by 10.4 % at once while ``step`` kept its cached Ā, B̄, C, so
   ``forward`` and ``step`` of one layer disagreed by 10.4 % (the protocol's rule: 1e-10). Fixed: ``l_max`` is a
   read-only property on both (assigning raises AttributeError naming the value and what to do instead).
2. Hyena's zoo entry (``ssmkit zoo``) said "FIR filters of l_max taps" and a step cost "O(order H l_max) (each long
   filter over a window of l_max inputs)"; the layer's filters have unbounded support (tap 3·l_max is non-zero) and
   its step state holds every input so far (after l_max + 3 steps, l_max + 3 of them), as its module docstring and
   docs/design.md say. Fixed: the entry says so.

Checked right (kept below as guards):

- S4 (legt, Re λ = -1e-4, so |Ā^{l_max}| ≈ 1 and the attuning of C̃ matters) against the full conjugate-pair dense
  bilinear system simulated by a loop, C recovered from C̃ by (I - Ā^{l_max})ᵀ C = C̃: ``forward`` on both backends,
  the final state, chunked continuation across l_max, ``step``, the ``state_space()`` export simulated in the
  control convention, and ``kernel(L)`` = the impulse response, at L = 7, 16, 17, 45, 200 (l_max 16): ≤ 1e-14
  (measured 2e-16 .. 6e-15; FouT's Woodbury cancellation gives 1e-13, see S4's docstring). The anti-causal kernel of a
  bidirectional S4 at L = 30 > l_max = 8 against C[1]ᵀ Ā^m B̄: 3e-14. Float32 at L = 4096 = 256·l_max: 6e-8.
- A layer evaluated under no_grad at L = 40 and 100 (caches filled), trained 3 Adam steps at L = 16, then evaluated
  at 10, 40, 100 and stepped equals a fresh layer loaded with the trained state dict exactly (S4, Liquid-S4,
  DSS-softmax, SGConv, Hyena, Mega, H3, attention): no cache is keyed by length alone.
- SGConv against its documented kernel (``F.interpolate`` upsampling, α^i per channel with a decay range, the frozen
  L2 norm, D on tap 0) and a direct causal sum, at K_len - 1, K_len, K_len + 1 and 3·K_len + 5 for l_max 40, 65, 5
  (kernel_dim 8; S = 4, 5, 1): forward on both backends, chunked, step, ``kernel(L)`` cropped / zero-padded; the
  bidirectional kernel (anti-causal tap 0 at lag -1) at L = 90 > K_len = 32.
- Hyena against its equations (filters from t_n = n/(l_max - 1), PosEnc bands, the FFN, the frozen δ; the short
  convolution; the gates in reverse order with the filter bias) at L = 5, l_max, l_max + 1, 5·l_max (orders 2, 3):
  ≤ 2e-16, also chunked and by ``step`` (whose filter cache grows by doubling past l_max); ``filters(7)`` is exactly
  the first taps of ``filters(300)`` (nothing is interpolated or normalised by L).
- Mega against eq. 6-15 written per query (softmax and Laplace, simple and rotary bias, chunk 6 and no chunk) at
  L = 4, 6, 7, 12, 29: forward, chunked continuation across chunk boundaries and ``step`` ≤ 1e-15; the simple bias
  without chunks refuses the span max_positions + 1 in ``forward`` and in ``step`` (not a wrap).
- ``kernel(L)`` of S4, DSS-softmax and SGConv is the first L taps of ``kernel(L')`` for L' > L (no normalisation by
  L; DSS-softmax normalises over l_max, as documented).

Noticed and left alone: assigning other constructor options that ``forward`` reads at call time gives the same
cache-dependent mismatch (SGConv ``decay_max``: forward 10 % off ``step``); Hyena's ``l_max`` attribute is not read
after construction (its filter keeps its own), so assigning it is silently ignored. Options are architecture (STYLE
rule 6); only the length options of this probe were made read-only.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers import build
from ssmkit.layers.hyena import Hyena
from ssmkit.layers.mega import laplace
from ssmkit.ops import use_backend

F64, C128 = torch.float64, torch.complex128


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def run_steps(layer, x):
    h = layer.initial_state(x.shape[0])
    ys = []
    for t in range(x.shape[1]):
        y_t, h = layer.step(x[:, t], h)
        ys.append(y_t)
    return torch.stack(ys, 1), h


# ----------------------------------------------------------------------------------------------------------------
# Findings (fixed)


def test_s4_l_max_is_fixed_after_construction():
    """Before the fix the assignment went through and the output depended on the caches (finding 1)."""
    torch.manual_seed(0)
    layer = build("s4", d_model=3, d_state=8, l_max=16, init="legt", dt_min=0.05, dt_max=0.2, dtype=F64)
    x = torch.randn(2, 24, 3, dtype=F64)
    with torch.no_grad():
        y0, _ = layer(x)
        with pytest.raises(AttributeError, match="l_max is fixed at construction .*l_max=16.*32"):
            layer.l_max = 32
        assert layer.l_max == 16
        layer._plan_cache.clear()  # as any parameter update would
        layer._step_cache.clear()
        y1, _ = layer(x)
        s1, _ = run_steps(layer, x)
    assert rel(y1, y0) < 1e-14  # was 5.1e-2 once the caches were refreshed
    assert rel(s1, y1) < 1e-12
    liquid = build("liquid_s4", d_model=3, d_state=8, l_max=16, dtype=F64)
    with pytest.raises(AttributeError, match="l_max is fixed"):
        liquid.l_max = 8


def test_dss_softmax_l_max_is_fixed_after_construction():
    """Before the fix forward changed by 10.4 % and step did not: forward and step disagreed by 10.4 % (finding 1)."""
    torch.manual_seed(0)
    layer = build("dss", d_model=3, d_state=8, version="softmax", l_max=8, dtype=F64)
    x = torch.randn(2, 20, 3, dtype=F64)
    with torch.no_grad():
        s0, _ = run_steps(layer, x)  # fills the step cache
        with pytest.raises(AttributeError, match="l_max is fixed at construction .*l_max=8.*16"):
            layer.l_max = 16
        y1, _ = layer(x)
        s1, _ = run_steps(layer, x)
    assert layer.l_max == 8
    assert rel(s1, y1) < 1e-12 and rel(s1, s0) < 1e-15


def test_hyena_zoo_entry_describes_its_growing_state():
    """Finding 2: the zoo entry claimed FIR filters of l_max taps and a window of l_max inputs."""
    assert "l_max" not in Hyena.zoo.stability and "l_max" not in Hyena.zoo.step_cost
    assert Hyena.zoo.step_cost.startswith("O(order H t) at step t")  # the cost grows with the step
    torch.manual_seed(0)
    l_max = 8
    layer = build("hyena", d_model=3, l_max=l_max, filter_width=8, dtype=F64)
    with torch.no_grad():
        h = layer.filters(3 * l_max + 1)  # (O, H, 3 l_max + 1)
        assert (h[..., l_max:] != 0).all()  # support beyond l_max: exp(-|δ| t_n) > 0 at every tap
        assert h[..., 2 * l_max].abs().max() > 1e-5  # and not negligible on the slowest channels (3e-4 here)
        x = torch.randn(1, l_max + 3, 3, dtype=F64)
        ys, state = run_steps(layer, x)
        assert state.inputs.shape[-1] == l_max + 3  # every input so far, not a window of l_max
        y, _ = layer(x)
    assert rel(ys, y) < 1e-12


# ----------------------------------------------------------------------------------------------------------------
# S4 against the dense float64 system


def s4_dense(layer):
    """The full conjugate-pair system from the raw parameters (float64): Ā (H, N, N), B̄ (H, N), C (C, H, N), D (H,),
    with C recovered from the stored C̃ = (I - Ā^{l_max})ᵀ C."""
    H, M = layer.d_model, layer.d_state // 2
    rep = H // layer.log_A_real.shape[0]
    Lam = torch.complex(-torch.exp(layer.log_A_real.double()), layer.A_imag.double()).repeat(rep, 1)  # (H, M)
    P = torch.view_as_complex(layer.P.double()).repeat(1, rep, 1)  # (r, H, M)
    B = torch.view_as_complex(layer.B.double()).repeat(rep, 1)  # (H, M)
    dt = torch.exp(layer.log_dt.double())
    eye = torch.eye(2 * M, dtype=C128)
    A_bar, B_bar = [], []
    for h in range(H):
        A = torch.diag(torch.cat([Lam[h], Lam[h].conj()]))
        for i in range(P.shape[0]):
            p = torch.cat([P[i, h], P[i, h].conj()])
            A = A - torch.outer(p, p.conj())
        inv = torch.linalg.inv(eye - dt[h] / 2 * A)
        A_bar.append(inv @ (eye + dt[h] / 2 * A))
        B_bar.append(inv @ (dt[h] * torch.cat([B[h], B[h].conj()])))
    A_bar, B_bar = torch.stack(A_bar), torch.stack(B_bar)
    C_t = torch.view_as_complex(layer.C_tilde.double())  # (C, H, M)
    C_t = torch.cat([C_t, C_t.conj()], -1)  # (C, H, N)
    A_L = torch.linalg.matrix_power(A_bar, layer.l_max)
    C = torch.linalg.solve((eye - A_L).mT, C_t.unsqueeze(-1)).squeeze(-1)  # (C, H, N)
    return A_bar, B_bar, C, layer.D.double()


def s4_simulate(layer, u):
    """y (B, L, H) and the final full state (B, H, N) by the loop x_l = Ā x_{l-1} + B̄ u_l, y_l = Re Cᵀx_l + D u_l."""
    A_bar, B_bar, C, D = s4_dense(layer)
    x = torch.zeros(u.shape[0], u.shape[2], A_bar.shape[-1], dtype=C128)
    ys = []
    for t in range(u.shape[1]):
        x = torch.einsum("hmn,bhn->bhm", A_bar, x) + B_bar * u[:, t, :, None]
        ys.append((x * C[0]).sum(-1).real + D * u[:, t])
    return torch.stack(ys, 1), x


@pytest.fixture(scope="module")
def slow_s4():
    torch.manual_seed(1)
    layer = build("s4", d_model=3, d_state=6, l_max=16, init="legt", dt_min=0.02, dt_max=0.2, n_ssm=None, dtype=F64)
    A_bar = s4_dense(layer)[0]
    assert torch.linalg.matrix_norm(torch.linalg.matrix_power(A_bar, 16), 2).min() > 0.99  # C̃'s attuning matters
    return layer


@pytest.mark.parametrize("L", [7, 16, 17, 45, 200])
def test_s4_every_view_matches_the_dense_system_around_l_max(slow_s4, L):
    layer = slow_s4
    torch.manual_seed(L)
    u = torch.randn(2, L, 3, dtype=F64)
    with torch.no_grad():
        y_ref, x_ref = s4_simulate(layer, u)
        for backend in ("fft", "reference"):
            with use_backend(backend):
                y, h = layer(u)
            assert rel(y, y_ref) < 1e-13, backend
            assert rel(h, x_ref[..., : layer.d_state // 2]) < 1e-13, backend
        k = L // 3 + 1
        y1, h1 = layer(u[:, :k])
        y2, _ = layer(u[:, k:], state=h1)
        assert rel(torch.cat([y1, y2], 1), y_ref) < 1e-13
        ys, _ = run_steps(layer, u)
        assert rel(ys, y_ref) < 1e-13
        ss = layer.state_space()
        A, B, C, D = (torch.tensor(m) for m in (ss.A, ss.B, ss.C, ss.D))
        x = torch.zeros(2, 3, A.shape[-1], dtype=A.dtype)
        ys = []
        for t in range(L):  # x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k]
            ys.append((torch.einsum("hpn,bhn->bhp", C, x)[..., 0] + D[:, 0, 0] * u[:, t]).real)
            x = torch.einsum("hmn,bhn->bhm", A, x) + B[..., 0] * u[:, t, :, None]
        assert rel(torch.stack(ys, 1), y_ref) < 1e-13
        impulse = torch.zeros(1, L, 3, dtype=F64)
        impulse[0, 0] = 1.0
        assert rel(layer.kernel(L), s4_simulate(layer, impulse)[0][0].T) < 1e-13


def test_s4_bidirectional_anticausal_kernel_beyond_l_max():
    torch.manual_seed(0)
    layer = build("s4", d_model=2, d_state=8, l_max=8, init="legt", dt_min=0.05, dt_max=0.2, n_ssm=None,
                  bidirectional=True, dtype=F64)
    with torch.no_grad():
        A_bar, B_bar, C, _ = s4_dense(layer)
        L = 30
        taps = []
        x = B_bar
        for _ in range(L):  # C[1]ᵀ Ā^m B̄, m = 0..L-1
            taps.append((C[1] * x).sum(-1).real)
            x = torch.einsum("hmn,hn->hm", A_bar, x)
        assert rel(layer.kernel(L)[1], torch.stack(taps, -1)) < 1e-12  # measured 3e-14


def test_s4_float32_far_beyond_l_max():
    torch.manual_seed(0)
    l32 = build("s4", d_model=3, d_state=8, l_max=16, init="legt", dt_min=1e-3, dt_max=1e-2, n_ssm=None)
    l64 = build("s4", d_model=3, d_state=8, l_max=16, init="legt", dt_min=1e-3, dt_max=1e-2, n_ssm=None, dtype=F64)
    l64.load_state_dict({k: v.double() for k, v in l32.state_dict().items()})
    u = torch.randn(1, 4096, 3)
    with torch.no_grad():
        y, _ = l32(u)
        y_ref, _ = l64(u.double())
    assert rel(y.double(), y_ref) < 1e-6  # float32 rounding of a kernel formed in float64; measured 6e-8


# ----------------------------------------------------------------------------------------------------------------
# Training at one length, evaluation at others


TRAINED = {
    "s4": dict(d_model=4, d_state=8, l_max=16, init="legt"),
    "liquid_s4": dict(d_model=4, d_state=8, l_max=16),
    "dss": dict(d_model=4, d_state=8, version="softmax", l_max=16),
    "sgconv": dict(d_model=4, l_max=40, kernel_dim=8),
    "hyena": dict(d_model=4, l_max=16, filter_width=8),
    "mega": dict(d_model=4, d_qk=8, chunk_size=8),
    "attention": dict(d_model=4, n_heads=2, window=6),
}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_trained_at_one_length_evaluated_at_others(name):
    torch.manual_seed(0)
    layer = build(name, **TRAINED[name])
    xs = {L: torch.randn(2, L, 4) for L in (10, 16, 40, 100)}
    with torch.no_grad():  # fill every no-grad cache at other lengths first
        for L in (40, 100):
            layer(xs[L])
        run_steps(layer, xs[10][:, :5])
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(3):
        y, _ = layer(xs[16])
        (y ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    fresh = build(name, **TRAINED[name])
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        for L in (10, 40, 100):
            assert torch.equal(layer(xs[L])[0], fresh(xs[L])[0]), L
        assert torch.equal(run_steps(layer, xs[10][:, :5])[0], run_steps(fresh, xs[10][:, :5])[0])


# ----------------------------------------------------------------------------------------------------------------
# SGConv against its documented kernel


def direct_causal(u, K):
    """y_t = Σ_{j < min(t+1, K_len)} K_j u_{t-j}: u (B, L, H), K (H, K_len)."""
    y = torch.zeros_like(u)
    for j in range(min(K.shape[-1], u.shape[1])):
        y[:, j:] += K[:, j] * u[:, : u.shape[1] - j]
    return y


def sgconv_kernel_reference(layer):
    """K̃ / ‖K̃‖₂ (C, H, K_len) from the sub-kernels by F.interpolate (no D)."""
    decay = torch.linspace(layer.decay_min, layer.decay_max, layer.d_model, dtype=F64)
    parts = []
    for i in range(layer.n_scales):
        w = layer.sub_kernels[i].double()  # (C, H, d)
        if i > 1:
            w = F.interpolate(w, scale_factor=2 ** (i - 1), mode="linear")
        parts.append(w * decay[:, None] ** -i)
    K = torch.cat(parts, -1)
    return K / K.norm(dim=-1, keepdim=True)


def assert_every_view(layer, u: torch.Tensor, y_ref: torch.Tensor) -> None:
    """forward on the FFT and reference backends, a chunked continuation from the middle, and the step loop, each
    equal to y_ref (1e-13)."""
    L = u.shape[1]
    for backend in ("fft", "reference"):
        with use_backend(backend):
            assert rel(layer(u)[0], y_ref) < 1e-13, (L, backend)
    k = L // 2 + 1
    y1, h = layer(u[:, :k])
    y2, _ = layer(u[:, k:], state=h)
    assert rel(torch.cat([y1, y2], 1), y_ref) < 1e-13
    assert rel(run_steps(layer, u)[0], y_ref) < 1e-13


@pytest.mark.parametrize("l_max, n_scales", [(40, 4), (65, 5), (5, 1)])
def test_sgconv_matches_its_kernel_at_every_length(l_max, n_scales):
    torch.manual_seed(0)
    layer = build("sgconv", d_model=3, l_max=l_max, kernel_dim=8, decay_min=1.5, decay_max=3.0, dtype=F64)
    assert layer.n_scales == n_scales and layer.kernel_length == 8 * 2 ** (n_scales - 1)
    K = sgconv_kernel_reference(layer)[0]
    K[:, 0] += layer.D.double()
    K_len = layer.kernel_length
    with torch.no_grad():
        for L in (K_len - 1, K_len, K_len + 1, 3 * K_len + 5):
            u = torch.randn(2, L, 3, dtype=F64)
            y_ref = direct_causal(u, K)
            assert_every_view(layer, u, y_ref)
            assert rel(layer.kernel(L), F.pad(K, (0, max(0, L - K_len)))[:, :L]) < 1e-14


def test_sgconv_bidirectional_beyond_its_kernel():
    torch.manual_seed(0)
    layer = build("sgconv", d_model=3, l_max=20, kernel_dim=4, bidirectional=True, dtype=F64)
    K = sgconv_kernel_reference(layer)
    K[0, :, 0] += layer.D.double()
    L = 90  # K_len = 32
    u = torch.randn(2, L, 3, dtype=F64)
    K_L = F.pad(K, (0, L - K.shape[-1]))  # (2, H, L)
    y_ref = direct_causal(u, K_L[0]) + direct_causal(u.flip(1), F.pad(K_L[1], (1, 0))[:, :L]).flip(1)
    with torch.no_grad():
        for backend in ("fft", "reference"):
            with use_backend(backend):
                assert rel(layer(u)[0], y_ref) < 1e-13, backend
        assert rel(layer.kernel(L), K_L) < 1e-14


# ----------------------------------------------------------------------------------------------------------------
# Hyena against its equations


def hyena_reference(layer, u):
    """Hyena's forward from the module docstring's equations, in float64 with loops."""
    H, O, f = layer.d_model, layer.order - 1, layer.filter
    L = u.shape[1]
    n = torch.arange(L, dtype=F64)[:, None]
    t = n / (f.l_max - 1)
    bands = (f.emb_dim - 1) // 2
    freqs = torch.linspace(1e-4, bands - 1, bands, dtype=F64)
    z = torch.cat([t, torch.cos(2 * math.pi * freqs * n / f.l_max), -torch.sin(2 * math.pi * freqs * n / f.l_max)], -1)
    w = f.freq.double()
    a = torch.sin(w * (z @ f.w_in.double().T + f.b_in.double()))
    for k in range(f.n_inner):
        a = torch.sin(w * (a @ f.w_hidden[k].double().T + f.b_hidden[k].double()))
    delta = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, f.channels, dtype=F64)
    delta = delta.reshape(H, O).T.reshape(O * H)  # stage o of channel h: the (h·O + o)-th rate (official order)
    h = ((a @ f.w_out.double().T) * torch.exp(-t * delta.abs())).T.reshape(O, H, L)  # (O, H, L)
    p = u @ layer.in_proj.weight.double().T + layer.in_proj.bias.double()  # (B, L, (O+2)H)
    W = layer.short_conv.weight.double()  # (channels, width)
    q = layer.short_conv.bias.double().expand_as(p).clone()
    for k in range(W.shape[1]):  # y_t = Σ_k w_k x_{t-W+1+k}
        lag = W.shape[1] - 1 - k
        q[:, lag:] += W[:, k] * p[:, : L - lag]
    *gates, v = q.split(H, -1)
    for o in range(O):
        zo = gates[layer.order - 1 - o] * v
        v = direct_causal(zo, h[o]) + layer.filter_bias[o].double() * zo
    return (gates[0] * v) @ layer.out_proj.weight.double().T + layer.out_proj.bias.double()


@pytest.mark.parametrize("order, l_max", [(2, 16), (3, 10)])
def test_hyena_matches_its_equations_beyond_l_max(order, l_max):
    torch.manual_seed(0)
    layer = build("hyena", d_model=3, l_max=l_max, order=order, filter_width=8, sine_freq=3.0, dtype=F64)
    with torch.no_grad():
        assert torch.equal(layer.filters(7), layer.filters(300)[..., :7])  # no dependence on the length asked for
        for L in (5, l_max, l_max + 1, 5 * l_max):
            u = torch.randn(2, L, 3, dtype=F64)
            y_ref = hyena_reference(layer, u)
            assert_every_view(layer, u, y_ref)


# ----------------------------------------------------------------------------------------------------------------
# Mega against eq. 6-15


def mega_reference(layer, x):
    """Mega's eq. 6-15 with the attention written per query (causal within chunks of ``chunk_size``)."""
    H, Z, V = layer.d_model, layer.d_qk, layer.d_v
    with use_backend("reference"):
        e = layer.ema(x)[0]
    mx = F.silu(e)
    value = F.silu(x @ layer.W_v.double().T + layer.b_v.double())
    proj = mx @ layer.W_mx.double().T + layer.b_mx.double()
    phi, zr, hx = torch.sigmoid(proj[..., :H]), F.silu(proj[..., H:H + Z + V]), proj[..., H + Z + V:]
    z, reset = zr[..., :Z], zr[..., Z:]
    q = z * layer.kappa[0].double() + layer.mu[0].double()
    k = z * layer.kappa[1].double() + layer.mu[1].double()
    L = x.shape[1]
    T = layer.chunk_size or L
    half = Z // 2
    omega = 10000.0 ** (-torch.arange(half, dtype=F64) / half)

    def rot(a, p):
        c, s = torch.cos(p * omega), torch.sin(p * omega)
        return torch.cat([a[:half] * c - a[half:] * s, a[half:] * c + a[:half] * s])

    O = torch.zeros(x.shape[0], L, V, dtype=F64)
    for i in range(L):
        c0 = (i // T) * T
        js = list(range(c0, i + 1))
        scores = torch.stack([(q[:, i] * k[:, j]).sum(-1) for j in js], -1)  # (B, n)
        if layer.positional == "simple":
            bias = torch.stack([layer.rel_bias.double()[layer.span - 1 - (i - j)] for j in js])
        else:
            a, b = layer.rel_bias.double()
            bias = torch.stack([rot(a, i - c0) @ rot(b, j - c0) for j in js])
        if layer.attention == "softmax":
            weights = torch.softmax(scores / math.sqrt(Z) + bias, -1)
        else:
            weights = laplace(scores / len(js) + bias)
        O[:, i] = torch.einsum("bn,bnv->bv", weights, value[:, js])
    H_hat = F.silu(hx + (O * reset) @ layer.U_h.double().T + layer.b_h.double())
    return phi * (H_hat - x)


@pytest.mark.parametrize("attention", ["softmax", "laplace"])
@pytest.mark.parametrize("positional", ["simple", "rotary"])
@pytest.mark.parametrize("chunk_size", [6, None])
def test_mega_matches_its_equations_across_chunks(attention, positional, chunk_size):
    torch.manual_seed(0)
    layer = build("mega", d_model=3, d_state=4, d_qk=4, d_v=5, attention=attention, chunk_size=chunk_size,
                  positional=positional, max_positions=64, dtype=F64)
    with torch.no_grad():  # away from the near-zero init so that the attention matters
        for p in (layer.kappa, layer.mu, layer.rel_bias, layer.W_mx, layer.W_v):
            p.normal_()
        for L in (4, 6, 7, 29):
            x = torch.randn(2, L, 3, dtype=F64)
            y_ref = mega_reference(layer, x)
            assert rel(layer(x)[0], y_ref) < 1e-13, L
            k = L // 2 + 1
            y1, h = layer(x[:, :k])
            y2, _ = layer(x[:, k:], state=h)
            assert rel(torch.cat([y1, y2], 1), y_ref) < 1e-13, L
            assert rel(run_steps(layer, x)[0], y_ref) < 1e-13, L


def test_mega_simple_bias_refuses_spans_beyond_max_positions():
    layer = build("mega", d_model=3, d_state=4, d_qk=4, chunk_size=None, max_positions=8, dtype=F64)
    with torch.no_grad():
        layer(torch.randn(1, 8, 3, dtype=F64))
        with pytest.raises(ValueError, match="at most 8 positions.*span of 9"):
            layer(torch.randn(1, 9, 3, dtype=F64))
        _, h = layer(torch.randn(1, 8, 3, dtype=F64))
        with pytest.raises(ValueError, match="at most 8 positions.*span of 9"):
            layer.step(torch.randn(1, 3, dtype=F64), h)


# ----------------------------------------------------------------------------------------------------------------
# Kernels do not depend on the length asked for


@pytest.mark.parametrize("name, options", [
    ("s4", dict(d_state=8, l_max=16, init="legt")),
    ("dss", dict(d_state=8, version="softmax", l_max=16)),
    ("sgconv", dict(l_max=16, kernel_dim=4)),
])
def test_kernel_prefix_does_not_depend_on_l(name, options):
    torch.manual_seed(0)
    layer = build(name, d_model=3, dtype=F64, **options)
    with torch.no_grad():
        long = layer.kernel(100)
        for L in (5, 16, 17, 33):
            assert rel(layer.kernel(L), long[:, :L]) < 1e-13, L
