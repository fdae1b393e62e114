"""Build and load the C kernels of the ``"native"`` backend (the CPU's compiled fast paths).

A kernel source (a ``.c`` file beside this module) is compiled once per machine with the system's C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``: the first that exists) into a shared library under the cache folder
(``$SSMKIT_NATIVE_CACHE``, default ``~/.cache/ssmkit/native``), and loaded with :mod:`ctypes`: no Python headers, no
build tool, no torch C++ extension. The library's name carries a hash of the source (and the shared headers beside it),
the compiler's version, the flags and the CPU's feature flags, so an edited source, another compiler or a cache folder shared with a different
CPU builds afresh (``-march=native`` code must never run on a CPU without those instructions). The library is
written under a temporary name (a new file's mode: readable by the users the umask allows), synced to disk and
renamed: a concurrent or interrupted build never leaves a half-written file, and a cached ELF library shorter than its
own header says (copied or synced by other tools) is built again rather than handed to dlopen.

``SSMKIT_NATIVE=0`` in the environment disables the backend (every build is refused with that reason).
``SSMKIT_NATIVE_CFLAGS`` adds compiler flags to every build (split as a shell would; part of the cache key): for
example ``-mno-avx512f`` builds the AVX2 code paths on a CPU with AVX-512, which is how the test suite checks them there.

Threads: the kernels are compiled with ``-fopenmp`` (their items run on the OpenMP runtime torch ships and uses:
:mod:`ssmkit.ops.native.parallel`); a compiler without OpenMP, or ``SSMKIT_NATIVE_OPENMP=0``, builds them without it
(``-fopenmp-simd`` only), and their calls are split over Python threads instead. Each library says which it is
(``native_openmp``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the annotation only: building needs no torch
    import torch

SOURCE_DIR = Path(__file__).resolve().parent
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=gnu11")
DTYPE_FLAGS = {"float32": (), "float64": ("-DSS_DOUBLE",)}


class NativeBuildError(RuntimeError):
    """The C kernels cannot be built or loaded here (the message says why)."""


def cache_dir() -> Path:
    """The folder of the built libraries: ``$SSMKIT_NATIVE_CACHE`` or ``~/.cache/ssmkit/native``."""
    return Path(os.environ.get("SSMKIT_NATIVE_CACHE") or Path.home() / ".cache" / "ssmkit" / "native")


def compiler() -> str:
    """The C compiler to use: ``$CC`` when set, else the first of cc, gcc, clang on the PATH (the resolved path of the
    program; ``$CC`` may name a launcher before it, ``CC="ccache gcc"``, whose further words :func:`_command` adds).

    Raises:
        NativeBuildError: none is found.
    """
    return _command()[0]


def _command() -> list[str]:
    """The compiler's command words: the resolved program, then the rest of ``$CC`` (split as a shell would)."""
    if os.environ.get("CC"):
        words = shlex.split(os.environ["CC"])
        path = shutil.which(words[0]) if words else None
        if path:
            return [path, *words[1:]]
    else:
        for name in ("cc", "gcc", "clang"):
            path = shutil.which(name)
            if path:
                return [path]
    raise NativeBuildError("no C compiler found (set CC, or install gcc or clang)")


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(cc: list[str]) -> str:
    out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.splitlines()[0] if out.stdout else " ".join(cc)


def _whole(path: Path) -> bool:
    """False when ``path`` is an ELF file cut short: shorter than the end of its section header table (e_shoff +
    e_shnum · e_shentsize, read from its first 64 bytes). dlopen of such a file can kill the process with SIGBUS
    instead of failing, so a cached library is checked before it is loaded. Files that are not ELF (other platforms'
    formats) are left to the loader."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] != b"\x7fELF":
        return True  # not ELF: left to the loader
    if len(head) < (64 if head[4] == 2 else 52):
        return False  # shorter than its own ELF header
    order = "little" if head[5] == 1 else "big"
    if head[4] == 2:  # ELFCLASS64
        shoff, shentsize, shnum = (int.from_bytes(head[a:b], order) for a, b in ((40, 48), (58, 60), (60, 62)))
    else:  # ELFCLASS32
        shoff, shentsize, shnum = (int.from_bytes(head[a:b], order) for a, b in ((32, 36), (46, 48), (48, 50)))
    return path.stat().st_size >= shoff + shnum * shentsize


def openmp_requested() -> bool:
    """Whether the kernels are built with OpenMP: yes unless ``SSMKIT_NATIVE_OPENMP=0`` (read at each build)."""
    return os.environ.get("SSMKIT_NATIVE_OPENMP", "1") != "0"


def _flag_sets(dtype: str) -> list[tuple[str, ...]]:
    """The flag sets to try in order: OpenMP (when requested) before none, ``-march=native`` before the portable
    flags (a compiler that does not know one of them gets the next set); ``$SSMKIT_NATIVE_CFLAGS`` ends each."""
    no_omp = tuple("-fopenmp-simd" if f == "-fopenmp" else f for f in FLAGS)
    sets = ([FLAGS] if openmp_requested() else []) + [no_omp]
    extra = tuple(shlex.split(os.environ.get("SSMKIT_NATIVE_CFLAGS", "")))
    return [(*fl, *DTYPE_FLAGS[dtype], *extra) for s in sets for fl in (s, tuple(f for f in s if f != "-march=native"))]


def library_path(source: str, dtype: str) -> Path:
    """Where the library of ``source`` (a file name beside this module) for ``dtype`` is, or will be, cached."""
    cc = _command()
    text = b"\0".join(f.read_bytes() for f in [SOURCE_DIR / source, *sorted(SOURCE_DIR.glob("*.h"))])  # + headers
    flags = " ".join(_flag_sets(dtype)[0]).encode()
    key = hashlib.sha256(b"\0".join([text, _version(cc).encode(), flags, _cpu_flags().encode()])).hexdigest()[:16]
    return cache_dir() / f"{Path(source).stem}-{dtype}-{key}.so"


def build(source: str, dtype: str) -> Path:
    """Compile ``source`` for ``dtype`` ("float32" or "float64") unless its library is cached; return its path.

    Raises:
        NativeBuildError: the backend is disabled, no compiler is found, or the compiler fails (its message
            is included).
    """
    if os.environ.get("SSMKIT_NATIVE", "1") == "0":
        raise NativeBuildError("disabled by SSMKIT_NATIVE=0")
    if dtype not in DTYPE_FLAGS:
        raise ValueError(f"dtype must be one of {tuple(DTYPE_FLAGS)}; got {dtype!r}")
    path = library_path(source, dtype)
    if path.exists() and _whole(path):
        return path  # (a library cut short on disk, by a copy or a crash, is built again and replaced)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the temporary as a new file (mode 0o666 less the umask; mkstemp's 0o600 made the library unreadable, so
        # unloadable, by other users of a shared cache)
        tmp = str(path.parent / f"{path.stem}.{secrets.token_hex(8)}.tmp")
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as err:
        raise NativeBuildError(f"cannot write the library into {path.parent} (set SSMKIT_NATIVE_CACHE to a writable "
                               f"folder): {err}") from err
    try:
        cc = _command()
        for flags in _flag_sets(dtype):
            cmd = [*cc, *flags, "-o", tmp, str(SOURCE_DIR / source), "-lm"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if out.returncode == 0:
                break
        else:
            raise NativeBuildError(f"{' '.join(cmd)} failed:\n{out.stderr.strip()[-2000:]}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data on disk before the name: a crash must not leave the name on a short file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(source: str, dtype: str) -> ctypes.CDLL:
    """Build (if needed) and load the library of ``source`` for ``dtype``.

    Raises:
        NativeBuildError: as :func:`build`, or the library does not load.
    """
    path = build(source, dtype)
    try:
        return ctypes.CDLL(str(path))
    except OSError as err:
        raise NativeBuildError(f"cannot load {path}: {err}") from err


_BOUND: dict[tuple[str, str], dict] = {}


def bind(source: str, dtype: torch.dtype, signatures: dict[str, tuple[list, object]]) -> dict:
    """The C functions of ``source`` for a torch dtype (float32 -> the ``_f32`` symbols, float64 -> ``_f64``), with
    their ctypes argument and result types set, and ``"openmp"``: whether the library was built with OpenMP; built and
    loaded on first use, then cached.

    Args:
        source: the kernel's file name beside this module.
        dtype: torch.float32 or torch.float64.
        signatures: function name (without the dtype suffix) -> (argtypes, restype).

    Raises:
        NativeBuildError: as :func:`load`.
    """
    import torch

    name = {torch.float32: "float32", torch.float64: "float64"}[dtype]
    key = (source, name, openmp_requested())
    if key not in _BOUND:
        lib = load(source, name)
        suffix = "f32" if name == "float32" else "f64"
        openmp = getattr(lib, f"native_openmp_{suffix}")
        openmp.argtypes, openmp.restype = [], ctypes.c_int
        fns: dict = {"openmp": bool(openmp())}
        for fn_name, (argtypes, restype) in signatures.items():
            fn = getattr(lib, f"{fn_name}_{suffix}")
            fn.argtypes, fn.restype = argtypes, restype
            fns[fn_name] = fn
        _BOUND[key] = fns
    return _BOUND[key]
