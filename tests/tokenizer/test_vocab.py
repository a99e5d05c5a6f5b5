import pytest

from motif_data.tokenizer.vocab import DEFAULT_VOCAB_SIZE, NAMED_SPECIALS, build_encoding, special_tokens


def test_every_id_below_vocab_size_is_exactly_one_token_or_special(trained, o200k, small_vocab_size):
    ranks, specials = trained._mergeable_ranks, trained._special_tokens
    ids = sorted([*ranks.values(), *specials.values()])
    assert ids == list(range(small_vocab_size))
    assert trained.n_vocab == small_vocab_size
    assert len(set(ranks)) == len(ranks) and len(set(specials)) == len(specials)
    # o200k's ranks and specials keep their ids.
    assert {t: r for t, r in ranks.items() if r < 199_998} == o200k._mergeable_ranks
    assert specials["<|endoftext|>"] == 199_999 and specials["<|endofprompt|>"] == 200_018
    by_id = {i: name for name, i in specials.items()}
    assert by_id[199_998].startswith("<|reserved_special_")
    assert all(by_id[i].startswith("<|reserved_special_") for i in range(200_000, 200_018))
    learned = sorted(r for r in ranks.values() if r >= 200_019)
    assert learned == list(range(200_019, 200_019 + len(learned)))
    assert [by_id[small_vocab_size - len(NAMED_SPECIALS) + i] for i in range(len(NAMED_SPECIALS))] == list(
        NAMED_SPECIALS
    )


def test_fewer_learned_tokens_leave_reserved_specials_and_fixed_named_ids():
    full = special_tokens(DEFAULT_VOCAB_SIZE, 19_493)
    short = special_tokens(DEFAULT_VOCAB_SIZE, 100)
    assert {n: full[n] for n in NAMED_SPECIALS} == {n: short[n] for n in NAMED_SPECIALS}
    assert full["<|pad|>"] == DEFAULT_VOCAB_SIZE - len(NAMED_SPECIALS)
    assert len(short) - len(full) == 19_393
    assert sorted(short.values())[-len(NAMED_SPECIALS) - 1] == DEFAULT_VOCAB_SIZE - len(NAMED_SPECIALS) - 1
    with pytest.raises(ValueError, match="do not fit"):
        special_tokens(DEFAULT_VOCAB_SIZE, 19_494)


def test_build_encoding_rejects_a_learned_token_already_in_o200k(o200k):
    with pytest.raises(ValueError, match="already in the vocabulary"):
        build_encoding(o200k, [b"hello"], DEFAULT_VOCAB_SIZE)
