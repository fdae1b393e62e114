"""Autoregressive generation with a token language model: the prompt by the parallel view, each new token by ``step``.

A ``SequenceModel(vocab_size=V, head="lm", pool=None)`` gives the logits of the next token at every position. To
continue a prompt x_1..x_L (arXiv 2312.00752 §3.4: a recurrent model generates in O(1) time per token):

    logits_L, h_L = forward(x_1..x_L)                  (the prompt in one parallel pass, its final state kept)
    x_{t+1} ~ p(· | logits_t)                          (the next token: greedy or sampled, below)
    logits_{t+1}, h_{t+1} = step(x_{t+1}, h_t)         (one recurrent step per new token)

Because every layer's ``step`` continues its ``forward`` exactly, this gives the same tokens as re-running ``forward``
on the growing sequence at every step (tests/models/test_generate.py holds it so for every layer).

The next token (Holtzman et al., "The Curious Case of Neural Text Degeneration", arXiv 1904.09751, for top-p):
- ``temperature = 0``: greedy, the argmax (the first of tied maxima);
- else sampled from softmax(logits / temperature) restricted to the ``top_k`` most likely tokens (when given), then to
  the nucleus of ``top_p`` (when given): the fewest most likely tokens whose probability sums to at least ``top_p``
  (after the temperature and the top-k cut, renormalised); ties are broken by the order ``torch.sort`` gives. This is
  the order in which Hugging Face's ``generate`` applies the three.
With ``vocab_limit`` = V' the logits are first cut to their first V' columns (the official Mamba decoder's
``vocab_size``): an LM whose embedding pads the tokenizer's ids (``load_mamba``: 50 277 ids, 50 280 rows) then never
yields a padding id, and ``top_k`` / ``top_p`` count the real ids only.

Prompts of different lengths in one batch: all streams advance together. The batch's shortest prompt length L_min is
run by ``forward``; from there each stream takes its own prompt's next token while it has one (teacher forcing
through ``step``) and a generated one after, so every stream continues exactly its own prompt (a trailing-padded
batch through one ``forward`` would not: its states come after the padding). A stream leaves the batch
(``ssmkit.layers.select_state``) when it has its ``max_new_tokens`` or has produced ``eos_id``.
"""

from __future__ import annotations

import math

import torch

from ssmkit.layers.cache import frozen_parameters
from ssmkit.layers.state import select_state
from ssmkit.models.sequence import SequenceModel

__all__ = ["filter_logits", "generate", "next_tokens"]


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, vocab: int) -> None:
    """Raise ``ValueError`` unless temperature >= 0 is finite, top_k is None or in [1, vocab], top_p None or in (0, 1]."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy); got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be None or an int in [1, {vocab}] (the vocabulary); got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1]; got {top_p!r}")


def _check_logits(logits: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` is a real floating (B, V) tensor."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a real floating (B, V) tensor; got {found}")


def _check_generator(generator: torch.Generator | None) -> None:
    """Raise ``ValueError`` unless ``generator`` is None or a ``torch.Generator`` (greedy decoding ignored anything
    else, and a draw raised torch's TypeError only after the prompt's forward)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be None or a torch.Generator; got {type(generator).__name__}")


def _check_prompt_ids(rows: list[torch.Tensor], vocab_size: int) -> None:
    """Raise ``ValueError`` naming the first prompt holding an id outside [0, vocab_size) (eagerly, before any work:
    an id past the shortest prompt's length reached the model only at its ``step``, whose message named no prompt)."""
    for i, row in enumerate(rows):
        low, high = int(row.min()), int(row.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"prompt {i} must hold token ids in [0, vocab_size) = [0, {vocab_size}); got ids from "
                             f"{low} to {high}")


def _check_vocab_limit(vocab_limit: int | None, vocab: int) -> int:
    """The ids a decoder may choose, [0, returned): ``vocab_limit`` when given, else ``vocab`` (the head's outputs);
    ``ValueError`` unless ``vocab_limit`` is None or an int in [1, vocab]."""
    if vocab_limit is None:
        return vocab
    if isinstance(vocab_limit, bool) or not isinstance(vocab_limit, int) or not 1 <= vocab_limit <= vocab:
        raise ValueError(f"vocab_limit must be None or an int in [1, {vocab}] (the head's outputs); got "
                         f"{vocab_limit!r}")
    return vocab_limit


def check_eos(eos_id: int | None, vocab: int) -> None:
    """Raise ``ValueError`` unless ``eos_id`` is None or a token id in [0, vocab)."""
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int) or not 0 <= eos_id < vocab):
        raise ValueError(f"eos_id must be None or a token id in [0, {vocab}); got {eos_id!r}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """The logits with every token outside the top-k and then outside the top-p nucleus set to -inf.

    Top-k keeps the k largest logits of each row and every logit equal to the k-th largest (ties at the k-th value
    are all kept, as Hugging Face's top-k filter does: a row may keep more than k tokens). Top-p keeps
    the fewest largest-probability tokens whose softmax probabilities (over the tokens top-k kept) sum to at least p:
    a token is kept when the probability mass of the tokens sorted before it is below p (the most likely token
    always), arXiv 1904.09751 §3.1.

    Args:
        logits: (B, V) real logits (temperature already applied).
        top_k: keep this many tokens per row (1 <= top_k <= V), or None.
        top_p: keep the nucleus of this probability mass (0 < top_p <= 1), or None.

    Returns:
        (B, V) logits, -inf outside the kept tokens (a new tensor; ``logits`` is not changed).
    """
    _check_logits(logits)
    _check_sampling(1.0, top_k, top_p, logits.shape[1])
    return _filtered(logits, top_k, top_p)


def _filtered(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """:func:`filter_logits` without its checks (the caller made them)."""
    out = logits.clone()
    if top_k is not None and top_k < logits.shape[1]:
        kth = torch.topk(out, top_k, dim=1).values[:, -1:]  # (B, 1): the k-th largest logit
        out = out.masked_fill(out < kth, -math.inf)
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(out, dim=1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits.double(), dim=1)  # float64 sums: p near a boundary decides in the last bits
        before = torch.cumsum(probs, dim=1) - probs  # mass of the tokens sorted before each one
        drop = torch.zeros_like(out, dtype=torch.bool).scatter(1, order, before >= top_p)  # back to token order
        out = out.masked_fill(drop, -math.inf)
    return out


def next_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """The next token of each row: the argmax for ``temperature = 0``, else one draw from softmax(logits / T) over the
    tokens :func:`filter_logits` keeps, among the ids below ``vocab_limit`` only.

    With ``vocab_limit`` = V' the logits are cut to their first V' columns before anything else (as the official Mamba
    decoder's ``vocab_size``, state-spaces/mamba ``mamba_ssm/utils/generation.py``): the ids >= V' get probability
    exactly 0, never win the argmax, and ``top_k`` / ``top_p`` count the first V' ids only (softmax renormalised over
    them).

    Args:
        logits: (B, V) real logits of the next token.
        temperature: T >= 0; 0 for greedy (``top_k`` and ``top_p`` then change nothing).
        top_k, top_p: see :func:`filter_logits`.
        generator: the ``torch.Generator`` of the draws (on the logits' device), or None for torch's default one.
        vocab_limit: only ids < vocab_limit are chosen (1 <= vocab_limit <= V): the tokenizer's vocabulary when the
            model's is padded past it (an official Mamba LM's 50 277 of 50 280); None: every id.

    The draws are computed in float64 from the logits less each row's largest one, so any temperature > 0 is
    accepted: as T -> 0 the draw tends to the argmax (shared among tied maxima), and a +inf logit is drawn for sure.

    Returns:
        (B,) int64 token ids.

    Raises:
        ValueError: a row holds a NaN logit, or no logit above -inf (no token to choose), among its first
            ``vocab_limit`` columns.
    """
    _check_logits(logits)
    vocab = _check_vocab_limit(vocab_limit, logits.shape[1])
    _check_sampling(temperature, top_k, top_p, vocab)
    _check_generator(generator)
    logits = logits[:, :vocab]  # (B, V'): the ids a token may take (a view; the same ids)
    bad = torch.isnan(logits).any(dim=1) | (logits == -math.inf).all(dim=1)  # (B,)
    if bool(bad.any()):  # argmax took a NaN for the largest logit; multinomial raised a RuntimeError on inf/nan
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"logits must hold no NaN and at least one logit above -inf per row; row {row} is "
                         f"{logits[row].tolist()} (a model that produced NaN: check its weights and input)")
    if temperature == 0:
        return torch.argmax(logits, dim=1)  # (B,)
    top = logits.amax(dim=1, keepdim=True)  # (B, 1)
    # the largest logit at 0, the others below it: logits / T overflowed to inf for T below ~1e-38 (float32) and
    # a +inf logit gave inf - inf; float64 keeps the differences of a float64 model's logits
    shifted = torch.where(logits == top, 0.0, logits.double() - top.double())  # (B, V) <= 0
    kept = _filtered(shifted / temperature, top_k, top_p)  # (B, V): checked above
    probs = torch.softmax(kept, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)


def _check_model(model: SequenceModel) -> None:
    """Raise ``ValueError`` unless ``model`` is a token language model whose logits can be fed back as tokens."""
    if not isinstance(model, SequenceModel):
        raise ValueError(f"model must be an ssmkit SequenceModel; got {type(model).__name__}")
    if model.vocab_size is None or model.head_name != "lm" or model.pair:
        raise ValueError(
            "generate needs a token language model, SequenceModel(vocab_size=V, head='lm', pool=None, d_output=V); "
            f"got vocab_size={model.vocab_size!r}, head={model.head_name!r}, pair={model.pair!r}"
        )
    if model.config.d_output > model.vocab_size:
        raise ValueError(
            f"the head predicts {model.config.d_output} tokens but the embedding reads {model.vocab_size}: a generated "
            "id past the vocabulary could not be fed back; build the model with d_output <= vocab_size"
        )


def _check_prompts(prompts: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """The prompts as a list of 1-D int64 tensors, each of length >= 1 (ValueError otherwise)."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2 or prompts.shape[0] < 1 or prompts.shape[1] < 1:
            raise ValueError(f"prompts must be token ids (B, L) with B, L >= 1, or a list of 1-D prompts; got "
                             f"{tuple(prompts.shape)}")
        rows = list(prompts.unbind(0))
    elif isinstance(prompts, (list, tuple)) and prompts:
        rows = list(prompts)
    else:
        raise ValueError(f"prompts must be token ids (B, L) or a non-empty list of 1-D token tensors; got "
                         f"{type(prompts).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, torch.Tensor) or row.dim() != 1 or row.numel() < 1 or row.is_floating_point() \
                or row.is_complex() or row.dtype == torch.bool:
            found = f"{tuple(row.shape)} {row.dtype}" if isinstance(row, torch.Tensor) else type(row).__name__
            raise ValueError(f"prompt {i} must be a 1-D tensor of integer token ids, at least one; got {found}")
    return [row.long() for row in rows]


def generate(
    model: SequenceModel,
    prompts: torch.Tensor | list[torch.Tensor],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    vocab_limit: int | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Continue each prompt by up to ``max_new_tokens`` tokens: the prompts by ``forward``, the new tokens by ``step``.

    The model runs in the mode it is in (call ``model.eval()`` first: in training mode dropout acts at every step),
    without gradients and inside :func:`ssmkit.layers.frozen_parameters` (nothing changes the weights meanwhile).

    Args:
        model: a token language model, ``SequenceModel(vocab_size=V, head="lm", pool=None, d_output=V)``.
        prompts: (B, L) token ids (every prompt of length L), or a list of B 1-D token tensors of any lengths >= 1.
        max_new_tokens: the most tokens added to each prompt (>= 0).
        temperature: 0 for greedy decoding, else the softmax temperature of the draws.
        top_k: sample among the k most likely tokens only (None: all).
        top_p: sample within the nucleus of this probability mass (None: all); see :func:`filter_logits`.
        eos_id: a stream stops after producing this token (kept as its last token); None to always add
            ``max_new_tokens``.
        generator: the ``torch.Generator`` of the draws (on the model's device), for reproducible samples.
        vocab_limit: only ids < vocab_limit are generated (1 <= vocab_limit <= d_output): the tokenizer's vocabulary
            when the model's is padded past it (``load_mamba``'s official LMs: 50 277 ids of 50 280 rows); None: every
            id. The logits are cut to their first ``vocab_limit`` columns before the temperature, ``top_k`` and
            ``top_p`` (see :func:`next_tokens`); ``top_k`` and ``eos_id`` must then lie within it.

    Returns:
        For a (B, L) tensor: (B, L + n) int64 ids, n the most tokens any stream added; a stream that stopped at
        ``eos_id`` earlier is filled with ``eos_id`` after it. For a list: a list of 1-D int64 tensors, each prompt
        followed by its new tokens (ending at its ``eos_id`` when it produced one).
    """
    _check_model(model)
    vocab = _check_vocab_limit(vocab_limit, model.config.d_output)  # the ids a new token may take
    _check_sampling(temperature, top_k, top_p, vocab)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
    check_eos(eos_id, vocab)
    _check_generator(generator)
    rows = _check_prompts(prompts)
    _check_prompt_ids(rows, model.vocab_size)
    device = model.head.weight.device
    lengths = [row.numel() for row in rows]
    new: list[list[int]] = [[] for _ in rows]
    if max_new_tokens > 0:
        with torch.no_grad(), frozen_parameters():  # no weight changes in here: the step caches check once
            _decode(model, rows, lengths, new, max_new_tokens, temperature, top_k, top_p, eos_id, generator, device,
                    vocab)
    out = [torch.cat([row, torch.tensor(extra, dtype=torch.long, device=row.device)]) for row, extra in zip(rows, new)]
    if not isinstance(prompts, torch.Tensor):
        return out
    width = max(t.numel() for t in out)
    fill = 0 if eos_id is None else eos_id  # only streams that stopped at eos_id are short
    return torch.stack([torch.cat([t, t.new_full((width - t.numel(),), fill)]) for t in out])


def _decode(
    model: SequenceModel,
    rows: list[torch.Tensor],
    lengths: list[int],
    new: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | None,
    generator: torch.Generator | None,
    device: torch.device,
    vocab: int,
) -> None:
    """Fill ``new[b]`` with stream b's generated tokens (see :func:`generate`; the streams advance together)."""
    start = min(lengths)  # every stream's prompt runs in parallel up to here
    prompt = torch.zeros(len(rows), max(lengths), dtype=torch.long, device=device)  # (B, L_max): prompts, 0 after
    for b, row in enumerate(rows):
        prompt[b, : lengths[b]] = row.to(device)
    logits, state = model(prompt[:, :start], return_state=True)  # (B, start, V)
    logits = logits[:, -1]  # (B, V): the next token's logits
    active = list(range(len(rows)))  # the streams still in the batch, in batch order
    position = start  # the position of the token being chosen
    while True:
        free = [lengths[b] <= position for b in active]  # past its prompt: the token is generated
        if all(free):
            token = next_tokens(logits, temperature, top_k, top_p, generator, vocab)  # (Ba,)
        else:
            token = prompt[:, position].clone()  # (Ba,) the prompts' own tokens
            if any(free):
                mask = torch.tensor(free, device=device)
                token[mask] = next_tokens(logits[mask], temperature, top_k, top_p, generator, vocab)
        keep = []
        for b, generated, value in zip(active, free, token.tolist()):
            if generated:
                new[b].append(value)
            keep.append(not generated or (len(new[b]) < max_new_tokens and value != eos_id))
        if not any(keep):
            return
        if not all(keep):
            mask = torch.tensor(keep, device=device)
            state, prompt, token = select_state(state, mask), prompt[mask], token[mask]
            active = [b for b, k in zip(active, keep) if k]
        logits, state = model.step(token, state)  # (Ba, V)
        position += 1
