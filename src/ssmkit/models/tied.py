"""Weight tying of a token model's embedding and its LM head (Press & Wolf 2017, arXiv 1608.05859; the official Mamba
LM's ``tie_embeddings``): logits = h Eᵀ with E the (vocab, d_model) embedding matrix and no bias.

The matrix is drawn N(0, 0.02²) (the official Mamba LM's ``initializer_range``) by the embedding's own
``reset_parameters``, and the head draws nothing: so a meta-device build, ``to_empty`` and a reset of every module, in
any order, leaves the one matrix drawn as a direct build draws it (the head, an ``nn.Linear``, re-drew it with
Kaiming's uniform, the embedding with N(0, 1), whichever was reset last).

The tie is one ``Parameter`` held by both modules, so whatever replaces ``Parameter`` objects must tie them again:
``to_empty`` (meta-device builds) and ``load_state_dict(assign=True)`` (loading into one) gave each module a
matrix of its own, and the model trained two. :class:`~ssmkit.models.SequenceModel` ties them again after every
conversion (its ``_apply``) and every load (:func:`retie_after_load`); :func:`check_tied_load` refuses a state dict
whose two matrices differ (one saved from an untied model, whose head matrix silently overwrote the embedding) and
takes one that holds the matrix once.
"""

from __future__ import annotations

import torch
from torch import nn

TIED_EMBEDDING_STD = 0.02  # the official Mamba LM's embedding init (initializer_range), for a tied head


class TiedEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose matrix the LM head shares, drawn N(0, 0.02²) (module docstring).

    Args:
        vocab_size: the number of token ids.
        d_model: the embedding width.
        device: where the matrix lives.
        dtype: its dtype.
    """

    def __init__(self, vocab_size: int, d_model: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(vocab_size, d_model, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """Draw the shared matrix E ~ N(0, 0.02²)."""
        nn.init.normal_(self.weight, 0.0, TIED_EMBEDDING_STD)


class TiedHead(nn.Linear):
    """The LM head of a tied model: logits = h Eᵀ, its ``weight`` the embedding's matrix itself, no bias; it owns and
    draws nothing (:meth:`reset_parameters` leaves the matrix to the embedding's).

    Args:
        embedding: the model's :class:`TiedEmbedding`.
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__(embedding.embedding_dim, embedding.num_embeddings, bias=False, device="meta")
        self.weight = embedding.weight

    def reset_parameters(self) -> None:
        """Nothing: the matrix is the embedding's, drawn by :meth:`TiedEmbedding.reset_parameters`."""


def check_tied_load(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                    missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """``load_state_dict`` pre-hook of a tied model: a state dict holding only one of ``encoder.weight`` and
    ``head.weight`` gets the other (the same matrix); one holding two different matrices is refused.

    Raises:
        ValueError: the two matrices differ (an untied model's state dict: drop ``head.weight`` from it to keep
            its embedding, or build the model untied).
    """
    encoder, head = prefix + "encoder.weight", prefix + "head.weight"
    if encoder in state_dict and head not in state_dict:
        state_dict[head] = state_dict[encoder]
    elif head in state_dict and encoder not in state_dict:
        state_dict[encoder] = state_dict[head]
    elif encoder in state_dict:
        a, b = state_dict[encoder], state_dict[head]
        if a is not b and a.shape == b.shape and not (a.is_meta or b.is_meta) and not torch.equal(a, b.to(a.device)):
            raise ValueError(f"{head} differs from {encoder}, but this model ties them (tie_embeddings=True): the "
                             f"state dict was saved from an untied model; build it untied, or drop {head} from the "
                             f"state dict to keep the embedding")


def retie_after_load(module: nn.Module, incompatible_keys) -> None:
    """``load_state_dict`` post-hook of a tied model: the head's weight is the embedding's ``Parameter`` again (an
    ``assign=True`` load gave each its own)."""
    module.head.weight = module.encoder.weight
