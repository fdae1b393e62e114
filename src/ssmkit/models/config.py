"""The typed configuration of a :class:`ssmkit.models.SequenceModel`, round-tripping through JSON and YAML.

    config = SequenceModelConfig(d_input=2, d_model=64, n_layers=4, layer="s4d", d_output=10)
    model = SequenceModel.from_config(config)
    config.save("runs/x/model.yaml"); SequenceModelConfig.load("runs/x/model.yaml") == config

The trainer and the CLI read and write models through this class (as nanoGPT's ``GPTConfig``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ssmkit.files import write_text


@dataclass
class SequenceModelConfig:
    """Every option of :class:`ssmkit.models.SequenceModel` (see there for their meaning), except device and dtype.

    Args:
        d_input: channels of a real input (ignored when ``vocab_size`` is set).
        d_model: width H of every block.
        n_layers: number of blocks.
        layer: registered layer name (``ssmkit.layers.available()``), or a list of ``n_layers`` names (a hybrid).
        d_output: output size (classes, targets, or vocabulary).
        layer_options: options of the layer's constructor (empty: the layer's own defaults, the paper's); for a
            hybrid, a dict from layer name to that layer's options.
        head: ``"classify"``, ``"regress"`` or ``"lm"``.
        pool: ``"mean"``, ``"last"`` or None.
        vocab_size: token vocabulary (inputs are ids), or None for real inputs.
        norm: ``"layer"``, ``"batch"``, ``"rms"`` or None.
        prenorm: normalise block inputs (True) or residual sums (False).
        activation: ``"auto"`` = the layer's declared default (GELU for LTI layers, none for gated mixers).
        mixer_out: ``"auto"`` = the layer's declared default (GLU for LTI layers, none for gated mixers).
        dropout: dropout probability in every block.
        check_finite: raise on the first non-finite value (see ``SequenceModel``).
        pair: inputs are pairs (B, 2, L) encoded by a dual encoder (LRA retrieval).
        pad_id: the id of right padding, which pooling and bidirectional layers skip (``SequenceModel``), or None.
        tie_embeddings: share the embedding matrix with the LM head (``SequenceModel``; a token LM only).
        final_norm: the norm after the last block: ``"auto"`` (a LayerNorm after a pre-norm stack), ``"layer"``,
            ``"rms"`` or None (``SequenceModel``).
        head_bias: the linear head's bias (``SequenceModel``).
    """

    d_input: int
    d_model: int
    n_layers: int
    layer: str | list[str]
    d_output: int
    layer_options: dict[str, Any] = field(default_factory=dict)
    head: str = "classify"
    pool: str | None = "mean"
    vocab_size: int | None = None
    norm: str | None = "layer"
    prenorm: bool = True
    activation: str | None = "auto"
    mixer_out: str | None = "auto"
    dropout: float = 0.0
    check_finite: bool = False
    pair: bool = False
    pad_id: int | None = None
    tie_embeddings: bool = False
    final_norm: str | None = "auto"
    head_bias: bool = True

    def __post_init__(self) -> None:
        # JSON's containers, as the saved config is read back: a tuple (layer=("s4d", "lru"), an option's range)
        # is a list, so a config equals itself loaded from model.json and a resume's check compares like with like
        for f in dataclasses.fields(self):
            setattr(self, f.name, as_plain(getattr(self, f.name)))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (JSON/YAML-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SequenceModelConfig":
        """Build a configuration from a dict; unknown keys raise ``ValueError`` naming them and the valid keys.

        Args:
            data: a dict with at least the required keys (d_input, d_model, n_layers, layer, d_output).

        Returns:
            the configuration.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a SequenceModelConfig must be read from a dict; got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown SequenceModelConfig keys {unknown}; valid keys: {names}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"SequenceModelConfig needs the keys {missing}")
        values = dict(data)
        values["layer_options"] = dict(values.get("layer_options") or {})
        return cls(**values)

    def to_json(self) -> str:
        """The configuration as JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SequenceModelConfig":
        """Parse JSON text written by :meth:`to_json`.

        Args:
            text: the JSON text.

        Returns:
            the configuration.
        """
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        """The configuration as YAML text (needs PyYAML: ``pip install pyyaml``)."""
        return _yaml().safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "SequenceModelConfig":
        """Parse YAML text written by :meth:`to_yaml` (needs PyYAML).

        Args:
            text: the YAML text.

        Returns:
            the configuration.
        """
        return cls.from_dict(_yaml().safe_load(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration to ``path`` (``.json``, ``.yaml`` or ``.yml``), atomically (temp file + rename).

        Args:
            path: the file to write.
        """
        write_text(path, self.to_yaml() if _is_yaml(path) else self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SequenceModelConfig":
        """Read a configuration written by :meth:`save`.

        Args:
            path: a ``.json``, ``.yaml`` or ``.yml`` file.

        Returns:
            the configuration.
        """
        with open(path) as f:
            text = f.read()
        return cls.from_yaml(text) if _is_yaml(path) else cls.from_json(text)


def as_plain(value: Any) -> Any:
    """``value`` with JSON's containers: tuples and lists as lists, dicts as new dicts, recursively (what a
    configuration saved as JSON or YAML reads back as); anything else as it is.

    Args:
        value: a configuration value.

    Returns:
        the value with every tuple a list.
    """
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value


def _is_yaml(path: str | os.PathLike) -> bool:
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ValueError(f"a configuration file must end in .json, .yaml or .yml; got {os.fspath(path)!r}")
    return suffix != ".json"


def _yaml():
    try:
        import yaml
    except ImportError as err:
        raise ImportError("YAML configurations need PyYAML: pip install pyyaml (JSON needs nothing)") from err
    return yaml
