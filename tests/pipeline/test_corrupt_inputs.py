"""A compressed input damaged in the middle keeps every record decoded before the damage; the rest counts
as one ``unreadable_tail``, and the log names the file and the byte offset."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import orjson
import pytest
import zstandard
from realtext import read_jsonl_zst, write_jsonl_zst

from motif_data import textio
from motif_data.pipeline import BuildConfig, build
from motif_data.pipeline.config import SourceConfig
from motif_data.pipeline.readers import read_records
from motif_data.textio import CorruptStream, iter_chunks, iter_lines

PER_BLOCK = 8  # lines per flushed block


def _streamed(lines: list[bytes], per_frame: int | None = None) -> tuple[bytes, list[tuple[int, int]]]:
    """A .jsonl.zst as a streaming writer leaves it: a block flushed every PER_BLOCK lines, a new frame every
    ``per_frame`` lines. Also returns, per block, (compressed offset where it ends, lines up to its end)."""
    out, ends = bytearray(), []
    per_frame = per_frame or len(lines)
    for first in range(0, len(lines), per_frame):
        cobj = zstandard.ZstdCompressor().compressobj()
        frame = lines[first : first + per_frame]
        for b in range(0, len(frame), PER_BLOCK):
            out += cobj.compress(b"".join(line + b"\n" for line in frame[b : b + PER_BLOCK]))
            out += cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            ends.append((len(out), first + min(b + PER_BLOCK, len(frame))))
        out += cobj.flush()
    return bytes(out), ends


def _damaged(data: bytes, at: int, n: int = 64) -> bytes:
    """``data`` with ``n`` bytes from ``at`` flipped, as in the issue."""
    return data[:at] + bytes(b ^ 0xFF for b in data[at : at + n]) + data[at + n :]


def _middle_block_start(ends: list[tuple[int, int]], size: int) -> int:
    """Where the block holding the file's middle byte starts. Damage there hits the block's header, which
    every decoder rejects; flipped bytes deeper inside a block can decode to wrong text without an error."""
    return max(end for end, _ in ends if end <= size // 2)


def _source(path: Path) -> SourceConfig:
    return SourceConfig(name="dclm", format="dclm", paths=(str(path),), domain="web")


def _dclm_lines(corpus) -> list[bytes]:
    return read_jsonl_zst(corpus["web"])


@pytest.mark.parametrize("per_frame", [None, 40], ids=["one frame", "frames of 40 lines"])
@pytest.mark.parametrize("read_size", [None, 4096], ids=["1 MiB reads", "4 KiB reads"])
def test_damaged_zst_keeps_every_record_of_the_blocks_before_the_damage(
    corpus, tmp_path, monkeypatch, per_frame, read_size
):
    if read_size:  # the damage then lies many reads into the file (and past frame starts)
        monkeypatch.setattr(textio, "_CHUNK", read_size)
    lines = _dclm_lines(corpus)
    whole, ends = _streamed(lines, per_frame)
    at = _middle_block_start(ends, len(whole))
    path = tmp_path / "dclm.jsonl.zst"
    path.write_bytes(_damaged(whole, at))
    with pytest.raises(zstandard.ZstdError), open(path, "rb") as f:  # really damaged, not just altered
        zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    # independent of the reader: the lines of the blocks that end before the first flipped byte
    intact = max(n for end, n in ends if end <= at)
    damaged_block_end = min(end for end, _ in ends if end > at)
    assert 0 < intact < len(lines)

    got = list(read_records(_source(path), str(path)))
    assert [record for record, _ in got[:-1]] == [orjson.loads(line) for line in lines[:intact]]
    assert got[-1] == (None, "unreadable_tail")

    with pytest.raises(CorruptStream, match="dclm.jsonl.zst: cannot read past compressed byte") as e:
        list(iter_chunks(path))
    assert at <= e.value.offset < damaged_block_end


def test_damaged_zst_keeps_what_zstandard_yields_before_raising(corpus, tmp_path):
    """The issue's file: one frame written at once (blocks of 128 KiB), 64 bytes flipped in the middle. The
    reference is zstandard's other streaming API, reading one byte at a time, so that it yields every block
    as it completes. (`zstd -dc` 1.5.4 writes none of them here: it drops its pending output on the error.)"""
    lines = _dclm_lines(corpus)
    path = tmp_path / "dclm.jsonl.zst"
    write_jsonl_zst(path, lines)
    path.write_bytes(_damaged(path.read_bytes(), path.stat().st_size // 2))
    decoded: list[bytes] = []
    with pytest.raises(zstandard.ZstdError), open(path, "rb") as f:
        decoded.extend(zstandard.ZstdDecompressor().read_to_iter(f, read_size=1))
    reference = b"".join(decoded).split(b"\n")[:-1]  # the last piece is an incomplete line
    assert 0 < len(reference) < len(lines)

    got = list(read_records(_source(path), str(path)))
    assert [record for record, _ in got[:-1]] == [orjson.loads(line) for line in reference]
    assert got[-1] == (None, "unreadable_tail")


def test_build_keeps_the_records_before_the_damage_and_counts_one_unreadable_tail(
    corpus, o200k_path, tmp_path
):
    lines = _dclm_lines(corpus)
    whole, ends = _streamed(lines)
    at = _middle_block_start(ends, len(whole))
    path = tmp_path / "dclm.jsonl.zst"
    path.write_bytes(_damaged(whole, at))
    intact = max(n for end, n in ends if end <= at)
    cfg = {
        "output": str(tmp_path / "out"),
        "tokenizer": {"path": str(o200k_path)},
        "executor": {"kind": "local", "tasks": 1, "workers": 1},
        "dedup": {"exact": False, "near": False},
        "sources": [{"name": "dclm", "format": "dclm", "paths": [str(path)], "domain": "web"}],
    }
    manifest = build(BuildConfig.from_dict(cfg), log=lambda _: None)
    row = json.loads((tmp_path / "out/stats.json").read_text())["sources"]["dclm"]["web"]
    assert row["read"] == intact + 1
    assert row["errored"] == {"unreadable_tail": 1}
    assert row["kept"] + sum(row["filtered"].values()) == intact
    assert manifest.domains["web"].documents == row["kept"]
    logs = "".join(p.read_text() for p in (tmp_path / "out/.build/logs").glob("1-*/logs/*.log"))
    assert f"{path}: cannot read past compressed byte" in logs
    assert f"{intact:,} records before it kept" in logs


def test_damaged_gz_keeps_the_lines_before_the_damage(corpus, tmp_path):
    lines = _dclm_lines(corpus)
    cobj = zlib.compressobj(wbits=31)
    whole, ends = b"", []
    for b in range(0, len(lines), PER_BLOCK):
        whole += cobj.compress(b"".join(line + b"\n" for line in lines[b : b + PER_BLOCK]))
        whole += cobj.flush(zlib.Z_FULL_FLUSH)
        ends.append((len(whole), min(b + PER_BLOCK, len(lines))))
    whole += cobj.flush()
    at = _middle_block_start(ends, len(whole))
    path = tmp_path / "dclm.jsonl.gz"
    path.write_bytes(_damaged(whole, at))
    with pytest.raises((zlib.error, gzip.BadGzipFile)):
        gzip.decompress(path.read_bytes())
    intact = max(n for end, n in ends if end <= at)

    got: list[bytes] = []
    with pytest.raises(CorruptStream, match="dclm.jsonl.gz: cannot read past compressed byte"):
        got.extend(iter_lines(iter_chunks(path)))
    # deflate has no block check: bytes decoded from the damage before zlib notices may follow (they then
    # count as malformed records), so only the lines before the damage are compared
    assert got[:intact] == lines[:intact]


def test_gz_members_with_nul_padding_between_them_read_as_gzip_reads_them(corpus, tmp_path):
    lines = _dclm_lines(corpus)
    half = len(lines) // 2
    data = (
        gzip.compress(b"".join(line + b"\n" for line in lines[:half]))
        + b"\0" * 100
        + gzip.compress(b"".join(line + b"\n" for line in lines[half:]))
        + b"\0" * 7
    )
    path = tmp_path / "padded.jsonl.gz"
    path.write_bytes(data)
    assert list(iter_lines(iter_chunks(path))) == gzip.decompress(data).split(b"\n")[:-1]
