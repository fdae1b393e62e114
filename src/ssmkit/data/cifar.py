"""CIFAR-10 from the "python version" batches as pixel sequences: sCIFAR (colour, 1024 steps of 3 channels; S4,
arXiv 2111.00396 §4.2) and LRA Image (grayscale, 1024 steps of 1 channel; Tay et al. 2021, arXiv 2011.04006).

Files (``cifar-10-python.tar.gz`` unpacked): ``<root>/cifar-10-batches-py/data_batch_1 .. 5`` and ``test_batch``,
each a pickled dict with ``data`` (10000, 3072) uint8 (the red, green and blue 32 × 32 planes) and ``labels``.
The pickles are read with an unpickler that accepts only the numpy array and dtype constructors, so a crafted
file cannot run code. A file that is not such a pickle (cut short, another format) or holds labels outside 0..9 is
refused with a ``ValueError`` naming it.

Normalisation: sCIFAR standardises each channel with the CIFAR-10 training mean (0.4914, 0.4822, 0.4465) and
standard deviation (0.2470, 0.2435, 0.2616); LRA Image converts to grayscale with the ITU-R 601 luma weights
(0.299, 0.587, 0.114; rounded to uint8) and standardises with mean 122.6 / 255 and standard deviation 61.0 / 255,
as S4's LRA loader does. Validation: 5,000 training images split off with a seeded permutation (S4: 45,000 /
5,000).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import pickle

import numpy as np
import torch

from ssmkit.data.sequences import ScaledSequences, split_off
from ssmkit.data.store import data_root
from ssmkit.data.task import FileTask, TaskInfo, check_labels, register_task

BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _numpy_core():
    import numpy

    return getattr(numpy, "_core", None) or numpy.core


class _Refused(pickle.UnpicklingError):
    """A global the CIFAR unpickler does not accept (kept an ``UnpicklingError``)."""


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays; any other global is refused."""

    def find_class(self, module, name):
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): _numpy_core().multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_core().multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): _numpy_core().multiarray.scalar,
            ("numpy._core.multiarray", "scalar"): _numpy_core().multiarray.scalar,
            ("_codecs", "encode"): __import__("codecs").encode,
        }
        if (module, name) not in allowed:
            raise _Refused(f"refusing to load {module}.{name} from a CIFAR batch")
        return allowed[(module, name)]


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch (arrays only; no code can run).

    Args:
        path: e.g. ``cifar-10-batches-py/data_batch_1``.

    Returns:
        images (B, 32, 32, 3) uint8 and labels (B,) int64.
    """
    with open(path, "rb") as f:
        try:
            batch = _ArraysOnly(f, encoding="bytes").load()
        except _Refused as error:
            raise _Refused(f"{path}: {error}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                UnicodeError, OverflowError) as error:  # what unpickling a cut-short or foreign file raises
            raise ValueError(f"{path}: not a CIFAR-10 python batch, or cut short ({type(error).__name__}: {error}); "
                             "extract cifar-10-python.tar.gz again") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict; got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: expected the keys 'data' and 'labels'; got {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data (B, 3072) and B labels; got {data.shape} and {labels.shape}")
    check_labels(labels, 10, path)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


@dataclasses.dataclass(frozen=True)
class _Cifar(FileTask):
    n_val: int = 5000
    seed: int = 42

    def folder(self, root: str | os.PathLike | None = None) -> pathlib.Path:
        """``<root>/cifar-10-batches-py``.

        Args:
            root: the data root.
        """
        return data_root(root) / "cifar-10-batches-py"

    def required(self) -> list[str]:
        """The six batches."""
        return list(BATCHES)

    def pixels(self, images: np.ndarray) -> tuple[torch.Tensor, object, object]:
        raise NotImplementedError

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, ScaledSequences]:
        """Read the batches: train (50,000 − n_val), val (n_val), test (10,000).

        Args:
            root: the data root.
        """
        self.check_present(root)
        parts = [read_cifar_batch(self.folder(root) / b) for b in BATCHES]
        sets = []
        for group in (parts[:5], parts[5:]):
            images = np.concatenate([p[0] for p in group])
            x, scale, shift = self.pixels(images)
            sets.append(ScaledSequences(x, torch.from_numpy(np.concatenate([p[1] for p in group])), scale, shift))
        train, val = split_off(len(sets[0]), self.n_val, self.seed)
        return {"train": sets[0].subset(train), "val": sets[0].subset(val), "test": sets[1]}


_WHERE = "the CIFAR-10 python batches (data_batch_1..5, test_batch from cifar-10-python.tar.gz)"


@register_task("scifar")
@dataclasses.dataclass(frozen=True)
class SCIFARTask(_Cifar):
    """Sequential CIFAR-10 in colour: (B, 1024, 3), each channel standardised.

    Args:
        n_val: training images moved to the validation split.
        seed: the seed of that split.
    """

    def info(self) -> TaskInfo:
        """Float inputs (B, 1024, 3), 10 classes."""
        return TaskInfo(self.name, "sCIFAR (colour)", "files", "classify", 1024, 3, None, 10,
                        "CIFAR-10 (Krizhevsky 2009) python batches; S4 (arXiv 2111.00396)", _WHERE)

    def pixels(self, images: np.ndarray):
        """(B, 32, 32, 3) uint8 to (B, 1024, 3) with the per-channel standardisation."""
        x = torch.from_numpy(images.reshape(len(images), 1024, 3).copy())  # (B, L, 3) raster order
        std = torch.tensor(STD)
        return x, 1 / (255 * std), -torch.tensor(MEAN) / std


@register_task("lra_image")
@dataclasses.dataclass(frozen=True)
class LRAImageTask(_Cifar):
    """LRA Image: grayscale CIFAR-10, (B, 1024, 1).

    Args:
        n_val: training images moved to the validation split.
        seed: the seed of that split.
    """

    def info(self) -> TaskInfo:
        """Float inputs (B, 1024, 1), 10 classes."""
        return TaskInfo(self.name, "LRA Image (grayscale CIFAR-10)", "files", "classify", 1024, 1, None, 10,
                        "CIFAR-10 python batches; LRA (arXiv 2011.04006)", _WHERE)

    def pixels(self, images: np.ndarray):
        """(B, 32, 32, 3) uint8 to grayscale (B, 1024, 1)."""
        gray = np.rint(images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
        x = torch.from_numpy(gray.reshape(len(images), 1024, 1))  # (B, L, 1)
        return x, 1 / 61.0, -122.6 / 61.0
