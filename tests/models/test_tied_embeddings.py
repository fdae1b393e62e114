"""``SequenceModel(tie_embeddings=True)``: the LM head shares the embedding matrix (Press & Wolf, arXiv 1608.05859; the
official Mamba LM's ``tie_embeddings``), as part of the config.

References are independent of the code under test: the logits as h·Eᵀ from the model's own features and embedding
matrix, an untied twin holding the same matrices for the gradient (the tied gradient is the sum of the embedding's and
the head's), the official Mamba LM's parameter count written out, and torch's own optimiser state.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from ssmkit.models import SequenceModel, SequenceModelConfig
from ssmkit.train.experiment import Experiment
from tests.conftest import DEVICE

F64 = torch.float64
V, H = 23, 8


def _lm(tie: bool = True, layer="s4d", dtype=F64, seed=0) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(d_input=1, d_model=H, n_layers=2, layer=layer, d_output=V, head="lm", pool=None,
                         vocab_size=V, tie_embeddings=tie, device=DEVICE, dtype=dtype)


def test_the_head_is_the_embedding_transposed_without_a_bias():
    model = _lm().eval()
    assert model.head.weight is model.encoder.weight and model.head.bias is None
    x = torch.randint(0, V, (3, 7), device=DEVICE)
    with torch.no_grad():
        logits, _ = model(x)
        h = model.final_norm(_hidden(model, x))
    assert torch.allclose(logits, h @ model.encoder.weight.T, rtol=0, atol=1e-12)


def _hidden(model: SequenceModel, x: torch.Tensor) -> torch.Tensor:
    """The last block's (B, L, H) output, before the final norm (the blocks run one by one here)."""
    h = model.encoder(x)
    for block in model.blocks:
        h, _ = block(h)
    return h


def test_the_shared_matrix_is_drawn_as_the_official_lm_and_counted_once():
    model = _lm(layer="mamba", dtype=torch.float32)
    std = float(model.encoder.weight.detach().std())
    assert 0.017 < std < 0.023  # N(0, 0.02²): V·H = 184 draws
    untied = _lm(tie=False, layer="mamba", dtype=torch.float32)
    assert float(untied.encoder.weight.detach().std()) > 0.5  # nn.Embedding's N(0, 1) when not tied
    # the untied model holds a head V·H and its bias V more; parameters() and the optimiser see the matrix once
    assert untied.num_parameters() - model.num_parameters() == V * H + V
    assert sum(p.numel() for p in model.parameters()) == model.num_parameters()
    optimiser = torch.optim.AdamW(model.parameters())
    assert sum(1 for group in optimiser.param_groups for p in group["params"] if p is model.encoder.weight) == 1
    # the official Mamba LM (d 8, 2 layers, vocab V, tied, RMSNorm blocks and final norm): embedding + 2 mixers +
    # 3 RMSNorm weights; ours has a LayerNorm as its final norm (a bias of H more)
    E, N, R, W = 2 * H, 16, 1, 4  # inner width, d_state, dt_rank = ceil(8 / 16), conv width
    mixer = H * 2 * E + E * W + E + E * (R + 2 * N) + R * E + E + E * N + E + E * H
    official = V * H + 2 * (mixer + H) + H
    rms = SequenceModel(d_input=1, d_model=H, n_layers=2, layer="mamba", d_output=V, head="lm", pool=None,
                        vocab_size=V, norm="rms", tie_embeddings=True)
    assert rms.num_parameters() == official + H


def test_the_gradient_is_the_sum_of_both_uses():
    tied = _lm()
    untied = _lm(tie=False)
    untied.load_state_dict({k: v for k, v in tied.state_dict().items()}, strict=False)
    with torch.no_grad():
        untied.head.weight.copy_(tied.encoder.weight)
        untied.head.bias.zero_()
    x = torch.randint(0, V, (2, 6), device=DEVICE)
    for model in (tied, untied):
        model(x)[0].square().mean().backward()
    want = untied.encoder.weight.grad + untied.head.weight.grad
    assert torch.allclose(tied.encoder.weight.grad, want, rtol=0, atol=1e-12)


def test_the_tie_survives_the_config_a_copy_and_a_state_dict():
    model = _lm()
    config = SequenceModelConfig.from_json(model.config.to_json())
    assert config.tie_embeddings is True
    rebuilt = SequenceModel.from_config(config, device=DEVICE, dtype=F64)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randint(0, V, (2, 5), device=DEVICE)
    for other in (rebuilt, copy.deepcopy(model)):
        assert other.head.weight is other.encoder.weight
        assert torch.equal(other(x)[0], model(x)[0])
    # an older config without the key reads as untied
    old = model.config.to_dict()
    del old["tie_embeddings"]
    assert SequenceModelConfig.from_dict(old).tie_embeddings is False
    # generation through the tied head: greedy decoding equals re-running the forward and taking the argmax
    prompt = x[:, :2]
    out = model.generate(prompt, max_new_tokens=3, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(3):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(torch.as_tensor(out), seq)


def test_the_experiment_passes_it_to_the_model():
    from ssmkit.data import get_task

    info = get_task("induction_heads", train_length=16, test_lengths=[32], vocab_size=6, n_train=4, n_val=2,
                    n_test=2).info()
    config = Experiment(task="induction_heads", tie_embeddings=True, d_model=8, n_layers=1).model_config(info)
    assert config.tie_embeddings is True and config.head == "lm"
    model = SequenceModel.from_config(config)
    assert model.head.weight is model.encoder.weight


@pytest.mark.parametrize("options, message", [
    (dict(vocab_size=None, d_input=3), "needs vocab_size, head='lm' and d_output == vocab_size; got vocab_size=None"),
    (dict(head="classify", pool="mean"), "got vocab_size=23, head='classify'"),
    (dict(d_output=V + 1), f"d_output={V + 1}"),
    (dict(tie_embeddings=1), "tie_embeddings must be True or False; got 1"),
])
def test_a_tie_that_cannot_be_is_refused(options, message):
    kwargs = dict(d_input=1, d_model=H, n_layers=1, layer="s4d", d_output=V, head="lm", pool=None, vocab_size=V,
                  tie_embeddings=True)
    kwargs.update(options)
    with pytest.raises(ValueError, match=re.escape(message)):
        SequenceModel(**kwargs)



@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_a_meta_build_reset_module_by_module_draws_the_shared_matrix_as_a_direct_build(order):
    # FSDP-style initialisation: build on meta, to_empty, then reset every module that can. to_empty gave the head
    # and the embedding a matrix each (the model then trained two), and the head (an nn.Linear) re-drew its matrix
    # with Kaiming's uniform, the embedding with N(0, 1)
    model = SequenceModel(d_input=1, d_model=64, n_layers=1, layer="s4d", d_output=V, head="lm", pool=None,
                          vocab_size=V, tie_embeddings=True, device="meta").to_empty(device=DEVICE)
    assert model.head.weight is model.encoder.weight
    assert sum(p.numel() for p in model.parameters()) == model.num_parameters()
    modules = list(model.modules()) if order == "forward" else list(model.modules())[::-1]
    for seed, replay in ((1, False), (1, True)):
        torch.manual_seed(seed)
        for module in modules:
            if replay and module is model.encoder:  # the generator's state at the embedding's reset
                want = torch.empty(V, 64, device=DEVICE).normal_(0.0, 0.02)
                break
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    assert model.head.weight is model.encoder.weight and model.head.bias is None
    assert torch.equal(model.encoder.weight.detach(), want)  # the embedding's one N(0, 0.02²) draw, not overwritten
    std = float(model.encoder.weight.detach().std())
    assert 0.018 < std < 0.022  # V·64 = 1 472 draws; Kaiming's U(±1/8) has std 0.072, N(0, 1) std 1


def test_loads_keep_the_tie_and_refuse_an_untied_state_dict():
    source, target = _lm(seed=1), _lm(seed=2)
    target.load_state_dict(source.state_dict(), assign=True)  # loading into a meta build: each got its own matrix
    assert target.head.weight is target.encoder.weight
    assert torch.equal(target.encoder.weight, source.encoder.weight)
    x = torch.randint(0, V, (2, 5), device=DEVICE)
    with torch.no_grad():
        assert torch.equal(target.eval()(x)[0], source.eval()(x)[0])
    # a state dict holding the matrix once (either name) loads strictly
    for kept in ("encoder.weight", "head.weight"):
        fresh = _lm(seed=3)
        state = {k: v for k, v in source.state_dict().items() if k in (kept,) or k not in ("encoder.weight",
                                                                                            "head.weight")}
        fresh.load_state_dict(state)
        assert fresh.head.weight is fresh.encoder.weight and torch.equal(fresh.encoder.weight, source.encoder.weight)
    # an untied model's matrices: the head's silently overwrote the embedding; now refused, nothing changed
    untied = _lm(tie=False, seed=4).state_dict()
    del untied["head.bias"]
    before = target.encoder.weight.detach().clone()
    with pytest.raises(ValueError, match=r"head.weight differs from encoder.weight, but this model ties them"):
        target.load_state_dict(untied)
    assert torch.equal(target.encoder.weight, before)
    untied["head.weight"] = untied["encoder.weight"]
    target.load_state_dict(untied)
    assert torch.equal(target.encoder.weight, untied["encoder.weight"])


def test_init_from_an_untied_source_loads_its_embedding_into_the_tied_head():
    from ssmkit.train import load_weights

    untied, tied = _lm(tie=False, seed=5), _lm(seed=6)
    report = load_weights(tied, untied.state_dict())  # it raised: the two matrices differ
    assert report.untied_head_skipped and "head.weight" not in report.loaded and not report.head_not_loaded
    assert "is not loaded: this model's head is its embedding" in report.summary()
    assert tied.head.weight is tied.encoder.weight and torch.equal(tied.encoder.weight, untied.encoder.weight)
    source = untied.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in tied.state_dict().items() if not k.startswith("head."))
    with pytest.raises(ValueError, match=r"the head differs from the source's \(head.weight: the source's is not its "
                                         r"embedding, this model's is\)"):
        load_weights(_lm(seed=7), untied.state_dict(), skip_mismatched_head=False)
    again = load_weights(_lm(seed=8), tied.state_dict())  # a tied source: everything loads
    assert not again.untied_head_skipped and "head.weight" in again.loaded


def test_init_from_a_source_without_a_head_matrix_loads_the_embedding_as_the_tied_head():
    """A source holding the embedding but no ``head.weight`` (a state dict saved without it): the tied head is the
    loaded embedding. The report said "the head differs, not loaded, kept at its initialisation", and
    ``skip_mismatched_head=False`` refused it."""
    from ssmkit.train import load_weights

    source = {k: v for k, v in _lm(tie=False, seed=9).state_dict().items() if k != "head.weight"}
    for skip in (True, False):
        tied = _lm(seed=10)
        report = load_weights(tied, source, skip_mismatched_head=skip)
        assert not report.head_not_loaded and not report.untied_head_skipped
        assert "head" not in report.summary() and "head.weight" in report.loaded
        assert tied.head.weight is tied.encoder.weight and torch.equal(tied.head.weight, source["encoder.weight"])
