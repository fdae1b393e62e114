"""Liquid-S4: "Liquid Structural State-Space Models", Hasani et al., arXiv 2209.12951 — built causally.

The paper's liquid (linearised LTC) state space lets the input modulate the transition (discretised bilinearly, as S4):

    x_k = (Ā + B̄ u_k 1ᵀ) x_{k-1} + B̄ u_k,      y_k = C_trueᵀ x_k + D u_k

where B̄ u_k acts on the state through 1ᵀ x (the sum over the full conjugate-pair state, the reading of the
official code, whose products of B̄ are B̄ (1ᵀB̄)^{p-1}; not an element-wise power). Unrolled from x_{-1} = 0, y_k
is S4's output K ⊛ u plus terms of degree p >= 2 in the inputs. Those in which Ā stands only on the left are

    C_trueᵀ Ā^l B̄^{(p)} u^{(p)}_{k-l},   B̄^{(p)} = (B̄ 1ᵀ)^{p-1} B̄ = β^{p-1} B̄,   β = 1ᵀ B̄ (real),
    u^{(p)}_t = u_t u_{t-1} ... u_{t-p+1}   (the product of the p latest inputs: CAUSAL),

so that, with K_l = C_trueᵀ Ā^l B̄ (S4's kernel without the skip), their sum over l is β^{p-1} K ⊛ u^{(p)}: the
paper's liquid kernel K̄_liquid^{(p)} = K̄ B̄^{p-1}. The paper's two liquid kernels, PB and KB, keep degrees
p = 2 .. P (``liquid_degree``) and differ in which lags l they keep. With the liquid input

    s_t = Σ_{p=2}^{P} β^{p-1} f(u^{(p)}_t)        (f = ``liquid_contract``: identity, tanh or LeCun's tanh)

- ``"kb"`` (K̄·B̄ kernel) keeps every lag:   y = K ⊛ (u + s) + D u.
  It is S4 driven by u + s, with the skip on u alone:  x_k = Ā x_{k-1} + B̄ (u_k + s_k),  y_k = C_trueᵀ x_k + D u_k.
- ``"pb"`` (polynomial-of-B̄ kernel) drops every Ā power, keeping only l = 0:   y = K ⊛ u + D u + K_0 s.
  Recurrently:  x_k = Ā x_{k-1} + B̄ u_k,  y_k = C_trueᵀ x_k + D u_k + (C_trueᵀ B̄) s_k.

Derivation of the step (it equals ``forward`` exactly, liquid terms included): s_t needs only u_t and the P-1 inputs
before it, so the state is (x, the last P-1 inputs); each step forms u^{(p)}_t = u^{(p-1)}_t u_{t-p+1} from them,
runs S4's O(N) bilinear DPLR step (:func:`ssmkit.ops.dplr.dplr_step`) on u_t + s_t (KB) or u_t (PB) and adds D u_t
(and K_0 s_t for PB); K_0 = C_trueᵀ B̄ and B̄ (hence β) are one such step's output and state from x = 0, u = 1.
``forward`` computes S4's DPLR kernel and FFT convolution once (PB reads K_0 from that kernel), with an initial
state as S4 does; the inputs before the sequence come from the state (zeros at the start).

Departures from the official code (raminmh/liquid-s4, ``src/models/sequence/ss/s4.py``), all deliberate:
- The official u^{(p)} is NOT causal and runs backwards in time. Its correlation sequence is formed over the whole
  input (``allcombs=True``: p-combinations of the last n samples of the sequence; ``allcombs=False``: u_t u_{t-1},
  then that rule applied again to the product, i.e. degree 2^{p-1}) and then flipped in time before it enters the
  output, so the output at t = 0 receives u_{L-2} u_{L-1}. Here u^{(p)} uses the current and past inputs only
  (the causal reading of ``allcombs=False``, with plain degree p), so ``step`` exists and equals ``forward``; the
  official ``step`` drops the liquid terms altogether. For p = 2 the official PB term is ours reversed in time:
  off_t = c · u_{L-1-t} u_{L-2-t} (docs/benchmarks.md).
- B̄ and β come from the full DPLR discretisation (P included) of the same system as S4's kernel; the official
  code uses the diagonal Λ only, and its PB recursion gives B̄ β^{2^{p-1}-1} (equal to ours for p = 2).
- PB's coefficient is C_trueᵀ B̄^{(p)} from the trained parameters; the official code reads the kernel's initial C, Λ,
  B, Δ kept as plain tensors, so its C and Re Λ there never train (docs/benchmarks.md).
- The official KB multiplies spectra from FFTs of different lengths (a complex FFT of length L+1 against a real FFT
  of length 2L), which is not a convolution; here KB is the exact causal convolution above.
- No ``allcombs=True`` (all p-combinations of past inputs have no finite causal state) and no bidirectional form.

No sampling intervals (``takes_intervals`` False, although S4 has them): with each step's own Ā_t, B̄_t (Δ_t = Δ τ_t)
the degree-p term that the liquid recurrence leaves at lag 0 is B̄_k u_k (1ᵀB̄_{k-1} u_{k-1}) ... (1ᵀB̄_{k-p+1}
u_{k-p+1}) = B̄_k β_{k-1} ... β_{k-p+1} u^{(p)}_k: its coefficient reads the p-1 PREVIOUS gaps (β_j = 1ᵀB̄_j depends
on τ_j), which the state (x, the last P-1 inputs) does not hold, and the contraction f of the products cannot fold
them into the stored inputs. A per-step form needs the last P-1 gaps in the state (a third field, which the regular
forward and ``step`` would have to read and write too); β_k^{p-1} of the current gap alone would be another model.

Backends: ``"fft"`` (and ``"auto"``) = S4's DPLR kernel + FFT convolutions; ``"reference"`` = the step loop (the
oracle). The layer is not linear in u, so it has neither ``kernel`` nor ``state_space``.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ssmkit.layers.cache import ValueCache
from ssmkit.layers.checks import ATTUNED, SHAPES, FixedOption, check_choice
from ssmkit.layers.protocol import Capabilities, float32_core
from ssmkit.layers.registry import register
from ssmkit.layers.zoo import ZooEntry
from ssmkit.layers.s4 import S4
from ssmkit.layers.state import TensorSpec, exportable_state
from ssmkit.ops.backend import tracing
from ssmkit.ops.dplr import DPLRStepCoefficients, dplr_step, dplr_step_coefficients

LIQUID_KERNELS = ("pb", "kb")
CONTRACTIONS = (None, "tanh", "lecun")
_F64, _C128 = torch.float64, torch.complex128


@exportable_state
class LiquidS4State(NamedTuple):
    """The state of :class:`LiquidS4`.

    Attributes:
        ssm: (B, H, N/2) complex, S4's half state x.
        inputs: (B, H, P-1) the last P-1 inputs (oldest first; zeros before the sequence), P = ``liquid_degree``.
    """

    ssm: Tensor
    inputs: Tensor


def contract(v: Tensor, kind: str | None) -> Tensor:
    """f(v) of ``liquid_contract``: identity (None), tanh (``"tanh"``) or 1.7159 tanh(0.666 v) (``"lecun"``)."""
    if kind == "tanh":
        return torch.tanh(v)
    if kind == "lecun":
        if v.dtype == torch.float64:
            # the constants as 0-dim float64 tensors (the same bits as the Python floats in eager): torch 2.13's ONNX
            # exporter writes a Python float that multiplies a float64 tensor rounded to float32 (2.9e-8 relative
            # here). Only in float64: a 0-dim bfloat16/float16 tensor would round them, where a Python float enters
            # the kernel in float32
            outer, inner = (torch.tensor(c, dtype=v.dtype, device="cpu") for c in (1.7159, 0.666))  # scalars
            return outer * torch.tanh(inner * v)
        return 1.7159 * torch.tanh(0.666 * v)
    return v


def liquid_input(u: Tensor, past: Tensor, beta: Tensor, degree: int, kind: str | None) -> tuple[Tensor, Tensor]:
    """s_t = Σ_{p=2}^{P} β^{p-1} f(u_t u_{t-1} ... u_{t-p+1}) over a sequence (module docstring).

    Args:
        u: (B, L, H) input.
        past: (B, H, P-1) the inputs before u, oldest first.
        beta: (H,) β = 1ᵀ B̄.
        degree: P (``liquid_degree``).
        kind: f (``liquid_contract``).

    Returns:
        s (B, L, H) and the last P-1 inputs (B, H, P-1).
    """
    P, L = degree, u.shape[1]
    history = torch.cat([past.transpose(1, 2), u], dim=1)  # (B, P-1+L, H): u_t at index P-1+t
    product, s = u, torch.zeros_like(u)
    for p in range(2, P + 1):
        product = product * history[:, P - p : P - p + L]  # (B, L, H): times u_{t-p+1}
        s = s + beta ** (p - 1) * contract(product, kind)
    return s, history[:, L:].transpose(1, 2)  # (B, L, H), (B, H, P-1)


def liquid_input_step(u: Tensor, past: Tensor, beta: Tensor, degree: int, kind: str | None) -> tuple[Tensor, Tensor]:
    """s_t of :func:`liquid_input` for one step: u (B, H), past (B, H, P-1) -> s_t (B, H) and the next past."""
    product, s = u, torch.zeros_like(u)
    for p in range(2, degree + 1):
        product = product * past[..., degree - p]  # (B, H): times u_{t-p+1}
        s = s + beta ** (p - 1) * contract(product, kind)
    return s, torch.cat([past[..., 1:], u.unsqueeze(-1)], dim=-1)


def _check_degree(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"liquid_degree must be an int >= 2 (the highest degree of the input products); got {value!r}")


@register("liquid_s4")
class LiquidS4(S4):
    """Liquid-S4 (arXiv 2209.12951), causal: S4 plus the liquid terms of degrees 2..P (see the module docstring).

    Args:
        d_model: H, the number of channels (one SISO system each).
        d_state: N, the real-equivalent state size per channel (N/2 conjugate-pair modes); even, >= 2.
        l_max: the length S4's C̃ is attuned to (see :class:`ssmkit.layers.S4`).
        liquid_kernel: which liquid terms (default ``"pb"``, the paper's LRA recipes; the official class default None
            is plain S4, which is ``ssmkit.layers.S4``), one of
            ``"pb"`` -- polynomial of B̄: y += K_0 s_t, the Ā powers dropped (the paper's PB);
            ``"kb"`` -- K̄·B̄: y += K ⊛ s, every lag kept (the paper's KB).
        liquid_degree: P >= 2, the highest degree of the input products u^{(p)} (official default 2).
        liquid_contract: f applied to each product, one of
            None -- identity (official default);
            ``"tanh"`` -- tanh;
            ``"lecun"`` -- 1.7159 tanh(0.666 x) (the official constants).
        init: HiPPO matrix of the initialisation (``"legs"``, ``"legt"``, ``"lagt"``, ``"fout"``), as S4.
        dt_min, dt_max: range of the log-uniform initial step size Δ (per channel).
        n_ssm: number of independent copies of (Λ, P, B) shared over the channels (as S4).
        lr: learning rate of Δ, Λ, P, B (weight decay 0); ``None`` = the global lr, ``0.0`` = frozen.
        B_clip: bound on |Im B̃| at init (official 2.0), or None.
        device, dtype: of the parameters (dtype real: float32 or float64).
    """

    zoo = ZooEntry(
        paper='arXiv 2209.12951',
        structure='DPLR',
        parametrisation="S4's A = diag(Λ) - P P* plus the liquid term B̄ u_k 1ᵀ (input-dependent transition)",
        discretisation='bilinear, learned Δ per channel',
        time_varying=True,
        stable_by_construction=False,
        stability='the LTI part is Hurwitz (as S4); the transition Ā + B̄ u_k 1ᵀ can leave the unit disc for large inputs',
        step_cost='O(liquid order × H N)',
        sequence_cost='O(liquid order × (H N (L + log L) + H L log L)) kernels + FFT',
    )

    capabilities: ClassVar[Capabilities] = Capabilities(kernel=False, state_space=False, step=True)
    missing: ClassVar[dict[str, str]] = {
        "kernel": "its liquid terms are products of inputs, so its output is not one convolution of the input",
        "state_space": "its liquid terms are products of inputs, so it is not a linear time-invariant system",
    }
    backends: ClassVar[tuple[str, ...]] = ("reference", "fft")
    takes_intervals: ClassVar[bool] = False  # S4's irregular sampling has no liquid terms (module docstring);
    # the IrregularSampling mixin inherited from S4 refuses intervals for it

    # the liquid options, fixed at construction as S4's (checks.FixedOption): the trained parameters are
    # attuned to them, and liquid_degree shapes the state
    liquid_kernel = FixedOption(ATTUNED)
    liquid_degree = FixedOption(SHAPES)
    liquid_contract = FixedOption(ATTUNED)

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        l_max: int = 1024,
        liquid_kernel: str = "pb",
        liquid_degree: int = 2,
        liquid_contract: str | None = None,
        init: str = "legs",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        n_ssm: int | None = 1,
        lr: float | None = 1e-3,
        B_clip: float | None = 2.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_choice(liquid_kernel, LIQUID_KERNELS, "liquid_kernel")
        _check_degree(liquid_degree)
        check_choice(liquid_contract, CONTRACTIONS, "liquid_contract")
        super().__init__(
            d_model, d_state=d_state, l_max=l_max, init=init, dt_min=dt_min, dt_max=dt_max, n_ssm=n_ssm, lr=lr,
            bidirectional=False, B_clip=B_clip, device=device, dtype=dtype,
        )
        self.liquid_kernel = liquid_kernel
        self.liquid_degree = liquid_degree
        self.liquid_contract = liquid_contract
        self._beta_cache: ValueCache = ValueCache()  # β without a gradient, as S4's forward plan (value-keyed)

    # ------------------------------------------------------------------------------------------------------------
    # The liquid input

    def _liquid_input(self, u: Tensor, past: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`liquid_input` with this layer's degree and contraction."""
        return liquid_input(u, past, beta, self.liquid_degree, self.liquid_contract)

    def _liquid_input_step(self, u: Tensor, past: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`liquid_input_step` with this layer's degree and contraction."""
        return liquid_input_step(u, past, beta, self.liquid_degree, self.liquid_contract)

    @staticmethod
    def _impulse(coeffs: DPLRStepCoefficients, C_true: Tensor) -> tuple[Tensor, Tensor]:
        """K_0 = C_trueᵀ B̄ (H,) and β = 1ᵀ B̄ = 2 Re Σ_half B̄ (H,): one DPLR step from x = 0 with u = 1."""
        H, M = coeffs.R.shape
        one = torch.ones(1, H, dtype=coeffs.Y_inv.dtype, device=coeffs.R.device)  # (1, H)
        K0, B_bar = dplr_step(one, torch.zeros(1, H, M, dtype=coeffs.R.dtype, device=coeffs.R.device), coeffs, C_true)
        return K0[0], 2 * B_bar[0].real.sum(-1)  # (H,), (H,)

    def _beta(self) -> Tensor:
        """β = 1ᵀ B̄ (H,) float64 from the O(N) step coefficients, differentiable (no C_true: only B̄ is read)."""
        coeffs = dplr_step_coefficients(*self._ssm(_F64))  # O(N) per channel
        return self._impulse(coeffs, torch.zeros_like(coeffs.R))[1]  # (H,)

    # ------------------------------------------------------------------------------------------------------------
    # Forward and step

    def state_spec(self) -> LiquidS4State:
        """S4's half state (H, N/2) complex and the last P-1 inputs (H, P-1) real."""
        return LiquidS4State(super().state_spec(), TensorSpec((self.d_model, self.liquid_degree - 1), self.D.dtype))

    def _forward(self, x: Tensor, state: LiquidS4State | None, return_state: bool):
        backend = self._backend()
        with float32_core(x.device.type):
            u = x.to(self.D.dtype)  # (B, L, H)
            if backend == "reference":
                start = self.initial_state(u.shape[0]) if state is None else state
                return self._forward_by_steps(u, start, x.dtype, return_state)
            fft = "fft"
            ssm = None if state is None else state.ssm  # None: no initial-state kernel input
            past = u.new_zeros(u.shape[0], self.d_model, self.liquid_degree - 1) if state is None else state.inputs
            beta = self._beta() if tracing() else self._beta_cache.get_unless_grad(self.own_tensors(), self._beta)
            s, past = self._liquid_input(u, past, beta.to(u.dtype))  # (B, L, H), (B, H, P-1)
            if self.liquid_kernel == "kb":
                y, h, _ = self._convolve(u + s, ssm, return_state, fft)  # K ⊛ (u + s) + D (u + s)
                y = y - self.D * s
            else:
                y, h, K = self._convolve(u, ssm, return_state, fft)  # K ⊛ u + D u
                y = y + K[0, :, 0] * s  # K_0 s_t
        return y.to(x.dtype), (LiquidS4State(h, past) if return_state else None)

    def _compute_step_coefficients(self) -> tuple[DPLRStepCoefficients, Tensor, Tensor, Tensor]:
        """S4's step coefficients and C_true, then K_0 (H,) and β (H,): all float64/complex128."""
        coeffs, C_true = super()._compute_step_coefficients()
        return (coeffs, C_true, *self._impulse(coeffs, C_true))

    def _liquid_recur(self, u: Tensor, x: Tensor, past: Tensor, coeffs) -> tuple[Tensor, Tensor, Tensor]:
        """One liquid step in float64: u (B, H), x (B, H, N/2) complex, past (B, H, P-1) -> y (B, H), x', past'."""
        dplr, C_true, K0, beta = coeffs
        s, past = self._liquid_input_step(u, past, beta)
        D = self.D.to(_F64)
        if self.liquid_kernel == "kb":
            y, x = dplr_step(u + s, x, dplr, C_true)
            return y + D * u, x, past
        y, x = dplr_step(u, x, dplr, C_true)
        return y + D * u + K0 * s, x, past

    def _step(self, x_t: Tensor, state: LiquidS4State) -> tuple[Tensor, LiquidS4State]:
        with float32_core(x_t.device.type):
            y, h, past = self._liquid_recur(
                x_t.to(_F64), state.ssm.to(_C128), state.inputs.to(_F64), self._step_coefficients()
            )
        return y.to(x_t.dtype), LiquidS4State(h.to(state.ssm.dtype), past.to(state.inputs.dtype))

    def _forward_by_steps(self, u: Tensor, state: LiquidS4State, out_dtype: torch.dtype, return_state: bool):
        """The oracle forward of the "reference" backend: the liquid step over the sequence (as ``step``)."""
        coeffs = self._step_coefficients()
        h, past = state.ssm, state.inputs
        ys = []
        for t in range(u.shape[1]):
            y_t, h_t, past_t = self._liquid_recur(u[:, t].to(_F64), h.to(_C128), past.to(_F64), coeffs)
            h, past = h_t.to(h.dtype), past_t.to(past.dtype)
            ys.append(y_t)
        y = torch.stack(ys, dim=1).to(out_dtype)  # (B, L, H)
        return y, (LiquidS4State(h, past) if return_state else None)

    def extra_repr(self) -> str:
        return self._with_changed_options(
            f"d_model={self.d_model}, d_state={self.d_state}, l_max={self.l_max}, init={self.init!r}, "
            f"liquid_kernel={self.liquid_kernel!r}, liquid_degree={self.liquid_degree}, "
            f"liquid_contract={self.liquid_contract!r}"
        )
