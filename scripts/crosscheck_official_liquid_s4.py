"""How ssmkit's causal Liquid-S4 relates to the official (raminmh/liquid-s4) layer, numerically, on CPU.

    python scripts/crosscheck_official_liquid_s4.py --liquid-root PATH/TO/raminmh/liquid-s4

The official code is NOT part of ssmkit: bring your own copy (docs/benchmarks.md used commit 06031dc) and
`pip install einops opt_einsum`. Its package __init__ files and its training utilities (Hydra, Lightning) are
bypassed: the S4 module and its kernel are loaded as plain modules, with a logging stub. Runs the official S4 with
``linear=True`` (the SSM alone), PB kernel, degree 2, ``allcombs=False``, and the same module with the liquid kernel
switched off, and prints:
1. the official liquid term (PB minus plain) against flip_t(c_off · u_t u_{t-1}), with c_off = Re Σ C_f B̄_f β
   formed here from the tensors the official forward reads (the kernel wrapper's initial C, B, Λ, Δ; B̄ from the
   diagonal Λ only, β = Σ B̄_f): the official term is our causal term reversed in time;
2. ssmkit's S4 part with the official parameters copied (log Δ, Λ, P, B, C̃ attuned to l_max, D) against the
   official plain output;
3. the official coefficient c_off against ssmkit's c = C_trueᵀ B̄ β (the full DPLR B̄).
"""

from __future__ import annotations

import argparse
import logging
import sys
import types

import torch

import ssmkit.layers as layers


def load_official(root: str):
    for name, path in [("src", "src"), ("src.models", "src/models"), ("src.models.sequence", "src/models/sequence"),
                       ("src.models.sequence.ss", "src/models/sequence/ss")]:
        module = types.ModuleType(name)
        module.__path__ = [f"{root}/{path}"]  # a namespace: the package __init__ (Hydra, Lightning) is not run
        sys.modules[name] = module
    utils = types.ModuleType("src.utils")
    utils.__path__ = []
    train = types.ModuleType("src.utils.train")
    train.get_logger = logging.getLogger
    utils.train = train
    sys.modules["src.utils"], sys.modules["src.utils.train"] = utils, train
    sys.modules["src"].utils = utils
    sys.path.insert(0, root)
    from src.models.sequence.ss.s4 import S4  # noqa: E402  (the official module)

    return S4


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--liquid-root", required=True, help="a checkout of raminmh/liquid-s4 (holding src/)")
    parser.add_argument("--d-model", type=int, default=4)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()
    S4 = load_official(args.liquid_root)
    H, N, L = args.d_model, args.d_state, args.length
    torch.manual_seed(0)
    off = S4(d_model=H, d_state=N, l_max=L, transposed=False, linear=True, liquid_kernel="polyb", liquid_degree=2,
             allcombs=False, mode="nplr", measure="legs", n_ssm=None).eval()
    u = torch.randn(2, L, H)
    with torch.no_grad():
        y_pb, _ = off(u)
        off.liquid_kernel = None
        y_plain, _ = off(u)
    liquid_off = (y_pb - y_plain).double()  # (B, L, H)

    # 1. The official PB term, formed here from the same tensors the official forward reads.
    kern = off.kernel
    full = lambda v: torch.cat([v, v.conj()], dim=-1)  # noqa: E731
    dt = torch.exp(kern.log_dt.double())[:, None]  # (H, 1)
    w, B, C = full(kern.w.to(torch.complex128)), full(kern.B.to(torch.complex128)), full(kern.C.to(torch.complex128))
    dB = dt * B / (1 - 0.5 * dt * w)  # (H, N): bilinear B̄ from the diagonal part only
    beta_off = dB.sum(-1, keepdim=True)  # (H, 1)
    c_off = (C[0] * dB * beta_off).sum(-1).real  # (H,)
    u64 = u.double()
    pair = u64 * torch.nn.functional.pad(u64[:, :-1], (0, 0, 1, 0))  # (B, L, H): u_t u_{t-1}, causal
    print(f"1. official PB term vs flip_t(c_off · u_t u_(t-1)): {err(liquid_off, (c_off * pair).flip(1)):.2e} "
          f"(vs the unflipped causal term: {err(liquid_off, c_off * pair):.2e})")

    # 2. ssmkit's layer with the official parameters.
    ours = layers.build("liquid_s4", d_model=H, d_state=N, l_max=L, n_ssm=None, dtype=torch.float64)
    nplr = kern.kernel
    with torch.no_grad():
        ours.log_dt.copy_(nplr.log_dt)
        Lam = nplr._w()  # (H, N/2)
        ours.log_A_real.copy_(torch.log(-Lam.real).reshape(ours.log_A_real.shape))
        ours.A_imag.copy_(Lam.imag.reshape(ours.A_imag.shape))
        ours.P.copy_(nplr.P.reshape(ours.P.shape))
        ours.B.copy_(nplr.B.reshape(ours.B.shape))
        ours.C_tilde.copy_(nplr.C.reshape(ours.C_tilde.shape))
        ours.D.copy_(off.D.reshape(-1))
        y_ours, _ = ours(u64)
        coeffs, C_true, K0, beta = ours._compute_step_coefficients()
        liquid_ours = K0 * beta * pair  # (B, L, H): ssmkit's causal PB term
    print(f"2. ssmkit S4 part vs official plain output: {err(y_ours - liquid_ours, y_plain):.2e}")
    ratio = c_off / (K0 * beta)
    print(f"3. c_off / ssmkit's c per channel: min {float(ratio.min()):.4f}, max {float(ratio.max()):.4f} "
          f"(B̄ from Λ alone vs the full DPLR B̄); flip_t(official term) vs ssmkit's term "
          f"{err(liquid_off.flip(1), liquid_ours):.2e}")


if __name__ == "__main__":
    main()
