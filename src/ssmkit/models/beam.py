"""Beam search with a token language model: K hypotheses per prompt, their states kept and reordered by
``ssmkit.layers.select_state``.

For a prompt x_1..x_L and new tokens y_1..y_n, a hypothesis scores

    score(y) = Σ_i log p(y_i | x, y_<i) / n^α                      (α = ``length_penalty``; n the new tokens)

At each step every live hypothesis is extended by every token; per prompt the 2K best extensions by summed
log-probability are taken in order: one that ends in ``eos_id`` becomes a finished hypothesis (the K best finished are
kept), the others fill the K live beams. A prompt is done when it has K finished hypotheses and no live beam can beat
the worst of them any more (a live beam's best reachable score: its sum over the longest length it can reach for α > 0,
its current length otherwise; log-probabilities are <= 0). After ``max_new_tokens`` the live beams count as finished.
The result is each prompt's best finished hypothesis. The prompts run by ``forward`` in one pass, each new token by
one ``step`` of the K beams of every prompt, the states reordered along the batch axis as beams are kept and dropped.

With ``vocab_limit`` = V' only the ids < V' extend a beam (the tokenizer's ids of an LM whose embedding pads them, as
``load_mamba``'s official LMs), and log p is the log-softmax of the first V' logits: the model's distribution
renormalised over them, the one :func:`ssmkit.models.generate` samples with the same ``vocab_limit``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ssmkit.layers.cache import frozen_parameters
from ssmkit.layers.checks import check_positive_int
from ssmkit.layers.state import select_state
from ssmkit.models.generate import _check_model, _check_prompt_ids, _check_vocab_limit, check_eos
from ssmkit.models.sequence import SequenceModel

__all__ = ["BeamResult", "beam_search"]


class BeamResult(NamedTuple):
    """The best hypothesis of each prompt.

    Attributes:
        tokens: one 1-D int64 tensor per prompt: the prompt and its new tokens (ending at ``eos_id`` when it produced
            one).
        scores: (B,) float64, each hypothesis's score Σ log p / n^α.
    """

    tokens: list[torch.Tensor]
    scores: torch.Tensor


def _bound(total: float, length: int, max_new_tokens: int, alpha: float) -> float:
    """The best score a live beam with log-probability sum ``total`` after ``length`` new tokens can still reach."""
    return total / (max_new_tokens if alpha > 0 else length) ** alpha


def beam_search(
    model: SequenceModel,
    prompts: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    vocab_limit: int | None = None,
) -> BeamResult:
    """The highest-scoring continuation of each prompt found by a beam of ``num_beams`` hypotheses (module docstring).

    Runs without gradients, in the model's mode (call ``model.eval()`` first: in training mode dropout draws a new
    mask at every forward and step, so the scores are not the eval model's), inside
    :func:`ssmkit.layers.frozen_parameters`. Tied log-probabilities go to the earlier beam, then the lower token id.

    Args:
        model: a token language model, ``SequenceModel(vocab_size=V, head="lm", pool=None, d_output=V)``.
        prompts: (B, L) token ids, L >= 1.
        max_new_tokens: the most tokens added to a prompt (>= 1).
        num_beams: K, the hypotheses kept per prompt (>= 1; 1 is greedy decoding when ``eos_id`` is None: with an
            ``eos_id`` one beam continues past a finished hypothesis and the better of them by score is returned).
        length_penalty: α in score = Σ log p / n^α (0: the plain sum, which favours short hypotheses; 1: the mean).
        eos_id: the token that ends a hypothesis, or None (every hypothesis has ``max_new_tokens`` tokens).
        vocab_limit: only ids < vocab_limit extend a beam (1 <= vocab_limit <= d_output): the tokenizer's vocabulary
            when the model's is padded past it (``load_mamba``'s official LMs: 50 277 ids of 50 280 rows); None: every
            id. log p is then the log-softmax of the first ``vocab_limit`` logits, and ``eos_id`` must lie below it.

    Returns:
        a :class:`BeamResult`: each prompt's best hypothesis and its score.
    """
    _check_model(model)
    vocab = _check_vocab_limit(vocab_limit, model.config.d_output)  # the ids that may extend a beam
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2 or prompts.shape[0] < 1 or prompts.shape[1] < 1 \
            or prompts.is_floating_point() or prompts.is_complex() or prompts.dtype == torch.bool:
        found = f"{tuple(prompts.shape)} {prompts.dtype}" if isinstance(prompts, torch.Tensor) else type(prompts).__name__
        raise ValueError(f"prompts must be integer token ids (B, L) with B, L >= 1; got {found}")
    _check_prompt_ids(list(prompts.long()), model.vocab_size)  # each prompt named, before any work
    check_positive_int(max_new_tokens, "max_new_tokens")
    check_positive_int(num_beams, "num_beams")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or not math.isfinite(
            length_penalty):
        raise ValueError(f"length_penalty must be a finite number; got {length_penalty!r}")
    try:  # n^α for every n <= max_new_tokens must be a finite float (a float power raises OverflowError past it)
        float(max_new_tokens) ** abs(length_penalty)
    except OverflowError:
        raise ValueError(f"length_penalty must have max_new_tokens^|length_penalty| a finite float (|length_penalty| "
                         f"<= {709.78 / math.log(max_new_tokens):.4g} for max_new_tokens={max_new_tokens}); got "
                         f"{length_penalty!r}") from None
    check_eos(eos_id, vocab)
    with torch.no_grad(), frozen_parameters():
        found = _search(model, prompts.long(), max_new_tokens, num_beams, float(length_penalty), eos_id, vocab)
    tokens = [torch.cat([prompt, torch.tensor(new, dtype=torch.long, device=prompts.device)])
              for prompt, (_, new) in zip(prompts.long(), found)]
    return BeamResult(tokens, torch.tensor([score for score, _ in found], dtype=torch.float64))


def _log_probs(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """log_softmax of the first ``vocab`` columns of (Ba, V) logits in float64, (Ba, vocab); ValueError for a NaN
    there (a model that produced one: every score would be NaN, and no comparison would pick a hypothesis)."""
    logits = logits[:, :vocab]  # (Ba, vocab): the ids that may extend a beam
    if bool(torch.isnan(logits).any()):
        raise ValueError("the model's logits hold NaN (check its weights and input): beam search cannot rank them")
    return torch.log_softmax(logits.double(), dim=-1)


def _search(model: SequenceModel, prompts: torch.Tensor, max_new_tokens: int, K: int, alpha: float,
            eos_id: int | None, vocab: int) -> list[tuple[float, list[int]]]:
    """(score, new tokens) of each prompt's best hypothesis."""
    device = model.head.weight.device
    B = prompts.shape[0]
    logits, state = model(prompts.to(device), return_state=True)  # (B, L, V)
    logp = _log_probs(logits[:, -1], vocab)  # (B, vocab): the first new token
    # live beams: per prompt a list of (log-probability sum, tokens); their rows in the batch are prompt-major
    live: list[list[tuple[float, list[int]]]] = [[(0.0, [])] for _ in range(B)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for length in range(1, max_new_tokens + 1):
        new_live, keep_rows, step_tokens = [], [], []
        row = 0
        for b in range(B):
            beams = live[b]
            if not beams:  # the prompt has stopped (or every extension ended at eos)
                new_live.append([])
                continue
            sums = torch.tensor([s for s, _ in beams], dtype=torch.float64, device=device)[:, None] + logp[
                row: row + len(beams)]  # (beams, V): each extension's log-probability sum
            # the 2K best extensions, in order; ties go to the earlier beam, then the lower token id (as greedy
            # decoding's first of tied maxima; topk's choice and order among equal values are unspecified): every
            # extension at least the 2K-th best, in index order, then a stable sort
            flat = sums.flatten()
            top = torch.nonzero(flat >= torch.topk(flat, min(2 * K, flat.numel())).values[-1]).flatten()
            top = top[torch.sort(flat[top], descending=True, stable=True).indices[: 2 * K]]
            top_sums = flat[top]
            chosen = []
            for total, index in zip(top_sums.tolist(), top.tolist()):
                beam, token = divmod(index, sums.shape[1])
                tokens = beams[beam][1] + [token]
                if token == eos_id:
                    finished[b].append((total / length ** alpha, tokens))
                    continue
                if len(chosen) < K:
                    chosen.append((total, tokens, row + beam))
            finished[b] = sorted(finished[b], key=lambda f: -f[0])[:K]
            if length == max_new_tokens:
                finished[b] = sorted(finished[b] + [(t / length ** alpha, tk) for t, tk, _ in chosen],
                                     key=lambda f: -f[0])[:K]
                chosen = []
            elif len(finished[b]) == K and chosen and finished[b][-1][0] >= _bound(chosen[0][0], length,
                                                                                 max_new_tokens, alpha):
                chosen = []  # no live beam can beat the worst of the K finished: the prompt stops
            new_live.append([(t, tk) for t, tk, _ in chosen])
            keep_rows += [r for _, _, r in chosen]
            step_tokens += [tk[-1] for _, tk, _ in chosen]
            row += len(beams)
        live = new_live
        if not keep_rows:
            break
        index = torch.tensor(keep_rows, device=device)
        state = select_state(state, index)  # the kept beams' states, prompt-major; a beam kept twice is copied
        out, state = model.step(torch.tensor(step_tokens, device=device), state)  # (Ba, V)
        logp = _log_probs(out, vocab)
    return [max(f, key=lambda h: h[0]) if f else (-math.inf, []) for f in finished]
