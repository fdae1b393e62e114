"""The native build cache (``SSMKIT_NATIVE_CACHE``) under concurrent builds, missing or unwritable folders, no
compiler, and libraries damaged on disk.

Most tests compile a one-function C file (``tiny.c``, 0.1 s) through :func:`ssmkit.ops.native.build.build` with the
module's ``SOURCE_DIR`` pointed at it, so they exercise the build's file handling, not the kernels (whose 10-15 s
compiles ``tests/ops/test_native.py`` pays). docs/design.md, "Probe 14".
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.native import build, gate
from tests.conftest import DEVICE, rel_err

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.skipif(DEVICE.type != "cpu" or sys.platform == "win32", reason="the native build on a POSIX CPU"),
    pytest.mark.skipif(not build.shutil.which(os.environ.get("CC") or "cc"), reason="needs a C compiler"),
]


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    """A source folder with tiny.c (probe14_answer() = 42), as ``build.SOURCE_DIR``; returns the folder."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "tiny.c").write_text("int probe14_answer(void) { return 42; }\n")
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    return src


# build.py needs only the standard library: loaded by its path, without torch, a process starts in ~0.1 s
LOAD_TINY = textwrap.dedent("""
    import importlib.util, sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("native_build", sys.argv[2])
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.SOURCE_DIR = Path(sys.argv[1])
    print(build.load("tiny.c", "float32").probe14_answer())
""")


def python(code: str, *args: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-c", code, *args, build.__file__]
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=120)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def slow_compiler(folder: Path, pause: float) -> Path:
    """A C compiler that compiles into a side file, then writes its output in two halves ``pause`` seconds apart (as
    a linker writing a large library over time); ``--version`` is the real compiler's."""
    real = build.compiler()
    script = folder / "slowcc"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        out=""; prev=""
        for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
        [ -z "$out" ] && exec "{real}" "$@"
        "{real}" "$@" && "{real}" "$@" -o "$out.whole" || exit 1
        size=$(wc -c < "$out.whole"); half=$((size / 2))
        head -c $half "$out.whole" > "$out"; sleep {pause}; tail -c +$((half + 1)) "$out.whole" >> "$out"
        rm -f "$out.whole"
    """))
    script.chmod(0o755)
    return script


def test_two_processes_building_into_an_empty_cache_never_expose_a_partial_library(tmp_path, tiny, monkeypatch):
    # the cache folder does not exist yet (two levels); both processes find no library and build it at once, the
    # compiler writing slowly; the library's name must appear only whole, and both processes load a whole library
    cache = tmp_path / "new" / "cache"
    cc = slow_compiler(tmp_path, 1.0)
    env = {"SSMKIT_NATIVE_CACHE": str(cache), "CC": str(cc)}
    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(cache))
    monkeypatch.setenv("CC", str(cc))
    final = build.library_path("tiny.c", "float32")
    procs = [python(LOAD_TINY, str(tiny), env=env, wait=False) for _ in range(2)]
    sizes = set()
    while any(p.poll() is None for p in procs):
        if final.exists():
            sizes.add(final.stat().st_size)
        time.sleep(0.005)
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == ["42", "42"]
    assert sizes <= {final.stat().st_size}  # never seen part-written
    assert [p.name for p in cache.iterdir()] == [final.name]  # no temporary left behind


def test_threads_building_one_library_at_once_load_it(tmp_path, tiny, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(slow_compiler(tmp_path, 0.3)))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: build.load("tiny.c", "float32").probe14_answer(), range(4)))
    assert answers == [42] * 4
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_library_is_readable_by_everyone_the_umask_allows(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SSMKIT_NATIVE_CFLAGS", raising=False)
    old = os.umask(0o022)
    try:
        path = build.build("tiny.c", "float32")
        direct = tmp_path / "direct.so"  # the reference: the same compiler writing a fresh file itself
        subprocess.run([build.compiler(), *build._flag_sets("float32")[-1], "-o", str(direct), str(tiny / "tiny.c")],
                       check=True, capture_output=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(direct.stat().st_mode) == 0o755
    assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(stat.S_IMODE(direct.stat().st_mode))


def test_a_truncated_library_in_the_cache_does_not_crash_the_process(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path / "cache"))
    path = build.build("tiny.c", "float32")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code = LOAD_TINY.replace('print(build.load("tiny.c", "float32").probe14_answer())', textwrap.dedent("""
        try:
            print(build.load("tiny.c", "float32").probe14_answer())
        except build.NativeBuildError as err:
            print("refused:", err)
    """))
    out = python(code, str(tiny), env={"SSMKIT_NATIVE_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, (out.returncode, out.stderr[-500:])
    assert out.stdout.strip() == "42"  # rebuilt (build._whole found it short), not handed to dlopen
    assert path.stat().st_size == len(data)


# ---------------------------------------------------------------------------------------------------------------------
# The backend's fallback: "auto" keeps the PyTorch path, a forced "native" raises with the reason


@pytest.fixture
def fresh_gate(monkeypatch):
    """Forget which kernels were built and checked in this process (they are decided once per process)."""
    monkeypatch.setattr(gate, "_STATUS", {})
    monkeypatch.setattr(build, "_BOUND", {})


def scan_inputs():
    g = torch.Generator().manual_seed(0)
    H, N = 5, 4
    A = torch.polar(0.5 + 0.4 * torch.rand(H, N, generator=g, dtype=torch.float64),
                    torch.randn(H, N, generator=g, dtype=torch.float64)).to(torch.complex64)
    B = torch.randn(H, N, generator=g, dtype=torch.complex64)
    C = torch.randn(H, N, generator=g, dtype=torch.complex64)
    u = torch.randn(2, 13, H, generator=g)
    return u, A, B, C


def assert_auto_falls_back_and_native_raises(match: str) -> None:
    u, A, B, C = scan_inputs()
    y, h = ops.ssm_scan(u, A, B, C)  # "auto": the chunked path
    y_ref, h_ref = ops.ssm_scan(u.double(), A.to(torch.complex128), B.to(torch.complex128), C.to(torch.complex128),
                                backend="reference")
    assert rel_err(y, y_ref) < 1e-5 and rel_err(h, h_ref) < 1e-5  # float32 against the float64 loop, L 13
    with pytest.raises(RuntimeError, match=match):
        ops.ssm_scan(u, A, B, C, backend="native")


def test_without_a_compiler_auto_falls_back_and_native_says_why(tmp_path, fresh_gate, monkeypatch):
    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc nor clang
    ok, why = gate.native_status("ssm_scan", torch.float32)
    assert not ok and why == "no C compiler found (set CC, or install gcc or clang)"
    assert_auto_falls_back_and_native_raises("cannot run here: no C compiler found")


def unwritable(monkeypatch, folder: Path) -> None:
    """Make ``build`` find ``folder`` unwritable, as for a user without write permission (the tests may run as root,
    whom permission bits do not stop): creating its temporary raises PermissionError."""
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and str(path).startswith(str(folder)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(build.os, "open", refuse)


def test_an_unwritable_empty_cache_falls_back(tmp_path, fresh_gate, monkeypatch):
    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path))
    unwritable(monkeypatch, tmp_path)
    ok, why = gate.native_status("ssm_scan", torch.float32)
    assert not ok and "Permission denied" in why and str(tmp_path) in why
    assert_auto_falls_back_and_native_raises("Permission denied")


def test_an_unwritable_cache_is_reported_as_such(tmp_path, fresh_gate, monkeypatch):
    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path))
    unwritable(monkeypatch, tmp_path)
    ok, why = gate.native_status("ssm_scan", torch.float32)
    assert not ok and "smoke call" not in why and "SSMKIT_NATIVE_CACHE" in why


def test_cc_may_name_a_launcher_before_the_compiler(tmp_path, tiny, monkeypatch):
    # CC="ccache gcc" is the usual way to put a launcher in front of a compiler; `env` stands in for ccache here
    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", f"env {build.compiler()}")
    assert build._command()[1:] == [os.environ["CC"].split()[1]]
    assert build.load("tiny.c", "float32").probe14_answer() == 42
