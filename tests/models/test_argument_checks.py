"""The models package's argument checks that no other test reached (found by a coverage run): each raises the
ValueError it names, and the valid neighbour of each bad input works."""

from __future__ import annotations

import pytest
import torch

from ssmkit.models.config import SequenceModelConfig
from ssmkit.models.dual import masked_last, masked_mean
from ssmkit.models.pattern import check_pattern, options_per_block


def test_masked_pooling_refuses_a_keep_mask_of_another_shape():
    h = torch.arange(24.0).reshape(2, 3, 4)  # (B, L, H)
    keep = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.equal(masked_mean(h, keep), torch.stack([h[0, :2].mean(0), h[1, 0]]))
    assert torch.equal(masked_last(h, keep), torch.stack([h[0, 1], h[1, 0]]))
    for pool in (masked_mean, masked_last):
        with pytest.raises(ValueError, match=r"keep must be \(B, L\) = \(2, 3\); got \(2, 2\)"):
            pool(h, keep[:, :2])


def test_layer_patterns_and_their_options_are_checked():
    assert check_pattern(["s4d", "lru"], 2) == ["s4d", "lru"]
    for bad in (["s4d", 3], 7, None):
        with pytest.raises(ValueError, match="layer must be a layer name or a list of 2 layer names"):
            check_pattern(bad, 2)
    with pytest.raises(ValueError, match=r"layer_options\['lru'\] must be a dict of lru's options; got int"):
        options_per_block(["s4d", "lru"], ["s4d", "lru"], {"lru": 3})


def test_a_config_is_read_from_a_dict_only():
    with pytest.raises(ValueError, match="a SequenceModelConfig must be read from a dict; got list"):
        SequenceModelConfig.from_dict([("layer", "s4d")])
