"""Protobuf request bodies of every built-in kind: kubectl's imperative commands send protobuf, and what the server
stores holds everything kubectl's own JSON of the same object (`--dry-run=client -o json`) says."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
from kube_sandbox.testing import Running

pytestmark = pytest.mark.cluster
KUBECTL = shutil.which("kubectl") or "kubectl"

# (command, the object's kind/name for `kubectl get`); kubectl sends these bodies as protobuf, but `run`
COMMANDS = [
    (["create", "deployment", "web", "--image=busybox:1", "--replicas=2", "--port=8080"], "deployment/web"),
    (["create", "service", "clusterip", "svc", "--tcp=80:8080"], "service/svc"),
    (["create", "service", "nodeport", "np", "--tcp=81:8081"], "service/np"),
    (["create", "job", "once", "--image=busybox:1", "--", "true"], "job/once"),
    (["create", "cronjob", "often", "--image=busybox:1", "--schedule=*/5 * * * *"], "cronjob/often"),
    (["create", "role", "reader", "--verb=get,list", "--resource=pods,pods/log,deployments.apps"], "role/reader"),
    (["create", "rolebinding", "reads", "--role=reader", "--serviceaccount=default:default"], "rolebinding/reads"),
    (["create", "poddisruptionbudget", "budget", "--selector=app=web", "--min-available=1"], "pdb/budget"),
    (["create", "ingress", "entry", "--rule=web.example.com/api*=svc:80"], "ingress/entry"),
    (["create", "quota", "limits", "--hard=cpu=1,memory=1G,pods=2"], "resourcequota/limits"),
    (["create", "configmap", "settings", "--from-literal=a=b"], "configmap/settings"),
    (["create", "secret", "generic", "keys", "--from-literal=token=abc"], "secret/keys"),
    (["create", "serviceaccount", "robot"], "serviceaccount/robot"),
    (
        ["run", "one", "--image=busybox:1", "--restart=Never", "--env=A=B", "--labels=app=one", "--", "sleep", "5"],
        "pod/one",
    ),
]


def kubectl(cluster: Running, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def flagged(command: list[str], *flags: str) -> list[str]:
    """`command` with `flags` before its `--` (after it they would be the container's arguments)."""
    cut = command.index("--") if "--" in command else len(command)
    return [*command[:cut], *flags, *command[cut:]]


def missing(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Where `stored` lacks or differs from what `sent` says (server defaults may add more)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r} is not an object"]
        return [m for key, value in sent.items() for m in missing(value, stored.get(key), f"{path}.{key}")]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [f"{path}: {stored!r} against {sent!r}"]
        return [m for i, (a, b) in enumerate(zip(sent, stored, strict=True)) for m in missing(a, b, f"{path}[{i}]")]
    return [] if sent == stored or sent is None else [f"{path}: {stored!r} against {sent!r}"]


@pytest.mark.parametrize(("command", "target"), COMMANDS, ids=[c[1] for c in COMMANDS])
def test_kubectl_create_sends_protobuf_and_the_object_is_what_it_said(
    cluster: Running, plain_namespace: str, command: list[str], target: str
) -> None:
    namespace = plain_namespace  # no sidecar injection: the stored pod is the pod sent
    said = kubectl(cluster, "-n", namespace, *flagged(command, "--dry-run=client", "-o", "json"))
    assert said.returncode == 0, said.stderr
    created = kubectl(cluster, "-n", namespace, *flagged(command, "-v=8"))
    assert created.returncode == 0, created.stderr
    if command[0] != "run":  # kubectl run builds its Pod unstructured and sends JSON
        assert "Content-Type: application/vnd.kubernetes.protobuf" in created.stderr  # the body under test
    stored = json.loads(kubectl(cluster, "-n", namespace, "get", target, "-o", "json").stdout)
    sent = json.loads(said.stdout)
    sent["metadata"].pop("creationTimestamp", None)
    assert missing(sent, stored) == []


def test_a_cluster_scoped_kind_and_zero_values_that_mean_something(cluster: Running, namespace: str) -> None:
    created = kubectl(cluster, "create", "priorityclass", f"p-{namespace}", "--value=0", "--description=zero")
    assert created.returncode == 0, created.stderr
    stored = json.loads(kubectl(cluster, "get", "priorityclass", f"p-{namespace}", "-o", "json").stdout)
    assert (stored["value"], stored["description"]) == (0, "zero")  # `value` has no omitempty: 0 is kept
    kubectl(cluster, "delete", "priorityclass", f"p-{namespace}")
    scaled = kubectl(cluster, "-n", namespace, "create", "deployment", "idle", "--image=busybox:1", "--replicas=0")
    assert scaled.returncode == 0, scaled.stderr
    deployment = json.loads(kubectl(cluster, "-n", namespace, "get", "deployment/idle", "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 0  # a pointer: 0 sent is 0, not the default 1
