"""Release records: one Secret per revision, like Helm's (DESIGN.md section 5); history capped."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json

from kubernetes import client

from deployer.events import Record, Status
from deployer.kube.jobs import call

TYPE = "deployer.dev/release.v1"
REQUEST = "deployer.dev/request"


def _name(app: str, environment: str, revision: int) -> str:
    return f"deployer.{app}.{environment}.v{revision}"


class Records:
    """The release history of one (app, environment) in its namespace."""

    def __init__(self, api: client.ApiClient, *, namespace: str, app: str, environment: str, keep: int = 10) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.app, self.environment, self.keep = namespace, app, environment, keep
        self._written: set[int] = set()
        self._requests: dict[int, str | None] = {}

    @property
    def selector(self) -> str:
        return f"owner=deployer,deployer.dev/app={self.app},deployer.dev/environment={self.environment}"

    async def history(self) -> list[Record]:
        """Every stored release, oldest first."""

        def read() -> list[Record]:
            listed = call(self.core.list_namespaced_secret, self.namespace, label_selector=self.selector)
            secrets = self.core.api_client.sanitize_for_serialization(listed)["items"]
            records = [
                json.loads(gzip.decompress(base64.b64decode(base64.b64decode(s["data"]["release"]))))
                for s in secrets
                if (s.get("data") or {}).get("release")
            ]
            return sorted((Record.from_json(r) for r in records), key=lambda r: r.revision)

        return await asyncio.to_thread(read)

    async def save(self, record: Record) -> None:
        """Store `record`: created once, then merge-patched (one request; a promote/abort label survives).
        When the release has ended, the oldest records beyond `keep` are dropped."""

        def write() -> None:
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
            if revision in self._written:
                stored = call(
                    self.core.patch_namespaced_secret,
                    name,
                    self.namespace,
                    {"metadata": {"labels": labels}, "data": data},
                )
            else:
                body = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": TYPE,
                    "metadata": {"name": name, "labels": labels},
                    "data": data,
                }
                try:
                    stored = call(self.core.create_namespaced_secret, self.namespace, body)
                except client.ApiException as exc:
                    if exc.status != 409:
                        raise
                    stored = call(
                        self.core.patch_namespaced_secret,
                        name,
                        self.namespace,
                        {"metadata": {"labels": labels}, "data": data},
                    )
                self._written.add(revision)
            meta = self.core.api_client.sanitize_for_serialization(stored)["metadata"]
            self._requests[revision] = (meta.get("labels") or {}).get(REQUEST)
            if record.status is not Status.PENDING:
                self._cap()

        await asyncio.to_thread(write)

    def _cap(self) -> None:
        listed = call(self.core.list_namespaced_secret, self.namespace, label_selector=self.selector)
        secrets = self.core.api_client.sanitize_for_serialization(listed)["items"]
        revisions = sorted(int(s["metadata"]["labels"]["deployer.dev/revision"]) for s in secrets)
        for old in revisions[: max(0, len(revisions) - self.keep)]:
            call(self.core.delete_namespaced_secret, _name(self.app, self.environment, old), self.namespace)

    async def request(self, revision: int, what: str) -> None:
        """Ask the running release of `revision` to `promote` or `abort` (it reads this at every round)."""

        def write() -> None:
            patch = {"metadata": {"labels": {REQUEST: what}}}
            call(self.core.patch_namespaced_secret, _name(self.app, self.environment, revision), self.namespace, patch)

        await asyncio.to_thread(write)

    async def requested(self, revision: int, *, fresh: bool = False) -> str | None:
        """`promote` or `abort` if someone asked for it, else None (as of the last write, when there was one,
        unless `fresh`)."""
        if revision in self._requests and not fresh:  # every write reads the labels back: no request per round
            return self._requests[revision]

        def read() -> str | None:
            secret = call(self.core.read_namespaced_secret, _name(self.app, self.environment, revision), self.namespace)
            labels = self.core.api_client.sanitize_for_serialization(secret)["metadata"].get("labels") or {}
            return labels.get(REQUEST)

        return await asyncio.to_thread(read)


async def pending_environments(api: client.ApiClient, *, namespace: str, app: str) -> list[str]:
    """Environments of `app` in `namespace` with a release still marked pending (left mid-flight)."""

    def read() -> list[str]:
        core = client.CoreV1Api(api)
        selector = f"owner=deployer,deployer.dev/app={app},deployer.dev/status=pending"
        listed = core.api_client.sanitize_for_serialization(
            call(core.list_namespaced_secret, namespace, label_selector=selector)
        )
        return sorted({s["metadata"]["labels"]["deployer.dev/environment"] for s in listed["items"]})

    return await asyncio.to_thread(read)
