"""Beam search (``ssmkit.models.beam_search``) against an exhaustive search over every continuation, scored by
``forward`` over the whole sequence, and against greedy generation (one beam)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ssmkit.models import SequenceModel, beam_search, generate
from tests.conftest import DEVICE, H, variants

F64 = torch.float64
V = 3


def _lm(pattern, seed=0, vocab=V):
    torch.manual_seed(seed)
    model = SequenceModel(1, H, len(pattern), pattern, {n: variants(n)[0] for n in pattern}, vocab, head="lm",
                          pool=None, vocab_size=vocab, device=DEVICE, dtype=F64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))  # logits far from uniform
    return model.eval()


def _log_prob(model, prompt, new):
    """Σ log p(new_i | prompt, new_<i) by one forward over the whole sequence (float64)."""
    seq = torch.cat([prompt, torch.tensor(new, dtype=torch.long)]).to(DEVICE)
    with torch.no_grad():
        logits, _ = model(seq[None], return_state=False)
    logp = torch.log_softmax(logits[0], dim=-1)
    return sum(float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(new))


def _exhaustive(model, prompt, n, alpha, eos_id):
    """The best (score, new tokens) over every continuation of at most n tokens (one ending at eos_id, or of n)."""
    best = (-math.inf, None)
    for length in range(1, n + 1):
        for new in itertools.product(range(V), repeat=length):
            if eos_id is not None and eos_id in new[:-1]:
                continue  # a hypothesis ends at its first eos
            if length < n and new[-1] != eos_id:
                continue  # shorter than n only by ending at eos
            score = _log_prob(model, prompt, list(new)) / length ** alpha
            best = max(best, (score, list(new)))
    return best


@pytest.mark.parametrize("pattern", [["s4d", "mamba"], ["attention"], ["rglru", "hyena"]])
def test_one_beam_is_greedy_generation(pattern):
    model = _lm(pattern)
    prompts = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(1))
    result = beam_search(model, prompts, 6, 1)
    want = generate(model, prompts, 6, temperature=0)
    assert all(torch.equal(got, row) for got, row in zip(result.tokens, want))


@pytest.mark.parametrize("alpha, eos_id", [(1.0, None), (0.0, 2), (1.0, 2), (2.0, 0), (-0.5, 1)])
def test_a_wide_enough_beam_finds_the_exhaustive_best(alpha, eos_id):
    # with K >= V^n hypotheses nothing is pruned: the beam's answer is the best of every continuation, and its early
    # stop (no live beam can beat the K finished) must not end the search before it
    model = _lm(["s4d", "mamba"], seed=3)
    prompts = torch.tensor([[0, 1], [2, 2], [1, 0]])
    result = beam_search(model, prompts, 3, V**3, length_penalty=alpha, eos_id=eos_id)
    for b, prompt in enumerate(prompts):
        score, new = _exhaustive(model, prompt, 3, alpha, eos_id)
        assert result.tokens[b].tolist() == prompt.tolist() + new
        assert float(result.scores[b]) == pytest.approx(score, rel=1e-10, abs=1e-12)


def test_scores_are_the_hypotheses_own_and_prompts_are_independent():
    model = _lm(["s4d", "attention"], seed=4)
    prompts = torch.tensor([[0, 1, 2], [2, 1, 1]])
    both = beam_search(model, prompts, 5, 2, length_penalty=0.7, eos_id=0)
    for b, prompt in enumerate(prompts):
        alone = beam_search(model, prompt[None], 5, 2, length_penalty=0.7, eos_id=0)
        assert torch.equal(alone.tokens[0], both.tokens[b])
        new = both.tokens[b][3:].tolist()
        assert float(both.scores[b]) == pytest.approx(_log_prob(model, prompt, new) / len(new) ** 0.7, rel=1e-10)
        assert 0 not in new[:-1] and (new[-1] == 0 or len(new) == 5)


def test_bad_arguments_raise_value_errors_naming_them():
    model = _lm(["s4d"])
    ok = torch.tensor([[1, 2]])
    for change, name in [(dict(max_new_tokens=0), "max_new_tokens"), (dict(num_beams=0), "num_beams"),
                         (dict(num_beams=True), "num_beams"), (dict(length_penalty=math.inf), "length_penalty"),
                         (dict(eos_id=V), "eos_id"), (dict(prompts=torch.tensor([1, 2])), "prompts"),
                         (dict(prompts=ok.float()), "prompts"), (dict(prompts=torch.zeros(1, 0, dtype=torch.long)),
                                                                 "prompts")]:
        kwargs = {"prompts": ok, "max_new_tokens": 2, "num_beams": 2, **change}
        with pytest.raises(ValueError, match=name):
            beam_search(model, **kwargs)
    with pytest.raises(ValueError, match="language model"):
        beam_search(SequenceModel(1, H, 1, "s4d", {"d_state": 4}, 3, vocab_size=V), ok, 2, 2)


def _beam_reference(model, prompt, n, K, alpha, eos_id):
    """The module docstring's algorithm written out over Python lists, every log-probability from a forward over the
    whole sequence (no states): (score, new tokens) of the prompt's best hypothesis."""
    live, finished = [(0.0, [])], []
    for length in range(1, n + 1):
        candidates = []
        for total, new in live:
            seq = torch.cat([prompt, torch.tensor(new, dtype=torch.long)]).to(DEVICE)
            with torch.no_grad():
                logits, _ = model(seq[None], return_state=False)
            logp = torch.log_softmax(logits[0, -1], dim=-1).tolist()
            candidates += [(total + logp[v], new + [v]) for v in range(len(logp))]
        candidates = sorted(candidates, key=lambda c: -c[0])[: 2 * K]
        chosen = []
        for total, new in candidates:
            if new[-1] == eos_id:
                finished.append((total / length**alpha, new))
            elif len(chosen) < K:
                chosen.append((total, new))
        finished = sorted(finished, key=lambda f: -f[0])[:K]
        if length == n:
            return max(finished + [(t / n**alpha, new) for t, new in chosen], key=lambda f: f[0])
        reachable = chosen[0][0] / (n if alpha > 0 else length) ** alpha if chosen else -math.inf
        if not chosen or (len(finished) == K and finished[-1][0] >= reachable):
            return finished[0]
        live = chosen


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_the_beam_follows_its_algorithm(K, alpha):
    # small beams prune: each step keeps the 2K best extensions, an eos among them finishes a hypothesis, and a
    # prompt stops once no live beam can beat its K finished ones
    prompts = torch.randint(0, 5, (4, 2), generator=torch.Generator().manual_seed(5))
    for eos_id, lift in ((0, 0.0), (1, 0.5), (1, 1.0)):
        model = _lm(["s4d", "mamba"], seed=5, vocab=5)
        with torch.no_grad():
            model.head.bias[eos_id] += lift  # eos often among the best: finished hypotheses, early stops
        result = beam_search(model, prompts, 6, K, length_penalty=alpha, eos_id=eos_id)
        for b, prompt in enumerate(prompts):
            score, new = _beam_reference(model, prompt, 6, K, alpha, eos_id)
            assert result.tokens[b].tolist() == prompt.tolist() + new, (b, eos_id)
            assert float(result.scores[b]) == pytest.approx(score, rel=1e-10)


def test_nan_logits_are_refused():
    model = _lm(["s4d"])
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    with pytest.raises(ValueError, match="logits hold NaN"):
        beam_search(model, torch.tensor([[1, 2]]), 3, 2)
