"""Probe 51 of 2026-12-05 (mutation testing, thirty-second round): tests that kill the mutants of this afternoon's code
which the tests written with it let survive -- ``ssmkit.data.arrays`` (the ``arrays`` task, ``from_arrays``),
``ssmkit tasks``' row of it (``data.commands.describe``), the sysid input names and published figures
(``sysid.records``, ``sysid.report``), the module utilities (``layers.protocol.apply_pruning``, ``complex_pairs``,
``layers.cache.module_tensors``) and ``Experiment``'s pool rule and ``run_experiment(task=...)``.

References are independent of the code under test: the documented hold-out recomputed with numpy
(``default_rng(seed).permutation(B)``, test first, then validation, each in file order, sizes by Python's ``round``),
labels and vocabularies from the arrays' maxima, standardisation by numpy's float64 mean and population std,
aggregates over outputs written out by hand, complex numbers assembled from their parts one by one, and pruned
weights as ``weight_orig * weight_mask`` formed here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ssmkit.data import from_arrays, get_task
from ssmkit.data.arrays import ArraysTask

F64 = torch.float64


def held_out(b: int, seed: int, test_fraction: float, val_fraction: float) -> dict[str, np.ndarray]:
    """The documented hold-out by hand: Python's round for the sizes, test first, then validation, in file order."""
    perm = np.random.default_rng(seed).permutation(b)
    n_test, n_val = round(test_fraction * b), round(val_fraction * b)
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def rows_of(task) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {k: tuple(t.numpy() for t in ds.tensors) for k, ds in task.splits().items()}


# --- data.arrays: options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"seed": -1}, r"option seed must be an int >= 0; got -1"),
    ({"n_classes": -1}, r"option n_classes must be >= 1, or 0 to infer it; got -1"),
    ({"vocab": -1}, r"option vocab must be >= 1, or 0 to infer it; got -1"),
    ({"pad": -2}, r"option pad must be a token id >= 0, or -1 for none; got -2"),
])
def test_option_bounds_are_checked_when_the_task_is_built(options, message):
    with pytest.raises(ValueError, match=message):
        ArraysTask(**options)


def test_an_upper_case_npz_suffix_is_an_npz(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    y = np.array([0, 1, 1, 0])
    path = tmp_path / "DATA.NPZ"
    with open(path, "wb") as f:  # numpy.savez would append ".npz" to a name
        np.savez(f, x_train=x, y_train=y)
    task = get_task("arrays", path=str(path), val_fraction=0, test_fraction=0, normalise=False)
    got_x, got_y = rows_of(task)["train"]
    np.testing.assert_array_equal(got_x[..., 0], x.astype(np.float32))
    np.testing.assert_array_equal(got_y, y)


# --- data.arrays: the checks of _build -----------------------------------------------------------------------------


def test_what_build_refuses_names_the_array():
    x = np.zeros((10, 4))
    y = np.arange(10) % 2
    ids = np.ones((10, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"lengths_val is given without x_val"):
        from_arrays(ids, y, lengths_val=np.full(3, 2))
    with pytest.raises(ValueError, match=r"x_train: float inputs must be \(B, L\) or \(B, L, d_input\); got shape "
                                         r"\(10, 4, 1, 1\)"):
        from_arrays(np.zeros((10, 4, 1, 1)), y)
    with pytest.raises(ValueError, match=r"y_train must hold one target per sample"):
        from_arrays(x, np.array(1))
    with pytest.raises(ValueError, match=r"x_train must have L >= 1 steps \(and features\); got shape \(10, 0\)"):
        from_arrays(np.zeros((10, 0)), y)
    with pytest.raises(ValueError, match=r"x_test must have x_train's features per step; got \(3, 4, 2\), x_train "
                                         r"\(10, 4, 3\)"):
        from_arrays(np.zeros((10, 4, 3)), y, x_test=np.zeros((3, 4, 2)), y_test=y[:3])
    bad = np.arange(10.0)
    bad[4] = np.nan
    with pytest.raises(ValueError, match=r"y_train holds 1 non-finite value\(s\).*index \(4,\)"):
        from_arrays(x, bad)


def test_a_token_at_the_vocabulary_size_is_outside_it():
    ids = np.array([[0, 1, 2], [3, 4, 4], [1, 1, 0]])
    with pytest.raises(ValueError, match=r"x_val holds token 5, outside the vocabulary \[0, 5\) inferred from x_train: "
                                         r"give vocab=6"):
        from_arrays(ids, np.array([0, 1, 0]), x_val=np.array([[5, 0, 0]]), y_val=np.array([1]), test_fraction=0)
    # the padding id is not a real token: a pad id 9 beyond x_train's tokens 0..4 does not widen the real ids
    with pytest.raises(ValueError, match=r"x_val holds token 6, outside the vocabulary \[0, 5\)"):
        from_arrays(np.array([[0, 1, 9], [3, 4, 9], [1, 2, 2]]), np.array([0, 1, 0]), pad=9,
                    x_val=np.array([[6, 9, 9]]), y_val=np.array([1]), test_fraction=0)
    task = from_arrays(np.array([[0, 1, 9], [3, 4, 9], [1, 2, 2]]), np.array([0, 1, 0]), pad=9, val_fraction=0,
                       test_fraction=0)
    assert (task.info().pad_id, task.info().vocab_size) == (9, 10)


def test_unsigned_integer_labels_are_classes():
    x = np.random.default_rng(0).normal(size=(12, 5))
    y = (np.arange(12) % 3).astype(np.uint8)
    info = from_arrays(x, y).info()
    assert (info.target, info.n_classes) == ("classify", 3)
    ids = np.arange(24).reshape(4, 6) % 5
    info = from_arrays(ids, ids.astype(np.uint16), val_fraction=0, test_fraction=0).info()
    assert (info.target, info.n_classes, info.vocab_size) == ("tokens", 5, 5)


@pytest.mark.parametrize("b, test_fraction, val_fraction, seed", [
    (9, 0.2, 0.1, 0),     # 1.8 -> 2 test, 0.9 -> 1 validation (round, not the floor)
    (10, 0.25, 0.25, 3),  # 2.5 -> 2 and 2.5 -> 2: Python's round halves to even
    (20, 0.3, 0.15, 7),   # 6 test, 3 validation: test first in the permutation, then validation
    (14, 0.5, 0.0, 1),
])
def test_the_hold_out_is_the_documented_one(b, test_fraction, val_fraction, seed):
    x = np.arange(b * 3, dtype=np.float64).reshape(b, 3)
    y = np.arange(b) % 2
    task = from_arrays(x, y, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, normalise=False)
    want = held_out(b, seed, test_fraction, val_fraction)
    got = rows_of(task)
    assert sorted(got) == sorted(k for k, i in want.items() if i.size)
    for split, (gx, gy) in got.items():
        np.testing.assert_array_equal(gx[..., 0], x[want[split]])
        np.testing.assert_array_equal(gy, y[want[split]])


def test_an_empty_training_split_is_refused():
    with pytest.raises(ValueError, match=r"the training split is empty: x_train's 2 samples less 1 test and 1 "
                                         r"validation"):
        from_arrays(np.zeros((2, 3)), np.array([0, 1]), test_fraction=0.5, val_fraction=0.4)


def test_the_shapes_and_labels_of_given_splits_are_checked():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 4))
    y = np.arange(10) % 3
    ids = rng.integers(0, 5, size=(10, 4))
    with pytest.raises(ValueError, match=r"y_val: per-step labels must be \(B, L\) = \(2, 4\), x_val's; got \(2, 3\)"):
        from_arrays(ids, ids, x_val=ids[:2], y_val=ids[:2, :3])
    with pytest.raises(ValueError, match=r"y_test: per-step values must be \(B, L\) or \(B, L, d_output\) with L = 4"):
        from_arrays(x, rng.normal(size=(10, 4)), x_test=x[:2], y_test=np.zeros((2, 4, 1, 1)))
    with pytest.raises(ValueError, match=r"y_test: labels must be whole numbers"):
        from_arrays(x, y, x_test=x[:3], y_test=np.array([0.0, 1.5, 2.0]), target="classify")
    with pytest.raises(ValueError, match=r"y_test holds label 3, outside \[0, n_classes = 3\) inferred from y_train"):
        from_arrays(x, y, x_test=x[:3], y_test=np.array([0, 3, 1]))
    with pytest.raises(ValueError, match=r"y_test holds label -1, outside \[0, n_classes = 3\)"):
        from_arrays(x, y, x_test=x[:3], y_test=np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"y_test holds label -100, outside \[0, n_classes = 3\)"):
        from_arrays(x, y, x_test=x[:3], y_test=np.array([0, -100, 1]))  # -100 skips a step, not a sequence
    # per-step labels: -100 is allowed, and a label at n_classes is not
    task = from_arrays(ids, ids, x_test=ids[:2], y_test=np.where(ids[:2] > 2, -100, ids[:2]))
    np.testing.assert_array_equal(rows_of(task)["test"][1], np.where(ids[:2] > 2, -100, ids[:2]))
    with pytest.raises(ValueError, match=r"y_test holds label 5, outside \[0, n_classes = 5\)"):
        from_arrays(ids, np.minimum(ids, 4), x_test=ids[:2], y_test=np.full((2, 4), 5))


def test_a_pad_id_within_a_length_is_refused():
    # the pad id 0 at step 2 of a sequence of length 3: not dropped as if the sequence were 2 long
    with pytest.raises(ValueError, match=r"sequence 0 holds the padding id 0 at step 2, within its length 3"):
        from_arrays(np.array([[1, 2, 0, 5], [1, 1, 1, 1]]), np.array([0, 1]), lengths_train=np.array([3, 4]), pad=0,
                    val_fraction=0, test_fraction=0)


# --- sysid.records / sysid.report: published figures and input names ----------------------------------------------


def bench_of(m=2, p=3, published=(), unit="mV", scale=1.0, input_names=None, input_unit=None, records=1):
    """m inputs, p outputs, one estimation record and ``records`` test records (12 samples each), Ts 0.5 s."""
    from ssmkit.sysid.records import IORecord, SysidBenchmark

    g = torch.Generator().manual_seed(2)

    def rec(name):
        return IORecord(torch.randn(12, m, generator=g, dtype=F64), torch.randn(12, p, generator=g, dtype=F64), 0.5,
                        name)

    return SysidBenchmark("toy", "Toy", [rec("est")], [rec(f"test {i}") for i in range(records)], 2, unit,
                          scale=scale, published=list(published), input_names=input_names, input_unit=input_unit)


def test_published_values_are_checked_and_stored_as_floats():
    from ssmkit.sysid.records import Published

    assert Published("exact", 0.0, "s").values == (0.0,)  # an RMSE of 0 is a value, not an error
    assert Published("exact", (0.0, 1.0), "s").values == (0.0, 1.0)
    for bad in (True, math.inf, -0.5, (), (1.0, math.inf), (1.0, False), "1.0"):
        with pytest.raises(ValueError, match=r"rmse must be a finite number >= 0 or a tuple of them"):
            Published("x", bad, "s")
    with pytest.raises(ValueError, match=r"aggregate must be None or one of \['mean', 'rms'\]; got ''"):
        Published("x", 1.0, "s", "")
    pub = Published("numpy", [np.int64(1), np.float32(0.5), 2], "s")
    assert pub.per_output and pub.rmse == (1.0, 0.5, 2.0) and all(type(v) is float for v in pub.rmse)


def test_results_json_holds_numpy_published_values_as_numbers(tmp_path):
    from ssmkit.sysid import report
    from ssmkit.sysid.records import Published

    bench = bench_of(published=[Published("np", (np.int64(3), np.float32(0.25), 1), "s")])
    scores = {"records": [{"name": "test 0", "rmse": [1.0, 2.0, 3.0], "fit": [0.0, 0.0, 0.0]}], "simulations": []}
    report.write_report(tmp_path, bench, "lbl", scores, {}, plots=False)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["published"] == [{"method": "np", "rmse": [3.0, 0.25, 1.0], "source": "s", "aggregate": None,
                                 "record": None}]
    assert all(type(v) is float for v in res["published"][0]["rmse"])


def test_aggregate_refuses_an_unknown_kind_and_no_values():
    from ssmkit.sysid.records import aggregate

    assert aggregate("rms", [3.0, 4.0]) == math.sqrt((9 + 16) / 2)
    with pytest.raises(ValueError, match=r"kind must be one of \['mean', 'rms'\]; got 'median'"):
        aggregate("median", [1.0, 2.0])
    with pytest.raises(ValueError, match=r"values must hold one number per output; got none"):
        aggregate("mean", [])


def test_the_benchmark_checks_its_published_results_and_input_names():
    from ssmkit.sysid.records import Published

    with pytest.raises(ValueError, match=r"published 'four': 4 per-output values for p = 3 outputs"):
        bench_of(published=[Published("four", (1.0, 2.0, 3.0, 4.0), "s")])
    with pytest.raises(ValueError, match=r"published must be a list of Published; got dict"):
        bench_of(published=[{"method": "x", "rmse": 1.0, "source": "s"}])
    bench = bench_of(input_names=["valve", "pump"], input_unit=["V", None])
    assert (bench.input_names, bench.inputs, bench.input_unit, bench.input_units) == (
        ("valve", "pump"), ("valve", "pump"), ("V", None), ("V", None))
    with pytest.raises(ValueError, match=r"input_unit must be None or a non-empty string for every input or a tuple "
                                         r"of m = 2 of them, one per input"):
        bench_of(input_unit=("V", ""))
    with pytest.raises(ValueError, match=r"input_unit must be None or a non-empty string for every input or a tuple "
                                         r"of m = 2 of them"):
        bench_of(input_unit="")
    # one string for every input: repeated m times, not p
    assert bench_of(m=2, p=3, input_unit="N").input_units == ("N", "N")


def test_mean_in_units_converts_each_output_then_averages():
    bench = bench_of(m=1, p=3, scale=(1000.0, 1.0, 0.5), unit=("mm", "m", "m"))
    values = [0.002, 3.0, 8.0]
    want = (0.002 * 1000.0 + 3.0 * 1.0 + 8.0 * 0.5) / 3  # (2 + 3 + 4) / 3
    assert bench.mean_in_units(values) == pytest.approx(want, rel=1e-15)
    assert bench.mean_in_units(torch.tensor(values, dtype=F64)) == pytest.approx(want, rel=1e-15)
    one = bench_of(m=2, p=1, scale=1000.0, unit="mV")
    assert one.mean_in_units(torch.tensor(0.25, dtype=F64)) == pytest.approx(250.0, rel=1e-15)  # a 0-d tensor


def test_a_single_output_benchmark_gets_no_aggregate_row():
    from ssmkit.sysid import report
    from ssmkit.sysid.records import Published

    bench = bench_of(m=1, p=1, published=[Published("one", 0.5, "paper", "mean")])
    rows = report.results_table(bench, "m", {"records": [{"name": "test 0", "rmse": [0.25], "fit": [90.0]}]})
    assert rows.split("\n") == ["| method | test record | RMSE (mV) | fit % | source |", "|---|---|---|---|---|",
                                "| **m** | test 0 | 0.25 | 90.00 | this run |",
                                "| one | official test | 0.5 | – | paper |"]


# --- layers.protocol.apply_pruning / complex_pairs, layers.cache.module_tensors -----------------------------------


class _Doubled(nn.Module):
    def forward(self, w):
        return 2 * w


def test_apply_pruning_walks_the_tree_past_empty_slots():
    from torch.nn.utils import prune

    from ssmkit.layers.protocol import apply_pruning

    torch.manual_seed(0)
    inner = nn.Linear(3, 4).double()
    tree = nn.Sequential(nn.Sequential(inner))
    tree.register_module("empty", None)  # a sub-module slot set to None (an optional part left out)
    prune.l1_unstructured(inner, "weight", amount=0.5)
    with torch.no_grad():
        inner.weight_orig.add_(1.0)  # as an optimizer step would: the plain attribute now holds a stale product
    want = inner.weight_orig.detach() * inner.weight_mask
    assert not torch.equal(inner.weight, want)
    apply_pruning(tree)
    torch.testing.assert_close(inner.weight, want, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["last stride 2", "odd row stride", "odd offset", "plain"])
def test_complex_pairs_reads_any_layout(layout):
    from ssmkit.layers.protocol import complex_pairs

    base = torch.arange(1.0, 31.0, dtype=F64)
    t = {"last stride 2": base[:24].view(3, 2, 4)[..., ::2].transpose(1, 2),  # (3, 2, 2), stride (8, 2, 4)
         "odd row stride": base[:15].view(5, 3)[:, :2],                         # (5, 2), stride (3, 1)
         "odd offset": base[1:9].view(4, 2),                                    # offset 1
         "plain": base[:8].view(4, 2)}[layout]
    want = torch.tensor([complex(float(p[0]), float(p[1])) for p in t.reshape(-1, 2)],
                        dtype=torch.complex128).reshape(t.shape[:-1])
    got = complex_pairs(t)
    assert got.dtype == torch.complex128
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_module_tensors_lists_every_tensor_and_each_parametrised_value():
    from torch.nn.utils import parametrize

    from ssmkit.layers.cache import module_tensors

    torch.manual_seed(1)
    root = nn.Module()
    root.a = nn.Parameter(torch.randn(2, dtype=F64))
    root.register_buffer("b", torch.randn(3, dtype=F64))
    root.register_buffer("none", None)
    root.child = nn.Linear(2, 2).double()
    root.child.register_buffer("c", torch.randn(1, dtype=F64))
    parametrize.register_parametrization(root.child, "weight", _Doubled())
    got = module_tensors(root)
    assert all(t is not None for t in got)
    ids = {id(t) for t in got}
    everything = [*root.parameters(), *root.buffers()]  # root's, the child's and the parametrization's original
    assert len(everything) == 5 and all(id(t) in ids for t in everything)
    assert len(got) == len(everything) + 1
    values = [t for t in got if id(t) not in {id(e) for e in everything}]
    torch.testing.assert_close(values[0], 2 * root.child.parametrizations.weight.original, rtol=0, atol=0)


# --- data.commands.describe: the arrays row -------------------------------------------------------------------------


def test_the_tasks_row_of_arrays_shows_the_datas_shapes_once_there_is_data(tmp_path):
    from ssmkit.data.commands import describe

    x = np.zeros((6, 5, 2))
    task = from_arrays(x, np.arange(6) % 3, val_fraction=0, test_fraction=0)
    assert describe(task, tmp_path)[1:4] == ["files", "float (B, 5, 2)", "3 classes"]
    np.savez(tmp_path / "d.npz", x_train=np.ones((4, 7), dtype=np.int64), y_train=np.ones((4, 7), dtype=np.int64))
    row = describe(get_task("arrays", path=str(tmp_path / "d.npz"), val_fraction=0, test_fraction=0), tmp_path)
    assert row[2:4] + row[5:] == ["tokens (B, 7), vocab 2", "per position, 2 classes", "present"]
    row = describe(get_task("arrays"), tmp_path)  # no path: the shapes are the user's, the data missing
    assert row[2:4] == ["yours: tokens (B, L) or float (B, L[, D])", "from y's dtype and shape"]
    assert row[5].startswith("missing: put x_train, y_train")
    mnist = describe(get_task("smnist"), tmp_path / "empty")  # another task without its data keeps its own shapes
    assert not mnist[2].startswith("yours") and mnist[5].startswith("missing")


# --- data.arrays: a constant feature (found by this round; fixed) ---------------------------------------------------


@pytest.mark.parametrize("value", [0.1, 0.3, 1e6 + 0.1, 7.5])
def test_a_constant_feature_keeps_a_scale_of_one_whatever_its_rounding(value):
    # numpy's mean over axis 0 of 350 copies of 0.1 is 0.1 + 6.4e-16, so the population std was 6.4e-16, not 0: the
    # feature was divided by rounding noise (every training value -1 instead of 0, and a test value 1e-9 off the
    # constant 1.6e6 instead of 1e-9; 0.3: 5.5e5, 1e6 + 0.1: 4.1e5; 7.5, whose sums are exact, was right)
    rng = np.random.default_rng(4)
    x = np.stack([rng.normal(size=(50, 7)), np.full((50, 7), value)], axis=-1)
    x_test = np.stack([rng.normal(size=(3, 7)), np.full((3, 7), value + 1e-9 * max(1.0, value))], axis=-1)
    y = np.arange(50) % 2
    task = from_arrays(x, y, x_test=x_test, y_test=y[:3], val_fraction=0)
    train = x.reshape(-1, 2)  # no hold-out: every sample trains
    want_mean = np.array([train[:, 0].mean(), value])  # the mean of identical values is the value
    want_std = np.array([train[:, 0].std(), 1.0])
    np.testing.assert_array_equal(task.std[1], 1.0)
    np.testing.assert_allclose(task.std, want_std, rtol=1e-12)
    np.testing.assert_allclose(task.mean, want_mean, rtol=1e-12, atol=0)
    assert task.mean[1] == value
    got = rows_of(task)
    np.testing.assert_array_equal(got["train"][0][..., 1], 0.0)
    np.testing.assert_allclose(got["test"][0][..., 1], np.float32(1e-9 * max(1.0, value)), rtol=1e-3)
    np.testing.assert_allclose(got["test"][0][..., 0], (x_test[..., 0] - want_mean[0]) / want_std[0], rtol=1e-5,
                               atol=1e-6)


def test_a_pruned_half_precision_layer_exports_its_state_space():
    # state_space() of a bfloat16 layer analyses a float64 deepcopy; prune leaves `log_A_real` a non-leaf product
    # (orig * mask with a grad_fn), which deepcopy refuses, unless the state space first recomputes it without grad
    from torch.nn.utils import prune

    from tests.conftest import make_layer

    torch.manual_seed(5)
    layer = make_layer("s4d")
    prune.random_unstructured(layer, "log_A_real", amount=0.5)
    layer = layer.to(torch.bfloat16)
    assert layer.log_A_real.grad_fn is not None
    ss = layer.state_space()
    # the reference: a float64 layer holding the bfloat16 layer's effective weights, orig * mask for the pruned one
    ref = make_layer("s4d")
    with torch.no_grad():
        for name, p in ref.named_parameters():
            src = layer.log_A_real_orig * layer.log_A_real_mask if name == "log_A_real" else getattr(layer, name)
            p.copy_(src.double())
    want = ref.state_space()
    for got_m, want_m in zip((ss.A, ss.B, ss.C, ss.D), (want.A, want.B, want.C, want.D)):
        np.testing.assert_allclose(got_m, want_m, rtol=1e-12, atol=1e-12)
