"""Input-output records and benchmarks: what system-identification data and its evaluation protocol are."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssmkit.utils import check_sampling_time


@dataclass
class IORecord:
    """One experiment: an input and the measured output, sampled every ``dt`` seconds.

    Args:
        u: (L, m) inputs, float64, physical units.
        y: (L, p) outputs, float64, physical units.
        dt: the sampling time Ts (s).
        name: where it comes from (file, level, seed).
        period: P when the input is periodic with P samples and the record holds a whole number L / P of its
            periods (a multisine test); None otherwise. Enables the periodic-steady-state score
            (:func:`ssmkit.sysid.workflow.periodic_steady_state`); the official score does not use it.
    """

    u: torch.Tensor
    y: torch.Tensor
    dt: float
    name: str = ""
    period: int | None = None

    def __post_init__(self) -> None:
        for which in ("u", "y"):
            t = getattr(self, which)
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] < 1:
                found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{which} must be a (L, {'m' if which == 'u' else 'p'}) tensor with L >= 1; got {found}")
        if self.u.shape[0] != self.y.shape[0]:
            raise ValueError(f"u and y must have one length L; got {self.u.shape[0]} and {self.y.shape[0]}")
        self.dt = check_sampling_time(self.dt)  # a NumPy scalar Ts becomes a float (JSON, comparisons)
        if self.period is not None:
            p = self.period
            if isinstance(p, bool) or not isinstance(p, int) or p < 1 or self.u.shape[0] % p:
                raise ValueError(f"period must be None or an int P >= 1 dividing the record's length "
                                 f"{self.u.shape[0]} (a whole number of periods); got {p!r}")

    def __len__(self) -> int:
        return self.u.shape[0]


@dataclass
class Published:
    """A published result on a benchmark's test set: who, the simulation RMSE (in the benchmark's reporting unit),
    and the source."""

    method: str
    rmse: float
    source: str


@dataclass
class SysidBenchmark:
    """A benchmark: estimation and test records with the official protocol.

    Args:
        name: the registry name.
        title: the name to report under.
        train: estimation records.
        test: test records (the official ones).
        n_init: samples skipped at the start of each test record before scoring (the official window).
        unit: the unit results are reported in (``"V"``, ``"m"``, ``"mV"``, ...).
        scale: the factor from the data's unit to ``unit`` (1000 for mV of data in V).
        published: published test results in ``unit``, with sources.
        notes: how the data were made or split.
    """

    name: str
    title: str
    train: list[IORecord]
    test: list[IORecord]
    n_init: int
    unit: str
    scale: float = 1.0
    published: list[Published] = field(default_factory=list)
    notes: str = ""

    def __post_init__(self) -> None:
        records = list(self.train) + list(self.test)
        if not self.train or not all(isinstance(r, IORecord) for r in records):
            raise ValueError("train must be a non-empty list of IORecords, and test a list of IORecords")
        first = self.train[0]
        for r in records:
            # a (m, L) array read as (L, m) (python-control's and MATLAB's time-last layout) has fewer samples than
            # channels; a model needs one Ts and one set of channels
            if len(r) < max(r.u.shape[1], r.y.shape[1]):
                raise ValueError(f"record {r.name!r}: u {tuple(r.u.shape)} and y {tuple(r.y.shape)} have fewer samples "
                                 "than channels: records are time first, (L, m) and (L, p); transpose time-last arrays")
            if r.u.shape[1] != first.u.shape[1] or r.y.shape[1] != first.y.shape[1]:
                raise ValueError(f"every record must have the same m inputs and p outputs; record {r.name!r} has "
                                 f"{r.u.shape[1]} and {r.y.shape[1]}, {first.name!r} {first.u.shape[1]} and "
                                 f"{first.y.shape[1]}")
            if abs(r.dt - first.dt) > 1e-9 * first.dt:
                raise ValueError(f"every record must have the same sampling time: record {r.name!r} has dt = {r.dt} "
                                 f"s, {first.name!r} {first.dt} s (resample them to one Ts first)")

    @property
    def dt(self) -> float:
        """The sampling time Ts of the records (s)."""
        return self.train[0].dt

    @property
    def n_inputs(self) -> int:
        """m, the inputs per time step."""
        return self.train[0].u.shape[1]

    @property
    def n_outputs(self) -> int:
        """p, the outputs per time step."""
        return self.train[0].y.shape[1]
