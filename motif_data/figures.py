"""Headless matplotlib for every PNG the package writes (plan, demo, loss curves), saved atomically."""

from __future__ import annotations

import os

from motif_data.atomic import atomic_open

__all__ = ["pyplot", "save_png"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: plots are files here, never windows (servers have no display).

    Imported on call so that the CLI and the pure modules never pay for matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike, dpi: float | None = 110) -> None:
    """Lay out, write atomically and close ``fig`` (``dpi=None``: the figure's own)."""
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi if dpi is not None else "figure")
    pyplot().close(fig)
