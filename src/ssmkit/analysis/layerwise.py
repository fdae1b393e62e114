"""Control analysis of every LTI layer of a model: poles, stability margin, time constants, DC gain, H∞ norm.

    results = ssmkit.analysis.analyze_model(model)          # a SequenceModel, a DeepWiener, any nn.Module
    for r in results: print(r.name, r.spectral_radius, r.hinf.max())

Each layer that has a state-space realisation (``layer.supports("state_space")``) is exported as a
:class:`StateSpace` bank sampled every ``dt`` seconds (a model's ``dt`` attribute, e.g. a DeepWiener's Ts, else 1:
time in samples; a ``dt`` given for a model that carries its own must agree with it). Its discrete poles z (those of
the real realisation: conjugates included) map to the equivalent continuous poles s = log(z) / dt (the ZOH
correspondence z = e^{s dt}; Δ-discretised layers such as S4D-ZOH give back Δλ / dt exactly, up to the branch of the
logarithm; for bilinear layers such as S4, whose z is the Cayley map of Δλ, log(z) / dt is the continuous pole of the
discrete system, not Δλ / dt). The stability margin is 1 - ρ with ρ = max |z| the spectral radius; a mode's time
constant is τ = -dt / log |z| (the e-folding time of its envelope). The Hankel singular values σ_i say how many
states matter: balanced truncation to r states errs by at most 2 Σ_{i>r} σ_i in H∞ (`ssmkit.analysis.reduction`), so
`reduced_order` is the smallest r whose bound is within a fraction of the layer's H∞ norm. r = 0 says that the
layer's feed-through D alone is within it (‖G − D‖_∞ ≤ 2 Σ_i σ_i): no state is needed, and the reduced system is the
memoryless y = D u, not a `StateSpace.balred` result (balred takes 1 <= r; a StateSpace has at least one state).

Letters: G systems of a bank, n states, m inputs, p outputs.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from torch import nn

from ssmkit.analysis.reduction import h2_and_hankel
from ssmkit.analysis.statespace import StateSpace
from ssmkit.utils import check_sampling_time

__all__ = ["LayerAnalysis", "analyze_model", "lti_layers", "model_dt", "reduced_order", "sampling_time",
           "skipped_layers", "time_constants"]

_SAME_STEP = 1e-6  # a given dt agrees with a model's own Ts within this relative difference (a Ts read from float32)


@dataclass(frozen=True)
class LayerAnalysis:
    """The control-theoretic figures of one LTI layer of a model.

    Attributes:
        name: the layer's module path in the model (``blocks.0.layer``).
        layer: its registry name (``s4d``).
        system: the exported bank, real realisation, with ``dt`` in seconds: A (G, n, n), B (G, n, m), ...
        poles: (G, n) complex discrete poles z of each system.
        poles_continuous: (G, n) complex equivalent continuous poles s = log(z) / dt, in 1/s.
        spectral_abscissa: max Re s over the bank, 1/s (< 0: stable; -1/slowest_time_constant).
        spectral_radius: max |z| over the bank.
        stability_margin: 1 - spectral_radius (> 0: Schur stable).
        slowest_time_constant: the largest τ = -dt / log|z| over the bank, seconds (inf if any |z| >= 1).
        fastest_time_constant: the smallest τ, seconds (0 for a pole at z = 0).
        dc_gain: (G, p, m) float64 steady-state gains (inf for a pole at z = 1).
        hinf: (G,) certified H∞ norms (inf for unstable systems; ``StateSpace.hinf_norm``).
        h2: (G,) H2 norms (inf for unstable systems; ``StateSpace.h2_norm``).
        hankel: (G, n) Hankel singular values, decreasing (NaN rows for unstable systems; ``StateSpace.hsvd``).
    """

    name: str
    layer: str
    system: StateSpace
    poles: np.ndarray
    poles_continuous: np.ndarray
    spectral_abscissa: float
    spectral_radius: float
    stability_margin: float
    slowest_time_constant: float
    fastest_time_constant: float
    dc_gain: np.ndarray
    hinf: np.ndarray
    h2: np.ndarray
    hankel: np.ndarray

    @property
    def stable(self) -> bool:
        """Whether every system of the layer is Schur stable."""
        return self.spectral_radius < 1.0

    def reduced_order(self, rel: float = 0.01) -> np.ndarray:
        """Per system, the fewest states r whose balanced truncation is certified within ``rel`` of its H∞ norm:
        the smallest r with 2 Σ_{i>r} σ_i <= rel ‖G‖_∞ (-1 for an unstable system; 0 when the feed-through D alone
        is within the bound, see :func:`reduced_order`).

        Args:
            rel: the admitted H∞ error as a fraction of the norm, > 0.

        Returns:
            (G,) int64: r >= 1 is an order for ``self.system.balred``; 0 means "no state: the memoryless
            y = D u", which balred (1 <= r) has no system for.
        """
        return reduced_order(self.hankel, self.hinf, rel)


def sampling_time(model: nn.Module, dt: float | None = None) -> tuple[float, bool]:
    """The time step to analyse ``model`` with, and whether it is in seconds.

    The model's own ``dt`` attribute when it is a number (a DeepWiener's Ts: the step its layers' discrete poles
    z were identified at); a given ``dt`` must then agree with it (to 1e-6 relative: a Ts read from float32) and is
    refused otherwise, with a ``ValueError`` naming both values: analysing z at another step would put every
    continuous pole s = log(z) / dt, time constant and frequency on another time axis while still saying seconds
    (set ``model.dt`` first where the model's Ts is wrong). A given ``dt`` is used as the sampling time of a model
    without a numeric ``dt`` of its own (or whose own is broken, 0 or NaN); neither given: 1.0 with the time axis in
    samples. A given or carried ``dt`` that is not a finite number > 0 raises ``ValueError`` (a model that carries
    ``dt = 0`` or NaN is broken, not "in samples").

    Args:
        model: any module.
        dt: sampling time in seconds, or None.

    Returns:
        (dt as a float, True when the time axis is seconds).

    Raises:
        ValueError: ``dt`` or the model's own ``dt`` is not a finite number > 0, or ``dt`` disagrees with the
            model's own.
    """
    own = getattr(model, "dt", None)
    carried = isinstance(own, numbers.Real) and not isinstance(own, bool)
    if dt is not None:
        step = check_sampling_time(dt)
        if carried and math.isfinite(own) and own > 0 and not abs(step - own) <= _SAME_STEP * own:
            raise ValueError(f"dt = {step!r} s disagrees with the model's own sampling time Ts = {float(own)!r} s "
                             f"(its dt attribute, the step its poles were identified at): leave dt out (None), or "
                             f"set model.dt first if the model's Ts is wrong")
        return step, True
    if carried:
        return check_sampling_time(own, "the model's dt"), True
    return 1.0, False


def model_dt(model: nn.Module) -> float:
    """The sampling time of a model in seconds: its numeric ``dt`` attribute (a DeepWiener's Ts), else 1.0 (samples)."""
    return sampling_time(model)[0]


def lti_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The (module path, layer) of every sequence layer of ``model`` that has a state-space realisation, in order.

    Args:
        model: any module (a SequenceModel, a DeepWiener, a layer itself).

    Returns:
        an iterator of (name, layer) pairs; a layer that is the model itself is named ``""``.
    """
    from ssmkit.layers.protocol import SequenceLayer

    for name, module in model.named_modules():
        if isinstance(module, SequenceLayer) and module.supports("state_space"):
            yield name, module


def skipped_layers(model: nn.Module) -> list[tuple[str, str, str]]:
    """The sequence layers of ``model`` without a state-space realisation: (module path, registry name, why).

    Args:
        model: any module.

    Returns:
        a list of (name, layer name, reason) triples.
    """
    from ssmkit.layers.protocol import SequenceLayer

    return [
        (name, type(m).name or type(m).__name__, m.unsupported("state_space") or "")
        for name, m in model.named_modules()
        if isinstance(m, SequenceLayer) and not m.supports("state_space")
    ]


def time_constants(poles: np.ndarray, dt: float) -> np.ndarray:
    """τ = -dt / log|z| of each discrete pole (inf for |z| >= 1, 0 for z = 0).

    Args:
        poles: (...) complex discrete poles.
        dt: sampling time, seconds.

    Returns:
        (...) float64 seconds.
    """
    r = np.abs(poles)
    with np.errstate(divide="ignore"):
        tau = np.where(r < 1.0, -dt / np.log(np.where(r > 0, r, 1.0)), np.inf)  # (...)
    return np.where(r == 0, 0.0, tau)


def reduced_order(hankel: np.ndarray, hinf: np.ndarray, rel: float = 0.01) -> np.ndarray:
    """The smallest r with 2 Σ_{i>r} σ_i <= rel · hinf per system (the balanced-truncation bound); -1 where σ is NaN.

    Al-Saggaf & Franklin's bound ‖G − G_r‖_∞ <= 2 Σ_{i>r} σ_i (`ssmkit.analysis.reduction`) holds for r = 0 too,
    with G_0 = D, the system's feed-through: r = 0 is returned when D alone is within ``rel`` of ‖G‖_∞ (a layer
    whose states barely reach its output, or never: σ = 0). It is a result, not an order for
    :meth:`StateSpace.balred`, which takes 1 <= r (a StateSpace has at least one state) and refuses r past a
    system's numerical order, so none for σ = 0: the reduced system of r = 0 is the memoryless y = D u.

    Args:
        hankel: (G, n) Hankel singular values, decreasing (NaN rows for unstable systems).
        hinf: (G,) H∞ norms.
        rel: the admitted error as a fraction of the norm, > 0.

    Returns:
        (G,) int64 in {-1, 0, 1, ..., n}: -1 unstable, 0 the feed-through D alone, r >= 1 states for ``balred(r)``
        (unless ``rel`` is near rounding, ~n·eps·σ_1 / ‖G‖_∞, where r may count states balred finds numerically
        absent).
    """
    if not (isinstance(rel, (int, float)) and not isinstance(rel, bool) and rel > 0):
        raise ValueError(f"rel must be a number > 0 (a fraction of the H∞ norm); got {rel!r}")
    tail = 2 * np.cumsum(hankel[:, ::-1], axis=1)[:, ::-1]  # (G, n): tail[:, r] = 2 Σ_{i>=r} σ_i (0-based)
    within = np.concatenate([tail, np.zeros((hankel.shape[0], 1))], axis=1) <= rel * hinf[:, None]  # (G, n + 1)
    order = within.argmax(axis=1)  # the first r whose dropped tail is within the bound (r = n always is)
    return np.where(np.isnan(hankel).any(axis=1), -1, order).astype(np.int64)


def analyze_layer(name: str, layer: nn.Module, dt: float, hinf_tol: float = 1e-10) -> LayerAnalysis:
    """The figures of one LTI layer (see :class:`LayerAnalysis`).

    Args:
        name: the layer's module path.
        layer: a sequence layer with a state-space realisation.
        dt: sampling time, seconds.
        hinf_tol: relative width of the certified H∞ bracket.

    Returns:
        the :class:`LayerAnalysis`.

    Raises:
        ValueError: for a layer whose realisation holds a NaN or inf (non-finite parameters), naming the layer, the
            system and the matrix.
    """
    exported = layer.state_space()
    system = StateSpace(exported.A, exported.B, exported.C, exported.D, dt=dt).to_real()
    system._require_finite(f"the analysis of layer {name!r}")  # names the layer, not only the system
    z = system.poles()  # (G, n)
    with np.errstate(divide="ignore"):
        s = np.log(z.astype(np.complex128)) / dt  # (G, n): z = e^{s dt}
    rho = float(np.abs(z).max())
    tau = time_constants(z, dt)
    h2, hankel = h2_and_hankel(system, hankel=True)  # one solve of the Gramians for both
    return LayerAnalysis(
        name=name,
        layer=type(layer).name or type(layer).__name__,  # an unregistered inner SSM (GSS) by its class
        system=system,
        poles=z,
        poles_continuous=s,
        spectral_abscissa=float(s.real.max()),
        spectral_radius=rho,
        stability_margin=1.0 - rho,
        slowest_time_constant=float(tau.max()),
        fastest_time_constant=float(tau.min()),
        dc_gain=system.dcgain(),
        hinf=system.hinf_norm("hamiltonian", hinf_tol),
        h2=h2,
        hankel=hankel,
    )


def analyze_model(model: nn.Module, dt: float | None = None, hinf_tol: float = 1e-10) -> list[LayerAnalysis]:
    """Analyse every LTI layer of ``model`` (those with ``supports("state_space")``), in module order.

    Args:
        model: a SequenceModel, a DeepWiener, a layer, or any module holding ssmkit layers.
        dt: sampling time in seconds; None = the model's ``dt`` attribute if it has one, else 1 (samples). For a
            model with a ``dt`` of its own (a DeepWiener's Ts) it must agree with it (`sampling_time`).
        hinf_tol: relative width of the certified H∞ bracket.

    Returns:
        one :class:`LayerAnalysis` per LTI layer (empty if the model has none; see `skipped_layers`).

    Raises:
        ValueError: ``dt`` is not a finite number > 0, or disagrees with the model's own ``dt`` (naming both).
    """
    step, _ = sampling_time(model, dt)
    return [analyze_layer(name, layer, step, hinf_tol) for name, layer in lti_layers(model)]
