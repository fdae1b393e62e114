"""Serving probe of 2026-12-05 (an ML engineer deploying ssmkit models for streaming inference): one model shared by
request threads, ``torch.inference_mode``, and streaming states cut, joined, broadcast and cast between calls. Each
number is checked against an independent reference: the same call made alone in one thread, the uninterrupted
one-pass forward of the whole batch, the same item run alone, or the same layer whose caches were never touched by
inference mode.

Findings (fixed):

1. *The C kernels were lost for the whole process when its first call came inside ``torch.inference_mode``*
   (``ssmkit.ops.native.gate.native_status``). The smoke call that admits a kernel differentiates its outputs; its
   inputs were drawn in the caller's inference mode, so the backward failed with "Inference tensors cannot be saved
   for backward", and 26 of the 30 (op, dtype) kernels (every one but dropout, the three fused steps and the FFT
   blocks) were marked unusable for the rest of the process. A server that warms up under ``inference_mode``, as
   PyTorch advises, then ran ``"auto"`` on the PyTorch paths, silently: at B 4, L 2 048, H 64 float32 on one
   thread, S4D's forward took 14.5 ms instead of 2.8, Mamba's 48 instead of 21, RG-LRU's 17 instead of 8, Mamba-2's
   100 instead of 66; a forced ``"native"`` raised. The smoke call now runs outside inference mode (as the Triton
   gate's already did: it runs in its own thread). Reference: the status of every kernel asked outside inference
   mode.
2. *A float64 SGConv could not be trained once an SGConv of the same sizes had been built inside
   ``torch.inference_mode``* (``ssmkit.layers.sgconv``): the upsampling matrices are cached per (d, factor) for the
   process, and one first built in inference mode was an inference tensor, which ``.to`` hands out as it is to a
   float64 layer: its backward raised "Inference tensors cannot be saved for backward" for every later float64
   SGConv of those sizes (the conftest variants with 3 and 4 scales; float32 layers got a copy). The cache is now
   filled outside inference mode. Reference: the gradients of a layer built with the cache filled normally.

Checked and right (a test each below): four threads released together on a float32 layer and its float64 copy, each
thread mixing lengths 1 to 40, batch sizes 1 to 3, the step loop and a chunked continuation, backends set per thread,
grad / no_grad / inference_mode per call, and one thread switching ``torch.set_num_threads`` between 1 and 2 before
each request, give each call's single-threaded outputs and gradients (within 32 ulps: the thread count moves S4's
float64 parameter gradients by 10; a racing cache errs by O(1), as a cache made to hand out another length's plan
showed; S4's per-length plan cache, Hyena's growing step filters, the C kernels); a stream's state cut to a subset of
the batch rows (finished streams dropped) with ``ssmkit.layers.state.map_state``, and the states of two batches
concatenated, continue as the one-pass forward of those rows, for every layer and for a 3-block model with batch norm
and dropout in eval mode, post-norm, chunks of 1 and odd lengths and steps interleaved; one prefix state broadcast to
B samples by ``expand`` (stride 0, as beam search does) gives the contiguous copy's outputs bit for bit in forward and
step, and nothing a call returns aliases its input, its state or its output (a caller reusing its input buffer or
writing into an output in place leaves the returned state as it was); a float32 layer's state cast to complex128 /
float64 continues in the float64 layer (within float32 rounding); a prefix input broadcast by ``expand`` or with
other strides gives the contiguous input's outputs, every backend. Also checked, no test kept: four threads at ten
lengths and two batch sizes on every layer, float32 and float64 (all equal); the native kernels' smoke calls under
autocast, ``set_detect_anomaly``, ``save_on_cpu``, a forward-AD level and ``use_deterministic_algorithms`` (all pass).

Noticed and left (design, for the lead):
- A pooled model pools each call: ``model(x[:, 20:], state)`` after ``model(x[:, :20])`` gives the mean of the last
  10 steps only (``pool="mean"``: 0.28 relative from the one-pass output, S4D, 2 blocks), and with ``pad_id`` and
  ``pool="last"`` a final chunk that holds only padding for an item gives that chunk's first position instead of the
  item's last token (1.16 relative); the docs say only that ``step`` forms no running mean. A streaming classifier
  must pool itself (``pool=None``).
- There is no public helper to index or join states: ``map_state`` is in ``ssmkit.layers.state`` but not exported,
  and it does not take a model's list of block states (a list, which ``detach_state`` takes).
- The smoke call of the fused steps seeds torch's global generator inside ``fork_rng`` (``_smoke_step``): a thread
  drawing random numbers at that moment (sampling in another request) draws from the seeded stream.
"""

from __future__ import annotations

import copy
import random
import sys
import threading

import pytest
import torch
import torch.utils._pytree as pytree

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers.state import map_state
from ssmkit.models import SequenceModel
from ssmkit.ops.native import gate
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, run_steps, variants

F64 = torch.float64
STEP_NAMES = [name for name in layers.available() if layers.layer_class(name).capabilities.step]
pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="threads, inference mode and the C kernels on the CPU")


def state_err(a, b) -> float:
    return max([rel_err(x, y) for x, y in zip(leaves(a), leaves(b), strict=True)] + [0.0])


def cat_states(a, b):
    """Two states of one layer (or two lists of block states) joined along the batch axis."""
    la, spec = pytree.tree_flatten(a)
    lb, _ = pytree.tree_flatten(b)
    return pytree.tree_unflatten([torch.cat([x, y]) for x, y in zip(la, lb, strict=True)], spec)


# ---------------------------------------------------------------------------------------------------------------------
# Finding 1: the native kernels' smoke call inside inference mode


def test_the_native_kernels_are_admitted_when_the_first_call_comes_inside_inference_mode(monkeypatch):
    wanted = {(op, dt): gate.native_status(op, dt)[0] for op in gate.OPS for dt in (torch.float32, F64)}
    assert sum(wanted.values()) >= 26  # (the kernels build here; the test would be empty otherwise)
    monkeypatch.setattr(gate, "_STATUS", {})  # as in a fresh process (restored afterwards)
    with torch.inference_mode():
        got = {(op, dt): gate.native_status(op, dt)[0] for op in gate.OPS for dt in (torch.float32, F64)}
    assert got == wanted, [(k, gate._STATUS[(k[0], gate.DTYPES[k[1]])][1][:80]) for k in wanted if got[k] != wanted[k]]


def test_a_server_warmed_up_in_inference_mode_runs_the_forced_native_backend(monkeypatch):
    monkeypatch.setattr(gate, "_STATUS", {})
    layer = make_layer("s4d", dtype=torch.float32).eval()
    x = torch.randn(2, 70, H, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        layer(x[:, :5])  # the warm-up call: the first native call of the process
        with ops.use_backend("native"):
            y, h = layer(x)  # raised "backend 'native' cannot run here: the smoke call failed: ..."
        with ops.use_backend("reference"):
            y_ref, h_ref = layer(x)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(h, h_ref) < 1e-5  # float32, L 70: ~1e-7 here


# ---------------------------------------------------------------------------------------------------------------------
# Finding 2: process-wide caches filled inside inference mode


def clear_process_caches() -> int:
    """Empty every ``functools.lru_cache`` of ssmkit's ops and layers (as in a fresh process); how many there were."""
    n = 0
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith(("ssmkit.ops", "ssmkit.layers")):
            continue
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", "").startswith("ssmkit"):
                value.cache_clear()
                n += 1
    return n


def grads_of_a_fresh_layer(name: str, opts: dict, x: torch.Tensor) -> list[torch.Tensor]:
    layer = make_layer(name, opts)
    x = x.clone().requires_grad_()
    y, _ = layer(x)
    loss = y.square().sum()
    if layer.supports("step"):
        loss = loss + layer.step(x[:, 0], layer.initial_state(x.shape[0]))[0].square().sum()
    params = [p for p in layer.parameters() if p.requires_grad]
    return [g for g in torch.autograd.grad(loss, [x, *params], allow_unused=True) if g is not None]


@pytest.mark.parametrize("name,opts", [(n, o) for n in layers.available() for o in variants(n)[:2]],
                         ids=[f"{n}-{i}" for n in layers.available() for i in range(len(variants(n)[:2]))])
def test_a_layer_built_inside_inference_mode_leaves_later_layers_trainable(name, opts):
    x = torch.randn(2, 20, H, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert clear_process_caches() >= 3  # hippo's two and SGConv's
    expected = grads_of_a_fresh_layer(name, opts, x)  # the caches filled outside inference mode
    clear_process_caches()
    with torch.inference_mode():
        make_layer(name, opts)  # a server's model, loaded for inference: fills the process's caches
    got = grads_of_a_fresh_layer(name, opts, x)  # raised for SGConv in float64
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# Threads: one model (a float32 layer and its float64 copy) serving mixed requests at once

THREAD_NAMES = ["s4", "s4d", "s5", "mamba", "mamba2", "rglru", "hyena", "sgconv", "liquid_s4", "attention", "mega"]
MODES = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference": torch.inference_mode}


def request(layer, job) -> list[torch.Tensor]:
    """One request: forward at (L, B) under a backend and a grad mode, with the gradients in grad mode; or the step
    loop, or a chunked continuation of an earlier forward's state."""
    kind, backend, L, B, mode = job
    dtype = next(layer.parameters()).dtype
    x = torch.randn(B, L, H, dtype=F64, generator=torch.Generator().manual_seed(17 * L + B)).to(dtype)
    with ops.use_backend(backend), MODES[mode]():
        if kind == "steps":
            y, h = run_steps(layer, x)
            return [y, *leaves(h)]
        if kind == "chunks":
            h, ys = layer.initial_state(B), []
            for a, b in ((0, 1), (1, 4), (4, L)):
                y, h = layer(x[:, a:b], state=h)
                ys.append(y)
            return [torch.cat(ys, 1), *leaves(h)]
        x = x.clone().requires_grad_(mode == "grad")
        y, h = layer(x)
        out = [y.detach(), *[t.detach() for t in leaves(h)]]
        if mode == "grad":
            params = [p for p in layer.parameters() if p.requires_grad]
            out += [g for g in torch.autograd.grad(y.square().sum(), [x, *params], allow_unused=True) if g is not None]
        return out


def jobs_for(layer) -> list[tuple]:
    backends = ("auto",) + tuple(b for b in layer.backends if b in ("chunked", "native", "fft"))[:1]
    jobs = [("forward", b, L, B, m) for b in backends for L, B in ((1, 2), (7, 1), (23, 3), (40, 2)) for m in MODES]
    if layer.supports("step"):
        jobs += [("steps", "auto", 6, 2, "no_grad"), ("steps", "auto", 5, 1, "inference"),
                 ("chunks", "auto", 13, 3, "grad")]
    return jobs


@pytest.mark.parametrize("name", THREAD_NAMES)
def test_threads_sharing_a_float32_and_a_float64_model_get_each_requests_lone_answer(name):
    base32 = make_layer(name, dtype=torch.float32).eval()
    base64 = make_layer(name, dtype=F64).eval()
    jobs = jobs_for(base32)
    expected = {dt: {j: request(copy.deepcopy(base), j) for j in jobs} for dt, base in ((32, base32), (64, base64))}
    shared = {32: copy.deepcopy(base32), 64: copy.deepcopy(base64)}  # empty caches: filled by the racing threads
    barrier, errors, worst = threading.Barrier(4), [], {32: 0.0, 64: 0.0}

    def serve(i: int) -> None:
        dt = 32 if i % 2 else 64
        order = jobs[:]
        random.Random(i).shuffle(order)
        try:
            barrier.wait()
            for k, job in enumerate(order * 2):
                if i == 0:  # a server retuning its intra-op threads between requests (process-wide)
                    torch.set_num_threads(1 + k % 2)
                got = request(shared[dt], job)
                assert len(got) == len(expected[dt][job])
                for a, b in zip(got, expected[dt][job]):
                    worst[dt] = max(worst[dt], rel_err(a, b))
        except BaseException as err:  # noqa: BLE001 -- reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(4)]
    n_threads = torch.get_num_threads()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(n_threads)
    if errors:
        raise errors[0]
    # a cache race (another length's plan, another dtype's kernel, a half-built entry) errs by O(1); rounding does not:
    # MKL's GEMMs round differently in another thread (tests/layers/test_concurrency.py), and PyTorch's reductions
    # split by the thread count (S4's parameter gradients: 10 ulps apart in float64 on 1 and on 2 threads)
    assert worst[32] <= 32 * torch.finfo(torch.float32).eps, worst
    assert worst[64] <= 32 * torch.finfo(F64).eps, worst


# ---------------------------------------------------------------------------------------------------------------------
# Streaming states: cut, joined, broadcast, cast, and never aliased


@pytest.mark.parametrize("name", STEP_NAMES)
def test_a_state_cut_to_some_rows_or_joined_from_two_batches_continues_the_one_pass_forward(name):
    layer = make_layer(name).eval()
    x = torch.randn(3, 31, H, dtype=F64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y, h = layer(x)
        _, h1 = layer(x[:, :13])
        rows = [2, 0]  # stream 1 finished: dropped, the others reordered
        y_cut, h_cut = layer(x[rows, 13:], state=map_state(lambda t: t[rows], h1))
        assert rel_err(y_cut, y[rows, 13:]) < 1e-12
        assert state_err(h_cut, map_state(lambda t: t[rows], h)) < 1e-12
        _, ha = layer(x[:1, :13])
        _, hb = layer(x[1:, :13])
        y_cat, h_cat = layer(x[:, 13:], state=cat_states(ha, hb))
        assert rel_err(y_cat, y[:, 13:]) < 1e-12 and state_err(h_cat, h) < 1e-12
        ys, hs = run_steps(layer, x[:, 13:], cat_states(ha, hb))
        assert rel_err(ys, y[:, 13:]) < 1e-10 and state_err(hs, h) < 1e-10  # (DESIGN.md rule 1, float64)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", STEP_NAMES)
def test_one_prefix_state_broadcast_to_many_samples_and_no_output_aliases_an_input(name, dtype):
    layer = make_layer(name, dtype=dtype).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        _, prefix = layer(torch.randn(1, 9, H, dtype=dtype, generator=g))
        xb = torch.randn(4, 7, H, dtype=dtype, generator=g)
        shared = map_state(lambda t: t.expand(4, *t.shape[1:]), prefix)  # stride 0 over the batch: no copy
        copies = map_state(lambda t: t.expand(4, *t.shape[1:]).contiguous(), prefix)
        y, h = layer(xb, state=shared)
        y_ref, h_ref = layer(xb, state=copies)
        assert torch.equal(y, y_ref) and state_err(h, h_ref) == 0
        ys, hs = run_steps(layer, xb, shared)
        ys_ref, hs_ref = run_steps(layer, xb, copies)
        assert torch.equal(ys, ys_ref) and state_err(hs, hs_ref) == 0
        # the caller reuses its input buffer, writes into an output, and overwrites the state it passed in
        kept_h = map_state(torch.clone, h_ref)
        xb.normal_(generator=g)
        y_ref.normal_(generator=g)
        map_state(lambda t: t.copy_(torch.randn(t.shape, dtype=t.dtype, generator=g)), copies)
        assert state_err(h_ref, kept_h) == 0
        x_t = torch.randn(4, H, dtype=dtype, generator=g)
        y_t, h_next = layer.step(x_t, kept_h)
        kept_next = map_state(torch.clone, h_next)
        x_t.normal_(generator=g)
        y_t.normal_(generator=g)
        map_state(lambda t: t.copy_(torch.randn(t.shape, dtype=t.dtype, generator=g)), kept_h)
        assert state_err(h_next, kept_next) == 0


@pytest.mark.parametrize("name", STEP_NAMES)
def test_a_float32_layers_state_cast_up_continues_in_the_float64_layer(name):
    double = make_layer(name).eval()
    single = make_layer(name, dtype=torch.float32).eval()
    single.load_state_dict(double.state_dict())  # the same weights, rounded
    x = torch.randn(2, 25, H, dtype=F64, generator=torch.Generator().manual_seed(6))
    up = lambda t: t.to(torch.complex128 if t.is_complex() else F64)  # noqa: E731 (attention's position stays float64)
    with torch.no_grad():
        y, _ = double(x)
        _, h32 = single(x[:, :12].float())
        y2, _ = double(x[:, 12:], state=map_state(up, h32))
    assert rel_err(y2, y[:, 12:]) < 2e-6  # only the state's float32 rounding: <= 3.3e-7 here (DLR)


@pytest.mark.parametrize("name", layers.available())
def test_a_prefix_broadcast_or_strided_input_gives_the_contiguous_inputs_outputs(name):
    layer = make_layer(name, dtype=torch.float32).eval()
    base = torch.randn(1, 40, H, generator=torch.Generator().manual_seed(7)).expand(3, 40, H)
    inputs = {
        "expand": base,
        "time-strided": torch.stack([base, base], 2).flatten(1, 2)[:, ::2],
        "channel-strided": torch.stack([base, base], 3).flatten(2, 3)[..., ::2],
        "transposed": base.contiguous().transpose(0, 2).contiguous().transpose(0, 2),
    }
    for backend in ("auto", *layer.backends):
        with ops.use_backend(backend), torch.no_grad():
            y_ref, h_ref = layer(base.contiguous())
            for how, x in inputs.items():
                y, h = layer(x)
                assert rel_err(y, y_ref) <= 4 * torch.finfo(torch.float32).eps, (backend, how)
                assert state_err(h, h_ref) <= 4 * torch.finfo(torch.float32).eps, (backend, how)


# ---------------------------------------------------------------------------------------------------------------------
# A model's stream: chunks of 1 and odd lengths, steps interleaved, rows dropped and batches joined


@pytest.mark.parametrize("norm,prenorm", [("batch", True), ("rms", False)])
@pytest.mark.parametrize("name", ["s4d", "mamba", "attention", "hyena", "mega", "rglru"])
def test_a_models_stream_in_pieces_equals_its_one_pass_forward(name, norm, prenorm):
    torch.manual_seed(3)
    model = SequenceModel(d_input=2, d_model=H, n_layers=3, layer=name, layer_options=variants(name)[0], d_output=3,
                          head="regress", pool=None, norm=norm, prenorm=prenorm, dropout=0.2, dtype=F64)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for _ in range(2):  # batch-norm statistics away from their initial values
            model(torch.randn(4, 10, 2, dtype=F64, generator=g) * 2 + 1)
    model.eval()
    x = torch.randn(3, 29, 2, dtype=F64, generator=g)
    with torch.no_grad():
        y, s = model(x)
        state, pieces, t = model.initial_state(3), [], 0
        for k, n in enumerate([1, 1, 5, 2, 3, 7, 10]):  # forward chunks of 1, 5, 3, 10; steps between
            if k % 2:
                for j in range(n):
                    y_t, state = model.step(x[:, t + j], state)
                    pieces.append(y_t[:, None])
            else:
                y_c, state = model(x[:, t : t + n], state)
                pieces.append(y_c)
            t += n
        assert rel_err(torch.cat(pieces, 1), y) < 1e-10 and state_err(state, s) < 1e-10
        _, s1 = model(x[:, :11])
        rows = [2, 0]
        y_cut, _ = model(x[rows, 11:], [map_state(lambda t: t[rows], b) for b in s1])
        assert rel_err(y_cut, y[rows, 11:]) < 1e-12
        _, sa = model(x[:1, :11])
        _, sb = model(x[1:, :11])
        y_cat, s_cat = model(x[:, 11:], cat_states(sa, sb))
        assert rel_err(y_cat, y[:, 11:]) < 1e-12 and state_err(s_cat, s) < 1e-12
