"""End to end through ``run_experiment``: LRA retrieval pairs (fixture TSV files) train a dual encoder, and the
induction-heads task's longer test lengths are each scored and tabulated."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("lightning")

from ssmkit.models.dual import DualEncoderHead  # noqa: E402
from ssmkit.train import TrainConfig  # noqa: E402
from ssmkit.train.commands import results_table  # noqa: E402
from ssmkit.train.experiment import Experiment, run_experiment  # noqa: E402
from ssmkit.train.module import SequenceLightningModule  # noqa: E402

TINY = TrainConfig(batch_size=4, max_steps=3, warmup_steps=1, val_every=0, checkpoint_every=0, lr=1e-2)


def write_aan(root, n=8):
    folder = root / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    for split in ("train", "eval", "test"):
        rows = [f"{i % 2}\tdoc{i}\tdoc{i + 1}\tb'paper {i} on topic {i % 3}'\tcited text {i * 7}" for i in range(n)]
        (folder / f"new_aan_pairs.{split}.tsv").write_text("\n".join(rows) + "\n")


def test_retrieval_trains_a_dual_encoder_end_to_end(tmp_path, monkeypatch):
    write_aan(tmp_path / "data")
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))
    experiment = Experiment(task="lra_retrieval", task_options={"l_max": 16}, model="s4d", d_model=8, n_layers=1,
                            layer_options={"d_state": 4}, train=TINY)
    result = run_experiment(experiment, str(tmp_path / "run"), progress=False)
    assert result["steps"] == 3 and math.isfinite(result["test_loss"]) and 0 <= result["test_accuracy"] <= 1
    # two documents a pair, their padding (pad id 0) not counted: between the fewest and the most tokens of a pair
    from ssmkit.data import get_task

    x_train = get_task("lra_retrieval", l_max=16).splits(tmp_path / "data")["train"].tensors[0]  # (n, 2, 16)
    per_pair = (x_train != 0).sum(dim=(1, 2))
    assert per_pair.min() < 2 * 16  # the short documents are padded
    ratio = result["tokens_per_second"] / result["samples_per_second"]
    assert per_pair.min() - 1e-9 <= ratio <= per_pair.max() + 1e-9
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["pair"] is True and model["pad_id"] == 0 and model["head"] == "classify"
    module = SequenceLightningModule(model, TINY)
    assert isinstance(module.model.head, DualEncoderHead)
    x = torch.randint(1, 257, (3, 2, 16))
    assert module(x).shape == (3, 2)


def test_induction_heads_scores_every_longer_test_length(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))
    experiment = Experiment(task="induction_heads", model="s4d", d_model=8, n_layers=1, layer_options={"d_state": 4},
                            task_options={"train_length": 12, "test_lengths": [24, 16], "vocab_size": 6,
                                          "n_train": 32, "n_val": 8, "n_test": 8},
                            pool=None, train=TINY)
    result = dict(run_experiment(experiment, str(tmp_path / "run"), progress=False), model="s4d")
    for key in ("test@16_accuracy", "test@24_accuracy", "test@16_loss", "val_accuracy", "test_accuracy"):
        assert key in result and math.isfinite(result[key]), key
    assert result["test@24_accuracy"] == result["test_accuracy"]  # "test" is the longest length
    table = results_table([result])
    header = table.splitlines()[0]
    assert header.index("test@16_accuracy") < header.index("test@24_accuracy") < header.index("parameters")
    assert f"{100 * result['test@16_accuracy']:.2f} %" in table.splitlines()[2]
