"""ListOps regenerated with the Long Range Arena generator's grammar (Tay et al. 2021, arXiv 2011.04006 §3.1;
ListOps: Nangia & Bowman 2018, arXiv 1804.06028).

Grammar (prefix expressions over the digits 0..9)::

    EXPR := VALUE | "[" OP EXPR EXPR+ "]"        OP in {MIN, MAX, MED, SM}

MIN and MAX as named, MED = int(median) (for an even count, the mean of the two middle values truncated) and SM =
sum mod 10. The label is the value of the expression (10 classes).

Sampler (the LRA generator, re-derived): ``tree(depth)``: if depth < max_depth (10) draw r ~ U(0, 1) and emit a
uniform digit when r > 0.25, else an operator node with a uniform operator and k children drawn at depth + 1,
k ~ uniform on 2 .. max_args (10), *both ends included* (Python's ``random.randint``); at max_depth always a digit.
Length = digits + 2 per operator (the operator token and the closing bracket). Trees are kept when
500 < length < 2000, de-duplicated, and split 96,000 / 2,000 / 2,000.

Reproducibility (where we depart from upstream): the LRA generator is unseeded and splits in the iteration order
of a Python ``set`` of trees, which depends on the per-process string-hash seed. Here the candidates are drawn in
numbered chunks, chunk c from ``random.Random`` seeded by (seed, c); the chunks are consumed in order (whatever
the number of worker processes), de-duplicated with an insertion-ordered dict, and split in generation order.
Same distribution and sizes; report results as "ListOps (regenerated)".

Tokenisation (the current LRA pipeline and S4): the released text prints every node as nested pairs
``( ( ( [MAX 2 ) 9 ) ] )``; parentheses are deleted, ``]`` becomes ``X`` and the text is split on whitespace.
Vocabulary of 18: ``<pad>`` 0, ``<unk>`` 1, ``<eos>`` 2, the digits, the four operators and ``X``. S4 orders the
ids by frequency in the training split; we fix the order above (a relabelling of the ids, nothing else).
Sequences get ``<eos>`` appended (after truncation to ``l_max − 1``) and are padded with 0 to ``l_max`` = 2048.
The task declares ``pad_id`` 0, so mean pooling averages over the tokens and ``<eos>`` only, as S4 (``use_lengths``)
and S5 (``masked_meanpool``) pool ListOps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import random
import statistics
from typing import Union

import numpy as np
import torch

from ssmkit.data.task import (
    FileTask, GeneratedTask, TaskInfo, check_labels, check_positive, register_task,
)
from ssmkit.data.pool import process_pool
from ssmkit.data.store import data_root

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
VOCAB = ("<pad>", "<unk>", "<eos>", *[str(d) for d in range(10)], *OPERATORS, "X")
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
PAD, UNK, EOS = 0, 1, 2
STALL_DRAWS = 200_000  # candidate trees drawn without a new distinct expression before generate_listops gives up

Tree = Union[int, tuple]  # a digit, or (operator, [children])


def sample_tree(rng: random.Random, depth: int = 1, max_depth: int = 10, max_args: int = 10) -> Tree:
    """Draw one expression tree with the LRA sampler (see the module docstring).

    Args:
        rng: the Python random generator.
        depth: depth of this node (the root is 1).
        max_depth: nodes at this depth are digits.
        max_args: most children of an operator (inclusive; the fewest is 2).
    """
    if depth < max_depth and rng.random() <= 0.25:
        op = rng.choice(OPERATORS)
        k = rng.randint(2, max_args)  # inclusive on both ends
        return (op, [sample_tree(rng, depth + 1, max_depth, max_args) for _ in range(k)])
    return rng.randint(0, 9)


def evaluate(tree: Tree) -> int:
    """The value of an expression tree (0..9): MIN, MAX, MED = int(median), SM = sum mod 10.

    Args:
        tree: a digit, or (operator, [children]) as from :func:`sample_tree` or :func:`parse_tokens`.
    """
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = [evaluate(c) for c in children]
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return int(statistics.median(values))
    if op == "[SM":
        return sum(values) % 10
    raise ValueError(f"unknown operator {op!r}; expected one of {OPERATORS}")


def to_tokens(tree: Tree) -> list[str]:
    """The token list of a tree: operators as ``[MIN`` .., digits, ``X`` for each closing bracket.

    Args:
        tree: a digit or (operator, [children]).
    """
    out: list[str] = []

    def walk(t):
        if isinstance(t, int):
            out.append(str(t))
            return
        out.append(t[0])
        for c in t[1]:
            walk(c)
        out.append("X")

    walk(tree)
    return out


def to_release_text(tree: Tree) -> str:
    """The tree printed as in the LRA release TSV: every node as nested pairs ``( left right )``.

    ``[MAX 2 9 ]`` prints as ``( ( ( [MAX 2 ) 9 ) ] )``.

    Args:
        tree: a digit or (operator, [children]).
    """
    if isinstance(tree, int):
        return str(tree)
    text = f"( {tree[0]} {to_release_text(tree[1][0])} )"
    for child in tree[1][1:]:
        text = f"( {text} {to_release_text(child)} )"
    return f"( {text} ] )"


def tokenize(text: str) -> list[str]:
    """Release text to tokens: delete ``(`` and ``)``, map ``]`` to ``X``, split on whitespace.

    Args:
        text: a ``Source`` cell of the release TSV (or any spacing of the same tokens).
    """
    return text.replace("(", " ").replace(")", " ").replace("]", "X").split()


def parse_tokens(tokens: list[str]) -> Tree:
    """Parse a token list (``X`` or ``]`` closes a node) back into a tree; ``ValueError`` on bad input.

    Args:
        tokens: e.g. ``["[MAX", "2", "9", "[MIN", "4", "7", "X", "0", "X"]``.
    """
    pos = 0

    def node() -> Tree:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("expression ends early: a node is missing its closing bracket")
        tok = tokens[pos]
        pos += 1
        if tok in OPERATORS:
            children = []
            while pos < len(tokens) and tokens[pos] not in ("X", "]"):
                children.append(node())
            if pos >= len(tokens):
                raise ValueError(f"operator {tok} is never closed")
            pos += 1
            if len(children) < 1:
                raise ValueError(f"operator {tok} has no arguments")
            return (tok, children)
        if tok.isdigit() and len(tok) == 1:
            return int(tok)
        raise ValueError(f"unexpected token {tok!r} at position {pos - 1}")

    tree = node()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens after the expression: {tokens[pos:]}")
    return tree


def encode(tokens: list[str], l_max: int) -> np.ndarray:
    """Token ids for one sequence: truncated to ``l_max − 1``, ``<eos>`` appended, padded with 0 to ``l_max``.

    Args:
        tokens: the token strings (unknown ones map to ``<unk>``).
        l_max: the padded length.
    """
    ids = [TOKEN_ID.get(t, UNK) for t in tokens[: l_max - 1]] + [EOS]
    out = np.zeros(l_max, dtype=np.int16)
    out[: len(ids)] = ids
    return out


def _chunk(job: tuple) -> list[tuple[str, int]]:
    """Worker: the accepted trees of chunk ``c`` as (token text, label), in drawing order."""
    seed, c, draws, min_length, max_length, max_depth, max_args = job
    rng = random.Random(int(np.random.SeedSequence([seed, c]).generate_state(1)[0]))
    out = []
    for _ in range(draws):
        tree = sample_tree(rng, 1, max_depth, max_args)
        tokens = to_tokens(tree)
        if min_length < len(tokens) < max_length:
            out.append((" ".join(tokens), evaluate(tree)))
    return out


def generate_listops(
    n: int, seed: int = 0, min_length: int = 500, max_length: int = 2000, max_depth: int = 10, max_args: int = 10,
    workers: int = 1, draws_per_chunk: int = 2000,
) -> list[tuple[str, int]]:
    """Draw ``n`` distinct expressions with min_length < length < max_length, in generation order.

    Chunks of ``draws_per_chunk`` candidate trees are drawn (by ``workers`` processes when > 1) and consumed in
    chunk order, so the result does not depend on ``workers``. When the options admit fewer than ``n`` distinct
    expressions (a narrow length window, a small ``max_depth``), ``STALL_DRAWS`` candidates in a row without a new
    one raise a ``ValueError`` (the LRA generator loops forever there, and so did this one).

    Args:
        n: distinct expressions wanted.
        seed: the seed.
        min_length: lengths must exceed this (LRA: 500).
        max_length: lengths must stay below this (LRA: 2000).
        max_depth: the sampler's maximum depth (LRA: 10).
        max_args: the most children of an operator (LRA: 10, inclusive).
        workers: processes drawing chunks (1: in this process).
        draws_per_chunk: candidate trees per chunk.

    Returns:
        a list of (token text, label): tokens joined by spaces, label in 0..9.
    """
    check_positive(n=n, workers=workers, draws_per_chunk=draws_per_chunk)
    if not 0 <= min_length < max_length:
        raise ValueError(f"need 0 <= min_length < max_length; got {min_length}, {max_length}")
    found: dict[str, int] = {}
    job = (seed, 0, draws_per_chunk, min_length, max_length, max_depth, max_args)
    batch = 2 * workers  # chunks per round (an endless job list would be drawn at once)
    with process_pool(workers) if workers > 1 else contextlib.nullcontext() as pool:  # never forked: data/pool.py
        start, stalled = 0, 0
        while len(found) < n:
            jobs = [job[:1] + (c,) + job[2:] for c in range(start, start + batch)]
            # the pool's round whole (no job is left running when the pool closes); in chunk order
            for rows in (pool.map(_chunk, jobs) if pool else map(_chunk, jobs)):
                before = len(found)
                for text, label in rows:
                    found.setdefault(text, label)
                    if len(found) == n:
                        return list(found.items())
                stalled = 0 if len(found) > before else stalled + draws_per_chunk
                if stalled >= STALL_DRAWS:  # checked per chunk: the same chunk whatever the number of workers
                    raise ValueError(
                        f"only {len(found)} distinct expressions with {min_length} < length < {max_length} (max_depth "
                        f"{max_depth}, max_args {max_args}) turned up, none new in the last {stalled} draws; {n} "
                        "were asked for: widen the length window, raise max_depth or ask for fewer")
            start += batch
    return list(found.items())


def write_listops_tsv(path: str | os.PathLike, rows: list[tuple[str, int]]) -> None:
    """Write rows in the LRA release format: header ``Source\\tTarget``, nested-pair text, the label.

    Args:
        path: the .tsv file.
        rows: (token text, label) as from :func:`generate_listops`.
    """
    from ssmkit.data.store import atomic_write_bytes

    lines = ["Source\tTarget"] + [f"{to_release_text(parse_tokens(t.split()))}\t{y}" for t, y in rows]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_listops_tsv(path: str | os.PathLike, l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a ListOps TSV (release format, header ``Source\\tTarget``) into token ids and labels.

    Args:
        path: the .tsv file.
        l_max: the padded length (2048 covers every LRA sequence).

    Returns:
        x (B, L) int16 token ids with L = ``l_max``; y (B,) int64 labels.
    """
    xs, ys = [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["Source", "Target"]:
            raise ValueError(f"{path}: expected the header 'Source<TAB>Target'; got {header}")
        for i, line in enumerate(f, 2):
            if not line.strip():
                continue
            source, _, target = line.rstrip("\n").rpartition("\t")
            if not source or not target.strip().isdigit():
                raise ValueError(f"{path}:{i}: expected 'expression<TAB>label'; got {line[:60]!r}")
            check_labels([int(target)], 10, f"{path}:{i}")  # ListOps values are digits
            xs.append(encode(tokenize(source), l_max))
            ys.append(int(target))
    if not xs:
        raise ValueError(f"{path}: no rows")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


@register_task("listops")
@dataclasses.dataclass(frozen=True)
class ListOpsTask(GeneratedTask):
    """ListOps regenerated with the LRA generator (defaults: the LRA sizes; tests shrink the window and counts).

    Args:
        n_train: training expressions (LRA: 96,000).
        n_val: validation expressions (LRA: 2,000).
        n_test: test expressions (LRA: 2,000).
        min_length: lengths must exceed this (LRA: 500).
        max_length: lengths must stay below this (LRA: 2000).
        l_max: padded token length, ``<eos>`` included (S4: 2048).
        max_depth: the sampler's maximum depth (LRA: 10).
        max_args: the most children of an operator (LRA: 10, inclusive).
        workers: processes generating (0: every CPU); the data do not depend on it (not part of the cache key).
        seed: the seed.
    """

    n_train: int = 96_000
    n_val: int = 2_000
    n_test: int = 2_000
    min_length: int = 500
    max_length: int = 2000
    l_max: int = 2048
    max_depth: int = 10
    max_args: int = 10
    workers: int = 0
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()  # the options' kinds
        check_positive(n_train=self.n_train, n_val=self.n_val, n_test=self.n_test, l_max=self.l_max,
                       max_depth=self.max_depth)
        if self.max_args < 2:
            raise ValueError(f"max_args must be >= 2; got {self.max_args}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: every CPU); got {self.workers}")
        if not 0 <= self.min_length < self.max_length:
            raise ValueError(f"need 0 <= min_length < max_length; got {self.min_length}, {self.max_length}")

    def options(self) -> dict:
        """The cache key: every option but ``workers``."""
        out = super().options()
        del out["workers"]
        return out

    def info(self) -> TaskInfo:
        """Token inputs (B, l_max), 10 classes, vocabulary 18."""
        lra = (self.n_train, self.n_val, self.n_test, self.min_length, self.max_length) == (96_000, 2_000, 2_000,
                                                                                           500, 2000)
        title = "ListOps (regenerated)" if lra else (
            f"ListOps (regenerated, reduced: {self.n_train}/{self.n_val}/{self.n_test}, "
            f"{self.min_length} < length < {self.max_length})")
        return TaskInfo(self.name, title, "generated", "classify", self.l_max, None, len(VOCAB), 10,
                        "LRA ListOps generator (arXiv 2011.04006), seeded regeneration", "nothing (generated)",
                        pad_id=PAD)

    def generate(self) -> dict[str, torch.Tensor]:
        """Draw the distinct expressions and split them in generation order."""
        workers = self.workers or os.cpu_count() or 1
        total = self.n_train + self.n_val + self.n_test
        rows = generate_listops(total, self.seed, self.min_length, self.max_length, self.max_depth, self.max_args,
                                workers)
        x = torch.from_numpy(np.stack([encode(t.split(), self.l_max) for t, _ in rows]))  # (B, L)
        y = torch.tensor([label for _, label in rows], dtype=torch.int16)  # (B,)
        a, b = self.n_train, self.n_train + self.n_val
        return {"train_x": x[:a], "train_y": y[:a], "val_x": x[a:b], "val_y": y[a:b],
                "test_x": x[b:], "test_y": y[b:]}


@register_task("lra_listops")
@dataclasses.dataclass(frozen=True)
class LRAListOpsTask(FileTask):
    """ListOps from the LRA release: ``<root>/lra_release/listops-1000/basic_{train,val,test}.tsv``.

    Args:
        l_max: padded token length, ``<eos>`` included (S4: 2048).
    """

    l_max: int = 2048

    def folder(self, root: str | os.PathLike | None = None) -> pathlib.Path:
        """``<root>/lra_release/listops-1000``.

        Args:
            root: the data root.
        """
        return data_root(root) / "lra_release" / "listops-1000"

    def required(self) -> list[str]:
        """The three TSV files."""
        return [f"basic_{s}.tsv" for s in ("train", "val", "test")]

    def info(self) -> TaskInfo:
        """Token inputs (B, l_max), 10 classes, vocabulary 18."""
        return TaskInfo(self.name, "ListOps (LRA release)", "files", "classify", self.l_max, None, len(VOCAB), 10,
                        "LRA release lra_release.gz (arXiv 2011.04006)",
                        "the LRA release's ListOps TSV files (from lra_release.gz, folder listops-1000)", pad_id=PAD)

    def splits(self, root: str | os.PathLike | None = None):
        """Read the three TSV files.

        Args:
            root: the data root.
        """
        self.check_present(root)
        from torch.utils.data import TensorDataset

        out = {}
        for split in ("train", "val", "test"):
            x, y = read_listops_tsv(self.folder(root) / f"basic_{split}.tsv", self.l_max)
            out[split] = TensorDataset(x.long(), y)
        return out

