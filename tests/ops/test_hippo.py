"""HiPPO matrices, their NPLR form, and the S4D / DSS inits (ssmkit.ops.hippo)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssmkit.ops.hippo import (
    MEASURES,
    dss_eigenvalues,
    nplr,
    rank_correction,
    s4d_eigenvalues,
    s4d_input_matrix,
    s5_eigen,
    transition,
)
from tests.conftest import rel_err

C128 = torch.complex128
REAL_PART = {"legs": -0.5, "legt": 0.0, "lagt": 0.0, "fout": 0.0}
RANK = {"legs": 1, "legt": 2, "lagt": 1, "fout": 1}
s3, s5, s15 = math.sqrt(3), math.sqrt(5), math.sqrt(15)


def test_legs_N3_by_hand():
    A, B = transition("legs", 3)
    assert A.dtype == B.dtype == torch.float64
    assert torch.allclose(A, torch.tensor([[-1, 0, 0], [-s3, -2, 0], [-s5, -s15, -3]], dtype=torch.float64))
    assert torch.allclose(B, torch.tensor([1, s3, s5], dtype=torch.float64))
    assert torch.allclose(rank_correction("legs", 3), torch.tensor([[0.5, 1.5, 2.5]], dtype=torch.float64).sqrt())


def test_other_measures_by_hand():
    # LegT (halved): A_nk = -1/2 R_n R_k (1 if n >= k else (-1)^(n-k)), B = R/2.
    A, B = transition("legt", 3)
    want = -0.5 * torch.tensor([[1, -s3, s5], [s3, 3, -s15], [s5, s15, 5]], dtype=torch.float64)
    assert torch.allclose(A, want) and torch.allclose(B, 0.5 * torch.tensor([1, s3, s5], dtype=torch.float64))
    P = rank_correction("legt", 3)  # row 0 on odd n, row 1 on even n, both sqrt(2n+1)/sqrt(2)
    assert torch.allclose(P, torch.tensor([[0, s3, 0], [1, 0, s5]], dtype=torch.float64) / math.sqrt(2))
    # LagT: 1/2 I - tril(ones) including the diagonal.
    A, B = transition("lagt", 3)
    assert torch.equal(A, torch.tensor([[-0.5, 0, 0], [-1, -0.5, 0], [-1, -1, -0.5]], dtype=torch.float64))
    assert torch.equal(B, torch.ones(3, dtype=torch.float64))
    # FouT N=4: index 0 constant, index 1 dead, block (2, 3) rotates at pi.
    A, B = transition("fout", 4)
    r2 = math.sqrt(2)
    want = torch.tensor([[-1, 0, -r2, 0], [0, 0, 0, 0], [-r2, 0, -2, -math.pi], [0, 0, math.pi, 0]])
    assert torch.allclose(A, want.to(torch.float64))
    assert torch.allclose(B, torch.tensor([1, 0, r2, 0], dtype=torch.float64))
    assert torch.equal(rank_correction("fout", 4), B[None])


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [4, 7, 64])
def test_normal_part_structure(measure, N):
    if measure == "fout" and N % 2:
        pytest.skip("fout needs even N")
    A, _ = transition(measure, N)
    P = rank_correction(measure, N)
    assert P.shape == (RANK[measure], N)
    K = A + P.T @ P - REAL_PART[measure] * torch.eye(N, dtype=torch.float64)
    # A + sum PP^T = c I + skew: exact up to float64 rounding of the sqrt products (entries up to ~2N).
    assert float((K + K.T).abs().max()) <= 1e-12 * float(A.abs().max())


def test_legt_needs_rank_two():
    A, _ = transition("legt", 16)
    P = rank_correction("legt", 16)
    K = A + torch.outer(P.sum(0), P.sum(0))  # one combined rank-1 term is not enough
    assert float((K + K.T).abs().max()) > 1.0


def _full(measure, N):
    r = nplr(measure, N, B_clip=None)
    V_f = torch.cat([r.V, r.V.conj()], dim=1)  # (N, N)
    Lambda_f = torch.cat([r.Lambda, r.Lambda.conj()])  # (N,)
    return r, V_f, Lambda_f


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [2, 8, 64])
def test_nplr_reconstruction(measure, N):
    A, B = transition(measure, N)
    P = rank_correction(measure, N)
    r, V_f, Lambda_f = _full(measure, N)
    M = N // 2
    assert r.Lambda.shape == (M,) and r.B.shape == (M,) and r.V.shape == (N, M) and r.P.shape == (RANK[measure], M)
    assert r.Lambda.dtype == r.P.dtype == r.B.dtype == r.V.dtype == C128
    # Tolerances: float64 eigendecomposition of a matrix with entries up to ~2N; measured <= 8e-14.
    assert rel_err(V_f.conj().T @ V_f, torch.eye(N, dtype=C128)) <= 1e-10  # unitary
    P_f = P.to(C128) @ V_f.conj()  # (r, N) = V_f* P per row
    assert rel_err(P_f, torch.cat([r.P, r.P.conj()], dim=1)) <= 1e-10
    inner = torch.diag(Lambda_f) - torch.einsum("ri,rj->ij", P_f, P_f.conj())  # (N, N)
    assert rel_err(V_f @ inner @ V_f.conj().T, A.to(C128)) <= 1e-10
    assert rel_err(2 * (r.V @ r.B).real, B) <= 1e-10
    assert rel_err(2 * (r.V @ r.P.T).real.T, P) <= 1e-10
    assert torch.all(r.Lambda.real == REAL_PART[measure])
    assert torch.all(r.Lambda.imag <= 0)


@pytest.mark.parametrize("measure", MEASURES)
def test_nplr_phase_convention(measure):
    V = nplr(measure, 32).V
    first = (V.abs() > 1e-9).to(torch.int8).argmax(dim=0)
    pivot = V[first, torch.arange(V.shape[1])]
    assert torch.all(pivot.imag.abs() <= 1e-15) and torch.all(pivot.real > 0)


def test_nplr_legs_clip_counts():
    # Notes (official code, LAPACK phase): 11 of 32 at N=64, 22 of 64 at N=128; max |Im B~| 40.8, Re B~ <= 0.53.
    for N, count in [(64, 11), (128, 22)]:
        raw = nplr("legs", N, B_clip=None).B
        clipped = nplr("legs", N).B
        assert int((raw.imag.abs() > 2).sum()) == count
        assert int((raw != clipped).sum()) == count
        assert torch.equal(clipped.real, raw.real) and float(clipped.imag.abs().max()) == 2.0
    raw = nplr("legs", 64, B_clip=None).B
    assert abs(float(raw.imag.abs().max()) - 40.75) < 0.01 and float(raw.real.abs().max()) < 0.53
    # The clip does not depend on the sign of eigh's vectors: LAPACK's own output gives the same counts.
    A, B = transition("legs", 64)
    K = A + rank_correction("legs", 64).T @ rank_correction("legs", 64) + 0.5 * torch.eye(64, dtype=torch.float64)
    _, V = torch.linalg.eigh(-1j * K.to(C128))
    lapack_B = V[:, :32].conj().T @ B.to(C128)
    assert rel_err(lapack_B.abs(), raw.abs()) <= 1e-10


def test_nplr_fout_zero_mode():
    r = nplr("fout", 8)
    assert r.Lambda[-1] == 0
    want = torch.zeros(8, dtype=C128)
    want[0], want[1] = 2**-0.5, 1j * 2**-0.5
    assert rel_err(r.V[:, -1], want) <= 1e-15  # only the phase normalisation multiplies by |p|/p = 1
    assert torch.allclose(r.B[-1], torch.tensor(2**-0.5, dtype=C128))
    # The other FouT modes rotate at pi k: Lambda = -i pi k, largest first.
    assert torch.allclose(r.Lambda[:-1], -1j * math.pi * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64).to(C128))


def test_s4d_eigenvalues():
    n = torch.arange(4, dtype=torch.float64)
    assert torch.allclose(s4d_eigenvalues("lin", 8), torch.complex(torch.full_like(n, -0.5), -math.pi * n))
    assert torch.equal(s4d_eigenvalues("real", 8), torch.complex(-(n + 1), torch.zeros_like(n)))
    inv = s4d_eigenvalues("inv", 64)  # N = d_state = 64 -> 32 modes
    assert inv.shape == (32,) and inv.dtype == C128 and torch.all(inv.real == -0.5)
    # Notes: 1283, 414, 240, ..., 0.32; by hand (64/pi)(64 - 1) = 1283.4255.
    assert torch.allclose(-inv.imag[:3], torch.tensor([1283.4255, 414.2273, 240.3876], dtype=torch.float64), atol=1e-4)
    assert abs(-float(inv.imag[-1]) - (64 / math.pi) * (64 / 63 - 1)) < 1e-12
    legs = s4d_eigenvalues("legs", 64)
    assert torch.equal(legs, nplr("legs", 64).Lambda)
    # Notes: LegS(64) |Im| = 1303, 433, 258, ..., 0.26.
    want = torch.tensor([1303.27, 433.03, 258.15, 0.2639], dtype=torch.float64)
    assert torch.allclose(-legs.imag[[0, 1, 2, -1]], want, atol=0.01)
    for init in ("lin", "inv", "real", "legs"):
        assert torch.all(s4d_eigenvalues(init, 16).imag <= 0)


def test_s4d_input_matrix():
    assert torch.equal(s4d_input_matrix("inv", 8), torch.ones(4, dtype=C128))
    legs = s4d_input_matrix("legs", 64)
    assert torch.equal(legs, nplr("legs", 64).B)  # clipped, no 1/2 (official code)
    assert float(legs.imag.abs().max()) <= 2.0


def test_dss_eigenvalues():
    lam = dss_eigenvalues(32)
    assert lam.shape == (32,) and lam.dtype == C128
    # Equals conj of S4's NPLR of LegS(2N); eigenvalues up to 1303, float64 eigensolver -> 1e-12 relative.
    assert rel_err(lam, nplr("legs", 64).Lambda.conj()) <= 1e-12
    assert abs(float(lam.imag[0]) - 1303.27) < 0.01 and torch.all(lam.real == -0.5)
    # Independent oracle: numpy eigvals of the skew part R_n R_k (n > k) built as in the DSS paper.
    x = np.sqrt(2 * np.arange(64) + 1.0)
    hippo = np.tril(np.outer(x, x), -1)
    ev = np.linalg.eigvals((hippo - hippo.T) / 2)
    ev = np.sort(ev[ev.imag > 0].imag)[::-1]
    assert rel_err(lam.imag, torch.from_numpy(ev.copy())) <= 1e-12


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"measure must be one of \('legs', 'legt', 'lagt', 'fout'\); got 'glagt'"):
        transition("glagt", 4)
    with pytest.raises(ValueError, match="measure must be one of"):
        rank_correction("leg", 4)
    with pytest.raises(ValueError, match="N must be an int >= 1; got 0"):
        transition("legs", 0)
    with pytest.raises(ValueError, match="N must be an int >= 1; got 2.0"):
        transition("legs", 2.0)
    with pytest.raises(ValueError, match="N must be even for measure 'fout'.*got 5"):
        transition("fout", 5)
    with pytest.raises(ValueError, match=r"N must be even for nplr \(N/2 conjugate pairs\); got 7"):
        nplr("legs", 7)
    with pytest.raises(ValueError, match="B_clip must be a positive float or None; got -1"):
        nplr("legs", 8, B_clip=-1.0)
    with pytest.raises(ValueError, match="B_clip must be a positive float or None; got 0.0"):  # 0 is not positive
        nplr("legs", 8, B_clip=0.0)
    with pytest.raises(ValueError, match=r"init must be one of \('lin', 'inv', 'real', 'legs'\); got 'legt'"):
        s4d_eigenvalues("legt", 8)
    with pytest.raises(ValueError, match="init must be one of"):
        s4d_input_matrix("rand", 8)
    with pytest.raises(ValueError, match="N must be even"):
        s4d_eigenvalues("lin", 9)
    with pytest.raises(ValueError, match="N_modes must be an int >= 1; got -3"):
        dss_eigenvalues(-3)
    with pytest.raises(ValueError, match="N must be an int >= 1; got 0"):  # rank_correction checks N itself
        rank_correction("legs", 0)


def test_nplr_and_dss_inits_are_computed_once_and_handed_out_as_copies():
    # The O(N³) eigendecompositions are cached per (measure, N, B_clip): a second layer of the same size builds in
    # milliseconds (S4D-LegS at d_state 2048 took 40 s every time before). Callers get copies they may modify.
    from ssmkit.ops.hippo import _dss_eigenvalues_cached, _nplr_cached

    first = nplr("legs", 16)
    first.Lambda.mul_(0)  # a caller modifying its copy
    second = nplr("legs", 16)
    assert bool((second.Lambda.real == -0.5).all())
    hits = _nplr_cached.cache_info().hits
    nplr("legs", 16)
    assert _nplr_cached.cache_info().hits == hits + 1
    lam = dss_eigenvalues(8)
    lam.zero_()
    assert bool((dss_eigenvalues(8).real == -0.5).all()) and _dss_eigenvalues_cached.cache_info().hits >= 1


@pytest.mark.parametrize("conj_sym", [True, False])
def test_s5_eigen_blocks(conj_sym):
    # S5 (arXiv 2208.04933): the normal LegS block's eigenpairs on a block diagonal; V is unitary on its columns.
    P, J = 16, 2
    Lambda, V = s5_eigen(P, J, conj_sym)
    M = P // 2 if conj_sym else P
    assert Lambda.shape == (M,) and V.shape == (P, M)
    assert torch.allclose(Lambda.real, torch.full((M,), -0.5, dtype=torch.float64))
    assert (V.conj().T @ V - torch.eye(M, dtype=V.dtype)).abs().max() < 1e-12
    A, B = transition("legs", P // J)
    p = rank_correction("legs", P // J)[0]
    S = (A + torch.outer(p, p)).to(torch.complex128)  # the normal part of one block
    block = slice(0, P // J)
    half = slice(0, M // J)
    assert (S @ V[block, half] - V[block, half] * Lambda[half]).abs().max() < 1e-12  # S V = V Λ
    assert V[P // J :, : M // J].abs().max() == 0  # block diagonal
    if conj_sym:
        assert float(Lambda.imag.max()) < 0  # the Im λ < 0 half of each pair
    with pytest.raises(ValueError, match="P must be a positive multiple of 2·blocks = 4"):
        s5_eigen(10, 2)


def test_fout_N6_and_legs_N1_by_hand():
    # probe 19: N = 4 has one cosine/sine pair, which cannot tell B[2::2] from B[2::3] nor k·pi from pi
    A, B = transition("fout", 6)
    r2, pi = math.sqrt(2), math.pi
    B_want = torch.tensor([1, 0, r2, 0, r2, 0], dtype=torch.float64)
    J = torch.zeros(6, 6, dtype=torch.float64)
    J[2, 3], J[3, 2], J[4, 5], J[5, 4] = -pi, pi, -2 * pi, 2 * pi
    assert torch.allclose(B, B_want, rtol=0, atol=1e-15)
    assert torch.allclose(A, J - torch.outer(B_want, B_want), rtol=0, atol=1e-15)
    # the smallest state: LegS N = 1 is A = -(0 + 1) = -1, B = sqrt(1) = 1
    A, B = transition("legs", 1)
    assert A.tolist() == [[-1.0]] and B.tolist() == [1.0]


def test_dss_eigenvalues_odd_number_of_modes():
    # DSS counts complex modes: N_modes = 3 (LegS of size 6) is valid; oracle: numpy eigvals of the skew part
    lam = dss_eigenvalues(3)
    x = np.sqrt(2 * np.arange(6) + 1.0)
    hippo = np.tril(np.outer(x, x), -1)
    ev = np.linalg.eigvals((hippo - hippo.T) / 2)
    ev = np.sort(ev[ev.imag > 0].imag)[::-1]
    assert lam.shape == (3,) and torch.all(lam.real == -0.5)
    assert rel_err(lam.imag, torch.from_numpy(ev.copy())) <= 1e-13


def test_nplr_clip_below_one():
    # a clip in (0, 1) is valid: Im B̃ is clamped to [-0.5, 0.5]; Re B̃, Λ, P̃ and V are those of the unclipped form
    r, free = nplr("legs", 8, B_clip=0.5), nplr("legs", 8, B_clip=None)
    assert torch.equal(r.B.real, free.B.real) and torch.equal(r.Lambda, free.Lambda) and torch.equal(r.V, free.V)
    want = np.clip(free.B.imag.numpy(), -0.5, 0.5)
    assert np.array_equal(r.B.imag.numpy(), want) and (np.abs(free.B.imag.numpy()) > 0.5).any()


def test_s5_eigen_smallest_block_and_defaults_and_s4d_input_checks():
    # probe 19: P = 2 is the smallest valid state; the normal part of LegS(2) is [[-1/2, √3/2], [-√3/2, -1/2]], whose
    # Im < 0 eigenvalue is -1/2 - i √3/2; conj_sym defaults to True (M = P/2)
    Lambda, V = s5_eigen(2, 1)
    assert Lambda.shape == (1,) and V.shape == (2, 1)
    assert abs(complex(Lambda[0]) - complex(-0.5, -math.sqrt(3) / 2)) < 1e-15
    assert s5_eigen(8, 2)[0].shape == (4,)
    with pytest.raises(ValueError, match="blocks must be an int >= 1; got 0"):
        s5_eigen(8, 0)
    with pytest.raises(ValueError, match=r"N must be even \(d_state holds N/2 conjugate pairs\); got 9"):
        s4d_input_matrix("lin", 9)
