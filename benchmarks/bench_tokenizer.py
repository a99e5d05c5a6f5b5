"""Benchmark of the Korean-extended o200k tokenizer, all figures measured in this one run.

1. Training time of the full-size run (all Korean samples, 19,493 merges, 2 worker processes), against the
   anchor: plain single-threaded Python continued BPE on the same input, whose merges must equal ours.
2. Quality on Korean text NOT used for training: a second run trains on kowiki_train + 90 % of the movie
   reviews and is measured on kowiki_fineweb2_schema.parquet (other articles) and the held-out 10 % of
   reviews (every 10th document).
3. Encode speed on the same text, single thread: extended (tiktoken) vs o200k (tiktoken) vs exported HF.
4. Bytes/token per domain for all eight domains of ../shared/data, and whether ids equal o200k's.
5. HF tokenizer.json vs tiktoken on every document of the shared samples (id mismatches, decode failures).

Usage: python benchmarks/bench_tokenizer.py [--shared ../shared] [--quick]
CPU timings on a shared machine are noisy; the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import heapq
import os
import platform
import resource
import sys
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import regex
import tiktoken
import tokenizers

from motif_data import DOMAINS
from motif_data.tokenizer import TokenizerConfig, load, load_base, save, train_tokenizer
from motif_data.tokenizer.base import encoding_spec
from motif_data.tokenizer.corpus import iter_texts
from motif_data.tokenizer.evaluate import compare_file, hf_parity, unreachable_tokens
from motif_data.tokenizer.export import HF_FILE
from motif_data.tokenizer.train import has_hangul
from motif_data.tokenizer.vocab import FIRST_LEARNED, learned_budget


def plain_continued_bpe(
    files: list[Path], base: tiktoken.Encoding, budget: int, min_frequency: int, max_per_document: int
) -> tuple[list[tuple[int, int]], dict[str, float]]:
    """The anchor: continued BPE from o200k as a competent engineer writes it in plain Python, one thread.

    The rules of ``train_tokenizer``: NFC, o200k's split pattern, only pieces holding Hangul, a piece counted
    at most ``max_per_document`` times per document (0: no limit), o200k's own segmentation to start from,
    the most frequent pair merged left to right, ties to the smallest (left, right) ids, a pair only if the
    new token holds a whole Hangul character, none below ``min_frequency``. The usual incremental algorithm
    (pair counts in a dict, a pair → pieces index, only the pieces holding the merged pair updated, a heap of
    candidates) without our speed-ups: one process, tuple keys, no numpy, the garbage collector left on.
    Returns the merges and the seconds of each phase.
    """
    spec = encoding_spec(base)
    split = regex.compile(spec["pat_str"])
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    counts: Counter[str] = Counter()
    for path in files:
        for text in iter_texts(path):
            for piece, n in Counter(split.findall(unicodedata.normalize("NFC", text))).items():
                counts[piece] += min(n, max_per_document) if max_per_document else n
    pieces = [piece for piece in counts if has_hangul(piece)]
    weights = [counts[piece] for piece in pieces]
    seconds["count"] = time.perf_counter() - start

    start = time.perf_counter()
    # o200k's segmentation of each piece comes from tiktoken, as in ours: it is the base being continued,
    # not the part of training this anchor measures.
    words = [base._encode_single_piece(piece.encode()) for piece in pieces]
    seconds["segment"] = time.perf_counter() - start

    start = time.perf_counter()
    token = {rank: t for t, rank in spec["mergeable_ranks"].items()}
    pair_count: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for i, word in enumerate(words):
        for pair in pairwise(word):
            pair_count[pair] += weights[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_count.items() if n >= min_frequency]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while heap and len(merges) < budget:
        negative, pair = heapq.heappop(heap)
        n = pair_count.get(pair, 0)
        if n != -negative:  # pushed before earlier merges took some of its occurrences; counts only fall
            if n >= min_frequency:
                heapq.heappush(heap, (-n, pair))
            continue
        a, b = pair
        joined = token[a] + token[b]
        # errors="ignore" drops only bytes of incomplete characters: what remains is whole characters
        if not has_hangul(joined.decode("utf-8", "ignore")):
            continue
        new = FIRST_LEARNED + len(merges)
        token[new] = joined
        merges.append(pair)
        created: set[tuple[int, int]] = set()
        for i in where.pop(pair):
            word, out, j = words[i], [], 0
            while j < len(word):
                if j + 1 < len(word) and word[j] == a and word[j + 1] == b:
                    out.append(new)
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            if len(out) == len(word):
                continue  # the index is never pruned: an earlier merge took this piece's (a, b)
            w = weights[i]
            for old in pairwise(word):
                pair_count[old] -= w
            for fresh in pairwise(out):
                pair_count[fresh] += w
                where[fresh].add(i)
                if new in fresh:
                    created.add(fresh)
            words[i] = out
        del pair_count[pair]
        for fresh in created:
            if pair_count[fresh] >= min_frequency:
                heapq.heappush(heap, (-pair_count[fresh], fresh))
    seconds["merge"] = time.perf_counter() - start
    return merges, seconds


def _split_reviews(reviews: Path, out: Path) -> tuple[Path, Path]:
    """Every 10th review is held out; the rest may be trained on."""
    import orjson

    kept, held = out / "nsmc_train.jsonl", out / "nsmc_heldout.jsonl"
    with open(kept, "wb") as k, open(held, "wb") as h:
        for i, text in enumerate(iter_texts(reviews)):
            (h if i % 10 == 0 else k).write(orjson.dumps({"text": text}) + b"\n")
    return kept, held


def _speeds(texts: list[str], encoders: dict, rounds: int = 5) -> dict[str, float]:
    """MB/s of UTF-8 input per encoder, one document at a time on one thread.

    Timed in CPU seconds of this thread (all three encode on the calling thread), so time the shared
    machine gives to other processes does not count; the encoders also take turns and keep their best.
    """
    mb = sum(len(t.encode()) for t in texts) / 1e6
    best = dict.fromkeys(encoders, float("inf"))
    for _ in range(rounds):
        for name, encode in encoders.items():
            start = time.thread_time()
            for text in texts:
                encode(text)
            best[name] = min(best[name], time.thread_time() - start)
    return {name: mb / seconds for name, seconds in best.items()}


def _konlpy_documents(out: Path) -> Path | None:
    """KoNLPy's Korean corpora (constitution, National Assembly bills), one document a file: Korean from a
    source and genre the tokenizer never saw. None where KoNLPy (the demo extra) is not installed."""
    import orjson

    from motif_data.demo.sources import MissingExtra, konlpy_corpus

    try:
        corpus = konlpy_corpus()
    except MissingExtra:
        return None
    path = out / "konlpy_law.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps({"text": f.read_text(encoding="utf-8")}) + b"\n"
            for f in sorted(corpus.glob("*/*.txt"))
        )
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    parser.add_argument("--quick", action="store_true", help="skip the full parity pass over all documents")
    args = parser.parse_args()
    data, base_path = args.shared / "data", args.shared / "tokenizers" / "o200k_base.tiktoken"
    korean = data / "korean"
    print(
        f"# bench_tokenizer — {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"tiktoken {tiktoken.__version__}, tokenizers {tokenizers.__version__}; load average at start {os.getloadavg()}"
    )
    base = load_base(base_path)
    work = Path(tempfile.mkdtemp(prefix="bench_tokenizer_"))

    # 1. full-size training run
    inputs = tuple((str(p), 1) for p in sorted(korean.iterdir()))
    cpu = (
        resource.getrusage(resource.RUSAGE_SELF).ru_utime,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime,
    )
    config = TokenizerConfig(inputs=inputs, base=str(base_path))
    start = time.perf_counter()
    full = train_tokenizer(config, progress=True)
    train_s = time.perf_counter() - start
    main_cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu[0]
    worker_cpu = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu[1]
    save(full.encoding, work / "full", extra={"training.json": full.report})
    load_after = os.getloadavg()
    report = full.report
    print(
        f"\n## training: all Korean samples ({report['corpus']['documents']:,} documents, "
        f"{report['unique_pieces']:,} unique Hangul pieces)\n"
        f"learned {report['learned_tokens']:,} tokens in {train_s:.1f} s wall (counting included, 2 counting "
        f"processes; CPU: {main_cpu:.1f} s main + {worker_cpu:.1f} s counting processes), "
        f"stop: {report['stop_reason']}; unreachable learned tokens: {len(unreachable_tokens(full.encoding))}; "
        f"load average {load_after}"
    )
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    start = time.perf_counter()
    plain, phases = plain_continued_bpe(
        [Path(p) for p, _ in inputs],
        base,
        learned_budget(config.vocab_size),
        config.min_frequency,
        config.max_per_document,
    )
    plain_s = time.perf_counter() - start
    plain_cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu
    ours = full.learned.merges
    first = next(
        (i for i, (x, y) in enumerate(zip(ours, plain, strict=False)) if x != y), min(len(ours), len(plain))
    )
    same = (
        "equal"
        if ours == plain
        else f"DIFFER from merge {first} on: ours {ours[first : first + 1]}, anchor {plain[first : first + 1]} "
        f"({len(ours):,} vs {len(plain):,} merges)"
    )
    print(
        f"anchor, plain single-threaded Python continued BPE on the same input: {len(plain):,} merges in "
        f"{plain_s:.1f} s wall ({plain_cpu:.1f} s CPU; count {phases['count']:.1f} s, o200k segmentation "
        f"{phases['segment']:.1f} s, merges {phases['merge']:.1f} s); ours is {plain_s / train_s:.2f}× as fast; "
        f"merges {same}; load average {os.getloadavg()}"
    )

    # 2. held-out quality
    kept, held = _split_reviews(korean / "nsmc_reviews.jsonl.zst", work)
    start = time.perf_counter()
    split = train_tokenizer(
        TokenizerConfig(
            inputs=((str(korean / "kowiki_train.jsonl.zst"), 1), (str(kept), 1)), base=str(base_path)
        ),
        progress=False,
    )
    split_s = time.perf_counter() - start
    print(
        f"\n## Korean text not used for training (tokenizer trained on kowiki_train + 90 % of reviews in {split_s:.1f} s)"
    )
    print(
        "| file | relation to the training text | o200k bytes/token | extended bytes/token | change |\n"
        "|---|---|---|---|---|"
    )
    measured = [
        (korean / "kowiki_train.jsonl.zst", "trained on (in distribution)"),
        (korean / "kowiki_fineweb2_schema.parquet", "other articles, files not trained on"),
        (held, "held-out 10 % of the same reviews"),
    ]
    other = _konlpy_documents(work)
    if other is not None:
        measured.append((other, "another source: KoNLPy's constitution and bills (legal text)"))
    for path, relation in measured:
        row = compare_file(path, base, split.encoding)
        print(
            f"| {path.name} | {relation} | {row['o200k_bytes_per_token']:.3f} | "
            f"{row['extended_bytes_per_token']:.3f} | {row['bytes_per_token_change']:+.1%} |"
        )

    # 3. encode speed on the same texts
    # Fresh instances, loaded from the exported files: an Encoding that already ran multi-threaded batches
    # (compare_file above) encodes measurably slower on the main thread afterwards.
    hf = tokenizers.Tokenizer.from_file(str(work / "full" / HF_FILE))
    o200k, extended = load_base(base_path), load(work / "full")
    ko = [unicodedata.normalize("NFC", t) for t in iter_texts(korean / "kowiki_fineweb2_schema.parquet")]
    ko = ko[:1000]
    en = list(iter_texts(data / "web" / "dclm_samples.jsonl.zst"))
    print(
        "\n## encode speed, one thread, MB/s of UTF-8 input per CPU second of that thread (best of 5 interleaved rounds)"
    )
    print(
        "| text | o200k tiktoken | extended tiktoken | extended / o200k | exported HF tokenizer |\n|---|---|---|---|---|"
    )
    for name, texts in (("Korean Wikipedia (held out)", ko), ("English web (dclm)", en)):
        speed = _speeds(
            texts,
            {
                "o200k": o200k.encode_ordinary,
                "extended": extended.encode_ordinary,
                "hf": lambda t: hf.encode(t, add_special_tokens=False),
            },
        )
        o, e, h = speed["o200k"], speed["extended"], speed["hf"]
        print(f"| {name} | {o:.2f} | {e:.2f} | {e / o:.2f}× | {h:.2f} |")

    # 4. bytes/token per domain
    print("\n## bytes/token per domain (full-size tokenizer; Korean rows are its training data)")
    print("| domain | file | o200k | extended | change | ids equal o200k |\n|---|---|---|---|---|---|")
    for domain in DOMAINS:
        for path in sorted((data / domain).glob("*")):
            row = compare_file(path, base, full.encoding)
            texts = [unicodedata.normalize("NFC", t) for t in iter_texts(path)]
            same = base.encode_ordinary_batch(texts) == full.encoding.encode_ordinary_batch(texts)
            print(
                f"| {domain} | {path.name} | {row['o200k_bytes_per_token']:.3f} | "
                f"{row['extended_bytes_per_token']:.3f} | {row['bytes_per_token_change']:+.1%} | {'yes' if same else 'no'} |"
            )

    # 5. parity on every document
    if not args.quick:
        start = time.perf_counter()
        texts = (
            unicodedata.normalize("NFC", t)
            for domain in DOMAINS
            for path in sorted((data / domain).glob("*"))
            for t in iter_texts(path)
        )
        p = hf_parity(full.encoding, hf, texts)
        print(
            f"\n## HF tokenizer.json vs tiktoken, every document of the shared samples: {p['checked']:,} documents, "
            f"{p['mismatches']} id mismatches, {p['decode_failures']} failed decodes ({time.perf_counter() - start:.0f} s)"
        )
    print(f"\nload average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
