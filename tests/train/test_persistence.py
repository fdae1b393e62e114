"""Every checkpoint a run writes loads three ways with the same weights: ``torch.load(weights_only=True)`` and a strict
load into a model built from its ``hyper_parameters``, ``ssmkit analyze``'s ``load_model``, and Lightning's
``SequenceLightningModule.load_from_checkpoint``. The last raised ``KeyError: 'pytorch-lightning_version'`` on
``best_val.ckpt``, which ssmkit writes itself (docs/design.md, Probe 15).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("lightning")

from ssmkit.analysis.commands import load_model  # noqa: E402
from ssmkit.models import SequenceModel, SequenceModelConfig  # noqa: E402
from ssmkit.train import TrainConfig, fit  # noqa: E402
from ssmkit.train.module import SequenceLightningModule  # noqa: E402


def test_every_checkpoint_of_a_run_loads_with_its_weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, 1, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long()
    config = SequenceModelConfig(d_input=1, d_model=8, n_layers=2, layer="s4d", d_output=2,
                                 layer_options={"d_state": 4})
    train = TrainConfig(batch_size=8, max_steps=6, warmup_steps=1, val_every=2, checkpoint_every=3, lr=1e-2)
    result = fit(config, train, (x[:48], y[:48]), (x[48:], y[48:]), None, str(tmp_path), progress=False)
    folder = tmp_path / "checkpoints"
    names = sorted(os.listdir(folder))
    assert "best_val.ckpt" in names and "last.ckpt" in names
    probe = torch.randn(3, 20, 1)
    outputs = {}
    for name in names:
        path = str(folder / name)
        saved = torch.load(path, weights_only=True)
        reference = SequenceModel.from_config(SequenceModelConfig.from_dict(saved["hyper_parameters"]["model"]))
        reference.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()}, strict=True)
        with torch.no_grad():
            want = reference.eval()(probe)[0]
            lightning = SequenceLightningModule.load_from_checkpoint(path, map_location="cpu").eval()
            assert torch.equal(lightning.model(probe)[0], want), name
            assert torch.equal(load_model(path)(probe)[0], want), name
        outputs[name] = want
    # best_val holds the weights of its step: the end of the run's when the best validation was the last one
    assert torch.equal(outputs["best_val.ckpt"], outputs["last.ckpt"]) == (result["best_val_step"] == 6)
