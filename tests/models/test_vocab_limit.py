"""``vocab_limit`` of ``generate`` / ``next_tokens`` / ``beam_search``: only ids below it are chosen (the tokenizer's
vocabulary of an LM whose embedding pads it, as the official Mamba LMs' 50 277 ids of 50 280 rows; the official
decoder's ``vocab_size``, state-spaces/mamba ``mamba_ssm/utils/generation.py``). References: an argmax loop over
``forward`` restricted to the first columns, ``torch.multinomial`` over the renormalised softmax of those columns with
the same generator, ``filter_logits`` on the cut logits, an exhaustive search over every allowed continuation, and the
official LM's float64 forward of tests/models/test_official_reference.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ssmkit.models import SequenceModel, beam_search, filter_logits, generate, load_mamba, next_tokens
from tests.models.test_official_reference import VOCAB, VOCAB_PADDED, official_state_dict, reference_logits

F64 = torch.float64
V = 7  # the head's outputs (the padded vocabulary)
LIMIT = 5  # the real ids: 5 and 6 are padding


def _lm(seed: int = 0, pad_bias: float = 6.0) -> SequenceModel:
    """A tiny float64 LM whose head bias puts the padding ids ``pad_bias`` above the real ones (eval mode)."""
    torch.manual_seed(seed)
    model = SequenceModel(d_input=1, d_model=8, n_layers=1, layer="s4d", d_output=V, head="lm", pool=None,
                          vocab_size=V, dtype=F64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.head.bias[LIMIT:] += pad_bias
    return model.eval()


def _last_logits(model, seq: torch.Tensor) -> torch.Tensor:
    """(B, V) logits of the next token after (B, L) ids, by ``forward`` over the whole sequence."""
    with torch.no_grad():
        return model(seq)[0][:, -1]


def _shifted(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The logits less each row's largest, in float64, over T (next_tokens' numerics: the same bits, the same draw)."""
    top = logits.amax(dim=1, keepdim=True)
    return torch.where(logits == top, 0.0, logits.double() - top.double()) / temperature


# ----------------------------------------------------------------------------------------------------------------------
# generate


def test_the_padding_ids_would_win_without_the_limit():
    # the test model is not vacuous: without vocab_limit greedy and sampled decoding pick padding ids
    model = _lm()
    prompts = torch.randint(0, LIMIT, (3, 4), generator=torch.Generator().manual_seed(1))
    assert (generate(model, prompts, 5, temperature=0)[:, 4:] >= LIMIT).all()
    sampled = generate(model, prompts, 20, generator=torch.Generator().manual_seed(2))[:, 4:]
    assert (sampled >= LIMIT).float().mean() > 0.9


def test_greedy_equals_an_argmax_loop_over_the_first_columns():
    model = _lm()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, LIMIT, (n,), generator=g) for n in (4, 1, 6)]
    out = generate(model, prompts, 6, temperature=0, vocab_limit=LIMIT)
    for prompt, got in zip(prompts, out):
        seq = prompt.clone()
        for _ in range(6):
            seq = torch.cat([seq, _last_logits(model, seq[None])[0, :LIMIT].argmax()[None]])
        assert torch.equal(got, seq)
    # the method forwards the argument (positional callers unchanged: it comes last)
    assert torch.equal(model.generate(prompts[0][None], 6, 0, vocab_limit=LIMIT)[0], out[0])


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, None, None), (1.3, 3, None), (1.0, None, 0.8),
                                                       (0.9, 4, 0.7)])
def test_sampling_equals_multinomial_over_the_renormalised_first_columns(temperature, top_k, top_p):
    model = _lm()
    prompts = torch.randint(0, LIMIT, (4, 3), generator=torch.Generator().manual_seed(4))
    out = generate(model, prompts, 8, temperature, top_k, top_p, generator=torch.Generator().manual_seed(5),
                   vocab_limit=LIMIT)
    g = torch.Generator().manual_seed(5)
    seq = prompts.clone()
    for _ in range(8):
        cut = _last_logits(model, seq)[:, :LIMIT]  # (B, LIMIT)
        probs = torch.softmax(filter_logits(_shifted(cut, temperature), top_k, top_p), dim=1)
        seq = torch.cat([seq, torch.multinomial(probs, 1, generator=g)], dim=1)
    assert torch.equal(out, seq)


def test_many_sampled_ids_stay_below_the_limit():
    model = _lm(pad_bias=12.0)  # a padding id holds ~all of the unrestricted probability
    prompts = torch.randint(0, LIMIT, (64, 2), generator=torch.Generator().manual_seed(6))
    out = generate(model, prompts, 25, temperature=1.5, generator=torch.Generator().manual_seed(7), vocab_limit=LIMIT)
    new = out[:, 2:]
    assert new.shape == (64, 25) and int(new.max()) < LIMIT
    assert len(torch.unique(new)) == LIMIT  # every real id is drawn (the limit cut only the padding)


def test_eos_and_top_k_are_checked_against_the_limit():
    model = _lm()
    prompts = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"eos_id must be None or a token id in \[0, 5\); got 5"):
        generate(model, prompts, 3, eos_id=LIMIT, vocab_limit=LIMIT)  # a padding id could never end a stream
    with pytest.raises(ValueError, match=r"top_k must be None or an int in \[1, 5\] \(the vocabulary\); got 6"):
        generate(model, prompts, 3, top_k=6, vocab_limit=LIMIT)
    # an eos_id within the limit still stops a greedy stream: the argmax loop's first real id
    first = int(_last_logits(model, prompts)[0, :LIMIT].argmax())
    assert generate(model, prompts, 3, temperature=0, eos_id=first, vocab_limit=LIMIT).tolist() == [[0, 0, first]]


# ----------------------------------------------------------------------------------------------------------------------
# next_tokens


def test_next_tokens_ignores_the_padding_columns_entirely():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(3, V, generator=g, dtype=F64)
    logits[:, LIMIT:] = 50.0
    assert torch.equal(next_tokens(logits, 0, vocab_limit=LIMIT), logits[:, :LIMIT].argmax(dim=1))
    # +inf and NaN past the limit are never seen (an unrestricted draw takes the +inf one for sure, or refuses NaN)
    logits[0, LIMIT] = math.inf
    logits[1, V - 1] = math.nan
    drawn = next_tokens(logits.repeat(2000, 1), 2.0, generator=torch.Generator().manual_seed(9), vocab_limit=LIMIT)
    assert int(drawn.max()) < LIMIT and len(torch.unique(drawn)) == LIMIT
    with pytest.raises(ValueError, match="logits must hold no NaN"):
        next_tokens(logits, 2.0)


def test_next_tokens_top_k_and_top_p_count_the_real_ids_only():
    g = torch.Generator().manual_seed(10)
    row = torch.tensor([[0.3, 1.2, -0.4, 0.9, 0.1, 5.0, 4.0]], dtype=F64)  # the padding ids the two largest
    logits = row.repeat(3000, 1)
    for top_k, top_p, kept in [(2, None, {1, 3}), (None, 0.5, {1, 3}), (3, 0.99, {0, 1, 3})]:
        # kept, by hand: the top 2 of the real ids are 1 and 3; the softmax of the real ids sorted is 1 (.373),
        # 3 (.276), 0 (.152), 4 (.124), 2 (.075): mass before 0 is .649 >= 0.5, so top-p 0.5 keeps 1, 3; top-3
        # renormalised is 1 (.466), 3 (.345), 0 (.189): mass before 0 is .811 < 0.99, so 1, 3, 0 stay
        gen = torch.Generator().manual_seed(11)
        drawn = next_tokens(logits, 1.0, top_k, top_p, gen, vocab_limit=LIMIT)
        assert set(drawn.tolist()) == kept
        probs = torch.softmax(filter_logits(_shifted(logits[:, :LIMIT], 1.0), top_k, top_p), dim=1)
        assert torch.equal(drawn, torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(11))[:, 0])
    # without the limit top-2 keeps the two padding ids
    assert set(next_tokens(logits, 1.0, 2, generator=g).tolist()) == {5, 6}
    # k counts the real ids: more than there are is refused, as for the unrestricted vocabulary
    with pytest.raises(ValueError, match=r"top_k must be None or an int in \[1, 5\] \(the vocabulary\); got 6"):
        next_tokens(logits, 1.0, 6, vocab_limit=LIMIT)


# ----------------------------------------------------------------------------------------------------------------------
# beam_search


def _exhaustive(model, prompt: torch.Tensor, n: int, alpha: float) -> tuple[list[int], float]:
    """The best continuation of length n over the ids < LIMIT and its score Σ log p / n^α, log p the log-softmax of
    the first LIMIT logits at each position, every sequence scored by one forward."""
    best, best_score = None, -math.inf
    for tail in itertools.product(range(LIMIT), repeat=n):
        seq = torch.cat([prompt, torch.tensor(tail)])
        with torch.no_grad():
            logits = model(seq[None])[0][0, len(prompt) - 1: -1, :LIMIT]  # (n, LIMIT): each new token's logits
        logp = torch.log_softmax(logits.double(), dim=1)
        score = float(logp[torch.arange(n), torch.tensor(tail)].sum()) / n ** alpha
        if score > best_score:
            best, best_score = list(tail), score
    return best, best_score


@pytest.mark.parametrize("n, alpha", [(2, 1.0), (3, 0.0)])
def test_beam_search_equals_an_exhaustive_search_over_the_allowed_ids(n, alpha):
    model = _lm(seed=1, pad_bias=3.0)
    prompts = torch.randint(0, LIMIT, (2, 3), generator=torch.Generator().manual_seed(12))
    # LIMIT^(n-1) beams keep every prefix: the beam is exact
    found = beam_search(model, prompts, n, LIMIT ** (n - 1), length_penalty=alpha, vocab_limit=LIMIT)
    for b in range(2):
        tail, score = _exhaustive(model, prompts[b], n, alpha)
        assert found.tokens[b].tolist() == prompts[b].tolist() + tail
        assert found.scores[b].item() == pytest.approx(score, rel=1e-12)
    # not vacuous: unrestricted, the beam's best holds a padding id
    assert any(int(t[3:].max()) >= LIMIT for t in beam_search(model, prompts, n, 2, alpha).tokens)


def test_one_beam_is_greedy_generation_with_the_limit():
    model = _lm(seed=2)
    prompts = torch.randint(0, LIMIT, (3, 4), generator=torch.Generator().manual_seed(13))
    found = beam_search(model, prompts, 5, 1, vocab_limit=LIMIT)
    assert torch.equal(torch.stack(found.tokens), generate(model, prompts, 5, temperature=0, vocab_limit=LIMIT))
    with pytest.raises(ValueError, match=r"eos_id must be None or a token id in \[0, 5\); got 6"):
        beam_search(model, prompts, 5, 1, eos_id=6, vocab_limit=LIMIT)


# ----------------------------------------------------------------------------------------------------------------------
# an official Mamba LM (load_mamba): 37 tokenizer ids in 40 embedding rows


def test_an_official_lm_generates_tokenizer_ids_only():
    sd = official_state_dict("mamba", "mamba_ssm", N=4, R=2, tied=False)
    model = load_mamba(sd, dtype=F64)
    assert model.config.d_output == VOCAB_PADDED and VOCAB < VOCAB_PADDED
    prompt = torch.randint(0, VOCAB, (1, 3), generator=torch.Generator().manual_seed(14))
    # greedy: an argmax loop over the official float64 forward's first 37 columns
    seq = prompt.clone()
    for _ in range(4):
        seq = torch.cat([seq, reference_logits(sd, seq)[:, -1, :VOCAB].argmax(dim=1, keepdim=True)], dim=1)
    assert torch.equal(generate(model, prompt, 4, temperature=0, vocab_limit=VOCAB), seq)
    # hot sampling is near uniform over the rows: unrestricted, the 3 padding ids appear; with the limit, never
    prompts = prompt.repeat(40, 1)
    hot = dict(temperature=50.0, generator=torch.Generator().manual_seed(15))
    assert int(generate(model, prompts, 6, **hot)[:, 3:].max()) >= VOCAB
    hot["generator"].manual_seed(15)
    assert int(generate(model, prompts, 6, **hot, vocab_limit=VOCAB)[:, 3:].max()) < VOCAB
    found = beam_search(model, prompt, 3, 2, vocab_limit=VOCAB)
    assert int(found.tokens[0].max()) < VOCAB


# ----------------------------------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("bad", [0, -1, V + 1, True, 2.5, "5"])
def test_a_bad_vocab_limit_is_refused(bad):
    model = _lm()
    prompts = torch.zeros(1, 2, dtype=torch.long)
    message = rf"vocab_limit must be None or an int in \[1, {V}\] \(the head's outputs\); got {bad!r}"
    with pytest.raises(ValueError, match=message):
        generate(model, prompts, 2, vocab_limit=bad)
    with pytest.raises(ValueError, match=message):
        model.generate(prompts, 2, vocab_limit=bad)
    with pytest.raises(ValueError, match=message):
        beam_search(model, prompts, 2, 2, vocab_limit=bad)
    with pytest.raises(ValueError, match=message):
        next_tokens(torch.zeros(2, V), vocab_limit=bad)
    # the full vocabulary is allowed and changes nothing
    g = torch.Generator().manual_seed(16)
    assert torch.equal(generate(model, prompts, 4, generator=g, vocab_limit=V),
                       generate(model, prompts, 4, generator=g.manual_seed(16)))
