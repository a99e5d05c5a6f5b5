"""The token-shard format shared by the builder (writes) and the loader (reads), and the build manifest.

A shard is two files side by side:

* ``NAME.bin`` — the tokens of consecutive documents, little-endian ``uint32``, no header, so that
  ``np.memmap(path, dtype="<u4")`` is the whole reader. Each document ends with ``<|endoftext|>``.
* ``NAME.idx`` — little-endian ``uint64`` document offsets into ``NAME.bin`` in tokens:
  ``n_docs + 1`` entries, ``offsets[0] == 0`` and ``offsets[-1] == tokens in NAME.bin``; document ``i``
  is ``tokens[offsets[i]:offsets[i + 1]]``.

``manifest.json`` (next to the domain folders) lists every shard with its counts and sha256, and names the
tokenizer, so a reader can check that shards and tokenizer belong together.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from motif_data import DOMAINS
from motif_data.atomic import atomic_write_text, fsync_dir

__all__ = [
    "TOKEN_DTYPE",
    "OFFSET_DTYPE",
    "MANIFEST_FORMAT",
    "ShardInfo",
    "DomainInfo",
    "TokenizerInfo",
    "Manifest",
    "ShardWriter",
    "ShardReader",
    "ShardError",
    "file_sha256",
]

TOKEN_DTYPE = np.dtype("<u4")
OFFSET_DTYPE = np.dtype("<u8")
MANIFEST_FORMAT = "motif-shards/1"


class ShardError(ValueError):
    """A shard or manifest is missing, truncated, or does not match its manifest entry."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed in the manifest; ``path`` is the ``.bin`` path relative to the manifest."""

    path: str
    documents: int
    tokens: int
    sha256: str
    index_sha256: str

    @property
    def index_path(self) -> str:
        return self.path[: -len(".bin")] + ".idx"


@dataclass(frozen=True)
class DomainInfo:
    documents: int
    tokens: int
    shards: tuple[ShardInfo, ...]


@dataclass(frozen=True)
class TokenizerInfo:
    """Identity of the tokenizer that produced the shards (``sha256`` is its fingerprint)."""

    name: str
    sha256: str
    vocab_size: int
    eot_id: int


@dataclass(frozen=True)
class Manifest:
    tokenizer: TokenizerInfo
    domains: dict[str, DomainInfo]
    root: Path = field(default=Path("."), compare=False)

    def to_dict(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "tokenizer": asdict(self.tokenizer),
            "domains": {
                d: {
                    "documents": info.documents,
                    "tokens": info.tokens,
                    "shards": [asdict(s) for s in info.shards],
                }
                for d, info in self.domains.items()
            },
        }

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def from_dict(cls, data: dict, root: str | os.PathLike = ".") -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ShardError(f"manifest format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        unknown = sorted(set(data["domains"]) - set(DOMAINS))
        if unknown:
            raise ShardError(f"manifest names unknown domains {unknown}; known: {list(DOMAINS)}")
        domains = {}
        for d in DOMAINS:
            if d not in data["domains"]:
                continue
            entry = data["domains"][d]
            shards = tuple(ShardInfo(**s) for s in entry["shards"])
            domains[d] = DomainInfo(int(entry["documents"]), int(entry["tokens"]), shards)
        return cls(TokenizerInfo(**data["tokenizer"]), domains, Path(root))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise ShardError(f"no manifest at {path}: pass the manifest.json of a finished build")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ShardError(f"{path} is not valid JSON ({e}): the build that wrote it did not finish") from e
        return cls.from_dict(data, root=path.parent)

    def open_shard(self, shard: ShardInfo, *, verify: bool = False) -> ShardReader:
        return ShardReader.open(self.root / shard.path, expected=shard, verify=verify)


class ShardWriter:
    """Streams documents into size-capped shards ``{prefix}-{n:05d}.bin/.idx`` under ``directory``.

    Tokens go straight to a temp file (nothing accumulates in memory) while sha256 is updated
    incrementally; a shard gets its final names only when it is complete (index renamed last).
    """

    def __init__(self, directory: str | os.PathLike, prefix: str, max_tokens: int = 1 << 28):
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_tokens = max_tokens
        self.shards: list[ShardInfo] = []
        self._file = None

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._name = f"{self.prefix}-{len(self.shards):05d}"
        self._tmp = self.directory / f".{self._name}.bin.tmp"
        self._file = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self._offsets = [0]

    def write(self, tokens: np.ndarray) -> None:
        """Append one document (its tokens, end-of-text included)."""
        if self._file is not None and self._offsets[-1] + len(tokens) > self.max_tokens and self._offsets[-1]:
            self._finish()
        if self._file is None:
            self._open()
        data = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._offsets.append(self._offsets[-1] + len(tokens))

    def _finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        idx = np.asarray(self._offsets, dtype=OFFSET_DTYPE).tobytes()
        bin_path = self.directory / f"{self._name}.bin"
        idx_path = self.directory / f"{self._name}.idx"
        os.replace(self._tmp, bin_path)
        idx_tmp = self.directory / f".{self._name}.idx.tmp"
        with open(idx_tmp, "wb") as f:
            f.write(idx)
            f.flush()
            os.fsync(f.fileno())
        os.replace(idx_tmp, idx_path)
        fsync_dir(self.directory)
        self.shards.append(
            ShardInfo(
                path=bin_path.name,
                documents=len(self._offsets) - 1,
                tokens=self._offsets[-1],
                sha256=self._hash.hexdigest(),
                index_sha256=hashlib.sha256(idx).hexdigest(),
            )
        )

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; returns every shard written, paths relative to ``directory``."""
        if self._file is not None:
            self._finish()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


class ShardReader:
    """Memory-mapped view of one shard; nothing is read until it is sliced."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, path: Path):
        self.tokens = tokens
        self.offsets = offsets
        self.path = path

    @classmethod
    def open(
        cls, bin_path: str | os.PathLike, *, expected: ShardInfo | None = None, verify: bool = False
    ) -> ShardReader:
        bin_path = Path(bin_path)
        idx_path = bin_path.with_suffix(".idx")
        for p in (bin_path, idx_path):
            if not p.is_file():
                raise ShardError(f"shard file {p} is missing: rebuild, or point to the right manifest")
        nbytes = bin_path.stat().st_size
        if nbytes % TOKEN_DTYPE.itemsize or idx_path.stat().st_size % OFFSET_DTYPE.itemsize:
            raise ShardError(f"shard {bin_path} is truncated (size not a multiple of its dtype)")
        n_tokens = nbytes // TOKEN_DTYPE.itemsize
        tokens = (
            np.memmap(bin_path, dtype=TOKEN_DTYPE, mode="r") if n_tokens else np.empty(0, dtype=TOKEN_DTYPE)
        )
        offsets = np.memmap(idx_path, dtype=OFFSET_DTYPE, mode="r")
        if len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != n_tokens:
            raise ShardError(
                f"shard {bin_path} is truncated: its index ends at token "
                f"{int(offsets[-1]) if len(offsets) else 'n/a'} but the file holds {n_tokens} tokens"
            )
        backwards = np.flatnonzero(offsets[1:] < offsets[:-1])
        if len(backwards):
            bad = int(backwards[0])
            raise ShardError(
                f"shard index {idx_path} is corrupt: document {bad} ends before it starts "
                f"(offsets {int(offsets[bad])} → {int(offsets[bad + 1])}): rebuild the shard"
            )
        if expected is not None:
            if expected.tokens != n_tokens or expected.documents != len(offsets) - 1:
                raise ShardError(
                    f"shard {bin_path} holds {n_tokens} tokens / {len(offsets) - 1} documents, "
                    f"the manifest says {expected.tokens} / {expected.documents}"
                )
            if verify:
                for p, want in ((bin_path, expected.sha256), (idx_path, expected.index_sha256)):
                    got = file_sha256(p)
                    if got != want:
                        raise ShardError(f"checksum mismatch for {p}: sha256 {got}, manifest says {want}")
        return cls(tokens, offsets, bin_path)

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def document(self, i: int) -> np.ndarray:
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]
