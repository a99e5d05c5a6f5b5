"""The shard writer as a datatrove step: each task streams its documents into per-domain shards.

Shards are written by :class:`motif_data.shards.ShardWriter` (the one shard format), named
``{domain}/{rank:05d}-{n:05d}.bin``, so a task that is run again rewrites exactly the same files. When a task
ends it leaves ``results/{rank:05d}.json`` (atomically) listing its shards for the manifest. An OSError while
writing (a full disk) names the file or shard folder and the step (``motif_data.atomic.OutputError``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter

from motif_data.atomic import atomic_write_text, naming_output, output_error
from motif_data.pipeline.accounting import add_counts, key
from motif_data.pipeline.config import BuildConfig
from motif_data.pipeline.layout import RESULTS_DIR
from motif_data.pipeline.tokenize import TOKENS_KEY
from motif_data.shards import ShardWriter

__all__ = ["ShardWriteStep", "SpillWriter", "FinalizeStep"]


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
        counts: Counter = Counter()
        for doc in data:
            with self.track_time():
                domain, tokens = doc.metadata["domain"], doc.metadata.pop(TOKENS_KEY)
                if domain not in writers:
                    writers[domain] = ShardWriter(
                        f"{self.output_dir}/{domain}", f"{rank:05d}", self.max_tokens
                    )
                try:
                    writers[domain].write(tokens)
                except OSError as e:  # ShardWriter's errors name no file (a write) or its temp file (an open)
                    raise output_error(e, f"{self.output_dir}/{domain}", self.name) from e
                counts[key("kept", doc.metadata["source"], domain)] += 1
                counts[key("tokens", doc.metadata["source"], domain)] += len(tokens)
            yield doc
        add_counts(self, counts)
        shards = {}
        for domain, writer in sorted(writers.items()):
            with naming_output(f"{self.output_dir}/{domain}", self.name):
                shards[domain] = [asdict(s) for s in writer.close()]
        results = f"{self.work_dir}/{RESULTS_DIR}/{rank:05d}.json"
        with naming_output(results, self.name):
            atomic_write_text(results, json.dumps(shards, indent=1))


def _spill_record(writer: JsonlWriter, doc: Document) -> dict:
    """datatrove's default record for a document without media, without its ``dataclasses.asdict``: that
    deep copy of every document's metadata was a third of the ingest stage."""
    if doc.media:
        return writer._default_adapter(doc)
    return {k: v for k, v in (("text", doc.text), ("id", doc.id), ("metadata", doc.metadata)) if v}


class SpillWriter(JsonlWriter):
    """datatrove's JSON Lines writer for the spill files between stages, one uncompressed ``{rank:05d}.jsonl``
    per task; an OSError while writing (a full disk) names the spill file and this step, where datatrove's own
    writer names neither."""

    name = "motif spill writer"

    def __init__(self, output_folder: str):
        super().__init__(
            output_folder, output_filename="${rank}.jsonl", compression=None, adapter=_spill_record
        )

    def _get_output_filename(self, document: Document, rank: int | str = 0, **kwargs) -> str:
        # the name depends on the rank alone: datatrove's template substitution per document is not needed
        return f"{str(rank).zfill(5)}.jsonl"

    def write(self, document: Document, rank: int = 0, **kwargs) -> None:
        try:
            super().write(document, rank, **kwargs)
        except OSError as e:
            name = self._get_output_filename(document, rank, **kwargs)
            raise output_error(e, f"{self.output_folder.path}/{name}", self.name) from e

    def close(self) -> None:
        # buffered lines reach the disk here; the open files are this task's, in this folder
        with naming_output(self.output_folder.path, self.name):
            super().close()


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
