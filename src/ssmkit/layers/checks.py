"""Validators shared by every layer constructor: each raises ``ValueError`` naming the argument, what was
expected and what was found (so every layer rejects bad options with the same words)."""

from __future__ import annotations

import math
from typing import Callable

import torch

PARAMETER_DTYPES = (torch.float32, torch.float64)


def check_positive_int(value: object, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1 (bool rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def check_flag(value: object, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is True or False: a truthy stand-in ("no" from a config file, 2, None)
    would otherwise switch the option silently."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


def check_length(L: object, name: str = "L") -> None:
    """Raise ``ValueError`` unless L is a positive int (a sequence or kernel length), or a ``torch.SymInt`` >= 1 (the
    length of a sequence axis that ``torch.export`` keeps dynamic: ``L >= 1`` is a guard every such length meets)."""
    if isinstance(L, torch.SymInt):
        if L < 1:
            raise ValueError(f"{name} must be a positive int; got {L!r}")
        return
    check_positive_int(L, name)


def check_even_state(d_state: object, meaning: str) -> None:
    """Raise ``ValueError`` unless ``d_state`` is an even int >= 2; ``meaning`` says what it holds."""
    if isinstance(d_state, bool) or not isinstance(d_state, int) or d_state < 2 or d_state % 2:
        raise ValueError(f"d_state must be an even int >= 2 ({meaning}); got {d_state!r}")


def check_dt_range(dt_min: object, dt_max: object) -> None:
    """Raise ``ValueError`` unless dt_min and dt_max are finite floats with 0 < dt_min <= dt_max."""
    for name, value in (("dt_min", dt_min), ("dt_max", dt_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite float > 0; got {value!r}")
    if not 0 < dt_min <= dt_max:  # type: ignore[operator]
        raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")


def check_lr(lr: object, name: str = "lr") -> None:
    """Raise ``ValueError`` unless ``lr`` is None (the global learning rate) or a finite float >= 0 (0 = frozen)."""
    if lr is None:
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{name} must be a finite float >= 0 (0 freezes the parameters) or None; got {lr!r}")


def check_choice(value: object, choices: tuple, name: str) -> None:
    """Raise ``ValueError`` naming the valid set unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def parameter_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of a layer's parameters: ``dtype`` or the default dtype; float32 and float64 only.

    Mixed precision is autocast's job: the layer keeps float32 (or float64) parameters and runs its SSM core in
    them, while autocast runs the surrounding projections in bf16/fp16.
    """
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if dtype not in PARAMETER_DTYPES:
        raise ValueError(
            f"dtype must be torch.float32 or torch.float64 (the layer keeps real float32/float64 parameters; for "
            f"mixed precision use torch.autocast, under which the SSM core stays in float32); got {dtype}"
        )
    return dtype


def checkpoint_dtype(saved: torch.dtype | None) -> torch.dtype | None:
    """The dtype to build a model in for weights saved in ``saved``: that dtype when it is float32 or float64, float32
    for float16/bfloat16 weights (a model saved after ``.half()`` to ship a smaller file: its weights convert to float32
    without rounding, and layers keep float32/float64 parameters), None (the default dtype) when unknown.

    Args:
        saved: the dtype of the checkpoint's floating weights, or None.

    Returns:
        float32, float64 or None.
    """
    if saved in (torch.float16, torch.bfloat16):
        return torch.float32
    return saved


def check_batch_size(batch_size: object) -> None:
    """Raise ``ValueError`` unless ``batch_size`` is an int >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")


class UnknownOptionError(ValueError, TypeError):
    """An option a constructor does not take (a layer's, a task's). A ValueError, as every configuration error (the
    CLI reports it in one line), and a TypeError, as Python's own error for an unexpected keyword argument."""


# What depends on a fixed option, as its error reads it: "d_model is fixed at construction (<SHAPES> d_model=64) ...".
SHAPES = "the parameters and the state are shaped by"
DRAWN = "the parameters were drawn with"
ATTUNED = "the parameters are attuned to"
MARKS = "the optimizer marks were set from"


class _Option:
    """A constructor option kept in the instance's ``__dict__`` under its own name, behind a data descriptor (which
    takes precedence over that entry at an assignment): the common part of :class:`FixedOption` and
    :class:`AssignableOption`.

    It has ``__set__`` and ``__delete__`` but no ``__get__``: Python then reads the option from the instance's
    ``__dict__`` as a plain attribute (the class attribute, this descriptor, only where ``__init__`` has not assigned
    it yet). A ``__get__`` returning ``obj.__dict__[name]`` recursed without end under torch 2.11's dynamo, which
    traces a data descriptor's ``__get__`` and reads ``obj.__dict__[name]`` back as ``obj.name``: every compiled layer
    failed with "maximum recursion depth exceeded" (torch 2.13 reads the entry; GPU versions check of 2026-12-05)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name


class FixedOption(_Option):
    """A constructor option that cannot be assigned after construction (a class attribute: ``l_max =
    FixedOption("C̃ is attuned to")``; ``__init__`` assigns it once as usual, a later assignment raises
    ``AttributeError``). For an option that shapes the parameters or the state, that the parameters were drawn with
    or are attuned to, or that the caches read: assigned later it was ignored, half-applied (``forward`` took it,
    the cached ``step`` did not) or it broke the layer (S4, DSS-softmax's ``l_max``: lengths probe of 2026-12-05;
    every layer's options: options probe of 2026-12-05). A module's meaning never changes after construction
    (STYLE rule 6): build a new layer with the other value and ``load_state_dict`` the weights.

    The value is kept in the instance's ``__dict__`` under the option's own name (the descriptor, a data descriptor,
    takes precedence over it at an assignment; a read finds it there): ``vars(layer)``, ``copy.deepcopy``, pickling
    and ``torch.save`` of a whole module see it as a plain attribute, a layer pickled while its options were plain
    attributes loads, and no ``_<name>`` slot can shadow a ``torch.nn.Module`` attribute (DSS's ``version`` would
    have shadowed ``Module._version``).

    Args:
        attuned: what depends on the value, as it reads before "<name>=<value>" in the error (``SHAPES``, ``DRAWN``,
            ``ATTUNED``, ``MARKS`` or the option's own words).
    """

    def __init__(self, attuned: str) -> None:
        self.attuned = attuned

    def __set__(self, obj: object, value: object) -> None:
        if self.name in obj.__dict__:
            raise AttributeError(
                f"{self.name} is fixed at construction ({self.attuned} {self.name}={obj.__dict__[self.name]!r}); got "
                f"an assignment of {value!r}: build a new layer with that {self.name}"
            )
        obj.__dict__[self.name] = value

    def __delete__(self, obj: object) -> None:
        raise AttributeError(f"{self.name} is fixed at construction: it cannot be deleted")


class AssignableOption(_Option):
    """A constructor option that may be assigned after construction, checked at every assignment as at construction
    (a class attribute: ``chunk_size = AssignableOption(check_positive_int)``). Only for an option that changes speed
    alone and that every call reads afresh (nothing cached depends on it): a new value then takes effect exactly, in
    every view (Mamba-2's ``chunk_size``; options probe of 2026-12-05). Kept in the instance's ``__dict__`` under its
    own name, as :class:`FixedOption`.

    Args:
        check: ``check(value, name)`` raises ``ValueError`` naming the option unless the value is legal.
    """

    def __init__(self, check: Callable[[object, str], None]) -> None:
        self.check = check

    def __set__(self, obj: object, value: object) -> None:
        self.check(value, self.name)
        obj.__dict__[self.name] = value
