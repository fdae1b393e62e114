"""Benchmark fidelity (probe 5): the data pipelines give what the published numbers were measured on.

Each test states the source convention it checks (S4 = state-spaces/s4 ``src/dataloaders``, S5 =
lindermanlab/S5 ``s5/dataloaders``), on fixtures written in the releases' file layouts.
"""

import hashlib

import numpy as np
import pytest
import torch

from ssmkit.data import get_task
from ssmkit.data.listops import generate_listops, write_listops_tsv
from ssmkit.train.experiment import Experiment

rng = np.random.default_rng(5)


def _listops_release(tmp_path):
    rows = generate_listops(6, seed=2, min_length=5, max_length=40, max_depth=5, draws_per_chunk=200)
    folder = tmp_path / "lra_release" / "listops-1000"
    for split in ("train", "val", "test"):
        write_listops_tsv(folder / f"basic_{split}.tsv", rows)
    return get_task("lra_listops", l_max=64).splits(tmp_path)["test"].tensors[0]


def _imdb_release(tmp_path):
    for split in ("train", "test"):
        for sub in ("pos", "neg"):
            (tmp_path / "aclImdb" / split / sub).mkdir(parents=True)
            for i in range(3):
                text = "a review " + "x" * int(rng.integers(1, 30))
                (tmp_path / "aclImdb" / split / sub / f"{i}_1.txt").write_text(text)
    return get_task("lra_text", l_max=64, n_val=2).splits(tmp_path)["test"].tensors[0]


@pytest.mark.parametrize("name, read", [
    ("lra_listops", _listops_release),
    ("lra_text", _imdb_release),
])
def test_padded_token_tasks_declare_their_padding(tmp_path, name, read):
    """S4 pools ListOps and IMDB over each sequence's length (pipelines listops / imdb: ``use_lengths: true``,
    experiment ``decoder.mode: pool``) and S5 with ``masked_meanpool`` (``padded`` for imdb, listops, aan): the
    padding must not enter the mean. The task declares the id its loader pads with, no content token has that id,
    and the model built from a shipped config gets it."""
    x = read(tmp_path)
    info = get_task(name).info()
    assert info.pad_id == 0
    for row in x:
        content = int((row != info.pad_id).sum())
        assert content < len(row) and bool((row[:content] != info.pad_id).all())  # right-padded, pad id only there
    config = Experiment(task=name, model="s4d", d_model=8, n_layers=1).model_config(info)
    assert config.pad_id == 0 and config.pool == "mean"


def test_generated_listops_declares_its_padding():
    assert get_task("listops").info().pad_id == 0


def _digest(row: torch.Tensor) -> str:
    return hashlib.sha256(row.numpy().tobytes()).hexdigest()


def _write_wav(path, samples):
    import wave

    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def test_speech_commands_standardised_per_step_with_training_statistics(tmp_path):
    """S4's SC loader (used by S4, S5 and Liquid-S4 for their published SC numbers) pads each clip to 16,000
    samples, divides by 2^15, then standardises every time step with the training clips' mean and std (torch's
    n − 1 std) plus 1e-5: ``normalize_all_data`` loops over the last axis, the 16,000 positions. Reference: float64
    numpy over the fixture's training clips."""
    from ssmkit.data.speech import WORDS10

    base = tmp_path / "speech_commands"
    clips = {}
    for word in WORDS10:
        (base / word).mkdir(parents=True)
        for i in range(3):
            samples = np.zeros(16000, dtype=np.int64)
            n = int(rng.integers(12000, 16001))
            samples[:n] = rng.integers(-3000, 3000, n) + 400  # an offset, so the mean matters too
            _write_wav(base / word / f"s{i}_nohash_0.wav", samples[:n])
            clips[f"{word}/s{i}_nohash_0.wav"] = samples
    held = {"yes/s0_nohash_0.wav": "val", "go/s1_nohash_0.wav": "val", "no/s2_nohash_0.wav": "test"}
    (base / "validation_list.txt").write_text("yes/s0_nohash_0.wav\ngo/s1_nohash_0.wav\n")
    (base / "testing_list.txt").write_text("no/s2_nohash_0.wav\n")
    train = np.stack([c for k, c in clips.items() if k not in held]) / 32768.0  # (27, 16000) float64
    mean, std = train.mean(0), train.std(0, ddof=1)
    splits = get_task("sc10", split="lists").splits(tmp_path)
    x, y = splits["test"][0]
    want = (clips["no/s2_nohash_0.wav"] / 32768.0 - mean) / (std + 1e-5)
    assert x.shape == (16000, 1) and int(y) == WORDS10.index("no")
    assert np.allclose(x[:, 0].numpy(), want, rtol=1e-5, atol=1e-4)
    x_train = torch.stack([splits["train"][i][0] for i in range(len(splits["train"]))])[..., 0].double()
    assert np.allclose(x_train.mean(0).numpy(), 0.0, atol=1e-4)  # the training clips are standardised per step
    assert np.allclose(x_train.std(0).numpy(), std / (std + 1e-5), atol=1e-4)
    raw = get_task("sc10", normalize="none", split="lists").splits(tmp_path)["test"][0][0]
    assert torch.allclose(raw[:, 0], torch.tensor(clips["no/s2_nohash_0.wav"] / 32768.0, dtype=torch.float32))
    with pytest.raises(ValueError, match="normalize must be one of"):
        get_task("sc35", normalize="global")


def test_sc10_follows_the_ckconv_protocol_of_the_published_numbers(tmp_path):
    """S4's SC10 loader (``_process_data``, CKConv's protocol; S4 v1 98.32, DSS 97.7): only clips of exactly
    16,000 samples, a stratified 70 / 15 / 15 split (sklearn ``train_test_split`` twice), statistics of the
    training part. Checked: the short clips are gone, the class counts per split, no clip in two splits (by hash),
    and the standardisation uses the training part only."""
    from ssmkit.data.speech import WORDS10

    base = tmp_path / "speech_commands"
    full = {}
    for c, word in enumerate(WORDS10):
        (base / word).mkdir(parents=True)
        for i in range(10 + c):
            n = 16000 if i % 5 else 9000  # every fifth clip is short: dropped
            samples = rng.integers(-2000, 2000, n)
            _write_wav(base / word / f"k{i}_nohash_0.wav", samples)
            if n == 16000:
                full[_digest(torch.tensor(samples, dtype=torch.int16))] = c
    (base / "validation_list.txt").write_text("yes/k1_nohash_0.wav\n")
    (base / "testing_list.txt").write_text("no/k2_nohash_0.wav\n")
    task = get_task("sc10")
    assert "random 70/15/15" in task.info().title
    raw = task.__class__(normalize="none").splits(tmp_path)
    seen = {}
    for name, data in raw.items():
        x, y = data.tensors
        for row, label in zip(x[..., 0], y.tolist()):
            key = _digest(row)
            assert key not in seen, "a clip in two splits"
            assert full[key] == label
            seen[key] = name
    assert set(seen) == set(full)  # every full-length clip, no short one
    for c in range(10):
        n = sum(1 for k, label in full.items() if label == c)
        counts = [sum(1 for k, s in seen.items() if s == split and full[k] == c) for split in ("train", "val", "test")]
        n_train = int(0.7 * n)
        assert counts == [n_train, (n - n_train) // 2, n - n_train - (n - n_train) // 2]
    train = raw["train"].tensors[0][..., 0].double() / 32768
    mean, std = train.mean(0), train.std(0)
    x, _ = task.splits(tmp_path)["test"][0]
    want = (raw["test"].tensors[0][0, :, 0].double() / 32768 - mean) / (std + 1e-5)
    assert torch.allclose(x[:, 0].double(), want, rtol=1e-5, atol=1e-4)
    assert get_task("sc10", seed=1).splits(tmp_path)["test"].tensors[0].shape == raw["test"].tensors[0].shape
    with pytest.raises(ValueError, match="split must be one of"):
        get_task("sc10", split="official")


def _write_mnist(folder, n_train=12, n_test=5):
    from ssmkit.data.idx import IDX_FILES, write_idx

    images = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.uint8)
    for name, array in zip(IDX_FILES, (images[:n_train], labels[:n_train], images[n_train:], labels[n_train:])):
        write_idx(folder / name, array)
    return images, labels


def test_psmnist_bit_reversal_is_s4s_permutation_for_every_split(tmp_path):
    """S4's MNIST loader permutes with ``bitreversal_permutation(784)`` (its dataset default ``permute: True``,
    from the first release to HEAD): j -> the 10-bit reversal of j over 0 .. 1023, keeping values < 784 in that
    order. Reference: Python's string reversal of the binary digits. The same permutation for train, val and test,
    and the shipped psMNIST config asks for it."""
    import yaml

    from ssmkit.train.commands import resolve_config

    want = [r for r in (int(format(j, "010b")[::-1], 2) for j in range(1024)) if r < 784]
    task = get_task("psmnist", n_val=3, permute="bitreversal")
    assert task.permutation().tolist() == want and sorted(want) == list(range(784))
    assert task.info().title == "psMNIST (bit-reversal permutation, S4)"
    images, _ = _write_mnist(tmp_path / "mnist")
    splits = task.splits(tmp_path)
    raster = images.reshape(len(images), 784)
    test_x = splits["test"].tensors[0][..., 0].numpy()
    assert (test_x == raster[12:][:, want]).all()
    train_rows = {r.tobytes() for r in raster[:12][:, want]}
    for name in ("train", "val"):
        assert all(r.tobytes() in train_rows for r in splits[name].tensors[0][..., 0].numpy())
    config = yaml.safe_load(open(resolve_config("sequential/psmnist-s4")))
    assert config["task"] == "psmnist" and config["task_options"] == {"permute": "bitreversal"}
    with pytest.raises(ValueError, match="permute must be one of"):
        get_task("psmnist", permute="bit-reversal")


def test_validation_split_is_s4s_random_split(tmp_path):
    """S4 carves validation out of MNIST and CIFAR-10 with ``random_split(train, (train_len, val_len),
    generator=torch.Generator().manual_seed(42))`` (``split_train_val``, val_split 0.1). Reference: torch's
    ``random_split`` itself, at the real sizes and on a MNIST fixture (by image hash, no image in two splits)."""
    from ssmkit.data.sequences import split_off

    for n, n_val in ((60_000, 6_000), (50_000, 5_000), (17, 5)):
        train_s4, val_s4 = torch.utils.data.random_split(range(n), (n - n_val, n_val),
                                                         generator=torch.Generator().manual_seed(42))
        train, val = split_off(n, n_val, 42)
        assert train.tolist() == sorted(train_s4.indices) and val.tolist() == sorted(val_s4.indices)
    images, _ = _write_mnist(tmp_path / "mnist", n_train=17)
    splits = get_task("smnist", n_val=5).splits(tmp_path)
    _, val_s4 = torch.utils.data.random_split(range(17), (12, 5), generator=torch.Generator().manual_seed(42))
    want = {images[i].tobytes() for i in val_s4.indices}
    got = [r.tobytes() for r in splits["val"].tensors[0][..., 0].numpy()]
    assert set(got) == want
    train = {r.tobytes() for r in splits["train"].tensors[0][..., 0].numpy()}
    test = {r.tobytes() for r in splits["test"].tensors[0][..., 0].numpy()}
    assert not train & want and not train & test and not want & test and len(train) == 12


def test_aan_cells_are_read_as_the_lra_pipeline_reads_them(tmp_path):
    """LRA's matching pipeline feeds the TSV cell string to ``ByteTextEncoder``, and S4 / S5 tokenise the CSV
    cell with ``list(text)``: a cell written as a bytes literal is read as its characters, ``b'`` and escapes
    included. The default does the same; ``decode=True`` is the opt-in departure."""
    folder = tmp_path / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    cell = "b'caf\\xc3\\xa9 \\n'"
    for split in ("train", "eval", "test"):
        (folder / f"new_aan_pairs.{split}.tsv").write_text(f"1\tdoc1\tdoc2\t{cell}\tplain text\n")
    x, y = get_task("lra_retrieval", l_max=32).splits(tmp_path)["test"].tensors
    assert x[0, 0, :len(cell)].tolist() == [b + 1 for b in cell.encode("ascii")] and int(x[0, 0, len(cell)]) == 0
    assert x[0, 1, :10].tolist() == [b + 1 for b in b"plain text"] and int(y[0]) == 1
    decoded = get_task("lra_retrieval", l_max=32, decode=True).splits(tmp_path)["test"].tensors[0]
    want = "café \n".encode()
    assert decoded[0, 0, :len(want)].tolist() == [b + 1 for b in want]


@pytest.mark.parametrize("name, options", [
    ("listops", dict(n_train=300, n_val=60, n_test=60, min_length=3, max_length=12, l_max=16, max_depth=4,
                     workers=1)),
    ("mqar", dict(length=64, num_kv_pairs=4, vocab_size=128, n_train=400, n_val=100, n_test=100)),
    ("copying", dict(delay=5, n_tokens=10, vocab_size=10, n_train=400, n_val=100, n_test=100)),
])
def test_generated_splits_share_no_example(tmp_path, name, options):
    """No example of one split is in another (SHA-256 of each input row). ListOps de-duplicates over all splits
    before splitting, as LRA's generator (a set of trees, then the split) does, even at sizes where repeats are
    common; the others draw each split from its own seed, so a repeat is a chance event at these sizes."""
    splits = get_task(name, **options).splits(tmp_path)
    seen = {}
    for split in ("train", "val", "test"):
        x = splits[split].tensors[0]
        assert len(x) == options[f"n_{split}"]
        for row in x:
            key = _digest(row)
            assert seen.setdefault(key, split) == split, f"an example of {split} is also in {seen[key]}"
