"""The ``ssmkit sysid`` command: identify a benchmark, or your own data, with a deep Wiener model and write the report.

    ssmkit sysid --benchmark cascaded_tanks --model s4d --data-folder DATA/cascaded_tanks [--steps 2000] [--out DIR]
    ssmkit sysid --benchmark bouc_wen --model s4d --data-folder DATA/bouc_wen --mode prediction
    ssmkit sysid --benchmark f16 --model s4d --data-folder DATA/f16gvt --device cuda
    ssmkit sysid --data run1.csv --inputs u1,u2 --outputs y --dt 0.01 [--test-data run2.csv | --test-fraction 0.2]
    ssmkit sysid --data log.csv --inputs valve --outputs level --time t --unit m --model s4d --out runs/tank
    ssmkit sysid --data log.csv --inputs valve --outputs level --time t --irregular   # a logger that drops samples
    ssmkit sysid --data log.csv --inputs valve --outputs level --dt 0.5 --missing-outputs   # gaps in the level column

Exactly one of ``--benchmark`` (a named benchmark) and ``--data`` (one or more CSV files with a header row, read by
:func:`ssmkit.sysid.userdata.from_csv`: the ``--inputs`` and ``--outputs`` columns, comma-separated, sampled every
``--dt`` seconds or at the stamps of the ``--time`` column) is given. Your own data are tested on ``--test-data`` files,
or else on the last ``--test-fraction`` of each file (default 0.2), after an init window of ``--n-init`` samples that
the initial-state encoder reads (default: 50, at most a tenth of the shortest test record); they train by the generic
recipe :func:`ssmkit.sysid.recipes.recipe_for_data`, and the report has no published rows. A ``--time`` column must
be uniform unless ``--irregular`` is given: then its stamps need only increase strictly, the records keep them, Ts is
``--dt`` (the nominal period, e.g. the logger's) or else the median gap, and the model simulates each block's
continuous-time system at the real sample times (``from_csv(..., irregular=True)``; a ``--model`` whose layer takes
intervals: s4d, s5, dss, ...). With ``--missing-outputs`` an empty, NaN or ``NA`` cell of an output column (or
another marker of :data:`ssmkit.sysid.userdata.MISSING_MARKERS`, or one absent from a row that ends early) is a missing
measurement (``from_csv(..., missing_outputs=True)``): the model is simulated over every sample with the known inputs,
trained and scored where the outputs were measured (results.json's ``samples``: how many, per test record
and output).

A test record that is one or more periods of a periodic input (Bouc-Wen's multisine) is scored twice: from rest (the
official protocol, the headline) and in periodic steady state after ``--steady-state-periods`` periods of the same
input (default 1; 0 turns it off; :func:`ssmkit.sysid.workflow.periodic_steady_state`).

Every option left unset takes the benchmark's recipe value (:mod:`ssmkit.sysid.recipes`); ``--recipe.*`` sets any
recipe field (``--recipe.lr 0.01``, ``--recipe.timescale '[0.04, 4]'``, ``--recipe.output_range null`` for no limit;
null only for the fields whose annotation admits None, a usage error naming the field otherwise;
``--recipe.combine average`` keeps the
average of the restarts, a :class:`~ssmkit.sysid.ensemble.WienerEnsemble`, instead of the best one). Writes
``results.json``, ``report.md``, ``simulation.png``, ``error_spectrum.png`` and ``model.pt``
(``DeepWiener.checkpoint`` or ``WienerEnsemble.checkpoint``: the model's arguments and weights, with the recipe;
``ssmkit analyze model.pt`` analyses its LTI layers: poles, Bode plots, ``--onnx`` export) to ``--out`` (default
``runs/sysid-<benchmark>-<model>``, with ``--data`` ``runs/sysid-<name>-<model>``) and prints the results table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
import typing

from ssmkit.sysid.recipes import Recipe, recipe_for


def takes_null(annotation) -> bool:
    """Whether a type annotation admits None (``Optional[X]``, ``X | None``, ``Union[..., None]``): the recipe fields
    whose None has a meaning (no limit, the layer's default Δ, no early stopping, ...).

    Args:
        annotation: a resolved annotation (``typing.get_type_hints``).
    """
    return annotation is type(None) or type(None) in typing.get_args(annotation)


def null_fields(given) -> list[str]:
    """The recipe fields of ``given`` (the parsed ``--recipe.*`` options) set to None whose :class:`Recipe` annotation
    does not admit None (:func:`takes_null`), in field order.

    Args:
        given: the parsed ``recipe`` options (a mapping, or None when none was given).
    """
    if not given:
        return []
    hints = typing.get_type_hints(Recipe)
    return [f.name for f in dataclasses.fields(Recipe)
            if f.name in given and given[f.name] is None and not takes_null(hints[f.name])]


def _null_message(names: list[str]) -> str:
    """The usage error of recipe options given null where their field has no None meaning."""
    hints = typing.get_type_hints(Recipe)
    options = ", ".join(f"--recipe.{n}" for n in names)
    types = ", ".join(f"{n}: {getattr(hints[n], '__name__', hints[n])}" for n in names)
    nullable = [f.name for f in dataclasses.fields(Recipe) if takes_null(hints[f.name])]
    return (f"{options} cannot be null: the recipe field{'s' if len(names) > 1 else ''} ({types}) "
            f"{'have' if len(names) > 1 else 'has'} no None meaning; give a value, or leave the option out to keep "
            f"the benchmark's recipe value (null is taken by {', '.join(nullable)})")


def _parser(prog: str):
    from jsonargparse import ArgumentParser as _ArgumentParser

    class ArgumentParser(_ArgumentParser):
        def parse_args(self, *args, **kwargs):
            """Parse, then refuse a null for a recipe field that has no None meaning (a usage error naming it), and
            options that do not say which data to identify (:func:`_check_source`)."""
            cfg = super().parse_args(*args, **kwargs)
            names = null_fields(cfg.get("recipe"))
            if names:
                self.error(_null_message(names))
            _check_source(self, cfg)
            return cfg

    parser = ArgumentParser(prog=prog, description="Identify a system-identification benchmark, or your own data "
                            "(--data), with a deep Wiener model; writes results.json, report.md and the figures.",
                            default_env=False, allow_abbrev=False)
    parser.add_argument("--benchmark", type=str, default=None,
                        help="a named benchmark: cascaded_tanks, bouc_wen, f16, ... (or --data, not both)")
    parser.add_argument("--data", type=str, nargs="+", default=None,
                        help="your own data: one or more CSV files with a header row naming the columns, one "
                             "experiment each (or --benchmark, not both); needs --inputs, --outputs and --dt or --time")
    parser.add_argument("--inputs", type=str, default=None,
                        help="with --data: the input columns' header names, comma-separated (u1,u2)")
    parser.add_argument("--outputs", type=str, default=None,
                        help="with --data: the output columns' header names, comma-separated (y)")
    parser.add_argument("--dt", type=float, default=None,
                        help="with --data: the sampling time Ts in seconds (with --time and --irregular: the nominal "
                             "Ts, e.g. the logger's period; default there the median gap)")
    parser.add_argument("--time", type=str, default=None,
                        help="with --data: a column of time stamps in seconds, uniformly spaced (instead of --dt; any "
                             "strictly increasing stamps with --irregular)")
    parser.add_argument("--irregular", action="store_true",
                        help="with --data and --time: the time stamps may be irregularly spaced (dropped or jittered "
                             "samples); the model is simulated at the real times, Ts the median gap or --dt "
                             "(default: a non-uniform --time column is refused)")
    parser.add_argument("--hold", choices=("sample", "previous"), default=None,
                        help="with --data: the input over the gap before sample k: 'sample' (u_k, as given; the "
                             "default) or 'previous' (u_{k-1}: commands applied at the sample times and held until the "
                             "next sample, an actuator's zero-order hold; for irregularly sampled logs especially)")
    parser.add_argument("--missing-outputs", dest="missing_outputs", action="store_true",
                        help="with --data: an empty, NaN or NA cell in an output column (also N/A, n/a, #N/A, #NA, "
                             "<NA>, NULL, null, None, or one absent from a short row) is a missing measurement; the "
                             "model is simulated over every sample with the known inputs, trained and scored where "
                             "the output was measured (default: such a cell is refused; inputs must be known)")
    parser.add_argument("--test-data", dest="test_data", type=str, nargs="+", default=None,
                        help="with --data: test files with the same columns (default: the tail of each --data file)")
    parser.add_argument("--test-fraction", dest="test_fraction", type=float, default=None,
                        help="with --data and no --test-data: the tail of each file held out as the test record "
                             "(0.2 when not given)")
    parser.add_argument("--n-init", dest="n_init", type=int, default=None,
                        help="with --data: samples at the start of each test record read by the initial-state encoder "
                             "and not scored (when not given: 50, at most a tenth of the shortest test record; 0: "
                             "from rest)")
    parser.add_argument("--unit", type=str, default=None,
                        help="with --data: the outputs' unit, or one per output, comma-separated (default: data units)")
    parser.add_argument("--input-unit", dest="input_unit", type=str, default=None,
                        help="with --data: the inputs' unit, or one per input, comma-separated (default: not stated)")
    parser.add_argument("--name", type=str, default=None,
                        help="with --data: the run's name in the report (default: the first file's name)")
    parser.add_argument("--delimiter", type=str, default=None,
                        help="with --data: the CSV field separator, one character or tab (default: the first of , ; "
                             "tab in the header, else white space)")
    parser.add_argument("--model", type=str, default="s4d",
                        help="the LTI layer of the Wiener blocks: a layer with a state space (s4d, s4, dss, dlr, s5, "
                             "lru, ema). A recipe that starts the first layer from the data (cascaded_tanks, bouc_wen: "
                             "first_layer_init data) takes s4d, s5, dlr or lru; the others need --recipe.first_layer_init "
                             "layer. s5 needs a d_state that is a multiple of 16 (--recipe.d_state 16)")
    parser.add_argument("--mode", type=str, default="simulation",
                        help="simulation (simulation error, the default) or prediction (one-step-ahead, for comparison)")
    parser.add_argument("--data-folder", dest="data_folder", type=str, default=None,
                        help="the folder holding the benchmark's official files (default $SSMKIT_DATA/sysid/<name>)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps at most (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the window draws")
    parser.add_argument("--device", type=str, default="cpu",
                        help="where the model trains and simulates (cpu, cuda, cuda:1); data and scores stay on the CPU")
    parser.add_argument("--out", type=str, default=None, help="output folder (default runs/sysid-<benchmark>-<model>)")
    parser.add_argument("--steady-state-periods", dest="steady_state_periods", type=int, default=1,
                        help="also score periodic test records (Bouc-Wen's multisine) in periodic steady state after "
                        "this many periods of the same input (0: only the official from-rest score; simulation mode)")
    parser.add_argument("--no-plots", dest="no_plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--log", action="store_true", help="print validation progress")
    hints = typing.get_type_hints(Recipe)
    for f in dataclasses.fields(Recipe):
        # left out of the parsed options when not given (SUPPRESS), so that an explicit null sets None (no limit,
        # the layer's default Δ, ...) where a default None could not tell it from "not given" (it was ignored).
        # Typed Optional for every field so that a null parses; parse_args then refuses it by name for a field
        # whose annotation admits no None (takes_null), before any data is read
        null = " or null" if takes_null(hints[f.name]) else ""
        parser.add_argument(f"--recipe.{f.name}", type=typing.Optional[hints[f.name]], default=argparse.SUPPRESS,
                            help=f"recipe field {f.name}{null} (default: the benchmark's recipe)")
    return parser


def recipe_from_args(benchmark: str, cfg, base: Recipe | None = None) -> Recipe:
    """The benchmark's recipe with the command line's overrides.

    Args:
        benchmark: the benchmark's name.
        cfg: the parsed options.
        base: the recipe the overrides change (None: :func:`~ssmkit.sysid.recipes.recipe_for` of ``benchmark``; your own
            data take :func:`~ssmkit.sysid.recipes.recipe_for_data`).

    Returns:
        the recipe.

    Raises:
        ValueError: for a recipe option given None whose field's annotation admits no None (:func:`null_fields`;
            the command's parser refuses it first, as a usage error).
    """
    given = cfg.get("recipe") or {}
    names = null_fields(given)
    if names:  # options built without the parser (a mapping read from a file)
        raise ValueError(_null_message(names))
    changes = {f.name: given[f.name] for f in dataclasses.fields(Recipe) if f.name in given}
    if cfg.steps is not None:
        changes["steps"] = cfg.steps
    if changes.get("timescale") is not None:
        changes["timescale"] = tuple(float(v) for v in changes["timescale"])
    if getattr(cfg, "mode", "simulation") == "prediction":
        # a predictor reads y_{t-1} as an input: a held-out block's outputs would reach it, and a subspace estimate of
        # u -> y poles does not describe [u, y_{t-1}] -> y; the recipe's k-fold and data init give way to the tail
        # and the layer's init unless set on the command line
        if "validation" not in changes:
            changes.update(validation="tail", combine=changes.get("combine", "best"))
        changes.setdefault("first_layer_init", "layer")
    return dataclasses.replace(recipe_for(benchmark) if base is None else base, **changes)


def validation_in_units(bench, history: dict) -> dict:
    """A history's validation RMSEs in the benchmark's reporting units: ``best_val_rmse_per_output`` (data units,
    when the history has it) output k × ``bench.scales[k]``, and ``best_val_rmse`` (their mean) × the scale the
    outputs share; where the outputs' scales differ, the mean of the converted RMSEs (None without per-output RMSEs
    to convert: a mean over outputs in different data units has no one factor).

    Args:
        bench: the benchmark (its per-output scales).
        history: a training history or one restart's entry (``best_val_rmse``, and ``best_val_rmse_per_output``
            where recorded), in the data's units.

    Returns:
        {"best_val_rmse": float or None, and "best_val_rmse_per_output": p floats where the history has them}.
    """
    entries = {}
    if "best_val_rmse_per_output" in history:
        entries["best_val_rmse_per_output"] = bench.in_units(history["best_val_rmse_per_output"])
    per = entries.get("best_val_rmse_per_output")
    if len(set(bench.scales)) == 1:
        entries["best_val_rmse"] = history["best_val_rmse"] * bench.scales[0]
    else:
        entries["best_val_rmse"] = sum(per) / len(per) if per else None
    return entries


# the options that describe a user's CSV files: given with --benchmark, they would be ignored
DATA_OPTIONS = {"inputs": "--inputs", "outputs": "--outputs", "dt": "--dt", "time": "--time",
                "test_data": "--test-data", "test_fraction": "--test-fraction", "n_init": "--n-init", "unit": "--unit",
                "input_unit": "--input-unit", "name": "--name", "delimiter": "--delimiter", "hold": "--hold"}


def _check_source(parser, cfg) -> None:
    """A usage error unless exactly one of ``--benchmark`` and ``--data`` is given, with the options that go with it:
    ``--data`` needs ``--inputs``, ``--outputs`` and one of ``--dt`` / ``--time`` (both with ``--irregular``),
    takes ``--test-data`` or ``--test-fraction`` (not both), ``--irregular`` only with ``--time``, and no
    ``--data-folder``; ``--benchmark`` takes none of the data options."""
    if (cfg.benchmark is None) == (cfg.data is None):
        parser.error("give exactly one of --benchmark NAME (a named benchmark) and --data FILE.csv [FILE.csv ...] "
                     "(your own data, with --inputs, --outputs and --dt or --time); got "
                     + ("both" if cfg.data is not None else "neither"))
    given = [flag for key, flag in DATA_OPTIONS.items() if cfg.get(key) is not None]
    given += ["--irregular"] if cfg.irregular else []  # a flag: False when not given
    given += ["--missing-outputs"] if cfg.missing_outputs else []
    if cfg.benchmark is not None:
        if given:
            parser.error(f"{', '.join(given)} describe your own data and go with --data, not with --benchmark "
                         f"{cfg.benchmark}")
        return
    if cfg.data_folder is not None:
        parser.error("--data-folder holds a named benchmark's files; with --data give the CSV files themselves")
    missing = [flag for key, flag in (("inputs", "--inputs"), ("outputs", "--outputs")) if cfg.get(key) is None]
    if missing:
        parser.error(f"--data needs {' and '.join(missing)}: the header names of the columns, comma-separated")
    nominal = cfg.irregular and cfg.dt is not None and cfg.time is not None  # the stamps, --dt the nominal Ts
    if (cfg.dt is None) == (cfg.time is None) and not nominal:
        parser.error("--data needs the sampling time: --dt Ts (seconds) or --time COLUMN (time stamps), one of the "
                     "two; got " + ("both (they go together only with --irregular: --dt is then the nominal Ts)"
                                    if cfg.dt is not None else "neither"))
    if cfg.irregular and cfg.time is None:
        parser.error("--irregular takes the sample times from a time column: give --time COLUMN (the stamps in "
                     "seconds) instead of --dt (samples every Ts are regular by definition)")
    if cfg.test_data is not None and cfg.test_fraction is not None:
        parser.error("give --test-data FILE (separate test files) or --test-fraction F (the tail of each file), not "
                     "both")


def _columns(text: str) -> list[str]:
    """A comma-separated list of names as a list (blanks around the names dropped)."""
    return [c.strip() for c in text.split(",")]


def _user_data(parser, cfg):
    """The benchmark of ``--data`` (:func:`ssmkit.sysid.userdata.from_csv`) and what results.json records of it; a
    file that cannot be read or is refused is a usage error naming the option and the reason."""
    from ssmkit.sysid.userdata import DEFAULT_TEST_FRACTION, DEFAULT_UNIT, from_csv

    units = [DEFAULT_UNIT] if cfg.unit is None else _columns(cfg.unit)
    unit = units[0] if len(units) == 1 else units  # one unit for every output, or one per output
    input_units = None if cfg.input_unit is None else _columns(cfg.input_unit)
    input_unit = input_units[0] if input_units is not None and len(input_units) == 1 else input_units
    try:
        bench = from_csv(cfg.data, _columns(cfg.inputs), _columns(cfg.outputs), dt=cfg.dt, time=cfg.time,
                         test_path=cfg.test_data, test_fraction=cfg.test_fraction,
                         delimiter="\t" if cfg.delimiter in ("tab", "\\t") else cfg.delimiter,
                         name=cfg.name, unit=unit, n_init=cfg.n_init, input_unit=input_unit,
                         irregular=cfg.irregular, hold=cfg.hold or "sample", missing_outputs=cfg.missing_outputs)
    except (ValueError, FileNotFoundError) as error:
        parser.error(f"--data: {error}")
    fraction = None
    if cfg.test_data is None:
        fraction = DEFAULT_TEST_FRACTION if cfg.test_fraction is None else cfg.test_fraction
    data = {"files": list(cfg.data), "test_files": cfg.test_data, "test_fraction": fraction,
            "inputs": _columns(cfg.inputs), "outputs": _columns(cfg.outputs), "dt": bench.dt, "time_column": cfg.time,
            "irregular": cfg.irregular, "hold": cfg.hold or "sample", "missing_outputs": cfg.missing_outputs,
            "train_records": [_record_entry(r, cfg.missing_outputs) for r in bench.train],
            "test_records": [_record_entry(r, cfg.missing_outputs) for r in bench.test]}
    return bench, data


def _record_entry(record, missing_outputs: bool) -> dict:
    """What results.json records of one of the user's records: its name and length, and with ``--missing-outputs``
    how many output samples were not measured (NaN cells of ``IORecord.y``)."""
    entry = {"name": record.name, "samples": len(record)}
    if missing_outputs:
        entry["missing_outputs"] = record.n_missing
    return entry


def _user_recipe(parser, bench, cfg) -> Recipe:
    """The generic recipe for ``bench`` (:func:`ssmkit.sysid.recipes.recipe_for_data`) with the command line's
    overrides; a usage error where the data are too short for it, or for ``--recipe.train_records`` (the user's data
    are what they are: nothing is simulated)."""
    from ssmkit.sysid.recipes import recipe_for_data

    try:
        base = recipe_for_data(bench)
    except ValueError as error:
        parser.error(f"--data: {error}")
    recipe = recipe_from_args(bench.name, cfg, base=base)
    if recipe.train_records != 1:
        parser.error(f"--recipe.train_records {recipe.train_records}: your own data have one record per file, "
                     "nothing is simulated; leave it at 1")
    return recipe


def sysid_main(argv: list[str], prog: str = "ssmkit sysid") -> int:
    """``ssmkit sysid``: train, evaluate, write the report and print the table (exit 0)."""
    import torch

    from ssmkit.files import atomic_write
    from ssmkit.sysid.benchmarks import load_benchmark
    from ssmkit.sysid.report import results_table, write_report
    from ssmkit.sysid.workflow import MODES, evaluate, identify

    parser = _parser(prog)
    cfg = parser.parse_args(argv)
    if cfg.mode not in MODES:
        parser.error(f"--mode must be one of {MODES}; got {cfg.mode!r}")
    if cfg.steady_state_periods < 0:
        parser.error(f"--steady-state-periods must be >= 0; got {cfg.steady_state_periods}")
    try:
        device = torch.device(cfg.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {cfg.device}: torch {torch.__version__} sees no CUDA device here")
    import ssmkit.layers as layers

    if cfg.model not in layers.available():  # before the data are read (a missing file would be reported first)
        parser.error(f"--model must be a registered layer, {layers.available()}; got {cfg.model!r}")
    if cfg.data is not None:
        bench, data = _user_data(parser, cfg)
        recipe = _user_recipe(parser, bench, cfg)
    else:
        recipe = recipe_from_args(cfg.benchmark, cfg)
        bench, data = load_benchmark(cfg.benchmark, cfg.data_folder, train_records=recipe.train_records), None
    start = time.perf_counter()
    model, history = identify(bench, cfg.model, recipe, cfg.mode, seed=cfg.seed, log=cfg.log, device=device)
    seconds = time.perf_counter() - start
    steady = cfg.steady_state_periods if cfg.steady_state_periods and cfg.mode == "simulation" else None
    scores = evaluate(model, bench, cfg.mode, steady_state=steady)
    ensemble = history.get("combine") == "average" or history.get("validation") == "kfold"
    label = f"deep Wiener {cfg.model} ({cfg.mode})" + (f", average of {len(model)} runs" if ensemble else "")
    out = cfg.out or os.path.join("runs", f"sysid-{bench.name}-{cfg.model}")
    run = {
        "model": cfg.model,
        "mode": cfg.mode,
        "recipe": dataclasses.asdict(recipe),
        "seed": cfg.seed,
        "train_seconds": seconds,
        "steps_run": history["steps"],
        "best_step": history["best_step"],
        "best_val_rmse_per_output": [],  # a history without them (a stub) records none
        **validation_in_units(bench, history),
        # the score early stopping and the choices minimised: the NRMSE averaged over the outputs (no unit)
        "best_val_nrmse": history.get("best_val_nrmse"),
        "restarts": [{**r, **validation_in_units(bench, r)} for r in history.get("restarts", [])],
        "chosen_seed": history.get("seed", cfg.seed),  # None for an ensemble (every run is kept)
        "combine": recipe.combine,
        "parameters": sum(p.numel() for p in model.parameters()),
        "stable": model.is_stable(),
        "spectral_radius": model.spectral_radius(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
    }
    if data is not None:
        run["data"] = data
    write_report(out, bench, label, scores, run, plots=not cfg.no_plots)
    checkpoint = model.checkpoint(recipe=dataclasses.asdict(recipe), model=cfg.model, mode=cfg.mode,
                                  benchmark=bench.name)
    # `ssmkit analyze` reads it; written to a temporary name and renamed, so an interrupted run leaves no half file
    atomic_write(os.path.join(out, "model.pt"), lambda f: torch.save(checkpoint, f))
    print(results_table(bench, label, scores))
    chosen = f" (run {len(history['restarts'])} times; kept seed {history['seed']})" if "restarts" in history else ""
    if ensemble:
        chosen = f" (run {len(history['restarts'])} times; kept the average of every run)"
    if history.get("validation") == "kfold":
        chosen = (f" (run {len(history['restarts'])} times over {history['folds']} held-out blocks; kept the average "
                  f"of {len(model)} runs: {'the best on each block' if history['combine'] == 'best' else 'every run'})")
    print(f"trained {history['steps']} steps in {seconds:.1f} s{chosen} (best validation at step {history['best_step']}); "
          f"report in {out}")
    return 0
