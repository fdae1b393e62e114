"""Per-layer control analysis of a model, its report files and figures, against closed forms of the layers."""

import json
import math
import os

import numpy as np
import pytest
import torch

from ssmkit.analysis import analyze_model, write_report
from ssmkit.analysis.layerwise import skipped_layers, time_constants
from ssmkit.analysis.plots import impulse_response
from ssmkit.models import SequenceModel
from tests.conftest import H, make_layer


def _s4d_closed_form(layer):
    """Ā = exp(Δλ) (ZOH) of each mode of an S4D layer, float64: (H, M) complex."""
    lam = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag).detach().cpu().numpy()  # (H, M)
    dt = torch.exp(layer.log_dt).detach().cpu().numpy()[:, None]  # (H, 1)
    return dt * lam  # (H, M): Δλ


def _by_imag(a):
    return a[np.argsort(a.imag, kind="stable")]  # the modes of the legs init have distinct imaginary parts


def test_s4d_layer_against_its_eigenvalues():
    layer = make_layer("s4d")  # ZOH, d_state 8: 4 conjugate pairs per channel
    Ts = 0.01
    (r,) = analyze_model(layer, dt=Ts)
    assert r.name == "" and r.layer == "s4d" and r.system.dt == Ts
    dlam = _s4d_closed_form(layer)  # (H, M)
    z_exact = np.exp(dlam)
    # discrete poles: every Ā_n and its conjugate, per channel
    for h in range(H):
        want = np.concatenate([z_exact[h], z_exact[h].conj()])
        np.testing.assert_allclose(_by_imag(r.poles[h]), _by_imag(want), rtol=1e-12, atol=1e-14)
        # continuous poles s = log(z)/Ts = Δλ/Ts (|Im Δλ| < π here, so the principal log is exact)
        s_want = np.concatenate([dlam[h], dlam[h].conj()]) / Ts
        np.testing.assert_allclose(_by_imag(r.poles_continuous[h]), _by_imag(s_want), rtol=1e-10)
    assert r.spectral_abscissa == pytest.approx(dlam.real.max() / Ts, rel=1e-10)
    rho = np.abs(z_exact).max()
    assert r.spectral_radius == pytest.approx(rho, rel=1e-12)
    assert r.stability_margin == pytest.approx(1 - rho, rel=1e-9)
    assert r.stable
    # τ = -Ts / log|z| = Ts / (Δ |Re λ|): the slowest mode has the smallest Δ |Re λ|
    assert r.slowest_time_constant == pytest.approx(Ts / np.abs(dlam.real).min(), rel=1e-9)
    assert r.fastest_time_constant == pytest.approx(Ts / np.abs(dlam.real).max(), rel=1e-9)
    # DC gain: Σ_l K_l = D + 2 Re Σ_n C_n B̄_n / (1 - Ā_n)
    A_bar, B_bar, C = (t.detach().cpu().numpy() for t in layer.discrete())
    dc = layer.D.detach().cpu().numpy() + (C[0] * B_bar / (1 - A_bar)).sum(-1).real
    np.testing.assert_allclose(r.dc_gain[:, 0, 0], dc, rtol=1e-9)
    # H∞ ≥ |H| anywhere, and = |H| at its peak: compare with a dense grid of the frequency response
    theta = np.linspace(0, np.pi, 4001)
    grid = np.abs(r.system.frequency_response(theta / Ts))[:, 0, 0].max(-1)  # (H,)
    assert np.all(r.hinf >= grid * (1 - 1e-12)) and np.all(r.hinf <= grid * 1.05)


def test_time_constants_closed_form():
    z = np.array([0.5, -0.5, 0.0, 1.0, 1.2, np.exp(-0.1 + 1j)])
    tau = time_constants(z, 0.2)
    np.testing.assert_allclose(tau[:2], 0.2 / math.log(2))
    assert tau[2] == 0 and np.isinf(tau[3]) and np.isinf(tau[4])
    assert tau[5] == pytest.approx(2.0)


def test_impulse_response_is_the_kernel():
    layer = make_layer("s4")
    (r,) = analyze_model(layer)
    h = impulse_response(r.system, 20)  # (H, 1, 1, 20)
    np.testing.assert_allclose(h[:, 0, 0], layer.kernel(20).detach().cpu().numpy(), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="length must be an int >= 1"):
        impulse_response(r.system, 0)


def _hybrid_model():
    torch.manual_seed(0)
    return SequenceModel(d_input=2, d_model=4, n_layers=3, layer=["s4d", "rglru", "dlr"],
                         layer_options={"s4d": {"d_state": 6}, "dlr": {"d_state": 4}}, d_output=2, head="regress",
                         pool=None).eval()


def test_model_layers_and_skipped():
    model = _hybrid_model()
    results = analyze_model(model)
    assert [(r.name, r.layer) for r in results] == [("blocks.0.layer", "s4d"), ("blocks.2.layer", "dlr")]
    assert [(n, l) for n, l, _ in skipped_layers(model)] == [("blocks.1.layer", "rglru")]
    assert skipped_layers(model)[0][2] == model.blocks[1].layer.unsupported("state_space")
    assert all(r.system.dt == 1.0 for r in results)
    with pytest.raises(ValueError, match="dt must be the sampling time"):
        analyze_model(model, dt=-1.0)


def test_deep_wiener_uses_its_sampling_time():
    from ssmkit.sysid.wiener import DeepWiener

    model = DeepWiener(n_inputs=1, n_outputs=1, d_model=3, n_layers=2, layer="s4d", layer_options={"d_state": 4},
                       dt=0.004)
    results = analyze_model(model)
    assert [r.name for r in results] == ["layers.0", "layers.1"]
    assert all(r.system.dt == 0.004 for r in results)
    assert max(r.spectral_radius for r in results) == pytest.approx(model.spectral_radius(), rel=1e-12)


def test_write_report(tmp_path):
    pytest.importorskip("matplotlib")
    model = _hybrid_model()
    paths = write_report(model, str(tmp_path), title="unit test", channels=2)
    for kind in ("summary", "json", "poles", "bode", "responses", "kernels"):
        assert os.path.getsize(paths[kind]) > 0, kind
    with open(paths["poles"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    record = json.load(open(paths["json"]))
    assert [l["layer"] for l in record["layers"]] == ["s4d", "dlr"]
    assert record["skipped"][0]["layer"] == "rglru"
    results = analyze_model(model)
    assert record["layers"][0]["hinf_max"] == pytest.approx(float(results[0].hinf.max()))
    assert record["layers"][0]["h2_max"] == pytest.approx(float(results[0].h2.max()))
    assert record["layers"][0]["reduced_order_1pct"] == results[0].reduced_order(0.01).tolist()
    assert np.allclose(record["layers"][1]["hankel_singular_values"], results[1].hankel)
    text = open(paths["summary"]).read()
    assert "# Control analysis: unit test" in text and "blocks.1.layer (rglru)" in text and "![bode](bode.png)" in text
    assert f"{results[0].spectral_radius:.6f}" in text
    assert "| H2 (max over G) | states for 1 % |" in text
    assert f"| {int(results[0].reduced_order(0.01).max())} of {results[0].system.nstates} |" in text
    no_plots = write_report(model, str(tmp_path / "np"), plots=False)
    assert set(no_plots) == {"json", "summary"}
    for bad in (0, -1, 2.5, True, "3"):  # taken silently (unused without plots), or a TypeError inside the figures
        with pytest.raises(ValueError, match=r"channels must be an int >= 1"):
            write_report(model, str(tmp_path / "bad"), channels=bad)
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif("gss" not in __import__("ssmkit").layers.available(), reason="GSS is not registered")
def test_an_lti_core_inside_a_mixer_is_analysed():
    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_model=4, n_layers=1, layer="gss", d_output=1, head="regress", pool=None)
    results = analyze_model(model)
    assert [(r.name, r.layer) for r in results] == [("blocks.0.layer.ssm", "GSSDiagonal")]
    inner = model.blocks[0].layer.ssm
    assert results[0].spectral_radius == pytest.approx(np.abs(inner.state_space().poles()).max(), rel=1e-12)
    assert [(n, l) for n, l, _ in skipped_layers(model)] == [("blocks.0.layer", "gss")]
