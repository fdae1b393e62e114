"""Peers timed beside ssmkit by ``ssmkit bench cases`` and ``ssmkit bench contention``: each optional.

A peer offers, for a case (layer, B, L, H, N, dtype, mode), a callable of no argument that runs that work once.
When it cannot (package not installed, no checkout given, layer or mode it does not have) it raises
:class:`PeerUnavailable` with the reason, and the bench prints that reason as a note instead of a row.

    official-s4       the official state-spaces/s4 ``FFTConv`` (mode ``diag`` for s4d, ``s4`` for s4), from the
                      standalone file of a user-supplied checkout (``--s4-file``; needs einops)
    loop              a plain PyTorch loop over t of the layer's own discrete diagonal recurrence (s4d, dss)
    mambapy           ``mambapy.mamba.MambaBlock`` at the same d_model and d_state (layer ``mamba``)
    accelerated-scan  ``accelerated_scan.ref.scan`` on B × (H·N/2) real channels (the scan primitive alone)
    s5-pytorch        ``s5.S5(H, N)`` (layer ``s5``)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from ssmkit.bench.backward import OutputGradients

PEERS = ("official-s4", "loop", "mambapy", "accelerated-scan", "s5-pytorch")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class PeerUnavailable(Exception):
    """A peer cannot run a case; the message says why (shown as a note)."""


def error_line(e: BaseException) -> str:
    """``"<type>: <first line of the message, 200 characters at most>"``, or the type alone for an empty message.

    A bare ``assert`` (mamba-ssm's Triton wrappers check shapes so) raises an ``AssertionError`` whose message is
    empty: ``str(e).splitlines()[0]`` then raised IndexError inside the handler, and the whole bench ended on the
    failure it was meant to report in one line.
    """
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines and lines[0] else type(e).__name__


@dataclass(frozen=True)
class Case:
    """One named benchmark case.

    Attributes:
        layer: ssmkit layer name.
        batch, length, d_model, d_state: B, L (tokens for ``step``), H, N.
        dtype: ``"float32"`` or ``"float64"``.
        mode: ``"forward"``, ``"forward_backward"`` or ``"step"``.
    """

    layer: str
    batch: int
    length: int
    d_model: int
    d_state: int
    dtype: str
    mode: str

    @property
    def name(self) -> str:
        """E.g. ``s4d-B8-L4096-H128-N64-float32-forward``."""
        return (f"{self.layer}-B{self.batch}-L{self.length}-H{self.d_model}-N{self.d_state}-{self.dtype}-"
                f"{self.mode}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype as a torch.dtype."""
        return _DTYPES[self.dtype]


def runner(case: Case, forward: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor],
           step: Callable | None = None, state=None) -> Callable[[], None]:
    """A callable running ``case.mode`` once: forward (no_grad), forward+backward (from a fixed ∂ℓ/∂y), or ``length``
    steps (no_grad) of ``step(x_t (B, H), state) -> (y_t, state)`` from ``state``.

    Args:
        case: the case.
        forward: x (B, L, H) -> y (B, L, H).
        params: the tensors whose gradients forward+backward clears first.
        step: the recurrent step, for ``step`` cases (None: the mode raises :class:`PeerUnavailable`).
        state: the state before the first step.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch, case.length, case.d_model, generator=g).to(case.torch_dtype)
    grads = OutputGradients()  # the backward starts from a fixed ∂ℓ/∂y (ssmkit.bench.backward)

    if case.mode == "forward":
        def run() -> None:
            with torch.no_grad():
                forward(x)
    elif case.mode == "forward_backward":
        def run() -> None:
            for p in params:
                p.grad = None
            grads.backward(forward(x.detach().requires_grad_()))
    elif case.mode == "step":
        if step is None:
            raise PeerUnavailable("has no recurrent step")
        inputs = x.unbind(1)

        def run() -> None:
            s = state
            with torch.no_grad():
                for x_t in inputs:
                    _, s = step(x_t, s)
    else:
        raise ValueError(f"unknown mode {case.mode!r}")
    return run


def ssmkit_runner(case: Case, backend: str) -> Callable[[], None]:
    """ssmkit's layer ``case.layer`` under ``backend`` (``return_state=False``: what training runs)."""
    import ssmkit.layers as layers
    from ssmkit.bench.core import build_for_bench
    from ssmkit.ops import use_backend

    torch.manual_seed(0)
    layer = build_for_bench(case.layer, case.d_model, case.d_state, case.length if case.mode != "step" else None)
    layer = layer.to(case.torch_dtype)
    if case.mode == "step":
        layer.eval()
        if not layer.capabilities.step:
            raise PeerUnavailable(f"{case.layer} has no step")

    def forward(x: torch.Tensor) -> torch.Tensor:
        with use_backend(backend):
            return layer(x, return_state=False)[0]

    def step(x_t, s):
        with layers.frozen_parameters():
            return layer.step(x_t, s)

    state = layer.initial_state(case.batch) if case.mode == "step" else None
    return runner(case, forward, list(layer.parameters()), step, state)


def peer_runner(peer: str, case: Case, s4_file: str | None = None) -> Callable[[], None]:
    """The callable of ``peer`` (one of :data:`PEERS`) for ``case``, or :class:`PeerUnavailable` with the reason.

    The callable is built and run once here: a peer that fails on the case (its own error, e.g. a version of torch it
    does not support, or a constructor that refuses the shape) becomes a note naming the error instead of ending the
    whole bench.
    """
    builders = {"official-s4": lambda: _official_s4(case, s4_file), "loop": lambda: _loop(case),
                "mambapy": lambda: _mambapy(case), "accelerated-scan": lambda: _accelerated_scan(case),
                "s5-pytorch": lambda: _s5_pytorch(case)}
    if peer not in builders:
        raise ValueError(f"peer must be one of {PEERS}; got {peer!r}")
    try:
        run = builders[peer]()
        run()
    except PeerUnavailable:
        raise
    except Exception as e:  # the peer's own failure on this case
        raise PeerUnavailable(f"failed on this case ({error_line(e)})") from None
    return run


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` with real floating tensors in ``dtype`` and complex ones in its complex counterpart.

    ``Module.to(float32)`` casts complex parameters to real and drops their imaginary parts (with a warning only):
    a peer that keeps complex parameters (s5-pytorch's Λ, B̃, C̃) then fails or, worse, runs a different model.
    """
    complex_dtype = {torch.float32: torch.complex64, torch.float64: torch.complex128}[dtype]
    return module._apply(lambda t: t.to(complex_dtype) if t.is_complex()
                         else t.to(dtype) if t.is_floating_point() else t)


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except Exception as e:  # ImportError, or a package that fails at import (missing CUDA extension, ...)
        raise PeerUnavailable(f"{package} is not installed ({type(e).__name__}: {e})") from None


def _official_s4(case: Case, s4_file: str | None) -> Callable[[], None]:
    modes = {"s4d": ("diag", "diag-legs"), "s4": ("s4", "legs")}
    if case.layer not in modes:
        raise PeerUnavailable(f"the official S4 code has no {case.layer}")
    if not s4_file:
        raise PeerUnavailable("no official checkout given (--s4-file PATH/models/s4/s4.py)")
    _import("einops", "einops")
    from ssmkit.bench.official import load_official

    try:  # a file that does not load (moved, another version's import error) is a note, as a missing package is
        off = load_official(s4_file)
    except Exception as e:  # noqa: BLE001  (FileNotFoundError, ImportError, SyntaxError, ...)
        raise PeerUnavailable(f"the official file {s4_file} does not load ({error_line(e)})") from None
    mode, init = modes[case.layer]
    torch.manual_seed(0)
    conv = off.FFTConv(d_model=case.d_model, d_state=case.d_state, mode=mode, init=init, transposed=False,
                       activation=None, dropout=0.0, l_max=case.length if case.mode != "step" else None)
    conv = _cast(conv, case.torch_dtype)
    state = None
    if case.mode == "step":
        conv.eval()
        conv.setup_step()
        state = conv.default_state(case.batch)
    return runner(case, lambda x: conv(x)[0], list(conv.parameters()), conv.step, state)


def _loop(case: Case) -> Callable[[], None]:
    from ssmkit.bench.core import build_for_bench
    from ssmkit.layers.diagonal import DiagonalLTILayer

    torch.manual_seed(0)
    layer = build_for_bench(case.layer, case.d_model, case.d_state, case.length if case.mode != "step" else None)
    layer = layer.to(case.torch_dtype)
    if not isinstance(layer, DiagonalLTILayer) or layer.bidirectional:
        raise PeerUnavailable(f"the plain loop covers the diagonal LTI layers (s4d, dss), not {case.layer}")

    def step(u_t: torch.Tensor, x: torch.Tensor):  # x_t = Ā x + B̄ u_t, y_t = Re(Σ C x_t) + D u_t
        A_bar, B_bar, C = layer.discrete()
        x = A_bar * x + B_bar * u_t[..., None]  # (B, H, M)
        return (C[0] * x).sum(-1).real + layer.D * u_t, x

    def forward(u: torch.Tensor) -> torch.Tensor:
        A_bar, B_bar, C = layer.discrete()
        x = torch.zeros(u.shape[0], case.d_model, layer.n_modes, dtype=A_bar.dtype)  # (B, H, M)
        ys = []
        for u_t in u.unbind(1):
            x = A_bar * x + B_bar * u_t[..., None]
            ys.append((C[0] * x).sum(-1).real)
        return torch.stack(ys, 1) + layer.D * u  # (B, L, H)

    state = layer.initial_state(case.batch) if case.mode == "step" else None
    return runner(case, forward, list(layer.parameters()), step, state)


def _mambapy(case: Case) -> Callable[[], None]:
    if case.layer != "mamba":
        raise PeerUnavailable(f"mambapy offers Mamba only, not {case.layer}")
    mamba = _import("mambapy.mamba", "mambapy")
    torch.manual_seed(0)
    block = mamba.MambaBlock(mamba.MambaConfig(d_model=case.d_model, n_layers=1, d_state=case.d_state))
    block = _cast(block, case.torch_dtype)
    return runner(case, block, list(block.parameters()))


def _accelerated_scan(case: Case) -> Callable[[], None]:
    if case.layer not in ("s4d", "dss", "s5", "lru"):
        raise PeerUnavailable("accelerated-scan is a real first-order scan: compared for diagonal layers only")
    ref = _import("accelerated_scan.ref", "accelerated-scan")
    channels = case.d_model * max(1, case.d_state // 2)
    g = torch.Generator().manual_seed(0)
    gates = (0.5 + 0.45 * torch.rand(case.batch, channels, case.length, generator=g)).to(case.torch_dtype)
    tokens = torch.randn(case.batch, channels, case.length, generator=g).to(case.torch_dtype)
    if case.mode == "step":
        raise PeerUnavailable("has no recurrent step")
    if case.mode == "forward":
        return lambda: ref.scan(gates, tokens)

    grads = OutputGradients()

    def run() -> None:
        grads.backward(ref.scan(gates, tokens.detach().requires_grad_()))

    return run


def _s5_pytorch(case: Case) -> Callable[[], None]:
    if case.layer != "s5":
        raise PeerUnavailable(f"s5-pytorch offers S5 only, not {case.layer}")
    s5 = _import("s5", "s5-pytorch")
    torch.manual_seed(0)
    layer = _cast(s5.S5(case.d_model, case.d_state), case.torch_dtype)
    return runner(case, layer, list(layer.parameters()))
