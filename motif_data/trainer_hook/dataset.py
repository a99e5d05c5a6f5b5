"""The resumable mixture stream a trainer iterates: packed sequences of a build, mixed by a schedule.

Global sequence g → (domain, k-th draw of that domain) comes from the mixer's QuotaSampler; the k-th draw
→ a packed window through a keyed permutation per (seed, domain, epoch). Everything is a pure function of
g, so the state is one integer (the global position) plus a hash of the configuration, and ranks and
DataLoader workers split the stream by arithmetic alone.

Phases (a run whose seq_len changes, docs/loader.md "Long context"): the sampler and the permutation work on
pages of ``page_len + 1`` tokens, page_len the longest phase's seq_len, one page per ``page_len`` training
tokens; a phase at seq_len s reads each page as page_len / s consecutive windows of s + 1 tokens, a window's
last token the next one's first. Each phase is a dataset of its own that starts at training token
``first_token``. Without phases a page is a window, as it always was.

Layout: the stream is consumed in global micro-batches of ``batch_size × world_size`` sequences; in each,
rank r takes the r-th run of ``batch_size`` consecutive sequences. Iterating the dataset, a rank's runs go to
its DataLoader workers round-robin, the order in which ``torch.utils.data.DataLoader`` collects them;
MixtureDataLoader hands them over in groups of consecutive runs, the groups round-robin.

MixtureDataLoader batches are compact: ``input_ids`` int32 (the shard dtype's values; widen with ``.long()``
on the device), ``domain`` int64, and ``documents``, a small int32 tensor of the document boundaries from
which `position_ids` (and ``cu_seqlens``, its first row) come, on whatever device the batch is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from motif_data import DOMAINS
from motif_data.mixer.permutation import hash64, permute
from motif_data.mixer.plan import packed_sequences
from motif_data.mixer.sampler import QuotaSampler
from motif_data.mixer.schedule import MixtureSchedule
from motif_data.shards import OFFSET_DTYPE, TOKEN_DTYPE, Manifest, ShardError
from motif_data.trainer_hook.state import StreamState

__all__ = ["MixtureDataset", "MixtureDataLoader", "DomainExhaustedError", "position_ids"]

_LOOKAHEAD = 16384  # sequences located per sampler call, at most
_POLICIES = ("repeat", "error")
# Tokens per worker hand-over: a DataLoader worker hands a tensor over through one shared-memory segment
# and a file descriptor, ~1 ms on a 2-core VM whatever its size, so batches travel many to a buffer.
_TRANSFER_TOKENS = 1 << 22
_INT32_MAX = 2**31 - 1
# Buffers kept for reuse per process: in flight to the main process (the DataLoader prefetches 2 a worker),
# viewed by the batches being consumed, and being filled.
_POOL = 6


class DomainExhaustedError(RuntimeError):
    """A domain with exhaustion policy ``error`` was asked for more sequences than one epoch holds."""


class _DomainData:
    """One domain's packed view: shards in manifest order, their cumulative token starts, lazy readers."""

    def __init__(self, manifest: Manifest, name: str, seq_len: int):
        info = manifest.domains[name]
        self.manifest = manifest
        self.shards = info.shards
        self.starts = np.concatenate([[0], np.cumsum([s.tokens for s in info.shards], dtype=np.int64)])
        self.sequences = packed_sequences(int(self.starts[-1]), seq_len)
        self.readers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        # Open memmaps are per process: a spawned DataLoader worker reopens what it reads.
        return {**self.__dict__, "readers": {}}

    def reader(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and document offsets of shard ``i`` as plain ndarray views of the memmaps (slicing a
        ``np.memmap`` subclass costs more than copying a 4k-token window)."""
        r = self.readers.get(i)
        if r is None:
            shard = self.manifest.open_shard(self.shards[i])
            r = self.readers[i] = (shard.tokens.view(np.ndarray), shard.offsets.view(np.ndarray))
        return r

    def shards_of(self, starts: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For windows of ``span`` tokens at domain-stream offsets ``starts``: the shard each begins in, the
        offset in it, and the tokens it holds from there (``< span`` where a window crosses into the next)."""
        shard = np.searchsorted(self.starts, starts, side="right") - 1
        off = starts - self.starts[shard]
        return shard, off, np.minimum(self.starts[shard + 1] - starts, span)


def _positions(docs: np.ndarray, cuts: np.ndarray, out: np.ndarray, arange: np.ndarray) -> None:
    """``out[j]`` = j − start of j's document, for the flat (rows × span) tokens whose parts `_locate` listed."""
    np.subtract(arange[: len(out)], docs.repeat(np.diff(cuts, append=len(out))), out=out)


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError(
            f"give both rank and world_size or neither, got rank={rank}, world_size={world_size}"
        )
    return int(rank), int(world_size)


class MixtureDataset(IterableDataset):
    """Infinite (or ``max_sequences``-long) stream of packed sequences mixed by ``schedule``.

    Items: ``input_ids`` (seq_len + 1, int64; train on ``[:-1]`` → ``[1:]``), ``domain`` (int64 index into
    DOMAINS), ``position_ids`` (seq_len + 1, int64, restarting at 0 at each document: feed ``[:-1]`` to the
    model for RoPE and document-masked attention).

    ``exhaustion``: ``"repeat"`` (a new shuffled epoch of the domain) or ``"error"``, or a dict per domain.
    ``tokenizer``: a ``tiktoken.Encoding`` or fingerprint string that must match the manifest's tokenizer.
    ``verify``: check every shard's sha256 against the manifest once, at construction.
    ``page_len``, ``first_token``: one phase of a run with phases (module docstring): the run's longest
    seq_len (a multiple of ``seq_len``) and the training token where the phase starts (a multiple of it);
    ``max_sequences`` then ends the phase.
    """

    def __init__(
        self,
        manifest: str | os.PathLike | Manifest,
        schedule: MixtureSchedule,
        seq_len: int,
        seed: int,
        rank: int | None = None,
        world_size: int | None = None,
        *,
        batch_size: int = 1,
        exhaustion: str | Mapping[str, str] = "repeat",
        tokenizer=None,
        verify: bool = False,
        max_sequences: int | None = None,
        page_len: int | None = None,
        first_token: int = 0,
    ):
        super().__init__()
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        policies = {d: exhaustion for d in DOMAINS} if isinstance(exhaustion, str) else dict(exhaustion)
        problems = []
        if not isinstance(seq_len, (int, np.integer)) or seq_len <= 0:
            problems.append(f"seq_len must be a positive integer, got {seq_len!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            problems.append(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            problems.append(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size):
            problems.append(
                f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}"
            )
        bad = {d: p for d, p in policies.items() if d not in DOMAINS or p not in _POLICIES}
        if bad:
            problems.append(f"exhaustion must map domains of {DOMAINS} to one of {_POLICIES}, got {bad}")
        if max_sequences is not None and max_sequences < 0:
            problems.append(f"max_sequences must be >= 0, got {max_sequences}")
        page = seq_len if page_len is None else page_len
        if not isinstance(page, (int, np.integer)) or page <= 0 or (not problems and page % seq_len):
            problems.append(
                f"page_len must be a multiple of seq_len {seq_len} (the longest phase's seq_len, which every "
                f"phase's seq_len divides), got {page_len!r}"
            )
        elif not isinstance(first_token, (int, np.integer)) or first_token < 0 or first_token % page:
            problems.append(
                f"first_token must be a multiple of page_len {page} (phases start at whole pages), got "
                f"{first_token!r}"
            )
        if not problems and batch_size * (seq_len + 1) > _INT32_MAX:
            problems.append(
                f"batch_size × (seq_len + 1) = {batch_size * (seq_len + 1)} exceeds 2**31 - 1, the int32 "
                "document boundaries of a batch: lower batch_size"
            )
        if self.manifest.tokenizer.vocab_size > _INT32_MAX:
            problems.append(
                f"the manifest's vocab_size {self.manifest.tokenizer.vocab_size} exceeds 2**31 - 1: batches "
                "carry int32 token ids"
            )
        if problems:
            raise ValueError("invalid MixtureDataset: " + "; ".join(problems))
        self.schedule, self.seq_len, self.seed = schedule, int(seq_len), int(seed)
        self.batch_size, self.max_sequences = int(batch_size), max_sequences
        self.policies = {d: policies.get(d, "repeat") for d in DOMAINS}
        self.page_len, self.first_token = int(page), int(first_token)
        self._parts = self.page_len // self.seq_len  # windows a page holds
        self._first_slot = self.first_token // self.page_len  # pages drawn before this phase
        if tokenizer is not None:
            self._check_tokenizer(tokenizer)
        self.sampler = QuotaSampler(schedule, self.page_len, self.seed)
        self.domains: dict[int, _DomainData] = {}
        missing, active = [], schedule.active_domains()
        for d, name in enumerate(DOMAINS):
            if name in self.manifest.domains:
                self.domains[d] = _DomainData(self.manifest, name, self.page_len)
            if name in active and (d not in self.domains or not self.domains[d].sequences):
                missing.append(name)
        if missing:
            raise ValueError(
                f"the schedule draws from {missing} but the manifest has no packed sequence of "
                f"{self.page_len + 1} tokens for them: build those domains or give them weight 0"
            )
        self._check_files(verify)
        self.config_hash = self._config_hash()
        self._arange = np.arange(self.batch_size * (self.seq_len + 1), dtype=np.int64)  # flat batch
        self._cursor = StreamState(self.config_hash, self.world_size, self.batch_size, position=0)

    # -- validation ---------------------------------------------------------------------------------------

    def _check_tokenizer(self, tokenizer) -> None:
        if isinstance(tokenizer, str):
            got = tokenizer
        else:
            from motif_data.tokenizer.base import fingerprint

            got = fingerprint(tokenizer)
        want = self.manifest.tokenizer.sha256
        if got != want:
            raise ValueError(
                f"tokenizer fingerprint {got[:16]}… does not match the manifest's {self.manifest.tokenizer.name!r} "
                f"({want[:16]}…): load the tokenizer the build was made with, or rebuild the shards"
            )

    def _check_files(self, verify: bool) -> None:
        """Every shard's ``.bin`` and ``.idx`` exist and have the sizes its manifest entry implies, now, so a
        bad build fails before training starts (``verify``: their sha256 too)."""
        root = self.manifest.root
        for dom in self.domains.values():
            for s in dom.shards:
                for path, want, what in (
                    (root / s.path, TOKEN_DTYPE.itemsize * s.tokens, f"{s.tokens} tokens"),
                    (
                        root / s.index_path,
                        OFFSET_DTYPE.itemsize * (s.documents + 1),
                        f"{s.documents} documents",
                    ),
                ):
                    try:
                        size = path.stat().st_size
                    except FileNotFoundError:
                        raise ShardError(
                            f"shard {path} listed in the manifest is missing: rebuild or fix the manifest"
                        ) from None
                    if size != want:
                        raise ShardError(
                            f"shard {path} is {'truncated' if size < want else 'too long'}: {size} bytes, the "
                            f"manifest's {what} need {want}: rebuild the shard or fix the manifest"
                        )
                if verify:
                    self.manifest.open_shard(s, verify=True)

    def _config_hash(self) -> str:
        spec = {
            "schedule": self.schedule.to_dict(),
            "seq_len": self.seq_len,
            "seed": self.seed,
            "exhaustion": self.policies,
            "tokenizer": self.manifest.tokenizer.sha256,
            "shards": {
                DOMAINS[d]: [[s.tokens, s.sha256] for s in dom.shards] for d, dom in self.domains.items()
            },
        }
        if (self.page_len, self.first_token) != (self.seq_len, 0):  # a phase; without, the hash of before
            spec |= {"page_len": self.page_len, "first_token": self.first_token}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    # -- pure functions of the global index ---------------------------------------------------------------

    @property
    def global_batch(self) -> int:
        """Sequences per global micro-batch: ``batch_size × world_size``."""
        return self.batch_size * self.world_size

    def locate(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For global sequences ``start .. stop - 1``: domain index, epoch of that domain, packed window
        (the page, with phases: see `offsets`)."""
        dom, k, _ = self._draws(np.array([start]), stop - start)
        epoch, window = self._windows(dom[0], k[0], np.arange(start, stop))
        return dom[0], epoch, window

    def offsets(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """For global sequences ``start .. stop - 1``: domain index and where the sequence's seq_len + 1
        tokens start in the domain's stream (its shards' tokens in manifest order)."""
        dom, k, part = self._draws(np.array([start]), stop - start)
        _, page = self._windows(dom[0], k[0], np.arange(start, stop))
        return dom[0], self._starts(page, None if part is None else part[0])

    def _draws(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Domain, draw number and window in its page (None: pages are windows) of the global sequences
        ``starts[i] + 0 .. length - 1``, shape ``(len(starts), length)`` each. The sampler draws pages."""
        if self._parts == 1:
            return (*self.sampler.draws_runs(starts + self._first_slot, length), None)
        first = starts // self._parts
        sequences = starts[:, None] + np.arange(length)
        column = sequences // self._parts - first[:, None]
        dom, k = self.sampler.draws_runs(first + self._first_slot, int(column[:, -1].max()) + 1)
        rows = np.arange(len(starts))[:, None]
        return dom[rows, column], k[rows, column], sequences % self._parts

    def _starts(self, page: np.ndarray, part: np.ndarray | None) -> np.ndarray:
        """Where in its domain's stream each (page, window in it) begins."""
        start = page * (self.page_len + 1)
        return start if part is None else start + part.ravel() * self.seq_len

    def _windows(self, dom: np.ndarray, k: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Epoch and packed window of each (domain, k-th draw); ``where`` (global indices) is for errors."""
        epoch = np.zeros_like(k)
        window = np.zeros_like(k)
        for d in np.unique(dom).tolist():
            sel = dom == d
            n = self.domains[d].sequences
            e, j = np.divmod(k[sel], n)
            if self.policies[DOMAINS[d]] == "error" and e.max() > 0:
                g = int(where[sel][e > 0].min())
                raise DomainExhaustedError(
                    f"domain {DOMAINS[d]!r} is exhausted at global sequence {g}: it holds {n} packed sequences "
                    f"of {self.page_len + 1} tokens; add data, lower its weight, or use exhaustion='repeat'"
                )
            w = np.empty_like(j)
            for ep in np.unique(e).tolist():
                m = e == ep
                w[m] = permute(j[m], n, hash64(self.seed, d, ep)).astype(np.int64)
            epoch[sel], window[sel] = e, w
        return epoch, window

    def _locate(self, dom: np.ndarray, starts: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Rows for the given (domain, start in its stream) pairs: their tokens as views of the shards (copied once, where
        the caller knows its buffer), and per document part in them, the flat (rows × span) index where its
        document starts (``docs``; before the row's start if the document began earlier) and where the part
        starts (``cuts``). Shards are found for all rows at once; what stays per row is the slicing."""
        span = self.seq_len + 1
        shard, off, n = np.empty_like(starts), np.empty_like(starts), np.empty_like(starts)
        for d in np.unique(dom).tolist():
            sel = dom == d
            shard[sel], off[sel], n[sel] = self.domains[d].shards_of(starts[sel], span)
        # Per part, search keys for its first and last token (uint64, the index's dtype: a Python int
        # against a uint64 index would convert the whole index).
        keys = np.stack([off, off + n - 1], axis=1).astype(np.uint64)
        pieces: list[np.ndarray] = []
        parts: list[np.ndarray] = []
        bases: list[int] = []  # flat index of each shard piece's first token
        shifts: list[int] = []  # flat index minus shard offset, per piece
        for r, (d, s, o, m) in enumerate(
            zip(dom.tolist(), shard.tolist(), off.tolist(), n.tolist(), strict=True)
        ):
            data, key, base = self.domains[d], keys[r], r * span
            while True:  # more than one pass only for a window crossing into the next shard
                tokens, offsets = data.reader(s)
                pieces.append(tokens[o : o + m])
                first, last = offsets.searchsorted(key, side="right").tolist()  # unpacking numpy: 3x slower
                parts.append(offsets[first - 1 : last])
                bases.append(base)
                shifts.append(base - o)
                base += m
                if base == (r + 1) * span:
                    break
                s, o, m = s + 1, 0, min((r + 1) * span - base, len(data.reader(s + 1)[0]))
                key = np.array([0, m - 1], dtype=np.uint64)
        counts = [len(p) for p in parts]
        docs = np.concatenate(parts).astype(np.int64) + np.repeat(shifts, counts)
        return pieces, docs, np.maximum(docs, np.repeat(bases, counts))

    def _fill_rows(
        self, dom: np.ndarray, starts: np.ndarray, tokens: np.ndarray, positions: np.ndarray
    ) -> None:
        """Rows of ``tokens`` / ``positions`` (int64, shape ``(n, span)``) for the given (domain, start) pairs."""
        pieces, docs, cuts = self._locate(dom, starts)
        np.concatenate(pieces, out=tokens.reshape(-1))
        _positions(docs, cuts, positions.reshape(-1), self._arange)

    def sequence(self, domain: int, window: int, part: int = 0) -> dict[str, torch.Tensor]:
        """The item for packed window ``window`` of domain ``domain`` (with phases: window ``part`` of page
        ``window``)."""
        return self._item_at(domain, self._starts(np.array([window]), np.array([part])))

    def _item_at(self, domain: int, start: np.ndarray) -> dict[str, torch.Tensor]:
        tokens = np.empty((1, self.seq_len + 1), dtype=np.int64)
        positions = np.empty((1, self.seq_len + 1), dtype=np.int64)
        self._fill_rows(np.array([domain]), start, tokens, positions)
        return _item(tokens[0], domain, positions[0])

    def items(self, start: int, stop: int) -> Iterator[dict[str, torch.Tensor]]:
        """Items of global sequences ``start .. stop - 1`` in order (no rank or worker split)."""
        dom, starts = self.offsets(start, stop)
        for d, s in zip(dom.tolist(), starts.tolist(), strict=True):
            yield self._item_at(d, np.array([s]))

    def epochs(self, position: int) -> dict[str, float]:
        """Epochs of each domain's data consumed by the first ``position`` global sequences (of this phase's
        run: with phases, counted in pages from the run's start)."""
        counts = self.sampler.counts_before(self._first_slot + -(-position // self._parts))
        return {DOMAINS[d]: counts[d] / dom.sequences for d, dom in self.domains.items() if dom.sequences}

    # -- iteration and state -----------------------------------------------------------------------------

    def _start(self) -> tuple[int, int, int, int, int]:
        """(worker, num_workers, position, chunk, item) where this process's iteration begins."""
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        st = self._cursor
        if st.at_boundary:
            return worker, workers, st.position, worker, 0
        if st.worker != (worker, workers):
            raise ValueError(
                f"this state belongs to DataLoader worker {st.worker[0]} of {st.worker[1]}, not worker "
                f"{worker} of {workers}: resume with the same num_workers, or from a MixtureDataLoader state"
            )
        return worker, workers, st.position, st.chunk, st.item

    def _chunks(self, first: int, offset: int, stride: int, run: int) -> Iterator[np.ndarray]:
        """Blocks of this process's chunk indices, ascending. From ``first`` on, the chunks fall into groups
        of consecutive chunks, of 1, 2, 4, … and then ``run`` chunks (the ramp lets the first batch come
        quickly); this process takes groups ``offset + stride·t``. A block holds one group of the ramp, then
        doubling numbers of groups up to ~_LOOKAHEAD sequences (locating costs less the more at once)."""
        ramp = (run - 1).bit_length()
        g = offset
        while g < ramp:
            yield first + (1 << g) - 1 + np.arange(1 << g, dtype=np.int64)
            g += stride
        per, most = 1, max(1, _LOOKAHEAD // (self.batch_size * run))
        while True:
            groups = g + stride * np.arange(per, dtype=np.int64)
            yield (first + (1 << ramp) - 1 + (groups[:, None] - ramp) * run + np.arange(run)).ravel()
            g, per = g + stride * per, min(2 * per, most)

    def _runs(
        self, position: int, blocks: Iterator[np.ndarray]
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """This rank's runs of ``batch_size`` sequences at the chunk indices of ``blocks``: (chunk, domains,
        starts in the domains' streams). The rank's c-th run sits in global micro-batch c (after ``position``) at offset
        ``rank × batch_size``. Runs are located many at a time, which is what makes mixing cheap."""
        b, G = self.batch_size, self.global_batch
        for chunks in blocks:
            starts = position + chunks * G + self.rank * b
            if self.max_sequences is not None:
                starts = starts[starts < self.max_sequences]
                if not len(starts):
                    return
            if G == b and starts[-1] - starts[0] == (len(starts) - 1) * b:  # contiguous runs: one range
                dom, k, part = self._draws(starts[:1], len(starts) * b)
            else:
                dom, k, part = self._draws(starts, b)
            dom, k = dom.reshape(-1, b), k.reshape(-1, b)
            part = None if part is None else part.reshape(-1, b)
            where = starts[:, None] + np.arange(b)
            if self.max_sequences is not None:
                keep = where < self.max_sequences
                dom, k, where = dom[keep], k[keep], where[keep]  # only the last run can be cut short
                part = None if part is None else part[keep]
            _, page = self._windows(dom.ravel(), k.ravel(), where.ravel())
            start = self._starts(page, part)
            for r in range(len(starts)):
                yield int(chunks[r]), dom.ravel()[r * b : (r + 1) * b], start[r * b : (r + 1) * b]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, workers, position, first, item = self._start()
        b = self.batch_size
        span = self.seq_len + 1
        for chunk, dom, starts in self._runs(position, self._chunks(first, 0, workers, 1)):
            # Filled a run at a time (cheaper than one by one); each item is a row view of the run.
            n = len(dom) - item
            tokens, positions = np.empty((n, span), dtype=np.int64), np.empty((n, span), dtype=np.int64)
            self._fill_rows(dom[item:], starts[item:], tokens, positions)
            for i, d in enumerate(dom[item:].tolist()):
                item += 1
                nxt, it = (chunk + workers, 0) if item == b else (chunk, item)
                # Updated before the yield: a state taken after receiving an item must not repeat it.
                self._advance(position, nxt, it, worker, workers)
                yield _item(tokens[i], d, positions[i])
            item = 0

    def iter_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """In the main process, one compact batch (MixtureDataLoader's format) per run of ``batch_size``,
        resumable at batch boundaries through `state_dict`."""
        worker, workers, position, chunk, item = self._start()
        if item or workers != 1:
            raise ValueError(
                "iter_batches runs in the main process and resumes at batch boundaries only; this state is "
                "mid-batch or the call is inside a DataLoader worker: use MixtureDataLoader for workers"
            )
        for buffer in self._transfers(position, chunk, 0, 1, self._runs_per_transfer):
            for batch in self._unpack(buffer):
                chunk += 1
                self._advance(position, chunk, 0, worker, workers)
                yield batch

    # -- the compact batches that DataLoader workers hand over ------------------------------------------------

    @property
    def _runs_per_transfer(self) -> int:
        """Batches per worker hand-over unless MixtureDataLoader is told otherwise: ~_TRANSFER_TOKENS."""
        return max(1, _TRANSFER_TOKENS // (self.batch_size * (self.seq_len + 1)))

    def _transfers(
        self, position: int, first: int, worker: int, workers: int, runs: int, free: np.ndarray | None = None
    ) -> Iterator[torch.Tensor]:
        """This worker's share of the stream, as one int32 buffer (`_pack`) per group of `_chunks` (up to
        ``runs`` consecutive runs); the groups go to the workers round-robin, the order in which the
        DataLoader collects them. ``free``: MixtureDataLoader's flags of the workers' shared-memory slots."""
        ramp, g = (runs - 1).bit_length(), worker
        group: list[tuple[np.ndarray, np.ndarray]] = []
        pool: list = []
        slots = None if free is None else (free[worker * _POOL : (worker + 1) * _POOL], worker * _POOL)
        for _, dom, starts in self._runs(position, self._chunks(first, worker, workers, runs)):
            group.append((dom, starts))
            if len(group) == (1 << g if g < ramp else runs):
                yield self._pack(group, pool, slots)
                group, g = [], g + workers
        if group:  # max_sequences cut the last group short
            yield self._pack(group, pool, slots)

    def _pack(
        self, runs: list[tuple[np.ndarray, np.ndarray]], pool: list, slots: tuple[np.ndarray, int] | None
    ) -> torch.Tensor:
        """One int32 buffer holding the batches of ``runs``: a header (number of batches; rows and document
        parts of each; the shared-memory slot it occupies, 0 if none), the domains as int64, the tokens, then
        each batch's ``documents`` (2 × (parts + 1)). One tensor, so a worker hands it over in one step. Its
        memory comes from ``pool``: reused arrays in the main process (`_reuse`), reused shared-memory slots
        in a worker, as the main process frees them in ``slots`` (flags, first slot's number; `_reuse_shared`)."""
        span = self.seq_len + 1
        dom = np.concatenate([d for d, _ in runs])
        pieces, docs, cuts = self._locate(dom, np.concatenate([s for _, s in runs]))
        rows = np.array([len(d) for d, _ in runs])
        ends = np.cumsum(rows) * span  # flat index where each batch ends
        part_ends = np.searchsorted(cuts, ends).tolist()  # rows start parts: batches split the parts
        parts = np.diff(part_ends, prepend=0)
        n, total_rows = len(runs), len(dom)
        head = 2 * n + 2
        size = head + 2 * total_rows + total_rows * span + 2 * (len(cuts) + n)
        slot = 0
        if slots is not None:
            buffer, k = _reuse_shared(pool, slots[0], size)
            slot = slots[1] + k if k else 0
        else:
            buffer = torch.from_numpy(_reuse(pool, size))
        flat = buffer.numpy()
        flat[0], flat[1 : n + 1], flat[n + 1 : 2 * n + 1], flat[2 * n + 1] = n, rows, parts, slot
        flat[head : head + 2 * total_rows].view(np.int64)[:] = dom
        at = head + 2 * total_rows
        np.concatenate(pieces, out=flat[at : at + total_rows * span].view(TOKEN_DTYPE))
        at += total_rows * span
        lo, start = 0, 0  # parts and flat index before this batch
        for hi, r in zip(part_ends, rows.tolist(), strict=True):
            p = hi - lo
            documents = flat[at : at + 2 * (p + 1)].reshape(2, p + 1)
            np.subtract(cuts[lo:hi], start, out=documents[0, :p])
            np.subtract(cuts[lo:hi], docs[lo:hi], out=documents[1, :p])
            documents[0, p], documents[1, p] = r * span, 0
            at, lo, start = at + 2 * (p + 1), hi, start + r * span
        return buffer

    def _unpack(self, buffer: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of a `_pack` buffer, as views of it (so a pinned buffer gives pinned batches)."""
        span = self.seq_len + 1
        n = int(buffer[0])
        counts = buffer[1 : 2 * n + 1].tolist()
        rows, parts = counts[:n], counts[n:]
        head, total_rows = 2 * n + 2, sum(rows)
        at = head + 2 * total_rows + total_rows * span
        ids = buffer[head + 2 * total_rows : at].view(total_rows, span).split(rows)
        domains = buffer[head : head + 2 * total_rows].view(torch.int64).split(rows)
        documents = buffer[at:].split([2 * (p + 1) for p in parts])
        for i, d, m in zip(ids, domains, documents, strict=True):
            yield {"input_ids": i, "domain": d, "documents": m.view(2, -1)}

    def _advance(self, position: int, chunk: int, item: int, worker: int, workers: int) -> None:
        self._cursor = dataclasses.replace(self._cursor, position=position, chunk=chunk, item=item,
                                           worker=(worker, workers))  # fmt: skip

    def stream_state(self) -> StreamState:
        """Where the stream stands. In the main process and at a batch boundary the position alone says it,
        and any world size / worker count may resume it."""
        st = self._cursor
        if st.worker is not None and st.worker[1] == 1:
            st = dataclasses.replace(st, position=st.position + st.chunk * self.global_batch, chunk=0)
            if st.item == 0:
                st = st.at(st.position)
        return st

    def state_dict(self) -> dict:
        """`stream_state` as a plain dict: a few integers and the configuration hash."""
        return self.stream_state().to_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self._cursor = self.resumable(StreamState.from_dict(state))

    def resumable(self, state: StreamState) -> StreamState:
        """``state`` if this dataset can resume it, else a ValueError saying why and what to change."""
        if state.config != self.config_hash:
            raise ValueError(
                "this loader state comes from another configuration (schedule, seed, seq_len, exhaustion "
                "policy or manifest differ): resume with the same ones, or start a new run"
            )
        if not state.at_boundary:
            if (state.world_size, state.batch_size) != (self.world_size, self.batch_size):
                raise ValueError(
                    "this state was saved mid-batch or inside a DataLoader worker; it resumes only with the same "
                    "world size, batch size and num_workers. Save states at batch boundaries (MixtureDataLoader "
                    "does) to change them."
                )
            return state
        if state.position % self.global_batch:
            raise ValueError(
                f"position {state.position} is not a multiple of the global micro-batch {self.global_batch} "
                f"(batch_size {self.batch_size} × world_size {self.world_size}): keep batch_size × world_size "
                f"a divisor of the sequences consumed (e.g. keep the global batch fixed when changing GPUs)"
            )
        return dataclasses.replace(state, world_size=self.world_size, batch_size=self.batch_size)


def _reuse(pool: list[np.ndarray], size: int) -> np.ndarray:
    """``size`` int32 of memory: an array of ``pool`` that nothing references any more (every batch viewing
    it is gone), else a new one, kept in the pool. Filling fresh memory costs twice as much as copying into
    reused memory here (page faults and zeroing by the kernel), and glibc maps every buffer of this size
    afresh."""
    spare = len(pool) if len(pool) < _POOL else None
    for i in range(len(pool)):
        if sys.getrefcount(pool[i]) == 2:  # the pool's reference and getrefcount's argument: free
            if len(pool[i]) >= size:
                return pool[i][:size]
            spare = i  # too small (the first groups are): replaced
    a = np.empty(size + size // 16, dtype=np.int32)  # room for a group with more document parts
    if spare is not None:
        pool[spare : spare + 1] = [a]
    return a[:size]


def _reuse_shared(pool: list[torch.Tensor], free: np.ndarray, size: int) -> tuple[torch.Tensor, int]:
    """``size`` int32 of shared memory for a worker's hand-over, and its slot (1-based; 0: not pooled): one
    of ``pool`` whose flag in ``free`` the main process has set back to 0, else a new one. Fresh shared
    memory costs ~3 µs a 4 KiB page here (the kernel allocates, zeroes and maps it), several times the
    copying into it; a worker cannot know by itself when the main process is done with a buffer."""
    spare = len(pool) if len(pool) < _POOL else None
    for k in range(len(pool)):
        if not free[k]:
            if len(pool[k]) >= size:
                free[k] = 1
                return pool[k][:size], k + 1
            spare = k
    # Allocated shared: the DataLoader would otherwise copy the buffer into shared memory to hand it over.
    buffer = torch.empty(size + size // 16, dtype=torch.int32).share_memory_()
    if spare is None:
        return buffer[:size], 0
    pool[spare : spare + 1] = [buffer]
    free[spare] = 1
    return buffer[:size], spare + 1


def _release(held: list[tuple[np.ndarray, int]], flags: np.ndarray) -> None:
    """Set free the slots of the ``held`` buffers that no batch views any more, and drop them from the list."""
    for i in reversed(range(len(held))):
        if sys.getrefcount(held[i][0]) == 2:  # the list's tuple and getrefcount's argument: no batch left
            flags[held[i][1] - 1] = 0
            del held[i]


def _item(tokens, domain, positions) -> dict[str, torch.Tensor]:
    """One item (1-D tokens, a domain index) or one batch (2-D, a domain per row) as the loaders yield it."""
    as_tensor = torch.from_numpy if isinstance(tokens, np.ndarray) else torch.as_tensor
    domain = torch.from_numpy(domain) if isinstance(domain, np.ndarray) else torch.tensor(domain)
    return {"input_ids": as_tensor(tokens), "domain": domain.to(torch.int64),
            "position_ids": as_tensor(positions)}  # fmt: skip


def position_ids(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Each token's position in its document (int64, the shape of ``input_ids``, on its device) from a
    MixtureDataLoader batch's ``documents``: row 0 holds where each document part of the flattened batch
    starts (rows always start a part) and, last, the token count, i.e. ``cu_seqlens``; row 1 the position
    in its document of each part's first token (non-zero where a document began in an earlier window).
    No host synchronisation, so it runs on the GPU after a ``non_blocking`` copy."""
    ids, documents = batch["input_ids"], batch["documents"].long()
    cu = documents[0]
    document_start = torch.repeat_interleave(cu[:-1] - documents[1, :-1], cu.diff(), output_size=ids.numel())
    return (torch.arange(ids.numel(), device=ids.device) - document_start).view(ids.shape)


class _Transfers(IterableDataset):
    """A worker's share of the dataset's `_pack` buffers: what the DataLoader moves between processes."""

    def __init__(self, dataset: MixtureDataset, runs: int, free: torch.Tensor):
        super().__init__()
        self.dataset, self.runs, self.free = dataset, runs, free

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # MixtureDataLoader loads a batch-boundary state before each iteration: position alone.
        position = self.dataset.stream_state().position
        free = None if info is None else self.free.numpy()
        return self.dataset._transfers(position, 0, worker, workers, self.runs, free)


class MixtureDataLoader:
    """A ``torch.utils.data.DataLoader`` over a MixtureDataset whose state is the global position, so a
    run can resume with another ``num_workers`` or world size (global batch fixed).

    Batches: ``input_ids`` (batch_size, seq_len + 1) int32, ``domain`` (batch_size,) int64, ``documents``
    (2, parts + 1) int32, see `position_ids`. Workers hand over ``batches_per_transfer`` batches at a time
    in one buffer (default: as many as hold ~4 M tokens); the stream does not depend on it."""

    def __init__(
        self,
        dataset: MixtureDataset,
        num_workers: int = 0,
        *,
        batches_per_transfer: int | None = None,
        **kwargs,
    ):
        problems = []
        if "batch_size" in kwargs or "shuffle" in kwargs or kwargs.get("persistent_workers"):
            problems.append(
                "MixtureDataLoader sets batch_size from the dataset and keeps no persistent workers; "
                "set batch_size on MixtureDataset"
            )
        if batches_per_transfer is not None and (
            not isinstance(batches_per_transfer, int) or batches_per_transfer <= 0
        ):
            problems.append(
                f"batches_per_transfer must be a positive integer or None, got {batches_per_transfer!r}"
            )
        if problems:
            raise ValueError("invalid MixtureDataLoader: " + "; ".join(problems))
        self.dataset, self.num_workers, self.kwargs = dataset, num_workers, kwargs
        self.batches_per_transfer = batches_per_transfer or dataset._runs_per_transfer
        self._position = 0
        self.load_state_dict(dataset.state_dict())

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.dataset.load_state_dict(self.state_dict())
        # Per worker shared-memory slot: 1 while its buffer is handed over or viewed by batches, set back to
        # 0 here once no batch of it is left, so that the worker refills it instead of fresh memory.
        free = torch.zeros(max(1, self.num_workers) * _POOL, dtype=torch.int32).share_memory_()
        flags = free.numpy()
        transfers = _Transfers(self.dataset, self.batches_per_transfer, free)
        loader = DataLoader(transfers, batch_size=None, num_workers=self.num_workers, **self.kwargs)
        held: list[tuple[np.ndarray, int]] = []  # buffers in slots, as the arrays that their batches view
        for buffer in loader:  # unpacked here, after pin_memory: the batches are views of the pinned buffer
            _release(held, flags)
            array = buffer.numpy()
            slot = int(array[2 * int(array[0]) + 1])
            if slot and not buffer.is_shared():  # pin_memory copied the slot out: it is free already
                flags[slot - 1] = 0
            elif slot:
                held.append((array, slot))
            yield from self._batches(torch.from_numpy(array))
            del array  # what is left referencing it: its batches, and the held list

    def _batches(self, buffer: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.dataset._unpack(buffer):
            self._position += self.dataset.global_batch
            yield batch

    def state_dict(self) -> dict:
        return self.dataset.stream_state().at(self._position).to_dict()

    def load_state_dict(self, state: Mapping) -> None:
        stream = StreamState.from_dict(state)
        if not stream.at_boundary:
            raise ValueError(
                "this dataset state was saved mid-batch or inside a DataLoader worker: resume it with the "
                "same num_workers (torchdata's StatefulDataLoader does), or save MixtureDataLoader states"
            )
        self._position = self.dataset.resumable(stream).position
