"""Events as the controllers, the scheduler and the kubelet record them, read the way kubectl reads them."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from kube_sandbox.testing import Running, wait_for
from kubernetes import client

pytestmark = pytest.mark.cluster
KUBECTL = shutil.which("kubectl") or "kubectl"


def events_of(api: client.ApiClient, namespace: str, kind: str, name: str) -> list[Any]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    return list(client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=selector).items)


def deployment(name: str, replicas: int, image: str = "busybox:1") -> dict[str, Any]:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": image, "command": ["sleep", "3600"]}]},
            },
        },
    }


def test_a_rollout_is_told_by_its_events(cluster: Running, api: client.ApiClient, plain_namespace: str) -> None:
    namespace, apps = plain_namespace, client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("web", 2))

    def scaled() -> list[str]:
        return [e.message for e in events_of(api, namespace, "Deployment", "web") if e.reason == "ScalingReplicaSet"]

    [first] = wait_for(scaled, timeout=30, what="the deployment controller's ScalingReplicaSet event")
    [replica_set] = apps.list_namespaced_replica_set(namespace).items
    assert first == f"Scaled up replica set {replica_set.metadata.name} from 0 to 2"
    rs_name = replica_set.metadata.name

    def replica_set_events() -> list[Any] | None:
        found = events_of(api, namespace, "ReplicaSet", rs_name)
        return found if len(found) >= 2 else None

    created = wait_for(replica_set_events, timeout=30, what="the replica set's SuccessfulCreate events")
    pods = {p.metadata.name for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items}
    assert {(e.reason, e.message) for e in created} == {("SuccessfulCreate", f"Created pod: {p}") for p in pods}
    assert all(e.type == "Normal" and e.source.component == "replicaset-controller" for e in created)
    pod = sorted(pods)[0]
    scheduled = wait_for(
        lambda: [e for e in events_of(api, namespace, "Pod", pod) if e.reason == "Scheduled"],
        timeout=30,
        what="the scheduler's event",
    )
    node = client.CoreV1Api(api).read_namespaced_pod(pod, namespace).spec.node_name
    assert scheduled[0].message == f"Successfully assigned {namespace}/{pod} to {node}"
    started = wait_for(
        lambda: [e for e in events_of(api, namespace, "Pod", pod) if e.reason == "Started"],
        timeout=60,
        what="the kubelet's Started event",
    )
    assert started[0].message == "Started container web"
    assert started[0].involved_object.field_path == "spec.containers{web}"

    # scaled down: the deployment says so, the replica set names the pod it deleted
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 1}})
    wait_for(
        lambda: f"Scaled down replica set {replica_set.metadata.name} from 2 to 1" in scaled(),
        timeout=30,
        what="the scale-down event",
    )
    deleted = wait_for(
        lambda: [e for e in events_of(api, namespace, "ReplicaSet", rs_name) if e.reason == "SuccessfulDelete"],
        timeout=30,
        what="the SuccessfulDelete event",
    )
    assert deleted[0].message.startswith("Deleted pod: ")
    described = subprocess.run(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "describe", "deployment", "web", "-n", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "ScalingReplicaSet" in described.stdout and f"replica set {replica_set.metadata.name}" in described.stdout


@pytest.mark.sandbox_only
def test_a_crash_loop_is_a_warning_and_repeats_count_up(
    cluster: Running, api: client.ApiClient, plain_namespace: str
) -> None:
    namespace = plain_namespace
    cluster.control("/sandbox/pods", {"image": "crashy:1", "behaviour": "crash"})
    pod = {"metadata": {"name": "crashy"}, "spec": {"containers": [{"name": "app", "image": "crashy:1"}]}}
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod)
    backoff = wait_for(
        lambda: [e for e in events_of(api, namespace, "Pod", "crashy") if e.reason == "BackOff"],
        timeout=30,
        what="the kubelet's BackOff warning",
    )
    uid = client.CoreV1Api(api).read_namespaced_pod("crashy", namespace).metadata.uid
    assert backoff[0].type == "Warning"
    assert backoff[0].message == f"Back-off restarting failed container app in pod crashy_{namespace}({uid})"
    wait_for(
        lambda: any(e.count > 1 for e in events_of(api, namespace, "Pod", "crashy") if e.reason == "Started"),
        timeout=30,
        what="a restarted container's Started event to count up, not repeat",
    )
