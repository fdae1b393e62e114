"""The data the figures of ``ssmkit analyze`` draw (``ssmkit.analysis.plots``) against references written here (the
lead's round of stop 43): impulse responses by matrix powers in float64, step responses as their running sums, Bode
curves from C (zI − A)⁻¹ B + D solved at z = e^{jωdt} with numpy and scipy's ``dfreqresp``, the frequency grid's
ends, the channels each figure shows and the units of its axes. The figures are captured before they are saved and
their lines read back."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import signal

from ssmkit.analysis import plots
from ssmkit.analysis.layerwise import LayerAnalysis
from ssmkit.analysis.statespace import StateSpace
from tests.conftest import signature_defaults

pytest.importorskip("matplotlib")


def bank(G: int, n: int, m: int, p: int, seed: int, dt: float = 1.0, radius: float = 0.9) -> StateSpace:
    """A random stable bank: each A scaled to spectral radius ``radius``."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((G, n, n))
    A *= radius / np.abs(np.linalg.eigvals(A)).max(axis=-1)[:, None, None]
    return StateSpace(A, rng.standard_normal((G, n, m)), rng.standard_normal((G, p, n)), rng.standard_normal((G, p, m)),
                      dt=dt)


def analysis(system: StateSpace, tau: float, name: str = "blocks.0.layer") -> LayerAnalysis:
    """A LayerAnalysis of ``system`` with a given slowest time constant (the fields the figures read)."""
    z = system.poles()
    G = system.nsystems
    return LayerAnalysis(name=name, layer="stub", system=system, poles=z,
                         poles_continuous=np.log(z.astype(complex)) / system.dt,
                         spectral_abscissa=0.0, spectral_radius=float(np.abs(z).max()), stability_margin=0.0,
                         slowest_time_constant=tau, fastest_time_constant=0.0, dc_gain=np.zeros((G, 1, 1)),
                         hinf=np.arange(1.0, G + 1.0), h2=np.zeros(G), hankel=np.zeros((G, 1)))


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, by file name (nothing is written)."""
    seen = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: seen.__setitem__(str(path), fig))
    return seen


def transfer(system: StateSpace, g: int, i: int, j: int, omega: np.ndarray) -> np.ndarray:
    A, B, C, D = (np.asarray(M[g], dtype=np.float64) for M in (system.A, system.B, system.C, system.D))
    n = A.shape[0]
    return np.array([C[i] @ np.linalg.solve(np.exp(1j * w * system.dt) * np.eye(n) - A, B[:, j]) + D[i, j]
                     for w in omega])


def test_impulse_response_is_d_then_c_a_powers_b():
    system = bank(G=2, n=3, m=2, p=4, seed=0)
    h = plots.impulse_response(system, 7)
    assert h.shape == (2, 4, 2, 7) and h.dtype == np.float64
    for g in range(2):
        A, B, C, D = (np.asarray(M[g]) for M in (system.A, system.B, system.C, system.D))
        expected = [D] + [C @ np.linalg.matrix_power(A, k - 1) @ B for k in range(1, 7)]
        np.testing.assert_allclose(np.moveaxis(h[g], -1, 0), np.stack(expected), rtol=1e-12, atol=1e-14)
    siso = bank(G=1, n=3, m=1, p=1, seed=1)
    _, (expected,) = signal.dimpulse((siso.A[0], siso.B[0], siso.C[0], siso.D[0], 1.0), n=5)
    np.testing.assert_allclose(plots.impulse_response(siso, 5)[0, 0, 0], expected[:, 0], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(plots.impulse_response(system, 1)[..., 0], system.D)


def test_impulse_response_of_a_complex_bank_is_its_real_part():
    rng = np.random.default_rng(3)
    lam = 0.8 * np.exp(1j * rng.uniform(0, np.pi, (2, 3)))
    A = np.stack([np.diag(row) for row in lam])
    B = rng.standard_normal((2, 3, 1)) + 1j * rng.standard_normal((2, 3, 1))
    C = rng.standard_normal((2, 1, 3)) + 1j * rng.standard_normal((2, 1, 3))
    D = rng.standard_normal((2, 1, 1)) + 0j
    h = plots.impulse_response(StateSpace(A, B, C, D), 6)
    expected = np.stack([D[..., 0, 0].real] + [np.einsum("gn,gn,gn->g", C[:, 0], lam ** (k - 1), B[..., 0]).real
                                               for k in range(1, 6)], axis=-1)
    assert h.dtype == np.float64
    np.testing.assert_allclose(h[:, 0, 0], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("length", [0, -1, 2.0, "3", None])
def test_impulse_response_refuses_a_bad_length(length):
    with pytest.raises(ValueError, match=rf"^length must be an int >= 1; got {length!r}$"):
        plots.impulse_response(bank(1, 2, 1, 1, seed=0), length)


def test_channel_pairs_show_systems_of_a_bank_and_the_diagonal_of_a_mimo_layer():
    assert plots.channel_pairs(bank(5, 2, 1, 1, 0), 3) == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    assert plots.channel_pairs(bank(2, 2, 1, 1, 0), 8) == [(0, 0, 0), (1, 0, 0)]
    assert plots.channel_pairs(bank(2, 2, 3, 3, 0), 8) == [(0, 0, 0), (1, 0, 0)]  # a bank of MIMO systems: by system
    assert plots.channel_pairs(bank(1, 2, 3, 3, 0), 2) == [(0, 0, 0), (0, 1, 1)]
    assert plots.channel_pairs(bank(1, 2, 4, 2, 0), 8) == [(0, 0, 0), (0, 1, 1)]  # the shorter side
    assert plots.channel_pairs(bank(1, 2, 2, 5, 0), 8) == [(0, 0, 0), (0, 1, 1)]
    assert plots.channel_pairs(bank(1, 2, 1, 4, 0), 8) == [(0, 0, 0)]  # one input: the system itself
    assert plots.channel_pairs(bank(1, 2, 4, 1, 0), 8) == [(0, 0, 0)]


def test_units_follow_seconds_or_the_sampling_time():
    assert plots._units(1.0) == ("samples", "rad/sample") and plots._units(0.5) == ("s", "rad/s")
    assert plots._units(1.0, True) == ("s", "rad/s") and plots._units(0.5, False) == ("samples", "rad/sample")
    assert plots._units(0.5, None) == ("s", "rad/s")


def test_response_length_is_five_slowest_time_constants_within_bounds():
    system = bank(1, 2, 1, 1, 0, dt=0.5)
    assert plots.response_length(analysis(system, 20.0)) == 200  # τ = 40 samples
    assert plots.response_length(analysis(system, 20.01)) == 201  # rounded up
    assert plots.response_length(analysis(system, 1.0)) == 32 and plots.response_length(analysis(system, 0.0)) == 32
    assert plots.response_length(analysis(system, 1e6)) == 1024
    assert plots.response_length(analysis(system, 1e6), longest=300) == 300
    assert plots.response_length(analysis(system, math.inf)) == 1024
    assert plots.response_length(analysis(system, math.inf), longest=64) == 64


def test_responses_figure_draws_impulse_and_step_responses(figures):
    system = bank(3, 2, 1, 1, seed=4, dt=0.25, radius=0.7)
    result = analysis(system, 2.0)  # 8 samples: 5 τ = 40
    assert plots.plot_responses([result], "r.png", channels=2) == "r.png"
    fig = figures["r.png"]
    impulse, step = fig.axes[0], fig.axes[1]
    assert len(impulse.get_lines()) == 2 and len(step.get_lines()) == 2  # two of the three systems
    for g, (a, b) in enumerate(zip(impulse.get_lines(), step.get_lines())):
        A, B, C, D = (np.asarray(M[g]) for M in (system.A, system.B, system.C, system.D))
        h = np.array([D[0, 0]] + [(C @ np.linalg.matrix_power(A, k - 1) @ B)[0, 0] for k in range(1, 40)])
        np.testing.assert_allclose(a.get_xdata(), 0.25 * np.arange(40), rtol=0, atol=0)
        np.testing.assert_allclose(a.get_ydata(), h, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b.get_xdata(), 0.25 * np.arange(40), rtol=0, atol=0)
        np.testing.assert_allclose(b.get_ydata(), np.cumsum(h), rtol=1e-12, atol=1e-13)
    assert impulse.get_xlabel() == step.get_xlabel() == "t (s)"
    assert impulse.get_title() == "blocks.0.layer (stub): impulse response"
    assert step.get_title() == "blocks.0.layer: step response"
    plots.plot_responses([result], "samples.png", seconds=False)
    assert figures["samples.png"].axes[0].get_xlabel() == "t (samples)"


def test_bode_figure_draws_the_transfer_function_on_its_frequency_grid(figures):
    system = bank(1, 3, 2, 2, seed=5, dt=0.1)
    result = analysis(system, 0.05)  # fast: the grid starts at 1e-3 × Nyquist
    plots.plot_bode([result], "b.png", points=50)
    magnitude, phase = figures["b.png"].axes
    nyquist = math.pi / 0.1
    omega = np.logspace(np.log10(1e-3 * nyquist), np.log10(nyquist), 50)
    assert len(magnitude.get_lines()) == 2 and len(phase.get_lines()) == 2  # the diagonal of a 2 × 2 MIMO system
    for k, (mag, ph) in enumerate(zip(magnitude.get_lines(), phase.get_lines())):
        H = transfer(system, 0, k, k, omega)
        np.testing.assert_allclose(mag.get_xdata(), omega, rtol=1e-13)
        np.testing.assert_allclose(mag.get_ydata(), 20 * np.log10(np.abs(H)), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ph.get_ydata(), np.degrees(np.unwrap(np.angle(H))), rtol=1e-9, atol=1e-7)
    siso = StateSpace(system.A, system.B[..., :1], system.C[..., :1, :], system.D[..., :1, :1], dt=0.1)
    _, expected = signal.dfreqresp((siso.A[0], siso.B[0], siso.C[0], siso.D[0], 0.1), w=omega * 0.1)
    np.testing.assert_allclose(magnitude.get_lines()[0].get_ydata(), 20 * np.log10(np.abs(expected)), rtol=1e-9)
    assert magnitude.get_title() == "blocks.0.layer (stub): magnitude, H∞ = 1"
    assert phase.get_title() == "blocks.0.layer: phase"
    assert (magnitude.get_ylabel(), phase.get_ylabel()) == ("dB", "degrees")
    assert magnitude.get_xlabel() == phase.get_xlabel() == "ω (rad/s)" and magnitude.get_xscale() == "log"


def test_bode_grid_starts_a_decade_below_the_slowest_corner_but_not_below_1e_7_nyquist(figures):
    system = bank(2, 2, 1, 1, seed=6, dt=1.0)
    nyquist = math.pi
    for tau, lowest in ((50.0, 0.1 / 50.0), (1e12, 1e-7 * nyquist), (1.0, 1e-3 * nyquist), (math.inf, 1e-3 * nyquist),
                        (0.0, 1e-3 * nyquist), (-1.0, 1e-3 * nyquist)):
        plots.plot_bode([analysis(system, tau)], "b.png", channels=1, points=7)
        (line,) = figures["b.png"].axes[0].get_lines()
        np.testing.assert_allclose(line.get_xdata(), np.logspace(np.log10(lowest), np.log10(nyquist), 7), rtol=1e-12)
        assert figures["b.png"].axes[0].get_xlabel() == "ω (rad/sample)"
    fast = StateSpace(system.A, system.B, system.C, system.D, dt=1e-3)  # Nyquist 3142 rad/s: τ = 0.5 s is slow
    plots.plot_bode([analysis(fast, 0.5)], "b.png", channels=1, points=7)
    (line,) = figures["b.png"].axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), np.logspace(np.log10(0.2), np.log10(math.pi / 1e-3), 7), rtol=1e-12)


def test_a_zero_transfer_function_is_drawn_at_the_floor(figures):
    system = bank(1, 2, 1, 1, seed=9)
    silent = StateSpace(system.A, system.B, np.zeros_like(system.C), np.zeros_like(system.D))
    plots.plot_bode([analysis(silent, 1.0)], "b.png", points=5)
    (line,) = figures["b.png"].axes[0].get_lines()
    np.testing.assert_array_equal(line.get_ydata(), np.full(5, 20 * np.log10(1e-300)))  # -6000 dB, not -inf


def test_grids_and_defaults(figures):
    result = analysis(bank(1, 2, 1, 1, seed=10), 1.0)
    plots.plot_bode([result], "b.png")
    plots.plot_responses([result], "r.png")
    for ax in figures["b.png"].axes:  # major and minor grid lines on the log axis
        assert ax.xaxis.get_gridlines()[0].get_visible() and ax.yaxis.get_gridlines()[0].get_visible()
        assert ax.xaxis._minor_tick_kw.get("gridOn") and len(ax.get_lines()[0].get_xdata()) == 400
    for ax in figures["r.png"].axes:
        assert ax.xaxis.get_gridlines()[0].get_visible() and not ax.xaxis._minor_tick_kw.get("gridOn")
    expected = {plots.plot_bode: {"channels": 8, "points": 400}, plots.plot_responses: {"channels": 8, "longest": 1024}}
    for function, values in expected.items():
        assert {k: signature_defaults(function)[k] for k in values} == values
        doc = " ".join(function.__doc__.split())
        assert all(f"default {v})" in doc for v in values.values())


def test_a_figure_has_a_row_per_layer(figures):
    first, second = analysis(bank(1, 2, 1, 1, 7), 1.0, "a"), analysis(bank(2, 2, 1, 1, 8), 1.0, "b")
    plots.plot_bode([first, second], "b.png")
    plots.plot_responses([first, second], "r.png")
    for path in ("b.png", "r.png"):
        axes = figures[path].axes
        assert len(axes) == 4 and [len(ax.get_lines()) for ax in axes] == [1, 1, 2, 2]
        assert axes[0].get_title().startswith("a (stub)") and axes[2].get_title().startswith("b (stub)")


def test_poles_figure_draws_z_with_the_unit_circle_and_finite_s(figures):
    system = bank(2, 3, 1, 1, seed=11, dt=0.5)
    result = analysis(system, 7.25)
    z = np.concatenate([result.poles.ravel(), [0.0]])  # a pole at z = 0 has no finite s
    result = dataclasses.replace(result, poles=z, poles_continuous=np.concatenate(
        [result.poles_continuous.ravel(), [-np.inf]]))
    assert plots.plot_poles([result], "p.png") == "p.png"
    top, bottom = figures["p.png"].axes
    (circle,) = top.get_lines()
    t = np.linspace(0, 2 * np.pi, 400)
    np.testing.assert_allclose(circle.get_xdata(), np.cos(t))
    np.testing.assert_allclose(circle.get_ydata(), np.sin(t))
    np.testing.assert_allclose(top.collections[0].get_offsets(), np.stack([z.real, z.imag], axis=1), rtol=1e-15)
    s = result.poles_continuous[:-1]
    np.testing.assert_allclose(bottom.collections[0].get_offsets(), np.stack([s.real, s.imag], axis=1), rtol=1e-15)
    assert bottom.get_xscale() == "symlog"
    assert bottom.xaxis.get_transform().linthresh == pytest.approx(np.abs(s.real).min(), rel=1e-15)
    assert [line.get_xdata()[0] for line in bottom.get_lines()] == [0.0]  # the imaginary axis
    assert top.get_title() == f"blocks.0.layer (stub)\nρ = {result.spectral_radius:.6f}"
    assert bottom.get_title() == "s = log(z)/dt, slowest τ = 7.25"
    assert (top.get_xlabel(), top.get_ylabel()) == ("Re z", "Im z") and top.get_aspect() == 1.0
    assert (bottom.get_xlabel(), bottom.get_ylabel()) == ("Re s (1/s)", "Im s (1/s)")
    plots.plot_poles([result], "q.png", seconds=False)
    assert figures["q.png"].axes[1].get_xlabel() == "Re s (1/sample)"


def test_poles_figure_has_a_column_per_layer_and_an_empty_one_for_none(figures):
    first, second = analysis(bank(1, 2, 1, 1, 12), 1.0, "a"), analysis(bank(1, 2, 1, 1, 13), 1.0, "b")
    plots.plot_poles([first, second], "p.png")
    axes = figures["p.png"].axes
    assert len(axes) == 4 and axes[0].get_title().startswith("a (stub)") and axes[1].get_title().startswith("b (stub)")
    assert axes[2].get_title().startswith("s = log(z)/dt") and axes[3].get_title().startswith("s = log(z)/dt")
    plots.plot_poles([], "none.png")
    assert [ax.axison for ax in figures["none.png"].axes] == [False, False]
    assert figures["none.png"].get_size_inches().tolist() == [3.6, 6.8]


def test_kernels_figure_shows_each_kernel_on_a_symmetric_scale(figures):
    K = np.array([[0.5, -2.0, 1.0], [0.0, 0.25, -0.75]])
    plots.plot_kernels([("layer a", K), ("zero", np.zeros((1, 4)))], "k.png")
    axes = figures["k.png"].axes
    images = [ax for ax in axes if ax.get_images()]
    assert len(images) == 2 and len(axes) == 4  # two images and their colour bars
    first, zero = (ax.get_images()[0] for ax in images)
    np.testing.assert_array_equal(first.get_array(), K)
    assert first.get_clim() == (-2.0, 2.0) and zero.get_clim() == (-1.0, 1.0)  # an all-zero kernel: ±1
    assert first.get_cmap().name == "RdBu_r" and first.get_interpolation() == "nearest"
    assert [ax.get_title() for ax in images] == ["layer a", "zero"]
    assert (images[0].get_xlabel(), images[0].get_ylabel()) == ("lag (samples)", "channel")


def test_equilibria_figure_draws_each_output_and_the_spectral_radius(figures):
    from ssmkit.analysis.operating import OperatingSweep

    u = np.stack([np.linspace(-1, 1, 5), np.full(5, 0.3)], axis=1)  # input 0 swept, input 1 at its mean
    y = np.stack([u[:, 0] ** 3, np.tanh(u[:, 0]), -u[:, 0]], axis=1)
    rho = np.linspace(0.5, 0.9, 5)
    sweep = OperatingSweep(input=0, u=u, y=y, spectral_radius=rho, dc_gain=np.zeros((5, 3, 2)))
    other = OperatingSweep(input=1, u=u[:, ::-1], y=y, spectral_radius=rho, dc_gain=np.zeros((5, 3, 2)))
    plots.plot_equilibria([sweep, other], "e.png", channels=2)
    axes = figures["e.png"].axes
    assert len(axes) == 4
    outputs, radius = axes[0], axes[1]
    assert len(outputs.get_lines()) == 2  # two of the three outputs
    for k, line in enumerate(outputs.get_lines()):
        np.testing.assert_array_equal(line.get_xdata(), u[:, 0])
        np.testing.assert_array_equal(line.get_ydata(), y[:, k])
        assert line.get_label() == f"y[{k}]"
    curve, unit = radius.get_lines()
    np.testing.assert_array_equal(curve.get_xdata(), u[:, 0])
    np.testing.assert_array_equal(curve.get_ydata(), rho)
    assert list(unit.get_ydata()) == [1.0, 1.0]  # the stability limit
    np.testing.assert_array_equal(axes[2].get_lines()[0].get_xdata(), u[:, ::-1][:, 1])
    assert [ax.get_xlabel() for ax in axes] == ["u[0]", "u[0]", "u[1]", "u[1]"]
    assert outputs.get_legend() is not None and outputs.get_title().startswith("equilibria along u[0]")
    plots.plot_equilibria([sweep], "all.png")
    assert len(figures["all.png"].axes[0].get_lines()) == 3  # default: up to 8 outputs
    assert plots.__all__ == ["channel_pairs", "impulse_response", "plot_bode", "plot_equilibria", "plot_kernels",
                             "plot_poles", "plot_responses"]


def test_figure_sizes_are_a_panel_per_row_and_column(figures):
    from ssmkit.analysis.operating import OperatingSweep

    K = np.ones((2, 3))
    assert plots.plot_kernels([("a", K)], "one.png") == "one.png"
    assert figures["one.png"].get_size_inches().tolist() == pytest.approx([9.0, 2.6], rel=1e-12)
    plots.plot_kernels([("a", K), ("b", K), ("c", K)], "three.png")
    assert figures["three.png"].get_size_inches().tolist() == pytest.approx([9.0, 7.8], rel=1e-12)
    plots.plot_kernels([], "none.png")  # no kernel: one empty panel, not a zero-height figure
    assert figures["none.png"].get_size_inches().tolist() == pytest.approx([9.0, 2.6], rel=1e-12)
    assert len(figures["none.png"].axes) == 1 and not figures["none.png"].axes[0].get_images()
    u = np.linspace(-1, 1, 3)[:, None]
    sweep = OperatingSweep(input=0, u=u, y=u ** 2, spectral_radius=np.full(3, 0.5), dc_gain=np.zeros((3, 1, 1)))
    assert plots.plot_equilibria([sweep, sweep], "e.png") == "e.png"
    assert figures["e.png"].get_size_inches().tolist() == pytest.approx([10.0, 6.0], rel=1e-12)  # 5 × 3 a panel


def test_equilibria_draw_at_most_eight_outputs_with_grids_and_titles(figures):
    from ssmkit.analysis.operating import OperatingSweep

    u = np.linspace(-1, 1, 4)[:, None]
    y = u * np.arange(1.0, 11.0)  # ten outputs
    sweep = OperatingSweep(input=0, u=u, y=y, spectral_radius=np.full(4, 0.5), dc_gain=np.zeros((4, 10, 1)))
    assert signature_defaults(plots.plot_equilibria)["channels"] == 8
    plots.plot_equilibria([sweep], "e.png")
    outputs, radius = figures["e.png"].axes
    assert [line.get_label() for line in outputs.get_lines()] == [f"y[{k}]" for k in range(8)]
    assert radius.get_title() == "spectral radius of the linearisation there"
    for ax in (outputs, radius):
        lines = ax.get_xgridlines() + ax.get_ygridlines()
        assert lines and all(line.get_visible() for line in lines)
        assert {line.get_linewidth() for line in lines} == {0.3}


def test_symlog_threshold_is_the_slowest_finite_decay_floored_at_1e_12(figures):
    system = bank(1, 2, 1, 1, seed=14)
    base = analysis(system, 1.0)
    no_s = dataclasses.replace(base, poles=np.zeros(2), poles_continuous=np.full(2, -np.inf + 0j))
    plots.plot_poles([no_s], "none.png")  # every pole at z = 0: no finite s, threshold 1
    assert figures["none.png"].axes[1].xaxis.get_transform().linthresh == 1.0
    assert len(figures["none.png"].axes[1].collections[0].get_offsets()) == 0
    z = np.array([1.0, 0.5])  # a pole on the unit circle: Re s = 0, threshold floored at 1e-12
    edge = dataclasses.replace(base, poles=z, poles_continuous=np.log(z.astype(complex)))
    plots.plot_poles([edge], "edge.png")
    assert figures["edge.png"].axes[1].xaxis.get_transform().linthresh == 1e-12
