"""The sandbox answers as kube-apiserver does, through the official Python client: verbs, status codes,
metadata, validation, selectors, pagination, patches and server-side apply."""

from __future__ import annotations

from typing import Any

import pytest
from kube_sandbox.testing import raw, raw_bytes, unless_missing, wait_for
from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError

pytestmark = pytest.mark.cluster


def deployment(name: str = "web", replicas: int = 2, image: str = "nginx:1.27") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": image,
                            "env": [{"name": "A", "value": "1"}],
                            "ports": [{"containerPort": 80}],
                        }
                    ]
                },
            },
        },
    }


def status_of(call: Any) -> client.ApiException:
    with pytest.raises(client.ApiException) as info:
        call()
    return info.value


def test_create_answers_201_with_server_set_metadata(api: client.ApiClient, namespace: str) -> None:
    data, code, _ = client.AppsV1Api(api).create_namespaced_deployment_with_http_info(namespace, deployment())
    assert code == 201
    meta = data.metadata
    assert meta.uid and meta.creation_timestamp and meta.generation == 1
    assert int(meta.resource_version) > 0
    assert data.spec.strategy.rolling_update.max_surge == "25%"  # defaulted as the apiserver does
    assert data.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"


def test_create_twice_is_409_already_exists(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": "cfg"}, "data": {"a": "b"}}
    core.create_namespaced_config_map(namespace, body)
    error = status_of(lambda: core.create_namespaced_config_map(namespace, body))
    assert (error.status, error.reason) == (409, "Conflict")
    assert '"reason": "AlreadyExists"' in error.body.replace('":"', '": "')


def test_object_in_a_missing_namespace_is_404(api: client.ApiClient) -> None:
    error = status_of(lambda: client.CoreV1Api(api).create_namespaced_config_map("nope", {"metadata": {"name": "c"}}))
    assert error.status == 404
    assert 'namespaces \\"nope\\" not found' in error.body


def test_invalid_name_is_422(api: client.ApiClient, namespace: str) -> None:
    error = status_of(
        lambda: client.CoreV1Api(api).create_namespaced_config_map(namespace, {"metadata": {"name": "Bad_Name"}})
    )
    assert error.status == 422
    assert 'metadata.name: Invalid value: \\"Bad_Name\\"' in error.body
    assert '"reason": "Invalid"' in error.body.replace('":"', '": "')


def test_schema_violations_are_refused(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    bad_type = deployment()
    bad_type["spec"]["replicas"] = "three"  # the typed client would refuse it; the dynamic one sends it as is
    dyn = DynamicClient(api).resources.get(api_version="apps/v1", kind="Deployment")
    with pytest.raises(client.ApiException) as info:
        dyn.create(body=bad_type, namespace=namespace)
    error = info.value
    assert error.status == 400
    assert "cannot unmarshal string into Go struct field .spec.replicas of type int32" in str(error.body)
    no_containers = deployment()
    no_containers["spec"]["template"]["spec"]["containers"] = []
    error = status_of(lambda: apps.create_namespaced_deployment(namespace, no_containers))
    assert error.status == 422
    assert "spec.template.spec.containers: Required value" in error.body
    mismatch = deployment()
    mismatch["spec"]["selector"]["matchLabels"] = {"app": "other"}
    error = status_of(lambda: apps.create_namespaced_deployment(namespace, mismatch))
    assert error.status == 422
    assert "`selector` does not match template `labels`" in error.body


def test_unknown_fields_strict_is_400_default_drops_with_warning(api: client.ApiClient, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "dataa": {"x": "y"}}
    code, _, status = raw(api, "POST", path, body=body, query={"fieldValidation": "Strict"})
    assert (code, status["reason"]) == (400, "BadRequest")
    assert status["message"] == 'strict decoding error: unknown field "dataa"'
    code, headers, created = raw(api, "POST", path, body=body)
    assert code == 201
    assert headers["Warning"] == '299 - "unknown field \\"dataa\\""'
    assert "dataa" not in created


def test_stale_update_is_409(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    created.data = {"a": "2"}
    core.replace_namespaced_config_map("cfg", namespace, created)
    created.data = {"a": "3"}
    error = status_of(lambda: core.replace_namespaced_config_map("cfg", namespace, created))
    assert error.status == 409
    assert "the object has been modified" in error.body
    assert core.read_namespaced_config_map("cfg", namespace).data == {"a": "2"}


def test_generation_moves_on_spec_changes_only(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment())
    labelled = apps.patch_namespaced_deployment("web", namespace, {"metadata": {"labels": {"team": "a"}}})
    assert labelled.metadata.generation == 1
    scaled = apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 3}})
    assert scaled.metadata.generation == 2
    assert int(scaled.metadata.resource_version) > int(labelled.metadata.resource_version)


def test_status_lives_in_its_own_subresource(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    created = apps.create_namespaced_deployment(namespace, deployment(replicas=0)).to_dict()
    body = api.sanitize_for_serialization(apps.read_namespaced_deployment("web", namespace))
    body["status"] = {"replicas": 42}
    code, _, replaced = raw(api, "PUT", f"/apis/apps/v1/namespaces/{namespace}/deployments/web", body=body)
    assert code == 200
    assert (replaced.get("status") or {}).get("replicas") != 42
    patched = apps.patch_namespaced_deployment_status("web", namespace, {"status": {"observedGeneration": 7}})
    assert patched.status.observed_generation == 7
    assert patched.metadata.generation == created["metadata"]["generation"]


def test_label_and_field_selectors(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    for name, labels in [
        ("a", {"tier": "web", "env": "prod"}),
        ("b", {"tier": "db", "env": "prod"}),
        ("c", {"tier": "web"}),
    ]:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs: str) -> list[str]:
        return [i.metadata.name for i in core.list_namespaced_config_map(namespace, **kwargs).items]

    assert names(label_selector="tier=web") == ["a", "c"]
    assert names(label_selector="tier==web,env=prod") == ["a"]
    assert names(label_selector="tier!=web") == ["b"]
    assert names(label_selector="tier in (db, cache)") == ["b"]
    assert names(label_selector="tier notin (db)") == ["a", "c"]
    assert names(label_selector="env") == ["a", "b"]
    assert names(label_selector="!env") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b,metadata.namespace=" + namespace) == ["a", "c"]
    error = status_of(lambda: names(field_selector="data.a=1"))
    assert error.status == 400
    assert "field label not supported: data.a" in error.body


def test_list_pagination_with_limit_and_continue(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    for index in range(7):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"c{index}"}})
    seen, token, pages = [], None, 0
    while True:
        page = core.list_namespaced_config_map(namespace, limit=3, _continue=token)
        seen += [i.metadata.name for i in page.items]
        pages += 1
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 7 - len(seen)
    assert (seen, pages) == ([f"c{i}" for i in range(7)], 3)


def test_patch_types(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment())
    # strategic merge patch: containers merge by name, env by name, ports by containerPort
    smp = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "web", "env": [{"name": "B", "value": "2"}], "ports": [{"containerPort": 81}]},
                        {"name": "sidecar", "image": "busybox:1"},
                    ]
                }
            }
        }
    }
    patched = apps.patch_namespaced_deployment("web", namespace, smp)
    containers = {c.name: c for c in patched.spec.template.spec.containers}
    assert sorted(containers) == ["sidecar", "web"]
    assert [e.name for e in containers["web"].env] == ["A", "B"]
    assert [p.container_port for p in containers["web"].ports] == [80, 81]
    delete = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}
    patched = apps.patch_namespaced_deployment("web", namespace, delete)
    assert [c.name for c in patched.spec.template.spec.containers] == ["web"]
    # JSON merge patch replaces lists
    api.call_api  # noqa: B018 - the typed API picks the patch type from the body; use the dynamic client below
    dyn = DynamicClient(api).resources.get(api_version="apps/v1", kind="Deployment")
    merged = dyn.patch(
        name="web",
        namespace=namespace,
        content_type="application/merge-patch+json",
        body={"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}},
    )
    assert [c["image"] for c in merged.to_dict()["spec"]["template"]["spec"]["containers"]] == ["nginx:2"]
    # JSON patch
    patched = apps.patch_namespaced_deployment(
        "web", namespace, [{"op": "replace", "path": "/spec/replicas", "value": 5}]
    )
    assert patched.spec.replicas == 5
    error = status_of(
        lambda: apps.patch_namespaced_deployment(
            "web", namespace, [{"op": "test", "path": "/spec/replicas", "value": 6}]
        )
    )
    assert error.status == 422


def test_server_side_apply_creates_records_owners_conflicts_and_forces(api: client.ApiClient, namespace: str) -> None:
    dyn = DynamicClient(api).resources.get(api_version="apps/v1", kind="Deployment")
    body = deployment()
    body["metadata"]["namespace"] = namespace
    created = dyn.server_side_apply(body=body, name="web", namespace=namespace, field_manager="deployer").to_dict()
    owners = {(m["manager"], m["operation"]) for m in created["metadata"]["managedFields"]}
    assert owners == {("deployer", "Apply")}
    assert "f:replicas" in created["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]
    other = {**body, "spec": {**body["spec"], "replicas": 5}}
    with pytest.raises(ConflictError) as info:
        dyn.server_side_apply(body=other, name="web", namespace=namespace, field_manager="scaler")
    assert 'conflict with \\"deployer\\" using apps/v1: .spec.replicas' in str(info.value.body)
    forced = dyn.server_side_apply(
        body=other, name="web", namespace=namespace, field_manager="scaler", force_conflicts=True
    ).to_dict()
    assert forced["spec"]["replicas"] == 5
    scaler = next(m for m in forced["metadata"]["managedFields"] if m["manager"] == "scaler")
    deployer = next(m for m in forced["metadata"]["managedFields"] if m["manager"] == "deployer")
    assert "f:replicas" in scaler["fieldsV1"]["f:spec"]
    assert "f:replicas" not in deployer["fieldsV1"]["f:spec"]


def test_server_side_apply_removes_fields_the_manager_stopped_applying(api: client.ApiClient, namespace: str) -> None:
    dyn = DynamicClient(api).resources.get(api_version="v1", kind="ConfigMap")
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": namespace, "labels": {"a": "1", "b": "2"}},
        "data": {"x": "1", "y": "2"},
    }
    applied = applied_twice(dyn, body, namespace, data={"x": "1"}, labels={"a": "1"})
    assert applied["data"] == {"x": "1"}
    assert applied["metadata"]["labels"] == {"a": "1"}


def applied_twice(
    resource: Any, body: dict[str, Any], namespace: str, *, data: dict[str, str], labels: dict[str, str]
) -> dict[str, Any]:
    """`body` applied by one manager, then again with other data and labels: what the second apply answers."""
    name = body["metadata"]["name"]
    resource.server_side_apply(body=body, name=name, namespace=namespace, field_manager="deployer")
    again = {**body, "data": data, "metadata": {**body["metadata"], "labels": labels}}
    return dict(
        resource.server_side_apply(body=again, name=name, namespace=namespace, field_manager="deployer").to_dict()
    )


def test_server_side_apply_keeps_a_map_it_first_applied_empty(api: client.ApiClient, namespace: str) -> None:
    """`data: {}` then `data: {k: v}` by the same manager: the map stays, with k (structured-merge-diff's prune
    adds back what is owned); a container the manager stopped applying goes whole."""
    maps = DynamicClient(api).resources.get(api_version="v1", kind="ConfigMap")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "grows", "labels": {}}, "data": {}}
    applied = applied_twice(maps, body, namespace, data={"k": "v"}, labels={"k": "v"})
    assert applied["data"] == {"k": "v"}
    assert applied["metadata"]["labels"] == {"k": "v"}
    deployments = DynamicClient(api).resources.get(api_version="apps/v1", kind="Deployment")
    two = deployment("pair")
    two["spec"]["template"]["spec"]["containers"].append({"name": "side", "image": "busybox:1.36"})
    deployments.server_side_apply(body=two, name="pair", namespace=namespace, field_manager="deployer")
    one = deployments.server_side_apply(
        body=deployment("pair"), name="pair", namespace=namespace, field_manager="deployer"
    ).to_dict()
    assert [c["name"] for c in one["spec"]["template"]["spec"]["containers"]] == ["web"]


def test_server_side_apply_reads_a_left_out_defaulted_list_key_as_its_default(
    api: client.ApiClient, namespace: str
) -> None:
    """Applying `ports: [{port: 80}]` again matches the stored `{port: 80, protocol: TCP}`: one port, not two
    (structured-merge-diff's defaulted list-map keys), also in a dry run."""
    dyn = DynamicClient(api).resources.get(api_version="v1", kind="Service")
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    for dry_run in ({}, {}, {"dry_run": "All"}):
        applied = dyn.server_side_apply(
            body=body, name="web", namespace=namespace, field_manager="deployer", **dry_run
        ).to_dict()
        assert [(p["port"], p["protocol"]) for p in applied["spec"]["ports"]] == [(80, "TCP")]


def test_server_side_apply_needs_a_field_manager(api: client.ApiClient, namespace: str) -> None:
    code, _, status = raw(
        api,
        "PATCH",
        f"/api/v1/namespaces/{namespace}/configmaps/cfg",
        body={"apiVersion": "v1", "kind": "ConfigMap"},
        content_type="application/apply-patch+yaml",
    )
    assert code == 400
    assert "fieldManager: Required value" in status["message"]


def test_secret_string_data_is_folded_into_data_and_never_stored(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="token"), string_data={"token": "s3cret"}, data={"kept": "YQ=="}
    )
    created = core.create_namespaced_secret(namespace, secret)
    assert created.string_data is None
    assert created.data == {"kept": "YQ==", "token": "czNjcmV0"}
    assert created.type == "Opaque"
    assert core.read_namespaced_secret("token", namespace).data == created.data


def test_json_is_written_as_kube_apiserver_writes_it(api: client.ApiClient, namespace: str) -> None:
    """Go's json.Encoder: compact, <>& escaped, a newline at the end; Status in its struct's field order with
    empty fields left out; Content-Type exactly application/json (clients compare it)."""
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    code, headers, body = raw_bytes(api, "GET", f"{path}/no-such-map")
    assert code == 404 and headers["Content-Type"] == "application/json"
    assert body == (
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"configmaps \\"no-such-map\\" not found","reason":"NotFound",'
        b'"details":{"name":"no-such-map","kind":"configmaps"},"code":404}\n'
    )
    code, headers, body = raw_bytes(api, "POST", path, body={"metadata": {"name": "esc"}, "data": {"a": "<b>&"}})
    assert code == 201 and headers["Content-Type"] == "application/json"
    assert b'"data":{"a":"\\u003cb\\u003e\\u0026"}' in body and body.endswith(b"}\n")


def pod(name: str, resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "resources": resources}]},
    }


def test_create_answers_with_the_status_a_new_object_has(api: client.ApiClient, namespace: str) -> None:
    """Each kind's PrepareForCreate sets its empty status (a Pod Pending with its QoS class), which the create
    response carries; a Pod's container that limits a resource and requests none requests its limit."""
    base = f"/api/v1/namespaces/{namespace}"
    cases = [
        ("guaranteed", {"limits": {"cpu": "100m", "memory": "64Mi"}}, "Guaranteed"),
        ("burstable", {"requests": {"cpu": "100m"}}, "Burstable"),
        ("besteffort", {}, "BestEffort"),
    ]
    for name, resources, qos in cases:
        code, _, created = raw(api, "POST", f"{base}/pods", body=pod(name, resources))
        assert code == 201
        assert created["status"] == {"phase": "Pending", "qosClass": qos}, name
    code, _, created = raw(api, "GET", f"{base}/pods/guaranteed")
    assert created["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}
    service = {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "x"}}}
    assert raw(api, "POST", f"{base}/services", body=service)[2]["status"] == {"loadBalancer": {}}
    apps = f"/apis/apps/v1/namespaces/{namespace}"
    assert raw(api, "POST", f"{apps}/deployments", body=deployment("fresh"))[2]["status"] == {}
    replicaset = deployment("fresh-rs")
    replicaset["kind"] = "ReplicaSet"
    assert raw(api, "POST", f"{apps}/replicasets", body=replicaset)[2]["status"] == {"replicas": 0}


def test_yaml_bodies_are_read_unknown_ones_refused_and_a_sourceless_volume_is_an_empty_dir(
    api: client.ApiClient, plain_namespace: str
) -> None:
    base = f"/api/v1/namespaces/{plain_namespace}"
    text = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: from-yaml}\n"
        "spec:\n  containers: [{name: c, image: 'busybox:1.36', volumeMounts: [{name: scratch, mountPath: /s}]}]\n"
        "  volumes: [{name: scratch}]\n"
    )
    code, _, created = raw(api, "POST", f"{base}/pods", body=text, content_type="application/yaml")
    assert code == 201, created
    assert created["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    code, _, refused = raw(api, "POST", f"{base}/configmaps", body="x", content_type="text/plain")
    assert (code, refused["reason"]) == (415, "UnsupportedMediaType")
    assert refused["message"].startswith(
        "the body of the request was in an unknown format - accepted media types include: application/json, "
        "application/yaml"
    )


def test_pods_run_as_a_service_account_that_exists(api: client.ApiClient, plain_namespace: str) -> None:
    """Every namespace gets `default` (the serviceaccounts controller); the ServiceAccount admission plugin
    gives a pod `default` unless it names one, and forbids a pod whose account does not exist."""
    core = client.CoreV1Api(api)
    wait_for(
        lambda: unless_missing(lambda: core.read_namespaced_service_account("default", plain_namespace)),
        what="the namespace's default ServiceAccount",
    )
    base = f"/api/v1/namespaces/{plain_namespace}/pods"
    code, _, created = raw(api, "POST", base, body=pod("plain", {}))
    assert code == 201
    assert (created["spec"]["serviceAccountName"], created["spec"]["serviceAccount"]) == ("default", "default")
    named = pod("named", {})
    named["spec"]["serviceAccountName"] = "robot"
    code, _, refused = raw(api, "POST", base, body=named)
    assert (code, refused["reason"]) == (403, "Forbidden")
    assert refused["message"] == (
        f'pods "named" is forbidden: error looking up service account {plain_namespace}/robot: '
        'serviceaccount "robot" not found'
    )


def test_pods_are_scheduled_to_a_node_that_is_there(api: client.ApiClient, plain_namespace: str) -> None:
    """kubectl get nodes lists a Ready node; a pod is bound to one (spec.nodeName) and runs on its address."""
    core = client.CoreV1Api(api)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert nodes and all(
        any(c.type == "Ready" and c.status == "True" for c in n.status.conditions) for n in nodes.values()
    )
    core.create_namespaced_pod(plain_namespace, pod("placed", {}))
    placed = wait_for(
        lambda: (p := core.read_namespaced_pod("placed", plain_namespace)).spec.node_name and p.status.host_ip and p,
        what="the pod to be scheduled and started",
    )
    assert placed.spec.node_name in nodes
    addresses = {a.address for a in nodes[placed.spec.node_name].status.addresses if a.type == "InternalIP"}
    assert placed.status.host_ip in addresses
