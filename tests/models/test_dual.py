"""The dual encoder of pair tasks (LRA retrieval): equal to encoding each document separately, by hand; padding kept
out of the pooling; the head on [a, b, a ⊙ b, a − b]."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.models import SequenceModel, SequenceModelConfig
from ssmkit.models.dual import DualEncoderHead, masked_last, masked_mean, pair_features
from tests.conftest import DEVICE, rel_err

V, L = 11, 9


def pair_model(pool: str = "mean", pad_id: int | None = 0, layer: str = "s4d") -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(1, 8, 2, layer, layer_options={"d_state": 4} if layer == "s4d" else {}, d_output=3,
                         vocab_size=V, pair=True, pad_id=pad_id, pool=pool, device=DEVICE, dtype=torch.float64).eval()


def documents(lengths: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, V, (len(lengths), L), generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = 0  # trailing padding, as the AAN loader writes it
    return x.to(DEVICE)


def tower_by_hand(model: SequenceModel, doc: torch.Tensor, pool: str) -> torch.Tensor:
    """One document (n,) without its padding through embedding, blocks and final norm, pooled: (H,)."""
    h = model.encoder(doc[None])  # (1, n, H)
    for block in model.blocks:
        h, _ = block(h, None)
    h = model.final_norm(h)[0]  # (n, H)
    return h.mean(0) if pool == "mean" else h[-1]


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_dual_encoder_equals_each_document_encoded_separately(pool):
    model = pair_model(pool)
    la, lb = [9, 4, 6], [2, 9, 7]
    xa, xb = documents(la), documents(lb).flip(0)
    lb = lb[::-1]
    with torch.no_grad():
        logits, _ = model(torch.stack([xa, xb], 1))  # (B, 2, L) -> (B, C)
        head = model.head
        for i in range(3):
            a = tower_by_hand(model, xa[i, : la[i]], pool)  # the unpadded document alone
            b = tower_by_hand(model, xb[i, : lb[i]], pool)
            f = torch.cat([a, b, a * b, a - b])
            want = head.out.weight @ F.gelu(head.hidden.weight @ f + head.hidden.bias) + head.out.bias
            assert rel_err(logits[i], want) < 1e-12


def test_one_document_does_not_change_the_other_documents_encoding():
    model = pair_model()
    x = torch.stack([documents([5, 8]), documents([3, 9])], 1)
    y = x.clone()
    y[:, 1] = documents([9, 2])  # other second documents
    with torch.no_grad():
        fa, _ = model.features(x[:, 0])
        fb, _ = model.features(y[:, 0])
        out_x, _ = model(x)
        out_y, _ = model(y)
    assert torch.equal(fa, fb) and not torch.allclose(out_x, out_y)


def test_padding_is_ignored_only_with_pad_id():
    x = documents([4, 4])
    x[1, 4:] = 0
    x[0, 4:] = torch.arange(1, L - 3)  # same first 4 tokens, other tail
    x[0, :4] = x[1, :4]
    masked, plain = pair_model(pad_id=0), pair_model(pad_id=None)
    pairs = torch.stack([x, x.flip(0)], 1)
    with torch.no_grad():
        h_masked, _ = masked.features(x[1:])
        h_alone, _ = masked.features(x[1:, :4])  # the document without its padding
        h_plain, _ = plain.features(x[1:])
        assert rel_err(h_masked, h_alone) < 1e-12
        assert rel_err(h_plain, h_alone) > 1e-3  # the plain mean averages the padding in
        assert masked(pairs)[0].shape == (2, 3)


def test_pair_helpers_by_hand():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    assert pair_features(a, b).tolist() == [[1.0, 2.0, 3.0, -1.0, 3.0, -2.0, -2.0, 3.0]]
    h = torch.arange(12.0).reshape(1, 4, 3)
    keep = torch.tensor([[True, False, True, False]])
    assert masked_mean(h, keep).tolist() == [[3.0, 4.0, 5.0]]  # rows 0 and 2
    assert masked_last(h, keep).tolist() == [[6.0, 7.0, 8.0]]  # row 2
    assert masked_mean(h, None).tolist() == [[4.5, 5.5, 6.5]]
    head = DualEncoderHead(2, 5)
    assert head(a, b).shape == (1, 5)
    with pytest.raises(ValueError, match="two \\(B, H\\) encodings"):
        pair_features(a, b[:, :1])


def test_pair_model_checks_its_options_and_round_trips():
    with pytest.raises(ValueError, match="pair=True"):
        SequenceModel(1, 8, 1, "s4d", d_output=2, vocab_size=V, pair=True, pool=None)
    with pytest.raises(ValueError, match="pad_id"):
        SequenceModel(1, 8, 1, "s4d", d_output=2, pad_id=0)  # real inputs have no padding token
    with pytest.raises(ValueError, match="pad_id"):
        SequenceModel(1, 8, 1, "s4d", d_output=2, vocab_size=V, pad_id=V)
    model = pair_model()
    with pytest.raises(ValueError, match="reads pairs"):
        model(documents([3, 4]))
    with pytest.raises(NotImplementedError, match="whole pairs"):
        model.step(documents([3])[:, 0], model.initial_state(1))
    config = model.config
    assert config.pair and config.pad_id == 0
    assert SequenceModelConfig.from_json(config.to_json()) == config
    assert isinstance(SequenceModel.from_config(config).head, DualEncoderHead)
