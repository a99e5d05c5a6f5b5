"""A build: the datatrove stages from sources to per-domain shards, run by one executor kind, then the manifest.

Stages (each a datatrove executor run whose completion markers make a killed build resumable):

1. ``ingest``   read → route → filter → spill to ``.build/docs/{rank}.jsonl`` → exact-dedup signatures
2. ``exact``    datatrove's exact duplicate finder (one task)
3. ``minhash-signatures``  spill → drop exact duplicates → MinHash signatures
4. ``minhash-buckets`` / 5. ``minhash-clusters``  datatrove's LSH buckets and clustering
6. ``tokenize`` spill → drop duplicates → tokenize → shards
then the manifest: shards listed in rank order, so the output depends on ``executor.tasks`` but not on the
executor kind or the number of workers.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from motif_data import DOMAINS
from motif_data.atomic import OutputError, atomic_write_text
from motif_data.pipeline.config import BuildConfig, expand_paths
from motif_data.pipeline.layout import LOGS_DIR, SPILL_DIR, WORK_DIR
from motif_data.shards import Manifest

__all__ = ["build", "describe_plan", "stages", "make_executors", "run_stages", "slurm_job"]
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BuildStage:
    name: str
    pipeline: list
    tasks: int


def _spill_reader(work: Path):
    from motif_data.pipeline.readers import SpillReader

    return SpillReader(str(work / SPILL_DIR), compression=None, add_file_path=False)


def stages(config: BuildConfig, out: Path) -> list[BuildStage]:
    """The datatrove pipelines of a build writing to ``out``, in order."""
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups

    from motif_data.pipeline.accounting import Tally
    from motif_data.pipeline.dedup import exact_config, minhash_config, signature_step
    from motif_data.pipeline.filters import SourceFilters
    from motif_data.pipeline.readers import SourceReader
    from motif_data.pipeline.router import DomainRouter
    from motif_data.pipeline.tokenize import TokenizeStep
    from motif_data.pipeline.write import ShardWriteStep, SpillWriter

    work = out / WORK_DIR
    n = config.executor.tasks
    exact, near = config.dedup.exact, config.dedup.near
    ecfg, mcfg = exact_config(), minhash_config(config.dedup)
    ingest = [SourceReader(s, config.sources) for s in config.sources]
    ingest += [
        DomainRouter(config.sources),
        SourceFilters(config.sources),
        SpillWriter(str(work / SPILL_DIR)),
    ]
    if exact:
        ingest.append(ExactDedupSignature(str(work / "exact/sigs"), config=ecfg))
    result = [BuildStage("ingest", ingest, n)]
    drop_exact = [ExactDedupFilter(str(work / "exact/dups"), config=ecfg)] if exact else []
    if exact:
        result.append(
            BuildStage(
                "exact", [ExactFindDedups(str(work / "exact/sigs"), str(work / "exact/dups"), ecfg)], 1
            )
        )
    if near:
        sig = signature_step(config.dedup, str(work / "minhash/sigs"))
        result += [
            BuildStage("minhash-signatures", [_spill_reader(work), *drop_exact, sig], n),
            BuildStage(
                "minhash-buckets",
                [MinhashDedupBuckets(str(work / "minhash/sigs"), str(work / "minhash/buckets"), config=mcfg)],
                config.dedup.bands,
            ),
            BuildStage(
                "minhash-clusters",
                [
                    MinhashDedupCluster(
                        str(work / "minhash/buckets"), str(work / "minhash/remove"), config=mcfg
                    )
                ],
                1,
            ),
        ]
    drop_near = [MinhashDedupFilter(str(work / "minhash/remove"))] if near else []
    tokenize = [
        _spill_reader(work),
        Tally("dedup_in"),
        *drop_exact,
        Tally("after_exact"),
        *drop_near,
        Tally("after_near"),
        TokenizeStep(config.tokenizer, config.sources),
        ShardWriteStep(str(out), str(work), config.shard_tokens),
    ]
    result.append(BuildStage("tokenize", tokenize, n))
    return result


def _seconds(hms: str) -> int:
    """``[[HH:]MM:]SS`` (Slurm's time format) in seconds."""
    seconds = 0
    for part in hms.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def slurm_job(pipeline: list, config: BuildConfig, tasks: int, name: str, logging_dir: str, depends):
    """One Slurm job of the build; every job (the stages and the finalize job) gets the same sbatch
    settings, so a cluster that needs a qos, a venv or extra sbatch lines gets them for each."""
    from datatrove.executor.slurm import SlurmPipelineExecutor

    ex = config.executor
    return SlurmPipelineExecutor(
        pipeline,
        tasks=tasks,
        workers=ex.workers,
        time=ex.time,
        partition=ex.partition,
        cpus_per_task=ex.cpus_per_task,
        mem_per_cpu_gb=ex.mem_per_cpu_gb,
        qos=ex.qos,
        venv_path=ex.venv_path,
        sbatch_args=dict(ex.sbatch_args) or None,
        job_name=name,
        logging_dir=logging_dir,
        depends=depends,
    )


def slurm_jobs(config: BuildConfig, out: Path, plan: list[BuildStage]) -> list:
    """The stages' jobs and the finalize job that writes the manifest, each depending on the one before."""
    from motif_data.pipeline.write import FinalizeStep

    jobs = make_executors(config, out, plan)
    finalize = slurm_job([FinalizeStep(config)], config, 1, "motif-finalize",
                          str(out / WORK_DIR / "finalize"), jobs[-1])  # fmt: skip
    return jobs + [finalize]


def make_executors(config: BuildConfig, out: Path, plan: list[BuildStage]) -> list:
    ex = config.executor
    logs = out / WORK_DIR / LOGS_DIR
    made: list = []
    for i, stage in enumerate(plan):
        logging_dir = str(logs / f"{i + 1}-{stage.name}")
        workers = min(ex.workers, stage.tasks)
        if ex.kind == "local":
            from datatrove.executor import LocalPipelineExecutor

            made.append(
                LocalPipelineExecutor(
                    stage.pipeline, tasks=stage.tasks, workers=workers, logging_dir=logging_dir
                )
            )
        elif ex.kind == "ray":
            from datatrove.executor.ray import RayPipelineExecutor

            made.append(
                RayPipelineExecutor(
                    stage.pipeline,
                    tasks=stage.tasks,
                    workers=workers,
                    logging_dir=logging_dir,
                    cpus_per_task=ex.cpus_per_task,
                    mem_per_cpu_gb=ex.mem_per_cpu_gb,
                    # datatrove's Ray actor forks a pool for its ranks; now and then a forked worker hangs after
                    # its rank is done and marked complete. With a time limit the job is killed (see _run_stage).
                    time=_seconds(ex.time),
                )
            )
        else:
            made.append(
                slurm_job(
                    stage.pipeline,
                    config,
                    stage.tasks,
                    f"motif-{stage.name}",
                    logging_dir,
                    made[-1] if made else None,
                )  # fmt: skip
            )
    return made


def describe_plan(config: BuildConfig, out: Path | None = None) -> str:
    """What a build would do: sources → domains with file counts, then the stages."""
    out = Path(out or config.output)
    lines = [
        f"build {config.path or '(config)'} → {out}",
        f"tokenizer: {config.tokenizer or 'o200k_base'}",
        "",
    ]
    lines.append(f"{'source':<22}{'format':<10}{'files':>7}  domain")
    for s in config.sources:
        files = "hub" if s.format == "hf" else str(len(expand_paths(s)))
        if s.domain:
            target = s.domain
        else:
            rules = [f"{r.field or r.url and 'url' or 'script'}→{r.domain}" for r in s.route]
            target = "route: " + ", ".join(rules) + (f", else {s.default_domain}" if s.default_domain else "")
        lines.append(f"{s.name:<22}{s.format:<10}{files:>7}  {target}")
    lines.append("")
    ex = config.executor
    lines.append(f"executor: {ex.kind}, {ex.tasks} tasks, {ex.workers} workers")
    for i, st in enumerate(stages(config, out)):
        lines.append(f"  {i + 1}. {st.name:<20} {st.tasks} task(s)")
    return "\n".join(lines)


#: what a build writes at the top of its output folder; --force removes these and nothing else
_OURS = ("manifest.json", "stats.json")
_SHARD = re.compile(r"^\d{5}-\d{5}\.(bin|idx)$")


def _ours_to_remove(out: Path) -> list[Path]:
    """What ``--force`` may remove from ``out``: the files and folders a build of ours wrote there, recognised
    by its manifest or its work folder's plan. Anything else inside, even in a domain folder, is refused so
    that a mistyped ``--out`` never deletes a user's files."""
    if not out.is_dir() or not any(out.iterdir()):
        return []
    if not ((out / "manifest.json").is_file() or (out / WORK_DIR / "plan.json").is_file()):
        raise FileExistsError(
            f"{out} holds files no build wrote (no manifest.json or {WORK_DIR}/plan.json), so --force does not "
            "empty it: choose another --out"
        )
    remove = [out / name for name in (*_OURS, WORK_DIR) if (out / name).exists()]
    for domain in DOMAINS:
        folder = out / domain
        if not folder.exists():
            continue
        foreign = [p for p in folder.iterdir() if not (p.is_file() and _SHARD.match(p.name))]
        if foreign:
            raise FileExistsError(
                f"{folder} holds {foreign[0].name}, which no build wrote, so --force stops without removing "
                "anything: move it away or choose another --out"
            )
        remove.append(folder)
    return remove


def _prepare(config: BuildConfig, out: Path, force: bool) -> None:
    work = out / WORK_DIR
    plan_file = work / "plan.json"
    finished = (out / "manifest.json").exists()
    if finished and not force:
        raise FileExistsError(f"{out} holds a finished build (manifest.json): pass --force to rebuild it")
    if not finished and out.is_dir() and any(out.iterdir()) and not force:
        if not plan_file.is_file():
            raise FileExistsError(
                f"{out} is not empty and holds no build: choose another --out or pass --force"
            )
        if json.loads(plan_file.read_text())["fingerprint"] != config.fingerprint():
            raise FileExistsError(
                f"{out} holds an unfinished build of a different config: pass --force to discard it"
            )
    if force:
        for path in _ours_to_remove(out):  # all checked before the first is removed
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    plan = {"fingerprint": config.fingerprint(), "config": dataclasses.asdict(config)}
    atomic_write_text(plan_file, json.dumps(plan, indent=1, sort_keys=True))


def _run_stage(executor, kind: str, log: Log, attempts: int = 3) -> None:
    for attempt in range(1, attempts + 1):
        try:
            executor.run()
            return
        except KeyError as e:
            # datatrove 0.10's Ray executor kills a job that reaches its time limit, then looks the job up again
            # and raises KeyError; running the stage again runs only the tasks not marked complete.
            if kind != "ray" or attempt == attempts:
                raise
            log(f"a Ray job reached executor.time and was killed ({e!r}); running the incomplete tasks again")


def _main_guarded(path: str, line: int) -> bool:
    """Whether line `line` of the script at `path` lies inside an ``if __name__ == "__main__":`` block."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
            and node.lineno <= line <= (node.end_lineno or node.lineno)
        ):
            return True
    return False


def refuse_unguarded_main() -> None:
    """Fail fast where datatrove's worker pool would hang: its workers start by re-running the main script
    (forkserver), so a script that calls `build` at top level, outside ``if __name__ == "__main__":``, starts
    the build again in every worker, which fails in bootstrapping while the parent waits forever."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            spec = frame.f_globals.get("__spec__")
            if spec is not None and spec.name.split(".")[-1] == "__main__":
                return  # `python -m package`: multiprocessing does not re-run a package's __main__
            path = frame.f_globals.get("__file__")
            if path and Path(path).is_file() and not _main_guarded(path, frame.f_lineno):
                raise RuntimeError(
                    f"{path}, line {frame.f_lineno}: build() with several workers runs them in new processes "
                    'that re-run this script; put the call under `if __name__ == "__main__":` (or set '
                    "[executor] workers = 1)"
                )
            return
        frame = frame.f_back


def _check_tokenizer(config: BuildConfig) -> None:
    """Load the tokenizer as the tokenize stage will, before the first stage: a missing file or an altered
    o200k rank file fails now, not after ingest and dedup."""
    from motif_data.pipeline.tokenize import load_tokenizer

    try:
        load_tokenizer(config.tokenizer)
    except (OSError, ValueError) as e:
        raise ValueError(f"tokenizer.path: {e}") from e


def run_stages(config, out: Path, plan: list, log: Log) -> None:
    """Run a plan's stages in order on the local or Ray executors (the builder's and the SFT build's loop):
    each stage's progress logged, an output error named with its stage, incomplete tasks refused."""
    executors = make_executors(config, out, plan)
    if config.executor.kind == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(address=config.executor.ray_address, include_dashboard=False)
    for i, (stage, executor) in enumerate(zip(plan, executors, strict=True)):
        log(f"[{i + 1}/{len(plan)}] {stage.name}: {stage.tasks} task(s) …")
        start = time.perf_counter()
        try:
            _run_stage(executor, config.executor.kind, log)
        except OutputError as e:  # the step named the file; only the build knows the stage
            e.stage = stage.name
            raise
        missing = executor.get_incomplete_ranks(skip_completed=True)
        if missing:
            raise RuntimeError(
                f"stage {stage.name}: tasks {missing} did not complete; see {executor.logging_dir.path}"
            )
        log(f"[{i + 1}/{len(plan)}] {stage.name}: done in {time.perf_counter() - start:.1f} s")


def build(
    config: BuildConfig, out: str | Path | None = None, force: bool = False, log: Log = _stderr
) -> Manifest | None:
    """Run (or resume) a build; returns its manifest, or ``None`` for Slurm, whose jobs are only submitted."""
    if config.executor.kind == "local" and config.executor.workers > 1:
        refuse_unguarded_main()
    out = Path(out or config.output).absolute()
    config = config.with_output(out)
    _check_tokenizer(config)
    _prepare(config, out, force)
    plan = stages(config, out)
    if config.executor.kind == "slurm":
        executors = slurm_jobs(config, out, plan)
        executors[-1].run()  # submits it and, through its dependencies, every job before it
        log(f"submitted {len(executors)} slurm jobs; the manifest appears in {out} when they finish")
        return None
    run_stages(config, out, plan, log)
    from motif_data.pipeline.manifest import finalize

    return finalize(config, out, log)
