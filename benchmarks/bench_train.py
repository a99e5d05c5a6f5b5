"""Training-step speed of a preset with our kernels against the pure-PyTorch references, in one run.

Runs the real loop (``motif_data.train.loop.train``: mixture loader, AdamW or Muon, bf16 autocast on GPU) for
a few steps per variant on the same corpus and prints step time, tokens/s, MFU and peak memory. The reference
variant is the anchor: two SDPA calls per differential layer, eager PolyNorm ⊙ up, plain logits → CE.

    PYTHONPATH=. python benchmarks/bench_train.py --config configs/small.toml --corpus PATH/manifest.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

from motif_data.train.config import TrainConfig
from motif_data.train.loop import train

VARIANTS = {
    "reference (anchor)": {"kernels": "reference", "compile": False},
    "motif_data.kernels": {"kernels": "auto", "compile": False},
    "motif_data.kernels + compile": {"kernels": "auto", "compile": True},
    # Each decoder layer recomputed from its input in the backward: the memory it saves, the time it costs.
    "kernels + compile, block checkpointing": {
        "kernels": "auto",
        "compile": True,
        "activation_checkpointing": "block",
    },
    # The linear cross-entropy backends inside the compiled step (the default is one of them).
    "kernels + compile, cce CE": {"kernels": "auto", "compile": True, "loss_backend": "cce"},
    "kernels + compile, dense CE": {"kernels": "auto", "compile": True, "loss_backend": "dense"},
    # Muon for the projection matrices (AdamW for the rest) and QK-clip at τ = 100: the optimizer's cost.
    "kernels + compile, muon": {"kernels": "auto", "compile": True, "optimizer": "muon"},
    # The same under FSDP2 on however many ranks run it (one: what sharding costs where it saves nothing).
    "kernels + compile, muon, fsdp": {
        "kernels": "auto",
        "compile": True,
        "optimizer": "muon",
        "parallel": "fsdp",
    },
}
DEFAULT_VARIANTS = list(VARIANTS)[:4]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/small.toml"))
    parser.add_argument(
        "--corpus", required=True,
        help="manifest.json of a built corpus, or 'random': random tokens over the model's vocabulary in our "
        "shard format, written to a temporary folder (speed and MFU only: the loss does not fall)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=30, help="steps per variant (the first 10%% are warm-up)"
    )
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="STEPS",
        help="then profile STEPS steps of every variant and print where each one's GPU time goes",
    )  # fmt: skip
    args = parser.parse_args()

    base = TrainConfig.load(args.config).replace(
        steps=args.steps, warmup_steps=max(1, args.steps // 10), save_checkpoints=False
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, load {os.getloadavg()}"
    print(f"device: {device}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"config: {args.config} ({base.preset}), {base.micro_batch}×{base.seq_len} tokens per micro-batch, "
          f"{args.steps} steps per variant")  # fmt: skip
    corpus_dir = tempfile.TemporaryDirectory() if args.corpus == "random" else None
    corpus = random_corpus(Path(corpus_dir.name), base) if corpus_dir else Path(args.corpus)
    print(f"corpus: {'random tokens, ' if corpus_dir else ''}{corpus}")
    results, fitted = {}, {}
    for name in args.variants:
        results[name], fitted[name] = run_variant(name, base.replace(**VARIANTS[name]), corpus)
    anchor = results.get("reference (anchor)")
    print()
    print(f"{'variant':30s} {'step ms':>9s} {'tokens/s':>12s} {'MFU':>7s} {'peak GiB':>9s} {'speed-up':>9s}")
    for name, s in results.items():
        if s is None:
            print(f"{name:30s} {'failed':>9s}")
            continue
        mfu = f"{s['median_mfu']:.1%}" if s["median_mfu"] is not None else "n/a"
        mem = f"{s['peak_mem_gib']:.1f}" if s["peak_mem_gib"] is not None else "n/a"
        ratio = f"{anchor['median_step_time_s'] / s['median_step_time_s']:.2f}×" if anchor else "n/a"
        print(f"{name:30s} {s['median_step_time_s'] * 1e3:9.1f} {s['median_tokens_per_s']:12,.0f} {mfu:>7s} "
              f"{mem:>9s} {ratio:>9s}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.profile:
        # Each variant profiled as it ran above (the anchor at the micro-batch that fitted).
        breakdowns = {
            name: profile_steps(fitted[name].replace(steps=args.profile, warmup_steps=1), corpus)
            for name, s in results.items()
            if s is not None
        }
        print_breakdown(breakdowns)
    return 0


def random_corpus(root: Path, cfg: TrainConfig, tokens_per_domain: int = 1 << 20) -> Path:
    """Eight domains of uniformly random documents (64–4,096 tokens) over the model's vocabulary (219,520 when
    the preset does not fix it), as ShardWriter writes a build: what the loader and the model see is the real
    format, only the tokens carry nothing to learn."""
    import numpy as np

    from motif_data import DOMAINS
    from motif_data.shards import DomainInfo, Manifest, ShardWriter, TokenizerInfo

    vocab = cfg.model.vocab_size or 219_520
    rng = np.random.default_rng(0)
    domains = {}
    for domain in DOMAINS:
        with ShardWriter(root / domain, domain) as writer:
            written = 0
            while written < tokens_per_domain:
                doc = rng.integers(0, vocab - 1, size=int(rng.integers(64, 4096)), dtype=np.int64)
                writer.write(np.append(doc, vocab - 1))
                written += len(doc) + 1
        shards = tuple(
            s.__class__(f"{domain}/{s.path}", s.documents, s.tokens, s.sha256, s.index_sha256)
            for s in writer.shards
        )
        domains[domain] = DomainInfo(sum(s.documents for s in shards), sum(s.tokens for s in shards), shards)
    Manifest(TokenizerInfo(f"random-{vocab}", "0" * 64, vocab, vocab - 1), domains, root).save(
        root / "manifest.json"
    )
    return root / "manifest.json"


def _release_memory() -> None:
    # What the last run left (its model, optimizer states, the allocator's cache) goes before the next one.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_variant(name: str, cfg, corpus: Path) -> tuple[dict | None, TrainConfig]:
    """Train one variant; out of GPU memory, retry with half the micro-batch and twice the accumulation (the
    same tokens per step): the references' full logits (micro-batch × seq × vocab fp32) outgrow a card first.
    Returns the summary (None when it failed) and the config it ran with."""
    while True:
        _release_memory()
        with tempfile.TemporaryDirectory() as out:
            try:
                return train(cfg, out, corpus), cfg
            except torch.cuda.OutOfMemoryError:
                if cfg.micro_batch == 1:
                    print(f"{name}: out of memory even at micro-batch 1", file=sys.stderr)
                    return None, cfg
                cfg = cfg.replace(micro_batch=cfg.micro_batch // 2, grad_accum=cfg.grad_accum * 2)
                print(f"{name}: out of memory; again as {cfg.grad_accum} × {cfg.micro_batch} × {cfg.seq_len}")
            except Exception as e:  # a variant that fails (e.g. compile) is reported, the others still run
                print(f"{name}: failed: {type(e).__name__}: {e}", file=sys.stderr)
                return None, cfg


# Kernel name fragments → what the time is spent on, first match wins. The references' kernels count too:
# SDPA's flash/efficient kernels as attention, the plain logits' softmax and NLL as cross-entropy.
_CATEGORIES = (
    ("attention", ("_diff_attn", "_map_bwd", "_grouped_bwd", "flash", "fmha", "attention", "sdpa")),
    ("PolyNorm", ("_poly_norm", "polynorm")),
    (
        "cross-entropy",
        (
            "_cce",
            "cce_",
            "_ce_",
            "linear_cross",
            "cross_entropy",
            "softmax_minus_onehot",
            "log_softmax",
            "nll",
        ),
    ),
    ("GEMMs", ("gemm", "sm90", "cutlass", "cublas", "nvjet", "xmma")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "muon")),
)
_OTHER = "other (elementwise, norms, copies)"


def profile_steps(cfg, corpus: Path) -> dict[str, float]:
    """GPU kernel time per step by category (ms) over ``cfg.steps`` profiled steps, plus "idle": the median
    wall step minus all kernel time (host work the GPU waits for), and "step": the median wall step."""
    from torch.profiler import ProfilerActivity, profile

    _release_memory()
    with tempfile.TemporaryDirectory() as warm:  # autotuning, compiling and allocator warm-up outside
        train(cfg.replace(steps=2), warm, corpus)
    on_gpu = torch.cuda.is_available()
    activity, attr = (
        (ProfilerActivity.CUDA, "self_device_time_total")
        if on_gpu
        else (ProfilerActivity.CPU, "self_cpu_time_total")
    )
    with tempfile.TemporaryDirectory() as out, profile(activities=[activity]) as prof:
        summary = train(cfg, out, corpus)
    per_category = dict.fromkeys([c for c, _ in _CATEGORIES] + [_OTHER], 0.0)
    for event in prof.key_averages():
        us = getattr(event, attr)
        if us <= 0 or (on_gpu and event.device_type != torch.autograd.DeviceType.CUDA):
            continue
        name = event.key.lower()
        category = next((c for c, keys in _CATEGORIES if any(k in name for k in keys)), _OTHER)
        per_category[category] += us / 1e3 / cfg.steps
    step = summary["median_step_time_s"] * 1e3
    per_category["idle"] = max(0.0, step - sum(per_category.values()))
    per_category["step"] = step
    return per_category


def print_breakdown(breakdowns: dict[str, dict[str, float]]) -> None:
    """One column a variant: ms per step in each category and its share of the step."""
    if not breakdowns:
        return
    names = list(breakdowns)
    rows = [c for c, _ in _CATEGORIES] + [_OTHER, "idle", "step"]
    print("\nstep-time breakdown, ms per step (share of the step), from the profiler's GPU kernel times:")
    print(f"{'':36s}" + "".join(f"{n[:26]:>28s}" for n in names))
    for row in rows:
        cells = []
        for n in names:
            ms, step = breakdowns[n][row], breakdowns[n]["step"]
            cells.append(f"{ms:10.1f} ({ms / step:5.1%})" if row != "step" else f"{ms:10.1f}")
        print(f"{row:36s}" + "".join(f"{c:>28s}" for c in cells))


if __name__ == "__main__":
    sys.exit(main())
