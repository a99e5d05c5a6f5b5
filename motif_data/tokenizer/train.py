"""Continued BPE from o200k: count pre-tokenized pieces, start from o200k's own segmentation, merge pairs.

Why the result encodes exactly like tiktoken with the extended ranks: tiktoken repeatedly merges the
adjacent pair whose concatenation has the lowest rank (leftmost on ties). A new token's rank is above every
existing rank, so tiktoken first reaches the segmentation the previous vocabulary gave, then merges the new
pair left to right, which is what ``learn`` does. It never has to merge anything else afterwards: a
neighbouring pair (x, new) whose concatenation T were an existing token would mean the span of T passed
through [x, new], yet BPE restricted to that span runs as on T's bytes alone and there reaches T's own
two-part split from lower ranks before any higher-ranked token can form. ``tests/tokenizer/test_train.py``
checks the claim against tiktoken on every training piece.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import multiprocessing as mp
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import regex
import tiktoken

from motif_data.tokenizer.base import encoding_spec, load_base
from motif_data.tokenizer.corpus import CorpusStats, expand_inputs, iter_texts
from motif_data.tokenizer.vocab import (
    DEFAULT_VOCAB_SIZE,
    FIRST_LEARNED,
    MAX_VOCAB_SIZE,
    NAMED_SPECIALS,
    build_encoding,
    learned_budget,
)

__all__ = [
    "TokenizerConfig",
    "TrainResult",
    "Learned",
    "count_pieces",
    "learn",
    "train_tokenizer",
    "has_hangul",
]

_SHIFT = 20  # pair key = left << 20 | right; vocab sizes are capped at 2**20 (vocab.MAX_VOCAB_SIZE)
_HANGUL = regex.compile(r"\p{Script=Hangul}")
_CHUNK_CHARS = 2_000_000


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector: counting and merging allocate millions of small lists and
    dicts without reference cycles, and the collector's rescans of them took half of the merge time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def has_hangul(text: str) -> bool:
    return _HANGUL.search(text) is not None


def _holds_whole_hangul_char(token: bytes) -> bool:
    # errors="ignore" only drops bytes that are not part of a complete UTF-8 character, so a Hangul
    # character in the result is a complete one inside the token. Valid UTF-8 text can only contain
    # those bytes where it contains that character: such a token never matches text without Hangul.
    return _HANGUL.search(token.decode("utf-8", "ignore")) is not None


@dataclass(frozen=True)
class TokenizerConfig:
    """Validated arguments of ``motif-data tokenizer train``; ``inputs`` are (path or glob, weight)."""

    inputs: tuple[tuple[str, int], ...]
    base: str | None = None
    text_field: str = "text"
    vocab_size: int = DEFAULT_VOCAB_SIZE
    min_frequency: int = 2
    hangul_only: bool = True
    workers: int = 2
    # A piece counts at most this often per document (0: no limit). Repeats inside one document (the
    # names and terms of one article) then take less of the budget; on held-out Korean, 3 beat no limit.
    max_per_document: int = 3

    def __post_init__(self) -> None:
        problems = []
        if not self.inputs:
            problems.append("no --input given")
        for pattern, weight in self.inputs:
            if not isinstance(weight, int) or weight < 1:
                problems.append(f"--input {pattern}: weight must be a positive integer, got {weight!r}")
        lowest = FIRST_LEARNED + len(NAMED_SPECIALS) + 1
        if not lowest <= self.vocab_size <= MAX_VOCAB_SIZE:
            problems.append(
                f"--vocab-size {self.vocab_size} must be in [{lowest}, {MAX_VOCAB_SIZE}]: o200k uses "
                f"{FIRST_LEARNED} ids, the named specials {len(NAMED_SPECIALS)}, and at least one token is learned"
            )
        if self.min_frequency < 1:
            problems.append(f"--min-frequency must be >= 1, got {self.min_frequency}")
        if not self.text_field:
            problems.append("--text-field must not be empty")
        if self.max_per_document < 0:
            problems.append(f"--max-per-document must be >= 0 (0: no limit), got {self.max_per_document}")
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        if problems:
            raise ValueError("invalid tokenizer training arguments: " + "; ".join(problems))


def _count_worker(
    inbox, outbox, rank: int, pat_str: str, hangul_only: bool, cap: int, base_spec: dict
) -> None:
    """Phase 1: count pieces of the text chunks sent; phase 2: o200k-segment the pieces sent."""
    gc.disable()  # a short-lived process allocating millions of containers; see _gc_paused
    pattern = regex.compile(pat_str)
    by_weight: dict[int, Counter] = {}
    while (job := inbox.get()) is not None:
        texts, weight = job
        counts = by_weight.setdefault(weight, Counter())
        for text in texts:
            pieces = pattern.findall(unicodedata.normalize("NFC", text))
            counts.update(pieces)
            if cap and len(pieces) > cap:
                for piece, n in Counter(pieces).items():
                    if n > cap:
                        counts[piece] -= n - cap
    total: dict[str, int] = {}
    for weight, counts in by_weight.items():
        for piece, n in counts.items():
            if not hangul_only or has_hangul(piece):
                total[piece] = total.get(piece, 0) + n * weight
    outbox.put((rank, total))
    encode = tiktoken.Encoding(**base_spec)._encode_single_piece
    outbox.put((rank, [encode(piece.encode()) for piece in inbox.get()]))


def _gather(outbox, procs) -> dict:
    """One result from every worker, keyed by rank; a worker that died is an error, not a hang."""
    import queue

    results: dict = {}
    while len(results) < len(procs):
        try:
            rank, value = outbox.get(timeout=1.0)
            results[rank] = value
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a counting process died (exit code {dead[0]}); out of memory?") from None
    return results


@_gc_paused()
def count_pieces(
    files: list[tuple[Path, int]],
    base: tiktoken.Encoding,
    text_field: str = "text",
    hangul_only: bool = True,
    workers: int = 2,
    stats: CorpusStats | None = None,
    max_per_document: int = 0,
) -> tuple[list[str], list[int], list[list[int]]]:
    """Unique pieces, their weighted counts and o200k segmentations, counted in ``workers`` processes.

    With ``max_per_document`` a piece counts at most that often per document (0: no limit).
    """
    stats = CorpusStats() if stats is None else stats
    spec = encoding_spec(base)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    inboxes = [ctx.Queue(maxsize=4) for _ in range(workers)]
    outbox = ctx.Queue()
    procs = [
        ctx.Process(
            target=_count_worker,
            args=(inboxes[r], outbox, r, spec["pat_str"], hangul_only, max_per_document, spec),
            daemon=True,
        )
        for r in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        turn = itertools.cycle(range(workers))
        for path, weight in files:
            chunk, size = [], 0
            for text in iter_texts(path, text_field, stats):
                chunk.append(text)
                size += len(text)
                if size >= _CHUNK_CHARS:
                    inboxes[next(turn)].put((chunk, weight))
                    chunk, size = [], 0
            if chunk:
                inboxes[next(turn)].put((chunk, weight))
        for inbox in inboxes:
            inbox.put(None)
        partial = _gather(outbox, procs)
        counts = partial[0]
        for r in range(1, workers):
            for piece, n in partial[r].items():
                counts[piece] = counts.get(piece, 0) + n
        # A deterministic order for a given worker count; what is learned does not depend on it.
        pieces = list(counts)
        share = -(-len(pieces) // workers)
        for r, inbox in enumerate(inboxes):
            inbox.put(pieces[r * share : (r + 1) * share])
        parts = _gather(outbox, procs)
        segments = [seg for r in range(workers) for seg in parts[r]]
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    return pieces, [counts[p] for p in pieces], segments


@dataclass
class Learned:
    """Merges in order (new id = FIRST_LEARNED + index) and every piece's final segmentation."""

    merges: list[tuple[int, int]]
    tokens: list[bytes]
    segments: list[list[int]]
    stop_reason: str
    last_count: int


def _initial_pairs(segments: list[list[int]], weights: list[int]):
    """Weighted pair counts and pair → pieces index, built with numpy instead of ~3M dict updates."""
    lengths = np.fromiter(map(len, segments), dtype=np.int64, count=len(segments))
    flat = np.fromiter(itertools.chain.from_iterable(segments), dtype=np.int64, count=int(lengths.sum()))
    owner = np.repeat(np.arange(len(segments), dtype=np.int64), lengths)
    inside = owner[:-1] == owner[1:]
    keys = ((flat[:-1] << _SHIFT) | flat[1:])[inside]
    owner = owner[:-1][inside]
    unique, inverse = np.unique(keys, return_inverse=True)
    counts = np.bincount(inverse, weights=np.asarray(weights, dtype=np.float64)[owner], minlength=len(unique))
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(unique)))])
    pair_count = dict(zip(unique.tolist(), np.rint(counts).astype(np.int64).tolist(), strict=True))
    slot = dict(zip(unique.tolist(), range(len(unique)), strict=True))
    return pair_count, slot, owner[order], starts


@_gc_paused()
def learn(
    segments: list[list[int]],
    weights: list[int],
    token_bytes: Callable[[int], bytes],
    budget: int,
    min_frequency: int = 2,
    hangul_only: bool = True,
    progress: bool = True,
) -> Learned:
    """Merge the most frequent adjacent pair (ties: smallest (left, right) ids) ``budget`` times at most.

    ``segments`` (o200k's segmentation of each unique piece) is updated in place; ``token_bytes`` gives the
    bytes of a base id. With ``hangul_only`` a pair is only merged if the new token holds a whole Hangul
    character, so no learned token can ever apply to text without Hangul.
    """
    from tqdm import tqdm

    learned: list[bytes] = []
    mask = (1 << _SHIFT) - 1

    def tbytes(i: int) -> bytes:
        return learned[i - FIRST_LEARNED] if i >= FIRST_LEARNED else token_bytes(i)

    pair_count, slot, first_owners, starts = _initial_pairs(segments, weights)
    # whole[t]: token t holds a whole Hangul character, computed for the tokens that occur at all.
    whole = bytearray(1 << _SHIFT)
    if hangul_only:
        for t in np.unique(np.fromiter(pair_count, dtype=np.int64, count=len(pair_count)) >> _SHIFT).tolist():
            whole[t] = _holds_whole_hangul_char(tbytes(t))
        for t in np.unique(np.fromiter(pair_count, dtype=np.int64, count=len(pair_count)) & mask).tolist():
            whole[t] = _holds_whole_hangul_char(tbytes(t))

    def allowed(key: int) -> bool:
        a, b = key >> _SHIFT, key & mask
        # A side holding a whole Hangul character decides it; else one may form across the boundary.
        return not hangul_only or whole[a] or whole[b] or _holds_whole_hangul_char(tbytes(a) + tbytes(b))

    later_owners: dict[int, list[int]] = {}
    heap = [(-n, k) for k, n in pair_count.items() if n >= min_frequency and allowed(k)]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    stop_reason, last = "budget", 0
    bar = tqdm(total=budget, desc="merges", unit="merge", disable=not progress, mininterval=0.5)
    while len(merges) < budget:
        if not heap:
            stop_reason = f"no pair left with count >= {min_frequency}"
            break
        negative, key = heap[0]
        current = pair_count.get(key, 0)
        if current != -negative:  # stale entry: counts of existing pairs only ever fall
            if current >= min_frequency:
                heapq.heapreplace(heap, (-current, key))
            else:
                heapq.heappop(heap)
            continue
        heapq.heappop(heap)
        a, b = key >> _SHIFT, key & mask
        new = FIRST_LEARNED + len(merges)
        learned.append(tbytes(a) + tbytes(b))
        whole[new] = hangul_only and _holds_whole_hangul_char(learned[-1])
        merges.append((a, b))
        last = current
        owners = set(later_owners.pop(key, ()))
        if key in slot:
            j = slot.pop(key)
            owners.update(first_owners[starts[j] : starts[j + 1]].tolist())
        # Counts change in place (a pair may pass through 0 and stay in the dict; the heap ignores it).
        fresh: defaultdict[int, list[int]] = defaultdict(list)
        count, get, shift = pair_count, pair_count.get, _SHIFT
        new_high, b_high = new << shift, b << shift
        for i in owners:
            seg = segments[i]
            # Occurrences of (a, b), left to right without overlap, as tiktoken merges them.
            n, j, found = len(seg), 0, []
            while j < n - 1:
                if seg[j] == a and seg[j + 1] == b:
                    found.append(j)
                    j += 2
                else:
                    j += 1
            if not found:
                continue  # owner lists are never pruned: this piece lost the pair to an earlier merge
            # Update only the pairs around each merge. The left neighbour is read from the output, so
            # back-to-back merges (a b a b) cancel correctly.
            w, out, done = weights[i], seg[: found[0]], found[0]
            for j in found:
                if j > done:
                    out += seg[done:j]
                if out:
                    p = out[-1] << shift
                    count[p | a] = get(p | a, 0) - w
                    k = p | new
                    count[k] = get(k, 0) + w
                    fresh[k].append(i)
                if j + 2 < n:
                    q = seg[j + 2]
                    count[b_high | q] = get(b_high | q, 0) - w
                    k = new_high | q
                    count[k] = get(k, 0) + w
                    fresh[k].append(i)
                out.append(new)
                done = j + 2
            out += seg[done:]
            segments[i] = out
        del pair_count[key]  # every occurrence is gone, whatever the updates above said about it
        for k, owner_list in fresh.items():
            later_owners[k] = owner_list
            n = pair_count.get(k, 0)
            if n >= min_frequency and allowed(k):
                heapq.heappush(heap, (-n, k))
        bar.update()
    bar.close()
    return Learned(merges, learned, segments, stop_reason, last)


@dataclass
class TrainResult:
    encoding: tiktoken.Encoding
    learned: Learned
    pieces: list[str]
    counts: list[int]
    stats: CorpusStats
    report: dict = field(default_factory=dict)


def train_tokenizer(config: TokenizerConfig, progress: bool = True) -> TrainResult:
    """Read the inputs, learn up to the layout's budget of Korean tokens, return the extended encoding."""
    expand_inputs([pattern for pattern, _ in config.inputs])  # reports every unusable input at once
    files = [(path, weight) for pattern, weight in config.inputs for path in expand_inputs([pattern])]
    base = load_base(config.base)
    stats = CorpusStats()
    pieces, counts, segments = count_pieces(
        files, base, config.text_field, config.hangul_only, config.workers, stats, config.max_per_document
    )
    if not pieces:
        what = "pieces containing Hangul" if config.hangul_only else "text"
        raise ValueError(
            f"empty corpus: the inputs hold no {what} ({stats.documents} documents read, skipped "
            f"{dict(stats.skipped) or 'none'}); check --input and --text-field"
        )
    by_rank = {rank: token for token, rank in encoding_spec(base)["mergeable_ranks"].items()}
    learned = learn(
        segments,
        counts,
        by_rank.__getitem__,
        learned_budget(config.vocab_size),
        config.min_frequency,
        config.hangul_only,
        progress,
    )
    encoding = build_encoding(base, learned.tokens, config.vocab_size)
    report = {
        "inputs": [{"path": str(path), "weight": weight} for path, weight in files],
        "text_field": config.text_field,
        "vocab_size": config.vocab_size,
        "min_frequency": config.min_frequency,
        "max_per_document": config.max_per_document,
        "hangul_only": config.hangul_only,
        "corpus": stats.to_dict(),
        "unique_pieces": len(pieces),
        "piece_occurrences": int(sum(counts)),
        "learned_tokens": len(learned.tokens),
        "stop_reason": learned.stop_reason,
        "last_merge_count": learned.last_count,
    }
    return TrainResult(encoding, learned, pieces, counts, stats, report)
