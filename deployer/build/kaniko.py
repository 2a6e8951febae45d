"""Builds inside the cluster: kaniko as a Kubernetes Job, for builds that must scale past one machine.

The Job manifest is made here (pure); running it is a `JobRunner`'s work, which the kube adapter provides,
so this module never talks to the cluster itself.

The build context is the pushed commit's exported tree (never a working copy), packed once per build and served by
the deployer itself (`BuildContexts`, GET /build-context/TOKEN.tar.gz on its HTTP listener): the token is random,
names that one build's tarball, is taken by the first request and dropped when the build ends, so a Job can fetch
its own context once and nothing else. kaniko fetches a context only over https (GoogleContainerTools/kaniko
pkg/buildcontext/buildcontext.go: `https://` is its only remote tarball scheme; https.go is a plain http.Get),
hence server.yaml builder.contextUrl is https.

What a build Job may do is as small as kaniko allows: no service-account token, no service links, the
RuntimeDefault seccomp profile, no privilege escalation and only the capabilities unpacking a base image and
running RUN steps as the Dockerfile's users need. kaniko runs as root in its container: it unpacks the base image
over its own root filesystem and runs RUN steps there (its README, "Security": without root only images that need
no permissions to unpack and no RUN as root build), so runAsNonRoot cannot be asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import re
import secrets
import shlex
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from deployer.build.builders import OUTPUT_CAP, TAIL, BuildRequest, Run, failure
from deployer.errors import DeployError
from deployer.events import Event, EventSink

KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.24.0"
CONTEXT_PATH = "/build-context/"  # on the deployer's HTTP listener: CONTEXT_PATH + TOKEN + ".tar.gz"
FOLLOW_SLACK = 30.0  # seconds the deployer follows a build Job past its activeDeadlineSeconds
OUTSIDE_DOCKERFILE = ".deployer.Dockerfile"  # where a Dockerfile from outside the context goes in the tarball
# What unpacking a base image (owners, modes, set-id bits, file capabilities) and RUN steps as the Dockerfile's
# users need; Docker's default set without NET_RAW, MKNOD, SYS_CHROOT, AUDIT_WRITE, NET_BIND_SERVICE and SETPCAP.
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETFCAP", "SETGID", "SETUID")
_STEP_WORDS = (
    "ADD|ARG|CMD|COPY|ENTRYPOINT|ENV|EXPOSE|FROM|HEALTHCHECK|LABEL|ONBUILD|RUN|SHELL|STOPSIGNAL|USER|VOLUME|WORKDIR"
)


class JobOutcome(NamedTuple):
    """How a Job ended: a plain tuple, so the kube adapter can return one without importing this module."""

    succeeded: bool
    reason: str
    logs: tuple[str, ...] = ()


class JobRunner(Protocol):
    """Runs a Job to completion or failure in a namespace, reporting progress as events; `on_log` (when given)
    hears each line its pod prints, as it prints it."""

    async def run_job(
        self,
        job: dict[str, Any],
        *,
        namespace: str,
        timeout: float,
        sink: EventSink,
        on_log: Callable[[str], None] | None = None,
    ) -> tuple[bool, str, tuple[str, ...]]: ...

    async def delete_job(self, name: str, *, namespace: str) -> None: ...


@dataclass(frozen=True)
class KanikoSettings:
    """How build Jobs look (server.yaml builder, kind: kaniko)."""

    namespace: str
    image: str = KANIKO_IMAGE
    registry_secret: str | None = None
    cache_repository: str | None = None
    context_ca: str | None = None  # a ConfigMap with ca.crt, added to kaniko's roots
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "500m", "memory": "512Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "2", "memory": "2048Mi"})
    timeout: float = 900.0  # the Job's activeDeadlineSeconds, and how long the deployer follows it
    ttl: float = 600.0  # ttlSecondsAfterFinished
    max_concurrent: int = 4


def job_name(image: str) -> str:
    """build-REPO-COMMIT-RANDOM: one Job per build, so two builds of one commit (two environments pushed at once)
    never follow, or delete, each other's Job."""
    tag = image.rsplit(":", 1)[1]
    return f"build-{hashlib.sha256(image.encode()).hexdigest()[:8]}-{tag[:12]}-{secrets.token_hex(3)}"


def kaniko_job(
    request: BuildRequest, *, context_uri: str, settings: KanikoSettings, dockerfile: str | None = None
) -> dict[str, Any]:
    """The Job that builds `request` with kaniko from `context_uri` (the deployer's one-time context URL) and
    pushes it; `dockerfile` is its path inside that context (default: `request.dockerfile` within its context)."""
    tag = request.image.rsplit(":", 1)[1]
    if dockerfile is None:
        path = request.dockerfile
        if path.is_absolute() and path.is_relative_to(request.context):
            path = path.relative_to(request.context)  # kaniko reads it inside the context it fetched
        dockerfile = str(path)
    args = [
        f"--context={context_uri}",
        f"--dockerfile={dockerfile}",
        f"--destination={request.image}",
        "--cache=true",
        "--snapshot-mode=redo",
        "--reproducible",
        "--log-format=json",  # one JSON object per log line (pkg/logging): read back as its message, no colours
    ]
    if settings.cache_repository:
        args.append(f"--cache-repo={settings.cache_repository}")
    args += [f"--build-arg={k}={v}" for k, v in request.args.items()]
    env = [
        {"name": f"BUILD_SECRET_{k}", "valueFrom": {"secretKeyRef": {"name": "deployer-build-args", "key": k}}}
        for k in request.secret_args
    ]
    args += [f"--build-arg={k}=$(BUILD_SECRET_{k})" for k in request.secret_args]
    if request.insecure:
        args += ["--insecure", "--skip-tls-verify"]
    resources: dict[str, Any] = {"requests": dict(settings.requests)}
    if settings.limits:
        resources["limits"] = dict(settings.limits)
    container: dict[str, Any] = {
        "name": "kaniko",
        "image": settings.image,
        "args": args,
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)},
        },
    }
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if env:
        container["env"] = env
    if settings.registry_secret:
        mounts.append({"name": "registry-auth", "mountPath": "/kaniko/.docker", "readOnly": True})
        volumes.append(
            {
                "name": "registry-auth",
                "secret": {
                    "secretName": settings.registry_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
    if settings.context_ca:  # one more file in kaniko's SSL_CERT_DIR (/kaniko/ssl/certs): its roots stay
        mounts.append(
            {
                "name": "context-ca",
                "mountPath": "/kaniko/ssl/certs/deployer-context-ca.crt",
                "subPath": "ca.crt",
                "readOnly": True,
            }
        )
        volumes.append({"name": "context-ca", "configMap": {"name": settings.context_ca}})
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if volumes:
        pod_spec["volumes"] = volumes
    labels = {
        "app.kubernetes.io/managed-by": "deployer",
        "app.kubernetes.io/component": "build",
        "deployer.dev/build": tag[:63],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(request.image), "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": max(int(settings.ttl), 0),
            "activeDeadlineSeconds": max(int(settings.timeout), 1),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _pack(request: BuildRequest, target: Path) -> str:
    """The context tree (and the Dockerfile, if it lies outside) as a gzipped tar at `target`; the Dockerfile's
    path inside it. Entries sorted, owned by root, without times: the same commit packs the same bytes."""
    context = request.context
    inside = request.dockerfile.is_relative_to(context)
    dockerfile = str(request.dockerfile.relative_to(context)) if inside else OUTSIDE_DOCKERFILE

    def entries() -> Iterator[tuple[Path, str]]:
        for path in sorted(context.rglob("*")):
            yield path, str(path.relative_to(context))
        if not inside:
            yield request.dockerfile, OUTSIDE_DOCKERFILE

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, name in entries():
            tar.add(path, arcname=name, recursive=False, filter=clean)
    return dockerfile


class BuildContexts:
    """Build contexts served once each to the build Jobs that need them (see the module's docstring).

    They live in `directory` (the server's dataDir), named by the sha256 of their token (the token itself is kept
    nowhere), so that whichever replica of the server a Job's request reaches can serve it, once: taking one is
    an atomic rename of KEY.tar.gz to KEY.serving, which only one request can win. KEY.json says whose it is and
    until when (wall-clock time: replicas share it)."""

    def __init__(self, directory: Path, *, base_url: str, lifetime: float = 3600.0) -> None:
        self.directory = directory
        self.base_url = base_url.rstrip("/")
        self.lifetime = lifetime
        self._mine: set[str] = set()  # keys this process published, removed when it stops

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return (self.directory / f"{key}.tar.gz", self.directory / f"{key}.serving", self.directory / f"{key}.json")

    async def publish(self, request: BuildRequest, *, what: str) -> tuple[str, str, str]:
        """Pack `request`'s context; (token, URL, the Dockerfile's path in the context)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        key = self._key(token)
        ready, _, meta = self._paths(key)
        packing = self.directory / f"{key}.packing"
        dockerfile = await asyncio.to_thread(_pack, request, packing)
        meta.write_text(json.dumps({"what": what, "expires": time.time() + self.lifetime}))
        packing.rename(ready)  # whole before it can be taken
        self._mine.add(key)
        return token, f"{self.base_url}{CONTEXT_PATH}{token}.tar.gz", dockerfile

    def take(self, token: str) -> tuple[Path, str] | None:
        """The tarball for `token`, once: a second request, an unknown or expired token get nothing."""
        if not token or not token.replace("-", "").replace("_", "").isalnum():
            return None
        ready, serving, meta = self._paths(self._key(token))
        try:
            found = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(found, dict) or time.time() > float(found.get("expires", 0)):
            return None
        try:
            ready.rename(serving)
        except FileNotFoundError:  # taken already (here or by another replica)
            return None
        return serving, str(found.get("what", "?"))

    def drop(self, token: str) -> None:
        key = self._key(token)
        self._remove(key)
        self._mine.discard(key)

    def _remove(self, key: str) -> None:
        for path in (*self._paths(key), self.directory / f"{key}.packing"):
            path.unlink(missing_ok=True)

    def clear_directory(self) -> None:
        """At start: contexts past their lifetime (their builds are over; a server that stopped left them) are
        removed; other replicas' live ones stay."""
        if not self.directory.is_dir():
            return
        now = time.time()
        for meta in self.directory.glob("*.json"):
            try:
                expires = float(json.loads(meta.read_text()).get("expires", 0))
            except (OSError, ValueError, AttributeError):
                expires = 0.0
            if now > expires:
                self._remove(meta.stem)
        for packing in self.directory.glob("*.packing"):  # a pack cut short by a stop
            if now - packing.stat().st_mtime > self.lifetime:
                packing.unlink(missing_ok=True)

    def clear(self) -> None:
        """At stop: this process's contexts (their builds cannot be answered any more)."""
        for key in list(self._mine):
            self._remove(key)
        self._mine.clear()


_STEP_LINE = re.compile(rf"^((?:{_STEP_WORDS})\b.*)$")  # kaniko logs each instruction (pkg/executor/build.go)


class KanikoBuilder:
    """kaniko in the cluster: each build a Job in `settings.namespace`, its context `contexts`' one-time URL."""

    name = "kaniko"

    def __init__(self, *, runner: JobRunner, settings: KanikoSettings, contexts: BuildContexts) -> None:
        self.runner = runner
        self.settings = settings
        self.namespace = settings.namespace
        self.contexts = contexts
        self.slots = asyncio.Semaphore(settings.max_concurrent)
        self.running = 0

    async def build_and_push(self, request: BuildRequest, sink: EventSink) -> None:
        if self.slots.locked():
            sink(
                Event(
                    "build",
                    f"waiting for a build slot: {self.running} of {self.settings.max_concurrent} kaniko builds "
                    "running (server.yaml builder.maxConcurrent)",
                )
            )
        async with self.slots:
            self.running += 1
            try:
                await self._build(request, sink)
            finally:
                self.running -= 1

    async def _build(self, request: BuildRequest, sink: EventSink) -> None:
        token, uri, dockerfile = await self.contexts.publish(request, what=request.image)
        job = kaniko_job(request, context_uri=uri, settings=self.settings, dockerfile=dockerfile)
        name = job["metadata"]["name"]
        shown = " ".join(
            shlex.quote(request.masked(a).replace(token, "***"))
            for a in job["spec"]["template"]["spec"]["containers"][0]["args"]
        )
        sink(Event("build", f"kaniko Job {self.namespace}/{name}: executor {shown}", data={"job": name}))
        lines = _Lines(request, sink)
        try:
            outcome = JobOutcome(
                *await self.runner.run_job(  # the Job's deadline ends it; its status may take a moment to say so
                    job, namespace=self.namespace, timeout=self.settings.timeout + FOLLOW_SLACK, sink=sink, on_log=lines
                )
            )
        finally:
            self.contexts.drop(token)
        if outcome.succeeded:
            with contextlib.suppress(DeployError):  # its TTL deletes it anyway
                await self.runner.delete_job(name, namespace=self.namespace)
            return
        tail = lines.tail or [request.masked(line) for line in outcome.logs[-TAIL:]]
        run = Run(
            1, tail, lines.step, timed_out="DeadlineExceeded" in outcome.reason or "not finished" in outcome.reason
        )
        if run.timed_out:
            raise failure(f"the kaniko build Job {name}", run, limit=self.settings.timeout)
        step = f" at step {lines.step!r}" if lines.step else ""
        raise DeployError(
            f"the kaniko build Job {name} failed{step} ({outcome.reason}); last {len(tail)} lines of its log below",
            where="Dockerfile" if lines.step else "build",
            details=tuple(tail),
        )


@dataclass
class _Lines:
    """A build Job's log lines: each masked and sent as output (capped), the last ones and the last step kept."""

    request: BuildRequest
    sink: EventSink
    count: int = 0
    tail: list[str] = field(default_factory=list)
    step: str | None = None

    def __call__(self, raw: str) -> None:
        line = self.request.masked(_message(raw))
        self.tail = [*self.tail[-(TAIL - 1) :], line]
        if raw.startswith("{") and (match := _STEP_LINE.match(line)):
            self.step = match.group(1)
        self.count += 1
        if self.count <= OUTPUT_CAP:
            self.sink(Event("build", line, kind="output"))
        elif self.count == OUTPUT_CAP + 1:
            self.sink(
                Event("build", f"(build output capped at {OUTPUT_CAP} lines; the rest is not shown)", kind="warning")
            )


def _message(line: str) -> str:
    """kaniko's own log lines (--log-format=json) as their message, a warning or error saying so; anything else
    (what RUN steps print) as it is."""
    if not line.startswith("{"):
        return line
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    if not isinstance(entry, dict) or not isinstance(entry.get("msg"), str):
        return line
    level = entry.get("level")
    return entry["msg"] if level in ("info", "debug", "trace", None) else f"{level}: {entry['msg']}"
