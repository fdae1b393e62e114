"""The Lightning trainer: exact resume after a kill, non-finite losses, data parallelism, and a learnability check."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("lightning")

from ssmkit.models import SequenceModelConfig  # noqa: E402
from ssmkit.train import NonFiniteLossError, StepBatches, TrainConfig, WarmupCosine, eval_batches, fit  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint, save_atomic  # noqa: E402
from tests.train.test_train_core_reference import _RunsCode  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny task: the sign of a sequence's sum (learnable by a linear SSM in a few dozen steps). Each process run below
# trains several of these runs in order (RUNS): Lightning starts the second DDP process at the first fit, and later
# fits reuse the pair, so each run costs its training, not two more interpreters importing torch and Lightning. A run
# that kills its processes or raises (a non-finite loss) is the last of its list.
RUNS = textwrap.dedent(
    """
    import json, sys
    from tests.train.test_trainer import nan_on_one_rank, tiny_run

    for kind, *args in json.loads(sys.argv[1]):
        (nan_on_one_rank if kind == "nan" else tiny_run)(*args)
    """
)


def tiny_run(out_dir, kill_at: int = -1, resume: bool = False, devices: int = 1) -> dict:
    """Train the tiny task into ``out_dir`` on ``devices`` processes, writing each process's generator state at each
    step's start to ``rng-rank<r>.txt``; with ``kill_at >= 0`` SIGKILL every process at the end of that step (a real
    kill: no clean-up, no final checkpoint)."""
    import hashlib
    import signal

    import lightning.pytorch as pl

    out_dir = os.fspath(out_dir)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 12, 1, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long()

    class Generators(pl.Callback):  # each process's generator state at each step's start (its dropout masks' source)
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            state = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
            with open(os.path.join(out_dir, f"rng-rank{trainer.global_rank}.txt"), "a") as f:
                f.write(f"{trainer.global_step} {state}\n")

    class Kill(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the runs compared bit for bit compute on one thread, in a child or in this process
    try:
        model = SequenceModelConfig(d_input=1, d_model=8, n_layers=2, layer="s4d", d_output=2,
                                    layer_options={"d_state": 4}, dropout=0.1)
        train = TrainConfig(batch_size=8, max_steps=10, warmup_steps=2, val_every=5, checkpoint_every=4, lr=1e-2,
                            devices=devices, strategy="ddp" if devices > 1 else "auto", log_every=1)
        result = fit(model, train, (x[:64], y[:64]), (x[64:], y[64:]), None, out_dir, resume=resume, progress=False,
                     extra_callbacks=[Generators(), *([Kill()] if kill_at >= 0 else [])])
    finally:
        torch.set_num_threads(threads)
    print("RESULT", os.path.basename(out_dir), result["steps"], result.get("val_accuracy"), flush=True)
    return result


def run(tmp_path, *runs) -> subprocess.CompletedProcess:
    """One child process training ``runs`` in order, each ``("tiny", out_dir, kill_at, resume, devices)`` (see
    :func:`tiny_run`) or ``("nan", out_dir)`` (:func:`nan_on_one_rank`)."""
    script = tmp_path / "runs.py"
    script.write_text(RUNS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script), json.dumps([[str(a) if isinstance(a, os.PathLike) else a
                                                                      for a in r] for r in runs])],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


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
    torch.save({"obj": _RunsCode()}, tmp_path / "unsafe.ckpt")
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
    # the uninterrupted run, then the killed one, in one child; the resumed run in this process (a fresh Trainer and
    # module: what resume restores comes from the checkpoint, nothing from the child)
    done = run(tmp_path, ("tiny", tmp_path / "whole", -1, False, 1), ("tiny", tmp_path / "killed", 6, False, 1))
    assert "RESULT whole 10" in done.stdout, done.stderr[-3000:]
    assert done.returncode == -9, done.stderr[-3000:]  # SIGKILL at step 6: the last checkpoint is step 4's
    assert "RESULT killed" not in done.stdout
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert tiny_run(tmp_path / "killed", resume=True)["steps"] == 10
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 10
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on the CPU


def generator_states(out_dir, rank: int) -> dict[int, str]:
    """step -> process ``rank``'s generator state at that step's start (a resumed run's repeat of a step overwrites)."""
    with open(os.path.join(out_dir, f"rng-rank{rank}.txt")) as f:
        return {int(step): state for step, state in (line.split() for line in f)}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[pathlib.Path, subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The DDP runs of the tests below, on two gloo processes, in two pairs of processes: the first trains the
    uninterrupted run ``ddp`` and the run ``killed`` (SIGKILL at step 6, both processes); the second resumes
    ``killed`` to step 10, then runs ``nan`` (:func:`nan_on_one_rank`), which stops both processes with an error."""
    folder = tmp_path_factory.mktemp("ddp")
    first = run(folder, ("tiny", folder / "ddp", -1, False, 2), ("tiny", folder / "killed", 6, False, 2))
    second = run(folder, ("tiny", folder / "killed", -1, True, 2), ("nan", folder / "nan"))
    return folder, first, second


@pytest.mark.slow
def test_data_parallel_on_two_cpu_processes_with_own_dropout_masks_and_exact_resume(two_processes):
    folder, first, second = two_processes
    assert "RESULT ddp 10" in first.stdout, first.stderr[-3000:]
    assert load_checkpoint(folder / "ddp" / "checkpoints" / "last.ckpt")["global_step"] == 10
    # each process draws its own dropout masks (they shared rank 0's stream: seed_everything seeds every process alike)
    whole = [generator_states(folder / "ddp", r) for r in (0, 1)]
    assert sorted(whole[0]) == sorted(whole[1]) == list(range(10))
    assert all(whole[0][s] != whole[1][s] for s in range(10))
    # killed at step 6 (both processes), resumed from step 4's checkpoint: every process continues its own stream
    assert first.returncode == -9, first.stderr[-3000:]
    assert "RESULT killed" not in first.stdout
    assert "RESULT killed 10" in second.stdout, second.stderr[-3000:]  # the resumed run returned (before "nan" ran)
    assert load_checkpoint(folder / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert [generator_states(folder / "killed", r) for r in (0, 1)] == whole
    a, b = weights(folder / "ddp"), weights(folder / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on the CPU


def test_process_seeds_differ_by_process_and_step():
    from ssmkit.train.module import process_seed

    seeds = {process_seed(seed, rank, step) for seed in (0, 1) for rank in (1, 2, 3) for step in (0, 4)}
    assert len(seeds) == 12 and all(0 <= s < 2**64 for s in seeds)
    assert process_seed(0, 1) == process_seed(0, 1, 0)  # a function of its arguments only


def nan_on_one_rank(out_dir) -> None:
    """Train on two processes where process 1's batch of step 2 holds a NaN (raises NonFiniteLossError)."""
    torch.set_num_threads(1)
    x = torch.randn(32, 6, 1, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(1))
    x[int(StepBatches((x, y), 4, seed=0, rank=1, world_size=2).indices(2)[0])] = float("nan")  # rank 1, step 2
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, layer_options={"d_state": 4})
    train = TrainConfig(batch_size=4, max_steps=10, warmup_steps=0, val_every=0, checkpoint_every=1, devices=2,
                        strategy="ddp")
    fit(model, train, (x, y), None, None, out_dir, progress=False)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_stops_every_process(two_processes):
    # the check was per process: the rank with the NaN raised alone and rank 0 (the process the user runs) failed in the
    # gradient all-reduce with gloo's "Connection closed by peer" (NCCL would wait for its timeout)
    folder, _, done = two_processes
    assert done.returncode != 0
    assert "[rank0]: ssmkit.train.module.NonFiniteLossError: the training loss of another process is not finite" in (
        done.stderr), done.stderr[-3000:]
    assert "NonFiniteLossError: the training loss is nan at step 2" in done.stderr
    assert "Connection closed" not in done.stderr
    last = load_checkpoint(folder / "nan" / "checkpoints" / "last.ckpt")
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
