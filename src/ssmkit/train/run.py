"""``fit``: train one model on given splits with Lightning, with checkpoints, exact resume and a results record.

    result = fit(model_config, TrainConfig(max_steps=2000), train=(inputs, targets), val=val_split,
                 test=test_split, out_dir="runs/listops-s4d", resume=True)

The run folder holds ``checkpoints/`` (written every ``checkpoint_every`` steps and at the end, each replacing the one
before: ``step<N>.ckpt`` and ``last.ckpt`` are the newest),
``logs/version_k/metrics.csv`` (Lightning's CSV log; a resumed run starts the next version), ``model.json`` and
``train.json`` (the configurations) and ``result.json``; with a validation split also ``checkpoints/best_val.ckpt``,
the weights of the best validation (:mod:`ssmkit.train.best`). The test split is scored at the final weights and at
the best validation's; the result's ``test_<metric>`` is the one ``TrainConfig.test_weights`` selects, both are
recorded as ``test_<metric>_final`` and ``test_<metric>_best_val``. ``metrics.csv`` logs each test under those
names (``test_loss_final``, ``test_accuracy_best_val``, ``test@1024_loss_final``, ...), one row per evaluation, so a
row says which weights and split it scored; the record's unsuffixed ``test_<metric>`` is a copy of one of them.
``resume=True`` continues from ``checkpoints/last.ckpt`` when it exists: the weights, optimiser, schedule, step
counter and RNG are restored and the batches continue where they stopped (:mod:`ssmkit.train.batches`), so the
final weights equal those of an uninterrupted run on the same machine, and so does the best validation (its
weights and step are part of every checkpoint), and early stopping (its count of validations without a lower loss is
too). A resume may change what decides when the run stops, what it validates, logs and writes, and where it runs:
``max_time``, ``early_stopping`` (the run stops where an uninterrupted run with the new patience would, or at once if
that step is behind it), ``val_every`` (the best validation is chosen among those that ran, before and after),
``checkpoint_every``, ``log_every``, ``eval_batch_size`` (validation sums in another order: the last bits may differ),
``test_weights``, ``accelerator``, ``strategy``, ``activation_checkpointing`` and ``micro_batches`` (the same step's
gradient) and ``devices`` with ``devices × batch_size`` kept (not bit for bit:
each process draws its own dropout masks). It refuses (:func:`check_same_run`, a ValueError naming each field with its
saved and given value) another model, ``lr``, ``weight_decay``, ``warmup_steps``, ``lr_floor`` or ``max_steps``
(restored by the optimiser and the schedule: new values would be ignored; ``max_steps`` may change when ``lr_floor``
is 1, a constant rate after the warm-up, e.g. to train longer), and another ``grad_clip``, ``precision``, ``seed`` or
``devices × batch_size`` (what every later step computes: the steps after the resume would be another run's), and
another ``init_from`` or ``freeze``. To change those, start a new run in another ``out_dir``, e.g. from this run's
weights: ``TrainConfig(init_from=<this run's folder>, lr=...)`` loads them into a fresh run with its own optimiser,
schedule and step count (:mod:`ssmkit.train.transfer`; a head of another size keeps its initialisation), and
``freeze="backbone"`` trains the head alone.

Data parallelism (``devices=N``, ``strategy="ddp"``) is Lightning's: on CPU it runs N processes over gloo; on a
cluster the same code runs under ``torchrun`` or SLURM (Lightning reads their environment variables).
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

import torch

from ssmkit.files import write_json
from ssmkit.models import SequenceModelConfig
from ssmkit.models.config import as_plain
from ssmkit.train.batches import unpack_batch
from ssmkit.train.checkpoint import save_atomic  # noqa: F401  (re-exported for users writing their own files)
from ssmkit.train.config import TrainConfig
from ssmkit.utils import length_mask, unit_gaps_after

_LIGHTNING_PRECISION = {"32": "32-true", "64": "64-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}


class _Throughput:
    """Wall time spent in training steps and samples seen (a Lightning callback; built lazily with Lightning). The
    totals are part of every checkpoint, so a resumed run counts the steps of its earlier sessions too (it reported
    the time of the steps after the resume alone, beside the run's total ``steps``)."""

    def __new__(cls):
        import lightning.pytorch as pl

        class Throughput(pl.Callback):
            def __init__(self) -> None:
                self.seconds = 0.0
                self.samples = 0
                self.tokens = 0
                self._start = 0.0

            def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
                self._start = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
                self.seconds += time.perf_counter() - self._start
                x, _, _, lengths = unpack_batch(batch)
                self.samples += int(x.shape[0]) * trainer.world_size
                self.tokens += _tokens(x, lengths, getattr(module.model, "pad_id", None)) * trainer.world_size

            def state_dict(self) -> dict[str, Any]:
                return {"seconds": self.seconds, "samples": self.samples, "tokens": self.tokens}

            def load_state_dict(self, state_dict: dict[str, Any]) -> None:
                self.seconds, self.samples, self.tokens = (state_dict[k] for k in ("seconds", "samples", "tokens"))

        return Throughput()


def _tokens(x: torch.Tensor, lengths: torch.Tensor | None = None, pad_id: int | None = None) -> int:
    """Time steps in a batch of inputs, padding left out: token ids (B, L) or pairs (B, 2, L) count every id but the
    model's ``pad_id``; features (B, L, H) or pairs (B, 2, L, H) count every step, not every feature; with ``lengths``
    ((B,) or a pair's (B, 2)) only the steps t < n of each sequence count (a padded batch's ``tokens_per_second``
    counted its padding, as much as 2x the tokens trained on at lengths spread over [L/2, L])."""
    if x.dim() <= 1:
        return int(x.shape[0]) if x.dim() == 1 else 1
    features = x.is_floating_point() and x.dim() >= 3
    L = x.shape[-2] if features else x.shape[-1]
    keep = torch.ones(x.shape[:-1] if features else x.shape, dtype=torch.bool, device=x.device)  # (..., L)
    if lengths is not None:
        keep &= length_mask(lengths.to(x.device), L)  # (..., L)
    if pad_id is not None and not x.is_floating_point():
        keep &= x != pad_id
    return int(keep.sum())


# the TrainConfig fields a resumed run takes from the checkpoint (the optimiser's groups and the schedule's state), not
# from the configuration given: a change to them would be silently ignored, so `fit` refuses it (max_steps may grow or
# shrink when lr_floor is 1: the rate is then constant after the warm-up, and max_steps only the budget)
RESTORED_FIELDS = ("lr", "weight_decay", "max_steps", "warmup_steps", "lr_floor")
# the TrainConfig fields that decide what every step computes although the checkpoint does not hold them: the gradient's
# clipping, the dtype the saved weights are loaded into and computed in, the batch order and a random transform's draws
# (from the seed); and the samples of a step, devices × batch_size (the devices may change with the product kept)
STEP_FIELDS = ("grad_clip", "precision", "seed")
# the run's origin and what its optimiser trains: the weights it started from (recorded, not read again: the
# checkpoint holds the weights) and the frozen parts (the optimiser's groups hold the others only)
TRANSFER_FIELDS = ("init_from", "freeze")
# what a resume may change: when the run stops, what it validates, records and writes, where it runs, and how a step's
# memory is spent (blocks recomputed in the backward, the batch in parts: the same step's gradient)
FREE_FIELDS = ("max_time", "early_stopping", "val_every", "checkpoint_every", "log_every", "eval_batch_size",
               "test_weights", "accelerator", "strategy", "activation_checkpointing", "micro_batches")


def check_same_run(saved: dict[str, Any], model: SequenceModelConfig, train_config: TrainConfig, path: str,
                   step: int | None = None) -> None:
    """Refuse to resume with a model, or a training configuration whose steps would differ, other than the saved run's.

    A resumed run restores the optimiser (each group's lr and weight decay, the SSM groups' included) and the schedule
    (its warm-up, ``max_steps`` and floor) from the checkpoint (:data:`RESTORED_FIELDS`), so new values would be ignored
    without a word (extending ``max_steps`` would train on at the saved schedule's final lr, 0 by default). The
    :data:`STEP_FIELDS` and the samples of a step (``devices × batch_size``) are not restored but decide what every
    later step computes: another seed gave another batch order from the resumed step on, another batch size other
    steps, another precision the saved weights rounded to float32 or widened to float64, all accepted before. Both are
    refused, and so are another ``init_from`` (the run's origin, which its records name) and ``freeze`` (the
    optimiser's groups hold the other parameters); ``max_steps`` may change when ``lr_floor`` is 1 (a constant rate
    after the warm-up: the longer run is the one the saved run would have been), to no fewer than the checkpoint's
    ``step``. The :data:`FREE_FIELDS` and ``devices`` (with ``devices × batch_size`` kept) may change.

    Args:
        saved: the checkpoint's ``hyper_parameters`` ({"model": ..., "train": ...} as plain dicts).
        model: the model configuration given to the resumed run.
        train_config: the training configuration given to it.
        path: the checkpoint, named in the error.
        step: the checkpoint's global step (None: not checked against ``max_steps``).
    """
    changes = []
    # a checkpoint written before configs kept JSON's containers holds the tuples it was given: compared as lists
    saved_model, given_model = as_plain(saved.get("model")), model.to_dict()
    if saved_model is not None and saved_model != given_model:
        changes += [f"model {k}: saved {saved_model.get(k)!r}, given {given_model.get(k)!r}"
                    for k in sorted(set(saved_model) | set(given_model)) if saved_model.get(k) != given_model.get(k)]
    saved_train, given_train = saved.get("train") or {}, train_config.to_dict()

    def changed(k: str) -> bool:
        return k in saved_train and saved_train[k] != given_train[k]

    # older checkpoints lack some fields: only those they hold are compared
    flat = saved_train.get("lr_floor") == 1 == given_train["lr_floor"]
    for k in RESTORED_FIELDS + STEP_FIELDS + TRANSFER_FIELDS:
        if k == "max_steps" and flat and changed(k) and (step is None or given_train[k] >= step):
            continue  # a constant rate after the warm-up: a longer (or shorter) budget trains the same steps
        if changed(k):
            at = f" (the run is at step {step})" if k == "max_steps" and flat and step is not None else ""
            changes.append(f"train {k}: saved {saved_train[k]!r}, given {given_train[k]!r}{at}")
    if "batch_size" in saved_train:
        saved_devices = saved_train.get("devices", 1)
        if saved_train["batch_size"] * saved_devices != given_train["batch_size"] * given_train["devices"]:
            changes += [f"train {k}: saved {saved_train.get(k, 1)!r}, given {given_train[k]!r}"
                        for k in ("batch_size", "devices") if saved_train.get(k, 1) != given_train[k]]
    if changes:
        raise ValueError(
            f"resume continues the run saved in {path} with its own model, optimiser and schedule, but the "
            f"configuration given differs ({'; '.join(changes)}): give the saved configuration (model.json, train.json "
            "in the run folder), or start a new run in another out_dir (with init_from set to this run's folder, "
            "from its weights: --init-from). A resume keeps the model, lr, weight_decay, "
            "warmup_steps, lr_floor, max_steps (unless lr_floor is 1), grad_clip, precision, seed, init_from, "
            f"freeze and batch_size × devices; it may change {', '.join(FREE_FIELDS)} and devices"
        )


def _say(line: str) -> None:
    """Print ``line`` to stderr from the first process only (each data-parallel process runs ``fit``)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        print(line, file=sys.stderr)


def _check_splits(splits: dict[str, Sequence[torch.Tensor] | None], transform: Callable | None,
                  model: SequenceModelConfig) -> None:
    """Refuse splits that are not all of one form ((inputs, targets), with intervals, with lengths, with both:
    :func:`ssmkit.train.batches.unpack_batch`), intervals for a model with a layer that takes none, and, without a
    ``transform`` (which may form the batches' intervals itself), intervals that are not (n, L) of their inputs,
    finite and > 0 (at the steps within the lengths, with lengths: :func:`_within_lengths`), and lengths that are not
    (n,) integers in [1, L] ((n, 2) for a pair model), naming the split before anything is trained.

    A split without intervals beside others with them was scored as regularly sampled without a word (probe of
    2026-12-06: a test split given as (x, y) took the training run's model through its regular path, test loss 3.73
    where its intervals gave 3.71), and bad intervals in the test split failed only after the whole run had trained.
    A split without lengths beside others with them would read its padding likewise.
    """
    from ssmkit.layers.registry import available, layer_class
    from ssmkit.ops.irregular import check_intervals
    from ssmkit.train.batches import unpack_batch
    from ssmkit.utils import check_lengths

    given = {name: split for name, split in splits.items() if split is not None}
    counts = {name: len(split) for name, split in given.items()}
    bad = {name: n for name, n in counts.items() if n not in (2, 3, 4)}
    if bad:
        raise ValueError(f"a split must be (inputs, targets) or (inputs, targets, intervals), each optionally with "
                         f"lengths last; got {bad} tensors")
    parts = {}
    for name, split in given.items():
        try:
            parts[name] = unpack_batch(tuple(split))
        except ValueError as error:
            raise ValueError(f"the {name} split: {error}") from None
    for k, what, effect in ((2, "intervals", "run as regularly sampled"), (3, "lengths", "read its padding")):
        having = sorted(name for name, p in parts.items() if p[k] is not None)
        lacking = sorted(name for name, p in parts.items() if p[k] is None)
        if having and lacking:
            form = "(inputs, targets, intervals)" if k == 2 else "(inputs, targets, lengths)"
            raise ValueError(f"the splits {having} carry {what} {form} but {lacking} do not: a split without them "
                             f"would {effect}; give every split its {what}, or none")
    if transform is None:  # (a transform may form a batch's intervals from what the split holds)
        _refuse_real_lengths(parts, model.pair)
    names = [model.layer] if isinstance(model.layer, str) else list(model.layer)
    refusing = sorted({n for n in names if n in available() and not layer_class(n).takes_intervals})
    if any(p[2] is not None for p in parts.values()) and refusing:
        takers = [n for n in available() if layer_class(n).takes_intervals]
        raise ValueError(f"the splits carry intervals, but the model's layers {refusing} take none (no "
                         f"irregular-sampling form); the layers that do: {takers}")
    if transform is not None:
        return
    for name, (x, _, tau, lengths) in parts.items():
        if lengths is not None:
            if not model.pair and lengths.dim() == 2 and tuple(lengths.shape) == tuple(x.shape[:2]):
                raise ValueError(f"the {name} split's third tensor is integer ({lengths.dtype}) and (n, L) = "
                                 f"{tuple(lengths.shape)}: read as lengths, which are (n,); if it holds intervals "
                                 "(whole sampling periods), give them as floats: intervals.double()")
            shape, steps = ((x.shape[0], 2), x.shape[2]) if model.pair else ((x.shape[0],), x.shape[1])
            check_lengths(lengths, shape, steps, lengths.device, name=f"the {name} split's lengths")
        if tau is not None:
            check_intervals(_within_lengths(tau, lengths, x), tuple(x.shape[:2]),
                            tau.device if isinstance(tau, torch.Tensor) else x.device, f"the {name} split's intervals")


def _refuse_real_lengths(parts: dict[str, tuple], pair: bool) -> None:
    """Refuse a split's intervals (a real third entry, :func:`ssmkit.train.batches.unpack_batch`) that have the shape
    of lengths, (n,), and any intervals of a pair model (which takes none), with a ValueError that says lengths are
    integers. Lengths given as floats, a list or a numpy array were read as intervals and refused as "intervals must
    be a real floating tensor of shape (n, L)", or, beside a layer without an irregular form, as intervals that layer
    does not take; a pair model's (n, 2) float lengths passed as intervals (n, L = 2) until its first training step.

    Args:
        parts: {split name: (x, y, intervals or None, lengths or None)}.
        pair: whether the model is a pair model.
    """
    for name, (x, _, tau, lengths) in parts.items():
        if tau is None:
            continue
        if hasattr(tau, "shape"):  # a tensor or a numpy array
            shape = tuple(tau.shape)
        else:
            shape = (len(tau),) if isinstance(tau, (list, tuple)) else ()
        like = (x.shape[0], 2) if pair else (x.shape[0],)
        if not pair and (lengths is not None or shape != like):
            continue  # intervals, checked later
        what = (f"{tau.dtype} tensor" if isinstance(tau, torch.Tensor)
                else f"{type(tau).__module__}.{type(tau).__name__}".removeprefix("builtins."))
        read = "(n, L), which a pair model (pair=True) takes none of" if pair else f"(n, L) = {tuple(x.shape[:2])}"
        hint = (f": lengths {like} are an integer tensor, e.g. torch.as_tensor(lengths, dtype=torch.int64)"
                if shape == like else "")
        raise ValueError(f"the {name} split's third tensor ({what} of shape {shape}) is read as intervals {read}"
                         + hint)


def _within_lengths(tau: object, lengths: torch.Tensor | None, x: torch.Tensor) -> object:
    """A split's intervals as the model reads them: with lengths (n,), 1 at the steps t >= lengths[b] (padding, which
    may hold anything, NaN included: ``SequenceModel.forward(..., lengths=)`` reads its gaps as 1), so that only the
    gaps within the lengths are checked; ``tau`` itself where it is not a real (n, L) tensor of x (the check names
    what is wrong). ``fit`` refused a NaN gap in the padding that the model takes.

    Args:
        tau: the split's intervals.
        lengths: its checked lengths, or None.
        x: its inputs (n, L, ...).
    """
    if (lengths is None or lengths.dim() != 1 or not isinstance(tau, torch.Tensor) or not tau.is_floating_point()
            or tuple(tau.shape) != tuple(x.shape[:2])):
        return tau
    return unit_gaps_after(tau, lengths)


def _check_precision(trainer: Any, precision: str) -> None:
    """Refuse a run whose precision Lightning replaced: on the CPU, ``"16-mixed"`` (float16 autocast, which the CPU
    lacks) became ``"bf16-mixed"`` with a warning only, and the run trained in bfloat16 while ``train.json`` and every
    checkpoint said ``16-mixed`` (a resume of it, or a rerun on a GPU, was then another run).

    Args:
        trainer: the built Lightning trainer.
        precision: the ``TrainConfig.precision`` asked for.
    """
    wanted = _LIGHTNING_PRECISION[precision]
    used = str(trainer.precision)
    if used != wanted:
        where = type(trainer.accelerator).__name__.removesuffix("Accelerator")
        raise ValueError(f"precision {precision!r} is not available on the {where} (Lightning would train in "
                         f"{used!r} instead); choose 'bf16-mixed', '32' or '64' on the CPU, or run '16-mixed' on a GPU "
                         "(--train.accelerator gpu)")


def _source_file(init_from: str | os.PathLike) -> str:
    """The file ``init_from`` names for a resumed run's records (which reads no source): the file a folder stands for
    while it is there, else the path as given (the source may be gone by then)."""
    from ssmkit.train.transfer import checkpoint_file

    try:
        return checkpoint_file(init_from)
    except FileNotFoundError:
        return os.fspath(init_from)


def fit(
    model: SequenceModelConfig,
    train_config: TrainConfig,
    train: Sequence[torch.Tensor],
    val: Sequence[torch.Tensor] | None,
    test: Sequence[torch.Tensor] | None,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    extra_callbacks: Sequence[Any] = (),
    labels: dict[str, Any] | None = None,
    transform: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None = None,
    extra_tests: dict[str, Sequence[torch.Tensor]] | None = None,
    records: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train``, validate on ``val``, evaluate on ``test`` (and ``extra_tests``) the final weights
    and those of the best validation.

    Args:
        model: the model configuration.
        train_config: optimiser, schedule, budget, precision, checkpoints (:class:`TrainConfig`).
        train: (inputs, targets) of the training split: inputs (n, L, d_input) or token ids (n, L); targets as
            the head needs (:mod:`ssmkit.train.objective`). An irregularly sampled split is (inputs, targets,
            intervals), intervals (n, L) > 0 in nominal sampling periods, for models whose layers take them (S5, S4D,
            DSS, S4, LRU, EMA, DLR, Mamba, Mamba-2, RG-LRU; ``SequenceModel.forward(..., intervals=)``); every split
            then carries its intervals (a ValueError names the splits that lack them, a layer of the model that
            takes none, and, without a ``transform``, intervals that are not (n, L) of their inputs, finite and > 0
            within the lengths (the padding's gaps may hold anything), before anything is trained). Right-padded
            sequences of different lengths (real inputs too) add their lengths last: (inputs, targets, lengths) or
            (inputs, targets, intervals, lengths), lengths (n,) integers in [1, L] ((n, 2) for a pair model), told
            from intervals by their integer dtype (real lengths, a list or a numpy array are refused, naming them);
            the model skips the padding (``SequenceModel.forward(..., lengths=)``) and per-step losses and metrics
            score the steps within the lengths only (:mod:`ssmkit.train.objective`); every split then carries its
            lengths.
        val: the validation split, or None.
        test: the test split, or None.
        out_dir: the run folder.
        resume: continue from ``out_dir/checkpoints/last.ckpt`` if it exists (else start fresh); the model and the
            fields that decide the steps must equal the saved run's (ValueError otherwise; :func:`check_same_run`).
        progress: show Lightning's progress bar.
        extra_callbacks: more Lightning callbacks (e.g. to stop a run in tests).
        labels: entries to put first in the result record (task, model, ...).
        transform: applied to every batch of every split (e.g. stored integers to scaled floats), or None.
        extra_tests: more evaluation splits by name, each (inputs, targets) (or with intervals) scored like ``test``
            (e.g. ``test@1024``: induction heads at a longer length than trained); their metrics are recorded as
            ``<name>_loss`` and ``<name>_<metric>``.
        records: more records of the run's configuration by name, each written to ``out_dir/<name>.json`` with
            ``model.json`` and ``train.json`` (after the resume check, so never over a run this call refuses; e.g.
            the task and its options, ``task.json``).

    Returns:
        the result record (also written to ``out_dir/result.json``): the last validation's metrics and its optimizer
        step ``val_step`` (validation runs every ``val_every`` steps: not always at the final weights); the test metrics
        (and those of ``extra_tests``) at the weights ``train_config.test_weights`` selects, and each also as
        ``<name>_final`` and ``<name>_best_val``; ``best_val_step``, ``best_val_epoch`` (epochs of training data
        seen), ``best_val_loss`` and ``best_val_<metric>`` of the best validation (with a validation split);
        ``test_weights``; parameters, steps, training seconds, samples/s and tokens/s (over every step, those of a
        resumed run's earlier sessions included); ``machine`` (architecture, CPUs, torch version and threads, which a
        bit-exact rerun must match); with ``init_from``, ``init_from`` (the checkpoint file read, absolute; the line
        :meth:`ssmkit.train.transfer.LoadReport.summary` says what it loaded goes to stderr), and with ``freeze``,
        ``trainable_parameters``.

    Raises:
        ValueError: ``test_weights`` "best_val" or ``early_stopping`` set without a validation split (nothing to
            select or monitor); a ``precision`` the accelerator lacks (``"16-mixed"`` on the CPU), before training.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from ssmkit.train.batches import eval_batches
    from ssmkit.train.best import BestValidation, Patience
    from ssmkit.train.checkpoint import AtomicCheckpointIO, PeriodicCheckpoints, load_checkpoint
    from ssmkit.train.module import SequenceLightningModule, TensorDataModule
    from ssmkit.train.transfer import freeze_parameters, load_weights

    cfg = train_config
    if cfg.test_weights == "best_val" and val is None:
        raise ValueError("test_weights 'best_val' selects the test at the best validation, but no validation split "
                         "was given: give val, or use test_weights 'final'")
    if cfg.early_stopping is not None and val is None:  # nothing to monitor: the run went on to max_steps silently
        raise ValueError(f"early_stopping={cfg.early_stopping} stops on the validation loss, but no validation split "
                         "was given: give val, or set early_stopping None")
    _check_splits({"train": train, "val": val, "test": test, **(extra_tests or {})}, transform, model)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no hardware and tip banners: results speak
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    last = os.path.join(ckpt_dir, "last.ckpt")
    resume_from = last if (resume and os.path.isfile(last)) else None
    if resume_from is None and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        if not resume:
            raise ValueError(f"{ckpt_dir} already holds checkpoints: pass resume=True (--resume) to continue that run, or use another out_dir")
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from)
        saved, step = checkpoint.get("hyper_parameters", {}), checkpoint.get("global_step")
        del checkpoint  # Lightning reads it again; its weights need not stay in memory meanwhile
        check_same_run(saved, model, cfg, resume_from, step=step)
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    module = SequenceLightningModule(model, cfg)
    source_read = None  # the file init_from named, as read
    if cfg.init_from is not None and resume_from is None:  # a resumed run's checkpoint holds its weights
        loaded = load_weights(module.model, cfg.init_from)
        source_read = loaded.source
        _say(loaded.summary())
    if cfg.freeze is not None:  # before Lightning builds the optimiser: param_groups leaves the frozen parameters out
        freeze_parameters(module.model, cfg.frozen_parts())
    # the run's records once it can start: a source that cannot be loaded or a part that cannot be frozen leaves no
    # model.json/train.json claiming a run in out_dir
    write_json(os.path.join(out_dir, "model.json"), model.to_dict())
    write_json(os.path.join(out_dir, "train.json"), cfg.to_dict())
    for name, record in (records or {}).items():
        write_json(os.path.join(out_dir, f"{name}.json"), record)
    module.checkpoint_dir = ckpt_dir
    data = TensorDataModule(train, val, test, cfg.batch_size, cfg.eval_batch_size or cfg.batch_size, cfg.seed, transform)
    every = cfg.checkpoint_every or cfg.max_steps
    checkpoints = PeriodicCheckpoints(ckpt_dir, every)
    throughput = _Throughput()
    val_interval = cfg.val_every or cfg.max_steps
    best = BestValidation(model.head, val_interval) if val is not None else None
    if best is not None:
        # the patience counts without early_stopping too: a resume that sets it stops where a run with it would have
        best.patience = Patience(cfg.early_stopping)
    callbacks = [checkpoints, throughput, *([best, best.patience] if best is not None else []), *extra_callbacks]
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=_LIGHTNING_PRECISION[cfg.precision],
        max_steps=cfg.max_steps,
        max_time=datetime.timedelta(seconds=cfg.max_time) if cfg.max_time is not None else None,
        val_check_interval=val_interval if val is not None else None,
        check_val_every_n_epoch=None,
        **({} if val is not None else {"limit_val_batches": 0}),
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.grad_clip,
        log_every_n_steps=cfg.log_every,
        logger=CSVLogger(out_dir, name="logs"),  # logs/version_k: a resumed run starts a new file
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=out_dir,
        use_distributed_sampler=False,
    )
    _check_precision(trainer, cfg.precision)
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    if os.path.isfile(last) and load_checkpoint(last)["global_step"] != trainer.global_step or not os.path.isfile(last):
        trainer.save_checkpoint(last)  # the final weights (the periodic checkpoints stop at a multiple of the period)
    # the test rows' step in metrics.csv is the step the run ended at; a resumed run that had already finished ran no
    # training loop, and Lightning's count stayed at the checkpoint's (written before its step was counted): one less
    trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
    result: dict[str, Any] = {
        **(labels or {}),
        "steps": int(trainer.global_step),
        "parameters": module.model.num_parameters(),
        "train_seconds": throughput.seconds,
        "samples_per_second": throughput.samples / throughput.seconds if throughput.seconds else None,
        "tokens_per_second": throughput.tokens / throughput.seconds if throughput.seconds else None,
        "resumed_from": resume_from,
        **({"init_from": os.path.abspath(source_read or _source_file(cfg.init_from))} if cfg.init_from is not None
           else {}),
        **({"trainable_parameters": module.model.num_parameters(trainable_only=True)} if cfg.freeze is not None
           else {}),
        # what bit-exact reruns need to match (README, "Reproducible runs"): PyTorch's GEMMs and sums round differently
        # on other thread counts, and the native kernels are compiled for this CPU
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
    }
    result.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")})
    if best is not None:
        best.catch_up(trainer, module)  # a resumed run that had already finished restores a pre-validation state
        # the last validation's metrics also when this session ran none (a resumed run that ended before its next
        # validation, or had already finished: its record lacked val_loss and val_<metric>)
        result.update(best.last)

    def tests(suffix: str) -> dict[str, float]:
        # logged as <split>_<metric><suffix> (metrics.csv's columns, the record's names); returned without the suffix
        scores: dict[str, float] = {}
        try:
            if test is not None:
                module.test_names = ("test", suffix)
                metrics = trainer.test(module, datamodule=data, verbose=False)
                scores.update({k.removesuffix(suffix): float(v) for k, v in metrics[0].items()} if metrics else {})
            for name, tensors in (extra_tests or {}).items():
                batches = eval_batches(tensors, data.eval_batch_size, trainer.global_rank, trainer.world_size,
                                       transform)
                module.test_names = (name, suffix)
                metrics = trainer.test(module, dataloaders=batches, verbose=False)
                scores.update({k.removesuffix(suffix): float(v) for k, v in metrics[0].items()} if metrics else {})
        finally:
            module.test_names = ("test", "")
        return scores

    final = tests("_final")
    at_best: dict[str, float] = {}
    if best is not None and best.weights is not None:
        result.update({"best_val_step": best.step,
                       "best_val_epoch": best.step * cfg.batch_size * trainer.world_size / int(train[0].shape[0]),
                       "best_val_loss": best.loss, f"best_{best.key}": best.score})
        final_weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(best.weights)
        at_best = tests("_best_val")
        module.load_state_dict(final_weights)
        if trainer.is_global_zero:
            # with Lightning's version key, so that SequenceLightningModule.load_from_checkpoint reads it too (it
            # raised KeyError: 'pytorch-lightning_version' while migrating the file)
            save_atomic({"state_dict": best.weights, "global_step": best.step, "monitor": best.key,
                         "score": best.score, "hyper_parameters": dict(module.hparams),
                         "pytorch-lightning_version": pl.__version__},
                        os.path.join(ckpt_dir, "best_val.ckpt"))
    chosen = at_best if cfg.test_weights == "best_val" else final
    result.update(chosen)
    result.update({f"{k}_final": v for k, v in final.items()})
    result.update({f"{k}_best_val": v for k, v in at_best.items()})
    result["test_weights"] = cfg.test_weights
    if trainer.is_global_zero:
        write_json(os.path.join(out_dir, "result.json"), result, strict=True)  # a diverged run's NaN: null
    if cfg.test_weights == "best_val" and best is not None and best.weights is None and final:
        raise RuntimeError(f"test_weights 'best_val', but no validation ran (val_every {cfg.val_every}, the run "
                           f"stopped at step {trainer.global_step}); result.json holds the final weights' tests")
    return result
