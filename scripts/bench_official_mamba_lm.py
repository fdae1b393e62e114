"""The official Mamba and Mamba-2 LMs at their 130m sizes on the CPU, against the same weights in ssmkit, in figures.

    OMP_NUM_THREADS=2 python scripts/bench_official_mamba_lm.py --mamba-ssm-src /tmp/mamba [--prompt 512] [--new 32]

The official ``MambaLMHeadModel`` (state-spaces/mamba, checked at e9594ce; loaded on the CPU as
``scripts/crosscheck_official_mamba_lm.py`` does, with the official package's own torch reference paths in place of
its CUDA kernels: the only way it runs without a GPU) is built at mamba-130m's size (d_model 768, 24 blocks, d_state
16, vocabulary 50 277 padded to 50 280) and at mamba2-130m's (d_state 128, headdim 64), with its own initialisation.
Its state dict goes through ``ssmkit.models.load_mamba``. For each, in float32, batch 1:

    prefill   the logits of a (1, --prompt) prompt: the official ``forward`` against ssmkit's ``forward``
    per token one new token's logits from the cached state: the official ``step`` fallback (``InferenceParams``)
              against ssmkit's ``step`` (inside ``frozen_parameters``)

each the median of --repeats rounds, and the largest relative difference of the two models' logits. The official
CPU paths are references, not fast paths: the comparison says what a user without a GPU gets from each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crosscheck_official_mamba_lm import import_official, official_decode, rel  # noqa: E402

import ssmkit  # noqa: E402
from ssmkit.layers import frozen_parameters  # noqa: E402

SIZES = {"mamba-130m": {}, "mamba2-130m": {"layer": "Mamba2"}}


def official_130m(mods, ssm_cfg: dict) -> torch.nn.Module:
    """The official LM at the 130m size, its own init, the CPU paths (no fast path, no fused add-norm)."""
    cpu = {"use_mem_eff_path": False} if ssm_cfg.get("layer") == "Mamba2" else {"use_fast_path": False}
    config = mods["config_mamba"].MambaConfig(d_model=768, n_layer=24, vocab_size=50277, ssm_cfg={**ssm_cfg, **cpu},
                                              rms_norm=True, residual_in_fp32=False, fused_add_norm=False,
                                              pad_vocab_size_multiple=8, tie_embeddings=True)
    torch.manual_seed(0)
    return mods["mixer_seq_simple"].MambaLMHeadModel(config).eval()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mamba-ssm-src", type=Path, required=True, help="the folder holding mamba_ssm/")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=32, help="tokens decoded one by one (per-token time)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args(argv)
    mods = import_official(args.mamba_ssm_src)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; prompt {args.prompt}, {args.new} new tokens, "
          f"median of {args.repeats}")
    for size in args.sizes:
        official = official_130m(mods, SIZES[size])
        ours = ssmkit.models.load_mamba(official.state_dict())
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 50277, (1, args.prompt), generator=g)
        tokens = torch.randint(0, 50277, (1, args.new), generator=g)
        rows: dict[str, list[float]] = {k: [] for k in ("official prefill", "ssmkit prefill", "official token",
                                                          "ssmkit token")}
        with torch.no_grad():
            for _ in range(args.repeats):
                t, theirs = timed(lambda: official(ids).logits)
                rows["official prefill"].append(t)
                t, mine = timed(lambda: ours(ids)[0])
                rows["ssmkit prefill"].append(t)
                t, theirs_steps = timed(lambda: official_decode(mods, official, tokens))
                rows["official token"].append(t / args.new)
                with frozen_parameters():
                    state = ours.initial_state(1)
                    start = time.perf_counter()
                    steps = []
                    for k in range(args.new):
                        logits, state = ours.step(tokens[:, k], state)
                        steps.append(logits)
                    rows["ssmkit token"].append((time.perf_counter() - start) / args.new)
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"{size}: prefill official {med['official prefill']:.2f} s, ssmkit {med['ssmkit prefill']:.3f} s "
              f"({med['official prefill'] / med['ssmkit prefill']:.1f}x); per token official "
              f"{1e3 * med['official token']:.1f} ms, ssmkit {1e3 * med['ssmkit token']:.1f} ms "
              f"({med['official token'] / med['ssmkit token']:.1f}x); logits differ by {rel(mine, theirs):.1e} "
              f"(forward), {rel(torch.stack(steps, 1), theirs_steps):.1e} (steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
