"""Mamba-2's output path: the skip y + D ⊙ x, the SiLU gate and the grouped RMSNorm with its weight.

Dao & Gu, arXiv 2405.21060 §7 (Figure 6): with v = (y + D ⊙ x) ⊙ SiLU(z) (the official default; ``norm_before_gate``
gates after the norm instead), each group of K = E/G channels is normalised,

    RMSNorm_G(v) = v_g / √(mean(v_g²) + eps) · w,

and ``norm_before_gate`` gives RMSNorm_G(y + D ⊙ x) · w ⊙ SiLU(z). Paths: :func:`gated_rmsnorm_reference` (PyTorch ops,
the reference) and the C kernel (:mod:`ssmkit.ops.native.gated_norm`: one pass over each row, forward and backward,
where the PyTorch path makes ~12 passes over (B, L, E) forward and ~20 backward). :func:`gated_rmsnorm` chooses by backend:
``"auto"`` takes the kernel on the CPU where its smoke call passed, for real tensors of one dtype, when nothing traces.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int, x: torch.Tensor | None,
           D: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless y, z (..., E) match, the weight is (E,), G divides E, and x, D come together with
    x of y's shape and D (E,)."""
    for name, t in (("y", y), ("z", z), ("weight", weight), ("x", x), ("D", D)):
        if t is not None and not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            found = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a real floating-point tensor; got {found}")
    E = y.shape[-1]
    if z.shape != y.shape:
        raise ValueError(f"z must have y's shape {tuple(y.shape)}; got {tuple(z.shape)}")
    if weight.shape != (E,):
        raise ValueError(f"weight must be (E,) = ({E},) (from y); got {tuple(weight.shape)}")
    if not isinstance(groups, int) or groups < 1 or E % groups:
        raise ValueError(f"groups must be a positive int dividing E = {E}; got {groups!r}")
    if (x is None) != (D is None):
        raise ValueError("x and D come together (the skip D ⊙ x): give both or neither")
    if x is not None and (x.shape != y.shape or D.shape != (E,)):
        raise ValueError(f"x must have y's shape {tuple(y.shape)} and D be (E,) = ({E},); got {tuple(x.shape)} and "
                         f"{tuple(D.shape)}")


def gated_rmsnorm_reference(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int, eps: float, norm_before_gate: bool,
    x: torch.Tensor | None = None, D: torch.Tensor | None = None,
) -> torch.Tensor:
    """The gated grouped RMSNorm in PyTorch ops: the reference of :func:`gated_rmsnorm` and its ``"reference"`` and
    ``"chunked"`` paths.

    Args:
        y: (..., E) the scan's output.
        z: (..., E) the gate, before its SiLU.
        weight: (E,) the norm's weight w.
        groups: G, dividing E.
        eps: added to each group's mean square.
        norm_before_gate: normalise first, then gate (False: gate, then normalise).
        x: (..., E) the skip's input, or None (no skip).
        D: (E,) the skip's weights (given with x).

    Returns:
        (..., E).
    """
    if x is not None:
        y = y + D * x
    if not norm_before_gate:
        y = y * F.silu(z)
    grouped = y.unflatten(-1, (groups, y.shape[-1] // groups))  # (..., G, E/G)
    # v / √(mean(v²) + eps) = (v/m) / √(mean((v/m)²) + eps/m²) for any m > 0. m = 2^⌈log₂ max|v|⌉ (>= 1) keeps the
    # squares <= ~4, so a group above ~1.8e19 (float32: v² overflowed to inf and the group came out as zeros) is
    # normalised too; a power of two scales exactly, so the other groups get the same bits as without m. The
    # exponent stops at the largest finite power of two (2^127 in float32): above it 2^128 = inf made the group NaN.
    # m is detached: the value does not depend on it, so the gradient at fixed m is the exact one.
    top = grouped.detach().abs().amax(-1, keepdim=True).clamp_min(1.0)  # (..., G, 1)
    largest = math.frexp(torch.finfo(top.dtype).max)[1] - 1  # 127 (float32), 1023 (float64): 2^largest is finite
    m = torch.exp2(torch.ceil(torch.log2(top)).clamp_max(largest))  # (..., G, 1)
    scaled = grouped / m  # (..., G, E/G)
    grouped = scaled * torch.rsqrt(scaled.square().mean(-1, keepdim=True) + eps / m.square())  # (..., G, E/G)
    out = grouped.flatten(-2) * weight  # (..., E)
    return out * F.silu(z) if norm_before_gate else out


def _native(y, z, weight, groups, eps, norm_before_gate, x=None, D=None):
    """The C kernel, forced (``"native"``): raises where it cannot run."""
    from ssmkit.ops.native.gate import require_native
    from ssmkit.ops.native.gated_norm import gated_rmsnorm_unchecked

    require_native("gated_rmsnorm", "gated_norm", y.dtype, y.device, "y is")
    mixed = [t.dtype for t in (z, weight, x, D) if t is not None and t.dtype != y.dtype]
    if mixed:
        raise RuntimeError(f"gated_rmsnorm: backend 'native' takes one dtype; y is {y.dtype}, others {mixed}")
    return gated_rmsnorm_unchecked(y, z, weight, groups, eps, norm_before_gate, x, D)


_GATED = {"reference": gated_rmsnorm_reference, "chunked": gated_rmsnorm_reference, "native": _native}


def _auto(tensors: list[torch.Tensor]) -> str:
    """``"auto"``'s path: the C kernel on the CPU where it runs for one real dtype, else the PyTorch ops."""
    from ssmkit.ops.native.gate import prefer_native

    y = tensors[0]
    same = all(t.dtype == y.dtype and t.device == y.device for t in tensors)
    return "native" if same and prefer_native("gated_norm", y) else "chunked"


def gated_rmsnorm(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int, eps: float, norm_before_gate: bool,
    x: torch.Tensor | None = None, D: torch.Tensor | None = None, *, backend: str | None = None,
) -> torch.Tensor:
    """RMSNorm_G((y + D ⊙ x) ⊙ SiLU(z)) · w, or RMSNorm_G(y + D ⊙ x) · w ⊙ SiLU(z) before the gate (arXiv 2405.21060
    §7).

    Backends: ``"reference"`` and ``"chunked"`` -> :func:`gated_rmsnorm_reference` (PyTorch ops); ``"native"`` -> the C
    kernel (:mod:`ssmkit.ops.native.gated_norm`; tensors of one dtype on the CPU); ``"auto"`` -> the C kernel where its
    smoke call passed, the tensors share a real dtype and nothing traces, else the PyTorch ops.

    Args:
        y: (..., E) the scan's output.
        z: (..., E) the gate, before its SiLU.
        weight: (E,) the norm's weight w.
        groups: G, dividing E: each group of E/G channels is normalised on its own.
        eps: added to each group's mean square.
        norm_before_gate: normalise first, then gate (False: gate, then normalise -- Mamba-2's default).
        x: (..., E) the skip's input, or None (no skip).
        D: (E,) the skip's weights (given with x).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        (..., E).
    """
    from ssmkit.ops.backend import dispatch

    _check(y, z, weight, groups, x, D)
    impl = dispatch("gated_rmsnorm", _GATED, backend, auto=lambda: _auto([t for t in (y, z, weight, x, D) if t is not None]))
    return impl(y, z, weight, groups, eps, norm_before_gate, x, D)
