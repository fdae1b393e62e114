"""Causal (optionally sliding-window) softmax attention of new queries over cached and new keys, and rotary positions.

Scaled dot-product attention (Vaswani et al., "Attention Is All You Need", arXiv 1706.03762, eq. 1) with a causal
mask: the keys and values hold K positions 0..K-1 (a cache of earlier steps, then the new ones), the Lq queries sit
at the last Lq positions, p_i = K - Lq + i, and query i sees key j when

    j <= p_i  and  (window is None or j > p_i - window)          (a query sees ``window`` positions, itself included)

    o_i = Σ_j softmax_j(q_i · k_j / √P) v_j

Two paths, one signature:
- ``causal_attention_reference``: the scores (B, A, L, K) and the mask formed in full (the oracle, float64-capable).
- ``causal_attention_chunked`` (backend ``"chunked"``): ``torch.nn.functional.scaled_dot_product_attention``; with no
  cache and no window one call with ``is_causal`` (PyTorch's flash kernel: no Lq × K matrix), else blocks of T queries,
  each with the keys it can see and an explicit mask of T × (its keys): memory O(T·K) per block, O(T·(T + window)) with
  a window. Under forward-mode AD (:func:`ssmkit.ops.backend.forward_ad_active`) every call takes PyTorch's math
  kernel (``SDPBackend.MATH``, made of differentiable ops): the CPU flash kernel has no forward derivative.

Rotary positions (Su et al., "RoFormer", arXiv 2104.09864, §3.4.2) rotate the pairs (x_k, x_{k+P/2}) of a query or key
at position t by the angle t·θ_k, θ_k = base^{-2k/P}: then q_i · k_j depends on the positions only through i - j.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssmkit.ops.backend import dispatch, forward_ad_active
from ssmkit.ops.symbolic import symbolic_length

_QUERY_BLOCK = 256  # T: queries per block of the masked path (mask and scores T × K per block)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
          is_causal: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=is_causal)``; under forward-mode AD by PyTorch's
    math kernel (composite ops, which forward AD differentiates; the fused CPU and GPU kernels have no forward
    derivative), or, on a torch without ``torch.nn.attention.sdpa_kernel``, by the same formula written out.

    Args:
        q: (B, A, L, P) queries.
        k: (B, A, K, P) keys.
        v: (B, A, K, P) values.
        attn_mask: (L, K) bool, True where attention is allowed, or None.
        is_causal: the causal mask of L = K positions instead of ``attn_mask``.

    Returns:
        (B, A, L, P).
    """
    if not forward_ad_active():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        Lq, K = q.shape[2], k.shape[2]
        mask = causal_mask(Lq, K, None, q.device) if is_causal else attn_mask
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, A, L, K)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, A, L, P)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


def _check_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> None:
    """Raise ``ValueError`` unless q (B, A, L, P), k and v (B, A, K, P) agree, K >= Lq >= 1, window None or >= 1."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            found = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a real floating (B, A, L, P) tensor; got {found}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q must be (B, A, L, P) and k, v (B, A, K, P) with the same B, A, P; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not 1 <= q.shape[2] <= k.shape[2]:
        raise ValueError(f"the queries must be the last Lq of the K key positions, 1 <= Lq <= K; got Lq={q.shape[2]}, K={k.shape[2]}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or an int >= 1; got {window!r}")


def causal_mask(Lq: int, K: int, window: int | None, device: torch.device | None = None, first: int = 0) -> torch.Tensor:
    """Which keys each query sees: [i, j] = j <= p_i and (window is None or j > p_i - window), p_i = K - Lq + i.

    Args:
        Lq: the number of queries (the last Lq of the K positions).
        K: the number of key positions.
        window: how many positions a query sees (itself included), or None for all earlier ones.
        device: where to build the mask.
        first: the position of key column 0 (the mask covers keys first..K-1 when a block uses a slice of them).

    Returns:
        (L, K) bool mask, True where attention is allowed (with ``first`` > 0 only the columns of keys first..K-1).
    """
    p = torch.arange(K - Lq, K, device=device)[:, None]  # (L, 1) query positions
    j = torch.arange(first, K, device=device)[None, :]  # (1, K - first) key positions
    seen = j <= p
    if window is not None:
        seen = seen & (j > p - window)
    return seen  # (L, K - first)


def causal_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """Causal softmax attention with the scores formed in full (the oracle of :func:`causal_attention`).

    o_i = Σ_j softmax_j(q_i · k_j / √P + mask_ij) v_j, mask_ij = 0 where query i sees key j, else -inf
    (arXiv 1706.03762 eq. 1; the mask of :func:`causal_mask`).

    Args:
        q: (B, A, L, P) queries at the last Lq of the K positions.
        k: (B, A, K, P) keys.
        v: (B, A, K, P) values.
        window: how many positions a query sees (itself included), or None for all earlier ones.

    Returns:
        (B, A, L, P) attention outputs.
    """
    _check_attention_args(q, k, v, window)
    Lq, K = q.shape[2], k.shape[2]
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, A, L, K)
    scores = scores.masked_fill(~causal_mask(Lq, K, window, q.device), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, A, L, P)


def causal_attention_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """Causal softmax attention by ``scaled_dot_product_attention``; equals :func:`causal_attention_reference`.

    Steps: (1) no cache (K = Lq) and no window: one call with ``is_causal`` (the mask is implicit); (2) otherwise,
    while ``torch.export`` traces a dynamic L, one call with the explicit (L, K) mask; (3) otherwise,
    blocks of T queries: block [s, e) sees keys first..K-1+e-Lq with first = max(0, p_s - window + 1), and gets the
    explicit mask of those keys (arXiv 1706.03762 eq. 1 per block; no Lq × K tensor is formed).

    Accuracy: the outputs match the reference at any scale, but PyTorch's CPU kernel recomputes the probabilities in
    its backward from a log-sum-exp in the input dtype, so in float32 at scores ~1e6 the gradients of q and k are
    percents off where the reference's are exact (tests/ops/test_attention_edges.py; probe 8 in docs/design.md).

    Args:
        q: (B, A, L, P) queries at the last Lq of the K positions.
        k: (B, A, K, P) keys.
        v: (B, A, K, P) values.
        window: how many positions a query sees (itself included), or None for all earlier ones.

    Returns:
        (B, A, L, P) attention outputs.
    """
    _check_attention_args(q, k, v, window)
    Lq, K = q.shape[2], k.shape[2]
    if symbolic_length(Lq) and not (K == Lq and window is None):  # exporting with a dynamic L: no block loop
        return _sdpa(q, k, v, attn_mask=causal_mask(Lq, K, window, q.device))  # (B, A, L, P)
    if K == Lq and (window is None or window >= K):
        return _sdpa(q, k, v, is_causal=True)  # (B, A, L, P)
    if Lq == 1:  # one step: its keys are the last `window` (or all), every one of them seen
        first = 0 if window is None else max(0, K - window)
        return _sdpa(q, k[:, :, first:], v[:, :, first:])  # (B, A, 1, P)
    outputs = []
    for s in range(0, Lq, _QUERY_BLOCK):
        e = min(s + _QUERY_BLOCK, Lq)
        last = K - Lq + e  # keys after the block's last query are never seen
        first = 0 if window is None else max(0, K - Lq + s - window + 1)
        mask = causal_mask(e - s, last, window, q.device, first)  # (T, last - first)
        outputs.append(
            _sdpa(q[:, :, s:e], k[:, :, first:last], v[:, :, first:last], attn_mask=mask)
        )  # (B, A, T, P)
    return torch.cat(outputs, dim=2)  # (B, A, L, P)


_ATTENTION = {"reference": causal_attention_reference, "chunked": causal_attention_chunked}


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None, *, backend: str | None = None
) -> torch.Tensor:
    """Causal (optionally sliding-window) softmax attention of the last Lq positions over K keys.

    o_i = Σ_{j seen by i} softmax_j(q_i · k_j / √P) v_j, query i at position K - Lq + i sees key j when j <= K - Lq + i
    and, with a window, j > K - Lq + i - window (arXiv 1706.03762 eq. 1).

    Backends: ``"reference"`` -> :func:`causal_attention_reference` (full scores); ``"chunked"`` ->
    :func:`causal_attention_chunked` (``scaled_dot_product_attention``, by query blocks when masked); ``"auto"`` ->
    ``"chunked"``; ``"fft"`` and ``"triton"`` raise.

    Args:
        q: (B, A, L, P) queries.
        k: (B, A, K, P) keys (a cache of earlier positions, then the Lq new ones).
        v: (B, A, K, P) values.
        window: how many positions a query sees (itself included), or None for all earlier ones.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        (B, A, L, P) attention outputs.
    """
    return dispatch("causal_attention", _ATTENTION, backend, auto="chunked")(q, k, v, window)


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate the pairs (x_k, x_{k+P/2}) of x at position t by t·θ_k, θ_k = base^{-2k/P} (arXiv 2104.09864 eq. 34).

    The angles are formed in float64 (positions up to ~10⁵ would lose digits in float32) and rounded once.

    Args:
        x: (..., L, P) queries or keys, P even.
        positions: (..., L) positions of the rows (integers, or any real numbers), broadcastable against x's
            leading axes: (L,) for one sequence of positions, (B, 1, L) per batch item of (B, A, L, P) heads.
        base: the frequency base (10000 in RoFormer).

    Returns:
        (..., L, P) rotated x: [x1 cos - x2 sin, x2 cos + x1 sin] with x1, x2 the two halves.
    """
    P = x.shape[-1]
    if P % 2:
        raise ValueError(f"rotary positions need an even head dimension P; got P={P}")
    theta = base ** (torch.arange(0, P, 2, dtype=torch.float64, device=x.device) / -P)  # (P/2,): 2k / -P exactly
    angle = positions.to(torch.float64).unsqueeze(-1) * theta  # (..., L, P/2)
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)  # (..., L, P/2)
    x1, x2 = x[..., : P // 2], x[..., P // 2 :]  # (..., L, P/2)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (..., L, P)
