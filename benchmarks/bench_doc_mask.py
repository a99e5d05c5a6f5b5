"""Document-masked differential attention on packed sequences, against causal attention over the whole row and
against FlexAttention's document mask (the anchor), every figure measured in this run.

The rows are packed as the loader packs them: documents drawn by the first-stage weights of the motif-2.6b
mixture, each with the o200k token length of a real document of its domain in ../shared/data, concatenated
and cut at S. Motif-2.6B's attention shape: 8 differential heads (16 query maps) of D = 128, values of 256,
bf16, fwd+bwd.

    python benchmarks/bench_doc_mask.py --save-lengths lengths.json      # on a machine with ../shared (CPU)
    PYTHONPATH=. python benchmarks/bench_doc_mask.py --lengths lengths.json  # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOTIF_SHARED", ROOT.parent / "shared"))


def document_lengths(shared: Path) -> dict[str, list[int]]:
    """o200k token counts of every document of each domain's shared samples."""
    from motif_data import DOMAINS
    from motif_data.tokenizer import load_base
    from motif_data.tokenizer.corpus import iter_texts

    enc = load_base(shared / "tokenizers" / "o200k_base.tiktoken")
    lengths = {}
    for domain in DOMAINS:
        files = sorted((shared / "data" / domain).glob("*"))
        texts = [t for f in files if f.suffix in (".zst", ".parquet") for t in iter_texts(f)]
        if not texts:
            raise SystemExit(f"no documents for {domain} under {shared / 'data'}: set MOTIF_SHARED")
        lengths[domain] = [len(ids) for ids in enc.encode_ordinary_batch(texts, num_threads=2)]
    return lengths


def packed_rows(lengths: dict[str, list[int]], batch: int, seq: int, seed: int = 0) -> np.ndarray:
    """``cu_seqlens`` (int64) of ``batch`` rows of ``seq`` tokens over the flattened batch: documents drawn by
    the motif-2.6b schedule's weights at token 0, a document that overruns a row continued in the next."""
    from motif_data.mixer import MixtureSchedule

    weights = MixtureSchedule.load("motif-2.6b").weights_at(0)
    domains = [d for d in weights if weights[d] > 0]
    p = np.array([weights[d] for d in domains])
    rng = np.random.default_rng(seed)
    cuts, total = [0], batch * seq
    while cuts[-1] < total:
        pool = lengths[domains[rng.choice(len(domains), p=p / p.sum())]]
        cuts.append(min(total, cuts[-1] + max(1, pool[rng.integers(len(pool))])))
    # Row starts are document starts too (the loader's windows begin a document part there).
    return np.unique(np.concatenate([cuts, np.arange(0, total, seq)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=Path, help="document lengths JSON written by --save-lengths")
    parser.add_argument(
        "--save-lengths", type=Path, help="count the shared samples' lengths, write them, exit"
    )
    parser.add_argument("--seqs", default="4096,16384", help="sequence lengths (comma-separated)")
    parser.add_argument("--tokens", type=int, default=16384, help="tokens a batch: batch = tokens / S")
    args = parser.parse_args()
    if args.save_lengths:
        args.save_lengths.write_text(json.dumps(document_lengths(SHARED)))
        print(f"wrote {args.save_lengths}")
        return 0
    lengths = json.loads(args.lengths.read_text()) if args.lengths else document_lengths(SHARED)
    every = np.concatenate([np.array(v) for v in lengths.values()])
    print(f"document lengths (o200k tokens), all shared samples: median {np.median(every):.0f}, "
          f"mean {every.mean():.0f}, p90 {np.percentile(every, 90):.0f}, max {every.max()}")  # fmt: skip
    return time_attention(lengths, [int(s) for s in args.seqs.split(",")], args.tokens)


VARIANTS = ("ours, causal over the row", "ours, document mask", "FlexAttention, document mask (anchor)")


def time_attention(lengths: dict[str, list[int]], seqs: list[int], tokens: int) -> int:
    import torch
    import triton

    if not torch.cuda.is_available():
        print("needs a CUDA or ROCm GPU", file=sys.stderr)
        return 1
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}; "
          f"python {platform.python_version()}")  # fmt: skip
    rows = [(seq, max(1, tokens // seq)) for seq in seqs]
    results = [time_packed(lengths, seq, batch) for seq, batch in rows]
    print(f"\n{'S':>6} {'B':>2} {'docs':>5}  " + "  ".join(f"{n[:38]:>38}" for n in VARIANTS))
    for (seq, batch), (n_docs, times, err) in zip(rows, results, strict=True):
        print(f"{seq:>6} {batch:>2} {n_docs:>5}  " + "  ".join(f"{times[n]:35.3f} ms" for n in VARIANTS))
        causal, masked, flex_ms = (times[n] for n in VARIANTS)
        print(f"       masked vs causal {causal / masked:.2f}x less time, vs FlexAttention {flex_ms / masked:.2f}x;"
              f" rel. error ours vs Flex (bf16) {err:.1e}")  # fmt: skip
    return 0


def time_packed(lengths: dict[str, list[int]], seq: int, batch: int) -> tuple[int, dict[str, float], float]:
    """fwd+bwd median ms of each variant on ``batch`` packed rows of ``seq``; the documents' count; the
    relative difference between our masked output and Flex's."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from triton.testing import do_bench

    from motif_data.kernels import diff_attention, document_bounds_from_cu_seqlens

    heads, d, dv, dtype = 8, 128, 256, torch.bfloat16
    cu = torch.from_numpy(packed_rows(lengths, batch, seq)).cuda()
    documents = document_bounds_from_cu_seqlens(cu, batch, seq)
    doc_id = (torch.arange(batch * seq, device="cuda")[:, None] >= cu[None, 1:]).sum(1).view(batch, seq)

    def same_document(b, h, q, kv):
        return (doc_id[b, q] == doc_id[b, kv]) & (q >= kv)

    block_mask = create_block_mask(same_document, batch, None, seq, seq)
    flex = torch.compile(flex_attention)

    def attend(qm, km, v):
        # V in halves of 128: Flex's backward at a value width of 256 needs more shared memory than an
        # H100/H200 block has.
        return torch.cat(
            [flex(qm, km, v[..., i : i + 128], block_mask=block_mask) for i in range(0, dv, 128)], -1
        )

    fns = {
        VARIANTS[0]: lambda q, k, v, lam: diff_attention(q, k, v, lam),
        VARIANTS[1]: lambda q, k, v, lam: diff_attention(q, k, v, lam, documents=documents),
        VARIANTS[2]: lambda q, k, v, lam: (
            attend(q[:, 0::2], k[:, 0::2], v) - lam * attend(q[:, 1::2], k[:, 1::2], v)
        ),
    }
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, 2 * heads, seq, d, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(batch, 2 * heads, seq, d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(batch, heads, seq, dv, device="cuda", dtype=dtype, generator=g)
    inputs = [t.requires_grad_() for t in (q, k, v, torch.tensor(0.6, device="cuda"))]
    dout = torch.randn(batch, heads, seq, dv, device="cuda", dtype=dtype, generator=g)
    times, outs = {}, {}
    for name, fn in fns.items():
        times[name] = do_bench(
            lambda fn=fn: torch.autograd.grad(fn(*inputs), inputs, dout),
            warmup=25,
            rep=200,
            return_mode="median",
        )
        with torch.no_grad():
            outs[name] = fn(*inputs).float()
    ours, anchor = outs[VARIANTS[1]], outs[VARIANTS[2]]
    return len(cu) - 1, times, ((ours - anchor).norm() / anchor.norm()).item()


if __name__ == "__main__":
    sys.exit(main())
