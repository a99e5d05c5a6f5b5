"""``motif-data demo``: the whole system on real text, end to end, with its outputs tied together in a report.

harvest text → train + evaluate the Korean tokenizer → build eight domains → plan the mixture →
stream batches through the loader → train a tiny model → report.md with PNGs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motif_data import DOMAINS
from motif_data.atomic import atomic_open, atomic_write_text

__all__ = ["DemoConfig", "run_demo", "check_outputs", "MIN_FREE_BYTES"]

#: The demo writes ~100–300 MB (sources, shards, checkpoints); refuse to start with less than this free.
MIN_FREE_BYTES = 1 << 30


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    budget_bytes: int = 1_500_000  # text harvested per offline source
    loader_batches: int = 300
    batch_size: int = 8
    seq_len: int = 256
    train_steps: int = 40
    from_hub: bool = False
    hub_docs: int = 2_000
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be > 0, got {getattr(self, name)}"
            for name in ("budget_bytes", "loader_batches", "batch_size", "seq_len", "train_steps", "hub_docs")
            if getattr(self, name) <= 0
        ]
        if problems:
            raise ValueError("invalid demo arguments: " + "; ".join(problems))


def _bar(iterable: Iterable, progress: bool, **kw) -> Iterator:
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, disable=not progress, **kw))


def _say(msg: str) -> None:
    print(msg, flush=True)


def _write_jsonl_zst(path: Path, docs: Iterable[dict]) -> int:
    import orjson
    import zstandard

    n = 0
    with (
        atomic_open(path, "wb") as raw,
        zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as z,
    ):
        for doc in docs:
            z.write(orjson.dumps(doc) + b"\n")
            n += 1
    return n


def _preflight(cfg: DemoConfig) -> None:
    """Fail before any work, with one line saying what to do."""
    if cfg.out.exists() and any(cfg.out.iterdir()) and not cfg.force:
        raise FileExistsError(
            f"{cfg.out} already exists and is not empty: pass --force or choose another --out"
        )
    parent = next(p for p in (cfg.out, *cfg.out.parents) if p.exists())
    free = shutil.disk_usage(parent).free
    if free < MIN_FREE_BYTES:
        raise OSError(
            f"only {free / 2**20:.0f} MiB free under {parent}: the demo needs about "
            f"{MIN_FREE_BYTES / 2**30:.0f} GiB; free some space or pass --out on another disk"
        )
    if not cfg.from_hub:
        from motif_data.demo.sources import check_installed

        check_installed()


# -- 1. sources -------------------------------------------------------------------------------------------


def _harvest(cfg: DemoConfig, src_dir: Path) -> tuple[list[dict], Path]:
    """Write every source as jsonl.zst; one Korean document in ten is held out for the tokenizer eval."""
    if cfg.from_hub:
        from motif_data.demo.hub import HUB_SOURCES, stream_docs

        sources = [(s.name, s.domain, s.what, lambda s=s: stream_docs(s, cfg.hub_docs)) for s in HUB_SOURCES]
    else:
        from motif_data.demo.sources import OFFLINE_SOURCES

        sources = [
            (s.name, s.domain, s.what, lambda s=s: s.documents(cfg.budget_bytes)) for s in OFFLINE_SOURCES
        ]
    rows, heldout = [], []
    for name, domain, what, documents in _bar(sources, cfg.progress, desc="harvest", unit="source"):
        texts = list(documents())
        if domain == "korean":
            heldout += texts[9::10]
            texts = [t for i, t in enumerate(texts) if i % 10 != 9]
        path = src_dir / domain / f"{name}.jsonl.zst"
        n = _write_jsonl_zst(path, ({"id": f"{name}/{i}", "text": t} for i, t in enumerate(texts)))
        rows.append({"source": name, "domain": domain, "what": what, "documents": n, "path": str(path)})
    heldout_path = src_dir / "heldout" / "korean-heldout.jsonl.zst"
    _write_jsonl_zst(heldout_path, ({"id": f"heldout/{i}", "text": t} for i, t in enumerate(heldout)))
    return rows, heldout_path


# -- 2. tokenizer -----------------------------------------------------------------------------------------


def _tokenizer(cfg: DemoConfig, rows: list[dict], heldout: Path, out: Path) -> tuple[Path, list[dict]]:
    from motif_data.tokenizer import TokenizerConfig, load_base, save, train_tokenizer
    from motif_data.tokenizer.evaluate import compare_file, unreachable_tokens

    korean = tuple((r["path"], 1) for r in rows if r["domain"] == "korean")
    result = train_tokenizer(TokenizerConfig(inputs=korean, min_frequency=2), progress=cfg.progress)
    tok_dir = save(result.encoding, out, extra={"train_report.json": result.report}, force=True)
    base = load_base()
    table = []
    files = [("korean (held out)", heldout)] + [
        (f"{r['domain']} (training text)" if r["domain"] == "korean" else r["domain"], Path(r["path"]))
        for r in rows
    ]
    for label, path in _bar(files, cfg.progress, desc="tokenizer eval", unit="file"):
        row = compare_file(path, base, result.encoding)
        table.append(
            {
                "domain": label,
                **{
                    k: row[k]
                    for k in (
                        "bytes",
                        "o200k_bytes_per_token",
                        "extended_bytes_per_token",
                        "bytes_per_token_change",
                    )
                },
            }
        )
    unreachable = len(unreachable_tokens(result.encoding))
    table.append({"learned_tokens": result.report["learned_tokens"], "unreachable": unreachable})
    return tok_dir, table


def _plot_bytes_per_token(table: list[dict], path: Path) -> None:
    from motif_data.figures import pyplot, save_png

    plt = pyplot()

    rows = [r for r in table if "domain" in r]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    ax.bar(x - 0.2, [r["o200k_bytes_per_token"] for r in rows], 0.4, label="o200k_base")
    ax.bar(x + 0.2, [r["extended_bytes_per_token"] for r in rows], 0.4, label="Korean-extended")
    for i, r in enumerate(rows):
        ax.annotate(
            f"{100 * r['bytes_per_token_change']:+.1f}%",
            (i + 0.2, r["extended_bytes_per_token"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(x, [r["domain"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("UTF-8 bytes per token (higher = fewer tokens)")
    ax.set_title("Tokenizer efficiency per domain: o200k_base vs the Korean extension")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, path)


# -- 3. build ---------------------------------------------------------------------------------------------


def _build(cfg: DemoConfig, rows: list[dict], tok_dir: Path, out: Path):
    from motif_data.pipeline import BuildConfig, build

    config = BuildConfig.from_dict(
        {
            "output": str(out),
            "tokenizer": {"path": str(tok_dir)},
            "executor": {"kind": "local", "tasks": 2, "workers": 2},
            "dedup": {"exact": True, "near": True},
            "sources": [
                {"name": r["source"], "format": "jsonl", "paths": [r["path"]], "domain": r["domain"]}
                for r in rows
            ],
        }
    )
    # datatrove's task loggers print every step's INFO lines to the console; the demo keeps them in a
    # file (at the descriptor level, so worker processes are covered too) and shows the stage lines.
    log_path = out.parent / "build.log"
    with open(log_path, "w") as log_file, _stderr_into(log_file):
        manifest = build(config, out=out, force=True, log=lambda msg: _say(textwrap.indent(msg, "    ")))
    _say(f"    datatrove's logs: {log_path}")
    return manifest


@contextlib.contextmanager
def _stderr_into(file) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


# -- 4. plan + 5. loader ----------------------------------------------------------------------------------


def _schedule(total_tokens: float):
    """The Motif-2.6B schedule compressed onto the demo's token budget (same shape, 4:1 stage split)."""
    from motif_data.mixer import MixtureSchedule

    return MixtureSchedule.motif_2_6b(stage1_tokens=0.8 * total_tokens, anneal_tokens=0.2 * total_tokens)


def _plan(cfg: DemoConfig, manifest, schedule, png: Path) -> str:
    from motif_data.mixer import QuotaSampler, plan
    from motif_data.mixer.plan import format_plan, plot_plan

    sampler = QuotaSampler(schedule, cfg.seq_len, seed=0)
    rows = plan(manifest, sampler, schedule.total_tokens)
    plot_plan(
        sampler, schedule.total_tokens, png, window=min(2_000, cfg.loader_batches * cfg.batch_size // 4)
    )
    return format_plan(rows, schedule.total_tokens)


def _stream(cfg: DemoConfig, manifest_path: Path, schedule, png: Path) -> dict:
    from motif_data.trainer_hook import MixtureDataLoader, MixtureDataset

    ds = MixtureDataset(manifest_path, schedule, cfg.seq_len, seed=0, batch_size=cfg.batch_size, verify=True)
    loader = MixtureDataLoader(ds, num_workers=0)
    domains, tokens = [], 0
    it = iter(loader)
    for _ in _bar(range(cfg.loader_batches), cfg.progress, desc="loader", unit="batch"):
        batch = next(it)
        domains.append(batch["domain"].numpy())
        tokens += batch["input_ids"].numel()
    seq_domains = np.concatenate(domains)
    _plot_realized(seq_domains, schedule, cfg, png)
    counts = np.bincount(seq_domains, minlength=len(DOMAINS))
    return {
        "sequences": int(len(seq_domains)),
        "tokens": int(tokens),
        "per_domain": {d: int(c) for d, c in zip(DOMAINS, counts, strict=True)},
        "state": loader.state_dict(),
    }


def _plot_realized(seq_domains: np.ndarray, schedule, cfg: DemoConfig, path: Path) -> None:
    from motif_data.figures import pyplot, save_png

    plt = pyplot()

    n = len(seq_domains)
    window = max(n // 12, 32)
    starts = np.arange(0, n - window + 1, max(window // 4, 1))
    tokens_at = (starts + window / 2) * cfg.seq_len
    grid = np.linspace(0, n * cfg.seq_len, 200)
    target = schedule.weight_array(grid)
    colors = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(10, 5))
    for d, name in enumerate(DOMAINS):
        share = [(seq_domains[s : s + window] == d).mean() for s in starts]
        ax.plot(grid / 1e6, target[:, d], color=colors[d], lw=2, label=f"{name}: target")
        ax.plot(tokens_at / 1e6, share, "o--", ms=3, lw=0.8, color=colors[d], alpha=0.8)
    ax.plot([], [], "o--", color="gray", ms=3, label=f"realized by the loader ({window} sequences/window)")
    ax.set_title(f"Domain mixture: Motif-2.6B schedule compressed onto {n * cfg.seq_len / 1e6:.2f}M tokens")
    ax.set_xlabel("tokens streamed (millions)")
    ax.set_ylabel("share of sequences")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(ncol=3, fontsize=7, loc="upper right")
    save_png(fig, path)


# -- 6. train ---------------------------------------------------------------------------------------------


def _train(cfg: DemoConfig, manifest_path: Path, schedule_path: Path, out: Path) -> dict:
    from motif_data.train import plot_losses, train
    from motif_data.train.config import TrainConfig

    train_cfg = TrainConfig.from_dict(
        {
            "model": {"preset": "tiny"},
            "train": {
                "corpus": str(manifest_path),
                "schedule": str(schedule_path),
                "seq_len": 64,
                "micro_batch": 4,
                "steps": cfg.train_steps,
                "lr": 3e-3,
                "warmup_steps": max(cfg.train_steps // 10, 1),
                "decay_fraction": 0.3,
                "log_every": 1,
            },
        }
    )
    summary = train(train_cfg, out, manifest_path)
    plot_losses(out / "metrics.jsonl", out / "loss.png", title="tiny Motif model on the demo corpus")
    return summary


# -- report -----------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _report(out: Path, facts: dict) -> str:
    m, stats = facts["manifest"], _stats_by_domain(facts["stats"])
    tok = [r for r in facts["tokenizer"] if "domain" in r]
    tok_meta = facts["tokenizer"][-1]
    parts = [
        "# motif-data demo report",
        f"Made {time.strftime('%Y-%m-%d %H:%M:%S')} in {facts['seconds']:.0f} s. Text source: "
        + (
            "small streamed samples of the real sources (`--from-hub`)."
            if facts["from_hub"]
            else "texts shipped inside installed packages (nothing downloaded)."
        ),
        "## 1. Sources",
        _table(
            ["source", "domain", "documents", "what"],
            [[r["source"], r["domain"], r["documents"], r["what"]] for r in facts["sources"]],
        ),
        "## 2. Tokenizer",
        f"Continued BPE from o200k_base on the Korean sources: {tok_meta['learned_tokens']} tokens learned, "
        f"{tok_meta['unreachable']} unreachable. Directory: `tokenizer/` (tiktoken ranks, `tokenizer.json`).",
        _table(
            ["text", "bytes", "o200k bytes/token", "extended bytes/token", "change"],
            [
                [
                    r["domain"],
                    r["bytes"],
                    r["o200k_bytes_per_token"],
                    r["extended_bytes_per_token"],
                    f"{100 * r['bytes_per_token_change']:+.1f} %",
                ]
                for r in tok
            ],
        ),
        "![bytes per token](bytes_per_token.png)",
        "## 3. Corpus build",
        _table(
            ["domain", "read", "kept", "dropped (filters, duplicates, errors)", "tokens", "shards"],
            [
                [d, stats[d]["read"], i.documents, stats[d]["dropped"], i.tokens, len(i.shards)]
                for d, i in m.domains.items()
            ],
        ),
        "Per source and reason: `corpus/stats.json`.",
        "## 4. Mixture plan",
        "```\n" + facts["plan"] + "\n```",
        "![plan](plan.png)",
        "## 5. Loader",
        f"{facts['loader']['sequences']} sequences ({facts['loader']['tokens']} tokens) streamed; per domain: "
        + ", ".join(f"{d} {c}" for d, c in facts["loader"]["per_domain"].items()),
        "![mixture](mixture.png)",
        "## 6. Training",
        f"{facts['train'].get('steps', '?')} steps of the `tiny` preset; final loss "
        f"{facts['train'].get('final_loss', float('nan')):.3f}. Metrics: `train/metrics.jsonl`.",
        "![loss](train/loss.png)",
    ]
    text = "\n\n".join(parts) + "\n"
    atomic_write_text(out / "report.md", text)
    return text


def _stats_by_domain(stats: dict) -> dict[str, dict[str, int]]:
    """``stats.json`` is per source, then domain: sum the counts per domain."""
    totals: dict[str, dict[str, int]] = {}
    for by_domain in stats["sources"].values():
        for d, c in by_domain.items():
            t = totals.setdefault(d, {"read": 0, "kept": 0, "tokens": 0, "dropped": 0})
            dropped = c["exact_duplicates"] + c["near_duplicates"] + sum(c["filtered"].values())
            for key, value in (
                ("read", c["read"]),
                ("kept", c["kept"]),
                ("tokens", c["tokens"]),
                ("dropped", dropped + sum(c["errored"].values())),
            ):
                t[key] += value
    return totals


def check_outputs(out: Path) -> dict:
    """Consistency of a finished demo: manifest counts = build stats = what the loader can see."""
    from motif_data.shards import Manifest

    manifest = Manifest.load(out / "corpus" / "manifest.json")
    stats = _stats_by_domain(json.loads((out / "corpus" / "stats.json").read_text()))
    per_domain = {}
    for d, info in manifest.domains.items():
        readers = [manifest.open_shard(s, verify=True) for s in info.shards]
        per_domain[d] = {
            "manifest_documents": info.documents,
            "manifest_tokens": info.tokens,
            "shard_documents": sum(r.num_documents for r in readers),
            "shard_tokens": sum(r.num_tokens for r in readers),
            "stats_kept": stats[d]["kept"],
            "stats_tokens": stats[d]["tokens"],
        }
    return per_domain


def run_demo(cfg: DemoConfig) -> dict:
    _preflight(cfg)
    start = time.perf_counter()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    _say(f"[1/6] harvesting text into {out / 'sources'}")
    rows, heldout = _harvest(cfg, out / "sources")
    _say("[2/6] training the Korean tokenizer extension")
    tok_dir, tok_table = _tokenizer(cfg, rows, heldout, out / "tokenizer")
    _plot_bytes_per_token(tok_table, out / "bytes_per_token.png")
    _say("[3/6] building the corpus (eight domains)")
    manifest = _build(cfg, rows, tok_dir, out / "corpus")
    missing = [d for d in DOMAINS if d not in manifest.domains or not manifest.domains[d].tokens]
    if missing:
        raise RuntimeError(
            f"the demo corpus has no tokens for {missing}: see {out / 'corpus' / 'stats.json'}"
        )
    schedule = _schedule(cfg.loader_batches * cfg.batch_size * cfg.seq_len)
    schedule.save(out / "schedule.toml")
    _say("[4/6] planning the mixture")
    plan_text = _plan(cfg, manifest, schedule, out / "plan.png")
    _say(plan_text)
    _say("[5/6] streaming batches through the mixture loader")
    loader = _stream(cfg, out / "corpus" / "manifest.json", schedule, out / "mixture.png")
    _say("[6/6] training a tiny Motif model")
    summary = _train(cfg, out / "corpus" / "manifest.json", out / "schedule.toml", out / "train")
    facts = {
        "from_hub": cfg.from_hub,
        "sources": rows,
        "tokenizer": tok_table,
        "manifest": manifest,
        "stats": json.loads((out / "corpus" / "stats.json").read_text()),
        "plan": plan_text,
        "loader": loader,
        "train": summary,
        "seconds": time.perf_counter() - start,
    }
    _report(out, facts)
    summary_json = {k: v for k, v in facts.items() if k not in ("manifest",)}
    summary_json["config"] = {k: str(v) for k, v in dataclasses.asdict(cfg).items()}
    atomic_write_text(out / "demo.json", json.dumps(summary_json, indent=1, default=str) + "\n")
    _say(f"\ndone in {facts['seconds']:.0f} s. Outputs in {out}:")
    for name in (
        "report.md",
        "corpus/manifest.json",
        "corpus/stats.json",
        "tokenizer/",
        "bytes_per_token.png",
        "plan.png",
        "mixture.png",
        "train/loss.png",
        "train/metrics.jsonl",
    ):
        _say(f"  {out / name}")
    return facts
