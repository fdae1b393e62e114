"""The training commands of the ``ssmkit`` CLI: ``train``, ``compare`` and ``configs``.

    ssmkit train --task mnist1d --model s4d --train.max_steps 2000 [--config file.yaml | lra/listops-s4] [--resume]
    ssmkit train --task mnist1d --model s4d --init-from runs/pretrain [--freeze backbone]   # fine-tune another run
    ssmkit compare --task mnist1d --models s4d,s5,mamba --budget 500      # steps; or 90s / 5m / 1h of training
    ssmkit configs                                                         # the shipped experiment configs

Options are parsed with jsonargparse from the :class:`Experiment` and :class:`TrainConfig` dataclasses, so every
field is an option (``--d_model 128``, ``--layer_options '{d_state: 32}'``, ``--train.lr 0.01``) and a YAML file
given by ``--config`` sets them all (later options override it). A dict option given whole replaces the config's
(``--layer_options '{d_state: 32}'`` drops the config's other layer options); ``--layer_options.d_state 32`` changes
one entry, and ``--layer_options.s4d.d_state 32`` one entry of a hybrid's per-layer options (its value typed alike:
32 an int, false a bool, null None; the config's other ``s4d`` options kept). A ``--config`` that is not a file is
looked up among the configs shipped in the package (``ssmkit configs`` lists them). Options are spelt in full: an
abbreviation (``--train.war 5``) is refused, as a misspelt option that began like another was taken for it
(``--train.lr_ 0.1`` set ``lr_floor``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from importlib import resources
from typing import Any

from ssmkit.train.config import TrainConfig
from ssmkit.train.experiment import Experiment
from ssmkit.utils import percent

_PACKAGE_CONFIGS = "configs"


def shipped_configs() -> list[str]:
    """The names of the experiment configs shipped in the package (``lra/listops-s4``, ...)."""
    root = resources.files("ssmkit") / _PACKAGE_CONFIGS
    names = []

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(".yaml"):
                names.append(prefix + entry.name[: -len(".yaml")])

    if root.is_dir():
        walk(root, "")
    return sorted(names)


def resolve_config(name: str) -> str:
    """A ``--config`` value as a file path: the file itself, or the shipped config of that name.

    Args:
        name: a path to a YAML file, or a shipped config name such as ``lra/listops-s4``.

    Returns:
        the path of the YAML file.
    """
    if os.path.isfile(name):
        return name
    path = resources.files("ssmkit") / _PACKAGE_CONFIGS / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise ValueError(f"--config {name!r} is neither a file nor a shipped config; shipped: {', '.join(shipped_configs()) or 'none'}")
    return str(path)


def _resolve_config_args(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out


def _parser(prog: str, compare: bool):
    from jsonargparse import ActionConfigFile, ArgumentParser

    if compare:
        description = ("Train several models on one task with the same budget; print a markdown table and write "
                       "results.json, results.csv and results.png to the output folder.")
    else:
        description = "Train one model on one task (checkpoints, metrics and result.json go to the output folder)."
    # no abbreviations: a misspelt option that began like a longer one was taken for it (--train.lr_ 0.1 set lr_floor)
    parser = ArgumentParser(prog=prog, description=description, env_prefix="SSMKIT", default_env=False,
                            allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a YAML experiment: a file, or a shipped config name ('ssmkit configs' lists them)")
    parser.add_class_arguments(Experiment, nested_key=None, fail_untyped=True)
    _typed_nested_entries(parser)
    if compare:
        parser.add_argument("--models", type=str, required=True,
                            help="comma-separated layer names to compare (each with layer_options[name] if given), "
                                 "or 'all' for every registered layer")
        parser.add_argument("--fail-below", dest="fail_below", type=float, default=None,
                            help="exit 1 if any model's test accuracy is below this fraction (a pass mark; tasks "
                                 "with an accuracy only, not regression tasks)")
        parser.add_argument("--budget", type=str, required=True,
                            help="the same budget for every model: optimizer steps (500) or training time (90s, 5m, 1h)")
    out_help = ("output folder (default runs/compare-<task>; each model's run in a sub-folder named after it)" if compare
                else "output folder (default runs/<task>-<model>)")
    parser.add_argument("--out", type=str, default=None, help=out_help)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the output folder from its last checkpoint (give the run's options "
                             "again: --task is still required; another task, model, lr, schedule, grad_clip, "
                             "precision, seed, batch size, init_from or freeze is refused; max_time, early_stopping, "
                             "val_every, checkpoint_every, log_every and the evaluation options may change)")
    if not compare:
        parser.add_argument("--init-from", dest="init_from", type=str, default=None,
                            help="start a new run from another run's weights (fine-tuning): a run folder (its "
                                 "checkpoints/last.ckpt) or a checkpoint file; tensors load by name and shape, a head "
                                 "of another size keeps its initialisation (said in one line), another model is "
                                 "refused; the same as --train.init_from")
        parser.add_argument("--freeze", type=str, default=None,
                            help="comma-separated parts kept fixed: backbone (train the head only), ssm (the SSM "
                                 "parameters), or module names (encoder, blocks.0, ...); the same as --train.freeze")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", help="hide the progress bar")
    return parser


def _dict_fields() -> list[str]:
    """The Experiment fields that are dicts of options (``layer_options``, ``task_options``)."""
    import typing

    hints = typing.get_type_hints(Experiment)
    return [name for name in Experiment.__dataclass_fields__ if typing.get_origin(hints[name]) is dict]


def _set_entry(options: Any, path: list[str], value: Any) -> dict[str, Any]:
    """A copy of the dict ``options`` with ``value`` at the key path ``path`` (a missing or non-dict level is a new
    dict), the entry's other keys kept."""
    out = dict(options) if isinstance(options, dict) else {}
    out[path[0]] = _set_entry(out.get(path[0]), path[1:], value) if len(path) > 1 else value
    return out


def _typed_nested_entries(parser) -> None:
    """Make an option two or more levels into a dict option (``--layer_options.s4d.d_state 4``, a hybrid's per-layer
    option) set that one entry, its value typed as one level in (``--layer_options.d_state 4``: a YAML value, 4 an
    int, false a bool, null None, [1, 2] a list).

    jsonargparse types the first level only and sets ``{s4d: {d_state: '4'}}`` for the second: the string '4', and
    the config's other ``s4d`` options dropped. Each dict option's action is given a subclass that types the value
    as a first-level entry would be (the action itself parses ``--<option>.<last key> VALUE``) and merges it in.
    """
    for dest in _dict_fields():
        action = parser._option_string_actions[f"--{dest}"]

        class Nested(type(action)):
            def __call__(self, *args, **kwargs):
                if len(args) == 4 and isinstance(args[3], str) and args[3].startswith(f"--{self.dest}."):
                    parser_, cfg, value, option = args
                    path = option[len(f"--{self.dest}."):].split(".")
                    if len(path) > 1:
                        from jsonargparse import Namespace

                        alone = Namespace()  # the value parsed as a first-level entry of an empty dict
                        super().__call__(parser_, alone, value, f"--{self.dest}.{path[-1]}")
                        merged = _set_entry(cfg.get(self.dest), path, alone[self.dest][path[-1]])
                        return super().__call__(parser_, cfg, merged, f"--{self.dest}")
                return super().__call__(*args, **kwargs)

        action.__class__ = Nested


def _experiment(parser, cfg) -> Experiment:
    init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    fields = {k: getattr(init, k) for k in Experiment.__dataclass_fields__}
    return Experiment(**fields)


def train_main(argv: list[str], prog: str = "ssmkit train") -> int:
    """``ssmkit train``: parse the experiment, run it, print the result record (exit 0) or the error (exit 1)."""
    parser = _parser(prog, compare=False)
    cfg = parser.parse_args(_resolve_config_args(argv))
    experiment = _experiment(parser, cfg)
    try:
        experiment.train = transfer_options(experiment.train, cfg.init_from, cfg.freeze)
    except ValueError as error:
        parser.error(str(error))
    model = experiment.model if isinstance(experiment.model, str) else "+".join(experiment.model)
    out = cfg.out or os.path.join("runs", f"{experiment.task}-{model}")
    from ssmkit.train.experiment import run_experiment

    result = run_experiment(experiment, out, resume=cfg.resume, progress=not cfg.no_progress)
    print(json.dumps(result, indent=2))
    print(f"results in {out}")
    return 0


def transfer_options(train: TrainConfig, init_from: str | None, freeze: str | None) -> TrainConfig:
    """``train`` with ``ssmkit train``'s ``--init-from`` and ``--freeze`` (shorthands of ``--train.init_from`` and
    ``--train.freeze``); a shorthand and its long form that disagree are refused.

    Args:
        train: the experiment's training configuration.
        init_from: ``--init-from``'s value, or None.
        freeze: ``--freeze``'s value (comma-separated parts), or None.

    Returns:
        the training configuration.
    """
    import dataclasses

    changes: dict[str, Any] = {}
    if init_from is not None:
        if train.init_from is not None and train.init_from != init_from:
            raise ValueError(f"--init-from {init_from!r} and --train.init_from {train.init_from!r} disagree: give one")
        changes["init_from"] = init_from
    if freeze is not None:
        if train.freeze is not None and train.freeze != freeze:
            raise ValueError(f"--freeze {freeze!r} and --train.freeze {train.freeze!r} disagree: give one")
        changes["freeze"] = freeze
    return dataclasses.replace(train, **changes) if changes else train


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """A budget as (steps, None) for ``"500"`` or (None, seconds) for ``"90s"``, ``"5m"``, ``"1.5h"``.

    Args:
        text: the budget.

    Returns:
        (max_steps, max_seconds), one of them None.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise ValueError(f"--budget must be a number of steps (500) or a time (90s, 5m, 1h); got {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    if not unit:
        if value != int(value) or value < 1:
            raise ValueError(f"a step budget must be a positive integer; got {text!r}")
        return int(value), None
    return None, value * {"s": 1, "m": 60, "h": 3600}[unit]


def budget_config(train: TrainConfig, steps: int | None, seconds: float | None) -> TrainConfig:
    """``train`` with a comparison's budget: ``max_steps = steps`` (a warm-up as long or longer shortened to a tenth
    of the budget, and a validation period longer than the budget set to 0: one validation, at the end, where the run
    would have validated never and a shipped config's ``test_weights: best_val`` was refused), or
    ``max_time = seconds``.

    Args:
        train: the experiment's training configuration.
        steps: the step budget, or None.
        seconds: the time budget, or None.

    Returns:
        the training configuration of every compared run.
    """
    import dataclasses

    if steps is None:
        return dataclasses.replace(train, max_time=seconds)
    warmup = train.warmup_steps if train.warmup_steps < steps else steps // 10
    val_every = train.val_every if train.val_every <= steps else 0
    # max_steps and warmup_steps at once: each is checked against the other
    return dataclasses.replace(train, max_steps=steps, warmup_steps=warmup, val_every=val_every)


def per_model_options(layer_options: dict[str, Any], models: list[str]) -> dict[str, dict[str, Any]]:
    """Each compared model's layer options: ``layer_options[name]``, keyed by layer name ({} for a name without one).

    Options not keyed by layer names (``{d_state: 32}``, one layer's options) are refused, as are keys that name no
    registered layer: both were ignored without a word, so every model ran with its defaults.

    Args:
        layer_options: the experiment's ``layer_options``, e.g. ``{"s4d": {"d_state": 32}, "mamba2": {...}}``.
        models: the compared layer names.

    Returns:
        {name: options} for every name of ``models`` (copies).
    """
    from ssmkit.layers import available

    flat = [k for k, v in layer_options.items() if not isinstance(v, dict)]
    if flat:
        raise ValueError(
            f"compare gives each model layer_options[name], so layer_options must be keyed by layer name, e.g. "
            f"'{{{models[0]}: {{d_state: 32}}}}'; got the values of {flat} directly: {layer_options!r}")
    unknown = sorted(set(layer_options) - set(available()))
    if unknown:
        raise ValueError(f"layer_options has entries for {unknown}, which are not layer names; layers: {available()}")
    return {name: dict(layer_options.get(name, {})) for name in models}


def compare_main(argv: list[str], prog: str = "ssmkit compare") -> int:
    """``ssmkit compare``: train each model with the same budget, then tabulate, save and plot the results."""
    import dataclasses

    parser = _parser(prog, compare=True)
    cfg = parser.parse_args(_resolve_config_args(argv))
    if any(arg in ("--model", "--model+") or arg.startswith(("--model=", "--model+=")) for arg in argv):
        # every compared run takes its layer from --models; a --model on the command line was dropped without a word
        parser.error("compare takes the layers to compare from --models (e.g. --models s4d,s5); --model names the one "
                     "layer of 'ssmkit train'")
    base = _experiment(parser, cfg)
    models = [m.strip() for m in cfg.models.split(",") if m.strip()]
    from ssmkit.layers import available

    if models == ["all"]:
        models = available()
    if not models:
        parser.error("--models must name at least one layer")
    unknown = [m for m in models if m not in available()]
    if unknown:  # checked before the first run: a misspelt last name failed only after the others had trained
        parser.error(f"--models names unknown layers {unknown}; layers: {', '.join(available())} (or 'all')")
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:  # the second run of a name found the first's checkpoints in <out>/<name> after the first had trained
        parser.error(f"--models names {repeated} more than once: each model trains in its own sub-folder named after "
                     "it, so name each layer once")
    if base.train.init_from is not None and len(models) > 1:  # one source fits one model: the others failed late
        parser.error(f"--train.init_from starts every compared model from one run's weights ({base.train.init_from}), "
                     f"which fit one model only; compare {models} from their own initialisations, or fine-tune each "
                     "with 'ssmkit train --init-from'")
    steps, seconds = parse_budget(cfg.budget)
    options = per_model_options(base.layer_options, models)
    from ssmkit.data import get_task

    task = get_task(base.task, **base.task_options)  # read once: every model trains and is scored on these splits
    without = _layers_without_intervals(task, models)
    if without:  # fit refused them only when their turn came, after the models before them had trained
        from ssmkit.layers.registry import layer_class

        takers = [n for n in available() if layer_class(n).takes_intervals]
        parser.error(f"the task's splits carry sampling intervals (irregularly sampled data), and --models names "
                     f"layers that take none: {without}; the layers that do: {', '.join(takers)}")
    if cfg.fail_below is not None:
        target = task.info().target
        if target == "regress":  # no accuracy: every model read as 0 % and failed, whatever its error
            parser.error(f"--fail-below is a pass mark on test accuracy, and {base.task!r} is a regression task "
                         "(its results have an MSE, no accuracy)")
    out = cfg.out or os.path.join("runs", f"compare-{base.task}")
    os.makedirs(out, exist_ok=True)
    from ssmkit.train.experiment import run_experiment

    results = []
    for name in models:
        train = budget_config(base.train, steps, seconds)
        experiment = dataclasses.replace(base, model=name, layer_options=options[name], train=train)
        print(f"== {name}: {cfg.budget} on {base.task}", file=sys.stderr)
        result = run_experiment(experiment, os.path.join(out, name), resume=cfg.resume, progress=not cfg.no_progress,
                                task=task)
        results.append(result)
    table = results_table(results)
    print(table)
    write_results(results, out)
    print(f"results in {out}: results.json, results.csv, results.png, results.md")
    if cfg.fail_below is not None:
        low = [r["model"] for r in results if r.get("test_accuracy", r.get("val_accuracy", 0.0)) < cfg.fail_below]
        if low:
            print(f"below the pass mark {percent(cfg.fail_below)}: {', '.join(low)}", file=sys.stderr)
            return 1
    return 0


def _layers_without_intervals(task: Any, models: list[str]) -> list[str]:
    """The names of ``models`` whose layer has no irregular-sampling form, when ``task``'s splits carry intervals
    ((inputs, targets, intervals[, lengths]): :func:`ssmkit.train.batches.unpack_batch`); [] otherwise.

    ``compare`` checks them before the first run: ``fit`` refused such a layer only when its turn came
    (``--models s4d,hyena`` on irregularly sampled arrays trained s4d, then failed, writing no results).

    Args:
        task: the loaded task (its ``splits()`` are read).
        models: the compared layer names (registered ones).

    Returns:
        the names, in the order given.
    """
    from ssmkit.layers.registry import layer_class
    from ssmkit.train.batches import unpack_batch

    without = [m for m in models if not layer_class(m).takes_intervals]
    if not without:  # nothing to refuse: the splits are not read here
        return []
    irregular = any(unpack_batch(tuple(ds.tensors))[2] is not None for ds in task.splits().values()
                    if hasattr(ds, "tensors") and len(ds.tensors) in (2, 3, 4))
    return without if irregular else []


def _metric(result: dict[str, Any]) -> tuple[str, float | None]:
    for key in ("test_accuracy", "test_mse", "val_accuracy", "val_mse"):
        if key in result:
            return key, result[key]
    return "metric", None


def _extra_test_keys(results: list[dict[str, Any]], key: str) -> list[str]:
    """The ``test@<L>_<metric>`` keys of extra test splits (longer lengths), shortest length first."""
    metric = key.split("_", 1)[-1]
    found = {k for r in results for k in r if re.fullmatch(rf"test@(\d+)_{metric}", k)}
    return sorted(found, key=lambda k: int(k[len("test@"):].split("_", 1)[0]))


def results_table(results: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table: model, test metric (and the metric of every extra test split, e.g. the
    longer lengths of induction heads), parameters, steps, train time, tokens/s.

    Args:
        results: result records of :func:`ssmkit.train.fit` (with ``model``).

    Returns:
        the table text.
    """
    key = _metric(results[0])[0] if results else "metric"
    extra = _extra_test_keys(results, key)

    def shown(value) -> str:
        return "—" if value is None else (f"{100 * value:.2f} %" if "accuracy" in key else f"{value:.4g}")

    extra_head = "".join(f" {k} |" for k in extra)
    lines = [f"| model | {key} |{extra_head} parameters | steps | train time (s) | tokens/s |",
             "|---|---|" + "---|" * len(extra) + "---|---|---|---|"]
    for r in results:
        tps = r.get("tokens_per_second")
        cells = "".join(f" {shown(r.get(k))} |" for k in extra)
        lines.append(f"| {r.get('model')} | {shown(_metric(r)[1])} |{cells} {r['parameters']:,} | {r['steps']} | "
                     f"{r['train_seconds']:.1f} | {'—' if tps is None else f'{tps:,.0f}'} |")
    return "\n".join(lines)


def write_results(results: list[dict[str, Any]], out: str) -> None:
    """Write results.json, results.csv, results.md and (with matplotlib) results.png into ``out``, atomically.

    Args:
        results: result records with ``model``.
        out: the folder.
    """
    from ssmkit.files import atomic_write, write_json, write_text

    write_json(os.path.join(out, "results.json"), results, strict=True)  # a diverged run's NaN: null
    write_text(os.path.join(out, "results.md"), results_table(results) + "\n")
    keys = sorted({k for r in results for k in r}, key=lambda k: (k not in ("task", "model"), k))

    def write_csv(f) -> None:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(results)

    atomic_write(os.path.join(out, "results.csv"), write_csv, text=True)
    try:
        from ssmkit.train.plots import plot_comparison
    except ImportError:  # matplotlib is optional
        print("matplotlib is not installed: no results.png (pip install matplotlib)", file=sys.stderr)
        return
    plot_comparison(results, out)


def configs_main(argv: list[str], prog: str = "ssmkit configs") -> int:
    """``ssmkit configs``: list the shipped experiment configs (``--config NAME`` runs one)."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="List the experiment configs shipped in the package.")
    parser.parse_args(argv)
    for name in shipped_configs():
        print(name)
    return 0
