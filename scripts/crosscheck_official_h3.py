"""Numerical cross-check of ssmkit's H3 against the official HazyResearch/H3 layer (its pure-PyTorch path, on CPU).

    python scripts/crosscheck_official_h3.py --h3-root PATH/TO/HazyResearch/H3

The official code is NOT part of ssmkit: bring your own copy (the figures in docs/benchmarks.md used commit 5c4d06b)
and `pip install einops opt_einsum`. Its one Lightning import (`rank_zero_only`) is stubbed here; without its CUDA
extensions and pykeops it runs the plain-PyTorch paths (FFT convolutions, naive Vandermonde kernel). The official
parameters are copied into ssmkit's layer (q, k, v stacked into one projection; the shift SSM's B, C, D_k; the
diagonal SSM's Δ, A, B, C, D; the output projection). Prints the relative differences of the outputs (forward,
head_dim 1 and 4) and of the recurrent step against the official forward.
"""

from __future__ import annotations

import argparse
import math
import sys
import types

import torch

import ssmkit.layers as layers


def load_official(root: str):
    lightning = types.ModuleType("pytorch_lightning")
    utilities = types.ModuleType("pytorch_lightning.utilities")
    utilities.rank_zero_only = lambda f: f
    lightning.utilities = utilities
    sys.modules.setdefault("pytorch_lightning", lightning)
    sys.modules.setdefault("pytorch_lightning.utilities", utilities)
    sys.path.insert(0, root)
    from src.models.ssm.h3 import H3  # noqa: E402  (the official module)

    return H3


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def copy_parameters(off, ours) -> None:
    ours.in_proj.weight.copy_(torch.cat([off.q_proj.weight, off.k_proj.weight, off.v_proj.weight]))
    ours.in_proj.bias.copy_(torch.cat([off.q_proj.bias, off.k_proj.bias, off.v_proj.bias]))
    shift = off.ssm_k_kernel.kernel
    ours.B.copy_(shift.B)  # (d_model, N)
    ours.C.copy_(shift.C[0])  # (1, d_model, N) -> (d_model, N)
    ours.D_k.copy_(off.ssm_k_D)
    diag = off.kernel.kernel
    A = diag._A()  # (H, N/2) complex
    ours.ssm.log_A_real.copy_(torch.log(-A.real))
    ours.ssm.A_imag.copy_(A.imag)
    ours.ssm.log_dt.copy_(diag.log_dt)
    ours.ssm.B.copy_(diag.B.expand_as(ours.ssm.B))  # (n_ssm, N/2, 2) -> (H, N/2, 2)
    ours.ssm.C.copy_(diag.C)  # (1, H, N/2, 2): B is folded into C at the official init
    ours.ssm.D.copy_(off.D)
    ours.out_proj.weight.copy_(off.output_linear.weight)
    ours.out_proj.bias.copy_(off.output_linear.bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h3-root", required=True, help="a checkout of HazyResearch/H3 (holding src/)")
    parser.add_argument("--d-model", type=int, default=16)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()
    H3 = load_official(args.h3_root)
    d, L = args.d_model, args.length
    for head_dim in (1, 4):
        torch.manual_seed(0)
        off = H3(d_model=d, d_state=64, head_dim=head_dim, l_max=None, measure="diag-lin", mode="diag").eval()
        ours = layers.build("h3", d_model=d, d_state=64, head_dim=head_dim)
        copy_parameters(off, ours)
        with torch.no_grad():  # a trained-looking shift B (the init e1 would hide index errors)
            B = torch.randn(d, 64) / math.sqrt(64)
            off.ssm_k_kernel.kernel.B.copy_(B)
            ours.B.copy_(B)
        x = torch.randn(2, L, d)
        with torch.no_grad():
            y_off = off(x)
            y, _ = ours(x)
            h = ours.initial_state(2)
            steps = []
            for t in range(L):
                y_t, h = ours.step(x[:, t], h)
                steps.append(y_t)
            y_step = torch.stack(steps, dim=1)
            ours64 = layers.build("h3", d_model=d, d_state=64, head_dim=head_dim, dtype=torch.float64)
            ours64.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
            y64, _ = ours64(x.double())
        print(f"head_dim={head_dim} L={L} d_model={d}: official float32 forward vs ssmkit float64 {err(y_off, y64):.2e}; "
              f"ssmkit float32 forward {err(y, y64):.2e}; ssmkit float32 step {err(y_step, y64):.2e}")


if __name__ == "__main__":
    main()
