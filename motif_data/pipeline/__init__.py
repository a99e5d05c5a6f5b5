"""The streaming corpus builder: sources → eight domains → filters → dedup → token shards + manifest.

Every block is a datatrove pipeline step run by a datatrove executor (local, Ray or Slurm).

    from motif_data.pipeline import load_config, build
    manifest = build(load_config("configs/shared-sample.toml"), out="/tmp/sample")
"""

from motif_data.pipeline.build import build, describe_plan
from motif_data.pipeline.config import BuildConfig, load_config, parse_config

__all__ = ["BuildConfig", "load_config", "parse_config", "build", "describe_plan"]
