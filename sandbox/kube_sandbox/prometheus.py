"""A real Prometheus (Debian's `prometheus`) scraping the sandbox mesh's telemetry, for `--prometheus`."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """`start()` runs prometheus on a free 127.0.0.1 port, scraping `targets` every `interval`; `stop()` ends it."""

    def __init__(self, targets: list[str], *, interval: str = "1s", root: Path | None = None) -> None:
        self.targets = targets
        self.interval = interval
        self.root = root
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._own_root = root is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not found: install Debian's prometheus (make setup)")
        root = self.root = self.root or Path(tempfile.mkdtemp(prefix="deployer-prometheus-"))
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "scrape_configs": [
                {"job_name": "sandbox-mesh", "static_configs": [{"targets": self.targets}]},
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(root / "prometheus.log").open("ab"),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}; see {root / 'prometheus.log'}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer,  # noqa: S310 - our own URL
            ):
                if answer.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"prometheus was not ready in {timeout:g}s; see {root / 'prometheus.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
