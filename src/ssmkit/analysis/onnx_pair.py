"""The whole-sequence ONNX graph of a pair model (``SequenceModel(pair=True)``: a dual encoder, LRA retrieval, arXiv
2011.04006): ``(u, [lengths]) -> (logits,)`` from rest.

    info = ssmkit.analysis.export_onnx_sequence(matcher, "matcher.onnx", with_state=False, lengths=True)
    session = onnxruntime.InferenceSession("matcher.onnx")
    logits, = session.run(None, info.feed(u_pairs, lengths=lengths))    # u (B, 2, L, m), lengths (B, 2)

``u`` holds B pairs of right-padded documents, (B, 2, L, d_input) or (B, 2, L) token ids, B and L dynamic; ``lengths``
(B, 2) int64 each document's own length in [1, L], as ``SequenceModel.forward(x, lengths=)`` on a pair model takes
them: the 2B documents are encoded separately by the one encoder, each from its own steps (its padding read as 0, the
bidirectional layers and the pool skip it), then a, b = pool(encoder(x_a)), pool(encoder(x_b)) meet in the head
W_2 GELU(W_1 [a, b, a ⊙ b, a − b]). Each pair's logits are those of its two unpadded documents alone.

A pair model has no state in the graph (``with_state=False``): it classifies whole pairs, and its pool reads the
call's own steps only, so a pair is not continued from a state; nor does it take intervals (its ``forward`` refuses
them).
"""

from __future__ import annotations

import numpy as np
import torch

from ssmkit.analysis.onnx_export import OnnxExport, _checked_lengths

__all__ = ["PairOnnxExport"]


class PairOnnxExport(OnnxExport):
    """What `export_onnx_sequence` wrote for a pair model: `OnnxExport`'s fields, u (B, 2, L, m) (or (B, 2, L) token
    ids) and, with ``lengths_name``, ``lengths`` (B, 2) int64, the two documents' lengths of each pair; ``feed``
    checks them so (module docstring).

    Attributes:
        path: the ONNX file.
        input_name: the input's name (``"u"``): the pairs (B, 2, L, m) or (B, 2, L).
        state_names: empty (a pair graph has no state).
        output_names: ``("y",)``, the logits (B, C).
        state_shapes: empty.
        state_dtypes: empty.
        batch_size: the graph's fixed batch size, or None when its batch axis is dynamic (any B).
        interval_name: None (a pair model takes no intervals).
        interval_dtype: None.
        lengths_name: ``"lengths"`` for a graph exported with ``lengths=True``: int64 (B, 2), each document's length
            in [1, L]; else None.
    """

    def _lengths(self, u: np.ndarray, lengths) -> np.ndarray:
        """The lengths input of ``feed``: int64 (B, 2) in [1, L] of u (B, 2, L, ...), checked (the graph cannot check
        values: a length above L reads every step); None gives every document L.

        Args:
            u: the pairs, (B, 2, L, m) or (B, 2, L).
            lengths: each document's length (B, 2), integers, or None.

        Returns:
            (B, 2) int64.
        """
        if u.ndim < 3 or u.shape[1] != 2:
            raise ValueError(f"u must be pairs (B, 2, L, ...) for a pair model's sequence graph; got {u.shape}")
        B, L = u.shape[0], u.shape[2]
        return _checked_lengths(lengths, "(B, 2)", (B, 2), L,
                               f"each document's length in [1, L = {L}] (a pair model's lengths, as forward's)",
                               "document")


def check_pair_export(with_state: bool, intervals: bool) -> None:
    """Refuse what a pair model's sequence graph cannot be: one with a state (NotImplementedError, saying
    ``with_state=False`` as the other stateless graphs do) or with intervals (ValueError).

    Args:
        with_state: ``export_onnx_sequence``'s option.
        intervals: ``export_onnx_sequence``'s option.
    """
    if intervals:
        raise ValueError("intervals=True: a pair model (pair=True) takes no intervals (its forward refuses them); "
                         "export its tower, a model built with pair=False, with intervals instead")
    if with_state:
        raise NotImplementedError(
            "a pair model (pair=True) classifies whole pairs (B, 2, L) and its pool reads one call's steps: its sequence "
            "graph has no state; export it from rest with with_state=False (lengths=True for right-padded pairs)")


def pair_example(step_input: torch.Tensor, length: int, lengths: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tracing example of a pair graph: u (B, 2, L, m) (or (B, 2, L)) from the step's zero input (B, m) (or (B,)),
    and lengths (B, 2) int64 of different values in [1, L] when the graph takes them.

    Args:
        step_input: (B, m) or (B,) the model's zero step input (`_example_input`).
        length: L.
        lengths: whether the graph takes the lengths.

    Returns:
        u, and the lengths or None.
    """
    B = step_input.shape[0]
    u = step_input[:, None, None].expand((B, 2, length) + tuple(step_input.shape[1:])).contiguous()
    if not lengths:
        return u, None
    return u, length - torch.arange(2 * B, dtype=torch.int64).reshape(B, 2) % length
