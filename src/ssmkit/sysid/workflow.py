"""The identification workflow on a benchmark: build a deep Wiener model from a recipe, train it (by simulation error,
or by one-step-ahead prediction error for comparison) and score its simulation on the official test records.

    bench = load_benchmark("cascaded_tanks", folder)
    model, history = identify(bench, "s4d", recipe_for(bench.name))
    scores = evaluate(model, bench)          # per test record, one value per output: RMSE (bench.units), fit %, ...

Scoring follows the benchmark's protocol: the first ``n_init`` samples of every test record are not scored. A model
with an initial-state encoder reads its state from the first ``encoder_window`` samples (≤ n_init: only data the
protocol leaves unscored); a predictor reads the measured outputs there and then runs free (:func:`free_run`).

Missing outputs (NaN in ``IORecord.y``; :mod:`ssmkit.sysid.fit`): training, validation and the test scores use the
measured samples only (``sysid_metrics(..., skip_missing=True)``; each record's ``"samples"`` says how many were
scored per output), the simulation runs over every sample with the known inputs. Prediction mode (its input is the
measured y_{t-1}) and ``first_layer_init="data"`` (its subspace and ARX estimates read every output sample) refuse
such records.

Periodic steady state (opt-in, ``evaluate(..., steady_state=k)``; not the official protocol): a test record that is a
whole number of periods of a periodic input (``IORecord.period``, e.g. Bouc-Wen's multisine test, one period of the
*steady-state* response) can also be scored after priming: the model is simulated from rest on k periods of the same
input followed by the record, and only the record's part is scored (:func:`periodic_steady_state`). No test output is
used, so the score measures the model's steady-state error without the transient that a start from rest adds (which
even the true system has: on Bouc-Wen it scores 4.62e-5 m from rest, 7.1e-7 m once its first 200 samples are left out).
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable

import torch

from ssmkit.layers.registry import layer_class
from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.fit import (Block, SimulationFit, _in_step, _is_int, _model_intervals, block_errors, fit_simulation,
                              fold_blocks, measured_rms, output_scales, scored_outputs, simulate_record, split_tail,
                              tail_validation, validation_rmse, validation_score)
from ssmkit.sysid.init import init_from_data
from ssmkit.sysid.metrics import sysid_metrics
from ssmkit.sysid.prediction import free_run, predict_one_step, prediction_record
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.wiener import ACTIVATIONS, DeepWiener

MODES = ("simulation", "prediction")
FIRST_LAYER_INITS = ("layer", "data")
COMBINES = ("best", "average")
VALIDATIONS = ("tail", "kfold")


def build_model(bench: SysidBenchmark, layer: str, recipe: Recipe, mode: str = "simulation",
                dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> DeepWiener:
    """The deep Wiener model of ``recipe`` for ``bench``'s inputs and outputs (a predictor takes [u_t, y_{t-1}]).

    Args:
        bench: the benchmark (its m, p and Ts).
        layer: the layer name: an LTI layer, or a selective one (``mamba``, ``rglru``: the model is then built with
            ``time_varying=True``, its blocks no longer Wiener systems).
        recipe: sizes, timescale and encoder window.
        mode: ``"simulation"`` or ``"prediction"``.
        dtype: of the parameters (None: float32).
        device: of the parameters (None: the CPU); training moves the records there, simulations come back on the CPU.

    Returns:
        the untrained model (with ``recipe.train_encoder`` = n > 0: with an encoder of n samples, which
        :func:`train_run` drops after training), its signals named after the benchmark's (:func:`signal_names`,
        :meth:`DeepWiener.name_signals`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    params = inspect.signature(layer_class(layer).__init__).parameters
    options: dict[str, Any] = {}
    if "d_state" in params:
        options["d_state"] = recipe.d_state
    if recipe.ssm_lr is not None and "lr" in params:
        options["lr"] = recipe.ssm_lr
    timescale = recipe.timescale if "dt_min" in params else None
    n_in = bench.n_inputs + (bench.n_outputs if mode == "prediction" else 0)
    encoder = recipe.encoder_window if mode == "simulation" else 0
    if encoder > bench.n_init and bench.n_init > 0:
        raise ValueError(f"encoder_window {encoder} exceeds the benchmark's init window n_init = {bench.n_init}: the "
                         "encoder would read scored samples")
    if encoder and bench.n_init == 0:
        encoder = 0  # no unscored samples to read: simulate from rest
    n_train = recipe.train_encoder
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 0:
        raise ValueError(f"train_encoder must be an int >= 0; got {n_train!r}")
    if n_train and (mode != "simulation" or encoder):
        raise ValueError("train_encoder starts the training windows of a simulation model that has no encoder of its "
                         f"own (mode 'simulation', no init window to read); got mode {mode!r}, "
                         f"encoder_window {encoder}")
    encoder = encoder or n_train  # a training-only encoder: train_run drops it after training
    if not isinstance(recipe.encoder_times, bool):
        raise ValueError(f"encoder_times must be a bool; got {recipe.encoder_times!r}")
    if recipe.encoder_times and not encoder:
        raise ValueError("encoder_times gives the initial-state encoder its window's sample times, and this model has "
                         f"no encoder (mode {mode!r}, encoder_window {recipe.encoder_window}, benchmark n_init "
                         f"{bench.n_init}, train_encoder {n_train})")
    if not isinstance(recipe.encoder_mask, bool):
        raise ValueError(f"encoder_mask must be a bool; got {recipe.encoder_mask!r}")
    if recipe.encoder_mask and not encoder:
        raise ValueError("encoder_mask tells the initial-state encoder which window outputs were measured, and this "
                         f"model has no encoder (mode {mode!r}, encoder_window {recipe.encoder_window}, benchmark "
                         f"n_init {bench.n_init}, train_encoder {n_train})")
    time_varying = not layer_class(layer).capabilities.state_space  # a selective layer, named by the caller
    sigmas = None
    if recipe.first_activation is not None:  # the first block's σ, the others the recipe's activation
        if not isinstance(recipe.first_activation, str) or recipe.first_activation not in ACTIVATIONS:
            raise ValueError(f"first_activation must be None or one of {[a for a in ACTIVATIONS if a]}; got "
                             f"{recipe.first_activation!r}")
        sigmas = (recipe.first_activation,) + (recipe.activation,) * (recipe.n_layers - 1)
    model = DeepWiener(n_in, bench.n_outputs, d_model=recipe.d_model, n_layers=recipe.n_layers, layer=layer,
                       layer_options=options, activation=recipe.activation, dt=bench.dt, timescale=timescale,
                       encoder_window=encoder, time_varying=time_varying, output_range=recipe.output_range,
                       block_activations=sigmas, encoder_times=recipe.encoder_times,
                       encoder_mask=recipe.encoder_mask, device=device, dtype=dtype)
    return model.name_signals(*signal_names(model, bench))


def fit_config(recipe: Recipe, seed: int = 0) -> SimulationFit:
    """The :class:`SimulationFit` options of a recipe.

    Args:
        recipe: the recipe.
        seed: the window draws' seed.
    """
    return SimulationFit(window=recipe.window, batch_size=recipe.batch_size, steps=recipe.steps, lr=recipe.lr,
                         weight_decay=recipe.weight_decay, ssm_weight_decay=recipe.ssm_weight_decay,
                         decay=recipe.decay, washout=recipe.washout, val_fraction=recipe.val_fraction,
                         val_every=recipe.val_every, patience=recipe.patience, seed=seed, schedule=recipe.schedule,
                         min_steps=recipe.min_steps, average=recipe.average, level_weight=recipe.level_weight,
                         censor=recipe.censor, validate_from_rest=bool(recipe.train_encoder))


def held_out(records: list[IORecord], recipe: Recipe) -> tuple[list[IORecord], list[IORecord] | None]:
    """The records to train on and the validation records of ``recipe``: with ``val_records`` = k > 0, the first
    records whole and the last ``val_fraction`` of each of the last k (a record never serves both); with k = 0,
    every record and None (:func:`fit_simulation` then holds out the tail of each).

    Args:
        records: the estimation records.
        recipe: its ``val_records``, ``val_fraction``, ``window`` and ``encoder_window``.

    Returns:
        (training records, validation records or None).
    """
    k = recipe.val_records
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"val_records must be an int >= 0; got {k!r}")
    if k == 0:
        return list(records), None
    if k >= len(records):
        raise ValueError(f"val_records = {k} leaves no record to train on: there are {len(records)} estimation records")
    if not 0 < recipe.val_fraction < 1:
        raise ValueError(f"val_records > 0 needs val_fraction in (0, 1) (the validated tail); got {recipe.val_fraction!r}")
    _, val = split_tail(records[-k:], recipe.val_fraction, 1, recipe.encoder_window + 2)
    return list(records[:-k]), val


def identify(bench: SysidBenchmark, layer: str, recipe: Recipe, mode: str = "simulation", seed: int = 0,
             dtype: torch.dtype | None = None, log: bool = False,
             device: torch.device | str | None = None) -> tuple[DeepWiener, dict[str, Any]]:
    """Build and train a deep Wiener model on ``bench``'s estimation records (validation: their tail, or with
    ``recipe.val_records`` = k > 0 the tail of the last k records, held out whole from training). With
    ``recipe.first_layer_init = "data"`` the first layer's eigenvalues (the first ``recipe.data_init_layers``
    layers') start from a subspace estimate of the training
    records (:func:`ssmkit.sysid.init.init_from_data`; under tail validation, of their parts before the held-out
    tail; under k-fold validation, of their parts outside the run's held-out block, :func:`outside_blocks`).

    With ``recipe.restarts`` = k > 1 the model is trained k times, from the seeds ``seed·k``, …, ``seed·k + k − 1``
    (disjoint for different ``seed``), and combined by ``recipe.combine``: ``"best"`` returns the run with the lowest
    best validation score (the NRMSE averaged over the outputs, :mod:`ssmkit.sysid.fit`; model selection on the
    estimation data only), ``"average"`` a :class:`~ssmkit.sysid.ensemble.WienerEnsemble` of the k runs (each at its
    best validation weights), whose validation score is that of the averaged simulation; both at k times the training
    cost. With ``recipe.validation = "kfold"`` run i holds out block i mod K of K = ``recipe.folds`` blocks of every
    estimation record instead of the tail (:func:`ssmkit.sysid.fit.fold_blocks`); the result is a WienerEnsemble of
    every run (``"average"``) or of the run with the lowest score on each block (``"best"``), and the validation RMSE
    and score are the kept runs' out-of-fold RMSE and NRMSE pooled over the K blocks (each run scored on the block it
    never saw; a cross-validation estimate of one run's error over the whole estimation data, not the ensemble's).
    Irregularly sampled records (``IORecord.t``) train and validate with their intervals (:mod:`ssmkit.sysid.fit`), by
    simulation error, the first layer from its own initialisation (prediction mode and ``first_layer_init="data"``
    are refused with a ValueError); restarts, ``combine="average"`` and k-fold validation work as on regular records
    (a WienerEnsemble hands the intervals to every member; a held-out block is simulated with its record's gaps).

    Args:
        bench: the benchmark.
        layer: the LTI layer name.
        recipe: model and training options.
        mode: ``"simulation"`` (simulation error on windows) or ``"prediction"`` (one-step-ahead error).
        seed: of the initialisation and the window draws.
        dtype: of the parameters.
        log: print progress.
        device: where the model trains (``"cuda"`` on a GPU; None: the CPU); the records stay on the CPU and each
            training record is copied there once.

    Returns:
        the trained model (best validation weights; a WienerEnsemble with ``combine="average"``) and the training
        history (of the chosen run; with restarts also ``"restarts"``: [{"seed", "best_val_nrmse", "best_val_rmse",
        "best_val_rmse_per_output", "best_step", "steps", "seconds"} per run], ``"seed"``: the chosen run's seed and
        ``"seconds"``: the time of all runs; with ``combine="average"`` the history holds ``"combine"``,
        ``"restarts"``, ``"seconds"``, ``"mode"``, ``"best_val_nrmse"``, ``"best_val_rmse_per_output"`` and
        ``"best_val_rmse"`` (the ensemble's: mean NRMSE over the outputs, RMSE per output in the data's units, their
        mean), ``"steps"`` (summed over the runs), ``"best_step"`` (per run) and ``"seed"`` None).
    """
    _check_recipe_counts(recipe)
    k = recipe.restarts
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"restarts must be an int >= 1; got {k!r}")
    if recipe.combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}; got {recipe.combine!r}")
    if recipe.first_layer_init not in FIRST_LAYER_INITS:
        raise ValueError(f"first_layer_init must be one of {FIRST_LAYER_INITS}; got {recipe.first_layer_init!r}")
    if recipe.first_layer_init == "data" and mode != "simulation":
        raise ValueError("first_layer_init='data' estimates poles from u -> y records: simulation mode only")
    layers = recipe.data_init_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= recipe.n_layers:
        raise ValueError(f"data_init_layers must be an int in [1, n_layers = {recipe.n_layers}]; got {layers!r}")
    folds = _check_validation(recipe)
    kfold = folds is not None
    _check_irregular(bench, recipe, mode)
    _check_missing(bench, recipe, mode)
    if kfold and mode != "simulation":
        raise ValueError("validation='kfold' holds out blocks of outputs, which a predictor reads as inputs "
                         "(y_{t-1}): use validation='tail' in prediction mode")
    train = bench.train if mode == "simulation" else [prediction_record(r) for r in bench.train]
    train, val = held_out(train, recipe) if not kfold else (list(train), None)
    if k > 1 and not kfold and not val and recipe.val_fraction == 0 and recipe.combine == "best":
        raise ValueError("restarts > 1 chooses a run by its validation score: set val_fraction > 0")
    best: tuple[DeepWiener, dict[str, Any]] | None = None
    runs, members = [], []
    for run_seed in range(seed * k, seed * k + k):
        fold = (run_seed - seed * k) % folds if kfold else None
        model, history = train_run(bench, layer, recipe, train, val, run_seed, mode, dtype, fold, log, device)
        runs.append({"seed": run_seed, "best_val_nrmse": history["best_val_nrmse"],
                     "best_val_rmse": history["best_val_rmse"], "best_step": history["best_step"],
                     "steps": history["steps"], "seconds": history["seconds"]})
        if "best_val_rmse_per_output" in history:  # fit_simulation's always: what a report converts to each
            runs[-1]["best_val_rmse_per_output"] = list(history["best_val_rmse_per_output"])  # output's unit
        members.append(model)
        if best is None or history["best_val_nrmse"] < best[1]["best_val_nrmse"]:  # the score, not a unit's RMSE
            best = (model, history)
    if kfold:
        return _fold_ensemble(members, runs, train, recipe, mode, folds)
    if recipe.combine == "average":
        return _ensemble(members, runs, train, val, recipe, mode)
    model, history = best
    if k > 1:
        history["restarts"] = runs
        history["seed"] = min(runs, key=lambda r: r["best_val_nrmse"])["seed"]
        history["seconds"] = sum(r["seconds"] for r in runs)
    return model, history


def train_run(bench: SysidBenchmark, layer: str, recipe: Recipe, train: list[IORecord], val: list[IORecord] | None,
              run_seed: int, mode: str = "simulation", dtype: torch.dtype | None = None, fold: int | None = None,
              log: bool = False, device: torch.device | str | None = None) -> tuple[DeepWiener, dict[str, Any]]:
    """One training run of :func:`identify` (it runs ``restarts`` of these), from ``torch.manual_seed(run_seed)``.

    Args:
        bench: the benchmark (the model's inputs, outputs and Ts).
        layer: the layer name.
        recipe: model and training options.
        train: the training records (:func:`held_out`'s first part; whole records with k-fold validation).
        val: the validation records (None: the tails, or the fold's blocks).
        run_seed: of the initialisation and the window draws.
        mode: ``"simulation"`` or ``"prediction"`` (``train`` then holds prediction records).
        dtype: of the parameters.
        fold: with ``recipe.validation = "kfold"``, the block i of K = ``recipe.folds`` (None: ``restarts``) held
            out (:func:`ssmkit.sysid.fit.fold_blocks`); None otherwise.
        log: print progress.
        device: of the model (None: the CPU; :func:`identify`).

    Returns:
        the model at its best validation weights and its history (with ``"mode"``, and ``"fold"`` when given).
    """
    torch.manual_seed(run_seed)
    model = build_model(bench, layer, recipe, mode, dtype, device)
    blocks = None if fold is None else fold_blocks([len(r) for r in train], recipe.folds or recipe.restarts, fold)
    if recipe.first_layer_init == "data":
        # from the training records only (never the validation or test records, nor a held-out block's outputs);
        # with no validation records given, fit_simulation holds out the tail of every record: leave it out here too
        # (the same split), or the poles would be estimated from the outputs that early stopping validates on
        if blocks is not None:
            records = outside_blocks(train, blocks)
        else:
            records = tail_validation(train, val, recipe.val_fraction, recipe.window, model.encoder_window)[0]
        init_from_data(model, records, layers=recipe.data_init_layers)
    config = fit_config(recipe, run_seed)
    history = fit_simulation(model, train, val, config=config, log=log, blocks=blocks)
    if recipe.train_encoder:
        model.drop_encoder()  # it started the training windows; the model simulates from rest
    history["mode"] = mode
    if fold is not None:
        history["fold"] = fold
    return model, history


def _check_irregular(bench: SysidBenchmark, recipe: Recipe, mode: str) -> None:
    """Raise ``ValueError`` for what cannot use irregularly sampled records (``IORecord.t``) yet: prediction mode (its
    shifted records, :func:`~ssmkit.sysid.prediction.prediction_record`, carry no sample times) and a data-driven
    first layer (its subspace and ARX estimates assume one Ts). Ensembles (``combine="average"``, k-fold) pass: a
    :class:`~ssmkit.sysid.ensemble.WienerEnsemble` takes intervals. Regularly sampled benchmarks pass."""
    irregular = [r.name for r in list(bench.train) + list(bench.test) if r.t is not None]
    if not irregular:
        return
    if mode != "simulation":
        raise ValueError(f"records {irregular} are irregularly sampled (IORecord.t): train them by simulation error "
                         f"(mode 'simulation'); mode {mode!r} trains on shifted records that carry no sample times")
    if recipe.first_layer_init == "data":
        raise ValueError(f"records {irregular} are irregularly sampled (IORecord.t): first_layer_init='data' estimates "
                         "poles by subspace or ARX methods that assume one sampling time; use first_layer_init='layer'")


def _check_missing(bench: SysidBenchmark, recipe: Recipe, mode: str) -> None:
    """Raise ``ValueError`` for what cannot use records with missing outputs (NaN in ``IORecord.y``): prediction mode
    (a predictor's input is the measured y_{t-1}) and a data-driven first layer (its subspace and ARX estimates read
    every output sample). Simulation training and scoring take them (module docstring)."""
    gaps = [r.name for r in list(bench.train) + list(bench.test) if r.n_missing]
    if not gaps:
        return
    if mode != "simulation":
        raise ValueError(f"records {gaps} have missing outputs (NaN in IORecord.y): train them by simulation error "
                         f"(mode 'simulation'); mode {mode!r} reads the measured y_{{t-1}} as an input at every step")
    if recipe.first_layer_init == "data":
        raise ValueError(f"records {gaps} have missing outputs (NaN in IORecord.y): first_layer_init='data' estimates "
                         "poles by subspace or ARX methods that read every output sample; use first_layer_init='layer'")


def _check_recipe_counts(recipe: Recipe) -> None:
    """Raise ``ValueError`` for a count of ``recipe`` that is not an int in its range, before anything compares it
    (a string ``n_layers`` raised TypeError; ``train_records`` and ``folds`` were not read where unused)."""
    least = {"d_model": 1, "n_layers": 1, "d_state": 1, "train_records": 1, "encoder_window": 0, "val_records": 0,
             "train_encoder": 0}
    for name, low in least.items():
        if not _is_int(getattr(recipe, name), low):
            raise ValueError(f"{name} must be an int >= {low}; got {getattr(recipe, name)!r}")
    if recipe.folds is not None and not _is_int(recipe.folds, 2):
        raise ValueError(f"folds must be None or an int K >= 2; got {recipe.folds!r}")


def _check_validation(recipe: Recipe) -> int | None:
    """K, the number of blocks, when ``recipe`` validates by k-fold blocks, else None (ValueError for a combination
    that cannot)."""
    if recipe.validation not in VALIDATIONS:
        raise ValueError(f"validation must be one of {VALIDATIONS}; got {recipe.validation!r}")
    if recipe.validation == "tail":
        return None
    k = recipe.folds if recipe.folds is not None else recipe.restarts
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"validation='kfold' needs folds = K >= 2 blocks (folds None: restarts); got {k!r}")
    if recipe.restarts % k:
        raise ValueError(f"validation='kfold' holds out block i mod K in run i: restarts ({recipe.restarts}) must be "
                         f"a multiple of folds ({k})")
    if recipe.val_records:
        raise ValueError("validation='kfold' holds out blocks of every estimation record: set val_records = 0")
    return k


def outside_blocks(records: list[IORecord], blocks: list[Block]) -> list[IORecord]:
    """The parts of ``records`` outside the held-out ``blocks``, as separate records (what a data-driven
    initialisation may read under k-fold validation: no held-out output, no concatenation across a block).

    Args:
        records: the training records the blocks index.
        blocks: the held-out blocks (:func:`ssmkit.sysid.fit.fold_blocks`).

    Returns:
        the non-empty pieces, in record order, each named ``name[start:stop]``.
    """
    pieces = []
    for i, r in enumerate(records):
        cuts = sorted((b.start, b.stop) for b in blocks if b.record == i)
        start = 0
        for lo, hi in cuts + [(len(r), len(r))]:
            if lo > start:
                pieces.append(r.part(start, lo, f"{r.name}[{start}:{lo}]"))
            start = max(start, hi)
    return pieces


def out_of_fold_rmse(members: list[DeepWiener], records: list[IORecord], folds: list[int], k: int) -> list[float]:
    """The k-fold validation RMSE per output: member j simulated on ``records`` and scored on block ``folds[j]`` of k
    (:func:`ssmkit.sysid.fit.fold_blocks`, the block it was not trained on), the errors pooled over the members, over
    the measured samples (:func:`ssmkit.sysid.fit.measured_rms`).

    Args:
        members: the runs.
        records: the estimation records the folds split.
        folds: the block each member held out.
        k: the number of blocks.

    Returns:
        one RMSE per output channel.
    """
    return measured_rms(*_out_of_fold_errors(members, records, folds, k))


def _out_of_fold_errors(members: list[DeepWiener], records: list[IORecord], folds: list[int],
                        k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(errors (L, p), measured outputs (L, p)) of :func:`out_of_fold_rmse`, pooled over the members, float64."""
    lengths = [len(r) for r in records]
    pairs = [block_errors(m, records, fold_blocks(lengths, k, f)) for m, f in zip(members, folds)]
    return torch.cat([e for e, _ in pairs]).double(), torch.cat([y for _, y in pairs]).double()


def _validation_entries(rmse_per_output: list[float], measured: torch.Tensor, fallback: list[float]) -> dict[str, Any]:
    """The validation entries of an ensemble's history: its score (mean NRMSE over the outputs, s_k from the scored
    measurements, ``fallback`` (the members' output scale σ_k) where an output is constant there, as each run's own
    validation: :func:`ssmkit.sysid.fit.output_scales`), its RMSE per output and their mean (data's units)."""
    _, score = validation_score(rmse_per_output, output_scales(measured, fallback))
    return {"best_val_nrmse": score, "best_val_rmse": sum(rmse_per_output) / len(rmse_per_output),
            "best_val_rmse_per_output": list(rmse_per_output)}


def _fold_ensemble(members: list[DeepWiener], runs: list[dict[str, Any]], train: list[IORecord], recipe: Recipe,
                   mode: str, k: int) -> tuple[WienerEnsemble, dict[str, Any]]:
    """The ensemble of k-fold runs (every run, or the best on each block) and its out-of-fold validation score."""
    folds = [i % k for i in range(len(members))]
    keep = list(range(len(members)))
    if recipe.combine == "best":  # runs on one block are scored on the same samples, hence the same s_k
        keep = [min((i for i in keep if folds[i] == f), key=lambda i: runs[i]["best_val_nrmse"]) for f in range(k)]
    errors, measured = _out_of_fold_errors([members[i] for i in keep], train, [folds[i] for i in keep], k)
    scores = _validation_entries(measured_rms(errors, measured), measured, members[keep[0]].y_std.tolist())
    for i, run in enumerate(runs):
        run["fold"], run["kept"] = folds[i], i in keep
    history = {"combine": recipe.combine, "validation": "kfold", "folds": k, "mode": mode, "restarts": runs,
               "seed": None, **scores, "best_step": [runs[i]["best_step"] for i in keep],
               "steps": sum(r["steps"] for r in runs), "seconds": sum(r["seconds"] for r in runs)}
    return WienerEnsemble([members[i] for i in keep]), history


def _ensemble(members: list[DeepWiener], runs: list[dict[str, Any]], train: list[IORecord],
              val: list[IORecord] | None, recipe: Recipe, mode: str) -> tuple[WienerEnsemble, dict[str, Any]]:
    """The ensemble of the trained runs and its history, validated on the records the runs validated on."""
    model = WienerEnsemble(members)
    val = tail_validation(train, val, recipe.val_fraction, recipe.window, model.encoder_window)[1]  # as the runs had
    if val:
        scores = _validation_entries(validation_rmse(model, val), scored_outputs(val, model.encoder_window),
                                     members[0].y_std.tolist())
    else:
        scores = {"best_val_nrmse": math.inf, "best_val_rmse": math.inf,
                  "best_val_rmse_per_output": [math.inf] * model.n_outputs}
    history = {"combine": "average", "mode": mode, "restarts": runs, "seed": None, **scores,
               "best_step": [r["best_step"] for r in runs],
               "steps": sum(r["steps"] for r in runs), "seconds": sum(r["seconds"] for r in runs)}
    return model, history


@torch.no_grad()
def simulate_test(model: DeepWiener, bench: SysidBenchmark, mode: str = "simulation") -> list[torch.Tensor]:
    """The model's simulated output on every test record (a predictor runs free after the init window).

    Args:
        model: the trained model.
        bench: the benchmark.
        mode: how the model was trained.

    Returns:
        one (L, p) simulation per test record.

    Raises:
        ValueError: when a simulation model's inputs and outputs (``n_inputs``, ``n_outputs``) are not the benchmark's
            m and p; when the model's initial-state encoder reads more samples than the benchmark leaves unscored
            (``encoder_window > n_init``): its simulation would hold measured outputs at scored samples; for a
            predictor on irregularly sampled test records (``IORecord.t``: its free run takes no sample times).
    """
    irregular = [r.name for r in bench.test if r.t is not None]
    if irregular and mode != "simulation":
        raise ValueError(f"test records {irregular} are irregularly sampled (IORecord.t): a predictor's free run "
                         f"(mode {mode!r}) takes no sample times; evaluate a simulation model (mode 'simulation')")
    m, p = bench.n_inputs, bench.n_outputs
    sizes = (getattr(model, "n_inputs", None), getattr(model, "n_outputs", None))  # a DeepWiener's, an ensemble's
    if mode == "simulation" and None not in sizes and sizes != (m, p):
        # else an error about shapes: the forward's "u must be (B, L, 2)", or the metrics' "y_pred and y_true must
        # have one shape ... (73728, 1) and (73728, 3)" after the whole simulation, naming neither the model nor the data
        raise ValueError(f"the model takes {model.n_inputs} input(s) and returns {model.n_outputs} output(s); "
                         f"{bench.name!r} has m = {m} input(s) {list(bench.inputs)} and p = {p} output(s) "
                         f"{list(bench.outputs)}: evaluate a model identified on it")
    window = getattr(model, "encoder_window", 0)
    if mode == "simulation" and window > bench.n_init:
        raise ValueError(f"the model's encoder_window {window} exceeds the benchmark's init window n_init = "
                         f"{bench.n_init}: its simulation copies the measured outputs of the first {window} samples, "
                         f"so samples {bench.n_init}..{window - 1} would be scored against themselves; build the model "
                         f"with encoder_window <= {bench.n_init}")
    if mode == "simulation":
        return [simulate_record(model, r)[0] for r in bench.test]
    return [free_run(model, r, max(bench.n_init, 1)) for r in bench.test]


def periodic_steady_state(simulate: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor,
                          period: int | None = None, prime: int = 1) -> torch.Tensor:
    """The periodic steady-state response to a record of a periodic input: simulate from rest on ``prime`` periods of
    the same input followed by the record, keep the record's part. For a stable (fading-memory) system the start's
    transient has decayed by |λ|^(prime·P) there, so this approximates the response of a system that has run on the
    periodic input forever, the way a multisine test output is measured. Uses no measured output.

    Args:
        simulate: from rest, (L', m) inputs -> (L', p) outputs.
        u: (L, m) a whole number L / P of periods of the input (each input repeating to 1e-6 of its own largest
            |u|; a ValueError otherwise).
        period: P, the samples per period (None: L, the record is one period).
        prime: k >= 1 periods simulated before the record.

    Returns:
        (L, p) the simulated output over the record after ``prime`` periods.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 2 or u.shape[0] < 1:
        found = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be an (L, m) tensor with L >= 1; got {found}")
    n = u.shape[0]
    p = n if period is None else period
    if isinstance(p, bool) or not isinstance(p, int) or p < 1 or n % p:
        raise ValueError(f"period must be None or an int P >= 1 dividing the record's length {n} (a whole number of "
                         f"periods); got {period!r}")
    if isinstance(prime, bool) or not isinstance(prime, int) or prime < 1:
        raise ValueError(f"prime must be an int >= 1 (periods simulated before the scored record); got {prime!r}")
    if n > p:  # several periods: they must repeat, each input relative to its own size (the channels' units differ:
        # against the largest channel's, an input of 1e-3 beside one of 1e3 could change by all of itself unseen)
        gap = (u[p:] - u[:-p]).abs().amax(0)  # (m,)
        size = u.abs().amax(0).clamp(min=1e-300)
        if bool((gap > 1e-6 * size).any()):
            c = int(torch.argmax(gap / size))
            raise ValueError(f"u is not periodic with period {p}: input {c}'s samples {p} apart differ by up to "
                             f"{float(gap[c]):.3g} (its largest |u| is {float(size[c]):.3g})")
    y = simulate(torch.cat([u[:p]] * prime + [u]))
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != n + prime * p:
        raise ValueError(f"simulate must return an (L', p) tensor as long as its input ({n + prime * p}); got "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    return y[prime * p:]


@torch.no_grad()
def simulate_periodic(model: DeepWiener, record: IORecord, prime: int = 1) -> torch.Tensor:
    """A model's periodic steady state on a periodic record (:func:`periodic_steady_state`; from rest, the encoder
    is not used: it would read measured outputs). A record whose Ts is not the model's ``dt`` runs at its real times,
    with constant intervals Ts / dt, as :func:`~ssmkit.sysid.fit.simulate_record` runs it (the official score), and
    is refused by a model whose layers take no intervals.

    Args:
        model: the model (simulation mode).
        record: a record with ``period`` set.
        prime: periods simulated before the record.

    Returns:
        (L, p) the simulated output.
    """
    if record.period is None:
        raise ValueError(f"record {record.name!r} has no period: the periodic steady state needs IORecord.period")
    to = {"device": model.u_mean.device, "dtype": model.u_mean.dtype}
    # None at the model's period; else Ts / dt per sample (the record is regular: one constant gap throughout)
    gap = None if _in_step(model, record) else float(_model_intervals(model, [record], record)[0][0])

    def simulate(u: torch.Tensor) -> torch.Tensor:
        if gap is None:
            return model(u.to(**to)[None], return_state=False)[0][0].cpu()
        tau = torch.full((1, u.shape[0]), gap, **to)
        return model(u.to(**to)[None], return_state=False, intervals=tau)[0][0].cpu()

    return periodic_steady_state(simulate, record.u, record.period, prime)


def _scores(y_sim: torch.Tensor, r: IORecord, bench: SysidBenchmark) -> dict[str, Any]:
    scores = sysid_metrics(y_sim, r.y, n_init=bench.n_init, skip_missing=True)  # over the measured samples
    for key in ("rmse", "mae"):
        scores[key] = bench.in_units(scores[key])  # output k × its own scale
    return scores


@torch.no_grad()
def evaluate(model: DeepWiener, bench: SysidBenchmark, mode: str = "simulation",
             steady_state: int | None = None) -> dict[str, Any]:
    """Score the simulation on the test records, in the benchmark's unit, after its init window.

    Args:
        model: the trained model.
        bench: the benchmark.
        mode: how the model was trained (a predictor is also scored on one-step-ahead predictions).
        steady_state: k >= 1 also scores every periodic test record (``IORecord.period``) in periodic steady state
            after k primed periods (module docstring; not the official protocol); None: the official score only.

    Returns:
        {"records": [{name, rmse, fit, ..., samples, and with ``steady_state`` on a periodic record
        "steady_state": {"prime": k, rmse, fit, ...}} per test record], "simulations": [(L, p) tensors]}; rmse and
        mae hold one value per output, output k in ``bench.units[k]`` (data × ``bench.scales[k]``), scored over the
        samples after the init window where the output was measured (``samples``: how many, per output; module
        docstring).
    """
    if steady_state is not None and (isinstance(steady_state, bool) or not isinstance(steady_state, int) or steady_state < 1):
        raise ValueError(f"steady_state must be None or an int k >= 1 (periods primed); got {steady_state!r}")
    if steady_state is not None and mode != "simulation":
        raise ValueError(f"steady_state scores simulation models (from rest, no measured outputs); mode is {mode!r}")
    sims = simulate_test(model, bench, mode)
    records = []
    for r, y_sim in zip(bench.test, sims):
        entry: dict[str, Any] = {"name": r.name, **_scores(y_sim, r, bench)}
        if mode == "prediction":
            one = predict_one_step(model, r)
            one_step = sysid_metrics(one, r.y, n_init=max(bench.n_init, 1), names=("rmse",))["rmse"]
            entry["one_step_rmse"] = bench.in_units(one_step)
        if steady_state is not None and r.period is not None:
            y_steady = simulate_periodic(model, r, steady_state)
            entry["steady_state"] = {"prime": steady_state, **_scores(y_steady, r, bench)}
        records.append(entry)
    return {"records": records, "simulations": sims}


def signal_names(model: DeepWiener | WienerEnsemble,
                 bench: SysidBenchmark | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names of a model's inputs and outputs on ``bench``: ``bench.inputs`` and ``bench.outputs`` for a simulation
    model (m inputs), and a predictor's (m + p inputs, [u_t, y_{t-1}]) inputs followed by ``"<output> (previous
    sample)"`` per output. Without ``bench``, the names the model carries (``model.signals``: set by
    :func:`build_model` and :meth:`DeepWiener.name_signals`, saved in its checkpoint).

    Args:
        model: a model of ``bench`` (its ``n_inputs`` and ``n_outputs``).
        bench: the benchmark it was identified on, or None for the model's own names.

    Returns:
        (input names, output names).
    """
    if bench is None:
        signals = getattr(model, "signals", None)
        if signals is None:
            raise ValueError("the model's signals are not named: pass the benchmark it was identified on, or name them "
                             "(model.name_signals(inputs, outputs); build_model and identify name them after the "
                             "benchmark, and its checkpoint keeps them)")
        return signals["inputs"], signals["outputs"]
    m, p = bench.n_inputs, bench.n_outputs
    n_in, n_out = model.n_inputs, model.n_outputs
    if n_out != p or n_in not in (m, m + p):
        raise ValueError(f"the model takes {n_in} inputs and returns {n_out} outputs; a model of {bench.name!r} takes "
                         f"m = {m} (simulation) or m + p = {m + p} (prediction) and returns p = {p}")
    inputs = bench.inputs + (tuple(f"{o} (previous sample)" for o in bench.outputs) if n_in == m + p else ())
    return inputs, bench.outputs


def to_control(model: DeepWiener | WienerEnsemble, bench: SysidBenchmark | None = None, u0=None,
               name: str | None = None, continuous: bool = False):
    """A model identified on ``bench`` as python-control systems whose input and output signals carry the benchmark's
    names (:func:`signal_names`; ``control.interconnect`` wires signals by name), dt = Ts = ``bench.dt``. Without
    ``bench``, the model's own names (``model.signals``: a model from :func:`build_model` or :func:`identify`, or one
    loaded from its checkpoint, has them) and dt = ``model.dt``. Needs python-control.

    - ``u0`` None: the whole model, nonlinearities included, as one discrete ``control.NonlinearIOSystem``
      (:meth:`ssmkit.analysis.NonlinearSystem.to_control`) with n states x[0] .. x[n-1]; its zero state (the
      model's rest state) is in general no equilibrium: start ``control.input_output_response`` at an operating
      point from ``X0`` = its equilibrium x* (``NonlinearSystem(model).operating_point(u0)``).
    - ``u0`` given: the small-signal model at the equilibrium under each constant input u0
      (:meth:`ssmkit.analysis.NonlinearSystem.operating_point`), one ``control.StateSpace`` per point
      (:meth:`ssmkit.analysis.StateSpace.to_control`): its signals, named as the plant's, are the deviations
      δu = u − u0 and δy = y − y*(u0) (``operating_point`` gives x* and y*).

    Units: the records' (``IORecord.u`` and ``.y``): the model normalises inside, so the exported systems take and
    return physical values (Cascaded Tanks: volts in and out). ``bench.units[k]`` is the unit of output k times
    ``bench.scales[k]`` (Wiener-Hammerstein's and Silverbox's outputs are in V, their RMSEs reported in mV).

    Closing a loop: the model's output reads the same sample's input (y[k] = h(x[k], u[k]), the linearisation's
    D ≠ 0), so with a controller that has direct feedthrough too (P, PI, PID) ``control.interconnect`` of the
    nonlinear system meets an algebraic loop and raises "algebraic loop detected"; a controller that computes during
    the sample (u[k] from the errors up to k − 1: strictly proper, D = 0) closes it. ``control.feedback`` of the
    linearisations solves the loop as a linear equation. A model with ``output_range`` clips its output: at an
    equilibrium beyond a limit the linearisation's C and D are 0 (the sensor reads the limit).

    (``model.state_space()`` exports each block's LTI part alone, H internal channels in and out: no benchmark signal
    names apply there; scipy's ``dlti`` carries no names.)

    Continuous time (``continuous=True``): the same exports of the ODE whose sampling the model is
    (:class:`ssmkit.analysis.nonlinear.ContinuousWiener`: each block's continuous system, ``StateSpace.to_continuous``
    with ``hold="sample"``, between the static nonlinearities and skips), in seconds, dt = 0: a continuous
    ``control.NonlinearIOSystem`` (``u0`` None), or its linearisations at the equilibria under u0 (one continuous
    ``control.StateSpace`` per point; the same equilibria and DC gains as the discrete model's). Holding each input
    u_k over (t_{k−1}, t_k] and reading y at t_k gives the model's outputs exactly for a model of one block and
    within O(Ts) for stacked blocks (where the discrete model holds each block's input over the interval). Needs LTI
    blocks (no ``time_varying`` layer) whose systems convert (no eigenvalue 0 or on the negative real axis).

    Args:
        model: a DeepWiener or WienerEnsemble identified on ``bench`` (its ``dt`` must be ``bench.dt``).
        bench: the benchmark (its ``inputs`` and ``outputs`` name the signals), or None for the model's own names.
        u0: None, or the constant inputs of the operating points, (m,) for one point or (P, m), in the data's units.
        name: the nonlinear system's name (python-control's default when None); only with ``u0`` None.
        continuous: False (default) for the discrete-time systems at dt = Ts, True for the continuous-time ones.

    Returns:
        a ``control.NonlinearIOSystem`` (``u0`` None), or a list of P ``control.StateSpace``; dt = Ts, or 0 with
        ``continuous``.

    Raises:
        ValueError: when the model's sampling time is not the benchmark's Ts (a model built for other data, or
            without ``dt``: the exported systems would run at the model's dt under the benchmark's names), or when a
            signal name holds a ``.`` (python-control reads ``sys.signal`` in ``interconnect``); with ``continuous``,
            for a time-varying block or one whose system does not convert (naming the block).
    """
    from ssmkit.analysis.nonlinear import ContinuousWiener, NonlinearSystem

    if not isinstance(continuous, bool):
        raise ValueError(f"continuous must be a bool; got {continuous!r}")
    inputs, outputs = signal_names(model, bench)
    own = getattr(model, "dt", None)
    if bench is not None and (not isinstance(own, numbers.Real) or isinstance(own, bool)
                              or not abs(own - bench.dt) <= 1e-9 * bench.dt):
        raise ValueError(f"the model samples every dt = {own!r} s but {bench.name!r} every Ts = {bench.dt!r} s: "
                         f"export a model identified on this benchmark (build_model sets dt = Ts); a model trained at "
                         f"its own dt (on other records, or with sample times) is a model at that dt: export it "
                         f"without the benchmark, to_control(model); only for a model left at a wrong dt that ran "
                         f"these records sample by sample, set model.dt = bench.dt first")
    dotted = [s for s in inputs + outputs if "." in s]
    if dotted:
        rename = ("dataclasses.replace(bench, input_names=..., output_names=...)" if bench is not None
                  else "model.name_signals(inputs, outputs)")
        who = repr(bench.name) if bench is not None else "the model"
        raise ValueError(f"python-control signal names cannot hold '.' (interconnect reads 'system.signal'); "
                         f"{who} names {dotted}: rename them ({rename})")
    unnamed = "name names the nonlinear system (u0 None); the linearisations at u0 are not named"
    if continuous:
        flow = ContinuousWiener(model)
        if u0 is None:
            return flow.to_control(name, inputs=list(inputs), outputs=list(outputs))
        if name is not None:
            raise ValueError(unnamed)
        return flow.operating_point(u0)[2].to_control(inputs=list(inputs), outputs=list(outputs))
    system = NonlinearSystem(model, dt=own if bench is None else bench.dt)
    if u0 is None:
        return system.to_control(name, inputs=list(inputs), outputs=list(outputs))
    if name is not None:
        raise ValueError(unnamed)
    return system.operating_point(u0)[2].to_control(inputs=list(inputs), outputs=list(outputs))
