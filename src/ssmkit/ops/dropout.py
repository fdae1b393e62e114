"""Dropout (Srivastava et al., JMLR 2014): y = x ⊙ m / (1 - p), m_i ~ Bernoulli(1 - p) independently; on the CPU by a
counter-based generator in C.

``"auto"`` (the only mode: dropout has no backend choice to make) runs :mod:`ssmkit.ops.native.dropout` where it
runs -- x float32 or float64 on the CPU, the kernel built and checked (``native_status("dropout", dtype)``), neither
torch.func, torch.compile nor torch.export tracing -- with one 63-bit seed drawn from torch's default CPU generator
per call, so ``torch.manual_seed`` makes the masks reproducible, whatever the thread count. Elsewhere it is
``torch.nn.functional.dropout``. The two draw different masks from the same seed (a Philox4x32-10 stream against the
Mersenne twister); both keep each element with probability 1 - p (here to 2^-32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmkit.ops.backend import tracing
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.gate import prefer_native

_REAL = (torch.float32, torch.float64)


def _native(x: Tensor) -> bool:
    """The C path for x: a real dtype it is built for, and ``prefer_native``'s test (the CPU, the kernel checked, no
    torch.func transform or torch.export tracing), and not while torch.compile traces (the kernel call is no custom
    op: it would break the graph)."""
    return x.dtype in _REAL and not tracing() and prefer_native("dropout", x)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Dropout of x: in training, each element zeroed with probability p and the rest scaled by 1/(1 - p); x itself
    otherwise (module docstring).

    Args:
        x: real tensor of any shape.
        p: drop probability in [0, 1].
        training: apply dropout (False, or p = 0: x is returned as is).

    Returns:
        x's shape and dtype (a new tensor in training with p > 0).
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a number in [0, 1]; got {p!r}")
    if not training or p == 0:
        return x
    if _native(x):
        from ssmkit.ops.native.dropout import NativeDropout

        # [0, 2^63) from torch's default CPU generator (named: a `with torch.device(...)` block must not move it)
        seed = int(torch.empty((), dtype=torch.int64, device="cpu").random_().item())
        return apply_function(NativeDropout, x, float(p), seed)
    return F.dropout(x, p, True)
