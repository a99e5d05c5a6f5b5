"""Which domain global sequence ``i`` comes from, and which of that domain's draws it is: pure functions.

Each domain's k-th draw falls due at the (fractional) sequence position where the schedule's cumulative
expected count of that domain reaches k + 1/2 (stride scheduling with strides that follow the schedule).
Sequences are the draws of all domains in order of due position, ties broken by a seeded domain order.
Counts therefore never drift from the schedule: after any n sequences every domain is within a few
sequences of its exact integral, whatever n is, and computing the domains of ``[start, stop)`` costs
O(stop - start) with no history, so resuming at i = 10^9 is as cheap as at 0.
"""

from __future__ import annotations

import numpy as np

from motif_data import DOMAINS
from motif_data.mixer.permutation import hash64
from motif_data.mixer.schedule import MixtureSchedule

__all__ = ["QuotaSampler"]

_D = len(DOMAINS)
_CHUNK = 1 << 22
_SMALL = 4096  # up to this many sequences the broadcast path beats per-domain evaluation


class QuotaSampler:
    """Deterministic domain per global sequence index for ``schedule`` at ``seq_len`` tokens per sequence.

    A sequence consumes ``seq_len`` training tokens of the schedule. ``block`` is the unit of
    :meth:`block_counts` (per-domain counts of consecutive blocks of sequences); the stream itself does not
    depend on it, because quotas come from one cumulative rule and rounding never accumulates across blocks.
    """

    def __init__(self, schedule: MixtureSchedule, seq_len: int, seed: int, block: int = 1024):
        problems = []
        if not isinstance(seq_len, (int, np.integer)) or seq_len <= 0:
            problems.append(f"seq_len must be a positive integer, got {seq_len!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            problems.append(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(block, (int, np.integer)) or block <= 0:
            problems.append(f"block must be a positive integer, got {block!r}")
        if problems:
            raise ValueError("invalid QuotaSampler: " + "; ".join(problems))
        self.schedule = schedule
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.block = int(block)
        # Seeded tie-break: when two domains fall due at the same position the one earlier here goes first.
        self.priority = np.array(sorted(range(_D), key=lambda d: hash64(self.seed, 0x7E1, d)), dtype=np.int64)
        L = float(self.seq_len)
        # Schedule in sequence units: stage bounds, cumulative counts at bounds, weights per stage and domain.
        self._bounds = schedule.bounds / L
        self._cum = schedule.cum / L
        self._w0 = schedule.w0
        self._w1 = schedule.w1
        self._all = np.arange(_D)

    # -- pure functions of (schedule, seq_len, d, k) ---------------------------------------------------

    def expected_counts(self, n: np.ndarray | float) -> np.ndarray:
        """Exact expected number of sequences per domain among the first ``n`` (shape ``(*n.shape, 8)``)."""
        return self.schedule.cumulative(np.asarray(n, dtype=np.float64) * self.seq_len) / self.seq_len

    def due(self, d: int | np.ndarray, k: np.ndarray) -> np.ndarray:
        """Position (in sequences) where domain ``d``'s k-th draw falls due; ``inf`` if never.

        ``d`` and ``k`` broadcast, so one call serves one domain's many draws or one draw of each domain.
        """
        y = np.asarray(k, dtype=np.float64) + 0.5
        d = np.asarray(d)
        n = len(self._bounds) - 1
        # first stage whose cumulative count at its end reaches y
        if d.ndim == 0:
            s = np.searchsorted(self._cum[1:, int(d)], y, side="left")
        else:
            d, y = np.broadcast_arrays(d, y)
            s = np.sum(self._cum[1:, d] < y, axis=0)
        inside = s < n
        sc = np.minimum(s, n - 1)
        a, length = self._bounds[sc], self._bounds[sc + 1] - self._bounds[sc]
        w0, w1 = self._w0[sc, d], self._w1[sc, d]
        r = np.maximum(y - self._cum[sc, d], 0.0)
        alpha = (w1 - w0) / (2 * length)
        w_end = self._w1[n - 1, d]
        with np.errstate(divide="ignore", invalid="ignore"):
            # Root of alpha x^2 + w0 x = r in the form that stays exact when alpha -> 0 or w0 -> 0.
            x = 2 * r / (w0 + np.sqrt(np.maximum(w0 * w0 + 4 * alpha * r, 0.0)))
            x = np.where(r > 0, np.minimum(x, length), 0.0)
            beyond = np.where(w_end > 0, self._bounds[n] + (y - self._cum[n, d]) / w_end, np.inf)
        return np.where(inside, a + x, beyond)

    def _drawn_by(self, t: np.ndarray | float) -> np.ndarray:
        """Per domain, how many draws fall due at or before position ``t`` (shape ``(*t.shape, 8)``)."""
        t = np.asarray(t, dtype=np.float64)[..., None]
        k = np.maximum(np.floor(self.expected_counts(t[..., 0]) + 0.5), 0).astype(np.int64)
        # The closed form can be off by one where float rounding meets a boundary; the due positions are
        # the definition, so settle it with them.
        while (late := (k > 0) & (self.due(self._all, np.maximum(k - 1, 0)) > t)).any():
            k -= late
        while (early := self.due(self._all, k) <= t).any():
            k += early
        return k

    # -- the stream ----------------------------------------------------------------------------------

    def draws(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Domain index and within-domain draw number k of global sequences ``start .. stop - 1``."""
        start, stop = int(start), int(stop)
        if start < 0 or stop < start:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        if stop - start <= _SMALL:
            d, k = self.draws_runs(np.array([start]), stop - start)
            return d[0], k[0]
        if stop - start > _CHUNK:
            parts = [self.draws(a, min(a + _CHUNK, stop)) for a in range(start, stop, _CHUNK)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        k_lo, k_hi = self._bracket(np.array([start]), stop - start)
        k_lo, k_hi = k_lo[0], k_hi[0]
        ds = np.repeat(self.priority, k_hi[self.priority] - k_lo[self.priority])
        ks = np.concatenate([np.arange(k_lo[d], k_hi[d], dtype=np.int64) for d in self.priority])
        times = np.concatenate([self.due(d, np.arange(k_lo[d], k_hi[d])) for d in self.priority])
        # Runs are concatenated in priority order and each is sorted already: a stable sort merges them
        # cheaply and keeps the priority order among equal due positions.
        base = int(k_lo.sum())
        order = np.argsort(times, kind="stable")[start - base : stop - base]
        return ds[order], ks[order]

    def _bracket(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Per run, draws due before the run and by its end, with a margin: ``(R, 8)`` each."""
        # Sum over domains of floor(C_d(t) + 1/2) is within 8/2 of t, since the C_d sum to t.
        margin = _D / 2 + 2
        lo, hi = starts - margin, starts + length + margin
        while True:
            both = self._drawn_by(np.concatenate([np.maximum(lo, 0), hi]))  # one evaluation for both ends
            k_lo, k_hi = np.where(lo[:, None] > 0, both[: len(lo)], 0), both[len(lo) :]
            if (k_lo.sum(axis=1) <= starts).all() and (k_hi.sum(axis=1) >= starts + length).all():
                return k_lo, k_hi
            lo, hi = lo - margin, hi + margin

    def draws_runs(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`draws` of many runs ``[s, s + length)`` at once, shape ``(len(starts), length)`` each.

        What a rank's loader asks for: its runs of a batch in successive global micro-batches.
        """
        starts = np.asarray(starts, dtype=np.int64)
        k_lo, k_hi = self._bracket(starts, length)
        counts = (k_hi - k_lo)[:, self.priority]  # (R, 8), domains in priority order
        per_run = counts.sum(axis=1)
        flat = counts.ravel()
        seg_start = np.cumsum(flat) - flat
        ds = np.repeat(np.tile(self.priority, len(starts)), flat)
        ks = np.repeat(k_lo[:, self.priority].ravel() - seg_start, flat) + np.arange(flat.sum())
        run = np.repeat(np.arange(len(starts)), per_run)
        # lexsort is stable: inside a run, equal due positions keep the priority order of the concatenation.
        order = np.lexsort((self.due(ds, ks), run))
        first = np.cumsum(per_run) - per_run + (starts - k_lo.sum(axis=1))
        pick = order[first[:, None] + np.arange(length)]
        return ds[pick], ks[pick]

    def domains(self, start: int, stop: int) -> np.ndarray:
        """Indices into ``DOMAINS`` of global sequences ``start .. stop - 1``."""
        return self.draws(start, stop)[0]

    def domain_of(self, i: int) -> str:
        return DOMAINS[int(self.draws(i, i + 1)[0][0])]

    def counts_before(self, n: int) -> np.ndarray:
        """How many of the first ``n`` sequences each domain got (equals bincount of ``domains(0, n)``)."""
        n = int(n)
        t = n - _D / 2 - 2
        k = self._drawn_by(t) if t > 0 else np.zeros(_D, dtype=np.int64)
        base = int(k.sum())
        return k + np.bincount(self.domains(base, n), minlength=_D)

    def block_counts(self, b0: int, b1: int) -> np.ndarray:
        """Per-domain counts of blocks ``b0 .. b1 - 1`` of ``block`` sequences, shape ``(b1 - b0, 8)``."""
        d = self.domains(b0 * self.block, b1 * self.block).reshape(b1 - b0, self.block)
        return (d[:, :, None] == np.arange(_D)).sum(axis=1)
