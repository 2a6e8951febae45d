"""Run a Job to completion or failure: create it, follow it by watch, fetch its logs when it fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from deployer.errors import DeployError, TransientError
from deployer.events import Event, EventSink

T = TypeVar("T")
_TRANSIENT = {429, 500, 502, 503, 504}


def connect(kubeconfig: Path | None = None, context: str | None = None) -> client.ApiClient:
    """An API client from a kubeconfig (or $KUBECONFIG / ~/.kube/config), or the in-cluster service account."""
    try:
        if kubeconfig is None and context is None and Path("/var/run/secrets/kubernetes.io/serviceaccount").exists():
            config.load_incluster_config()
            return client.ApiClient()
        api: client.ApiClient = config.new_client_from_config(str(kubeconfig) if kubeconfig else None, context=context)
        return api
    except (config.ConfigException, OSError) as exc:
        raise DeployError(
            f"cannot load the cluster configuration: {exc}", where=str(kubeconfig or "kubeconfig")
        ) from None


@retry(
    retry=retry_if_exception_type(TransientError),
    stop=stop_after_attempt(5),
    wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.2),
    reraise=True,
)
def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """One API call; 5xx, 429, timeouts and connection errors are TransientError and retried with backoff."""
    try:
        return fn(*args, **kwargs)
    except client.ApiException as exc:
        if exc.status in _TRANSIENT:
            raise TransientError(f"HTTP {exc.status} {exc.reason}") from exc
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc


def watch_lost(exc: Exception) -> bool:
    """A watch that dropped, expired (410) or was refused for a moment: start over rather than fail."""
    return not isinstance(exc, client.ApiException) or exc.status in _TRANSIENT | {410}


def _finished(job: Any) -> tuple[bool, str] | None:
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.status == "True" and condition.type in ("Complete", "Failed"):
            return condition.type == "Complete", condition.reason or condition.type
    return None


class KubeJobRunner:
    """Runs Jobs through the official client (its calls run in threads; the event loop stays free)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)

    async def run_job(
        self, job: dict[str, Any], *, namespace: str, timeout: float, sink: EventSink
    ) -> tuple[bool, str, tuple[str, ...]]:
        return await asyncio.to_thread(self._run, job, namespace, timeout, sink)

    def _run(
        self, job: dict[str, Any], namespace: str, timeout: float, sink: EventSink
    ) -> tuple[bool, str, tuple[str, ...]]:
        name = job["metadata"]["name"]
        try:
            call(self.batch.create_namespaced_job, namespace, job)
            sink(Event("build", f"Job {namespace}/{name} created"))
        except client.ApiException as exc:
            if exc.status != 409:
                raise DeployError(
                    f"cannot create Job {name}: HTTP {exc.status} {exc.reason}", where=namespace
                ) from None
            sink(Event("build", f"Job {namespace}/{name} exists already; following it"))
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            current = call(self.batch.read_namespaced_job_status, name, namespace)
            if (done := _finished(current)) is not None:
                return self._outcome(name, namespace, *done, sink=sink)
            since = current.metadata.resource_version if current.metadata else None
            stream = watch.Watch().stream(
                self.batch.list_namespaced_job,
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=since,
                timeout_seconds=max(1, int(min(remaining, 60))),
            )
            try:
                for event in stream:
                    if (done := _finished(event["object"])) is not None:
                        return self._outcome(name, namespace, *done, sink=sink)
            except (client.ApiException, urllib3.exceptions.HTTPError) as exc:
                if not watch_lost(exc):
                    raise
        return self._outcome(name, namespace, False, f"not finished within {timeout:g}s", sink=sink)

    def _outcome(
        self, name: str, namespace: str, succeeded: bool, reason: str, *, sink: EventSink
    ) -> tuple[bool, str, tuple[str, ...]]:
        sink(Event("build", f"Job {namespace}/{name} {'succeeded' if succeeded else 'failed'} ({reason})"))
        return succeeded, reason, () if succeeded else self._logs(name, namespace)

    def _logs(self, name: str, namespace: str) -> tuple[str, ...]:
        pods = call(self.core.list_namespaced_pod, namespace, label_selector=f"job-name={name}").items
        if not pods:
            return ("(no pod left to read logs from)",)
        try:
            pod = pods[-1].metadata.name if pods[-1].metadata else ""
            text = call(self.core.read_namespaced_pod_log, pod, namespace, tail_lines=20)
        except client.ApiException as exc:
            return (f"(logs unavailable: HTTP {exc.status})",)
        return tuple(str(text).splitlines()) or (f"(pod {pod} printed nothing)",)
