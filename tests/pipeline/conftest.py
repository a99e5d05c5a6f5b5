"""Fixtures of the pipeline tests."""

from __future__ import annotations

import pytest
from pipeline_helpers import make_slices


@pytest.fixture(scope="session")
def sample_slices(shared_data, tmp_path_factory) -> dict:
    return make_slices(shared_data, tmp_path_factory.mktemp("slices"))
