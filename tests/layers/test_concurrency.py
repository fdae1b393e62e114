"""One model served by several Python threads, inference mode before and after training, models in worker processes.

An inference server shares one model between request threads; a data pipeline runs layers in DataLoader workers or
a process pool. Every output must equal the single-threaded one: the threads share the layers' value caches
(``layers/cache.py``) and the native kernels, whose thread split never changes a result. Bit for bit, but for MKL:
its GEMMs may round differently in another Python thread (attention's step in float64 differed by 1.8e-16 relative
from the main thread's, in 1 thread as in 4; with ``MKL_CBWR=COMPATIBLE`` in the environment every output of every
layer is bitwise equal), so threads are compared within 4 ulps (a cache race -- a value of another key or length, a
half-built entry -- errs by O(1)). Worker processes are compared bit for bit. docs/design.md, "Probe 14".
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import threading

import pytest
import torch

import ssmkit.layers as layers
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, run_steps

NAMES = layers.available()
L = 29
pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="threads and processes on the CPU")


def everything(layer, x: torch.Tensor) -> list[torch.Tensor]:
    """forward (twice: two lengths, S4's plan cache keyed by length), the step loop, the kernel and the state space."""
    out = [*leaves(layer(x)), *leaves(layer(x[:, :11]))]
    if layer.supports("step"):
        out += leaves(run_steps(layer, x))
    if layer.supports("kernel"):
        out.append(layer.kernel(L))
    if layer.supports("state_space"):
        ss = layer.state_space()
        out += [torch.as_tensor(m) for m in (ss.A, ss.B, ss.C, ss.D)]
    return out


def in_threads(fn, n: int = 4) -> list:
    """fn() in n threads released together; their results (an exception in any thread is raised here)."""
    barrier, results, errors = threading.Barrier(n), [None] * n, []

    def run(i):
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as err:  # noqa: BLE001 -- re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", NAMES)
def test_threads_sharing_one_model_get_the_single_threaded_outputs(name, dtype, mode):
    # the caches are first filled by the racing threads (a fresh copy), then reused by them
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    base = make_layer(name, dtype=dtype).eval()
    x = torch.randn(2, L, H, dtype=dtype, generator=torch.Generator().manual_seed(3))
    with context():
        expected = everything(copy.deepcopy(base), x)
    shared = copy.deepcopy(base)

    def work():
        with context():
            return [everything(shared, x) for _ in range(2)]

    for outs in in_threads(work):
        for got in outs:
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                assert a.shape == b.shape and rel_err(a, b) <= 4 * torch.finfo(dtype).eps, (name, rel_err(a, b))


def loss_and_grads(layer, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    y, _ = layer(x)
    loss = y.square().sum()
    if layer.supports("step"):
        loss = loss + run_steps(layer, x)[0].square().sum()
    params = [p for p in layer.parameters() if p.requires_grad]
    return [g for g in torch.autograd.grad(loss, [x, *params], allow_unused=True) if g is not None]


@pytest.mark.parametrize("name", NAMES)
def test_inference_mode_then_training_then_inference_mode(name):
    # generation under inference_mode fills the caches; a training step after it must not meet an inference tensor
    # (saved for backward) nor stale values, and inference after the update must see the new weights
    base = make_layer(name)
    x = torch.randn(2, L, H, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    layer = copy.deepcopy(base)
    with torch.inference_mode():
        everything(layer, x)
    fresh = loss_and_grads(copy.deepcopy(base), x)
    for a, b in zip(loss_and_grads(layer, x), fresh, strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(0.97)  # an optimizer step
    updated = copy.deepcopy(layer)  # a copy never cached anything (caches are copied empty)
    with torch.inference_mode():
        got, expected = everything(layer, x), everything(updated, x)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_a_state_made_in_inference_mode_is_refused_by_autograd_with_pytorchs_message():
    # as for torch.nn.LSTM: a state returned under inference_mode cannot enter a differentiated forward; the error is
    # PyTorch's own and says what to do (clone it outside inference mode), and the clone gives the right gradients
    layer = make_layer("s4d")
    x = torch.randn(2, L, H, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        _, h = layer(x[:, :10])
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        layer(x[:, 10:], state=h)[0].sum().backward()
    h = h.clone()
    w = torch.linspace(-1, 1, L - 10, dtype=torch.float64).view(1, -1, 1)
    (layer(x[:, 10:], state=h)[0] * w).sum().backward()
    got = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    _, h_ref = layer(x[:, :10])
    (layer(x[:, 10:], state=h_ref.detach())[0] * w).sum().backward()
    for a, b in zip(got, [p.grad for p in layer.parameters()], strict=True):
        assert rel_err(a, b) < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# Processes: a model pickled to spawned workers; DataLoader workers forked after the parent ran the native kernels

WORKER_NAMES = ["s4d", "s4", "mamba", "s5", "rglru", "hyena"]


def run_in_worker(args):
    """The forward and the step loop of a pickled layer (in a worker process; module level for pickling)."""
    layer, x, threads = args
    torch.set_num_threads(threads)
    with torch.no_grad():
        return leaves(layer(x)) + leaves(run_steps(layer, x))


class Features(torch.utils.data.Dataset):
    """A dataset whose items are a layer's outputs (a feature extractor inside a data pipeline)."""

    def __init__(self, layer, x: torch.Tensor) -> None:
        self.layer, self.x = layer, x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        with torch.no_grad():
            return self.layer(self.x[i : i + 1])[0][0]


def parent_with_two_threads():
    """Models run once in the parent on two threads: the native kernels are loaded, OpenMP's pool has threads."""
    models = {name: make_layer(name, dtype=torch.float32).eval() for name in WORKER_NAMES}
    x = torch.randn(3, 200, H, generator=torch.Generator().manual_seed(6))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = {name: run_in_worker((m, x, 2)) for name, m in models.items()}
    finally:
        torch.set_num_threads(threads)
    return models, x, expected


@pytest.mark.skipif("spawn" not in mp.get_all_start_methods(), reason="needs the spawn start method")
def test_a_model_pickled_to_spawned_workers_gives_the_parents_outputs():
    models, x, expected = parent_with_two_threads()
    tasks = [(models[name], x, threads) for name in WORKER_NAMES for threads in (1, 2)]
    with mp.get_context("spawn").Pool(1) as pool:
        outs = pool.map(run_in_worker, tasks, chunksize=len(tasks))
    for (layer, _, threads), got in zip(tasks, outs, strict=True):
        for a, b in zip(got, expected[layer.name], strict=True):
            assert torch.equal(a, b), (layer.name, threads, rel_err(a, b))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_forked_dataloader_workers_run_a_layer_as_the_parent_does():
    # (spawned workers unpickle the model as the pool above does; a spawned DataLoader took 23 s here, two imports)
    method = "fork"
    models, x, _ = parent_with_two_threads()
    layer = models["mamba"]  # the native selective scan and short convolution
    loader = torch.utils.data.DataLoader(Features(layer, x), batch_size=2, num_workers=2, multiprocessing_context=method)
    got = torch.cat(list(loader))
    with torch.no_grad():
        expected = torch.cat([layer(x[i : i + 1])[0] for i in range(x.shape[0])])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["s4d", "dss", "s5", "lru", "rglru", "mamba"])  # the layers on the C kernels
def test_changing_the_thread_count_between_calls(name):
    # a server tuning torch.set_num_threads between requests: the kernels split their items over the threads but
    # sum per item, so a float32 call gives the same output and gradients on 1 and 3 threads, and both agree with the
    # float64 layer
    double = make_layer(name, dtype=torch.float64)
    layer = make_layer(name, dtype=torch.float32)
    layer.load_state_dict(double.state_dict())  # the same weights, rounded (a seed draws other ones in float32)
    x = torch.randn(2, 64, H, generator=torch.Generator().manual_seed(7))
    reference = loss_and_grads(double, x.double())
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3, 1):  # (3 threads on fewer cores still split the items three ways)
            torch.set_num_threads(n)
            results.append(loss_and_grads(layer, x))
    finally:
        torch.set_num_threads(threads)
    for one, three, again, ref in zip(*results, reference, strict=True):
        assert torch.equal(again, one)
        assert rel_err(three, one) <= 1e-6  # 0 here; PyTorch's own reductions around the kernel may split by thread
        assert rel_err(one, ref) < 5e-5, rel_err(one, ref)  # float32 against float64, L 64: <= 6.4e-6 here (S4D)
