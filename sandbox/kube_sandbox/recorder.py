"""Events, as the controllers, the scheduler and the kubelet record them (client-go tools/record): core/v1 Events
in the object's namespace, named `NAME.<hex nanoseconds>`, one per object, reason and message, whose count and
lastTimestamp rise when it happens again (events_cache.go aggregates by that key). `kubectl describe` and
`kubectl get events` read them.
"""

from __future__ import annotations

import time
from typing import Any

from kube_sandbox.cluster import NODE, Cluster, now
from kube_sandbox.errors import ApiError

EVENTS = ("", "v1", "events")
API_VERSIONS = {"Deployment": "apps/v1", "ReplicaSet": "apps/v1", "Job": "batch/v1", "Pod": "v1"}


class Events:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: dict[tuple[str, ...], str] = {}  # (uid, field path, type, reason, message, component) -> name

    def record(  # noqa: PLR0917 - the recorder's Eventf (object, type, reason, message) and its source
        self,
        kind: str,
        obj: dict[str, Any],
        kind_of_event: str,
        reason: str,
        message: str,
        component: str,
        *,
        field_path: str = "",
        host: str = "",
    ) -> None:
        """Best effort, as the recorder's: an event that cannot be written (its namespace is going) is dropped."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        key = (meta.get("uid", ""), field_path, kind_of_event, reason, message, component)
        rt = self.cluster.rt(*EVENTS)
        stamp = now()
        try:
            known = self.seen.get(key)
            existing = self.cluster.store.peek(("", "events", namespace, known)) if known else None
            if existing is not None:
                updated = {**existing, "count": int(existing.get("count", 1)) + 1, "lastTimestamp": stamp}
                self.cluster.update(rt, "v1", namespace, known or "", updated, manager=component)
                return
            involved = {
                "kind": kind,
                "namespace": meta.get("namespace", ""),
                "name": meta["name"],
                "uid": meta.get("uid", ""),
                "apiVersion": API_VERSIONS[kind],
                "resourceVersion": meta.get("resourceVersion", ""),
            }
            if field_path:
                involved["fieldPath"] = field_path
            source = {"component": component, **({"host": host} if host else {})}
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": namespace},
                "involvedObject": {k: v for k, v in involved.items() if v},
                "reason": reason,
                "message": message,
                "source": source,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
                "type": kind_of_event,
                "eventTime": None,
                "reportingComponent": component,
                "reportingInstance": host,
            }
            made = self.cluster.create(rt, "v1", namespace, event, manager=component)
            if len(self.seen) > 10000:  # client-go keeps an LRU of 4096; a plain dict, emptied when large, will do
                self.seen.clear()
            self.seen[key] = made["metadata"]["name"]
        except ApiError:
            return

    def kubelet(self, pod: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
        """What the kubelet reports as a pod's containers change state (kuberuntime and images' events)."""
        old = {c.get("name"): c for c in before.get("containerStatuses") or []}
        name = f"{pod['metadata']['name']}_{pod['metadata'].get('namespace', '')}({pod['metadata'].get('uid', '')})"
        for container in after.get("containerStatuses") or []:
            cname, image = container.get("name", ""), container.get("image", "")
            was = old.get(cname) or {}
            path = f"spec.containers{{{cname}}}"
            state, previous = container.get("state") or {}, was.get("state") or {}
            restarted = container.get("restartCount", 0) != was.get("restartCount", 0)
            if ("running" in state and "running" not in previous) or restarted:  # each (re)start of a container
                for reason, message in (
                    ("Pulled", f'Container image "{image}" already present on machine'),
                    ("Created", f"Created container: {cname}"),
                    ("Started", f"Started container {cname}"),
                ):
                    self.record("Pod", pod, "Normal", reason, message, "kubelet", field_path=path, host=NODE)
            waiting = (state.get("waiting") or {}).get("reason")
            if waiting == (previous.get("waiting") or {}).get("reason") and not restarted:
                continue
            if waiting == "ErrImagePull":
                detail = (state.get("waiting") or {}).get("message", "")
                message = f'Failed to pull image "{image}": {detail}'
                self.record("Pod", pod, "Warning", "Failed", message, "kubelet", field_path=path, host=NODE)
            elif waiting == "ImagePullBackOff":
                message = f'Back-off pulling image "{image}"'
                self.record("Pod", pod, "Normal", "BackOff", message, "kubelet", field_path=path, host=NODE)
            elif waiting == "CrashLoopBackOff":
                message = f"Back-off restarting failed container {cname} in pod {name}"
                self.record("Pod", pod, "Warning", "BackOff", message, "kubelet", field_path=path, host=NODE)
