"""Time a model's whole-sequence ONNX graph in onnxruntime against the model's eager forward and the step graph.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/onnx_sequence_speed.py [--threads 1] [--repeats 5]

Cases: an ML layer stack (SequenceModel, 2 blocks, S4D or S5, d_model 128, N 64, B 8, L 4 096) and a sysid model
(DeepWiener, 4 S4D blocks, d_model 16, N 8, B 1, L 16 384). Each prints the median of ``--repeats`` calls (ms) and
the largest difference from the eager output; the step graph runs the first 1 024 steps only and is scaled to L.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _case(name: str, model, u: torch.Tensor, threads: int, repeats: int, folder: Path) -> None:
    import onnxruntime

    from ssmkit.analysis import export_onnx, export_onnx_sequence

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    sequence = export_onnx_sequence(model, str(folder / f"{name}-sequence.onnx"))
    step = export_onnx(model, str(folder / f"{name}-step.onnx"))
    seq_session = onnxruntime.InferenceSession(sequence.path, options, providers=["CPUExecutionProvider"])
    step_session = onnxruntime.InferenceSession(step.path, options, providers=["CPUExecutionProvider"])
    B, L = u.shape[:2]
    feed = {sequence.input_name: u.numpy(), **dict(zip(sequence.state_names, sequence.initial_state(B)))}
    with torch.no_grad():
        want, _ = model(u)
        eager = _median_ms(lambda: model(u), repeats)
    got = seq_session.run(None, feed)[0]
    onnx_ms = _median_ms(lambda: seq_session.run(None, feed), repeats)
    steps = min(L, 1024)

    def run_steps():
        parts = step.initial_state(B)
        for t in range(steps):
            _, *parts = step_session.run(None, {step.input_name: u[:, t].numpy(), **dict(zip(step.state_names, parts))})

    step_ms = _median_ms(run_steps, max(1, repeats // 2)) * L / steps
    err = float((torch.from_numpy(got) - want).abs().max() / want.abs().max())
    print(f"{name}: B {B}, L {L}: eager forward {eager:.1f} ms, ONNX sequence graph {onnx_ms:.1f} ms "
          f"(max rel diff {err:.1e}), ONNX step graph x L {step_ms:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from ssmkit.models import SequenceModel
    from ssmkit.sysid import DeepWiener

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        for layer, options in (("s4d", {"d_state": 64}), ("s5", {"d_state": 64, "blocks": 4})):
            model = SequenceModel(d_input=128, d_model=128, n_layers=2, layer=layer, layer_options=options,
                                  d_output=128, pool=None, head="regress").eval()
            _case(f"SequenceModel({layer})", model, torch.randn(8, 4096, 128), args.threads, args.repeats,
                  Path(folder))
        wiener = DeepWiener(n_inputs=1, n_outputs=1, d_model=16, n_layers=4, layer="s4d",
                            layer_options={"d_state": 8}).eval()
        _case("DeepWiener(s4d)", wiener, torch.randn(1, 16384, 1), args.threads, args.repeats, Path(folder))


if __name__ == "__main__":
    main()
