"""Sandboxes for tests: started in a background thread on a random port, or a real cluster from the environment.

`KUBE_SANDBOX_KUBECONFIG=/path/to/kubeconfig` points the fixtures at an existing cluster instead (as envtest's
USE_EXISTING_CLUSTER does); tests marked `sandbox_only` are then skipped.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kube_sandbox import Sandbox

# The official client, requests and the sandbox itself are imported by the calls that use them: the pytest plugin
# loads this module in every test run of a project that installs kube-sandbox, most of which start no sandbox.

KUBECONFIG_VARIABLE = "KUBE_SANDBOX_KUBECONFIG"


def real_cluster() -> str | None:
    """The kubeconfig of an existing cluster to test against instead of a sandbox, if the environment names one."""
    return os.environ.get(KUBECONFIG_VARIABLE) or None


@dataclass
class Running:
    """A sandbox served from a background thread, or a real cluster."""

    url: str
    kubeconfig: Path
    sandbox: Sandbox | None = None
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None

    def api(self) -> Any:
        """The official Python client's ApiClient for this cluster (kube-sandbox's `testing` extra)."""
        from kubernetes import config  # noqa: PLC0415

        return config.new_client_from_config(str(self.kubeconfig))

    def ca_file(self) -> str | None:
        """The CA the kubeconfig trusts, as a file (for requests), or None when it names none (plain HTTP)."""
        import base64  # noqa: PLC0415

        import yaml  # noqa: PLC0415

        config = yaml.safe_load(self.kubeconfig.read_text())
        data = config["clusters"][0]["cluster"].get("certificate-authority-data")
        if not data:
            return None
        path = self.kubeconfig.with_name(self.kubeconfig.name + ".ca.crt")
        if not path.exists():
            path.write_bytes(base64.b64decode(data))
        return str(path)

    def with_token(self, token: str, path: Path) -> Path:
        """A kubeconfig at `path` for this cluster whose current user is the bearer `token` (a ServiceAccount's)."""
        import yaml  # noqa: PLC0415

        config = yaml.safe_load(self.kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        context["context"]["user"] = "token-user"
        config["users"] = [{"name": "token-user", "user": {"token": token}}]
        path.write_text(yaml.safe_dump(config))
        return path

    def control(self, path: str, body: dict[str, Any] | None = None, method: str = "POST") -> Any:
        """Call a sandbox-only endpoint (faults, pod behaviours, stats)."""
        import requests  # noqa: PLC0415

        response = requests.request(method, f"{self.url}{path}", json=body, timeout=10, verify=self.ca_file() or True)
        response.raise_for_status()
        return response.json()

    def info(self) -> dict[str, Any]:
        """The sandbox's own addresses and settings (mesh ports, Prometheus, propagation delay)."""
        result: dict[str, Any] = self.control("/sandbox/info", method="GET")
        return result

    def propagated(self) -> None:
        """Wait until a routing change just written has reached every proxy (a real mesh: a few seconds)."""
        time.sleep(self.info()["propagationDelay"] + 0.3 if self.sandbox else 5.0)

    def send(
        self,
        host: str,
        count: int,
        *,
        source: str | None = None,
        sidecar: bool = True,
        path: str = "/",
        headers: dict[str, str] | None = None,
    ) -> list[tuple[int, str]]:
        """`count` requests for `host` (with `headers`): through the ingress gateway, or from a pod of `source`
        (NAMESPACE[/LABELS]) with or without its sidecar. A connection reset reads (0, "reset")."""
        from kube_sandbox.traffic import client_headers  # noqa: PLC0415

        base = self.info()["clients" if source else "gateway"]
        headers = {**(headers or {}), "Host": host, **client_headers(source, sidecar=sidecar)}
        return asyncio.run(_requests(f"{base}{path}", headers, count))

    def stop(self) -> None:
        """Stop the sandbox (persisting its state) and its thread; stopping twice is harmless."""
        if self.sandbox and self.loop and self.thread and self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.sandbox.stop(), self.loop).result(
                timeout=90
            )  # dockerd: up to 20s alone
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)


def start_sandbox(tmp: Path, **options: Any) -> Running:
    """Start a sandbox in its own thread and event loop (the official client is synchronous)."""
    from kube_sandbox import Sandbox  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    kubeconfig = tmp / f"kubeconfig-{uuid.uuid4().hex[:6]}"
    sandbox = Sandbox(kubeconfig_path=kubeconfig, **options)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(sandbox.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30), "sandbox did not start"
    return Running(sandbox.url, kubeconfig, sandbox, loop, thread)


async def _requests(url: str, headers: dict[str, str], count: int) -> list[tuple[int, str]]:
    import aiohttp  # noqa: PLC0415

    limit = asyncio.Semaphore(16)

    async def one(session: Any) -> tuple[int, str]:
        async with limit:
            try:
                async with session.get(url, headers=headers, allow_redirects=False) as answer:
                    return answer.status, (await answer.text()).strip()
            except (aiohttp.ClientConnectionError, ConnectionResetError):
                return 0, "reset"

    connector = aiohttp.TCPConnector(force_close=True)  # one connection a request, as a new client each time
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(count))))
