"""An SFT build: conversations → exact + near dedup over the whole mixture → ChatML ids + loss mask → shards.

Stages (datatrove executor runs with completion markers, so a killed build resumes where it stopped):

1. ``ingest``   read → conversation → spill ``.build/docs/{rank}.jsonl`` → exact-dedup signatures
2. ``exact``    datatrove's exact duplicate finder (one task)
3. ``minhash-signatures`` / 4. ``minhash-buckets``  the corpus builder's MinHash stages
5. ``minhash-verify``  LSH candidates kept only at Jaccard ≥ threshold (one task)
6. ``minhash-clusters`` datatrove's clustering of the verified pairs
7. ``render``   spill → drop duplicates → ids + mask → drop short → masked shards
then ``stats.json`` (read = kept + exact + near duplicates + short + errored, per source) and ``manifest.json``
(on Slurm a one-task job of its own, after the stages' jobs).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from motif_data.atomic import atomic_write_text, naming_output
from motif_data.pipeline.accounting import check_invariant, collect, ledger
from motif_data.pipeline.build import BuildStage, make_executors, refuse_unguarded_main, run_stages, slurm_job
from motif_data.pipeline.layout import INTERMEDIATE, LOGS_DIR, RESULTS_DIR, SPILL_DIR, WORK_DIR
from motif_data.sft.config import SftConfig
from motif_data.shards import MaskedShardInfo, SftManifest, TokenizerInfo

__all__ = ["SHARD_DIR", "build_sft", "finalize_sft", "sft_slurm_jobs", "sft_stages", "sft_stats"]
Log = Callable[[str], None]

SHARD_DIR = "shards"
_OURS = ("manifest.json", "stats.json", SHARD_DIR, WORK_DIR)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sft_stages(config: SftConfig, out: Path) -> list[BuildStage]:
    """The datatrove pipelines of an SFT build writing to ``out``, in order."""
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups

    from motif_data.pipeline.accounting import Tally
    from motif_data.pipeline.dedup import exact_config, minhash_config, signature_step
    from motif_data.pipeline.readers import SpillReader
    from motif_data.pipeline.write import SpillWriter
    from motif_data.sft.steps import (
        ConversationReader,
        MaskedShardWriteStep,
        RenderStep,
        VerifyNearDuplicates,
    )

    work, n, dedup = out / WORK_DIR, config.executor.tasks, config.dedup
    ecfg, mcfg = exact_config(), minhash_config(dedup)

    def spill():
        return SpillReader(str(work / SPILL_DIR), compression=None, add_file_path=False)

    def exact_filter():
        return ExactDedupFilter(str(work / "exact/dups"), config=ecfg) if dedup.exact else None

    def drop_exact():
        return [exact_filter()] if dedup.exact else []

    ingest = [ConversationReader(s, config.sources) for s in config.sources]
    ingest.append(SpillWriter(str(work / SPILL_DIR)))
    if dedup.exact:
        ingest.append(ExactDedupSignature(str(work / "exact/sigs"), config=ecfg))
    result = [BuildStage("ingest", ingest, n)]
    if dedup.exact:
        find = ExactFindDedups(str(work / "exact/sigs"), str(work / "exact/dups"), ecfg)
        result.append(BuildStage("exact", [find], 1))
    if dedup.near:
        sigs, buckets = str(work / "minhash/sigs"), str(work / "minhash/buckets")
        verified = str(work / "minhash/verified")
        check = VerifyNearDuplicates(
            buckets, verified, spill(), exact_filter(), signature_step(dedup, sigs), dedup.threshold
        )
        result += [
            BuildStage("minhash-signatures", [spill(), *drop_exact(), signature_step(dedup, sigs)], n),
            BuildStage("minhash-buckets", [MinhashDedupBuckets(sigs, buckets, config=mcfg)], dedup.bands),
            BuildStage("minhash-verify", [check], 1),
            BuildStage(
                "minhash-clusters",
                [MinhashDedupCluster(verified, str(work / "minhash/remove"), config=mcfg)],
                1,
            ),
        ]
    drop_near = [MinhashDedupFilter(str(work / "minhash/remove"))] if dedup.near else []
    render = [
        spill(),
        Tally("dedup_in"),
        *drop_exact(),
        Tally("after_exact"),
        *drop_near,
        Tally("after_near"),
        RenderStep(config.tokenizer, config.min_tokens),
        MaskedShardWriteStep(str(out / SHARD_DIR), str(work / RESULTS_DIR), config.shard_tokens),
    ]
    result.append(BuildStage("render", render, n))
    return result


def _prepare(config: SftConfig, out: Path, force: bool) -> None:
    """A new, resumed or (``force``) replaced build in ``out``; anything not ours there is refused."""
    plan_file = out / WORK_DIR / "plan.json"
    ours = (out / "manifest.json").is_file() or plan_file.is_file()
    if out.is_dir() and any(out.iterdir()):
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OURS)
        if foreign or not ours:
            raise FileExistsError(
                f"{out} holds files no SFT build wrote ({foreign[:3] or 'no plan'}): choose another --out"
            )
        if (out / "manifest.json").is_file() and not force:
            raise FileExistsError(
                f"{out} holds a finished SFT build (manifest.json): pass --force to rebuild it"
            )
        if not force and json.loads(plan_file.read_text())["fingerprint"] != config.fingerprint():
            raise FileExistsError(
                f"{out} holds an unfinished build of a different config: pass --force to discard it"
            )
        if force:
            for name in _OURS:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    plan = {"fingerprint": config.fingerprint(), "config": dataclasses.asdict(config)}
    atomic_write_text(plan_file, json.dumps(plan, indent=1, sort_keys=True))


def _load_chat_tokenizer(path: str):
    from motif_data.pipeline.tokenize import load_tokenizer
    from motif_data.tokenizer.chat import has_chat_tokens

    try:
        enc = load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"tokenizer: {e}") from e
    if not has_chat_tokens(enc) or "<|pad|>" not in enc.special_tokens_set:
        raise ValueError(
            f"tokenizer: {path} has no <|im_start|>/<|im_end|>/<|pad|>: use a folder written by "
            "`motif-data tokenizer train` (or export)"
        )
    return enc


def sft_stats(counters: Counter) -> dict:
    """Per source: read, kept, tokens, labelled, exact/near duplicates, short, errored by reason (from the
    corpus builder's ledger, whose invariant is checked first)."""
    table = ledger(counters)
    check_invariant(table)
    labelled = Counter()
    for name, n in counters.items():
        kind, source, *_ = name.split("|")
        if kind == "labelled":
            labelled[source] += n
    stats = {}
    for source, rows in table.items():
        for row in rows.values():
            short = row["filtered"].get("short", 0)
            stats[source] = {
                "read": row["read"],
                "kept": row["kept"],
                "exact_duplicates": row["exact_duplicates"],
                "near_duplicates": row["near_duplicates"],
                "short": short,
                "errored": dict(sorted(row["errored"].items())),
                "tokens": row["tokens"],
                "labelled_tokens": labelled[source],
            }
    return stats


def _finalize(config: SftConfig, out: Path, enc, log: Log) -> SftManifest:
    from motif_data.tokenizer import fingerprint

    work = out / WORK_DIR
    shards: list[MaskedShardInfo] = []
    for rank in range(config.executor.tasks):
        for s in json.loads((work / RESULTS_DIR / f"{rank:05d}.json").read_text()):
            shards.append(MaskedShardInfo(**(s | {"path": f"{SHARD_DIR}/{s['path']}"})))
    order = {s.name: i for i, s in enumerate(config.sources)}
    shards.sort(key=lambda s: (order[s.source], s.path))  # per source, in task order
    stats = sft_stats(collect(sorted((work / LOGS_DIR).iterdir())))
    kept = sum(row["kept"] for row in stats.values()) * (2 if config.kind == "preference" else 1)
    if kept != sum(s.documents for s in shards):
        raise RuntimeError(
            f"kept samples ({kept}) and shard contents ({sum(s.documents for s in shards)}) disagree"
        )
    total = Counter()
    for row in stats.values():
        total.update({k: v for k, v in row.items() if k != "errored"})
        total.update({"errored": sum(row["errored"].values())})
    document = {
        "kind": config.kind,
        "invariant": "read = kept + exact_duplicates + near_duplicates + short + errored",
        "min_tokens": config.min_tokens,
        "near_threshold": config.dedup.threshold if config.dedup.near else None,
        "total": dict(total),
        "sources": stats,
    }
    with naming_output(out / "stats.json", "manifest"):
        atomic_write_text(out / "stats.json", json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    for name in INTERMEDIATE:
        shutil.rmtree(work / name, ignore_errors=True)
    tok = TokenizerInfo(name=enc.name, sha256=fingerprint(enc), vocab_size=enc.n_vocab, eot_id=enc.eot_token)
    manifest = SftManifest(tok, enc.encode_single_token("<|pad|>"), tuple(shards), out, config.kind)
    with naming_output(out / "manifest.json", "manifest"):
        manifest.save(out / "manifest.json")
    log(
        f"read {total['read']:,}: kept {total['kept']:,} ({total['tokens']:,} tokens, {total['labelled_tokens']:,} "
        f"labelled), exact duplicates {total['exact_duplicates']:,}, near {total['near_duplicates']:,}, "
        f"short {total['short']:,}, errored {total['errored']:,}"
    )
    return manifest


def finalize_sft(config: SftConfig, log: Log = _stderr) -> SftManifest:
    """stats.json and manifest.json of a build whose stages are done (``config.output``: its folder)."""
    return _finalize(config, Path(config.output), _load_chat_tokenizer(config.tokenizer), log)


def sft_slurm_jobs(config: SftConfig, out: Path, plan: list[BuildStage]) -> list:
    """The stages' Slurm jobs and the finalize job that writes stats and manifest, each depending on the one
    before, with the corpus builder's sbatch settings."""
    from motif_data.sft.steps import SftFinalizeStep

    jobs = make_executors(config, out, plan)
    finalize = slurm_job([SftFinalizeStep(config)], config, 1, "motif-sft-finalize",
                          str(out / WORK_DIR / "finalize"), jobs[-1])  # fmt: skip
    return jobs + [finalize]


def build_sft(
    config: SftConfig, out: str | Path | None = None, force: bool = False, log: Log = _stderr
) -> SftManifest | None:
    """Run (or resume) an SFT build; returns its manifest, or ``None`` for Slurm, whose jobs are only
    submitted."""
    if config.executor.kind == "local" and config.executor.workers > 1:
        refuse_unguarded_main()
    out = Path(out or config.output).absolute()
    config = config.with_output(out)
    enc = _load_chat_tokenizer(config.tokenizer)
    _prepare(config, out, force)
    plan = sft_stages(config, out)
    if config.executor.kind == "slurm":
        jobs = sft_slurm_jobs(config, out, plan)
        jobs[-1].run()  # submits it and, through its dependencies, every job before it
        log(f"submitted {len(jobs)} slurm jobs; the manifest appears in {out} when they finish")
        return None
    run_stages(config, out, plan, log)
    return _finalize(config, out, enc, log)
