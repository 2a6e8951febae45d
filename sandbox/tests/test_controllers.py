"""Simulated controllers set status exactly as the real ones: Deployments through a rolling update, progress
deadlines, Services and Endpoints, Jobs, and pods that crash or go unready."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kube_sandbox.testing import Running, unless_missing, wait_for
from kubernetes import client, watch

pytestmark = pytest.mark.cluster


def deployment(name: str, *, replicas: int = 4, image: str = "app:1", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            **spec,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "c", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}]
                },
            },
        },
    }


def conditions(obj: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in (obj.status.conditions or [])}


def test_deployment_status_through_a_rolling_update(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("roll", replicas=4))
    done = wait_for(
        lambda: (d := apps.read_namespaced_deployment("roll", namespace)).status.available_replicas == 4 and d,
        what="4 available replicas",
    )
    assert conditions(done) == {
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("True", "NewReplicaSetAvailable"),
    }
    assert done.status.observed_generation == 1
    assert done.metadata.annotations["deployment.kubernetes.io/revision"] == "1"

    seen: list[client.V1Deployment] = []
    stop = threading.Event()

    def record() -> None:
        for event in watch.Watch().stream(
            apps.list_namespaced_deployment, namespace, field_selector="metadata.name=roll", timeout_seconds=15
        ):
            seen.append(event["object"])
            if stop.is_set():
                return

    watcher = threading.Thread(target=record, daemon=True)
    watcher.start()
    time.sleep(0.2)
    updated = apps.patch_namespaced_deployment(
        "roll", namespace, {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "app:2"}]}}}}
    )
    assert updated.metadata.generation == 2
    final = wait_for(
        lambda: (
            (d := apps.read_namespaced_deployment("roll", namespace)).status.updated_replicas == 4
            and d.status.available_replicas == 4
            and d.status.replicas == 4
            and conditions(d)["Progressing"][1] == "NewReplicaSetAvailable"
            and d
        ),
        what="the rollout",
    )
    stop.set()
    assert final.status.observed_generation == 2
    assert final.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    middle = [
        d for d in seen if d.status and d.status.observed_generation == 2 and 0 < (d.status.updated_replicas or 0) < 4
    ]
    assert middle, "the rollout went through intermediate states"
    for state in seen:
        if state.status and state.status.replicas:
            assert state.status.replicas <= 5, "maxSurge 25% of 4 allows at most 5 pods"
            assert (state.status.available_replicas or 0) >= 3 or state.status.observed_generation == 1, (
                "maxUnavailable 25% of 4 keeps at least 3 available"
            )
    reasons = {conditions(d).get("Progressing", ("", ""))[1] for d in seen}
    assert "ReplicaSetUpdated" in reasons or "NewReplicaSetCreated" in reasons
    replicasets = client.AppsV1Api(api).list_namespaced_replica_set(namespace, label_selector="app=roll").items
    assert sorted(rs.spec.replicas for rs in replicasets) == [0, 4]


@pytest.mark.sandbox_only
def test_progress_deadline_exceeded_when_pods_never_become_ready(
    cluster: Running, api: client.ApiClient, namespace: str
) -> None:
    cluster.control("/sandbox/pods", {"image": "stuck:1", "behaviour": "never-ready"})
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(
        namespace, deployment("stuck", replicas=1, image="stuck:1", progressDeadlineSeconds=2)
    )
    stuck = wait_for(
        lambda: (
            (d := apps.read_namespaced_deployment("stuck", namespace))
            and conditions(d).get("Progressing", ("", ""))[1] == "ProgressDeadlineExceeded"
            and d
        ),
        timeout=10,
        what="ProgressDeadlineExceeded",
    )
    assert conditions(stuck) == {
        "Available": ("False", "MinimumReplicasUnavailable"),
        "Progressing": ("False", "ProgressDeadlineExceeded"),
    }
    assert stuck.status.unavailable_replicas == 1


@pytest.mark.sandbox_only
def test_crashing_pods_show_crashloopbackoff_and_restarts(
    cluster: Running, api: client.ApiClient, namespace: str
) -> None:
    cluster.control("/sandbox/pods", {"image": "crash:1", "behaviour": "crash"})
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment("crash", replicas=1, image="crash:1"))
    core = client.CoreV1Api(api)

    def crashed() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="app=crash").items
        status = pods[0].status.container_statuses[0] if pods and pods[0].status.container_statuses else None
        return status if status and status.restart_count >= 2 else None

    status = wait_for(crashed, timeout=10, what="two restarts")
    assert status.state.waiting.reason == "CrashLoopBackOff"
    assert status.last_state.terminated.exit_code == 1
    assert status.ready is False


@pytest.mark.sandbox_only
def test_pods_can_become_unready_later(cluster: Running, api: client.ApiClient, namespace: str) -> None:
    cluster.control("/sandbox/pods", {"image": "flaky:1", "behaviour": "unready-after", "after": 0.5})
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("flaky", replicas=1, image="flaky:1"))
    wait_for(lambda: apps.read_namespaced_deployment("flaky", namespace).status.ready_replicas == 1, what="ready first")
    wait_for(
        lambda: not apps.read_namespaced_deployment("flaky", namespace).status.ready_replicas, what="unready later"
    )


def test_services_get_a_cluster_ip_and_endpoints_follow_ready_pods(api: client.ApiClient, namespace: str) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    service = core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    )
    assert service.spec.cluster_ip and service.spec.cluster_ip != "None"
    assert service.spec.ports[0].protocol == "TCP"
    apps.create_namespaced_deployment(namespace, deployment("web", replicas=2))

    def addresses() -> Any:
        subsets = core.read_namespaced_endpoints("web", namespace).subsets or []
        found = [a for s in subsets for a in (s.addresses or [])]
        return subsets if len(found) == 2 else None

    (subset,) = wait_for(lambda: unless_missing(addresses), what="2 ready addresses")
    assert subset.ports[0].port == 8080
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 1}})
    wait_for(
        lambda: len((core.read_namespaced_endpoints("web", namespace).subsets or [{}])[0].addresses or []) == 1,
        what="1 address after scaling down",
    )


def job(name: str, image: str, backoff: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "m", "image": image, "command": ["migrate"]}],
                }
            },
        },
    }


def test_job_runs_to_complete(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    created = batch.create_namespaced_job(namespace, job("migrate", "migrate:1"))
    assert created.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": created.metadata.uid}
    done = wait_for(
        lambda: (j := batch.read_namespaced_job("migrate", namespace)).status.succeeded and j, what="the job to succeed"
    )
    assert {c.type for c in done.status.conditions} == {"SuccessCriteriaMet", "Complete"}
    assert done.status.completion_time is not None


@pytest.mark.sandbox_only
def test_job_fails_after_its_backoff_limit(cluster: Running, api: client.ApiClient, namespace: str) -> None:
    cluster.control("/sandbox/pods", {"image": "broken-migrate:1", "behaviour": "fail"})
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, job("broken", "broken-migrate:1", backoff=1))
    failed = wait_for(
        lambda: (j := batch.read_namespaced_job("broken", namespace)).status.conditions and j, what="the job to fail"
    )
    assert ("Failed", "True", "BackoffLimitExceeded") in {
        (c.type, c.status, c.reason) for c in failed.status.conditions
    }
    assert failed.status.failed == 2


def test_scale_subresource(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("sc", replicas=1))
    scale = apps.read_namespaced_deployment_scale("sc", namespace)
    assert (scale.spec.replicas, scale.status.selector) == (1, "app=sc")
    apps.replace_namespaced_deployment_scale("sc", namespace, {"metadata": {"name": "sc"}, "spec": {"replicas": 3}})
    assert apps.read_namespaced_deployment("sc", namespace).spec.replicas == 3
    wait_for(
        lambda: apps.read_namespaced_deployment_scale("sc", namespace).status.replicas == 3,
        what="3 replicas in the scale status",
    )


@pytest.mark.sandbox_only
def test_job_deadline_ttl_and_a_process_pod_with_its_log_followed(sandbox_factory: Any, tmp_path: Any) -> None:
    """A pod of a mapped image runs its command on the host (args appended, env values set); its log can be
    followed as it grows; past activeDeadlineSeconds its Job fails (DeadlineExceeded) and the pod (and process)
    are gone; a finished Job with ttlSecondsAfterFinished is deleted that long after it finished."""
    marker = tmp_path / "ran"
    script = 'echo "hello $GREETING"; echo "args: $*"; touch ' + str(marker) + '; sleep "$1"; echo "done after $1"'
    running = sandbox_factory(processes={"tool:1": ("sh", "-c", script, "tool")})
    api = running.api()
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="jobs")))

    def tool(name: str, seconds: str, **spec: Any) -> dict[str, Any]:
        container = {"name": "t", "image": "tool:1", "args": [seconds], "env": [{"name": "GREETING", "value": "hi"}]}
        return {
            "metadata": {"name": name},
            "spec": {
                **spec,
                "backoffLimit": 0,
                "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            },
        }

    # runs to its end; its log followed while it runs; deleted 1s after it succeeded
    batch.create_namespaced_job("jobs", tool("quick", "1", ttlSecondsAfterFinished=1))
    pod = wait_for(lambda: core.list_namespaced_pod("jobs", label_selector="job-name=quick").items, what="its pod")[0]
    wait_for(lambda: core.read_namespaced_pod(pod.metadata.name, "jobs").status.phase == "Running", what="running")
    started = time.monotonic()
    followed = core.read_namespaced_pod_log(pod.metadata.name, "jobs", follow=True, _preload_content=False)
    text = followed.data.decode()
    assert text.splitlines() == ["hello hi", "args: 1", "done after 1"], text
    assert time.monotonic() - started > 0.5, "the stream stayed open until the process ended"
    assert marker.exists()
    done = wait_for(lambda: (j := batch.read_namespaced_job("quick", "jobs")).status.succeeded and j, what="done")
    assert done.status.completion_time is not None
    wait_for(lambda: not batch.list_namespaced_job("jobs").items, timeout=10, what="the TTL to delete the Job")
    wait_for(lambda: not core.list_namespaced_pod("jobs").items, timeout=10, what="its pod to go with it")

    # past its deadline: failed, DeadlineExceeded, its pod and process gone
    batch.create_namespaced_job("jobs", tool("slow", "60", activeDeadlineSeconds=2))
    failed = wait_for(
        lambda: (j := batch.read_namespaced_job("slow", "jobs")).status.conditions and j, timeout=10, what="deadline"
    )
    assert {(c.type, c.reason) for c in failed.status.conditions} == {
        ("FailureTarget", "DeadlineExceeded"),
        ("Failed", "DeadlineExceeded"),
    }
    assert failed.status.conditions[-1].message == "Job was active longer than specified deadline"
    wait_for(lambda: not core.list_namespaced_pod("jobs", label_selector="job-name=slow").items, what="pod deleted")
    events = core.list_namespaced_event("jobs", field_selector="involvedObject.name=slow").items
    assert "DeadlineExceeded" in {e.reason for e in events}
