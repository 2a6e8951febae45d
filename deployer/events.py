"""Events: every step of a release reports what it does through one sink (docs/architecture.md §1).

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


def line(event: Event) -> str:
    """An event as one line of a push's output (each a `remote:` line) and of the web view's release log."""
    prefix = "warning: " if event.kind == "warning" else ""
    text = f"  {event.message}" if event.kind == "output" else f"{prefix}{event.message}"
    return f"{event.step:>8}  {text}"


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


@dataclass(frozen=True)
class CheckResult:
    """One check in one analysis round."""

    name: str
    ok: bool
    message: str = ""
    value: float | None = None
    limit: str = ""  # what the value was held to, as people read it: `<= 0.01`, `HTTP 200`, `>= 2`

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "ok": self.ok, "message": self.message}
        if self.value is not None:
            data["value"] = self.value
        if self.limit:
            data["limit"] = self.limit
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckResult:
        value = data.get("value")
        return cls(
            str(data["name"]),
            bool(data["ok"]),
            str(data.get("message", "")),
            float(value) if value is not None else None,
            str(data.get("limit") or ""),
        )


@dataclass(frozen=True)
class Round:
    """One analysis round at one canary weight."""

    weight: int
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.ok)


@dataclass(frozen=True)
class Record:
    """One release of one environment, as stored (docs/architecture.md §5) and as the engine reports its outcome.

    A release changes its record by replacing it (`dataclasses.replace`); `to_json`/`from_json` are the stored
    form, which keeps the keys records have always had, so records written by earlier versions still read."""

    revision: int
    commit: str
    image: str
    status: Status = Status.PENDING
    phase: Phase = Phase.STARTING
    job: str = ""  # the pre-deploy Job that runs, in phase PRE_DEPLOY
    pusher: str = ""
    branch: str = ""  # the git branch whose push released it: that branch says what is live
    started: float = 0.0
    finished: float | None = None
    manifests: tuple[dict[str, Any], ...] = ()
    canary: bool = True  # whether this release routed a canary: replays split traffic only where it did
    gateways: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    provider: str = "istio"  # the router its routes were written with
    grace: float = 5.0
    rounds: tuple[Round, ...] = ()
    values_digest: str = ""
    reason: str = ""
    weights: tuple[int, int] | None = None  # stable, canary: the routes as last written
    restored: bool | None = None  # after a rollback: whether the version that serves rolled out
    rollback_of: int | None = None

    @property
    def where(self) -> str:
        """The phase as people read it: `pre-deploy migrate`, `canary`, ..."""
        return f"{self.phase} {self.job}" if self.job else str(self.phase)

    def to_json(self, *, manifests: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "revision": self.revision,
            "commit": self.commit,
            "image": self.image,
            "status": self.status.value,
            "phase": self.where,
            "pusher": self.pusher,
            "branch": self.branch,
            "started": self.started,
            "canary": self.canary,
            "routing": {"gateways": list(self.gateways), "hosts": list(self.hosts), "provider": self.provider},
            "grace": self.grace,
            "rounds": [
                {
                    "weight": r.weight,
                    "ok": r.ok,
                    "checks": [c.to_json() for c in r.checks],
                }
                for r in self.rounds
            ],
            "values_digest": self.values_digest,
        }
        if manifests:
            data["manifests"] = list(self.manifests)
        optional = {
            "finished": self.finished,
            "reason": self.reason or None,
            "weights": list(self.weights) if self.weights is not None else None,
            "restored": self.restored,
            "rollback_of": self.rollback_of,
        }
        data.update({k: v for k, v in optional.items() if v is not None})
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """A stored record; fields an earlier version did not write take their defaults."""
        phase, _, job = str(data.get("phase") or Phase.STARTING).partition(" ")
        routing = data.get("routing") or {}
        weights = data.get("weights")
        return cls(
            revision=int(data["revision"]),
            commit=str(data.get("commit", "")),
            image=str(data.get("image", "")),
            status=Status(data.get("status", Status.PENDING)),
            phase=Phase(phase) if phase in Phase._value2member_map_ else Phase.STARTING,
            job=job,
            pusher=str(data.get("pusher") or ""),
            branch=str(data.get("branch") or ""),
            started=float(data.get("started") or 0.0),
            finished=float(data["finished"]) if data.get("finished") is not None else None,
            manifests=tuple(data.get("manifests") or ()),
            canary=bool(data.get("canary", True)),
            gateways=tuple(routing.get("gateways") or ()),
            hosts=tuple(routing.get("hosts") or ()),
            provider=str(routing.get("provider") or "istio"),
            grace=float(data.get("grace", 5.0)),
            rounds=tuple(
                Round(
                    int(r["weight"]),
                    tuple(CheckResult.from_json(c) for c in r["checks"]),
                )
                for r in data.get("rounds") or ()
            ),
            values_digest=str(data.get("values_digest") or ""),
            reason=str(data.get("reason") or ""),
            weights=(int(weights[0]), int(weights[1])) if weights else None,
            restored=data.get("restored"),
            rollback_of=int(data["rollback_of"]) if data.get("rollback_of") is not None else None,
        )


def live_release(history: list[Record]) -> Record | None:
    """The release that serves now: the newest deployed one of a history (oldest first)."""
    return next((r for r in reversed(history) if r.status is Status.DEPLOYED), None)
