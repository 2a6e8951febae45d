"""Release records: one Secret per revision, like Helm's (docs/architecture.md §5); history capped."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

from deployer.events import Record, Status
from deployer.kube.client import SECRETS, ApiError, KubeClient

TYPE = "deployer.dev/release.v1"
REQUEST = "deployer.dev/request"


def _name(app: str, environment: str, revision: int) -> str:
    return f"deployer.{app}.{environment}.v{revision}"


class Records:
    """The release history of one (app, environment) in its namespace."""

    def __init__(self, api: KubeClient, *, namespace: str, app: str, environment: str, keep: int = 10) -> None:
        self.api = api
        self.namespace, self.app, self.environment, self.keep = namespace, app, environment, keep
        self._written: set[int] = set()
        self._requests: dict[int, str | None] = {}

    @property
    def selector(self) -> str:
        return f"owner=deployer,deployer.dev/app={self.app},deployer.dev/environment={self.environment}"

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
        labels = {
            "owner": "deployer",
            "deployer.dev/app": self.app,
            "deployer.dev/environment": self.environment,
            "deployer.dev/revision": str(revision),
            "deployer.dev/status": record.status.value,
        }
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
        if record.status is not Status.PENDING:
            await self._cap()

    async def _cap(self) -> None:
        secrets = (await self.api.list(SECRETS, self.namespace, labels=self.selector)).get("items") or []
        revisions = sorted(int(s["metadata"]["labels"]["deployer.dev/revision"]) for s in secrets)
        for old in revisions[: max(0, len(revisions) - self.keep)]:
            await self.api.delete(SECRETS, self.namespace, _name(self.app, self.environment, old))

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
