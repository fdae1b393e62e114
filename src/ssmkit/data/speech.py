"""Speech Commands (Warden 2018, arXiv 1804.03209) as raw 16 kHz waveforms: SC35 (all 35 words) and SC10 (the ten
command words), the raw-audio tasks of S4 (arXiv 2111.00396 §4.3) and of CKConv.

Files (``speech_commands_v0.02.tar.gz`` unpacked) at ``<root>/speech_commands``: one folder per word of 16-bit PCM
mono WAV files at 16 kHz, plus ``validation_list.txt`` and ``testing_list.txt`` naming the validation and test files
(``word/file.wav``); every other file of a used word is training data (SC35, and SC10 with ``split="lists"``; SC10's
default is CKConv's random split of the full-length clips, see :class:`SC10Task`). ``_background_noise_`` is not a
word.
Each clip is zero-padded at the end (or cut) to 16,000 samples and scaled to [−1, 1) (sample / 32768), giving
(B, 16000, 1). Decoded clips are cached under ``<root>/generated/<task>-decoded*/`` (atomic write), keyed by the
folder, the number, total size and newest modification time of the WAV files in each word folder, and the SHA-256 of
the two lists.

Normalisation (``normalize``): ``"position"`` (the default) standardises every time step l with the mean and standard
deviation (n − 1 denominator) of the training clips at that step, after padding:
x'[l] = (x[l] / 32768 − μ_l) / (σ_l + 1e-5). This is what S4's loader does (state-spaces/s4
``src/dataloaders/datasets/sc.py``, ``normalize_all_data`` loops over the 16,000 positions), and S5 and Liquid-S4
use that loader, so the published SC numbers were measured on it. ``"none"`` keeps sample / 32768
(the raw waveform, a much smaller scale than the standardised one).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import wave

import numpy as np
import torch

from ssmkit.data.sequences import ScaledSequences
from ssmkit.data.store import cached, data_root, sha256_file
from ssmkit.data.task import FileTask, TaskInfo, register_task

WORDS35 = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
    "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop",
    "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)
WORDS10 = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SAMPLE_RATE = 16_000
NORMALIZATIONS = ("position", "none")


def read_samples(path: str | os.PathLike) -> np.ndarray:
    """The samples of a 16-bit PCM mono WAV file at 16 kHz, as they are (int16, the file's length).

    A file whose data stop before the sample count its header declares (cut short, e.g. by an interrupted
    extraction) is refused with a ``ValueError`` naming it: read as it is, it would become a shorter clip, zero-padded
    in SC35 and dropped from SC10's full-length clips, silently. So is a file that is not a PCM WAV file at all (the
    ``wave`` module's errors do not name the file).

    Args:
        path: the .wav file.
    """
    try:
        f = wave.open(str(path), "rb")
    except (wave.Error, EOFError) as error:  # not RIFF/WAVE, not PCM, or cut inside the header
        why = str(error) or "empty or cut short"
        raise ValueError(f"{path}: not a 16-bit PCM WAV file ({type(error).__name__}: {why}); "
                         "extract the release again") from error
    with f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1 or f.getframerate() != SAMPLE_RATE:
            raise ValueError(f"{path}: expected 16-bit mono PCM at {SAMPLE_RATE} Hz; got {8 * f.getsampwidth()}-bit, "
                             f"{f.getnchannels()} channels, {f.getframerate()} Hz")
        declared = f.getnframes()
        data = f.readframes(declared)
    if len(data) != 2 * declared:
        raise ValueError(f"{path}: the header declares {declared} samples but the file holds {len(data) // 2}: "
                         "the file is cut short (extract the release again)")
    return np.frombuffer(data, dtype="<i2")


def read_wav(path: str | os.PathLike, length: int = SAMPLE_RATE) -> np.ndarray:
    """Read a 16-bit PCM mono WAV file at 16 kHz, zero-padded at the end (or cut) to ``length`` samples.

    Args:
        path: the .wav file.
        length: samples returned.

    Returns:
        the samples as an int16 array of ``length`` values.
    """
    samples = read_samples(path)
    out = np.zeros(length, dtype=np.int16)
    out[: min(length, len(samples))] = samples[:length]
    return out


def position_statistics(x: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean μ_l and standard deviation σ_l (n − 1 denominator) of each time step over the clips, of x / 32768.

    Args:
        x: (B, L, H) int16 samples, B >= 2.
        chunk: clips summed at a time (bounds the int64 copy).

    Returns:
        μ and σ, each (L, H) float64.
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"the per-position statistics need at least 2 training clips; got {n}")
    total = torch.zeros(x.shape[1:], dtype=torch.int64)  # exact sums of the integer samples
    squares = torch.zeros(x.shape[1:], dtype=torch.int64)
    for start in range(0, n, chunk):
        part = x[start:start + chunk].long()
        total += part.sum(0)
        squares += (part * part).sum(0)
    mean = total.double() / n
    var = ((squares.double() - total.double() * mean) / (n - 1)).clamp_min(0.0)
    return mean / 32768, var.sqrt() / 32768


@dataclasses.dataclass(frozen=True)
class _SpeechCommands(FileTask):
    normalize: str = "position"

    words = WORDS35
    label = "SC35"

    def __post_init__(self) -> None:
        super().__post_init__()  # the options' kinds
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS} ('position': S4's per-step training mean "
                             f"and std; 'none': sample / 32768); got {self.normalize!r}")

    def folder(self, root: str | os.PathLike | None = None) -> pathlib.Path:
        """``<root>/speech_commands``.

        Args:
            root: the data root.
        """
        return data_root(root) / "speech_commands"

    def required(self) -> list[str]:
        """The two split lists and one folder per word."""
        return ["validation_list.txt", "testing_list.txt", *self.words]

    def info(self) -> TaskInfo:
        """Float inputs (B, 16000, 1), one class per word."""
        return TaskInfo(self.name, f"Speech Commands {self.label} (raw 16 kHz)", "files", "classify", SAMPLE_RATE, 1,
                        None, len(self.words), "Speech Commands v0.02 (Warden 2018, arXiv 1804.03209)",
                        "the unpacked speech_commands_v0.02.tar.gz (one folder per word and the two split lists)")

    def _decode(self, base: pathlib.Path) -> dict[str, torch.Tensor]:
        held = {}
        for split, name in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
            for line in (base / name).read_text().split():
                held[line.strip()] = split
        groups: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
        for label, word in enumerate(self.words):
            for path in sorted((base / word).glob("*.wav")):
                xs, ys = groups[held.get(f"{word}/{path.name}", "train")]
                xs.append(read_wav(path))
                ys.append(label)
        out = {}
        for split, (xs, ys) in groups.items():
            if not xs:
                raise ValueError(f"{base}: no {split} clips among the words {self.words}")
            out[f"{split}_x"] = torch.from_numpy(np.stack(xs))[..., None]  # (B, L, 1) int16
            out[f"{split}_y"] = torch.tensor(ys)
        return out

    def _stamp(self, base: pathlib.Path) -> dict:
        """The decoded cache's key: the folder; per word the number of WAV files, their total size and the newest
        modification time; the SHA-256 of the two lists. Keyed by the counts alone, a clip replaced in place, or a
        list corrected at the same length, kept the old decode; hashing the 2.3 GB of clips at every load would
        cost more than decoding them, their sizes and times are the make-style witness."""
        files = []
        for word in self.words:
            stats = [path.stat() for path in (base / word).glob("*.wav")]
            newest = max((s.st_mtime_ns for s in stats), default=0)
            files.append((word, len(stats), sum(s.st_size for s in stats), newest))
        files += [(n, sha256_file(base / n)) for n in ("validation_list.txt", "testing_list.txt")]
        return {"folder": str(base.resolve()), "files": files}

    def _tensors(self, root: str | os.PathLike | None) -> dict[str, torch.Tensor]:
        """``{split}_x`` (B, L, 1) int16 and ``{split}_y`` (B,) for train / val / test."""
        base = self.folder(root)
        return cached(f"{self.name}-decoded", self._stamp(base), lambda: self._decode(base), root)

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, ScaledSequences]:
        """Decode (or load the decoded cache) the train / val / test clips.

        Args:
            root: the data root.
        """
        self.check_present(root)
        tensors = self._tensors(root)
        if self.normalize == "position":
            mean, std = position_statistics(tensors["train_x"])
            scale, shift = (1 / (32768 * (std + 1e-5))).float(), (-mean / (std + 1e-5)).float()  # (L, 1) each
        else:
            scale, shift = 1 / 32768, 0.0
        return {s: ScaledSequences(tensors[f"{s}_x"], tensors[f"{s}_y"], scale, shift)
                for s in ("train", "val", "test")}


@register_task("sc35")
@dataclasses.dataclass(frozen=True)
class SC35Task(_SpeechCommands):
    """Speech Commands, all 35 words, raw audio (B, 16000, 1).

    Args:
        normalize: ``"position"`` (S4: each time step standardised with the training clips' mean and std) or
            ``"none"`` (sample / 32768).
    """


def stratified_split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded split of each class into 70 % train, then the rest halved into validation and test.

    Per class of n items: ⌊0.7 n⌋ train, ⌊(n − ⌊0.7 n⌋) / 2⌋ validation, the rest test. CKConv's and S4's two
    ``train_test_split`` calls round over all classes together (⌊0.7 N⌋ training clips of N), so their parts differ
    from these by a clip or two per class (on 34,975 clips, a few clips per part).

    Args:
        labels: (B,) int64.
        seed: the seed of the permutations.

    Returns:
        train, val and test (B,) int64 item numbers, each sorted.
    """
    generator = torch.Generator().manual_seed(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in torch.unique(labels).tolist():
        items = torch.nonzero(labels == c)[:, 0]
        items = items[torch.randperm(len(items), generator=generator)]
        n_train = int(0.7 * len(items))
        n_val = (len(items) - n_train) // 2
        for part, chunk in zip(parts, (items[:n_train], items[n_train:n_train + n_val], items[n_train + n_val:])):
            part.append(chunk)
    return tuple(torch.cat(p).sort().values for p in parts)


SC10_SPLITS = ("random", "lists")


@register_task("sc10")
@dataclasses.dataclass(frozen=True)
class SC10Task(_SpeechCommands):
    """Speech Commands, the ten command words (yes, no, up, down, left, right, on, off, stop, go), raw audio.

    The published SC10 numbers (S4 v1 98.32, arXiv 2111.00396; DSS 97.7) come from CKConv's protocol, which S4's
    loader implements (``_process_data``): only the clips of exactly 16,000 samples (34,975 in v0.02), a random
    stratified 70 / 15 / 15 split (so speakers are shared between the splits), then ``normalize``. That is
    ``split="random"`` (the same protocol, sizes to a few clips, not the same clips: the original's order comes from
    ``os.listdir``). ``split="lists"`` uses the release's speaker-disjoint validation and testing lists with every
    clip padded, as SC35 does.

    Args:
        normalize: ``"position"`` (S4: each time step standardised with the training clips' mean and std) or
            ``"none"`` (sample / 32768).
        split: ``"random"`` (CKConv / S4 v1) or ``"lists"`` (the release's lists).
        seed: the seed of the random split.
    """

    split: str = "random"
    seed: int = 0

    words = WORDS10
    label = "SC10"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split not in SC10_SPLITS:
            raise ValueError(f"split must be one of {SC10_SPLITS} ('random': CKConv / S4 v1, full-length clips, "
                             f"70 / 15 / 15; 'lists': the release's validation and testing lists); got {self.split!r}")

    def info(self) -> TaskInfo:
        """Float inputs (B, 16000, 1), 10 classes; the title names the split protocol."""
        protocol = ("full-length clips, random 70/15/15 split, seed " + str(self.seed) if self.split == "random"
                    else "the release's split lists")
        return dataclasses.replace(super().info(), title=f"Speech Commands SC10 (raw 16 kHz, {protocol})")

    def _decode_full_length(self, base: pathlib.Path) -> dict[str, torch.Tensor]:
        xs, ys = [], []
        for label, word in enumerate(self.words):
            for path in sorted((base / word).glob("*.wav")):
                samples = read_samples(path)
                if len(samples) == SAMPLE_RATE:  # CKConv / S4 drop the shorter clips
                    xs.append(samples)
                    ys.append(label)
        if not xs:
            raise ValueError(f"{base}: no clips of exactly {SAMPLE_RATE} samples among the words {self.words}")
        return {"x": torch.from_numpy(np.stack(xs))[..., None], "y": torch.tensor(ys)}

    def _tensors(self, root: str | os.PathLike | None) -> dict[str, torch.Tensor]:
        if self.split == "lists":
            return super()._tensors(root)
        base = self.folder(root)
        full = cached(f"{self.name}-decoded-full", self._stamp(base), lambda: self._decode_full_length(base), root)
        out = {}
        for name, index in zip(("train", "val", "test"), stratified_split(full["y"], self.seed)):
            out[f"{name}_x"], out[f"{name}_y"] = full["x"][index], full["y"][index]
        return out
