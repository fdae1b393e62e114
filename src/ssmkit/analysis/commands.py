"""The analysis commands of the ``ssmkit`` CLI: ``analyze`` (a checkpoint's LTI layers) and ``zoo`` (the layer table).

    ssmkit analyze runs/adding-s4d/checkpoints/last.ckpt [--out DIR] [--dt 0.004] [--channels 8] [--no-plots]
        [--onnx [--intervals]]
    ssmkit zoo [--checkpoint CKPT] [--out DIR] [--format markdown|csv]

``analyze`` rebuilds the model from the checkpoint's configuration (``hyper_parameters["model"]``, written by
``ssmkit train``; or a DeepWiener's arguments, as in the ``model.pt`` that ``ssmkit sysid`` writes; see `load_model`), loads its weights and writes the report of :func:`ssmkit.analysis.write_report` (default folder:
``analysis/`` beside the checkpoints folder). ``zoo`` prints the table of :mod:`ssmkit.analysis.zoo`; with
``--out`` it writes ``zoo.md``, ``zoo.csv`` (and ``poles.csv`` with ``--checkpoint``; without it, an earlier run's
``poles.csv`` there is removed, so the folder holds one run's output) there.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

__all__ = ["analyze_main", "load_model", "zoo_main"]


def load_model(path: str):
    """The model of a checkpoint, with its weights, in eval mode.

    Two layouts are read: a checkpoint of ``ssmkit train`` (``hyper_parameters["model"]``, a SequenceModelConfig
    dict, and ``state_dict`` with keys prefixed ``model.``) gives a :class:`ssmkit.models.SequenceModel` in the saved
    weights' dtype (float32 for float16/bfloat16 weights); a
    DeepWiener file (``DeepWiener.checkpoint()``: ``deep_wiener``, the constructor's keyword arguments with ``dt``,
    and ``state_dict``; the ``model.pt`` of an ``ssmkit sysid`` run folder) gives a DeepWiener in the saved dtype, and
    a WienerEnsemble file (``wiener_ensemble``: the members' arguments, ``state_dict``; ``--recipe.combine average``)
    gives the ensemble, whose layers are named by member (``members.0.layers.0``, ...).

    A run folder stands for its checkpoint (:func:`ssmkit.train.transfer.checkpoint_file`, the rule ``init_from``
    follows too): ``ssmkit train`` prints "results in runs/<task>-<model>", and that folder was refused ("no checkpoint
    at").

    Args:
        path: the checkpoint file (read with ``torch.load(weights_only=True)``), or a run folder.

    Returns:
        the model.
    """
    import torch

    from ssmkit.train.transfer import checkpoint_file

    path = checkpoint_file(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path!r} holds no state_dict: not a checkpoint of 'ssmkit train' nor a DeepWiener file")
    if "deep_wiener" in checkpoint:
        from ssmkit.sysid.wiener import DeepWiener

        return DeepWiener.from_checkpoint(checkpoint)
    if "wiener_ensemble" in checkpoint:
        from ssmkit.sysid.ensemble import WienerEnsemble

        return WienerEnsemble.from_checkpoint(checkpoint)
    hyper = checkpoint.get("hyper_parameters") or {}
    if "model" not in hyper and "benchmark" in checkpoint:
        raise ValueError(
            f"{path!r} was written by an earlier 'ssmkit sysid' that did not store the model's arguments (no "
            "'deep_wiener' entry): rerun 'ssmkit sysid' to get a model.pt that 'ssmkit analyze' reads"
        )
    if "model" not in hyper:
        raise ValueError(
            f"{path!r} is not a checkpoint of 'ssmkit train' (no hyper_parameters['model'], the model configuration) "
            f"nor a DeepWiener file (no 'deep_wiener' arguments); found keys {sorted(checkpoint)}"
        )
    from ssmkit.layers.checks import checkpoint_dtype
    from ssmkit.models import SequenceModel, SequenceModelConfig

    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    # in the saved weights' dtype: a float64 run (precision "64") loaded into float32 lost its poles' digits silently
    # (float32 for weights saved in half precision: layers keep float32/float64 parameters)
    dtype = checkpoint_dtype(next((v.dtype for v in weights.values() if v.is_floating_point()), None))
    model = SequenceModel.from_config(SequenceModelConfig.from_dict(dict(hyper["model"])), dtype=dtype)
    model.load_state_dict(weights)
    return model.eval()


def _run_folder(checkpoint: str) -> str:
    """The run folder of a checkpoint: the folder above ``checkpoints/`` (``ssmkit train``'s layout), else the file's
    own folder (a ``model.pt`` of ``ssmkit sysid``)."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    return os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else folder


def _default_out(checkpoint: str) -> str:
    return os.path.join(_run_folder(checkpoint), "analysis")


def analyze_main(argv: list[str], prog: str = "ssmkit analyze") -> int:
    """``ssmkit analyze CHECKPOINT``: write the control analysis of a trained model; exit 0."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Control analysis of a trained model's LTI layers: poles (discrete and continuous), stability "
        "margin, DC gain, certified H-infinity norm, Bode plots, impulse and step responses, learned kernels; "
        "writes summary.md, analysis.json and PNG figures.",
    )
    parser.add_argument("checkpoint", help="a checkpoint written by 'ssmkit train' (checkpoints/last.ckpt), or the "
                        "model.pt of an 'ssmkit sysid' run (a DeepWiener: {'deep_wiener': its arguments, 'state_dict'}), "
                        "or the run folder itself")
    parser.add_argument("--out", default=None, help="output folder (default: analysis/ beside checkpoints/, or beside "
                        "the file)")
    parser.add_argument("--dt", type=float, default=None,
                        help="sampling time in seconds of a model without one (default: the model's, a DeepWiener's Ts, "
                        "which --dt may not contradict; else 1 = samples)")
    parser.add_argument("--channels", type=int, default=8, help="channels per layer in the figures (default 8)")
    parser.add_argument("--no-plots", dest="no_plots", action="store_true", help="write summary.md and analysis.json only")
    parser.add_argument("--onnx", action="store_true",
                        help="also write the model as ONNX graphs into the output folder: step.onnx (one step, for a "
                        "controller) and sequence.onnx (a whole sequence of any length), in real arithmetic; needs "
                        "ssmkit[onnx]")
    parser.add_argument("--intervals", action="store_true",
                        help="with --onnx: graphs for irregularly sampled data, with one more input after u: "
                        "interval (B) in step.onnx, intervals (B, L) in sequence.onnx, the time since the previous "
                        "sample in sampling periods (every layer must take intervals: s4d, s5, dss, dlr, lru, ema, s4, "
                        "mamba, mamba2, rglru)")
    args = parser.parse_args(argv)
    if args.intervals and not args.onnx:
        parser.error("--intervals adds the sampling-interval input to the ONNX graphs: give it with --onnx")
    if args.dt is not None and not (math.isfinite(args.dt) and args.dt > 0):
        parser.error(f"--dt must be the sampling time in seconds, a finite number > 0; got {args.dt}")
    if args.channels < 1:
        parser.error(f"--channels must be >= 1; got {args.channels}")
    from ssmkit.analysis.report import write_report

    from ssmkit.train.transfer import checkpoint_file

    checkpoint = checkpoint_file(args.checkpoint)  # a run folder: its checkpoint, found once
    model = load_model(checkpoint)
    own = getattr(model, "dt", None)
    if args.dt is not None and isinstance(own, float) and abs(args.dt - own) > 1e-12 * own:
        parser.error(f"the model carries its sampling time Ts = {own:g} s; --dt {args.dt:g} would put its poles, time "
                     "constants and frequencies on another time axis: leave --dt out")
    out = args.out or _default_out(checkpoint)
    paths = write_report(model, out, title=args.checkpoint, dt=args.dt, channels=args.channels, plots=not args.no_plots)
    with open(paths["summary"]) as f:
        print(f.read(), end="")
    print(f"analysis in {out}: " + ", ".join(os.path.basename(p) for p in paths.values()))
    return _write_onnx(model, out, args.intervals, _standardisation_line(args.checkpoint)) if args.onnx else 0


def _write_onnx(model, out: str, intervals: bool = False, standardised: str | None = None) -> int:
    """Write step.onnx and sequence.onnx into ``out`` and print their inputs; 1 (and the reasons) if one is not written.

    A model whose state grows with the sequence (attention, Mega, Hyena) has no step graph, and its sequence graph is
    written without a state (``u -> y`` from rest), which is said. With ``intervals`` both graphs take the sampling
    intervals after ``u`` (``export_onnx(..., intervals=True)``); a model with a layer that takes none gets neither.
    sequence.onnx of a model whose answers depend on where each sequence ends (a pool, or a bidirectional layer) takes
    each right-padded sequence's ``lengths`` (B,) too (`_sequence_options`). ``standardised``: the line saying how the
    inputs were standardised in training (`_standardisation_line`), or None."""
    from ssmkit.analysis.onnx_export import export_onnx
    from ssmkit.analysis.onnx_sequence import export_onnx_sequence

    failed = 0
    for name, export, u in zip(("step.onnx", "sequence.onnx"), (export_onnx, export_onnx_sequence),
                               _input_summary(model)):
        path = os.path.join(out, name)
        options = _sequence_options(model) if export is export_onnx_sequence else {}
        try:
            try:
                info = export(model, path, intervals=intervals, **options)
            except NotImplementedError as err:
                if export is not export_onnx_sequence or "with_state=False" not in str(err):
                    raise
                info = export_onnx_sequence(model, path, **{**options, "with_state": False})
                print(f"{name}: without a state (from rest), the model's state grows with the sequence")
        except (NotImplementedError, ImportError, ValueError) as err:
            if isinstance(err, ValueError) and not intervals:  # (with intervals: a layer that takes none, said)
                raise
            print(f"{name} not written: {err}", file=sys.stderr)
            failed = 1
            continue
        gaps = {"interval": ", interval (B)", "intervals": ", intervals (B, L)"}.get(info.interval_name, "")
        if getattr(info, "lengths_name", None):
            gaps += ", lengths (B, 2) int64" if getattr(model, "pair", False) is True else ", lengths (B) int64"
        print(f"{info.path}: inputs {u}{gaps}, {_state_summary(info.state_names, info.state_shapes)}; outputs y"
              + (" and next_state_0, ..." if info.state_names else ""))
    if intervals and not failed:  # the gaps' unit: a model trained at the median gap counts that, not the logger's
        print(f"interval, intervals: {_interval_unit(model)}")
    if standardised is not None:
        print(standardised)
    return failed


def _sequence_options(model) -> dict:
    """``{"lengths": True}`` for a model whose forward takes ``lengths`` and whose answers depend on where each
    sequence ends (a pool, or a bidirectional layer: without the input, a padded batch in sequence.onnx gave the
    shorter items wrong answers, silently), with ``"with_state": False`` for a pair model (its graph has no state:
    :mod:`ssmkit.analysis.onnx_pair`), else {}.

    Args:
        model: the exported model.
    """
    from torch import nn

    from ssmkit.analysis.onnx_export import _bidirectional_layers
    from ssmkit.analysis.onnx_sequence import _takes_lengths

    if not isinstance(model, nn.Module) or not _takes_lengths(model):
        return {}
    if getattr(model, "pair", False) is True:  # a whole-pair graph: from rest (no state), each document's length
        return {"lengths": True, "with_state": False}
    return {"lengths": True} if getattr(model, "pool", None) is not None or _bidirectional_layers(model) else {}


def _standardisation_line(checkpoint: str) -> str | None:
    """The line that says how to standardise the graphs' input ``u``, when the run folder of ``checkpoint``
    (``<run>/checkpoints/*.ckpt``) has a ``task.json`` with the training split's ``input_mean`` and ``input_std``
    (an ``arrays`` run with ``normalise``: the model was trained on (x − mean)/std, so the graphs take that too); else
    None.

    Args:
        checkpoint: the checkpoint path given to ``ssmkit analyze``.
    """
    import json

    try:
        with open(os.path.join(_run_folder(checkpoint), "task.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), list) for k in ("input_mean", "input_std")):
        return None
    mean, std = ("[" + ", ".join(f"{x:.6g}" for x in saved[k]) + "]" for k in ("input_mean", "input_std"))
    return (f"u: standardise the inputs as in training, (x - mean) / std per feature, mean {mean}, std {std} "
            "(task.json: input_mean, input_std)")


def _input_summary(model) -> tuple[str, str]:
    """How the step and sequence graphs take ``u``, for the printed summary: int64 token ids ``u (B)`` and ``u (B, L)``
    for a model with an embedding (``vocab_size``, e.g. an ``arrays`` run on token inputs), else features ``u (B, m)``
    and ``u (B, L, m)``, m the model's ``d_input`` (``n_inputs`` for a DeepWiener). A token model was printed as
    ``u (B, L, 1)`` (its ``d_input`` placeholder), while its graphs take integer ids without a feature axis.

    Args:
        model: the exported model.
    """
    pair = getattr(model, "pair", False) is True  # a pair model's sequence graph takes pairs (B, 2, L, ...)
    if getattr(model, "vocab_size", None) is not None:
        return "u (B) int64 token ids", "u (B, 2, L) int64 token ids" if pair else "u (B, L) int64 token ids"
    m = getattr(model, "d_input", None) or getattr(model, "n_inputs", None) or "m"
    return f"u (B, {m})", f"u (B, 2, L, {m})" if pair else f"u (B, L, {m})"


def _interval_unit(model) -> str:
    """What the graphs' interval input counts, for the printed summary: the time since the previous sample in periods
    of the model's Ts (``model.dt``, seconds, which a DeepWiener carries: with sample times its median gap, or the
    ``--dt`` it was given), or in sampling periods for a model without one."""
    dt = getattr(model, "dt", None)
    if isinstance(dt, (int, float)) and not isinstance(dt, bool):
        return f"the time since the previous sample in periods of the model's Ts = {dt:g} s"
    return "the time since the previous sample in the model's sampling periods"


def _state_summary(names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...]) -> str:
    """``state_0 (B, 3, 2, 2), ...``, consecutive parts of one shape as a range: ``state_0..state_19 (B, 16, 4, 2)``."""
    groups: list[list] = []
    for name, shape in zip(names, shapes):
        if groups and groups[-1][2] == shape:
            groups[-1][1] = name
        else:
            groups.append([name, name, shape])
    text = [f"{a}{'' if a == b else '..' + b} (B, {', '.join(map(str, shape))})" for a, b, shape in groups]
    return ", ".join(text) or "no state"


def zoo_main(argv: list[str], prog: str = "ssmkit zoo") -> int:
    """``ssmkit zoo``: print the table of the registered layers (markdown or CSV), optionally write both; exit 0."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="The control-theoretic table of every registered layer (arXiv 2403.16899's comparison), built "
        "from the layers' declarations; with --checkpoint, the trained model's pole statistics per layer.",
    )
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint of 'ssmkit train' or the model.pt of 'ssmkit sysid': add measured pole "
                        "statistics")
    parser.add_argument("--out", default=None, help="write zoo.md, zoo.csv (and poles.csv) into this folder; "
                        "without --checkpoint an earlier run's poles.csv there is removed")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="what to print (default markdown)")
    parser.add_argument("--d-model", dest="d_model", type=int, default=64,
                        help="width at which state sizes are counted (default 64)")
    args = parser.parse_args(argv)
    if args.d_model < 1:
        parser.error(f"--d-model must be >= 1; got {args.d_model}")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):  # was a FileExistsError traceback
        parser.error(f"--out must be a folder (zoo.md, zoo.csv and poles.csv go into it); {args.out!r} is a file")
    from ssmkit.analysis import zoo

    table = zoo.zoo_table(d_model=args.d_model)
    measured = zoo.pole_statistics(load_model(args.checkpoint)) if args.checkpoint else None
    files = {"zoo.md": zoo.to_markdown(table, measured), "zoo.csv": zoo.to_csv(table)}
    if measured is not None:
        files["poles.csv"] = zoo.to_csv(table, measured)
    if args.format == "markdown":
        print(files["zoo.md"], end="")
    else:
        print(files["zoo.csv"], end="")
        if measured is not None:
            print("\n" + files["poles.csv"], end="")
    if args.out:
        from ssmkit.files import write_text

        for name, body in files.items():  # each whole or not at all (UTF-8: the table holds λ, τ, √, —)
            write_text(os.path.join(args.out, name), body)
        # on stderr: stdout holds the table alone (`--format csv > table.csv` had the status line as its last row)
        print(f"{', '.join(files)} in {args.out}", file=sys.stderr)
        stale = os.path.join(args.out, "poles.csv")
        if measured is None and os.path.isfile(stale):  # an earlier --checkpoint's poles beside this zoo.md
            os.remove(stale)
            print(f"removed {stale}: it held an earlier checkpoint's poles (this run has no --checkpoint)",
                  file=sys.stderr)
    return 0
