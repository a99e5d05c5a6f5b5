"""The Korean-extended o200k tokenizer: continued BPE training, vocabulary layout, export, evaluation."""

from motif_data.tokenizer.base import fingerprint, load_base

__all__ = ["load_base", "fingerprint"]
