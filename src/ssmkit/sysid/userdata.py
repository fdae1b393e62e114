"""Your own data as a benchmark: inputs and outputs sampled every Ts seconds, from arrays or CSV files, become a
:class:`~ssmkit.sysid.records.SysidBenchmark` that :func:`~ssmkit.sysid.workflow.identify`,
:func:`~ssmkit.sysid.workflow.evaluate` and ``ssmkit sysid --data FILE.csv`` take like a named benchmark, trained by
the generic recipe :func:`ssmkit.sysid.recipes.recipe_for_data`.

:func:`from_arrays` takes one experiment, inputs u (L, m) or (L,) and outputs y (L, p) or (L,), time first, and Ts
in seconds, as MATLAB's ``iddata`` does; :func:`from_csv` reads the named input and output columns of CSV files with a
header row, sampled every ``dt`` seconds or at the stamps of a ``time`` column. The conventions, chosen as a MATLAB
System Identification Toolbox or python-control user expects them:

- Test data: a second experiment (``test=(u_test, y_test)``, ``test_path=``) is the test record, as MATLAB's
  ``compare`` validates on a data set the model never saw. Without one the last ``test_fraction`` of each experiment
  (default :data:`DEFAULT_TEST_FRACTION`, 20 %) is held out as the test record, ``z(1:N1)`` / ``z(N1+1:end)`` by hand
  in MATLAB. Training then holds out the last 20 % of what is left for validation and early stopping (the recipe's
  ``val_fraction``); the test record is never read before the final score.
- Initial state: a test record starts wherever the system was (the tail of a run is not at rest), so, as
  ``compare``'s default ``InitialCondition='e'`` estimates x0, the model's initial-state encoder reads the first
  ``n_init`` samples of each test record (inputs and measured outputs) and only the samples after them are scored.
  ``n_init`` defaults to :data:`DEFAULT_N_INIT` (50, the init window of most benchmarks here), at most a tenth of the
  shortest test record; ``n_init=0`` simulates from rest and scores every sample.
- Sampling: one uniform Ts in seconds for every record; a time column must be uniform to :data:`TIME_TOLERANCE` of Ts
  (a ValueError names the largest deviation otherwise) and gives Ts = (t[L-1] - t[0]) / (L - 1).
- Irregular sampling (opt-in: ``from_csv(..., irregular=True)`` with a time column, ``from_arrays(..., t=times)``):
  the stamps need only increase strictly; the records keep them (``IORecord.t``) and are simulated with their
  intervals (t_k − t_{k−1}) / Ts, and Ts is the nominal sampling time, by default the median gap
  (:func:`median_sampling_time`: the typical period of a logger that drops or jitters samples, not moved by a few long
  gaps as the mean would be). The model's layers must take intervals (S4D, S5, DSS, ...; the default ``s4d`` does).
- Values: every sample must be a finite number; a NaN, an empty, a missing-value marker (``NA``, ...) or a
  non-numeric cell is refused naming its row and column (fill or cut missing samples first), except with
  ``missing_outputs=True``.
- Missing outputs (opt-in: ``missing_outputs=True``, ``ssmkit sysid --missing-outputs``): a NaN in the output array,
  or in an output column an empty or NaN cell, a missing-value marker of :data:`MISSING_MARKERS` (R's ``NA``, Excel's
  ``#N/A``, ``NULL``, ``None``, ...: pandas' default ``na_values``, case as written) or a cell absent from a row that
  ends early (fewer fields than the header: pandas' ``read_csv`` and R's ``read.csv`` fill it with NaN, NA), is an
  output sample that was not measured (a sensor that drops readings, a logger with gaps in one channel, outputs
  sampled slower than the inputs), kept as NaN in the record's ``y`` (:class:`~ssmkit.sysid.records.IORecord`). The
  inputs must still be known at every sample (a NaN input, a marker or an absent input cell is refused). The model
  is simulated over every sample with the known inputs and trained and scored only where the output was measured, as
  iddata keeps NaNs as missing samples; every output must be measured somewhere in the training records and, after
  ``n_init``, in every test record.
- Units: one unit for every output or one per output; results are reported in it with a scale of 1.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import pathlib
from typing import Sequence

import numpy as np
import torch

from ssmkit.sysid.records import IORecord, SysidBenchmark, check_time_resolution
from ssmkit.utils import check_sampling_time, distinct_names, percent

HOLDS = ("sample", "previous")  # which input a model sees over the gap ending at sample k (IORecord.held_previous)
DEFAULT_TEST_FRACTION = 0.2  # the tail of each experiment held out as the test record when no test data are given
DEFAULT_N_INIT = 50  # test samples read by the initial-state encoder and not scored (capped at a tenth of the record)
TIME_TOLERANCE = 1e-3  # the largest deviation of a time stamp from the uniform grid, as a fraction of Ts
DEFAULT_UNIT = "data units"  # the reporting unit when none is given
# CSV cells read as a missing output sample with missing_outputs=True (besides an empty cell and a NaN that float()
# reads, "nan" in any case): pandas.read_csv's default na_values less the old MSVC printf spellings of NaN
# ("1.#QNAN", "-1.#IND", ...) and Bloomberg's "#N/A N/A"; R's write.csv writes NA, Excel's NA() #N/A, databases NULL.
MISSING_MARKERS = ("NA", "N/A", "n/a", "#N/A", "#NA", "<NA>", "NULL", "null", "None")


def _as_channels(values, which: str, names: Sequence[str] | None = None, missing: bool = False) -> np.ndarray:
    """``values`` (array-like, (L,) or (L, c)) as an (L, c) float64 array: ValueError for another rank, a time-last
    array, no sample, or a non-finite value (named by row and channel); with ``missing`` (outputs), NaN passes as a
    missing sample and only ±inf is refused."""
    values = _real_numbers(values, which)
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{which} must be an array of numbers, (L,) or (L, channels); got {type(values).__name__} "
                         f"({error})") from None
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{which} must be (L,) or (L, channels) with L >= 1, time first; got shape {a.shape}")
    if a.shape[0] < a.shape[1]:
        raise ValueError(f"{which} is {a.shape}: fewer samples than channels. Arrays are time first, (L, channels); "
                         f"a time-last (channels, L) array (python-control's layout) must be transposed ({which}.T)")
    bad = np.isinf(a) if missing else ~np.isfinite(a)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        channel = repr(names[col]) if names is not None and col < len(names) else str(col)
        if missing:
            hint = "an output is a finite measurement, or NaN where it was not measured"
        elif which.startswith("y"):
            hint = ("fill or cut missing samples first, or read NaN outputs as missing samples "
                    "(missing_outputs=True)")
        else:
            hint = "fill or cut missing samples first (inputs must be known at every sample; only outputs may be missing)"
        raise ValueError(f"{which} holds {int(bad.sum())} non-finite value(s); the first is {a[row, col]} at row "
                         f"{row}, channel {channel}: {hint}")
    return a


def _real_numbers(values, which: str):
    """``values`` with a tensor as a NumPy array (bfloat16 and other types NumPy lacks widened to float64, exactly);
    ValueError for complex data (NumPy's float64 conversion would drop the imaginary part with only a warning)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_complex():
            raise ValueError(f"{which} must be real; got a {values.dtype} tensor")
        if values.is_floating_point() and values.dtype not in (torch.float16, torch.float32, torch.float64):
            values = values.to(torch.float64)  # bfloat16, float8: no NumPy type
        return values.numpy()
    if np.iscomplexobj(values):
        raise ValueError(f"{which} must be real; got complex values")
    return values


def _names(names, count: int, which: str, default: str) -> tuple[str, ...]:
    """``names`` (None, one string for one channel, or a sequence of ``count`` distinct non-empty strings) as a
    tuple."""
    if names is None:
        return tuple(f"{default}{k + 1}" for k in range(count)) if count > 1 else (default,)
    if isinstance(names, str):
        names = (names,)
    elif hasattr(names, "__iter__"):  # a NumPy array or a pandas Index of names too
        names = tuple(names)
    if not distinct_names(names, count):
        raise ValueError(f"{which} must be None or {count} distinct non-empty strings, one per channel; got {names!r}")
    return tuple(names)


def _check_fraction(fraction, which: str) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
        raise ValueError(f"{which} must be a number in (0, 1), the tail of each experiment held out as the test "
                         f"record; got {fraction!r}")
    return float(fraction)


def default_n_init(test_lengths: Sequence[int]) -> int:
    """The default init window of a benchmark made of the user's data: :data:`DEFAULT_N_INIT` samples, at most a
    tenth of the shortest test record.

    Args:
        test_lengths: the test records' lengths L.

    Returns:
        n_init, an int >= 0.
    """
    return min(DEFAULT_N_INIT, min(test_lengths) // 10)


def _split(u: np.ndarray, y: np.ndarray, fraction: float, label: str) -> tuple[tuple, tuple, int]:
    """(u, y) of the first 1 - ``fraction`` and of the last ``fraction`` of one experiment, and the cut."""
    n = u.shape[0]
    cut = n - int(round(n * fraction))
    if cut < 2 or n - cut < 2:
        raise ValueError(f"{label} ({n} samples) is too short to hold out {percent(fraction)} as the test record and "
                         "train on the rest: give more samples or separate test data")
    return (u[:cut], y[:cut]), (u[cut:], y[cut:]), cut


def _check_hold(hold: object) -> None:
    """Raise ``ValueError`` unless ``hold`` is one of :data:`HOLDS`."""
    if not isinstance(hold, str) or hold not in HOLDS:
        raise ValueError(f"hold must be one of {HOLDS} (the input over the gap before sample k: u_k as given, or "
                         f"u_{{k-1}} held from the previous sample); got {hold!r}")


def _held(u: np.ndarray, hold: str) -> np.ndarray:
    """The inputs (L, m) of one whole experiment as the models read them: with ``hold`` ``"previous"`` each sample's
    input replaced by the previous sample's, u'_k = u_{k−1} (u'_0 = u_0; :meth:`IORecord.held_previous`). Applied
    before an experiment is split into training and test records, so the test record's first input is the known
    u_{cut−1}, not its own."""
    return np.concatenate([u[:1], u[:-1]]) if hold == "previous" else u


def _benchmark(train: list[IORecord], test: list[IORecord], name: str, unit, n_init: int | None,
               input_names: tuple[str, ...], output_names: tuple[str, ...], source: str,
               input_unit=None, hold: str = "sample") -> SysidBenchmark:
    """The SysidBenchmark of the user's records, with ``n_init`` checked (or its default) and the notes (``hold``: how
    the callers read the inputs, :func:`_held`)."""
    lengths = [len(r) for r in test]
    if n_init is None:
        n_init = default_n_init(lengths)
    elif isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 0 or n_init >= min(lengths):
        raise ValueError(f"n_init must be None or an int in [0, {min(lengths)}) (samples of each test record read by "
                         f"the initial-state encoder and not scored; the shortest test record has {min(lengths)}); "
                         f"got {n_init!r}")
    _check_measured(train, test, n_init, output_names)
    sampling = f"Ts = {train[0].dt:g} s"
    if any(r.t is not None for r in train + test):
        sampling = f"irregularly sampled, nominal Ts = {train[0].dt:g} s (the records keep their sample times)"
    if hold == "previous":
        sampling += "; each input held from its sample until the next (the model sees u_{k-1} over the gap ending at k)"
    missing = sum(r.n_missing for r in train + test)
    if missing:
        cells = sum(r.y.numel() for r in train + test)
        sampling += (f"; {missing} of {cells} output samples not measured (NaN: simulated with the known inputs, "
                     "trained and scored where measured)")
    notes = (f"{source}; inputs {', '.join(input_names)}; outputs {', '.join(output_names)}; {sampling}; "
             f"the first {n_init} samples of each test record are read by the initial-state encoder, not scored")
    return SysidBenchmark(name=name, title=name, train=train, test=test, n_init=n_init, unit=unit, published=[],
                          notes=notes, output_names=output_names, input_names=input_names,
                          input_unit=None if input_unit is None else _units(input_unit))


def from_arrays(u, y, dt: float | None, test=None, name: str = "user_data", unit: str | Sequence[str] = DEFAULT_UNIT,
                input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                n_init: int | None = None, input_unit: str | Sequence[str | None] | None = None,
                t=None, hold: str = "sample", missing_outputs: bool = False) -> SysidBenchmark:
    """A benchmark of one measured experiment: inputs ``u`` and outputs ``y`` sampled every ``dt`` seconds (or at the
    times ``t``), with a test record held out as the module docstring says.

    Args:
        u: (L, m) or (L,) the inputs, time first (numpy array, tensor or nested lists; float64 is kept).
        y: (L, p) or (L,) the measured outputs, time first.
        dt: Ts, the sampling time in seconds; with ``t``, the nominal Ts, the unit of the intervals (None: the
            median gap of ``t``, :func:`median_sampling_time`).
        test: the test data: None, the last :data:`DEFAULT_TEST_FRACTION` (20 %) of the experiment; a number in
            (0, 1), that fraction of its tail; a pair ``(u_test, y_test)`` of another experiment at the same Ts
            (the whole experiment then trains); or a triple ``(u_test, y_test, t_test)``, another experiment with its
            sample times (needed with ``t``).
        name: the benchmark's name and title (reports, ``results.json``).
        unit: the outputs' unit: one string for every output, or p strings, one per output.
        input_names: m names of the inputs (None: ``"u"``, or ``"u1"``, ..., ``"um"``), written into the notes.
        output_names: p names of the outputs (None: ``"y"``, or ``"y1"``, ..., ``"yp"``), the report's labels.
        n_init: samples at the start of each test record read by the initial-state encoder and not scored (None:
            :func:`default_n_init`; 0: simulate from rest and score every sample).
        input_unit: the inputs' unit: None (not stated), one string for every input, or m strings (or None), one
            per input (the report's and ``results.json``'s; the inputs are not rescaled).
        t: None (sample k at k · ``dt``), or (L,) the sample times in seconds, strictly increasing (irregular
            sampling, module docstring): the records keep them (``IORecord.t``, split with the samples).
        hold: which input acts over the gap before sample k: ``"sample"`` (u_k, the models' convention: inputs as
            given) or ``"previous"`` (u_{k-1}: commands applied at the sample times and held until the next sample,
            an actuator's ZOH; :meth:`IORecord.held_previous`, for irregularly sampled logs especially).
        missing_outputs: NaN in ``y`` (and ``y_test``) marks an output sample that was not measured (module
            docstring: trained and scored where measured); False: a NaN output is refused. Inputs must be finite
            either way.

    Returns:
        the benchmark: one training record (records named ``name [:cut]`` and ``name [cut:]`` for a tail split, or
        ``name`` and ``name test``), one test record, no published results.
    """
    _check_hold(hold)
    _check_missing_flag(missing_outputs)
    if t is None or dt is not None:
        dt = check_sampling_time(dt)  # (None is allowed with t only: the median gap)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string; got {name!r}")
    u_a = _held(_as_channels(u, "u"), hold)
    y_a = _as_channels(y, "y", missing=missing_outputs)
    if u_a.shape[0] != y_a.shape[0]:
        raise ValueError(f"u and y must have one length L (time first); got u {u_a.shape} and y {y_a.shape}")
    times = None if t is None else _as_times(t, u_a.shape[0], "t")
    if dt is None:
        dt = median_sampling_time(times, "t")
    inputs = _names(input_names, u_a.shape[1], "input_names", "u")
    outputs = _names(output_names, y_a.shape[1], "output_names", "y")
    if test is None or isinstance(test, numbers.Real) and not isinstance(test, bool):  # numpy scalars too
        fraction = DEFAULT_TEST_FRACTION if test is None else _check_fraction(test, "test")
        (u_tr, y_tr), (u_te, y_te), cut = _split(u_a, y_a, fraction, "the experiment")
        t_tr, t_te = (None, None) if times is None else (times[:cut], times[cut:])
        train = [IORecord(_tensor(u_tr), _tensor(y_tr), dt, f"{name} [:{cut}]", t=_times(t_tr))]
        test_records = [IORecord(_tensor(u_te), _tensor(y_te), dt, f"{name} [{cut}:]", t=_times(t_te))]
        source = f"the last {percent(fraction)} of the experiment held out as the test record"
    elif isinstance(test, (tuple, list)) and len(test) in (2, 3):
        u_te = _held(_as_channels(test[0], "u_test", inputs), hold)
        y_te = _as_channels(test[1], "y_test", outputs, missing=missing_outputs)
        if u_te.shape[0] != y_te.shape[0]:
            raise ValueError(f"u_test and y_test must have one length; got {u_te.shape} and {y_te.shape}")
        if u_te.shape[1] != u_a.shape[1] or y_te.shape[1] != y_a.shape[1]:
            raise ValueError(f"the test data must have the training data's m = {u_a.shape[1]} inputs and p = "
                             f"{y_a.shape[1]} outputs; got u_test {u_te.shape} and y_test {y_te.shape}")
        if times is not None and len(test) == 2:
            raise ValueError("with sample times t, give the test experiment's too: test=(u_test, y_test, t_test)")
        t_te = _as_times(test[2], u_te.shape[0], "t_test") if len(test) == 3 else None
        train = [IORecord(_tensor(u_a), _tensor(y_a), dt, name, t=_times(times))]
        test_records = [IORecord(_tensor(u_te), _tensor(y_te), dt, f"{name} test", t=_times(t_te))]
        source = "a separate test experiment"
    else:
        raise ValueError(f"test must be None (the last {percent(DEFAULT_TEST_FRACTION)} held out), a fraction in "
                         f"(0, 1) or a pair (u_test, y_test), or a triple (u_test, y_test, t_test) with its sample "
                         f"times; got {type(test).__name__}")
    return _benchmark(train, test_records, name, unit, n_init, inputs, outputs, source, input_unit, hold)


def _check_missing_flag(missing_outputs: object) -> None:
    """Raise ``ValueError`` unless ``missing_outputs`` is a bool."""
    if not isinstance(missing_outputs, bool):
        raise ValueError(f"missing_outputs must be a bool (True: NaN or empty output samples are missing "
                         f"measurements); got {missing_outputs!r}")


def _check_measured(train: list[IORecord], test: list[IORecord], n_init: int, outputs: tuple[str, ...]) -> None:
    """Raise ``ValueError`` for an output with no measured sample in the training records (nothing to train or
    normalise it on), or none after the first ``n_init`` samples of a test record (nothing to score)."""
    for k, name in enumerate(outputs):
        if not any(bool(r.measured[:, k].any()) for r in train):
            raise ValueError(f"output {name!r} is not measured at any sample of the training records "
                             f"{[r.name for r in train]}: it cannot be trained")
        for r in test:
            if not bool(r.measured[n_init:, k].any()):
                raise ValueError(f"output {name!r} is not measured at any sample of test record {r.name!r} after its "
                                 f"first n_init = {n_init} samples: there is nothing to score")


def _as_times(t, length: int, which: str) -> np.ndarray:
    """``t`` as an (L,) float64 array of strictly increasing finite sample times (:func:`check_times`), L =
    ``length``."""
    given = getattr(t, "dtype", None)  # a tensor's or NumPy array's; a list is read in float64
    t = _real_numbers(t, which)
    try:
        a = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{which} must be an array of sample times in seconds, (L,); got {type(t).__name__} "
                         f"({error})") from None
    if a.shape != (length,):
        raise ValueError(f"{which} must hold one sample time per sample, shape ({length},); got shape {a.shape}")
    a = check_times(a, which)
    if given is not None:  # float32 stamps may have lost the gaps already (records.check_time_resolution)
        check_time_resolution(torch.from_numpy(a), given, f"{which}: ")
    return a


def _times(t: np.ndarray | None) -> torch.Tensor | None:
    return None if t is None else _tensor(t)


def _units(value):
    """One unit string, or a sequence of them (None for an input without a stated unit) as a tuple."""
    return value if isinstance(value, str) else tuple(value)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _column_list(columns, which: str) -> list[str]:
    """``columns`` (one name or a sequence of names) as a non-empty list of non-empty names."""
    if isinstance(columns, str):
        columns = [columns]
    if not isinstance(columns, (list, tuple)) or not columns or not all(isinstance(c, str) and c.strip()
                                                                        for c in columns):
        raise ValueError(f"{which} must name one or more columns of the file (a list of header names); got {columns!r}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"{which} names a column twice: {list(columns)!r}")
    return [c.strip() for c in columns]


def _data_lines(numbered, split=None):
    """The (line number, text) pairs of ``numbered`` (``enumerate(open file, 1)``, read on from where it stands)
    whose line is neither blank nor a ``#`` comment. With ``split`` (the rows' field splitter), a ``#`` line whose
    first field is the missing-value marker ``#N/A`` or ``#NA`` (:data:`MISSING_MARKERS`) is a row whose first cell
    is missing, not a comment: skipping it would shift every later sample by one (``#NA = not measured`` in a comma
    separated file stays a comment; in a file separated by white space it is a row, refused loudly)."""
    for number, line in numbered:
        text = line.strip()
        if text and (not text.startswith("#") or split is not None and split(text)[0].strip() in ("#N/A", "#NA")):
            yield number, line


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _missing_cell(text: str) -> bool:
    """Whether a stripped cell is a missing value: empty, one of :data:`MISSING_MARKERS`, or a NaN that ``float``
    reads (``nan`` in any case, with a sign)."""
    if not text or text in MISSING_MARKERS:
        return True
    try:
        return math.isnan(float(text))
    except ValueError:
        return False


def read_columns(path: str | os.PathLike, columns: Sequence[str], delimiter: str | None = None,
                 missing: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The named columns of a delimited text file with a header row, as float64 arrays.

    The first line that is neither blank nor a ``#`` comment names the columns; every later such line is a row (blank
    and ``#`` lines are skipped anywhere). Columns not asked for are not read (they may hold text). A UTF-8 byte-order
    mark (a spreadsheet's CSV export) is ignored.

    Args:
        path: the file.
        columns: the header names of the columns to read.
        delimiter: the field separator; None: the first of ``","``, ``";"``, ``"\\t"`` found in the header line, else
            runs of white space.
        missing: names of ``columns`` whose missing cells are read as NaN, missing samples (the output columns of
            ``from_csv(..., missing_outputs=True)``): an empty cell, a missing-value marker (:data:`MISSING_MARKERS`:
            R's ``NA``, Excel's ``#N/A``, ``NULL``, ...) or ``NaN``, and a cell absent from a row that ends early
            (fewer fields than the header, as pandas' ``read_csv`` and R's ``read.csv`` fill it); every other cell
            must hold a finite number.

    Returns:
        {name: (L,) float64 array} for each name of ``columns``.

    Raises:
        ValueError: for a file without a header row or without rows, a column not in the header (naming the
            header's columns), a row too short to reach a column that is not ``missing`` (naming the row, line and
            the absent columns), or an empty, non-numeric or non-finite cell (naming its row, line and column; a
            missing cell of a ``missing`` column passes, and a missing-value marker elsewhere is named as one).
        FileNotFoundError: for a missing file.
    """
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {os.fspath(path)!r}")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n"):
        raise ValueError(f"delimiter must be None (detected) or one character; got {delimiter!r}")
    missing = set(missing)
    if missing - set(columns):
        raise ValueError(f"missing must name columns that are read, {list(columns)}; got {sorted(missing)}")
    gap = ("fill or cut missing samples; an output column may hold missing samples with "
           "from_csv(..., missing_outputs=True), ssmkit sysid --missing-outputs")
    if missing:  # the others are inputs or time stamps: they must be known
        gap = f"only the output columns {sorted(missing)} may hold missing samples"
    with open(path, newline="", encoding="utf-8-sig") as f:
        numbered = enumerate(f, 1)
        first = next(_data_lines(numbered), None)
        if first is None:
            raise ValueError(f"{path} holds no header row: the first line must name the columns")
        sep = delimiter
        if sep is None:
            sep = next((s for s in (",", ";", "\t") if s in first[1]), None)

        def split(line: str) -> list[str]:
            return line.split() if sep is None else next(csv.reader([line], delimiter=sep))

        header = [h.strip() for h in split(first[1])]
        if header and all(_number(h) for h in header if h):
            raise ValueError(f"{path} has no header row: line {first[0]} holds numbers ({first[1].strip()[:60]!r}); "
                             "add a first line naming the columns (e.g. t,u,y)")
        index = {}
        for c in columns:
            if c not in header:
                raise ValueError(f"column {c!r} is not in {path.name}; its columns are {[h for h in header if h]}")
            if header.count(c) > 1:
                raise ValueError(f"column {c!r} appears {header.count(c)} times in {path.name}'s header")
            index[c] = header.index(c)
        values: dict[str, list[float]] = {c: [] for c in columns}
        for row, (number, line) in enumerate(_data_lines(numbered, split), 1):  # the lines after the header
            fields = split(line)
            absent = [c for c, i in index.items() if i >= len(fields) and c not in missing]
            if absent:
                last = max(absent, key=index.get)
                raise ValueError(f"{path.name}: row {row} (line {number}) has {len(fields)} fields, fewer than the "
                                 f"{index[last] + 1} that reach column {last!r}: it ends before column(s) {absent} "
                                 f"({gap})")
            for c, i in index.items():
                text = fields[i].strip() if i < len(fields) else ""  # absent: a missing column's (checked above)
                where = f"{path.name}: row {row} (line {number}), column {c!r}"
                if c in missing and _missing_cell(text):
                    values[c].append(math.nan)
                    continue
                if not text:
                    raise ValueError(f"{where} is empty: every sample must be a number ({gap})")
                if text in MISSING_MARKERS:
                    raise ValueError(f"{where} is {text!r}, a missing-value marker: every sample must be a number "
                                     f"({gap})")
                try:
                    v = float(text)
                except ValueError:
                    raise ValueError(f"{where} is {text[:40]!r}, not a number") from None
                if not math.isfinite(v):
                    raise ValueError(f"{where} is {text!r}: every sample must be a finite number ({gap})")
                values[c].append(v)
    if not values[columns[0]]:
        raise ValueError(f"{path} holds a header but no rows of data")
    return {c: np.asarray(v, dtype=np.float64) for c, v in values.items()}


def sampling_time(t: np.ndarray, label: str = "time") -> float:
    """Ts of uniformly spaced time stamps: (t[L-1] - t[0]) / (L - 1), after checking that every stamp lies within
    :data:`TIME_TOLERANCE` · Ts of the uniform grid t[0] + k·Ts.

    Args:
        t: (L,) the time stamps in seconds, L >= 2.
        label: what they are, for the messages (a file and column).

    Returns:
        Ts in seconds.

    Raises:
        ValueError: for fewer than 2 stamps, a non-increasing span, or a stamp off the grid (naming the largest
            deviation, its row and its size in Ts).
    """
    t = np.asarray(t, dtype=np.float64).ravel()
    if t.size < 2:
        raise ValueError(f"{label}: a sampling time needs 2 or more time stamps; got {t.size}")
    dt = (t[-1] - t[0]) / (t.size - 1)
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"{label}: the time stamps must increase; they run from {t[0]} to {t[-1]}")
    deviation = np.abs(t - (t[0] + dt * np.arange(t.size)))
    k = int(np.argmax(deviation))
    if deviation[k] > TIME_TOLERANCE * dt:
        raise ValueError(f"{label} is not uniformly sampled: the stamp of row {k + 1} (t = {t[k]:.10g} s) lies "
                         f"{deviation[k]:.3g} s ({deviation[k] / dt:.3g} Ts) off the uniform grid of Ts = {dt:.10g} s, "
                         f"more than the tolerance of {TIME_TOLERANCE:g} Ts; resample the data to one Ts, give dt "
                         "to take the rows as uniformly spaced, or keep the stamps as irregular sampling (a logger "
                         "that drops or jitters samples: from_csv(..., irregular=True), ssmkit sysid --irregular)")
    return float(dt)


def check_times(t: np.ndarray, label: str = "time") -> np.ndarray:
    """Time stamps that may be irregularly spaced, checked: 2 or more, finite and strictly increasing.

    Args:
        t: (L,) the time stamps in seconds.
        label: what they are, for the messages (a file and column).

    Returns:
        t as an (L,) float64 array.

    Raises:
        ValueError: for fewer than 2 stamps, a non-finite stamp, or a stamp not after the one before it (naming its
            row and both times).
    """
    t = np.asarray(t, dtype=np.float64).ravel()
    if t.size < 2:
        raise ValueError(f"{label}: irregular sampling needs 2 or more time stamps; got {t.size}")
    bad = ~np.isfinite(t)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"{label}: the time stamp of row {k + 1} is {t[k]}: every stamp must be a finite number")
    steps = np.diff(t)
    if (steps <= 0).any():
        k = int(np.argmax(steps <= 0)) + 1
        raise ValueError(f"{label}: the time stamps must increase strictly; row {k + 1} (t = {t[k]:.10g} s) follows "
                         f"row {k} (t = {t[k - 1]:.10g} s)")
    return t


def median_sampling_time(t, label: str = "time") -> float:
    """The nominal Ts of irregularly spaced time stamps: the median of the gaps t[k] - t[k-1] (the period a logger
    that drops or jitters samples mostly keeps; a few long gaps do not move it, as they would move the mean
    (t[L-1] - t[0]) / (L - 1) of :func:`sampling_time`). Pooled over several records when given a list of them.

    Args:
        t: (L,) the time stamps in seconds (:func:`check_times`), or a list of such arrays (one per record).
        label: what they are, for the messages.

    Returns:
        Ts in seconds.
    """
    stamps = list(t) if isinstance(t, (list, tuple)) and t and not np.isscalar(t[0]) else [t]
    gaps = np.concatenate([np.diff(check_times(s, label)) for s in stamps])
    return float(np.median(gaps))


def _paths(path, which: str) -> list[pathlib.Path]:
    """One path or a non-empty list of paths as a list of Paths."""
    if isinstance(path, (str, os.PathLike)):
        return [pathlib.Path(path)]
    if isinstance(path, (list, tuple)) and path and all(isinstance(p, (str, os.PathLike)) for p in path):
        return [pathlib.Path(p) for p in path]
    raise ValueError(f"{which} must be a file path or a non-empty list of file paths; got {path!r}")


def from_csv(path: str | os.PathLike | Sequence[str | os.PathLike], inputs: str | Sequence[str],
             outputs: str | Sequence[str], dt: float | None = None, time: str | None = None,
             test_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
             test_fraction: float | None = None, delimiter: str | None = None, name: str | None = None,
             unit: str | Sequence[str] = DEFAULT_UNIT, n_init: int | None = None,
             input_unit: str | Sequence[str | None] | None = None, irregular: bool = False,
             hold: str = "sample", missing_outputs: bool = False) -> SysidBenchmark:
    """A benchmark of experiments stored as CSV files: the ``inputs`` and ``outputs`` columns of each file
    (:func:`read_columns`), sampled every ``dt`` seconds or at the stamps of the ``time`` column, with the test records
    of the module docstring.

    Args:
        path: the estimation file, or a list of files (one experiment each, trained as separate records).
        inputs: the header names of the m input columns, in order.
        outputs: the header names of the p output columns, in order (the report's labels).
        dt: Ts in seconds; give it or ``time``, not both, except with ``irregular``: then the nominal Ts, the unit
            of the intervals and the exported systems' dt (the logger's period when it is known; None: the median
            gap, which is a multiple of it once most samples are dropped: 8 s for a 4 s logger missing 60 %).
        time: the header name of a column of time stamps in seconds (:func:`sampling_time`: uniform to
            :data:`TIME_TOLERANCE` · Ts, the same Ts in every file to that tolerance; the first file's Ts is kept;
            with ``irregular``, any strictly increasing stamps, and ``dt`` may be given too).
        test_path: a test file, or a list of them, with the same columns (each a whole test record); None: the tail
            of each estimation file.
        test_fraction: without ``test_path``, the tail of each estimation file held out as a test record (None:
            :data:`DEFAULT_TEST_FRACTION`, 20 %); not allowed with ``test_path``.
        delimiter: the field separator (None: detected, :func:`read_columns`).
        name: the benchmark's name and title (None: the first file's name without its suffix).
        unit: the outputs' unit: one string for every output, or p strings, one per output.
        n_init: samples at the start of each test record read by the initial-state encoder and not scored (None:
            :func:`default_n_init`; 0: from rest).
        input_unit: the inputs' unit: None (not stated), one string for every input, or m strings (or None), one
            per input (the report's and ``results.json``'s; the inputs are not rescaled).
        irregular: with ``time``, take the stamps as they are (irregular sampling, module docstring): the records
            keep them (``IORecord.t``) and Ts is ``dt``, or else the median gap of the estimation files' stamps
            pooled (:func:`median_sampling_time`); False: they must be uniform (:func:`sampling_time`).
        hold: which input acts over the gap before sample k: ``"sample"`` (u_k, as given) or ``"previous"`` (u_{k-1},
            commands held from their sample until the next: :meth:`IORecord.held_previous`; see :func:`from_arrays`).
        missing_outputs: a missing cell of an output column (empty, ``NaN``, a marker of :data:`MISSING_MARKERS`
            such as R's ``NA``, or absent from a row that ends early) is an output sample that was not measured
            (module docstring); False: it is refused, naming its row and column and this option. Input and time
            cells must hold numbers either way.

    Returns:
        the benchmark: a training record per estimation file (``file [:cut]`` for a tail split, else ``file``), a test
        record per test file or per estimation file's tail (``file [cut:]``), no published results.
    """
    _check_hold(hold)
    _check_missing_flag(missing_outputs)
    files = _paths(path, "path")
    test_files = None if test_path is None else _paths(test_path, "test_path")
    ins = _column_list(inputs, "inputs")
    outs = _column_list(outputs, "outputs")
    both = sorted(set(ins) & set(outs))
    if both:
        raise ValueError(f"columns {both} are named as inputs and as outputs: a column is one or the other")
    if not isinstance(irregular, bool) or irregular and time is None:
        raise ValueError(f"irregular must be a bool, True only with a time column (time=...): the sample times come "
                         f"from it; got irregular={irregular!r}, time={time!r}")
    if (dt is None) == (time is None) and not (irregular and dt is not None):
        raise ValueError("give the sampling time: dt (Ts in seconds) or time (the name of a column of time stamps), "
                         f"one of the two; got dt={dt!r}, time={time!r} (both go together only with irregular=True: "
                         "dt is then the nominal Ts)")
    if dt is not None:
        dt = check_sampling_time(dt)
    if time is not None:
        if not isinstance(time, str) or not time.strip():
            raise ValueError(f"time must be None or the header name of one column; got {time!r}")
        time = time.strip()
        if time in ins or time in outs:
            raise ValueError(f"the time column {time!r} is also named as an input or an output")
    if test_files is not None and test_fraction is not None:
        raise ValueError("give test_path (separate test files) or test_fraction (the tail of each file), not both")
    fraction = None
    if test_files is None:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else _check_fraction(test_fraction, "test_fraction")
    if name is None:
        name = files[0].stem
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be None or a non-empty string; got {name!r}")
    wanted = ins + outs + ([time] if time is not None else [])

    def read(p: pathlib.Path) -> tuple[np.ndarray, np.ndarray, float | np.ndarray | None]:
        """(u (L, m), y (L, p), the file's Ts, or with ``irregular`` its checked stamps (L,), or None)."""
        cols = read_columns(p, wanted, delimiter, missing=outs if missing_outputs else ())
        label = f"{p.name}, column {time!r}"
        ts = None
        if time is not None:
            ts = check_times(cols[time], label) if irregular else sampling_time(cols[time], label)
        return _held(np.stack([cols[c] for c in ins], 1), hold), np.stack([cols[c] for c in outs], 1), ts

    experiments = [(p, *read(p)) for p in files]
    tests = [(p, *read(p)) for p in test_files] if test_files is not None else []
    if irregular and dt is None:  # the files keep their stamps; Ts is nominal, the median gap of the estimation files
        dt = median_sampling_time([ts for _, _, _, ts in experiments], "the estimation files' time columns")
    elif not irregular and time is not None:  # uniform stamps: the first file's Ts, the same in every file
        dt = experiments[0][3]
        for p, _, _, ts in experiments[1:] + tests:
            if abs(ts - dt) > TIME_TOLERANCE * dt:
                raise ValueError(f"{p.name}'s time column gives Ts = {ts:.10g} s, {files[0].name}'s {dt:.10g} s: every "
                                 "file must be sampled at one Ts (resample first)")

    def stamps(ts, start: int = 0, stop: int | None = None) -> torch.Tensor | None:
        return _times(ts[start:stop]) if irregular else None  # the record's times (irregular), else None

    train, test_records = [], []
    for p, u, y, ts in experiments:
        if fraction is None:
            train.append(IORecord(_tensor(u), _tensor(y), dt, p.name, t=stamps(ts)))
            continue
        (u_tr, y_tr), (u_te, y_te), cut = _split(u, y, fraction, p.name)
        train.append(IORecord(_tensor(u_tr), _tensor(y_tr), dt, f"{p.name} [:{cut}]", t=stamps(ts, 0, cut)))
        test_records.append(IORecord(_tensor(u_te), _tensor(y_te), dt, f"{p.name} [{cut}:]", t=stamps(ts, cut)))
    test_records += [IORecord(_tensor(u), _tensor(y), dt, p.name, t=stamps(ts)) for p, u, y, ts in tests]
    source = (f"{', '.join(p.name for p in files)}; "
              + (f"the last {percent(fraction)} of each file held out as a test record" if fraction is not None
                 else f"test files {', '.join(p.name for p in test_files)}"))
    return _benchmark(train, test_records, name, unit, n_init, tuple(ins), tuple(outs), source, input_unit, hold)
