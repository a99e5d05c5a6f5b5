"""Checkpoints of a run, as torchtitan keeps them: a `Checkpointer` owns a registry of the run's stateful
parts (each with ``state_dict`` / ``load_state_dict``), the step, and the ``step-N.pt`` files of one
directory.

Every file names its run (`run_identity`: the model, the settings that shape the token stream and the
optimizer, the corpus manifest's sha256), so a run never resumes from, nor prunes, another run's files.
Files are written atomically (a killed save leaves the previous checkpoint whole).

An FSDP run's model and optimizer are shards: every rank writes its own into the directory ``step-N/`` beside
``step-N.pt`` through ``torch.distributed.checkpoint``, which loads them at any world size; ``step-N.pt``,
the rest of the state, is written after them, so that it marks a complete checkpoint as it does alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from motif_data.atomic import atomic_open
from motif_data.shards import file_sha256

__all__ = [
    "Checkpointer",
    "CheckpointPartError",
    "RNGState",
    "latest_checkpoint",
    "finished_summary",
    "initial_weights",
    "run_spec",
    "run_identity",
]

_CHECKPOINT = re.compile(r"^step-(\d{7})\.pt$")


class CheckpointPartError(ValueError):
    """A registered part refused its saved state; ``part`` names it (the message names the file too)."""

    def __init__(self, message: str, part: str) -> None:
        super().__init__(message)
        self.part = part


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RNGState:
    """Python's, NumPy's, torch's and (where there is one) the GPUs' generators."""

    def state_dict(self) -> dict:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def run_spec(model: dict, settings: dict, manifest_path: str | os.PathLike) -> dict:
    """What names a run: its model config, the training settings that make its token stream and optimizer
    trajectory what they are, and its corpus's manifest (by sha256)."""
    return json.loads(json.dumps({"model": model, "train": settings, "corpus": file_sha256(manifest_path)},
                                 default=str))  # fmt: skip


def run_identity(spec: dict) -> str:
    """16 hex digits naming the run of `run_spec`."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _differences(ours: dict, theirs: dict | None) -> str:
    if theirs is None:
        return ""
    keys = [f"train.{k}" for k in sorted(set(ours["train"]) | set(theirs.get("train", {})))
            if ours["train"].get(k) != theirs.get("train", {}).get(k)]  # fmt: skip
    keys = [k for k in ("model", "corpus") if ours[k] != theirs.get(k)] + keys
    return f"; they differ in {', '.join(keys)}" if keys else ""


def _step_of(path: Path) -> int:
    return int(_CHECKPOINT.match(path.name).group(1))


def _checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step-*.pt") if _CHECKPOINT.match(p.name))


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest step; every file there is complete because each was written atomically."""
    found = _checkpoints(Path(directory))
    return found[-1] if found else None


def initial_weights(source: str | os.PathLike, model: dict) -> tuple[Path, dict]:
    """(the file, its state) of what ``train.init_from`` names: a ``step-N.pt`` (of an FSDP run too: its
    model is joined from the shards in ``step-N/``), a run directory (its newest), or a run's ``model-sma.pt``.
    Refused unless the model config the file records is ``model`` (this run's `run_spec` ``"model"``), naming
    every key that differs. The state's ``"model"`` is whole; ``"step"`` is absent for an averaged model."""
    path = Path(source)
    if path.is_dir():
        newest = latest_checkpoint(path / "checkpoints")
        if newest is None:
            raise FileNotFoundError(
                f"train.init_from: no checkpoints/step-N.pt under {path}: name a run directory with "
                "checkpoints, a step-N.pt file or a model-sma.pt"
            )
        path = newest
    elif not path.is_file():
        raise FileNotFoundError(
            f"train.init_from: no checkpoint at {path}: name a step-N.pt file, a model-sma.pt or a run directory"
        )
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    theirs = None
    if isinstance(state, dict) and ("model" in state or "sharded" in state):
        if "run_spec" in state:
            theirs = state["run_spec"].get("model")
        elif "model_config" in state:  # model-sma.pt: the config as the run spec records it (JSON types)
            theirs = json.loads(json.dumps(state["model_config"], default=str))
    if theirs is None:
        raise ValueError(
            f"train.init_from: {path} is not a checkpoint of `motif-data train` (no run spec or model): name a "
            "checkpoints/step-N.pt file or a model-sma.pt that a run wrote"
        )
    differing = sorted(key for key in model.keys() | theirs.keys() if model.get(key) != theirs.get(key))
    if differing:
        listed = ", ".join(
            f"{key} (checkpoint {theirs.get(key)!r}, [model] {model.get(key)!r})" for key in differing
        )
        raise ValueError(
            f"train.init_from: the model of {path} differs from this run's [model] in {listed}: set those keys in "
            "[model] to the checkpoint's values, or start from a checkpoint of this model"
        )
    if "sharded" in state:
        state = {**state, "model": _whole_model(_shards_of(path))}
    return path, state


def _whole_model(shards: Path) -> dict[str, torch.Tensor]:
    """The model of an FSDP checkpoint's ``step-N/``, whole: DCP reads every shard of each parameter into a
    plain tensor of the shape and dtype its metadata records (the optimizer's states are not read)."""
    prefix = "training.model."  # `ShardedTraining`'s model, registered as the part "training"
    metadata = dcp.FileSystemReader(shards).read_metadata().state_dict_metadata
    model = {
        key.removeprefix(prefix): torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    # Before the run's setup no process group exists under torchrun: each rank reads the whole model alone.
    dcp.load({"training": {"model": model}}, checkpoint_id=shards, no_dist=not dist.is_initialized())
    return model


def _shards_of(path: Path) -> Path:
    """The directory of the shards that the ``step-N.pt`` of an FSDP run completes."""
    return path.with_suffix("")


def finished_summary(out: Path, steps: int) -> dict | None:
    """The summary of a run in ``out`` that already reached ``steps`` (its last checkpoint and summary.json
    are there), saying so on stdout; else None. Resuming such a run has nothing to do and must not rewrite
    anything."""
    ckpt = latest_checkpoint(out / "checkpoints")
    summary = out / "summary.json"
    if ckpt is None or _step_of(ckpt) < steps or not summary.is_file():
        return None
    print(f"train: {out} finished at step {steps} already: nothing to do (raise train.steps to go on)")
    return json.loads(summary.read_text())


class Checkpointer:
    """Saves and restores every registered part under ``directory`` as ``step-NNNNNNN.pt``.

    ``every``: save when the step is a multiple of it (None: only the last step); ``keep``: this run's
    newest N files stay (None: all), never counting out the one just written; ``write``: whether this
    process writes (rank 0) — every rank still takes each part's state, since some take it collectively.
    Parts registered with `register_sharded` are saved and loaded by every rank together (DCP).
    """

    def __init__(
        self, directory: Path, spec: dict, *, every: int | None, keep: int | None, write: bool = True
    ) -> None:
        self.directory, self.spec, self.run = directory, spec, run_identity(spec)
        self.every, self.keep, self.write = every, keep, write
        self.parts: dict[str, Stateful] = {}
        self.sharded: dict[str, Stateful] = {}

    def register(self, **parts: Stateful | None) -> None:
        """Add parts by name; a None part (an optional feature that is off) is left out."""
        self.parts.update({name: part for name, part in parts.items() if part is not None})

    def register_sharded(self, **parts: Stateful) -> None:
        """Add parts whose states are each rank's shards (DTensors): they go to ``step-N/``."""
        self.sharded.update(parts)

    def due(self, step: int, last: bool) -> bool:
        return last or bool(self.every and step % self.every == 0)

    def save(self, step: int) -> Path:
        path = self.directory / f"step-{step:07d}.pt"
        state = {"run": self.run, "run_spec": self.spec, "step": step}
        if self.sharded:
            self._save_shards(_shards_of(path))
            state["sharded"] = sorted(self.sharded)
        state |= {name: p.state_dict() for name, p in self.parts.items()}
        if self.write:
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as f:
                torch.save(state, f)
            self._prune(keep_also=path)
        return path

    def _save_shards(self, directory: Path) -> None:
        if self.write and directory.exists():  # what a save killed before its step-N.pt left behind
            shutil.rmtree(directory)
        dist.barrier()  # no rank writes its shards before the leftovers are gone
        # dcp.save returns on every rank once the last shard and the metadata are written.
        dcp.save({name: p.state_dict() for name, p in self.sharded.items()}, checkpoint_id=directory)

    def _prune(self, keep_also: Path) -> None:
        if self.keep is None:
            return
        mine = [p for p in _checkpoints(self.directory) if p != keep_also and self._run_of(p) == self.run]
        for old in mine[: max(0, len(mine) - (self.keep - 1))]:
            old.unlink()  # first: a step-N/ without its step-N.pt is never taken for a checkpoint
            if _shards_of(old).is_dir():
                shutil.rmtree(_shards_of(old))

    @staticmethod
    def _run_of(path: Path) -> str | None:
        # mmap: the tensors are mapped, not read, so asking a multi-GB file for its run costs milliseconds.
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("run")

    def load_latest(self) -> int:
        """Restore every part from the newest checkpoint; returns its step. Refuses another run's file."""
        path = latest_checkpoint(self.directory)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.directory}; start without --resume")
        state = torch.load(path, map_location="cpu", weights_only=False)
        theirs = state.get("run", "none (written before run identities)")
        if theirs != self.run:
            raise ValueError(
                f"{path} is another run's checkpoint (run {theirs}; this config and corpus are run "
                f"{self.run}){_differences(self.spec, state.get('run_spec'))}: resume with that run's "
                "config and corpus, or train into another --out"
            )
        missing = [name for name in self.parts if name not in state]
        if missing:
            raise ValueError(f"{path} lacks {missing}: it was not written by this version's loop")
        parts = list(self.parts.items())
        if self.sharded:
            # Each part's own state is the template that DCP fills with the slices of this rank's shards.
            shards = {name: p.state_dict() for name, p in self.sharded.items()}
            dcp.load(shards, checkpoint_id=_shards_of(path))
            state |= shards
            parts += self.sharded.items()
        for name, part in parts:
            try:
                part.load_state_dict(state[name])
            except (ValueError, RuntimeError) as e:  # RuntimeError: torch's own (missing keys, shapes)
                raise CheckpointPartError(f"{path}, {name}: {e}", name) from e
        return int(state["step"])
