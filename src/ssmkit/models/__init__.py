"""Models built from layers: the residual Wiener block and the sequence model."""

from ssmkit.models.block import Block
from ssmkit.models.sequence import SequenceModel

__all__ = ["Block", "SequenceModel"]
