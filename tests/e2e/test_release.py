"""The canary engine on the sandbox, through `deployer deploy`: first release, a promoted canary with the exact
weight sequence, and a canary that never becomes ready rolled back with the stable version untouched."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitserver import server_config, start_server
from kube_sandbox.testing import Running
from kubernetes import client, watch
from routes import ROUTES
from support import ROOT, run_deployer, run_deployer_process

pytestmark = pytest.mark.cluster

DEPLOY = """\
app: shop
image: {{repository: 127.0.0.1:5000/shop}}
render: {{templates: {{dir: templates}}}}
environments:
  test:
    branches: [main]
    namespace: {namespace}
    canary: {{steps: {steps}, interval: {interval}, threshold: {threshold}, grace: {grace}}}
"""


def deploy_yaml(
    namespace: str,
    *,
    steps: str = "[20, 50]",
    interval: str = "300ms",
    threshold: int = 2,
    grace: str = "0s",
    provider: str = "istio",
) -> str:
    text = DEPLOY.format(namespace=namespace, steps=steps, interval=interval, threshold=threshold, grace=grace)
    return text.replace("canary: {steps", f"canary: {{provider: {provider}, steps") if provider != "istio" else text


TEMPLATES = {
    "deployment.yaml.j2": """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 2
  progressDeadlineSeconds: 3
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers: [{name: shop, image: "{{ deployer.image.ref }}", ports: [{containerPort: 8080}]}]
""",
    "service.yaml.j2": """\
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 80, targetPort: 8080}]
""",
}


@pytest.fixture
def provider() -> str:
    """The traffic router; the tests that route traffic run with each (parametrized by name)."""
    return "istio"


@pytest.fixture
def app(tmp_path: Path, namespace: str, provider: str) -> Path:
    repo = tmp_path / "shop"
    (repo / "templates").mkdir(parents=True)
    (repo / "deploy.yaml").write_text(deploy_yaml(namespace, provider=provider))
    (repo / "Dockerfile").write_text("FROM scratch\n")
    for name, text in TEMPLATES.items():
        (repo / "templates" / name).write_text(text)
    return repo


def deploy(app: Path, cluster: Running, version: str, *extra: str) -> tuple[int, str, str]:
    result = run_deployer(
        "deploy",
        "--env",
        "test",
        "--repo",
        app,
        "--kubeconfig",
        cluster.kubeconfig,
        "--image",
        f"127.0.0.1:5000/shop:{version}",
        "--rollout-timeout",
        "30",
        *extra,
    )
    return result.code, result.out, result.err


def start_deploy(app: Path, cluster: Running, version: str) -> subprocess.Popen[str]:
    """`deployer deploy -o json` as its own process, its events readable line by line as they happen."""
    exe = shutil.which("deployer", path=str(Path(sys.executable).parent)) or "deployer"
    return subprocess.Popen(
        [
            exe,
            "deploy",
            "--env",
            "test",
            "--repo",
            str(app),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--image",
            f"127.0.0.1:5000/shop:{version}",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def vs_weights(api: client.ApiClient, namespace: str, provider: str = "istio") -> tuple[int, int]:
    group, version, plural, split = ROUTES[provider]
    route = client.CustomObjectsApi(api).get_namespaced_custom_object(group, version, namespace, plural, "shop")
    stable, canary = split(route)
    return stable, canary


def record_weights(
    api: client.ApiClient, namespace: str, provider: str = "istio"
) -> tuple[list[tuple[int, int]], Callable[[], None]]:
    group, version, plural, split = ROUTES[provider]
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def follow() -> None:
        stream = watch.Watch().stream(
            client.CustomObjectsApi(api).list_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            timeout_seconds=30,
        )
        for event in stream:
            stable, canary = split(event["object"])
            pair = (stable, canary)
            if not seen or seen[-1] != pair:
                seen.append(pair)
            if stop.is_set():
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return seen, stop.set


def image_of(api: client.ApiClient, namespace: str, name: str) -> str:
    deployment = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    return str(deployment.spec.template.spec.containers[0].image)


@pytest.mark.parametrize("provider", ["istio", "gateway-api"])
def test_first_release_applies_without_canary_and_routes_all_to_stable(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path, provider: str
) -> None:
    code, out, err = deploy(app, cluster, "v1")
    assert code == 0, err
    assert "first release: applying 2 objects without a canary" in out
    assert vs_weights(api, namespace, provider) == (100, 0)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    assert [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items] == ["shop-primary"]
    stable = apps.read_namespaced_deployment("shop-primary", namespace)
    assert stable.spec.selector.match_labels == {"app": "shop", "deployer.dev/track": "primary"}
    assert stable.metadata.labels["deployer.dev/environment"] == "test"
    service = core.read_namespaced_service("shop", namespace)
    assert service.spec.selector == {"app": "shop", "deployer.dev/track": "primary"}, "only stable serves the Service"
    records = client.CoreV1Api(api).list_namespaced_secret(namespace, label_selector="owner=deployer").items
    assert [
        (r.metadata.labels["deployer.dev/revision"], r.metadata.labels["deployer.dev/status"]) for r in records
    ] == [("1", "deployed")]


@pytest.mark.parametrize("provider", ["istio", "gateway-api"])
def test_a_good_canary_walks_the_weights_and_is_promoted(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path, provider: str
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    seen, stop = record_weights(api, namespace, provider)
    code, out, err = deploy(app, cluster, "v2")
    stop()
    assert code == 0, err
    assert seen[-4:] == [(100, 0), (80, 20), (50, 50), (100, 0)]
    assert image_of(api, namespace, "shop-primary") == "127.0.0.1:5000/shop:v2"
    names = [d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items]
    assert names == ["shop-primary"], "the canary is gone after promotion"
    assert "promoting: the new version becomes stable" in out


@pytest.mark.parametrize("provider", ["istio", "gateway-api"])
@pytest.mark.sandbox_only
def test_a_canary_that_never_becomes_ready_is_rolled_back_and_stable_untouched(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path, provider: str
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    apps = client.AppsV1Api(api)
    before = apps.read_namespaced_deployment("shop-primary", namespace)
    cluster.control("/sandbox/pods", {"image": "127.0.0.1:5000/shop:broken", "behaviour": "never-ready"})
    code, _, err = deploy(app, cluster, "broken")
    assert code == 1
    assert err.splitlines()[0] == (
        f"error: test ({namespace}): canary rolled back: the canary never became ready: "
        'deployment "shop-canary" exceeded its progress deadline'
    )
    after = apps.read_namespaced_deployment("shop-primary", namespace)
    assert after.metadata.generation == before.metadata.generation
    assert image_of(api, namespace, "shop-primary") == "127.0.0.1:5000/shop:v1"
    assert [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items] == ["shop-primary"]
    assert vs_weights(api, namespace, provider) == (100, 0)
    statuses = {
        r.metadata.labels["deployer.dev/revision"]: r.metadata.labels["deployer.dev/status"]
        for r in client.CoreV1Api(api).list_namespaced_secret(namespace, label_selector="owner=deployer").items
    }
    assert statuses == {"1": "deployed", "2": "rolled-back"}


def secrets_status(api: client.ApiClient, namespace: str) -> dict[str, str]:
    items = client.CoreV1Api(api).list_namespaced_secret(namespace, label_selector="owner=deployer").items
    return {r.metadata.labels["deployer.dev/revision"]: r.metadata.labels["deployer.dev/status"] for r in items}


def operation(app: Path, cluster: Running, *args: str) -> tuple[int, str, str]:
    result = run_deployer(*args, "--env", "test", "--repo", app, "--kubeconfig", cluster.kubeconfig)
    return result.code, result.out, result.err


def test_history_status_and_rollback_to_an_earlier_revision(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    assert deploy(app, cluster, "v2")[0] == 0
    code, out, _ = operation(app, cluster, "history")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["1", "2"]
    assert "127.0.0.1:5000/shop:v2" in out.splitlines()[1]
    started = time.monotonic()
    code, out, err = operation(app, cluster, "rollback", "--to", "1")
    assert code == 0, err
    assert time.monotonic() - started < 10, "a rollback takes seconds"
    assert image_of(api, namespace, "shop-primary") == "127.0.0.1:5000/shop:v1"
    assert secrets_status(api, namespace) == {"1": "deployed", "2": "deployed", "3": "deployed"}
    code, out, _ = operation(app, cluster, "status")
    assert out.splitlines()[0].split()[0] == "3"
    assert "phase: done" in out
    code, _, err = operation(app, cluster, "rollback", "--to", "9")
    assert code == 1
    assert (
        err.strip() == f"error: test ({namespace}): no release revision 9 to roll back to (stored revisions: 1, 2, 3)"
    )


@pytest.mark.sandbox_only
@pytest.mark.parametrize(
    ("boundary", "provider"),
    [
        ("revision 2 of shop", "istio"),
        ("weights stable 80% / canary 20%", "istio"),
        ("promoting: the new version becomes stable", "istio"),
        ("weights stable 80% / canary 20%", "gateway-api"),
    ],
)
def test_kill_9_at_a_phase_boundary_then_recover_ends_consistent(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path, boundary: str, provider: str
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    proc = start_deploy(app, cluster, "v2")
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["message"].startswith(boundary):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert secrets_status(api, namespace)["2"] == "pending"
    code, out, err = operation(app, cluster, "recover")
    assert code == 0, err
    assert "recovered 1 release(s): [2]" in out
    assert vs_weights(api, namespace, provider) == (100, 0)
    assert [d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items] == [
        "shop-primary"
    ]
    assert image_of(api, namespace, "shop-primary") == "127.0.0.1:5000/shop:v1"
    assert secrets_status(api, namespace) == {"1": "deployed", "2": "rolled-back"}


def test_concurrent_deploys_to_one_environment_are_serialized(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    results: dict[str, tuple[int, str, str]] = {}

    def deploy_process(version: str) -> None:  # two deployer processes, as two pushes would run
        result = run_deployer_process(
            "deploy",
            "--env",
            "test",
            "--repo",
            app,
            "--kubeconfig",
            cluster.kubeconfig,
            "--image",
            f"127.0.0.1:5000/shop:{version}",
        )
        results[version] = (result.code, result.out, result.err)

    threads = [threading.Thread(target=deploy_process, args=(v,)) for v in ("v2", "v3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [results[v][0] for v in ("v2", "v3")] == [0, 0], results
    assert sum("waiting for the release held by" in results[v][1] for v in ("v2", "v3")) == 1, results
    statuses = secrets_status(api, namespace)
    assert statuses == {"1": "deployed", "2": "deployed", "3": "deployed"}


@pytest.mark.sandbox_only
def test_transient_api_faults_at_5_percent_give_no_wrong_verdict(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    cluster.control("/sandbox/pods", {"image": "127.0.0.1:5000/shop:bad", "behaviour": "never-ready"})
    cluster.control("/sandbox/faults", {"percent": 5, "status": 503})
    try:
        good = deploy(app, cluster, "good")
        bad = deploy(app, cluster, "bad")
    finally:
        cluster.control("/sandbox/faults", method="DELETE")
    assert good[0] == 0, good[2]
    assert bad[0] == 1
    assert "canary rolled back" in bad[2]
    assert image_of(api, namespace, "shop-primary") == "127.0.0.1:5000/shop:good"


@pytest.mark.sandbox_only
def test_pre_deploy_jobs_run_first_and_a_failed_one_applies_nothing(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    text = (app / "deploy.yaml").read_text()
    (app / "deploy.yaml").write_text(text + "    jobs: [{name: migrate, command: [./migrate, up], timeout: 1m}]\n")
    code, out, err = deploy(app, cluster, "v1")
    assert code == 0, err
    assert out.index("Job " + namespace + "/migrate-r1 succeeded") < out.index("first release: applying")
    job = client.BatchV1Api(api).read_namespaced_job("migrate-r1", namespace)
    assert job.spec.template.spec.containers[0].image == "127.0.0.1:5000/shop:v1"
    assert job.spec.template.spec.containers[0].command == ["./migrate", "up"]
    cluster.control("/sandbox/pods", {"image": "127.0.0.1:5000/shop:bad-migration", "behaviour": "fail"})
    code, _, err = deploy(app, cluster, "bad-migration")
    assert code == 1
    assert err.splitlines()[0] == (
        f"error: test ({namespace}): pre-deploy Job migrate-r2 failed (BackoffLimitExceeded); nothing was applied"
    )
    assert image_of(api, namespace, "shop-primary") == "127.0.0.1:5000/shop:v1"
    assert secrets_status(api, namespace) == {"1": "deployed", "2": "failed"}


def test_a_deployment_made_by_kubectl_is_adopted_without_deletion_and_canary_toggles(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "shop"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "shop"}},
                "template": {
                    "metadata": {"labels": {"app": "shop"}},
                    "spec": {"containers": [{"name": "shop", "image": "x:1"}]},
                },
            },
        },
    )
    code, out, err = deploy(app, cluster, "v1")
    assert code == 0, err
    kubectls = apps.read_namespaced_deployment("shop", namespace)
    assert kubectls.spec.selector.match_labels == {"app": "shop"}, "the selector is never touched"
    assert kubectls.spec.replicas == 0, "scaled to zero once shop-primary serves"
    assert image_of(api, namespace, "shop-primary") == "127.0.0.1:5000/shop:v1"
    (app / "deploy.yaml").write_text(
        (app / "deploy.yaml")
        .read_text()
        .replace("canary: {steps: [20, 50], interval: 300ms, threshold: 2, grace: 0s}", "canary: false")
    )
    code, out, err = deploy(app, cluster, "v2")
    assert code == 0, err
    assert "no canary: applying 2 objects without a canary" in out
    assert "pruned Deployment/shop-primary" in out
    assert [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items] == ["shop"]
    assert image_of(api, namespace, "shop") == "127.0.0.1:5000/shop:v2"
    assert client.CoreV1Api(api).read_namespaced_service("shop", namespace).spec.selector == {"app": "shop"}
    (app / "deploy.yaml").write_text(deploy_yaml(namespace))
    code, out, err = deploy(app, cluster, "v3")
    assert code == 0, err
    assert "revision 2 moves behind shop-primary" in out
    assert "weights stable 80% / canary 20%" in out, "back to a canary: the new version goes through one"
    assert image_of(api, namespace, "shop-primary") == "127.0.0.1:5000/shop:v3"
    # kubectl made `shop`: the deployer adopted it, never deletes it, and scales it to zero behind the primary
    assert "kept Deployment/shop: made by OpenAPI-Generator" in out
    assert [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items] == ["shop", "shop-primary"]
    assert apps.read_namespaced_deployment("shop", namespace).spec.replicas == 0
    assert secrets_status(api, namespace) == {"1": "deployed", "2": "deployed", "3": "deployed"}


@pytest.mark.parametrize(("command", "code", "image"), [("promote", 0, "v2"), ("abort", 1, "v1")])
def test_promote_or_abort_a_canary_in_flight(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path, command: str, code: int, image: str
) -> None:
    # a long first round: the request must land while the canary sits at 20%, even on a loaded machine
    (app / "deploy.yaml").write_text((app / "deploy.yaml").read_text().replace("interval: 300ms", "interval: 6s"))
    assert deploy(app, cluster, "v1")[0] == 0
    proc = start_deploy(app, cluster, "v2")
    assert proc.stdout is not None
    messages = []
    for line in proc.stdout:
        messages.append(json.loads(line)["message"])
        if messages[-1] == "weights stable 80% / canary 20%":
            asked = operation(app, cluster, command)
            assert asked[0] == 0, asked[2]
            assert asked[1].strip() == f"asked revision 2 to {command}; it acts at its next round"
            break
    rest, err = proc.communicate(timeout=60)
    messages += [json.loads(line)["message"] for line in rest.splitlines()]
    assert proc.returncode == code, err
    assert "weights stable 50% / canary 50%" not in messages, "the remaining steps were skipped"
    if command == "promote":
        assert "promotion requested (deployer promote): skipping the remaining steps" in messages
    if command == "abort":
        assert "canary rolled back: aborted by request (deployer abort)" in err
    assert image_of(api, namespace, "shop-primary") == f"127.0.0.1:5000/shop:{image}"
    assert vs_weights(api, namespace) == (100, 0)


@pytest.mark.sandbox_only
def test_a_canary_pod_going_unready_is_noticed_within_seconds(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    text = (app / "deploy.yaml").read_text()
    (app / "deploy.yaml").write_text(text.replace("interval: 300ms, threshold: 2", "interval: 20s, threshold: 1"))
    assert deploy(app, cluster, "v1")[0] == 0
    cluster.control("/sandbox/pods", {"image": "127.0.0.1:5000/shop:flaky", "behaviour": "unready-after", "after": 1})
    started = time.monotonic()
    code, out, err = deploy(app, cluster, "flaky")
    assert code == 1
    assert time.monotonic() - started < 10, "noticed by watch, not at the end of the 20 s interval"
    assert "noticed before the interval ended: shop-canary" in out
    assert "canary rolled back" in err
    assert vs_weights(api, namespace) == (100, 0)


def test_a_canary_without_a_service_selecting_the_deployment_is_refused_before_anything(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    (app / "templates" / "service.yaml.j2").unlink()
    code, _, err = deploy(app, cluster, "v1")
    assert code == 1
    assert err.strip() == (
        "error: canary: no Service selects the pods of any Deployment (Deployments: shop); a canary "
        "needs a Service whose selector matches the pod labels, or set `canary: false`"
    )
    assert client.AppsV1Api(api).list_namespaced_deployment(namespace).items == []


def test_a_lease_held_by_a_live_holder_fails_fast_with_no_wait(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    client.CoordinationV1Api(api).create_namespaced_lease(
        namespace,
        {
            "metadata": {"name": "deployer-shop-test"},
            "spec": {
                "holderIdentity": "other-host-1",
                "leaseDurationSeconds": 60,
                "acquireTime": now,
                "renewTime": now,
            },
        },
    )
    code, _, err = deploy(app, cluster, "v1", "--no-wait")
    assert code == 1
    assert err.strip() == (f"error: Lease {namespace}/deployer-shop-test: another release holds the lock: other-host-1")


def test_objects_a_release_no_longer_renders_are_pruned(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    extra = app / "templates" / "extra.yaml.j2"
    extra.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n")
    core = client.CoreV1Api(api)
    # made by kubectl before the deployer, then rendered by a release: adopted, never the deployer's to delete
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "adopted"}, "data": {"x": "y"}}, field_manager="kubectl-create"
    )
    adopted = app / "templates" / "adopted.yaml.j2"
    adopted.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: adopted}\ndata: {a: b}\n")
    assert deploy(app, cluster, "v1")[0] == 0
    assert core.read_namespaced_config_map("extra", namespace).data == {"a": "b"}
    assert core.read_namespaced_config_map("adopted", namespace).metadata.labels["deployer.dev/app"] == "shop"
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "not-ours"}})
    extra.unlink()
    adopted.unlink()
    code, out, err = deploy(app, cluster, "v2")
    assert code == 0, err
    assert "pruned ConfigMap/extra" in out
    assert "kept ConfigMap/adopted: made by kubectl-create" in out
    names = {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
    assert "extra" not in names
    assert "not-ours" in names, "only objects carrying the deployer's labels are pruned"
    assert "adopted" in names, "an object another tool made is never deleted by prune"


def test_a_canary_without_sidecars_is_refused_before_any_traffic_moves(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    core = client.CoreV1Api(api)
    core.patch_namespace(namespace, {"metadata": {"labels": {"istio-injection": None}}})
    seen, stop = record_weights(api, namespace)
    code, out, err = deploy(app, cluster, "v2")
    stop()
    assert code == 1
    assert err.startswith(f"error: test ({namespace}): canary rolled back: the canary's pods have no Istio sidecar")
    assert f"label namespace {namespace} with istio-injection=enabled (or istio.io/rev=<revision>)" in err
    assert "weights stable 80% / canary 20%" not in out
    assert all(canary == 0 for _, canary in seen), seen
    assert image_of(api, namespace, "shop-primary") == "127.0.0.1:5000/shop:v1"


@pytest.mark.sandbox_only
def test_missing_istio_crds_are_a_clear_message_before_anything_is_applied(
    sandbox_factory: Callable[..., Running], tmp_path: Path
) -> None:
    bare = sandbox_factory()
    api = bare.api()
    client.CoreV1Api(api).create_namespace({"metadata": {"name": "shop"}})
    for name in ("virtualservices", "destinationrules", "gateways"):
        client.ApiextensionsV1Api(api).delete_custom_resource_definition(f"{name}.networking.istio.io")
    repo = tmp_path / "shop"
    (repo / "templates").mkdir(parents=True)
    (repo / "deploy.yaml").write_text(deploy_yaml("shop"))
    (repo / "Dockerfile").write_text("FROM scratch\n")
    for name, text in TEMPLATES.items():
        (repo / "templates" / name).write_text(text)
    time.sleep(0.5)
    code, _, err = deploy(repo, bare, "v1")
    assert code == 1
    assert err.strip() == (
        "error: cluster: the cluster serves no VirtualService in networking.istio.io (v1 or v1beta1): a canary "
        "needs Istio; install Istio, or set `canary: false` for this environment"
    )
    assert client.AppsV1Api(api).list_namespaced_deployment("shop").items == []


def test_rollback_of_an_environment_without_canary_keeps_its_selectors(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    (app / "deploy.yaml").write_text(
        (app / "deploy.yaml")
        .read_text()
        .replace("canary: {steps: [20, 50], interval: 300ms, threshold: 2, grace: 0s}", "canary: false")
    )
    assert deploy(app, cluster, "v1")[0] == 0
    assert deploy(app, cluster, "v2")[0] == 0
    code, _, err = operation(app, cluster, "rollback", "--to", "1")
    assert code == 0, err
    deployment = client.AppsV1Api(api).read_namespaced_deployment("shop", namespace)
    assert deployment.spec.selector.match_labels == {"app": "shop"}
    assert image_of(api, namespace, "shop") == "127.0.0.1:5000/shop:v1"
    names = {
        o["metadata"]["name"]
        for o in client.CustomObjectsApi(api).list_namespaced_custom_object(
            "networking.istio.io", "v1", namespace, "virtualservices"
        )["items"]
    }
    assert names == set(), "no VirtualService for an environment without a canary"


@pytest.mark.sandbox_only  # it creates a namespace of its own
def test_prune_never_deletes_a_cluster_scoped_object_even_one_an_earlier_release_created(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    victim = f"{namespace}-victim"
    (app / "templates" / "namespace.yaml.j2").write_text(
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {victim}}}\n"
    )
    code, _, err = deploy(app, cluster, "v1", "--allow-cluster-scoped", "Namespace")
    assert code == 0, err
    labels = client.CoreV1Api(api).read_namespace(victim).metadata.labels
    assert labels["deployer.dev/app"] == "shop"  # the release's own labels, on a cluster-scoped object
    (app / "templates" / "namespace.yaml.j2").unlink()
    code, out, err = deploy(app, cluster, "v2")
    assert code == 0, err
    assert client.CoreV1Api(api).read_namespace(victim).status.phase == "Active"
    assert "pruned Namespace" not in out
    client.CoreV1Api(api).delete_namespace(victim)


CRD = ROOT / "charts" / "deployer" / "crds" / "releases.deployer.dev.yaml"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"


@pytest.fixture
def release_crd(api: client.ApiClient) -> None:
    """The chart's Release CRD, installed (as `helm install` does from crds/) and served."""
    body = yaml.safe_load(CRD.read_text())
    try:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = client.ApiextensionsV1Api(api).read_custom_resource_definition("releases.deployer.dev")
        if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
            return
        time.sleep(0.2)
    raise AssertionError("the Release CRD was not established")


def releases(api: client.ApiClient, namespace: str) -> dict[str, dict[str, Any]]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "deployer.dev", "v1alpha1", namespace, "releases"
    )
    return {item["metadata"]["name"]: item for item in listed["items"]}


def kubectl(cluster: Running, *args: str) -> str:
    done = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_release_objects_follow_a_canary_and_kubectl_lists_them(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path, release_crd: None
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    seen: list[tuple[str, str, str]] = []
    done = threading.Event()

    def follow() -> None:  # polled, as a person re-running kubectl get would see it; once more at the end
        while True:
            last = done.is_set()
            item = releases(api, namespace).get("shop.test.v2")
            if item is not None:
                state = (item["status"]["result"], item["status"]["phase"], item["status"].get("weights", ""))
                if not seen or seen[-1] != state:
                    seen.append(state)
            if last:
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    (app / "deploy.yaml").write_text(deploy_yaml(namespace, interval="1s"))
    code, _, err = deploy(app, cluster, "v2")
    done.set()
    watcher.join(timeout=10)
    assert code == 0, err
    assert ("Pending", "canary", "80/20") in seen and ("Pending", "canary", "50/50") in seen, seen
    assert seen.index(("Pending", "canary", "80/20")) < seen.index(("Pending", "canary", "50/50")), seen
    assert seen[-1] == ("Deployed", "done", "100/0"), seen
    objects = releases(api, namespace)
    assert sorted(objects) == ["shop.test.v1", "shop.test.v2"]
    v2 = objects["shop.test.v2"]
    assert v2["spec"]["image"] == "127.0.0.1:5000/shop:v2"
    assert v2["spec"]["revision"] == 2
    assert [r["weight"] for r in v2["status"]["rounds"]] == [20, 50]
    assert all(c["ok"] for r in v2["status"]["rounds"] for c in r["checks"])
    table = kubectl(cluster, "get", "releases", "-n", namespace).splitlines()
    assert table[0].split() == ["NAME", "REVISION", "COMMIT", "PHASE", "WEIGHTS", "RESULT", "AGE"]
    rows = [line.split() for line in table[1:]]
    assert [(r[0], r[1], r[-2]) for r in rows] == [("shop.test.v1", "1", "Deployed"), ("shop.test.v2", "2", "Deployed")]
    assert "100/0" in table[2]
    described = kubectl(cluster, "describe", "release", "shop.test.v2", "-n", namespace)
    assert "Rounds:" in described and "Weight:" in described


@pytest.mark.sandbox_only
def test_a_rolled_back_release_object_says_why(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path, release_crd: None
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    cluster.control("/sandbox/pods", {"image": "127.0.0.1:5000/shop:broken", "behaviour": "never-ready"})
    assert deploy(app, cluster, "broken")[0] == 1
    status = releases(api, namespace)["shop.test.v2"]["status"]
    assert status["result"] == "RolledBack"
    assert "never became ready" in status["reason"]
    assert status["weights"] == "100/0"
    wide = kubectl(cluster, "get", "release", "shop.test.v2", "-n", namespace, "-o", "wide").splitlines()
    assert wide[0].split()[:8] == ["NAME", "REVISION", "COMMIT", "PHASE", "WEIGHTS", "RESULT", "PUSHER", "REASON"]


def test_deployer_serve_makes_a_deleted_release_object_again(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path, release_crd: None, tmp_path: Path
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    assert deploy(app, cluster, "v2")[0] == 0
    custom = client.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object("deployer.dev", "v1alpha1", namespace, "releases", "shop.test.v1")
    stray = releases(api, namespace)["shop.test.v2"]
    stray["metadata"] = {
        "name": "shop.test.v7",
        "labels": {**stray["metadata"]["labels"], "deployer.dev/revision": "7"},
    }
    custom.create_namespaced_custom_object("deployer.dev", "v1alpha1", namespace, "releases", stray)
    config = server_config(
        data=tmp_path / "data", kubeconfig=cluster.kubeconfig, registry="127.0.0.1:5000", bound={}, users={}
    )
    config["apps"] = {"shop": {"environments": {"test": namespace}}}
    server = start_server(tmp_path / "server", config)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sorted(releases(api, namespace)) != ["shop.test.v1", "shop.test.v2"]:
            time.sleep(0.2)
    finally:
        server.stop()
    objects = releases(api, namespace)
    assert sorted(objects) == ["shop.test.v1", "shop.test.v2"], "made again from its record; one with none deleted"
    assert objects["shop.test.v1"]["status"]["result"] == "Deployed"
    assert objects["shop.test.v1"]["spec"]["image"] == "127.0.0.1:5000/shop:v1"
