"""Causal multi-head softmax attention ("Attention Is All You Need", arXiv 1706.03762, §3.2) in the layer protocol, for
hybrids (Griffin-style local attention, arXiv 2402.19427 §2.4) and comparisons with the SSM layers.

    q, k, v = x W_q, x W_k, x W_v                       (A heads of dimension P each)
    q, k = rotary(q), rotary(k)                         (positions by rotation, arXiv 2104.09864; optional)
    o_t = Σ_{s seen by t} softmax_s(q_t · k_s / √P) v_s  (s <= t, and s > t - window with a window)
    y_t = concat_heads(o_t) W_o

The state is a key/value cache (:class:`KVCache`): the keys and values of the positions a later query can see, with a
growing length axis, and the position of the next step. ``forward(x, state)`` continues exactly: the new queries
attend to the cache and to the causal part of the new keys. Without a window the cache holds every position so far
(grows without bound); with ``window`` it keeps the last ``window - 1`` positions (a fixed-size cache once full). Keys
are cached rotated at their own positions (computed once, from float64 angles), so a sliding cache never re-rotates:
the stored position (float64, exact for integers below 2^53) is what a full window would otherwise lose.

The whole layer runs in the parameters' dtype, also under autocast (as every ssmkit layer: docs/design.md).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from ssmkit.layers.checks import (
    ATTUNED,
    SHAPES,
    FixedOption,
    check_choice,
    check_flag,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.protocol import BlockDefaults, Capabilities, SequenceLayer, float32_core
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.state import TensorSpec, exportable_state
from ssmkit.ops.attention import causal_attention, rotary
from ssmkit.ops.rows import weight_dtype_device

POSITIONALS = ("rotary", None)


@exportable_state
class KVCache(NamedTuple):
    """An attention layer's state: the keys and values of the positions later queries can see, and the next position.

    Attributes:
        keys: (B, A, K, P) keys, oldest first (K grows); with rotary positions each is rotated at its own position.
        values: (B, A, K, P) values, oldest first.
        position: (B, 1) float64, the position of the next step (the number of steps so far from a zero state).
    """

    keys: torch.Tensor
    values: torch.Tensor
    position: torch.Tensor


def check_cache(state: KVCache, limit: int | None, name: str = "state") -> None:
    """Raise ``ValueError`` unless the keys and values of a cache have one length, at most ``limit`` when given.

    Args:
        state: the cache, keys and values (B, A, K, P) (their shapes already checked against the spec).
        limit: the longest cache the layer keeps (``window - 1``), or None.
        name: the name used in the message.
    """
    K, Kv = state.keys.shape[2], state.values.shape[2]
    if K != Kv:
        raise ValueError(f"{name}: the cached keys and values must have one length; got {K} keys and {Kv} values")
    if limit is not None and K > limit:
        raise ValueError(f"{name}: a cache of this layer holds at most window - 1 = {limit} positions; got {K}")


@register("attention")
class Attention(SequenceLayer):
    """Causal multi-head softmax attention with a key/value cache, arXiv 1706.03762.

    Args:
        d_model: H, the input and output channels.
        n_heads: A, the heads; None for max(1, H // head_dim).
        head_dim: P, the dimension of each head (even with rotary positions).
        bias: learn biases in the projections.
        positional: ``"rotary"`` (RoFormer rotations of q and k, the default: a layer in a hybrid stack gets no other
            position information) or None (no positions: the layer is then permutation-equivariant over the past).
        window: each query sees this many positions (itself included), as Griffin's local attention; None for all
            earlier positions.
        rotary_base: the frequency base of the rotations.
        device, dtype: of the parameters (float32 or float64).

    The projections are ``nn.Linear`` layers with PyTorch's default initialisation.
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    n_heads = FixedOption(SHAPES)
    head_dim = FixedOption(SHAPES)
    bias = FixedOption(SHAPES)
    positional = FixedOption(ATTUNED)
    window = FixedOption(SHAPES)
    rotary_base = FixedOption(ATTUNED)

    zoo = ZooEntry(
        paper='arXiv 1706.03762',
        structure='none',
        parametrisation='softmax(q k^T / √P) v over the cached positions (rotary positions optional)',
        discretisation='none',
        time_varying=True,
        stable_by_construction=True,
        stability='no recurrence: the output is a convex combination of cached values (bounded); the cache grows with L',
        step_cost='O(A t) at step t (O(A window) with a window)',
        sequence_cost='O(L² A) (O(L window A) windowed)',
    )

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=False, state_space=False, step=True)
    missing = {
        "kernel": "softmax attention is not linear in its input, so it has no convolution kernel",
        "state_space": "softmax attention is not a linear time-invariant system",
    }
    backends: ClassVar[tuple[str, ...]] = ("reference", "chunked")
    block_defaults: ClassVar[BlockDefaults] = BlockDefaults(activation=None, mixer_out=None)

    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        head_dim: int = 64,
        bias: bool = False,
        positional: str | None = "rotary",
        window: int | None = None,
        rotary_base: float = 10000.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model")
        check_positive_int(head_dim, "head_dim")
        if n_heads is not None:
            check_positive_int(n_heads, "n_heads")
        check_choice(positional, POSITIONALS, "positional")
        if window is not None:
            check_positive_int(window, "window")
        if positional == "rotary" and head_dim % 2:
            raise ValueError(f"head_dim must be even with rotary positions (they rotate pairs); got {head_dim}")
        if not isinstance(rotary_base, (int, float)) or isinstance(rotary_base, bool) or not 1 < rotary_base < math.inf:
            raise ValueError(f"rotary_base must be a finite float > 1; got {rotary_base!r}")
        self.d_model = d_model
        self.n_heads = n_heads if n_heads is not None else max(1, d_model // head_dim)
        self.head_dim = head_dim
        check_flag(bias, "bias")
        self.bias = bias
        self.positional = positional
        self.window = window
        self.rotary_base = float(rotary_base)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        inner = self.n_heads * head_dim
        self.qkv = nn.Linear(d_model, 3 * inner, bias=bias, **factory)
        self.out = nn.Linear(inner, d_model, bias=bias, **factory)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the projections (PyTorch's default ``nn.Linear`` initialisation)."""
        self.qkv.reset_parameters()
        self.out.reset_parameters()

    def state_spec(self) -> KVCache:
        """Keys and values (A, K, P) each, in the parameters' dtype, K growing from 0; the next position (1,) float64."""
        spec = TensorSpec((self.n_heads, 0, self.head_dim), weight_dtype_device(self.qkv)[0], growing=1)
        return KVCache(spec, spec, TensorSpec((1,), torch.float64))

    def state_device(self) -> torch.device:
        return weight_dtype_device(self.qkv)[1]

    @property
    def cache_limit(self) -> int | None:
        """The longest cache kept: window - 1 positions, or None (unbounded)."""
        return None if self.window is None else self.window - 1

    def _heads(self, x: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, A, L, P) of x (B, L, H), q and k rotated at the positions start, start + 1, ... (start (B, 1)
        float64) with rotary positions; q and k are rotated in one call (one set of angles for both)."""
        Bsz, L, _ = x.shape
        qkv = self.qkv(x).reshape(Bsz, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, A, L, P)
        qk, v = qkv[:2], qkv[2]  # (2, B, A, L, P), (B, A, L, P)
        if self.positional == "rotary":
            positions = (start + torch.arange(L, device=x.device))[:, None]  # (B, 1, L): broadcast over q/k and heads
            qk = rotary(qk, positions, self.rotary_base)
        q, k = qk.unbind(0)
        return q, k, v

    def _attend(self, x: torch.Tensor, state: KVCache | None, backend: str, return_state: bool):
        """y (B, L, H) and the new cache of x (B, L, H) after ``state``.

        Steps: (1) q, k, v of the new steps, rotated at their positions p0, p0+1, ... (p0 = the state's position);
        (2) attention over the cache and the new keys; (3) the new cache: the last ``window - 1`` keys and values (all
        without a window) and the position p0 + L."""
        Bsz, L, _ = x.shape
        state = None if state is None else KVCache(*state)  # a plain tuple is accepted too
        start = x.new_zeros((Bsz, 1), dtype=torch.float64) if state is None else state.position  # (B, 1)
        q, k, v = self._heads(x, start)  # (B, A, L, P)
        if state is not None:
            check_cache(state, self.cache_limit)
            k = torch.cat([state.keys, k], dim=2)  # (B, A, K, P): cache first
            v = torch.cat([state.values, v], dim=2)
        o = causal_attention(q, k, v, self.window, backend=backend)  # (B, A, L, P)
        y = self.out(o.transpose(1, 2).reshape(Bsz, L, -1))  # (B, L, H)
        if not return_state:
            return y, None
        K = k.shape[2]
        dropped = 0 if self.cache_limit is None else max(0, K - self.cache_limit)
        return y, KVCache(k[:, :, dropped:], v[:, :, dropped:], start + L)

    def _forward(self, x: torch.Tensor, state: KVCache | None, return_state: bool):
        backend = self._backend()
        backend = "chunked" if backend == "auto" else backend
        with float32_core(x.device.type):
            y, h = self._attend(x.to(weight_dtype_device(self.qkv)[0]), state, backend, return_state)
        return y.to(x.dtype), h

    def _step(self, x_t: torch.Tensor, state: KVCache):
        with float32_core(x_t.device.type):
            y, h = self._attend(x_t.to(weight_dtype_device(self.qkv)[0]).unsqueeze(1), state, "chunked", True)
        return y.squeeze(1).to(x_t.dtype), h

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, bias={self.bias}, "
            f"positional={self.positional!r}, window={self.window}"
        )
