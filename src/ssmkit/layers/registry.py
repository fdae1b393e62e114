"""The layer registry: every layer class registers itself by name, and ``build(name, ...)`` constructs it.

    ssmkit.layers.available()                                      # ["attention", "dlr", ..., "sgconv"]
    layer = ssmkit.layers.build("s4d", d_model=64, d_state=64, init="inv")
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:
    from ssmkit.layers.protocol import SequenceLayer

_REGISTRY: dict[str, type["SequenceLayer"]] = {}

T = TypeVar("T", bound=type)

NAME = re.compile(r"[A-Za-z0-9_.\-]+")
"""A legal layer name: letters, digits, ``_``, ``.`` and ``-`` (typed on the command line, where ``--models`` splits
at commas and the shell at spaces)."""


CONSTRUCTOR = ("d_model", "device", "dtype")
"""The constructor options every registered layer takes: :class:`ssmkit.models.SequenceModel` builds each block's
layer with ``d_model``, ``device`` and ``dtype`` (so its other options are the model's ``layer_options``)."""


def _same_definition(a: type, b: type) -> bool:
    """Whether two classes come from the same class statement run twice (a notebook cell run again,
    ``importlib.reload`` of the user's module): the same module and qualified name."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a layer class to the registry under ``name`` (also stored as ``cls.name``).

    The same class statement run again (a notebook cell, ``importlib.reload``) replaces its earlier class; another
    class under a taken name, a second name for one class, a class that is not a ``SequenceLayer`` or whose
    constructor lacks ``d_model``, ``device`` or ``dtype`` (:data:`CONSTRUCTOR`) raise ``ValueError``.

    Args:
        name: the registry name, letters, digits, ``_``, ``.`` and ``-`` (:data:`NAME`): ``@register("my_ema")``.

    Returns:
        the decorator, which returns the class unchanged but for its ``name``.
    """
    if isinstance(name, type):
        raise ValueError(f"register takes the layer's name, not the class: write @register(\"my_name\") above class "
                         f"{name.__name__} (with the parentheses)")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"a layer name must be a non-empty str of letters, digits, '_', '.' and '-' (it is typed on "
                         f"the command line); got {name!r}")

    def add(cls: T) -> T:
        from ssmkit.layers.protocol import SequenceLayer

        if not (isinstance(cls, type) and issubclass(cls, SequenceLayer)):
            what = cls.__name__ if isinstance(cls, type) else type(cls).__name__
            raise ValueError(f"register({name!r}) takes a subclass of ssmkit.layers.SequenceLayer; got {what}")
        taken = _REGISTRY.get(name)
        if taken is not None and taken is not cls and not _same_definition(taken, cls):
            raise ValueError(f"layer name {name!r} is already registered by {taken.__module__}.{taken.__qualname__}; "
                             f"pick another name for {cls.__module__}.{cls.__qualname__} (or unregister({name!r}) "
                             "first)")
        parameters = inspect.signature(cls.__init__).parameters
        lacking = [k for k in CONSTRUCTOR if k not in parameters]
        if lacking and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            raise ValueError(f"register({name!r}): {cls.__qualname__}'s constructor must take {', '.join(CONSTRUCTOR)} "
                             f"(ssmkit.models.SequenceModel builds every layer with them); it lacks {lacking}")
        own = cls.__dict__.get("name")  # the name this class was registered under, not one it inherits
        if own and own != name and _REGISTRY.get(own) is cls:
            raise ValueError(f"{cls.__qualname__} is already registered as {own!r}: a class has one name (its "
                             f"layer.name); register a subclass as {name!r} instead")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return add


def unregister(name: str) -> type["SequenceLayer"]:
    """Take the class registered under ``name`` out of the registry (a test's or notebook's clean-up).

    Args:
        name: a registered name (``available()``).

    Returns:
        the class that was registered (``ValueError`` naming the valid set if ``name`` is unknown); its ``name``
        attribute is cleared, so that it may be registered again under any name.
    """
    cls = layer_class(name)
    del _REGISTRY[name]
    if cls.__dict__.get("name") == name:
        cls.name = ""
    return cls


def available() -> list[str]:
    """Sorted names of every registered layer."""
    return sorted(_REGISTRY)


def layer_class(name: str) -> type["SequenceLayer"]:
    """The class registered under ``name`` (``ValueError`` naming the valid set if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown layer {name!r}; available layers: {available()} (a layer of your own is "
                         "registered when the module defining it is imported: import it first; on the command line, "
                         "ssmkit --import MODULE ...)")
    return _REGISTRY[name]


def build(name: str, **options: object) -> "SequenceLayer":
    """Construct the layer registered under ``name`` with ``options`` passed to its constructor.

    The options go in one hop to the class's explicit signature, so a misspelt option fails at once with
    Python's own ``TypeError`` naming it.
    """
    return layer_class(name)(**options)
