"""Release records: one Secret per revision, like Helm's (docs/architecture.md §5); history capped.

Each record is mirrored, for people, as a `Release` object (deployer.dev/v1alpha1, charts/deployer/crds) of the
same name that `kubectl get releases` lists. The Secret stays the record of truth: the mirror is written behind
it, latest state first, never in a release's way, and a cluster without the CRD (or a Role without the right)
only turns it off, with one log line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
import time
from typing import Any

from deployer.errors import TransientError
from deployer.events import Record, Status
from deployer.kube.client import RELEASES, SECRETS, ApiError, KubeClient

TYPE = "deployer.dev/release.v1"
REQUEST = "deployer.dev/request"
MANAGER = "deployer"
MIRROR_FLUSH = 10.0  # seconds a release's end waits for its Release object to be written
RESULTS = {
    Status.PENDING: "Pending",
    Status.DEPLOYED: "Deployed",
    Status.FAILED: "Failed",
    Status.ROLLED_BACK: "RolledBack",
}
log = logging.getLogger("deployer.records")


def _name(app: str, environment: str, revision: int) -> str:
    return f"deployer.{app}.{environment}.v{revision}"


def release_name(app: str, environment: str, revision: int) -> str:
    """The Release object's name: APP.ENVIRONMENT.vREVISION (app and environment are DNS labels, so no two
    environments' names meet)."""
    return f"{app}.{environment}.v{revision}"


def _selector(app: str, environment: str) -> str:
    """The records of one environment, and their Release objects (both carry these labels)."""
    return f"owner=deployer,deployer.dev/app={app},deployer.dev/environment={environment}"


def _labels(app: str, environment: str, revision: int) -> dict[str, str]:
    return {
        "owner": "deployer",
        "deployer.dev/app": app,
        "deployer.dev/environment": environment,
        "deployer.dev/revision": str(revision),
    }


def _time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def release_object(record: Record, *, namespace: str, app: str, environment: str) -> dict[str, Any]:
    """The Release object that shows `record`."""
    spec: dict[str, Any] = {
        "app": app,
        "environment": environment,
        "revision": record.revision,
        "commit": record.commit,
        "shortCommit": record.commit[:12],
        "image": record.image,
        "pusher": record.pusher,
        "branch": record.branch,
    }
    if record.rollback_of is not None:
        spec["rollbackOf"] = record.rollback_of
    status: dict[str, Any] = {"result": RESULTS[record.status], "phase": record.where}
    if record.weights is not None:
        stable, canary = record.weights
        status |= {"weights": f"{stable}/{canary}", "stableWeight": stable, "canaryWeight": canary}
    if record.started:
        status["startTime"] = _time(record.started)
    if record.finished is not None:
        status["completionTime"] = _time(record.finished)
    if record.reason:
        status["reason"] = record.reason
    if record.restored is not None:
        status["restored"] = record.restored
    if record.rounds:
        status["rounds"] = [
            {
                "weight": r.weight,
                "ok": r.ok,
                "checks": [c.to_json() for c in r.checks],
            }
            for r in record.rounds
        ]
    return {
        "apiVersion": RELEASES.api_version,
        "kind": RELEASES.kind,
        "metadata": {
            "name": release_name(app, environment, record.revision),
            "namespace": namespace,
            "labels": _labels(app, environment, record.revision),
        },
        "spec": spec,
        "status": status,
    }


class Mirror:
    """The Release objects of one environment, written in the background: a burst of saves writes the latest."""

    def __init__(self, api: KubeClient, *, namespace: str, app: str, environment: str) -> None:
        self.api = api
        self.namespace, self.app, self.environment = namespace, app, environment
        self.off: str | None = None  # why it writes nothing (no CRD, no right)
        self._next: Record | None = None
        self._task: asyncio.Task[None] | None = None

    def put(self, record: Record) -> None:
        if self.off is not None:
            return
        self._next = record
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())

    async def flush(self, timeout: float = MIRROR_FLUSH) -> None:
        """Wait (a while) until what was put is written."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def _drain(self) -> None:
        while self._next is not None and self.off is None:
            record, self._next = self._next, None
            await self.write(record)

    async def write(self, record: Record) -> None:
        body = release_object(record, namespace=self.namespace, app=self.app, environment=self.environment)
        try:
            await self.api.apply(RELEASES, self.namespace, body, manager=MANAGER)
        except ApiError as exc:
            self._failed(exc)
        except (TransientError, OSError) as exc:
            log.warning("Release %s in %s not written: %s", body["metadata"]["name"], self.namespace, exc)

    def _failed(self, exc: ApiError) -> None:
        if exc.status == 404:  # the cluster does not serve deployer.dev/v1alpha1 releases
            self.off = "the Release CRD is not installed (charts/deployer/crds)"
            log.info("%s/%s: no Release objects: %s", self.app, self.environment, self.off)
        elif exc.status == 403:
            self.off = f"not allowed: {exc.message}"
            log.warning("%s/%s: no Release objects: %s", self.app, self.environment, self.off)
        else:
            log.warning("%s/%s: a Release object not written: %s", self.app, self.environment, exc.message)

    async def resync(self, records: list[Record]) -> int:
        """Make the Release objects what `records` say: missing or stale ones written, ones without a record
        deleted. Returns how many it changed."""
        if self.off is not None:
            return 0
        try:
            selector = _selector(self.app, self.environment)
            listed = (await self.api.list(RELEASES, self.namespace, labels=selector)).get("items") or []
        except ApiError as exc:
            self._failed(exc)
            return 0
        live = {item["metadata"]["name"]: item for item in listed}
        changed = 0
        for record in records:
            body = release_object(record, namespace=self.namespace, app=self.app, environment=self.environment)
            have = live.pop(body["metadata"]["name"], None)
            if have is None or have.get("spec") != body["spec"] or have.get("status") != body["status"]:
                await self.write(record)
                changed += 1
        for name in live:
            try:
                await self.api.delete(RELEASES, self.namespace, name)
            except ApiError as exc:
                self._failed(exc)
                break
            changed += 1
        return changed


class Records:
    """The release history of one (app, environment) in its namespace."""

    def __init__(self, api: KubeClient, *, namespace: str, app: str, environment: str, keep: int = 10) -> None:
        self.api = api
        self.namespace, self.app, self.environment, self.keep = namespace, app, environment, keep
        self._written: set[int] = set()
        self._requests: dict[int, str | None] = {}
        self.mirror = Mirror(api, namespace=namespace, app=app, environment=environment)

    @property
    def selector(self) -> str:
        return _selector(self.app, self.environment)

    async def history(self) -> list[Record]:
        """Every stored release, oldest first."""
        secrets = (await self.api.list(SECRETS, self.namespace, labels=self.selector)).get("items") or []
        records = [
            json.loads(gzip.decompress(base64.b64decode(base64.b64decode(s["data"]["release"]))))
            for s in secrets
            if (s.get("data") or {}).get("release")
        ]
        return sorted((Record.from_json(r) for r in records), key=lambda r: r.revision)

    async def save(self, record: Record) -> None:
        """Store `record`: created once, then merge-patched (one request; a promote/abort label survives).
        When the release has ended, the oldest records beyond `keep` are dropped."""
        revision = record.revision
        name = _name(self.app, self.environment, revision)
        labels = {**_labels(self.app, self.environment, revision), "deployer.dev/status": record.status.value}
        payload = base64.b64encode(gzip.compress(json.dumps(record.to_json(), sort_keys=True).encode())).decode()
        data = {"release": base64.b64encode(payload.encode()).decode()}
        patch: dict[str, Any] = {"metadata": {"labels": labels}, "data": data}
        if revision in self._written:
            stored = await self.api.patch(SECRETS, self.namespace, name, patch)
        else:
            body = {"apiVersion": "v1", "kind": "Secret", "type": TYPE, "metadata": {"name": name, "labels": labels}}
            try:
                stored = await self.api.create(SECRETS, self.namespace, {**body, "data": data})
            except ApiError as exc:
                if exc.status != 409:
                    raise
                stored = await self.api.patch(SECRETS, self.namespace, name, patch)
            self._written.add(revision)
        self._requests[revision] = ((stored.get("metadata") or {}).get("labels") or {}).get(REQUEST)
        self.mirror.put(record)
        if record.status is not Status.PENDING:
            await self._cap()
            await self.mirror.flush()

    async def resync(self) -> int:
        """The Release objects brought in step with the records (one deleted by hand is made again)."""
        return await self.mirror.resync(await self.history())

    async def _cap(self) -> None:
        secrets = (await self.api.list(SECRETS, self.namespace, labels=self.selector)).get("items") or []
        revisions = sorted(int(s["metadata"]["labels"]["deployer.dev/revision"]) for s in secrets)
        for old in revisions[: max(0, len(revisions) - self.keep)]:
            await self.api.delete(SECRETS, self.namespace, _name(self.app, self.environment, old))
            if self.mirror.off is None:
                with contextlib.suppress(ApiError):  # a mirror's delete never fails the release
                    await self.api.delete(RELEASES, self.namespace, release_name(self.app, self.environment, old))

    async def request(self, revision: int, what: str) -> None:
        """Ask the running release of `revision` to `promote` or `abort` (it reads this at every round)."""
        patch = {"metadata": {"labels": {REQUEST: what}}}
        await self.api.patch(SECRETS, self.namespace, _name(self.app, self.environment, revision), patch)

    async def requested(self, revision: int, *, fresh: bool = False) -> str | None:
        """`promote` or `abort` if someone asked for it, else None (as of the last write, when there was one,
        unless `fresh`)."""
        if revision in self._requests and not fresh:  # every write reads the labels back: no request per round
            return self._requests[revision]
        secret = await self.api.read(SECRETS, self.namespace, _name(self.app, self.environment, revision))
        return ((secret.get("metadata") or {}).get("labels") or {}).get(REQUEST)


async def pending_environments(api: KubeClient, *, namespace: str, app: str) -> list[str]:
    """Environments of `app` in `namespace` with a release still marked pending (left mid-flight)."""
    selector = f"owner=deployer,deployer.dev/app={app},deployer.dev/status=pending"
    listed = (await api.list(SECRETS, namespace, labels=selector)).get("items") or []
    return sorted({s["metadata"]["labels"]["deployer.dev/environment"] for s in listed})
