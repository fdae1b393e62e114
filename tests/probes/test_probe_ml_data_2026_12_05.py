"""Probe of 2026-12-05: silent wrong answers in the ML benchmark data path (LRA ListOps, Text, Retrieval, Image,
Pathfinder; sMNIST / psMNIST; Speech Commands; padding, batching, caches), each number against an independent
computation written here from the benchmark's definition (/work/shared/REFERENCE.md §5 3.1-3.2; the loaders of
state-spaces/s4 ``src/dataloaders/lra.py``, ``vision.py``, ``datasets/sc.py``, ``utils/permutations.py``, which S4,
S5, DSS and Liquid-S4 published their numbers with), on small files written in the releases' formats.

Findings (fixed):

1. *A partly extracted Pathfinder / Path-X release was read as a smaller data set, and cached so.*
   ``read_pathfinder_folder`` skipped every PNG it could not open, missing ones included. With the last 10 of 40
   PNGs missing (an interrupted ``tar``), ``lra_pathfinder`` gave 24 / 3 / 3 images instead of 32 / 4 / 4: the
   seeded 80/10/10 ``random_split`` ran over another n, so every split held other images than S4's, silently. The
   decoded cache is keyed by the metadata files, which had not changed, so after the extraction was completed the
   30-image set was still returned (24 / 3 / 3). S4's ``PathFinderDataset`` reads every metadata row except one
   blacklisted empty file. Now a missing or undecodable PNG is a ``ValueError`` naming it (nothing is cached);
   only empty (0-byte) files, the release's known defect, are left out (``ssmkit.data.lra.read_pathfinder_folder``).
2. *A WAV file cut short was read as a shorter clip.* ``read_samples`` returned the frames present (9,000 of a
   header's 16,000): SC35 zero-padded the clip, SC10's default protocol dropped it as "not full length", both
   silently, and the decoded cache kept the result. Now a ``ValueError`` names the file
   (``ssmkit.data.speech.read_samples``).

Documentation corrected: ``stratified_split`` claimed the sizes of CKConv's / S4's ``train_test_split`` calls
(sklearn rounds over all classes together: a clip or two per class apart); ``ssmkit.data.task`` said every split
is a ``TensorDataset`` (image and audio tasks give ``ScaledSequences``, whose ``.tensors`` are the stored integers).

Checked and right (a test each below): ListOps TSV tokenisation, vocabulary, ``<eos>``, padding, truncation, labels;
Text byte ids, head truncation at 4,096, labels; Retrieval's two documents cut at 4,000 each, the eval file as
validation; LRA Image luma (within one grey level of Pillow's), (g − 122.6) / 61, raster order; sCIFAR channel
standardisation; S4's validation split; sMNIST raster order / 255; psMNIST's bit-reversal order (S4's algorithm) and
its random permutation, one for every split; Speech Commands per-step statistics from the training clips only, end
padding; padding never changing a causal model's prediction (mean and last pooling, pairs); batches keeping inputs
and labels aligned across shuffled epochs; generated caches keyed by every option that changes their content.
"""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from ssmkit.data import available_tasks, get_task
from ssmkit.data.task import GeneratedTask
from ssmkit.data.store import cache_path
from tests.data.test_loaders import write_wav

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


# -- ListOps (LRA release TSV) ---------------------------------------------------------------------------------------


def _lra_tree(op: str, children: list):
    """LRA ``generate_tree``'s nesting of one operator node: ((((op, c0), c1), ...), ']')."""
    t = (op, children[0])
    for c in children[1:]:
        t = (t, c)
    return (t, "]")


def _lra_string(t) -> str:
    """LRA ``tree_to_string``."""
    if isinstance(t, (str, int)):
        return str(t)
    return "( " + _lra_string(t[0]) + " " + _lra_string(t[1]) + " )"


def _s4_listops_tokens(text: str) -> list[str]:
    """S4's ``listops_tokenizer``: ']' -> 'X', parentheses deleted, split on whitespace."""
    return text.translate({ord("]"): ord("X"), ord("("): None, ord(")"): None}).split()


def _value(op, values):
    return {"[MIN": min, "[MAX": max, "[MED": lambda v: int(np.median(v)), "[SM": lambda v: sum(v) % 10}[op](values)


def test_listops_release_tsv_tokens_vocabulary_eos_padding_and_labels(tmp_path):
    inner = _lra_tree("[MIN", [4, 7])
    rows = [
        (_lra_tree("[MAX", [2, 9, inner, 0]), _value("[MAX", [2, 9, 4, 0])),           # 9
        (_lra_tree("[MED", [3, 8, 1, 6]), _value("[MED", [3, 8, 1, 6])),               # int(4.5) = 4
        (_lra_tree("[SM", [7, 8, 9, _lra_tree("[MED", [1, 2])]), (7 + 8 + 9 + 1) % 10),  # MED(1, 2) = int(1.5)
        (_lra_tree("[SM", list(range(10)) * 3), 135 % 10),                             # 32 tokens: truncated at 16
    ]
    assert [r[1] for r in rows] == [9, 4, 5, 5]
    folder = tmp_path / "lra_release" / "listops-1000"
    folder.mkdir(parents=True)
    for k, split in enumerate(("train", "val", "test")):
        picked = rows if split == "train" else rows[k:k + 1]
        text = "Source\tTarget\n" + "".join(f"{_lra_string(t)}\t{y}\n" for t, y in picked)
        (folder / f"basic_{split}.tsv").write_text(text)
    from ssmkit.data.listops import VOCAB

    task = get_task("lra_listops", l_max=16)
    info = task.info()
    assert info.vocab_size == 18 and info.pad_id == 0 and VOCAB[0] == "<pad>" and info.n_classes == 10
    assert set(VOCAB) == {"<pad>", "<unk>", "<eos>", *"0123456789", "[MIN", "[MAX", "[MED", "[SM", "X"}
    splits = task.splits(tmp_path)
    x, y = splits["train"].tensors
    assert x.shape == (4, 16) and x.dtype == torch.int64 and y.tolist() == [9, 4, 5, 5]
    for i, (tree, _) in enumerate(rows):
        tokens = _s4_listops_tokens(_lra_string(tree))
        want = tokens[:15] + ["<eos>"]                  # S4: l_max - 1 tokens, then <eos> (append_eos: True)
        want += ["<pad>"] * (16 - len(want))            # right padding with <pad>
        assert [VOCAB[j] for j in x[i].tolist()] == want
    assert [VOCAB[j] for j in x[0].tolist()][:10] == ["[MAX", "2", "9", "[MIN", "4", "7", "X", "0", "X", "<eos>"]
    assert splits["val"].tensors[1].tolist() == [4] and splits["test"].tensors[1].tolist() == [5]


# -- Text (byte-level IMDB) ------------------------------------------------------------------------------------------


def test_text_keeps_the_first_4096_bytes_as_byte_plus_one_and_labels_positive_1(tmp_path):
    base = tmp_path / "aclImdb"
    reviews = {
        ("train", "neg", "0_1.txt"): b"HEAD" + b"x" * 5000 + b"TAIL",
        ("train", "neg", "1_2.txt"): "d\u00e9\u00e7u, <br /> nul".encode(),
        ("train", "pos", "0_9.txt"): b"great film",
        ("train", "pos", "1_10.txt"): bytes(range(1, 256)),
        ("test", "neg", "0_3.txt"): b"meh",
        ("test", "pos", "0_8.txt"): b"fine " * 1000,
    }
    for (split, sub, name), raw in reviews.items():
        (base / split / sub).mkdir(parents=True, exist_ok=True)
        (base / split / sub / name).write_bytes(raw)
    (base / "train" / "unsup").mkdir()
    (base / "train" / "unsup" / "0_0.txt").write_bytes(b"unlabelled: not read")

    def ids(raw):
        kept = [b + 1 for b in raw[:4096]]
        return kept + [0] * (4096 - len(kept))

    splits = get_task("lra_text", n_val=1, seed=0).splits(tmp_path)
    x = torch.cat([splits["train"].tensors[0], splits["val"].tensors[0]])
    y = torch.cat([splits["train"].tensors[1], splits["val"].tensors[1]])
    got = {tuple(r.tolist()): int(label) for r, label in zip(x, y)}
    want = {tuple(ids(raw)): int(sub == "pos") for (split, sub, _), raw in reviews.items() if split == "train"}
    assert got == want and x.shape == (4, 4096)
    long = ids(reviews[("train", "neg", "0_1.txt")])
    assert long[:4] == [ord(c) + 1 for c in "HEAD"] and ord("T") + 1 not in long  # the head is kept, not the tail
    xt, yt = splits["test"].tensors
    assert {tuple(r.tolist()): int(v) for r, v in zip(xt, yt)} == {tuple(ids(b"meh")): 0,
                                                                    tuple(ids(b"fine " * 1000)): 1}
    info = get_task("lra_text").info()
    assert (info.length, info.vocab_size, info.pad_id, info.n_classes) == (4096, 257, 0, 2)


# -- Retrieval (AAN pairs) -------------------------------------------------------------------------------------------


def test_retrieval_cuts_each_document_at_4000_bytes_and_reads_eval_as_validation(tmp_path):
    folder = tmp_path / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    first = "b'" + "q" * 4100 + "\\n'"               # the release's bytes-literal text, read as its characters
    second = "b'A short abstract \\xc3\\xa9.'"
    rows = {"train": [("1", first, second), ("0", second, "b'x'")], "eval": [("0", "b'e'", "b'f'")],
            "test": [("1", "b'g'", "b'hh'")]}
    for name, items in rows.items():
        text = "".join(f"{lab}\tid{i}a\tid{i}b\t{a}\t{b}\n" for i, (lab, a, b) in enumerate(items))
        (folder / f"new_aan_pairs.{name}.tsv").write_text(text)

    def ids(cell):
        raw = cell.encode("utf-8")[:4000]
        return [b + 1 for b in raw] + [0] * (4000 - len(raw))

    splits = get_task("lra_retrieval").splits(tmp_path)
    for split, name in (("train", "train"), ("val", "eval"), ("test", "test")):
        x, y = splits[split].tensors
        assert x.shape == (len(rows[name]), 2, 4000)
        assert y.tolist() == [int(r[0]) for r in rows[name]]
        for i, (_, a, b) in enumerate(rows[name]):
            assert x[i, 0].tolist() == ids(a) and x[i, 1].tolist() == ids(b)  # the documents kept apart, in order
    assert splits["train"].tensors[0][0, 0, 3999].item() == ord("q") + 1  # 4,000 bytes of the first document
    info = get_task("lra_retrieval").info()
    assert info.pair and info.pad_id == 0 and info.length == 4000


# -- CIFAR-10: LRA Image and sCIFAR ----------------------------------------------------------------------------------


def _cifar_release(root, n_per_batch=2, seed=0):
    """The six python batches as the release pickles them (protocol 2, bytes keys): data rows R, G, B planes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = np.random.default_rng(seed)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        data = gen.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        data[:, :1024] = data[:, :1024] // 2 + 50  # not an all-equal planes image: the luma weights matter
        labels = [(k * n_per_batch + i) % 10 for i in range(n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"f.png"] * n_per_batch}, f, protocol=2)
        out[name] = (data, labels)
    return out


def test_lra_image_is_pillow_luma_within_one_grey_level_standardised_by_s4s_constants(tmp_path):
    batches = _cifar_release(tmp_path)
    splits = get_task("lra_image", n_val=2).splits(tmp_path)
    data, labels = batches["test_batch"]
    x, y = splits["test"].tensors
    assert y.tolist() == labels and x.shape == (2, 1024, 1)
    for i in range(2):
        rgb = data[i].reshape(3, 32, 32).transpose(1, 2, 0)  # the planes as an H x W x 3 image
        pil = np.asarray(Image.fromarray(rgb).convert("L")).astype(np.int64)  # torchvision's Grayscale
        stored = x[i, :, 0].reshape(32, 32).long().numpy()   # raster order: step 32 r + c is pixel (r, c)
        assert np.abs(stored - pil).max() <= 1 and (stored == pil).mean() > 0.99
        item = splits["test"][i][0][:, 0].double().numpy()
        want = (stored.reshape(-1) / 255 - 122.6 / 255) / (61.0 / 255)  # ToTensor, Normalize(122.6/255, 61/255)
        np.testing.assert_allclose(item, want, atol=2e-6)


def test_scifar_standardises_each_channel_and_holds_out_s4s_validation_images(tmp_path):
    batches = _cifar_release(tmp_path)
    splits = get_task("scifar", n_val=2, seed=42).splits(tmp_path)
    train_rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    parts = torch.utils.data.random_split(range(10), [8, 2], generator=torch.Generator().manual_seed(42))
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    for split, part in zip(("train", "val"), parts):
        index = sorted(part.indices)
        assert splits[split].tensors[1].tolist() == [train_labels[j] for j in index]
        for k, j in enumerate(index):
            item = splits[split][k][0].double().numpy()  # (1024, 3)
            for c in range(3):
                want = (train_rows[j, c * 1024:(c + 1) * 1024] / 255 - mean[c]) / std[c]
                np.testing.assert_allclose(item[:, c], want, atol=1e-5)


# -- sMNIST / psMNIST ------------------------------------------------------------------------------------------------


def _s4_bitreversal(n: int) -> np.ndarray:
    """state-spaces/s4 ``src/utils/permutations.py``: ``bitreversal_po2`` by repeated hstack, values < n kept."""
    m = int(math.ceil(math.log(n) / math.log(2)))
    perm = np.arange(1 << m).reshape(1 << m, 1)
    for _ in range(m):
        half = perm.shape[0] // 2
        perm = np.hstack((perm[:half], perm[half:]))
    perm = perm.squeeze(0)
    return perm[perm < n]


def _mnist_release(root, train_pixels, test_pixels):
    """Images with one bright pixel each (its position given), labels = their order; idx files as released."""
    from ssmkit.data.idx import write_idx

    folder = root / "mnist"
    out = {}
    for prefix, pixels, start in (("train", train_pixels, 0), ("t10k", test_pixels, 100)):
        images = np.zeros((len(pixels), 28, 28), dtype=np.uint8)
        for i, p in enumerate(pixels):
            images.reshape(len(pixels), -1)[i, p] = 200 + i
        labels = np.arange(start, start + len(pixels), dtype=np.uint8) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = images
    return out


def _bright(dataset) -> dict[int, tuple[int, float]]:
    """label -> (step of the bright pixel, its value) over a split."""
    out = {}
    for i in range(len(dataset)):
        x, y = dataset[i]
        step = int(x[:, 0].argmax())
        out[int(y)] = (step, round(float(x[step, 0]) * 255, 3))  # the pixel value back in grey levels
    return out


def test_smnist_raster_order_over_255_and_psmnist_one_permutation_for_every_split(tmp_path):
    train_pixels, test_pixels = [0, 29, 300, 783, 450, 57], [300, 783, 1]
    _mnist_release(tmp_path, train_pixels, test_pixels)
    s = get_task("smnist", n_val=2).splits(tmp_path)
    seen = {**_bright(s["train"]), **_bright(s["val"])}
    assert seen == {i: (p, 200 + i) for i, p in enumerate(train_pixels)}  # x / 255, no mean subtraction (S4)
    assert _bright(s["test"]) == {i % 10: (p, 200 + i - 100) for i, p in zip(range(100, 103), test_pixels)}
    assert float(s["test"][0][0].sum()) == pytest.approx(200 / 255, abs=1e-6)  # zeros elsewhere: no shift

    perm = _s4_bitreversal(784)
    assert sorted(perm.tolist()) == list(range(784)) and perm[:8].tolist() == [0, 512, 256, 768, 128, 640, 384, 64]
    where = {int(p): j for j, p in enumerate(perm)}  # position j of the permuted sequence holds pixel perm[j]
    b = get_task("psmnist", permute="bitreversal", n_val=2).splits(tmp_path)
    got = {**_bright(b["train"]), **_bright(b["val"])}
    assert {k: v[0] for k, v in got.items()} == {i: where[p] for i, p in enumerate(train_pixels)}
    assert {k: v[0] for k, v in _bright(b["test"]).items()} == {i % 10: where[p] for i, p in
                                                                 zip(range(100, 103), test_pixels)}
    for seed in (0, 7):
        r = get_task("psmnist", permute="random", permutation_seed=seed, n_val=2).splits(tmp_path)
        train = {train_pixels[k]: v[0] for k, v in {**_bright(r["train"]), **_bright(r["val"])}.items()}
        test = {test_pixels[k]: v[0] for k, v in _bright(r["test"]).items()}
        for p in (300, 783):  # in both splits: the same place
            assert train[p] == test[p]
        assert len(set(train.values())) == len(train)
    r0 = get_task("psmnist", permute="random", permutation_seed=0, n_val=2).splits(tmp_path)
    r7 = get_task("psmnist", permute="random", permutation_seed=7, n_val=2).splits(tmp_path)
    assert _bright(r0["test"]) != _bright(r7["test"])  # the seed is the permutation's
    assert get_task("psmnist", permutation_seed=7).info().title == "psMNIST (permutation seed 7)"


# -- Speech Commands -------------------------------------------------------------------------------------------------


def _write_wav(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, samples)


def test_speech_steps_standardised_with_training_clips_only_and_short_clips_padded_at_the_end(tmp_path):
    from ssmkit.data.speech import WORDS10

    base = tmp_path / "speech_commands"
    gen = np.random.default_rng(5)
    clips = {}
    for w, word in enumerate(WORDS10):
        for k in range(3):
            n = 16000 if k else 11000  # one short clip per word: padded with zeros at the end
            samples = gen.integers(-3000, 3000, n) + 100 * w
            if k == 2:
                samples = samples * 5  # the held-out clips are much louder: they must not move the statistics
            _write_wav(base / word / f"c{k}.wav", samples)
            clips[f"{word}/c{k}.wav"] = (np.pad(samples, (0, 16000 - n)), w, "train" if k < 2 else
                                         ("val" if w % 2 else "test"))
    (base / "validation_list.txt").write_text("".join(f"{n}\n" for n, c in clips.items() if c[2] == "val"))
    (base / "testing_list.txt").write_text("".join(f"{n}\n" for n, c in clips.items() if c[2] == "test"))
    train = np.stack([c[0] for c in clips.values() if c[2] == "train"]) / 32768.0
    mu, sigma = train.mean(0), train.std(0, ddof=1)  # per step, over the training clips, n - 1 (torch.std)
    splits = get_task("sc10", split="lists").splits(tmp_path)
    for split in ("train", "val", "test"):
        rows = {tuple(c[0][:50].tolist()): c for c in clips.values() if c[2] == split}
        assert len(splits[split]) == len(rows)
        for i in range(len(splits[split])):
            x, y = splits[split][i]
            raw = (splits[split].tensors[0][i, :, 0]).numpy().astype(np.int64)
            samples, label, _ = rows[tuple(raw[:50].tolist())]
            assert int(y) == label and np.array_equal(raw, samples)  # zero-padded at the end, not the start
            want = (samples / 32768.0 - mu) / (sigma + 1e-5)
            np.testing.assert_allclose(x[:, 0].double().numpy(), want, rtol=2e-5, atol=2e-4)


def test_a_wav_file_cut_short_is_refused_not_read_as_a_shorter_clip(tmp_path):
    from ssmkit.data.speech import WORDS10, read_samples

    base = tmp_path / "speech_commands"
    for word in WORDS10:
        for k in range(12):
            _write_wav(base / word / f"c{k}.wav", np.full(16000, 100 * k, dtype=np.int16))
    (base / "validation_list.txt").write_text("")
    (base / "testing_list.txt").write_text("")
    cut = base / "yes" / "c3.wav"
    cut.write_bytes(cut.read_bytes()[:44 + 2 * 9000])  # an interrupted extraction: 9,000 of 16,000 samples
    with pytest.raises(ValueError, match=r"c3\.wav: the header declares 16000 samples but the file holds 9000"):
        read_samples(cut)  # before: 9,000 samples, no error
    with pytest.raises(ValueError, match=r"cut short"):
        get_task("sc10").splits(tmp_path)  # before: 'yes' lost the clip silently (not full length: dropped)
    assert not list((tmp_path / "generated").glob("sc10-decoded*/*.pt"))  # and nothing was cached
    _write_wav(cut, np.full(16000, 300, dtype=np.int16))
    splits = get_task("sc10").splits(tmp_path)
    assert sum(len(splits[s]) for s in ("train", "val", "test")) == 120


# -- Pathfinder / Path-X release PNGs --------------------------------------------------------------------------------


def _pathfinder_rows(tmp_path, n):
    folder = tmp_path / "lra_release" / "pathfinder32" / "curv_contour_length_14"
    (folder / "metadata").mkdir(parents=True)
    gen = np.random.default_rng(3)
    images = gen.integers(0, 256, (n, 32, 32), dtype=np.uint8)
    labels = gen.integers(0, 2, n)
    rows = [f"imgs/0 sample_{i}.png {i} {labels[i]} 1.8 14 4 2 0.5 1 1" for i in range(n)]
    (folder / "metadata" / "0.npy").write_text("\n".join(rows) + "\n")
    (folder / "imgs" / "0").mkdir(parents=True)
    return folder, images, labels


def test_a_partly_extracted_pathfinder_release_is_refused_and_never_cached(tmp_path):
    folder, images, labels = _pathfinder_rows(tmp_path, 40)
    for i in range(30):  # the last 10 PNGs not extracted yet
        Image.fromarray(images[i]).save(folder / "imgs" / "0" / f"sample_{i}.png")
    with pytest.raises(ValueError, match=r"10 image\(s\) named in metadata/ are missing or cannot be decoded, "
                                         r"e\.g\. imgs/0/sample_30\.png"):
        get_task("lra_pathfinder").splits(tmp_path)  # before: 24 / 3 / 3 images, cached under the same key
    (folder / "imgs" / "0" / "sample_31.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # cut short
    with pytest.raises(ValueError, match=r"10 image\(s\)"):
        get_task("lra_pathfinder").splits(tmp_path)
    for i in range(30, 40):
        Image.fromarray(images[i]).save(folder / "imgs" / "0" / f"sample_{i}.png")
    splits = get_task("lra_pathfinder").splits(tmp_path)  # before: still the 30 decoded first (stale cache)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [32, 4, 4]
    parts = torch.utils.data.random_split(range(40), [32, 4, 4], generator=torch.Generator().manual_seed(42))
    for split, part in zip(("train", "val", "test"), parts):  # S4's PathFinder split of the 40 rows
        x, y = splits[split].tensors
        assert x[..., 0].tolist() == images[list(part.indices)].reshape(-1, 1024).tolist()
        assert y.tolist() == labels[list(part.indices)].tolist()
        item = splits[split][0][0][:, 0].double()
        want = torch.tensor(images[part.indices[0]].reshape(-1) / 255.0 * 2 - 1)  # ToTensor, Normalize(0.5, 0.5)
        assert torch.allclose(item, want, atol=1e-6)


def test_the_releases_empty_png_is_left_out_as_s4_leaves_it_out(tmp_path):
    folder, images, labels = _pathfinder_rows(tmp_path, 11)
    for i in range(11):
        Image.fromarray(images[i]).save(folder / "imgs" / "0" / f"sample_{i}.png")
    (folder / "imgs" / "0" / "sample_4.png").write_bytes(b"")  # as pathfinder32/curv_baseline/imgs/0/sample_172.png
    splits = get_task("lra_pathfinder").splits(tmp_path)
    keep = [i for i in range(11) if i != 4]
    parts = torch.utils.data.random_split(range(10), [8, 1, 1], generator=torch.Generator().manual_seed(42))
    for split, part in zip(("train", "val", "test"), parts):
        assert splits[split].tensors[1].tolist() == [int(labels[keep[j]]) for j in part.indices]


# -- padding, pooling and batches ------------------------------------------------------------------------------------


def _model(pool, pad_id, pair=False):
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    return SequenceModel(d_input=1, d_model=8, n_layers=2, layer="s4d", layer_options={"d_state": 8}, d_output=3,
                         pool=pool, vocab_size=18, pad_id=pad_id, pair=pair, norm="batch").eval()


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_padding_never_changes_a_causal_models_prediction(pool):
    gen = torch.Generator().manual_seed(1)
    tokens = [torch.randint(1, 18, (n,), generator=gen) for n in (5, 13, 20)]

    def padded(length):
        return torch.stack([torch.cat([t, torch.zeros(length - len(t), dtype=torch.long)]) for t in tokens])

    with torch.no_grad():
        model = _model(pool, 0)
        short, long = model(padded(20), return_state=False)[0], model(padded(48), return_state=False)[0]
        alone = torch.cat([model(t[None], return_state=False)[0] for t in tokens])  # no padding at all
        torch.testing.assert_close(short, alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(long, alone, atol=1e-5, rtol=1e-5)
        blind = _model(pool, None)  # the same weights pooling over every position: the padding counts
        assert not torch.allclose(blind(padded(20), return_state=False)[0],
                                  blind(padded(48), return_state=False)[0], atol=1e-3)
        pair = _model(pool, 0, pair=True)
        a, b = padded(24), padded(24).flip(0)
        both = pair(torch.stack([a, b], 1), return_state=False)[0]
        wider = pair(torch.stack([torch.cat([a, torch.zeros_like(a)], 1), torch.cat([b, torch.zeros_like(b)], 1)], 1),
                     return_state=False)[0]
        torch.testing.assert_close(both, wider, atol=1e-5, rtol=1e-5)
        fa, fb = pair.features(a, return_state=False)[0], pair.features(b, return_state=False)[0]
        torch.testing.assert_close(both, pair.head(fa, fb), atol=1e-6, rtol=1e-6)  # document 0 is a, 1 is b


def test_batches_keep_inputs_and_labels_aligned_across_shuffled_epochs_and_ranks():
    from ssmkit.train.batches import StepBatches, eval_batches

    n = 37
    x = torch.arange(n)[:, None, None].float().expand(n, 5, 1) * 10  # each input carries its own index
    y = torch.arange(n)
    seen = []
    for rank in (0, 1):
        stream = iter(StepBatches((x, y), 8, seed=3, rank=rank, world_size=2))
        for _ in range(12):  # > 2 epochs
            bx, by = next(stream)
            assert torch.equal(bx[:, 0, 0], by.float() * 10)
            seen.append(by)
    counts = torch.bincount(torch.cat(seen), minlength=n)
    assert int(counts.min()) >= 4 and int(counts.max()) <= 6  # 192 draws over 37 items, epoch by epoch
    again = iter(StepBatches((x, y), 8, seed=3, rank=0, world_size=2, start_step=5))
    first = iter(StepBatches((x, y), 8, seed=3, rank=0, world_size=2))
    for _ in range(5):
        next(first)
    assert torch.equal(next(again)[1], next(first)[1])  # a step's batch is a function of the step
    scored = []
    for rank in (0, 1):
        for bx, by in eval_batches((x, y), 5, rank, 2):
            assert torch.equal(bx[:, 0, 0], by.float() * 10)
            scored.append(by)
    assert sorted(torch.cat(scored).tolist()) == list(range(n))


# -- caches ----------------------------------------------------------------------------------------------------------


def test_generated_caches_are_keyed_by_every_option_that_changes_their_content(tmp_path):
    generated = [name for name in available_tasks() if isinstance(get_task(name), GeneratedTask)]
    assert {"listops", "pathfinder", "adding", "copying", "mqar"} <= set(generated)
    for name in generated:
        task = get_task(name)
        fields = {f.name for f in dataclasses.fields(task)}
        assert set(task.options()) == fields - {"workers"}, name  # workers does not change the data
    small = dict(n_train=6, n_val=2, n_test=2, min_length=5, max_length=40, workers=1)
    a = get_task("listops", l_max=48, **small)
    b = get_task("listops", l_max=64, **small)
    assert cache_path(a.name, a.options(), tmp_path) != cache_path(b.name, b.options(), tmp_path)
    xa, xb = a.splits(tmp_path)["train"].tensors[0], b.splits(tmp_path)["train"].tensors[0]
    assert xa.shape == (6, 48) and xb.shape == (6, 64) and torch.equal(xb[:, :48], xa)  # not the other's cache
    assert get_task("listops", l_max=48, **{**small, "workers": 2}).present(tmp_path)  # same data, same cache
    assert not get_task("listops", l_max=48, **{**small, "seed": 1}).present(tmp_path)
