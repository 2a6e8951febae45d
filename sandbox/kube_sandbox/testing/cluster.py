"""Sandboxes for tests: started in a background thread on a random port, or a real cluster from the environment."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import requests
from kubernetes import client, config

from deployer.sandbox import Sandbox
from deployer.sandbox.traffic import client_headers

REAL_CLUSTER = os.environ.get("DEPLOYER_TEST_KUBECONFIG")


@dataclass
class Running:
    """A sandbox served from a background thread, or a real cluster."""

    url: str
    kubeconfig: Path
    sandbox: Sandbox | None = None
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None

    def api(self) -> client.ApiClient:
        return config.new_client_from_config(str(self.kubeconfig))

    def control(self, path: str, body: dict[str, Any] | None = None, method: str = "POST") -> Any:
        """Call a sandbox-only endpoint (faults, pod behaviours, stats)."""
        response = requests.request(method, f"{self.url}{path}", json=body, timeout=10)
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
        self, host: str, count: int, *, source: str | None = None, sidecar: bool = True, path: str = "/"
    ) -> list[tuple[int, str]]:
        """`count` requests for `host`: through the ingress gateway, or from a pod of `source` (NAMESPACE[/LABELS])
        with or without its sidecar. A connection reset reads (0, "reset")."""
        base = self.info()["clients" if source else "gateway"]
        headers = {"Host": host, **client_headers(source, sidecar=sidecar)}
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
    limit = asyncio.Semaphore(16)

    async def one(session: aiohttp.ClientSession) -> tuple[int, str]:
        async with limit:
            try:
                async with session.get(url, headers=headers, allow_redirects=False) as answer:
                    return answer.status, (await answer.text()).strip()
            except (aiohttp.ClientConnectionError, ConnectionResetError):
                return 0, "reset"

    connector = aiohttp.TCPConnector(force_close=True)  # one connection a request, as a new client each time
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(count))))
