"""The sandbox's data plane: real containers in its own dockerd, probes, logs, the pod proxy, the mesh and metrics.

Everything here runs for real: images come from a docker-registry the tests start, pods run in the sandbox's
dockerd, Prometheus is Debian's. The mesh and the cleanup are the sandbox's own (sandbox_only); the rest holds
on a real cluster too (KUBE_SANDBOX_KUBECONFIG), given KUBE_SANDBOX_BUSYBOX (a busybox image that cluster can pull).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kube_sandbox import traffic
from kube_sandbox.testing import Running, real_cluster, start_sandbox, wait_for
from kube_sandbox.testing.workloads import BROKEN, HTTPD, apply, deployment, kubectl, ready_pods, service
from kubernetes import client

pytestmark = pytest.mark.skipif(
    not real_cluster() and not (shutil.which("dockerd") and shutil.which("docker-registry")),
    reason="dockerd and docker-registry are installed by `make setup`",
)


@pytest.fixture(scope="module")
def cluster(containers_cluster: Running) -> Running:
    return containers_cluster


@pytest.fixture
def image(busybox: str) -> str:
    return busybox


def mesh_objects(name: str, namespace: str, canary_weight: int) -> list[dict[str, Any]]:
    host = f"{name}.{namespace}.svc.cluster.local"
    return [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": name},
            "spec": {
                "host": host,
                "subsets": [
                    {"name": "stable", "labels": {"track": "stable"}},
                    {"name": "canary", "labels": {"track": "canary"}},
                ],
            },
        },
        virtual_service(name, namespace, canary_weight),
    ]


def virtual_service(name: str, namespace: str, canary_weight: int) -> dict[str, Any]:
    host = f"{name}.{namespace}.svc.cluster.local"
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "route": [
                        {"destination": {"host": host, "subset": "stable"}, "weight": 100 - canary_weight},
                        {"destination": {"host": host, "subset": "canary"}, "weight": canary_weight},
                    ]
                }
            ],
        },
    }


def two_tracks(
    cluster: Running, api: client.ApiClient, namespace: str, image: str, canary_command: str = HTTPD
) -> None:
    apply(
        cluster,
        namespace,
        [
            deployment("web-stable", image, HTTPD, labels={"app": "web", "track": "stable"}),
            deployment("web-canary", image, canary_command, labels={"app": "web", "track": "canary"}),
            service("web", {"app": "web"}),
            *mesh_objects("web", namespace, 10),
        ],
    )
    ready_pods(api, namespace, "app=web", 2)


@pytest.mark.sandbox_only
def test_the_mesh_routes_by_weight_and_a_change_applies_once_it_has_propagated(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, image: str
) -> None:
    namespace = mesh_namespace
    two_tracks(cluster, api, namespace, image)
    cluster.propagated()
    answers = cluster.send("web", 1000, source=namespace)
    assert {status for status, _ in answers} == {200}
    canary = sum(1 for _, body in answers if body == "canary")
    # binomial(1000, 0.1): mean 100, sd 9.49; the two-sided 99% bound is 100 +- 2.576 sd
    low, high = 100 - 2.576 * math.sqrt(90), 100 + 2.576 * math.sqrt(90)
    assert low <= canary <= high, f"{canary} of 1000 requests reached the canary at weight 10"
    apply(cluster, namespace, [virtual_service("web", namespace, 0)])
    cluster.propagated()
    after = cluster.send("web", 300, source=namespace)
    assert Counter(body for _, body in after) == {"stable": 300}
    # the service's other names, from the client's namespace, route the same way
    for host in (f"web.{namespace}", f"web.{namespace}.svc.cluster.local"):
        assert Counter(body for _, body in cluster.send(host, 20, source=namespace)) == {"stable": 20}


@pytest.mark.sandbox_only
def test_prometheus_sees_the_success_rate_of_a_canary_answering_500(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, image: str
) -> None:
    namespace = mesh_namespace
    two_tracks(cluster, api, namespace, image, canary_command=BROKEN)
    apply(cluster, namespace, [virtual_service("web", namespace, 50)])
    cluster.propagated()
    # steady traffic across several 1s scrapes, as in a canary step: rate() needs two samples of a rising counter
    clients = cluster.info()["clients"]
    counts = asyncio.run(traffic.send(clients, "web", rps=100, duration=4, source=namespace))
    failed = counts["500"]
    assert set(counts) == {"200", "500"} and sum(counts.values()) == 400
    prometheus = cluster.info()["prometheus"]
    select = f'reporter="destination",destination_workload_namespace="{namespace}"'

    def query(promql: str) -> float | None:
        url = f"{prometheus}/api/v1/query?query={urllib.parse.quote(promql)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            result = json.load(answer)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    total = f"sum(istio_requests_total{{{select}}})"
    wait_for(lambda: query(total) == 400, timeout=30, what="Prometheus to scrape all 400 requests")
    good = f'sum(istio_requests_total{{{select},response_code!~"5.*"}})'
    assert query(f"{good} / {total}") == pytest.approx((400 - failed) / 400)

    def flagger(workload: str) -> float | None:  # Flagger's request-success-rate, unchanged
        return query(
            f'sum(rate(istio_requests_total{{{select},destination_workload=~"{workload}",response_code!~"5.*"}}[30s]))'
            f' / sum(rate(istio_requests_total{{{select},destination_workload=~"{workload}"}}[30s]))'
        )

    def zero_filled(workload: str) -> float | None:  # the same rate, 0 where no non-5xx series exists
        where = f'{select},destination_workload=~"{workload}"'
        return query(
            f'(sum(rate(istio_requests_total{{{where},response_code!~"5.*"}}[30s])) or on() vector(0))'
            f" / sum(rate(istio_requests_total{{{where}}}[30s]))"
        )

    assert flagger("web-stable") == 1
    assert zero_filled("web-stable") == 1
    assert flagger("web-canary") is None  # no non-5xx series at all: why templates add a zero
    assert zero_filled("web-canary") == 0
    assert zero_filled("no-such-workload") is None  # no traffic is still no data
    histogram = (
        f"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{{select}}}[30s])) by (le))"
    )
    latency = query(histogram)
    assert latency is not None and 0 < latency < 10000


@pytest.mark.sandbox_only
def test_a_pod_failing_its_readiness_probe_gets_no_traffic(
    cluster: Running, api: client.ApiClient, namespace: str, image: str
) -> None:
    unready = {"readinessProbe": {"httpGet": {"path": "/missing", "port": "http"}, "periodSeconds": 1}}
    apply(
        cluster,
        namespace,
        [
            deployment("good", image, HTTPD, labels={"app": "probe", "track": "good"}),
            deployment("bad", image, HTTPD, labels={"app": "probe", "track": "bad"}, container=unready),
            service("probe", {"app": "probe"}),
        ],
    )
    ready_pods(api, namespace, "app=probe,track=good")
    core = client.CoreV1Api(api)

    def bad_is_running() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(namespace, label_selector="track=bad").items
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    bad = wait_for(bad_is_running, timeout=60, what="the unready pod to run")
    subsets = wait_for(
        lambda: (core.read_namespaced_endpoints("probe", namespace).subsets or [None])[0], what="endpoints"
    )
    assert [a.target_ref.name for a in subsets.not_ready_addresses or []] == [bad.metadata.name]
    assert bad.status.container_statuses[0].ready is False
    assert Counter(body for _, body in cluster.send("probe", 50, source=namespace)) == {"good": 50}


def test_a_crashing_container_goes_into_crash_loop_back_off_and_its_rollout_never_completes(
    cluster: Running, api: client.ApiClient, namespace: str, image: str
) -> None:
    crash = deployment(
        "crash",
        image,
        "echo boom; exit 3",
        labels={"app": "crash"},
        progressDeadlineSeconds=4,
    )
    crash["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    apply(cluster, namespace, [crash])
    core = client.CoreV1Api(api)

    def looping() -> client.V1ContainerStatus | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=crash").items
        status = pods[0].status.container_statuses[0] if pods and pods[0].status.container_statuses else None
        waiting = status.state.waiting if status else None
        return status if waiting and waiting.reason == "CrashLoopBackOff" and status.restart_count >= 2 else None

    first = wait_for(looping, timeout=60, what="CrashLoopBackOff")
    assert first.last_state.terminated.exit_code == 3
    assert first.ready is False
    later = wait_for(
        lambda: (s := looping()) and s.restart_count > first.restart_count and s, timeout=60, what="another restart"
    )
    assert later.restart_count > first.restart_count
    pod = core.list_namespaced_pod(namespace, label_selector="app=crash").items[0].metadata.name
    previous = kubectl(cluster, "logs", "-n", namespace, pod, "--previous")
    assert previous.returncode == 0, previous.stderr
    assert previous.stdout == "boom\n"
    rollout = kubectl(cluster, "rollout", "status", "-n", namespace, "deploy/crash", "--timeout=40s")
    assert rollout.returncode == 1
    assert 'deployment "crash" exceeded its progress deadline' in rollout.stderr


def test_kubectl_logs_shows_the_container_output_and_the_pod_proxy_reaches_it(
    cluster: Running, api: client.ApiClient, namespace: str, image: str
) -> None:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"GREETING": "hello from a configmap", "page.html": "from a volume\n"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "token"},
        "stringData": {"token": "s3cret"},
    }
    command = (
        'echo "greeting=$GREETING token=$TOKEN pod=$POD"; cp /config/page.html /tmp/www-index.html;'
        " mkdir -p /tmp/www; cp /config/page.html /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www"
    )
    web = deployment(
        "logs",
        image,
        command,
        labels={"app": "logs"},
        container={
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "GREETING"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "token"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            "volumeMounts": [{"name": "config", "mountPath": "/config"}],
        },
    )
    web["spec"]["template"]["spec"]["volumes"] = [{"name": "config", "configMap": {"name": "settings"}}]
    apply(cluster, namespace, [config_map, secret, web])
    pod = ready_pods(api, namespace, "app=logs")[0].metadata.name
    logs = kubectl(cluster, "logs", "-n", namespace, pod)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == f"greeting=hello from a configmap token=s3cret pod={pod}\n"
    by_deployment = kubectl(cluster, "logs", "-n", namespace, "deploy/logs", "--tail=1")
    assert by_deployment.stdout == logs.stdout
    proxied = client.CoreV1Api(api).connect_get_namespaced_pod_proxy_with_path(f"{pod}:http", namespace, "index.html")
    assert proxied == "from a volume\n"
    missing = kubectl(cluster, "logs", "-n", namespace, pod, "-c", "nope")
    assert missing.returncode == 1
    assert "container nope is not valid for pod" in missing.stderr


@pytest.mark.sandbox_only
def test_sandbox_traffic_sends_steady_load_from_a_pod_in_the_mesh(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, image: str
) -> None:
    namespace = mesh_namespace
    two_tracks(cluster, api, namespace, image)
    result = subprocess.run(
        [
            shutil.which("kube-sandbox", path=str(Path(sys.executable).parent)) or "kube-sandbox",
            "traffic",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--host",
            "web",
            "--from",
            namespace,
            "--rps",
            "40",
            "--duration",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "total 60 requests, 60 without a 5xx or error (100.0%)"


@pytest.mark.sandbox_only
def test_stopping_the_sandbox_leaves_no_container_network_process_or_mount(tmp_path: Path, image: str) -> None:
    running = start_sandbox(tmp_path, runtime="containers", crash_backoff=0.5)
    try:
        api = running.api()
        name = f"t-{uuid.uuid4().hex[:8]}"
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        apply(running, name, [deployment("web", image, HTTPD, labels={"app": "web"}), service("web", {"app": "web"})])
        ready_pods(api, name, "app=web")
        sandbox = running.sandbox
        assert sandbox is not None and sandbox.containers is not None
        engine = sandbox.containers.engine
        assert engine.process is not None
        daemon = engine.process.pid
        children = _descendants(daemon)
        assert any("containerd" in _command(pid) for pid in children)
        assert any("docker-proxy" in _command(pid) for pid in children)
        bridge, root = engine.bridge, engine.root
        assert Path(f"/sys/class/net/{bridge}").exists()
    finally:
        running.stop()
    assert not Path(f"/proc/{daemon}").exists()
    assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []
    assert not Path(f"/sys/class/net/{bridge}").exists()
    assert str(root.parent) not in Path("/proc/mounts").read_text()
    assert not root.parent.exists()


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found += [int(entry.name), *_descendants(int(entry.name))]
    return found


def _command(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
