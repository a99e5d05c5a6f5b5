"""Standard-library modules that the oldest supported Python (3.10) lacks, imported from their backports."""

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]
