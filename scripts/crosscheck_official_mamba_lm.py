"""Cross-check ``ssmkit.models.load_mamba`` against the official state-spaces/mamba language model, on the CPU.

The official Mamba (Gu & Dao, arXiv 2312.00752) and Mamba-2 (Dao & Gu, arXiv 2405.21060) LMs,
``mamba_ssm.models.mixer_seq_simple.MambaLMHeadModel``, are built with random (seeded) weights far from their
initialisation; their state dicts go through ``load_mamba``, and the logits of both are compared, in float32 and
float64, for whole sequences and token by token. ``mamba_state_dict`` then goes with ``load_state_dict(strict=True)``
into an official model built from ``mamba_config``. The script prints max |ssmkit - official| / max |official| for
each check, and exits 1 if one is over its tolerance.

The official package is not part of ssmkit. Get its source (checked at commit e9594ce) and einops, which it imports:

    git clone https://github.com/state-spaces/mamba /tmp/mamba && git -C /tmp/mamba checkout e9594ce
    pip install einops        # triton too, which torch brings on Linux; no CUDA, causal-conv1d or mamba-ssm build
    OMP_NUM_THREADS=1 python scripts/crosscheck_official_mamba_lm.py --mamba-ssm-src /tmp/mamba

(``--mamba-ssm-src`` is the folder holding ``mamba_ssm/``; ``git archive e9594ce mamba_ssm | tar -x -C DIR`` of a
clone gives just that.)

The official modules call CUDA / Triton kernels; on the CPU each is replaced by the official package's own torch
reference, with no formula written here:

- ``mamba_simple.selective_scan_fn`` and ``selective_scan_interface.selective_scan_fn`` -> ``selective_scan_ref``
  (Mamba built with ``use_fast_path=False``: the Conv1d path; no causal-conv1d package);
- ``layer_norm.rms_norm_fn`` (the blocks' and ``norm_f``'s RMSNorm, ``fused_add_norm=False``) ->
  ``layer_norm.rms_norm_ref``;
- ``layernorm_gated.rmsnorm_fn`` (Mamba-2's gated norm) -> ``layernorm_gated.rms_norm_ref`` (no upcast: float64 kept);
- ``mamba2.mamba_chunk_scan_combined`` (Mamba-2 built with ``use_mem_eff_path=False``) ->
  ``ssd_combined.ssd_selective_scan`` (the SSD scan as a selective scan; the adapter only drops the chunking and
  varlen arguments);
- ``selective_state_update`` set to None in both mixers: their ``step`` takes the torch fallback (Mamba-2's needs
  ``ngroups == 1`` and D per head, so the decoding check of Mamba-2 uses those).

``transformers`` and ``huggingface_hub`` are imported by modules the LM does not use here (generation's streamer,
the hub loaders, ``Mamba2``'s ``PyTorchModelHubMixin`` base): when absent they are stubbed with empty stand-ins.

The official code computes A = -exp(A_log.float()) and its scans in float32 whatever the model's dtype, so in
float64 the two agree to float32 round-off (~1e-7), not to float64's.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import types
from pathlib import Path

import torch

OFFICIAL_COMMIT = "e9594ce"
D_MODEL = 16
N_LAYER = 2
VOCAB = 37  # the official LM pads it to a multiple of 8: 40 rows
BATCH = 2
LENGTH = 12
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-5}  # both float32 round-off bound (see the docstring)


def import_official(src: Path) -> dict[str, types.ModuleType]:
    """Import the official modules from ``src`` (the folder holding ``mamba_ssm/``) and put in the torch references."""
    if not (src / "mamba_ssm" / "models" / "mixer_seq_simple.py").is_file():
        raise SystemExit(f"--mamba-ssm-src must be the folder holding mamba_ssm/ (state-spaces/mamba); got {src}")
    try:
        importlib.import_module("einops")
    except ImportError:
        raise SystemExit("the official modules import einops: pip install einops") from None
    sys.path.insert(0, str(src))
    # the package's __init__ imports every module (Mamba-3's kernels included); load the modules one by one instead
    package = types.ModuleType("mamba_ssm")
    package.__path__ = [str(src / "mamba_ssm")]
    sys.modules["mamba_ssm"] = package

    def stand_in(name: str, **attributes) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module

    try:
        importlib.import_module("transformers.generation")
    except ImportError:  # used by generation.py's sampling loop and hf.py's hub loader only
        unused = type("Unused", (), {})
        stand_in("transformers")
        stand_in("transformers.generation", GenerateDecoderOnlyOutput=unused, TextStreamer=unused)
        stand_in("transformers.utils", WEIGHTS_NAME="pytorch_model.bin", CONFIG_NAME="config.json")
        stand_in("transformers.utils.hub", cached_file=None)
    try:
        importlib.import_module("huggingface_hub")
    except ImportError:  # Mamba2's base class (save/load from the hub); a plain mixin stands in
        stand_in("huggingface_hub", PyTorchModelHubMixin=type("PyTorchModelHubMixin", (), {}))

    names = ["models.mixer_seq_simple", "models.config_mamba", "modules.mamba_simple", "modules.mamba2",
             "ops.selective_scan_interface", "ops.triton.layer_norm", "ops.triton.layernorm_gated",
             "ops.triton.ssd_combined", "utils.generation"]
    mods = {name.rsplit(".", 1)[-1]: importlib.import_module("mamba_ssm." + name) for name in names}
    scan, layer_norm, gated = mods["selective_scan_interface"], mods["layer_norm"], mods["layernorm_gated"]

    scan.selective_scan_fn = scan.selective_scan_ref  # ssd_selective_scan imports it from here when called
    mods["mamba_simple"].selective_scan_fn = scan.selective_scan_ref
    mods["mamba_simple"].selective_state_update = None
    mods["mamba2"].selective_state_update = None

    def rms_norm_fn(x, weight, bias, residual=None, eps=1e-6, dropout_p=0.0, prenorm=False, residual_in_fp32=False):
        # the signature of layer_norm.rms_norm_fn as RMSNorm.forward calls it (no dropout, no residual here)
        if dropout_p or residual is not None or prenorm:
            raise NotImplementedError("the cross-check runs fused_add_norm=False without dropout")
        return layer_norm.rms_norm_ref(x, weight, bias, eps=eps)

    def rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
        return gated.rms_norm_ref(x, weight, bias, z=z, eps=eps, group_size=group_size,
                                  norm_before_gate=norm_before_gate, upcast=False)

    layer_norm.rms_norm_fn = rms_norm_fn
    gated.rmsnorm_fn = rmsnorm_fn

    def chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, seq_idx=None, cu_seqlens=None,
                   dt_softplus=False, return_final_states=False, return_varlen_states=False):
        if seq_idx is not None or cu_seqlens is not None or return_final_states or return_varlen_states:
            raise NotImplementedError("the cross-check runs whole sequences without states")
        return mods["ssd_combined"].ssd_selective_scan(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                                       dt_softplus=dt_softplus)

    mods["mamba2"].mamba_chunk_scan_combined = chunk_scan
    return mods


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Draw every parameter at random, away from the official init (unsorted A, D ≠ 1, norms ≠ 1, biases ≠ 0), in
    float32 values (so that the float64 copy holds the same numbers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head.weight is the embedding: drawn once
            def rnd(scale: float = 1.0) -> torch.Tensor:
                return torch.randn(p.shape, generator=g) * scale

            if name.endswith("A_log"):
                value = torch.log(torch.rand(p.shape, generator=g) * 3 + 0.3)
            elif name.endswith(".D"):
                value = rnd()
            elif name.endswith("dt_proj.bias") or name.endswith("dt_bias"):
                value = rnd(0.5) - 1.8
            elif "norm" in name:  # blocks' norm, norm_f, Mamba-2's gated norm
                value = 1.0 + rnd(0.3)
            elif name.endswith("conv1d.weight"):
                value = rnd(0.5)
            elif name.endswith("bias"):
                value = rnd(0.2)
            elif "embedding" in name:
                value = rnd()
            else:  # a Linear's weight (out, in)
                value = rnd(p.shape[-1] ** -0.5)
            p.copy_(value)


def official_lm(mods, layer: str, seed: int, *, tied: bool = True, bias: bool = False, ngroups: int = 1,
                D_has_hdim: bool = False, d_state: int = 6) -> torch.nn.Module:
    """The official MambaLMHeadModel (RMSNorm, no fused add-norm, no fp32 residual), random weights, float32."""
    if layer == "mamba":
        ssm_cfg = {"d_state": d_state, "dt_rank": 2, "bias": bias, "use_fast_path": False}
    else:
        ssm_cfg = {"layer": "Mamba2", "d_state": d_state, "headdim": 8, "ngroups": ngroups, "bias": bias,
                   "D_has_hdim": D_has_hdim, "use_mem_eff_path": False, "chunk_size": 4}
    config = mods["config_mamba"].MambaConfig(
        d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, ssm_cfg=ssm_cfg, rms_norm=True, residual_in_fp32=False,
        fused_add_norm=False, pad_vocab_size_multiple=8, tie_embeddings=tied)
    torch.manual_seed(seed)
    model = mods["mixer_seq_simple"].MambaLMHeadModel(config)
    randomise(model, seed)
    return model.eval()


def official_from_config(mods, config: dict) -> torch.nn.Module:
    """``MambaLMHeadModel(MambaConfig(**config))`` with the CPU paths (no fast path, no fused add-norm, float32)."""
    config = dict(config, ssm_cfg=dict(config["ssm_cfg"]), fused_add_norm=False, residual_in_fp32=False)
    speed = {"use_mem_eff_path": False, "chunk_size": 4} if config["ssm_cfg"].get("layer") == "Mamba2" else {
        "use_fast_path": False}
    config["ssm_cfg"].update(speed)
    return mods["mixer_seq_simple"].MambaLMHeadModel(mods["config_mamba"].MambaConfig(**config)).eval()


def checkpoint_config(model) -> dict:
    """The config.json an official checkpoint carries (MambaConfig's fields; the speed-only options left out)."""
    config = dataclasses.asdict(model.config)
    config["ssm_cfg"] = {k: v for k, v in config["ssm_cfg"].items()
                         if k not in ("use_fast_path", "use_mem_eff_path", "chunk_size")}
    return config


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b the official)."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def official_decode(mods, model, ids: torch.Tensor) -> torch.Tensor:
    """The official logits token by token through each mixer's ``step`` (its torch fallback), (B, L, V)."""
    params = mods["generation"].InferenceParams(max_seqlen=ids.shape[1], max_batch_size=ids.shape[0])
    params.seqlen_offset = 1  # every token through step(); the cache starts at zero, as before a first token
    out = []
    for t in range(ids.shape[1]):
        out.append(model(ids[:, t:t + 1], inference_params=params).logits[:, 0])
        params.seqlen_offset += 1
    return torch.stack(out, 1)


def ssmkit_decode(model, ids: torch.Tensor) -> torch.Tensor:
    state = model.initial_state(ids.shape[0])
    out = []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        out.append(logits)
    return torch.stack(out, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mamba-ssm-src", type=Path, required=True,
                        help="the folder holding the official mamba_ssm/ package source")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mods = import_official(args.mamba_ssm_src)
    from ssmkit.models import load_mamba, mamba_config, mamba_state_dict

    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(args.seed + 100))
    cases = [
        # (name, layer, options, with_config, decode)
        ("mamba tied", "mamba", {"tied": True}, False, True),
        ("mamba untied, biases", "mamba", {"tied": False, "bias": True, "d_state": 4}, True, True),
        ("mamba2 tied", "mamba2", {"tied": True}, False, True),
        ("mamba2 untied, biases, ngroups=2, D per channel", "mamba2",
         {"tied": False, "bias": True, "ngroups": 2, "D_has_hdim": True, "d_state": 4}, True, False),
    ]
    failed = []
    print(f"official state-spaces/mamba {OFFICIAL_COMMIT} vs ssmkit {importlib.import_module('ssmkit').__version__}; "
          f"B={BATCH}, L={LENGTH}, d_model={D_MODEL}, n_layer={N_LAYER}, vocab {VOCAB} (40 padded)")
    print("max |ssmkit - official| / max |official|:")
    for i, (name, layer, options, with_config, decode) in enumerate(cases):
        official = official_lm(mods, layer, args.seed + i, **options)
        for dtype in (torch.float32, torch.float64):
            reference = official.to(dtype)
            sd = reference.state_dict()
            config = checkpoint_config(reference) if with_config else None
            model = load_mamba(sd, config, dtype=dtype)
            with torch.no_grad():
                expected = reference(ids).logits
                got = model(ids)[0]
                checks = {"forward": rel(got, expected)}
                if decode:
                    checks["official step"] = rel(got, official_decode(mods, reference, ids))
                checks["ssmkit step"] = rel(ssmkit_decode(model, ids), expected)
            for check, err in checks.items():
                ok = err < TOLERANCE[dtype]
                failed += [] if ok else [f"{name} {dtype} {check}"]
                print(f"  {name:48s} {str(dtype).replace('torch.', ''):8s} {check:14s} {err:.2e}"
                      f"{'' if ok else '  FAIL'}")
            # the inverse: an official model built from mamba_config(model) takes mamba_state_dict(model) strictly
            back = mamba_state_dict(model, "mamba_ssm")
            twin = official_from_config(mods, mamba_config(model)).to(dtype)
            twin.load_state_dict(back, strict=True)
            same = all(k in back and torch.equal(back[k], v) for k, v in sd.items())
            with torch.no_grad():
                twin_err = rel(twin(ids).logits, expected)
            ok = same and twin_err == 0.0
            failed += [] if ok else [f"{name} {dtype} mamba_state_dict"]
            print(f"  {name:48s} {str(dtype).replace('torch.', ''):8s} {'round trip':14s} {twin_err:.2e} "
                  f"(strict load; tensors equal: {same}){'' if ok else '  FAIL'}")
    # a control that the comparison can fail: two groups read without their config (the shapes alone say one group)
    official = official_lm(mods, "mamba2", args.seed + 3, **cases[3][2])
    with torch.no_grad():
        control = rel(load_mamba(official.state_dict())(ids)[0], official(ids).logits)
    print(f"  control: ngroups=2 loaded without its config (read as 1 group): {control:.2e} (must be large)")
    if control < 1e-3:
        failed.append("control")
    if failed:
        print("FAILED:", ", ".join(failed))
        return 1
    print("all checks within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
