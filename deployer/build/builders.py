"""Image builders behind one Protocol: buildah (the default) and docker (when a daemon is there).

Each builds a Dockerfile into `image` (repo:tag) and pushes it. Output is streamed line by line as events,
capped, with secret build-arg values masked; a failure names the failing step and keeps the last lines.

A Dockerfile is pushed content: its RUN steps are contained (BuildLimits). buildah runs them with OCI isolation
(runc): their own PID, IPC, mount and network namespaces (no network but a loopback of their own unless allowed,
and then a private one on buildah's bridge: the host's loopback stays out of reach, its other addresses do not),
runc's default capabilities and seccomp profile, and memory, CPU and process limits; the whole build is killed
(its process group) at the time limit. Whose uid RUN's root is on the host: rootless (the packaged deployer, or a
root server with server.yaml `builder.runAs`: buildah runs as that unprivileged account, BuildUser), that
account's; a root server without runAs, root's (buildah 1.28 as root cannot remap it: with ID-mapped storage the
layers it commits keep the mapped owners, and without it COPY cannot create directories). `isolation: chroot`
(where no runtime can run) gives up the namespaces, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pwd
import re
import shutil
import signal
import tempfile
import time
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


def contained(request: BuildRequest, *, cgroup: bool = True) -> list[str]:
    """buildah's flags for RUN steps as BuildLimits say (buildah-build(1): --isolation, --network, --memory,
    --cpu-quota, --ulimit). Without `cgroup` (rootless: runc has no cgroup to write; BuildCgroup holds the
    whole build instead) no memory or CPU flags."""
    limits = request.limits
    flags = ["--isolation", limits.isolation]
    if limits.isolation == "oci":
        # OCI isolation gives RUN new PID, IPC, mount and UTS namespaces by default. They are not asked for by flag:
        # buildah reads its namespace flags in the order cgroupns, ipc, network, pid, uts, and `--pid private` (or
        # any "private" after --network) sets the network policy back to enabled (containers/buildah
        # pkg/parse/parse.go NamespaceOptions): with `--network none --pid private` RUN steps got a bridged eth0.
        flags += ["--network", "private" if request.network else "none"]
    if cgroup:
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


@dataclass(frozen=True)
class BuildUser:
    """The unprivileged account a root server runs buildah as (server.yaml `builder.runAs`): buildah is rootless
    under it, so RUN's root is this account on the host and the rest of the container's uids its subordinate
    range (/etc/subuid, /etc/subgid: newuidmap maps them)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str, *, where: str = "server.yaml: builder.runAs") -> BuildUser:
        """The account, checked: one line naming `where` if it is missing, lacks subordinate ids, or the server
        cannot switch to it."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise DeployError(f"no such user {name!r} on this machine", where=where) from None
        if entry.pw_uid == 0:
            raise DeployError(f"{name!r} is root: RUN steps would be root on the host", where=where)
        if os.geteuid() != 0:
            raise DeployError("the server must run as root to run builds as another user", where=where)
        for table in ("/etc/subuid", "/etc/subgid"):
            if not _has_subordinate_ids(Path(table), entry):
                raise DeployError(
                    f"{name!r} has no subordinate ids in {table} (e.g. `usermod --add-subuids 300000-365535 "
                    f"--add-subgids 300000-365535 {name}`)",
                    where=where,
                )
        if not shutil.which("setpriv") or not shutil.which("newuidmap"):
            raise DeployError("needs setpriv (util-linux) and newuidmap (uidmap) to run builds as a user", where=where)
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid)

    def command(self, home: Path) -> list[str]:
        """The prefix that runs a command as this account with a HOME (buildah's config and auth) of its own."""
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--init-groups",
            "--",
            "env",
            f"HOME={home}",
            f"XDG_RUNTIME_DIR={home / 'run'}",
            f"USER={self.name}",
        ]

    def own(self, path: Path) -> None:
        """chown a tree the server made to this account (its files stay readable only to it and root)."""
        os.chown(path, self.uid, self.gid, follow_symlinks=False)
        for parent, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(parent, name), self.uid, self.gid, follow_symlinks=False)


CGROUP_ROOT = Path("/sys/fs/cgroup")


class BuildCgroup:
    """A cgroup the root server makes for one rootless build (buildah and every RUN step it starts), holding the
    BuildLimits a rootless runc cannot set itself (it has no cgroup of its own to write to): memory (and swap),
    CPU quota and process count, for the build as a whole. cgroup v2 (one hierarchy) or v1 (one per controller);
    made beside the server's own cgroup, as /proc/self/cgroup names it."""

    def __init__(self, directories: list[Path]) -> None:
        self.directories = directories

    @classmethod
    def make(cls, limits: BuildLimits, *, prefix: str = "deployer-build-") -> BuildCgroup:
        name = f"{prefix}{os.getpid()}-{os.urandom(4).hex()}"
        memory = str(limits.memory_mb * 2**20)
        quota = str(int(limits.cpus * 100_000))
        own = _own_cgroups()
        made: list[Path] = []
        try:
            if "" in own:  # cgroup v2: one directory, its controllers enabled by the parent
                directory = CGROUP_ROOT / own[""].lstrip("/") / name
                directory.mkdir()
                made.append(directory)
                available = (directory / "cgroup.controllers").read_text().split()
                missing = [c for c in ("memory", "cpu", "pids") if c not in available]
                if missing:
                    raise OSError(f"the controllers {', '.join(missing)} are not delegated to {directory.parent}")
                _write(directory, {"memory.max": memory, "memory.swap.max": "0", "pids.max": str(limits.processes)})
                _write(directory, {"cpu.max": f"{quota} 100000"})
            else:
                for controller, values in (
                    ("memory", {"memory.limit_in_bytes": memory}),
                    ("cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": quota}),
                    ("pids", {"pids.max": str(limits.processes)}),
                ):
                    if controller not in own:
                        raise OSError(f"no cgroup v1 {controller} hierarchy")
                    directory = CGROUP_ROOT / controller / own[controller].lstrip("/") / name
                    directory.mkdir()
                    made.append(directory)
                    _write(directory, values)
                    if controller == "memory" and (directory / "memory.memsw.limit_in_bytes").exists():
                        _write(directory, {"memory.memsw.limit_in_bytes": memory})
        except OSError as exc:
            cls(made).remove()
            raise DeployError(
                f"cannot hold rootless builds to their limits with a cgroup here: {exc}",
                where="server.yaml: builder.runAs",
            ) from None
        return cls(made)

    def enter(self) -> list[str]:
        """The prefix that moves a command into this cgroup before it runs (so all it starts stays inside)."""
        procs = [str(directory / "cgroup.procs") for directory in self.directories]
        join = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        return ["sh", "-c", join, "sh", *procs, "--"]

    def remove(self) -> None:
        """rmdir each directory (the kernel lets it go once its processes have gone)."""
        for directory in reversed(self.directories):
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def _own_cgroups() -> dict[str, str]:
    """The server's cgroup path per v1 controller (and under "" for v2), from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            paths[controller] = path
    if "" in paths and not (CGROUP_ROOT / "cgroup.controllers").exists():
        del paths[""]  # a v1 machine's empty unified line
    return paths


def _write(directory: Path, values: dict[str, str]) -> None:
    for key, value in values.items():
        (directory / key).write_text(value)


def _reachable(directory: Path, user: BuildUser) -> None:
    """The build user must be able to walk down to its storage: every existing directory on the way lets others
    search it (the server's data directory is often 0700)."""
    for parent in [directory.resolve(), *directory.resolve().parents]:
        if parent.is_dir() and not parent.stat().st_mode & 0o001 and parent.stat().st_uid != user.uid:
            raise DeployError(
                f"{user.name!r} cannot reach {directory}: {parent} is not searchable by others (chmod o+x it, or "
                "set builder.storage to a directory it can reach)",
                where="server.yaml: builder.storage",
            )


def _has_subordinate_ids(table: Path, entry: pwd.struct_passwd) -> bool:
    try:
        lines = table.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return any(line.split(":")[0] in (entry.pw_name, str(entry.pw_uid)) for line in lines if line.count(":") == 2)


class BuildahBuilder:
    """buildah with overlay storage under `storage`, RUN steps contained (contained()) and layer caching. With a
    `user` (a root server's builder.runAs), buildah runs rootless as that account, on a storage of its own under
    `storage/<user>`, and each build's context, Dockerfile and registry credentials are copied to a directory the
    account owns (the server's copies stay the server's)."""

    name = "buildah"

    def __init__(self, *, storage: Path, user: BuildUser | None = None) -> None:
        self.user = user
        self.storage = storage / user.name if user else storage
        if user is not None:
            _reachable(storage, user)
            BuildCgroup.make(BuildLimits()).remove()  # at start: one line if builds could not be held to limits
            for sub in ("storage", "run", "home/run", "work"):
                (self.storage / sub).mkdir(parents=True, exist_ok=True)
            self.storage.chmod(0o711)
            for sub in ("storage", "run", "home", "home/run", "work"):
                os.chown(self.storage / sub, user.uid, user.gid)
                (self.storage / sub).chmod(0o700)

    def _base(self) -> list[str]:
        prefix = self.user.command(self.storage / "home") if self.user else []
        return [
            *prefix,
            "buildah",
            "--root",
            str(self.storage / "storage"),
            "--runroot",
            str(self.storage / "run"),
            "--storage-driver",
            "overlay",
        ]

    async def build_and_push(self, request: BuildRequest, sink: EventSink) -> None:
        if self.user is None:
            await self._build_and_push(request, sink)
            return
        work = Path(tempfile.mkdtemp(prefix="build-", dir=self.storage / "work"))
        cgroup: BuildCgroup | None = None
        try:
            staged = await asyncio.to_thread(_stage, request, work, self.user)
            cgroup = BuildCgroup.make(request.limits)
            await self._build_and_push(staged, sink, cgroup=cgroup)
        finally:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _build_and_push(
        self, request: BuildRequest, sink: EventSink, *, cgroup: BuildCgroup | None = None
    ) -> None:
        bud = [
            *self._base(),
            "bud",
            *contained(request, cgroup=cgroup is None),
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
        who = f", RUN as {self.user.name}" if self.user else ""
        sink(Event("build", f"buildah bud -t {request.image} ({describe(request)}{who})"))
        enter = cgroup.enter() if cgroup else []
        run = await run_streaming([*enter, *_reaper(), *bud], request=request, sink=sink, timeout=limits.timeout)
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


def _stage(request: BuildRequest, work: Path, user: BuildUser) -> BuildRequest:
    """The request over copies in `work` that `user` owns: the context (symlinks kept as links), the Dockerfile
    beside its own `.dockerignore` if it has one, and the registry credentials (mode 0600)."""
    context = work / "context"
    shutil.copytree(request.context, context, symlinks=True)
    dockerfile = work / "dockerfile" / request.dockerfile.name
    dockerfile.parent.mkdir()
    shutil.copy2(request.dockerfile, dockerfile)
    ignore = request.dockerfile.with_name(request.dockerfile.name + ".dockerignore")
    if ignore.is_file():
        shutil.copy2(ignore, dockerfile.with_name(ignore.name))
    auth = None
    if request.auth_file is not None and request.auth_file.is_file():
        auth = work / "auth.json"
        shutil.copyfile(request.auth_file, auth)
        auth.chmod(0o600)
    user.own(work)
    work.chmod(0o700)
    return dataclasses.replace(request, context=context, dockerfile=dockerfile, auth_file=auth)


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


def choose_builder(name: str, *, storage: Path, user: BuildUser | None = None) -> Builder:
    """`auto` is docker when a daemon is configured or its socket exists, else buildah."""
    if name == "docker" or (name == "auto" and DockerBuilder.available()):
        return DockerBuilder()
    if name in ("buildah", "auto"):
        return BuildahBuilder(storage=storage, user=user)
    raise DeployError(f"unknown builder {name!r} (expected auto, buildah or docker)", where="--builder")
