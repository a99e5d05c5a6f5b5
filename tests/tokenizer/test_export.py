import unicodedata

import pytest
from tokenizers import Tokenizer
from tokhelpers import cli, no_hangul, read_texts

from motif_data.tokenizer import fingerprint, load
from motif_data.tokenizer.evaluate import hf_parity, unreachable_tokens
from motif_data.tokenizer.export import HF_FILE, RANKS_FILE


@pytest.fixture(scope="module")
def real_docs(corpus):
    """The first 150 documents of every corpus file (NFC), the unit the corpus builder encodes."""
    return [
        unicodedata.normalize("NFC", t)
        for path in corpus.values()
        if path.suffix == ".zst"
        for t in read_texts(path, 150)
    ]


def _parity_ok(report):
    assert report["mismatches"] == 0, report["examples"]
    assert report["decode_failures"] == 0


def test_hf_tokenizer_json_matches_tiktoken_on_fuzz_and_real_text(
    trained_dir, trained, fuzz_texts, real_docs
):
    hf = Tokenizer.from_file(str(trained_dir / HF_FILE))
    assert hf.get_vocab_size(with_added_tokens=True) == trained.n_vocab
    fuzz = hf_parity(trained, hf, fuzz_texts)
    assert fuzz["checked"] == 10_000
    _parity_ok(fuzz)
    _parity_ok(hf_parity(trained, hf, real_docs))
    # Specials: the HF tokenizer maps each one to tiktoken's id.
    for name, token_id in trained._special_tokens.items():
        assert hf.token_to_id(name) == token_id
        assert hf.encode(f"a{name}b", add_special_tokens=False).ids == trained.encode(
            f"a{name}b", allowed_special="all"
        )


def test_transformers_loads_the_directory(trained_dir, trained, fuzz_texts):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(trained_dir))
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    for text in fuzz_texts[:500]:
        assert tok.encode(text, add_special_tokens=False) == trained.encode(text, allowed_special="all")
    assert tok.pad_token_id == trained._special_tokens["<|pad|>"]
    assert tok.eos_token_id == 199_999


def test_load_reads_back_what_tiktoken_reads(trained_dir, trained, monkeypatch):
    import tiktoken.load

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no caching: read the file itself
    assert tiktoken.load.load_tiktoken_bpe(str(trained_dir / RANKS_FILE)) == trained._mergeable_ranks
    assert load(trained_dir).encode("안녕하세요") == trained.encode("안녕하세요")


def test_learned_tokens_are_all_reachable(trained):
    assert unreachable_tokens(trained) == []


def test_text_without_hangul_keeps_o200k_ids(trained, o200k, real_docs, fuzz_texts):
    """Default (Hangul-only) training: English, code, math, other scripts and fuzz encode exactly as o200k."""
    samples = [no_hangul(t) for t in real_docs + fuzz_texts]
    assert trained.encode_ordinary_batch(samples) == o200k.encode_ordinary_batch(samples)
    korean = [t for t in real_docs if t != no_hangul(t)]
    assert sum(map(len, trained.encode_ordinary_batch(korean))) < 0.9 * sum(
        map(len, o200k.encode_ordinary_batch(korean))
    )


def test_same_input_gives_byte_identical_files(
    trained_dir, small_corpus, o200k_path, small_vocab_size, tmp_path
):
    again = tmp_path / "again"
    argv = [
        "tokenizer",
        "train",
        "--input",
        str(small_corpus),
        "--out",
        str(again),
        "--base",
        str(o200k_path),
    ]
    assert cli([*argv, "--vocab-size", str(small_vocab_size), "--quiet", "--workers", "1"]) == 0
    names = sorted(p.name for p in trained_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert "training.json" in names
    # One counting process here, two in the fixture: the files must not depend on it.
    for name in names:
        assert (trained_dir / name).read_bytes() == (again / name).read_bytes(), name


def test_export_round_trips_and_base_only_matches_o200k(
    trained_dir, trained, o200k, o200k_path, fuzz_texts, tmp_path
):
    assert cli(["tokenizer", "export", "--tokenizer", str(trained_dir), "--out", str(tmp_path / "re")]) == 0
    for name in (RANKS_FILE, "specials.json", HF_FILE, "tokenizer_config.json"):
        assert (tmp_path / "re" / name).read_bytes() == (trained_dir / name).read_bytes()
    assert (
        cli(["tokenizer", "export", "--base-only", "--base", str(o200k_path), "--out", str(tmp_path / "o")])
        == 0
    )
    plain = load(tmp_path / "o")
    assert fingerprint(plain) == fingerprint(o200k)
    _parity_ok(hf_parity(o200k, Tokenizer.from_file(str(tmp_path / "o" / HF_FILE)), fuzz_texts[:3000]))
