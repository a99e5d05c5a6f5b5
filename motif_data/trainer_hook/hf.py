"""Optional adapter for Hugging Face ``transformers.Trainer``: keeps a MixtureDataset's position across
checkpoints and logs per-domain epochs. Import it only where transformers is installed.

    trainer = Trainer(model, args, train_dataset=dataset, data_collator=collate_causal_lm,
                      callbacks=[MixtureTrainerCallback(dataset)])

with ``TrainingArguments(ignore_data_skip=True, per_device_train_batch_size=dataset.batch_size, ...)``:
the dataset resumes by arithmetic, so the Trainer must not replay batches to skip them. Resuming from a
checkpoint outside ``output_dir`` (``trainer.train(resume_from_checkpoint=PATH)``): give the callback the
same path, ``MixtureTrainerCallback(dataset, checkpoint=PATH)``, so the saved data state is checked there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from motif_data.atomic import atomic_write_text
from motif_data.trainer_hook.dataset import MixtureDataset
from motif_data.trainer_hook.state import StreamState

__all__ = ["MixtureTrainerCallback", "collate_causal_lm", "STATE_FILE"]

STATE_FILE = "mixture_state.json"


def collate_causal_lm(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`Trainer`'s data collator for MixtureDataset items: ``input_ids`` and ``labels``, the same seq_len + 1
    tokens (a transformers causal LM shifts its labels itself, so it learns the seq_len next tokens that the
    item holds). Without labels the model returns no loss and `Trainer` stops."""
    ids = torch.stack([item["input_ids"] for item in items])
    return {"input_ids": ids, "labels": ids.clone()}


class MixtureTrainerCallback(TrainerCallback):
    """On save, writes the dataset state into the checkpoint folder; on (re)start, positions the dataset
    at ``global_step × sequences per optimizer step``, checked against the saved state if there is one."""

    def __init__(self, dataset: MixtureDataset, checkpoint: str | os.PathLike | None = None):
        self.dataset = dataset
        self.checkpoint = checkpoint  # where a resume outside output_dir loads from

    def _sequences_per_step(self, args) -> int:
        return args.gradient_accumulation_steps * self.dataset.global_batch

    def _check_args(self, args) -> None:
        problems = []
        if not args.ignore_data_skip:
            problems.append("set TrainingArguments(ignore_data_skip=True): the dataset resumes by itself")
        if args.per_device_train_batch_size != self.dataset.batch_size:
            problems.append(
                f"per_device_train_batch_size is {args.per_device_train_batch_size} but the MixtureDataset "
                f"has batch_size {self.dataset.batch_size}: make them equal"
            )
        if problems:
            raise ValueError("MixtureTrainerCallback: " + "; ".join(problems))

    def on_train_begin(self, args, state, control, **kwargs):
        self._check_args(args)
        position = state.global_step * self._sequences_per_step(args)
        if state.global_step:
            # A resumed run: the saved data state is checked wherever the checkpoint came from, or the resume
            # is refused; a stream that silently starts from another seed or schedule is not an option.
            places = [self.checkpoint, getattr(args, "resume_from_checkpoint", None),
                      Path(args.output_dir) / f"checkpoint-{state.global_step}"]  # fmt: skip
            found = [
                Path(p) / STATE_FILE for p in places if p is not None and (Path(p) / STATE_FILE).is_file()
            ]
            if not found:
                searched = ", ".join(str(p) for p in places if p is not None)
                raise ValueError(
                    f"MixtureTrainerCallback: resuming at step {state.global_step} but no {STATE_FILE} in "
                    f"{searched}: pass MixtureTrainerCallback(dataset, checkpoint=PATH) with the PATH given to "
                    "trainer.train(resume_from_checkpoint=PATH)"
                )
            saved = found[0]
            try:
                stored = self.dataset.resumable(StreamState.from_dict(json.loads(saved.read_text("utf-8"))))
            except ValueError as e:  # another schedule, seed or manifest
                raise ValueError(f"{saved}: {e}") from e
            if stored.position != position:
                raise ValueError(
                    f"{saved} says the data stream stood at sequence {stored.position}, but step "
                    f"{state.global_step} × {self._sequences_per_step(args)} sequences per step gives {position}: "
                    "keep the global batch (batch size × accumulation × world size) of the saved run"
                )
        self.dataset.load_state_dict(self.dataset.stream_state().at(position).to_dict())

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            stream = self.dataset.stream_state().at(state.global_step * self._sequences_per_step(args))
            atomic_write_text(folder / STATE_FILE, json.dumps(stream.to_dict(), indent=1) + "\n")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            position = state.global_step * self._sequences_per_step(args)
            for domain, epochs in self.dataset.epochs(position).items():
                logs[f"data/epochs_{domain}"] = round(epochs, 6)
