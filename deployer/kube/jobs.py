"""Run a Job to completion or failure: create it, follow it by watch, stream its pod's log as it runs, fetch
the log's last lines when it fails. The Job's status is the only signal: a log stream that breaks loses lines
shown to the pusher, never the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from deployer.errors import DeployError, TransientError
from deployer.events import Event, EventSink
from deployer.kube.client import JOB_STATUS, JOBS, POD_LOGS, PODS, ApiError, KubeClient

_STARTED = ("Running", "Succeeded", "Failed")


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
        self,
        job: dict[str, Any],
        *,
        namespace: str,
        timeout: float,
        sink: EventSink,
        on_log: Callable[[str], None] | None = None,
    ) -> tuple[bool, str, tuple[str, ...]]:
        name = job["metadata"]["name"]
        deadline = time.monotonic() + timeout
        try:
            await self.api.create(JOBS, namespace, job)
            sink(Event("build", f"Job {namespace}/{name} created"))
        except ApiError as exc:
            if exc.status != 409:
                raise DeployError(f"cannot create Job {name}: {exc.message}", where=namespace) from None
            sink(Event("build", f"Job {namespace}/{name} exists already; following it"))
        streaming = None
        if on_log is not None:
            streaming = asyncio.get_running_loop().create_task(self._stream(name, namespace, deadline, on_log, sink))
        try:
            return await self._follow(name, namespace, timeout, deadline, sink)
        finally:
            if streaming is not None:
                with contextlib.suppress(TimeoutError):  # the stream ends with the pod; let it hand over the rest
                    await asyncio.wait_for(asyncio.shield(streaming), 3)
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await streaming

    async def delete_job(self, name: str, *, namespace: str) -> None:
        """Delete a finished Job and (in the background) its pods."""
        try:
            await self.api.delete(JOBS, namespace, name)
        except (ApiError, TransientError) as exc:
            raise DeployError(f"cannot delete Job {name}: {exc}", where=namespace) from None

    async def _stream(
        self, name: str, namespace: str, deadline: float, on_log: Callable[[str], None], sink: EventSink
    ) -> None:
        """The Job's pod's log, line by line, from when it starts until it ends."""
        try:
            pod = None
            while pod is None and time.monotonic() < deadline:
                pods = (await self.api.list(PODS, namespace, labels=f"job-name={name}")).get("items") or []
                started = [p for p in pods if (p.get("status") or {}).get("phase") in _STARTED]
                if started:
                    pod = started[-1]["metadata"]["name"]
                else:
                    await asyncio.sleep(0.5)
            if pod is None:
                return
            async with contextlib.aclosing(
                self.api.stream_log(POD_LOGS, namespace, pod, seconds=max(deadline - time.monotonic(), 1))
            ) as lines:
                async for line in lines:
                    on_log(line)
        except (ApiError, TransientError) as exc:
            sink(Event("build", f"the build's log could not be followed ({exc}); following its Job", kind="warning"))

    async def _follow(
        self, name: str, namespace: str, timeout: float, deadline: float, sink: EventSink
    ) -> tuple[bool, str, tuple[str, ...]]:
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
