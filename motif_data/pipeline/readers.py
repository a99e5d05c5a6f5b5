"""Source readers: datatrove steps that turn the files of one configured source into ``Document``s.

Unlike datatrove's own readers they never drop a record silently: a record that cannot become a usable
document (malformed JSON, missing text, invalid UTF-8, empty or too large text, a truncated, corrupt or empty file)
is still yielded, with empty text and its reason in ``metadata["_error"]``, so that the router can count it
against its source and domain.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import zstandard
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader

from motif_data.pipeline.config import SourceConfig, expand_paths, is_url
from motif_data.textio import CorruptStream, TruncatedFile, iter_chunks, iter_lines, open_binary

__all__ = [
    "SourceReader",
    "SpillReader",
    "assign_files",
    "read_records",
    "ERROR_KEY",
    "SOURCE_KEY",
    "CorruptStream",
    "TruncatedFile",
]

ERROR_KEY = "_error"
SOURCE_KEY = "source"
# Metadata kept per document must stay small: the spill files carry it between stages.
_MAX_META_VALUE = 4096


def _record_from_json(line: bytes) -> tuple[dict | None, str | None]:
    import orjson

    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, "malformed_json"
    if not isinstance(record, dict):
        return None, "malformed_json"
    return record, None


def _jsonl(path: str, part: int, parts: int) -> Iterator[tuple[dict | None, str | None]]:
    # the other parts' lines are only split off, never parsed: that is what reading a file in parts costs
    lines = (line for line in iter_lines(iter_chunks(path)) if line.strip())
    for line in itertools.islice(lines, part, None, parts):
        yield _record_from_json(line)


def _parquet(path: str, text_field: str, part: int, parts: int) -> Iterator[tuple[dict | None, str | None]]:
    import pyarrow.parquet as pq

    with open_binary(path) as f:
        pf = pq.ParquetFile(f)
        if text_field not in pf.schema_arrow.names:
            for _ in range(part, pf.metadata.num_rows, parts):
                yield None, "missing_text"
            return
        first = 0  # the file's index of the batch's first row
        for batch in pf.iter_batches(batch_size=1024):
            rows = len(batch)
            if parts > 1:  # only this part's rows become Python objects
                batch = batch.take(list(range((part - first) % parts, rows, parts)))
            first += rows
            yield from ((row, None) for row in batch.to_pylist())


def _text(path: str, text_field: str, max_bytes: int) -> Iterator[tuple[dict | None, str | None]]:
    parts, size = [], 0
    for chunk in iter_chunks(path):
        size += len(chunk)
        if size > max_bytes:  # stop reading: a huge file must not be held in memory to be rejected
            yield None, "too_large"
            return
        parts.append(chunk)
    data = b"".join(parts)
    try:
        yield {text_field: data.decode("utf-8")}, None
    except UnicodeDecodeError:
        yield None, "invalid_utf8"


def _hf(source: SourceConfig, rank: int, world_size: int) -> Iterator[tuple[dict | None, str | None]]:
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    # a dataset that cannot be opened (wrong name, no access) fails the task: that is a config problem
    ds = load_dataset(
        source.dataset,
        source.subset,
        split=source.split,
        data_files=list(source.data_files) or None,
        revision=source.revision,
        streaming=True,
    )
    try:
        for row in split_dataset_by_node(ds, rank=rank, world_size=world_size):
            yield row, None
    except (OSError, ValueError) as e:
        # a shard that cannot be fetched or parsed mid-stream ends this task's part, counted like a bad file
        yield None, f"unreadable_dataset:{type(e).__name__}"


def read_records(
    source: SourceConfig, path: str, part: int = 0, parts: int = 1
) -> Iterator[tuple[dict | None, str | None]]:
    """``(record, None)`` for each record of one file, or ``(None, reason)`` where one is unusable; with
    ``parts`` > 1 only the records whose index in the file is ``part`` modulo ``parts``.

    A file that cannot be read to its end adds one ``(None, reason)`` after the records it did give; read in
    parts, part 0 alone reports it (and an empty file), so that it counts once.
    """
    n = 0
    try:
        if source.format in ("dclm", "jsonl"):
            it = _jsonl(path, part, parts)
        elif source.format in ("fineweb2", "parquet"):
            it = _parquet(path, source.text_field, part, parts)
        else:  # one record per file: `assign_files` never splits these
            it = _text(path, source.text_field, source.filters.max_bytes)
        for item in it:
            n += 1
            yield item
    except TruncatedFile:
        if part == 0:
            yield None, "truncated_file"
        return
    except CorruptStream as e:
        if part == 0:
            # The stats count reasons, not files: the log says which file broke and at which byte.
            from datatrove.utils.logging import logger

            where = f"part 1 of {parts}: " if parts > 1 else ""  # the other parts count their own records
            logger.warning(
                f"{e} ({where}{n:,} records before it kept; the rest counts as one unreadable_tail)"
            )
            yield None, "unreadable_tail"
        return
    except (OSError, ValueError, EOFError, zstandard.ZstdError) as e:
        # pyarrow raises ArrowInvalid (a ValueError) for a corrupt parquet file, zstandard a ZstdError.
        if part == 0:
            yield None, f"unreadable_file:{type(e).__name__}"
        return
    if n == 0 and part == 0:  # part 0 holds a file's first record, so it alone sees whether there is one
        yield None, "empty_file"


def _keep(value: Any) -> bool:
    """Metadata worth carrying: small JSON values (bytes, timestamps and the like stay behind)."""
    if isinstance(value, str | list | dict):
        return len(value) <= _MAX_META_VALUE
    return isinstance(value, int | float | bool) or value is None


#: Units (files or parts of files) a task's share should be made of at least. Bytes say little about a file's
#: cost, which is mostly per record (one file of short reviews holds 77 % of the shared samples' records in 15 %
#: of their compressed bytes), so a build of few files reads each in parts: record i of a file split in p parts
#: goes to part i mod p, which balances records and bytes alike. Every part decompresses and splits the whole
#: file (0.4 s for the shared samples, ≈ 6 % of their ingest stage per extra part); with many files per task no
#: file is split.
_UNITS_PER_TASK = 8


def assign_files(sources: tuple[SourceConfig, ...], tasks: int) -> dict[str, list[tuple[str, int, int, int]]]:
    """Every input file with the tasks that read it, as ``(path, rank, part, parts)``: the file's parts go, largest
    files first, to the least-loaded tasks, each part to a different task.

    A file is read in ``parts`` = ``min(tasks, ⌈tasks × 8 / files⌉)`` parts (text files, one record each, in one),
    so that each task's share is made of several units. Sizes come from the local file system (remote files
    count as equal); the assignment depends only on the config and the files, never on the executor.
    """
    files = [(s, p) for s in sources if s.format != "hf" for p in expand_paths(s)]
    sizes = [0 if is_url(p) else os.path.getsize(p) for _, p in files]
    split = min(tasks, -(-tasks * _UNITS_PER_TASK // max(len(files), 1)))
    load = [(0, 0, rank) for rank in range(tasks)]  # (bytes, parts, rank)
    out: dict[str, list[tuple[str, int, int, int]]] = {s.name: [] for s in sources}
    for i in sorted(range(len(files)), key=lambda i: (-sizes[i], i)):
        source, path = files[i]
        parts = 1 if source.format == "text" else split
        load.sort()
        for part in range(parts):
            nbytes, nparts, rank = load[part]
            load[part] = (nbytes + sizes[i] / parts, nparts + 1, rank)
            out[source.name].append((path, rank, part, parts))
    return {name: sorted(assigned, key=lambda f: (f[1], f[0], f[2])) for name, assigned in out.items()}


class SourceReader(PipelineStep):
    """Reads one configured source: the files :func:`assign_files` gives this task, or its split of a hub dataset.

    Files are listed when the task runs (as datatrove's readers do), so the executor's payload stays small
    and nothing is listed before the build starts; every task lists the same files in the same order.
    """

    type = "📖 - READER"
    name = "motif source reader"

    def __init__(self, source: SourceConfig, sources: tuple[SourceConfig, ...]):
        super().__init__()
        self.source = source
        self.sources = sources

    def _document(self, record: dict | None, error: str | None, ref: str) -> Document:
        meta: dict[str, Any] = {SOURCE_KEY: self.source.name}
        if record is None:
            return Document(text="", id=ref, metadata=meta | {ERROR_KEY: error})
        text = record.pop(self.source.text_field, None)
        doc_id = str(record.pop(self.source.id_field, ref))
        inner = record.pop("metadata", None)
        if isinstance(inner, dict):
            record = inner | record
        meta |= {k: v for k, v in record.items() if _keep(v) and k not in (ERROR_KEY, SOURCE_KEY)}
        if not isinstance(text, str):
            meta[ERROR_KEY] = "missing_text"
            text = ""
        elif not text.strip():
            meta[ERROR_KEY] = "empty_text"
            text = ""
        elif (
            4 * len(text) > self.source.filters.max_bytes
            and len(text.encode("utf-8")) > self.source.filters.max_bytes
        ):
            meta[ERROR_KEY] = "too_large"
            text = ""
        return Document(text=text, id=doc_id, metadata=meta)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        if self.source.format == "hf":
            units = [(f"{self.source.dataset}@{rank}", 0, 1, _hf(self.source, rank, world_size))]
        else:
            files = assign_files(self.sources, world_size)[self.source.name]
            units = [
                (os.path.basename(p), part, parts, read_records(self.source, p, part, parts))
                for p, r, part, parts in files
                if r == rank
            ]
        read = 0
        for name, part, parts, records in units:
            if part == 0:
                self.stat_update("files")
            for i, (record, error) in enumerate(records):
                with self.track_time():
                    # the record's index in the whole file, whichever part reads it
                    doc = self._document(record, error, f"{name}#{part + i * parts}")
                read += 1
                yield doc
        self.stat_update("records", value=read, unit="task")  # once: see accounting.add_counts


class SpillReader(JsonlReader):
    """Reads exactly this task's spill file, so that document indices match across the dedup stages."""

    name = "motif spill reader"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.data_folder.isfile(f"{rank:05d}.jsonl"):
            yield from self.read_file(f"{rank:05d}.jsonl")
