"""The id layout of the extended vocabulary: o200k ranks, o200k's specials, learned tokens, reserved specials.

| ids                         | what                                                              |
|-----------------------------|-------------------------------------------------------------------|
| 0 – 199,997                 | o200k_base ranks, unchanged                                       |
| 199,998                     | ``<|reserved_special_0|>`` (unused in o200k)                      |
| 199,999                     | ``<|endoftext|>`` (as in o200k)                                   |
| 200,000 – 200,017           | ``<|reserved_special_1|>`` … ``<|reserved_special_18|>``          |
| 200,018                     | ``<|endofprompt|>`` (as in o200k)                                 |
| 200,019 – 200,018 + n       | the n learned tokens, in merge order                              |
| … up to vocab_size − 9      | ``<|reserved_special_19|>`` … if training learned fewer tokens     |
| last 8 ids                  | NAMED_SPECIALS: pad, BOS, chat and fill-in-the-middle markers     |
"""

from __future__ import annotations

import tiktoken

from motif_data.tokenizer.base import encoding_spec

__all__ = [
    "BASE_RANKS",
    "FIRST_LEARNED",
    "NAMED_SPECIALS",
    "MAX_VOCAB_SIZE",
    "DEFAULT_VOCAB_SIZE",
    "learned_budget",
    "special_tokens",
    "build_encoding",
]

BASE_RANKS = 199_998  # o200k mergeable ranks are exactly 0 … 199,997
FIRST_LEARNED = 200_019  # o200k's n_vocab: the first id o200k never uses
DEFAULT_VOCAB_SIZE = 219_520  # Motif-2.6B's vocabulary size
# Pair keys in the trainer pack two ids into one int with 20 bits each; beyond that is no tokenizer anyway.
MAX_VOCAB_SIZE = 1 << 20
_O200K_SPECIALS = {"<|endoftext|>": 199_999, "<|endofprompt|>": 200_018}
# Kept at the very top so their ids do not move when a training run learns fewer tokens.
NAMED_SPECIALS = (
    "<|pad|>",
    "<|begin_of_text|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
)


def learned_budget(vocab_size: int) -> int:
    """How many learned tokens fit between o200k's ids and the named specials."""
    return vocab_size - FIRST_LEARNED - len(NAMED_SPECIALS)


def special_tokens(vocab_size: int, n_learned: int) -> dict[str, int]:
    """Every special token of the layout above, name → id; together with the ranks it covers 0 … vocab_size-1."""
    if not 0 <= n_learned <= learned_budget(vocab_size):
        raise ValueError(f"{n_learned} learned tokens do not fit a vocabulary of {vocab_size}")
    reserved = [
        199_998,
        *range(200_000, 200_018),
        *range(FIRST_LEARNED + n_learned, vocab_size - len(NAMED_SPECIALS)),
    ]
    specials = dict(_O200K_SPECIALS)
    specials.update({f"<|reserved_special_{i}|>": token_id for i, token_id in enumerate(reserved)})
    first_named = vocab_size - len(NAMED_SPECIALS)
    specials.update({name: first_named + i for i, name in enumerate(NAMED_SPECIALS)})
    return dict(sorted(specials.items(), key=lambda kv: kv[1]))


def build_encoding(
    base: tiktoken.Encoding, learned: list[bytes], vocab_size: int, name: str = "o200k_korean"
) -> tiktoken.Encoding:
    """The extended ``tiktoken.Encoding``: ``base``'s ranks, then ``learned`` from id 200,019, then specials."""
    spec = encoding_spec(base)
    ranks = dict(spec["mergeable_ranks"])
    if len(ranks) != BASE_RANKS or max(ranks.values()) != BASE_RANKS - 1:
        raise ValueError(f"base encoding {base.name} is not o200k_base ({len(ranks)} ranks)")
    for i, token in enumerate(learned):
        if token in ranks:
            raise ValueError(f"learned token {token!r} is already in the vocabulary")
        ranks[token] = FIRST_LEARNED + i
    return tiktoken.Encoding(
        name=name,
        pat_str=spec["pat_str"],
        mergeable_ranks=ranks,
        special_tokens=special_tokens(vocab_size, len(learned)),
        explicit_n_vocab=vocab_size,
    )
