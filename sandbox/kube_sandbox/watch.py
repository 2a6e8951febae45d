"""Watch streams as kube-apiserver serves them: resume from a resourceVersion, 410 when it is too old,
selector transitions as ADDED/DELETED, the watch-list protocol, bookmarks and timeoutSeconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from kube_sandbox.cluster import Cluster
from kube_sandbox.errors import bad_request
from kube_sandbox.resources import ResourceType
from kube_sandbox.selectors import Matcher, SelectorError, field_matcher, label_matcher
from kube_sandbox.store import Event

Item = dict[str, Any]


def _expired(rv: int, oldest: int) -> Item:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {rv} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }
    return {"type": "ERROR", "object": status}


@dataclass
class _View:
    """Which objects one watch sees, and how a store event looks through it."""

    cluster: Cluster
    rt: ResourceType
    version: str
    namespace: str | None
    labels: Matcher
    fields: Any

    def selected(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.rt.namespaced and self.namespace and meta.get("namespace") != self.namespace:
            return False
        return bool(self.labels(meta.get("labels") or {}) and self.fields(obj))

    def shown(self, event: Event) -> Item | None:
        """The event as this watch reports it: an object leaving the selection is DELETED, entering is ADDED."""
        if event.key[:2] != (self.rt.group, self.rt.plural):
            return None
        now_in, was_in = self.selected(event.obj), self.selected(event.old)
        if event.type == "DELETED" or not now_in:
            kind = "DELETED" if was_in else None
        else:
            kind = "MODIFIED" if was_in and event.type == "MODIFIED" else "ADDED"
        return {"type": kind, "object": self.cluster.present(self.rt, self.version, event.obj)} if kind else None

    def current(self) -> list[Item]:
        namespace = self.namespace if self.rt.namespaced else None
        return [
            {"type": "ADDED", "object": self.cluster.present(self.rt, self.version, obj)}
            for obj in self.cluster.store.items(self.rt.group, self.rt.plural, namespace)
            if self.selected(obj)
        ]

    def bookmark(self, rv: int, *, initial_end: bool = False) -> Item:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:  # the watch-list protocol (KEP-3157): a bookmark marks the end of the initial state
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": self.rt.kind, "apiVersion": self.rt.api_version(self.version), "metadata": meta},
        }


async def watch(
    cluster: Cluster,
    rt: ResourceType,
    version: str,
    namespace: str | None,
    *,
    resource_version: str | None,
    labels: str | None,
    field_selector: str | None,
    timeout: float,
    bookmarks: bool = False,
    send_initial: bool = False,
) -> AsyncGenerator[Item, None]:
    """Yield watch events (dicts with type and object) until the timeout or the stream is dropped."""
    try:
        view = _View(cluster, rt, version, namespace, label_matcher(labels), field_matcher(field_selector, rt.kind))
    except SelectorError as exc:
        raise bad_request(str(exc)) from None
    store = cluster.store
    queue: asyncio.Queue[Event | None] = asyncio.Queue()
    store.watch_queues.add(queue)
    try:
        last = store.rv
        if resource_version in (None, "", "0") or send_initial:
            for item in view.current():
                yield item
            if send_initial:
                yield view.bookmark(last, initial_end=True)
        else:
            start = _parse_rv(resource_version)
            if start < store.oldest_rv:
                yield _expired(start, store.oldest_rv)
                return
            for event in list(store.history):
                if event.rv > start and (replayed := view.shown(event)):
                    yield replayed
        async for item in _follow(view, queue, last=last, timeout=timeout, bookmarks=bookmarks):
            yield item
    finally:
        store.watch_queues.discard(queue)


async def _follow(
    view: _View, queue: asyncio.Queue[Event | None], *, last: int, timeout: float, bookmarks: bool
) -> AsyncGenerator[Item, None]:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            change = await asyncio.wait_for(queue.get(), timeout=min(remaining, 1.0 if bookmarks else remaining))
        except TimeoutError:
            if bookmarks:
                yield view.bookmark(view.cluster.store.rv)
            continue
        if change is None:  # the stream was dropped
            return
        if change.rv > last and (shown := view.shown(change)):
            yield shown


def _parse_rv(value: str | None) -> int:
    try:
        return int(value or "0")
    except ValueError:
        raise bad_request(f"invalid resource version: {value}") from None
