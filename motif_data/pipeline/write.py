"""The shard writer as a datatrove step: each task streams its documents into per-domain shards.

Shards are written by :class:`motif_data.shards.ShardWriter` (the one shard format), named
``{domain}/{rank:05d}-{n:05d}.bin``, so a task that is run again rewrites exactly the same files. When a task
ends it leaves ``results/{rank:05d}.json`` (atomically) listing its shards for the manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from motif_data.atomic import atomic_write_text
from motif_data.pipeline.accounting import key
from motif_data.pipeline.config import BuildConfig
from motif_data.pipeline.layout import RESULTS_DIR
from motif_data.pipeline.tokenize import TOKENS_KEY
from motif_data.shards import ShardWriter

__all__ = ["ShardWriteStep", "FinalizeStep"]


class ShardWriteStep(PipelineStep):
    type = "💽 - WRITER"
    name = "motif shard writer"

    def __init__(self, output_dir: str, work_dir: str, max_tokens: int):
        super().__init__()
        self.output_dir = output_dir
        self.work_dir = work_dir
        self.max_tokens = max_tokens

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        writers: dict[str, ShardWriter] = {}
        for doc in data:
            with self.track_time():
                domain, tokens = doc.metadata["domain"], doc.metadata.pop(TOKENS_KEY)
                if domain not in writers:
                    writers[domain] = ShardWriter(
                        f"{self.output_dir}/{domain}", f"{rank:05d}", self.max_tokens
                    )
                writers[domain].write(tokens)
                self.stat_update(key("kept", doc.metadata["source"], domain))
                self.stat_update(key("tokens", doc.metadata["source"], domain), value=len(tokens))
            yield doc
        shards = {d: [asdict(s) for s in w.close()] for d, w in sorted(writers.items())}
        atomic_write_text(f"{self.work_dir}/{RESULTS_DIR}/{rank:05d}.json", json.dumps(shards, indent=1))


class FinalizeStep(PipelineStep):
    """The manifest step as a one-task job, for executors (Slurm) that run stages away from the caller."""

    type = "🧾 - MANIFEST"
    name = "motif manifest"

    def __init__(self, config: BuildConfig):
        super().__init__()
        self.config = config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from pathlib import Path

        from datatrove.utils.logging import logger

        from motif_data.pipeline.manifest import finalize

        # On Slurm this runs as a job of its own: the summary belongs in that task's log.
        finalize(self.config, Path(self.config.output), logger.info)
        return iter(())
