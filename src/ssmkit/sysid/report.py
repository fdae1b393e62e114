"""The report of an identification run: ``results.json``, ``report.md`` (the test RMSE/fit table next to the
published results, with their sources), ``simulation.png`` (simulated vs measured output per test record) and
``error_spectrum.png`` (amplitude spectra of the measured output and of the simulation error).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import torch

from ssmkit.files import save_figure, write_text
from ssmkit.sysid.records import SysidBenchmark


def results_table(bench: SysidBenchmark, label: str, scores: dict[str, Any]) -> str:
    """A markdown table: this run's test RMSE (benchmark unit) and fit % per test record (a periodic record scored in
    periodic steady state too gets a second row, marked as such; the official from-rest row stays the headline), then
    the published results with their sources.

    Args:
        bench: the benchmark (unit, published results).
        label: this run's name in the table.
        scores: :func:`ssmkit.sysid.workflow.evaluate`'s output.

    Returns:
        the markdown text.
    """
    lines = [f"| method | test record | RMSE ({bench.unit}) | fit % | source |", "|---|---|---|---|---|"]
    for rec in scores["records"]:
        rm = ", ".join(f"{v:.4g}" for v in rec["rmse"])
        fit = ", ".join(f"{v:.2f}" for v in rec["fit"])
        steady = rec.get("steady_state")
        source = "this run, from rest (official, headline)" if steady else "this run"
        lines.append(f"| **{label}** | {rec['name']} | {rm} | {fit} | {source} |")
        if steady:
            rm = ", ".join(f"{v:.4g}" for v in steady["rmse"])
            fit = ", ".join(f"{v:.2f}" for v in steady["fit"])
            k = steady["prime"]
            lines.append(f"| {label} | {rec['name']} | {rm} | {fit} | this run, periodic steady state ({k} "
                         f"period{'s' if k > 1 else ''} of the same input first; not the official protocol) |")
    for pub in bench.published:
        lines.append(f"| {pub.method} | official test | {pub.rmse:.4g} | – | {pub.source} |")
    return "\n".join(lines)


def _plots(folder: pathlib.Path, bench: SysidBenchmark, sims: list[torch.Tensor]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(len(bench.test), 1, figsize=(9, 3 * len(bench.test)), squeeze=False)
    for ax, r, y_sim in zip(axes[:, 0], bench.test, sims):
        t = np.arange(len(r)) * r.dt
        ax.plot(t, r.y[:, 0].numpy() * bench.scale, label="measured", lw=1)
        ax.plot(t, y_sim[:, 0].numpy() * bench.scale, label="simulated", lw=1)
        ax.plot(t, (y_sim[:, 0] - r.y[:, 0]).numpy() * bench.scale, label="error", lw=0.8)
        if bench.n_init:
            ax.axvspan(0, bench.n_init * r.dt, color="0.9", label="init window (not scored)")
        ax.set(title=f"{bench.title}: {r.name} (output 1)", xlabel="time (s)", ylabel=bench.unit)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, folder / "simulation.png")
    plt.close(fig)
    written.append("simulation.png")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for r, y_sim in zip(bench.test, sims):
        n = bench.n_init
        y = r.y[n:, 0].numpy() * bench.scale
        e = (y_sim[n:, 0] - r.y[n:, 0]).numpy() * bench.scale
        f = np.fft.rfftfreq(len(y), r.dt)[1:]  # without DC (the measured mean is removed)
        ax.loglog(f, np.abs(np.fft.rfft(y - y.mean()))[1:] / len(y), lw=0.8, label=f"measured, {r.name}")
        ax.loglog(f, np.abs(np.fft.rfft(e))[1:] / len(y), lw=0.8, label=f"error, {r.name}")
    ax.set(title=f"{bench.title}: amplitude spectra of output 1 after the init window", xlabel="frequency (Hz)",
           ylabel=f"|DFT| / L ({bench.unit})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, folder / "error_spectrum.png")
    plt.close(fig)
    written.append("error_spectrum.png")
    return written


def write_report(folder: str | pathlib.Path, bench: SysidBenchmark, label: str, scores: dict[str, Any],
                 run: dict[str, Any], plots: bool = True) -> list[str]:
    """Write ``results.json``, ``report.md`` and (``plots``) the two figures into ``folder``.

    Args:
        folder: the output folder (created).
        bench: the benchmark.
        label: the run's name (``"deep Wiener s4d (simulation)"``).
        scores: :func:`ssmkit.sysid.workflow.evaluate`'s output.
        run: what else to record (options, history summary, seconds, machine).
        plots: also write the PNG figures (needs matplotlib).

    Returns:
        the names of the files written.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = results_table(bench, label, scores)
    results = {
        "benchmark": bench.name,
        "title": bench.title,
        "unit": bench.unit,
        "n_init": bench.n_init,
        "label": label,
        "test": scores["records"],
        "published": [{"method": p.method, "rmse": p.rmse, "source": p.source} for p in bench.published],
        **run,
    }
    write_text(folder / "results.json", json.dumps(results, indent=2, default=str))
    text = [f"# {bench.title}: {label}", "",
            f"Simulation RMSE on the official test records after the first {bench.n_init} samples "
            f"({bench.notes})", "", table, ""]
    if any("steady_state" in rec for rec in scores["records"]):
        text += ["Periodic steady state: a test record that is a whole number of periods of a periodic input is also "
                 "simulated after the same input's periods from rest, and only the record is scored (no measured "
                 "output used). It leaves out the transient of the start from rest that the official protocol "
                 "scores; the official score is the headline.", ""]
    written = ["results.json", "report.md"]
    if plots:
        written += _plots(folder, bench, scores["simulations"])
        text += ["![simulated vs measured](simulation.png)", "", "![error spectrum](error_spectrum.png)", ""]
    write_text(folder / "report.md", "\n".join(text))
    return written
