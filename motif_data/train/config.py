"""Typed training configuration: model presets (tiny, small, motif-2.6b) and the run settings, loaded from TOML.

Everything is validated here, once; the model and the loop trust what they get.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from motif_data.compat import tomllib
from motif_data.kernels.linear_ce import BACKENDS

__all__ = ["ModelConfig", "TrainConfig", "MODEL_PRESETS", "load_config", "config_from_dict"]


@dataclass(frozen=True)
class ModelConfig:
    """A Motif-style decoder. ``n_heads`` counts heads as Motif does: pairs of them form ``n_heads // 2``
    differential heads, each with two query/key maps of ``head_dim`` and one value of ``2 * head_dim``.

    ``attention = "standard"`` (``n_heads`` softmax heads of ``head_dim``) and ``mlp = "swiglu"`` give the
    conventional decoder with the same projection and embedding shapes (less the λ vectors, sub-layer norms and
    PolyNorm coefficients), the baseline of an architecture comparison."""

    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int | None = None  # None: sized by the corpus manifest's tokenizer
    rope_base: float = 10_000.0
    max_seq_len: int = 4096  # the RoPE tables' length (Motif-2.6B pre-trains at 4,096)
    norm_eps: float = 1e-6
    init_std: float = 0.02
    attention: str = "differential"  # differential | standard
    mlp: str = "polynorm"  # polynorm (PolyNorm(gate) ⊙ up) | swiglu (SiLU(gate) ⊙ up)

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_layers", "d_model", "n_heads", "head_dim", "ffn_dim", "max_seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                problems.append(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
        if isinstance(self.n_heads, int) and self.n_heads % 2 and self.attention == "differential":
            problems.append(f"model.n_heads must be even (pairs form differential heads), got {self.n_heads}")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size < 2):
            problems.append(f"model.vocab_size must be an integer >= 2 or absent, got {self.vocab_size!r}")
        if not self.rope_base > 1:
            problems.append(f"model.rope_base must be > 1, got {self.rope_base!r}")
        if not 0 < self.norm_eps < 1:
            problems.append(f"model.norm_eps must be in (0, 1), got {self.norm_eps!r}")
        if not self.init_std > 0:
            problems.append(f"model.init_std must be > 0, got {self.init_std!r}")
        if self.attention not in ("differential", "standard"):
            problems.append(f"model.attention must be 'differential' or 'standard', got {self.attention!r}")
        if self.mlp not in ("polynorm", "swiglu"):
            problems.append(f"model.mlp must be 'polynorm' or 'swiglu', got {self.mlp!r}")
        if problems:
            raise ValueError("invalid model config:\n  " + "\n  ".join(problems))

    @property
    def diff_heads(self) -> int:
        return self.n_heads // 2

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
}

_DTYPES = ("auto", "bf16", "fp32")
_DEVICES = ("auto", "cpu", "cuda")
_KERNELS = ("auto", "reference")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Steps count optimizer updates; a step sees
    ``micro_batch * grad_accum * world_size`` sequences of ``seq_len`` tokens."""

    model: ModelConfig
    preset: str = "custom"
    # data
    corpus: str | None = None  # manifest.json of a build, or a pipeline TOML to build; None: shared sample
    schedule: str = "motif-2.6b"  # a mixer preset name or the path of a schedule TOML
    fit_schedule: bool = False  # scale the schedule's stages to this run's tokens (a short run anneals too)
    seq_len: int = 256
    micro_batch: int = 8
    grad_accum: int = 1
    num_workers: int = 0
    seed: int = 0
    # optimizer and WSD schedule
    steps: int = 100
    lr: float = 3e-4
    warmup_steps: int = 10
    decay_fraction: float = 0.2  # final part of the run that decays to min_lr_ratio * lr
    min_lr_ratio: float = 0.25
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # RoPE base switch (Motif: 10k → 500k for long context); 0 means never
    rope_switch_step: int = 0
    rope_base_after: float = 500_000.0
    # averaging of checkpoints (SMA); 0 means off
    sma_every: int = 0
    sma_window: int = 4
    # execution
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    kernels: str = "auto"  # auto: Triton on GPU / reference on CPU; reference: always the pure-PyTorch ops
    # linear cross-entropy: auto (the fastest on the device) or a backend of motif_data.kernels.linear_ce
    loss_backend: str = "auto"
    compile: bool = False
    log_every: int = 1
    save_checkpoints: bool = True  # False for timing runs
    ckpt_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    peak_tflops: float | None = None  # None: looked up from the device name for MFU

    def __post_init__(self) -> None:
        problems = []
        positive = (
            "seq_len",
            "micro_batch",
            "grad_accum",
            "steps",
            "log_every",
            "keep_checkpoints",
            "sma_window",
        )
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                problems.append(f"train.{name} must be a positive integer, got {v!r}")
        non_negative = ("num_workers", "seed", "warmup_steps", "rope_switch_step", "sma_every", "ckpt_every")
        for name in non_negative:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                problems.append(f"train.{name} must be an integer >= 0, got {v!r}")
        if not self.lr > 0:
            problems.append(f"train.lr must be > 0, got {self.lr!r}")
        if not 0 <= self.decay_fraction <= 1:
            problems.append(f"train.decay_fraction must be in [0, 1], got {self.decay_fraction!r}")
        if not 0 < self.min_lr_ratio <= 1:
            problems.append(f"train.min_lr_ratio must be in (0, 1], got {self.min_lr_ratio!r}")
        if not self.weight_decay >= 0:
            problems.append(f"train.weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"train.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.grad_clip > 0:
            problems.append(f"train.grad_clip must be > 0, got {self.grad_clip!r}")
        if not self.rope_base_after > 1:
            problems.append(f"train.rope_base_after must be > 1, got {self.rope_base_after!r}")
        for name, allowed in (("device", _DEVICES), ("dtype", _DTYPES), ("kernels", _KERNELS)):
            if getattr(self, name) not in allowed:
                problems.append(f"train.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.loss_backend != "auto" and self.loss_backend not in BACKENDS:
            problems.append(
                f"train.loss_backend must be 'auto' or one of {list(BACKENDS)}, got {self.loss_backend!r}"
            )
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            problems.append(f"train.peak_tflops must be > 0 or absent, got {self.peak_tflops!r}")
        if isinstance(self.seq_len, int) and self.seq_len > self.model.max_seq_len:
            problems.append(
                f"train.seq_len {self.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}: "
                f"raise max_seq_len in [model]"
            )
        if not problems and self.warmup_steps + round(self.decay_fraction * self.steps) > self.steps:
            problems.append(
                f"train.warmup_steps ({self.warmup_steps}) + decay ({self.decay_fraction} × {self.steps} steps) "
                f"exceed train.steps ({self.steps}): shorten the warm-up or the decay"
            )
        if problems:
            raise ValueError("invalid training config:\n  " + "\n  ".join(problems))

    @property
    def tokens_per_step_per_rank(self) -> int:
        return self.micro_batch * self.grad_accum * self.seq_len

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "preset"}
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def config_from_dict(data: dict, base_dir: str | os.PathLike = ".") -> TrainConfig:
    """``{"model": {"preset": ..., overrides}, "train": {...}}`` → TrainConfig; relative paths are taken
    from ``base_dir`` (the TOML's folder), the rule of build configs too: a config means the same files
    from wherever it is run."""
    problems = []
    unknown_sections = sorted(set(data) - {"model", "train"})
    if unknown_sections:
        problems.append(f"unknown sections {unknown_sections}: use [model] and [train]")
    model_section = dict(data.get("model", {}))
    preset = model_section.pop("preset", None)
    if preset is None:
        missing = sorted({"n_layers", "d_model", "n_heads", "head_dim", "ffn_dim"} - set(model_section))
        if missing:
            problems.append(f"[model] needs preset = one of {sorted(MODEL_PRESETS)} or all of {missing}")
    elif preset not in MODEL_PRESETS:
        problems.append(f"model.preset {preset!r} is unknown: use one of {sorted(MODEL_PRESETS)}")
    bad_model = sorted(set(model_section) - _MODEL_FIELDS)
    if bad_model:
        problems.append(f"unknown [model] keys {bad_model}; known: preset, {sorted(_MODEL_FIELDS)}")
    train_section = dict(data.get("train", {}))
    bad_train = sorted(set(train_section) - _TRAIN_FIELDS)
    if bad_train:
        problems.append(f"unknown [train] keys {bad_train}; known: {sorted(_TRAIN_FIELDS)}")
    if problems:
        raise ValueError("invalid training config:\n  " + "\n  ".join(problems))
    model = (
        dataclasses.replace(MODEL_PRESETS[preset], **model_section)
        if preset
        else ModelConfig(**model_section)
    )
    for key in ("corpus", "schedule"):
        value = train_section.get(key)
        if isinstance(value, str) and (value.endswith(".toml") or value.endswith(".json")):
            train_section[key] = _resolve(value, Path(base_dir))
    return TrainConfig(model=model, preset=preset or "custom", **train_section)


def _resolve(value: str, base_dir: Path) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else base_dir / path)


def load_config(path: str | os.PathLike) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training config at {path}: pass a TOML such as configs/tiny.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from e
    return config_from_dict(data, base_dir=path.parent)
