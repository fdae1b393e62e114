"""The synthetic tasks at their edges, against their definitions (the lead's mutation round over data/adding,
induction, mqar, copying, sequences and task; docs/design.md): the smallest sizes each generator accepts and the
first it refuses, every slot a marker, trigger, key or value may take reached over many draws, the defaults of the
papers and of the README's task table, and the task objects frozen (their fields are the cache key)."""

import dataclasses

import numpy as np
import pytest
import torch

from ssmkit.data import (
    IGNORE_INDEX, adding_problem, copying_data, get_task, induction_heads_data, mqar_data, selective_copying_data,
)
from ssmkit.data.mqar import POWER_A
from ssmkit.data.sequences import ScaledSequences, split_off
from ssmkit.data.task import GeneratedTask, check_option_types, compact_ids, split_generator, tensor_splits


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _counts(values, size):
    """How often each of 0 .. size - 1 occurs in ``values`` (a 1-D integer tensor)."""
    return np.bincount(values.numpy(), minlength=size)


def _uniform_enough(counts):
    """Every slot drawn, none more than 5 standard errors off the uniform frequency."""
    n, k = counts.sum(), len(counts)
    p = 1.0 / k
    se = np.sqrt(p * (1 - p) / n)
    return bool((counts > 0).all()) and float(np.abs(counts / n - p).max()) < 5 * se


# --- the adding problem (Le et al. 2015, arXiv 1504.00941 §4.1) -------------------------------------------------

def test_adding_markers_cover_each_half_uniformly():
    """One marker uniform over [0, L/2), one over [L/2, L): every position drawn, at its uniform rate."""
    L = 9  # odd: the halves are [0, 4) and [4, 9)
    x, y = adding_problem(20_000, L, generator=gen(1), dtype=torch.float64)
    where = x[..., 1].nonzero()  # (2B, 2) rows and positions, row-major
    first, second = where[0::2, 1], where[1::2, 1]
    assert bool((first < 4).all()) and bool((second >= 4).all())
    assert _uniform_enough(_counts(first, 4)) and _uniform_enough(_counts(second - 4, 5))
    ref = x[torch.arange(len(x)), first, 0] + x[torch.arange(len(x)), second, 0]
    torch.testing.assert_close(y[:, 0], ref, rtol=0, atol=0)


def test_adding_smallest_sizes():
    """n = 1 and L = 2 are valid (both markers set, one per position); n = 0 and L = 1 are refused."""
    x, y = adding_problem(1, 2, generator=gen(2), dtype=torch.float64)
    assert x.shape == (1, 2, 2) and x.dtype == torch.float64
    assert x[0, :, 1].tolist() == [1.0, 1.0] and y.item() == pytest.approx(x[0, :, 0].sum().item(), abs=0)
    for n, length in [(0, 5), (3, 1)]:
        with pytest.raises(ValueError, match=f"need n >= 1 and length >= 2; got n={n}, length={length}"):
            adding_problem(n, length)


def test_adding_task_defaults_info_and_checks(tmp_path):
    """The README's defaults (L = 200, 10,000 / 1,000 / 1,000, seed 0); info as documented; sizes checked."""
    task = get_task("adding")
    assert dataclasses.asdict(task) == {"length": 200, "n_train": 10_000, "n_val": 1_000, "n_test": 1_000, "seed": 0}
    info = get_task("adding", length=7).info()
    assert (info.name, info.kind, info.target, info.length, info.d_input, info.vocab_size, info.n_classes) == (
        "adding", "generated", "regress", 7, 2, None, 1)
    assert "Le et al. 2015" in info.source and info.title == "Adding problem (L=7)"
    small = get_task("adding", length=2, n_train=3, n_val=2, n_test=1, seed=4)
    splits = small.splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 2, 1]
    with pytest.raises(ValueError, match="length must be >= 2; got 1"):
        get_task("adding", length=1)


# --- induction heads (Olsson et al. 2022; Gu & Dao 2023, arXiv 2312.00752 §3.1) ----------------------------------

def test_induction_first_trigger_covers_every_position():
    """The first trigger is uniform over [0, L − 3] (so the answer at p + 1 <= L − 2 is never the last trigger)."""
    L, V = 8, 6
    x, y = induction_heads_data(30_000, L, V, generator=gen(3))
    p = (x[:, :-1] == V - 1).float().argmax(1)  # the body holds the trigger once
    assert bool(((x[:, :-1] == V - 1).sum(1) == 1).all())
    assert _uniform_enough(_counts(p, L - 2))
    assert torch.equal(y[:, -1], x[torch.arange(len(x)), p + 1])


def test_induction_smallest_sizes_and_refusals():
    """L = 3 and V = 3 are the smallest valid sizes (trigger, answer, trigger); smaller ones and n = 0 are refused."""
    x, y = induction_heads_data(5, 3, 3, generator=gen(4))
    assert bool((x[:, 0] == 2).all()) and bool((x[:, 2] == 2).all()) and bool((x[:, 1] < 2).all())
    assert torch.equal(y[:, 2], x[:, 1]) and bool((y[:, :2] == IGNORE_INDEX).all())
    with pytest.raises(ValueError, match="length must be >= 3 .*; got 2"):
        induction_heads_data(5, 2, 3)
    with pytest.raises(ValueError, match="vocab_size must be >= 3 .*; got 2"):
        induction_heads_data(5, 3, 2)
    with pytest.raises(ValueError, match="n must be an int >= 1; got 0"):
        induction_heads_data(0, 5, 4)


def test_induction_task_defaults_and_checks():
    """Mamba's training setting (L = 256, V = 16) and the README's test lengths; every length and size checked."""
    task = get_task("induction_heads")
    assert dataclasses.asdict(task) == {"train_length": 256, "test_lengths": (512, 1024, 4096), "vocab_size": 16,
                                        "n_train": 10_000, "n_val": 1_000, "n_test": 500, "seed": 0}
    listed = get_task("induction_heads", test_lengths=[32, 64])
    assert listed.test_lengths == (32, 64) and hash(listed) == hash(get_task("induction_heads", test_lengths=(32, 64)))
    with pytest.raises(ValueError, match="test_lengths must name at least one length"):
        get_task("induction_heads", test_lengths=())
    with pytest.raises(ValueError, match="length must be >= 3 .*; got 2"):
        get_task("induction_heads", test_lengths=(16, 2))
    with pytest.raises(ValueError, match="vocab_size must be >= 3 .*; got 2"):
        get_task("induction_heads", vocab_size=2)


# --- MQAR (Arora et al. 2023, arXiv 2312.04927 §3) ----------------------------------------------------------------

def test_mqar_keys_and_values_cover_their_ranges():
    """Keys are drawn from all of [1, V/2) and values from all of [V/2, V), each uniformly."""
    V, D, L = 13, 2, 12  # V/2 = 6: keys 1 .. 5, values 6 .. 12
    x, _ = mqar_data(20_000, L, D, V, generator=gen(5))
    keys, values = x[:, 0:2 * D:2].flatten(), x[:, 1:2 * D:2].flatten()
    assert _uniform_enough(_counts(keys, 6)[1:]) and _counts(keys, 6)[0] == 0
    assert _uniform_enough(_counts(values, V)[6:]) and _counts(values, V)[:6].sum() == 0


def test_mqar_power_a_is_zoologys():
    """The gap exponent a = 0.01 of the Zoology paper is the default: the same draws as passing it explicitly."""
    assert POWER_A == 0.01
    default = mqar_data(2_000, 64, 1, 100, generator=gen(6))
    explicit = mqar_data(2_000, 64, 1, 100, power_a=0.01, generator=gen(6))
    other = mqar_data(2_000, 64, 1, 100, power_a=0.02, generator=gen(6))  # 13 of 2,000 gaps differ
    assert all(torch.equal(a, b) for a, b in zip(default, explicit))
    assert not torch.equal(default[1], other[1])


def test_mqar_smallest_sizes_and_refusals():
    """L = 4D (one gap slot per pair), and V = L + 1 with one key slot for D = 1, are valid; one less is refused."""
    x, y = mqar_data(3, 8, 2, 100, generator=gen(7))  # S = 2 slots, 2 queries: both slots used
    for row, target in zip(x, y):
        pairs = dict(zip(row[0:4:2].tolist(), row[1:4:2].tolist()))
        assert sorted(row[4::2].tolist()) == sorted(pairs)  # each key queried once
        assert target[4::2].tolist() == [pairs[k] for k in row[4::2].tolist()]
    x, y = mqar_data(2, 4, 1, 5, generator=gen(8))  # V/2 = 2: the only key is 1, values 2 .. 4
    assert bool((x[:, 0] == 1).all()) and bool((x[:, 2] == 1).all()) and torch.equal(y[:, 2], x[:, 1])
    with pytest.raises(ValueError, match="length must be even and >= 4 \\* num_kv_pairs = 8; got 6"):
        mqar_data(2, 6, 2, 100)
    with pytest.raises(ValueError, match="vocab_size must be > length = 4; got 4"):
        mqar_data(2, 4, 1, 4)
    for kwargs, name in [({"n": 0}, "n"), ({"num_kv_pairs": 0}, "num_kv_pairs")]:
        call = {"n": 2, "length": 8, "num_kv_pairs": 1, "vocab_size": 100, **kwargs}
        with pytest.raises(ValueError, match=f"{name} must be an int >= 1; got 0"):
            mqar_data(**call)


def test_mqar_task_defaults_and_checks():
    """The Zoology setting (L = 256, D = 16, V = 8192, 100,000 train / 3,000 test); the sizes checked when built."""
    task = get_task("mqar")
    assert dataclasses.asdict(task) == {"length": 256, "num_kv_pairs": 16, "vocab_size": 8192, "n_train": 100_000,
                                        "n_val": 3_000, "n_test": 3_000, "seed": 0}
    with pytest.raises(ValueError, match="length must be even"):
        get_task("mqar", length=62, num_kv_pairs=16)


# --- copying (Arjovsky et al. 2016, arXiv 1511.06464 §4.1, S4's layout) and selective copying (arXiv 2312.00752) ---

def test_copying_smallest_sizes_and_refusals():
    """delay = 0 puts the markers right after the data; V = 3 leaves one data symbol; bad sizes are refused by name."""
    x, y = copying_data(4, 0, 3, 3, generator=gen(9))
    assert x.tolist() == [[1, 1, 1, 2, 2, 2]] * 4 and y.tolist() == [[IGNORE_INDEX] * 3 + [1, 1, 1]] * 4
    x, _ = copying_data(2, 5, 1, 4, generator=gen(9))  # M = 1
    assert x.shape == (2, 7) and bool((x[:, 1:6] == 0).all()) and bool((x[:, 6] == 3).all())
    for call, match in [((0, 2, 2, 5), "n must be an int >= 1; got 0"), ((2, 2, 0, 5), "n_tokens must be an int >= 1"),
                        ((2, -1, 2, 5), "delay must be >= 0; got -1"), ((2, 2, 2, 2), "vocab_size must be >= 3")]:
        with pytest.raises(ValueError, match=match):
            copying_data(*call)


def test_selective_copying_positions_and_tokens_are_uniform():
    """The M data positions are a uniform M-subset of the L − M slots (each slot held with probability M/(L − M)),
    and the tokens uniform over 1 .. A − 2."""
    n, L, M, A = 20_000, 11, 3, 6
    x, y = selective_copying_data(n, L, M, A, generator=gen(10))
    held = (x[:, : L - M] > 0).double().mean(0).numpy()  # (L - M,)
    se = np.sqrt(M / (L - M) * (1 - M / (L - M)) / n)
    assert np.abs(held - M / (L - M)).max() < 5 * se
    assert _uniform_enough(_counts(y[:, L - M:].flatten(), A - 1)[1:]) and bool((y[:, L - M:] > 0).all())


def test_selective_copying_smallest_sizes_and_refusals():
    """L = 3M and V = 3 are valid, M = 1 too; n, M and V are refused by their own names."""
    x, y = selective_copying_data(3, 6, 2, 3, generator=gen(11))
    assert bool((x[:, 4:] == 2).all()) and bool(((x[:, :4] > 0).sum(1) == 2).all()) and bool((y[:, 4:] == 1).all())
    x, y = selective_copying_data(3, 3, 1, 5, generator=gen(11))
    assert bool((x[:, 2] == 4).all()) and torch.equal(y[:, 2], x[:, :2].sum(1))
    for call, match in [((0, 9, 2, 5), "n must be an int >= 1; got 0"), ((2, 9, 0, 5), "n_tokens must be an int >= 1"),
                        ((2, 9, 2, 2), "vocab_size must be >= 3"), ((2, 5, 2, 5), "length must be >= 3 \\* n_tokens")]:
        with pytest.raises(ValueError, match=match):
            selective_copying_data(*call)


def test_copying_tasks_defaults_checks_and_splits(tmp_path):
    """S4's copying defaults (delay 100, M = 10, A = 10) and our Mamba setting for selective copying (L = 4096,
    M = 16, A = 16), as the README's task table gives them; the sizes checked when built; the splits drawn."""
    sizes = {"n_train": 10_000, "n_val": 1_000, "n_test": 1_000, "seed": 0}
    assert dataclasses.asdict(get_task("copying")) == {"delay": 100, "n_tokens": 10, "vocab_size": 10, **sizes}
    assert dataclasses.asdict(get_task("selective_copying")) == {"length": 4096, "n_tokens": 16, "vocab_size": 16,
                                                                 **sizes}
    for name in ("copying", "selective_copying"):
        with pytest.raises(ValueError, match="vocab_size must be >= 3"):
            get_task(name, vocab_size=2)
    with pytest.raises(ValueError, match="n_tokens must be an int >= 1; got 0"):
        get_task("copying", n_tokens=0)
    with pytest.raises(ValueError, match="delay must be >= 0"):
        get_task("copying", delay=-1)
    with pytest.raises(ValueError, match="length must be >= 3 \\* n_tokens = 48"):
        get_task("selective_copying", length=47)
    task = get_task("selective_copying", length=12, n_tokens=2, vocab_size=5, n_train=3, n_val=2, n_test=4, seed=5)
    splits = task.splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 2, 4]
    for i, split in enumerate(("train", "val", "test")):
        ref = selective_copying_data(len(splits[split]), 12, 2, 5, generator=split_generator(5, i))
        assert all(torch.equal(a, b) for a, b in zip(splits[split].tensors, ref))


@pytest.mark.parametrize("name", ["adding", "induction_heads", "mqar", "copying", "selective_copying"])
def test_generated_task_split_sizes_are_checked_and_the_task_is_frozen(name):
    """Each split size is refused by its name when it is not >= 1; the task's fields (its cache key) cannot change."""
    for option in ("n_train", "n_val", "n_test"):
        with pytest.raises(ValueError, match=f"{option} must be an int >= 1; got 0"):
            get_task(name, **{option: 0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task(name).seed = 1


# --- the compact sequence store and the seeded validation split (data/sequences.py) -----------------------------

def test_scaled_sequences_items_and_refusals():
    """Each item is x · scale + shift in float32 with a per-channel or per-step scale; bad shapes are refused."""
    x = torch.randint(0, 256, (5, 4, 3), generator=gen(12), dtype=torch.int16)
    y = torch.arange(5, dtype=torch.int32)
    scale, shift = torch.rand(4, 3, generator=gen(13)), torch.rand(3, generator=gen(14))
    data = ScaledSequences(x, y, scale, shift)
    for i in range(5):
        item, label = data[i]
        ref = [[float(x[i, t, h]) * float(scale[t, h]) + float(shift[h]) for h in range(3)] for t in range(4)]
        assert item.dtype == torch.float32 and label.dtype == torch.int64 and int(label) == i
        torch.testing.assert_close(item, torch.tensor(ref, dtype=torch.float32))
    part = data.subset(torch.tensor([3, 1]))
    assert len(part) == 2 and torch.equal(part[0][0], data[3][0]) and torch.equal(part.tensors[1], torch.tensor([3, 1]))
    for bad_x, bad_y in [(x[:, :, 0], y), (x, y[:4]), (x, y[:, None])]:
        with pytest.raises(ValueError, match="x must be \\(B, L, H\\) and y \\(B,\\)"):
            ScaledSequences(bad_x, bad_y, 1.0, 0.0)


def test_split_off_edges():
    """n_val = 1 and n_val = n − 1 are valid splits of a permutation; 0 and n are refused."""
    for n_val in (1, 6):
        train, val = split_off(7, n_val, seed=3)
        assert len(val) == n_val and sorted(train.tolist() + val.tolist()) == list(range(7))
        perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
        assert val.tolist() == sorted(perm[7 - n_val:].tolist())
    for n_val in (0, 7):
        with pytest.raises(ValueError, match=f"need 0 < n_val < 7 \\(the training items\\); got n_val={n_val}"):
            split_off(7, n_val, seed=3)


# --- the task base (data/task.py) ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Toy(GeneratedTask):
    """An unregistered task with an option of each kind (no shipped task has a float option)."""

    rate: float = 0.5
    flag: bool = False
    label: str = "a"
    size: int = 3


def test_ignore_index_is_torchs():
    """-100 is the ignore_index of torch's cross_entropy, so the targets need no option on the loss."""
    assert IGNORE_INDEX == torch.nn.CrossEntropyLoss().ignore_index == -100


def test_compact_ids_boundaries():
    """int16 exactly when every id lies in [-32768, 32767] (an empty tensor too), int32 otherwise; values kept."""
    cases = [([-32768, 32767], torch.int16), ([-32769, 0], torch.int32), ([0, 32768], torch.int32),
             ([40_000], torch.int32), ([-100, 7], torch.int16), ([], torch.int16)]
    for ids, dtype in cases:
        t = torch.tensor(ids, dtype=torch.int64)
        out = compact_ids(t)
        assert out.dtype == dtype, ids
        assert out.long().tolist() == ids


def test_tensor_splits_widen_integers_only():
    """Integer tensors (int16 / int32 ids) come back int64; float and bool tensors are left as they are."""
    tensors = {"train_x": torch.tensor([[1, 2]], dtype=torch.int16), "train_y": torch.tensor([True]),
               "val_x": torch.tensor([[0.5]], dtype=torch.float64), "val_y": torch.tensor([3], dtype=torch.int32)}
    splits = tensor_splits(tensors)
    assert sorted(splits) == ["train", "val"]
    x, y = splits["train"].tensors
    assert x.dtype == torch.int64 and x.tolist() == [[1, 2]] and y.dtype == torch.bool
    x, y = splits["val"].tensors
    assert x.dtype == torch.float64 and y.dtype == torch.int64 and y.tolist() == [3]


def test_split_generator_is_the_seed_sequence():
    """Split ``i`` of seed ``s`` seeds torch with the two 32-bit words of numpy's SeedSequence([s, i]), high word
    first (independent streams per split, the same on every platform)."""
    for seed, split in [(0, 0), (5, 2), (123, 7)]:
        words = np.random.SeedSequence([seed, split]).generate_state(2, dtype=np.uint32)
        assert split_generator(seed, split).initial_seed() == (int(words[0]) << 32) + int(words[1])


def test_option_kinds_of_every_type():
    """A float option takes a finite int or float, not a bool, a str or inf; bool, str and int options their own kind;
    a task that is not a dataclass is not checked."""
    assert _Toy(rate=2, flag=True, label="b", size=4).rate == 2 and _Toy.name == ""
    for option, value, kind in [("rate", True, "a finite number"), ("rate", "0.1", "a finite number"),
                                ("rate", float("inf"), "a finite number"), ("rate", float("nan"), "a finite number"),
                                ("flag", 1, "True or False"), ("label", 3, "a str"), ("size", 2.0, "an int")]:
        with pytest.raises(ValueError, match=f": option {option} must be {kind}; got"):
            _Toy(**{option: value})
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task("adding").info().length = 3
    check_option_types(GeneratedTask())  # not a dataclass: nothing to check, no error


@pytest.mark.parametrize("name, options, title", [
    ("copying", {"delay": 5, "n_tokens": 3, "vocab_size": 7}, "Copying (delay 5, 3 tokens)"),
    ("selective_copying", {"length": 13, "n_tokens": 2, "vocab_size": 6},
     "Selective copying (our Mamba setting: L=13, 2 tokens, vocab 6)"),
    ("induction_heads", {"train_length": 9, "test_lengths": (12,), "vocab_size": 5},
     "Induction heads (train 9, test 12)"),
    ("mqar", {"length": 16, "num_kv_pairs": 2, "vocab_size": 40}, "MQAR (Zoology setting: L=16, 2 pairs, vocab 40)"),
])
def test_token_task_info_matches_its_splits(name, options, title, tmp_path):
    """info() of each token task states what its splits hold: the training length, ids below the vocabulary, a
    class per id, -100 where no loss is taken."""
    task = get_task(name, n_train=40, n_val=2, n_test=3, **options)
    info = task.info()
    x, y = task.splits(tmp_path)["train"].tensors
    assert (info.name, info.kind, info.target, info.d_input, info.title) == (name, "generated", "tokens", None, title)
    assert info.length == x.shape[1] == y.shape[1]
    assert info.vocab_size == info.n_classes == options["vocab_size"]
    assert int(x.max()) == options["vocab_size"] - 1 and int(x.min()) >= 0
    assert bool(((y == IGNORE_INDEX) | ((y >= 0) & (y < info.n_classes))).all())
