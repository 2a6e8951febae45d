"""One `deployer serve` and two clusters (two sandboxes): staging on one, prod on the other. A push to each lands
on its own cluster (releases, lease and records there); with prod's cluster stopped, a prod push fails with one
line and staging goes on working, and prod's release left mid-flight is recovered once its cluster is back."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from gitserver import (
    App,
    GitServer,
    git_env,
    make_app,
    new_token,
    push,
    read_until,
    server_config,
    start_server,
    token_entry,
)
from kube_sandbox.testing import Registry, Running
from kubernetes import client
from support import commit, free_port

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.sandbox_only,  # two clusters: the second is a sandbox this test starts and stops
    pytest.mark.skipif(not shutil.which("buildah"), reason="buildah: make setup"),
]
MESH = {"istio-injection": "enabled"}


@dataclass
class Two:
    server: GitServer
    app: App
    staging: Running
    prod: Running
    factory: Callable[..., Running]
    prod_state: Path

    def restart_prod(self) -> None:
        """prod's cluster back: the same address, its state as it stopped."""
        port = int(self.prod.url.rsplit(":", 1)[1].split("/")[0])
        self.prod = self.factory(state_dir=self.prod_state, port=port)


def deployments(cluster: Running, namespace: str) -> list[str]:
    try:
        items = client.AppsV1Api(cluster.api()).list_namespaced_deployment(namespace).items
    except client.ApiException as exc:
        if exc.status == 404:
            return []
        raise
    return [d.metadata.name for d in items]


@pytest.fixture
def two(cluster: Running, sandbox_factory: Callable[..., Running], registry: Registry, tmp_path: Path) -> Iterator[Two]:
    prod = sandbox_factory(state_dir=tmp_path / "prod-state", port=free_port())
    app = make_app(tmp_path, "twoclusters", os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host)
    for where, namespace in ((cluster, app.staging), (prod, app.prod)):
        core = client.CoreV1Api(where.api())
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels=MESH)))
    alice = new_token()
    config = server_config(
        data=tmp_path / "data",
        kubeconfig=cluster.kubeconfig,  # the default cluster: staging's
        registry=os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host,
        bound={},
        users={"alice": {"tokens": [token_entry(alice)]}},
        clusters={"prod-eu": {"kubeconfig": str(prod.kubeconfig)}},
        limits={"rolloutTimeout": "20s", "resync": "2s"},
    )
    config["apps"] = {
        app.name: {"environments": {"staging": app.staging, "prod": app.prod}, "clusters": {"prod": "prod-eu"}}
    }
    server = start_server(tmp_path / "server", config)
    server.tokens = {"alice": alice}
    yield Two(server, app, cluster, prod, sandbox_factory, tmp_path / "prod-state")
    server.stop()
    client.CoreV1Api(cluster.api()).delete_namespace(app.staging)


def test_each_environment_lands_on_its_own_cluster_and_a_stopped_one_fails_only_its_own(two: Two) -> None:
    server, app = two.server, two.app
    url = server.http_url(app.name)
    staging = push(app.repo, url, "main")
    assert staging.code == 0, staging
    prod = push(app.repo, url, "main:prod")
    assert prod.code == 0, prod
    assert deployments(two.staging, app.staging) == [f"{app.name}-primary"]
    assert deployments(two.prod, app.prod) == [f"{app.name}-primary"]
    assert deployments(two.staging, app.prod) == [], "nothing of prod's on staging's cluster"
    assert deployments(two.prod, app.staging) == [], "nothing of staging's on prod's cluster"
    for where, environment in ((two.prod, "prod"), (two.staging, "staging")):  # each record on its cluster
        listed = client.CoreV1Api(where.api()).list_secret_for_all_namespaces(label_selector="owner=deployer")
        mine = [r for r in listed.items if r.metadata.labels["deployer.dev/app"] == app.name]
        assert [r.metadata.labels["deployer.dev/environment"] for r in mine] == [environment]

    # prod's cluster stops: a prod push fails with one line and moves nothing; staging goes on
    two.prod.stop()
    (app.repo / "app" / "greeting.txt").write_text("while prod is away\n")
    head = commit(app.repo, "while prod is away")
    started = time.monotonic()
    refused = push(app.repo, url, "main:prod")
    assert refused.code == 1, refused
    errors = [line for line in refused.remote if line.startswith("error:")]
    assert len(errors) == 1 and "prod" in refused.remote[-1], refused.remote
    assert time.monotonic() - started < 120
    assert server.ref("refs/heads/prod", app.name) != head
    staging = push(app.repo, url, "main")
    assert staging.code == 0, staging
    assert server.ref("refs/heads/main", app.name) == head
    status, page = server.get("/healthz")
    assert status == 200, page
    # the web view: each environment on its cluster; the one away is one line in its own row
    web = requests.Session()
    base = f"http://127.0.0.1:{server.http_port}"
    overview = web.post(f"{base}/ui/signin", data={"token": server.tokens["alice"], "next": "/ui/"}, timeout=30)
    assert overview.status_code == 200, overview.text
    rows = {
        env: re.sub(r"\s+", " ", row)
        for env, row in re.findall(r'<tr data-env="[^"/]+/(\w+)">(.*?)</tr>', overview.text, flags=re.S)
    }
    assert f"{app.name}-prod on prod-eu" in rows["prod"] and "records not readable" in rows["prod"]
    assert f"{app.name}-staging on default" in rows["staging"] and head[:12] in rows["staging"]


def test_a_release_its_cluster_left_mid_flight_is_recovered_once_the_cluster_is_back(two: Two) -> None:
    server, app = two.server, two.app
    url = server.http_url(app.name)
    assert push(app.repo, url, "main:prod").code == 0
    first = client.AppsV1Api(two.prod.api()).read_namespaced_deployment(f"{app.name}-primary", app.prod)
    image = first.spec.template.spec.containers[0].image
    staging_canary, prod_canary = (app.repo / "deploy.yaml").read_text().rsplit("interval: 1s", 1)
    (app.repo / "deploy.yaml").write_text(staging_canary + "interval: 30s" + prod_canary)  # prod's canary: long
    (app.repo / "app" / "greeting.txt").write_text("left mid-flight\n")
    commit(app.repo, "a long canary in prod")
    proc = subprocess.Popen(
        ["git", "-C", str(app.repo), "push", url, "main:prod"],
        env=git_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = read_until(proc, "weights stable 50% / canary 50%")
    assert any("canary 50%" in line for line in seen), seen
    two.prod.stop()
    assert proc.wait(timeout=180) == 1
    two.restart_prod()
    api = two.prod.api()
    deadline = time.monotonic() + 90
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        secrets = client.CoreV1Api(api).list_namespaced_secret(app.prod, label_selector="owner=deployer").items
        statuses = {
            s.metadata.labels["deployer.dev/revision"]: s.metadata.labels["deployer.dev/status"] for s in secrets
        }
        if statuses.get("2") not in (None, "pending"):
            break
        time.sleep(0.5)
    assert statuses == {"1": "deployed", "2": "rolled-back"}, statuses
    assert deployments(two.prod, app.prod) == [f"{app.name}-primary"], "the canary is gone"
    primary = client.AppsV1Api(api).read_namespaced_deployment(f"{app.name}-primary", app.prod)
    assert primary.spec.template.spec.containers[0].image == image
    log = server.log.read_text()
    assert f"recovered {app.name}/prod revision 2 (rolled back)" in log
    # the lease its own dead release left is taken at once, not after the lease's 30s
    assert "waiting for the release held by" not in log and "which holds nothing any more" in log
