"""Image builds with the real buildah and a real registry (Debian's docker-registry)."""

from __future__ import annotations

import asyncio
import base64
import crypt  # deprecated in 3.13; the bcrypt hash docker-registry's htpasswd needs, from glibc
import fcntl
import io
import json
import os
import pwd
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    BUILDAH,
    ROOT,
    STATE,
    Registry,
    commit,
    edit,
    git,
    run_deployer,
    run_deployer_process,
    start_registry,
)

from deployer.build import BuildahBuilder, BuildLimits, BuildRequest, BuildUser, RegistryClient, Repository
from deployer.build.builders import run_streaming
from deployer.errors import DeployError
from deployer.events import Event
from deployer.pipeline import BuildSettings, build_image

pytestmark = pytest.mark.skipif(
    not shutil.which("buildah") or not shutil.which("docker-registry"),
    reason="buildah and docker-registry are installed by `make setup`",
)
STORAGE = STATE / "containers"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    running = start_registry(tmp_path / "registry")
    yield running
    running.process.terminate()
    running.process.wait(timeout=10)


@pytest.fixture
def app(tmp_path: Path, registry: Registry) -> Path:
    """examples/hello as its own git repository, pushing to the test registry."""
    repo = tmp_path / "app"
    shutil.copytree(ROOT / "examples" / "hello", repo)
    edit(repo / "deploy.yaml", "repository: 127.0.0.1:5000/hello", f"repository: {registry.host}/hello")
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "first")
    return repo


def build(repo: Path, *, settings: BuildSettings | None = None) -> tuple[str, list[Event]]:
    events: list[Event] = []
    settings = settings or BuildSettings(builder=BuildahBuilder(storage=STORAGE), registry=RegistryClient())
    image = asyncio.run(build_image(repo=repo, ref="HEAD", settings=settings, sink=events.append))
    return image.ref, events


def image_file(ref: str, path: str) -> str:
    """A file's text inside a pushed image, read back from the registry through buildah."""
    base = BUILDAH
    container = subprocess.run(
        [*base, "from", "--tls-verify=false", "--pull-always", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        return subprocess.run(
            [*base, "run", "--isolation", "chroot", container, "cat", path], capture_output=True, text=True, check=False
        ).stdout
    finally:
        subprocess.run([*base, "rm", container], capture_output=True, check=False)


def test_build_pushes_the_commit_tag_and_pins_the_digest(app: Path, registry: Registry) -> None:
    sha = git(app, "rev-parse", "HEAD")
    ref, events = build(app)
    assert registry.tags("hello") == [sha]
    head = urllib.request.Request(
        f"http://{registry.host}/v2/hello/manifests/{sha}",
        method="HEAD",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    with urllib.request.urlopen(head, timeout=10) as response:
        digest = response.headers["Docker-Content-Digest"]
    assert ref == f"{registry.host}/hello@{digest}"
    assert any(e.kind == "output" and e.message.startswith("STEP 1/") for e in events), "output streamed line by line"
    assert image_file(ref, "/app/greeting") == f"hello from {sha}\n"


def test_the_same_commit_again_is_not_rebuilt(app: Path, registry: Registry) -> None:
    first, _ = build(app)
    pushes = registry.requests("PUT", "/manifests/")
    heads = registry.requests("HEAD", "/manifests/")
    again, events = build(app)
    assert again == first
    assert [e.data.get("built") for e in events if "built" in e.data] == [False]
    assert not [e for e in events if e.kind == "output"]
    assert registry.requests("PUT", "/manifests/") == pushes
    assert registry.requests("HEAD", "/manifests/") == heads + 1, "a re-push costs one registry request"


def test_a_change_in_one_file_rebuilds_with_cached_layers(app: Path, registry: Registry) -> None:
    first, _ = build(app)
    edit(app / "environments" / "prod.yaml", "replicas: 3", "replicas: 4")
    sha = commit(app, "more replicas")
    second, events = build(app)
    assert second != first
    output = [e.message for e in events if e.kind == "output"]
    assert any("Using cache" in line for line in output), output
    assert image_file(second, "/app/greeting") == f"hello from {sha}\n"


def test_the_source_is_the_commit_not_the_working_copy_and_dockerignore_holds(app: Path) -> None:
    (app / "www" / "notes.txt").write_text("committed\n")
    (app / "www" / "ignored.txt").write_text("private\n")
    (app / ".dockerignore").write_text((app / ".dockerignore").read_text() + "www/ignored.txt\n")
    commit(app, "notes")
    (app / "www" / "notes.txt").write_text("uncommitted edit\n")
    ref, _ = build(app)
    assert image_file(ref, "/www/notes.txt") == "committed\n"
    assert image_file(ref, "/www/ignored.txt") == ""


def test_a_failing_run_shows_the_step_and_the_last_lines(app: Path) -> None:
    edit(app / "Dockerfile", "USER 65534", "RUN echo about to fail && exit 3\nUSER 65534")
    commit(app, "broken")
    containers = subprocess.run([*BUILDAH, "containers", "-q"], capture_output=True, text=True, check=True).stdout
    result = run_deployer("build", "--repo", app)
    after = subprocess.run([*BUILDAH, "containers", "-q"], capture_output=True, text=True, check=True).stdout
    assert after == containers, "a failed build leaves no working container behind"
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines[0] == (
        "error: Dockerfile: the image build failed at step 'RUN echo about to fail && exit 3' "
        "(exit status 3); last 20 lines of output below"
    )
    assert len(lines) == 21
    assert any("about to fail" in line for line in lines[1:])
    assert "Traceback" not in result.err


def test_a_missing_dockerfile_is_one_line(app: Path) -> None:
    (app / "Dockerfile").unlink()
    commit(app, "no dockerfile")
    result = run_deployer("build", "--repo", app)
    assert result.code == 1
    assert (
        result.error_line == "error: deploy.yaml: build.dockerfile: Dockerfile 'Dockerfile' does not exist in the repo"
    )


def test_an_invalid_image_name_is_one_line(app: Path) -> None:
    edit(app / "deploy.yaml", "/hello\n", "/Hello:latest\n")
    commit(app, "bad image")
    result = run_deployer("build", "--repo", app)
    assert result.code == 1
    assert result.error_line.startswith("error: deploy.yaml:5:3: image.repository: ")
    assert "carries a tag or digest; the deployer tags each image with its commit" in result.error_line


def test_a_build_context_over_the_limit_is_refused(app: Path) -> None:
    (app / "www" / "big.bin").write_bytes(b"x" * 2 * 1024 * 1024)
    commit(app, "big")
    result = run_deployer("build", "--repo", app, "--max-context-mb", "1")
    assert result.code == 1
    assert result.error_line == (
        "error: deploy.yaml: build.context: build context '.' is 2.0 MiB, over the limit of 1 MiB"
    )


def test_secret_build_args_are_masked(app: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    edit(app / "Dockerfile", "USER 65534", "ARG API_TOKEN\nRUN echo token is $API_TOKEN\nUSER 65534")
    commit(app, "token")
    monkeypatch.setenv("API_TOKEN", "s3cr3t-value")
    result = run_deployer("build", "--repo", app, "--secret-build-arg", "API_TOKEN")
    assert result.code == 0, result.err
    assert "s3cr3t-value" not in result.out
    assert "token is ***" in result.out


def test_registry_down_is_retried_then_a_clear_failure(app: Path, registry: Registry) -> None:
    registry.process.terminate()
    registry.process.wait(timeout=10)
    started = time.monotonic()
    result = run_deployer("build", "--repo", app)
    assert result.code == 1
    assert result.error_line.startswith(f"error: registry: registry {registry.host} is unavailable after 4 attempts:")
    assert time.monotonic() - started > 0.4, "retried with backoff"


def test_bad_credentials_are_a_clear_message(tmp_path: Path, app: Path) -> None:
    secured = start_registry(
        tmp_path / "secured", htpasswd=f"dev:{crypt.crypt('right', crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
    )
    try:
        text = (app / "deploy.yaml").read_text()
        current = text.split("repository: ")[1].split("/")[0]
        (app / "deploy.yaml").write_text(text.replace(current, secured.host, 1))
        commit(app, "secured registry")
        auth = tmp_path / "config.json"
        auth.write_text(json.dumps({"auths": {secured.host: {"auth": base64.b64encode(b"dev:wrong").decode()}}}))
        result = run_deployer("build", "--repo", app, "--authfile", auth)
        assert result.code == 1
        assert result.error_line == (
            f"error: registry: registry {secured.host} refused the credentials for hello "
            "(HTTP 401); check the docker config.json given to the deployer"
        )
    finally:
        secured.process.terminate()
        secured.process.wait(timeout=10)


@pytest.fixture
def dockerd(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private Docker daemon (no bridge, no iptables rules left behind) with the local base image loaded."""
    if not shutil.which("dockerd"):
        pytest.skip("dockerd is installed by `make setup`")
    root = tmp_path_factory.mktemp("dk")
    host = f"unix://{root}/docker.sock"
    daemon = subprocess.Popen(
        [
            "dockerd",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "x"),
            "--host",
            host,
            "--pidfile",
            str(root / "pid"),
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(root / "log").open("wb"),
    )
    try:
        for _ in range(200):
            if subprocess.run(["docker", "-H", host, "version"], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1)
        base = BUILDAH
        archive = root / "base.tar"
        subprocess.run(
            [
                *base,
                "push",
                "localhost/deployer/busybox:1.35",
                f"docker-archive:{archive}:localhost/deployer/busybox:1.35",
            ],
            capture_output=True,
            check=True,
        )
        subprocess.run(["docker", "-H", host, "load", "-i", str(archive)], capture_output=True, check=True)
        monkeypatch.setenv("DOCKER_HOST", host)
        yield host
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        # dockerd leaves its default network namespace bind-mounted under the exec root
        mounts = Path("/proc/mounts").read_text().split("\n")
        for target in [
            line.split()[1] for line in mounts if len(line.split()) > 1 and line.split()[1].startswith(str(root))
        ]:
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def test_docker_builder_is_chosen_when_a_daemon_is_there(app: Path, registry: Registry, dockerd: str) -> None:
    result = run_deployer("build", "--repo", app)
    assert result.code == 0, result.err
    sha = git(app, "rev-parse", "HEAD")
    assert f"[build] building {registry.host}/hello:{sha} with docker" in result.out
    assert "Step 1/" in result.out
    assert registry.tags("hello") == [sha]
    assert (
        image_file(result.out.strip().splitlines()[-1].removeprefix("image: "), "/app/greeting")
        == f"hello from {sha}\n"
    )


def test_the_registry_client_reads_manifests_by_tag_and_digest(app: Path, registry: Registry) -> None:
    ref, _ = build(app)
    digest = ref.rsplit("@", 1)[1]
    client = RegistryClient()
    repository = Repository.parse(f"{registry.host}/hello")
    by_tag = asyncio.run(client.manifest(repository, git(app, "rev-parse", "HEAD")))
    by_digest = asyncio.run(client.manifest(repository, digest))
    assert by_tag == by_digest
    assert by_tag is not None and by_tag["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert asyncio.run(client.manifest(repository, "no-such-tag")) is None


def test_build_output_is_capped_and_says_so() -> None:
    events: list[Event] = []
    request = BuildRequest(context=Path("."), dockerfile=Path("Dockerfile"), image="x:y")
    run = asyncio.run(run_streaming(["seq", "1", "50"], request=request, sink=events.append, cap=10))
    assert run.code == 0
    assert [e.message for e in events if e.kind == "output"] == [str(i) for i in range(1, 11)]
    assert [e.message for e in events if e.kind == "warning"] == [
        "(build output capped at 10 lines; the rest is not shown)"
    ]
    assert run.tail[-1] == "50", "the tail keeps the last lines even when the output is capped"


def test_setup_put_the_base_image_in_the_local_registry(tmp_path: Path) -> None:
    local = start_registry(tmp_path / "local", data=STATE / "registry" / "data")
    try:
        assert local.tags("deployer/busybox") == ["1.35"]
    finally:
        local.process.terminate()
        local.process.wait(timeout=10)


# --- a Dockerfile is pushed content: its RUN steps are contained --------------------------------------------------


def contained(app: Path, run: str) -> None:
    edit(app / "Dockerfile", "USER 65534", f"RUN {run}\nUSER 65534")
    commit(app, "probe")


def outputs(events: list[Event]) -> str:
    return "\n".join(e.message for e in events if e.kind == "output")


def host_address() -> str:
    """This machine's first IPv4 address that is not loopback (what a RUN step on a bridge would reach it by)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), 0x8915, request)[20:24])  # SIOCGIFADDR
            except OSError:  # no IPv4 address on this interface
                continue
            if not address.startswith("127."):
                return address
    pytest.skip("no non-loopback IPv4 address on this machine")


@pytest.fixture
def host_service() -> Iterator[str]:
    """host:port of an HTTP server of this machine bound to every address, by the host's non-loopback address:
    what a RUN step in a bridged network namespace could reach (the server's own HTTP port is such a service)."""
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "--bind", "0.0.0.0", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = re.search(r"port (\d+)", server.stdout.readline())
        assert port, "http.server did not say its port"
        yield f"{host_address()}:{port.group(1)}"
    finally:
        server.kill()
        server.wait()


def probe(address: str, *, name: str) -> str:
    """A RUN command printing `NAME=reached` if an HTTP server answers at host:port, else `NAME=unreachable`
    (busybox nc: the image's busybox wget dies of SIGSEGV before connecting, so it called everything unreachable)."""
    host, port = address.rsplit(":", 1)
    get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
    return f"({get} | nc -w 3 {host} {port} | grep -q '^HTTP/' && echo {name}=reached) || echo {name}=unreachable; "


INTERFACES = "echo interfaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ,); "
NAMESPACES = "for n in pid ipc net uts mnt; do echo ns.$n=$(ls -l /proc/self/ns/$n | sed 's/.*-> //'); done; "


def said(lines: list[str], key: str) -> str:
    return next(line for line in lines if line.startswith(f"{key}=")).removeprefix(f"{key}=")


def host_namespaces() -> dict[str, str]:
    return {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ("pid", "ipc", "net", "uts", "mnt")}


def test_run_steps_see_and_signal_no_host_process_and_reach_no_host_service(
    app: Path, registry: Registry, host_service: str
) -> None:
    victim = subprocess.Popen(["sleep", "301"])
    try:
        contained(
            app,
            "echo pids=$(ls /proc | grep -c '^[0-9]'); "
            f"(kill -9 {victim.pid} 2>/dev/null && echo signalled) || echo no-such-process; "
            + probe(registry.host, name="loopback")
            + probe(host_service, name="host")
            + INTERFACES
            + NAMESPACES
            + "echo id=$(id -u) limits=$(grep 'Max processes' /proc/self/limits | tr -s ' ' | cut -d' ' -f3)",
        )
        _, events = build(app)
        lines = outputs(events).splitlines()
        assert victim.poll() is None, "a RUN step killed a process of the host"
        assert "no-such-process" in lines and "signalled" not in lines
        assert int(said(lines, "pids")) < 10, f"a RUN step sees {said(lines, 'pids')} processes: the host's"
        assert said(lines, "loopback") == "unreachable"
        assert said(lines, "host") == "unreachable", "a RUN step with no network reached a service of the host"
        assert said(lines, "interfaces") == "lo,"
        shared = [kind for kind, ns in host_namespaces().items() if said(lines, f"ns.{kind}") == ns]
        assert not shared, f"a RUN step shares the host's {shared} namespaces"
        assert any(line.endswith("limits=1024") for line in lines), lines
        assert any("no network, 2048 MiB, 2 CPUs, 1024 processes, 900s" in e.message for e in events)
    finally:
        victim.kill()


def test_a_granted_network_is_a_private_one(app: Path, registry: Registry, host_service: str) -> None:
    edit(app / "deploy.yaml", "  context: .\n", "  context: .\n  network: true\n")
    contained(app, probe(registry.host, name="loopback") + probe(host_service, name="host") + INTERFACES + NAMESPACES)
    settings = BuildSettings(builder=BuildahBuilder(storage=STORAGE), registry=RegistryClient(), network_allowed=True)
    _, events = build(app, settings=settings)
    lines = outputs(events).splitlines()
    assert any("a private network, 2048 MiB" in e.message for e in events)
    assert said(lines, "loopback") == "unreachable", "the host's loopback stays out of reach"
    # the probe works: a network namespace on the bridge reaches the host's other addresses (README says so)
    assert said(lines, "host") == "reached"
    assert said(lines, "interfaces") != "lo,"
    assert said(lines, "ns.net") != host_namespaces()["net"]


def test_a_build_past_its_time_limit_is_killed_with_everything_it_started(app: Path, registry: Registry) -> None:
    nap = f"sleep {1000 + os.getpid() % 9000}"  # this run's own: nothing else here sleeps that long
    contained(app, f"echo sleeping && {nap}")
    settings = BuildSettings(
        builder=BuildahBuilder(storage=STORAGE), registry=RegistryClient(), limits=BuildLimits(timeout=5.0)
    )
    started = time.monotonic()
    with pytest.raises(DeployError) as failed:
        build(app, settings=settings)
    assert time.monotonic() - started < 60
    assert str(failed.value).startswith(
        "Dockerfile: the image build ran past its time limit (5s, server.yaml builder.timeout) at step "
        f"'RUN echo sleeping && {nap}' and was killed"
    )
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", nap], capture_output=True, text=True, check=False).stdout.split()
    assert left == [], "the build's processes outlived its time limit"


def test_a_run_step_over_its_memory_limit_fails_the_build(app: Path, registry: Registry) -> None:
    contained(app, "dd if=/dev/zero of=/dev/null bs=300M count=2 && echo survived")  # a 300 MB buffer
    settings = BuildSettings(
        builder=BuildahBuilder(storage=STORAGE), registry=RegistryClient(), limits=BuildLimits(memory_mb=128)
    )
    with pytest.raises(DeployError, match="the image build failed at step 'RUN dd ") as failed:
        build(app, settings=settings)
    assert "Killed" in failed.value.details, failed.value.details  # by the kernel, at the limit
    _, events = build(app)  # within the default 2 GiB the same step passes
    assert "survived" in outputs(events).splitlines()


def test_an_image_over_its_size_limit_is_removed_and_not_pushed(app: Path, registry: Registry) -> None:
    contained(app, "dd if=/dev/zero of=/ballast bs=1M count=24 2>/dev/null")  # 24 MiB of layer
    settings = BuildSettings(
        builder=BuildahBuilder(storage=STORAGE), registry=RegistryClient(), limits=BuildLimits(image_mb=16)
    )
    with pytest.raises(DeployError) as refused:
        build(app, settings=settings)
    assert re.fullmatch(
        r"Dockerfile: the built image is 2\d MiB, over the 16 MiB server.yaml builder.maxImageMb allows; "
        r"it was removed and nothing was pushed",
        str(refused.value),
    ), str(refused.value)
    assert registry.requests("PUT", "/manifests/") == 0, "nothing was pushed"
    images = [*BUILDAH, "images", "--noheading", "--format", "{{.Name}}:{{.Tag}}"]
    listed = subprocess.run(images, capture_output=True, text=True, check=True).stdout
    assert f"hello:{git(app, 'rev-parse', 'HEAD')}" not in listed, "the oversized image stays in storage"
    build(app)  # within the default 4 GiB the same image is pushed


def test_network_for_run_steps_must_be_granted(app: Path, registry: Registry) -> None:
    edit(app / "deploy.yaml", "  context: .\n", "  context: .\n  network: true\n")
    commit(app, "wants network")
    settings = BuildSettings(builder=BuildahBuilder(storage=STORAGE), registry=RegistryClient(), network_allowed=False)
    with pytest.raises(DeployError) as refused:
        build(app, settings=settings)
    assert str(refused.value) == (
        "deploy.yaml: build.network: RUN steps may not have a network for app 'hello': an operator allows it "
        "with server.yaml apps.hello.buildNetwork"
    )
    assert registry.requests("PUT", "/manifests/") == 0, "nothing was built or pushed"


BUILD_USER = "deployer-build"  # scripts/setup makes it (as root), with /etc/subuid and /etc/subgid ranges


@pytest.fixture(scope="module")
def rootless() -> Iterator[BuildahBuilder]:
    """A root server's builder with builder.runAs: buildah rootless as BUILD_USER, its storage seeded with the
    base image the example builds FROM (as an operator's would get it from a registry)."""
    if os.geteuid() != 0:
        pytest.skip("builds run as another user only from a server running as root")
    top = Path(tempfile.mkdtemp(prefix="deployer-rootless-"))
    top.chmod(0o711)
    builder = BuildahBuilder(storage=top, user=BuildUser.lookup(BUILD_USER))
    base = "localhost/deployer/busybox:1.35"
    archive = builder.storage / "work" / "base.tar"
    subprocess.run([*BUILDAH, "push", "-q", base, f"oci-archive:{archive}:{base}"], check=True, capture_output=True)
    os.chown(archive, builder.user.uid, builder.user.gid)  # type: ignore[union-attr]
    subprocess.run([*builder._base(), "pull", "-q", f"oci-archive:{archive}"], check=True, capture_output=True)
    archive.unlink()
    yield builder
    shutil.rmtree(top, ignore_errors=True)


def layer_owners(registry: Registry, ref: str) -> dict[str, tuple[int, int]]:
    """uid and gid of each path in the image's last layer, read from the registry."""
    name, _, tag = ref.removeprefix(f"{registry.host}/").partition("@")  # repository@sha256:...
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    request = urllib.request.Request(f"http://{registry.host}/v2/{name}/manifests/{tag}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        manifest = json.load(response)
    digest = manifest["layers"][-1]["digest"]
    with urllib.request.urlopen(f"http://{registry.host}/v2/{name}/blobs/{digest}", timeout=10) as response:
        blob = response.read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as layer:
        return {member.name: (member.uid, member.gid) for member in layer.getmembers()}


def test_with_run_as_run_steps_are_an_unprivileged_user_on_the_host(
    app: Path, registry: Registry, host_service: str, rootless: BuildahBuilder
) -> None:
    victim = subprocess.Popen(["sleep", "301"])
    try:
        contained(
            app,
            "echo map=$(head -1 /proc/self/uid_map | tr -s ' ' | sed 's/^ //'); echo id=$(id -u); "
            f"(kill -9 {victim.pid} 2>/dev/null && echo signalled) || echo no-such-process; "
            "mkdir -p /data && echo made > /data/made; "
            + probe(registry.host, name="loopback")
            + probe(host_service, name="host")
            + INTERFACES,
        )
        settings = BuildSettings(builder=rootless, registry=RegistryClient())
        ref, events = build(app, settings=settings)
        lines = outputs(events).splitlines()
        uid = pwd.getpwnam(BUILD_USER).pw_uid
        assert said(lines, "id") == "0", "RUN's root is root inside the container"
        assert said(lines, "map") == f"0 {uid} 1", f"RUN's root is {BUILD_USER} (uid {uid}) on the host"
        assert victim.poll() is None and "no-such-process" in lines
        assert said(lines, "loopback") == "unreachable" and said(lines, "host") == "unreachable"
        assert said(lines, "interfaces") == "lo,"
        assert any(f"RUN as {BUILD_USER})" in e.message for e in events)
        # what the image holds is owned as the Dockerfile said (root), not by the host uid RUN ran as
        owners = layer_owners(registry, ref)
        assert owners["data/made"] == (0, 0), owners
        assert image_file(ref, "/app/greeting").strip().startswith("hello from ")
    finally:
        victim.kill()


def test_run_as_is_checked_at_start() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, as the server with runAs does")
    for name, message in (
        ("no-such-user-here", "server.yaml: builder.runAs: no such user 'no-such-user-here' on this machine"),
        ("root", "server.yaml: builder.runAs: 'root' is root: RUN steps would be root on the host"),
        ("nobody", "server.yaml: builder.runAs: 'nobody' has no subordinate ids in /etc/subuid"),
    ):
        with pytest.raises(DeployError) as refused:
            BuildUser.lookup(name)
        assert str(refused.value).startswith(message), str(refused.value)


def build_cgroups() -> list[Path]:
    return [path for path in Path("/sys/fs/cgroup").glob("**/deployer-build-*") if path.is_dir()]


def test_with_run_as_the_limits_hold_the_whole_build(app: Path, registry: Registry, rootless: BuildahBuilder) -> None:
    """Rootless runc cannot set cgroup limits; the server's cgroup for the build holds them (memory, time)."""
    before = build_cgroups()
    contained(app, "dd if=/dev/zero of=/dev/null bs=300M count=2 && echo survived")  # a 300 MB buffer
    small = BuildSettings(builder=rootless, registry=RegistryClient(), limits=BuildLimits(memory_mb=128))
    with pytest.raises(DeployError, match="the image build failed at step 'RUN dd ") as failed:
        build(app, settings=small)
    assert "Killed" in failed.value.details, failed.value.details  # by the kernel, at the limit
    _, events = build(app, settings=BuildSettings(builder=rootless, registry=RegistryClient()))
    assert "survived" in outputs(events).splitlines()

    nap = f"sleep {1000 + os.getpid() % 9000}"
    contained(app, f"echo sleeping && {nap}")
    short = BuildSettings(builder=rootless, registry=RegistryClient(), limits=BuildLimits(timeout=5.0))
    with pytest.raises(DeployError, match=r"ran past its time limit \(5s"):
        build(app, settings=short)
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", nap], capture_output=True, text=True, check=False).stdout.split()
    assert left == [], "the build's processes outlived its time limit"
    assert build_cgroups() == before, "a build's cgroup was left behind"


def _unreachable_cluster(tmp_path: Path) -> Path:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {}}]\n"
    )
    return kubeconfig


def test_serve_with_a_run_as_user_that_cannot_build_is_one_line(tmp_path: Path) -> None:
    kubeconfig = _unreachable_cluster(tmp_path)
    config = tmp_path / "server.yaml"
    config.write_text(
        f"dataDir: {tmp_path / 'data'}\nlisten: {{http: '127.0.0.1:0'}}\ncluster: {{kubeconfig: {kubeconfig}}}\n"
        "registry: {host: '127.0.0.1:5000'}\nbuilder: {kind: buildah, runAs: no-such-user-here}\n"
        "apps: {hello: {environments: {staging: hello-staging}}}\nusers: {}\n"
    )
    result = run_deployer_process("serve", "--config", config)
    assert result.code == 1
    assert result.error_line == "error: server.yaml: builder.runAs: no such user 'no-such-user-here' on this machine"
    assert not (tmp_path / "data" / "containers").exists(), "nothing was made"


def test_serve_with_a_kaniko_builder_and_a_certificate_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    kubeconfig = _unreachable_cluster(tmp_path)
    config = tmp_path / "server.yaml"
    config.write_text(
        f"dataDir: {tmp_path / 'data'}\ncluster: {{kubeconfig: {kubeconfig}}}\n"
        f"listen: {{http: '127.0.0.1:0', tls: {{certFile: {tmp_path / 'no.crt'}, keyFile: {tmp_path / 'no.key'}}}}}\n"
        "registry: {host: '127.0.0.1:5000'}\n"
        "builder: {kind: kaniko, namespace: builds, contextUrl: 'https://deployer.example.com'}\n"
        "apps: {hello: {environments: {staging: hello-staging}}}\nusers: {}\n"
    )
    result = run_deployer_process("serve", "--config", config)
    assert result.code == 1
    assert (
        result.error_line
        == "error: server.yaml: listen.tls: cannot load the certificate and key: No such file or directory"
    )
    assert not (tmp_path / "data").exists(), "nothing was made"
