"""Mutation round of 2026-12-06 on the irregular-sampling feature (``forward(..., intervals=)``, ``step(...,
interval=)``; :mod:`ssmkit.ops.irregular`, :mod:`ssmkit.ops.irregular_bank`, :mod:`ssmkit.layers.irregular` and the
plumbing through the models, DeepWiener and training). 70 hand mutants were run against the feature's tests; each
test here kills mutants that survived them, against an independent reference: a Taylor series to 25 terms, the
closed form of the series' derivative, a float64 numpy loop of the layers' continuous-time systems, autograd's
answer outside torch.func, the same call without intervals, or the model called directly.

What each test kills (mutant ids of the round's report):

- the per-step coefficients around the series threshold |z| = 1e-3: a series coefficient (1/24 -> 1/12), the
  threshold read on Re z only, g = (e^z − 1)/z from Re e^z − 1 (cancelling) instead of expm1 (O8, O9, O10; O5, O7);
- the gradient of the input gain below the threshold: the series' range cut to |z| < 1e-8 (the direct form's
  gradient cancels, 1/z² terms: 4e-9 relative instead of 5e-15) (O6);
- a float32 layer at large |Im z|: Δ·τ formed in float32 before the widening, S5's and S4D's (e^z turns the product's
  rounding into a relative error |z|·6e-8 of Ā and B̄) (O15, B4; O14);
- S4D's chunked scan under torch.func (the activation checkpoint must be skipped there: torch.func refuses its
  saved-tensor hooks) (B11);
- the layers' answer in the input's dtype, forward and step (L3, L7);
- ``return_state=False`` with intervals returns no state (L4, S2);
- the layers' own checks of x, x_t and the state with intervals, exactly as without (L5, L6);
- the validation split scored with its intervals (T5).

Equivalent (no test can kill them): the value check swallowing any RuntimeError eagerly (O4: none arises there), the
bank's checkpoint without ``context_fn`` (B10: the chunk's recurrence backend is an argument, nothing in it reads
the backend context), the step without ``float32_core`` (L9: autocast casts no complex tensor, and S5's and S4D's
steps compute in complex or elementwise; Mamba's steps enter their own).

Found by the mutant that drops ``float32_core`` (reported, not fixed here): under autocast, Mamba and Mamba-2 with
intervals run entirely in float32 (the mixin enters ``float32_core`` around the whole ``_forward_irregular`` /
``_step_irregular``, projections included), while the regular layer runs its projections in bf16/fp16; unit
intervals then differ from the regular layer by the bf16 rounding (8e-3, 6e-3 relative) and autocast saves nothing.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

import ssmkit.layers as layers
from ssmkit.ops.irregular import irregular_discretize
from ssmkit.ops.irregular_bank import bank_irregular_coefficients
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, variants

B, L = 2, 9
TAKERS = [name for name in layers.available() if layers.layer_class(name).takes_intervals]
EPS = float(np.finfo(np.float64).eps)


def _gaps(shape, seed: int, low: float = 0.1, high: float = 2.5, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(DEVICE, dtype)


def _randn(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)


def _taylor(z: np.ndarray, terms: int = 25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """e^z, g(z) = (e^z − 1)/z and g'(z) = Σ_{k≥1} k z^{k−1}/(k+1)! by their Taylor series (|z| ≤ 0.05 here: the
    truncation is below 1e-40)."""
    e, g, dg = np.ones_like(z), np.ones_like(z), np.zeros_like(z)
    power, fact = np.ones_like(z), 1.0  # z^k, (k+1)!
    for k in range(1, terms):
        dg = dg + k * power / (fact * (k + 1))  # k z^{k-1} / (k+1)!
        power = power * z
        fact = fact * (k + 1)
        e = e + power * (k + 1) / fact  # z^k / k!
        g = g + power / fact  # z^k / (k+1)!
    return e, g, dg


# ---------------------------------------------------------------------------------------------------------------------
# the per-step coefficients


def test_zoh_coefficients_on_both_sides_of_the_series_threshold_match_the_taylor_series():
    """Ā = e^z and the gain Δτ g(z) of :func:`irregular_discretize` (the series below |z| = 1e-3, the expm1 form above)
    and the bank's Ā, B̄ = (e^z − 1)/Λ · B, for |z| from 1e-7 to 0.05 and arguments near the imaginary axis (Re z
    tiny, Im z not) to the negative real axis: within a few ulps of the float64 Taylor series."""
    tau = np.logspace(-7, -1.3, 40)  # (T,) gaps; Δ = 1, |Λ| = 1: |z| = τ
    Lam = np.exp(1j * np.array([np.pi / 2 - 1e-3, np.pi / 2 + 1e-4, np.pi / 2 + 0.3, 2.0, 3.0]))  # (M,)
    z = tau[:, None] * Lam[None, :]  # (T, M)
    e, g, _ = _taylor(z)
    Lam_t = torch.tensor(Lam, dtype=torch.complex128, device=DEVICE)
    A_bar, gain = irregular_discretize(Lam_t, torch.ones(len(Lam), dtype=torch.float64, device=DEVICE),
                                       torch.tensor(tau, device=DEVICE)[None], "zoh")  # (1, T, M) each
    A_bar, gain = A_bar[0].cpu().numpy(), gain[0].cpu().numpy()
    assert (np.abs(A_bar - e) / np.abs(e)).max() < 8 * EPS
    assert (np.abs(gain - tau[:, None] * g) / np.abs(tau[:, None] * g)).max() < 8 * EPS
    Bvec = np.array([1.0 - 0.5j, -0.3 + 2j, 0.7j, 1.5, -1 + 1j])  # the bank: one channel, these modes
    A_bank, B_bank = bank_irregular_coefficients(Lam_t[None], torch.tensor(Bvec[None], device=DEVICE),
                                                 torch.ones(1, dtype=torch.float64, device=DEVICE),
                                                 torch.tensor(tau, device=DEVICE), "zoh", torch.complex128)
    A_bank, B_bank = A_bank[:, 0].cpu().numpy(), B_bank[:, 0].cpu().numpy()  # (T, M)
    want = tau[:, None] * g * Bvec
    assert (np.abs(A_bank - e) / np.abs(e)).max() < 8 * EPS
    assert (np.abs(B_bank - want) / np.abs(want)).max() < 8 * EPS


def test_the_gain_gradient_below_the_series_threshold_matches_the_series_derivative():
    """d gain/dΛ = (Δτ)² g'(z) at |z| from 3e-8 to 8e-4 (the series' range): autograd through
    :func:`irregular_discretize` against g' by its series, to 1e-13 (the direct form's gradient, E'/z − E/z², cancels
    to a relative error ~eps/|z| there)."""
    n = 24
    Lam = np.logspace(-7.5, -3.1, n) * np.exp(1j * np.linspace(1.6, 3.1, n))  # (M,): Δ = τ = 1, z = Λ
    re = torch.tensor(Lam.real, device=DEVICE, requires_grad=True)
    im = torch.tensor(Lam.imag, device=DEVICE, requires_grad=True)
    w_re, w_im = _randn(n, seed=1), _randn(n, seed=2)
    _, gain = irregular_discretize(torch.complex(re, im), torch.ones(n, dtype=torch.float64, device=DEVICE),
                                   torch.ones(1, dtype=torch.float64, device=DEVICE), "zoh")  # (1, M)
    g_re, g_im = torch.autograd.grad((gain[0].real * w_re + gain[0].imag * w_im).sum(), [re, im])
    dg = _taylor(Lam)[2]  # holomorphic: d/dRe Λ = g', d/dIm Λ = i g'
    a, b = w_re.cpu().numpy(), w_im.cpu().numpy()
    want_re, want_im = a * dg.real + b * dg.imag, -a * dg.imag + b * dg.real
    assert (np.abs(g_re.cpu().numpy() - want_re) / np.abs(want_re)).max() < 1e-13
    assert (np.abs(g_im.cpu().numpy() - want_im) / np.abs(want_im)).max() < 1e-13


def _modes(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The layer as dx/ds = diag(e) x + B_c u, y = Re(C_c x) + D u in nominal time (e = ΔΛ per mode), float64 numpy
    from its parameters (exact values of a float32 layer's)."""
    Lam, Bin, dt = (t.detach().cpu().numpy().astype(np.complex128 if t.is_complex() else np.float64)
                    for t in layer.continuous())
    C = torch.view_as_complex(layer.C[0].detach().cpu().double().contiguous()).numpy()
    D = layer.D.detach().cpu().double().numpy()
    if type(layer).__name__ == "S5":  # Λ (M,), B̃ (M, H), Δ (M,)
        return dt * Lam, dt[:, None] * Bin, (2 * C if layer.conj_sym else C), D
    Hn, M = Lam.shape  # S4D: a bank of H SISO systems, output 2 Re(C x)
    B_c, C_c = np.zeros((Hn * M, Hn), complex), np.zeros((Hn, Hn * M), complex)
    for h in range(Hn):
        B_c[h * M:(h + 1) * M, h] = dt[h] * Bin[h]
        C_c[h, h * M:(h + 1) * M] = 2 * C[h]
    return (dt[:, None] * Lam).reshape(-1), B_c, C_c, D


def _zoh_loop(layer, x: torch.Tensor, tau: torch.Tensor) -> np.ndarray:
    """y of the layer's system sampled at the gaps τ with the input held (ZOH), by a float64 loop: x_t = e^{τe} x_{t-1}
    + (e^{τe} − 1)/e · B_c u_t (e^z − 1 without cancellation: expm1(Re z) cos Im z − 2 sin²(Im z/2) + i e^{Re z} sin)."""
    e, B_c, C_c, D = _modes(layer)
    u, taus = x.detach().cpu().double().numpy(), tau.detach().cpu().double().numpy()
    y = np.zeros(u.shape)
    for b in range(u.shape[0]):
        s = np.zeros(e.shape, complex)
        for t in range(u.shape[1]):
            z = taus[b, t] * e
            em1 = np.expm1(z.real) * np.cos(z.imag) - 2 * np.sin(z.imag / 2) ** 2 + 1j * np.exp(z.real) * np.sin(z.imag)
            s = np.exp(z) * s + em1 / e * (B_c @ u[b, t])
            y[b, t] = (C_c @ s).real + D * u[b, t]
    return y


@pytest.mark.parametrize("name", ["s5", "s4d"])
def test_a_float32_layer_at_large_imaginary_steps_follows_the_float64_closed_form(name):
    """|Im z| up to ~400 with Re Λ = −0.01 (the modes ring through the sequence) and Δ not a power of two: the float32
    layer's forward and step within 2.5e-7 of the float64 loop of its own (float32) parameters. Δ·τ rounded to float32
    before the widening puts |z|·6e-8 into the phase of Ā and B̄ (1e-6 and 3e-6 here)."""
    layer = make_layer(name, variants(name)[0], dtype=torch.float32)
    with torch.no_grad():
        layer.log_dt.copy_(torch.log(torch.linspace(0.61, 0.97, layer.log_dt.numel())))
        layer.A_imag.copy_(torch.linspace(10, 30, layer.A_imag.numel()).view_as(layer.A_imag))
        if name == "s5":
            layer.A_real.fill_(-0.01)
        else:
            layer.log_A_real.fill_(float(np.log(0.01)))
    x, tau = _randn(B, L, H, seed=3, dtype=torch.float32), _gaps((B, L), seed=4, low=6.0, high=14.0,
                                                                  dtype=torch.float32)
    want = torch.from_numpy(_zoh_loop(layer, x, tau))
    y = layer(x, intervals=tau)[0]
    assert y.dtype == torch.float32 and rel_err(y, want) < 2.5e-7
    state, ys = layer.initial_state(B), []
    with torch.no_grad():
        for t in range(L):
            y_t, state = layer.step(x[:, t], state, interval=tau[:, t])
            ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), want) < 2.5e-7


# ---------------------------------------------------------------------------------------------------------------------
# transforms


def test_s4d_at_irregular_times_under_torch_func_grad_and_vmap_equals_autograd():
    """torch.func refuses the chunks' activation checkpoint (saved-tensor hooks): the bank's chunked scan must run
    without one there. Per-sample gradients with respect to a batch of interval sequences against autograd."""
    layer = make_layer("s4d", variants("s4d")[0])
    x, taus = _randn(B, L, H, seed=5), _gaps((3, B, L), seed=6)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return layer(x, intervals=t)[0].square().sum()

    per_sample = vmap(grad(loss))(taus)
    for k in range(3):
        t = taus[k].clone().requires_grad_()
        assert rel_err(per_sample[k], torch.autograd.grad(loss(t), t)[0]) < 1e-12
    t = taus[0].clone().requires_grad_()
    assert rel_err(grad(loss)(taus[0]), torch.autograd.grad(loss(t), t)[0]) < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# the layers' protocol with intervals


@pytest.mark.parametrize("name", TAKERS)
def test_the_answer_comes_in_the_inputs_dtype_forward_and_step(name):
    """A float64 layer fed float32 (and a float32 layer fed float64) answers in the input's dtype, with the values of
    the input in the layer's precision (as without intervals)."""
    for layer_dtype, x_dtype in ((torch.float64, torch.float32), (torch.float32, torch.float64)):
        layer = make_layer(name, dtype=layer_dtype)
        x, tau = _randn(B, L, H, seed=7, dtype=x_dtype), _gaps((B, L), seed=8, dtype=x_dtype)
        y, h = layer(x, intervals=tau)
        y_own, h_own = layer(x.to(layer_dtype), intervals=tau)
        assert y.dtype == x_dtype and rel_err(y, y_own) < 1e-7
        assert all(torch.equal(a, b) for a, b in zip(leaves(h), leaves(h_own)))
        y_t, s = layer.step(x[:, 0], layer.initial_state(B), interval=tau[:, 0])
        y_t_own, s_own = layer.step(x[:, 0].to(layer_dtype), layer.initial_state(B), interval=tau[:, 0])
        assert y_t.dtype == x_dtype and rel_err(y_t, y_t_own) < 1e-7
        assert all(rel_err(a, b) < 1e-7 for a, b in zip(leaves(s), leaves(s_own)))


@pytest.mark.parametrize("name", TAKERS)
def test_return_state_false_returns_no_state_and_the_same_output(name):
    layer = make_layer(name)
    x, tau = _randn(B, L, H, seed=9), _gaps((B, L), seed=10)
    y, h = layer(x, intervals=tau, return_state=False)
    assert h is None
    assert torch.equal(y, layer(x, intervals=tau)[0])


@pytest.mark.parametrize("name", TAKERS)
def test_bad_inputs_and_states_are_refused_as_without_intervals(name):
    """x of the wrong width and a state of another batch size, forward and step: the ValueError of the regular call,
    word for word (the layer's own checks, not an op's message or a failure deep inside)."""
    layer = make_layer(name)
    x, tau = _randn(B, L, H, seed=11), _gaps((B, L), seed=12)
    cases = [
        (lambda **kw: layer(_randn(B, L, H + 1, seed=13), **kw), "intervals", tau),
        (lambda **kw: layer(x, layer.initial_state(B + 1), **kw), "intervals", tau),
        (lambda **kw: layer.step(_randn(B, H + 1, seed=14), layer.initial_state(B), **kw), "interval", tau[:, 0]),
        (lambda **kw: layer.step(x[:, 0], layer.initial_state(B + 1), **kw), "interval", tau[:, 0]),
    ]
    for call, keyword, gaps in cases:
        with pytest.raises(ValueError) as regular:
            call()
        with pytest.raises(ValueError, match=f"^{re.escape(str(regular.value))}$"):
            call(**{keyword: gaps})


# ---------------------------------------------------------------------------------------------------------------------
# training


def test_the_validation_split_is_scored_with_its_intervals(tmp_path):
    """fit's recorded val_loss (the validation at the last step) is the final model's loss on the validation split
    called with its intervals, not without them."""
    pytest.importorskip("lightning")
    from ssmkit.models import SequenceModel, SequenceModelConfig
    from ssmkit.train import TrainConfig, fit
    from ssmkit.train.checkpoint import load_checkpoint
    from ssmkit.train.objective import summed_loss_and_metric

    config = SequenceModelConfig(d_input=2, d_model=4, n_layers=1, layer="s4d", d_output=1, head="regress",
                                 pool=None, layer_options={"d_state": 4})

    def split(seed: int, n: int):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, L, 2, generator=g, dtype=torch.float64)
        tau = 0.2 + 2 * torch.rand(n, L, generator=g, dtype=torch.float64)
        return x, torch.cumsum(x[..., :1] * tau[..., None], 1), tau

    train_cfg = TrainConfig(batch_size=4, max_steps=2, warmup_steps=0, val_every=0, checkpoint_every=0, lr=1e-2,
                            precision="64", log_every=1)
    val = split(1, 5)
    result = fit(config, train_cfg, split(0, 8), val, None, tmp_path / "run", progress=False)
    state = load_checkpoint(os.path.join(tmp_path, "run", "checkpoints", "last.ckpt"))["state_dict"]
    model = SequenceModel.from_config(config).double()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.eval()
    with torch.no_grad():
        losses = [summed_loss_and_metric("regress", model(val[0], return_state=False, intervals=t)[0], val[1])
                  for t in (val[2], None)]
    expected, regular = ((loss / count).item() for loss, _, count in losses)
    assert result["val_loss"] == pytest.approx(expected, rel=1e-9)
    assert abs(regular - expected) > 1e-6 * abs(expected)  # the intervals change the loss
