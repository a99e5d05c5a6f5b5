"""`motif-data sft build`: every sample accounted for, duplicates found as brute-force Jaccard says, short samples
dropped by transformers' own count, and a loss mask that is exactly the assistants' text."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
from sfthelpers import sft_config_text

from motif_data.shards import SftManifest
from motif_data.tokenizer.chat import render_text


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def _kept_texts(manifest: SftManifest, enc) -> list[str]:
    out = []
    for shard in manifest.shards:
        reader = manifest.open_shard(shard, verify=True)
        out += [enc.decode(reader.sample(i)[0].tolist()) for i in range(reader.num_documents)]
    return out


def test_stats_account_for_every_record(sft_build, sources):
    _, out, _ = sft_build
    stats = json.loads((out / "stats.json").read_text())
    assert stats["invariant"] == "read = kept + exact_duplicates + near_duplicates + short + errored"
    for name, row in stats["sources"].items():
        dropped = (
            row["exact_duplicates"] + row["near_duplicates"] + row["short"] + sum(row["errored"].values())
        )
        assert row["read"] == row["kept"] + dropped, name
        assert row["read"] == sources["read"][name]
        assert row["errored"] == sources["errored"][name]
    total = stats["total"]
    assert total["read"] == sum(sources["read"].values())
    # across schemas and sources (whitespace aside), and two repeated rows
    assert total["exact_duplicates"] == len(sources["exact_across"]) + 2


def test_near_duplicates_are_what_brute_force_jaccard_finds(sft_build, sources, chat_tokenizer):
    """Planted near copies (Jaccard ≥ 0.95) keep one per group; far variants (≤ 0.7) are all kept; and no
    other pair of kept samples reaches 0.9."""
    manifest, out, _ = sft_build
    convs = sources["conversations"]
    sets = {k: _shingles(render_text(v)) for k, v in convs.items()}
    for group in sources["near"]:
        assert all(_jaccard(sets[a], sets[b]) >= 0.95 for a, b in itertools.combinations(group[:2], 2))
    for a, b in sources["far"]:
        assert _jaccard(sets[a], sets[b]) <= 0.7
    kept = set(_kept_texts(manifest, chat_tokenizer))
    rendered = {k: render_text(v) for k, v in convs.items()}
    for group in sources["near"]:
        assert sum(rendered[k] in kept for k in group) == 1, group
    for pair in sources["far"]:
        assert all(rendered[k] in kept for k in pair), pair
    kept_sets = [_shingles(t) for t in kept]
    close = [
        (a, b)
        for a, b in itertools.combinations(range(len(kept_sets)), 2)
        if _jaccard(kept_sets[a], kept_sets[b]) >= 0.9
    ]
    assert close == []
    stats = json.loads((out / "stats.json").read_text())
    assert stats["total"]["near_duplicates"] == sum(len(g) - 1 for g in sources["near"])


def test_samples_under_min_tokens_are_dropped_by_transformers_count(
    sft_build, sources, hf_chat, chat_tokenizer
):
    manifest, out, _ = sft_build
    lengths = {
        k: len(hf_chat.apply_chat_template(v, tokenize=True, return_dict=True)["input_ids"])
        for k, v in sources["conversations"].items()
        if k.startswith("short")
    }
    assert min(lengths.values()) < 24 <= max(lengths.values())  # the planted ones straddle the limit
    short = {render_text(sources["conversations"][k]) for k, n in lengths.items() if n < 24}
    kept = _kept_texts(manifest, chat_tokenizer)
    assert not short & set(kept)
    assert all(len(ids) >= 24 for ids in _ids(manifest))
    stats = json.loads((out / "stats.json").read_text())
    # two planted short rows repeat: counted as exact duplicates first, never twice
    assert stats["sources"]["qa"]["short"] == len(short)
    assert stats["sources"]["qa"]["exact_duplicates"] == 2


def _ids(manifest: SftManifest):
    for shard in manifest.shards:
        reader = manifest.open_shard(shard)
        for i in range(reader.num_documents):
            yield reader.sample(i)[0]


def test_loss_mask_is_exactly_the_assistant_text(sft_build, sources, chat_tokenizer):
    """Decoded, each kept sample's labelled tokens are its assistants' contents + <|im_end|>, found from the
    source conversation the sample decodes to; the unlabelled ones are everything else."""
    manifest, out, _ = sft_build
    by_text = {render_text(v): v for v in sources["conversations"].values()}
    enc, labelled_total = chat_tokenizer, 0
    start = enc.encode_single_token("<|im_start|>")
    for shard in manifest.shards:
        reader = manifest.open_shard(shard, verify=True)
        for i in range(reader.num_documents):
            ids, mask = (a.tolist() for a in reader.sample(i))
            text = enc.decode(ids)
            messages = by_text.get(text) or _parse(text)
            cuts = [j for j, t in enumerate(ids) if t == start] + [len(ids)]
            for m, a, b in zip(messages, cuts[:-1], cuts[1:], strict=True):
                part = [ids[j] for j in range(a, b) if mask[j]]
                want = m["content"] + "<|im_end|>" if m["role"] == "assistant" else ""
                assert enc.decode(part) == want
            labelled_total += sum(mask)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["total"]["labelled_tokens"] == labelled_total == sum(s.labelled for s in manifest.shards)


def _parse(text: str) -> list[dict]:
    """Messages of a rendered conversation whose source this test did not keep (ShareGPT's generated ones)."""
    parts = text.split("<|im_start|>")[1:]
    out = []
    for p in parts:
        role, _, rest = p.partition("\n")
        out.append({"role": role, "content": rest.removesuffix("<|im_end|>\n")})
    return out


def test_a_second_run_resumes_to_the_same_files_and_force_rebuilds(sft_build, tmp_path):
    from motif_data.sft import build_sft

    manifest, out, config = sft_build
    with pytest.raises(FileExistsError, match="--force"):
        build_sft(config, out=out, log=lambda _: None)
    again = build_sft(config, out=tmp_path / "again", log=lambda _: None)
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in manifest.shards]
    assert [s.mask_sha256 for s in again.shards] == [s.mask_sha256 for s in manifest.shards]
    (tmp_path / "again" / "manifest.json").unlink()  # as if killed before the manifest: resumes, same result
    resumed = build_sft(config, out=tmp_path / "again", log=lambda _: None)
    assert resumed.to_dict() == again.to_dict()


def test_the_jaccard_threshold_decides_not_the_lsh_bands(sources, chat_tokenizer_dir, tmp_path):
    """At threshold 0.99 the one-word copies (Jaccard ≈ 0.96, all proposed by LSH) are no longer duplicates."""
    from motif_data.sft import SftConfig, build_sft

    (tmp_path / "strict.toml").write_text(
        sft_config_text(sources, chat_tokenizer_dir, tasks=1) + "\n[dedup]\nthreshold = 0.99\n"
    )
    build_sft(SftConfig.load(tmp_path / "strict.toml"), out=tmp_path / "out", log=lambda _: None)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["near_threshold"] == 0.99
    assert stats["total"]["near_duplicates"] == 0
    assert stats["total"]["exact_duplicates"] == len(sources["exact_across"]) + 2


def test_config_errors_name_their_key_and_the_fix(sources, chat_tokenizer_dir, o200k_path, tmp_path):
    from motif_data.sft import SftConfig

    text = sft_config_text(sources, chat_tokenizer_dir).replace('schema = "sharegpt"', 'schema = "alpaca"')
    text = text.replace('roles = { bot = "assistant" }', 'roles = { bot = "model" }')
    text += "\nmin_tokens = -1\n[dedup]\nthreshold = 1.5\n"
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ValueError) as e:
        SftConfig.load(tmp_path / "bad.toml")
    message = str(e.value)
    for needle in (
        "sources[1].schema",
        "'alpaca'",
        "sources[1].roles",
        "min_tokens",
        "dedup.threshold",
        "≤ 1",
    ):
        assert needle in message, message
    (tmp_path / "o200k.toml").write_text(sft_config_text(sources, o200k_path))
    with pytest.raises(ValueError, match="tokenizer.path: .*rank file.*<\\|im_start\\|>"):
        SftConfig.load(tmp_path / "o200k.toml")


def test_the_example_config_is_valid(shared_data, chat_tokenizer_dir):
    from pathlib import Path

    from motif_data.sft import SftConfig
    from motif_data.typed import read_table

    path = Path(__file__).resolve().parents[2] / "configs" / "sft-gsm8k.toml"
    table = read_table(path)
    table["tokenizer"] = str(chat_tokenizer_dir)  # the config names the README's trained one
    table["sources"][0]["paths"] = [str(shared_data / "math/gsm8k_train.jsonl.zst")]
    config = SftConfig.from_dict(table, base=path.parent, path=str(path))
    assert config.min_tokens == 24 and config.dedup.threshold == 0.9
    assert config.sources[0].schema == "prompt_response"


def test_the_cli_builds_and_names_a_bad_key_in_one_line(sources, chat_tokenizer_dir, tmp_path, capsys):
    from motif_data.cli import main

    (tmp_path / "sft.toml").write_text(sft_config_text(sources, chat_tokenizer_dir, tasks=1))
    assert main(["sft", "build", str(tmp_path / "sft.toml"), "--out", str(tmp_path / "out")]) == 0
    assert "samples" in capsys.readouterr().out
    assert (tmp_path / "out" / "manifest.json").is_file()
    (tmp_path / "bad.toml").write_text(sft_config_text(sources, chat_tokenizer_dir) + "\nmin_token = 3\n")
    assert main(["sft", "build", str(tmp_path / "bad.toml")]) == 2
    assert "unknown keys ['min_token']" in capsys.readouterr().err


_RAY_SFT = (
    "import sys, ray; from motif_data.sft import SftConfig, build_sft; "
    "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False); "
    "build_sft(SftConfig.load(sys.argv[1]), out=sys.argv[2], log=lambda _: None); ray.shutdown()"
)


def test_the_ray_executor_builds_the_same_shards_as_local(
    sft_build, sources, chat_tokenizer_dir, tmp_path, run_bounded
):
    import subprocess
    import sys

    manifest, _, _ = sft_build
    extra_executor = (
        '\n[executor]\nkind = "ray"\ntasks = 2\nworkers = 2\nmem_per_cpu_gb = 0.5\ntime = "00:01:00"\n'
    )
    text = sft_config_text(sources, chat_tokenizer_dir).replace("\n[executor]\ntasks = 2\n", extra_executor)
    assert 'kind = "ray"' in text
    (tmp_path / "sft.toml").write_text(text)
    # with a deadline: a stuck Ray cluster must fail this test, not hang the suite
    result = run_bounded(
        [sys.executable, "-c", _RAY_SFT, str(tmp_path / "sft.toml"), str(tmp_path / "out")],
        timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    ray_built = SftManifest.load(tmp_path / "out" / "manifest.json")
    assert [s.sha256 for s in ray_built.shards] == [s.sha256 for s in manifest.shards]
    assert [s.mask_sha256 for s in ray_built.shards] == [s.mask_sha256 for s in manifest.shards]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats == json.loads((manifest.root / "stats.json").read_text())


def test_a_slurm_build_chains_the_stages_jobs_and_a_finalize_job(sources, chat_tokenizer_dir, tmp_path):
    from datatrove.executor.slurm import SlurmPipelineExecutor

    from motif_data.sft import SftConfig
    from motif_data.sft.build import sft_slurm_jobs, sft_stages
    from motif_data.sft.steps import SftFinalizeStep

    slurm = '\n[executor]\nkind = "slurm"\ntasks = 64\npartition = "cpu"\nqos = "high"\ntime = "02:00:00"\n'
    text = sft_config_text(sources, chat_tokenizer_dir).replace("\n[executor]\ntasks = 2\n", slurm)
    (tmp_path / "sft.toml").write_text(text)
    config = SftConfig.load(tmp_path / "sft.toml").with_output(tmp_path / "out")
    plan = sft_stages(config, tmp_path / "out")
    jobs = sft_slurm_jobs(config, tmp_path / "out", plan)  # made, not submitted
    assert all(isinstance(j, SlurmPipelineExecutor) for j in jobs)
    assert [j.depends for j in jobs[1:]] == jobs[:-1] and jobs[0].depends is None
    assert [j.tasks for j in jobs[:-1]] == [st.tasks for st in plan] and jobs[0].tasks == 64
    assert all(j.partition == "cpu" and j.qos == "high" for j in jobs)
    finalize = jobs[-1]
    assert finalize.tasks == 1 and finalize.job_name == "motif-sft-finalize"
    assert [type(step) for step in finalize.pipeline] == [SftFinalizeStep]


def test_the_finalize_job_writes_what_a_local_build_writes(sft_build, tmp_path):
    from motif_data.sft.steps import SftFinalizeStep

    manifest, out, config = sft_build
    shutil.copytree(out, tmp_path / "again")
    for name in ("manifest.json", "stats.json"):  # as if the stages' jobs were done, the finalize job not yet
        (tmp_path / "again" / name).unlink()
    SftFinalizeStep(config.with_output(tmp_path / "again")).run()
    again = SftManifest.load(tmp_path / "again" / "manifest.json")
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in manifest.shards]
    assert (tmp_path / "again" / "stats.json").read_text() == (out / "stats.json").read_text()
