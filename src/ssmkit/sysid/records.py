"""Input-output records and benchmarks: what system-identification data and its evaluation protocol are."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

from ssmkit.utils import check_sampling_time, distinct_names


@dataclass
class IORecord:
    """One experiment: an input and the measured output, sampled every ``dt`` seconds, or at the times ``t``.

    Irregular sampling (``t`` given): sample k is taken at t_k seconds, and the model is simulated with the intervals
    τ_k = (t_k − t_{k−1}) / Ts in units of the nominal sampling time Ts = ``dt`` (:attr:`intervals`; the layers'
    ``intervals=``, docs/design.md "Stop 61"): each sample's input u_k is held over the gap (t_{k−1}, t_k] that ends
    at it, the SSM convention x_k = Ā_k x_{k−1} + B̄_k u_k. The time before the first sample is not known: τ_0 = 1
    (a start from rest one nominal period before it, as the S5 code's irregular experiments prepend a 1).

    Missing outputs: NaN in ``y`` marks an output sample that was not measured (a dropped reading, a gap in one
    channel's log, an output sampled slower than the inputs), per sample and output channel (:attr:`measured`). The
    inputs are known at every sample (a non-finite u is refused), so the model is simulated over every sample and
    trained and scored only where the output was measured (:mod:`ssmkit.sysid.fit`, :mod:`ssmkit.sysid.metrics`'s
    ``skip_missing``). Being part of ``y``, the marks follow every slice, split, concatenation and device move of
    it; a record without NaN is measured throughout. An infinite output is refused (it is no measurement).

    Args:
        u: (L, m) inputs, float64, physical units; finite.
        y: (L, p) outputs, float64, physical units; NaN where not measured (the class docstring), else finite.
        dt: the sampling time Ts (s); with ``t``, the nominal one, the unit of the intervals.
        name: where it comes from (file, level, seed).
        period: P when the input is periodic with P samples and the record holds a whole number L / P of its
            periods (a multisine test); None otherwise. Enables the periodic-steady-state score
            (:func:`ssmkit.sysid.workflow.periodic_steady_state`); the official score does not use it. Regular
            records only (None with ``t``).
        t: None (sample k at k · ``dt``), or (L,) the sample times in seconds, strictly increasing and finite
            (stored as a float64 tensor on the CPU; any origin).
    """

    u: torch.Tensor
    y: torch.Tensor
    dt: float
    name: str = ""
    period: int | None = None
    t: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for which in ("u", "y"):
            t = getattr(self, which)
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] < 1:
                found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{which} must be a (L, {'m' if which == 'u' else 'p'}) tensor with L >= 1; got {found}")
        if self.u.shape[0] != self.y.shape[0]:
            raise ValueError(f"u and y must have one length L; got {self.u.shape[0]} and {self.y.shape[0]}")
        _check_values(self.u, self.y, self.name)
        self.dt = check_sampling_time(self.dt)  # a NumPy scalar Ts becomes a float (JSON, comparisons)
        if self.period is not None:
            p = self.period
            if isinstance(p, bool) or not isinstance(p, int) or p < 1 or self.u.shape[0] % p:
                raise ValueError(f"period must be None or an int P >= 1 dividing the record's length "
                                 f"{self.u.shape[0]} (a whole number of periods); got {p!r}")
        if self.t is not None:
            self.t = _sample_times(self.t, self.u.shape[0], self.name)
            if self.period is not None:
                raise ValueError(f"record {self.name!r}: period needs a regularly sampled record (P samples per "
                                 f"period); this one has sample times t: give period=None")
            _gaps(self.t, self.dt, self.name)  # every τ_k finite and > 0 in units of dt, not only the times

    def __len__(self) -> int:
        return self.u.shape[0]

    @property
    def measured(self) -> torch.Tensor:
        """(L, p) bool, True where output k was measured at sample t (``y`` not NaN; the class docstring), on
        ``y``'s device."""
        return ~torch.isnan(self.y)

    @property
    def n_missing(self) -> int:
        """The number of output samples not measured (NaN cells of ``y``); 0 for a record measured throughout."""
        return int(torch.isnan(self.y).sum())

    @property
    def irregular(self) -> bool:
        """Whether the record has sample times ``t`` (then it is simulated with :attr:`intervals`)."""
        return self.t is not None

    @property
    def intervals(self) -> torch.Tensor | None:
        """The sampling intervals in units of ``dt``: (L,) float64 τ_k = (t_k − t_{k−1}) / dt for k ≥ 1 and τ_0 = 1
        (the class docstring), on the CPU; None for a regularly sampled record (``t`` None: every τ_k is 1, and the
        model is run without intervals)."""
        return None if self.t is None else _gaps(self.t, self.dt, self.name)

    def held_previous(self) -> "IORecord":
        """The record with each sample's input replaced by the previous sample's, u'_k = u_{k−1} (u'_0 = u_0): the
        inputs of an actuator that holds each command from its sample until the next one (a ZOH), for the models'
        convention, which holds u'_k over the gap (t_{k−1}, t_k] that ends at sample k (the class docstring). With
        regular sampling this is a delay of one sample, which a model learns to absorb; with irregular gaps it is
        not a fixed delay, so a log of commands applied at the sample times should be read this way
        (``from_csv(..., hold="previous")``; docs/design.md, stop 62: on Cascaded Tanks with 60 % of the samples
        dropped, 1.03 ± 0.27 V against 1.48 ± 0.41 V with each input held back over its gap).

        Returns:
            a new record (the same outputs, ``dt``, name and times; no ``period``).
        """
        return IORecord(torch.cat([self.u[:1], self.u[:-1]]), self.y, self.dt, self.name, t=self.t)

    def part(self, start: int, stop: int, name: str) -> "IORecord":
        """Samples [start, stop) as a record of their own (the same ``dt``, the times ``t`` cut with them, no
        ``period``). Its τ_0 is 1 again: a part simulated from rest starts one nominal period before its first
        sample; one whose state an encoder estimates from its first samples keeps the real gaps after them.

        Args:
            start: the first sample.
            stop: one past the last.
            name: the part's name.

        Returns:
            the record.
        """
        t = None if self.t is None else self.t[start:stop]
        return IORecord(self.u[start:stop], self.y[start:stop], self.dt, name, t=t)


def _check_values(u: torch.Tensor, y: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` for a non-finite input (the inputs drive the simulation at every sample: they must be
    known) or an infinite output (NaN marks a missing output; ±inf is no measurement), naming the first sample."""
    where = f"record {name!r}: " if name else ""
    bad = ~torch.isfinite(u)
    if bool(bad.any()):
        t, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{where}u must be finite at every sample: the inputs drive the simulation and must be known "
                         f"(only outputs may be missing); u[{t}, {j}] = {float(u[t, j])} ({int(bad.sum())} non-finite "
                         "in all)")
    bad = torch.isinf(y)
    if bool(bad.any()):
        t, k = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{where}y must hold finite measurements, or NaN where an output was not measured; "
                         f"y[{t}, {k}] = {float(y[t, k])}")


def _sample_times(t, length: int, name: str) -> torch.Tensor:
    """``t`` as an (L,) float64 CPU tensor of strictly increasing finite times, or a ValueError naming the record
    and what was expected."""
    where = f"record {name!r}: " if name else ""
    if isinstance(t, torch.Tensor):
        times = t.detach().cpu()
    else:  # a NumPy array or a list: read as given (a list of floats would become float32 through torch)
        try:
            times = torch.from_numpy(np.array(t))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}t must be None or the (L,) sample times in seconds, L = {length}; got "
                             f"{type(t).__name__} ({error})") from None
    if times.is_complex() or times.dtype == torch.bool:  # what is left is floating or integer: real times
        raise ValueError(f"{where}t must be None or the (L,) real sample times in seconds; got dtype {times.dtype}")
    given = times.dtype
    times = times.to(torch.float64)
    if tuple(times.shape) != (length,):
        raise ValueError(f"{where}t must be None or the (L,) sample times in seconds, one per sample of u and y "
                         f"(L = {length}); got shape {tuple(times.shape)}")
    bad = ~torch.isfinite(times)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"{where}t must hold finite sample times; t[{k}] = {float(times[k])}")
    steps = times[1:] - times[:-1]
    if bool((steps <= 0).any()):
        k = int((steps <= 0).nonzero()[0, 0]) + 1
        raise ValueError(f"{where}t must increase strictly (one time per sample, in order); t[{k}] = "
                         f"{float(times[k]):.10g} s follows t[{k - 1}] = {float(times[k - 1]):.10g} s")
    check_time_resolution(times, given, where)
    return times


# the largest relative error of a gap that rounding narrow floating-point stamps may cause before they are refused
GAP_RESOLUTION = 1e-4


def check_time_resolution(times: torch.Tensor, given, where: str = "") -> None:
    """Raise ``ValueError`` when sample times ``t`` came as floating-point values narrower than float64 (float32:
    torch's default) whose rounding may move a gap by more than :data:`GAP_RESOLUTION` of the smallest one: a stamp
    near |t| is resolved to eps·|t| (float32 at t = 1 000 s: 6e-5 s), so the gaps t_k − t_{k−1}, and with them the
    intervals the model is simulated with, would be silently off (5.7 % at 1 ms gaps there). Exact stamps (integers,
    small times) pass.

    Args:
        times: (L,) float64 strictly increasing times, as converted.
        given: the dtype they came in (a torch or NumPy dtype).
        where: the message's prefix (the record's or the argument's name).
    """
    narrow = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7, torch.float32: 2.0 ** -23}
    eps = narrow.get(given) if isinstance(given, torch.dtype) else (
        float(np.finfo(given).eps) if np.issubdtype(given, np.floating) and np.finfo(given).bits < 64 else None)
    if eps is None or times.numel() < 2:
        return
    resolution = eps * float(times.abs().max())  # a gap's rounding error is at most this
    smallest = float((times[1:] - times[:-1]).min())
    if resolution > GAP_RESOLUTION * smallest:
        raise ValueError(f"{where}t is {given}: its stamps up to |t| = {float(times.abs().max()):.10g} s are resolved "
                         f"to about {resolution:.3g} s, more than {GAP_RESOLUTION:g} of the smallest gap "
                         f"({smallest:.3g} s), so the intervals would be silently wrong; give the times as float64 "
                         "(or a NumPy array or list), or subtract the first time before the conversion")


def _gaps(t: torch.Tensor, dt: float, name: str) -> torch.Tensor:
    """τ (L,) of :attr:`IORecord.intervals`: 1, then (t_k − t_{k−1}) / dt; a ValueError where a gap over dt is not
    a finite number > 0 (it underflowed or overflowed)."""
    tau = torch.cat([torch.ones(1, dtype=torch.float64), (t[1:] - t[:-1]) / dt])
    if not bool(torch.isfinite(tau).all()) or not bool((tau > 0).all()):
        raise ValueError(f"record {name!r}: the gaps of t over dt = {dt} s must be finite and > 0 (intervals in "
                         f"nominal sampling times); got min {float(tau.min()):.6g}, max {float(tau.max()):.6g}")
    return tau


# what one published number is on a benchmark of p > 1 outputs (``Published.aggregate``): its name in the report and
# how this run's per-output RMSEs give the same number (outputs in one unit only)
AGGREGATES = {
    "mean": "mean over the outputs",  # (1/p) Σ_k RMSE_k
    "rms": "root mean square over the outputs",  # sqrt((1/p) Σ_k RMSE_k²): the RMSE of every output's samples pooled
}


@dataclass
class Published:
    """A published result on a benchmark's test set: who, the simulation RMSE in the benchmark's reporting units, and
    the source.

    Args:
        method: who (the method, authors, year).
        rmse: one number (a single-output benchmark, or an aggregate over the outputs named by ``aggregate``), or p
            numbers, one per output in the order of the benchmark's ``output_names`` (output k in ``units[k]``):
            per-output figures are compared with this run's per-output RMSEs, an aggregate with the same aggregate of
            them.
        source: where the number is published.
        aggregate: None for per-output values (or the one output's value); for one number on a benchmark of several
            outputs, which aggregate of the per-output RMSEs it is: ``"mean"`` (their mean) or ``"rms"`` (the root of
            their mean square, the RMSE of all outputs pooled) (:data:`AGGREGATES`).
        record: the name of the benchmark's test record the number is on (``IORecord.name``; checked by
            :class:`SysidBenchmark`), where the source scores one record of several; None for the official test set
            as a whole.
    """

    method: str
    rmse: float | tuple[float, ...]
    source: str
    aggregate: str | None = None
    record: str | None = None

    def __post_init__(self) -> None:
        def ok(v) -> bool:
            return not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0

        if isinstance(self.rmse, (tuple, list)):
            if not self.rmse or not all(ok(v) for v in self.rmse):
                raise ValueError(f"published {self.method!r}: rmse must be a finite number >= 0 or a tuple of them, "
                                 f"one per output; got {self.rmse!r}")
            if self.aggregate is not None:
                raise ValueError(f"published {self.method!r}: per-output values (a tuple rmse) take no aggregate; got "
                                 f"aggregate={self.aggregate!r}")
            self.rmse = tuple(float(v) for v in self.rmse)
        elif not ok(self.rmse):
            raise ValueError(f"published {self.method!r}: rmse must be a finite number >= 0 or a tuple of them, one "
                             f"per output; got {self.rmse!r}")
        if self.record is not None and (not isinstance(self.record, str) or not self.record.strip()):
            raise ValueError(f"published {self.method!r}: record must be None or a test record's name (a non-empty "
                             f"string); got {self.record!r}")
        if self.aggregate is not None and self.aggregate not in AGGREGATES:
            raise ValueError(f"published {self.method!r}: aggregate must be None or one of {sorted(AGGREGATES)}; got "
                             f"{self.aggregate!r}")

    @property
    def per_output(self) -> bool:
        """Whether ``rmse`` holds one value per output (a tuple) rather than one number."""
        return isinstance(self.rmse, tuple)

    @property
    def values(self) -> tuple[float, ...]:
        """``rmse`` as a tuple: the p per-output values, or the one number."""
        return self.rmse if isinstance(self.rmse, tuple) else (float(self.rmse),)


def aggregate(kind: str, values) -> float:
    """An aggregate over the outputs of per-output values (RMSEs in one unit): ``"mean"``, (1/p) Σ v_k, or ``"rms"``,
    sqrt((1/p) Σ v_k²) (:data:`AGGREGATES`).

    Args:
        kind: ``"mean"`` or ``"rms"``.
        values: the p per-output values.

    Returns:
        the aggregate, a float.
    """
    values = [float(v) for v in values]
    if kind not in AGGREGATES:
        raise ValueError(f"kind must be one of {sorted(AGGREGATES)}; got {kind!r}")
    if not values:
        raise ValueError("values must hold one number per output; got none")
    if kind == "mean":
        return sum(values) / len(values)
    return math.sqrt(sum(v * v for v in values) / len(values))


@dataclass
class SysidBenchmark:
    """A benchmark: estimation and test records with the official protocol.

    Args:
        name: the registry name.
        title: the name to report under.
        train: estimation records.
        test: test records (the official ones).
        n_init: samples skipped at the start of each test record before scoring (the official window).
        unit: the unit results are reported in (``"V"``, ``"m"``, ``"mV"``, ...): one string for every output, or a
            tuple of p strings, one per output (outputs in different units); :attr:`units` has one per output either
            way.
        scale: the factor from the data's unit to ``unit`` (1000 for mV of data in V): one number for every output
            or a tuple of p, one per output; :attr:`scales` has one per output either way.
        published: published test results in ``unit``, with sources (:class:`Published`: one number, or one per
            output in the order of ``output_names``; checked against p here).
        notes: how the data were made or split.
        output_names: a tuple of p names of the outputs, the labels of the report's figures and table (None:
            ``"output 1"``, ..., ``"output p"``).
        input_names: a tuple of m distinct names of the inputs, for the report and the names of an exported
            system's inputs (python-control's ``inputs=``; None: ``"input 1"``, ..., ``"input m"``).
        input_unit: the inputs' units in the data (an input is not rescaled): one string for every input, a tuple of m
            strings or None (unknown), one per input; None where the data's documentation does not state it.
    """

    name: str
    title: str
    train: list[IORecord]
    test: list[IORecord]
    n_init: int
    unit: str | tuple[str, ...]
    scale: float | tuple[float, ...] = 1.0
    published: list[Published] = field(default_factory=list)
    notes: str = ""
    output_names: tuple[str, ...] | None = None
    input_names: tuple[str, ...] | None = None
    input_unit: str | tuple[str | None, ...] | None = None

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
        p = first.y.shape[1]
        self.unit = _per_output("unit", self.unit, p, lambda v: isinstance(v, str) and v != "", "a non-empty string")
        self.scale = _per_output("scale", self.scale, p, lambda v: not isinstance(v, bool) and isinstance(
            v, numbers.Real) and math.isfinite(v) and v > 0, "a finite number > 0")
        if self.output_names is not None:
            names = self.output_names
            if not distinct_names(names, p):
                raise ValueError(f"output_names must be None or p = {p} distinct non-empty strings, one per output; got "
                                 f"{names!r}")
            self.output_names = tuple(names)
        m = first.u.shape[1]
        if self.input_names is not None:
            names = self.input_names
            if not distinct_names(names, m):
                raise ValueError(f"input_names must be None or m = {m} distinct non-empty strings, one per input; got "
                                 f"{names!r}")
            self.input_names = tuple(names)
        if self.input_unit is not None:
            self.input_unit = _per_output("input_unit", self.input_unit, m,
                                          lambda v: v is None or isinstance(v, str) and v != "",
                                          "None or a non-empty string", "input")
        published = list(self.published)
        for pub in published:
            if not isinstance(pub, Published):
                raise ValueError(f"published must be a list of Published; got {type(pub).__name__}")
            if pub.per_output and len(pub.rmse) != p:
                raise ValueError(f"published {pub.method!r}: {len(pub.rmse)} per-output values for p = {p} outputs "
                                 f"{self.outputs}: give one per output in that order (or one number)")
            if pub.aggregate is not None and len(set(self.units)) > 1:
                raise ValueError(f"published {pub.method!r}: an aggregate over outputs in different units "
                                 f"{self.units} has no unit; give one value per output")
            if pub.record is not None and pub.record not in [r.name for r in self.test]:
                raise ValueError(f"published {pub.method!r}: record {pub.record!r} is not one of the test records "
                                 f"{[r.name for r in self.test]}")
        self.published = published

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

    @property
    def units(self) -> tuple[str, ...]:
        """The reporting unit of each output: p strings (``unit`` repeated when it is one string)."""
        return self.unit if isinstance(self.unit, tuple) else (self.unit,) * self.n_outputs

    @property
    def scales(self) -> tuple[float, ...]:
        """The factor from the data's unit to the reporting unit, per output: p numbers."""
        if isinstance(self.scale, tuple):
            return tuple(float(v) for v in self.scale)
        return (float(self.scale),) * self.n_outputs

    @property
    def inputs(self) -> tuple[str, ...]:
        """The name of each input: ``input_names``, or ``"input 1"``, ..., ``"input m"``."""
        return self.input_names or tuple(f"input {j + 1}" for j in range(self.n_inputs))

    @property
    def input_units(self) -> tuple[str | None, ...]:
        """The data's unit of each input: m strings, None where it is not stated (``input_unit`` repeated when it is
        one string or None)."""
        return self.input_unit if isinstance(self.input_unit, tuple) else (self.input_unit,) * self.n_inputs

    @property
    def outputs(self) -> tuple[str, ...]:
        """The name of each output: ``output_names``, or ``"output 1"``, ..., ``"output p"``."""
        return self.output_names or tuple(f"output {k + 1}" for k in range(self.n_outputs))

    def in_units(self, values) -> list[float]:
        """Per-output values in the data's units (RMSEs, MAEs) times each output's scale: in the reporting units.

        Args:
            values: p numbers, output k in output k's data unit.

        Returns:
            p floats, value k × ``scales[k]``.
        """
        values = [float(v) for v in values]
        if len(values) != self.n_outputs:
            raise ValueError(f"values must hold one number per output (p = {self.n_outputs}); got {len(values)}")
        return [v * s for v, s in zip(values, self.scales)]

    def mean_in_units(self, values) -> float:
        """The mean over the outputs of per-output values in the data's units, each converted to its reporting unit
        first (:meth:`in_units`): (1/p) Σ_k values[k] × ``scales[k]``, the one number a score over several outputs is
        summarised by (``ssmkit sysid``'s ``best_val_rmse``, the sysid scripts' columns).

        Args:
            values: p numbers (a list, tuple or (p,) / 0-d tensor), output k in output k's data unit.

        Returns:
            the mean, a float.
        """
        if isinstance(values, torch.Tensor):
            values = values.detach().reshape(-1).tolist()
        converted = self.in_units(values)
        return sum(converted) / len(converted)


def _per_output(name: str, value, p: int, ok, what: str, channel: str = "output"):
    """``value`` as declared when it is one value for every output (``channel``), as a tuple when it is p values (a
    list too); a ValueError naming ``name`` otherwise."""
    letter = "p" if channel == "output" else "m"
    message = (f"{name} must be {what} for every {channel} or a tuple of {letter} = {p} of them, one per {channel}; "
               f"got {value!r}")
    if isinstance(value, (tuple, list)):
        if len(value) != p or not all(ok(v) for v in value):
            raise ValueError(message)
        return tuple(value)
    if not ok(value):
        raise ValueError(message)
    return value
