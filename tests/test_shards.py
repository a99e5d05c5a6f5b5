import hashlib

import numpy as np
import pytest

from motif_data.shards import DomainInfo, Manifest, ShardError, ShardReader, ShardWriter, TokenizerInfo


def _docs(rng, n):
    return [rng.integers(0, 219_520, size=rng.integers(1, 50), dtype=np.uint32) for _ in range(n)]


def test_writer_splits_at_cap_and_reader_gives_back_every_document(tmp_path):
    docs = _docs(np.random.default_rng(0), 200)
    with ShardWriter(tmp_path, "web", max_tokens=1000) as w:
        for d in docs:
            w.write(d)
    shards = w.shards
    assert len(shards) > 1
    assert all(s.tokens <= 1000 for s in shards)
    got = []
    for s in shards:
        r = ShardReader.open(tmp_path / s.path, expected=s, verify=True)
        got += [r.document(i).copy() for i in range(r.num_documents)]
        # the format is documented as raw little-endian uint32 / uint64: check it without our reader
        raw = np.fromfile(tmp_path / s.path, dtype="<u4")
        assert hashlib.sha256(raw.tobytes()).hexdigest() == s.sha256
        assert np.fromfile(tmp_path / s.index_path, dtype="<u8")[-1] == len(raw)
    assert len(got) == len(docs)
    assert all(np.array_equal(a, b) for a, b in zip(got, docs, strict=True))


def test_truncated_shard_is_reported(tmp_path):
    with ShardWriter(tmp_path, "code") as w:
        for d in _docs(np.random.default_rng(1), 10):
            w.write(d)
    (s,) = w.shards
    data = (tmp_path / s.path).read_bytes()
    (tmp_path / s.path).write_bytes(data[:-4])
    with pytest.raises(ShardError, match="truncated"):
        ShardReader.open(tmp_path / s.path)


def test_checksum_mismatch_is_reported_when_verifying(tmp_path):
    with ShardWriter(tmp_path, "math") as w:
        w.write(np.arange(10, dtype=np.uint32))
    (s,) = w.shards
    arr = np.fromfile(tmp_path / s.path, dtype="<u4")
    arr[3] += 1
    arr.tofile(tmp_path / s.path)
    ShardReader.open(tmp_path / s.path, expected=s)  # sizes still agree
    with pytest.raises(ShardError, match="checksum mismatch"):
        ShardReader.open(tmp_path / s.path, expected=s, verify=True)


def test_failed_write_leaves_no_shard_behind(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "korean") as w:
        w.write(np.arange(5, dtype=np.uint32))
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_manifest_round_trip_and_unknown_domain(tmp_path):
    with ShardWriter(tmp_path / "web", "web") as w:
        w.write(np.arange(7, dtype=np.uint32))
    shards = tuple(
        type(s)(
            path=f"web/{s.path}",
            documents=s.documents,
            tokens=s.tokens,
            sha256=s.sha256,
            index_sha256=s.index_sha256,
        )
        for s in w.shards
    )
    m = Manifest(TokenizerInfo("o200k_base", "ab" * 32, 200_019, 199_999), {"web": DomainInfo(1, 7, shards)})
    m.save(tmp_path / "manifest.json")
    back = Manifest.load(tmp_path / "manifest.json")
    assert back == m
    assert back.open_shard(back.domains["web"].shards[0], verify=True).num_tokens == 7
    data = m.to_dict()
    data["domains"]["webz"] = data["domains"].pop("web")
    with pytest.raises(ShardError, match="unknown domains"):
        Manifest.from_dict(data)


def test_atomic_outputs_get_normal_file_permissions(tmp_path):
    import os
    import stat

    from motif_data.atomic import atomic_write_text

    atomic_write_text(tmp_path / "a.json", "{}")
    (tmp_path / "b.json").write_text("{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode)

    from motif_data.atomic import atomic_dir

    with atomic_dir(tmp_path / "out") as d:
        (d / "x").write_text("1")
    (tmp_path / "plain").mkdir()
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == stat.S_IMODE(
        os.stat(tmp_path / "plain").st_mode
    )


def test_load_manifest_tells_the_two_builds_apart_and_names_what_is_wrong(tmp_path):
    from motif_data.shards import SftManifest, load_manifest

    tokenizer = TokenizerInfo("t", "0" * 64, 512, 511)
    Manifest(tokenizer, {}, tmp_path / "pt").save(tmp_path / "pt" / "manifest.json")
    SftManifest(tokenizer, 0, (), tmp_path / "sft").save(tmp_path / "sft" / "manifest.json")
    assert type(load_manifest(tmp_path / "pt" / "manifest.json")) is Manifest
    sft = load_manifest(tmp_path / "sft")  # a build's directory stands for its manifest.json
    assert type(sft) is SftManifest and sft.root == tmp_path / "sft"
    with pytest.raises(
        ShardError, match=r"no manifest at .*missing.*: pass the manifest\.json of a finished build"
    ):
        load_manifest(tmp_path / "missing")
    (tmp_path / "cut.json").write_text('{"format": "motif-sft-sh')
    with pytest.raises(ShardError, match=r"cut\.json is not valid JSON .*did not finish"):
        load_manifest(tmp_path / "cut.json")
    with pytest.raises(ShardError, match=r"expected 'motif-sft-shards/1': pass the manifest of an SFT build"):
        SftManifest.load(tmp_path / "pt")
