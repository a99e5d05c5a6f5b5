"""``motif-data train CONFIG``: train a Motif-architecture model on a built corpus with the mixture loader."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["register", "resolve_corpus"]

# The sample build that a config without a corpus trains on (the repository's configs/ folder).
DEFAULT_CORPUS_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shared-sample.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a Motif-architecture model on a built corpus (CPU or GPUs, torchrun for several)",
        description=(
            "Train the model of CONFIG (a TOML with [model] and [train]) on the corpus it names, mixed by its "
            "schedule. Writes metrics.jsonl, loss.png, summary.json and checkpoints/ under --out. "
            "Several GPUs: torchrun --nproc_per_node=N -m motif_data train CONFIG."
        ),
    )
    p.add_argument("config", type=Path, help="training TOML, e.g. configs/tiny.toml")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    p.add_argument(
        "--corpus", default=None, help="override train.corpus (a manifest.json or a pipeline TOML)"
    )
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument(
        "--kernels", choices=("auto", "reference"), default=None, help="override train.kernels (timing runs)"
    )
    # No `choices` here: they live with the kernels, which this parser must not import (--help stays fast);
    # the config checks the value and names the backends.
    p.add_argument(
        "--loss-backend",
        default=None,
        help="override train.loss_backend, the linear cross-entropy backend (timing runs)",
    )
    p.set_defaults(func=run)


def resolve_corpus(corpus: str | None, out: Path) -> Path:
    """The manifest.json to train on: the one named, or a pipeline TOML built (once) into ``out/corpus``."""
    if corpus is not None and not corpus.endswith(".toml"):
        path = Path(corpus)
        path = path / "manifest.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(
                f"train.corpus: no manifest at {path}: build the corpus first (motif-data build)"
            )
        return path
    pipeline_config = Path(corpus) if corpus is not None else DEFAULT_CORPUS_CONFIG
    if not pipeline_config.is_file():
        raise FileNotFoundError(
            f"no corpus config at {pipeline_config}: set train.corpus to a manifest.json or a pipeline TOML"
        )
    target = out / "corpus"
    manifest = target / "manifest.json"
    if manifest.is_file():
        return manifest
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("under torchrun, build the corpus first and set train.corpus to its manifest.json")
    from motif_data.pipeline import BuildConfig, build

    print(f"train: building the corpus of {pipeline_config} into {target}", flush=True)
    build(BuildConfig.load(pipeline_config), out=target)
    return manifest


def run(args: argparse.Namespace) -> int:
    from motif_data.train.checkpoint import finished_summary
    from motif_data.train.config import TrainConfig
    from motif_data.train.loop import refuse_existing_run, train
    from motif_data.train.plot import plot_losses

    cfg = TrainConfig.load(args.config)
    given = (
        ("corpus", args.corpus),
        ("steps", args.steps),
        ("kernels", args.kernels),
        ("loss_backend", args.loss_backend),
    )
    overrides = {k: v for k, v in given if v is not None}
    if overrides:
        cfg = cfg.replace(**overrides)
    out = args.out if args.out is not None else Path("runs") / args.config.stem
    if not args.resume:
        refuse_existing_run(out)  # before the corpus build too: nothing under --out is touched
    elif finished_summary(out, cfg.steps) is not None:  # nothing to do: no rebuild, no re-plot
        return 0
    manifest = resolve_corpus(cfg.corpus, out)
    summary = train(cfg, out, manifest, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        png = plot_losses(
            out / "metrics.jsonl", out / "loss.png", title=f"{args.config.name}, model {cfg.preset}"
        )
        speed = f"{summary['median_tokens_per_s']:,.0f} tokens/s" if summary["median_tokens_per_s"] else ""
        mfu = f", MFU {summary['median_mfu']:.1%}" if summary["median_mfu"] is not None else ""
        print(f"train: done, final loss {summary['final_loss']:.4f}, {speed}{mfu}; loss curve {png}")
    return 0
