"""Fixtures of the pipeline tests: slices of the real-text corpus and one reference build over them."""

from __future__ import annotations

import pytest
from pipeline_helpers import make_slices, slice_config


@pytest.fixture(scope="session")
def sample_slices(corpus, tmp_path_factory) -> dict:
    return make_slices(corpus, tmp_path_factory.mktemp("slices"))


@pytest.fixture(scope="session")
def reference_build(sample_slices, o200k_path, tmp_path_factory):
    """An uninterrupted local build of the slices: ``(output dir, manifest)``."""
    from motif_data.pipeline import BuildConfig, build

    out = tmp_path_factory.mktemp("reference") / "out"
    return out, build(BuildConfig.from_dict(slice_config(sample_slices, out, o200k_path)))
