"""The kaniko builder's Job on any cluster: created with the right args, followed to its end, and deleted once it
succeeded; a failed one fails the build with its log and is kept (until its TTL).

The real kaniko image cannot run on these machines; the sandbox's simulated pods stand in for it (a push through
`deployer serve` that really builds in a Job is tests/e2e/test_kaniko_server.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kube_sandbox.testing import Running
from kubernetes import client

from deployer.build import BuildRequest, KanikoBuilder
from deployer.build.kaniko import KANIKO_IMAGE, BuildContexts, KanikoSettings
from deployer.errors import DeployError
from deployer.events import Event
from deployer.kube import KubeJobRunner, connect

# the Job's pod is the sandbox's simulated one (it succeeds, or fails when told to): kaniko's real image would
# try to fetch a context no server serves here
pytestmark = [pytest.mark.cluster, pytest.mark.sandbox_only]
SHA = "0123456789abcdef0123456789abcdef01234567"


def request(context: Path) -> BuildRequest:
    (context / "docker").mkdir(parents=True, exist_ok=True)
    (context / "docker" / "Dockerfile").write_text("FROM scratch\n")
    return BuildRequest(
        context=context,
        dockerfile=context / "docker" / "Dockerfile",
        image=f"127.0.0.1:5000/hello:{SHA}",
        args={"GREETING": "hi", "GIT_COMMIT": SHA},
        secret_args={"TOKEN": "s3cr3t-token"},
        insecure=True,
    )


class Capturing(KubeJobRunner):
    """The cluster's runner, keeping the Job it was given (a succeeded build's Job is deleted afterwards)."""

    job: dict[str, Any] | None = None

    async def run_job(self, job: dict[str, Any], **options: Any) -> tuple[bool, str, tuple[str, ...]]:
        self.job = job
        return await super().run_job(job, **options)


async def build(cluster: Running, namespace: str, sink: Callable[[Event], None], tmp: Path) -> dict[str, Any] | None:
    async with connect(cluster.kubeconfig) as api:
        runner = Capturing(api)
        builder = KanikoBuilder(
            runner=runner,
            settings=KanikoSettings(namespace=namespace, timeout=30),
            contexts=BuildContexts(tmp / "contexts", base_url="https://deployer.deployer.svc"),
        )
        await builder.build_and_push(request(tmp / "src"), sink)
        return runner.job


def test_kaniko_job_is_created_with_the_right_args_followed_and_deleted(
    cluster: Running, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    events: list[Event] = []
    job = asyncio.run(build(cluster, namespace, events.append, tmp_path))
    assert job is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == KANIKO_IMAGE
    context = container["args"][0]
    assert context.startswith("--context=https://deployer.deployer.svc/build-context/"), context
    assert not list((tmp_path / "contexts").iterdir()), "the context is dropped when the build ends"
    assert container["args"][1:] == [
        "--dockerfile=docker/Dockerfile",
        f"--destination=127.0.0.1:5000/hello:{SHA}",
        "--cache=true",
        "--snapshot-mode=redo",
        "--reproducible",
        "--log-format=json",
        "--build-arg=GREETING=hi",
        f"--build-arg=GIT_COMMIT={SHA}",
        "--build-arg=TOKEN=$(BUILD_SECRET_TOKEN)",
        "--insecure",
        "--skip-tls-verify",
    ]
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "deployer-build-args"
    messages = [e.message for e in events]
    assert any(m.endswith("succeeded (CompletionsReached)") for m in messages), messages
    assert not any("s3cr3t-token" in m for m in messages)
    jobs = client.BatchV1Api(api).list_namespaced_job(namespace).items
    assert [j for j in jobs if not j.metadata.deletion_timestamp] == [], "a succeeded build's Job is deleted"


def test_a_failed_kaniko_job_fails_the_build_with_its_logs(
    cluster: Running, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    cluster.control("/sandbox/pods", {"image": KANIKO_IMAGE, "behaviour": "fail"})
    try:
        with pytest.raises(DeployError) as info:
            asyncio.run(build(cluster, namespace, lambda event: None, tmp_path))
    finally:
        cluster.control("/sandbox/pods", {"image": KANIKO_IMAGE, "behaviour": "ready"})
    assert str(info.value).startswith("build: the kaniko build Job build-")
    assert "failed (BackoffLimitExceeded); last 1 lines of its log below" in str(info.value)
    assert info.value.details == ("[sandbox] simulated container failed: exit code 1",)
    (job,) = client.BatchV1Api(api).list_namespaced_job(namespace).items
    assert job.status.failed == 1, "a failed build's Job is kept (until its TTL) to be looked at"
