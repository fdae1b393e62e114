"""The analysis report of a model: a one-page markdown summary, the figures as PNGs and the numbers as JSON.

    paths = ssmkit.analysis.write_report(model, "runs/x/analysis", title="runs/x/checkpoints/last.ckpt")

Files: ``summary.md`` (a table per LTI layer: systems, states, spectral radius, stability margin, time constants,
DC gain range, H∞ norm; the layers without a realisation and why; for a DeepWiener, the whole model around its
equilibria along each input (:func:`ssmkit.analysis.operating_sweeps`); the figures), ``analysis.json``,
``poles.png``, ``bode.png``, ``responses.png`` (impulse and step), ``kernels.png`` (the learned kernels),
``equilibria.png`` (a DeepWiener's static characteristic and local stability).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from ssmkit.analysis.layerwise import (LayerAnalysis, analyze_model, lti_layers, sampling_time, skipped_layers,
                                       time_constants)
from ssmkit.analysis.operating import OperatingSweep, input_statistics, operating_sweeps
from ssmkit.files import write_text

__all__ = ["layer_record", "slowest_modes", "summary_markdown", "write_report"]


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def layer_record(result: LayerAnalysis) -> dict[str, Any]:
    """A JSON-ready record of one layer's figures (inf written as null).

    Args:
        result: the layer's analysis.

    Returns:
        a dict of plain numbers and lists.
    """
    dc = result.dc_gain
    return {
        "name": result.name,
        "layer": result.layer,
        "systems": result.system.nsystems,
        "states": result.system.nstates,
        "inputs": result.system.ninputs,
        "outputs": result.system.noutputs,
        "dt": result.system.dt,
        "stable": result.stable,
        "spectral_radius": result.spectral_radius,
        "spectral_abscissa": _finite(result.spectral_abscissa),
        "stability_margin": result.stability_margin,
        "slowest_time_constant": _finite(result.slowest_time_constant),
        "fastest_time_constant": _finite(result.fastest_time_constant),
        "dc_gain_min": _finite(dc.min()),
        "dc_gain_max": _finite(dc.max()),
        "hinf_max": _finite(result.hinf.max()),
        "hinf": [_finite(h) for h in result.hinf],
        "h2_max": _finite(result.h2.max()),
        "h2": [_finite(h) for h in result.h2],
        "hankel_singular_values": _clean(result.hankel),
        "reduced_order_1pct": result.reduced_order(0.01).tolist(),
        "slowest_modes": slowest_modes(result),
        "poles_real": _clean(result.poles.real),
        "poles_imag": _clean(result.poles.imag),
        "poles_continuous_real": _clean(result.poles_continuous.real),
        "poles_continuous_imag": _clean(result.poles_continuous.imag),
    }


def _clean(a: np.ndarray) -> list:
    """A nested list with non-finite entries as None (JSON has no inf)."""
    return np.where(np.isfinite(a), a, None).tolist()


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "—" if x is None or not np.isfinite(x) else format(x, spec)


def slowest_modes(result: LayerAnalysis, count: int = 3) -> list[dict[str, float]]:
    """The ``count`` slowest modes of a layer (largest |z|; one pole of each conjugate pair), in physical units.

    Args:
        result: the layer's analysis (its ``system.dt`` in seconds, or 1 for samples).
        count: how many modes.

    Returns:
        one dict per mode: ``system`` (index in the bank), ``z`` magnitude ``abs_z`` and angle ``arg_z`` (rad),
        ``s_real``/``s_imag`` (s = log(z)/dt, 1/s), ``frequency`` (|Im s| / 2π, Hz), ``damping``
        (ζ = −Re s / |s|), ``tau`` (−dt / log|z|, s); non-finite values as None.
    """
    z, s = result.poles, result.poles_continuous  # (G, n)
    g, k = np.nonzero(z.imag >= 0)  # the upper half-plane: one pole per conjugate pair, real poles kept
    order = np.argsort(-np.abs(z[g, k]), kind="stable")[:count]
    modes = []
    for i in order:
        zi, si = z[g[i], k[i]], s[g[i], k[i]]
        size = abs(si)
        tau = time_constants(np.asarray(zi), result.system.dt)
        modes.append({
            "system": int(g[i]), "abs_z": float(abs(zi)), "arg_z": float(np.angle(zi)),
            "s_real": _finite(si.real), "s_imag": _finite(si.imag), "frequency": _finite(abs(si.imag) / (2 * np.pi)),
            "damping": _finite(-si.real / size) if np.isfinite(size) and size > 0 else None, "tau": _finite(float(tau)),
        })
    return modes


def _order_text(result: LayerAnalysis) -> str:
    """'r of n' (the largest per-system order for a 1 % H∞ bound), or '—' when a system is unstable."""
    order = result.reduced_order(0.01)
    return "—" if (order < 0).any() else f"{int(order.max())} of {result.system.nstates}"


def _sweep_lines(sweeps: list[OperatingSweep] | str) -> list[str]:
    """The summary's section on the model's equilibria (or why there is none)."""
    head = ["", "## The whole model around its equilibria", ""]
    if isinstance(sweeps, str):
        return head + [f"Not computed: {sweeps}."]
    points = sweeps[0].u.shape[0] if sweeps else 0
    lines = head + [
        "Each input swept over mean ± 2 std of the training data (the model's input normalisation; an ensemble's "
        f"members' average), the others at their means, {points} points; at each point the equilibrium x* "
        "(f(x*, u) = x*, Newton's method), its output y* (the static characteristic) and the linearisation of the "
        "whole model there (ssmkit.analysis.NonlinearSystem): its DC gain is the local slope ∂y*/∂u, its spectral "
        "radius says whether the equilibrium attracts nearby states. Physical units of u and y.",
        "",
        "| input | u range | output | y* range | local DC gain ∂y*/∂u range | largest local spectral radius | "
        "stable at every point |",
        "|---|---|---|---|---|---|---|",
    ]
    for sw in sweeps:
        i, u = sw.input, sw.u[:, sw.input]
        for k in range(sw.y.shape[1]):
            gain = sw.dc_gain[:, k, i]
            lines.append(f"| {sw.input_label()} | [{_fmt(u.min())}, {_fmt(u.max())}] | {sw.output_label(k)} | "
                         f"[{_fmt(sw.y[:, k].min())}, {_fmt(sw.y[:, k].max())}] | [{_fmt(gain.min())}, {_fmt(gain.max())}] | "
                         f"{sw.spectral_radius.max():.6f} | {'yes' if sw.stable else '**NO**'} |")
    return lines


def summary_markdown(results: list[LayerAnalysis], skipped: list[tuple[str, str, str]], title: str,
                     figures: list[str], seconds: bool | None = None,
                     sweeps: list[OperatingSweep] | str | None = None) -> str:
    """The one-page summary as markdown.

    Args:
        results: the LTI layers' analyses.
        skipped: (module path, layer name, reason) of the layers without a realisation.
        title: what was analysed (a checkpoint path).
        figures: PNG file names to embed.
        seconds: whether dt is a sampling time in seconds (None: when dt ≠ 1; else times are in samples).
        sweeps: a DeepWiener's equilibria along each input (:func:`operating_sweeps`), or why there are none; None
            for a model without input normalisation (no section).

    Returns:
        the markdown text.
    """
    dt = results[0].system.dt if results else 1.0
    physical = dt != 1.0 if seconds is None else seconds
    unit = "s" if physical else "samples"
    rate = "1/s" if physical else "1/sample"
    freq = "Hz" if physical else "cycles/sample"
    lines = [f"# Control analysis: {title}", ""]
    if results:
        stable = all(r.stable for r in results)
        worst = max(results, key=lambda r: r.spectral_radius)
        lines += [
            f"{len(results)} LTI layer(s), sampling time dt = {dt:g} {unit if physical else '(samples)'}. Every layer Schur stable: "
            f"**{'yes' if stable else 'NO'}** (largest spectral radius {worst.spectral_radius:.6f} in {worst.name}).",
            "",
            f"| layer | type | G × (n states, m in, p out) | spectral radius | margin 1 − ρ | max Re s ({rate}) | "
            f"slowest τ ({unit}) | fastest τ ({unit}) | DC gain range | H∞ (max over G) | H2 (max over G) | "
            "states for 1 % |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            s = r.system
            lines.append(
                f"| {r.name} | {r.layer} | {s.nsystems} × ({s.nstates}, {s.ninputs}, {s.noutputs}) | "
                f"{r.spectral_radius:.6f} | {r.stability_margin:.3g} | {_fmt(r.spectral_abscissa)} | "
                f"{_fmt(r.slowest_time_constant)} | "
                f"{_fmt(r.fastest_time_constant)} | [{_fmt(r.dc_gain.min())}, {_fmt(r.dc_gain.max())}] | "
                f"{_fmt(r.hinf.max())} | {_fmt(r.h2.max())} | {_order_text(r)} |"
            )
        lines += [
            "",
            "Poles z are those of each layer's real realisation (control convention x[k+1] = A x[k] + B u[k]); "
            "equivalent continuous poles s = log(z)/dt are in analysis.json's layers (time constants τ = −dt / log|z|). "
            "H∞ norms are certified (Cayley map + Hamiltonian test, relative bracket 2e-10 at the default tolerance; "
            "wider, still certified, for poles within about 1e-5 of the unit circle). DC gains and H∞ norms are "
            "plain ratios (not dB) of each layer alone, between the model's internal signals (for a DeepWiener: after "
            "the input normalisation and encoder, before the output decoder), not the model's gain from u to y. "
            "States for 1 %: per system, the fewest states whose balanced truncation is certified within 1 % of its "
            "H∞ norm (2 Σ_{i>r} σ_i ≤ 0.01 ‖G‖∞ over the Hankel singular values σ_i, in analysis.json); the largest "
            "over the layer's systems, of n.",
            "",
            f"Figures: Bode magnitude in dB and phase in degrees against ω in {'rad/s' if physical else 'rad/sample'} "
            f"up to the Nyquist frequency π/dt; impulse (unit pulse at t = 0) and step responses against time in "
            f"{unit}.",
            "",
            f"Slowest modes per layer (one pole of each conjugate pair; s = log(z)/dt in {rate}, frequency |Im s|/2π "
            f"in {freq}, damping ζ = −Re s/|s|, τ in {unit}):",
            "",
            f"| layer | system | \\|z\\| | arg z (rad) | s | frequency ({freq}) | ζ | τ ({unit}) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            for m in slowest_modes(r):
                s_text = f"{_fmt(m['s_real'])} {'+' if (m['s_imag'] or 0) >= 0 else '−'} {_fmt(abs(m['s_imag'] or 0))}i"
                lines.append(f"| {r.name} | {m['system']} | {m['abs_z']:.6f} | {m['arg_z']:.4g} | {s_text} | "
                             f"{_fmt(m['frequency'])} | {_fmt(m['damping'], '.3g')} | {_fmt(m['tau'])} |")
    else:
        lines.append("The model has no layer with a state-space realisation.")
    if skipped:
        lines += ["", "Layers without a state-space realisation (not analysed):", ""]
        lines += [f"- {name} ({layer}): {why}" for name, layer, why in skipped]
    if sweeps is not None:
        lines += _sweep_lines(sweeps)
    if figures:
        lines.append("")
        lines += [f"![{os.path.splitext(f)[0]}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _kernels(model: nn.Module, results: list[LayerAnalysis]) -> list[tuple[str, np.ndarray]]:
    from ssmkit.analysis.plots import impulse_response, response_length

    layers = dict(lti_layers(model))
    out = []
    for r in results:
        L = response_length(r, 512)
        layer = layers[r.name]
        if layer.supports("kernel"):
            with torch.no_grad():
                K = layer.kernel(L).detach().cpu().double().numpy()  # (H, L) or (H_out, H_in, L)
            if K.ndim == 3:
                K = np.stack([K[i, i] for i in range(min(K.shape[0], K.shape[1]))])  # (H, L) diagonal
            title = f"{r.name} ({r.layer}): kernel K (channels × lags)"
        else:
            h = impulse_response(r.system, L)  # (G, p, m, L)
            K = h[:, 0, 0] if r.system.nsystems > 1 else np.stack([h[0, i, i] for i in range(min(h.shape[1:3]))])
            title = f"{r.name} ({r.layer}): impulse response of the realisation (no kernel view)"
        out.append((title, K))
    return out


def write_report(model: nn.Module, out: str, title: str = "model", dt: float | None = None, channels: int = 8,
                 plots: bool = True) -> dict[str, str]:
    """Analyse ``model`` and write summary.md, analysis.json and (with matplotlib) the PNG figures into ``out``.

    Args:
        model: a SequenceModel, a DeepWiener or any module holding ssmkit layers.
        out: the output folder (created).
        title: what the summary calls the model (the checkpoint path).
        dt: sampling time in seconds (None: the model's ``dt``, else 1; a model's own must agree with it).
        channels: the most channels per layer in the figures.
        plots: draw the figures (False: markdown and JSON only).

    Returns:
        the written files by kind (``summary``, ``json``, ``poles``, ``bode``, ``responses``, ``kernels``, and
        ``equilibria`` for a DeepWiener).
    """
    step, seconds = sampling_time(model, dt)  # checked before anything is written
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an int >= 1 (the most channels per layer in the figures); got {channels!r}")
    os.makedirs(out, exist_ok=True)
    results = analyze_model(model, step)
    skipped = skipped_layers(model)
    sweeps = None
    if input_statistics(model) is not None:
        try:
            sweeps = operating_sweeps(model)
        except ValueError as err:  # an equilibrium Newton's method does not reach: the report says so
            sweeps = f"no equilibrium found everywhere along the inputs ({err})"
    paths: dict[str, str] = {}
    figures: list[str] = []
    if plots and results:
        from ssmkit.analysis import plots as figs

        paths["poles"] = figs.plot_poles(results, os.path.join(out, "poles.png"), seconds)
        paths["bode"] = figs.plot_bode(results, os.path.join(out, "bode.png"), channels, seconds=seconds)
        paths["responses"] = figs.plot_responses(results, os.path.join(out, "responses.png"), channels, seconds=seconds)
        paths["kernels"] = figs.plot_kernels(_kernels(model, results), os.path.join(out, "kernels.png"))
        figures = [os.path.basename(paths[k]) for k in ("poles", "bode", "responses", "kernels")]
    if plots and isinstance(sweeps, list) and sweeps:
        from ssmkit.analysis import plots as figs

        paths["equilibria"] = figs.plot_equilibria(sweeps, os.path.join(out, "equilibria.png"), channels)
        figures.append("equilibria.png")
    record = {
        "title": title,
        "dt": step,
        "layers": [layer_record(r) for r in results],
        "skipped": [{"name": n, "layer": l, "reason": why} for n, l, why in skipped],
    }
    if sweeps is not None:
        record["equilibria"] = sweeps if isinstance(sweeps, str) else [
            {"input": sw.input, "input_name": sw.input_label(),
             "output_names": [sw.output_label(k) for k in range(sw.y.shape[1])], "u": _clean(sw.u), "y": _clean(sw.y),
             "spectral_radius": _clean(sw.spectral_radius), "dc_gain": _clean(sw.dc_gain)} for sw in sweeps]
    paths["json"] = os.path.join(out, "analysis.json")
    write_text(paths["json"], json.dumps(record, indent=1, allow_nan=False))
    paths["summary"] = os.path.join(out, "summary.md")
    write_text(paths["summary"], summary_markdown(results, skipped, title, figures, seconds, sweeps))
    return paths

