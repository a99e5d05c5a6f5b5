"""Reading training/evaluation text from the formats the builder reads: .jsonl, .jsonl.zst, .parquet, .txt.

Bad records never stop a run: they are skipped and counted by reason in ``CorpusStats``.
Unreadable files (missing, wrong extension, corrupt container) do stop it, with the path in the message.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from motif_data.textio import iter_chunks, iter_lines

__all__ = ["SUFFIXES", "CorpusStats", "expand_inputs", "iter_texts"]

SUFFIXES = (".jsonl", ".jsonl.zst", ".parquet", ".txt")


@dataclass
class CorpusStats:
    """What was read: documents kept, and records skipped per reason."""

    documents: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"documents": self.documents, "skipped": dict(sorted(self.skipped.items()))}


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def expand_inputs(patterns: list[str | os.PathLike]) -> list[Path]:
    """Files named by ``patterns`` (paths or globs), in order, each once; fails on anything unusable."""
    files: list[Path] = []
    problems: list[str] = []
    for pattern in patterns:
        pattern = str(pattern)
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            problems.append(f"{pattern}: the glob matches no file")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                problems.append(f"{path}: is a directory (pass a glob such as {path / '*.jsonl.zst'})")
            elif not path.is_file():
                problems.append(f"{path}: no such file")
            elif _suffix(path) is None:
                problems.append(f"{path}: unsupported format (use one of {', '.join(SUFFIXES)})")
            elif not os.access(path, os.R_OK):
                problems.append(f"{path}: not readable (permission denied)")
            elif path not in files:
                files.append(path)
    if problems:
        raise ValueError("unusable --input: " + "; ".join(problems))
    if not files:
        raise ValueError("no --input given: pass files or globs of .jsonl, .jsonl.zst, .parquet or .txt")
    return files


def _jsonl_texts(path: Path, text_field: str, stats: CorpusStats, compressed: bool) -> Iterator[str]:
    import orjson

    for line in iter_lines(iter_chunks(path, "zstd" if compressed else None)):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                stats.skipped["invalid_utf8"] += 1
            else:
                stats.skipped["malformed_json"] += 1
            continue
        if not isinstance(record, dict) or text_field not in record:
            stats.skipped[f"no_{text_field}_field"] += 1
            continue
        text = record[text_field]
        if not isinstance(text, str):
            stats.skipped[f"{text_field}_not_a_string"] += 1
            continue
        yield text


def _txt_texts(path: Path, stats: CorpusStats) -> Iterator[str]:
    for line in iter_lines(iter_chunks(path, None)):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            stats.skipped["invalid_utf8"] += 1


def _parquet_texts(path: Path, text_field: str, stats: CorpusStats) -> Iterator[str]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    if text_field not in file.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {', '.join(file.schema_arrow.names)})")
    for batch in file.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield text
            else:
                stats.skipped[f"{text_field}_not_a_string"] += 1


def iter_texts(path: Path, text_field: str = "text", stats: CorpusStats | None = None) -> Iterator[str]:
    """The non-empty document texts of one file; skipped records are counted in ``stats``."""
    stats = CorpusStats() if stats is None else stats
    suffix = _suffix(path)
    if suffix == ".parquet":
        texts = _parquet_texts(path, text_field, stats)
    elif suffix == ".txt":
        texts = _txt_texts(path, stats)
    else:
        texts = _jsonl_texts(path, text_field, stats, compressed=suffix == ".jsonl.zst")
    try:
        for text in texts:
            if text:
                stats.documents += 1
                yield text
            else:
                stats.skipped["empty_text"] += 1
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    except Exception as e:  # corrupt zstd frame / parquet footer: the container itself is unreadable
        if isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("zstandard", "pyarrow"):
            raise OSError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
        raise
