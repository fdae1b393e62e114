"""analyze_model on layers whose every figure has a closed form: one-pole EMA channels sampled every Ts seconds.

An EMA layer with d_state = 1 is, per channel, the first-order system y_t = c h_t + d u_t, h_t = a h_{t-1} + b u_t
(a = 1 - αδ, b = αβ, c = γ, d = ω): H(z) = d + cb / (1 - a z⁻¹), impulse response d + cb, then cb a^k (k >= 1). Its
pole is z = a, its continuous pole s = ln(a) / Ts (z = e^{s Ts}), its time constant τ = -Ts / ln|a|, its DC gain
d + cb / (1 - a); |H(e^{jθ})|² is a ratio of two affine functions of cos θ, so its H∞ norm is the larger of
|H(1)| = |d + cb/(1 - a)| and |H(-1)| = |d + cb/(1 + a)|; its H2 norm is sqrt((d + cb)² + (cb a)² / (1 - a²)), and its
one Hankel singular value that of the rank-one Hankel matrix [cb a^{i+j+1}]: |cb| a / (1 - a²).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import signal
from torch import nn

from ssmkit.analysis import analyze_model
from ssmkit.analysis.layerwise import LayerAnalysis, model_dt, reduced_order, sampling_time, time_constants
from ssmkit.layers import build

TS = 0.05  # seconds
POLES = (0.8, 0.5, 0.95)  # a per channel
B = (0.3, -0.7, 0.2)  # b = αβ
C = (1.5, 0.4, -2.0)  # c = γ (N = 1: γ / √N = γ)
D = (0.25, 1.0, 0.0)  # d = ω (channel 1 peaks at θ = π: |H(-1)| = 0.813 > |H(1)| = 0.44)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def one_pole_ema() -> nn.Module:
    """An EMA layer of three channels, one real mode each, with a = POLES, b = B, c = C, d = D exactly (float64)."""
    layer = build("ema", d_model=3, d_state=1, dtype=torch.float64)
    with torch.no_grad():
        for h, (a, b, c, d) in enumerate(zip(POLES, B, C, D)):
            alpha = 0.9  # then δ = (1 - a) / α
            layer.logit_alpha[0, h, 0] = _logit(alpha)
            layer.logit_delta[0, h, 0] = _logit((1 - a) / alpha)
            layer.beta[0, h, 0] = b / alpha
            layer.gamma[0, h, 0] = c
            layer.D[h] = d
    A_bar, B_bar, C_ = (t.detach().numpy() for t in layer.discrete())
    np.testing.assert_allclose(A_bar[:, 0], POLES, rtol=1e-14)
    np.testing.assert_allclose(B_bar[:, 0], B, rtol=1e-14)
    np.testing.assert_allclose(C_[0, :, 0], C, rtol=1e-14)
    return layer


class WithTs(nn.Module):
    """A model that carries its sampling time as ``dt`` (as a DeepWiener does)."""

    def __init__(self, layer: nn.Module, dt) -> None:
        super().__init__()
        self.inner = layer
        self.dt = dt


def _closed_forms():
    a, b, c, d = (np.array(v) for v in (POLES, B, C, D))
    return {
        "s": np.log(a) / TS,
        "tau": -TS / np.log(a),
        "dc": d + c * b / (1 - a),
        "hinf": np.maximum(np.abs(d + c * b / (1 - a)), np.abs(d + c * b / (1 + a))),
        "h2": np.sqrt((d + c * b) ** 2 + (c * b * a) ** 2 / (1 - a ** 2)),
        "hsv": np.abs(c * b) * a / (1 - a ** 2),
    }


def _check_figures(r: LayerAnalysis, name: str) -> None:
    want = _closed_forms()
    assert r.name == name and r.layer == "ema" and r.system.dt == TS
    np.testing.assert_allclose(r.poles[:, 0], POLES, rtol=1e-13)
    np.testing.assert_allclose(r.poles_continuous[:, 0], want["s"], rtol=1e-12)
    assert r.poles_continuous.dtype == np.complex128
    assert r.spectral_radius == pytest.approx(0.95, rel=1e-13)
    assert r.stability_margin == pytest.approx(0.05, rel=1e-11)
    assert r.spectral_abscissa == pytest.approx(math.log(0.95) / TS, rel=1e-12)  # the slowest pole: max Re s
    assert r.slowest_time_constant == pytest.approx(-TS / math.log(0.95), rel=1e-12)  # 0.975 s
    assert r.fastest_time_constant == pytest.approx(-TS / math.log(0.5), rel=1e-12)  # 0.0721 s
    assert r.stable
    np.testing.assert_allclose(r.dc_gain[:, 0, 0], want["dc"], rtol=1e-12)
    np.testing.assert_allclose(r.hinf, want["hinf"], rtol=1e-9)
    np.testing.assert_allclose(r.h2, want["h2"], rtol=1e-10)
    np.testing.assert_allclose(r.hankel[:, 0], want["hsv"], rtol=1e-10)


def test_one_pole_channels_against_their_closed_forms_with_an_explicit_ts():
    layer = one_pole_ema()
    (r,) = analyze_model(layer, dt=TS)
    _check_figures(r, "")


def test_a_model_that_carries_ts_is_analysed_in_seconds_and_a_dt_must_agree_with_it():
    model = WithTs(one_pole_ema(), TS)
    assert sampling_time(model) == (TS, True) and model_dt(model) == TS
    (r,) = analyze_model(model)
    _check_figures(r, "inner")
    with pytest.raises(ValueError, match=r"dt = 0\.05 s disagrees with the model.s own sampling time Ts = 7\.0 s"):
        analyze_model(WithTs(one_pole_ema(), 7.0), dt=TS)  # its poles were identified at 7 s, not at the given dt
    (r2,) = analyze_model(WithTs(one_pole_ema(), TS), dt=TS)
    _check_figures(r2, "inner")
    bare = nn.Sequential(one_pole_ema())
    assert sampling_time(bare) == (1.0, False) and model_dt(bare) == 1.0
    (r3,) = analyze_model(bare)  # in samples: Ts = 1
    assert r3.system.dt == 1.0
    assert r3.slowest_time_constant == pytest.approx(-1 / math.log(0.95), rel=1e-12)
    np.testing.assert_allclose(r3.poles_continuous[:, 0], np.log(POLES), rtol=1e-12)


def test_the_hinf_norm_agrees_with_scipy_on_a_dense_grid():
    (r,) = analyze_model(one_pole_ema(), dt=TS)
    for h, (a, b, c, d) in enumerate(zip(POLES, B, C, D)):
        # H(z) = d + cb / (1 - a z⁻¹) = ((d + cb) - d a z⁻¹) / (1 - a z⁻¹)
        w, H = signal.freqz([d + c * b, -d * a], [1, -a], worN=20001, whole=False)
        peak = np.abs(H).max()
        assert r.hinf[h] >= peak * (1 - 1e-12) and r.hinf[h] == pytest.approx(peak, rel=1e-9)


def test_an_unstable_channel_has_infinite_norms_and_time_constant():
    layer = one_pole_ema()
    with torch.no_grad():  # a = 1 - αδ = 1.5 needs αδ = -0.5: set the realisation's pole by a negative δ-logit
        layer.logit_delta[0, 1, 0] = -1000.0  # δ = 0 exactly: a = 1, a pole on the unit circle
    (r,) = analyze_model(layer, dt=TS)
    assert r.spectral_radius == 1.0 and r.stability_margin == 0.0 and not r.stable
    assert r.slowest_time_constant == math.inf
    assert r.fastest_time_constant == pytest.approx(-TS / math.log(0.8), rel=1e-12)
    assert r.reduced_order().tolist()[1] == -1


def test_reduced_order_of_one_pole_channels():
    (r,) = analyze_model(one_pole_ema(), dt=TS)
    want = _closed_forms()
    # one state: r = 0 when the whole 2σ is within rel·H∞, else 1
    # 2σ / H∞ per channel: 0.8, 0.459, 0.974
    for rel in (0.01, 0.5, 0.9, 2.0):
        expect = np.where(2 * want["hsv"] <= rel * want["hinf"], 0, 1)
        assert r.reduced_order(rel).tolist() == expect.tolist(), rel
    assert r.reduced_order(0.5).tolist() == [1, 0, 1] and r.reduced_order(0.9).tolist() == [0, 0, 1]
    assert r.reduced_order().tolist() == [1, 1, 1]


def test_reduced_order_default_is_one_percent_and_the_bound_admits_equality():
    # σ = (1, 0.5, 0.25): the dropped tails 2 Σ_{i>=r} σ_i are 3.5, 1.5, 0.5, 0 for r = 0..3
    hsv = np.array([[1.0, 0.5, 0.25]])
    assert reduced_order(hsv, np.array([1.0]), 0.5).tolist() == [2]  # 2·0.25 = 0.5 = 0.5·1: within (<=)
    assert reduced_order(hsv, np.array([1.0]), 0.49).tolist() == [3]
    assert reduced_order(hsv, np.array([150.0]), 0.01).tolist() == [1]  # 1.5 <= 1.5
    assert reduced_order(hsv, np.array([150.0])).tolist() == [1]  # default 1 %
    assert reduced_order(hsv, np.array([149.0])).tolist() == [2]  # 1 % of 149 < 1.5; 2 % would give 1
    assert reduced_order(hsv, np.array([349.0])).tolist() == [1]  # 2 % would give 0 (3.5 <= 6.98)
    analysis = analyze_model(one_pole_ema(), dt=TS)[0]
    fake = dataclasses.replace(analysis, hankel=np.array([[1.0, 0.5, 0.25]] * 3), hinf=np.array([149.0, 150.0, 349.0]))
    assert fake.reduced_order().tolist() == [2, 1, 1]  # the method's default is 1 % too


def test_layer_analysis_is_frozen():
    (r,) = analyze_model(one_pole_ema(), dt=TS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.spectral_radius = 0.0


def test_time_constants_scale_with_dt_and_treat_the_unit_circle_as_infinite():
    z = np.array([[0.9, -0.9j], [1.0 + 0j, 0.0]])
    tau = time_constants(z, 0.1)
    assert tau.shape == (2, 2) and tau.dtype == np.float64
    np.testing.assert_allclose(tau[0], [-0.1 / math.log(0.9)] * 2, rtol=1e-14)
    assert tau[1, 0] == math.inf and tau[1, 1] == 0.0
