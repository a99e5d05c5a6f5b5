"""The training loop: setup, then one visible ``for`` loop of `train_step`, ``checkpointer.save`` when due,
and the metrics logger.

AdamW, or Muon + AdamW with QK-clip (``optim.py``), on a WSD learning rate; gradient accumulation and
clipping, bf16 autocast on GPU, DDP or FSDP2 under ``torchrun`` (``parallel.py``), per-domain loss from the
per-token losses, ``metrics.jsonl`` per step, atomic checkpoints that resume exactly. An SFT build as corpus fine-tunes: the loss
is the mean over the step's labelled tokens, and ``init_from`` starts from another run's weights.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from motif_data import DOMAINS
from motif_data.atomic import atomic_open, atomic_write_text
from motif_data.kernels.linear_ce import default_backend
from motif_data.sft.dataset import IGNORE_INDEX
from motif_data.shards import Manifest, SftManifest, load_manifest
from motif_data.train.checkpoint import (
    Checkpointer,
    CheckpointPartError,
    RNGState,
    finished_summary,
    initial_weights,
    run_spec,
)
from motif_data.train.config import TrainConfig
from motif_data.train.logger import MetricsLogger, keep_metrics_until
from motif_data.train.model import Motif, count_parameters, flops_per_token
from motif_data.train.optim import Optimizers, QKClip, build_optimizer
from motif_data.train.parallel import (
    ShardedTraining,
    clip_grad_norm,
    distribute,
    gradient_sync,
    join_alone,
    load_whole_weights,
)
from motif_data.trainer_hook.dataset import position_ids
from motif_data.trainer_hook.metrics import DomainCounters
from motif_data.trainer_hook.phases import Phase
from motif_data.typed import ConfigError

__all__ = ["train", "train_step", "refuse_existing_run", "domain_loss_sums", "peak_flops"]

# The settings that make a run's token stream and optimizer trajectory what they are: with the model and the
# corpus, its identity. Not among them: steps (a resume may raise it; fit_schedule's tie to it is checked by
# the loader state), execution and logging.
_RUN_FIELDS = (
    "schedule", "fit_schedule", "seq_len", "micro_batch", "grad_accum", "seed", "lr", "warmup_steps",
    "decay_fraction", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip", "sma_every", "sma_window",
)  # fmt: skip


def _run_settings(cfg: TrainConfig, sft: bool, world_size: int) -> dict:
    """The `_RUN_FIELDS` and the optimizer's settings in effect (Muon's only where Muon steps), so that an
    AdamW run's checkpoint is not resumed as a Muon run nor one with another QK-clip threshold; on an SFT
    corpus (``sft``) its packing too. Not ``init_from``: a resume takes the run's own checkpoint, whatever
    the run started from. Under FSDP the sequences a step takes over all ``world_size`` ranks stand for the
    micro-batch and accumulation per rank, so that a run resumes at another world size with its global batch."""
    settings = {name: getattr(cfg, name) for name in _RUN_FIELDS}
    if cfg.phases:
        settings["phase"] = [dataclasses.asdict(p) for p in cfg.phases]
    else:  # the RoPE switch's settings of before phases: a checkpoint of then keeps its run identity
        settings |= {"rope_switch_step": 0, "rope_base_after": 500_000.0}
    settings |= {"optimizer": cfg.optimizer, "muon_clip_tau": cfg.qk_clip_tau}
    if cfg.optimizer == "muon":
        settings |= {"muon_lr": cfg.muon_peak_lr, "muon_momentum": cfg.muon_momentum}
    if sft:
        settings["sft_packing"] = cfg.sft_packing or "pack"
        settings["sft_weights"] = cfg.sft_weights
    if cfg.parallel == "fsdp":
        per_step = cfg.grad_accum * world_size
        del settings["micro_batch"], settings["grad_accum"]
        settings |= {"parallel": "fsdp", "sequences_per_step": cfg.micro_batch * per_step}
        for phase in settings.get("phase", ()):
            phase["sequences_per_step"] = phase.pop("micro_batch") * per_step
    return settings


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


def _launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _setup_device(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); under torchrun one process per GPU joins the process group, and an FSDP
    run on one process joins one of its own."""
    world_size = _launched_world_size()
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
    elif cfg.parallel == "fsdp" and not dist.is_initialized():
        join_alone(device)
    return rank, world_size, device


def refuse_existing_run(out: Path) -> None:
    """A finished or interrupted run is never overwritten: its metrics and checkpoints are the user's."""
    found = [name for name in ("metrics.jsonl", "checkpoints") if (out / name).exists()]
    if found:
        raise FileExistsError(
            f"{out} holds a run already ({', '.join(found)}): pass --resume to continue it, or choose another --out"
        )


class _GlobalCounters:
    """The per-domain counters as a checkpoint holds them: summed over ranks when saved (every rank takes
    part), carried on by rank 0 alone when loaded (the other ranks count from zero again)."""

    def __init__(self, counters, world_size: int, is_main: bool) -> None:
        self.counters, self.world_size, self.is_main = counters, world_size, is_main

    def total(self):
        total = type(self.counters)()
        total.load_state_dict(self.counters.state_dict())
        if self.world_size > 1:
            total.all_reduce()
        return total

    def state_dict(self) -> dict:
        return self.total().state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.is_main:
            self.counters.load_state_dict(state)


class _SftCounters(DomainCounters):
    """The counters of an SFT stream: one bucket, ``"sft"``, as its samples belong to none of DOMAINS. Tokens
    are the rows' (what the model read, as for pre-training); the labelled-token loss is metrics.jsonl's."""

    BUCKETS = ("sft",)

    def summary(self) -> dict[str, dict[str, float]]:
        if not self.sequences[0]:
            return {}
        (bucket,) = self.BUCKETS
        return {bucket: {"sequences": float(self.sequences[0]), "tokens": float(self.tokens[0])}}


@dataclasses.dataclass(frozen=True)
class _Span:
    """A phase as the loop steps through it: from optimizer step ``first_step``, training token
    ``first_token``, on."""

    phase: Phase
    first_step: int
    first_token: int
    tokens_per_step: int


def _spans(cfg: TrainConfig, world_size: int) -> list[_Span]:
    """The run's phases in steps (one phase, the whole run, without [[train.phase]]). What depends on the
    world size is checked here, the rest in TrainConfig."""
    phases = cfg.phases or (Phase(cfg.steps * cfg.tokens_per_step_per_rank * world_size, cfg.seq_len,
                                  cfg.micro_batch, cfg.model.rope_base),)  # fmt: skip
    spans, step, token = [], 0, 0
    for i, p in enumerate(phases):
        per_step = p.micro_batch * cfg.grad_accum * world_size * p.seq_len
        if p.tokens % per_step:
            raise ValueError(
                f"train.phase[{i}].tokens: {p.tokens:,} is not a whole number of steps of {per_step:,} tokens "
                f"on {world_size} ranks: make it a multiple of {per_step:,}, or train on another number of ranks"
            )
        spans.append(_Span(p, step, token, per_step))
        step, token = step + p.tokens // per_step, token + p.tokens
    if step < cfg.steps:
        raise ValueError(
            f"train.phase: the phases' tokens hold {step:,} steps on {world_size} ranks, train.steps is "
            f"{cfg.steps:,}: add tokens to the last phase or lower train.steps"
        )
    return spans


def _span_at(spans: list[_Span], step: int) -> _Span:
    """The phase of optimizer step ``step`` (counted from 0)."""
    return next(s for s in reversed(spans) if s.first_step <= step)


def _tokens_at(spans: list[_Span], steps: int) -> int:
    """Training tokens of all ranks in the first ``steps`` steps."""
    span = _span_at(spans, max(steps - 1, 0))
    return span.first_token + (steps - span.first_step) * span.tokens_per_step


@dataclasses.dataclass
class _Run:
    """What setup builds; the loop reads it."""

    cfg: TrainConfig
    model_cfg: object
    rank: int
    world_size: int
    device: torch.device
    raw_model: Motif  # under FSDP, sharded in place
    model: torch.nn.Module  # compiled and/or DDP-wrapped
    optimizer: Optimizers
    qk_clip: QKClip | None
    loader: object
    counters: _GlobalCounters
    averager: object | None
    use_bf16: bool
    loss_backend: str
    tokens_per_step: int  # the first phase's
    spans: list[_Span]
    sft: bool  # the corpus is an SFT build

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _model_config(cfg: TrainConfig, manifest: Manifest | SftManifest):
    # The embedding is sized by the corpus's tokenizer unless the config fixes a (larger) vocabulary.
    if cfg.model.vocab_size is None:
        return dataclasses.replace(cfg.model, vocab_size=manifest.tokenizer.vocab_size)
    if cfg.model.vocab_size < manifest.tokenizer.vocab_size:
        raise ValueError(
            f"model.vocab_size {cfg.model.vocab_size} is smaller than the corpus tokenizer's "
            f"{manifest.tokenizer.vocab_size}: drop vocab_size from [model] to size it from the manifest"
        )
    return cfg.model


def _stream(
    cfg: TrainConfig, manifest: Manifest, rank: int, world_size: int, run_tokens: int, pin_memory: bool
):
    """The mixture loader of this rank (the schedule fitted to the run's tokens where asked); with phases,
    the loader of every phase in turn."""
    from motif_data.mixer import MixtureSchedule, Stage
    from motif_data.trainer_hook import MixtureDataLoader, MixtureDataset, PhasedLoader

    schedule = MixtureSchedule.load(cfg.schedule)
    if cfg.fit_schedule:
        scale = run_tokens / schedule.total_tokens
        stages = [Stage(st.name, st.tokens * scale, st.start, st.end) for st in schedule.stages]
        schedule = MixtureSchedule(stages, name=f"{schedule.name} (fitted to {run_tokens:,} tokens)")
    if cfg.phases:
        return PhasedLoader(manifest, schedule, cfg.phases, cfg.seed, rank, world_size,
                            num_workers=cfg.num_workers, pin_memory=pin_memory)  # fmt: skip
    dataset = MixtureDataset(
        manifest, schedule, cfg.seq_len, cfg.seed, rank, world_size, batch_size=cfg.micro_batch
    )
    return MixtureDataLoader(dataset, num_workers=cfg.num_workers, pin_memory=pin_memory)


def _sft_weights(cfg: TrainConfig, manifest: SftManifest) -> dict[str, float] | None:
    """``train.sft_weights``, checked against the build's sources (a config error naming the key, not the
    dataset's)."""
    if cfg.sft_weights is None:
        return None
    sources = manifest.sources
    unknown = sorted(set(cfg.sft_weights) - set(sources))
    if unknown:
        raise ConfigError(cfg.title, [("sft_weights", f"names sources the build does not hold: {unknown}; "
                                       f"it holds {sources}")], cfg.section)  # fmt: skip
    return cfg.sft_weights


def _sft_stream(cfg: TrainConfig, manifest: SftManifest, rank: int, world_size: int, pin_memory: bool):
    """The SFT loader of this rank, without end (the run's steps decide how many epochs it sees)."""
    from motif_data.sft.dataset import SftDataLoader, SftDataset

    # Rows of seq_len + 1 tokens, as the mixture loader's: the model reads seq_len, each predicting the next.
    dataset = SftDataset(manifest, cfg.seq_len + 1, cfg.seed, rank, world_size,
                         packing=cfg.sft_packing != "pad", batch_size=cfg.micro_batch,
                         weights=_sft_weights(cfg, manifest))  # fmt: skip
    return SftDataLoader(dataset, num_workers=cfg.num_workers, pin_memory=pin_memory)


def _setup(cfg: TrainConfig, manifest: Manifest | SftManifest) -> _Run:
    from motif_data.trainer_hook import CheckpointAverager

    sft = isinstance(manifest, SftManifest)
    rank, world_size, device = _setup_device(cfg)
    model_cfg = _model_config(cfg, manifest)
    loss_backend = default_backend(device) if cfg.loss_backend == "auto" else cfg.loss_backend
    torch.manual_seed(cfg.seed)
    with torch.device(device):  # initialised where it trains: no CPU init of the embedding, no host copy
        raw_model = Motif(
            model_cfg,
            reference_kernels=cfg.kernels == "reference",
            loss_backend=loss_backend,
            activation_checkpointing=cfg.activation_checkpointing,
        )
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    model = distribute(raw_model, cfg.parallel, world_size, device, bf16=use_bf16, compile=cfg.compile,
                       cpu_offload=cfg.fsdp_cpu_offload)  # fmt: skip
    # Offloaded, the parameters AdamW steps are in host memory: no fused CUDA kernel for them.
    optimizer = build_optimizer(raw_model, cfg, fused=device.type == "cuda" and not cfg.fsdp_cpu_offload)
    qk_clip = QKClip(raw_model, cfg.qk_clip_tau, world_size) if cfg.qk_clip_tau else None
    spans = _spans(cfg, world_size)
    tokens_per_step = spans[0].tokens_per_step
    if sft:
        loader = _sft_stream(cfg, manifest, rank, world_size, device.type == "cuda")
    else:
        loader = _stream(cfg, manifest, rank, world_size, _tokens_at(spans, cfg.steps), device.type == "cuda")
    averager = CheckpointAverager(cfg.sma_window, cfg.sma_every * tokens_per_step) if cfg.sma_every else None
    return _Run(
        cfg, model_cfg, rank, world_size, device, raw_model, model, optimizer, qk_clip, loader,
        _GlobalCounters(_SftCounters() if sft else DomainCounters(), world_size, rank == 0), averager,
        use_bf16=use_bf16, loss_backend=loss_backend, tokens_per_step=tokens_per_step, spans=spans, sft=sft,
    )  # fmt: skip


def _mixture_micro_batches(run: _Run, batches):
    """The step's micro-batches of the mixture loader, one at a time as the step reaches them: (inputs,
    targets, positions or None, each row's domain) on the device (the domains on the host)."""
    device = run.device
    for _ in range(run.cfg.grad_accum):
        batch = next(batches)
        # The loader's int32 tokens travel as they are and are widened here, on the device.
        ids = batch["input_ids"].to(device, non_blocking=True).long()
        # Each token's position in its document, for document masking and per-document RoPE: built on the
        # device from the batch's document table (no host sync), only when the model reads them.
        positions = None
        if run.raw_model.needs_positions:
            on_device = {"input_ids": ids, "documents": batch["documents"].to(device, non_blocking=True)}
            positions = position_ids(on_device)[:, :-1]
        yield ids[:, :-1], ids[:, 1:], positions, batch["domain"]


def _sft_micro_batches(run: _Run, batches) -> tuple[list[tuple], torch.Tensor]:
    """The step's micro-batches of the SFT stream, all fetched first (the loss divides by the labelled tokens
    of the whole step): (inputs, targets with −100 where not labelled, positions or None, each row's bucket:
    0, the one of `_SftCounters`), and this rank's labelled targets (a device scalar)."""
    device, micro_batches = run.device, []
    for _ in range(run.cfg.grad_accum):
        batch = next(batches)
        ids = batch["input_ids"].to(device, non_blocking=True)
        # labels[t] is token t where labelled: the target of the prediction made at t − 1.
        targets = batch["labels"].to(device, non_blocking=True)[:, 1:]
        positions = None
        if run.raw_model.needs_positions:
            positions = batch["position_ids"].to(device, non_blocking=True)[:, :-1]
        micro_batches.append((ids[:, :-1], targets, positions, torch.zeros(len(ids), dtype=torch.int64)))
    labelled = torch.stack([(t != IGNORE_INDEX).sum() for _, t, _, _ in micro_batches]).sum()
    return micro_batches, labelled


def train_step(run: _Run, batches, step: int) -> dict[str, torch.Tensor | float]:
    """One optimizer step (``step`` done before it) over ``grad_accum`` micro-batches; returns what the logger
    reads back: the step's lr (AdamW's) and RoPE base, per-domain loss sums and counts (over all ranks), the
    gradient norm, each sequence's domain and summed loss, and with QK-clip the largest logit and the number of
    maps clipped. On an SFT stream the loss is the mean over the step's labelled targets, and the sums and
    counts are of one bucket, "sft"."""
    from motif_data.trainer_hook import wsd_lr

    cfg, model, device = run.cfg, run.model, run.device
    done = step + 1  # the LR of an update is the schedule's value at its end: warm-up starts above 0
    schedule = functools.partial(wsd_lr, done, warmup=cfg.warmup_steps, total=cfg.steps,
                                 decay=round(cfg.decay_fraction * cfg.steps),
                                 final_ratio=cfg.min_lr_ratio)  # fmt: skip
    lr = schedule(peak=cfg.lr)
    for group in run.optimizer.param_groups:  # Muon's and AdamW's: one shape, each group's own peak
        group["lr"] = schedule(peak=group["peak_lr"])
    phase = _span_at(run.spans, step).phase
    base = phase.rope_base
    run.raw_model.set_rope_base(base)

    if run.sft:
        micro_batches, labelled = _sft_micro_batches(run, batches)
        step_labelled = labelled.clone()
        if run.world_size > 1:
            dist.all_reduce(step_labelled)  # on the device: no host sync
        # DDP averages the ranks' gradients, so each rank's sum is scaled by world_size / the step's labelled
        # targets of all ranks; a step without any (clamped to 1) has loss 0 and no gradient.
        scale = run.world_size / step_labelled.clamp(min=1).float()
    else:
        micro_batches, scale = _mixture_micro_batches(run, batches), None
    sequence_losses, sequence_domains = [], []
    for micro, (inputs, targets, positions, domains) in enumerate(micro_batches):
        # Gradients are reduced over the ranks only on the last micro-batch of the step.
        with gradient_sync(model, run.raw_model, sync=micro == cfg.grad_accum - 1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
                token_losses = model(inputs, targets, positions)  # (B, S) fp32, 0 where a target is −100
            # sum × 1/n, not mean(): the gradient reaching the loss head is then one value expanded over the
            # tokens (stride 0), which the dense backend takes as uniform without a host sync.
            n = scale if scale is not None else 1.0 / (token_losses.numel() * cfg.grad_accum)
            (token_losses.sum() * n).backward()
        sequence_losses.append(token_losses.detach().sum(dim=1))
        sequence_domains.append(domains)
    grad_norm = clip_grad_norm(run.raw_model, cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    clip = {}
    if run.qk_clip is not None:
        clip["max_logit"], clip["qk_clipped"] = run.qk_clip()
    if run.averager is not None:
        run.averager.update(run.raw_model, _tokens_at(run.spans, done))

    seq_losses = torch.cat(sequence_losses).double()
    seq_domains = torch.cat(sequence_domains)  # from the loader, on the host
    if run.sft:
        # One bucket, "sft": the step's summed loss over its labelled targets, so that its mean is the loss.
        sums, counts = seq_losses.sum().reshape(1), labelled.double().reshape(1)
    else:
        # non_blocking: a blocking host-to-device copy synchronises the stream, so the host would wait for the
        # whole step before queuing the next one and leave the GPU idle meanwhile.
        sums, counts = domain_loss_sums(seq_losses, seq_domains.to(device, non_blocking=True), phase.seq_len)
    if run.world_size > 1:
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return {"lr": lr, "rope_base": base, "sums": sums, "counts": counts, "grad_norm": grad_norm,
            "domains": seq_domains, "losses": seq_losses, **clip}  # fmt: skip


def train(
    cfg: TrainConfig, out: str | os.PathLike, manifest_path: str | os.PathLike, *, resume: bool = False
) -> dict:
    """Train for ``cfg.steps`` optimizer steps; writes ``metrics.jsonl``, ``checkpoints/step-N.pt`` (under
    FSDP with the model and optimizer shards in ``checkpoints/step-N/``), ``summary.json`` (and
    ``model-sma.pt`` with averaging) under ``out`` and returns the summary."""
    joined_here = not dist.is_initialized()
    try:
        return _train(cfg, Path(out), manifest_path, resume, joined_here)
    except BaseException:
        # An FSDP run on one process formed a group of its own (`join_alone`): a failed one (a refused resume,
        # say) leaves it, so that the caller may train again. Under torchrun a failure ends the process.
        if joined_here and dist.is_initialized() and _launched_world_size() == 1:
            dist.destroy_process_group()
        raise


def _train(
    cfg: TrainConfig, out: Path, manifest_path: str | os.PathLike, resume: bool, joined_here: bool
) -> dict:
    if not resume:
        refuse_existing_run(out)
    elif (finished := finished_summary(out, cfg.steps)) is not None:
        return finished
    corpus = load_manifest(manifest_path)
    sft = isinstance(corpus, SftManifest)
    cfg.check_corpus(sft)
    spec = run_spec(
        dataclasses.asdict(_model_config(cfg, corpus)),
        _run_settings(cfg, sft, _launched_world_size()),
        manifest_path,
    )
    # On --resume the run's own checkpoint wins over init_from: it holds this run's weights, optimizer and data
    # position; init_from only gives step 0 its weights. Checked before setup, which may take long.
    initial = initial_weights(cfg.init_from, spec["model"]) if cfg.init_from and not resume else None
    run = _setup(cfg, corpus)

    checkpointer = Checkpointer(out / "checkpoints", spec, every=cfg.ckpt_every or None,
                                keep=cfg.keep_checkpoints, write=run.is_main)  # fmt: skip
    if cfg.parallel == "fsdp":  # every rank saves and loads its shards; rank 0 the rest, as under DDP
        checkpointer.register_sharded(training=ShardedTraining(run.raw_model, run.optimizer))
    else:
        checkpointer.register(model=run.raw_model, optimizer=run.optimizer)
    checkpointer.register(loader=run.loader, counters=run.counters, averager=run.averager, rng=RNGState())
    start = 0
    if resume:
        try:
            start = checkpointer.load_latest()
        except CheckpointPartError as e:
            if not (cfg.fit_schedule and e.part == "loader"):
                raise
            raise ValueError(
                f"{e} (fit_schedule ties the mixture to train.steps: keep the run's steps)"
            ) from e
        if run.is_main:
            keep_metrics_until(out / "metrics.jsonl", start)
    elif initial is not None:
        path, state = initial
        load_whole_weights(run.raw_model, state["model"])  # every rank reads the same file: the ranks agree
        if run.is_main:
            what = f"step {state['step']}" if "step" in state else "averaged"
            print(f"train: model weights of {path} ({what}), a fresh optimizer", flush=True)
        del initial, state  # the file's mapping, optimizer states included
    if run.is_main:
        out.mkdir(parents=True, exist_ok=True)
        print(
            f"train: {count_parameters(run.raw_model) / 1e6:.1f}M parameters, {run.world_size} × "
            f"{run.device.type}, {run.tokens_per_step:,} tokens/step, steps {start} → {cfg.steps}",
            flush=True,
        )
    flops_token = flops_per_token(run.model_cfg, cfg.seq_len)
    logger = MetricsLogger(
        out / "metrics.jsonl" if run.is_main else None, run.device, run.counters.counters,
        seq_len=cfg.seq_len, tokens_per_step=run.tokens_per_step, flops_per_token=flops_token,
        peak_flops=peak_flops(run.device, cfg.peak_tflops), world_size=run.world_size,
        log_every=cfg.log_every, last_step=cfg.steps,
    )  # fmt: skip

    batches = iter(run.loader)
    for step in range(start, cfg.steps):
        done = step + 1
        span = _span_at(run.spans, step)
        if step in (start, span.first_step):  # a run in phases: each has its tokens a step and FLOPs a token
            flops_token = flops_per_token(run.model_cfg, span.phase.seq_len)
            logger.begin_phase(span.first_step, span.first_token, seq_len=span.phase.seq_len,
                               tokens_per_step=span.tokens_per_step, flops_per_token=flops_token)  # fmt: skip
        logger.queue(done, **train_step(run, batches, step))
        if cfg.save_checkpoints and checkpointer.due(done, last=done == cfg.steps):
            logger.flush()  # a checkpoint's counters and metrics include its own step
            checkpointer.save(done)
    logger.close()
    return _finish(run, out, logger, flops_token, joined_here)


def _finish(run: _Run, out: Path, logger: MetricsLogger, flops_token: float, joined_here: bool) -> dict:
    """The averaged model and summary.json; the process group left as it was found."""
    cfg, device = run.cfg, run.device
    if run.averager is not None and run.averager.snapshots and run.is_main:
        with atomic_open(out / "model-sma.pt", "wb") as f:
            torch.save(
                {"model_config": dataclasses.asdict(run.model_cfg), "model": run.averager.averaged()}, f
            )
    summary = {
        "steps": cfg.steps,
        "parameters": count_parameters(run.raw_model),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": run.world_size,
        "kernels": cfg.kernels,
        "loss_backend": "reference" if cfg.kernels == "reference" else run.loss_backend,
        "compile": cfg.compile,
        **logger.steady(),
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "flops_per_token": flops_token,
        "domain_tokens": {d: v["tokens"] for d, v in run.counters.total().summary().items()},
    }
    if run.is_main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if joined_here and dist.is_initialized():
        # DDP goes first: its Reducer holds the process group, and a gloo group freed last through it is
        # destroyed with the GIL held while its worker thread may need the GIL to release a tensor, a hang
        # at exit seen in 2 of 5 two-rank CPU runs. Freed by destroy_process_group, it releases the GIL.
        run.model = None
        gc.collect()
        dist.destroy_process_group()
    return summary
