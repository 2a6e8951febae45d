"""A docker-registry for tests (the `docker-registry` program on PATH), and a busybox image pushed into it.

The image is assembled here from the host's static busybox (Debian's busybox-static) and pushed with the
registry's HTTP API (distribution's spec: blob uploads, then the manifest), so no image builder and no outside
registry is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Registry:
    host: str
    log: Path
    process: subprocess.Popen[bytes]

    def requests(self, method: str, path_part: str) -> int:
        """How many `method` requests whose path contains `path_part` the registry's access log shows."""
        return sum(1 for line in self.log.read_text().splitlines() if f'"{method} ' in line and path_part in line)

    def tags(self, path: str) -> list[str]:
        with urllib.request.urlopen(f"http://{self.host}/v2/{path}/tags/list", timeout=10) as response:
            return list(json.load(response)["tags"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_registry(tmp: Path, *, htpasswd: str | None = None, data: Path | None = None) -> Registry:
    """docker-registry on a free port of 127.0.0.1, storing under `data` (default tmp/data)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(data or tmp / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if htpasswd:
        (tmp / "htpasswd").write_text(htpasswd)
        config["auth"] = {"htpasswd": {"realm": "test", "path": str(tmp / "htpasswd")}}
    (tmp / "config.yml").write_text(json.dumps(config))
    log = tmp / "access.log"
    process = subprocess.Popen(
        ["docker-registry", "serve", str(tmp / "config.yml")], stdout=log.open("wb"), stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return Registry(f"127.0.0.1:{port}", log, process)


def busybox_layer(busybox: Path) -> bytes:
    """An uncompressed layer: /bin/busybox, a symlink per applet it lists, and /tmp."""
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=10)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in (("bin", 0o755), ("tmp", 0o1777)):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, mode
            tar.addfile(entry)
        data = busybox.read_bytes()
        entry = tarfile.TarInfo("bin/busybox")
        entry.size, entry.mode = len(data), 0o755
        tar.addfile(entry, io.BytesIO(data))
        for applet in sorted(set(applets.stdout.split()) - {"busybox"}):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buffer.getvalue()


def push_busybox(
    registry: str, name: str = "busybox:latest", *, busybox: Path | None = None, labels: dict[str, str] | None = None
) -> str:
    """Push a busybox image made from the host's static busybox to `registry` (HOST:PORT, plain HTTP); its
    reference there. `labels` go into the image's config (two images that differ only there differ in digest)."""
    found = busybox or Path(shutil.which("busybox") or "/bin/busybox")
    repository, _, tag = name.partition(":")
    layer = busybox_layer(found)
    compressed = gzip.compress(layer, mtime=0)
    config = json.dumps(
        {
            "architecture": ARCHITECTURES.get(platform.machine(), platform.machine()),
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], **({"Labels": labels} if labels else {})},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }
    ).encode()
    for blob in (compressed, config):
        _upload(registry, repository, blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG_V1, "size": len(config), "digest": _digest(config)},
        "layers": [{"mediaType": LAYER_GZIP, "size": len(compressed), "digest": _digest(compressed)}],
    }
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag or 'latest'}",
        data=json.dumps(manifest).encode(),
        method="PUT",
        headers={"Content-Type": MANIFEST_V2},
    )
    urllib.request.urlopen(request, timeout=30).close()
    return f"{registry}/{repository}:{tag or 'latest'}"


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _upload(registry: str, repository: str, blob: bytes) -> None:
    start = urllib.request.Request(f"http://{registry}/v2/{repository}/blobs/uploads/", data=b"", method="POST")
    with urllib.request.urlopen(start, timeout=30) as response:
        location = urllib.parse.urljoin(f"http://{registry}/", response.headers["Location"])
    separator = "&" if "?" in location else "?"
    finish = urllib.request.Request(
        f"{location}{separator}digest={urllib.parse.quote(_digest(blob))}",
        data=blob,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    urllib.request.urlopen(finish, timeout=60).close()
