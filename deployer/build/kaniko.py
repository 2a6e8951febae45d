"""Builds inside the cluster: kaniko as a Kubernetes Job, for builds that must scale past one machine.

The Job manifest is made here (pure); running it is a `JobRunner`'s work, which the kube adapter provides,
so this module never talks to the cluster itself.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any, NamedTuple, Protocol

from deployer.build.builders import BuildRequest
from deployer.errors import DeployError
from deployer.events import Event, EventSink

KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"


class JobOutcome(NamedTuple):
    """How a Job ended: a plain tuple, so the kube adapter can return one without importing this module."""

    succeeded: bool
    reason: str
    logs: tuple[str, ...] = ()


class JobRunner(Protocol):
    """Runs a Job to completion or failure in a namespace, reporting progress as events."""

    async def run_job(
        self, job: dict[str, Any], *, namespace: str, timeout: float, sink: EventSink
    ) -> tuple[bool, str, tuple[str, ...]]: ...


def kaniko_job(
    request: BuildRequest, *, context_uri: str, image: str = KANIKO_IMAGE, registry_secret: str | None = None
) -> dict[str, Any]:
    """The Job that builds `request` with kaniko from `context_uri` (e.g. git://host/app.git#<commit>) and pushes."""
    tag = request.image.rsplit(":", 1)[1]
    name = f"build-{hashlib.sha256(request.image.encode()).hexdigest()[:8]}-{tag[:12]}"
    dockerfile = request.dockerfile
    if dockerfile.is_absolute() and dockerfile.is_relative_to(request.context):
        dockerfile = dockerfile.relative_to(request.context)  # kaniko reads it inside the context it fetched
    args = [
        f"--context={context_uri}",
        f"--dockerfile={dockerfile}",
        f"--destination={request.image}",
        "--cache=true",
        "--snapshot-mode=redo",
        "--reproducible",
    ]
    args += [f"--build-arg={k}={v}" for k, v in request.args.items()]
    env = [
        {"name": f"BUILD_SECRET_{k}", "valueFrom": {"secretKeyRef": {"name": "deployer-build-args", "key": k}}}
        for k in request.secret_args
    ]
    args += [f"--build-arg={k}=$(BUILD_SECRET_{k})" for k in request.secret_args]
    if request.insecure:
        args += ["--insecure", "--skip-tls-verify"]
    container: dict[str, Any] = {
        "name": "kaniko",
        "image": image,
        "args": args,
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
    }
    volumes = []
    if env:
        container["env"] = env
    if registry_secret:
        container["volumeMounts"] = [{"name": "registry-auth", "mountPath": "/kaniko/.docker", "readOnly": True}]
        volumes.append(
            {
                "name": "registry-auth",
                "secret": {
                    "secretName": registry_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if volumes:
        pod_spec["volumes"] = volumes
    labels = {"app.kubernetes.io/managed-by": "deployer", "deployer.dev/build": tag[:63]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3600,
            "activeDeadlineSeconds": 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


class KanikoBuilder:
    """kaniko in the cluster; `context_uri` is a template with {commit}, e.g. git://deployer/app.git#{commit}."""

    name = "kaniko"

    def __init__(
        self,
        *,
        runner: JobRunner,
        namespace: str,
        context_uri: str,
        timeout: float = 3600.0,
        image: str = KANIKO_IMAGE,
        registry_secret: str | None = None,
    ) -> None:
        self.runner = runner
        self.namespace = namespace
        self.context_uri = context_uri
        self.timeout = timeout
        self.image = image
        self.registry_secret = registry_secret

    async def build_and_push(self, request: BuildRequest, sink: EventSink) -> None:
        commit = request.image.rsplit(":", 1)[1]
        job = kaniko_job(
            request,
            context_uri=self.context_uri.format(commit=commit),
            image=self.image,
            registry_secret=self.registry_secret,
        )
        shown = " ".join(
            shlex.quote(request.masked(a)) for a in job["spec"]["template"]["spec"]["containers"][0]["args"]
        )
        sink(
            Event(
                "build",
                f"kaniko Job {self.namespace}/{job['metadata']['name']}: executor {shown}",
                data={"job": job["metadata"]["name"]},
            )
        )
        outcome = JobOutcome(*await self.runner.run_job(job, namespace=self.namespace, timeout=self.timeout, sink=sink))
        if not outcome.succeeded:
            raise DeployError(
                f"the kaniko build Job {job['metadata']['name']} failed: {outcome.reason}",
                where="build",
                details=tuple(request.masked(line) for line in outcome.logs[-20:]),
            )
