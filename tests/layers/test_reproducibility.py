"""Reproducible layers (probe 17): ``torch.manual_seed`` alone fixes every layer's initialisation (no numpy or Python
global generator, no dependence on string-hash randomisation), and under ``torch.use_deterministic_algorithms(True)``
every layer runs forward and backward on every backend, with the same bits run to run at 2 threads and within float32
round-off of 1 thread."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import runpy
import sys

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from ssmkit.ops import use_backend
from tests.interpreters import run_python
from tests.conftest import DEVICE, NEEDED_AT_TINY_WIDTH, rel_err, runnable_backends, variants

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIDTH = 6  # divisible by every variant's head sizes (2, 3) and wide enough for Mamba-2's headdim 2 and 3
BUILDS = [(name, i) for name in layers.available() for i in range(len(variants(name)))]


def _build(name: str, i: int, seed: int = 0):
    torch.manual_seed(seed)
    return layers.build(name, d_model=WIDTH, device=DEVICE, **variants(name)[i])


def _digest(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the state dict (names, dtypes and bytes) in name order."""
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        h.update(f"{key} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name,i", BUILDS, ids=[f"{n}-{i}" for n, i in BUILDS])
def test_the_torch_seed_alone_fixes_the_initialisation(name, i):
    np.random.seed(1)
    random.seed(1)
    states = np.random.get_state()[1].copy(), random.getstate()
    first = _digest(_build(name, i))
    # the global numpy and Python generators are neither read nor moved by a build
    assert np.array_equal(np.random.get_state()[1], states[0]) and random.getstate() == states[1]
    np.random.seed(2)
    random.seed(2)
    assert _digest(_build(name, i)) == first
    assert _digest(_build(name, i, seed=1)) != first  # the seed matters: every layer draws something


# run in fresh interpreters with different PYTHONHASHSEED: set iteration order and str hashes change between them.
# It imports only ssmkit (tests.conftest would add seconds of imports); the options come in argv as JSON.
_HASH_SCRIPT = """
import hashlib, json, sys, tempfile, torch
import ssmkit.data as data, ssmkit.layers as layers
from ssmkit.models import SequenceModel
width, builds, tiny = json.loads(sys.argv[1])
def digest(tensors):
    h = hashlib.sha256()
    for key, t in tensors:
        h.update(f"{key} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
def model_digest(module):
    return digest(sorted(module.state_dict().items()))
out = []
for name, i, opts in builds:
    torch.manual_seed(0)
    out.append(f"{name}-{i} " + model_digest(layers.build(name, d_model=width, **opts)))
for name in layers.available():
    torch.manual_seed(0)
    out.append(f"model-{name} " + model_digest(SequenceModel(3, width, 2, name, tiny.get(name), 4)))
torch.manual_seed(0)  # a hybrid with options keyed by layer name
hybrid = SequenceModel(3, width, 3, ["mamba2", "s4d", "attention"], {"mamba2": {"headdim": 2}, "attention": {"n_heads": 2}}, 4)
out.append("hybrid " + model_digest(hybrid))
# ListOps drawn in this process (workers=1), whose hash seed is the one under test; the default, a pool of one process
# per CPU, started two more interpreters per run (the data do not depend on workers: tests/data/test_listops_reference.py)
small = {"listops": dict(n_train=6, n_val=2, n_test=2, min_length=20, max_length=60, l_max=64, max_depth=4, workers=1),
         "copying": dict(n_train=4, n_val=2, n_test=2),
         "mqar": dict(length=32, num_kv_pairs=4, vocab_size=64, n_train=4, n_val=2, n_test=2)}
for task, options in small.items():
    with tempfile.TemporaryDirectory() as root:
        for split, ds in sorted(data.get_task(task, seed=3, **options).splits(root).items()):
            out.append(f"{task}-{split} " + digest(enumerate(ds.tensors)))
print("\\n".join(out))
"""


def test_initialisations_and_generated_data_do_not_depend_on_string_hashing(tmp_path, monkeypatch):
    # ListOps draws with Python's random and de-duplicates its sequences; the upstream generator's set order made even
    # a seeded run irreproducible (docs/design.md, Data). The same script runs here and in a fresh interpreter with
    # another PYTHONHASHSEED (set iteration order and str hashes change with it).
    builds = [(name, i, variants(name)[i]) for name, i in BUILDS]
    arg = json.dumps([WIDTH, builds, NEEDED_AT_TINY_WIDTH])
    script = tmp_path / "digests.py"
    script.write_text(_HASH_SCRIPT)
    hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": os.path.join(ROOT, "src")}
    # one hang of this 5-second child was seen on CI (killed at 300 s, no stack; never reproduced here in about 30 runs): a
    # hang is retried once, reported with its stacks (tests/interpreters.py)
    done = run_python([str(script), arg], env=env, timeout=150, attempts=2)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setattr(sys, "argv", [str(script), arg])
    here = io.StringIO()
    with contextlib.redirect_stdout(here):
        runpy.run_path(str(script), run_name="__main__")
    first, second = (dict(line.split() for line in out.splitlines()) for out in (done.stdout, here.getvalue()))
    assert len(first) == len(BUILDS) + len(layers.available()) + 1 + 9  # 3 tasks x 3 splits
    assert first == second
    assert first["copying-train"] != first["copying-test"] and first["s4d-0"] != first["s4d-1"]  # digests see data


@pytest.fixture
def deterministic():
    was, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)
    torch.set_num_threads(threads)


CASES = [(name, i, backend) for name, i in BUILDS for backend in runnable_backends(layers.layer_class(name))]


@pytest.mark.parametrize("name,i,backend", CASES, ids=[f"{n}-{i}-{b}" for n, i, b in CASES])
def test_deterministic_algorithms_run_and_repeat_bit_for_bit_on_two_threads(name, i, backend, deterministic):
    layer = _build(name, i)
    x = torch.randn(4, 64, WIDTH, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    w = torch.linspace(-1, 1, WIDTH, device=DEVICE)

    def run(threads: int) -> list[torch.Tensor]:
        torch.set_num_threads(threads)
        layer.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        with use_backend(backend):
            y, _ = layer(xx)
            (y * w).sum().backward()  # no RuntimeError: no op without a deterministic implementation
        return [y.detach(), xx.grad] + [p.grad for p in layer.parameters() if p.grad is not None]

    two, again, one = run(2), run(2), run(1)
    assert len(two) == len(again) and all(torch.equal(a, b) for a, b in zip(two, again))
    # 1 against 2 threads: PyTorch's own GEMMs and sums over B·L (projection weights, norms, S5's B) are split and
    # reassociated differently; observed ≤ 6e-6 of each tensor's largest entry (S5's ∂log Δ at L 200), float32
    assert max(rel_err(a, b) for a, b in zip(two, one)) < 3e-5
