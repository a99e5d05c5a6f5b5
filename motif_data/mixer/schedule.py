"""A domain mixture that changes linearly with tokens consumed: stages, exact integrals, TOML/dict I/O.

Everything here is a pure function of the token position, so a sampler built on it needs no state to resume.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motif_data import DOMAINS
from motif_data.atomic import atomic_write_text

__all__ = ["Stage", "MixtureSchedule", "SCHEDULE_PRESETS"]

_SUM_TOL = 1e-6

# Motif-2.6B report, Table 2: mixture at the start and at the end of the first pre-training stage.
_MOTIF_START = {
    "web": 0.68, "multilingual": 0.07, "korean": 0.01, "academic": 0.06,
    "specialized": 0.05, "code": 0.10, "math": 0.02, "reasoning": 0.01,
}  # fmt: skip
_MOTIF_END = {
    "web": 0.33, "multilingual": 0.00, "korean": 0.30, "academic": 0.03,
    "specialized": 0.01, "code": 0.18, "math": 0.10, "reasoning": 0.05,
}  # fmt: skip


@dataclass(frozen=True)
class Stage:
    """``tokens`` consumed while the weights move linearly from ``start`` to ``end`` (full 8-domain dicts)."""

    name: str
    tokens: float
    start: Mapping[str, float]
    end: Mapping[str, float]


def _problems_of_weights(where: str, weights: Mapping[str, float]) -> list[str]:
    problems = []
    unknown = sorted(set(weights) - set(DOMAINS))
    if unknown:
        problems.append(f"{where}: unknown domains {unknown} (known: {', '.join(DOMAINS)})")
    values = {d: w for d, w in weights.items() if d in DOMAINS}
    bad = {d: w for d, w in values.items() if not isinstance(w, (int, float)) or not math.isfinite(w)}
    if bad:
        problems.append(f"{where}: weights must be finite numbers, got {bad}")
        return problems
    negative = {d: w for d, w in values.items() if w < 0}
    if negative:
        problems.append(f"{where}: negative weights {negative}")
    total = sum(values.values())
    if abs(total - 1.0) > _SUM_TOL:
        problems.append(f"{where}: weights sum to {total:.9g}, they must sum to 1 (± {_SUM_TOL})")
    return problems


class MixtureSchedule:
    """Ordered stages; inside a stage every domain weight is linear in the tokens consumed in it.

    After the last stage the final weights hold, so a run longer than the schedule keeps a defined mixture.
    ``weights_at`` / ``expected_tokens`` are exact (the integral of a piecewise-linear function).
    """

    def __init__(self, stages: Sequence[Stage], name: str = "custom"):
        problems = []
        if not stages:
            problems.append("a schedule needs at least one stage")
        for i, st in enumerate(stages):
            where = f"stage {i} ({st.name!r})"
            if not isinstance(st.tokens, (int, float)) or not math.isfinite(st.tokens) or st.tokens <= 0:
                problems.append(f"{where}: token budget must be > 0, got {st.tokens!r}")
            for label, weights in (("start", st.start), ("end", st.end)):
                if not weights:
                    problems.append(f"{where}: {label} weights are empty")
                else:
                    problems += _problems_of_weights(f"{where} {label}", weights)
        if problems:
            raise ValueError("invalid mixture schedule:\n  " + "\n  ".join(problems))
        self.name = name
        self.stages = tuple(
            Stage(
                st.name,
                float(st.tokens),
                {d: float(st.start.get(d, 0.0)) for d in DOMAINS},
                {d: float(st.end.get(d, 0.0)) for d in DOMAINS},
            )
            for st in stages
        )
        n = len(self.stages)
        # Arrays indexed [stage, domain] in DOMAINS order; the vectorized sampler reads these.
        self.bounds = np.concatenate([[0.0], np.cumsum([st.tokens for st in self.stages])])
        self.w0 = np.array([[st.start[d] for d in DOMAINS] for st in self.stages]).reshape(n, len(DOMAINS))
        self.w1 = np.array([[st.end[d] for d in DOMAINS] for st in self.stages]).reshape(n, len(DOMAINS))
        lengths = np.diff(self.bounds)[:, None]
        self.cum = np.concatenate(
            [np.zeros((1, len(DOMAINS))), np.cumsum((self.w0 + self.w1) / 2 * lengths, axis=0)]
        )

    # -- construction ------------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **kwargs: float) -> MixtureSchedule:
        if name not in SCHEDULE_PRESETS:
            raise ValueError(
                f"unknown schedule preset {name!r}; known presets: {', '.join(SCHEDULE_PRESETS)}"
            )
        return SCHEDULE_PRESETS[name](**kwargs)

    @classmethod
    def motif_2_6b(cls, stage1_tokens: float = 2e12, anneal_tokens: float = 0.5e12) -> MixtureSchedule:
        """Table 2 of the Motif-2.6B report over stage 1, then annealing at the final weights."""
        return cls(
            [
                Stage("stage1", stage1_tokens, _MOTIF_START, _MOTIF_END),
                Stage("anneal", anneal_tokens, _MOTIF_END, _MOTIF_END),
            ],
            name="motif-2.6b",
        )

    @classmethod
    def constant(cls, weights: Mapping[str, float], tokens: float = 1e12) -> MixtureSchedule:
        return cls([Stage("constant", tokens, weights, weights)], name="constant")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "stage": [
                {
                    "name": st.name,
                    "tokens": st.tokens,
                    "start": {d: w for d, w in st.start.items() if w},
                    "end": {d: w for d, w in st.end.items() if w},
                }
                for st in self.stages
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> MixtureSchedule:
        stages_in = data.get("stage", data.get("stages"))
        if not isinstance(stages_in, list):
            raise ValueError("a schedule needs a list of stages under 'stage' ([[stage]] tables in TOML)")
        stages = []
        for i, st in enumerate(stages_in):
            missing = [k for k in ("tokens", "start") if k not in st]
            if missing:
                raise ValueError(
                    f"stage {i}: missing {missing} (each stage needs tokens, start, optional end)"
                )
            stages.append(
                Stage(str(st.get("name", f"stage{i}")), st["tokens"], st["start"], st.get("end", st["start"]))
            )
        return cls(stages, name=str(data.get("name", "custom")))

    def to_toml(self) -> str:
        lines = [f"name = {_toml_str(self.name)}", ""]
        for st in self.to_dict()["stage"]:
            lines += ["[[stage]]", f"name = {_toml_str(st['name'])}", f"tokens = {st['tokens']:.17g}"]
            for part in ("start", "end"):
                lines.append(f"[stage.{part}]")
                lines += [f"{d} = {w!r}" for d, w in st[part].items()]
            lines.append("")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_toml())

    @classmethod
    def from_toml(cls, text: str) -> MixtureSchedule:
        from motif_data.compat import tomllib

        return cls.from_dict(tomllib.loads(text))

    @classmethod
    def load(cls, path_or_preset: str | os.PathLike) -> MixtureSchedule:
        """A preset name (``motif-2.6b``) or the path of a TOML file."""
        if str(path_or_preset) in SCHEDULE_PRESETS:
            return cls.preset(str(path_or_preset))
        path = Path(path_or_preset)
        if not path.is_file():
            raise FileNotFoundError(
                f"schedule {path} not found: pass a TOML file or a preset ({', '.join(SCHEDULE_PRESETS)})"
            )
        try:
            return cls.from_toml(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MixtureSchedule) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"MixtureSchedule(name={self.name!r}, stages={len(self.stages)}, tokens={self.total_tokens:.4g})"
        )

    # -- evaluation ---------------------------------------------------------------------------------------

    @property
    def total_tokens(self) -> float:
        return float(self.bounds[-1])

    def weight_array(self, tokens: np.ndarray | float) -> np.ndarray:
        """Weights at each token position, shape ``(*tokens.shape, 8)`` in DOMAINS order."""
        t = np.asarray(tokens, dtype=np.float64)
        s = np.clip(np.searchsorted(self.bounds, t, side="right") - 1, 0, len(self.stages) - 1)
        frac = np.clip((t - self.bounds[s]) / (self.bounds[s + 1] - self.bounds[s]), 0.0, 1.0)[..., None]
        return self.w0[s] + (self.w1[s] - self.w0[s]) * frac

    def cumulative(self, tokens: np.ndarray | float) -> np.ndarray:
        """Exact integral of the weights from 0 to ``tokens``, shape ``(*tokens.shape, 8)``."""
        t = np.asarray(tokens, dtype=np.float64)
        last = len(self.stages) - 1
        s = np.clip(np.searchsorted(self.bounds, t, side="right") - 1, 0, last)
        length = self.bounds[s + 1] - self.bounds[s]
        x = np.minimum(t - self.bounds[s], length)[..., None]
        inside = self.cum[s] + self.w0[s] * x + (self.w1[s] - self.w0[s]) * x * x / (2 * length[..., None])
        beyond = np.maximum(t - self.bounds[-1], 0.0)[..., None] * self.w1[last]
        return inside + beyond

    def weights_at(self, tokens: float) -> dict[str, float]:
        return dict(zip(DOMAINS, self.weight_array(tokens).tolist(), strict=True))

    def expected_tokens(self, domain: str, t0: float, t1: float) -> float:
        """Tokens of ``domain`` the schedule asks for between token positions ``t0`` and ``t1``."""
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
        i = DOMAINS.index(domain)
        c = self.cumulative(np.array([t0, t1], dtype=np.float64))[:, i]
        return float(c[1] - c[0])

    def active_domains(self) -> tuple[str, ...]:
        """Domains with a positive weight somewhere in the schedule."""
        used = (self.w0 > 0).any(axis=0) | (self.w1 > 0).any(axis=0)
        return tuple(d for d, u in zip(DOMAINS, used, strict=True) if u)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


SCHEDULE_PRESETS = {"motif-2.6b": MixtureSchedule.motif_2_6b}
