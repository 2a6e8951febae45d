"""kubectl (every version on PATH) and helm work against the sandbox unmodified."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kube_sandbox.testing import Running

pytestmark = pytest.mark.cluster

CHART = Path(__file__).parent / "charts" / "web"


def _kubectls() -> dict[str, str]:
    """Each distinct kubectl on PATH (the project's pinned one first, then the machine's), named by its version."""
    found: dict[str, str] = {}
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which("kubectl", path=directory)
        if not path or any(Path(known).resolve() == Path(path).resolve() for known in found.values()):
            continue
        version = subprocess.run(
            [path, "version", "--client", "-o", "json"], capture_output=True, text=True, check=False
        )
        name = yaml.safe_load(version.stdout or "{}").get("clientVersion", {}).get("gitVersion", "unknown")
        found.setdefault(f"kubectl {name}", path)
    return found


AVAILABLE = [pytest.param(path, id=name) for name, path in _kubectls().items()]
HELM = shutil.which("helm") or "helm"

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  progressDeadlineSeconds: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "IMAGE", ports: [{containerPort: 8080}]}]
"""


def run(cluster: Running, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CACHE_HOME": str(cluster.kubeconfig.parent / "hc"),
        "HELM_CONFIG_HOME": str(cluster.kubeconfig.parent / "hcfg"),
        "HELM_DATA_HOME": str(cluster.kubeconfig.parent / "hd"),
    }
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout, check=False)


@pytest.mark.parametrize("kubectl", AVAILABLE)
def test_kubectl_apply_get_scale_rollout_delete(cluster: Running, namespace: str, tmp_path: Path, kubectl: str) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(DEPLOYMENT.replace("IMAGE", "web:1"))
    applied = run(cluster, kubectl, "apply", "-n", namespace, "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "deployment.apps/web created"
    rollout = run(cluster, kubectl, "rollout", "status", "-n", namespace, "deploy/web", "--timeout=30s")
    assert rollout.returncode == 0, rollout.stderr
    assert 'deployment "web" successfully rolled out' in rollout.stdout
    manifest.write_text(DEPLOYMENT.replace("IMAGE", "web:2"))
    assert (
        run(cluster, kubectl, "apply", "-n", namespace, "-f", str(manifest)).stdout.strip()
        == "deployment.apps/web configured"
    )
    server_side = run(cluster, kubectl, "apply", "--server-side", "-n", namespace, "-f", str(manifest))
    assert server_side.returncode == 0, server_side.stderr
    assert server_side.stdout.strip() == "deployment.apps/web serverside-applied"
    scaled = run(cluster, kubectl, "scale", "-n", namespace, "deploy/web", "--replicas=3")
    assert scaled.returncode == 0, scaled.stderr
    got = yaml.safe_load(
        run(cluster, kubectl, "get", "-n", namespace, "deploy/web", "-o", "yaml", "--show-managed-fields").stdout
    )
    assert got["spec"]["replicas"] == 3
    assert got["spec"]["template"]["spec"]["containers"][0]["image"] == "web:2"
    managers = {m["manager"] for m in got["metadata"]["managedFields"]}
    assert "kubectl" in managers
    assert run(cluster, kubectl, "rollout", "status", "-n", namespace, "deploy/web", "--timeout=30s").returncode == 0
    deleted = run(cluster, kubectl, "delete", "-n", namespace, "deploy/web")
    assert deleted.returncode == 0, deleted.stderr
    assert run(cluster, kubectl, "get", "-n", namespace, "deploy/web").returncode == 1


@pytest.mark.sandbox_only
@pytest.mark.parametrize("kubectl", AVAILABLE)
def test_kubectl_rollout_status_fails_on_progress_deadline(
    cluster: Running, namespace: str, tmp_path: Path, kubectl: str
) -> None:
    cluster.control("/sandbox/pods", {"image": "never:1", "behaviour": "never-ready"})
    manifest = tmp_path / "web.yaml"
    manifest.write_text(DEPLOYMENT.replace("IMAGE", "never:1"))
    assert run(cluster, kubectl, "apply", "-n", namespace, "-f", str(manifest)).returncode == 0
    rollout = run(cluster, kubectl, "rollout", "status", "-n", namespace, "deploy/web", "--timeout=30s")
    assert rollout.returncode == 1
    assert 'deployment "web" exceeded its progress deadline' in rollout.stderr


def test_helm_install_wait_status_history_rollback_uninstall(cluster: Running, namespace: str) -> None:
    chart = str(CHART)
    install = run(cluster, HELM, "upgrade", "--install", "hello", chart, "-n", namespace, "--wait", "--timeout", "60s")
    assert install.returncode == 0, install.stderr
    upgrade = run(
        cluster,
        HELM,
        "upgrade",
        "--install",
        "hello",
        chart,
        "-n",
        namespace,
        "--wait",
        "--timeout",
        "60s",
        "--set",
        "replicas=3",
    )
    assert upgrade.returncode == 0, upgrade.stderr
    status = run(cluster, HELM, "status", "hello", "-n", namespace, "-o", "json")
    assert yaml.safe_load(status.stdout)["info"]["status"] == "deployed"
    history = yaml.safe_load(run(cluster, HELM, "history", "hello", "-n", namespace, "-o", "yaml").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]
    rollback = run(cluster, HELM, "rollback", "hello", "1", "-n", namespace, "--wait", "--timeout", "60s")
    assert rollback.returncode == 0, rollback.stderr
    replicas = run(
        cluster,
        shutil.which("kubectl") or "kubectl",
        "get",
        "deploy",
        "hello",
        "-n",
        namespace,
        "-o",
        "jsonpath={.spec.replicas}",
    )
    assert replicas.stdout == "1"
    uninstall = run(cluster, HELM, "uninstall", "hello", "-n", namespace, "--wait")
    assert uninstall.returncode == 0, uninstall.stderr
    assert run(cluster, HELM, "status", "hello", "-n", namespace).returncode == 1


@pytest.mark.parametrize("kubectl", AVAILABLE)
def test_kubectl_moves_from_client_side_to_server_side_apply(
    cluster: Running, namespace: str, tmp_path: Path, kubectl: str
) -> None:
    """`kubectl apply` then `kubectl apply --server-side` of a changed file: no conflict (kubectl takes over the
    fields its last-applied annotation lists); another field manager still conflicts."""
    manifest = tmp_path / "config.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: moving}\ndata: {a: '1'}\n")
    assert run(cluster, kubectl, "apply", "-n", namespace, "-f", str(manifest)).returncode == 0
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: moving}\ndata: {a: '2'}\n")
    other = run(
        cluster, kubectl, "apply", "--server-side", "--field-manager", "other", "-n", namespace, "-f", str(manifest)
    )
    assert other.returncode != 0 and "conflict" in other.stderr.lower(), other.stderr
    moved = run(cluster, kubectl, "apply", "--server-side", "-n", namespace, "-f", str(manifest))
    assert moved.returncode == 0, moved.stderr
    got = run(cluster, kubectl, "get", "configmap", "moving", "-n", namespace, "-o", "jsonpath={.data.a}")
    assert got.stdout == "2"


@pytest.mark.parametrize("kubectl", AVAILABLE)
def test_kubectl_apply_prune_and_api_services(cluster: Running, namespace: str, tmp_path: Path, kubectl: str) -> None:
    """`kubectl apply --prune` lists every kind of its default allow-list (ReplicationController among them);
    `kubectl get apiservices` lists the local APIServices, Available."""
    config = "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, labels: {{set: pruned}}}}\ndata: {{a: '1'}}\n"
    both, one = tmp_path / "both.yaml", tmp_path / "one.yaml"
    both.write_text(config.format(name="kept") + "---\n" + config.format(name="dropped"))
    one.write_text(config.format(name="kept"))
    assert run(cluster, kubectl, "apply", "-n", namespace, "-f", str(both)).returncode == 0
    pruned = run(cluster, kubectl, "apply", "-n", namespace, "--prune", "-l", "set=pruned", "-f", str(one))
    assert pruned.returncode == 0, pruned.stderr
    assert "configmap/dropped pruned" in pruned.stdout
    left = run(cluster, kubectl, "get", "configmaps", "-n", namespace, "-l", "set=pruned", "-o", "name")
    assert left.stdout.split() == ["configmap/kept"]
    apps = run(cluster, kubectl, "get", "apiservice", "v1.apps", "-o", "jsonpath={.status.conditions[0].status}")
    assert apps.stdout == "True", apps.stderr


WIDGETS = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
      additionalPrinterColumns:
        - {name: Size, type: integer, jsonPath: .spec.size}
        - {name: Phase, type: string, jsonPath: .status.phase}
        - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
"""


def test_kubectl_get_prints_a_custom_resources_printer_columns(
    cluster: Running, namespace: str, tmp_path: Path
) -> None:
    kubectl = shutil.which("kubectl") or "kubectl"
    (tmp_path / "crd.yaml").write_text(WIDGETS)
    assert run(cluster, kubectl, "apply", "-f", str(tmp_path / "crd.yaml")).returncode == 0
    assert run(cluster, kubectl, "wait", "--for=condition=Established", "crd/widgets.example.com").returncode == 0
    (tmp_path / "w.yaml").write_text(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: small}\nspec: {size: 3}\n"
    )
    assert run(cluster, kubectl, "apply", "-n", namespace, "-f", str(tmp_path / "w.yaml")).returncode == 0
    listed = run(cluster, kubectl, "get", "widgets", "-n", namespace)
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "SIZE", "PHASE", "AGE"]
    assert row.split()[:2] == ["small", "3"] and re.fullmatch(r"\d+s", row.split()[-1])  # AGE as kubectl shows it
    (tmp_path / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\n"
        "spec: {hosts: [web], http: [{route: [{destination: {host: web}}]}]}\n"
    )
    assert run(cluster, kubectl, "apply", "-n", namespace, "-f", str(tmp_path / "vs.yaml")).returncode == 0
    routes = run(cluster, kubectl, "get", "virtualservices", "-n", namespace).stdout.splitlines()
    assert routes[0].split() == ["NAME", "GATEWAYS", "HOSTS", "AGE"]  # Istio's CRD declares these columns
    assert routes[1].split()[:2] == ["web", '["web"]'] and re.fullmatch(r"\d+s", routes[1].split()[-1])
    run(cluster, kubectl, "delete", "-f", str(tmp_path / "crd.yaml"))
