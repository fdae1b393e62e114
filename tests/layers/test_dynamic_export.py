"""``torch.export`` with a dynamic sequence length: one exported program for every L in the declared range.

Every registered layer exports with a dynamic L (a registry-driven test: a new layer is tested when it registers),
with its state in and out, except where the math fixes L: S4 and Liquid-S4 export for L within l_max or within one
octave above it (their C̃ is attuned to the power-of-two length that covers L, a different matrix per octave; with
the state in and out since s4len); Mega's key cache holds L mod chunk_size positions, a length torch specialises at 0 and 1, so Mega
exports without its state. Before Probe 15 every layer failed; the scans were made exportable in the session of
2026-12-02 (``ops/symbolic.py``: a fixed chunk length, symbolic padding and the carry as one ``scan`` op).
"""

from __future__ import annotations

import io

import pytest
import torch
from torch.export import Dim
from torch.utils._pytree import tree_map

from ssmkit import layers
from ssmkit.models import SequenceModel
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, variants
from tests.layers.export_cache import Forward, onnx_forward


class _Forwards(torch.nn.Module):
    """Several layers' forwards without their states, as one module of x returning their outputs in order. One export
    of them all traces the ops they share once (torch's fake-tensor cache serves the repeats: 15 % less CPU than one
    export each, measured on one thread), and each output is checked against its own layer run eagerly."""

    def __init__(self, layers):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x):
        return tuple(layer(x, return_state=False)[0] for layer in self.layers)


def _check(module, example_L: int, lo: int, hi: int, lengths, batches=(2,)) -> None:
    """Export at (B 2 or 3, example_L) with L dynamic in [lo, hi] (and B too when ``batches`` has other sizes), then
    run every (B, L) against the module run eagerly."""
    dims = {1: Dim("L", min=lo, max=hi)}
    if batches != (2,):
        dims[0] = Dim("B", min=2, max=64)
    with torch.no_grad():
        program = torch.export.export(module, (torch.randn(2 if batches == (2,) else 3, example_L, H, device=DEVICE),),
                                      dynamic_shapes=(dims,)).module()
        for B in batches:
            for L in lengths:
                x = torch.randn(B, L, H, device=DEVICE)
                got, want = program(x), module(x)
                got, want = (((o,) if isinstance(o, torch.Tensor) else o) for o in (got, want))
                assert len(got) == len(want)
                for i, (g, w) in enumerate(zip(got, want)):  # i: the output (y, the state's tensors, or a layer's y)
                    # float32; the exported FFT is 2L long where eager rounds it up to a 5-smooth size: 1e-7 rounding;
                    # eager S4D and DSS discretise in C (double, rounded once), the program by float32 torch ops
                    assert g.shape == w.shape and rel_err(g, w) <= 1e-5, (B, L, i, rel_err(g, w))


@pytest.mark.parametrize("name", ["hyena", "sgconv"])
def test_long_convolutions_export_for_every_length_with_their_state(name):
    for opts in variants(name):
        layer = make_layer(name, opts, dtype=torch.float32).eval()
        # exported at 12, run below and above the kernel and window lengths (l_max 8-64) and at the range's ends
        _check(Forward(layer, return_state=True), 12, 2, 1024, (2, 5, 12, 40, 333, 1024))


@pytest.mark.parametrize("name", ["s4", "liquid_s4"])
def test_s4_exports_for_every_length_within_l_max_and_within_an_octave(name):
    opts = variants(name)[0]  # l_max 32
    layer = make_layer(name, opts, dtype=torch.float32).eval()
    _check(Forward(layer, return_state=False), 12, 2, 32, (2, 7, 31, 32))
    _check(Forward(layer, return_state=False), 200, 129, 256, (129, 130, 200, 255, 256))  # C̃ attuned to 256


@pytest.mark.parametrize("layer", ["s4", "s4d", "mamba"])
def test_a_model_exports_for_every_length(layer):
    """A two-block model with a pooled head and its final states; S4 within l_max, S4D and Mamba for any L."""
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=4, n_layers=2, layer=layer, layer_options=variants(layer)[0], d_output=3,
                          pool="mean", head="regress").eval()
    with_state = True  # (S4 without its state before s4len: its chunk count of L was a guard)
    hi = 32 if layer == "s4" else 4096
    with torch.no_grad():
        program = torch.export.export(model, (torch.randn(2, 12, 2), None, with_state),
                                      dynamic_shapes=({1: Dim("L", min=2, max=hi)}, None, None)).module()
        for L in (3, 17, 32) + ((100,) if layer != "s4" else ()):
            x = torch.randn(2, L, 2)
            got, want = program(x, None, with_state), model(x, None, with_state)
            # float32 rounding, not bit-for-bit: eager S4D discretises in C (in double, rounded once), the exported
            # program by torch's float32 ops (ssmkit.ops.discretize.zoh_log)
            assert rel_err(got[0], want[0]) <= 1e-5
            if with_state:
                for g, w in zip(leaves(got[1]), leaves(want[1])):
                    assert rel_err(g, w) <= 1e-5


# The layers whose exported program cannot carry the state for every L (see the module docstring); S4 and Liquid-S4
# have their own test above (their range of L is limited too).
_WITHOUT_STATE = {"mega"}
_OCTAVE = {"s4", "liquid_s4"}


class _WithState(torch.nn.Module):
    """The layer's forward from a given state, returning y and the final state's tensors."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, state):
        y, h = self.layer(x, state, return_state=True)
        return (y, *leaves(h))


@pytest.mark.parametrize("name", sorted(set(layers.available()) - _OCTAVE))
def test_every_layer_exports_for_every_length(name):
    """Float64, exported at L = 12, saved and loaded, and run across the chunk boundaries (the diagonal and recurrent scans chunk by 64,
    Mamba-2's test variant by 8, Mega's by 8 or 16, Mamba's selective scan by 8-128): the exported program against the
    layer run eagerly, which takes other paths (the C kernels, the chunked scans' Python-loop carries)."""
    layer = make_layer(name, variants(name)[0], dtype=torch.float64).eval()
    lengths = (2, 7, 8, 9, 63, 64, 65, 129, 300)
    with torch.no_grad():
        if name in _WITHOUT_STATE:
            example = torch.randn(2, 12, H, dtype=torch.float64, device=DEVICE)
            module, args, dims = Forward(layer, return_state=False), (example,), None
        else:
            # a state that is not zero
            _, state = layer(torch.randn(2, 5, H, dtype=torch.float64, device=DEVICE), return_state=True)
            module, args = _WithState(layer), (torch.randn(2, 12, H, dtype=torch.float64, device=DEVICE), state)
            dims = tree_map(lambda _: None, state)  # the state's sizes are static
        dynamic = ({1: Dim("L", min=2, max=4096)},) + ((dims,) if len(args) == 2 else ())
        saved = io.BytesIO()  # through torch.export.save/load: the state's NamedTuple must be registered to serialise
        torch.export.save(torch.export.export(module, args, dynamic_shapes=dynamic), saved)
        saved.seek(0)
        program = torch.export.load(saved).module()
        for L in lengths:
            x = torch.randn(2, L, H, dtype=torch.float64, device=DEVICE)
            got, want = program(x, *args[1:]), module(x, *args[1:])
            got, want = ((o,) if isinstance(o, torch.Tensor) else o for o in (got, want))
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert g.shape == w.shape and rel_err(g, w) <= 1e-12, (name, L, rel_err(g, w))


# torch 2.11 (the GPU machine's version, run on this CPU) cannot prove guards such as min(L, 3L, 9L) == L that its
# own contiguity check (check_contiguous_sizes_strides) adds when a permuted or scanned tensor is reshaped: the export
# of H3 with head_dim 3 and of a Mamba variant with the batch dynamic stops on a constraint violation there. torch
# 2.13 exports both.
_OLD_TORCH = torch.torch_version.TorchVersion(torch.__version__) < "2.13"
_MIN_GUARDS = {"h3", "mamba"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(_OLD_TORCH and n in _MIN_GUARDS, reason="torch < 2.13: min() guards of "
                                            "its contiguity check", strict=True))
    for n in sorted(set(layers.available()) - _OCTAVE)
])
def test_every_variant_exports_in_float32(name):
    """The other option sets (real and complex modes, discretisations, groups, heads, windows, chunk sizes) in float32,
    without the state, with the batch dynamic too; a layer with a bounded positional table is exported for the lengths
    it takes. The variants that take the same lengths are exported together (one program, an output each)."""
    by_range: dict[int, list] = {}
    for opts in variants(name)[1:]:
        by_range.setdefault(opts.get("max_positions", 4096), []).append(
            make_layer(name, opts, dtype=torch.float32).eval())
    for hi, group in by_range.items():
        _check(_Forwards(group), 12, 2, hi, tuple(L for L in (2, 40, 300) if L <= hi), (2, 7))


@pytest.mark.parametrize("name", ["mamba", "mamba2", "rglru", "attention", "hyena", "sgconv"])
def test_real_valued_layers_export_their_whole_sequence_forward_to_onnx_for_every_length(name, tmp_path_factory):
    """``torch.onnx.export(..., dynamo=True)`` of the forward with L dynamic, run by onnxruntime at lengths across the
    chunk boundaries. The layers whose scans are real-valued convert (the scan op becomes an ONNX Scan), and the FFT
    convolutions (their inverse FFT written as a full inverse DFT while exporting: onnxruntime failed on the irfft
    node); the complex modal layers do not (ONNX has no complex tensors), nor EMA/Mega (no ONNX function for
    prims.prod): ``ssmkit.analysis.export_onnx_sequence`` exports models with them, through real realisations
    (docs/design.md, "Dynamic-length export", "Whole-sequence ONNX of every LTI layer"). Exported at (2, 12, H) with
    L in [2, 4096], once per process (tests/layers/export_cache.py: the probe of 2026-12-05 runs Mamba-2's graph too)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    exported = onnx_forward(name, tmp_path_factory)
    module = exported.module
    with torch.no_grad():
        session = ort.InferenceSession(exported.path)
        for L in (2, 65, 300):
            x = torch.randn(2, L, H, device=DEVICE)
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0])
            # the FFT convolutions: onnxruntime's float32 DFT at lengths other than powers of two (2L) is less
            # accurate than torch's FFT (6.6e-6 at L = 65; 1.7e-7 at L = 4 096)
            tol = 5e-5 if name in ("hyena", "sgconv") else 1e-6
            assert rel_err(got, module(x)) <= tol, (L, rel_err(got, module(x)))


@pytest.mark.parametrize("name", ["s4", "liquid_s4"])
def test_s4_exports_with_its_state_in_and_out_within_an_octave(name):
    """S4 and Liquid-S4 with the state in and out (s4len, docs/design.md "S4 with its final state: one graph per attuned
    length"): the final state's tables take the chunk length of L_k and Ā^L by L's bits (``ops.dense.
    matrix_power_bits``), and the traced carry runs a fixed ⌊L_k/T⌋ + 1 chunks, zeros in front; before, the chunk count
    ⌈L/T⌉ was a guard and export refused the range ("Constraints violated (L)"). Float64, exported at L = 200 for
    L in [129, 256] (C̃ attuned to 256), against the layer run eagerly and the O(N) step loop (``"reference"``)."""
    import ssmkit.ops as ops

    layer = make_layer(name, variants(name)[0], dtype=torch.float64).eval()
    with torch.no_grad():
        # a state that is not zero
        _, state = layer(torch.randn(2, 5, H, dtype=torch.float64, device=DEVICE), return_state=True)
        module, args = _WithState(layer), (torch.randn(2, 200, H, dtype=torch.float64, device=DEVICE), state)
        dynamic = ({1: Dim("L", min=129, max=256)}, tree_map(lambda _: None, state))
        program = torch.export.export(module, args, dynamic_shapes=dynamic).module()
        for L in (129, 130, 200, 255, 256):
            x = torch.randn(2, L, H, dtype=torch.float64, device=DEVICE)
            got, want = program(x, state), module(x, state)
            with ops.use_backend("reference"):
                loop = module(x, state)
            assert len(got) == len(want) == len(loop)
            for g, w, r in zip(got, want, loop):
                # float64: the same kernel and tables in another order (eager: T of L, matrix_power), and the loop
                assert g.shape == w.shape and rel_err(g, w) <= 1e-12 and rel_err(g, r) <= 1e-10, (L, rel_err(g, r))
