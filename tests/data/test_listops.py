"""ListOps: grammar, evaluation on hand-written expressions, the sampler's law, the length window,
de-duplication, tokenisation, the release TSV round trip and the task."""

import collections
import random

import numpy as np
import pytest
import torch

from ssmkit.data import get_task
from ssmkit.data.listops import (
    EOS, TOKEN_ID, VOCAB, encode, evaluate, generate_listops, parse_tokens, read_listops_tsv, sample_tree,
    to_release_text, to_tokens, tokenize, write_listops_tsv,
)


@pytest.mark.parametrize(
    "text,value",
    [
        ("7", 7),
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 3 8 [MAX 1 0 ] ]", 1),
        ("[SM 5 6 7 ]", 8),  # 18 mod 10
        ("[MED 1 9 ]", 5),  # even count: mean of the two middle values
        ("[MED 2 3 ]", 2),  # 2.5 truncated
        ("[MED 9 1 5 ]", 5),
        ("[MED 1 2 3 9 ]", 2),  # (2 + 3) / 2 truncated
        ("[SM [MAX 9 9 ] [MIN 9 8 ] [MED 4 6 0 ] ]", 1),  # 9 + 8 + 4 = 21
    ],
)
def test_evaluation_of_hand_written_expressions(text, value):
    tree = parse_tokens(text.split())
    assert evaluate(tree) == value
    assert parse_tokens(tokenize(to_release_text(tree))) == tree


def test_release_text_format_and_tokenisation():
    tree = parse_tokens("[MAX 2 9 ]".split())
    assert to_release_text(tree) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert tokenize(to_release_text(tree)) == ["[MAX", "2", "9", "X"]
    assert len(VOCAB) == 18 and VOCAB[:3] == ("<pad>", "<unk>", "<eos>")
    ids = encode(["[MAX", "2", "9", "X"], l_max=7)
    assert ids.tolist() == [TOKEN_ID["[MAX"], TOKEN_ID["2"], TOKEN_ID["9"], TOKEN_ID["X"], EOS, 0, 0]
    assert encode(["1"] * 10, l_max=4).tolist() == [TOKEN_ID["1"]] * 3 + [EOS]  # truncated, then <eos>


@pytest.mark.parametrize("bad,match", [("[MAX 1 2", "never closed"), ("1 2", "trailing"), ("[FOO 1 ]", "unexpected")])
def test_parse_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_tokens(bad.split())


def test_sampler_law_children_two_to_ten_inclusive():
    rng = random.Random(0)
    counts, depths = collections.Counter(), []
    ops = leaves = 0

    def walk(t, d):
        nonlocal ops, leaves
        depths.append(d)
        if isinstance(t, int):
            leaves += 1
            return
        ops += 1
        counts[len(t[1])] += 1
        for c in t[1]:
            walk(c, d + 1)

    for _ in range(3000):
        walk(sample_tree(rng, 1, max_depth=4, max_args=10), 1)
    assert set(counts) == set(range(2, 11))  # Python's randint: 10 is reachable (numpy's would stop at 9)
    assert max(depths) == 4  # nodes at max_depth are leaves
    # a node above max_depth is an operator with probability 1/4
    internal = sum(1 for d in depths if d < 4)
    assert abs(ops / internal - 0.25) < 0.02  # ~ 6,000 draws: standard error 0.006
    tree = sample_tree(random.Random(5), max_depth=6)
    tokens = to_tokens(tree)
    n_ops = sum(t.startswith("[") for t in tokens)
    assert len(tokens) == sum(t.isdigit() for t in tokens) + 2 * n_ops  # length = leaves + 2 per operator


def test_window_deduplication_and_labels():
    rows = generate_listops(400, seed=3, min_length=10, max_length=40, max_depth=6, draws_per_chunk=300)
    texts = [t for t, _ in rows]
    assert len(rows) == 400 and len(set(texts)) == 400  # distinct
    for text, label in rows:
        tokens = text.split()
        assert 10 < len(tokens) < 40
        assert evaluate(parse_tokens(tokens)) == label
    again = generate_listops(400, seed=3, min_length=10, max_length=40, max_depth=6, draws_per_chunk=300)
    assert again == rows  # seeded: same expressions in the same order


def test_lra_window_lengths_and_label_skew():
    rows = generate_listops(250, seed=0, draws_per_chunk=400)
    lengths = np.array([len(t.split()) for t, _ in rows])
    assert lengths.min() > 500 and lengths.max() < 2000
    labels = np.bincount([y for _, y in rows], minlength=10) / len(rows)
    # 0 and 9 are the common answers (~17 % each, ~8 % for the others): together ~0.34 with a standard error of
    # 0.03 over 250 samples; a uniform label law would give 0.2
    assert labels[0] + labels[9] > 0.25
    assert labels[0] > labels[1:9].mean() and labels[9] > labels[1:9].mean()


def test_task_splits_and_workers_do_not_change_the_data(tmp_path):
    options = dict(n_train=20, n_val=5, n_test=5, min_length=8, max_length=30, l_max=32, max_depth=5)
    task = get_task("listops", workers=1, **options)
    assert task.info().title.startswith("ListOps (regenerated, reduced")
    assert get_task("listops").info().title == "ListOps (regenerated)"
    splits = task.splits(tmp_path)
    x, y = splits["train"].tensors
    assert x.shape == (20, 32) and y.shape == (20,) and x.dtype == torch.long
    assert bool((x == EOS).sum(1).eq(1).all())
    all_x = torch.cat([splits[s].tensors[0] for s in ("train", "val", "test")])
    assert len({tuple(r.tolist()) for r in all_x}) == 30  # no expression in two splits
    inverse = {i: t for t, i in TOKEN_ID.items()}
    for row, label in zip(x, y):
        tokens = [inverse[i] for i in row.tolist() if i > 2]
        assert evaluate(parse_tokens(tokens)) == label
    parallel = get_task("listops", workers=2, **options)
    assert parallel.present(tmp_path)  # workers is not part of the cache key ...
    rows1 = generate_listops(30, 0, 8, 30, 5, workers=1, draws_per_chunk=50)
    rows2 = generate_listops(30, 0, 8, 30, 5, workers=2, draws_per_chunk=50)
    assert rows1 == rows2  # ... because the data do not depend on it


def test_release_tsv_round_trip_and_lra_loader(tmp_path):
    rows = generate_listops(6, seed=1, min_length=5, max_length=25, max_depth=5, draws_per_chunk=100)
    folder = tmp_path / "lra_release" / "listops-1000"
    task = get_task("lra_listops", l_max=32)
    assert not task.present(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"put basic_train.tsv, basic_val.tsv, basic_test.tsv in .*listops"):
        task.splits(tmp_path)
    for split in ("train", "val", "test"):
        write_listops_tsv(folder / f"basic_{split}.tsv", rows)
    head = (folder / "basic_train.tsv").read_text().splitlines()
    assert head[0] == "Source\tTarget" and head[1].startswith("( ")
    assert task.present(tmp_path)
    x, y = task.splits(tmp_path)["val"].tensors
    assert y.tolist() == [label for _, label in rows]
    assert x.shape == (6, 32)
    assert x[0].tolist() == encode(rows[0][0].split(), 32).tolist()
    (folder / "bad.tsv").write_text("Text\tLabel\n1\t1\n")
    with pytest.raises(ValueError, match="expected the header"):
        read_listops_tsv(folder / "bad.tsv", 8)
