"""The shared foundations every layer and command relies on, against references written here (the lead's round of
stop 44): the optimizer marks (``ssmkit.layers.marks``) against ``named_parameters`` and ``state_dict``; the input
checks of the diagonal ops (``ssmkit.ops._checks``) and of every public function (``ssmkit.utils``), each message at
the edge of what it refuses; the atomic writers (``ssmkit.files``) against the bytes ``json``, ``open`` and the image
formats' signatures give; and ``ssmkit.memory``'s ``mallopt`` calls against glibc's documented parameter numbers."""

from __future__ import annotations

import ctypes
import json
import math
import os
import struct

import numpy as np
import pytest
import torch
from torch import nn

from ssmkit import files, memory, utils
from ssmkit.layers import marks
from ssmkit.ops import _checks

# ------------------------------------------------------------------------------------------------------ marks


def test_register_ssm_parameter_marks_freezes_or_keeps_the_global_lr():
    module = nn.Module()
    marks.register_ssm_parameter(module, "A", torch.ones(2, 3), lr=1e-3)
    marks.register_ssm_parameter(module, "B", torch.ones(4), lr=None, weight_decay=1)
    marks.register_ssm_parameter(module, "C", torch.full((2,), 7.0), lr=0.0)
    assert [n for n, _ in module.named_parameters()] == ["A", "B"]
    assert list(module.state_dict()) == ["A", "B", "C"]  # the frozen one is a saved buffer
    assert torch.equal(module.C, torch.full((2,), 7.0)) and not module.C.requires_grad
    assert marks.optim_marks(module) == {"A": {"weight_decay": 0.0, "lr": 1e-3}, "B": {"weight_decay": 1.0}}
    assert type(marks.optim_marks(module)["B"]["weight_decay"]) is float
    assert [marks.is_protected(module, n) for n in "ABC"] == [True, True, False]
    assert marks.optim_marks(nn.Linear(2, 2)) == {} and not marks.is_protected(nn.Linear(2, 2), "weight")
    marks.optim_marks(module).clear()  # a copy: the module's marks stay
    assert set(marks.optim_marks(module)) == {"A", "B"}


def test_marked_parameters_follow_named_parameters_with_shared_ones_once():
    inner = nn.Module()
    marks.register_ssm_parameter(inner, "log_dt", torch.zeros(3), lr=1e-3)
    inner.proj = nn.Linear(3, 3)
    model = nn.Module()
    model.first = inner
    model.second = inner  # the same module twice: its parameters once
    marks.register_ssm_parameter(model, "P", torch.zeros(2), lr=2e-3, weight_decay=0.5)
    got = list(marks.marked_parameters(model))
    expected = list(model.named_parameters())  # torch's own walk, shared parameters once
    assert [(n, id(p)) for n, p, _ in got] == [(n, id(p)) for n, p in expected]
    assert [m for _, _, m in got] == [{"weight_decay": 0.5, "lr": 2e-3}, {"weight_decay": 0.0, "lr": 1e-3}, None, None]
    assert [n for n, _, _ in got] == ["P", "first.log_dt", "first.proj.weight", "first.proj.bias"]
    tied = nn.Module()
    tied.embed, tied.head = nn.Linear(2, 3, bias=False), nn.Linear(2, 3, bias=False)
    tied.head.weight = tied.embed.weight  # one parameter in two modules (tied weights): yielded once
    assert [(n, id(p)) for n, p, _ in marks.marked_parameters(tied)] == [
        (n, id(p)) for n, p in tied.named_parameters()] == [("embed.weight", id(tied.embed.weight))]


# --------------------------------------------------------------------------------------------- ops/_checks


def params(H=3, N=2, dtype=torch.complex64):
    return {"A": torch.zeros(H, N, dtype=dtype), "B": torch.zeros(H, N, dtype=dtype)}


@pytest.mark.parametrize("u, message", [
    ([1.0], "u must be a torch.Tensor; got list"),
    (torch.zeros(2, 4, 3, dtype=torch.int64), "u must have a floating-point dtype (float32 or float64); got torch.int64"),
    (torch.zeros(4, 3), "u must be (B, L, H) (3 dimensions); got shape (4, 3)"),
    (torch.zeros(2, 0, 3), "u must have length L >= 1; got shape (2, 0, 3)"),
])
def test_check_params_refuses_each_bad_input(u, message):
    with pytest.raises(ValueError) as err:
        _checks.check_params(u, None, **params())
    assert str(err.value) == message


def test_check_params_names_each_bad_parameter():
    u = torch.zeros(2, 4, 3)
    cases = [
        ({"A": torch.zeros(3, 2, dtype=torch.complex64), "B": 1.0}, "B must be a torch.Tensor; got float"),
        ({"A": torch.zeros(3, 2, dtype=torch.int32)}, "A must be complex64/complex128 or float32/float64; got torch.int32"),
        ({"A": torch.zeros(3, dtype=torch.complex64)}, "A must be (H, N) with H=3 (from u); got shape (3,)"),
        ({"A": torch.zeros(4, 2, dtype=torch.complex64)}, "A must be (H, N) with H=3 (from u); got shape (4, 2)"),
        ({"A": torch.zeros(3, 2, dtype=torch.complex64), "B": torch.zeros(3, 5, dtype=torch.complex64)},
         "B must have the shape of A (H, N) = (3, 2); got (3, 5)"),
        ({"A": torch.zeros(3, 2, dtype=torch.complex64), "B": torch.zeros(3, 2)},
         "A, B must share one dtype (all complex or all real); A is torch.complex64 but B is torch.float32"),
        ({"A": torch.zeros(3, 2, dtype=torch.complex64), "B": torch.zeros(3, 2, dtype=torch.complex64, device="meta")},
         "B must be on u's device cpu; got meta"),
        ({"A": torch.zeros(3, 2, dtype=torch.complex128)},
         "mixed precisions: u is torch.float32 but A is torch.complex128 (float32 goes with complex64/float32, float64 "
         "with complex128/float64)"),
        ({"A": torch.zeros(3, 2, dtype=torch.float64)},
         "mixed precisions: u is torch.float32 but A is torch.float64 (float32 goes with complex64/float32, float64 "
         "with complex128/float64)"),
    ]
    for given, message in cases:
        with pytest.raises(ValueError) as err:
            _checks.check_params(u, None, **given)
        assert str(err.value) == message
    # accepted: complex64 and float32 with float32 u, complex128 with float64 u
    _checks.check_params(u, None, **params())
    _checks.check_params(u, None, **params(dtype=torch.float32))
    _checks.check_params(u.double(), torch.zeros(2, 3, 2, dtype=torch.complex128), **params(dtype=torch.complex128))
    assert _checks.REAL_OF == {torch.complex64: torch.float32, torch.complex128: torch.float64}


def test_check_params_names_each_bad_state():
    u = torch.zeros(2, 4, 3)
    cases = [
        (torch.zeros(2, 3, 5, dtype=torch.complex64), "state must be (B, H, N) = (2, 3, 2); got (2, 3, 5)"),
        (torch.zeros(1, 3, 2, dtype=torch.complex64), "state must be (B, H, N) = (2, 3, 2); got (1, 3, 2)"),
        ([[0.0]], "state must be (B, H, N) = (2, 3, 2); got list"),
        (torch.zeros(2, 3, 2, dtype=torch.complex128), "state must have the dtype of A (torch.complex64); got "
                                                       "torch.complex128"),
        (torch.zeros(2, 3, 2, dtype=torch.complex64, device="meta"), "state must be on u's device cpu; got meta"),
    ]
    for state, message in cases:
        with pytest.raises(ValueError) as err:
            _checks.check_params(u, state, **params())
        assert str(err.value) == message
    _checks.check_params(u, torch.zeros(2, 3, 2, dtype=torch.complex64), **params())


def test_check_skip_and_chunk_size_refuse_at_their_edges():
    u = torch.zeros(2, 4, 3)
    _checks.check_skip(None, u)
    _checks.check_skip(torch.zeros(3), u)
    cases = [
        (torch.zeros(2), "D must be (H,) = (3,) (from u); got (2,)"),
        (torch.zeros(1, 3), "D must be (H,) = (3,) (from u); got (1, 3)"),
        (1.0, "D must be (H,) = (3,) (from u); got float"),
        (torch.zeros(3, dtype=torch.float64), "D must be real with u's dtype torch.float32; got torch.float64"),
        (torch.zeros(3, device="meta"), "D must be on u's device cpu; got meta"),
    ]
    for D, message in cases:
        with pytest.raises(ValueError) as err:
            _checks.check_skip(D, u)
        assert str(err.value) == message
    _checks.check_chunk_size(1)
    for bad in (0, -2, True, 2.0, "4"):
        with pytest.raises(ValueError) as err:
            _checks.check_chunk_size(bad)
        assert str(err.value) == f"chunk_size must be a positive int; got {bad!r}"


# -------------------------------------------------------------------------------------------------- utils


def test_check_sampling_time_takes_finite_positive_reals_only():
    for dt, value in ((2, 2.0), (0.25, 0.25), (np.float32(0.1), float(np.float32(0.1))), (np.int64(3), 3.0),
                      (1e-300, 1e-300)):
        got = utils.check_sampling_time(dt)
        assert type(got) is float and got == value
    for bad in (0, 0.0, -1.0, math.nan, math.inf, True, "0.1", 1 + 0j, torch.tensor(0.1), None):
        with pytest.raises(ValueError) as err:
            utils.check_sampling_time(bad)
        assert str(err.value) == f"dt must be the sampling time in seconds, a finite number > 0; got {bad!r}"
    with pytest.raises(ValueError, match=r"^Ts must be the sampling time"):
        utils.check_sampling_time(-2, "Ts")


def test_check_sequence_and_check_floating_name_the_argument():
    utils.check_sequence(torch.zeros(1, 1, 4), 4)
    cases = [
        ("not a tensor", "y must be a torch.Tensor; got str"),
        (torch.zeros(1, 2, 4, dtype=torch.complex64), "y must have a floating-point dtype (float32 or float64); got "
                                                      "torch.complex64"),
        (torch.zeros(2, 4), "y must be (B, L, H) with H=4; got shape (2, 4)"),
        (torch.zeros(1, 2, 4, 1), "y must be (B, L, H) with H=4; got shape (1, 2, 4, 1)"),
        (torch.zeros(1, 0, 4), "y must have length L >= 1; got shape (1, 0, 4)"),
        (torch.zeros(0, 2, 4), "y must have batch size B >= 1; got shape (0, 2, 4)"),
        (torch.zeros(1, 2, 5), "y must be (B, L, 4) for d_model=4; got (1, 2, 5)"),
    ]
    for x, message in cases:
        with pytest.raises(ValueError) as err:
            utils.check_sequence(x, 4, "y")
        assert str(err.value) == message
    with pytest.raises(ValueError, match=r"^x must be \(B, L, H\)"):
        utils.check_sequence(torch.zeros(3), 4)


def test_check_finite_sequence_names_the_earliest_step_over_the_batch():
    x = torch.zeros(3, 6, 2, dtype=torch.float64)
    utils.check_finite_sequence(x, "the input")  # finite: nothing
    x[0, 5, 1] = math.nan
    x[2, 2, 0] = math.inf
    x[1, 2, 1] = -math.inf  # the same step in an earlier batch item: that item is named
    x[1, 4, :] = math.nan
    bad = ~torch.isfinite(x)
    t = min(tt for b in range(3) for tt in range(6) if bad[b, tt].any())
    b = min(bb for bb in range(3) if bad[bb, t].any())
    assert (t, b) == (2, 1)
    with pytest.raises(ValueError) as err:
        utils.check_finite_sequence(x, "the output of block 2")
    assert str(err.value) == ("the output of block 2 is not finite (NaN or inf) from time step 2 on (first at batch "
                              "item 1, time step 2; 5 non-finite values in all)")


def test_check_finite_sequence_under_grad_and_vmap():
    x = torch.zeros(1, 3, 2)
    x[0, 1, 0] = math.nan
    with pytest.raises(ValueError, match=r"from time step 1 on \(first at batch item 0, time step 1; 1 non-finite"):
        torch.func.grad(lambda v: (utils.check_finite_sequence(v, "v"), v.sum())[1])(x)
    ok = torch.func.grad(lambda v: (utils.check_finite_sequence(v, "v"), (v ** 2).sum())[1])(torch.ones(1, 3, 2))
    assert torch.equal(ok, torch.full((1, 3, 2), 2.0))
    with pytest.raises(ValueError, match=r"^cannot check the input for NaN/inf here: .*check_finite=False"):
        torch.func.vmap(lambda v: utils.check_finite_sequence(v[None], "the input") or v)(torch.ones(2, 3, 2))
    with pytest.raises(RuntimeError):  # outside a transform, a tensor without values is not turned into advice
        utils.check_finite_sequence(torch.zeros(1, 3, 2, device="meta"), "x")


# -------------------------------------------------------------------------------------------------- files


def test_atomic_write_creates_the_folder_and_keeps_newlines(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    files.write_text(str(target), "x\r\ny\n")  # a str path as well as a Path
    assert target.read_bytes() == b"x\r\ny\n"  # newline="": nothing translated
    files.write_text(target, "é")
    assert target.read_bytes() == "é".encode("utf-8")
    files.atomic_write(target, lambda f: f.write(b"\x00\xff"))  # binary by default
    assert target.read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "r.json"
    files.write_json(target, {"a": 1})

    def fail(f):
        f.write("partial")
        raise KeyboardInterrupt  # not an Exception: still cleaned up

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, fail, text=True)
    assert target.read_text() == json.dumps({"a": 1}, indent=2)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_write_json_is_json_dumps_with_its_indent(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"c": "é"}}
    files.write_json(tmp_path / "x.json", obj)
    assert (tmp_path / "x.json").read_text(encoding="utf-8") == json.dumps(obj, indent=2)
    files.write_json(tmp_path / "y.json", obj, indent=None)
    assert (tmp_path / "y.json").read_text(encoding="utf-8") == json.dumps(obj)


def test_the_temporary_is_redrawn_when_its_name_is_taken(tmp_path, monkeypatch):
    draws = iter(["0" * 16, "0" * 16, "1" * 16])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(draws))
    taken = tmp_path / f".out.bin.{'0' * 16}.tmp"
    taken.write_bytes(b"someone else's")
    files.atomic_write(tmp_path / "out.bin", lambda f: f.write(b"mine"))
    assert (tmp_path / "out.bin").read_bytes() == b"mine" and taken.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [taken.name, "out.bin"]


def test_save_figure_takes_the_format_from_the_suffix_and_dpi(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.0, 1.0))
    fig.add_subplot().plot([0, 1], [1, 0])
    files.save_figure(fig, tmp_path / "f.png")
    files.save_figure(fig, tmp_path / "f.PDF")
    files.save_figure(fig, tmp_path / "f.svg")
    files.save_figure(fig, tmp_path / "noext")
    files.save_figure(fig, tmp_path / "small.png", dpi=20)
    png = (tmp_path / "f.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (220, 110)  # 2 × 1 in at 110 dpi
    assert struct.unpack(">II", (tmp_path / "small.png").read_bytes()[16:24]) == (40, 20)
    assert (tmp_path / "f.PDF").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:500]
    assert (tmp_path / "noext").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_copy_stream_copies_every_byte(tmp_path):
    import io

    data = os.urandom(3 * 2**16 + 5)  # more than one copy buffer
    files.copy_stream(tmp_path / "d" / "blob", io.BytesIO(data))
    assert (tmp_path / "d" / "blob").read_bytes() == data


# ------------------------------------------------------------------------------------------------- memory


@pytest.fixture
def mallopt(monkeypatch):
    """A stand-in for glibc's mallopt recording its calls (the real one changes the process)."""
    calls, result = [], {"value": 1}

    def fake(param, value):
        calls.append((param, value))
        return result["value"]

    monkeypatch.setattr(memory, "_glibc_mallopt", lambda: fake)
    return calls, result


def test_keep_freed_memory_calls_mallopt_with_glibcs_numbers(mallopt):
    calls, result = mallopt
    assert memory.keep_freed_memory() is True
    # malloc.h: M_TRIM_THRESHOLD -1, M_MMAP_MAX -4; the trim threshold at INT_MAX, no mmap
    assert calls == [(-1, 2**31 - 1), (-4, 0)]
    calls.clear()
    assert memory.keep_freed_memory(False) is True
    assert calls == [(-1, 128 * 1024), (-4, 65536)]  # glibc's documented defaults
    result["value"] = 0  # mallopt's failure
    assert memory.keep_freed_memory(True) is False


def test_keep_freed_memory_changes_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_glibc_mallopt", lambda: None)
    assert memory.keep_freed_memory(True) is False and memory.keep_freed_memory(False) is False
    monkeypatch.setenv(memory.ENV, "1")
    assert memory.keep_freed_memory_from_env() is False


def test_keep_freed_memory_from_env(mallopt, monkeypatch):
    calls, _ = mallopt
    monkeypatch.delenv(memory.ENV, raising=False)
    assert memory.ENV == "SSMKIT_KEEP_FREED_MEMORY"
    assert memory.keep_freed_memory_from_env() is True and calls == [(-1, 2**31 - 1), (-4, 0)]
    calls.clear()
    monkeypatch.setenv(memory.ENV, " 0 ")
    assert memory.keep_freed_memory_from_env() is False and calls == []
    monkeypatch.setenv(memory.ENV, "1\n")
    assert memory.keep_freed_memory_from_env() is True and len(calls) == 2
    for bad in ("yes", "", "2"):
        monkeypatch.setenv(memory.ENV, bad)
        with pytest.raises(ValueError) as err:
            memory.keep_freed_memory_from_env()
        assert str(err.value) == f"SSMKIT_KEEP_FREED_MEMORY must be 0 or 1; got {bad!r}"


def test_mallopt_is_found_only_for_glibc(monkeypatch):
    found = memory._glibc_mallopt.__wrapped__
    for version in ("musl 1.2", "", None):
        monkeypatch.setattr(os, "confstr", lambda name, v=version: v)
        assert found() is None
    monkeypatch.setattr(os, "confstr", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert found() is None
    monkeypatch.delattr(os, "confstr")
    assert found() is None
    monkeypatch.undo()
    if (getattr(os, "confstr", lambda n: "")("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
        real = found()  # not called here: it would change this process's malloc
        assert real.argtypes == (ctypes.c_int, ctypes.c_int) and real.restype is ctypes.c_int
    with pytest.raises(ValueError, match=r"^enabled must be a bool; got int$"):
        memory.keep_freed_memory(1)
