"""Numerical cross-check of ssmkit's `rglru` (the Hawk recurrent block) against google-deepmind/recurrentgemma's
PyTorch `RecurrentBlock`.

    python scripts/crosscheck_official_rglru.py --official DIR

DIR holds the official package's files `recurrentgemma/common.py` and `recurrentgemma/torch/{layers,modules,
array_typing}.py` (the figures in docs/benchmarks.md used commit 2efa84d); they are NOT part of ssmkit. `einops` is
needed; `jaxtyping` (used only for annotations there) is stubbed when absent. The official block is built in float64,
its parameters are copied into ssmkit's layer (W_x, W_y, W_out, Conv1D taps, gate blocks, Λ = -a_param), and the
script prints the largest relative differences of:
  - a packed training pass with several documents (segment_pos) against `forward(..., resets=segment_pos == 0)`;
  - the final caches (RG-LRU state, conv window);
  - 16 decoding steps continued from those caches (official cache mode, ssmkit `step`);
  - every parameter gradient of a random linear loss, in the ordinary regime and with a_t → 1, where the clipped
    square-root gradient is active.
"""

from __future__ import annotations

import argparse
import sys
import types

import torch

from ssmkit.layers import RGLRU


def load_official(root: str):
    try:
        import jaxtyping  # noqa: F401
    except ImportError:  # annotations only: any subscript is accepted
        stub = types.ModuleType("jaxtyping")

        class _Any:
            def __class_getitem__(cls, item):
                return torch.Tensor

        stub.Float = stub.Integer = stub.Bool = _Any
        sys.modules["jaxtyping"] = stub
    package = types.ModuleType("recurrentgemma")  # skip the package __init__, which imports the JAX code
    package.__path__ = [f"{root}/recurrentgemma"]
    sys.modules["recurrentgemma"] = package
    from recurrentgemma.torch import modules

    return modules


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def copy_into_ours(block, layer: RGLRU) -> None:
    with torch.no_grad():
        layer.in_x.weight.copy_(block.linear_x.weight)
        layer.in_x.bias.copy_(block.linear_x.bias)
        layer.in_gate.weight.copy_(block.linear_y.weight)
        layer.in_gate.bias.copy_(block.linear_y.bias)
        layer.out.weight.copy_(block.linear_out.weight)
        layer.out.bias.copy_(block.linear_out.bias)
        layer.conv.weight.copy_(block.conv_1d.w.T)  # official (W, D), w[W-1] on the current input; ours (D, W)
        layer.conv.bias.copy_(block.conv_1d.b)
        layer.gate_x.weight.copy_(block.rg_lru.input_gate.w)
        layer.gate_x.bias.copy_(block.rg_lru.input_gate.b)
        layer.gate_a.weight.copy_(block.rg_lru.a_gate.w)
        layer.gate_a.bias.copy_(block.rg_lru.a_gate.b)
        layer.Lambda.copy_(-block.rg_lru.a_param)  # recurrentgemma stores -Λ: σ(Λ) = exp(-softplus(a_param))


def pairs(block, layer: RGLRU):
    """(official parameter, ssmkit parameter, sign/transposition) for the gradient comparison."""
    return [
        ("linear_x.weight", block.linear_x.weight, layer.in_x.weight, lambda g: g),
        ("linear_y.weight", block.linear_y.weight, layer.in_gate.weight, lambda g: g),
        ("linear_out.weight", block.linear_out.weight, layer.out.weight, lambda g: g),
        ("conv_1d.w", block.conv_1d.w, layer.conv.weight, lambda g: g.T),
        ("input_gate.w", block.rg_lru.input_gate.w, layer.gate_x.weight, lambda g: g),
        ("a_gate.w", block.rg_lru.a_gate.w, layer.gate_a.weight, lambda g: g),
        ("a_param", block.rg_lru.a_param, layer.Lambda, lambda g: -g),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="directory holding recurrentgemma/ (see the docstring)")
    parser.add_argument("--official-acc", choices=("float32", "float64"), default="float64",
                        help="accumulation dtype of the official rnn_scan (its default float32 even for float64 "
                             "parameters; float64 makes the comparison exact to rounding)")
    args = parser.parse_args(argv)
    modules = load_official(args.official)
    modules.layers.rnn_scan.__defaults__ = (getattr(torch, args.official_acc),)
    print(f"official rnn_scan accumulates in {args.official_acc}")
    torch.manual_seed(0)
    B, L, H, D, heads = 2, 64, 16, 24, 4
    block = modules.RecurrentBlock(width=H, num_heads=heads, lru_width=D, dtype=torch.float64)
    with torch.no_grad():  # nonzero biases, so that every term is compared
        for name, p in block.named_parameters():
            if name.endswith("b") or name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
    layer = RGLRU(H, lru_width=D, n_heads=heads, dtype=torch.float64)
    copy_into_ours(block, layer)

    x = torch.randn(B, L, H, dtype=torch.float64)
    starts = [[0, 20, 41, 62], [0, 7, 8, 50]]  # documents packed in each row; two end within 3 steps of L
    segment_pos = torch.zeros(B, L, dtype=torch.int64)
    for b, row in enumerate(starts):
        for s, e in zip(row, row[1:] + [L]):
            segment_pos[b, s:e] = torch.arange(e - s)
    resets = segment_pos == 0
    with torch.no_grad():
        y_off, cache = block(x, segment_pos, None, True)
        y, state = layer(x, resets=resets)
    print(f"packed training pass (B={B}, L={L}, H={H}, D={D}, {heads} heads): y {err(y, y_off):.1e}, "
          f"RG-LRU state {err(state.h, cache.rg_lru_state):.1e}")
    # The official cache keeps the raw last inputs; ssmkit zeroes those before the latest segment start. They agree
    # where no segment started within the last 3 steps (row 0 starts at 62: its first entry differs by design).
    conv_official = cache.conv1d_state.transpose(1, 2)  # (B, D, W-1)
    print(f"conv window, row 1 (no start in the last 3 steps): {err(state.conv[1], conv_official[1]):.1e}; "
          f"row 0 (start at L-2): entries before it zeroed by ssmkit: "
          f"{bool((state.conv[0, :, 0] == 0).all())}, rest {err(state.conv[0, :, 1:], conv_official[0, :, 1:]):.1e}")

    # Decoding from a cache with no segment start near the end (the official cache mode does not mask).
    x_prompt = x[:, :40]
    pos_prompt = torch.arange(40).expand(B, 40)
    with torch.no_grad():
        _, cache = block(x_prompt, pos_prompt, None, True)
        _, state = layer(x_prompt, resets=pos_prompt == 0)
        ys_off, ys = [], []
        for t in range(16):
            x_t = torch.randn(B, 1, H, dtype=torch.float64)
            y_t, cache = block(x_t, torch.full((B, 1), 40 + t), cache, True)
            ys_off.append(y_t[:, 0])
            y_s, state = layer.step(x_t[:, 0], state)
            ys.append(y_s)
    print(f"16 decoding steps from a 40-token prompt: y {err(torch.stack(ys), torch.stack(ys_off)):.1e}, "
          f"state {err(state.h, cache.rg_lru_state):.1e}")

    for regime, a_param in (("ordinary init", None), ("a -> 1 (a_param = -30: clipped sqrt gradient)", -30.0)):
        if a_param is not None:
            with torch.no_grad():
                block.rg_lru.a_param.fill_(a_param)
                layer.Lambda.fill_(-a_param)
        g = torch.randn(B, L, H, dtype=torch.float64)
        y_off, _ = block(x, segment_pos, None, False)
        y, _ = layer(x, resets=resets)
        items = pairs(block, layer)
        grads_off = torch.autograd.grad((y_off * g).sum(), [p for _, p, _, _ in items])
        grads = torch.autograd.grad((y * g).sum(), [q for _, _, q, _ in items])
        worst = max((err(fix(gq), gp), name) for (name, _, _, fix), gp, gq in zip(items, grads_off, grads))
        a_grad = err(-grads[-1], grads_off[-1])
        print(f"gradients, {regime}: worst {worst[0]:.1e} ({worst[1]}); a_param {a_grad:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
