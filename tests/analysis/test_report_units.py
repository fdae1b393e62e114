"""The units a control engineer reads in ``ssmkit analyze``'s summary and figures (probe 4, docs/design.md)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.analysis import write_report
from ssmkit.sysid.wiener import DeepWiener


def _labels(monkeypatch) -> dict[str, list[str]]:
    """Capture every x label of the figures ``write_report`` saves, by file name."""
    import ssmkit.analysis.plots as plots

    seen: dict[str, list[str]] = {}
    save = plots.save_figure  # every figure of the report is written by it (atomically, ssmkit.files)

    def spy(fig, path, *args, **kwargs):
        seen[str(path).rsplit("/", 1)[-1]] = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "save_figure", spy)
    return seen


@pytest.mark.parametrize("Ts", [1.0, 0.25])
def test_a_model_with_a_sampling_time_reads_seconds_in_the_summary_and_the_figures(tmp_path, monkeypatch, Ts):
    # Ts = 1 s: the summary said seconds, the figures samples (they tested dt != 1)
    pytest.importorskip("matplotlib")
    labels = _labels(monkeypatch)
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 4}, dt=Ts)
    paths = write_report(model, str(tmp_path), channels=2)
    assert labels["bode.png"] and all(label == "ω (rad/s)" for label in labels["bode.png"])
    assert labels["responses.png"] and all(label == "t (s)" for label in labels["responses.png"])
    assert "Re s (1/s)" in labels["poles.png"]
    text = open(paths["summary"]).read()
    assert "ω in rad/s" in text and "magnitude in dB and phase in degrees" in text and "time in s." in text
    assert "not the model's gain from u to y" in text


def test_a_model_without_a_sampling_time_reads_samples(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from ssmkit.layers import build

    labels = _labels(monkeypatch)
    torch.manual_seed(0)
    paths = write_report(build("s4d", d_model=2, d_state=4), str(tmp_path), channels=2)
    assert all(label == "ω (rad/sample)" for label in labels["bode.png"])
    assert all(label == "t (samples)" for label in labels["responses.png"])
    assert "ω in rad/sample" in open(paths["summary"]).read()


def test_the_bode_plot_reaches_below_the_slowest_corner(tmp_path, monkeypatch):
    # a mode with τ = 2·10⁴ s at Ts = 1 s has its corner at 5e-5 rad/s, below 1e-3 × Nyquist = 3.1e-3: the plot
    # started above it and never showed the DC gain plateau
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from ssmkit.analysis import analyze_model
    from ssmkit.analysis.plots import plot_bode

    start: list[float] = []  # the lowest ω of every curve
    save = Figure.savefig

    def spy(fig, path, *args, **kwargs):
        start.extend(min(line.get_xdata()) for ax in fig.axes for line in ax.get_lines())
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 4, "init": "real"}, dt=1.0)
    with torch.no_grad():
        model.layers[0].log_dt.fill_(-10.0)  # Δ = 4.5e-5: S4D-Real's slowest mode, λ = -1, has τ = 2.2·10⁴ s
    (r,) = analyze_model(model)
    plot_bode([r], str(tmp_path / "bode.png"))
    assert start and max(start) <= 0.1 / r.slowest_time_constant * (1 + 1e-9)
