"""Which domain global sequence ``i`` comes from, and which of that domain's draws it is: pure functions.

Sequences are cut into blocks of ``B`` consecutive sequences. Block ``b`` covers the training tokens
``[b·B·seq_len, (b+1)·B·seq_len)``; its quota per domain is the schedule's expected number of sequences
there (the exact integral of the weights, scaled to sum to B) rounded by largest remainder, remainders
compared on a 2^-32 grid and ties broken by a seeded domain order. Inside the block the quotas are laid out
by Pfair scheduling: a domain's j-th of q slots must take a position in ``[floor(T(j/q)), ceil(T((j+1)/q)))``,
T(f) being where the domain's share of the block's schedule reaches f (``f·B`` for weights constant in the
block), and earliest deadline first fills the positions in order (ties: the seeded order). With constant
weights every slot meets its window, so every prefix of m sequences of a block holds each domain within one
sequence of ``q·m/B``; windows following the schedule's shape keep prefixes exact where weights jump inside
a block too.

A block's quotas depend only on b, so the number of earlier draws of a domain (k) comes from prefix sums of
quotas, kept in memoized chunk tables; past the schedule's end every block has the same quotas, so the prefix
there is closed form. Nothing depends on history: resuming at i = 10^9 costs a few chunk tables at most.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from motif_data import DOMAINS
from motif_data.mixer.permutation import hash64
from motif_data.mixer.schedule import MixtureSchedule

__all__ = ["QuotaSampler"]

_D = len(DOMAINS)
_CHUNK_BLOCKS = 4096  # blocks per memoized prefix table
_TABLES = 16  # prefix tables kept
_ORDERS_KEPT = 64  # block orders kept
_READ_AHEAD = 16  # blocks ordered ahead of a forward walk
_RANGE_SLOTS = 1 << 22  # slots ordered per vectorized step (bounds memory)
_T_BITS = 20  # slot windows computed on a grid of 2^-20 sequence: float noise never moves one
_R_BITS = 32  # remainders compared on a grid of 2^-32: float noise never decides a rounding


class QuotaSampler:
    """Deterministic domain per global sequence index for ``schedule`` at ``seq_len`` tokens per sequence.

    ``block`` (B) is the number of consecutive sequences whose per-domain counts are the largest-remainder
    rounding of the schedule's expected counts. The default is 4096, not 1024: each block's rounding is off
    by less than one sequence per domain and, with weights that change slowly, off in the same direction
    block after block, so a window's share can be off by up to ~1/B plus the two partial blocks at its ends.
    At B = 1024 that is ~0.1 %, the whole error budget of a 10,000-sequence window; at B = 4096 it is a
    quarter of it (measured worst over every 10k window: see docs/mixer.md).
    """

    def __init__(self, schedule: MixtureSchedule, seq_len: int, seed: int, block: int = 4096):
        problems = []
        if not isinstance(seq_len, (int, np.integer)) or seq_len <= 0:
            problems.append(f"seq_len must be a positive integer, got {seq_len!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            problems.append(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(block, (int, np.integer)) or not 0 < block <= 1 << 20:
            problems.append(f"block must be an integer in 1 .. 2^20, got {block!r}")
        if problems:
            raise ValueError("invalid QuotaSampler: " + "; ".join(problems))
        self.schedule = schedule
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.block = int(block)
        # Seeded tie-break: among equal remainders, and slots with equal deadlines, earlier here wins.
        self.priority = np.array(sorted(range(_D), key=lambda d: hash64(self.seed, 0x7E1, d)), dtype=np.int64)
        self._rank = np.argsort(self.priority)
        # Stages plus an endless one at the final weights (the schedule holds them after its end).
        n = len(schedule.stages)
        self._a = schedule.bounds.copy()
        self._len = np.append(np.diff(schedule.bounds), np.inf)
        self._w0 = np.vstack([schedule.w0, schedule.w1[n - 1]])
        self._w1 = np.vstack([schedule.w1, schedule.w1[n - 1]])
        self._cuts = schedule.bounds[1:]  # where weights may jump
        # First block lying wholly after the schedule: from there on every block has the same quotas.
        self._tail = math.ceil(schedule.total_tokens / (self.block * self.seq_len))
        self._starts = [np.zeros(_D, dtype=np.int64)]  # prefix counts at the start of each chunk
        self._tables: OrderedDict[int, np.ndarray] = OrderedDict()
        self._kept: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._tail_q = self._quotas(self._geometry(np.array([self._tail]))[-1])[0]

    # -- per block: the schedule inside it, and its quotas -------------------------------------------

    def _geometry(self, blocks: np.ndarray):
        """Blocks cut at the schedule's stage bounds into pieces on which every weight is linear.

        Returns, per block and piece (pieces padded to the most any block has): start offset and length in
        sequences ``(U, P)``, weights at both ends and expected sequences ``(U, P, 8)``.
        """
        span = self.block * self.seq_len
        p0 = blocks.astype(np.float64) * span
        p1 = p0 + span
        inside = (self._cuts > p0[:, None]) & (self._cuts < p1[:, None])
        extra = int(inside.sum(axis=1).max()) if len(blocks) else 0
        if extra:
            cuts = np.sort(np.where(inside, self._cuts, p1[:, None]), axis=1)[:, :extra]
            edges = np.concatenate([p0[:, None], cuts, p1[:, None]], axis=1)
        else:
            edges = np.stack([p0, p1], axis=1)
        lo, hi = edges[:, :-1], edges[:, 1:]
        s = np.clip(np.searchsorted(self._a, lo, side="right") - 1, 0, len(self._a) - 1)
        slope = self._w1[s] - self._w0[s]
        w_lo = self._w0[s] + slope * ((lo - self._a[s]) / self._len[s])[..., None]
        w_hi = self._w0[s] + slope * ((hi - self._a[s]) / self._len[s])[..., None]
        length = (hi - lo) / self.seq_len
        expected = length[..., None] * (w_lo + w_hi) / 2
        return (lo - p0[:, None]) / self.seq_len, length, w_lo, w_hi, expected

    def _quotas(self, expected: np.ndarray) -> np.ndarray:
        """Largest-remainder rounding of each block's expected counts ``(U, P, 8)``, scaled to sum to B."""
        total = expected.sum(axis=1)
        e = total * (self.block / total.sum(axis=1, keepdims=True))
        floor = np.floor(e)
        short = self.block - floor.sum(axis=1).astype(np.int64)
        key = np.rint((e - floor) * 2.0**_R_BITS).astype(np.int64) * _D + (_D - 1 - self._rank)
        key[total == 0] = -1  # a domain the schedule does not ask for gets no remainder
        order = np.argsort(-key, axis=1)
        extra = np.zeros(e.shape, dtype=np.int64)
        np.put_along_axis(extra, order, (np.arange(_D) < short[:, None]).astype(np.int64), axis=1)
        return floor.astype(np.int64) + extra

    def _block_quotas(self, b0: int, b1: int) -> np.ndarray:
        return self._quotas(self._geometry(np.arange(b0, b1, dtype=np.int64))[-1])

    # -- prefix sums of quotas -----------------------------------------------------------------------

    def _table(self, c: int) -> np.ndarray:
        """Counts before each block of chunk ``c`` (and after its last), shape ``(CHUNK + 1, 8)``."""
        if c in self._tables:
            self._tables.move_to_end(c)
            return self._tables[c]
        while len(self._starts) <= c:  # chunks in order: each starts where the previous ends
            j = len(self._starts) - 1
            q = self._block_quotas(j * _CHUNK_BLOCKS, (j + 1) * _CHUNK_BLOCKS)
            self._starts.append(self._starts[j] + q.sum(axis=0))
        q = self._block_quotas(c * _CHUNK_BLOCKS, (c + 1) * _CHUNK_BLOCKS)
        table = self._starts[c] + np.vstack([np.zeros((1, _D), dtype=np.int64), np.cumsum(q, axis=0)])
        self._tables[c] = table
        if len(self._tables) > _TABLES:
            self._tables.popitem(last=False)
        return table

    def _prefix(self, blocks: np.ndarray) -> np.ndarray:
        """Per block, how many sequences each domain got in all blocks before it: ``(U, 8)``."""
        blocks = np.asarray(blocks, dtype=np.int64)
        out = np.empty((len(blocks), _D), dtype=np.int64)
        late = blocks >= self._tail
        if late.any():
            base = self._prefix_early(np.array([self._tail]))[0]
            out[late] = base + (blocks[late] - self._tail)[:, None] * self._tail_q
        out[~late] = self._prefix_early(blocks[~late])
        return out

    def _prefix_early(self, blocks: np.ndarray) -> np.ndarray:
        out = np.empty((len(blocks), _D), dtype=np.int64)
        chunk = blocks // _CHUNK_BLOCKS
        for c in np.unique(chunk).tolist():
            sel = chunk == c
            out[sel] = self._table(c)[blocks[sel] - c * _CHUNK_BLOCKS]
        return out

    # -- order inside blocks -------------------------------------------------------------------------

    def _orders(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Domain and within-block draw number j of every position of the (sorted, distinct) blocks, flat:
        ``(U * B,)`` each.

        Few blocks at a time is what a loader or a scalar caller asks for, walking forward: those are kept,
        with the next ``_READ_AHEAD`` blocks, as ordering many blocks side by side costs about as much as one.
        """
        if len(blocks) > _ORDERS_KEPT - _READ_AHEAD:
            return self._schedule_blocks(blocks)
        missing = [b for b in blocks.tolist() if b not in self._kept]
        if missing:
            ahead = range(missing[-1] + 1, missing[-1] + 1 + _READ_AHEAD)
            todo = np.array(missing + [b for b in ahead if b not in self._kept], dtype=np.int64)
            dom, j = self._schedule_blocks(todo)
            B = self.block
            for i, b in enumerate(todo.tolist()):
                self._kept[b] = dom[i * B : (i + 1) * B], j[i * B : (i + 1) * B]
        for b in blocks.tolist():
            self._kept.move_to_end(b)
        got = [self._kept[b] for b in blocks.tolist()]
        while len(self._kept) > _ORDERS_KEPT:
            self._kept.popitem(last=False)
        return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])

    def _schedule_blocks(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`_orders` returns, computed: slot windows (module docstring), then earliest deadline
        first over the positions of all the blocks side by side."""
        B = self.block
        span = self.block * self.seq_len
        cut = ((self._cuts > blocks[:, None] * span) & (self._cuts < (blocks[:, None] + 1) * span)).any(
            axis=1
        )
        if cut.any() and not cut.all():  # the few blocks holding a stage bound take the slower path alone
            dom, j = np.empty((len(blocks), B), dtype=np.int64), np.empty((len(blocks), B), dtype=np.int64)
            for sel in (cut, ~cut):
                d, k = self._schedule_blocks(blocks[sel])
                dom[sel], j[sel] = d.reshape(-1, B), k.reshape(-1, B)
            return dom.ravel(), j.ravel()
        start, length, w_lo, w_hi, expected = self._geometry(blocks)
        U, P = length.shape
        prio = self.priority
        q = self._quotas(expected)[:, prio].ravel()  # windows laid out block by block, domain by domain
        running = np.concatenate([np.zeros((U, 1, _D)), np.cumsum(expected, axis=1)], axis=1)[:, :, prio]
        n = q + 1  # q + 1 window bounds per (block, domain); the last entry doubles as "no slot left"
        first = np.cumsum(n) - n
        j = np.arange(U * (B + _D)) - np.repeat(first, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = j * np.repeat(running[:, -1].ravel() / q, n)  # bound j: the running integral reaches y
            alpha = (w_hi - w_lo)[:, :, prio] / (2 * length[..., None])
        if P == 1:  # the common case: per (block, domain) constants repeated over its bounds
            r, t0 = y, 0.0
            a = np.repeat(w_lo[:, 0, prio].ravel(), n)
            c = np.repeat(4 * alpha[:, 0].ravel(), n)
        else:  # some block holds a stage bound: find each bound's piece
            u = np.repeat(np.arange(U), B + _D)
            col = np.repeat(np.tile(np.arange(_D), U), n)
            piece = np.zeros(U * (B + _D), dtype=np.int64)
            for p in range(1, P):
                piece += running[u, p, col] < y
            r, t0 = y - running[u, piece, col], start[u, piece]
            a, c = w_lo[:, :, prio][u, piece, col], 4 * alpha[u, piece, col]
        with np.errstate(divide="ignore", invalid="ignore"):
            # Root of alpha x^2 + a x = r in the form that stays exact when alpha -> 0 or a -> 0.
            x = np.where(r > 0, t0 + 2 * r / (a + np.sqrt(np.maximum(a * a + c * r, 0.0))), t0)
        # On a 2^-20 grid first, so that float noise cannot move a bound across an integer.
        # A slot inside a piece whose weight is 0 (alpha = a = 0) solves to +inf: it belongs at the block's end.
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=B), 0.0, B)
        t = np.rint(x * 2.0**_T_BITS) / 2.0**_T_BITS
        last = first + q
        t[first], t[last] = 0.0, B  # exact ends, whatever piece rounding puts them in
        release = np.floor(t).astype(np.int64)
        deadline = np.ceil(np.append(t[1:], B)).astype(np.int64)
        release[last], deadline[last] = 2 * B, 4 * B  # no slot left: never chosen while another is
        # State per (domain column, block), domain-major so that the choice is one min over 8 rows: a key
        # deadline * 8 + column (unique, ties go to the column earlier in the seeded order) and a release.
        slot = first.reshape(U, _D).T.copy()  # flat index of each domain's next slot (a copy: it moves)
        key = deadline * _D + np.tile(np.arange(_D), U).repeat(n)
        cur_key, cur_rel = key[slot], release[slot]
        late = 2 * B * _D  # added to the key of a slot not yet released
        flat = np.arange(U)
        slot_f, key_f, rel_f = slot.ravel(), cur_key.ravel(), cur_rel.ravel()  # views for scattering
        dom = np.empty((B, U), dtype=np.int64)
        at = np.empty((B, U), dtype=np.int64)
        for m in range(B):
            pick = np.min(cur_key + (cur_rel > m) * late, axis=0) % _D
            dom[m] = pick
            idx = pick * U + flat
            at[m] = got = slot_f[idx]
            slot_f[idx] = got + 1
            key_f[idx], rel_f[idx] = key[got + 1], release[got + 1]
        dom, at = dom.T.ravel(), at.T.ravel()
        return prio[dom], at - first[np.arange(U).repeat(B) * _D + dom]

    # -- the stream ----------------------------------------------------------------------------------

    def draws(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Domain index and within-domain draw number k of global sequences ``start .. stop - 1``."""
        start, stop = int(start), int(stop)
        if start < 0 or stop < start:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        d, k = self.draws_runs(np.array([start]), stop - start)
        return d[0], k[0]

    def draws_runs(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`draws` of many runs ``[s, s + length)`` at once, shape ``(len(starts), length)`` each.

        What a rank's loader asks for: its runs of a batch in successive global micro-batches. Blocks that
        several runs touch are ordered once.
        """
        starts = np.asarray(starts, dtype=np.int64).ravel()
        length = int(length)
        if (starts < 0).any() or length < 0:
            raise ValueError(f"need starts >= 0 and length >= 0, got min start {starts.min()}, {length=}")
        B = self.block
        dom = np.empty((len(starts), length), dtype=np.int64)
        k = np.empty((len(starts), length), dtype=np.int64)
        if length == 0 or not len(starts):
            return dom, k
        first, last = starts // B, (starts + length - 1) // B
        per_run = last - first + 1
        step = max(1, _RANGE_SLOTS // B)
        if per_run.max() > step:  # a long range: in slices of `step` blocks
            for a in range(0, length, step * B):
                n = min(step * B, length - a)
                dom[:, a : a + n], k[:, a : a + n] = self.draws_runs(starts + a, n)
            return dom, k
        order = np.argsort(first, kind="stable")
        lo = 0
        while lo < len(order):  # groups of runs whose blocks fit in one vectorized step
            hi, seen = lo, set()
            while hi < len(order):
                r = order[hi]
                new = set(range(int(first[r]), int(last[r]) + 1)) - seen
                if seen and len(seen) + len(new) > step:
                    break
                seen |= new
                hi += 1
            runs = order[lo:hi]
            blocks = np.array(sorted(seen), dtype=np.int64)
            d_blk, j_blk = self._orders(blocks)
            row = np.repeat(np.arange(len(blocks)) * _D, B)
            k_blk = j_blk + self._prefix(blocks).ravel()[row + d_blk]
            if len(runs) == 1 and blocks[-1] - blocks[0] == len(blocks) - 1:  # one contiguous range
                at = int(starts[runs[0]] - blocks[0] * B)
                dom[runs[0]], k[runs[0]] = d_blk[at : at + length], k_blk[at : at + length]
            else:
                pos = starts[runs][:, None] + np.arange(length)
                flat = np.searchsorted(blocks, pos // B) * B + pos % B
                dom[runs], k[runs] = d_blk[flat], k_blk[flat]
            lo = hi
        return dom, k

    def domains(self, start: int, stop: int) -> np.ndarray:
        """Indices into ``DOMAINS`` of global sequences ``start .. stop - 1``."""
        return self.draws(start, stop)[0]

    def domain_of(self, i: int) -> str:
        return DOMAINS[int(self.draws(i, i + 1)[0][0])]

    def counts_before(self, n: int) -> np.ndarray:
        """How many of the first ``n`` sequences each domain got (equals bincount of ``domains(0, n)``)."""
        n = int(n)
        if n < 0:
            raise ValueError(f"need n >= 0, got {n}")
        b, offset = divmod(n, self.block)
        counts = self._prefix(np.array([b]))[0]
        if offset:
            counts = counts + np.bincount(self._orders(np.array([b]))[0][:offset], minlength=_D)
        return counts

    def block_counts(self, b0: int, b1: int) -> np.ndarray:
        """Per-domain quotas of blocks ``b0 .. b1 - 1`` of ``block`` sequences, shape ``(b1 - b0, 8)``."""
        return np.diff(self._prefix(np.arange(b0, b1 + 1)), axis=0)

    def expected_counts(self, n: np.ndarray | float) -> np.ndarray:
        """Exact expected number of sequences per domain among the first ``n`` (shape ``(*n.shape, 8)``)."""
        return self.schedule.cumulative(np.asarray(n, dtype=np.float64) * self.seq_len) / self.seq_len

    def due(self, d: int | np.ndarray, k: np.ndarray) -> np.ndarray:
        """Global position (in sequences) of domain ``d``'s k-th draw (k from 0); ``inf`` if never.

        ``d`` and ``k`` broadcast, so one call serves one domain's many draws or one draw of each domain.
        """
        d, k = np.broadcast_arrays(np.asarray(d, dtype=np.int64), np.asarray(k, dtype=np.int64))
        out = np.empty(d.shape, dtype=np.float64)
        for idx in np.ndindex(d.shape):
            out[idx] = self._due_one(int(d[idx]), int(k[idx]))
        return out

    def _due_one(self, d: int, k: int) -> float:
        before_tail = int(self._prefix(np.array([self._tail]))[0, d])
        if k >= before_tail:
            if self._tail_q[d] == 0:
                return math.inf
            b = self._tail + (k - before_tail) // int(self._tail_q[d])
        else:  # last block whose prefix is <= k: binary search, as prefixes only grow
            lo, hi = 0, self._tail
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._prefix(np.array([mid]))[0, d] <= k:
                    lo = mid
                else:
                    hi = mid
            b = lo
        dom, j = self._orders(np.array([b]))
        before = int(self._prefix(np.array([b]))[0, d])
        pos = np.flatnonzero((dom == d) & (j == k - before))
        return float(b * self.block + pos[0])
