"""Watch streams as kube-apiserver serves them: resume from a resourceVersion, 410 when it is too old,
selector transitions as ADDED/DELETED, bookmarks and timeoutSeconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from deployer.sandbox.cluster import Cluster
from deployer.sandbox.errors import bad_request
from deployer.sandbox.resources import ResourceType
from deployer.sandbox.selectors import SelectorError, field_matcher, label_matcher
from deployer.sandbox.store import Event


def _expired(rv: int, oldest: int) -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                        "message": f"too old resource version: {rv} ({oldest})", "reason": "Expired",
                                        "code": 410}}


async def watch(cluster: Cluster, rt: ResourceType, version: str, namespace: str | None, *,
                resource_version: str | None, labels: str | None, field_selector: str | None,
                timeout: float, bookmarks: bool = False, send_initial: bool = False,
                name: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """Yield watch events (dicts with type and object) until the timeout or the stream is dropped."""
    try:
        by_labels, by_fields = label_matcher(labels), field_matcher(field_selector, rt.kind)
    except SelectorError as exc:
        raise bad_request(str(exc)) from None
    store = cluster.store

    def selected(obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if rt.namespaced and namespace and meta.get("namespace") != namespace:
            return False
        if name and meta.get("name") != name:
            return False
        return by_labels(meta.get("labels") or {}) and by_fields(obj)

    def shown(event: Event) -> dict[str, Any] | None:
        if event.key[:2] != (rt.group, rt.plural):
            return None
        now_in, was_in = selected(event.obj), selected(event.old)
        if event.type == "DELETED":
            kind = "DELETED" if was_in else None
        elif now_in:
            kind = "MODIFIED" if was_in and event.type == "MODIFIED" else "ADDED"
        else:
            kind = "DELETED" if was_in else None
        return {"type": kind, "object": cluster.present(rt, version, event.obj)} if kind else None

    queue: asyncio.Queue[Event | None] = asyncio.Queue()
    store.watch_queues.add(queue)
    try:
        last = store.rv
        if resource_version in (None, "", "0") or send_initial:
            for obj in store.items(rt.group, rt.plural, namespace if rt.namespaced else None):
                if selected(obj):
                    yield {"type": "ADDED", "object": cluster.present(rt, version, obj)}
            if send_initial:  # the watch-list protocol (KEP-3157): a bookmark marks the end of the initial state
                yield {"type": "BOOKMARK", "object": {
                    "kind": rt.kind, "apiVersion": rt.api_version(version),
                    "metadata": {"resourceVersion": str(last), "annotations": {"k8s.io/initial-events-end": "true"}}}}
        else:
            try:
                start = int(resource_version)
            except ValueError:
                raise bad_request(f"invalid resource version: {resource_version}") from None
            if start < store.oldest_rv:
                yield _expired(start, store.oldest_rv)
                return
            for event in list(store.history):
                if event.rv > start and (item := shown(event)):
                    yield item
            last = max(start, store.rv)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=min(remaining, 1.0 if bookmarks else remaining))
            except TimeoutError:
                if bookmarks:
                    yield {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(version),
                                                          "metadata": {"resourceVersion": str(store.rv)}}}
                continue
            if event is None:
                return
            if event.rv > last and (item := shown(event)):
                yield item
    finally:
        store.watch_queues.discard(queue)

