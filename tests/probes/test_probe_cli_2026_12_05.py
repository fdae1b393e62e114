"""Probe of 2026-12-05: the ``ssmkit`` command line (``train``, ``compare``, ``sysid``), hunting silent wrong answers --
an option accepted but parsed into something else, or ignored -- read back from what a run records (``train.json``,
``model.json``, ``task.json``, ``result.json``, the checkpoint's ``hyper_parameters``) and from effects (steps run,
parameter count).

Findings (fixed):

1. *A misspelt option became another option.* ``ssmkit train ... --train.lr_ 0.1`` (a typo of ``--train.lr``) set
   ``train.lr_floor = 0.1`` and left the learning rate at its default, without a word: jsonargparse (argparse) took
   any unique prefix of an option for it (``--train.war 5`` = ``warmup_steps``, ``--d_mod`` = ``d_model``,
   ``--res`` = ``--resume``). Reference: the documented options (``ssmkit train --help``, README "every option of
   the Experiment and TrainConfig dataclasses"); an unknown option is a usage error (exit 2, cli.py's docstring). The
   train/compare parser now has ``allow_abbrev=False`` (``ssmkit.train.commands``).
2. *``--resume`` with other task options trained and tested on other data.* ``fit`` refuses a resume with another
   model or schedule, but the task and its options were neither recorded nor checked: ``--resume
   --task_options.length 24`` on a run made at length 12 exited 0 and rewrote ``result.json`` with the test of the
   length-24 data (a run stopped half-way would have finished on it). Reference: ``--resume``'s help ("give the run's
   options again ... another model or schedule is refused") and ``fit``'s docstring (a resume continues the saved
   run, and what it would silently ignore or change is refused). ``run_experiment`` now writes ``task.json`` (task name and options) beside ``model.json`` and
   ``train.json`` and refuses a resume whose task differs (``ssmkit.train.experiment``).

3. ``ssmkit sysid --recipe.output_range null`` (likewise ``timescale``, ``ssm_weight_decay``, ``folds``,
   ``first_activation``: the Optional recipe fields, None documented as "no limit" / "the layer's default Δ") was
   accepted and ignored: the parser's default None meant "unset, take the benchmark's recipe", so an explicit null
   kept cascaded_tanks' ``(None, 10.0)``. Fixed by the lead: the ``--recipe.*`` options are left out when not given
   (``argparse.SUPPRESS``), so a given null sets None.

Checked and right (guards below): numbers as ``1e-3``, ``1E-3``, ``.001``, ``2_000``, ``0x10``, ``+200``, ``010``
(decimal 10, not octal), ``-1`` (parsed as a value and refused by TrainConfig's check), ``inf``/``nan`` refused;
an int option given ``1e3`` or ``10.0`` refused, not truncated; booleans (true/false/True/False/FALSE/yes/no/on/off;
``0``/``1`` refused for ``--prenorm``), inside ``layer_options`` too; ``null`` for None (``None``/``none`` stay
strings and the model refuses them by name); ``--model '[s4d, lru]'`` a hybrid, ``--model s4d,lru`` refused by name;
an unknown key on the command line or in a YAML file refused; a key given twice: the last wins; precedence
defaults < ``--config`` < later options (an option *before* ``--config`` is overridden by the file, as the docstring's
"later options override it" says); ``--layer_options '{...}'`` replaces the file's dict, ``--layer_options.k v``
merges (documented); a shipped config with an override; hybrid per-layer options from YAML; ``--out`` holding an old
run refused without ``--resume`` and its records left untouched; ``compare`` passes ``--d_model``/``--train.*`` and
the budget to every model's run.

Noticed and left alone: ``--layer_options.s4d.d_state 4`` (the second level of a hybrid's options) reached the layer
as the string ``'4'`` (jsonargparse parses only the first level of a dict option); typed and merged since the config
probe of 2026-12-05 (tests/probes/test_probe_config_2026_12_05.py).
``--model+ lru`` appends to the default (``['s4d', 'lru']``: jsonargparse's list append). ``--layer_options.x inf``
stays the string ``'inf'`` (YAML spells ``.inf``). README's list of a run folder's files does not name ``task.json``
yet. ``bench`` suites use plain argparse (a repeated ``--layers`` keeps the last, argparse's rule).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

pytest.importorskip("jsonargparse")

from ssmkit.cli import main as cli_main  # noqa: E402
from ssmkit.train.commands import _experiment, _parser, _resolve_config_args  # noqa: E402
from ssmkit.train.config import TrainConfig  # noqa: E402

TINY = ["--task", "adding", "--task_options", "{length: 12, n_train: 32, n_val: 16, n_test: 16}", "--d_model", "4",
        "--n_layers", "1", "--train.batch_size", "16", "--train.val_every", "0", "--train.checkpoint_every", "0",
        "--train.warmup_steps", "0", "--no-progress"]


def parse(*argv: str, compare: bool = False):
    """The Experiment that ``ssmkit train --task adding ARGV`` would run (no training)."""
    parser = _parser("ssmkit train", compare)
    cfg = parser.parse_args(_resolve_config_args(["--task", "adding", *argv]))
    return _experiment(parser, cfg)


def usage_error(*argv: str) -> str:
    """The usage error ``ssmkit train --task adding ARGV`` exits 2 with (fails if it parses)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
        parse(*argv)
    assert stop.value.code == 2
    return err.getvalue()


# --- finding 1: abbreviations -----------------------------------------------------------------------------------------


def test_a_misspelt_option_is_refused_not_taken_for_another():
    # it was lr_floor = 0.1, lr left at 3e-3
    assert "unrecognized arguments: --train.lr_ 0.1" in usage_error("--train.lr_", "0.1")
    for abbreviated in (["--train.war", "5"], ["--d_mod", "8"], ["--train.lr_f", "0.5"], ["--res"]):
        assert "unrecognized arguments" in usage_error(*abbreviated)
    assert parse("--train.lr", "0.1").train.lr == 0.1 and parse("--train.lr_floor", "0.1").train.lr_floor == 0.1


def test_the_command_refuses_the_typo_with_exit_2(tmp_path, capsys):
    argv = ["train", *TINY, "--train.max_steps", "2", "--train.lr_", "0.1", "--out", str(tmp_path / "r")]
    assert cli_main(argv) == 2
    assert "unrecognized arguments: --train.lr_ 0.1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# --- parsing guards ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,text,expect", [
    ("--train.lr", "1e-3", 1e-3), ("--train.lr", "1E-3", 1e-3), ("--train.lr", ".001", 1e-3),
    ("--train.lr=1e-2", None, 1e-2), ("--train.max_steps", "2_000", 2000), ("--train.max_steps", "0x10", 16),
    ("--train.max_steps", "+200", 200), ("--train.max_steps", "010", 10), ("--train.max_time", "1e2", 100.0),
    ("--train.grad_clip", "null", None), ("--train.grad_clip", "~", None), ("--dropout", ".5", 0.5),
])
def test_numbers_in_every_notation(flag, text, expect):
    argv = [flag] if text is None else [flag, text]
    if flag.startswith("--train.max_steps"):
        argv += ["--train.warmup_steps", "0"]
    experiment = parse(*argv)
    key = flag.split("=")[0].removeprefix("--")
    got = getattr(experiment.train, key.split(".")[1]) if key.startswith("train.") else getattr(experiment, key)
    assert got == expect and type(got) is type(expect)


@pytest.mark.parametrize("argv,message", [
    (["--train.max_steps", "1e3"], "Expected a <class 'int'>. Got value: 1000.0"),
    (["--train.max_steps", "10.0"], "Expected a <class 'int'>. Got value: 10.0"),
    (["--d_model", "8.0"], "Expected a <class 'int'>. Got value: 8.0"),
    (["--train.lr", "inf"], "Got value: inf"),
    (["--train.lr", "nan"], "Got value: nan"),
    (["--prenorm", "0"], "Expected a <class 'bool'>. Got value: 0"),
    (["--train.grad_clip", "None"], "Given value: None"),
    (["--dmodel", "3"], "unrecognized arguments: --dmodel 3"),
])
def test_values_that_would_be_truncated_or_misread_are_usage_errors(argv, message):
    assert message in usage_error(*argv)


def test_negative_numbers_are_values_and_reach_the_checks():
    for argv in (["--train.lr", "-1"], ["--train.lr=-1e-3"], ["--train.lr", "-.5"]):
        with pytest.raises(ValueError, match=r"lr must be a number > 0; got -"):
            parse(*argv)


@pytest.mark.parametrize("text,expect", [("true", True), ("True", True), ("yes", True), ("on", True),
                                         ("false", False), ("False", False), ("FALSE", False), ("no", False),
                                         ("off", False)])
def test_booleans_never_read_false_as_true(text, expect):
    assert parse("--prenorm", text).prenorm is expect and parse(f"--prenorm={text}").prenorm is expect
    assert parse("--layer_options.bidirectional", text).layer_options == {"bidirectional": expect}


def test_null_none_lists_and_strings():
    assert (parse("--norm", "null").norm, parse("--pool", "null").pool) == (None, None)
    assert parse("--norm", "None").norm == "None"  # a string: the model refuses it by name (below)
    from ssmkit.data import get_task
    from ssmkit.models import SequenceModel

    info = get_task("adding", length=12, n_train=8, n_val=8, n_test=8).info()
    with pytest.raises(ValueError, match=r"norm must be one of \('layer', 'batch', 'rms', None\); got 'None'"):
        SequenceModel.from_config(parse("--norm", "None", "--d_model", "4").model_config(info))
    assert parse("--model", "[s4d, lru]").model == ["s4d", "lru"]
    assert parse("--model", '["s4d", "lru"]').model == ["s4d", "lru"]
    with pytest.raises(ValueError, match=r"unknown layer names \['s4d,lru'\]"):
        SequenceModel.from_config(parse("--model", "s4d,lru", "--d_model", "4").model_config(info))
    assert parse("--layer_options.init", "null").layer_options == {"init": None}
    assert parse("--task_options.length", "1_2").task_options == {"length": 12}
    assert parse("--layer_options.x", "a b").layer_options == {"x": "a b"}
    assert parse("--layer_options.x", "~/f").layer_options == {"x": "~/f"}  # no expansion: layers take no paths


def test_a_key_given_twice_keeps_the_last():
    assert parse("--train.lr", "0.1", "--train.lr", "0.2").train.lr == 0.2
    assert parse("--model", "s4d", "--model", "lru").model == "lru"
    both = parse("--train.lr", "0.1", "--train", "{max_steps: 500}")  # a group given whole keeps the other fields
    assert (both.train.lr, both.train.max_steps) == (0.1, 500)


def test_precedence_defaults_config_command_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("task: adding\nmodel: s4d\nlayer_options: {d_state: 8, dt_min: 0.01}\nd_model: 16\n"
                      "train: {lr: 0.01, max_steps: 50, warmup_steps: 5, grad_clip: 1.0}\n")
    c = str(config)
    file_only = parse("--config", c)
    assert (file_only.d_model, file_only.n_layers, file_only.train.lr, file_only.train.batch_size) == (16, 4, 0.01, 32)
    assert parse("--config", c, "--train.lr", "0.1").train.lr == 0.1  # the command line over the file
    assert parse("--train.lr", "0.1", "--config", c).train.lr == 0.01  # ...when it comes after --config (documented)
    assert parse(f"--config={c}", "--train.seed", "7").train.seed == 7  # a key the file does not set
    assert parse("--config", c, "--train.grad_clip", "null").train.grad_clip is None  # the file's value unset
    assert parse("--config", c, "--layer_options.d_state", "2").layer_options == {"d_state": 2, "dt_min": 0.01}
    assert parse("--config", c, "--layer_options", "{d_state: 2}").layer_options == {"d_state": 2}  # documented


def test_yaml_values_and_unknown_keys_in_a_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("task: adding\nprenorm: no\nnorm: null\nmodel: [s4d, lru]\nn_layers: 2\n"
                    "layer_options: {s4d: {d_state: 8}, lru: {d_state: 6}}\n"
                    "train: {lr: 1e-3, weight_decay: 1E-2, max_steps: 1_000, grad_clip: .5, max_time: 0x10}\n")
    e = parse("--config", str(good))
    assert (e.prenorm, e.norm, e.model, e.layer_options) == (False, None, ["s4d", "lru"],
                                                             {"s4d": {"d_state": 8}, "lru": {"d_state": 6}})
    assert (e.train.lr, e.train.weight_decay, e.train.max_steps, e.train.grad_clip, e.train.max_time) == (
        1e-3, 1e-2, 1000, 0.5, 16.0)
    assert parse("--config", str(good), "--layer_options.s4d", "{dt_min: 0.1}").layer_options == {
        "s4d": {"dt_min": 0.1}, "lru": {"d_state": 6}}
    for body, message in (("trian: {lr: 0.5}", "Option 'trian.lr' is not accepted"),
                          ("train: {lr_: 0.5}", "Group 'train' does not accept option 'lr_'")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"task: adding\n{body}\n")
        assert message in usage_error("--config", str(bad))


def test_a_shipped_config_with_an_override_keeps_its_other_values():
    import yaml

    from ssmkit.train.commands import resolve_config

    shipped = yaml.safe_load(open(resolve_config("lra/listops-s4")))
    e = parse("--config", "lra/listops-s4", "--layer_options.d_state", "2", "--train.max_steps", "20000")
    assert e.layer_options == {**shipped["layer_options"], "d_state": 2}
    assert e.train.to_dict() == TrainConfig.from_dict({**shipped["train"], "max_steps": 20000}).to_dict()
    assert (e.task, e.d_model, e.n_layers, e.norm) == (shipped["task"], shipped["d_model"], shipped["n_layers"],
                                                      shipped["norm"])


# --- end to end: what a run records and does ---------------------------------------------------------------------------


def test_train_records_what_it_parsed_and_runs_it(tmp_path):
    pytest.importorskip("lightning")
    import torch

    from ssmkit.models import SequenceModel

    out = tmp_path / "r"
    argv = ["train", *TINY, "--train.max_steps", "0x3", "--train.lr=1E-2", "--layer_options.d_state", "0x4",
            "--out", str(out)]
    assert cli_main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    train = json.loads((out / "train.json").read_text())
    model = json.loads((out / "model.json").read_text())
    hparams = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
    assert (result["steps"], train["max_steps"], train["lr"], model["layer_options"]) == (3, 3, 0.01, {"d_state": 4})
    assert hparams == {"model": model, "train": train}
    alone = SequenceModel(d_input=2, d_model=4, n_layers=1, layer="s4d", layer_options={"d_state": 4}, d_output=1,
                          head="regress")
    assert result["parameters"] == alone.num_parameters() == 129
    assert json.loads((out / "task.json").read_text()) == {
        "task": "adding", "task_options": {"length": 12, "n_train": 32, "n_val": 16, "n_test": 16}}

    # --out holding that run, without --resume: refused, and its records stay the old run's
    with pytest.raises(ValueError, match="already holds checkpoints"):
        cli_main(["train", *TINY, "--task_options.length", "24", "--train.max_steps", "3", "--out", str(out)])
    assert json.loads((out / "task.json").read_text())["task_options"]["length"] == 12
    assert json.loads((out / "train.json").read_text()) == train

    # finding 2: a resume on other data was accepted (exit 0) and rewrote result.json with its test
    same = ["train", *TINY, "--train.max_steps", "3", "--train.lr", "0.01", "--layer_options.d_state", "4",
            "--out", str(out), "--resume"]
    with pytest.raises(ValueError, match=r"task given differs \(task_options: saved \{.*'length': 12.*given "
                                         r"\{.*'length': 24"):
        cli_main(same + ["--task_options.length", "24"])
    assert json.loads((out / "result.json").read_text()) == result
    assert cli_main(same) == 0  # the saved options again: resumed
    assert json.loads((out / "result.json").read_text())["resumed_from"].endswith("last.ckpt")
    with pytest.raises(ValueError, match=r"model layer_options: saved \{'d_state': 4\}, given \{'d_state': 8\}"):
        cli_main(same + ["--layer_options.d_state", "8"])  # the model's check (fit) still speaks


def test_compare_passes_the_overrides_to_every_model(tmp_path):
    pytest.importorskip("lightning")
    out = tmp_path / "c"
    argv = ["compare", *TINY, "--models", "s4d,lru", "--budget", "2", "--train.lr", "2e-2", "--train.seed", "5",
            "--layer_options", "{s4d: {d_state: 4}, lru: {d_state: 6}}", "--out", str(out)]
    assert cli_main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in results] == ["s4d", "lru"] and [r["steps"] for r in results] == [2, 2]
    for name, d_state in (("s4d", 4), ("lru", 6)):
        train = json.loads((out / name / "train.json").read_text())
        model = json.loads((out / name / "model.json").read_text())
        assert (train["lr"], train["seed"], train["max_steps"], train["batch_size"]) == (0.02, 5, 2, 16)
        assert (model["layer"], model["d_model"], model["n_layers"], model["layer_options"]) == (
            name, 4, 1, {"d_state": d_state})


# --- finding 3 (not fixed): an explicit null of an Optional sysid recipe field ------------------------------------------


def test_sysid_recipe_null_sets_none():
    from ssmkit.sysid.commands import _parser as sysid_parser
    from ssmkit.sysid.commands import recipe_from_args

    cfg = sysid_parser("ssmkit sysid").parse_args(["--benchmark", "cascaded_tanks", "--recipe.output_range", "null"])
    assert recipe_from_args("cascaded_tanks", cfg).output_range is None  # documented: None = no limit
