"""scripts/sysid_peers.py's record batching (the script runs deepSI and dynoNet in their own environment; only its
pure helper is tested here, which needs neither)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from ssmkit.sysid.records import IORecord

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "sysid_peers.py"


def _script():
    spec = importlib.util.spec_from_file_location("sysid_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(length: int, offset: float) -> IORecord:
    t = torch.arange(length, dtype=torch.float64)[:, None]
    return IORecord(t + offset, torch.cat([-t, 2 * t + offset], 1), 1.0, f"r{offset}")


def test_batch_records_stacks_equal_lengths_as_separate_sequences():
    records = [_record(5, 0.0), _record(3, 10.0), _record(5, 100.0)]
    batches = _script().batch_records(records)
    assert [tuple(u.shape) for u, _ in batches] == [(2, 5, 1), (1, 3, 1)]
    assert [tuple(y.shape) for _, y in batches] == [(2, 5, 2), (1, 3, 2)]
    (u5, y5), (u3, y3) = batches
    # each sequence is one record, in order, from its own first sample (no concatenation across records)
    assert torch.equal(u5[0, :, 0], torch.arange(5.0, dtype=torch.float64))
    assert torch.equal(u5[1, :, 0], torch.arange(5.0, dtype=torch.float64) + 100)
    assert torch.equal(y5[1, :, 1], 2 * torch.arange(5.0, dtype=torch.float64) + 100)
    assert torch.equal(u3[0, :, 0], torch.arange(3.0, dtype=torch.float64) + 10)


def test_batch_records_rejects_no_records():
    with pytest.raises(ValueError, match="at least one record"):
        _script().batch_records([])


def test_per_output_keeps_single_outputs_as_floats_and_lists_channels():
    per_output = _script().per_output
    assert per_output(torch.tensor(0.25)) == 0.25 and per_output(torch.tensor([1.5])) == 1.5
    assert per_output(torch.tensor([0.5, 2.0, 3.25], dtype=torch.float64)) == [0.5, 2.0, 3.25]
