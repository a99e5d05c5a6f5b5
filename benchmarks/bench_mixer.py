"""Mixer speed and accuracy: decisions/s (scalar and vectorized) and realized-vs-target error, compared in the
same run with i.i.d. random domain sampling at the schedule's weights (what Energon-style blending does).

    python benchmarks/bench_mixer.py [--n 4000000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from motif_data import DOMAINS
from motif_data.mixer import MixtureSchedule, QuotaSampler


def _best(fn, repeat=3):
    """Best of ``repeat`` runs in CPU time of this process (other jobs on a shared machine disturb wall time)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _window_errors(dom: np.ndarray, target_prefix: np.ndarray, windows) -> dict[int, float]:
    onehot = np.eye(len(DOMAINS), dtype=np.int32)[dom]
    prefix = np.vstack([np.zeros((1, len(DOMAINS)), dtype=np.int64), np.cumsum(onehot, axis=0)])
    out = {}
    for w in windows:
        err = (prefix[w:] - prefix[:-w]) - (target_prefix[w:] - target_prefix[:-w])
        out[w] = float(np.abs(err).max() / w)
    out["prefix"] = float(np.abs(prefix - target_prefix).max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4_000_000, help="sequences per measurement")
    ap.add_argument("--seq-len", type=int, default=4096)
    args = ap.parse_args()
    n, L = args.n, args.seq_len
    # The Table 2 schedule compressed so that n sequences span the whole anneal: the hardest case for drift.
    sched = MixtureSchedule.preset("motif-2.6b", stage1_tokens=0.8 * n * L, anneal_tokens=0.2 * n * L)
    q = QuotaSampler(sched, L, seed=0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}")  # fmt: skip
    print(f"load average before: {os.getloadavg()} (other jobs share this machine: timings are noisy)")
    print(f"schedule: motif-2.6b Table 2 compressed to {n:,} sequences of {L} tokens\n")

    scalar_n = 2000
    t_scalar = _best(lambda: [q.domain_of(i) for i in range(12345, 12345 + scalar_n)], repeat=2)
    t_vec0 = _best(lambda: q.domains(0, n))
    far = 10**9
    t_vecfar = _best(lambda: q.domains(far, far + n))
    t_draws = _best(lambda: q.draws(0, n))
    rng = np.random.default_rng(0)
    mids = (np.arange(n) + 0.5) * L

    def iid():
        w = sched.weight_array(mids)
        u = rng.random(n)[:, None]
        return (u > np.cumsum(w, axis=1)).sum(axis=1)

    t_iid = _best(iid)
    print("decisions/s (CPU time of this process)        rate")
    print(f"  QuotaSampler.domain_of (scalar)      {scalar_n / t_scalar:>14,.0f} /s")
    print(f"  QuotaSampler.domains  i in [0, n)    {n / t_vec0:>14,.0f} /s")
    print(f"  QuotaSampler.domains  i in [1e9, +n) {n / t_vecfar:>14,.0f} /s")
    print(f"  QuotaSampler.draws (domain + k)      {n / t_draws:>14,.0f} /s")
    print(f"  i.i.d. sampling (anchor)             {n / t_iid:>14,.0f} /s")
    print(f"  vectorized vs goal 10 M/s: {n / t_vec0 / 1e7:.2f}x\n")

    dom_q = q.domains(0, n)
    dom_iid = iid()
    target = np.vstack([np.zeros((1, len(DOMAINS))), np.cumsum(sched.weight_array(mids), axis=0)])
    windows = (1_000, 10_000, 100_000, 1_000_000)
    eq, ei = _window_errors(dom_q, target, windows), _window_errors(dom_iid, target, windows)
    print("worst |realized - target| share over all windows of w sequences, any start, any domain")
    print(f"  {'w':>10}  {'QuotaSampler':>13}  {'i.i.d.':>10}  {'ratio':>7}")
    for w in windows:
        print(f"  {w:>10,}  {100 * eq[w]:>12.4f}%  {100 * ei[w]:>9.4f}%  {ei[w] / max(eq[w], 1e-12):>6.0f}x")
    print(f"  worst prefix drift (sequences): QuotaSampler {eq['prefix']:.2f}, i.i.d. {ei['prefix']:.1f}")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
