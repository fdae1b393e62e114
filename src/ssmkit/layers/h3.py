"""H3: "Hungry Hungry Hippos: Towards Language Modeling with State Space Models", Fu et al., arXiv 2212.14052.

A mixer with its own projections (§3.1, Algorithm 1). With d_model channels split into H heads of P = ``head_dim``
channels (channel h·P + i is entry i of head h):

    q, k, v = W_q x + b_q, W_k x + b_k, W_v x + b_v                       (per time step)
    k̃_t = Σ_{j=0}^{N-1} w_j k_{t-j} + D_k k_t,  w_j = Σ_m B_m C_{m+j}      (shift SSM: A = shift, learned B, C)
    z_t[h, i, j] = k̃_t[h·P + i] · v_t[h·P + j]                            (outer product per head)
    s_t[h, i, j] = SSM_h(z[h, i, j])_t + D_h z_t[h, i, j]                  (diagonal SSM per head, S4D-Lin, bilinear)
    o_t[j·H + h] = Σ_i q_t[h·P + i] · s_t[h, i, j],       y_t = W_out o_t + b_out

The shift SSM x_k = S x_{k-1} + B k_k, y = C x_k (S the N × N shift matrix) is the causal FIR with taps
w_j = Σ_m B_m C_{m+j}: its state is a function of the last N inputs, so it runs as the short causal depthwise
convolution :func:`ssmkit.ops.conv.causal_conv1d` with the skip D_k on the current tap, carrying the last N-1 k's.
The diagonal SSM is an :class:`ssmkit.layers.S4D` of H channels (one per head), run on the B·P·P sequences of the
pairs i, j (the paper's outer-product form; head_dim = 1 gives q ⊙ SSM(k̃ ⊙ v)).

Choices (docs/design.md), following the official code (HazyResearch/H3, ``src/models/ssm/h3.py``):
- N = ``d_state`` for both SSMs (default 64): N taps for the shift SSM, N/2 conjugate-pair modes for the diagonal one.
- Shift SSM: B starts at e₁ and is trained (an SSM parameter: lr ``lr``, weight decay 0), C ~ U(±1/√N) (Conv1d's
  kaiming-uniform), D_k ~ N(0, 1) per channel. Its state here is the last N-1 inputs (the official code keeps the
  N-entry shift register; both determine the same outputs).
- Diagonal SSM: S4D-Lin with bilinear discretisation (the H3 repository's defaults, ``init``/``discretization``),
  Δ log-uniform in [dt_min, dt_max] per head, D ~ N(0, 1) per head (S4D's D).
- q, k, v projections with bias (one (3·d_model) × d_model linear map, each third initialised as ``nn.Linear``), the
  output projection with bias.
- The heads' outputs are ordered j·H + h as in the official code, so its weights copy across unchanged.
- ``forward`` with a state continues from it (the official forward ignores a given state's output contribution).
- No ``l_max``: the diagonal SSM always acts over the whole input (the official ``l_max=None``).
Backends: those of S4D (``"chunked"``, ``"fft"``, ``"reference"``) for the diagonal SSM; the shift convolution uses its
loop oracle under ``"reference"``. Under autocast the projections run in bf16/fp16 and both SSMs in float32.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmkit.layers.cache import ValueCache
from ssmkit.layers.checks import (
    ATTUNED,
    DRAWN,
    MARKS,
    SHAPES,
    FixedOption,
    check_choice,
    check_dt_range,
    check_even_state,
    check_lr,
    check_positive_int,
    parameter_dtype,
)
from ssmkit.layers.marks import register_ssm_parameter
from ssmkit.layers.protocol import BlockDefaults, Capabilities, SequenceLayer, float32_core
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.s4d import DISCRETIZATIONS, INITS, S4D
from ssmkit.layers.state import TensorSpec, exportable_state
from ssmkit.ops.conv import causal_conv1d, causal_conv1d_reference, causal_conv1d_step
from ssmkit.ops.backend import autocast_enabled
from ssmkit.ops.rows import weight_dtype_device


@exportable_state
class H3State(NamedTuple):
    """The state of :class:`H3`.

    Attributes:
        shift: (B, d_model, N-1) the last N-1 keys k (oldest first), the shift SSM's state.
        ssm: (B, P, P, H, N/2) complex, the diagonal SSM's state for every pair i, j of every head.
    """

    shift: Tensor
    ssm: Tensor


@register("h3")
class H3(SequenceLayer):
    """H3 mixer (arXiv 2212.14052): shift SSM on k, diagonal SSM on k ⊙ v per head, q gate, output projection.

    Args:
        d_model: the model width (q, k, v and the output each have d_model channels).
        d_state: N, taps of the shift SSM and real-equivalent state size of the diagonal SSM (N/2 modes); even.
        head_dim: P, channels per head (d_model must be divisible by it); P > 1 runs the diagonal SSM on the P × P
            outer products k̃vᵀ of each head.
        init: eigenvalue initialisation of the diagonal SSM (S4D's ``"lin"``, ``"inv"``, ``"legs"``, ``"real"``;
            official ``"lin"``).
        discretization: of the diagonal SSM, ``"bilinear"`` (official) or ``"zoh"``.
        dt_min, dt_max: range of the log-uniform initial step size Δ of the diagonal SSM.
        lr: learning rate of the SSM parameters (Δ, A, B of the diagonal SSM, B of the shift SSM; weight decay 0);
            ``None`` = the global lr, ``0.0`` = frozen.
        device, dtype: of the parameters (float32 or float64).
    """

    # the constructor options and n_heads = d_model / head_dim, fixed at construction (checks.FixedOption:
    # assigned later, each was ignored, half-applied or broke the layer)
    d_model = FixedOption(SHAPES)
    d_state = FixedOption(SHAPES)
    head_dim = FixedOption(SHAPES)
    init = FixedOption(DRAWN)
    discretization = FixedOption(ATTUNED)
    dt_min = FixedOption(DRAWN)
    dt_max = FixedOption(DRAWN)
    lr = FixedOption(MARKS)
    n_heads = FixedOption(SHAPES)

    zoo = ZooEntry(
        paper='arXiv 2212.14052',
        structure='diagonal',
        parametrisation='shift SSM (A = shift: an N-tap FIR on k) and a diagonal SSM per head (S4D-Lin init) on k v^T',
        discretisation='bilinear (diagonal SSM); none (shift SSM)',
        time_varying=False,
        stable_by_construction=True,
        stability='shift SSM: nilpotent A (FIR); diagonal SSM: Re λ < 0 (S4D parametrisation), bilinear keeps |Ā| < 1',
        step_cost='O(H P² N) (P² products per head) + O(d_model²) projections',
        sequence_cost='O(L H P² N) diagonal scans + O(L d_model²) projections',
    )

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=False, state_space=False, step=True)
    missing: ClassVar[dict[str, str]] = {
        "kernel": "it multiplies projections of the input (k ⊙ v, then q), so its output is not a convolution of it",
        "state_space": "it multiplies projections of the input (k ⊙ v, then q), so it is not linear time-invariant",
    }
    backends: ClassVar[tuple[str, ...]] = ("reference", "chunked", "fft")
    block_defaults: ClassVar[BlockDefaults] = BlockDefaults(None, None)

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        head_dim: int = 1,
        init: str = "lin",
        discretization: str = "bilinear",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        lr: float | None = 1e-3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.head_dim = head_dim
        self.init = init
        self.discretization = discretization
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.lr = lr
        check_positive_int(d_model, "d_model")
        check_even_state(d_state, "N taps of the shift SSM, N/2 conjugate pairs of the diagonal SSM")
        check_positive_int(head_dim, "head_dim")
        if d_model % head_dim:
            raise ValueError(f"d_model must be divisible by head_dim; got d_model={d_model}, head_dim={head_dim}")
        check_choice(init, INITS, "init")
        check_choice(discretization, DISCRETIZATIONS, "discretization")
        check_dt_range(dt_min, dt_max)
        check_lr(lr)
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        self.n_heads = d_model // head_dim
        # Built in the order reset_parameters draws them, so a direct build and a meta build + reset agree.
        self.in_proj = nn.Linear(d_model, 3 * d_model, **factory)
        register_ssm_parameter(self, "B", torch.empty(d_model, d_state, **factory), lr)
        self.C = nn.Parameter(torch.empty(d_model, d_state, **factory))
        self.D_k = nn.Parameter(torch.empty(d_model, **factory))
        self._reset_shift()
        self.ssm = S4D(
            self.n_heads, d_state, init=init, discretization=discretization, dt_min=dt_min, dt_max=dt_max, lr=lr,
            **factory,
        )
        self.out_proj = nn.Linear(d_model, d_model, **factory)
        self._taps_cache: ValueCache = ValueCache(self.shift_taps)

    # ------------------------------------------------------------------------------------------------------------
    # Parameters

    @torch.no_grad()
    def _reset_shift(self) -> None:
        B = torch.zeros(self.B.shape, dtype=torch.float64)
        B[:, 0] = 1.0  # e₁
        self.B.copy_(B)
        bound = 1.0 / math.sqrt(self.d_state)  # kaiming-uniform(a=√5) of a (d_model, 1, N) Conv1d weight
        self.C.copy_(torch.empty(self.C.shape, dtype=torch.float64).uniform_(-bound, bound))
        self.D_k.copy_(torch.randn(self.d_model, dtype=torch.float64))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from the official initialisation (the only re-init path), in construction order."""
        self.in_proj.reset_parameters()
        self._reset_shift()
        self.ssm.reset_parameters()
        self.out_proj.reset_parameters()
        self._taps_cache.clear()

    def shift_taps(self) -> Tensor:
        """The shift SSM with its skip as a causal depthwise filter in ``nn.Conv1d`` order: (d_model, N), the last
        tap w_0 + D_k on the current input, tap N-1-j = w_j = Σ_m B_m C_{m+j} on the input j steps back."""
        N = self.d_state
        C = F.pad(self.C.unsqueeze(0), (0, N - 1))  # (1, d_model, 2N-1)
        w = F.conv1d(C, self.B.unsqueeze(1), groups=self.d_model)[0]  # (d_model, N): w_j = Σ_m B_m C_{m+j}
        skip = torch.cat([torch.zeros_like(w[:, 1:]), self.D_k.unsqueeze(-1)], dim=-1)  # (d_model, N)
        return w.flip(-1) + skip

    def _step_taps(self) -> Tensor:
        """:meth:`shift_taps`, cached while B, C and D_k keep their values and no gradient is needed."""
        return self._taps_cache.get_unless_grad(self.own_tensors(), self.shift_taps)

    # ------------------------------------------------------------------------------------------------------------
    # Forward and step

    def state_spec(self) -> H3State:
        """The last N-1 keys (d_model, N-1) and the diagonal SSM's state (P, P, H, N/2) complex (P, P, then the
        shape of the SSM's own state: (H, M, 2) real once the SSM is replaced by its real realisation for ONNX)."""
        P = self.head_dim
        ssm = self.ssm.state_spec()
        return H3State(TensorSpec((self.d_model, self.d_state - 1), self.D_k.dtype),
                       TensorSpec((P, P) + tuple(ssm.shape), ssm.dtype))

    def state_device(self) -> torch.device:
        return self.D_k.device

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (..., d_model) each, in the projection's compute dtype (bf16/fp16 under autocast for float32
        weights; autocast leaves float64 alone, so a float64 layer projects in float64 under it too)."""
        return self.in_proj(x.to(self.D_k.dtype)).chunk(3, dim=-1)

    def _pairs(self, k: Tensor, v: Tensor) -> Tensor:
        """z[..., i, j, h] = k[..., h·P + i] v[..., h·P + j]: (..., d_model) twice -> (..., P, P, H)."""
        P, H = self.head_dim, self.n_heads
        k = k.unflatten(-1, (H, P)).movedim(-2, -1)  # (..., P, H)
        v = v.unflatten(-1, (H, P)).movedim(-2, -1)  # (..., P, H)
        return k.unsqueeze(-2) * v.unsqueeze(-3)  # (..., P, P, H)

    def _gate(self, q: Tensor, s: Tensor) -> Tensor:
        """o[..., j·H + h] = Σ_i q[..., h·P + i] s[..., i, j, h]: q (..., d_model), s (..., P, P, H) -> (..., d_model)."""
        q = q.unflatten(-1, (self.n_heads, self.head_dim)).movedim(-2, -1)  # (..., P, H)
        return (q.unsqueeze(-2) * s).sum(-3).flatten(-2)  # (..., P, H) -> (..., P·H)

    def _forward(self, x: Tensor, state: H3State | None, return_state: bool):
        backend = self._backend()
        Bsz, L, _ = x.shape
        P, H = self.head_dim, self.n_heads
        q, k, v = self._project(x)  # (B, L, d_model) each
        real = self.D_k.dtype
        with float32_core(x.device.type):
            q, k, v = q.to(real), k.to(real), v.to(real)
            taps = self.shift_taps()  # (d_model, N)
            shift0 = None if state is None else state.shift
            if backend == "reference":
                k, shift = causal_conv1d_reference(k, taps, None, shift0)  # (B, L, d_model), (B, d_model, N-1)
            else:
                k, shift = causal_conv1d(k, taps, None, shift0, return_state, backend="auto")  # C kernel or F.conv1d
            z = self._pairs(k, v)  # (B, L, P, P, H)
            z = z.permute(0, 2, 3, 1, 4).reshape(Bsz * P * P, L, H)  # (B·P·P, L, H)
            h0 = None if state is None else state.ssm.flatten(0, 2)  # (B·P·P, H, N/2)
            s, h = self.ssm(z, h0, return_state)  # (B·P·P, L, H)
            s = s.reshape(Bsz, P, P, L, H).permute(0, 3, 1, 2, 4)  # (B, L, P, P, H)
            o = self._gate(q, s)  # (B, L, d_model)
        y = self.out_proj(o if autocast_enabled(x.device.type) else o.to(weight_dtype_device(self.out_proj)[0]))
        if not return_state:
            return y.to(x.dtype), None
        return y.to(x.dtype), H3State(shift, h.unflatten(0, (Bsz, P, P)))

    def _step(self, x_t: Tensor, state: H3State) -> tuple[Tensor, H3State]:
        Bsz = x_t.shape[0]
        q, k, v = self._project(x_t)  # (B, d_model) each
        real = self.D_k.dtype
        with float32_core(x_t.device.type):
            q, k, v = q.to(real), k.to(real), v.to(real)
            k, shift = causal_conv1d_step(k, self._step_taps(), None, state.shift)  # (B, d_model), (B, d_model, N-1)
            z = self._pairs(k, v).flatten(0, 2)  # (B·P·P, H)
            s, h = self.ssm.step(z, state.ssm.flatten(0, 2))  # (B·P·P, H), (B·P·P, H, N/2)
            o = self._gate(q, s.unflatten(0, (Bsz, self.head_dim, self.head_dim)))  # (B, d_model)
        y = self.out_proj(o if autocast_enabled(x_t.device.type) else o.to(weight_dtype_device(self.out_proj)[0]))
        return y.to(x_t.dtype), H3State(shift, h.unflatten(0, (Bsz, self.head_dim, self.head_dim)))

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, head_dim={self.head_dim}, init={self.init!r}, "
            f"discretization={self.discretization!r}"
        )
