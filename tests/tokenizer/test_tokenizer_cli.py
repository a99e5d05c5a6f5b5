import json

import orjson
import pytest
import zstandard
from tokhelpers import cli

from motif_data.tokenizer.vocab import FIRST_LEARNED, NAMED_SPECIALS

VOCAB = FIRST_LEARNED + len(NAMED_SPECIALS) + 30


@pytest.fixture
def korean_file(tmp_path, small_corpus):
    path = tmp_path / "in" / "ko.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"\n".join([line for line in small_corpus.read_bytes().split(b"\n") if line][-500:]))
    return path


def _train(inputs, out, base, *extra):
    argv = [
        "tokenizer",
        "train",
        "--out",
        str(out),
        "--base",
        str(base),
        "--quiet",
        "--vocab-size",
        str(VOCAB),
    ]
    for path in inputs:
        argv += ["--input", str(path)]
    return cli([*argv, *extra])


def _fails(capsys, out, *needles):
    err = capsys.readouterr().err
    assert "error:" in err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "temp dir left behind"


def test_missing_and_wrong_base_fail_cleanly(korean_file, tmp_path, o200k_path, capsys):
    out = tmp_path / "out" / "tok"
    out.parent.mkdir()
    assert _train([korean_file], out, tmp_path / "nope.tiktoken") == 2
    _fails(capsys, out, "not found", "--base")
    bad = tmp_path / "o200k_base.tiktoken"
    bad.write_bytes(o200k_path.read_bytes()[:-100])
    assert _train([korean_file], out, bad) == 2
    _fails(capsys, out, "expected 446a9538")


@pytest.mark.parametrize("size", [FIRST_LEARNED, FIRST_LEARNED + len(NAMED_SPECIALS), 10**9])
def test_vocab_size_out_of_range_fails(korean_file, tmp_path, o200k_path, capsys, size):
    out = tmp_path / "tok"
    assert _train([korean_file], out, o200k_path, "--vocab-size", str(size)) == 2
    _fails(capsys, out, "--vocab-size")


def test_empty_corpus_fails(tmp_path, o200k_path, capsys):
    english = tmp_path / "en.jsonl"
    english.write_bytes(orjson.dumps({"text": "only English here"}) + b"\n")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    out = tmp_path / "tok"
    assert _train([english, empty], out, o200k_path) == 2
    _fails(capsys, out, "empty corpus", "Hangul")


def test_unreadable_inputs_fail(tmp_path, o200k_path, capsys):
    corrupt = tmp_path / "bad.jsonl.zst"
    corrupt.write_bytes(b"\x28\xb5\x2f\xfd" + b"not zstd at all" * 10)
    out = tmp_path / "tok"
    assert _train([corrupt], out, o200k_path) == 2
    _fails(capsys, out, "bad.jsonl.zst: cannot read")
    assert _train([tmp_path / "missing.jsonl", tmp_path / "*.parquet"], out, o200k_path) == 2
    _fails(capsys, out, "missing.jsonl: no such file", "matches no file")


def test_failure_while_writing_leaves_no_directory(korean_file, tmp_path, o200k_path, capsys, monkeypatch):
    from motif_data.tokenizer import export

    def boom(enc):
        raise OSError("disk full")

    monkeypatch.setattr(export, "to_hf", boom)
    out = tmp_path / "tok"
    assert _train([korean_file], out, o200k_path) == 2
    _fails(capsys, out, "disk full")


def test_bad_lines_are_counted_and_training_goes_on(korean_file, tmp_path, o200k_path):
    messy = tmp_path / "messy.jsonl.zst"
    lines = korean_file.read_bytes() + b'\n{"text": "broken\n\xff\xfe\n{"title": "x"}\n'
    messy.write_bytes(zstandard.ZstdCompressor().compress(lines))
    out = tmp_path / "tok"
    assert _train([messy], out, o200k_path) == 0
    report = json.loads((out / "training.json").read_text())
    assert report["corpus"]["skipped"] == {"invalid_utf8": 1, "malformed_json": 1, "no_text_field": 1}
    assert report["corpus"]["documents"] == len(korean_file.read_bytes().split(b"\n"))  # every good line
    assert report["learned_tokens"] == 30


def test_existing_output_needs_force(korean_file, tmp_path, o200k_path, capsys):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep").write_text("x")
    assert _train([korean_file], out, o200k_path) == 2
    assert "--force" in capsys.readouterr().err and (out / "keep").exists()
    assert _train([korean_file], out, o200k_path, "--force") == 0
    assert not (out / "keep").exists() and (out / "tokenizer.json").exists()


def test_eval_json_reports_bytes_per_token_against_o200k(trained_dir, trained, o200k, korean_file, capsys):
    assert (
        cli(["tokenizer", "eval", "--tokenizer", str(trained_dir), "--input", str(korean_file), "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    texts = [orjson.loads(line)["text"] for line in korean_file.read_bytes().split(b"\n") if line]
    n_bytes = sum(len(t.encode()) for t in texts)
    base = sum(map(len, o200k.encode_ordinary_batch(texts)))
    ours = [i for doc in trained.encode_ordinary_batch(texts) for i in doc]
    (row,) = result["files"]
    assert row["o200k_bytes_per_token"] == round(n_bytes / base, 4)
    assert row["extended_bytes_per_token"] == round(n_bytes / len(ours), 4)
    assert row["bytes_per_token_change"] == round(base / len(ours) - 1, 4)
    assert row["new_token_share_of_output"] == round(sum(i >= FIRST_LEARNED for i in ours) / len(ours), 4)
    assert result["unreachable_tokens"] == 0 and result["learned_tokens"] == 1500
    assert (
        cli(["tokenizer", "eval", "--tokenizer", str(trained_dir), "--input", str(korean_file), "--parity"])
        == 0
    )
    n_docs = len(korean_file.read_bytes().split(b"\n"))
    assert f"HF parity: 0 mismatches, 0 failed decodes in {n_docs} documents" in capsys.readouterr().out
