"""Copying, selective copying, induction heads and MQAR: every example is checked against its definition."""

import numpy as np
import pytest
import torch

from ssmkit.data import (
    IGNORE_INDEX, copying_data, get_task, induction_heads_data, mqar_data, selective_copying_data,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_copying_layout_and_targets():
    x, y = copying_data(50, delay=7, n_tokens=4, vocab_size=6, generator=gen())
    assert x.shape == y.shape == (50, 7 + 8)
    data = x[:, :4]
    assert bool(((data >= 1) & (data <= 4)).all())  # data symbols 1 .. A-2
    assert bool((x[:, 4:11] == 0).all()) and bool((x[:, 11:] == 5).all())  # blanks, then M markers
    assert torch.equal(y[:, 11:], data) and bool((y[:, :11] == IGNORE_INDEX).all())
    assert set(data.unique().tolist()) == {1, 2, 3, 4}


def test_selective_copying_keeps_order_and_count():
    x, y = selective_copying_data(200, length=40, n_tokens=5, vocab_size=8, generator=gen(1))
    assert x.shape == y.shape == (200, 40)
    region = x[:, :35]
    assert bool(((region > 0).sum(1) == 5).all())  # exactly M data tokens among the blanks
    assert bool((x[:, 35:] == 7).all())
    for row, target in zip(region, y):
        assert torch.equal(row[row > 0], target[35:])  # the data tokens in order are the answers
        assert bool((target[:35] == IGNORE_INDEX).all())
    # positions are spread over the data region, not bunched at the start
    first = (region > 0).float().argmax(1).float()
    assert 0 < first.mean() < 20


def test_induction_heads_answer_follows_the_first_trigger():
    x, y = induction_heads_data(300, length=12, vocab_size=5, generator=gen(2))
    trigger = 4
    for row, target in zip(x, y):
        where = (row == trigger).nonzero().flatten().tolist()
        assert len(where) == 2 and where[1] == 11 and where[0] <= 9  # once in the body, once at the end
        assert target[-1] == row[where[0] + 1] != trigger
        assert bool((target[:-1] == IGNORE_INDEX).all())
    assert set(y[:, -1].tolist()) == {0, 1, 2, 3}


def test_induction_heads_task_tests_longer_lengths(tmp_path):
    task = get_task("induction_heads", train_length=16, test_lengths=(32, 64), n_train=4, n_val=3, n_test=2)
    splits = task.splits(tmp_path)
    assert splits["train"].tensors[0].shape == (4, 16) and splits["val"].tensors[0].shape == (3, 16)
    assert splits["test@32"].tensors[0].shape == (2, 32)
    assert torch.equal(splits["test"].tensors[0], splits["test@64"].tensors[0])
    assert task.info().length == 16


def test_mqar_answer_positions():
    D, L, V = 4, 64, 100
    x, y = mqar_data(300, L, D, V, generator=gen(3))
    assert x.shape == y.shape == (300, L)
    for row, target in zip(x, y):
        keys, values = row[0:2 * D:2], row[1:2 * D:2]
        assert len(set(keys.tolist())) == D and len(set(values.tolist())) == D  # without replacement
        assert bool(((keys >= 1) & (keys < V // 2)).all()) and bool(((values >= V // 2) & (values < V)).all())
        answers = (target != IGNORE_INDEX).nonzero().flatten()
        assert len(answers) == D
        for t in answers.tolist():
            assert t >= 2 * D and (t - 2 * D) % 2 == 0  # queries sit at 2D + 2g
            i = keys.tolist().index(int(row[t]))  # the input there is a key of the context ...
            assert target[t] == values[i]  # ... and the target is its value
            assert t + 1 >= L or row[t + 1] == values[i]  # the value follows the key in the input too
        filler = torch.ones(L, dtype=torch.bool)
        filler[: 2 * D] = False
        filler[answers] = False
        filler[(answers + 1).clamp(max=L - 1)] = False
        assert bool((row[filler] == 0).all())  # random_non_queries=False: the rest is 0


def test_mqar_gaps_follow_the_power_law():
    D, L = 1, 24  # S = 11 gaps; one query per example
    x, y = mqar_data(40_000, L, D, 100, generator=gen(4))
    g = ((y != IGNORE_INDEX).float().argmax(1) - 2 * D) // 2
    freq = np.bincount(g.numpy(), minlength=11) / len(g)
    p = (np.arange(11) + 1.0) ** (0.01 - 1)
    p /= p.sum()
    # 40,000 draws: the standard error of each frequency is <= sqrt(0.33 * 0.67 / 4e4) = 2.4e-3
    assert np.abs(freq - p).max() < 0.01


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: copying_data(2, 3, 2, vocab_size=2), "vocab_size must be >= 3"),
        (lambda: selective_copying_data(2, 8, 3, 5), "length must be >= 3 \\* n_tokens = 9"),
        (lambda: induction_heads_data(2, 2, 5), "length must be >= 3"),
        (lambda: mqar_data(2, 63, 4, 100), "length must be even"),
        (lambda: mqar_data(2, 64, 4, 64), "vocab_size must be > length = 64"),
        (lambda: get_task("mqar", n_train=0), "n_train must be an int >= 1; got 0"),
        (lambda: get_task("frob"), "unknown task 'frob'"),
    ],
)
def test_bad_options(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_misspelt_option_is_a_type_error():
    with pytest.raises(TypeError, match="n_trian"):
        get_task("copying", n_trian=3)
