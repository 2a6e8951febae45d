"""Steps 6 to 10: lock, pre-deploy Jobs, canary beside stable, weights step by step, verdict, promote or roll
back, record.

The first release of an environment (or `--skip-canary`, or `canary: false`) goes without a canary. The
stable version (the primaries, pipeline/traffic.py) is never touched before promotion. Each round checks
readiness (watched during the interval) and the environment's Prometheus and HTTP checks.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from deployer.canary.analysis import Decision, Rollout, verdict
from deployer.canary.jobs import for_revision, job_from_config, split_pre_deploy
from deployer.canary.objects import (
    canary_targets,
    hpa_minimum,
    owned_by_release,
    require_targets,
    stable_set,
    without_sidecar,
)
from deployer.canary.router import Routing
from deployer.config.model import CanaryPolicy, Job, check_windows
from deployer.errors import DeployError, RolledBack, TransientError
from deployer.events import CheckResult, Event, EventSink, Phase, Record, Round, Status, discard, live_release
from deployer.kube.lease import LockLost
from deployer.pipeline.checks import configured_checks
from deployer.pipeline.ports import JobRunner, Ports
from deployer.pipeline.steps import ImageRef, Rendered
from deployer.pipeline.traffic import (
    Run,
    live_deployment,
    prune,
    remove_canary,
    require_router,
    rollout,
    router_for,
    routes,
    serve_stable,
    start_canary,
    without_canary,
)
from deployer.render.manifests import CLUSTER_SCOPED

REQUEST_POLL = 5.0  # seconds between reads of a promote/abort request during an interval


@dataclass(frozen=True)
class ReleaseOptions:
    skip_canary: bool = False
    rollout_timeout: float = 300.0
    pusher: str = ""
    branch: str = ""  # the pushed branch the release comes from (none from the CLI)
    prometheus_url: str | None = None
    scrape_interval: float = 15.0  # the Prometheus's, as its operator states it
    mesh_gateway: str | None = None  # the ingress gateway's URL, for HTTP checks through the mesh
    mesh_client: str | None = None  # `direct` or an HTTP proxy into the mesh, for the checks of mesh-only routes
    # checked once the lock is held, before anything changes: e.g. the branch has not moved while this waited
    precondition: Callable[[], Awaitable[None]] | None = None
    # called once the release is recorded live, with the lock still held: e.g. the branch is about to move
    on_live: Callable[[], None] | None = None


def allowed_cluster_kinds(objects: list[dict[str, Any]]) -> frozenset[str]:
    """The cluster-scoped kinds among rendered objects: render refused those the app may not create, so these
    may be applied; any other object the cluster serves cluster-scoped is refused by the adapter."""
    return frozenset(o["kind"] for o in objects if o["kind"] in CLUSTER_SCOPED)


async def release(
    ports: Ports,
    *,
    rendered: Rendered,
    policy: CanaryPolicy,
    image: ImageRef,
    options: ReleaseOptions = ReleaseOptions(),
    sink: EventSink = discard,
    jobs: tuple[Job, ...] = (),
) -> Record:
    """Release `rendered` to its environment; return the record. A rollback raises RolledBack after recording."""
    cluster, records = ports.cluster, ports.records
    async with ports.lock:
        if options.precondition is not None:
            await options.precondition()
        history = await records.history()
        previous = live_release(history)
        objects = owned_by_release(rendered.manifests, app=rendered.app, environment=rendered.environment)
        hooks, objects = split_pre_deploy(objects)
        labels = objects[0]["metadata"]["labels"] if objects else {}
        hooks += [job_from_config(job, image=image.ref, labels=labels) for job in jobs]
        cluster.cluster_scoped = allowed_cluster_kinds(objects)
        check_windows(
            policy, scrape_interval=options.scrape_interval, where=f"environments.{rendered.environment}.canary"
        )
        has_workloads = any(o["kind"] == "Deployment" for o in objects)
        targets = require_targets(objects) if policy.enabled and has_workloads else []
        routing = Routing(tuple(policy.gateways), tuple(policy.hosts), policy.provider)
        router = await router_for(cluster, routing=routing, app=rendered.app, environment=rendered.environment)
        if targets:
            require_router(router, routing).check(objects, targets)
        record = Record(
            revision=history[-1].revision + 1 if history else 1,
            commit=image.commit or image.tag,
            image=image.ref,
            pusher=options.pusher,
            branch=options.branch,
            started=time.time(),
            manifests=tuple(objects),
            canary=bool(targets),  # replays (rollback, recover) must split traffic only where this release did
            gateways=routing.gateways,
            hosts=routing.hosts,
            provider=routing.provider,
            grace=policy.grace,
            values_digest=rendered.values_digest,
        )
        run = Run(cluster, records, rendered, objects, targets, record, options, sink, ports.probes, ports.lock, router)
        await run.save()
        sink(Event("release", f"revision {record.revision} of {rendered.app} to {rendered.environment}"))
        try:
            await _pre_deploy(run, ports.jobs, hooks)
            await _deploy(run, policy, previous)
            await prune(run, previous)
        except LockLost:
            raise  # the record stays pending: the lease's next holder recovers it
        except DeployError as exc:
            if run.record.status is Status.PENDING:  # a rollback or a failed Job has recorded itself already
                await run.save(status=Status.FAILED, phase=Phase.DONE, reason=exc.message, finished=time.time())
            raise
        await run.save(status=Status.DEPLOYED, phase=Phase.DONE, finished=time.time())
        if options.on_live is not None:
            options.on_live()
        sink(Event("release", f"revision {record.revision} is live"))
        return run.record


async def _deploy(run: Run, policy: CanaryPolicy, previous: Record | None) -> None:
    """No canary for a first release, `-o skip-canary`, `canary: false` or a Deployment that has no stable version
    yet; otherwise the live version moves behind its primaries if it is not there yet, then the canary."""
    why = "first release" if previous is None else "no canary" if run.options.skip_canary or not run.targets else None
    if why is None:
        why = await _behind_primaries(run, previous)
    if why is not None:
        await run.save(phase=Phase.APPLYING)
        await without_canary(run, why=why)
        return
    assert previous is not None
    await _canary(run, policy, previous)


async def _behind_primaries(run: Run, previous: Record | None) -> str | None:
    """Make sure the live version serves from primaries (it does not after `canary: false`, helm or kubectl);
    say why there is no canary if some Deployment has no earlier version to compare with."""
    missing = [t for t in run.targets if await live_deployment(run, t.primary) is None]
    if not missing or previous is None:
        return None
    earlier = list(previous.manifests)
    known = canary_targets(earlier)
    new = [t.deployment for t in missing if t not in known]
    if new:
        return f"no earlier version of {', '.join(new)} to compare a canary with"
    run.sink(Event("release", f"revision {previous.revision} moves behind {', '.join(t.primary for t in missing)}"))
    await run.save(phase=Phase.APPLYING)
    await serve_stable(run, earlier, known)
    return None


async def _pre_deploy(run: Run, runner: JobRunner, hooks: list[dict[str, Any]]) -> None:
    """Run the pre-deploy Jobs to completion, in order; if one fails, nothing else is applied."""
    for hook in hooks:
        job = for_revision(hook, run.record.revision)
        await run.save(phase=Phase.PRE_DEPLOY, job=job["metadata"]["name"])
        succeeded, reason, logs = await runner.run_job(
            job, namespace=run.namespace, timeout=run.options.rollout_timeout, sink=run.sink
        )
        if not succeeded:
            await run.save(
                status=Status.FAILED,
                phase=Phase.DONE,
                reason=f"pre-deploy Job {job['metadata']['name']}: {reason}",
                finished=time.time(),
            )
            raise DeployError(
                f"pre-deploy Job {job['metadata']['name']} failed ({reason}); nothing was applied",
                where=f"{run.rendered.environment} ({run.namespace})",
                details=logs,
            )


async def _canary(run: Run, policy: CanaryPolicy, previous: Record) -> None:
    await run.save(phase=Phase.CANARY)
    canaries = await start_canary(run)
    try:
        await _canary_rounds(run, policy, previous, canaries)
    except (RolledBack, LockLost):
        raise  # recorded already, or the lease's next holder recovers it
    except DeployError as exc:  # the cluster refused a call (a Role without a right, a 422): undo the canary
        if run.record.phase is not Phase.CANARY:
            raise  # promotion puts back what it changed itself (_promote)
        await _rollback(run, f"the canary could not go on: {exc}", previous)


async def _canary_rounds(run: Run, policy: CanaryPolicy, previous: Record, canaries: list[dict[str, Any]]) -> None:
    await _canary_ready(run, canaries, previous)
    await _in_mesh(run, canaries, previous)
    rounds: list[Round] = []
    while True:
        result = verdict(rounds, policy)
        asked = await run.records.requested(run.record.revision)
        if asked == "abort":
            await _rollback(run, "aborted by request (deployer abort)", previous)
        if asked == "promote":
            run.sink(Event("canary", "promotion requested (deployer promote): skipping the remaining steps"))
            break
        if result.decision is Decision.ROLLBACK:
            await _rollback(run, result.reason, previous)
        if result.decision is Decision.PROMOTE:
            break
        assert result.next_weight is not None
        run.held()
        await routes(run, run.objects, run.targets, result.next_weight)
        await run.save()  # the step's weights, recorded (and shown in its Release object) as they are routed
        checks = await _watched(run, canaries, policy.interval)
        checks += await _readiness(run, canaries) + await configured_checks(run, policy, canaries)
        rounds.append(Round(result.next_weight, checks))
        for check in checks:
            run.sink(Event("canary", f"check {check.name}: {'ok' if check.ok else 'FAILED'} {check.message}".rstrip()))
        await run.save(rounds=tuple(rounds))
    await _promote(run, previous)


async def _watched(run: Run, canaries: list[dict[str, Any]], interval: float) -> tuple[CheckResult, ...]:
    """The round's interval, watched: a pod going unready fails the round at once; a watch that could not be
    kept up to the interval's end fails it too (no signal is not a pass). The interval is watched in slices of
    at most REQUEST_POLL seconds, between which a `deployer promote`/`abort` ends it early: acted on in seconds,
    not at the end of a long interval."""
    names = [c["metadata"]["name"] for c in canaries]
    deadline = time.monotonic() + interval
    while True:  # at least once, for the last slice too
        left = max(0.0, deadline - time.monotonic())
        observed = await run.cluster.until_unready(names, namespace=run.namespace, seconds=min(REQUEST_POLL, left))
        if observed.early:
            run.sink(Event("canary", f"noticed before the interval ended: {observed.early}", kind="warning"))
            return (CheckResult("readiness watch", False, observed.early),)
        if observed.lost:
            why = f"no signal from the cluster at the end of the interval ({observed.lost})"
            run.sink(Event("canary", f"readiness watch: {why}", kind="warning"))
            return (CheckResult("readiness watch", False, why),)
        if deadline - time.monotonic() <= 0:
            return ()
        if await _asked(run):
            run.sink(Event("canary", "a request ends the interval early"))
            return ()


async def _asked(run: Run) -> bool:
    """Whether promote or abort was asked for since the last write; a read that fails is no request (the
    record is read again at the round's end)."""
    try:
        return bool(await run.records.requested(run.record.revision, fresh=True))
    except Exception:  # any failure to read: no request seen; the watch, not this read, judges the canary
        return False


async def _canary_ready(run: Run, canaries: list[dict[str, Any]], previous: Record) -> None:
    """No traffic reaches a canary before it rolled out (as in Flagger); one that never does is rolled back."""
    for canary in canaries:
        name = canary["metadata"]["name"]
        try:
            state = await rollout(run, name)
        except DeployError as exc:  # the rollout timeout
            await _rollback(run, f"the canary never became ready: {exc.message}", previous)
        if state.state is Rollout.FAILED:
            await _rollback(run, f"the canary never became ready: {state.message}", previous)


async def _in_mesh(run: Run, canaries: list[dict[str, Any]], previous: Record) -> None:
    """Before any traffic shifts: a pod without a sidecar is not routed by weight and reports no metrics, so a
    canary would be judged on nothing."""
    for canary in canaries:
        pods = await run.cluster.pod_objects(
            namespace=run.namespace, selector=canary["spec"]["selector"]["matchLabels"]
        )
        if bare := without_sidecar(pods):
            await _rollback(
                run,
                f"the canary's pods have no Istio sidecar ({', '.join(sorted(bare)[:3])}), so the mesh can neither "
                f"route by weight to them nor measure them: label namespace {run.namespace} with "
                "istio-injection=enabled (or istio.io/rev=<revision>) and push again",
                previous,
            )


async def _readiness(run: Run, canaries: list[dict[str, Any]]) -> tuple[CheckResult, ...]:
    """Every canary pod ready; for a canary an HPA scales, at least the HPA's minimum (pods it is adding as the
    round ends are not a failure of the new version)."""
    results = []
    for canary in canaries:
        name = canary["metadata"]["name"]
        try:
            live = await run.cluster.get("apps/v1", "Deployment", namespace=run.namespace, name=name) or {}
        except (DeployError, TransientError) as exc:  # a check that cannot be made fails its round
            results.append(CheckResult(f"readiness {name}", False, f"cannot read the Deployment: {exc}"))
            continue
        wanted = int((live.get("spec") or {}).get("replicas", 1))
        ready = int((live.get("status") or {}).get("readyReplicas") or 0)
        floor = hpa_minimum(run.objects, next(t.deployment for t in run.targets if t.canary == name))
        message = f"{ready}/{wanted} pods ready"
        if floor is not None and floor < wanted:
            wanted, message = floor, f"{message} (the HPA's minimum is {floor})"
        results.append(CheckResult(f"readiness {name}", ready >= wanted, message, float(ready), f">= {wanted} ready"))
    return tuple(results)


async def _promote(run: Run, previous: Record) -> None:
    """The new version becomes stable while the routes keep the canary's weight; once the primaries rolled out,
    all traffic goes to them and the canary is removed after the grace."""
    run.held()
    run.sink(Event("canary", "promoting: the new version becomes stable", data={"promoting": True}))
    await run.save(phase=Phase.PROMOTING)
    try:
        await serve_stable(run, run.objects, run.targets)
    except DeployError as exc:  # e.g. a progress deadline exceeded: put the last good release back
        await _rollback(run, f"promotion failed: {exc.message}", previous, restore=True)
    await remove_canary(run, run.objects, run.targets, reroute=False)


async def _rollback(run: Run, reason: str, previous: Record, *, restore: bool = False) -> NoReturn:
    """Traffic back to stable, the canary removed, and the release recorded rolled back once the version that
    serves has rolled out (`restore`: stable was changed, so the previous release is put back first)."""
    run.sink(Event("canary", f"rolling back: {reason}", kind="warning"))
    earlier = list(previous.manifests)
    known = [t for t in canary_targets(earlier) if t in run.targets]  # the live version serves from primaries
    if restore:
        await run.cluster.apply(stable_set(earlier, known), namespace=run.namespace)
    await remove_canary(run, run.objects, run.targets)
    if restore:
        names = [o["metadata"]["name"] for o in stable_set(earlier, known) if o["kind"] == "Deployment"]
        reason += f"; {await _restored(run, previous.revision, names)}"
    elif (serving := await _restored(run, None, [t.primary for t in run.targets])) is not None:
        reason += f"; {serving}"
    await run.save(status=Status.ROLLED_BACK, phase=Phase.DONE, reason=reason, finished=time.time())
    raise RolledBack(f"canary rolled back: {reason}", where=f"{run.rendered.environment} ({run.namespace})")


async def _restored(run: Run, revision: int | None, deployments: list[str]) -> str | None:
    """Wait for the serving version's rollouts and say, in the record's words, whether it serves: for a
    revision put back, always; for a stable version the canary never touched (`revision` None), only if not."""
    problem = None
    for name in deployments:
        try:
            state = await rollout(run, name)
        except (DeployError, TransientError) as exc:
            problem = str(exc)
            break
        if state.state is Rollout.FAILED:
            problem = state.message
            break
    run.record = replace(run.record, restored=problem is None)
    if revision is None:
        return None if problem is None else f"the stable version is NOT rolled out: {problem}"
    if problem is None:
        return f"revision {revision} restored and rolled out"
    return f"revision {revision} re-applied but NOT rolled out: {problem}"
