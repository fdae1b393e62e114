"""New-user probe of missing outputs in system identification and of the ONNX exports with sampling intervals
(2026-12-06), as a control engineer and an ML deployment engineer would use them from the README.

- ``export_onnx`` / ``export_onnx_sequence`` refused a bare sequence layer ("cannot tell the input width of S4D: it
  needs d_input or n_inputs"), though every part of the export handles one: the input width is now the layer's
  ``d_model`` and ``onnx_state`` takes the layer's own state.
- ``OnnxExport.feed`` checked the gaps but not the state: onnxruntime broadcast a state of batch 1 against a larger
  batch of ``u`` in the graphs with intervals (the regular graphs refused it), so every sequence silently started
  from that one state; ``feed`` now refuses a state part whose shape is not (B, *its shape).
- ``write_report`` stopped with an IndexError (report.md never written) when a test record had an output with no
  measured sample after its init window (``evaluate`` scores it NaN, as documented).
- The error spectrum of an output measured at a fraction of the samples (an output sampled slower than the inputs)
  ran up to 1 / (2 Ts): its Lomb-Scargle periodogram is periodic in frequency with period 1 / (k Ts) when every
  k-th sample is measured, so the figure drew aliases of its band as if they were signal. It now stops below the
  measured samples' own Nyquist frequency, 1 / (2 T_m), T_m their median gap.
- ``ssmkit analyze --onnx --intervals`` did not say what the interval counts (periods of the model's Ts, which for
  irregular data is the median gap or ``--dt``); it now prints it.

References: numpy's and scipy's simulation of each layer's exported realisation (principal matrix logarithm, matrix
exponential at each gap), numpy masked sums over the measured samples, the closed-form amplitude of a sinusoid (A / 2
on the |DFT| / L scale), the models' own forward where the reference is the model itself.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.linalg
import torch

from ssmkit import layers
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.wiener import DeepWiener

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

F64 = torch.float64
GAPS = [1.0, 0.25, 3.7, 1e3, 1e-5, 2.0, 1.0, 0.5, 40.0, 1.3]  # a huge gap (1 000 periods) and a tiny one among them


def _session(path: str):
    # onnxruntime <= 1.30 fuses a float64 SiLU into QuickGelu, which it has for float32 only (as the suite's tests)
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"], disabled_optimizers=["QuickGeluFusion"])


def scipy_reference(layer, u: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """y (B, L, G·p) of ``layer`` at the gaps ``tau`` (B, L), from its exported realisation at a gap of 1 alone
    (``state_space()``: A = Ā, B = B̄, C' = C Ā, D' = D + C B̄ per group): the continuous generator A_c = logm(Ā)
    (principal), Ā_τ = expm(τ A_c), B̄_τ = (Ā_τ − I)(Ā − I)⁻¹ B̄ (the zero-order hold of the same continuous system),
    x_k = Ā_τ x_{k−1} + B̄_τ u_k, y_k = Re(C x_k + D u_k), from rest."""
    ss = layer.state_space()
    A, Bm, Cp, Dp = (np.asarray(a, dtype=np.complex128) for a in (ss.A, ss.B, ss.C, ss.D))
    G, n, m = Bm.shape
    p = Cp.shape[1]
    batch, length, _ = u.shape
    y = np.zeros((batch, length, G * p))
    for g in range(G):
        Ac = scipy.linalg.logm(A[g])
        C = Cp[g] @ np.linalg.inv(A[g])
        D = Dp[g] - C @ Bm[g]
        K = np.linalg.solve(A[g] - np.eye(n), Bm[g])
        for b in range(batch):
            x = np.zeros(n, dtype=np.complex128)
            for k in range(length):
                A_tau = scipy.linalg.expm(tau[b, k] * Ac)
                u_k = u[b, k, g * m:(g + 1) * m]
                x = A_tau @ x + (A_tau - np.eye(n)) @ K @ u_k
                y[b, k, g * p:(g + 1) * p] = (C @ x + D @ u_k).real
    return y


_EXPORTS: dict = {}


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """``bare(name)``: a float64 bare layer (d_model 3) and its step and sequence graphs with intervals, exported once."""
    from ssmkit.analysis import export_onnx, export_onnx_sequence

    options = {"s4d": {"d_state": 4}, "s5": {"d_state": 8, "blocks": 2}}

    def get(name: str):
        if name not in _EXPORTS:
            torch.manual_seed(0)
            layer = layers.build(name, d_model=3, dtype=F64, **options[name]).eval()
            folder = tmp_path_factory.mktemp(f"bare_{name}")
            step = export_onnx(layer, str(folder / "step.onnx"), intervals=True)
            sequence = export_onnx_sequence(layer, str(folder / "sequence.onnx"), intervals=True)
            _EXPORTS[name] = (layer, step, sequence, _session(step.path), _session(sequence.path))
        return _EXPORTS[name]

    return get


# ------------------------------------------------------------------------------------------------------------
# ONNX with sampling intervals


@pytest.mark.parametrize("name", ["s4d", "s5"])
def test_a_bare_layer_exports_with_intervals_and_runs_at_scipys_samples(bare, name):
    """A bank (S4D) and a MIMO layer (S5): the sequence graph over the first 4 samples, then the step graph from the
    state it returned; batch 3 (odd), gaps from 1e-5 to 1 000 periods; against scipy's sampling of the continuous
    system at those gaps, and against the layer's own regular forward at gaps of 1."""
    from ssmkit.analysis.onnx_export import onnx_state

    layer, step, sequence, step_session, sequence_session = bare(name)
    assert step.interval_name == "interval" and sequence.interval_name == "intervals"
    torch.manual_seed(1)
    u = torch.randn(3, len(GAPS), 3, dtype=F64)
    tau = torch.tensor([GAPS, GAPS[::-1], GAPS[3:] + GAPS[:3]], dtype=F64)
    want = scipy_reference(layer, u.numpy(), tau.numpy())
    y_first, *parts = sequence_session.run(None, sequence.feed(u[:, :4].numpy(), None, tau[:, :4].numpy()))
    ys = [y_first]
    for t in range(4, len(GAPS)):
        y_t, *parts = step_session.run(None, step.feed(u[:, t].numpy(), parts, tau[:, t].numpy()))
        ys.append(y_t[:, None])
    got = np.concatenate(ys, 1)
    assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max()
    # the layer's own state after the record maps onto the graph's (onnx_state takes a bare layer's state)
    with torch.no_grad():
        _, final = layer(u, intervals=tau)
    assert max(float(np.abs(a - b).max()) for a, b in zip(parts, onnx_state(layer, final))) <= 1e-10
    # gaps of 1: the regularly sampled layer
    with torch.no_grad():
        regular, _ = layer(u)
    ones = np.ones(tau.shape)
    y_ones = sequence_session.run(None, sequence.feed(u.numpy(), None, ones))[0]
    assert np.abs(y_ones - regular.numpy()).max() <= 1e-12 * float(regular.abs().max())


def test_feed_refuses_a_state_of_another_batch(bare):
    """onnxruntime broadcast a batch-1 state against batch 3 in the graphs with intervals; feed now refuses it and
    names the shape it wants. With the right batch the step equals the layer's own step."""
    layer, step, _, step_session, _ = bare("s4d")
    u = np.random.default_rng(0).standard_normal((3, 3))
    tau = np.array([0.5, 2.0, 7.0])
    one = [np.ones((1,) + shape) for shape in step.state_shapes]
    with pytest.raises(ValueError, match=r"state_0 must have the shape \(3, 3, 2, 2\)"):
        step.feed(u, one, tau)
    with pytest.raises(ValueError, match=r"state_0 must have the shape \(1, 3, 2, 2\)"):
        step.feed(u[:1], [np.ones((3,) + shape) for shape in step.state_shapes], tau[:1])
    state = [np.repeat(part, 3, 0) for part in one]
    y, *_ = step_session.run(None, step.feed(u, state, tau))
    h = torch.view_as_complex(torch.from_numpy(state[0]).contiguous())  # (B, H, M): the layer's own state
    with torch.no_grad():
        want, _ = layer.step(torch.from_numpy(u), h, interval=torch.from_numpy(tau))
    assert np.abs(y - want.numpy()).max() <= 1e-12 * float(want.abs().max())


def test_analyze_says_the_intervals_are_in_periods_of_the_models_ts(tmp_path_factory):
    """A DeepWiener at Ts = 0.1 s (tests/sysid/test_irregular_records.py's realisation, through ``ssmkit analyze --onnx
    --intervals``, run once per process: tests/analysis/onnx_cache.py): the printed summary names the unit, and the
    sequence graph fed the gaps in seconds divided by 0.1 equals the model's forward with those intervals (gaps of
    0.1 s: its regular forward)."""
    from tests.analysis.onnx_cache import analyzed_realisation
    from tests.sysid.test_irregular_records import TS

    run = analyzed_realisation(tmp_path_factory)
    assert TS == 0.1 and run.code == 0
    assert "interval, intervals: the time since the previous sample in periods of the model's Ts = 0.1 s" in run.printed
    model = run.model
    session = _session(run.sequence.path)
    seconds = np.array([[0.1, 0.1, 0.25, 0.05, 0.1, 0.75]])
    torch.manual_seed(0)
    u = torch.randn(1, 6, 1, dtype=F64)
    state = [np.zeros((1,) + tuple(i.shape[1:])) for i in session.get_inputs()[2:]]
    feed = {"u": u.numpy(), "intervals": seconds / TS, **{i.name: s for i, s in zip(session.get_inputs()[2:], state)}}
    y = session.run(None, feed)[0]
    with torch.no_grad():
        want, _ = model(u, intervals=torch.from_numpy(seconds / TS))
        regular, _ = model(u[:, :2])
    assert np.abs(y - want.numpy()).max() <= 1e-12 * float(want.abs().max())
    assert np.abs(y[:, :2] - regular.numpy()).max() <= 1e-12 * float(regular.abs().max())


# ------------------------------------------------------------------------------------------------------------
# the report with missing outputs


def _bench(test_y: torch.Tensor, n_init: int, dt: float = 0.1) -> tuple[SysidBenchmark, DeepWiener]:
    """A two-output benchmark whose test record has the outputs ``test_y``, and an untrained float64 model."""
    g = torch.Generator().manual_seed(0)
    train = IORecord(torch.randn(200, 1, generator=g, dtype=F64), torch.randn(200, 2, generator=g, dtype=F64), dt, "tr")
    test = IORecord(torch.randn(len(test_y), 1, generator=g, dtype=F64), test_y, dt, "te")
    bench = SysidBenchmark("b", "b", [train], [test], n_init=n_init, unit=("m", "V"))
    torch.manual_seed(0)
    model = DeepWiener(1, 2, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4}, dt=dt, dtype=F64)
    model.set_normalisation([train.u], [train.y])
    return bench, model


def test_the_report_is_written_when_an_output_is_not_measured_after_the_init_window(tmp_path):
    from ssmkit.sysid.report import spectrum_figure, write_report
    from ssmkit.sysid.workflow import evaluate

    y = torch.randn(100, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    y[10:, 1] = float("nan")  # output 2 measured in the init window only
    y[[0, 17, 99], 0] = float("nan")
    bench, model = _bench(y, n_init=10)
    scores = evaluate(model, bench)
    rec = scores["records"][0]
    sim, yy = scores["simulations"][0].numpy(), y.numpy()
    seen = ~np.isnan(yy[10:, 0])
    want = np.sqrt(((sim[10:, 0] - yy[10:, 0])[seen] ** 2).mean())
    assert rec["samples"] == [88, 0] and abs(rec["rmse"][0] - want) <= 1e-12 * want and np.isnan(rec["rmse"][1])
    written = write_report(tmp_path, bench, "probe", scores, {}, plots=True)
    assert written == ["results.json", "report.md", "simulation.png", "error_spectrum.png"]
    assert "te: 88, 0 of 90" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["test"][0]["samples"] == [88, 0]
    fig = spectrum_figure(bench, scores["simulations"])
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 0


def test_the_spectrum_of_an_output_measured_every_tenth_sample_stops_at_its_nyquist():
    """y = sin(2π 0.02 t) measured at every tenth sample (Ts = 1 s): its Lomb-Scargle amplitude is A / 2 = 0.5 at
    0.02 Hz and at every alias 0.1 k ± 0.02 Hz up to 0.5 Hz; the figure now stops below 1 / (2 · 10 s) = 0.05 Hz and
    shows the one peak."""
    from ssmkit.sysid.report import spectrum_figure

    t = np.arange(2000.0)
    y = torch.tensor(np.stack([np.sin(2 * np.pi * 0.02 * t), np.cos(2 * np.pi * 0.03 * t)], 1))
    y[np.arange(2000) % 10 != 0, 0] = float("nan")  # output 1 every tenth sample, output 2 at every sample
    bench, _ = _bench(y, n_init=0, dt=1.0)
    fig = spectrum_figure(bench, [torch.zeros(2000, 2, dtype=F64)])  # error = −y
    for line in fig.axes[0].lines:  # measured and error, output 1
        f, a = line.get_xdata(), line.get_ydata()
        assert f.max() < 0.05 and f.max() > 0.049
        assert abs(f[np.argmax(a)] - 0.02) < 1e-12 and abs(a.max() - 0.5) < 1e-9
        assert np.sort(a)[-2] < 1e-9  # no alias: every other frequency of the grid holds no power
    f, a = fig.axes[1].lines[0].get_xdata(), fig.axes[1].lines[0].get_ydata()  # output 2: the FFT spectrum to 0.5 Hz
    assert f.max() == 0.5 and abs(a[np.argmin(np.abs(f - 0.03))] - 0.5) < 1e-9


def test_irregular_mimo_records_with_gaps_train_as_an_ensemble_and_score_on_the_measured_samples(tmp_path):
    """Two outputs, one 40 % missing, both missing at the first and last samples and over a stretch in the test
    record, irregular sample times, an average of two runs: the test scores, the samples counted, the validation
    score in the history and results.json all equal numpy's masked sums over the model's simulation."""
    from ssmkit.sysid.fit import split_tail
    from ssmkit.sysid.recipes import recipe_for_data
    from ssmkit.sysid.report import write_report
    from ssmkit.sysid.userdata import from_arrays
    from ssmkit.sysid.workflow import evaluate, identify

    rng = np.random.default_rng(0)
    n = 700
    t = np.cumsum(rng.uniform(0.5, 1.5, n)) * 0.1
    u = rng.standard_normal(n)
    y = np.stack([np.convolve(u, np.exp(-np.arange(40) / 6.0))[:n], np.tanh(np.convolve(u, np.ones(5))[:n])], 1)
    y[rng.random(n) < 0.4, 1] = np.nan
    y[0], y[-1], y[600:630] = np.nan, np.nan, np.nan
    bench = from_arrays(u, y, None, t=t, missing_outputs=True, unit=["m", "V"])
    recipe = dataclasses.replace(recipe_for_data(bench), steps=8, val_every=4, d_model=3, d_state=4, n_layers=1,
                                 restarts=2, combine="average")
    model, history = identify(bench, "s4d", recipe, seed=0)
    scores = evaluate(model, bench)
    rec, r, k0 = scores["records"][0], bench.test[0], bench.n_init
    sim, meas = scores["simulations"][0].numpy()[k0:], r.y.numpy()[k0:]
    seen = ~np.isnan(meas)
    err = np.where(seen, sim - np.nan_to_num(meas), 0.0)
    rmse = np.sqrt((err ** 2).sum(0) / seen.sum(0))
    std = np.array([meas[seen[:, k], k].std() for k in range(2)])
    assert rec["samples"] == seen.sum(0).tolist() and seen.sum(0)[1] < seen.sum(0)[0] < len(meas)
    assert np.allclose(rec["rmse"], rmse, rtol=1e-12) and np.allclose(rec["fit"], 100 * (1 - rmse / std), rtol=1e-12)
    # the ensemble's validation score: the last 20 % of the training record, simulated after the encoder's samples
    val = split_tail(bench.train, recipe.val_fraction, 1, 2)[1][0]
    m_enc, dtype = model.encoder_window, model.u_mean.dtype
    tau = val.intervals.to(dtype)[None]
    with torch.no_grad():
        state = model.estimate_state(val.u[None, :m_enc].to(dtype), val.y[None, :m_enc].to(dtype))
        y_val = model(val.u[None, m_enc:].to(dtype), state, intervals=tau[:, m_enc:])[0][0].double().numpy()
    v = val.y.numpy()[m_enc:]
    seen_v = ~np.isnan(v)
    rmse_v = np.sqrt(np.where(seen_v, (y_val - np.nan_to_num(v)) ** 2, 0.0).sum(0) / seen_v.sum(0))
    std_v = np.array([v[seen_v[:, k], k].std() for k in range(2)])
    assert np.allclose(history["best_val_rmse_per_output"], rmse_v, rtol=1e-9)
    assert abs(history["best_val_nrmse"] - float(np.mean(rmse_v / std_v))) <= 1e-9
    write_report(tmp_path, bench, "probe", scores, {}, plots=False)
    saved = json.loads((tmp_path / "results.json").read_text())["test"][0]
    assert saved["samples"] == seen.sum(0).tolist() and np.allclose(saved["rmse"], rmse, rtol=1e-12)
