"""How a build spreads its work: files read in parts by several tasks, and signature files sorted as datatrove sorts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from motif_data.pipeline.config import SourceConfig
from motif_data.pipeline.dedup import sort_records
from motif_data.pipeline.readers import assign_files, read_records


def _jsonl_zst(path, lines: list[bytes], cut: int = 0) -> None:
    data = zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n")
    path.write_bytes(data[: len(data) - cut] if cut else data)


def _lines() -> list[bytes]:
    lines = [json.dumps({"text": f"record {i}"}).encode() for i in range(23)]
    lines[5] = b"{not json"
    lines[9] = b""  # blank lines are not records
    return lines


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_a_file_read_in_parts_gives_every_record_to_exactly_one_part(parts, tmp_path):
    path = tmp_path / "a.jsonl.zst"
    _jsonl_zst(path, _lines())
    source = SourceConfig(name="a", format="jsonl", paths=(str(path),), domain="web")
    whole = list(read_records(source, str(path)))
    got = [list(read_records(source, str(path), part, parts)) for part in range(parts)]
    assert sorted(map(repr, sum(got, []))) == sorted(map(repr, whole))
    # record i of the file goes to part i mod parts
    assert [got[i % parts][i // parts] for i in range(len(whole))] == whole


def test_parquet_rows_read_in_parts_across_batches(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(2500)]}), path, row_group_size=700)
    source = SourceConfig(name="a", format="parquet", paths=(str(path),), domain="web")
    got = [[r["text"] for r, _ in read_records(source, str(path), part, 3)] for part in range(3)]
    assert got == [[f"row {i}" for i in range(part, 2500, 3)] for part in range(3)]


def test_a_cut_file_read_in_parts_is_counted_once(tmp_path):
    path = tmp_path / "a.jsonl.zst"
    _jsonl_zst(path, _lines(), cut=8)
    source = SourceConfig(name="a", format="jsonl", paths=(str(path),), domain="web")
    errors = [e for part in range(3) for r, e in read_records(source, str(path), part, 3) if r is None]
    assert errors.count("truncated_file") == 1
    empty = tmp_path / "empty.jsonl.zst"
    _jsonl_zst(empty, [])
    reasons = [e for part in range(2) for _, e in read_records(source, str(empty), part, 2)]
    assert reasons == ["empty_file"]


def _sources(folder, n: int) -> tuple[SourceConfig, ...]:
    folder.mkdir()
    for i in range(n):
        _jsonl_zst(folder / f"{i:02d}.jsonl.zst", _lines()[: 3 + i])
    return (SourceConfig(name="a", format="jsonl", paths=(str(folder / "*.jsonl.zst"),), domain="web"),)


def test_few_files_are_each_read_by_every_task_and_many_files_whole(tmp_path):
    few = assign_files(_sources(tmp_path / "few", 3), 2)["a"]
    assert len(few) == 6
    assert {(p, part) for p, _, part, parts in few if parts == 2} == {(p, k) for p, *_ in few for k in (0, 1)}
    assert all(len({r for q, r, *_ in few if q == p}) == 2 for p, *_ in few)  # parts of a file: other tasks
    many = assign_files(_sources(tmp_path / "many", 20), 2)["a"]
    assert len(many) == 20 and all(parts == 1 for *_, parts in many)
    assert {r for _, r, *_ in many} == {0, 1}


@pytest.mark.parametrize("rows,values", [(25, 2**32), (25, 3), (1, 4), (5, 2)])
def test_signature_records_sort_as_datatrove_sorts_them(rows, values):
    rng = np.random.default_rng(rows * values)
    records = rng.integers(0, values, size=(3000, rows + 1), dtype=np.uint64).astype("<u4")
    records[1000:1500] = records[:500]  # documents alike in this band: ties on every signature column
    records[:, rows] = rng.permutation(len(records))
    # datatrove's own sort (MinhashDedupSignature.run): a structured array sorted on every field
    dtype = np.dtype([(f"field{i + 1}", "<u4") for i in range(rows + 1)])
    reference = records.copy().view(dtype).reshape(-1)
    reference.sort(order=dtype.names)
    assert sort_records(records.copy()).tobytes() == reference.tobytes()
