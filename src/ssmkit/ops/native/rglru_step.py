"""One recurrent step of the RG-LRU block between its projections by the compiled C kernel (``rglru_step.c``).

The short convolution's step, the block-diagonal gates and their sigmoids, the RG-LRU step and the product with the
GELU branch in one call per token (arXiv 2402.19427 §2.4), where :class:`ssmkit.layers.rglru.RGLRU`'s step in PyTorch ops
dispatches ~25 small operations. No gradients: the layer takes it for a step that records none, with plain (unhooked)
conv and gate modules, on the CPU where ``native_status("rglru_step", dtype)`` says it runs; its smoke call compares it
with the layer's PyTorch step over several tokens, with segment starts (:mod:`ssmkit.ops.native.gate`).
"""

from __future__ import annotations

import ctypes

import torch

from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import check_shapes, kernel_inputs, ptr, run_checked

_i64, _p = ctypes.c_int64, ctypes.c_void_p


def _signatures(real) -> dict:
    return {  # the C functions of rglru_step.c: (argument types, result type); c is a C real
        "rs_items": ([_i64], _i64),
        "rs_step": ([_p, _i64, _p, _i64] + [_p] * 8 + [real] + [_p] * 5 + [_i64] * 3 + [_i64] * 3, ctypes.c_int),
    }


SIGNATURES = {torch.float32: _signatures(ctypes.c_float), torch.float64: _signatures(ctypes.c_double)}


def rglru_step_native(
    g: torch.Tensor,
    z: torch.Tensor,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor,
    gate_a_weight: torch.Tensor,
    gate_a_bias: torch.Tensor,
    gate_x_weight: torch.Tensor,
    gate_x_bias: torch.Tensor,
    Lambda: torch.Tensor,
    c: float,
    h: torch.Tensor,
    reset: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block's step between its projections (``rglru_step.c``'s comment gives the equations); no gradients.

    Args:
        g: (B, D) the GELU branch, GELU(W_y u) (activated by the caller); unit stride along D.
        z: (B, D) the recurrent branch's projection (the conv's input); unit stride along D.
        conv_state: (B, D, W - 1) the conv's last W - 1 inputs, oldest first.
        conv_weight: (D, W) the conv's taps.
        conv_bias: (D,) the conv's bias.
        gate_a_weight: (G, D/G, D/G) the recurrence gate's blocks.
        gate_a_bias: (G, D/G) its bias.
        gate_x_weight: (G, D/G, D/G) the input gate's blocks.
        gate_x_bias: (G, D/G).
        Lambda: (D,) Λ, a = σ(Λ).
        c: the constant c of a^{c r}.
        h: (B, D) the RG-LRU state.
        reset: (B,) bool, True for the rows that start a segment at this step, or None.

    Returns:
        out = h_t ⊙ g (B, D) (before the out-projection), the next conv state (B, D, W - 1) and h_t (B, D), all new
        contiguous tensors.
    """
    fns = bind("rglru_step.c", z.dtype, SIGNATURES[z.dtype])
    Bsz, D = z.shape
    G, W = gate_a_weight.shape[0], conv_weight.shape[1]
    check_shapes("rglru step native", [("g", g, (Bsz, D)), ("conv_state", conv_state, (Bsz, D, W - 1)),
                                       ("conv_weight", conv_weight, (D, W)), ("conv_bias", conv_bias, (D,)),
                                       ("gate_a_weight", gate_a_weight, (G, D // G, D // G)),
                                       ("gate_a_bias", gate_a_bias, (G, D // G)),
                                       ("gate_x_weight", gate_x_weight, (G, D // G, D // G)),
                                       ("gate_x_bias", gate_x_bias, (G, D // G)), ("Lambda", Lambda, (D,)), ("h", h, (Bsz, D)),
                                       ("reset", reset, (Bsz,))])
    if g.dtype != z.dtype:
        raise ValueError(f"rglru step native: g must be {z.dtype}, the kernel's dtype; got {g.dtype}")
    g, z = (t if t.stride(-1) == 1 else t.contiguous() for t in (g, z))
    # kept until the call returns (kernel_inputs: a temporary's address would be freed memory)
    t = kernel_inputs("rglru step native", z.dtype, conv_state=conv_state, conv_weight=conv_weight,
                      conv_bias=conv_bias, gate_a_weight=gate_a_weight, gate_a_bias=gate_a_bias,
                      gate_x_weight=gate_x_weight, gate_x_bias=gate_x_bias, Lambda=Lambda, h=h)
    out = z.new_empty(Bsz, D)
    conv_next, h_next = torch.empty_like(t["conv_state"]), torch.empty_like(t["h"])
    flags = None if reset is None else reset.contiguous().view(torch.uint8)
    args = [ptr(g), g.stride(0), ptr(z), z.stride(0), ptr(t["conv_state"]),
            *(ptr(t[k]) for k in ("conv_weight", "conv_bias", "gate_a_weight", "gate_a_bias", "gate_x_weight",
                                  "gate_x_bias", "Lambda")),
            float(c), ptr(t["h"]), ptr(flags), ptr(out), ptr(conv_next), ptr(h_next), D, G, W]
    run_checked(fns["rs_step"], fns["rs_items"](Bsz), args, fns["openmp"],
                "rglru step native: could not allocate its row buffer")
    return out, conv_next, h_next
