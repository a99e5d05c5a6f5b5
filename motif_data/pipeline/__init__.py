"""The streaming corpus builder: sources → eight domains → filters → dedup → token shards + manifest.

Every block is a datatrove pipeline step run by a datatrove executor (local, Ray or Slurm).

    from motif_data.pipeline import BuildConfig, build
    manifest = build(BuildConfig.load("configs/shared-sample.toml"), out="/tmp/sample")
"""

from motif_data.pipeline.build import build, describe_plan
from motif_data.pipeline.config import BuildConfig

__all__ = ["BuildConfig", "build", "describe_plan"]
