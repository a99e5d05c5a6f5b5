"""``motif-data demo``: the main job end to end on real text available offline (or streamed from the hub)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run everything end to end on real text: build, tokenizer, plan, loader, training, report",
        description=(
            "Harvest real text of all eight domains from installed packages (or --from-hub), train the Korean "
            "tokenizer extension, build the corpus, plan the mixture, stream batches and train a tiny model. "
            "Writes report.md, PNGs, the manifest, stats and the tokenizer under --out."
        ),
    )
    p.add_argument(
        "--out", type=Path, default=Path("motif-demo"), help="output directory (default: motif-demo)"
    )
    p.add_argument("--force", action="store_true", help="reuse --out even if it is not empty")
    p.add_argument("--from-hub", action="store_true", help="stream small samples of the real sources instead")
    p.add_argument("--hub-docs", type=int, default=2_000, help="documents per source with --from-hub")
    p.add_argument("--batches", type=int, default=300, help="loader batches to stream (default 300)")
    p.add_argument("--steps", type=int, default=40, help="training steps of the tiny model (default 40)")
    p.add_argument("--quick", action="store_true", help="a reduced run (smaller text budget, fewer steps)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from motif_data.demo.run import DemoConfig, run_demo
    from motif_data.demo.sources import MissingExtra

    quick = dict(budget_bytes=300_000, loader_batches=60, train_steps=8) if args.quick else {}
    cfg = DemoConfig(
        out=args.out,
        force=args.force,
        from_hub=args.from_hub,
        hub_docs=args.hub_docs,
        **({"loader_batches": args.batches, "train_steps": args.steps} | quick),
    )
    try:
        run_demo(cfg)
    except MissingExtra as e:
        raise ValueError(str(e)) from None
    return 0
