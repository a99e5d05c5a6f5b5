"""Equal-token comparison: Motif's blocks (differential attention + PolyNorm-gated MLP) against the conventional
decoder of the same size (softmax attention + SwiGLU), trained on the same corpus, mixture, schedule and order.

    PYTHONPATH=. python benchmarks/bench_arch.py --config configs/small.toml --corpus PATH/manifest.json \\
        --out runs/arch

Writes ``<out>/<variant>/metrics.jsonl`` for each and ``<out>/arch.png`` (loss curves and per-domain losses),
and prints final losses, speed and MFU of both from the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
from pathlib import Path

import torch

from motif_data import DOMAINS
from motif_data.train.config import TrainConfig
from motif_data.train.loop import train
from motif_data.train.plot import plot_comparison, read_metrics, tail_losses

VARIANTS = {
    "Motif (differential attention + PolyNorm)": {"attention": "differential", "mlp": "polynorm"},
    "baseline (softmax attention + SwiGLU)": {"attention": "standard", "mlp": "swiglu"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/small.toml"))
    parser.add_argument("--corpus", type=Path, required=True, help="manifest.json of a built corpus")
    parser.add_argument("--out", type=Path, required=True, help="directory for both runs and the PNG")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's)")
    args = parser.parse_args()

    base = TrainConfig.load(args.config)
    base = base.replace(steps=args.steps or base.steps, save_checkpoints=False)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, load {os.getloadavg()}"
    print(f"device: {device}; torch {torch.__version__}; python {platform.python_version()}")
    print(
        f"config: {args.config} ({base.preset}), {base.steps} steps × {base.tokens_per_step_per_rank:,} tokens"
    )
    summaries, tails, metrics = {}, {}, {}
    for label, arch in VARIANTS.items():
        run_dir = args.out / arch["attention"]
        cfg = base.replace(model=dataclasses.replace(base.model, **arch))
        summaries[label] = train(cfg, run_dir, args.corpus)
        metrics[label] = run_dir / "metrics.jsonl"
        tails[label] = tail_losses(read_metrics(metrics[label]))

    png = plot_comparison(
        metrics,
        args.out / "arch.png",
        title=f"{base.preset}, {base.steps * base.tokens_per_step_per_rank:,} tokens each",
    )
    print(f"\n{'variant':44s} {'params':>8s} {'loss (last 10%)':>16s} {'tokens/s':>10s} {'MFU':>6s}")
    for label, s in summaries.items():
        mfu = f"{s['median_mfu']:.1%}" if s["median_mfu"] is not None else "n/a"
        loss = tails[label]["all"]
        print(
            f"{label:44s} {s['parameters'] / 1e6:7.1f}M {loss:16.4f} {s['median_tokens_per_s']:10,.0f} {mfu:>6s}"
        )
    print("\nper-domain loss over the last 10% of the steps:")
    print(f"{'domain':14s}" + "".join(f"{label.split(' ')[0]:>12s}" for label in VARIANTS))
    for domain in DOMAINS:  # "—": no sequence of the domain was drawn in those steps
        cells = (tails[label][domain] for label in VARIANTS)
        print(f"{domain:14s}" + "".join(f"{v:12.4f}" if v == v else f"{'—':>12s}" for v in cells))
    print(f"\nwrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
