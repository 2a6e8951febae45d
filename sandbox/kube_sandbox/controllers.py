"""Simulated controllers: Deployment → ReplicaSet → Pods, Service → Endpoints, Jobs, namespace deletion and
garbage collection. Deterministic and fast; every write goes through the same API paths clients use."""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from kube_sandbox.auth import SA_NAME_ANNOTATION, SA_UID_ANNOTATION, TOKEN_SECRET, Tokens
from kube_sandbox.cluster import NODE, Cluster, now, random_suffix
from kube_sandbox.errors import ApiError
from kube_sandbox.pods import ready as pod_ready
from kube_sandbox.pods import target_port
from kube_sandbox.recorder import Events
from kube_sandbox.resources import ResourceType
from kube_sandbox.runtime import PodRuntime
from kube_sandbox.selectors import match_labels_selector
from kube_sandbox.store import Event, Key, clone

MANAGER = "kube-controller-manager"
log = logging.getLogger("kube_sandbox.controllers")
REVISION = "deployment.kubernetes.io/revision"


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def _owner_ref(owner: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _percent(value: Any, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value or 0)


def template_hash(template: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join("bcdfghjklmnpqrstvwxz2456789"[int(digest[i : i + 2], 16) % 27] for i in range(0, 20, 2))


ROOT_CA = "kube-root-ca.crt"


def _epoch(stamp: str) -> float:
    """An RFC 3339 time as the apiserver writes it (seconds, UTC) → seconds since the epoch."""
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


class Controllers:
    """Reacts to store events by reconciling the affected objects, one at a time."""

    def __init__(
        self, cluster: Cluster, runtime: PodRuntime, *, tokens: Tokens | None = None, ca_pem: bytes | None = None
    ) -> None:
        self.cluster = cluster
        self.events = Events(cluster)
        self.tokens = tokens
        self.ca_pem = ca_pem
        self.runtime = runtime
        self.queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        self.pending: set[tuple[str, str, str]] = set()
        self.dependents: dict[str, set[Key]] = {}  # owner uid -> keys of objects that name it (kept by _index)
        self.by_uid: dict[str, Key] = {}
        self.task: asyncio.Task[None] | None = None
        cluster.store.subscribers.append(self.on_event)
        runtime.bind(lambda namespace, name: self.enqueue("pods", namespace, name))

    def rt(self, plural: str) -> ResourceType:
        group = {"deployments": "apps", "replicasets": "apps", "jobs": "batch"}.get(plural, "")
        return self.cluster.rt(group, "v1", plural)

    def enqueue(self, plural: str, namespace: str, name: str) -> None:
        item = (plural, namespace, name)
        if item not in self.pending:
            self.pending.add(item)
            self.queue.put_nowait(item)

    def later(self, seconds: float, plural: str, namespace: str, name: str) -> None:
        asyncio.get_running_loop().call_later(max(seconds, 0.0), self.enqueue, plural, namespace, name)

    def start(self) -> None:
        for key in list(self.cluster.store.objects):
            self.on_event(Event(0, "ADDED", key, self.cluster.store.objects[key], None))
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            self.pending.discard(item)
            try:
                self.reconcile(*item)
            except ApiError:
                self.later(0.05, *item)  # a conflict with a client's write: try again shortly
            except Exception:  # a sandbox bug must not stop every controller: log it, retry later
                log.exception("controller failed on %s %s/%s", *item)
                self.later(1.0, *item)

    # --- event routing ---------------------------------------------------------------------------------------

    def _index(self, event: Event) -> None:
        """Owner uid -> dependents' keys, and uid -> key: garbage collection and finalizers look objects up by
        uid (a scan of every object per deletion was the sandbox's hot spot under many releases)."""
        gone = [event.old] if event.old is not None else []
        if event.type == "DELETED":
            gone.append(event.obj)
        for old in gone:
            for ref in old["metadata"].get("ownerReferences") or []:
                self.dependents.get(ref.get("uid", ""), set()).discard(event.key)
            self.by_uid.pop(old["metadata"].get("uid", ""), None)
        if event.type != "DELETED":
            for ref in event.obj["metadata"].get("ownerReferences") or []:
                self.dependents.setdefault(ref.get("uid", ""), set()).add(event.key)
            self.by_uid[event.obj["metadata"].get("uid", "")] = event.key

    def on_event(self, event: Event) -> None:
        group, plural, namespace, name = event.key
        obj = event.obj
        self._index(event)
        if (group, plural) in (
            ("apps", "deployments"),
            ("apps", "replicasets"),
            ("batch", "jobs"),
            ("", "pods"),
            ("", "services"),
            ("", "namespaces"),
            ("apiextensions.k8s.io", "customresourcedefinitions"),
        ):
            self.enqueue(plural, namespace, name)
        if plural == "secrets" and obj.get("type") == TOKEN_SECRET and event.type != "DELETED":
            self.enqueue("secrets", namespace, name)
        if self.ca_pem is not None and (plural == "namespaces" or (plural, name) == ("configmaps", ROOT_CA)):
            self.enqueue("root-ca", "", namespace or name)
        for ref in obj["metadata"].get("ownerReferences") or []:
            owner_plural = {"ReplicaSet": "replicasets", "Deployment": "deployments", "Job": "jobs"}.get(ref["kind"])
            if owner_plural:
                self.enqueue(owner_plural, namespace, ref["name"])
        if plural == "pods":
            for service in self.cluster.store.scan("", "services", namespace):
                self.enqueue("services", namespace, service["metadata"]["name"])
        if event.type == "DELETED":
            self.enqueue("gc", obj["metadata"].get("uid", ""), "")
            for ref in obj["metadata"].get("ownerReferences") or []:  # an owner may wait for its last dependent
                self.enqueue("finalize-uid", ref.get("uid", ""), "")
        elif obj["metadata"].get("deletionTimestamp"):
            self.enqueue("finalize-uid", obj["metadata"].get("uid", ""), "")

    # --- reconcilers -----------------------------------------------------------------------------------------

    def reconcile(self, plural: str, namespace: str, name: str) -> None:
        handler: Callable[[str, str], None] = {
            "deployments": self.deployment,
            "replicasets": self.replicaset,
            "pods": self.pod,
            "services": self.endpoints,
            "jobs": self.job,
            "namespaces": self.namespace,
            "customresourcedefinitions": self.crd,
            "secrets": self.token_secret,
            "root-ca": self.root_ca,
            "gc": self._collect_garbage,
            "finalize-uid": self._finalize_uid,
        }[plural]
        handler(namespace, name)

    def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        rt = self.rt(plural)
        return self.cluster.store.get(self.cluster.key(rt, namespace, name))

    def _owned(self, plural: str, namespace: str, owner: dict[str, Any]) -> list[dict[str, Any]]:
        rt = self.rt(plural)
        found = [
            o
            for o in self.cluster.store.scan(rt.group, rt.plural, namespace)
            if _owned_by(o, owner["metadata"]["uid"]) and not o["metadata"].get("deletionTimestamp")
        ]
        found.sort(key=lambda o: o["metadata"]["name"])
        return clone(found)

    def _status(self, plural: str, obj: dict[str, Any], status: dict[str, Any]) -> None:
        if obj.get("status") != status:
            meta = obj["metadata"]
            self.cluster.update(
                self.rt(plural),
                "v1",
                meta.get("namespace", ""),
                meta["name"],
                {**obj, "status": status},
                manager=MANAGER,
                subresource="status",
            )

    def _scale(self, d: dict[str, Any], rs: dict[str, Any], replicas: int, **annotations: str) -> None:
        meta = rs["metadata"]
        current = dict(meta.get("annotations") or {})
        wanted = {**current, **annotations}
        before = rs["spec"].get("replicas", 0)
        if before != replicas:  # deployment controller sync.go scaleReplicaSet
            direction = "up" if replicas > before else "down"
            message = f"Scaled {direction} replica set {meta['name']} from {before} to {replicas}"
            self.events.record("Deployment", d, "Normal", "ScalingReplicaSet", message, "deployment-controller")
        if before != replicas or wanted != current:
            patch = {"metadata": {"annotations": wanted}, "spec": {"replicas": replicas}}
            self.cluster.patch(
                self.rt("replicasets"),
                "v1",
                meta["namespace"],
                meta["name"],
                patch_type="merge",
                body=patch,
                manager=MANAGER,
            )

    def deployment(self, namespace: str, name: str) -> None:
        d = self._get("deployments", namespace, name)
        if d is None or d["metadata"].get("deletionTimestamp"):
            return
        spec = d["spec"]
        desired = spec.get("replicas", 1)
        pod_hash = template_hash(spec["template"])
        owned = self._owned("replicasets", namespace, d)
        new = next((rs for rs in owned if rs["metadata"].get("labels", {}).get("pod-template-hash") == pod_hash), None)
        old = [rs for rs in owned if rs is not new]
        revision = max([int((rs["metadata"].get("annotations") or {}).get(REVISION, "0")) for rs in owned] + [0])
        created = False
        if new is None and not spec.get("paused"):
            new = self._create_replicaset(d, pod_hash, revision + 1, desired if not old else 0)
            created = True
        strategy = spec.get("strategy") or {}
        max_surge = _percent((strategy.get("rollingUpdate") or {}).get("maxSurge", "25%"), desired, round_up=True)
        max_unavailable = _percent(
            (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%"), desired, round_up=False
        )
        if max_surge == 0 and max_unavailable == 0:
            max_unavailable = 1
        if new is not None and not spec.get("paused"):
            if strategy.get("type") == "Recreate":
                self._recreate(d, new, old, desired)
            else:
                self._roll(d, new, old, desired, max_surge, max_unavailable)
        self._deployment_status(d, new, old, max_unavailable=max_unavailable, created=created)

    def _create_replicaset(self, d: dict[str, Any], pod_hash: str, revision: int, replicas: int) -> dict[str, Any]:
        template = json.loads(json.dumps(d["spec"]["template"]))
        template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = pod_hash
        selector = json.loads(json.dumps(d["spec"]["selector"]))
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        meta = d["metadata"]
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta['name']}-{pod_hash}",
                "namespace": meta["namespace"],
                "labels": template["metadata"]["labels"],
                "annotations": {
                    REVISION: str(revision),
                    "deployment.kubernetes.io/desired-replicas": str(d["spec"]["replicas"]),
                },
                "ownerReferences": [_owner_ref(d, "apps/v1", "Deployment")],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": d["spec"].get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
        }
        created = self.cluster.create(self.rt("replicasets"), "v1", meta["namespace"], rs, manager=MANAGER)
        if replicas > 0:  # getNewReplicaSet
            message = f"Scaled up replica set {created['metadata']['name']} from 0 to {replicas}"
            self.events.record("Deployment", d, "Normal", "ScalingReplicaSet", message, "deployment-controller")
        return created

    def _roll(  # noqa: PLR0917 - the rolling update's inputs, as the deployment controller has them
        self,
        d: dict[str, Any],
        new: dict[str, Any],
        old: list[dict[str, Any]],
        desired: int,
        surge: int,
        unavailable: int,
    ) -> None:
        """One step of kube's rolling update: scale the new set up within maxSurge, then old sets down within
        maxUnavailable, unhealthy old pods first."""
        specs: dict[str, int] = {rs["metadata"]["name"]: rs["spec"].get("replicas", 0) for rs in [new, *old]}

        def available(rs: dict[str, Any]) -> int:  # never more than the set's size: its status may lag a scale-down
            return min(specs[rs["metadata"]["name"]], int((rs.get("status") or {}).get("availableReplicas", 0)))

        name = new["metadata"]["name"]
        target = specs[name]
        if target < desired:
            target = min(desired, target + max(0, desired + surge - sum(specs.values())))
        target = min(target, desired)
        self._scale(d, new, target, **{"deployment.kubernetes.io/desired-replicas": str(desired)})
        specs[name] = target
        min_available = desired - unavailable
        budget = sum(specs.values()) - min_available - (target - available(new))
        oldest_first = sorted(old, key=lambda r: r["metadata"]["creationTimestamp"])
        for rs in oldest_first:
            unhealthy = specs[rs["metadata"]["name"]] - available(rs)
            cut = min(max(budget, 0), max(unhealthy, 0))
            specs[rs["metadata"]["name"]] -= cut
            budget -= cut
        spare = sum(available(rs) for rs in [new, *old]) - min_available
        for rs in oldest_first:
            cut = min(specs[rs["metadata"]["name"]], max(spare, 0))
            specs[rs["metadata"]["name"]] -= cut
            spare -= cut
            if specs[rs["metadata"]["name"]] != rs["spec"].get("replicas", 0):
                self._scale(d, rs, specs[rs["metadata"]["name"]])

    def _recreate(self, d: dict[str, Any], new: dict[str, Any], old: list[dict[str, Any]], desired: int) -> None:
        for rs in old:
            self._scale(d, rs, 0)
        if all((rs.get("status") or {}).get("replicas", 0) == 0 for rs in old):
            self._scale(d, new, desired)

    def _deployment_status(
        self,
        d: dict[str, Any],
        new: dict[str, Any] | None,
        old: list[dict[str, Any]],
        *,
        max_unavailable: int,
        created: bool,
    ) -> None:
        """Status as the deployment controller's calculateStatus sets it."""
        desired = d["spec"].get("replicas", 1)
        sets = [rs for rs in [new, *old] if rs is not None]

        def stat(rs: dict[str, Any], key: str) -> int:
            return int((rs.get("status") or {}).get(key, 0))

        available = sum(stat(rs, "availableReplicas") for rs in sets)
        total_spec = sum(rs["spec"].get("replicas", 0) for rs in sets)
        status: dict[str, Any] = {
            "observedGeneration": d["metadata"].get("generation", 1),
            "replicas": sum(stat(rs, "replicas") for rs in sets),
            "updatedReplicas": stat(new, "replicas") if new else 0,
            "readyReplicas": sum(stat(rs, "readyReplicas") for rs in sets),
            "availableReplicas": available,
        }
        if total_spec - available > 0:
            status["unavailableReplicas"] = total_spec - available
        status = {k: v for k, v in status.items() if v or k == "observedGeneration"}
        previous = {c["type"]: c for c in (d.get("status") or {}).get("conditions") or []}
        minimum = available >= desired - max_unavailable
        availability = (
            ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
            if minimum
            else ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        )
        conditions = [
            _condition(previous.get("Available"), "Available", availability),
            self._progressing(d, new, old, previous=previous.get("Progressing"), status=status, created=created),
        ]
        status["conditions"] = conditions
        self._status("deployments", d, status)
        if new is not None:
            revision = (new["metadata"].get("annotations") or {}).get(REVISION)
            if revision and (d["metadata"].get("annotations") or {}).get(REVISION) != revision:
                meta = d["metadata"]
                self.cluster.patch(
                    self.rt("deployments"),
                    "v1",
                    meta["namespace"],
                    meta["name"],
                    patch_type="merge",
                    body={"metadata": {"annotations": {REVISION: revision}}},
                    manager=MANAGER,
                )

    def _progressing(
        self,
        d: dict[str, Any],
        new: dict[str, Any] | None,
        old: list[dict[str, Any]],
        *,
        previous: dict[str, Any] | None,
        status: dict[str, Any],
        created: bool,
    ) -> dict[str, Any]:
        """The Progressing condition, with the reasons and the deadline the deployment controller uses."""
        desired = d["spec"].get("replicas", 1)
        rs_name = new["metadata"]["name"] if new else ""
        old_pods = sum((rs.get("status") or {}).get("replicas", 0) for rs in old)
        counts = ("updatedReplicas", "replicas", "availableReplicas")
        if all(status.get(f, 0) == desired for f in counts) and old_pods == 0:
            return _condition(
                previous,
                "Progressing",
                ("True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.'),
            )
        if previous and previous.get("reason") == "ProgressDeadlineExceeded":
            return previous
        before = d.get("status") or {}
        moved = any(before.get(f) != status.get(f) for f in (*counts, "readyReplicas"))
        if created:
            cond = _condition(
                previous,
                "Progressing",
                ("True", "NewReplicaSetCreated", f'Created new replica set "{rs_name}"'),
                touch=True,
            )
        elif moved and previous is not None:
            cond = _condition(
                previous,
                "Progressing",
                ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.'),
                touch=True,
            )
        else:
            cond = previous or _condition(
                None, "Progressing", ("True", "FoundNewReplicaSet", f'Found new replica set "{rs_name}"')
            )
        deadline = d["spec"].get("progressDeadlineSeconds", 600)
        last = _epoch(cond["lastUpdateTime"])
        if time.time() - last > deadline:
            return _condition(
                previous,
                "Progressing",
                ("False", "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.'),
            )
        meta = d["metadata"]
        self.later(last + deadline - time.time() + 0.01, "deployments", meta["namespace"], meta["name"])
        return cond

    def replicaset(self, namespace: str, name: str) -> None:
        rs = self._get("replicasets", namespace, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        pods = self._owned("pods", namespace, rs)
        wanted = rs["spec"].get("replicas", 1)
        for _ in range(wanted - len(pods)):
            self._create_pod(rs, "ReplicaSet", "apps/v1", rs["spec"]["template"])
        if len(pods) > wanted:
            unready_first = sorted(pods, key=lambda p: (pod_ready(p), p["metadata"]["creationTimestamp"]))
            doomed = unready_first[: len(pods) - wanted]
            for pod in doomed:
                self.cluster.delete(self.rt("pods"), "v1", namespace, pod["metadata"]["name"])
                message = f"Deleted pod: {pod['metadata']['name']}"
                self.events.record("ReplicaSet", rs, "Normal", "SuccessfulDelete", message, "replicaset-controller")
            pods = [p for p in pods if p not in doomed]
        ready = sum(1 for p in pods if pod_ready(p))
        status = {
            "replicas": len(pods),
            "fullyLabeledReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        self._status(
            "replicasets", rs, {k: v for k, v in status.items() if v or k in ("replicas", "observedGeneration")}
        )

    def _create_pod(self, owner: dict[str, Any], kind: str, api_version: str, template: dict[str, Any]) -> None:
        meta = owner["metadata"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{random_suffix()}",
                "namespace": meta["namespace"],
                "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [_owner_ref(owner, api_version, kind)],
            },
            "spec": json.loads(json.dumps(template.get("spec") or {})),
        }
        made = self.cluster.create(self.rt("pods"), "v1", meta["namespace"], pod, manager=MANAGER)
        component = "job-controller" if kind == "Job" else "replicaset-controller"  # controller_utils.go CreatePods
        self.events.record(
            kind, owner, "Normal", "SuccessfulCreate", f"Created pod: {made['metadata']['name']}", component
        )

    def pod(self, namespace: str, name: str) -> None:
        pod = self._get("pods", namespace, name)
        if pod is None:
            self.runtime.forget(namespace, name)
            return
        if not pod["spec"].get("nodeName"):  # the scheduler binds it to the one node first
            pod = self.cluster.bind(namespace, name, NODE)
            if pod is None:
                return
            message = f"Successfully assigned {namespace}/{name} to {NODE}"
            self.events.record("Pod", pod, "Normal", "Scheduled", message, "default-scheduler")
        status = self.runtime.status(pod)
        if status is not None and status != pod.get("status"):
            self.events.kubelet(pod, pod.get("status") or {}, status)
            self.cluster.update(
                self.rt("pods"),
                "v1",
                namespace,
                name,
                {**pod, "status": status},
                manager="kubelet",
                subresource="status",
            )

    def endpoints(self, namespace: str, name: str) -> None:
        service = self._get("services", namespace, name)
        selector = (service or {}).get("spec", {}).get("selector")
        rt = self.cluster.rt("", "v1", "endpoints")
        existing = self.cluster.store.get(self.cluster.key(rt, namespace, name))
        if service is None or not selector:
            return
        match = match_labels_selector({"matchLabels": selector})
        pods = [
            p
            for p in sorted(self.cluster.store.scan("", "pods", namespace), key=lambda p: p["metadata"]["name"])
            if match(p["metadata"].get("labels") or {})
            and (p.get("status") or {}).get("podIP")
            and not p["metadata"].get("deletionTimestamp")
        ]

        def address(p: dict[str, Any]) -> dict[str, Any]:
            ref = {"kind": "Pod", "namespace": namespace, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]}
            return {"ip": p["status"]["podIP"], "nodeName": NODE, "targetRef": ref}

        ready = [address(p) for p in pods if pod_ready(p)]
        not_ready = [address(p) for p in pods if not pod_ready(p)]
        ports = [
            {"name": port.get("name"), "port": target_port(port, pods), "protocol": port.get("protocol", "TCP")}
            for port in service["spec"].get("ports") or []
        ]
        subset: dict[str, Any] = {"ports": [{k: v for k, v in p.items() if v is not None} for p in ports]}
        if ready:
            subset["addresses"] = ready
        if not_ready:
            subset["notReadyAddresses"] = not_ready
        body = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": name, "namespace": namespace, "labels": service["metadata"].get("labels") or {}},
            "subsets": [subset] if pods else [],
        }
        if existing is None:
            self.cluster.create(rt, "v1", namespace, body, manager=MANAGER)
        elif existing.get("subsets") != body["subsets"]:
            self.cluster.update(rt, "v1", namespace, name, {**existing, "subsets": body["subsets"]}, manager=MANAGER)

    def job(self, namespace: str, name: str) -> None:
        job = self._get("jobs", namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        status = dict(job.get("status") or {})
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in status.get("conditions") or []):
            self._job_ttl(job)
            return
        pods = self._owned("pods", namespace, job)
        phases = [(p.get("status") or {}).get("phase") for p in pods]
        succeeded, failed = phases.count("Succeeded"), phases.count("Failed")
        active = len(pods) - succeeded - failed
        spec = job["spec"]
        status.setdefault("startTime", now())
        if self._job_deadline(job, pods, status, succeeded=succeeded, failed=failed):
            return
        if succeeded >= spec.get("completions", 1):
            stamp = now()
            status.update(
                succeeded=succeeded,
                completionTime=stamp,
                conditions=[
                    {
                        "type": "SuccessCriteriaMet",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "message": "Reached expected number of succeeded pods",
                        "lastProbeTime": stamp,
                        "lastTransitionTime": stamp,
                    },
                    {
                        "type": "Complete",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "message": "Reached expected number of succeeded pods",
                        "lastProbeTime": stamp,
                        "lastTransitionTime": stamp,
                    },
                ],
            )
            status.pop("active", None)
            self.events.record("Job", job, "Normal", "Completed", "Job completed", "job-controller")
        elif failed > spec.get("backoffLimit", 6):
            stamp = now()
            status.update(
                failed=failed,
                conditions=[
                    {
                        "type": "FailureTarget",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                        "lastProbeTime": stamp,
                        "lastTransitionTime": stamp,
                    },
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                        "lastProbeTime": stamp,
                        "lastTransitionTime": stamp,
                    },
                ],
            )
            status.pop("active", None)
            message = "Job has reached the specified backoff limit"
            self.events.record("Job", job, "Warning", "BackoffLimitExceeded", message, "job-controller")
        else:
            if active == 0:
                self._create_pod(job, "Job", "batch/v1", spec["template"])
                active = 1
            status.update(active=active)
            if failed:
                status["failed"] = failed
            if succeeded:
                status["succeeded"] = succeeded
        status["ready"] = sum(1 for p in pods if pod_ready(p))
        self._status("jobs", job, status)

    def _job_deadline(
        self, job: dict[str, Any], pods: list[dict[str, Any]], status: dict[str, Any], *, succeeded: int, failed: int
    ) -> bool:
        """pkg/controller/job/job_controller.go: past activeDeadlineSeconds the Job fails (FailureTarget, then
        Failed, reason DeadlineExceeded) and its active pods are deleted. True when it did."""
        spec, meta = job["spec"], job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is None or succeeded >= spec.get("completions", 1):
            return False
        left = _epoch(status["startTime"]) + deadline - time.time()
        if left > 0:
            self.later(left + 0.01, "jobs", namespace, name)
            return False
        stamp = now()
        message = "Job was active longer than specified deadline"
        status["conditions"] = [
            {
                "type": kind,
                "status": "True",
                "reason": "DeadlineExceeded",
                "message": message,
                "lastProbeTime": stamp,
                "lastTransitionTime": stamp,
            }
            for kind in ("FailureTarget", "Failed")
        ]
        status.pop("active", None)
        if failed:
            status["failed"] = failed
        for pod in pods:
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                self.cluster.delete(self.rt("pods"), "v1", namespace, pod["metadata"]["name"])
        self.events.record("Job", job, "Warning", "DeadlineExceeded", message, "job-controller")
        status["ready"] = 0
        self._status("jobs", job, status)
        return True

    def _job_ttl(self, job: dict[str, Any]) -> None:
        """pkg/controller/ttlafterfinished: a finished Job with ttlSecondsAfterFinished is deleted that long after
        it finished (completionTime, or the Failed condition's time), in the foreground, on its uid."""
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        status = job.get("status") or {}
        finished = status.get("completionTime") or next(
            (c.get("lastTransitionTime") for c in status.get("conditions") or [] if c["type"] == "Failed"), None
        )
        if finished is None:
            return
        meta = job["metadata"]
        left = _epoch(finished) + ttl - time.time()
        if left > 0:
            self.later(left + 0.01, "jobs", meta["namespace"], meta["name"])
            return
        with contextlib.suppress(ApiError):  # gone or replaced meanwhile: nothing of this Job to delete
            self.cluster.delete(
                self.rt("jobs"),
                "v1",
                meta["namespace"],
                meta["name"],
                options={"propagationPolicy": "Foreground", "preconditions": {"uid": meta["uid"]}},
            )

    def namespace(self, namespace: str, name: str) -> None:
        ns = self.cluster.store.get(("", "namespaces", "", name))
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        remaining = [k for k in self.cluster.store.objects if k[2] == name]
        for key in remaining:
            rt = self.cluster.registry.get(key[0], self.cluster.registry.groups()[key[0]][0], key[1])
            if rt is not None and not self.cluster.store.objects[key]["metadata"].get("deletionTimestamp"):
                self.cluster.delete(rt, rt.storage_version, name, key[3])
        if not [k for k in self.cluster.store.objects if k[2] == name]:
            self.cluster.store.delete(("", "namespaces", "", name))
        else:
            self.later(0.05, "namespaces", "", name)

    def token_secret(self, namespace: str, name: str) -> None:
        """kube-controller-manager's TokensController: a Secret of type service-account-token gets its account's
        token, the namespace and the account's uid; a Secret whose account does not exist is deleted
        (pkg/controller/serviceaccount/tokens_controller.go). No ca.crt: the sandbox serves plain HTTP."""
        secret = self._get("secrets", namespace, name)
        if secret is None or self.tokens is None or (secret.get("data") or {}).get("token"):
            return
        annotations = secret["metadata"].get("annotations") or {}
        account = self._get("serviceaccounts", namespace, annotations.get(SA_NAME_ANNOTATION, ""))
        rt = self.rt("secrets")
        wanted_uid = annotations.get(SA_UID_ANNOTATION)
        if account is None or (wanted_uid and wanted_uid != account["metadata"]["uid"]):
            self.cluster.delete(rt, "v1", namespace, name)
            return
        token = self.tokens.legacy(account, name)
        updated = clone(secret)
        updated["metadata"].setdefault("annotations", {})[SA_UID_ANNOTATION] = account["metadata"]["uid"]
        updated["data"] = {
            **(secret.get("data") or {}),
            "token": base64.b64encode(token.encode()).decode(),
            "namespace": base64.b64encode(namespace.encode()).decode(),
        }
        if self.ca_pem is not None:
            updated["data"]["ca.crt"] = base64.b64encode(self.ca_pem).decode()
        self.cluster.update(rt, "v1", namespace, name, updated, manager="kube-controller-manager")

    def root_ca(self, _: str, namespace: str) -> None:
        """kube-controller-manager's root-ca-cert-publisher: `kube-root-ca.crt` in every namespace holds the
        cluster's CA, put back when deleted or changed (pkg/controller/certificates/rootcacertpublisher)."""
        ns = self.cluster.store.peek(("", "namespaces", "", namespace))
        if ns is None or ns["metadata"].get("deletionTimestamp") or self.ca_pem is None:
            return
        wanted = {"ca.crt": self.ca_pem.decode()}
        rt = self.rt("configmaps")
        found = self.cluster.store.peek(("", "configmaps", namespace, ROOT_CA))
        if found is None:
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ROOT_CA}, "data": wanted}
            self.cluster.create(rt, "v1", namespace, body, manager="kube-controller-manager")
        elif found.get("data") != wanted:
            updated = clone(found)
            updated["data"] = wanted
            self.cluster.update(rt, "v1", namespace, ROOT_CA, updated, manager="kube-controller-manager")

    def crd(self, _: str, name: str) -> None:
        """What apiextensions-apiserver's NamingConditionController and EstablishingController write
        (staging/src/k8s.io/apiextensions-apiserver/pkg/controller/status/naming_controller.go,
        establish/establishing_controller.go): the names accepted, NamesAccepted and Established true, and the
        storage version among storedVersions."""
        rt = self.cluster.rt("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        crd = self.cluster.store.get(self.cluster.key(rt, "", name))
        if crd is None or crd["metadata"].get("deletionTimestamp"):
            return
        status = dict(crd.get("status") or {})
        names = crd["spec"]["names"]
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        stamp = now()
        for kind, reason, message in (
            ("NamesAccepted", "NoConflicts", "no conflicts found"),
            ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ):
            if conditions.get(kind, {}).get("status") != "True":
                conditions[kind] = {
                    "type": kind,
                    "status": "True",
                    "lastTransitionTime": stamp,
                    "reason": reason,
                    "message": message,
                }
        storage = next((v["name"] for v in crd["spec"].get("versions") or [] if v.get("storage")), None)
        stored = list(status.get("storedVersions") or [])
        if storage and storage not in stored:
            stored.append(storage)
        wanted = {
            **status,
            "conditions": [conditions[k] for k in ("NamesAccepted", "Established")]
            + [c for k, c in conditions.items() if k not in ("NamesAccepted", "Established")],
            "acceptedNames": names,
            "storedVersions": stored,
        }
        for served in crd["spec"].get("versions") or []:
            if served.get("served"):
                self.cluster.local_api_service(crd["spec"]["group"], served["name"])
        if crd.get("status") != wanted:
            # these controllers run inside kube-apiserver, whose writes name it as their manager
            self.cluster.update(
                rt, "v1", "", name, {**crd, "status": wanted}, manager="kube-apiserver", subresource="status"
            )

    # --- garbage collection and finalizers -------------------------------------------------------------------

    def _dependents(self, uid: str) -> list[Key]:
        objects = self.cluster.store.objects
        return [k for k in sorted(self.dependents.get(uid, ())) if k in objects and _owned_by(objects[k], uid)]

    def _finalize_uid(self, uid: str, _: str) -> None:
        key = self.by_uid.get(uid)
        if key is None or (obj := self.cluster.store.objects.get(key)) is None:
            return
        if obj["metadata"].get("uid") == uid and obj["metadata"].get("deletionTimestamp"):
            self._finalize(key, obj)

    def _collect_garbage(self, uid: str, _: str) -> None:
        """Delete the dependents of a deleted owner that have no owner left (background propagation)."""
        for dep_key in self._dependents(uid) if uid else []:
            dep = self.cluster.store.objects.get(dep_key)
            if dep is None:
                continue
            alive = [
                ref
                for ref in dep["metadata"]["ownerReferences"]
                if ref.get("uid") != uid
                and any(o["metadata"].get("uid") == ref.get("uid") for o in self.cluster.store.objects.values())
            ]
            rt = self.cluster.registry.get(dep_key[0], self.cluster.registry.groups()[dep_key[0]][0], dep_key[1])
            if rt is not None and not alive:
                self.cluster.delete(rt, rt.storage_version, dep_key[2], dep_key[3])

    def _finalize(self, key: Key, obj: dict[str, Any]) -> None:
        finalizers = list(obj["metadata"].get("finalizers") or [])
        uid = obj["metadata"]["uid"]
        rt = self.cluster.registry.get(key[0], self.cluster.registry.groups().get(key[0], ["v1"])[0], key[1])
        if rt is None:
            return
        dependents = self._dependents(uid)
        if "orphan" in finalizers:
            for dep_key in dependents:
                dep = self.cluster.store.objects[dep_key]
                refs = [r for r in dep["metadata"]["ownerReferences"] if r.get("uid") != uid]
                dep_rt = self.cluster.registry.get(
                    dep_key[0], self.cluster.registry.groups()[dep_key[0]][0], dep_key[1]
                )
                if dep_rt is not None:
                    self.cluster.patch(
                        dep_rt,
                        dep_rt.storage_version,
                        dep_key[2],
                        dep_key[3],
                        patch_type="merge",
                        body={"metadata": {"ownerReferences": refs or None}},
                        manager=MANAGER,
                    )
            finalizers.remove("orphan")
        elif "foregroundDeletion" in finalizers:
            if dependents:
                for dep_key in dependents:
                    dep_rt = self.cluster.registry.get(
                        dep_key[0], self.cluster.registry.groups()[dep_key[0]][0], dep_key[1]
                    )
                    if dep_rt is not None and not self.cluster.store.objects[dep_key]["metadata"].get(
                        "deletionTimestamp"
                    ):
                        self.cluster.delete(
                            dep_rt,
                            dep_rt.storage_version,
                            dep_key[2],
                            dep_key[3],
                            options={"propagationPolicy": "Foreground"},
                        )
                return
            finalizers.remove("foregroundDeletion")
        else:
            return
        self.cluster.patch(
            rt,
            rt.storage_version,
            key[2],
            key[3],
            patch_type="merge",
            body={"metadata": {"finalizers": finalizers or None}},
            manager=MANAGER,
        )


def _condition(
    previous: dict[str, Any] | None, kind: str, state: tuple[str, str, str], *, touch: bool = False
) -> dict[str, Any]:
    """A condition in state (status, reason, message); times move as the controllers move them."""
    status, reason, message = state
    if previous and previous["status"] == status and previous["reason"] == reason and not touch:
        return previous
    stamp = now()
    transition = previous["lastTransitionTime"] if previous and previous["status"] == status else stamp
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": stamp,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }
