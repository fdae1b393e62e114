"""ssmkit.memory.keep_freed_memory: a large tensor allocated after one of its size was freed reuses mapped pages.

The page faults of the process (``getrusage``'s minor faults) are the independent measure: a fresh 64 MiB block
costs one fault per 4 KiB page when first written, a reused one none. Each check runs in a fresh interpreter,
since the setting is process-wide.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

import ssmkit
from tests.interpreters import run_python
from ssmkit import memory

SRC = str(pathlib.Path(ssmkit.__file__).resolve().parents[1])

PROBE = """
import json, resource, sys, torch
from ssmkit.memory import keep_freed_memory

def faults(n=16 * 2**20):  # one 64 MiB tensor, written, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(n)
    block.fill_(1.0)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

torch.set_num_threads(1)
result = {"default": min(faults() for _ in range(3))}
result["applied"] = keep_freed_memory(True)
for _ in range(2):  # the heap grows to hold the block once
    faults()
result["kept"] = min(faults() for _ in range(3))
print(json.dumps(result))
"""

PAGES = 16 * 2**20 * 4 // 4096  # 4 KiB pages in the 64 MiB block


def _glibc() -> bool:
    return hasattr(os, "confstr") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


@pytest.mark.skipif(not _glibc(), reason="the setting exists for glibc's malloc only")
def test_freed_blocks_are_reused_without_new_page_faults():
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = run_python(["-c", PROBE], env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["applied"] is True
    assert result["default"] >= PAGES // 2, result  # glibc's default: mmap per block, every page new
    assert result["kept"] <= PAGES // 50, result  # kept: the freed pages are reused


def test_keep_freed_memory_rejects_a_non_bool():
    with pytest.raises(ValueError, match="enabled must be a bool"):
        memory.keep_freed_memory(1)


def test_the_environment_switch_is_read_and_checked(monkeypatch):
    monkeypatch.setenv(memory.ENV, "0")
    assert memory.keep_freed_memory_from_env() is False  # opted out: nothing applied
    monkeypatch.setenv(memory.ENV, "yes")
    with pytest.raises(ValueError, match="SSMKIT_KEEP_FREED_MEMORY must be 0 or 1"):
        memory.keep_freed_memory_from_env()


def test_the_command_reports_a_malformed_switch_as_a_usage_error(monkeypatch, capsys):
    from ssmkit.cli import main

    monkeypatch.setenv(memory.ENV, "on")
    assert main(["--help"]) == 2
    assert "SSMKIT_KEEP_FREED_MEMORY must be 0 or 1; got 'on'" in capsys.readouterr().err
