"""Compile ssmkit's Triton kernels for a GPU architecture without a GPU; print shared memory, registers, spills.

    env -u TRITON_INTERPRET PYTHONPATH=src python scripts/triton_compile_check.py [--arch 90] [--quick] [--large]
        [--only selective]

Catches what Triton's CPU interpreter cannot: lowering errors (scans over a 3-D tile, float64 tl.dot), shared
memory beyond the device's limit (227 KB per block on sm_90) and register spills (STACK > 0 in cuobjdump's line).
Uses the ptxas bundled with triton; nothing runs.
The SSD kernel compiles slowly on a small CPU (tens of seconds per configuration); --quick skips the largest ones.
--large adds the largest state sizes the layers allow (d_state 256): the scan at 128 and 256 complex modes, the SSD at
N = 256, the selective scan at N = 256 with the tiles ``fit_tiles`` shrinks to.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("unset TRITON_INTERPRET: the interpreter does not compile")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ssmkit.ops.triton import scan as S  # noqa: E402
from ssmkit.ops.triton import scan_mm as SM  # noqa: E402
from ssmkit.ops.triton import selective as SS  # noqa: E402
from ssmkit.ops.triton import ssd as D  # noqa: E402
from ssmkit.ops.triton import ssd_backward as DB  # noqa: E402


def compile_one(fn, signature: dict, constexprs: dict, target: GPUTarget, num_warps: int = 8) -> tuple[int, str, float]:
    """Shared memory in bytes, the register/stack line of ``cuobjdump -res-usage`` and the seconds taken."""
    start = time.perf_counter()
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                            options={"num_warps": num_warps})  # as the launchers
    seconds = time.perf_counter() - start
    usage = "?"
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        usage = " ".join(w for line in out.splitlines() if "REG:" in line for w in line.split()[:2])
    return kernel.metadata.shared, usage, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability as an int (90: H100/H200)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--large", action="store_true", help="also the largest state sizes (N = 256)")
    parser.add_argument("--only", default="", help="compile only the kernels whose label contains this text")
    args = parser.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    failed = 0
    for dtype, name in ((torch.float32, "fp32"), (torch.float64, "fp64")):
        p = "*" + name
        cases = []
        for NP in (32, 128, 256) if args.large else (32,):
            cases += [
                (f"scan forward NP={NP}", S._scan_fwd_kernel,
                 {k: p for k in ("u_ptr", "y_ptr", "coef_ptr", "pw_ptr", "d_ptr", "x0_ptr", "xL_ptr", "ck_ptr")},
                 {"T": S.DEFAULT_CHUNK, "BH": S.DEFAULT_BLOCK_H, "NP": NP, "HAS_X0": True, "HAS_D": True,
                  "SAVE_CK": True}),
                (f"scan backward NP={NP}", S._scan_bwd_kernel,
                 {k: p for k in ("u_ptr", "dy_ptr", "coef_ptr", "pw_ptr", "d_ptr", "ck_ptr", "mu_ptr", "gu_ptr",
                                 "gpar_ptr", "gx0_ptr")},
                 {"T": S.DEFAULT_CHUNK, "BH": S.BACKWARD_BLOCK_H, "NP": NP, "HAS_D": True}),
                (f"scan group ends NP={NP}", S._group_ends_kernel,
                 {k: p for k in ("u_ptr", "coef_ptr", "pw_ptr", "s_ptr")},
                 {"T": S.DEFAULT_CHUNK, "BH": S.DEFAULT_BLOCK_H, "NP": NP}),
                (f"scan matmul forward NP={max(NP, 16)}", SM._scan_mm_fwd_kernel,
                 {k: p for k in SM._scan_mm_fwd_kernel.arg_names if k.endswith("_ptr")},
                 {"T": SM.MM_CHUNK if NP < 128 else 16, "CB": SM.MM_BLOCK, "NP": max(NP, 16), "HAS_D": True,
                  "SAVE_CK": True, "PREC": "tf32x3" if name == "fp32" else "ieee"}),
                (f"scan group adjoints NP={NP}", S._group_adjoints_kernel,
                 {k: p for k in ("dy_ptr", "coef_ptr", "pw_ptr", "gxL_ptr", "m_ptr")},
                 {"T": S.DEFAULT_CHUNK, "BH": S.BACKWARD_BLOCK_H, "NP": NP}),
            ]
            cases += [] if NP > SM.MM_BACKWARD_MODES else [
                (f"scan matmul backward NP={max(NP, 16)}", SM._scan_mm_bwd_kernel,
                 {k: p for k in SM._scan_mm_bwd_kernel.arg_names if k.endswith("_ptr")},
                 {"T": SM.MM_CHUNK if NP < 128 else 16, "CB": SM.MM_BLOCK, "NP": max(NP, 16), "HAS_D": True,
                  "PREC": "tf32x3" if name == "fp32" else "ieee"}),
            ]
        shapes = ((64, 64),) if args.quick else ((64, 64), (64, 128))
        for P, N in shapes + (((64, 256),) if args.large else ()):
            T, BP, NB = D.default_tiles(P, N, D.DEFAULT_CHUNK, dtype)
            cases.append((f"ssd forward P={P} N={N}", D._ssd_fwd_kernel,
                          {k: p for k in D._ssd_fwd_kernel.arg_names if k.endswith("_ptr")},
                          {"T": T, "BP": BP, "NB": NB, "HAS_H0": True, "PREC": "tf32x3" if name == "fp32" else "ieee",
                           "SAVE_CK": True}))
            cases.append((f"ssd backward P={P} N={N}", DB._ssd_bwd_kernel,
                          {k: p for k in DB._ssd_bwd_kernel.arg_names if k.endswith("_ptr")},
                          {"T": D.BACKWARD_CHUNK, "BP": D.BACKWARD_CHANNELS, "NB": NB, "HAS_GHL": True,
                           "WANT_GH0": True, "PREC": "tf32x3" if name == "fp32" else "ieee"}))
        for N in (16, 256) if args.large else (16,):
            tiles = SS.fit_tiles(SS.DEFAULT_TILES, N)
            sel = dict(N=N, NP=N, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, NUM_STAGES=tiles.num_stages)
            cases.append((f"selective forward N={N}", SS._selective_fwd_kernel,
                          {k: p for k in SS._selective_fwd_kernel.arg_names if k.endswith("_ptr")},
                          {"T": tiles.forward_chunk, "BH": tiles.block_h, **sel, "HAS_H0": True, "SAVE_CK": True,
                           "CK_EVERY": tiles.chunk // tiles.forward_chunk}))
            cases.append((f"selective backward N={N}", SS._selective_bwd_kernel,
                          {k: p for k in SS._selective_bwd_kernel.arg_names if k.endswith("_ptr")},
                          {"T": tiles.chunk, "BH": tiles.backward_block_h, **sel, "HAS_GHL": True, "WANT_GH0": True}))
        for label, fn, pointers, constexprs in [c for c in cases if args.only in c[0]]:
            ints = [a for a in fn.arg_names if a not in pointers and a not in constexprs]
            signature = {**pointers, **{a: "i32" for a in ints}, **{a: "constexpr" for a in constexprs}}
            signature = {a: signature[a] for a in fn.arg_names}
            try:
                warps = {"selective forward": SS.DEFAULT_TILES.num_warps,
                         "selective backward": SS.DEFAULT_TILES.backward_num_warps,
                         "scan matmul forward": SM.NUM_WARPS,
                         "scan matmul backward": SM.NUM_WARPS}.get(label.split(" N=")[0].split(" NP=")[0], 8)
                shared, usage, seconds = compile_one(fn, signature, constexprs, target, warps)
                print(f"{name} {label} {constexprs}: ok, shared memory {shared / 1024:.0f} KB, {usage}, "
                      f"{seconds:.0f} s")
                failed += shared > 227 * 1024
            except Exception as e:  # noqa: BLE001
                print(f"{name} {label} {constexprs}: FAILED {type(e).__name__}: {str(e)[:500]}")
                failed += 1
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
