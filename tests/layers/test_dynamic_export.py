"""``torch.export`` with a dynamic sequence length: one exported program for every L in the declared range.

Hyena and SGConv (long convolutions) export for any length, with their state; S4 and Liquid-S4 without the state,
for L within l_max or within one octave above it (their C̃ is attuned to the power-of-two length that covers L, a
different matrix per octave: the math, not a limitation of the trace). Before Probe 15 every one of them failed:
"L must be an int >= 1; got s27" (the length checks), "Constraints violated (L)" (the FFT size search, the crop and
pad of a kernel to L, the last inputs of the window state, the crop of S4's kernel). The diagonal, MIMO, selective and
chunked-recurrence layers still cannot (docs/design.md, Probe 15: their scans branch on L in ops/).
"""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

from ssmkit.models import SequenceModel
from tests.conftest import H, leaves, make_layer, rel_err, variants


class _Forward(torch.nn.Module):
    """The layer's forward as a module of x alone, with or without the final state."""

    def __init__(self, layer, return_state: bool):
        super().__init__()
        self.layer, self.return_state = layer, return_state

    def forward(self, x):
        y, h = self.layer(x, return_state=self.return_state)
        return (y, *leaves(h)) if self.return_state else y


def _check(module, example_L: int, lo: int, hi: int, lengths) -> None:
    with torch.no_grad():
        program = torch.export.export(module, (torch.randn(2, example_L, H),),
                                      dynamic_shapes=({1: Dim("L", min=lo, max=hi)},)).module()
        for L in lengths:
            x = torch.randn(2, L, H)
            got, want = program(x), module(x)
            for g, w in zip(*(((o,) if isinstance(o, torch.Tensor) else o) for o in (got, want))):
                # float32; the exported FFT is 2L long where eager rounds it up to a 5-smooth size: 1e-7 rounding
                assert g.shape == w.shape and rel_err(g, w) <= 1e-6, (L, rel_err(g, w))


@pytest.mark.parametrize("name", ["hyena", "sgconv"])
def test_long_convolutions_export_for_every_length_with_their_state(name):
    for opts in variants(name):
        layer = make_layer(name, opts, dtype=torch.float32).eval()
        # exported at 12, run below and above the kernel and window lengths (l_max 8-64) and at the range's ends
        _check(_Forward(layer, return_state=True), 12, 2, 1024, (2, 5, 12, 40, 333, 1024))


@pytest.mark.parametrize("name", ["s4", "liquid_s4"])
def test_s4_exports_for_every_length_within_l_max_and_within_an_octave(name):
    opts = variants(name)[0]  # l_max 32
    layer = make_layer(name, opts, dtype=torch.float32).eval()
    _check(_Forward(layer, return_state=False), 12, 2, 32, (2, 7, 31, 32))
    _check(_Forward(layer, return_state=False), 200, 129, 256, (129, 130, 200, 255, 256))  # C̃ attuned to 256


def test_a_model_exports_for_every_length_without_its_state():
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=4, n_layers=2, layer="s4", layer_options=variants("s4")[0], d_output=3,
                          pool="mean", head="regress").eval()
    with torch.no_grad():
        program = torch.export.export(model, (torch.randn(2, 12, 2), None, False),
                                      dynamic_shapes=({1: Dim("L", min=2, max=32)}, None, None)).module()
        for L in (3, 17, 32):
            x = torch.randn(2, L, 2)
            assert rel_err(program(x, None, False)[0], model(x)[0]) <= 1e-6
