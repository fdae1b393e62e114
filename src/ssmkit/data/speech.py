"""Speech Commands (Warden 2018, arXiv 1804.03209) as raw 16 kHz waveforms: SC35 (all 35 words) and SC10 (the ten
command words), the raw-audio tasks of S4 (arXiv 2111.00396 §4.3) and of CKConv.

Files (``speech_commands_v0.02.tar.gz`` unpacked) at ``<root>/speech_commands``: one folder per word of 16-bit PCM
mono WAV files at 16 kHz, plus ``validation_list.txt`` and ``testing_list.txt`` naming the validation and test files
(``word/file.wav``); every other file of a used word is training data. ``_background_noise_`` is not a word.
Each clip is zero-padded at the end (or cut) to 16,000 samples and scaled to [−1, 1) (sample / 32768), giving
(B, 16000, 1). Decoded clips are cached under ``<root>/decoded/`` (atomic write).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import wave

import numpy as np
import torch

from ssmkit.data.sequences import ScaledSequences
from ssmkit.data.store import cached, data_root
from ssmkit.data.task import FileTask, TaskInfo, register_task

WORDS35 = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
    "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop",
    "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)
WORDS10 = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SAMPLE_RATE = 16_000


def read_wav(path: str | os.PathLike, length: int = SAMPLE_RATE) -> np.ndarray:
    """Read a 16-bit PCM mono WAV file at 16 kHz, zero-padded at the end (or cut) to ``length`` samples.

    Args:
        path: the .wav file.
        length: samples returned.

    Returns:
        the samples as an int16 array of ``length`` values.
    """
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1 or f.getframerate() != SAMPLE_RATE:
            raise ValueError(f"{path}: expected 16-bit mono PCM at {SAMPLE_RATE} Hz; got {8 * f.getsampwidth()}-bit, "
                             f"{f.getnchannels()} channels, {f.getframerate()} Hz")
        samples = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    out = np.zeros(length, dtype=np.int16)
    out[: min(length, len(samples))] = samples[:length]
    return out


@dataclasses.dataclass(frozen=True)
class _SpeechCommands(FileTask):
    words = WORDS35
    label = "SC35"

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

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, ScaledSequences]:
        """Decode (or load the decoded cache) the train / val / test clips.

        Args:
            root: the data root.
        """
        self.check_present(root)
        base = self.folder(root)
        stamp = [(w, len(os.listdir(base / w))) for w in self.words]
        stamp += [(n, (base / n).stat().st_size) for n in ("validation_list.txt", "testing_list.txt")]
        tensors = cached(f"{self.name}-decoded", {"folder": str(base.resolve()), "files": stamp},
                         lambda: self._decode(base), root)
        return {s: ScaledSequences(tensors[f"{s}_x"], tensors[f"{s}_y"], 1 / 32768, 0.0)
                for s in ("train", "val", "test")}


@register_task("sc35")
@dataclasses.dataclass(frozen=True)
class SC35Task(_SpeechCommands):
    """Speech Commands, all 35 words, raw audio (B, 16000, 1)."""


@register_task("sc10")
@dataclasses.dataclass(frozen=True)
class SC10Task(_SpeechCommands):
    """Speech Commands, the ten command words (yes, no, up, down, left, right, on, off, stop, go), raw audio."""

    words = WORDS10
    label = "SC10"
