"""ListOps at its edges, against the LRA generator's definition (Tay et al. 2021, arXiv 2011.04006 §3.1; REFERENCE.md
§3.1) and the module's documented contract (the lead's mutation round over data/listops; docs/design.md): the
sampler's and the task's LRA defaults, the depth of the root, the special ids, every refusal by its words, the worker
pool (fork, closed on return) and the regenerated data pinned to the documented chunking."""

import dataclasses
import multiprocessing
import random

import numpy as np
import pytest
import torch

from ssmkit.data import get_task
from ssmkit.data import listops
from ssmkit.data.listops import (
    EOS, PAD, UNK, VOCAB, encode, evaluate, generate_listops, parse_tokens, read_listops_tsv, sample_tree,
)
from tests.conftest import signature_defaults



def _operator_depth(tree) -> int:
    """The deepest chain of operators in a tree (a digit: 0)."""
    if isinstance(tree, int):
        return 0
    return 1 + max(_operator_depth(c) for c in tree[1])


def test_lrasignature_defaults():
    """The LRA generator's settings: the root at depth 1, max_depth 10, max_args 10 (inclusive), 500 < length < 2000,
    96,000 / 2,000 / 2,000 expressions, S4's l_max 2048; draws in chunks of 2,000 (ours: it fixes which draws each
    seeded chunk holds, so it is part of what the seed means)."""
    assert signature_defaults(sample_tree) == {"depth": 1, "max_depth": 10, "max_args": 10}
    assert signature_defaults(generate_listops) == {"seed": 0, "min_length": 500, "max_length": 2000, "max_depth": 10,
                                           "max_args": 10, "workers": 1, "draws_per_chunk": 2000}
    assert dataclasses.asdict(get_task("listops")) == {
        "n_train": 96_000, "n_val": 2_000, "n_test": 2_000, "min_length": 500, "max_length": 2000, "l_max": 2048,
        "max_depth": 10, "max_args": 10, "workers": 0, "seed": 0}
    assert dataclasses.asdict(get_task("lra_listops")) == {"l_max": 2048}


def test_root_is_at_depth_one():
    """With max_depth 3 the root (depth 1) and its children (depth 2) may be operators, depth 3 is a digit: chains
    of at most 2 operators, and 2 is reached; the default depth is the root's."""
    depths = [_operator_depth(sample_tree(random.Random(s), max_depth=3)) for s in range(400)]
    assert max(depths) == 2 and min(depths) == 0
    for s in range(20):
        assert sample_tree(random.Random(s), max_depth=3) == sample_tree(random.Random(s), 1, max_depth=3)


def test_special_ids_and_unknown_tokens():
    """<pad> 0, <unk> 1, <eos> 2 as in VOCAB; a token outside the vocabulary encodes as <unk>."""
    assert (VOCAB[PAD], VOCAB[UNK], VOCAB[EOS]) == ("<pad>", "<unk>", "<eos>") and (PAD, UNK, EOS) == (0, 1, 2)
    assert encode(["[MAX", "frob", "3", "X"], l_max=6).tolist() == [VOCAB.index("[MAX"), 1, VOCAB.index("3"),
                                                                      VOCAB.index("X"), 2, 0]


def test_parser_and_evaluator_refusals():
    with pytest.raises(ValueError, match="expression ends early"):
        parse_tokens([])
    with pytest.raises(ValueError, match="operator \\[MIN is never closed"):
        parse_tokens(["[MAX", "1", "[MIN"])
    with pytest.raises(ValueError, match="operator \\[MAX has no arguments"):
        parse_tokens(["[MAX", "X"])
    with pytest.raises(ValueError, match="unknown operator '\\[FIRST'"):
        evaluate(("[FIRST", [1, 2]))


def test_generator_refusals():
    for option in ("n", "workers", "draws_per_chunk"):
        kwargs = {"n": 3, "workers": 1, "draws_per_chunk": 10, option: 0}
        with pytest.raises(ValueError, match=f"{option} must be an int >= 1; got 0"):
            generate_listops(kwargs.pop("n"), min_length=1, max_length=9, **kwargs)
    for low, high in [(-1, 9), (9, 9), (10, 9)]:
        with pytest.raises(ValueError, match=f"need 0 <= min_length < max_length; got {low}, {high}"):
            generate_listops(3, min_length=low, max_length=high)


def test_tsv_reader_refusals(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("Source\tTarget\n\n")
    with pytest.raises(ValueError, match="no rows"):
        read_listops_tsv(path, 8)
    path.write_text("Text\tLabel\n( [MAX 1 2 ] )\t2\n")
    with pytest.raises(ValueError, match="expected the header 'Source<TAB>Target'"):
        read_listops_tsv(path, 8)
    path.write_text("Source\tTarget\n( [MAX 1 2 ] )\tnine\n")
    with pytest.raises(ValueError, match=":2: expected 'expression<TAB>label'"):
        read_listops_tsv(path, 8)


@pytest.fixture
def pool_methods(monkeypatch) -> list:
    """The start method of every multiprocessing context asked for (one per worker pool ListOps makes)."""
    made = []
    real = multiprocessing.get_context

    def spy(method=None):
        made.append(method)
        return real(method)

    monkeypatch.setattr(multiprocessing, "get_context", spy)
    return made


def test_worker_pool_never_forks_and_is_closed(pool_methods):
    """workers > 1 draws the chunks in a pool of that many processes started by the forkserver (where it exists, else
    spawned; never forked from the test process: ssmkit.data.pool), none left running on return; workers = 1 makes
    no pool. The rows are those of one process."""
    made = pool_methods
    one = generate_listops(12, 4, 6, 30, 5, workers=1, draws_per_chunk=40)
    assert made == []
    two = generate_listops(12, 4, 6, 30, 5, workers=2, draws_per_chunk=40)
    assert made == ["forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"]
    assert two == one
    assert multiprocessing.active_children() == []


def test_task_checks_options_and_info():
    for option in ("n_train", "n_val", "n_test", "l_max", "max_depth"):
        with pytest.raises(ValueError, match=f"{option} must be an int >= 1; got 0"):
            get_task("listops", **{option: 0})
    with pytest.raises(ValueError, match="max_args must be >= 2; got 1"):
        get_task("listops", max_args=1)
    get_task("listops", max_args=2, min_length=0, max_length=1)  # the smallest valid values
    with pytest.raises(ValueError, match="need 0 <= min_length < max_length; got 5, 5"):
        get_task("listops", min_length=5, max_length=5)
    task = get_task("listops", n_train=5, workers=3, l_max=64)
    assert "workers" not in task.options() and task.options()["n_train"] == 5
    info = task.info()
    assert (info.target, info.length, info.d_input, info.vocab_size, info.n_classes, info.pad_id) == (
        "classify", 64, None, 18, 10, 0)
    assert info.title == "ListOps (regenerated, reduced: 5/2000/2000, 500 < length < 2000)"
    files = get_task("lra_listops", l_max=100).info()
    assert (files.kind, files.length, files.vocab_size, files.n_classes, files.pad_id) == ("files", 100, 18, 10, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.seed = 2


def test_task_data_is_the_documented_regeneration(tmp_path):
    """The task's splits are generate_listops' rows in order (chunks of 2,000 draws), encoded, split 5 / 2 / 3."""
    options = dict(n_train=5, n_val=2, n_test=3, min_length=6, max_length=20, l_max=24, max_depth=4, seed=7)
    splits = get_task("listops", workers=1, **options).splits(tmp_path)
    rows = generate_listops(10, 7, 6, 20, 4, 10, workers=1, draws_per_chunk=2000)
    x = np.stack([encode(t.split(), 24) for t, _ in rows])
    y = [label for _, label in rows]
    got_x = torch.cat([splits[s].tensors[0] for s in ("train", "val", "test")])
    got_y = torch.cat([splits[s].tensors[1] for s in ("train", "val", "test")])
    assert got_x.tolist() == x.tolist() and got_y.tolist() == y
    assert listops.ListOpsTask is type(get_task("listops"))


def test_parser_reads_single_digits_and_is_lenient_about_arity():
    """Digits are single characters (``12`` and ``a`` are refused by name); an operator with one argument, outside
    the generator's grammar, is read as written and evaluates on that argument."""
    for bad in ("12", "a"):
        with pytest.raises(ValueError, match=f"unexpected token '{bad}' at position 1"):
            parse_tokens(["[MAX", bad, "3", "X"])
    assert parse_tokens(["[SM", "7", "]"]) == ("[SM", [7]) and evaluate(("[SM", [7])) == 7


def test_generation_is_the_documented_chunk_loop():
    """generate_listops written out: chunk c draws ``draws_per_chunk`` trees from random.Random seeded with the first
    word of SeedSequence([seed, c]), root at depth 1; trees in the window are kept, first occurrence wins, chunks
    are consumed from 0 in order."""
    seed, low, high, depth, args, draws, n = 11, 4, 26, 4, 5, 30, 40
    found: dict[str, int] = {}
    c = 0
    while len(found) < n:
        rng = random.Random(int(np.random.SeedSequence([seed, c]).generate_state(1)[0]))
        for _ in range(draws):
            tree = sample_tree(rng, 1, depth, args)
            tokens = listops.to_tokens(tree)
            if low < len(tokens) < high and len(found) < n:
                found.setdefault(" ".join(tokens), evaluate(tree))
        c += 1
    assert generate_listops(n, seed, low, high, depth, args, workers=1, draws_per_chunk=draws) == list(found.items())
    assert len(generate_listops(5, 0, min_length=0, max_length=3, max_depth=3, draws_per_chunk=50)) == 5


def test_tsv_reader_skips_blank_lines(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n\n( ( ( [MIN 4 ) 7 ) ] )\t4\n")
    x, y = read_listops_tsv(path, 6)
    assert y.tolist() == [9, 4] and x[1].tolist() == [VOCAB.index(t) for t in ("[MIN", "4", "7", "X")] + [EOS, PAD]


def test_task_workers_zero_means_every_cpu(pool_methods, monkeypatch, tmp_path):
    """workers = 0 (the default) draws with os.cpu_count() processes, one when the count is unknown."""
    pools = pool_methods
    monkeypatch.setattr(listops.os, "cpu_count", lambda: None)
    options = dict(n_train=3, n_val=1, n_test=1, min_length=4, max_length=20, l_max=24, max_depth=4)
    x, _ = get_task("listops", **options).splits(tmp_path)["train"].tensors
    assert pools == [] and x.shape == (3, 24)
    monkeypatch.setattr(listops.os, "cpu_count", lambda: 2)
    get_task("listops", seed=1, **options).splits(tmp_path)
    assert len(pools) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task("lra_listops").l_max = 4
