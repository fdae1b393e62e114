"""Benchmark fidelity (probe 5): the data pipelines give what the published numbers were measured on.

Each test states the source convention it checks (S4 = state-spaces/s4 ``src/dataloaders``, S5 =
lindermanlab/S5 ``s5/dataloaders``), on fixtures written in the releases' file layouts.
"""

import hashlib

import numpy as np
import pytest
import torch

from ssmkit.data import get_task
from ssmkit.data.listops import generate_listops, write_listops_tsv
from ssmkit.train.experiment import Experiment

rng = np.random.default_rng(5)


def _listops_release(tmp_path):
    rows = generate_listops(6, seed=2, min_length=5, max_length=40, max_depth=5, draws_per_chunk=200)
    folder = tmp_path / "lra_release" / "listops-1000"
    for split in ("train", "val", "test"):
        write_listops_tsv(folder / f"basic_{split}.tsv", rows)
    return get_task("lra_listops", l_max=64).splits(tmp_path)["test"].tensors[0]


def _imdb_release(tmp_path):
    for split in ("train", "test"):
        for sub in ("pos", "neg"):
            (tmp_path / "aclImdb" / split / sub).mkdir(parents=True)
            for i in range(3):
                text = "a review " + "x" * int(rng.integers(1, 30))
                (tmp_path / "aclImdb" / split / sub / f"{i}_1.txt").write_text(text)
    return get_task("lra_text", l_max=64, n_val=2).splits(tmp_path)["test"].tensors[0]


@pytest.mark.parametrize("name, read", [
    ("lra_listops", _listops_release),
    ("lra_text", _imdb_release),
])
def test_padded_token_tasks_declare_their_padding(tmp_path, name, read):
    """S4 pools ListOps and IMDB over each sequence's length (pipelines listops / imdb: ``use_lengths: true``,
    experiment ``decoder.mode: pool``) and S5 with ``masked_meanpool`` (``padded`` for imdb, listops, aan): the
    padding must not enter the mean. The task declares the id its loader pads with, no content token has that id,
    and the model built from a shipped config gets it."""
    x = read(tmp_path)
    info = get_task(name).info()
    assert info.pad_id == 0
    for row in x:
        content = int((row != info.pad_id).sum())
        assert content < len(row) and bool((row[:content] != info.pad_id).all())  # right-padded, pad id only there
    config = Experiment(task=name, model="s4d", d_model=8, n_layers=1).model_config(info)
    assert config.pad_id == 0 and config.pool == "mean"


def test_generated_listops_declares_its_padding():
    assert get_task("listops").info().pad_id == 0


def _digest(row: torch.Tensor) -> str:
    return hashlib.sha256(row.numpy().tobytes()).hexdigest()
