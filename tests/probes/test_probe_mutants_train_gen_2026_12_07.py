"""Mutation round (2026-12-07) over ``ssmkit.train.schedule``, ``ssmkit.train.optim`` and ``ssmkit.models.generate``:
the tests below kill the mutants that the existing tests let survive.

- ``param_groups`` keeps *every* tensor a ``weight_norm`` (``torch.nn.utils.parametrizations``) holds for a bias or a
  norm's weight (``parametrizations.<t>.original0`` and ``original1``) out of weight decay, and still decays a
  weight's: one AdamW step with its groups equals torch's AdamW on hand-built groups, parameter by parameter
  (a mutant that read only ``...original`` decayed g and v of the norm weight and of the bias).
- ``generate`` takes prompt ids up to the embedding's ``vocab_size`` even when the head predicts fewer tokens
  (``d_output < vocab_size``): the greedy continuation equals argmax over the full forward on the growing sequence, and
  an id >= vocab_size is refused naming [0, vocab_size) (a mutant checked the prompts against ``d_output``).
- ``next_tokens`` and ``generate`` sample at temperature 1 by default: the frequencies of many draws match the
  closed-form softmax within 5 standard deviations (a mutant defaulting to 0 decoded greedily).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ssmkit.models import SequenceModel, generate, next_tokens
from ssmkit.train import param_groups

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------------- optim


def _weight_normed() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, dtype=F64), nn.LayerNorm(4, dtype=F64), nn.Linear(4, 2, dtype=F64))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    weight_norm(model[0], "weight")  # a weight: g and v decayed
    weight_norm(model[0], "bias", dim=0)  # a bias: g and v not decayed
    weight_norm(model[1], "weight", dim=0)  # a norm's weight: g and v not decayed
    return model


def test_weight_norm_originals_of_biases_and_norm_weights_are_not_decayed():
    model = _weight_normed()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, lr=0.05, weight_decay=0.5)
    decayed = {"0.parametrizations.weight.original0", "0.parametrizations.weight.original1", "2.weight"}
    undecayed = {"0.parametrizations.bias.original0", "0.parametrizations.bias.original1",
                 "1.parametrizations.weight.original0", "1.parametrizations.weight.original1", "1.bias", "2.bias"}
    assert [(g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in groups] == [
        (0.05, 0.5, decayed), (0.05, 0.0, undecayed)]

    # torch's own AdamW on groups built by hand from the names gives the same parameters after two steps
    ours, ref = model, copy.deepcopy(model)
    by_name = dict(ref.named_parameters())
    hand = [{"params": [by_name[n] for n in sorted(decayed)], "weight_decay": 0.5},
            {"params": [by_name[n] for n in sorted(undecayed)], "weight_decay": 0.0}]
    opt_ours, opt_ref = torch.optim.AdamW(groups), torch.optim.AdamW(hand, lr=0.05)
    x = torch.linspace(-1.0, 1.0, 15, dtype=F64).reshape(5, 3)
    for net, opt in ((ours, opt_ours), (ref, opt_ref)):
        for _ in range(2):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    ref_params = dict(ref.named_parameters())
    for n, p in ours.named_parameters():
        torch.testing.assert_close(p, ref_params[n], rtol=0, atol=0, msg=n)
    # and the decay acted: with the weight decay of the undecayed group forced on, the norm's g moves elsewhere
    forced = copy.deepcopy(_weight_normed())
    opt = torch.optim.AdamW(forced.parameters(), lr=0.05, weight_decay=0.5)
    for _ in range(2):
        opt.zero_grad()
        forced(x).square().sum().backward()
        opt.step()
    g = "1.parametrizations.weight.original0"
    assert not torch.allclose(dict(forced.named_parameters())[g], ref_params[g], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- generate


def _lm(vocab_size: int, d_output: int, seed: int = 0) -> SequenceModel:
    torch.manual_seed(seed)
    model = SequenceModel(1, 8, 1, "s4d", None, d_output, head="lm", pool=None, vocab_size=vocab_size, norm="rms",
                          dtype=F64).eval()
    with torch.no_grad():
        model.head.weight.mul_(3.0)  # logits spread over a few units
    return model


def test_prompt_ids_are_checked_against_the_embedding_not_the_head():
    model = _lm(vocab_size=7, d_output=5)
    prompts = [torch.tensor([6, 2, 5]), torch.tensor([1, 6])]  # ids 5 and 6: read by the embedding, never predicted
    out = generate(model, prompts, 4, temperature=0)
    for prompt, got in zip(prompts, out):
        seq = prompt.tolist()
        with torch.no_grad():
            for _ in range(4):  # the full forward on the growing sequence, argmax of the last position
                seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
        assert got.tolist() == seq and max(seq[len(prompt):]) < 5
    message = r"prompt 1 must hold token ids in \[0, vocab_size\) = \[0, 7\); got ids from 0 to 7"
    with pytest.raises(ValueError, match=message):
        generate(model, [torch.tensor([6]), torch.tensor([0, 7])], 2, temperature=0)


def _within(freq: torch.Tensor, probs: torch.Tensor, n: int) -> bool:
    """Whether every frequency lies within 5 standard deviations of its binomial mean (plus 1/n)."""
    sd = torch.sqrt(probs * (1 - probs) / n)
    return bool(((freq - probs).abs() <= 5 * sd + 1.0 / n).all())


def test_next_tokens_samples_at_temperature_one_by_default():
    n = 20_000
    row = torch.tensor([0.0, math.log(3.0), math.log(2.0), -1.0])  # softmax: (1, 3, 2, e^-1) / (6 + e^-1)
    probs = torch.tensor([1.0, 3.0, 2.0, math.exp(-1.0)], dtype=F64) / (6.0 + math.exp(-1.0))
    draws = next_tokens(row.expand(n, 4), generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=4).double() / n
    assert _within(freq, probs, n), (freq, probs)


def test_generate_samples_at_temperature_one_by_default():
    n = 4_000
    model = _lm(vocab_size=5, d_output=5, seed=2)
    prompt = torch.tensor([3, 1, 4])
    with torch.no_grad():
        probs = torch.softmax(model(prompt[None])[0][0, -1].double(), dim=0)  # the first new token's distribution
    assert float(probs.max()) < 0.9  # a greedy decoder would be far off
    out = generate(model, prompt.expand(n, 3), 1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[:, :3], prompt.expand(n, 3))
    freq = torch.bincount(out[:, 3], minlength=5).double() / n
    assert _within(freq, probs, n), (freq, probs)
