"""Authentication and RBAC as kube-apiserver does them (`kube-sandbox serve --auth rbac`): ServiceAccount tokens
from TokenRequest and legacy token Secrets, RBAC with resourceNames, subresources and non-resource URLs, kube's
401 and 403 bodies, and `kubectl auth whoami` / `can-i`. All but the `sandbox_only` tests run against a real
cluster too (KUBE_SANDBOX_KUBECONFIG with an admin's credentials)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_sandbox.testing import Running, raw, raw_bytes, wait_for
from kubernetes import client, config

pytestmark = pytest.mark.cluster
KUBECTL = shutil.which("kubectl") or "kubectl"


@pytest.fixture
def admin(rbac_cluster: Running) -> client.ApiClient:
    return rbac_cluster.api()


@pytest.fixture
def space(admin: client.ApiClient) -> Iterator[str]:
    """A namespace with a ServiceAccount `robot`, bound to a Role `reader` in it."""
    name = f"a-{uuid.uuid4().hex[:8]}"
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_service_account(name, {"metadata": {"name": "robot"}})
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["allowed"], "verbs": ["get"]},
        {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["get"]},
    ]
    rbac.create_namespaced_role(name, {"metadata": {"name": "reader"}, "rules": rules})
    rbac.create_namespaced_role_binding(
        name,
        {
            "metadata": {"name": "robot-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": name}],
        },
    )
    yield name
    core.delete_namespace(name)


def token_for(admin: client.ApiClient, namespace: str, account: str = "robot", seconds: int = 3600) -> str:
    request = {"spec": {"expirationSeconds": seconds}}
    answer = client.CoreV1Api(admin).create_namespaced_service_account_token(account, namespace, request)
    return str(answer.status.token)


def as_token(cluster: Running, token: str, tmp_path: Path) -> client.ApiClient:
    return config.new_client_from_config(str(cluster.with_token(token, tmp_path / f"k-{uuid.uuid4().hex[:6]}")))


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60, check=False
    )


def status_of(api: client.ApiClient, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    code, _, answer = raw(api, method, path, body=body)
    return code, answer


def test_a_token_request_authenticates_as_the_account(
    rbac_cluster: Running, admin: client.ApiClient, space: str, tmp_path: Path
) -> None:
    kubeconfig = rbac_cluster.with_token(token_for(admin, space), tmp_path / "robot")
    whoami = kubectl(kubeconfig, "auth", "whoami", "-o", "json")
    assert whoami.returncode == 0, whoami.stderr
    info = json.loads(whoami.stdout)["status"]["userInfo"]
    account = client.CoreV1Api(admin).read_namespaced_service_account("robot", space)
    assert info["username"] == f"system:serviceaccount:{space}:robot"
    assert info["uid"] == account.metadata.uid
    assert {"system:serviceaccounts", f"system:serviceaccounts:{space}", "system:authenticated"} <= set(info["groups"])
    # `kubectl create token` is a TokenRequest too (protobuf); the admin may make one for the account
    created = kubectl(rbac_cluster.kubeconfig, "create", "token", "robot", "-n", space, "--duration", "15m")
    assert created.returncode == 0, created.stderr
    again = kubectl(rbac_cluster.with_token(created.stdout.strip(), tmp_path / "again"), "auth", "whoami", "-o", "json")
    assert json.loads(again.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{space}:robot"


def test_rbac_allows_what_the_role_grants_and_refuses_the_rest_as_kube_does(
    rbac_cluster: Running, admin: client.ApiClient, space: str, tmp_path: Path
) -> None:
    robot = as_token(rbac_cluster, token_for(admin, space), tmp_path)
    user = f"system:serviceaccount:{space}:robot"
    assert status_of(robot, "GET", f"/api/v1/namespaces/{space}/pods")[0] == 200
    code, body = status_of(robot, "POST", f"/api/v1/namespaces/{space}/pods", {"metadata": {"name": "x"}})
    assert (code, body["reason"]) == (403, "Forbidden")
    assert body["message"] == (
        f'pods is forbidden: User "{user}" cannot create resource "pods" in API group "" in the namespace "{space}"'
    )
    assert body["details"] == {"kind": "pods"}
    # resourceNames: the named object only (allowed and missing is 404; any other name is 403)
    assert status_of(robot, "GET", f"/api/v1/namespaces/{space}/configmaps/allowed")[0] == 404
    code, body = status_of(robot, "GET", f"/api/v1/namespaces/{space}/configmaps/other")
    assert code == 403
    assert body["message"] == (
        f'configmaps "other" is forbidden: User "{user}" cannot get resource "configmaps" in API group "" '
        f'in the namespace "{space}"'
    )
    assert body["details"] == {"name": "other", "kind": "configmaps"}
    # a subresource is its own resource; `*/scale` grants every resource's scale in the group
    code, body = status_of(robot, "GET", f"/apis/apps/v1/namespaces/{space}/deployments/web")
    assert (code, body["details"]) == (403, {"name": "web", "group": "apps", "kind": "deployments"})
    assert status_of(robot, "GET", f"/apis/apps/v1/namespaces/{space}/deployments/web/scale")[0] == 404
    # authorization comes before routing: a resource that does not exist is 403 to whom may not ask
    code, body = status_of(robot, "GET", f"/apis/example.com/v1/namespaces/{space}/widgets")
    assert (code, body["message"]) == (
        403,
        f'widgets.example.com is forbidden: User "{user}" cannot list resource "widgets" in API group '
        f'"example.com" in the namespace "{space}"',
    )
    # outside its namespace, and at the cluster scope, it has nothing
    code, body = status_of(robot, "GET", "/api/v1/namespaces")
    assert body["message"] == (
        f'namespaces is forbidden: User "{user}" cannot list resource "namespaces" in API group "" at the cluster scope'
    )
    # discovery and /version are every authenticated user's (system:discovery, system:public-info-viewer)
    assert status_of(robot, "GET", "/apis")[0] == 200
    assert status_of(robot, "GET", "/version")[0] == 200


def test_kubectl_auth_can_i_reads_the_same_rules(
    rbac_cluster: Running, admin: client.ApiClient, space: str, tmp_path: Path
) -> None:
    kubeconfig = rbac_cluster.with_token(token_for(admin, space), tmp_path / "robot")
    answers = {
        ("list", "pods"): "yes",
        ("create", "pods"): "no",
        ("get", "pods", "--subresource=log"): "yes",
        ("get", "configmaps/allowed"): "yes",
        ("get", "configmaps/other"): "no",
        ("delete", "pods"): "no",
    }
    for args, expected in answers.items():
        done = kubectl(kubeconfig, "auth", "can-i", *args, "-n", space)
        assert done.stdout.strip() == expected, (args, done.stdout, done.stderr)
        assert done.returncode == (0 if expected == "yes" else 1)


def test_a_bad_token_is_401_with_kubes_body(rbac_cluster: Running, tmp_path: Path) -> None:
    stranger = as_token(rbac_cluster, "not-a-token", tmp_path)
    code, _, body = raw_bytes(stranger, "GET", "/api/v1/namespaces")
    assert code == 401
    assert json.loads(body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }


def test_a_legacy_token_secret_gets_its_token_and_loses_it_with_the_secret(
    rbac_cluster: Running, admin: client.ApiClient, space: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(admin)
    secret = {
        "metadata": {"name": "robot-token", "annotations": {"kubernetes.io/service-account.name": "robot"}},
        "type": "kubernetes.io/service-account-token",
    }
    core.create_namespaced_secret(space, secret)
    filled = wait_for(
        lambda: (core.read_namespaced_secret("robot-token", space).data or {}).get("token"),
        timeout=30,
        what="the tokens controller to fill the Secret",
    )
    stored = core.read_namespaced_secret("robot-token", space)
    assert base64.b64decode(stored.data["namespace"]).decode() == space
    account = core.read_namespaced_service_account("robot", space)
    assert stored.metadata.annotations["kubernetes.io/service-account.uid"] == account.metadata.uid
    robot = as_token(rbac_cluster, base64.b64decode(filled).decode(), tmp_path)
    assert status_of(robot, "GET", f"/api/v1/namespaces/{space}/pods")[0] == 200
    core.delete_namespaced_secret("robot-token", space)
    wait_for(
        lambda: status_of(robot, "GET", f"/api/v1/namespaces/{space}/pods")[0] == 401,
        timeout=30,
        what="the deleted Secret's token to stop authenticating",
    )
    # a token Secret must name its account
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_secret(space, {**secret, "metadata": {"name": "nameless"}})
    assert refused.value.status == 422
    assert "metadata.annotations[kubernetes.io/service-account.name]: Required value" in refused.value.body


def test_deleting_the_account_revokes_its_tokens(
    rbac_cluster: Running, admin: client.ApiClient, space: str, tmp_path: Path
) -> None:
    robot = as_token(rbac_cluster, token_for(admin, space), tmp_path)
    assert status_of(robot, "GET", f"/api/v1/namespaces/{space}/pods")[0] == 200
    client.CoreV1Api(admin).delete_namespaced_service_account("robot", space)
    wait_for(
        lambda: status_of(robot, "GET", f"/api/v1/namespaces/{space}/pods")[0] == 401,
        timeout=30,
        what="the deleted account's token to stop authenticating",
    )


def test_a_token_request_shorter_than_ten_minutes_is_invalid(admin: client.ApiClient, space: str) -> None:
    with pytest.raises(client.ApiException) as refused:
        token_for(admin, space, seconds=300)
    assert refused.value.status == 422
    assert "spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes" in (
        refused.value.body
    )


def test_a_binding_to_a_missing_role_says_so_in_the_denial(
    rbac_cluster: Running, admin: client.ApiClient, space: str, tmp_path: Path
) -> None:
    client.RbacAuthorizationV1Api(admin).create_namespaced_role_binding(
        space,
        {
            "metadata": {"name": "dangling"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gone"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": space}],
        },
    )
    robot = as_token(rbac_cluster, token_for(admin, space), tmp_path)
    code, body = status_of(robot, "GET", f"/api/v1/namespaces/{space}/secrets")
    assert code == 403
    assert body["message"].endswith(': RBAC: role.rbac.authorization.k8s.io "gone" not found')


@pytest.mark.sandbox_only
def test_no_credentials_is_the_anonymous_user(rbac_cluster: Running, tmp_path: Path) -> None:
    kubeconfig = rbac_cluster.with_token("", tmp_path / "anonymous")
    nobody = config.new_client_from_config(str(kubeconfig))
    nobody.configuration.api_key = {}
    code, body = status_of(nobody, "GET", "/api/v1/namespaces")
    assert (code, body["message"]) == (
        403,
        'namespaces is forbidden: User "system:anonymous" cannot list resource "namespaces" in API group "" '
        "at the cluster scope",
    )
    assert status_of(nobody, "GET", "/version")[0] == 200  # system:public-info-viewer
    assert status_of(nobody, "GET", "/apis")[0] == 403  # discovery is for authenticated users


@pytest.mark.sandbox_only
def test_the_open_sandbox_takes_any_token_as_the_admin(cluster: Running, tmp_path: Path) -> None:
    anyone = as_token(cluster, "anything", tmp_path)
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    code, body = status_of(anyone, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    assert code == 201
    assert body["status"]["userInfo"]["username"] == "kube-sandbox-admin"
    assert "system:masters" in body["status"]["userInfo"]["groups"]


def test_pods_mount_their_accounts_token_as_the_serviceaccount_plugin_mounts_it(
    admin: client.ApiClient, space: str
) -> None:
    core = client.CoreV1Api(admin)
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "serviceAccountName": "robot",
            "initContainers": [{"name": "init", "image": "busybox:1"}],
            "containers": [{"name": "app", "image": "busybox:1"}],
        },
    }
    spec = admin.sanitize_for_serialization(core.create_namespaced_pod(space, pod))["spec"]  # as JSON, no Nones
    [volume] = [v for v in spec["volumes"] if v["name"].startswith("kube-api-access-")]
    assert volume["projected"] == {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {
                "downwardAPI": {
                    "items": [
                        {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                    ]
                }
            },
        ],
    }
    mount = {"name": volume["name"], "readOnly": True, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
    for container in spec["initContainers"] + spec["containers"]:
        assert container["volumeMounts"] == [mount]
    ca = core.read_namespaced_config_map("kube-root-ca.crt", space).data["ca.crt"]
    assert ca.startswith("-----BEGIN CERTIFICATE-----")
    # automountServiceAccountToken: false on the pod, or on its account, mounts nothing
    quiet = {"metadata": {"name": "q"}, "spec": {**pod["spec"], "automountServiceAccountToken": False}}
    assert not core.create_namespaced_pod(space, quiet).spec.volumes


@pytest.mark.sandbox_only
def test_a_pod_reads_a_token_that_authenticates_as_its_account(
    sandbox_factory: Any, registry: Any, busybox: str, tmp_path: Path
) -> None:
    if not shutil.which("dockerd"):
        pytest.skip("the containers runtime needs dockerd")
    running = sandbox_factory(runtime="containers", auth="rbac", crash_backoff=0.5)
    api = running.api()
    core = client.CoreV1Api(api)
    account = "/var/run/secrets/kubernetes.io/serviceaccount"
    pod = {
        "metadata": {"name": "reader"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "app",
                    "image": busybox,
                    "command": [
                        "sh",
                        "-c",
                        f"cat {account}/namespace; echo; cat {account}/token; echo; head -1 {account}/ca.crt",
                    ],
                }
            ],
        },
    }
    core.create_namespaced_pod("default", pod)
    wait_for(
        lambda: core.read_namespaced_pod("reader", "default").status.phase == "Succeeded",
        timeout=60,
        what="the pod to read its token and end",
    )
    namespace, token, ca = core.read_namespaced_pod_log("reader", "default").splitlines()
    assert (namespace, ca) == ("default", "-----BEGIN CERTIFICATE-----")
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    code, body = status_of(
        as_token(running, token, tmp_path), "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review
    )
    assert (code, body["status"]["userInfo"]["username"]) == (201, "system:serviceaccount:default:default")
