"""Probe of 2026-12-05: silent wrong answers in compilation, export, mixed precision and training.

Every number is checked against an independent reference: the eager layer or model (a deep copy holding the same
weights, or a fresh one loaded with them), float64, the uninterrupted run, the un-checkpointed backward, the whole
batch, or ``torch.autograd.functional.jacobian`` of the eager layer. Tiny widths; ``torch.compile`` with
``aot_eager`` (the same graphs as inductor, without its code generation). docs/design.md, "Probe of 2026-12-05
(compile, export, mixed precision, training)".
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
import torch._dynamo
from torch.export import Dim
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.models import SequenceModel, SequenceModelConfig
from tests.conftest import DEVICE, H, rel_err, variants


def _layer(name: str, dtype=torch.float32, seed: int = 1, d_model: int = 4):
    torch.manual_seed(seed)
    return layers.build(name, d_model=d_model, dtype=dtype, **variants(name)[0])


# ---------------------------------------------------------------------------------------------------------------
# torch.export: the complex scans with parameters that require grad (FIXED: ops/symbolic.carry)
# ---------------------------------------------------------------------------------------------------------------

# the layers whose exported chunked scan carries a complex state across the chunks (ops/symbolic.carry)
COMPLEX_CARRY = ["s4d", "dss", "dlr", "lru", "s5", "gss", "h3"]


@pytest.mark.parametrize("name", COMPLEX_CARRY)
def test_export_with_gradients_enabled_runs_and_differentiates_the_complex_scans(name):
    # README's export recipe has no torch.no_grad(), and a layer's parameters require grad: torch's scan op then traced
    # its autograd, which cannot slice a complex carry ("select_copy does not support automatic differentiation for
    # outputs with complex dtype"): export failed for these 7 layers, and a program exported under no_grad failed the
    # same way when run with a gradient (its parameters require grad). The carry now runs as (re, im) pairs.
    layer = _layer(name, torch.float64).eval()
    h0 = layer.initial_state(2)
    h0 = type(h0)(*(torch.randn_like(t) for t in h0)) if isinstance(h0, tuple) else torch.randn_like(h0)
    x = torch.randn(2, 12, 4, dtype=torch.float64)
    spec = torch.utils._pytree.tree_map(lambda t: None, h0)
    program = torch.export.export(layer, (x, h0), dynamic_shapes=({1: Dim("L", min=2, max=200)}, spec)).module()
    x = torch.randn(2, 70, 4, dtype=torch.float64, requires_grad=True)  # another length, across chunk boundaries
    y_p, h_p = program(x, h0)
    y_e, h_e = layer(x, h0)
    assert rel_err(y_p, y_e) < 1e-12
    for a, b in zip(torch.utils._pytree.tree_leaves(h_p), torch.utils._pytree.tree_leaves(h_e)):
        assert rel_err(a, b) < 1e-12
    w = torch.randn_like(y_e)
    g_p = torch.autograd.grad((y_p * w).sum(), [x, *program.parameters()])
    g_e = torch.autograd.grad((y_e * w).sum(), [x, *layer.parameters()])
    assert len(g_p) == len(g_e)
    for a, b in zip(g_p, g_e):
        assert rel_err(a, b) < 1e-10


def test_exported_model_runs_other_lengths_and_batches_with_both_dims_declared():
    # README's recipe: one program for every length and batch size needs the batch axis declared too (exported with
    # only L dynamic, a batch of 3 fails torch's guard "x.size()[0] == 2")
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=4, n_layers=2, layer="s4d", layer_options=variants("s4d")[0],
                          d_output=3, head="regress", pool=None).eval()
    x = torch.randn(2, 12, 2)
    program = torch.export.export(model, (x, None, True), dynamic_shapes=(
        {0: Dim("B", min=1, max=8), 1: Dim("L", min=2, max=64)}, None, None)).module()
    for B, L in ((3, 5), (1, 64), (5, 29)):
        x = torch.randn(B, L, 2)
        (y_p, h_p), (y_e, h_e) = program(x, None, True), model(x, None, True)
        assert rel_err(y_p, y_e) < 1e-5
        assert all(rel_err(a, b) < 1e-5 for a, b in zip(h_p, h_e))


def test_onnx_export_of_mamba2_runs_another_length_in_onnxruntime(tmp_path_factory):
    # the graph of Mamba-2's forward (d_model 3, L dynamic in [2, 4096]) that tests/layers/test_dynamic_export.py runs
    # too, exported once per process (tests/layers/export_cache.py), run by onnxruntime at two other lengths
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tests.layers.export_cache import onnx_forward

    exported = onnx_forward("mamba2", tmp_path_factory)
    session = ort.InferenceSession(exported.path)
    with torch.no_grad():
        for L in (5, 37):
            x = torch.randn(2, L, H, device=DEVICE)
            got = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0]
            assert rel_err(torch.from_numpy(got), exported.module(x)) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# torch.compile: parameters changed in place, loaded, replaced, widened; another length; the compiled step
# ---------------------------------------------------------------------------------------------------------------

COMPILED = ["s4", "s4d", "mamba2", "rglru", "hyena"]  # a cached kernel, the C scans, the SSD, an FFT convolution


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_forward_follows_weight_changes_and_lengths(name):
    torch._dynamo.reset()
    layer, other = _layer(name), _layer(name, seed=2)
    ref = copy.deepcopy(layer)
    compiled = torch.compile(layer, backend="aot_eager")
    x = torch.randn(2, 20, 4)
    with torch.no_grad():
        assert rel_err(compiled(x)[0], ref(x)[0]) < 1e-6
        for model in (layer, ref):
            for p in model.parameters():
                p.mul_(0.9)
        assert rel_err(compiled(x)[0], ref(x)[0]) < 1e-6
        layer.load_state_dict(other.state_dict())
        ref.load_state_dict(other.state_dict())
        assert rel_err(compiled(x)[0], ref(x)[0]) < 1e-6
        x2 = torch.randn(2, 33, 4)
        assert rel_err(compiled(x2)[0], ref(x2)[0]) < 1e-6
        layer.load_state_dict({k: v.clone() + 0.01 for k, v in other.state_dict().items()}, assign=True)
        ref.load_state_dict({k: v.clone() + 0.01 for k, v in other.state_dict().items()})
        assert rel_err(compiled(x)[0], ref(x)[0]) < 1e-6
    # training: gradients after an in-place update
    with torch.no_grad():
        for model in (layer, ref):
            for p in model.parameters():
                p.add_(0.01)
    w = torch.randn(2, 20, 4)
    g_c = torch.autograd.grad((compiled(x)[0] * w).sum(), list(layer.parameters()), allow_unused=True)
    g_e = torch.autograd.grad((ref(x)[0] * w).sum(), list(ref.parameters()), allow_unused=True)
    for a, b in zip(g_c, g_e):
        assert (a is None) == (b is None) and (a is None or rel_err(a, b) < 1e-5)
    layer.double()
    ref.double()
    with torch.no_grad():
        assert rel_err(compiled(x.double())[0], ref(x.double())[0]) < 1e-12


@pytest.mark.parametrize("name", ["s4d", "mamba"])
def test_compiled_step_follows_weights_changed_after_a_frozen_block(name):
    torch._dynamo.reset()
    layer = _layer(name)
    ref = copy.deepcopy(layer)
    step = torch.compile(layer.step, backend="aot_eager")
    x = torch.randn(2, 6, 4)
    with torch.no_grad():
        h, h_r = layer.initial_state(2), ref.initial_state(2)
        with layers.frozen_parameters():
            for t in range(3):
                (y, h), (y_r, h_r) = step(x[:, t], h), ref.step(x[:, t], h_r)
        for model in (layer, ref):
            for p in model.parameters():
                p.mul_(0.8)  # outside the block: the step's cache must see it
        for t in range(3, 6):
            (y, h), (y_r, h_r) = step(x[:, t], h), ref.step(x[:, t], h_r)
            assert rel_err(y, y_r) < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------------------------------------------

class _LowPrecisionOps(TorchDispatchMode):
    """The aten ops that receive a bfloat16 or float16 tensor."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(isinstance(a, torch.Tensor) and a.dtype in (torch.bfloat16, torch.float16)
               for a in torch.utils._pytree.tree_leaves((args, kwargs))):
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **kwargs)


# the projections' ops and the casts around them
PROJECTION_OPS = {"t", "view", "mm", "addmm", "_unsafe_view", "_to_copy", "split"}


@pytest.mark.parametrize("name", ["s4d", "s5", "lru", "ema", "mamba", "mamba2"])
def test_under_bf16_autocast_only_the_projections_see_bf16(name):
    # README: under torch.autocast the SSM core stays in float32. Recorded below the autocast key: the LTI layers
    # never see a bf16 tensor, the mixers only in their projections (no exp, softplus, scan or norm in bf16)
    layer = _layer(name)
    x = torch.randn(2, 20, 4)
    mode = _LowPrecisionOps()
    with torch.autocast("cpu", dtype=torch.bfloat16), mode:
        y, _ = layer(x)
    assert y.dtype == torch.float32
    if name in ("mamba", "mamba2"):
        assert mode.ops and set(mode.ops) <= PROJECTION_OPS, dict(mode.ops)
    else:
        assert not mode.ops, dict(mode.ops)
        assert rel_err(y, layer(x)[0]) < 1e-6  # the whole layer in float32


def _autocast_grads(module, x):
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = (module(xg)[0] * torch.linspace(-1, 1, x.shape[1])[None, :, None]).sum()
    return torch.autograd.grad(loss, [xg, *module.parameters()])  # backward outside autocast, as documented


def test_compiled_backward_under_autocast_needs_backward_pass_autocast_off():
    # Not ssmkit's: torch.compile's backward replays the forward's autocast (torch._functorch.config.
    # backward_pass_autocast = "same_as_forward", torch 2.13's default; pytorch/pytorch#179804), ignoring the
    # autocast-disabled float32 core, so S5's gradients came out in bf16 precision (log Δ 2.7e-2 off the float32
    # ones, eager 1.5e-6) while its forward was exact. README gives the setting; when this test's first assertion
    # fails, torch has fixed it and the README note can go.
    x = torch.randn(2, 20, 4)
    layer = _layer("s5")
    ref = copy.deepcopy(layer)
    g_fp32 = torch.autograd.grad((ref(x.clone().requires_grad_())[0] * torch.linspace(-1, 1, 20)[None, :, None]).sum(),
                                 list(ref.parameters()))
    g_eager = _autocast_grads(ref, x)[1:]
    assert max(rel_err(a, b) for a, b in zip(g_eager, g_fp32)) < 1e-6  # eager: the core's gradients in float32
    torch._dynamo.reset()
    g_default = _autocast_grads(torch.compile(layer, backend="aot_eager"), x)[1:]
    assert max(rel_err(a, b) for a, b in zip(g_default, g_fp32)) > 1e-4  # torch's default: bf16 backward
    torch._dynamo.reset()
    with torch._functorch.config.patch(backward_pass_autocast="off"):
        g_off = _autocast_grads(torch.compile(copy.deepcopy(ref), backend="aot_eager"), x)[1:]
    assert max(rel_err(a, b) for a, b in zip(g_off, g_fp32)) < 1e-6
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------------------------
# Activation checkpointing, gradient accumulation, torch.func
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["s4d", "mamba2", "rglru"])
@pytest.mark.parametrize("backend", ["auto", "chunked"])
def test_checkpointed_blocks_with_dropout_give_the_plain_gradients(name, backend):
    # the Block's dropout draws its mask in C from one seed of torch's generator per call: the checkpoint's replay
    # of the generator must redraw the same mask, also under a forced backend (checkpoint_contexts)
    torch.manual_seed(0)
    model = SequenceModel(d_input=3, d_model=6, n_layers=2, layer=name, layer_options=variants(name)[0], d_output=2,
                          head="regress", pool=None, dropout=0.3).train()
    x = torch.randn(2, 70, 3)

    def grads(mode):
        model.zero_grad()
        torch.manual_seed(5)
        with ops.use_backend(backend):
            h = model.encoder(x)
            for block in model.blocks:
                run = lambda t, block=block: block(t)[0]  # noqa: E731
                if mode == "plain":
                    h = run(h)
                elif mode == "reentrant":
                    h = checkpoint(run, h, use_reentrant=True)
                else:
                    h = checkpoint(run, h, use_reentrant=False, context_fn=ops.checkpoint_contexts)
            h.square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads("plain")
    assert len(plain) > 4
    for mode in ("reentrant", "non-reentrant"):
        got = grads(mode)
        assert len(got) == len(plain) and all(torch.equal(a, b) for a, b in zip(got, plain)), mode
    model.blocks[0].dropout.p = 0.0  # the masks matter: without them the gradients differ
    assert any(not torch.equal(a, b) for a, b in zip(grads("plain"), plain))


def test_gradient_accumulation_equals_the_whole_batch():
    torch.manual_seed(0)
    model = SequenceModel(d_input=3, d_model=6, n_layers=2, layer=["mamba", "s4d"], d_output=4, head="classify",
                          pool="mean", layer_options={"mamba": {"d_state": 4}, "s4d": {"d_state": 4}},
                          dtype=torch.float64)
    x, y = torch.randn(8, 30, 3, dtype=torch.float64), torch.randint(0, 4, (8,))
    loss = lambda xb, yb: torch.nn.functional.cross_entropy(model(xb, return_state=False)[0], yb)  # noqa: E731
    whole = torch.autograd.grad(loss(x, y), list(model.parameters()))
    model.zero_grad()
    for part in range(4):
        (loss(x[2 * part:2 * part + 2], y[2 * part:2 * part + 2]) / 4).backward()
    assert all(rel_err(p.grad, g) < 1e-12 for p, g in zip(model.parameters(), whole))


@pytest.mark.parametrize("name", ["mamba2", "rglru", "s4"])
def test_jacrev_and_per_sample_gradients_through_functional_call(name):
    from torch.func import functional_call, grad, jacrev, vmap

    layer, other = _layer(name, torch.float64, d_model=3), _layer(name, torch.float64, seed=2, d_model=3)
    params = dict(other.named_parameters())
    buffers = dict(other.named_buffers())
    x = torch.randn(1, 9, 3, dtype=torch.float64)
    J = jacrev(lambda xx: functional_call(layer, {**params, **buffers}, (xx,))[0])(x)
    J_ref = torch.autograd.functional.jacobian(lambda xx: other(xx)[0], x)
    assert rel_err(J, J_ref) < 1e-12
    xb = torch.randn(3, 9, 3, dtype=torch.float64)
    per_sample = vmap(grad(lambda p, xs: functional_call(layer, {**p, **buffers}, (xs[None],))[0].square().sum()),
                      in_dims=(None, 0))(params, xb)
    for i in range(3):
        other.zero_grad()
        other(xb[i:i + 1])[0].square().sum().backward()
        for n, p in other.named_parameters():
            assert rel_err(per_sample[n][i], p.grad) < 1e-10, n


# ---------------------------------------------------------------------------------------------------------------
# Training: resume, float64 runs (FIXED: train/module.py), shipped configs on the command line
# ---------------------------------------------------------------------------------------------------------------

def _run(tmp_path, layer: str, precision: str, stop: int | None = None, resume: bool = False, name: str = "run"):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl

    from ssmkit.train import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    X = torch.randn(48, 10, 1, generator=g)
    Xv = torch.randn(16, 10, 1, generator=g)
    Y, Yv = (X.sum(dim=(1, 2)) > 0).long(), (Xv.sum(dim=(1, 2)) > 0).long()
    options = {"d_state": 4, **({"headdim": 3} if layer == "mamba2" else {})}
    model = SequenceModelConfig(d_input=1, d_model=6, n_layers=2, layer=layer, d_output=2, layer_options=options,
                                dropout=0.2)
    cfg = TrainConfig(batch_size=8, max_steps=9, warmup_steps=2, val_every=2, checkpoint_every=3, lr=1e-2,
                      log_every=1, precision=precision, grad_clip=0.5, early_stopping=3)

    class Stop(Exception):
        pass

    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == stop:
                raise Stop

    try:
        return fit(model, cfg, (X, Y), (Xv, Yv), (Xv, Yv), tmp_path / name, progress=False, resume=resume,
                   extra_callbacks=[StopAt()] if stop else [])
    except Stop:
        return None


_WHOLE_RUNS: dict = {}


def _whole_run(tmp_path_factory, layer: str, precision: str):
    """The uninterrupted run of ``_run(..., layer, precision)``, once per process (the resumed run's reference and the
    float64 checkpoint that Lightning loads): (fit's result, the run's folder). Read only: no test changes either."""
    if (layer, precision) not in _WHOLE_RUNS:
        folder = tmp_path_factory.mktemp(f"whole_{layer}_{precision}")
        _WHOLE_RUNS[layer, precision] = (_run(folder, layer, precision, name="whole"), folder / "whole")
    return _WHOLE_RUNS[layer, precision]


def _last_weights(folder):
    from ssmkit.train.checkpoint import load_checkpoint

    return load_checkpoint(folder / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.parametrize("layer, precision, stop", [("s4d", "64", 5), ("mamba", "64", 4), ("mamba2", "bf16-mixed", 7)])
def test_a_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, tmp_path_factory, layer, precision, stop):
    # precision "64": Lightning loaded the checkpoint's float64 weights into the float32 module it was given and
    # converted it to float64 only afterwards, so a resumed run started from float32-rounded weights and ended 2.4e-7
    # (S4D) from the uninterrupted one. The module is float64 from the start now.
    whole, whole_folder = _whole_run(tmp_path_factory, layer, precision)
    assert _run(tmp_path, layer, precision, stop=stop, name="cut") is None
    resumed = _run(tmp_path, layer, precision, resume=True, name="cut")
    assert resumed["resumed_from"] is not None and resumed["steps"] == whole["steps"] == 9
    a, b = _last_weights(whole_folder), _last_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a[next(iter(a))].dtype == (torch.float64 if precision == "64" else torch.float32)
    for key in ("val_loss", "test_loss", "best_val_step", "best_val_loss"):
        assert whole[key] == resumed[key], key


def test_lightning_load_from_checkpoint_keeps_a_float64_run_in_float64(tmp_path_factory):
    # SequenceLightningModule.load_from_checkpoint of a precision "64" run built a float32 module and rounded the
    # weights into it (2.3e-7), silently. The run: the resumed test's uninterrupted S4D run in float64 (shared).
    from ssmkit.train.module import SequenceLightningModule

    _, folder = _whole_run(tmp_path_factory, "s4d", "64")
    path = folder / "checkpoints" / "last.ckpt"
    saved = _last_weights(folder)
    module = SequenceLightningModule.load_from_checkpoint(path)
    loaded = module.state_dict()
    assert all(loaded[k].dtype == torch.float64 and torch.equal(loaded[k], saved[k]) for k in saved)


def test_a_shipped_config_keeps_its_layer_options_when_one_is_changed_by_its_dotted_name():
    # docs (train/commands.py, README "Shipped configs"): --layer_options.NAME changes one option of a config;
    # --layer_options '{...}' replaces the config's whole dict (jsonargparse), which dropped S4's bidirectional,
    # l_max and lr of lra/listops-s4 silently when used to change d_state
    pytest.importorskip("jsonargparse")
    from ssmkit.train.commands import _experiment, _parser, _resolve_config_args

    parser = _parser("ssmkit train", compare=False)
    dotted = _experiment(parser, parser.parse_args(_resolve_config_args(
        ["--config", "lra/listops-s4", "--layer_options.d_state", "2"])))
    assert dotted.layer_options["d_state"] == 2
    assert dotted.layer_options["bidirectional"] is True and dotted.layer_options["l_max"] == 2048
    assert dotted.layer_options["lr"] == 0.001
    whole = _experiment(parser, parser.parse_args(_resolve_config_args(
        ["--config", "lra/listops-s4", "--layer_options", '{"d_state": 2}'])))
    assert whole.layer_options == {"d_state": 2}  # as documented: the whole dict
