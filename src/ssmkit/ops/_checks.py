"""Input checks of the diagonal SSM ops (scan, chunked scan, final state): ``ValueError`` naming what was expected."""

from __future__ import annotations

import torch

from ssmkit.utils import check_floating

REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}
COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def check_params(u: torch.Tensor, state: torch.Tensor | None, **params: torch.Tensor) -> None:
    """Validate u (B, L, H), the (H, N) parameters and the optional (B, H, N) state."""
    check_floating(u, "u")
    if u.dim() != 3:
        raise ValueError(f"u must be (B, L, H) (3 dimensions); got shape {tuple(u.shape)}")
    Bsz, L, H = u.shape
    if L == 0:
        raise ValueError(f"u must have length L >= 1; got shape {tuple(u.shape)}")
    names = list(params)
    first = params[names[0]]
    for name, p in params.items():
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(p).__name__}")
        if not (p.is_complex() or p.is_floating_point()):
            raise ValueError(f"{name} must be complex64/complex128 or float32/float64; got {p.dtype}")
        if p.dim() != 2 or p.shape[0] != H:
            raise ValueError(f"{name} must be (H, N) with H={H} (from u); got shape {tuple(p.shape)}")
        if p.shape != first.shape:
            raise ValueError(
                f"{name} must have the shape of {names[0]} (H, N) = {tuple(first.shape)}; got {tuple(p.shape)}"
            )
        if p.dtype != first.dtype:
            raise ValueError(
                f"{', '.join(names)} must share one dtype (all complex or all real); "
                f"{names[0]} is {first.dtype} but {name} is {p.dtype}"
            )
        if p.device != u.device:
            raise ValueError(f"{name} must be on u's device {u.device}; got {p.device}")
    real_dtype = REAL_OF.get(first.dtype, first.dtype)
    if real_dtype != u.dtype:
        raise ValueError(
            f"mixed precisions: u is {u.dtype} but {names[0]} is {first.dtype} "
            f"(float32 goes with complex64/float32, float64 with complex128/float64)"
        )
    if state is not None:
        N = first.shape[1]
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != (Bsz, H, N):
            found = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"state must be (B, H, N) = ({Bsz}, {H}, {N}); got {found}")
        if state.dtype != first.dtype:
            raise ValueError(f"state must have the dtype of {names[0]} ({first.dtype}); got {state.dtype}")
        if state.device != u.device:
            raise ValueError(f"state must be on u's device {u.device}; got {state.device}")


def check_skip(D: torch.Tensor | None, u: torch.Tensor) -> None:
    """Validate the optional skip D: (H,) real, u's dtype and device."""
    if D is None:
        return
    H = u.shape[2]
    if not isinstance(D, torch.Tensor) or tuple(D.shape) != (H,):
        found = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
        raise ValueError(f"D must be (H,) = ({H},) (from u); got {found}")
    if D.dtype != u.dtype:
        raise ValueError(f"D must be real with u's dtype {u.dtype}; got {D.dtype}")
    if D.device != u.device:
        raise ValueError(f"D must be on u's device {u.device}; got {D.device}")


def check_chunk_size(chunk_size: int) -> None:
    """Validate a chunk length T: a positive int."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
