"""How S4D's exported systems relate to the discretisations a control engineer knows (scipy.signal.cont2discrete,
MATLAB's c2d): same poles and DC gain, one transfer-function factor apart (probe 4, docs/design.md).

The SSM papers' recurrence x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k reads u_k before the output, so
    ZOH:      H_layer(z) = z · H_c2d_zoh(z) + D          (one sample ahead of the sampled continuous system)
    bilinear: H_layer(z) = 2z/(z+1) · H_c2d_tustin(z) + D  (arXiv 2111.00396 eq. 3 is not Tustin's transfer function)
where H_c2d is the discretisation of the continuous system (λ, B, C) without D.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
import torch

from ssmkit.layers import build

TS = 0.5  # seconds: the exported system's dt; Δ stays in samples


def s4d_and_continuous(discretization: str):
    """An S4D layer (H = 2) and, per channel, its continuous system (A, B, C) with the conjugate modes written out."""
    torch.manual_seed(0)
    layer = build("s4d", d_model=2, d_state=4, init="lin", discretization=discretization, dt_min=0.05, dt_max=0.5)
    layer = layer.double()
    with torch.no_grad():
        lam = (-torch.exp(layer.log_A_real) + 1j * layer.A_imag).numpy()  # (H, M)
        B = torch.view_as_complex(layer.B.contiguous()).numpy()  # (H, M)
        C = torch.view_as_complex(layer.C[0].contiguous()).numpy()  # (H, M)
        delta = layer.log_dt.exp().numpy()  # (H,) samples
        D = layer.D.numpy()  # (H,)
    systems = []
    for h in range(2):
        A_c = np.diag(np.concatenate([lam[h], lam[h].conj()]))  # (2M, 2M): y = 2 Re(C x) = C x + conj(C) conj(x)
        B_c = np.concatenate([B[h], B[h].conj()])[:, None]  # (2M, 1)
        C_c = np.concatenate([C[h], C[h].conj()])[None, :]  # (1, 2M)
        systems.append((A_c, B_c, C_c, delta[h], D[h]))
    return layer, systems


def transfer(A, B, C, D, z):
    n = A.shape[0]
    return np.array([(C @ np.linalg.solve(zk * np.eye(n) - A, B)).item() + D for zk in z])


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_export_against_scipy_cont2discrete(discretization):
    layer, systems = s4d_and_continuous(discretization)
    exported = layer.state_space()
    w = np.linspace(0.05, 0.95 * np.pi, 11)  # rad/sample (dt = 1 in the layer's own export)
    H = exported.frequency_response(w)[:, 0, 0]  # (H, W)
    z = np.exp(1j * w)
    for h, (A_c, B_c, C_c, delta, D) in enumerate(systems):
        Ad, Bd, Cd, Dd, _ = scipy.signal.cont2discrete((A_c, B_c, C_c, np.zeros((1, 1))), delta, method=discretization)
        H_c2d = transfer(Ad, Bd, Cd, Dd.item(), z)  # no D
        factor = z if discretization == "zoh" else 2 * z / (z + 1)
        np.testing.assert_allclose(H[h], factor * H_c2d + D, rtol=1e-10)
        # same poles (Ā = e^{Δλ} or the Cayley map of Δλ) and the same DC gain (both factors are 1 at z = 1)
        np.testing.assert_allclose(np.sort_complex(exported.poles()[h]), np.sort_complex(np.linalg.eigvals(Ad)),
                                   rtol=1e-12, atol=1e-12)
        dc_c2d = transfer(Ad, Bd, Cd, Dd.item(), np.array([1.0]))[0].real + D
        np.testing.assert_allclose(exported.dcgain()[h, 0, 0], dc_c2d, rtol=1e-10)
    # the ZOH layer is exactly the sampled continuous system once the one-sample lead is taken out: its impulse
    # response h[k] (k >= 1) equals the continuous impulse response C e^{AΔk} ... sampled one step later
    if discretization == "zoh":
        A_c, B_c, C_c, delta, D = systems[0]
        u = torch.zeros(1, 6, 2, dtype=torch.float64)
        u[0, 0, 0] = 1.0
        with torch.no_grad():
            y = layer(u)[0][0, :, 0].numpy()  # (6,)
        # u_0 held over one step: x(Δ) = A⁻¹(e^{AΔ} - I) B; y_k = C e^{AΔk} x(Δ) for k >= 0 (the layer reads u_0
        # at k = 0)
        x1 = np.linalg.solve(A_c, (scipy.linalg.expm(A_c * delta) - np.eye(A_c.shape[0])) @ B_c)
        want = [(C_c @ scipy.linalg.expm(A_c * delta * k) @ x1).item().real for k in range(6)]
        want[0] += D
        np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-13)


def test_exported_dt_is_one_sample_and_deep_wiener_sets_ts():
    # a layer knows no sampling time: its export is in samples (dt = 1); a DeepWiener re-exports its blocks with Ts
    from ssmkit.sysid.wiener import DeepWiener

    layer, _ = s4d_and_continuous("zoh")
    assert layer.state_space().dt == 1.0
    m = DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 4}, dt=TS)
    (ss,) = m.state_space()
    assert ss.dt == TS
    np.testing.assert_array_equal(ss.A, m.layers[0].state_space().A)  # the same matrices, only dt differs
