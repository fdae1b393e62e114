"""Mega: "Mega: Moving Average Equipped Gated Attention", Ma et al., arXiv 2209.10655, §3.1-3.3 (eq. 6-15), as one layer.

For an input X (B, L, H) (the block's normalised input):

    X' = SiLU(EMA(X))                                   (eq. 6; EMA with its ω-skip: :class:`ssmkit.layers.EMA`)
    Z  = SiLU(X' W_z + b_z)                             (eq. 7, the shared representation, Z dims)
    Q  = κ_q ⊙ Z + μ_q,  K = κ_k ⊙ Z + μ_k              (eq. 8-9)
    V  = SiLU(X W_v + b_v)                              (eq. 10, V dims)
    O  = f(Q Kᵀ / τ + b_rel) V                          (eq. 11; causal within each chunk)
    γ  = SiLU(X' W_γ + b_γ)                             (eq. 12, reset gate)
    φ  = sigmoid(X' W_φ + b_φ)                          (eq. 13, update gate)
    Ĥ  = SiLU(X' W_h + (γ ⊙ O) U_h + b_h)               (eq. 14)
    Y  = φ ⊙ Ĥ + (1 - φ) ⊙ X                            (eq. 15)

f is ``"softmax"`` (τ = √Z) or ``"laplace"`` (f(x) = ½(1 + erf((x - μ)/(σ√2))), μ = √½, σ = √(1/4π), τ = the number
of keys the query sees, and the weights of unseen keys are zero; eq. 16 and the official code). b_rel is the
``"simple"`` relative bias (one learned scalar per offset i - j, the official default) or the ``"rotary"`` one (two
learned vectors a, b rotated at the query and key positions, b_rel[i, j] = rot_i(a) · rot_j(b), which depends on i - j
only). Mega-chunk (``chunk_size``, §3.3): the sequence is cut into chunks of ``chunk_size`` positions and attention runs
within each chunk (linear cost); the EMA runs across chunks.

Choices (docs/design.md):
- The output is the gated update φ ⊙ (Ĥ - X), not Y: :class:`ssmkit.models.Block` adds the input back, so
  ``Block(mega, norm=None)`` gives eq. 15 exactly. With a pre-norm the block gives x + φ ⊙ (Ĥ - Norm(x)) (the official
  pre-norm code forms x + φ ⊙ (Ĥ - x), subtracting the un-normalised input).
- The official joint projection of X' (W_φ, W_z, W_γ, W_h as one matrix, in that order) and its initialisation
  (weights N(0, 0.02²), biases 0, κ ~ N(0, 0.02²), μ = 0, bias parameters N(0, 0.02²)) are kept. Dropouts are not
  part of the layer.
- The state (:class:`MegaState`) is the EMA state and a key/value cache: without chunks every key so far (a growing
  cache); with chunks only the keys of the current, unfinished chunk (it empties at each chunk boundary), so the
  step is O(chunk_size). ``forward(x, state)`` continues exactly, also in the middle of a chunk (the first chunk of
  the call is the unfinished one).
- The ``"simple"`` bias has 2P - 1 entries, P = ``chunk_size`` (or ``max_positions`` without chunks); a longer span
  raises ValueError. The rotary bias has no length limit.
- ``bidirectional=True`` (the encoder of the paper's LRA and classification models): a bidirectional EMA and
  attention over the whole chunk; no state, no step. ``forward(x, mask=...)`` takes a (B, L) padding mask there
  (True at the tokens, as Hugging Face's ``attention_mask``; padding trailing): the EMA reads zeros at the padding
  (its y = K ⊛ u has no bias, so they add exactly 0 in either direction) and attention gives the padded keys weight
  0, so each item gets its unpadded sequence's outputs in one call (:class:`ssmkit.models.Block` passes its mask).

Backends: the EMA's (``"reference"``: its loop; ``"native"`` (``"auto"`` on the CPU where it builds): the C kernel's
real-mode scan; ``"chunked"`` (``"auto"`` elsewhere): the chunked scan; ``"fft"``: FFT convolution); the attention
scores are formed chunk by chunk (T × T per chunk; without chunks L × L, quadratic).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.layers.checks import (
    ATTUNED,
    SHAPES,
    FixedOption,
    check_choice,
    check_flag,
    check_lr,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.ema import EMA
from ssmkit.layers.protocol import BlockDefaults, Capabilities, SequenceLayer, float32_core
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.state import TensorSpec, exportable_state
from ssmkit.ops.symbolic import chunk_count, keep_first, symbolic_length
from ssmkit.utils import check_padding_mask, padding_lengths

ATTENTIONS = ("softmax", "laplace")
POSITIONALS = ("simple", "rotary")
_LAPLACE_MU, _LAPLACE_SIGMA = math.sqrt(0.5), math.sqrt(1.0 / (4.0 * math.pi))


@exportable_state
class MegaState(NamedTuple):
    """A Mega layer's state.

    Attributes:
        ema: (B, H, N) the EMA state.
        keys: (B, K, Z) the cached keys (of the current chunk with ``chunk_size``), oldest first.
        values: (B, K, V) the cached values.
    """

    ema: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor


def laplace(x: torch.Tensor) -> torch.Tensor:
    """The Laplace attention function f(x) = ½(1 + erf((x - μ)/(σ√2))), μ = √½, σ = √(1/4π) (arXiv 2209.10655 eq. 16).

    Args:
        x: (...) attention scores.

    Returns:
        (...) weights in (0, 1).
    """
    return 0.5 * (1.0 + torch.erf((x - _LAPLACE_MU) / (_LAPLACE_SIGMA * math.sqrt(2.0))))


@register("mega")
class Mega(SequenceLayer):
    """Mega: EMA followed by single-head gated attention with reset and update gates, arXiv 2209.10655 eq. 6-15.

    Args:
        d_model: H, the input and output channels.
        d_state: N, the EMA dimension (16 in every published recipe).
        d_qk: Z, the dimension of the shared representation, queries and keys (z in the paper).
        d_v: V, the value dimension (v in the paper); None for 2H (the paper's recipes).
        attention: ``"softmax"`` (the language-model default) or ``"laplace"`` (the paper's Laplace function).
        chunk_size: Mega-chunk's chunk length (attention within chunks, linear cost), or None for attention over the
            whole sequence (quadratic). Default 1024 (the paper's WikiText-103 value).
        positional: relative position bias, ``"simple"`` (a learned scalar per offset, the official default) or
            ``"rotary"`` (needs an even d_qk).
        max_positions: the longest span of the ``"simple"`` bias without chunks (with chunks it is ``chunk_size``).
        bidirectional: bidirectional EMA and attention over the whole chunk (an encoder: no step, no state).
        lr: learning rate of the EMA's α, δ, β (weight decay 0); None = the global lr.
        device, dtype: of the parameters (float32 or float64).
    """

    # the constructor options, fixed at construction (checks.FixedOption: assigned later, each was ignored,
    # half-applied or broke the layer; lr is the EMA's, which keeps it)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    d_qk = FixedOption(SHAPES)
    d_v = FixedOption(SHAPES)
    attention = FixedOption(ATTUNED)
    chunk_size = FixedOption(SHAPES)
    positional = FixedOption(SHAPES)
    max_positions = FixedOption(SHAPES)
    bidirectional = FixedOption(SHAPES)

    zoo = ZooEntry(
        paper='arXiv 2209.10655',
        structure='diagonal',
        parametrisation='damped EMA (Ā = 1 - α ⊙ δ, real) then single-head gated attention',
        discretisation='none (discrete time)',
        time_varying=True,
        stable_by_construction=True,
        stability='EMA: 0 < 1 - αδ < 1; attention: a convex combination of cached values (bounded)',
        step_cost='O(H N + Z t) at step t (Z the shared dimension; O(Z chunk) with chunks)',
        sequence_cost='O(H N L + L² Z) (O(L chunk Z) chunked)',
    )

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=False, state_space=False, step=True)
    missing = {
        "kernel": "its attention and gates make it nonlinear, so it has no convolution kernel",
        "state_space": "its attention and gates make it nonlinear, so it has no linear state-space realisation",
    }
    backends: ClassVar[tuple[str, ...]] = ("reference", "chunked", "fft", "native")
    block_defaults: ClassVar[BlockDefaults] = BlockDefaults(activation=None, mixer_out=None)
    # the biases of eq. 7-14 (b_v; b_φ, b_z, b_γ and X' W_h's in b_mx; b_h; the offsets μ of Q and K) under their
    # paper names: ssmkit.train.param_groups keeps them out of weight decay as every parameter named ``bias``
    bias_parameters: ClassVar[tuple[str, ...]] = ("b_v", "b_mx", "b_h", "mu")
    # forward takes a keyword ``mask`` (key padding, bidirectional): ssmkit.models.Block hands it its padding mask
    takes_mask: ClassVar[bool] = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_qk: int = 64,
        d_v: int | None = None,
        attention: str = "softmax",
        chunk_size: int | None = 1024,
        positional: str = "simple",
        max_positions: int = 1024,
        bidirectional: bool = False,
        lr: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model")
        check_positive_int(d_qk, "d_qk")
        if d_v is not None:
            check_positive_int(d_v, "d_v")
        check_choice(attention, ATTENTIONS, "attention")
        if chunk_size is not None:
            check_positive_int(chunk_size, "chunk_size")
        check_choice(positional, POSITIONALS, "positional")
        check_positive_int(max_positions, "max_positions")
        check_lr(lr)
        if positional == "rotary" and d_qk % 2:
            raise ValueError(f"d_qk must be even with the rotary bias (it rotates pairs); got {d_qk}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_qk = d_qk
        self.d_v = d_v if d_v is not None else 2 * d_model
        self.attention = attention
        self.chunk_size = chunk_size
        self.positional = positional
        self.max_positions = max_positions
        check_flag(bidirectional, "bidirectional")
        self.bidirectional = bidirectional
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        H, Z, V = d_model, d_qk, self.d_v
        self.ema = EMA(H, d_state, lr=lr, bidirectional=bidirectional, **factory)
        self.W_v = nn.Parameter(torch.empty(V, H, **factory))
        self.b_v = nn.Parameter(torch.empty(V, **factory))
        self.W_mx = nn.Parameter(torch.empty(2 * H + Z + V, H, **factory))  # rows: W_φ, W_z, W_γ, W_h
        self.b_mx = nn.Parameter(torch.empty(2 * H + Z + V, **factory))
        self.U_h = nn.Parameter(torch.empty(H, V, **factory))
        self.b_h = nn.Parameter(torch.empty(H, **factory))
        self.kappa = nn.Parameter(torch.empty(2, Z, **factory))  # κ_q, κ_k
        self.mu = nn.Parameter(torch.empty(2, Z, **factory))  # μ_q, μ_k
        if positional == "simple":
            self.rel_bias = nn.Parameter(torch.empty(2 * self.span - 1, **factory))  # offsets -(P-1)..P-1
        else:
            self.rel_bias = nn.Parameter(torch.empty(2, Z, **factory))  # a, b of the rotary bias
        self._reset_own_parameters()

    @property
    def span(self) -> int:
        """P, the most positions one attention call covers with the simple bias: ``chunk_size`` or ``max_positions``."""
        return self.chunk_size if self.chunk_size is not None else self.max_positions

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw every parameter (the EMA's, then the layer's own) from the official initialisation."""
        self.ema.reset_parameters()
        self._reset_own_parameters()

    @torch.no_grad()
    def _reset_own_parameters(self) -> None:
        for weight in (self.W_v, self.W_mx, self.U_h, self.kappa, self.rel_bias):
            weight.copy_(torch.randn(weight.shape, dtype=torch.float64) * 0.02)
        for bias in (self.b_v, self.b_mx, self.b_h, self.mu):
            bias.zero_()

    def state_spec(self) -> MegaState:
        """The EMA state (H, N) and the key and value caches (K, Z) and (K, V), K growing from 0."""
        dtype = self.W_v.dtype
        return MegaState(
            self.ema.state_spec(),
            TensorSpec((0, self.d_qk), dtype, growing=0),
            TensorSpec((0, self.d_v), dtype, growing=0),
        )

    def state_device(self) -> torch.device:
        return self.W_v.device

    # ------------------------------------------------------------------------------------------------------------
    # Relative bias and attention

    def _relative_bias(self, T: int, K: int, offset: int, device: torch.device) -> torch.Tensor:
        """b_rel[i, j] for queries at positions offset..offset+T-1 and keys at 0..K-1: (T, K), a function of d = i - j."""
        d_min, d_max = offset - (K - 1), offset + T - 1  # the offsets that occur
        d = torch.arange(offset, offset + T, device=device)[:, None] - torch.arange(K, device=device)  # (T, K)
        if self.positional == "simple":
            if max(d_max, -d_min) >= self.span:
                raise ValueError(
                    f"Mega(positional='simple') attends over at most {self.span} positions (chunk_size, or max_positions "
                    f"without chunks); got a span of {max(d_max, -d_min) + 1}"
                )
            return self.rel_bias[self.span - 1 - d]  # the official table: entry P - 1 + (j - i)
        # rotary: rot_i(a) · rot_j(b) = Σ_k (a_k b_k + a_k' b_k') cos(ω_k d) + (a_k b_k' - a_k' b_k) sin(ω_k d), k' = k + Z/2
        half = self.d_qk // 2
        a, b = self.rel_bias[0], self.rel_bias[1]  # (Z,)
        cos_w = a[:half] * b[:half] + a[half:] * b[half:]  # (Z/2,)
        sin_w = a[:half] * b[half:] - a[half:] * b[:half]  # (Z/2,)
        omega = 10000.0 ** (-torch.arange(half, dtype=torch.float64, device=device) / half)  # (Z/2,)
        angle = torch.arange(d_min, d_max + 1, dtype=torch.float64, device=device)[:, None] * omega  # (n_d, Z/2)
        table = torch.cos(angle).to(a.dtype) @ cos_w + torch.sin(angle).to(a.dtype) @ sin_w  # (n_d,)
        return table[d - d_min]  # (T, K)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int, valid: torch.Tensor) -> torch.Tensor:
        """O = f(Q Kᵀ/τ + b_rel) V within groups (eq. 11).

        Args:
            q: (B, G, T, Z) queries at positions offset..offset+T-1 of their group.
            k: (B, G, K, Z) keys at positions 0..K-1.
            v: (B, G, K, V) values.
            offset: the position of the first query.
            valid: (G, K) bool, False for padding keys, or (B, G, K) with each item's own padding (a key padding
                mask; every (item, group) row holds at least one True).

        Returns:
            (B, G, T, V).
        """
        T, K = q.shape[2], k.shape[2]
        i = torch.arange(offset, offset + T, device=q.device)[:, None]  # (T, 1)
        j = torch.arange(K, device=q.device)[None, :]  # (1, K)
        valid_keys = valid[:, None, :] if valid.dim() == 2 else valid[:, :, None, :]  # (G, 1, K) or (B, G, 1, K)
        seen = valid_keys if self.bidirectional else valid_keys & (j <= i)  # (G, T, K) (or with B in front)
        bias = self._relative_bias(T, K, offset, q.device)  # (T, K)
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, G, T, K)
        if self.attention == "softmax":
            scores = scores / math.sqrt(self.d_qk) + bias
            weights = torch.softmax(scores.masked_fill(~seen, float("-inf")), dim=-1)  # (B, G, T, K)
        else:
            count = seen.sum(-1, keepdim=True).clamp_min(1).to(q.dtype)  # (G, T, 1): keys each query sees
            weights = laplace(scores / count + bias) * seen  # (B, G, T, K)
        return torch.matmul(weights, v)  # (B, G, T, V)

    def _attention(self, q, k_new, v_new, cache: tuple[torch.Tensor, torch.Tensor] | None, keep_cache: bool = True,
                   key_mask: torch.Tensor | None = None):
        """Attention of the new queries over the cache and the new keys, chunk by chunk; returns O (B, L, V) and the
        keys and values to cache (None without ``keep_cache`` while exporting with a dynamic L). ``key_mask`` (B, L)
        bool, without a cache: False at each item's padded keys, which get weight 0 (a group of padding only sees
        all its keys instead: its queries are padding too, and a softmax over no key is NaN)."""
        c = 0 if cache is None else cache[0].shape[1]
        k = k_new if cache is None else torch.cat([cache[0], k_new], dim=1)  # (B, c+L, Z)
        v = v_new if cache is None else torch.cat([cache[1], v_new], dim=1)  # (B, c+L, V)
        Bsz, L, n = q.shape[0], q.shape[1], k.shape[1]
        symbolic = symbolic_length(n)  # exporting with a dynamic L: the chunked form, with no branch on L
        if self.chunk_size is None or (not symbolic and n <= self.chunk_size):  # one group (a step, a short call)
            if key_mask is None:
                valid = torch.ones(1, n, dtype=torch.bool, device=q.device)  # (1, n)
            else:
                valid = key_mask[:, None, :] | ~key_mask.any(-1)[:, None, None]  # (B, 1, n)
            O = self._attend(q[:, None], k[:, None], v[:, None], c, valid)[:, 0]  # (B, L, V)
            keep = n if self.chunk_size is None else n % self.chunk_size  # a finished chunk empties the cache
            return O, k[:, n - keep :], v[:, n - keep :]
        # Mega-chunk: pad the queries in front by the c cached positions (their rows are dropped), then every
        # sequence at the end to whole chunks; chunk g holds positions gT..gT+T-1 of the cache-first sequence.
        T = self.chunk_size
        n_chunks = chunk_count(n, T)  # (a symbolic n gets one more chunk, all padding)
        pad = n_chunks * T - n
        q_pad = F.pad(q, (0, 0, c, pad)).reshape(Bsz, n_chunks, T, -1)  # (B, nc, T, Z)
        k_pad = F.pad(k, (0, 0, 0, pad)).reshape(Bsz, n_chunks, T, -1)  # (B, nc, T, Z)
        v_pad = F.pad(v, (0, 0, 0, pad)).reshape(Bsz, n_chunks, T, -1)  # (B, nc, T, V)
        valid = (torch.arange(n_chunks * T, device=q.device) < n).reshape(n_chunks, T)  # (nc, T)
        if key_mask is not None:
            valid = valid & F.pad(key_mask, (0, pad)).reshape(Bsz, n_chunks, T)  # (B, nc, T)
            valid = valid | ~valid.any(-1, keepdim=True)  # (B, nc, T): a chunk of padding only sees all its keys
        O = self._attend(q_pad, k_pad, v_pad, 0, valid).reshape(Bsz, n_chunks * T, -1)  # (B, nc·T, V)
        keep = n % T  # the unfinished chunk's positions (0 at a boundary)
        if symbolic:  # gathers: slices at symbolic offsets would guard on sizes torch cannot bound
            if not keep_cache:  # (the cache's length, n mod T, may be 0 or 1, which torch specialises)
                return keep_first(O, 1, c + L)[:, c:], None, None
            kept = torch.arange(keep, device=q.device) + (n - keep)
            return keep_first(O, 1, c + L)[:, c:], k.index_select(1, kept), v.index_select(1, kept)
        return O[:, c : c + L], k[:, n - keep :], v[:, n - keep :]  # (B, L, V)

    # ------------------------------------------------------------------------------------------------------------
    # The layer

    def _check_cache(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        if keys.shape[1] != values.shape[1]:
            raise ValueError(
                f"state: the cached keys and values must have one length; got {keys.shape[1]} keys and {values.shape[1]} values"
            )
        if self.chunk_size is not None and keys.shape[1] >= self.chunk_size:
            raise ValueError(
                f"state: the cache of Mega(chunk_size={self.chunk_size}) holds the unfinished chunk, fewer than "
                f"{self.chunk_size} positions; got {keys.shape[1]}"
            )

    def _mega(self, x: torch.Tensor, state: MegaState | None, return_state: bool, step: bool = False,
              mask: torch.Tensor | None = None):
        """Y - X = φ ⊙ (Ĥ - X) of x (B, L, H) after ``state`` (eq. 6-15), and the next state (``step``: L = 1, the EMA
        by its recurrent step). ``mask`` (B, L) bool (bidirectional, no state): the EMA reads 0 where it is False
        and attention skips those keys (see ``forward``)."""
        if state is not None:
            state = MegaState(*state)
            self._check_cache(state.keys, state.values)
        H, Z, V = self.d_model, self.d_qk, self.d_v
        if step:
            ema_out, ema_state = self.ema.step(x[:, 0], state.ema)  # (B, H)
            ema_out = ema_out.unsqueeze(1)  # (B, 1, H)
        else:
            u = x if mask is None else torch.where(mask[..., None], x, 0.0)  # (B, L, H); y = K ⊛ u: zeros add 0
            ema_out, ema_state = self.ema(u, None if state is None else state.ema, return_state)  # (B, L, H)
        mx = F.silu(ema_out)  # X' (eq. 6)
        value = F.silu(F.linear(x, self.W_v, self.b_v))  # V (eq. 10)
        phi_pre, zr, hx = torch.split(F.linear(mx, self.W_mx, self.b_mx), [H, Z + V, H], dim=-1)
        phi = torch.sigmoid(phi_pre)  # update gate φ (eq. 13)
        z, reset = torch.split(F.silu(zr), [Z, V], dim=-1)  # Z (eq. 7) and the reset gate γ (eq. 12)
        q = z * self.kappa[0] + self.mu[0]  # (B, L, Z) (eq. 8)
        k = z * self.kappa[1] + self.mu[1]  # (B, L, Z) (eq. 9)
        cache = None if state is None else (state.keys, state.values)
        O, keys, values = self._attention(q, k, value, cache, return_state, mask)  # (B, L, V)
        H_hat = F.silu(hx + F.linear(O * reset, self.U_h, self.b_h))  # Ĥ (eq. 14)
        y = phi * (H_hat - x)  # eq. 15 minus the input, which the block adds back
        return y, (MegaState(ema_state, keys, values) if return_state else None)

    def forward(
        self, x: torch.Tensor, state: MegaState | None = None, return_state: bool = True, *,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MegaState | None]:
        """Run the layer over a whole sequence (the protocol's ``forward``, plus a padding mask when bidirectional).

        Args:
            x: (B, L, H) real input, H = ``d_model``.
            state: the state before x (:class:`MegaState`), or None for zeros (None when bidirectional).
            return_state: compute and return the final state.
            mask: (B, L) bool, True at each sequence's positions and False at its padding, which must trail (as
                Hugging Face's ``attention_mask``; the opposite of ``nn.MultiheadAttention``'s ``key_padding_mask``);
                or None, every position a token. Bidirectional only (a causal Mega's outputs at the positions never
                read the padding after them). The padding is absent to every position: the EMA reads u = 0 there
                (y = K ⊛ u + ω u has no bias, so it adds exactly 0 in either direction), attention gives the padded
                keys weight 0 and the Laplace τ counts the item's keys only, so at its positions each item's y is its
                unpadded sequence's alone (to round-off), gradients included; at the padding y is finite and
                unspecified. One synchronisation (the check that the padding trails, and the calls run to the longest
                item's end only).

        Returns:
            y (B, L, H) in x's dtype, and the final state (None when not asked for, or when bidirectional).
        """
        if mask is None:
            return super().forward(x, state, return_state)
        self._check_forward(x, state)
        n_max, L = self._longest(mask, x), x.shape[1]
        if n_max == 0:  # padding only: nothing to read
            return x.new_zeros(x.shape), None
        with float32_core(x.device.type):
            y, _ = self._mega(x[:, :n_max].to(self.W_v.dtype), None, False, mask=mask[:, :n_max])  # (B, n_max, H)
        return (F.pad(y, (0, 0, 0, L - n_max)) if n_max < L else y).to(x.dtype), None  # (B, L, H)

    def _longest(self, mask: torch.Tensor, x: torch.Tensor) -> int:
        """The longest item's length in the padding ``mask`` (B, L), after checking it (see ``forward``)."""
        if not self.bidirectional:
            raise ValueError("mask is for Mega(bidirectional=True): a causal Mega's outputs at each sequence's positions "
                             "never read the right padding after them; pass mask=None")
        check_padding_mask(mask, x)
        if mask.device != x.device:
            raise ValueError(f"mask must be on x's device {x.device}; got {mask.device}")
        lengths, right_padded = padding_lengths(mask)  # one synchronisation
        if not right_padded:
            raise ValueError(f"{type(self).__name__}(bidirectional=True) with padding (mask) gives each item its "
                             "unpadded prefix's outputs: the padding must trail every sequence (right padding); got "
                             "padding before a position of the sequence")
        return max(lengths)

    def _forward(self, x: torch.Tensor, state: MegaState | None, return_state: bool):
        with float32_core(x.device.type):
            y, h = self._mega(x.to(self.W_v.dtype), state, return_state)
        return y.to(x.dtype), h

    def _step(self, x_t: torch.Tensor, state: MegaState):
        with float32_core(x_t.device.type):
            y, h = self._mega(x_t.to(self.W_v.dtype).unsqueeze(1), state, True, step=True)
        return y.squeeze(1).to(x_t.dtype), h

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, d_qk={self.d_qk}, d_v={self.d_v}, "
            f"attention={self.attention!r}, chunk_size={self.chunk_size}, positional={self.positional!r}, "
            f"bidirectional={self.bidirectional}"
        )
