"""Run a Job to completion or failure: create it, follow it by watch, fetch its logs when it fails."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from deployer.errors import DeployError
from deployer.events import Event, EventSink
from deployer.kube.client import JOB_STATUS, JOBS, POD_LOGS, PODS, ApiError, KubeClient


def _finished(job: dict[str, Any]) -> tuple[bool, str] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return condition["type"] == "Complete", condition.get("reason") or condition["type"]
    return None


class KubeJobRunner:
    """Runs Jobs through the asyncio client: the event loop stays free while a Job runs."""

    def __init__(self, api: KubeClient) -> None:
        self.api = api

    async def run_job(
        self, job: dict[str, Any], *, namespace: str, timeout: float, sink: EventSink
    ) -> tuple[bool, str, tuple[str, ...]]:
        name = job["metadata"]["name"]
        try:
            await self.api.create(JOBS, namespace, job)
            sink(Event("build", f"Job {namespace}/{name} created"))
        except ApiError as exc:
            if exc.status != 409:
                raise DeployError(f"cannot create Job {name}: {exc.message}", where=namespace) from None
            sink(Event("build", f"Job {namespace}/{name} exists already; following it"))
        deadline = time.monotonic() + timeout
        try:
            async with contextlib.aclosing(
                self.api.follow(JOBS, namespace, name, read=JOB_STATUS, deadline=deadline, window=60)
            ) as states:
                async for state in states:
                    if (done := _finished(state)) is not None:
                        return await self._outcome(name, namespace, *done, sink=sink)
        except ApiError as exc:
            raise DeployError(f"Job/{name}: {exc.message}", where=namespace) from None
        return await self._outcome(name, namespace, False, f"not finished within {timeout:g}s", sink=sink)

    async def _outcome(
        self, name: str, namespace: str, succeeded: bool, reason: str, *, sink: EventSink
    ) -> tuple[bool, str, tuple[str, ...]]:
        sink(Event("build", f"Job {namespace}/{name} {'succeeded' if succeeded else 'failed'} ({reason})"))
        return succeeded, reason, () if succeeded else await self._logs(name, namespace)

    async def _logs(self, name: str, namespace: str) -> tuple[str, ...]:
        pods = (await self.api.list(PODS, namespace, labels=f"job-name={name}")).get("items") or []
        if not pods:
            return ("(no pod left to read logs from)",)
        pod = pods[-1]["metadata"]["name"]
        try:
            text = await self.api.log(POD_LOGS, namespace, pod, tail=20)
        except ApiError as exc:
            return (f"(logs unavailable: HTTP {exc.status})",)
        return tuple(text.splitlines()) or (f"(pod {pod} printed nothing)",)
