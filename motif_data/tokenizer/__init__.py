"""The Korean-extended o200k tokenizer: continued BPE training, vocabulary layout, export, evaluation."""

from motif_data.tokenizer.base import base_spec, fingerprint, load_base
from motif_data.tokenizer.export import load, save
from motif_data.tokenizer.train import TokenizerConfig, train_tokenizer

__all__ = ["load_base", "base_spec", "fingerprint", "load", "save", "TokenizerConfig", "train_tokenizer"]
