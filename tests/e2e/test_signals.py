"""A signal that breaks is not a pass: dropped watches and 5xx on watch requests during a canary's intervals never
promote a bad canary and never shorten a good one's; a round without a signal fails; a failed promotion ends only
once the version put back has rolled out, or says it has not. Each test has its own sandbox (faults, timings)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kube_sandbox.testing import Running, wait_for
from kubernetes import client
from routes import vs_split
from support import run_deployer_process
from test_release import TEMPLATES, deploy_yaml, start_deploy

from deployer.kube import connect
from deployer.kube.client import LEASES
from deployer.kube.lease import Lock, LockLost

pytestmark = pytest.mark.sandbox_only
IMAGE = "127.0.0.1:5000/shop"


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., Running]) -> Running:
    return sandbox_factory(ready_delay=0.2)


@pytest.fixture
def namespace(sandbox: Running) -> Iterator[str]:
    name = f"s-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(sandbox.api()).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"istio-injection": "enabled"}))
    )
    yield name


def make_app(tmp_path: Path, namespace: str, *, steps: str, interval: str) -> Path:
    repo = tmp_path / "shop"
    (repo / "templates").mkdir(parents=True)
    (repo / "deploy.yaml").write_text(deploy_yaml(namespace, steps=steps, interval=interval, threshold=1))
    (repo / "Dockerfile").write_text("FROM scratch\n")
    for name, text in TEMPLATES.items():
        (repo / "templates" / name).write_text(text)
    return repo


class Deploy:
    """`deployer deploy -o json` running in the background; its events as they arrive."""

    def __init__(self, app: Path, sandbox: Running, version: str) -> None:
        self.started = time.monotonic()
        self.process = start_deploy(app, sandbox, version)
        self.events: list[str] = []
        self.arrived: list[float] = []  # when each event line was read: a poll's 50 ms would blur intervals
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.arrived.append(time.monotonic())
            try:
                self.events.append(str(json.loads(line).get("message", "")))
            except ValueError:
                self.events.append(line.strip())

    def wait_event(self, text: str, timeout: float = 30) -> float:
        """When the first event containing `text` arrived."""
        index = wait_for(
            lambda: next((i + 1 for i, e in enumerate(self.events) if text in e), None),
            timeout=timeout,
            what=f"event {text!r}",
        )
        return self.arrived[index - 1]

    def finish(self) -> tuple[int, str]:
        code = self.process.wait(timeout=120)
        self.reader.join(timeout=10)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()


def deployed(sandbox: Running, app: Path, version: str) -> None:
    run = Deploy(app, sandbox, version)
    code, err = run.finish()
    assert code == 0, err


def image_of(sandbox: Running, namespace: str) -> str:
    deployment = client.AppsV1Api(sandbox.api()).read_namespaced_deployment("shop-primary", namespace)
    return str(deployment.spec.template.spec.containers[0].image)


def weights(sandbox: Running, namespace: str) -> list[int]:
    vs = client.CustomObjectsApi(sandbox.api()).get_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", "shop"
    )
    return vs_split(vs)


def test_a_dropped_watch_does_not_end_the_interval_and_a_canary_going_unready_later_is_not_promoted(
    sandbox: Running, namespace: str, tmp_path: Path
) -> None:
    app = make_app(tmp_path, namespace, steps="[50]", interval="5s")
    deployed(sandbox, app, "v1")
    # ready 0.2 s after start, unready 2.5 s later: inside the 5 s interval, after the watch is dropped
    sandbox.control("/sandbox/pods", {"image": f"{IMAGE}:late", "behaviour": "unready-after", "after": 2.5})
    run = Deploy(app, sandbox, "late")
    run.wait_event("weights stable 50% / canary 50%")
    # drop the interval's watch as soon as it is open (the deployer opens it right after the weights change)
    wait_for(lambda: sandbox.control("/sandbox/drop-watches")["dropped"] >= 1, timeout=5, what="a watch to drop")
    code, err = run.finish()
    assert code == 1, err
    assert "canary rolled back: 1 failed rounds (threshold 1)" in err
    assert re.search(r"readiness watch: shop-canary: [01]/2 pods ready \(a pod went unready\)", err), err
    assert image_of(sandbox, namespace) == f"{IMAGE}:v1"
    assert weights(sandbox, namespace) == [100, 0]


def test_a_good_canary_keeps_its_full_intervals_through_dropped_watches_and_5xx_on_watch_requests(
    sandbox: Running, namespace: str, tmp_path: Path
) -> None:
    app = make_app(tmp_path, namespace, steps="[20, 50]", interval="1500ms")
    deployed(sandbox, app, "v1")
    sandbox.control("/sandbox/faults", {"verb": "watch", "resource": "deployments", "percent": 30, "status": 500})
    stop = threading.Event()

    def drop() -> None:
        while not stop.wait(0.3):
            sandbox.control("/sandbox/drop-watches")

    dropper = threading.Thread(target=drop, daemon=True)
    dropper.start()
    try:
        run = Deploy(app, sandbox, "v2")
        first = run.wait_event("weights stable 80% / canary 20%")
        second = run.wait_event("weights stable 50% / canary 50%")
        promoting = run.wait_event("promoting")
        code, err = run.finish()
    finally:
        stop.set()
        dropper.join(timeout=5)
        sandbox.control("/sandbox/faults", method="DELETE")
    assert code == 0, err
    assert second - first >= 1.5 and promoting - second >= 1.5, "each interval ran its full 1.5 s"
    assert image_of(sandbox, namespace) == f"{IMAGE}:v2"


def test_a_round_that_cannot_observe_the_canary_fails_and_is_rolled_back(
    sandbox: Running, namespace: str, tmp_path: Path
) -> None:
    app = make_app(tmp_path, namespace, steps="[50]", interval="1s")
    deployed(sandbox, app, "v1")
    run = Deploy(app, sandbox, "v2")
    run.wait_event("weights stable 50% / canary 50%")
    for verb in ("list", "watch"):  # the interval's watch and its relists fail; reads of one object still work
        sandbox.control("/sandbox/faults", {"verb": verb, "resource": "deployments", "percent": 100, "status": 503})
    sandbox.control("/sandbox/drop-watches")  # an open watch would still see everything
    try:
        code, err = run.finish()
    finally:
        sandbox.control("/sandbox/faults", method="DELETE")
    assert code == 1, err
    assert "readiness watch: no signal from the cluster at the end of the interval (HTTP 503" in err
    assert image_of(sandbox, namespace) == f"{IMAGE}:v1"
    assert weights(sandbox, namespace) == [100, 0]


@pytest.mark.parametrize("put_back_serves", [True, False])
def test_a_failed_promotion_ends_only_once_the_version_put_back_has_rolled_out_or_says_it_has_not(
    sandbox_factory: Callable[..., Running], tmp_path: Path, put_back_serves: bool
) -> None:
    sandbox = sandbox_factory(ready_delay=1.0)  # pods take a second: room to act once promotion starts
    namespace = f"p-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(sandbox.api()).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"istio-injection": "enabled"}))
    )
    app = make_app(tmp_path, namespace, steps="[50]", interval="300ms")
    deployed(sandbox, app, "v1")
    run = Deploy(app, sandbox, "v2")
    run.wait_event("promoting")
    sandbox.control("/sandbox/pods", {"image": f"{IMAGE}:v2", "behaviour": "never-ready"})
    if not put_back_serves:
        sandbox.control("/sandbox/pods", {"image": f"{IMAGE}:v1", "behaviour": "never-ready"})
    code, err = run.finish()
    assert code == 1, err
    assert "promotion failed: " in err
    records = client.CoreV1Api(sandbox.api()).list_namespaced_secret(namespace, label_selector="owner=deployer")
    assert {r.metadata.labels["deployer.dev/status"] for r in records.items} == {"deployed", "rolled-back"}
    history = subprocess.run(
        ["deployer", "history", "--env", "test", "--repo", str(app), "--kubeconfig", str(sandbox.kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout
    if put_back_serves:
        assert "revision 1 restored and rolled out" in err and "revision 1 restored and rolled out" in history
        assert image_of(sandbox, namespace) == f"{IMAGE}:v1"
        ready = client.AppsV1Api(sandbox.api()).read_namespaced_deployment("shop-primary", namespace).status
        assert (ready.ready_replicas, ready.updated_replicas) == (2, 2), "stable's pods are all v1 again"
    else:
        assert "revision 1 re-applied but NOT rolled out" in err and "NOT rolled out" in history


def test_a_cluster_that_stops_answering_gets_one_line_and_no_traceback(
    sandbox: Running, namespace: str, tmp_path: Path
) -> None:
    app = make_app(tmp_path, namespace, steps="[50]", interval="300ms")
    deployed(sandbox, app, "v1")
    sandbox.control("/sandbox/faults", {"percent": 100, "status": 503})
    try:
        result = run_deployer_process(
            "deploy", "--env", "test", "--repo", app, "--kubeconfig", sandbox.kubeconfig, "--image", f"{IMAGE}:v2"
        )
    finally:
        sandbox.control("/sandbox/faults", method="DELETE")
    assert result.code == 1
    assert result.err.splitlines() == [
        "error: no answer after retries: HTTP 503 Service Unavailable; run the command again once it answers"
    ]


def test_a_lock_that_cannot_be_renewed_or_was_taken_over_refuses_to_act(sandbox: Running, namespace: str) -> None:
    async def scenario() -> tuple[str, str, str]:
        async with connect(sandbox.kubeconfig) as api:
            lock = Lock(api, namespace=namespace, name="deployer-shop-test", holder="first", duration=2)
            other = Lock(api, namespace=namespace, name="deployer-shop-test", holder="second", duration=2, timeout=10)
            async with lock:
                lock.ensure_held()  # just taken: ours
                sandbox.control("/sandbox/faults", {"resource": "leases", "percent": 100, "status": 503})
                await asyncio.sleep(2.5)
                with pytest.raises(LockLost) as silent:
                    lock.ensure_held()
                sandbox.control("/sandbox/faults", method="DELETE")
                await other.__aenter__()  # the expired lease is taken over; the first holder's next renewal finds out
                await asyncio.sleep(1.0)
                with pytest.raises(LockLost) as taken:
                    lock.ensure_held()
            # the first holder's exit leaves the second's lease alone
            holder = (await api.read(LEASES, namespace, "deployer-shop-test"))["spec"]["holderIdentity"]
            await other.__aexit__(None, None, None)
            return silent.value.message, taken.value.message, holder

    silent, taken, holder = asyncio.run(scenario())
    assert re.match(r"lost the environment's lock: not renewed for \ds \(the lease lasts 2s\); stopped", silent), silent
    assert taken.startswith("lost the environment's lock: second holds it now; stopped without changing traffic")
    assert holder == "second"


def test_a_rollback_says_so_when_the_stable_version_is_not_serving_either(
    sandbox: Running, namespace: str, tmp_path: Path
) -> None:
    app = make_app(tmp_path, namespace, steps="[50]", interval="300ms")
    deployed(sandbox, app, "v1")
    for image in (f"{IMAGE}:v1", f"{IMAGE}:bad"):
        sandbox.control("/sandbox/pods", {"image": image, "behaviour": "never-ready"})
    result = run_deployer_process(
        "deploy", "--env", "test", "--repo", app, "--kubeconfig", sandbox.kubeconfig, "--image", f"{IMAGE}:bad",
        "--rollout-timeout", "4",
    )  # fmt: skip
    assert result.code == 1
    [line] = result.err.splitlines()
    assert "canary rolled back: the canary never became ready: " in line
    assert line.endswith(
        '; the stable version is NOT rolled out: deployment "shop-primary" exceeded its progress deadline'
    )
