"""Streaming reads of text files (plain, zstd, gzip) as byte chunks and as newline-separated lines.

Shared by the pipeline's source readers and the tokenizer's corpus reader; a truncated or corrupt stream is
an error raised after every byte decoded before the cut or the damage.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import BinaryIO, Literal

__all__ = ["Compression", "CorruptStream", "TruncatedFile", "iter_chunks", "iter_lines", "open_binary"]

Compression = Literal["infer", "zstd", "gzip"] | None
_CHUNK = 1 << 20


class TruncatedFile(OSError):
    """A compressed stream ended in the middle of a frame; the message names the file."""


class CorruptStream(OSError):
    """A compressed stream holds bytes that do not decode, from compressed byte ``offset`` on; everything
    decoded before them was yielded. The message names the file and the offset."""

    offset: int = 0


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading: a ``str`` through fsspec (local path or URL), a ``PathLike`` directly.

    A ``Path`` is always a local file: fsspec would read ``::`` or ``://`` in its name as a URL.
    """
    if isinstance(path, str):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def _salvage(
    raw: BinaryIO, new_decoder: Callable, errors: tuple, frame_start: int, offset: int, data: bytes
) -> Generator[bytes, None, int]:
    """What the failing call decoded before the damage, and the compressed offset where decoding failed.

    A decoder returns a call's output only if the whole call succeeds, and one call takes a megabyte: the
    frame is decoded again up to ``offset`` (output already yielded) and then ``data`` one byte at a time.
    """
    raw.seek(frame_start)
    frame, left = new_decoder(), offset - frame_start
    while left > 0 and (block := raw.read(min(left, _CHUNK))):
        frame.decompress(block)
        left -= len(block)
    for i in range(len(data)):
        try:
            out = frame.decompress(data[i : i + 1])
        except errors:
            return offset + i
        if out:
            yield out
    return offset + len(data)


def _frames(
    raw: BinaryIO, path: str | os.PathLike, kind: str, new_decoder: Callable, errors: tuple, padding: bytes
) -> Iterator[bytes]:
    """The decompressed bytes of concatenated frames (zstd) or members (gzip), each with a decoder of its own.

    The decoders' stream readers return EOF quietly on a cut file and lose a whole read on a damaged block,
    so frames are tracked here: a cut raises ``TruncatedFile``, damage ``CorruptStream`` after every byte
    decoded before it. ``padding`` bytes after a frame are skipped (gzip allows NUL padding).
    """
    frame, in_frame = new_decoder(), False
    offset = frame_start = 0  # compressed offsets of ``data`` and of the frame it belongs to
    while data := raw.read(_CHUNK):
        while data:
            if padding and not in_frame and offset:
                skipped = len(data) - len(data := data.lstrip(padding))
                offset, frame_start = offset + skipped, frame_start + skipped
                if not data:
                    break
            try:
                out = frame.decompress(data)
            except errors as e:
                failed_at = yield from _salvage(raw, new_decoder, errors, frame_start, offset, data)
                err = CorruptStream(
                    f"{path}: cannot read past compressed byte {failed_at:,} ({kind} data is corrupt there: "
                    f"{type(e).__name__}: {e}); everything before it was read"
                )
                err.offset = failed_at
                raise err from e
            if out:
                yield out
            in_frame = not frame.eof
            rest = frame.unused_data if frame.eof else b""
            offset += len(data) - len(rest)
            data = rest
            if frame.eof:
                frame, frame_start = new_decoder(), offset
    if in_frame:
        raise TruncatedFile(f"{path}: cannot read ({kind} stream is truncated)")


def _zstd_chunks(raw: BinaryIO, path: str | os.PathLike) -> Iterator[bytes]:
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    return _frames(raw, path, "zstd", dctx.decompressobj, (zstandard.ZstdError,), b"")


def _gzip_chunks(raw: BinaryIO, path: str | os.PathLike) -> Iterator[bytes]:
    # wbits 31: one gzip member with its header and CRC trailer, the unit gzip.GzipFile reads too
    return _frames(raw, path, "gzip", lambda: zlib.decompressobj(wbits=31), (zlib.error,), b"\0")


def iter_chunks(path: str | os.PathLike, compression: Compression = "infer") -> Iterator[bytes]:
    """The decompressed bytes of one file, in chunks of bounded size.

    ``"infer"`` picks zstd for names ending in ``.zst``/``.zstd``, gzip for ``.gz``, else plain bytes.
    Raises ``TruncatedFile`` after the last complete chunk if a compressed stream is cut, ``CorruptStream``
    after the last decodable byte if it is damaged.
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
