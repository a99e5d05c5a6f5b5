"""The shared streaming reader against files written by the zstandard and gzip modules themselves."""

import gzip
import random
import zlib

import pytest
import zstandard

from motif_data.textio import TruncatedFile, iter_chunks, iter_lines


def _lines(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    words = ["도시", "river", "λόγος", "x=1;", "\t", "데이터", "end."]
    return [" ".join(rng.choices(words, k=rng.randint(1, 40))).encode() for _ in range(n)]


def _read(path, compression="infer") -> list[bytes]:
    return list(iter_lines(iter_chunks(path, compression)))


def test_plain_zst_and_gz_give_the_same_lines(tmp_path):
    lines = _lines(300)
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    for name in ("a.jsonl", "a.jsonl.zst", "a.jsonl.gz"):
        assert _read(tmp_path / name) == lines, name
        assert _read(str(tmp_path / name)) == lines, name  # a str goes through fsspec
    assert _read((tmp_path / "a.jsonl.zst").as_uri()) == lines


def test_compression_given_overrides_the_name(tmp_path):
    data = b"one\ntwo"
    (tmp_path / "x.bin").write_bytes(zstandard.ZstdCompressor().compress(data))
    assert _read(tmp_path / "x.bin", "zstd") == [b"one", b"two"]
    assert b"".join(iter_chunks(tmp_path / "x.bin")) != data  # inferred from the name: read as plain bytes


def test_several_zstd_frames_back_to_back_are_all_read(tmp_path):
    rng = random.Random(1)
    # incompressible parts larger than one read, so frame ends fall inside reads and frames span reads
    parts = [rng.randbytes(n) for n in (700_000, 3, 1_500_000, 0, 40_000)]
    cctx = zstandard.ZstdCompressor()
    path = tmp_path / "multi.zst"
    path.write_bytes(b"".join(cctx.compress(p) for p in parts))
    assert b"".join(iter_chunks(path)) == b"".join(parts)


def test_truncated_zst_frame_is_an_error_after_the_complete_lines(tmp_path):
    lines = _lines(8000)
    data = b"\n".join(lines) + b"\n"
    whole = zstandard.ZstdCompressor().compress(data)
    cut = whole[: len(whole) // 2]
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(cut)
    reference = zstandard.ZstdDecompressor().decompressobj().decompress(cut).split(b"\n")[:-1]
    assert 0 < len(reference) < len(lines)
    got: list[bytes] = []
    with pytest.raises(TruncatedFile, match="cut.jsonl.zst: cannot read"):
        got.extend(iter_lines(iter_chunks(path)))
    assert got == reference == lines[: len(reference)]
    assert issubclass(TruncatedFile, OSError)


def test_complete_lines_before_a_gz_cut_are_kept(tmp_path):
    lines = _lines(8000, seed=2)
    data = b"\n".join(lines) + b"\n"
    whole = gzip.compress(data)
    cut = whole[: 2 * len(whole) // 3]
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(cut)
    reference = zlib.decompressobj(wbits=31).decompress(cut).split(b"\n")[:-1]
    assert 0 < len(reference) < len(lines)
    got: list[bytes] = []
    with pytest.raises(TruncatedFile, match="cut.jsonl.gz: cannot read"):
        got.extend(iter_lines(iter_chunks(path)))
    assert got == reference == lines[: len(reference)]


@pytest.mark.parametrize("name", ["seps.txt", "seps.zst"])
def test_only_newline_ends_a_line(tmp_path, name):
    lines = [
        "a\u2028b\u2029c".encode(),
        "carriage\rreturn and \x1c\x1d\x1e separators, NEL \x85, VT \x0b, FF \x0c".encode(),
        b"",  # a blank line is kept as a line
        b"last line without a newline",
    ]
    data = b"\n".join(lines)
    assert len(data.decode().splitlines()) > len(lines)  # the trap this reader must not fall into
    path = tmp_path / name
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if name.endswith(".zst") else data)
    assert _read(path) == lines


def test_lines_split_across_chunks_are_joined():
    chunks = iter([b"ab", b"c\nd", b"", b"e\n\nf"])
    assert list(iter_lines(chunks)) == [b"abc", b"de", b"", b"f"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.txt", b""),
        ("empty.zst", b""),
        ("empty-frame.zst", zstandard.ZstdCompressor().compress(b"")),
        ("empty.gz", b""),
        ("empty-member.gz", gzip.compress(b"")),
    ],
)
def test_empty_file_gives_nothing(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert list(iter_chunks(path)) == []
    assert _read(path) == []
