"""A private Docker Engine for the `containers` runtime: started, networked and torn down by the sandbox.

dockerd keeps its data, exec root and socket in one directory of ours. Pods get a user-defined bridge network
with a bridge name and subnet of our choosing, and no iptables rules (`--iptables=false`): the host reaches pod
IPs directly over the bridge and published ports go through docker-proxy. `stop()` removes every container and
the network (which deletes the bridge), stops dockerd and its containerd, and lifts the mounts they leave.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import docker
import docker.errors

LABEL = "dev.kube_sandbox"
STOP_CALL = 10  # seconds for each docker call while the sandbox stops
STOP_REMOVALS = 20.0  # seconds for removing the containers at stop; dockerd's shutdown stops the rest
PAUSE_REPOSITORY, PAUSE_TAG = "deployer-sandbox/pause", "1"
PAUSE_IMAGE = f"{PAUSE_REPOSITORY}:{PAUSE_TAG}"


class EngineError(Exception):
    """dockerd could not be started or set up; the message says what to do."""


def _routes() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7:
            dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
            nets.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    used = [n for n in _routes() if n.prefixlen > 0]
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")  # noqa: S311
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    raise EngineError("no free 10.200-250.x.0/24 subnet for the sandbox's pod network")


class Engine:
    """One dockerd, one pod network, one pause image; everything it makes carries the sandbox's label."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.id = secrets.token_hex(4)
        self.socket = root / "docker.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: docker.DockerClient | None = None
        self.network = f"sandbox-{self.id}"
        self.bridge = f"dsb-{self.id}"

    @property
    def docker(self) -> docker.DockerClient:
        assert self.client is not None, "engine not started"
        return self.client

    def start(self) -> None:
        """Start dockerd (about a second), create the pod network and the pause image; on failure, undo it all."""
        if not shutil.which("dockerd"):
            raise EngineError("dockerd not found: the containers runtime needs Debian's docker.io (make setup)")
        busybox = shutil.which("busybox")
        if not busybox:
            raise EngineError("busybox not found: the containers runtime needs Debian's busybox-static (make setup)")
        try:
            self._start(busybox)
        except BaseException:
            self.stop()
            raise

    def _start(self, busybox: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={self.root / 'data'}",
                f"--exec-root={self.root / 'x'}",
                f"--host=unix://{self.socket}",
                f"--pidfile={self.root / 'dockerd.pid'}",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while self.client is None:
            if self.process.poll() is not None:
                raise EngineError(f"dockerd exited with {self.process.returncode}; see {self.root / 'dockerd.log'}")
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd did not answer in 30s; see {self.root / 'dockerd.log'}")
            if self.socket.exists():
                with contextlib.suppress(docker.errors.DockerException):
                    client = docker.DockerClient(base_url=f"unix://{self.socket}", timeout=120)
                    client.ping()
                    self.client = client
            time.sleep(0.05)
        for attempt in range(5):
            try:
                self.docker.networks.create(
                    self.network,
                    driver="bridge",
                    options={"com.docker.network.bridge.name": self.bridge},
                    ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(_free_subnet()))]),
                    labels={LABEL: self.id},
                )
                break
            except docker.errors.APIError:
                if attempt == 4:
                    raise
        self._pause_image(busybox)

    def _pause_image(self, busybox: str) -> None:
        """A one-file image (busybox-static, run as `/busybox sleep`) that holds each pod's network namespace."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            tar.add(busybox, arcname="busybox")
        data.seek(0)
        self.docker.api.import_image_from_data(data.getvalue(), repository=PAUSE_REPOSITORY, tag=PAUSE_TAG)

    def stop(self) -> None:
        """Remove what this engine made and stop dockerd; safe to call twice."""
        if self.client is not None:
            self.client.api.timeout = STOP_CALL  # not the 120 s a slow image pull may need
            with contextlib.suppress(Exception):
                containers = self.client.containers.list(all=True, filters={"label": LABEL})
                # at once, not one after another: a module's tests leave dozens, and on a busy machine removing
                # them in turn outlasted the stop's timeout; what is not removed in time, dockerd's own shutdown
                # stops
                pool = ThreadPoolExecutor(8)
                wait([pool.submit(_remove, c) for c in containers], timeout=STOP_REMOVALS)
                pool.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(Exception):
                self.client.networks.get(self.network).remove()
            self.client.close()
            self.client = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None
        self._release_leftovers()

    def _release_leftovers(self) -> None:
        # dockerd leaves its netns bind mounts under the exec root, and a killed one its bridge
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1].startswith(str(self.root)):
                subprocess.run(["umount", "-l", fields[1]], check=False, capture_output=True)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)
        shutil.rmtree(self.root / "x", ignore_errors=True)

    def labels(self, **extra: str) -> dict[str, Any]:
        return {LABEL: self.id, **extra}


def _remove(container: Any) -> None:
    with contextlib.suppress(docker.errors.APIError):
        container.remove(force=True)
