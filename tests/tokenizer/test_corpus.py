import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from motif_data.tokenizer.corpus import CorpusStats, expand_inputs, iter_texts

TEXTS = ["첫 문서\u2028같은 문서의 다음 줄", "second document", "세 번째\r\n문서"]


def _jsonl(texts, field="text") -> bytes:
    return b"".join(orjson.dumps({field: t, "id": i}) + b"\n" for i, t in enumerate(texts))


def test_all_formats_give_the_same_documents(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(_jsonl(TEXTS))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(TEXTS)))
    pq.write_table(pa.table({"text": TEXTS}), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.jsonl.zst", "a.parquet"):
        assert list(iter_texts(tmp_path / name)) == TEXTS, name
    # .txt: one document per line, split on "\n" only (U+2028 stays inside its line)
    (tmp_path / "a.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    assert list(iter_texts(tmp_path / "a.txt")) == [TEXTS[0], TEXTS[1], "세 번째\r", "문서"]


def test_bad_records_are_skipped_and_counted(tmp_path):
    lines = [
        orjson.dumps({"body": "좋은 영화"}),
        b'{"body": "broken',
        b'{"body": "\xff\xfe invalid utf-8"}',
        orjson.dumps({"body": 42}),
        orjson.dumps({"body": ""}),
        orjson.dumps(["not", "an", "object"]),
        orjson.dumps({"body": "끝"}),
    ]
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    stats = CorpusStats()
    assert list(iter_texts(path, "body", stats)) == ["좋은 영화", "끝"]
    assert stats.to_dict() == {
        "documents": 2,
        "skipped": {
            "body_not_a_string": 1,
            "empty_text": 1,
            "invalid_utf8": 1,
            "malformed_json": 1,
            "no_body_field": 1,
        },
    }


def test_invalid_utf8_lines_of_txt_are_counted(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes("가나다\n".encode() + b"\xed\xa0\x80 surrogate\n" + "라마\n".encode())
    stats = CorpusStats()
    assert list(iter_texts(path, stats=stats)) == ["가나다", "라마"]
    assert stats.skipped == {"invalid_utf8": 1}


def test_expand_inputs_globs_and_reports_every_problem(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.csv"):
        (tmp_path / name).write_text("")
    assert expand_inputs([str(tmp_path / "*.jsonl"), tmp_path / "a.jsonl"]) == [
        tmp_path / "a.jsonl",
        tmp_path / "b.jsonl",
    ]
    with pytest.raises(ValueError) as e:
        expand_inputs([tmp_path / "missing.jsonl", str(tmp_path / "*.parquet"), tmp_path / "c.csv", tmp_path])
    message = str(e.value)
    assert "missing.jsonl: no such file" in message
    assert "*.parquet: the glob matches no file" in message
    assert "c.csv: unsupported format" in message
    assert "is a directory (pass a glob such as" in message


def test_corrupt_container_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(TEXTS * 1000))[:-50] + b"garbage")
    with pytest.raises(OSError, match="bad.jsonl.zst: cannot read"):
        list(iter_texts(path))
    pq.write_table(pa.table({"content": TEXTS}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="no column 'text'"):
        list(iter_texts(tmp_path / "x.parquet"))
