"""``motif-data tokenizer train|eval|export``: argument parsing only; the work is in the tokenizer modules."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

__all__ = ["register"]


def _input_spec(value: str) -> tuple[str, int]:
    """``PATH`` or ``PATH@WEIGHT``: a weight repeats every document of those files WEIGHT times in the counts."""
    head, sep, tail = value.rpartition("@")
    if sep and tail.isdigit() and not Path(value).exists():
        return head, int(tail)
    return value, 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="train, evaluate and export the Korean-extended o200k tokenizer",
        description="The o200k_base tokenizer extended with tokens learned by continued BPE on Korean text.",
    )
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--base", help="o200k_base.tiktoken file (default: $TIKTOKEN_CACHE_DIR or tiktoken's download)"
    )
    from motif_data.tokenizer.train import TokenizerConfig

    # The defaults are the config's own: written once, in TokenizerConfig.
    default = {f.name: f.default for f in dataclasses.fields(TokenizerConfig)}
    common.add_argument(
        "--text-field", default=default["text_field"], help="JSON field / parquet column holding the text"
    )

    train = sub.add_parser(
        "train",
        parents=[common],
        help="learn Korean tokens on top of o200k and write a tokenizer directory",
        description="Continued BPE from o200k_base on .jsonl, .jsonl.zst, .parquet or .txt inputs (NFC-normalized).",
    )
    train.add_argument(
        "--input",
        action="append",
        required=True,
        type=_input_spec,
        metavar="PATH[@WEIGHT]",
        help="file or glob; repeatable; @WEIGHT (integer) counts its documents WEIGHT times",
    )
    train.add_argument("--out", required=True, type=Path, help="tokenizer directory to create")
    train.add_argument(
        "--vocab-size",
        type=int,
        default=default["vocab_size"],
        help="total ids incl. specials (default %(default)s)",
    )
    train.add_argument(
        "--min-frequency",
        type=int,
        default=default["min_frequency"],
        help="stop when the best pair is rarer than this (default %(default)s)",
    )
    train.add_argument(
        "--hangul-only",
        action=argparse.BooleanOptionalAction,
        default=default["hangul_only"],
        help="learn only from pieces with Hangul, so text without Hangul keeps o200k's ids (default: on)",
    )
    train.add_argument(
        "--max-per-document",
        type=int,
        default=default["max_per_document"],
        help="count a piece at most this often per document, 0 = no limit (default %(default)s)",
    )
    train.add_argument(
        "--workers", type=int, default=default["workers"], help="processes for counting (default %(default)s)"
    )
    train.add_argument("--force", action="store_true", help="replace --out if it exists")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_run_train)

    evaluate = sub.add_parser(
        "eval",
        parents=[common],
        help="bytes/token vs o200k per file, learned-token use, unreachable tokens, HF parity",
        description="Compare an extended tokenizer with o200k on each input file (texts NFC-normalized).",
    )
    evaluate.add_argument("--tokenizer", required=True, type=Path, help="directory written by train/export")
    evaluate.add_argument(
        "--input", action="append", required=True, metavar="PATH", help="file or glob; repeatable"
    )
    evaluate.add_argument(
        "--parity", action="store_true", help="also check tokenizer.json == tiktoken on every document"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.set_defaults(func=_run_eval)

    export = sub.add_parser(
        "export",
        help="write a tokenizer directory (tiktoken + specials.json + HF tokenizer.json) from another one",
        description="Re-export a tokenizer directory; with --base-only, export plain o200k_base in the same layout.",
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenizer", type=Path, help="directory with tokenizer.tiktoken and specials.json")
    source.add_argument("--base-only", action="store_true", help="export o200k_base itself (with --base)")
    export.add_argument("--base", help="o200k_base.tiktoken file for --base-only")
    export.add_argument("--out", required=True, type=Path, help="directory to create")
    export.add_argument("--force", action="store_true", help="replace --out if it exists")
    export.set_defaults(func=_run_export)


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists: choose another --out or pass --force to replace it")


def _run_train(args) -> int:
    import time

    from motif_data.tokenizer.export import save
    from motif_data.tokenizer.train import TokenizerConfig, train_tokenizer

    config = TokenizerConfig(
        inputs=tuple(args.input),
        base=args.base,
        text_field=args.text_field,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        hangul_only=args.hangul_only,
        max_per_document=args.max_per_document,
        workers=args.workers,
    )
    _refuse_existing(args.out, args.force)
    start = time.perf_counter()
    result = train_tokenizer(config, progress=not args.quiet)
    seconds = time.perf_counter() - start
    save(result.encoding, args.out, extra={"training.json": result.report}, force=args.force)
    report = result.report
    print(
        f"learned {report['learned_tokens']} tokens ({report['stop_reason']}) from {report['unique_pieces']:,} "
        f"unique pieces of {report['corpus']['documents']:,} documents in {seconds:.1f} s; "
        f"skipped {report['corpus']['skipped'] or 'nothing'}; wrote {args.out}",
        file=sys.stderr,
    )
    return 0


def _run_eval(args) -> int:
    import json
    import unicodedata

    from motif_data.tokenizer.base import load_base
    from motif_data.tokenizer.corpus import expand_inputs, iter_texts
    from motif_data.tokenizer.evaluate import compare_file, hf_parity, learned_ids, unreachable_tokens
    from motif_data.tokenizer.export import HF_FILE, load

    extended = load(args.tokenizer)
    base = load_base(args.base)
    files = expand_inputs(args.input)
    result = {
        "tokenizer": str(args.tokenizer),
        "learned_tokens": len(learned_ids(extended)),
        "unreachable_tokens": len(unreachable_tokens(extended)),
        "files": [compare_file(path, base, extended, args.text_field) for path in files],
    }
    if args.parity:
        from tokenizers import Tokenizer

        hf = Tokenizer.from_file(str(args.tokenizer / HF_FILE))
        texts = (unicodedata.normalize("NFC", t) for path in files for t in iter_texts(path, args.text_field))
        result["hf_parity"] = hf_parity(extended, hf, texts)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        _print_table(result)
    p = result.get("hf_parity", {})
    failed = result["unreachable_tokens"] or p.get("mismatches") or p.get("decode_failures")
    return 1 if failed else 0


def _print_table(result: dict) -> None:
    print(f"{result['learned_tokens']} learned tokens, {result['unreachable_tokens']} unreachable")
    print(
        f"{'file':<48} {'o200k B/tok':>11} {'ext B/tok':>9} {'change':>8} {'new share':>9} {'learned used':>12}"
    )
    for row in result["files"]:
        print(
            f"{Path(row['file']).name:<48} {row['o200k_bytes_per_token']:>11.3f} "
            f"{row['extended_bytes_per_token']:>9.3f} {row['bytes_per_token_change']:>+8.1%} "
            f"{row['new_token_share_of_output']:>9.1%} {row['learned_tokens_used']:>12.1%}"
        )
    if "hf_parity" in result:
        p = result["hf_parity"]
        print(
            f"HF parity: {p['mismatches']} mismatches, {p['decode_failures']} failed decodes in {p['checked']:,} documents"
        )


def _run_export(args) -> int:
    from motif_data.tokenizer.base import load_base
    from motif_data.tokenizer.export import load, save

    enc = load_base(args.base) if args.base_only else load(args.tokenizer)
    _refuse_existing(args.out, args.force)
    save(enc, args.out, force=args.force)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
