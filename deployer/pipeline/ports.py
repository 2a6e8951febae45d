"""The engine's ports: what a release needs of the world, as Protocols (docs/architecture.md §4).

The kube, health and Prometheus adapters implement them for a real cluster (`connect`); tests give the engine
in-memory fakes of the same Protocols (tests/fakes.py), so promote, rollback, abort and every recovery phase run
in milliseconds, beside the end-to-end tests on the sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from deployer.events import EventSink, Record, Status, discard
from deployer.kube.client import POD_PROXY, KubeClient
from deployer.kube.cluster import Kube, Observed
from deployer.kube.jobs import KubeJobRunner
from deployer.kube.lease import Lock, holder_identity
from deployer.kube.records import Records


class Cluster(Protocol):
    """One cluster, as the release engine uses it (the kube adapter's Kube)."""

    cluster_scoped: frozenset[str]  # cluster-scoped kinds the release may apply (render judged them)

    async def serves(self, api_version: str, kind: str) -> bool: ...

    async def apply(
        self, objects: list[dict[str, Any]], *, namespace: str, dry_run: bool = False, manager: str | None = None
    ) -> list[dict[str, Any]]: ...

    async def get(self, api_version: str, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def delete(self, api_version: str, kind: str, *, namespace: str, name: str) -> bool: ...

    async def owned(self, kinds: list[tuple[str, str]], *, namespace: str, selector: str) -> list[dict[str, Any]]: ...

    async def pods(self, *, namespace: str, selector: dict[str, str]) -> list[str]: ...

    async def pod_objects(self, *, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]: ...

    async def until_unready(self, names: list[str], *, namespace: str, seconds: float) -> Observed: ...

    async def wait_rollout(
        self, name: str, *, namespace: str, timeout: float, sink: EventSink, status_of: Any
    ) -> Any: ...


class History(Protocol):
    """An environment's release records (the kube adapter's Records)."""

    async def history(self) -> list[Record]: ...

    async def save(self, record: Record) -> None: ...

    async def request(self, revision: int, what: str) -> None: ...

    async def requested(self, revision: int, *, fresh: bool = False) -> str | None: ...


class EnvironmentLock(Protocol):
    """The environment's lock, held for a block (the kube adapter's Lease)."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def ensure_held(self) -> None: ...


class JobRunner(Protocol):
    async def run_job(
        self, job: dict[str, Any], *, namespace: str, timeout: float, sink: EventSink
    ) -> tuple[bool, str, tuple[str, ...]]: ...


class Probes(Protocol):
    """How checks ask: Prometheus, HTTP through the ingress gateway, from inside the mesh, or through the API
    server's pod proxy."""

    async def prometheus(self, url: str, expression: str) -> float | None: ...

    async def http_gateway(
        self, url: str, *, host: str, path: str, headers: dict[str, str], timeout: float
    ) -> tuple[int, str]: ...

    async def http_pod(
        self, *, namespace: str, pod: str, port: int | str, path: str, timeout: float
    ) -> tuple[int, str]: ...

    async def http_mesh(
        self, url: str, *, headers: dict[str, str], proxy: str | None, timeout: float
    ) -> tuple[int, str]: ...


@dataclass(frozen=True)
class Ports:
    """Everything one environment's release, replay or recovery talks to."""

    cluster: Cluster
    records: History
    lock: EnvironmentLock
    jobs: JobRunner
    probes: Probes


class HealthProbes:
    """Probes through the health adapter."""

    def __init__(self, api: KubeClient) -> None:
        self.api = api

    async def prometheus(self, url: str, expression: str) -> float | None:
        from deployer.health import query_prometheus  # noqa: PLC0415 - aiohttp loads only for checks

        return await query_prometheus(url, expression)

    async def http_gateway(
        self, url: str, *, host: str, path: str, headers: dict[str, str], timeout: float
    ) -> tuple[int, str]:
        from deployer.health import http_through_gateway  # noqa: PLC0415

        return await http_through_gateway(url, host=host, path=path, headers=headers, timeout=timeout)

    async def http_pod(
        self, *, namespace: str, pod: str, port: int | str, path: str, timeout: float
    ) -> tuple[int, str]:
        return await self.api.proxy(POD_PROXY, namespace, f"{pod}:{port}", path, timeout=timeout)

    async def http_mesh(
        self, url: str, *, headers: dict[str, str], proxy: str | None, timeout: float
    ) -> tuple[int, str]:
        from deployer.health import http_through_mesh  # noqa: PLC0415

        return await http_through_mesh(url, headers=headers, proxy=proxy, timeout=timeout)


async def cluster_ports(
    api: KubeClient,
    *,
    namespace: str,
    app: str,
    environment: str,
    wait: bool = True,
    timeout: float = 600.0,
    sink: EventSink = discard,
) -> Ports:
    """The ports of one environment on a real cluster. Its one lock is the Lease `deployer-<app>-<env>`; while
    it waits, it says which release holds the environment: "staging is being released: <commit> by <user>"."""
    records = Records(api, namespace=namespace, app=app, environment=environment)

    async def explain() -> str | None:
        busy = next((r for r in reversed(await records.history()) if r.status is Status.PENDING), None)
        if busy is None:
            return None
        return f"{environment} is being released: {busy.commit[:12]} by {busy.pusher or 'someone'}"

    lock = Lock(
        api,
        namespace=namespace,
        name=f"deployer-{app}-{environment}",
        holder=holder_identity(),
        wait=wait,
        timeout=timeout,
        sink=sink,
        explain=explain,
    )
    return Ports(cluster=Kube(api), records=records, lock=lock, jobs=KubeJobRunner(api), probes=HealthProbes(api))
