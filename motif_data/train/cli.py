"""``motif-data train CONFIG``: train a Motif-architecture model on a built corpus with the mixture loader, or
fine-tune one on an SFT build."""

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
            "schedule, or fine-tune it on an SFT build (the loss on the assistants' tokens only), from the weights "
            "of train.init_from where set. Writes metrics.jsonl, loss.png, summary.json and checkpoints/ under "
            "--out. Several GPUs: torchrun --nproc_per_node=N -m motif_data train CONFIG."
        ),
    )
    p.add_argument("config", type=Path, help="training TOML, e.g. configs/tiny.toml")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    p.add_argument(
        "--corpus",
        default=None,
        help="override train.corpus (a build's or an SFT build's manifest.json, or a pipeline TOML)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="override train.init_from (a checkpoints/step-N.pt or a run directory); none: from the seed",
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
    _register_estimate(subparsers)


# NVIDIA's "141 GB" H200 is 143,771 MiB (nvidia-smi) = 140.4 GiB; rounded down.
_H200_GIB = 140.0


def _register_estimate(subparsers: argparse._SubParsersAction) -> None:
    # A command beside `train`, not under it: `motif-data train CONFIG` takes its config as the first word.
    p = subparsers.add_parser(
        "train-estimate",
        help="memory one GPU needs to train a config (parameters, gradients, optimizer, activations)",
        description=(
            "Estimate the memory of training on one GPU, without one: parameters, gradients and optimizer states "
            "(fp32; the model is built on the meta device to count its parameters) and the activations of one "
            "micro-batch (what autograd saves, counted op by op, under bf16 autocast and the Triton kernels). "
            "Sizes are printed in GiB (2**30 bytes); NVIDIA's GPU sizes are GB (10**9 bytes) or near it. Not "
            "counted: the CUDA context (~0.5 GiB) and allocator fragmentation."
        ),
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, default=None, help="training TOML with [model] and [train]")
    source.add_argument(
        "--preset",
        default=None,
        help="a model preset instead of a config (default motif-2.6b), with micro-batch 1 at its max_seq_len",
    )
    p.add_argument("--micro-batch", type=int, default=None, help="override train.micro_batch (sequences)")
    p.add_argument("--seq-len", type=int, default=None, help="override train.seq_len (tokens)")
    p.add_argument(
        "--activation-checkpointing",
        choices=("none", "block", "selective"),
        default=None,
        help="override train.activation_checkpointing",
    )
    p.add_argument("--optimizer", choices=("adamw", "muon"), default=None, help="override train.optimizer")
    p.add_argument(
        "--gpu-memory",
        type=float,
        default=_H200_GIB,
        metavar="GIB",
        help=f"GPU memory in GiB to compare with (default {_H200_GIB:g}: an H200, sold as 141 GB)",
    )
    p.set_defaults(func=run_estimate)


def run_estimate(args: argparse.Namespace) -> int:
    from motif_data.train.config import TrainConfig
    from motif_data.train.memory import estimate_for_run

    if args.config is not None:
        cfg = TrainConfig.load(args.config)
        source = str(args.config)
    else:
        preset = args.preset or "motif-2.6b"
        cfg = TrainConfig.from_dict({"model": {"preset": preset}, "train": {"micro_batch": 1}})
        cfg = cfg.replace(seq_len=cfg.model.max_seq_len)
        source = f"preset {preset}"
    given = (
        ("micro_batch", args.micro_batch),
        ("seq_len", args.seq_len),
        ("activation_checkpointing", args.activation_checkpointing),
        ("optimizer", args.optimizer),
    )
    if args.micro_batch is not None or args.seq_len is not None:
        cfg = cfg.replace(phase=())  # the shape given on the command line, instead of the phases'
    cfg = _overridden(cfg, given)
    # A run in phases: each phase's micro-batch shape (the one that needs the most decides)
    runs = [cfg.replace(seq_len=p.seq_len, micro_batch=p.micro_batch, phase=()) for p in cfg.phases] or [cfg]
    for i, run in enumerate(runs):
        est = estimate_for_run(run)
        dtype = "fp32" if run.dtype == "fp32" else "bf16 autocast"
        phase = f"phase {i}: " if cfg.phases else ""
        print(
            f"{source}: {phase}{est.n_parameters / 1e9:.3f} B parameters; micro-batch {run.micro_batch} × "
            f"{run.seq_len} tokens, {dtype}, {run.optimizer}, activation checkpointing {run.activation_checkpointing}"
        )
        for name, nbytes in est.rows():
            print(f"  {name:<26}{nbytes / 2**30:>9.2f} GiB")
        gib = est.total / 2**30
        verdict = "fits" if gib <= args.gpu_memory else "does not fit"
        print(f"{verdict} in {args.gpu_memory:g} GiB ({gib / args.gpu_memory:.0%} of it)")
    return 0


def _overridden(cfg, given: tuple[tuple[str, object], ...]):
    """``cfg`` with the command-line values that were given (not None) in place of its own, validated again."""
    overrides = {k: v for k, v in given if v is not None}
    return cfg.replace(**overrides) if overrides else cfg


def resolve_corpus(corpus: str | None, out: Path) -> Path:
    """The manifest.json to train on: the one named, or a pipeline TOML built (once) into ``out/corpus``."""
    if corpus is not None and not corpus.endswith(".toml"):
        path = Path(corpus)
        path = path / "manifest.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(
                f"train.corpus: no manifest at {path}: build the corpus first (motif-data build, or "
                "motif-data sft build for a fine-tune)"
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
    cfg = _overridden(cfg, given)
    if args.init_from is not None:  # "none" is the one override that unsets a setting
        cfg = cfg.replace(init_from=None if args.init_from == "none" else args.init_from)
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
