"""Probe (2026-12-07): a small token language model out of ssmkit, against the official Mamba LM and hand references.

What was probed, each against an independent reference (float64 throughout, tiny models):
- the structure and parameter count of ``SequenceModel(layer="mamba", head="lm", norm="rms")`` against the official
  ``MambaLMHeadModel`` count written out from its layers (embedding, per block in_proj / conv1d / x_proj / dt_proj /
  A_log / D / out_proj and an RMSNorm, a final RMSNorm, the LM head tied to the embedding, the vocabulary padded to a
  multiple of 8): ssmkit's differences are exactly an untied head with a bias and a LayerNorm (with a bias) at the end;
- tying the head to the embedding by hand: counted once, kept by ``deepcopy``, ``.to``, ``torch.save``, an optimiser
  step and ``load_state_dict``; its gradient is the sum of the embedding's and the head's of the untied model;
- the next-token loss and perplexity against a log-softmax written out by hand, and the loss of a right-padded
  ``pad_id`` batch against each sequence run alone;
- ``generate`` (greedy, temperature, top-k, top-p, prompts of different lengths, ``eos_id``, a seed) against a loop
  over ``model.step`` and against re-running the full forward at every position, with a top-k / top-p filter
  written here from the definitions (arXiv 1904.09751);
- ``beam_search`` with beams as wide as the hypothesis space against brute-force enumeration on a vocabulary of 5;
- a Mamba + attention hybrid (``interleave``): step, forward + step and chunked forward against one forward;
- the obvious mistakes: ids out of range (also past the shortest prompt, now named up front), float ids, an empty
  prompt, an empty token sequence (the message named the embedding's (B, 0, H)), ``max_new_tokens`` 0, a generator
  that is not a ``torch.Generator`` (greedy ignored it, sampling raised torch's TypeError after the prompt's forward).
"""

from __future__ import annotations

import copy
import io
import itertools
import math

import numpy as np
import pytest
import torch

from ssmkit.models import SequenceModel, beam_search, interleave, next_tokens
from ssmkit.train.objective import summed_loss_and_metric

F64 = torch.float64


def _lm(pattern, V, d=8, seed=0, pad_id=None, dtype=F64):
    torch.manual_seed(seed)
    options = {"attention": {"n_heads": 2}} if "attention" in pattern else None
    return SequenceModel(1, d, len(pattern), list(pattern), options, V, head="lm", pool=None, vocab_size=V,
                         norm="rms", pad_id=pad_id, dtype=dtype).eval()


def _official_mamba_lm_count(V, d, n_layer, multiple=8, d_state=16, d_conv=4, expand=2):
    """Parameters of mamba_ssm's MambaLMHeadModel (Mamba-1 mixer, rms_norm, tie_embeddings, d_intermediate 0)."""
    d_inner, rank = expand * d, math.ceil(d / 16)
    mixer = (d * 2 * d_inner  # in_proj, no bias
             + d_inner * d_conv + d_inner  # depthwise conv1d with bias
             + d_inner * (rank + 2 * d_state)  # x_proj -> (dt, B, C), no bias
             + rank * d_inner + d_inner  # dt_proj with bias
             + d_inner * d_state + d_inner  # A_log, D
             + d_inner * d)  # out_proj, no bias
    v_padded = multiple * math.ceil(V / multiple)
    return v_padded * d + n_layer * (mixer + d) + d, mixer  # embedding (= the tied head), blocks + RMSNorm, norm_f


# ---------------------------------------------------------------------------------------------------------------------
# structure, parameter count, tying


def test_parameter_count_against_the_official_mamba_lm():
    V, d, n = 56, 16, 2  # V a multiple of 8: the official model pads nothing
    model = _lm(["mamba"] * n, V, d=d)
    official, mixer = _official_mamba_lm_count(V, d, n)
    assert all(sum(p.numel() for p in b.layer.parameters()) == mixer for b in model.blocks)
    assert all(isinstance(b.norm, torch.nn.RMSNorm) and b.prenorm for b in model.blocks)
    assert model.num_parameters() == official + V * d + V + d  # untied head (V d) with bias (V), final LayerNorm bias
    # by hand: mixer 1024 + 160 + 1056 + 64 + 544 + 512 = 3360; official 56·16 + 2·(3360 + 16) + 16 = 7664
    assert (mixer, official) == (3360, 7664)
    assert model.num_parameters() == 7664 + 896 + 56 + 16
    model.head.weight = model.encoder.weight
    assert model.num_parameters() == official + V + d
    assert _official_mamba_lm_count(50, d, n)[0] == official  # a vocabulary of 50 is padded to 56 officially


def test_the_official_structure_by_hand_surgery_forwards_as_its_composition():
    # a final RMSNorm and a tied head without bias make the official MambaLMHeadModel's structure and count
    V, d, n = 56, 16, 2
    model = _lm(["mamba"] * n, V, d=d)
    model.final_norm = torch.nn.RMSNorm(d, eps=1e-5, dtype=F64)
    model.head = torch.nn.Linear(d, V, bias=False, dtype=F64)
    model.head.weight = model.encoder.weight
    with torch.no_grad():
        model.final_norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(7))
        for block in model.blocks:
            block.norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(8))
    assert model.num_parameters() == _official_mamba_lm_count(V, d, n)[0]

    def rms(h, w):  # x / sqrt(mean(x^2) + 1e-5) * w
        return h / torch.sqrt(h.square().mean(-1, keepdim=True) + 1e-5) * w

    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        h = model.encoder.weight[x]  # (B, L, d)
        for block in model.blocks:  # residual + mixer(RMSNorm(residual)): fused_add_norm's order, unfused
            h = h + block.layer(rms(h, block.norm.weight))[0]
        ref = rms(h, model.final_norm.weight) @ model.encoder.weight.T  # (B, L, V): the tied head
        assert (model(x)[0] - ref).abs().max() < 1e-12
        state = model.initial_state(2)
        for t in range(9):
            out, state = model.step(x[:, t], state)
            assert (out - ref[:, t]).abs().max() < 1e-12


def test_tied_head_survives_copies_loads_and_an_optimiser_step():
    V = 7
    model = _lm(["mamba", "mamba"], V)
    model.head.weight = model.encoder.weight
    assert sum(p.numel() for p in model.parameters()) == model.num_parameters()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_parameters()
    x = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(1))
    untied = copy.deepcopy(model)
    untied.head.weight = torch.nn.Parameter(untied.encoder.weight.detach().clone())
    model(x)[0].square().sum().backward()
    untied(x)[0].square().sum().backward()
    assert torch.allclose(model.encoder.weight.grad, untied.encoder.weight.grad + untied.head.weight.grad, atol=1e-12)
    before = model.encoder.weight.detach().clone()
    opt.step()
    assert model.head.weight is model.encoder.weight
    assert torch.allclose(model.encoder.weight, before - 0.5 * model.encoder.weight.grad, atol=1e-15)
    for other in (copy.deepcopy(model), copy.deepcopy(model).to(torch.float32)):
        assert other.head.weight is other.encoder.weight
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.head.weight is loaded.encoder.weight
    fresh = _lm(["mamba", "mamba"], V, seed=5)
    fresh.head.weight = fresh.encoder.weight
    fresh.load_state_dict(model.state_dict())
    assert fresh.head.weight is fresh.encoder.weight
    assert torch.equal(fresh(x)[0], model(x)[0])
    assert torch.equal(fresh.generate(x, 4, temperature=0), model.generate(x, 4, temperature=0))


# ---------------------------------------------------------------------------------------------------------------------
# loss and perplexity


def test_next_token_loss_and_perplexity_against_a_hand_log_softmax():
    V = 9
    model = _lm(["mamba", "attention"], V)
    x = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(x)[0].numpy()
    nll = []
    for b in range(3):
        for t in range(9):
            z = logits[b, t]
            nll.append(-(z[x[b, t + 1]] - z.max() - np.log(np.exp(z - z.max()).sum())))
    hand = float(np.mean(nll))
    y = torch.cat([x[:, 1:], torch.full((3, 1), -100)], 1)
    loss, _, count = summed_loss_and_metric("lm", torch.from_numpy(logits), y)
    assert count.item() == 27
    assert abs(loss.item() / 27 - hand) < 1e-13
    assert abs(math.exp(loss.item() / 27) - math.exp(hand)) < 1e-12
    assert 1.0 < math.exp(hand) < 3 * V  # an untrained model: near the vocabulary's size


def test_pad_id_padded_batch_scores_each_sequence_as_alone():
    V, pad = 8, 0
    model = _lm(["mamba", "attention"], V, pad_id=pad)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(1, V, (n,), generator=g) for n in (9, 5, 7)]
    x = torch.full((3, 9), pad)
    for b, s in enumerate(seqs):
        x[b, : s.numel()] = s
    lengths = torch.tensor([s.numel() for s in seqs])
    y = torch.cat([x[:, 1:], torch.full((3, 1), pad)], 1)
    with torch.no_grad():
        batched = summed_loss_and_metric("lm", model(x)[0], y, lengths - 1)[0].item()  # the last token has no target
        alone = 0.0
        for s in seqs:
            lp = torch.log_softmax(model(s[None])[0][0], -1)  # (n, V)
            alone -= sum(lp[t, s[t + 1]].item() for t in range(s.numel() - 1))
    assert abs(batched - alone) < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# generate


def _step_loop(model, prompt, n, choose):
    """A reference decoder: the prompt through ``step`` one token at a time, then n chosen tokens."""
    state, seq = model.initial_state(1), prompt.tolist()
    with torch.no_grad():
        for t in seq:
            logits, state = model.step(torch.tensor([t]), state)
        for _ in range(n):
            seq.append(choose(logits[0]))
            logits, state = model.step(torch.tensor([seq[-1]]), state)
    return seq


def _forward_loop(model, prompt, n):
    """Greedy by re-running the full forward on the growing sequence."""
    seq = prompt.tolist()
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
    return seq


def _filtered_probs(logits, T, k, p):
    """softmax(logits / T) kept to the top k (ties at the k-th kept), then to the nucleus of mass p: numpy."""
    z = logits.numpy().astype(np.float64)
    z = (z - z.max()) / T
    if k is not None:
        z = np.where(z < np.sort(z)[::-1][k - 1], -np.inf, z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if p is not None:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[before < p]] = True
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return torch.from_numpy(probs)


@pytest.mark.parametrize("pattern", [["mamba", "mamba"], ["mamba", "attention"]])
def test_greedy_generate_matches_the_step_loop_and_the_full_forward(pattern):
    V = 7
    model = _lm(pattern, V)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, V, (n,), generator=g) for n in (1, 4, 6)]
    out = model.generate(prompts, 6, temperature=0)
    for prompt, got in zip(prompts, out):
        ref = _step_loop(model, prompt, 6, lambda z: int(z.argmax()))
        assert got.tolist() == ref == _forward_loop(model, prompt, 6)
    same = model.generate(torch.stack([prompts[1], prompts[1]]), 6, temperature=0)
    assert same.tolist() == [out[1].tolist()] * 2
    assert torch.equal(model.generate(torch.stack([prompts[1]]), 0), prompts[1][None])
    assert [t.tolist() for t in model.generate(prompts, 0)] == [p.tolist() for p in prompts]


@pytest.mark.parametrize("T, k, p", [(0.4, None, None), (2.5, 3, None), (1.0, None, 0.6), (0.6, 4, 0.8),
                                     (1.0, None, 0.35)])
def test_sampled_generate_matches_a_reference_sampler(T, k, p):
    V, n = 7, 24
    model = _lm(["mamba", "attention"], V)
    with torch.no_grad():
        model.head.weight.mul_(4.0)  # logits spread over several units: the temperature and the cuts decide draws
    prompt = torch.tensor([3, 1, 4, 1])
    got = model.generate(prompt[None], n, temperature=T, top_k=k, top_p=p, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    ref = _step_loop(model, prompt, n,
                     lambda z: int(torch.multinomial(_filtered_probs(z, T, k, p), 1, generator=g)))
    assert got[0].tolist() == ref
    again = model.generate(prompt[None], n, temperature=T, top_k=k, top_p=p, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, again)
    with torch.no_grad():
        logits = model(got[:, :-1])[0][0]  # (4 + n - 1, V): the full forward's logits at every position
    for t in range(3, 3 + n):  # every drawn token is in the reference's support at its step
        assert _filtered_probs(logits[t], T, k, p)[int(got[0, t + 1])] > 0


def test_eos_stops_each_stream_and_fills_the_tensor():
    V = 7
    model = _lm(["mamba", "mamba"], V)
    prompts = torch.tensor([[2, 5, 1], [0, 0, 3], [6, 4, 4]])
    free = [_step_loop(model, p, 8, lambda z: int(z.argmax())) for p in prompts]
    eos = free[0][4]  # stream 0's second new token
    out = model.generate(prompts, 8, temperature=0, eos_id=eos)
    listed = model.generate(list(prompts), 8, temperature=0, eos_id=eos)
    for b, ref in enumerate(free):
        new = ref[3:]
        cut = ref[: 3 + new.index(eos) + 1] if eos in new else ref
        assert listed[b].tolist() == cut
        assert out[b].tolist() == cut + [eos] * (out.shape[1] - len(cut))
    assert out.shape[1] == max(len(t) for t in listed)


def test_next_tokens_and_generate_refuse_a_generator_that_is_not_one():
    model = _lm(["mamba"], 5)
    for call in (lambda: model.generate(torch.tensor([[1, 2]]), 2, temperature=0, generator=3),
                 lambda: model.generate(torch.tensor([[1, 2]]), 2, generator="seed"),
                 lambda: next_tokens(torch.zeros(1, 5), generator=7)):
        with pytest.raises(ValueError, match="generator must be None or a torch.Generator; got"):
            call()


# ---------------------------------------------------------------------------------------------------------------------
# beam search


def _brute_force(model, prompt, n, alpha, eos, V):
    """The best score Σ log p / len^α over every continuation of 1..n tokens (ending at eos, or n long)."""
    with torch.no_grad():
        tails = torch.tensor(list(itertools.product(range(V), repeat=n)))  # (V^n, n)
        seqs = torch.cat([prompt.expand(len(tails), -1), tails], 1)
        lp = torch.log_softmax(model(seqs)[0], -1)  # every prefix's next-token log-probabilities
    L, best = prompt.numel(), (-math.inf, None)
    for row, tail in enumerate(tails.tolist()):
        total = 0.0
        for i, token in enumerate(tail):
            total += lp[row, L - 1 + i, token].item()
            if token == eos or i == n - 1:
                score = total / (i + 1) ** alpha
                if score > best[0] + 1e-12:
                    best = (score, tail[: i + 1])
                break
    return best


@pytest.mark.parametrize("alpha, eos", [(1.0, None), (0.0, 1), (0.5, 1), (2.0, 3)])
def test_exhaustive_beam_search_equals_brute_force(alpha, eos):
    V, n = 5, 3
    model = _lm(["mamba", "attention"], V)
    prompts = torch.tensor([[1, 3, 0], [4, 4, 2]])
    result = beam_search(model, prompts, n, V ** n, length_penalty=alpha, eos_id=eos)
    for b in range(2):
        score, tail = _brute_force(model, prompts[b], n, alpha, eos, V)
        assert result.tokens[b][3:].tolist() == tail
        assert abs(result.scores[b].item() - score) < 1e-12
    greedy = beam_search(model, prompts, n, 1)
    assert [t.tolist() for t in greedy.tokens] == model.generate(prompts, n, temperature=0).tolist()


# ---------------------------------------------------------------------------------------------------------------------
# hybrids


def test_hybrid_steps_exactly_as_its_forward():
    V = 11
    pattern = interleave("mamba", "attention", n_layers=4, every=2)
    assert pattern == ["mamba", "attention", "mamba", "attention"]
    model = _lm(pattern, V, d=16)
    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(x)[0]
        state, outs = model.initial_state(2), []
        for t in range(9):
            o, state = model.step(x[:, t], state)
            outs.append(o)
        assert (torch.stack(outs, 1) - full).abs().max() < 1e-12
        _, state = model(x[:, :5])
        for t in range(5, 9):
            o, state = model.step(x[:, t], state)
            assert (o - full[:, t]).abs().max() < 1e-12
        _, state = model(x[:, :5])
        assert (model(x[:, 5:], state)[0] - full[:, 5:]).abs().max() < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# mistakes


def test_user_mistakes_raise_value_errors_naming_them():
    V = 11
    model = _lm(["mamba"], V, dtype=torch.float32)
    ids = r"token ids in \[0, vocab_size\) = \[0, 11\); got ids from "
    cases = [
        (lambda: model(torch.tensor([[0, V]])), ids + "0 to 11"),
        (lambda: model(torch.tensor([[0.0, 1.0]])), r"integer token ids \(B, L\); got \(1, 2\) torch.float32"),
        (lambda: model(torch.zeros(2, 0, dtype=torch.long)), r"token ids \(B, L\) of length L >= 1; got \(2, 0\)"),
        (lambda: model.generate(torch.tensor([[0, V]]), 2), "prompt 0 must hold " + ids + "0 to 11"),
        (lambda: model.generate([torch.tensor([1]), torch.tensor([1, 2, 99])], 2), "prompt 1 must hold " + ids + "1 to 99"),
        (lambda: model.generate([torch.tensor([1, -2])], 2), "prompt 0 must hold " + ids + "-2 to 1"),
        (lambda: model.generate(torch.tensor([[0.0, 1.0]]), 2), "prompt 0 must be a 1-D tensor of integer token ids"),
        (lambda: model.generate([torch.tensor([], dtype=torch.long)], 2), "prompt 0 must be a 1-D tensor"),
        (lambda: model.generate(torch.zeros(1, 0, dtype=torch.long), 2), r"B, L >= 1"),
        (lambda: model.generate(torch.tensor([[1]]), -1), "max_new_tokens must be an int >= 0"),
        (lambda: beam_search(model, torch.tensor([[1, 2], [0, 12]]), 2, 2), "prompt 1 must hold " + ids + "0 to 12"),
        (lambda: beam_search(model, torch.tensor([[1]]), 0, 2), "max_new_tokens"),
        (lambda: copy.deepcopy(model).half().generate(torch.tensor([[1]]), 1), "float32 or float64"),
    ]
    for call, want in cases:
        with pytest.raises(ValueError, match=want):
            call()
