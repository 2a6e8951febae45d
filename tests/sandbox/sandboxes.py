"""Sandboxes for tests: started in a background thread on a random port, or a real cluster from the environment."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from kubernetes import client, config

from deployer.sandbox import Sandbox

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

    def stop(self) -> None:
        """Stop the sandbox (persisting its state) and its thread; stopping twice is harmless."""
        if self.sandbox and self.loop and self.thread and self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.sandbox.stop(), self.loop).result(timeout=30)
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
