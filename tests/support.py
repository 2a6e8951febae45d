"""Helpers for tests: run `deployer` as a user does, and edit files in copied example repos."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deployer.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
STATE = Path(os.environ.get("DEPLOYER_STATE_DIR", ROOT / ".state"))
# buildah on the project's own storage, where `make setup` put the examples' base image
BUILDAH = [
    "buildah",
    "--root",
    str(STATE / "containers" / "storage"),
    "--runroot",
    str(STATE / "containers" / "run"),
    "--storage-driver",
    "overlay",
]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The single line a user reads on failure (asserting there is exactly one)."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one error line, got: {self.err!r}"
        assert "Traceback" not in self.err
        return lines[0]


def run_deployer(*args: str | Path) -> Result:
    """`deployer ARGS` in-process: exit code, stdout and stderr as the user would see them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


def run_deployer_process(*args: str | Path, cwd: Path | None = None) -> Result:
    """`deployer ARGS` as a separate process through the installed console script."""
    exe = shutil.which("deployer", path=str(Path(sys.executable).parent)) or "deployer"
    proc = subprocess.run(
        [exe, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "DEPLOYER_DEBUG": ""},
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def edit(path: Path, old: str, new: str) -> None:
    """Replace `old` (which must occur) with `new` in a file."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


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


def start_registry(tmp: Path, *, htpasswd: str | None = None, data: Path | None = None) -> Registry:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
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


def push_base_image(registry: Registry, name: str = "busybox:1.35") -> str:
    """The examples' local base image, pushed into `registry`; its reference there."""
    target = f"{registry.host}/{name}"
    subprocess.run(
        [*BUILDAH, "push", "--quiet", "--tls-verify=false", "localhost/deployer/busybox:1.35", f"docker://{target}"],
        check=True,
        capture_output=True,
    )
    return target


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=dev@example.com", "-c", "user.name=dev", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")
