"""Probe of 2026-12-05: three gaps that earlier probes noticed and left, each against an independent reference.

Found (fixed in src/ssmkit/train/module.py, src/ssmkit/layers/cache.py and src/ssmkit/bench/limits.py):

1. *Under DDP the logged ``train_loss`` was process 0's share of the batch* (Lightning's ``self.log`` without sync):
   ``metrics.csv`` and the progress bar showed a number that depends on the number of processes. A 2-process gloo run
   (an ``"lm"`` head with masked targets: the processes score 16 and 19 of the 35 tokens at the first logged step,
   16 and 23 of 39 at the second) logged 1.7860 and 1.8790 (accuracy 0.1875 and 0.0) where the loss of the whole
   batch of 6 sequences, recomputed here in one process from the recorded weights and batches, is 1.6591 and 1.7011
   (accuracy 0.2286 and 0.1795). Lightning's ``sync_dist=True`` logged 1.6691 and 1.7282 (accuracy 0.2253, 0.1522),
   the unweighted mean of the processes' means, and added two all-reduces per step (three per step in all, on every
   step, logged or not). Now the training step's one all-reduce, which it already ran to stop every process together
   on a non-finite loss, also sums the processes' loss, metric and count, and the module logs the sums' ratio: the
   whole batch's mean (1.6591 and 1.7011 logged, to float32 round-off), with one all-reduce per step as before.
2. *Inside a ``frozen_parameters()`` block, ``model.double()`` made the next ``step`` raise* (S4D, S5, H3, LRU, DSS,
   DLR, EMA, Mega: "linalg.vecdot: Expected x and y to have the same dtype", "weight must have x's dtype"): the block
   trusts the parameter objects it checked once, and a conversion keeps each ``Parameter`` object and swaps its
   memory, so the caches served the float32 matrices. A PyTorch user expects a converted model to run, so now the
   block trusts an object only on the memory it had (``data_ptr``): a conversion (new memory) is compared again and
   recomputed. The outputs of ``.double()``, ``.to(torch.float64)`` and ``.to(torch.float32)`` inside the block now
   equal those of the same model converted outside any block, for every layer with a step.
3. *The LTI step bound of ``ssmkit bench cases`` counted N reals of state per channel for every LTI layer*: tested in
   tests/probes/test_probe_bench_bounds_2026_12_05.py (finding 3 there, with the numbers before and after).
"""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.layers import frozen_parameters
from tests.conftest import DEVICE, H, make_layer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ------------------------------------------------------------------------------------------ 1. train_loss under DDP

V = 5  # the vocabulary of the "lm" head
MODEL = dict(d_input=1, d_model=8, n_layers=1, layer="s4d", d_output=V, head="lm", pool=None,
             layer_options={"d_state": 4})

# Two gloo processes of 3 sequences each, 4 steps, metrics written every 2 (at steps 1 and 3). Each process records,
# at each step's start, its batch and the weights, and counts the all-reduces its training step makes.
DDP_RUN = textwrap.dedent(
    f"""
    import os, sys
    import torch
    import torch.distributed as dist
    import lightning.pytorch as pl
    from ssmkit.models import SequenceModelConfig
    from ssmkit.train import TrainConfig, fit

    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n, L, V = 24, 10, {V}
    x = torch.randn(n, L, 1, generator=g)
    y = torch.randint(0, V, (n, L), generator=g)
    # sample i scores about a fraction 0.1 + 0.85 i / (n - 1) of its tokens, and its last one: unequal counts per process
    y[torch.rand(n, L, generator=g) > torch.linspace(0.1, 0.95, n)[:, None]] = -100
    y[:, -1] = torch.randint(0, V, (n,), generator=g)

    calls = [0]
    all_reduce = dist.all_reduce

    def counted(*args, **kwargs):
        calls[0] += 1
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counted  # Lightning's reductions call it by attribute

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            calls[0] = 0
            weights = {{k: v.clone() for k, v in module.model.state_dict().items()}}
            torch.save({{"x": batch[0], "y": batch[1], "weights": weights}},
                       os.path.join(out_dir, f"step{{trainer.global_step}}-rank{{trainer.global_rank}}.pt"))

        def on_before_backward(self, trainer, module, loss):  # the training step has run
            with open(os.path.join(out_dir, f"reductions-rank{{trainer.global_rank}}.txt"), "a") as f:
                f.write(f"{{trainer.global_step}} {{calls[0]}}\\n")

    model = SequenceModelConfig(**{MODEL!r})
    train = TrainConfig(batch_size=3, max_steps=4, warmup_steps=1, lr=0.05, log_every=2, devices=2, strategy="ddp",
                        checkpoint_every=4)
    fit(model, train, (x, y), None, None, out_dir, progress=False, extra_callbacks=[Record()])
    """
)


def scored(net, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
    """Mean cross-entropy and accuracy over the tokens with a target (!= -100), in float64, and their count."""
    with torch.no_grad():
        logits = net(x.double(), return_state=False)[0].reshape(-1, V)
    target = y.reshape(-1)
    keep = target != -100
    loss = -torch.log_softmax(logits[keep], -1).gather(1, target[keep, None]).mean()
    accuracy = (logits[keep].argmax(-1) == target[keep]).double().mean()
    return float(loss), float(accuracy), int(keep.sum())


@pytest.mark.slow
def test_ddp_logs_the_loss_and_accuracy_of_the_whole_batch_with_one_all_reduce_per_step(tmp_path):
    pytest.importorskip("lightning")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    from ssmkit.models import SequenceModel, SequenceModelConfig

    script, out = tmp_path / "run.py", tmp_path / "ddp"
    script.write_text(DDP_RUN)
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "logs" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss")]
    assert [int(r["step"]) for r in rows] == [1, 3]  # log_every 2
    for row in rows:
        step = int(row["step"])
        parts = [torch.load(out / f"step{step}-rank{rank}.pt") for rank in (0, 1)]
        for k, w in parts[0]["weights"].items():  # DDP keeps the processes' weights equal
            assert torch.equal(w, parts[1]["weights"][k]), k
        net = SequenceModel.from_config(SequenceModelConfig(**MODEL))
        net.load_state_dict(parts[0]["weights"])
        net.double()
        loss, accuracy, count = scored(net, torch.cat([p["x"] for p in parts]), torch.cat([p["y"] for p in parts]))
        own = [scored(net, p["x"], p["y"]) for p in parts]
        # the processes score different numbers of tokens, so the mean of their means is not the batch's mean
        assert own[0][2] != own[1][2] and own[0][2] + own[1][2] == count
        assert float(row["train_loss"]) == pytest.approx(loss, rel=1e-6), step
        assert float(row["train_accuracy"]) == pytest.approx(accuracy, rel=1e-6), step
        # what was logged before (process 0's share) and what sync_dist=True logs (the unweighted mean of the
        # processes' means) are both off by far more than the tolerance
        assert abs(own[0][0] - loss) > 1e-2 * loss and abs((own[0][0] + own[1][0]) / 2 - loss) > 1e-3 * loss
    for rank in (0, 1):  # the training step's one all-reduce (the stop decision with the sums), every step
        lines = (out / f"reductions-rank{rank}.txt").read_text().split()
        assert lines == ["0", "1", "1", "1", "2", "1", "3", "1"]


# ------------------------------------------------------------------------- 2. conversions inside frozen_parameters

STEP_LAYERS = [name for name in layers.available() if make_layer(name).supports("step")]
CONVERSIONS = {  # (dtype built in, conversion, dtype after)
    "double()": (torch.float32, lambda m: m.double(), torch.float64),
    "to(float64)": (torch.float32, lambda m: m.to(torch.float64), torch.float64),
    "to(float32)": (torch.float64, lambda m: m.to(torch.float32), torch.float32),
}


def steps(layer, x: torch.Tensor):
    """The outputs of ``step`` over x (B, L, H) from the initial state, stacked: (B, L, H), and the final state."""
    h, ys = layer.initial_state(x.shape[0]), []
    for x_t in x.unbind(1):
        y_t, h = layer.step(x_t, h)
        ys.append(y_t)
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("conversion", list(CONVERSIONS))
@pytest.mark.parametrize("name", STEP_LAYERS)
def test_a_model_converted_inside_frozen_parameters_steps_as_one_converted_outside(name, conversion):
    start, convert, end = CONVERSIONS[conversion]
    layer = make_layer(name, dtype=start)
    outside = convert(copy.deepcopy(layer))
    x = torch.randn(2, 6, H, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        want, h_want = steps(outside, x.to(end))  # no block: every lookup compares the values
        with frozen_parameters():
            steps(layer, x.to(start))  # the caches filled, and trusted for the rest of the block, in the start dtype
            convert(layer)
            got, h_got = steps(layer, x.to(end))
    assert got.dtype == end
    tol = 1e-12 if end == torch.float64 else 1e-6
    assert largest(got - want) <= tol * largest(want), (name, conversion)
    leaves = torch.utils._pytree.tree_leaves
    for a, b in zip(leaves(h_got), leaves(h_want), strict=True):
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and largest(a - b) <= tol * max(1.0, largest(b)), name


def largest(t: torch.Tensor) -> float:
    """max |t| (0 for an empty tensor, an empty key/value cache)."""
    return float(t.abs().max()) if t.numel() else 0.0
