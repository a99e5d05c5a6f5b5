"""Benchmark of the Korean-extended o200k tokenizer, all figures measured in this one run.

1. Training time of the full-size run (all Korean samples, 19,493 merges, 2 worker processes), against the
   anchor: plain single-threaded Python continued BPE on the same input, whose merges must equal ours.
2. Quality on Korean text disjoint from the training files by source: two tokenizers trained on the same
   input (kowiki_train + reviews of 90 % of the films), one with the previous rule (plain counts) and one
   with the current default (a piece counted at most 3 times per document), measured against o200k on
   Wikipedia articles of other dump files (kowiki_fineweb2_schema.parquet), reviews of the other films
   (every 10th film by movie_id) and, where KoNLPy is installed, its constitution and bills; with each
   variant's unreachable tokens and whether it keeps o200k's ids on every non-Korean shared document.
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


def _split_reviews_by_film(reviews: Path, out: Path) -> tuple[Path, Path]:
    """Reviews of every 10th film (in movie_id order) are held out; the other films' may be trained on.

    Split by film, not by review: reviews of one film share its title, cast and plot words, so a review
    held out beside its film's other reviews is not disjoint from the training text.
    """
    import orjson

    from motif_data.textio import iter_chunks, iter_lines

    records = [orjson.loads(line) for line in iter_lines(iter_chunks(reviews, "zstd")) if line.strip()]
    held_films = set(sorted({r["movie_id"] for r in records})[::10])
    kept, held = out / "nsmc_train_films.jsonl", out / "nsmc_other_films.jsonl"
    with open(kept, "wb") as k, open(held, "wb") as h:
        for r in records:
            (h if r["movie_id"] in held_films else k).write(orjson.dumps({"text": r["text"]}) + b"\n")
    return kept, held


def _keeps_o200k_ids(enc: tiktoken.Encoding, base: tiktoken.Encoding, files: list[Path]) -> tuple[int, int]:
    """(documents, documents whose ids differ from o200k's) over ``files``, NFC-normalized."""
    documents = differ = 0
    for path in files:
        texts = [unicodedata.normalize("NFC", t) for t in iter_texts(path)]
        documents += len(texts)
        differ += sum(
            a != b
            for a, b in zip(base.encode_ordinary_batch(texts), enc.encode_ordinary_batch(texts), strict=True)
        )
    return documents, differ


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

    # 2. quality on text disjoint from the training files by source: previous rule vs current rule
    kept, held = _split_reviews_by_film(korean / "nsmc_reviews.jsonl.zst", work)
    train_input = ((str(korean / "kowiki_train.jsonl.zst"), 1), (str(kept), 1))
    default_cap = TokenizerConfig(inputs=train_input).max_per_document
    rules = {
        "previous rule (plain counts)": 0,
        f"current rule (≤ {default_cap}× per document)": default_cap,
    }
    variants, seconds = {}, {}
    for name, cap in rules.items():
        start = time.perf_counter()
        variants[name] = train_tokenizer(
            TokenizerConfig(inputs=train_input, base=str(base_path), max_per_document=cap), progress=False
        ).encoding
        seconds[name] = time.perf_counter() - start
    print(
        "\n## Korean disjoint from the training files by source (both trained on kowiki_train + reviews of "
        "90 % of the films; same input, same 19,493-token budget; "
        + ", ".join(f"{name} trained in {s:.1f} s" for name, s in seconds.items())
        + ")"
    )
    print(
        "| file | relation to the training text | o200k bytes/token | "
        + " | ".join(rules)
        + " |\n|---|---|---|"
        + "---|" * len(rules)
    )
    measured = [
        (korean / "kowiki_train.jsonl.zst", "trained on (in distribution)", False),
        (korean / "kowiki_fineweb2_schema.parquet", "Wikipedia articles of other dump files", True),
        (held, "reviews of the other 10 % of films", True),
    ]
    other = _konlpy_documents(work)
    if other is not None:
        measured.append((other, "another source: KoNLPy's constitution and bills (legal text)", False))
    pooled: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # name → bytes, o200k, extended tokens
    for path, relation, pools in measured:
        rows = {name: compare_file(path, base, enc) for name, enc in variants.items()}
        first = next(iter(rows.values()))
        cells = [
            f"{r['extended_bytes_per_token']:.3f} ({r['bytes_per_token_change']:+.1%})" for r in rows.values()
        ]
        print(
            f"| {path.name} | {relation} | {first['o200k_bytes_per_token']:.3f} | " + " | ".join(cells) + " |"
        )
        # Issue 21's combined figure pools the disjoint Wikipedia and review files: all bytes over all tokens.
        if pools:
            for name, r in rows.items():
                total = pooled[name]
                total[0] += r["bytes"]
                total[1] += r["o200k_tokens"]
                total[2] += r["extended_tokens"]
    b, o = next(iter(pooled.values()))[:2]
    cells = [f"{b / e:.3f} ({o / e - 1:+.1%})" for _, _, e in pooled.values()]
    print(f"| Wikipedia + reviews above, pooled | disjoint | {b / o:.3f} | " + " | ".join(cells) + " |")
    non_korean = [
        path for domain in DOMAINS if domain != "korean" for path in sorted((data / domain).glob("*"))
    ]
    for name, enc in variants.items():
        documents, differ = _keeps_o200k_ids(enc, base, non_korean)
        print(
            f"{name}: {len(unreachable_tokens(enc))} unreachable learned tokens; ids differ from o200k on "
            f"{differ} of {documents:,} non-Korean shared documents"
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
            same = _keeps_o200k_ids(full.encoding, base, [path])[1] == 0
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
