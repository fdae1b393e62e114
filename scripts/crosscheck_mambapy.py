"""ssmkit's Mamba against mambapy's MambaBlock with the same weights, and Mamba's prefilled decoding, in figures.

    python scripts/crosscheck_mambapy.py [--seeds 5]

mambapy (pip package ``mambapy``, 1.2.0; a dev dependency of ssmkit) is a PyTorch port of the official
``mamba_simple.py``. For each seed: a Mamba(d_model=16, d_state=8) with weights moved away from the initialisation,
copied into mambapy's MambaBlock, on x (2, 37, 16) float32; then a Mamba(8, d_state=6) decoded token by token after a
25-token forward, in float32 and under bf16 autocast. Prints the largest relative error max|a - b| / max|b| of each
comparison over the seeds (the figures in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

import torch

import ssmkit.ops as ops
from ssmkit.layers import Mamba


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def to_mambapy(layer: Mamba, pscan: bool):
    from mambapy.mamba import MambaBlock, MambaConfig

    config = MambaConfig(d_model=layer.d_model, n_layers=1, dt_rank=layer.rank, d_state=layer.d_state,
                         expand_factor=layer.expand, d_conv=layer.d_conv, bias=layer.bias, conv_bias=layer.conv_bias,
                         pscan=pscan)
    block = MambaBlock(config)
    with torch.no_grad():
        for ours, theirs in ((layer.in_proj.weight, block.in_proj.weight), (layer.x_proj.weight, block.x_proj.weight),
                             (layer.dt_proj.weight, block.dt_proj.weight), (layer.dt_bias, block.dt_proj.bias),
                             (layer.A_log, block.A_log), (layer.D, block.D), (layer.out_proj.weight, block.out_proj.weight),
                             (layer.conv1d.bias, block.conv1d.bias)):
            theirs.copy_(ours)
        block.conv1d.weight.copy_(layer.conv1d.weight.unsqueeze(1))  # nn.Conv1d (H, 1, W)
    return block


def decode(layer: Mamba, x: torch.Tensor, k: int):
    y1, h = layer(x[:, :k])
    ys = [y1]
    for t in range(k, x.shape[1]):
        y_t, h = layer.step(x[:, t], h)
        ys.append(y_t[:, None])
    return torch.cat(ys, 1), h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    worst: dict[str, float] = {}

    def note(name: str, value: float) -> None:
        worst[name] = max(worst.get(name, 0.0), value)

    for seed in range(args.seeds):
        torch.manual_seed(seed)
        layer = Mamba(16, d_state=8)
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, 37, 16)
        for pscan in (True, False):
            block = to_mambapy(layer, pscan)
            with torch.no_grad():
                y_ref = block(x)
                for backend in ("chunked", "reference"):
                    with ops.use_backend(backend):
                        note(f"forward ({backend}) vs mambapy ({'pscan' if pscan else 'sequential'})", rel_err(layer(x)[0], y_ref))
        layer = Mamba(8, d_state=6)
        x = torch.randn(3, 40, 8)
        with torch.no_grad():
            y, h = layer(x)
            y_dec, h_dec = decode(layer, x, 25)
            note("decoding vs forward, fp32: output", rel_err(y_dec, y))
            note("decoding vs forward, fp32: SSM state", rel_err(h_dec.ssm, h.ssm))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, h = layer(x)
                y_dec, h_dec = decode(layer, x, 25)
            note("decoding vs forward, bf16 autocast: output", rel_err(y_dec, y))
            note("decoding vs forward, bf16 autocast: SSM state", rel_err(h_dec.ssm, h.ssm))
    print(f"largest relative error over {args.seeds} seeds (torch {torch.__version__}):")
    for name, value in worst.items():
        print(f"  {name}: {value:.1e}")


if __name__ == "__main__":
    main()
