"""Istio's admission as a real cluster applies it (istiod's validating webhook; sidecar injection of pod specs), and
the HorizontalPodAutoscaler acting on its target as kube-controller-manager does.

The validation tests hold on a real cluster with Istio too; the HPA test sets CPU figures through the sandbox.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kube_sandbox.testing import Running, wait_for
from kube_sandbox.testing.workloads import KUBECTL, autoscaler
from kubernetes import client

WEBHOOK = 'admission webhook "validation.istio.io" denied the request: configuration is invalid: '


def kubectl_apply(
    cluster: Running, namespace: str, obj: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "apply", "-n", namespace, *extra, "-f", "-"],
        input=yaml.safe_dump(obj),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def vs(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name}, "spec": spec}


def route(*weights: int, subset: str | None = "stable") -> list[dict[str, Any]]:
    names = ["stable", "canary", "third"]
    return [
        {"destination": {"host": "web", **({"subset": names[i]} if subset else {})}, "weight": w}
        for i, w in enumerate(weights)
    ]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (vs("zero", hosts=["web"], http=[{"route": route(0, 0)}]), "total destination weight = 0"),
        (vs("negative", hosts=["web"], http=[{"route": route(-10, 110)}]), "weight -10 < 0"),
        (vs("empty", hosts=["web"]), "http, tcp or tls must be provided in virtual service"),
        (
            vs("nohost", hosts=["web"], http=[{"route": [{"destination": {"host": ""}}]}]),
            "empty domain name not allowed",
        ),
        (
            vs("subset", hosts=["web"], http=[{"route": [{"destination": {"host": "web", "subset": "Canary_1"}}]}]),
            "subset name is invalid: Canary_1",
        ),
        (
            vs("delegate", gateways=["istio-system/gw"], http=[{"route": route(100, subset=None)}]),
            "delegate virtual service must have no gateways specified",
        ),
        (
            vs("regex", hosts=["web"], http=[{"match": [{"uri": {"regex": "(["}}], "route": route(100)}]),
            '"uri": ',
        ),
        (
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "dr"},
                "spec": {"host": "web", "subsets": [{"name": "a", "labels": {"t": "a"}}, {"name": "a"}]},
            },
            "duplicate subset names: a",
        ),
        (
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "gw"},
                "spec": {"selector": {"istio": "ingressgateway"}, "servers": []},
            },
            "gateway must have at least one server",
        ),
        (
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "default"},
                "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}},
            },
            "mesh/namespace peer authentication cannot have port level mTLS",
        ),
    ],
)
def test_istiod_refuses_invalid_istio_objects_as_a_real_cluster_does(
    cluster: Running, namespace: str, obj: dict[str, Any], message: str
) -> None:
    applied = kubectl_apply(cluster, namespace, obj)
    assert applied.returncode == 1
    plural = {"VirtualService": "virtualservices", "DestinationRule": "destinationrules", "Gateway": "gateways"}
    resource = plural.get(obj["kind"], "peerauthentications")
    group = obj["apiVersion"].split("/")[0]
    name = obj["metadata"]["name"]
    assert (
        f'Error from server (Forbidden): error when creating "STDIN": {resource}.{group} "{name}" is forbidden: '
        in (applied.stderr)
    )
    assert f"{WEBHOOK}{message}" in applied.stderr
    server_side = kubectl_apply(cluster, namespace, obj, "--server-side")
    assert server_side.returncode == 1 and WEBHOOK in server_side.stderr


def test_two_errors_are_listed_as_istio_lists_them(cluster: Running, namespace: str) -> None:
    applied = kubectl_apply(cluster, namespace, vs("two", hosts=["web", "web"], http=[{"route": route(0, 0)}]))
    assert applied.returncode == 1
    assert f"{WEBHOOK}2 errors occurred:\n\t* duplicate hosts in virtual service: web & web\n\t* " in applied.stderr


def test_valid_istio_objects_are_stored_as_written_and_a_bad_update_leaves_them_unchanged(
    api: client.ApiClient, cluster: Running, namespace: str
) -> None:
    good = vs(
        "web",
        hosts=["web", "web.example.test"],
        gateways=["mesh", "istio-system/istio-ingressgateway"],
        http=[
            {"match": [{"headers": {"x-canary": {"exact": "1"}}}], "route": route(0, 100)},
            {"route": route(90, 10), "retries": {"attempts": 2}, "timeout": "5s"},
        ],
        exportTo=["."],
    )
    assert kubectl_apply(cluster, namespace, good).returncode == 0
    objects = client.CustomObjectsApi(api)
    stored = objects.get_namespaced_custom_object("networking.istio.io", "v1", namespace, "virtualservices", "web")
    assert stored["spec"] == good["spec"]
    bad = vs("web", hosts=["web"], http=[{"route": route(0, 0)}])
    assert kubectl_apply(cluster, namespace, bad).returncode == 1
    after = objects.get_namespaced_custom_object("networking.istio.io", "v1", namespace, "virtualservices", "web")
    assert after["spec"] == good["spec"]
    assert after["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    # a lone destination needs no weight (it takes everything)
    assert kubectl_apply(cluster, namespace, vs("lone", hosts=["web"], http=[{"route": route(0)}])).returncode == 0


@pytest.mark.sandbox_only
def test_pods_of_an_injected_namespace_get_the_sidecar_in_their_spec(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    name = f"inj-{int(time.time() * 1000) % 10**8}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"istio-injection": "enabled"}))
    )
    try:
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="p", labels={"app": "p"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        )
        created = core.create_namespaced_pod(name, pod)
        assert [c.name for c in created.spec.containers] == ["c", "istio-proxy"]
        assert created.metadata.labels["service.istio.io/canonical-name"] == "p"
        dry = core.create_namespaced_pod("default", pod, dry_run="All")  # not injected: default has no label
        assert [c.name for c in dry.spec.containers] == ["c"]
    finally:
        core.delete_namespace(name)


@pytest.mark.sandbox_only
def test_an_hpa_scales_its_deployment_within_bounds_and_owns_replicas_again_after_a_forced_apply(
    sandbox_factory: Callable[..., Running],
) -> None:
    running = sandbox_factory(hpa_sync_period=0.3, ready_delay=0.05)
    api = running.api()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    container = {"name": "web", "image": "web:1", "resources": {"requests": {"cpu": "100m"}}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}},
        },
    }
    utilization = {"type": "Utilization", "averageUtilization": 50}
    hpa = autoscaler(
        "web",
        maximum=5,
        metric={"type": "Resource", "resource": {"name": "cpu", "target": utilization}},
        behavior={"scaleDown": {"stabilizationWindowSeconds": 0}},
    )
    assert kubectl_apply(running, "default", deployment, "--server-side").returncode == 0
    assert kubectl_apply(running, "default", hpa).returncode == 0

    def replicas(wanted: int) -> Callable[[], bool]:
        def check() -> bool:
            d = apps.read_namespaced_deployment("web", "default")
            return d.spec.replicas == wanted and (d.status.ready_replicas or 0) == wanted

        return check

    wait_for(replicas(1), what="one ready pod")
    running.control("/sandbox/metrics", {"namespace": "default", "selector": "app=web", "cpu": "200m"})
    wait_for(replicas(4), what="200% of the requested cpu on one pod: 4 replicas")
    running.control("/sandbox/metrics", {"namespace": "default", "selector": "app=web", "cpu": "200m"})
    wait_for(replicas(5), what="200% on four pods: 16 wanted, max 5")
    status = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler("web", "default").status
    limited = next(c for c in status.conditions if c.type == "ScalingLimited")
    assert (limited.status, limited.reason) == ("True", "TooManyReplicas")
    running.control("/sandbox/metrics", {"namespace": "default", "selector": "app=web", "cpu": "10m"})
    wait_for(replicas(1), what="10% of the requested cpu: back to the minimum")

    # a forced apply of replicas takes spec.replicas from the HPA; its next write takes it back
    forced = {**deployment, "spec": {**deployment["spec"], "replicas": 3}}
    assert kubectl_apply(running, "default", forced, "--server-side", "--force-conflicts").returncode == 0

    def owners() -> dict[tuple[str, str, str], bool]:
        d = apps.read_namespaced_deployment("web", "default")
        return {
            (f.manager, f.operation, f.subresource or ""): "f:replicas" in str(f.fields_v1)
            for f in d.metadata.managed_fields
        }

    assert owners().get(("kubectl", "Apply", "")) is True
    # the new pods report too (kube's calculator counts a pod without metrics at 100% on a scale-down)
    wait_for(lambda: len(core.list_namespaced_pod("default", label_selector="app=web").items) == 3, what="3 pods")
    running.control("/sandbox/metrics", {"namespace": "default", "selector": "app=web", "cpu": "10m"})
    wait_for(replicas(1), what="the HPA to scale back to 1")
    after = owners()
    assert after[("kube-controller-manager", "Update", "scale")] is True
    assert after[("kubectl", "Apply", "")] is False
