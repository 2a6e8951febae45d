"""Decisions of the canary: the next weight, the verdict from check results, and kubectl's rollout status.

Pure: no clock, no I/O. Like Flagger, a failed round does not advance the weight; `threshold` failed rounds
roll back; passing every step promotes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from deployer.config.model import CanaryPolicy
from deployer.events import Round


class Decision(enum.Enum):
    CONTINUE = "continue"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    next_weight: int | None = None


def next_weight(policy: CanaryPolicy, rounds: list[Round]) -> int | None:
    """The weight of the next round: the step after the last passed one; None when every step has passed."""
    passed = sum(1 for r in rounds if r.ok)
    return policy.steps[passed] if passed < len(policy.steps) else None


def verdict(rounds: list[Round], policy: CanaryPolicy) -> Verdict:
    """Roll back at `threshold` failed rounds, promote when every step passed, else continue."""
    failed = [r for r in rounds if not r.ok]
    if len(failed) >= policy.threshold:
        last = failed[-1]
        why = "; ".join(f"{c.name}: {c.message}" if c.message else c.name for c in last.failures)
        return Verdict(
            Decision.ROLLBACK, f"{len(failed)} failed rounds (threshold {policy.threshold}); at {last.weight}% {why}"
        )
    weight = next_weight(policy, rounds)
    if weight is None:
        return Verdict(Decision.PROMOTE, f"all {len(policy.steps)} steps passed")
    return Verdict(Decision.CONTINUE, f"next round at {weight}%", next_weight=weight)


class Rollout(enum.Enum):
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class RolloutStatus:
    state: Rollout
    message: str


def rollout_status(deployment: dict[str, Any]) -> RolloutStatus:
    """kubectl's rules for `rollout status` of a Deployment, on the object as read from the cluster."""
    meta, spec, status = deployment["metadata"], deployment.get("spec") or {}, deployment.get("status") or {}
    name = meta["name"]
    if meta.get("generation", 0) > status.get("observedGeneration", 0):
        return RolloutStatus(Rollout.WAITING, "Waiting for deployment spec update to be observed...")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return RolloutStatus(Rollout.FAILED, f'deployment "{name}" exceeded its progress deadline')
    wanted, updated = spec.get("replicas", 1), status.get("updatedReplicas", 0)
    replicas, available = status.get("replicas", 0), status.get("availableReplicas", 0)
    if updated < wanted:
        return RolloutStatus(
            Rollout.WAITING,
            f'Waiting for deployment "{name}" rollout to finish: {updated} out of '
            f"{wanted} new replicas have been updated...",
        )
    if replicas > updated:
        return RolloutStatus(
            Rollout.WAITING,
            f'Waiting for deployment "{name}" rollout to finish: {replicas - updated}'
            " old replicas are pending termination...",
        )
    if available < updated:
        return RolloutStatus(
            Rollout.WAITING,
            f'Waiting for deployment "{name}" rollout to finish: {available} of '
            f"{updated} updated replicas are available...",
        )
    return RolloutStatus(Rollout.DONE, f'deployment "{name}" successfully rolled out')
