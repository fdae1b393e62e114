"""Training a deep Wiener model by simulation error on truncated windows of one or several experiments.

    history = fit_simulation(model, bench.train, config=SimulationFit(window=256, steps=3000))

Each optimizer step draws ``batch_size`` windows of ``window`` samples, each inside one record (a window never
spans two experiments: no concatenation artefacts), simulates the model over the window from its initial state and
minimises the mean squared simulation error of the normalised outputs:

    loss = mean_t w_t · |(ŷ_t - y_t) / σ_y|²,   w_t = γ^t / mean(γ^t)        (γ = ``decay``; γ = 1: plain MSE)

The initial state of a window is the encoder's estimate from the ``encoder_window`` samples before it when the
model has an encoder, else the rest state with the first ``washout`` samples left out of the loss (with
``validate_from_rest`` the encoder starts the training windows only and validation simulates from rest). Validation
simulates whole held-out records the same way (the last ``val_fraction`` of every estimation record when no
validation records are given), every ``val_every`` steps; the weights with the lowest validation score are kept, and
training stops after ``patience`` validations without improvement, but not before step ``min_steps``. The score is
the NRMSE averaged over the p outputs,

    score = (1/p) Σ_k RMSE_k / s_k,     s_k = std of the scored validation samples of output k      (population std)

so that no output's unit decides (a position in m beside a force in kN: the mean of the RMSEs in physical units
followed the larger one alone); s_k is fixed by the validation data, so with one output the score is RMSE / s, the
same choice as by RMSE. Where output k is constant over its scored validation samples (std 0 up to rounding,
:func:`ssmkit.sysid.metrics.undefined_scale`; a single measured sample, possible with missing outputs, is such a case)
its std gives no NRMSE, and s_k is the model's output scale σ_k instead (the std of its training samples, by which the
loss normalises it; 1 if it is constant there too): the score stays unit-free and defined, never a NaN that no step
could improve on, nor an RMSE in the output's own unit beside the other outputs' NRMSEs. The per-output RMSEs in
physical units are recorded too (``val_rmse``, ``best_val_rmse_per_output``). With
``average`` = β the validated (and kept) weights are the exponential moving average of the iterates
(:class:`ssmkit.sysid.averaging.WeightAverage`), not the last iterate. SSM parameters keep their marked learning rates
and get weight decay only when ``ssm_weight_decay`` is set; ``schedule="cosine"`` decays every rate to 0 over
``steps``.

Held-out blocks (``blocks``, for k-fold validation): instead of a tail, contiguous blocks [start, stop) of the training
records are held out. Their measured outputs never enter the loss, the normalisation or a training window's encoder
part (a window may still simulate through a block, driven by the known inputs, with the loss left out there).
Validation simulates every record that holds a block from its start (the encoder reads its first
``encoder_window`` samples) and scores the blocks only, so the held-out samples are reached after a long free run,
as the test record's samples are.

Irregularly sampled records (``IORecord.t``; :attr:`ssmkit.sysid.records.IORecord.intervals`): a training window
carries the intervals of its samples, τ_k = (t_k − t_{k−1}) / Ts, the first of them the real gap from the sample
before the window (the state it starts from stands for that instant; τ_0 = 1 at a record's first sample), and the
model simulates it with ``intervals=`` (each block's continuous-time system sampled at those times); validation and
:func:`simulate_record` pass a record's intervals the same way. A model whose layers take no intervals is refused
before training (:func:`ssmkit.layers.irregular.require_intervals`). An initial-state encoder reads its
``encoder_window`` samples as they come, without their times: it is a learned map, trained end to end on windows of
the same records (so on their gap patterns), and the simulation after it runs with the real gaps, the first from the
encoder's last sample. Its estimate cannot tell a short gap from a long one inside its window, so on gaps unlike the
training records' it is poorer (the error it leaves fades over a stable model's memory); ``encoder_window=0`` with a
``washout`` starts every window from rest instead. A regularly sampled record (``t`` None) runs exactly as before
(no intervals; the same arithmetic), also beside irregular ones (its windows then carry gaps of 1).

Missing outputs (NaN in ``IORecord.y``: an output sample that was not measured, per sample and output channel;
:class:`ssmkit.sysid.records.IORecord`): the inputs are known at every sample, so the model is simulated over every
sample as before, and the loss is the masked mean over the measured output samples (each (sample, output) cell that
was measured weighs the same; M_{t,k} = 1 where y_{t,k} was measured, 0 where not or held out)

    loss = Σ_{b,t,k} w_t · M_{b,t,k} · |(ŷ_{b,t,k} − y_{b,t,k}) / σ_k|² / max(1, Σ_{b,t,k} M_{b,t,k})

with the missing targets filled by 0 before the difference (a NaN times a zero weight would still be NaN in the
gradient), so a window, or a whole batch, without a measured output contributes nothing and no NaN. The output
normalisation (μ_k, σ_k) is the mean and population std of the measured samples of each output; validation scores
the measured samples only (:func:`validation_rmse`, :func:`measured_rms`, :func:`output_scales`). The initial-state
encoder reads a missing output in its window as the training mean (0 once normalised;
:meth:`ssmkit.sysid.wiener.DeepWiener.estimate_state`): the simplest fill, learned around end to end on windows with
the same gaps. Records measured throughout run exactly as before (the same arithmetic).

A model with an ``output_range`` (a saturating sensor) is trained on its unclipped output with measurements at a
limit treated as censored (:meth:`ssmkit.sysid.wiener.DeepWiener.censored_error`); with ``censor=False`` they are
scored as measured instead (ŷ − y on both sides: the process itself is taken to stop at the limit, as a tank that
overflows there does), while the model still clips its simulated output to the range.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ssmkit.layers.irregular import require_intervals
from ssmkit.layers.marks import marked_parameters
from ssmkit.sysid.averaging import WeightAverage
from ssmkit.sysid.metrics import rmse, undefined_scale
from ssmkit.sysid.prediction import at_model_period, check_period
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import DeepWiener, channel_scale
from ssmkit.train.schedule import warmup_cosine
from ssmkit.utils import percent

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Block:
    """Samples [start, stop) of training record ``record`` held out for validation (k-fold; :func:`fit_simulation`).

    Args:
        record: the index of the record in the training list.
        start: the first held-out sample.
        stop: one past the last.
    """

    record: int
    start: int
    stop: int


def fold_blocks(lengths: list[int], folds: int, fold: int) -> list[Block]:
    """Block ``fold`` of ``folds`` contiguous, nearly equal blocks of every record (boundaries round(i·L / folds)).

    Args:
        lengths: the records' lengths L.
        folds: K >= 2 blocks per record.
        fold: which block, 0 … K − 1.

    Returns:
        one :class:`Block` per record.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2; got {folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"fold must be an int in [0, {folds}); got {fold!r}")
    return [Block(i, int(round(fold * n / folds)), int(round((fold + 1) * n / folds))) for i, n in enumerate(lengths)]


@dataclass
class SimulationFit:
    """Options of :func:`fit_simulation`.

    Args:
        window: samples per training window T.
        batch_size: windows per optimizer step.
        steps: optimizer steps at most.
        lr: AdamW learning rate of the unmarked parameters (SSM parameters keep their marked rate).
        weight_decay: AdamW weight decay of the unmarked weights.
        ssm_weight_decay: weight decay of the marked SSM parameters (None: none, the papers' setting).
        decay: γ of the decaying-weight MSE (None: plain MSE).
        washout: samples at the start of each window left out of the loss when the model has no encoder.
        val_fraction: the tail of every estimation record held out for validation (when no validation records
            are given); 0 for no validation.
        val_every: validate every this many steps.
        patience: stop after this many validations without a lower validation score (None: never; module docstring).
        grad_clip: clip the gradient norm (None: no clipping).
        seed: the seed of the window draws.
        schedule: ``"constant"`` learning rates, or ``"cosine"``: every group's rate decays to 0 over ``steps``
            (half a cosine, no warm-up; :func:`ssmkit.train.warmup_cosine`).
        min_steps: early stopping cannot stop training before this step (0: from the first validation).
        average: β of an exponential moving average of the weights, updated after every step; validation scores
            (and the best weights kept are) the averaged weights; without validation the model ends with them
            (None: the last iterate).
        level_weight: (level, w): in the training loss an output sample whose measured value is at or above
            ``level`` (physical units) weighs w, the others 1; ``level`` is one number for every output or a list of
            p levels, one per output (None for an output not weighed); the loss stays a mean over the samples (None:
            every sample weighs 1). Validation is not weighted.
        censor: with a model ``output_range``, True scores a measurement at a limit as censored (the process may be
            beyond it; :meth:`ssmkit.sysid.wiener.DeepWiener.censored_error`), False as the measured value, on both
            sides (module docstring). Validation scores the clipped simulation either way.
        validate_from_rest: validation simulates every record from rest even when the model has an encoder (whose
            state then starts the training windows only: a benchmark whose test starts from rest); False: the
            encoder reads the first ``encoder_window`` samples of each validation record (:func:`simulate_record`).
        extra: free-form entries kept with the options for the caller's own records; :func:`fit_simulation` reads
            none of them (they change nothing).
    """

    window: int = 256
    batch_size: int = 16
    steps: int = 2000
    lr: float = 3e-3
    weight_decay: float = 0.0
    ssm_weight_decay: float | None = None
    decay: float | None = None
    washout: int = 0
    val_fraction: float = 0.2
    val_every: int = 50
    patience: int | None = 20
    grad_clip: float | None = 1.0
    seed: int = 0
    schedule: str = "constant"
    min_steps: int = 0
    average: float | None = None
    level_weight: tuple[float, float] | None = None
    censor: bool = True
    validate_from_rest: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _is_int(value: object, least: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= least


def _is_number(value: object, least: float, strict: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > least if strict else value >= least


def _is_level(level: object) -> bool:
    """A finite number, or a non-empty list of finite numbers or None (one per output, at least one set)."""
    if isinstance(level, (tuple, list)):
        return (any(v is not None for v in level)
                and all(v is None or _is_number(v, -math.inf, strict=False) for v in level))
    return _is_number(level, -math.inf, strict=False)


def _levels(level, n_outputs: int) -> list[float]:
    """``level_weight``'s level as one level per output (inf for an output not weighed), or a ValueError when a list
    of levels does not hold one per output."""
    if not isinstance(level, (tuple, list)):
        return [float(level)] * n_outputs
    if len(level) != n_outputs:
        raise ValueError(f"level_weight's level must be one number for every output or n_outputs = {n_outputs} levels "
                         f"(None for an output not weighed); got {len(level)}: {list(level)!r}")
    return [math.inf if v is None else float(v) for v in level]


def _check_fit_options(cfg: SimulationFit) -> None:
    """Raise ``ValueError`` naming the first option of ``cfg`` out of its range (a negative rate would ascend the
    loss, a washout as long as the window would weight every sample by 0/0)."""
    for name in ("window", "batch_size", "val_every"):
        if not _is_int(getattr(cfg, name), 1):
            raise ValueError(f"{name} must be an int >= 1; got {getattr(cfg, name)!r}")
    if not _is_int(cfg.steps, 0):
        raise ValueError(f"steps must be an int >= 0; got {cfg.steps!r}")
    if not _is_int(cfg.washout, 0) or cfg.washout >= cfg.window:
        raise ValueError(f"washout must be an int in [0, window) = [0, {cfg.window}); got {cfg.washout!r}")
    if cfg.patience is not None and not _is_int(cfg.patience, 1):
        raise ValueError(f"patience must be None or an int >= 1; got {cfg.patience!r}")
    if not _is_number(cfg.lr, 0.0, strict=False):
        raise ValueError(f"lr must be a finite number >= 0; got {cfg.lr!r}")
    if not (_is_number(cfg.val_fraction, 0.0, strict=False) and cfg.val_fraction < 1):  # -0.2 or NaN skipped validation
        raise ValueError(f"val_fraction must be a number in [0, 1); got {cfg.val_fraction!r}")
    for name in ("weight_decay", "ssm_weight_decay"):
        value = getattr(cfg, name)
        if (value is not None or name == "weight_decay") and not _is_number(value, 0.0, strict=False):
            raise ValueError(f"{name} must be a finite number >= 0{' or None' if name != 'weight_decay' else ''}; "
                             f"got {value!r}")
    for name in ("decay", "grad_clip"):
        value = getattr(cfg, name)
        if value is not None and not _is_number(value, 0.0, strict=True):
            raise ValueError(f"{name} must be None or a finite number > 0; got {value!r}")
    lw = cfg.level_weight
    if lw is not None and not (isinstance(lw, (tuple, list)) and len(lw) == 2 and _is_level(lw[0])
                               and _is_number(lw[1], 0.0, strict=False)):
        raise ValueError(f"level_weight must be None or (level, w) with a finite level (or a list of one finite level "
                         f"or None per output) and a finite w >= 0; got {lw!r}")
    if not isinstance(cfg.censor, bool):
        raise ValueError(f"censor must be a bool; got {cfg.censor!r}")


def tail_validation(train: list[IORecord], val: list[IORecord] | None, fraction: float, window: int,
                    n_enc: int) -> tuple[list[IORecord], list[IORecord] | None]:
    """The (training, validation) records of a run without held-out blocks: ``val`` as given, or else -- with
    ``fraction`` > 0 -- the last ``fraction`` of every training record (:func:`split_tail`, keeping a training window
    plus the encoder's ``n_enc`` samples for training and ``n_enc`` + 2 for validation). :func:`fit_simulation` trains
    and validates on these; the data-driven initialisation and an ensemble's validation take the same split from here.

    Args:
        train: the estimation records.
        val: validation records, or None.
        fraction: the validation fraction, in [0, 1).
        window: the training window.
        n_enc: the model's encoder window.
    """
    if val is None and fraction > 0:
        return split_tail(train, fraction, window + n_enc, n_enc + 2)
    return train, val


def split_tail(records: list[IORecord], fraction: float, min_train: int, min_val: int = 2) -> tuple[list[IORecord], list[IORecord]]:
    """Hold out the last ``fraction`` of every record: (estimation parts, validation parts).

    Args:
        records: the estimation records.
        fraction: in [0, 1).
        min_train: shortest estimation part (a training window).
        min_val: shortest validation part.

    Returns:
        the two lists of records.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {fraction!r}")
    if fraction == 0:
        return list(records), []
    train, val = [], []
    for r in records:
        cut = int(round(len(r) * (1 - fraction)))
        if cut < min_train:
            raise ValueError(f"record {r.name!r} ({len(r)} samples) is too short to hold out {percent(fraction)} and "
                             f"keep {min_train} samples for training windows: lower window or val_fraction")
        if len(r) - cut < min_val:  # (the same message as above blamed the window, which was not the limit)
            raise ValueError(f"record {r.name!r} ({len(r)} samples) is too short for its validation tail: the last "
                             f"{percent(fraction)} holds {len(r) - cut} samples, fewer than the {min_val} it needs "
                             "(the encoder's window + 2): raise val_fraction, or lower the encoder's window")
        train.append(r.part(0, cut, f"{r.name} [:{cut}]"))  # the sample times cut with them (None: regular)
        val.append(r.part(cut, len(r), f"{r.name} [{cut}:]"))
    return train, val


def _groups(model: DeepWiener, cfg: SimulationFit) -> list[dict]:
    plain, marked = [], {}
    for _, p, marks in marked_parameters(model):
        if not p.requires_grad:
            continue
        if marks is None:
            plain.append(p)
        else:
            key = float(marks.get("lr", cfg.lr))
            marked.setdefault(key, []).append(p)
    groups = [{"params": plain, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    for lr, ps in marked.items():
        groups.append({"params": ps, "lr": lr, "weight_decay": cfg.ssm_weight_decay or 0.0})
    return groups


@torch.no_grad()
def simulate_record(model: DeepWiener, record: IORecord, from_rest: bool = False) -> tuple[torch.Tensor, int]:
    """Simulate a whole record: from the encoder's state after its first ``encoder_window`` samples (those are then
    not simulated), or from rest. An irregularly sampled record is simulated with its intervals (module docstring):
    from rest with all of them (τ_0 = 1), after the encoder with those of the samples after it. A regularly sampled
    record whose Ts is not the model's ``dt`` is simulated at its real times too, with constant intervals Ts / dt,
    by a model whose layers take intervals (a continuous-time model read at another rate), and refused by another.
    Evaluation, without a gradient (the result plots and converts to NumPy as it is).

    Args:
        model: the model.
        record: the record (its measured outputs feed only the encoder).
        from_rest: simulate from rest even when the model has an encoder (then ``start`` is 0).

    Returns:
        ŷ (L, p) on the CPU (the model may sit on any device) with the first ``start`` samples equal to the
        measurement, and ``start``.
    """
    to = {"device": model.u_mean.device, "dtype": model.u_mean.dtype}
    u = record.u.to(**to)[None]
    y = record.y.to(**to)[None]
    tau = None if _in_step(model, record) else _model_intervals(model, [record], record)[0][None]  # (1, L)
    n = 0 if from_rest else model.encoder_window
    if n:
        state = estimate_state(model, u[:, :n], y[:, :n], None if tau is None else tau[:, :n])
        if tau is None:
            y_sim, _ = model(u[:, n:], state, return_state=False)
        else:
            y_sim, _ = model(u[:, n:], state, return_state=False, intervals=tau[:, n:])
        return torch.cat([y[0, :n], y_sim[0]]).cpu(), n
    if tau is None:
        y_sim, _ = model(u, return_state=False)
    else:
        y_sim, _ = model(u, return_state=False, intervals=tau)
    return y_sim[0].cpu(), 0


def estimate_state(model: DeepWiener, u_past: torch.Tensor, y_past: torch.Tensor,
                   intervals: torch.Tensor | None) -> list:
    """``model.estimate_state`` of a window, handed the window's ``intervals`` where the model's encoder reads sample
    times (``encoder_times``; None: sampled every ``dt``), else without them (an encoder blind to the times, or a
    regularly sampled window).

    Args:
        model: a DeepWiener or WienerEnsemble with an initial-state encoder.
        u_past: (B, n, m) the window's inputs.
        y_past: (B, n, p) its measured outputs.
        intervals: (B, n) the window samples' intervals in periods of ``model.dt``, or None.
    """
    if getattr(model, "encoder_times", False):
        return model.estimate_state(u_past, y_past, intervals)
    return model.estimate_state(u_past, y_past)


def _in_step(model: DeepWiener, record: IORecord) -> bool:
    """Whether ``record`` runs in samples, without intervals: it is regularly sampled at the model's ``dt`` (or the
    model states none)."""
    return record.t is None and at_model_period(model, record)


def _model_intervals(model: DeepWiener, records: list[IORecord], why: IORecord | None = None) -> list[torch.Tensor]:
    """Each record's intervals (L,) in the model's dtype on its device (:func:`_in_model_periods`), after
    checking that ``model`` takes intervals: every layer declares ``takes_intervals`` (the ValueError of
    :func:`ssmkit.layers.irregular.require_intervals`, naming the layers that do), and a model without a DeepWiener's
    layers (a :class:`~ssmkit.sysid.ensemble.WienerEnsemble`) has a forward with ``intervals``.

    The intervals are in units of the *model's* sampling time ``model.dt`` (the unit of its layers' time,
    :meth:`DeepWiener.forward`): a record whose nominal ``dt`` differs (another file's median gap, arrays given their
    own Ts) has its intervals scaled by record.dt / model.dt, so its samples are simulated at their real times, not at
    times stretched by the ratio of the two nominal periods (τ_0, one record period from rest, scales alike)."""
    layers = getattr(model, "layers", None)
    try:
        if isinstance(layers, torch.nn.ModuleList):
            for layer in layers:
                require_intervals(layer)
        if "intervals" not in inspect.signature(model.forward).parameters:
            raise ValueError(f"{type(model).__name__}.forward takes no sampling intervals: it cannot simulate "
                             "irregularly sampled records (IORecord.t); use one DeepWiener whose layers take them")
    except ValueError as error:
        if why is None or why.t is not None:
            raise
        raise ValueError(f"record {why.name!r} samples every Ts = {why.dt!r} s but the model every dt = "
                         f"{float(model.dt)!r} s, and its layers cannot run at another rate ({error})") from None
    to = {"device": model.u_mean.device, "dtype": model.u_mean.dtype}
    return [_in_model_periods(r, model).to(**to) for r in records]


def _in_model_periods(record: IORecord, model: DeepWiener) -> torch.Tensor:
    """A record's intervals (L,) float64 in units of ``model.dt``: (t_k − t_{k−1}) / model.dt (τ_0 = record.dt /
    model.dt), record.dt / model.dt throughout for a regularly sampled record; the record's own
    :attr:`~ssmkit.sysid.records.IORecord.intervals` (ones where regular) where the two periods are equal (to
    1e-9) or the model states none."""
    tau = record.intervals if record.t is not None else torch.ones(len(record), dtype=torch.float64)
    if at_model_period(model, record):
        return tau
    return tau * (record.dt / float(model.dt))


@torch.no_grad()
def set_normalisation(model: DeepWiener, u: list[torch.Tensor], y: list[torch.Tensor]) -> None:
    """``model.set_normalisation`` of training records whose outputs may be missing (NaN; module docstring): the
    inputs' statistics as before, and each output's mean μ_k and scale σ_k (population std, 1 for a constant output:
    :func:`ssmkit.sysid.wiener.channel_scale`) over the samples where it was measured. Outputs measured throughout
    take ``model.set_normalisation`` unchanged.

    Args:
        model: the DeepWiener.
        u: (L, m) input records.
        y: (L, p) output records, NaN where not measured.
    """
    yy = torch.cat(list(y))
    seen = ~torch.isnan(yy)
    if bool(seen.all()):
        model.set_normalisation(u, y)
        return
    columns = _measured_columns(yy, "training sample (NaN throughout)", "it has nothing to be trained or normalised on")
    model.set_normalisation(u, [torch.where(seen, yy, torch.zeros_like(yy))])  # the inputs'; the outputs' below
    model.y_mean.copy_(torch.stack([c.mean() for c in columns]))
    model.y_std.copy_(torch.cat([channel_scale(c) for c in columns]))


def _measured_columns(y: torch.Tensor, where: str, why: str) -> list[torch.Tensor]:
    """Each output's measured samples (not NaN) as a (T_k, 1) column, or a ``ValueError`` naming an output with none.

    Args:
        y: (L, p) outputs, NaN where not measured.
        where: what the samples are, for the message ("training sample", ...).
        why: why an output needs one, for the message.

    Returns:
        p columns (T_k, 1), T_k >= 1.
    """
    seen = ~torch.isnan(y)
    for k in range(y.shape[1]):
        if not bool(seen[:, k].any()):
            raise ValueError(f"output {k + 1} of {y.shape[1]} is not measured at any {where}: {why}")
    return [y[seen[:, k], k:k + 1] for k in range(y.shape[1])]


def measured_rms(errors: torch.Tensor, measured: torch.Tensor) -> list[float]:
    """The RMS per output of ``errors`` over the samples whose measurement is known (``measured`` not NaN):
    sqrt(Σ_{t: y_{t,k} measured} e_{t,k}² / T_k); a NaN error at a measured sample (a diverged simulation) shows.

    Args:
        errors: (n, p) errors ŷ − y.
        measured: (n, p) the measured outputs, NaN where not measured.

    Returns:
        one RMS per output channel (NaN for one with no measured sample).
    """
    seen = ~torch.isnan(measured)
    errors = errors.double()
    if bool(seen.all()):
        return errors.pow(2).mean(0).sqrt().tolist()
    square = torch.where(seen, errors.pow(2), torch.zeros_like(errors))
    return (square.sum(0) / seen.sum(0)).sqrt().tolist()


@torch.no_grad()
def validation_rmse(model: DeepWiener, records: list[IORecord], from_rest: bool = False) -> list[float]:
    """The RMSE per output of ``model``'s simulation of whole records (:func:`simulate_record`; the samples that fed
    the encoder are not scored), pooled over the records, in the data's unit, over the measured samples (a missing
    output, NaN, is left out).

    Args:
        model: a DeepWiener (or a model with the same ``forward``/``estimate_state``: a WienerEnsemble).
        records: the validation records.
        from_rest: simulate from rest even when the model has an encoder (every sample scored).

    Returns:
        one RMSE per output channel.
    """
    sims = [simulate_record(model, r, from_rest) for r in records]  # on the CPU, as the measurements are moved
    score = rmse([s[n:] for s, n in sims], [r.y[n:].cpu() for r, (_, n) in zip(records, sims)], skip_missing=True)
    return torch.atleast_1d(score).tolist()


def block_errors(model: DeepWiener, records: list[IORecord], blocks: list[Block],
                 from_rest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The simulation errors on held-out blocks: each record holding a block is simulated whole from its start
    (:func:`simulate_record`), and the samples of its blocks not read by the encoder are kept.

    Args:
        model: a DeepWiener (or a WienerEnsemble).
        records: the training records the blocks index.
        blocks: the held-out blocks.
        from_rest: simulate from rest even when the model has an encoder.

    Returns:
        (errors (n, p) ŷ − y pooled over the blocks, in the data's unit; the block samples' measured outputs (n, p)),
        on the CPU; both NaN where an output was not measured (:func:`measured_rms` leaves those out).
    """
    errors, measured, sims = [], [], {}
    with torch.no_grad():
        for b in blocks:
            if b.record not in sims:
                sims[b.record] = simulate_record(model, records[b.record], from_rest)
            y_sim, n = sims[b.record]
            lo = max(b.start, n)
            y = records[b.record].y[lo:b.stop].cpu()  # records may sit on the model's device; ŷ is on the CPU
            errors.append(y_sim[lo:b.stop].to(y.dtype) - y)
            measured.append(y)
    return torch.cat(errors), torch.cat(measured)


def block_rmse(model: DeepWiener, records: list[IORecord], blocks: list[Block],
               from_rest: bool = False) -> list[float]:
    """The RMSE per output of ``model``'s simulation on held-out blocks, pooled over them (:func:`block_errors`), over
    their measured samples (:func:`measured_rms`).

    Args:
        model: a DeepWiener (or a WienerEnsemble).
        records: the training records the blocks index.
        blocks: the held-out blocks.
        from_rest: simulate from rest even when the model has an encoder.

    Returns:
        one RMSE per output channel.
    """
    err, measured = block_errors(model, records, blocks, from_rest)
    return measured_rms(err, measured)


def scored_outputs(records: list[IORecord], n: int, blocks: list[Block] | None = None) -> torch.Tensor:
    """The measured outputs that a validation scores, pooled: every record after its first ``n`` samples (those the
    encoder reads; :func:`validation_rmse`), or with ``blocks`` every block's samples after them (:func:`block_errors`).

    Args:
        records: the validation records, or with ``blocks`` the training records the blocks index.
        n: the samples at the start of each record that are not scored (the encoder window; 0 from rest).
        blocks: held-out blocks, or None.

    Returns:
        (L, p) float64 on the CPU, L the scored samples of all the records or blocks (NaN where not measured).
    """
    if blocks is None:
        return torch.cat([r.y[n:].cpu().double() for r in records])
    return torch.cat([records[b.record].y[max(b.start, n):b.stop].cpu().double() for b in blocks])


def output_scales(measured: torch.Tensor, fallback: list[float] | None = None) -> list[float]:
    """s_k of the validation score (module docstring): the population std of each output over the scored samples
    where it was measured (NaN: missing, left out). For an output constant there up to rounding
    (:func:`ssmkit.sysid.metrics.undefined_scale`; one measured sample is such a case) that std gives no NRMSE:
    s_k is then ``fallback[k]``, the model's output scale σ_k (the std of the training samples, by which the loss
    normalises the output: unit-free as the other outputs' NRMSEs), or NaN without a fallback (the output is then
    left out of the mean score: :func:`validation_score`).

    Args:
        measured: (L, p) the scored measurements (:func:`scored_outputs`), NaN where not measured.
        fallback: p scales for the outputs whose std is undefined (``model.y_std``), or None (NaN there).

    Returns:
        p scales, in the outputs' units.

    Raises:
        ValueError: for an output not measured at any scored sample (no score can be computed for it), or a
            fallback that is not p positive finite numbers.
    """
    y = measured.double()
    p = y.shape[1]
    if fallback is not None:
        fallback = [float(f) for f in fallback]
        if len(fallback) != p or not all(math.isfinite(f) and f > 0 for f in fallback):
            raise ValueError(f"fallback must be None or {p} positive finite scales, one per output; got {fallback}")
    columns = [y] if not bool(torch.isnan(y).any()) else _measured_columns(
        y, "scored validation sample", "its validation RMSE has no sample; hold out a longer part (val_fraction, "
        "folds) or measure it")
    std = torch.cat([c.std(0, correction=0) for c in columns])  # (p,): one column (L, p) or p columns (T_k, 1)
    undefined = undefined_scale(std, torch.cat([c.mean(0) for c in columns]))
    return [(math.nan if fallback is None else fallback[k]) if bool(undefined[k]) else float(std[k])
            for k in range(p)]


def validation_score(rmse_per_output: list[float], scales: list[float]) -> tuple[list[float], float]:
    """The validation score of per-output RMSEs: NRMSE_k = RMSE_k / s_k and their mean over the outputs (what early
    stopping, the kept weights and the comparison of restarts minimise; module docstring). An output whose s_k is
    NaN (undefined, :func:`output_scales` without a fallback) has a NaN NRMSE and is left out of the mean, which is
    then over the others (NaN when no output has a scale); a NaN or inf RMSE (a diverged simulation) still makes the
    mean NaN or inf, so that it is never the best.

    Args:
        rmse_per_output: p RMSEs in the outputs' units.
        scales: the p scales s_k (:func:`output_scales`), NaN where undefined.

    Returns:
        ([NRMSE per output], their mean over the outputs with a scale).
    """
    if len(rmse_per_output) != len(scales):
        raise ValueError(f"rmse_per_output and scales must have one entry per output; got {len(rmse_per_output)} and "
                         f"{len(scales)}")
    per = [float(r) / s for r, s in zip(rmse_per_output, scales)]
    scored = [n for n, s in zip(per, scales) if not math.isnan(s)]
    diverged = [float(r) for r, s in zip(rmse_per_output, scales) if math.isnan(s) and not math.isfinite(float(r))]
    if diverged:  # NaN or inf
        return per, math.nan if any(math.isnan(r) for r in diverged) else math.inf
    return per, sum(scored) / len(scored) if scored else math.nan


def _check_blocks(blocks: list[Block], train: list[IORecord], n_enc: int) -> None:
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError(f"blocks must be a non-empty list of Block(record, start, stop), or None to hold out the tail "
                         f"of every record; got {blocks!r}")
    for b in blocks:
        if not isinstance(b, Block) or not 0 <= b.record < len(train):
            raise ValueError(f"blocks must be Block(record, start, stop) with record an index into the {len(train)} "
                             f"training records; got {b!r}")
        if not 0 <= b.start < b.stop <= len(train[b.record]) or b.stop - max(b.start, n_enc) < 1:
            raise ValueError(f"block {b!r} must satisfy 0 <= start < stop <= {len(train[b.record])} (the record's "
                             f"length) and hold a sample after the encoder's first {n_enc}")
    spans = sorted((b.record, b.start, b.stop, i) for i, b in enumerate(blocks))
    for (r0, _, stop0, i), (r1, start1, _, j) in zip(spans, spans[1:]):
        if r0 == r1 and start1 < stop0:  # a shared sample would be scored twice in the pooled RMSE
            raise ValueError(f"blocks must not overlap; {blocks[i]!r} and {blocks[j]!r} share samples")


def _block_windows(train: list[IORecord], blocks: list[Block], window: int, n_enc: int):
    """The training windows' admissible (record, offset) pairs and each record's output mask (1 outside blocks)."""
    masks, pairs = [], []
    for i, r in enumerate(train):
        mask = torch.ones(len(r), dtype=torch.bool, device="cpu")
        for b in blocks:
            if b.record == i:
                mask[b.start:b.stop] = False
        masks.append(mask)
        for o in range(len(r) - window - n_enc + 1):
            free = mask[o + n_enc: o + n_enc + window].any()
            if mask[o: o + n_enc].all() and free:  # the encoder reads no held-out output; something is scored
                pairs.append((i, o))
    if not pairs:
        raise ValueError(f"no training window of {window} + {n_enc} samples avoids the held-out blocks: lower window")
    return masks, pairs


def fit_simulation(model: DeepWiener, train: list[IORecord], val: list[IORecord] | None = None,
                   config: SimulationFit | None = None, log: bool = False,
                   blocks: list[Block] | None = None) -> dict[str, Any]:
    """Train ``model`` by simulation error (module docstring); returns the training history.

    Args:
        model: the deep Wiener model (its normalisation is set from the estimation records).
        train: estimation records.
        val: validation records, or None to hold out the tail of every estimation record.
        config: the options.
        log: print progress lines.
        blocks: held-out blocks of ``train`` to validate on instead of ``val`` or a tail (module docstring), a
            non-empty list of blocks that do not overlap; None: no blocks.

    Returns:
        {"train_loss": [...], "lr": [the unmarked group's rate after each step], "val_rmse": [(step, [RMSE per
        output, physical units])], "val_nrmse": [(step, [NRMSE per output])], "val_y_std": [s_k per output] (σ_k
        where the validation std is undefined: :func:`output_scales`; None without validation), "best_step",
        "best_val_nrmse" (the lowest score: the mean NRMSE over the outputs), "best_val_rmse_per_output" and
        "best_val_rmse" (their mean) at the best step, "seconds", "steps"}; the best values are inf before a finite
        score.

    Warns:
        RuntimeWarning: when validation ran and no validation scored a finite RMSE (the run diverged before the
        first one): the model then keeps its starting weights, best_step 0.
    """
    cfg = config or SimulationFit()
    _check_fit_options(cfg)
    if not isinstance(cfg.validate_from_rest, bool):
        raise ValueError(f"validate_from_rest must be a bool; got {cfg.validate_from_rest!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}; got {cfg.schedule!r}")
    if isinstance(cfg.min_steps, bool) or not isinstance(cfg.min_steps, int) or cfg.min_steps < 0:
        raise ValueError(f"min_steps must be an int >= 0; got {cfg.min_steps!r}")
    if cfg.average is not None and (isinstance(cfg.average, bool) or not isinstance(cfg.average, (int, float))
                                    or not 0 <= cfg.average < 1):
        raise ValueError(f"average must be None or a number in [0, 1); got {cfg.average!r}")
    levels = None if cfg.level_weight is None else _levels(cfg.level_weight[0], model.n_outputs)
    n_enc = model.encoder_window
    check_period(model, list(train) + list(val or []))
    if blocks is not None:
        if val is not None:
            raise ValueError("give either validation records (val) or held-out blocks, not both")
        _check_blocks(blocks, train, n_enc)
    if blocks is None:
        train, val = tail_validation(train, val, cfg.val_fraction, cfg.window, n_enc)
    for r in train:
        if len(r) < cfg.window + n_enc:
            raise ValueError(f"record {r.name!r} has {len(r)} samples, fewer than window + encoder_window = {cfg.window + n_enc}")
    if any(r.t is not None for r in list(train) + list(val or [])):
        _model_intervals(model, [])  # a model that cannot take intervals is refused here, before training
    taus = _model_intervals(model, train) if any(r.t is not None for r in train) else None
    masks, pairs = _block_windows(train, blocks, cfg.window, n_enc) if blocks else (None, None)
    if masks is None:
        set_normalisation(model, [r.u for r in train], [r.y for r in train])
    else:  # the held-out outputs do not enter the scaling either
        set_normalisation(model, [r.u for r in train], [r.y[m] for r, m in zip(train, masks)])
    dtype, device = model.u_mean.dtype, model.u_mean.device  # the records move to the model's device once
    us = [r.u.to(device=device, dtype=dtype) for r in train]
    ys = [r.y.to(device=device, dtype=dtype) for r in train]
    missing = any(r.n_missing for r in train)  # NaN outputs: the masked loss (module docstring)
    lengths = torch.tensor([len(r) - cfg.window - n_enc + 1 for r in train], dtype=torch.float64, device="cpu")
    g = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(_groups(model, cfg))
    scheduler = warmup_cosine(optimizer, 0, cfg.steps) if cfg.schedule == "cosine" else None
    weights = torch.ones(cfg.window, dtype=dtype, device=device)
    if cfg.decay is not None:
        weights = cfg.decay ** torch.arange(cfg.window, dtype=dtype, device=device)
        weights = weights / weights.mean()
    if n_enc == 0 and cfg.washout:
        weights[: cfg.washout] = 0
        weights = weights * cfg.window / weights.sum()
    if levels is not None:  # one level per output: (p,), inf for an output not weighed
        levels = torch.tensor(levels, dtype=dtype, device=device)
    history: dict[str, Any] = {"train_loss": [], "lr": [], "val_rmse": [], "val_nrmse": [], "val_y_std": None,
                               "best_step": 0, "best_val_nrmse": math.inf, "best_val_rmse": math.inf,
                               "best_val_rmse_per_output": [math.inf] * model.n_outputs}
    if val or blocks:  # the score's s_k: fixed by the validation data, the same for every step and every run on them
        n_val = 0 if cfg.validate_from_rest else n_enc
        held_y = scored_outputs(val if val else train, n_val, None if val else blocks)
        history["val_y_std"] = output_scales(held_y, fallback=model.y_std.tolist())  # σ_k where its std is undefined
    best_state = copy.deepcopy(model.state_dict())
    average = WeightAverage(model, cfg.average) if cfg.average is not None else None
    bad, start = 0, time.perf_counter()
    step = 0
    for step in range(1, cfg.steps + 1):
        if pairs is None:
            which = torch.multinomial(lengths, cfg.batch_size, replacement=True, generator=g)
            draws = torch.rand(cfg.batch_size, generator=g, dtype=torch.float64, device="cpu")
            offsets = (draws * lengths[which]).long()
            drawn = list(zip(which.tolist(), offsets.tolist()))
        else:
            drawn = [pairs[j] for j in torch.randint(len(pairs), (cfg.batch_size,), generator=g, device="cpu").tolist()]
        u_b = torch.stack([us[i][o: o + n_enc + cfg.window] for i, o in drawn])
        y_b = torch.stack([ys[i][o: o + n_enc + cfg.window] for i, o in drawn])
        state = None
        if n_enc:  # the encoder's samples' gaps too, where it reads them
            tau_e = None if taus is None else torch.stack([taus[i][o: o + n_enc] for i, o in drawn])
            state = estimate_state(model, u_b[:, :n_enc], y_b[:, :n_enc], tau_e)
        if taus is None:
            y_hat, _ = model(u_b[:, n_enc:], state, return_state=False, saturate=False)
        else:  # the gaps of the simulated samples, the first from the sample before them
            tau_b = torch.stack([taus[i][o + n_enc: o + n_enc + cfg.window] for i, o in drawn])
            y_hat, _ = model(u_b[:, n_enc:], state, return_state=False, saturate=False, intervals=tau_b)
        target = y_b[:, n_enc:]  # (B, window, p)
        if missing:  # filled where not measured, so that no NaN reaches the loss or its gradient
            seen = ~torch.isnan(target)
            target = torch.where(seen, target, torch.zeros_like(target))
        err = (model.censored_error(y_hat, target) if cfg.censor else y_hat - target) / model.y_std
        square = err ** 2
        if levels is not None:  # (B, window, p): w where the measured output is at or above its output's level
            square = square * torch.where(target >= levels, float(cfg.level_weight[1]), 1.0).to(dtype)
        if missing:  # the mean over the measured cells outside held-out blocks (module docstring)
            if masks is not None:
                held = torch.stack([masks[i][o + n_enc: o + n_enc + cfg.window] for i, o in drawn])
                seen = seen & held.to(device)[:, :, None]  # (B, window, p)
            m = seen.to(dtype)
            loss = (weights[None, :, None] * m * square).sum() / m.sum().clamp(min=1)
        elif masks is None:
            loss = (weights[None, :, None] * square).mean()
        else:  # held-out samples weigh 0; the mean is over the scored ones
            m = torch.stack([masks[i][o + n_enc: o + n_enc + cfg.window] for i, o in drawn])
            m = m.to(device=device, dtype=dtype)[:, :, None]  # (B, window, 1)
            loss = (weights[None, :, None] * m * square).sum() / (m.sum() * err.shape[-1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if average is not None:
            average.update(model)
        scored = model if average is None else average.module
        history["train_loss"].append(float(loss.detach()))
        history["lr"].append(optimizer.param_groups[0]["lr"])  # the rate of the next step
        if (val or blocks) and (step % cfg.val_every == 0 or step == cfg.steps):
            rest = cfg.validate_from_rest
            score_list = validation_rmse(scored, val, rest) if val else block_rmse(scored, train, blocks, rest)
            per_output, mean_score = validation_score(score_list, history["val_y_std"])
            history["val_rmse"].append((step, score_list))
            history["val_nrmse"].append((step, per_output))
            if log:
                print(f"step {step}: train loss {float(loss.detach()):.4g}, validation NRMSE {mean_score:.4g} (mean "
                      f"over outputs), RMSE {score_list}")
            if mean_score < history["best_val_nrmse"]:
                history["best_val_nrmse"], history["best_step"] = mean_score, step
                history["best_val_rmse_per_output"] = list(score_list)
                history["best_val_rmse"] = sum(score_list) / len(score_list)
                best_state = copy.deepcopy(scored.state_dict())
                bad = 0
            else:
                bad += 1
                if cfg.patience is not None and bad >= cfg.patience and step >= cfg.min_steps:
                    break
    if val or blocks:
        model.load_state_dict(best_state)
        if history["val_rmse"] and history["best_step"] == 0:  # no finite validation: diverged early
            warnings.warn(f"every validation of this run scored NaN or inf ({len(history['val_rmse'])} of them, the "
                          f"first at step {history['val_rmse'][0][0]}): the training diverged, and the model keeps "
                          "the weights it started with (best_step 0); lower lr or grad_clip", RuntimeWarning,
                          stacklevel=2)
    elif average is not None:
        model.load_state_dict(average.state_dict())
    history["steps"] = step
    history["seconds"] = time.perf_counter() - start
    return history
