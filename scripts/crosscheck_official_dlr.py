"""Numerical cross-check of ssmkit's `dlr` against the official DLR code (ag1988/dlr, `DSS(kernel_type='dlr')`).

    python scripts/crosscheck_official_dlr.py --dss-file PATH/TO/ag1988/dlr/src/models/sequence/ss/standalone/dss.py

The official file is NOT part of ssmkit (the figures in docs/benchmarks.md used commit 580d854); it needs einops and
opt_einsum; its Lightning, omegaconf and attention imports are stubbed here, pykeops is off (the same sum, eagerly).
The official block is built with the identity activation and its output linear replaced by the identity, so it
computes y = K ⊛ u + D u by FFT; its parameters (Λ as a and b, W, D) are copied into ssmkit's layer. Prints the
largest relative differences of the outputs (causal and bidirectional, float64), of ssmkit's recurrent step against
the official convolution, and of each float32 block (official FFT, ssmkit chunked scan) against the official float64 one.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types

import torch
from torch import nn

from ssmkit.layers import DLR


class _AttrDict(dict):
    """Enough of omegaconf.DictConfig for the kernel: attribute access and update."""

    __getattr__ = dict.get

    def __setattr__(self, key, value):
        self[key] = value


def load_official(path: str):
    lightning = types.ModuleType("pytorch_lightning")
    utilities = types.ModuleType("pytorch_lightning.utilities")
    utilities.rank_zero_only = lambda f: f
    lightning.utilities = utilities
    omegaconf = types.ModuleType("omegaconf")
    omegaconf.DictConfig = _AttrDict
    package = types.ModuleType("dlr_official")
    package.__path__ = []
    attention = types.ModuleType("dlr_official.attention")
    attention.Attention = None
    for name, module in (("pytorch_lightning", lightning), ("pytorch_lightning.utilities", utilities),
                         ("omegaconf", omegaconf), ("dlr_official", package), ("dlr_official.attention", attention)):
        sys.modules.setdefault(name, module)
    spec = importlib.util.spec_from_file_location("dlr_official.dss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def official_block(off, H: int, M: int, bidirectional: bool, init: str):
    block = off.DSS(H, d_state=M, bidirectional=bidirectional, activation="id", transposed=False, kernel_type="dlr",
                    pykeops=False, Lambda_init=init, dt_min=1e-3, dt_max=1e-1,
                    lr=_AttrDict(Lambda=1e-4, Lambda_re=1e-4, W=1e-4))
    block.output_linear = nn.Identity()  # y = K ⊛ u + D u: the layer core, as ssmkit's layer
    return block


def ours_from(block, bidirectional: bool) -> DLR:
    kernel = block.kernel
    M = kernel.N
    layer = DLR(block.h, d_state=2 * M, bidirectional=bidirectional, dtype=torch.float64)
    with torch.no_grad():
        layer.A_sqrt_neg_real.copy_(kernel.Lambda_log_neg_re)  # a: Λ = -a² + i b
        layer.A_imag.copy_(kernel.Lambda_im)
        layer.W.copy_(kernel.W)  # (C, H, M, 2), the same layout (C = 2: causal, then anti-causal)
        layer.D.copy_(block.D[0])
    return layer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dss-file", required=True, help="the official src/models/sequence/ss/standalone/dss.py")
    args = parser.parse_args(argv)
    off = load_official(args.dss_file)
    torch.manual_seed(0)
    H, M, L = 8, 256, 2048
    x = torch.randn(2, L, H, dtype=torch.float64)
    for init in ("omega", "randn"):
        for bidirectional in (False, True):
            block = official_block(off, H, M, bidirectional, init)
            layer = ours_from(block, bidirectional)
            with torch.no_grad():
                y32, _ = block(x.float())
                block.double()
                y64, _ = block(x)
                y, _ = layer(x)
                y_ours32, _ = layer.float()(x.float())
                layer.double()
            line = (f"{init}, {'bidirectional' if bidirectional else 'causal'} (H={H}, M={M} modes, L={L}): "
                    f"ssmkit vs official float64 {err(y, y64):.1e}; float32 vs official float64: official {err(y32, y64):.1e}, "
                    f"ssmkit {err(y_ours32, y64):.1e}")
            if not bidirectional:
                with torch.no_grad():
                    h, ys = layer.initial_state(2), []
                    for t in range(L):
                        y_t, h = layer.step(x[:, t], h)
                        ys.append(y_t)
                line += f"; ssmkit recurrent step vs official convolution {err(torch.stack(ys, 1), y64):.1e}"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
