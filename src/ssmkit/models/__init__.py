"""Models built from layers: the residual Wiener block, the sequence model, its configuration and layer patterns."""

from ssmkit.models.block import Block
from ssmkit.models.config import SequenceModelConfig
from ssmkit.models.pattern import interleave
from ssmkit.models.sequence import SequenceModel

__all__ = ["Block", "SequenceModel", "SequenceModelConfig", "interleave"]
