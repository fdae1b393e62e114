"""Numerical cross-check of ssmkit's GSS, Hyena and SGConv against their official pure-PyTorch implementations.

    python scripts/crosscheck_official_gss_hyena_sgconv.py \
        --gss-file PATH/lucidrains/gated-state-spaces-pytorch/gated_state_spaces_pytorch/gss.py \
        --hyena-file PATH/HazyResearch/safari/standalone_hyena.py \
        --sgconv-file PATH/ctlllll/SGConv/gconv_standalone.py

The official files are NOT part of ssmkit: bring your own copies (docs/benchmarks.md used lucidrains d484cf5, safari
02220c6, SGConv 97862df). They need einops (and SGConv opt_einsum); SGConv's unused imports of omegaconf and IPython
are stubbed here. Each check builds the official module, copies its weights into the ssmkit layer, and prints the
relative error max|a - b| / max|b| of the outputs (float32), with a float64 run of ssmkit's layer as the yardstick
for both.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import types

import torch

import ssmkit.layers as layers


def load(path: str, name: str):
    for stub in ("omegaconf", "IPython"):  # imported by gconv_standalone.py, never used by GConv
        module = types.ModuleType(stub)
        module.DictConfig = dict
        module.embed = lambda *a, **k: None
        sys.modules.setdefault(stub, module)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def report(name: str, ours: torch.Tensor, official: torch.Tensor, ours64: torch.Tensor) -> None:
    print(f"{name}: ssmkit vs official {err(ours, official):.1e}; against ssmkit float64: "
          f"ssmkit {err(ours, ours64):.1e}, official {err(official, ours64):.1e}")


# ----------------------------------------------------------------------------------------------------------------------


def gss_check(path: str, E: int, N_modes: int, L: int) -> None:
    off = load(path, "gss_official")
    torch.manual_seed(0)
    H_s = E // 4
    ref = off.GSS(dim=E, dim_expansion_factor=4, dss_kernel_N=N_modes, dss_kernel_H=H_s).eval()
    ours = layers.build("gss", d_model=E, d_state=2 * N_modes, expand=4, bottleneck=4)
    with torch.no_grad():
        ours.gate.weight.copy_(ref.to_u[0].weight)
        ours.down.weight.copy_(ref.to_v[0].weight)
        ours.norm.load_state_dict(ref.dss.norm.state_dict())
        ours.ssm.log_A_real.copy_(ref.dss.Lambda_real)
        ours.ssm.log_A_imag.copy_(ref.dss.Lambda_imag)
        ours.ssm.C[0].copy_(torch.stack([ref.dss.C_real, ref.dss.C_imag], dim=-1))
        ours.ssm.D.copy_(ref.dss.param_D)
        ours.up.weight.copy_(ref.to_gate.weight)
        ours.out.load_state_dict(ref.to_out.state_dict())
    x = torch.randn(2, L, E)
    with torch.no_grad():
        y_ref = ref(x) - x  # the official block adds its residual around its LayerNorm; ssmkit's Block does that
        u = ref.norm(x)
        y = ours(u)[0]
        y64 = ours.double()(u.double())[0]
    report(f"GSS E={E} N={N_modes} modes L={L}", y, y_ref, y64)


def hyena_check(path: str, D: int, L: int, order: int) -> None:
    off = load(path, "hyena_official")
    torch.manual_seed(0)
    ref = off.HyenaOperator(d_model=D, l_max=L, order=order, filter_order=64).eval()
    ours = layers.build("hyena", d_model=D, l_max=L, order=order, filter_width=64)
    mlp = [m for m in ref.filter_fn.implicit_filter if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        ours.in_proj.load_state_dict(ref.in_proj.state_dict())
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())
        ours.short_conv.weight.copy_(ref.short_filter.weight[:, 0])
        ours.short_conv.bias.copy_(ref.short_filter.bias)
        f = ours.filter
        f.w_in.copy_(mlp[0].weight), f.b_in.copy_(mlp[0].bias)
        for k, m in enumerate(mlp[1:-1]):
            f.w_hidden[k].copy_(m.weight), f.b_hidden[k].copy_(m.bias)
        f.w_out.copy_(mlp[-1].weight)
        f.freq.copy_(ref.filter_fn.implicit_filter[1].freq[0])
        f.deltas.copy_(ref.filter_fn.modulation.deltas.reshape(-1))
        ours.filter_bias.copy_(ref.filter_fn.bias.reshape(order - 1, D))
        z_ref = ref.filter_fn.pos_emb.z[0]  # (l_max, emb_dim), a parameter there, computed here
        z_ours, _ = f.positional_encoding(L)
        print(f"Hyena positional encoding (official parameter at init vs computed): {err(z_ours, z_ref):.1e}")
        h_ref = ref.filter_fn.filter(L)[0].T  # (D·(order-1), L)
        print(f"Hyena implicit filters: {err(ours.filters(L).reshape(-1, L), h_ref):.1e}")
    x = torch.randn(2, L, D)
    with torch.no_grad():
        y_ref = ref(x)
        y = ours(x)[0]
        y64 = ours.double()(x.double())[0]
        longer = ref(torch.randn(1, L + 8, D)).shape[1]
    report(f"Hyena D={D} order={order} L={L}", y, y_ref, y64)
    print(f"Hyena official output length for an input of l_max + 8 = {L + 8} steps: {longer} (cropped at l_max)")


def sgconv_check(path: str, H: int, L: int, bidirectional: bool) -> None:
    off = load(path, "sgconv_official")
    torch.manual_seed(0)
    ref = off.GConv(H, l_max=L, bidirectional=bidirectional, transposed=False, linear=True, kernel_dim=64).eval()
    ours = layers.build("sgconv", d_model=H, l_max=L, kernel_dim=64, bidirectional=bidirectional)
    assert ours.n_scales == ref.num_scales
    with torch.no_grad():
        for i, w in enumerate(ref.kernel_list):
            ours.sub_kernels[i].copy_(w)
        ours.D.copy_(ref.D[0])
        ours.reset_kernel_norm()  # the official code measures the norm at its first forward, just below
    x = torch.randn(2, L, H)
    tag = f"SGConv H={H} L={L}{' bidirectional' if bidirectional else ''}"
    with torch.no_grad():
        y_ref = ref(x)[0]
        report(tag, ours(x)[0], y_ref, copy.deepcopy(ours).double()(x.double())[0])
        for w in list(ref.kernel_list):  # a "training update" after the first forward: both keep the old normaliser
            w.mul_(1.7)
        ours.sub_kernels.mul_(1.7)
        print(f"{tag}, sub-kernels ×1.7 after the first forward: {err(ours(x)[0], ref(x)[0]):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gss-file")
    parser.add_argument("--hyena-file")
    parser.add_argument("--sgconv-file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.gss_file:
        gss_check(args.gss_file, E=64, N_modes=512, L=1024)
        gss_check(args.gss_file, E=32, N_modes=64, L=4096)
    if args.hyena_file:
        hyena_check(args.hyena_file, D=32, L=1024, order=2)
        hyena_check(args.hyena_file, D=16, L=2048, order=3)
    if args.sgconv_file:
        sgconv_check(args.sgconv_file, H=32, L=1024, bidirectional=False)
        sgconv_check(args.sgconv_file, H=16, L=2000, bidirectional=True)


if __name__ == "__main__":
    main()
