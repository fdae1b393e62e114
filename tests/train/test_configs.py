"""The shipped experiment configs (src/ssmkit/configs): every one parses through ``ssmkit train``'s typed parser,
names a registered task, and builds its model at the config's sizes (one block on the meta device: every block has
the same options, so one block checks them all without the cost of allocating the whole model)."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os

import pytest
import yaml

from ssmkit.data import available_tasks, get_task
from ssmkit.layers.registry import layer_class
from ssmkit.models import SequenceModel
from ssmkit.train.commands import (
    _experiment, _parser, _resolve_config_args, configs_main, resolve_config, shipped_configs,
)
from ssmkit.train.experiment import Experiment

CONFIGS = shipped_configs()
LRA_CELLS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
LRA_MODELS = ("s4", "s4d", "dss", "s5", "lru", "mega", "liquid_s4", "sgconv")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_every_lra_cell_and_sequential_mnist_is_shipped():
    expected = {f"lra/{cell}-{model}" for cell in LRA_CELLS for model in LRA_MODELS}
    expected |= {"sequential/smnist-s4", "sequential/psmnist-s4"}
    assert expected <= set(CONFIGS), sorted(expected - set(CONFIGS))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_parses_and_builds(name):
    path = resolve_config(name)
    text = open(path).read()
    assert "# Source: " in text and "# Not mapped" in text, "every config names its source and what is not mapped"
    parser = _parser("ssmkit train", compare=False)
    experiment = _experiment(parser, parser.parse_args(_resolve_config_args(["--config", name])))
    assert experiment == Experiment(**yaml.safe_load(text))  # the CLI reads exactly the file's values
    assert experiment.task in available_tasks()
    options = experiment.layer_options
    signature = inspect.signature(layer_class(experiment.model).__init__).parameters
    assert set(options) <= set(signature), sorted(set(options) - set(signature))
    info = get_task(experiment.task, **experiment.task_options).info()
    one_block = dataclasses.replace(experiment, n_layers=1)
    model = SequenceModel.from_config(one_block.model_config(info), device="meta")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert experiment.train.max_steps > experiment.train.warmup_steps >= 0


def test_configs_command_lists_them(capsys):
    assert configs_main([]) == 0
    assert capsys.readouterr().out.split() == CONFIGS


def test_shipped_files_match_their_generator():
    """The YAML files are written by scripts/make_configs.py from its table of sources: edit the table, not the
    files."""
    spec = importlib.util.spec_from_file_location("make_configs", os.path.join(ROOT, "scripts", "make_configs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, (head, exp) in module.build_all().items():
        text = open(resolve_config(name)).read()
        assert text.startswith(head), name
        assert yaml.safe_load(text) == exp, name


@pytest.mark.parametrize("name", CONFIGS)
def test_config_tests_at_the_best_validation_as_its_source(name):
    # every source selects its reported test number on validation (S4 codebase: best val/accuracy checkpoint, test
    # logged at every validation; S5 and minimal-LRU: the test of the first best validation epoch; Mega:
    # checkpoint_best.pt by validation accuracy); docs/design.md, "besttest"
    text = open(resolve_config(name)).read()
    assert yaml.safe_load(text)["train"]["test_weights"] == "best_val"
    assert "# Test: at the best validation (test_weights: best_val" in text
