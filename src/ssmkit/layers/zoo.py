"""What a layer declares about itself for the control-theoretic table of ``ssmkit zoo`` (arXiv 2403.16899, §3-4).

Every registered layer class sets a ``zoo = ZooEntry(...)`` class attribute of its own (not inherited): the table is
built from these declarations and from what the layer reports at run time (capabilities, backends, state size), so
it is never written by hand, and a layer without a declaration makes ``ssmkit zoo`` and its test fail loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STRUCTURES", "ZooEntry"]

STRUCTURES = ("dense", "DPLR", "diagonal", "scalar", "none")


@dataclass(frozen=True)
class ZooEntry:
    """A layer's place in the control-theoretic comparison of SSMs (Amo Alonso, Sieber & Zeilinger, arXiv 2403.16899).

    Attributes:
        paper: the layer's paper, as ``arXiv XXXX.XXXXX``.
        structure: the structure of the state matrix A: ``"dense"``, ``"DPLR"`` (diagonal plus low rank),
            ``"diagonal"``, ``"scalar"`` (A = a·I per head), or ``"none"`` (no recurrence matrix: attention, an
            implicit convolution).
        parametrisation: how A (or Ā) is parametrised, in the paper's symbols (e.g. ``λ = -exp(a) + i b``).
        discretisation: how the discrete Ā, B̄ are formed (``"ZOH"``, ``"bilinear"``, ``"none (discrete time)"``, ...).
        time_varying: True when the sequence mixing depends on the input (selective SSMs, liquid terms, attention
            weights: LTV/LIV); False when the recurrence or convolution is LTI, even if gates multiply its input or
            output (GSS, H3, Hyena).
        stable_by_construction: True when every parameter value gives a strictly stable recurrence (|Ā| < 1, for
            every input if time-varying), or, for layers without a recurrence (FIR kernels, attention), bounded
            outputs for bounded inputs.
        stability: the condition in words (the constraint that makes it stable, or why it is not guaranteed).
        step_cost: cost of one recurrent step per sequence, big-O in the legend's letters (H, N, P, E, A, L).
        sequence_cost: cost of a forward pass over L steps per sequence, big-O, with the algorithm.
    """

    paper: str
    structure: str
    parametrisation: str
    discretisation: str
    time_varying: bool
    stable_by_construction: bool
    stability: str
    step_cost: str
    sequence_cost: str

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}; got {self.structure!r}")
        for name in ("time_varying", "stable_by_construction"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool; got {getattr(self, name)!r}")
        for name in ("paper", "parametrisation", "discretisation", "stability", "step_cost", "sequence_cost"):
            if not (isinstance(getattr(self, name), str) and getattr(self, name).strip()):
                raise ValueError(f"{name} must be a non-empty string; got {getattr(self, name)!r}")
