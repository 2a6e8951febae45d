"""Image builders behind one Protocol: buildah (the default) and docker (when a daemon is there).

Each builds a Dockerfile into `image` (repo:tag) and pushes it. Output is streamed line by line as events,
capped, with secret build-arg values masked; a failure names the failing step and keeps the last lines.
"""

from __future__ import annotations

import asyncio
import os
import re
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
class BuildRequest:
    """One image to build and push."""

    context: Path
    dockerfile: Path
    image: str  # repository:tag
    args: dict[str, str] = field(default_factory=dict)
    secret_args: dict[str, str] = field(default_factory=dict)  # passed like args, masked in all output
    insecure: bool = False  # the registry speaks plain http
    auth_file: Path | None = None

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


async def run_streaming(
    argv: Sequence[str],
    *,
    request: BuildRequest,
    sink: EventSink,
    env: dict[str, str] | None = None,
    cap: int = OUTPUT_CAP,
) -> Run:
    """Run `argv`, sending each output line (stdout and stderr merged) to `sink` as it comes."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=TAIL)
    step, count = None, 0
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
    return Run(await proc.wait(), list(tail), step)


def failure(what: str, run: Run) -> DeployError:
    step = f" at step {run.step!r}" if run.step else ""
    return DeployError(
        f"{what} failed{step} (exit status {run.code}); last {len(run.tail)} lines of output below",
        where="Dockerfile" if run.step else "build",
        details=tuple(run.tail),
    )


class BuildahBuilder:
    """buildah with overlay storage under `storage`, chroot isolation and layer caching."""

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
            "--isolation",
            "chroot",
            "--layers",
            "--force-rm",  # a failed build must not leave its working container (and mount) behind
            "-f",
            str(request.dockerfile),
            "-t",
            request.image,
            *request.build_args(),
            str(request.context),
        ]
        sink(Event("build", f"buildah bud -t {request.image}"))
        run = await run_streaming(bud, request=request, sink=sink)
        if run.code != 0:
            raise failure("the image build", run)
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
        build = [
            "docker",
            "build",
            "--network",
            "host",
            "-f",
            str(request.dockerfile),
            "-t",
            request.image,
            *request.build_args(),
            str(request.context),
        ]
        sink(Event("build", f"docker build -t {request.image}"))
        run = await run_streaming(build, request=request, sink=sink, env={"DOCKER_BUILDKIT": "0", **config})
        if run.code != 0:
            raise failure("the image build", run)
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
