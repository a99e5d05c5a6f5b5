"""motif_data: the data side of the Motif-2.6B pre-training recipe.

Nothing heavy is imported here: ``import motif_data`` must stay instant for the CLI.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: The eight data domains of the Motif-2.6B mixture, in the order every index-based API uses.
DOMAINS: tuple[str, ...] = (
    "web",
    "multilingual",
    "korean",
    "academic",
    "specialized",
    "code",
    "math",
    "reasoning",
)

__all__ = ["DOMAINS", "__version__"]
