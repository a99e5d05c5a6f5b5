"""The loss curve of a run, one line per domain, drawn from its ``metrics.jsonl`` into a PNG."""

from __future__ import annotations

import json
import os
from pathlib import Path

from motif_data import DOMAINS

__all__ = ["plot_losses"]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_losses(metrics_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path:
    """Per-domain training loss against tokens seen (moving average over ~2 % of the steps) and the overall
    loss in black; written atomically."""
    import matplotlib.ticker

    from motif_data.figures import pyplot, save_png

    plt = pyplot()

    records = [
        json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").split("\n") if line
    ]
    if not records:
        raise ValueError(f"{metrics_path} holds no steps: train at least one step before plotting")
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
