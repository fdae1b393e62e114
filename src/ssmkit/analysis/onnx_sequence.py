"""Export of a model's whole-sequence forward to ONNX with a dynamic sequence length, in real arithmetic.

    info = ssmkit.analysis.export_onnx_sequence(model, "simulator.onnx")   # a SequenceModel or a DeepWiener
    session = onnxruntime.InferenceSession("simulator.onnx")
    y, *state = session.run(None, {"u": u, **dict(zip(info.state_names, info.initial_state(batch_size=1)))})

The graph computes ``y, state' = model(u, state)`` for any batch size and any length L (u: (B, L, m)). ONNX has no
complex tensors, and torch cannot trace a complex modal layer's scan into one, so every LTI layer
(``supports("state_space")``: S4D, DSS, DLR, S5, LRU, EMA, S4) is replaced by `RealLTISequence`, its exported
realisation x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k] (``layer.state_space()``) written as real matrices
and run by the chunked algorithm of arXiv 2405.21060 §6 (the "SSD" form of the diagonal scan). Per chunk of T steps,
from the state x_c before the chunk:

    y_t = C A^t x_c + Σ_{s≤t} K_{t-s} u_s        (K_0 = D, K_j = C A^{j-1} B: the Markov parameters)
    x_{c+1} = A^T x_c + Σ_s A^{T-1-s} B u_s

Every chunk's Toeplitz product and input-to-state product is one batched GEMM over all chunks; the carry across the
L/T chunks is one ``scan`` op (an ONNX ``Scan``) whose body is one GEMM. The last chunk is padded with zeros; its
real steps r (1..T) enter the final state as numbers, not as slices: x[L] = A^r x_c + Σ_{s<r} A^{r-1-s} B u_s,
with A^r from the squarings A^{2^k} selected by the bits of r.

The states are those of `RealLTIStep` (the step graph of `export_onnx`): the same layout, so `onnx_state` maps a
``forward`` state onto this graph too, and a simulation may go on in the step graph from where this one stopped.
A bidirectional LTI layer (S4, S4D, DSS, DLR, EMA, S5, LRU built with ``bidirectional=True``, also Mega's EMA core)
has no state and no step; from rest (``with_state=False``) it becomes `RealBidirectionalSequence`: the chunked scan of
its causal direction plus that of its anti-causal direction run on the reversed sequence and reversed back (its own
forward computes the two-sided kernel for the concrete L, which torch.export cannot trace at a symbolic L).
The other layers (gated mixers) keep their own ``forward``, exported as traced: Mamba, Mamba-2, RG-LRU and
attention convert; a layer whose state is complex or whose forward the exporter cannot convert makes
`export_onnx_sequence` raise ``NotImplementedError``.

``intervals=True`` writes ``(u, intervals, state_0, ...) -> (y, next_state_0, ...)`` for irregularly sampled records,
``intervals`` (B, L) as ``forward``'s: the LTI layers then run a ``Scan`` over time whose body is their step at each
gap (:mod:`ssmkit.analysis.onnx_irregular`), the gated layers their own forward with the intervals.

``lengths=True`` adds ``lengths`` (B,) int64 after ``u`` (and the intervals) for right-padded batches, computing
``model(u, state, lengths=lengths)``: a bidirectional layer then reads zeros after each item's end (both scans are
linear without a bias, so the anti-causal one starts from rest at the item's own end), Mega also skips the padded keys,
and the pool takes each item's own steps; each item gets its unpadded sequence's answer. Without it a padded batch is
read whole, and the shorter items' answers are wrong without a word.

    info = ssmkit.analysis.export_onnx_sequence(classifier, "classifier.onnx", with_state=False, lengths=True)
    session = onnxruntime.InferenceSession("classifier.onnx")
    logits, = session.run(None, info.feed(u_padded, lengths=lengths))    # lengths (B,) in [1, L]

A pair model (``SequenceModel(pair=True)``, a dual encoder) exports from rest (``with_state=False``) with u
(B, 2, L, m) (or (B, 2, L) token ids), and with ``lengths=True`` ``lengths`` (B, 2), each document's own length, as its
``forward(lengths=)``; ``info`` is then a `PairOnnxExport`, whose ``feed`` checks them so
(:mod:`ssmkit.analysis.onnx_pair`). A bidirectional Mega without chunks reads its simple bias at offsets clamped to
its table (`_MaskedMega`), so a padded batch longer than ``max_positions`` whose items fit runs exactly, as in torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.analysis.onnx_export import (
    OnnxExport,
    RealLTIStep,
    _example_input,
    _flatten,
    _float_dtype,
    _replace_lti_layers,
    _bidirectional_layers,
    _outer_layers,
    _refuse_bidirectional,
    _state_parts,
    _unflatten,
    _write_graph,
)
from ssmkit.analysis.onnx_pair import PairOnnxExport, check_pair_export, pair_example
from ssmkit.analysis.statespace import StateSpace
from ssmkit.layers.protocol import SequenceLayer, float32_core
from ssmkit.ops.symbolic import chunk_count, keep_first, scan, symbolic_length
from ssmkit.utils import length_mask, unit_gaps_after

__all__ = ["RealLTISequence", "SequenceFunction", "export_onnx_sequence", "real_sequence_model"]


def _real_matrices(step: RealLTIStep) -> tuple[np.ndarray, ...]:
    """(A (G, n, n), B (G, n, m), C (G, p, n), D (G, p, m)) float64 in the basis of ``step``'s state, flattened per
    group: a modal state (G, M, 2) becomes n = 2M entries (Re x_k, Im x_k) in mode order."""
    get = lambda name: getattr(step, name).detach().double().cpu().numpy()  # noqa: E731
    D = get("D")
    if step.kind == "diagonal":
        a = get("a")
        return np.einsum("gi,ij->gij", a, np.eye(a.shape[1])), get("B"), get("C"), D
    if step.kind == "dense":
        return get("A"), get("B"), get("C"), D
    lr, li = get("lam_re"), get("lam_im")  # (G, M)
    G, M = lr.shape
    A = np.zeros((G, M, 2, M, 2))
    k = np.arange(M)
    A[:, k, 0, k, 0], A[:, k, 0, k, 1] = lr, -li  # Re x' = Re λ Re x - Im λ Im x
    A[:, k, 1, k, 0], A[:, k, 1, k, 1] = li, lr  # Im x' = Im λ Re x + Re λ Im x
    B = np.stack([get("B_re"), get("B_im")], axis=2).reshape(G, 2 * M, -1)  # (G, M, 2, m) -> (G, 2M, m)
    C = np.stack([get("C_re"), -get("C_im")], axis=3).reshape(G, -1, 2 * M)  # y = C_re Re x - C_im Im x
    return A.reshape(G, 2 * M, 2 * M), B, C, D


def default_chunk(m: int, p: int, n: int) -> int:
    """The chunk length T: the power of two nearest √((n² + c)/(m·p)), within [1, 64]; c = 50 000.

    Per step and sequence the Toeplitz GEMM costs T·m·p multiply-adds, the input and output GEMMs (m + p)·n, and the
    carry n²/T (one n×n product per chunk); each chunk also costs onnxruntime one ``Scan`` iteration, ~c multiply-adds'
    worth at batch size 1. T = √((n² + c)/(m·p)) minimises the sum: 64 (the cap: the diagonal scan's CPU optimum) for
    single-input single-output groups (S4D, S4, EMA); for S5 and LRU (m = p = H) 2 at H 128, 16 at H 16. Measured in
    onnxruntime, one thread (docs/benchmarks.md, "Whole-sequence ONNX"): S5 (H 128, B 8, L 4 096) 153 ms at T = 2
    against 245 ms at T = 8; at H 16, B 1, L 16 384, 11 ms at T = 16 against 58 ms at T = 1.

    Args:
        m: inputs per group.
        p: outputs per group.
        n: real states per group.

    Returns:
        T.
    """
    best = math.sqrt((n * n + 50_000) / (m * p))
    return int(min(64, max(1, 2 ** round(math.log2(best)))))


class RealLTISequence(RealLTIStep):
    """A whole sequence of an LTI layer's exported realisation in real arithmetic, for any L (module docstring).

    Its ``step``, ``initial_state`` and state layout are `RealLTIStep`'s; ``forward`` runs the chunked algorithm from
    precomputed real operators (computed in float64 from the realisation, stored in ``dtype``).

    Args:
        system: the layer's ``state_space()`` (G systems, m inputs, p outputs each).
        dtype: real dtype of the operators and the state (float32 or float64).
        chunk_size: T, or None for `default_chunk`.
    """

    # a causal layer: a Block given a padding mask (``SequenceModel.forward(..., lengths=)``) runs it as it is
    bidirectional = False

    def __init__(self, system: StateSpace, dtype: torch.dtype = torch.float32, chunk_size: int | None = None) -> None:
        super().__init__(system, dtype=dtype)
        A, B, C, D = _real_matrices(RealLTIStep(system, dtype=torch.float64))
        G, n, m = B.shape
        p = C.shape[1]
        T = default_chunk(m, p, n) if chunk_size is None else chunk_size
        if not (isinstance(T, int) and T >= 1):
            raise ValueError(f"chunk_size must be None or an int >= 1; got {chunk_size!r}")
        self.T, self.n_real = T, n
        # A^j B and C A^t (j, t < T) by products with the previous term: no list of the T matrix powers A^j (for S4 at
        # H 128, N 64, T 64 those held 272 MB of float64)
        P, CA = [B], [C]  # (G, n, m) and (G, p, n) each
        for _ in range(T - 1):
            P.append(A @ P[-1])
            CA.append(CA[-1] @ A)
        P = np.stack(P, axis=1)  # (G, T, n, m): A^j B
        K = np.concatenate([D[:, None], np.einsum("gpn,gjnm->gjpm", C, P[:, : T - 1])], axis=1)  # (G, T, p, m)
        toeplitz = np.zeros((G, T, m, T, p))  # [g, s, i, t, o] = K_{t-s}[o, i] for t >= s
        for s in range(T):
            toeplitz[:, s, :, s:, :] = K[:, : T - s].transpose(0, 3, 1, 2)
        to_state = P[:, ::-1].transpose(0, 1, 3, 2)  # (G, T, m, n): [g, s, i] = (A^{T-1-s} B)[:, i]
        from_state = np.stack(CA, axis=1).transpose(0, 3, 1, 2)  # (G, n, T, p): [g, :, t] = (C A^t)ᵀ
        squarings = [A]  # A^{2^k}, k = 0..K-1, enough bits for r <= T
        while len(squarings) < T.bit_length():
            squarings.append(squarings[-1] @ squarings[-1])
        as_t = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
        self.register_buffer("toeplitz", as_t(toeplitz.reshape(G, T * m, T * p)))
        self.register_buffer("to_state", as_t(to_state.reshape(G, T * m, n)))
        self.register_buffer("from_state", as_t(from_state.reshape(G, n, T * p)))
        A_T = np.linalg.matrix_power(A, T)  # (G, n, n)
        self.register_buffer("carry_T", as_t(A_T.transpose(0, 2, 1)))  # (G, n, n): h @ (A^T)ᵀ
        self.register_buffer("tail_in", as_t(P))  # (G, T, n, m)
        self.register_buffer("squarings", as_t(np.stack(squarings, 1).transpose(0, 1, 3, 2)))  # (G, K, n, n), ᵀ

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, return_state: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, L, G·m) -> y (B, L, G·p) and the final state, from ``state`` (None: zeros).

        Args:
            x: (B, L, G·m) input.
            state: (B, *state_shape()) or None.
            return_state: also compute the final state.

        Returns:
            y (B, L, G·p) in x's dtype, and the final state (B, *state_shape()) (None when not asked for).
        """
        G, m, p, n, T = self.G, self.m, self.p, self.n_real, self.T
        if x.dim() != 3 or x.shape[-1] != G * m:
            raise ValueError(f"x must be (B, L, {G * m}); got {tuple(x.shape)}")
        Bsz, L, _ = x.shape
        symbolic = symbolic_length(L)
        nc = chunk_count(L, T)  # while exporting with a symbolic L, one more chunk, all padding (ops/symbolic.py)
        last = -2 if symbolic else -1  # the last chunk with real steps
        r = L - (nc + last) * T  # its real steps, 1..T
        u = F.pad(x.to(self.dtype), (0, 0, 0, nc * T - L))  # (B, nc·T, G·m); zeros after the end
        u_c = u.reshape(Bsz * nc, T, G, m).permute(2, 0, 1, 3).contiguous().reshape(G, Bsz * nc, T * m)  # (G, B·nc, T·m)
        y = torch.bmm(u_c, self.toeplitz)  # (G, B·nc, T·p): Σ_{s≤t} K_{t-s} u_s
        z = torch.bmm(u_c, self.to_state).reshape(G, Bsz, nc, n)  # (G, B, nc, n): Σ_s A^{T-1-s} B u_s
        h0 = (state.to(self.dtype).reshape(Bsz, G, n).transpose(0, 1).contiguous() if state is not None
              else torch.zeros(G, Bsz, n, dtype=self.dtype, device=x.device))  # (G, B, n)
        before = self._carry(z, h0, symbolic)  # (G, B, nc, n): the state before each chunk
        y = torch.baddbmm(y, before.reshape(G, Bsz * nc, n), self.from_state)  # + C A^t x_c
        y = y.reshape(G, Bsz, nc * T, p).permute(1, 2, 0, 3).contiguous().reshape(Bsz, nc * T, G * p)
        y = keep_first(y, 1, L).to(x.dtype)  # (B, L, G·p)
        if not return_state:
            return y, None
        u_tail = u.reshape(Bsz, nc, T, G, m)[:, last].permute(2, 0, 1, 3)  # (G, B, T, m)
        h = self._tail(before[:, :, last], u_tail, r)  # (G, B, n)
        return y, h.transpose(0, 1).reshape((Bsz,) + self.state_shape())

    def _carry(self, z: torch.Tensor, h0: torch.Tensor, symbolic: bool) -> torch.Tensor:
        """The states before the chunks, x_{c+1} = A^T x_c + z_c from x_0 = h0: (G, B, nc, n)."""
        if symbolic:  # one scan op over the symbolic chunk count (an ONNX Scan)
            def body(h, zs, consts):
                return torch.baddbmm(zs[0], h, consts[0]), h.clone()  # (the output may not alias the carry)

            # the carry must keep its strides, also those of a size-1 axis (G = 1): the standard ones, in and out
            h0 = torch.empty(h0.shape, dtype=h0.dtype, device=h0.device).copy_(h0)
            return scan(body, h0, (z.clone(),), dim=2, constants=(self.carry_T,))[1]
        states = [h0]
        for c in range(z.shape[2] - 1):
            states.append(torch.baddbmm(z[:, :, c], states[-1], self.carry_T))
        return torch.stack(states, dim=2)

    def _tail(self, h: torch.Tensor, u_tail: torch.Tensor, r) -> torch.Tensor:
        """The state after the first r steps of a chunk, A^r h + Σ_{s<r} A^{r-1-s} B u_s, for an int or symbolic r.

        Args:
            h: (G, B, n) the state before the chunk.
            u_tail: (G, B, T, m) the chunk's inputs (zeros after r).
            r: 1..T.

        Returns:
            (G, B, n).
        """
        e = r - 1 - torch.arange(self.T, device=h.device)  # (T,): r-1-s, a tensor also for a symbolic r
        weights = torch.where((e >= 0)[None, :, None, None], self.tail_in[:, e.clamp(min=0)], 0)  # (G, T, n, m)
        h_in = torch.einsum("gtnm,gbtm->gbn", weights, u_tail)
        r_t = e[0] + 1  # () r as a tensor
        for k in range(self.squarings.shape[1]):  # A^r h = Π_k (A^{2^k})^{bit k of r} h
            bit = torch.bitwise_and(torch.bitwise_right_shift(r_t, k), 1) == 1
            h = torch.where(bit, torch.bmm(h, self.squarings[:, k]), h)
        return h + h_in


class RealBidirectionalSequence(nn.Module):
    """A bidirectional diagonal layer over a whole sequence from rest, in real arithmetic, for any L: the causal scan
    of the sequence plus the causal scan of the time-reversed sequence, reversed (arXiv 2111.00396's two-sided
    kernel), each a `RealLTISequence` of the layer's realisation of one direction (`bidirectional_systems`):

        y_t = Σ_{s≤t} K0[t-s] u_s + Σ_{s≥t+δ} K1[s-t-δ] u_s

    S4, S4D, DSS, DLR and EMA (δ = 1, tap 0 of K1 at lag -1: in reversed time τ = L-1-t the anti-causal output is
    z_{τ-1}, z the scan's output, z_{-1} = 0); S5 and LRU (δ = 0: the backward scan includes the current input, its
    own skip being 0). The layer's own forward computes a kernel of the concrete length L (``vandermonde``), which
    torch.export cannot do at a symbolic length; the chunked scans here take any L.

    Right padding (``mask`` (B, L), True at each sequence's steps, as ``ssmkit.models.Block`` hands a layer that
    declares ``takes_mask``): the input is read as 0 at the padding. Both sums are linear in u with no bias, so a zero
    adds exactly 0, and at t < n_b the anti-causal sum reads u_s for t < s < n_b only, starting from rest at the item's
    own end: each item's outputs at its steps are its unpadded sequence's, as the layer's own forward with a mask.

    Args:
        causal: the causal direction's system (with the skip D).
        anticausal: the anti-causal direction's system in reversed time (no skip of the layer's; its feedthrough
            is the kernel's tap 0, K1[0], in the exported convention of ``StateSpace.from_ssm``).
        delay: δ, 1 or 0.
        dtype: real dtype of the operators (float32 or float64).
        chunk_size: T of both scans, or None for `default_chunk`.
    """

    bidirectional = True
    takes_mask = True  # forward(x, mask=...): Block hands it the padding mask of SequenceModel.forward(..., lengths=)

    def __init__(self, causal: StateSpace, anticausal: StateSpace, delay: int, dtype: torch.dtype = torch.float32,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        if delay not in (0, 1):
            raise ValueError(f"delay must be 0 or 1; got {delay!r}")
        self.causal = RealLTISequence(causal, dtype, chunk_size)
        self.anticausal = RealLTISequence(anticausal, dtype, chunk_size)
        self.delay = delay
        self.T = max(self.causal.T, self.anticausal.T)  # the exporter's example length reads it

    def supports(self, capability: str) -> bool:
        """No ``kernel``, ``state_space`` or ``step`` method (a Block asks before it hands over its mask).

        Args:
            capability: the capability's name.

        Returns:
            False.
        """
        return False

    def forward(self, x: torch.Tensor, state: None = None, return_state: bool = False, *,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """x (B, L, H) -> y (B, L, H) from rest (a bidirectional layer has no state).

        Args:
            x: (B, L, H) input.
            state: must be None.
            return_state: ignored (no state).
            mask: (B, L) bool, True at each sequence's steps and False at its right padding, which is read as 0
                (class docstring), or None: every step.

        Returns:
            y (B, L, H) in x's dtype (unspecified at the padding), and None.
        """
        if state is not None:
            raise ValueError("a bidirectional layer has no recurrent state: pass state=None")
        if mask is not None:
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"mask must be a (B, L) bool tensor of x's (B, L) = {tuple(x.shape[:2])}; got "
                                 f"{tuple(mask.shape)} {mask.dtype}")
            x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        y, _ = self.causal(x, None, return_state=False)
        z, _ = self.anticausal(x.flip(1), None, return_state=False)  # (B, L, H): z_τ, τ = L-1-t
        if self.delay:
            z = keep_first(F.pad(z, (0, 0, 1, 0)), 1, x.shape[1])  # z_{τ-1}, z_{-1} = 0
        return y + z.flip(1), None


def bidirectional_systems(layer: nn.Module) -> tuple[StateSpace, StateSpace, int] | None:
    """The causal and the (time-reversed) anti-causal system of a bidirectional diagonal layer and the delay δ of
    `RealBidirectionalSequence`, or None for a layer of another kind.

    A SISO diagonal bank (``DiagonalLTILayer``: S4D, DSS, DLR; EMA through ``directions()``, each direction its own
    modes): (Ā, B̄, C[0], D) and (Ā, B̄, C[1], 0) by ``StateSpace.from_diagonal``, δ = 1. A MIMO diagonal layer (S5,
    LRU): ``StateSpace.from_diagonal_mimo`` likewise, δ = 0 (``ssmkit.layers.mimo``: both scans include u_t). S4
    (DPLR, exactly the class: a subclass may change the forward): `_s4_systems`, δ = 1.

    Args:
        layer: a sequence layer with ``bidirectional=True``.

    Returns:
        (causal, anticausal, δ), or None.
    """
    from ssmkit.layers.diagonal import DiagonalLTILayer
    from ssmkit.layers.mimo import MIMODiagonalLTILayer
    from ssmkit.layers.s4 import S4

    with torch.no_grad():
        if type(layer) is S4:
            return _s4_systems(layer)
        if isinstance(layer, DiagonalLTILayer):
            if callable(getattr(layer, "directions", None)):  # EMA: (2, H, N) each
                A_bar, B_bar, C = (t.detach().cpu() for t in layer.directions())
            else:  # the modes shared: (H, M), (H, M), (2, H, M)
                A_bar, B_bar, C = (t.detach().cpu() for t in layer.discrete())
                A_bar, B_bar = torch.stack([A_bar, A_bar]), torch.stack([B_bar, B_bar])
            make, delay = StateSpace.from_diagonal, 1
        elif isinstance(layer, MIMODiagonalLTILayer):
            A_bar, B_bar, C = (t.detach().cpu() for t in layer.discrete())  # (M,), (M, H), (2, H, M)
            A_bar, B_bar = torch.stack([A_bar, A_bar]), torch.stack([B_bar, B_bar])
            make, delay = StateSpace.from_diagonal_mimo, 0
        else:
            return None
        D = layer.D.detach().cpu()
        causal = make(A_bar[0], B_bar[0], C[0], D, conjugate_pairs=False)
        anticausal = make(A_bar[1], B_bar[1], C[1], None, conjugate_pairs=False)
    return causal, anticausal, delay


def _s4_systems(layer: nn.Module) -> tuple[StateSpace, StateSpace, int]:
    """The two directions of a bidirectional S4 layer (arXiv 2111.00396) as real dense systems, and δ = 1.

    S4's two-sided kernel is K_c[l] = C_c,trueᵀ Ā^l B̄ (c = 0 causal, 1 anti-causal; one Ā, B̄, two C̃), applied as
    y_t = Σ_{s≤t} K_0[t-s] u_s + Σ_{s>t} K_1[s-t-1] u_s + D u_t (``bidirectional_conv``: tap 0 of K_1 at lag -1).
    The trained C̃_c = (I - Ā^{l_max})ᵀ C_c,true are solved for C_c,true (``S4._C_true``, as ``state_space`` does);
    the kernel at any length, attuned by doubling, is that of C_c,true, so the scans hold at every L. Each direction
    is ``StateSpace.from_ssm`` of (Ā, B̄, [2 Re C_c,true, -2 Im C_c,true]) in the real basis z = [Re x, Im x] of the
    half state (``S4._real_system``), with the skip D on the causal one.

    Args:
        layer: an S4 layer with ``bidirectional=True``.

    Returns:
        (causal, anticausal, 1).
    """
    from ssmkit.layers.s4 import _to_real_row

    with torch.no_grad():
        A_z, B_z = (t.detach().cpu() for t in layer._real_system())  # (H, N, N), (H, N) float64
        C_z = _to_real_row(layer._C_true().detach().cpu())  # (2, H, N)
        D = layer.D.detach().cpu().to(torch.float64)[:, None, None]  # (H, 1, 1)
        causal = StateSpace.from_ssm(A_z, B_z[..., None], C_z[0][:, None, :], D)
        anticausal = StateSpace.from_ssm(A_z, B_z[..., None], C_z[1][:, None, :], torch.zeros_like(D))
    return causal, anticausal, 1


def _replace_bidirectional_layers(converted: nn.Module, chunk_size: int | None) -> nn.Module:
    """Replace every bidirectional diagonal layer of ``converted`` (a copy) by its `RealBidirectionalSequence`."""
    for name, layer in _bidirectional_layers(converted):
        systems = bidirectional_systems(layer)
        if systems is None:
            continue
        dtype = next((t.dtype for t in layer.parameters() if t.is_floating_point()), torch.float32)
        replacement = RealBidirectionalSequence(*systems, dtype=dtype, chunk_size=chunk_size).to(layer.state_device())
        if not name:
            return replacement
        parent_name, _, child = name.rpartition(".")
        setattr(converted.get_submodule(parent_name) if parent_name else converted, child, replacement)
    return converted


def real_sequence_model(model: nn.Module, chunk_size: int | None = None) -> nn.Module:
    """A copy of ``model`` (eval mode) whose LTI layers are replaced by their `RealLTISequence`: its ``forward``,
    ``step`` and ``initial_state`` then use real states only, and equal the model's.

    Args:
        model: a SequenceModel, a DeepWiener or any module whose ``forward(u, state)`` calls its layers.
        chunk_size: T of every replaced layer, or None for `default_chunk`.

    Returns:
        the converted copy (the original is untouched), without a SequenceModel's ``check_finite``.

    Raises:
        ValueError: a layer's parameters are float16/bfloat16 (convert with ``.float()``).
    """
    return _replace_lti_layers(model, lambda system, dtype: RealLTISequence(system, dtype, chunk_size))


class SequenceFunction(nn.Module):
    """``(u, *state parts) -> (y, *final state parts)``: a model's forward with a flat list of real state tensors;
    with ``with_intervals``, ``(u, intervals, *state parts)`` and ``forward(u, state, intervals=intervals)``; with
    ``with_lengths``, the lengths (B,) follow (after the intervals), ``forward(u, state, lengths=lengths)`` (a pair
    model's (B, 2), with u (B, 2, L, ...)).

    A bare sequence layer takes no lengths: it reads u as 0 after each length (as ``SequenceModel`` reads real
    padding), and a bidirectional one that declares ``takes_mask`` gets the mask too (`RealBidirectionalSequence`,
    Mega's `_MaskedMega`: its attention skips the padded keys), as ``ssmkit.models.Block`` hands them theirs.

    Args:
        model: a model with ``forward(u, state, return_state=True)`` and ``initial_state(batch_size)``.
        with_state: False for ``u -> y`` from rest (no state in or out).
        with_intervals: the second input is the intervals (B, L) handed to ``forward``.
        with_lengths: the next input is the lengths (B,) of right-padded sequences.
    """

    def __init__(self, model: nn.Module, with_state: bool = True, with_intervals: bool = False,
                 with_lengths: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_state = with_state
        self.with_intervals = with_intervals
        self.with_lengths = with_lengths
        self.takes_lengths = _takes_lengths(model)
        self._template = model.initial_state(1) if with_state else None

    def forward(self, u: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A whole sequence: u (B, L, m) (or token ids (B, L)), [the intervals (B, L)], [the lengths (B,)] and the
        flat state parts -> y and the final parts (without state: u -> y, from rest)."""
        extra = {"intervals": inputs[0]} if self.with_intervals else {}
        lengths = inputs[int(self.with_intervals)] if self.with_lengths else None
        state = inputs[int(self.with_intervals) + int(self.with_lengths):]
        structured = _unflatten(self._template, list(state))[0] if self.with_state else None
        y, new = self._run(u, structured, extra, lengths)
        return (y, *_flatten(new)) if self.with_state else (y,)

    def _run(self, u: torch.Tensor, state, extra: dict, lengths: torch.Tensor | None):
        """``model(u, state, return_state=with_state, **extra)``, with the lengths when there are (class docstring)."""
        if lengths is None:
            return self.model(u, state, return_state=self.with_state, **extra)
        if self.takes_lengths:
            return self.model(u, state, return_state=self.with_state, lengths=lengths, **extra)
        mask = length_mask(lengths, u.shape[1])  # (B, L): a bare layer
        u = torch.where(mask[..., None], u, torch.zeros((), dtype=u.dtype, device=u.device))  # (NaN padding too)
        if "intervals" in extra:
            extra = {"intervals": unit_gaps_after(extra["intervals"], lengths)}
        if state is None and getattr(self.model, "bidirectional", False) and getattr(self.model, "takes_mask", False):
            return self.model(u, None, return_state=False, mask=mask, **extra)
        return self.model(u, state, return_state=self.with_state, **extra)


def _takes_lengths(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``lengths`` (a SequenceModel's does)."""
    return "lengths" in inspect.signature(model.forward).parameters


class _MaskedMega(nn.Module):
    """A bidirectional Mega (its EMA core already a `RealBidirectionalSequence`) with a padding mask, traceable at a
    symbolic length.

    ``Mega.forward(x, mask=)`` runs to the longest item's end only, a data-dependent length torch.export cannot trace;
    this runs the layer's masked whole-sequence computation over the whole padded length instead. The EMA reads 0 at
    the padding and attention gives the padded keys weight 0 (Mega's own masking; the relative bias is a function of
    i - j, the same at any length), so at each item's steps the outputs are the shorter call's: its unpadded
    sequence's alone.

    Without chunks, the simple bias b_rel[i, j] is a table of the offsets |i - j| < P = ``max_positions``: Mega's own
    forward reads a padded batch of L > P whose items are all at most P long (it stops at the longest), where a graph
    over the whole L indexed the table out of range (onnxruntime refused the run). Here the table is read at the
    offset clamped to [-(P-1), P-1]: within an item of n <= P steps no offset is clamped, and its padded keys get weight
    0 whatever their bias, so its outputs are exact; an item longer than P (its forward raises ``ValueError``) gets NaN
    outputs instead of a clamped answer.

    Args:
        mega: the bidirectional Mega layer (a converted copy; its relative bias is replaced so, without chunks).
    """

    bidirectional = True
    takes_mask = True

    def __init__(self, mega: nn.Module) -> None:
        super().__init__()
        self.mega = mega
        self.d_model = mega.d_model
        self.reach = mega.span if mega.chunk_size is None and mega.positional == "simple" else None
        if self.reach is not None:  # (the copy's own method: torch.export traces the clamped table)
            mega._relative_bias = types.MethodType(_clamped_simple_bias, mega)

    def supports(self, capability: str) -> bool:
        """The layer's own answer.

        Args:
            capability: ``"kernel"``, ``"state_space"`` or ``"step"``.

        Returns:
            whether the Mega layer has it.
        """
        return self.mega.supports(capability)

    def forward(self, x: torch.Tensor, state: None = None, return_state: bool = False, *,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """x (B, L, H) -> y (B, L, H) from rest, the padding (``mask`` False) absent to every step.

        Args:
            x: (B, L, H) input.
            state: must be None (a bidirectional Mega has none).
            return_state: ignored (no state).
            mask: (B, L) bool, True at each sequence's steps, or None: every step.

        Returns:
            y (B, L, H) in x's dtype (unspecified at the padding; NaN for an item longer than ``max_positions``
            without chunks), and None.
        """
        if mask is None and self.reach is None:
            return self.mega(x, state, return_state)
        if state is not None:
            raise ValueError("a bidirectional Mega has no recurrent state: pass state=None")
        if mask is None:  # every step (the item's length L, which may exceed the table: a tensor, not a branch)
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        with float32_core(x.device.type):
            y, _ = self.mega._mega(x.to(self.mega.W_v.dtype), None, False, mask=mask)
        if self.reach is not None:  # n_b, the end of each item's steps: NaN beyond the table (forward raises there)
            ends = torch.where(mask, torch.arange(1, x.shape[1] + 1, device=x.device), 0).amax(-1)  # (B,)
            y = torch.where((ends > self.reach)[:, None, None], float("nan"), y)
        return y.to(x.dtype), None


def _clamped_simple_bias(mega: nn.Module, T: int, K: int, offset: int, device: torch.device) -> torch.Tensor:
    """Mega's simple relative bias b_rel[i, j] (queries at offset..offset+T-1, keys at 0..K-1: (T, K)) read at the
    offset d = i - j clamped to [-(P-1), P-1], P = ``max_positions`` (`_MaskedMega`): the table's own entry
    P - 1 - d wherever |d| < P, the edge's beyond (no ``ValueError``, which torch.export cannot branch on)."""
    d = torch.arange(offset, offset + T, device=device)[:, None] - torch.arange(K, device=device)  # (T, K)
    edge = mega.span - 1
    return mega.rel_bias[edge - d.clamp(-edge, edge)]


def _traceable_masks(converted: nn.Module) -> nn.Module:
    """``converted`` (a copy) ready for a padding mask (the graphs with a lengths input): each bidirectional Mega
    wrapped in `_MaskedMega` (the causal stand-ins, `RealLTISequence` and `RealLiquidS4`, say ``bidirectional =
    False`` themselves, which a Block given a mask reads)."""
    from ssmkit.layers.mega import Mega

    for name, layer in _outer_layers(converted):
        if not (isinstance(layer, Mega) and layer.bidirectional):
            continue
        if not name:
            return _MaskedMega(layer)
        parent_name, _, child = name.rpartition(".")
        setattr(converted.get_submodule(parent_name) if parent_name else converted, child, _MaskedMega(layer))
    return converted


def export_onnx_sequence(
    model: nn.Module,
    path: str,
    batch_size: int | None = None,
    max_length: int = 1 << 24,
    chunk_size: int | None = None,
    with_state: bool = True,
    opset_version: int = 18,
    intervals: bool = False,
    lengths: bool = False,
) -> OnnxExport:
    """Write ``model``'s forward as an ONNX graph ``(u, state_0, ...) -> (y, next_state_0, ...)`` for any sequence
    length in [2, max_length] (module docstring), with a dynamic batch axis unless ``batch_size`` is given. Without
    ``intervals`` the graph is the regularly sampled model. With ``intervals=True`` it is ``(u, intervals, state_0,
    ...) -> (y, next_state_0, ...)`` computing ``model(u, state, intervals=intervals)``: ``intervals`` (B, L) in the
    parameters' float dtype, the time from the previous sample to each sample in nominal sampling periods, for a model
    whose layers all take intervals; its LTI layers run at those gaps in real arithmetic
    (:mod:`ssmkit.analysis.onnx_irregular`: a ``Scan`` over time whose body is their step, its coefficients formed
    from the gap), the gated layers keep their own forward with the intervals. The states are the regular graphs'
    (the step graph with ``intervals=True`` continues a record where this one stopped).

    With ``lengths=True`` the graph takes ``lengths`` (B,) int64 after ``u`` (and the intervals): each right-padded
    sequence's length in [1, L], computing ``model(u, state, lengths=lengths)`` (without it, a padded batch is read
    whole: a bidirectional layer's anti-causal scan starts at L, not at each item's end, and a pool averages the
    padding, so the shorter items' answers are wrong, silently). The padding is read as 0, the bidirectional layers
    give each item its unpadded sequence's outputs (their scans read zeros after its end, which add nothing; Mega masks
    its attention keys too), and pooling takes each item's own steps; the states are those after all L steps, as
    ``forward``'s. A bare sequence layer reads u as 0 after each length. ``OnnxExport.feed`` checks the values
    (the graph cannot: a length above L reads every step).

    A pair model (``pair=True``) is written from rest only (``with_state=False``), without intervals: u (B, 2, L, m)
    (or (B, 2, L) token ids), B and L dynamic, and with ``lengths=True`` ``lengths`` (B, 2) int64, each pair's two
    documents' lengths (:mod:`ssmkit.analysis.onnx_pair`); each pair's logits are those of its two unpadded documents.

    Needs ``onnx`` and ``onnxscript`` (``pip install ssmkit[onnx]``).

    Args:
        model: a SequenceModel (real inputs (B, L, d_input) or token ids (B, L); a pair model's (B, 2, L, d_input)
            or (B, 2, L)) or a DeepWiener, on any device (the graph is traced from a CPU copy).
        path: the ONNX file to write.
        batch_size: None (default) for a dynamic batch axis; an int B fixes it.
        max_length: the longest L the graph declares (torch.export's range of the length axis).
        chunk_size: T of the LTI layers' chunked algorithm, or None for `default_chunk` (None with ``intervals``).
        with_state: False for a graph ``u -> y`` from rest, with no state in or out: then the layers whose state
            grows with the sequence (attention's key/value cache, Mega, Hyena) export too.
        opset_version: the ONNX opset.
        intervals: add the input ``intervals`` (above).
        lengths: add the input ``lengths`` (above), for a model whose forward takes ``lengths`` (a SequenceModel)
            or a bare sequence layer; (B, 2) for a pair model.

    Returns:
        an :class:`OnnxExport` describing the graph (its states are the step graph's, `onnx_state` maps a model
        state onto them; none without state; ``lengths_name`` says whether it has the lengths input); for a pair
        model a `PairOnnxExport` (its ``feed`` takes u (B, 2, L, ...) and lengths (B, 2)).

    Raises:
        NotImplementedError: a layer's state is complex or grows, or its forward could not be converted (the message
            names it); with ``with_state=True``, a bidirectional layer (it has no state: export it from rest) or a pair
            model (it classifies whole pairs).
        ValueError: with ``intervals=True``, a layer that takes no intervals (or a bidirectional one), or a pair
            model; with ``lengths=True``, a model whose forward takes no lengths (a DeepWiener).
    """
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be None (a dynamic batch axis) or an int >= 1; got {batch_size!r}")
    if not (isinstance(max_length, int) and max_length >= 3):
        raise ValueError(f"max_length must be an int >= 3; got {max_length!r}")
    if not isinstance(intervals, bool):
        raise ValueError(f"intervals must be a bool; got {intervals!r}")
    if not isinstance(lengths, bool):
        raise ValueError(f"lengths must be a bool; got {lengths!r}")
    if lengths and not (isinstance(model, SequenceLayer) or _takes_lengths(model)):
        raise ValueError(f"lengths=True: {type(model).__name__}'s forward takes no lengths (each right-padded "
                         "sequence's length); export a SequenceModel or a sequence layer with it, or run each record "
                         "at its own length")
    if not isinstance(with_state, bool):
        raise ValueError(f"with_state must be a bool; got {with_state!r}")
    pair = getattr(model, "pair", False) is True  # a dual encoder: u (B, 2, L, ...), lengths (B, 2), no state
    if pair:
        check_pair_export(with_state, intervals)
    if intervals:  # traced on the CPU whatever the model's device
        from ssmkit.analysis.onnx_irregular import irregular_model

        if chunk_size is not None:
            raise ValueError("chunk_size is the regular graph's chunk length; with intervals=True the LTI layers run "
                             "one step per Scan iteration (ssmkit.analysis.onnx_irregular): leave it None")
        converted = irregular_model(model).cpu()
    else:
        converted = _replace_bidirectional_layers(real_sequence_model(model, chunk_size), chunk_size).cpu()
    # a padding mask reaches the layers with lengths=True and with a pad_id (before, a token model with pad_id and a
    # bidirectional Mega, or Liquid-S4 from rest, failed to export)
    converted = _traceable_masks(converted)
    example_b = batch_size or 2  # torch.export specialises a size-1 axis
    example_l = min(max_length, 2 * max((getattr(m, "T", 1) for m in converted.modules()), default=1) + 3)
    step_input = _example_input(model, example_b).cpu()
    if pair:
        u, example_lengths = pair_example(step_input, example_l, lengths)
    else:
        u = step_input[:, None].expand((example_b, example_l) + tuple(step_input.shape[1:])).contiguous()
        example_lengths = example_l - torch.arange(example_b, dtype=torch.int64) % example_l if lengths else None
    if with_state:
        _refuse_bidirectional(model, f"{type(model).__name__}'s forward with a state",
                              "export it from rest with with_state=False")
    try:
        state = _state_parts(converted, example_b) if with_state else []
    except NotImplementedError as err:
        if "growing" not in str(err):
            raise
        raise NotImplementedError(f"{err}; with_state=False exports the forward from rest, without a state") from None
    length = torch.export.Dim("length", min=2, max=max_length)
    batch = torch.export.Dim("batch") if batch_size is None else None
    time_axis = 2 if pair else 1  # u (B, 2, L, ...) of a pair model
    dims_u = {time_axis: length} if batch is None else {0: batch, time_axis: length}
    # (u, *inputs), inputs = ([intervals (B, L): the axes of u's], [lengths (B,)], *state)
    batch_only = {0: batch} if batch is not None else {}
    rest = (((dims_u,) if intervals else ()) + ((batch_only,) if lengths else ())
            + tuple({0: batch} if batch is not None else {} for _ in state))
    dynamic = (dims_u, rest) if rest else (dims_u,)
    interval = ("intervals", torch.ones(u.shape[:2], dtype=_float_dtype(model))) if intervals else None
    # autograd off: with it on, torch traced the scan op's autograd form, which failed on Mamba's
    try:
        info = _write_graph(SequenceFunction(converted, with_state, intervals, lengths).eval(), u, state, path,
                            dynamic, opset_version, batch_size, grad=False, what=f"{type(model).__name__}'s forward",
                            check=lambda partial: _check_dynamic_length(partial, type(model).__name__, time_axis),
                            interval=interval, lengths=example_lengths)
    except NotImplementedError as err:
        left = _unconverted_bidirectional(converted)  # those without a real two-direction realisation: their forward
        if not left:
            raise
        name, layer = left[0]
        raise NotImplementedError(
            f"layer {name or '(the model)'!r} ({type(layer).__name__}) is bidirectional and has no real two-scan "
            "realisation here, so its own forward (a two-sided kernel of the concrete length, complex arithmetic) was "
            "traced and could not be converted; the LTI layers (S4, S4D, DSS, DLR, EMA, S5, LRU) export "
            f"bidirectionally from rest, as two real scans ({err})"
        ) from err
    return PairOnnxExport(**{f.name: getattr(info, f.name) for f in dataclasses.fields(info)}) if pair else info


def _unconverted_bidirectional(converted: nn.Module) -> list[tuple[str, nn.Module]]:
    """The bidirectional layers of ``converted`` that kept their own two-sided forward: not a Mega (its EMA core is
    a `RealBidirectionalSequence` there; before, a Mega that failed for another reason, its attention's span, was
    blamed on a two-sided kernel in complex arithmetic)."""
    from ssmkit.layers.mega import Mega

    return [(name, layer) for name, layer in _bidirectional_layers(converted) if not isinstance(layer, Mega)]


def _check_dynamic_length(path: Path, name: str, axis: int = 1) -> None:
    """Raise unless the graph's input ``u`` has a symbolic length axis (``axis``: 1, or 2 for pairs (B, 2, L, ...)).

    When torch.export cannot keep L symbolic, the ONNX exporter falls back to a draft export that specialises L to the
    example's length and writes a graph for that one length, with a warning only.
    """
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    if len(dims) <= axis or not dims[axis].dim_param:
        raise NotImplementedError(
            f"{name}'s forward was exported for one sequence length only "
            f"({dims[axis].dim_value if len(dims) > axis else '?'}): "
            "a layer's forward branches on L; export the step with export_onnx instead"
        )
