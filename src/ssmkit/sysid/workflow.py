"""The identification workflow on a benchmark: build a deep Wiener model from a recipe, train it (by simulation error,
or by one-step-ahead prediction error for comparison) and score its simulation on the official test records.

    bench = load_benchmark("cascaded_tanks", folder)
    model, history = identify(bench, "s4d", recipe_for(bench.name))
    scores = evaluate(model, bench)          # per test record and pooled: RMSE (bench.unit), fit %, ...

Scoring follows the benchmark's protocol: the first ``n_init`` samples of every test record are not scored. A model
with an initial-state encoder reads its state from the first ``encoder_window`` samples (≤ n_init: only data the
protocol leaves unscored); a predictor reads the measured outputs there and then runs free (:func:`free_run`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ssmkit.layers.registry import layer_class
from ssmkit.sysid.fit import SimulationFit, fit_simulation, simulate_record, split_tail
from ssmkit.sysid.metrics import sysid_metrics
from ssmkit.sysid.prediction import free_run, predict_one_step, prediction_record
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.wiener import DeepWiener

MODES = ("simulation", "prediction")


def build_model(bench: SysidBenchmark, layer: str, recipe: Recipe, mode: str = "simulation",
                dtype: torch.dtype | None = None) -> DeepWiener:
    """The deep Wiener model of ``recipe`` for ``bench``'s inputs and outputs (a predictor takes [u_t, y_{t-1}]).

    Args:
        bench: the benchmark (its m, p and Ts).
        layer: the LTI layer name.
        recipe: sizes, timescale and encoder window.
        mode: ``"simulation"`` or ``"prediction"``.
        dtype: of the parameters (None: float32).

    Returns:
        the untrained model.
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
    return DeepWiener(n_in, bench.n_outputs, d_model=recipe.d_model, n_layers=recipe.n_layers, layer=layer,
                      layer_options=options, activation=recipe.activation, dt=bench.dt, timescale=timescale,
                      encoder_window=encoder, dtype=dtype)


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
                         min_steps=recipe.min_steps, average=recipe.average)


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
             dtype: torch.dtype | None = None, log: bool = False) -> tuple[DeepWiener, dict[str, Any]]:
    """Build and train a deep Wiener model on ``bench``'s estimation records (validation: their tail, or with
    ``recipe.val_records`` = k > 0 the tail of the last k records, held out whole from training).

    With ``recipe.restarts`` = k > 1 the model is trained k times, from the seeds ``seed·k``, …, ``seed·k + k − 1``
    (disjoint for different ``seed``), and the run with the lowest best validation RMSE is returned: model
    selection on the estimation data only, at k times the cost.

    Args:
        bench: the benchmark.
        layer: the LTI layer name.
        recipe: model and training options.
        mode: ``"simulation"`` (simulation error on windows) or ``"prediction"`` (one-step-ahead error).
        seed: of the initialisation and the window draws.
        dtype: of the parameters.
        log: print progress.

    Returns:
        the trained model (best validation weights) and the training history (of the chosen run; with restarts
        also ``"restarts"``: [{"seed", "best_val_rmse", "best_step", "steps", "seconds"} per run], ``"seed"``: the
        chosen run's seed and ``"seconds"``: the time of all runs).
    """
    k = recipe.restarts
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"restarts must be an int >= 1; got {k!r}")
    train = bench.train if mode == "simulation" else [prediction_record(r) for r in bench.train]
    train, val = held_out(train, recipe)
    if k > 1 and not val and recipe.val_fraction == 0:
        raise ValueError("restarts > 1 chooses a run by its validation RMSE: set val_fraction > 0")
    best: tuple[DeepWiener, dict[str, Any]] | None = None
    runs = []
    for run_seed in range(seed * k, seed * k + k):
        torch.manual_seed(run_seed)
        model = build_model(bench, layer, recipe, mode, dtype)
        history = fit_simulation(model, train, val, config=fit_config(recipe, run_seed), log=log)
        history["mode"] = mode
        runs.append({"seed": run_seed, "best_val_rmse": history["best_val_rmse"], "best_step": history["best_step"],
                     "steps": history["steps"], "seconds": history["seconds"]})
        if best is None or history["best_val_rmse"] < best[1]["best_val_rmse"]:
            best = (model, history)
    model, history = best
    if k > 1:
        history["restarts"] = runs
        history["seed"] = min(runs, key=lambda r: r["best_val_rmse"])["seed"]
        history["seconds"] = sum(r["seconds"] for r in runs)
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
    """
    if mode == "simulation":
        return [simulate_record(model, r)[0] for r in bench.test]
    return [free_run(model, r, max(bench.n_init, 1)) for r in bench.test]


@torch.no_grad()
def evaluate(model: DeepWiener, bench: SysidBenchmark, mode: str = "simulation") -> dict[str, Any]:
    """Score the simulation on the test records, in the benchmark's unit, after its init window.

    Args:
        model: the trained model.
        bench: the benchmark.
        mode: how the model was trained (a predictor is also scored on one-step-ahead predictions).

    Returns:
        {"records": [{name, rmse, fit, ...} per test record], "simulations": [(L, p) tensors]}; rmse and mae are in
        ``bench.unit`` (data × ``bench.scale``).
    """
    sims = simulate_test(model, bench, mode)
    records = []
    for r, y_sim in zip(bench.test, sims):
        scores = sysid_metrics(y_sim, r.y, n_init=bench.n_init)
        for key in ("rmse", "mae"):
            scores[key] = [v * bench.scale for v in scores[key]]
        entry: dict[str, Any] = {"name": r.name, **scores}
        if mode == "prediction":
            one = predict_one_step(model, r)
            entry["one_step_rmse"] = [v * bench.scale for v in sysid_metrics(one, r.y, n_init=max(bench.n_init, 1), names=("rmse",))["rmse"]]
        records.append(entry)
    return {"records": records, "simulations": sims}
