"""``motif-data sft build CONFIG``: an SFT mixture → deduplicated, loss-masked token shards."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sft",
        help="post-training data: build loss-masked ChatML shards from conversation sources",
        description="Post-training data on datatrove: read conversations (HF messages, ShareGPT, prompt/response "
        "columns), deduplicate the rendered conversations across the mixture (exact + MinHash at a Jaccard "
        "threshold), drop samples under min_tokens, write token + loss-mask shards, stats.json, manifest.json.",
    )
    sub = p.add_subparsers(dest="sft_command", metavar="SUBCOMMAND", required=True)
    b = sub.add_parser("build", help="build an SFT mixture from a config (.toml, .yaml)")
    b.add_argument("config", help="SFT build config (.toml, .yaml)")
    b.add_argument("--out", help="output directory (overrides the config's 'output')")
    b.add_argument(
        "--force", action="store_true", help="replace a finished SFT build in the output directory"
    )
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from motif_data.sft import SftConfig, build_sft

    manifest = build_sft(SftConfig.load(args.config), out=args.out, force=args.force)
    if manifest is None:  # Slurm: submitted; build_sft said where the manifest will appear
        return 0
    print(
        f"wrote {manifest.root / 'manifest.json'}: {manifest.samples:,} samples, {manifest.tokens:,} tokens"
    )
    return 0
