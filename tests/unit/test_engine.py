"""The release engine through in-memory fakes of its ports (tests/fakes.py): promote, roll back, abort, promote on
request, a failed promotion, pre-deploy Jobs, rollback and recovery from every point a process can die at, each
in milliseconds. What a user sees on a real cluster is tested on the sandbox (tests/e2e/)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from typing import Any

import pytest
from fakes import Fakes, Killed, image_of

from deployer.config.model import CanaryPolicy, Job
from deployer.errors import DeployError, RolledBack
from deployer.events import Event, Phase, Record, Status
from deployer.pipeline.operations import Environment, recover, rollback
from deployer.pipeline.release import ReleaseOptions, release
from deployer.pipeline.steps import ImageRef, Rendered
from deployer.render.manifests import RenderedObject

NS, APP, ENV = "shop", "web", "prod"
HOME = {"name": "home", "retries": 0, "http": {"path": "/", "port": 8080}}
ENVIRONMENT = Environment(app=APP, environment=ENV, namespace=NS)
POLICY = CanaryPolicy.model_validate({"steps": [10, 50], "threshold": 1, "interval": "0s", "grace": "0s"})


def objects(version: str, *, config: str = "1") -> list[dict[str, Any]]:
    labels = {"app": "web"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web-config", "namespace": NS},
            "data": {"level": config},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": dict(labels)},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": f"registry/web:{version}",
                                "envFrom": [{"configMapRef": {"name": "web-config"}}],
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": dict(labels), "ports": [{"name": "http", "port": 80}]},
        },
    ]


def rendered(version: str, **kwargs: Any) -> Rendered:
    return Rendered(
        app=APP,
        environment=ENV,
        namespace=NS,
        release=APP,
        objects=tuple(RenderedObject(o, "templates/web.yaml") for o in objects(version, **kwargs)),
        values={"version": version},
    )


def push(
    fakes: Fakes,
    version: str,
    *,
    policy: CanaryPolicy = POLICY,
    events: list[Event] | None = None,
    jobs: tuple[Job, ...] = (),
    **kwargs: Any,
) -> Record:
    sink = events.append if events is not None else (lambda e: None)
    return asyncio.run(
        release(
            fakes.ports(),
            rendered=rendered(version, **kwargs),
            policy=policy,
            image=ImageRef(repository="registry/web", tag=version),
            options=ReleaseOptions(),
            sink=sink,
            jobs=jobs,
        )
    )


def serving(fakes: Fakes) -> str | None:
    """The image every route's destination serves, checked on the way: each destination a route names is a
    Service selecting pods of a Deployment that is rolled out with replicas; one image for all of them."""
    images = set()
    for (kind, _), virtual in fakes.cluster.objects.items():
        if kind != "VirtualService":
            continue
        for http in virtual["spec"]["http"]:
            for destination in http["route"]:
                if destination.get("weight", 100) == 0:
                    continue
                service = destination["destination"]["host"].split(".")[0]
                images |= _images_behind(fakes, service)
    if not images and ("Service", "web") in fakes.cluster.objects:  # no route: the Service's own endpoints
        images = _images_behind(fakes, "web")
    assert len(images) <= 1, f"routes serve several versions: {images}"
    return images.pop() if images else None


def _images_behind(fakes: Fakes, service: str) -> set[str]:
    svc = fakes.cluster.objects.get(("Service", service))
    assert svc is not None, f"a route names Service {service}, which does not exist"
    selector = svc["spec"]["selector"]
    behind = [
        d
        for d in fakes.cluster.deployments()
        if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
        and int(d["spec"].get("replicas", 1)) > 0
    ]
    assert behind, f"Service {service} selects no running pods"
    for deployment in behind:
        assert deployment["status"].get("readyReplicas"), f"{deployment['metadata']['name']} is not ready"
    return {image_of(d) for d in behind}


def weights(fakes: Fakes) -> list[tuple[int, int]]:
    """Every weight the VirtualService was applied with, in order (stable, canary)."""
    seen = []
    for op in fakes.world.log:
        if op.what == "apply" and op.kind == "VirtualService":
            route = next(h for h in op.detail["obj"]["spec"]["http"] if h.get("name") == "deployer")["route"]
            canary = sum(d.get("weight", 0) for d in route if "-canary" in d["destination"]["host"])
            seen.append((100 - canary, canary))
    return seen


def released(fakes: Fakes) -> Fakes:
    push(fakes, "v1")
    fakes.world.log.clear()
    return fakes


# --- releases --------------------------------------------------------------------------------------------------


def test_a_first_release_serves_from_primaries_without_a_canary() -> None:
    fakes = Fakes()
    record = push(fakes, "v1")
    assert (record.revision, record.status, record.phase) == (1, Status.DEPLOYED, Phase.DONE)
    assert serving(fakes) == "registry/web:v1"
    assert fakes.cluster.deployment("web") is None  # the rendered Deployment is never applied
    assert fakes.cluster.deployment("web-canary") is None
    selector = fakes.cluster.objects[("Service", "web")]["spec"]["selector"]
    assert selector == {"app": "web", "deployer.dev/track": "primary"}
    assert weights(fakes) == [(100, 0)]


def test_a_good_canary_takes_every_step_then_is_promoted_and_removed() -> None:
    fakes = released(Fakes())
    record = push(fakes, "v2", config="2")
    assert record.status is Status.DEPLOYED and [r.weight for r in record.rounds] == [10, 50]
    assert weights(fakes) == [(90, 10), (50, 50), (100, 0)]
    assert serving(fakes) == "registry/web:v2"
    assert fakes.cluster.deployment("web-canary") is None
    assert ("ConfigMap", "web-config-canary") not in fakes.cluster.objects
    assert fakes.cluster.objects[("ConfigMap", "web-config")]["data"] == {"level": "2"}
    log = fakes.world.log
    canary_up = next(i for i, op in enumerate(log) if op.what == "apply" and op.name == "web-canary")
    first_weight = next(i for i, op in enumerate(log) if op.kind == "VirtualService")
    assert canary_up < first_weight, "a route named the canary before it existed"
    primary_changed = next(i for i, op in enumerate(log) if op.what == "apply" and op.name == "web-primary")
    assert primary_changed > first_weight, "stable changed before promotion"
    canary_gone = next(i for i, op in enumerate(log) if op.what == "delete" and op.name == "web-canary")
    assert canary_gone > len(log) - 6 and weights(fakes)[-1] == (100, 0)


def test_a_canary_that_goes_unready_is_rolled_back_and_stable_never_changed() -> None:
    fakes = released(Fakes())
    fakes.cluster.failing.add("registry/web:v2")
    with pytest.raises(RolledBack, match="became unready"):
        push(fakes, "v2")
    record = asyncio.run(fakes.records.history())[-1]
    assert (record.status, record.restored) == (Status.ROLLED_BACK, True)
    assert serving(fakes) == "registry/web:v1"
    assert fakes.cluster.deployment("web-canary") is None
    assert not any(op.name == "web-primary" for op in fakes.world.log)
    assert weights(fakes) == [(90, 10), (100, 0)]


def test_a_lost_watch_fails_the_round_it_could_not_observe() -> None:
    fakes = released(Fakes())
    fakes.cluster.watch_lost = True
    with pytest.raises(RolledBack, match="no signal from the cluster"):
        push(fakes, "v2")
    assert serving(fakes) == "registry/web:v1"


def test_a_failing_http_check_rolls_back_after_the_threshold() -> None:
    fakes = released(Fakes())
    fakes.probes.http = lambda: (500, "boom")
    policy = CanaryPolicy.model_validate(
        {"steps": [10, 50], "threshold": 2, "interval": "0s", "grace": "0s", "checks": [HOME]}
    )
    with pytest.raises(RolledBack, match="home"):
        push(fakes, "v2", policy=policy)
    rounds = asyncio.run(fakes.records.history())[-1].rounds
    assert [(r.weight, r.ok) for r in rounds] == [(10, False), (10, False)]  # a failed round does not advance
    assert any(a.startswith("pod web-canary-") for a in fakes.probes.asked)
    assert serving(fakes) == "registry/web:v1"


def test_a_canary_that_never_rolls_out_gets_no_traffic_and_is_rolled_back() -> None:
    fakes = released(Fakes())
    fakes.cluster.never_ready.add("registry/web:v2")
    with pytest.raises(RolledBack, match="never became ready"):
        push(fakes, "v2")
    assert weights(fakes) == [(100, 0)]
    assert serving(fakes) == "registry/web:v1"


def test_a_canary_without_sidecars_is_refused_before_any_traffic_moves() -> None:
    fakes = released(Fakes())
    fakes.cluster.sidecars = False
    with pytest.raises(RolledBack, match="istio-injection=enabled"):
        push(fakes, "v2")
    assert weights(fakes) == [(100, 0)]


def test_abort_and_promote_requests_act_at_the_next_round() -> None:
    fakes = released(Fakes())
    fakes.records.requests[2] = "abort"
    with pytest.raises(RolledBack, match="aborted by request"):
        push(fakes, "v2")
    fakes.records.requests[3] = "promote"
    events: list[Event] = []
    record = push(fakes, "v3", events=events)
    assert record.status is Status.DEPLOYED and record.rounds == ()
    assert any("promotion requested" in e.message for e in events)
    assert serving(fakes) == "registry/web:v3"


def test_a_failed_promotion_puts_the_last_release_back_and_says_so() -> None:
    fakes = released(Fakes())
    fakes.cluster.stuck.add(("web-primary", "registry/web:v2"))
    with pytest.raises(RolledBack, match=r"promotion failed.*revision 1 restored and rolled out"):
        push(fakes, "v2")
    assert serving(fakes) == "registry/web:v1"
    assert asyncio.run(fakes.records.history())[-1].restored is True


def test_a_failed_pre_deploy_job_applies_nothing() -> None:
    fakes = released(Fakes())
    fakes.jobs.failing["migrate"] = "BackoffLimitExceeded"
    job = Job.model_validate({"name": "migrate", "command": ["./migrate"]})
    with pytest.raises(DeployError, match=r"pre-deploy Job migrate.*failed"):
        push(fakes, "v2", jobs=(job,))
    assert [op.what for op in fakes.world.log] == ["save", "save", "save"]
    record = asyncio.run(fakes.records.history())[-1]
    assert (record.status, record.phase) == (Status.FAILED, Phase.DONE)


def test_rollback_re_applies_a_stored_release_without_a_canary() -> None:
    fakes = released(Fakes())
    push(fakes, "v2")
    record = asyncio.run(rollback(fakes.ports(), env=ENVIRONMENT))
    assert (record.revision, record.rollback_of, record.status) == (3, 1, Status.DEPLOYED)
    assert serving(fakes) == "registry/web:v1"
    assert fakes.cluster.deployment("web-canary") is None


def test_a_record_round_trips_through_its_stored_form() -> None:
    fakes = released(Fakes())
    push(fakes, "v2")
    record = asyncio.run(fakes.records.history())[-1]
    assert Record.from_json(record.to_json()) == record
    old = {"revision": 4, "commit": "abc", "image": "i", "status": "pending", "phase": "pre-deploy migrate"}
    assert (Record.from_json(old).phase, Record.from_json(old).job) == (Phase.PRE_DEPLOY, "migrate")


# --- recovery: the process dies before each change a release makes, then the next holder recovers --------------


def first() -> Fakes:
    return Fakes()


def upgrade() -> Fakes:
    return released(Fakes())


def failing() -> Fakes:
    fakes = released(Fakes())
    fakes.cluster.failing.add("registry/web:v2")
    return fakes


def failed_promotion() -> Fakes:
    fakes = released(Fakes())
    fakes.cluster.stuck.add(("web-primary", "registry/web:v2"))
    return fakes


UPGRADES = {"promoted": upgrade, "rolled-back": failing, "promotion-failed": failed_promotion}


def changes_of(setup: Any, version: str) -> list[str]:
    """The changes a release makes, in order: each is a point the process may die before."""
    fakes = setup()
    with contextlib.suppress(RolledBack):
        push(fakes, version)
    return [f"{i}-{op.what}-{op.kind}-{op.name}" for i, op in enumerate(fakes.world.log)]


def recovered_after_kill(setup: Any, version: str, kill_at: int) -> tuple[Fakes, list[int]]:
    fakes = setup()
    fakes.world.kill_at = kill_at
    with pytest.raises(Killed):
        push(fakes, version)
    fakes.world.kill_at = None
    fakes.cluster.stuck.clear()  # whatever broke the release is not what a recovery is tested on
    return fakes, asyncio.run(recover(fakes.ports(), env=ENVIRONMENT))


KILLS = [(name, i, op) for name, setup in UPGRADES.items() for i, op in enumerate(changes_of(setup, "v2")) if i]
FIRST = changes_of(first, "v1")


@pytest.mark.parametrize(
    ("scenario", "kill_at"), [(n, i) for n, i, _ in KILLS], ids=[f"{n}-{op}" for n, _, op in KILLS]
)
def test_an_upgrade_killed_at_any_point_recovers_to_the_live_release(scenario: str, kill_at: int) -> None:
    fakes, recovered = recovered_after_kill(UPGRADES[scenario], "v2", kill_at)
    history = asyncio.run(fakes.records.history())
    assert recovered == [2] and [r.status for r in history] == [Status.DEPLOYED, Status.ROLLED_BACK]
    assert history[-1].reason.startswith("recovered: the deployer stopped during")
    assert serving(fakes) == "registry/web:v1", "what serves is not what the record says is live"
    assert fakes.cluster.deployment("web-canary") is None
    assert not any(name.endswith("-canary") for _, name in fakes.cluster.objects)


@pytest.mark.parametrize("kill_at", range(1, len(FIRST)), ids=FIRST[1:])
def test_a_first_release_killed_at_any_point_is_recorded_as_unverified(kill_at: int) -> None:
    fakes, recovered = recovered_after_kill(first, "v1", kill_at)
    record = asyncio.run(fakes.records.history())[-1]
    assert recovered == [1] and record.status is Status.FAILED
    assert "first release" in record.reason and "unverified" in record.reason
    live = serving(fakes)  # whatever a route names has pods
    assert live in (None, "registry/web:v1")
    assert ("VirtualService", "web") not in fakes.cluster.objects or live == "registry/web:v1"


def test_recovery_of_an_earlier_killed_release_leaves_the_next_one_alone() -> None:
    fakes, _ = recovered_after_kill(upgrade, "v2", 8)
    assert asyncio.run(recover(fakes.ports(), env=ENVIRONMENT)) == []
    record = push(fakes, "v3")
    assert record.revision == 3 and serving(fakes) == "registry/web:v3"


def test_the_fakes_apply_like_the_cluster_keeps_other_managers_fields() -> None:
    fakes = Fakes()
    deployment = copy.deepcopy(objects("v1")[1])
    asyncio.run(fakes.cluster.apply([deployment], namespace=NS))
    size = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 0}}
    asyncio.run(fakes.cluster.apply([size], namespace=NS, manager="other"))
    live = fakes.cluster.deployment("web")
    assert live is not None and live["spec"]["replicas"] == 0 and image_of(live) == "registry/web:v1"


def test_routes_use_the_istio_version_the_cluster_serves_or_one_line_names_what_is_missing() -> None:
    fakes = Fakes()
    fakes.cluster.served = {("networking.istio.io/v1beta1", "VirtualService")}
    push(fakes, "v1")
    assert fakes.cluster.objects[("VirtualService", "web")]["apiVersion"] == "networking.istio.io/v1beta1"
    bare = Fakes()
    bare.cluster.served = set()
    with pytest.raises(DeployError, match=r"serves no VirtualService in networking.istio.io \(v1 or v1beta1\)"):
        push(bare, "v1")
    assert [op.what for op in bare.world.log] == [], "nothing was applied or recorded"


def test_switching_the_canary_off_and_on_prunes_only_what_the_deployer_made() -> None:
    off = CanaryPolicy.model_validate({"enabled": False, "grace": "0s"})
    fakes = released(Fakes())
    push(fakes, "v2", policy=off)
    assert serving(fakes) == "registry/web:v2" and fakes.cluster.deployment("web-primary") is None
    push(fakes, "v3")  # back to a canary: `web`, made by the deployer, goes once the primary serves
    assert serving(fakes) == "registry/web:v3" and fakes.cluster.deployment("web") is None
    adopted = released(Fakes())
    push(adopted, "v2", policy=off)
    web = adopted.cluster.deployment("web")
    assert web is not None
    web["metadata"]["managedFields"] = [{"manager": "helm", "operation": "Update"}]
    events: list[Event] = []
    push(adopted, "v3", events=events)
    assert any(e.message == "kept Deployment/web: made by helm" for e in events)
    kept = adopted.cluster.deployment("web")
    assert kept is not None and kept["spec"]["replicas"] == 0 and serving(adopted) == "registry/web:v3"


def test_a_pod_proxy_check_reset_by_strict_mtls_says_how_to_check_through_the_mesh() -> None:
    fakes = released(Fakes())
    fakes.probes.http = lambda: (503, "error trying to reach service: read: connection reset by peer")
    policy = CanaryPolicy.model_validate(
        {"steps": [10], "threshold": 1, "interval": "0s", "grace": "0s", "checks": [HOME]}
    )
    with pytest.raises(
        RolledBack, match=re.escape("STRICT mTLS resets: give the server a way into the mesh (meshClient")
    ):
        push(fakes, "v2", policy=policy)


def test_a_mesh_client_server_checks_the_services_host_pinned_to_the_canary() -> None:
    fakes = released(Fakes())
    policy = CanaryPolicy.model_validate(
        {"steps": [10], "threshold": 1, "interval": "0s", "grace": "0s", "checks": [HOME]}
    )
    asyncio.run(
        release(
            fakes.ports(),
            rendered=rendered("v2"),
            policy=policy,
            image=ImageRef(repository="registry/web", tag="v2"),
            options=ReleaseOptions(mesh_client="http://shop@127.0.0.1:1"),
        )
    )
    # the check's container port 8080 has no Service port of its own: the Service's only port (80) reaches it
    assert fakes.probes.asked == [
        "mesh http://web.shop.svc.cluster.local:80/ {'x-deployer-canary': 'true'} via http://shop@127.0.0.1:1"
    ]


def test_a_promote_request_ends_a_long_interval_within_a_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deployer.pipeline.release.REQUEST_POLL", 0.05)
    fakes = released(Fakes())
    long = CanaryPolicy.model_validate({"steps": [10, 50], "threshold": 1, "interval": "1h", "grace": "0s"})
    events: list[Event] = []

    async def ask_soon() -> Record:
        release_task = asyncio.create_task(
            release(
                fakes.ports(),
                rendered=rendered("v2"),
                policy=long,
                image=ImageRef(repository="registry/web", tag="v2"),
                sink=events.append,
            )
        )
        await asyncio.sleep(0.2)
        fakes.records.requests[2] = "promote"
        return await asyncio.wait_for(release_task, 5)

    record = asyncio.run(ask_soon())
    assert record.status is Status.DEPLOYED and [r.weight for r in record.rounds] == [10]
    assert any(e.message == "a request ends the interval early" for e in events)
    assert serving(fakes) == "registry/web:v2"
