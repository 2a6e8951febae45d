"""Operations on an environment's releases: history, rollback to a stored release, recovery after a crash."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from deployer.canary.objects import canary_targets
from deployer.canary.router import Routing
from deployer.errors import DeployError
from deployer.events import Event, EventSink, Phase, Record, Status, discard
from deployer.kube.client import KubeClient
from deployer.kube.records import Records
from deployer.pipeline.ports import History, Ports, cluster_ports
from deployer.pipeline.release import ReleaseOptions, allowed_cluster_kinds
from deployer.pipeline.steps import Rendered
from deployer.pipeline.traffic import Run, prune, remove_canary, router_for, without_canary


@dataclass(frozen=True)
class Environment:
    """Which releases an operation is about."""

    app: str
    environment: str
    namespace: str


async def ports_of(api: KubeClient, env: Environment, *, sink: EventSink = discard) -> Ports:
    """The ports of `env` on a real cluster."""
    return await cluster_ports(api, namespace=env.namespace, app=env.app, environment=env.environment, sink=sink)


def records_of(api: KubeClient, env: Environment) -> History:
    """The release records of `env` alone (reading them needs no lock and no discovery)."""
    return Records(api, namespace=env.namespace, app=env.app, environment=env.environment)


async def _replay(ports: Ports, env: Environment, record: Record, *, sink: EventSink) -> Run:
    """A release run over the stored manifests of `record`, routed as that release was."""
    objects = list(record.manifests)
    rendered = Rendered(
        app=env.app,
        environment=env.environment,
        namespace=env.namespace,
        release=env.app,
        objects=(),
        values={"record": record.values_digest},
    )
    targets = canary_targets(objects) if record.canary else []
    ports.cluster.cluster_scoped = allowed_cluster_kinds(objects)  # stored manifests passed render's check
    routing = Routing(record.gateways, record.hosts, record.provider)
    router = await router_for(ports.cluster, routing=routing, app=env.app, environment=env.environment)
    return Run(
        ports.cluster,
        ports.records,
        rendered,
        objects,
        targets,
        record,
        ReleaseOptions(),
        sink,
        ports.probes,
        router=router,
    )


async def rollback(ports: Ports, *, env: Environment, to: int | None = None, sink: EventSink = discard) -> Record:
    """Re-apply a stored release (the one before the live one by default): no rebuild, no analysis."""
    async with ports.lock:
        stored = await ports.records.history()
        deployed = [r for r in stored if r.status is Status.DEPLOYED]
        target = (
            next((r for r in stored if r.revision == to), None) if to else (deployed[-2] if len(deployed) > 1 else None)
        )
        if target is None:
            known = ", ".join(str(r.revision) for r in stored) or "none"
            raise DeployError(
                f"no release {'revision ' + str(to) if to else 'before the live one'} to roll back to "
                f"(stored revisions: {known})",
                where=f"{env.environment} ({env.namespace})",
            )
        record = replace(
            target,
            revision=stored[-1].revision + 1,
            status=Status.PENDING,
            phase=Phase.ROLLBACK,
            job="",
            rollback_of=target.revision,
            started=time.time(),
            finished=None,
            reason="",
            rounds=(),
            weights=None,
            restored=None,
        )
        run = await _replay(ports, env, record, sink=sink)
        await run.save()
        await without_canary(run, why=f"rollback to revision {target.revision}")
        await prune(run, deployed[-1] if deployed else None)
        await run.save(status=Status.DEPLOYED, phase=Phase.DONE, finished=time.time())
        sink(Event("release", f"revision {record.revision} (revision {target.revision} again) is live"))
        return run.record


async def recover(ports: Ports, *, env: Environment, sink: EventSink = discard) -> list[int]:
    """Bring releases left mid-flight to a consistent end: all traffic to stable, no canary, recorded rolled back."""
    async with ports.lock:
        recovered = []
        stored = await ports.records.history()
        for record in stored:
            if record.status is not Status.PENDING:
                continue
            earlier = [r for r in stored if r.status is Status.DEPLOYED and r.revision < record.revision]
            run = await _replay(ports, env, record, sink=sink)
            put_back = bool(earlier) and record.phase in (Phase.APPLYING, Phase.PROMOTING, Phase.ROLLBACK)
            if put_back:  # stable may already run the new version: put the last good release back
                back = await _replay(ports, env, earlier[-1], sink=sink)
                await without_canary(back, why=f"putting revision {earlier[-1].revision} back")
            if not earlier:
                # Nothing of the deployer's served before, so there is nothing to go back to; what the release
                # applied may have adopted objects that helm or kubectl made, so it is not deleted either.
                reason = (
                    f"first release interrupted during {record.where}: what it applied stays, unverified "
                    "(no route names a version without pods); push again to release"
                )
                await run.save(status=Status.FAILED, phase=Phase.DONE, finished=time.time(), reason=reason)
                sink(Event("recover", f"revision {record.revision}: {reason}", kind="warning"))
                recovered.append(record.revision)
                continue
            if run.targets and run.router is not None:
                await remove_canary(run, run.objects, run.targets, reroute=not put_back)
            await run.save(
                status=Status.ROLLED_BACK,
                phase=Phase.DONE,
                finished=time.time(),
                reason=f"recovered: the deployer stopped during {record.where}",
            )
            sink(Event("recover", f"revision {record.revision} (stopped during {record.where}) rolled back"))
            recovered.append(record.revision)
        return recovered


async def request(records: History, *, env: Environment, what: str) -> int:
    """Ask the release in flight to promote now or to abort (roll back) now; return its revision."""
    pending = [r for r in await records.history() if r.status is Status.PENDING]
    if not pending:
        raise DeployError(f"no release in flight to {what}", where=f"{env.environment} ({env.namespace})")
    revision = pending[-1].revision
    await records.request(revision, what)
    return revision
