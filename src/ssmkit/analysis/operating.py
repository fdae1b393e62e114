"""A deep Wiener model around its equilibria: each input swept over the range it was trained on, the steady-state
output there (the static characteristic) and the small-signal model at each point (local DC gain, local stability).

    sweeps = ssmkit.analysis.operating_sweeps(model)          # a trained DeepWiener
    sweeps[0].u[:, 0], sweeps[0].y[:, 0]                      # y*(u) of output 0 along input 0
    sweeps[0].spectral_radius                                 # of the linearisation at each equilibrium

For input i, u_i runs over μ_i ± 2σ_i (the model's stored input normalisation, i.e. the training data's mean and
standard deviation) with the other inputs at their means; at each point the equilibrium x* (f(x*, u) = x*) and its
output y* come from :class:`ssmkit.analysis.NonlinearSystem`, and the linearisation there gives the local spectral
radius (< 1: the equilibrium attracts nearby states) and the local DC gain C (I - A)⁻¹ B + D, the slope ∂y*/∂u of
the static characteristic. A deep Wiener model of Schur-stable LTI blocks is stable at every point (δISS, see
:mod:`ssmkit.sysid.wiener`); a time-varying block (Mamba, RG-LRU) is not covered by that argument, and the sweep shows
where its equilibria are stable. The layer-by-layer analysis (:func:`analyze_model`) describes the blocks alone;
this describes the model from u to y as it simulates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ssmkit.analysis.nonlinear import NonlinearSystem

__all__ = ["OperatingSweep", "input_statistics", "operating_sweeps", "spectral_radius"]


@dataclass(frozen=True)
class OperatingSweep:
    """The equilibria along one input (module docstring); G points.

    Attributes:
        input: the index i of the swept input.
        u: (G, m) the constant inputs (input i swept, the others at their means).
        y: (G, p) the steady-state outputs y*.
        spectral_radius: (G,) the largest pole magnitude of the linearisation at each equilibrium.
        dc_gain: (G, p, m) the linearisation's DC gain C (I - A)⁻¹ B + D at each point (∂y*/∂u).
        input_names: the model's m input names (``model.signals``: a model from ``build_model`` or ``identify``,
            or named by ``name_signals``), or None: then ``u[i]``.
        output_names: its p output names, or None: then ``y[k]``.
    """

    input: int
    u: np.ndarray
    y: np.ndarray
    spectral_radius: np.ndarray
    dc_gain: np.ndarray
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None

    def input_label(self) -> str:
        """The swept input's name, or ``u[i]``."""
        return self.input_names[self.input] if self.input_names is not None else f"u[{self.input}]"

    def output_label(self, k: int) -> str:
        """Output k's name, or ``y[k]``.

        Args:
            k: the output's index.
        """
        return self.output_names[k] if self.output_names is not None else f"y[{k}]"

    @property
    def stable(self) -> bool:
        """Whether every equilibrium of the sweep is locally asymptotically stable (spectral radius < 1)."""
        return bool((self.spectral_radius < 1).all())


def operating_sweeps(model: nn.Module, points: int = 21, max_states: int = 2048) -> list[OperatingSweep] | str:
    """Sweep every input of a DeepWiener over its training range (module docstring).

    Args:
        model: a :class:`ssmkit.sysid.DeepWiener` (its ``u_mean`` and ``u_std`` give the ranges) or a
            :class:`ssmkit.sysid.WienerEnsemble` (its members' average; :func:`input_statistics`).
        points: G, the points per input (>= 2).
        max_states: the largest state vector to analyse (an ensemble's: each member's); a bigger model is skipped
            (each point costs a Jacobian of n × n and a solve with it per Newton iteration).

    Returns:
        one :class:`OperatingSweep` per input, or a sentence saying why the model was not swept (no input
        normalisation, a state larger than ``max_states``).
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int >= 2; got {points!r}")
    if isinstance(max_states, bool) or not isinstance(max_states, int) or max_states < 1:
        raise ValueError(f"max_states must be an int >= 1; got {max_states!r}")
    stats = input_statistics(model)
    if stats is None:
        return "the model stores no input normalisation (u_mean, u_std) to take the input ranges from"
    # an ensemble's output is its members' mean and their states are apart: each member is swept on its own (its
    # equilibria, local gains and radii), y* and the gains averaged and the radius the largest
    system = NonlinearSystem(model)
    systems = system.members or [system]
    largest = max(sys.n_states for sys in systems)
    if largest > max_states:
        return f"its state vector has {largest} numbers, more than max_states = {max_states}"
    mu, sigma = stats
    signals = getattr(model, "signals", None)  # a DeepWiener's (an ensemble's: its members' common) names, or None
    names = (tuple(signals["inputs"]), tuple(signals["outputs"])) if isinstance(signals, dict) else (None, None)
    sweeps = []
    for i in range(systems[0].n_inputs):
        u = np.tile(mu, (points, 1))
        u[:, i] = np.linspace(mu[i] - 2 * sigma[i], mu[i] + 2 * sigma[i], points)
        ys, gains, radii = [], [], []
        for sys in systems:
            _, y, local = sys.operating_point(u)  # the equilibria and the linearisations there, one solve
            ys.append(y)
            gains.append(local.dcgain())
            radii.append([spectral_radius(A) for A in local.A])
        sweeps.append(OperatingSweep(i, u, np.mean(ys, axis=0), np.max(radii, axis=0), np.mean(gains, axis=0),
                                     *names))
    return sweeps


def input_statistics(model: nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
    """The training inputs' mean and standard deviation (m,) each, from a DeepWiener's stored normalisation (for a
    :class:`ssmkit.sysid.WienerEnsemble`, the average over its members, each fitted on its own fold); None for a
    model without one."""
    members = getattr(model, "members", None)
    models = list(members) if isinstance(members, nn.ModuleList) else [model]
    if not all(isinstance(getattr(m, "u_mean", None), torch.Tensor) and isinstance(getattr(m, "u_std", None),
                                                                                  torch.Tensor) for m in models):
        return None
    mu = np.mean([m.u_mean.detach().cpu().double().numpy() for m in models], axis=0)
    sigma = np.mean([m.u_std.detach().cpu().double().numpy() for m in models], axis=0)
    return mu, sigma


def spectral_radius(A: np.ndarray) -> float:
    """max |λ(A)| of a real (n, n) matrix through its strongly connected components.

    Permuted to block triangular form (the Frobenius normal form of the graph of A's nonzero entries), a matrix has
    the eigenvalues of its diagonal blocks, the strongly connected components: a cascade's Jacobian splits into its
    blocks, and a diagonal SSM's into 2 × 2 modes, so n = 512 states cost a few small eigenvalue problems instead of
    one dense one (exact: the entries that separate the components are exactly zero).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    count, labels = connected_components(csr_matrix(A != 0), directed=True, connection="strong")
    radius = 0.0
    for c in range(count):
        idx = np.flatnonzero(labels == c)
        radius = max(radius, float(np.abs(np.linalg.eigvals(A[np.ix_(idx, idx)])).max()))
    return radius

