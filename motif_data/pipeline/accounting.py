"""Per source × domain accounting of a build, carried by datatrove's own per-task stats files.

Steps record counters named ``kind|source|domain[|reason]`` with ``stat_update``; after the build the
stats files of every stage are summed into one table, which must satisfy
``read = kept + filtered + exact_duplicates + near_duplicates + errored`` for every source and domain.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

__all__ = ["UNROUTED", "key", "add_counts", "Tally", "collect", "ledger", "check_invariant", "summary_table"]

UNROUTED = "unrouted"
_SEP = "|"


def key(kind: str, source: str, domain: str, reason: str | None = None) -> str:
    return _SEP.join((kind, source, domain) if reason is None else (kind, source, domain, reason))


def add_counts(step: PipelineStep, counts: Counter) -> None:
    """Adds a task's counters to ``step``'s stats, one update per counter: datatrove's ``stat_update`` keeps a
    running mean, min, max and variance per call, which per document cost ≈ 1 s a task in the tokenize stage;
    the accounting reads only the totals."""
    for label, n in counts.items():
        step.stat_update(label, value=n, unit="task")


class Tally(PipelineStep):
    """Counts the documents passing this point per source and domain (around dedup filters)."""

    type = "🔢 - COUNTER"

    def __init__(self, label: str):
        self.label = label
        self.name = f"tally {label}"  # before the parent's __init__, which names the stats block after it
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()
        for doc in data:
            counts[key(self.label, doc.metadata["source"], doc.metadata["domain"])] += 1
            yield doc
        add_counts(self, counts)


def collect(logging_dirs: Iterable[Path]) -> Counter:
    """Sum every ``kind|…`` counter found in the per-task stats files of the given stage folders."""
    totals: Counter = Counter()
    for folder in logging_dirs:
        for path in sorted(Path(folder).glob("stats/*.json")):
            for block in json.loads(path.read_text()):
                for name, value in block["stats"].items():
                    if _SEP in name:
                        totals[name] += int(value["total"] if isinstance(value, dict) else value)
    return totals


def ledger(counters: Counter) -> dict:
    """``{source: {domain: {read, kept, tokens, filtered{}, exact_duplicates, near_duplicates, errored{}}}}``."""
    table: dict = defaultdict(
        lambda: defaultdict(
            lambda: {
                "read": 0,
                "kept": 0,
                "tokens": 0,
                "filtered": {},
                "exact_duplicates": 0,
                "near_duplicates": 0,
                "errored": {},
            }
        )
    )
    tallies: Counter = Counter()
    for name, n in counters.items():
        kind, source, domain, *reason = name.split(_SEP, 3)
        row = table[source][domain]
        if kind in ("filtered", "errored"):
            row[kind][reason[0]] = row[kind].get(reason[0], 0) + n
        elif kind in ("read", "kept", "tokens"):
            row[kind] += n
        else:
            tallies[(kind, source, domain)] += n
    for (kind, source, domain), n in tallies.items():
        if kind == "dedup_in":
            table[source][domain]["exact_duplicates"] = n - tallies[("after_exact", source, domain)]
            table[source][domain]["near_duplicates"] = (
                tallies[("after_exact", source, domain)] - tallies[("after_near", source, domain)]
            )
    return {
        s: {d: dict(sorted(row.items())) for d, row in sorted(rows.items())}
        for s, rows in sorted(table.items())
    }


def _dropped(row: dict) -> int:
    return (
        sum(row["filtered"].values())
        + row["exact_duplicates"]
        + row["near_duplicates"]
        + sum(row["errored"].values())
    )


def check_invariant(table: dict) -> None:
    """Raise if any source × domain does not satisfy read = kept + filtered + duplicates + errored."""
    bad = [
        f"{s}/{d}: read {row['read']} != kept {row['kept']} + dropped {_dropped(row)}"
        for s, rows in table.items()
        for d, row in rows.items()
        if row["read"] != row["kept"] + _dropped(row)
    ]
    if bad:
        raise RuntimeError("accounting invariant broken (a document was lost):\n  " + "\n  ".join(bad))


def summary_table(table: dict, domains: Iterable[str]) -> str:
    """Docs and tokens per domain, then documents dropped per reason."""
    per_domain: dict = defaultdict(Counter)
    reasons: Counter = Counter()
    for rows in table.values():
        for d, row in rows.items():
            per_domain[d].update(read=row["read"], kept=row["kept"], tokens=row["tokens"])
            for kind in ("filtered", "errored"):
                for reason, n in row[kind].items():
                    reasons[f"{kind}: {reason}"] += n
            reasons["duplicate: exact"] += row["exact_duplicates"]
            reasons["duplicate: near"] += row["near_duplicates"]
    lines = [f"{'domain':<14}{'read':>12}{'kept':>12}{'tokens':>16}"]
    for d in [*domains, *sorted(set(per_domain) - set(domains))]:
        c = per_domain.get(d, Counter())
        lines.append(f"{d:<14}{c['read']:>12,}{c['kept']:>12,}{c['tokens']:>16,}")
    total = sum(per_domain.values(), Counter())
    lines.append(f"{'total':<14}{total['read']:>12,}{total['kept']:>12,}{total['tokens']:>16,}")
    lines.append("")
    lines.append(f"{'dropped':<40}{'documents':>12}")
    for reason, n in sorted(reasons.items()):
        if n:
            lines.append(f"{reason:<40}{n:>12,}")
    return "\n".join(lines)
