"""Activation checkpointing of the blocks (``SequenceModel.activation_checkpointing``, ``TrainConfig``): against the
same model without it -- outputs, gradients, dropout masks, batch-norm statistics and the generator's stream after the
step -- and the bytes autograd keeps for the backward."""

from __future__ import annotations

import threading

import pytest
import torch

from ssmkit import layers, ops
from ssmkit.models import SequenceModel
from ssmkit.train import TrainConfig
from ssmkit.train.module import SequenceLightningModule
from tests.conftest import DEVICE, variants

F64 = torch.float64


def _model(pattern, norm="batch", dropout=0.2, dtype=F64, pool="mean"):
    torch.manual_seed(0)
    options = {name: variants(name)[0] for name in pattern}
    return SequenceModel(2, 4, len(pattern), pattern, options, 3, norm=norm, dropout=dropout, pool=pool,
                         device=DEVICE, dtype=dtype).train()


def _step(model, x, checkpointing, backward=None):
    """One training forward + backward from seed 5: (output, gradients, buffers, the next draw of the generator)."""
    model.activation_checkpointing = checkpointing
    torch.manual_seed(5)
    y, _ = model(x, return_state=False)
    loss = y.square().sum()
    if backward is None:
        loss.backward()
    else:
        backward(loss)
    return (y.detach(), [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()],
            torch.rand(3, device=DEVICE))


def _equal(a, b):
    """Bit for bit on the CPU (deterministic kernels); on a GPU to float64 round-off (atomic sums in some backwards
    add in another order from run to run, with or without the checkpoint)."""
    if a.device.type == "cpu":
        return torch.equal(a, b)
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def _same(a, b):
    assert _equal(a[0], b[0])
    assert all(_equal(g, h) for g, h in zip(a[1], b[1]))
    assert all(_equal(u, v) for u, v in zip(a[2], b[2]))  # running statistics updated once
    assert torch.equal(a[3], b[3])  # the generator's stream after the step is untouched by the recomputation


@pytest.mark.parametrize("name", layers.available())
def test_every_layer_recomputes_exactly_what_it_computed(name):
    x = torch.randn(3, 21, 2, dtype=F64, device=DEVICE)
    _same(_step(_model([name, name]), x, False), _step(_model([name, name]), x, True))


def test_a_padded_token_hybrid_and_its_states():
    torch.manual_seed(1)
    tokens = torch.randint(1, 9, (3, 16), device=DEVICE)
    tokens[1, 11:] = 0  # right padding
    tokens[2, 5:] = 0

    def run(checkpointing):
        torch.manual_seed(0)
        model = SequenceModel(1, 4, 3, ["s4d", "mega", "mamba"], {"mega": {"chunk_size": 4}}, 5, vocab_size=9, pad_id=0,
                              norm="rms", dropout=0.1, device=DEVICE, dtype=F64).train()
        model.activation_checkpointing = checkpointing
        torch.manual_seed(5)
        y, states = model(tokens)
        leaves = [t for s in states for t in torch.utils._pytree.tree_leaves(s) if isinstance(t, torch.Tensor)]
        (y.square().sum() + sum(t.abs().sum() for t in leaves if t.is_floating_point() or t.is_complex())).backward()
        return y.detach(), [p.grad.clone() for p in model.parameters()], leaves

    (ya, ga, sa), (yb, gb, sb) = run(False), run(True)
    assert _equal(ya, yb) and all(_equal(g, h) for g, h in zip(ga, gb))
    assert all(_equal(s, t) for s, t in zip(sa, sb))  # the final states come out of the checkpoint unchanged


def _saved_bytes(model, x):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, return_state=False)
    return total[0]


def test_only_the_blocks_inputs_are_kept_for_the_backward():
    model = _model(["s4d", "mamba", "attention", "rglru"], norm="layer", pool=None)
    x = torch.randn(2, 256, 2, dtype=F64, device=DEVICE)
    model.activation_checkpointing = False
    full = _saved_bytes(model, x)
    model.activation_checkpointing = True
    kept = _saved_bytes(model, x)
    block_input = x.shape[0] * x.shape[1] * 4 * 8  # (B, L, H) float64
    # the encoder's input, the four blocks' inputs, the final LayerNorm's and the head's inputs, the norm's statistics
    # (2 x B·L values), and a few weights (the norm's, the head's: 256 bytes at most)
    assert kept <= x.numel() * 8 + 6 * block_input + 2 * x.shape[0] * x.shape[1] * 8 + 256
    assert full > 4 * kept  # before: every activation of every block (59 block inputs' worth here)


def test_a_second_backward_recomputes_again():
    model = _model(["s4d", "mamba"])
    x = torch.randn(2, 12, 2, dtype=F64, device=DEVICE)
    first = _step(model, x, False)

    def twice(loss):
        loss.backward(retain_graph=True)
        loss.backward()

    model.zero_grad()
    second = _step(model, x, True, backward=twice)
    assert all(_equal(2 * g, h) for g, h in zip(first[1], second[1]))


def test_the_recomputation_keeps_the_forward_backend_in_another_thread():
    # a CUDA backward runs on PyTorch's device thread, which sees the default backend; a CPU backward started in a
    # new thread does the same: the recomputation must still take the forward's path
    model = _model(["s4d", "ema"], dropout=0.0)
    x = torch.randn(2, 12, 2, dtype=F64, device=DEVICE)
    with ops.use_backend("reference"):
        want = _step(model, x, False)
        model.zero_grad()
        model.activation_checkpointing = True
        torch.manual_seed(5)
        y, _ = model(x, return_state=False)
    errors = []

    def backward():
        try:
            y.square().sum().backward()
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    thread = threading.Thread(target=backward)
    thread.start()
    thread.join()
    assert not errors
    assert all(_equal(g, p.grad) for g, p in zip(want[1], model.parameters()))


def test_without_gradients_nothing_is_checkpointed_and_the_outputs_agree():
    model = _model(["s4d", "mamba"]).eval()
    x = torch.randn(2, 12, 2, dtype=F64, device=DEVICE)
    model.activation_checkpointing = True
    with torch.no_grad():
        y_ck, states_ck = model(x)
    model.activation_checkpointing = False
    with torch.no_grad():
        y, states = model(x)
    assert _equal(y, y_ck)
    assert all(_equal(a, b) for a, b in zip(torch.utils._pytree.tree_leaves(states),
                                                  torch.utils._pytree.tree_leaves(states_ck)))


def test_train_config_sets_it_and_checks_it():
    config = {"d_input": 2, "d_model": 4, "n_layers": 1, "layer": "s4d", "d_output": 3}
    assert SequenceLightningModule(config, TrainConfig(activation_checkpointing=True)).model.activation_checkpointing
    assert not SequenceLightningModule(config, TrainConfig()).model.activation_checkpointing
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="activation_checkpointing must be True or False"):
            TrainConfig(activation_checkpointing=bad)


def test_under_torch_compile_the_checkpoint_is_dynamos_own_and_gives_the_same_step():
    # dynamo refuses a context_fn that is not a TorchDispatchMode: compiled, the checkpoint goes without one (the
    # backend is fixed when the graph is traced; the compiled recomputation does not replay the running statistics)
    x = torch.randn(2, 12, 2, device=DEVICE)
    eager = _model(["s4d", "mamba"], dropout=0.0, dtype=torch.float32)
    compiled = _model(["s4d", "mamba"], dropout=0.0, dtype=torch.float32)
    want = _step(eager, x, False)
    compiled.activation_checkpointing = True
    run = torch.compile(compiled)
    y, _ = run(x, return_state=False)
    y.square().sum().backward()
    torch.testing.assert_close(y.detach(), want[0], rtol=1e-5, atol=1e-6)
    for g, p in zip(want[1], compiled.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
    for a, b in zip(want[2], compiled.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)  # updated once
