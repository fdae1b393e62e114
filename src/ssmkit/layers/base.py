"""The layer protocol every ssmkit layer follows, the layer registry, and the LTI capability.

Protocol (DESIGN.md):

    y, h = layer(x)                      # x (B, L, H) -> y (B, L, H), h = final state
    y, h = layer(x, state=h0)            # continue from a state
    h0 = layer.initial_state(batch_size) # zeros of the right shape/dtype/device
    y_t, h = layer.step(x_t, h)          # x_t (B, H) -> y_t (B, H), O(state) work

A layer is the sequence-mixing core only; nonlinearities, norms and residuals live in
:class:`ssmkit.models.Block`. SSM parameters are registered through :func:`register_ssm_parameter`,
which attaches the ``_optim`` marks read by :func:`ssmkit.train.param_groups`.
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar, TypeVar, Union

import torch
from torch import nn

from ssmkit.ops.diagonal import diagonal_kernel, diagonal_ssm, diagonal_ssm_bidirectional, diagonal_ssm_step
from ssmkit.utils import check_floating, check_sequence

State = Union[torch.Tensor, tuple["State", ...]]
"""A layer state: one tensor, or a tuple of states (e.g. a convolution state and an SSM state)."""

_REGISTRY: dict[str, type["SequenceLayer"]] = {}

T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a layer class to the registry under ``name``."""

    def add(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"layer name {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return add


def available() -> list[str]:
    """Sorted names of every registered layer."""
    return sorted(_REGISTRY)


def layer_class(name: str) -> type["SequenceLayer"]:
    """The class registered under ``name`` (``ValueError`` naming the valid set if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown layer {name!r}; available layers: {available()}")
    return _REGISTRY[name]


def build(name: str, **options: object) -> "SequenceLayer":
    """Construct the layer registered under ``name`` with ``options`` passed to its constructor.

    The options go in one hop to the class's explicit signature, so a misspelt option fails at
    once with Python's own ``TypeError`` naming it.
    """
    return layer_class(name)(**options)


def register_ssm_parameter(
    module: nn.Module,
    name: str,
    value: torch.Tensor,
    lr: float | None,
    weight_decay: float = 0.0,
) -> None:
    """Register ``value`` on ``module`` under ``name`` as an SSM parameter with optimizer marks (STYLE.md rule 13).

    ``lr=None`` keeps the global learning rate; ``lr=0.0`` freezes the tensor (it becomes a buffer,
    saved in the state dict, not trained). The mark ``_optim = {"lr": lr, "weight_decay": wd}``
    (``lr`` omitted when None) is read by :func:`ssmkit.train.param_groups`; ``_no_reinit = True``
    tells generic initialisers to leave it alone (the layer's ``reset_parameters`` is the only
    re-initialisation path).
    """
    if lr == 0.0:
        module.register_buffer(name, value)
        return
    param = nn.Parameter(value)
    optim: dict[str, float] = {"weight_decay": weight_decay}
    if lr is not None:
        optim["lr"] = lr
    param._optim = optim  # type: ignore[attr-defined]
    param._no_reinit = True  # type: ignore[attr-defined]
    module.register_parameter(name, param)


class SequenceLayer(nn.Module):
    """Base class of every sequence-mixing layer: ``y, h = layer(x, state)``.

    Subclasses implement ``_forward(x, state)``, ``_step(x_t, state)`` and ``initial_state``;
    this class checks the inputs and the state so every layer raises the same clear errors.

    Class attributes:
        name: the registry name (set by :func:`register`).
        is_lti: True for linear time-invariant layers, which also implement ``kernel(L)`` and
            ``state_space()`` (see :class:`LTILayer`).
    """

    name: ClassVar[str] = ""
    is_lti: ClassVar[bool] = False

    d_model: int
    bidirectional: bool = False

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State | None]:
        """Run the layer over a whole sequence.

        Args:
            x: (B, L, H) real input, H = ``d_model``.
            state: the state before the first input (from ``initial_state``, ``step`` or a previous
                call), or None for zeros. Must be None for bidirectional layers.

        Returns:
            y (B, L, H) in x's dtype, and the final state (None for bidirectional layers).
        """
        check_sequence(x, self.d_model, "x")
        if state is not None:
            if self.bidirectional:
                raise ValueError(
                    f"{type(self).__name__}(bidirectional=True) has no recurrent state: pass state=None"
                )
            self._check_state(state, x.shape[0])
        return self._forward(x, state)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One recurrent step: x_t (B, H) -> y_t (B, H) and the next state, O(state) work.

        Args:
            x_t: (B, H) real input at one time step.
            state: the current state (from ``initial_state`` or a previous ``step``/``forward``).

        Returns:
            y_t (B, H) in x_t's dtype, and the next state.
        """
        if self.bidirectional:
            raise NotImplementedError(
                f"{type(self).__name__}(bidirectional=True) has no step: its output at time t depends on "
                "inputs after t, so it cannot run one step at a time"
            )
        check_floating(x_t, "x_t")
        if x_t.dim() != 2 or x_t.shape[1] != self.d_model:
            raise ValueError(f"x_t must be (B, {self.d_model}) for d_model={self.d_model}; got {tuple(x_t.shape)}")
        self._check_state(state, x_t.shape[0])
        return self._step(x_t, state)

    def initial_state(self, batch_size: int) -> State:
        """The zero state for ``batch_size`` sequences, on the layer's device and dtype."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State | None]:
        raise NotImplementedError

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def _check_state(self, state: State, batch_size: int) -> None:
        _check_state_like(state, self.initial_state(batch_size), f"initial_state({batch_size})", "state")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"


class LTILayer(SequenceLayer):
    """A linear time-invariant layer: a bank of H SISO systems (or one MIMO system).

    Adds ``kernel(L)`` (the impulse response applied by convolution) and ``state_space()`` (the
    realisation in the control convention, see :class:`ssmkit.analysis.StateSpace`).
    """

    is_lti: ClassVar[bool] = True

    def kernel(self, L: int) -> torch.Tensor:
        """The convolution kernel of length L: (H, L), or (2, H, L) when bidirectional."""
        raise NotImplementedError

    def state_space(self):  # -> ssmkit.analysis.StateSpace
        """The layer as a bank of discrete-time systems in the control convention."""
        raise NotImplementedError


class DiagonalLTILayer(LTILayer):
    """An LTI layer that is a bank of H diagonal SISO systems with M complex modes each:

        x_t = Ā ⊙ x_{t-1} + B̄ u_t,   y_t = Re(Σ_n C_n x_{t,n}) + D u_t      (arXiv 2206.11893 §2)

    Subclasses implement :meth:`discrete` and hold ``D`` (H,) and ``bidirectional``; the forward
    (chunked scan or FFT convolution, see :mod:`ssmkit.ops.diagonal`), step, kernel, initial state and
    state-space export are shared. Conjugate-pair layers (S4D) fold their factor 2 into C.
    """

    D: torch.Tensor

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ā (H, M) complex, B̄ (H, M) complex and C (C, H, M) complex with y = Re(Σ C x) + D u (C = 2 if bidirectional)."""
        raise NotImplementedError

    @property
    def n_modes(self) -> int:
        """M, the complex modes per channel (the state is (B, H, M))."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State | None]:
        # the SSM core runs in the parameters' dtype, outside autocast (DESIGN.md: float32 under AMP)
        with torch.autocast(device_type=x.device.type, enabled=False):
            u = x.to(self.D.dtype)
            A_bar, B_bar, C = self.discrete()
            if self.bidirectional:
                y = diagonal_ssm_bidirectional(u, A_bar, B_bar, C) + self.D * u  # (B, L, H)
                return y.to(x.dtype), None
            y, h = diagonal_ssm(u, A_bar, B_bar, C[0], state, D=self.D)  # (B, L, H); the skip rides on K_0
        return y.to(x.dtype), h

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            u = x_t.to(self.D.dtype)
            A_bar, B_bar, C = self.discrete()
            y, h = diagonal_ssm_step(u, A_bar, B_bar, C[0], state)  # (B, H)
            y = y + self.D * u
        return y.to(x_t.dtype), h

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Zeros (B, H, M), complex64 (complex128 for a float64 layer)."""
        dtype = torch.complex128 if self.D.dtype == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.d_model, self.n_modes, dtype=dtype, device=self.D.device)

    def kernel(self, L: int) -> torch.Tensor:
        """K_l = Re Σ_n C_n B̄_n Ā_n^l (the skip D not included): (H, L), or (2, H, L) when bidirectional."""
        check_length(L)
        A_bar, B_bar, C = self.discrete()
        K = diagonal_kernel(A_bar, B_bar, C, L)  # (C, H, L)
        return K if self.bidirectional else K[0]

    def state_space(self):
        """The layer as H real SISO systems with 2M states (a 2×2 rotation block per mode), control convention."""
        from ssmkit.analysis.statespace import StateSpace

        if self.bidirectional:
            raise ValueError(f"a bidirectional {type(self).__name__} is not causal and has no state-space realisation")
        A_bar, B_bar, C = self.discrete()
        return StateSpace.from_diagonal(A_bar, B_bar, C[0], self.D, dt=1.0, conjugate_pairs=False)


def _check_state_like(state: object, expected: State, origin: str, name: str) -> None:
    """Raise ``ValueError`` unless ``state`` has the structure, shapes and dtypes of ``expected``."""
    if isinstance(expected, tuple):
        if not isinstance(state, tuple) or len(state) != len(expected):
            found = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
            raise ValueError(f"{name} must be a tuple of {len(expected)} states (as {origin}); got {found}")
        for i, (s, e) in enumerate(zip(state, expected)):
            _check_state_like(s, e, origin, f"{name}[{i}]")
        return
    if not isinstance(state, torch.Tensor):
        raise ValueError(f"{name} must be a tensor like {origin}; got {type(state).__name__}")
    if state.shape != expected.shape or state.dtype != expected.dtype:
        raise ValueError(
            f"{name} must be {tuple(expected.shape)} {expected.dtype} (as {origin}); "
            f"got {tuple(state.shape)} {state.dtype}"
        )


def check_length(L: int, name: str = "L") -> None:
    """Raise ``ValueError`` unless L is a positive int."""
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise ValueError(f"{name} must be a positive int; got {L!r}")


def check_even_state(d_state: int, meaning: str) -> None:
    """Raise ``ValueError`` unless ``d_state`` is an even int >= 2; ``meaning`` says what it holds."""
    if isinstance(d_state, bool) or not isinstance(d_state, int) or d_state < 2 or d_state % 2:
        raise ValueError(f"d_state must be an even int >= 2 ({meaning}); got {d_state!r}")


def check_dt_range(dt_min: float, dt_max: float) -> None:
    """Raise ``ValueError`` unless 0 < dt_min <= dt_max."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")


def log_uniform_log_dt(shape: tuple[int, ...], dt_min: float, dt_max: float) -> torch.Tensor:
    """log Δ with Δ log-uniform in [dt_min, dt_max] (the S4 family's init, arXiv 2206.11893 §4): float64 (shape)."""
    low, high = math.log(dt_min), math.log(dt_max)
    return torch.rand(shape, dtype=torch.float64) * (high - low) + low


def check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    """Raise ``ValueError`` naming the valid set unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
