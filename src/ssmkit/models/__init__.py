"""Models built from layers: the residual Wiener block, the sequence model, its configuration and layer patterns, and
generation with a token language model, and the official Mamba / Mamba-2 language-model checkpoints."""

from ssmkit.models.beam import BeamResult, beam_search
from ssmkit.models.block import Block
from ssmkit.models.config import SequenceModelConfig
from ssmkit.models.generate import filter_logits, generate, next_tokens
from ssmkit.models.official import load_mamba, mamba_config, mamba_state_dict, save_mamba
from ssmkit.models.pattern import interleave
from ssmkit.models.sequence import SequenceModel

__all__ = ["BeamResult", "Block", "SequenceModel", "SequenceModelConfig", "beam_search", "filter_logits", "generate", "interleave", "load_mamba",
           "mamba_config", "mamba_state_dict", "next_tokens", "save_mamba"]
