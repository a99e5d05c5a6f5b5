"""Streaming reads of text files (plain, zstd, gzip) as byte chunks and as newline-separated lines.

Shared by the pipeline's source readers and the tokenizer's corpus reader; a truncated stream is an error.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from typing import BinaryIO, Literal

__all__ = ["Compression", "TruncatedFile", "iter_chunks", "iter_lines", "open_binary"]

Compression = Literal["infer", "zstd", "gzip"] | None
_CHUNK = 1 << 20


class TruncatedFile(OSError):
    """A compressed stream ended in the middle of a frame; the message names the file."""


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading: a ``str`` through fsspec (local path or URL), a ``PathLike`` directly.

    A ``Path`` is always a local file: fsspec would read ``::`` or ``://`` in its name as a URL.
    """
    if isinstance(path, str):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def _zstd_chunks(raw: BinaryIO, path: str | os.PathLike) -> Iterator[bytes]:
    # zstandard's stream reader returns EOF quietly on a cut file, so frames are tracked here;
    # a file may hold several frames back to back (e.g. written in blocks), each decompressed in turn.
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    frame, in_frame = dctx.decompressobj(), False
    while data := raw.read(_CHUNK):
        while data:
            if out := frame.decompress(data):
                yield out
            in_frame = not frame.eof
            data = frame.unused_data if frame.eof else b""
            if frame.eof:
                frame = dctx.decompressobj()
    if in_frame:
        raise TruncatedFile(f"{path}: cannot read (zstd stream is truncated)")


def _gzip_chunks(raw: BinaryIO, path: str | os.PathLike) -> Iterator[bytes]:
    try:
        with gzip.GzipFile(fileobj=raw) as gz:
            # read1 hands over what is decompressed so far, so the lines before a cut are kept
            while block := gz.read1(_CHUNK):
                yield block
    except EOFError as e:
        raise TruncatedFile(f"{path}: cannot read (gzip stream is truncated: {e})") from e


def iter_chunks(path: str | os.PathLike, compression: Compression = "infer") -> Iterator[bytes]:
    """The decompressed bytes of one file, in chunks of bounded size.

    ``"infer"`` picks zstd for names ending in ``.zst``/``.zstd``, gzip for ``.gz``, else plain bytes.
    Raises ``TruncatedFile`` after the last complete chunk if a compressed stream is cut.
    """
    if compression == "infer":
        name = os.fspath(path)
        compression = "zstd" if name.endswith((".zst", ".zstd")) else "gzip" if name.endswith(".gz") else None
    with open_binary(path) as raw:
        if compression == "zstd":
            yield from _zstd_chunks(raw, path)
        elif compression == "gzip":
            yield from _gzip_chunks(raw, path)
        else:
            while block := raw.read(_CHUNK):
                yield block


def iter_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream, without their ``\\n``; a last line without one is still yielded.

    Splits on ``b"\\n"`` only: texts hold U+2028/U+2029 (and \\r, \\x1c-\\x1e), which ``str.splitlines`` would
    also split on, cutting a record in two.
    """
    rest = b""
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest
