"""SFT build throughput on real question/answer pairs, next to an anchor measured in this run.

    python benchmarks/bench_sft.py                 # GSM8K train + PubMedQA from ../shared/data
    python benchmarks/bench_sft.py --repeat 3      # the sources 3× (copies count as exact duplicates)

Prints samples/s and MB/s per core of ``motif-data sft build`` (one task, one worker: every stage on one core,
end to end: read, spill, exact + MinHash dedup with the Jaccard check, render, masked shards, stats) and of
rendering + tokenizing alone, ours (``tokenizer.chat.render``: ids and mask) against transformers'
``apply_chat_template(..., tokenize=True)`` on the same conversations with the exported tokenizer. MB are the
UTF-8 bytes of the messages' contents. CPU timings on a shared machine are noisy: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOTIF_SHARED", ROOT.parent / "shared"))
O200K = SHARED / "tokenizers/o200k_base.tiktoken"
GSM8K = SHARED / "data/math/gsm8k_train.jsonl.zst"
PUBMEDQA = SHARED / "data/specialized/pubmedqa.jsonl.zst"


def _records(path: Path) -> list[dict]:
    import zstandard

    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    return [orjson.loads(line) for line in data.split(b"\n") if line.strip()]


def _conversations(repeat: int) -> tuple[list[list[dict]], list[dict], list[dict]]:
    gsm = _records(GSM8K)
    pubmed = []
    for r in _records(PUBMEDQA):
        question, *_, answer = r["text"].split("\n\n")  # question, contexts, long answer
        pubmed.append({"prompt": question, "response": answer})
    convs = [
        [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        for r in gsm
    ]
    convs += [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        for r in pubmed
    ]
    return convs * repeat, gsm * repeat, pubmed * repeat


def _write(path: Path, records: list[dict]) -> None:
    import zstandard

    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(orjson.dumps(r) + b"\n" for r in records)))


def _best(fn, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for path in (O200K, GSM8K, PUBMEDQA):
        if not path.is_file():
            print(
                f"needs {path} (set MOTIF_SHARED to the folder holding data/ and tokenizers/)",
                file=sys.stderr,
            )
            return 2
    from importlib.metadata import version

    import transformers

    from motif_data.sft import SftConfig, build_sft
    from motif_data.tokenizer import load_base, save
    from motif_data.tokenizer.chat import render
    from motif_data.tokenizer.vocab import FIRST_LEARNED, NAMED_SPECIALS, build_encoding

    convs, gsm, pubmed = _conversations(args.repeat)
    mb = sum(len(m["content"].encode()) for c in convs for m in c) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        enc = build_encoding(load_base(O200K), [], FIRST_LEARNED + len(NAMED_SPECIALS), name="o200k_chat")
        save(enc, tmp / "tok")
        hf = transformers.AutoTokenizer.from_pretrained(str(tmp / "tok"))
        ours = _best(lambda: [render(enc, c) for c in convs])
        anchor = _best(lambda: [hf.apply_chat_template(c, tokenize=True) for c in convs])
        _write(tmp / "gsm8k.jsonl.zst", gsm)
        _write(tmp / "pubmedqa.jsonl.zst", pubmed)
        config = SftConfig.from_dict(
            {
                "output": str(tmp / "out"),
                "tokenizer": str(tmp / "tok"),
                "sources": [
                    {
                        "name": "gsm8k",
                        "schema": "prompt_response",
                        "paths": [str(tmp / "gsm8k.jsonl.zst")],
                        "prompt_field": "question",
                        "response_field": "answer",
                    },
                    {
                        "name": "pubmedqa",
                        "schema": "prompt_response",
                        "paths": [str(tmp / "pubmedqa.jsonl.zst")],
                    },
                ],
            }  # fmt: skip
        )
        start = time.perf_counter()
        manifest = build_sft(config, log=lambda _: None)
        build = time.perf_counter() - start
    n = len(convs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; Python "
          f"{platform.python_version()}, tiktoken {version('tiktoken')}, datatrove {version('datatrove')}, "
          f"transformers {transformers.__version__}")  # fmt: skip
    print(f"input: {n:,} conversations (GSM8K train + PubMedQA, ×{args.repeat}), {mb:.2f} MB of message text; "
          f"kept {manifest.samples:,} samples, {manifest.tokens:,} tokens")  # fmt: skip
    print()
    print(f"{'what (1 core)':<58}{'samples/s':>12}{'MB/s':>8}{'ratio':>8}")
    rows = [
        ("sft build end to end (read, dedup, render, shards, stats)", build),
        ("render + tokenize: ours (ids + assistant mask)", ours),
        ("render + tokenize: transformers apply_chat_template (anchor)", anchor),
    ]
    for name, seconds in rows:
        print(f"{name:<58}{n / seconds:>12,.0f}{mb / seconds:>8.2f}{anchor / seconds:>7.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
