"""git push to deploy, end to end: the real git client over SSH and smart HTTP against `deployer serve`, which
builds with buildah into the registry and releases on the cluster. Each test pushes its own app (its own bare
repository and namespaces), so the tests do not depend on each other's order.

A real cluster (DEPLOYER_TEST_KUBECONFIG) also needs DEPLOYER_TEST_REGISTRY: a registry both this machine and the
cluster reach.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from gitserver import (
    App,
    GitServer,
    Key,
    Pushed,
    git_env,
    history_json,
    make_app,
    make_key,
    new_token,
    push,
    push_in_background,
    read_until,
    server_config,
    start_server,
    token_entry,
)
from kube_sandbox.testing import Running, push_busybox
from kubernetes import client
from routes import vs_split
from support import Registry, commit, edit, free_port, git, run_deployer

pytestmark = pytest.mark.skipif(not shutil.which("buildah"), reason="buildah is installed by `make setup`")

APPS = [f"app{i}" for i in range(40)]  # one per test that pushes an app: the server binds each app's namespaces
MESH = {"istio-injection": "enabled"}  # a canary needs sidecars
_next_app = itertools.count()


@pytest.fixture(scope="module")
def registry_host(registry: Registry) -> str:
    return os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    where = tmp_path_factory.mktemp("keys")
    return {name: make_key(where, name) for name in ("alice", "bob", "mallory")}


@pytest.fixture(scope="module")
def server(
    cluster: Running, registry_host: str, keys: dict[str, Key], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GitServer]:
    core = client.CoreV1Api(cluster.api())
    for app in APPS:
        for env in ("staging", "prod"):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=f"{app}-{env}", labels=MESH)))
    tokens = {"alice": new_token(), "bob": new_token()}
    tmp = tmp_path_factory.mktemp("server")
    config = server_config(
        data=tmp / "data",
        kubeconfig=cluster.kubeconfig,
        registry=registry_host,
        bound={},
        users={
            "alice": {"keys": [keys["alice"].public], "tokens": [token_entry(tokens["alice"])]},
            "bob": {"keys": [keys["bob"].public], "tokens": [token_entry(tokens["bob"])], "environments": ["staging"]},
        },
        environments={"prod": {"pushOptions": ["dry-run"]}, "*": {"lockWait": "2m"}},
        limits={"maxPushMb": 2, "rolloutTimeout": "15s", "renderTimeout": "5s"},
        charts={"registries": [registry_host]},
    )
    config["apps"] = {app: {"environments": {env: f"{app}-{env}" for env in ("staging", "prod")}} for app in APPS}
    running = start_server(tmp, config)
    running.keys, running.tokens = keys, tokens
    yield running
    assert running.stop() == 0, running.log.read_text()[-2000:]
    for app in APPS:
        for env in ("staging", "prod"):
            core.delete_namespace(f"{app}-{env}")


@pytest.fixture
def app(tmp_path: Path, registry_host: str) -> App:
    """examples/hello as a fresh app repository: a 1s canary of one step, readiness checked (the simulated
    runtime serves no HTTP)."""
    return make_app(tmp_path, APPS[next(_next_app)], registry_host)


def change(app: App, text: str) -> str:
    (app.repo / "app" / "greeting.txt").write_text(text + "\n")
    return commit(app.repo, text)


def live_image(api: client.ApiClient, namespace: str, name: str) -> str:
    """The image stable serves: the app's primary."""
    deployment = client.AppsV1Api(api).read_namespaced_deployment(f"{name}-primary", namespace)
    return str(deployment.spec.template.spec.containers[0].image)


def weights(api: client.ApiClient, namespace: str, name: str) -> list[int]:
    vs = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", name
    )
    return vs_split(vs)


def deployments(api: client.ApiClient, namespace: str) -> list[str]:
    return sorted(d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items)


# --- the product ---------------------------------------------------------------------------------------------


def test_first_push_over_ssh_goes_live_and_the_branch_moves(
    server: GitServer, app: App, api: client.ApiClient, registry_host: str
) -> None:
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    assert pushed.code == 0, pushed
    lines = pushed.remote
    assert any(f"main → staging (namespace {app.staging}), commit {app.head()[:12]} by alice" in x for x in lines)
    assert any("STEP 1/10: FROM" in x for x in lines), "build output is streamed"
    assert any("render  3 objects (1 Deployment, 1 Ingress, 1 Service)" in x for x in lines)
    assert any(x.startswith("refs/heads/main  staging") and "released" in x for x in lines), lines
    assert f"staging is live at {app.head()[:12]} (revision 1); main moves" in lines
    assert server.ref("refs/heads/main", app.name) == app.head()
    assert live_image(api, app.staging, app.name).startswith(f"{registry_host}/{app.name}@sha256:")
    [record] = history_json(server_kubeconfig(server), app.staging, app=app.name)
    assert (record["status"], record["commit"], record["pusher"]) == ("deployed", app.head(), "alice")


def server_kubeconfig(server: GitServer) -> Path:
    return Path(yaml.safe_load(server.config_path.read_text())["cluster"]["kubeconfig"])


def test_a_change_over_http_goes_through_the_canary_and_is_promoted(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    assert push(app.repo, server.http_url(app.name), "main").code == 0
    first_image = live_image(api, app.staging, app.name)
    new = change(app, "second")
    pushed = push(app.repo, server.http_url(app.name), "main")
    assert pushed.code == 0, pushed
    assert any("canary  weights stable 50% / canary 50%" in x for x in pushed.remote), pushed
    assert any(f"check readiness {app.name}-canary: ok 1/1 pods ready" in x for x in pushed.remote)
    assert any("revision 2: 50% → 100%" in x for x in pushed.remote)
    assert server.ref("refs/heads/main", app.name) == new
    assert live_image(api, app.staging, app.name) != first_image
    assert weights(api, app.staging, app.name) == [100, 0]
    assert deployments(api, app.staging) == [f"{app.name}-primary"]


@pytest.mark.sandbox_only  # a crashing image is a sandbox behaviour
def test_a_change_that_crashes_is_rolled_back_and_the_push_rejected(
    server: GitServer, app: App, api: client.ApiClient, cluster: Running
) -> None:
    assert push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"]).code == 0
    before = live_image(api, app.staging, app.name)
    old = app.head()
    change(app, "crashes")
    built = run_deployer("build", "--repo", app.repo)  # the same image the server will find in the registry
    assert built.code == 0, built.err
    cluster.control(
        "/sandbox/pods", {"image": built.out.strip().splitlines()[-1].removeprefix("image: "), "behaviour": "crash"}
    )
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    assert pushed.code == 1
    assert "rolled-back" in "\n".join(pushed.remote)
    assert any(
        "error: staging" in x and "canary rolled back: the canary never became ready" in x for x in pushed.remote
    )
    assert "push rejected: staging still runs what it ran; main did not move" in pushed.remote
    assert "[remote rejected] main -> main (pre-receive hook declined)" in pushed.output
    assert server.ref("refs/heads/main", app.name) == old
    assert live_image(api, app.staging, app.name) == before
    assert weights(api, app.staging, app.name) == [100, 0]
    assert deployments(api, app.staging) == [f"{app.name}-primary"]


def test_dry_run_builds_renders_diffs_and_changes_nothing(server: GitServer, app: App, api: client.ApiClient) -> None:
    assert push(app.repo, server.http_url(app.name), "main").code == 0
    before, old = live_image(api, app.staging, app.name), app.head()
    change(app, "maybe")
    pushed = push(app.repo, server.http_url(app.name), "main", options=("dry-run",))
    assert pushed.code == 1
    text = "\n".join(pushed.remote)
    assert f"Deployment/{app.name}-primary: would change" in text
    assert f"Service/{app.name}: unchanged" in text, text
    assert any(x.strip().startswith("dry-run") and "+" in x and "image:" in x for x in pushed.remote), text
    assert "error: dry-run: dry run: built, rendered and compared with the cluster; nothing was changed" in text
    assert server.ref("refs/heads/main", app.name) == old
    assert live_image(api, app.staging, app.name) == before
    assert len(history_json(server_kubeconfig(server), app.staging, app=app.name)) == 1


def test_prod_push_with_a_staging_only_key_is_refused_before_anything_runs(server: GitServer, app: App) -> None:
    pushed = push(app.repo, server.ssh_url(app.name), "main:prod", key=server.keys["bob"])
    assert pushed.code == 1
    assert "error: server: user 'bob' may not deploy to prod" in pushed.remote
    assert not any(x.strip().startswith(("build", "release")) for x in pushed.remote), pushed
    assert server.ref("refs/heads/prod", app.name) is None
    allowed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["bob"])
    assert allowed.code == 0, allowed


def test_prod_push_is_deployed_and_forbidden_push_options_are_refused(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    refused = push(app.repo, server.ssh_url(app.name), "main:prod", key=server.keys["alice"], options=("skip-canary",))
    assert refused.code == 1
    assert "error: push option 'skip-canary' is not allowed for prod (allowed: dry-run)" in refused.remote
    pushed = push(app.repo, server.ssh_url(app.name), "main:prod", key=server.keys["alice"])
    assert pushed.code == 0, pushed
    assert server.ref("refs/heads/prod", app.name) == app.head()
    assert deployments(api, app.prod) == [f"{app.name}-primary"]


def test_two_concurrent_pushes_to_one_environment_are_serialized(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    edit(app.repo / "deploy.yaml", "branches: [main]", "branches: [main, 'hotfix/*']")
    edit(
        app.repo / "deploy.yaml",
        "steps: [50]\n      interval: 1s\n      threshold: 1",
        "steps: [50]\n      interval: 3s\n      threshold: 1",
    )
    commit(app.repo, "hotfix branches deploy to staging too")
    assert push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"]).code == 0
    first = change(app, "from alice")
    git(app.repo, "checkout", "-q", "-b", "hotfix/x")
    second = change(app, "from bob")
    alice = push_in_background(app.repo, server.ssh_url(app.name), f"{first}:refs/heads/main", key=server.keys["alice"])
    time.sleep(1.0)
    bob = push(app.repo, server.http_url(app.name, user="bob"), "hotfix/x")
    alice_out, _ = alice.communicate(timeout=180)
    assert alice.returncode == 0, alice_out
    assert bob.code == 0, bob
    assert any(f"staging is being released: {first[:12]} by alice" in x for x in bob.remote), bob
    records = history_json(server_kubeconfig(server), app.staging, app=app.name)
    assert [(r["commit"], r["pusher"], r["status"]) for r in records[-2:]] == [
        (first, "alice", "deployed"),
        (second, "bob", "deployed"),
    ]
    assert server.ref("refs/heads/main", app.name) == first
    assert server.ref("refs/heads/hotfix/x", app.name) == second


SLOW_REF_UPDATE = """#!/bin/sh
# Widens the window between the pre-receive hook's answer and git's ref update: git runs this with the ref
# locked, before it moves (reference-transaction, "prepared"). A push that got the lock in that window used to
# read the branch where it was, release, and then fail to move the branch, leaving another commit live.
if [ "$1" = prepared ]; then
  while read -r old new ref; do if [ "$ref" = refs/heads/main ]; then sleep 3; fi; done
else
  cat > /dev/null
fi
exit 0
"""


@pytest.mark.parametrize("slow_ref_update", [False, True], ids=["moved-while-waiting", "lock-before-git-moved-it"])
def test_a_push_whose_branch_moved_while_it_waited_is_refused(
    server: GitServer, app: App, api: client.ApiClient, slow_ref_update: bool
) -> None:
    edit(app.repo / "deploy.yaml", "steps: [50]\n      interval: 1s", "steps: [50]\n      interval: 3s")
    base = commit(app.repo, "slower canary")
    assert push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"]).code == 0
    if slow_ref_update:
        hook = server.repo(app.name) / "hooks" / "reference-transaction"
        hook.write_text(SLOW_REF_UPDATE)
        hook.chmod(0o755)
    first = change(app, "one")
    git(app.repo, "checkout", "-q", "-b", "other", base)
    second = change(app, "two")
    alice = push_in_background(app.repo, server.ssh_url(app.name), f"{first}:refs/heads/main", key=server.keys["alice"])
    seen = read_until(alice, "canary 50%")  # alice's release holds the lock (a fixed sleep raced a slow start)
    assert any("canary 50%" in line for line in seen), "".join(seen)
    late = push(app.repo, server.http_url(app.name), f"{second}:refs/heads/main")
    assert alice.wait(timeout=180) == 0
    assert late.code == 1
    assert any(f"main moved to {first[:12]} while this push waited" in x for x in late.remote), late
    assert server.ref("refs/heads/main", app.name) == first
    last = history_json(server_kubeconfig(server), app.staging, app=app.name)[-1]
    assert (last["commit"], last["status"]) == (first, "deployed")
    assert live_image(api, app.staging, app.name) == last["image"]  # what git says is live, is


def test_killing_the_git_client_mid_canary_still_ends_consistently(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    assert push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"]).code == 0
    edit(app.repo / "deploy.yaml", "steps: [50]\n      interval: 1s", "steps: [50]\n      interval: 4s")
    new = commit(app.repo, "slow canary")
    proc = push_in_background(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    seen = read_until(proc, "canary 50%")
    proc.kill()  # Ctrl-C or a dropped network: the client is gone mid-canary
    proc.wait()
    assert any("canary 50%" in x for x in seen), "".join(seen)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.ref("refs/heads/main", app.name) != new:
        time.sleep(0.5)
    assert server.ref("refs/heads/main", app.name) == new  # the release succeeded, so git moved the branch
    record = history_json(server_kubeconfig(server), app.staging, app=app.name)[-1]
    assert (record["commit"], record["status"]) == (new, "deployed")
    assert weights(api, app.staging, app.name) == [100, 0]
    assert deployments(api, app.staging) == [f"{app.name}-primary"]


def test_async_push_is_accepted_once_the_canary_has_traffic(server: GitServer, app: App) -> None:
    assert push(app.repo, server.http_url(app.name), "main").code == 0
    edit(app.repo / "deploy.yaml", "steps: [50]\n      interval: 1s", "steps: [50]\n      interval: 3s")
    new = commit(app.repo, "async")
    started = time.monotonic()
    pushed = push(app.repo, server.http_url(app.name), "main", options=("async",))
    assert pushed.code == 0, pushed
    assert time.monotonic() - started < 10
    assert any(x.startswith("accepted (-o async)") for x in pushed.remote), pushed
    assert not any("revision 2 is live" in x for x in pushed.remote)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = history_json(server_kubeconfig(server), app.staging, app=app.name)[-1]
        if record["status"] != "pending":
            break
        time.sleep(0.5)
    assert (record["commit"], record["status"]) == (new, "deployed")
    status = run_deployer(
        "status",
        "--env",
        "staging",
        "--app",
        app.name,
        "--namespace",
        app.staging,
        "--kubeconfig",
        server_kubeconfig(server),
    )
    assert status.code == 0 and "deployed" in status.out


def test_skip_canary_and_set_push_options(server: GitServer, app: App, api: client.ApiClient) -> None:
    assert push(app.repo, server.http_url(app.name), "main").code == 0
    change(app, "straight through")
    pushed = push(app.repo, server.http_url(app.name), "main", options=("skip-canary", "set.replicas=2"))
    assert pushed.code == 0, pushed
    assert any("-o set: replicas; all valid" in x for x in pushed.remote)
    assert any("no canary: applying 3 objects without a canary" in x for x in pushed.remote)
    assert not any("/ canary 50%" in x for x in pushed.remote)
    deployment = client.AppsV1Api(api).read_namespaced_deployment(f"{app.name}-primary", app.staging)
    assert deployment.spec.replicas == 2


def test_an_image_built_elsewhere_is_released_by_its_digest(
    server: GitServer, app: App, api: client.ApiClient, registry_host: str
) -> None:
    """`build: false`: nothing is built; the tag deploy.yaml names (or -o set.image.tag chooses) is resolved to its
    digest, which the release pins; a tag the registry lacks is one line and changes nothing."""
    repository = f"{registry_host}/{app.name}"
    first = push_busybox(registry_host, f"{app.name}:1.2.3")  # built elsewhere: by another pipeline
    second = push_busybox(registry_host, f"{app.name}:2.0.0", labels={"version": "2.0.0"})
    deploy = app.repo / "deploy.yaml"
    edit(deploy, "build:\n  dockerfile: Dockerfile\n  context: .\n  args:\n    GREETING: hello\n", "build: false\n")
    edit(deploy, f"repository: {repository}\n", f"repository: {repository}\n  tag: 1.2.3\n")
    commit(app.repo, "deploy an image built elsewhere")
    pushed = push(app.repo, server.http_url(app.name), "main")
    assert pushed.code == 0, pushed
    assert not any("STEP 1/" in x for x in pushed.remote), "nothing is built"
    [resolved] = [x for x in pushed.remote if f"build: false: {repository}:1.2.3 is sha256:" in x]
    digest = resolved.rsplit(" is ", 1)[1]
    assert first.endswith(":1.2.3") and live_image(api, app.staging, app.name) == f"{repository}@{digest}"
    [record] = history_json(server_kubeconfig(server), app.staging, app=app.name)
    assert (record["commit"], record["image"]) == (app.head(), f"{repository}@{digest}")

    missing = change(app, "a tag nobody pushed")
    refused = push(app.repo, server.http_url(app.name), "main", options=("set.image.tag=9.9.9",))
    assert refused.code == 1
    assert f"error: -o set.image.tag: {repository}:9.9.9 is not in the registry" in refused.remote, refused
    assert server.ref("refs/heads/main", app.name) != missing
    assert live_image(api, app.staging, app.name) == f"{repository}@{digest}"

    chosen = push(app.repo, server.http_url(app.name), "main", options=("set.image.tag=2.0.0",))
    assert chosen.code == 0, chosen
    [resolved] = [x for x in chosen.remote if f"build: false: {repository}:2.0.0 is sha256:" in x]
    assert second.endswith(":2.0.0")
    assert live_image(api, app.staging, app.name) == f"{repository}@{resolved.rsplit(' is ', 1)[1]}"
    assert resolved.rsplit(" is ", 1)[1] != digest


def test_a_chart_from_an_allowed_registry_is_pulled_once_and_others_are_refused(
    server: GitServer, app: App, api: client.ApiClient, registry_host: str, tmp_path: Path
) -> None:
    helm = shutil.which("helm") or "helm"
    for args in (
        ["package", str(app.repo / "charts" / "hello"), "-d", str(tmp_path)],
        ["push", str(tmp_path / "hello-0.1.0.tgz"), f"oci://{registry_host}/{app.name}-charts", "--plain-http"],
    ):
        subprocess.run([helm, *args], capture_output=True, check=True, timeout=60)
    chart = f"oci://{registry_host}/{app.name}-charts/hello"
    edit(app.repo / "deploy.yaml", "    chart: charts/hello\n", f"    chart: {chart}\n    version: 0.1.0\n")
    shutil.rmtree(app.repo / "charts")
    commit(app.repo, "the chart from the registry")
    pushed = push(app.repo, server.http_url(app.name), "main")
    assert pushed.code == 0, pushed
    assert any(f"chart {chart}:0.1.0 pulled (sha256:" in x for x in pushed.remote), pushed.remote
    assert live_image(api, app.staging, app.name).startswith(f"{registry_host}/{app.name}@sha256:")
    change(app, "again")
    again = push(app.repo, server.http_url(app.name), "main")
    assert again.code == 0, again
    assert any(f"chart {chart}:0.1.0 (sha256:" in x and "from the cache" in x for x in again.remote), again.remote

    edit(app.repo / "deploy.yaml", f"    chart: {chart}\n", "    chart: oci://registry.example.com/charts/hello\n")
    elsewhere = commit(app.repo, "a chart from elsewhere")
    refused = push(app.repo, server.http_url(app.name), "main")
    assert refused.code == 1
    assert (
        f"error: deploy.yaml: render.helm.chart: charts may not come from registry.example.com: server.yaml "
        f"charts.registries allows {registry_host}"
    ) in refused.remote, refused
    assert server.ref("refs/heads/main", app.name) != elsewhere


def test_pushes_to_different_apps_run_at_the_same_time(server: GitServer, app: App, tmp_path: Path) -> None:
    other = APPS[next(_next_app)]
    second = tmp_path / other
    shutil.copytree(app.repo, second)
    for old, new in ((f"app: {app.name}", f"app: {other}"), (f"/{app.name}\n", f"/{other}\n")):
        edit(second / "deploy.yaml", old, new)
    edit(second / "deploy.yaml", f"namespace: {app.staging}", f"namespace: {other}-staging")
    commit(second, "another app")
    edit(app.repo / "deploy.yaml", "steps: [50]\n      interval: 1s", "steps: [50]\n      interval: 8s")
    commit(app.repo, "a long canary")
    assert push(app.repo, server.ssh_url(app.name), "main~1:refs/heads/main", key=server.keys["alice"]).code == 0
    slow = push_in_background(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    read_until(slow, "canary 50%")
    fast = push(second, server.ssh_url(other), "main", key=server.keys["alice"])
    assert fast.code == 0, fast
    assert slow.poll() is None  # the first app's canary is still in its interval
    slow.communicate(timeout=120)
    assert slow.returncode == 0


def test_a_clone_of_the_app_repository_checks_out_the_branch_first_pushed(
    server: GitServer, app: App, tmp_path: Path
) -> None:
    assert push(app.repo, server.http_url(app.name), "main").code == 0
    clone = tmp_path / "clone"
    done = subprocess.run(
        ["git", "clone", "-q", server.http_url(app.name), str(clone)],
        capture_output=True,
        text=True,
        env=git_env(None),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "remote HEAD refers to nonexistent ref" not in done.stderr
    assert git(clone, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert (clone / "deploy.yaml").exists()


def test_a_branch_no_environment_claims_and_tags_deploy_nothing(server: GitServer, app: App) -> None:
    git(app.repo, "tag", "v1")
    pushed = push(app.repo, server.ssh_url(app.name), "main:feature/x", "v1", key=server.keys["alice"])
    assert pushed.code == 0, pushed
    assert "    plan  feature/x: no environment claims branch 'feature/x'; not deployed" in pushed.remote
    assert "    plan  refs/tags/v1: not a branch; nothing to deploy" in pushed.remote
    assert "accepted: nothing to deploy" in pushed.remote
    assert server.ref("refs/heads/feature/x", app.name) == app.head()
    assert push(app.repo, server.ssh_url(app.name), "main:feature/z", key=server.keys["alice"]).code == 0
    deleted = push(app.repo, server.ssh_url(app.name), ":feature/x", key=server.keys["alice"])
    assert deleted.code == 0 and server.ref("refs/heads/feature/x", app.name) is None
    assert server.ref("HEAD", app.name) == app.head(), "HEAD moved from the deleted branch to one that exists"


def test_deleting_an_environment_branch_is_refused(server: GitServer, app: App) -> None:
    assert push(app.repo, server.http_url(app.name), "main").code == 0
    pushed = push(app.repo, server.http_url(app.name), ":main")
    assert pushed.code == 1
    assert any("deleting branch 'main' is refused: it records what is live in staging" in x for x in pushed.remote)
    assert server.ref("refs/heads/main", app.name) == app.head()


def test_force_push_rolls_back_to_an_older_commit_but_never_rewrites_history(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    good = app.head()
    assert push(app.repo, server.http_url(app.name), "main").code == 0
    good_image = live_image(api, app.staging, app.name)
    newer = change(app, "newer")
    assert push(app.repo, server.http_url(app.name), "main").code == 0
    git(app.repo, "checkout", "-q", "-b", "rewrite", good)
    rewritten = change(app, "rewritten")
    refused = push(app.repo, server.http_url(app.name), f"{rewritten}:refs/heads/main", force=True)
    assert refused.code == 1
    assert any(
        "non-fast-forward push to 'main' (staging)" in x and "not in the branch's history" in x for x in refused.remote
    )
    assert server.ref("refs/heads/main", app.name) == newer
    back = push(app.repo, server.http_url(app.name), f"{good}:refs/heads/main", force=True)
    assert back.code == 0, back
    assert server.ref("refs/heads/main", app.name) == good
    assert live_image(api, app.staging, app.name) == good_image  # the same commit's image, not rebuilt
    assert any("is already in the registry; not rebuilt" in x for x in back.remote)


# --- bad input: one clear line on the client, and no change ------------------------------------------------


def test_a_push_without_deploy_yaml_is_refused(server: GitServer, app: App) -> None:
    git(app.repo, "rm", "-q", "deploy.yaml")
    commit(app.repo, "no deploy.yaml")
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    assert pushed.code == 1
    assert any(x.startswith(f"error: deploy.yaml: not found at commit {app.head()[:12]}") for x in pushed.remote)
    assert server.ref("refs/heads/main", app.name) is None


def test_an_invalid_deploy_yaml_is_refused_with_file_line_and_field(server: GitServer, app: App) -> None:
    edit(app.repo / "deploy.yaml", "      threshold: 1\n", "      threshold: many\n")
    commit(app.repo, "bad threshold")
    pushed = push(app.repo, server.http_url(app.name), "main")
    assert pushed.code == 1
    assert any(
        x.startswith("error: deploy.yaml:") and "environments.staging.canary.threshold" in x for x in pushed.remote
    )
    assert server.ref("refs/heads/main", app.name) is None


def test_an_unknown_app_is_refused_over_ssh_and_http(server: GitServer, app: App) -> None:
    over_ssh = push(app.repo, server.ssh_url("shop"), "main", key=server.keys["alice"])
    assert over_ssh.code != 0
    assert "error: server: unknown app 'shop': the server deploys app0" in over_ssh.output
    over_http = push(app.repo, server.http_url("shop"), "main")
    assert over_http.code != 0
    assert "fatal: remote error: server: unknown app 'shop'" in over_http.output
    assert not (server.data / "repos" / "shop.git").exists()


def test_a_namespace_the_server_does_not_allow_is_refused(server: GitServer, app: App) -> None:
    edit(app.repo / "deploy.yaml", f"namespace: {app.staging}", "namespace: kube-system")
    commit(app.repo, "sneaky")
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    assert pushed.code == 1
    assert any(
        "environments.staging.namespace: 'kube-system' is refused: the server binds staging to" in x
        for x in pushed.remote
    ), pushed


def test_a_staging_only_user_cannot_aim_staging_at_prods_namespace(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    """The attack: deploy.yaml maps staging to prod's namespace and skips the canary, as staging allows."""
    edit(app.repo / "deploy.yaml", f"namespace: {app.staging}", "namespace: SWAP")
    edit(app.repo / "deploy.yaml", f"namespace: {app.prod}", f"namespace: {app.staging}")
    edit(app.repo / "deploy.yaml", "namespace: SWAP", f"namespace: {app.prod}")
    commit(app.repo, "staging is prod now")
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["bob"], options=("skip-canary",))
    assert pushed.code == 1
    assert any(
        f"environments.staging.namespace: '{app.prod}' is refused: the server binds staging to '{app.staging}', "
        "which is prod's" in x
        for x in pushed.remote
    ), pushed
    assert not any(x.strip().startswith(("build", "release")) for x in pushed.remote), pushed
    assert deployments(api, app.prod) == [] and deployments(api, app.staging) == []
    assert server.ref("refs/heads/main", app.name) is None


def test_a_staging_only_user_cannot_rewrite_the_branch_prod_deploys_from(server: GitServer, app: App) -> None:
    """The attack: force-push unrelated history whose deploy.yaml claims no prod to the prod branch."""
    assert push(app.repo, server.ssh_url(app.name), "main:prod", key=server.keys["alice"]).code == 0
    live = server.ref("refs/heads/prod", app.name)
    git(app.repo, "checkout", "-q", "--orphan", "unrelated")
    edit(app.repo / "deploy.yaml", "branches: [prod]", "branches: [release]")
    unrelated = commit(app.repo, "prod is nobody's now")
    pushed = push(
        app.repo, server.ssh_url(app.name), f"{unrelated}:refs/heads/prod", key=server.keys["bob"], force=True
    )
    assert pushed.code == 1
    assert any(
        f"branch 'prod' deploys prod now (deploy.yaml at {live[:12]}); user 'bob' may not deploy to prod" in x
        for x in pushed.remote
    ), pushed
    assert server.ref("refs/heads/prod", app.name) == live
    deleted = push(app.repo, server.ssh_url(app.name), ":prod", key=server.keys["bob"])
    assert deleted.code == 1 and server.ref("refs/heads/prod", app.name) == live


def test_a_branch_whose_push_is_live_in_prod_needs_prods_rights_even_once_deploy_yaml_unclaims_it(
    server: GitServer, app: App
) -> None:
    """prod's live release came from branch prod; a later commit there maps prod to another branch (it deploys
    nothing, so anyone with prod's rights could push it). The branch still says what is live in prod: the
    records say so, and a staging-only user may not rewrite it."""
    assert push(app.repo, server.ssh_url(app.name), "main:prod", key=server.keys["alice"]).code == 0
    edit(app.repo / "deploy.yaml", "branches: [prod]", "branches: [release]")
    unclaimed = commit(app.repo, "prod moves to the release branch")
    assert push(app.repo, server.ssh_url(app.name), f"{unclaimed}:refs/heads/prod", key=server.keys["alice"]).code == 0
    git(app.repo, "checkout", "-q", "--orphan", "unrelated")
    rewrite = commit(app.repo, "rewrite")
    pushed = push(app.repo, server.ssh_url(app.name), f"{rewrite}:refs/heads/prod", key=server.keys["bob"], force=True)
    assert pushed.code == 1
    assert any(
        "branch 'prod' deploys prod now (its live release came from it); user 'bob' may not deploy to prod" in x
        for x in pushed.remote
    ), pushed
    assert server.ref("refs/heads/prod", app.name) == unclaimed
    assert history_json(server_kubeconfig(server), app.prod, "prod", app=app.name)[-1]["branch"] == "prod"


def test_a_chart_rendering_cluster_scoped_objects_is_refused_and_nothing_is_applied(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    other = f"{app.name}-prod"  # another environment's namespace, as a stand-in for another app's
    binding = (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: escape}\n"
        "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\n"
        "subjects: [{kind: ServiceAccount, name: default, namespace: default}]\n---\n"
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {other}}}\n"
    )
    (app.repo / "charts" / "hello" / "templates" / "escape.yaml").write_text(binding)
    commit(app.repo, "escape")
    before = client.CoreV1Api(api).read_namespace(other).metadata.labels
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    assert pushed.code == 1
    assert any(
        f"charts/hello/templates/escape.yaml: Namespace/{other}: a cluster-scoped Namespace is refused: a release "
        f"stays in its namespace '{app.staging}'" in x
        for x in pushed.remote
    ), pushed
    rbac = client.RbacAuthorizationV1Api(api)
    assert "escape" not in [b.metadata.name for b in rbac.list_cluster_role_binding().items]
    assert client.CoreV1Api(api).read_namespace(other).metadata.labels == before
    assert deployments(api, app.staging) == []


def test_routes_claiming_another_apps_host_or_a_shared_gateway_are_refused_and_nothing_is_applied(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    hijack = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: hijack}\n"
        "spec:\n  hosts: [payments.prod.svc.cluster.local]\n  gateways: [mesh]\n"
        "  http: [{route: [{destination: {host: hello}}]}]\n"
    )
    template = app.repo / "charts" / "hello" / "templates" / "hijack.yaml"
    template.write_text(hijack)
    commit(app.repo, "hijack")
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    assert pushed.code == 1
    assert any(
        "error: charts/hello/templates/hijack.yaml: VirtualService/hijack claims host "
        "'payments.prod.svc.cluster.local', which server.yaml does not grant this app" in x
        for x in pushed.remote
    ), pushed
    template.write_text(
        hijack.replace("payments.prod.svc.cluster.local", "hello").replace(
            "[mesh]", "[istio-system/istio-ingressgateway]"
        )
    )
    commit(app.repo, "public")
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    assert pushed.code == 1
    assert any(
        "VirtualService/hijack claims gateway 'istio-system/istio-ingressgateway', which server.yaml does not grant"
        in x
        for x in pushed.remote
    ), pushed
    assert deployments(api, app.staging) == []
    assert server.ref("refs/heads/main", app.name) is None


def test_a_build_asking_for_a_network_the_server_does_not_grant_is_refused_before_building(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    edit(app.repo / "deploy.yaml", "  context: .\n", "  context: .\n  network: true\n")
    commit(app.repo, "wants the network")
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    assert pushed.code == 1
    assert (
        f"error: deploy.yaml: build.network: RUN steps may not have a network for app '{app.name}': an operator "
        f"allows it with server.yaml apps.{app.name}.buildNetwork" in pushed.remote
    ), pushed
    assert not any(line.startswith("STEP 1/") for line in pushed.remote), "nothing was built"
    assert deployments(api, app.staging) == []


def test_a_template_that_loops_is_stopped_at_the_render_limit_and_the_server_keeps_answering(
    server: GitServer, app: App, api: client.ApiClient
) -> None:
    edit(app.repo / "deploy.yaml", "  helm:\n    chart: charts/hello\n", "  templates: {dir: templates}\n")
    (app.repo / "templates").mkdir()
    (app.repo / "templates" / "loop.yaml.j2").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"
    )
    commit(app.repo, "a loop")
    latencies: list[float] = []
    pushed: list[Pushed] = []
    pusher = threading.Thread(
        target=lambda: pushed.append(push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"]))
    )
    pusher.start()
    while pusher.is_alive():
        started = time.monotonic()
        assert server.get("/healthz")[0] == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    pusher.join()
    assert pushed[0].code == 1
    assert any(
        "error: templates: rendering took longer than 5s (the server's limits.renderTimeout) and was stopped" in x
        for x in pushed[0].remote
    ), pushed[0]
    latencies.sort()
    assert len(latencies) > 20 and latencies[int(len(latencies) * 0.9)] < 0.1, latencies[-10:]
    assert deployments(api, app.staging) == []


def test_a_push_that_adds_a_secret_is_refused_naming_file_and_line(server: GitServer, app: App) -> None:
    path = app.repo / "environments" / "staging.yaml"
    path.write_text(path.read_text() + "database:\n  password: hunter2Xq9zLmP4vR8wTk\n")
    commit(app.repo, "oops")
    pushed = push(app.repo, server.http_url(app.name), "main")
    assert pushed.code == 1
    line = len(path.read_text().splitlines())
    assert any(
        x.startswith(f"error: secret scan: environments/staging.yaml:{line}: Secret Keyword") for x in pushed.remote
    ), pushed
    assert "hunter2Xq9zLmP4vR8wTk" not in pushed.output
    assert "hunter2Xq9zLmP4vR8wTk" not in server.log.read_text()
    assert server.ref("refs/heads/main", app.name) is None


def test_a_push_over_the_size_limit_is_refused(server: GitServer, app: App) -> None:
    (app.repo / "big.bin").write_bytes(os.urandom(3 * 2**20))
    commit(app.repo, "big")
    pushed = push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"])
    assert pushed.code != 0
    assert "pack exceeds maximum allowed size" in pushed.output
    assert server.ref("refs/heads/main", app.name) is None


def test_unknown_and_forbidden_push_options_are_refused(server: GitServer, app: App) -> None:
    pushed = push(app.repo, server.http_url(app.name), "main", options=("yolo",))
    assert pushed.code == 1
    assert any("error: git push -o: unknown push option 'yolo'" in x for x in pushed.remote)


def test_http_refuses_bad_credentials_garbage_and_other_services(server: GitServer, app: App) -> None:
    import urllib.request  # noqa: PLC0415

    wrong = push(app.repo, f"http://alice:wrong@127.0.0.1:{server.http_port}/{app.name}.git", "main")
    assert wrong.code != 0 and "Authentication failed" in wrong.output
    assert server.get(f"/{app.name}.git/info/refs?service=git-receive-pack")[0] == 401
    assert server.get(f"/{app.name}.git/info/refs?service=git-shell")[0] == 403
    assert server.get("/../../etc/passwd")[0] == 404
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/{app.name}.git/git-receive-pack",
        data=os.urandom(4096),
        headers={
            "Content-Type": "application/x-git-receive-pack-request",
            "Authorization": f"Bearer {server.tokens['alice']}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    assert status < 500
    assert server.get("/healthz")[0] == 200  # still serving
    assert server.ref("refs/heads/main", app.name) is None


def _get_from(server: GitServer, path: str, *, source: str, token: str) -> tuple[int, dict[str, str]]:
    import http.client  # noqa: PLC0415

    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        answer.read()
        return answer.status, dict(answer.getheaders())
    finally:
        connection.close()


def test_wrong_tokens_from_one_address_are_slowed_and_other_addresses_are_not(server: GitServer, app: App) -> None:
    path = f"/{app.name}.git/info/refs?service=git-upload-pack"
    guesser = "127.0.0.3"  # its own address: the module's other tests come from 127.0.0.1
    answers = [_get_from(server, path, source=guesser, token=f"guess-{i}") for i in range(100)]
    codes = [code for code, _ in answers]
    assert codes[:5] == [401] * 5, "the first wrong tokens (a typo) are answered at once"
    assert codes.count(429) >= 90, codes
    retry = [int(headers["Retry-After"]) for code, headers in answers if code == 429]
    assert min(retry) >= 1 and max(retry) <= 60
    # the right token from the guessing address waits too (a guess gets no answer), and not for long
    code, headers = _get_from(server, path, source=guesser, token=server.tokens["alice"])
    assert code == 429 and int(headers["Retry-After"]) <= 60
    # everyone else gets in
    assert _get_from(server, path, source="127.0.0.1", token=server.tokens["alice"])[0] == 200
    metrics = server.get("/metrics")[1]
    assert 'deployer_auth_failures_total{result="throttled"}' in metrics


def test_ssh_allows_only_git_commands(server: GitServer, app: App) -> None:
    ssh = git_env(server.keys["alice"])["GIT_SSH_COMMAND"].split()
    for command in ("ls -la /", "git-receive-pack '/app0.git'; rm -rf /", ""):
        done = subprocess.run(
            [*ssh, "-p", str(server.ssh_port), "git@127.0.0.1", *([command] if command else [])],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode != 0
        assert "error: ssh:" in done.stderr, done.stderr
    stranger = make_key(server.data.parent / "strangers", "eve")
    denied = push(app.repo, server.ssh_url(app.name), "main", key=stranger)
    assert denied.code != 0 and "Permission denied (publickey)" in denied.output


def test_healthz_and_metrics(server: GitServer, app: App) -> None:
    assert push(app.repo, server.http_url(app.name), "main").code == 0
    code, body = server.get("/healthz")
    assert code == 200 and '"status": "ok"' in body
    code, metrics = server.get("/metrics")
    assert code == 200
    assert f'deployer_releases_total{{app="{app.name}",environment="staging",result="released"}} 1.0' in metrics
    assert (
        f'deployer_release_duration_seconds_count{{app="{app.name}",environment="staging",result="released"}} 1.0'
        in metrics
    )
    assert f'deployer_releases_in_flight{{app="{app.name}",environment="staging"}} 0.0' in metrics


# --- a server that dies mid-release ----------------------------------------------------------------------------


def keyscan(port: int) -> str:
    done = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"], capture_output=True, text=True, check=False
    )
    return done.stdout.split(None, 1)[1].strip() if done.stdout else ""


def test_a_server_killed_mid_canary_recovers_at_start_and_keeps_its_host_key(
    server: GitServer, app: App, api: client.ApiClient, tmp_path: Path
) -> None:
    config = yaml.safe_load(server.config_path.read_text())
    config["dataDir"] = str(tmp_path / "data")
    config["listen"] = {"ssh": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"}
    first = start_server(tmp_path / "one", config)
    first.keys, first.tokens = server.keys, server.tokens
    try:
        assert push(app.repo, first.ssh_url(app.name), "main", key=server.keys["alice"]).code == 0
        host_key = keyscan(first.ssh_port)
        old = app.head()
        edit(app.repo / "deploy.yaml", "steps: [50]\n      interval: 1s", "steps: [50]\n      interval: 30s")
        commit(app.repo, "long canary")
        proc = push_in_background(app.repo, first.ssh_url(app.name), "main", key=server.keys["alice"])
        read_until(proc, "canary 50%")
        assert weights(api, app.staging, app.name) == [50, 50]
        first.process.kill()  # the deployer dies mid-canary (OOM, node lost)
        first.process.wait()
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode != 0, rest
    finally:
        first.stop()
    second = start_server(tmp_path / "two", config)  # recovers before it listens
    try:
        record = history_json(server_kubeconfig(server), app.staging, app=app.name)[-1]
        assert record["status"] == "rolled-back"
        assert record["reason"] == "recovered: the deployer stopped during canary"
        assert weights(api, app.staging, app.name) == [100, 0]
        assert deployments(api, app.staging) == [f"{app.name}-primary"]
        assert second.ref("refs/heads/main", app.name) == old
        assert keyscan(second.ssh_port) == host_key != ""
    finally:
        assert second.stop() == 0


def test_two_replicas_on_one_volume_serialize_an_environment_through_its_lease(
    server: GitServer, app: App, tmp_path: Path
) -> None:
    """The chart's N replicas: servers sharing the repositories' volume; a push to either waits for the other's
    release of the same environment (the Lease), then runs."""
    config = yaml.safe_load(server.config_path.read_text())
    config["listen"] = {"ssh": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"}
    replica = start_server(tmp_path / "replica", config)  # same dataDir: the shared volume
    replica.tokens = server.tokens
    try:
        edit(app.repo / "deploy.yaml", "branches: [main]", "branches: [main, 'hotfix/*']")
        edit(app.repo / "deploy.yaml", "steps: [50]\n      interval: 1s", "steps: [50]\n      interval: 8s")
        commit(app.repo, "hotfix branches deploy to staging too")
        assert push(app.repo, server.ssh_url(app.name), "main", key=server.keys["alice"]).code == 0
        first = change(app, "through the first replica")
        git(app.repo, "checkout", "-q", "-b", "hotfix/y")
        second = change(app, "through the second replica")
        alice = push_in_background(
            app.repo, server.ssh_url(app.name), f"{first}:refs/heads/main", key=server.keys["alice"]
        )
        read_until(alice, "canary 50%")
        bob = push(app.repo, replica.http_url(app.name, user="bob"), "hotfix/y")
        alice.communicate(timeout=180)
        assert alice.returncode == 0
        assert bob.code == 0, bob
        assert any(f"staging is being released: {first[:12]} by alice" in x for x in bob.remote), bob
        records = history_json(server_kubeconfig(server), app.staging, app=app.name)
        assert [(r["commit"], r["status"]) for r in records[-2:]] == [(first, "deployed"), (second, "deployed")]
    finally:
        assert replica.stop() == 0


def test_a_restarted_server_brings_existing_repositories_to_its_config(
    cluster: Running, registry_host: str, keys: dict[str, Key], tmp_path: Path
) -> None:
    """An operator's change of limits.maxPushMb, and a deployer installed at another path, reach the apps that
    already have a repository: each start writes their git settings and hook again."""
    config = server_config(
        data=tmp_path / "data",
        kubeconfig=cluster.kubeconfig,
        registry=registry_host,
        bound={},
        users={"alice": {"keys": [keys["alice"].public]}},
        limits={"maxPushMb": 2},
    )
    config["apps"] = {"restarted": {"environments": {"staging": "restarted-staging"}}}
    first = start_server(tmp_path / "one", config)
    app = make_app(tmp_path, "restarted", registry_host)
    pushed = push(app.repo, first.ssh_url("restarted"), "main:feature", key=keys["alice"])  # claimed by none
    assert pushed.code == 0, pushed
    assert first.stop() == 0
    bare = first.repo("restarted")
    hook = bare / "hooks" / "pre-receive"
    assert " -I -S " in hook.read_text()
    hook.write_text("#!/bin/sh\nexec /nowhere/python -m deployer.server.hook\n")  # an earlier install's
    config["limits"]["maxPushMb"] = 7
    second = start_server(tmp_path / "two", config)
    try:
        assert git(bare, "config", "receive.maxInputSize") == str(7 * 2**20)
        assert "/nowhere/" not in hook.read_text()
        again = push(app.repo, second.ssh_url("restarted"), "main:feature2", key=keys["alice"])
        assert again.code == 0, again
    finally:
        assert second.stop() == 0
