"""Watches (timeouts, resume, 410 Gone), the CRD lifecycle, garbage collection, finalizers and namespaces."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from kube_sandbox.testing import Running, raw, unless_missing, wait_for
from kubernetes import client, watch
from kubernetes.dynamic import DynamicClient

pytestmark = pytest.mark.cluster


def configmap(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "data": {"k": name}}


def test_watch_ends_at_timeout_seconds(api: client.ApiClient, namespace: str) -> None:
    started = time.monotonic()
    events = list(watch.Watch().stream(client.CoreV1Api(api).list_namespaced_config_map, namespace, timeout_seconds=1))
    assert events == []
    assert 0.9 < time.monotonic() - started < 5


def test_watch_resumes_from_a_resource_version_with_selector(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    start = core.list_namespaced_config_map(namespace).metadata.resource_version
    core.create_namespaced_config_map(namespace, configmap("a", app="x"))
    core.create_namespaced_config_map(namespace, configmap("b", app="y"))
    core.patch_namespaced_config_map("a", namespace, {"data": {"k": "changed"}})
    core.patch_namespaced_config_map("a", namespace, {"metadata": {"labels": {"app": "z"}}})
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=start,
            label_selector="app=x",
            timeout_seconds=1,
        )
    ]
    # leaving the selector shows as DELETED, as kube-apiserver shows it
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_watch_without_resource_version_starts_with_current_objects(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(namespace, configmap("a"))
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(core.list_namespaced_config_map, namespace, timeout_seconds=1)
    ]
    assert events == [("ADDED", "a")]


@pytest.mark.sandbox_only
def test_watch_from_a_compacted_resource_version_is_410(sandbox_factory: Callable[..., Running]) -> None:
    small = sandbox_factory(history=5)
    core = client.CoreV1Api(small.api())
    old = core.list_namespaced_config_map("default").metadata.resource_version
    for index in range(10):
        core.create_namespaced_config_map("default", configmap(f"c{index}"))
    with pytest.raises(client.ApiException) as info:
        list(watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=old, timeout_seconds=1))
    assert info.value.status == 410


@pytest.mark.sandbox_only
def test_watch_query_accepts_watch_1_and_streams_json_lines(cluster: Running, namespace: str) -> None:
    api = cluster.api()
    client.CoreV1Api(api).create_namespaced_config_map(namespace, configmap("a"))
    response = requests.get(
        f"{cluster.url}/api/v1/namespaces/{namespace}/configmaps",
        params={"watch": "1", "timeoutSeconds": "1"},
        timeout=10,
    )
    lines = [line for line in response.text.splitlines() if line]
    assert response.status_code == 200
    assert len(lines) == 1
    assert json.loads(lines[0])["type"] == "ADDED"


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wd"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_lifecycle(api: client.ApiClient, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(CRD)
    custom = client.CustomObjectsApi(api)
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}
    created = wait_for(
        lambda: unless_missing(
            lambda: custom.create_namespaced_custom_object("example.com", "v1", namespace, "widgets", widget)
        ),
        what="the CRD to be served",
    )
    assert created["metadata"]["generation"] == 1

    def established() -> dict[str, Any] | None:
        crd = ext.read_custom_resource_definition(CRD["metadata"]["name"])
        found = {c.type: c.status for c in (crd.status.conditions or [])}
        return crd if found.get("Established") == "True" and found.get("NamesAccepted") == "True" else None

    crd = wait_for(established, what="Established and NamesAccepted (kubectl wait --for=condition=Established)")
    assert crd.status.accepted_names.kind == "Widget" and crd.status.accepted_names.plural == "widgets"
    assert crd.status.accepted_names.list_kind == "WidgetList" and crd.status.accepted_names.short_names == ["wd"]
    assert crd.status.stored_versions == ["v1"]
    code, _, status = raw(
        api,
        "POST",
        f"/apis/example.com/v1/namespaces/{namespace}/widgets",
        body={**widget, "metadata": {"name": "bad"}, "spec": {"size": "big"}},
    )
    assert code == 422
    assert "spec.size in body must be of type integer" in status["message"]
    discovered = DynamicClient(api).resources.get(api_version="example.com/v1", kind="Widget")
    assert discovered.short_names == ["wd"]
    ext.delete_custom_resource_definition("widgets.example.com")
    wait_for(
        lambda: _gone(lambda: custom.list_namespaced_custom_object("example.com", "v1", namespace, "widgets")),
        what="the widgets resource to disappear",
    )


def _gone(call: Callable[[], Any]) -> bool:
    try:
        call()
    except client.ApiException as exc:
        return exc.status == 404
    return False


def _deployment(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "x:1"}]},
            },
        },
    }


def _counts(api: client.ApiClient, namespace: str, app: str) -> tuple[int, int]:
    rs = client.AppsV1Api(api).list_namespaced_replica_set(namespace, label_selector=f"app={app}").items
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return len(rs), len(pods)


def test_background_deletion_collects_replicasets_and_pods(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, _deployment("gc"))
    wait_for(lambda: _counts(api, namespace, "gc") == (1, 2), what="1 ReplicaSet and 2 pods")
    apps.delete_namespaced_deployment("gc", namespace)
    wait_for(lambda: _counts(api, namespace, "gc") == (0, 0), what="dependents to be collected")


def test_orphan_deletion_keeps_dependents_without_owner(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, _deployment("orph"))
    wait_for(lambda: _counts(api, namespace, "orph") == (1, 2), what="1 ReplicaSet and 2 pods")
    apps.delete_namespaced_deployment("orph", namespace, propagation_policy="Orphan")
    wait_for(lambda: _gone(lambda: apps.read_namespaced_deployment("orph", namespace)), what="the deployment to go")
    (rs,) = apps.list_namespaced_replica_set(namespace, label_selector="app=orph").items
    assert not rs.metadata.owner_references
    assert _counts(api, namespace, "orph") == (1, 2)


def test_foreground_deletion_waits_for_dependents(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, _deployment("fg"))
    wait_for(lambda: _counts(api, namespace, "fg") == (1, 2), what="1 ReplicaSet and 2 pods")
    code, _, deleting = raw(
        api, "DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments/fg", body={"propagationPolicy": "Foreground"}
    )
    assert code in (200, 202)
    assert deleting["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in deleting["metadata"]["finalizers"]
    wait_for(lambda: _gone(lambda: apps.read_namespaced_deployment("fg", namespace)), what="the deployment to go")
    assert _counts(api, namespace, "fg") == (0, 0)


def test_finalizers_hold_deletion_until_removed(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    core.delete_namespaced_config_map("held", namespace)
    held = core.read_namespaced_config_map("held", namespace)
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("held", namespace, {"metadata": {"finalizers": None}})
    wait_for(lambda: _gone(lambda: core.read_namespaced_config_map("held", namespace)), what="the configmap to go")


def test_deleting_a_namespace_removes_what_is_in_it(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", configmap("a"))
    client.AppsV1Api(api).create_namespaced_deployment("doomed", _deployment("d"))
    core.delete_namespace("doomed")
    error = _try_status(lambda: core.create_namespaced_config_map("doomed", configmap("late")))
    assert error in (403, 404)
    wait_for(lambda: _gone(lambda: core.read_namespace("doomed")), what="the namespace to go")
    assert core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=doomed").items == []


def _try_status(call: Callable[[], Any]) -> int:
    try:
        call()
    except client.ApiException as exc:
        return int(exc.status)
    return 200
