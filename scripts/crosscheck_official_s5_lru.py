"""Numerical cross-check of ssmkit's S5 and LRU against the official JAX code (lindermanlab/S5, minimal-LRU).

    python scripts/crosscheck_official_s5_lru.py --s5-repo PATH/TO/S5 --lru-repo PATH/TO/minimal-LRU

The official files are NOT part of ssmkit: bring your own checkouts (the figures in docs/benchmarks.md used
lindermanlab/S5 3c18fdb, files s5/ssm.py and s5/ssm_init.py, and NicolasZucchet/minimal-LRU bbd71b1, file
lru/model.py) and `pip install jax`. Flax is not needed: the official modules are imported with a stub
``flax.linen`` (``Module`` = object, ``vmap`` = identity) and run unbound on a plain object whose ``param(name, ...)`` returns the
parameters copied from the ssmkit layer, so the official ``setup`` (parametrisation, discretisation) and
``__call__`` (associative scan, read-out) run as written. The alias ``jax.numpy.DeviceArray`` (removed from JAX,
used only in S5's class annotations) is pointed at ``jax.Array``.

Prints, for each configuration: the official float32 output against ssmkit's float32 output (same parameters),
and both against ssmkit's float64 reference loop (the error of each float32 implementation); then S5's initial
eigenvalues against the official ``make_DPLR_HiPPO`` and LRU's initial |λ|² statistics against the official
initialisers. Errors are max |a - b| / max |b|.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import pathlib
import sys
import types

import numpy as np
import torch

import ssmkit.layers as layers
from ssmkit.ops.backend import use_backend
from ssmkit.ops.hippo import s5_eigen


def load_official(s5_repo: str, lru_repo: str):
    """Import s5/ssm.py, s5/ssm_init.py and lru/model.py with a stub flax.linen."""
    import jax
    import jax.numpy as jnp

    if not hasattr(jnp, "DeviceArray"):
        jnp.DeviceArray = jax.Array  # removed alias, used in S5's class annotations only
    flax = types.ModuleType("flax")
    linen = types.ModuleType("flax.linen")
    linen.Module = object
    linen.vmap = lambda target, **kwargs: target  # wraps minimal-LRU's batched classifier only (not used here)
    flax.linen = linen
    sys.modules.setdefault("flax", flax)
    sys.modules.setdefault("flax.linen", linen)

    def package(name: str, path: pathlib.Path) -> None:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module

    def load(name: str, path: pathlib.Path):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    s5_dir = pathlib.Path(s5_repo) / "s5"
    package("s5", s5_dir)
    ssm_init = load("s5.ssm_init", s5_dir / "ssm_init.py")
    ssm = load("s5.ssm", s5_dir / "ssm.py")
    lru = load("lru_official_model", pathlib.Path(lru_repo) / "lru" / "model.py")
    return ssm, ssm_init, lru


def err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def unbound(cls, params: dict, **attributes):
    """An object on which the official module's methods run: attributes as given, ``param`` from ``params``."""
    obj = types.SimpleNamespace(**attributes)
    obj.param = lambda name, *args: params[name]
    cls.setup(obj)
    return obj


def ours(layer, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """ssmkit's float32 output and its float64 reference-loop output (the same parameters, widened)."""
    with torch.no_grad():
        y32 = layer(x)[0].numpy()
        wide = layer.to(torch.float64)
        with use_backend("reference"):
            y64 = wide(x.double())[0].numpy()
        layer.to(torch.float32)
    return y32, y64


def s5_checks(ssm, ssm_init, H: int, P: int, blocks: int, L: int, batch: int) -> None:
    import jax
    import jax.numpy as jnp

    print(f"S5: H={H}, P={P} (d_state), J={blocks}, L={L}, batch={batch}, float32")
    configs = [
        {},
        {"discretization": "bilinear"},
        {"conj_sym": False},
        {"C_init": "complex_normal"},
        {"clip_eigs": True},
        {"step_rescale": 0.5},
        {"bidirectional": True},
    ]
    for options in configs:
        torch.manual_seed(0)
        layer = layers.build("s5", d_model=H, d_state=P, blocks=blocks, **options)
        x = torch.randn(batch, L, H)
        y32, y64 = ours(layer, x)
        conj_sym = options.get("conj_sym", True)
        params = {
            "Lambda_re": jnp.asarray(layer.A_real.detach().numpy()),
            "Lambda_im": jnp.asarray(layer.A_imag.detach().numpy()),
            "B": jnp.asarray(layer.B.detach().numpy()),
            "D": jnp.asarray(layer.D.detach().numpy()),
            "log_step": jnp.asarray(layer.log_dt.detach().numpy()[:, None]),
        }
        C = layer.C.detach().numpy()  # (C, H, M, 2)
        if options.get("bidirectional"):
            params["C1"], params["C2"] = jnp.asarray(C[0]), jnp.asarray(C[1])
        else:
            params["C"] = jnp.asarray(C[0])
        M = layer.n_modes
        obj = unbound(
            ssm.S5SSM, params, H=H, P=M, C_init=options.get("C_init", "trunc_standard_normal"),
            discretization=options.get("discretization", "zoh"), dt_min=1e-3, dt_max=1e-1, conj_sym=conj_sym,
            clip_eigs=options.get("clip_eigs", False), bidirectional=options.get("bidirectional", False),
            step_rescale=options.get("step_rescale", 1.0), V=None, Vinv=None,
        )
        y_off = np.asarray(jax.vmap(lambda u: ssm.S5SSM.__call__(obj, u))(jnp.asarray(x.numpy())))
        name = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults (ZOH)"
        print(f"  {name:28s} official vs ssmkit {err(y_off, y32):.1e} | vs float64: official {err(y_off, y64):.1e}, "
              f"ssmkit {err(y32, y64):.1e}")
    # initial eigenvalues: the official make_DPLR_HiPPO on one block, first half, repeated J times
    size = P // blocks
    Lambda_off = np.asarray(ssm_init.make_DPLR_HiPPO(size)[0])[: size // 2]
    Lambda, _ = s5_eigen(P, blocks)
    print(f"  init Λ vs official make_DPLR_HiPPO({size}) (float32): max |Δ| "
          f"{np.abs(Lambda.numpy() - np.tile(Lambda_off, blocks)).max():.1e}")


def lru_checks(lru, H: int, d_hidden: int, L: int, batch: int) -> None:
    import jax
    import jax.numpy as jnp

    print(f"LRU: H={H}, d_hidden={d_hidden} (d_state={2 * d_hidden}), L={L}, batch={batch}, float32")
    for options in ({}, {"r_min": 0.9, "r_max": 0.999, "max_phase": 0.314}):
        torch.manual_seed(0)
        layer = layers.build("lru", d_model=H, d_state=2 * d_hidden, **options)
        x = torch.randn(batch, L, H)
        y32, y64 = ours(layer, x)
        B, C = layer.B.detach().numpy(), layer.C.detach().numpy()[0]  # (M, H, 2), (H, M, 2)
        params = {
            "nu_log": jnp.asarray(layer.log_nu.detach().numpy()),
            "theta_log": jnp.asarray(layer.log_theta.detach().numpy()),
            "gamma_log": jnp.asarray(layer.log_gamma.detach().numpy()),
            "B_re": jnp.asarray(B[..., 0]), "B_im": jnp.asarray(B[..., 1]),
            "C_re": jnp.asarray(C[..., 0]), "C_im": jnp.asarray(C[..., 1]),
            "D": jnp.asarray(layer.D.detach().numpy()),
        }
        obj = unbound(lru.LRU, params, d_hidden=d_hidden, d_model=H, r_min=options.get("r_min", 0.0),
                      r_max=options.get("r_max", 1.0), max_phase=options.get("max_phase", 6.28))
        y_off = np.asarray(jax.vmap(lambda u: lru.LRU.__call__(obj, u))(jnp.asarray(x.numpy())))
        name = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults (r 0..1, phase 6.28)"
        print(f"  {name:42s} official vs ssmkit {err(y_off, y32):.1e} | vs float64: official "
              f"{err(y_off, y64):.1e}, ssmkit {err(y32, y64):.1e}")
    # initial |λ|²: the official initialisers against ssmkit's, 20000 draws each, ring [0.5, 0.9]
    n, r_min, r_max = 20000, 0.5, 0.9
    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    nu = lru.nu_init(key1, (n,), r_min=r_min, r_max=r_max)
    modulus_sq_off = np.exp(-2 * np.exp(np.asarray(nu, dtype=np.float64)))
    torch.manual_seed(0)
    layer = layers.build("lru", d_model=1, d_state=2 * n, r_min=r_min, r_max=r_max, dtype=torch.float64)
    modulus_sq = np.exp(-2 * np.exp(layer.log_nu.detach().numpy()))
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    print("  init |λ|² quantiles (ring 0.5..0.9) official " + " ".join(f"{v:.3f}" for v in np.quantile(modulus_sq_off, q))
          + " | ssmkit " + " ".join(f"{v:.3f}" for v in np.quantile(modulus_sq, q))
          + f" | uniform law {' '.join(f'{r_min**2 + p * (r_max**2 - r_min**2):.3f}' for p in q)}")
    theta_off = np.exp(np.asarray(lru.theta_init(key2, (n,), max_phase=math.pi), dtype=np.float64))
    print(f"  init phase mean (max_phase π) official {theta_off.mean():.3f} | ssmkit "
          f"{float(torch.exp(layers.build('lru', d_model=1, d_state=2 * n, max_phase=math.pi).log_theta.detach()).mean()):.3f}"
          f" | uniform law {math.pi / 2:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s5-repo", required=True, help="checkout of lindermanlab/S5 (holds s5/ssm.py)")
    parser.add_argument("--lru-repo", required=True, help="checkout of NicolasZucchet/minimal-LRU (holds lru/model.py)")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    ssm, ssm_init, lru = load_official(args.s5_repo, args.lru_repo)
    s5_checks(ssm, ssm_init, H=32, P=64, blocks=4, L=args.length, batch=args.batch)
    lru_checks(lru, H=32, d_hidden=32, L=args.length, batch=args.batch)


if __name__ == "__main__":
    main()
