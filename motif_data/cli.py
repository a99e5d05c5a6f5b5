"""The ``motif-data`` command: one entry point whose subcommands delegate to their capability.

Each capability has a ``cli`` module with ``register(subparsers)`` that adds its parser(s) and sets
``func``; those modules import nothing heavy at top level so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from motif_data import __version__

__all__ = ["main", "build_parser"]

# Order here is the order in ``motif-data --help``.
_COMMAND_MODULES = (
    "motif_data.demo",
    "motif_data.tokenizer.cli",
    "motif_data.pipeline.cli",
    "motif_data.sft.cli",
    "motif_data.mixer.cli",
    "motif_data.train.cli",
    "motif_data.kernels.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motif-data",
        description="Build, tokenize, mix and stream pre-training data the Motif-2.6B way.",
    )
    parser.add_argument("--version", action="version", version=f"motif-data {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        # User mistakes (bad config, missing file, existing output) end in one line, not a traceback.
        print(f"motif-data {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
