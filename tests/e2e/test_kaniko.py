"""The kaniko build path on the sandbox: the Job is created with the right args, and its end is followed.

The real kaniko image cannot run on these machines; the sandbox's simulated pods stand in for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from kube_sandbox.testing import Running
from kubernetes import client

from deployer.build import BuildRequest, KanikoBuilder
from deployer.build.kaniko import KANIKO_IMAGE
from deployer.errors import DeployError
from deployer.events import Event
from deployer.kube import KubeJobRunner, connect

pytestmark = pytest.mark.cluster
SHA = "0123456789abcdef0123456789abcdef01234567"


def request() -> BuildRequest:
    return BuildRequest(
        context=Path("/src"),
        dockerfile=Path("/src/docker/Dockerfile"),
        image=f"127.0.0.1:5000/hello:{SHA}",
        args={"GREETING": "hi", "GIT_COMMIT": SHA},
        secret_args={"TOKEN": "s3cr3t-token"},
        insecure=True,
    )


async def build(cluster: Running, namespace: str, sink: Callable[[Event], None]) -> None:
    async with connect(cluster.kubeconfig) as api:
        builder = KanikoBuilder(
            runner=KubeJobRunner(api),
            namespace=namespace,
            timeout=30,
            context_uri="git://deployer.deployer.svc:8080/hello.git#{commit}",
        )
        await builder.build_and_push(request(), sink)


def test_kaniko_job_is_created_with_the_right_args_and_followed(
    cluster: Running, api: client.ApiClient, namespace: str
) -> None:
    events: list[Event] = []
    asyncio.run(build(cluster, namespace, events.append))
    (job,) = client.BatchV1Api(api).list_namespaced_job(namespace).items
    container = job.spec.template.spec.containers[0]
    assert container.image == KANIKO_IMAGE
    assert container.args == [
        f"--context=git://deployer.deployer.svc:8080/hello.git#{SHA}",
        "--dockerfile=docker/Dockerfile",
        f"--destination=127.0.0.1:5000/hello:{SHA}",
        "--cache=true",
        "--snapshot-mode=redo",
        "--reproducible",
        "--build-arg=GREETING=hi",
        f"--build-arg=GIT_COMMIT={SHA}",
        "--build-arg=TOKEN=$(BUILD_SECRET_TOKEN)",
        "--insecure",
        "--skip-tls-verify",
    ]
    assert container.env[0].value_from.secret_key_ref.name == "deployer-build-args"
    assert job.spec.template.spec.restart_policy == "Never"
    assert job.status.succeeded == 1
    messages = [e.message for e in events]
    assert any(m.endswith("succeeded (CompletionsReached)") for m in messages), messages
    assert not any("s3cr3t-token" in m for m in messages)


@pytest.mark.sandbox_only
def test_a_failed_kaniko_job_fails_the_build_with_its_logs(
    cluster: Running, api: client.ApiClient, namespace: str
) -> None:
    cluster.control("/sandbox/pods", {"image": KANIKO_IMAGE, "behaviour": "fail"})
    try:
        with pytest.raises(DeployError) as info:
            asyncio.run(build(cluster, namespace, lambda event: None))
    finally:
        cluster.control("/sandbox/pods", {"image": KANIKO_IMAGE, "behaviour": "ready"})
    assert str(info.value).startswith("build: the kaniko build Job build-")
    assert str(info.value).endswith("failed: BackoffLimitExceeded")
    assert info.value.details, "the Job's logs (or why there are none) come with the error"
