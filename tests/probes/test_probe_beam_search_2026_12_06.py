"""Probe of 2026-12-06: beam search (``ssmkit.models.beam_search``) as an ML researcher would use it. References: an
exhaustive search over every continuation of tiny vocabularies (V = 2, 3; n <= 4) scored by one ``forward`` over the
whole sequence (float64), greedy ``generate(..., temperature=0)``, each prompt searched alone, and every returned
score recomputed as Σ log p / n^α from a ``forward`` over the returned tokens.

Findings (fixed in src/ssmkit/models/beam.py):

1. *Tied log-probabilities broke "1 is greedy decoding"*: the best extensions were taken by ``torch.topk``, whose
   order among equal values is unspecified. A model with a zero head (uniform logits, V = 8) gave new tokens
   [6, 6, 6] with one beam where greedy ``generate`` (the first of tied maxima) gives [0, 0, 0]; V = 64 gave
   [42, 42, 42]. Now every extension at least the 2K-th best is taken in index order and stably sorted (ties: the
   earlier beam, then the lower token id), so one beam is greedy decoding also when log-probabilities tie (a full
   stable sort would cost 21 ms per prompt and step at K = 4, V = 50257 on one core, against topk's 0.36 ms; this
   costs 0.75 ms).
2. *A large |length_penalty| failed with Python errors*: n^α was a Python float power, which raised
   ``OverflowError: (34, 'Numerical result out of range')`` for α = 700 (and 1000) once n >= 3, and
   ``ZeroDivisionError: float division by zero`` for α = -700 (2^-1000 rounds to 0 and scores divided by it) after the
   first step. Now ``beam_search`` raises a ValueError naming length_penalty when max_new_tokens^|α| is not a finite
   float (|α| ln max_new_tokens > ~709.78); any α below that runs (α = ±50 with 4 new tokens: scores recompute).
3. *Docstring*: "num_beams ... 1 is greedy decoding" held only without ``eos_id``: with an ``eos_id`` the one beam
   continues past a finished hypothesis (the 2K = 2 best extensions: the eos one finishes, the other stays live) and
   the better by score is returned, e.g. new tokens [0, 0, 1] (score -0.543 with α = 1) where greedy stops at [0, 1].
   The docstring now says so; the training-mode behaviour (dropout draws a fresh mask at every forward and step, so
   scores are not those of the eval model) is stated as for ``generate``.

Held (no change): with a beam of V^n the answer is the exhaustive best for V = 2 (n = 4) and V = 3 (n = 3) with
hybrids whose states grow (attention's KV cache, Hyena, Mega without chunks) and Mega with chunks of 2 and 3, α in
{-1, 0, 0.5, 1, 3}, with and without eos; num_beams above the vocabulary (K = 10, V = 3) and every candidate an eos
(V = 1) return a hypothesis; ``max_new_tokens`` 1 returns the best single token; eos as the argmax of the first step
with α = 0 returns [eos]; int32 / uint8 prompts give the int64 answer; a batch where one prompt stops at eos at its
first step while others continue gives each prompt's answer alone (the ``select_state`` reordering keeps each
prompt's beams with their states); a float32 model's scores recompute to float32 round-off (rel 1e-5); prompt ids
outside the vocabulary raise the embedding's ValueError.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ssmkit.models import SequenceModel, beam_search, generate
from tests.conftest import DEVICE, H, variants

F64 = torch.float64


def _lm(pattern, seed=0, vocab=3, dtype=F64, options=None, **extra):
    torch.manual_seed(seed)
    options = options or {n: variants(n)[0] for n in pattern}
    model = SequenceModel(1, H, len(pattern), pattern, options, vocab, head="lm", pool=None, vocab_size=vocab,
                          device=DEVICE, dtype=dtype, **extra)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))  # logits far from uniform
    return model.eval()


def _log_probs(model, prompt, new):
    """log p(new_i | prompt, new_<i) of each new token, by one forward over the whole sequence (float64 softmax)."""
    seq = torch.cat([prompt.long(), torch.tensor(new, dtype=torch.long)]).to(DEVICE)
    with torch.no_grad():
        logits, _ = model(seq[None], return_state=False)
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    return [float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(new)]


def _score(model, prompt, new, alpha):
    return sum(_log_probs(model, prompt, new)) / len(new) ** alpha


def _exhaustive(model, prompt, n, alpha, eos_id):
    """The best score over every continuation of at most n tokens (one ending at its first eos_id, or of n)."""
    V = model.config.d_output
    best = -math.inf
    for length in range(1, n + 1):
        for new in itertools.product(range(V), repeat=length):
            if (eos_id is not None and eos_id in new[:-1]) or (length < n and new[-1] != eos_id):
                continue
            best = max(best, _score(model, prompt, list(new), alpha))
    return best


@pytest.mark.parametrize("pattern, options, vocab, n", [
    (["attention", "hyena"], None, 2, 4),
    (["mega"], {"mega": {**variants("mega")[0], "chunk_size": 2}}, 2, 4),
    (["mega", "s4d"], {"mega": {**variants("mega")[1]}, "s4d": {}}, 3, 3),
    (["mega"], {"mega": {**variants("mega")[2], "chunk_size": 3}}, 3, 3),
])
def test_a_beam_of_every_continuation_finds_the_exhaustive_best_with_growing_states(pattern, options, vocab, n):
    model = _lm(pattern, seed=7, vocab=vocab, options=options)
    prompts = torch.tensor([[0, 1, 1], [1, 0, 0]])
    for alpha, eos_id in ((1.0, None), (0.0, 1), (0.5, 0), (3.0, 1), (-1.0, 0)):
        result = beam_search(model, prompts, n, vocab**n, length_penalty=alpha, eos_id=eos_id)
        for b, prompt in enumerate(prompts):
            new = result.tokens[b][3:].tolist()
            assert float(result.scores[b]) == pytest.approx(_score(model, prompt, new, alpha), rel=1e-10, abs=1e-13)
            assert float(result.scores[b]) == pytest.approx(_exhaustive(model, prompt, n, alpha, eos_id), rel=1e-10,
                                                             abs=1e-13)


def test_tied_log_probabilities_one_beam_is_greedy_decoding():
    # a zero head: every logit 0, every token equally likely; greedy takes the first of the tied maxima
    for vocab in (8, 64):
        model = _lm(["s4d"], vocab=vocab)
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.zero_()
        prompts = torch.zeros(2, 3, dtype=torch.long)
        result = beam_search(model, prompts, 3, 1)
        want = generate(model, prompts, 3, temperature=0)
        assert [t.tolist() for t in result.tokens] == want.tolist(), vocab
        assert result.scores.tolist() == pytest.approx([-math.log(vocab)] * 2, rel=1e-12)
        wide = beam_search(model, prompts, 3, 4)  # ties among beams too: the first beam, then the lowest token
        assert [t.tolist() for t in wide.tokens] == want.tolist()


def test_a_large_length_penalty_raises_a_value_error_or_scores_exactly():
    model = _lm(["s4d", "mamba"])
    prompt = torch.tensor([[0, 1, 2, 0]])
    for alpha in (700.0, 1000.0, -700.0, -1000.0):
        with pytest.raises(ValueError, match="length_penalty"):
            beam_search(model, prompt, 4, 2, length_penalty=alpha, eos_id=1)
    one = beam_search(model, prompt, 1, 2, length_penalty=1e6)  # n = 1: n^α = 1 for every α
    assert float(one.scores[0]) == pytest.approx(max(_log_probs(model, prompt[0], [v])[0] for v in range(3)))
    for alpha in (50.0, -50.0):
        result = beam_search(model, prompt, 4, 3, length_penalty=alpha, eos_id=1)
        new = result.tokens[0][4:].tolist()
        assert float(result.scores[0]) == pytest.approx(_score(model, prompt[0], new, alpha), rel=1e-10)


def test_one_beam_with_eos_returns_a_hypothesis_at_least_as_good_as_greedy():
    model = _lm(["s4d", "mamba"], seed=2, vocab=4)
    with torch.no_grad():
        model.head.bias[1] += 1.0
    prompts = torch.randint(0, 4, (4, 3), generator=torch.Generator().manual_seed(2))
    result = beam_search(model, prompts, 5, 1, eos_id=1)
    greedy = generate(model, list(prompts), 5, temperature=0, eos_id=1)
    differ = 0
    for b, prompt in enumerate(prompts):
        new, want = result.tokens[b][3:].tolist(), greedy[b][3:].tolist()
        assert float(result.scores[b]) == pytest.approx(_score(model, prompt, new, 1.0), rel=1e-10)
        assert float(result.scores[b]) >= _score(model, prompt, want, 1.0) - 1e-12
        differ += new != want
    assert differ >= 1  # the case the docstring now names: one beam is not greedy once eos_id is given
    assert "greedy decoding when ``eos_id`` is None" in " ".join(beam_search.__doc__.split())


def test_batch_where_one_prompt_stops_at_once_equals_each_prompt_alone():
    model = _lm(["attention", "mamba"], seed=3, vocab=4)
    with torch.no_grad():
        model.head.bias[3] += 0.3
    prompts = torch.tensor([[0, 1, 2], [3, 3, 0], [2, 0, 1], [1, 1, 3]], dtype=torch.int32)
    # prompt 0: eos the argmax at its first step with α = 0 (the sum): K = 2 finished at once, and nothing can beat it
    first = torch.log_softmax(model(prompts[:1].long(), return_state=False)[0][0, -1].double(), dim=-1)
    eos_id = int(first.argmax())
    result = beam_search(model, prompts, 5, 2, length_penalty=0.0, eos_id=eos_id)
    assert result.tokens[0].tolist() == prompts[0].tolist() + [eos_id]
    assert all(t.dtype == torch.int64 for t in result.tokens)
    lengths = set()
    for b, prompt in enumerate(prompts):
        alone = beam_search(model, prompt[None].long(), 5, 2, length_penalty=0.0, eos_id=eos_id)
        assert torch.equal(alone.tokens[0], result.tokens[b])
        new = result.tokens[b][3:].tolist()
        assert float(result.scores[b]) == pytest.approx(_score(model, prompt, new, 0.0), rel=1e-10)
        lengths.add(len(new))
    assert len(lengths) > 1  # prompts stopped at different steps


def test_more_beams_than_tokens_all_eos_and_one_new_token():
    model = _lm(["s4d"], seed=1)
    prompt = torch.tensor([[2, 0]])
    for eos_id in (None, 2):
        result = beam_search(model, prompt, 3, 10, length_penalty=1.0, eos_id=eos_id)
        new = result.tokens[0][2:].tolist()
        assert float(result.scores[0]) == pytest.approx(_exhaustive(model, prompt[0], 3, 1.0, eos_id), rel=1e-10)
        assert float(result.scores[0]) == pytest.approx(_score(model, prompt[0], new, 1.0), rel=1e-10)
    single = beam_search(model, prompt, 1, 2, eos_id=0)
    best = max(range(3), key=lambda v: _log_probs(model, prompt[0], [v])[0])
    assert single.tokens[0].tolist() == [2, 0, best]
    only_eos = beam_search(_lm(["s4d"], vocab=1), torch.zeros(1, 2, dtype=torch.long), 3, 2, eos_id=0)
    assert only_eos.tokens[0].tolist() == [0, 0, 0] and float(only_eos.scores[0]) == 0.0


def test_float32_model_scores_recompute():
    model = _lm(["rglru", "attention"], seed=4, vocab=5, dtype=torch.float32)
    prompts = torch.tensor([[0, 1, 2, 3], [4, 4, 1, 0]])
    result = beam_search(model, prompts, 6, 3, length_penalty=0.7, eos_id=4)
    for b, prompt in enumerate(prompts):
        new = result.tokens[b][4:].tolist()
        assert float(result.scores[b]) == pytest.approx(_score(model, prompt, new, 0.7), rel=1e-5)


def test_training_mode_dropout_is_documented_and_eval_is_deterministic():
    model = _lm(["s4d", "mamba"], seed=5, vocab=4, dropout=0.5)
    prompts = torch.tensor([[0, 1, 2], [3, 2, 1]])
    first = beam_search(model, prompts, 4, 2, eos_id=0)
    assert torch.equal(beam_search(model, prompts, 4, 2, eos_id=0).scores, first.scores)  # eval: no dropout
    model.train()  # dropout acts at the prompt's forward and at every step: the scores are not the eval model's
    torch.manual_seed(0)
    trained = beam_search(model, prompts, 4, 2, eos_id=0)
    assert model.training and not torch.allclose(trained.scores, first.scores)
    doc = " ".join(beam_search.__doc__.split())
    assert "dropout" in doc and "model.eval()" in doc
