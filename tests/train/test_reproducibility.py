"""Reproducible training (probe 17): the same seed gives the same losses and weights, and a run stopped and resumed
gives the weights of an uninterrupted one even when the data transform draws random numbers (an augmentation)."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402

from ssmkit.models import SequenceModelConfig  # noqa: E402
from ssmkit.train import StepBatches, TrainConfig, eval_batches, fit  # noqa: E402
from ssmkit.train.batches import seeded_rngs  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402

X = torch.randn(48, 10, 1, generator=torch.Generator().manual_seed(0))
Y = (X.sum(dim=(1, 2)) > 0).long()
MODEL = SequenceModelConfig(d_input=1, d_model=6, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 4},
                            dropout=0.2)


def augment(batch):
    """Noise from all three global generators (torch, numpy, Python), as a user's augmentation might draw it."""
    x, y = batch
    noise = torch.randn(x.shape) + torch.from_numpy(np.random.standard_normal(x.shape).astype(np.float32))
    return x + 0.1 * noise + 0.01 * random.random(), y


def _config(seed: int = 0) -> TrainConfig:
    return TrainConfig(batch_size=8, max_steps=8, warmup_steps=1, val_every=0, checkpoint_every=3, lr=1e-2,
                       log_every=1, seed=seed)


def _weights(out) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]


def _losses(out) -> list[str]:
    with open(out / "logs" / "version_0" / "metrics.csv") as f:
        return [row["train_loss"] for row in csv.DictReader(f) if row.get("train_loss")]


class _Stop(Exception):
    pass


class _StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise _Stop  # the run ends here; its last checkpoint is the one of step 3


def test_the_same_seed_gives_the_same_losses_and_weights_and_another_seed_others(tmp_path):
    runs = {name: fit(MODEL, _config(seed), (X, Y), None, None, tmp_path / name, progress=False, transform=augment)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    assert all(r["steps"] == 8 for r in runs.values())
    # the record names what a bit-exact rerun must match: the thread count and torch version
    assert f"torch {torch.__version__}, {torch.get_num_threads()} threads" in runs["a"]["machine"]
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on the CPU
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert len(_losses(tmp_path / "a")) == 8 and _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert _losses(tmp_path / "a") != _losses(tmp_path / "c")


def test_a_run_with_a_random_augmentation_resumes_exactly(tmp_path):
    # before probe 17: weights 4e-3 apart. Lightning fetches batch s + 1 before step s's checkpoint is written, so the
    # torch RNG state in the checkpoint already held that batch's draws; numpy's and Python's were not saved at all
    fit(MODEL, _config(), (X, Y), None, None, tmp_path / "whole", progress=False, transform=augment)
    with pytest.raises(_Stop):
        fit(MODEL, _config(), (X, Y), None, None, tmp_path / "cut", progress=False, transform=augment,
            extra_callbacks=[_StopAt(5)])
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")["global_step"] == 3
    resumed = fit(MODEL, _config(), (X, Y), None, None, tmp_path / "cut", resume=True, progress=False, transform=augment)
    assert resumed["resumed_from"] is not None and resumed["steps"] == 8
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seeded_rngs_is_a_function_of_its_key_and_restores_the_global_generators():
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()

    def draw(*key):
        with seeded_rngs(*key):
            return torch.rand(3).tolist() + np.random.random_sample(3).tolist() + [random.random()]

    first = draw(1, 2, 3)
    assert draw(1, 2, 3) == first and draw(1, 2, 4) != first and draw(-1, 2, 3) != first  # negative ints accepted
    assert len(set(first)) == 7  # three different generators, each seeded
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]
    with pytest.raises(ZeroDivisionError), seeded_rngs(5):
        torch.rand(2)
        1 / 0
    assert torch.equal(torch.get_rng_state(), before[0])  # restored on an exception too


def test_a_random_transform_is_a_function_of_seed_step_and_rank():
    def batches(seed, start_step=0, rank=0, world_size=1):
        stream = iter(StepBatches((X, Y), 4, seed=seed, start_step=start_step, rank=rank, world_size=world_size,
                                  transform=augment))
        return [next(stream)[0] for _ in range(5 - start_step)]

    torch.manual_seed(0)
    state = torch.get_rng_state()
    whole = batches(3)
    assert torch.equal(torch.get_rng_state(), state)  # building batches leaves dropout's stream alone
    torch.manual_seed(99)  # another global state: the same batches
    resumed = batches(3, start_step=2)
    assert all(torch.equal(u, v) for u, v in zip(whole[2:], resumed))
    assert not torch.equal(batches(4)[0], whole[0])
    # the two ranks of a data-parallel run draw different noise: no rank repeats another's augmentation
    ranks = [batches(3, rank=r, world_size=2)[0] for r in (0, 1)]
    idx = [StepBatches((X, Y), 4, seed=3, rank=r, world_size=2).indices(0) for r in (0, 1)]
    assert not torch.equal(ranks[0] - X[idx[0]], ranks[1] - X[idx[1]])
    # evaluation batches: the same every time, and the global streams untouched
    state = torch.get_rng_state()
    first = eval_batches((X, Y), 16, transform=augment)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(5)
    second = eval_batches((X, Y), 16, transform=augment)
    assert all(torch.equal(u[0], v[0]) for u, v in zip(first, second))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: dropout on a GPU draws from the CUDA generator")
def test_checkpoints_carry_the_cuda_generator_of_the_model():
    # before probe 17 only the CPU generator was saved: a resumed GPU run drew other dropout masks
    from ssmkit.train.module import SequenceLightningModule

    module = SequenceLightningModule(MODEL, _config()).cuda()
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    expected = torch.rand(5, device="cuda")
    torch.rand(7, device="cuda")  # the stream moves on
    module.on_load_checkpoint(checkpoint)
    assert torch.equal(torch.rand(5, device="cuda"), expected)
    # a random transform's seeding leaves the CUDA stream alone (torch.manual_seed would reseed it every batch)
    state = torch.cuda.get_rng_state()
    with seeded_rngs(1, 2):
        torch.rand(3)
    assert torch.equal(torch.cuda.get_rng_state(), state)


def test_batch_order_inside_a_meta_default_device_block_is_the_order_outside_it():
    # StepBatches' permutation (a CPU generator's randperm), positions and index buffer, and eval_batches' shard, were
    # made on a `with torch.device(...)` block's device: in a meta block the step's indices came out meta and failed
    # ("aten::_unique2 ... Meta tensors"). The order is a function of (seed, epoch) alone, in the block or not.
    x, y = torch.randn(10, 5, 2), torch.randint(0, 3, (10,))
    want = [StepBatches([x, y], batch_size=4, seed=1).indices(s) for s in range(4)]  # 16 draws: crosses an epoch
    with torch.device("meta"):
        got = [StepBatches([x, y], batch_size=4, seed=1).indices(s) for s in range(4)]
        shard = eval_batches([x, y], batch_size=3, rank=1, world_size=2)
    g = torch.Generator().manual_seed(1 * 1_000_003 + 0)
    first_epoch = torch.randperm(10, generator=g)
    assert torch.equal(want[0], first_epoch[:4]) and torch.equal(want[1], first_epoch[4:8])
    assert all(t.device.type == "cpu" and torch.equal(t, w) for t, w in zip(got, want))
    assert [b[0].device.type for b in shard] == ["cpu", "cpu"]
    assert torch.equal(torch.cat([b[0] for b in shard]), x[1::2])
