"""The Lightning trainer: exact resume after a kill, non-finite losses, data parallelism, and a learnability check."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("lightning")

from ssmkit.models import SequenceModelConfig  # noqa: E402
from ssmkit.train import NonFiniteLossError, StepBatches, TrainConfig, WarmupCosine, eval_batches, fit  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint, save_atomic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny task: the sign of a sequence's sum (learnable by a linear SSM in a few dozen steps).
RUN = textwrap.dedent(
    """
    import hashlib, os, signal, sys
    import torch
    import lightning.pytorch as pl
    from ssmkit.models import SequenceModelConfig
    from ssmkit.train import TrainConfig, fit

    out_dir, kill_at, resume, devices = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 12, 1, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long()

    class Generators(pl.Callback):  # each process's generator state at each step's start (its dropout masks' source)
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            state = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
            with open(os.path.join(out_dir, f"rng-rank{trainer.global_rank}.txt"), "a") as f:
                f.write(f"{trainer.global_step} {state}\\n")

    class Kill(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no clean-up, no final checkpoint

    model = SequenceModelConfig(d_input=1, d_model=8, n_layers=2, layer="s4d", d_output=2,
                                layer_options={"d_state": 4}, dropout=0.1)
    train = TrainConfig(batch_size=8, max_steps=10, warmup_steps=2, val_every=5, checkpoint_every=4, lr=1e-2,
                        devices=devices, strategy="ddp" if devices > 1 else "auto", log_every=1)
    result = fit(model, train, (x[:64], y[:64]), (x[64:], y[64:]), None, out_dir, resume=resume, progress=False,
                 extra_callbacks=[Generators(), *([Kill()] if kill_at >= 0 else [])])
    print("RESULT", result["steps"], result.get("val_accuracy"))
    """
)


def run(tmp_path, out_dir, kill_at=-1, resume=False, devices=1) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(script), str(out_dir), str(kill_at), "1" if resume else "0", str(devices)],
                          capture_output=True, text=True, env=env, timeout=600)


def weights(out_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(os.path.join(out_dir, "checkpoints", "last.ckpt"))["state_dict"]


def test_warmup_cosine_schedule():
    f = WarmupCosine(4, 14, floor=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and abs(f(9) - (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))) < 1e-15
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps must be an int > warmup_steps"):
        WarmupCosine(5, 5)


@pytest.mark.parametrize("field, value", [("lr", True), ("weight_decay", True), ("grad_clip", True), ("max_time", True),
                                          ("seed", 1.5), ("seed", "0"), ("seed", -1), ("seed", 2**32), ("lr_floor", 2.0), ("lr_floor", "0.1"),
                                          # an infinite rate or decay trained to NaN; None is how to say "no limit"
                                          ("lr", float("inf")), ("weight_decay", float("inf")), ("grad_clip", float("inf")),
                                          ("max_time", float("inf")), ("early_stopping", True), ("eval_batch_size", True)])
def test_train_config_refuses_bools_for_numbers_and_bad_seeds_and_floors(field, value):
    # a bool passed for a number (True is 1 to Python) was accepted silently; a bad floor failed only at the first step
    with pytest.raises(ValueError, match=f"^{field} must be"):
        TrainConfig(**{field: value})


def test_step_batches_are_a_function_of_the_step():
    x = torch.arange(10).float()[:, None]
    y = torch.arange(10)
    stream = iter(StepBatches((x, y), batch_size=3, seed=4))
    first = [next(stream) for _ in range(7)]
    # every epoch (10 samples) is a permutation; the stream wraps into the next epoch's order
    seen = torch.cat([b[1] for b in first])[:20]
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:20].tolist()) == list(range(10))
    assert all(torch.equal(b[0][:, 0].long(), b[1]) for b in first)  # inputs and targets stay paired
    resumed = iter(StepBatches((x, y), batch_size=3, seed=4, start_step=4))
    for b in first[4:]:
        assert torch.equal(next(resumed)[1], b[1])
    # two ranks take disjoint halves of the global batch of a single process with twice the batch
    whole = StepBatches((x, y), batch_size=4, seed=4).indices(3)
    halves = [StepBatches((x, y), batch_size=2, seed=4, rank=r, world_size=2).indices(3) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)
    parts = [eval_batches((x, y), 2, rank=r, world_size=3) for r in range(3)]
    assert sorted(torch.cat([b[1] for p in parts for b in p]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="rank must be in"):
        StepBatches((x, y), 2, rank=2, world_size=2)


def test_checkpoints_are_atomic_and_load_weights_only(tmp_path):
    path = tmp_path / "a.ckpt"
    save_atomic({"w": torch.ones(3)}, path)

    class Bad:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_atomic({"w": torch.zeros(3), "bad": Bad()}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))  # the old file is intact
    assert os.listdir(tmp_path) == ["a.ckpt"]  # and no temporary file is left behind
    torch.save({"obj": Exception("code")}, tmp_path / "unsafe.ckpt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_checkpoint(tmp_path / "unsafe.ckpt")


def test_resume_refuses_a_changed_model_or_schedule(tmp_path):
    # the optimiser's groups and the schedule come back from the checkpoint: a longer max_steps was silently trained
    # at the saved schedule's final lr (0), a new lr or weight decay silently ignored
    x = torch.randn(16, 6, 1, generator=torch.Generator().manual_seed(0))
    y = (x.sum(dim=(1, 2)) > 0).long()
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 2})
    train = TrainConfig(batch_size=4, max_steps=3, warmup_steps=1, checkpoint_every=0, log_every=1)
    out = tmp_path / "run"
    fit(model, train, (x, y), None, None, out, progress=False)
    longer = TrainConfig(**{**train.to_dict(), "max_steps": 6})
    with pytest.raises(ValueError, match=r"train max_steps: saved 3, given 6"):
        fit(model, longer, (x, y), None, None, out, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"train lr: saved 0.003, given 0.01"):
        fit(model, TrainConfig(**{**train.to_dict(), "lr": 0.01}), (x, y), None, None, out, resume=True, progress=False)
    other = SequenceModelConfig(**{**model.to_dict(), "layer_options": {"d_state": 2, "lr": 0.01}})
    with pytest.raises(ValueError, match=r"model layer_options: saved \{'d_state': 2\}"):
        fit(other, train, (x, y), None, None, out, resume=True, progress=False)
    assert '"max_steps": 3' in (out / "train.json").read_text()  # the run's record is not overwritten
    done = fit(model, TrainConfig(**{**train.to_dict(), "val_every": 1}), (x, y), None, None, out, resume=True,
               progress=False)  # what the checkpoint does not restore may change
    assert done["steps"] == 3


@pytest.mark.slow
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    whole = run(tmp_path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run(tmp_path, tmp_path / "killed", kill_at=6)
    assert killed.returncode == -9  # SIGKILL at step 6: the last checkpoint is step 4's
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 4
    resumed = run(tmp_path, tmp_path / "killed", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "RESULT 10" in resumed.stdout
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 10
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on the CPU


def generator_states(out_dir, rank: int) -> dict[int, str]:
    """step -> process ``rank``'s generator state at that step's start (a resumed run's repeat of a step overwrites)."""
    with open(os.path.join(out_dir, f"rng-rank{rank}.txt")) as f:
        return {int(step): state for step, state in (line.split() for line in f)}


@pytest.mark.slow
def test_data_parallel_on_two_cpu_processes_with_own_dropout_masks_and_exact_resume(tmp_path):
    done = run(tmp_path, tmp_path / "ddp", devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESULT 10" in done.stdout
    assert load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")["global_step"] == 10
    # each process draws its own dropout masks (they shared rank 0's stream: seed_everything seeds every process alike)
    whole = [generator_states(tmp_path / "ddp", r) for r in (0, 1)]
    assert sorted(whole[0]) == sorted(whole[1]) == list(range(10))
    assert all(whole[0][s] != whole[1][s] for s in range(10))
    # killed at step 6 (both processes), resumed from step 4's checkpoint: every process continues its own stream
    killed = run(tmp_path, tmp_path / "killed", kill_at=6, devices=2)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 4
    resumed = run(tmp_path, tmp_path / "killed", resume=True, devices=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "RESULT 10" in resumed.stdout
    assert [generator_states(tmp_path / "killed", r) for r in (0, 1)] == whole
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on the CPU


def test_process_seeds_differ_by_process_and_step():
    from ssmkit.train.module import process_seed

    seeds = {process_seed(seed, rank, step) for seed in (0, 1) for rank in (1, 2, 3) for step in (0, 4)}
    assert len(seeds) == 12 and all(0 <= s < 2**64 for s in seeds)
    assert process_seed(0, 1) == process_seed(0, 1, 0)  # a function of its arguments only


NAN_ON_ONE_RANK = textwrap.dedent(
    """
    import sys
    import torch
    from ssmkit.models import SequenceModelConfig
    from ssmkit.train import StepBatches, TrainConfig, fit

    torch.set_num_threads(1)
    x = torch.randn(32, 6, 1, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(1))
    x[int(StepBatches((x, y), 4, seed=0, rank=1, world_size=2).indices(2)[0])] = float("nan")  # rank 1, step 2
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 4})
    train = TrainConfig(batch_size=4, max_steps=10, warmup_steps=0, val_every=0, checkpoint_every=1, devices=2,
                        strategy="ddp")
    fit(model, train, (x, y), None, None, sys.argv[1], progress=False)
    """
)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_stops_every_process(tmp_path):
    # the check was per process: the rank with the NaN raised alone and rank 0 (the process the user runs) failed in the
    # gradient all-reduce with gloo's "Connection closed by peer" (NCCL would wait for its timeout)
    script = tmp_path / "nan.py"
    script.write_text(NAN_ON_ONE_RANK)
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode != 0
    assert "[rank0]: ssmkit.train.module.NonFiniteLossError: the training loss of another process is not finite" in (
        done.stderr), done.stderr[-3000:]
    assert "NonFiniteLossError: the training loss is nan at step 2" in done.stderr
    assert "Connection closed" not in done.stderr
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2 and all(bool(torch.isfinite(t).all()) for t in last["state_dict"].values())


def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    x = torch.randn(32, 6, 1)
    x[5] = float("nan")  # one bad sample: the batch holding it gives a NaN loss
    y = torch.randint(0, 2, (32,))
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 4})
    train = TrainConfig(batch_size=4, max_steps=40, warmup_steps=0, val_every=0, checkpoint_every=1, seed=1)
    bad_step = next(s for s in range(40) if 5 in StepBatches((x, y), 4, seed=1).indices(s).tolist())
    with pytest.raises(NonFiniteLossError, match=f"at step {bad_step} ") as err:
        fit(model, train, (x, y), None, None, tmp_path, progress=False)
    assert "checkpoints" in str(err.value)
    if bad_step > 0:
        last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
        assert last["global_step"] == bad_step
        assert all(bool(torch.isfinite(t).all()) for t in last["state_dict"].values())


def test_a_small_model_learns_a_small_task_and_reports(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(320, 16, 1)
    y = (x.sum(dim=(1, 2)) > 0).long()
    model = SequenceModelConfig(d_input=1, d_model=16, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 8})
    train = TrainConfig(batch_size=32, max_steps=80, warmup_steps=5, val_every=40, checkpoint_every=0, lr=1e-2)
    result = fit(model, train, (x[:256], y[:256]), (x[256:], y[256:]), (x[256:], y[256:]), tmp_path, progress=False)
    assert result["steps"] == 80 and result["test_accuracy"] >= 0.85  # chance is 0.5
    assert result["parameters"] > 0 and result["tokens_per_second"] > 0
    assert os.path.isfile(tmp_path / "result.json") and os.path.isfile(tmp_path / "model.json")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        fit(model, train, (x, y), None, None, tmp_path, progress=False)


def test_bf16_autocast_trains(tmp_path):
    x = torch.randn(64, 10, 2)
    y = x.cumsum(1)
    model = SequenceModelConfig(d_input=2, d_model=8, n_layers=1, layer="s4d", d_output=2, head="regress", pool=None,
                                layer_options={"d_state": 4})
    train = TrainConfig(batch_size=16, max_steps=6, warmup_steps=1, val_every=0, precision="bf16-mixed")
    result = fit(model, train, (x, y), (x, y), None, tmp_path, progress=False)
    assert result["steps"] == 6 and math.isfinite(result["val_loss"])
