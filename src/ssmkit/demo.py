"""End-to-end demo: train a small S4D SequenceModel on the adding problem, then run it recurrently.

    python -m ssmkit.demo [--seconds 120] [--length 200] [--layer s4d]

1. Trains with a plain PyTorch loop (AdamW with the SSM parameter groups) for a fixed time budget on
   this machine, printing the train and test MSE against the trivial baseline 1/6 ≈ 0.167.
2. Runs the trained model one step at a time over test sequences and prints how far the recurrent
   outputs are from the parallel (convolution / chunked-scan) outputs.
"""

from __future__ import annotations

import argparse
import time

import torch

from ssmkit.data.adding import TRIVIAL_MSE, adding_problem
from ssmkit.layers import available
from ssmkit.models import SequenceModel
from ssmkit.train import param_groups


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ssmkit.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="training time budget (default 120)")
    parser.add_argument("--length", type=int, default=200, help="sequence length L (default 200)")
    parser.add_argument("--layer", default="s4d", choices=available(), help="layer name (default s4d)")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_test, y_test = adding_problem(1000, args.length, generator=gen)
    model = SequenceModel(
        d_input=2,
        d_model=args.d_model,
        n_layers=args.n_layers,
        layer=args.layer,
        layer_options={},
        d_output=1,
        head="regress",
        pool="last",
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"adding problem, L={args.length}: {args.layer} SequenceModel, {args.n_layers} blocks x d_model={args.d_model}, {n_params:,} parameters")
    print(f"trivial baseline (always predict 1): MSE {TRIVIAL_MSE:.3f}; training for {args.seconds:.0f} s on {torch.get_num_threads()} CPU threads")
    optimizer = torch.optim.AdamW(param_groups(model, lr=args.lr, weight_decay=0.01, verbose=True))
    loss_fn = torch.nn.MSELoss()

    def test_mse() -> float:
        model.eval()
        with torch.no_grad():
            mse = loss_fn(model(x_test)[0], y_test).item()
        model.train()
        return mse

    start, step, last_report, running = time.perf_counter(), 0, 0.0, []
    while time.perf_counter() - start < args.seconds:
        x, y = adding_problem(args.batch_size, args.length, generator=gen)
        loss = loss_fn(model(x)[0], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(loss.item())
        step += 1
        elapsed = time.perf_counter() - start
        if elapsed - last_report >= 10.0:
            last_report = elapsed
            train = sum(running) / len(running)
            running.clear()
            print(f"  {elapsed:5.0f} s  step {step:5d}  train MSE {train:.4f}  test MSE {test_mse():.4f}")
    final = test_mse()
    verdict = "below" if final < TRIVIAL_MSE else "NOT below"
    print(f"final test MSE {final:.4f} after {step} steps: {verdict} the trivial baseline {TRIVIAL_MSE:.3f} "
          f"({final / TRIVIAL_MSE:.1%} of it)")

    model.eval()
    x = x_test[:8]
    with torch.no_grad():
        y_parallel, _ = model(x)
        state = model.initial_state(x.shape[0])
        for t in range(x.shape[1]):
            y_step, state = model.step(x[:, t], state)
    diff = (y_step - y_parallel).abs().max().item()
    rel = diff / y_parallel.abs().max().item()
    ok = rel <= 1e-5
    print(f"recurrent run, {x.shape[1]} steps x 8 sequences: max |step - parallel| = {diff:.2e} "
          f"(relative {rel:.2e}): {'equal' if ok else 'NOT equal'} to fp32 precision (tolerance 1e-5)")
    return 0 if (final < TRIVIAL_MSE and ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
