"""The layer protocol every ssmkit layer follows, and the capabilities a layer may add to it.

    y, h = layer(x)                      # x (B, L, H) -> y (B, L, H), h = final state
    h0 = layer.initial_state(batch_size) # zeros of the right shape/dtype/device
    y, h = layer(x, state=h0)            # continue from a state
    y, _ = layer(x, return_state=False)  # skip computing the final state (training)
    y_t, h = layer.step(x_t, h)          # x_t (B, H) -> y_t (B, H), O(state) work

A layer is the sequence-mixing core only; norms, residuals and (for LTI layers) the nonlinearity live in
:class:`ssmkit.models.Block`. Beyond ``forward`` a layer declares which of three capabilities its class has
(:class:`Capabilities`): a convolution kernel, a state-space realisation, a recurrent step with a finite state.
A capability the layer lacks raises ``NotImplementedError`` saying why.

Non-finite inputs: the math lets NaN and inf through, and how far they spread depends on the path. The step and
the reference loop make outputs non-finite from the first bad time step on; the chunked scan from the start of
the chunk (64 steps) holding it; an FFT convolution from t = 0 (every output mixes every frequency), and so does
attention's ``forward`` (Mega's from the start of its attention chunk: a masked, zero attention weight times a NaN
value is NaN). Use
``SequenceModel(check_finite=True)`` or :func:`ssmkit.utils.check_finite` to find the first bad step.

Precision: a layer computes in its parameters' dtype (float32 or float64; ``.half()``/``.bfloat16()`` layers are
refused by ``forward``, ``step``, ``initial_state``, ``kernel`` and the tensor helpers ``discrete()``/``eigenvalues()``/
``continuous()``) and answers in the input's dtype. ``state_space()`` alone accepts float16/bfloat16 weights, as
python-control accepts any numbers: it computes from exactly those weights in float64 (half precision converts to
float64 without rounding) and returns the usual float64/complex128 system. Under ``torch.autocast`` the SSM core,
``kernel`` and ``state_space`` stay in the parameters' dtype and only a mixer's own projections run in bf16/fp16. Call
``backward`` after leaving the autocast block (PyTorch's advice): inside it, the backward's matmuls run in bf16/fp16
too, even those of a layer whose forward ran in float32 (gradients 1e-3 off; fp16 underflows tiny ones to 0).

``torch.jit.trace`` is not supported (a trace freezes the sequence length into the graph and gives silently wrong
outputs at other lengths): layers raise under it, and under ``torch.jit.script``. Use ``torch.compile``, which captures
S4, S4D and DSS in full, or ``torch.export``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
from dataclasses import dataclass
from typing import ClassVar, ContextManager, Mapping

import torch
from torch import nn
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from ssmkit.layers.cache import own_tensors
from ssmkit.layers.checks import check_batch_size, check_length
from ssmkit.layers.state import State, StateSpec, check_state, zeros_from_spec
from ssmkit.layers.zoo import ZooEntry
from ssmkit.ops.backend import autocast_enabled, get_backend, tracing
from ssmkit.utils import check_floating, check_sequence

CAPABILITIES = ("kernel", "state_space", "step")
# the option values a layer's repr prints (not a module, tensor or method that happens to share an option's name)
_PLAIN = (type(None), bool, int, float, str, tuple, list, dict)


@dataclass(frozen=True)
class Capabilities:
    """What a layer class can do beyond ``forward``.

    Attributes:
        kernel: ``kernel(L)`` gives the convolution kernel: the layer is y = K ⊛ u.
        state_space: ``state_space()`` gives a finite-dimensional LTI realisation (:class:`ssmkit.analysis.StateSpace`).
        step: ``step(x_t, state)`` runs one recurrent step with a finite (or growing, for attention) state.
    """

    kernel: bool = False
    state_space: bool = False
    step: bool = True


@dataclass(frozen=True)
class BlockDefaults:
    """The activation and output projection :class:`ssmkit.models.Block` puts after a layer unless told otherwise.

    LTI layers are linear maps and get a nonlinearity and a GLU (the S4 block); mixers that carry their own gates
    and projections (Mamba, Mamba-2, H3, GSS, Mega, Hawk) declare ``BlockDefaults(None, None)``.

    Attributes:
        activation: ``"gelu"``, ``"silu"``, ``"relu"``, ``"tanh"`` or None.
        mixer_out: ``"glu"``, ``"linear"`` or None.
    """

    activation: str | None = "gelu"
    mixer_out: str | None = "glu"


def float32_core(device_type: str) -> ContextManager:
    """The context in which a layer runs its SSM core: autocast disabled, so the core computes in the parameters'
    dtype (float32 or float64) while autocast runs the block's projections in bf16/fp16.

    Args:
        device_type: the input's device type (``"cpu"``, ``"cuda"``).

    Returns:
        a context manager (a no-op when autocast is not enabled on that device).
    """
    if autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def fused_step_runs(layer: nn.Module, op: str, x: torch.Tensor, state: tuple, param: torch.Tensor) -> bool:
    """Whether a mixer's ``step`` may take its fused C kernel ``op`` (:mod:`ssmkit.ops.native`): the call records no
    graph (grad mode off, or no parameter, x or state tensor requiring a gradient: the kernels have no backward),
    nothing traces (torch.compile, torch.func: the kernels are plain C calls there), every parameter and state tensor
    has one dtype and device, x that device (the kernels read one dtype; a layer with a parameter of another dtype,
    which the PyTorch step promotes or rejects as the forward does, takes the PyTorch step), and the kernel runs here
    for that device and dtype (``prefer_native``, after its smoke call).

    Args:
        layer: the layer.
        op: the kernel's name in ``ssmkit.ops.native.gate.OPS``.
        x: the step's input.
        state: its state, a tuple of tensors.
        param: one of the layer's parameters (their device and dtype).
    """
    from ssmkit.ops.backend import tracing
    from ssmkit.ops.native.gate import prefer_native

    params = list(layer.parameters())
    records = torch.is_grad_enabled() and (
        x.requires_grad or any(t.requires_grad for t in state) or any(p.requires_grad for p in params)
    )
    uniform = x.device == param.device and all(t.dtype == param.dtype and t.device == param.device
                                               for t in (*state, *params))  # (x is cast to the layer's dtype)
    return not records and uniform and not tracing() and prefer_native(op, param)


def apply_pruning(module: nn.Module) -> None:
    """Recompute every tensor that a forward pre-hook of ``torch.nn.utils`` computes from others in ``module`` and its
    sub-modules, as the hooks do in ``__call__``: a tensor ``torch.nn.utils.prune`` pruned (``name = name_orig *
    name_mask``), and one the legacy, hook-based ``torch.nn.utils.weight_norm`` (``name = g · v / ‖v‖``, Salimans &
    Kingma, arXiv 1602.07868) or ``torch.nn.utils.spectral_norm`` (``name = name_orig / σ``, σ from the hook's
    vectors u and v, Miyato et al., arXiv 1802.05957) reparametrises.

    Each keeps the tensor as a plain attribute that only the module's ``__call__`` refreshes. ``step``, ``kernel``,
    ``state_space`` and the read-outs (``discrete()``, ...) are not ``__call__`` (nor is a mixer's call of its short
    convolution's ``step``), so after an optimizer step or a ``load_state_dict`` (both change the originals) without
    a forward in between they read the old value: pruned, S4D's step 1.7 from its forward, its kernel and state space
    as far, every cached layer and every mixer (Mamba 3e-4, Mamba-2 3e-2); with the legacy weight norm on an SSM
    tensor, the step of DLR 0.57, H3 0.86, LRU 0.14 (its state space 1.9), SGConv 0.14, and on the short convolution
    of Mamba 0.22, Mamba-2 0.33, RG-LRU 0.75 (and, with autograd on, a step read the last forward's graph). Spectral
    norm is recomputed from the hook's current u and v without a power iteration (``__call__`` runs one in training
    mode): in eval mode this is the forward's weight exactly, and reading the layer never changes u and v. A layer
    calls this in :meth:`SequenceLayer._check_parameter_dtype`, before any weight is read; a module without such hooks
    costs a walk over its modules' hook dicts (0.2-1 µs).

    Args:
        module: the layer (its whole module tree is refreshed).
    """
    stack = [module]
    while stack:  # (step calls this every time: a plain loop over the module dicts, no generators)
        m = stack.pop()
        if m is None:  # a sub-module slot set to None
            continue
        if m._forward_pre_hooks:
            for hook in tuple(m._forward_pre_hooks.values()):
                if isinstance(hook, (BasePruningMethod, WeightNorm)):
                    hook(m, ())
                elif isinstance(hook, SpectralNorm):
                    setattr(m, hook.name, hook.compute_weight(m, do_power_iteration=False))
        if m._modules:
            stack.extend(m._modules.values())


def complex_pairs(t: torch.Tensor) -> torch.Tensor:
    """A real tensor of real and imaginary parts, paired on its last axis, as complex: ``torch.view_as_complex(t)``
    where t's layout allows that view (no copy), else ``torch.complex(t[..., 0], t[..., 1])`` (the same numbers, and
    gradients, in new memory).

    A parameter's memory is not always its own: ``torch.nn.utils.vector_to_parameters`` makes each parameter a view
    of one flat vector, and ``functional_call`` with slices of a flat buffer does the same, at whatever offset the
    tensors before it leave. At an odd offset ``view_as_complex`` raised ("Tensor must have a storage_offset divisible
    by 2") in the forward of S4, S4D, Liquid-S4, DSS, DLR, GSS, H3, LRU and S5. The layout is read only outside
    torch.compile and torch.func transforms, which keep the view.

    Args:
        t: (..., 2) real: the real and imaginary parts along the last axis.

    Returns:
        (...) complex, t's precision.
    """
    if not tracing() and (t.stride(-1) != 1 or t.storage_offset() % 2 or any(s % 2 for s in t.stride()[:-1])):
        return torch.complex(t[..., 0], t[..., 1])
    return torch.view_as_complex(t)


def with_skip(K: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """A kernel with the skip added on the causal kernel's tap 0, so that y = K ⊛ u includes D u.

    Args:
        K: (C, H, L) kernels without the skip (C = 1 causal, or 2: causal then anti-causal).
        D: (H,) skip, K's dtype.

    Returns:
        (C, H, L): K with K[0, :, 0] + D.
    """
    # no in-place write into a new tensor: torch 2.11's ONNX exporter failed on the copy it traced ("Key
    # 'p_..._d' does not match the name of the value 'copy'")
    tap0 = torch.cat([K[:1, :, :1] + D[None, :, None], K[1:, :, :1]], dim=0)  # (C, H, 1)
    return torch.cat([tap0, K[:, :, 1:]], dim=-1)  # (C, H, L)


class SequenceLayer(nn.Module):
    """Base class of every sequence-mixing layer: ``y, h = layer(x, state)``.

    Subclasses set the class attributes below and implement ``state_spec``, ``_forward`` and, for each capability
    they declare, ``_step``, ``_kernel`` and ``_state_space``; this class checks every input and state, so every
    layer raises the same clear errors.

    Class attributes:
        name: the registry name (set by :func:`ssmkit.layers.register`); "" for a class not registered itself (a
            subclass does not inherit its parent's name, so analyses report it by its own class name).
        capabilities: what the layer class can do (:class:`Capabilities`).
        missing: why a capability is absent, by capability name (the ``NotImplementedError`` message).
        backends: the backends (``ssmkit.ops.set_backend``) under which ``forward`` runs, besides ``"auto"``.
        block_defaults: what :class:`ssmkit.models.Block` puts after the layer by default.
        zoo: the layer's control-theoretic description (:class:`ssmkit.layers.ZooEntry`), declared by every
            registered class itself (``ssmkit zoo`` refuses an inherited or missing one).
        anticausal: whether the class can run over a sequence in both directions (``bidirectional = True``); by
            default, whether its constructor takes a ``bidirectional`` option. ``forward`` refuses
            ``bidirectional = True`` on a class that cannot (assigned afterwards, it only turned ``step`` off).
        takes_mask: whether ``forward`` takes a keyword-only ``mask`` (B, L) bool, True at each sequence's positions
            and False at its right padding (bidirectional layers that are not a convolution, such as Mega):
            :class:`ssmkit.models.Block` hands its padding mask to such a layer.
        takes_intervals: whether ``forward`` takes a keyword-only ``intervals`` (B, L) and ``step`` an ``interval``
            (B,): the time since the previous sample in nominal sampling periods, for irregularly sampled sequences
            (S5): :class:`ssmkit.models.Block` and :class:`ssmkit.models.SequenceModel` hand them to such a layer.
    """

    name: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    missing: ClassVar[Mapping[str, str]] = {}
    backends: ClassVar[tuple[str, ...]] = ("reference",)
    block_defaults: ClassVar[BlockDefaults] = BlockDefaults()
    zoo: ClassVar[ZooEntry | None] = None

    d_model: int
    bidirectional: bool = False
    anticausal: ClassVar[bool] = False
    takes_mask: ClassVar[bool] = False
    takes_intervals: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # a registry name is the class's own: a subclass of S4D is not "s4d"
            cls.name = ""
        if "anticausal" not in cls.__dict__:  # declared by the class itself, or read from its constructor
            cls.anticausal = "bidirectional" in inspect.signature(cls.__init__).parameters

    # ------------------------------------------------------------------------------------------------------------
    # Capabilities

    def unsupported(self, capability: str) -> str | None:
        """Why this layer (with its options) lacks ``capability`` (``"kernel"``, ``"state_space"``, ``"step"``),
        or None when it has it."""
        if capability not in CAPABILITIES:
            raise ValueError(f"capability must be one of {CAPABILITIES}; got {capability!r}")
        if self.bidirectional and capability == "step":
            return "its output at time t depends on inputs after t (bidirectional=True), so it cannot run one step at a time"
        if self.bidirectional and capability == "state_space":
            return "it is not causal (bidirectional=True: its output depends on later inputs), so it has no causal state-space realisation"
        if not getattr(self.capabilities, capability):
            return self.missing.get(capability, "the layer does not define it")
        return None

    def supports(self, capability: str) -> bool:
        """Whether this layer (with its options) has ``capability``: ``"kernel"``, ``"state_space"`` or ``"step"``."""
        return self.unsupported(capability) is None

    def _require(self, capability: str) -> None:
        why = self.unsupported(capability)
        if why is not None:
            raise NotImplementedError(f"{type(self).__name__} has no {capability.replace('_', ' ')}: {why}")

    def _backend(self) -> str:
        """The backend of this call (``ssmkit.ops.get_backend()``), checked against the layer's ``backends``."""
        backend = get_backend()
        if backend != "auto" and backend not in self.backends:
            raise RuntimeError(
                f"{type(self).__name__}: backend {backend!r} was forced with ssmkit.ops.set_backend but this layer "
                f"runs under {('auto',) + self.backends}"
            )
        return backend

    # ------------------------------------------------------------------------------------------------------------
    # The protocol

    def forward(
        self, x: torch.Tensor, state: State | None = None, return_state: bool = True
    ) -> tuple[torch.Tensor, State | None]:
        """Run the layer over a whole sequence.

        Args:
            x: (B, L, H) real input, H = ``d_model``.
            state: the state before the first input (from ``initial_state``, ``step`` or a previous call), or None
                for zeros. Must be None for bidirectional layers.
            return_state: compute and return the final state (False skips that work and returns None; models ask
                for it only when they carry state).

        Returns:
            y (B, L, H) in x's dtype, and the final state (None when not asked for, or for bidirectional layers).
        """
        self._check_forward(x, state)
        return self._forward(x, state, bool(return_state) and not self.bidirectional)

    def _check_forward(self, x: torch.Tensor, state: State | None) -> None:
        """The checks of ``forward`` (for layers whose ``forward`` takes more arguments, such as segment starts)."""
        if torch.jit.is_tracing():
            raise RuntimeError(
                f"{type(self).__name__}: torch.jit.trace is not supported (a trace freezes the sequence length and "
                "gives wrong outputs at other lengths); use torch.compile or run the module eagerly"
            )
        check_sequence(x, self.d_model, "x")
        device = self._check_placement(x, "x")
        if self.bidirectional and not self.anticausal:
            raise ValueError(f"{type(self).__name__} runs causally only (its constructor has no bidirectional option), "
                             f"but its bidirectional attribute is {self.bidirectional!r}: set it False (True only "
                             "turned its step and state space off), or use a layer built with bidirectional=True")
        if state is not None:
            if self.bidirectional:
                raise ValueError(f"{type(self).__name__}(bidirectional=True) has no recurrent state: pass state=None")
            check_state(state, self.state_spec(), x.shape[0], device)

    def __prepare_scriptable__(self) -> "SequenceLayer":
        """Refuse ``torch.jit.script`` (which calls this on every sub-module first) with a clear error: the layers'
        checks, states and dispatch are Python that TorchScript cannot compile, and it failed deep in its compiler
        with a message about an unrelated line."""
        raise RuntimeError(
            f"{type(self).__name__}: torch.jit.script is not supported (ssmkit layers are Python modules TorchScript "
            "cannot compile); use torch.compile, torch.export, or ssmkit.analysis.export_onnx for a model's step"
        )

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One recurrent step: x_t (B, H) -> y_t (B, H) and the next state, O(state) work.

        Args:
            x_t: (B, H) real input at one time step.
            state: the current state (from ``initial_state`` or a previous ``step``/``forward``).

        Returns:
            y_t (B, H) in x_t's dtype, and the next state.
        """
        self._check_step(x_t, state)
        return self._step(x_t, state)

    def _check_step(self, x_t: torch.Tensor, state: State) -> None:
        """The checks of ``step`` (for layers whose ``step`` takes more arguments)."""
        self._require("step")
        check_floating(x_t, "x_t")
        if x_t.dim() != 2 or x_t.shape[1] != self.d_model or x_t.shape[0] < 1:
            raise ValueError(f"x_t must be (B, {self.d_model}) for d_model={self.d_model}, B >= 1; got {tuple(x_t.shape)}")
        device = self._check_placement(x_t, "x_t")
        check_state(state, self.state_spec(), x_t.shape[0], device)

    def _check_placement(self, x: torch.Tensor, name: str) -> torch.device:
        """The layer's device, after checking that the input ``x`` is on it and that the parameters are float32 or
        float64 (``.to(torch.bfloat16)`` after construction made some layers fail deep inside, others run their SSM
        core in bfloat16)."""
        device = self.state_device()
        if x.device != device:
            raise ValueError(f"{name} must be on the layer's device {device}; got {x.device}")
        self._refuse_meta(device)
        self._check_parameter_dtype()
        return device

    def _refuse_meta(self, device: torch.device) -> None:
        """Raise ``ValueError`` for a layer on the meta device: it has no values to compute with (``forward``, ``step``,
        ``kernel`` and ``state_space`` say so; before, the last two failed in autocast's dispatch: "unknown device type
        for autocast")."""
        if device.type == "meta":
            raise ValueError(f"{type(self).__name__} runs on a real device, not on 'meta' (which only defers the "
                             "initialisation): call to_empty(device=...) and reset_parameters() first")

    def _low_precision_dtype(self) -> torch.dtype | None:
        """The parameters' dtype when it is not float32 or float64, else None (read on the first one: the layer's own,
        from the module's dict as ``own_tensors`` does, since ``step`` calls this every time)."""
        own = [t for t in self._parameters.values() if t is not None]
        for p in own or self.parameters():
            return p.dtype if p.dtype not in (torch.float32, torch.float64) else None
        return None

    def _check_parameter_dtype(self) -> None:
        """Raise ``ValueError`` unless the parameters are float32 or float64 (see :meth:`_low_precision_dtype`), then
        refresh the tensors ``torch.nn.utils.prune`` pruned (:func:`apply_pruning`). Every entry that reads the weights
        calls this first -- ``forward``, ``step``, ``kernel``, ``initial_state`` and the read-outs ``discrete()``,
        ``eigenvalues()``, ``continuous()``, Hyena's ``filters()`` -- so each reads ``name_orig * name_mask`` as it is
        now, not as the last ``__call__`` left it."""
        dtype = self._low_precision_dtype()
        if dtype is not None:
            raise ValueError(
                f"{type(self).__name__}'s parameters are {dtype}, but ssmkit layers keep float32 or float64 "
                "parameters (not .half() or .to(torch.bfloat16)): for bfloat16/float16 compute keep them float32 "
                "and run under torch.autocast, which keeps the SSM core in float32 (state_space() analyses "
                "half-precision weights in float64; .float() converts the layer)"
            )
        apply_pruning(self)

    def initial_state(self, batch_size: int) -> State:
        """The zero state of ``batch_size`` sequences, on the layer's device (see ``state_spec``).

        Args:
            batch_size: B, an int >= 1.

        Returns:
            the state: (B, ...) tensors with the structure of ``state_spec()``.
        """
        check_batch_size(batch_size)
        self._check_parameter_dtype()
        return zeros_from_spec(self.state_spec(), batch_size, self.state_device())

    def state_spec(self) -> StateSpec:
        """What the layer's state is, per sequence: a :class:`ssmkit.layers.TensorSpec` or a tuple of them."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its state (state_spec)")

    def state_device(self) -> torch.device:
        """The device of the layer's state: that of its first parameter or buffer."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def own_tensors(self) -> list[torch.Tensor]:
        """The layer's own parameters and buffers (not those of sub-modules): what a cache of values computed from
        them must watch (read straight from the module's dicts: a step calls this every time).

        A tensor reparametrised with ``torch.nn.utils.parametrize`` (``weight_norm``, ``orthogonal``, a user's
        constraint) has left ``_parameters`` for ``parametrizations.<name>.original``: its current value is watched
        instead (without it a cache kept the first call's weights after a training step, and one whose tensors had
        all moved there never recomputed with autograd on, so they got no gradient)."""
        return own_tensors(self)

    def kernel(self, L: int) -> torch.Tensor:
        """The convolution kernel of length L, including the skip at lag 0, so that y = K ⊛ u exactly.

        Args:
            L: kernel length, >= 1.

        Returns:
            (H, L) for a bank of SISO systems, (H_out, H_in, L) for a MIMO layer, with a leading 2 when
            bidirectional (the causal kernel, then the anti-causal one whose tap 0 acts at lag -1); in the
            parameters' dtype, also under autocast, as ``forward`` computes it.
        """
        self._require("kernel")
        check_length(L)
        self._refuse_meta(self.state_device())
        self._check_parameter_dtype()
        with float32_core(self.state_device().type):  # as forward computes it: not in autocast's bf16/fp16
            return self._kernel(L)

    def state_space(self):  # -> ssmkit.analysis.StateSpace
        """The layer as a bank of discrete-time systems in the control convention (:class:`ssmkit.analysis.StateSpace`):
        simulating it from a zero state reproduces ``layer(x)[0]``.

        The matrices are float64 (complex128 for a complex bank) whatever the parameters' dtype. Float16/bfloat16
        parameters (a model shipped in half precision, loaded with ``assign=True`` or cast with ``.half()``) are
        analysed as they are: the system is computed from a float64 copy of the layer, which holds exactly the same
        weights (python-control, too, converts whatever numbers it is given to float64)."""
        self._require("state_space")
        self._refuse_meta(self.state_device())
        with torch.no_grad():  # the pruned weights, as forward's hooks make them (and leaves, which deepcopy takes)
            apply_pruning(self)
        if self._low_precision_dtype() is not None:
            with torch.no_grad():
                return copy.deepcopy(self).to(torch.float64).state_space()
        with torch.no_grad(), float32_core(self.state_device().type):
            return self._state_space()

    # ------------------------------------------------------------------------------------------------------------
    # Implemented by subclasses

    def _forward(self, x: torch.Tensor, state: State | None, return_state: bool) -> tuple[torch.Tensor, State | None]:
        raise NotImplementedError(f"{type(self).__name__} does not implement _forward")

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} does not implement _step")

    def _kernel(self, L: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement _kernel")

    def _state_space(self):
        raise NotImplementedError(f"{type(self).__name__} does not implement _state_space")

    def extra_repr(self) -> str:
        return self._with_changed_options(f"d_model={self.d_model}")

    def _with_changed_options(self, shown: str, covered: tuple[str, ...] = ()) -> str:
        """``shown`` (a layer's ``extra_repr``: ``d_model``, ``d_state`` and its main options), then ", name=value" for
        every other constructor option whose value differs from the constructor's default (an initial Δ range, a
        learning rate): a printed layer, or model, shows every choice it was built with.

        Args:
            shown: the options the layer always prints, "name=value, ...".
            covered: options that ``shown`` prints under another name (SGConv's ``decay`` for ``decay_min`` and
                ``decay_max``).

        Returns:
            ``shown``, followed by the changed options in signature order. An option is read from the attribute of its
            name (:class:`~ssmkit.layers.checks.FixedOption` keeps each there); one without such an attribute, or whose
            attribute is not a plain value (a number, string, tuple, ...), is left out.
        """
        named = set(re.findall(r"(\w+)=", shown)) | set(covered)
        changed = []
        for p in inspect.signature(type(self).__init__).parameters.values():
            if (p.name in named or p.name in ("self", "device", "dtype") or p.default is p.empty
                    or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
                continue
            value = getattr(self, p.name, p.default)
            if not isinstance(value, _PLAIN):
                continue
            if not (type(value) is type(p.default) and value == p.default):
                changed.append(f"{p.name}={value!r}")
        return ", ".join([shown, *changed])
