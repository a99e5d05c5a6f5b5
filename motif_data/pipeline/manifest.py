"""The end of a build: check the accounting, write ``stats.json``, drop intermediates, write ``manifest.json``.

The manifest lists shards in task order; it is written last and atomically, so its presence means
the build finished.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from motif_data import DOMAINS
from motif_data.atomic import atomic_write_text, naming_output
from motif_data.pipeline.accounting import check_invariant, collect, ledger, summary_table
from motif_data.pipeline.config import BuildConfig
from motif_data.pipeline.filters import language_id_available
from motif_data.pipeline.layout import INTERMEDIATE, LOGS_DIR, RESULTS_DIR, WORK_DIR
from motif_data.pipeline.tokenize import load_tokenizer
from motif_data.shards import DomainInfo, Manifest, ShardInfo, TokenizerInfo
from motif_data.tokenizer import fingerprint

__all__ = ["finalize"]

_STEP = "manifest"  # the step an OutputError names when stats.json or manifest.json cannot be written


def finalize(config: BuildConfig, out: Path, log: Callable[[str], None]) -> Manifest:
    """Check the accounting, write ``stats.json``, drop intermediates, write ``manifest.json`` last."""
    work = out / WORK_DIR
    per_domain: dict[str, list[ShardInfo]] = {d: [] for d in DOMAINS}
    for rank in range(config.executor.tasks):
        results = json.loads((work / RESULTS_DIR / f"{rank:05d}.json").read_text())
        for domain, shards in results.items():
            per_domain[domain] += [ShardInfo(**(s | {"path": f"{domain}/{s['path']}"})) for s in shards]
    table = ledger(collect(sorted((work / LOGS_DIR).iterdir())))
    check_invariant(table)
    kept = {d: sum(rows.get(d, {}).get("kept", 0) for rows in table.values()) for d in DOMAINS}
    domains = {
        d: DomainInfo(sum(s.documents for s in sh), sum(s.tokens for s in sh), tuple(sh))
        for d, sh in per_domain.items()
    }
    wrong = {d: (kept[d], info.documents) for d, info in domains.items() if kept[d] != info.documents}
    if wrong:
        raise RuntimeError(
            f"kept documents and shard contents disagree per domain (kept, in shards): {wrong}"
        )
    enc = load_tokenizer(config.tokenizer)
    tok = TokenizerInfo(name=enc.name, sha256=fingerprint(enc), vocab_size=enc.n_vocab, eot_id=enc.eot_token)
    notes = []
    for s in config.sources:
        if s.filters.language_id is not None:
            why = language_id_available(s.filters.language_id)
            if why:
                notes.append(f"source {s.name}: language id skipped: {why}")
    stats = {
        "invariant": "read = kept + filtered + exact_duplicates + near_duplicates + errored",
        "sources": table,
    }
    if notes:
        stats["notes"] = notes
    with naming_output(out / "stats.json", _STEP):
        atomic_write_text(out / "stats.json", json.dumps(stats, indent=1, ensure_ascii=False) + "\n")
    for name in INTERMEDIATE:
        shutil.rmtree(work / name, ignore_errors=True)
    manifest = Manifest(tok, domains, root=out)
    with naming_output(out / "manifest.json", _STEP):
        manifest.save(out / "manifest.json")
    log(summary_table(table, DOMAINS))
    for note in notes:
        log(f"note: {note}")
    return manifest
