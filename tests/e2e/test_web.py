"""The web view of `deployer serve`, in a real browser (Debian's chromium driven by playwright): sign in with a
token, watch a canary go step by step without a reload, promote one and abort another with the buttons, and
check what the cluster runs and where git's branch is afterwards. Rights, sessions and CSRF are checked with
plain HTTP requests. Screenshots go to $DEPLOYER_TEST_ARTIFACTS (default .state/artifacts), not to git."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from gitserver import (
    App,
    GitServer,
    git_env,
    history_json,
    make_app,
    new_token,
    push,
    server_config,
    start_server,
    token_entry,
)
from kube_sandbox.testing import Registry, Running
from kubernetes import client
from routes import vs_split
from support import STATE, commit, edit

from deployer.server.web import MAX_STREAMS

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not shutil.which("buildah"), reason="buildah: make setup"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium: make setup"),
]
MESH = {"istio-injection": "enabled"}
ARTIFACTS = Path(os.environ.get("DEPLOYER_TEST_ARTIFACTS") or STATE / "artifacts")
# what the chromium of these machines needs to start headless, as root, with no network beyond loopback
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Site:
    server: GitServer
    app: App
    api: client.ApiClient
    kubeconfig: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def env_page(self) -> str:
        return f"{self.base}/ui/{self.app.name}/staging"

    def signed_in(self, user: str) -> requests.Session:
        session = requests.Session()
        answer = session.post(f"{self.base}/ui/signin", data={"token": self.server.tokens[user], "next": "/ui/"})
        assert answer.status_code == 200 and "Releases" in answer.text, answer.text
        return session


@pytest.fixture
def site(cluster: Running, registry: Registry, tmp_path: Path) -> Iterator[Site]:
    app = make_app(tmp_path, "webview", os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host)
    api = cluster.api()
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=app.staging, labels=MESH)))
    tokens = {"alice": new_token(), "bob": new_token()}
    config = server_config(
        data=tmp_path / "data",
        kubeconfig=cluster.kubeconfig,
        registry=os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host,
        bound={"staging": app.staging},
        users={
            "alice": {"tokens": [token_entry(tokens["alice"])]},
            "bob": {"tokens": [token_entry(tokens["bob"])], "environments": ["prod"]},  # may watch staging only
        },
    )
    config["apps"] = {app.name: {"environments": {"staging": app.staging, "prod": app.prod}}}
    server = start_server(tmp_path / "server", config)
    server.tokens = tokens
    first = push(app.repo, server.http_url(app.name), "main")
    assert first.code == 0, first
    # a canary long enough to watch and to act on: three steps of 3s
    edit(app.repo / "deploy.yaml", "steps: [50]\n      interval: 1s", "steps: [20, 50, 80]\n      interval: 3s")
    yield Site(server, app, api, cluster.kubeconfig)
    server.stop()
    core.delete_namespace(app.staging)


def push_change(site: Site, text: str) -> tuple[str, subprocess.Popen[str]]:
    (site.app.repo / "app" / "greeting.txt").write_text(f"{text}\n")
    sha = commit(site.app.repo, text)
    url = site.server.http_url(site.app.name)
    proc = subprocess.Popen(
        ["git", "-C", str(site.app.repo), "push", url, "main"],
        env=git_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return sha, proc


def primary_image(site: Site) -> str:
    deployment = client.AppsV1Api(site.api).read_namespaced_deployment(f"{site.app.name}-primary", site.app.staging)
    return str(deployment.spec.template.spec.containers[0].image)


def live(site: Site) -> dict[str, Any]:
    """The live release's record, as `deployer history` reads it."""
    history = history_json(site.kubeconfig, site.app.staging, app=site.app.name)
    return next(r for r in reversed(history) if r["status"] == "deployed")


def vs_weights(site: Site) -> tuple[int, int]:
    vs = client.CustomObjectsApi(site.api).get_namespaced_custom_object(
        "networking.istio.io", "v1", site.app.staging, "virtualservices", site.app.name
    )
    stable, canary = vs_split(vs)
    return stable, canary


def test_a_canary_watched_live_then_promoted_and_another_aborted_in_the_browser(site: Site) -> None:
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415 - only this test drives a browser

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{site.base}/ui/")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("Token").fill(site.server.tokens["alice"])
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Releases")).to_be_visible()
        row = page.locator(f"tr[data-env='{site.app.name}/staging']")
        expect(row).to_contain_text(site.app.head()[:12])
        expect(row).to_contain_text("deployed (revision 1)")
        page.screenshot(path=str(ARTIFACTS / "web-overview.png"), full_page=True)

        # a canary, watched: the page is loaded once and follows the steps by itself
        page.get_by_role("link", name="staging").click()
        expect(page.locator("h1")).to_contain_text(f"{site.app.name} / staging")
        page.evaluate("window.loadedOnce = true")
        second, proc = push_change(site, "second")
        weights = page.locator("#weights")
        expect(weights).to_have_text("stable 80% / canary 20%", timeout=60_000)
        expect(page.locator("#rounds tbody tr").first).to_contain_text("readiness", timeout=15_000)
        expect(weights).to_have_text("stable 50% / canary 50%", timeout=15_000)
        assert page.evaluate("window.loadedOnce") is True, "the page updated without a reload"
        assert page.locator("#weight").evaluate("meter => meter.value") == 50
        expect(page.locator("#log")).to_contain_text("weights stable 50% / canary 50%")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        page.screenshot(path=str(ARTIFACTS / "web-canary-phone.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(ARTIFACTS / "web-canary.png"), full_page=True)
        page.get_by_role("button", name="Promote now").click()
        expect(page.locator(".said")).to_contain_text("Promotion asked")
        expect(page.locator("#result")).to_have_text("deployed", timeout=60_000)
        assert proc.wait(timeout=60) == 0, proc.stdout.read() if proc.stdout else ""
        assert site.server.ref("refs/heads/main", site.app.name) == second
        promoted = live(site)
        assert (promoted["revision"], promoted["commit"]) == (2, second)
        assert primary_image(site) == promoted["image"], "what the record calls live is what runs"
        assert vs_weights(site) == (100, 0)
        expect(page.locator("#rounds tbody tr")).not_to_have_count(0)
        assert page.locator("#rounds tbody tr").count() < 3 * 2, "promoted before the last steps"

        # another, aborted with the button
        third, proc = push_change(site, "third")
        expect(weights).to_have_text("stable 80% / canary 20%", timeout=60_000)
        expect(page.locator("#phase")).to_have_text("canary")
        page.get_by_role("button", name="Abort (roll back)").click()
        expect(page.locator("#result")).to_have_text("rolled-back", timeout=60_000)
        expect(page.locator("#reason")).to_contain_text("aborted by request")
        assert proc.wait(timeout=60) == 1
        assert site.server.ref("refs/heads/main", site.app.name) == second, "an aborted release moves no branch"
        assert live(site)["commit"] == second
        aborted = history_json(site.kubeconfig, site.app.staging, app=site.app.name)[-1]
        assert (aborted["revision"], aborted["commit"], aborted["status"]) == (3, third, "rolled-back")
        assert primary_image(site) == promoted["image"], "the aborted version is not what runs"
        assert vs_weights(site) == (100, 0)
        expect(page.locator("#history tbody tr")).to_have_count(3)

        # and back to the first release, with its button in the history
        first = history_json(site.kubeconfig, site.app.staging, app=site.app.name)[0]
        page.get_by_role("button", name="Roll back to 1").click()
        expect(page.locator(".said")).to_contain_text("Rollback started")
        expect(page.locator("#live")).to_have_text("4", timeout=60_000)
        expect(page.locator("#log")).to_contain_text("rolled back: revision 4 runs")
        assert primary_image(site) == first["image"]
        assert live(site)["rollback_of"] == 1
        expect(page.locator("#log")).to_contain_text(f"branch main moved to {first['commit'][:12]}")
        assert site.server.ref("refs/heads/main", site.app.name) == first["commit"], "git says what is live"
        browser.close()


def test_sign_in_rights_and_csrf(site: Site) -> None:
    anonymous = requests.get(f"{site.base}/ui/", timeout=10)
    assert anonymous.status_code == 200 and "Sign in" in anonymous.text, "the sign-in page, not the releases"
    assert anonymous.url.startswith(f"{site.base}/ui/signin")
    assert requests.get(f"{site.env_page()}/events", timeout=10).status_code == 401
    assert requests.post(f"{site.env_page()}/promote", data={}, timeout=10).status_code == 401
    wrong = requests.post(f"{site.base}/ui/signin", data={"token": "not-a-token"}, timeout=10)
    assert wrong.status_code == 401 and "That token is not known here." in wrong.text

    alice = site.signed_in("alice")
    cookie = next(c for c in alice.cookies if c.name == "deployer_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/ui/"
    page = alice.get(site.env_page(), timeout=10)
    assert "Promote now" in page.text and site.server.tokens["alice"] not in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    # a cross-site form post carries no SameSite=Strict cookie; even with one, Origin and the token refuse it
    forged = alice.post(
        f"{site.env_page()}/abort", data={"csrf": csrf[1]}, headers={"Origin": "http://evil.example"}, timeout=10
    )
    assert forged.status_code == 403 and "cross-site request refused" in forged.text
    tokenless = alice.post(f"{site.env_page()}/abort", data={}, timeout=10)
    assert tokenless.status_code == 403 and "CSRF token" in tokenless.text
    nothing = alice.post(f"{site.env_page()}/promote", data={"csrf": csrf[1]}, timeout=10)
    assert nothing.status_code == 409 and "no release in flight to promote" in nothing.text

    bob = site.signed_in("bob")  # may deploy to prod only: may watch staging, not act on it
    page = bob.get(site.env_page(), timeout=10)
    assert page.status_code == 200 and "You may watch staging, not change it." in page.text
    assert "Promote now" not in page.text and "Roll back to" not in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    refused = bob.post(f"{site.env_page()}/rollback", data={"csrf": csrf[1], "revision": "1"}, timeout=10)
    assert refused.status_code == 403 and "User &#39;bob&#39; may not rollback in staging." in refused.text
    assert alice.post(f"{site.base}/ui/signout", data={"csrf": csrf[1]}, timeout=10).status_code == 403, "bob's token"
    own = re.search(r'name="csrf" value="([^"]+)"', alice.get(f"{site.base}/ui/", timeout=10).text)
    assert own is not None
    assert alice.post(f"{site.base}/ui/signout", data={"csrf": own[1]}, timeout=10).status_code == 200
    assert "Sign in" in alice.get(f"{site.base}/ui/", timeout=10).text

    # live pages per user are limited (each holds a stream and reads records); closing one frees its place
    streams = [bob.get(f"{site.env_page()}/events", stream=True, timeout=10) for _ in range(MAX_STREAMS)]
    assert [s.status_code for s in streams] == [200] * MAX_STREAMS
    over = bob.get(f"{site.env_page()}/events", stream=True, timeout=10)
    assert over.status_code == 429 and over.text == f"{MAX_STREAMS} live pages are open for bob already: close some\n"
    assert alice.get(f"{site.env_page()}/events", stream=True, timeout=10).status_code == 401  # signed out above
    streams.pop().close()
    bob_stream = _eventually_open(bob, f"{site.env_page()}/events")

    # a page left open (its event stream) does not hold a stopping server
    assert next(bob_stream.iter_lines()) == b"event: state"
    started = time.monotonic()
    assert site.server.stop() == 0
    assert time.monotonic() - started < 10


def _eventually_open(session: requests.Session, url: str) -> requests.Response:
    """An event stream, once the server has noticed a closed one (its next write fails)."""
    deadline = time.monotonic() + 30
    while True:
        answer = session.get(url, stream=True, timeout=10)
        if answer.status_code == 200 or time.monotonic() > deadline:
            assert answer.status_code == 200, answer.text
            return answer
        answer.close()
        time.sleep(0.5)
