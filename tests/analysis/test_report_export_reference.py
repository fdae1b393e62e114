"""The analysis report (``summary.md``, ``analysis.json``), the ``ssmkit analyze`` and ``ssmkit zoo`` commands and the
ONNX step export against references computed here independently.

References: a hand-made bank of discrete systems with known poles (a rotation block, a negative real pole, a pole at
zero, an unstable pole), whose figures are recomputed in float64 with numpy and scipy — eigenvalues, log(z)/dt, DC
gains C (I − A)⁻¹ B + D, the H∞ norm as the largest singular value on a dense grid of e^{iω}, the H2 norm from the
impulse response's energy, the Hankel singular values from `scipy.linalg.solve_discrete_lyapunov` Gramians —, then
read back from the report's JSON and its markdown tables; the figures' functions replaced by recorders (what each is
given); the commands' printed text parsed back; the exported step realisation against a float64 numpy loop over
``state_space()``'s (A, B, C, D), and the ONNX graph run by onnxruntime against the float64 model's ``step``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch

from ssmkit.analysis import layerwise, plots
from ssmkit.analysis import report
from ssmkit.analysis.layerwise import analyze_layer
from ssmkit.analysis.operating import OperatingSweep
from ssmkit.analysis.report import layer_record, slowest_modes, summary_markdown, write_report
from ssmkit.analysis.statespace import StateSpace
from tests.conftest import rel_err, run_steps

DT = 0.25


class _Fixed:
    """A stand-in layer whose ``state_space()`` is a given bank (`analyze_layer` reads nothing else)."""

    name = "fixed"

    def __init__(self, A, B, C, D):
        self.system = StateSpace(A, B, C, D)

    def state_space(self):
        return self.system


def _bank():
    """G = 2 systems of n = 3 states, m = 2 inputs, p = 1 output: system 0 has poles 0.9 e^{±0.3i} (a rotation block)
    and −0.5; system 1 has 0.95, 0.2 and 0 (a pole at zero: no finite s)."""
    rng = np.random.default_rng(4)
    c, s = 0.9 * math.cos(0.3), 0.9 * math.sin(0.3)
    A = np.zeros((2, 3, 3))
    A[0, :2, :2] = [[c, -s], [s, c]]
    A[0, 2, 2] = -0.5
    A[1] = np.diag([0.95, 0.2, 0.0])
    B = rng.standard_normal((2, 3, 2))
    C = rng.standard_normal((2, 1, 3))
    D = rng.standard_normal((2, 1, 2))
    return A, B, C, D


def _unstable():
    """One SISO system with poles 1.1 and 0.5."""
    return np.diag([1.1, 0.5])[None], np.ones((1, 2, 1)), np.array([[[1.0, -2.0]]]), np.array([[[0.5]]])


def _sigma_max_on_grid(A, B, C, D, points=40001):
    """max over ω of the largest singular value of C (e^{iω} I − A)⁻¹ B + D per system (a lower bound of H∞)."""
    w = np.linspace(0, np.pi, points)
    out = []
    for g in range(A.shape[0]):
        n = A.shape[1]
        zI_A = np.exp(1j * w)[:, None, None] * np.eye(n) - A[g]  # (W, n, n)
        H = C[g] @ np.linalg.solve(zI_A, np.broadcast_to(B[g], (len(w),) + B[g].shape)) + D[g]  # (W, p, m)
        out.append(np.linalg.svd(H, compute_uv=False).max())
    return np.array(out)


def _h2_by_impulse(A, B, C, D, steps=3000):
    """√(Σ_k ‖g_k‖_F²) with g_0 = D, g_k = C A^{k−1} B, summed in float64."""
    out = []
    for g in range(A.shape[0]):
        total, AkB = np.sum(D[g] ** 2), B[g].copy()
        for _ in range(steps):
            total += np.sum((C[g] @ AkB) ** 2)
            AkB = A[g] @ AkB
        out.append(math.sqrt(total))
    return np.array(out)


def _hankel(A, B, C):
    """Hankel singular values, decreasing: √eig(Wc Wo) with Wc = A Wc Aᵀ + B Bᵀ, Wo = Aᵀ Wo A + Cᵀ C."""
    out = []
    for g in range(A.shape[0]):
        Wc = scipy.linalg.solve_discrete_lyapunov(A[g], B[g] @ B[g].T)
        Wo = scipy.linalg.solve_discrete_lyapunov(A[g].T, C[g].T @ C[g])
        out.append(np.sort(np.sqrt(np.abs(np.linalg.eigvals(Wc @ Wo))))[::-1])
    return np.array(out)


def _order(hankel, hinf, rel=0.01):
    """The fewest r with 2 Σ_{i>r} σ_i <= rel ‖G‖∞ (0-based i), per system."""
    return [next(r for r in range(len(h) + 1) if 2 * h[r:].sum() <= rel * n) for h, n in zip(hankel, hinf)]


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _row(text, first):
    """The cells of the first markdown table row whose first cell is ``first``."""
    return next(_cells(line) for line in text.splitlines() if line.startswith(f"| {first} |"))


def test_a_layer_record_against_the_banks_figures_recomputed():
    A, B, C, D = _bank()
    result = analyze_layer("blocks.0.layer", _Fixed(A, B, C, D), DT)
    record = layer_record(result)
    json.dumps(record, allow_nan=False)  # JSON-ready: no inf or NaN
    assert (record["name"], record["layer"], record["dt"]) == ("blocks.0.layer", "fixed", DT)
    assert (record["systems"], record["states"], record["inputs"], record["outputs"]) == (2, 3, 2, 1)
    eig = np.linalg.eigvals(A)  # (G, n)
    assert record["stable"] is True
    assert record["spectral_radius"] == pytest.approx(0.95, abs=1e-14)
    assert record["stability_margin"] == pytest.approx(0.05, abs=1e-14)
    assert record["spectral_abscissa"] == pytest.approx(math.log(0.95) / DT, rel=1e-12)
    assert record["slowest_time_constant"] == pytest.approx(-DT / math.log(0.95), rel=1e-12)
    assert record["fastest_time_constant"] == 0.0  # the pole at zero
    dc = C @ np.linalg.solve(np.eye(3) - A, B) + D  # (G, p, m)
    assert record["dc_gain_min"] == pytest.approx(dc.min(), rel=1e-12)
    assert record["dc_gain_max"] == pytest.approx(dc.max(), rel=1e-12)
    assert dc.min() < dc.max()
    grid = _sigma_max_on_grid(A, B, C, D)
    hinf = np.array(record["hinf"])
    assert np.all(hinf >= grid * (1 - 1e-9)) and np.all(hinf <= grid * (1 + 1e-6))
    assert record["hinf_max"] == hinf.max() and hinf[0] != hinf[1]
    h2 = _h2_by_impulse(A, B, C, D)
    np.testing.assert_allclose(record["h2"], h2, rtol=1e-10)
    assert record["h2_max"] == pytest.approx(h2.max(), rel=1e-10) and h2[0] != h2[1]
    hankel = _hankel(A, B, C)
    np.testing.assert_allclose(record["hankel_singular_values"], hankel, rtol=1e-8, atol=1e-12)
    assert record["reduced_order_1pct"] == _order(hankel, hinf)
    z = np.array(record["poles_real"]) + 1j * np.array(record["poles_imag"])
    for g in range(2):
        np.testing.assert_allclose(np.sort_complex(z[g]), np.sort_complex(eig[g]), atol=1e-14)
    re = np.array(record["poles_continuous_real"], dtype=object)
    im = np.array(record["poles_continuous_imag"], dtype=object)
    k = int(np.argmin(np.abs(z[1])))  # the pole at zero: s = log 0 / dt is (−inf + 0i) / dt = −inf + NaN i: nulls
    assert re[1, k] is None and im[1, k] is None
    for g in range(2):
        for j in range(3):
            if (g, j) != (1, k):
                s = np.log(complex(z[g, j])) / DT
                assert (re[g, j], im[g, j]) == (pytest.approx(s.real, rel=1e-12), pytest.approx(s.imag, abs=1e-12))


def test_an_unstable_layers_record_writes_its_infinite_figures_as_null():
    result = analyze_layer("u", _Fixed(*_unstable()), 1.0)
    record = layer_record(result)
    json.dumps(record, allow_nan=False)
    assert record["stable"] is False and record["spectral_radius"] == pytest.approx(1.1)
    assert record["stability_margin"] == pytest.approx(-0.1)
    assert record["spectral_abscissa"] == pytest.approx(math.log(1.1))
    assert record["slowest_time_constant"] is None  # τ = inf
    assert record["fastest_time_constant"] == pytest.approx(-1 / math.log(0.5))
    assert record["hinf"] == [None] and record["hinf_max"] is None and record["h2"] == [None]
    assert record["h2_max"] is None
    assert record["hankel_singular_values"] == [[None, None]] and record["reduced_order_1pct"] == [-1]
    dc = (np.array([[1.0, -2.0]]) @ np.linalg.solve(np.eye(2) - np.diag([1.1, 0.5]), np.ones((2, 1))))[0, 0] + 0.5
    assert record["dc_gain_min"] == pytest.approx(dc) and record["dc_gain_max"] == pytest.approx(dc)


def _mode(z, g):
    """The reference dict of one slowest mode: s = log(z)/dt, |Im s|/2π, ζ = −Re s/|s|, τ = −dt/log|z|."""
    if z == 0:  # s = −inf + NaN i (above): no finite s, frequency or damping
        return {"system": g, "abs_z": 0.0, "arg_z": 0.0, "s_real": None, "s_imag": None, "frequency": None,
                "damping": None, "tau": 0.0}
    s = np.log(complex(z)) / DT
    return {"system": g, "abs_z": abs(z), "arg_z": float(np.angle(z)), "s_real": s.real, "s_imag": s.imag,
            "frequency": abs(s.imag) / (2 * np.pi), "damping": -s.real / abs(s), "tau": -DT / math.log(abs(z))}


def test_the_slowest_modes_one_pole_per_pair_in_physical_units():
    A, B, C, D = _bank()
    result = analyze_layer("b", _Fixed(A, B, C, D), DT)
    rot = 0.9 * np.exp(0.3j)
    want = [_mode(0.95, 1), _mode(rot, 0), _mode(-0.5 + 0j, 0), _mode(0.2, 1), _mode(0.0, 1)]  # by |z|, decreasing
    for got, ref in ((slowest_modes(result), want[:3]), (slowest_modes(result, count=5), want),
                     (slowest_modes(result, 1), want[:1])):
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert set(g) == set(r)
            for key, value in r.items():
                assert g[key] == (None if value is None else pytest.approx(value, rel=1e-12, abs=1e-14)), key
    assert slowest_modes(result)[1]["arg_z"] == pytest.approx(0.3)  # the upper pole of the pair, not its conjugate
    assert slowest_modes(result)[2]["s_imag"] == pytest.approx(np.pi / DT)  # z = −0.5: Nyquist, s_imag = π/dt


def _results():
    A, B, C, D = _bank()
    return [analyze_layer("blocks.0.layer", _Fixed(A, B, C, D), DT), analyze_layer("blocks.2.layer", _Fixed(
        *_unstable()), DT)]


def _fmt(x, spec=".4g"):
    return format(x, spec)


def test_the_summary_tables_read_back_as_the_recomputed_figures():
    results = _results()
    A, B, C, D = _bank()
    text = summary_markdown(results, [("blocks.1.layer", "rglru", "a gated recurrence")], "ckpt/last.ckpt",
                            ["poles.png", "bode.png"])
    assert text.startswith("# Control analysis: ckpt/last.ckpt\n\n") and text.endswith("\n")
    assert ("2 LTI layer(s), sampling time dt = 0.25 s. Every layer Schur stable: **NO** (largest spectral radius "
            "1.100000 in blocks.2.layer).") in text
    head = _row(text, "layer")
    assert head[5:8] == ["max Re s (1/s)", "slowest τ (s)", "fastest τ (s)"]
    row = _row(text, "blocks.0.layer")
    hinf = _sigma_max_on_grid(A, B, C, D).max()
    dc = C @ np.linalg.solve(np.eye(3) - A, B) + D
    h2 = _h2_by_impulse(A, B, C, D)
    hankel = _hankel(A, B, C)
    assert row[:5] == ["blocks.0.layer", "fixed", "2 × (3, 2, 1)", "0.950000", "0.05"]
    assert float(row[5]) == pytest.approx(math.log(0.95) / DT, rel=1e-3)
    assert float(row[6]) == pytest.approx(-DT / math.log(0.95), rel=1e-3) and row[7] == "0"
    lo, hi = (float(x) for x in row[8].strip("[]").split(", "))
    assert (lo, hi) == (pytest.approx(dc.min(), rel=1e-3), pytest.approx(dc.max(), rel=1e-3))
    assert float(row[9]) == pytest.approx(hinf, rel=1e-3) and float(row[10]) == pytest.approx(h2.max(), rel=1e-3)
    assert row[11] == f"{max(_order(hankel, _sigma_max_on_grid(A, B, C, D)))} of 3"
    bad = _row(text, "blocks.2.layer")  # unstable: margin negative, no slowest τ, no H∞ / H2, no order
    assert bad[3:5] == ["1.100000", "-0.1"] and bad[6] == "—" and bad[9:] == ["—", "—", "—"]
    assert float(bad[5]) == pytest.approx(math.log(1.1) / DT, rel=1e-3)
    assert float(bad[7]) == pytest.approx(-DT / math.log(0.5), rel=1e-3)
    assert "| layer | system | \\|z\\| | arg z (rad) | s | frequency (Hz) | ζ | τ (s) |" in text
    assert "s = log(z)/dt in 1/s, frequency |Im s|/2π in Hz" in text and "against ω in rad/s" in text
    modes = [_cells(line) for line in text.splitlines() if line.startswith("| blocks.")][2:]
    assert [m[:2] for m in modes] == [["blocks.0.layer", "1"], ["blocks.0.layer", "0"], ["blocks.0.layer", "0"],
                                      ["blocks.2.layer", "0"], ["blocks.2.layer", "0"]]
    rot = 0.9 * np.exp(0.3j)
    for cells, z in zip(modes, [0.95, rot, -0.5 + 0j, 1.1, 0.5]):
        ref = _mode(z, 0)
        assert cells[2] == f"{abs(z):.6f}" and float(cells[3]) == pytest.approx(np.angle(z), rel=1e-3, abs=1e-12)
        re, sign, im = cells[4].split(" ")
        assert float(re) == pytest.approx(np.log(abs(z)) / DT, rel=1e-3) and sign == "+"
        assert float(im.rstrip("i")) == pytest.approx(abs(ref["s_imag"]), rel=1e-3, abs=1e-12)
        assert float(cells[5]) == pytest.approx(ref["frequency"], rel=1e-3, abs=1e-12)
        assert float(cells[6]) == pytest.approx(ref["damping"], rel=5e-3)
        assert cells[7] == "—" if abs(z) > 1 else float(cells[7]) == pytest.approx(ref["tau"], rel=1e-3)
    assert "\n- blocks.1.layer (rglru): a gated recurrence\n" in text
    assert text.endswith("\n![poles](poles.png)\n![bode](bode.png)\n")
    assert "equilibria" not in text  # sweeps None: no section


def test_the_states_for_1_percent_of_each_layer():
    """The fewest states whose balanced truncation is within 1 % of H∞: 3 of 4 for poles 0.9, 0.5, 0.2, 0.05 (2 at
    2 %), 0 for a nearly static system, none ('—') for a bank with an unstable system."""
    four = np.diag([0.9, 0.5, 0.2, 0.05])[None]
    ones = (np.ones((1, 4, 1)), np.ones((1, 1, 4)), np.zeros((1, 1, 1)))
    hankel, hinf = _hankel(four, *ones[:2]), _sigma_max_on_grid(four, *ones)
    assert _order(hankel, hinf) == [3] and _order(hankel, hinf, 0.02) == [2]  # the reference tells 1 % from 2 %
    static = (np.diag([0.5, 0.3])[None], np.full((1, 2, 1), 1e-4), np.ones((1, 1, 2)), np.ones((1, 1, 1)))
    mixed = np.stack([np.diag([0.9, 0.5, 0.2, 0.05]), np.diag([1.1, 0.5, 0.2, 0.05])])
    results = [analyze_layer("a", _Fixed(four, *ones), DT), analyze_layer("b", _Fixed(*static), DT),
               analyze_layer("c", _Fixed(mixed, np.ones((2, 4, 1)), np.ones((2, 1, 4)), np.zeros((2, 1, 1))), DT)]
    assert [layer_record(r)["reduced_order_1pct"] for r in results] == [[3], [0], [3, -1]]
    text = summary_markdown(results, [], "t", [])
    assert [_row(text, name)[11] for name in "abc"] == ["3 of 4", "0 of 2", "—"]


def test_the_summary_in_samples_and_without_layers():
    results = _results()[:1]
    text = summary_markdown(results, [], "t", [], seconds=False)
    assert "sampling time dt = 0.25 (samples). Every layer Schur stable: **yes** (largest spectral radius 0.950000" in text
    assert "| max Re s (1/sample) | slowest τ (samples) | fastest τ (samples) |" in text
    assert "frequency (cycles/sample) | ζ | τ (samples) |" in text and "against ω in rad/sample" in text
    assert "![" not in text and "not analysed" not in text
    A, B, C, D = _bank()
    one = summary_markdown([analyze_layer("x", _Fixed(A, B, C, D), 1.0)], [], "t", [])  # dt = 1: samples
    assert "dt = 1 (samples)" in one and "slowest τ (samples)" in one
    forced = summary_markdown([analyze_layer("x", _Fixed(A, B, C, D), 1.0)], [], "t", [], seconds=True)
    assert "dt = 1 s." in forced and "slowest τ (s)" in forced and "frequency (Hz)" in forced
    assert summary_markdown([], [], "t", []) == "# Control analysis: t\n\nThe model has no layer with a state-space " \
                                                 "realisation.\n"
    empty = summary_markdown([], [("a", "rglru", "why")], "t", ["x.png"])
    assert empty == "# Control analysis: t\n\nThe model has no layer with a state-space realisation.\n\n" \
                    "Layers without a state-space realisation (not analysed):\n\n- a (rglru): why\n\n![x](x.png)\n"


def test_the_equilibria_section_reads_back_as_the_sweeps():
    u0 = np.stack([np.linspace(-1.0, 3.0, 3), np.full(3, 7.0)], 1)  # (G, m): input 0 swept
    u1 = np.stack([np.full(3, 1.0), np.linspace(5.0, 9.0, 3)], 1)
    y = np.array([[0.5, -2.0], [1.5, -4.0], [0.25, 8.0]])  # (G, p)
    gain = np.arange(12.0).reshape(3, 2, 2) - 5.0  # (G, p, m)
    sweeps = [OperatingSweep(0, u0, y, np.array([0.5, 0.9, 0.7]), gain),
              OperatingSweep(1, u1, y[::-1], np.array([0.5, 1.2, 0.7]), -gain)]
    text = summary_markdown([], [], "t", [], sweeps=sweeps)
    assert "## The whole model around its equilibria" in text and ", 3 points;" in text
    assert _row(text, "input")[0] == "input"
    rows = [_cells(line) for line in text.splitlines() if line.startswith("| u[")]
    want = []
    for sw in sweeps:
        i = sw.input
        for k in range(2):
            g = sw.dc_gain[:, k, i]
            want.append([f"u[{i}]", f"[{sw.u[:, i].min():.4g}, {sw.u[:, i].max():.4g}]", f"y[{k}]",
                         f"[{sw.y[:, k].min():.4g}, {sw.y[:, k].max():.4g}]", f"[{g.min():.4g}, {g.max():.4g}]",
                         f"{sw.spectral_radius.max():.6f}", "yes" if i == 0 else "**NO**"])
    assert rows == want
    assert rows[0][1] == "[-1, 3]" and rows[2][1] == "[5, 9]" and rows[1][4] == "[-3, 5]"
    assert "0 points" in summary_markdown([], [], "t", [], sweeps=[])
    assert not [line for line in summary_markdown([], [], "t", [], sweeps=[]).splitlines() if line.startswith("| u[")]
    why = summary_markdown([], [], "t", ["e.png"], sweeps="no inputs")
    assert why.endswith("## The whole model around its equilibria\n\nNot computed: no inputs.\n\n![e](e.png)\n")


FIGURES = ("plot_poles", "plot_bode", "plot_responses", "plot_kernels", "plot_equilibria")


@pytest.fixture
def figures(monkeypatch):
    """The figure functions replaced by recorders: [(name, args, kwargs)] in call order; each returns its path."""
    calls = []
    for name in FIGURES:
        def record(*args, _name=name, **kwargs):
            calls.append((_name, args, kwargs))
            return args[1]
        monkeypatch.setattr(plots, name, record)
    return calls


def _wiener():
    from ssmkit.sysid import DeepWiener

    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=2, layer="s4d", layer_options={"d_state": 4}, dt=0.5)
    with torch.no_grad():
        model.u_mean.fill_(2.0)
        model.u_std.fill_(0.5)
    return model


def _same_records(results, model, dt):
    return [json.loads(json.dumps(layer_record(r))) for r in results] == [
        json.loads(json.dumps(layer_record(r))) for r in layerwise.analyze_model(model, dt)]


def test_write_report_hands_each_figure_its_inputs_and_writes_what_it_computed(tmp_path, figures):
    from ssmkit.analysis.operating import operating_sweeps

    model = _wiener()
    out = str(tmp_path / "a")
    paths = write_report(model, out, title="m.pt", channels=3)
    names = ["poles", "bode", "responses", "kernels"]
    assert [c[0] for c in figures] == list(FIGURES)
    assert paths == {**{k: os.path.join(out, f"{k}.png") for k in names + ["equilibria"]},
                     "json": os.path.join(out, "analysis.json"), "summary": os.path.join(out, "summary.md")}
    (_, poles, kw_poles), (_, bode, kw_bode), (_, resp, kw_resp), (_, kern, kw_kern), (_, eq, kw_eq) = figures
    assert poles[1:] == (paths["poles"], True) and kw_poles == {}
    assert bode[1:] == (paths["bode"], 3) and kw_bode == {"seconds": True}
    assert resp[1:] == (paths["responses"], 3) and kw_resp == {"seconds": True}
    assert kern[1:] == (paths["kernels"],) and kw_kern == {}
    assert eq[1:] == (paths["equilibria"], 3) and kw_eq == {}
    results = poles[0]
    assert bode[0] is results and resp[0] is results and _same_records(results, model, 0.5)
    for (title, K), (name, layer) in zip(kern[0], layerwise.lti_layers(model)):  # the learned kernels, by layer
        L = plots.response_length(layerwise.analyze_layer(name, layer, 0.5), 512)
        assert title == f"{name} (s4d): kernel K (channels × lags)"
        with torch.no_grad():
            np.testing.assert_array_equal(K, layer.kernel(L).double().numpy())
    assert len(kern[0]) == 2
    want = operating_sweeps(model)
    assert [sw.input for sw in eq[0]] == [0] and len(want) == 1
    for name in ("u", "y", "spectral_radius", "dc_gain"):
        np.testing.assert_array_equal(getattr(eq[0][0], name), getattr(want[0], name))
    record = json.load(open(paths["json"]))
    assert set(record) == {"title", "dt", "layers", "skipped", "equilibria"}
    assert (record["title"], record["dt"], record["skipped"]) == ("m.pt", 0.5, [])
    assert record["layers"] == [json.loads(json.dumps(layer_record(r))) for r in results]
    [sweep] = record["equilibria"]
    assert sweep["input"] == 0
    for name in ("u", "y", "spectral_radius", "dc_gain"):
        np.testing.assert_array_equal(np.array(sweep[name]), getattr(want[0], name))
    u = np.array(sweep["u"])[:, 0]  # mean ± 2 std of the stored normalisation
    assert (u.min(), u.max()) == (pytest.approx(1.0), pytest.approx(3.0))
    text = open(paths["summary"]).read()
    figs = [f"{k}.png" for k in names + ["equilibria"]]
    assert text == summary_markdown(results, [], "m.pt", figs, True, eq[0])
    assert text.endswith("".join(f"![{f[:-4]}]({f})\n" for f in figs))
    assert "sampling time dt = 0.5 s." in text and "## The whole model around its equilibria" in text


def test_write_report_of_a_model_in_samples_with_a_skipped_layer_and_a_given_dt(tmp_path, figures):
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_model=2, n_layers=2, layer=["s4d", "rglru"], d_output=1, head="regress",
                          layer_options={"s4d": {"d_state": 4}})
    paths = write_report(model, str(tmp_path / "a"))
    assert [c[0] for c in figures] == list(FIGURES[:4])  # no input normalisation: no equilibria
    assert figures[0][1][2] is False and figures[1][1][2] == 8 and figures[1][2] == {"seconds": False}
    record = json.load(open(paths["json"]))
    assert "equilibria" not in record and record["dt"] == 1.0 and record["title"] == "model"
    assert record["skipped"] == [{"name": n, "layer": l, "reason": why} for n, l, why in layerwise.skipped_layers(model)]
    assert [s["layer"] for s in record["skipped"]] == ["rglru"]
    text = open(paths["summary"]).read()
    assert "dt = 1 (samples)" in text and "## The whole model" not in text and "- blocks.1.layer (rglru): " in text
    figures.clear()
    paths = write_report(model, str(tmp_path / "b"), dt=0.125, title="x")
    assert figures[0][1][2] is True and figures[2][2] == {"seconds": True}
    record = json.load(open(paths["json"]))
    assert record["dt"] == 0.125 and record["layers"][0]["dt"] == 0.125
    assert _same_records(figures[0][1][0], model, 0.125)
    assert "sampling time dt = 0.125 s." in open(paths["summary"]).read()


def test_write_report_without_figures_or_without_layers_draws_nothing(tmp_path, figures):
    from ssmkit.models import SequenceModel

    paths = write_report(_wiener(), str(tmp_path / "a"), plots=False, channels=1)  # 1 channel: accepted
    assert figures == [] and set(paths) == {"json", "summary"}
    text = open(paths["summary"]).read()
    assert "![" not in text and "## The whole model around its equilibria" in text
    assert len(json.load(open(paths["json"]))["equilibria"]) == 1
    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_model=2, n_layers=1, layer="rglru", d_output=1, head="regress")
    paths = write_report(model, str(tmp_path / "b"))
    assert figures == [] and set(paths) == {"json", "summary"}
    assert "The model has no layer with a state-space realisation." in open(paths["summary"]).read()
    assert json.load(open(paths["json"]))["layers"] == []


@pytest.mark.parametrize("sweeps", ["raise", "its state vector is too long", []])
def test_write_report_when_the_sweeps_give_no_equilibria(tmp_path, figures, monkeypatch, sweeps):
    def fake(model):
        if sweeps == "raise":
            raise ValueError("Newton's method did not converge at u = 3")
        return sweeps

    monkeypatch.setattr(report, "operating_sweeps", fake)
    paths = write_report(_wiener(), str(tmp_path), channels=2)
    assert [c[0] for c in figures] == list(FIGURES[:4])  # no equilibria figure
    why = ("no equilibrium found everywhere along the inputs (Newton's method did not converge at u = 3)"
           if sweeps == "raise" else sweeps)
    assert json.load(open(paths["json"]))["equilibria"] == why
    text = open(paths["summary"]).read()
    assert (f"Not computed: {why}." in text) == isinstance(why, str) and "equilibria.png" not in text


def _impulse(A, B, C, D, L):
    """h[0] = D, h[l] = C A^{l−1} B for one system, (p, m, L), by a float64 loop."""
    h, AkB = [D], B
    for _ in range(L - 1):
        h.append(C @ AkB)
        AkB = A @ AkB
    return np.stack(h, -1)


def test_the_kernels_figure_of_other_shapes(monkeypatch):
    """A non-square (H_out, H_in, L) kernel shows its diagonal; without a kernel view, a bank of two SISO systems shows
    each system's impulse response and a single 2-output 3-input system its diagonal; a slow layer 512 lags."""
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_model=2, n_layers=1, layer="s4d", d_output=1, head="regress",
                          layer_options={"d_state": 4}, dtype=torch.float64)
    layer = model.blocks[0].layer
    with torch.no_grad():
        layer.log_dt.fill_(-12.0)  # Δ ≈ 6e-6: τ of ~1e5 samples, so the figure's longest length, 512
    [result] = layerwise.analyze_model(model)
    assert plots.response_length(result, 10**6) > 512
    [(title, K)] = report._kernels(model, [result])
    with torch.no_grad():
        np.testing.assert_array_equal(K, layer.kernel(512).numpy())
    for shape in ((2, 3), (3, 2)):
        full = np.arange(float(np.prod(shape) * 512)).reshape(shape + (512,))
        monkeypatch.setattr(layer, "kernel", lambda L, full=full: torch.from_numpy(full[..., :L]))
        [(_, K)] = report._kernels(model, [result])
        np.testing.assert_array_equal(K, np.stack([full[i, i] for i in range(2)]))
    monkeypatch.setattr(layer, "supports", lambda what: what != "kernel")
    rng = np.random.default_rng(2)
    two = (np.stack([np.diag([0.5, -0.3]), np.diag([0.8, 0.1])]), rng.standard_normal((2, 2, 1)),
           rng.standard_normal((2, 1, 2)), rng.standard_normal((2, 1, 1)))
    wide = (np.diag([0.6, 0.2, -0.4])[None], rng.standard_normal((1, 3, 3)), rng.standard_normal((1, 2, 3)),
            rng.standard_normal((1, 2, 3)))
    broad = (np.diag(np.linspace(-0.3, 0.3, 40))[None], rng.standard_normal((1, 40, 40)),
             rng.standard_normal((1, 40, 40)), rng.standard_normal((1, 40, 40)))  # more channels than its 32 lags
    for bank, want in ((two, lambda h: np.stack([h[g][0, 0] for g in range(2)])),
                       (wide, lambda h: np.stack([h[0][i, i] for i in range(2)])),
                       (broad, lambda h: np.stack([h[0][i, i] for i in range(40)]))):
        stand_in = analyze_layer("blocks.0.layer", _Fixed(*bank), 1.0)
        L = plots.response_length(stand_in, 512)
        h = [_impulse(*(M[g] for M in bank), L) for g in range(len(bank[0]))]  # (p, m, L) per system
        [(title, K)] = report._kernels(model, [stand_in])
        assert title == "blocks.0.layer (fixed): impulse response of the realisation (no kernel view)"
        np.testing.assert_allclose(K, want(h), rtol=0, atol=1e-12)


def test_the_kernels_figure_shows_the_kernel_or_the_realisations_impulse_response(monkeypatch):
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_model=3, n_layers=2, layer=["s4d", "lru"], d_output=1, head="regress",
                          layer_options={"s4d": {"d_state": 4}, "lru": {"d_state": 4}}, dtype=torch.float64)
    results = layerwise.analyze_model(model)
    lengths = [plots.response_length(r, 512) for r in results]
    (t0, K0), (t1, K1) = report._kernels(model, results)
    layers = [m for _, m in layerwise.lti_layers(model)]
    assert t0 == "blocks.0.layer (s4d): kernel K (channels × lags)" and t1 == "blocks.1.layer (lru): kernel K (channels × lags)"
    with torch.no_grad():
        np.testing.assert_array_equal(K0, layers[0].kernel(lengths[0]).numpy())
        full = layers[1].kernel(lengths[1]).numpy()  # (H, H, L): its diagonal
    assert full.ndim == 3 and K1.shape == (3, lengths[1])
    np.testing.assert_array_equal(K1, np.stack([full[i, i] for i in range(3)]))
    for layer in layers:
        monkeypatch.setattr(layer, "supports", lambda what, real=layer.supports: what != "kernel" and real(what))
    (t0, K0), (t1, K1) = report._kernels(model, results)
    assert t0 == "blocks.0.layer (s4d): impulse response of the realisation (no kernel view)"
    assert t1 == "blocks.1.layer (lru): impulse response of the realisation (no kernel view)"
    s0, s1 = results[0].system, results[1].system
    assert s0.nsystems == 3 and s1.nsystems == 1 and s1.ninputs == 3  # a bank of SISO systems, one MIMO system
    want0 = np.stack([_impulse(s0.A[g], s0.B[g], s0.C[g], s0.D[g], lengths[0])[0, 0] for g in range(3)])
    h1 = _impulse(s1.A[0], s1.B[0], s1.C[0], s1.D[0], lengths[1])  # (p, m, L)
    np.testing.assert_allclose(K0, want0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(K1, np.stack([h1[i, i] for i in range(3)]), rtol=0, atol=1e-12)
    with torch.no_grad():  # the realisation's impulse response is the kernel
        np.testing.assert_allclose(K0, layers[0].kernel(lengths[0]).numpy(), rtol=0, atol=1e-10)


# ---- the commands: ssmkit analyze and ssmkit zoo ----


def _trainer_checkpoint(path, saved=torch.float32, extra=None):
    """A file in the layout of 'ssmkit train' (hyper_parameters["model"], state_dict keys prefixed "model."), its
    weights saved in ``saved``."""
    from ssmkit.models import SequenceModel, SequenceModelConfig

    config = SequenceModelConfig(d_input=2, d_model=3, n_layers=1, layer="s4d", d_output=1,
                                 layer_options={"d_state": 4})
    torch.manual_seed(3)
    model = SequenceModel.from_config(config)
    state = {f"model.{k}": v.to(saved) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"model": config.to_dict()}, "state_dict": {**state, **(extra or {})}}, path)
    return model


def test_load_model_reads_each_layout_and_skips_the_other_weights(tmp_path):
    from ssmkit.analysis.commands import load_model
    from ssmkit.sysid import DeepWiener
    from ssmkit.sysid.ensemble import WienerEnsemble

    want = _trainer_checkpoint(tmp_path / "last.ckpt", extra={"loss.weight": torch.ones(3), "xmodel.w": torch.ones(1)})
    got = load_model(str(tmp_path / "last.ckpt"))
    assert type(got).__name__ == "SequenceModel" and not got.training
    assert got.state_dict().keys() == want.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values()))
    _trainer_checkpoint(tmp_path / "half.ckpt", saved=torch.float16)
    assert load_model(str(tmp_path / "half.ckpt")).encoder.weight.dtype == torch.float32  # half weights: float32
    torch.manual_seed(0)
    members = [DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 4}, dt=0.5) for _ in range(2)]
    ensemble = WienerEnsemble(members)
    torch.save(ensemble.checkpoint(), tmp_path / "ensemble.pt")
    loaded = load_model(str(tmp_path / "ensemble.pt"))
    assert isinstance(loaded, WienerEnsemble) and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ensemble.state_dict().values()))
    torch.save({"state_dict": {}, "hyper_parameters": None}, tmp_path / "none.pt")
    with pytest.raises(ValueError, match=r"no hyper_parameters\['model'\].*found keys \['hyper_parameters', "
                                         r"'state_dict'\]"):
        load_model(str(tmp_path / "none.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint at '.*': a folder, holding none of"):
        load_model(str(tmp_path / "empty"))  # a folder stands for its run's checkpoint, if it holds one
    torch.save({"hyper_parameters": {"model": {}}}, tmp_path / "nostate.pt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        load_model(str(tmp_path / "nostate.pt"))
    torch.save({"state_dict": {}, "extra": _NotAWeight()}, tmp_path / "pickle.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # read with weights_only=True
        load_model(str(tmp_path / "pickle.pt"))


def test_the_default_output_folder():
    from ssmkit.analysis.commands import _default_out

    assert _default_out("/r/run/checkpoints/last.ckpt") == "/r/run/analysis"
    assert _default_out("/r/run/model.pt") == "/r/run/analysis"
    assert _default_out("/r/checkpoints2/x.ckpt") == "/r/checkpoints2/analysis"
    assert _default_out("last.ckpt") == os.path.join(os.getcwd(), "analysis")


@pytest.fixture
def fake_report(monkeypatch):
    """`write_report` replaced by a recorder that writes a summary "SUMMARY of <title>" and a JSON file."""
    calls = []

    def fake(model, out, **kwargs):
        calls.append((model, out, kwargs))
        os.makedirs(out, exist_ok=True)
        paths = {"poles": os.path.join(out, "poles.png"), "json": os.path.join(out, "analysis.json"),
                 "summary": os.path.join(out, "summary.md")}
        with open(paths["summary"], "w") as f:
            f.write(f"SUMMARY of {kwargs['title']}\n")
        return paths

    monkeypatch.setattr(report, "write_report", fake)
    return calls


def test_analyze_passes_its_options_on_and_prints_the_summary(tmp_path, capsys, fake_report, monkeypatch):
    from ssmkit.analysis import commands

    path = str(tmp_path / "checkpoints" / "last.ckpt")
    os.makedirs(os.path.dirname(path))
    _trainer_checkpoint(path)
    assert commands.analyze_main([path]) == 0
    (model, out, kwargs), = fake_report
    assert out == str(tmp_path / "analysis") and type(model).__name__ == "SequenceModel"
    assert kwargs == {"title": path, "dt": None, "channels": 8, "plots": True}
    assert capsys.readouterr().out == (f"SUMMARY of {path}\nanalysis in {out}: poles.png, analysis.json, "
                                       "summary.md\n")
    onnx = []
    monkeypatch.setattr(commands, "_write_onnx", lambda m, o, gaps, scaled: onnx.append((m, o, gaps, scaled)) or 7)
    assert commands.analyze_main([path, "--out", str(tmp_path / "o"), "--dt", "0.125", "--channels", "1",
                                  "--no-plots", "--onnx"]) == 7
    assert fake_report[1][1:] == (str(tmp_path / "o"), {"title": path, "dt": 0.125, "channels": 1, "plots": False})
    assert onnx == [(fake_report[1][0], str(tmp_path / "o"), False, None)]  # None: no task.json beside the file
    for argv, message in ((["--channels", "0"], "--channels must be >= 1; got 0"),
                          (["--dt", "nan"], "--dt must be the sampling time in seconds, a finite number > 0; got nan"),
                          (["--dt", "0"], "a finite number > 0; got 0.0")):
        with pytest.raises(SystemExit) as exit_:
            commands.analyze_main([path, *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert len(fake_report) == 2


def test_analyze_accepts_the_models_own_sampling_time_to_1e12(tmp_path, capsys, fake_report):
    from ssmkit.analysis import commands
    from ssmkit.sysid import DeepWiener

    Ts = 5e15 * 2**-53  # 0.555...: Ts ± 1e-12 Ts are floats whose distance to Ts is exactly fl(1e-12 Ts), the bound
    torch.manual_seed(0)
    torch.save(DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 4}, dt=Ts).checkpoint(),
               tmp_path / "model.pt")
    for dt in (Ts, Ts + 1e-12 * Ts, Ts - 1e-12 * Ts):  # within 1e-12 relative of Ts: the same sampling time
        assert abs(dt - Ts) in (0.0, 1e-12 * Ts)
        assert commands.analyze_main([str(tmp_path / "model.pt"), "--dt", repr(dt)]) == 0
        assert fake_report[-1][2]["dt"] == dt and fake_report[-1][1] == str(tmp_path / "analysis")
    for dt in (Ts + 1.4e-12 * Ts, Ts - 1.4e-12 * Ts):
        with pytest.raises(SystemExit):
            commands.analyze_main([str(tmp_path / "model.pt"), "--dt", repr(dt)])
        assert f"carries its sampling time Ts = {Ts:g} s" in capsys.readouterr().err
    assert len(fake_report) == 3


class _NotAWeight:
    """A pickled object that ``torch.load(weights_only=True)`` refuses to build."""


class _Info:
    def __init__(self, path, names, shapes):
        self.path, self.state_names, self.state_shapes = path, names, shapes
        self.interval_name = None  # the regularly sampled graphs (OnnxExport's field)


def _exporters(monkeypatch, step, sequence):
    """Replace both exporters: each behaviour is an _Info's (names, shapes) or an exception to raise."""
    from ssmkit.analysis import onnx_export, onnx_sequence

    calls = []

    def make(kind, behaviour):
        def export(model, path, **kwargs):
            calls.append((kind, os.path.basename(path), kwargs))
            todo = behaviour(kwargs) if callable(behaviour) else behaviour
            if isinstance(todo, BaseException):
                raise todo
            return _Info(path, *todo)
        return export

    monkeypatch.setattr(onnx_export, "export_onnx", make("step", step))
    monkeypatch.setattr(onnx_sequence, "export_onnx_sequence", make("sequence", sequence))
    return calls


class _M:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def test_write_onnx_prints_each_graphs_inputs_and_falls_back_to_a_stateless_sequence(tmp_path, capsys, monkeypatch):
    from ssmkit.analysis.commands import _write_onnx

    state = (("state_0", "state_1", "state_2"), ((3, 2, 2), (3, 2, 2), (5,)))
    calls = _exporters(monkeypatch, state, state)
    assert _write_onnx(_M(d_input=4), str(tmp_path)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{tmp_path / 'step.onnx'}: inputs u (B, 4), state_0..state_1 (B, 3, 2, 2), state_2 (B, 5); "
                   "outputs y and next_state_0, ...",
                   f"{tmp_path / 'sequence.onnx'}: inputs u (B, L, 4), state_0..state_1 (B, 3, 2, 2), state_2 (B, 5); "
                   "outputs y and next_state_0, ..."]
    assert calls == [("step", "step.onnx", {"intervals": False}), ("sequence", "sequence.onnx", {"intervals": False})]
    calls.clear()
    growing = NotImplementedError("the state grows: export with with_state=False")
    calls = _exporters(monkeypatch, growing, lambda kw: ((), ()) if kw.get("with_state") is False else growing)
    assert _write_onnx(_M(n_inputs=2), str(tmp_path)) == 1  # no step graph
    printed = capsys.readouterr()
    assert printed.err == "step.onnx not written: the state grows: export with with_state=False\n"
    assert printed.out.splitlines() == [
        "sequence.onnx: without a state (from rest), the model's state grows with the sequence",
        f"{tmp_path / 'sequence.onnx'}: inputs u (B, L, 2), no state; outputs y"]
    assert calls == [("step", "step.onnx", {"intervals": False}), ("sequence", "sequence.onnx", {"intervals": False}),
                     ("sequence", "sequence.onnx", {"with_state": False})]
    _exporters(monkeypatch, ImportError("no onnxscript"), NotImplementedError("complex state"))
    assert _write_onnx(_M(), str(tmp_path)) == 1
    printed = capsys.readouterr()
    assert printed.err.splitlines() == ["step.onnx not written: no onnxscript", "sequence.onnx not written: complex state"]
    assert printed.out == ""
    _exporters(monkeypatch, ((), ()), ((), ()))
    assert _write_onnx(_M(d_input=None, n_inputs=None), str(tmp_path)) == 0
    assert "inputs u (B, m), no state; outputs y\n" in capsys.readouterr().out  # the width unknown: "m"
    # the training's input standardisation (task.json's input_mean, input_std) is said last
    assert _write_onnx(_M(d_input=4), str(tmp_path), standardised="u: standardise (x - mean) / std") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "u: standardise (x - mean) / std"


def test_state_summary_groups_consecutive_parts_of_one_shape():
    from ssmkit.analysis.commands import _state_summary

    names = tuple(f"state_{i}" for i in range(6))
    shapes = ((4, 2), (4, 2), (4, 2), (3,), (4, 2), (4, 2))
    assert _state_summary(names, shapes) == ("state_0..state_2 (B, 4, 2), state_3 (B, 3), state_4..state_5 (B, 4, 2)")
    assert _state_summary(names[:1], shapes[:1]) == "state_0 (B, 4, 2)"
    assert _state_summary((), ()) == "no state"


def test_zoo_prints_and_writes_the_tables(tmp_path, capsys, monkeypatch):
    from ssmkit.analysis import commands, zoo

    assert commands.zoo_main(["--d-model", "32"]) == 0
    table = zoo.zoo_table(d_model=32)
    assert capsys.readouterr().out == zoo.to_markdown(table)
    assert zoo.to_markdown(table) != zoo.to_markdown(zoo.zoo_table())  # the state sizes depend on the width
    model = _trainer_checkpoint(tmp_path / "c.ckpt")
    monkeypatch.setattr(commands, "load_model", lambda path: model if path == "c.ckpt" else None)
    measured = zoo.pole_statistics(model)
    default = zoo.zoo_table()
    assert commands.zoo_main(["--checkpoint", "c.ckpt", "--format", "csv", "--out", str(tmp_path / "z")]) == 0
    printed = capsys.readouterr()  # the tables alone on stdout (`> table.csv`), the files written on stderr
    assert printed.out == zoo.to_csv(default) + "\n" + zoo.to_csv(default, measured)
    assert printed.err == f"zoo.md, zoo.csv, poles.csv in {tmp_path / 'z'}\n"
    files = {name: open(tmp_path / "z" / name).read() for name in sorted(os.listdir(tmp_path / "z"))}
    assert files == {"poles.csv": zoo.to_csv(default, measured), "zoo.csv": zoo.to_csv(default),
                     "zoo.md": zoo.to_markdown(default, measured)}
    assert commands.zoo_main(["--format", "csv", "--out", str(tmp_path / "z")]) == 0  # an existing folder
    printed = capsys.readouterr()
    assert printed.out == zoo.to_csv(default) and printed.err == (  # the earlier run's poles.csv removed, said
        f"zoo.md, zoo.csv in {tmp_path / 'z'}\nremoved {tmp_path / 'z' / 'poles.csv'}: it held an earlier "
        "checkpoint's poles (this run has no --checkpoint)\n")
    assert open(tmp_path / "z" / "zoo.md").read() == zoo.to_markdown(default)
    assert sorted(os.listdir(tmp_path / "z")) == ["zoo.csv", "zoo.md"]
    with pytest.raises(SystemExit) as exit_:
        commands.zoo_main(["--d-model", "0"])
    assert exit_.value.code == 2 and "--d-model must be >= 1; got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot be built with its defaults at d_model=1"):  # past the check: zoo's
        commands.zoo_main(["--d-model", "1"])


# ---- the ONNX step export ----


def _rot(a, b):
    return np.array([[a, -b], [b, a]])


def _banks():
    """(name, StateSpace, kind, M or n, how the reference's state x maps to the exported state), G = 2, m = 2, p = 3."""
    rng = np.random.default_rng(7)
    G, m, p = 2, 2, 3
    real = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    cplx = lambda *shape: rng.standard_normal(shape) + 1j * rng.standard_normal(shape)  # noqa: E731
    out = []
    lam = 0.9 * np.exp(1j * rng.uniform(0.2, 3.0, (G, 3))) * rng.uniform(0.5, 1, (G, 3))
    A = np.stack([np.diag(v) for v in lam])
    out.append(("complex diagonal", StateSpace(A, cplx(G, 3, m), cplx(G, p, 3), real(G, p, m)), "modal", 3,
                lambda x: np.stack([x.real, x.imag], -1)))
    A = np.zeros((G, 4, 4))
    for g in range(G):
        A[g, :2, :2], A[g, 2:, 2:] = _rot(0.6, 0.5 + g / 10), _rot(-0.3, -0.7)
    out.append(("rotation blocks", StateSpace(A, real(G, 4, m), real(G, p, 4), real(G, p, m)), "modal", 2,
                lambda x: np.stack([x[..., 0::2], x[..., 1::2]], -1)))
    A2 = A.copy()
    A2[:, :2, :2] = _rot(0.6, 0.5).T  # [[a, b], [-b, a]]: the conjugate mode, still modal
    out.append(("transposed blocks", StateSpace(A2, real(G, 4, m), real(G, p, 4), real(G, p, m)), "modal", 2,
                lambda x: np.stack([x[..., 0::2], x[..., 1::2]], -1)))
    A = np.stack([np.diag([0.9, -0.4, 0.1]), np.diag([0.5, 0.0, -0.95])])
    out.append(("real diagonal", StateSpace(A, real(G, 3, m), real(G, p, 3), real(G, p, m)), "diagonal", 3,
                lambda x: x))
    out.append(("one state", StateSpace(np.full((G, 1, 1), 0.7), real(G, 1, m), real(G, p, 1), real(G, p, m)),
                "diagonal", 1, lambda x: x))
    lam = np.array([[0.9, -0.5], [0.3, 0.8]]) + 0j  # complex storage, real eigenvalues: a diagonal real form
    out.append(("complex with real poles", StateSpace(np.stack([np.diag(v) for v in lam]), cplx(G, 2, m),
                                                      cplx(G, p, 2), real(G, p, m)), "diagonal", 4,
                lambda x: np.concatenate([x.real, x.imag], -1)))
    A3 = A2.copy()
    A3[:, 1, 1] = 0.5  # a block [[a, -b], [b, c]] with c != a
    out.append(("unequal block", StateSpace(A3, real(G, 4, m), real(G, p, 4), real(G, p, m)), "dense", 4,
                lambda x: x))
    A4 = A2.copy()
    A4[:, 0, 3] = 0.1  # an entry outside the 2x2 blocks
    out.append(("coupled blocks", StateSpace(A4, real(G, 4, m), real(G, p, 4), real(G, p, m)), "dense", 4,
                lambda x: x))
    A5 = 0.3 * real(G, 3, 3)
    out.append(("odd dense", StateSpace(A5, real(G, 3, m), real(G, p, 3), real(G, p, m)), "dense", 3, lambda x: x))
    A6 = 0.3 * cplx(G, 2, 2)
    out.append(("complex dense", StateSpace(A6, cplx(G, 2, m), cplx(G, p, 2), real(G, p, m)), "dense", 4,
                lambda x: np.concatenate([x.real, x.imag], -1)))
    A7 = np.triu(0.3 * cplx(G, 3, 3))  # some off-diagonal entries nonzero, some zero: not diagonal
    out.append(("complex triangular", StateSpace(A7, cplx(G, 3, m), cplx(G, p, 3), real(G, p, m)), "dense", 6,
                lambda x: np.concatenate([x.real, x.imag], -1)))
    A8 = np.stack([_rot(0.7, 0.4), _rot(-0.2, 0.9)])  # n = 2: one rotation block per system
    out.append(("one block", StateSpace(A8, real(G, 2, m), real(G, p, 2), real(G, p, m)), "modal", 1,
                lambda x: np.stack([x[..., 0::2], x[..., 1::2]], -1)))
    return out


@pytest.mark.parametrize("case", range(12), ids=[c[0] for c in _banks()])
def test_the_real_step_runs_each_realisation_as_a_float64_loop_does(case):
    from ssmkit.analysis.onnx_export import RealLTIStep

    name, system, kind, size, to_state = _banks()[case]
    step = RealLTIStep(system, dtype=torch.float64)
    assert (step.kind, step.modal, step.d_model, step.G, step.m, step.p) == (kind, kind != "dense", 4, 2, 2, 3)
    shape = (2, size, 2) if kind == "modal" else (2, size)
    assert step.state_shape() == shape and step.state_spec().shape == shape
    assert step.state_spec().dtype == torch.float64 and step.state_device() == torch.device("cpu")
    zero = step.initial_state(5)
    assert zero.shape == (5,) + shape and zero.dtype == torch.float64 and not zero.any()
    rng = np.random.default_rng(case)
    A, B, C, D = system.A, system.B, system.C, system.D
    n = A.shape[1]
    x = (rng.standard_normal((4, 2, n)) + (1j * rng.standard_normal((4, 2, n)) if system.is_complex else 0))
    u = rng.standard_normal((6, 4, 2, 2))  # (L, batch, G, m)
    state = torch.from_numpy(np.ascontiguousarray(to_state(x)))
    for t in range(6):
        y = np.einsum("gpn,bgn->bgp", C, x).real + np.einsum("gpm,bgm->bgp", D, u[t])  # y = Re(C x) + D u
        x = np.einsum("gij,bgj->bgi", A, x) + np.einsum("gnm,bgm->bgn", B, u[t])
        got, state = step.step(torch.from_numpy(u[t].reshape(4, 4)), state)  # x_t (B, G·m)
        assert got.shape == (4, 6) and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), y.reshape(4, 6), rtol=0, atol=1e-12 * np.abs(y).max())
        np.testing.assert_allclose(state.numpy(), to_state(x), rtol=0, atol=1e-12 * np.abs(x).max())
    single = RealLTIStep(system)  # float32 by default: buffers and state; y back in the input's dtype
    assert single.initial_state(1).dtype == torch.float32 and single.D.dtype == torch.float32
    y32, s32 = single.step(torch.from_numpy(u[0].reshape(4, 4)), state.float())
    assert y32.dtype == torch.float64 and s32.dtype == torch.float32
    y64, s64 = step.step(torch.from_numpy(u[0].reshape(4, 4)), state)
    assert 0 < (y32 - y64).abs().max() <= 1e-5 * y64.abs().max()


def _wiener64(layer="s4d", options=None, seed=0):
    from ssmkit.sysid import DeepWiener

    torch.manual_seed(seed)
    return DeepWiener(2, 1, d_model=3, n_layers=2, layer=layer, layer_options=options or {"d_state": 4}, dt=0.1,
                      activation="tanh", dtype=torch.float64).eval()


def _steps(model, u, state):
    """The step loop of tests.conftest, without gradients."""
    with torch.no_grad():
        return run_steps(model, u, state)


@pytest.mark.parametrize("layer,options,kind", [("s4d", {"d_state": 4}, "modal"), ("s4", {"d_state": 4}, "dense"),
                                                ("s5", {"d_state": 4, "blocks": 1}, "modal"),
                                                ("ema", {}, "diagonal"),
                                                ("s4d", {"d_state": 4, "init": "real"}, "diagonal")])
def test_the_real_step_model_continues_from_the_forward_state_in_onnx_state(layer, options, kind):
    """`real_step_model`'s step from `onnx_state` of a forward state equals the model's own step from that state."""
    from ssmkit.analysis.onnx_export import RealLTIStep, StepFunction, onnx_state, real_step_model

    model = _wiener64(layer, options)
    model.check_finite = True
    converted = real_step_model(model)
    assert [type(m).__name__ for m in converted.layers] == ["RealLTIStep"] * 2 and converted.layers[0].kind == kind
    assert type(model.layers[0]).__name__ != "RealLTIStep" and model.check_finite is True  # the original untouched
    assert converted.check_finite is False and not converted.training
    u = torch.randn(3, 9, 2, dtype=torch.float64)
    with torch.no_grad():
        _, state = model(u[:, :4])
    want, final = _steps(model, u[:, 4:], state)
    parts = [torch.from_numpy(p) for p in onnx_state(model, state)]
    assert [tuple(p.shape) for p in parts] == [(3,) + RealLTIStep(m.state_space()).state_shape() for m in model.layers]
    assert all(p.dtype == torch.float64 for p in parts)
    got, _ = _steps(converted, u[:, 4:], parts)
    assert rel_err(got, want) <= 1e-12
    fn = StepFunction(converted)
    with torch.no_grad():
        y, *new = fn(u[:, 4], *parts)
    assert rel_err(y, want[:, 0]) <= 1e-12 and len(new) == 2
    with torch.no_grad():
        _, one = model.step(u[:, 4], state)
    for a, b in zip(new, onnx_state(model, one)):
        np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=1e-12)


def test_the_real_step_model_of_a_bare_lti_layer_is_its_realisation():
    import ssmkit.layers as layers
    from ssmkit.analysis.onnx_export import RealLTIStep, real_step_model

    torch.manual_seed(0)
    layer = layers.build("s4d", d_model=3, d_state=4, dtype=torch.float64)
    real = real_step_model(layer)
    assert isinstance(real, RealLTIStep) and real.kind == "modal" and real.dtype == torch.float64
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    want, _ = _steps(layer, u, layer.initial_state(2))
    got, _ = _steps(real, u, real.initial_state(2))
    assert rel_err(got, want) <= 1e-12


def test_onnx_state_of_nested_lists_and_of_a_mixers_core():
    from ssmkit.analysis.onnx_export import _layer_entries, onnx_state, real_step_model
    from ssmkit.models import SequenceModel

    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert _layer_entries([a, [b, (a, c)], [[c]]]) == [a, b, (a, c), c]
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=4, n_layers=1, layer="gss", d_output=1, head="regress", pool=None,
                          activation="tanh", dtype=torch.float64).eval()
    converted = real_step_model(model)
    u = torch.randn(2, 7, 2, dtype=torch.float64)
    with torch.no_grad():
        _, state = model(u[:, :3])
    want, _ = _steps(model, u[:, 3:], state)
    parts = [torch.from_numpy(p) for p in onnx_state(model, state)]
    assert any(p.shape[-1] == 2 for p in parts)  # the core's complex state as (..., M, 2) pairs
    got, _ = _steps(converted, u[:, 3:], _unflat(converted, parts))
    assert rel_err(got, want) <= 1e-12
    with pytest.raises(ValueError, match="state must be a list of 1 layer states"):
        onnx_state(model, [state[0], state[0]])


def test_onnx_state_refuses_what_the_graph_cannot_hold(monkeypatch):
    from ssmkit.analysis import onnx_export
    from ssmkit.models import SequenceModel

    model = _wiener64()
    with torch.no_grad():
        _, state = model(torch.randn(2, 3, 2, dtype=torch.float64))
    real = [torch.zeros(2, 3, 2, dtype=torch.float64), state[1]]  # a real state for a modal layer
    with pytest.raises(NotImplementedError, match=r"S4D's state \(2, 3, 2\) has no direct counterpart in the exported "
                                                  r"graph's modal realisation: start the ONNX graph from zeros"):
        onnx_export.onnx_state(model, real)
    with pytest.raises(ValueError, match="state must be a list of 2 layer states"):
        onnx_export.onnx_state(model, tuple(state[:1]))
    assert [p.shape for p in onnx_export.onnx_state(model, tuple(state))] == [(2, 3, 2, 2)] * 2  # a tuple is read too
    single = [p.dtype for p in onnx_export.onnx_state(_wiener64().float(), state)]  # float64 states, float32 weights
    assert single == [np.float32, np.float32]  # in the graph's dtype, the parameters'
    torch.manual_seed(0)
    gss = SequenceModel(d_input=2, d_model=4, n_layers=1, layer="gss", d_output=1, head="regress", pool=None)
    layer = gss.blocks[0].layer
    part = torch.zeros(2, 3, 4, dtype=torch.complex64)
    assert onnx_export._mixer_part(layer, part).shape == (2, 3, 4, 2)
    real_part = torch.ones(2, 3)
    assert onnx_export._mixer_part(layer, real_part) is real_part
    monkeypatch.setattr(onnx_export, "_inner_lti_layers", lambda layer: [])  # no modal core to hold the state
    with pytest.raises(NotImplementedError, match=r"GSS's complex state \(2, 3, 4\) has no direct counterpart in the "
                                                  r"exported graph \(its LTI cores' realisations: \[\]\)"):
        onnx_export._mixer_part(layer, part)


def test_a_liquid_s4_layer_continues_from_its_forward_state():
    from ssmkit.analysis.onnx_export import onnx_state, real_step_model

    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=3, n_layers=2, layer="liquid_s4", layer_options={"d_state": 4},
                          d_output=1, head="regress", pool=None, activation="tanh", dtype=torch.float64).eval()
    converted = real_step_model(model)
    assert [type(b.layer).__name__ for b in converted.blocks] == ["RealLiquidS4"] * 2
    u = torch.randn(2, 8, 2, dtype=torch.float64)
    with torch.no_grad():
        _, state = model(u[:, :4])
    want, _ = _steps(model, u[:, 4:], state)
    parts = [torch.from_numpy(p) for p in onnx_state(model, state)]
    assert len(parts) == 4 and parts[0].shape == (2, 3, 4)  # S4's [Re x, Im x] and the last inputs, per layer
    got, _ = _steps(converted, u[:, 4:], _unflat(converted, parts))
    assert rel_err(got, want) <= 1e-12


def test_onnx_state_of_an_ensemble_reads_its_members_lists_in_order():
    from ssmkit.analysis.onnx_export import onnx_state
    from ssmkit.sysid.ensemble import WienerEnsemble

    members = [_wiener64(seed=1), _wiener64(seed=2)]
    ensemble = WienerEnsemble(members).eval()
    with torch.no_grad():
        _, state = ensemble(torch.randn(2, 5, 2, dtype=torch.float64))
    assert len(state) == 2 and all(isinstance(s, list) and len(s) == 2 for s in state)  # one list per member
    want = [p for m, s in zip(members, state) for p in onnx_state(m, s)]
    got = onnx_state(ensemble, state)
    assert len(got) == 4 and all(np.array_equal(a, b) for a, b in zip(got, want))


def _unflat(converted, parts):
    from ssmkit.analysis.onnx_export import _unflatten

    return _unflatten(converted.initial_state(1), list(parts))[0]


def test_the_export_record_gives_zero_states_of_each_part():
    from ssmkit.analysis.onnx_export import OnnxExport

    info = OnnxExport("f.onnx", "u", ("state_0", "state_1"), ("y", "next_state_0", "next_state_1"), ((3, 2, 2), (5,)),
                      (np.dtype("float64"), np.dtype("float32")))
    assert info.batch_size is None
    with pytest.raises(dataclasses.FrozenInstanceError):  # a record of what was written
        info.path = "g.onnx"
    for B, got in ((1, info.initial_state()), (4, info.initial_state(4))):
        assert [(p.shape, p.dtype) for p in got] == [((B, 3, 2, 2), np.float64), ((B, 5), np.float32)]
        assert not any(p.any() for p in got)
    for bad in (0, -1, 2.0, "2"):
        with pytest.raises(ValueError, match=r"batch_size must be an int >= 1; got"):
            info.initial_state(bad)
    fixed = OnnxExport("f.onnx", "u", ("state_0",), ("y", "next_state_0"), ((2,),), (np.dtype("float32"),), 3)
    assert [p.shape for p in fixed.initial_state()] == [(3, 2)] and [p.shape for p in fixed.initial_state(3)] == [(3, 2)]
    with pytest.raises(ValueError, match=r"batch_size must be 3 \(the graph's fixed batch size\); got 1"):
        fixed.initial_state(1)


def test_the_example_input_and_the_refused_states(tmp_path, monkeypatch):
    from ssmkit.analysis import onnx_export
    from ssmkit.models import SequenceModel

    x = onnx_export._example_input(_wiener64(), 3)
    assert x.shape == (3, 2) and x.dtype == torch.float64 and not x.any()
    torch.manual_seed(0)
    tokens = SequenceModel(d_input=1, vocab_size=5, d_model=2, n_layers=1, layer="s4d", d_output=1, head="regress",
                           pool=None)
    ids = onnx_export._example_input(tokens, 2)
    assert ids.shape == (2,) and ids.dtype == torch.int64 and not ids.any()
    seq = SequenceModel(d_input=3, d_model=2, n_layers=1, layer="s4d", d_output=1, head="regress", pool=None)
    assert onnx_export._example_input(seq, 2).shape == (2, 3)
    attention = SequenceModel(d_input=2, d_model=4, n_layers=1, layer="attention", layer_options={"n_heads": 2},
                              d_output=1, head="regress", pool=None)
    with pytest.raises(NotImplementedError, match=r"state part 0 \(2, 2, 0, 64\) has a growing axis"):
        onnx_export.export_onnx(attention, str(tmp_path / "a.onnx"))
    monkeypatch.setattr(onnx_export, "real_step_model", lambda model: model)  # the complex states left in place
    with pytest.raises(NotImplementedError, match=r"state part 0 is complex \(torch.complex128\)"):
        onnx_export.export_onnx(_wiener64(), str(tmp_path / "c.onnx"))
    assert os.listdir(tmp_path) == []


def test_the_step_graph_in_onnxruntime_equals_the_float64_step(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from ssmkit.analysis import onnx_export

    model = _wiener64()
    path = tmp_path / "step.onnx"
    info = onnx_export.export_onnx(model, str(path))
    assert (info.path, info.input_name, info.batch_size) == (str(path), "u", None)
    assert info.state_names == ("state_0", "state_1") and info.output_names == ("y", "next_state_0", "next_state_1")
    assert info.state_shapes == ((3, 2, 2), (3, 2, 2)) and info.state_dtypes == (np.float64, np.float64)
    assert os.listdir(tmp_path) == ["step.onnx"]  # no partial file left
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["u", "state_0", "state_1"]
    assert [o.name for o in graph.graph.output] == ["y", "next_state_0", "next_state_1"]
    assert {o.domain: o.version for o in graph.opset_import}[""] == 18
    assert all(not i.type.tensor_type.shape.dim[0].HasField("dim_value") for i in graph.graph.input)  # dynamic batch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for B in (1, 3):
        u = torch.randn(B, 8, 2, dtype=torch.float64)
        with torch.no_grad():
            _, state = model(u[:, :3])
        want, final = _steps(model, u[:, 3:], state)
        parts, got = onnx_export.onnx_state(model, state), []
        for t in range(3, 8):
            y, *parts = session.run(None, {"u": u[:, t].numpy(), **dict(zip(info.state_names, parts))})
            got.append(torch.from_numpy(y))
        assert rel_err(torch.stack(got, 1), want) <= 1e-12
        for a, b in zip(parts, onnx_export.onnx_state(model, final)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())

    def broken(*args, **kwargs):
        open(args[2], "w").close()  # a partial file, then the exporter's own error
        raise RuntimeError("no converter for aten::frobnicate")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(NotImplementedError, match=r"^DeepWiener.step could not be exported to ONNX: no converter for "
                                                  r"aten::frobnicate$"):
        onnx_export.export_onnx(model, str(tmp_path / "broken.onnx"))
    assert os.listdir(tmp_path) == ["step.onnx"]

    def missing(*args, **kwargs):
        raise ImportError("onnxscript is not installed")

    monkeypatch.setattr(torch.onnx, "export", missing)
    with pytest.raises(ImportError, match="onnxscript is not installed"):
        onnx_export.export_onnx(model, str(tmp_path / "missing.onnx"))


@pytest.mark.parametrize("module,names", [
    ("report", {"layer_record", "slowest_modes", "summary_markdown", "write_report"}),
    ("commands", {"analyze_main", "load_model", "zoo_main"}),
    ("onnx_export", {"OnnxExport", "RealLTIStep", "StepFunction", "export_onnx", "onnx_state", "real_step_model"}),
])
def test_the_star_import_gives_the_public_names(module, names):
    namespace = {}
    exec(f"from ssmkit.analysis.{module} import *", namespace)
    assert set(namespace) - {"__builtins__"} == names


def test_export_onnx_traces_an_example_batch_of_2_or_the_fixed_batch(tmp_path, monkeypatch):
    """torch.onnx.export replaced by a recorder: the example batch (2 for a dynamic axis, documented; B when fixed,
    1 included), the dynamic batch axis of every input, the names and the opset it is given."""
    from ssmkit.analysis import onnx_export

    calls = []

    def record(fn, args, path, **kwargs):
        calls.append((args, kwargs))
        open(path, "w").close()

    monkeypatch.setattr(torch.onnx, "export", record)
    model = _wiener64()
    info = onnx_export.export_onnx(model, str(tmp_path / "d.onnx"))
    (args, kwargs), = calls
    assert [tuple(a.shape) for a in args] == [(2, 2), (2, 3, 2, 2), (2, 3, 2, 2)]
    assert kwargs["input_names"] == ["u", "state_0", "state_1"]
    assert kwargs["output_names"] == ["y", "next_state_0", "next_state_1"] and kwargs["opset_version"] == 18
    u_axes, state_axes = kwargs["dynamic_shapes"]
    assert list(u_axes) == [0] and [list(a) for a in state_axes] == [[0], [0]]
    assert all(a[0] is u_axes[0] for a in state_axes) and u_axes[0].__name__ == "batch"  # one named batch axis
    assert info.batch_size is None and os.listdir(tmp_path) == ["d.onnx"]
    for B in (1, 4):
        calls.clear()
        info = onnx_export.export_onnx(model, str(tmp_path / f"f{B}.onnx"), batch_size=B, opset_version=17)
        (args, kwargs), = calls
        assert [a.shape[0] for a in args] == [B] * 3 and kwargs["dynamic_shapes"] is None
        assert kwargs["opset_version"] == 17 and info.batch_size == B
        assert [p.shape for p in info.initial_state()] == [(B, 3, 2, 2)] * 2
