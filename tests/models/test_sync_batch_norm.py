"""``SyncBatchNorm`` in a Block (``nn.SyncBatchNorm.convert_sync_batchnorm`` for distributed training): over several
processes it takes its statistics over every process's tokens, padding left out, on the CPU too (torch's module counts
the padding, and refuses CPU inputs outright). The reference is one process running the unconverted model on the whole
batch: its outputs, its gradients of a loss summed over the batch, and its running statistics after the step."""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from ssmkit.models import SequenceModel
from tests.conftest import spawn_on_one_core

WORLD = 2
PAD = 0


def _model() -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(d_input=1, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4}, d_output=3,
                         head="classify", pool="mean", norm="batch", vocab_size=7, pad_id=PAD, dtype=torch.float64)


def _dense_model() -> SequenceModel:
    torch.manual_seed(1)
    return SequenceModel(d_input=2, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4}, d_output=3,
                         head="regress", pool="mean", norm="batch", dtype=torch.float64)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded token ids (4, 9) with lengths 9, 3, 6, 1 (padding trails), float inputs (4, 9, 2), and the loss weights
    of each model's outputs."""
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, 7, (4, 9), generator=g)
    for i, n in enumerate((9, 3, 6, 1)):
        tokens[i, n:] = PAD
    x = torch.randn(4, 9, 2, generator=g, dtype=torch.float64)
    return tokens, x, torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g,
                                                                                      dtype=torch.float64)


def _run(model, inputs, weights) -> dict[str, torch.Tensor]:
    """Outputs, gradients of Σ weights ⊙ outputs, and running statistics after one training forward."""
    model.train()
    out, _ = model(inputs, return_state=False)
    (out * weights).sum().backward()
    result = {"out": out.detach()}
    result.update({f"grad {n}": p.grad.clone() for n, p in model.named_parameters()})
    result.update({f"buffer {n}": b.clone() for n, b in model.named_buffers()})
    return result


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    tokens, x, w_tokens, w_dense = _batch()
    rows = slice(2 * rank, 2 * rank + 2)  # two sequences each
    results = {}
    for key, model, inputs, weights in (("tokens", _model(), tokens, w_tokens), ("dense", _dense_model(), x, w_dense)):
        synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        got = _run(synced, inputs[rows], weights[rows])
        for name, value in got.items():  # gradients: the sum over the processes (a loss summed over the whole batch)
            if name.startswith("grad "):
                dist.all_reduce(value)
        results[key] = got
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is "
                    "not available in this PyTorch build")
def test_sync_batch_norm_over_two_processes_equals_the_whole_batch_in_one():
    with tempfile.TemporaryDirectory() as folder:  # both workers on one core
        spawn_on_one_core(_worker, (folder,), WORLD, "the two processes")
        ranks = [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]
    tokens, x, w_tokens, w_dense = _batch()
    for key, model, inputs, weights in (("tokens", _model(), tokens, w_tokens), ("dense", _dense_model(), x, w_dense)):
        want = _run(model, inputs, weights)  # the unconverted model on the whole batch: plain batch norm, masked
        assert torch.cat([ranks[r][key]["out"] for r in range(WORLD)]).sub(want["out"]).abs().max() < 1e-12, key
        for name, value in want.items():
            if name == "out":
                continue
            for r in range(WORLD):  # each process holds the summed gradients and the same running statistics
                err = (ranks[r][key][name] - value).abs().max().item()
                assert err < 1e-12, (key, name, r, err)
        assert any(n.startswith("buffer ") and "running_var" in n for n in want), "the model has no batch norm"


def test_sync_batch_norm_in_one_process_leaves_the_padding_out():
    # without torch.distributed, a converted model trains like the plain one: masked statistics (before: the
    # SyncBatchNorm counted the padding, its logits off the unconverted model's)
    tokens, _, weights, _ = _batch()
    plain = _model()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    want, got = _run(plain, tokens, weights), _run(synced, tokens, weights)
    for name, value in want.items():
        assert (got[name] - value).abs().max() < 1e-12, name
    # the padding matters: the statistics over every position differ
    unmasked = _model()
    unmasked.pad_id = None
    assert (_run(unmasked, tokens, weights)["out"] - want["out"]).abs().max() > 1e-3
