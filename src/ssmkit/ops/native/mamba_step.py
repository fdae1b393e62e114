"""One recurrent step of the Mamba mixer between its projections by the compiled C kernel (``mamba_step.c``).

The short convolution's step and SiLU, ``x_proj``, ``dt_proj``, Δ's softplus, the selective step, the skip and the gate
in one call per token (arXiv 2312.00752 Algorithm 2), where :class:`ssmkit.layers.mamba.Mamba`'s step in PyTorch ops
dispatches ~25 small operations. No gradients: the layer takes it for a step that records none, with plain (unhooked)
``x_proj``, ``dt_proj`` and conv modules, on the CPU where ``native_status("mamba_step", dtype)`` says it runs; its
smoke call compares it with the layer's PyTorch step over several tokens (:mod:`ssmkit.ops.native.gate`).
"""

from __future__ import annotations

import ctypes

import torch

from ssmkit.ops.native.build import bind
from ssmkit.ops.native.parallel import check_shapes, kernel_inputs, ptr, run_checked

_i64, _p = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {  # the C functions of mamba_step.c: (argument types, result type)
    "ms_items": ([_i64], _i64),
    "ms_step": ([_p, _i64] + [_p] * 12 + [_i64] * 4 + [_i64] * 3, ctypes.c_int),
}


def mamba_step_native(
    xz: torch.Tensor,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor | None,
    ssm_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mixer's step between its projections (``mamba_step.c``'s comment gives the equations); no gradients.

    Args:
        xz: (B, 2H) the in-projection's output [x', z], unit stride along its last dimension.
        conv_state: (B, H, W - 1) the conv's last W - 1 inputs, oldest first.
        conv_weight: (H, W) the conv's taps.
        conv_bias: (H,) or None.
        x_proj_weight: (R + 2N, H) ``x_proj``'s weight (no bias).
        dt_proj_weight: (H, R) ``dt_proj``'s weight (no bias; b_Δ is ``dt_bias``).
        dt_bias: (H,) b_Δ.
        A_log: (H, N) A = -exp(A_log).
        D: (H,) the skip, or None.
        ssm_state: (B, H, N) the state.

    Returns:
        y (B, H) (before the out-projection), the next conv state (B, H, W - 1) and the next state (B, H, N), all new
        contiguous tensors.
    """
    fns = bind("mamba_step.c", xz.dtype, SIGNATURES)
    Bsz, H, N = ssm_state.shape
    R, W = dt_proj_weight.shape[1], conv_weight.shape[1]
    check_shapes("mamba step native", [("xz", xz, (Bsz, 2 * H)), ("conv_state", conv_state, (Bsz, H, W - 1)),
                                       ("conv_weight", conv_weight, (H, W)), ("conv_bias", conv_bias, (H,)),
                                       ("x_proj_weight", x_proj_weight, (R + 2 * N, H)),
                                       ("dt_proj_weight", dt_proj_weight, (H, R)), ("dt_bias", dt_bias, (H,)),
                                       ("A_log", A_log, (H, N)), ("D", D, (H,))])
    if xz.stride(-1) != 1:
        xz = xz.contiguous()
    # kept until the call returns (kernel_inputs: a temporary's address would be freed memory)
    t = kernel_inputs("mamba step native", xz.dtype, conv_state=conv_state, conv_weight=conv_weight,
                      conv_bias=conv_bias, x_proj_weight=x_proj_weight, dt_proj_weight=dt_proj_weight,
                      dt_bias=dt_bias, A_log=A_log, D=D, ssm_state=ssm_state)
    y = xz.new_empty(Bsz, H)
    conv_next, ssm_next = torch.empty_like(t["conv_state"]), torch.empty_like(t["ssm_state"])
    args = [ptr(xz), xz.stride(0), *(ptr(v) for v in t.values()), ptr(y), ptr(conv_next), ptr(ssm_next), H, R, N, W]
    run_checked(fns["ms_step"], fns["ms_items"](Bsz), args, fns["openmp"],
                "mamba step native: could not allocate its row buffer")
    return y, conv_next, ssm_next
