"""Image builders behind one Protocol: buildah (the default) and docker (when a daemon is there).

Each builds a Dockerfile into `image` (repo:tag) and pushes it. Output is streamed line by line as events,
capped, with secret build-arg values masked; a failure names the failing step and keeps the last lines.

A Dockerfile is pushed content: its RUN steps are contained (BuildLimits). buildah runs them with OCI isolation
(runc): their own PID, IPC, mount and network namespaces (no network but a loopback of their own unless allowed,
and then a private one on buildah's bridge: the host's loopback stays out of reach, its other addresses do not),
runc's default capabilities and seccomp profile, and memory, CPU and process limits; the whole build is killed
(its process group) at the time limit. Rootless (the packaged deployer), RUN's root is the server's subordinate
uid; run as root, it is root in those namespaces (buildah 1.28's ID-mapped builds on overlay fail: COPY cannot
create directories). `isolation: chroot` (where no runtime can run) gives up the namespaces, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from deployer.errors import DeployError
from deployer.events import Event, EventSink

OUTPUT_CAP = 5000
TAIL = 20
_STEP = re.compile(r"^(?:STEP \d+/\d+: |Step \d+/\d+ : )(.*)$")


@dataclass(frozen=True)
class BuildLimits:
    """How far a build's RUN steps reach (server.yaml `builder`)."""

    isolation: str = "oci"  # oci | chroot
    memory_mb: int = 2048
    cpus: float = 2.0
    processes: int = 1024
    timeout: float = 900.0
    image_mb: int = 4096  # the built image, all its layers: over it, nothing is pushed


@dataclass(frozen=True)
class BuildRequest:
    """One image to build and push."""

    context: Path
    dockerfile: Path
    image: str  # repository:tag
    args: dict[str, str] = field(default_factory=dict)
    secret_args: dict[str, str] = field(default_factory=dict)  # passed like args, masked in all output
    insecure: bool = False  # the registry speaks plain http
    auth_file: Path | None = None
    network: bool = False  # RUN steps get a network (a private one); deploy.yaml asks, server.yaml allows
    limits: BuildLimits = field(default_factory=BuildLimits)

    def masked(self, line: str) -> str:
        for value in self.secret_args.values():
            if value:
                line = line.replace(value, "***")
        return line

    def build_args(self) -> list[str]:
        return [arg for k, v in {**self.args, **self.secret_args}.items() for arg in ("--build-arg", f"{k}={v}")]


class Builder(Protocol):
    """Builds `request.image` from its Dockerfile and pushes it to the registry."""

    name: str

    async def build_and_push(self, request: BuildRequest, sink: EventSink) -> None: ...


@dataclass
class Run:
    """What a streamed command left: its exit code, the last lines, and the last Dockerfile step it began."""

    code: int
    tail: list[str]
    step: str | None
    timed_out: bool = False


async def run_streaming(
    argv: Sequence[str],
    *,
    request: BuildRequest,
    sink: EventSink,
    env: dict[str, str] | None = None,
    cap: int = OUTPUT_CAP,
    timeout: float | None = None,
) -> Run:
    """Run `argv`, sending each output line (stdout and stderr merged) to `sink` as it comes; past `timeout`
    seconds its whole process group is killed."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group: a timeout kills every process the build started
    )
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=TAIL)
    step: str | None = None

    async def follow() -> None:
        nonlocal step
        assert proc.stdout is not None
        count = 0
        async for raw in proc.stdout:
            line = request.masked(raw.decode(errors="replace").rstrip("\r\n"))
            tail.append(line)
            if match := _STEP.match(line):
                step = match.group(1)
            count += 1
            if count <= cap:
                sink(Event("build", line, kind="output"))
            elif count == cap + 1:
                sink(Event("build", f"(build output capped at {cap} lines; the rest is not shown)", kind="warning"))

    try:
        await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return Run(-signal.SIGKILL, list(tail), step, timed_out=True)
    return Run(await proc.wait(), list(tail), step)


def failure(what: str, run: Run, *, limit: float | None = None) -> DeployError:
    step = f" at step {run.step!r}" if run.step else ""
    if run.timed_out:
        return DeployError(
            f"{what} ran past its time limit ({limit:g}s, server.yaml builder.timeout){step} and was killed; "
            f"last {len(run.tail)} lines of output below",
            where="Dockerfile" if run.step else "build",
            details=tuple(run.tail),
        )
    return DeployError(
        f"{what} failed{step} (exit status {run.code}); last {len(run.tail)} lines of output below",
        where="Dockerfile" if run.step else "build",
        details=tuple(run.tail),
    )


def too_big(size: int, limits: BuildLimits) -> DeployError:
    return DeployError(
        f"the built image is {size / 2**20:.0f} MiB, over the {limits.image_mb} MiB server.yaml "
        "builder.maxImageMb allows; it was removed and nothing was pushed",
        where="Dockerfile",
    )


async def _output(argv: list[str], *, check: bool = True) -> str:
    """A short command's standard output (image inspection and removal)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    out, err = await process.communicate()
    if check and process.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
        raise DeployError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''}: {last}", where="build")
    return out.decode(errors="replace").strip()


def contained(request: BuildRequest) -> list[str]:
    """buildah's flags for RUN steps as BuildLimits say (buildah-build(1): --isolation, --network, --pid, --ipc,
    --memory, --cpu-quota, --ulimit)."""
    limits = request.limits
    flags = ["--isolation", limits.isolation]
    if limits.isolation == "oci":
        # OCI isolation gives RUN new PID, IPC, mount and UTS namespaces by default. They are not asked for by flag:
        # buildah reads its namespace flags in the order cgroupns, ipc, network, pid, uts, and `--pid private` (or
        # any "private" after --network) sets the network policy back to enabled (containers/buildah
        # pkg/parse/parse.go NamespaceOptions): with `--network none --pid private` RUN steps got a bridged eth0.
        flags += ["--network", "private" if request.network else "none"]
    memory = f"{limits.memory_mb}m"
    flags += ["--memory", memory, "--memory-swap", memory]
    flags += ["--cpu-period", "100000", "--cpu-quota", str(int(limits.cpus * 100_000))]
    flags += ["--ulimit", f"nproc={limits.processes}:{limits.processes}"]
    return flags


def _reaper() -> list[str]:
    """As root, buildah runs as the init of its own PID (and mount) namespace: when it is killed at the time
    limit, the kernel kills every process in the namespace, the RUN step's container included (runc starts it in
    a session of its own, out of reach of a process-group kill), and its mounts go with the namespace."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
    return []


def describe(request: BuildRequest) -> str:
    """What contains the RUN steps, as the build's first line says it."""
    limits = request.limits
    if limits.isolation == "chroot":  # no runtime: no namespaces, and no cgroup to hold memory or CPU limits
        return f"chroot isolation: the host's PID and network namespaces, no memory or CPU limit, {limits.timeout:g}s"
    where = "no network" if not request.network else "a private network"
    return f"{where}, {limits.memory_mb} MiB, {limits.cpus:g} CPUs, {limits.processes} processes, {limits.timeout:g}s"


class BuildahBuilder:
    """buildah with overlay storage under `storage`, RUN steps contained (contained()) and layer caching."""

    name = "buildah"

    def __init__(self, *, storage: Path) -> None:
        self.storage = storage

    def _base(self) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.storage / "storage"),
            "--runroot",
            str(self.storage / "run"),
            "--storage-driver",
            "overlay",
        ]

    async def build_and_push(self, request: BuildRequest, sink: EventSink) -> None:
        bud = [
            *self._base(),
            "bud",
            *contained(request),
            "--layers",
            "--force-rm",  # a failed build must not leave its working container (and mount) behind
            "-f",
            str(request.dockerfile),
            "-t",
            request.image,
            *request.build_args(),
            str(request.context),
        ]
        limits = request.limits
        sink(Event("build", f"buildah bud -t {request.image} ({describe(request)})"))
        run = await run_streaming([*_reaper(), *bud], request=request, sink=sink, timeout=limits.timeout)
        if run.code != 0:
            raise failure("the image build", run, limit=limits.timeout)
        inspect = [*self._base(), "inspect", "--type", "image", "--format", "{{.Manifest}}", request.image]
        manifest = json.loads(await _output(inspect))
        size = sum(int(d.get("size") or 0) for d in [manifest.get("config") or {}, *(manifest.get("layers") or [])])
        if size > limits.image_mb * 2**20:
            await _output([*self._base(), "rmi", request.image], check=False)
            raise too_big(size, limits)
        push = [
            *self._base(),
            "push",
            f"--tls-verify={'false' if request.insecure else 'true'}",
            *(["--authfile", str(request.auth_file)] if request.auth_file else []),
            request.image,
            f"docker://{request.image}",
        ]
        sink(Event("build", f"pushing {request.image}"))
        await push_with_retries(push, request=request, sink=sink)


class DockerBuilder:
    """The docker CLI against the daemon at $DOCKER_HOST (or the default socket)."""

    name = "docker"

    @staticmethod
    def available() -> bool:
        return bool(os.environ.get("DOCKER_HOST")) or Path("/var/run/docker.sock").exists()

    async def build_and_push(self, request: BuildRequest, sink: EventSink) -> None:
        config = {"DOCKER_CONFIG": str(request.auth_file.parent)} if request.auth_file else {}
        limits = request.limits
        build = [
            "docker",
            "build",
            "--network",
            "default" if request.network else "none",
            "--memory",
            f"{limits.memory_mb}m",
            "--memory-swap",
            f"{limits.memory_mb}m",
            "--cpu-period",
            "100000",
            "--cpu-quota",
            str(int(limits.cpus * 100_000)),
            "--ulimit",
            f"nproc={limits.processes}:{limits.processes}",
            "-f",
            str(request.dockerfile),
            "-t",
            request.image,
            *request.build_args(),
            str(request.context),
        ]
        sink(Event("build", f"docker build -t {request.image}"))
        run = await run_streaming(
            build, request=request, sink=sink, env={"DOCKER_BUILDKIT": "0", **config}, timeout=limits.timeout
        )
        if run.code != 0:
            raise failure("the image build", run, limit=limits.timeout)
        size = int(await _output(["docker", "image", "inspect", "--format", "{{.Size}}", request.image]))
        if size > limits.image_mb * 2**20:
            await _output(["docker", "image", "rm", request.image], check=False)
            raise too_big(size, limits)
        sink(Event("build", f"pushing {request.image}"))
        await push_with_retries(["docker", "push", request.image], request=request, sink=sink, env=config)


async def push_with_retries(
    argv: list[str], *, request: BuildRequest, sink: EventSink, env: dict[str, str] | None = None, attempts: int = 3
) -> None:
    """Push, retrying a failed push with backoff (a registry restart, a dropped connection)."""
    for attempt in range(1, attempts + 1):
        run = await run_streaming(argv, request=request, sink=sink, env=env)
        if run.code == 0:
            return
        text = " ".join(run.tail).lower()
        if "unauthorized" in text or "authentication required" in text or "denied" in text:
            raise DeployError(
                f"the registry refused the credentials for {request.image}", where="registry", details=tuple(run.tail)
            )
        if attempt < attempts:
            sink(Event("build", f"push failed (attempt {attempt} of {attempts}); retrying", kind="warning"))
            await asyncio.sleep(0.5 * 2 ** (attempt - 1))
    raise DeployError(
        f"pushing {request.image} failed after {attempts} attempts; is the registry up?",
        where="registry",
        details=tuple(run.tail),
    )


def choose_builder(name: str, *, storage: Path) -> Builder:
    """`auto` is docker when a daemon is configured or its socket exists, else buildah."""
    if name == "docker" or (name == "auto" and DockerBuilder.available()):
        return DockerBuilder()
    if name in ("buildah", "auto"):
        return BuildahBuilder(storage=storage)
    raise DeployError(f"unknown builder {name!r} (expected auto, buildah or docker)", where="--builder")
