"""Code point tables and the script ratio built on them, against the regex module matching one character at
a time."""

from __future__ import annotations

import orjson
import pytest
import regex
from realtext import read_jsonl_zst

from motif_data.pipeline.codepoints import UNICODE, matching
from motif_data.pipeline.config import SCRIPTS
from motif_data.pipeline.router import script_ratio


@pytest.mark.parametrize("pattern", [r"\p{L}", r"\p{Script=Hangul}", r"[\w\p{M}]"])
def test_table_is_the_class_matched_one_code_point_at_a_time(pattern):
    one = regex.compile(pattern)
    expected = [c for c in range(UNICODE) if one.fullmatch(chr(c))]
    assert matching(pattern).nonzero()[0].tolist() == expected


def test_a_class_that_matches_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        matching(r"[\x00-\x1f]")


def _ratio_by_regex(text: str, script: str) -> float:
    text = text[:100_000]
    letters = len(regex.findall(r"\p{L}", text))
    return len(regex.findall(rf"\p{{Script={SCRIPTS[script]}}}", text)) / letters if letters else 0.0


def test_script_ratio_counts_as_regex_does(corpus):
    texts = [
        orjson.loads(x)["text"]
        for key in ("korean_articles", "web", "multilingual")
        for x in read_jsonl_zst(corpus[key])
    ]
    texts += [
        "",
        "1234 !?",
        "한국어 text 漢字 ㈜ ᄀᄁ",
        "한" * 150_000 + "a" * 10,
    ]  # the last: measured on its start
    for script in ("Hang", "Latn", "Hani"):
        assert [script_ratio(t, script) for t in texts] == [_ratio_by_regex(t, script) for t in texts]
