"""charts/deployer installed with `helm upgrade --install` and environments/staging.yaml: the objects it makes,
and the SSH host key kept across an upgrade (the chart looks the Secret up)."""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from kube_sandbox.testing import Running
from kubernetes import client
from support import ROOT

HELM = str(ROOT / ".tools" / "bin" / "helm")
pytestmark = pytest.mark.skipif(not Path(HELM).exists(), reason="helm is installed by `make setup`")


def helm(cluster: Running, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_helm_install_creates_the_deployer_with_namespaced_rights_and_keeps_its_host_key(
    cluster: Running, api: client.ApiClient
) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    suffix = uuid.uuid4().hex[:6]
    namespace, targets = f"deployer-{suffix}", [f"hello-{suffix}", f"shop-{suffix}"]
    for name in targets:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    values = ROOT / "environments" / "staging.yaml"
    install = [
        "upgrade",
        "--install",
        "deployer",
        str(ROOT / "charts" / "deployer"),
        "-n",
        namespace,
        "--create-namespace",
        "-f",
        str(values),
        "--set",
        f"apps.hello.environments.staging={targets[0]}",
        "--set",
        f"apps.shop.environments.staging={targets[1]}",
    ]
    try:
        first = helm(cluster, *install)
        assert first.returncode == 0, first.stderr
        assert "STATUS: deployed" in first.stdout
        deployment = client.AppsV1Api(api).read_namespaced_deployment("deployer", namespace)
        assert deployment.spec.replicas == 1
        assert deployment.spec.template.spec.service_account_name == "deployer"
        services = {s.metadata.name: s for s in core.list_namespaced_service(namespace).items}
        assert {n: [(p.name, p.port) for p in s.spec.ports] for n, s in services.items()} == {
            "deployer-ssh": [("ssh", 22)],
            "deployer-http": [("http", 80)],
        }
        pvc = core.read_namespaced_persistent_volume_claim("deployer", namespace)
        assert pvc.spec.resources.requests["storage"] == "20Gi"
        config = yaml.safe_load(core.read_namespaced_config_map("deployer", namespace).data["server.yaml"])
        assert config["apps"] == {
            "hello": {"environments": {"staging": targets[0]}},
            "shop": {"environments": {"staging": targets[1]}},
        }
        key = core.read_namespaced_secret("deployer", namespace).data["ssh_host_key"]
        assert base64.b64decode(key).startswith(b"-----BEGIN PRIVATE KEY-----")
        for target in targets:
            [role] = rbac.list_namespaced_role(target).items
            [binding] = rbac.list_namespaced_role_binding(target).items
            assert binding.role_ref.name == role.metadata.name == "deployer"
            assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
                ("ServiceAccount", "deployer", namespace)
            ]
            assert not any("*" in (r.verbs + r.resources) for r in role.rules)
        assert not [r for r in rbac.list_cluster_role_binding().items if r.metadata.name.startswith("deployer")]
        upgrade = helm(cluster, *install)
        assert upgrade.returncode == 0, upgrade.stderr
        assert core.read_namespaced_secret("deployer", namespace).data["ssh_host_key"] == key
        assert "REVISION: 2" in upgrade.stdout
    finally:
        helm(cluster, "uninstall", "deployer", "-n", namespace)
        for name in [*targets, namespace]:
            core.delete_namespace(name)
