"""Events: every step of a release reports what it does through one sink (DESIGN.md section 1).

The push pipeline turns them into `remote:` lines, the CLI prints them, logs and metrics consume them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One thing that happened: `step` names the pipeline step, `kind` says what sort of line it is."""

    step: str
    message: str
    kind: str = "info"  # info | output (a line of a tool's output) | warning
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[Event], None]


def discard(event: Event) -> None:
    """A sink for callers that do not listen."""
