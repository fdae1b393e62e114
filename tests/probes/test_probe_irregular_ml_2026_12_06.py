"""New-user probe of 2026-12-06: an ML researcher with irregularly sampled time series (PhysioNet / human-activity
style: each sequence its own timestamps, different lengths, padded batches), from README and docstrings only, hunting
silent wrong answers, each against an independent reference: scipy.signal's zero-order hold of the S4D layer's
exported continuous-time system, a float64 numpy loop of the documented S4D equations through a whole model, the
model called directly, or the uninterrupted run.

Found and fixed:

1. *``fit`` scored a split without intervals as regularly sampled.* Its docstring says "every split then carries its
   intervals", but train ``(x, y, tau)`` with test ``(x, y)`` (or a validation split, or the training split, without
   them) ran without a word: the model's regular path scored that split (test loss 3.728 where its intervals gave
   3.714 on the run below). ``fit`` now refuses splits that do not all carry intervals, or all lack them, naming
   them, before anything is written.
2. *Bad intervals of the test split failed only after the whole run had trained* (a wrong length, a zero gap: the
   layer's check ran at ``trainer.test``). Without a ``transform`` (which may form the intervals itself), ``fit``
   now checks every split's intervals -- (n, L) of its inputs, finite, > 0 -- before training, naming the split.
3. *A ``transform`` written for (inputs, targets) batches dropped the intervals* (``lambda b: (b[0] / 255, b[1])``):
   every split then trained and scored as regularly sampled. The batches now refuse a transform that returns fewer
   than the three tensors of an (inputs, targets, intervals) batch; one that forms the intervals of a two-tensor
   batch is kept (its test loss is the model's with those intervals, below).
4. *``ssmkit train`` could not take irregularly sampled data* (the ``arrays`` task refused any array but x, y and
   lengths; README promises ``fit`` on (inputs, targets, intervals)). The task now reads ``intervals_train`` /
   ``_val`` / ``_test`` (B, L), held out with their samples, kept in float64, checked finite and > 0 at the sequences'
   own steps (named by their index in the file), 1 at a token sequence's padding; a split without them beside one
   with them is refused. ``fit`` refuses splits with intervals for a model whose layers take none before anything is
   written (the error came at the first step).

Checked and fine (tests below, and by hand in the report): S4D at gaps from 1e-3 to 1e2 periods equals scipy's ZOH of
its exported system, forward, chunked calls and the step loop, float64 and float32; a padded token classifier with
intervals gives each item its unpadded sequence's logits (pool mean and last) through the whole model; every layer
that takes intervals gives, through a two-block model, chunked calls with the state and a step loop that mixes
regular steps and gaps equal to one forward; a run with intervals, dropout and a hybrid resumes bit for bit.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ssmkit.models import SequenceModel, SequenceModelConfig
from tests.conftest import DEVICE, rel_err, variants

signal = pytest.importorskip("scipy.signal")


def _gaps(shape, seed: int, low: float = 1e-3, high: float = 1e2) -> torch.Tensor:
    """Float64 gaps log-uniform in [low, high) (a sensor that sometimes fires twice at once, sometimes sleeps)."""
    g = torch.Generator().manual_seed(seed)
    return torch.exp(np.log(low) + (np.log(high) - np.log(low)) * torch.rand(*shape, generator=g,
                                                                           dtype=torch.float64)).to(DEVICE)


def _randn(*shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE)


def _s4d_system(layer) -> tuple[np.ndarray, ...]:
    """Λ (H, M), B (H, M), C (H, M) complex, Δ (H,), D (H,) of an S4D layer, float64 numpy (y = 2 Re Σ C x + D u)."""
    Lam, Bm, dt = (t.detach().cpu().numpy().astype(np.complex128 if t.is_complex() else np.float64)
                   for t in layer.continuous())
    C = torch.view_as_complex(layer.C[0].detach().cpu().double().contiguous()).numpy()
    return Lam, Bm, C, dt, layer.D.detach().cpu().double().numpy()


def _scipy_s4d(layer, u: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """y (L, H) of one sequence: each channel's real realisation (2×2 blocks [[a, -b], [b, a]] per mode, in units of
    Δ), discretised by ``scipy.signal.cont2discrete(..., method="zoh")`` at each step's own gap Δ τ_t."""
    Lam, Bm, C, dt, D = _s4d_system(layer)
    Hn, M = Lam.shape
    y = np.zeros((len(tau), Hn))
    for h in range(Hn):
        A = np.zeros((2 * M, 2 * M))
        for m in range(M):
            a, b = Lam[h, m].real, Lam[h, m].imag
            A[2 * m:2 * m + 2, 2 * m:2 * m + 2] = [[a, -b], [b, a]]
        Bc = np.stack([Bm[h].real, Bm[h].imag], 1).reshape(2 * M, 1)
        Cc = 2 * np.stack([C[h].real, -C[h].imag], 1).reshape(1, 2 * M)
        x = np.zeros(2 * M)
        for t, gap in enumerate(tau):
            Ad, Bd, *_ = signal.cont2discrete((A, Bc, Cc, np.zeros((1, 1))), dt[h] * gap, method="zoh")
            x = Ad @ x + Bd[:, 0] * u[t, h]
            y[t, h] = Cc[0] @ x + D[h] * u[t, h]
    return y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_s4d_at_irregular_gaps_is_scipys_zero_order_hold_of_its_exported_system(dtype):
    import ssmkit.layers as layers

    torch.manual_seed(3)
    layer = layers.build("s4d", d_model=3, d_state=6, init="inv", device=DEVICE, dtype=dtype)
    with torch.no_grad():
        layer.log_dt.copy_(torch.log(torch.tensor([0.02, 0.3, 1.5])))  # Δτ from 2e-5 to 150: both ends of the hold
    x, tau = _randn(2, 30, 3, seed=1).to(dtype), _gaps((2, 30), seed=2)
    ref = torch.tensor(np.stack([_scipy_s4d(layer, x[b].double().cpu().numpy(), tau[b].cpu().numpy())
                                 for b in range(2)]))
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    with torch.no_grad():
        y, h = layer(x, intervals=tau)
        y1, h1 = layer(x[:, :11], intervals=tau[:, :11])
        y2, _ = layer(x[:, 11:], h1, intervals=tau[:, 11:])
        state, steps = layer.initial_state(2), []
        for t in range(30):
            y_t, state = layer.step(x[:, t], state, interval=tau[:, t])
            steps.append(y_t)
    assert y.dtype == dtype
    assert rel_err(y, ref) < tol
    assert rel_err(torch.cat([y1, y2], 1), ref) < tol
    assert rel_err(torch.stack(steps, 1), ref) < tol
    ones = torch.ones(2, 30, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        assert rel_err(layer(x, intervals=ones)[0], layer(x)[0]) < tol  # all ones: the regular layer


def _token_classifier(pool: str) -> SequenceModel:
    """One S4D block with nothing around the layer (no norm, activation or output projection): the logits are
    head(pool(e + S4D(e))), e the embedded tokens, which the reference below computes by hand."""
    torch.manual_seed(5)
    return SequenceModel(d_input=1, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4, "init": "lin"},
                         d_output=2, head="classify", pool=pool, vocab_size=7, pad_id=0, norm=None,
                         activation=None, mixer_out=None).to(DEVICE, torch.float64).eval()


def _documented_s4d(layer, u: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """y (n, H) by the README's S4D equations: x_t = e^{Δτ_t λ} x_{t-1} + (e^{Δτ_t λ} − 1)/λ · B u_t,
    y_t = 2 Re Σ C x_t + D u_t (complex float64)."""
    Lam, Bm, C, dt, D = _s4d_system(layer)
    x, ys = np.zeros(Lam.shape, complex), []
    for t in range(len(tau)):
        A_bar = np.exp(dt[:, None] * tau[t] * Lam)
        x = A_bar * x + (A_bar - 1) / Lam * Bm * u[t][:, None]
        ys.append(2 * (C * x).sum(1).real + D * u[t])
    return np.stack(ys)


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_a_padded_irregular_batch_classifies_each_item_as_the_documented_equations_give_it_alone(pool):
    model = _token_classifier(pool)
    lengths = [12, 7, 1]
    g = torch.Generator().manual_seed(8)
    tokens = torch.randint(1, 7, (3, 12), generator=g)
    for b, n in enumerate(lengths):
        tokens[b, n:] = 0  # right padding by pad_id
    tau = _gaps((3, 12), seed=9, low=0.1, high=20.0)
    tau[1, 7:] = 1.0  # the padding's gaps: any positive value (0 is refused), never read into the tokens' outputs
    with torch.no_grad():
        logits, _ = model(tokens.to(DEVICE), intervals=tau)
    E = model.encoder.weight.detach().cpu().double().numpy()
    W, bias = model.head.weight.detach().cpu().double().numpy(), model.head.bias.detach().cpu().double().numpy()
    layer = model.blocks[0].layer
    ref = []
    for b, n in enumerate(lengths):
        e = E[tokens[b, :n].numpy()]  # (n, H)
        h = e + _documented_s4d(layer, e, tau[b, :n].cpu().numpy())
        ref.append(W @ (h.mean(0) if pool == "mean" else h[-1]) + bias)
    assert rel_err(logits, torch.tensor(np.stack(ref))) < 1e-12


INTERVAL_LAYERS = ["s4d", "dss", "s4", "s5", "lru", "ema", "dlr", "mamba", "mamba2", "rglru"]


@pytest.mark.parametrize("name", INTERVAL_LAYERS)
def test_a_model_streams_chunks_and_steps_mixing_regular_steps_and_gaps_as_one_forward(name):
    torch.manual_seed(1)
    model = SequenceModel(d_input=2, d_model=6, n_layers=2, layer=name, layer_options=variants(name)[0],
                          d_output=3, head="regress", pool=None).to(DEVICE, torch.float64).eval()
    x, tau = _randn(2, 13, 2, seed=4), _gaps((2, 13), seed=5, low=0.05, high=5.0)
    regular = [1, 4, 9]  # steps taken without an interval: one nominal period
    tau[:, regular] = 1.0
    with torch.no_grad():
        whole, final = model(x, intervals=tau)
        first, state = model(x[:, :6], intervals=tau[:, :6])
        second, state = model(x[:, 6:], state, intervals=tau[:, 6:])
        stepped, states = [], model.initial_state(2)
        for t in range(13):
            out, states = model.step(x[:, t], states, interval=None if t in regular else tau[:, t])
            stepped.append(out)
        at_one = model(x, intervals=torch.ones_like(tau))[0]
        plain = model(x)[0]
    assert rel_err(torch.cat([first, second], 1), whole) < 1e-12
    assert rel_err(torch.stack(stepped, 1), whole) < 1e-12
    assert rel_err(at_one, plain) < 1e-12
    assert rel_err(whole, plain) > 1e-6  # the gaps were used


# ---------------------------------------------------------------------------------------------------------------------
# training: every split with its intervals

_MODEL = SequenceModelConfig(d_input=2, d_model=4, n_layers=1, layer="s4d", d_output=1, head="regress", pool=None,
                             layer_options={"d_state": 4})


def _split(seed: int, n: int = 8, length: int = 9):
    x, tau = _randn(n, length, 2, seed=seed).cpu(), _gaps((n, length), seed=seed + 100, low=0.2, high=3.0).cpu()
    return x, torch.cumsum(x[..., :1] * tau[..., None], 1), tau  # the target integrates over the real times


def _train(**options):
    pytest.importorskip("lightning")
    from ssmkit.train import TrainConfig

    return TrainConfig(**{"batch_size": 4, "max_steps": 2, "warmup_steps": 0, "val_every": 0, "checkpoint_every": 0,
                          "lr": 1e-2, "precision": "64", "log_every": 1, **options})


@pytest.mark.parametrize("without", ["test", "val", "train"])
def test_fit_refuses_a_split_without_the_intervals_the_others_carry(tmp_path, without):
    from ssmkit.train import fit

    splits = {"train": _split(0), "val": _split(1), "test": _split(2)}
    splits[without] = splits[without][:2]
    with pytest.raises(ValueError, match=rf"carry intervals .* but \['{without}'\] do not"):
        fit(_MODEL, _train(), splits["train"], splits["val"], splits["test"], tmp_path / "run", progress=False)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")  # refused before anything trained
    with pytest.raises(ValueError, match=r"\['test@long'\] do not"):  # an extra test split too
        fit(_MODEL, _train(), _split(0), None, _split(2), tmp_path / "run", progress=False,
            extra_tests={"test@long": _split(3, length=20)[:2]})


@pytest.mark.parametrize("bad, match", [(lambda t: t[:, :5], r"test split's intervals must be .* shape \(8, 9\)"),
                                        (lambda t: t * 0, r"test split's intervals must be finite and > 0")])
def test_fit_checks_the_test_splits_intervals_before_training(tmp_path, bad, match):
    from ssmkit.train import fit

    x, y, tau = _split(2)
    with pytest.raises(ValueError, match=match):
        fit(_MODEL, _train(), _split(0), None, (x, y, bad(tau)), tmp_path / "run", progress=False)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_transform_may_form_the_intervals_but_not_drop_them(tmp_path):
    from ssmkit.train import fit
    from ssmkit.train.checkpoint import load_checkpoint

    with pytest.raises(ValueError, match=r"returned 2 tensors: it must return all three"):
        fit(_MODEL, _train(), _split(0), None, _split(2), tmp_path / "drop", progress=False,
            transform=lambda b: (2 * b[0], b[1]))
    # times stored in the input's last channel; the transform turns them into the gaps (the first from t = 0)
    def with_times(split):
        x, y, tau = split
        return torch.cat([x, torch.cumsum(tau, 1)[..., None]], -1), y

    def gaps(batch):
        x, y = batch
        t = x[..., -1]
        return x[..., :-1], y, torch.diff(t, prepend=torch.zeros_like(t[:, :1]))

    result = fit(_MODEL, _train(), with_times(_split(0)), None, with_times(_split(2)), tmp_path / "form",
                 progress=False, transform=gaps)
    state = load_checkpoint(tmp_path / "form" / "checkpoints" / "last.ckpt")["state_dict"]
    model = SequenceModel.from_config(_MODEL).double()
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    x, y, tau = _split(2)
    with torch.no_grad():
        expected = ((model(x, intervals=tau, return_state=False)[0] - y) ** 2).mean().item()
        regular = ((model(x, return_state=False)[0] - y) ** 2).mean().item()
    assert result["test_loss"] == pytest.approx(expected, rel=1e-9)
    assert abs(regular - expected) > 1e-6 * expected


def test_a_killed_irregular_run_with_dropout_resumes_bit_for_bit(tmp_path):
    import lightning.pytorch as pl

    from ssmkit.train import fit
    from ssmkit.train.checkpoint import load_checkpoint

    class Stop(Exception):
        pass

    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 3:
                raise Stop

    model = SequenceModelConfig(d_input=2, d_model=4, n_layers=2, layer=["s4d", "mamba"], d_output=3,
                                head="classify", pool="mean", dropout=0.2,
                                layer_options={"s4d": {"d_state": 4}, "mamba": {"d_state": 4}})
    x, _, tau = _split(6, n=12)
    y = (x[:, :, 0].sum(1) > 0).long() + (tau.sum(1) > 14).long()
    config = _train(max_steps=6, checkpoint_every=2)
    fit(model, config, (x, y, tau), None, None, tmp_path / "whole", progress=False)
    with pytest.raises(Stop):
        fit(model, config, (x, y, tau), None, None, tmp_path / "cut", progress=False, extra_callbacks=[StopAt()])
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")["global_step"] == 2
    fit(model, config, (x, y, tau), None, None, tmp_path / "cut", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------------------------
# your own irregularly sampled arrays (the ``arrays`` task, ``ssmkit train --task arrays``)

def _arrays(n: int = 40, length: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, length, 2))
    tau = rng.uniform(0.2, 3.0, size=(n, length))
    return x, ((x[..., 0] * tau).sum(1) > 0).astype(np.int64), tau


def test_arrays_hold_out_each_samples_own_intervals_and_pad_token_gaps_with_one():
    from ssmkit.data import from_arrays

    x, y, tau = _arrays()
    task = from_arrays(x, y, intervals_train=tau)
    splits = task.splits()
    perm = np.random.default_rng(0).permutation(40)  # the documented hold-out: test first, then validation
    rows = {"test": np.sort(perm[:8]), "val": np.sort(perm[8:12]), "train": np.sort(perm[12:])}
    for name, ds in splits.items():
        inputs, _, gaps = ds.tensors
        assert gaps.dtype == torch.float64 and np.array_equal(gaps.numpy(), tau[rows[name]])
        assert np.allclose(inputs[..., 0].numpy() * task.std[0] + task.mean[0], x[rows[name], :, 0], atol=1e-5)
    # token sequences cut by lengths: the gaps after a length may hold anything (here 0) and become 1
    tokens = np.random.default_rng(1).integers(0, 5, size=(40, 10))
    lengths = np.random.default_rng(2).integers(1, 11, size=40)
    after = np.arange(10)[None, :] >= lengths[:, None]
    cut = np.where(after, 0.0, tau)
    tokens_task = from_arrays(tokens, y, lengths_train=lengths, intervals_train=cut, val_fraction=0, test_fraction=0)
    ids, _, gaps = tokens_task.splits()["train"].tensors
    assert np.array_equal(gaps.numpy(), np.where(after, 1.0, tau))
    assert np.array_equal(ids.numpy() == tokens_task.info().pad_id, after)
    whole = from_arrays(x, y, intervals_train=np.arange(1, 11)[None].repeat(40, 0), val_fraction=0, test_fraction=0)
    assert whole.splits()["train"].tensors[2].dtype == torch.float64  # whole periods as integers: read as floats


@pytest.mark.parametrize("arrays, match", [
    (lambda x, y, t: dict(intervals_train=t, x_val=x[:4], y_val=y[:4]), "holds intervals_train but not intervals_val"),
    (lambda x, y, t: dict(x_test=x[:4], y_test=y[:4], intervals_test=t[:4]), "intervals_test but not intervals_train"),
    (lambda x, y, t: dict(intervals_train=t[:, :3]), r"intervals_train must be \(B, L\) = \(40, 10\)"),
    (lambda x, y, t: dict(intervals_train=np.where(np.arange(40)[:, None] == 17, -t, t)),
     r"intervals_train holds 10 interval\(s\) .*; the first is -.* at index \(17, 0\)"),
])
def test_arrays_refuse_intervals_missing_from_a_split_or_not_positive(arrays, match):
    from ssmkit.data import from_arrays

    x, y, tau = _arrays()
    with pytest.raises(ValueError, match=match):
        from_arrays(x, y, **arrays(x, y, tau))


def test_the_arrays_task_trains_and_scores_with_its_intervals_and_refuses_a_layer_without(tmp_path):
    pytest.importorskip("lightning")
    from ssmkit.data import from_arrays
    from ssmkit.train import TrainConfig
    from ssmkit.train.checkpoint import load_checkpoint
    from ssmkit.train.experiment import Experiment, run_experiment

    x, y, tau = _arrays()
    task = from_arrays(x, y, intervals_train=tau)
    train = TrainConfig(max_steps=3, warmup_steps=1, lr=0.01, val_every=0, batch_size=8, precision="64")
    result = run_experiment(Experiment(task="arrays", d_model=4, n_layers=1, train=train), tmp_path / "run",
                            task=task, progress=False)
    with open(tmp_path / "run" / "model.json") as f:
        model = SequenceModel.from_config(SequenceModelConfig.from_dict(json.load(f))).double()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.eval()
    inputs, labels, gaps = task.splits()["test"].tensors
    with torch.no_grad():
        logits = model(inputs.double(), intervals=gaps, return_state=False)[0]
        regular = model(inputs.double(), return_state=False)[0]
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert result["test_loss"] == pytest.approx(loss, rel=1e-9)
    assert abs(torch.nn.functional.cross_entropy(regular, labels).item() - loss) > 1e-9
    with pytest.raises(ValueError, match=r"the model's layers \['attention'\] take none"):
        run_experiment(Experiment(task="arrays", model="attention", d_model=4, n_layers=1, train=train),
                       tmp_path / "attention", task=task, progress=False)
    assert not os.path.exists(tmp_path / "attention" / "checkpoints")
