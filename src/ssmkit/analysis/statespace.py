"""A bank of discrete-time LTI systems in the control convention, exported by LTI layers for analysis.

Deep SSM layers (S4, arXiv:2111.00396; S4D, arXiv:2206.11893; DSS, arXiv:2203.14343; S5, arXiv:2208.04933;
LRU, arXiv:2303.06349) are linear time-invariant maps between a static nonlinearity and the next: their linear
part is an ordinary discrete-time state-space system. `StateSpace` holds G such systems in the convention of
control textbooks and python-control,

    x[k+1] = A x[k] + B u[k],      y[k] = C x[k] + D u[k],

and offers what a control engineer asks of them: poles, transmission zeros, DC gain, frequency response,
stability, the H-infinity and H2 norms, Gramians, Hankel singular values and balanced truncation, simulation, and
conversion to scipy and python-control objects.

The SSM papers write the recurrence with the state already updated by the current input
(S4, arXiv:2111.00396, eq. 3): x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k. With ξ[k] := x_{k-1} this is
ξ[k+1] = Ā ξ[k] + B̄ u[k], y[k] = C Ā ξ[k] + (D + C B̄) u[k], so A = Ā, B = B̄, C' = C Ā, D' = D + C B̄
(`StateSpace.from_ssm`, `StateSpace.from_diagonal`).

Continuous time: a bank may also hold G continuous-time systems ẋ = A x + B u, y = C x + D u, with dt = 0 as in
python-control (`StateSpace.from_continuous`, `is_continuous`). `to_continuous` finds the continuous system whose
sampling gives a discrete bank exactly (zero-order hold by the principal matrix logarithm, or the inverse Tustin map)
and `to_discrete` samples it back. Poles are then in s, the frequency response is H(jω), and `to_scipy` / `to_control`
give ``scipy.signal.lti`` / ``control.ss(..., dt=0)``.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ssmkit.analysis import frequency, norms
from ssmkit.analysis.sampling import (prewarped_step, sample_hold_output, tustin_inverse, tustin_sample, zoh_logarithm,
                                       zoh_sample, _check_sampling_rule)
from ssmkit.utils import check_sampling_time, distinct_names

if TYPE_CHECKING:  # scipy.signal costs ~45 MiB: imported by `to_scipy` only, never by `import ssmkit`
    import scipy.signal

__all__ = ["StateSpace"]


def _as_array(x: Any, name: str) -> np.ndarray:
    """Copy a torch tensor or array-like into a float64 or complex128 numpy array (detach, cpu)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype == torch.bool:
            raise ValueError(f"{name} must be a real or complex numeric array; got dtype {t.dtype}")
        t = t.to(torch.complex128 if t.is_complex() else torch.float64)
        a = t.resolve_conj().resolve_neg().numpy()
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "fciu":
            raise ValueError(f"{name} must be a real or complex numeric array; got dtype {a.dtype}")
    return np.array(a, dtype=np.complex128 if np.iscomplexobj(a) else np.float64, copy=True)


def _check_dims(a: np.ndarray, name: str, letters: str, want: tuple[int | None, ...]) -> None:
    """Raise ``ValueError`` unless ``a.shape`` matches ``want`` (``None`` = any size >= 1), python-control style."""
    text = "(" + ", ".join("?" if w is None else str(w) for w in want) + ("," if len(want) == 1 else "") + ")"
    found = tuple(a.shape)
    if len(found) != len(want):
        dims = f"{len(want)} dimension" + ("" if len(want) == 1 else "s")
        raise ValueError(f"{name} must be {letters} = {text} ({dims}); got {found}")
    if any((w is None and s < 1) or (w is not None and s != w) for s, w in zip(found, want)):
        raise ValueError(f"{name} must be {letters} = {text}; got {found}")


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    """A torch tensor (detached) or a NumPy-convertible numeric array as a tensor; ``ValueError`` for anything else."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.from_numpy(np.asarray(value))
    except TypeError as err:  # strings, objects: numpy arrays torch cannot hold
        raise ValueError(f"{name} must be a numeric array or tensor; got {type(value).__name__} "
                         f"({np.asarray(value).dtype})") from err


def check_signal_names(kind: str, given: Sequence[str], count: int) -> list[str]:
    """``given`` checked as the names of a system's ``count`` inputs or outputs (python-control's ``inputs=`` /
    ``outputs=``): a list or tuple of ``count`` distinct non-empty strings (:func:`ssmkit.utils.distinct_names`).

    Args:
        kind: ``"inputs"`` or ``"outputs"`` (for the error).
        given: the names.
        count: how many the system has.

    Returns:
        the names as a list.

    Raises:
        ValueError: anything else, naming ``kind`` and ``count``.
    """
    if not distinct_names(given, count):
        raise ValueError(f"{kind} must be None or {count} distinct non-empty names, one per {kind[:-1]}; got "
                         f"{given!r}")
    return list(given)


class StateSpace:
    """A bank of G discrete-time LTI systems x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k] (or continuous-time
    ones, ẋ = A x + B u: `from_continuous`, `to_continuous`).

    System g has state x (n), input u (m) and output y (p): ``A[g]`` (n, n), ``B[g]`` (n, m), ``C[g]`` (p, n),
    ``D[g]`` (p, m), sampled every ``dt`` seconds. This is the convention of python-control and scipy.signal.

    A SISO bank (S4, S4D, DSS, EMA: one system per channel) has G = H, m = p = 1; a MIMO layer (S5, LRU)
    has G = 1, m = p = H. In ssmkit's batch-first layout ``(B, L, G*m)``, input channels g*m .. (g+1)*m - 1
    drive system g and output channels g*p .. (g+1)*p - 1 come from it.

    SSM-paper convention (S4, arXiv:2111.00396, eq. 3): x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k.
    It maps onto the control convention as A = Ā, B = B̄, C' = C Ā, D' = D + C B̄ (the control state x[k] is
    the paper's x_{k-1}); `from_ssm` and `from_diagonal` apply this mapping. Because the layer reads u_k before its
    output, a ZOH layer's system is z times scipy's ``cont2discrete(..., "zoh")`` of its continuous (λ, B, C) plus D
    (one sample ahead), and a bilinear one 2z/(z + 1) times Tustin's: same poles and DC gain
    (`ssmkit.ops.discretize`). A layer's own export has dt = 1 (time in samples); ``DeepWiener.state_space`` and
    ``analyze_model`` re-export it with the model's Ts. A layer's state h (from ``forward`` or ``step``) is the
    exported system's state x[k], as ``simulate``'s x0 (B, G, n) (python-control's ``X0`` is one row of it):
    ``view_as_real(h).reshape(B, G, n)`` for the complex diagonal layers (S4D, DSS, DLR, S5, LRU: real then imaginary
    part of each mode), ``cat([h.real, h.imag], -1)`` for S4, h itself for EMA (tests/analysis/test_control_export.py).

    Complex systems: A, B, C, D may be complex. Inputs are always real and the physical output is the real part,
    y[k] = Re(C x[k] + D u[k]), as in the layers (S4D's y = 2 Re(C x) + D u, LRU's y = Re(C h) + D u). Every
    method describes this physical system, so it agrees with the equivalent real realisation `to_real()`
    (2n real states): `simulate`, `frequency_response`, `dcgain`, `hinf_norm` and `zeros` give the same values
    for both. `poles()` returns the n eigenvalues of A; the physical system's poles are these and their complex
    conjugates (`to_real().poles()` lists all 2n). `to_scipy` and `to_control` need a real system.

    Matrices are stored as read-only numpy arrays (float64, or complex128 when any of A, B, C, D is complex),
    copied from the torch tensors (detached, moved to the CPU) or arrays given.

    Continuous time: `from_continuous` (or `to_continuous` of a discrete bank) holds ẋ = A x + B u, y = C x + D u
    instead, with ``dt`` = 0 and ``is_continuous`` True (python-control's dt = 0); the constructor itself takes a
    sampling time > 0 only. Every method describes the continuous system then: `poles` are in s, `stable_mask` asks
    Re s < 0, `dcgain` is H(0) = D − C A^{-1} B, `frequency_response` is H(jω), `hinf_norm` is the sup over ω of
    σ_max(H(jω)) (through the Tustin image, which keeps it), `to_scipy` gives ``scipy.signal.lti``, `to_control`
    ``control.ss(..., dt=0)`` and `to_discrete` samples the bank; `h2_norm`, `gram`, `hsvd` and `balred` solve the
    continuous Lyapunov equations (`ssmkit.analysis.reduction`); `simulate` is discrete-time only and says so.

    Args:
        A: (G, n, n) state matrix (real or complex).
        B: (G, n, m) input matrix (real or complex).
        C: (G, p, n) output matrix (real or complex).
        D: (G, p, m) feedthrough matrix (real or complex).
        dt: sampling time in seconds, a float > 0.
    """

    def __init__(self, A: Any, B: Any, C: Any, D: Any, dt: float = 1.0) -> None:
        self._A, self._B, self._C, self._D = self._validate(A, B, C, D, ("A", "B", "C", "D"))
        try:
            self._dt = check_sampling_time(dt)
        except ValueError as err:
            if isinstance(dt, numbers.Real) and not isinstance(dt, bool) and dt == 0:
                raise ValueError(f"{err} (dt = 0 is python-control's continuous time: "
                                 f"StateSpace.from_continuous(A, B, C, D))") from None
            raise
        self._schur: frequency.SchurForm | None = None

    @classmethod
    def from_continuous(cls, A: Any, B: Any, C: Any, D: Any) -> StateSpace:
        """The bank of G continuous-time systems ẋ = A x + B u, y = C x + D u (``dt`` = 0, as python-control's).

        Args:
            A: (G, n, n) state matrix (real or complex).
            B: (G, n, m) input matrix (real or complex).
            C: (G, p, n) output matrix (real or complex).
            D: (G, p, m) feedthrough matrix (real or complex).

        Returns:
            a continuous-time StateSpace (``is_continuous`` True, ``dt`` 0.0).
        """
        system = cls.__new__(cls)
        system._A, system._B, system._C, system._D = cls._validate(A, B, C, D, ("A", "B", "C", "D"))
        system._dt = 0.0
        system._schur = None
        return system

    def _same_time(self, A: Any, B: Any, C: Any, D: Any) -> StateSpace:
        """A bank of the given matrices in this bank's time domain (the same dt, or continuous)."""
        if self.is_continuous:
            return StateSpace.from_continuous(A, B, C, D)
        return StateSpace(A, B, C, D, self._dt)

    @staticmethod
    def _validate(A: Any, B: Any, C: Any, D: Any, names: Sequence[str]) -> tuple[np.ndarray, ...]:
        """Convert the four matrices, check their shapes against each other, and give them one dtype."""
        mats = [_as_array(M, nm) for M, nm in zip((A, B, C, D), names)]
        A_, B_, C_, D_ = mats
        nA, nB, nC, nD = names
        if A_.ndim == 3 and A_.shape[1] != A_.shape[2]:
            raise ValueError(f"{nA} must be (G, n, n) with square (n, n) blocks; got {tuple(A_.shape)}")
        _check_dims(A_, nA, "(G, n, n)", (None, None, None))
        G, n = A_.shape[0], A_.shape[1]
        # m, p >= 1 ("?" in the message): python-control allows no inputs or outputs; no analysis here does
        m = B_.shape[2] if B_.ndim == 3 and B_.shape[2] >= 1 else None
        _check_dims(B_, nB, "(G, n, m)", (G, n, m))
        m = B_.shape[2]
        p = C_.shape[1] if C_.ndim == 3 and C_.shape[1] >= 1 else None
        _check_dims(C_, nC, "(G, p, n)", (G, p, n))
        p = C_.shape[1]
        _check_dims(D_, nD, "(G, p, m)", (G, p, m))
        dtype = np.complex128 if any(np.iscomplexobj(M) for M in mats) else np.float64
        out = tuple(M.astype(dtype, copy=False) for M in mats)
        for M in out:
            M.setflags(write=False)  # read-only: the cached Schur form must stay valid
        return out

    # ----------------------------------------------------------------------------------------------------------
    # python-control names
    @property
    def A(self) -> np.ndarray:
        """(G, n, n) state matrices."""
        return self._A

    @property
    def B(self) -> np.ndarray:
        """(G, n, m) input matrices."""
        return self._B

    @property
    def C(self) -> np.ndarray:
        """(G, p, n) output matrices."""
        return self._C

    @property
    def D(self) -> np.ndarray:
        """(G, p, m) feedthrough matrices."""
        return self._D

    @property
    def dt(self) -> float:
        """Sampling time in seconds; 0.0 for a continuous-time bank (python-control's dt = 0)."""
        return self._dt

    @property
    def is_continuous(self) -> bool:
        """True for a bank of continuous-time systems ẋ = A x + B u (``dt`` = 0), False for a sampled one."""
        return self._dt == 0.0

    @property
    def nstates(self) -> int:
        """n, the number of states of each system (complex states for a complex bank)."""
        return self._A.shape[1]

    @property
    def ninputs(self) -> int:
        """m, the number of inputs of each system."""
        return self._B.shape[2]

    @property
    def noutputs(self) -> int:
        """p, the number of outputs of each system."""
        return self._C.shape[1]

    @property
    def nsystems(self) -> int:
        """G, the number of systems in the bank."""
        return self._A.shape[0]

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the matrices: float64 or complex128."""
        return self._A.dtype

    @property
    def is_complex(self) -> bool:
        """True when the matrices are complex (the physical output is then the real part)."""
        return np.iscomplexobj(self._A)

    def __len__(self) -> int:
        return self.nsystems

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> StateSpace:
        """The bank of the selected systems: an int gives a bank of one, a slice/index array/bool mask several."""
        G = self.nsystems
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            g = int(index)
            if not -G <= g < G:
                raise IndexError(f"system index {g} is out of range for a bank of G = {G} systems")
            index = slice(g % G, g % G + 1)
        elif not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype.kind not in "biu" or index.ndim != 1:
                raise TypeError(f"index must be an int, a slice, or a 1-D int/bool array; got {index!r}")
        sel = np.arange(G)[index]  # (G',) selected system indices
        if sel.size == 0:
            raise ValueError(f"index selects no system of the G = {G} in the bank; got {index!r}")
        return self._same_time(self._A[sel], self._B[sel], self._C[sel], self._D[sel])

    def __repr__(self) -> str:
        return (
            f"StateSpace(nsystems={self.nsystems}, nstates={self.nstates}, ninputs={self.ninputs}, "
            f"noutputs={self.noutputs}, dt={self.dt}, dtype={self.dtype})"
        )

    # ----------------------------------------------------------------------------------------------------------
    # constructors from the SSM-paper convention
    @classmethod
    def from_ssm(cls, A_bar: Any, B_bar: Any, C: Any, D: Any, dt: float = 1.0) -> StateSpace:
        """The bank for x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k (S4, arXiv:2111.00396, eq. 3).

        Returns A = Ā, B = B̄, C' = C Ā, D' = D + C B̄ (the control state x[k] is the paper's x_{k-1}).

        Args:
            A_bar: (G, n, n) discrete state matrix Ā (real or complex).
            B_bar: (G, n, m) discrete input matrix B̄ (real or complex).
            C: (G, p, n) output matrix (real or complex).
            D: (G, p, m) feedthrough matrix (real or complex).
            dt: sampling time in seconds, > 0.

        Returns:
            StateSpace with A (G, n, n), B (G, n, m), C (G, p, n), D (G, p, m).
        """
        Ab, Bb, C_, D_ = cls._validate(A_bar, B_bar, C, D, ("A_bar", "B_bar", "C", "D"))
        return cls(Ab, Bb, C_ @ Ab, D_ + C_ @ Bb, dt)  # (G, p, n), (G, p, m)

    @classmethod
    def from_diagonal(
        cls, A_bar: Any, B_bar: Any, C: Any, D: Any | None, dt: float = 1.0, conjugate_pairs: bool = True
    ) -> StateSpace:
        """The real SISO bank of diagonal SSMs x_k = Ā ⊙ x_{k-1} + B̄ u_k, y_k = Re(c Σ_n C_n x_{k,n}) + D u_k.

        S4D (arXiv:2206.11893, eq. 6 with its 2·Re output) and DSS/LRU (Re output) in the SSM-paper convention:
        c = 2 when ``conjugate_pairs`` (each complex mode stands for itself and its conjugate, as S4D keeps
        N/2 modes), else c = 1. Each mode Ā_n = a + ib becomes a 2×2 rotation block [[a, -b], [b, a]] acting on
        (Re x_n, Im x_n), with input column (Re B̄_n, Im B̄_n) and output row c·(Re C_n, -Im C_n); the mapping to
        the control convention (C' = C Ā, D' = D + C B̄) is then applied. The result is real with n = 2M states
        per system, so n = d_state for a layer that keeps M = d_state / 2 conjugate-pair modes.

        Args:
            A_bar: (H, M) complex discrete eigenvalues Ā (real accepted: b = 0).
            B_bar: (H, M) complex discrete input vector B̄.
            C: (H, M) complex output vector.
            D: (H,) real skip gain, or None for 0.
            dt: sampling time in seconds, > 0.
            conjugate_pairs: True for the 2·Re output (S4D), False for Re (DSS, LRU).

        Returns:
            Real StateSpace with G = H, n = 2M, m = p = 1.
        """
        Ab = _as_array(A_bar, "A_bar").astype(np.complex128)
        _check_dims(Ab, "A_bar", "(H, M)", (None, None))
        H, M = Ab.shape
        Bb = _as_array(B_bar, "B_bar").astype(np.complex128)
        _check_dims(Bb, "B_bar", "(H, M)", (H, M))
        Cc = _as_array(C, "C").astype(np.complex128)
        _check_dims(Cc, "C", "(H, M)", (H, M))
        Dd = np.zeros(H) if D is None else _as_array(D, "D")
        if np.iscomplexobj(Dd):
            raise ValueError(f"D must be real (H,) = ({H},); got a complex array")
        _check_dims(Dd, "D", "(H,)", (H,))
        c = 2.0 if conjugate_pairs else 1.0
        # 1. real 2x2 blocks of Ā, stacked (H, M, 2, 2) then placed on the block diagonal (H, 2M, 2M)
        a, b = Ab.real, Ab.imag  # (H, M)
        blocks = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2)  # (H, M, 2, 2)
        A = np.zeros((H, M, 2, M, 2))
        A[:, np.arange(M), :, np.arange(M), :] = blocks.transpose(1, 0, 2, 3)  # (M, H, 2, 2) diagonal blocks
        A = A.reshape(H, 2 * M, 2 * M)  # (H, 2M, 2M)
        # 2. B̄ as (Re, Im) per mode: (H, 2M, 1)
        B = np.stack([Bb.real, Bb.imag], -1).reshape(H, 2 * M, 1)  # (H, M, 2) -> (H, 2M, 1)
        # 3. C' = c·Re(C Ā ·) as a row (Re, -Im) of C_n Ā_n per mode: (H, 1, 2M)
        CA = Cc * Ab  # (H, M)
        C_out = c * np.stack([CA.real, -CA.imag], -1).reshape(H, 1, 2 * M)  # (H, M, 2) -> (H, 1, 2M)
        # 4. D' = D + c·Re(Σ_n C_n B̄_n): (H, 1, 1)
        D_out = (Dd + c * (Cc * Bb).sum(-1).real).reshape(H, 1, 1)  # (H,) -> (H, 1, 1)
        return cls(A, B, C_out, D_out, dt)

    @classmethod
    def from_diagonal_mimo(
        cls, A_bar: Any, B_bar: Any, C: Any, D: Any | None, dt: float = 1.0, conjugate_pairs: bool = True
    ) -> StateSpace:
        """The real MIMO system of a diagonal SSM x_k = Ā ⊙ x_{k-1} + B̄ u_k, y_k = Re(c C x_k) + D ⊙ u_k.

        S5 (arXiv:2208.04933, eq. 2-3, with its 2·Re output when ``conjugate_pairs``: c = 2) and LRU
        (arXiv:2303.06349, eq. 1, Re output: c = 1): one system driven by all H channels. Each mode Ā_m = a + ib
        becomes a 2×2 rotation block [[a, -b], [b, a]] on (Re x_m, Im x_m), with input rows (Re B̄_m, Im B̄_m) and
        output columns c·(Re C_m, -Im C_m); the mapping to the control convention (C' = C Ā, D' = D + C B̄) is
        then applied. The result is real with n = 2M states.

        Args:
            A_bar: (M,) complex discrete eigenvalues Ā (real accepted: b = 0).
            B_bar: (M, H) complex discrete input matrix B̄.
            C: (H, M) complex output matrix.
            D: (H,) real skip gains (a diagonal feedthrough), or None for 0.
            dt: sampling time in seconds, > 0.
            conjugate_pairs: True for the 2·Re output (S5), False for Re (LRU).

        Returns:
            Real StateSpace with G = 1, n = 2M, m = p = H.
        """
        Ab = _as_array(A_bar, "A_bar").astype(np.complex128)
        _check_dims(Ab, "A_bar", "(M,)", (None,))
        M = Ab.shape[0]
        Bb = _as_array(B_bar, "B_bar").astype(np.complex128)
        _check_dims(Bb, "B_bar", "(M, H)", (M, None))
        H = Bb.shape[1]
        Cc = _as_array(C, "C").astype(np.complex128)
        _check_dims(Cc, "C", "(H, M)", (H, M))
        Dd = np.zeros(H) if D is None else _as_array(D, "D")
        if np.iscomplexobj(Dd):
            raise ValueError(f"D must be real (H,) = ({H},); got a complex array")
        _check_dims(Dd, "D", "(H,)", (H,))
        c = 2.0 if conjugate_pairs else 1.0
        # 1. Ā as 2x2 rotation blocks on the diagonal: (2M, 2M)
        a, b = Ab.real, Ab.imag  # (M,)
        blocks = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2)  # (M, 2, 2)
        A = np.zeros((M, 2, M, 2))
        A[np.arange(M), :, np.arange(M), :] = blocks  # (M, 2, 2) diagonal blocks
        A = A.reshape(2 * M, 2 * M)  # (2M, 2M)
        # 2. B̄ as (Re, Im) rows per mode: (2M, H)
        B = np.stack([Bb.real, Bb.imag], 1).reshape(2 * M, H)  # (M, 2, H) -> (2M, H)
        # 3. C' = c·Re(C Ā ·) as columns (Re, -Im) of C_m Ā_m per mode: (H, 2M)
        CA = Cc * Ab  # (H, M)
        C_out = c * np.stack([CA.real, -CA.imag], -1).reshape(H, 2 * M)  # (H, M, 2) -> (H, 2M)
        # 4. D' = diag(D) + c·Re(C B̄): (H, H)
        D_out = np.diag(Dd) + c * (Cc @ Bb).real  # (H, H)
        return cls(A[None], B[None], C_out[None], D_out[None], dt)

    # ----------------------------------------------------------------------------------------------------------
    # realisations and converters
    def to_real(self) -> StateSpace:
        """An equivalent real realisation (2n states) of a complex bank whose output is the real part.

        With x = x_r + i x_i and real u: A_R = [[A_r, -A_i], [A_i, A_r]], B_R = [[B_r], [B_i]],
        C_R = [C_r, -C_i], D_R = Re D. A real bank is returned unchanged (the same object).

        Returns:
            Real StateSpace with A (G, 2n, 2n), B (G, 2n, m), C (G, p, 2n), D (G, p, m).
        """
        if not self.is_complex:
            return self
        A, B, C = self._A, self._B, self._C
        A_R = np.block([[A.real, -A.imag], [A.imag, A.real]])  # (G, 2n, 2n)
        B_R = np.concatenate([B.real, B.imag], axis=1)  # (G, 2n, m)
        C_R = np.concatenate([C.real, -C.imag], axis=2)  # (G, p, 2n)
        return self._same_time(A_R, B_R, C_R, self._D.real)

    def to_continuous(self, method: str = "zoh", hold: str = "previous",
                      prewarp_frequency: float | None = None) -> StateSpace:
        """The continuous-time bank whose sampling at ``dt`` by ``method`` gives this discrete bank exactly.

        Methods (each the inverse of scipy's ``cont2discrete`` and python-control's ``sample`` of that name):
            ``"zoh"`` (default) -- zero-order hold: [[A_c, B_c], [0, 0]] = logm([[A, B], [0, I]]) / dt, the
            principal matrix logarithm (`zoh_logarithm`; it holds at an eigenvalue 1, an integrator). Poles
            s = log(z)/dt with |Im s| < π/dt: a mode above the Nyquist frequency comes back aliased.
            ``"bilinear"`` -- the inverse Tustin map (`tustin_inverse`): with F = (A + I)^{-1},
            A_c = (2/dt)(A − I) F, B_c = (2/dt) F B, C_c = 2 C F, D_c = D − C F B. With ``prewarp_frequency``
            = ω (rad/s), the map over T_w = 2 tan(ω dt/2)/ω in place of dt (python-control's name and rule), so
            the continuous response at ω equals the discrete one at e^{jω dt} exactly.

        Holds (``"zoh"``: which input acts over the interval (t_{k-1}, t_k] before sample k; the words of
        ``ssmkit.sysid.from_arrays``' ``hold``):
            ``"previous"`` (default) -- u[k-1], each input held from its own sample until the next: the control
            convention (scipy, python-control, ``scipy.signal.lsim`` with ``interp=False``). Then C_c = C, D_c = D and
            y[k] = y(t_k) = C x(t_k) + D u[k] reads the state *before* u[k]'s interval.
            ``"sample"`` -- u[k], held over the interval that ends at sample k: the convention of ssmkit's models and
            records (``IORecord``; a layer's sample times, ``intervals=``). The state x(t_k) is then the one *after*
            u[k]'s interval, x(t_k) = A ξ[k] + B u[k] in this bank's state ξ, and y[k] = C_c x(t_k) + D_c u[k] with
            C_c = C A^{-1}, D_c = D − C A^{-1} B (`sample_hold_output`: an entry of D_c at the rounding level of that
            difference is 0, so a layer without a skip has D_c = 0 and a finite H2 norm). For a layer's export
            (C = C_paper Ā, D = D_paper + C_paper B̄; class docstring) this is the layer's own continuous system:
            C_c = C_paper, D_c = D_paper, as its ``continuous()`` (Λ, B) with its C and D, whatever ``dt``.

        A complex bank stays complex (complex logarithm; the output is still the real part), and converts where
        its real realisation `to_real` may not (an eigenvalue on the negative real axis).

        Args:
            method: ``"zoh"`` or ``"bilinear"``.
            hold: ``"previous"`` or ``"sample"`` (``"zoh"`` only).
            prewarp_frequency: None, or the frequency in rad/s, 0 < ω < π/dt, where the Tustin map is made exact
                (``"bilinear"`` only).

        Returns:
            a continuous-time StateSpace (``dt`` = 0) with A (G, n, n), B (G, n, m), C (G, p, n), D (G, p, m).

        Raises:
            ValueError: for a bank that is continuous already; with ``"zoh"``, for a system with an eigenvalue 0
                (a pure delay) or, in a real bank, one on the negative real axis (no real logarithm); with
                ``"bilinear"``, for an eigenvalue −1. The message names the system index and the eigenvalue. For a
                ``prewarp_frequency`` outside (0, π/dt) or with ``"zoh"``.
        """
        if self.is_continuous:
            raise ValueError("to_continuous needs a discrete-time bank; this one is continuous already (dt = 0)")
        _check_sampling_rule(method, hold)
        self._require_finite("to_continuous")
        step = prewarped_step(self._dt, method, prewarp_frequency)
        mats = [np.empty_like(M) for M in (self._A, self._B, self._C, self._D)]
        for g in range(self.nsystems):
            A, B, C, D = self._A[g], self._B[g], self._C[g], self._D[g]
            if method == "bilinear":
                mats[0][g], mats[1][g], mats[2][g], mats[3][g] = tustin_inverse(A, B, C, D, step, g)
                continue
            mats[0][g], mats[1][g] = zoh_logarithm(A, B, self._dt, g)
            if hold == "sample":  # C A^{-1}, D - C A^{-1} B: A is invertible (no eigenvalue 0, checked above)
                C, D = sample_hold_output(A, B, C, D)  # a residue of the difference at rounding level is 0
            mats[2][g], mats[3][g] = C, D
        return StateSpace.from_continuous(*mats)

    def to_discrete(self, dt: float, method: str = "zoh", hold: str = "previous",
                    prewarp_frequency: float | None = None) -> StateSpace:
        """The bank of this continuous-time one sampled every ``dt`` seconds by ``method``: the inverse of
        `to_continuous` (same methods and holds), as scipy's ``cont2discrete`` and python-control's ``sample``.

        ``"zoh"``: [[A, B], [0, I]] = exp(dt [[A_c, B_c], [0, 0]]) (`zoh_sample`); with ``hold="previous"``
        C = C_c, D = D_c, with ``hold="sample"`` C = C_c A, D = D_c + C_c B. ``"bilinear"``: `tustin_sample`, with
        ``prewarp_frequency`` = ω over T_w = 2 tan(ω dt/2)/ω (python-control's ``sample(..., prewarp_frequency=ω)``):
        the discrete response at e^{jω dt} equals the continuous one at ω exactly.

        Args:
            dt: the sampling time in seconds, > 0.
            method: ``"zoh"`` or ``"bilinear"``.
            hold: ``"previous"`` or ``"sample"`` (``"zoh"`` only).
            prewarp_frequency: None, or the frequency in rad/s, 0 < ω < π/dt, where the Tustin map is made exact
                (``"bilinear"`` only).

        Returns:
            a discrete-time StateSpace with A (G, n, n), B (G, n, m), C (G, p, n), D (G, p, m) and this ``dt``.

        Raises:
            ValueError: for a bank that is discrete already, a bad ``dt``, and with ``"bilinear"`` an eigenvalue
                s = 2/T (naming the system; T = dt, or T_w when prewarped); for a ``prewarp_frequency`` outside
                (0, π/dt) or with ``"zoh"``.
        """
        if not self.is_continuous:
            raise ValueError(f"to_discrete needs a continuous-time bank; this one is sampled already "
                             f"(dt = {self._dt}): to_continuous() first")
        dt = check_sampling_time(dt)
        _check_sampling_rule(method, hold)
        self._require_finite("to_discrete")
        step = prewarped_step(dt, method, prewarp_frequency)
        mats = [np.empty_like(M) for M in (self._A, self._B, self._C, self._D)]
        for g in range(self.nsystems):
            A_c, B_c, C_c, D_c = self._A[g], self._B[g], self._C[g], self._D[g]
            if method == "bilinear":
                mats[0][g], mats[1][g], mats[2][g], mats[3][g] = tustin_sample(A_c, B_c, C_c, D_c, step, g)
                continue
            A, B = zoh_sample(A_c, B_c, dt)
            mats[0][g], mats[1][g] = A, B
            mats[2][g], mats[3][g] = (C_c @ A, D_c + C_c @ B) if hold == "sample" else (C_c, D_c)
        return StateSpace(*mats, dt=dt)

    def to_scipy(self) -> list["scipy.signal.dlti | scipy.signal.lti"]:
        """One ``scipy.signal.dlti`` (a ``StateSpaceDiscrete``, with ``dt``) per system; for a continuous-time bank one
        ``scipy.signal.lti`` (a ``StateSpaceContinuous``).

        scipy's ``dlsim`` and ``lsim`` take and return signals with time on axis 0, ``(L, m)`` -> ``(L, p)``;
        ssmkit puts time on axis 1 of ``(B, L, H)``. ``lsim(..., interp=False)`` holds each input from its sample
        (`to_continuous`' ``hold="previous"``).

        Returns:
            list of G ``scipy.signal.StateSpaceDiscrete`` (``StateSpaceContinuous`` when continuous).
        """
        import scipy.signal

        self._require_real("to_scipy")
        if self.is_continuous:
            return [scipy.signal.lti(self._A[g], self._B[g], self._C[g], self._D[g]) for g in range(self.nsystems)]
        return [
            scipy.signal.dlti(self._A[g], self._B[g], self._C[g], self._D[g], dt=self._dt)
            for g in range(self.nsystems)
        ]

    def to_control(self, inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None) -> list[Any]:
        """One python-control ``StateSpace`` (discrete, ``dt`` set; continuous, ``dt`` = 0, for a continuous-time bank)
        per system; needs ``pip install control``.

        python-control's time responses (``forced_response``) take and return signals with time on the last
        axis, ``(m, L)`` -> ``(p, L)``; ssmkit puts time on axis 1 of ``(B, L, H)``. A SISO bank (one system per
        channel) becomes one block-diagonal MIMO system with ``control.append(*ss.to_control())``, whose input and
        output j are channel j (tests/analysis/test_control_export.py). ``to_scipy`` has no such names: scipy's
        ``dlti`` carries none.

        Args:
            inputs: the m input signals' names, given to every system (python-control's ``inputs=``, for
                ``control.interconnect`` by name; None: its defaults u[0] .. u[m-1]).
            outputs: the p output signals' names, given to every system (None: y[0] .. y[p-1]).

        Returns:
            list of G ``control.StateSpace``.
        """
        self._require_real("to_control")
        names = {}
        for kind, given, count in (("inputs", inputs, self.ninputs), ("outputs", outputs, self.noutputs)):
            if given is not None:
                names[kind] = check_signal_names(kind, given, count)
        try:
            import control
        except ImportError as err:
            raise ImportError(
                "StateSpace.to_control needs python-control: pip install control (or pip install ssmkit[control])"
            ) from err
        return [
            control.ss(self._A[g], self._B[g], self._C[g], self._D[g], self._dt, **names) for g in range(self.nsystems)
        ]

    def _require_finite(self, what: str, letters: str = "ABCD") -> None:
        """Raise ``ValueError`` when a matrix named in ``letters`` holds a NaN or inf, naming the matrix, the first
        such system and how many there are: LAPACK refuses such input with numpy's bare "Array must not contain infs
        or NaNs", which named neither the system nor the cause (a model whose parameters diverged).

        Args:
            what: what needs the finite matrices, for the message.
            letters: which of A, B, C, D it reads.
        """
        for letter in letters:
            M = getattr(self, "_" + letter)  # (G, rows, cols)
            bad = np.flatnonzero(~np.isfinite(M).reshape(M.shape[0], -1).all(axis=1))  # systems with a NaN or inf
            if bad.size:
                g = int(bad[0])
                value = M[g][~np.isfinite(M[g])].ravel()[0]
                more = f" (and {bad.size - 1} more of the G = {self.nsystems})" if bad.size > 1 else ""
                raise ValueError(f"{what} needs finite matrices; {letter} of system {g}{more} holds {value} (a model "
                                 f"whose parameters are not finite: a diverged training?; or a linearisation at a "
                                 f"point where the model is not finite)")

    def _require_real(self, what: str) -> None:
        if self.is_complex:
            raise ValueError(
                f"{what} needs a real system; this bank is complex (output = real part): call to_real() first"
            )

    # ----------------------------------------------------------------------------------------------------------
    # analysis
    def poles(self) -> np.ndarray:
        """Eigenvalues of each A (python-control ``poles``); for a complex bank their conjugates are poles too.

        Returns:
            (G, n) complex.

        Raises:
            ValueError: for a non-finite entry of A, naming the system.
        """
        self._require_finite("poles", "A")
        return np.linalg.eigvals(self._A).astype(np.complex128)

    def stable_mask(self) -> np.ndarray:
        """Whether each system is asymptotically stable: every pole strictly inside the unit circle (|z| < 1), or for
        a continuous-time bank strictly in the left half-plane (Re s < 0).

        Returns:
            (G,) bool.
        """
        if self.is_continuous:
            return np.all(self.poles().real < 0.0, axis=1)
        return np.all(np.abs(self.poles()) < 1.0, axis=1)

    def is_stable(self) -> bool:
        """True when every system of the bank is asymptotically stable (all poles with |z| < 1; Re s < 0 when
        continuous)."""
        return bool(self.stable_mask().all())

    def zeros(self) -> list[np.ndarray]:
        """Transmission (invariant) zeros of each square system: finite z where the Rosenbrock matrix is singular.

        The zeros are the finite generalised eigenvalues of the pencil [[A, B], [C, D]] - z [[I, 0], [0, 0]]
        (Emami-Naeini & Van Dooren, Automatica 18(4), 1982); for a SISO system these are the roots of the
        numerator of C (zI - A)^{-1} B + D, since det [[zI - A, -B], [C, D]] = det(zI - A) H(z). A generalised
        eigenvalue α/β with |β| <= 100 (n + m) eps is taken as infinite (QZ keeps ‖E‖ = 1, so such a β is
        rounding noise); zeros of extreme modulus (~1/eps) may be dropped with them. Non-minimal realisations
        also report their
        decoupling zeros (an uncontrollable or unobservable mode's eigenvalue), as python-control does. A
        complex bank reports the zeros of its physical real-part system (`to_real`). Systems whose transfer
        matrix is singular for every z (e.g. C = 0, D = 0) have no defined zeros; the result is then arbitrary.

        Returns:
            list of G complex arrays (each of length <= n; zeros of system g in any order).
        """
        import scipy.linalg

        self._require_finite("zeros")
        if self.is_complex:
            return self.to_real().zeros()
        n, m, p = self.nstates, self.ninputs, self.noutputs
        if m != p:
            raise NotImplementedError(f"zeros() needs square systems (m == p); got m = {m}, p = {p}")
        E = np.zeros((n + m, n + m))
        E[:n, :n] = np.eye(n)
        out = []
        for g in range(self.nsystems):
            M = np.block([[self._A[g], self._B[g]], [self._C[g], self._D[g]]])  # (n + m, n + m)
            alpha, beta = scipy.linalg.eigvals(M, E, homogeneous_eigvals=True)  # (n + m,) each
            finite = np.abs(beta) > 100 * (n + m) * np.finfo(np.float64).eps
            out.append((alpha[finite] / beta[finite]).astype(np.complex128))
        return out

    def dcgain(self) -> np.ndarray:
        """Steady-state gain C (I - A)^{-1} B + D of each system (the real part for a complex bank); for a
        continuous-time bank H(0) = C (-A)^{-1} B + D.

        A system with a pole at z = 1 (s = 0 when continuous) exactly (I - A, or A, singular) gets inf, as in
        python-control.

        Returns:
            (G, p, m) float64.
        """
        G, n = self.nsystems, self.nstates
        I_minus_A = -self._A if self.is_continuous else np.eye(n) - self._A  # (G, n, n)
        out = np.full((G, self.noutputs, self.ninputs), np.inf)
        for g in range(G):
            try:
                X = np.linalg.solve(I_minus_A[g], self._B[g])  # (n, m)
            except np.linalg.LinAlgError:
                continue
            out[g] = (self._C[g] @ X + self._D[g]).real  # (p, m)
        return out

    def frequency_response(self, omega: Any) -> np.ndarray:
        """Frequency response H(z) = C (zI - A)^{-1} B + D at z = exp(1j · omega · dt), omega in rad/s; for a
        continuous-time bank at s = 1j · omega (python-control's convention for ``dt`` = 0).

        This is python-control's convention for discrete systems (``sys.frequency_response(omega)``, which
        returns an object whose ``.complex`` is this array per system; its Nyquist frequency is pi / dt and
        H is 2 pi / dt periodic in omega). For a complex bank it is the response of the physical real-part
        system, (H(z) + conj(H(conj z))) / 2, which equals `to_real().frequency_response(omega)`.
        Computed from a complex Schur form A = Z T Z^H per system and triangular solves with (zI - T)
        (backward stable; no inverse, no eigenvector basis); when T is diagonal to rounding (normal A, e.g.
        every `from_diagonal` bank) the solve reduces to the modal sum Σ_n (C Z)_n (Z^H B)_n / (z - T_nn)
        (`ssmkit.analysis.frequency`; the Schur form is computed once per bank).

        Args:
            omega: (W,) real frequencies in rad/s (a scalar gives W = 1).

        Returns:
            (G, p, m, W) complex.
        """
        w = np.atleast_1d(_as_array(omega, "omega"))
        if np.iscomplexobj(w) or w.ndim != 1:
            raise ValueError(f"omega must be a real 1-D array (W,) in rad/s; got {w.dtype} {tuple(w.shape)}")
        if not np.isfinite(w).all():  # e^{j·inf·dt} is NaN: a silent NaN response
            raise ValueError(f"omega must be finite frequencies in rad/s; got {w[~np.isfinite(w)][0]} at index "
                             f"{int(np.flatnonzero(~np.isfinite(w))[0])}")
        points = 1j * w if self.is_continuous else np.exp(1j * w * self._dt)  # (W,) s or z
        return self._physical(np.broadcast_to(points, (self.nsystems, w.size)))  # (G, W) -> (G, p, m, W)

    def hinf_norm(self, method: str = "hamiltonian", tol: float = 1e-10) -> np.ndarray:
        """H-infinity norm of each system: sup over θ in [0, π] of σ_max(H(e^{jθ})); inf if not stable.

        Methods:
            ``"hamiltonian"`` (default) -- certified: the bilinear (Cayley) map to continuous time and the
            Hamiltonian imaginary-eigenvalue test in the two-step iteration of Bruinsma & Steinbuch
            (`ssmkit.analysis.hinf`). The value γ_lo is attained and the norm is certified ≤ (1 + 2 tol) γ_lo
            (`hinf_bounds` returns both ends).
            ``"grid"`` -- a dense grid (512 uniform angles plus, for every pole λ, the angles
            |arg λ| + k (1 - |λ|), k in {0, ±½, ±1, ±2}, folded into [0, π]) refined by golden-section search
            around the 4 largest local maxima (`ssmkit.analysis.norms.hinf_norm`): a lower bound, exact to float
            precision times the peak's conditioning when the peak lies in one of those brackets (~1e-15 relative for 1 - |λ| = 0.1,
            ~1e-12 for 1e-4, ~1e-9 for 1e-6), but not certified.
        A system with any pole on or outside the unit circle gets inf, even when that mode is uncontrollable or
        unobservable. A complex bank uses its physical (real-part) response. A continuous-time bank: the sup over
        ω >= 0 of σ_max(H(jω)), computed per system on its Tustin image at dt = 2/ω₀ (``to_discrete(2 / ω₀,
        "bilinear")``, ω₀ = √(min |s| max |s|) over its poles: z = (1 + s/ω₀)/(1 - s/ω₀) maps jω onto the unit circle,
        so the norm is the same, and keeps the poles off it at any time scale); inf unless every pole has Re s < 0.

        Args:
            method: ``"hamiltonian"`` or ``"grid"``.
            tol: relative width of the certified bracket (``"hamiltonian"`` only), > 0.

        Returns:
            (G,) float64.
        """
        self._require_finite("hinf_norm")
        if self.is_continuous:
            if method not in ("hamiltonian", "grid"):
                raise ValueError(f"method must be one of ('hamiltonian', 'grid'); got {method!r}")
            if method == "hamiltonian":
                from ssmkit.analysis import hinf

                hinf.check_tolerance(tol)  # also when no system is stable, as for a discrete bank
            return self._on_tustin_image(lambda image: image.hinf_norm(method, tol), ())
        if method == "grid":
            out = np.full(self.nsystems, np.inf)
            stable = np.flatnonzero(self.stable_mask())
            if stable.size:
                sub = self[stable]
                out[stable] = norms.hinf_norm(sub._sigma_max, sub.poles())
            return out
        if method != "hamiltonian":
            raise ValueError(f"method must be one of ('hamiltonian', 'grid'); got {method!r}")
        return self.hinf_bounds(tol)[:, 0]

    def hinf_bounds(self, tol: float = 1e-10) -> np.ndarray:
        """Certified bracket [γ_lo, γ_hi] of each system's H-infinity norm (inf, inf for unstable systems).

        γ_lo = σ_max(H(e^{jθ})) at some θ (attained); γ_hi = (1 + 2 tol) γ_lo, for which the Hamiltonian of the
        Cayley-transformed system has no imaginary eigenvalue (`ssmkit.analysis.hinf.hinf_bracket`), or
        (1 + 2 tol 4^k) γ_lo, wider but still certified, for poles within about 1e-5 of the unit circle (relative
        width ~5e-8 at 1 - |λ| = 1e-6, ~2e-4 at 1e-8, ~3e-3 at 1e-9 and 1e-10).

        A continuous-time bank is bracketed on its Tustin image at dt = 2/ω₀ (as `hinf_norm`; the frequency is
        ω = ω₀ tan(θ/2)).

        Args:
            tol: relative width of the bracket, > 0.

        Returns:
            (G, 2) float64: γ_lo, γ_hi per system.
        """
        from ssmkit.analysis import hinf

        hinf.check_tolerance(tol)  # also when no system is stable (nothing would read it)
        self._require_finite("hinf_bounds")
        if self.is_continuous:
            return self._on_tustin_image(lambda image: image.hinf_bounds(tol), (2,))
        real = self.to_real()
        out = np.full((self.nsystems, 2), np.inf)
        for g in np.flatnonzero(self.stable_mask()):
            sub = real[int(g)]
            gain = lambda theta, sub=sub: sub._sigma_max(theta[None])[0]  # noqa: E731  (W,) -> (W,)
            out[g] = hinf.hinf_bracket(real.A[g], real.B[g], real.C[g], real.D[g], gain, tol)
        return out

    def _on_tustin_image(self, norm: Any, shape: tuple[int, ...]) -> np.ndarray:
        """``norm`` of the Tustin image of each stable system of a continuous bank, inf for the others: (G, *shape).

        System g is mapped at dt = 2/ω₀ with ω₀ = √(min |s| · max |s|) over its poles, z = (1 + s/ω₀)/(1 − s/ω₀):
        jω -> e^{jθ} with ω = ω₀ tan(θ/2) for any ω₀ > 0, so the image keeps the H∞ norm, and ω₀ at the poles' scale
        keeps them away from the unit circle. (At a fixed dt = 2, ω₀ = 1, a lightly damped pair at 10⁶ rad/s lies
        within 2e-9 of the circle, and the norm and its certified bracket erred by 8e-8 relative: the bracket missed
        the closed form; a pair at 10⁻⁶ rad/s widened the bracket to 3e-3.)"""
        out = np.full((self.nsystems, *shape), np.inf)
        stable = np.flatnonzero(self.stable_mask())
        if stable.size:  # Re s < 0: no eigenvalue at s = ω₀ = 2/dt, so the map exists
            size = np.abs(self.poles()[stable])  # (G', n): every |s| > 0
            omega0 = np.sqrt(size.min(1)) * np.sqrt(size.max(1))  # (G',) no under/overflow of the product
            images = [tustin_sample(self._A[g], self._B[g], self._C[g], self._D[g], 2.0 / w, int(g))
                      for g, w in zip(stable, omega0)]
            # one bank of the images (each at its own dt): the norm of a sampled bank does not depend on its dt
            out[stable] = norm(StateSpace(*(np.stack([image[k] for image in images]) for k in range(4)), dt=1.0))
        return out

    def h2_norm(self) -> np.ndarray:
        """H2 norm of each system, √(Σ_k ‖g_k‖_F²) over its impulse response g_0 = D, g_k = C A^{k-1} B; inf if not
        stable (`ssmkit.analysis.reduction.h2_norm`: √tr(D Dᵀ + C Wc Cᵀ); python-control's ``norm(sys, 2)``).
        Continuous-time bank: (∫_0^∞ ‖C e^{At} B‖_F² dt)^{1/2} = √tr(C Wc Cᵀ), inf when not Hurwitz stable or when
        D ≠ 0 (the impulse response then holds D δ(t); python-control returns inf too, with a warning).

        Returns:
            (G,) float64.
        """
        from ssmkit.analysis import reduction

        return reduction.h2_norm(self)

    def gram(self, kind: str = "c") -> np.ndarray:
        """Controllability (``"c"``: Wc = Σ A^k B Bᵀ Aᵀ^k) or observability (``"o"``: Wo = Σ Aᵀ^k Cᵀ C A^k) Gramian
        of each system, as python-control's ``gram(sys, kind)`` (which needs slycot); of `to_real()` for a complex
        bank. Raises ``ValueError`` for a system that is not Schur stable. Continuous-time bank: the solutions of
        A Wc + Wc Aᵀ + B Bᵀ = 0 and Aᵀ Wo + Wo A + Cᵀ C = 0, for Hurwitz-stable systems (every pole Re s < 0).

        Args:
            kind: ``"c"`` or ``"o"``.

        Returns:
            (G, n, n) float64 (n of the real realisation).
        """
        from ssmkit.analysis import reduction

        if kind not in ("c", "o"):
            raise ValueError(f"kind must be 'c' (controllability) or 'o' (observability); got {kind!r}")
        return reduction.gramians(self)[0 if kind == "c" else 1]

    def hsvd(self) -> np.ndarray:
        """Hankel singular values σ_1 ≥ … ≥ σ_n of each system (python-control's ``hsvd``, continuous time only
        there): how many states matter; balanced truncation to r states errs by at most 2 Σ_{i>r} σ_i in H∞.
        Of `to_real()` for a complex bank; ``ValueError`` for a system that is not Schur stable (continuous-time
        bank: Hurwitz stable, from its continuous Gramians; the Tustin map `to_discrete(dt, "bilinear")` keeps the values).

        Returns:
            (G, n) float64, decreasing.
        """
        from ssmkit.analysis import reduction

        return reduction.hankel_singular_values(self)

    def balred(self, order: int) -> StateSpace:
        """Balanced truncation of every system to ``order`` states (python-control's ``balred(sys, order)``, which
        needs slycot): stable, with ‖G − G_r‖_∞ ≤ 2 Σ_{i>r} σ_i (`hsvd`); `ssmkit.analysis.reduction`.

        A continuous-time bank is reduced in continuous time (its Gramians; Hurwitz-stable systems only) and the
        result is continuous and balanced (Gramians diag(σ_1, …, σ_r)).

        Args:
            order: r, 1 <= r <= n (of the real realisation), within every system's numerical order.

        Returns:
            a real StateSpace with A (G, r, r), B (G, r, m), C (G, p, r), the same D and dt (continuous for a
            continuous bank).
        """
        from ssmkit.analysis import reduction

        return reduction.balanced_truncation(self, order)

    # ----------------------------------------------------------------------------------------------------------
    # frequency-domain internals
    def _schur_form(self) -> frequency.SchurForm:
        """The complex Schur form of every system (`frequency.schur_form`), computed once (A, B, C are read-only)."""
        if self._schur is None:
            self._require_finite("the frequency response", "A")  # a NaN in B, C or D only makes H NaN
            self._schur = frequency.schur_form(self._A, self._B, self._C)
        return self._schur

    def _transfer(self, z: np.ndarray) -> np.ndarray:
        """C (zI - A)^{-1} B + D of each system g at its own points z (G, W), no real part taken -> (G, p, m, W)."""
        return frequency.schur_transfer(self._schur_form(), self._D, z)

    _triangular = staticmethod(frequency.triangular_transfer)  # Ct (zI - T)^{-1} Bt, kept here for its tests

    def _physical(self, z: np.ndarray) -> np.ndarray:
        """Transfer of the physical system at z (G, W): H(z), or (H(z) + conj H(conj z)) / 2 if complex."""
        if not self.is_complex:
            return self._transfer(z)
        return frequency.physical_transfer(self._schur_form(), self._D, z)

    def _sigma_max(self, theta: np.ndarray) -> np.ndarray:
        """Largest singular value of the physical H(e^{jθ}) for θ (G, W) per system -> (G, W)."""
        return norms.sigma_max(self._physical(np.exp(1j * theta)))

    # ----------------------------------------------------------------------------------------------------------
    # time domain
    def simulate(self, u: Any, x0: Any | None = None, return_state: bool = False) -> Any:
        """Output of the bank for input u: x[k+1] = A x[k] + B u[k], y[k] = Re(C x[k] + D u[k]), x[0] = x0.

        A float64 (complex128 state for a complex bank) torch loop over time with batched matmuls: the test
        oracle for the systems that layers export. Time is axis 1 (ssmkit's batch-first layout); scipy's
        ``dlsim`` puts it on axis 0 and python-control's ``forced_response`` on the last axis.

        Args:
            u: (B, L, G*m) real input (torch or numpy); channels g*m .. (g+1)*m - 1 drive system g.
            x0: (B, G, n) initial state (complex for a complex bank), or None for zeros.
            return_state: also return the state after the last input, x[L].

        Returns:
            y (B, L, G*p) float64 torch tensor, on u's device when u is a torch tensor (else on the CPU);
            with ``return_state``, the pair (y, x[L]) with x[L] (B, G, n) float64 (complex128 if complex).
        """
        if self.is_continuous:
            raise ValueError("simulate is discrete-time only; this bank is continuous (dt = 0): to_discrete(dt)"
                             ".simulate(u) holds each input over its sample (ZOH), or scipy.signal.lsim on to_scipy()")
        G, n, m, p = self.nsystems, self.nstates, self.ninputs, self.noutputs
        dev = u.device if isinstance(u, torch.Tensor) else torch.device("cpu")
        ut = _as_tensor(u, "u")
        if ut.is_complex() or not (ut.is_floating_point() or ut.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"u must be a real floating (B, L, G*m) array; got dtype {ut.dtype}")
        if ut.dim() != 3 or ut.shape[2] != G * m or ut.shape[0] < 1 or ut.shape[1] < 1:
            raise ValueError(f"u must be (B, L, G*m) = (?, ?, {G * m}) with B, L >= 1; got {tuple(ut.shape)}")
        Bsz, L = ut.shape[0], ut.shape[1]
        sdt = torch.complex128 if self.is_complex else torch.float64
        A, Bm, C, D = (torch.tensor(M, device=dev) for M in (self._A, self._B, self._C, self._D))  # copies
        # time-major, batch last, so that every step is one batched matmul over the G systems
        us = ut.to(dev, torch.float64).reshape(Bsz, L, G, m).permute(1, 2, 3, 0).to(sdt)  # (L, G, m, B)
        if x0 is None:
            x = torch.zeros(G, n, Bsz, dtype=sdt, device=dev)  # (G, n, B)
        else:
            xt = _as_tensor(x0, "x0")
            if not (xt.is_floating_point() or xt.is_complex() or xt.dtype in (torch.int32, torch.int64)):
                raise ValueError(f"x0 must be a numeric (B, G, n) array; got dtype {xt.dtype}")
            if xt.is_complex() and not self.is_complex:
                raise ValueError(f"x0 must be real for a real system; got dtype {xt.dtype}")
            if tuple(xt.shape) != (Bsz, G, n):
                raise ValueError(f"x0 must be (B, G, n) = ({Bsz}, {G}, {n}); got {tuple(xt.shape)}")
            x = xt.to(dev, sdt).permute(1, 2, 0).contiguous()  # (B, G, n) -> (G, n, B)
        ys = []
        for k in range(L):
            uk = us[k]  # (G, m, B)
            ys.append(torch.bmm(C, x) + torch.bmm(D, uk))  # (G, p, n) @ (G, n, B) -> (G, p, B)
            x = torch.bmm(A, x) + torch.bmm(Bm, uk)  # (G, n, B)
        y = torch.stack(ys, 0).real.permute(3, 0, 1, 2).reshape(Bsz, L, G * p)  # (L, G, p, B) -> (B, L, G*p)
        y = y.to(torch.float64).contiguous()
        x = x.permute(2, 0, 1)  # (G, n, B) -> (B, G, n)
        if return_state:
            return y, x.contiguous()
        return y
