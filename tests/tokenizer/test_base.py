import hashlib
import shutil

import pytest
import tiktoken

from motif_data.tokenizer.base import O200K_SHA256, fingerprint, load_base


def _tiktoken_cache(tmp_path, o200k_path):
    # tiktoken's own cache layout: the file named by the sha1 of its download URL.
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    shutil.copy(o200k_path, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    return tmp_path


def test_load_base_from_path_matches_tiktoken_own_o200k(o200k_path, tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(_tiktoken_cache(tmp_path, o200k_path)))
    reference = tiktoken.get_encoding("o200k_base")
    ours = load_base(o200k_path)
    text = "Hello, world! 안녕하세요, 세계. def f(x): return x**2  \n\n 12345 🙂"
    assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    assert ours._pat_str == reference._pat_str
    assert (
        ours._special_tokens
        == reference._special_tokens
        == {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
    )
    assert ours.n_vocab == 200_019
    assert fingerprint(ours) == fingerprint(reference)


def test_load_base_finds_plain_file_in_tiktoken_cache_dir(o200k_path, tmp_path, monkeypatch):
    shutil.copy(o200k_path, tmp_path / "o200k_base.tiktoken")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert load_base().encode("상표권") == load_base(o200k_path).encode("상표권")


def test_load_base_rejects_wrong_hash_with_instructions(tmp_path, o200k_path):
    bad = tmp_path / "o200k_base.tiktoken"
    bad.write_bytes(o200k_path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"expected {O200K_SHA256}.*--base"):
        load_base(bad)


def test_load_base_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="TIKTOKEN_CACHE_DIR"):
        load_base(tmp_path / "nope.tiktoken")


def test_fingerprint_changes_with_any_rank(o200k):
    spec = dict(name="x", pat_str=o200k._pat_str, special_tokens=o200k._special_tokens)
    ranks = dict(o200k._mergeable_ranks)
    before = fingerprint(tiktoken.Encoding(mergeable_ranks=dict(ranks), **spec))
    token = next(t for t, r in ranks.items() if r == 5000)
    ranks[token], ranks[b"zz"] = ranks[b"zz"], ranks[token]
    b = tiktoken.Encoding(mergeable_ranks=ranks, **spec)
    assert before != fingerprint(b)


def test_load_base_offline_from_the_bpe_openai_wheel(o200k, monkeypatch):
    # The demo extra installs bpe-openai, whose wheel carries o200k: no download, no cache dir needed.
    from motif_data.tokenizer import base

    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    assert base._packaged_copy() is not None, "bpe-openai (test/demo extra) should be installed"
    assert fingerprint(load_base()) == fingerprint(o200k)
