"""Fine-tuning: ``load_weights`` / ``TrainConfig.init_from`` (``ssmkit train --init-from``) and ``freeze_parameters`` /
``TrainConfig.freeze`` (``--freeze``), checked against the source run's checkpoint tensors, a same-seed fresh model,
an independent loss on the first batch, and an uninterrupted run (resume).

Probe of 2026-12-07: a run could only be resumed (same lr, schedule, model), never started from another run's weights;
``model.load_state_dict(ckpt["state_dict"], strict=False)`` loaded nothing (the ``model.`` prefix) and said so only
in its return value, and raised on a head of another size.
"""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")
import lightning.pytorch as pl  # noqa: E402

from ssmkit.cli import main as cli_main  # noqa: E402
from ssmkit.data import get_task  # noqa: E402
from ssmkit.models import SequenceModel, SequenceModelConfig  # noqa: E402
from ssmkit.train import StepBatches, TrainConfig, fit, freeze_parameters, load_weights, param_groups  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402

TASK = {"length": 12, "n_train": 64, "n_val": 32, "n_test": 32}
# the model `ssmkit train --task adding --d_model 8 --n_layers 2 --layer_options '{d_state: 4}'` builds
MODEL = {"d_input": 2, "d_model": 8, "n_layers": 2, "layer": "s4d", "layer_options": {"d_state": 4}}
THREE = {"d_output": 3, "head": "classify"}  # a 3-class head on the same backbone


def splits(**options) -> dict[str, tuple[torch.Tensor, ...]]:
    task = get_task("adding", **{**TASK, **options})
    return {name: tuple(ds.tensors) for name, ds in task.splits().items()}


def classes(split: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The adding task's sums as 3 classes (< 0.8, < 1.2, else): another task with another head on the same inputs."""
    return split[0], torch.bucketize(split[1][:, 0], torch.tensor([0.8, 1.2]))


def config(**head) -> SequenceModelConfig:
    return SequenceModelConfig(**MODEL, **({"d_output": 1, "head": "regress"} | head))


def train_config(**changes) -> TrainConfig:
    base = {"batch_size": 16, "max_steps": 4, "warmup_steps": 0, "val_every": 0, "checkpoint_every": 0, "lr": 1e-2,
            "log_every": 1, "weight_decay": 0.05}
    return TrainConfig(**{**base, **changes})


def ckpt_weights(folder, name="last.ckpt") -> dict[str, torch.Tensor]:
    """A run's model tensors by the model's names (the Lightning module's ``model.`` prefix removed here)."""
    state = load_checkpoint(os.path.join(folder, "checkpoints", name))["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """A regression run on ``adding`` (30 steps, with a validation split: best_val.ckpt too)."""
    out = str(tmp_path_factory.mktemp("transfer") / "source")
    data = splits()
    fit(config(), train_config(max_steps=30, val_every=10, lr=2e-2), data["train"], data["val"], data["test"], out,
        progress=False)
    return out


def fresh(seed: int, **head) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel.from_config(config(**head))


def test_load_weights_loads_every_tensor_and_keeps_another_head_at_its_init(source):
    saved = ckpt_weights(source)
    model, same_seed = fresh(7, **THREE), fresh(7, **THREE)
    report = load_weights(model, source)
    state, init = model.state_dict(), same_seed.state_dict()
    body = [k for k in state if not k.startswith("head.")]
    assert sorted(report.loaded) == sorted(body) and len(body) == len(saved) - 2
    for name in body:  # every parameter and buffer outside the head is the source's, bit for bit
        assert torch.equal(state[name], saved[name]), name
    assert not torch.equal(state["encoder.weight"], init["encoder.weight"])  # (loading changed the model)
    # the head of 3 classes is not the source's (1 output): it is this seed's fresh nn.Linear, U(-1/√H, 1/√H)
    assert report.head_not_loaded == {"head.weight": ((3, 8), (1, 8)), "head.bias": ((3,), (1,))}
    for name in ("head.weight", "head.bias"):
        assert torch.equal(state[name], init[name])
        assert state[name].abs().max() <= 1 / math.sqrt(8) and state[name].std() > 0.05
    line = report.summary()
    assert "\n" not in line and "loaded 24 tensors" in line and "head.weight (3, 8) (source (1, 8))" in line


def test_load_weights_sources_a_file_a_state_dict_and_best_val(source, tmp_path):
    model = fresh(1)
    report = load_weights(model, os.path.join(source, "checkpoints", "best_val.ckpt"))
    best = ckpt_weights(source, "best_val.ckpt")
    assert report.head_not_loaded == {} and report.source_model == config().to_dict()
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, ckpt_weights(source)[k]) for k, v in best.items())  # (another step's weights)
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)  # a plain state_dict file, and the dict itself
    for given in (path, model.state_dict()):
        other = fresh(2)
        load_weights(other, given)
        assert all(torch.equal(v, best[k]) for k, v in other.state_dict().items())
    double = fresh(3).double()  # a float64 model takes the float32 tensors cast, as load_state_dict does
    load_weights(double, source)
    assert double.encoder.weight.dtype == torch.float64
    assert torch.equal(double.encoder.weight, ckpt_weights(source)["encoder.weight"].double())
    with pytest.raises(FileNotFoundError, match=r"init_from: no checkpoint at '.*': a folder, holding none of "
                       r"checkpoints/last.ckpt, model.pt, last.ckpt \(give a run folder"):
        load_weights(fresh(0), tmp_path)


@pytest.mark.parametrize("other, message", [
    ({"layer": "dss"}, r"layer \(source 's4d', this model 'dss'\)"),
    ({"d_model": 16}, r"of another shape: \['encoder.weight \(16, 2\) \(source \(8, 2\)\)'"),
    ({"n_layers": 3}, r"absent from the source: \['blocks.2."),
    ({"n_layers": 1}, r"not in this model: \['blocks.1."),
])
def test_load_weights_refuses_another_model_beyond_the_head(source, other, message):
    model = SequenceModel.from_config(SequenceModelConfig(**{**MODEL, "d_output": 1, "head": "regress", **other}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        load_weights(model, source)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded


def test_load_weights_refuses_another_head_when_asked(source):
    with pytest.raises(ValueError, match=r"head differs .*head.weight \(3, 8\) \(source \(1, 8\)\)"):
        load_weights(fresh(0, **THREE), source, skip_mismatched_head=False)


def groups_by_name(model) -> list[tuple[float, float, list[str]]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
            for g in param_groups(model, lr=3e-3, weight_decay=0.05)]


def test_marks_survive_loading_and_frozen_parameters_leave_the_optimizer(source):
    model = fresh(0, **THREE)
    load_weights(model, source)
    groups = groups_by_name(model)
    assert groups == groups_by_name(fresh(5, **THREE))  # the SSM parameters keep their marks (own lr, no decay)
    marked = sorted(n for n in dict(model.named_parameters()) if n.rsplit(".", 1)[-1] in ("log_dt", "A_real",
                                                                                      "log_A_real", "A_imag", "B"))
    ssm_groups = [g for g in groups if g[0] == 1e-3]  # S4D's mark: lr 0.001, no weight decay
    assert len(ssm_groups) == 1 and ssm_groups[0][1] == 0.0 and ssm_groups[0][2] == marked
    assert sorted(freeze_parameters(model, ["ssm"])) == marked
    assert all(set(names).isdisjoint(marked) for _, _, names in groups_by_name(model))
    assert sum(len(n) for *_, n in groups_by_name(model)) == sum(len(n) for *_, n in groups) - len(marked)
    probe = fresh(0, **THREE)
    frozen = freeze_parameters(probe, ["backbone"])
    assert frozen == [n for n, _ in probe.named_parameters() if not n.startswith("head.")]
    assert groups_by_name(probe) == [(3e-3, 0.05, ["head.weight"]), (3e-3, 0.0, ["head.bias"])]
    with pytest.raises(ValueError, match=r"freeze 'blocks.9': it names no parameter .*'blocks.1'"):
        freeze_parameters(fresh(0), ["blocks.9"])
    with pytest.raises(ValueError, match="leaves no parameter to train"):
        freeze_parameters(fresh(0), ["backbone", "head"])


def test_train_config_checks_init_from_and_freeze():
    assert TrainConfig(freeze="ssm, encoder").frozen_parts() == ["ssm", "encoder"]
    assert TrainConfig().frozen_parts() == []
    for bad in ("", "ssm,", ["backbone"], 3):
        with pytest.raises(ValueError, match="freeze must be None or comma-separated part names"):
            TrainConfig(freeze=bad)
    for bad in ("", 3):
        with pytest.raises(ValueError, match="init_from must be None or a path"):
            TrainConfig(init_from=bad)
    model = fresh(0)
    assert freeze_parameters(model, "blocks.1, head") == [n for n, _ in model.named_parameters()
                                                          if n.startswith(("blocks.1.", "head."))]


def test_fit_from_a_run_with_another_head_trains_the_head_alone(source, tmp_path, capsys):
    data = {k: classes(v) for k, v in splits().items()}
    out = tmp_path / "probe"
    result = fit(config(**THREE), train_config(init_from=source, freeze="backbone", seed=4), data["train"],
                 data["val"], data["test"], out, progress=False)
    err = capsys.readouterr().err
    assert "loaded 24 tensors; the head differs" in err and "head.weight (3, 8) (source (1, 8))" in err
    final, saved, init = ckpt_weights(out), ckpt_weights(source), fresh(4, **THREE).state_dict()
    for name, value in final.items():
        if name.startswith("head."):  # trained from this seed's fresh head (what fit drew after seeding)
            assert not torch.equal(value, init[name]), name
        else:  # frozen: the source's tensors after 4 steps with weight decay 0.05
            assert torch.equal(value, saved[name]), name
    assert result["init_from"] == os.path.abspath(os.path.join(source, "checkpoints", "last.ckpt"))
    assert result["trainable_parameters"] == 3 * 8 + 3
    recorded = json.loads((out / "train.json").read_text())
    assert recorded["init_from"] == source and recorded["freeze"] == "backbone"


def first_logged_loss(out) -> float:
    with open(os.path.join(out, "logs", "version_0", "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss")]
    return float(rows[0]["train_loss"])


def test_fit_from_a_run_starts_at_the_source_loss(source, tmp_path):
    data = splits()
    fit(config(), train_config(init_from=source, max_steps=2, seed=3), data["train"], None, None, tmp_path / "a",
        progress=False)
    x, y = next(iter(StepBatches(data["train"], 16, seed=3)))[:2]  # the run's first batch
    model = fresh(0)
    model.load_state_dict(ckpt_weights(source))  # the source's weights, loaded here by PyTorch itself
    with torch.no_grad():
        at_source = F.mse_loss(model(x)[0].double(), y.double()).item()
        at_init = F.mse_loss(fresh(3)(x)[0].double(), y.double()).item()  # the same run started afresh
    assert first_logged_loss(tmp_path / "a") == pytest.approx(at_source, rel=1e-5)
    assert at_source < 0.5 * at_init, (at_source, at_init)


class StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_resume_of_a_fine_tuned_run_is_the_uninterrupted_run(source, tmp_path):
    data = splits()
    cfg = train_config(init_from=source, freeze="ssm", seed=5)
    fit(config(), cfg, data["train"], None, None, tmp_path / "whole", progress=False)
    fit(config(), cfg, data["train"], None, None, tmp_path / "cut", progress=False, extra_callbacks=[StopAt(2)])
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")["global_step"] == 2
    result = fit(config(), cfg, data["train"], None, None, tmp_path / "cut", resume=True, progress=False)
    whole, cut, saved = ckpt_weights(tmp_path / "whole"), ckpt_weights(tmp_path / "cut"), ckpt_weights(source)
    assert result["steps"] == 4 and all(torch.equal(whole[k], cut[k]) for k in whole)
    changed = [k for k in whole if not torch.equal(whole[k], saved[k])]
    assert changed and not any(k.rsplit(".", 1)[-1] in ("log_dt", "A_real", "A_imag", "B") for k in changed)
    for change, field in (({"freeze": None}, "train freeze"),
                          ({"init_from": str(tmp_path / "whole")}, "train init_from")):
        with pytest.raises(ValueError, match=field):
            fit(config(), train_config(**{**cfg.to_dict(), **change}), data["train"], None, None, tmp_path / "cut",
                resume=True, progress=False)


def test_cli_init_from_and_freeze(source, tmp_path, capsys):
    tiny = ["train", "--task", "adding", "--task_options", "{length: 16, n_train: 32, n_val: 16, n_test: 16}",
            "--model", "s4d", "--d_model", "8", "--n_layers", "2", "--layer_options", "{d_state: 4}",
            "--dropout", "0.1", "--train.batch_size", "16", "--train.max_steps", "2", "--train.warmup_steps", "0",
            "--train.val_every", "0", "--train.checkpoint_every", "0", "--no-progress"]
    assert cli_main(tiny + ["--init-from", source, "--freeze", "backbone", "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert f"initialised from {os.path.join(source, 'checkpoints', 'last.ckpt')}: loaded 26 tensors\n" in captured.err
    recorded = json.loads((tmp_path / "a" / "train.json").read_text())
    assert recorded["init_from"] == source and recorded["freeze"] == "backbone"
    assert json.loads((tmp_path / "a" / "result.json").read_text())["trainable_parameters"] == 8 + 1
    final, saved = ckpt_weights(tmp_path / "a"), ckpt_weights(source)
    assert [k for k in final if not torch.equal(final[k], saved[k])] == ["head.weight", "head.bias"]
    disagreeing = ["--init-from", source, "--train.init_from", str(tmp_path), "--out", str(tmp_path / "b")]
    assert cli_main(tiny + disagreeing) == 2
    assert "disagree: give one" in capsys.readouterr().err and not (tmp_path / "b").exists()
    # compare trains several models: one run's weights fit one of them (the others failed after the first trained)
    assert cli_main(["compare", "--task", "adding", "--task_options", tiny[4], "--d_model", "8", "--n_layers", "2",
                     "--models", "s4d,dss", "--budget", "2", "--train.init_from", source, "--no-progress",
                     "--out", str(tmp_path / "c")]) == 2
    assert "fit one model only" in capsys.readouterr().err and not (tmp_path / "c" / "s4d").exists()


def test_a_folder_stands_for_one_checkpoint_by_the_rule_analyze_follows(tmp_path):
    """init_from and ``ssmkit analyze`` read a folder by one rule (``checkpoint_file``): an ``ssmkit train`` run's
    checkpoints/last.ckpt before a model.pt beside it; an ``ssmkit sysid`` run's model.pt (a DeepWiener) is named as
    such by init_from, which takes SequenceModel weights only (it had said "a run folder without
    checkpoints/last.ckpt")."""
    from ssmkit.analysis.commands import load_model
    from ssmkit.sysid import DeepWiener
    from ssmkit.train.transfer import checkpoint_file

    wiener = DeepWiener(1, 1, d_model=4, n_layers=1, layer_options={"d_state": 2})
    sysid_run = tmp_path / "sysid-run"
    sysid_run.mkdir()
    torch.save(wiener.checkpoint(), sysid_run / "model.pt")
    assert checkpoint_file(sysid_run) == os.path.join(str(sysid_run), "model.pt")
    assert isinstance(load_model(str(sysid_run)), DeepWiener)
    with pytest.raises(ValueError, match=r"is a DeepWiener file \(the model.pt of an 'ssmkit sysid' run\), not the "
                       r"weights of a SequenceModel"):
        load_weights(fresh(0), sysid_run)
    both = tmp_path / "both"
    (both / "checkpoints").mkdir(parents=True)
    model = fresh(1)
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}},
               both / "checkpoints" / "last.ckpt")
    torch.save(wiener.checkpoint(), both / "model.pt")
    assert checkpoint_file(both) == os.path.join(str(both), "checkpoints", "last.ckpt")
    other = fresh(2)
    load_weights(other, both)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())


@pytest.mark.parametrize("bad", ["source", "freeze"])
def test_a_run_that_cannot_start_writes_no_records(tmp_path, bad):
    """A source that cannot be loaded (an ``ssmkit sysid`` folder) or a part that cannot be frozen is refused before
    the run folder gets model.json/train.json (they were written first, and stayed, claiming a run)."""
    from ssmkit.sysid import DeepWiener

    sysid_run = tmp_path / "sysid-run"
    sysid_run.mkdir()
    torch.save(DeepWiener(1, 1, d_model=4, n_layers=1).checkpoint(), sysid_run / "model.pt")
    cfg = train_config(init_from=str(sysid_run)) if bad == "source" else train_config(freeze="nothing_of_that_name")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="is a DeepWiener file" if bad == "source" else "freeze 'nothing_of_that_name'"):
        fit(config(), cfg, splits()["train"], None, None, out, progress=False)
    assert not any(name.endswith(".json") for name in os.listdir(out))
