"""In-memory fakes of the release engine's ports (deployer/pipeline/ports.py), for engine tests in milliseconds.

They keep what the engine depends on and nothing else: objects by kind and name (each field manager's last
apply merged, as server-side apply keeps other managers' fields and drops what a manager stops applying; a
Deployment is rolled out at once unless its
image is told otherwise), pods made up from Deployments, VirtualServices read back as stored. Every change
(apply, delete, record save) is logged, and a test may kill the "process" before any of them: `Killed` is a
BaseException, as a SIGKILL is not an error the engine could catch. The end-to-end truth is the sandbox suite.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from deployer.canary.analysis import Rollout, RolloutStatus
from deployer.errors import DeployError
from deployer.events import EventSink, Record
from deployer.kube.cluster import Observed
from deployer.pipeline.ports import Ports


class Killed(BaseException):
    """The deployer's process died here."""


@dataclass
class Op:
    what: str  # apply | delete | save
    kind: str
    name: str
    detail: dict[str, Any] = field(default_factory=dict)


class World:
    """What the fakes share: the change log and the kill switch."""

    def __init__(self) -> None:
        self.log: list[Op] = []
        self.kill_at: int | None = None  # die before the change with this index

    def change(self, op: Op) -> None:
        if self.kill_at is not None and len(self.log) == self.kill_at:
            raise Killed(f"killed before change {self.kill_at}: {op.what} {op.kind}/{op.name}")
        self.log.append(op)


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def image_of(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def _matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class FakeCluster:
    def __init__(self, world: World, *, namespace: str) -> None:
        self.world, self.namespace = world, namespace
        self.cluster_scoped: frozenset[str] = frozenset()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        # per object, each field manager's last applied configuration: as with server-side apply, a field a
        # manager stops applying goes unless another manager applies it
        self.applied: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.served = {("networking.istio.io/v1", "VirtualService")}
        self.never_ready: set[str] = set()  # images whose rollout exceeds its progress deadline
        self.stuck: set[tuple[str, str]] = set()  # (Deployment, image) pairs whose rollout exceeds it
        self.failing: set[str] = set()  # images whose pods go unready during a canary interval
        self.sidecars = True
        self.watch_lost = False

    # --- the port -----------------------------------------------------------------------------------------
    async def serves(self, api_version: str, kind: str) -> bool:
        return (api_version, kind) in self.served

    async def apply(
        self, objects: list[dict[str, Any]], *, namespace: str, dry_run: bool = False, manager: str | None = None
    ) -> list[dict[str, Any]]:
        assert namespace == self.namespace
        out = []
        for obj in objects:
            key = (obj["kind"], obj["metadata"]["name"])
            if dry_run:
                out.append(copy.deepcopy(obj))
                continue
            owner = manager or "deployer"
            self.world.change(Op("apply", *key, {"manager": owner, "obj": copy.deepcopy(obj)}))
            configs = self.applied.setdefault(key, {})
            configs.pop(owner, None)
            configs[owner] = copy.deepcopy(obj)  # the latest apply wins where managers set the same field
            old = self.objects.get(key)
            stored: dict[str, Any] = {}
            for config in configs.values():
                _merge(stored, config)
            meta = (old or {}).get("metadata") or {}
            stored["metadata"]["generation"] = meta.get("generation", 0) + (
                old is None or stored.get("spec") != old.get("spec")
            )
            if "managedFields" in meta:
                stored["metadata"]["managedFields"] = meta["managedFields"]
            self.objects[key] = stored
            if obj["kind"] == "Deployment":
                self._roll(stored)
            out.append(copy.deepcopy(stored))
        return out

    async def get(self, api_version: str, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found is not None else None

    async def delete(self, api_version: str, kind: str, *, namespace: str, name: str) -> bool:
        if (kind, name) not in self.objects:
            return False
        self.world.change(Op("delete", kind, name))
        del self.objects[(kind, name)]
        self.applied.pop((kind, name), None)
        return True

    async def owned(self, kinds: list[tuple[str, str]], *, namespace: str, selector: str) -> list[dict[str, Any]]:
        wanted = dict(part.split("=", 1) for part in selector.split(","))
        names = {kind for _, kind in kinds}
        return [
            copy.deepcopy(o)
            for (kind, _), o in sorted(self.objects.items())
            if kind in names and _matches(o["metadata"].get("labels") or {}, wanted)
        ]

    async def pods(self, *, namespace: str, selector: dict[str, str]) -> list[str]:
        return [p["metadata"]["name"] for p in await self.pod_objects(namespace=namespace, selector=selector)]

    async def pod_objects(self, *, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        pods = []
        for deployment in self.deployments():
            template = deployment["spec"]["template"]
            if not _matches(template["metadata"].get("labels") or {}, selector):
                continue
            for i in range(int(deployment["spec"].get("replicas", 1))):
                annotations = {"sidecar.istio.io/status": "{}"} if self.sidecars else {}
                pods.append(
                    {
                        "metadata": {
                            "name": f"{deployment['metadata']['name']}-{i}",
                            "labels": dict(template["metadata"]["labels"]),
                            "annotations": annotations,
                        },
                        "spec": copy.deepcopy(template["spec"]),
                    }
                )
        return pods

    async def until_unready(self, names: list[str], *, namespace: str, seconds: float) -> Observed:
        await asyncio.sleep(seconds)  # the interval passes (engine tests use intervals of 0s, or patch them short)
        if self.watch_lost:
            return Observed(lost="the watch ended and the API did not answer again")
        for name in names:
            live = self.objects.get(("Deployment", name))
            if live is not None and image_of(live) in self.failing:
                return Observed(early=f"pod {name}-0 of {name} became unready")
        return Observed()

    async def wait_rollout(self, name: str, *, namespace: str, timeout: float, sink: EventSink, status_of: Any) -> Any:
        live = self.objects.get(("Deployment", name))
        if live is None:
            raise DeployError(f"Deployment {name} does not exist", where=namespace)
        state: RolloutStatus = status_of(copy.deepcopy(live))
        if state.state is Rollout.WAITING:
            raise DeployError(f"timed out after {timeout:g}s: {state.message}", where=namespace)
        return state

    # --- what tests read ----------------------------------------------------------------------------------
    def deployments(self) -> list[dict[str, Any]]:
        return [o for (kind, _), o in sorted(self.objects.items()) if kind == "Deployment"]

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(("Deployment", name))

    def _roll(self, deployment: dict[str, Any]) -> None:
        replicas = int(deployment["spec"].get("replicas", 1))
        generation = deployment["metadata"]["generation"]
        image = image_of(deployment)
        if image in self.never_ready or (deployment["metadata"]["name"], image) in self.stuck:
            deployment["status"] = {
                "observedGeneration": generation,
                "replicas": replicas,
                "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
            }
            return
        deployment["status"] = {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
            "readyReplicas": replicas,
        }


class FakeRecords:
    def __init__(self, world: World) -> None:
        self.world = world
        self.stored: dict[int, Record] = {}
        self.requests: dict[int, str] = {}

    async def history(self) -> list[Record]:
        return [self.stored[r] for r in sorted(self.stored)]

    async def save(self, record: Record) -> None:
        self.world.change(Op("save", "Record", str(record.revision), {"status": record.status, "phase": record.phase}))
        self.stored[record.revision] = replace(record)

    async def request(self, revision: int, what: str) -> None:
        self.requests[revision] = what

    async def requested(self, revision: int, *, fresh: bool = False) -> str | None:
        return self.requests.get(revision)


class FakeLock:
    def __init__(self) -> None:
        self.held = False

    async def __aenter__(self) -> FakeLock:
        assert not self.held, "the lock is taken twice"
        self.held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.held = False

    def ensure_held(self) -> None:
        assert self.held


class FakeJobs:
    def __init__(self) -> None:
        self.failing: dict[str, str] = {}  # Job name prefix -> why it fails
        self.ran: list[str] = []

    async def run_job(
        self, job: dict[str, Any], *, namespace: str, timeout: float, sink: EventSink
    ) -> tuple[bool, str, tuple[str, ...]]:
        name = job["metadata"]["name"]
        self.ran.append(name)
        why = next((reason for prefix, reason in self.failing.items() if name.startswith(prefix)), None)
        return (why is None, why or "", ("last line of the Job's log",) if why else ())


class FakeProbes:
    def __init__(self) -> None:
        self.http: Callable[[], tuple[int, str]] = lambda: (200, "ok")
        self.metrics: dict[str, float | None] = {}  # a substring of the query -> its value
        self.asked: list[str] = []

    async def prometheus(self, url: str, expression: str) -> float | None:
        self.asked.append(expression)
        return next((v for k, v in self.metrics.items() if k in expression), None)

    async def http_gateway(
        self, url: str, *, host: str, path: str, headers: dict[str, str], timeout: float
    ) -> tuple[int, str]:
        self.asked.append(f"gateway {host}{path} {headers}")
        return self.http()

    async def http_pod(
        self, *, namespace: str, pod: str, port: int | str, path: str, timeout: float
    ) -> tuple[int, str]:
        self.asked.append(f"pod {pod}:{port}{path}")
        return self.http()

    async def http_mesh(
        self, url: str, *, headers: dict[str, str], proxy: str | None, timeout: float
    ) -> tuple[int, str]:
        self.asked.append(f"mesh {url} {headers} via {proxy}")
        return self.http()


@dataclass
class Fakes:
    """One environment's fake world, and its ports (a fresh lock for each operation, as each process has its own)."""

    namespace: str = "shop"
    world: World = field(default_factory=World)
    cluster: FakeCluster = field(init=False)
    records: FakeRecords = field(init=False)
    jobs: FakeJobs = field(default_factory=FakeJobs)
    probes: FakeProbes = field(default_factory=FakeProbes)

    def __post_init__(self) -> None:
        self.cluster = FakeCluster(self.world, namespace=self.namespace)
        self.records = FakeRecords(self.world)

    def ports(self) -> Ports:
        return Ports(cluster=self.cluster, records=self.records, lock=FakeLock(), jobs=self.jobs, probes=self.probes)
