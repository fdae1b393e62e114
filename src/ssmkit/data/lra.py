"""Long Range Arena tasks read from the files of their releases (Tay et al. 2021, arXiv 2011.04006): byte-level
IMDB text, AAN retrieval pairs, Pathfinder-32 and Path-X (Pathfinder-128) PNG folders. ListOps is in
``ssmkit.data.listops`` and Image in ``ssmkit.data.cifar``.

Byte-level text: the UTF-8 bytes of a document, id = byte + 1 (0 is padding; vocabulary 257), truncated and
padded to ``l_max``. Text and Retrieval declare ``pad_id`` 0, so mean pooling skips the padding, as S4
(``use_lengths``) and S5 (``masked_meanpool``) pool IMDB and AAN.

- Text (IMDB): the Stanford release ``aclImdb_v1.tar.gz`` unpacked at ``<root>/aclImdb``
  (``{train,test}/{pos,neg}/*.txt``); label 1 = positive. LRA's code truncates at 1,000 bytes in its base config
  and 4,000 in ``transformer_tlb_base``; S4 and S5 keep 4,096 tokens (S4 reads characters, not bytes, and appends
  ``<eos>``; for ASCII text the sequences agree).
- Retrieval (AAN): ``<root>/lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv``, tab-separated rows
  ``label, id1, id2, text1, text2`` without a header. By default every text cell is taken as it is, characters of a
  Python bytes literal (``b'...'``, escapes) included: the LRA input pipeline (``matching/input_pipeline.py``, the
  TSV string into ``ByteTextEncoder``), S4 and S5 (``list(text)`` of the CSV cell) read it so, and their numbers
  were measured on it. ``decode=True`` decodes such literals with ``ast.literal_eval`` (as some third-party loaders
  do; shorter documents, a different input). Each document is cut to ``l_max`` bytes and padded with 0; the input
  keeps the two documents apart, (B, 2, L), for a dual encoder that encodes each separately (LRA's two-tower
  setup; ``SequenceModel(pair=True)``).
- Pathfinder / Path-X: ``<root>/lra_release/pathfinder32`` (or ``pathfinder128``) ``/<difficulty>/metadata/<n>.npy``,
  text rows ``subfolder file_name index label ...``, and the PNGs at ``<difficulty>/<subfolder>/<file_name>``. As in
  S4, only ``curv_contour_length_14`` is used, pixels are scaled to [−1, 1], images flattened in raster order
  (1,024 or 16,384 steps), the metadata files are read in numeric order and split 80 / 10 / 10 with
  ``torch.utils.data.random_split`` seeded with 42. Empty (0-byte) PNGs are skipped: the release has one,
  ``pathfinder32/curv_baseline/imgs/0/sample_172.png``, which S4 leaves out by name. A PNG that is missing or cannot
  be decoded is an error (S4's loader reads every other row; skipping it would shrink the set, move every image of
  the seeded split and be cached). Decoding 200,000 PNGs takes minutes, so the decoded pixels are cached under
  ``<root>/generated/<task>-decoded/`` (atomic write), keyed by the folder and its metadata files (names, sizes and
  SHA-256 of their contents).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ssmkit.data.sequences import ScaledSequences, split_off
from ssmkit.data.store import cached, data_root, sha256_file
from ssmkit.data.task import FileTask, TaskInfo, register_task

BYTE_VOCAB = 257  # 0 = padding, byte b -> b + 1


def encode_bytes(text: str | bytes, l_max: int) -> np.ndarray:
    """Byte-level ids of a document (UTF-8 bytes + 1), truncated and zero-padded to ``l_max``.

    Args:
        text: the document.
        l_max: the padded length.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    ids = np.frombuffer(raw[:l_max], dtype=np.uint8).astype(np.int16) + 1
    out = np.zeros(l_max, dtype=np.int16)
    out[: len(ids)] = ids
    return out


@register_task("lra_text")
@dataclasses.dataclass(frozen=True)
class LRATextTask(FileTask):
    """Byte-level IMDB sentiment (LRA Text) from the ``aclImdb`` folder.

    Args:
        l_max: bytes kept per review (S4, S5: 4,096; LRA's code: 1,000, or 4,000 in one config).
        n_val: training reviews moved to the validation split (IMDB has no validation set).
        seed: the seed of that split.
    """

    l_max: int = 4096
    n_val: int = 2500
    seed: int = 42

    def folder(self, root: str | os.PathLike | None = None) -> pathlib.Path:
        """``<root>/aclImdb``.

        Args:
            root: the data root.
        """
        return data_root(root) / "aclImdb"

    def required(self) -> list[str]:
        """The four review folders."""
        return ["train/pos", "train/neg", "test/pos", "test/neg"]

    def info(self) -> TaskInfo:
        """Token inputs (B, l_max) of 257 byte ids (0 pads), 2 classes."""
        return TaskInfo(self.name, "LRA Text (byte-level IMDB)", "files", "classify", self.l_max, None, BYTE_VOCAB, 2,
                        "IMDB reviews (Maas et al. 2011); LRA (arXiv 2011.04006)",
                        "the unpacked IMDB release aclImdb_v1.tar.gz (train/pos, train/neg, test/pos, test/neg)",
                        pad_id=0)

    def _read(self, base: pathlib.Path) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for label, sub in ((0, "neg"), (1, "pos")):
            for path in sorted((base / sub).glob("*.txt")):
                xs.append(encode_bytes(path.read_bytes(), self.l_max))
                ys.append(label)
        if not xs:
            raise ValueError(f"{base}: no .txt reviews in pos/ or neg/")
        return torch.from_numpy(np.stack(xs)).long(), torch.tensor(ys)

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, TensorDataset]:
        """Read the reviews: train (25,000 − n_val), val (n_val), test (25,000).

        Args:
            root: the data root.
        """
        self.check_present(root)
        x, y = self._read(self.folder(root) / "train")
        xt, yt = self._read(self.folder(root) / "test")
        train, val = split_off(len(y), self.n_val, self.seed)
        return {"train": TensorDataset(x[train], y[train]), "val": TensorDataset(x[val], y[val]),
                "test": TensorDataset(xt, yt)}


def _document(cell: str) -> str | bytes:
    """A text cell; the release writes documents as Python bytes literals (``b'...'``), decoded here safely."""
    if len(cell) >= 3 and cell[0] == "b" and cell[1] in "'\"" and cell[-1] == cell[1]:
        try:
            value = ast.literal_eval(cell)  # literals only: no code runs
        except (ValueError, SyntaxError):
            return cell
        if isinstance(value, bytes):
            return value
    return cell


def read_aan_tsv(path: str | os.PathLike, l_max: int, decode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an AAN pairs TSV (``label, id1, id2, text1, text2``; no header).

    Args:
        path: e.g. ``new_aan_pairs.train.tsv``.
        l_max: bytes kept per document.
        decode: decode cells written as Python bytes literals (``b'...'``); False keeps the characters, as LRA,
            S4 and S5 read them.

    Returns:
        x (B, 2, L) int16 ids (the two documents, each padded with 0 to L = ``l_max``); y (B,) int64 labels (a label
        other than 0 or 1 is a ``ValueError`` naming the line).
    """
    xs, ys = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            cells = line.rstrip("\n").split("\t")
            if len(cells) != 5:
                raise ValueError(f"{path}:{i}: expected 5 tab-separated cells (label, id1, id2, text1, text2); "
                                 f"got {len(cells)}")
            try:
                label = float(cells[0])  # the release writes 0 / 1 (or 0.0 / 1.0)
            except ValueError:
                label = None
            if label not in (0.0, 1.0):  # float("x") named neither file nor line, and a 2 passed
                raise ValueError(f"{path}:{i}: expected the label (1st cell) 0 or 1; got {cells[0][:20]!r}")
            ys.append(int(label))
            first, second = (encode_bytes(_document(c) if decode else c, l_max) for c in cells[3:5])
            xs.append(np.stack([first, second]))
    if not xs:
        raise ValueError(f"{path}: no rows")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


@register_task("lra_retrieval")
@dataclasses.dataclass(frozen=True)
class LRARetrievalTask(FileTask):
    """AAN document-pair matching (LRA Retrieval) from the LRA release's TSV files.

    Args:
        l_max: bytes kept per document (LRA: 4,000).
        decode: decode text cells written as Python bytes literals (``b'...'``); False (the default) keeps their
            characters, as the LRA pipeline, S4 and S5 do.
    """

    l_max: int = 4000
    decode: bool = False

    def folder(self, root: str | os.PathLike | None = None) -> pathlib.Path:
        """``<root>/lra_release/tsv_data``.

        Args:
            root: the data root.
        """
        return data_root(root) / "lra_release" / "tsv_data"

    def required(self) -> list[str]:
        """The three TSV files."""
        return [f"new_aan_pairs.{s}.tsv" for s in ("train", "eval", "test")]

    def info(self) -> TaskInfo:
        """Token pairs (B, 2, l_max) of 257 byte ids (0 pads), 2 classes."""
        return TaskInfo(self.name, "LRA Retrieval (AAN, dual encoder)", "files", "classify", self.l_max,
                        None, BYTE_VOCAB, 2, "ACL Anthology Network pairs; LRA release (arXiv 2011.04006)",
                        "the LRA release's AAN TSV files (from lra_release.gz, folder tsv_data)", pair=True, pad_id=0)

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, TensorDataset]:
        """Read the three TSV files (``eval`` is the validation split).

        Args:
            root: the data root.
        """
        self.check_present(root)
        out = {}
        for split, name in (("train", "train"), ("val", "eval"), ("test", "test")):
            x, y = read_aan_tsv(self.folder(root) / f"new_aan_pairs.{name}.tsv", self.l_max, self.decode)
            out[split] = TensorDataset(x.long(), y)
        return out


def read_pathfinder_folder(folder: str | os.PathLike, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a Pathfinder difficulty folder (``metadata/<n>.npy`` text rows and the PNGs they name).

    Args:
        folder: e.g. ``lra_release/pathfinder32/curv_contour_length_14``.
        size: the image side (32 for Pathfinder, 128 for Path-X).

    Returns:
        pixels (B, L, 1) uint8 with L = size², raster order; labels (B,) int64. Rows naming an empty (0-byte)
        PNG are left out (the release's one known defect); a ``ValueError`` names the PNGs that are missing or
        cannot be decoded (a partly extracted release), before anything is cached, and a row whose label is not 0
        or 1 (the metadata file and line).
    """
    from PIL import Image

    folder = pathlib.Path(folder)
    metas = sorted((folder / "metadata").glob("*.npy"), key=lambda p: (len(p.stem), p.stem))
    if not metas:
        raise ValueError(f"{folder}/metadata: no .npy metadata files")
    xs, ys, bad = [], [], []
    for meta in metas:
        for number, line in enumerate(meta.read_text().splitlines(), 1):
            cells = line.split()
            if not cells:
                continue
            if len(cells) < 4:
                raise ValueError(f"{meta}: expected rows 'subfolder file_name index label ...'; got {line!r}")
            if cells[3] not in ("0", "1"):  # int() would name neither the file nor the line; 2 would pass
                raise ValueError(f"{meta}:{number}: expected the label (4th cell) 0 or 1; got {line!r}")
            path = folder / cells[0] / cells[1]
            if path.is_file() and path.stat().st_size == 0:
                continue  # the release's known empty file (S4 leaves it out by name)
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("L"))
            except (OSError, ValueError) as error:
                bad.append(f"{cells[0]}/{cells[1]} ({type(error).__name__})")
                continue
            if pixels.shape != (size, size):
                raise ValueError(f"{path}: expected a {size}×{size} image; got {pixels.shape}")
            xs.append(pixels.reshape(-1))
            ys.append(int(cells[3]))
    if bad:
        raise ValueError(f"{folder}: {len(bad)} image(s) named in metadata/ are missing or cannot be decoded, e.g. "
                         f"{', '.join(bad[:3])}; extract the release again (a partial set would change the split)")
    if not xs:
        raise ValueError(f"{folder}: no readable images")
    return torch.from_numpy(np.stack(xs))[..., None], torch.tensor(ys)


@dataclasses.dataclass(frozen=True)
class _PathfinderFiles(FileTask):
    difficulty: str = "curv_contour_length_14"
    seed: int = 42

    size = 32
    label = "Pathfinder-32"

    def folder(self, root: str | os.PathLike | None = None) -> pathlib.Path:
        """``<root>/lra_release/pathfinder<size>/<difficulty>``.

        Args:
            root: the data root.
        """
        return data_root(root) / "lra_release" / f"pathfinder{self.size}" / self.difficulty

    def required(self) -> list[str]:
        """The metadata folder (the PNGs it names are checked when read)."""
        return ["metadata"]

    def info(self) -> TaskInfo:
        """Float inputs (B, size², 1) in [−1, 1], 2 classes."""
        return TaskInfo(self.name, f"LRA {self.label} ({self.difficulty})", "files", "classify", self.size ** 2, 1,
                        None, 2, "LRA release (arXiv 2011.04006); Linsley et al. 2018",
                        f"the contents of the LRA release's pathfinder{self.size}/{self.difficulty} "
                        "(metadata/ and imgs/; from lra_release.gz)")

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, ScaledSequences]:
        """Decode (or load the decoded cache) and split 80 / 10 / 10 with ``random_split`` seeded by ``seed``.

        Args:
            root: the data root.
        """
        self.check_present(root)
        folder = self.folder(root)
        # the metadata's contents, not only their sizes: a label corrected in place keeps the file's size
        stamp = sorted((p.name, p.stat().st_size, sha256_file(p)) for p in (folder / "metadata").glob("*.npy"))
        options = {"folder": str(folder.resolve()), "metadata": stamp}
        tensors = cached(f"{self.name}-decoded", options, lambda: dict(zip(("x", "y"),
                         read_pathfinder_folder(folder, self.size))), root)
        data = ScaledSequences(tensors["x"], tensors["y"], 2 / 255, -1.0)  # ToTensor, Normalize(0.5, 0.5)
        n = len(data)
        n_val, n_test = int(0.1 * n), int(0.1 * n)
        parts = torch.utils.data.random_split(range(n), [n - n_val - n_test, n_val, n_test],
                                              generator=torch.Generator().manual_seed(self.seed))
        return {s: data.subset(torch.tensor(list(p.indices), dtype=torch.long))
                for s, p in zip(("train", "val", "test"), parts)}


@register_task("lra_pathfinder")
@dataclasses.dataclass(frozen=True)
class LRAPathfinderTask(_PathfinderFiles):
    """LRA Pathfinder-32 from the release's PNGs: (B, 1024, 1).

    Args:
        difficulty: the difficulty folder (S4 and LRA results: ``curv_contour_length_14``).
        seed: the seed of the 80 / 10 / 10 split (S4: 42).
    """


@register_task("lra_pathx")
@dataclasses.dataclass(frozen=True)
class LRAPathXTask(_PathfinderFiles):
    """LRA Path-X (Pathfinder-128) from the release's PNGs: (B, 16384, 1).

    Args:
        difficulty: the difficulty folder (S4 and LRA results: ``curv_contour_length_14``).
        seed: the seed of the 80 / 10 / 10 split (S4: 42).
    """

    size = 128
    label = "Path-X"
