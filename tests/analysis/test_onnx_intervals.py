"""The ONNX exports with sampling intervals (``intervals=True``: :mod:`ssmkit.analysis.onnx_irregular`).

References: the PyTorch model's own ``forward(u, intervals=)`` (whose layers form each step's coefficients by
:mod:`ssmkit.ops.irregular`, :mod:`ssmkit.ops.irregular_bank`, :mod:`ssmkit.ops.irregular_dplr` or their C kernels,
not by the exported real arithmetic), its regular ``forward`` for gaps of 1, and scipy's exact sampling of a
continuous-time system at a record's times (the oracle of tests/sysid/test_irregular_records.py, a DeepWiener built
to equal it). Every registered layer that takes intervals is exported once (module-scoped cache: the exports are the
slow part) and run by onnxruntime at random gaps, large (50 periods) and tiny (1e-6) ones among them, at batch sizes
and lengths other than the traced ones, from a state ``forward`` reached, through both graphs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit import layers
from ssmkit.analysis.onnx_export import _flatten, _unflatten, export_onnx, onnx_state
from ssmkit.analysis.onnx_irregular import irregular_model, modal_coefficients
from ssmkit.analysis.onnx_sequence import export_onnx_sequence
from ssmkit.models import SequenceModel
from tests.conftest import H, NEEDED_AT_TINY_WIDTH, rel_err, variants

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TAKERS = sorted(name for name in layers.available() if layers.layer_class(name).takes_intervals)
SLOW = {"mamba", "rglru"}  # their sequence graphs take 13-22 s to export (as without intervals)


def _model(name: str, dtype: torch.dtype = torch.float32, options: dict | None = None, n_layers: int = 1,
           d_model: int = H + 1):
    torch.manual_seed(0)
    opts = {**NEEDED_AT_TINY_WIDTH.get(name, {}), **(variants(name)[0] if options is None else options)}
    # tanh, not GELU: onnxruntime's CPU provider has no float64 Erf
    return SequenceModel(d_input=2, d_model=d_model, n_layers=n_layers, layer=name, layer_options=opts, d_output=3,
                         head="regress", pool=None, activation="tanh", dtype=dtype).eval()


def _session(path: str, dtype: torch.dtype = torch.float32):
    # onnxruntime <= 1.30 fuses a float64 SiLU into QuickGelu, which it has for float32 only (test_onnx_deployment.py)
    off = ["QuickGeluFusion"] if dtype == torch.float64 else None
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"], disabled_optimizers=off)


class Exported:
    """A model and its two graphs with intervals, with their onnxruntime sessions."""

    def __init__(self, model, folder, dtype=torch.float32):
        self.model, self.dtype = model, dtype
        self.step = export_onnx(model, str(folder / "step.onnx"), intervals=True)
        self.sequence = export_onnx_sequence(model, str(folder / "sequence.onnx"), intervals=True)
        self.step_session = _session(self.step.path, dtype)
        self.sequence_session = _session(self.sequence.path, dtype)

    @classmethod
    def of(cls, model, step, sequence, dtype):
        """The graphs ``step`` and ``sequence`` (`OnnxExport`) of ``model``, written elsewhere."""
        g = cls.__new__(cls)
        g.model, g.dtype, g.step, g.sequence = model, dtype, step, sequence
        g.step_session, g.sequence_session = _session(step.path, dtype), _session(sequence.path, dtype)
        return g

    def run_sequence(self, u, tau, parts):
        y, *parts = self.sequence_session.run(None, self.sequence.feed(u.numpy(), parts, tau.numpy()))
        return torch.from_numpy(y), parts

    def run_steps(self, u, tau, parts):
        ys = []
        for t in range(u.shape[1]):
            y, *parts = self.step_session.run(None, self.step.feed(u[:, t].numpy(), parts, tau[:, t].numpy()))
            ys.append(torch.from_numpy(y))
        return torch.stack(ys, 1), parts


_CACHE: dict = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name)``: the float32 one-block model of layer ``name`` and its graphs, exported once per module."""
    def get(name: str) -> Exported:
        if name not in _CACHE:
            _CACHE[name] = Exported(_model(name), tmp_path_factory.mktemp(f"onnx_intervals_{name}"))
        return _CACHE[name]

    return get


def gaps(B: int, L: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L) log-normal gaps (median 1, e^{±3} at 2σ), with a gap of 50 periods and one of 1e-6 in the first row."""
    g = torch.exp(1.5 * torch.randn(B, L, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    g[0, 0] = 50.0
    g[0, -1] = 1e-6
    return g.to(dtype)


def _states_err(got: list, model, want_state) -> float:
    return max(rel_err(torch.as_tensor(g), torch.from_numpy(w)) for g, w in zip(got, onnx_state(model, want_state)))


def _layer_params():
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in TAKERS]


def test_the_layers_that_take_intervals_are_the_ten():
    assert TAKERS == ["dlr", "dss", "ema", "lru", "mamba", "mamba2", "rglru", "s4", "s4d", "s5"]


@pytest.mark.parametrize("name", _layer_params())
def test_both_graphs_equal_the_model_at_random_gaps(exported, name):
    """onnxruntime, float32, from a state ``forward`` reached: the sequence graph at B, L other than the traced 2, 5
    against ``forward(u, state, intervals=)``; the step graph continuing a record where the sequence graph stopped,
    and the sequence graph continuing where the step graph stopped, against ``forward`` of the whole; gaps of 1
    against the regular ``forward``."""
    g = exported(name)
    model = g.model
    torch.manual_seed(1)
    for B, L in ((1, 2), (3, 37)):
        u, tau = torch.randn(B, 6 + L, 2), gaps(B, 6 + L, seed=L)
        with torch.no_grad():
            _, start = model(u[:, :6], intervals=tau[:, :6])
            want, final = model(u[:, 6:], start, intervals=tau[:, 6:])
        got, parts = g.run_sequence(u[:, 6:], tau[:, 6:], onnx_state(model, start))
        assert rel_err(got, want) <= 1e-5, (B, L, rel_err(got, want))
        assert _states_err(parts, model, final) <= 1e-5, (B, L)
    # the two graphs hand the state to each other: sequence (13 steps), step (6), sequence (6)
    u, tau = torch.randn(2, 25, 2), gaps(2, 25, seed=3)
    with torch.no_grad():
        want, final = model(u, intervals=tau)
    y1, parts = g.run_sequence(u[:, :13], tau[:, :13], None)
    y2, parts = g.run_steps(u[:, 13:19], tau[:, 13:19], parts)
    y3, parts = g.run_sequence(u[:, 19:], tau[:, 19:], parts)
    assert rel_err(torch.cat([y1, y2, y3], 1), want) <= 1e-5
    assert _states_err(parts, model, final) <= 1e-5
    # gaps of 1 are the regularly sampled model
    ones = torch.ones(2, 25)
    with torch.no_grad():
        regular, _ = model(u)
    assert rel_err(g.run_sequence(u, ones, None)[0], regular) <= 1e-5
    assert rel_err(g.run_steps(u[:, :4], ones[:, :4], None)[0], regular[:, :4]) <= 1e-5
    assert rel_err(regular, want) > 5e-4  # the gaps reached the layers (Mamba: 2.4e-3, its Δ small at init)


@pytest.mark.parametrize("name", _layer_params())
def test_the_step_graph_over_a_record_is_the_sequence_graph(exported, name):
    g = exported(name)
    u, tau = torch.randn(3, 11, 2), gaps(3, 11, seed=7)
    with torch.no_grad():
        _, start = g.model(u[:, :3], intervals=tau[:, :3])
    parts = onnx_state(g.model, start)
    y_seq, s_seq = g.run_sequence(u[:, 3:], tau[:, 3:], parts)
    y_step, s_step = g.run_steps(u[:, 3:], tau[:, 3:], parts)
    assert rel_err(y_step, y_seq) <= 1e-6
    assert max(rel_err(torch.from_numpy(a), torch.from_numpy(b)) for a, b in zip(s_step, s_seq)) <= 1e-6


@pytest.mark.parametrize("name", TAKERS)
def test_the_converted_model_equals_every_variant_in_float64(name):
    """`irregular_model`, eager, float64, every variant, two blocks: forward and step from a forward state at gaps
    from 1e-6 to 50, against the model's own (the ops' complex arithmetic and C kernels)."""
    for opts in variants(name):
        model = _model(name, torch.float64, opts, n_layers=2, d_model=6)  # 6: every Mamba-2 variant's headdim
        real = irregular_model(model)
        u, tau = torch.randn(2, 30, 2, dtype=torch.float64), gaps(2, 30, seed=5, dtype=torch.float64)
        with torch.no_grad():
            _, start = model(u[:, :10], intervals=tau[:, :10])
            want, final = model(u[:, 10:], start, intervals=tau[:, 10:])
            parts = [torch.from_numpy(p) for p in onnx_state(model, start)]
            mine = _unflatten(real.initial_state(1), parts)[0]
            got, got_final = real(u[:, 10:], mine, intervals=tau[:, 10:])
            assert rel_err(got, want) <= 1e-12, (opts, rel_err(got, want))
            assert max(rel_err(a, torch.from_numpy(b)) for a, b in zip(_flatten(got_final), onnx_state(model, final))
                       ) <= 1e-12, opts
            s, ys = mine, []
            for t in range(10, 30):
                y_t, s = real.step(u[:, t], s, interval=tau[:, t])
                ys.append(y_t)
            assert rel_err(torch.stack(ys, 1), want) <= 1e-12, opts


def test_float64_graphs_of_a_bilinear_s5(tmp_path):
    """The bilinear rule (S5's second variant: ``discretization="bilinear"``, ``step_rescale=2``) in float64."""
    model = _model("s5", torch.float64, variants("s5")[1])
    g = Exported(model, tmp_path, torch.float64)
    assert g.step.interval_dtype == np.float64 and g.sequence.state_dtypes[0] == np.float64
    u, tau = torch.randn(2, 40, 2, dtype=torch.float64), gaps(2, 40, seed=11, dtype=torch.float64)
    with torch.no_grad():
        want, final = model(u, intervals=tau)
    got, parts = g.run_sequence(u[:, :30], tau[:, :30], None)
    got2, parts = g.run_steps(u[:, 30:], tau[:, 30:], parts)
    # onnxruntime's LayerNormalization is ~1e-11 from torch's (test_onnx_deployment.py); every other op ~1e-16
    assert rel_err(torch.cat([got, got2], 1), want) <= 1e-9
    assert _states_err(parts, model, final) <= 1e-9


def test_a_deep_wiener_built_for_irregular_records_simulates_them_in_onnxruntime(tmp_path, tmp_path_factory):
    """The DeepWiener whose S4D block is a known continuous-time system (tests/sysid/test_irregular_records.py):
    onnxruntime's graphs, fed the record's intervals, give scipy's exact samples at the record's times; continued from
    the oracle's state after sample 39 by the step graph; the regular graph (no intervals) another system. The graphs
    with intervals are those ``ssmkit analyze --onnx --intervals`` wrote (tests/analysis/onnx_cache.py: one run per
    process, shared with test_analyze_writes_the_graphs_with_intervals and the 2026-12-06 probe)."""
    from tests.analysis.onnx_cache import analyzed_realisation
    from tests.sysid.test_irregular_records import irregular_record, realisation, sampled

    r = irregular_record(4, 120, "r")
    run = analyzed_realisation(tmp_path_factory)
    model, v_row = realisation()
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), model.state_dict().values()))
    g = Exported.of(model, run.step, run.sequence, torch.float64)
    u, tau = r.u[None], r.intervals[None]  # (1, L, 1), (1, L)
    scale = float(r.y.abs().max())
    y, _ = g.run_sequence(u, tau, None)
    assert float((y[0] - r.y).abs().max()) < 1e-9 * scale
    _, x = sampled(r.t.numpy(), r.u[:, 0].numpy())
    z = torch.tensor([[[complex(v_row @ x[39])]]], dtype=torch.complex128)  # the block's state: the oracle's mode
    y_steps, _ = g.run_steps(u[:, 40:], tau[:, 40:], onnx_state(model, [z]))
    assert float((y_steps[0] - r.y[40:]).abs().max()) < 1e-9 * scale
    regular = export_onnx_sequence(model, str(tmp_path / "regular.onnx"))
    y_regular = _session(regular.path, torch.float64).run(None, regular.feed(u.numpy()))[0]
    assert float(np.abs(y_regular[0] - r.y.numpy()).max()) > 0.05 * scale


class _Coefficients(torch.nn.Module):
    """`modal_coefficients` of the ZOH with a float32 graph's buffers (Re μ, Im μ float32, Im μ/2π float64)."""

    def __init__(self, mu: torch.Tensor):
        super().__init__()
        self.register_buffer("mu_re", mu.real.float().clone())
        self.register_buffer("mu_im", mu.imag.float().clone())
        self.register_buffer("turns", (mu.imag / (2 * np.pi)).clone())

    def forward(self, tau):
        return modal_coefficients(tau, self.mu_re, self.mu_im, "zoh", self.turns)


def test_the_coefficients_keep_their_digits_in_a_float32_graph(tmp_path):
    """Ā_τ = e^{τμ} and E = e^{τμ} − 1 from onnxruntime's float32 graph against numpy's complex128, at gaps from
    1e-7 to 2000 periods: Ā to 4e-7 absolute (the phase reduced in float64: a float32 τ Im μ is off by 1e-4 at
    φ = 6 000; written with a float64 2π the exporter rounds it to float32, 3e-4 off there), E to 1e-6 relative
    (Kahan's expm1: Ā − 1 is off by 6e-8 absolute, 6e-2 relative at |τμ| = 1e-6)."""
    mu = torch.tensor([[-1.13e-4 + 2.9137j, -0.51 + 0.1123j, -2.03 + 29.71j, -0.0317 + 0.0j]], dtype=torch.complex128)
    tau = torch.tensor([1.3e-7, 1.1e-5, 0.3, 1.0, 2.7, 47.3, 333.37, 1999.91], dtype=torch.float32)
    module = _Coefficients(mu)
    path = str(tmp_path / "coefficients.onnx")
    torch.onnx.export(module, (tau,), path, dynamo=True, external_data=False, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("n")},))
    a_re, a_im, e_re, e_im = _session(path).run(None, {"tau": tau.numpy()})
    z = tau.double().numpy()[:, None, None] * mu.numpy()  # the phase from the float64 μ, as the layer forms it
    a, e = np.exp(z), np.expm1(z.real) * np.cos(z.imag) - 2 * np.sin(z.imag / 2) ** 2 + 1j * np.exp(z.real) * np.sin(
        z.imag)
    assert np.abs(a_re + 1j * a_im - a).max() <= 4e-7
    assert (np.abs(e_re + 1j * e_im - e) / np.abs(e)).max() <= 1e-6


# ------------------------------------------------------------------------------------------------------------
# what is refused, and how the inputs are described


@pytest.mark.parametrize("name", ["gss", "attention", "liquid_s4"])
def test_a_layer_that_takes_no_intervals_is_refused_before_anything_is_written(tmp_path, name):
    model = _model(name)
    for export in (export_onnx, export_onnx_sequence):
        with pytest.raises(ValueError, match="does not take sampling intervals"):
            export(model, str(tmp_path / "g.onnx"), intervals=True)
    assert list(tmp_path.iterdir()) == []


def test_bad_options_are_refused(tmp_path):
    model = _model("s4d", options={"d_state": 4, "bidirectional": True})
    with pytest.raises(ValueError, match="bidirectional"):
        export_onnx_sequence(model, str(tmp_path / "g.onnx"), intervals=True)
    model = _model("s4d")
    with pytest.raises(ValueError, match="chunk_size is the regular graph's"):
        export_onnx_sequence(model, str(tmp_path / "g.onnx"), intervals=True, chunk_size=8)
    for export in (export_onnx, export_onnx_sequence):
        with pytest.raises(ValueError, match="intervals must be a bool"):
            export(model, str(tmp_path / "g.onnx"), intervals=1)
    assert list(tmp_path.iterdir()) == []


def test_the_export_says_which_inputs_the_graph_has(exported, tmp_path):
    g = exported("s4d")
    assert g.step.input_names == ("u", "interval", "state_0") and g.step.interval_name == "interval"
    assert g.sequence.input_names == ("u", "intervals", "state_0") and g.sequence.interval_name == "intervals"
    assert g.step.interval_dtype == np.float32
    for info, session in ((g.step, g.step_session), (g.sequence, g.sequence_session)):
        assert [i.name for i in session.get_inputs()] == list(info.input_names)
        assert session.get_inputs()[1].shape == (["batch"] if info is g.step else ["batch", "length"])
    regular = export_onnx(g.model, str(tmp_path / "regular.onnx"))
    assert regular.interval_name is None and regular.input_names == ("u", "state_0")
    with pytest.raises(ValueError, match="no interval input"):
        regular.feed(np.zeros((2, 2), np.float32), None, np.ones(2))


def test_bad_interval_inputs_are_refused(exported):
    """onnxruntime refuses another rank or dtype, and these graphs another batch size (a Mul's broadcast fails), but
    a graph cannot check values: `OnnxExport.feed` refuses every wrong shape and gaps that are not > 0."""
    g = exported("s4d")
    u, parts = np.zeros((3, 2), np.float32), g.step.initial_state(3)
    feed = dict(zip(g.step.state_names, parts), u=u)
    for bad in (np.ones((3, 1), np.float32), np.ones(3, np.float64), np.ones(1, np.float32), np.ones(4, np.float32)):
        with pytest.raises(Exception, match="ONNXRuntimeError"):  # rank, dtype; a shape mismatch inside the graph
            g.step_session.run(None, {**feed, "interval": bad})
    U = np.zeros((3, 7, 2), np.float32)
    seq_feed = dict(zip(g.sequence.state_names, g.sequence.initial_state(3)), u=U)
    for bad in (np.ones(7, np.float32), np.ones((3, 6), np.float32), np.ones((1, 7), np.float32),
                np.ones((3, 7), np.float64)):
        with pytest.raises(Exception, match="ONNXRuntimeError"):
            g.sequence_session.run(None, {**seq_feed, "intervals": bad})
    for bad, why in ((np.ones((3, 1)), r"shape \(3,\)"), (np.ones(1), r"shape \(3,\)"), (None, "takes 'interval'"),
                     (np.array([1.0, 0.0, 1.0]), "> 0"), (np.array([1.0, np.nan, 1.0]), "finite")):
        with pytest.raises(ValueError, match=why):
            g.step.feed(u, parts, bad)
    with pytest.raises(ValueError, match=r"shape \(3, 7\)"):
        g.sequence.feed(U, None, np.ones((3, 6)))
    with pytest.raises(ValueError, match="state must hold 1 parts"):
        g.step.feed(u, [], np.ones(3))
    ok = g.step.feed(u, None, [1.0, 2.0, 0.5])  # a list is converted to the graph's dtype
    assert ok["interval"].dtype == np.float32 and list(ok) == ["u", "interval", "state_0"]


# ------------------------------------------------------------------------------------------------------------
# the command line


def test_analyze_writes_the_graphs_with_intervals(tmp_path_factory, capsys):
    """``ssmkit analyze model.pt --onnx --intervals`` on the DeepWiener of a known continuous system (one run per
    process: tests/analysis/onnx_cache.py): the graphs take the intervals, and the sequence graph gives scipy's
    samples at the record's times."""
    from ssmkit.cli import main as cli_main
    from tests.analysis.onnx_cache import analyzed_realisation
    from tests.sysid.test_irregular_records import irregular_record

    run = analyzed_realisation(tmp_path_factory)
    assert run.code == 0
    printed = run.printed
    assert "step.onnx: inputs u (B, 1), interval (B), state_0 (B, 1, 1, 2); outputs y" in printed
    assert "sequence.onnx: inputs u (B, L, 1), intervals (B, L), state_0 (B, 1, 1, 2)" in printed
    r = irregular_record(5, 80, "r")
    session = _session(run.sequence.path, torch.float64)
    y = session.run(None, {"u": r.u[None].numpy(), "intervals": r.intervals[None].numpy(),
                           "state_0": np.zeros((1, 1, 1, 2))})[0]
    assert float(np.abs(y[0] - r.y.numpy()).max()) < 1e-9 * float(r.y.abs().max())
    assert cli_main(["analyze", run.model_pt, "--no-plots", "--intervals"]) == 2
    assert "give it with --onnx" in capsys.readouterr().err


def test_analyze_intervals_of_a_model_that_takes_none_writes_nothing(tmp_path, capsys):
    from ssmkit.analysis.commands import _write_onnx

    assert _write_onnx(_model("gss"), str(tmp_path), intervals=True) == 1
    err = capsys.readouterr().err
    assert "step.onnx not written" in err and "sequence.onnx not written" in err
    assert "GSS does not take sampling intervals" in err and list(tmp_path.iterdir()) == []
