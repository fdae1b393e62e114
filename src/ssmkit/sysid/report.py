"""The report of an identification run: ``results.json``, ``report.md`` (the test RMSE/fit table next to the
published results, with their sources), ``simulation.png`` (simulated vs measured output, one panel per test record
and output) and ``error_spectrum.png`` (amplitude spectra of the measured output and of the simulation error, one
panel per output); every output labelled with its name and unit (``SysidBenchmark.outputs``, ``.units``).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import torch

from ssmkit.files import save_figure, write_text
from ssmkit.sysid.records import SysidBenchmark


def unit_text(bench: SysidBenchmark) -> str:
    """The benchmark's reporting unit as one string: the unit its outputs share, or the outputs' units in order,
    comma-separated, where they differ (``"V, m"``: the order of a table cell's values)."""
    units = bench.units
    return units[0] if len(set(units)) == 1 else ", ".join(units)


def results_table(bench: SysidBenchmark, label: str, scores: dict[str, Any]) -> str:
    """A markdown table: this run's test RMSE and fit % per test record, one value per output in the outputs' order
    (each RMSE in its output's unit; the header names :func:`unit_text`); a periodic record scored in periodic steady
    state too gets a second row, marked as such (the official from-rest row stays the headline); then the published
    results with their sources.

    Args:
        bench: the benchmark (unit, published results).
        label: this run's name in the table.
        scores: :func:`ssmkit.sysid.workflow.evaluate`'s output.

    Returns:
        the markdown text.
    """
    lines = [f"| method | test record | RMSE ({unit_text(bench)}) | fit % | source |", "|---|---|---|---|---|"]
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def output_label(bench: SysidBenchmark, k: int) -> str:
    """Output k's name with its unit, ``"acceleration 2 (right wing) (m/s²)"`` (how report.md lists the outputs)."""
    return f"{bench.outputs[k]} ({bench.units[k]})"


def simulation_figure(bench: SysidBenchmark, sims: list[torch.Tensor]):
    """The measured output, the simulation and their difference over time, one panel (row) per test record and
    output, record by record (record i, output k in row i·p + k), each in the output's reporting unit
    (data × ``bench.scales[k]``), titled with the record's and the output's names, the unit on the y axis; the init
    window shaded.

    Args:
        bench: the benchmark (its test records, outputs, units, scales and init window).
        sims: one (L, p) simulation per test record.

    Returns:
        the matplotlib figure (Agg; the caller saves and closes it).
    """
    plt = _pyplot()
    p = bench.n_outputs
    rows = len(bench.test) * p
    fig, axes = plt.subplots(rows, 1, figsize=(11, 3 * rows), squeeze=False)
    for i, (r, y_sim) in enumerate(zip(bench.test, sims)):
        t = np.arange(len(r)) * r.dt
        for k, scale in enumerate(bench.scales):
            ax = axes[i * p + k, 0]
            ax.plot(t, r.y[:, k].numpy() * scale, label="measured", lw=1)
            ax.plot(t, y_sim[:, k].numpy() * scale, label="simulated", lw=1)
            ax.plot(t, (y_sim[:, k] - r.y[:, k]).numpy() * scale, label="error", lw=0.8)
            if bench.n_init:
                ax.axvspan(0, bench.n_init * r.dt, color="0.9", label="init window (not scored)")
            ax.set(title=f"{bench.title}: {r.name}, {bench.outputs[k]}", xlabel="time (s)", ylabel=bench.units[k])
            ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def spectrum_figure(bench: SysidBenchmark, sims: list[torch.Tensor]):
    """Amplitude spectra |DFT| / L after the init window of the measured output (its mean removed) and of the
    simulation error, one panel (row) per output holding every test record's two curves, in the output's reporting
    unit; DC left out.

    Args:
        bench: the benchmark.
        sims: one (L, p) simulation per test record.

    Returns:
        the matplotlib figure (Agg; the caller saves and closes it).
    """
    plt = _pyplot()
    p = bench.n_outputs
    fig, axes = plt.subplots(p, 1, figsize=(11, 3.5 * p), squeeze=False)
    n = bench.n_init
    for k, scale in enumerate(bench.scales):
        ax = axes[k, 0]
        for r, y_sim in zip(bench.test, sims):
            y = r.y[n:, k].numpy() * scale
            e = (y_sim[n:, k] - r.y[n:, k]).numpy() * scale
            f = np.fft.rfftfreq(len(y), r.dt)[1:]  # without DC (the measured mean is removed)
            ax.loglog(f, np.abs(np.fft.rfft(y - y.mean()))[1:] / len(y), lw=0.8, label=f"measured, {r.name}")
            ax.loglog(f, np.abs(np.fft.rfft(e))[1:] / len(y), lw=0.8, label=f"error, {r.name}")
        ax.set(title=f"{bench.title}: amplitude spectra of {bench.outputs[k]} after the init window",
               xlabel="frequency (Hz)", ylabel=f"|DFT| / L ({bench.units[k]})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plots(folder: pathlib.Path, bench: SysidBenchmark, sims: list[torch.Tensor]) -> list[str]:
    plt = _pyplot()
    written = []
    for name, make in (("simulation.png", simulation_figure), ("error_spectrum.png", spectrum_figure)):
        fig = make(bench, sims)
        save_figure(fig, folder / name)
        plt.close(fig)
        written.append(name)
    return written


def write_report(folder: str | pathlib.Path, bench: SysidBenchmark, label: str, scores: dict[str, Any],
                 run: dict[str, Any], plots: bool = True) -> list[str]:
    """Write ``results.json``, ``report.md`` and (``plots``) the two figures into ``folder``. ``results.json`` holds
    ``"unit"`` (one string: :func:`unit_text`), ``"units"`` and ``"outputs"`` (one per output) and the scores per test
    record, one value per output in that output's unit.

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
        "unit": unit_text(bench),  # one string, as earlier results.json readers read it; "units": per output
        "units": list(bench.units),
        "outputs": list(bench.outputs),
        "n_init": bench.n_init,
        "label": label,
        "test": scores["records"],
        "published": [{"method": p.method, "rmse": p.rmse, "source": p.source} for p in bench.published],
        **run,
    }
    write_text(folder / "results.json", json.dumps(results, indent=2, default=str))
    text = [f"# {bench.title}: {label}", "",
            f"Simulation RMSE on the {'official ' if bench.published else ''}test records after the first "
            f"{bench.n_init} samples "
            f"({bench.notes})", ""]
    if bench.n_outputs > 1:
        text += ["Outputs, in the order of each cell's values: "
                 + "; ".join(output_label(bench, k) for k in range(bench.n_outputs)) + ".", ""]
    text += [table, ""]
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
