"""The deployer with only the rights charts/deployer gives it: `deployer serve` runs on the token of the chart's
ServiceAccount, on a cluster that authenticates tokens and authorizes with RBAC (kube-sandbox `--auth rbac`, or
a real cluster). A whole push succeeds on the chart's own Role; a right taken away is one line in the push."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest
from gitserver import App, GitServer, make_app, new_token, push, server_config, start_server, token_entry
from kube_sandbox.testing import Registry, Running
from kubernetes import client
from support import ROOT, commit

HELM = str(ROOT / ".tools" / "bin" / "helm")
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not shutil.which("buildah") or not Path(HELM).exists(), reason="buildah and helm: make setup"),
]
MESH = {"istio-injection": "enabled"}


def helm(cluster: Running, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.fixture
def installed(rbac_cluster: Running, tmp_path: Path, registry: Registry) -> Iterator[tuple[App, str]]:
    """examples/hello as app NAME whose staging namespace the chart's Role covers; the chart installed in its own
    namespace by the cluster's admin. Yields the app and the chart's namespace."""
    admin = rbac_cluster.api()
    core = client.CoreV1Api(admin)
    suffix = uuid.uuid4().hex[:6]
    app = make_app(tmp_path, f"rbac{suffix}", os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host)
    home = f"deployer-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=app.staging, labels=MESH)))
    installed = helm(
        rbac_cluster,
        "upgrade",
        "--install",
        "deployer",
        str(ROOT / "charts" / "deployer"),
        "-n",
        home,
        "--create-namespace",
        "--set",
        f"apps.{app.name}.environments.staging={app.staging}",
    )
    assert installed.returncode == 0, installed.stderr
    yield app, home
    helm(rbac_cluster, "uninstall", "deployer", "-n", home)
    for name in (app.staging, home):
        core.delete_namespace(name)


def chart_server(rbac_cluster: Running, app: App, home: str, registry: Registry, tmp: Path) -> GitServer:
    """`deployer serve` whose only credential is a token of the chart's ServiceAccount."""
    request = {"spec": {"expirationSeconds": 3600}}
    token = client.CoreV1Api(rbac_cluster.api()).create_namespaced_service_account_token("deployer", home, request)
    kubeconfig = rbac_cluster.with_token(token.status.token, tmp / "deployer-kubeconfig")
    alice = new_token()
    config = server_config(
        data=tmp / "data",
        kubeconfig=kubeconfig,
        registry=os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host,
        bound={"staging": app.staging},
        users={"alice": {"tokens": [token_entry(alice)]}},
        limits={"rolloutTimeout": "30s"},
    )
    config["apps"] = {app.name: {"environments": {"staging": app.staging}}}
    server = start_server(tmp / "server", config)
    server.tokens = {"alice": alice}
    return server


def test_a_push_needs_nothing_beyond_the_charts_role_and_a_right_taken_away_is_one_line(
    rbac_cluster: Running, installed: tuple[App, str], registry: Registry, tmp_path: Path
) -> None:
    app, home = installed
    server = chart_server(rbac_cluster, app, home, registry, tmp_path)
    try:
        pushed = push(app.repo, server.http_url(app.name), "main")
        assert pushed.code == 0, pushed
        assert f"staging is live at {app.head()[:12]} (revision 1); main moves" in pushed.remote
        (app.repo / "app" / "greeting.txt").write_text("canary\n")
        commit(app.repo, "through the canary")
        pushed = push(app.repo, server.http_url(app.name), "main")
        assert pushed.code == 0, pushed
        assert any("canary" in line and "50%" in line for line in pushed.remote), pushed.remote
        assert server.ref("refs/heads/main", app.name) == app.head()
        # the Release objects, written on the chart's Role alone (its CRD installed by helm from crds/)
        listed = client.CustomObjectsApi(rbac_cluster.api()).list_namespaced_custom_object(
            "deployer.dev", "v1alpha1", app.staging, "releases"
        )
        shown = {r["metadata"]["name"]: (r["spec"]["commit"], r["status"]["result"]) for r in listed["items"]}
        assert shown == {
            f"{app.name}.staging.v1": (ANY, "Deployed"),
            f"{app.name}.staging.v2": (app.head(), "Deployed"),
        }

        # the cluster's admin takes away the right to read pods: the next release cannot watch its rollout
        rbac = client.RbacAuthorizationV1Api(rbac_cluster.api())
        role = rbac.read_namespaced_role("deployer", app.staging)
        role.rules = [r for r in role.rules if r.resources != ["pods"]]
        rbac.replace_namespaced_role("deployer", app.staging, role)
        before = app.head()
        (app.repo / "app" / "greeting.txt").write_text("refused\n")
        commit(app.repo, "without the right to list pods")
        refused = push(app.repo, server.http_url(app.name), "main")
        assert refused.code != 0
        user = f"system:serviceaccount:{home}:deployer"
        forbidden = [line for line in refused.remote if "is forbidden" in line]
        assert forbidden, "\n".join(refused.remote)
        assert (
            f'pods is forbidden: User "{user}" cannot list resource "pods" in API group "" in the namespace '
            f'"{app.staging}"'
        ) in forbidden[0]
        assert server.ref("refs/heads/main", app.name) == before
        # the canary it had started is taken away again, and the record says why
        assert any(x.startswith("refs/heads/main  staging") and "rolled-back" in x for x in refused.remote), refused
        names = [
            d.metadata.name for d in client.AppsV1Api(rbac_cluster.api()).list_namespaced_deployment(app.staging).items
        ]
        assert names == [f"{app.name}-primary"]
    finally:
        assert server.stop() == 0, server.log.read_text()[-3000:]
