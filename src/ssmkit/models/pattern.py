"""Layer patterns: which registered layer each block of a :class:`ssmkit.models.SequenceModel` uses.

A hybrid model is configuration, not code: ``SequenceModel(layer=[...])`` takes one layer name per block, and
:func:`interleave` writes the usual patterns (Griffin, arXiv 2402.19427: two recurrent blocks, then local attention;
Jamba, arXiv 2403.19887: one attention block in eight, at position 4 of each period in Jamba-v0.1's configuration,
attn_layer_period = 8, attn_layer_offset = 4; GSS-Transformer, H3 + attention).

    interleave("rglru", "attention", n_layers=6, every=3)            # ['rglru', 'rglru', 'attention'] * 2
    interleave("mamba", "attention", n_layers=32, every=8, offset=4)  # Jamba-v0.1: attention at blocks 4, 12, 20, 28
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from ssmkit.layers.checks import UnknownOptionError, check_positive_int
from ssmkit.layers.registry import available, layer_class


def interleave(base: str, insert: str, n_layers: int, every: int, offset: int | None = None) -> list[str]:
    """A pattern of ``n_layers`` blocks of ``base`` with ``insert`` at every ``every``-th block.

    Block i (0-based) is ``insert`` when i % every == offset, else ``base``.

    Args:
        base: the layer of most blocks (a registered name).
        insert: the layer put in every ``every``-th block.
        n_layers: the number of blocks.
        every: the period, >= 1 (1: every block is ``insert``).
        offset: the position of ``insert`` within each period, 0 <= offset < every; None = the last position
            (every - 1), so each period ends with ``insert`` as in Griffin (Jamba-v0.1 puts its attention block at
            position 4 of 8: ``offset=4``).

    Returns:
        the list of layer names, one per block.
    """
    check_positive_int(n_layers, "n_layers")
    check_positive_int(every, "every")
    if offset is None:
        offset = every - 1
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < every:
        raise ValueError(f"offset must be an int with 0 <= offset < every = {every}; got {offset!r}")
    pattern = [insert if i % every == offset else base for i in range(n_layers)]
    check_pattern(pattern, n_layers)
    return pattern


def check_pattern(layer: str | Sequence[str], n_layers: int) -> list[str]:
    """The per-block layer names of ``layer``: one name for every block, or a list of exactly ``n_layers`` names.

    Args:
        layer: a registered layer name, or a list of ``n_layers`` of them.
        n_layers: the number of blocks.

    Returns:
        the list of ``n_layers`` layer names.
    """
    names = [layer] * n_layers if isinstance(layer, str) else layer
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"layer must be a layer name or a list of {n_layers} layer names; got {layer!r}")
    if len(names) != n_layers:
        raise ValueError(f"a layer pattern needs one name per block: n_layers={n_layers} names; got {len(names)}: {list(names)}")
    unknown = sorted(set(names) - set(available()))
    if unknown:
        raise ValueError(f"unknown layer names {unknown} in the pattern; registered layers: {available()} (a layer "
                         "of your own is registered when the module defining it is imported: import it first; on "
                         "the command line, ssmkit --import MODULE ...)")
    return list(names)


def options_per_block(layer: str | Sequence[str], names: list[str], layer_options: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The constructor options of each block's layer.

    With one layer name, ``layer_options`` are that layer's options. With a pattern (a list), ``layer_options`` maps
    a layer name to its options ({"attention": {"n_heads": 4}}); a name of the pattern without an entry gets its
    defaults, and an entry for a name not in the pattern raises (a typo would otherwise be ignored).

    Args:
        layer: what the model was given: one name or a list.
        names: the per-block names (:func:`check_pattern`).
        layer_options: as described above, or None.

    Returns:
        one options dict per block (copies).
    """
    if layer_options is not None and not isinstance(layer_options, dict):
        raise ValueError(f"layer_options must be a dict of the layer's options, or None; got {layer_options!r}")
    options = dict(layer_options or {})
    if isinstance(layer, str):
        per_name = {layer: options}
    else:
        stray = sorted(set(options) - set(names))
        if stray:
            raise ValueError(
                f"with a layer pattern, layer_options maps layer names to their options; {stray} are not in the "
                f"pattern {sorted(set(names))}"
            )
        for name, opts in options.items():
            if not isinstance(opts, dict):
                raise ValueError(f"layer_options[{name!r}] must be a dict of {name}'s options; got {type(opts).__name__}")
        per_name = {name: dict(opts) for name, opts in options.items()}
    for name, opts in per_name.items():
        for key in ("d_model", "device", "dtype"):
            if key in opts:
                raise ValueError(f"layer_options must not set {key} (for {name}): the model sets it from its own {key}")
        check_layer_options(name, opts)
    return [dict(per_name.get(name, {})) for name in names]


def check_layer_options(name: str, options: dict[str, Any]) -> None:
    """Raise :class:`UnknownOptionError` naming the options that layer ``name``'s constructor does not take, and the
    ones it does (what a misspelt key of a config file gets, instead of a TypeError from deep in the build).

    Args:
        name: a registered layer name.
        options: the constructor options for it (without ``d_model``, ``device``, ``dtype``).
    """
    parameters = inspect.signature(layer_class(name).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [k for k in parameters if k not in ("self", "d_model", "device", "dtype")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UnknownOptionError(f"layer {name!r} has no option(s) {unknown}; its options are {valid}")
