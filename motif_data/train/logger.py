"""The loop's metrics: one JSON line a step in ``metrics.jsonl``, a printed line every ``log_every`` steps,
and the per-domain counters, fed from each step's results one step late.

Reading a step's results (``.cpu()``) right after queuing it would wait for the GPU to drain, and the GPU
would then idle while the host formats metrics and queues the next step (~4 % of an H100 step for
``small``). So each step's tensors are copied into pinned memory behind an event and read once the next step
is queued; the step time is the distance between consecutive end-of-step marks on the GPU's timeline.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from motif_data.atomic import atomic_write_text

__all__ = ["MetricsLogger", "keep_metrics_until"]

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


@dataclass
class _Queued:
    step: int
    lr: float
    rope_base: float
    host: dict[str, torch.Tensor]
    end: _Mark


def keep_metrics_until(path: Path, step: int) -> None:
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


class MetricsLogger:
    """``queue(...)`` a finished step's tensors; its line is written when the next step is queued (or at
    ``flush``). ``path`` None: this rank writes nothing but still counts (the counters are summed later).
    A step's loss sums and counts have the counters' slots, named by their ``BUCKETS``: the domains, or an SFT
    stream's one."""

    def __init__(self, path: Path | None, device: torch.device, counters, *, seq_len: int,
                 tokens_per_step: int, flops_per_token: float, peak_flops: float | None, world_size: int,
                 log_every: int, last_step: int) -> None:  # fmt: skip
        self.device, self.counters, self.seq_len = device, counters, seq_len
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak, self.world_size = peak_flops, world_size
        self.log_every, self.last_step = log_every, last_step
        self.file = open(path, "a", encoding="utf-8") if path is not None else None
        self._first_step, self._first_tokens = 0, 0  # where the current phase began
        self.records: list[dict] = []
        self._since = _mark(device)
        self._pending: _Queued | None = None

    def begin_phase(self, step: int, tokens: int, *, seq_len: int, tokens_per_step: int,
                    flops_per_token: float) -> None:  # fmt: skip
        """Steps after ``step`` (``tokens`` trained before them) have this shape: a run in phases."""
        self.flush()
        self._first_step, self._first_tokens = step, tokens
        self.seq_len, self.tokens_per_step, self.flops_per_token = seq_len, tokens_per_step, flops_per_token

    def queue(self, step: int, lr: float, rope_base: float, **tensors: torch.Tensor) -> None:
        # Tensors already on the host (the loader's domain ids, everything on CPU) are kept as they are.
        host = {
            k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
            if t.device.type == "cuda"
            else t
            for k, t in tensors.items()
        }
        queued = _Queued(step, lr, rope_base, host, _mark(self.device))
        self.flush()
        self._pending = queued

    def flush(self) -> None:
        """Write the pending step's line (waits for that step only)."""
        if self._pending is None:
            return
        done, self._pending = self._pending, None
        dt = _seconds(self._since, done.end)
        self._since = done.end
        h = done.host
        sums, counts = h["sums"], h["counts"]
        self.counters.update(h["domains"], torch.full_like(h["losses"], self.seq_len), h["losses"])
        flops = self.flops_per_token * self.tokens_per_step
        record = {
            "step": done.step,
            "loss": float(sums.sum() / counts.sum()),
            "domain_loss": {
                d: float(sums[i] / counts[i]) for i, d in enumerate(self.counters.BUCKETS) if counts[i] > 0
            },
            "lr": done.lr,
            "grad_norm": float(h["grad_norm"]),
            "rope_base": done.rope_base,
            "tokens": self._first_tokens + (done.step - self._first_step) * self.tokens_per_step,
            "step_time_s": dt,
            "tokens_per_s": self.tokens_per_step / dt,
            "mfu": flops / dt / (self.peak * self.world_size) if self.peak else None,
        }
        if "max_logit" in h:  # QK-clip is on
            record["max_logit"], record["qk_clipped"] = float(h["max_logit"]), int(h["qk_clipped"])
        if self.device.type == "cuda":
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.records.append(record)
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            if done.step % self.log_every == 0 or done.step == self.last_step:
                mfu = f" mfu {record['mfu']:.1%}" if record["mfu"] is not None else ""
                print(
                    f"step {done.step:6d} loss {record['loss']:.4f} lr {done.lr:.2e} "
                    f"{record['tokens_per_s']:,.0f} tok/s{mfu}",
                    flush=True,
                )

    def close(self) -> None:
        self.flush()
        if self.file is not None:
            self.file.close()

    def steady(self) -> dict:
        """Median step time, tokens/s and MFU, leaving out the first steps (compilation, autotuning,
        allocator warm-up), and the last loss."""
        r = self.records
        steady = r[min(len(r) - 1, max(2, len(r) // 10)) :] if r else []

        def median(key):
            return (
                statistics.median(x[key] for x in steady) if steady and steady[0][key] is not None else None
            )

        return {
            "final_loss": r[-1]["loss"] if r else None,
            "median_step_time_s": median("step_time_s"),
            "median_tokens_per_s": median("tokens_per_s"),
            "median_mfu": median("mfu"),
        }
