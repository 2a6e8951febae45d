"""Stable, canary and routes on the cluster, make before break: a destination exists and is ready before a route
names it, and whatever a route stops naming outlives the change by the grace period (a route change takes seconds
to reach every sidecar on a real mesh) before it is removed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from deployer.canary.analysis import Rollout, rollout_status
from deployer.canary.gateway import API_VERSION as GATEWAY_API_VERSION
from deployer.canary.gateway import KIND as HTTP_ROUTE
from deployer.canary.gateway import GatewayRouter
from deployer.canary.istio import GROUP, KIND, VERSIONS, IstioRouter
from deployer.canary.objects import (
    CanaryTarget,
    canary_set,
    initial_replicas,
    owner_labels,
    owner_selector,
    stable_set,
)
from deployer.canary.router import Router, Routing
from deployer.errors import DeployError
from deployer.events import Event, EventSink, Record
from deployer.pipeline.ports import Cluster, EnvironmentLock, History, Probes
from deployer.pipeline.steps import Rendered

# Sizes are applied as their own field managers: an apply holding only `replicas` as the deployer's manager would
# give up every other field that manager set (server-side apply removes what its manager stops applying).
INITIAL_SIZE = "deployer-initial-size"  # a new primary's first size; an HPA owns it from its first scale
RETIRE = "deployer-retire"  # zero, for a Deployment its primary replaced


@dataclass
class Run:
    """What one release (or a replay of a stored one) works with."""

    cluster: Cluster
    records: History
    rendered: Rendered
    objects: list[dict[str, Any]]
    targets: list[CanaryTarget]
    record: Record  # as last saved, or changed since (weights): replaced, never mutated
    options: Any
    sink: EventSink
    probes: Probes
    lock: EnvironmentLock | None = None
    router: Router | None = None

    @property
    def namespace(self) -> str:
        return self.rendered.namespace

    @property
    def grace(self) -> float:
        return self.record.grace

    def held(self) -> None:
        """Before each change to traffic: stop, changing nothing, if this release may have lost its lock."""
        if self.lock is not None:
            self.lock.ensure_held()

    async def save(self, **changes: Any) -> None:
        if "phase" in changes and "job" not in changes:
            changes["job"] = ""  # a Job's name belongs to the pre-deploy phase only
        self.record = replace(self.record, **changes)
        await self.records.save(self.record)


async def router_for(cluster: Cluster, *, routing: Routing, app: str, environment: str) -> Router | None:
    """The router the environment asks for, in the API version the cluster serves: Istio's networking.istio.io
    (v1, else v1beta1) or the Gateway API's gateway.networking.k8s.io/v1; None if the cluster serves neither."""
    labels = owner_labels(app=app, environment=environment)
    if routing.provider == "gateway-api":
        served = await cluster.serves(GATEWAY_API_VERSION, HTTP_ROUTE)
        return GatewayRouter(GATEWAY_API_VERSION, routing, labels) if served else None
    for version in VERSIONS:
        if await cluster.serves(f"{GROUP}/{version}", KIND):
            return IstioRouter(f"{GROUP}/{version}", routing, labels)
    return None


def require_router(router: Router | None, routing: Routing) -> Router:
    if router is None and routing.provider == "gateway-api":
        raise DeployError(
            f"the cluster serves no {HTTP_ROUTE} in {GATEWAY_API_VERSION}: canary.provider gateway-api needs the "
            "Gateway API CRDs and an implementation; install them, or use provider istio",
            where="cluster",
        )
    if router is None:
        raise DeployError(
            f"the cluster serves no {KIND} in {GROUP} ({' or '.join(VERSIONS)}): a canary needs Istio; install "
            "Istio, or set `canary: false` for this environment",
            where="cluster",
        )
    return router


async def rollout(run: Run, deployment: str) -> Any:
    """Wait for one Deployment's rollout (kubectl's rules), up to the release's rollout timeout."""
    return await run.cluster.wait_rollout(
        deployment,
        namespace=run.namespace,
        timeout=run.options.rollout_timeout,
        sink=run.sink,
        status_of=rollout_status,
    )


async def wait_rolled_out(run: Run, objects: list[dict[str, Any]]) -> None:
    for deployment in [o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"]:
        state = await rollout(run, deployment)
        if state.state is Rollout.FAILED:
            raise DeployError(state.message, where=run.namespace)


async def routes(run: Run, objects: list[dict[str, Any]], targets: list[CanaryTarget], weight: int | None) -> None:
    """Write the routes at `weight` percent to the canaries (None: stable only, the canaries unnamed)."""
    if run.router is None or not targets:
        return
    await run.cluster.apply(run.router.routes(objects, targets, weight), namespace=run.namespace)
    canary = weight or 0
    run.record = replace(run.record, weights=(100 - canary, canary))
    run.sink(Event("canary", f"weights stable {100 - canary}% / canary {canary}%", data={"canary_weight": canary}))


async def serve_stable(run: Run, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> None:
    """Make `objects` the stable version: everything but the routed Services and routes first, the primaries
    rolled out, then the Services select the primaries and the routes send everything to them; a live workload
    the primaries replace (made by helm, kubectl or `canary: false`) is scaled to zero after the grace."""
    stable = stable_set(objects, targets)
    routed = {("Service", t.service) for t in targets}
    if run.router is not None:
        routed |= run.router.adopted(objects, targets)
    news = {t.primary: await live_deployment(run, t.primary) is None for t in targets}
    await run.cluster.apply(
        [o for o in stable if (o["kind"], o["metadata"]["name"]) not in routed], namespace=run.namespace
    )
    for target in targets:
        if news[target.primary]:
            size = initial_replicas(objects, target, await live_deployment(run, target.deployment))
            if size is not None:
                await run.cluster.apply([_size(target.primary, size)], namespace=run.namespace, manager=INITIAL_SIZE)
    await wait_rolled_out(run, stable)
    await run.cluster.apply(
        [o for o in stable if (o["kind"], o["metadata"]["name"]) in routed], namespace=run.namespace
    )
    await routes(run, objects, targets, None)
    retired = [t.deployment for t in targets if _serving(await live_deployment(run, t.deployment))]
    if retired:
        await grace(run, f"before scaling {', '.join(retired)} to zero: {', '.join(t.primary for t in targets)} serve")
        await run.cluster.apply([_size(name, 0) for name in retired], namespace=run.namespace, manager=RETIRE)


async def without_canary(run: Run, *, why: str) -> None:
    """The release's objects live with no canary: behind primaries where it routes (a first release, `-o
    skip-canary`, a replay of such a release), else as rendered (`canary: false`; what they replace is pruned
    after the grace)."""
    run.sink(Event("release", f"{why}: applying {len(run.objects)} objects without a canary"))
    if run.targets and run.router is not None:
        await serve_stable(run, run.objects, run.targets)
        return
    await run.cluster.apply(run.objects, namespace=run.namespace)
    await wait_rolled_out(run, run.objects)


async def start_canary(run: Run) -> list[dict[str, Any]]:
    """The canary's objects applied (routes still name only stable); returns its Deployments."""
    objects = canary_set(run.objects, run.targets)
    await run.cluster.apply(objects, namespace=run.namespace)
    return [o for o in objects if o["kind"] == "Deployment"]


async def remove_canary(
    run: Run, objects: list[dict[str, Any]], targets: list[CanaryTarget], *, reroute: bool = True
) -> None:
    """Routes name stable only (`reroute`: unless the caller just wrote them); after the grace, the canary's
    objects go."""
    if reroute:
        await routes(run, objects, targets, None)
    await grace(run, "before removing the canary")
    for obj in reversed(canary_set(objects, targets)):
        await run.cluster.delete(obj["apiVersion"], obj["kind"], namespace=run.namespace, name=obj["metadata"]["name"])


async def grace(run: Run, why: str) -> None:
    if run.grace > 0:
        run.sink(Event("canary", f"waiting {run.grace:g}s for the route change to propagate {why}"))
        await asyncio.sleep(run.grace)


def applied(run: Run) -> list[dict[str, Any]]:
    """What this release keeps on the cluster (its stable objects and routes), for pruning."""
    if not run.targets:
        return run.objects
    own = run.router.routes(run.objects, run.targets, None) if run.router is not None else []
    return [*stable_set(run.objects, run.targets), *own]


async def prune(run: Run, previous: Record | None) -> None:
    """Delete what carries this environment's labels and this release no longer keeps (a workload or Service after
    the grace, so that what replaced it is seen first)."""
    if previous is None:
        return
    kinds = {(o["apiVersion"], o["kind"]) for o in previous.manifests}
    kinds |= {("apps/v1", "Deployment"), ("v1", "Service")}
    if run.router is not None:
        kinds.add((run.router.api_version, run.router.kind))
    keep = {(o["kind"], o["metadata"]["name"]) for o in applied(run)}
    selector = owner_selector(app=run.rendered.app, environment=run.rendered.environment)
    found = await run.cluster.owned(sorted(kinds), namespace=run.namespace, selector=selector)
    gone = []
    for obj in found:
        if (obj["kind"], obj["metadata"]["name"]) in keep:
            continue
        if others := adopted_from(obj):  # helm or kubectl made it; the deployer took it over: not its to delete
            run.sink(Event("release", f"kept {obj['kind']}/{obj['metadata']['name']}: made by {', '.join(others)}"))
            continue
        gone.append(obj)
    if any(o["kind"] in ("Deployment", "Service", KIND) for o in gone):
        await grace(run, "before pruning what served")
    for obj in gone:
        await run.cluster.delete(obj["apiVersion"], obj["kind"], namespace=run.namespace, name=obj["metadata"]["name"])
        run.sink(Event("release", f"pruned {obj['kind']}/{obj['metadata']['name']}"))


OURS = ("deployer", INITIAL_SIZE, RETIRE)
# Kubernetes' own components write the main resource too (the Deployment controller its revision annotation):
# they make nothing a release renders.
CONTROL_PLANE = ("kube-controller-manager", "kube-scheduler", "kube-apiserver", "kubelet")


def adopted_from(obj: dict[str, Any]) -> list[str]:
    """The other field managers of an object's main resource (not its status or scale): whoever made it before
    the deployer adopted it (helm, kubectl, ...) keeps fields there. kube-apiserver names an Update's manager after
    the client's user agent (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/create.go: managerOrUserAgent)."""
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    return sorted(
        {
            str(e.get("manager"))
            for e in entries
            if not e.get("subresource") and e.get("manager") not in (*OURS, *CONTROL_PLANE)
        }
    )


async def live_deployment(run: Run, name: str) -> dict[str, Any] | None:
    return await run.cluster.get("apps/v1", "Deployment", namespace=run.namespace, name=name)


def _serving(live: dict[str, Any] | None) -> bool:
    return live is not None and int((live.get("spec") or {}).get("replicas", 1) or 0) > 0


def _size(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {"replicas": replicas}}
