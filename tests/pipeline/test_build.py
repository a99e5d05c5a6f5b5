"""End-to-end builds over slices of the real-text corpus."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter

import pytest
import yaml
from pipeline_helpers import slice_config, snapshot

from motif_data import DOMAINS, cli
from motif_data.pipeline import BuildConfig, build
from motif_data.shards import Manifest


def test_every_domain_gets_documents_and_tokens(reference_build):
    out, manifest = reference_build
    loaded = Manifest.load(out / "manifest.json")
    assert loaded == manifest
    for d in DOMAINS:
        info = loaded.domains[d]
        assert info.documents > 0 and info.tokens > 0, d
        assert info.tokens == sum(s.tokens for s in info.shards)
        for shard in info.shards:
            loaded.open_shard(shard, verify=True)  # sha256 of .bin and .idx match the manifest


def test_shards_decode_to_the_kept_texts_with_o200k(reference_build, sample_slices, o200k):
    out, manifest = reference_build
    assert manifest.tokenizer.eot_id == o200k.eot_token == 199_999
    source_texts: dict[str, Counter] = {d: Counter() for d in DOMAINS}
    # Documents are encoded in NFC (the form the tokenizer was trained on).
    for domain, _, texts in sample_slices.values():
        source_texts[domain].update(unicodedata.normalize("NFC", t) for t in texts)
    source_texts["multilingual"].update(  # the router may send rows either way
        unicodedata.normalize("NFC", t) for t in sample_slices["fineweb2"][2]
    )
    for d in DOMAINS:
        seen = Counter()
        for shard in manifest.domains[d].shards:
            reader = manifest.open_shard(shard)
            for i in range(reader.num_documents):
                ids = reader.document(i)
                assert ids[-1] == o200k.eot_token and o200k.eot_token not in ids[:-1]
                text = o200k.decode(ids[:-1].tolist())
                assert source_texts[d][text] > 0, f"{d}: a shard document is not one of the input texts"
                assert ids[:-1].tolist() == o200k.encode_ordinary(text)
                assert len(ids) - 1 >= 24  # default min length in tokens
                seen[text] += 1
        assert max(seen.values()) == 1, f"{d}: a text was written twice despite exact dedup"
        assert sum(seen.values()) == manifest.domains[d].documents


def test_accounting_counts_every_input_record(reference_build, sample_slices):
    out, manifest = reference_build
    stats = json.loads((out / "stats.json").read_text())["sources"]
    for name, (_, _, texts) in sample_slices.items():
        rows = stats[name]
        assert sum(r["read"] for r in rows.values()) == len(texts), name
        for domain, r in rows.items():
            dropped = sum(r["filtered"].values()) + sum(r["errored"].values())
            assert r["read"] == r["kept"] + dropped + r["exact_duplicates"] + r["near_duplicates"], (
                name,
                domain,
            )
    for d in DOMAINS:
        assert sum(rows.get(d, {}).get("kept", 0) for rows in stats.values()) == manifest.domains[d].documents
        assert sum(rows.get(d, {}).get("tokens", 0) for rows in stats.values()) == manifest.domains[d].tokens
    # the code slice holds files with empty text: counted, not silently skipped as datatrove's readers do
    n_empty = sum(1 for t in sample_slices["stdlib_sources"][2] if not t.strip())
    assert stats["stdlib_sources"]["code"]["errored"].get("empty_text", 0) == n_empty


def test_cli_build_with_out_is_byte_identical_and_never_overwrites_without_force(
    reference_build, sample_slices, o200k_path, tmp_path, capsys, monkeypatch
):
    out, _ = reference_build
    # only this capability's subcommand: other subcommands are not under test here
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("motif_data.pipeline.cli",))
    cfg = slice_config(sample_slices, tmp_path / "config-output", o200k_path)
    cfg["executor"]["workers"] = 2  # the output must not depend on how many tasks run at once
    config_path = tmp_path / "build.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    again = tmp_path / "again"

    assert cli.main(["build", str(config_path), "--out", str(again), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert str(again) in plan and "fineweb2" in plan and "route: script→korean, else multilingual" in plan
    assert not again.exists()

    assert cli.main(["build", str(config_path), "--out", str(again)]) == 0
    assert not (tmp_path / "config-output").exists()
    first = snapshot(again)
    assert first == snapshot(out)

    capsys.readouterr()
    assert cli.main(["build", str(config_path), "--out", str(again)]) == 2
    assert "--force" in capsys.readouterr().err
    assert snapshot(again) == first


def test_foreign_or_other_config_directories_are_refused_before_any_work(sample_slices, o200k_path, tmp_path):
    config = BuildConfig.from_dict(slice_config(sample_slices, tmp_path / "unused", o200k_path))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a build")
    with pytest.raises(FileExistsError, match="holds no build"):
        build(config, out=foreign)
    other = tmp_path / "other"
    (other / ".build").mkdir(parents=True)
    (other / ".build/plan.json").write_text(json.dumps({"fingerprint": "another config"}))
    with pytest.raises(FileExistsError, match="different config: pass --force"):
        build(config, out=other)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_tokenize_step_encodes_nfd_korean_as_its_nfc_form(o200k_path, o200k):
    from datatrove.data import Document

    from motif_data.pipeline.config import SourceConfig
    from motif_data.pipeline.tokenize import TOKENS_KEY, TokenizeStep

    nfc = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    step = TokenizeStep(str(o200k_path), (SourceConfig(name="s", format="jsonl", domain="korean"),))
    docs = [
        Document(text=t, id=str(i), metadata={"source": "s", "domain": "korean"})
        for i, t in enumerate((nfd, nfc))
    ]
    out = [d.metadata[TOKENS_KEY].tolist() for d in step.run(iter(docs))]
    expected = o200k.encode_ordinary(nfc) + [o200k.eot_token]
    assert out == [expected, expected]
    assert len(o200k.encode_ordinary(nfd)) > 2 * len(expected)  # what NFD would have cost
