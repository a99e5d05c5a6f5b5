"""The linear cross-entropy on the CPU (the default backend there, "chunked") against the plain full-logits
loss (logits = hidden @ weightᵀ, then F.cross_entropy), forward + backward, both measured in this run.

    python benchmarks/bench_linear_ce_cpu.py [--repeat 5]

The shapes: the tiny config's step (256 tokens, d = 32) and a wider hidden size, at the 219,520-id Korean
vocabulary. Reported: the best of --repeat runs, peak extra memory of the logits, and the largest gradient
difference from the full-logits loss.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from motif_data.kernels import linear_cross_entropy
from motif_data.kernels.linear_ce import reference_linear_cross_entropy

VOCAB = 219_520
SHAPES = ((256, 32), (1024, 256))


def _best_seconds(
    fn, hidden, weight, targets, repeat: int
) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    best = float("inf")
    for _ in range(repeat):
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        fn(hidden, weight, targets).backward()
        best = min(best, time.perf_counter() - start)
    return best, (hidden.grad.clone(), weight.grad.clone())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per row; the best is reported")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")  # fmt: skip
    print(
        f"{'tokens × d':>12} {'vocab':>8} {'full logits':>12} {'chunked':>9} {'speed-up':>9} {'max |Δgrad|':>12}"
    )
    for n, d in SHAPES:
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(n, d, generator=g).requires_grad_()
        weight = (torch.randn(VOCAB, d, generator=g) * 0.02).requires_grad_()
        targets = torch.randint(0, VOCAB, (n,), generator=g)
        full, want = _best_seconds(reference_linear_cross_entropy, hidden, weight, targets, args.repeat)
        ours, got = _best_seconds(
            lambda h, w, t: linear_cross_entropy(h, w, t, backend="chunked"),
            hidden,
            weight,
            targets,
            args.repeat,
        )
        diff = max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True))
        print(
            f"{n:>6} × {d:<4} {VOCAB:>8,} {full:>10.3f} s {ours:>7.3f} s {full / ours:>8.2f}× {diff:>12.1e}"
        )


if __name__ == "__main__":
    main()
