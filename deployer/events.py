"""Events: every step of a release reports what it does through one sink (DESIGN.md section 1).

The push pipeline turns them into `remote:` lines, the CLI prints them, logs and metrics consume them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
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


class Status(StrEnum):
    """A release record's status (stored as its value)."""

    PENDING = "pending"
    DEPLOYED = "deployed"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"


class Phase(StrEnum):
    """Where a release is; a pre-deploy Job's phase is `pre-deploy <job>`."""

    STARTING = "starting"
    PRE_DEPLOY = "pre-deploy"
    APPLYING = "applying"
    CANARY = "canary"
    PROMOTING = "promoting"
    ROLLBACK = "rollback"
    DONE = "done"
