"""Models built from layers: the residual Wiener block, the sequence model, its configuration and layer patterns, and
generation with a token language model."""

from ssmkit.models.beam import BeamResult, beam_search
from ssmkit.models.block import Block
from ssmkit.models.config import SequenceModelConfig
from ssmkit.models.generate import filter_logits, generate, next_tokens
from ssmkit.models.pattern import interleave
from ssmkit.models.sequence import SequenceModel

__all__ = ["BeamResult", "Block", "SequenceModel", "SequenceModelConfig", "beam_search", "filter_logits", "generate", "interleave", "next_tokens"]
