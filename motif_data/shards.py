"""The token-shard format shared by the builder (writes) and the loader (reads), and the build manifest.

A shard is two files side by side:

* ``NAME.bin`` — the tokens of consecutive documents, little-endian ``uint32``, no header, so that
  ``np.memmap(path, dtype="<u4")`` is the whole reader. Each document ends with ``<|endoftext|>``.
* ``NAME.idx`` — little-endian ``uint64`` document offsets into ``NAME.bin`` in tokens:
  ``n_docs + 1`` entries, ``offsets[0] == 0`` and ``offsets[-1] == tokens in NAME.bin``; document ``i``
  is ``tokens[offsets[i]:offsets[i + 1]]``.

``manifest.json`` (next to the domain folders) lists every shard with its counts and sha256, and names the
tokenizer, so a reader can check that shards and tokenizer belong together.

An SFT build (``motif-sft-shards/1``) writes the same two files per shard plus ``NAME.mask``: one ``uint8`` per
token of ``NAME.bin``, 1 where the token is trained on (an assistant's), 0 elsewhere; samples do not end with
``<|endoftext|>``, the index alone separates them. Its ``manifest.json`` lists the shards of the whole mixture.
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
    "MASK_DTYPE",
    "SFT_MANIFEST_FORMAT",
    "MaskedShardInfo",
    "SftManifest",
    "MaskedShardWriter",
    "MaskedShardReader",
    "load_manifest",
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
        return cls.from_dict(_read_manifest(path, "a finished build"), root=path.parent)

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


MASK_DTYPE = np.dtype("u1")
SFT_MANIFEST_FORMAT = "motif-sft-shards/1"


@dataclass(frozen=True)
class MaskedShardInfo(ShardInfo):
    """An SFT shard: ``documents`` are samples, ``labelled`` the tokens whose mask is 1, ``source`` the config
    source they all come from."""

    labelled: int = 0
    mask_sha256: str = ""
    source: str = ""

    @property
    def mask_path(self) -> str:
        return self.path[: -len(".bin")] + ".mask"


@dataclass(frozen=True)
class SftManifest:
    """``manifest.json`` of an SFT build: the tokenizer (with its pad id) and the mixture's shards in order.
    ``kind`` ``"preference"``: samples 2i and 2i + 1 are pair i's chosen and rejected conversations."""

    tokenizer: TokenizerInfo
    pad_id: int
    shards: tuple[MaskedShardInfo, ...]
    root: Path = field(default=Path("."), compare=False)
    kind: str = "sft"

    @property
    def samples(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def sources(self) -> list[str]:
        """The build's source names, in the order of their first shard."""
        return list(dict.fromkeys(s.source for s in self.shards))

    def to_dict(self) -> dict:
        return {
            "format": SFT_MANIFEST_FORMAT,
            "kind": self.kind,
            "tokenizer": asdict(self.tokenizer),
            "pad_id": self.pad_id,
            "samples": self.samples,
            "tokens": self.tokens,
            "shards": [asdict(s) for s in self.shards],
        }

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> SftManifest:
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        return cls.from_dict(_read_manifest(path, "a finished `motif-data sft build`"), root=path.parent)

    @classmethod
    def from_dict(cls, data: dict, root: str | os.PathLike = ".") -> SftManifest:
        if data.get("format") != SFT_MANIFEST_FORMAT:
            raise ShardError(
                f"manifest format is {data.get('format')!r}, expected {SFT_MANIFEST_FORMAT!r}: pass the "
                "manifest of an SFT build (a pre-training build's is read by Manifest)"
            )
        shards = tuple(MaskedShardInfo(**s) for s in data["shards"])
        tokenizer = TokenizerInfo(**data["tokenizer"])
        return cls(tokenizer, int(data["pad_id"]), shards, Path(root), data.get("kind", "sft"))

    def open_shard(self, shard: MaskedShardInfo, *, verify: bool = False) -> MaskedShardReader:
        return MaskedShardReader.open(self.root / shard.path, expected=shard, verify=verify)


def _read_manifest(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ShardError(f"no manifest at {path}: pass the manifest.json of {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ShardError(f"{path} is not valid JSON ({e}): the build that wrote it did not finish") from e


def load_manifest(path: str | os.PathLike) -> Manifest | SftManifest:
    """The manifest of a pre-training or an SFT build (its manifest.json, or the build's directory), told apart
    by its format: read once, so that what is checked is what is loaded."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    data = _read_manifest(path, "a finished build")
    if data.get("format") == SFT_MANIFEST_FORMAT:
        return SftManifest.from_dict(data, root=path.parent)
    return Manifest.from_dict(data, root=path.parent)


class MaskedShardWriter(ShardWriter):
    """``ShardWriter`` that also writes each sample's loss mask to ``NAME.mask`` (renamed before the index,
    which is still renamed last)."""

    def _open(self) -> None:
        super()._open()
        self._mask_tmp = self.directory / f".{self._name}.mask.tmp"
        self._mask_file = open(self._mask_tmp, "wb")
        self._mask_hash = hashlib.sha256()
        self._labelled = 0

    def write(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Append one sample: its tokens and, per token, 1 where it is trained on."""
        if mask is None or len(mask) != len(tokens):
            raise ValueError(f"a masked shard needs one mask value per token, got {mask!r}")
        super().write(tokens)  # may finish the previous shard and open the next
        data = np.ascontiguousarray(mask, dtype=MASK_DTYPE).tobytes()
        self._mask_file.write(data)
        self._mask_hash.update(data)
        self._labelled += int(np.count_nonzero(mask))

    def _finish(self) -> None:
        self._mask_file.flush()
        os.fsync(self._mask_file.fileno())
        self._mask_file.close()
        os.replace(self._mask_tmp, self.directory / f"{self._name}.mask")
        super()._finish()
        info = self.shards.pop()
        self.shards.append(
            MaskedShardInfo(**asdict(info), labelled=self._labelled, mask_sha256=self._mask_hash.hexdigest())
        )

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._file is not None:
            self._mask_file.close()
            self._mask_tmp.unlink(missing_ok=True)
        super().__exit__(exc_type, exc, tb)


class MaskedShardReader(ShardReader):
    """``ShardReader`` with ``mask``, the memory-mapped ``NAME.mask``."""

    mask: np.ndarray

    @classmethod
    def open(
        cls, bin_path: str | os.PathLike, *, expected: MaskedShardInfo | None = None, verify: bool = False
    ) -> MaskedShardReader:
        reader = super().open(bin_path, expected=expected, verify=verify)
        mask_path = Path(bin_path).with_suffix(".mask")
        if not mask_path.is_file():
            raise ShardError(f"mask file {mask_path} is missing: rebuild, or point to the right manifest")
        if mask_path.stat().st_size != reader.num_tokens * MASK_DTYPE.itemsize:
            raise ShardError(
                f"mask {mask_path} holds {mask_path.stat().st_size} values for {reader.num_tokens} tokens: rebuild"
            )
        if verify and expected is not None and file_sha256(mask_path) != expected.mask_sha256:
            raise ShardError(f"checksum mismatch for {mask_path}: rebuild the shard")
        reader.mask = (
            np.memmap(mask_path, dtype=MASK_DTYPE, mode="r") if reader.num_tokens else np.empty(0, MASK_DTYPE)
        )
        return reader

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], self.mask[a:b]
