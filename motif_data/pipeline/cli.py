"""``motif-data build CONFIG``: run, resume or preview a corpus build."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "build",
        help="build per-domain token shards + manifest from the sources of a config",
        description="Read the sources of CONFIG (TOML or YAML), route them to the eight domains, filter, "
        "deduplicate, tokenize and write shards + manifest.json + stats.json. A killed build resumes "
        "where it stopped when started again with the same config and output directory.",
    )
    p.add_argument("config", help="build config (.toml, .yaml)")
    p.add_argument("--out", help="output directory (overrides the config's 'output')")
    p.add_argument("--force", action="store_true", help="replace a finished (or foreign) output directory")
    p.add_argument("--dry-run", action="store_true", help="print the plan (sources → domains, files, stages)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from motif_data.pipeline import BuildConfig, build, describe_plan

    config = BuildConfig.load(args.config)
    if args.dry_run:
        print(describe_plan(config, args.out))
        return 0
    manifest = build(config, out=args.out, force=args.force)
    if manifest is not None:
        print(f"wrote {manifest.root / 'manifest.json'}")
    return 0
