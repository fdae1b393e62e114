"""Models built from layers: the residual Wiener block, the sequence model and its configuration."""

from ssmkit.models.block import Block
from ssmkit.models.config import SequenceModelConfig
from ssmkit.models.sequence import SequenceModel

__all__ = ["Block", "SequenceModel", "SequenceModelConfig"]
