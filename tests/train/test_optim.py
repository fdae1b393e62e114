"""Optimizer groups from the layers' _optim marks."""

import pytest
import torch

from ssmkit.layers import build, optim_marks, register_ssm_parameter
from ssmkit.models import SequenceModel
from ssmkit.train import param_groups


def test_groups_follow_marks(capsys):
    model = SequenceModel(2, 8, 2, "s4d", {"d_state": 4, "lr": 1e-3}, 1)
    groups = param_groups(model, lr=1e-2, weight_decay=0.1, verbose=True)
    # decayed weights, then norms and biases without decay, then the SSM parameters with their marks
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-2, 0.1), (1e-2, 0.0), (1e-3, 0.0)]
    ssm = {id(p) for p in groups[2]["params"]}
    for name, p in model.named_parameters():
        is_ssm = name.split(".")[-1] in {"log_dt", "log_A_real", "A_imag", "B"}
        assert (id(p) in ssm) == is_ssm, name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    out = capsys.readouterr().out
    assert out.count("param group") == 3 and "lr=0.001, weight_decay=0" in out
    torch.optim.AdamW(groups)  # accepted by a real optimizer


def test_global_lr_mark_and_frozen_parameters():
    layer = build("s4d", d_model=3, d_state=4, lr=None)
    groups = param_groups(layer, lr=5e-3, weight_decay=0.05)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(5e-3, 0.05), (5e-3, 0.0)]
    frozen = build("s4d", d_model=3, d_state=4, lr=0.0)
    names = {n for n, _ in frozen.named_parameters()}
    assert names == {"C", "D"}
    assert {"log_dt", "log_A_real", "A_imag", "B"} <= {n for n, _ in frozen.named_buffers()}
    module = torch.nn.Module()
    register_ssm_parameter(module, "w", torch.zeros(2), lr=2e-4, weight_decay=0.01)
    assert optim_marks(module) == {"w": {"lr": 2e-4, "weight_decay": 0.01}}
    assert [(g["lr"], g["weight_decay"]) for g in param_groups(module, lr=1.0, weight_decay=0.5)] == [(2e-4, 0.01)]


def test_bad_settings():
    layer = build("s4d", d_model=3, d_state=4)
    with pytest.raises(ValueError, match="lr must be > 0"):
        param_groups(layer, lr=0.0, weight_decay=0.0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        param_groups(layer, lr=1e-3, weight_decay=-1.0)
