"""Shared fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrcore.data import data_dir as _data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real shared data folder; missing data fails under CI (``CI`` set) and skips elsewhere."""
    path = _data_dir()
    if not (path / "nih14_local_64.npz").is_file():
        message = f"real data not found in {path}; set CXR_DATA_DIR to the shared data folder"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
