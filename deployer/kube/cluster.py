"""The cluster as the release engine uses it: server-side apply, reads, deletes, prune and rollout waits.

Everything goes through the asyncio client (kube/client.py): no call and no watch holds a thread, so one server
waits on many releases' intervals at once. Transient failures are retried there; any other refusal becomes a
DeployError naming the object.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass
from typing import Any

from deployer.errors import DeployError, TransientError
from deployer.events import Event, EventSink
from deployer.kube.client import DEPLOYMENTS, PODS, ApiError, KubeClient, Resource, describe

MANAGER = "deployer"
APPLY_AT_ONCE = 8  # requests in flight while applying the objects of one kind


@dataclass(frozen=True)
class Observed:
    """What a watch over an interval saw: a pod going unready (`early`), or no signal at its end (`lost`)."""

    early: str | None = None
    lost: str | None = None


def ref(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


class Kube:
    """One cluster, one field manager."""

    def __init__(self, api: KubeClient, *, manager: str = MANAGER) -> None:
        self.api = api
        self.manager = manager
        self.cluster_scoped: frozenset[str] = frozenset()  # cluster-scoped kinds a release may apply (render judged)

    async def _resource(self, api_version: str, kind: str) -> Resource:
        if (resource := await self.api.resource(api_version, kind)) is None:
            raise DeployError(f"the cluster does not serve {kind} in {api_version}", where="cluster")
        return resource

    async def serves(self, api_version: str, kind: str) -> bool:
        return await self.api.resource(api_version, kind) is not None

    async def apply(
        self, objects: list[dict[str, Any]], *, namespace: str, dry_run: bool = False, manager: str | None = None
    ) -> list[dict[str, Any]]:
        """Server-side apply the objects in their order (forcing: git is the source of truth for these fields):
        kind after kind as given (Helm's install order), the objects of one kind together, up to APPLY_AT_ONCE
        requests at a time; the first refusal in order is raised once its kind's requests have ended.
        With `dry_run`, the cluster answers what it would store and stores nothing; `manager` applies as another
        field manager than the adapter's (fields that manager owns are left alone by the adapter's applies)."""
        owner = manager or self.manager
        applied: list[dict[str, Any]] = []
        for _, run in itertools.groupby(objects, key=lambda obj: (obj["apiVersion"], obj["kind"])):
            batch = list(run)
            for start in range(0, len(batch), APPLY_AT_ONCE):
                answers = await asyncio.gather(
                    *(self._apply(obj, namespace, dry_run, owner) for obj in batch[start : start + APPLY_AT_ONCE]),
                    return_exceptions=True,
                )
                for answer in answers:
                    if isinstance(answer, BaseException):
                        raise answer
                    applied.append(answer)
        return applied

    async def _apply(self, obj: dict[str, Any], namespace: str, dry_run: bool, manager: str) -> dict[str, Any]:
        resource = await self._resource(obj["apiVersion"], obj["kind"])
        if not resource.namespaced and obj["kind"] not in self.cluster_scoped:
            raise DeployError(
                f"{ref(obj)}: the cluster serves {obj['kind']} cluster-scoped, and this release may not create "
                "cluster-scoped objects of that kind; a release stays in its namespace",
                where=namespace,
            )
        try:
            return await self.api.apply(resource, namespace, obj, manager=manager, dry_run=dry_run)
        except ApiError as exc:
            message = exc.message
            if (
                exc.status == 422
                and obj["kind"] == "Deployment"
                and "spec.selector" in message
                and "immutable" in message
            ):
                raise DeployError(
                    f"{ref(obj)} exists with another selector, and a Deployment's selector cannot change; "
                    "rename the Deployment in the chart, or delete the live one",
                    where=namespace,
                ) from None
            raise DeployError(f"{ref(obj)}: the cluster refused it: {message}", where=namespace) from None

    async def get(self, api_version: str, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None:
        resource = await self._resource(api_version, kind)
        try:
            return await self.api.read(resource, namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise DeployError(f"{kind}/{name}: {exc.message}", where=namespace) from None

    async def delete(self, api_version: str, kind: str, *, namespace: str, name: str) -> bool:
        """Delete with background propagation; False if it was not there."""
        resource = await self._resource(api_version, kind)
        try:
            return await self.api.delete(resource, namespace, name)
        except ApiError as exc:
            raise DeployError(f"{kind}/{name}: cannot delete it: {exc.message}", where=namespace) from None

    async def owned(self, kinds: list[tuple[str, str]], *, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Namespaced objects of these kinds in `namespace` carrying the deployer's labels, for pruning: never a
        cluster-scoped one (labels alone do not make another namespace or a ClusterRole this release's)."""
        found = []
        for api_version, kind in kinds:
            resource = await self.api.resource(api_version, kind)
            if resource is not None and resource.namespaced:
                items = (await self.api.list(resource, namespace, labels=selector)).get("items") or []
                found += [{**item, "apiVersion": api_version, "kind": kind} for item in items]
        return found

    async def pods(self, *, namespace: str, selector: dict[str, str]) -> list[str]:
        """Names of the ready pods matching `selector`."""
        return [
            p["metadata"]["name"]
            for p in await self.pod_objects(namespace=namespace, selector=selector)
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        ]

    async def pod_objects(self, *, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        """The pods matching `selector`, as the API serves them."""
        text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return list((await self.api.list(PODS, namespace, labels=text)).get("items") or [])

    async def until_unready(self, names: list[str], *, namespace: str, seconds: float) -> Observed:
        """Watch these Deployments for the whole of `seconds`. Ends early only for an observed unready pod of one
        that was ready; a dropped or failed watch is resumed (relisting on 410) until the time is up, and if the
        API could not be read again before then, the signal is reported lost: a round that saw nothing."""
        wanted_names = set(names)
        deadline = time.monotonic() + seconds
        # per Deployment, once all its pods were ready: the most pods seen ready since, at most the replicas it
        # wants (an HPA's scale-up adds pods not yet ready, a scale-down removes ready ones: neither is a failure)
        peak: dict[str, int] = {}
        version: str | None = None
        failure: str | None = None

        def judge(obj: dict[str, Any]) -> str | None:
            name = (obj.get("metadata") or {}).get("name")
            if name not in wanted_names:
                return None
            wanted = (obj.get("spec") or {}).get("replicas") or 0
            ready = (obj.get("status") or {}).get("readyReplicas") or 0
            before = peak.get(name)
            if before is not None and ready < min(before, wanted):
                return f"{name}: {ready}/{wanted} pods ready (a pod went unready)"
            if before is not None or ready >= wanted > 0:
                peak[name] = min(max(before or 0, ready), wanted)
            return None

        while (remaining := deadline - time.monotonic()) > 0:
            try:
                if version is None:  # (re)list: the state now, and where the next watch starts
                    listed = await self.api.list(
                        DEPLOYMENTS, namespace, timeout=max(0.1, min(remaining, 10)), once=True
                    )
                    version, failure = (listed.get("metadata") or {}).get("resourceVersion") or "0", None
                    for obj in listed.get("items") or []:
                        if why := judge(obj):
                            return Observed(early=why)
                async with contextlib.aclosing(
                    self.api.watch(DEPLOYMENTS, namespace, version=version, seconds=remaining)
                ) as events:
                    async for kind, obj in events:
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if kind != "BOOKMARK" and (why := judge(obj)):
                            return Observed(early=why)
                        if time.monotonic() >= deadline:
                            break
            except (ApiError, TransientError) as exc:
                if isinstance(exc, ApiError) and exc.status == 410:
                    version = None  # too old to resume: list again
                    continue
                failure, version = describe(exc), None
                await asyncio.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
        if failure is None:
            return Observed()
        try:  # the last attempt failed: the round counts only with a look at the state at its end
            listed = await self.api.list(DEPLOYMENTS, namespace, timeout=10)
        except (TransientError, ApiError) as exc:
            return Observed(lost=describe(exc))
        return next((Observed(early=why) for obj in listed.get("items") or [] if (why := judge(obj))), Observed())

    async def wait_rollout(self, name: str, *, namespace: str, timeout: float, sink: EventSink, status_of: Any) -> Any:
        """Follow a Deployment by watch until `status_of(deployment)` says done or failed, or `timeout` passes."""
        deadline, said = time.monotonic() + timeout, [""]

        def judge(deployment: dict[str, Any]) -> Any:
            state = status_of(deployment)
            if state.message != said[-1]:
                sink(Event("rollout", state.message))
                said.append(state.message)
            return state

        try:
            async with contextlib.aclosing(self.api.follow(DEPLOYMENTS, namespace, name, deadline=deadline)) as states:
                async for deployment in states:
                    if (state := judge(deployment)).state.value != "waiting":
                        return state
        except ApiError as exc:
            raise DeployError(f"Deployment/{name}: {exc.message}", where=namespace) from None
        raise DeployError(f'deployment "{name}" did not roll out within {timeout:g}s ({said[-1]})', where=namespace)
