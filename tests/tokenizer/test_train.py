import unicodedata
from collections import Counter
from itertools import pairwise

import orjson
import pytest
import regex
import tiktoken
from tokhelpers import read_texts

from motif_data.tokenizer import fingerprint
from motif_data.tokenizer.train import TokenizerConfig, train_tokenizer
from motif_data.tokenizer.vocab import FIRST_LEARNED, NAMED_SPECIALS


def _has_hangul_by_name(text: str) -> bool:
    return any("HANGUL" in unicodedata.name(ch, "") for ch in text)


def _whole_hangul_char(token: bytes) -> bool:
    # Independent of the trainer's regex: look for a complete UTF-8 encoded Hangul character by name.
    for i in range(len(token)):
        for width in (2, 3, 4):
            try:
                ch = token[i : i + width].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(ch) == 1 and "HANGUL" in unicodedata.name(ch, ""):
                return True
    return False


def test_trainer_segmentation_equals_tiktoken_on_every_training_piece(
    small_corpus, o200k_path, small_vocab_size, trained
):
    result = train_tokenizer(
        TokenizerConfig(inputs=((str(small_corpus), 1),), base=str(o200k_path), vocab_size=small_vocab_size),
        progress=False,
    )
    enc = result.encoding
    assert len(result.learned.tokens) == small_vocab_size - FIRST_LEARNED - len(NAMED_SPECIALS)
    mismatches = [
        p
        for p, seg in zip(result.pieces, result.learned.segments, strict=True)
        if enc._encode_single_piece(p.encode()) != seg
    ]
    assert len(result.pieces) > 4_000  # every distinct piece of ~140 KB of Korean
    assert mismatches == []
    # The CLI run of the fixture saw the same input: same encoding.
    assert fingerprint(enc) == fingerprint(trained)


@pytest.mark.parametrize("cap", [3, 1, 0], ids=["default-cap-3", "cap-1", "plain-counts"])
def test_merges_equal_brute_force_continued_bpe(corpus, o200k, o200k_path, tmp_path, cap):
    """Reference: re-encode every piece with a tiktoken Encoding of the current ranks, recount all pairs.

    Also for plain counts (cap 0), the rule before --max-per-document that the benchmark measures beside it.
    """
    # One generated document repeats a made-up word 60 times: the caps then learn different merges.
    texts = [*read_texts(corpus["korean_short"], 300), " ".join(["뒤죽박죽섞인말"] * 60)]
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
    steps = 25

    pattern = regex.compile(o200k._pat_str)
    pieces = Counter()
    for t in texts:
        in_doc = Counter(
            p for p in pattern.findall(unicodedata.normalize("NFC", t)) if _has_hangul_by_name(p)
        )
        pieces.update({p: min(n, cap) if cap else n for p, n in in_doc.items()})
    ranks = dict(o200k._mergeable_ranks)
    by_id = {r: t for t, r in ranks.items()}
    expected = []
    for step in range(steps):
        enc = tiktoken.Encoding(name="ref", pat_str=o200k._pat_str, mergeable_ranks=ranks, special_tokens={})
        pairs = Counter()
        for piece, n in pieces.items():
            seg = enc._encode_single_piece(piece.encode())
            for a, b in pairwise(seg):
                if _whole_hangul_char(by_id[a] + by_id[b]):
                    pairs[a, b] += n
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        assert best[1] >= 2
        expected.append(by_id[best[0][0]] + by_id[best[0][1]])
        ranks[expected[-1]] = FIRST_LEARNED + step
        by_id[FIRST_LEARNED + step] = expected[-1]

    vocab = FIRST_LEARNED + len(NAMED_SPECIALS) + steps
    ours = train_tokenizer(
        TokenizerConfig(
            inputs=((str(tiny), 1),), base=str(o200k_path), vocab_size=vocab, workers=1, max_per_document=cap
        ),
        progress=False,
    )
    assert ours.learned.tokens == expected


def test_weights_count_documents_repeatedly(corpus, o200k_path, tmp_path):
    texts = read_texts(corpus["korean_short"], 300)
    once, twice = tmp_path / "once.jsonl", tmp_path / "twice.jsonl"
    once.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
    twice.write_bytes(once.read_bytes() * 2)
    vocab = FIRST_LEARNED + len(NAMED_SPECIALS) + 60
    a = train_tokenizer(
        TokenizerConfig(inputs=((str(once), 2),), base=str(o200k_path), vocab_size=vocab), progress=False
    )
    b = train_tokenizer(
        TokenizerConfig(inputs=((str(twice), 1),), base=str(o200k_path), vocab_size=vocab), progress=False
    )
    assert a.counts == [
        2 * c
        for c in train_tokenizer(
            TokenizerConfig(inputs=((str(once), 1),), base=str(o200k_path), vocab_size=vocab), progress=False
        ).counts
    ]
    assert a.learned.tokens == b.learned.tokens


def test_min_frequency_stops_when_best_pair_is_rarer(small_corpus, o200k_path, small_vocab_size):
    threshold = 40  # the corpus's most frequent pairs are above it, its 1,500th merge (count 3) below
    result = train_tokenizer(
        TokenizerConfig(
            inputs=((str(small_corpus), 1),),
            base=str(o200k_path),
            vocab_size=small_vocab_size,
            min_frequency=threshold,
        ),
        progress=False,
    )
    learned = result.learned
    assert 0 < len(learned.tokens) < small_vocab_size - FIRST_LEARNED - len(NAMED_SPECIALS)
    assert str(threshold) in learned.stop_reason and learned.last_count >= threshold
    # Recount the final segmentation independently: no mergeable pair reaches the threshold any more.
    by_id = {r: t for t, r in result.encoding._mergeable_ranks.items()}
    pairs = Counter()
    for seg, n in zip(learned.segments, result.counts, strict=True):
        for a, b in pairwise(seg):
            if _whole_hangul_char(by_id[a] + by_id[b]):
                pairs[a, b] += n
    assert max(pairs.values()) < threshold


def test_no_hangul_only_learns_from_all_text(corpus, o200k_path, tmp_path):
    texts = read_texts(corpus["math"])
    maths = tmp_path / "math.txt"
    maths.write_text("\n".join(t.replace("\n", " ") for t in texts), encoding="utf-8")
    vocab = FIRST_LEARNED + len(NAMED_SPECIALS) + 100
    result = train_tokenizer(
        TokenizerConfig(inputs=((str(maths), 1),), base=str(o200k_path), vocab_size=vocab, hangul_only=False),
        progress=False,
    )
    enc = result.encoding
    assert len(result.learned.tokens) == 100
    assert not any(_has_hangul_by_name(t.decode("utf-8", "ignore")) for t in result.learned.tokens)
    assert all(
        enc._encode_single_piece(p.encode()) == s
        for p, s in zip(result.pieces, result.learned.segments, strict=True)
    )
    assert sum(map(len, enc.encode_ordinary_batch(texts))) < sum(
        map(
            len,
            tiktoken.Encoding(**{**_spec(enc), "mergeable_ranks": _base_ranks(enc)}).encode_ordinary_batch(
                texts
            ),
        )
    )


def _spec(enc):
    return {"name": "x", "pat_str": enc._pat_str, "special_tokens": {}}


def _base_ranks(enc):
    return {t: r for t, r in enc._mergeable_ranks.items() if r < FIRST_LEARNED}


def test_max_per_document_caps_repeats_within_one_document(o200k_path, tmp_path):
    corpus = tmp_path / "repeats.txt"
    corpus.write_text("한국 한국 한국 한국 한국 대한민국\n한국 한국\n", encoding="utf-8")
    vocab = FIRST_LEARNED + len(NAMED_SPECIALS) + 5
    counted = {}
    for cap in (3, 0):
        result = train_tokenizer(
            TokenizerConfig(
                inputs=((str(corpus), 1),), base=str(o200k_path), vocab_size=vocab, max_per_document=cap
            ),
            progress=False,
        )
        counted[cap] = dict(zip(result.pieces, result.counts, strict=True))
    assert counted[3] == {"한국": 2, " 한국": 4, " 대한민국": 1}
    assert counted[0] == {"한국": 2, " 한국": 5, " 대한민국": 1}
