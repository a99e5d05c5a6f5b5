"""What a schedule asks of a build: per-domain sequences needed vs available, epochs, where data runs out.

Packing rule shared with the loader: a domain's documents form one token stream cut into consecutive,
non-overlapping windows of ``seq_len + 1`` tokens; the tail shorter than a window is not used. A run in
phases packs pages of the longest seq_len + 1 tokens, and a phase at seq_len s reads each page as
(longest / s) windows (docs/loader.md, "Long context"): the plan is the one of the pages.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from motif_data import DOMAINS
from motif_data.mixer.sampler import QuotaSampler
from motif_data.shards import Manifest

__all__ = ["DomainPlan", "packed_sequences", "plan", "format_plan", "format_phases", "plot_plan"]


def packed_sequences(tokens: int, seq_len: int) -> int:
    """Windows of ``seq_len + 1`` tokens a domain of ``tokens`` tokens packs into."""
    return int(tokens) // (int(seq_len) + 1)


@dataclass(frozen=True)
class DomainPlan:
    domain: str
    sequences: int  # drawn by the sampler over the run
    available: int  # packed sequences in the build
    seq_len: int
    runs_out_at: float | None  # training-token position of the first draw past one epoch, if any

    @property
    def tokens_needed(self) -> int:
        return self.sequences * (self.seq_len + 1)

    @property
    def tokens_available(self) -> int:
        return self.available * (self.seq_len + 1)

    @property
    def epochs(self) -> float:
        return self.sequences / self.available if self.available else math.inf


def plan(manifest: Manifest, sampler: QuotaSampler, total_tokens: float) -> list[DomainPlan]:
    """Per domain of DOMAINS, what a run of ``total_tokens`` training tokens draws from ``manifest``."""
    if not total_tokens > 0:
        raise ValueError(f"total tokens must be > 0, got {total_tokens}")
    n = math.ceil(total_tokens / sampler.seq_len)
    counts = sampler.counts_before(n)
    rows, missing = [], []
    for d, name in enumerate(DOMAINS):
        info = manifest.domains.get(name)
        available = packed_sequences(info.tokens, sampler.seq_len) if info else 0
        if counts[d] and not available:
            missing.append(name)
        runs_out = None
        if counts[d] > available:
            runs_out = float(sampler.due(d, np.array([available]))[0]) * sampler.seq_len
        rows.append(DomainPlan(name, int(counts[d]), available, sampler.seq_len, runs_out))
    if missing:
        raise ValueError(
            f"the schedule draws from {missing} but the manifest has no packed sequence of "
            f"{sampler.seq_len + 1} tokens for them: build those domains or give them weight 0"
        )
    return rows


def _fmt_tokens(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.4g}{unit}"
    return f"{x:.3g}"


def format_plan(rows: list[DomainPlan], total_tokens: float) -> str:
    head = f"{'domain':<13}{'needed':>10}{'available':>11}{'epochs':>11}  under policy 'error'"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.sequences == 0:
            out = "not drawn"
        elif r.runs_out_at is None:
            out = "enough data"
        else:
            out = f"runs out at {_fmt_tokens(r.runs_out_at)} tokens ({100 * r.runs_out_at / total_tokens:.1f} %)"
        lines.append(
            f"{r.domain:<13}{_fmt_tokens(r.tokens_needed):>10}{_fmt_tokens(r.tokens_available):>11}"
            f"{r.epochs:>11.4g}  {out}"
        )
    return "\n".join(lines)


def format_phases(phases: list[tuple[int, int]]) -> str:
    """The phases of a run, ``(tokens, seq_len)`` each: where each starts and ends in training tokens, its
    sequences, and how many of them a page of the longest seq_len holds."""
    page = max(s for _, s in phases)
    head = f"{'phase':<7}{'from':>10}{'to':>10}{'seq_len':>9}{'sequences':>12}{'per page':>10}"
    lines, start = [head, "-" * len(head)], 0
    for i, (tokens, seq_len) in enumerate(phases):
        lines.append(
            f"{i:<7}{_fmt_tokens(start):>10}{_fmt_tokens(start + tokens):>10}{seq_len:>9}"
            f"{_fmt_tokens(tokens // seq_len):>12}{page // seq_len:>10}"
        )
        start += tokens
    return "\n".join(lines)


def plot_plan(
    sampler: QuotaSampler,
    total_tokens: float,
    path: str | os.PathLike,
    points: int = 120,
    window: int = 20_000,
) -> None:
    """PNG: target weight curves with the sampler's realized shares over windows of ``window`` sequences."""
    from motif_data.figures import pyplot, save_png

    plt = pyplot()

    n = math.ceil(total_tokens / sampler.seq_len)
    window = min(window, n)
    starts = np.linspace(0, n - window, points).astype(np.int64)
    dom = sampler.draws_runs(starts, window)[0]  # one call: blocks are ordered many at a time
    rows = np.arange(len(starts))[:, None] * len(DOMAINS)
    realized = np.bincount((dom + rows).ravel(), minlength=len(starts) * len(DOMAINS)).reshape(
        len(starts), -1
    )
    target = sampler.expected_counts(starts + window) - sampler.expected_counts(starts)
    # Axis in the largest unit the run reaches: trillions for a real run, thousands for a demo.
    unit, scale = next(
        ((u, v) for u, v in (("trillions", 1e12), ("billions", 1e9), ("millions", 1e6)) if total_tokens >= v),
        ("thousands", 1e3),
    )
    centers = (starts + window / 2) * sampler.seq_len / scale
    grid = np.linspace(0, total_tokens, 400)
    weights = sampler.schedule.weight_array(grid)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), sharex=True, height_ratios=[3, 1.3])
    colors = plt.get_cmap("tab10").colors
    for d, name in enumerate(DOMAINS):
        top.plot(grid / scale, weights[:, d], color=colors[d], lw=2, label=f"{name} (target)")
        top.plot(centers, realized[:, d] / window, "o", ms=3, color=colors[d], alpha=0.7)
        bottom.plot(centers, 100 * (realized[:, d] - target[:, d]) / window, "-", lw=1, color=colors[d])
    top.plot([], [], "o", color="gray", ms=3, label=f"realized share, windows of {window:,} seq.")
    top.set_title(
        f"Mixture schedule '{sampler.schedule.name}': target weights vs sampler "
        f"(seq_len {sampler.seq_len}, seed {sampler.seed})"
    )
    top.set_ylabel("share of sequences")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    top.legend(ncol=2, fontsize=8, loc="upper right")
    bottom.axhline(0, color="black", lw=0.8)
    bottom.set_ylabel("realized − target\n(percentage points)")
    bottom.set_xlabel(f"training tokens ({unit})")
    bottom.grid(alpha=0.3)
    save_png(fig, path)
