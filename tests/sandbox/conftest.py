"""Fixtures for the sandbox conformance suite: a sandbox per module on a random port, used through real clients.

Tests marked `sandbox_only` use sandbox-only controls (faults, pod behaviours, restarts); the others run against
a real cluster too when DEPLOYER_TEST_KUBECONFIG names one.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The cluster under test: a fresh sandbox per module, or DEPLOYER_TEST_KUBECONFIG."""
    if REAL_CLUSTER:
        yield Running(url="", kubeconfig=Path(REAL_CLUSTER))
        return
    running = start_sandbox(tmp_path_factory.mktemp("sandbox"), ready_delay=0.2, crash_backoff=0.3)
    yield running
    running.stop()


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start extra sandboxes with options (history size, state dir); all stop after the test."""
    started: list[Running] = []

    def make(**options: Any) -> Running:
        running = start_sandbox(tmp_path, **options)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def api(cluster: Running) -> client.ApiClient:
    return cluster.api()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if REAL_CLUSTER:
        skip = pytest.mark.skip(reason="sandbox-only behaviour; DEPLOYER_TEST_KUBECONFIG points at a real cluster")
        for item in items:
            if "sandbox_only" in item.keywords:
                item.add_marker(skip)
