"""Gradient accumulation (``TrainConfig.micro_batches``): a step in parts equals the step in one piece -- the weights
after several updates, the logged losses -- also where the parts score different numbers of tokens, under DDP, and with
a non-finite part; against the same run with ``micro_batches=1`` in float64."""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("lightning")

from ssmkit.models import SequenceModelConfig  # noqa: E402
from ssmkit.train import NonFiniteLossError, TrainConfig, fit  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V = 7


def _tokens(seed=0, n=36, length=10):
    """Token inputs and next-token targets with about half the targets not scored (-100), unevenly per sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, length), generator=g)
    y = torch.randint(0, V, (n, length), generator=g)
    keep = torch.rand(n, length, generator=g) < torch.linspace(0.1, 0.9, n)[:, None]  # sample i scores ~(0.1..0.9)·L
    return x, torch.where(keep, y, torch.full_like(y, -100))


MODEL = SequenceModelConfig(d_input=1, d_model=6, n_layers=2, layer=["s4d", "mamba"], d_output=V, head="lm", pool=None,
                            vocab_size=V, layer_options={"s4d": {"d_state": 4}, "mamba": {"d_state": 3}})


def _run(out, micro, train=None, model=MODEL, **options):
    config = TrainConfig(**{"batch_size": 6, "max_steps": 4, "warmup_steps": 0, "val_every": 0, "checkpoint_every": 0,
                            "lr": 1e-2, "precision": "64", "log_every": 1, "micro_batches": micro, **options})
    fit(model, config, train or _tokens(), None, None, out, progress=False)
    state = load_checkpoint(os.path.join(out, "checkpoints", "last.ckpt"))["state_dict"]
    with open(glob.glob(os.path.join(out, "logs", "version_*", "metrics.csv"))[0]) as f:
        losses = [float(row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")]
    return state, losses


def _close(a, b, rtol):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point() or a[k].is_complex():
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * 1e-2, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_a_step_in_parts_is_the_step_in_one_piece(tmp_path):
    whole, losses = _run(tmp_path / "one", 1)
    assert len(losses) == 4
    for micro in (2, 4, 6):  # 6 samples: parts of 3, of 2, 2, 1, 1 (uneven), of 1
        parts, part_losses = _run(tmp_path / f"m{micro}", micro)
        _close(parts, whole, 1e-9)
        assert part_losses == pytest.approx(losses, rel=1e-12)


def test_the_parts_are_weighted_by_the_items_they_score(tmp_path):
    # a mean of the parts' mean losses (what an accumulation that divides each part's mean by their number gives)
    # weighs a part scoring 2 tokens as one scoring 50: one step of each, against the whole batch's gradient
    x, y = _tokens(1, n=6)
    y[:3] = -100
    y[0, 0] = 3  # part 1 scores one token, part 2 about half of its 30
    whole, _ = _run(tmp_path / "one", 1, (x, y), max_steps=1)
    parts, _ = _run(tmp_path / "two", 2, (x, y), max_steps=1)
    _close(parts, whole, 1e-9)


def test_classification_with_dropout_trains_in_parts(tmp_path):
    # dropout draws a mask per part, so only the deterministic parts agree; the run must train and log
    g = torch.Generator().manual_seed(2)
    x = torch.randn(24, 8, 1, generator=g, dtype=torch.float64)
    y = (x.sum(dim=(1, 2)) > 0).long()
    model = SequenceModelConfig(d_input=1, d_model=4, n_layers=1, layer="s4d", d_output=2, dropout=0.1,
                                layer_options={"d_state": 4})
    _, losses = _run(tmp_path / "c", 3, (x, y), model=model)
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)


def test_a_non_finite_part_stops_before_the_update(tmp_path):
    x, y = _tokens()
    model = SequenceModelConfig(d_input=1, d_model=6, n_layers=1, layer="s4d", d_output=1, head="regress",
                                pool="mean", layer_options={"d_state": 4})
    xf = x[..., None].double()
    yf = torch.zeros(x.shape[0], 1, dtype=torch.float64)
    yf[4] = float("nan")  # one sample: in one part of one of the steps
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at step \d+ .*before the update"):
        _run(tmp_path / "nan", 2, (xf, yf), model=model, checkpoint_every=1)
    last = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in last.values() if v.is_floating_point())


def test_micro_batches_are_checked():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="micro_batches must be a positive int"):
            TrainConfig(micro_batches=bad)
    with pytest.raises(ValueError, match="micro_batches must be <= batch_size = 4"):
        TrainConfig(batch_size=4, micro_batches=5)
    assert TrainConfig(batch_size=4, micro_batches=4).micro_batches == 4


DDP = textwrap.dedent(
    """
    import os
    import sys
    import torch
    from ssmkit.train import TrainConfig, fit
    from tests.train.test_micro_batches import MODEL, _tokens

    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    for micro in (1, 3):  # both runs in one pair of processes (Lightning starts rank 1 once; the second fit reuses it)
        train = TrainConfig(batch_size=6, max_steps=3, warmup_steps=0, val_every=0, checkpoint_every=0, lr=1e-2,
                            precision="64", micro_batches=micro, devices=2, strategy="ddp")
        fit(MODEL, train, _tokens(), None, None, os.path.join(out_dir, f"m{micro}"), progress=False)
    """
)


@pytest.mark.slow
def test_data_parallel_steps_in_parts_equal_the_steps_in_one_piece(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "src")])}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    states = [load_checkpoint(tmp_path / f"m{micro}" / "checkpoints" / "last.ckpt") for micro in (1, 3)]
    assert [s["global_step"] for s in states] == [3, 3]
    _close(states[1]["state_dict"], states[0]["state_dict"], 1e-9)
