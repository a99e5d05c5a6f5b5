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


def _running(dom: np.ndarray) -> np.ndarray:
    onehot = np.eye(len(DOMAINS), dtype=np.int32)[dom]
    return np.vstack([np.zeros((1, len(DOMAINS)), dtype=np.int64), np.cumsum(onehot, axis=0)])


def _window_errors(dom: np.ndarray, target_prefix: np.ndarray, windows) -> dict:
    """Worst |realized - target| share over every window of w sequences (any start, any domain)."""
    prefix = _running(dom)
    out = {}
    for w in windows:
        err = (prefix[w:] - prefix[:-w]) - (target_prefix[w:] - target_prefix[:-w])
        out[w] = float(np.abs(err).max() / w)
    out["prefix"] = float(np.abs(prefix - target_prefix).max())
    return out


def _adversarial(block: int) -> dict[str, float]:
    """Constant weights whose per-block largest-remainder rounding is as biased as it gets: web's remainder
    0.87 loses to seven larger ones, every block, so web runs 0.87 sequence short per block."""
    extra = (7 - 0.87) / 7  # the seven others' remainder, so that the remainders sum to 7
    base = {"web": 0.30, "multilingual": 0.10, "korean": 0.10, "academic": 0.10, "specialized": 0.10,
            "code": 0.10, "math": 0.10, "reasoning": 0.10}  # fmt: skip
    counts = {d: np.floor(w * block) + (0.87 if d == "web" else extra) for d, w in base.items()}
    counts["web"] += block - sum(counts.values())  # whole sequences: the total stays exactly `block`
    return {d: c / block for d, c in counts.items()}


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
    print(f"schedule: motif-2.6b Table 2 compressed to {n:,} sequences of {L} tokens; block B = {q.block}\n")

    scalar_n = 20_000
    t_scalar = _best(lambda: [q.domain_of(i) for i in range(12345, 12345 + scalar_n)], repeat=2)
    far_i = np.random.default_rng(1).integers(0, 10**9, 20)
    t_cold = _best(lambda: [q.domain_of(int(i)) for i in far_i], repeat=1) / len(far_i)
    t_vec0 = _best(lambda: q.domains(0, n))
    far = 10**9
    t_vecfar = _best(lambda: q.domains(far, far + n))
    t_draws = _best(lambda: q.draws(0, n))
    # What a loader rank asks for: runs of 8 sequences, one per global micro-batch of 64 ranks.
    starts = 5 * 10**8 + 512 * np.arange(n // 512)
    t_runs = _best(lambda: q.draws_runs(starts, 8))
    t_resume = _best(
        lambda: QuotaSampler(MixtureSchedule.preset("motif-2.6b"), L, seed=0).draws(far, far + 4096)
    )
    rng = np.random.default_rng(0)
    mids = (np.arange(n) + 0.5) * L

    def iid():
        w = sched.weight_array(mids)
        u = rng.random(n)[:, None]
        return (u > np.cumsum(w, axis=1)).sum(axis=1)

    t_iid = _best(iid)
    print("decisions/s (CPU time of this process)                 rate")
    print(f"  domain_of, consecutive i (block order kept)  {scalar_n / t_scalar:>14,.0f} /s")
    print(f"  domain_of, random i in [0, 1e9) (new block)  {1 / t_cold:>14,.0f} /s")
    print(f"  domains  i in [0, n)                         {n / t_vec0:>14,.0f} /s")
    print(f"  domains  i in [1e9, 1e9 + n)                 {n / t_vecfar:>14,.0f} /s")
    print(f"  draws (domain + k), i in [0, n)              {n / t_draws:>14,.0f} /s")
    print(f"  draws_runs, {len(starts):,} runs of 8 at stride 512     {8 * len(starts) / t_runs:>14,.0f} /s")
    print(f"  i.i.d. sampling (anchor)                     {n / t_iid:>14,.0f} /s")
    print(f"  vectorized vs goal 10 M/s: {n / t_vec0 / 1e7:.2f}x")
    print(f"  fresh sampler, 2.5T preset, first 4096 draws at i = 1e9: {1e3 * t_resume:.1f} ms\n")

    target = np.vstack([np.zeros((1, len(DOMAINS))), np.cumsum(sched.weight_array(mids), axis=0)])
    windows = tuple(w for w in (1_000, 10_000, 100_000, 1_000_000) if w < n)
    rows = [
        (f"QuotaSampler B={b}", QuotaSampler(sched, L, seed=0, block=b).domains(0, n)) for b in (1024, 4096)
    ]
    rows.append(("i.i.d.", iid()))
    errs = [(name, _window_errors(dom, target, windows)) for name, dom in rows]
    print("worst |realized - target| share over all windows of w sequences, any start, any domain")
    print(f"  {'w':>10}" + "".join(f"  {name:>20}" for name, _ in errs))
    for w in windows:
        print(f"  {w:>10,}" + "".join(f"  {100 * e[w]:>19.4f}%" for _, e in errs))
    print("  worst prefix drift (sequences): " + ", ".join(f"{name} {e['prefix']:.1f}" for name, e in errs))

    blocks = q.block_counts(0, n // q.block)
    starts_b = np.arange(n // q.block) * q.block
    expected = q.expected_counts(starts_b + q.block) - q.expected_counts(starts_b)
    print(
        f"\nblock quotas (B={q.block}): worst |quota - expected| {np.abs(blocks - expected).max():.3f} sequence"
    )
    flat = shaped = 0.0
    B = q.block
    for b in range(0, n // B, max(1, n // B // 50)):  # 50 blocks spread over the schedule
        counts = _running(q.domains(b * B, (b + 1) * B))
        flat = max(flat, float(np.abs(counts - counts[-1] * np.arange(B + 1)[:, None] / B).max()))
        inside = q.expected_counts(b * B + np.arange(B + 1)) - q.expected_counts(b * B)
        share = counts[-1] * inside / np.where(inside[-1] > 0, inside[-1], 1)
        shaped = max(shaped, float(np.abs(counts - share).max()))
    print(
        f"every prefix of 50 blocks: worst |count - quota*m/B| {flat:.4f} sequence (weights move up to "
        f"{np.abs(np.diff(sched.weight_array(np.array([0, B * L])), axis=0)).max():.1e} across a block here), "
        f"worst |count - quota*(schedule's share of the block so far)| {shaped:.4f}"
    )

    print("\nconstant weights chosen so that rounding is biased the same way every block (web 0.87 short):")
    for b in (1024, 2048, 4096):
        weights = _adversarial(b)
        const = MixtureSchedule.constant(weights, tokens=10 * n * L)
        m = 400_000
        tgt = np.arange(m + 1)[:, None] * np.array([weights[d] for d in DOMAINS])
        e = _window_errors(QuotaSampler(const, L, seed=0, block=b).domains(0, m), tgt, (10_000,))
        print(f"  B={b:>5}: worst 10,000-sequence window {100 * e[10_000]:.4f}%")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
