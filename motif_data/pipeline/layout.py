"""Where a build puts things inside its output directory (shared by the stages and the manifest step)."""

from __future__ import annotations

__all__ = ["WORK_DIR", "SPILL_DIR", "RESULTS_DIR", "INTERMEDIATE", "LOGS_DIR"]

#: resumable work state: spill files, dedup data, per-task results, datatrove logs and completion markers
WORK_DIR = ".build"
#: per-task JSONL of the documents that passed the filters, read again by the dedup and tokenize stages
SPILL_DIR = "docs"
#: per-task JSON listing the shards each tokenize task wrote
RESULTS_DIR = "results"
LOGS_DIR = "logs"
#: work folders that only feed later stages; removed once the manifest's inputs exist
INTERMEDIATE = (SPILL_DIR, "exact", "minhash")
