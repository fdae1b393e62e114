"""Generation benchmark: a token language model per layer, its prompt's cost and each new token's.

    ssmkit bench generate [--layers s4d mamba attention] [--batch 1 8] [--d-model 128] [--n-layers 4] [--vocab 256]
                          [--prompt 64] [--new 128] [--repeats 3] [--json PATH]

For each layer, a ``SequenceModel(vocab_size=V, head="lm", pool=None)`` of ``--n-layers`` blocks of that layer (eval
mode, float32) continues a (B, ``--prompt``) prompt by :func:`ssmkit.models.generate` (greedy: the draws' own cost is
reported apart). Two calls per round, with 1 and with n + 1 new tokens, give

    prefill   = T(1)                     (the prompt by ``forward``, and the choice of the first token)
    per token = (T(n + 1) - T(1)) / n    (a ``step`` of every block, the head, the choice of the next token)

and tokens/s = B / per token. A third call samples (temperature 0.8, top-k 50, top-p 0.95) to show what the draws
add per token (top-k at most the vocabulary). Every layer is timed once per round, in ``--repeats`` interleaved rounds; the figures are medians over
the rounds (this shared VM drifts by ±50 %: a layer's rows compare within a run, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ssmkit.layers as layers
from ssmkit.bench import positive_int
from ssmkit.bench.core import bench_options, machine, unbuildable
from ssmkit.models import SequenceModel, generate

SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}  # the sampled row's settings (top-k at most V)


def language_model(name: str, d_model: int, n_layers: int, vocab: int, d_state: int) -> SequenceModel:
    """A float32 token LM of ``n_layers`` blocks of layer ``name`` in eval mode, each layer built with ``d_state``
    where it has a state size (attention has none), as ``ssmkit bench step`` builds it.

    Args:
        name: a registered layer.
        d_model: H.
        n_layers: the blocks.
        vocab: V, the vocabulary (and the head's outputs).
        d_state: N, for the layers that have a state size.

    Returns:
        the model.
    """
    options = bench_options(name, d_state)
    return SequenceModel(1, d_model, n_layers, name, options, vocab, head="lm", pool=None, vocab_size=vocab).eval()


def _seconds(model: SequenceModel, prompt: torch.Tensor, new: int, sampled: bool) -> float:
    """The wall time of one ``generate`` call."""
    vocab = model.config.d_output
    options = {**SAMPLING, "top_k": min(SAMPLING["top_k"], vocab)} if sampled else {"temperature": 0.0}
    generator = torch.Generator().manual_seed(0) if sampled else None
    start = time.perf_counter()
    generate(model, prompt, new, generator=generator, **options)
    return time.perf_counter() - start


def measure(names: list[str], batch: int, d_model: int, n_layers: int, vocab: int, d_state: int, prompt_length: int,
            new: int, repeats: int) -> list[dict]:
    """Prefill and per-token times of each layer's LM at one shape, in interleaved rounds (module docstring).

    Args:
        names: the layers.
        batch: B, the prompts.
        d_model: H.
        n_layers: blocks per model.
        vocab: V.
        d_state: N where a layer has one.
        prompt_length: the prompts' length.
        new: n, the tokens timed per call.
        repeats: rounds.

    Returns:
        one dict per layer: layer, batch, d_model, n_layers, prompt, prefill_ms, ms_per_token, tokens_per_s and
        sampled_ms_per_token (medians over the rounds).
    """
    torch.manual_seed(0)
    models = {name: language_model(name, d_model, n_layers, vocab, d_state) for name in names}
    prompt = torch.randint(0, vocab, (batch, prompt_length), generator=torch.Generator().manual_seed(1))
    for model in models.values():  # warm-up: first calls build caches, kernels and allocator pools
        _seconds(model, prompt, 2, False)
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, model in models.items():
            one = _seconds(model, prompt, 1, False)
            greedy = _seconds(model, prompt, new + 1, False)
            sampled = _seconds(model, prompt, new + 1, True)
            times[name].append((one, (greedy - one) / new, (sampled - one) / new))
    rows = []
    for name, runs in times.items():
        prefill, per_token, per_sampled = (statistics.median(r[i] for r in runs) for i in range(3))
        rows.append({"layer": name, "batch": batch, "d_model": d_model, "n_layers": n_layers, "prompt": prompt_length,
                     "prefill_ms": 1e3 * prefill, "ms_per_token": 1e3 * per_token,
                     "tokens_per_s": batch / per_token if per_token > 0 else float("inf"),
                     "sampled_ms_per_token": 1e3 * per_sampled})
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench generate") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--layers", nargs="+", default=layers.available(), choices=layers.available(),
                        help="layers to time, one model each (default: every registered layer)")
    parser.add_argument("--batch", nargs="+", type=positive_int, default=[1, 8], help="prompts per call B (default 1 8)")
    parser.add_argument("--d-model", type=positive_int, default=128, help="width H (default 128)")
    parser.add_argument("--n-layers", type=positive_int, default=4, help="blocks per model (default 4)")
    parser.add_argument("--vocab", type=positive_int, default=256, help="vocabulary V (default 256)")
    parser.add_argument("--d-state", type=positive_int, default=64, help="state size N where a layer has one (default 64)")
    parser.add_argument("--prompt", type=positive_int, default=64, help="prompt length (default 64)")
    parser.add_argument("--new", type=positive_int, default=128, help="new tokens timed per call (default 128)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds; medians (default 3)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    problem = unbuildable([(f"layer {name} at d_model {args.d_model}, d_state {args.d_state}", name, args.d_model,
                            args.d_state, None) for name in args.layers])
    if problem:  # before anything is timed
        parser.error(problem)
    print(f"ssmkit bench generate: {args.n_layers} blocks, H={args.d_model}, V={args.vocab}, prompt {args.prompt}, "
          f"{args.new} new tokens, float32, eval, {args.repeats} rounds; {machine()}")
    rows = []
    for batch in args.batch:
        rows += measure(args.layers, batch, args.d_model, args.n_layers, args.vocab, args.d_state, args.prompt,
                        args.new, args.repeats)
    print("| layer | B | prefill ms | ms/token | tokens/s | sampled ms/token |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['batch']} | {r['prefill_ms']:.1f} | {r['ms_per_token']:.3f} | "
              f"{r['tokens_per_s']:,.0f} | {r['sampled_ms_per_token']:.3f} |")
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, {"machine": machine(), "options": vars(args), "results": rows}, strict=True)  # inf: null
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
