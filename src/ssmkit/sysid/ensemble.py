"""An ensemble of deep Wiener models: the average of the outputs of k trained members (``Recipe.combine="average"``).

    ŷ_t = (1/k) Σ_j ŷ^{(j)}_t,     ŷ^{(j)} = DeepWiener_j(u; x^{(j)}_0)                    (members j = 1 … k)

Each member keeps its own normalisation, blocks and initial-state encoder; the ensemble's state is the list of the
members' states (``[state_1, …, state_k]``, each a DeepWiener state), so ``forward``, ``step``, ``initial_state`` and
``estimate_state`` follow the layer protocol exactly as a DeepWiener does and a controller runs ``step`` on line.
Irregularly sampled data: ``forward(..., intervals=)`` and ``step(..., interval=)`` hand the same gaps (in units of
the shared Ts) to every member, so the average is that of the members' simulations at the same sample times
(:meth:`DeepWiener.forward`; every member's layers must take intervals). ``estimate_state`` hands the window's
intervals to every member's encoder when the members read them (``encoder_times``, which they share); the members
share ``encoder_mask`` too (whether their encoders read which window outputs were measured).
The ensemble is itself a deep Wiener-type model with k parallel branches whose outputs are averaged (a sum of k
Wiener cascades, scaled by 1/k): every branch is δISS when its LTI blocks are Schur stable, hence so is the average.

Why: on a small record (Cascaded Tanks: 1 024 samples) the seed decides much of a run's test error, and the
validation tail is a weak selector; averaging k runs reduces the variance that choosing one of them cannot
(docs/results.md). The cost is k times the parameters and the per-step work.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ssmkit.layers.checks import checkpoint_dtype
from ssmkit.layers.irregular import require_intervals
from ssmkit.sysid.wiener import (
    DEEP_WIENER_KEY, ENSEMBLE_KEY, STATE_KEY, DeepWiener, checkpoint_entries, finish_loading,
)

_SHARED = ("n_inputs", "n_outputs", "dt", "encoder_window", "encoder_times", "encoder_mask")


class WienerEnsemble(nn.Module):
    """The average of k deep Wiener models' outputs (see the module docstring).

    Args:
        members: k >= 1 :class:`DeepWiener` models with the same inputs, outputs, sampling time, encoder window
            (and its ``encoder_times`` and ``encoder_mask``) and parameter dtype (the restarts of one recipe).
    """

    def __init__(self, members: Sequence[DeepWiener]) -> None:
        super().__init__()
        members = list(members) if isinstance(members, (list, tuple, nn.ModuleList)) else members
        if not isinstance(members, list) or not members:
            raise ValueError(f"members must be a non-empty list of DeepWiener models; got {type(members).__name__}")
        for i, m in enumerate(members):
            if not isinstance(m, DeepWiener):
                raise ValueError(f"members[{i}] must be a DeepWiener; got {type(m).__name__}")
        first = members[0]
        for i, m in enumerate(members[1:], start=1):
            for name in _SHARED:
                if getattr(m, name) != getattr(first, name):
                    raise ValueError(f"members must share {name}: members[0] has {getattr(first, name)!r}, "
                                     f"members[{i}] has {getattr(m, name)!r}")
            if m.u_mean.dtype != first.u_mean.dtype:
                raise ValueError(f"members must share the parameter dtype: members[0] is {first.u_mean.dtype}, "
                                 f"members[{i}] is {m.u_mean.dtype}")
        self.members = nn.ModuleList(members)
        self.n_inputs, self.n_outputs = first.n_inputs, first.n_outputs
        self.encoder_window = first.encoder_window
        self.encoder_times = first.encoder_times
        self.encoder_mask = first.encoder_mask

    @property
    def dt(self) -> float:
        """Ts in seconds, the members' (they share it): assigning it sets every member's, so a checkpoint saves it."""
        return self.members[0].dt

    @dt.setter
    def dt(self, value: float) -> None:
        for m in self.members:
            m.dt = value

    @property
    def u_mean(self) -> torch.Tensor:
        """The first member's input mean (its dtype and device are the ensemble's)."""
        return self.members[0].u_mean

    @property
    def signals(self) -> dict[str, tuple[str, ...]] | None:
        """The members' signal names (:meth:`DeepWiener.name_signals`), None unless every member has the same."""
        first = self.members[0].signals
        return first if all(m.signals == first for m in self.members) else None

    def name_signals(self, inputs: Sequence[str], outputs: Sequence[str]) -> "WienerEnsemble":
        """Name every member's inputs and outputs (:meth:`DeepWiener.name_signals`).

        Args:
            inputs: the ``n_inputs`` distinct input names.
            outputs: the ``n_outputs`` distinct output names.

        Returns:
            the ensemble.
        """
        for m in self.members:
            m.name_signals(inputs, outputs)
        return self

    def __len__(self) -> int:
        return len(self.members)

    def _check_state(self, state) -> None:
        if not isinstance(state, (list, tuple)) or len(state) != len(self.members):
            raise ValueError(f"state must be a list of {len(self.members)} member states (one DeepWiener state per member)")

    # ------------------------------------------------------------------------------------------------------------
    # the protocol

    def initial_state(self, batch_size: int) -> list:
        """The state at rest: one DeepWiener rest state per member."""
        return [m.initial_state(batch_size) for m in self.members]

    def forward(self, u: torch.Tensor, state: list | None = None, return_state: bool = True,
                intervals: torch.Tensor | None = None):
        """Simulate every member and average: u (B, L, m) -> y (B, L, p), from ``state`` (None: rest).

        Args:
            u: (B, L, m) inputs in physical units.
            state: the members' states (``initial_state``, ``estimate_state``, ``step`` or a previous call), or None.
            return_state: also return the final states.
            intervals: None (samples every Ts), or (B, L) real > 0: the time from the previous sample to each sample
                in units of Ts, given to every member (:meth:`DeepWiener.forward`); a ValueError naming the layer
                when a member's layers do not take intervals, before any member runs.

        Returns:
            y (B, L, p), the mean of the members' outputs, and the list of their final states (None when not asked).
        """
        if state is None:
            state = [None] * len(self.members)
        self._check_state(state)
        self._check_takes_intervals(intervals)
        extra = {} if intervals is None else {"intervals": intervals}
        ys, finals = [], []
        for member, s in zip(self.members, state):
            y, s = member(u, s, return_state=return_state, **extra)
            ys.append(y)
            finals.append(s)
        return torch.stack(ys).mean(0), (finals if return_state else None)

    def step(self, u_t: torch.Tensor, state: list, interval: torch.Tensor | None = None):
        """One sample: u_t (B, m) -> y_t (B, p), the mean of the members' steps, and the next states.

        Args:
            u_t: (B, m) inputs at one sample.
            state: the members' states.
            interval: None (one Ts since the previous sample), or (B,) real > 0: the time since the previous sample
                in units of Ts, given to every member (:meth:`DeepWiener.step`).

        Returns:
            y_t (B, p) and the next states.
        """
        self._check_state(state)
        self._check_takes_intervals(interval)
        extra = {} if interval is None else {"interval": interval}
        ys, nxt = [], []
        for member, s in zip(self.members, state):
            y, s = member.step(u_t, s, **extra)
            ys.append(y)
            nxt.append(s)
        return torch.stack(ys).mean(0), nxt

    def _check_takes_intervals(self, intervals: torch.Tensor | None) -> None:
        """Raise ``ValueError`` when sampling intervals are given and a layer of any member does not take them
        (:func:`~ssmkit.layers.irregular.require_intervals`), before any member has run."""
        if intervals is not None:
            for member in self.members:
                for layer in member.layers:
                    require_intervals(layer)

    def estimate_state(self, u_past: torch.Tensor, y_past: torch.Tensor, intervals: torch.Tensor | None = None) -> list:
        """Every member's state after a window of measured data, by its own initial-state encoder.

        Args:
            u_past: (B, n, m) the n = ``encoder_window`` inputs before the simulation starts.
            y_past: (B, n, p) the measured outputs there (NaN where missing: :meth:`DeepWiener.estimate_state`).
            intervals: with ``encoder_times`` (every member's alike), None or (B, n) the window samples' intervals
                (:meth:`DeepWiener.estimate_state`); else None.

        Returns:
            the members' states, to pass to ``forward``.
        """
        return [m.estimate_state(u_past, y_past, intervals) for m in self.members]

    # ------------------------------------------------------------------------------------------------------------
    # saving

    def checkpoint(self, **metadata: Any) -> dict[str, Any]:
        """What ``torch.save`` writes for this ensemble (``ssmkit sysid``'s ``model.pt``; ``ssmkit analyze`` reads it).

        Args:
            metadata: more plain entries to store beside the model (recipe, benchmark, mode, ...).

        Returns:
            {"wiener_ensemble": [each member's constructor arguments], "state_dict": ..., "signals": the members'
            signal names as lists (only when named, :attr:`signals`), **metadata}.
        """
        return checkpoint_entries(ENSEMBLE_KEY, [dict(m.arguments) for m in self.members], self.state_dict(),
                                  self.signals, metadata, reserved=(DEEP_WIENER_KEY,))

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> "WienerEnsemble":
        """The ensemble of a :meth:`checkpoint` dict (members built in the saved dtype, float32 for float16/bfloat16
        weights; weights loaded strictly).

        Args:
            checkpoint: a dict with ``wiener_ensemble`` (a list of member arguments) and ``state_dict`` (and
                ``signals``, the members' names, when saved).

        Returns:
            the ensemble, in eval mode.
        """
        if (not isinstance(checkpoint, dict) or ENSEMBLE_KEY not in checkpoint or STATE_KEY not in checkpoint
                or not isinstance(checkpoint[ENSEMBLE_KEY], (list, tuple)) or not checkpoint[ENSEMBLE_KEY]):
            raise ValueError(f"a WienerEnsemble checkpoint is a dict with {ENSEMBLE_KEY!r} (a non-empty list of member "
                             f"arguments) and {STATE_KEY!r}")
        state = checkpoint[STATE_KEY]
        members = []
        for i, arguments in enumerate(checkpoint[ENSEMBLE_KEY]):
            key = f"members.{i}.u_mean"
            dtype = checkpoint_dtype(state[key].dtype if key in state else None)  # half weights: float32
            members.append(DeepWiener(**dict(arguments), dtype=dtype))
        return finish_loading(cls(members), checkpoint, "WienerEnsemble")

    # ------------------------------------------------------------------------------------------------------------
    # analysis

    def state_space(self) -> list:
        """Every member's blocks' LTI parts, member after member (:meth:`DeepWiener.state_space`), ``dt`` = Ts."""
        return [ss for m in self.members for ss in m.state_space()]

    def spectral_radius(self) -> float:
        """The largest pole magnitude over every LTI block of every member (< 1: all Schur stable; nan without any,
        and nan when a member's block has a non-finite state matrix: a diverged member has no poles, and the others'
        radius was reported while :meth:`is_stable` said False)."""
        radii = []
        for member in self.members:
            r = member.spectral_radius()
            if math.isnan(r) and member.state_space():  # LTI blocks, but one of them is not finite
                return math.nan
            radii.append(r)
        return max((r for r in radii if not math.isnan(r)), default=math.nan)

    def is_stable(self) -> bool:
        """Whether every member is stable (:meth:`DeepWiener.is_stable`), hence every branch and the average δISS."""
        return all(m.is_stable() for m in self.members)
