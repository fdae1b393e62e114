"""torch.compile as users use it (probe 18, docs/design.md): a layer compiled once and called at several lengths, with
and without gradients, in train and eval mode, and trained by AdamW, against the same layer run eagerly.

Most checks compile with ``backend="aot_eager"`` (dynamo's capture, guards and AOT autograd, no code generation: what
decides graph breaks, recompiles and gradients) so that every layer runs in seconds; the default inductor backend is
checked on a representative subset (a layer on the C kernels and one on the PyTorch paths; inductor costs 5-35 s of
compilation per layer and mode on one core, docs/benchmarks.md). Lengths 100, 150, 200 and 257 span several chunks
of every chunked scan (T = 64) and a partial last chunk.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import ssmkit.layers as layers
from tests.conftest import DEVICE, leaves, rel_err, state_map, variants

NAMES = layers.available()
H = 8
LENGTHS = (100, 150, 200, 257)


def _layer(name: str) -> torch.nn.Module:
    torch.manual_seed(1)
    opts = {"d_state": 4, "headdim": 4, "chunk_size": 16} if name == "mamba2" else variants(name)[0]
    return layers.build(name, d_model=H, device=DEVICE, dtype=torch.float32, **opts)


def _state(layer, batch: int = 2):
    return state_map(lambda t: 0.3 * torch.randn_like(t) if t.is_floating_point() or t.is_complex() else t,
                     layer.initial_state(batch))


def _graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def _graphs_beside_a_copy(
    name: str, backend: str, lengths, with_state: bool = False, return_state: bool = True,
    rtol_y: float = 1e-6, rtol_h: float = 2e-6,
) -> int:
    """Compile layer ``name`` (fullgraph, under ``backend``) and run it at each length beside a deep copy taken before
    anything ran, with a random initial state when ``with_state``; assert the outputs (and, when returned, the final
    states) agree to the given relative errors. Returns the number of graphs compiled."""
    torch._dynamo.reset()
    layer = _layer(name)
    fresh = copy.deepcopy(layer)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    with torch.no_grad():
        for L in lengths:
            x = torch.randn(2, L, H, device=DEVICE)
            h0 = _state(layer) if with_state else None
            (y, h), (y_ref, h_ref) = compiled(x, h0, return_state=return_state), fresh(x, h0, return_state=return_state)
            assert rel_err(y, y_ref) < rtol_y
            if return_state:
                assert all(rel_err(a, b) < rtol_h for a, b in zip(leaves(h), leaves(h_ref)))
    return counter.frame_count


def test_a_chunked_scan_at_a_new_length_does_not_break_the_graph():
    """EMA's real modes take the chunked scan under torch.compile. Its carry picked the group size by
    ``math.isqrt`` of the chunk count, which dynamo cannot trace once the length is symbolic (the second length
    makes it dynamic): a graph break in ``_carry`` at every length after the first, each new length compiling 3-7
    frames (EMA's lengths 150, 200, 257 took 37, 63 and 67 s with inductor), and ``fullgraph=True`` failed. (Each
    new length still recompiles the one graph: the chunked scan's loops specialise the chunk count.)"""
    torch._dynamo.reset()
    counters.clear()
    layer = _layer("ema")
    counter = CompileCounterWithBackend("eager")  # the break is dynamo's: no AOT autograd needed to see it
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    for L in LENGTHS[:2]:
        x = torch.randn(2, L, H, device=DEVICE)
        h0 = _state(layer)
        with torch.no_grad():
            y, h = compiled(x, h0)
            y_eager, h_eager = layer(x, h0)
        assert rel_err(y, y_eager) < 1e-6 and rel_err(h, h_eager) < 1e-6
    assert _graph_breaks() == 0 and counter.frame_count == 2


@pytest.mark.parametrize("name", ["sgconv", "hyena"])
def test_an_fft_convolution_compiles_once_for_every_later_length(name):
    """The FFT size was the smallest 5-smooth even n >= 2L, found by a loop on L's prime factors: under
    torch.compile each length added guards on its factors, so every new length recompiled (Hyena hit dynamo's
    recompile limit of 8 and ran eagerly from then on). The second length makes L dynamic; later ones reuse it."""
    torch._dynamo.reset()
    layer = _layer(name)
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    for L in LENGTHS:
        x = torch.randn(2, L, H, device=DEVICE)
        with torch.no_grad():
            assert rel_err(compiled(x)[0], layer(x)[0]) < 1e-5
    assert counter.frame_count == 2


CACHED = ["s4d", "dss", "dlr", "s5", "lru", "s4", "h3", "liquid_s4"]  # steps that read a cached discretisation


@pytest.mark.parametrize("name", CACHED)
def test_a_compiled_step_equals_a_fresh_eager_copy_and_leaves_the_cache_right(name):
    """The compiled inference step computes its cached coefficients inside the ``ssmkit::cached_value`` op, whose
    body runs below the Conjugate and Negative dispatch keys: S4's (and Liquid-S4's) C_true came out wrong, the
    compiled step's output off by 94 %, and the wrong value stayed cached for every eager step after it. The
    existing test compared the compiled step with the same layer's eager step, which read that cache: here the
    reference is a copy taken before anything was compiled (its own, empty cache)."""
    torch._dynamo.reset()
    layer = _layer(name)
    fresh = copy.deepcopy(layer)
    x = torch.randn(2, H, device=DEVICE)
    h = _state(layer)
    step = torch.compile(layer.step, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        y, h1 = step(x, h)
        y_ref, h1_ref = fresh.step(x, h)
        y_after, _ = layer.step(x, h)  # eager, from the cache the compiled call filled
    assert rel_err(y, y_ref) < 1e-6 and all(rel_err(a, b) < 1e-6 for a, b in zip(leaves(h1), leaves(h1_ref)))
    assert rel_err(y_after, y_ref) < 1e-6


def _recording(backend: str = "aot_eager"):
    """A backend that compiles with ``backend`` and records the ops of every graph dynamo hands it."""
    targets: list[str] = []

    def compile_fn(gm: torch.fx.GraphModule, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return torch._dynamo.backends.registry.lookup_backend(backend)(gm, example_inputs)

    return compile_fn, targets


@pytest.mark.parametrize("name", ["s4", "liquid_s4"])
def test_a_compiled_inference_forward_reads_the_cached_kernel_and_sees_new_weights(name):
    """A compiled S4 forward without a gradient recomputed its kernel (Cauchy sums, FFT) at every call, where eager
    reuses the value-keyed plan cache: compiled took 1.75x eager's time (B 8, L 4 096, H 128, N 64). The plan is now
    read through the run-time cache op. Checked against a copy taken before anything ran (its own, empty cache): equal
    at a first and a repeated call (the second reuses the cached entry), and after the weights change through
    ``.data`` (no version bump) the compiled output follows them."""
    torch._dynamo.reset()
    layer = _layer(name)
    fresh = copy.deepcopy(layer)
    backend, targets = _recording()
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    x = torch.randn(2, 100, H, device=DEVICE)
    with torch.no_grad():
        y, h = compiled(x)
        y_ref, h_ref = fresh(x)
        assert rel_err(y, y_ref) < 1e-6 and all(rel_err(a, b) < 1e-6 for a, b in zip(leaves(h), leaves(h_ref)))
        entry = layer._plan_cache._entry
        # the key's last item: the final state's chunk length, under torch.compile that of L_k = 128 (eager: of L)
        assert entry is not None and entry[0] == (100, "fft", True, False, 16)
        assert rel_err(compiled(x)[0], y_ref) < 1e-6 and layer._plan_cache._entry is entry  # reused, not recomputed
        for model in (layer, fresh):
            model.C_tilde.data.mul_(1.5)
            model.log_dt.data.add_(0.25)
        y2, y2_ref = compiled(x)[0], fresh(x)[0]
    assert "ssmkit.cached_value.default" in targets
    assert rel_err(y2, y2_ref) < 1e-6 and rel_err(y2, y_ref) > 1e-2
    assert layer._plan_cache._entry is not entry


@pytest.mark.parametrize("with_state", [False, True])
def test_a_compiled_inference_forward_keeps_one_graph_per_attuned_length(with_state):
    """Without a final state the plan's shapes follow L alone (the kernel is (C, H, L)), with or without an initial
    state, so its op takes L symbolically (``S4._plan_structure``; with an initial state L was specialised before: one
    graph per length): one graph serves every length within one attuned L_k = l_max·2^k (the guard S4 always had), and
    the run-time lookup computes each length's kernel. l_max 32: L_k 128 for L 100, 256 for 150 and 200 (one graph),
    512 for 257: 3 graphs for 4 lengths."""
    backend = "aot_eager" if not with_state else "eager"
    assert _graphs_beside_a_copy("s4", backend, LENGTHS, with_state=with_state, return_state=False) == 3


def _aot_recording():
    """AOT autograd (as aot_eager) recording the aten-level ops of the forward and backward graphs it compiles."""
    from torch._dynamo.backends.common import aot_autograd

    targets: list[str] = []

    def record(gm: torch.fx.GraphModule, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    return aot_autograd(fw_compiler=record, bw_compiler=record), targets


_TRAINING: dict[str, tuple] = {}


def _compiled_s4_for_training():
    """An S4 layer, compiled through :func:`_aot_recording`, and the recorded targets, built once per process and
    shared by the two tests below: they differ only in the loss, taken outside the compiled forward, so one graph (its
    forward and backward) serves both; each zeroes the gradients before its own run. A ``torch._dynamo.reset()`` in
    between only makes the next call compile again."""
    if not _TRAINING:
        torch._dynamo.reset()
        layer = _layer("s4")
        backend, targets = _aot_recording()
        _TRAINING["s4"] = layer, targets, torch.compile(layer, backend=backend, fullgraph=True)
    return _TRAINING["s4"]


@pytest.mark.parametrize("use_state", [False, True])
def test_compiled_s4_training_gradients_equal_eager_with_and_without_the_final_state_in_the_loss(use_state):
    """A compiled graph passes zeros as the gradient of an output nothing used, so the final state's chunked carry
    ran its whole backward in a compiled S4 training step (~10x eager's GEMMs): the carry is now one op each way
    (``ops.dense._CompiledCarry``) whose backward returns zeros at once for a zero gradient, and the FFT convolution's
    passes are ops (``ops.fftconv._opaque``). Gradients of every parameter and of x against eager autograd, with the
    state in the loss (the carry's backward runs: checked against autograd) and without (the zero shortcut)."""
    layer, targets, compiled = _compiled_s4_for_training()
    torch.manual_seed(2)  # the same x whichever of the two tests built the layer
    x = torch.randn(2, 200, H, device=DEVICE)
    grads = []
    for model in (compiled, layer):
        model.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_()
        y, h = model(xg)
        loss = y.square().mean() + (h.abs().square().mean() if use_state else 0)
        loss.backward()
        grads.append([xg.grad] + [p.grad for p in layer.parameters()])
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(*grads))
    for op in ("dense_carry_forward", "dense_carry_backward", "circular_conv_forward", "circular_conv_backward"):
        assert f"ssmkit.{op}.default" in targets


def test_a_native_kernels_first_use_inside_the_cached_value_op_leaves_it_usable(monkeypatch):
    """The first native call of a process runs a smoke test of the kernel's gradients (``ops.native.gate``). Inside a
    custom op's body the autograd dispatch keys are off, so when a compiled S4 forward's plan made the process's first
    Cauchy call there, the test failed and the kernel was marked unusable for the rest of the process (every later
    ``"auto"`` Cauchy call took the PyTorch path). The cached-value op now runs its body with autograd's keys on."""
    from ssmkit.ops.native import gate

    monkeypatch.setattr(gate, "_STATUS", {})  # as in a fresh process (restored afterwards)
    torch._dynamo.reset()
    layer = _layer("s4")
    fresh = copy.deepcopy(layer)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 100, H, device=DEVICE)
    with torch.no_grad():
        assert rel_err(compiled(x)[0], fresh(x)[0]) < 1e-6
    ok, why = gate._STATUS.get(("cauchy", "float64"), (True, ""))  # absent off the CPU: never asked
    assert ok or "smoke call failed" not in why, why  # (a build failure, no C compiler, is not this bug)


@pytest.mark.parametrize("name", ["ema", "mega"])
def test_a_chunked_scan_layer_compiles_once_per_octave_of_its_chunk_count(name, monkeypatch):
    """EMA's and Mega's chunked scan compiled one graph per length (the carry's loops over ⌈√nc⌉ and nc/G, the
    remainder indexing the power table). Under torch.compile the carry runs in groups of 8 chunks whose ends are
    carried by doubling (``ops.chunked._carry_doubling``): lengths 100, 150, 200, 257, 300 run 3-6 chunks of 64 (one
    padding chunk included), i.e. 2 groups -> a static first graph and one dynamic graph for 5 lengths (5 before),
    each equal to a fresh eager copy. Mega compiles one more: its attention pads L to a multiple of its chunk (8), and
    AOT's contiguity check guards on L % 8 == 0 (200 is). (tests/ops/test_compile_lengths.py covers more octaves.)
    Opt-in: ``ops.chunked.LENGTH_GENERIC_COMPILE`` (off by default, see there)."""
    import ssmkit.ops.chunked as chunked

    monkeypatch.setattr(chunked, "LENGTH_GENERIC_COMPILE", True)
    graphs = _graphs_beside_a_copy(name, "eager", LENGTHS + (300,), with_state=True, rtol_y=1e-5, rtol_h=1e-5)
    assert graphs == (3 if name == "mega" else 2)  # 5 before


# l_max 32: attuned lengths L_k 128 (L = 100), 256 (150, 200, 256), 512 (257, 512); 150 again at the end
OCTAVE_LENGTHS = (100, 150, 200, 256, 257, 512, 150)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("name", ["s4", "liquid_s4"])
def test_a_compiled_forward_with_its_final_state_keeps_one_graph_per_attuned_length(name, with_state):
    """With the default ``return_state=True`` the final state's tables used a chunk length T ≈ √L chosen from L and
    Ā^L by ``matrix_power`` with an int: the plan's op specialised L (one graph per call here, 7). Under torch.compile
    T is now that of L_k (``S4._state_chunk``) and the plan's structure, tables included, is traced from the key
    (``S4._plan_structure``): one graph per attuned length, the first one static (3 for 7 calls). Returning to an
    earlier octave (150 last) reuses its graph: the op's non-tensor leaves (L_k) were read from a template each trace
    overwrote, and dynamo's guard on them failed for every graph but the last. Outputs and final states against a copy
    taken before anything ran: float32, the final state's chunk sums in another grouping (T of L_k, eager: of L)."""
    assert _graphs_beside_a_copy(name, "aot_eager", OCTAVE_LENGTHS, with_state=with_state) == 3  # 7 before


def test_a_compiled_float64_forward_with_its_final_state_equals_the_step_loop():
    """The compiled float64 S4 forward (initial state in, final state out; the tables of L_k's chunk, Ā^L through the
    cached plan) against the oracle, the O(N) step loop of the ``"reference"`` backend, at lengths in two octaves
    (l_max 32: L_k 64 for 40, 50, 64; 128 for 100, 128): 3 graphs for 6 calls (6 before)."""
    import ssmkit.ops as ops

    torch._dynamo.reset()
    torch.manual_seed(1)
    width = 5  # neither d_state (8) nor its half: the compiled plan's placeholder shapes cannot swap H and N unseen
    layer = layers.build("s4", d_model=width, device=DEVICE, dtype=torch.float64, **variants("s4")[0])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    with torch.no_grad():
        for L in (40, 50, 64, 100, 128, 50):
            x = torch.randn(2, L, width, device=DEVICE, dtype=torch.float64)
            h0 = _state(layer)
            y, h = compiled(x, h0)
            with ops.use_backend("reference"):
                y_ref, h_ref = layer(x, h0)
            # float64: the kernel (Cauchy sums, FFT) and the chunked final state against the step, to 1e-10 as eager
            assert rel_err(y, y_ref) < 1e-10 and rel_err(h, h_ref) < 1e-10
    assert counter.frame_count == 3


def _aot_eager_default_partition():
    """aot_eager (AOT autograd, no code generation) with AOT's default partition: the backward reads the forward's
    saved activations where aot_eager's min-cut partition (inductor's) searches which ones to recompute, a sixth of a
    training graph's compilation here. The graphs dynamo compiles (their guards and count), the outputs and the
    gradients do not depend on the partition; aot_eager's min-cut one stays checked for every layer, S4 included, in
    tests/layers/test_transforms.py::test_compile_fullgraph_matches_eager."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._dynamo.backends.debugging import boxed_nop
    from torch._functorch.partitioners import default_partition

    return aot_autograd(fw_compiler=boxed_nop, bw_compiler=boxed_nop, partition_fn=default_partition,
                        keep_inference_input_mutations=True)


@pytest.mark.parametrize("with_state", [False, True])
def test_compiled_s4_training_with_the_final_state_keeps_one_graph_per_attuned_length(with_state):
    """With a gradient the plan is traced: T from L_k, Ā^L (an initial state's term) by L's bits over L_k's
    (``ops.dense.matrix_power_bits``) and the kernel's crop branch-free (``s4._crop``: the view K[..., :L_k] is
    contiguous at L = L_k, and AOT's check made that a guard). Outputs, final states and every gradient (the state in
    the loss) against eager autograd, float32: 3 graphs for 5 lengths (4 before: L = 256 and 512 compiled their
    own)."""
    torch._dynamo.reset()
    layer = _layer("s4")
    counter = CompileCounterWithBackend(_aot_eager_default_partition())
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    for L in (100, 150, 256, 512, 150):
        x = torch.randn(2, L, H, device=DEVICE)
        h0 = _state(layer) if with_state else None
        results = []
        for model in (compiled, layer):
            model.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_()
            y, h = model(xg, h0)
            (y.square().mean() + h.abs().square().mean()).backward()
            results.append([y, h, xg.grad] + [p.grad for p in layer.parameters()])
        assert all(rel_err(a, b) < 1e-5 for a, b in zip(*results))  # float32, another chunk grouping
    assert counter.frame_count == 3


def test_a_compiled_model_of_s4_blocks_trains_with_one_graph_per_attuned_length():
    """A ``SequenceModel`` of two S4 blocks (l_max 256, mean pool) compiled whole and trained at 5 lengths with its
    default ``return_state=True`` (the states in the loss): 3 graphs, a static one (L 30) and one per attuned length
    (256 for 60, 100, 200; 512 for 300), where the eager chunk length (4, 8, 8, 16, 16) split the first octave;
    outputs, states and gradients as eager's (float32)."""
    from ssmkit.models import SequenceModel

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = SequenceModel(3, H, 2, "s4", {**variants("s4")[0], "l_max": 256}, 2, pool="mean", device=DEVICE)
    counter = CompileCounterWithBackend(_aot_eager_default_partition())
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for L in (30, 60, 100, 200, 300):
        x = torch.randn(2, L, 3, device=DEVICE)
        results = []
        for m in (compiled, model):
            m.zero_grad(set_to_none=True)
            y, states = m(x)
            (y.square().mean() + sum(s.abs().square().mean() for s in states)).backward()
            results.append([y, *states] + [p.grad for p in model.parameters()])
        assert all(rel_err(a, b) < 1e-5 for a, b in zip(*results))  # float32, another chunk grouping
    assert counter.frame_count == 3  # 4 before


def test_a_return_to_an_earlier_attuned_length_reuses_its_graph():
    """The compiled code read the plan's non-tensor leaves (L_k) from a template the op's fake implementation left on
    the cache, and dynamo guarded on them; each trace overwrote the template, so the graph for L_k 256 failed its
    guard once L_k 512 had been traced: L 200 after 300 recompiled (4 graphs). The structure is now traced from the
    key (``ValueCache._structure``): 3 graphs (100 static; 256; 512), here without the final state."""
    assert _graphs_beside_a_copy("s4", "eager", (100, 150, 300, 200), return_state=False) == 3  # 4 before
