"""Loss curves drawn from ``metrics.jsonl`` files into PNGs: one run per domain, or several runs side by side."""

from __future__ import annotations

import json
import os
from pathlib import Path

from motif_data import DOMAINS

__all__ = ["plot_losses", "plot_comparison", "read_metrics", "tail_losses"]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def read_metrics(metrics_path: str | os.PathLike) -> list[dict]:
    """The step records of a run's ``metrics.jsonl``; a file without steps is an error."""
    records = [
        json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").split("\n") if line
    ]
    if not records:
        raise ValueError(f"{metrics_path} holds no steps: train at least one step before plotting")
    return records


def tail_losses(records: list[dict], tail: float = 0.1) -> dict[str, float]:
    """Mean loss over the last ``tail`` of the steps: ``"all"`` and each domain (nan where a domain is absent)."""
    last = records[-max(1, round(len(records) * tail)) :]
    means = {"all": sum(r["loss"] for r in last) / len(last)}
    for domain in DOMAINS:
        values = [r["domain_loss"][domain] for r in last if domain in r["domain_loss"]]
        means[domain] = sum(values) / len(values) if values else float("nan")
    return means


def plot_losses(metrics_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path:
    """Per-domain training loss against tokens seen (moving average over ~2 % of the steps) and the overall
    loss in black; written atomically."""
    import matplotlib.ticker

    from motif_data.figures import pyplot, save_png

    plt = pyplot()

    records = read_metrics(metrics_path)
    window = max(1, len(records) // 50)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=120)
    colors = plt.get_cmap("tab10")
    for i, domain in enumerate(DOMAINS):
        points = [(r["tokens"], r["domain_loss"][domain]) for r in records if domain in r["domain_loss"]]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, _smooth(list(ys), window), color=colors(i), linewidth=1.2, label=domain)
    xs = [r["tokens"] for r in records]
    ax.plot(
        xs, _smooth([r["loss"] for r in records], window), color="black", linewidth=2.0, label="all domains"
    )
    ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())  # 2M, 4M … rather than a 1e7 offset
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    smoothing = f", moving average of {window} steps" if window > 1 else ""
    run = f" — {title}" if title else ""
    ax.set_title(f"Training loss per domain{run} ({len(records)} steps{smoothing})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="domain")
    save_png(fig, png_path, dpi=None)
    return Path(png_path)


def plot_comparison(
    runs: dict[str, str | os.PathLike], png_path: str | os.PathLike, title: str = "", tail: float = 0.1
) -> Path:
    """Runs trained on the same tokens, side by side: the overall loss against tokens (left) and each domain's
    mean loss over the last ``tail`` of the steps (right); written atomically."""
    import matplotlib.ticker

    from motif_data.figures import pyplot, save_png

    plt = pyplot()
    records = {label: read_metrics(path) for label, path in runs.items()}
    fig, (curves, domains) = plt.subplots(
        1, 2, figsize=(14, 5.5), dpi=120, gridspec_kw={"width_ratios": [3, 2]}
    )
    colors = plt.get_cmap("tab10")
    for i, (label, recs) in enumerate(records.items()):
        window = max(1, len(recs) // 50)
        curves.plot(
            [r["tokens"] for r in recs],
            _smooth([r["loss"] for r in recs], window),
            color=colors(i),
            label=label,
        )
    curves.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
    curves.set_xlabel("training tokens")
    curves.set_ylabel("cross-entropy loss (nats/token, moving average)")
    curves.set_title(f"Training loss{f' — {title}' if title else ''}")
    curves.grid(True, alpha=0.3)
    curves.legend()

    # Dots, not bars: the losses sit far from zero and bars would hide the gaps between runs.
    for i, (label, recs) in enumerate(records.items()):
        means = tail_losses(recs, tail)
        domains.plot(
            range(len(DOMAINS)), [means[d] for d in DOMAINS], "o", markersize=8, color=colors(i), label=label
        )
    domains.set_xticks(range(len(DOMAINS)), DOMAINS, rotation=30, ha="right")
    domains.set_xlim(-0.5, len(DOMAINS) - 0.5)
    domains.set_ylabel("mean loss (nats/token)")
    domains.set_title(f"Per domain, last {tail:.0%} of the steps")
    domains.grid(True, alpha=0.3)
    save_png(fig, png_path, dpi=None)
    return Path(png_path)
