"""One-step-ahead prediction with a deep Wiener model, for comparison with simulation training.

A predictor is a :class:`~ssmkit.sysid.wiener.DeepWiener` with m + p inputs fed [u_t, y_{t-1}] (the input now and
the output measured one sample before) and trained to output y_t:

    ŷ_t = f(u_{≤t}, y_{≤t-1})                                   (one-step-ahead prediction, the NARX/ARX setting)

Training minimises the one-step prediction error on windows of the shifted records (:func:`prediction_record`) with
:func:`~ssmkit.sysid.fit.fit_simulation` (validation then scores one-step predictions). A benchmark scores the
*simulation* of a model, so :func:`free_run` runs the predictor in closed loop, feeding back its own ŷ_{t-1} in
place of the measurement after the first ``n_warm`` samples (there it reads the measured outputs): the comparison
tells how much a predictor trained on one-step error loses when it has to simulate.

A predictor reads the measured y_{t-1} at every step, so records with missing outputs (NaN in ``IORecord.y``) are
refused (:func:`check_measured`); a simulation model takes them (:mod:`ssmkit.sysid.fit`).
"""

from __future__ import annotations

import math

import torch

from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import DeepWiener


def prediction_record(record: IORecord) -> IORecord:
    """The one-step-ahead record of ``record``: inputs [u_t, y_{t-1}] (L - 1, m + p), outputs y_t (L - 1, p), t ≥ 1.

    Args:
        record: an experiment with L ≥ 2 samples.

    Returns:
        the shifted record (one sample shorter).
    """
    if len(record) < 2:
        raise ValueError(f"record {record.name!r} needs at least 2 samples for one-step-ahead prediction; got {len(record)}")
    check_regular([record], "one-step-ahead prediction")
    check_measured([record], "one-step-ahead prediction")
    u = torch.cat([record.u[1:], record.y[:-1]], dim=-1)
    return IORecord(u, record.y[1:], record.dt, f"{record.name} (one-step-ahead)")


def check_regular(records: list[IORecord], what: str) -> None:
    """Raise ``ValueError`` for an irregularly sampled record (``IORecord.t``): a predictor reads [u_t, y_{t-1}]
    sample by sample, one period apart, and its records carry no sample times, so the gaps would be silently
    ignored (the one-step record dropped ``t``; the free run stepped without ``interval``).

    Args:
        records: the records.
        what: what refuses them, for the message.
    """
    irregular = [r.name for r in records if r.t is not None]
    if irregular:
        raise ValueError(f"{what} runs a predictor sample by sample, one period apart: records {irregular} are "
                         "irregularly sampled (IORecord.t), and their gaps would be ignored; simulate them with a "
                         "simulation model (ssmkit.sysid.fit.simulate_record), which takes the sample times")


def check_measured(records: list[IORecord], what: str) -> None:
    """Raise ``ValueError`` for a record with missing outputs (NaN in ``IORecord.y``): a predictor reads the measured
    y_{t-1} as an input at every step, and a missing one has no value to read.

    Args:
        records: the records.
        what: what refuses them, for the message.
    """
    gaps = [f"{r.name!r} ({r.n_missing} missing)" for r in records if r.n_missing]
    if gaps:
        raise ValueError(f"{what} reads the measured output y_{{t-1}} at every step, and records {', '.join(gaps)} "
                         "have missing outputs (NaN in IORecord.y); train and score them with a simulation model "
                         "(mode 'simulation': ssmkit.sysid.fit.simulate_record), which reads only the known inputs")


def check_predictor(model: DeepWiener, n_inputs: int, n_outputs: int) -> None:
    """Raise ValueError unless ``model`` takes [u, y_prev] (m + p inputs) and returns p outputs.

    Args:
        model: the predictor.
        n_inputs: m of the data.
        n_outputs: p of the data.
    """
    if model.n_inputs != n_inputs + n_outputs or model.n_outputs != n_outputs:
        raise ValueError(f"a one-step-ahead predictor of an {n_inputs}-input {n_outputs}-output system needs "
                         f"n_inputs = m + p = {n_inputs + n_outputs} and n_outputs = {n_outputs}; "
                         f"got {model.n_inputs} and {model.n_outputs}")


def at_model_period(model: DeepWiener, record: IORecord) -> bool:
    """Whether ``record``'s (nominal) sampling time is the model's ``dt``, to 1e-9 relative; True for a model that
    states no ``dt``.

    Args:
        model: the model (its ``dt``, seconds).
        record: the record (its ``dt``).
    """
    own = getattr(model, "dt", None)
    return own is None or math.isclose(record.dt, float(own), rel_tol=1e-9)


def check_period(model: DeepWiener, records: list[IORecord]) -> None:
    """Raise ``ValueError`` unless every record is sampled every ``model.dt`` (to 1e-9 relative; a model stating no
    ``dt`` passes): training, and a predictor's one-step and free-run simulation, run sample by sample, so data at
    another rate would silently stand for the model's (python-control's ``forced_response`` refuses a time grid off
    a discrete system's dt alike). Irregularly sampled records compare their nominal Ts.

    Args:
        model: the model (its ``dt``, seconds).
        records: the records (each its ``dt``).
    """
    for r in records:
        if not at_model_period(model, r):
            raise ValueError(f"the model samples every dt = {float(model.dt)!r} s but record {r.name!r} every Ts = "
                             f"{r.dt!r} s: build the model with its data's Ts (DeepWiener(..., dt={r.dt!r}); build_model does), "
                             "or resample the data")


@torch.no_grad()
def predict_one_step(model: DeepWiener, record: IORecord) -> torch.Tensor:
    """One-step-ahead predictions ŷ_t from the measured y_{t-1} (t ≥ 1), from rest; ŷ_0 is the measured y_0.

    Args:
        model: a predictor (m + p inputs, p outputs).
        record: the experiment (L, m) → (L, p).

    Returns:
        ŷ (L, p).
    """
    check_predictor(model, record.u.shape[1], record.y.shape[1])
    check_regular([record], "predict_one_step")
    check_measured([record], "predict_one_step")
    check_period(model, [record])
    shifted = prediction_record(record)
    dtype = model.u_mean.dtype
    y_hat, _ = model(shifted.u.to(device=model.u_mean.device, dtype=dtype)[None], return_state=False)
    return torch.cat([record.y[:1].to(dtype), y_hat[0].cpu()])


@torch.no_grad()
def free_run(model: DeepWiener, record: IORecord, n_warm: int = 0) -> torch.Tensor:
    """Simulate with a predictor: its own ŷ_{t-1} replaces the measurement after the first ``n_warm`` samples.

    The first ``n_warm`` samples are one-step predictions from the measured outputs (they warm the state up and are
    returned as measured); from then on the model runs one sample at a time with ``step``.

    Args:
        model: a predictor (m + p inputs, p outputs).
        record: the experiment; its outputs are read only in the warm-up window (they must be measured there;
            missing outputs after it are not read).
        n_warm: samples with measured outputs fed back (≥ 1; the benchmark's init window is the honest choice).

    Returns:
        ŷ (L, p), equal to the measurement in the first ``n_warm`` samples.
    """
    check_predictor(model, record.u.shape[1], record.y.shape[1])
    check_regular([record], "free_run")
    check_period(model, [record])
    if not isinstance(n_warm, int) or not 1 <= n_warm < len(record):
        raise ValueError(f"n_warm must be an int in [1, {len(record) - 1}] (samples read from the measurement); got {n_warm!r}")
    if bool(torch.isnan(record.y[:n_warm]).any()):  # after the warm-up the outputs are not read
        check_measured([record.part(0, n_warm, f"{record.name} [:{n_warm}]")], "free_run's warm-up")
    to = {"device": model.u_mean.device, "dtype": model.u_mean.dtype}
    u, y = record.u.to(**to), record.y.to(**to)
    state = model.initial_state(1)
    if n_warm > 1:
        warm = torch.cat([u[1:n_warm], y[: n_warm - 1]], dim=-1)[None]
        _, state = model(warm, state)
    out = [y[:n_warm]]
    y_prev = y[n_warm - 1: n_warm]  # (1, p)
    for t in range(n_warm, len(record)):
        y_prev, state = model.step(torch.cat([u[t: t + 1], y_prev], dim=-1), state)
        out.append(y_prev)
    return torch.cat(out).cpu()
