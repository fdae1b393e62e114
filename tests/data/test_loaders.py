"""Every file loader on tiny fixture files written here in the exact on-disk format of the real release, and the
data that ships with installed packages (MNIST-1D, scikit-learn digits)."""

import gzip
import os
import pickle
import random
import wave

import numpy as np
import pytest
import torch

from ssmkit.data import DataMissingError, get_task
from ssmkit.data.cifar import read_cifar_batch
from ssmkit.data.idx import IDX_FILES, read_idx, write_idx
from ssmkit.data.lra import encode_bytes
from ssmkit.data.speech import WORDS10

rng = np.random.default_rng(0)


def write_mnist(folder, n_train=20, n_test=6, gz=False):
    images = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / (IDX_FILES[0] + suffix), images[:n_train])
    write_idx(folder / (IDX_FILES[1] + suffix), labels[:n_train])
    write_idx(folder / (IDX_FILES[2] + suffix), images[n_train:])
    write_idx(folder / (IDX_FILES[3] + suffix), labels[n_train:])
    return images, labels


def test_idx_header_is_the_real_format(tmp_path):
    write_idx(tmp_path / "a", np.arange(6, dtype=np.uint8).reshape(1, 2, 3))
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:16] == bytes([0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3])
    assert raw[16:] == bytes(range(6))
    write_idx(tmp_path / "b.gz", np.array([1, -2], dtype=np.int32))
    assert gzip.decompress((tmp_path / "b.gz").read_bytes())[:4] == bytes([0, 0, 0x0C, 1])
    assert read_idx(tmp_path / "b.gz").tolist() == [1, -2]
    (tmp_path / "c").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="idx header says"):
        read_idx(tmp_path / "c")


def test_smnist_and_psmnist(tmp_path):
    folder = tmp_path / "mnist"
    task = get_task("smnist", n_val=4)
    with pytest.raises(DataMissingError, match=r"put train-images-idx3-ubyte, .* in .*mnist .*ssmkit data get mnist"):
        task.splits(tmp_path)
    images, labels = write_mnist(folder)
    assert task.present(tmp_path)
    splits = task.splits(tmp_path)
    assert len(splits["train"]) == 16 and len(splits["val"]) == 4 and len(splits["test"]) == 6
    x, y = splits["test"][2]
    assert x.shape == (784, 1) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.tensor(images[22].reshape(-1) / 255.0, dtype=torch.float32))
    assert int(y) == labels[22]
    seen = sorted(splits["train"].tensors[1].tolist() + splits["val"].tensors[1].tolist())
    assert seen == sorted(labels[:20].tolist())  # the validation split comes out of the training images
    perm_task = get_task("psmnist", n_val=4, permutation_seed=3)
    assert perm_task.info().title == "psMNIST (permutation seed 3)"
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(3))
    xp, _ = perm_task.splits(tmp_path)["test"][2]
    assert torch.equal(xp, x[perm])
    assert not torch.equal(perm, get_task("psmnist", permutation_seed=4).permutation())


def test_fashion_reads_gzip(tmp_path):
    images, labels = write_mnist(tmp_path / "fashion-mnist", gz=True)
    splits = get_task("sfashion", n_val=5).splits(tmp_path)
    assert splits["test"].tensors[1].tolist() == labels[20:].tolist()
    assert torch.equal(splits["test"].tensors[0][:, :, 0], torch.from_numpy(images[20:].reshape(6, 784)))


def cifar_batch(path, n):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    batch = {b"batch_label": b"training batch", b"labels": labels, b"data": data,
             b"filenames": [b"x.png"] * n}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return data, labels


def test_cifar_colour_and_grayscale(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        cifar_batch(folder / f"data_batch_{i}", 3)
    test_data, test_labels = cifar_batch(folder / "test_batch", 4)
    colour = get_task("scifar", n_val=5).splits(tmp_path)
    assert len(colour["train"]) == 10 and len(colour["val"]) == 5
    x, y = colour["test"][1]
    assert x.shape == (1024, 3) and int(y) == test_labels[1]
    planes = test_data[1].reshape(3, 1024).T / 255.0  # the red, green and blue planes, pixel by pixel
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    assert np.allclose(x.numpy(), (planes - mean) / std, atol=1e-5)
    gray = get_task("lra_image", n_val=5).splits(tmp_path)["test"]
    xg, _ = gray[1]
    luma = np.rint(planes * 255 @ np.array([0.299, 0.587, 0.114]))
    assert xg.shape == (1024, 1) and np.allclose(xg[:, 0].numpy(), (luma - 122.6) / 61.0, atol=1e-4)


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        read_cifar_batch(tmp_path / "data_batch_1")


def test_imdb_byte_level(tmp_path):
    base = tmp_path / "aclImdb"
    texts = {}
    for split in ("train", "test"):
        for sub in ("pos", "neg"):
            (base / split / sub).mkdir(parents=True)
            for i in range(3):
                text = f"{split} {sub} review {i} é" + "!" * i
                (base / split / sub / f"{i}_7.txt").write_text(text, encoding="utf-8")
                texts[(split, sub, i)] = text
    splits = get_task("lra_text", l_max=24, n_val=2).splits(tmp_path)
    x, y = splits["test"].tensors
    assert x.shape == (6, 24) and y.tolist() == [0, 0, 0, 1, 1, 1]  # neg first, then pos
    raw = texts[("test", "neg", 0)].encode()
    assert x[0, : len(raw)].tolist() == [b + 1 for b in raw] and bool((x[0, len(raw):] == 0).all())
    assert len(splits["train"]) == 4 and len(splits["val"]) == 2
    assert encode_bytes("abcdef", 3).tolist() == [98, 99, 100]


def test_aan_pairs(tmp_path):
    folder = tmp_path / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    for split in ("train", "eval", "test"):
        rows = [f"{lab}\tdoc{i}\tdoc{i + 1}\tfirst text {i}\tsecond {i}" for i, lab in enumerate(["1.0", "0.0"])]
        rows.append("1\tdoc7\tdoc8\tb'caf\\xc3\\xa9 \\'q\\''\tb\"x\"")  # the release's bytes-literal cells
        (folder / f"new_aan_pairs.{split}.tsv").write_text("\n".join(rows) + "\n")
    task = get_task("lra_retrieval", l_max=16, decode=True)  # the default keeps the characters (test_fidelity)
    x, y = task.splits(tmp_path)["val"].tensors
    info = task.info()
    assert x.shape == (3, 2, 16) and y.tolist() == [1, 0, 1]  # pairs (B, 2, L): the two documents kept apart
    assert info.pair and info.pad_id == 0 and info.length == 16
    assert x[2, 0].tolist() == encode_bytes("café 'q'".encode(), 16).tolist()  # decoded, not b'...' characters
    assert x[2, 1].tolist() == encode_bytes(b"x", 16).tolist()
    assert x[1, 0].tolist() == encode_bytes("first text 1", 16).tolist()
    assert x[1, 1].tolist() == encode_bytes("second 1", 16).tolist()
    assert x[1, 1, len("second 1"):].eq(0).all()  # padded with 0, the pad_id pooling skips


def test_pathfinder_png_folders(tmp_path):
    from PIL import Image

    folder = tmp_path / "lra_release" / "pathfinder32" / "curv_contour_length_14"
    images, labels = [], []
    for batch in range(2):
        (folder / "imgs" / str(batch)).mkdir(parents=True)
        rows = []
        for i in range(10):
            img = rng.integers(0, 256, (32, 32), dtype=np.uint8)
            Image.fromarray(img).save(folder / "imgs" / str(batch) / f"sample_{i}.png")
            label = int(rng.integers(0, 2))
            rows.append(f"imgs/{batch} sample_{i}.png {i} {label} 1.8 14 4 2 0.5 1 1")
            images.append(img)
            labels.append(label)
        (folder / "metadata").mkdir(exist_ok=True)
        (folder / "metadata" / f"{batch}.npy").write_text("\n".join(rows) + "\n")
    (folder / "imgs" / "1" / "sample_9.png").write_bytes(b"")  # the release's known empty file is skipped
    images.pop(), labels.pop()
    task = get_task("lra_pathfinder")
    splits = task.splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [17, 1, 1]
    assert task.present(tmp_path) and task.info().length == 1024
    full = torch.utils.data.ConcatDataset([splits[s] for s in ("train", "val", "test")])
    got = {tuple(((full[i][0][:, 0] + 1) * 255 / 2).round().int().tolist()): int(full[i][1]) for i in range(len(full))}
    want = {tuple(img.reshape(-1).tolist()): lab for img, lab in zip(images, labels)}
    assert got.keys() == want.keys() and got == want
    x0, _ = splits["test"][0]
    assert x0.shape == (1024, 1) and -1 <= float(x0.min()) and float(x0.max()) <= 1
    assert list((tmp_path / "generated").glob("lra_pathfinder-decoded/*.pt"))  # decoded once, cached
    again = task.splits(tmp_path)["test"].tensors[0]
    assert torch.equal(again, splits["test"].tensors[0])
    assert not get_task("lra_pathx").present(tmp_path)


def write_wav(path, samples):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def test_speech_commands_sc10(tmp_path):
    base = tmp_path / "speech_commands"
    clips = {}
    for word in WORDS10 + ("cat", "_background_noise_"):
        (base / word).mkdir(parents=True)
        for i in range(3):
            samples = rng.integers(-32768, 32767, int(rng.integers(8000, 16000)))
            write_wav(base / word / f"ab{i}_nohash_0.wav", samples)
            clips[f"{word}/ab{i}_nohash_0.wav"] = samples
    (base / "validation_list.txt").write_text("yes/ab0_nohash_0.wav\ngo/ab1_nohash_0.wav\ncat/ab0_nohash_0.wav\n")
    (base / "testing_list.txt").write_text("no/ab2_nohash_0.wav\n")
    sc10 = get_task("sc10", normalize="none", split="lists")  # raw / 32768 (the standardisation: test_fidelity)
    assert sc10.present(tmp_path) and not get_task("sc35").present(tmp_path)  # SC35 needs all 35 word folders
    splits = sc10.splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [27, 2, 1]
    x, y = splits["test"][0]
    want = clips["no/ab2_nohash_0.wav"]
    assert x.shape == (16000, 1) and int(y) == WORDS10.index("no")
    assert torch.allclose(x[: len(want), 0], torch.tensor(want / 32768.0, dtype=torch.float32))
    assert bool((x[len(want):] == 0).all())  # zero-padded at the end
    assert sorted(splits["val"].tensors[1].tolist()) == [WORDS10.index("yes"), WORDS10.index("go")]
    with pytest.raises(DataMissingError, match=r"sc35: data not found: put backward, bed"):
        get_task("sc35").splits(tmp_path)


def test_mnist1d_regenerates_without_side_effects(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.chdir(tmp_path)
    random.seed(123)
    np.random.seed(123)
    before = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    splits = get_task("mnist1d", n_val=400).splits()
    assert (random.random(), np.random.rand()) == before  # the global generators are untouched
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory
    x, y = splits["train"].tensors
    assert x.shape == (3600, 40, 1) and len(splits["val"]) == 400 and splits["test"].tensors[0].shape == (1000, 40, 1)
    counts = np.bincount(torch.cat([y, splits["val"].tensors[1]]).numpy(), minlength=10)
    assert counts.sum() == 4000 and counts.min() >= 394 and counts.max() <= 411  # the published set's class counts
    test_counts = np.bincount(splits["test"].tensors[1].numpy(), minlength=10)
    assert test_counts.min() >= 89 and test_counts.max() <= 106
    all_x = torch.cat([x, splits["val"].tensors[0], splits["test"].tensors[0]])
    assert abs(float(all_x.mean())) < 1e-5 and abs(float(all_x.std()) - 1) < 1e-3  # standardised as a whole


def test_digits():
    pytest.importorskip("sklearn")
    splits = get_task("digits").splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1257, 270, 270]
    x, y = splits["train"].tensors
    assert x.shape == (1257, 64, 1) and float(x.max()) == 1.0 and float(x.min()) == 0.0
    assert set(y.tolist()) == set(range(10))


def test_path_x_png_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "lra_release" / "pathfinder128" / "curv_contour_length_14"
    (folder / "imgs" / "0").mkdir(parents=True)
    (folder / "metadata").mkdir()
    rows, images = [], []
    for i in range(10):
        img = rng.integers(0, 256, (128, 128), dtype=np.uint8)
        Image.fromarray(img).save(folder / "imgs" / "0" / f"sample_{i}.png")
        rows.append(f"imgs/0 sample_{i}.png {i} {i % 2} 1.8 14 4 5 1.5 2 1")
        images.append(img)
    (folder / "metadata" / "0.npy").write_text("\n".join(rows) + "\n")
    splits = get_task("lra_pathx").splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    x, y = splits["test"][0]
    stored = splits["test"].tensors[0][0, :, 0].numpy()
    k = next(k for k, img in enumerate(images) if np.array_equal(img.reshape(-1), stored))  # which image it is
    assert x.shape == (128 * 128, 1) and int(y) == k % 2
    assert torch.allclose(x[:, 0], torch.tensor(stored.astype(np.float64) * 2 / 255 - 1, dtype=torch.float32), atol=1e-6)


def test_speech_commands_sc35(tmp_path):
    from ssmkit.data.speech import WORDS35

    base = tmp_path / "speech_commands"
    for word in WORDS35:
        (base / word).mkdir(parents=True)
        for i in range(2):
            write_wav(base / word / f"c{i}_nohash_0.wav", rng.integers(-1000, 1000, 400))
    (base / "validation_list.txt").write_text("zero/c0_nohash_0.wav\n")
    (base / "testing_list.txt").write_text("backward/c1_nohash_0.wav\nwow/c1_nohash_0.wav\n")
    task = get_task("sc35")
    assert task.info().n_classes == 35
    splits = task.splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [67, 1, 2]
    assert sorted(splits["test"].tensors[1].tolist()) == [WORDS35.index("backward"), WORDS35.index("wow")]
    assert splits["val"].tensors[1].tolist() == [WORDS35.index("zero")]
