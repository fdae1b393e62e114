"""The peers of ``ssmkit bench cases``, the official-S4 loader, and the parts of the gpu, selective and ssd suites that
run without a GPU (their shapes, bounds, rows and tables), against references written here (probe 49, mutation testing).

The peers' packages (mambapy, accelerated-scan, s5-pytorch, einops, the official S4 file) are replaced by stand-ins
that record how they are called, so each peer's construction and its timed callable are checked whether or not the
package is installed; the plain loop is checked against the layer it copies. No time is asserted: the suites' clocks
are replaced by scripted ones.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

import ssmkit.bench.core as core
import ssmkit.bench.peers as peers
import ssmkit.layers as layers
from ssmkit.bench.official import load_official
from ssmkit.bench.peers import Case, PeerUnavailable
from ssmkit.layers.cache import _FROZEN
from ssmkit.ops import get_backend
from ssmkit.ops.native import native_available


def gradient_seed0(shape, dtype=torch.float32):
    """The fixed ∂ℓ/∂y of ssmkit.bench.backward for the first output shape: N(0, 1) from a generator seeded 0."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)


def case_input(case: Case) -> torch.Tensor:
    return torch.randn(case.batch, case.length, case.d_model, generator=torch.Generator().manual_seed(0)).to(
        case.torch_dtype)


# ---------------------------------------------------------------------------------------------------------------------
# peers.runner


def test_runner_forward_runs_once_without_grad_on_the_seeded_input():
    case = Case("s4d", 2, 5, 3, 4, "float64", "forward")
    seen = []

    def forward(x):
        seen.append((x.clone(), torch.is_grad_enabled()))
        return x

    run = peers.runner(case, forward, [])
    assert seen == [] and run() is None
    ((x, grad),) = seen
    assert x.dtype == torch.float64 and not grad and torch.equal(x, case_input(case))
    run()
    assert len(seen) == 2 and torch.equal(seen[1][0], x)


def test_runner_forward_backward_starts_from_the_fixed_gradient_and_clears_the_old_one():
    case = Case("s4d", 2, 4, 3, 4, "float32", "forward_backward")
    w = torch.nn.Parameter(torch.tensor([0.5, -2.0, 3.0]))
    v = torch.nn.Parameter(torch.tensor(1.5))
    inputs = []

    def forward(x):
        inputs.append(x)
        return x * w * v

    run = peers.runner(case, forward, [w, v])
    w.grad, v.grad = torch.full((3,), 100.0), torch.tensor(100.0)
    run()
    x = case_input(case)
    g = gradient_seed0((2, 4, 3))
    torch.testing.assert_close(w.grad, (g * x * v.detach()).sum((0, 1)))
    torch.testing.assert_close(v.grad, (g * x * w.detach()).sum())
    assert inputs[0].is_leaf and inputs[0].requires_grad and torch.equal(inputs[0].detach(), x)
    torch.testing.assert_close(inputs[0].grad, g * w.detach() * v.detach())
    run()  # cleared before each call: the same gradient again, not twice it
    torch.testing.assert_close(w.grad, (g * x * v.detach()).sum((0, 1)))
    assert inputs[1] is not inputs[0] and inputs[0].grad is not None


def test_runner_step_threads_the_state_from_the_given_one_each_call():
    case = Case("s4d", 2, 4, 3, 4, "float64", "step")
    calls = []

    def step(x_t, s):
        calls.append((x_t.clone(), s, torch.is_grad_enabled()))
        return None, s + 1

    run = peers.runner(case, lambda x: x, [], step, 10)
    run()
    x = case_input(case)
    assert [s for _, s, _ in calls] == [10, 11, 12, 13] and not any(g for *_, g in calls)
    for t, (x_t, _, _) in enumerate(calls):
        assert torch.equal(x_t, x[:, t])
    run()
    assert [s for _, s, _ in calls[4:]] == [10, 11, 12, 13]
    with pytest.raises(PeerUnavailable, match="^has no recurrent step$"):
        peers.runner(case, lambda x: x, [], None, 0)


def test_a_case_is_a_frozen_hashable_value():
    import dataclasses

    case = Case("s4d", 1, 2, 3, 4, "float32", "forward")
    assert hash(case) == hash(Case("s4d", 1, 2, 3, 4, "float32", "forward")) and {case: 1}[case] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.length = 5
    assert Case("s4d", 1, 2, 3, 4, "float64", "step").torch_dtype == torch.float64


def test_runner_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="^unknown mode 'sideways'$"):
        peers.runner(Case("s4d", 1, 2, 1, 1, "float32", "sideways"), lambda x: x, [])


# ---------------------------------------------------------------------------------------------------------------------
# peers.ssmkit_runner and peers.peer_runner


class Recorder(torch.nn.Module):
    """A layer that records each call: its backend, return_state, grad mode, dtype, frozen scope, training flag."""

    def __init__(self, step: bool = True):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.capabilities = types.SimpleNamespace(step=step)
        self.log = []

    def forward(self, x, return_state=True):
        self.log.append(("forward", get_backend(), return_state, torch.is_grad_enabled(), x.dtype, self.training))
        return x * self.w, None

    def step(self, x_t, s):
        self.log.append(("step", get_backend(), _FROZEN.get() != 0, torch.is_grad_enabled(), self.training))
        return x_t, s + 1

    def initial_state(self, batch):
        self.log.append(("initial_state", batch))
        return 100 * batch


@pytest.fixture()
def recorded_build(monkeypatch):
    built = []

    def build_for_bench(name, d_model, d_state, length=None):
        layer = Recorder(step=name != "nostep")
        built.append(((name, d_model, d_state, length), torch.rand(1).item(), layer))
        return layer

    monkeypatch.setattr(core, "build_for_bench", build_for_bench)
    return built


def first_draw(seed: int = 0) -> float:
    torch.manual_seed(seed)
    return torch.rand(1).item()


@pytest.mark.parametrize("backend", ["chunked", "fft", "reference"])
def test_ssmkit_runner_forward_modes(recorded_build, backend):
    for mode, grad in (("forward", False), ("forward_backward", True)):
        case = Case("s4d", 2, 6, 3, 4, "float64", mode)
        torch.manual_seed(123)  # the runner seeds the global generator itself
        run = peers.ssmkit_runner(case, backend)
        (args, draw, layer) = recorded_build[-1]
        assert args == ("s4d", 3, 4, 6) and draw == first_draw(0)  # built right after torch.manual_seed(0)
        assert layer.w.dtype == torch.float64 and layer.log == []
        run()
        assert layer.log == [("forward", backend, False, grad, torch.float64, True)]
        if grad:
            torch.testing.assert_close(layer.w.grad, (gradient_seed0((2, 6, 3), torch.float64) * case_input(case)).sum(
                (0, 1)))


def test_ssmkit_runner_step(recorded_build):
    case = Case("s5", 2, 3, 3, 4, "float32", "step")
    run = peers.ssmkit_runner(case, "chunked")
    (args, _, layer) = recorded_build[-1]
    assert args == ("s5", 3, 4, None)  # no l_max for a step case
    assert layer.log == [("initial_state", 2)] and not layer.training
    run()
    assert layer.log[1:] == [("step", "auto", True, False, False)] * 3
    with pytest.raises(PeerUnavailable, match="^nostep has no step$"):
        peers.ssmkit_runner(Case("nostep", 1, 2, 3, 4, "float32", "step"), "auto")
    peers.ssmkit_runner(Case("nostep", 1, 2, 3, 4, "float32", "forward"), "auto")  # no step needed to run forward


def test_peer_runner_builds_the_named_peer_and_runs_it_once(monkeypatch):
    calls = []

    def builder(name):
        def build(*args):
            calls.append((name, args))
            return lambda: calls.append((name, "run"))
        return build

    for name in ("_official_s4", "_loop", "_mambapy", "_accelerated_scan", "_s5_pytorch"):
        monkeypatch.setattr(peers, name, builder(name))
    case = Case("s4d", 1, 2, 3, 4, "float32", "forward")
    expected = {"official-s4": ("_official_s4", (case, "s4.py")), "loop": ("_loop", (case,)),
                "mambapy": ("_mambapy", (case,)), "accelerated-scan": ("_accelerated_scan", (case,)),
                "s5-pytorch": ("_s5_pytorch", (case,))}
    assert tuple(expected) == peers.PEERS
    for peer, built in expected.items():
        calls.clear()
        run = peers.peer_runner(peer, case, "s4.py")
        assert calls == [built, (built[0], "run")]
        run()
        assert calls[-1] == (built[0], "run")
    with pytest.raises(ValueError, match=r"^peer must be one of \('official-s4', 'loop', 'mambapy', "
                                         r"'accelerated-scan', 's5-pytorch'\); got 'loops'$"):
        peers.peer_runner("loops", case)


def test_a_failing_peer_names_its_error_in_one_short_line(monkeypatch):
    def broken(case):
        def run():
            raise KeyError("k" * 300 + "\nsecond line")
        return run

    monkeypatch.setattr(peers, "_loop", broken)
    with pytest.raises(PeerUnavailable) as e:
        peers.peer_runner("loop", Case("s4d", 1, 2, 3, 4, "float32", "forward"))
    first = str(KeyError("k" * 300 + "\nsecond line")).splitlines()[0][:200]
    assert str(e.value) == f"failed on this case (KeyError: {first})" and len(first) == 200
    assert e.value.__cause__ is None and e.value.__suppress_context__


# ---------------------------------------------------------------------------------------------------------------------
# _import, _cast


def test_import_names_the_package_and_the_error(monkeypatch):
    assert peers._import("math", "m") is math
    with pytest.raises(PeerUnavailable, match=r"^nopkg-x is not installed \(ModuleNotFoundError: No module named "
                                              r"'no_such_module_x'\)$") as e:
        peers._import("no_such_module_x", "nopkg-x")
    assert e.value.__cause__ is None and e.value.__suppress_context__

    def broken(name):
        raise OSError("libcudart.so: cannot open shared object file")

    monkeypatch.setattr(peers.importlib, "import_module", broken)
    with pytest.raises(PeerUnavailable, match=r"^pkg is not installed \(OSError: libcudart.so: cannot open"):
        peers._import("anything", "pkg")


def test_cast_real_and_complex_tensors_of_a_module():
    m = torch.nn.Module()
    m.z = torch.nn.Parameter(torch.tensor([1.0 + 2.0j], dtype=torch.complex128))
    m.w = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    m.register_buffer("h16", torch.tensor([1.5], dtype=torch.float16))
    m.register_buffer("n", torch.tensor([7], dtype=torch.int32))
    assert peers._cast(m, torch.float32) is m
    assert (m.z.dtype, m.w.dtype, m.h16.dtype, m.n.dtype) == (torch.complex64, torch.float32, torch.float32,
                                                               torch.int32)
    peers._cast(m, torch.float64)
    assert (m.z.dtype, m.w.dtype, m.h16.dtype) == (torch.complex128, torch.float64, torch.float64)
    assert m.z.item() == 1.0 + 2.0j and m.h16.item() == 1.5


# ---------------------------------------------------------------------------------------------------------------------
# the plain loop


def loop_reference(layer, u):
    """x_t = Ā x_{t-1} + B̄ u_t, y_t = Re(Σ_m C_m x_{t,m}) + D u_t, one channel and mode at a time, in complex128."""
    A_bar, B_bar, C = (t.detach().to(torch.complex128) for t in layer.discrete())
    D = layer.D.detach().double()
    B, L, H = u.shape
    y = torch.zeros(B, L, H, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            x = [0j] * A_bar.shape[-1]
            for t in range(L):
                acc = 0.0
                for m in range(A_bar.shape[-1]):
                    x[m] = A_bar[h, m].item() * x[m] + B_bar[h, m].item() * u[b, t, h].item()
                    acc += (C[0, h, m].item() * x[m]).real
                y[b, t, h] = acc + D[h].item() * u[b, t, h].item()
    return y


@pytest.mark.parametrize("name", ["s4d", "dss"])
def test_the_loop_peer_is_the_layers_recurrence(monkeypatch, name):
    captured = []
    real_runner = peers.runner

    def runner(case, forward, params, step=None, state=None):
        captured.append((forward, params, step, state))
        return real_runner(case, forward, params, step, state)

    monkeypatch.setattr(peers, "runner", runner)
    case = Case(name, 2, 7, 3, 6, "float64", "forward")
    peers._loop(case)
    (forward, params, step, state) = captured[-1]
    torch.manual_seed(0)
    layer = core.build_for_bench(name, 3, 6, 7).double()
    assert state is None and [p.shape for p in params] == [p.shape for p in layer.parameters()]
    for p, q in zip(params, layer.parameters()):
        assert torch.equal(p, q)  # the same seeded layer
    u = torch.randn(2, 7, 3, dtype=torch.float64)
    with torch.no_grad():
        y = forward(u)
    torch.testing.assert_close(y, loop_reference(layer, u), rtol=1e-10, atol=1e-12)
    # its step from the layer's initial state gives the same outputs
    peers._loop(Case(name, 2, 7, 3, 6, "float64", "step"))
    (_, _, step, state) = captured[-1]
    assert torch.equal(state, layer.initial_state(2)) and state.shape == (2, 3, layer.n_modes)
    with torch.no_grad():
        ys = []
        for u_t in u.unbind(1):
            y_t, state = step(u_t, state)
            ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), loop_reference(layer, u), rtol=1e-10, atol=1e-12)


def test_the_loop_peer_covers_the_causal_diagonal_layers_only(monkeypatch):
    for name in ("s4", "mamba"):
        with pytest.raises(PeerUnavailable, match=f"^the plain loop covers the diagonal LTI layers \\(s4d, dss\\), "
                                                  f"not {name}$"):
            peers._loop(Case(name, 1, 4, 2, 4, "float32", "forward"))
    real = core.build_for_bench
    monkeypatch.setattr(core, "build_for_bench",
                        lambda *a: layers.build("s4d", d_model=2, d_state=4, bidirectional=True))
    with pytest.raises(PeerUnavailable, match="not s4d$"):
        peers._loop(Case("s4d", 1, 4, 2, 4, "float32", "forward"))
    seen = []
    monkeypatch.setattr(core, "build_for_bench", lambda *a: seen.append(a) or real(*a))
    peers._loop(Case("s4d", 1, 4, 2, 4, "float32", "step"))
    peers._loop(Case("s4d", 1, 4, 2, 4, "float32", "forward_backward"))
    assert seen == [("s4d", 2, 4, None), ("s4d", 2, 4, 4)]


# ---------------------------------------------------------------------------------------------------------------------
# the packaged peers, through stand-ins


class Peer(torch.nn.Module):
    """A stand-in peer module: a real and a complex parameter; y = x · w."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs = args, kwargs
        self.draw = torch.rand(1).item()
        self.w = torch.nn.Parameter(torch.tensor(2.0))
        self.z = torch.nn.Parameter(torch.tensor(1.0 + 1.0j))

    def forward(self, x):
        return x * self.w


@pytest.fixture()
def packages(monkeypatch):
    """peers._import answering stand-in modules and recording what was asked for."""
    asked = []
    configs = []

    def MambaConfig(**kwargs):
        configs.append(kwargs)
        return ("config", kwargs)

    modules = {"mambapy.mamba": types.SimpleNamespace(MambaConfig=MambaConfig, MambaBlock=Peer),
               "s5": types.SimpleNamespace(S5=Peer), "einops": types.SimpleNamespace()}

    def fake_import(module, package):
        asked.append((module, package))
        if module not in modules:
            raise PeerUnavailable(f"{package} is not installed")
        return modules[module]

    monkeypatch.setattr(peers, "_import", fake_import)
    return types.SimpleNamespace(asked=asked, configs=configs, modules=modules)


@pytest.fixture()
def captured_runner(monkeypatch):
    captured = []
    real_runner = peers.runner

    def runner(case, forward, params, step=None, state=None):
        captured.append(types.SimpleNamespace(forward=forward, params=params, step=step, state=state))
        return real_runner(case, forward, params, step, state)

    monkeypatch.setattr(peers, "runner", runner)
    return captured


def test_mambapy_peer(packages, captured_runner):
    with pytest.raises(PeerUnavailable, match="^mambapy offers Mamba only, not s4d$"):
        peers._mambapy(Case("s4d", 1, 4, 2, 4, "float32", "forward"))
    assert packages.asked == []
    torch.manual_seed(123)  # the peer seeds the global generator itself
    run = peers._mambapy(Case("mamba", 2, 5, 6, 3, "float64", "forward_backward"))
    assert packages.asked == [("mambapy.mamba", "mambapy")]
    assert packages.configs == [{"d_model": 6, "n_layers": 1, "d_state": 3}]
    (r,) = captured_runner
    block = r.forward
    assert isinstance(block, Peer) and block.args == (("config", packages.configs[0]),) and block.draw == first_draw(0)
    assert block.w.dtype == torch.float64 and block.z.dtype == torch.complex128 and r.params == [block.w, block.z]
    run()
    case = Case("mamba", 2, 5, 6, 3, "float64", "forward_backward")
    torch.testing.assert_close(block.w.grad, (gradient_seed0((2, 5, 6), torch.float64) * case_input(case)).sum())


def test_s5_pytorch_peer(packages, captured_runner):
    with pytest.raises(PeerUnavailable, match="^s5-pytorch offers S5 only, not lru$"):
        peers._s5_pytorch(Case("lru", 1, 4, 2, 4, "float32", "forward"))
    torch.manual_seed(123)  # the peer seeds the global generator itself
    peers._s5_pytorch(Case("s5", 2, 5, 6, 3, "float32", "forward"))
    assert packages.asked == [("s5", "s5-pytorch")]
    (r,) = captured_runner
    assert r.forward.args == (6, 3) and r.forward.draw == first_draw(0)
    assert r.forward.z.dtype == torch.complex64 and r.forward.z.item() == 1.0 + 1.0j and r.params == [r.forward.w,
                                                                                                       r.forward.z]


@pytest.fixture()
def accelerated(monkeypatch):
    calls = []

    def scan(gates, tokens):
        calls.append((gates, tokens, torch.is_grad_enabled()))
        return gates * tokens

    monkeypatch.setattr(peers, "_import", lambda module, package: (
        types.SimpleNamespace(scan=scan) if (module, package) == ("accelerated_scan.ref", "accelerated-scan")
        else pytest.fail(f"asked for {module}")))
    return calls


@pytest.mark.parametrize("d_state,per_channel", [(8, 4), (3, 1), (1, 1), (2, 1)])
def test_accelerated_scan_peer_draws_real_gates_and_tokens(accelerated, d_state, per_channel):
    case = Case("lru", 2, 5, 3, d_state, "float64", "forward")
    run = peers._accelerated_scan(case)
    run()
    run()
    ((gates, tokens, _), again) = accelerated
    # forward: the scan of the drawn tensors themselves, nothing to differentiate
    assert again[1] is tokens and not tokens.requires_grad and tokens.grad is None
    channels = 3 * per_channel  # H · max(1, N // 2) real channels
    g = torch.Generator().manual_seed(0)
    expect_gates = (0.5 + 0.45 * torch.rand(2, channels, 5, generator=g)).double()
    expect_tokens = torch.randn(2, channels, 5, generator=g).double()
    assert torch.equal(gates, expect_gates) and torch.equal(tokens, expect_tokens)


def test_accelerated_scan_peer_modes(accelerated):
    for name in ("s4d", "dss", "s5", "lru"):
        peers._accelerated_scan(Case(name, 1, 4, 2, 2, "float32", "forward"))
    with pytest.raises(PeerUnavailable, match="^accelerated-scan is a real first-order scan: compared for diagonal "
                                              "layers only$"):
        peers._accelerated_scan(Case("mamba", 1, 4, 2, 2, "float32", "forward"))
    with pytest.raises(PeerUnavailable, match="^has no recurrent step$"):
        peers._accelerated_scan(Case("s4d", 1, 4, 2, 2, "float32", "step"))
    run = peers._accelerated_scan(Case("s4d", 2, 4, 3, 4, "float32", "forward_backward"))
    accelerated.clear()
    run()
    ((gates, tokens, grad),) = accelerated
    assert grad and tokens.is_leaf and tokens.requires_grad and not gates.requires_grad
    torch.testing.assert_close(tokens.grad, gates * gradient_seed0((2, 6, 4)))
    run()
    assert accelerated[1][1] is not tokens and tokens.grad is not None


def write_official(tmp_path, name="s4.py"):
    """A stand-in for the official models/s4/s4.py: FFTConv recording its options, its step and state calls."""
    path = tmp_path / name
    path.write_text('''
import torch
from pytorch_lightning.utilities import rank_zero_only

LOG = []
RANK_ZERO_ONLY = rank_zero_only


class FFTConv(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        LOG.append(("init", kwargs, torch.rand(1).item()))
        self.w = torch.nn.Parameter(torch.tensor(2.0))
        self.z = torch.nn.Parameter(torch.tensor(1.0 - 1.0j))

    def forward(self, x):
        LOG.append(("forward", x.dtype, self.training))
        return x * self.w, None

    def setup_step(self):
        LOG.append(("setup_step", self.training))

    def default_state(self, batch):
        LOG.append(("default_state", batch))
        return 1000 + batch

    def step(self, x_t, state):
        LOG.append(("step", state))
        return x_t, state + 1
''')
    return str(path)


@pytest.mark.parametrize("layer,mode,init", [("s4d", "diag", "diag-legs"), ("s4", "s4", "legs")])
def test_official_s4_peer(monkeypatch, tmp_path, captured_runner, layer, mode, init):
    monkeypatch.setitem(sys.modules, "einops", types.ModuleType("einops"))
    path = write_official(tmp_path)
    off = load_official(path)
    case = Case(layer, 2, 5, 3, 4, "float64", "forward_backward")
    torch.manual_seed(123)  # the peer seeds the global generator itself
    run = peers._official_s4(case, path)
    (kind, kwargs, draw), = off.LOG
    assert kind == "init" and draw == first_draw(0)
    assert kwargs == {"d_model": 3, "d_state": 4, "mode": mode, "init": init, "transposed": False, "activation": None,
                      "dropout": 0.0, "l_max": 5}
    (r,) = captured_runner
    conv = r.step.__self__
    assert conv.w.dtype == torch.float64 and conv.z.dtype == torch.complex128 and r.params == [conv.w, conv.z]
    assert r.state is None and conv.training
    run()
    assert off.LOG[-1] == ("forward", torch.float64, True)
    torch.testing.assert_close(conv.w.grad, (gradient_seed0((2, 5, 3), torch.float64) * case_input(case)).sum())
    # the step case: no l_max, eval mode, setup_step, then the default state, and the runs step from it
    off.LOG.clear()
    run = peers._official_s4(Case(layer, 2, 3, 3, 4, "float32", "step"), path)
    assert off.LOG[0][1]["l_max"] is None
    assert off.LOG[1:] == [("setup_step", False), ("default_state", 2)]
    (_, r) = captured_runner
    assert r.state == 1002
    run()
    assert off.LOG[3:] == [("step", 1002), ("step", 1003), ("step", 1004)]


def test_official_s4_peer_says_what_is_missing(monkeypatch, tmp_path):
    with pytest.raises(PeerUnavailable, match="^the official S4 code has no mamba$"):
        peers._official_s4(Case("mamba", 1, 4, 2, 4, "float32", "forward"), "x.py")
    for missing in (None, ""):
        with pytest.raises(PeerUnavailable, match=r"^no official checkout given \(--s4-file PATH/models/s4/s4.py\)$"):
            peers._official_s4(Case("s4d", 1, 4, 2, 4, "float32", "forward"), missing)
    monkeypatch.setitem(sys.modules, "einops", None)  # einops absent: the import fails
    with pytest.raises(PeerUnavailable, match=r"^einops is not installed \("):
        peers._official_s4(Case("s4", 1, 4, 2, 4, "float32", "forward"), write_official(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# official.load_official


def test_load_official_loads_once_per_path(tmp_path):
    a, b = write_official(tmp_path, "a.py"), write_official(tmp_path, "b.py")
    m = load_official(a)
    assert isinstance(m, types.ModuleType) and m.__name__ == "s4_official" and m.__file__ == a
    assert load_official(a) is m and load_official(b) is not m and load_official(b).__file__ == b
    with pytest.raises(ValueError, match=r"^cannot load the official S4 file '.*x\.txt'$"):
        load_official(str(tmp_path / "x.txt"))  # no loader for the suffix: no spec


def test_load_official_stands_in_for_a_missing_lightning(monkeypatch, tmp_path):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytorch_lightning" else real_find_spec(name, *a))
    for name in ("pytorch_lightning", "pytorch_lightning.utilities"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    m = load_official(write_official(tmp_path, "nolightning.py"))
    f = lambda: 1  # noqa: E731
    assert m.RANK_ZERO_ONLY(f) is f  # the stand-in decorator returns the function itself
    lightning = sys.modules["pytorch_lightning"]
    assert lightning.utilities is sys.modules["pytorch_lightning.utilities"]
    assert lightning.utilities.rank_zero_only is m.RANK_ZERO_ONLY
    # a Lightning that is installed (here a package of that name on sys.path, not yet imported) is the one imported
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    package = tmp_path / "site" / "pytorch_lightning"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "utilities.py").write_text("rank_zero_only = 'installed'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("pytorch_lightning", "pytorch_lightning.utilities"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    m = load_official(write_official(tmp_path, "lightning.py"))
    assert m.RANK_ZERO_ONLY == "installed" and sys.modules["pytorch_lightning"].__file__ == str(package / "__init__.py")


def test_load_official_keeps_a_stand_in_already_there(monkeypatch, tmp_path):
    # setdefault: a pytorch_lightning already in sys.modules (e.g. an earlier stand-in) is kept
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytorch_lightning" else real_find_spec(name, *a))
    earlier = types.ModuleType("pytorch_lightning")
    earlier_utilities = types.ModuleType("pytorch_lightning.utilities")
    earlier_utilities.rank_zero_only = "earlier"
    earlier.utilities = earlier_utilities
    monkeypatch.setitem(sys.modules, "pytorch_lightning", earlier)
    monkeypatch.setitem(sys.modules, "pytorch_lightning.utilities", earlier_utilities)
    m = load_official(write_official(tmp_path, "kept.py"))
    assert m.RANK_ZERO_ONLY == "earlier" and sys.modules["pytorch_lightning"] is earlier


# ---------------------------------------------------------------------------------------------------------------------
# bench/gpu without a GPU: its timer on the CPU, the copy probe, the cases' inputs and bounds, the rows, the table

import ssmkit.bench.gpu as gpu  # noqa: E402


class Script:
    """A ``once(fn)`` timer that calls fn and answers scripted seconds in turn; records what it timed."""

    def __init__(self, seconds):
        self.seconds, self.calls = list(seconds), []

    def __call__(self, fn):
        self.calls.append(fn())
        return self.seconds.pop(0)


def test_gpu_timer_off_cuda_is_perf_counter_around_the_call(monkeypatch):
    now = [10.0]
    monkeypatch.setattr(gpu, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def work():
        now[0] += 0.25

    assert gpu._timer(torch.device("cpu"))(work) == 0.25
    assert gpu._timer(torch.device("meta"))(work) == 0.25


def test_gpu_timer_on_cuda_reads_the_events_after_a_synchronise(monkeypatch):
    # no GPU here: CUDA's events and synchronise are stand-ins that log the order of the calls
    log = []

    class Event:
        def __init__(self, enable_timing=False):
            self.name = "start" if not any(e[0] == "event" for e in log) else "end"
            log.append(("event", self.name, enable_timing))

        def record(self):
            log.append(("record", self.name))

        def elapsed_time(self, end):
            log.append(("elapsed", self.name, end.name))
            return 250.0  # milliseconds

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append(("synchronize", device)))
    device = torch.device("cuda", 1)
    once = gpu._timer(device)
    assert log == []
    assert once(lambda: log.append(("work",))) == 0.25
    assert log == [("event", "start", True), ("event", "end", True), ("record", "start"), ("work",), ("record", "end"),
                   ("synchronize", device), ("elapsed", "start", "end")]


def test_gpu_copy_bandwidth_is_twice_the_bytes_over_the_median_copy(monkeypatch):
    script = Script([100.0, 4.0, 1.0, 2.0, 8.0, 3.0])  # an untimed first copy, then the median of 5: 3 s
    monkeypatch.setattr(gpu, "_timer", lambda device: script)
    assert gpu.copy_bandwidth(torch.device("cpu"), n_bytes=4096, repeats=5) == 2 * 4096 / 3.0
    assert len(script.calls) == 6 and all(c.shape == (1024,) and c.dtype == torch.float32 for c in script.calls)
    assert all(((0 <= c) & (c < 1)).all() and c.std() > 0.1 for c in script.calls)  # a uniform_ draw
    script = Script([1.0] + [0.5] * 10)
    assert gpu.copy_bandwidth(torch.device("cpu"), n_bytes=8) == 2 * 8 / 0.5 and len(script.calls) == 11


def recorded(monkeypatch, module, name, result):
    calls = []

    def record(*args, **kwargs):
        calls.append(types.SimpleNamespace(args=args, kwargs=kwargs, grad=torch.is_grad_enabled()))
        return result(*args, **kwargs)

    monkeypatch.setattr(module, name, record)
    return calls


def test_gpu_scan_case(monkeypatch):
    calls = recorded(monkeypatch, gpu, "ssm_scan", lambda u, A, B, C, h0, D, **kw: (
        (u * D).real if not torch.is_complex(u) else u, None))
    dims, n_bytes, forward, forward_backward, output = gpu._scan_case("2,3,6,5", torch.device("cpu"))
    assert dims == {"B": 2, "H": 3, "N": 6, "L": 5} and n_bytes == 8 * 2 * 5 * 3
    g = torch.Generator().manual_seed(0)
    A = torch.polar(torch.rand(3, 3, generator=g) * 0.1 + 0.899, torch.rand(3, 3, generator=g) * 3)
    Bbar = torch.randn(3, 3, dtype=torch.complex64, generator=g)
    C = 2 * torch.randn(3, 3, dtype=torch.complex64, generator=g)
    D = torch.randn(3, generator=g)
    u = torch.randn(2, 5, 3, generator=g)
    forward("fft")
    (c,) = calls
    assert not c.grad and c.kwargs == {"return_state": False, "backend": "fft"} and c.args[4] is None
    for got, want in zip(c.args[:4] + c.args[5:], (u, A, Bbar, C, D)):
        assert torch.equal(got, want)
    forward_backward("chunked")
    c = calls[1]
    assert c.grad and c.kwargs == {"return_state": False, "backend": "chunked"}
    leaves = c.args[:4] + c.args[5:]
    assert all(t.is_leaf and t.requires_grad for t in leaves) and c.args[4] is None
    for got, want in zip(leaves, (u, A, Bbar, C, D)):
        assert torch.equal(got.detach(), want)
    torch.testing.assert_close(leaves[0].grad, gradient_seed0((2, 5, 3)) * D)  # ∂(u·D)/∂u from the fixed ∂ℓ/∂y
    torch.testing.assert_close(leaves[4].grad, (gradient_seed0((2, 5, 3)) * u).sum((0, 1)))
    y = output("triton")  # the output the rows are compared by: the op's y, without a graph
    assert calls[2].kwargs == {"return_state": False, "backend": "triton"} and not calls[2].grad
    assert torch.equal(y, u * D) and not y.requires_grad


def test_gpu_ssd_case(monkeypatch):
    calls = recorded(monkeypatch, gpu, "ssd", lambda x, dt, A, B, C, backend: (x * A[:, None], None))
    dims, n_bytes, forward, forward_backward, output = gpu._ssd_case("2,5,3,4,6", torch.device("cpu"))
    assert dims == {"B": 2, "L": 5, "H": 3, "P": 4, "N": 6} and n_bytes == 4 * 2 * 5 * (2 * 3 * 4 + 3 + 2 * 6) + 4 * 2 * 3 * 4 * 6  # + the final state
    g = torch.Generator().manual_seed(0)
    expected = [torch.randn(2, 5, 3, 4, generator=g), torch.nn.functional.softplus(torch.randn(2, 5, 3, generator=g)),
                -(torch.rand(3, generator=g) * 3 + 0.5), torch.randn(2, 5, 1, 6, generator=g),
                torch.randn(2, 5, 1, 6, generator=g)]
    forward("triton")
    assert not calls[0].grad and calls[0].kwargs == {"backend": "triton"}
    assert all(torch.equal(a, b) for a, b in zip(calls[0].args, expected)) and len(calls[0].args) == 5
    forward_backward("chunked")
    leaves = calls[1].args
    assert calls[1].grad and all(t.is_leaf and t.requires_grad for t in leaves)
    torch.testing.assert_close(leaves[2].grad, (gradient_seed0((2, 5, 3, 4)) * expected[0]).sum((0, 1, 3)))
    y = output("chunked")  # y alone (mamba-ssm's returns no state)
    assert not calls[2].grad and torch.equal(y, expected[0] * expected[2][:, None])


def test_gpu_mamba_ssm_is_named_when_it_cannot_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    with pytest.raises(ImportError, match=r"^mamba-ssm is not importable here \((ModuleNotFoundError|ImportError): "
                                          r".*\); pip install mamba-ssm$") as e:
        gpu._mamba_ssm_selective()
    assert isinstance(e.value.__cause__, ImportError)
    fake = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    fake.selective_scan_fn = "the kernel"
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", fake)
    assert gpu._mamba_ssm_selective() == "the kernel"


def test_gpu_selective_case(monkeypatch):
    import ssmkit.ops.selective as selective_ops
    import ssmkit.ops.triton.selective as triton_selective
    import ssmkit.ops.triton_gate as gate

    def scan(u, delta, A, B, C, D, z, bias, softplus, h0, return_state, **kw):
        return (u * D + 0 * delta.sum() + 0 * A.sum() + 0 * B.sum() + 0 * C.sum() + 0 * z.sum() + 0 * bias.sum(),
                None)

    plain = recorded(monkeypatch, selective_ops, "selective_scan", scan)
    tiled = recorded(monkeypatch, triton_selective, "selective_scan_triton", scan)
    gates = recorded(monkeypatch, gate, "require_triton", lambda op, t: None)
    peer = []
    loaders = []
    monkeypatch.setattr(gpu, "_mamba_ssm_selective", lambda src, lib: loaders.append((src, lib)) or (
        lambda *a: peer.append(a) or a[0] * a[5][:, None]))
    dims, n_bytes, forward, forward_backward, output = gpu._selective_case("2,3,4,5", torch.device("cpu"), "/m",
                                                                           "/lib.so")
    assert dims == {"B": 2, "L": 5, "H": 3, "N": 4} and n_bytes == 16 * 2 * 5 * 3 + 8 * 2 * 5 * 4
    g = torch.Generator().manual_seed(0)
    A = -torch.arange(1, 5, dtype=torch.float32).repeat(3, 1)
    D, bias = torch.ones(3), torch.rand(3, generator=g) * 4 - 5
    u, delta, z = (torch.randn(2, 5, 3, generator=g) for _ in range(3))
    B, C = (torch.randn(2, 5, 4, generator=g) for _ in range(2))
    forward("chunked")
    (c,) = plain
    assert not c.grad and c.kwargs == {"backend": "chunked"}
    assert [a for a in c.args[8:]] == [True, None, False]
    for got, want in zip(c.args[:8], (u, delta, A, B, C, D, z, bias)):
        assert torch.equal(got, want)
    forward("triton:16,8,2")
    (t,) = tiled
    assert t.kwargs == {"tiles": triton_selective.Tiles(16, 8, 2)} and t.args[8:] == (True, None, False)
    assert all(torch.equal(got, want) for got, want in zip(t.args[:8], (u, delta, A, B, C, D, z, bias)))
    assert gates[0].args[0] == "selective_scan" and torch.equal(gates[0].args[1], u)
    forward("mamba_ssm")
    (p,) = peer  # time-last (B, H, L) and (B, N, L), contiguous, in mamba-ssm's argument order
    assert loaders == [("/m", "/lib.so")]  # the checkout and the built CUDA library reach the peer's loader
    assert p[8:] == (True, False)
    for got, want in zip(p[:8], (u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D,
                                 z.transpose(1, 2), bias)):
        assert torch.equal(got, want) and got.is_contiguous()
    forward_backward("chunked")
    leaves = plain[1].args[:8]
    assert plain[1].grad and all(x.is_leaf and x.requires_grad for x in leaves)
    torch.testing.assert_close(leaves[0].grad, gradient_seed0((2, 5, 3)) * D)
    forward_backward("mamba_ssm")
    assert peer[1][0].requires_grad and peer[1][0].shape == (2, 3, 5)
    forward_backward("triton:4")  # the Triton scan's output, first of its pair, is what is differentiated
    assert tiled[1].kwargs == {"tiles": triton_selective.Tiles(4)}
    torch.testing.assert_close(tiled[1].args[0].grad, gradient_seed0((2, 5, 3)) * D)
    y = output("mamba_ssm")  # back to (B, L, H), as every other backend's
    assert y.shape == (2, 5, 3) and torch.equal(y, u * D) and not peer[2][0].requires_grad
    assert torch.equal(output("chunked"), u * D)


def test_gpu_measure_rows(monkeypatch):
    log = []

    def case(shape, device, mamba_ssm_src=None):
        log.append(("src", mamba_ssm_src))
        outputs = {"a": torch.tensor([2.0, -4.0]), "b": torch.tensor([2.5, -4.0])}

        def forward(b):
            log.append(("f", b))
            if b == "bad":
                raise RuntimeError("no kernel here\nsecond line " + "x" * 300)

        def forward_backward(b):
            log.append(("fb", b))
            if b == "worse":
                raise ValueError("y" * 300)

        return {"B": 1, "L": int(shape), "H": 2, "P": 3, "N": 5}, 4000, forward, forward_backward, outputs.get

    monkeypatch.setattr(gpu, "_ssd_case", case)
    # per round: a forward and a forward+backward of each working backend, in turns
    script = Script([1.0, 10.0, 2.0, 20.0,
                     3.0, 30.0, 6.0, 60.0,
                     2.0, 50.0, 4.0, 40.0])
    monkeypatch.setattr(gpu, "_timer", lambda device: script)
    rows = gpu.measure("ssd", "7", ["a", "bad", "b", "worse"], torch.device("cpu"), bandwidth=2000.0, repeats=3,
                       mamba_ssm_src="/a/checkout", flop_rate=6300.0)
    # the case gets the checkout; warm-up: each backend's forward then forward+backward (a failing forward skips its
    # forward+backward)
    assert log[0] == ("src", "/a/checkout")
    assert log[1:8] == [("f", "a"), ("fb", "a"), ("f", "bad"), ("f", "b"), ("fb", "b"), ("f", "worse"), ("fb", "worse")]
    assert log[8:] == [("f", "a"), ("fb", "a"), ("f", "b"), ("fb", "b")] * 3
    flops = 6.0 * 1 * 7 * 2 * 3 * 5  # 6·B·L·H·P·N = 1260: at 6300 flop/s a FLOP bound of 0.2 s
    base = {"op": "ssd", "B": 1, "L": 7, "H": 2, "P": 3, "N": 5, "bytes": 4000, "bound_s": 2.0, "flops": flops,
            "flop_bound_s": 0.2}
    # each output against the first working backend's: max |y_b - y_a| / max |y_a| = 0.5 / 4
    assert rows == [
        {**base, "backend": "a", "forward_s": 2.0, "forward_backward_s": 30.0, "forward_fraction_of_bound": 1.0,
         "forward_fraction_of_flop_bound": pytest.approx(0.1), "diff_vs": "a", "max_rel_diff": 0.0},
        {**base, "backend": "bad", "error": "RuntimeError: no kernel here"},
        {**base, "backend": "b", "forward_s": 4.0, "forward_backward_s": 40.0, "forward_fraction_of_bound": 0.5,
         "forward_fraction_of_flop_bound": pytest.approx(0.05), "diff_vs": "a", "max_rel_diff": 0.125},
        {**base, "backend": "worse", "error": "ValueError: " + "y" * 200},
    ]
    assert list(rows[0]) == ["op", "B", "L", "H", "P", "N", "backend", "bytes", "bound_s", "flops", "flop_bound_s",
                             "forward_s", "forward_backward_s", "forward_fraction_of_bound",
                             "forward_fraction_of_flop_bound", "diff_vs", "max_rel_diff"]
    for op in ("scan", "selective"):
        dims = {"op_case": op, "B": 1, "L": 2, "H": 3, "N": 4}
        shapes = {"a": torch.ones(2), "b": torch.ones(3)}  # b's output has another shape: no comparison, inf
        monkeypatch.setattr(gpu, f"_{op}_case", lambda shape, device, *peer, d=dims: (
            d, 1, lambda b: None, lambda b: None, shapes.get))
        script.seconds = [1.0] * 4
        rows = gpu.measure(op, "1", ["a", "b"], torch.device("cpu"), 1.0, 1)  # no FLOP rate: no FLOP bound
        for row in rows:
            assert row["op_case"] == op and row["op"] == op and row["flops"] == 6.0 * 1 * 2 * 3 * 4
            assert "flop_bound_s" not in row and "forward_fraction_of_flop_bound" not in row
        assert [r["max_rel_diff"] for r in rows] == [0.0, float("inf")]


def test_gpu_main_rows_ratios_table_and_json(monkeypatch, tmp_path, capsys):
    seen = []

    def measure(op, shape, backends, device, bandwidth, repeats, mamba_ssm_src=None, flop_rate=None,
                mamba_ssm_cuda=None, causal_conv1d_src=None, causal_conv1d_cuda=None):
        seen.append((op, shape, list(backends), device, bandwidth, repeats, mamba_ssm_src, flop_rate, mamba_ssm_cuda,
                     causal_conv1d_src, causal_conv1d_cuda))
        dims = {"B": 2, "L": 8, "H": 3, "N": 4} if op != "ssd" else {"B": 2, "L": 8, "H": 3, "P": 5, "N": 4}
        rows = []
        for k, b in enumerate(backends):
            row = {"op": op, **dims, "backend": b, "bytes": 64, "bound_s": 0.001, "flop_bound_s": 0.0005}
            if b == "fft":
                row["error"] = "RuntimeError: no fft here"
            else:
                fwd = 0.002 * (k + 1)
                row.update(forward_s=fwd, forward_backward_s=3 * fwd + 0.001 * k, forward_fraction_of_bound=0.001 / fwd,
                           forward_fraction_of_flop_bound=0.0005 / fwd, diff_vs=backends[0], max_rel_diff=k * 1.5e-7)
            rows.append(row)
        return rows

    monkeypatch.setattr(gpu, "measure", measure)
    monkeypatch.setattr(gpu, "copy_bandwidth", lambda device, n: seen.append(("copy", device, n)) or 5e10)
    monkeypatch.setattr(gpu, "gemm_flop_rate", lambda device, n: seen.append(("gemm", device, n)) or 2e12)
    monkeypatch.setattr(gpu, "machine", lambda: "a machine")
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--scan-shapes", "s1", "s2", "--scan-chunks-per-program", "2", "--ssd-shapes",
                     "d1", "--ssd-tiles", "--selective-shapes", "e1", "--selective-tiles", "16,8", "--backends", "chunked", "fft",
                     "triton", "--repeats", "4", "--copy-bytes", "1000", "--gemm-size", "64", "--mamba-ssm-src", "/m",
                     "--mamba-ssm-cuda", "/m.so", "--short-conv-shapes", "c1", "--causal-conv1d-src", "/c",
                     "--causal-conv1d-cuda", "/c.so", "--json", str(out)]) == 0
    cpu = torch.device("cpu")
    scan = ["chunked", "fft", "triton", "triton:2", "triton:mm", "accelerated_scan"]
    assert seen == [("copy", cpu, 1000), ("gemm", cpu, 64),
                    ("scan", "s1", scan, cpu, 5e10, 4, None, 2e12, None, None, None),
                    ("scan", "s2", scan, cpu, 5e10, 4, None, 2e12, None, None, None),
                    ("ssd", "d1", ["chunked", "triton", "triton:recompute", "mamba_ssm"], cpu, 5e10, 4, "/m", 2e12, None, None, None),
                    ("selective", "e1", ["chunked", "triton", "triton:16,8", "mamba_ssm"], cpu, 5e10, 4, "/m", 2e12,
                     "/m.so", None, None),
                    # no FFT or Triton short convolution: the other backends, then the peer
                    ("short_conv", "c1", ["chunked", "causal_conv1d"], cpu, 5e10, 4, None, 2e12, None, "/c", "/c.so")]
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    triton = sys.modules.get("triton")
    version = f"; triton {triton.__version__}" if triton else "; triton not installed"
    header = (f"ssmkit bench gpu: a machine; torch {torch.__version__}; copy bandwidth 50 GB/s; float32 GEMM (TF32 off) "
              f"2.0 TFLOP/s{version}")
    assert lines[0] == header
    assert lines[1:3] == ["| op | shape | backend | forward ms | fwd+bwd ms | bytes-moved bound ms | bound / forward "
                          "| FLOP bound ms | FLOP bound / forward | max abs. diff. of y / max abs. y (vs) |",
                          "|---|---|---|---|---|---|---|---|---|---|"]
    assert lines[3] == ("| scan | B=2,L=8,H=3,N=4 | chunked | 2.000 | 6.000 | 1.0000 | 50 % | 0.5000 | 25 % | "
                        "yardstick |")
    assert lines[4] == "| scan | B=2,L=8,H=3,N=4 | fft | RuntimeError: no fft here | | | | | | |"
    assert lines[5] == ("| scan | B=2,L=8,H=3,N=4 | triton | 6.000 | 20.000 | 1.0000 | 16.7 % | 0.5000 | 8.33 % | "
                        "3.0e-07 (chunked) |")
    assert lines[16] == ("| ssd | B=2,L=8,H=3,P=5,N=4 | triton | 4.000 | 13.000 | 1.0000 | 25 % | 0.5000 | 12.5 % | "
                         "1.5e-07 (chunked) |")
    # each ssd and selective backend's time over mamba-ssm's, each short_conv one's over causal-conv1d's (the last
    # of its shape)
    assert lines[-7:] == ["ssd 2,8,3,5,4 chunked: forward 0.25x, fwd+bwd 0.22x mamba-ssm's time",
                          "ssd 2,8,3,5,4 triton: forward 0.50x, fwd+bwd 0.48x mamba-ssm's time",
                          "ssd 2,8,3,5,4 triton:recompute: forward 0.75x, fwd+bwd 0.74x mamba-ssm's time",
                          "selective 2,8,3,4 chunked: forward 0.25x, fwd+bwd 0.22x mamba-ssm's time",
                          "selective 2,8,3,4 triton: forward 0.50x, fwd+bwd 0.48x mamba-ssm's time",
                          "selective 2,8,3,4 triton:16,8: forward 0.75x, fwd+bwd 0.74x mamba-ssm's time",
                          "short_conv 2,8,3,4 chunked: forward 0.50x, fwd+bwd 0.46x causal-conv1d's time"]
    data = __import__("json").loads(out.read_text())
    assert data["header"] == header and data["bandwidth_Bps"] == 5e10
    sel = [r for r in data["results"] if r["op"] == "selective"]
    assert [r["forward_vs_mamba_ssm"] for r in sel] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [r["forward_backward_vs_mamba_ssm"] for r in sel] == pytest.approx([6 / 27, 13 / 27, 20 / 27, 1.0])
    ssd_rows = [r for r in data["results"] if r["op"] == "ssd"]
    assert [r["forward_vs_mamba_ssm"] for r in ssd_rows] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all("forward_vs_mamba_ssm" not in r for r in data["results"] if r["op"] == "scan")


def test_gpu_main_without_triton_or_a_working_peer(monkeypatch, capsys):
    seen = []

    def measure(op, shape, backends, device, bandwidth, repeats, mamba_ssm_src=None, flop_rate=None,
                mamba_ssm_cuda=None, causal_conv1d_src=None, causal_conv1d_cuda=None):
        seen.append((op, list(backends)))
        return [{"op": op, "B": 1, "L": 2, "H": 3, "N": 4, "backend": b, "bytes": 1, "bound_s": 1.0,
                 "flop_bound_s": 1.0,
                 **({"error": "E: no"} if b in ("mamba_ssm", "x", "causal_conv1d") else
                    {"forward_s": 1.0, "forward_backward_s": 2.0, "forward_fraction_of_bound": 1.0,
                     "forward_fraction_of_flop_bound": 1.0})}
                for b in backends]

    monkeypatch.setattr(gpu, "measure", measure)
    monkeypatch.setattr(gpu, "copy_bandwidth", lambda device, n: 1e9)
    monkeypatch.setattr(gpu, "gemm_flop_rate", lambda device, n: 1e12)
    monkeypatch.setattr(gpu, "machine", lambda: "m")
    monkeypatch.setitem(sys.modules, "triton", None)
    assert gpu.main(["--device", "cpu", "--scan-shapes", "s", "--ssd-shapes", "--selective-shapes", "e",
                     "--short-conv-shapes", "c", "--backends", "chunked", "x"]) == 0
    # no tiles or groupings without triton among the backends; the peers always
    assert seen == [("scan", ["chunked", "x", "accelerated_scan"]), ("selective", ["chunked", "x", "mamba_ssm"]),
                    ("short_conv", ["chunked", "x", "causal_conv1d"])]
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("; copy bandwidth 1 GB/s; float32 GEMM (TF32 off) 1.0 TFLOP/s; triton not "
                                        "installed")
    assert "mamba-ssm's time" not in out and "| selective | B=1,L=2,H=3,N=4 | mamba_ssm | E: no | | | |" in out
    assert "causal-conv1d's time" not in out
    # a row without an output comparison (this stand-in's) leaves that column empty
    assert "| scan | B=1,L=2,H=3,N=4 | chunked | 1000.000 | 2000.000 | 1000.0000 | 100 % | 1000.0000 | 100 % |  |" \
        in out


def test_gpu_main_defaults(monkeypatch, capsys):
    seen = []
    def measure(op, shape, backends, device, bw, repeats, src=None, flop_rate=None, lib=None, causal_conv1d_src=None,
                causal_conv1d_cuda=None):
        seen.append((op, shape, tuple(backends), device, repeats, src, flop_rate, lib, causal_conv1d_src,
                     causal_conv1d_cuda))
        return [{"op": op, "backend": "b", "error": "E"}]

    monkeypatch.setattr(gpu, "measure", measure)
    monkeypatch.setattr(gpu, "copy_bandwidth", lambda device, n: seen.append(("copy", device, n)) or 1e9)
    monkeypatch.setattr(gpu, "gemm_flop_rate", lambda device, n: seen.append(("gemm", device, n)) or 3e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a GPU")
    monkeypatch.setattr(gpu, "machine", lambda: "the CPU")
    assert gpu.main([]) == 0
    assert "ssmkit bench gpu: a GPU; torch" in capsys.readouterr().out  # the device's name on CUDA
    cuda = torch.device("cuda")
    sel = ("chunked", "triton", *(f"triton:{t}" for t in gpu.SELECTIVE_TILES), "mamba_ssm")
    ssd_rows = ("chunked", "triton", "triton:recompute", *(f"triton:{t}" for t in gpu.SSD_TILES), "mamba_ssm")
    assert gpu.SSD_TILES == ["16,32,8", "16,16,8", "32,32,8"]
    scan = ("chunked", "fft", "triton", "triton:1", "triton:8", "triton:64", "triton:mm", "accelerated_scan")
    assert gpu.SCAN_CHUNKS_PER_PROGRAM == [1, 8, 64]
    assert seen == [("copy", cuda, 1 << 30), ("gemm", cuda, 8192)] + [
        ("scan", s, scan, cuda, 5, None, 3e12, None, None, None) for s in gpu.SCAN_SHAPES] + [
        ("ssd", s, ssd_rows, cuda, 5, None, 3e12, None, None, None) for s in gpu.SSD_SHAPES] + [
        ("selective", s, sel, cuda, 5, None, 3e12, None, None, None) for s in gpu.SELECTIVE_SHAPES] + [
        ("short_conv", s, ("chunked", "causal_conv1d"), cuda, 5, None, 3e12, None, None, None)
        for s in gpu.SHORT_CONV_SHAPES]
    assert gpu.SHORT_CONV_SHAPES == ["8,512,4096", "8,1536,2048"] and gpu.SHORT_CONV_WIDTH == 4
    assert gpu.SCAN_SHAPES == ["8,128,64,1024", "8,128,64,4096", "8,128,64,16384", "1,128,64,1048576",
                               "64,768,64,4096"]
    assert gpu.SSD_SHAPES == ["2,2048,32,64,128", "8,4096,16,64,64"]
    assert gpu.SELECTIVE_SHAPES == ["8,512,16,1024", "8,512,16,4096", "8,1536,16,2048"]
    for bad in (["--repeats", "0"], ["--copy-bytes", "-1"], ["--gemm-size", "0"], ["--scan-chunks-per-program", "0"]):
        with pytest.raises(SystemExit):
            gpu.main(bad)


def test_gpu_copy_probe_defaults():
    # the copy probe's own defaults: 1 GiB (the suite's --copy-bytes), 10 timed copies
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(gpu.copy_bandwidth).parameters.items()}
    assert defaults == {"device": inspect.Parameter.empty, "n_bytes": 2**30, "repeats": 10}


def test_gpu_main_ratios_skip_a_failed_backend(monkeypatch, capsys):
    def measure(op, shape, backends, device, bandwidth, repeats, mamba_ssm_src=None, flop_rate=None,
                mamba_ssm_cuda=None, causal_conv1d_src=None, causal_conv1d_cuda=None):
        return [{"op": op, "B": 1, "L": 2, "H": 3, "N": 4, "backend": b, "bytes": 1, "bound_s": 1.0,
                 "flop_bound_s": 1.0,
                 **({"error": "E: no"} if b == "triton" else
                    {"forward_s": 2.0, "forward_backward_s": 4.0, "forward_fraction_of_bound": 0.5,
                     "forward_fraction_of_flop_bound": 0.5})}
                for b in backends]

    monkeypatch.setattr(gpu, "measure", measure)
    monkeypatch.setattr(gpu, "copy_bandwidth", lambda device, n: 1e9)
    monkeypatch.setattr(gpu, "gemm_flop_rate", lambda device, n: 1e12)
    monkeypatch.setattr(gpu, "machine", lambda: "m")
    assert gpu.main(["--device", "cpu", "--scan-shapes", "--ssd-shapes", "--selective-shapes", "e",
                     "--selective-tiles", "--backends", "chunked", "triton"]) == 0
    out = capsys.readouterr().out
    assert "selective 1,2,3,4 chunked: forward 1.00x, fwd+bwd 1.00x mamba-ssm's time" in out
    assert "| selective | B=1,L=2,H=3,N=4 | triton | E: no | | | |" in out and "triton: forward" not in out


# ---------------------------------------------------------------------------------------------------------------------
# bench/selective: the worker's counts and medians, the subprocess's command line and errors, the rounds, the table

import ssmkit.bench.selective as selective  # noqa: E402


def test_selective_memory_helpers(monkeypatch):
    import os

    assert selective._machine_memory_gib() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1])
    assert abs(selective._rss_mib() - resident * os.sysconf("SC_PAGE_SIZE") / 2**20) < 64
    limits = []
    monkeypatch.setattr(selective.resource, "setrlimit", lambda which, pair: limits.append((which, pair)))
    selective._limit_memory(1.5)
    assert limits == [(selective.resource.RLIMIT_AS, (3 * 2**29, 3 * 2**29))]


class Completed:
    def __init__(self, returncode, stdout="", stderr=""):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def selective_args(**changes):
    args = dict(batch=2, d_model=6, d_state=3, expand=4, length=9, memory_limit_gib=1.5, warmup=1, calls=5,
                threads=None)
    args.update(changes)
    return types.SimpleNamespace(**args)


def test_selective_measure_runs_the_worker_in_a_subprocess(monkeypatch):
    import os

    import ssmkit

    runs = []

    def run(argv, capture_output, text, env):
        assert capture_output is True and text is True  # the worker's JSON read back as text
        runs.append((argv, env))
        return Completed(0, stdout='noise\n{"forward_s": 0.5}\n{"forward_s": 1.5, "peak_rss_mib": 7}\n')

    monkeypatch.setattr(selective.subprocess, "run", run)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert selective.measure("chunked", selective_args()) == {"forward_s": 1.5, "peak_rss_mib": 7}
    assert selective.measure("loop", selective_args(threads=3)) == {"forward_s": 1.5, "peak_rss_mib": 7}
    options = ["--batch", "2", "--d-model", "6", "--d-state", "3", "--expand", "4", "--length", "9",
               "--memory-limit-gib", "1.5", "--warmup", "1", "--calls", "5"]
    assert runs[0][0] == [sys.executable, "-m", "ssmkit.bench.selective", "--worker", "chunked", *options]
    assert runs[1][0] == [sys.executable, "-m", "ssmkit.bench.selective", "--worker", "loop", *options, "--threads",
                          "3"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(ssmkit.__file__)))
    assert runs[0][1]["PYTHONPATH"] == root + os.pathsep + "/elsewhere"
    assert {k: v for k, v in runs[0][1].items() if k != "PYTHONPATH"} == {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    monkeypatch.delenv("PYTHONPATH")
    selective.measure("chunked", selective_args())
    assert runs[-1][1]["PYTHONPATH"] == root


@pytest.mark.parametrize("returncode,stderr,error", [
    (1, "Traceback\n  line\nRuntimeError: bad shape\n\n  \n", "RuntimeError: bad shape"),
    (1, "Traceback\nRuntimeError: DefaultCPUAllocator: can't allocate memory",
     "out of memory: RuntimeError: DefaultCPUAllocator: can't allocate memory"),
    (1, "MemoryError: Memory", "out of memory: MemoryError: Memory"),
    (3, "", "exit status 3"),
    (2, "   \n", "exit status 2"),
    (-9, "whatever", "killed by signal 9 (out of memory?)"),  # said once (it read "out of memory: ... (out of memory?)")
    (1, "E: " + "x" * 400, "E: " + "x" * 297),
])
def test_selective_measure_reports_a_failed_worker(monkeypatch, returncode, stderr, error):
    monkeypatch.setattr(selective.subprocess, "run", lambda *a, **k: Completed(returncode, "{}", stderr))
    assert selective.measure("chunked", selective_args()) == {"error": error}


def test_selective_run_all_rounds_medians_and_speed_ups(monkeypatch):
    script = {"loop": [{"forward_s": 4.0, "forward_backward_s": 8.0, "peak_rss_mib": 10.0},
                       {"forward_s": 6.0, "forward_backward_s": 12.0, "peak_rss_mib": 30.0},
                       {"forward_s": 9.0, "forward_backward_s": 9.0, "peak_rss_mib": 20.0}],
              "chunked": [{"forward_s": 1.0, "forward_backward_s": 2.0, "peak_rss_mib": 5.0},
                          {"forward_s": 3.0, "forward_backward_s": 3.0, "peak_rss_mib": 7.0},
                          {"forward_s": 1.0, "forward_backward_s": 1.0, "peak_rss_mib": 6.0}],
              "native": [{"forward_s": 2.0, "forward_backward_s": 4.0, "peak_rss_mib": 1.0},
                         {"error": "out of memory: later"}],
              "mambapy": [{"error": "mambapy is missing"}]}
    order = []

    def measure(case, args):
        order.append(case)
        return script[case].pop(0)

    monkeypatch.setattr(selective, "measure", measure)
    rows = selective.run_all(types.SimpleNamespace(repeats=3, cases=["chunked", "native", "mambapy", "loop"]))
    # a case's first error ends its rounds
    assert order == ["chunked", "native", "mambapy", "loop", "chunked", "native", "loop", "chunked", "loop"]
    assert rows[0] == {"case": "chunked", "forward_s": 1.0, "forward_backward_s": 2.0, "peak_rss_mib": 6.0,
                       "forward_speedup_vs_loop": 4.0, "forward_backward_speedup_vs_loop": 4.0}
    # a case with some rounds keeps them (no error row); its speed-ups pair its rounds with the loop's first ones
    assert rows[1] == {"case": "native", "forward_s": 2.0, "forward_backward_s": 4.0, "peak_rss_mib": 1.0,
                       "forward_speedup_vs_loop": 2.0, "forward_backward_speedup_vs_loop": 2.0}
    assert rows[2] == {"case": "mambapy", "error": "mambapy is missing"}
    assert rows[3] == {"case": "loop", "forward_s": 6.0, "forward_backward_s": 9.0, "peak_rss_mib": 20.0}
    monkeypatch.setattr(selective, "measure", lambda case, args: {"forward_s": 1.0, "forward_backward_s": 1.0})
    (row,) = selective.run_all(types.SimpleNamespace(repeats=2, cases=["chunked"]))
    assert row == {"case": "chunked", "forward_s": 1.0, "forward_backward_s": 1.0}  # no loop: no speed-ups


def test_selective_worker_counts_and_medians(monkeypatch):
    now = [0.0]
    calls = []

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(2.0))

    module = Module()
    costs = iter([5.0, 1.0, 3.0, 2.0, 0.5, 0.25])  # 3 timed forward+backward calls, then 3 forwards (warm-up: 0 s)

    def run(x):
        calls.append((x.shape, x.requires_grad, torch.is_grad_enabled(), module.w.grad))
        if torch.is_grad_enabled() and len(calls) > 1:
            now[0] += next(costs)
        elif not torch.is_grad_enabled():
            now[0] += next(costs)
        return x * module.w, None

    built = []
    monkeypatch.setattr(selective, "_build", lambda *a: built.append((a, torch.rand(1).item())) or (module, run))
    monkeypatch.setattr(selective, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(selective, "_rss_mib", lambda: 123.0)
    monkeypatch.setattr(selective.resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=3 * 2**10))
    threads = torch.get_num_threads()
    torch.manual_seed(123)  # the worker seeds the global generator itself
    try:
        result = selective.worker("chunked", 2, 3, 4, 2, 5, None, warmup=1, calls=3)
    finally:
        torch.set_num_threads(threads)
    assert built == [(("chunked", 3, 4, 2), first_draw(0))]
    assert result == {"forward_s": 0.5, "forward_backward_s": 3.0, "peak_rss_mib": 3.0, "base_rss_mib": 123.0}
    # one warm-up and 3 timed forward+backward calls (gradients cleared before each), then 3 forwards without grad
    assert [(c[1], c[2]) for c in calls] == [(True, True)] * 4 + [(False, False)] * 3
    assert all(c[0] == (2, 5, 3) for c in calls) and all(c[3] is None for c in calls[:4])
    torch.testing.assert_close(module.w.grad, (gradient_seed0((2, 5, 3)) * _worker_input()).sum())
    costs = iter([1.0] * 10)
    try:
        torch.set_num_threads(1)
        selective.worker("chunked", 2, 3, 4, 2, 5, 3, warmup=0, calls=2)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


def _worker_input():
    torch.manual_seed(0)
    torch.rand(1)  # the stand-in _build's draw
    return torch.randn(2, 5, 3)


def test_selective_worker_defaults_and_a_block_returning_one_tensor(monkeypatch):
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(selective.worker).parameters.items()}
    assert (defaults["warmup"], defaults["calls"]) == (2, 3)  # the suite's --warmup and --calls defaults
    module = torch.nn.Linear(3, 3, bias=False)
    # mambapy's block returns y alone: its backward starts from the fixed ∂ℓ/∂y of y's own shape
    monkeypatch.setattr(selective, "_build", lambda *a: (module, module))
    monkeypatch.setattr(selective, "_rss_mib", lambda: 1.0)
    selective.worker("mambapy", 2, 3, 4, 2, 5, None, warmup=0, calls=1)
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(module.weight.grad, torch.einsum("bli,blj->ij", gradient_seed0((2, 5, 3)), x))


def test_selective_build_mambapy(monkeypatch):
    configs = []

    class MambaBlock:
        def __init__(self, config):
            self.config = config

    fake = types.ModuleType("mambapy.mamba")
    fake.MambaBlock, fake.MambaConfig = MambaBlock, lambda **kw: configs.append(kw) or kw
    monkeypatch.setitem(sys.modules, "mambapy", types.ModuleType("mambapy"))
    monkeypatch.setitem(sys.modules, "mambapy.mamba", fake)
    module, run = selective._build("mambapy", 6, 3, 2)
    assert isinstance(module, MambaBlock) and run is module
    assert configs == [{"d_model": 6, "n_layers": 1, "d_state": 3, "expand_factor": 2, "pscan": True}]


def test_selective_build_projections_is_the_layers_own(monkeypatch):
    torch.manual_seed(0)
    layer, projections = selective._build("projections", 4, 3, 2)
    torch.manual_seed(0)
    reference = layers.build("mamba", d_model=4, d_state=3, expand=2)
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), reference.parameters()))
    x = torch.randn(2, 5, 4, dtype=torch.float32)
    out, delta_low, B, C = projections(x)
    xs, z = reference._in_projection(x)
    low_bc = xs @ reference.x_proj.weight.T
    R, N = reference.rank, reference.d_state
    torch.testing.assert_close(delta_low, low_bc[..., :R])
    torch.testing.assert_close(B, low_bc[..., R:R + N])
    torch.testing.assert_close(C, low_bc[..., R + N:])
    torch.testing.assert_close(out, z @ reference.out_proj.weight.T + (
        reference.out_proj.bias if reference.out_proj.bias is not None else 0))
    for case, backend in (("loop", "reference"), ("chunked", "chunked")):
        seen = []
        layer, run = selective._build(case, 4, 3, 2)
        monkeypatch.setattr(layer, "forward", lambda x, return_state=True: seen.append((get_backend(), return_state))
                            or (x, None))
        assert run(x) is x  # the layer's output, first of its (y, state)
        assert seen == [(backend, False)]


def test_selective_main_drives_the_rounds_and_prints_the_table(monkeypatch, tmp_path, capsys):
    rows = [{"case": "native", "forward_s": 0.002, "forward_backward_s": 0.006, "peak_rss_mib": 99.6,
             "base_rss_mib": 50.2, "forward_speedup_vs_loop": 5.0, "forward_backward_speedup_vs_loop": 3.25},
            {"case": "mambapy", "error": "mambapy is not installed"},
            {"case": "loop", "forward_s": 0.01, "forward_backward_s": 0.03, "peak_rss_mib": 80.0, "base_rss_mib": 40.0},
            {"case": "projections", "forward_s": 0.001, "forward_backward_s": 0.004, "peak_rss_mib": 1.0,
             "base_rss_mib": 1.0, "forward_speedup_vs_loop": 10.0, "forward_backward_speedup_vs_loop": 7.5}]
    seen = []
    monkeypatch.setattr(selective, "run_all", lambda args: seen.append(args) or rows)
    monkeypatch.setattr(core, "machine", lambda: "a machine")
    monkeypatch.setenv("SSMKIT_KEEP_FREED_MEMORY", " 0 ")
    out = tmp_path / "s.json"
    assert selective.main(["--batch", "3", "--d-model", "8", "--d-state", "2", "--expand", "3", "--length", "7",
                           "--repeats", "2", "--warmup", "0", "--calls", "4", "--cases", "native", "mambapy", "loop",
                           "projections", "--json", str(out), "--memory-limit-gib", "2.5"]) == 0
    (args,) = seen
    assert (args.batch, args.d_model, args.d_state, args.expand, args.length, args.repeats, args.warmup, args.calls,
            args.cases, args.memory_limit_gib, args.threads, args.worker) == (
        3, 8, 2, 3, 7, 2, 0, 4, ["native", "mambapy", "loop", "projections"], 2.5, None, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("ssmkit bench selective: one Mamba block, B=3, d_model=8, N=2, expand=3, L=7, float32; "
                        "torch's default threads; freed memory kept: off; 0 warm-up and 4 timed calls per case and "
                        "round; a machine")
    assert lines[1:] == [
        "| case | forward ms | vs loop | forward+backward ms | vs loop | peak RSS MiB (before the first call) |",
        "|---|---|---|---|---|---|",
        "| native | 2.0 | 5.0x | 6.0 | 3.2x | 100 (50) |",
        "| mambapy | failed: mambapy is not installed | | | | |",
        "| loop | 10.0 | - | 30.0 | - | 80 (40) |",
        "| projections | 1.0 | 10.0x | 4.0 | 7.5x | 1 (1) |",
        "bound: with the scan, convolution and elementwise work free, the block would be at most 7.5x the loop "
        "(forward+backward; its projections take 4.0 ms)"]
    data = __import__("json").loads(out.read_text())
    assert data == {"shape": "B=3, d_model=8, N=2, expand=3, L=7", "threads": None, "warmup": 0, "calls": 4,
                    "machine": "a machine", "results": rows}
    # no bound line without both the loop and the projections; threads named; memory kept by default
    monkeypatch.delenv("SSMKIT_KEEP_FREED_MEMORY")
    rows[:] = rows[:3]
    assert selective.main(["--threads", "2", "--cases", "loop"]) == 0
    printed = capsys.readouterr().out
    assert "2 threads per case; freed memory kept: on; 2 warm-up and 3 timed calls" in printed
    assert "bound:" not in printed
    args = seen[-1]
    assert (args.batch, args.d_model, args.d_state, args.expand, args.length, args.repeats) == (8, 256, 16, 2, 4096, 3)
    assert args.memory_limit_gib == round(0.9 * selective._machine_memory_gib(), 1)
    assert selective.CASES == ("native", "chunked", "loop", "mambapy", "projections")
    assert selective.main([]) == 0 and seen[-1].cases == list(selective.CASES)


def test_selective_main_as_the_worker(monkeypatch, capsys):
    log = []
    monkeypatch.setattr(selective, "_limit_memory", lambda gib: log.append(("limit", gib)))
    import ssmkit.memory as memory

    monkeypatch.setattr(memory, "keep_freed_memory_from_env", lambda: log.append(("keep",)))
    monkeypatch.setattr(selective, "worker", lambda *a: log.append(("worker", a)) or {"forward_s": 0.25})
    assert selective.main(["--worker", "loop", "--batch", "3", "--d-model", "8", "--d-state", "2", "--expand", "3",
                           "--length", "7", "--threads", "2", "--warmup", "0", "--calls", "4",
                           "--memory-limit-gib", "1.25"]) == 0
    assert log == [("limit", 1.25), ("keep",), ("worker", ("loop", 3, 8, 2, 3, 7, 2, 0, 4))]
    assert capsys.readouterr().out == '{"forward_s": 0.25}\n'


# ---------------------------------------------------------------------------------------------------------------------
# bench/ssd: the op's inputs and variants, the layer's, the interleaved rounds, the medians and the table

import ssmkit.bench.ssd as ssd_bench  # noqa: E402


def ssd_args(**changes):
    args = dict(batch=2, length=5, heads=3, headdim=4, d_state=6, groups=1, chunk_size=[2, 4], reference=True,
                repeats=3)
    args.update(changes)
    return types.SimpleNamespace(**args)


def test_ssd_op_inputs():
    x, dt, A, B, C, h0 = ssd_bench._op_inputs(2, 5, 3, 4, 6, 2)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(x, torch.randn(2, 5, 3, 4, generator=g))
    assert torch.equal(dt, torch.nn.functional.softplus(torch.randn(2, 5, 3, generator=g)))
    assert torch.equal(A, -(torch.rand(3, generator=g) * 3 + 0.5)) and (A <= -0.5).all() and (A >= -3.5).all()
    assert torch.equal(B, torch.randn(2, 5, 2, 6, generator=g)) and torch.equal(C, torch.randn(2, 5, 2, 6, generator=g))
    assert torch.equal(h0, torch.randn(2, 3, 4, 6, generator=g))


def test_ssd_op_variants(monkeypatch):
    calls = recorded(monkeypatch, ssd_bench, "ssd", lambda x, dt, A, B, C, h0, chunk_size, backend: (
        x * A[:, None], h0 * A[:, None, None]))
    variants = ssd_bench.op_variants(ssd_args())
    native = [("ssd native", None, "native")] if native_available("ssd", torch.float32) else []
    assert list(variants) == ["ssd chunked T=2", "ssd chunked T=4", *(n for n, _, _ in native), "ssd reference"]
    assert all(list(v) == ["forward", "forward_backward"] for v in variants.values())
    inputs = ssd_bench._op_inputs(2, 5, 3, 4, 6, 1)
    for name, T, backend in (("ssd chunked T=2", 2, "chunked"), ("ssd chunked T=4", 4, "chunked"), *native,
                             ("ssd reference", None, "reference")):
        calls.clear()
        variants[name]["forward"]()
        (c,) = calls
        assert c.kwargs == {"chunk_size": T, "backend": backend} and not c.grad
        assert all(torch.equal(a, b) and not a.requires_grad for a, b in zip(c.args, inputs)) and len(c.args) == 6
        variants[name]["forward_backward"]()
        c = calls[1]
        assert c.grad and all(a.is_leaf and a.requires_grad for a in c.args)
        # ∂ℓ/∂A from the fixed gradients of y (drawn first, seed 0) and of h (seed 1)
        gy = gradient_seed0((2, 5, 3, 4))
        gh = torch.randn((2, 3, 4, 6), generator=torch.Generator().manual_seed(1))
        want = (gy * inputs[0]).sum((0, 1, 3)) + (gh * inputs[5]).sum((0, 2, 3))
        torch.testing.assert_close(c.args[2].grad, want)
    assert list(ssd_bench.op_variants(ssd_args(reference=False, chunk_size=[8]))) == ["ssd chunked T=8",
                                                                                      *(n for n, _, _ in native)]


def test_ssd_layer_variants(monkeypatch):
    built = []
    real_build = layers.build

    def build(name, **options):
        draw = torch.rand(1).item()
        layer = real_build(name, **options)
        built.append((name, options, draw, layer))
        log = []
        layer.log = log
        forward, step = layer.forward, layer.step
        layer.forward = lambda x, *a, **k: log.append(("forward", get_backend(), torch.is_grad_enabled(),
                                                       x.requires_grad, x.shape)) or forward(x, *a, **k)
        layer.step = lambda x_t, s: log.append(("step", x_t.shape, torch.is_grad_enabled())) or step(x_t, s)
        return layer

    monkeypatch.setattr(layers, "build", build)
    torch.manual_seed(123)  # the suite seeds the global generator itself
    variants, (step, steps) = ssd_bench.layer_variants(ssd_args(heads=2, headdim=4, d_state=3, groups=2,
                                                                chunk_size=[3, 8], length=70))
    ((name, options, draw, layer),) = built
    assert name == "mamba2" and options == {"d_model": 4, "d_state": 3, "headdim": 4, "ngroups": 2, "chunk_size": 3}
    assert draw == first_draw(0) and steps == 64
    assert list(variants) == ["mamba2 auto", "mamba2 chunked", "mamba2 reference"]
    variants["mamba2 reference"]["forward"]()
    variants["mamba2 auto"]["forward"]()
    variants["mamba2 chunked"]["forward"]()
    variants["mamba2 reference"]["forward_backward"]()
    variants["mamba2 auto"]["forward_backward"]()
    assert layer.log == [("forward", "reference", False, False, (2, 70, 4)),
                         ("forward", "auto", False, False, (2, 70, 4)), ("forward", "chunked", False, False, (2, 70, 4)),
                         ("forward", "reference", True, True, (2, 70, 4)), ("forward", "auto", True, True, (2, 70, 4))]
    grads = [p.grad.clone() for p in layer.parameters()]
    variants["mamba2 auto"]["forward_backward"]()  # cleared first: the same gradients again, not twice them
    assert all(torch.allclose(p.grad, g) for p, g in zip(layer.parameters(), grads))
    layer.log.clear()
    step()
    assert layer.log == [("step", (2, 4), False)] * 64
    variants, (step, steps) = ssd_bench.layer_variants(ssd_args(heads=2, headdim=4, length=9, reference=False))
    assert list(variants) == ["mamba2 auto", "mamba2 chunked"] and steps == 9


def test_ssd_measure_interleaves_and_takes_medians(monkeypatch):
    log = []

    def timers(name):
        return {"forward": lambda: log.append((name, "forward")),
                "forward_backward": lambda: log.append((name, "forward_backward"))}

    monkeypatch.setattr(ssd_bench, "op_variants", lambda args: {"ssd chunked T=2": timers("c"),
                                                                "ssd reference": timers("r")})
    monkeypatch.setattr(ssd_bench, "layer_variants", lambda args: (
        {"mamba2 auto": timers("a"), "mamba2 reference": timers("ar")}, (lambda: log.append(("step",)), 4)))
    seconds = {("c", "forward"): [1.0, 2.0, 3.0], ("c", "forward_backward"): [2.0, 2.0, 9.0],
               ("r", "forward"): [4.0, 10.0, 3.0], ("r", "forward_backward"): [8.0, 8.0, 8.0],
               ("a", "forward"): [1.0, 1.0, 1.0], ("a", "forward_backward"): [3.0, 3.0, 3.0],
               ("ar", "forward"): [5.0, 6.0, 7.0], ("ar", "forward_backward"): [9.0, 9.0, 12.0],
               ("step",): [8.0, 2.0, 4.0]}

    def once(fn):
        fn()
        return seconds[log[-1]].pop(0)

    monkeypatch.setattr(ssd_bench, "_once", once)
    rows = ssd_bench.measure(ssd_args(repeats=3))
    warm = [("c", "forward"), ("c", "forward_backward"), ("r", "forward"), ("r", "forward_backward"),
            ("a", "forward"), ("a", "forward_backward"), ("ar", "forward"), ("ar", "forward_backward"), ("step",)]
    assert log[:9] == warm and log[9:] == warm * 3
    assert rows == [
        {"variant": "ssd chunked T=2", "forward_s": 2.0, "forward_backward_s": 2.0, "forward_speedup": 4.0,
         "forward_backward_speedup": 4.0},  # medians of 4/1, 10/2, 3/3 and of 8/2, 8/2, 8/9
        {"variant": "ssd reference", "forward_s": 4.0, "forward_backward_s": 8.0, "forward_speedup": 1.0,
         "forward_backward_speedup": 1.0},
        {"variant": "mamba2 auto", "forward_s": 1.0, "forward_backward_s": 3.0, "forward_speedup": 6.0,
         "forward_backward_speedup": 3.0},
        {"variant": "mamba2 reference", "forward_s": 6.0, "forward_backward_s": 9.0, "forward_speedup": 1.0,
         "forward_backward_speedup": 1.0},
        {"variant": "mamba2 step", "us_per_token": 1e6 * 4.0 / 4}]
    # without the loops: no speed-ups
    monkeypatch.setattr(ssd_bench, "op_variants", lambda args: {"ssd chunked T=2": timers("c")})
    monkeypatch.setattr(ssd_bench, "layer_variants", lambda args: ({"mamba2 auto": timers("a")},
                                                                   (lambda: log.append(("step",)), 2)))
    monkeypatch.setattr(ssd_bench, "_once", lambda fn: fn() or 1.0)
    rows = ssd_bench.measure(ssd_args(repeats=1))
    assert rows[0]["forward_speedup"] is None and rows[1]["forward_backward_speedup"] is None
    assert rows[2] == {"variant": "mamba2 step", "us_per_token": 5e5}


def test_ssd_main_checks_prints_and_writes(monkeypatch, tmp_path, capsys):
    seen = []
    rows = [{"variant": "ssd chunked T=4", "forward_s": 0.0021, "forward_backward_s": 0.0106, "forward_speedup": 12.34,
             "forward_backward_speedup": None},
            {"variant": "mamba2 step", "us_per_token": 42.25}]
    monkeypatch.setattr(ssd_bench, "measure", lambda args: seen.append(args) or rows)
    monkeypatch.setattr(ssd_bench, "machine", lambda: "a machine")
    out = tmp_path / "ssd.json"
    assert ssd_bench.main(["--batch", "3", "--length", "7", "--heads", "4", "--headdim", "5", "--d-state", "2",
                           "--groups", "2", "--chunk-size", "4", "--repeats", "2", "--json", str(out)]) == 0
    (args,) = seen
    assert (args.batch, args.length, args.heads, args.headdim, args.d_state, args.groups, args.chunk_size,
            args.repeats, args.reference) == (3, 7, 4, 5, 2, 2, [4], 2, True)
    lines = capsys.readouterr().out.splitlines()
    shape = "B=3, L=7, H=4, P=5, N=2, G=2"
    assert lines == [f"ssmkit bench ssd: {shape}, float32; a machine",
                     "| variant | forward ms | vs loop | forward+backward ms | vs loop |", "|---|---|---|---|---|",
                     "| ssd chunked T=4 | 2.1 | 12.3x | 10.6 | - |",
                     "| mamba2 step | 42.2 µs/token (batch 3) | | | |"]
    assert __import__("json").loads(out.read_text()) == {"shape": shape, "machine": "a machine", "results": rows}
    assert ssd_bench.main(["--no-reference"]) == 0
    args = seen[-1]
    assert (args.batch, args.length, args.heads, args.headdim, args.d_state, args.groups, args.chunk_size,
            args.repeats, args.reference) == (2, 2048, 8, 64, 128, 1, [64, 256], 3, False)


@pytest.mark.parametrize("argv,ok", [
    (["--heads", "3", "--headdim", "3"], False), (["--heads", "3", "--headdim", "2"], True),
    (["--heads", "4", "--groups", "3"], False), (["--heads", "6", "--groups", "3"], True),
    (["--heads", "1", "--headdim", "1"], False)])
def test_ssd_main_checks_the_shape(monkeypatch, capsys, argv, ok):
    monkeypatch.setattr(ssd_bench, "measure", lambda args: [])
    if ok:
        assert ssd_bench.main(argv) == 0
        return
    with pytest.raises(SystemExit) as stop:
        ssd_bench.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--heads × --headdim must be even (d_model = H·P/2) and --groups must divide --heads" in err


# ---------------------------------------------------------------------------------------------------------------------
# the three suites as scripts and their --help


@pytest.mark.parametrize("suite", ["gpu", "selective", "ssd"])
def test_each_suite_runs_as_a_script_and_describes_itself(monkeypatch, capsys, suite):
    import importlib
    import runpy

    module = importlib.import_module(f"ssmkit.bench.{suite}")
    first = module.__doc__.splitlines()[0]
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"], prog="p")
    assert stop.value.code == 0 and " ".join(first.split()) in " ".join(capsys.readouterr().out.split())
    monkeypatch.setattr(sys, "argv", [suite, "--help"])
    monkeypatch.delitem(sys.modules, f"ssmkit.bench.{suite}")  # run afresh as __main__
    with pytest.raises(SystemExit) as stop:
        runpy.run_module(f"ssmkit.bench.{suite}", run_name="__main__")
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out
