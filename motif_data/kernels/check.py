"""`motif-data kernels check`: compile, without a GPU, every Triton kernel the public ops launch, for each
named target, and report what the compiler says of each (shared memory / LDS, registers, spills, occupancy).

The ops themselves run on meta tensors inside `_device.compile_only`: each launch they make (forward and
backward, at the shapes below) is received instead of run, then compiled with Triton's own backend for the
target through `JITFunction.warmup`, once per autotune config the op may pick there. The compilers ship in
the Triton wheel (the HIP backend with its linker, ptxas and cuobjdump for NVIDIA), so a CPU machine
answers "will these kernels build on my GPU, and how well".
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import cache

import torch
import triton

from motif_data.kernels import _device
from motif_data.kernels.targets import TARGETS, Target

__all__ = ["Result", "Report", "check", "launches", "kernel_name"]

# The shapes that matter: Motif-2.6B's and Motif-2-12.7B's attention (head dim 128, value dim 256, 16 heads),
# every config of every list; and head dim 64 / value 128 for the paired kernels with the first config of each
# list only (`FIRST_CONFIG_ONLY`): a smaller head needs fewer registers and less LDS with the same tiles, so
# what fits at 128 fits at 64, and this asks only that the 64 specialization compiles. The grouped kernels
# share the paired ones' code and tile lists: they are compiled at head dim 128; where a document-masked
# launch needs at least a causal one's resources it answers for it (`_MASKED_COVERS_CAUSAL`). Attention is two
# thirds of the compile time, and the check must end within CI's 20 minutes on 2 cores. PolyNorm from one
# column to past the whole-row limit (16,384), odd widths included; the loss at the 219,520-id vocabulary with
# 2.6B's and small's hidden sizes.
ATTENTION_SHAPES = ((128, 256), (64, 128))
FIRST_CONFIG_ONLY = ", first config"  # the end of a launch label whose op is compiled with one config a list
# One forward kernel serves both attentions; at each config the paired launch's registers and LDS are the
# grouped launch's within a few VGPRs (gfx90a, 2026-12-03: LDS equal, VGPRs at most 8 apart either way), so
# the grouped op's launches take its whole lists and the paired op's its first configs.
_SHARED_FORWARD = ("diff_attention", "_diff_attn_fwd_kernel")
# Kernels whose document-masked specialization (DOC: the same code plus the document table's loads and
# masks) needs, at every config, at least the registers and LDS of the causal one: read from the full check
# of gfx90a, gfx942 and gfx950 (2026-12-03), the masked one used 0 to 89 VGPRs more, never less, and as much
# LDS or more; nothing spilled. So the causal launch compiles its first config, and any config the masked list
# lacks, while the masked launch compiles its whole list. (_map_bwd_kv_kernel is not here: its masked build
# used up to 8 VGPRs fewer at some configs.)
_MASKED_COVERS_CAUSAL = {
    ("grouped_diff_attention", "_diff_attn_fwd_kernel"),
    ("grouped_diff_attention", "_map_bwd_q_kernel"),
    ("diff_attention", "_diff_attn_bwd_kv_kernel"),
    ("diff_attention", "_diff_attn_bwd_q_kernel"),
}
_MASKED = " documents"  # the end of a document-masked launch's label
ATTENTION_SEQ = 4096
POLYNORM_WIDTHS = (1, 7, 2047, 2048, 3072, 8192, 16384, 16385, 65536)
POLYNORM_ROWS = 4096
CE_SHAPES = ((2048, 219_520), (768, 219_520))
CE_TOKENS = 4096


@dataclass(frozen=True)
class Launch:
    """One kernel launch an op makes at one shape, as the op passed it."""

    op: str
    shape: str
    kernel: object  # an Autotuner or a JITFunction
    args: tuple
    kwargs: dict


@dataclass
class Result:
    """What compiling one kernel × config × target gave."""

    target: str
    op: str
    kernel: str
    shape: str
    config: str
    error: str | None = None
    shared: int | None = None  # bytes of shared memory / LDS
    shared_limit: int = 0
    registers: int | None = None  # VGPRs (AMD, arch + acc) or registers a thread (NVIDIA)
    scratch: int | None = None  # spill bytes a lane / thread
    occupancy: int | None = None  # waves per SIMD (AMD, the compiler's figure) or blocks per SM (NVIDIA)
    candidate_only: bool = False  # compiled for --candidates; not in the list the op's autotuner offers
    seconds: float = 0.0  # compile time
    reused: bool = False  # the binary of an earlier result (same kernel, config and specialization)

    @property
    def fits(self) -> bool:
        return self.error is None and self.shared is not None and self.shared <= self.shared_limit

    @property
    def spills(self) -> bool:
        return bool(self.scratch)


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)

    def failures(self) -> list[str]:
        """Why the check fails: a config the op would use that does not compile or overflows shared memory;
        on AMD a listed config that spills; anywhere a kernel × shape with no spill-free config."""
        problems = []
        for r in self.results:
            if r.candidate_only:
                continue
            where = f"{r.target} {r.kernel} [{r.shape}] {r.config}"
            if r.error is not None:
                problems.append(f"{where}: does not compile: {r.error}")
            elif not r.fits:
                problems.append(f"{where}: {r.shared} bytes of shared memory, limit {r.shared_limit}")
            elif r.spills and TARGETS[r.target].backend == "hip":
                problems.append(f"{where}: spills {r.scratch} bytes a lane (AMD lists must not spill)")
        groups: dict[tuple, bool] = {}
        for r in self.results:
            if not r.candidate_only:
                key = (r.target, r.kernel, r.shape)
                groups[key] = groups.get(key, False) or (r.fits and not r.spills)
        problems += [f"{t} {k} [{s}]: no config without spills" for (t, k, s), ok in groups.items() if not ok]
        return problems

    def summary(self) -> list[dict]:
        """Per target: variants compiled, spilling, failing, the largest shared memory used and its limit."""
        rows = []
        for name in dict.fromkeys(r.target for r in self.results):
            mine = [r for r in self.results if r.target == name and not r.candidate_only]
            compiled = [r for r in mine if r.error is None]
            rows.append(
                {
                    "target": name,
                    "gpu": TARGETS[name].gpu,
                    "variants": len(mine),
                    "binaries": sum(not r.reused for r in mine),  # compiles: alike launches share one
                    "compiled": len(compiled),
                    "fit": sum(r.fits for r in mine),
                    "spilling": sum(r.spills for r in compiled),
                    "max_shared": max((r.shared or 0 for r in compiled), default=0),
                    "shared_limit": TARGETS[name].shared_limit,
                }
            )
        return rows

    def to_json(self) -> str:
        return json.dumps(
            {
                "summary": self.summary(),
                "failures": self.failures(),
                "results": [asdict(r) for r in self.results],
            },
            indent=1,
        )


# ---------------------------------------------------------------------------------------------------------
# Which launches: the public ops on meta tensors
# ---------------------------------------------------------------------------------------------------------
def _meta(*shape, dtype=torch.bfloat16, grad=False):
    return torch.empty(shape, dtype=dtype, device="meta", requires_grad=grad)


def _run_ops() -> None:
    from motif_data.kernels.diff_attn import diff_attention, grouped_diff_attention
    from motif_data.kernels.linear_ce import linear_cross_entropy
    from motif_data.kernels.polynorm import poly_norm, poly_norm_mul

    heads = 16
    for d, dv in ATTENTION_SHAPES:
        smoke = "" if (d, dv) == ATTENTION_SHAPES[0] else FIRST_CONFIG_ONLY
        yield "diff_attention", f"D={d} Dv={dv} S={ATTENTION_SEQ} bf16 causal{smoke}"
        q, k = (
            _meta(1, 2 * heads, ATTENTION_SEQ, d, grad=True),
            _meta(1, 2 * heads, ATTENTION_SEQ, d, grad=True),
        )
        v = _meta(1, heads, ATTENTION_SEQ, dv, grad=True)
        out = diff_attention(q, k, v, _meta(dtype=torch.float32, grad=True))
        out.backward(torch.empty_like(out))
        if (d, dv) != ATTENTION_SHAPES[0]:
            continue
        # Grouped (Motif-2-12.7B's 4:1, the K/V pairs shared by whole groups): one noise map per group.
        yield "grouped_diff_attention", f"D={d} Dv={dv} S={ATTENTION_SEQ} r=4 bf16 causal"
        signal, noise, pairs = heads, heads // 4, heads // 4
        tensors = [
            _meta(1, n, ATTENTION_SEQ, width, grad=True)
            for n, width in ((signal, d), (pairs, d), (noise, d), (pairs, d), (pairs, dv))
        ]
        out = grouped_diff_attention(*tensors, _meta(dtype=torch.float32, grad=True))
        out.backward(torch.empty_like(out))
        # Document masking (the DOC kernels), at Motif's head shape only.
        docs = _meta(2, 1, ATTENTION_SEQ, dtype=torch.int32)
        yield "diff_attention", f"D={d} Dv={dv} S={ATTENTION_SEQ} bf16 causal documents"
        out = diff_attention(q, k, v, _meta(dtype=torch.float32, grad=True), documents=docs)
        out.backward(torch.empty_like(out))
        yield "grouped_diff_attention", f"D={d} Dv={dv} S={ATTENTION_SEQ} r=4 bf16 causal documents"
        out = grouped_diff_attention(*tensors, _meta(dtype=torch.float32, grad=True), documents=docs)
        out.backward(torch.empty_like(out))
    for n in POLYNORM_WIDTHS:
        w, b = _meta(3, dtype=torch.float32, grad=True), _meta(1, dtype=torch.float32, grad=True)
        yield "poly_norm", f"N={n} bf16"
        x = _meta(POLYNORM_ROWS, n, grad=True)
        poly_norm(x, w, b).backward(torch.empty_like(x))
        yield "poly_norm_mul", f"N={n} bf16"
        x, y = _meta(POLYNORM_ROWS, n, grad=True), _meta(POLYNORM_ROWS, n, grad=True)
        poly_norm_mul(x, y, w, b).backward(torch.empty_like(x))
    for hidden, vocab in CE_SHAPES:
        yield "linear_cross_entropy", f"d={hidden} V={vocab} bf16"
        h, weight = _meta(CE_TOKENS, hidden, grad=True), _meta(vocab, hidden, dtype=torch.float32, grad=True)
        targets = _meta(CE_TOKENS, dtype=torch.int64)
        linear_cross_entropy(h, weight, targets, backend="dense")  # forward with the gradient pass
        with torch.no_grad():
            linear_cross_entropy(h, weight, targets, backend="dense")  # the loss-only pass


def launches(target: Target) -> list[Launch]:
    """Every launch the public ops make at the check's shapes when they run for `target`."""
    found: list[Launch] = []
    label = ("", "")

    def receive(kernel, args, kwargs):
        found.append(Launch(label[0], label[1], kernel, args, kwargs))

    with _device.compile_only(target, receive):
        ops = _run_ops()
        for label in ops:  # noqa: B007 (receive reads the label of the op running now)
            pass
    return found


# ---------------------------------------------------------------------------------------------------------
# Compiling one launch for one target
# ---------------------------------------------------------------------------------------------------------
class _CompileOnlyDriver:
    """What `JITFunction.run(warmup=True)` asks of the active driver, answered for a target with no GPU.
    Each target gets its own device index: a JITFunction caches its backend per device."""

    def __init__(self, target: Target, index: int) -> None:
        self.target = triton.backends.compiler.GPUTarget(target.backend, target.arch, target.warp_size)
        self.index = index

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return self.index

    def get_current_stream(self, device=None) -> int:
        return 0


def kernel_name(kernel) -> str:
    """The Python name of a launched kernel: an Autotuner's function, a JITFunction's (or, under the
    interpreter, an InterpretedFunction's) own."""
    fn = getattr(kernel, "fn", kernel)
    return getattr(fn, "fn", fn).__name__


def _config_text(config: triton.Config | None, kwargs: dict) -> str:
    if config is None:
        keys = {k: v for k, v in kwargs.items() if k.startswith("BLOCK") or k in ("num_warps", "num_stages")}
        return " ".join(f"{k}={v}" for k, v in keys.items())
    parts = [f"{k}={v}" for k, v in config.kwargs.items()]
    return " ".join(parts + [f"warps={config.num_warps}", f"stages={config.num_stages}"])


def _amd_resources(asm: str) -> tuple[int | None, int | None, int | None]:
    def number(pattern: str) -> int | None:
        m = re.search(pattern, asm)
        return int(m.group(1)) if m else None

    # On CDNA the arch and accumulation VGPRs share one file: their total is what limits occupancy.
    vgprs = number(r";\s*TotalNumVgprs:\s*(\d+)") or number(r"\.vgpr_count:\s*(\d+)")
    return vgprs, number(r"\.private_segment_fixed_size:\s*(\d+)"), number(r";\s*Occupancy:\s*(\d+)")


@cache
def _cuobjdump() -> str:
    from triton.backends.nvidia import compiler as nvidia

    return os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")


def _nvidia_resources(cubin: bytes, target: Target, warps: int, shared: int) -> tuple[int, int, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    regs = int(re.search(r"REG:(\d+)", text).group(1))
    local = int(re.search(r"LOCAL:(\d+)", text).group(1))
    # Blocks resident on one SM: registers are allocated 256 a warp, threads and shared memory as counted.
    threads = warps * target.warp_size
    by_regs = target.regs_per_sm // (warps * ((regs * target.warp_size + 255) // 256 * 256))
    by_shared = target.shared_per_sm // shared if shared else 32
    return regs, local, min(target.threads_per_sm // threads, by_regs, by_shared, 32)


def _short_error(e: Exception) -> str:
    text = str(e).strip().splitlines()
    last = next((line for line in reversed(text) if line.strip()), type(e).__name__)
    return f"{type(e).__name__}: {last.strip()[:300]}"


def _compile(target: Target, index: int, launch: Launch, config: triton.Config | None) -> Result:
    fn = launch.kernel.fn if config is not None else launch.kernel
    kwargs = {**launch.kwargs, **(config.all_kwargs() if config is not None else {})}
    result = Result(
        target.name, launch.op, kernel_name(fn), launch.shape, _config_text(config, kwargs),
        shared_limit=target.shared_limit,
    )  # fmt: skip
    drivers = triton.runtime.driver
    # Put back what was active, not reset_active(): resetting looks for a GPU driver, and there is none.
    previous = drivers._active
    drivers.set_active(_CompileOnlyDriver(target, index))
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kernel = fn.warmup(*launch.args, grid=(1,), **kwargs)
    except Exception as e:  # the compiler's own error is the finding
        result.error = _short_error(e)
        return result
    finally:
        drivers.set_active(previous)
        result.seconds = round(time.perf_counter() - start, 2)
    result.shared = int(kernel.metadata.shared)
    if target.backend == "hip":
        result.registers, result.scratch, result.occupancy = _amd_resources(kernel.asm["amdgcn"])
    else:
        warps = kwargs.get("num_warps", 4)
        result.registers, result.scratch, result.occupancy = _nvidia_resources(
            kernel.asm["cubin"], target, warps, result.shared
        )
    return result


def _spec_key(value) -> object:
    # What Triton specializes a launch on: tensors by dtype, integers by == 1 and divisibility by 16.
    if isinstance(value, torch.Tensor):
        return str(value.dtype)
    if isinstance(value, bool) or not isinstance(value, int):
        return value if isinstance(value, (str, bool)) else type(value).__name__
    return ("int", value == 1, value % 16 == 0)


@dataclass(frozen=True)
class _Job:
    """One compile: a launch and config, and every (op, shape) whose launch specializes the same way."""

    launch: Launch
    config: triton.Config | None
    candidate_only: bool
    uses: list[tuple[str, str]]


def _constexprs(kernel) -> set[str]:
    """The kernel's ``tl.constexpr`` parameters, from the Python function under the Autotuner, JITFunction or
    interpreter wrapper (the interpreter's wrapper keeps no parsed parameter list)."""
    fn = kernel
    while hasattr(fn, "fn"):
        fn = fn.fn
    return {name for name, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)}


def _jobs(target: Target, candidates: bool) -> list[_Job]:
    # Launches of different ops or shapes that Triton would specialize identically (the grouped and paired
    # attention at one head shape, PolyNorm widths alike modulo 16) are one binary: compiled once, reported
    # for each of them, which takes a third of the compiles off every target.
    jobs: dict[tuple, _Job] = {}
    found = launches(target)
    masked = {(x.op, x.shape, kernel_name(x.kernel)): x.kernel for x in found if x.shape.endswith(_MASKED)}
    for launch in found:
        constexprs = _constexprs(launch.kernel)  # specialized by value (D, CAUSAL, BLOCK_M, …)
        offered = getattr(launch.kernel, "configs", None)
        if offered is None:
            configs, extra = [None], []
        else:
            extra = (
                [c for c in getattr(launch.kernel, "candidates", ()) if c not in offered]
                if candidates
                else []
            )
            configs = _configs_to_compile(launch, list(offered), masked)
        for config, candidate_only in [(c, False) for c in configs] + [(c, True) for c in extra]:
            key = (
                kernel_name(launch.kernel), str(config) if config is not None else None, candidate_only,
                tuple(_spec_key(a) for a in launch.args),
                tuple(sorted((k, v if k in constexprs else _spec_key(v)) for k, v in launch.kwargs.items())),
            )  # fmt: skip
            job = jobs.setdefault(key, _Job(launch, config, candidate_only, []))
            if (launch.op, launch.shape) not in job.uses:
                job.uses.append((launch.op, launch.shape))
    return list(jobs.values())


def _configs_to_compile(launch: Launch, offered: list, masked: dict) -> list:
    """The configs of ``offered`` that this launch compiles: all of them, unless another launch answers for
    the rest (the rules and their measurements are at the top of this file)."""
    name = kernel_name(launch.kernel)
    if launch.shape.endswith(FIRST_CONFIG_ONLY) or (launch.op, name) == _SHARED_FORWARD:
        return offered[:1]
    twin = masked.get((launch.op, launch.shape + _MASKED, name))
    if (launch.op, name) in _MASKED_COVERS_CAUSAL and twin is not None:
        answered = {str(c) for c in twin.configs}
        return offered[:1] + [c for c in offered[1:] if str(c) not in answered]
    return offered


@cache
def _jobs_cached(target_name: str, candidates: bool) -> list[_Job]:
    return _jobs(TARGETS[target_name], candidates)


def _run_job(task: tuple[str, int, bool, int]) -> list[Result]:
    # In a worker process: the job list is rebuilt there (launches hold meta tensors and kernels, which do
    # not pickle), in the same order, and one job compiled; its result is reported for every use.
    target_name, index, candidates, job_index = task
    job = _jobs_cached(target_name, candidates)[job_index]
    result = _compile(TARGETS[target_name], index, job.launch, job.config)
    result.candidate_only = job.candidate_only
    return [replace(result, op=op, shape=shape, reused=n > 0) for n, (op, shape) in enumerate(job.uses)]


def check(
    targets: list[Target], *, candidates: bool = False, jobs: int | None = None, progress: bool = True
) -> Report:
    """Compile every kernel × config the ops would use on each target (and with `candidates`, every AMD
    candidate config too) in `jobs` processes; the report lists each compile's resources."""
    if _device.interpreting():
        raise ValueError(
            "kernels check compiles for GPUs: unset TRITON_INTERPRET (it runs kernels on the CPU)"
        )
    tasks = [
        (t.name, i, candidates, j)
        for i, t in enumerate(targets)
        for j in range(len(_jobs_cached(t.name, candidates)))
    ]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    bar = _progress(len(tasks), progress)
    report = Report()
    if workers == 1:
        for task in tasks:
            report.results.extend(_run_job(task))
            bar.update()
    else:
        # fork: the workers inherit the imported kernels (nothing here has touched a GPU).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            for results in pool.map(_run_job, tasks):
                report.results.extend(results)
                bar.update()
    bar.close()
    return report


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="compiling", unit="kernel", disable=not enabled, file=sys.stderr)
