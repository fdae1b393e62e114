"""One recurrent step of the Mamba-2 mixer between its projections by the compiled C kernel (``mamba2_step.c``).

The short convolution's step and SiLU, Δ's softplus, the SSD step, the skip and the gated RMSNorm in one call per token
(arXiv 2405.21060 §7), where :class:`ssmkit.layers.mamba2.Mamba2`'s step in PyTorch ops dispatches ~25 small
operations. No gradients: the layer takes it for a step that records none (``torch.no_grad``, inference mode, or no
tensor requiring a gradient), on the CPU where ``native_status("mamba2_step", dtype)`` says it runs; its smoke call
compares it with the layer's PyTorch step over several tokens (:mod:`ssmkit.ops.native.gate`).
"""

from __future__ import annotations

import ctypes

import torch

from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import check_shapes, kernel_inputs, ptr, run_checked

_i64, _p = ctypes.c_int64, ctypes.c_void_p


def _signatures(real) -> dict:
    return {  # the C functions of mamba2_step.c: (argument types, result type); eps is a C real
        "m2_items": ([_i64], _i64),
        "m2_step": ([_p, _i64] + [_p] * 6 + [_i64, _p, real, _i64] + [_p] * 4 + [_i64] * 5 + [_i64] * 3, ctypes.c_int),
    }


SIGNATURES = {torch.float32: _signatures(ctypes.c_float), torch.float64: _signatures(ctypes.c_double)}


def mamba2_step_native(
    zxbcdt: torch.Tensor,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    norm_before_gate: bool,
    ssm_state: torch.Tensor,
    ngroups: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mixer's step between its projections (``mamba2_step.c``'s comment gives the equations); no gradients.

    Args:
        zxbcdt: (B, 2E + 2GN + H) the in-projection's output [z, x', B', C', δ], unit stride along its last dimension.
        conv_state: (B, E + 2GN, W - 1) the conv's last W - 1 inputs, oldest first.
        conv_weight: (E + 2GN, W) the conv's taps.
        conv_bias: (E + 2GN,) or None.
        dt_bias: (H,) added to δ before the softplus.
        A_log: (H,) A = -exp(A_log).
        D: (H,) one skip per head, or (E,) one per channel.
        norm_weight: (E,) the gated RMSNorm's weight, or None for the bare gate y ⊙ SiLU(z).
        eps: the norm's eps.
        norm_before_gate: the norm's gate order.
        ssm_state: (B, H, P, N) the SSD state.
        ngroups: G, the groups of B and C (and of the norm).

    Returns:
        out (B, E) (before the out-projection), the next conv state (B, E + 2GN, W - 1) and the next SSD state
        (B, H, P, N), all new contiguous tensors.
    """
    fns = bind("mamba2_step.c", zxbcdt.dtype, SIGNATURES[zxbcdt.dtype])
    Bsz, H, P, N = ssm_state.shape
    E, W = H * P, conv_weight.shape[1]
    C = E + 2 * ngroups * N  # the conv's channels
    check_shapes("mamba2 step native", [("zxbcdt", zxbcdt, (Bsz, E + C + H)),
                                        ("conv_state", conv_state, (Bsz, C, W - 1)),
                                        ("conv_weight", conv_weight, (C, W)), ("conv_bias", conv_bias, (C,)),
                                        ("dt_bias", dt_bias, (H,)), ("A_log", A_log, (H,)),
                                        ("D", D, (E,) if D.shape[0] == E else (H,)),
                                        ("norm_weight", norm_weight, (E,))])
    if zxbcdt.stride(-1) != 1:
        zxbcdt = zxbcdt.contiguous()
    # kept until the call returns (kernel_inputs: a temporary's address would be freed memory)
    t = kernel_inputs("mamba2 step native", zxbcdt.dtype, conv_state=conv_state, conv_weight=conv_weight,
                      conv_bias=conv_bias, dt_bias=dt_bias, A_log=A_log, D=D, norm_weight=norm_weight,
                      ssm_state=ssm_state)
    out = zxbcdt.new_empty(Bsz, E)
    conv_next, ssm_next = torch.empty_like(t["conv_state"]), torch.empty_like(t["ssm_state"])
    args = [ptr(zxbcdt), zxbcdt.stride(0), ptr(t["conv_state"]), ptr(t["conv_weight"]), ptr(t["conv_bias"]),
            ptr(t["dt_bias"]), ptr(t["A_log"]), ptr(t["D"]), int(D.shape[0] == E and E != H), ptr(t["norm_weight"]),
            float(eps), int(norm_before_gate), ptr(t["ssm_state"]), ptr(out), ptr(conv_next), ptr(ssm_next), E,
            ngroups, N, H, W]
    run_checked(fns["m2_step"], fns["m2_items"](Bsz), args, fns["openmp"],
                "mamba2 step native: could not allocate its row buffer")
    return out, conv_next, ssm_next
