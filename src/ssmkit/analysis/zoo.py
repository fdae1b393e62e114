"""The zoo: the control-theoretic comparison of arXiv 2403.16899 (Amo Alonso, Sieber & Zeilinger), generated.

    rows = zoo_table()                        # one row per registered layer
    print(to_markdown(rows))                  # or to_csv(rows)
    stats = pole_statistics(model)            # a trained model's measured poles, per layer

Each row joins what the layer class declares (``cls.zoo``, a :class:`ssmkit.layers.ZooEntry`: A's structure,
parametrisation, discretisation, LTI or time-varying, stability, costs) with what the layer reports
(``capabilities``, ``backends``, and the state size of an instance built with its defaults on the meta device, in
real numbers per sequence at width ``d_model``). A registered layer whose class does not declare its own ``zoo``
raises ``TypeError``: the table is never completed by hand.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ssmkit.analysis.layerwise import lti_layers, sampling_time, time_constants

__all__ = ["ZOO_COLUMNS", "pole_statistics", "state_size", "to_csv", "to_markdown", "zoo_entry", "zoo_table"]

ZOO_COLUMNS = (
    "layer", "paper", "structure", "parametrisation", "discretisation", "lti", "stable_by_construction", "stability",
    "state_size", "step_cost", "sequence_cost", "kernel", "state_space", "step", "backends",
)


def zoo_entry(cls: type) -> Any:
    """The :class:`ssmkit.layers.ZooEntry` a layer class declares itself (``TypeError`` if missing or inherited).

    Args:
        cls: a registered layer class.

    Returns:
        its ``ZooEntry``.
    """
    from ssmkit.layers.zoo import ZooEntry

    entry = cls.__dict__.get("zoo")
    if not isinstance(entry, ZooEntry):
        raise TypeError(
            f"layer {getattr(cls, 'name', '') or cls.__name__!r} ({cls.__name__}) declares no zoo entry of its own: add "
            "a class attribute zoo = ZooEntry(paper=..., structure=..., parametrisation=..., discretisation=..., "
            "time_varying=..., stable_by_construction=..., stability=..., step_cost=..., sequence_cost=...) "
            "(ssmkit.layers.ZooEntry)"
        )
    return entry


def state_size(layer: nn.Module) -> int | None:
    """Real numbers in one sequence's state of ``layer`` (complex entries count twice); None if it grows with L.

    Args:
        layer: a sequence layer (on any device, the meta device included).

    Returns:
        the count, or None for a growing state (a key/value cache).
    """
    def leaves(spec):
        return [spec] if hasattr(spec, "shape") and hasattr(spec, "dtype") else [x for s in spec for x in leaves(s)]

    total = 0
    for leaf in leaves(layer.state_spec()):
        if getattr(leaf, "growing", None) is not None:
            return None
        total += math.prod(leaf.shape) * (2 if leaf.dtype.is_complex else 1)
    return total


def zoo_table(d_model: int = 64, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per registered layer (columns ``ZOO_COLUMNS``), from the declarations and a default instance.

    Args:
        d_model: the width at which state sizes are counted.
        names: the layers to list (default every registered one, ``ssmkit.layers.available()``).

    Returns:
        a list of dicts.
    """
    from ssmkit.layers.registry import available, build, layer_class

    rows = []
    for name in available() if names is None else names:
        cls = layer_class(name)
        entry = zoo_entry(cls)
        try:
            layer = build(name, d_model=d_model, device="meta")  # nothing allocated; the state spec only
        except ValueError as err:
            raise ValueError(f"layer {name!r} cannot be built with its defaults at d_model={d_model}: {err}") from err
        caps = cls.capabilities
        rows.append({
            "layer": name,
            "paper": entry.paper,
            "structure": entry.structure,
            "parametrisation": entry.parametrisation,
            "discretisation": entry.discretisation,
            "lti": not entry.time_varying,
            "stable_by_construction": entry.stable_by_construction,
            "stability": entry.stability,
            "state_size": state_size(layer) if caps.step else None,
            "step_cost": entry.step_cost,
            "sequence_cost": entry.sequence_cost,
            "kernel": caps.kernel,
            "state_space": caps.state_space,
            "step": caps.step,
            "backends": ", ".join(("auto",) + tuple(cls.backends)),
        })
    return rows


def pole_statistics(model: nn.Module, dt: float | None = None) -> list[dict[str, Any]]:
    """Measured pole statistics of every sequence layer of a (trained) model.

    LTI layers: spectral radius ρ = max |z| of the exported realisation, stability margin 1 - ρ, the slowest and
    fastest time constants τ = -dt / log|z| (seconds, or samples when dt = 1) and the median one. Layers without a
    realisation (time-varying mixers) get a row with the reason and no numbers.

    Args:
        model: a SequenceModel, a DeepWiener or any module holding ssmkit layers.
        dt: sampling time in seconds (None: the model's ``dt``, else 1; a model's own must agree with it).

    Returns:
        a list of dicts with ``name``, ``layer``, ``spectral_radius``, ``stability_margin``, ``slowest_tau``,
        ``median_tau``, ``fastest_tau``, ``time_unit`` (``"s"`` when ``dt`` is given or the model has one, as
        ``ssmkit analyze`` decides, else ``"samples"``), ``dt`` and ``note``.

    Raises:
        ValueError: an LTI layer has a non-finite parameter (a diverged model), naming the layer and the parameters.
    """
    from ssmkit.layers.protocol import SequenceLayer

    step, seconds = sampling_time(model, dt)
    unit = "s" if seconds else "samples"
    lti = dict(lti_layers(model))
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, SequenceLayer):
            continue
        row: dict[str, Any] = {"name": name, "layer": type(module).name or type(module).__name__}
        if name in lti:
            bad = [n for n, p in module.named_parameters() if not bool(torch.isfinite(p).all())]
            if bad:
                raise ValueError(f"layer {name!r} has non-finite parameters {bad} (a diverged model?): its poles "
                                 "cannot be computed")
            z = module.state_space().to_real().poles()  # (G, n)
            tau = time_constants(z, step)
            rho = float(np.abs(z).max())
            row.update(spectral_radius=rho, stability_margin=1.0 - rho, slowest_tau=float(tau.max()),
                       median_tau=float(np.median(tau)), fastest_tau=float(tau.min()), time_unit=unit, dt=step,
                       note="")
        else:
            row.update(spectral_radius=None, stability_margin=None, slowest_tau=None, median_tau=None,
                       fastest_tau=None, time_unit=unit, dt=step, note=module.unsupported("state_space") or "")
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"  # inf, -inf and nan by name
    return str(value).replace("|", "\\|")


def _markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def to_markdown(rows: Sequence[dict[str, Any]], measured: Sequence[dict[str, Any]] | None = None) -> str:
    """The zoo as markdown, with the measured pole statistics below it when given.

    Args:
        rows: from `zoo_table`.
        measured: from `pole_statistics`, or None.

    Returns:
        the markdown text.
    """
    lines = ["# The ssmkit zoo (generated from the registered layers; arXiv 2403.16899's axes)", ""]
    lines += _markdown_table(rows, ZOO_COLUMNS)
    lines += ["", "state_size: real numbers per sequence at the given width with the layer's defaults "
              "(complex entries count twice; — where the state grows with L or the layer has no step). "
              "lti: the mixing (A, B, C) does not depend on the input; gates around an LTI core (gss, h3, hyena) "
              "leave it yes although the layer as a whole is not linear (their state_space is no). "
              "stable_by_construction: the transition stays inside the unit disc for every parameter value (and every "
              "input, for time-varying layers); for layers without a "
              "recurrence (FIR kernels, attention) it means bounded outputs for bounded inputs. "
              "Costs are big-O per sequence (H width, N state, L length, E inner channels, T chunk)."]
    if measured is not None:
        lines += ["", "## Measured poles of the checkpoint", ""]
        lines += _markdown_table(measured, ("name", "layer", "spectral_radius", "stability_margin", "slowest_tau",
                                            "median_tau", "fastest_tau", "note"))
        if measured:
            unit, step = measured[0]["time_unit"], measured[0]["dt"]
            where = f" (dt = {step:g} s)." if unit == "s" else "."
            lines += ["", f"Time constants τ = −dt / log|z| in {unit}{where}"]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]], measured: Sequence[dict[str, Any]] | None = None) -> str:
    """Rows as CSV (header first): the zoo rows, or the measured rows when ``measured`` is given.

    Args:
        rows: from `zoo_table` (ignored when ``measured`` is given).
        measured: from `pole_statistics`, or None.

    Returns:
        the CSV text.
    """
    data = list(measured) if measured is not None else list(rows)
    columns = list(ZOO_COLUMNS) if measured is None else list(data[0]) if data else ["name"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(data)
    return buffer.getvalue()
