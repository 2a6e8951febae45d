"""Shared fixtures: example repos copied into a temp dir, so a test may break them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support import EXAMPLES


@pytest.fixture
def example(tmp_path: Path) -> Callable[[str], Path]:
    """Copy examples/NAME into a temp dir (so a test may break it) and return its path."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(EXAMPLES / name, target, symlinks=True)
        return target

    return copy
