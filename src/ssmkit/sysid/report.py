"""The report of an identification run: ``results.json``, ``report.md`` (the test RMSE/fit table next to the
published results, with their sources), ``simulation.png`` (simulated vs measured output, one panel per test record
and output) and ``error_spectrum.png`` (amplitude spectra of the measured output and of the simulation error, one
panel per output); every output labelled with its name and unit (``SysidBenchmark.outputs``, ``.units``), the inputs
named with theirs where stated (``.inputs``, ``.input_units``).

Irregularly sampled test records (``IORecord.t``): the time axis is the record's sample times from its first sample
(:func:`time_axis`; ``k · Ts`` for a regular record), and the amplitude spectra are Lomb-Scargle periodograms at the
sample times (Lomb 1976, Scargle 1982; :func:`lomb_scargle_amplitude`) on the |DFT| / L scale, so a regular record's
FFT spectrum and an irregular record's read alike (on uniform times they are equal at every frequency below Ts's
Nyquist), at the frequencies k / (t_{L−1} − t_0 + Ts) below 1 / (2 Ts), Ts the nominal (median) gap
(:func:`spectrum_frequencies`). report.md says so. The scores weigh every sample alike whatever its gap, as the
metrics and MATLAB's ``compare`` do (:mod:`ssmkit.sysid.metrics`).

Published results are compared like with like: p per-output values (``Published.rmse`` a tuple) sit in the order of
this run's values; one number on a benchmark of several outputs is the aggregate ``Published.aggregate`` names, and
this run's same aggregate gets a row of its own; one number whose source states no aggregate is marked as not
compared.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np
import torch

from ssmkit.files import save_figure, strict_json, write_text
from ssmkit.sysid.records import AGGREGATES, Published, SysidBenchmark, aggregate


def unit_text(bench: SysidBenchmark) -> str:
    """The benchmark's reporting unit as one string: the unit its outputs share, or the outputs' units in order,
    comma-separated, where they differ (``"V, m"``: the order of a table cell's values)."""
    units = bench.units
    return units[0] if len(set(units)) == 1 else ", ".join(units)


def published_record(bench: SysidBenchmark, pub: Published) -> str:
    """The test-record cell of a published row: the record it is on (``Published.record``, else ``"official
    test"``), with the aggregate for one number on several outputs, or a statement that it is not compared when its
    source states no aggregate.

    Args:
        bench: the benchmark (its number of outputs).
        pub: the published result.

    Returns:
        the cell's text.
    """
    record = "official test" if pub.record is None else pub.record
    if pub.per_output or bench.n_outputs == 1:
        return record
    if pub.aggregate is not None:
        return f"{record}, {AGGREGATES[pub.aggregate]}"
    return (f"{record}, one number for {bench.n_outputs} outputs (the source states no aggregate: not compared with "
            "the per-output values)")


def results_table(bench: SysidBenchmark, label: str, scores: dict[str, Any]) -> str:
    """A markdown table: this run's test RMSE and fit % per test record, one value per output in the outputs' order
    (each RMSE in its output's unit; the header names :func:`unit_text`); a periodic record scored in periodic steady
    state too gets a second row, marked as such (the official from-rest row stays the headline); for each aggregate
    over the outputs that a published result is given as (``Published.aggregate``), a row per test record with this
    run's same aggregate of its RMSEs; then the published results with their sources, per-output values in the
    outputs' order (:func:`published_record` names what each is).

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
        fit = ", ".join(_fit_text(v) for v in rec["fit"])
        steady = rec.get("steady_state")
        source = "this run, from rest (official, headline)" if steady else "this run"
        lines.append(f"| **{label}** | {rec['name']} | {rm} | {fit} | {source} |")
        if steady:
            rm = ", ".join(f"{v:.4g}" for v in steady["rmse"])
            fit = ", ".join(_fit_text(v) for v in steady["fit"])
            k = steady["prime"]
            lines.append(f"| {label} | {rec['name']} | {rm} | {fit} | this run, periodic steady state ({k} "
                         f"period{'s' if k > 1 else ''} of the same input first; not the official protocol) |")
    if bench.n_outputs > 1:
        kinds = [k for k in AGGREGATES if any(pub.aggregate == k for pub in bench.published)]
        for kind in kinds:  # this run's aggregate of the same kind as a published one, record by record
            for rec in scores["records"]:
                lines.append(f"| {label} | {rec['name']}, {AGGREGATES[kind]} | {aggregate(kind, rec['rmse']):.4g} | – "
                             f"| this run (the aggregate the published values so marked are) |")
    for pub in bench.published:
        rm = ", ".join(f"{v:.4g}" for v in pub.values)
        lines.append(f"| {pub.method} | {published_record(bench, pub)} | {rm} | – | {pub.source} |")
    return "\n".join(lines)


def _fit_text(fit: float | None) -> str:
    """A fit % for report.md: two decimals, or "undefined" where it is not a number (an output constant over its
    scored samples has no spread to normalise by: NaN in the scores, null in results.json; "nan" was printed)."""
    return "undefined" if fit is None or math.isnan(fit) else f"{fit:.2f}"


def undefined_fit_note(scores: dict[str, Any]) -> str:
    """report.md's sentence under the table when a test record's fit % is undefined, else ""."""
    parts = [rec["fit"] for rec in scores["records"]]
    parts += [rec["steady_state"]["fit"] for rec in scores["records"] if rec.get("steady_state")]
    if not any(v is None or math.isnan(v) for fits in parts for v in fits):
        return ""
    return ("A fit % marked undefined belongs to an output that is constant (up to rounding) over its scored "
            "samples: fit = 100 (1 − RMSE / std(y)) divides by its spread there, which is 0, and only the RMSE is "
            "defined (or to a simulation that diverged, whose RMSE is nan too).")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def input_label(bench: SysidBenchmark, j: int) -> str:
    """Input j's name with its unit where it is stated, ``"force (N)"``, else the name alone (``"shaker force"``)."""
    unit = bench.input_units[j]
    return bench.inputs[j] if unit is None else f"{bench.inputs[j]} ({unit})"


def inputs_text(bench: SysidBenchmark) -> str:
    """The inputs as report.md and the figures name them: ``"input: force (N)"``, ``"inputs: a (V); b"``."""
    return (f"input{'s' if bench.n_inputs > 1 else ''}: "
            + "; ".join(input_label(bench, j) for j in range(bench.n_inputs)))


def output_label(bench: SysidBenchmark, k: int) -> str:
    """Output k's name with its unit, ``"acceleration 2 (right wing) (m/s²)"`` (how report.md lists the outputs)."""
    return f"{bench.outputs[k]} ({bench.units[k]})"


def time_axis(record) -> np.ndarray:
    """A record's sample times in seconds from its first sample: k · Ts for a regularly sampled record, t_k − t_0 for
    an irregularly sampled one (``IORecord.t``).

    Args:
        record: an :class:`~ssmkit.sysid.records.IORecord`.

    Returns:
        (L,) float64 times, the first 0.
    """
    if record.t is None:
        return np.arange(len(record)) * record.dt
    t = record.t.detach().cpu().numpy().astype(np.float64)
    return t - t[0]


MAX_FREQUENCIES = 1000  # the frequencies of an irregular record's spectrum at most (its cost is samples × frequencies)


def spectrum_frequencies(t: np.ndarray, dt: float, most: int = MAX_FREQUENCIES) -> np.ndarray:
    """The frequencies (Hz) of an irregularly sampled signal's amplitude spectrum: f_k = k / T with T = t_{L−1} −
    t_0 + Ts, for k >= 1 while f_k < 1 / (2 Ts) (on uniform times, numpy's ``rfftfreq`` of the L samples at Ts without
    DC and without the Nyquist frequency); with more than ``most`` of them, ``most`` values of k spaced evenly on a log scale (the
    figure's axes are logarithmic).

    Args:
        t: (L,) the sample times in seconds, increasing.
        dt: Ts, the nominal sampling time in seconds.
        most: the most frequencies returned.

    Returns:
        the frequencies in Hz, increasing (none when the signal spans less than two nominal periods).
    """
    span = float(t[-1] - t[0]) + dt
    count = int(np.ceil(span / (2 * dt) * (1 - 1e-9))) - 1  # k / span < 1 / (2 Ts), also when t rounds a grid
    k = np.arange(1, max(count, 0) + 1, dtype=np.float64)
    if count > most:
        k = np.unique(np.round(np.geomspace(1, count, most)))
    return k / span


def measured_period(t: np.ndarray, dt: float) -> float:
    """The period that bounds the spectrum of an output with missing samples: the median gap between its measured
    samples at times ``t``, at least ``dt`` (Ts). An output measured at every tenth sample (sampled slower than the
    inputs) resolves nothing above 1 / (20 Ts): its Lomb-Scargle periodogram is periodic in frequency with period
    1 / (10 Ts), so up to 1 / (2 Ts) the figure drew nine images of its band as if they were signal (a sinusoid at
    0.02 Hz, Ts = 1 s, read 0.5 at 0.08, 0.12, ..., 0.48 Hz too). Samples missing at random leave the median gap at
    Ts and the band as it was.

    Args:
        t: (T,) the measured samples' times in seconds, increasing.
        dt: Ts, the record's (nominal) sampling time in seconds.

    Returns:
        the period in seconds (``dt`` with fewer than two measured samples).
    """
    gaps = np.diff(np.asarray(t, dtype=np.float64))
    return max(float(dt), float(np.median(gaps))) if gaps.size else float(dt)


def lomb_scargle_amplitude(t: np.ndarray, x: np.ndarray, f: np.ndarray, chunk: int = 64) -> np.ndarray:
    """The amplitude spectrum of samples x_j at times t_j by the Lomb-Scargle periodogram (Lomb 1976, Scargle 1982):

        P(ω) = ½ [(Σ x_j cos ω(t_j − τ))² / Σ cos² ω(t_j − τ) + (Σ x_j sin ω(t_j − τ))² / Σ sin² ω(t_j − τ)],
        tan 2ωτ = Σ sin 2ωt_j / Σ cos 2ωt_j,        amplitude sqrt(P / L),

    the least-squares fit of a cos ωt + b sin ωt to the samples; sqrt(P / L) is |DFT| / L on uniform times at the
    frequencies k / (L Ts), 0 < k < L / 2 (a sinusoid of amplitude A reads A / 2 there, as in the FFT spectrum). A
    term whose denominator is 0 (a frequency at which every sample sits on a zero of the sine) counts 0. Several
    signals at the same times share the cosines and sines (the cost is L × frequencies of each).

    Args:
        t: (L,) the sample times in seconds (relative to the first sample keeps ωt small).
        x: (L,) the samples, or several signals at those times as the columns of an array of L rows (the caller
            removes a mean: no offset is fitted).
        f: the frequencies in Hz.
        chunk: frequencies formed at once (memory chunk × L doubles per array).

    Returns:
        one amplitude per frequency (a row of one per signal for several), in x's unit.
    """
    t = np.asarray(t, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    out = np.empty((len(f),) + x.shape[1:])
    for lo in range(0, len(f), chunk):
        w = 2 * np.pi * np.asarray(f[lo: lo + chunk], dtype=np.float64)[:, None]  # (chunk, 1)
        c, s = np.cos(w * t), np.sin(w * t)
        xc, xs = c @ x, s @ x
        cc, ss, cs = (c * c).sum(1), (s * s).sum(1), (c * s).sum(1)
        two_tau = np.arctan2(2 * cs, cc - ss)  # 2ωτ
        ct, st = np.cos(two_tau / 2), np.sin(two_tau / 2)
        if x.ndim == 2:  # sums of every signal against the coefficients of their frequency
            ct, st, cc, ss, cs = (a[:, None] for a in (ct, st, cc, ss, cs))  # one column per signal
        num_c, num_s = ct * xc + st * xs, ct * xs - st * xc
        den_c = ct * ct * cc + 2 * ct * st * cs + st * st * ss
        den_s = ct * ct * ss - 2 * ct * st * cs + st * st * cc
        tiny = 1e-12 * len(t)
        power = 0.5 * (np.where(den_c > tiny, num_c ** 2 / np.maximum(den_c, tiny), 0.0)
                       + np.where(den_s > tiny, num_s ** 2 / np.maximum(den_s, tiny), 0.0))
        out[lo: lo + chunk] = np.sqrt(power / len(t))
    return out


def simulation_figure(bench: SysidBenchmark, sims: list[torch.Tensor]):
    """The measured output, the simulation and their difference over time, one panel (row) per test record and
    output, record by record (record i, output k in row i·p + k), each in the output's reporting unit
    (data × ``bench.scales[k]``), titled with the record's and the output's names, the unit on the y axis, against the
    time from the record's first sample (:func:`time_axis`: its sample times when irregularly sampled); the init
    window shaded up to the first scored sample; the figure's title names the inputs (:func:`inputs_text`).

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
        t = time_axis(r)
        for k, scale in enumerate(bench.scales):
            ax = axes[i * p + k, 0]
            # missing outputs (NaN) break the line: an isolated measured sample between two gaps shows as a dot
            gaps = bool(torch.isnan(r.y[:, k]).any())
            ax.plot(t, r.y[:, k].numpy() * scale, label="measured", lw=1, marker="." if gaps else None, ms=2)
            ax.plot(t, y_sim[:, k].numpy() * scale, label="simulated", lw=1)
            ax.plot(t, (y_sim[:, k] - r.y[:, k]).numpy() * scale, label="error", lw=0.8)
            if bench.n_init:
                ax.axvspan(0, t[bench.n_init], color="0.9", label="init window (not scored)")
            ax.set(title=f"{bench.title}: {r.name}, {bench.outputs[k]}", xlabel="time (s)", ylabel=bench.units[k])
            ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{bench.title}: simulated from the measured {inputs_text(bench)}")
    fig.tight_layout()
    return fig


def spectrum_figure(bench: SysidBenchmark, sims: list[torch.Tensor]):
    """Amplitude spectra |DFT| / L after the init window of the measured output (its mean removed) and of the
    simulation error, one panel (row) per output holding every test record's two curves, in the output's reporting
    unit; DC left out; an irregularly sampled record's, and one with missing outputs (NaN in ``y``: at its measured
    samples), by the Lomb-Scargle periodogram at its sample times on the same scale (:func:`lomb_scargle_amplitude`
    at :func:`spectrum_frequencies`; with missing outputs below 1 / (2 T_m), T_m the median gap between the measured
    samples, :func:`measured_period`; no curve for a record with no measured sample of the output after its init
    window); the figure's title names the inputs (:func:`inputs_text`).

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
            seen = ~np.isnan(y)  # missing outputs (NaN) are left out: the measured samples are irregular in time
            if not seen.any():  # output k not measured after this record's init window: nothing to draw (an
                continue  # IndexError on the empty times stopped the report before report.md was written)
            if r.t is not None or not seen.all():  # at the sample times: Lomb-Scargle on the |DFT| / L scale
                times = time_axis(r)[n:]
                t, y, e = times[seen], y[seen], e[seen]
                f = spectrum_frequencies(times, r.dt)
                if not seen.all():  # not above the measured samples' own Nyquist frequency (measured_period)
                    f = f[f < 1 / (2 * measured_period(t, r.dt))]
                amplitude = lomb_scargle_amplitude(t - t[0], np.stack([y - y.mean(), e], 1), f)
                ax.loglog(f, amplitude[:, 0], lw=0.8, label=f"measured, {r.name} (Lomb-Scargle)")
                ax.loglog(f, amplitude[:, 1], lw=0.8, label=f"error, {r.name} (Lomb-Scargle)")
                continue
            f = np.fft.rfftfreq(len(y), r.dt)[1:]  # without DC (the measured mean is removed)
            ax.loglog(f, np.abs(np.fft.rfft(y - y.mean()))[1:] / len(y), lw=0.8, label=f"measured, {r.name}")
            ax.loglog(f, np.abs(np.fft.rfft(e))[1:] / len(y), lw=0.8, label=f"error, {r.name}")
        ax.set(title=f"{bench.title}: amplitude spectra of {bench.outputs[k]} after the init window",
               xlabel="frequency (Hz)", ylabel=f"|DFT| / L ({bench.units[k]})")
        if ax.lines:
            ax.legend(fontsize=8)
        else:  # no test record measures output k after its init window
            ax.text(0.5, 0.5, "not measured after the init window", transform=ax.transAxes, ha="center")
    fig.suptitle(f"{bench.title}: simulated from the measured {inputs_text(bench)}")
    fig.tight_layout()
    return fig


def missing_note(bench: SysidBenchmark, records: list[dict[str, Any]]) -> str:
    """report.md's sentence on test records with missing outputs (NaN in ``IORecord.y``): how many samples each
    output was scored on (``sysid_metrics``'s ``samples``: the measured ones after the init window) of how many; ""
    when every test record is measured throughout.

    Args:
        bench: the benchmark (its test records and init window).
        records: :func:`ssmkit.sysid.workflow.evaluate`'s ``"records"``, one per test record.
    """
    parts = []
    for r, rec in zip(bench.test, records):
        if r.n_missing and "samples" in rec:
            counts = ", ".join(str(int(c)) for c in rec["samples"])
            parts.append(f"{r.name}: {counts} of {len(r) - bench.n_init}")
    if not parts:
        return ""
    return ("Missing outputs: the test records are simulated over every sample with the known inputs and scored "
            "where the output was measured; samples scored per output (after the init window): " + "; ".join(parts)
            + ".")


def irregular_note(names: list[str], plots: bool = True) -> str:
    """report.md's paragraph on irregularly sampled test records: what the scores weigh and, with the figures, what
    their time axis and spectra are (module docstring).

    Args:
        names: the irregularly sampled test records' names.
        plots: the report has the figures.
    """
    text = (f"Irregularly sampled test record{'s' if len(names) > 1 else ''} ({', '.join(names)}): simulated at the "
            "sample times; the scores weigh every sample alike, whatever its gap.")
    if plots:
        text += (" The time axis is the sample times from the record's first sample. The amplitude spectra are "
                 "Lomb-Scargle periodograms at the sample times on the |DFT| / L scale (a sinusoid of amplitude A "
                 "reads A / 2), below 1 / (2 Ts) with Ts the nominal (median) gap; what lies above that frequency is not "
                 "resolved: it aliases into the band, spread out rather than folded at one frequency where the gaps "
                 "vary much.")
    return text


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
    ``"unit"`` (one string: :func:`unit_text`), ``"units"`` and ``"outputs"`` (one per output), ``"inputs"`` and
    ``"input_units"`` (one per input, null where not stated), the scores per test record, one value per output in
    that output's unit, and the published results (``"rmse"`` a list for per-output values, ``"aggregate"`` null or
    what one number is). It is strict JSON (:func:`strict_json`): a score that is not a finite number (the NaN
    NRMSE, fit and R² of an output constant over its scored samples, a diverged simulation's NaN, the inf best
    validation values of a run without validation) is written as ``null``.

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
        "inputs": list(bench.inputs),
        "input_units": list(bench.input_units),
        "n_init": bench.n_init,
        "label": label,
        "test": scores["records"],
        "published": [{"method": p.method, "rmse": list(p.rmse) if p.per_output else p.rmse, "source": p.source,
                       "aggregate": p.aggregate, "record": p.record} for p in bench.published],
        **({"irregular_test_records": [r.name for r in bench.test if r.t is not None]}
           if any(r.t is not None for r in bench.test) else {}),
        **run,
    }
    write_text(folder / "results.json", strict_json(results, default=str))
    text = [f"# {bench.title}: {label}", "",
            f"Simulation RMSE on the {'official ' if bench.published else ''}test records after the first "
            f"{bench.n_init} samples "
            f"({bench.notes})", "", inputs_text(bench)[0].upper() + inputs_text(bench)[1:] + ".", ""]
    if bench.n_outputs > 1:
        text += ["Outputs, in the order of each cell's values: "
                 + "; ".join(output_label(bench, k) for k in range(bench.n_outputs)) + ".", ""]
    text += [table, ""]
    note = undefined_fit_note(scores)
    if note:
        text += [note, ""]
    if any("steady_state" in rec for rec in scores["records"]):
        text += ["Periodic steady state: a test record that is a whole number of periods of a periodic input is also "
                 "simulated after the same input's periods from rest, and only the record is scored (no measured "
                 "output used). It leaves out the transient of the start from rest that the official protocol "
                 "scores; the official score is the headline.", ""]
    irregular = [r.name for r in bench.test if r.t is not None]
    if irregular:
        text += [irregular_note(irregular, plots), ""]
    missing = missing_note(bench, scores["records"])
    if missing:
        text += [missing, ""]
    written = ["results.json", "report.md"]
    if plots:
        written += _plots(folder, bench, scores["simulations"])
        text += ["![simulated vs measured](simulation.png)", "", "![error spectrum](error_spectrum.png)", ""]
    write_text(folder / "report.md", "\n".join(text))
    return written
