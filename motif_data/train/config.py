"""Typed training configuration: model presets (tiny, small, motif-2.6b) and the run settings, loaded from TOML.

Everything is validated here, once; the model and the loop trust what they get.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from motif_data.kernels.linear_ce import BACKENDS
from motif_data.typed import Config, ConfigError, from_mapping, read_table, resolve_path, setting

if TYPE_CHECKING:
    from motif_data.trainer_hook.phases import Phase

__all__ = ["ModelConfig", "TrainConfig", "PhaseConfig", "MODEL_PRESETS"]


@dataclass(frozen=True)
class ModelConfig(Config):
    """A Motif-style decoder. ``n_heads`` counts query maps of ``head_dim`` as Motif's ``num_attention_heads``
    does. ``attention = "differential"`` (Motif-2.6B): pairs of maps form ``n_heads // 2`` heads, each with a
    signal and a noise map and a value of ``2 * head_dim``. ``"grouped_differential"`` (Motif-2-12.7B):
    ``noise_heads`` of the maps are noise maps, each shared by a group of ``r = signal_heads / noise_heads``
    signal heads (q holds each group's r signal maps, then its noise map). ``kv_heads`` (Motif's
    ``num_key_value_heads``) counts key heads of ``head_dim`` in (signal, noise) pairs; each pair has a value of
    ``2 * head_dim`` and serves a run of consecutive heads (GQA). None: one pair per noise map.

    ``attention = "standard"`` (``n_heads`` softmax heads of ``head_dim``) and ``mlp = "swiglu"`` give the
    conventional decoder with the same projection and embedding shapes (less the λ vectors, sub-layer norms and
    PolyNorm coefficients), the baseline of an architecture comparison."""

    section = "model"
    title = "model config"

    n_layers: int = setting(ge=1)
    d_model: int = setting(ge=1)
    n_heads: int = setting(ge=1)
    head_dim: int = setting(ge=1)
    ffn_dim: int = setting(ge=1)
    vocab_size: int | None = setting(None, ge=2)  # None: sized by the corpus manifest's tokenizer
    rope_base: float = setting(10_000.0, gt=1)
    max_seq_len: int = setting(4096, ge=1)  # the RoPE tables' length (Motif-2.6B pre-trains at 4,096)
    norm_eps: float = setting(1e-6, gt=0, lt=1)
    init_std: float = setting(0.02, gt=0)
    attention: str = setting("differential", choices=("differential", "grouped_differential", "standard"))
    noise_heads: int | None = setting(None, ge=1)  # grouped_differential: the noise maps among n_heads
    kv_heads: int | None = setting(
        None, ge=2
    )  # key heads in (signal, noise) pairs; None: one pair a noise map
    # polynorm: PolyNorm(gate) ⊙ up; swiglu: SiLU(gate) ⊙ up
    mlp: str = setting("polynorm", choices=("polynorm", "swiglu"))
    tie_embeddings: bool = True  # the output head is the embedding (Motif-2.6B); False: its own lm_head
    # Packed sequences: attend within the current document only (the loader's position_ids say where each
    # starts); False attends across documents, as Motif-2.6B pre-trained.
    doc_mask: bool = False
    # RoPE positions: "sequence" (0..S-1 in every row) or "document" (restarting at each document's first
    # token in the row; a document continued from an earlier window restarts at the row's start).
    rope_positions: str = setting("sequence", choices=("sequence", "document"))

    def rules(self):
        if self.attention == "differential":
            if self.n_heads % 2:
                yield "n_heads", f"must be even (pairs form differential heads), got {self.n_heads}"
            if self.noise_heads is not None:
                yield (
                    "noise_heads",
                    'is for attention = "grouped_differential": set that, or drop noise_heads',
                )
        elif self.attention == "grouped_differential":
            if self.noise_heads is None or self.noise_heads >= self.n_heads:
                yield (
                    "noise_heads",
                    (
                        f"grouped differential attention needs the number of noise maps (1 … n_heads − 1 = "
                        f"{self.n_heads - 1}), got {self.noise_heads}"
                    ),
                )
            elif (self.n_heads - self.noise_heads) % self.noise_heads:
                yield (
                    "noise_heads",
                    (
                        f"{self.n_heads - self.noise_heads} signal heads do not split into {self.noise_heads} equal "
                        f"groups: pick noise_heads so that n_heads = noise_heads × (r + 1)"
                    ),
                )
        else:
            for key in ("noise_heads", "kv_heads"):
                if getattr(self, key) is not None:
                    yield (
                        key,
                        f'applies to the differential attentions only: drop it for attention = "{self.attention}"',
                    )
        if self.attention != "standard" and self.kv_heads is not None and self._heads_nest:
            pairs = self.kv_heads // 2
            if self.kv_heads % 2 or self.noise_maps % pairs:
                yield (
                    "kv_heads",
                    (
                        f"{self.kv_heads} key heads must form (signal, noise) pairs whose count divides the "
                        f"{self.noise_maps} noise maps: use an even divisor of {2 * self.noise_maps}"
                    ),
                )

    @property
    def _heads_nest(self) -> bool:
        if self.attention == "differential":
            return self.n_heads % 2 == 0
        n = self.noise_heads
        return n is not None and 0 < n < self.n_heads and (self.n_heads - n) % n == 0

    @property
    def diff_heads(self) -> int:
        """Signal heads: the output heads of a differential attention layer."""
        return self.n_heads - self.noise_maps

    @property
    def noise_maps(self) -> int:
        return self.noise_heads if self.attention == "grouped_differential" else self.n_heads // 2

    @property
    def kv_pairs(self) -> int:
        return self.noise_maps if self.kv_heads is None else self.kv_heads // 2

    @property
    def value_dim(self) -> int:
        return 2 * self.head_dim


#: Model sizes. ``motif-2.6b`` is Motif-2.6B's shape (16 heads of 128 → 8 differential heads, value dim 256).
MODEL_PRESETS: dict[str, ModelConfig] = {
    # CPU tests: ~6.5M parameters with o200k, nearly all of them the (vocab × 32) embedding.
    "tiny": ModelConfig(n_layers=2, d_model=32, n_heads=4, head_dim=8, ffn_dim=128),
    # One GPU: ~270M parameters with o200k's 200,019 ids, 154M of them the tied embedding.
    "small": ModelConfig(n_layers=12, d_model=768, n_heads=6, head_dim=128, ffn_dim=3072),
    "motif-2.6b": ModelConfig(
        n_layers=32, d_model=2048, n_heads=16, head_dim=128, ffn_dim=8192, vocab_size=219_520
    ),
    # Motif-2-12.7B (docs/train.md says where each figure comes from): 40 query maps of 128 in 8 groups of
    # 4 signal + 1 noise (GDA 4:1), 16 key heads = 8 (signal, noise) pairs with values of 256, an untied head.
    "motif-2-12.7b": ModelConfig(
        n_layers=40,
        d_model=4096,
        n_heads=40,
        head_dim=128,
        ffn_dim=16_384,
        vocab_size=219_520,
        rope_base=1_000_000.0,
        attention="grouped_differential",
        noise_heads=8,
        kv_heads=16,
        tie_embeddings=False,
    ),  # fmt: skip
}


@dataclass(frozen=True)
class PhaseConfig(Config):
    """One ``[[train.phase]]``: the next ``tokens`` training tokens (all ranks) with these settings; one left
    out is [train]'s (``seq_len``, ``micro_batch``) or [model]'s (``rope_base``)."""

    section = "train.phase"
    title = "training phase"

    tokens: float = setting(gt=0)  # a whole number; 8e10 and 80_000_000_000 both do
    seq_len: int | None = setting(None, ge=1)
    micro_batch: int | None = setting(None, ge=1)
    rope_base: float | None = setting(None, gt=1)

    def rules(self):
        if self.tokens != int(self.tokens):
            yield "tokens", f"{self.tokens!r} is not a whole number of tokens"


@dataclass(frozen=True)
class TrainConfig(Config):
    """One training run. Steps count optimizer updates; a step sees
    ``micro_batch * grad_accum * world_size`` sequences of ``seq_len`` tokens. With ``phase`` tables the
    run goes through them in order, each phase with its own seq_len, micro-batch and RoPE base."""

    section = "train"
    title = "training config"

    model: ModelConfig
    preset: str = "custom"
    # data
    corpus: str | None = None  # manifest.json of a build, or a pipeline TOML to build; None: shared sample
    schedule: str = "motif-2.6b"  # a mixer preset name or the path of a schedule TOML
    fit_schedule: bool = False  # scale the schedule's stages to this run's tokens (a short run anneals too)
    seq_len: int = setting(256, ge=1)
    micro_batch: int = setting(8, ge=1)
    grad_accum: int = setting(1, ge=1)
    num_workers: int = setting(0, ge=0)
    seed: int = setting(0, ge=0)
    # optimizer and WSD schedule
    steps: int = setting(100, ge=1)
    lr: float = setting(3e-4, gt=0)
    warmup_steps: int = setting(10, ge=0)
    decay_fraction: float = setting(0.2, ge=0, le=1)  # final part of the run that decays to min_lr_ratio * lr
    min_lr_ratio: float = setting(0.25, gt=0, le=1)
    weight_decay: float = setting(0.1, ge=0)
    beta1: float = setting(0.9, ge=0, lt=1)
    beta2: float = setting(0.95, ge=0, lt=1)
    grad_clip: float = setting(1.0, gt=0)
    # muon: Muon for the hidden projection matrices, AdamW (lr, betas) for the embedding, norms and vectors
    optimizer: str = setting("adamw", choices=("adamw", "muon"))
    # None: lr. Muon's update is scaled to AdamW's RMS (torch's adjust_lr_fn="match_rms_adamw", Moonshot's
    # "Muon is Scalable for LLM Training"), so the lr and weight decay tuned for AdamW carry over.
    muon_lr: float | None = setting(None, gt=0)
    muon_momentum: float = setting(0.95, ge=0, lt=1)
    # QK-clip (MuonClip): after each step, shrink the q/k rows of every query map whose largest logit passed
    # τ. None: 100 (Kimi K2's τ) with muon, off with adamw; 0: off. A τ > 0 clips under AdamW too.
    muon_clip_tau: float | None = setting(None, ge=0)
    # long context (Motif-2.6B: the last 80B tokens at 16,384 and RoPE base 500k): phases by tokens
    phase: tuple[PhaseConfig, ...] = ()
    # fine-tuning: the model's weights at step 0 from a `motif-data train` checkpoint (a checkpoints/step-N.pt,
    # or a run directory: its newest), with a fresh optimizer; None: initialised from the seed
    init_from: str | None = None
    # an SFT build as corpus: "pack" puts consecutive samples into a row while they fit, "pad" one sample a
    # row; None: "pack". Only for an SFT corpus.
    sft_packing: str | None = setting(None, choices=("pack", "pad"))
    # an SFT build as corpus: how many times each source's samples an epoch draws (a table source = weight;
    # 0 leaves a source out, 2 draws each of its samples twice); unnamed sources 1. Only for an SFT corpus.
    sft_weights: dict[str, float] | None = None
    # averaging of checkpoints (SMA); 0 means off
    sma_every: int = setting(0, ge=0)
    sma_window: int = setting(4, ge=1)
    # execution
    device: str = setting("auto", choices=("auto", "cpu", "cuda"))
    dtype: str = setting("auto", choices=("auto", "bf16", "fp32"))  # auto: bf16 autocast on GPU, fp32 on CPU
    # auto: Triton on GPU / reference on CPU; reference: always the pure-PyTorch ops
    kernels: str = setting("auto", choices=("auto", "reference"))
    # linear cross-entropy: auto (the fastest on the device) or a backend of motif_data.kernels.linear_ce
    loss_backend: str = setting("auto", choices=("auto", *BACKENDS))
    compile: bool = False
    # several ranks under torchrun: "ddp" replicates the model; "fsdp" shards each decoder block and the rest
    # (FSDP2, motif_data/train/parallel.py) and checkpoints through torch.distributed.checkpoint
    parallel: str = setting("ddp", choices=("ddp", "fsdp"))
    # FSDP only: the shards of parameters, gradients and optimizer states live in host memory and AdamW steps
    # there (FSDP2's CPUOffloadPolicy); each unit's parameters are copied to the GPU when gathered
    fsdp_cpu_offload: bool = False
    # Recompute in the backward instead of keeping: "block", each decoder layer from its input; "selective",
    # each layer's MLP half (Motif._layer). `motif-data train-estimate` gives the memory of each.
    activation_checkpointing: str = setting("none", choices=("none", "block", "selective"))
    log_every: int = setting(1, ge=1)
    save_checkpoints: bool = True  # False for timing runs
    ckpt_every: int = setting(0, ge=0)  # 0: only at the end
    keep_checkpoints: int = setting(2, ge=1)
    peak_tflops: float | None = setting(None, gt=0)  # None: looked up from the device name for MFU

    def rules(self):
        if self.seq_len > self.model.max_seq_len:
            yield (
                "seq_len",
                (
                    f"{self.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}: raise max_seq_len in [model]"
                ),
            )
        if self.warmup_steps + round(self.decay_fraction * self.steps) > self.steps:
            yield (
                "warmup_steps",
                (
                    f"{self.warmup_steps} + decay ({self.decay_fraction} × {self.steps} steps) exceed "
                    f"train.steps ({self.steps}): shorten the warm-up or the decay"
                ),
            )
        if self.muon_lr is not None and self.optimizer != "muon":
            yield "muon_lr", 'applies to optimizer = "muon" only: set that, or drop muon_lr'
        if self.sft_weights is not None and any(w < 0 for w in self.sft_weights.values()):
            yield "sft_weights", f"weights are times a source's samples an epoch, ≥ 0: got {self.sft_weights}"
        if self.corpus is None or self.corpus.endswith(".toml"):  # a pre-training corpus, known from its name
            yield from self._corpus_problems(sft=False)
        yield from self._phase_problems()
        if self.parallel == "fsdp":
            yield from self._fsdp_problems()
        elif self.fsdp_cpu_offload:
            yield "fsdp_cpu_offload", 'applies to parallel = "fsdp" only: set that, or drop fsdp_cpu_offload'

    def _fsdp_problems(self):
        """What parallel = "fsdp" does not do yet: each needs whole tensors or whole layers where a rank
        holds a shard of each parameter's rows."""
        fix = 'or set parallel = "ddp"'
        if self.sma_every:
            yield (
                "sma_every",
                'checkpoint averaging under parallel = "fsdp" is not supported yet (the averager keeps whole '
                f"tensors; a rank holds shards): set sma_every = 0, {fix}",
            )
        if self.activation_checkpointing == "selective":
            yield (
                "activation_checkpointing",
                '"selective" under parallel = "fsdp" is not supported yet (it calls a layer\'s halves, not the '
                f'layer, so FSDP never gathers its parameters): use "block" or "none", {fix}',
            )
        if self.fsdp_cpu_offload and (self.optimizer == "muon" or self.qk_clip_tau):
            yield (
                "fsdp_cpu_offload",
                "with Muon or QK-clip is not supported yet (ShardedMuon exchanges the shards through the "
                "process group, NCCL on GPUs, and QK-clip rescales them with the logits on the device; offloaded "
                'shards live in host memory): set fsdp_cpu_offload = false, or use optimizer = "adamw" with '
                f"muon_clip_tau = 0, {fix}",
            )

    def check_corpus(self, sft: bool) -> None:
        """Raise a ConfigError for the settings that do not apply to the corpus, once its manifest says whether
        it is an SFT build (a manifest.json's kind is not in its name)."""
        problems = list(self._corpus_problems(sft))
        if problems:
            raise ConfigError(self.title, problems, self.section)

    def _corpus_problems(self, sft: bool):
        if not sft and self.sft_weights is not None:
            yield (
                "sft_weights",
                "applies to an SFT corpus only (train.corpus = the manifest.json of `motif-data sft build`): "
                "drop sft_weights, or name an SFT build",
            )
        if not sft and self.sft_packing is not None:
            yield (
                "sft_packing",
                "applies to an SFT corpus only (train.corpus = the manifest.json of `motif-data sft build`): "
                "drop sft_packing, or name an SFT build",
            )
        if sft and self.phase:
            yield (
                "phase",
                "phases stage the pre-training mixture (long context); an SFT corpus has no phases: drop the "
                "[[train.phase]] tables and set seq_len",
            )
        if sft and self.fit_schedule:
            yield (
                "fit_schedule",
                "fits the pre-training mixture's schedule; an SFT corpus has none: drop fit_schedule",
            )

    def _phase_problems(self):
        phases = self.phases
        if not phases:
            return
        longest = max(p.seq_len for p in phases)
        for i, p in enumerate(phases):
            key = f"phase[{i}]"
            if p.seq_len > self.model.max_seq_len:
                yield (
                    f"{key}.seq_len",
                    f"{p.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}: raise max_seq_len in "
                    "[model] to the longest phase's seq_len (the RoPE tables must cover it)",
                )
            if longest % p.seq_len:
                yield (
                    f"{key}.seq_len",
                    f"{p.seq_len} does not divide the longest phase's seq_len {longest}: each phase reads the "
                    f"stream's pages of {longest} tokens whole, so use a divisor of {longest}",
                )
                continue
            unit = math.lcm(p.micro_batch * self.grad_accum * p.seq_len, longest)
            if int(p.tokens) % unit:
                yield (
                    f"{key}.tokens",
                    f"{int(p.tokens):,} is not a whole number of steps (micro_batch {p.micro_batch} × grad_accum "
                    f"{self.grad_accum} × seq_len {p.seq_len} per rank) and pages ({longest} tokens): make it a "
                    f"multiple of {unit:,}, e.g. {max(1, round(p.tokens / unit)) * unit:,}",
                )
        held = sum(p.tokens // (p.micro_batch * self.grad_accum * p.seq_len) for p in phases)
        if held < self.steps:
            yield (
                "phase",
                f"the phases' tokens hold {held:,} steps on one rank (fewer on more), train.steps is "
                f"{self.steps:,}: add tokens to the last phase or lower train.steps",
            )

    @property
    def phases(self) -> tuple[Phase, ...]:
        """The ``phase`` tables with every setting resolved; () for a run without phases."""
        from motif_data.trainer_hook.phases import Phase

        return tuple(
            Phase(
                int(p.tokens),
                p.seq_len or self.seq_len,
                p.micro_batch or self.micro_batch,
                p.rope_base or self.model.rope_base,
            )
            for p in self.phase
        )

    @property
    def tokens_per_step_per_rank(self) -> int:
        return self.micro_batch * self.grad_accum * self.seq_len

    @property
    def muon_peak_lr(self) -> float:
        """The peak learning rate of Muon's matrices (the WSD schedule scales it as it scales ``lr``)."""
        return self.lr if self.muon_lr is None else self.muon_lr

    @property
    def qk_clip_tau(self) -> float:
        """QK-clip's threshold in effect; 0: off."""
        if self.muon_clip_tau is None:
            return 100.0 if self.optimizer == "muon" else 0.0
        return self.muon_clip_tau

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | os.PathLike = ".") -> TrainConfig:
        """``{"model": {"preset": ..., overrides}, "train": {...}}`` → TrainConfig, every problem of both
        sections in one error. Relative paths are taken from ``base_dir`` (the TOML's folder), the rule of
        build configs too: a config means the same files from wherever it is run."""
        problems = []
        unknown_sections = sorted(set(data) - {"model", "train"})
        if unknown_sections:
            problems.append(("config", f"unknown sections {unknown_sections}: use [model] and [train]"))
        model_section = dict(data.get("model", {}))
        preset = model_section.pop("preset", None)
        if preset is not None and preset not in MODEL_PRESETS:
            problems.append(("model.preset", f"{preset!r} is unknown: use one of {sorted(MODEL_PRESETS)}"))
            preset = None
        model = None
        try:
            if preset is None:
                model = from_mapping(ModelConfig, model_section, "model")
            else:
                base = dataclasses.asdict(MODEL_PRESETS[preset])
                model = from_mapping(ModelConfig, base | model_section, "model")
        except ConfigError as e:
            problems.extend(e.problems)
        train_section = dict(data.get("train", {}))
        for key in ("rope_switch_step", "rope_base_after"):
            if train_section.pop(key, None) is not None:
                problems.append(
                    (
                        f"train.{key}",
                        "was removed: a RoPE base change is a phase now, e.g. [[train.phase]] tokens = 8e10, "
                        "seq_len = 16384, rope_base = 500000 after a first phase (docs/train.md, Long context)",
                    )
                )
        for key in ("corpus", "schedule"):
            value = train_section.get(key)
            if isinstance(value, str) and (value.endswith(".toml") or value.endswith(".json")):
                train_section[key] = resolve_path(value, base_dir)
        if isinstance(train_section.get("init_from"), str):  # a file or a run directory, whatever its name
            train_section["init_from"] = resolve_path(train_section["init_from"], base_dir)
        stand_in = model or MODEL_PRESETS["tiny"]  # so the [train] problems are listed with the [model] ones
        try:
            cfg = from_mapping(cls, train_section, "train", model=stand_in, preset=preset or "custom")
        except ConfigError as e:
            problems.extend(e.problems)
        if problems:
            raise ConfigError(cls.title, problems)
        return cfg

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """A training config from a TOML (or YAML) file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no training config at {path}: pass a TOML such as configs/tiny.toml")
        return cls.from_dict(read_table(path), base_dir=path.parent.absolute())
