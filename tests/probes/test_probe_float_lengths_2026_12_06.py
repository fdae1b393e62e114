"""A new user's probe of sequences of different lengths in training (2026-12-06): each score against a reference
computed one unpadded sequence at a time (float64 loops over the items alone), never through the lengths path under
test."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from ssmkit.data import from_arrays  # noqa: E402
from ssmkit.models import SequenceModel  # noqa: E402
from ssmkit.train import TrainConfig  # noqa: E402
from ssmkit.train.checkpoint import load_checkpoint  # noqa: E402

L = 6


def _config(**options) -> TrainConfig:
    return TrainConfig(**{"batch_size": 8, "max_steps": 2, "warmup_steps": 0, "val_every": 0, "checkpoint_every": 0,
                          "lr": 1e-2, "precision": "64", "log_every": 1, **options})


def _trained(config, run) -> SequenceModel:
    state = load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))["state_dict"]
    model = SequenceModel.from_config(config).double()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model.eval()


def _padded_tokens(seed: int, n: int = 20, fill: float = np.nan):
    """Token ids (n, L) in [1, 5), their lengths (n,), per-step values (n, L) with ``fill`` after each length."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, L + 1, size=n)
    x = rng.integers(1, 5, size=(n, L))
    y = np.cumsum(x == 2, axis=1) / np.arange(1, L + 1)  # the running share of token 2
    y[np.arange(L)[None, :] >= lengths[:, None]] = fill
    return x, y, lengths


def test_per_step_values_of_padded_token_inputs_are_scored_within_the_lengths_only(tmp_path):
    # the arrays task wrote the pad id into the inputs but handed the splits on as (x, y): the objective, which has no
    # pad id, scored (out - y)² at the padding steps too (y 0 there), in the loss and in the MSE, without a word
    from ssmkit.train.experiment import Experiment, run_experiment

    x, y, lengths = _padded_tokens(0, fill=0.0)
    xt, yt, nt = _padded_tokens(1, n=7, fill=0.0)
    task = from_arrays(x, y, x_test=xt, y_test=yt, lengths_train=lengths, lengths_test=nt, val_fraction=0)
    info = task.info()
    assert info.per_step and info.pad_id == 5
    experiment = Experiment(task="arrays", d_model=4, n_layers=1, model="s4d", layer_options={"d_state": 4},
                            train=_config())
    result = run_experiment(experiment, str(tmp_path / "run"), task=task, progress=False)
    model = _trained(experiment.model_config(info), tmp_path / "run")
    errors = []
    with torch.no_grad():
        for b, n in enumerate(nt.tolist()):
            out = model(torch.from_numpy(xt[b:b + 1, :n]), return_state=False)[0][0, :, 0]  # (n,) alone, no pad id
            errors.append((out.numpy() - np.float32(yt[b, :n])) ** 2)  # the task stores float32 targets
    expected = float(np.concatenate(errors).mean())
    assert result["test_loss_final"] == pytest.approx(expected, rel=1e-10)
    assert result["test_mse_final"] == pytest.approx(expected, rel=1e-10)
    splits = {k: ds.tensors for k, ds in task.splits().items()}
    assert [len(t) for t in splits.values()] == [3, 3]  # (inputs, targets, lengths)
    assert splits["test"][2].tolist() == nt.tolist()


def test_a_pad_id_alone_also_carries_the_lengths_of_per_step_values():
    x, y, lengths = _padded_tokens(2, n=6)
    padding = np.arange(L)[None, :] >= lengths[:, None]
    task = from_arrays(np.where(padding, 0, x), y, pad=0, val_fraction=0, test_fraction=0)  # NaN targets at the pad
    tx, ty, tn = task.splits()["train"].tensors
    assert tn.tolist() == lengths.tolist()
    assert torch.equal(ty[torch.from_numpy(padding)], torch.zeros(int(padding.sum()), 1))
    classes = from_arrays(np.where(padding, 0, x), (x > 2).astype(np.int64), pad=0, val_fraction=0, test_fraction=0)
    assert len(classes.splits()["train"].tensors) == 2  # per-step classes: -100 at the padding, no lengths needed


def test_per_step_labels_at_a_pad_id_do_not_count_as_classes():
    # n_classes was inferred from every per-step label of a pad-only token file, the padding's included (99 there gave
    # a 100-way head); the same file cut by lengths_train got its 3
    rng = np.random.default_rng(3)
    lengths = np.array([6, 2, 4, 1, 5])
    padding = np.arange(L)[None, :] >= lengths[:, None]
    x = np.where(padding, 0, rng.integers(1, 5, size=(5, L)))
    y = np.where(padding, 99, rng.integers(0, 3, size=(5, L)))
    real = y[~padding]
    for task in (from_arrays(x, y, pad=0, val_fraction=0, test_fraction=0),
                 from_arrays(x, y, lengths_train=lengths, val_fraction=0, test_fraction=0)):
        assert task.info().n_classes == int(real.max()) + 1 == 3
        ty = task.splits()["train"].tensors[1]
        assert ty[torch.from_numpy(padding)].eq(-100).all() and torch.equal(ty[torch.from_numpy(~padding)],
                                                                            torch.from_numpy(real))


def test_float_coded_per_step_labels_may_hold_nan_in_the_padding():
    # per-step classes stored as floats with NaN after each length (a pandas export) were refused as "not whole
    # numbers" though every label within the lengths was one; NaN within a length is still refused
    rng = np.random.default_rng(4)
    lengths = np.array([6, 3, 1, 4, 5, 2])
    padding = np.arange(L)[None, :] >= lengths[:, None]
    x = np.where(padding[..., None], np.nan, rng.normal(size=(6, L, 2)))
    labels = rng.integers(0, 3, size=(6, L))
    y = np.where(padding, np.nan, labels.astype(np.float64))
    task = from_arrays(x, y, lengths_train=lengths, target="tokens", val_fraction=0, test_fraction=0)
    ty = task.splits()["train"].tensors[1]
    assert task.info().n_classes == int(labels[~padding].max()) + 1
    assert torch.equal(ty, torch.from_numpy(np.where(padding, -100, labels)))
    y[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"y_train holds 1 non-finite value.* at index \(2, 0\)"):
        from_arrays(x, y, lengths_train=lengths, target="tokens", val_fraction=0, test_fraction=0)
    y[2, 0] = 0.5
    with pytest.raises(ValueError, match=r"target 'tokens' needs integer labels"):
        from_arrays(x, y, lengths_train=lengths, target="tokens", val_fraction=0, test_fraction=0)


def test_fit_takes_nan_gaps_in_the_padding_as_the_model_does(tmp_path):
    # SequenceModel.forward(..., lengths=) reads the padding's gaps as 1 (they may hold anything), but fit's check of
    # the splits refused a NaN gap after a length, naming a padding step, before anything trained
    from ssmkit.models import SequenceModelConfig
    from ssmkit.train import fit

    config = SequenceModelConfig(d_input=2, d_model=4, n_layers=1, layer="s4d", d_output=1, head="regress",
                                 pool=None, layer_options={"d_state": 4})
    g = torch.Generator().manual_seed(5)
    splits = []
    for lengths in ((6, 2, 4, 1, 5, 3, 6, 2), (3, 6, 1, 4)):
        n = torch.tensor(lengths)
        padding = torch.arange(L)[None, :] >= n[:, None]
        x = torch.randn(len(lengths), L, 2, generator=g, dtype=torch.float64).masked_fill(padding[..., None], np.nan)
        y = torch.randn(len(lengths), L, 1, generator=g, dtype=torch.float64).masked_fill(padding[..., None], np.nan)
        tau = (0.3 + 2 * torch.rand(len(lengths), L, generator=g, dtype=torch.float64)).masked_fill(padding, np.nan)
        splits.append((x, y, tau, n))
    result = fit(config, _config(max_steps=1), splits[0], None, splits[1], tmp_path / "run", progress=False)
    model = _trained(config, tmp_path / "run")
    x, y, tau, n = splits[1]
    errors = []
    with torch.no_grad():
        for b, m in enumerate(n.tolist()):
            out = model(x[b:b + 1, :m], return_state=False, intervals=tau[b:b + 1, :m])[0][0]  # alone, no lengths
            errors.append(((out - y[b, :m]) ** 2).numpy().ravel())
    assert result["test_loss_final"] == pytest.approx(float(np.concatenate(errors).mean()), rel=1e-10)
    bad = splits[1][2].clone()
    bad[2, 0] = np.nan  # within item 2's length (1): still refused, naming it
    with pytest.raises(ValueError, match=r"the test split's intervals must be finite and > 0 .*1 is not, the first "
                                         r"nan at batch item 2, step 0"):
        fit(config, _config(max_steps=1), splits[0], None, (x, y, bad, n), tmp_path / "bad", progress=False)


def test_lengths_given_as_floats_a_list_or_numpy_are_named_as_lengths(tmp_path):
    # a real third entry is read as intervals: lengths given as floats, a list or a numpy array were refused as
    # "intervals must be a real floating tensor of shape (n, L)"; a pair model's (n, 2) float lengths were taken as
    # intervals (n, L = 2) and refused only at the first training step
    from ssmkit.models import SequenceModelConfig
    from ssmkit.train import fit

    x, y, lengths = torch.randn(6, 5, 2), torch.randint(0, 2, (6,)), np.array([5, 3, 2, 5, 1, 4])
    model = SequenceModelConfig(d_input=2, d_model=4, n_layers=1, layer="s4d", d_output=2)
    for given, what in ((lengths, r"numpy.ndarray"), (lengths.tolist(), r"list"),
                        (torch.tensor(lengths, dtype=torch.float32), r"torch.float32 tensor")):
        with pytest.raises(ValueError, match=rf"the train split's third tensor \({what} of shape \(6,\)\) is read as "
                                             r"intervals \(n, L\) = \(6, 5\): lengths \(6,\) are an integer tensor"):
            fit(model, _config(batch_size=3), (x, y, given), None, None, tmp_path / "r", progress=False)
    pairs = SequenceModelConfig(d_input=2, d_model=4, n_layers=1, layer="s4d", d_output=2, pair=True)
    with pytest.raises(ValueError, match=r"third tensor \(torch.float64 tensor of shape \(6, 2\)\) is read as "
                                         r"intervals \(n, L\), which a pair model \(pair=True\) takes none of: "
                                         r"lengths \(6, 2\)"):
        fit(pairs, _config(batch_size=3), (torch.randn(6, 2, 5, 2), y, torch.full((6, 2), 5.0, dtype=torch.float64)),
            None, None, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # refused before anything was written
    gaps = 0.5 + torch.rand(6, 5, dtype=torch.float64)  # real intervals (n, L) still train
    assert fit(model, _config(batch_size=3, max_steps=1), (x.double(), y, gaps), None, None, tmp_path / "ok",
               progress=False)["steps"] == 1
