"""Operations on an environment's releases: history, rollback to a stored release, recovery after a crash."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from deployer.canary.objects import ISTIO, canary_targets, stable_objects
from deployer.errors import DeployError
from deployer.events import Event, EventSink, discard
from deployer.kube.cluster import Kube
from deployer.kube.lease import Lock
from deployer.kube.records import Records
from deployer.pipeline.release import (
    ReleaseOptions,
    _apply_all,
    _delete_canaries,
    _prune,
    _Release,
    _routes,
    _wait_stable,
    allowed_cluster_kinds,
    environment_lock,
)
from deployer.pipeline.steps import Rendered


@dataclass(frozen=True)
class Environment:
    """Which releases an operation is about."""

    app: str
    environment: str
    namespace: str


async def history(*, api: client.ApiClient, env: Environment) -> list[dict[str, Any]]:
    """The stored releases of an environment, oldest first."""
    return await Records(api, namespace=env.namespace, app=env.app, environment=env.environment).history()


def _replay(
    kube: Kube,
    records: Records,
    env: Environment,
    record: dict[str, Any],
    *,
    sink: EventSink,
    manifests: list[dict[str, Any]] | None = None,
) -> _Release:
    """A release run over stored manifests (those of `record`, unless others are given)."""
    objects = record["manifests"] if manifests is None else manifests
    rendered = Rendered(
        app=env.app,
        environment=env.environment,
        namespace=env.namespace,
        release=env.app,
        objects=(),
        values={"record": record.get("values_digest", "")},
    )
    targets = canary_targets(objects) if record.get("canary", True) else []
    kube.cluster_scoped = allowed_cluster_kinds(objects)  # stored manifests passed render's check
    return _Release(kube, records, rendered, objects, targets, record, ReleaseOptions(), sink)


def _lock(api: client.ApiClient, env: Environment, sink: EventSink) -> Lock:
    return environment_lock(api, namespace=env.namespace, app=env.app, environment=env.environment, sink=sink)


async def rollback(
    *, api: client.ApiClient, env: Environment, to: int | None = None, sink: EventSink = discard
) -> dict[str, Any]:
    """Re-apply a stored release (the one before the live one by default): no rebuild, no analysis."""
    kube = await asyncio.to_thread(Kube, api)
    async with _lock(api, env, sink):
        records = Records(api, namespace=env.namespace, app=env.app, environment=env.environment)
        stored = await records.history()
        deployed = [r for r in stored if r["status"] == "deployed"]
        target = (
            next((r for r in stored if int(r["revision"]) == to), None)
            if to
            else (deployed[-2] if len(deployed) > 1 else None)
        )
        if target is None:
            known = ", ".join(str(r["revision"]) for r in stored) or "none"
            raise DeployError(
                f"no release {'revision ' + str(to) if to else 'before the live one'} to roll back to "
                f"(stored revisions: {known})",
                where=f"{env.environment} ({env.namespace})",
            )
        record = {
            **{k: v for k, v in target.items() if k not in ("reason", "finished")},
            "revision": int(stored[-1]["revision"]) + 1,
            "status": "pending",
            "phase": "rollback",
            "rollback_of": target["revision"],
            "started": time.time(),
            "rounds": [],
        }
        run = _replay(kube, records, env, record, sink=sink)
        await run.save()
        await _apply_all(run, why=f"rollback to revision {target['revision']}")
        await _delete_canaries(run)
        await _prune(run, deployed[-1] if deployed else None)
        await run.save(status="deployed", phase="done", finished=time.time())
        sink(Event("release", f"revision {record['revision']} (revision {target['revision']} again) is live"))
        return record


async def recover(*, api: client.ApiClient, env: Environment, sink: EventSink = discard) -> list[int]:
    """Bring releases left mid-flight to a consistent end: all traffic to stable, no canary, recorded rolled back."""
    kube = await asyncio.to_thread(Kube, api)
    async with _lock(api, env, sink):
        records = Records(api, namespace=env.namespace, app=env.app, environment=env.environment)
        recovered = []
        stored = await records.history()
        for record in stored:
            if record["status"] != "pending":
                continue
            earlier = [r for r in stored if r["status"] == "deployed" and int(r["revision"]) < int(record["revision"])]
            if earlier and record.get("phase") in ("applying", "promoting", "rollback"):
                # stable may already run the new version: put the last good release back
                back = _replay(kube, records, env, dict(earlier[-1]), sink=sink)
                await kube.apply(stable_objects(back.objects, back.targets), namespace=env.namespace)
                await _wait_stable(back)
            run = _replay(kube, records, env, record, sink=sink)
            if run.targets and kube.has_kind(ISTIO, "VirtualService"):
                await _routes(run, weight=0, rules=True)
            await _delete_canaries(run)
            phase = record.get("phase", "unknown")
            await run.save(
                status="rolled-back",
                phase="done",
                finished=time.time(),
                reason=f"recovered: the deployer stopped during {phase}",
            )
            sink(Event("recover", f"revision {record['revision']} (stopped during {phase}) rolled back"))
            recovered.append(int(record["revision"]))
        return recovered


async def request(*, api: client.ApiClient, env: Environment, what: str) -> int:
    """Ask the release in flight to promote now or to abort (roll back) now; return its revision."""
    records = Records(api, namespace=env.namespace, app=env.app, environment=env.environment)
    pending = [r for r in await records.history() if r["status"] == "pending"]
    if not pending:
        raise DeployError(f"no release in flight to {what}", where=f"{env.environment} ({env.namespace})")
    revision = int(pending[-1]["revision"])
    await records.request(revision, what)
    return revision
