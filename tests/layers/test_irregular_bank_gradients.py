"""S4D (ZOH, bilinear), DSS (exp, softmax) and DLR sampled at gaps from 1e-7 to 1e5 periods (the bank of
ssmkit.ops.irregular_bank): forward, gradients (plain and under ``create_graph=True``) and Hessian-vector products
w.r.t. every parameter, the input, the gaps and the initial state, on every backend and the step loop, against an
independent oracle.

The oracle evaluates each layer's documented irregular recurrence (the layers' module docstrings) in mpmath from the
parameters up, x_t = Ā(τ_t) x_{t-1} + B̄(τ_t) u_t, y_t = Re(Σ C x_t) + D u_t with
    S4D:  Λ = −e^a + i b, Δ = e^{log Δ}; ZOH Ā = e^{ΔτΛ}, B̄ = (Ā − 1) B/Λ; bilinear Ā = (1 + ΔτΛ/2)/(1 − ΔτΛ/2),
          B̄ = Δτ B/(1 − ΔτΛ/2); C = 2 C
    DSS:  z = Δ_re Re λ + i Δ_im Im λ, Ā = e^{τz}, B̄ = (e^{τz} − 1)/(e^z − 1); C = W (e^z − 1)/λ (exp) or
          W (e^z − 1) conj(x)/(|x|² + 1e-7), x = λ (e^{L z} − 1) (softmax)
    DLR:  z = −a² + i b, Ā = e^{τz}, B̄ = (e^{τz} − 1)/(e^z − 1); C = W
in hyper-dual numbers (value + ε1 b + ε2 c + ε1ε2 d, ε1² = ε2² = 0): one pass along e_i (ε1) and the direction v (ε2)
gives ∂ℓ/∂θ_i and (H v)_i exactly (no step size, no cancellation; mpmath has no exponent range, so e^{−1e5} is a
number); the last test checks it against central differences of ℓ at 60 digits.

Found with it: the C kernel's double backward (``create_graph``) ran the bank's PyTorch path on B = w z, whose B/Λ
returned ∂z as two terms of size |w ∂w/z| cancelling to ~1e-16 absolute: gradients of Δ and Λ that are 1e-26 at long
gaps read 1e-16 (S4D's ∂log Δ under create_graph 6e59 relative off here in float64, 3e3 at the default init); and a
float32 S4D formed Δ = e^{log Δ} and Λ in single precision (the phase Δτ Im Λ off by |Δτ Im Λ|·6e-8: gradients 4.6e-3
and H v 2e-2 relative off here).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from tests.conftest import DEVICE

mpmath = pytest.importorskip("mpmath")

L, H, N = 6, 2, 3  # N complex modes (d_state 2N); one sequence
GAPS = {"mixed": [1e-7, 1e5, 1.0, 1e3, 1e-3, 3e2], "long": [1e3, 3e2, 1e4, 1e3, 1e5, 2e3]}
CASES = {
    "s4d_zoh": ("s4d", {"discretization": "zoh"}), "s4d_bilinear": ("s4d", {"discretization": "bilinear"}),
    "dss_exp": ("dss", {"version": "exp"}), "dss_softmax": ("dss", {"version": "softmax", "l_max": 8}),
    "dlr": ("dlr", {}),
}
# Modes from barely moved to emptied at every gap: S4D's and DSS's channel 1 and DLR's third mode decay by e^{-40} or
# more over each long gap (their gradients there are 1e-17 and far below), near-real slow modes (|z| ~ 1e-2) make
# |w/z| large.
PARAMS = {
    "s4d": {"log_dt": [-3.0, -1.0], "log_A_real": [[-8.0, -1.0, 1.5], [1.0, 2.0, 0.5]],
            "A_imag": [[10.0, 1e-3, 30.0], [1e-2, 5.0, 100.0]]},
    "dss": {"log_dt": [[-3.0, -4.0], [3.0, -1.0]], "log_A_real": [-5.0, -0.69, 1.0], "A_real": [-6.7e-3, -0.5, -2.7],
            "A_imag": [0.5, 1e-3, 30.0]},
    "dlr": {"A_sqrt_neg_real": [1e-4, 0.1, 1.2], "A_imag": [0.3, 0.0, -2.5]},
}
RTOL = {torch.float64: 1e-8, torch.float32: 1e-3}  # measured: 5e-10 and 1.3e-4
# The C kernel's exponential stops at e^{-700} (its lanes' range): what is below 1e-300 may come out as 1e-304, not 0.
FLOOR = {torch.float64: 1e-290, torch.float32: torch.finfo(torch.float32).tiny}


class HD:
    """A hyper-dual number over mpmath: a + ε1 b + ε2 c + ε1ε2 d (ε1² = ε2² = 0)."""

    __slots__ = ("a", "b", "c", "d")

    def __init__(self, a, b=0, c=0, d=0):
        self.a, self.b, self.c, self.d = a, b, c, d

    @staticmethod
    def of(x):
        return x if isinstance(x, HD) else HD(x)

    def __add__(self, o):
        o = HD.of(o)
        return HD(self.a + o.a, self.b + o.b, self.c + o.c, self.d + o.d)

    __radd__ = __add__

    def __neg__(self):
        return HD(-self.a, -self.b, -self.c, -self.d)

    def __sub__(self, o):
        return self + -HD.of(o)

    def __rsub__(self, o):
        return HD.of(o) + -self

    def __mul__(self, o):
        o = HD.of(o)
        return HD(self.a * o.a, self.a * o.b + self.b * o.a, self.a * o.c + self.c * o.a,
                  self.a * o.d + self.b * o.c + self.c * o.b + self.d * o.a)

    __rmul__ = __mul__

    def _apply(self, f0, f1, f2):  # f(self) from f, f', f'' at the value
        return HD(f0, f1 * self.b, f1 * self.c, f1 * self.d + f2 * self.b * self.c)

    def __truediv__(self, o):
        return self * HD.of(o).recip()

    def __rtruediv__(self, o):
        return HD.of(o) * self.recip()

    def recip(self):
        r = 1 / self.a
        return self._apply(r, -r * r, 2 * r * r * r)

    def exp(self):
        e = mpmath.exp(self.a)
        return self._apply(e, e, e)

    def conj(self):
        return HD(*(mpmath.conj(v) for v in (self.a, self.b, self.c, self.d)))

    @property
    def real(self):
        return HD(*(mpmath.re(v) for v in (self.a, self.b, self.c, self.d)))

    @property
    def imag(self):
        return HD(*(mpmath.im(v) for v in (self.a, self.b, self.c, self.d)))


def _modes(case: str, P: dict):
    """[(Ā(τ), B̄(τ), C) per channel and mode] of the case's documented recurrence (module docstring)."""
    name, opts = CASES[case]
    j = mpmath.mpc(0, 1)
    cplx = lambda pair: pair[0] + j * pair[1]  # noqa: E731
    out = []
    for c in range(H):
        for n in range(N):
            if name == "s4d":
                dt, lam = P["log_dt"][c].exp(), -P["log_A_real"][c][n].exp() + P["A_imag"][c][n] * j
                Bv, C = cplx(P["B"][c][n]), 2 * cplx(P["C"][0][c][n])
                if opts["discretization"] == "zoh":
                    A = lambda t, dt=dt, lam=lam: (dt * t * lam).exp()  # noqa: E731
                    Bb = lambda t, dt=dt, lam=lam, Bv=Bv: ((dt * t * lam).exp() - 1) / lam * Bv  # noqa: E731
                else:
                    A = lambda t, dt=dt, lam=lam: (1 + dt * t * lam / 2) / (1 - dt * t * lam / 2)  # noqa: E731
                    Bb = lambda t, dt=dt, lam=lam, Bv=Bv: dt * t * Bv / (1 - dt * t * lam / 2)  # noqa: E731
            else:
                if name == "dss":
                    re = -P["log_A_real"][n].exp() if opts["version"] == "exp" else P["A_real"][n]
                    lam = re + P["A_imag"][n] * j
                    z = P["log_dt"][c][0].exp() * re + P["log_dt"][c][1].exp() * P["A_imag"][n] * j
                    em1 = z.exp() - 1
                    if opts["version"] == "exp":
                        C = cplx(P["W"][0][c][n]) * em1 / lam
                    else:
                        x = lam * ((opts["l_max"] * z).exp() - 1)
                        C = cplx(P["W"][0][c][n]) * em1 * x.conj() / ((x * x.conj()).real + mpmath.mpf("1e-7"))
                else:  # DLR: b within (−π, π], its own principal angle
                    z = -P["A_sqrt_neg_real"][n] * P["A_sqrt_neg_real"][n] + P["A_imag"][n] * j
                    em1, C = z.exp() - 1, cplx(P["W"][0][c][n])
                A = lambda t, z=z: (t * z).exp()  # noqa: E731
                Bb = lambda t, z=z, em1=em1: ((t * z).exp() - 1) / em1  # noqa: E731
            out.append((c, n, A, Bb, C))
    return out


def _loss(case: str, P: dict):
    """ℓ = Σ w_y y + Σ w_h (Re, Im) x_{L-1}, and y, x_{L-1} (nested lists), from P's hyper-dual entries."""
    j = mpmath.mpc(0, 1)
    u, tau = P["u"][0], P["tau"][0]
    y = [[P["D"][c] * u[t][c] for c in range(H)] for t in range(L)]
    xL = [[None] * N for _ in range(H)]
    for c, n, A, Bb, C in _modes(case, P):
        x = P["x0"][0][c][n][0] + j * P["x0"][0][c][n][1]
        for t in range(L):
            x = A(tau[t]) * x + Bb(tau[t]) * u[t][c]
            y[t][c] = y[t][c] + (C * x).real
        xL[c][n] = x
    loss = sum(P["w_y"][0][t][c] * y[t][c] for t in range(L) for c in range(H))
    loss = loss + sum(P["w_h"][0][c][n][0] * xL[c][n].real + P["w_h"][0][c][n][1] * xL[c][n].imag
                      for c in range(H) for n in range(N))
    return loss, y, xL


def _case(case: str, dtype: torch.dtype, profile: str):
    """The layer with the case's parameters, and the inputs, weights and direction v (float64 draws rounded to
    ``dtype``, on the CPU)."""
    name, opts = CASES[case]
    g = torch.Generator().manual_seed(5)
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    layer = layers.build(name, d_model=H, d_state=2 * N, dtype=dtype, **opts)
    with torch.no_grad():
        for k, p in layer.named_parameters():
            fixed = PARAMS[name].get(k)
            p.copy_(torch.tensor(fixed, dtype=torch.float64) if fixed is not None else draw(*p.shape))
    data = {"u": draw(1, L, H), "tau": torch.tensor([GAPS[profile]], dtype=torch.float64), "x0": draw(1, H, N, 2),
            "w_y": draw(1, L, H), "w_h": draw(1, H, N, 2)}
    v = {k: draw(*p.shape) for k, p in layer.named_parameters()}
    v.update(u=draw(1, L, H), tau=data["tau"] * draw(1, L) * 1e-3, x0=draw(1, H, N, 2))
    return layer, {k: t.to(dtype) for k, t in data.items()}, {k: t.to(dtype) for k, t in v.items()}


def _nested(t: torch.Tensor, v: torch.Tensor | None = None):
    """A tensor as nested lists of HD(value, 0, direction) (exact: every double is an mpf)."""
    if t.dim():
        return [_nested(a, None if v is None else b) for a, b in zip(t, t if v is None else v)]
    return HD(mpmath.mpf(float(t)), 0, 0 if v is None else mpmath.mpf(float(v)))


def _entries(x):
    return [e for r in x for e in _entries(r)] if isinstance(x, list) else [x]


@functools.lru_cache(maxsize=None)
def _oracle(case: str, dtype: torch.dtype, profile: str) -> dict[str, torch.Tensor]:
    """y, x_{L-1}, the gradients ("g_" + name) and H v ("h_" + name) in mpmath, as float64 tensors."""
    layer, data, v = _case(case, dtype, profile)
    tensors = {**{k: p.detach() for k, p in layer.named_parameters()}, **data}
    keys = [k for k in tensors if k not in ("w_y", "w_h")]
    out = {}
    with mpmath.workdps(40):
        P = {k: _nested(t.double(), v[k].double() if k in v else None) for k, t in tensors.items()}
        _, y, xL = _loss(case, P)
        out["y"] = torch.tensor([[float(e.a) for e in r] for r in y], dtype=torch.float64)[None]
        out["state"] = torch.tensor([[[float(mpmath.re(e.a)), float(mpmath.im(e.a))] for e in r] for r in xL],
                                    dtype=torch.float64)[None]
        for k in keys:
            grad, hvp = [], []
            for e in _entries(P[k]):
                e.b = 1
                loss, _, _ = _loss(case, P)
                e.b = 0
                grad.append(float(mpmath.re(loss.b)))
                hvp.append(float(mpmath.re(loss.d)))
            out["g_" + k] = torch.tensor(grad, dtype=torch.float64).reshape(tensors[k].shape)
            out["h_" + k] = torch.tensor(hvp, dtype=torch.float64).reshape(tensors[k].shape)
    return out


def _run(case: str, dtype: torch.dtype, profile: str, backend: str, create_graph: bool) -> dict[str, torch.Tensor]:
    """The layer's y, final state, gradients of ℓ and (under ``create_graph``) H v by ``forward(intervals=)`` under
    ``backend``, or a ``step(interval=)`` loop (``backend == "step"``)."""
    layer, data, v = _case(case, dtype, profile)
    layer = layer.to(DEVICE)
    data = {k: t.to(DEVICE) for k, t in data.items()}
    u, tau = data["u"].clone().requires_grad_(True), data["tau"].clone().requires_grad_(True)
    x0 = torch.view_as_complex(data["x0"].clone()).requires_grad_(True)
    if backend == "step":
        ys, h = [], x0
        for t in range(L):
            y_t, h = layer.step(u[:, t], h, interval=tau[:, t])
            ys.append(y_t)
        y = torch.stack(ys, dim=1)
    else:
        with ops.use_backend(backend):
            y, h = layer(u, x0, intervals=tau)
    loss = (y * data["w_y"]).sum() + (torch.view_as_real(h) * data["w_h"]).sum()
    inputs = {**dict(layer.named_parameters()), "u": u, "tau": tau, "x0": x0}
    grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=create_graph)
    as_real = lambda t: torch.view_as_real(t) if t.is_complex() else t  # noqa: E731
    out = {"y": y, "state": torch.view_as_real(h)}
    out.update({"g_" + k: as_real(g) for k, g in zip(inputs, grads)})
    if create_graph:
        gv = sum((as_real(g) * v[k].to(DEVICE)).sum() for k, g in zip(inputs, grads))
        hv = torch.autograd.grad(gv, list(inputs.values()))
        out.update({"h_" + k: as_real(g) for k, g in zip(inputs, hv)})
    return {k: t.detach().cpu() for k, t in out.items()}


def _worst(got: dict, want: dict, dtype: torch.dtype) -> tuple[float, str]:
    """The largest |got − want| / (|want| + floor) over the results, and where: entrywise for real values, by modulus
    for the final state's complex entries (the layers form DSS's and DLR's w = 1/(e^z − 1) as B/Λ: where e^z ~ 1e-24,
    Im w ~ 1e-24 comes out 1e-16, which is 1e-16 of |w|)."""
    def err(k):
        diff, ref = got[k].double() - want[k], want[k]
        if k == "state":
            diff, ref = diff.norm(dim=-1), ref.norm(dim=-1)
        return (diff.abs() / (ref.abs() + FLOOR[dtype])).max().item()

    errs = {k: err(k) for k in got}
    where = max(errs, key=errs.get)
    return errs[where], where


@pytest.mark.parametrize("profile", list(GAPS))
@pytest.mark.parametrize("backend", ["reference", "chunked", "native", "step"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_gradients_and_hessian_vector_products_match_mpmath(case, dtype, backend, profile):
    want = _oracle(case, dtype, profile)
    plain = _run(case, dtype, profile, backend, create_graph=False)
    err, where = _worst(plain, want, dtype)
    assert err < RTOL[dtype], (where, err)
    twice = _run(case, dtype, profile, backend, create_graph=True)
    err, where = _worst(twice, want, dtype)
    assert err < RTOL[dtype], (where, err)


def test_the_oracle_agrees_with_mpmath_finite_differences():
    """The hyper-dual gradient and H v of one case against central differences of ℓ at 60 digits (nested for H v)."""
    case, dtype, profile = "dlr", torch.float64, "mixed"
    want = _oracle(case, dtype, profile)
    layer, data, v = _case(case, dtype, profile)
    tensors = {**{k: p.detach() for k, p in layer.named_parameters()}, **data}
    with mpmath.workdps(60):
        P = {k: _nested(t.double()) for k, t in tensors.items()}
        V = {k: [mpmath.mpf(d) for d in t.double().flatten().tolist()] for k, t in v.items()}

        def loss_at(shift_key, index, h, eps):
            Q = copy.deepcopy(P)
            for k, dirs in V.items():
                for e, d in zip(_entries(Q[k]), dirs):
                    e.a += eps * d
            e = _entries(Q[shift_key])[index]
            e.a += h
            return _loss(case, Q)[0].a

        for key, index in (("A_sqrt_neg_real", 1), ("A_imag", 2), ("tau", 3), ("W", 5)):
            h, e = mpmath.mpf("1e-25"), mpmath.mpf("1e-14")
            g = (loss_at(key, index, h, 0) - loss_at(key, index, -h, 0)) / (2 * h)
            hv = ((loss_at(key, index, e, e) - loss_at(key, index, e, -e))
                  - (loss_at(key, index, -e, e) - loss_at(key, index, -e, -e))) / (4 * e * e)
            assert abs(float(g) / want["g_" + key].flatten()[index].item() - 1) < 1e-12
            assert abs(float(hv) / want["h_" + key].flatten()[index].item() - 1) < 1e-9
