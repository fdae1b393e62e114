"""Generation with a token language model (``ssmkit.models.generate``): against the model re-run on the growing
sequence (greedy, every registered layer), a top-k / top-p filter written here in numpy, the closed-form sampling
distribution, and each prompt generated alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssmkit import layers
from ssmkit.models import SequenceModel, filter_logits, generate, next_tokens
from tests.conftest import DEVICE, H, variants

F64 = torch.float64
V = 11


def _lm(pattern, options=None, dtype=F64, seed=0, d_output=V, dropout=0.0):
    """A token LM on the test device, its weights moved off their init so that its logits spread (eval mode)."""
    torch.manual_seed(seed)
    model = SequenceModel(1, H, len(pattern), pattern, options, d_output, head="lm", pool=None, vocab_size=V,
                          dropout=dropout, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _greedy_by_forward(model, prompt, n, eos_id=None):
    """n greedy tokens after a 1-D prompt, each the argmax of ``forward`` over the whole sequence so far."""
    seq = prompt.to(DEVICE)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(seq[None], return_state=False)
            token = logits[0, -1].argmax()
            seq = torch.cat([seq, token[None]])
            if eos_id is not None and int(token) == eos_id:
                break
    return seq.cpu()


STEPPING = [name for name in layers.available() if layers.layer_class(name).capabilities.step]


@pytest.mark.parametrize("name", STEPPING)
def test_greedy_generation_equals_forward_on_the_growing_sequence(name):
    """Prompts of three lengths in one batch (the shorter ones step through their prompts) = each by re-running
    forward, for every layer with a step."""
    model = _lm([name], {name: variants(name)[0]})
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, V, (n,), generator=g) for n in (4, 1, 6)]
    out = generate(model, prompts, 7, temperature=0)
    for prompt, got in zip(prompts, out):
        assert got.dtype == torch.int64 and got.device == prompt.device
        assert torch.equal(got, _greedy_by_forward(model, prompt, 7))


def test_a_hybrid_continues_a_batch_tensor_as_each_prompt_alone():
    model = _lm(["s4d", "mamba", "attention"], {"mamba": {"d_state": 4}, "attention": {"n_heads": 2, "head_dim": 4}})
    prompts = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(2))
    out = generate(model, prompts, 9, temperature=0)
    assert out.shape == (3, 14) and out.dtype == torch.int64
    assert torch.equal(out[:, :5], prompts)
    for row, prompt in zip(out, prompts):
        assert torch.equal(row, _greedy_by_forward(model, prompt, 9))
        assert torch.equal(row, generate(model, prompt[None], 9, temperature=0)[0])  # alone: the same


def test_eos_stops_a_stream_and_the_rest_of_its_row_is_eos():
    model = _lm(["s4d"], {"s4d": {"d_state": 4}})
    prompts = torch.randint(0, V, (6, 3), generator=torch.Generator().manual_seed(3))
    free = generate(model, prompts, 12, temperature=0)
    eos = int(free[0, 3 + 2])  # stream 0's third new token: it stops there
    stopped = [b for b in range(6) if (free[b, 3:] == eos).any()]
    assert 0 in stopped
    out = generate(model, prompts, 12, temperature=0, eos_id=eos)
    listed = generate(model, list(prompts), 12, temperature=0, eos_id=eos)
    for b in range(6):
        want = _greedy_by_forward(model, prompts[b], 12, eos_id=eos)
        assert torch.equal(listed[b], want)  # the list: cut after eos
        assert torch.equal(out[b, : want.numel()], want)
        assert (out[b, want.numel():] == eos).all()  # the tensor: eos after it
    last = max(int((free[b, 3:] == eos).nonzero()[0]) + 1 if b in stopped else 12 for b in range(6))
    assert out.shape == (6, 3 + last)  # as long as the longest stream


def test_finished_streams_leave_the_batch():
    model = _lm(["s4d"], {"s4d": {"d_state": 4}})
    sizes = []
    step = model.step

    def counting(x_t, state):
        sizes.append(x_t.shape[0])
        return step(x_t, state)

    model.step = counting
    generate(model, [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 5, 6, 7])], 3, temperature=0)
    # forward over the first token of each; positions 1..5: stream 1 stops after position 3 (new tokens at 1, 2, 3),
    # stream 0 after 4, stream 2 after 6 (its prompt ends at 3); no step after a stream's last token
    assert sizes == [3, 3, 2, 1, 1]


def _filter_numpy(logits, top_k, top_p):
    """Top-k then top-p by their definitions, row by row in float64 (no ties in the tests' logits)."""
    out = np.array(logits.cpu().numpy() if isinstance(logits, torch.Tensor) else logits, dtype=np.float64)
    for row in out:
        if top_k is not None:
            row[np.argsort(-row)[top_k:]] = -np.inf
        if top_p is not None:
            order = np.argsort(-row)
            p = np.exp(row[order] - row[order[0]])
            p /= p.sum()
            kept, mass = [], 0.0
            for i, q in zip(order, p):
                kept.append(i)
                mass += q
                if mass >= top_p:
                    break
            row[[i for i in range(row.size) if i not in kept]] = -np.inf
    return out


@pytest.mark.parametrize("top_k, top_p", [(None, None), (3, None), (None, 0.5), (5, 0.8), (1, None), (None, 1e-9),
                                          (None, 1.0), (V, 0.95)])
def test_filter_logits_against_the_definitions(top_k, top_p):
    logits = torch.randn(7, V, generator=torch.Generator().manual_seed(4), dtype=F64) * 2
    got = filter_logits(logits, top_k, top_p)
    assert torch.equal(torch.isinf(got).cpu(), torch.from_numpy(np.isinf(_filter_numpy(logits, top_k, top_p))))
    assert torch.equal(got[torch.isfinite(got)], logits[torch.isfinite(got)])  # kept logits unchanged
    assert torch.isfinite(got).any(1).all()  # the most likely token always stays


def test_top_p_counts_the_mass_left_by_top_k():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=F64))
    # over all four tokens 0.4 + 0.3 >= 0.7 keeps two; after top-k 3 the masses are 4/9, 3/9, 2/9: 7/9 >= 0.7 keeps two,
    # and 0.75 needs the third (4/9 + 3/9 = 0.778 >= 0.75 keeps two; 0.8 needs three)
    assert torch.isfinite(filter_logits(logits, None, 0.7)).sum() == 2
    assert torch.isfinite(filter_logits(logits, 3, 0.8)).sum() == 3
    assert torch.isfinite(filter_logits(logits, None, 0.8)).sum() == 3
    assert torch.isfinite(filter_logits(logits, 2, 0.8)).sum() == 2


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.5, 4, None), (2.0, None, 0.7),
                                                       (1.3, 6, 0.9)])
def test_draws_follow_the_closed_form_distribution(temperature, top_k, top_p):
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -2.0]], dtype=torch.float32)
    scaled = logits.double()[0].numpy() / temperature
    kept = _filter_numpy(scaled[None], top_k, top_p)[0]
    p = np.exp(kept - kept.max())
    p /= p.sum()
    n = 40_000
    g = torch.Generator(device=DEVICE).manual_seed(5)
    draws = next_tokens(logits.expand(n, -1).to(DEVICE), temperature, top_k, top_p, g).cpu().numpy()
    counts = np.bincount(draws, minlength=8)
    assert (counts[p == 0] == 0).all()  # nothing outside the kept set
    sigma = np.sqrt(n * p * (1 - p))
    assert (np.abs(counts - n * p) <= 5 * sigma + 1e-9).all(), (counts, n * p)


def test_sampling_is_reproducible_by_its_generator_and_greedy_ignores_the_filters():
    model = _lm(["mamba2", "rglru"], {"mamba2": variants("mamba2")[0], "rglru": variants("rglru")[0]}, dtype=torch.float32)
    prompts = torch.randint(0, V, (4, 3), generator=torch.Generator().manual_seed(6))

    def sample(seed):
        return generate(model, prompts, 20, temperature=1.5, top_k=8,
                        generator=torch.Generator(device=DEVICE).manual_seed(seed))

    a, b, c = sample(7), sample(7), sample(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(model, prompts, 6, temperature=0)
    assert torch.equal(greedy, generate(model, prompts, 6, temperature=0, top_k=2, top_p=0.1))


def test_generation_leaves_mode_and_gradients_alone():
    model = _lm(["s4d"], {"s4d": {"d_state": 4}}, dropout=0.1)
    model.train()
    out = generate(model, torch.tensor([[1, 2]]), 4, generator=torch.Generator(device=DEVICE).manual_seed(0))
    assert model.training and not out.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(generate(model.eval(), torch.tensor([[1, 2]]), 0), torch.tensor([[1, 2]]))


def test_bad_arguments_raise_value_errors_naming_them():
    model = _lm(["s4d"], {"s4d": {"d_state": 4}})
    ok = torch.tensor([[1, 2]])
    cases = [
        (dict(max_new_tokens=-1), "max_new_tokens"), (dict(max_new_tokens=2.0), "max_new_tokens"),
        (dict(temperature=-0.1), "temperature"), (dict(temperature=math.nan), "temperature"),
        (dict(temperature=True), "temperature"), (dict(top_k=0), "top_k"), (dict(top_k=V + 1), "top_k"),
        (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(eos_id=V), "eos_id"),
        (dict(prompts=torch.zeros(2, 0, dtype=torch.long)), "prompts"), (dict(prompts=ok.float()), "prompt 0"),
        (dict(prompts=[]), "prompts"), (dict(prompts=[torch.tensor([1]), ok]), "prompt 1"),
        (dict(prompts=torch.tensor([1, 2])), "prompts"), (dict(prompts=[torch.tensor([], dtype=torch.long)]), "prompt 0"),
    ]
    for change, name in cases:
        kwargs = {"prompts": ok, "max_new_tokens": 2, **change}
        with pytest.raises(ValueError, match=name):
            generate(model, **kwargs)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(model, torch.tensor([[1, V]]), 2)  # the model's own check of the ids
    classifier = SequenceModel(1, H, 1, "s4d", {"d_state": 4}, 3, vocab_size=V)
    with pytest.raises(ValueError, match="language model"):
        generate(classifier, ok, 2)
    with pytest.raises(ValueError, match="d_output <= vocab_size"):
        generate(_lm(["s4d"], {"s4d": {"d_state": 4}}, d_output=V + 2), ok, 2)
    with pytest.raises(ValueError, match="logits"):
        filter_logits(torch.zeros(V), 2)
    with pytest.raises(ValueError, match="logits"):
        next_tokens(torch.zeros(2, V, dtype=torch.long))


def test_a_compiled_step_generates_the_same_tokens():
    # the README's recipe for the selective and attention layers: model.step = torch.compile(model.step); the batch
    # shrinks as a stream stops (a recompile), the tokens stay the same
    model = _lm(["mamba"], {"mamba": variants("mamba")[0]}, dtype=torch.float32)
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    want = generate(model, prompts, 6, temperature=0)
    model.step = torch.compile(model.step)
    got = generate(model, prompts, 6, temperature=0)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
