"""``ssmkit analyze`` on the ``model.pt`` that ``ssmkit sysid`` writes (a DeepWiener trained a few steps on the
Cascaded Tanks surrogate, Ts = 4 s): the reported poles, continuous poles, spectral radius, DC gains and H∞ norms
against the layers' own parameters and realisations, computed here independently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssmkit.analysis.commands import load_model
from ssmkit.cli import main
from ssmkit.sysid.wiener import DeepWiener

TS = 4.0  # the surrogate's sampling time, s


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An ``ssmkit sysid`` run folder: 4 steps of a 2-block S4D deep Wiener model (H = 3, N = 4) on tanks_surrogate."""
    out = tmp_path_factory.mktemp("sysid")
    argv = ["sysid", "--benchmark", "tanks_surrogate", "--model", "s4d", "--steps", "4", "--seed", "1",
            "--recipe.d_model", "3", "--recipe.n_layers", "2", "--recipe.d_state", "4", "--recipe.encoder_window", "10",
            "--recipe.timescale", "[0.4, 40]", "--recipe.val_every", "2", "--no-plots", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_the_sysid_file_loads_as_the_evaluated_model(run):
    from ssmkit.sysid.benchmarks import load_benchmark
    from ssmkit.sysid.workflow import evaluate

    saved = torch.load(run / "model.pt", weights_only=True)
    assert saved["benchmark"] == "tanks_surrogate" and saved["recipe"]["d_model"] == 3 and saved["mode"] == "simulation"
    assert saved["deep_wiener"]["dt"] == TS and saved["deep_wiener"]["timescale"] == (0.4, 40.0)
    model = load_model(str(run / "model.pt"))
    assert isinstance(model, DeepWiener) and not model.training and model.dt == TS and model.encoder_window == 10
    scores = evaluate(model, load_benchmark("tanks_surrogate"))  # the same simulation score as the run's own
    reported = json.loads((run / "results.json").read_text())["test"][0]["rmse"][0]
    assert scores["records"][0]["rmse"][0] == pytest.approx(reported, rel=1e-6)


def _dc_gain(A, B, C, D):
    return C @ np.linalg.solve(np.eye(A.shape[-1]) - A, B) + D  # (G, p, m): H(z = 1)


def _gain_on_grid(A, B, C, D, points=20001):
    """max over ω of |H(e^{iω})| on a dense grid (a lower bound of the H∞ norm) for each SISO system, by the
    eigendecomposition of the real A (H(z) = Σ_k c_k b_k / (z - λ_k) + D)."""
    w = np.linspace(0, np.pi, points)
    out = np.zeros(A.shape[0])
    for g in range(A.shape[0]):
        lam, V = np.linalg.eig(A[g])
        b, c = np.linalg.solve(V, B[g, :, 0]), C[g, 0] @ V  # (n,), (n,)
        H = (c * b / (np.exp(1j * w)[:, None] - lam[None])).sum(1) + D[g, 0, 0]  # (W,)
        out[g] = np.abs(H).max()
    return out


def test_analyze_reports_the_layers_poles_in_physical_units(run, capsys):
    pytest.importorskip("matplotlib")
    assert main(["analyze", str(run / "model.pt"), "--channels", "2"]) == 0
    out = run / "analysis"  # beside the file
    printed = capsys.readouterr().out
    assert "sampling time dt = 4 s" in printed and "Every layer Schur stable: **yes**" in printed
    assert "Slowest modes per layer" in printed and "frequency (Hz)" in printed
    for name in ("summary.md", "analysis.json", "poles.png", "bode.png", "responses.png", "kernels.png"):
        assert (out / name).stat().st_size > 0, name
    record = json.loads((out / "analysis.json").read_text())
    assert record["dt"] == TS
    model = load_model(str(run / "model.pt"))
    assert [entry["name"] for entry in record["layers"]] == ["layers.0", "layers.1"]
    for entry, layer in zip(record["layers"], model.layers):
        assert entry["layer"] == "s4d" and entry["dt"] == TS and entry["systems"] == 3 and entry["states"] == 4
        z = np.array(entry["poles_real"]) + 1j * np.array(entry["poles_imag"])  # (G, n)
        s = np.array(entry["poles_continuous_real"]) + 1j * np.array(entry["poles_continuous_imag"])
        # the poles are the eigenvalues of the exported A (real realisation: conjugates included)
        ss = layer.state_space().to_real()
        eig = np.linalg.eigvals(ss.A)  # (G, n)
        for g in range(3):
            np.testing.assert_allclose(np.sort_complex(z[g]), np.sort_complex(eig[g]), rtol=0, atol=1e-6)
        np.testing.assert_allclose(s, np.log(z) / TS, rtol=1e-12, atol=1e-12)
        # S4D-ZOH: z = exp(Δλ), so s = Δλ / Ts from the layer's own parameters (the 2 modes and their conjugates), up
        # to the branch of the logarithm: Im Δλ is only known modulo 2π from z (a mode above Nyquist aliases)
        with torch.no_grad():
            lam = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag).to(torch.complex128)  # (H, M)
            dl = (torch.exp(layer.log_dt).double()[:, None] * lam).numpy()  # (H, M) Δλ per sample
        dl = dl.real + 1j * (np.mod(dl.imag + np.pi, 2 * np.pi) - np.pi)  # the principal branch
        s_params = dl / TS  # (H, M) 1/s
        for g in range(3):
            want = np.sort_complex(np.concatenate([s_params[g], s_params[g].conj()]))
            np.testing.assert_allclose(np.sort_complex(s[g]), want, rtol=1e-5, atol=1e-8)
        assert entry["spectral_radius"] == pytest.approx(np.abs(eig).max(), abs=1e-7)
        assert entry["stability_margin"] == pytest.approx(1 - np.abs(eig).max(), abs=1e-7)
        assert entry["slowest_time_constant"] == pytest.approx((-TS / np.log(np.abs(eig))).max(), rel=1e-5)
        # DC gain and H∞ from the exported real realisation, independently
        A, B, C, D = ss.A, ss.B, ss.C, ss.D
        dc = _dc_gain(A, B, C, D)  # (G, 1, 1)
        assert entry["dc_gain_min"] == pytest.approx(dc.min(), rel=1e-6, abs=1e-9)
        assert entry["dc_gain_max"] == pytest.approx(dc.max(), rel=1e-6, abs=1e-9)
        grid = _gain_on_grid(A, B, C, D)
        hinf = np.array(entry["hinf"])
        assert np.all(hinf >= grid * (1 - 1e-9)) and np.all(hinf <= grid * (1 + 1e-4))
        slow = entry["slowest_modes"][0]  # the slowest mode, in physical units
        assert slow["abs_z"] == pytest.approx(np.abs(eig).max(), abs=1e-7)
        assert slow["tau"] == pytest.approx(entry["slowest_time_constant"], rel=1e-6)
        sl = complex(slow["s_real"], slow["s_imag"])
        assert slow["frequency"] == pytest.approx(abs(sl.imag) / (2 * np.pi)) and slow["damping"] == pytest.approx(-sl.real / abs(sl))


def test_a_file_of_an_earlier_sysid_is_named(tmp_path):
    torch.save({"state_dict": {}, "recipe": {}, "model": "s4d", "mode": "simulation", "benchmark": "cascaded_tanks"},
               tmp_path / "model.pt")
    with pytest.raises(ValueError, match="earlier 'ssmkit sysid' that did not store the model's arguments"):
        load_model(str(tmp_path / "model.pt"))


def test_checkpoint_round_trip_keeps_the_dtype():
    torch.manual_seed(0)
    model = DeepWiener(2, 1, d_model=3, n_layers=1, layer_options={"d_state": 4}, dt=0.5, timescale=(1.0, 10.0),
                       dtype=torch.float64)
    copy = DeepWiener.from_checkpoint(model.checkpoint(benchmark="x"))
    assert copy.u_mean.dtype == torch.float64 and copy.arguments == model.arguments
    u = torch.randn(2, 7, 2, dtype=torch.float64)
    assert torch.equal(copy(u)[0], model(u)[0])
    with pytest.raises(ValueError, match="metadata must not set 'state_dict'"):
        model.checkpoint(state_dict={})
    with pytest.raises(ValueError, match="a DeepWiener checkpoint is a dict"):
        DeepWiener.from_checkpoint({"state_dict": {}})


def test_dt_may_not_contradict_the_models_sampling_time(tmp_path, capsys):
    # --dt 1 on a Ts = 0.5 s DeepWiener reported its poles and time constants in "seconds" on a 1 s axis (probe 4)
    from ssmkit.analysis.commands import analyze_main

    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 4}, dt=0.5)
    torch.save(model.checkpoint(), tmp_path / "model.pt")
    with pytest.raises(SystemExit):
        analyze_main([str(tmp_path / "model.pt"), "--dt", "1", "--no-plots", "--out", str(tmp_path / "a")])
    assert "carries its sampling time Ts = 0.5 s; --dt 1 would put" in capsys.readouterr().err
    assert analyze_main([str(tmp_path / "model.pt"), "--dt", "0.5", "--no-plots", "--out", str(tmp_path / "b")]) == 0
