"""The fused C steps refuse a tensor whose shape is not the one the kernel indexes it by (a ValueError naming it),
instead of reading and writing past its end: a Mamba conv state one column narrower than the conv's taps corrupted the
heap (options probe of 2026-12-05). Each case passes the layer's own arguments with one tensor cut or widened."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.native import native_status
from ssmkit.ops.native.mamba2_step import mamba2_step_native
from ssmkit.ops.native.mamba_step import mamba_step_native
from ssmkit.ops.native.rglru_step import rglru_step_native

F64 = torch.float64


def _runs(op: str) -> None:
    ok, why = native_status(op, F64)
    if not ok:
        pytest.skip(f"{op} does not run here: {why}")


def _rand(*shape):
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(sum(shape) + len(shape)))


def _mamba_args(B=2, H=6, N=4, R=3, W=4):
    return dict(xz=_rand(B, 2 * H), conv_state=_rand(B, H, W - 1), conv_weight=_rand(H, W), conv_bias=_rand(H),
                x_proj_weight=_rand(R + 2 * N, H), dt_proj_weight=_rand(H, R), dt_bias=_rand(H),
                A_log=_rand(H, N), D=_rand(H), ssm_state=_rand(B, H, N))


def _rglru_args(B=2, D=6, G=2, W=4):
    return dict(g=_rand(B, D), z=_rand(B, D), conv_state=_rand(B, D, W - 1), conv_weight=_rand(D, W),
                conv_bias=_rand(D), gate_a_weight=_rand(G, D // G, D // G), gate_a_bias=_rand(G, D // G),
                gate_x_weight=_rand(G, D // G, D // G), gate_x_bias=_rand(G, D // G), Lambda=_rand(D), c=8.0,
                h=_rand(B, D), reset=None)


def _mamba2_args(B=2, H=3, P=2, N=4, G=1, W=4):
    E = H * P
    C = E + 2 * G * N
    return dict(zxbcdt=_rand(B, E + C + H), conv_state=_rand(B, C, W - 1), conv_weight=_rand(C, W),
                conv_bias=_rand(C), dt_bias=_rand(H), A_log=_rand(H), D=_rand(H), norm_weight=_rand(E), eps=1e-5,
                norm_before_gate=False, ssm_state=_rand(B, H, P, N), ngroups=G)


CASES = [
    ("mamba_step", mamba_step_native, _mamba_args, "conv_state", lambda t: t[..., :-1]),
    ("mamba_step", mamba_step_native, _mamba_args, "A_log", lambda t: t[:-1]),
    ("mamba_step", mamba_step_native, _mamba_args, "x_proj_weight", lambda t: t[:-1]),
    ("rglru_step", rglru_step_native, _rglru_args, "conv_state", lambda t: t[..., :-1]),
    ("rglru_step", rglru_step_native, _rglru_args, "h", lambda t: t[:-1]),
    ("rglru_step", rglru_step_native, _rglru_args, "gate_x_weight", lambda t: t[:, :-1]),
    ("mamba2_step", mamba2_step_native, _mamba2_args, "conv_state", lambda t: t[..., :-1]),
    ("mamba2_step", mamba2_step_native, _mamba2_args, "conv_weight", lambda t: t[:-1]),
    ("mamba2_step", mamba2_step_native, _mamba2_args, "norm_weight", lambda t: t[:-1]),
]


@pytest.mark.parametrize("op,fn,make,name,cut", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_a_misshapen_tensor_is_refused_by_name(op, fn, make, name, cut):
    _runs(op)
    args = make()
    fn(**args)  # the consistent arguments run
    args[name] = cut(args[name]).contiguous()
    with pytest.raises(ValueError, match=f"{op.replace('_', ' ')} native: {name} must be"):
        fn(**args)
