"""Mega's EMA (arXiv 2209.10655 eq. 2-3) sampled at gaps from 1e-7 to 1e5 periods: forward, step and every gradient
against an mpmath closed form, to a relative error bound per entry.

The layer's stated irregular recurrence (ssmkit.layers.ema's docstring): a gap of τ periods gives
h_t = q^τ h_{t-1} + (1 − q^τ) (β/δ) u_t, q = 1 − αδ, y_t = Σ_n (γ_n/√N) h_{t,n} + ω u_t. The oracle evaluates it in
mpmath (no exponent range limit: q^τ of 1e-90 or 1e-300 is a number, not 0) with its derivatives in closed form (the
adjoint λ_t = ∂ℓ/∂h_t of ℓ = Σ w_y y, and the chain rule to q, β/δ, τ, α's and δ's logits), itself checked against
mpmath's numerical derivative. At long gaps the gradients of α's logit and of the gaps are of the order q^τ (1e-87 at
τ = 1e3): a result of round-off size (1e-15, what the layer returned when it sampled the modes through the bank's
B/Λ with B ∝ z = log q, or 0, what expm1's derivative (e^x − 1) + 1 gives there) fails the relative bound.
"""

from __future__ import annotations

import functools

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from tests.conftest import DEVICE

mpmath = pytest.importorskip("mpmath")

Bsz, L, H, N = 2, 6, 2, 3
GAPS = {  # (B, L) gaps per profile
    "short": [[1e-7, 1e-5, 1e-3, 0.1, 1e-7, 0.5], [1e-3, 1e-7, 0.2, 1e-6, 1.0, 1e-4]],
    "long": [[1e3, 3e2, 1e4, 1e3, 1e5, 2e3], [5e2, 1e5, 1e3, 3e4, 1e3, 1e3]],
    "mixed": [[1e-7, 1e5, 1.0, 1e3, 1e-3, 3e2], [1e3, 1.0, 1e-7, 1e4, 30.0, 1e3]],
}
NAMES = ("logit_alpha", "logit_delta", "beta", "gamma", "D")
RTOL = {torch.float64: 1e-12, torch.float32: 1e-4}  # the worst measured: 5e-14 and 4e-6


def _inputs(dtype: torch.dtype, profile: str) -> dict[str, torch.Tensor]:
    """Parameters, input, gaps, initial state and output weights, drawn in double and rounded to ``dtype``. α's logits
    from −25 to 3 give z = log q from about −1e-11 to −2: every gap from 1e-7 to 1e5 meets modes it barely moves and
    modes it empties (q^τ from 1 − 1e-18 to 1e-40 and 0)."""
    g = torch.Generator().manual_seed(7)
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    out = {
        "logit_alpha": torch.linspace(-25.0, 3.0, H * N, dtype=torch.float64)[torch.randperm(H * N, generator=g)]
        .reshape(1, H, N),
        "logit_delta": draw(1, H, N),
        "beta": (1.0 - 2.0 * (torch.arange(N) % 2)).double() + 0.3 * draw(1, H, N),
        "gamma": draw(1, H, N),
        "D": draw(H),
        "u": draw(Bsz, L, H),
        "tau": torch.tensor(GAPS[profile], dtype=torch.float64),
        "h0": draw(Bsz, H, N),
        "w_y": draw(Bsz, L, H),
        "w_h": draw(Bsz, H, N),
    }
    return {k: v.to(dtype) for k, v in out.items()}


def _mp(t: torch.Tensor):
    """A tensor's entries as nested lists of mpf (exact: every double is an mpf)."""
    return [_mp(r) for r in t] if t.dim() else mpmath.mpf(float(t))


def _loss_and_grads(x: dict[str, object]) -> dict[str, object]:
    """y (B, L, H), h_{L-1} (B, H, N) and the gradients of ℓ = Σ w_y y + Σ w_h h_{L-1} in mpmath (module docstring),
    as nested lists of mpf, from the case's entries as nested lists of mpf (:func:`_mp`)."""
    la, ld, be, ga = (x[k][0] for k in NAMES[:4])
    D, u, tau, h0, w_y, w_h = (x[k] for k in ("D", "u", "tau", "h0", "w_y", "w_h"))
    sq = mpmath.sqrt(N)
    zero = lambda *shape: [zero(*shape[1:]) for _ in range(shape[0])] if shape else mpmath.mpf(0)  # noqa: E731
    y, hL, g_u, g_tau, g_h0 = zero(Bsz, L, H), zero(Bsz, H, N), zero(Bsz, L, H), zero(Bsz, L), zero(Bsz, H, N)
    g_q, g_V, g_ga = zero(H, N), zero(H, N), zero(H, N)
    al = [[1 / (1 + mpmath.exp(-v)) for v in r] for r in la]
    de = [[1 / (1 + mpmath.exp(-v)) for v in r] for r in ld]
    for b in range(Bsz):
        for c in range(H):
            for n in range(N):
                q, V, C = 1 - al[c][n] * de[c][n], be[c][n] / de[c][n], ga[c][n] / sq
                P = [q ** tau[b][t] for t in range(L)]
                h = [h0[b][c][n]]
                for t in range(L):
                    h.append(P[t] * h[-1] + (1 - P[t]) * V * u[b][t][c])
                    y[b][t][c] += C * h[-1]
                    g_ga[c][n] += w_y[b][t][c] * h[-1] / sq
                hL[b][c][n] = h[-1]
                lam = w_h[b][c][n]  # λ_{L-1} before its read-out term
                for t in reversed(range(L)):
                    lam += w_y[b][t][c] * C  # λ_t = w_y C + P_{t+1} λ_{t+1}
                    g_P = lam * (h[t] - V * u[b][t][c])  # ∂ℓ/∂P_t
                    g_q[c][n] += g_P * tau[b][t] * P[t] / q
                    g_V[c][n] += lam * (1 - P[t]) * u[b][t][c]
                    g_u[b][t][c] += lam * (1 - P[t]) * V
                    g_tau[b][t] += g_P * P[t] * mpmath.log(q)
                    lam *= P[t]
                g_h0[b][c][n] = lam
        for t in range(L):
            for c in range(H):
                y[b][t][c] += D[c] * u[b][t][c]
                g_u[b][t][c] += D[c] * w_y[b][t][c]
    g_D = [sum(w_y[b][t][c] * u[b][t][c] for b in range(Bsz) for t in range(L)) for c in range(H)]
    g_la = [[-g_q[c][n] * de[c][n] * al[c][n] * (1 - al[c][n]) for n in range(N)] for c in range(H)]
    g_ld = [[-g_q[c][n] * al[c][n] * de[c][n] * (1 - de[c][n]) - g_V[c][n] * be[c][n] * (1 - de[c][n]) / de[c][n]
             for n in range(N)] for c in range(H)]
    g_be = [[g_V[c][n] / de[c][n] for n in range(N)] for c in range(H)]
    loss = sum(w_y[b][t][c] * y[b][t][c] for b in range(Bsz) for t in range(L) for c in range(H))
    loss += sum(w_h[b][c][n] * hL[b][c][n] for b in range(Bsz) for c in range(H) for n in range(N))
    return {"loss": loss, "y": y, "state": hL, "logit_alpha": g_la, "logit_delta": g_ld, "beta": g_be,
            "gamma": g_ga, "D": g_D, "u": g_u, "tau": g_tau, "h0": g_h0}


@functools.lru_cache(maxsize=None)
def _oracle(dtype: torch.dtype, profile: str) -> dict[str, torch.Tensor]:
    """The mpmath results for one case as float64 tensors (entries below 1e-308 become 0 or subnormal)."""
    with mpmath.workdps(30):
        ref = _loss_and_grads({k: _mp(v) for k, v in _inputs(dtype, profile).items()})
    return {k: torch.tensor(_floats(v), dtype=torch.float64) for k, v in ref.items() if k != "loss"}


def _floats(v):
    return [_floats(r) for r in v] if isinstance(v, list) else float(v)


def _run(dtype: torch.dtype, profile: str, backend: str) -> dict[str, torch.Tensor]:
    """The layer's y, final state and gradients of ℓ on one case: ``forward(intervals=)`` under ``backend``, or a
    ``step(interval=)`` loop (``backend == "step"``)."""
    x = {k: v.to(DEVICE) for k, v in _inputs(dtype, profile).items()}
    layer = layers.build("ema", d_model=H, d_state=N, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        for k in NAMES:
            getattr(layer, k).copy_(x[k])
    u, tau, h0 = (x[k].clone().requires_grad_(True) for k in ("u", "tau", "h0"))
    if backend == "step":
        ys, h = [], h0
        for t in range(L):
            y_t, h = layer.step(u[:, t], h, interval=tau[:, t])
            ys.append(y_t)
        y = torch.stack(ys, dim=1)
    else:
        with ops.use_backend(backend):
            y, h = layer(u, h0, intervals=tau)
    ((y * x["w_y"]).sum() + (h * x["w_h"]).sum()).backward()
    got = {"y": y, "state": h, "u": u.grad, "tau": tau.grad, "h0": h0.grad}
    got.update({k: getattr(layer, k).grad[0] if k != "D" else layer.D.grad for k in NAMES})
    return {k: v.detach().cpu() for k, v in got.items()}


def _worst(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> float:
    """max |got − want| / (|want| + the dtype's smallest normal): a relative error, where an entry below the dtype's
    range must come out (about) 0."""
    return ((got.double() - want).abs() / (want.abs() + torch.finfo(dtype).tiny)).max().item()


def test_the_oracles_derivatives_are_mpmaths_numerical_ones():
    """The closed-form gradients of the oracle agree with mpmath's numerical derivative of its own loss (gaps from 0.5
    to 3, where every derivative is of the loss's size and a numerical derivative resolves it): one entry of each."""
    x = {k: _mp(v) for k, v in _inputs(torch.float64, "short").items()}
    x["tau"] = [[mpmath.mpf(v) for v in row] for row in ([0.5, 2.0, 1.0, 3.0, 0.7, 1.5], [1.0, 2.5, 0.6, 1.2, 2.0, 1.0])]
    with mpmath.workdps(30):
        ref = _loss_and_grads(x)
        for name, index in (("logit_alpha", (0, 1, 2)), ("logit_delta", (0, 0, 1)), ("beta", (0, 1, 0)),
                            ("gamma", (0, 0, 2)), ("D", (1,)), ("u", (1, 3, 0)), ("tau", (0, 2)), ("h0", (1, 1, 2))):
            *outer, last = index
            row = functools.reduce(lambda r, i: r[i], outer, x[name])  # the list that holds the entry
            v0 = row[last]

            def loss(v, row=row, last=last, v0=v0):
                row[last] = v
                try:
                    return _loss_and_grads(x)["loss"]
                finally:
                    row[last] = v0

            closed = functools.reduce(lambda r, i: r[i], index[1:] if name in NAMES[:4] else index, ref[name])
            numeric = mpmath.diff(loss, v0)
            assert abs(numeric - closed) <= mpmath.mpf(10) ** -20 * (1 + abs(closed)), (name, numeric, closed)


@pytest.mark.parametrize("profile", list(GAPS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", ["reference", "chunked", "native", "step"])
def test_forward_step_and_gradients_against_mpmath(backend, dtype, profile):
    """y, the final state and the gradients of α's and δ's logits, β, γ, ω, the input, the gaps and the initial
    state, each entry to RTOL of the mpmath oracle's (module docstring), on the loop, the chunks, the C kernel (where
    it runs: else the chunks) and the step loop; the gaps from 1e-7 to 1e5."""
    got, want = _run(dtype, profile, backend), _oracle(dtype, profile)
    errors = {k: _worst(got[k], want[k], dtype) for k in want}
    assert max(errors.values()) < RTOL[dtype], errors


def test_long_gaps_leave_gradients_of_the_order_of_q_to_the_tau():
    """The case of the defect, by itself: every gap 1e3, α = δ = ½ (q = ¾): the gradients of α's logit and of the
    gaps are ∝ q^τ = 3e-125 (float64), and the layer's match mpmath's to 1e-11 instead of being 1e-16-sized noise."""
    layer = layers.build("ema", d_model=1, d_state=1, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        for p, v in ((layer.logit_alpha, 0.0), (layer.logit_delta, 0.0), (layer.beta, 1.0), (layer.gamma, 1.0),
                     (layer.D, 0.0)):
            p.fill_(v)
    u = torch.tensor([[[1.0], [-2.0]]], dtype=torch.float64, device=DEVICE)
    tau = torch.full((1, 2), 1e3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    for backend in ("reference", "chunked", "native"):
        layer.zero_grad()
        tau.grad = None
        with ops.use_backend(backend):
            layer(u, intervals=tau)[0].sum().backward()
        # ℓ = y_0 + y_1, h_t = P h_{t-1} + (1 − P) 2 u_t, P = q^1000: ∂ℓ/∂P_1 = h_0 − 2 u_1 = 2(1 − P) + 4 and
        # ∂ℓ/∂P_0 = (1 + P)(0 − 2), so ∂ℓ/∂τ_t = ∂ℓ/∂P_t P log q and ∂ℓ/∂q = Σ ∂ℓ/∂P_t 1000 P/q; ∂q/∂a = −δα(1−α)
        with mpmath.workdps(30):
            q = mpmath.mpf(3) / 4
            P = q ** 1000
            g1, g0 = 2 * (1 - P) + 4, (1 + P) * -2
            want_tau = [float(g0 * P * mpmath.log(q)), float(g1 * P * mpmath.log(q))]
            want_a = float((g0 + g1) * 1000 * P / q * -(mpmath.mpf(1) / 8))
        assert abs(layer.logit_alpha.grad.item() - want_a) < 1e-11 * abs(want_a), (backend, layer.logit_alpha.grad)
        for t in range(2):
            assert abs(tau.grad[0, t].item() - want_tau[t]) < 1e-11 * abs(want_tau[t]), (backend, tau.grad)


def test_a_mode_at_q_one_samples_without_nan():
    """α's logit at −800 makes q = 1 − αδ round to 1 (z = 0): the sampled mode keeps its state and takes no input
    (B̄ = (q^τ − 1) β/δ = 0), where the bank's B̄ = (e^{τz} − 1) B/Λ with B = z w was 0/0."""
    layer = layers.build("ema", d_model=1, d_state=2, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        layer.logit_alpha[0, 0, 0] = -800.0
    u = torch.ones(1, 3, 1, dtype=torch.float64, device=DEVICE)
    tau = torch.tensor([[1.0, 1e3, 0.5]], dtype=torch.float64, device=DEVICE)
    h0 = torch.ones(1, 1, 2, dtype=torch.float64, device=DEVICE)
    for backend in ("reference", "chunked", "native"):
        with ops.use_backend(backend):
            y, h = layer(u, h0, intervals=tau)
        assert torch.isfinite(y).all() and h[0, 0, 0].item() == 1.0, backend


def test_log_q_and_its_derivatives_against_mpmath():
    """z = log(1 − σ(a)σ(d)) (ssmkit.layers.ema.log_q) and ∂z/∂a, ∂z/∂d = −σ'(a)σ(d)/q, −σ(a)σ'(d)/q, over logits
    from −300 to 300 (q from 1 − 1e-130 to 1e-130): each to (8 + |a| + |d|) ulps, the spread a perturbation of the
    logits by an ulp makes (at a = −30 the difference form of log q returned 5e-14 for −5e-14; autograd's σ(1 − σ)
    loses 1 − α where α → 1)."""
    from ssmkit.layers.ema import log_q

    grid = [-300.0, -30.0, -5.0, -0.7, 0.0, 0.7, 5.0, 30.0, 300.0]
    a = torch.tensor([[v] * len(grid) for v in grid], dtype=torch.float64, requires_grad=True)
    d = torch.tensor([grid] * len(grid), dtype=torch.float64, requires_grad=True)
    z = log_q(a, d)
    g_a, g_d = torch.autograd.grad(z.sum(), (a, d))
    eps = torch.finfo(torch.float64).eps
    with mpmath.workdps(400):
        for i, av in enumerate(grid):
            for j, dv in enumerate(grid):
                sa, sd = 1 / (1 + mpmath.exp(-av)), 1 / (1 + mpmath.exp(-dv))
                q = 1 - sa * sd
                for got, want in ((z[i, j], mpmath.log(q)), (g_a[i, j], -sa * (1 - sa) * sd / q),
                                  (g_d[i, j], -sd * (1 - sd) * sa / q)):
                    assert abs(got.item() - want) <= (8 + abs(av) + abs(dv)) * eps * abs(want), (av, dv, got, want)


@pytest.mark.parametrize("backend", ["native", "chunked"])
def test_gradients_taken_with_create_graph_at_long_gaps(backend):
    """create_graph=True (the C kernel's backward then runs its PyTorch path, ssmkit.ops.native.irregular_bank): the
    gradients of α's logit and of the gaps still match mpmath's at gaps of 3e2 to 1e5 (they came back 100 % off through
    that path's B = w z), and the second derivative they carry is the chunked path's."""
    dtype, profile = torch.float64, "long"
    x, want = {k: v.to(DEVICE) for k, v in _inputs(dtype, profile).items()}, _oracle(dtype, profile)
    out = []
    for name in (backend, "chunked"):
        layer = layers.build("ema", d_model=H, d_state=N, device=DEVICE, dtype=dtype)
        with torch.no_grad():
            for k in NAMES:
                getattr(layer, k).copy_(x[k])
        tau = x["tau"].clone().requires_grad_(True)
        with ops.use_backend(name):
            y, h = layer(x["u"], x["h0"], intervals=tau)
        loss = (y * x["w_y"]).sum() + (h * x["w_h"]).sum()
        g_a, g_tau = torch.autograd.grad(loss, (layer.logit_alpha, tau), create_graph=True)
        assert _worst(g_a[0].detach().cpu(), want["logit_alpha"], dtype) < RTOL[dtype], name
        assert _worst(g_tau.detach().cpu(), want["tau"], dtype) < RTOL[dtype], name
        out.append(torch.autograd.grad((g_a * x["w_h"][0, :, :]).sum() + g_tau.sum(), layer.logit_delta)[0])
    assert _worst(out[0].cpu(), out[1].cpu().double(), dtype) < 1e-9
