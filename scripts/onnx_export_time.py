"""The export time of a one-block model's whole-sequence ONNX graph, and onnxruntime's time to run it.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/onnx_export_time.py [--layers mamba rglru] [--d-model 128]

For each layer: a ``SequenceModel`` of one block of the layer's defaults (d_input 2, d_output 3), exported by
``export_onnx_sequence`` (the CPU seconds of the export: torch.export with a symbolic length, decompositions, ONNX
translation); then onnxruntime on one thread at B = 1, L = ``--length``, the median of ``--repeats`` runs, and the
largest relative difference from the model's ``forward``. Under torch.export the selective scan (Mamba) and the
linear recurrence (LRU, S5, RG-LRU) write a fixed number of steps out per chunk (ops/selective.py, ops/recurrence.py):
that number sets the export's time against onnxruntime's (docs/benchmarks.md, session of 2026-12-07 21:20).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["mamba", "rglru"])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args(argv)

    import onnxruntime

    from ssmkit.analysis import export_onnx_sequence
    from ssmkit.models import SequenceModel

    torch.set_num_threads(1)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as folder:
        for name in args.layers:
            torch.manual_seed(0)
            model = SequenceModel(d_input=2, d_model=args.d_model, n_layers=1, layer=name, d_output=3,
                                  head="regress", pool=None).eval()
            path = str(Path(folder) / f"{name}.onnx")
            start = time.process_time()
            graph = export_onnx_sequence(model, path)
            export_s = time.process_time() - start
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            u = torch.randn(1, args.length, 2)
            feed = graph.feed(u.numpy(), None)
            y = session.run(None, feed)[0]
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - start)
            with torch.no_grad():
                want = model(u)[0]
            err = float((torch.from_numpy(y) - want).abs().max() / want.abs().max())
            print(f"{name} d_model={args.d_model}: export {export_s:.1f} s CPU, onnxruntime L={args.length} "
                  f"{1e3 * statistics.median(times):.1f} ms, rel err {err:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
