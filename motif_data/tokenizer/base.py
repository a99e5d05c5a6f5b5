"""Loading OpenAI's ``o200k_base``, the encoding our tokenizer extends, offline or online.

The rank file is checked against its published sha256 so that an extension is never trained on,
or applied to, a different base.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import os
from pathlib import Path
from unittest import mock

import tiktoken
import tiktoken_ext.openai_public

__all__ = ["O200K_SHA256", "O200K_FILENAME", "load_base", "base_spec", "encoding_spec", "fingerprint"]

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_FILENAME = "o200k_base.tiktoken"


def _read_checked(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(
            f"o200k_base rank file not found at {path}: pass --base PATH to the file "
            f"(sha256 {O200K_SHA256[:16]}…) or set TIKTOKEN_CACHE_DIR"
        )
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest}, expected {O200K_SHA256} (o200k_base): "
            "pass --base PATH to the real o200k_base.tiktoken or set TIKTOKEN_CACHE_DIR"
        )
    return data


def _packaged_copy() -> Path | None:
    """o200k as shipped inside the ``bpe-openai`` wheel (the ``demo`` extra), for offline machines.

    Located without importing the package, whose native extension we do not need.
    """
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "o200k_base.tiktoken.gz"
    return path if path.is_file() else None


def base_spec(path: str | os.PathLike | None = None) -> dict:
    """The constructor arguments of the o200k ``tiktoken.Encoding`` (name, pat_str, ranks, specials).

    Source, in order: ``path``; ``$TIKTOKEN_CACHE_DIR/o200k_base.tiktoken``; tiktoken's own cache
    (``TIKTOKEN_CACHE_DIR`` in its layout); the copy in an installed ``bpe-openai`` wheel; a download by
    tiktoken for users who are online.
    """
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    if path is None and cache and (Path(cache) / O200K_FILENAME).is_file():
        path = Path(cache) / O200K_FILENAME
    if path is None and not cache:
        path = _packaged_copy()
    if path is None:
        return encoding_spec(tiktoken.get_encoding("o200k_base"))
    data = _read_checked(Path(path))
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    # tiktoken defines o200k's split pattern and specials inside the function that downloads the ranks;
    # hand it our ranks instead so the pattern stays tiktoken's own, never a copy that could drift.
    with mock.patch.object(tiktoken_ext.openai_public, "load_tiktoken_bpe", return_value=ranks):
        return tiktoken_ext.openai_public.o200k_base()


def load_base(path: str | os.PathLike | None = None) -> tiktoken.Encoding:
    """The ``o200k_base`` encoding, from ``path``, ``TIKTOKEN_CACHE_DIR`` or tiktoken's normal loader."""
    return tiktoken.Encoding(**base_spec(path))


def encoding_spec(enc: tiktoken.Encoding) -> dict:
    """An encoding's constructor arguments: ``name``, ``pat_str``, ``mergeable_ranks`` (bytes → rank),
    ``special_tokens`` (name → id); ``tiktoken.Encoding(**spec)`` rebuilds it. tiktoken has no public
    accessor for them, so this is the one place in the package that reads its private fields."""
    return {
        "name": enc.name,
        "pat_str": enc._pat_str,
        "mergeable_ranks": enc._mergeable_ranks,
        "special_tokens": enc._special_tokens,
    }


def fingerprint(enc: tiktoken.Encoding) -> str:
    """sha256 over everything that decides an encoding's ids: split pattern, ranks and specials."""
    spec = encoding_spec(enc)
    h = hashlib.sha256()
    h.update(spec["pat_str"].encode())
    for token, rank in sorted(spec["mergeable_ranks"].items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
    for name, rank in sorted(spec["special_tokens"].items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little") + name.encode())
    return h.hexdigest()
