"""Fixtures for the sandbox conformance suite: a sandbox per module on a random port, used through real clients.

Tests marked `sandbox_only` use sandbox-only controls (faults, pod behaviours, restarts); the others run against
a real cluster too when DEPLOYER_TEST_KUBECONFIG names one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from sandboxes import REAL_CLUSTER, Running, start_sandbox
from support import Registry, push_base_image, start_registry


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The cluster under test: a fresh sandbox per module, or DEPLOYER_TEST_KUBECONFIG."""
    if REAL_CLUSTER:
        yield Running(url="", kubeconfig=Path(REAL_CLUSTER))
        return
    running = start_sandbox(tmp_path_factory.mktemp("sandbox"), ready_delay=0.2, crash_backoff=0.3)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def containers_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A sandbox running real containers, with Prometheus scraping its mesh; or DEPLOYER_TEST_KUBECONFIG."""
    if REAL_CLUSTER:
        yield Running(url="", kubeconfig=Path(REAL_CLUSTER))
        return
    if not shutil.which("dockerd"):
        pytest.skip("dockerd is installed by `make setup`")
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
    """A docker-registry for the images the containers run."""
    if not shutil.which("docker-registry"):
        pytest.skip("docker-registry is installed by `make setup`")
    running = start_registry(tmp_path_factory.mktemp("registry"))
    yield running
    running.process.terminate()
    running.process.wait(timeout=10)


@pytest.fixture(scope="session")
def busybox(registry: Registry) -> str:
    """A busybox image the cluster can pull: the examples' local base in the test registry (DEPLOYER_TEST_BUSYBOX
    names one for a real cluster)."""
    return os.environ.get("DEPLOYER_TEST_BUSYBOX") or push_base_image(registry)


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


def _fresh_namespace(api: client.ApiClient, prefix: str, labels: dict[str, str]) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    yield name
    core.delete_namespace(name)


MESH = {"istio-injection": "enabled"}


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test in the mesh (a canary needs sidecars), deleted afterwards."""
    yield from _fresh_namespace(api, "t", MESH)


@pytest.fixture
def plain_namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace without sidecar injection, deleted afterwards."""
    yield from _fresh_namespace(api, "p", {})


@pytest.fixture
def mesh_namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace with Istio sidecar injection enabled, deleted afterwards."""
    yield from _fresh_namespace(api, "m", MESH)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if REAL_CLUSTER:
        skip = pytest.mark.skip(reason="sandbox-only behaviour; DEPLOYER_TEST_KUBECONFIG points at a real cluster")
        for item in items:
            if "sandbox_only" in item.keywords:
                item.add_marker(skip)
