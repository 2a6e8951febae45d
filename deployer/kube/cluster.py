"""The cluster as the release engine uses it: server-side apply, reads, deletes, prune and rollout waits.

Calls run in threads (the official client is synchronous) and go through `call`, so 5xx, 429, timeouts and
connection errors are retried with backoff; anything else becomes a DeployError naming the object.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, dynamic, watch
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from deployer.errors import DeployError, TransientError
from deployer.events import Event, EventSink
from deployer.kube.jobs import call, watch_lost

MANAGER = "deployer"


@dataclass(frozen=True)
class Observed:
    """What a watch over an interval saw: a pod going unready (`early`), or no signal at its end (`lost`)."""

    early: str | None = None
    lost: str | None = None


def ref(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


class Kube:
    """One cluster, one field manager."""

    def __init__(self, api: client.ApiClient, *, manager: str = MANAGER) -> None:
        self.api = api
        self.manager = manager
        self.cluster_scoped: frozenset[str] = frozenset()  # cluster-scoped kinds a release may apply (render judged)
        self.dynamic = call(dynamic.DynamicClient, api)
        self.apps = client.AppsV1Api(api)

    def _resource(self, api_version: str, kind: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise DeployError(f"the cluster does not serve {kind} in {api_version}", where="cluster") from None

    def has_kind(self, api_version: str, kind: str) -> bool:
        try:
            self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            return False
        return True

    async def serves(self, api_version: str, kind: str) -> bool:
        return await asyncio.to_thread(self.has_kind, api_version, kind)

    async def apply(
        self, objects: list[dict[str, Any]], *, namespace: str, dry_run: bool = False, manager: str | None = None
    ) -> list[dict[str, Any]]:
        """Server-side apply each object in order (forcing: git is the source of truth for these fields).
        With `dry_run`, the cluster answers what it would store and stores nothing; `manager` applies as another
        field manager than the adapter's (fields that manager owns are left alone by the adapter's applies)."""
        owner = manager or self.manager
        return await asyncio.to_thread(lambda: [self._apply(obj, namespace, dry_run, owner) for obj in objects])

    def _apply(self, obj: dict[str, Any], namespace: str, dry_run: bool, manager: str) -> dict[str, Any]:
        resource = self._resource(obj["apiVersion"], obj["kind"])
        if not resource.namespaced and obj["kind"] not in self.cluster_scoped:
            raise DeployError(
                f"{ref(obj)}: the cluster serves {obj['kind']} cluster-scoped, and this release may not create "
                "cluster-scoped objects of that kind; a release stays in its namespace",
                where=namespace,
            )
        ns = namespace if resource.namespaced else None
        try:
            applied = call(
                resource.server_side_apply,
                body=obj,
                name=obj["metadata"]["name"],
                namespace=ns,
                field_manager=manager,
                force_conflicts=True,
                **({"dry_run": "All"} if dry_run else {}),
            )
        except client.ApiException as exc:
            message = _message(exc)
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
        return dict(applied.to_dict())

    async def get(self, api_version: str, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            try:
                return dict(call(self._resource(api_version, kind).get, name=name, namespace=namespace).to_dict())
            except NotFoundError:
                return None

        return await asyncio.to_thread(read)

    async def delete(self, api_version: str, kind: str, *, namespace: str, name: str) -> bool:
        """Delete with background propagation; False if it was not there."""

        def remove() -> bool:
            try:
                call(
                    self._resource(api_version, kind).delete,
                    name=name,
                    namespace=namespace,
                    body={"propagationPolicy": "Background"},
                )
            except NotFoundError:
                return False
            return True

        return await asyncio.to_thread(remove)

    async def owned(self, kinds: list[tuple[str, str]], *, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Namespaced objects of these kinds in `namespace` carrying the deployer's labels, for pruning: never a
        cluster-scoped one (labels alone do not make another namespace or a ClusterRole this release's)."""

        def list_all() -> list[dict[str, Any]]:
            found = []
            for api_version, kind in kinds:
                if self.has_kind(api_version, kind) and self._resource(api_version, kind).namespaced:
                    items = call(self._resource(api_version, kind).get, namespace=namespace, label_selector=selector)
                    found += [{"apiVersion": api_version, "kind": kind, **dict(i.to_dict())} for i in items.items]
            return found

        return await asyncio.to_thread(list_all)

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

        def listed() -> list[dict[str, Any]]:
            text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
            found = call(client.CoreV1Api(self.api).list_namespaced_pod, namespace, label_selector=text)
            return list(self.api.sanitize_for_serialization(found)["items"])

        return await asyncio.to_thread(listed)

    async def until_unready(self, names: list[str], *, namespace: str, seconds: float) -> Observed:
        """Watch these Deployments for the whole of `seconds`. Ends early only for an observed unready pod of one
        that was ready; a dropped or failed watch is resumed (relisting on 410) until the time is up, and if the
        API could not be read again before then, the signal is reported lost: a round that saw nothing."""
        return await asyncio.to_thread(self._follow, set(names), namespace, seconds)

    def _follow(self, names: set[str], namespace: str, seconds: float) -> Observed:
        deadline = time.monotonic() + seconds
        # per Deployment, once all its pods were ready: the most pods seen ready since, at most the replicas it
        # wants (an HPA's scale-up adds pods not yet ready, a scale-down removes ready ones: neither is a failure)
        peak: dict[str, int] = {}
        version: str | None = None
        lost: str | None = None

        def judge(obj: Any) -> str | None:
            name = obj.metadata.name
            if name not in names:
                return None
            wanted, ready = obj.spec.replicas or 0, (obj.status.ready_replicas if obj.status else 0) or 0
            before = peak.get(name)
            if before is not None and ready < min(before, wanted):
                return f"{name}: {ready}/{wanted} pods ready (a pod went unready)"
            if before is not None or ready >= wanted > 0:
                peak[name] = min(max(before or 0, ready), wanted)
            return None

        while (remaining := deadline - time.monotonic()) > 0:
            try:
                if version is None:  # (re)list: the state now, and where the next watch starts
                    listed = self.apps.list_namespaced_deployment(namespace, _request_timeout=min(remaining, 10))
                    version, lost = (listed.metadata.resource_version if listed.metadata else None) or "0", None
                    for obj in listed.items:
                        if why := judge(obj):
                            return Observed(early=why)
                for event in watch.Watch().stream(
                    self.apps.list_namespaced_deployment,
                    namespace,
                    resource_version=version,
                    timeout_seconds=max(1, math.ceil(remaining)),
                    _request_timeout=(min(remaining, 10), remaining + 5),
                ):
                    version = event["object"].metadata.resource_version or version
                    if why := judge(event["object"]):
                        return Observed(early=why)
                    if time.monotonic() >= deadline:
                        break
            except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                if isinstance(exc, client.ApiException) and exc.status == 410:
                    version = None  # too old to resume: list again
                    continue
                lost, version = _describe(exc), None
                time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
        if lost is None:
            return Observed()
        try:  # the last attempt failed: the round counts only with a look at the state at its end
            listed = call(self.apps.list_namespaced_deployment, namespace, _request_timeout=10)
        except (TransientError, client.ApiException) as exc:
            return Observed(lost=_describe(exc))
        return next((Observed(early=why) for obj in listed.items if (why := judge(obj))), Observed())

    async def wait_rollout(self, name: str, *, namespace: str, timeout: float, sink: EventSink, status_of: Any) -> Any:
        """Follow a Deployment by watch until `status_of(deployment)` says done or failed, or `timeout` passes."""
        return await asyncio.to_thread(self._wait, name, namespace, timeout, sink, status_of)

    def _wait(self, name: str, namespace: str, timeout: float, sink: EventSink, status_of: Any) -> Any:
        deadline, said = time.monotonic() + timeout, [""]

        def judge(deployment: Any) -> Any:
            state = status_of(self.api.sanitize_for_serialization(deployment))
            if state.message != said[-1]:
                sink(Event("rollout", state.message))
                said.append(state.message)
            return state

        while (remaining := deadline - time.monotonic()) > 0:
            current = call(self.apps.read_namespaced_deployment, name, namespace)
            if (state := judge(current)).state.value != "waiting":
                return state
            stream = watch.Watch().stream(
                self.apps.list_namespaced_deployment,
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=current.metadata.resource_version if current.metadata else None,
                timeout_seconds=max(1, int(min(remaining, 30))),
            )
            try:
                for event in stream:
                    if (state := judge(event["object"])).state.value != "waiting":
                        return state
                    if time.monotonic() > deadline:
                        break
            except (client.ApiException, urllib3.exceptions.HTTPError) as exc:
                if not watch_lost(exc):  # a lost watch: read the object again and watch anew
                    raise
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))  # not a busy loop on a failing API
        raise DeployError(f'deployment "{name}" did not roll out within {timeout:g}s ({said[-1]})', where=namespace)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TransientError):
        return str(exc)  # "HTTP 503 Service Unavailable", as the client said it
    if isinstance(exc, client.ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def _message(exc: client.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "").get("message", exc.reason))
    except (ValueError, TypeError):
        return f"HTTP {exc.status} {exc.reason}"
