"""Whether the ``"triton"`` backend can run, decided by a real smoke call, and the entry points the op tables hold.

The Triton kernels live in :mod:`ssmkit.ops.triton`, which imports ``triton`` at its top; this module never imports
it at import time, so ssmkit imports cleanly without Triton. The backend is usable on a device when:

- CUDA: ``triton`` imports, the kernels compile, and a smoke call (a tiny scan, SSD or selective scan, each compared
  with its reference, forward and gradients) succeeds on that device. An import that succeeds is not enough: a driver, compiler or
  architecture mismatch only shows when a kernel is built and launched.
- CPU: only under Triton's interpreter, i.e. with ``TRITON_INTERPRET=1`` in the environment of the process from
  its start (Triton fixes the mode when it decorates a function, its own library included, and ``import torch``
  imports triton) and when the op is called. This is slow and meant for tests (CI runs the kernels this way, at
  tiny sizes: tests/conftest.py sets the variable); the same smoke call decides.
- any other device: never.

The verdict is cached per device (and, on CPU, per ``TRITON_INTERPRET`` value); :func:`triton_status` returns it
with the reason. ``"auto"`` picks ``"triton"`` on CUDA only when the verdict is yes and no ``torch.func``
transform or ``torch.export`` is tracing (the kernels' autograd functions have no vmap rule; an exported program
naming ssmkit's ops could not run without ssmkit). Under ``torch.compile`` the scan's and the selective scan's
launches are custom ops (:mod:`ssmkit.ops.opaque`), so a compiled model runs those kernels; SSD's is not (its
backward differentiates the chunked path inside the autograd function, which a compiled backward cannot run), so a
compiled Mamba-2 takes the chunked SSD. A forced ``"triton"`` that cannot run raises ``RuntimeError`` with the reason.
The kernels compute no forward-mode tangent: under forward-mode AD ``"auto"`` never picks them and a forced
``"triton"`` raises (:func:`ssmkit.ops.backend.check_forward_ad`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading

import torch

from ssmkit.ops.backend import check_forward_ad, constant_under_compile
from ssmkit.ops.opaque import custom_ops_allowed

_STATUS: dict[tuple, tuple[bool, str]] = {}
OPS = ("ssm_scan", "ssd", "selective_scan")


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set (Triton's CPU interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    return bool(((a - b).abs().max() <= tol * b.abs().max().clamp_min(1.0)).item())


def _smoke(op: str, device: torch.device, dtype: torch.dtype) -> None:
    """Run ``op``'s kernel once at a tiny size on ``device`` in ``dtype`` and compare with its reference (forward
    and gradients); raise on any mismatch."""
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64

    def rand(*shape, complex_=False):
        t = torch.randn(*shape, generator=g, dtype=torch.complex128 if complex_ else f64)
        return t.to(device=device, dtype=(torch.complex64 if dtype == torch.float32 else torch.complex128) if complex_ else dtype)

    if op == "ssm_scan":
        from ssmkit.ops.scan import ssm_scan_reference
        from ssmkit.ops.triton.scan import ssm_scan_triton as kernel

        r = torch.rand(3, 2, generator=g, dtype=f64) * 0.5 + 0.4
        A = torch.polar(r, torch.randn(3, 2, generator=g, dtype=f64)).to(device=device, dtype=rand(1, complex_=True).dtype)
        args = [rand(2, 5, 3), A, rand(3, 2, complex_=True), rand(3, 2, complex_=True), rand(2, 3, 2, complex_=True)]
        fast, ref = (lambda *a: kernel(*a, chunk_size=4)), ssm_scan_reference
    elif op == "ssd":
        from ssmkit.ops.ssd import ssd_reference
        from ssmkit.ops.triton.ssd import ssd_triton as kernel

        dt = (torch.rand(1, 20, 2, generator=g, dtype=f64) + 0.1).to(device=device, dtype=dtype)
        A = (-torch.rand(2, generator=g, dtype=f64) - 0.5).to(device=device, dtype=dtype)
        args = [rand(1, 20, 2, 2), dt, A, rand(1, 20, 1, 3), rand(1, 20, 1, 3), rand(1, 2, 2, 3)]
        fast, ref = (lambda *a: kernel(*a, chunk_size=16)), ssd_reference
    elif op == "selective_scan":
        from ssmkit.ops.selective import selective_scan_reference
        from ssmkit.ops.triton.selective import selective_scan_triton as kernel

        # the kernels' default tiles (the layouts of real calls): L = 37 in chunks of 32 (a padded last chunk), H = 5
        # channels in blocks of 4 and 2 (partial blocks), N = 3 in a tile of 4; every option on: D, z, b_Δ, softplus, h0
        A = (-torch.rand(5, 3, generator=g, dtype=f64) - 0.5).to(device=device, dtype=dtype)
        args = [rand(2, 37, 5), rand(2, 37, 5), A, rand(2, 37, 3), rand(2, 37, 3), rand(5), rand(2, 37, 5), rand(5),
                rand(2, 5, 3)]
        fast = lambda *a: kernel(*a[:8], True, a[8])  # noqa: E731
        ref = lambda *a: selective_scan_reference(*a[:8], True, a[8])  # noqa: E731
    else:
        raise ValueError(f"op must be one of {OPS}; got {op!r}")
    outs = []
    for fn in (fast, ref):
        # the first call may come from a no-grad or autocast forward: the check runs in plain float32/float64
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            leaves = [a.clone().requires_grad_() for a in args]
            y, x = fn(*leaves)
            loss = y.square().sum() + (x.abs().square().sum())
            outs.append([y, x, *torch.autograd.grad(loss, leaves)])
    for a, b in zip(*outs):
        if not _close(a.detach(), b.detach(), dtype):
            raise RuntimeError(f"the {op} kernel's smoke call disagrees with its reference")


def _isolated(fn, device: torch.device) -> None:
    """Run ``fn()`` in a new thread (on ``device`` as the current CUDA device) and re-raise what it raised.

    Grad and inference mode, autocast, saved-tensor hooks and torch function and dispatch modes are per thread: the
    smoke call, made once inside whatever call first asks, neither sees the caller's nor leaves anything in them (in
    a checkpointed forward, for one, its saved tensors would count as the forward's own)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                fn()
        except BaseException as e:  # noqa: BLE001  (handed to the caller's thread)
            failure.append(e)

    thread = threading.Thread(target=run, name="ssmkit-triton-smoke")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


@constant_under_compile  # under torch.compile: called once while tracing, its answer kept in the graph
def triton_status(device: torch.device | str, op: str = "ssm_scan", dtype: torch.dtype = torch.float32) -> tuple[bool, str]:
    """Whether ``op``'s Triton kernel runs on ``device`` in ``dtype``, and why not (``(True, "")`` when it does).

    Args:
        device: the device of the op's tensors.
        op: ``"ssm_scan"``, ``"ssd"`` or ``"selective_scan"``.
        dtype: the real dtype of the op's inputs (float32 or float64).

    Returns:
        (usable, reason): the reason names what is missing and how to get it; cached per device, op and dtype.
    """
    device = torch.device(device)
    key = (device.type, device.index, interpreting(), op, dtype)
    if key in _STATUS:
        return _STATUS[key]
    if device.type not in ("cuda", "cpu"):
        verdict = (False, f"the Triton kernels run on CUDA devices only (got {device.type})")
    elif importlib.util.find_spec("triton") is None:
        verdict = (False, "the package 'triton' is not installed (pip install triton; CUDA builds of torch bring it)")
    elif device.type == "cpu" and not interpreting():
        verdict = (
            False,
            "the Triton kernels run on CUDA devices only (got cpu); start the process with TRITON_INTERPRET=1 in its "
            "environment to run them in Triton's CPU interpreter (slow: for tests)",
        )
    elif device.type == "cuda" and not torch.cuda.is_available():
        verdict = (False, "torch.cuda.is_available() is False")
    elif dtype not in (torch.float32, torch.float64):
        verdict = (False, f"the Triton kernels take float32 or float64 inputs; got {dtype}")
    else:
        try:
            _isolated(lambda: _smoke(op, device, dtype), device)
            verdict = (True, "")
        except Exception as e:  # noqa: BLE001  (any failure of the smoke call means: not usable; the reason is kept)
            hint = ""
            if device.type == "cpu" and "outside of the scope of a kernel" in str(e):
                hint = " (TRITON_INTERPRET=1 was set after triton was imported; set it when the process starts)"
            verdict = (False, f"the smoke call failed: {type(e).__name__}: {e}{hint}")
    _STATUS[key] = verdict
    return verdict


def triton_available(device: torch.device | str, op: str = "ssm_scan", dtype: torch.dtype = torch.float32) -> bool:
    """True when ``op``'s Triton kernel runs on ``device`` in ``dtype`` (see :func:`triton_status`).

    Args:
        device: the device of the op's tensors.
        op: ``"ssm_scan"``, ``"ssd"`` or ``"selective_scan"``.
        dtype: the real dtype of the op's inputs.
    """
    return triton_status(device, op, dtype)[0]


def prefer_triton(t: torch.Tensor, op: str) -> bool:
    """What ``"auto"`` asks: t is on CUDA, no torch.func transform or torch.export traces (nor torch.compile, for
    ``"ssd"``), and ``op``'s kernel runs there in t's dtype.

    Args:
        t: the op's first input (its device and dtype decide).
        op: ``"ssm_scan"``, ``"ssd"`` or ``"selective_scan"``.
    """
    if not isinstance(t, torch.Tensor) or t.device.type != "cuda" or not custom_ops_allowed():
        return False  # (not a tensor: the portable path's own checks name it)
    if op == "ssd" and torch.compiler.is_compiling():
        return False
    return triton_available(t.device, op, t.dtype)


def require_triton(op: str, t: torch.Tensor) -> None:
    """Raise ``RuntimeError`` naming ``op`` and the reason unless its kernel runs on t's device in t's dtype, and no
    forward-mode AD is active (the kernels compute no tangent: :func:`ssmkit.ops.backend.check_forward_ad`).

    Args:
        op: ``"ssm_scan"``, ``"ssd"`` or ``"selective_scan"``.
        t: the op's first input.
    """
    check_forward_ad(op, "triton")
    ok, reason = triton_status(t.device, op, t.dtype)
    if not ok:
        raise RuntimeError(f"{op}: backend 'triton' was forced but cannot run on {t.device} ({t.dtype}): {reason}")


def ssm_scan_triton(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The diagonal LTI scan by the fused Triton kernel (:func:`ssmkit.ops.triton.scan.ssm_scan_triton`).

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(Σ_n C_n x_{t,n}) + D u_t  (arXiv 2206.11893 §2).

    Args:
        u: (B, L, H) real input.
        A_bar: (H, N) complex (or real) discrete state matrix (diagonal).
        B_bar: (H, N) complex (or real) discrete input matrix.
        C: (H, N) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, H, N) state x_{-1}, or None for zeros.
        D: (H,) real skip, or None.
        return_state: whether to return the final state (else None in its place).

    Returns:
        y (B, L, H) and the final state (B, H, N) (or None).
    """
    require_triton("ssm_scan", u)
    from ssmkit.ops.triton.scan import ssm_scan_triton as kernel

    return kernel(u, A_bar, B_bar, C, state, D, return_state=return_state)


def ssd_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan of Mamba-2 by the chunked Triton kernel (:func:`ssmkit.ops.triton.ssd.ssd_triton`).

    H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t B_tᵀ, y_t = H_t C_t (arXiv 2405.21060 §3, §6).

    Args:
        x: (B, L, H, P) inputs.
        dt: (B, L, H) step sizes Δ > 0.
        A: (H,) decay rates, A < 0.
        B: (B, L, G, N) input vectors.
        C: (B, L, G, N) output vectors.
        h0: (B, H, P, N) initial state, or None.
        chunk_size: the chunk length asked for (None: 64); the kernel's tile is the power of two in [16, 64]
            at or above it (a speed setting: the result is the same within rounding).

    Returns:
        y (B, L, H, P) and the final state (B, H, P, N).
    """
    require_triton("ssd", x)
    from ssmkit.ops.triton.ssd import ssd_triton as kernel

    return kernel(x, dt, A, B, C, h0, chunk_size=chunk_size)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    state: torch.Tensor | None = None,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The selective scan of Mamba by the fused Triton kernels (``ssmkit.ops.triton.selective``).

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t, y_t = (C_t · h_t + D ⊙ u_t) ⊙ SiLU(z_t), Δ = softplus(δ + b_Δ)
    (arXiv 2312.00752 Algorithm 2).

    Args:
        u: (B, L, H) input.
        delta: (B, L, H) step sizes δ before the bias and softplus.
        A: (H, N) state matrix.
        B: (B, L, N) input matrices shared by all channels, or (B, L, G, N), one per group of H/G channels.
        C: (B, L, N) or (B, L, G, N) output matrices, B's shape.
        D: (H,) skip, or None.
        z: (B, L, H) gate, or None.
        delta_bias: (H,) bias b_Δ added to δ, or None.
        delta_softplus: Δ = softplus(δ + b_Δ) when True, δ + b_Δ otherwise.
        state: (B, H, N) state h_{-1}, or None for zeros.
        return_state: also return the final state.

    Returns:
        y (B, L, H) and the final state h_{L-1} (B, H, N) (None when not asked for).
    """
    require_triton("selective_scan", u)
    from ssmkit.ops.triton.selective import selective_scan_triton as kernel

    return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, state, return_state)
