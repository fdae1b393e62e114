"""SequenceModel: encoder -> residual blocks -> pooling -> head, with the same three views as a layer.

``forward(x, state)`` runs whole sequences, ``step(x_t, state)`` one time step, and ``initial_state(batch_size)``
gives the zero state of every block (a list, one entry per block). ``SequenceModel.from_config`` builds a model from
a :class:`SequenceModelConfig`, and ``model.config`` gives it back.

Hybrids are configuration: ``layer`` may be a list with one layer name per block (see
:mod:`ssmkit.models.pattern`), e.g. ``["mamba", "mamba", "attention"]``, with ``layer_options`` keyed by name.

Pairs are configuration too: ``pair=True`` makes a dual encoder (LRA retrieval, arXiv 2011.04006): inputs (B, 2, L),
each sequence encoded by the same blocks and pooled, and a :class:`ssmkit.models.dual.DualEncoderHead` on
[a, b, a ⊙ b, a − b]. ``pad_id`` keeps padding tokens out of the pooling and out of the bidirectional layers: each
item of a right-padded batch gets the answer of its unpadded sequence alone. ``forward(x, lengths=...)`` marks the
padding by each sequence's length instead, for real inputs too (padded recordings), and takes the same path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ssmkit.layers.checks import check_choice, check_positive_int
from ssmkit.layers.registry import build
from ssmkit.models.block import Block, make_norm
from ssmkit.models.config import SequenceModelConfig
from ssmkit.models.dual import DualEncoderHead, masked_last, masked_mean
from ssmkit.models.recompute import checkpointed_block
from ssmkit.models.pattern import check_pattern, options_per_block
from ssmkit.models.tied import TiedEmbedding, TiedHead, check_tied_load, retie_after_load
from ssmkit.ops.backend import autocast_enabled, tracing
from ssmkit.ops.rows import weight_dtype_device
from ssmkit.utils import check_floating, check_finite_sequence, check_lengths, length_mask, unit_gaps_after

HEADS = ("classify", "regress", "lm")
POOLS = ("mean", "last", None)
FINAL_NORMS = ("auto", "layer", "rms", None)
TOKEN_DTYPES = (torch.int64, torch.int32)  # the ids nn.Embedding reads


class SequenceModel(nn.Module):
    """A deep SSM: encoder, ``n_layers`` residual :class:`Block` s, optional pooling, linear head.

    Args:
        d_input: channels of a real input (B, L, d_input); unused when ``vocab_size`` is given (still an int >= 1).
        d_model: width H of every block.
        n_layers: number of blocks.
        layer: registered layer name (see ``ssmkit.layers.available()``), or a pattern: a list of ``n_layers``
            names, one per block (a hybrid; :func:`ssmkit.models.interleave` writes the common ones).
        layer_options: keyword arguments of the layer's constructor, passed in one hop (``d_model``, ``device`` and
            ``dtype`` are set by the model); None or {} = the layer's defaults. With a pattern: a dict from layer
            name to that layer's options (names without an entry get their defaults).
        d_output: output size (classes, regression targets, or vocabulary for ``"lm"``); required.
        head: ``"classify"`` (logits), ``"regress"`` (values) or ``"lm"`` (per-step logits over the vocabulary;
            needs ``pool=None``).
        pool: ``"mean"`` over time, ``"last"`` time step, or None (per-step outputs).
        vocab_size: if given, inputs are token ids (B, L) embedded by ``nn.Embedding``.
        norm, prenorm, activation, mixer_out, dropout: block options (see :class:`Block`; ``"auto"`` activation and
            output projection are the layer's declared defaults).
        check_finite: check the input and every block's output for NaN/inf and raise ``ValueError`` naming the
            first bad batch item and time step (off by default: it costs a pass over every activation).
        pair: inputs are pairs (B, 2, L) of sequences (or (B, 2, L, d_input)), each encoded separately by the same
            encoder and blocks and pooled; the head is a :class:`~ssmkit.models.dual.DualEncoderHead` on
            [a, b, a ⊙ b, a − b] (a dual encoder; needs ``head="classify"`` and a pool).
        pad_id: token id of padding (needs ``vocab_size``), which trails each sequence (right padding, as the task
            loaders write it); None reads and pools every position. Pooling ignores the positions holding it ("mean"
            averages the others, "last" takes the last other one), as S4's ``use_lengths``, and the bidirectional layers
            read none of it: a convolution (a layer with a ``kernel``: S4, S4D, DSS, DLR, S5, LRU, EMA, SGConv built
            with ``bidirectional=True``) reads zeros there, and Mega takes the mask itself (its EMA reads zeros there,
            its attention skips the padded keys; one call; ValueError for padding that does not trail). A causal
            layer's outputs at the tokens never read the padding after them. So each item's pooled output and logits,
            and with ``pool=None`` its per-step outputs at its tokens, equal the unpadded sequence's run alone (to
            round-off), for every layer, pattern, norm and pool; in training mode, batch norm takes its statistics
            over the tokens only (a ``SyncBatchNorm`` over every process's tokens), and dropout
            draws its own mask. A causal layer reads leading padding: it changes the features at the tokens. The states ``forward``
            returns are those after the padding (causal layers read it; continue a batch of prompts of different lengths
            item by item). The outputs at the padding positions are unspecified. ``forward``'s ``lengths`` (B,)
            marks right padding by length instead (or as well), for real inputs too, and takes this same path.
        tie_embeddings: share the embedding matrix with the LM head (its weight is ``encoder.weight``, no bias), as
            the official Mamba LM and GPT-2 tie them (Press & Wolf, arXiv 1608.05859); needs ``vocab_size``,
            ``head="lm"`` and ``d_output == vocab_size``. The shared matrix is drawn N(0, 0.02²), the official Mamba
            LM's embedding init (an untied embedding keeps ``nn.Embedding``'s N(0, 1)): logits h·Eᵀ of a normalised
            h of width H then start with a standard deviation 0.02·√H rather than √H. Part of the config, so
            ``from_config`` and a training resume rebuild the tie (a tie made by hand, ``m.head.weight =
            m.encoder.weight``, is not). The tie survives ``to_empty`` and ``load_state_dict(assign=True)``, a
            reset of every module draws the matrix once, and a state dict whose two matrices differ is refused
            (``ssmkit.models.tied``).
        final_norm: the normalisation after the last block, before the pooling and head: ``"auto"`` (the default)
            = a LayerNorm after a pre-norm stack (``prenorm`` and a ``norm``), whichever ``norm`` the blocks use, and
            none otherwise; ``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm, as the official Mamba LMs' ``norm_f``),
            each with ε = 1e-5; or None (none).
        head_bias: the linear head's bias (True, the default); False: outputs h Wᵀ, as the official Mamba LM's
            untied ``lm_head``. A tied head never has one; a dual encoder's head keeps its own (``pair`` needs True).
        device, dtype: of all parameters.

    ``model.activation_checkpointing = True`` (an attribute, False at construction; ``TrainConfig`` sets it for
    training) keeps only each block's input in a forward that records gradients and recomputes the block in the
    backward (:func:`ssmkit.models.recompute.checkpointed_block`): the activation memory of one block instead of all,
    for one more forward pass; the gradients, dropout masks and batch-norm statistics are those without it.

    ``step`` returns the head applied to the current time step (what ``pool="last"`` or ``pool=None`` gives at that
    step); a ``pool="mean"`` model's running mean is not formed. ``num_parameters()`` counts the parameters.
    """

    def __init__(
        self,
        d_input: int,
        d_model: int,
        n_layers: int,
        layer: str,
        layer_options: dict[str, Any] | None = None,
        d_output: int | None = None,
        head: str = "classify",
        pool: str | None = "mean",
        vocab_size: int | None = None,
        norm: str | None = "layer",
        prenorm: bool = True,
        activation: str | None = "auto",
        mixer_out: str | None = "auto",
        dropout: float = 0.0,
        check_finite: bool = False,
        pair: bool = False,
        pad_id: int | None = None,
        tie_embeddings: bool = False,
        final_norm: str | None = "auto",
        head_bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if d_output is None:
            raise ValueError("d_output is required: the number of classes, regression targets or vocabulary entries")
        for name, value in (("d_input", d_input), ("d_model", d_model), ("n_layers", n_layers), ("d_output", d_output)):
            check_positive_int(value, name)
        check_choice(head, HEADS, "head")
        check_choice(pool, POOLS, "pool")
        check_choice(final_norm, FINAL_NORMS, "final_norm")
        if head == "lm" and pool is not None:
            raise ValueError(f"head='lm' predicts every step: pool must be None; got {pool!r}")
        for name, value in (("pair", pair), ("check_finite", check_finite), ("tie_embeddings", tie_embeddings),
                            ("head_bias", head_bias)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False; got {value!r}")
        if vocab_size is not None:
            check_positive_int(vocab_size, "vocab_size")
        if pair and not head_bias:
            raise ValueError("head_bias=False is for the linear head: a dual encoder (pair=True) has its own head")
        if pair and (head != "classify" or pool is None):
            raise ValueError(f"pair=True (a dual encoder) needs head='classify' and a pool; got head={head!r}, pool={pool!r}")
        if pad_id is not None and (vocab_size is None or isinstance(pad_id, bool) or not isinstance(pad_id, int)
                                   or not 0 <= pad_id < vocab_size):
            raise ValueError(f"pad_id must be None or a token id in [0, vocab_size) of a token model; got {pad_id!r} "
                             f"with vocab_size={vocab_size!r}")
        if tie_embeddings and (vocab_size is None or head != "lm" or d_output != vocab_size):
            raise ValueError("tie_embeddings=True shares the embedding matrix with the LM head: it needs vocab_size, "
                             f"head='lm' and d_output == vocab_size; got vocab_size={vocab_size!r}, head={head!r}, "
                             f"d_output={d_output!r}")
        names = check_pattern(layer, n_layers)
        block_options = options_per_block(layer, names, layer_options)
        options = dict(layer_options or {})
        if not isinstance(layer, str):
            layer = list(names)
            options = {name: dict(opts) for name, opts in options.items()}
        self._config = SequenceModelConfig(
            d_input=d_input, d_model=d_model, n_layers=n_layers, layer=layer, d_output=d_output,
            layer_options=options, head=head, pool=pool, vocab_size=vocab_size, pair=pair, pad_id=pad_id, norm=norm,
            prenorm=prenorm, activation=activation, mixer_out=mixer_out, dropout=dropout, check_finite=check_finite,
            tie_embeddings=tie_embeddings, final_norm=final_norm, head_bias=head_bias,
        )
        self.d_input = d_input
        self.d_model = d_model
        self.vocab_size = vocab_size
        self.head_name = head
        self.pool = pool
        self.pair = pair
        self.pad_id = pad_id
        self.check_finite = check_finite
        self.activation_checkpointing = False  # a training choice (TrainConfig), not part of the model's config
        factory = {"device": device, "dtype": dtype}
        if vocab_size is not None:
            embedding = TiedEmbedding if tie_embeddings else nn.Embedding  # tied: N(0, 0.02²), as the official LM
            self.encoder: nn.Module = embedding(vocab_size, d_model, **factory)
        else:
            self.encoder = nn.Linear(d_input, d_model, **factory)
        self.blocks = nn.ModuleList(
            Block(
                build(name, d_model=d_model, device=device, dtype=dtype, **opts),
                norm=norm,
                prenorm=prenorm,
                activation=activation,
                mixer_out=mixer_out,
                dropout=dropout,
                **factory,
            )
            for name, opts in zip(names, block_options)
        )
        if final_norm == "auto":
            final_norm = "layer" if (prenorm and norm is not None) else None
        self.final_norm = make_norm(final_norm, d_model, **factory)
        if tie_embeddings:  # one matrix: logits = h Eᵀ (no bias), drawn by the embedding alone (models/tied.py)
            self.head: nn.Module = TiedHead(self.encoder)
            self.register_load_state_dict_pre_hook(check_tied_load)
            self.register_load_state_dict_post_hook(retie_after_load)
        else:
            self.head = (DualEncoderHead(d_model, d_output, **factory) if pair
                         else nn.Linear(d_model, d_output, bias=head_bias, **factory))

    @classmethod
    def from_config(
        cls, config: SequenceModelConfig | dict[str, Any], device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> "SequenceModel":
        """Build the model a :class:`SequenceModelConfig` describes.

        Args:
            config: the configuration (a :class:`SequenceModelConfig`, or its dict, as ``to_dict`` gives it).
            device, dtype: of all parameters.

        Returns:
            the model.
        """
        if isinstance(config, dict):
            config = SequenceModelConfig.from_dict(config)
        if not isinstance(config, SequenceModelConfig):
            raise ValueError(f"config must be a SequenceModelConfig or its dict; got {type(config).__name__}")
        return cls(**config.to_dict(), device=device, dtype=dtype)

    @property
    def config(self) -> SequenceModelConfig:
        """The configuration this model was built from (a copy)."""
        return SequenceModelConfig.from_dict(self._config.to_dict())

    def num_parameters(self, trainable_only: bool = False) -> int:
        """The number of parameters (each shared tensor once); only those with ``requires_grad`` if asked."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _apply(self, fn, recurse: bool = True) -> "SequenceModel":
        # a conversion that replaces Parameter objects (to_empty from the meta device) gave the tied head and the
        # embedding a matrix each: tie them again (models/tied.py)
        super()._apply(fn, recurse)
        if isinstance(self.head, TiedHead):
            self.head.weight = self.encoder.weight
        return self

    def extra_repr(self) -> str:
        # the sizes and the layer always (d_input only for a real input); every other option where it differs from
        # the default, so that the layer_options the layers' own lines may not show are printed here too
        config = self._config
        always = ("d_model", "n_layers", "layer", "d_output") if self.vocab_size is not None else (
            "d_input", "d_model", "n_layers", "layer", "d_output")
        shown = [f"{name}={getattr(config, name)!r}" for name in always]
        for f in dataclasses.fields(config):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                continue  # required: d_input, d_model, n_layers, layer, d_output
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if getattr(config, f.name) != default:
                shown.append(f"{f.name}={getattr(config, f.name)!r}")
        return ", ".join([*shown, f"parameters={self.num_parameters():,}"])

    def _encode(self, x: torch.Tensor, per_step: bool, pairs: bool = False,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's (B, L, H) (or (B, H) per step) of a checked x; ``lengths`` (B,) are checked against x, and a
        real x is read as 0 after each length (its padding may hold anything, NaN included)."""
        rank = 1 if per_step else 2
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a tensor; got {type(x).__name__}")
        if self.vocab_size is not None:
            if x.dtype not in TOKEN_DTYPES or x.dim() != rank:
                want = "(B,)" if per_step else "(B, L)"
                raise ValueError(f"x must be integer token ids {want}; got {tuple(x.shape)} {x.dtype} (ids are "
                                 "int64 or int32, as nn.Embedding reads them)")
            if not per_step and x.shape[1] == 0:  # the layers named the embedding's (B, 0, H) instead
                raise ValueError(f"x must be token ids (B, L) of length L >= 1; got {tuple(x.shape)}")
            self._check_device(x)  # first: a tensor on another device (or on meta) has no values to check here
            if (x.numel() and not tracing() and x.device.type != "meta"  # eager only, and meta tensors hold no values:
                    and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size)):
                # the values are data, which torch.compile, torch.export (ONNX) and torch.func cannot branch on
                raise ValueError(f"x must hold token ids in [0, vocab_size) = [0, {self.vocab_size}); got ids from "
                                 f"{int(x.min())} to {int(x.max())}")
            if lengths is not None:
                check_lengths(lengths, (x.shape[0],), x.shape[1], x.device, values=not tracing())
            return self.encoder(x)
        check_floating(x, "x")
        want = f"(B, {self.d_input})" if per_step else f"(B, L, {self.d_input})"
        if x.dim() != rank + 1 or x.shape[-1] != self.d_input or (not per_step and x.shape[1] == 0):
            raise ValueError(f"x must be {want} for d_input={self.d_input}; got {tuple(x.shape)}")
        if lengths is not None:
            check_lengths(lengths, (x.shape[0],), x.shape[1], x.device, values=not tracing())
            x = torch.where(self._keep(x, lengths)[..., None], x, 0.0)  # (B, L, d_input): padding read as 0
        if self.check_finite:
            self._check_finite(x if not per_step else x[:, None], "the input x", pairs)
        self._check_device(x)
        # any real input is computed in the parameters' dtype (as the layers), under autocast too: autocast then lowers
        # a float32 encoder's matmul (a bf16/fp16 x goes through float32 exactly) and leaves a float64 one alone; a
        # float32 x kept as it was into a float64 model raised "mat1 and mat2 must have the same dtype" under autocast
        return self.encoder(x.to(weight_dtype_device(self.encoder)[0]))

    @staticmethod
    def _check_finite(h: torch.Tensor, what: str, pairs: bool) -> None:
        """``check_finite_sequence`` of h (B, L, H), or of the 2B sequences of B pairs (item i's at 2i and 2i + 1),
        named by their pair's batch item (the flat row 2i + 1 named an item i of the input that may not exist)."""
        if pairs:
            h = h.unflatten(0, (-1, 2)).transpose(1, 2).flatten(2)  # (B, L, 2H): each item's two sequences side by side
        check_finite_sequence(h, what)

    def _check_device(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless x is on the model's device (as the layers do; the encoder raised a RuntimeError
        from inside F.linear)."""
        device = weight_dtype_device(self.encoder)[1]
        if x.device != device:
            raise ValueError(f"x must be on the model's device {device}; got {x.device}")

    def _as_input_dtype(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out`` in x's dtype for a real input outside autocast (as the layers answer), else as the head gave it."""
        if self.vocab_size is not None or not x.is_floating_point() or autocast_enabled(x.device.type):
            return out
        return out.to(x.dtype)

    def forward(
        self, x: torch.Tensor, state: list | None = None, return_state: bool = True,
        intervals: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list | None]:
        """Run whole sequences.

        Args:
            x: (B, L, d_input) real (any floating dtype: computed in the parameters' dtype), or (B, L) token ids in
                [0, vocab_size) when ``vocab_size`` is set; with ``pair``, (B, 2, L, d_input) or (B, 2, L): two
                sequences per item.
            state: list of per-block states (from ``initial_state``, ``step`` or ``forward``), or None. The blocks
                continue from it exactly, but a pool reads this call's steps only: a sequence fed in chunks to a
                ``pool="mean"`` model gets the last chunk's mean (a streaming classifier builds with ``pool=None``
                and averages the per-step outputs itself); ``pool="last"`` is the one-pass result unless ``pad_id``
                fills the whole last chunk.
            return_state: compute and return the final block states (False skips that work; training needs none).
            intervals: (B, L) real > 0, or None (regular sampling): for an irregularly sampled sequence, the time from
                the previous sample to each sample in nominal sampling periods, handed to every block's layer (each
                must declare ``takes_intervals``: S5, S4D, DSS, S4, LRU, EMA, DLR, Mamba, Mamba-2, RG-LRU; a
                ``ValueError`` otherwise). The first is the time since the state's instant: from rest, how long the
                first input is held before it is sampled (1 gives the regular layer's first step; a small one leaves
                the first sample almost out of the state). With ``pad_id``, give the padding any positive gap (0 is
                refused): the causal layers never read it into the tokens' outputs, but the returned states are those
                after it. Not for pair models. With ``lengths``, the gaps after each length are read as 1 (they may
                hold anything, NaN included, as the padding's inputs).
            lengths: (B,) integer tensor on x's device, or None: each sequence's length n_b in [1, L] for a batch of
                right-padded sequences, real or token ids (with ``pair``, (B, 2): each document's). Steps t >= n_b
                are padding and take the ``pad_id`` path: pooling, the bidirectional layers, Mega and batch-norm
                statistics skip them (see ``pad_id`` in the class docstring), so each item's pooled output, and with
                ``pool=None`` its outputs at t < n_b, equal its unpadded sequence's run alone. Real padding may hold
                anything (NaN and inf included): it is read as 0 (its input gradient is 0); token padding holds ids
                in [0, vocab_size) as any x. With ``pad_id`` too, a step is kept where it is within its length and
                does not hold the pad id. The returned states are those after all L steps (the causal layers read
                the padding, real padding as zeros), as with ``pad_id``; to continue each sequence from its own end,
                run its prefix alone or ``step`` it. The values are checked eagerly (a ``ValueError`` outside [1, L]),
                not under torch.compile or torch.func transforms (as token ids), where a length > L reads every step.

        Returns:
            out: (B, d_output) when pooled, else (B, L, d_output), in x's dtype for a real x outside autocast (as the
            layers), unspecified at the padding steps; and the list of final block states (None when
            ``return_state`` is False; with ``pair``, the states of the 2B sequences, item i's at 2i and 2i + 1).
        """
        if self.pair:
            if intervals is not None:
                raise ValueError("a pair model (pair=True) takes no intervals: build the towers with pair=False")
            # the rank, trailing size and token dtype are checked here: after the flattening, the checks of one
            # sequence named the (2B, ...) shape and asked for (B, L) token ids
            tokens = self.vocab_size is not None
            if (x.dim() != (3 if tokens else 4) or x.shape[1] != 2 or (not tokens and x.shape[-1] != self.d_input)
                    or (tokens and x.dtype not in TOKEN_DTYPES)):
                want = ("integer token ids (B, 2, L)" if tokens
                        else f"(B, 2, L, {self.d_input}) for d_input={self.d_input}")
                raise ValueError(f"a pair model (pair=True) reads pairs {want}; got {tuple(x.shape)} {x.dtype}")
            if lengths is not None:  # (B, 2) -> (2B,): item i's documents at 2i and 2i + 1, as x's
                check_lengths(lengths, (x.shape[0], 2), x.shape[2], x.device, values=False)
                lengths = lengths.flatten()
            features, states = self._features(x.flatten(0, 1), state, return_state, pairs=True,
                                              lengths=lengths)  # (2B, H)
            a, b = features.unflatten(0, (-1, 2)).unbind(1)  # (B, H) each
            return self._as_input_dtype(self.head(a, b), x), states
        features, states = self.features(x, state, return_state, intervals, lengths)
        return self._as_input_dtype(self.head(features), x), states

    def features(
        self, x: torch.Tensor, state: list | None = None, return_state: bool = True,
        intervals: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list | None]:
        """The normalised, pooled output of the last block: what the head reads (one sequence per item).

        Args:
            x: (B, L, d_input) real, or (B, L) token ids when ``vocab_size`` is set.
            state: list of per-block states, or None.
            return_state: compute and return the final block states.
            intervals: (B, L) sampling intervals, or None (as ``forward``).
            lengths: (B,) each right-padded sequence's length in [1, L], or None (as ``forward``).

        Returns:
            (B, H) when pooled, else (B, L, H); and the list of final block states (or None).
        """
        return self._features(x, state, return_state, intervals=intervals, lengths=lengths)

    def _features(
        self, x: torch.Tensor, state: list | None, return_state: bool, pairs: bool = False,
        intervals: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list | None]:
        """``features``; ``pairs``: x holds the 2B sequences of B pairs (for the finite check's names)."""
        h = self._encode(x, per_step=False, pairs=pairs, lengths=lengths)  # (B, L, H); lengths checked
        states = self._check_states(state)
        keep = self._keep(x, lengths)  # (B, L) or None: the bidirectional layers, batch norm and pool skip the rest
        if (lengths is not None and isinstance(intervals, torch.Tensor) and intervals.is_floating_point()
                and intervals.shape == x.shape[:2] and intervals.device == x.device):  # else the layers refuse it
            intervals = unit_gaps_after(intervals, lengths)  # the padding's gaps are 1
        new_states = []
        for i, (block, s) in enumerate(zip(self.blocks, states)):
            if self.activation_checkpointing and torch.is_grad_enabled():
                h, s = checkpointed_block(block, h, s, return_state, keep, intervals)  # recomputed in the backward
            else:
                h, s = block(h, s, return_state=return_state, mask=keep, intervals=intervals)
            if self.check_finite:
                self._check_finite(h, f"the output of block {i}", pairs)
            new_states.append(s)
        h = self.final_norm(h)
        if self.pool == "mean":
            h = masked_mean(h, keep)  # (B, H)
        elif self.pool == "last":
            h = masked_last(h, keep)  # (B, H)
        return h, (new_states if return_state else None)

    def _keep(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
        """The (B, L) bool mask of the steps each sequence of x (B, L, ...) keeps: t < lengths[b] (right padding by
        length; lengths checked by ``_encode``), and x[b, t] != pad_id for a model with ``pad_id``; None when neither
        is given (every step)."""
        keep = None if self.pad_id is None else x != self.pad_id  # (B, L)
        if lengths is None:
            return keep
        within = length_mask(lengths, x.shape[1])  # (B, L)
        return within if keep is None else keep & within

    def step(
        self, x_t: torch.Tensor, state: list, interval: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list]:
        """One time step: x_t (B, d_input) or token ids (B,) -> (out_t (B, d_output), next states).

        Args:
            x_t: (B, d_input) real, or (B,) token ids in [0, vocab_size) when ``vocab_size`` is set.
            state: list of per-block states (from ``initial_state``, ``step`` or ``forward``); required.
            interval: (B,) real > 0, or None: the time since the previous sample in nominal sampling periods (as
                ``forward``'s ``intervals``), for blocks whose layers take intervals.

        Returns:
            out_t: (B, d_output), the head at this step (in x_t's dtype for a real x_t outside autocast); and the list
            of next block states.
        """
        if self.pair:
            raise NotImplementedError("a pair model (pair=True) classifies whole pairs; step one tower's sequence with "
                                      "features() of a model built with pair=False")
        h = self._encode(x_t, per_step=True)  # (B, H)
        states = self._check_states(state, required=True)
        new_states = []
        for i, (block, s) in enumerate(zip(self.blocks, states)):
            h, s = block.step(h, s, interval=interval)
            if self.check_finite:
                check_finite_sequence(h[:, None], f"the output of block {i}")
            new_states.append(s)
        return self._as_input_dtype(self.head(self.final_norm(h)), x_t), new_states

    def generate(
        self,
        prompts: torch.Tensor | list[torch.Tensor],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        vocab_limit: int | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Continue token prompts, the prompts by ``forward`` and each new token by ``step`` (a ``head="lm"`` model).

        :func:`ssmkit.models.generate` with this model (its docstring gives the sampling rules and the batching).

        Args:
            prompts: (B, L) token ids, or a list of 1-D token tensors of any lengths >= 1.
            max_new_tokens: the most tokens added to each prompt.
            temperature: 0 for greedy decoding, else the softmax temperature of the draws.
            top_k, top_p: sample among the k most likely tokens, then within the nucleus of mass p (None: all).
            eos_id: a stream stops after producing this token (None: never).
            generator: the ``torch.Generator`` of the draws.
            vocab_limit: only ids < vocab_limit are generated: the tokenizer's vocabulary when the model's is padded
                past it (``load_mamba``'s official LMs); None: every id.

        Returns:
            (B, L + n) ids for a tensor (eos_id after a stream's eos), or a list of 1-D tensors for a list.
        """
        from ssmkit.models.generate import generate

        return generate(self, prompts, max_new_tokens, temperature, top_k, top_p, eos_id, generator, vocab_limit)

    def initial_state(self, batch_size: int) -> list:
        """Zero states, one per block."""
        return [block.initial_state(batch_size) for block in self.blocks]

    def _check_states(self, state: list | None, required: bool = False) -> list:
        if state is None and not required:
            return [None] * len(self.blocks)
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            raise ValueError(
                f"state must be a list of {len(self.blocks)} block states (as initial_state); got {type(state).__name__}"
            )
        return list(state)
