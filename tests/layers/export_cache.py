"""A per-process cache of the layer graphs that several test modules check.

An ONNX export of a layer's forward is the slow part of the tests that run it (``torch.onnx.export(..., dynamo=True)``
traces the layer with a symbolic length, decomposes the program and optimises the graph: 2-10 s of CPU per layer), so
each graph is exported once per process (each pytest-xdist worker is its own process) and the tests that run it share
it. `onnx_forward`: tests/layers/test_dynamic_export.py (every real-valued layer at lengths across its chunk
boundaries) and tests/probes/test_probe_compile_export_2026_12_05.py (Mamba-2 at two other lengths). The graphs are
read-only files and the layers are only run (``torch.no_grad``), never changed, so the tests' order does not matter.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.export import Dim

from tests.conftest import DEVICE, H, leaves, make_layer, variants


class Forward(torch.nn.Module):
    """The layer's forward as a module of x alone: y, or (y, the final state's tensors) with ``return_state``."""

    def __init__(self, layer, return_state: bool = False):
        super().__init__()
        self.layer, self.return_state = layer, return_state

    def forward(self, x):
        y, h = self.layer(x, return_state=self.return_state)
        return (y, *leaves(h)) if self.return_state else y


@dataclasses.dataclass(frozen=True)
class OnnxForward:
    """The exported module (the layer in eval mode, float32) and the path of its ONNX graph."""

    module: Forward
    path: str


_GRAPHS: dict[str, OnnxForward] = {}


def onnx_forward(name: str, tmp_path_factory) -> OnnxForward:
    """``torch.onnx.export(..., dynamo=True)`` of layer ``name``'s forward (its first test variant, float32, d_model H,
    seed 1) with L dynamic in [2, 4096], exported at (2, 12, H) under ``torch.no_grad``, once per process."""
    if name not in _GRAPHS:
        module = Forward(make_layer(name, variants(name)[0], dtype=torch.float32).eval())
        path = str(tmp_path_factory.mktemp(f"onnx_{name}") / f"{name}.onnx")
        with torch.no_grad():
            torch.onnx.export(module, (torch.randn(2, 12, H, device=DEVICE),), path, dynamo=True, verbose=False,
                              dynamic_shapes=({1: Dim("L", min=2, max=4096)},))
        _GRAPHS[name] = OnnxForward(module, path)
    return _GRAPHS[name]
