"""The training loop: one visible ``for`` loop over optimizer steps, fed by the mixture loader.

AdamW + WSD learning rate, gradient accumulation and clipping, bf16 autocast on GPU, DDP under ``torchrun``,
per-domain loss from the per-token losses, ``metrics.jsonl`` per step, atomic checkpoints that resume exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import os
import random
import re
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from motif_data import DOMAINS
from motif_data.atomic import atomic_open, atomic_write_text
from motif_data.kernels.linear_ce import default_backend
from motif_data.shards import Manifest, file_sha256
from motif_data.train.config import TrainConfig
from motif_data.train.model import Motif, count_parameters, flops_per_token

__all__ = [
    "train",
    "refuse_existing_run",
    "domain_loss_sums",
    "peak_flops",
    "latest_checkpoint",
    "finished_summary",
    "run_identity",
]

_CHECKPOINT = re.compile(r"^step-(\d{7})\.pt$")

# Dense bf16 matrix rate per device from the vendors' datasheets (TFLOP/s), for MFU. First match wins.
_PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("MI300X", 1307.4),
                ("MI250X", 383.0), ("MI250", 362.1))  # fmt: skip


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """The device's dense bf16 FLOP/s, or None where it is unknown (CPU): MFU is then not reported."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in _PEAK_TFLOPS if key in name), None)


def domain_loss_sums(
    sequence_losses: torch.Tensor, domains: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per domain index: the sum of token losses and the number of tokens, (len(DOMAINS),) float64 each,
    from each sequence's summed loss (N,) and its domain (N,)."""
    sums = torch.zeros(len(DOMAINS), dtype=torch.float64, device=sequence_losses.device)
    counts = torch.zeros(len(DOMAINS), dtype=torch.float64, device=sequence_losses.device)
    sums.index_add_(0, domains, sequence_losses.double())
    counts.index_add_(
        0, domains, torch.full((len(domains),), float(seq_len), dtype=torch.float64, device=counts.device)
    )
    return sums, counts


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest step; every file there is complete because each was written atomically."""
    directory = Path(directory)
    found = (
        sorted(p for p in directory.glob("step-*.pt") if _CHECKPOINT.match(p.name))
        if directory.is_dir()
        else []
    )
    return found[-1] if found else None


def finished_summary(out: Path, steps: int) -> dict | None:
    """The summary of a run in ``out`` that already reached ``steps`` (its last checkpoint and summary.json
    are there), saying so on stdout; else None. Resuming such a run has nothing to do and must not rewrite
    anything."""
    ckpt = latest_checkpoint(out / "checkpoints")
    summary = out / "summary.json"
    if ckpt is None or int(_CHECKPOINT.match(ckpt.name).group(1)) < steps or not summary.is_file():
        return None
    print(f"train: {out} finished at step {steps} already: nothing to do (raise train.steps to go on)")
    return json.loads(summary.read_text())


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# The settings that make a run's token stream and optimizer trajectory what they are. Not among them: steps
# (a resume may raise it; fit_schedule's tie to it is checked by the loader state), execution and logging.
_RUN_FIELDS = (
    "schedule", "fit_schedule", "seq_len", "micro_batch", "grad_accum", "seed", "lr", "warmup_steps",
    "decay_fraction", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip", "rope_switch_step",
    "rope_base_after", "sma_every", "sma_window",
)  # fmt: skip


def run_identity(cfg: TrainConfig, model: dict, manifest_path: str | os.PathLike) -> str:
    """16 hex digits naming a run: its model, the `_RUN_FIELDS` of its config and its corpus's manifest."""
    fields = {name: getattr(cfg, name) for name in _RUN_FIELDS}
    data = {"model": model, "train": fields, "corpus": file_sha256(manifest_path)}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save(path: Path, state: dict, keep: int | None = None) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    if keep is not None:  # the newest `keep`, never the file just written
        found = sorted(p for p in path.parent.glob("step-*.pt") if _CHECKPOINT.match(p.name) and p != path)
        for old in found[: max(0, len(found) - (keep - 1))]:
            old.unlink()


def _setup_device(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); under torchrun one process per GPU joins the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no GPU is visible: set device = 'auto' or 'cpu'")
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Matrices (projections, the tied embedding) decay; norms, PolyNorm coefficients and λ vectors don't.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _keep_metrics_until(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint so the file reads as one uninterrupted run.

    A last line with no newline that is not JSON is a write cut short by a kill: dropped, with a warning.
    Any other line that is not JSON stops the resume, naming the file and line."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").split("\n")
    kept = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: torn
                warnings.warn(
                    f"{path}: dropped its torn last line (an interrupted write): {line[:60]!r}", stacklevel=3
                )
                continue
            raise ValueError(f"{path}, line {number}: not JSON; fix or remove that line to resume") from None
        if record["step"] <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def _all_ranks(counters, world_size: int):
    """A copy of the per-domain counters summed over ranks (the originals keep counting this rank only)."""
    from motif_data.trainer_hook import DomainCounters

    total = DomainCounters()
    total.load_state_dict(counters.state_dict())
    if world_size > 1:
        total.all_reduce()
    return total


# A step's results reach the host one step late. Reading them (``.cpu()``) right after a step would wait for the
# GPU to drain, and the GPU would then idle while the host formats metrics and queues the next step (~4 % of an
# H100 step for ``small``). So each step's tensors are copied into pinned memory behind an event and read once the
# next step is queued; the step time is the distance between consecutive end-of-step marks on the GPU's timeline.
_Mark = torch.cuda.Event | float


def _mark(device: torch.device) -> _Mark:
    """The end of the work queued so far: a timed CUDA event on a GPU, the host clock elsewhere (where every op
    has finished when it returns)."""
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _seconds(start: _Mark, end: _Mark) -> float:
    if isinstance(end, float):
        return end - start
    end.synchronize()
    return start.elapsed_time(end) / 1e3


@dataclasses.dataclass
class _StepResult:
    step: int
    lr: float
    rope_base: float
    host: dict[str, torch.Tensor]
    end: _Mark

    @classmethod
    def read_back(
        cls, step: int, lr: float, rope_base: float, device: torch.device, **tensors
    ) -> _StepResult:
        # Tensors already on the host (the loader's domain ids, everything on CPU) are kept as they are.
        host = {
            k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
            if t.device.type == "cuda"
            else t
            for k, t in tensors.items()
        }
        return cls(step, lr, rope_base, host, _mark(device))


def refuse_existing_run(out: Path) -> None:
    """A finished or interrupted run is never overwritten: its metrics and checkpoints are the user's."""
    found = [name for name in ("metrics.jsonl", "checkpoints") if (out / name).exists()]
    if found:
        raise FileExistsError(
            f"{out} holds a run already ({', '.join(found)}): pass --resume to continue it, or choose another --out"
        )


def train(
    cfg: TrainConfig, out: str | os.PathLike, manifest_path: str | os.PathLike, *, resume: bool = False
) -> dict:
    """Train for ``cfg.steps`` optimizer steps; writes ``metrics.jsonl``, ``checkpoints/step-N.pt``,
    ``summary.json`` (and ``model-sma.pt`` with averaging) under ``out`` and returns the summary."""
    from motif_data.mixer import MixtureSchedule, Stage
    from motif_data.trainer_hook import (
        CheckpointAverager,
        DomainCounters,
        MixtureDataLoader,
        MixtureDataset,
        rope_base,
        wsd_lr,
    )

    out = Path(out)
    ckpt_dir, metrics_path = out / "checkpoints", out / "metrics.jsonl"
    if not resume:
        refuse_existing_run(out)
    elif (finished := finished_summary(out, cfg.steps)) is not None:
        return finished
    joined_here = not dist.is_initialized()
    rank, world_size, device = _setup_device(cfg)
    is_main = rank == 0

    # The embedding is sized by the corpus's tokenizer unless the config fixes a (larger) vocabulary.
    manifest = Manifest.load(manifest_path)
    model_cfg = cfg.model
    if model_cfg.vocab_size is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=manifest.tokenizer.vocab_size)
    elif model_cfg.vocab_size < manifest.tokenizer.vocab_size:
        raise ValueError(
            f"model.vocab_size {model_cfg.vocab_size} is smaller than the corpus tokenizer's "
            f"{manifest.tokenizer.vocab_size}: drop vocab_size from [model] to size it from the manifest"
        )

    loss_backend = default_backend(device) if cfg.loss_backend == "auto" else cfg.loss_backend
    torch.manual_seed(cfg.seed)
    with torch.device(device):  # initialised where it trains: no CPU init of the embedding, no host copy
        raw_model = Motif(
            model_cfg,
            reference_kernels=cfg.kernels == "reference",
            loss_backend=loss_backend,
        )
    model: torch.nn.Module = torch.compile(raw_model) if cfg.compile else raw_model
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(
        _param_groups(raw_model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=device.type == "cuda",
    )
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")

    tokens_per_step = cfg.tokens_per_step_per_rank * world_size
    schedule = MixtureSchedule.load(cfg.schedule)
    if cfg.fit_schedule:
        scale = cfg.steps * tokens_per_step / schedule.total_tokens
        stages = [Stage(st.name, st.tokens * scale, st.start, st.end) for st in schedule.stages]
        schedule = MixtureSchedule(
            stages, name=f"{schedule.name} (fitted to {cfg.steps * tokens_per_step:,} tokens)"
        )
    dataset = MixtureDataset(
        manifest, schedule, cfg.seq_len, cfg.seed, rank, world_size, batch_size=cfg.micro_batch
    )
    loader = MixtureDataLoader(dataset, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    counters = DomainCounters()
    averager = CheckpointAverager(cfg.sma_window, cfg.sma_every * tokens_per_step) if cfg.sma_every else None

    start_step = 0
    identity = run_identity(cfg, dataclasses.asdict(model_cfg), manifest_path)
    if resume:
        ckpt_path = latest_checkpoint(ckpt_dir)
        if ckpt_path is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {ckpt_dir}; start without --resume")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["model_config"] != dataclasses.asdict(model_cfg):
            raise ValueError(
                f"{ckpt_path} holds another model ({state['model_config']}): resume with its config"
            )
        theirs = state.get("run", "none (written before run identities)")
        if theirs != identity:
            raise ValueError(
                f"{ckpt_path} is another run's checkpoint (run {theirs}; this config and corpus are run "
                f"{identity}): resume with that run's config and corpus, or train into another --out"
            )
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        try:
            loader.load_state_dict(state["loader"])
        except ValueError as e:
            hint = (
                " (fit_schedule ties the mixture to train.steps: keep the run's steps)"
                if cfg.fit_schedule
                else ""
            )
            raise ValueError(f"{ckpt_path}: {e}{hint}") from e
        if is_main:  # the saved counters are the sum over ranks: one rank carries them on
            counters.load_state_dict(state["counters"])
        if averager is not None and state.get("averager") is not None:
            averager.load_state_dict(state["averager"])
        _set_rng_state(state["rng"])
        start_step = state["step"]
        if is_main:
            _keep_metrics_until(metrics_path, start_step)

    flops_token = flops_per_token(model_cfg, cfg.seq_len)
    peak = peak_flops(device, cfg.peak_tflops)
    decay_steps = round(cfg.decay_fraction * cfg.steps)
    rope_switch = cfg.rope_switch_step or math.inf
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        print(
            f"train: {count_parameters(raw_model) / 1e6:.1f}M parameters, {world_size} × {device.type}, "
            f"{tokens_per_step:,} tokens/step, steps {start_step} → {cfg.steps}",
            flush=True,
        )
    metrics_file = open(metrics_path, "a", encoding="utf-8") if is_main else None
    records: list[dict] = []

    def log(result: _StepResult, since: _Mark) -> None:
        """Turn a finished step's read-back into its metrics line (waits for that step only)."""
        dt = _seconds(since, result.end)
        h = result.host
        sums, counts = h["sums"], h["counts"]
        counters.update(h["domains"], torch.full_like(h["losses"], cfg.seq_len), h["losses"])
        record = {
            "step": result.step,
            "loss": float(sums.sum() / counts.sum()),
            "domain_loss": {d: float(sums[i] / counts[i]) for i, d in enumerate(DOMAINS) if counts[i] > 0},
            "lr": result.lr,
            "grad_norm": float(h["grad_norm"]),
            "rope_base": result.rope_base,
            "tokens": result.step * tokens_per_step,
            "step_time_s": dt,
            "tokens_per_s": tokens_per_step / dt,
            "mfu": flops_token * tokens_per_step / dt / (peak * world_size) if peak else None,
        }
        if device.type == "cuda":
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        records.append(record)
        if is_main:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            if result.step % cfg.log_every == 0 or result.step == cfg.steps:
                mfu = f" mfu {record['mfu']:.1%}" if record["mfu"] is not None else ""
                print(
                    f"step {result.step:6d} loss {record['loss']:.4f} lr {result.lr:.2e} "
                    f"{record['tokens_per_s']:,.0f} tok/s{mfu}",
                    flush=True,
                )

    batches = iter(loader)
    since = _mark(device)
    pending: _StepResult | None = None  # the last queued step, logged once the next one is queued
    for step in range(start_step, cfg.steps):
        done = step + 1  # the LR of an update is the schedule's value at its end: warm-up starts above 0
        lr = wsd_lr(done, peak=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps, decay=decay_steps,
                    final_ratio=cfg.min_lr_ratio)  # fmt: skip
        for group in optimizer.param_groups:
            group["lr"] = lr
        base = rope_base(step, rope_switch, short=model_cfg.rope_base, long=cfg.rope_base_after)
        raw_model.set_rope_base(base)

        sequence_losses, sequence_domains = [], []
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            ids = batch["input_ids"].to(device, non_blocking=True)
            # DDP all-reduces gradients only on the last micro-batch of the step.
            skip_sync = world_size > 1 and micro < cfg.grad_accum - 1
            with model.no_sync() if skip_sync else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    token_losses = model(ids[:, :-1], ids[:, 1:])  # (B, S) fp32
                # sum × 1/n, not mean(): the gradient reaching the loss head is then one value expanded over the
                # tokens (stride 0), which the dense backend takes as uniform without a host sync.
                (token_losses.sum() * (1.0 / (token_losses.numel() * cfg.grad_accum))).backward()
            sequence_losses.append(token_losses.detach().sum(dim=1))
            sequence_domains.append(batch["domain"])
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        seq_losses = torch.cat(sequence_losses).double()
        seq_domains = torch.cat(sequence_domains)  # from the loader, on the host
        # non_blocking: a blocking host-to-device copy synchronises the stream, so the host would wait for the
        # whole step before queuing the next one and leave the GPU idle meanwhile.
        domains_on_device = seq_domains.to(device, non_blocking=True)
        sums, counts = domain_loss_sums(seq_losses, domains_on_device, cfg.seq_len)
        if world_size > 1:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        if averager is not None:
            averager.update(raw_model, done * tokens_per_step)
        queued = _StepResult.read_back(
            done, lr, base, device,
            sums=sums, counts=counts, grad_norm=grad_norm, domains=seq_domains, losses=seq_losses,
        )  # fmt: skip
        if pending is not None:
            log(pending, since)
            since = pending.end
        pending = queued

        if cfg.save_checkpoints and ((cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == cfg.steps):
            log(pending, since)  # a checkpoint's counters and metrics include its own step
            since, pending = pending.end, None
            state = {
                "step": done,
                "run": identity,
                "model_config": dataclasses.asdict(model_cfg),
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "loader": loader.state_dict(),  # the global position: any world size can resume it
                "counters": _all_ranks(counters, world_size).state_dict(),
                "averager": averager.state_dict() if averager is not None else None,
                "rng": _rng_state(),
            }
            if is_main:
                _save(ckpt_dir / f"step-{done:07d}.pt", state, keep=cfg.keep_checkpoints)
    if pending is not None:
        log(pending, since)
    if metrics_file is not None:
        metrics_file.close()

    if averager is not None and averager.snapshots and is_main:
        _save(
            out / "model-sma.pt",
            {"model_config": dataclasses.asdict(model_cfg), "model": averager.averaged()},
        )
    totals = _all_ranks(counters, world_size).summary()
    # Leave the first steps (compilation, autotuning, allocator warm-up) out of the speed figures.
    steady = records[min(len(records) - 1, max(2, len(records) // 10)) :] if records else []
    summary = {
        "steps": cfg.steps,
        "parameters": count_parameters(raw_model),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": world_size,
        "kernels": cfg.kernels,
        "loss_backend": "reference" if cfg.kernels == "reference" else loss_backend,
        "compile": cfg.compile,
        "final_loss": records[-1]["loss"] if records else None,
        "median_step_time_s": statistics.median(r["step_time_s"] for r in steady) if steady else None,
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady) if steady else None,
        "median_mfu": statistics.median(r["mfu"] for r in steady) if steady and peak else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "flops_per_token": flops_token,
        "domain_tokens": {d: v["tokens"] for d, v in totals.items()},
    }
    if is_main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if world_size > 1 and joined_here:
        # DDP goes first: its Reducer holds the process group, and a gloo group freed last through it is
        # destroyed with the GIL held while its worker thread may need the GIL to release a tensor, a hang
        # at exit seen in 2 of 5 two-rank CPU runs. Freed by destroy_process_group, it releases the GIL.
        del model
        gc.collect()
        dist.destroy_process_group()
    return summary
