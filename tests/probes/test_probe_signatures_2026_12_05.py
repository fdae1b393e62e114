"""Signatures probe of 2026-12-05: every ``Args:`` section of the public API against the signature it documents, and
every registered layer's and model's ``repr`` against the options it was built with.

The walk: every module under src/ssmkit (but private ones, ``ops/_checks.py``, and ``__main__``), every public name
defined there (``obj.__module__``): functions (``lru_cache`` wrappers too), classes (the constructor's signature,
``inspect.signature(cls)``, documented by the class docstring's ``Args:`` or else by ``__init__``'s) and their public
methods, static and class methods (``self``/``cls``/``ctx`` left out). The ``Args:`` parser reads Google style: an
entry is ``name: text`` or ``name (type): text`` at the section's first indent, ``a, b, c: ...`` names several
parameters at once (``batch, length, d_model: B, L, H.``), deeper lines continue the entry, and any other line at the
entry indent fails ``test_every_args_line_is_an_entry`` (text the parser would misread). Asserted:

1. every documented name is a parameter (a stale name is a bug);
2. every parameter but ``*args``/``**kwargs`` is an entry of its own (not just mentioned in the prose), wherever the
   docstring has an ``Args:`` section; a docstring without one is allowed for small helpers, but not on the exported
   surface: a function of a package's ``__all__``, or a method of an exported class, with two or more parameters has
   an ``Args:`` section;
3. the entries follow the signature's order (one violation when this probe was written: asserted);
4. dataclasses and named tuples whose docstring has ``Attributes:``/``Fields:`` name exactly their fields, in order.

Reported, not asserted (``-s`` prints the lists): public functions and methods with two or more parameters and no
``Args:`` section (127 when written: command ``main(argv, prog)``s, C-kernel wrappers, Lightning hooks, the bench's
measuring functions), and functions annotated to return something other than None without a ``Returns:``/``Yields:``
section (370, of which 80 have an ``Args:`` section; the rest are one-line docstrings that say what they return).

Numbers when written: 1 004 public callables walked (585 functions, 292 methods, 127 classes; 7 exception or dict
classes have no signature), 579 ``Args:`` sections checked, 17 dataclasses / named tuples with a fields section.

Findings (fixed, docstring text only):

1. *Parameters left out of an ``Args:`` section*: ``ops.woodbury.woodbury_reference`` (``n_out`` sat after a semicolon
   on ``S``'s line, "S: ...; n_out: ...", which a Google-style reader takes as part of ``S``'s text),
   ``ops.fftblocks.conv_grads_blocked`` (``need_u``, ``need_k``) and ``ops.philox.keep_mask`` (``device``); the last
   two gained the ``Returns:`` they lacked. (tests/probes/test_probe_docs_2026_12_05.py accepted a parameter named
   anywhere in the docstring; this probe wants an entry.)
2. *``sysid.recipes.Recipe`` documented its fields out of order*: ``combine`` … ``censor`` before
   ``first_layer_init`` … ``first_activation``, while the dataclass (whose positional order is its constructor's)
   declares them after. The entries now follow the fields. No other Args section is out of order.
3. *The model API's step and forward had no ``Args:``*: ``models.Block.forward`` (its ``mask`` described in prose),
   ``Block.step``, ``models.SequenceModel.step`` and ``analysis.NonlinearSystem.update``/``output``/
   ``operating_point`` ("Arguments ... as :meth:`equilibrium`") now have ``Args:`` and ``Returns:`` sections.
4. *A printed model hid its options.* ``Block`` and ``DeepWiener`` had no ``extra_repr``: a post-norm stack
   (``prenorm=False``) printed as a pre-norm one, and DeepWiener's ``dt``, ``timescale``, ``output_range`` showed
   nowhere; ``SequenceModel`` printed ``layer`` and the parameter count only, so ``layer_options`` such as ``dt_min``
   were invisible. Now Block prints ``d_model``, ``norm`` and ``prenorm``, and the two models their sizes, layer and
   ``dt`` always and every other constructor option that differs from its default (``layer_options`` included).

Found and fixed by the lead (``KNOWN_HIDDEN`` below, a ratchet, now empty): each layer's own line printed its main
options but not the other options it was built with, 1-6 a layer: initial Δ ranges and ``lr`` marks, and some that
change the math (Attention's ``rotary_base``, RG-LRU's ``c``, S5's ``clip_eigs``/``step_rescale``) or the parameters'
shapes (DSS's ``separate_dt``, Hyena's ``emb_dim``/``n_inner``/``short_width``, Liquid-S4's ``n_ssm``, Mamba's and
Mamba-2's ``conv_bias``, Mega's ``max_positions``). Every layer's line now appends the options that differ from their
defaults (``SequenceLayer._with_changed_options``).

Allow-listed: ``ssmkit.layers.cache.ValueCache``'s ``compute`` and ``fake`` have no entry in its Args section
(owned by another change: src/ssmkit/layers/cache.py).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pathlib
import re

import pytest
import torch

import ssmkit
import ssmkit.layers as layers
from ssmkit.layers.registry import layer_class
from tests.conftest import build_default

SRC = pathlib.Path(ssmkit.__file__).resolve().parent
EXPORTING = ("ops", "layers", "models", "analysis", "train", "data", "sysid", "bench")

# ------------------------------------------------------------------------------------------------------------------
# The walk


def public_modules():
    """Every public module of ssmkit: no path component starting with '_' but ``__init__``, no ``__main__``."""
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        yield importlib.import_module(".".join(parts))


@dataclasses.dataclass
class Documented:
    qualname: str
    kind: str  # "function", "method" or "class" (its constructor)
    target: object  # what inspect.signature reads
    doc: str  # the docstring that documents the parameters ("" if none)


def _methods(cls):
    for attr, member in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member):
            yield attr, member


def documented():
    """Every public function, class (constructor) and public method defined in ssmkit."""
    for module in public_modules():
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            qualname = f"{module.__name__}.{name}"
            if inspect.isclass(obj):
                init = obj.__dict__.get("__init__")
                init_doc = init.__doc__ if inspect.isfunction(init) else None
                doc = obj.__doc__ if args_section(obj.__doc__) is not None or not init_doc else init_doc
                yield Documented(qualname, "class", obj, inspect.cleandoc(doc or ""))
                for attr, member in _methods(obj):
                    yield Documented(f"{qualname}.{attr}", "method", member, inspect.cleandoc(member.__doc__ or ""))
            elif callable(obj) and inspect.isfunction(inspect.unwrap(obj)):  # lru_cache wrappers too
                yield Documented(qualname, "function", obj, inspect.cleandoc(obj.__doc__ or ""))


def parameters(item: Documented) -> list[inspect.Parameter] | None:
    """The parameters a caller passes (no self/cls/ctx); None for a class whose constructor has no signature
    (an exception class, a dict subclass)."""
    try:
        params = list(inspect.signature(item.target).parameters.values())
    except (TypeError, ValueError):
        return None
    if item.kind == "method" and params and params[0].name in ("self", "cls", "ctx"):
        params = params[1:]
    return params


def plain(params: list[inspect.Parameter]) -> list[str]:
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


# ------------------------------------------------------------------------------------------------------------------
# The Args parser

_ENTRY = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?:\([^)]*\))?\s*:(?:\s|$)")


def section(doc: str | None, headers: str = "Args|Arguments") -> tuple[list[str], list[str]] | None:
    """The names of a Google-style section's entries, in order, and the lines at the entry indent that are no entry;
    None when ``doc`` has no such section. An entry "a, b: text" gives a and b; "*args"/"**kwargs" give args/kwargs;
    the section ends at a line indented no deeper than its header (the next section, or the prose after it)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    header = re.compile(rf"^(\s*)({headers})\s*:\s*$")
    starts = [i for i, line in enumerate(lines) if header.match(line)]
    if not starts:
        return None
    names, odd = [], []
    for start in starts:
        outer, indent = len(header.match(lines[start]).group(1)), None
        for line in lines[start + 1:]:
            if not line.strip():
                continue
            depth = len(line) - len(line.lstrip())
            if depth <= outer:
                break
            indent = depth if indent is None else indent
            if depth < indent:
                odd.append(line.strip())
                break
            if depth == indent:
                entry = _ENTRY.match(line.strip())
                if entry:
                    names += [n.strip().lstrip("*") for n in entry.group(1).split(",")]
                else:
                    odd.append(line.strip())
    return names, odd


def args_section(doc: str | None) -> list[str] | None:
    found = section(doc)
    return None if found is None else found[0]


def test_the_parser_reads_the_forms():
    doc = '''Summary.

    Args:
        x: (B, L, H) input
            continued on a deeper line: not_a_name: ignored.
        batch, length, d_model: B, L, H.
        y (int): typed.
        *args: the rest.
        **kwargs: options.

    Returns:
        out: not an argument.
    '''
    assert section(doc) == (["x", "batch", "length", "d_model", "y", "args", "kwargs"], [])
    assert section("No section here.\n\n    a: b") is None
    assert section("S.\n\n    Args:\n        a: text.\n        prose at the entry indent\n")[1] == [
        "prose at the entry indent"]
    assert section("S.\n\n    Attributes:\n        f: a field.\n", "Attributes|Fields") == (["f"], [])


ITEMS = list(documented())
CHECKED = [(item, parameters(item), args_section(item.doc)) for item in ITEMS]
WITH_ARGS = [(item, params, names) for item, params, names in CHECKED if params is not None and names is not None]


def test_the_walk_covers_the_api():
    kinds = {k: sum(1 for i in ITEMS if i.kind == k) for k in ("function", "method", "class")}
    assert kinds["function"] >= 550 and kinds["method"] >= 250 and kinds["class"] >= 100, kinds
    assert len(WITH_ARGS) >= 550, len(WITH_ARGS)
    walked = {i.qualname for i in ITEMS}
    assert {"ssmkit.models.sequence.SequenceModel", "ssmkit.models.block.Block.forward", "ssmkit.sysid.wiener.DeepWiener",
            "ssmkit.data.store.code_stamp", "ssmkit.ops.woodbury.woodbury_reference"} <= walked
    assert not any("._checks." in q for q in walked)


# ------------------------------------------------------------------------------------------------------------------
# Allow-lists: deliberate or someone else's. Each entry: (qualname, parameter).

# documented names that are no parameter
STALE_ALLOWED: dict[tuple[str, str], str] = {}

# parameters without an entry of their own in an Args section that exists
MISSING_ALLOWED: dict[tuple[str, str], str] = {
    ("ssmkit.layers.cache.ValueCache", "compute"): "owned by another change: src/ssmkit/layers/cache.py",
    ("ssmkit.layers.cache.ValueCache", "fake"): "owned by another change: src/ssmkit/layers/cache.py",
}

# entries out of the signature's order
ORDER_ALLOWED: dict[str, str] = {}


def stale_names():
    for item, params, names in WITH_ARGS:
        known = {p.name for p in params}
        for name in names:
            if name not in known and (item.qualname, name) not in STALE_ALLOWED:
                yield f"{item.qualname}: {name}"


def missing_names():
    for item, params, names in WITH_ARGS:
        for name in plain(params):
            if name not in names and (item.qualname, name) not in MISSING_ALLOWED:
                yield f"{item.qualname}: {name}"


def out_of_order():
    for item, params, names in WITH_ARGS:
        signature = plain(params)
        written = [n for n in dict.fromkeys(names) if n in signature]
        if written != [n for n in signature if n in written] and item.qualname not in ORDER_ALLOWED:
            yield f"{item.qualname}: documented {written}"


def test_every_args_line_is_an_entry():
    odd = [f"{item.qualname}: {line!r}" for item in ITEMS for line in (section(item.doc) or ([], []))[1]]
    assert not odd, f"lines at an Args entry's indent that are no 'name: text' entry: {odd}"


def test_documented_names_are_parameters():
    stale = list(stale_names())
    assert not stale, f"Args entries that name no parameter of the signature: {stale}"


def test_every_parameter_has_an_entry():
    missing = list(missing_names())
    assert not missing, f"parameters without an entry in their Args section: {missing}"


def test_entries_follow_the_signature_order():
    wrong = list(out_of_order())
    assert not wrong, f"Args entries out of the signature's order: {wrong}"


def test_allow_lists_are_current():
    """An allow-listed mismatch that is gone (fixed, renamed) leaves the list; it must not excuse a later one."""
    walked = {item.qualname: (params, names) for item, params, names in WITH_ARGS}
    for (qualname, name), why in MISSING_ALLOWED.items():
        params, names = walked[qualname]
        assert name in plain(params) and name not in names, (qualname, name, why)
    for (qualname, name), why in STALE_ALLOWED.items():
        params, names = walked[qualname]
        assert name in names and name not in {p.name for p in params}, (qualname, name, why)


def exported_owners() -> set[str]:
    """Qualnames (module.name) of what the packages export in ``__all__``."""
    out = set()
    for package in EXPORTING:
        module = importlib.import_module(f"ssmkit.{package}")
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                out.add(f"{obj.__module__}.{obj.__qualname__}")
    return out


def without_args(min_params: int = 2):
    """Functions and methods with ``min_params`` or more parameters and no Args section."""
    for item, params, names in CHECKED:
        if item.kind != "class" and params is not None and names is None and len(plain(params)) >= min_params:
            yield item


def test_the_exported_api_documents_its_arguments():
    owners = exported_owners()
    bare = [i.qualname for i in without_args()
            if (i.qualname if i.kind == "function" else i.qualname.rsplit(".", 1)[0]) in owners]
    assert not bare, f"exported functions / methods of exported classes with 2+ parameters and no Args section: {bare}"


def returns_undocumented():
    """(qualname -> annotation, whether the docstring has an Args section) of every function or method annotated to
    return something other than None whose docstring has no Returns/Yields section."""
    for item, params, names in CHECKED:
        if item.kind == "class" or params is None:
            continue
        annotation = inspect.signature(item.target).return_annotation
        if annotation is inspect.Signature.empty or str(annotation) in ("None", "NoReturn"):
            continue
        if not re.search(r"^\s*(Returns|Yields)\s*:", item.doc, flags=re.M):
            yield f"{item.qualname} -> {annotation}", names is not None


def test_report():
    """The counts, and the lists the probe reports without asserting (``-s`` prints them)."""
    bare = [i.qualname for i in without_args()]
    no_returns = list(returns_undocumented())
    sectioned = [q for q, has_args in no_returns if has_args]
    no_signature = [i.qualname for i, p, _ in CHECKED if p is None]
    counts = {k: sum(i.kind == k for i in ITEMS) for k in ("function", "method", "class")}
    print(f"\nsignatures probe: {len(ITEMS)} public callables walked {counts}; {len(WITH_ARGS)} Args sections "
          f"checked; {len(no_signature)} classes without a signature: {no_signature}")
    print(f"allow-listed: {sorted(MISSING_ALLOWED)} {sorted(STALE_ALLOWED)} {sorted(ORDER_ALLOWED)}")
    print(f"{len(bare)} functions/methods with 2+ parameters and no Args section:")
    print("".join(f"    {q}\n" for q in bare), end="")
    print(f"{len(no_returns)} functions/methods annotated to return a value with no Returns/Yields section, "
          f"{len(sectioned)} of them with an Args section:")
    print("".join(f"    {q}\n" for q in sectioned), end="")
    # loose bounds: a jump means a new habit, not one more helper
    assert len(bare) < 200 and len(sectioned) < 120, (len(bare), len(sectioned))


# dataclasses and named tuples: an Attributes / Fields section names the fields, in order


def field_records():
    for item in ITEMS:
        cls = item.target
        if item.kind != "class":
            continue
        if dataclasses.is_dataclass(cls):
            fields = [f.name for f in dataclasses.fields(cls)]
        elif issubclass(cls, tuple) and hasattr(cls, "_fields"):
            fields = list(cls._fields)
        else:
            continue
        found = section(cls.__doc__, "Attributes|Fields")
        if found is not None:
            yield item.qualname, fields, found


FIELD_RECORDS = list(field_records())


def test_field_sections_name_the_fields_in_order():
    assert len(FIELD_RECORDS) >= 15, len(FIELD_RECORDS)
    wrong = [f"{q}: documented {names}, fields {fields}" for q, fields, (names, odd) in FIELD_RECORDS
             if names != fields or odd]
    assert not wrong, wrong


# ------------------------------------------------------------------------------------------------------------------
# repr: a printed layer or model shows d_model, d_state and every option that differs from its default

H = 8
SKIP = ("device", "dtype", "d_model")
# Options a layer's line does not print when they differ from the default (built with another value, the layer's repr,
# children included, does not show "option=value"). A ratchet: an option shown later leaves its set, and a new hidden
# option fails. Empty since every layer's extra_repr appends its changed options (SequenceLayer._with_changed_options).
KNOWN_HIDDEN: dict[str, tuple[set[str], str]] = {}


def candidates(default):
    """Values other than ``default`` to try, valid or not (the constructor decides)."""
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, int):
        return [default * 2, default + 1, default - 1, default + 2, max(1, default // 16)]
    if isinstance(default, float):
        return [default * 0.5, default * 2, default + 0.5, (default + 1) / 2] if default else [0.5, 0.1]
    if default is None:
        return [1e-3, 2, 0.5]
    if isinstance(default, tuple):
        return [tuple(v * 0.5 if isinstance(v, float) else v for v in default)]
    return []


def choices(cls, name: str) -> list:
    """The valid values of a string option, read from the error that names them."""
    try:
        build_default(cls.name, d_model=H, **{name: "?"})
    except (ValueError, TypeError) as error:
        found = re.search(r"one of (\(.*?\)|\[.*?\]|\{.*?\})", str(error))
        if found:
            try:
                return list(ast.literal_eval(found.group(1)))  # a tuple, list or set of the valid values
            except (ValueError, SyntaxError):
                return []
    return []


def changed_layers(name: str):
    """(option, value, the layer built with it) for each option of layer ``name`` that some other value builds."""
    cls = layer_class(name)
    for p in inspect.signature(cls).parameters.values():
        if p.name in SKIP or p.default is p.empty:
            continue
        values = candidates(p.default)
        if p.default is None or isinstance(p.default, str):  # a choice, or "auto" for a number
            values = choices(cls, p.name) + values + [2]
        for value in values:
            if value == p.default and type(value) is type(p.default):
                continue
            try:
                torch.manual_seed(0)
                yield p.name, value, build_default(name, d_model=H, **{p.name: value})
                break
            except (ValueError, TypeError, NotImplementedError):
                continue
        else:
            yield p.name, None, None


@pytest.mark.parametrize("name", layers.available())
def test_layer_repr_shows_d_model_and_d_state(name):
    text = build_default(name, d_model=H).extra_repr()
    assert f"d_model={H}" in text, text
    if "d_state" in inspect.signature(layer_class(name)).parameters:
        assert re.search(r"\bd_state=\d+", text), text


@pytest.mark.parametrize("name", layers.available())
def test_layer_repr_hides_no_more_changed_options_than_known(name):
    hidden, unbuilt = set(), []
    for option, value, layer in changed_layers(name):
        if layer is None:
            unbuilt.append(option)
        elif shown_as(name, option, value) not in repr(layer):
            hidden.add(option)
    known, why = KNOWN_HIDDEN.get(name, (set(), ""))
    assert hidden <= known, f"{name}: built with {sorted(hidden - known)} changed, its repr does not show them"
    assert known <= hidden, f"{name}: {sorted(known - hidden)} show now ({why}): take them out of KNOWN_HIDDEN"
    assert len(unbuilt) <= 1, f"{name}: no other value built for {unbuilt}: extend candidates()"


def shown_as(name: str, option: str, value) -> str:
    """The text a layer built with ``option=value`` prints for it."""
    if name == "sgconv" and option in ("decay_min", "decay_max"):  # one pair, decay=(decay_min, decay_max)
        return f"{value!r})" if option == "decay_max" else f"decay=({value!r},"
    return f"{option}={value!r}"


def test_model_reprs_show_their_options():
    from ssmkit.models import Block, SequenceModel
    from ssmkit.sysid import DeepWiener

    model = SequenceModel(d_input=2, d_model=H, n_layers=2, layer="s4d", layer_options={"d_state": 4, "dt_min": 0.01},
                          d_output=3, norm="batch", prenorm=False, dropout=0.1)
    line = model.extra_repr()
    for shown in ("d_input=2", f"d_model={H}", "n_layers=2", "layer='s4d'", "d_output=3", "'d_state': 4",
                  "'dt_min': 0.01", "norm='batch'", "prenorm=False", "dropout=0.1", "parameters="):
        assert shown in line, (shown, line)
    assert "pool=" not in line and "head=" not in line  # defaults stay out
    assert "d_state=4" in repr(model)  # the layer's own line, too
    assert "d_input" not in SequenceModel(d_input=1, d_model=H, n_layers=1, layer="s4d", d_output=3,
                                          vocab_size=5).extra_repr()

    block = Block(layers.build("s4d", d_model=H, d_state=4), norm=None, prenorm=False)
    assert block.extra_repr() == f"d_model={H}, norm=None, prenorm=False"
    assert "d_state=4" in repr(block)

    wiener = DeepWiener(1, 2, d_model=4, n_layers=1, layer_options={"d_state": 4}, dt=0.1, timescale=(0.5, 5.0),
                        output_range=(None, 10.0))
    line = wiener.extra_repr()
    for shown in ("n_inputs=1", "n_outputs=2", "d_model=4", "n_layers=1", "layer='s4d'", "dt=0.1",
                  "layer_options={'d_state': 4}", "timescale=(0.5, 5.0)", "output_range="):
        assert shown in line, (shown, line)
    assert "encoder_window" not in line and "activation" not in line  # defaults stay out
    assert "d_state=4" in repr(wiener)
