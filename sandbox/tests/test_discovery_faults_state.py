"""Discovery and OpenAPI, protobuf bodies, fault injection, request stats and persistence across restarts."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from kube_sandbox.protobuf import MAGIC, decode_request
from kube_sandbox.testing import Running
from kubernetes import client, watch
from kubernetes.dynamic import DynamicClient

pytestmark = pytest.mark.cluster


def test_discovery_lists_core_groups_and_resources(cluster: Running, api: client.ApiClient) -> None:
    dyn = DynamicClient(api)
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    assert (deployments.name, deployments.namespaced, deployments.short_names) == ("deployments", True, ["deploy"])
    assert set(deployments.verbs) >= {"create", "get", "list", "watch", "patch", "update", "delete"}
    assert dyn.resources.get(api_version="v1", kind="Namespace").namespaced is False
    for version in ("v1", "v1beta1"):
        for kind in ("VirtualService", "DestinationRule", "Gateway"):
            assert dyn.resources.get(api_version=f"networking.istio.io/{version}", kind=kind).namespaced
    version = client.VersionApi(api).get_code()
    assert version.major == "1"


@pytest.mark.sandbox_only
def test_discovery_documents_are_shaped_as_kube_apiservers(cluster: Running) -> None:
    core = requests.get(f"{cluster.url}/api", timeout=10).json()
    assert (core["kind"], core["versions"]) == ("APIVersions", ["v1"])
    groups = {g["name"]: g for g in requests.get(f"{cluster.url}/apis", timeout=10).json()["groups"]}
    assert groups["apps"]["preferredVersion"] == {"groupVersion": "apps/v1", "version": "v1"}
    assert "" not in groups and "v1" not in groups
    assert [v["version"] for v in groups["networking.istio.io"]["versions"]] == ["v1", "v1beta1"]
    resources = {r["name"]: r for r in requests.get(f"{cluster.url}/apis/apps/v1", timeout=10).json()["resources"]}
    assert resources["deployments/scale"]["kind"] == "Scale"
    assert resources["deployments/status"]["verbs"] == ["get", "patch", "update"]
    pods = {r["name"]: r for r in requests.get(f"{cluster.url}/api/v1", timeout=10).json()["resources"]}
    assert pods["pods"]["shortNames"] == ["po"]
    index = requests.get(f"{cluster.url}/openapi/v3", timeout=10).json()["paths"]
    document = requests.get(f"{cluster.url}{index['apis/apps/v1']['serverRelativeURL']}", timeout=30).json()
    schema = document["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]
    assert schema["x-kubernetes-group-version-kind"] == [{"group": "apps", "kind": "Deployment", "version": "v1"}]


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_protobuf_secret_body_decodes_as_its_json_form() -> None:
    meta = _field(1, b"s1") + _field(3, b"ns") + _field(11, _field(1, b"owner") + _field(2, b"helm"))
    secret = (
        _field(1, meta)
        + _field(2, _field(1, b"release") + _field(2, b"\x00\xffdata"))
        + _field(3, b"helm.sh/release.v1")
    )
    envelope = _field(1, _field(1, b"v1") + _field(2, b"Secret")) + _field(2, secret)
    decoded = decode_request(MAGIC + envelope)
    assert decoded == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s1", "namespace": "ns", "labels": {"owner": "helm"}},
        "data": {"release": base64.b64encode(b"\x00\xffdata").decode()},
        "type": "helm.sh/release.v1",
    }


@pytest.mark.sandbox_only
def test_injected_faults_and_latency_then_cleared(cluster: Running, api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    cluster.control("/sandbox/faults", {"verb": "list", "resource": "configmaps", "status": 503})
    with pytest.raises(client.ApiException) as info:
        core.list_namespaced_config_map(namespace)
    assert info.value.status == 503
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "still-works"}})
    cluster.control("/sandbox/faults", method="DELETE")
    cluster.control("/sandbox/faults", {"verb": "get", "resource": "configmaps", "status": 429, "percent": 50})
    codes = []
    for _ in range(40):
        try:
            core.read_namespaced_config_map("still-works", namespace)
            codes.append(200)
        except client.ApiException as exc:
            codes.append(exc.status)
    cluster.control("/sandbox/faults", method="DELETE")
    assert set(codes) == {200, 429}
    assert len(core.list_namespaced_config_map(namespace).items) == 1


@pytest.mark.sandbox_only
def test_stats_count_requests_by_verb_and_resource(cluster: Running, api: client.ApiClient, namespace: str) -> None:
    before = cluster.control("/sandbox/stats", method="GET")["requests"]
    core = client.CoreV1Api(api)
    for index in range(3):
        core.create_namespaced_secret(namespace, {"metadata": {"name": f"s{index}"}})
    core.list_namespaced_secret(namespace)
    after = cluster.control("/sandbox/stats", method="GET")["requests"]
    assert after.get("create secrets", 0) - before.get("create secrets", 0) == 3
    assert after.get("list secrets", 0) - before.get("list secrets", 0) == 1


@pytest.mark.sandbox_only
def test_dropped_watch_streams_end(cluster: Running, api: client.ApiClient, namespace: str) -> None:
    ended = threading.Event()

    def follow() -> None:
        list(watch.Watch().stream(client.CoreV1Api(api).list_namespaced_config_map, namespace, timeout_seconds=30))
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.5)
    assert cluster.control("/sandbox/drop-watches")["dropped"] >= 1
    assert ended.wait(5)


@pytest.mark.sandbox_only
def test_state_survives_a_restart(sandbox_factory: Callable[..., Running], tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = sandbox_factory(state_dir=state)
    core = client.CoreV1Api(first.api())
    core.create_namespace({"metadata": {"name": "kept"}})
    created = core.create_namespaced_config_map("kept", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    first.stop()
    second = sandbox_factory(state_dir=state)
    core = client.CoreV1Api(second.api())
    kept = core.read_namespaced_config_map("c", "kept")
    assert (kept.data, kept.metadata.uid) == ({"a": "1"}, created.metadata.uid)
    newer = core.create_namespaced_config_map("kept", {"metadata": {"name": "d"}})
    assert int(newer.metadata.resource_version) > int(created.metadata.resource_version)
