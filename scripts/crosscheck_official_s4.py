"""Numerical cross-check of ssmkit's S4 / S4D against the official state-spaces/s4 code.

    python scripts/crosscheck_official_s4.py --s4-file PATH/TO/state-spaces/s4/models/s4/s4.py

The official standalone file is NOT part of ssmkit: bring your own copy (the figures in
docs/benchmarks.md used commit e757cef) and `pip install einops`. Its one Lightning import
(`rank_zero_only`) is stubbed here. Prints, for identical parameters taken from the official modules:
the NPLR init difference, each kernel's error against a dense float64 oracle, and step-vs-forward errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types

import torch

import ssmkit.layers as layers
from ssmkit.ops.cauchy import dplr_kernel, dplr_kernel_reference
from ssmkit.ops.diagonal import diagonal_kernel
from ssmkit.ops.discretize import bilinear, zoh
from ssmkit.ops.hippo import nplr, s4d_eigenvalues


def load_official(path: str):
    lightning = types.ModuleType("pytorch_lightning")
    utilities = types.ModuleType("pytorch_lightning.utilities")
    utilities.rank_zero_only = lambda f: f
    lightning.utilities = utilities
    sys.modules.setdefault("pytorch_lightning", lightning)
    sys.modules.setdefault("pytorch_lightning.utilities", utilities)
    spec = importlib.util.spec_from_file_location("s4_official", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def dplr_checks(off, H: int, N: int, L: int) -> None:
    for init in ("legs", "fout"):
        kernel = off.SSMKernelDPLR(d_model=H, d_state=N, l_max=L, init=init, rank=1, dt_transform="exp", n_ssm=1)
        with torch.no_grad():
            K_off, _ = kernel(L=L)  # (C, H, L)
            dt, A, B, C, P, _ = kernel._get_params()
            c128 = torch.complex128
            args = (A.to(c128), P.to(c128), B.to(c128).reshape(1, H, N // 2), C.to(c128), dt.reshape(-1).double(), L)
            K_dense = dplr_kernel_reference(*args)[0]
            K_ours = dplr_kernel(*args)[0]
        print(f"DPLR kernel {init}: official float32 vs dense float64 {err(K_off, K_dense):.2e}; "
              f"ssmkit {err(K_ours, K_dense):.2e}")
    ours = nplr("legs", N)
    Lambda, P, B, _ = off.nplr("legs", N, rank=1, dtype=torch.float64, B_clip=2.0)
    print(f"NPLR LegS N={N}: |Λ| diff {float((ours.Lambda - Lambda).abs().max()):.1e}, "
          f"|B| diff {float((ours.B.abs() - B.abs()).abs().max()):.1e}, |P| diff {float((ours.P.abs() - P.abs()).abs().max()):.1e}")


def step_checks(off, H: int, N: int) -> None:
    for L in (256, 1024):
        torch.manual_seed(1)
        conv = off.FFTConv(d_model=H, d_state=N, l_max=L, mode="dplr", init="legs", transposed=False,
                           activation=None, dropout=0.0).eval()
        layer = layers.build("s4", d_model=H, d_state=N, l_max=L)
        x = torch.randn(2, L, H)
        with torch.no_grad():
            y_off, _ = conv(x)
            conv.setup_step()
            s = conv.default_state(2)
            steps = []
            for t in range(L):
                y_t, s = conv.step(x[:, t], s)
                steps.append(y_t)
            y, _ = layer(x)
            h = layer.initial_state(2)
            ours = []
            for t in range(L):
                y_t, h = layer.step(x[:, t], h)
                ours.append(y_t)
        print(f"step vs forward, LegS L={L}: official {err(torch.stack(steps, 1), y_off):.2e}; "
              f"ssmkit {err(torch.stack(ours, 1), y):.2e}")


def diag_checks(off, H: int, N: int, L: int) -> None:
    for init, disc in (("diag-lin", "zoh"), ("diag-inv", "bilinear"), ("diag-legs", "zoh")):
        kernel = off.SSMKernelDiag(d_model=H, d_state=N, l_max=L, init=init, disc=disc, dt_transform="exp", n_ssm=None)
        with torch.no_grad():
            K_off, _ = kernel(L=L)
            dt, A, B, C = kernel._get_params()
            discretize = zoh if disc == "zoh" else bilinear
            c128 = torch.complex128
            A64, B64 = discretize(A.to(c128), B.to(c128).reshape(H, -1), dt.double().reshape(H, 1))
            K64 = diagonal_kernel(A64, B64, 2 * C.to(c128), L)
            A32, B32 = discretize(A.reshape(H, -1), B.reshape(H, -1), dt.float().reshape(H, 1))
            K32 = diagonal_kernel(A32, B32, 2 * C, L)
        diff = float((A[0].to(c128) - s4d_eigenvalues(init.split("-")[1], N)).abs().max())
        print(f"S4D {init}/{disc}: kernel vs float64, official {err(K_off, K64):.2e}, ssmkit {err(K32, K64):.2e}; "
              f"init eigenvalue diff {diff:.1e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s4-file", required=True, help="path to the official models/s4/s4.py")
    args = parser.parse_args()
    off = load_official(args.s4_file)
    torch.manual_seed(0)
    dplr_checks(off, H=4, N=64, L=1024)
    step_checks(off, H=4, N=64)
    diag_checks(off, H=4, N=64, L=4096)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
