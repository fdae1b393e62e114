"""The layer registry: every layer class registers itself by name, and ``build(name, ...)`` constructs it.

    ssmkit.layers.available()                                      # ["dss", "s4", "s4d"]
    layer = ssmkit.layers.build("s4d", d_model=64, d_state=64, init="inv")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:
    from ssmkit.layers.protocol import SequenceLayer

_REGISTRY: dict[str, type["SequenceLayer"]] = {}

T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a layer class to the registry under ``name`` (also stored as ``cls.name``)."""

    def add(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"layer name {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return add


def available() -> list[str]:
    """Sorted names of every registered layer."""
    return sorted(_REGISTRY)


def layer_class(name: str) -> type["SequenceLayer"]:
    """The class registered under ``name`` (``ValueError`` naming the valid set if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown layer {name!r}; available layers: {available()}")
    return _REGISTRY[name]


def build(name: str, **options: object) -> "SequenceLayer":
    """Construct the layer registered under ``name`` with ``options`` passed to its constructor.

    The options go in one hop to the class's explicit signature, so a misspelt option fails at once with
    Python's own ``TypeError`` naming it.
    """
    return layer_class(name)(**options)
