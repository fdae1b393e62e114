"""Numerical cross-check of ssmkit's SSD scan (ssmkit.ops.ssd) against the official minimal SSD (Listing 1 of
arXiv 2405.21060, state-spaces/mamba ``mamba_ssm/modules/ssd_minimal.py``).

    python scripts/crosscheck_official_ssd.py --ssd-minimal PATH/TO/ssd_minimal.py

The official file is NOT part of ssmkit: bring your own copy (the figures in docs/benchmarks.md used commit
e9594ce) and einops. Only its functions ``segsum`` and ``ssd_minimal_discrete`` are loaded (its module-level
Triton import is skipped, so it runs on CPU). The official function takes X·Δ and A·Δ, B and C per head, and
needs L to be a multiple of the chunk; it is given the same initial state. Prints the errors of the official
float64/float32 outputs and final states and of ssmkit's chunked path and loop, each against a float64 loop.
"""

from __future__ import annotations

import argparse
import ast

import torch
import torch.nn.functional as F

from ssmkit.ops.ssd import ssd_chunked, ssd_reference


def load_official(path: str) -> dict:
    """The official ``segsum`` and ``ssd_minimal_discrete``, executed without the file's other imports."""
    with open(path) as f:
        tree = ast.parse(f.read())
    keep = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in ("segsum", "ssd_minimal_discrete")]
    namespace: dict = {}
    exec("import torch\nimport torch.nn.functional as F\nfrom einops import rearrange, repeat", namespace)
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), namespace)
    return namespace


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ssd-minimal", required=True, help="path to the official mamba_ssm/modules/ssd_minimal.py")
    args = parser.parse_args()
    official = load_official(args.ssd_minimal)["ssd_minimal_discrete"]
    g = torch.Generator().manual_seed(0)
    Bsz, L, H, P, G, N, T = 2, 512, 4, 16, 2, 32, 64
    x = torch.randn(Bsz, L, H, P, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(Bsz, L, H, generator=g, dtype=torch.float64) - 1)
    A = -(torch.rand(H, generator=g, dtype=torch.float64) * 15 + 1)  # -U[1, 16], the Mamba-2 init
    B = torch.randn(Bsz, L, G, N, generator=g, dtype=torch.float64)
    C = torch.randn(Bsz, L, G, N, generator=g, dtype=torch.float64)
    h0 = torch.randn(Bsz, H, P, N, generator=g, dtype=torch.float64)
    y64, h64 = ssd_reference(x, dt, A, B, C, h0)
    print(f"SSD B={Bsz} L={L} H={H} P={P} G={G} N={N} T={T}, A ~ -U[1, 16], with an initial state; "
          "relative max errors against the float64 loop (y, final state):")
    for dtype in (torch.float64, torch.float32):
        xs, dts, As, Bs, Cs, h0s = (t.to(dtype) for t in (x, dt, A, B, C, h0))
        rep = H // G
        y_off, h_off = official(
            xs * dts[..., None], As * dts, Bs.repeat_interleave(rep, dim=2), Cs.repeat_interleave(rep, dim=2), T,
            initial_states=h0s[:, None],
        )
        y_ch, h_ch = ssd_chunked(xs, dts, As, Bs, Cs, h0s, chunk_size=T)
        y_loop, h_loop = ssd_reference(xs, dts, As, Bs, Cs, h0s)
        name = str(dtype).replace("torch.", "")
        print(f"  {name}: official ssd_minimal {err(y_off, y64):.1e}, {err(h_off, h64):.1e}; "
              f"ssmkit chunked {err(y_ch, y64):.1e}, {err(h_ch, h64):.1e}; ssmkit loop {err(y_loop, y64):.1e}, "
              f"{err(h_loop, h64):.1e}; ssmkit chunked vs official {err(y_ch, y_off):.1e}")


if __name__ == "__main__":
    main()
