"""Float32 accuracy of every registered layer and CPU backend at long L, against the same layer in float64.

    OMP_NUM_THREADS=1 python scripts/float32_long_accuracy.py [--lengths 1024 16384 65536] [--layers s4d mamba]
        [--grad-lengths 1024 16384] [--step-length 16384] [--ref-max 65536] [--json rows.json]
    python scripts/float32_long_accuracy.py --rounded dlr lru [--lengths ...] [--json split.json]
    python scripts/float32_long_accuracy.py --table rows.json [more.json ...]     # markdown, as in docs/benchmarks.md

Each layer is built in float32 (as a user does) with ``d_model`` channels (``d_state`` 16, ``l_max = L`` where the
layer has one), then a quarter of its channels or modes are set to the slow extreme of their timescale (Δ = dt_min,
|λ| → 1, EMA's αδ → 1e-3, Mamba's Δ = dt_min, RG-LRU's a = 0.999; see ``slow_modes``). A float64 copy is made with
``load_state_dict`` (an exact widening: both layers hold the same numbers). The oracle is the float64 copy under the
``reference`` backend (the loop or direct formula) when L <= ``--ref-max``, else the float64 copy under the same
backend as the float32 run (a column says which). For every backend the layer supports, the script reports

    rel = ‖y32 - y64‖ / ‖y64‖,  max = max |y32 - y64|

of the forward output, and at the ``--grad-lengths`` the same figures of the input gradient and the worst parameter
gradient (loss = Σ w ⊙ y with a fixed random w, so that every output position weighs). ``--step-length``: ``step``
run token by token in float32 from ``initial_state`` against the float64 forward. ``--rounded``: the split of a
diagonal layer's error into the rounding of its discrete eigenvalues and the float32 algorithm (``measure_rounded``).
Attention's reference forms the (L, L) scores, so its oracle is the reference loop only up to L = 16 384.

    OMP_NUM_THREADS=1 python scripts/float32_long_accuracy.py --ops lru s4d real mamba mamba2 rglru \
        [--lengths 4096 65536 262144] [--memory 1e4] [--ref-max 4096] [--json ops.json]

``--ops``: the ops themselves (B = 1, H = 8, N = 32; see ``op_inputs``), each float32 run against the same op under
the same backend in float64 on the same float32 numbers (no rounding of parameters: the error is the algorithm's),
for every CPU backend of the op (``"reference"`` up to ``--ref-max``): relative errors of the output, the final state
and the gradients of Σ w ⊙ y + Σ v ⊙ state with respect to the input and each parameter. ``--memory`` M sets how
slow the modes are: 1 - |λ| (Δ|A| for Mamba and Mamba-2, 1 - a for RG-LRU) spans [0.1, 1] / M (M = 1e3, the default:
|λ| in [0.999, 0.9999]; M = 1e5: [0.99999, 0.999999]).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

import ssmkit.layers as layers
from ssmkit.files import write_json
from ssmkit.ops import use_backend


def build32(name: str, d_model: int, length: int) -> layers.SequenceLayer:
    """Layer ``name`` in float32, d_state 16 where it has one, l_max = length where it has one."""
    import inspect

    params = inspect.signature(layers.layer_class(name)).parameters
    options: dict = {}
    if "d_state" in params:
        options["d_state"] = 16
    if "l_max" in params:
        options["l_max"] = length
    if name == "mamba2":
        options["headdim"] = 8
    if name == "attention":
        options["n_heads"] = 2
    return layers.build(name, d_model=d_model, dtype=torch.float32, **options)


@torch.no_grad()
def slow_modes(layer: torch.nn.Module) -> list[str]:
    """Set the first quarter of each timescale parameter to its slow extreme; return what was set."""
    done = []
    for pname, p in layer.named_parameters():
        leaf = pname.split(".")[-1]
        owner = layer.get_submodule(".".join(pname.split(".")[:-1])) if "." in pname else layer
        k = max(1, p.numel() // 4)
        if leaf == "log_dt":
            dt_min = getattr(owner, "dt_min", getattr(layer, "dt_min", 1e-3))
            p.view(-1)[:k] = math.log(dt_min)
            done.append(f"{pname}[:{k}]=log({dt_min:g})")
        elif leaf == "log_nu" and hasattr(layer, "log_gamma"):  # LRU: |λ| = exp(-exp(ν)) = 0.9999
            nu = 1e-4
            p.view(-1)[:k] = math.log(nu)
            layer.log_gamma.view(-1)[:k] = 0.5 * math.log(1 - math.exp(-2 * nu))
            done.append(f"{pname}[:{k}]: |lambda|=exp(-1e-4)")
        elif leaf == "A_sqrt_neg_real":  # DLR: Re Λ = -a² = -dt_min/2
            dt_min = getattr(layer, "dt_min", 1e-4)
            p.view(-1)[:k] = math.sqrt(dt_min / 2)
            done.append(f"{pname}[:{k}]=sqrt({dt_min:g}/2)")
        elif leaf == "log_A_real" and pname.startswith("ssm.") and layer.name == "gss":  # Re λ = -1e-4
            p.view(-1)[:k] = math.log(1e-4)
            done.append(f"{pname}[:{k}]=log(1e-4)")
        elif leaf == "dt_bias":  # Mamba, Mamba-2: softplus(dt_bias) = dt_min
            dt_min = getattr(layer, "dt_min", 1e-3)
            p.view(-1)[:k] = math.log(math.expm1(dt_min))
            done.append(f"{pname}[:{k}]=softplus^-1({dt_min:g})")
        elif leaf == "Lambda" and layer.name == "rglru":  # a = σ(Λ) = 0.999
            p.view(-1)[:k] = math.log(0.999 / 0.001)
            done.append(f"{pname}[:{k}]=logit(0.999)")
        elif leaf in ("logit_alpha", "logit_delta"):  # EMA, Mega: α = δ = 0.0316, 1 - αδ = 0.999
            p.view(-1)[:k] = math.log(0.0316 / (1 - 0.0316))
            done.append(f"{pname}[:{k}]=logit(0.0316)")
    return done


REF_MAX = {"attention": 16384}  # its reference forms the (L, L) score matrix: 32 GiB in float64 at L = 65536


def errors(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    d = (a.double() - ref.double())
    n = ref.double().norm().item()
    return (d.norm().item() / n if n > 0 else float("nan")), d.abs().max().item()


def run(layer, x, w, backend: str, grads: bool):
    """Forward (and input/parameter gradients of Σ w ⊙ y) of ``layer`` at ``x`` under ``backend``."""
    layer.zero_grad(set_to_none=True)
    xg = x.detach().clone().requires_grad_(grads)
    with use_backend(backend):
        if grads:
            y, _ = layer(xg, return_state=False)
            (y * w.to(y.dtype)).sum().backward()
        else:
            with torch.no_grad():
                y, _ = layer(xg, return_state=False)
    out = {"y": y.detach()}
    if grads:
        out["x"] = xg.grad.detach()
        out["p"] = {k: p.grad.detach().clone() for k, p in layer.named_parameters() if p.grad is not None}
    return out


def measure(name: str, d_model: int, batch: int, length: int, grad: bool, ref_max: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    l32 = build32(name, d_model, length)
    slow = slow_modes(l32)
    l64 = build32(name, d_model, length).to(torch.float64)
    l64.load_state_dict(l32.state_dict())
    gen = torch.Generator().manual_seed(seed + 1)
    x64 = torch.randn(batch, length, d_model, generator=gen, dtype=torch.float64)
    w64 = torch.randn(batch, length, d_model, generator=gen, dtype=torch.float64)
    x32 = x64.float()  # the float64 input is the float32 one widened: the same numbers
    x64 = x32.double()
    w64 = w64.float().double()
    rows = []
    oracle = None
    ref_max = min(ref_max, REF_MAX.get(name, ref_max))
    if length <= ref_max and "reference" in l64.backends:
        oracle = run(l64, x64, w64, "reference", grad)
    for backend in [b for b in ("native", "chunked", "fft", "reference") if b in l32.backends]:
        if backend == "reference" and length > ref_max:
            continue
        ref, ref_name = oracle, "reference f64" if oracle is not None else None
        if ref is None:
            ref, ref_name = run(l64, x64, w64, backend, grad), f"{backend} f64"
        t = time.perf_counter()
        try:
            got = run(l32, x32, w64.float(), backend, grad)
        except (RuntimeError, NotImplementedError, ValueError) as e:
            rows.append({"layer": name, "L": length, "backend": backend, "error": str(e)[:120]})
            continue
        secs = time.perf_counter() - t
        row = {"layer": name, "L": length, "backend": backend, "oracle": ref_name, "seconds": round(secs, 2)}
        row["y_rel"], row["y_max"] = errors(got["y"], ref["y"])
        if grad:
            row["dx_rel"], row["dx_max"] = errors(got["x"], ref["x"])
            pairs = [(errors(got["p"][k], ref["p"][k])[0], k) for k in ref["p"] if k in got["p"]]
            worst = max(pairs, default=(float("nan"), ""))
            row["dp_rel"], row["dp_worst"] = worst
        row["slow"] = len(slow)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def measure_step(name: str, d_model: int, length: int, seed: int) -> dict:
    """``step`` token by token in float32 against the float64 forward (reference backend)."""
    torch.manual_seed(seed)
    l32 = build32(name, d_model, length)
    slow_modes(l32)
    l64 = build32(name, d_model, length).to(torch.float64)
    l64.load_state_dict(l32.state_dict())
    if not l32.supports("step"):
        return {"layer": name, "L": length, "step": "unsupported"}
    gen = torch.Generator().manual_seed(seed + 1)
    x32 = torch.randn(1, length, d_model, generator=gen, dtype=torch.float64).float()
    with torch.no_grad():
        with use_backend("reference" if length <= 16384 and "reference" in l64.backends else "auto"):
            y64, _ = l64(x32.double(), return_state=False)
        h = l32.initial_state(1)
        ys = []
        t = time.perf_counter()
        for i in range(length):
            y_t, h = l32.step(x32[:, i], h)
            ys.append(y_t)
        secs = time.perf_counter() - t
    y32 = torch.stack(ys, dim=1)
    rel, mx = errors(y32, y64)
    row = {"layer": name, "L": length, "backend": "step f32", "oracle": "forward f64", "y_rel": rel, "y_max": mx,
           "seconds": round(secs, 2)}
    print(json.dumps(row), flush=True)
    return row


def _discrete_owner(layer: torch.nn.Module):
    """The module holding ``discrete()`` (the layer, or GSS's ``ssm``), or None."""
    for module in (layer, getattr(layer, "ssm", None)):
        if module is not None and callable(getattr(module, "discrete", None)):
            return module
    return None


def measure_rounded(name: str, d_model: int, length: int, backend: str, seed: int) -> dict | None:
    """Split the float32 error of a diagonal layer into conditioning and algorithm.

    The float64 layer is run twice under the reference loop: with its own discretisation (the oracle above) and with
    the float32 layer's discrete system (Ā, B̄, C) widened to float64, so that both runs use the same rounded
    eigenvalues. ``rounded_rel`` (float32 vs the second) is the error of the float32 algorithm; ``lambda_rel``
    (second vs first) is the error of rounding Ā to float32 alone, which no float32 algorithm can remove.
    """
    torch.manual_seed(seed)
    l32 = build32(name, d_model, length)
    slow_modes(l32)
    l64 = build32(name, d_model, length).to(torch.float64)
    l64.load_state_dict(l32.state_dict())
    own32, own64 = _discrete_owner(l32), _discrete_owner(l64)
    if own32 is None:
        return None
    gen = torch.Generator().manual_seed(seed + 1)
    x32 = torch.randn(1, length, d_model, generator=gen, dtype=torch.float64).float()
    with torch.no_grad(), use_backend("reference"):
        exact, _ = l64(x32.double(), return_state=False)
        widened = tuple(t.to(torch.complex128 if t.is_complex() else torch.float64) for t in own32.discrete())
        own64.discrete = lambda: widened  # instance attribute: this layer only
        rounded, _ = l64(x32.double(), return_state=False)
    with torch.no_grad(), use_backend(backend):
        y32, _ = l32(x32, return_state=False)
    row = {"layer": name, "L": length, "backend": backend, "rounded_rel": errors(y32, rounded)[0],
           "lambda_rel": errors(rounded, exact)[0], "total_rel": errors(y32, exact)[0]}
    print(json.dumps(row), flush=True)
    return row


OP_BACKENDS = {"lru": ("native", "chunked", "fft", "reference"), "s4d": ("native", "chunked", "fft", "reference"),
               "real": ("native", "chunked", "fft", "reference"), "mamba": ("native", "chunked", "reference"),
               "mamba2": ("native", "chunked", "reference"), "rglru": ("native", "chunked", "reference")}


def op_inputs(op: str, length: int, memory: float, seed: int, H: int = 8, N: int = 32) -> dict[str, torch.Tensor]:
    """The float64 inputs of ``op`` (names as its arguments), already rounded to float32 (the same numbers in both
    precisions). Slow modes: 1 - |λ| (Δ|A|, 1 - a) in [0.1, 1] / memory.

    lru: Ā = r e^{iθ}, θ in [0, 0.2π), B̄ ~ √(1 - r²) CN(0, 1); s4d: Ā = exp(Δ(-1/2 + iπn)), Δ = 2/memory, B̄ by ZOH;
    real: real Ā = r, B̄ ~ (1 - r) N(0, 1); mamba: Δ = softplus(δ), δ ~ softplus⁻¹(1/memory) + 0.1 N(0, 1), A in
    [-2, -1]; mamba2: P = 8, Δ in [0.1, 0.2] / memory, A in [-5, -1], one group; rglru: a = σ(Λ) in 1 - [0.1, 1] /
    memory, r in [0.1, 0.2] (a_t = a^{8 r_t}), i in [0, 1).
    """
    g = torch.Generator().manual_seed(seed)

    def rn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def ru(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    slow = 1e3 / memory
    if op in ("lru", "s4d", "real"):
        if op == "lru":
            r = 1 - slow * (1e-3 - 9e-4 * ru(H, N))
            A = torch.polar(r, 0.2 * math.pi * ru(H, N))
            B = torch.complex(rn(H, N), rn(H, N)) * (1 - r**2).sqrt()
        elif op == "s4d":
            dt = 1e-3 * slow
            A_c = torch.complex(torch.full((H, N), -0.5, dtype=torch.float64),
                                math.pi * torch.arange(N, dtype=torch.float64).expand(H, N))
            A = torch.exp(dt * A_c)
            B = (A - 1) / A_c
        else:
            A = 1 - slow * (1e-3 - 9e-4 * ru(H, N))
            B = (1 - A) * rn(H, N)
        C = torch.complex(rn(H, N), rn(H, N)) if A.is_complex() else rn(H, N)
        out = {"u": rn(1, length, H), "A_bar": A, "B_bar": B, "C": C, "D": rn(H)}
    elif op == "mamba":
        out = {"u": rn(1, length, H), "delta": 0.1 * rn(1, length, H) + math.log(math.expm1(1e-3 * slow)),
               "A": -(1 + ru(H, N)), "B": rn(1, length, N), "C": rn(1, length, N), "D": rn(H)}
    elif op == "mamba2":
        out = {"x": rn(1, length, H, 8), "dt": 1e-4 * slow * (1 + ru(1, length, H)), "A": -(1 + 4 * ru(H)),
               "B": rn(1, length, 1, N), "C": rn(1, length, 1, N)}
    elif op == "rglru":
        a = 1 - slow * (1e-3 - 9e-4 * ru(H))
        out = {"x": rn(1, length, H), "r": 0.1 + 0.1 * ru(1, length, H), "i": ru(1, length, H),
               "Lambda": torch.log(a / (1 - a))}
    else:
        raise ValueError(f"op must be one of {tuple(OP_BACKENDS)}; got {op!r}")
    return {k: (v.to(torch.complex64) if v.is_complex() else v.float()).to(v.dtype) for k, v in out.items()}


def op_call(op: str, a: dict[str, torch.Tensor], backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, final state) of ``op`` on the inputs ``a`` under ``backend``."""
    from ssmkit.ops.rglru import rglru
    from ssmkit.ops.scan import ssm_scan
    from ssmkit.ops.selective import selective_scan
    from ssmkit.ops.ssd import ssd

    if op in ("lru", "s4d", "real"):
        return ssm_scan(a["u"], a["A_bar"], a["B_bar"], a["C"], D=a["D"], backend=backend)
    if op == "mamba":
        return selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], delta_softplus=True, backend=backend)
    if op == "mamba2":
        return ssd(a["x"], a["dt"], a["A"], a["B"], a["C"], backend=backend)
    return rglru(a["x"], a["r"], a["i"], a["Lambda"], backend=backend)


def op_run(op: str, a64: dict[str, torch.Tensor], backend: str, dtype: torch.dtype, seed: int):
    """y, the final state and the gradients of Σ w ⊙ y + Σ v ⊙ state (fixed random w, v) in ``dtype``."""
    complex_of = {torch.float32: torch.complex64, torch.float64: torch.complex128}[dtype]
    a = {k: v.to(complex_of if v.is_complex() else dtype).requires_grad_(True) for k, v in a64.items()}
    y, h = op_call(op, a, backend)
    g = torch.Generator().manual_seed(seed + 7)
    h_real = torch.view_as_real(h) if h.is_complex() else h
    w = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    v = torch.randn(h_real.shape, generator=g, dtype=torch.float64).to(h_real.dtype)
    grads = torch.autograd.grad((y * w).sum() + (h_real * v).sum(), list(a.values()), allow_unused=True)
    return y.detach(), h.detach(), dict(zip(a, grads))


def measure_op(op: str, length: int, memory: float, ref_max: int, seed: int) -> list[dict]:
    """Float32 against float64 errors of ``op`` under each of its CPU backends (see the module docstring)."""
    a64 = op_inputs(op, length, memory, seed)
    rows = []
    for backend in OP_BACKENDS[op]:
        if backend == "reference" and length > ref_max:
            continue
        t = time.perf_counter()
        try:
            ref = op_run(op, a64, backend, torch.float64, seed)
            got = op_run(op, a64, backend, torch.float32, seed)
        except (RuntimeError, NotImplementedError) as e:
            rows.append({"op": op, "L": length, "backend": backend, "error": str(e)[:120]})
            continue
        real = [torch.view_as_real(t) if t.is_complex() else t for t in (got[1], ref[1])]
        row = {"op": op, "L": length, "memory": memory, "backend": backend, "y_rel": errors(got[0], ref[0])[0],
               "state_rel": errors(*real)[0]}
        for name, g64 in ref[2].items():
            if g64 is not None:
                g32, g64 = (torch.view_as_real(t) if t.is_complex() else t for t in (got[2][name], g64))
                row[f"d{name}_rel"] = errors(g32, g64)[0]
        row["seconds"] = round(time.perf_counter() - t, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def op_table(rows: list[dict]) -> str:
    """``measure_op`` rows as a markdown table: one line per (op, backend), y / state / worst gradient per length."""
    lengths = sorted({r["L"] for r in rows if "y_rel" in r})
    head = ["op", "backend"] + [f"y / state / worst grad, L={n}" for n in lengths]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    at = {(r["op"], r["backend"], r["L"]): r for r in rows if "y_rel" in r}
    for op, backend in dict.fromkeys((r["op"], r["backend"]) for r in rows if "y_rel" in r):
        cells = [op, backend]
        for n in lengths:
            r = at.get((op, backend, n))
            if r is None:
                cells.append("")
                continue
            worst = max((v, k[1:-4]) for k, v in r.items() if k.startswith("d") and k.endswith("_rel"))
            cells.append(f"{r['y_rel']:.1e} / {r['state_rel']:.1e} / {worst[0]:.1e} ({worst[1]})")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    """The rows as one markdown table: a line per (layer, backend), the lengths side by side."""
    lengths = sorted({r["L"] for r in rows if r["backend"] != "step f32" and "y_rel" in r})
    grad_lengths = sorted({r["L"] for r in rows if "dx_rel" in r})
    head = ["layer", "backend"] + [f"y rel L={n}" for n in lengths] + ["y max abs (at the longest L)"]
    head += [f"dx rel L={n}" for n in grad_lengths] + [f"dθ rel, worst parameter, L={n}" for n in grad_lengths]
    head += ["oracle at the longest L"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r["layer"], r["backend"]) for r in rows if "y_rel" in r))
    at = {(r["layer"], r["backend"], r["L"]): r for r in rows if "y_rel" in r}

    def fmt(v) -> str:
        return "" if v is None else f"{v:.1e}"

    for layer, backend in keys:
        got = [at.get((layer, backend, n), {}) for n in lengths]
        longest = max(n for (la, ba, n) in at if (la, ba) == (layer, backend))
        last = at[(layer, backend, longest)]
        name = backend if backend != "step f32" else f"step, float32, token by token (L={longest})"
        cells = [layer, name] + [fmt(g.get("y_rel")) for g in got] + [f"{fmt(last.get('y_max'))} ({longest})"]
        cells += [fmt(at.get((layer, backend, n), {}).get("dx_rel")) for n in grad_lengths]
        for n in grad_lengths:
            g = at.get((layer, backend, n), {})
            cells.append(f"{fmt(g.get('dp_rel'))} ({g.get('dp_worst')})" if "dp_rel" in g else "")
        cells.append(last.get("oracle", ""))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def rounded_table(rows: list[dict]) -> str:
    """The conditioning split (measure_rounded) as a markdown table."""
    out = ["| layer | backend | L | float32 vs float64 (total) | float32-rounded Ā alone (conditioning) | "
           "float32 algorithm (vs float64 on the same Ā) |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['layer']} | {r['backend']} | {r['L']} | {r['total_rel']:.1e} | {r['lambda_rel']:.1e} | "
                   f"{r['rounded_rel']:.1e} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 16384, 65536])
    parser.add_argument("--grad-lengths", type=int, nargs="*", default=[1024, 16384])
    parser.add_argument("--step-length", type=int, default=16384, help="0: skip the step comparison")
    parser.add_argument("--ref-max", type=int, default=65536, help="longest L whose oracle is the reference loop")
    parser.add_argument("--layers", nargs="+", default=None)
    parser.add_argument("--d-model", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--rounded", nargs="*", default=None, help="instead: measure_rounded of these layers")
    parser.add_argument("--table", nargs="+", default=None, help="print these JSON files' rows as markdown; stop")
    parser.add_argument("--ops", nargs="+", default=None, choices=tuple(OP_BACKENDS),
                        help="instead: the ops themselves, float32 against float64 per backend (measure_op)")
    parser.add_argument("--memory", type=float, default=1e3, help="--ops: 1 - |lambda| spans [0.1, 1] / memory")
    args = parser.parse_args(argv)
    if args.table:
        rows = [r for path in args.table for r in json.load(open(path))]
        if rows and all("op" in r for r in rows):
            print(op_table(rows))
            return 0
        split = [r for r in rows if "rounded_rel" in r]
        print(table([r for r in rows if "rounded_rel" not in r]) if len(split) < len(rows) else rounded_table(split))
        return 0
    torch.set_num_threads(1)
    rows = []
    if args.ops:
        for op in args.ops:
            for length in args.lengths:
                rows += measure_op(op, length, args.memory, args.ref_max, args.seed)
        if args.json:
            write_json(args.json, rows, indent=1)
        return 0
    if args.rounded is not None:
        for name in args.rounded:
            layer = build32(name, args.d_model, 8)
            for length in args.lengths:
                for backend in [b for b in ("native", "chunked", "fft", "reference") if b in layer.backends]:
                    row = measure_rounded(name, args.d_model, length, backend, args.seed)
                    rows += [row] if row else []
        if args.json:
            write_json(args.json, rows, indent=1)
        return 0
    for name in args.layers or layers.available():
        for length in args.lengths:
            grad = length in args.grad_lengths
            rows += measure(name, args.d_model, args.batch, length, grad, args.ref_max, args.seed)
        if args.step_length:
            rows.append(measure_step(name, args.d_model, args.step_length, args.seed))
    if args.json:
        write_json(args.json, rows, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
