"""Tests of ssmkit.analysis.frequency: the Schur form and the three transfer evaluations, against direct solves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssmkit.analysis import frequency
from ssmkit.analysis.frequency import (
    modal_transfer,
    physical_transfer,
    schur_form,
    schur_transfer,
    triangular_transfer,
)
from tests.analysis.test_statespace import match_sets, random_bank
from tests.conftest import rel_err

# Pairwise-distinct sizes so a swapped axis cannot broadcast silently.
G, N, M_IN, P_OUT, W = 3, 4, 2, 5, 7


def direct_transfer(A, B, C, D, z):
    """C (zI - A)^{-1} B + D by one dense solve per system and point: (G, p, m, W) complex128."""
    Gs, n = A.shape[:2]
    out = np.empty((Gs, C.shape[1], B.shape[2], z.shape[1]), np.complex128)
    for g in range(Gs):
        for w in range(z.shape[1]):
            out[g, ..., w] = C[g] @ np.linalg.solve(z[g, w] * np.eye(n) - A[g], B[g]) + D[g]
    return out


def unit_points(rng, Gs, Wn):
    return np.exp(1j * rng.uniform(0.0, math.pi, (Gs, Wn)))  # (G, W) on the unit circle


def test_modal_transfer_one_state_hand():
    # H(z) = c b / (z - λ) for a single mode
    lam, b, c, z = 0.5 + 0.2j, 0.7 - 0.1j, 1.5 + 0.3j, np.exp(0.4j)
    H = modal_transfer(np.array([[lam]]), np.array([[[b]]]), np.array([[[c]]]), np.array([[z]]))
    assert H.shape == (1, 1, 1, 1)
    assert H[0, 0, 0, 0] == pytest.approx(c * b / (z - lam), rel=1e-15)


def test_triangular_transfer_2x2_hand():
    # T = [[a, t], [0, d]], Bt = e_2, Ct = e_1^T: the (1, 2) entry of (zI - T)^{-1} is t / ((z - a)(z - d))
    a, t, d, z = 0.3, 2.0, -0.4, np.exp(1.1j)
    T = np.array([[[a, t], [0.0, d]]], np.complex128)
    H = triangular_transfer(T, np.array([[[0.0], [1.0]]], np.complex128), np.array([[[1.0, 0.0]]], np.complex128),
                            np.array([[z]]))
    assert H[0, 0, 0, 0] == pytest.approx(t / ((z - a) * (z - d)), rel=1e-15)


def test_schur_form_structure_and_normal_flag():
    rng = np.random.default_rng(4)
    A, B, C, _ = random_bank(rng, G, N, M_IN, P_OUT)
    T, Bt, Ct, normal = schur_form(A, B, C)
    assert T.shape == (G, N, N) and Bt.shape == (G, N, M_IN) and Ct.shape == (G, P_OUT, N)
    assert np.all(np.tril(T, -1) == 0)  # upper triangular
    for g in range(G):  # same spectrum as A
        assert match_sets(np.diag(T[g]), np.linalg.eigvals(A[g])) < 1e-12  # float64 QR vs QR, O(1) eigenvalues
    assert not normal.any()  # random matrices are not normal
    sym = A + A.transpose(0, 2, 1)  # symmetric, hence normal
    jordan = np.array([[[0.5, 1.0], [0.0, 0.5]]])  # a Jordan block is not
    assert schur_form(sym, B, C).normal.all()
    assert not schur_form(jordan, np.ones((1, 2, 1)), np.ones((1, 1, 2))).normal.any()


@pytest.mark.parametrize("complex_", [False, True])
def test_schur_transfer_equals_direct_solve(complex_):
    rng = np.random.default_rng(5)
    A, B, C, D = random_bank(rng, G, N, M_IN, P_OUT, complex_=complex_)
    z = unit_points(rng, G, W)
    got = schur_transfer(schur_form(A, B, C), D, z)
    assert got.shape == (G, P_OUT, M_IN, W)
    assert rel_err(torch.from_numpy(got), torch.from_numpy(direct_transfer(A, B, C, D, z))) < 1e-12  # float64


def test_schur_transfer_mixes_modal_and_triangular_and_chunks(monkeypatch):
    # one normal and one non-normal system in the same bank, and blocks of one point (a tiny memory bound)
    rng = np.random.default_rng(6)
    A, B, C, D = random_bank(rng, 2, N, 1, 1)
    A[0] = np.diag(rng.uniform(-0.9, 0.9, N))  # normal
    schur = schur_form(A, B, C)
    assert schur.normal.tolist() == [True, False]
    z = unit_points(rng, 2, W)
    one_block = schur_transfer(schur, D, z)
    monkeypatch.setattr(frequency, "_CHUNK_BYTES", 1)
    assert rel_err(torch.from_numpy(schur_transfer(schur, D, z)), torch.from_numpy(one_block)) < 1e-14  # BLAS order
    assert rel_err(torch.from_numpy(one_block), torch.from_numpy(direct_transfer(A, B, C, D, z))) < 1e-12


def test_physical_transfer_is_the_real_part_system():
    # complex bank with y = Re(C x + D u): the same transfer as its real realisation [[Ar, -Ai], [Ai, Ar]]
    rng = np.random.default_rng(7)
    A, B, C, D = random_bank(rng, G, N, M_IN, P_OUT, complex_=True)
    A_R = np.block([[A.real, -A.imag], [A.imag, A.real]])  # (G, 2n, 2n)
    B_R = np.concatenate([B.real, B.imag], 1)  # (G, 2n, m)
    C_R = np.concatenate([C.real, -C.imag], 2)  # (G, p, 2n)
    z = unit_points(rng, G, W)
    got = physical_transfer(schur_form(A, B, C), D, z)
    ref = direct_transfer(A_R, B_R, C_R, D.real, z)
    assert rel_err(torch.from_numpy(got), torch.from_numpy(ref)) < 1e-12  # float64
    # a real bank: the physical transfer is H(z) itself
    Ar, Br, Cr, Dr = random_bank(rng, G, N, M_IN, P_OUT)
    schur = schur_form(Ar, Br, Cr)
    H_phys, H = physical_transfer(schur, Dr, z), schur_transfer(schur, Dr, z)
    assert rel_err(torch.from_numpy(H_phys), torch.from_numpy(H)) < 1e-13  # float64, the same solves


def test_modal_path_of_a_non_square_mimo_bank():
    # probe 19: every normal bank above is SISO or square; here p = 5 outputs, m = 2 inputs through the modal sum
    rng = np.random.default_rng(9)
    A, B, C, D = random_bank(rng, G, N, M_IN, P_OUT)
    A = np.stack([np.diag(rng.uniform(-0.9, 0.9, N)) for _ in range(G)])  # normal
    schur = schur_form(A, B, C)
    assert schur.normal.all()
    z = unit_points(rng, G, W)
    got = schur_transfer(schur, D, z)
    assert got.shape == (G, P_OUT, M_IN, W)
    assert rel_err(torch.from_numpy(got), torch.from_numpy(direct_transfer(A, B, C, D, z))) < 1e-12  # float64


def test_a_non_normal_system_at_a_tiny_scale_is_not_taken_for_normal():
    # T = [[a, t], [0, d]] with ||A|| ~ 1e-6 and t = 1e-9: far from normal relative to its scale (16 n eps ||A||_F ~
    # 1e-20). B = e_2, C = e_1^T make the whole transfer the coupling term t / ((z - a)(z - d)), which the modal
    # sum (ignoring t) would return as 0.
    a, t, d = 1e-6, 1e-9, -1e-6
    A = np.array([[[a, t], [0.0, d]]])
    B, C, D = np.array([[[0.0], [1.0]]]), np.array([[[1.0, 0.0]]]), np.zeros((1, 1, 1))
    schur = schur_form(A, B, C)
    assert not schur.normal[0]
    z = np.exp(1j * np.array([[0.2, 1.3, 3.0]]))
    got = schur_transfer(schur, D, z)[0, 0, 0]
    np.testing.assert_allclose(got, t / ((z[0] - a) * (z[0] - d)), rtol=1e-12)
