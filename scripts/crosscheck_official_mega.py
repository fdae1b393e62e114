"""Numerical cross-check of ssmkit's EMA and Mega against the official facebookresearch/mega (fairseq) modules.

    python scripts/crosscheck_official_mega.py --mega-dir PATH/TO/facebookresearch/mega

The official code is NOT part of ssmkit: bring your own checkout (the figures in docs/benchmarks.md used commit
aeaa4b4). Only three of its files are loaded, each standalone: ``fairseq/modules/exponential_moving_average.py``
(MultiHeadEMA), ``fairseq/modules/relative_positional_bias.py`` and ``fairseq/modules/moving_average_gated_attention.py``
(MovingAverageGatedAttention). What they import from fairseq is stubbed here: the incremental-state decorator (a
dict keyed by module), dropouts (identity: eval mode), ``SequenceNorm`` (identity: the comparison is of the layer
without its norm), and ``fairseq.utils``, whose ``laplace``, ``softmax`` and ``relu2`` are executed from the official
``fairseq/utils.py`` itself (read with ``ast``; the rest of that file is not loaded).

Every comparison copies the official module's parameters into the ssmkit layer (official ``delta`` -> α logit,
``alpha`` -> δ logit, ``mx_proj`` -> W_mx in the same row order, ``gamma``/``beta`` -> κ/μ, the relative bias as is),
and compares:
  - MultiHeadEMA(x) with SiLU(EMA(x)) (the official EMA output includes the SiLU and the ω skip);
  - MovingAverageGatedAttention(x, attn_mask=causal) with x + Mega(x) (the official pre-norm output is
    x + φ ⊙ (Ĥ - x); with the norm stubbed to the identity the two are the same function);
  - the official incremental decoding (one token at a time through ``incremental_state``) with Mega.step.
Prints the max relative error of each (float64 modules; the official rotary bias tabulates its sinusoids in float32,
so rotary cases agree to ~1e-7 only).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import pathlib
import sys
import types

import torch
import torch.nn.functional as F

import ssmkit.layers as layers


def _official_utils(mega_dir: pathlib.Path) -> types.ModuleType:
    """A stand-in ``fairseq.utils`` holding the official laplace, softmax and relu2 (executed from its source)."""
    source = (mega_dir / "fairseq" / "utils.py").read_text()
    tree = ast.parse(source)
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("laplace", "softmax", "relu2")]
    module = types.ModuleType("fairseq.utils")
    module.__dict__.update({"math": math, "torch": torch, "F": F})
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "fairseq/utils.py", "exec"), module.__dict__)
    module.get_activation_fn = lambda activation: {"silu": F.silu}[activation]
    return module


def _with_incremental_state(cls):
    def get_incremental_state(self, incremental_state, key):
        return incremental_state.get(f"{id(self)}.{key}")

    def set_incremental_state(self, incremental_state, key, value):
        incremental_state[f"{id(self)}.{key}"] = value
        return incremental_state

    cls.get_incremental_state = get_incremental_state
    cls.set_incremental_state = set_incremental_state
    return cls


class _Identity(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x, *args, **kwargs):
        return x


def load_official(mega_dir: str) -> types.ModuleType:
    """The official MovingAverageGatedAttention module file (and, through it, MultiHeadEMA) with fairseq stubbed."""
    root = pathlib.Path(mega_dir)
    stubs = {
        "fairseq": types.ModuleType("fairseq"),
        "fairseq.utils": _official_utils(root),
        "fairseq.incremental_decoding_utils": types.ModuleType("fairseq.incremental_decoding_utils"),
        "fairseq.modules": types.ModuleType("fairseq.modules"),
        "fairseq.modules.fairseq_dropout": types.ModuleType("fairseq.modules.fairseq_dropout"),
        "fairseq.modules.sequence_norm": types.ModuleType("fairseq.modules.sequence_norm"),
    }
    stubs["fairseq"].utils = stubs["fairseq.utils"]
    stubs["fairseq.incremental_decoding_utils"].with_incremental_state = _with_incremental_state
    stubs["fairseq.modules.fairseq_dropout"].FairseqDropout = _Identity
    stubs["fairseq.modules.fairseq_dropout"].FairseqFeatureDropout = _Identity
    stubs["fairseq.modules.sequence_norm"].SequenceNorm = _Identity
    sys.modules.update(stubs)
    for name in ("exponential_moving_average", "relative_positional_bias", "moving_average_gated_attention"):
        spec = importlib.util.spec_from_file_location(f"fairseq.modules.{name}", root / "fairseq" / "modules" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"fairseq.modules.{name}"] = module
        spec.loader.exec_module(module)
    return sys.modules["fairseq.modules.moving_average_gated_attention"]


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def copy_ema(official, ema) -> None:
    """MultiHeadEMA (D, N, 1) parameters -> ssmkit EMA (1, H, N): official delta is α's logit, alpha is δ's."""
    ema.logit_alpha.copy_(official.delta.squeeze(-1)[None])
    ema.logit_delta.copy_(official.alpha.squeeze(-1)[None])
    ema.beta.copy_(official.beta.squeeze(-1)[None])
    ema.gamma.copy_(official.gamma[None])
    ema.D.copy_(official.omega)


@torch.no_grad()
def copy_mega(official, mega) -> None:
    copy_ema(official.move, mega.ema)
    mega.W_v.copy_(official.v_proj.weight)
    mega.b_v.copy_(official.v_proj.bias)
    mega.W_mx.copy_(official.mx_proj.weight)  # rows u (φ), z, r (γ), hx: the same order
    mega.b_mx.copy_(official.mx_proj.bias)
    mega.U_h.copy_(official.h_proj.weight)
    mega.b_h.copy_(official.h_proj.bias)
    mega.kappa.copy_(official.gamma)
    mega.mu.copy_(official.beta)
    bias = official.rel_pos_bias
    if mega.positional == "simple":
        mega.rel_bias.copy_(bias.rel_pos_bias)
    else:
        mega.rel_bias.copy_(torch.cat([bias.alpha, bias.beta]))


def randomise(module, scale: float = 0.3) -> None:
    """Larger weights than the 0.02 init, so that the attention and gates matter in the comparison."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "move" not in name:
                p.add_(torch.randn_like(p) * scale)


def ema_checks(off_module, dtype) -> list[tuple[str, float]]:
    D, N, L = 16, 16, 500
    official = off_module.MultiHeadEMA(D, ndim=N).to(dtype).eval()
    ours = layers.build("ema", d_model=D, d_state=N, dtype=dtype)
    copy_ema(official, ours)
    x = torch.randn(L, 2, D, dtype=dtype)
    with torch.no_grad():
        y_off = official(x)  # (L, B, D)
        y_ours = F.silu(ours(x.transpose(0, 1))[0]).transpose(0, 1)
        state: dict = {}
        steps = [official(x[t : t + 1], incremental_state=state) for t in range(40)]
        h = ours.initial_state(2)
        ours_steps = []
        for t in range(40):
            y_t, h = ours.step(x[t], h)
            ours_steps.append(F.silu(y_t))
    return [
        (f"EMA forward, D={D}, N={N}, L={L}", err(y_ours, y_off)),
        ("EMA one-token incremental steps (40) vs ssmkit step", err(torch.stack(ours_steps), torch.cat(steps))),
    ]


def mega_checks(off_module, dtype) -> list[tuple[str, float]]:
    rows = []
    D, Z, E, N = 8, 16, 12, 4
    cases = [
        ("softmax", "simple", 16, 64),
        ("softmax", "rotary", 16, 64),
        ("laplace", "simple", 16, 64),
        ("laplace", "rotary", -1, 40),
        ("softmax", "simple", -1, 40),
    ]
    for activation, positional, chunk, L in cases:
        torch.manual_seed(0)
        official = off_module.MovingAverageGatedAttention(
            D, zdim=Z, hdim=E, ndim=N, attention_activation=activation, chunk_size=chunk, rel_pos_bias=positional,
            max_positions=64,
        ).to(dtype).eval()
        randomise(official)
        ours = layers.build(
            "mega", d_model=D, d_state=N, d_qk=Z, d_v=E, attention=activation,
            chunk_size=None if chunk < 0 else chunk, positional=positional, max_positions=64, dtype=dtype,
        )
        copy_mega(official, ours)
        x = torch.randn(L, 2, D, dtype=dtype)
        T = L if chunk < 0 else chunk
        mask = (torch.triu(torch.full((T, T), float("-inf"), dtype=dtype), 1) if activation == "softmax"
                else torch.tril(torch.ones(T, T, dtype=dtype)))
        with torch.no_grad():
            y_off, _ = official(x, attn_mask=mask)
            y_ours = x + ours(x.transpose(0, 1))[0].transpose(0, 1)
            state: dict = {}
            n_steps = min(L, 40)
            steps = [official(x[t : t + 1], incremental_state=state)[0] for t in range(n_steps)]
            h = ours.initial_state(2)
            ours_steps = []
            for t in range(n_steps):
                y_t, h = ours.step(x[t], h)
                ours_steps.append(x[t] + y_t)
        name = f"Mega {activation}, {positional} bias, chunk {chunk if chunk > 0 else 'none'}, L={L}"
        rows.append((f"{name}: forward", err(y_ours, y_off)))
        rows.append((f"{name}: {n_steps} incremental steps", err(torch.stack(ours_steps), torch.cat(steps))))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mega-dir", required=True, help="root of a facebookresearch/mega checkout")
    args = parser.parse_args()
    mega_module = load_official(args.mega_dir)
    ema_module = sys.modules["fairseq.modules.exponential_moving_average"]
    torch.manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        print(f"--- {dtype} (max relative error, ssmkit vs official)")
        for name, value in ema_checks(ema_module, dtype) + mega_checks(mega_module, dtype):
            print(f"{name:70s} {value:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
