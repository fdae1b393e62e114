"""The units a control engineer reads in ``ssmkit analyze``'s summary and figures (probe 4, docs/design.md)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.analysis import write_report
from ssmkit.sysid.wiener import DeepWiener


def _labels(monkeypatch) -> dict[str, list[str]]:
    """Capture every x label of the figures ``write_report`` saves, by file name."""
    from matplotlib.figure import Figure

    seen: dict[str, list[str]] = {}
    save = Figure.savefig

    def spy(fig, path, *args, **kwargs):
        seen[str(path).rsplit("/", 1)[-1]] = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
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
