"""Probe of 2026-12-07 (mutation testing, second round over the user-data modules): tests that kill the mutants of
``ssmkit.data.arrays`` (the ``arrays`` task, ``from_arrays``, ``read_arrays``), ``ssmkit.sysid.userdata``
(``from_arrays``) and ``ssmkit.sysid.records`` (``check_time_resolution``) which the targeted existing tests let
survive: a folder's ``.npy`` loaded with pickle, float lengths up to L + 1 accepted, int32 token tensors, a split
without its own lengths given L - 1 steps, a misshapen regression target named by another rule; ``n_init=True``
taken as 1; a torch float32 tensor's resolution taken as half NumPy's.

References are independent of the code under test: values written out by hand, NumPy's float32 machine epsilon
(``finfo(float32).eps``, 2^-23) and the bound eps · max|t| against 1e-4 of the smallest gap formed here, the arrays as
given, data.task's dtype contract (token ids int64, features float32), and the error messages the modules document.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.data import from_arrays as ml_from_arrays
from ssmkit.data.arrays import read_arrays
from ssmkit.sysid.records import check_time_resolution
from ssmkit.sysid.userdata import from_arrays


def rows_of(task) -> dict[str, tuple[np.ndarray, ...]]:
    return {k: tuple(t.numpy() for t in ds.tensors) for k, ds in task.splits().items()}


# --- data.arrays ----------------------------------------------------------------------------------------------------


def test_a_folder_of_npy_files_is_read_without_pickle(tmp_path):
    # an object array in a .npy file needs pickle to load (which can run code from the file): refused as unreadable,
    # not loaded and refused later for its dtype
    np.save(tmp_path / "x_train.npy", np.zeros((4, 3)))
    np.save(tmp_path / "y_train.npy", np.array([0, 1, 0, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"y_train in .* cannot be read without pickle"):
        read_arrays(tmp_path)


@pytest.mark.parametrize("bad", [0, 6])
def test_float_lengths_outside_one_to_l_are_refused(bad):
    x = np.arange(4 * 5, dtype=np.float64).reshape(4, 5)
    found = rf"found {min(bad, 2)} to {max(bad, 5)}"
    with pytest.raises(ValueError, match=rf"lengths_train must be in \[1, L = 5\]; {found}"):
        ml_from_arrays(x, np.array([0, 1, 0, 1]), lengths_train=np.array([bad, 2, 5, 3]), val_fraction=0,
                       test_fraction=0)


def test_token_inputs_are_int64_and_float_inputs_float32_as_every_task_gives_them():
    # data.task's contract: token ids (B, L) int64, features (B, L, H) float32
    tokens = ml_from_arrays(np.array([[1, 2, 3], [3, 1, 2], [2, 2, 1]], dtype=np.int32), np.array([0, 1, 0]),
                            val_fraction=0, test_fraction=0)
    assert tokens.splits()["train"].tensors[0].dtype == torch.int64
    floats = ml_from_arrays(np.ones((3, 4), dtype=np.float64), np.array([0, 1, 0]), val_fraction=0, test_fraction=0)
    assert floats.splits()["train"].tensors[0].dtype == torch.float32


def test_per_step_regression_targets_of_another_length_are_named_by_the_target_rule():
    x = np.zeros((4, 6))
    with pytest.raises(ValueError, match=r"arrays: regression targets must be \(B,\) one value a sequence, or \(B, L\) "
                                         r"/ \(B, L, d_output\) values a step with x_train's L = 6; y_train has shape "
                                         r"\(4, 5\)"):
        ml_from_arrays(x, np.zeros((4, 5)), val_fraction=0, test_fraction=0)


def test_a_split_without_its_own_lengths_is_full_length_and_keeps_its_last_step():
    rng = np.random.default_rng(4)
    x, x_val = rng.normal(size=(6, 5, 2)), rng.normal(size=(3, 5, 2))
    y, y_val = np.array([0, 1, 0, 1, 0, 1]), np.array([1, 0, 1])
    lengths = np.array([5, 3, 2, 5, 4, 1])
    task = ml_from_arrays(x, y, x_val, y_val, lengths_train=lengths, test_fraction=0, normalise=False)
    xv, _, lv = rows_of(task)["val"]
    assert lv.tolist() == [5, 5, 5]
    np.testing.assert_array_equal(xv, x_val.astype(np.float32))  # no step cut: the last one kept
    xt, _, lt = rows_of(task)["train"]
    assert lt.tolist() == lengths.tolist()
    assert (xt[1, 3:] == 0).all() and (xt[1, :3] == x[1, :3].astype(np.float32)).all()


# --- sysid.userdata -------------------------------------------------------------------------------------------------


def experiment(length: int, m: int = 1, p: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(length, m)), rng.normal(size=(length, p))


def test_n_init_must_be_an_int_not_a_bool():
    u, y = experiment(40)
    with pytest.raises(ValueError, match=r"n_init must be None or an int in \[0, 8\)"):
        from_arrays(u, y, 0.1, n_init=True)


def test_a_numpy_fraction_is_taken_and_said_to_its_digits():
    """A NumPy float32 test fraction was refused ("got float32": not a Python float) while float64 passed; the notes
    said "the last 12%" of a 12.5 % hold-out ({:.0%}). The split is the hand-computed cut."""
    u, y = experiment(40)
    bench = from_arrays(u, y, 0.1, test=np.float32(0.125))
    cut = 40 - 5  # 12.5 % of 40 samples held out
    assert [len(r) for r in bench.train] == [cut] and [len(r) for r in bench.test] == [40 - cut]
    np.testing.assert_array_equal(bench.test[0].u.numpy().ravel(), np.asarray(u, dtype=np.float64).ravel()[cut:])
    assert "the last 12.5% of the experiment held out" in bench.notes


# --- sysid.records --------------------------------------------------------------------------------------------------


def test_torch_and_numpy_float32_times_get_the_same_verdict():
    # the documented resolution eps * max|t| with eps float32's machine epsilon (numpy's finfo(float32).eps = 2^-23):
    # at max|t| = 1 s it is 1.19e-7 s, above 1e-4 of a 1.1 ms gap (1.1e-7 s), below 1e-4 of a 1.3 ms one
    eps = float(np.finfo(np.float32).eps)
    assert eps == 2.0 ** -23
    for gap, refused in ((1.1e-3, True), (1.3e-3, False)):
        stamps = np.array([1.0 - 2 * gap, 1.0 - gap, 1.0], dtype=np.float32)
        assert (eps * 1.0 > 1e-4 * float(np.diff(stamps.astype(np.float64)).min())) == refused
        for given in (np.dtype(np.float32), torch.float32):
            times = torch.from_numpy(stamps.astype(np.float64))
            if refused:
                with pytest.raises(ValueError, match=r"is resolved to|are resolved to"):
                    check_time_resolution(times, given)
            else:
                check_time_resolution(times, given)
