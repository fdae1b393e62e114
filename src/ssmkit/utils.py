"""Input checks shared by every public function (docs/design.md: clear ``ValueError``, no silent broadcast)."""

from __future__ import annotations

import math
import numbers

import torch


def check_floating(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating-point (real) tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype (float32 or float64); got {x.dtype}")


def check_sampling_time(dt: object, name: str = "dt") -> float:
    """Return the sampling time ``dt`` as a float, or raise ``ValueError`` unless it is a finite real number > 0.

    Accepts Python and NumPy integers and floats (``numbers.Real``: a Ts read from a float32 array included); refuses
    ``bool``, strings, tensors, complex numbers, 0, negatives, NaN and inf. One rule for every place that takes a Ts
    (``StateSpace``, ``IORecord``, ``DeepWiener``, ``analyze_model``, ``zoo``).
    """
    ok = isinstance(dt, numbers.Real) and not isinstance(dt, bool)
    if not (ok and math.isfinite(float(dt)) and float(dt) > 0.0):
        raise ValueError(f"{name} must be the sampling time in seconds, a finite number > 0; got {dt!r}")
    return float(dt)


def distinct_names(given: object, count: int) -> bool:
    """Whether ``given`` is a list or tuple of ``count`` distinct strings, none empty or whitespace only: the names of a
    system's inputs or outputs. One rule for every place that takes signal names (``SysidBenchmark``'s
    ``input_names`` / ``output_names``, ``DeepWiener.name_signals``, ``to_control``'s ``inputs`` / ``outputs``); each
    raises its own ``ValueError`` naming the argument.
    """
    return (isinstance(given, (list, tuple)) and len(given) == count and len(set(given)) == count
            and all(isinstance(g, str) and g.strip() for g in given))


def percent(fraction: float) -> str:
    """A fraction as a percentage for messages and notes, to four significant digits: 0.2 -> "20%", 0.125 ->
    "12.5%" (the format ``{:.0%}`` wrote "12%")."""
    return f"{100 * fraction:.4g}%"


def check_sequence(x: torch.Tensor, d_model: int, name: str = "x") -> None:
    """Check a (B, L, H) floating sequence with H = ``d_model`` and L >= 1."""
    check_floating(x, name)
    if x.dim() != 3:
        raise ValueError(f"{name} must be (B, L, H) with H={d_model}; got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have length L >= 1; got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must have batch size B >= 1; got shape {tuple(x.shape)}")
    if x.shape[2] != d_model:
        raise ValueError(f"{name} must be (B, L, {d_model}) for d_model={d_model}; got {tuple(x.shape)}")


def check_finite_sequence(x: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` naming the first batch item and time step where the (B, L, H) ``x`` is NaN or inf.

    Works eagerly, under ``torch.func.grad``/``jacrev`` and under ``torch.compile`` (a graph break); under
    ``torch.func.vmap`` and ``torch.export``, which cannot branch on values, it raises a ``ValueError`` saying so.

    Args:
        x: (B, L, H) tensor (any floating dtype).
        what: what ``x`` is, for the message (e.g. "the output of block 2").
    """
    bad = ~torch.isfinite(x)
    try:
        found = bool(bad.any())
    except RuntimeError as err:  # torch.func.vmap (and torch.export) cannot branch on a tensor's values
        if not torch._C._are_functorch_transforms_active() and not torch.compiler.is_compiling():
            raise
        raise ValueError(
            f"cannot check {what} for NaN/inf here: the check branches on the values, which torch.func.vmap (and "
            "torch.export) cannot do; for vmap (per-sample gradients, ensembles) use a model built with "
            "check_finite=False (or set model.check_finite = False)"
        ) from err
    if not found:
        return
    first = bad.any(dim=2).nonzero()  # (K, 2): (b, t) pairs in row-major order
    t = int(first[:, 1].min())  # the earliest time step over the batch
    b = int(first[first[:, 1] == t][0, 0])
    raise ValueError(
        f"{what} is not finite (NaN or inf) from time step {t} on (first at batch item {b}, time step {t}; "
        f"{int(bad.sum())} non-finite values in all)"
    )


def padding_lengths(mask: torch.Tensor) -> tuple[list[int], bool]:
    """Each sequence's length in a (B, L) bool padding mask (True at its positions), and whether the padding trails
    every sequence (right padding: mask[b, t] is True exactly for t < length_b); one synchronisation.

    Args:
        mask: (B, L) bool.

    Returns:
        the B lengths, and whether the batch is right-padded.
    """
    lengths = mask.sum(dim=1)  # (B,)
    trailing = (mask == (torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])).all()
    *lengths_list, right_padded = torch.cat([lengths, trailing[None].to(lengths.dtype)]).tolist()
    return lengths_list, bool(right_padded)


def check_padding_mask(mask: object, x: object) -> None:
    """Raise ``ValueError`` unless ``mask`` is a (B, L) bool tensor of the (B, L, ...) ``x``'s first two sizes.

    Args:
        mask: the padding mask, True at each sequence's positions.
        x: the sequence it masks.
    """
    shape = tuple(getattr(x, "shape", ()))[:2]
    if (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2 or len(shape) != 2
            or tuple(mask.shape) != shape):
        raise ValueError(f"mask must be a (B, L) bool tensor of x's (B, L) = {shape}; got "
                         f"{tuple(getattr(mask, 'shape', ()))} {getattr(mask, 'dtype', type(mask).__name__)}")


def check_lengths(lengths: object, shape: tuple[int, ...], steps: int, device: torch.device, values: bool = True,
                  name: str = "lengths") -> None:
    """Raise ``ValueError`` unless ``lengths`` is an integer tensor of ``shape`` on ``device`` whose entries lie in
    [1, ``steps``]: each right-padded sequence's length (its steps 0, ..., length - 1 are its own, the rest padding).

    Args:
        lengths: the tensor to check.
        shape: the shape it must have ((B,) for a batch of sequences, (B, 2) for a batch of pairs).
        steps: the padded length L.
        device: the device it must be on (the input's).
        values: check the entries too (one synchronisation); False where they cannot be branched on (torch.compile,
            torch.func transforms), as the token ids.
        name: its name in the message.
    """
    want = f"{name} must be an integer tensor {tuple(shape)} of each sequence's length in [1, L = {steps}] (right padding)"
    if (not isinstance(lengths, torch.Tensor) or lengths.is_floating_point() or lengths.is_complex()
            or lengths.dtype == torch.bool):
        got = (f"a tensor of {lengths.dtype}" if isinstance(lengths, torch.Tensor)
               else f"{type(lengths).__module__}.{type(lengths).__name__}".removeprefix("builtins."))
        raise ValueError(f"{want}; got {got}")
    if tuple(lengths.shape) != tuple(shape):
        raise ValueError(f"{want}; got shape {tuple(lengths.shape)}")
    if lengths.device != device:
        raise ValueError(f"{name} must be on {device} like the input; got {lengths.device}")
    if values and lengths.numel():
        low, high = torch.stack([lengths.min(), lengths.max()]).tolist()
        if low < 1 or high > steps:
            raise ValueError(f"{name} must be in [1, L = {steps}] (each sequence keeps at least one step); found "
                             f"{low} to {high}")


def length_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """The (B, L) bool mask t < lengths[b] of right-padded sequences (True at each sequence's own steps), on
    ``lengths``' device; for lengths of any shape (*S) (a pair model's (B, 2)), the (*S, L) mask.

    Args:
        lengths: (B,) integer lengths, or (*S).
        steps: the padded length L.

    Returns:
        (B, L) bool, or (*S, L).
    """
    return torch.arange(steps, device=lengths.device) < lengths[..., None]


def unit_gaps_after(intervals: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``intervals`` (B, L) with 1 at the steps t >= lengths[b]: the gaps of right-padded sequences as
    ``SequenceModel.forward(..., lengths=)`` reads them (the padding's may hold anything, NaN included).

    Args:
        intervals: (B, L) real gaps.
        lengths: (B,) integer lengths (moved to the intervals' device).

    Returns:
        (B, L) in the intervals' dtype and device.
    """
    within = length_mask(lengths.to(intervals.device), intervals.shape[1])  # (B, L)
    return torch.where(within, intervals, torch.ones((), dtype=intervals.dtype, device=intervals.device))
