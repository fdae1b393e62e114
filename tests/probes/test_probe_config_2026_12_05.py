"""Probe of 2026-12-05: the training configuration's round trips -- command line to model, config to saved file and
back, evaluation to ``metrics.csv`` -- hunting values that arrive with another type, entries dropped, and records that
cannot be told apart; read back from what runs record (``model.json``, the checkpoint, ``metrics.csv``,
``result.json``) and from effects (parameter counts, a resume accepted or refused).

Findings (fixed):

1. *A hybrid's per-layer option arrived as a string, and dropped the config's other options of that layer.*
   ``ssmkit train --model '[s4d, lru]' --n_layers 2 --layer_options.s4d.d_state 4`` set ``{s4d: {d_state: '4'}}``:
   the layer refused ``'4'`` by name (``false`` stayed ``'false'``, ``1.5`` ``'1.5'``). Silently worse: after a
   ``--config`` with ``layer_options: {s4d: {d_state: 8, dt_min: 0.01}, ...}``, ``--layer_options.s4d.init inv`` set
   ``s4d`` to ``{init: inv}`` alone, so the run trained with the default d_state and dt_min, exit 0. jsonargparse
   types and merges the first level of a dict option only (``{**prev, 's4d': {'d_state': '4'}}``). Reference: the
   first level (``--layer_options.d_state 4`` is the int 4 and keeps the other entries; ``ssmkit.train.commands``'
   docstring: the dotted form "changes one entry"). The dict options' actions now type a deeper entry as a first-level
   one and merge it in (``commands._typed_nested_entries``); same for ``--task_options.a.b``.
2. *A model config with a tuple compared unequal to itself read back.* ``SequenceModelConfig(layer=("s4d", "mamba2"),
   layer_options={"mamba2": {"A_init_range": (1.0, 8.0), ...}})`` saved and loaded (JSON or YAML) gave lists:
   ``load(path) == config`` was False (the module docstring says it is equal), and ``fit(..., resume=True)`` with the
   config read back from the run's ``model.json`` was refused ("model layer: saved ('s4d', 'mamba2'), given
   ['s4d', 'mamba2']"), though both build the same model. A config now holds JSON's containers (``as_plain`` in
   ``__post_init__``), and the resume check reads an older checkpoint's tuples as lists.
3. *``metrics.csv`` logged four evaluations under the same columns.* A run with a validation split and an extra test
   split wrote ``test_loss``/``test_accuracy`` rows for the final weights, the extra split, and both again at the
   best validation's weights, unlabelled, at the same step (``result.json`` names them ``test_loss_final``,
   ``test@12_loss_best_val``, ...). Each test is now logged under ``result.json``'s name
   (``SequenceLightningModule.test_names``); README describes the file's columns.

Checked and right: the ordering of nested options against ``--config`` and whole-dict options (later wins);
``--layer_options.s4d.d_state=4``; three levels deep; ``compare`` with a per-layer option; ``result.json``'s keys
unchanged by finding 3.

Noticed and left alone: a ``--config`` file's first-level string is re-read as YAML (``layer_options: {d_state:
'4'}`` gives the int 4, jsonargparse's ``Any``), its second level is not (``{s4d: {d_state: '4'}}`` stays '4', refused
by the layer): loud. ``train: {precision: 32}`` in a file is refused ("Expected a <class 'str'>. Got value: 32"),
``--train.precision 32`` is accepted: loud, but the message does not say to quote it. ``fit`` with
``early_stopping`` and no validation split trains to ``max_steps`` without a word (pinned by
tests/train/test_module_run_reference.py as intended; the CLI's tasks all have a validation split). A resume with
another ``seed``, ``batch_size`` or ``precision`` was accepted (refused since the resume probe of 2026-12-05). ``ssmkit sysid
--recipe.X null`` is accepted for every recipe field (each typed Optional), also where ``Recipe`` declares no None
(``censor``, ``d_state``): the workflow's checks refuse those by name, and some take None for a meaning the
annotation does not show (``activation`` None: linear blocks; ``patience`` None: no early stopping), so typing the
options as the fields would refuse valid runs (tests/sysid/test_nlbench_recipes_reference.py pins null for all).
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

pytest.importorskip("jsonargparse")

from ssmkit.cli import main as cli_main  # noqa: E402
from ssmkit.models import SequenceModel, SequenceModelConfig  # noqa: E402
from ssmkit.train.commands import _experiment, _parser, _resolve_config_args  # noqa: E402

TINY = ["--task", "adding", "--task_options", "{length: 12, n_train: 32, n_val: 16, n_test: 16}", "--d_model", "4",
        "--train.batch_size", "16", "--train.val_every", "0", "--train.checkpoint_every", "0",
        "--train.warmup_steps", "0", "--no-progress"]


def parse(*argv: str, compare: bool = False):
    """The Experiment that ``ssmkit train --task adding ARGV`` would run (no training)."""
    parser = _parser("ssmkit compare" if compare else "ssmkit train", compare)
    cfg = parser.parse_args(_resolve_config_args(["--task", "adding", *argv]))
    return _experiment(parser, cfg)


def csv_rows(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# --- finding 1: a hybrid's per-layer options --------------------------------------------------------------------------


@pytest.mark.parametrize("text,expect", [("4", 4), ("1.5", 1.5), ("1e-3", 1e-3), ("0x10", 16), ("false", False),
                                         ("yes", True), ("null", None), ("[1, 2]", [1, 2]), ("{a: 1}", {"a": 1}),
                                         ("legs", "legs")])
def test_a_per_layer_option_is_typed_as_a_first_level_one(text, expect):
    first = parse("--layer_options.x", text).layer_options["x"]
    nested = parse("--layer_options.s4d.x", text).layer_options  # it was {'s4d': {'x': '4'}}
    assert first == expect and type(first) is type(expect)
    assert nested == {"s4d": {"x": expect}} and type(nested["s4d"]["x"]) is type(expect)
    assert parse("--task_options.a.b", text).task_options == {"a": {"b": expect}}


def test_a_per_layer_option_keeps_the_other_options(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("task: adding\nmodel: [s4d, lru]\nn_layers: 2\n"
                      "layer_options: {s4d: {d_state: 8, dt_min: 0.01}, lru: {d_state: 6}}\n")
    c = str(config)
    want = {"s4d": {"d_state": 8, "dt_min": 0.01, "init": "inv"}, "lru": {"d_state": 6}}
    assert parse("--config", c, "--layer_options.s4d.init", "inv").layer_options == want  # was {'s4d': {'init': ..}}
    assert parse("--config", c, "--layer_options.s4d.init=inv").layer_options == want
    # later wins: a --config after the option, or the layer's options given whole after it
    assert parse("--layer_options.s4d.init", "inv", "--config", c).layer_options["s4d"] == {"d_state": 8,
                                                                                          "dt_min": 0.01}
    assert parse("--config", c, "--layer_options.s4d.init", "inv", "--layer_options.s4d", "{d_state: 2}",
                 ).layer_options == {"s4d": {"d_state": 2}, "lru": {"d_state": 6}}
    assert parse("--layer_options.s4d.d_state", "4", "--layer_options.s4d.d_state", "5").layer_options == {
        "s4d": {"d_state": 5}}
    assert parse("--layer_options.s4d.a.b", "3").layer_options == {"s4d": {"a": {"b": 3}}}  # was {'a.b': '3'}
    assert parse("--config", c, "--layer_options.lru.d_state", "2", "--models", "s4d,lru", "--budget", "2",
                 compare=True).layer_options == {"s4d": {"d_state": 8, "dt_min": 0.01}, "lru": {"d_state": 2}}


def test_train_a_hybrid_with_per_layer_options_on_the_command_line(tmp_path):
    pytest.importorskip("lightning")
    out = tmp_path / "r"
    argv = ["train", *TINY, "--model", "[s4d, lru]", "--n_layers", "2", "--layer_options.s4d.d_state", "4",
            "--layer_options.lru.d_state", "6", "--train.max_steps", "2", "--out", str(out)]
    assert cli_main(argv) == 0  # the layer refused d_state '4' by name
    model = json.loads((out / "model.json").read_text())
    assert model["layer"] == ["s4d", "lru"] and model["layer_options"] == {"s4d": {"d_state": 4}, "lru": {"d_state": 6}}
    alone = SequenceModel(d_input=2, d_model=4, n_layers=2, layer=["s4d", "lru"], d_output=1, head="regress",
                          layer_options={"s4d": {"d_state": 4}, "lru": {"d_state": 6}})
    default = SequenceModel(d_input=2, d_model=4, n_layers=2, layer=["s4d", "lru"], d_output=1, head="regress")
    parameters = json.loads((out / "result.json").read_text())["parameters"]
    assert parameters == alone.num_parameters() != default.num_parameters()


# --- finding 2: tuples in a model config ------------------------------------------------------------------------------

HYBRID = dict(d_input=1, d_model=4, n_layers=2, layer=("s4d", "mamba2"), d_output=2,
              layer_options={"s4d": {"d_state": 2}, "mamba2": {"A_init_range": (1.0, 8.0), "headdim": 4, "d_state": 2}})


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_config_with_tuples_equals_itself_read_back(tmp_path, suffix):
    config = SequenceModelConfig(**HYBRID)
    config.save(tmp_path / f"m{suffix}")
    assert SequenceModelConfig.load(tmp_path / f"m{suffix}") == config  # was False: lists against tuples
    assert config.layer == ["s4d", "mamba2"] and config.layer_options["mamba2"]["A_init_range"] == [1.0, 8.0]
    assert HYBRID["layer_options"]["mamba2"]["A_init_range"] == (1.0, 8.0)  # the caller's dict is not changed


def test_a_resume_with_the_config_read_back_is_accepted(tmp_path):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl

    from ssmkit.train import TrainConfig, fit
    from ssmkit.train.checkpoint import load_checkpoint, save_atomic

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, 1, generator=g), torch.randint(0, 2, (16,), generator=g)
    cfg = TrainConfig(batch_size=8, max_steps=3, warmup_steps=0, val_every=0, checkpoint_every=1)

    class Stop(Exception):
        pass

    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                raise Stop

    with pytest.raises(Stop):
        fit(SequenceModelConfig(**HYBRID), cfg, (x, y), None, None, tmp_path, progress=False,
            extra_callbacks=[StopAt()])
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(last)
    assert checkpoint["global_step"] == 1
    # it is refused, though the config read back from the run's model.json builds the same model: was
    # "model layer: saved ('s4d', 'mamba2'), given ['s4d', 'mamba2']; model layer_options: ..."
    read_back = SequenceModelConfig.load(tmp_path / "model.json")
    assert SequenceModel.from_config(read_back).num_parameters() == SequenceModel.from_config(
        SequenceModelConfig(**HYBRID)).num_parameters()
    # as a checkpoint written before the fix holds them: the config's tuples
    checkpoint["hyper_parameters"]["model"].update(layer=HYBRID["layer"], layer_options=HYBRID["layer_options"])
    save_atomic(checkpoint, last)
    other = SequenceModelConfig(**{**HYBRID, "layer_options": {**HYBRID["layer_options"], "mamba2": {
        **HYBRID["layer_options"]["mamba2"], "A_init_range": (1.0, 4.0)}}})
    with pytest.raises(ValueError, match=r"model layer_options: saved .*'A_init_range': .1.0, 8.0.* given .*"
                                         r"'A_init_range': .1.0, 4.0"):
        fit(other, cfg, (x, y), None, None, tmp_path, resume=True, progress=False)  # a real change is still refused
    result = fit(read_back, cfg, (x, y), None, None, tmp_path, resume=True, progress=False)  # it was refused
    assert result["steps"] == 3 and result["resumed_from"] == str(last)


# --- finding 3: metrics.csv's test rows -------------------------------------------------------------------------------


def test_metrics_csv_names_each_test_as_result_json_does(tmp_path):
    pytest.importorskip("lightning")
    from ssmkit.train import TrainConfig, fit

    g = torch.Generator().manual_seed(1)

    def split(n: int, length: int = 6):
        x = torch.randn(n, length, 1, generator=g)
        return x, (x.sum(dim=(1, 2)) > 0).long()

    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 2})
    cfg = TrainConfig(batch_size=8, max_steps=4, warmup_steps=0, val_every=1, checkpoint_every=0, lr=3e-2,
                      test_weights="best_val")
    result = fit(model, cfg, split(16), split(8), split(8), tmp_path, progress=False,
                 extra_tests={"test@12": split(4, 12)})
    assert result["best_val_step"] < cfg.max_steps  # the two weights differ
    rows = csv_rows(tmp_path / "logs" / "version_0" / "metrics.csv")
    tests = [{k: v for k, v in r.items() if v and k not in ("epoch", "step")} for r in rows if not r.get("train_loss")
             and not r.get("val_loss")]
    # one row per evaluation, in the order run (it was four rows of test_loss and test_accuracy)
    names = [(split_name, weights) for weights in ("_final", "_best_val") for split_name in ("test", "test@12")]
    assert [sorted(r) for r in tests] == [[f"{s}_accuracy{w}", f"{s}_loss{w}"] for s, w in names]
    for row in tests:
        for key, value in row.items():
            assert float(value) == result[key], key
    assert not {"test_loss", "test_accuracy", "test@12_loss"} & set(rows[0])
    assert all(int(r["step"]) == cfg.max_steps for r in rows if not r.get("train_loss") and not r.get("val_loss"))
    # result.json keeps its names: the selected test unsuffixed
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["test_loss"] == record["test_loss_best_val"] != record["test_loss_final"]
    assert record["test@12_accuracy"] == record["test@12_accuracy_best_val"]
