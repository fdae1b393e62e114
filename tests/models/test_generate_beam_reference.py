"""Generation, beam search, activation checkpointing and the models' dropout (``ssmkit.models.generate``, ``.beam``,
``.recompute``, ``.dropout``) against independent references: a per-token loop over ``forward`` on the growing prefix
(greedy, and sampled from numpy-filtered probabilities), top-k / top-p written out in numpy, the beam's algorithm run
on Python lists with every log-probability from a whole-sequence forward (its live beams counted per step), the same
model without the checkpoint, and dropout's closed form (values 0 or x / (1 - p), P(0) = p).

Tiny models (d_model 8, vocabulary <= 7, float64) keep the file fast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ssmkit import ops
from ssmkit.models import SequenceModel, beam_search, filter_logits, generate, next_tokens
from ssmkit.models.dropout import Dropout
from ssmkit.models.recompute import checkpointed_block
from ssmkit.ops.dropout import dropout as ops_dropout
from tests.conftest import DEVICE

F64 = torch.float64
V = 7
D = 8


def _lm(pattern=("s4d", "mamba"), seed=0, vocab=V, scale=0.5):
    """A token LM (d_model 8) on the test device, its weights moved off their init so that its logits spread."""
    torch.manual_seed(seed)
    options = {"s4d": {"d_state": 4}, "mamba": {"d_state": 2}, "attention": {"n_heads": 2, "head_dim": 4}}
    model = SequenceModel(1, D, len(pattern), list(pattern), {n: options[n] for n in pattern}, vocab, head="lm",
                          pool=None, vocab_size=vocab, device=DEVICE, dtype=F64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def _last_logits(model, seq):
    """The next token's logits after the 1-D sequence ``seq``, by one forward over all of it (float64 numpy)."""
    with torch.no_grad():
        logits, _ = model(torch.as_tensor(seq, dtype=torch.long, device=DEVICE)[None], return_state=False)
    return logits[0, -1].double().cpu().numpy()


def _greedy_loop(model, prompt, n, eos_id=None):
    """n greedy tokens after ``prompt`` (a list), each the first argmax of a forward over the prefix."""
    seq = list(prompt)
    for _ in range(n):
        token = int(np.argmax(_last_logits(model, seq)))
        seq.append(token)
        if token == eos_id:
            break
    return seq


def _filter_np(row, top_k, top_p):
    """Top-k (every value tied with the k-th kept) then top-p over the kept tokens, by their definitions (float64)."""
    row = np.array(row, dtype=np.float64)
    if top_k is not None:
        kth = np.sort(row)[::-1][top_k - 1]
        row[row < kth] = -np.inf
    if top_p is not None:
        finite = np.isfinite(row)
        p = np.zeros_like(row)
        p[finite] = np.exp(row[finite] - row[finite].max())
        p /= p.sum()
        mass = 0.0
        for i in sorted(range(row.size), key=lambda i: (-row[i], i)):
            if mass >= top_p:
                row[i] = -np.inf
            mass += p[i]
    return row


# ---------------------------------------------------------------- generate


PROMPTS = [[3, 1, 4], [1], [5, 0, 2, 6, 1], [2, 2]]


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_k=1),
                                      dict(temperature=0.7, top_p=1e-9), dict(temperature=2.0, top_k=1, top_p=0.5)])
def test_prompts_of_four_lengths_equal_a_greedy_loop_over_forward(sampling):
    # top_k = 1 or a nucleus of almost no mass leaves one token: sampled, they are greedy decoding too, while some
    # streams still read their prompts and others already generate
    model = _lm()
    eos = 4
    out = generate(model, [torch.tensor(p) for p in PROMPTS], 6, eos_id=eos,
                   generator=torch.Generator(device=DEVICE).manual_seed(0), **sampling)
    for prompt, got in zip(PROMPTS, out):
        assert got.tolist() == _greedy_loop(model, prompt, 6, eos_id=eos)
    table = generate(model, torch.tensor([[3, 1, 4], [0, 6, 5]]), 5, eos_id=eos, **sampling,
                     generator=torch.Generator(device=DEVICE).manual_seed(0))
    want = [_greedy_loop(model, p, 5, eos_id=eos) for p in ([3, 1, 4], [0, 6, 5])]
    width = max(len(w) for w in want)
    assert table.tolist() == [w + [eos] * (width - len(w)) for w in want]  # a stopped stream's row filled with eos


def test_the_prompt_runs_by_forward_to_the_shortest_then_one_step_per_token():
    model = _lm()
    calls, steps = [], []
    forward, step = model.forward, model.step

    def counting_forward(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return forward(x, *args, **kwargs)

    def counting_step(x_t, state):
        steps.append(x_t.shape[0])
        return step(x_t, state)

    model.forward, model.step = counting_forward, counting_step
    lengths, n = [3, 5, 4], 2
    generate(model, [torch.arange(k) % V for k in lengths], n, temperature=0)
    assert calls == [(3, 3)]  # one forward over the first min(lengths) tokens of every prompt
    # stream b is stepped after choosing the tokens at positions 3 .. lengths[b] + n - 2 (its last token not fed)
    assert steps == [sum(p <= k + n - 2 for k in lengths) for p in range(3, max(lengths) + n - 1)]


def test_sampled_tokens_equal_a_loop_of_numpy_filtered_draws():
    # one stream: each draw is one multinomial of the generator over softmax((logits - max) / T) filtered by top-k
    # then top-p, the probabilities computed here in numpy from a forward over the prefix
    model = _lm(scale=0.8)
    for T, top_k, top_p in ((0.8, None, None), (1.7, 5, None), (0.6, None, 0.8), (1.3, 4, 0.85)):
        got = generate(model, torch.tensor([[2, 0, 5]]), 10, temperature=T, top_k=top_k, top_p=top_p,
                       generator=torch.Generator(device=DEVICE).manual_seed(11))[0].tolist()
        g = torch.Generator(device=DEVICE).manual_seed(11)
        seq = [2, 0, 5]
        for _ in range(10):
            logits = _last_logits(model, seq)
            kept = _filter_np((logits - logits.max()) / T, top_k, top_p)
            p = np.exp(kept - kept.max())
            seq.append(int(torch.multinomial(torch.from_numpy(p / p.sum()).to(DEVICE)[None], 1, generator=g)))
        assert got == seq, (T, top_k, top_p)


def test_top_p_one_keeps_even_tokens_whose_probability_underflows():
    logits = torch.tensor([[0.0, -800.0, -5.0, -2000.0], [3.0, 1.0, -900.0, 2.0]], dtype=F64)
    for top_k in (None, 4):
        got = filter_logits(logits, top_k, 1.0)
        assert torch.equal(got, logits)
        assert got is not logits  # a new tensor (the docstring's promise)
    assert filter_logits(logits) is not logits
    got = filter_logits(logits)
    got[0, 0] = 9.0
    assert logits[0, 0] == 0.0


def test_the_nucleus_boundary_is_decided_in_float64():
    # the most likely token holds p1 of the mass (float64); top_p = p1 - 1e-15 is reached by it alone, while the
    # float32 softmax rounds p1 below that top_p and would keep the second token too
    for dtype in (F64, torch.float32):
        logits = torch.tensor([[math.log(0.7), math.log(0.3), math.log(1e-3)]], dtype=dtype)
        p1 = float(torch.softmax(logits.double(), dim=1)[0, 0])
        top_p = p1 - 1e-15
        assert float(torch.softmax(logits.float(), dim=1)[0, 0]) < top_p  # the case float32 decides wrongly
        want = _filter_np(logits[0].double().numpy(), None, top_p)
        assert np.array_equal(np.isinf(want), [False, True, True])
        assert torch.equal(torch.isinf(filter_logits(logits, None, top_p))[0], torch.from_numpy(np.isinf(want)))


def test_filters_by_numpy_on_rows_with_ties_and_minus_infinity():
    g = torch.Generator().manual_seed(3)
    logits = torch.randint(-3, 3, (40, V), generator=g).double()  # many ties, at the k-th value too
    logits[::5, 2] = -math.inf
    for top_k, top_p in ((1, None), (2, None), (V - 1, None), (None, 0.3), (None, 0.75), (3, 0.6), (V, 0.99)):
        got = filter_logits(logits, top_k, top_p)
        want = np.stack([_filter_np(row, top_k, top_p) for row in logits.numpy()])
        # ties inside the nucleus are broken by the sort's order: compare the kept counts and the kept values
        assert np.array_equal(torch.isinf(got).sum(1).numpy(), np.isinf(want).sum(1)), (top_k, top_p)
        for a, b in zip(got.numpy(), want):
            assert np.array_equal(np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)]))
        if top_p is None:
            assert np.array_equal(got.numpy(), want)  # top-k alone: exactly the definition


def test_next_tokens_takes_rows_with_some_minus_infinity_and_draws_only_kept_tokens():
    logits = torch.tensor([[0.0, -math.inf, 1.0, -math.inf], [-math.inf, -math.inf, -math.inf, 2.0]], dtype=F64)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    draws = torch.stack([next_tokens(logits.to(DEVICE), 1.0, generator=g) for _ in range(200)]).cpu()
    assert set(draws[:, 0].tolist()) == {0, 2} and set(draws[:, 1].tolist()) == {3}
    assert next_tokens(logits.to(DEVICE), 0).tolist() == [2, 3]


def test_filter_logits_checks_its_cut_offs_by_name():
    logits = torch.zeros(2, V, dtype=F64)
    for top_k, top_p, name in ((0, None, "top_k"), (V + 1, None, "top_k"), (2.0, None, "top_k"), (True, None, "top_k"),
                               (None, 0.0, "top_p"), (None, 1.5, "top_p"), (None, True, "top_p")):
        with pytest.raises(ValueError, match=name):
            filter_logits(logits, top_k, top_p)
    assert torch.equal(filter_logits(logits, V, 1.0), logits)  # the bounds themselves are accepted


def test_bool_and_empty_prompts_are_refused():
    model = _lm()
    with pytest.raises(ValueError, match="prompt 0"):
        generate(model, [torch.tensor([True, False])], 2)
    with pytest.raises(ValueError, match="prompts must be token ids"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)


# ---------------------------------------------------------------- beam search


def _beam_reference(model, prompt, n, K, alpha, eos_id):
    """The beam's algorithm (beam.py's module docstring) over Python lists, every log-probability from a forward over
    the whole prefix: (score, new tokens, live beams after each step that is followed by a step)."""
    live, finished, counts = [(0.0, [])], [], []
    for length in range(1, n + 1):
        candidates = []
        for b, (total, new) in enumerate(live):
            logits = _last_logits(model, list(prompt) + new)
            logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
            candidates += [(total + float(logp[v]), b, v, new + [v]) for v in range(logp.size)]
        candidates = sorted(candidates, key=lambda c: (-c[0], c[1], c[2]))[: 2 * K]  # ties: earlier beam, lower id
        chosen = []
        for total, _, v, new in candidates:
            if v == eos_id:
                finished.append((total / length**alpha, new))
            elif len(chosen) < K:
                chosen.append((total, new))
        finished = sorted(finished, key=lambda f: -f[0])[:K]
        if length == n:
            return max(finished + [(t / n**alpha, new) for t, new in chosen], key=lambda f: f[0]) + (counts,)
        best = max(t for t, _ in chosen) / (n if alpha > 0 else length) ** alpha if chosen else -math.inf
        if not chosen or (len(finished) == K and min(f[0] for f in finished) >= best):
            return max(finished, key=lambda f: f[0]) + (counts,)
        counts.append(len(chosen))
        live = chosen
    raise AssertionError("unreachable")


@pytest.mark.parametrize("alpha", [-0.5, 0.0, 1.0, 2.0])
def test_beam_search_follows_its_algorithm_and_steps_only_live_beams(alpha):
    prompts = torch.tensor([[0, 3], [2, 2], [5, 1]])
    n = 5
    for K, eos_id, lift in ((1, 1, 1.5), (2, 0, 1.0), (3, 3, 1.5), (2, None, 0.0)):
        model = _lm(seed=K)
        with torch.no_grad():
            if eos_id is not None:
                model.head.bias[eos_id] += lift  # eos often among the best: finished hypotheses, early stops
        steps = []
        step = model.step

        def counting(x_t, state, step=step, steps=steps):
            steps.append(x_t.shape[0])
            return step(x_t, state)

        model.step = counting
        result = beam_search(model, prompts, n, K, length_penalty=alpha, eos_id=eos_id)
        counts = []
        for b, prompt in enumerate(prompts.tolist()):
            score, new, live = _beam_reference(model, prompt, n, K, alpha, eos_id)
            assert result.tokens[b].tolist() == prompt + new, (K, eos_id, b)
            assert float(result.scores[b]) == pytest.approx(score, rel=1e-12, abs=1e-14)
            counts.append(live)
        # one step per length while any prompt has live beams, each over every prompt's live beams
        want = [sum(c[i] for c in counts if i < len(c)) for i in range(max(len(c) for c in counts))]
        assert steps == want, (K, eos_id)


def test_a_live_beam_that_can_only_tie_the_worst_finished_one_stops_the_prompt():
    # a zero head: every token has log-probability -log V. With α = 0 the first step finishes eos (token 0, score
    # -log V) and keeps token 1 alive with the same sum: it can only tie, not beat, the finished hypothesis, so the
    # prompt is done without a step
    model = _lm(vocab=5)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    steps = []
    step = model.step
    model.step = lambda x_t, state: (steps.append(x_t.shape[0]), step(x_t, state))[1]
    result = beam_search(model, torch.tensor([[1, 2]]), 4, 1, length_penalty=0.0, eos_id=0)
    score, new, live = _beam_reference(model, [1, 2], 4, 1, 0.0, 0)
    assert result.tokens[0].tolist() == [1, 2] + new == [1, 2, 0] and steps == live == []
    assert float(result.scores[0]) == pytest.approx(score, rel=1e-15) and score == pytest.approx(-math.log(5))


def test_beam_scores_are_float64_exact_and_a_wide_beam_is_exhaustive_with_a_negative_alpha():
    model = _lm(seed=4, vocab=3)
    prompt = [1, 0]
    alpha, n = -0.5, 3
    best = (-math.inf, None)
    for length in range(1, n + 1):
        for m in range(3**length):
            new = [(m // 3**i) % 3 for i in range(length)]
            if 2 in new[:-1] or (length < n and new[-1] != 2):
                continue
            total = 0.0
            for i, v in enumerate(new):
                logits = _last_logits(model, prompt + new[:i])
                total += float(logits[v] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
            best = max(best, (total / length**alpha, new))
    result = beam_search(model, torch.tensor([prompt]), n, 27, length_penalty=alpha, eos_id=2)
    assert result.scores.dtype == F64
    assert result.tokens[0].tolist() == prompt + best[1]
    assert float(result.scores[0]) == pytest.approx(best[0], rel=1e-12)


def test_a_float32_models_scores_are_summed_in_float64_from_the_logits_it_gave():
    # the log-probabilities of float32 logits taken in float64: the logits the beam saw (the prompt's forward, then
    # each step's) are recorded, and the score recomputed from them in numpy float64
    model = _lm(seed=6).float()
    seen = []
    forward, step = model.forward, model.step

    def recording_forward(x, *args, **kwargs):
        out = forward(x, *args, **kwargs)
        seen.append(out[0][:, -1].double().cpu().numpy())
        return out

    def recording_step(x_t, state):
        out = step(x_t, state)
        seen.append(out[0].double().cpu().numpy())
        return out

    model.forward, model.step = recording_forward, recording_step
    prompt = torch.tensor([[3, 1, 2]])
    result = beam_search(model, prompt, 6, 1, length_penalty=0.0)
    new = result.tokens[0][3:].tolist()
    total = 0.0
    for logits, token in zip(seen, new):
        row = logits[0]
        assert token == int(np.argmax(row))  # one beam: greedy on what it saw
        total += float(row[token] - row.max() - np.log(np.exp(row - row.max()).sum()))
    assert float(result.scores[0]) == pytest.approx(total, rel=1e-13)


# ---------------------------------------------------------------- activation checkpointing


def _irregular_model(seed=0, pattern=("lru", "mamba")):
    torch.manual_seed(seed)
    options = {"lru": {"d_state": 4}, "mamba": {"d_state": 2}, "s4d": {"d_state": 4}, "dss": {"d_state": 4},
               "ema": {}, "dlr": {"d_state": 4}}
    return SequenceModel(2, D, len(pattern), list(pattern), {n: options[n] for n in pattern}, 3, pool=None,
                         norm="batch", dropout=0.2, device=DEVICE, dtype=F64).train()


def _grads(model, fn, checkpointing):
    model.activation_checkpointing = checkpointing
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    out = fn(model)
    out.backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_intervals_and_initial_states_reach_the_recomputed_blocks():
    x = torch.randn(2, 9, 2, dtype=F64, device=DEVICE)
    tau = torch.rand(2, 9, dtype=F64, device=DEVICE) * 2 + 0.1  # irregular sampling: the layers' dt scaled per step

    def run(model):
        state = model.initial_state(2)
        leaves = [t for t in torch.utils._pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
        for i, t in enumerate(leaves):
            t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(i), dtype=t.dtype).to(t.device))
        y, _ = model(x, state=state, intervals=tau)
        return y.square().sum()

    (a, ga), (b, gb) = _grads(_irregular_model(), run, False), _grads(_irregular_model(), run, True)
    assert torch.equal(a, b) and all(torch.allclose(g, h, rtol=1e-12, atol=0) for g, h in zip(ga, gb))

    from torch.func import functional_call, grad  # inside torch.func the blocks run without the checkpoint

    model = _irregular_model().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    state = model.initial_state(1)
    for t in torch.utils._pytree.tree_leaves(state):
        if isinstance(t, torch.Tensor):
            t.fill_(0.5)

    def loss(p):
        y, _ = functional_call(model, p, (x[:1],), {"state": state, "intervals": tau[:1]})
        return y.square().sum()

    results = []
    for on in (False, True):
        model.activation_checkpointing = on
        results.append(grad(loss)(params))
    for k in params:
        assert torch.allclose(results[0][k], results[1][k], rtol=1e-12, atol=0), k


@pytest.mark.parametrize("name", ["s4d", "dss", "ema", "dlr"])
def test_the_irregular_bank_layers_recompute_under_a_checkpoint(name):
    # irregular_bank._NativeBank.backward read ctx.saved_tensors three times; torch's non-reentrant checkpoint unpacks
    # each saved tensor once (CheckpointError in the first backward of an irregularly sampled, checkpointed model)
    x = torch.randn(2, 7, 2, dtype=F64, device=DEVICE)
    tau = torch.rand(2, 7, dtype=F64, device=DEVICE) + 0.1

    def run(model):
        return model(x, intervals=tau)[0].square().sum()

    (a, ga), (b, gb) = (_grads(_irregular_model(pattern=(name,)), run, on) for on in (False, True))
    assert torch.equal(a, b) and all(torch.allclose(g, h, rtol=1e-12, atol=0) for g, h in zip(ga, gb))


@pytest.mark.parametrize("name", ["s4d", "mamba", "ema", "rglru"])
def test_a_double_backward_through_the_checkpoint_equals_the_one_without(name):
    # the create_graph branch of the native kernels' backward (ops/native diagonal.py, selective.py, conv.py, zoh.py)
    # read ctx.saved_tensors a second time, which torch's non-reentrant checkpoint refuses (CheckpointError)
    # a gradient penalty: d/dθ |d loss / d x|², through the recomputed blocks
    x = torch.randn(2, 6, 2, dtype=F64, device=DEVICE)

    def run(on):
        torch.manual_seed(0)
        options = {"s4d": {"d_state": 4}, "mamba": {"d_state": 2}, "ema": {}, "rglru": {}}
        model = SequenceModel(2, D, 1, name, options[name], 3, pool="mean", device=DEVICE, dtype=F64).train()
        model.activation_checkpointing = on
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xi, return_state=False)[0].square().sum(), xi, create_graph=True)
        g.square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    assert all(torch.allclose(a, b, rtol=1e-10, atol=0) for a, b in zip(run(False), run(True)))


def test_a_backward_after_another_forward_restores_that_forwards_statistics():
    # forward 1 (checkpointed), backward 1 with retain_graph, forward 2, backward 2 of graph 1: the recomputations
    # must leave the batch norms' statistics where forward 2 put them
    x1 = torch.randn(2, 10, 2, dtype=F64, device=DEVICE)
    x2 = 3 * torch.randn(2, 10, 2, dtype=F64, device=DEVICE) + 1

    def run(checkpointing):
        model = _irregular_model()
        model.activation_checkpointing = checkpointing
        torch.manual_seed(3)
        loss = model(x1, return_state=False)[0].square().sum()
        loss.backward(retain_graph=True)
        model(x2, return_state=False)
        loss.backward()
        return [b.clone() for b in model.buffers()], [p.grad.clone() for p in model.parameters()]

    (ba, ga), (bb, gb) = run(False), run(True)
    assert all(torch.equal(u, v) for u, v in zip(ba, bb))
    assert all(torch.allclose(g, h, rtol=1e-12, atol=0) for g, h in zip(ga, gb))


def test_the_backend_is_left_as_it_was_after_the_backward():
    model = _irregular_model()
    model.activation_checkpointing = True
    x = torch.randn(2, 6, 2, dtype=F64, device=DEVICE)
    before = ops.get_backend()
    with ops.use_backend("reference"):
        y, _ = model(x, return_state=False)
    y.sum().backward()  # recomputed under "reference", in this thread
    assert ops.get_backend() == before


def test_under_torch_compile_the_checkpoint_keeps_the_padding_mask():
    # compiled, the block goes to dynamo's own checkpoint; a bidirectional layer reads the mask (its backward pass
    # must not see the padding), so the compiled, checkpointed model equals the eager one without a checkpoint
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [3, 2, 1, 0, 0, 0]], device=DEVICE)

    def run(compiled):
        torch.manual_seed(0)
        model = SequenceModel(1, D, 1, "s4d", {"d_state": 4, "bidirectional": True}, 3, vocab_size=V, pad_id=0,
                              device=DEVICE, dtype=F64).train()
        model.activation_checkpointing = compiled
        y, _ = (torch.compile(model, backend="aot_eager") if compiled else model)(tokens, return_state=False)
        y.square().sum().backward()
        return y.detach(), [p.grad.clone() for p in model.parameters()]

    (a, ga), (b, gb) = run(False), run(True)
    assert torch.allclose(a, b, rtol=1e-12, atol=0)
    assert all(torch.allclose(g, h, rtol=1e-10, atol=0) for g, h in zip(ga, gb))


class _Nested(nn.Module):
    """A block-like module with batch norms inside a child (one without running statistics) and dropout."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(D, D, dtype=F64), nn.Sequential(nn.BatchNorm1d(D, dtype=F64)))
        self.bare = nn.BatchNorm1d(D, dtype=F64, track_running_stats=False)
        self.drop = Dropout(0.3)

    def forward(self, x, state, return_state=False, mask=None, intervals=None):
        h = self.inner[0](x)
        h = self.inner[1](h.transpose(1, 2)).transpose(1, 2)
        h = self.bare(h.transpose(1, 2)).transpose(1, 2)
        return self.drop(torch.tanh(h)), None


def test_any_modules_nested_batch_norms_are_updated_once():
    x = torch.randn(3, 5, D, dtype=F64, device=DEVICE, requires_grad=True)

    def run(checkpointed):
        torch.manual_seed(0)
        block = _Nested().to(DEVICE).train()
        torch.manual_seed(1)
        y, _ = (checkpointed_block(block, x, None, False, None) if checkpointed else block(x, None))
        y.square().sum().backward()
        grads = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
        x.grad = None
        return y.detach(), grads, [b.clone() for b in block.buffers()], torch.rand(2)

    a, b = run(False), run(True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[3], b[3])
    assert all(torch.allclose(g, h, rtol=1e-12, atol=0) for g, h in zip(a[1], b[1]))
    assert len(a[2]) == 3 and all(torch.equal(u, v) for u, v in zip(a[2], b[2]))  # mean, var, count: once


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.75])
def test_dropout_against_its_closed_form(p):
    n = 40_000
    x = torch.full((n,), 1.5, dtype=F64, device=DEVICE)
    layer = Dropout(p)
    assert layer.p == p and isinstance(layer, nn.Dropout)
    torch.manual_seed(2)
    y = layer(x)
    zeros = int((y == 0).sum())
    kept = torch.full((n - zeros,), 1.5 / (1 - p), dtype=F64, device=DEVICE)
    assert torch.allclose(y[y != 0], kept, rtol=1e-15, atol=0)  # the kept values: x / (1 - p)
    assert abs(zeros - n * p) <= 5 * math.sqrt(n * p * (1 - p))  # dropped: Binomial(n, p)
    assert abs(float(y.mean()) - 1.5) <= 5 * 1.5 * math.sqrt(p / (1 - p) / n)  # E[y] = x
    torch.manual_seed(2)
    assert torch.equal(y, ops_dropout(x, p))  # the mask of ssmkit.ops.dropout (its C path on the CPU)
    assert layer.eval()(x) is x  # eval: the identity
    layer.train()
    layer.p = 0.0
    assert torch.equal(layer(x), x)

