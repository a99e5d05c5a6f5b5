"""Bad input is counted with a reason and the build goes on; nothing is dropped silently."""

from __future__ import annotations

import gzip
import json
import zlib

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from realtext import read_jsonl_zst, write_jsonl_zst

from motif_data.pipeline import BuildConfig, build


def _zst_blocks(lines: list[bytes]) -> bytes:
    """One zstd frame with a block per line, as streaming writers produce, so a cut keeps earlier lines."""
    cobj = zstandard.ZstdCompressor().compressobj()
    parts = [cobj.compress(line + b"\n") + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for line in lines]
    return b"".join(parts) + cobj.flush()


def _good_lines(corpus, n: int) -> list[bytes]:
    return read_jsonl_zst(corpus["academic"], n)


def test_malformed_records_and_files_are_counted_per_reason(corpus, o200k_path, tmp_path):
    good = _good_lines(corpus, 40)
    base = orjson.loads(good[0])["text"]
    mixed = [
        *good[:20],
        b'{"id": "broken", "text": "no closing brace"',  # malformed JSON
        b'{"id": "latin1", "text": "caf\xe9 au lait ' + b"x" * 40 + b'"}',  # invalid UTF-8
        b'{"id": "no-text", "body": "the text is under another key"}',
        b'{"id": "not-a-string", "text": 42}',
        b'{"id": "empty", "text": ""}',
        b'{"id": "blank", "text": "  \\n\\t "}',
        b"[1, 2, 3]",  # valid JSON, not an object
        orjson.dumps({"id": "huge", "text": "가" * 3_400_000}),  # 10.2 MB of UTF-8
        # U+2028 inside a text must not split the line (str.splitlines would)
        orjson.dumps({"id": "ls", "text": base + "\u2028" + base[::-1]}),
    ]
    mixed_path = tmp_path / "mixed.jsonl.zst"
    write_jsonl_zst(mixed_path, mixed)

    whole = _zst_blocks(good[20:40])
    cut = whole[: len(whole) * 2 // 3]
    (tmp_path / "cut.jsonl.zst").write_bytes(cut)
    # independent count of the lines that survive the cut: what a plain decompressor gives back
    complete_in_cut = zstandard.ZstdDecompressor().decompressobj().decompress(cut).count(b"\n")
    assert 0 < complete_in_cut < 20

    gz = gzip.compress(b"".join(line + b"\n" for line in good[:10]))
    gz_cut = gz[: len(gz) // 2]
    (tmp_path / "cut.jsonl.gz").write_bytes(gz_cut)
    complete_in_gz = zlib.decompressobj(wbits=31).decompress(gz_cut).count(b"\n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    pq.write_table(pa.table({"id": ["a", "b", "c"], "content": ["x", "y", "z"]}), tmp_path / "notext.parquet")

    cfg = {
        "output": str(tmp_path / "out"),
        "tokenizer": {"path": str(o200k_path)},
        "executor": {"kind": "local", "tasks": 2, "workers": 1},
        "dedup": {"exact": False, "near": False},
        "sources": [
            {"name": "mixed", "format": "jsonl", "paths": [str(mixed_path)], "domain": "academic"},
            {"name": "cut", "format": "dclm", "paths": [str(tmp_path / "cut.jsonl.*")], "domain": "web"},
            {"name": "empty", "format": "jsonl", "paths": [str(tmp_path / "empty.jsonl")], "domain": "web"},
            {
                "name": "notext",
                "format": "parquet",
                "paths": [str(tmp_path / "notext.parquet")],
                "domain": "web",
            },
        ],
    }
    manifest = build(BuildConfig.from_dict(cfg))
    stats = json.loads((tmp_path / "out/stats.json").read_text())["sources"]

    mixed_row = stats["mixed"]["academic"]
    assert mixed_row["read"] == len(mixed)
    assert mixed_row["errored"] == {
        "malformed_json": 2,
        "invalid_utf8": 1,
        "missing_text": 2,
        "empty_text": 2,
        "too_large": 1,
    }
    assert mixed_row["kept"] + sum(mixed_row["filtered"].values()) == 21
    cut_row = stats["cut"]["web"]
    assert cut_row["errored"] == {"truncated_file": 2}  # the .zst and the .gz
    assert cut_row["read"] == complete_in_cut + complete_in_gz + 2
    assert stats["empty"]["web"] == stats["empty"]["web"] | {
        "read": 1,
        "kept": 0,
        "errored": {"empty_file": 1},
    }
    assert stats["notext"]["web"]["errored"] == {"missing_text": 3}
    assert manifest.domains["academic"].documents == mixed_row["kept"]


def test_truncated_zst_keeps_every_complete_line_before_the_cut(corpus, tmp_path):
    from motif_data.pipeline.config import SourceConfig
    from motif_data.pipeline.readers import read_records

    good = _good_lines(corpus, 30)
    whole = _zst_blocks(good)
    cut = whole[: len(whole) // 2]
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(cut)
    expected = zstandard.ZstdDecompressor().decompressobj().decompress(cut).split(b"\n")[:-1]
    got = list(
        read_records(SourceConfig(name="x", format="jsonl", paths=(str(path),), domain="web"), str(path))
    )
    assert [r for r, _ in got[:-1]] == [orjson.loads(x) for x in expected]
    assert got[-1] == (None, "truncated_file")
