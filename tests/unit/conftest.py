"""Unit tests start no process: a test that tries fails at once, naming the command (move it to tests/integration)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_subprocess(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(args: Any, *_: Any, **__: Any) -> None:
        raise AssertionError(f"a unit test started a process: {args!r}; it belongs in tests/integration")

    # asyncio's subprocesses go through subprocess.Popen too (base_subprocess), so one patch covers both
    monkeypatch.setattr(subprocess, "Popen", refuse)
    yield
