"""Models in real training code (probe 13): DistributedDataParallel over gloo, and a training run resumed mid-way.

References: one process on the concatenated batch (DDP), the uninterrupted run (resume; bit-identical on the CPU).
"""

from __future__ import annotations

import copy
import gc
import io
import os
import tempfile

import pytest
import torch
import torch.distributed as dist

import ssmkit.layers as layers
from ssmkit.models import SequenceModel
from ssmkit.train import param_groups, warmup_cosine
from tests.conftest import spawn_on_one_core, variants

NAMES = layers.available()


def _model(name: str, seed: int, dtype: torch.dtype, dropout: float = 0.0) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(d_input=2, d_model=3, n_layers=2, layer=name, layer_options=dict(variants(name)[0]),
                         d_output=2, head="regress", pool="mean", dropout=dropout, dtype=dtype)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(4, 13, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)


def _groups(model, groups) -> list[tuple[float, float, list[str]]]:
    """(lr, weight decay, parameter names) of each optimizer group."""
    names = {id(p): n.removeprefix("module.") for n, p in model.named_parameters()}
    return [(g["lr"], g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in groups]


def _ddp_worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    x, y = _data()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    results = {}
    for name in NAMES:
        results[name] = _ddp_case(name, xs, ys)  # its DDP wrappers freed on return, while both processes run
        # a full collection, then the survivors frozen (left out of later collections): each collection scans what
        # its case made, not the heap of torch and torch._dynamo (which DDP imports), 0.2 s a call
        gc.collect()
        gc.freeze()
        dist.barrier()
    if rank == 0:
        torch.save(results, os.path.join(folder, "results.pt"))
    dist.barrier()  # neither process tears the group down while the other may still use it
    dist.destroy_process_group()


def _ddp_case(name: str, xs: torch.Tensor, ys: torch.Tensor) -> dict:
    """One layer's DDP step, save/load and continued step in this process (:func:`_ddp_worker`). A rare hang (rank 1
    still running after rank 0 had exited cleanly, its stack at the call of the worker, i.e. in freeing the worker's
    locals) is most likely the last case's DDP wrappers being destroyed after ``destroy_process_group`` with the peer
    gone; here each case's wrappers are freed at its return, the group alive and both processes at a barrier after."""
    from torch.nn.parallel import DistributedDataParallel

    model = _model(name, 0, torch.float64)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(param_groups(ddp, lr=1e-2, weight_decay=0.1))
    out, _ = ddp(xs)
    ((out - ys) ** 2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    # save the wrapped model and the optimizer, load them into another seed's wrapped model and a fresh optimizer
    buffer = io.BytesIO()
    torch.save({"model": ddp.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    other = DistributedDataParallel(_model(name, 9, torch.float64))
    other_opt = torch.optim.AdamW(param_groups(other, lr=1e-2, weight_decay=0.1))
    other.load_state_dict(saved["model"])
    other_opt.load_state_dict(saved["opt"])
    for m, o in ((ddp, opt), (other, other_opt)):  # one more step on both
        o.zero_grad()
        out, _ = m(xs)
        ((out - ys) ** 2).mean().backward()
        o.step()
    same = all(torch.equal(a, b) for a, b in zip(ddp.state_dict().values(), other.state_dict().values()))
    return {"grads": grads, "groups": _groups(ddp, opt.param_groups),
            "loaded_groups": _groups(other, other_opt.param_groups), "continued_equal": same}


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is "
                    "not available in this PyTorch build")
def test_ddp_on_two_processes_equals_one_process_on_the_whole_batch():
    with tempfile.TemporaryDirectory() as folder:  # two processes on one core
        spawn_on_one_core(_ddp_worker, (2, folder), 2, "the two DDP processes")
        results = torch.load(os.path.join(folder, "results.pt"), weights_only=True)
    x, y = _data()
    for name in NAMES:
        model = _model(name, 0, torch.float64)
        out, _ = model(x)
        ((out - y) ** 2).mean().backward()
        got = results[name]
        for n, p in model.named_parameters():  # the all-reduced mean of the halves' gradients = the whole batch's
            assert (got["grads"][n] - p.grad).abs().max() <= 1e-12 * p.grad.abs().max().clamp_min(1e-300), (name, n)
        expected = _groups(model, param_groups(model, lr=1e-2, weight_decay=0.1))
        assert len(expected) >= 2 and got["groups"] == expected and got["loaded_groups"] == expected, name
        assert got["continued_equal"], name


def _train(model, opt, sched, steps, batches, evaluate: bool) -> None:
    for s in steps:
        model.train()
        x, y = batches[0][s], batches[1][s]
        out, _ = model(x)
        loss = ((out - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if evaluate:  # a validation pass: fills the step and plan caches with the current weights
            model.eval()
            with torch.no_grad():
                model(batches[0][0])


def _optimizer(model):
    opt = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.05))
    return opt, warmup_cosine(opt, 2, 6)


@pytest.mark.parametrize("name", NAMES)
def test_a_plain_training_loop_resumed_from_a_checkpoint_is_bit_identical(name):
    # float32, dropout, AdamW over the SSM groups, warm-up + cosine, a validation pass after every step; the resumed
    # model is another seed's whose caches hold its own weights when the checkpoint is loaded
    g = torch.Generator().manual_seed(3)
    batches = (torch.randn(6, 4, 17, 2, generator=g), torch.randn(6, 4, 2, generator=g))
    whole = _model(name, 0, torch.float32, dropout=0.1)
    opt, sched = _optimizer(whole)
    torch.manual_seed(11)
    _train(whole, opt, sched, range(6), batches, evaluate=True)
    first = _model(name, 0, torch.float32, dropout=0.1)
    opt, sched = _optimizer(first)
    torch.manual_seed(11)
    _train(first, opt, sched, range(3), batches, evaluate=True)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": torch.get_rng_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(name, 7, torch.float32, dropout=0.1)
    resumed.eval()
    with torch.no_grad():
        resumed(batches[0][0])
    opt, sched = _optimizer(resumed)
    resumed.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    torch.set_rng_state(saved["rng"])
    _train(resumed, opt, sched, range(3, 6), batches, evaluate=True)
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.weight"], _model(name, 0, torch.float32).state_dict()["encoder.weight"])


@pytest.mark.parametrize("L", [5, 3])  # L = 3 = d_model: the case a batch norm over the wrong axis did not refuse
def test_sync_batchnorm_conversion_keeps_normalising_the_channels(L, monkeypatch):
    # nn.SyncBatchNorm.convert_sync_batchnorm (DDP with batch norm) replaces every batch norm by a plain SyncBatchNorm;
    # Block's norm was a BatchNorm1d subclass that transposed (B, L, H) itself, so the replacement normalised over time
    # (L != H: an error; L == H: silently wrong). SyncBatchNorm runs on GPUs only; on one process its math is
    # BatchNorm1d's, which stands in for it here.
    monkeypatch.setattr(torch.nn.SyncBatchNorm, "forward", torch.nn.BatchNorm1d.forward)
    monkeypatch.setattr(torch.nn.SyncBatchNorm, "_check_input_dim", lambda self, x: None)
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=3, n_layers=2, layer="s4d", layer_options={"d_state": 4}, d_output=2,
                          head="regress", pool=None, norm="batch", dtype=torch.float64)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert all(type(block.norm) is torch.nn.SyncBatchNorm for block in converted.blocks)
    assert converted.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(4, L, 2, dtype=torch.float64)
    expected, got = model(x)[0], converted(x)[0]
    assert torch.allclose(got, expected, rtol=0, atol=1e-13)
    expected.square().sum().backward()
    got.square().sum().backward()
    for (n, p), q in zip(model.named_parameters(), converted.parameters()):
        assert torch.allclose(q.grad, p.grad, rtol=0, atol=1e-12), n
    for block, other in zip(model.blocks, converted.blocks):
        assert torch.allclose(other.norm.running_var, block.norm.running_var, rtol=0, atol=1e-15)
    model.eval(), converted.eval()
    assert torch.allclose(converted(x)[0], model(x)[0], rtol=0, atol=1e-13)
