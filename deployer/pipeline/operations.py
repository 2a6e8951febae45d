"""Operations on an environment's releases: history, rollback to a stored release, recovery after a crash."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from deployer.canary.objects import canary_targets
from deployer.canary.router import Routing
from deployer.errors import DeployError
from deployer.events import Event, EventSink, Phase, Status, discard
from deployer.kube.cluster import Kube
from deployer.kube.lease import Lock
from deployer.kube.records import Records
from deployer.pipeline.release import ReleaseOptions, allowed_cluster_kinds, environment_lock
from deployer.pipeline.steps import Rendered
from deployer.pipeline.traffic import Run, istio_router, prune, remove_canary, without_canary


@dataclass(frozen=True)
class Environment:
    """Which releases an operation is about."""

    app: str
    environment: str
    namespace: str


async def history(*, api: client.ApiClient, env: Environment) -> list[dict[str, Any]]:
    """The stored releases of an environment, oldest first."""
    return await Records(api, namespace=env.namespace, app=env.app, environment=env.environment).history()


async def _replay(
    kube: Kube,
    records: Records,
    env: Environment,
    record: dict[str, Any],
    *,
    sink: EventSink,
) -> Run:
    """A release run over the stored manifests of `record`, routed as that release was."""
    objects = record["manifests"]
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
    stored = record.get("routing") or {}
    routing = Routing(tuple(stored.get("gateways") or ()), tuple(stored.get("hosts") or ()))
    router = await istio_router(kube, routing=routing, app=env.app, environment=env.environment)
    return Run(kube, records, rendered, objects, targets, record, ReleaseOptions(), sink, router=router)


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
        deployed = [r for r in stored if r["status"] == Status.DEPLOYED]
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
            "status": Status.PENDING,
            "phase": Phase.ROLLBACK,
            "rollback_of": target["revision"],
            "started": time.time(),
            "rounds": [],
        }
        run = await _replay(kube, records, env, record, sink=sink)
        await run.save()
        await without_canary(run, why=f"rollback to revision {target['revision']}")
        await prune(run, deployed[-1] if deployed else None)
        await run.save(status=Status.DEPLOYED, phase=Phase.DONE, finished=time.time())
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
            if record["status"] != Status.PENDING:
                continue
            earlier = [
                r for r in stored if r["status"] == Status.DEPLOYED and int(r["revision"]) < int(record["revision"])
            ]
            run = await _replay(kube, records, env, record, sink=sink)
            put_back = bool(earlier) and record.get("phase") in (Phase.APPLYING, Phase.PROMOTING, Phase.ROLLBACK)
            if put_back:  # stable may already run the new version: put the last good release back
                back = await _replay(kube, records, env, dict(earlier[-1]), sink=sink)
                await without_canary(back, why=f"putting revision {earlier[-1]['revision']} back")
            if earlier and run.targets and run.router is not None:  # a first release never has a canary
                await remove_canary(run, run.objects, run.targets, reroute=not put_back)
            phase = record.get("phase", "unknown")
            await run.save(
                status=Status.ROLLED_BACK,
                phase=Phase.DONE,
                finished=time.time(),
                reason=f"recovered: the deployer stopped during {phase}",
            )
            sink(Event("recover", f"revision {record['revision']} (stopped during {phase}) rolled back"))
            recovered.append(int(record["revision"]))
        return recovered


async def request(*, api: client.ApiClient, env: Environment, what: str) -> int:
    """Ask the release in flight to promote now or to abort (roll back) now; return its revision."""
    records = Records(api, namespace=env.namespace, app=env.app, environment=env.environment)
    pending = [r for r in await records.history() if r["status"] == Status.PENDING]
    if not pending:
        raise DeployError(f"no release in flight to {what}", where=f"{env.environment} ({env.namespace})")
    revision = int(pending[-1]["revision"])
    await records.request(revision, what)
    return revision
