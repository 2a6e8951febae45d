"""pytest fixtures for tests against a Kubernetes API: a sandbox per module on a random port, or an existing cluster.

Loaded by pytest through the `pytest11` entry point once kube-sandbox is installed. With
`KUBE_SANDBOX_KUBECONFIG=/path/to/kubeconfig` the cluster fixtures yield that cluster instead of starting sandboxes
(as envtest's USE_EXISTING_CLUSTER and kopf's testing helpers do), and tests marked `sandbox_only` (faults, pod
behaviours, restarts: the sandbox's own controls) are skipped. Fixtures a project defines under the same names in
its conftest.py take precedence, as pytest's rules say.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kube_sandbox.testing.cluster import KUBECONFIG_VARIABLE, Running, real_cluster, start_sandbox
from kube_sandbox.testing.registry import Registry, push_busybox, start_registry

MESH = {"istio-injection": "enabled"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sandbox_only: uses sandbox-only controls (faults, pod behaviours, restarts); skipped on a real cluster",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if real_cluster():
        skip = pytest.mark.skip(reason=f"sandbox-only behaviour; {KUBECONFIG_VARIABLE} points at a real cluster")
        for item in items:
            if "sandbox_only" in item.keywords:
                item.add_marker(skip)


def _existing() -> Running | None:
    found = real_cluster()
    return Running(url="", kubeconfig=Path(found)) if found else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The cluster under test: a fresh sandbox (simulated pods) per module, or the existing cluster."""
    existing = _existing()
    if existing:
        yield existing
        return
    running = start_sandbox(tmp_path_factory.mktemp("sandbox"), ready_delay=0.2, crash_backoff=0.3)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def rbac_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A sandbox that checks tokens and authorizes with RBAC (`auth="rbac"`; its kubeconfig holds the admin
    token), or the existing cluster, which does both anyway."""
    existing = _existing()
    if existing:
        yield existing
        return
    running = start_sandbox(tmp_path_factory.mktemp("sandbox"), ready_delay=0.2, crash_backoff=0.3, auth="rbac")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def containers_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A sandbox running real containers, with Prometheus scraping its mesh; or the existing cluster."""
    existing = _existing()
    if existing:
        yield existing
        return
    if not shutil.which("dockerd"):
        pytest.skip("the containers runtime needs dockerd (Debian's docker.io)")
    running = start_sandbox(
        tmp_path_factory.mktemp("sandbox"),
        runtime="containers",
        crash_backoff=0.5,
        prometheus=True,
        scrape_interval="1s",  # tests need data in seconds; the sandbox's default is a real setup's 15s
        hpa_sync_period=1.0,  # likewise: kube-controller-manager's default is 15s
    )
    yield running
    running.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A docker-registry on 127.0.0.1 for the images the containers run."""
    if not shutil.which("docker-registry"):
        pytest.skip("needs docker-registry (Debian's docker-registry)")
    running = start_registry(tmp_path_factory.mktemp("registry"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def busybox(registry: Registry) -> str:
    """A busybox image the cluster can pull: made from the host's static busybox and pushed to `registry`
    (KUBE_SANDBOX_BUSYBOX names one for an existing cluster)."""
    return os.environ.get("KUBE_SANDBOX_BUSYBOX") or push_busybox(registry.host, "kube-sandbox/busybox:1")


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
def api(cluster: Running) -> Any:
    """The official Python client's ApiClient for `cluster`."""
    return cluster.api()


def _fresh_namespace(api: Any, prefix: str, labels: dict[str, str]) -> Iterator[str]:
    from kubernetes import client  # noqa: PLC0415 - the testing extra's dependency, only when a test asks

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def namespace(api: Any) -> Iterator[str]:
    """A fresh namespace per test in the mesh (sidecar injection enabled), deleted afterwards."""
    yield from _fresh_namespace(api, "t", MESH)


@pytest.fixture
def plain_namespace(api: Any) -> Iterator[str]:
    """A fresh namespace without sidecar injection, deleted afterwards."""
    yield from _fresh_namespace(api, "p", {})


@pytest.fixture
def mesh_namespace(api: Any) -> Iterator[str]:
    """A fresh namespace with Istio sidecar injection enabled, deleted afterwards."""
    yield from _fresh_namespace(api, "m", MESH)
