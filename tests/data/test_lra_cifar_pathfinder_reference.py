"""The LRA file loaders (Text, Retrieval, Pathfinder-32 / Path-X PNG folders), the CIFAR-10 loaders (sCIFAR, LRA
Image) and the regenerated Pathfinder's drawing primitives, against references written here (probe 41).

References: files written by each test with known content in the releases' layouts (IMDB review folders, AAN TSV
rows, Pathfinder metadata rows and PNGs, CIFAR-10 python batches pickled as the release pickles them), and the
expected tensors computed here another way — the byte ids as ``byte + 1`` in a list, the splits from
``torch.randperm`` with the documented seed, PIL's integer luma formula for RGB PNGs, the CIFAR planes indexed
pixel by pixel, the sCIFAR / LRA Image standardisation in float64, and for the generator a float64 loop over every
sub-pixel of the segment-distance coverage, the candidate ring and the orientation law read off a recording
random generator.
"""

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from ssmkit.data import DataMissingError, get_task
from ssmkit.data.lra import BYTE_VOCAB, _document, encode_bytes, read_aan_tsv, read_pathfinder_folder


def _ids(raw: bytes, l_max: int) -> list[int]:
    """byte + 1 for the first l_max bytes, then zeros up to l_max (the reference of the byte-level encoding)."""
    kept = [b + 1 for b in raw[:l_max]]
    return kept + [0] * (l_max - len(kept))


def _randperm_split(n: int, sizes: list[int], seed: int) -> list[list[int]]:
    """Consecutive pieces of ``randperm(n)`` under ``manual_seed(seed)`` (what ``random_split`` draws)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    out, start = [], 0
    for size in sizes:
        out.append(perm[start:start + size])
        start += size
    return out


# -- LRA Text (byte-level IMDB) ------------------------------------------------------------------------------------


def test_encode_bytes_is_byte_plus_one_truncated_and_zero_padded():
    assert BYTE_VOCAB == 257
    raw = bytes([0, 1, 127, 128, 254, 255])
    got = encode_bytes(raw, 8)
    assert got.dtype == np.int16 and got.tolist() == [1, 2, 128, 129, 255, 256, 0, 0]  # 255 -> 256, no wrap
    assert encode_bytes(raw, 6).tolist() == [1, 2, 128, 129, 255, 256]
    assert encode_bytes(raw, 2).tolist() == [1, 2]
    assert encode_bytes("é€", 6).tolist() == _ids("é€".encode("utf-8"), 6)  # the UTF-8 bytes, not code points
    assert encode_bytes("", 3).tolist() == [0, 0, 0]


def _write_imdb(base, files):
    for (split, sub, name), raw in files.items():
        (base / split / sub).mkdir(parents=True, exist_ok=True)
        (base / split / sub / name).write_bytes(raw)


def test_imdb_reads_neg_then_pos_in_file_name_order_and_splits_with_randperm(tmp_path):
    base = tmp_path / "aclImdb"
    files = {}
    for split in ("train", "test"):
        # written out of name order; names whose string order differs from their numeric order
        for sub, names in (("pos", ["2_9.txt", "10_7.txt", "b_1.txt"]), ("neg", ["9_1.txt", "1_3.txt", "11_2.txt"])):
            for k, name in enumerate(names):
                files[(split, sub, name)] = f"{split}/{sub}/{name} {k}".encode() + bytes([255, 0, 195, 169])
    files[("train", "pos", "5_5.txt")] = b"\xfe" * 40  # longer than l_max: cut
    _write_imdb(base, files)
    (base / "train" / "pos" / "notes.md").write_bytes(b"not a review")  # not *.txt: ignored
    task = get_task("lra_text", l_max=30, n_val=3, seed=7)
    splits = task.splits(tmp_path)

    def expect(split):
        rows, labels = [], []
        for label, sub in ((0, "neg"), (1, "pos")):
            for name in sorted(n for (s, b, n) in files if s == split and b == sub):
                rows.append(_ids(files[(split, sub, name)], 30))
                labels.append(label)
        return rows, labels

    rows, labels = expect("test")
    xt, yt = splits["test"].tensors
    assert xt.dtype == torch.int64 and xt.tolist() == rows and yt.tolist() == labels
    rows, labels = expect("train")
    train_idx, val_idx = _randperm_split(7, [4, 3], 7)
    xs, ys = splits["train"].tensors
    assert xs.tolist() == [rows[i] for i in sorted(train_idx)] and ys.tolist() == [labels[i] for i in sorted(train_idx)]
    xv, yv = splits["val"].tensors
    assert xv.tolist() == [rows[i] for i in sorted(val_idx)] and yv.tolist() == [labels[i] for i in sorted(val_idx)]


def test_imdb_defaults_info_and_refusals(tmp_path):
    task = get_task("lra_text")
    assert dataclasses.asdict(task) == {"l_max": 4096, "n_val": 2500, "seed": 42}
    assert task.folder(tmp_path) == tmp_path / "aclImdb"
    assert task.required() == ["train/pos", "train/neg", "test/pos", "test/neg"]
    info = get_task("lra_text", l_max=100).info()
    assert (info.name, info.kind, info.target, info.length, info.d_input, info.vocab_size, info.n_classes) == (
        "lra_text", "files", "classify", 100, None, 257, 2)
    assert info.pad_id == 0 and not info.pair and info.title == "LRA Text (byte-level IMDB)"
    with pytest.raises(DataMissingError, match=r"put train/pos, train/neg, test/pos, test/neg in .*aclImdb"):
        task.splits(tmp_path)
    for split in ("train", "test"):
        for sub in ("pos", "neg"):
            (tmp_path / "aclImdb" / split / sub).mkdir(parents=True)
    (tmp_path / "aclImdb" / "test" / "pos" / "1_1.txt").write_text("x")
    with pytest.raises(ValueError, match=r"aclImdb/train: no \.txt reviews in pos/ or neg/"):
        task.splits(tmp_path)


# -- LRA Retrieval (AAN pairs) ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell, want", [
    ("b'ab'", b"ab"),
    ('b"ab"', b"ab"),
    ("b''", b""),  # three characters: the shortest literal
    ("b'caf\\xc3\\xa9'", "café".encode()),
    ("b'", "b'"),  # too short
    ("b", "b"),
    ("", ""),
    ("c'ab'", "c'ab'"),  # not a bytes prefix
    ("bb'a'", "bb'a'"),  # the quote is not the second character
    ("b'ab\"", "b'ab\""),  # quotes do not match
    ("b\"ab'", "b\"ab'"),
    ("xb'ab'", "xb'ab'"),
    ("b'\\x4'", "b'\\x4'"),  # a truncated escape: SyntaxError, kept as it is
    ("b'a' < b'b'", "b'a' < b'b'"),  # not a literal: ValueError, kept as it is
    ("b'a', b'b'", "b'a', b'b'"),  # a literal, but a tuple, not bytes
    ("plain", "plain"),
    ("B'ab'", "B'ab'"),  # Python literals too, but not the release's form: kept
    ("rb'ab'", "rb'ab'"),
    (" b'ab'", " b'ab'"),
    ("b'ab' ", "b'ab' "),
])
def test_document_decodes_only_bytes_literals(cell, want):
    got = _document(cell)
    assert type(got) is type(want) and got == want


def test_aan_tsv_rows_labels_truncation_and_decode(tmp_path):
    path = tmp_path / "pairs.tsv"
    long = "x" * 20
    rows = ["1.0\ta\tb\tfirst\tsecond", "0\tc\td\t" + long + "\tb'caf\\xc3\\xa9'", "1\te\tf\t\t", "0.0\tg\th\tb''\tz"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    x, y = read_aan_tsv(str(path), 8)  # a str path
    assert x.dtype == torch.int16 and x.shape == (4, 2, 8) and y.dtype == torch.int64 and y.tolist() == [1, 0, 1, 0]
    kept = [["first", "second"], [long, "b'caf\\xc3\\xa9'"], ["", ""], ["b''", "z"]]
    assert x.tolist() == [[_ids(d.encode(), 8) for d in pair] for pair in kept]  # the characters, by default
    xd, yd = read_aan_tsv(path, 8, decode=True)
    decoded = [[b"first", b"second"], [long.encode(), "café".encode()], [b"", b""], [b"", b"z"]]
    assert xd.tolist() == [[_ids(d, 8) for d in pair] for pair in decoded] and yd.tolist() == y.tolist()


def test_aan_tsv_refusals(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("1\ta\tb\tc\td\n0\ta\tb\tc\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:2: expected 5 tab-separated cells \(label, id1, id2, text1, "
                                         r"text2\); got 4"):
        read_aan_tsv(path, 4)
    path.write_text("")
    with pytest.raises(ValueError, match=r"bad\.tsv: no rows"):
        read_aan_tsv(path, 4)


def test_retrieval_reads_each_split_from_its_file(tmp_path):
    task = get_task("lra_retrieval")
    assert dataclasses.asdict(task) == {"l_max": 4000, "decode": False}
    folder = tmp_path / "lra_release" / "tsv_data"
    assert task.folder(tmp_path) == folder
    assert task.required() == ["new_aan_pairs.train.tsv", "new_aan_pairs.eval.tsv", "new_aan_pairs.test.tsv"]
    with pytest.raises(DataMissingError, match=r"put new_aan_pairs\.train\.tsv, new_aan_pairs\.eval\.tsv, "
                                               r"new_aan_pairs\.test\.tsv in .*tsv_data"):
        task.splits(tmp_path)
    folder.mkdir(parents=True)
    docs = {}
    for k, name in enumerate(("train", "eval", "test")):
        docs[name] = [(f"{name} one {k}", "b'q'", k % 2), (f"{name} two", f"{name} doc", 1 - k % 2)]
        rows = [f"{lab}\tp\tq\t{a}\t{b}" for a, b, lab in docs[name]]
        (folder / f"new_aan_pairs.{name}.tsv").write_text("\n".join(rows) + "\n")
    for decode in (False, True):
        splits = get_task("lra_retrieval", l_max=12, decode=decode).splits(tmp_path)
        for split, name in (("train", "train"), ("val", "eval"), ("test", "test")):
            x, y = splits[split].tensors
            second = [b"q" if decode and b == "b'q'" else b.encode() for _, b, _ in docs[name]]
            assert x.dtype == torch.int64 and y.tolist() == [lab for _, _, lab in docs[name]]
            assert x.tolist() == [[_ids(a.encode(), 12), _ids(s, 12)] for (a, _, _), s in zip(docs[name], second)]
    info = get_task("lra_retrieval", l_max=12).info()
    assert (info.length, info.vocab_size, info.n_classes, info.d_input, info.pad_id, info.pair) == (
        12, 257, 2, None, 0, True)
    assert (info.kind, info.target, info.title) == ("files", "classify", "LRA Retrieval (AAN, dual encoder)")


# -- LRA Pathfinder-32 / Path-X PNG folders ----------------------------------------------------------------------


def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_pathfinder_folder_metadata_order_rows_and_pixels(tmp_path):
    folder = tmp_path / "diff"
    (folder / "metadata").mkdir(parents=True)
    gen = np.random.default_rng(41)
    want_x, want_y = [], []
    for n in range(12):  # 0.npy .. 11.npy: read 0, 1, 2, ..., 10, 11 (numeric), not 0, 1, 10, 11, 2, ...
        rows = ["", "   "]  # blank lines are skipped
        for i in range(2):
            img = gen.integers(0, 256, (4, 4), dtype=np.uint8)
            img[0, 1], img[1, 0] = 3, 250  # not symmetric: a transposed read would differ
            _png(folder / "imgs" / str(n) / f"s_{i}.png", img)
            label = (n + i) % 2
            rows.append(f"imgs/{n} s_{i}.png {i} {label}" + (" 1.8 14 4 2 0.5 1 1" if i else ""))  # 4 cells suffice
            want_x.append([v for r in range(4) for v in img[r]])  # raster order, row by row
            want_y.append(label)
        (folder / "metadata" / f"{n}.npy").write_text("\n".join(rows) + "\n")
    (folder / "metadata" / "notes.txt").write_text("imgs/0 s_0.png 0 1\n")  # not .npy: ignored
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, np.arange(16).reshape(4, 4) * 15, 77
    _png(folder / "imgs" / "rgb.png", rgb)
    (folder / "imgs" / "empty.png").write_bytes(b"")  # 0 bytes: left out, as the release's known empty file
    with open(folder / "metadata" / "11.npy", "a") as f:
        f.write("imgs empty.png 0 1\nimgs rgb.png 0 1\n")
    r, g, b = (rgb[..., c].astype(np.int64).reshape(-1) for c in range(3))
    want_x.append(((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).tolist())  # PIL's ITU-R 601 luma ("L")
    want_y.append(1)
    x, y = read_pathfinder_folder(str(folder), 4)
    assert x.dtype == torch.uint8 and x.shape == (25, 16, 1) and y.dtype == torch.int64
    assert x[..., 0].tolist() == want_x and y.tolist() == want_y


def test_pathfinder_folder_refusals(tmp_path):
    folder = tmp_path / "diff"
    with pytest.raises(ValueError, match=r"diff/metadata: no \.npy metadata files"):
        read_pathfinder_folder(folder, 4)
    (folder / "metadata").mkdir(parents=True)
    (folder / "metadata" / "0.npy").write_text("imgs a.png 0\n")
    with pytest.raises(ValueError, match=r"0\.npy: expected rows 'subfolder file_name index label \.\.\.'; "
                                         r"got 'imgs a\.png 0'"):
        read_pathfinder_folder(folder, 4)
    (folder / "metadata" / "0.npy").write_text("imgs a.png 0 1\nimgs b.png 1 0\n")
    (folder / "imgs").mkdir()
    (folder / "imgs" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"diff: 1 image\(s\) named in metadata/ are missing or cannot be decoded, "
                                         r"e\.g\. imgs/b\.png \(FileNotFoundError\)"):
        read_pathfinder_folder(folder, 4)  # a missing PNG is an error, not a smaller set
    (folder / "imgs" / "b.png").write_text("not a png")
    with pytest.raises(ValueError, match=r"e\.g\. imgs/b\.png \(UnidentifiedImageError\)"):
        read_pathfinder_folder(folder, 4)
    (folder / "metadata" / "0.npy").write_text("imgs a.png 0 1\n")
    with pytest.raises(ValueError, match=r"diff: no readable images"):
        read_pathfinder_folder(folder, 4)
    (folder / "metadata" / "0.npy").write_text("imgs a.png 0 1\nimgs b.png 1 0\n")
    _png(folder / "imgs" / "b.png", np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"b\.png: expected a 4×4 image; got \(4, 5\)"):
        read_pathfinder_folder(folder, 4)


def _pathfinder_release(root, side, n, difficulty="curv_contour_length_14", seed=0):
    folder = root / "lra_release" / f"pathfinder{side}" / difficulty
    (folder / "metadata").mkdir(parents=True)
    gen = np.random.default_rng(seed)
    images = gen.integers(0, 256, (n, side, side), dtype=np.uint8)
    labels = gen.integers(0, 2, n)
    rows = []
    for i in range(n):
        _png(folder / "imgs" / "0" / f"sample_{i}.png", images[i])
        rows.append(f"imgs/0 sample_{i}.png {i} {labels[i]} 1.8 14 4 2 0.5 1 1")
    (folder / "metadata" / "0.npy").write_text("\n".join(rows) + "\n")
    return folder, images.reshape(n, -1), labels


def test_pathfinder_task_splits_scaling_and_seed(tmp_path):
    folder, images, labels = _pathfinder_release(tmp_path, 32, 25)
    task = get_task("lra_pathfinder")
    assert dataclasses.asdict(task) == {"difficulty": "curv_contour_length_14", "seed": 42}
    assert task.folder(tmp_path) == folder and task.required() == ["metadata"]
    for seed in (42, 3):
        splits = get_task("lra_pathfinder", seed=seed).splits(tmp_path)
        parts = _randperm_split(25, [21, 2, 2], seed)  # int(0.1 n) = 2 each for val and test, in randperm order
        for split, idx in zip(("train", "val", "test"), parts):
            x, y = splits[split].tensors
            assert x.dtype == torch.uint8 and x[..., 0].tolist() == images[idx].tolist()
            assert y.tolist() == labels[idx].tolist()
            item, label = splits[split][1]
            want = torch.tensor(images[idx[1]].astype(np.float64) * 2 / 255 - 1, dtype=torch.float32)
            assert item.dtype == torch.float32 and item.shape == (1024, 1) and int(label) == labels[idx[1]]
            assert torch.allclose(item[:, 0], want, atol=1e-6, rtol=0)
    info = task.info()
    assert (info.name, info.kind, info.target, info.length, info.d_input, info.vocab_size, info.n_classes) == (
        "lra_pathfinder", "files", "classify", 1024, 1, None, 2)
    assert info.title == "LRA Pathfinder-32 (curv_contour_length_14)" and "pathfinder32/curv_contour_length_14" in \
        info.needs


def test_pathfinder_cache_follows_the_metadata(tmp_path):
    folder, images, labels = _pathfinder_release(tmp_path, 32, 12)
    task = get_task("lra_pathfinder", seed=1)
    first = task.splits(tmp_path)
    for png in (folder / "imgs" / "0").glob("*.png"):
        png.write_bytes(b"")  # the cache is read, not the PNGs
    again = task.splits(tmp_path)
    for split in ("train", "val", "test"):
        assert torch.equal(again[split].tensors[0], first[split].tensors[0])
    _png(folder / "imgs" / "0" / "sample_0.png", np.full((32, 32), 9, dtype=np.uint8))
    (folder / "metadata" / "0.npy").write_text("imgs/0 sample_0.png 0 1\n" * 10)  # new metadata: decoded again
    splits = task.splits(tmp_path)
    assert sum(len(splits[s]) for s in ("train", "val", "test")) == 10
    assert bool((splits["train"].tensors[0] == 9).all()) and splits["train"].tensors[1].tolist() == [1] * 8


def test_path_x_and_other_difficulties(tmp_path):
    folder, images, labels = _pathfinder_release(tmp_path, 128, 10, difficulty="curv_baseline", seed=2)
    task = get_task("lra_pathx", difficulty="curv_baseline")
    assert task.folder(tmp_path) == folder and not get_task("lra_pathx").present(tmp_path)
    assert not get_task("lra_pathfinder", difficulty="curv_baseline").present(tmp_path)
    splits = task.splits(tmp_path)
    parts = _randperm_split(10, [8, 1, 1], 42)
    for split, idx in zip(("train", "val", "test"), parts):
        assert splits[split].tensors[0][..., 0].tolist() == images[idx].tolist()
    info = task.info()
    assert info.length == 128 * 128 and info.d_input == 1 and info.title == "LRA Path-X (curv_baseline)"
    assert "pathfinder128/curv_baseline" in info.needs
    with pytest.raises(DataMissingError, match=r"put metadata in .*pathfinder128.curv_contour_length_14"):
        get_task("lra_pathx").splits(tmp_path)


@pytest.mark.parametrize("name, option", [("lra_text", "l_max"), ("lra_retrieval", "decode"),
                                          ("lra_pathfinder", "seed"), ("lra_pathx", "difficulty")])
def test_file_task_options_are_frozen(name, option):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(get_task(name), option, 1)


# -- CIFAR-10 python batches (sCIFAR, LRA Image) ------------------------------------------------------------------


def _cifar_pickle(path, batch, protocol=2, legacy=False):
    """Pickle ``batch`` as the release does (protocol 2); ``legacy`` names numpy's module as numpy 1 (and the
    release's Python-2 pickles) do, ``numpy.core.multiarray``."""
    raw = pickle.dumps(batch, protocol=protocol)
    if legacy:
        assert b"cnumpy._core.multiarray\n" in raw
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(raw)


def _cifar_reference_images(data):
    """(B, 3072) rows of the red, green and blue 32 × 32 planes to (B, 32, 32, 3), pixel by pixel."""
    out = np.zeros((len(data), 32, 32, 3), dtype=np.uint8)
    for i in range(len(data)):
        for ch in range(3):
            for r in range(32):
                for c in range(32):
                    out[i, r, c, ch] = data[i, ch * 1024 + r * 32 + c]
    return out


@pytest.mark.parametrize("protocol, legacy, str_keys, scalars", [
    (2, False, False, False), (2, True, False, True), (4, False, True, True), (2, True, True, False),
])
def test_cifar_batch_layout_and_the_pickles_it_accepts(tmp_path, protocol, legacy, str_keys, scalars):
    from ssmkit.data.cifar import read_cifar_batch

    gen = np.random.default_rng(protocol)
    data = gen.integers(0, 256, (3, 3072), dtype=np.uint8)
    labels = [7, 0, 9]
    batch = {"batch_label": "x", "labels": [np.int64(v) for v in labels] if scalars else labels, "data": data,
             "filenames": ["a.png"] * 3}
    if not str_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    _cifar_pickle(tmp_path / "b", batch, protocol, legacy)
    images, got = read_cifar_batch(str(tmp_path / "b"))
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    assert np.array_equal(images, _cifar_reference_images(data))
    assert got.dtype == np.int64 and got.tolist() == labels


def test_cifar_batch_refusals(tmp_path):
    from ssmkit.data.cifar import read_cifar_batch

    path = tmp_path / "b"
    _cifar_pickle(path, [1, 2])
    with pytest.raises(ValueError, match=r"b: expected a pickled dict; got list"):
        read_cifar_batch(path)
    _cifar_pickle(path, {b"data": np.zeros((1, 3072), np.uint8)})
    with pytest.raises(ValueError, match=r"expected the keys 'data' and 'labels'; got \['data'\]"):
        read_cifar_batch(path)
    _cifar_pickle(path, {b"labels": [1]})
    with pytest.raises(ValueError, match=r"expected the keys 'data' and 'labels'; got \['labels'\]"):
        read_cifar_batch(path)
    for data, labels in ((np.zeros((2, 3071), np.uint8), [1, 2]), (np.zeros((2, 3072), np.uint8), [1]),
                         (np.zeros(3072, np.uint8), [1]), (np.zeros((2, 3072), np.uint8), [1, 2, 3])):
        _cifar_pickle(path, {b"data": data, b"labels": labels})
        with pytest.raises(ValueError, match=r"expected data \(B, 3072\) and B labels; got "):
            read_cifar_batch(path)
    for name in (b"numpy\nfromstring", b"numpy._core.numeric\n_frombuffer", b"builtins\nlist"):
        path.write_bytes(b"\x80\x02c" + name + b"\n)R.")
        with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .* from a CIFAR batch"):
            read_cifar_batch(path)


def _cifar_release(root, sizes=(3, 2, 4, 1, 2), n_test=5):
    from ssmkit.data.cifar import BATCHES

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = np.random.default_rng(10)
    datas, labels = [], []
    for name, n in zip(BATCHES, (*sizes, n_test)):
        data = gen.integers(0, 256, (n, 3072), dtype=np.uint8)
        lab = gen.integers(0, 10, n).tolist()
        _cifar_pickle(folder / name, {b"batch_label": b"b", b"labels": lab, b"data": data}, legacy=True)
        datas.append(data)
        labels.append(lab)
    train = np.concatenate(datas[:5]), sum(labels[:5], [])
    return train, (datas[5], labels[5])


def test_scifar_reads_the_batches_in_order_splits_and_standardises(tmp_path):
    (train_data, train_labels), (test_data, test_labels) = _cifar_release(tmp_path)
    splits = get_task("scifar", n_val=4, seed=9).splits(tmp_path)
    train_idx, val_idx = (sorted(p) for p in _randperm_split(12, [8, 4], 9))
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    for split, data, labels in (("train", train_data[train_idx], [train_labels[i] for i in train_idx]),
                                ("val", train_data[val_idx], [train_labels[i] for i in val_idx]),
                                ("test", test_data, test_labels)):
        x, y = splits[split].tensors
        planes = np.stack([data[:, ch * 1024:(ch + 1) * 1024] for ch in range(3)], axis=-1)  # (B, 1024, 3)
        assert x.dtype == torch.uint8 and x.shape == (len(data), 1024, 3) and np.array_equal(x.numpy(), planes)
        assert y.dtype == torch.int64 and y.tolist() == labels
        for i in range(len(data)):
            item, label = splits[split][i]
            assert item.dtype == torch.float32 and int(label) == labels[i]
            assert np.allclose(item.numpy(), (planes[i] / 255.0 - mean) / std, atol=2e-6, rtol=0)


def test_lra_image_is_rounded_luma_standardised(tmp_path):
    (train_data, train_labels), (test_data, test_labels) = _cifar_release(tmp_path)
    test_data[0, :5] = [10, 11, 12, 255, 0]  # red
    test_data[0, 1024:1029] = [10, 200, 0, 255, 0]  # green
    test_data[0, 2048:2053] = [10, 0, 250, 255, 0]  # blue
    from ssmkit.data.cifar import BATCHES

    _cifar_pickle(tmp_path / "cifar-10-batches-py" / BATCHES[5], {b"labels": test_labels, b"data": test_data})
    splits = get_task("lra_image", n_val=2).splits(tmp_path)
    x, y = splits["test"].tensors
    luma = np.rint(test_data[:, :1024] * 0.299 + test_data[:, 1024:2048] * 0.587 + test_data[:, 2048:] * 0.114)
    assert x.dtype == torch.uint8 and x.shape == (5, 1024, 1) and np.array_equal(x[..., 0].numpy(), luma)
    assert x[0, :5, 0].tolist() == [10, 121, 32, 255, 0]  # 0.299·11 + 0.587·200 = 120.689; 0.299·12 + 0.114·250
    assert y.tolist() == test_labels
    item, _ = splits["test"][0]
    assert item.shape == (1024, 1) and np.allclose(item[:, 0].numpy(), (luma[0] - 122.6) / 61.0, atol=1e-5, rtol=0)
    train_idx, val_idx = (sorted(p) for p in _randperm_split(12, [10, 2], 42))
    gray = np.rint(train_data[:, :1024] * 0.299 + train_data[:, 1024:2048] * 0.587 + train_data[:, 2048:] * 0.114)
    assert np.array_equal(splits["val"].tensors[0][..., 0].numpy(), gray[val_idx])
    assert splits["train"].tensors[1].tolist() == [train_labels[i] for i in train_idx]


def test_cifar_tasks_defaults_info_and_missing_files(tmp_path):
    for name, title, d_input in (("scifar", "sCIFAR (colour)", 3), ("lra_image", "LRA Image (grayscale CIFAR-10)", 1)):
        task = get_task(name)
        assert dataclasses.asdict(task) == {"n_val": 5000, "seed": 42}
        assert task.folder(tmp_path) == tmp_path / "cifar-10-batches-py"
        assert task.required() == ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                                   "test_batch"]
        info = task.info()
        assert (info.name, info.title, info.kind, info.target, info.length, info.d_input, info.vocab_size,
                info.n_classes, info.pad_id) == (name, title, "files", "classify", 1024, d_input, None, 10, None)
        with pytest.raises(DataMissingError, match=r"put data_batch_1, .*, test_batch in .*cifar-10-batches-py"):
            task.splits(tmp_path)
        with pytest.raises(dataclasses.FrozenInstanceError):
            task.n_val = 3


# -- the regenerated Pathfinder's drawing primitives --------------------------------------------------------------


def _params(**changes):
    from ssmkit.data.pathfinder import PATHFINDER32

    return dataclasses.replace(PATHFINDER32, **changes)


def _coverage(n, a, b, radius, offsets):
    """Reference: the share of each pixel's sub-pixels (pixel (y, x) centred at (y, x), sub-pixels at the given
    offsets) within ``radius`` of the segment a-b, by a float64 loop over every sub-pixel of the image."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    out = np.zeros((n, n))
    for y in range(n):
        for x in range(n):
            hits = 0
            for oy in offsets:
                for ox in offsets:
                    p = np.array([y + oy, x + ox])
                    dd = float(d @ d)
                    t = 0.0 if dd == 0 else min(max(float((p - a) @ d) / dd, 0.0), 1.0)
                    q = a + t * d
                    hits += float((p - q) @ (p - q)) <= radius * radius
            out[y, x] = hits / len(offsets) ** 2
    return out


class _Scripted:
    """A stand-in random generator: ``choice`` records its pmf and returns the scripted indices in turn;
    ``integers`` returns the scripted integers in turn."""

    def __init__(self, choices=(), integers=()):
        self.choices, self.ints, self.pmfs, self.calls = list(choices), list(integers), [], []

    def choice(self, n, p):
        assert len(p) == n
        self.pmfs.append(np.asarray(p, float))
        return self.choices.pop(0)

    def integers(self, *args):
        self.calls.append(args)
        return self.ints.pop(0)

    def shuffle(self, x):
        pass


def test_canvas_starts_with_the_padding_occupied_and_the_margin_disc():
    from ssmkit.data.pathfinder import _Canvas

    for padding, margin, antialias in ((2, 2, 3), (1, 1, 2), (0, 3, 4)):
        c = _Canvas(_params(window=9, padding=padding, antialias=antialias), np.random.default_rng(0), margin)
        want = np.zeros((9, 9))
        for y in range(9):
            for x in range(9):
                if min(y, x, 8 - y, 8 - x) < padding:
                    want[y, x] = 1.0
        assert np.array_equal(c.occupied, want) and np.array_equal(c.image, np.zeros((9, 9))) and c.m == margin
        disc = {(dy, dx) for dy in range(-margin, margin + 1) for dx in range(-margin, margin + 1)
                if dy * dy + dx * dx <= margin * margin}
        assert sorted(map(tuple, c.disc_offsets.tolist())) == sorted(disc)
        assert np.allclose(c.sub, [(k + 0.5) / antialias - 0.5 for k in range(antialias)], atol=1e-15)
        assert np.array_equal(c.free(), want < 0.3)


@pytest.mark.parametrize("a, b, radius", [
    ((3.0, 2.0), (7.5, 9.25), 1.3),  # a diagonal
    ((8.0, 1.0), (8.0, 10.0), 0.75),  # along a row, to the border
    ((5.0, 5.0), (5.0, 5.0), 2.2),  # a point: a disc
    ((-1.5, 4.0), (2.0, 4.5), 1.0),  # partly outside the image
    ((0.4, 10.6), (11.2, 0.3), 0.5),  # corner to corner
    ((-9.0, -9.0), (-6.0, -5.0), 1.0),  # wholly outside: nothing
    ((-9.0, 3.0), (-6.0, 5.0), 1.0),  # above the image, within its columns: nothing
])
def test_segment_coverage_matches_a_subpixel_loop(a, b, radius):
    from ssmkit.data.pathfinder import _Canvas

    for antialias in (2, 3):
        c = _Canvas(_params(window=11, antialias=antialias), np.random.default_rng(0), 1)
        offsets = [(k + 0.5) / antialias - 0.5 for k in range(antialias)]
        got = c.segment(a, b, radius, antialiased=True)
        assert got.dtype == np.float64 and np.allclose(got, _coverage(11, a, b, radius, offsets), atol=1e-12, rtol=0)
    mask = c.segment(a, b, radius, antialiased=False)
    assert mask.dtype == bool and np.array_equal(mask, _coverage(11, a, b, radius, [0.0]) == 1.0)
    half = c.p.thickness / 2 + 0.25 / c.p.antialias  # the stroke: at least one sub-pixel wide
    assert np.allclose(c.stroke(a, b), _coverage(11, a, b, half, offsets), atol=1e-12, rtol=0)
    c.m = 2
    assert np.allclose(c.footprint(a, b), _coverage(11, a, b, c.p.thickness / 2 + 2, offsets), atol=1e-12, rtol=0)


def test_canvas_occupancy_collision_free_and_inside():
    from ssmkit.data.pathfinder import _Canvas

    c = _Canvas(_params(window=6, padding=0), np.random.default_rng(0), 1)
    occupied = np.zeros((6, 6))
    occupied[1, 2], occupied[3, 3], occupied[4, 0], occupied[2, 5] = 0.8, 0.3, 0.29, 0.3
    c.occupy(occupied)
    assert np.array_equal(c.occupied, occupied)
    foot = np.zeros((6, 6))
    foot[1, 2], foot[3, 3] = 0.999, 0.4
    assert not c.collides(foot)  # 1.799 < 1.8
    assert 0.8 + 1.0 >= 1.8
    foot[1, 2] = 1.0
    assert c.collides(foot)  # 1.8 itself collides
    foot[1, 2] = 0.5
    c.occupy(foot)  # a pixel-wise maximum
    want = occupied.copy()
    want[3, 3] = 0.4
    assert np.array_equal(c.occupied, want)
    free = np.ones((6, 6), bool)
    free[1, 2] = free[3, 3] = free[2, 5] = False  # occupancy 0.3 and more is not free; 0.29 is
    assert np.array_equal(c.free(), free)
    for point, inside in (((0, 0), True), ((5.9, 5.9), True), ((6, 0), False), ((0, 6), False),
                          ((-0.1, 3), False), ((3, -1e-9), False)):
        assert bool(c.inside(np.array(point))) is inside


def test_seed_paddle_and_its_pivot():
    from ssmkit.data.pathfinder import _Canvas

    c = _Canvas(_params(window=20, paddle_length=4), np.random.default_rng(0), 2)
    theta = math.radians(30)
    u = np.array([math.sin(theta), math.cos(theta)])  # (dy, dx)
    tail = np.array([6.0, 9.0])
    (start, end), foot, pivot = c.seed(tail, theta)
    assert np.allclose(start, tail) and np.allclose(end, tail + 4 * u) and np.allclose(pivot, tail - 2 * u)
    assert np.allclose(foot, c.footprint(tail, tail + 4 * u))
    assert c.seed(np.array([1.0, 1.0]), math.radians(-135)) is None  # the pivot falls outside
    assert c.seed(np.array([17.0, 10.0]), math.radians(90)) is None  # the head falls outside (y = 21)
    assert c.seed(np.array([15.0, 10.0]), math.radians(90)) is not None  # head at y = 19: inside
    assert c.seed(np.array([16.0, 10.0]), math.radians(90)) is None  # head at y = 20: outside


def _extend_reference(c, pivot, theta):
    """The candidate ends and their law, by a loop: the pixels (truncated) of the ring of radius L + m around the
    new pivot (L + 2m ahead along theta), one arc-pixel apart; each weighted by (1 − the largest occupancy within
    the margin's disc) · max(cos(min(|Δθ| · continuity, π/2)), 0)²."""
    p, m = c.p, c.m
    L, n = p.paddle_length, p.window
    new_pivot = pivot + (L + 2 * m) * np.array([math.sin(theta), math.cos(theta)])
    radius = L + m
    cands = set()
    k = 0
    while k / radius < 2 * math.pi:
        y, x = new_pivot[0] + radius * math.sin(k / radius), new_pivot[1] + radius * math.cos(k / radius)
        if 0 <= y < n and 0 <= x < n:
            cands.add((int(y), int(x)))
        k += 1
    coords = sorted(cands)
    weights, orients = [], []
    for y, x in coords:
        orient = math.atan2(y - new_pivot[0], x - new_pivot[1])
        delta = abs(orient - theta) % (2 * math.pi)
        delta = min(min(delta, 2 * math.pi - delta) * p.continuity, math.pi / 2)
        near = [c.occupied[y + dy, x + dx] for dy in range(-m, m + 1) for dx in range(-m, m + 1)
                if dy * dy + dx * dx <= m * m and 0 <= y + dy < n and 0 <= x + dx < n]
        weights.append(min(max(1 - max(near), 0), 1) * max(math.cos(delta), 0) ** 2)
        orients.append(orient)
    return new_pivot, coords, np.array(weights), orients


@pytest.mark.parametrize("continuity, margin, pivot, degrees, padding", [
    (1.0, 1, (6.3, 7.1), 40, 1), (1.8, 2, (6.3, 7.1), 40, 1), (0.5, 1, (6.3, 7.1), 40, 1),
    (1.0, 1, (1.0, 3.0), 0, 0),  # along the top edge: neighbours outside the image count as free
    (1.0, 1, (22.0, 10.0), 0, 0),  # along the bottom edge: ring points past it are no candidates
    (1.0, 1, (10.0, 22.0), 90, 0),  # down the right edge
    (1.0, 1, (0.0, 3.0), 0, 0),  # a ring point exactly on row 0 is a candidate
    (1.0, 1, (24.0, 10.0), 0, 0),  # one exactly on row 24 (= window) is not
    (1.0, 1, (1.0, 3.0), 0, 1),  # the occupied padding of row 0 read as a neighbour
    (1.0, 1, (22.0, 10.0), 0, 1),  # and of row 23
    (1.0, 1, (3.0, 1.0), 90, 1),  # of column 0
    (1.0, 1, (3.0, 22.0), 90, 1),  # of column 23
])
def test_extend_draws_from_the_ring_with_the_orientation_law(continuity, margin, pivot, degrees, padding):
    from ssmkit.data.pathfinder import _Canvas

    p = _params(window=24, paddle_length=3, continuity=continuity, padding=padding)
    c = _Canvas(p, _Scripted(), margin)
    blob = np.zeros((24, 24))
    blob[12:15, 14:18] = 0.6  # some occupancy near the ring
    blob[9, 16] = 0.2
    c.occupy(blob)
    pivot, theta = np.array(pivot), math.radians(degrees)
    new_pivot, coords, weights, orients = _extend_reference(c, pivot, theta)
    k = len(coords) // 2
    c.rng = rng = _Scripted(choices=[k])
    (start, end), foot, got_pivot, orient = c.extend(pivot, theta)
    assert len(rng.pmfs) == 1 and np.allclose(rng.pmfs[0], weights / weights.sum(), atol=1e-12, rtol=0)
    assert np.allclose(got_pivot, new_pivot) and np.allclose(end, coords[k]) and math.isclose(orient, orients[k])
    u = np.array([math.sin(orients[k]), math.cos(orients[k])])
    assert np.allclose(start, np.array(coords[k]) - 3 * u) and np.allclose(foot, c.footprint(start, end))


def test_target_pair_from_scripted_draws():
    """The seed zone's first pixel, θ = 0 for snake 1; snake 2 seven pixels up (φ = 270°), its paddle pointing out
    of the image twice (drawn again) and then down: max_paddle_retrial + 1 = 3 tries; a fourth would end the pair."""
    from ssmkit.data.pathfinder import _Canvas, _DeadEnd, _target_pair

    p = _params(paddle_length=14, contour_length=1, num_distractors=0)
    script = [0, 0, 0, -90, 270, -90, 270, 90, 270, 0]
    c = _Canvas(p, _Scripted(integers=script), 1)
    segments, starts, ends = _target_pair(c)
    assert c.rng.ints == []
    assert np.allclose(segments[0][0][0], (14, 14)) and np.allclose(segments[0][0][1], (14, 28))
    assert np.allclose(segments[1][0][0], (7, 14)) and np.allclose(segments[1][0][1], (21, 14))
    assert np.allclose(starts, [(14, 14), (7, 14)]) and np.allclose(ends, [(14, 28), (21, 14)])
    c = _Canvas(p, _Scripted(integers=[0, 0, 0] + [-90, 270] * 3 + [90, 270, 0]), 1)
    with pytest.raises(_DeadEnd):
        _target_pair(c)
    assert c.rng.ints == [90, 270, 0]


def test_extend_redraws_a_colliding_paddle_then_dead_ends():
    from ssmkit.data.pathfinder import _Canvas, _DeadEnd

    p = _params(window=24, paddle_length=3, max_paddle_retrial=2)
    c = _Canvas(p, _Scripted(), 1)
    pivot, theta = np.array([6.0, 6.0]), math.radians(45)
    _, coords, weights, _ = _extend_reference(c, pivot, theta)
    good = [i for i, w in enumerate(weights) if w > 0.1]
    target = np.array(coords[good[0]], float)
    c.occupied = np.where(c.segment(target, target, 0.5, antialiased=False), 0.9, c.occupied)  # weight 0.1 left
    c.rng = _Scripted(choices=[good[0], good[0], good[1]])
    (_, end), _, _, _ = c.extend(pivot, theta)
    assert np.allclose(end, coords[good[1]]) and len(c.rng.pmfs) == 3  # two collisions, the third draw fits
    c.rng = _Scripted(choices=[good[0]] * 3)
    with pytest.raises(_DeadEnd):
        c.extend(pivot, theta)  # max_paddle_retrial + 1 draws, all colliding
    assert len(c.rng.pmfs) == 3
    c.occupied = np.ones((24, 24))  # nothing free: no weight
    with pytest.raises(_DeadEnd):
        c.extend(pivot, theta)
    c.occupied = np.zeros((24, 24))
    with pytest.raises(_DeadEnd):
        c.extend(np.array([60.0, 60.0]), 0.0)  # the ring lies outside the image


def test_draw_and_contrast():
    from ssmkit.data.pathfinder import _Canvas

    c = _Canvas(_params(window=10), _Scripted(integers=[2, 0]), 1)
    assert c.contrast((0.5, 0.7, 0.9)) == 0.9 and c.contrast((0.25,)) == 0.25
    c.draw(((2.0, 2.0), (2.0, 7.0)), 0.5)
    c.draw(((1.0, 4.0), (6.0, 4.0)), 0.8)
    offsets = [-0.25, 0.25]
    half = c.p.thickness / 2 + 0.25 / 2
    want = np.maximum(0.5 * _coverage(10, (2, 2), (2, 7), half, offsets), 0.8 * _coverage(10, (1, 4), (6, 4), half,
                                                                                          offsets))
    assert np.allclose(c.image, want, atol=1e-12, rtol=0)


def _coverage_grid(n, a, b, radius, antialias):
    """The sub-pixel coverage of a segment over the whole n × n grid at once (numpy, no local window)."""
    offsets = (np.arange(antialias) + 0.5) / antialias - 0.5
    ys = (np.arange(n)[:, None, None, None] + offsets[None, :, None, None])  # (n, k, 1, 1)
    xs = (np.arange(n)[None, None, :, None] + offsets[None, None, None, :])  # (1, 1, n, k)
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    dd = float(d @ d)
    t = np.zeros(np.broadcast_shapes(ys.shape, xs.shape)) if dd == 0 else np.clip(
        ((ys - a[0]) * d[0] + (xs - a[1]) * d[1]) / dd, 0.0, 1.0)
    dist2 = (ys - a[0] - t * d[0]) ** 2 + (xs - a[1] - t * d[1]) ** 2
    return (dist2 <= radius ** 2).sum(axis=(1, 3)) / antialias ** 2


def _rescaled(image):
    lo, hi = image.min(), image.max()
    return np.round((image - lo) / (hi - lo) * 255).astype(np.uint8)


def _check_chain(snake, p, m):
    """The paddles of one snake against the generator's construction: pivots m behind the seed's tail, then
    L + 2m ahead of the last pivot along the last paddle; each end an integer pixel about L + m from its pivot,
    the paddle on the line through the pivot, and no turn past π / (2 · continuity)."""
    L = p.paddle_length
    (a, b) = snake[0]
    u = (b - a) / L
    assert math.isclose(np.linalg.norm(u), 1.0, abs_tol=1e-9)
    theta = math.degrees(math.atan2(u[0], u[1]))
    assert math.isclose(theta, round(theta), abs_tol=1e-7)  # a whole number of degrees
    pivot = a - m * u
    for a, b in snake[1:]:
        pivot = pivot + (L + 2 * m) * u
        v = (b - a) / L
        assert np.allclose(b, np.round(b)) and math.isclose(np.linalg.norm(v), 1.0, abs_tol=1e-9)
        assert abs(np.linalg.norm(b - pivot) - (L + m)) < math.sqrt(2)  # a ring pixel, truncated
        assert np.allclose((b - pivot) / np.linalg.norm(b - pivot), v, atol=1e-9)
        turn = abs((math.atan2(v[0], v[1]) - math.atan2(u[0], u[1]) + math.pi) % (2 * math.pi) - math.pi)
        assert turn <= math.pi / (2 * p.continuity) + 1e-9
        u = v


@pytest.fixture(scope="module")
def bare_renders():
    """Pathfinder-32 without distractors and with a snake contrast under the markers' 1."""
    from ssmkit.data.pathfinder import render_pathfinder

    p = _params(num_distractors=0, snake_contrasts=(0.6,))
    return p, [render_pathfinder(p, np.random.default_rng(np.random.SeedSequence([41, i]))) for i in range(6)]


def test_render_is_the_targets_and_markers_rescaled(bare_renders):
    from ssmkit.data.pathfinder import render_pathfinder

    p, renders = bare_renders
    half = p.thickness / 2 + 0.25 / p.antialias
    bright = _params(num_distractors=0)  # paddles of 0.75 · 2 = 1.5 over markers of 1: the maximum is 1.5
    renders = [(0.75 * 0.6, r) for r in renders] + [
        (0.75 * 2.0, render_pathfinder(bright, np.random.default_rng(np.random.SeedSequence([42, i])))) for i in
        range(2)]
    for contrast, (image, label, detail) in renders:
        raw = np.zeros((32, 32))
        for snake in detail["segments"]:
            for a, b in snake:
                raw = np.maximum(raw, contrast * _coverage_grid(32, a, b, half, p.antialias))
        for centre in detail["markers"]:
            raw = np.maximum(raw, _coverage_grid(32, centre, centre, p.marker_radius, p.antialias))
        assert image.dtype == np.uint8 and np.array_equal(image, _rescaled(raw))


def test_target_snakes_follow_the_construction(bare_renders):
    p, renders = bare_renders
    for _, _, detail in renders:
        snakes = detail["segments"]
        for snake in snakes:
            assert len(snake) == p.contour_length
            _check_chain(snake, p, 1)
        first, second = snakes[0][0][0], snakes[1][0][0]
        s = p.seed_distance
        assert bool(((first >= 2 * s) & (first < 32 - 2 * s)).all())  # 2 · seed_distance from the borders
        assert np.allclose(second, np.round(second)) and abs(np.linalg.norm(second - first) - s) <= math.sqrt(0.5)


def test_distractor_attempts_leave_the_canvas_as_it_was_on_failure(monkeypatch):
    from ssmkit.data import pathfinder

    calls, drawn = [], []
    original, draw = pathfinder._distractor, pathfinder._Canvas.draw

    def spy(c):
        before = c.image.copy(), c.occupied.copy()
        drawn.clear()
        ok = original(c)
        calls.append((ok, before, c.image.copy(), c.occupied.copy(), list(drawn)))
        return ok

    def draw_spy(self, segment, contrast):
        drawn.append((np.array(segment[0], float), np.array(segment[1], float), contrast))
        return draw(self, segment, contrast)

    monkeypatch.setattr(pathfinder, "_distractor", spy)
    monkeypatch.setattr(pathfinder._Canvas, "draw", draw_spy)
    p = _params(num_distractors=6, max_distractor_retrial=2, snake_contrasts=(0.6,))
    for i in range(3):
        calls.clear()
        image, _, detail = pathfinder.render_pathfinder(p, np.random.default_rng(np.random.SeedSequence([7, i])))
        k = 0
        for _ in range(p.num_distractors):  # each tried max_distractor_retrial + 1 times at most
            for _ in range(p.max_distractor_retrial + 1):
                k += 1
                if calls[k - 1][0]:
                    break
        assert k == len(calls)
        for snake in detail["segments"]:  # the target paddles are in the occupancy before any distractor
            for a, b in snake:
                foot = _coverage_grid(32, a, b, p.thickness / 2 + 1, p.antialias)
                assert bool((calls[0][1][1] >= foot - 1e-12).all())
        for ok, (image0, occupied0), image1, occupied1, segments in calls:
            if ok:
                assert len(segments) == p.distractor_length and all(con == 0.6 for _, _, con in segments)
                _check_chain([(a, b) for a, b, _ in segments], p, 1)
                tail = segments[0][0]
                assert bool(((tail >= 1) & (tail <= 30)).all()) and occupied0[int(tail[0]), int(tail[1])] < 0.3
                for a, b, _ in segments:  # every paddle joins the occupancy, widened by the margin
                    foot = _coverage_grid(32, a, b, p.thickness / 2 + 1, p.antialias)
                    assert bool((occupied1 >= foot - 1e-12).all())
                assert bool((image1 >= image0).all()) and (image1 > image0).any() and (occupied1 >= occupied0).all()
                quarters = image1[image1 > image0] / 0.6 * 4  # snake contrast 0.6 times a coverage in quarters
                assert np.allclose(quarters, np.round(quarters), atol=1e-9) and quarters.max() <= 4 + 1e-9
            else:
                assert np.array_equal(image1, image0) and np.array_equal(occupied1, occupied0)
        raw = calls[-1][2]
        for centre in detail["markers"]:
            raw = np.maximum(raw, _coverage_grid(32, centre, centre, p.marker_radius, p.antialias))
        assert np.array_equal(image, _rescaled(raw))
    assert any(ok for ok, *_ in calls)


def test_presets_are_the_lra_builders_settings():
    """REFERENCE.md §3.2: the LRA builder's overrides (Pathfinder-32) and Path-X's, with Python 2's division
    (distractor_length 14 / 3 = 4; 20 / 4 = 5 and 35 / 4 = 8 distractors) and Path-X's default paddle length 5."""
    from ssmkit.data.pathfinder import PATHFINDER32, PATHX, PRESETS

    fields = ("window", "padding", "antialias", "margins", "paddle_length", "thickness", "marker_radius",
              "contour_length", "seed_distance", "continuity", "distractor_length", "num_distractors",
              "snake_contrasts", "paddle_contrasts", "max_paddle_retrial", "max_distractor_retrial")
    assert tuple(f.name for f in dataclasses.fields(PATHFINDER32)) == fields
    assert dataclasses.astuple(PATHFINDER32) == (32, 1, 2, (1,), 2, 0.5, 1.5, 14, 7, 1.0, 4, 5, (2.0,), (0.75,), 2, 4)
    assert dataclasses.astuple(PATHX) == (128, 1, 2, (2, 3), 5, 1.5, 3.0, 14, 20, 1.8, 4, 8, (0.9,), (1.0,), 2, 4)
    assert PRESETS == {"pathfinder32": PATHFINDER32, "pathx": PATHX}
    with pytest.raises(dataclasses.FrozenInstanceError):
        PATHX.window = 64


def test_render_gives_up_when_no_pair_fits():
    from ssmkit.data.pathfinder import render_pathfinder

    p = _params(window=12)  # 2 · seed_distance = 14 from every border: no seed position
    with pytest.raises(RuntimeError, match=r"no pair of target snakes fitted in 3 attempts; check the parameters"):
        render_pathfinder(p, np.random.default_rng(0), max_attempts=3)


def test_generated_task_is_the_renders_in_order(tmp_path):
    from ssmkit.data.pathfinder import generate_pathfinder, render_pathfinder

    task = get_task("pathfinder", n_train=2, n_val=2, n_test=1, workers=1, seed=5)
    splits = task.splits(tmp_path)
    renders = [render_pathfinder(_params(), np.random.default_rng(np.random.SeedSequence([5, i]))) for i in range(5)]
    images = np.stack([r[0].reshape(-1) for r in renders])
    labels = [r[1] for r in renders]
    for split, lo, hi in (("train", 0, 2), ("val", 2, 4), ("test", 4, 5)):
        x, y = splits[split].tensors
        assert x.dtype == torch.uint8 and x.shape == (hi - lo, 1024, 1) and np.array_equal(x[..., 0], images[lo:hi])
        assert y.dtype == torch.int64 and y.tolist() == labels[lo:hi]
        item, _ = splits[split][0]
        want = torch.tensor(images[lo].astype(np.float64) * 2 / 255 - 1, dtype=torch.float32)
        assert torch.allclose(item[:, 0], want, atol=1e-6, rtol=0)
    assert get_task("pathfinder", n_train=2, n_val=2, n_test=1, workers=2, seed=5).present(tmp_path)  # not keyed
    assert not get_task("pathfinder", n_train=2, n_val=2, n_test=1, seed=6).present(tmp_path)
    x, y = generate_pathfinder(2, _params(), seed=5)
    assert torch.equal(x[..., 0], torch.from_numpy(images[:2])) and y.dtype == torch.int64 and y.tolist() == labels[:2]
    every_cpu = get_task("pathfinder", n_train=1, n_val=1, n_test=1, seed=5).splits(tmp_path / "w0")  # workers 0
    for k, split in enumerate(("train", "val", "test")):
        assert np.array_equal(every_cpu[split].tensors[0][0, :, 0].numpy(), images[k])
    image, label, _ = render_pathfinder(_params(), np.random.default_rng(np.random.SeedSequence([0, 0])))
    x, y = generate_pathfinder(1)  # the defaults: Pathfinder-32, seed 0
    assert np.array_equal(x[0, :, 0].numpy(), image.reshape(-1)) and y.tolist() == [label]


def test_generated_task_options_info_and_refusals():
    from ssmkit.data.pathfinder import generate_pathfinder

    task = get_task("pathfinder")
    assert dataclasses.asdict(task) == {"preset": "pathfinder32", "n_train": 16_000, "n_val": 2_000, "n_test": 2_000,
                                        "workers": 0, "seed": 0}
    assert task.options() == {"preset": "pathfinder32", "n_train": 16_000, "n_val": 2_000, "n_test": 2_000, "seed": 0}
    info = get_task("pathfinder", preset="pathx", n_train=1000, n_val=200, n_test=34).info()
    assert info.title == "Path-X (Pathfinder-128) (regenerated, 1,234 images)"
    assert (info.name, info.kind, info.target, info.length, info.d_input, info.vocab_size, info.n_classes) == (
        "pathfinder", "generated", "classify", 16384, 1, None, 2)
    assert task.info().title == "Pathfinder-32 (regenerated, 20,000 images)" and task.info().length == 1024
    for option in ("n_train", "n_val", "n_test"):
        with pytest.raises(ValueError, match=rf"{option} must be an int >= 1; got 0"):
            get_task("pathfinder", **{option: 0})
    with pytest.raises(ValueError, match=r"preset must be one of \['pathfinder32', 'pathx'\]; got 'PathX'"):
        get_task("pathfinder", preset="PathX")
    with pytest.raises(ValueError, match=r"n must be an int >= 1; got 0"):
        generate_pathfinder(0)
    with pytest.raises(ValueError, match=r"workers must be an int >= 1; got 0"):
        generate_pathfinder(1, workers=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.seed = 1


def test_target_paddles_take_their_snakes_contrast_times_the_steps_paddle_contrast(monkeypatch):
    """Each target snake keeps one snake contrast (two draws from the list doubled and shuffled); the paddles of
    one step share a paddle contrast; the two seed paddles draw theirs apiece; the snakes grow alternately."""
    from ssmkit.data import pathfinder

    draws = []
    original = pathfinder._Canvas.draw

    def spy(self, segment, contrast):
        draws.append((self, segment, contrast))  # the canvas itself: kept alive, so never confused
        return original(self, segment, contrast)

    monkeypatch.setattr(pathfinder._Canvas, "draw", spy)
    pcs, scs = (0.75, 0.5), (0.6, 0.35)
    p = _params(num_distractors=0, paddle_contrasts=pcs, snake_contrasts=scs)
    seen_mu, seen_pc = set(), set()
    for i in range(5):
        draws.clear()
        _, _, detail = pathfinder.render_pathfinder(p, np.random.default_rng(np.random.SeedSequence([3, i])))
        last = [d for d in draws if d[0] is draws[-1][0]]  # the canvas the pair fitted on
        snakes = detail["segments"]
        assert len(last) == 2 * p.contour_length
        factors = []
        for j, (_, segment, contrast) in enumerate(last):
            assert np.allclose(np.array(segment), np.array(snakes[j % 2][j // 2]))  # alternately: 0, 1, 0, 1, ...
            pair = [(pc, sc) for pc in pcs for sc in scs if math.isclose(pc * sc, contrast)]
            assert len(pair) == 1
            factors.append(pair[0])
        mu = (factors[0][1], factors[1][1])
        assert all(factors[j][1] == mu[j % 2] for j in range(len(factors)))
        assert all(factors[j][0] == factors[j + 1][0] for j in range(2, len(factors), 2))
        seen_mu.add(mu)
        seen_pc.update(f[0] for f in factors[2:])
    assert len(seen_mu) > 1 and seen_pc == set(pcs)


def test_distractor_needs_one_percent_free_and_a_free_inner_pixel():
    """No distractor once under 1 % of the image is free; its seed is a free pixel off the outer ring, with a
    whole-degree orientation in [−180°, 180°) (the draws are read off a scripted generator)."""
    from ssmkit.data.pathfinder import _Canvas, _distractor

    c = _Canvas(_params(window=20, padding=0), _Scripted(), 1)
    ring = [[(0, k) for k in (3, 5, 7, 9)], [(19, k) for k in (3, 5, 7, 9)], [(k, 0) for k in (3, 5, 7, 9)],
            [(k, 19) for k in (3, 5, 7, 9)]]  # 1 % free, all of it on one side of the outer ring
    for free in ([], [(5, 4), (9, 9), (12, 3)], *ring):  # nothing, 0.75 %, or the ring only
        c.occupied = np.ones((20, 20))
        for y, x in free:
            c.occupied[y, x] = 0.0
        c.rng = _Scripted(integers=[90, 0] * 3)
        assert _distractor(c) is False and len(c.rng.ints) == 6 and c.rng.calls == []
    c.occupied = np.ones((20, 20))
    c.occupied[5, 4] = c.occupied[9, 9] = c.occupied[12, 3] = c.occupied[15, 15] = 0.0  # 1 %: tried
    image, occupied = c.image.copy(), c.occupied.copy()
    c.rng = _Scripted(integers=[90, 0] * 3)
    assert _distractor(c) is False and c.rng.ints == []  # every seed collides; the canvas is left as it was
    assert c.rng.calls == [(-180, 180), (4,)] * 3
    assert np.array_equal(c.image, image) and np.array_equal(c.occupied, occupied)


class _Recording:
    """A numpy generator that records each draw's method, arguments and result."""

    def __init__(self, seed):
        self.g, self.calls = np.random.default_rng(seed), []

    def integers(self, *args):
        out = self.g.integers(*args)
        self.calls.append(("integers", args, int(out)))
        return out

    def choice(self, n, p):
        out = self.g.choice(n, p=p)
        self.calls.append(("choice", (n,), int(out)))
        return out

    def shuffle(self, x):
        self.calls.append(("shuffle", (list(x),), None))
        self.g.shuffle(x)


def test_render_draws_follow_the_documented_laws():
    """Label ~ Bernoulli(0.5) first, then the margin from the list; per pair attempt the doubled snake contrasts
    shuffled, whole-degree orientations in [−180°, 180°), the first seed uniform over the 4 × 4 central zone of
    pixels 2 · seed_distance from the borders, the second's direction in [0°, 360°); contrasts from their lists;
    finally which snake carries the first marker."""
    from ssmkit.data.pathfinder import render_pathfinder

    p = _params(num_distractors=0, margins=(1, 1), paddle_contrasts=(0.75, 0.5), snake_contrasts=(0.6, 0.35))
    allowed = {(0, 2), (-180, 180), (16,), (0, 360), (2,)}
    for i in range(4):
        rng = _Recording(np.random.SeedSequence([11, i]))
        _, label, detail = render_pathfinder(p, rng)
        calls = rng.calls
        assert calls[0][:2] == ("integers", (0, 2)) and calls[0][2] == label
        assert calls[1][:2] == ("integers", (2,))
        m = p.margins[calls[1][2]]
        assert calls[2] == ("shuffle", ([0.6, 0.35, 0.6, 0.35],), None)
        assert calls[3][:2] == ("integers", (-180, 180)) and calls[4][:2] == ("integers", (16,))
        assert calls[-1][:2] == ("integers", (0, 2)) and calls[-1][2] == detail["marked"][0]
        assert all(args in allowed for kind, args, _ in calls[2:] if kind == "integers")
        assert sum(kind == "shuffle" for kind, _, _ in calls) >= 1
        for snake in detail["segments"]:
            _check_chain(snake, p, m)


def test_a_seed_paddle_out_of_the_image_is_drawn_again(monkeypatch):
    """Long seed paddles near the zone's edge can leave the image; the seed is drawn again (up to
    max_paddle_retrial + 1 times, then the pair), never used."""
    from ssmkit.data import pathfinder

    outside, original = [], pathfinder._Canvas.seed

    def spy(self, tail, theta):
        got = original(self, tail, theta)
        outside.append(got is None)
        return got

    monkeypatch.setattr(pathfinder._Canvas, "seed", spy)
    p = _params(paddle_length=14, contour_length=1, num_distractors=0)
    for i in range(20):
        _, _, detail = pathfinder.render_pathfinder(p, np.random.default_rng(i))
        for snake in detail["segments"]:
            (a, b), = snake
            assert bool(((a >= 0) & (a < 32) & (b >= 0) & (b < 32)).all())
    assert any(outside)
