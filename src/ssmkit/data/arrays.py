"""Your own sequence data as a task: numpy arrays in an ``.npz`` file or a folder of ``.npy`` files (``arrays``), or
in memory (:func:`from_arrays`), trained by ``ssmkit train`` like a named task.

    ssmkit train --task arrays --task_options.path my.npz --model s4d --train.max_steps 2000
    task = ssmkit.data.from_arrays(x_train, y_train)            # the same task object, without a file

The arrays, by name (an ``.npz`` archive holds them as keys, a folder as ``<name>.npy`` files; numpy's formats only,
read with ``allow_pickle=False``; any other name is refused, so a misspelt ``x_valid`` is not silently ignored):

- ``x_train``, ``y_train`` (required); ``x_val``, ``y_val`` and ``x_test``, ``y_test`` (optional, in pairs).
- inputs ``x``: integer token ids (B, L), or floats (B, L) (one feature a step) or (B, L, d_input).
- targets ``y``, and the target they give (``target="auto"``): integers (B,) one class a sequence
  (``"classify"``); integers (B, L) one class a step (``"tokens"``; -100 marks a step without a loss); floats
  (B,) one value a sequence, floats (B, L) or (B, L, d_output) values a step (``"regress"``; the per-step ones set
  ``TaskInfo.per_step``, so the model keeps every step whatever ``pool`` says).
- ``lengths_train``, ``lengths_val``, ``lengths_test`` (optional): (B,) ints in [1, L], each sequence's length; the
  steps after it are padding and may hold anything (NaN included). Token inputs: they are replaced by the padding id
  (``pad``, or a new id ``vocab`` when ``pad`` is -1); with per-step values (regress), padded token inputs (by
  ``lengths_*`` or ``pad``) carry each sequence's number of real tokens too, (inputs, targets, lengths), so that the
  padding's values are not scored. Float inputs: they are set to 0 and every split is
  (inputs, targets, lengths) (a split without its own lengths file has every sequence full length, L), which
  ``ssmkit.train.fit`` hands to the model (``SequenceModel.forward(..., lengths=)``: pooling, bidirectional layers
  and batch norms skip the padding) and to the objective. Either way per-step targets after a length become -100
  (classes) or 0 and unscored (values, by the lengths).
- ``intervals_train``, ``intervals_val``, ``intervals_test`` (optional; irregularly sampled sequences): numbers (B, L),
  finite and > 0, the time from each sample's predecessor in nominal sampling periods (the first from the
  sequence's start: 1 reads it as the regular layer's first step), as ``SequenceModel.forward(..., intervals=)``.
  With ``intervals_train`` every split given as files needs its own (held-out splits take x_train's rows), and every
  split is then (inputs, targets, intervals), which ``ssmkit.train.fit`` hands to the model; its layers must take
  intervals (S4D, S5, DSS, S4, LRU, EMA, DLR, Mamba, Mamba-2, RG-LRU). The gaps are kept in float64 and never
  normalised; those of steps after a sequence's length (padding) may hold anything and are set to 1. With float
  lengths too, a split is (inputs, targets, intervals, lengths).

The conventions (docs/design.md, "Your own sequence data"):

- Held-out splits. A split the files lack is drawn from the B samples of ``x_train``, seeded:
  ``perm = numpy.random.default_rng(seed).permutation(B)``; the test split is ``perm[:n_test]``, the validation
  split ``perm[n_test:n_test + n_val]`` and the training split the rest, each in file order, with
  ``n_test = round(test_fraction * B)`` (0 when ``x_test`` is given) and ``n_val = round(val_fraction * B)`` (0
  when ``x_val`` is given). The defaults hold out 20 % for test (as ``ssmkit.sysid.from_arrays``) and 10 % for
  validation; ``val_fraction=0`` trains without a validation split, ``test_fraction=0`` without a test split.
- Classes and vocabulary. ``n_classes`` (classify, tokens) is the largest label of ``y_train`` plus one, and the
  vocabulary the largest token of ``x_train`` plus one (plus the padding id), unless given; a label or token of
  ``y_val``/``y_test``/``x_val``/``x_test`` outside them is refused (a ValueError naming the split, the value and
  the option to set), as the model's head or embedding has no row for it.
- Normalisation (``normalise=True``, float inputs): each input feature is standardised with the mean and the
  population standard deviation (ddof 0) of the *training split* (after the hold-out), over its samples and steps
  (the steps within the lengths, with ``lengths_*``), as scikit-learn's ``StandardScaler``; a feature constant over
  the training split has its value as its mean and a scale of 1. ``task.mean`` and ``task.std`` (float64
  (d_input,)) hold them once the data is loaded. Targets are never rescaled.
- Padding. ssmkit's models skip right padding by its token id (``TaskInfo.pad_id``, the LRA Text convention) or by
  each sequence's length (``SequenceModel.forward(..., lengths=)``). Token inputs: right-padded with ``pad``, or
  cut by ``lengths_*``; the padding must trail each sequence (a pad id before a real token is refused) and every
  sequence must keep one real token. Float inputs: cut by ``lengths_*`` (carried in the splits, as above); ``pad``
  is refused (a float has no padding value).
- Values. Float inputs and targets must be finite (within the lengths); integer labels and tokens must be >= 0 (-100
  allowed for per-step targets); bool, complex, text and object arrays are refused, as are integer features
  (B, L, d_input) (cast them to float). Every split must hold at least one sample, and ``x`` and ``y`` the same number B.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ssmkit.data.store import DataMissingError
from ssmkit.data.task import IGNORE_INDEX, Task, TaskInfo, register_task

SPLITS = ("train", "val", "test")
KEYS = (tuple(f"{p}_{s}" for s in SPLITS for p in ("x", "y")) + tuple(f"lengths_{s}" for s in SPLITS)
        + tuple(f"intervals_{s}" for s in SPLITS))
TARGETS = ("auto", "classify", "tokens", "regress")
_NEEDS = "x_train, y_train (optional: x_val, y_val, x_test, y_test, lengths_*, intervals_*)"
_WHERE = "the .npz file or .npy folder of --task_options.path"


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file or of a folder of ``<name>.npy`` files, by name, read without pickle.

    Args:
        path: the ``.npz`` file or the folder.

    Returns:
        {name: array} for the names of :data:`KEYS` found (any other name is refused).

    Raises:
        DataMissingError: nothing at ``path``.
        ValueError: a file that is not ``.npz`` (nor a folder), a file numpy cannot read, an array of Python objects
            (it would need pickle), or a name not in :data:`KEYS`.
    """
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise DataMissingError(f"arrays: no file or folder at {os.fspath(p)!r} (give {_WHERE})")
    if p.is_dir():
        files = {f.name[:-len(".npy")]: f for f in sorted(p.iterdir()) if f.name.endswith(".npy")}
        names = list(files)
    elif p.suffix.lower() == ".npz":
        files = None
        try:
            archive = np.load(p, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise ValueError(f"arrays: {p} is not an .npz archive numpy can read ({error})") from None
        names = list(archive.files)
    else:
        raise ValueError(f"arrays: path must be an .npz file (numpy.savez) or a folder of .npy files (x_train.npy, "
                         f"y_train.npy, ...); got {os.fspath(p)!r}")
    unknown = sorted(set(names) - set(KEYS))
    if unknown:
        raise ValueError(f"arrays: {p} holds arrays {unknown}, which are not read: the names are {', '.join(KEYS)} "
                         "(rename or remove the others)")
    out = {}
    for name in names:
        try:
            out[name] = np.load(files[name], allow_pickle=False) if files is not None else archive[name]
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"arrays: {name} in {p} cannot be read without pickle ({error}); save plain numeric "
                             "arrays (numpy.savez, numpy.save)") from None
    if files is None:
        archive.close()
    return out


def _as_array(value: Any, name: str) -> np.ndarray:
    """``value`` (numpy array, tensor, nested lists) as a numpy array; ValueError for ragged or object data."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array of numbers; got {type(value).__name__} ({error})") from None
    return a


def _check_dtype(a: np.ndarray, name: str, allowed: str) -> None:
    """ValueError unless ``a``'s dtype kind is in ``allowed`` ("i": integers, "f": floats)."""
    kind = "i" if a.dtype.kind in "iu" else a.dtype.kind
    if kind not in allowed:
        want = " or ".join({"i": "integers", "f": "floats"}[k] for k in allowed)
        raise ValueError(f"{name} must hold {want}; got dtype {a.dtype}"
                         + (" (cast bool labels with .astype(int))" if a.dtype.kind == "b" else ""))


def _check_finite(a: np.ndarray, name: str, within: np.ndarray | None = None) -> None:
    """ValueError naming the first non-finite value of ``a``, at the steps ``within`` (B, L) marks (None: anywhere;
    the steps after a sequence's length may hold anything)."""
    bad = ~np.isfinite(a)
    if within is not None:
        bad &= within.reshape(*within.shape, *([1] * (a.ndim - 2)))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or inf); the first is {a[where]} at "
                         f"index {where}: fill or drop them first")


@register_task("arrays")
@dataclasses.dataclass
class ArraysTask(Task):
    """Your own arrays (module docstring): ``x_train``, ``y_train`` and optional validation and test arrays from an
    ``.npz`` file or a folder of ``.npy`` files, or given to :func:`from_arrays`.

    Args:
        path: the ``.npz`` file or the folder of ``.npy`` files ("" for none: then :func:`from_arrays` gives the
            arrays).
        target: ``"auto"`` (from ``y_train``: integers (B,) classify, integers (B, L) tokens, floats regress),
            ``"classify"``, ``"tokens"`` or ``"regress"`` (integer-valued float labels are taken as classes; integer
            targets as values).
        val_fraction: the fraction of ``x_train``'s samples held out for validation when there is no ``x_val``, in
            [0, 1) (default 0.1; 0: no validation split).
        test_fraction: the fraction held out for test when there is no ``x_test``, in [0, 1) (default 0.2, as
            ``ssmkit.sysid.from_arrays``; 0: no test split).
        seed: the seed of the hold-out permutation (default 0).
        normalise: standardise float inputs with the training split's per-feature mean and standard deviation
            (default True).
        n_classes: classes of classify and tokens targets (default 0: the largest label of ``y_train`` plus one).
        vocab: token ids of token inputs (default 0: the largest token of ``x_train`` plus one); the model's
            vocabulary also holds the padding id (``pad``, or the new id ``vocab`` that ``lengths_*`` pad with).
        pad: the token id that right-pads token inputs (default -1: none, or a new id for ``lengths_*``).
    """

    shapes_from_data: ClassVar[bool] = True  # ``ssmkit tasks``: without data, no shapes to show

    path: str = ""
    target: str = "auto"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    normalise: bool = True
    n_classes: int = 0
    vocab: int = 0
    pad: int = -1
    _given: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _loaded: tuple | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in TARGETS:
            raise ValueError(f"arrays: option target must be one of {TARGETS}; got {self.target!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"arrays: option {name} must be in [0, 1); got {value!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"arrays: val_fraction + test_fraction must be < 1 (something must train); got "
                             f"{self.val_fraction} + {self.test_fraction}")
        if self.seed < 0:
            raise ValueError(f"arrays: option seed must be an int >= 0; got {self.seed}")
        for name in ("n_classes", "vocab"):
            if getattr(self, name) < 0:
                raise ValueError(f"arrays: option {name} must be >= 1, or 0 to infer it; got {getattr(self, name)}")
        if self.pad < -1:
            raise ValueError(f"arrays: option pad must be a token id >= 0, or -1 for none; got {self.pad}")

    @property
    def mean(self) -> np.ndarray | None:
        """The training split's per-feature mean (d_input,) that standardised the inputs, or None (token inputs,
        ``normalise=False``)."""
        return self._load()[2]

    @property
    def std(self) -> np.ndarray | None:
        """The training split's per-feature standard deviation (d_input,) (ddof 0; 1 for a constant feature), or
        None."""
        return self._load()[3]

    def folder(self, root: str | os.PathLike | None = None) -> str:
        """Where the arrays are read from (the ``path`` option), for ``ssmkit tasks``.

        Args:
            root: unused (the arrays are where ``path`` says, not under the data root).
        """
        return self.path or _WHERE

    def present(self, root: str | os.PathLike | None = None) -> bool:
        """Whether arrays were given (``from_arrays``) or ``path`` exists.

        Args:
            root: unused.
        """
        return self._given is not None or (bool(self.path) and pathlib.Path(self.path).expanduser().exists())

    def info(self) -> TaskInfo:
        """What the arrays give (read on the first call); without ``path`` or arrays, a placeholder row for
        ``ssmkit tasks`` (length 1, one feature, one class)."""
        if self._given is None and not self.path:
            return TaskInfo(name=self.name, title="your own arrays (--task_options.path FILE.npz)", kind="files",
                            target="classify", length=1, d_input=1, vocab_size=None, n_classes=1,
                            source="numpy arrays the user gives", needs=_NEEDS)
        return self._load()[0]

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, TensorDataset]:
        """The train / val / test datasets of the arrays (module docstring); a split held out at fraction 0 is left
        out.

        Args:
            root: unused (the arrays are where ``path`` says).
        """
        return {split: TensorDataset(*tensors) for split, tensors in self._load()[1].items()}

    def _load(self) -> tuple:
        if self._loaded is None:
            if self._given is not None:
                arrays, where = self._given, "the arrays given to ssmkit.data.from_arrays"
            elif self.path:
                arrays, where = read_arrays(self.path), os.fspath(pathlib.Path(self.path).expanduser().resolve())
            else:
                raise DataMissingError(f"arrays: no data: give {_WHERE}, or call ssmkit.data.from_arrays")
            self._loaded = _build(self, arrays, where)
        return self._loaded


def _build(task: ArraysTask, arrays: dict[str, Any], where: str) -> tuple:
    """(TaskInfo, {split: (x, y) or (x, y, intervals) tensors}, mean, std) of the user's arrays, checked (module
    docstring)."""
    found = sorted(k for k, v in arrays.items() if v is not None)
    if "x_train" not in found or "y_train" not in found:
        raise ValueError(f"arrays: {where} must hold x_train and y_train; found {found or 'no arrays'}")
    a = {k: _as_array(arrays[k], k) for k in found}
    for split in ("val", "test"):
        if (f"x_{split}" in a) != (f"y_{split}" in a):
            have, lack = (f"x_{split}", f"y_{split}") if f"x_{split}" in a else (f"y_{split}", f"x_{split}")
            raise ValueError(f"arrays: {where} holds {have} but not {lack}; found {found}")
        if f"lengths_{split}" in a and f"x_{split}" not in a:
            raise ValueError(f"arrays: lengths_{split} is given without x_{split}; found {found}")
        if f"intervals_{split}" in a and f"x_{split}" not in a:
            raise ValueError(f"arrays: intervals_{split} is given without x_{split}; found {found}")
        if f"x_{split}" in a and (f"intervals_{split}" in a) != ("intervals_train" in a):
            have, lack = ("intervals_train", f"intervals_{split}") if "intervals_train" in a else (
                f"intervals_{split}", "intervals_train")
            raise ValueError(f"arrays: {where} holds {have} but not {lack}: every split of irregularly sampled data "
                             "needs its intervals (a split without them would run as regularly sampled); found "
                             f"{found}")

    x0 = a["x_train"]
    _check_dtype(x0, "x_train", "if")
    tokens_in = x0.dtype.kind in "iu"
    for split in SPLITS:
        if f"x_{split}" not in a:
            continue
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        _check_dtype(x, f"x_{split}", "i" if tokens_in else "f")
        if tokens_in and x.ndim != 2:
            raise ValueError(f"x_{split}: integer inputs are token ids (B, L); got shape {x.shape} (cast integer "
                             "features (B, L, d_input) to float)")
        if not tokens_in and x.ndim not in (2, 3):
            raise ValueError(f"x_{split}: float inputs must be (B, L) or (B, L, d_input); got shape {x.shape}")
        if y.ndim == 0:
            raise ValueError(f"y_{split} must hold one target per sample, (B,) or more axes; got a scalar")
        if x.shape[0] == 0 or y.shape[0] == 0:
            raise ValueError(f"arrays: the {split} split is empty: x_{split} {x.shape}, y_{split} {y.shape}")
        if min(x.shape) == 0:
            raise ValueError(f"x_{split} must have L >= 1 steps (and features); got shape {x.shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x_{split} and y_{split} must hold the same number of samples B; got x_{split} "
                             f"{x.shape} and y_{split} {y.shape}")
        lengths = a.get(f"lengths_{split}")
        if lengths is not None and (lengths.dtype.kind not in "iu" or lengths.shape != x.shape[:1]):
            raise ValueError(f"lengths_{split} must be (B,) integers with x_{split}'s B = {x.shape[0]}; got dtype "
                             f"{lengths.dtype}, shape {lengths.shape}")
        within = np.ones(x.shape[:2], dtype=bool)  # (B, L): the steps within each sequence's length
        if lengths is not None and not tokens_in:  # (token lengths are checked where the padding id is written)
            if lengths.min() < 1 or lengths.max() > x.shape[1]:
                raise ValueError(f"lengths_{split} must be in [1, L = {x.shape[1]}]; found {int(lengths.min())} to "
                                 f"{int(lengths.max())}")
            within = _length_mask(lengths, x.shape[1])
        if not tokens_in:
            _check_finite(x, f"x_{split}", within)
            if x.shape[2:] != x0.shape[2:]:
                raise ValueError(f"x_{split} must have x_train's features per step; got {x.shape}, x_train {x0.shape}")
        own = within.copy()  # (B, L) the sequences' own steps: not after a length, not the pad id
        if tokens_in and lengths is not None:
            own &= _length_mask(lengths, x.shape[1])
        if tokens_in and task.pad >= 0:
            own &= x != task.pad
        _check_dtype(y, f"y_{split}", "if")
        if y.dtype.kind == "f":
            per_step = y.ndim >= 2 and y.shape[1] == x.shape[1]  # (B, L) or (B, L, d): values a step
            _check_finite(y, f"y_{split}", own if per_step else None)  # the padding's values may hold anything
        intervals = a.get(f"intervals_{split}")
        if intervals is not None:
            _check_dtype(intervals, f"intervals_{split}", "if")  # integer gaps (whole periods) are read as floats
            if intervals.shape != x.shape[:2]:
                raise ValueError(f"intervals_{split} must be (B, L) = {x.shape[:2]}, x_{split}'s; got shape "
                                 f"{intervals.shape}")
            _check_gaps(intervals, own, f"intervals_{split}")
    if not tokens_in and task.pad != -1:
        raise ValueError("arrays: padding ids (pad) need token inputs: a float has no padding value; give float "
                         "sequences of different lengths as lengths_* (each sequence's length, the steps after it "
                         "padding)")
    float_lengths = not tokens_in and any(k.startswith("lengths_") for k in a)

    target = _target(task.target, a["y_train"], x0)
    parts = _hold_out(task, a)
    # labels and vocabulary from y_train / x_train as given (before the hold-out), so a rare class held out is known
    n_classes, ids, pad_id, vocab = _sizes(task, a, target, tokens_in)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    gaps: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}  # float inputs with lengths_*: each split's (B,) lengths (L where not given)
    for split, (x, y, lengths, intervals, origin) in parts.items():
        x, y = _shape(x, y, target, tokens_in, origin)
        keep = np.ones(x.shape[:2], dtype=bool)
        if float_lengths:
            kept[split] = (np.full(x.shape[0], x.shape[1], dtype=np.int64) if lengths is None
                           else lengths.astype(np.int64))
            keep = np.arange(x.shape[1])[None, :] < kept[split][:, None]
            x, y = _cut(x, y, keep, target)
        if tokens_in:
            x, y, keep = _pad(x, y, lengths, pad_id, target, origin)
            if int(x[keep].min()) < 0:
                raise ValueError(f"{origin[0]}: token ids must be >= 0; found {int(x[keep].min())} (steps after "
                                 f"a sequence's length, by {origin[2]}, may hold anything)")
            top = int(x[keep].max())
            if top >= ids:
                raise ValueError(f"{origin[0]} holds token {top}, outside the vocabulary [0, {ids}) "
                                 f"{'given' if task.vocab else 'inferred from x_train'}: give vocab={top + 1} "
                                 "(--task_options.vocab) if the ids are right")
            if pad_id is not None and target == "regress" and y.ndim == 3:
                kept[split], y = _token_lengths(keep, y)
        if target != "regress":
            _check_labels(y, n_classes, target, origin[1], bool(task.n_classes))
        if intervals is not None:  # checked above; 1 at the padding, which may hold anything
            gaps[split] = np.ascontiguousarray(np.where(keep, np.asarray(intervals, dtype=np.float64), 1.0))
        out[split] = (x, y)
    mean = std = None
    if not tokens_in:
        if task.normalise:
            xt = out["train"][0]  # (B, L, d_input)
            train = (xt[kept["train"][:, None] > np.arange(xt.shape[1])[None, :]] if float_lengths
                     else xt.reshape(-1, xt.shape[-1]))  # (steps, d_input): the valid steps
            # a feature constant over the training split: its value and a scale of 1 (numpy's mean of identical
            # values can be off by rounding, 0.1 + 6e-16, which made their std that rounding, not 0)
            constant = (train == train[:1]).all(0)
            mean = np.where(constant, train[0], train.mean(0))
            std = np.where(constant, 1.0, train.std(0))
            std = np.where(std > 0, std, 1.0)
        out = {s: (x if mean is None else (x - mean) / std, y) for s, (x, y) in out.items()}
        if float_lengths:  # the padding stays 0 after the standardisation (the model does not read it)
            out = {s: (np.where(np.arange(x.shape[1])[None, :, None] < kept[s][:, None, None], x, 0.0), y)
                   for s, (x, y) in out.items()}
    tensors = {s: (torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64 if tokens_in else np.float32)),
                   torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32 if target == "regress" else np.int64)),
                   *((torch.from_numpy(gaps[s]),) if s in gaps else ()),
                   *((torch.from_numpy(kept[s]),) if s in kept else ()))
               for s, (x, y) in out.items()}
    xt, yt = tensors["train"][:2]
    d_output = int(yt.shape[-1]) if target == "regress" else n_classes
    held = [f"{s} {100 * f:g} %" for s, f in (("test", task.test_fraction), ("val", task.val_fraction))
            if f"x_{s}" not in a and f > 0]
    source = (f"{where}; splits: {', '.join(f'{s} {int(t[0].shape[0])}' for s, t in tensors.items())}"
              + (f" ({', '.join(held)} of x_train held out, seed {task.seed})" if held else "")
              + ("; inputs standardised with the training split's mean and std" if mean is not None else "")
              + ("; irregularly sampled (intervals_*)" if gaps else "")
              + ("; variable lengths (lengths_*), carried in the splits" if float_lengths else
                 "; padded tokens' lengths carried in the splits (per-step values)" if kept else ""))
    title = "arrays: " + (pathlib.Path(task.path).name if task._given is None else "from_arrays")
    info = TaskInfo(name=task.name, title=title, kind="files", target=target, length=int(xt.shape[1]),
                    d_input=None if tokens_in else int(xt.shape[2]), vocab_size=vocab if tokens_in else None,
                    n_classes=d_output, source=source, needs=_NEEDS, pad_id=pad_id,
                    per_step=target == "regress" and yt.ndim == 3)
    return info, tensors, mean, std


def _target(option: str, y: np.ndarray, x: np.ndarray) -> str:
    """The target kind: the option, or inferred from y_train's dtype and shape. Float labels must be whole numbers
    where finite: a non-finite one is padding (``_build`` refused any other), e.g. NaN after a length."""
    finite = y[np.isfinite(y)] if y.dtype.kind == "f" else y
    integral = y.dtype.kind in "iu" or (y.dtype.kind == "f" and (finite == np.round(finite)).all())
    target = option
    if option == "auto":
        target = ("classify" if y.ndim == 1 else "tokens") if y.dtype.kind in "iu" else "regress"
    if target in ("classify", "tokens") and not integral:
        raise ValueError(f"arrays: target {target!r} needs integer labels; y_train holds {y.dtype} values that are not "
                         "whole numbers (use target 'regress' for values)")
    want = {"classify": "(B,)", "tokens": "(B, L)"}.get(target)
    if target == "classify" and y.ndim != 1 or target == "tokens" and y.ndim != 2:
        raise ValueError(f"arrays: {target} labels must be {want}; y_train has shape {y.shape}")
    if target == "tokens" and y.shape[1] != x.shape[1]:
        raise ValueError(f"arrays: per-step labels y_train {y.shape} must have x_train's L = {x.shape[1]} steps")
    if target == "regress" and not (y.ndim == 1 or y.ndim in (2, 3) and y.shape[1] == x.shape[1]):
        raise ValueError(f"arrays: regression targets must be (B,) one value a sequence, or (B, L) / (B, L, d_output) "
                         f"values a step with x_train's L = {x.shape[1]}; y_train has shape {y.shape}")
    return target


def _hold_out(task: ArraysTask, a: dict[str, np.ndarray]) -> dict[str, tuple]:
    """{split: (x, y, lengths or None, intervals or None, (x, y, lengths, intervals names))}: the files' splits and
    those held out of x_train."""
    x, y, lengths, intervals = a["x_train"], a["y_train"], a.get("lengths_train"), a.get("intervals_train")
    if lengths is not None and lengths.shape[:1] != x.shape[:1]:
        raise ValueError(f"lengths_train must be (B,) with x_train's B = {x.shape[0]}; got {lengths.shape}")
    b = x.shape[0]
    n_test = 0 if "x_test" in a else int(round(task.test_fraction * b))
    n_val = 0 if "x_val" in a else int(round(task.val_fraction * b))
    for split, n, f in (("test", n_test, task.test_fraction), ("val", n_val, task.val_fraction)):
        if f"x_{split}" not in a and f > 0 and n == 0:
            raise ValueError(f"arrays: x_train's {b} samples are too few to hold out {100 * f:g} % for the {split} "
                             f"split (0 samples): give x_{split}, more samples, or {split}_fraction 0")
    if b - n_test - n_val < 1:
        raise ValueError(f"arrays: the training split is empty: x_train's {b} samples less {n_test} test and {n_val} "
                         "validation samples held out")
    perm = np.random.default_rng(task.seed).permutation(b)
    index = {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
             "train": np.sort(perm[n_test + n_val:])}
    parts = {}
    for split in SPLITS:
        if f"x_{split}" in a and split != "train":
            parts[split] = (a[f"x_{split}"], a[f"y_{split}"], a.get(f"lengths_{split}"), a.get(f"intervals_{split}"),
                            (f"x_{split}", f"y_{split}", f"lengths_{split}", f"intervals_{split}"))
        elif len(index[split]):
            i = index[split]
            held = "" if split == "train" else f" (held out for {split})"
            origin = (f"x_train{held}", f"y_train{held}", f"lengths_train{held}", f"intervals_train{held}")
            parts[split] = (x[i], y[i], None if lengths is None else lengths[i],
                            None if intervals is None else intervals[i], origin)
    return parts


def _sizes(task: ArraysTask, a: dict[str, np.ndarray], target: str, tokens_in: bool) -> tuple:
    """(n_classes, real token ids, pad id, vocabulary with the pad id) from the options or x_train / y_train.

    Per-step labels at the padding (after a length, or at the ``pad`` id of token inputs; :func:`_pad` and
    :func:`_cut` set them to -100) are not counted: a pad-only token file whose labels held 99 there was given 100
    classes, where the same file cut by ``lengths_train`` got its 3."""
    n_classes = 0
    x, lengths = a["x_train"], a.get("lengths_train")
    within = np.ones(x.shape[:2], dtype=bool) if lengths is None else _length_mask(lengths, x.shape[1])
    if tokens_in and task.pad >= 0:
        within = within & (x != task.pad)  # (B, L) the pad id is padding too
    if target != "regress":
        y = a["y_train"]
        # per-step labels at the padding (set to -100) may hold anything: not counted
        scored = (y[(y != IGNORE_INDEX) & within] if target == "tokens" else y.ravel()).astype(np.int64)
        if scored.size == 0:
            raise ValueError("arrays: y_train has no scored label (every one is -100)")
        if scored.min() < 0:
            raise ValueError(f"arrays: y_train holds label {int(scored.min())}: labels are 0, 1, ..., n_classes - 1"
                             + (" (-100 marks a step without a loss)" if target == "tokens" else ""))
        n_classes = task.n_classes or int(scored.max()) + 1
        if int(scored.max()) >= n_classes:
            raise ValueError(f"arrays: y_train holds label {int(scored.max())}, outside [0, n_classes = {n_classes}) "
                             "given")
    if not tokens_in:
        return n_classes, None, None, None
    real = x[within & (x != task.pad)]  # the real tokens: within the lengths, not the pad id
    top = int(real.max()) + 1 if real.size else 0
    if task.vocab and top > task.vocab:
        raise ValueError(f"arrays: x_train holds token {top - 1}, outside [0, vocab = {task.vocab}) given")
    ids = task.vocab or top
    padded = any(k.startswith("lengths_") for k in a)
    pad_id = task.pad if task.pad >= 0 else (ids if padded else None)
    return n_classes, ids, pad_id, ids if pad_id is None else max(ids, pad_id + 1)


def _shape(x: np.ndarray, y: np.ndarray, target: str, tokens_in: bool, origin: tuple) -> tuple:
    """x as (B, L) ids or (B, L, d_input) float64, y as (B,) / (B, L) labels or (B, d_output) / (B, L, d_output);
    float labels as int64, a non-finite one (padding: the finite check of ``_build`` ran before) as -100."""
    if not tokens_in:
        x = np.asarray(x, dtype=np.float64)
        x = x[..., None] if x.ndim == 2 else x
    if target == "classify":
        if y.ndim != 1:
            raise ValueError(f"{origin[1]}: classify labels must be (B,); got shape {y.shape}")
    elif target == "tokens":
        if y.shape != x.shape[:2]:
            raise ValueError(f"{origin[1]}: per-step labels must be (B, L) = {x.shape[:2]}, {origin[0]}'s; got {y.shape}")
    else:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        elif y.shape[1] != x.shape[1] or y.ndim > 3:
            raise ValueError(f"{origin[1]}: per-step values must be (B, L) or (B, L, d_output) with L = {x.shape[1]}, "
                             f"{origin[0]}'s; got {y.shape}")
        elif y.ndim == 2:
            y = y[..., None]
    if target != "regress":
        if y.dtype.kind == "f":  # a non-finite label is padding (``_build`` refused any other): -100 (no loss)
            finite = np.isfinite(y)
            if not (y[finite] == np.round(y[finite])).all():
                raise ValueError(f"{origin[1]}: labels must be whole numbers; got non-integral {y.dtype} values")
            y = np.where(finite, y, IGNORE_INDEX)
        y = y.astype(np.int64)
    return x, y


def _pad(x: np.ndarray, y: np.ndarray, lengths, pad_id, target: str, origin: tuple) -> tuple:
    """Token inputs with the padding id after each sequence's length, per-step targets -100 there, checked to trail;
    and the (B, L) mask of the real tokens."""
    x = np.array(x, dtype=np.int64)
    if pad_id is None:
        return x, y, np.ones(x.shape, dtype=bool)
    steps = x.shape[1]
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu" or lengths.shape != x.shape[:1]:
            raise ValueError(f"{origin[2]} must be (B,) integers with {origin[0]}'s B = {x.shape[0]}; got dtype "
                             f"{lengths.dtype}, shape {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > steps:
            raise ValueError(f"{origin[2]} must be in [1, L = {steps}]; found {int(lengths.min())} to "
                             f"{int(lengths.max())}")
        real = _length_mask(lengths, steps)
        if (x[real] == pad_id).any():
            row, t = (int(i) for i in np.argwhere(real & (x == pad_id))[0])
            raise ValueError(f"{origin[0]}: sequence {row} holds the padding id {pad_id} at step {t}, within its length "
                             f"{int(lengths[row])}: the pad id may not be a real token")
        x = np.where(real, x, pad_id)
    keep = x != pad_id
    if not keep[:, 0].all():
        row = int(np.argmin(keep[:, 0]))
        raise ValueError(f"{origin[0]}: sequence {row} starts with the padding id {pad_id}: every sequence needs a "
                         "real token first (padding trails)")
    inner = keep[:, 1:] & ~keep[:, :-1]  # a real token after a pad
    if inner.any():
        row, t = (int(i) for i in np.argwhere(inner)[0])
        raise ValueError(f"{origin[0]}: sequence {row} holds the padding id {pad_id} at step {t} before a real token "
                         f"at step {t + 1}: padding must trail each sequence (right padding), and the pad id may not "
                         "be a real token")
    if target == "tokens":
        y = np.where(keep, y, IGNORE_INDEX)
    return x, y, keep


def _cut(x: np.ndarray, y: np.ndarray, keep: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Float inputs (B, L, d_input) with 0 at the steps after each length (``keep`` (B, L) False there), which may hold
    anything; per-step targets -100 (classes) or 0 (values, left unscored by the lengths) there."""
    x = np.where(keep[..., None], x, 0.0)
    if target == "tokens":
        y = np.where(keep, y, IGNORE_INDEX)
    elif target == "regress" and y.ndim == 3:  # (B, L, d_output) values a step
        y = np.where(keep[..., None], y, 0.0)
    return x, y


def _length_mask(lengths: np.ndarray, steps: int) -> np.ndarray:
    """The (B, L) bool mask t < lengths[b] of right-padded sequences (numpy's :func:`ssmkit.utils.length_mask`)."""
    return np.arange(steps)[None, :] < lengths[:, None]


def _token_lengths(keep: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths (B,), y) of right-padded token inputs with per-step values y (B, L, d_output): each sequence's number
    of real tokens (``keep`` (B, L) True there; :func:`_pad` checked that the padding trails, so they are its first
    steps), and y with 0 at the padding. The objective has no pad id: without the lengths in the splits it scored
    the padding's values, (out - y)² at every step, in the loss and the MSE."""
    return keep.sum(axis=1).astype(np.int64), np.where(keep[..., None], y, 0.0)


def _check_gaps(intervals: np.ndarray, own: np.ndarray, name: str) -> None:
    """ValueError unless the intervals (B, L) are finite and > 0 at the steps ``own`` marks (the sequences' own; the
    padding after a token sequence's length may hold anything), naming the first bad one by its index in the file."""
    gaps = np.asarray(intervals, dtype=np.float64)
    bad = own & ~(np.isfinite(gaps) & (gaps > 0))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} holds {int(bad.sum())} interval(s) that are not finite and > 0; the first is "
                         f"{gaps[where]} at index {where}: each is the time since the previous sample, in nominal "
                         "sampling periods (merge samples taken at the same time)")


def _check_labels(y: np.ndarray, n_classes: int, target: str, name: str, given: bool) -> None:
    scored = y[y != IGNORE_INDEX] if target == "tokens" else y
    if scored.size and (scored.min() < 0 or scored.max() >= n_classes):
        bad = int(scored.min()) if scored.min() < 0 else int(scored.max())
        how = "given" if given else "inferred from y_train"
        raise ValueError(f"{name} holds label {bad}, outside [0, n_classes = {n_classes}) {how}: the model has no "
                         f"output for it; give n_classes={max(bad + 1, n_classes)} (--task_options.n_classes) if the "
                         "labels are right" + (" (-100 marks a step without a loss)" if target == "tokens" else ""))


def from_arrays(x_train, y_train, x_val=None, y_val=None, x_test=None, y_test=None, lengths_train=None,
                lengths_val=None, lengths_test=None, target: str = "auto", val_fraction: float = 0.1,
                test_fraction: float = 0.2, seed: int = 0, normalise: bool = True, n_classes: int = 0, vocab: int = 0,
                pad: int = -1, intervals_train=None, intervals_val=None, intervals_test=None) -> ArraysTask:
    """The ``arrays`` task of arrays in memory (numpy arrays, tensors or nested lists), checked and split as the
    module docstring says; its ``info()`` and ``splits()`` feed :func:`ssmkit.train.fit` (with
    ``Experiment.model_config(task.info())`` for the model).

    Args:
        x_train: inputs, token ids (B, L) or floats (B, L) or (B, L, d_input).
        y_train: targets, (B,) labels or values, (B, L) per-step labels or values, or (B, L, d_output) values.
        x_val: validation inputs (None: ``val_fraction`` of x_train held out).
        y_val: validation targets (with ``x_val``).
        x_test: test inputs (None: ``test_fraction`` of x_train held out).
        y_test: test targets (with ``x_test``).
        lengths_train: (B,) lengths of the sequences of x_train (tokens or floats; the steps after them are padding),
            or None.
        lengths_val: (B,) lengths of x_val's, or None.
        lengths_test: (B,) lengths of x_test's, or None.
        target: ``"auto"``, ``"classify"``, ``"tokens"`` or ``"regress"`` (:class:`ArraysTask`).
        val_fraction: held out for validation without ``x_val``, in [0, 1) (default 0.1).
        test_fraction: held out for test without ``x_test``, in [0, 1) (default 0.2).
        seed: the seed of the hold-out permutation.
        normalise: standardise float inputs with the training split's statistics.
        n_classes: classes (0: inferred from y_train).
        vocab: token ids (0: inferred from x_train).
        pad: the padding token id (-1: none).
        intervals_train: (B, L) gaps of irregularly sampled x_train in nominal sampling periods, or None (regular).
        intervals_val: (B, L) gaps of x_val (needed with x_val when intervals_train is given).
        intervals_test: (B, L) gaps of x_test (needed with x_test when intervals_train is given).

    Returns:
        the task, its arrays checked and split (a ValueError says what is wrong).
    """
    task = ArraysTask(target=target, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                      normalise=normalise, n_classes=n_classes, vocab=vocab, pad=pad)
    given = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "x_test": x_test,
             "y_test": y_test, "lengths_train": lengths_train, "lengths_val": lengths_val, "lengths_test": lengths_test,
             "intervals_train": intervals_train, "intervals_val": intervals_val, "intervals_test": intervals_test}
    task._given = {k: v for k, v in given.items() if v is not None}
    task._load()
    return task
