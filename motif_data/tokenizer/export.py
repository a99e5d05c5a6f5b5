"""Writing and reading a tokenizer directory: tiktoken rank file + specials.json, HF tokenizer.json + config.

Directory layout (every file byte-identical for the same encoding):
    tokenizer.tiktoken      base64 token and rank per line (tiktoken's own format), mergeable tokens only
    specials.json           name, split pattern, vocabulary size, special tokens (name → id)
    tokenizer.json          HF byte-level BPE that encodes exactly like tiktoken (see ``to_hf``)
    tokenizer_config.json   for ``transformers.PreTrainedTokenizerFast`` / ``AutoTokenizer``, with the ChatML
                            ``chat_template`` (``chat.py``) where ``<|im_start|>``/``<|im_end|>`` exist
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import tiktoken

from motif_data.atomic import atomic_dir, atomic_write_bytes, atomic_write_text
from motif_data.tokenizer.base import encoding_spec
from motif_data.tokenizer.bpe import merge_parts
from motif_data.tokenizer.chat import CHAT_TEMPLATE, IM_END, IM_START
from motif_data.tokenizer.vocab import BASE_RANKS

__all__ = ["RANKS_FILE", "SPECIALS_FILE", "HF_FILE", "HF_CONFIG_FILE", "save", "load", "to_hf", "write_dir"]

RANKS_FILE = "tokenizer.tiktoken"
SPECIALS_FILE = "specials.json"
HF_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte → printable character map that HF's ByteLevel pre-tokenizer and decoder use."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_PREFIX_MERGES: dict[bytes, list[tuple[bytes, bytes]]] = {}


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every multi-byte token's two parts, in rank order, recovered with tiktoken's merge rule.

    A token's merge depends only on lower ranks, so the o200k part (≈ 2 s in Python) is remembered
    per process under a digest of those ranks and reused by later exports that share it.
    """
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    base = [token for token, rank in ordered if rank < BASE_RANKS]
    key = hashlib.sha256(b"".join(len(t).to_bytes(2, "little") + t for t in base)).digest()
    if len(base) != BASE_RANKS:
        key = b""  # ranks 0 … BASE_RANKS-1 are not all there: nothing to share
    merges = list(_PREFIX_MERGES.get(key, ()))
    for token, rank in ordered[len(base) if merges else 0 :]:
        if len(token) > 1:
            parts = merge_parts(token, ranks)
            if parts is None:
                raise ValueError(f"token {rank} ({token!r}) cannot be built from lower ranks; not exportable")
            merges.append(parts)
        if key and rank == BASE_RANKS - 1 and key not in _PREFIX_MERGES:
            _PREFIX_MERGES[key] = list(merges)
    return merges


def to_hf(enc: tiktoken.Encoding):
    """An HF ``tokenizers.Tokenizer`` with ``enc``'s ids.

    BPE with ``ignore_merges`` (a piece that is a whole token is taken as is, like tiktoken), merges in rank
    order recovered from the ranks, the split pattern isolated before a byte-level map without prefix space,
    and every special added at its exact id (HF would otherwise append them at new ids).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    alphabet = _byte_alphabet()

    def show(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    spec = encoding_spec(enc)
    merges = [(show(left), show(right)) for left, right in _merges(spec["mergeable_ranks"])]
    vocab = {show(token): rank for token, rank in spec["mergeable_ranks"].items()}
    vocab.update(spec["special_tokens"])
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=True)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec["pat_str"]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = sorted(spec["special_tokens"].items(), key=lambda kv: kv[1])
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    for name, token_id in specials:
        if tokenizer.token_to_id(name) != token_id:
            raise AssertionError(f"HF placed special {name} at {tokenizer.token_to_id(name)}, not {token_id}")
    return tokenizer


def _hf_config(enc: tiktoken.Encoding) -> dict:
    specials = encoding_spec(enc)["special_tokens"]
    named = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>",
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    config.update({key: name for key, name in named.items() if name in specials})
    if IM_START in specials and IM_END in specials:
        config["chat_template"] = CHAT_TEMPLATE
    return config


def write_dir(
    enc: tiktoken.Encoding, directory: str | os.PathLike, extra: dict[str, dict] | None = None
) -> None:
    """Write all four files (and ``extra`` JSON files, name → content) into an existing directory."""
    directory = Path(directory)
    spec = encoding_spec(enc)
    ranks = sorted(spec["mergeable_ranks"].items(), key=lambda kv: kv[1])
    atomic_write_bytes(
        directory / RANKS_FILE, b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranks)
    )
    specials = {
        "name": enc.name,
        "pat_str": spec["pat_str"],
        "vocab_size": enc.n_vocab,
        "special_tokens": dict(sorted(spec["special_tokens"].items(), key=lambda kv: kv[1])),
    }
    atomic_write_text(directory / SPECIALS_FILE, _json(specials))
    atomic_write_text(directory / HF_FILE, to_hf(enc).to_str(pretty=True) + "\n")
    atomic_write_text(directory / HF_CONFIG_FILE, _json(_hf_config(enc)))
    for name, content in (extra or {}).items():
        atomic_write_text(directory / name, _json(content))


def save(
    enc: tiktoken.Encoding, out: str | os.PathLike, extra: dict[str, dict] | None = None, force=False
) -> Path:
    """Write ``enc`` to a new directory ``out`` atomically: it appears complete or not at all."""
    with atomic_dir(out, overwrite=force) as tmp:
        write_dir(enc, tmp, extra)
    return Path(out)


def load(directory: str | os.PathLike) -> tiktoken.Encoding:
    """The extended ``tiktoken.Encoding`` stored in ``directory`` by ``save``."""
    directory = Path(directory)
    for name in (RANKS_FILE, SPECIALS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: is {directory} a tokenizer directory?")
    meta = json.loads((directory / SPECIALS_FILE).read_text(encoding="utf-8"))
    # Parsed here rather than with tiktoken.load.load_tiktoken_bpe, which caches by path: a directory
    # retrained in place would load the ranks of its previous version.
    ranks = {}
    for line in (directory / RANKS_FILE).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=meta["name"],
        pat_str=meta["pat_str"],
        mergeable_ranks=ranks,
        special_tokens=meta["special_tokens"],
    )
