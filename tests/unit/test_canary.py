"""The canary's pure layer, exhaustively and without servers: its objects, weights, verdicts and rollout status."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from deployer.canary.analysis import (
    Decision,
    Rollout,
    next_weight,
    rollout_status,
    verdict,
)
from deployer.canary.checks import judge, promql
from deployer.canary.istio import IstioRouter
from deployer.canary.objects import (
    CONFIG_HASH,
    TRACK,
    CanaryTarget,
    canary_set,
    canary_targets,
    config_refs,
    initial_replicas,
    require_targets,
    stable_set,
)
from deployer.canary.router import Routing
from deployer.config.model import CanaryPolicy, Check, PrometheusCheck, check_windows
from deployer.errors import DeployError
from deployer.events import CheckResult, Round
from deployer.render.manifests import RenderedObject
from deployer.render.validate import validate_object


def deployment(name: str = "web", labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "c", "image": "app:2"}]},
            },
        },
    }


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"selector": selector, "ports": [{"port": 80}]},
    }


def selects(workload: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    return workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def pods_of(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


RENDERED = [
    service("web", {"app": "web"}),
    deployment("web", {"app": "web", "tier": "front"}),
    deployment("worker"),
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "ns"}},
]


def test_deployments_selected_by_a_service_are_canary_targets() -> None:
    assert canary_targets(RENDERED) == [CanaryTarget("web", "web", "ns")]
    assert CanaryTarget("web", "web", "ns").host == "web.ns.svc.cluster.local"


def test_the_first_service_by_name_wins_when_several_select_a_deployment() -> None:
    objects = [service("web-public", {"app": "web"}), service("web-internal", {"app": "web"}), deployment("web")]
    assert [t.service for t in canary_targets(objects)] == ["web-internal"]


def test_no_service_selecting_any_deployment_is_one_clear_error() -> None:
    with pytest.raises(DeployError) as info:
        require_targets([service("other", {"app": "other"}), deployment("web")])
    assert str(info.value) == (
        "canary: no Service selects the pods of any Deployment (Deployments: web); a canary "
        "needs a Service whose selector matches the pod labels, or set `canary: false`"
    )


def by_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_stable_set_serves_from_a_primary_and_never_touches_the_rendered_selector() -> None:
    before = copy.deepcopy(RENDERED)
    stable = by_name(stable_set(RENDERED, canary_targets(RENDERED)))
    assert before == RENDERED, "the rendered objects are not mutated"
    assert ("Deployment", "web") not in stable, "the rendered Deployment is replaced by its primary"
    primary = stable[("Deployment", "web-primary")]
    assert primary["spec"]["selector"]["matchLabels"] == {"app": "web", "tier": "front", TRACK: "primary"}
    assert stable[("Service", "web")]["spec"]["selector"] == {"app": "web", TRACK: "primary"}
    assert stable[("Deployment", "worker")] == RENDERED[2], "a Deployment no Service selects is left alone"


def test_the_service_selects_the_primary_only_and_the_canary_service_the_canary_only() -> None:
    targets = canary_targets(RENDERED)
    primary = by_name(stable_set(RENDERED, targets))[("Deployment", "web-primary")]
    canary = by_name(canary_set(RENDERED, targets))
    service = by_name(stable_set(RENDERED, targets))[("Service", "web")]["spec"]["selector"]
    canary_service = canary[("Service", "web-canary")]["spec"]["selector"]
    canary_pods = pods_of(canary[("Deployment", "web-canary")])
    assert service.items() <= pods_of(primary).items() and not service.items() <= canary_pods.items()
    assert canary_service.items() <= canary_pods.items() and not canary_service.items() <= pods_of(primary).items()
    assert not selects(primary, canary_pods) and not selects(canary[("Deployment", "web-canary")], pods_of(primary))


def test_primary_and_canary_objects_are_valid_kubernetes_objects() -> None:
    targets = canary_targets(RENDERED)
    for obj in [*stable_set(RENDERED, targets), *canary_set(RENDERED, targets)]:
        assert validate_object(RenderedObject(obj=obj, source="test")) is True


def test_copies_of_live_objects_drop_server_fields() -> None:
    live = deployment()
    live["metadata"].update(uid="u", resourceVersion="9", generation=3, creationTimestamp="t", managedFields=[])
    live["status"] = {"replicas": 2}
    objects = [service("web", {"app": "web"}), live]
    [_, canary] = canary_set(objects, canary_targets(objects))
    assert set(canary["metadata"]) == {"name", "namespace", "labels"}
    assert "status" not in canary


WITH_CONFIG = [
    service("web", {"app": "web"}),
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "ns"}, "data": {"k": "2"}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "ns"}, "data": {"k": "eA=="}},
]


def configured(data: str = "2") -> list[dict[str, Any]]:
    web = deployment("web")
    pod = web["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "c", "configMap": {"name": "cfg"}}, {"name": "s", "secret": {"secretName": "tls"}}]
    pod["containers"][0]["env"] = [
        {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
        {"name": "P", "valueFrom": {"secretKeyRef": {"name": "only-in-cluster", "key": "p"}}},
    ]
    objects = copy.deepcopy(WITH_CONFIG)
    objects[1]["data"] = {"k": data}
    return [*objects, web]


def test_the_canary_reads_copies_of_the_config_the_release_renders_and_stable_the_originals() -> None:
    objects = configured()
    canary = by_name(canary_set(objects, canary_targets(objects)))
    assert canary[("ConfigMap", "cfg-canary")]["data"] == {"k": "2"}
    assert ("Secret", "tls-canary") in canary
    refs = config_refs(canary[("Deployment", "web-canary")]["spec"]["template"]["spec"])
    assert refs == {("ConfigMap", "cfg-canary"), ("Secret", "tls-canary"), ("Secret", "only-in-cluster")}
    primary = by_name(stable_set(objects, canary_targets(objects)))[("Deployment", "web-primary")]
    assert config_refs(primary["spec"]["template"]["spec"]) == {
        ("ConfigMap", "cfg"),
        ("Secret", "tls"),
        ("Secret", "only-in-cluster"),
    }


def test_a_config_only_change_changes_the_primary_pod_template() -> None:
    def template(data: str) -> dict[str, Any]:
        objects = configured(data)
        primary = by_name(stable_set(objects, canary_targets(objects)))[("Deployment", "web-primary")]
        return dict(primary["spec"]["template"])

    assert template("2") == template("2")
    assert template("2") != template("3")
    assert template("3")["metadata"]["annotations"][CONFIG_HASH]


def hpa(target: str, minimum: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": minimum,
            "maxReplicas": 5,
        },
    }


def test_an_hpa_scales_the_primary_which_then_carries_no_replicas_and_the_canary_gets_its_own() -> None:
    objects = [service("web", {"app": "web"}), deployment("web"), hpa("web", minimum=3)]
    targets = canary_targets(objects)
    stable = by_name(stable_set(objects, targets))
    assert "replicas" not in stable[("Deployment", "web-primary")]["spec"], "the HPA owns replicas"
    assert stable[("HorizontalPodAutoscaler", "web")]["spec"]["scaleTargetRef"]["name"] == "web-primary"
    canary = by_name(canary_set(objects, targets))
    assert canary[("HorizontalPodAutoscaler", "web-canary")]["spec"]["scaleTargetRef"]["name"] == "web-canary"
    assert canary[("Deployment", "web-canary")]["spec"]["replicas"] == 3
    assert initial_replicas(objects, targets[0], None) == 3
    assert initial_replicas(objects, targets[0], {"spec": {"replicas": 4}}) == 4, "adopting keeps the live size"
    plain = [service("web", {"app": "web"}), deployment("web")]
    assert initial_replicas(plain, canary_targets(plain)[0], None) is None


def test_a_rendered_object_named_like_a_canary_copy_is_refused() -> None:
    objects = [service("web", {"app": "web"}), deployment("web"), deployment("web-primary", {"app": "other"})]
    with pytest.raises(DeployError) as info:
        require_targets(objects)
    assert str(info.value) == (
        "canary: Deployment web-primary: the chart renders an object with the name the canary's copy takes; rename it"
    )


TARGET = CanaryTarget("web", "web", "ns")


def virtual(name: str, host: str = "web", gateways: list[str] | None = None, **route: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hosts": ["web.example.com"],
        "http": [
            {"match": [{"uri": {"prefix": "/"}}], "timeout": "3s", "route": [{"destination": {"host": host}, **route}]}
        ],
    }
    if gateways is not None:
        spec["gateways"] = gateways
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": spec,
    }


ROUTER = IstioRouter("networking.istio.io/v1", Routing(("istio-system/gw",), ("web.example.com",)), {"o": "d"})


@pytest.mark.parametrize("weight", range(0, 101))
def test_own_virtual_service_binds_the_gateways_and_the_mesh_and_weights_sum_to_100(weight: int) -> None:
    [own] = ROUTER.routes(RENDERED, [TARGET], weight)
    assert own["metadata"] == {"name": "web", "namespace": "ns", "labels": {"o": "d"}}
    assert own["spec"]["gateways"] == ["istio-system/gw", "mesh"]
    assert own["spec"]["hosts"] == ["web", "web.example.com"]
    assert ROUTER.weights(own, TARGET) == (100 - weight, weight)
    pin, split = own["spec"]["http"]
    assert pin["match"] == [{"headers": {"x-deployer-canary": {"exact": "true"}}}], "checks can reach the canary"
    assert pin["route"] == [{"destination": {"host": "web-canary.ns.svc.cluster.local"}}]
    route = split["route"]
    assert [r["destination"]["host"] for r in route] == ["web.ns.svc.cluster.local", "web-canary.ns.svc.cluster.local"]


def test_without_gateways_the_own_virtual_service_binds_the_mesh_only_and_names_stable_only_outside_a_canary() -> None:
    [own] = IstioRouter().routes(RENDERED, [TARGET], None)
    assert "gateways" not in own["spec"]
    assert own["spec"]["http"] == [{"name": "deployer", "route": [{"destination": {"host": TARGET.host}}]}]
    assert IstioRouter().weights(own, TARGET) == (100, 0)


@pytest.mark.parametrize("weight", [-1, 101])
def test_weights_outside_0_to_100_are_refused(weight: int) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        IstioRouter().routes(RENDERED, [TARGET], weight)


def test_a_chart_virtual_service_routing_to_the_service_is_adopted_and_keeps_everything_but_the_weights() -> None:
    chart = virtual("public", gateways=["istio-system/gw"], headers={"request": {"set": {"x": "1"}}})
    objects = [*RENDERED, chart]
    router = IstioRouter()
    router.check(objects, [TARGET])
    assert router.adopted(objects, [TARGET]) == {("VirtualService", "public")}
    public, own = router.routes(objects, [TARGET], 20)
    assert own["metadata"]["name"] == "web", "a gateway-only chart VirtualService leaves the mesh to ours"
    pin, http = public["spec"]["http"]
    assert pin["route"] == [{"destination": {"host": "web-canary.ns.svc.cluster.local"}}]
    assert public["spec"]["gateways"] == ["istio-system/gw"] and public["spec"]["hosts"] == ["web.example.com"]
    assert http["match"] == [{"uri": {"prefix": "/"}}] and http["timeout"] == "3s"
    assert http["route"] == [
        {"destination": {"host": "web"}, "weight": 80},
        {"destination": {"host": "web-canary.ns.svc.cluster.local"}, "weight": 20},
    ]
    assert router.weights(public, TARGET) == (80, 20)
    assert router.routes(objects, [TARGET], None)[0]["spec"]["http"][0]["route"] == [{"destination": {"host": "web"}}]


def test_a_mesh_bound_chart_virtual_service_is_the_only_one() -> None:
    objects = [*RENDERED, virtual("web", host="web.ns.svc.cluster.local")]
    assert [v["metadata"]["name"] for v in IstioRouter().routes(objects, [TARGET], 10)] == ["web"]


@pytest.mark.parametrize(
    ("chart", "message"),
    [
        (
            virtual("web", host="other", gateways=["gw"]),
            "canary: VirtualService web: the deployer routes Service web with a VirtualService of this name (for "
            "the mesh); rename the chart's, or bind it to the mesh so that it is adopted",
        ),
        (
            {
                **virtual("split"),
                "spec": {
                    "http": [
                        {
                            "route": [
                                {"destination": {"host": "web"}, "weight": 90},
                                {"destination": {"host": "old"}, "weight": 10},
                            ]
                        }
                    ]
                },
            },
            "canary: VirtualService split: a route splits traffic between web, old; the deployer manages the "
            "weights of routes to Service web only when such a route has one destination",
        ),
    ],
)
def test_a_chart_virtual_service_that_cannot_be_adopted_is_refused(chart: dict[str, Any], message: str) -> None:
    with pytest.raises(DeployError) as info:
        IstioRouter().check([*RENDERED, chart], [TARGET])
    assert str(info.value) == message


POLICY = CanaryPolicy(steps=[10, 25, 50], threshold=2)


def rounds(outcomes: str) -> list[Round]:
    """'.' passes, 'x' fails; weights follow the policy as the engine would run them."""
    out: list[Round] = []
    for outcome in outcomes:
        weight = next_weight(POLICY, out)
        assert weight is not None
        out.append(Round(weight, (CheckResult("http", outcome == ".", "" if outcome == "." else "HTTP 500"),)))
    return out


def test_a_good_canary_walks_the_steps_then_promotes() -> None:
    history = rounds("...")
    assert [r.weight for r in history] == [10, 25, 50]
    assert verdict(history, POLICY).decision is Decision.PROMOTE


def test_a_failed_round_repeats_its_weight() -> None:
    history = rounds(".x.")
    assert [r.weight for r in history] == [10, 25, 25]
    result = verdict(history, POLICY)
    assert (result.decision, result.next_weight) == (Decision.CONTINUE, 50)


def test_threshold_failed_rounds_roll_back_and_name_the_check() -> None:
    result = verdict(rounds(".xx"), POLICY)
    assert result.decision is Decision.ROLLBACK
    assert result.reason == "2 failed rounds (threshold 2); at 25% http: HTTP 500"


@pytest.mark.parametrize("outcomes", ["".join(p) for n in range(0, 6) for p in itertools.product(".x", repeat=n)])
def test_verdicts_for_every_sequence_of_up_to_five_rounds(outcomes: str) -> None:
    for done in range(len(outcomes)):
        if verdict(rounds(outcomes[:done]), POLICY).decision is not Decision.CONTINUE:
            return  # the engine stops at a rollback or a promotion; later rounds never happen
    result = verdict(rounds(outcomes), POLICY)
    if outcomes.count("x") >= 2:
        assert result.decision is Decision.ROLLBACK
    elif outcomes.count(".") == 3:
        assert result.decision is Decision.PROMOTE
    else:
        assert result.decision is Decision.CONTINUE
        assert result.next_weight == POLICY.steps[outcomes.count(".")]


def status(**fields: Any) -> dict[str, Any]:
    obj = deployment()
    obj["metadata"]["generation"] = fields.pop("generation", 2)
    obj["status"] = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2, **fields}
    return obj


@pytest.mark.parametrize(
    ("fields", "state", "message"),
    [
        ({"generation": 3}, Rollout.WAITING, "Waiting for deployment spec update to be observed..."),
        (
            {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]},
            Rollout.FAILED,
            'deployment "web" exceeded its progress deadline',
        ),
        (
            {"updatedReplicas": 1},
            Rollout.WAITING,
            'Waiting for deployment "web" rollout to finish: 1 out of 2 new replicas have been updated...',
        ),
        (
            {"replicas": 3},
            Rollout.WAITING,
            'Waiting for deployment "web" rollout to finish: 1 old replicas are pending termination...',
        ),
        (
            {"availableReplicas": 1},
            Rollout.WAITING,
            'Waiting for deployment "web" rollout to finish: 1 of 2 updated replicas are available...',
        ),
        ({}, Rollout.DONE, 'deployment "web" successfully rolled out'),
    ],
)
def test_rollout_status_follows_kubectls_rules(fields: dict[str, Any], state: Rollout, message: str) -> None:
    result = rollout_status(status(**fields))
    assert (result.state, result.message) == (state, message)


def test_prometheus_windows_fill_the_query_and_must_cover_two_scrapes() -> None:
    check = PrometheusCheck(template="request-success-rate", min=0.99, window="90s")
    assert "[90s]" in promql(check, namespace="ns", workload="web-canary") and "{" + "window}" not in promql(
        check, namespace="ns", workload="web-canary"
    )
    policy = CanaryPolicy(interval="2m", checks=[Check(name="rate", prometheus=check)])
    check_windows(policy, scrape_interval=45, where="environments.prod.canary")
    with pytest.raises(DeployError) as info:
        check_windows(policy, scrape_interval=60, where="environments.prod.canary")
    assert str(info.value) == (
        "deploy.yaml: environments.prod.canary.checks[rate].prometheus.window: 90s is shorter than twice the "
        "scrape interval the server states (60s), so rate() would see nothing; use at least 120s"
    )


def test_a_round_shorter_than_two_scrapes_is_refused_when_prometheus_judges_it() -> None:
    check = Check(name="rate", prometheus=PrometheusCheck(template="request-success-rate", min=0.99, window="1m"))
    where = "environments.prod.canary"
    check_windows(CanaryPolicy(interval="30s", checks=[check]), scrape_interval=15, where=where)
    check_windows(CanaryPolicy(interval="5s"), scrape_interval=15, where=where)  # no Prometheus check
    with pytest.raises(DeployError) as info:
        check_windows(CanaryPolicy(interval="20s", checks=[check]), scrape_interval=15, where=where)
    assert str(info.value) == (
        "deploy.yaml: environments.prod.canary.interval: 20s is shorter than twice the scrape interval the server "
        "states (15s): a new canary's metrics would not exist yet when check rate runs; use at least 30s"
    )


@pytest.mark.parametrize(
    ("no_data", "requests", "ok"),
    [("skip", 12.0, True), ("skip", 0.0, False), ("skip", None, False), ("fail", 5.0, False)],
)
def test_no_data_is_skipped_only_when_asked_and_the_canary_had_requests(
    no_data: str, requests: float | None, ok: bool
) -> None:
    check = PrometheusCheck(query="up", min=1, noData=no_data)
    assert judge("q", check, None, requests=requests).ok is ok
