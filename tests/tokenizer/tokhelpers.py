"""Helpers shared by the tokenizer tests: reading the corpus' texts, fuzz strings, stripping Hangul."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import orjson
from realtext import read_jsonl_zst


def read_texts(path: Path, limit: int | None = None) -> list[str]:
    """The `text` of the first `limit` records of a .jsonl.zst."""
    return [orjson.loads(line)["text"] for line in read_jsonl_zst(path, limit)]


_EMOJI = ["👩\u200d💻", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🙂", "👍🏽", "🇰🇷", "❤️\u200d🔥"]
_CODE = [
    "def f(x):\n    return x**2",
    "for (int i = 0; i < n; ++i) {",
    "fn main() -> Result<(), E> {",
    "  \t// TODO",
    "x=[1,2,3];",
]
_SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u3000", "\xa0", "\n\n\n", "    "]


def _random_syllables(rng: random.Random) -> str:
    return "".join(chr(rng.randrange(0xAC00, 0xD7A4)) for _ in range(rng.randrange(1, 6)))


def _fuzz_part(rng: random.Random, korean_words: list[str], english_words: list[str]) -> str:
    kind = rng.randrange(12)
    if kind == 0:
        return rng.choice(korean_words)
    if kind == 1:
        return unicodedata.normalize("NFD", rng.choice(korean_words))
    if kind == 2:
        return _random_syllables(rng)
    if kind == 3:
        return rng.choice(english_words).capitalize() if rng.random() < 0.3 else rng.choice(english_words)
    if kind == 4:
        return rng.choice(_CODE)
    if kind == 5:
        return "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(rng.randrange(1, 5)))
    if kind == 6:
        return "".join(chr(rng.randrange(0x0E01, 0x0E5B)) for _ in range(rng.randrange(1, 8)))
    if kind == 7:
        return rng.choice(_EMOJI)
    if kind == 8:
        return rng.choice(_SPACES) * rng.choice([rng.randrange(1, 40), rng.randrange(40, 400)])
    if kind == 9:
        return "".join(rng.choice("0123456789") for _ in range(rng.choice([rng.randrange(1, 30), 300])))
    if kind == 10:
        return rng.choice(["'s", "'LL", ".", ",", "!?", "...", "—", "(", ")", "「", "」", "·", "%", "$"])
    # any scalar value except surrogates
    return "".join(
        chr(rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x110000)])) for _ in range(3)
    )


def make_fuzz(n: int, korean_words: list[str], english_words: list[str], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [_fuzz_part(rng, korean_words, english_words) for _ in range(rng.randrange(1, 12))]
        out.append("".join(p + (rng.choice(_SPACES) if rng.random() < 0.5 else "") for p in parts))
    return out


def no_hangul(text: str) -> str:
    """``text`` without any character whose Unicode name mentions Hangul (judged by name, not our regex)."""
    return "".join(ch for ch in text if "HANGUL" not in unicodedata.name(ch, ""))


def cli(argv: list[str]) -> int:
    """``motif-data ARGV`` through the real entry point, with only the tokenizer capability registered,
    so these tests do not depend on other capabilities importing cleanly."""
    from unittest import mock

    from motif_data import cli as top

    with mock.patch.object(top, "_COMMAND_MODULES", ("motif_data.tokenizer.cli",)):
        return top.main(argv)
