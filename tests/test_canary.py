"""The canary's pure layer, exhaustively and without servers: its objects, weights, verdicts and rollout status."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from deployer.canary.analysis import (
    CheckResult,
    Decision,
    Rollout,
    Round,
    next_weight,
    rollout_status,
    verdict,
)
from deployer.canary.objects import (
    TRACK,
    CanaryTarget,
    canary_deployment,
    canary_targets,
    destination_rule,
    require_targets,
    stable_objects,
    virtual_service,
    weights,
)
from deployer.config.model import CanaryPolicy
from deployer.errors import DeployError
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


def test_stable_objects_add_the_track_to_covered_deployments_only_and_do_not_mutate() -> None:
    before = copy.deepcopy(RENDERED)
    stable = stable_objects(RENDERED, canary_targets(RENDERED))
    assert before == RENDERED
    web, worker = stable[1], stable[2]
    assert web["spec"]["selector"]["matchLabels"] == {"app": "web", "tier": "front", TRACK: "stable"}
    assert pods_of(web)[TRACK] == "stable"
    assert worker == RENDERED[2]
    assert stable[0] == RENDERED[0], "the Service keeps the chart's selector and so covers both tracks"


def test_stable_and_canary_selectors_never_overlap_and_the_service_covers_both() -> None:
    target = canary_targets(RENDERED)
    stable = stable_objects(RENDERED, target)[1]
    canary = canary_deployment(stable)
    assert canary["metadata"]["name"] == "web-canary"
    assert canary["metadata"]["labels"][TRACK] == "canary"
    assert not selects(stable, pods_of(canary))
    assert not selects(canary, pods_of(stable))
    assert selects(stable, pods_of(stable)) and selects(canary, pods_of(canary))
    svc = RENDERED[0]["spec"]["selector"]
    assert svc.items() <= pods_of(stable).items() and svc.items() <= pods_of(canary).items()


def test_canary_objects_are_valid_kubernetes_objects() -> None:
    stable = stable_objects(RENDERED, canary_targets(RENDERED))[1]
    for obj in (stable, canary_deployment(stable)):
        assert validate_object(RenderedObject(obj=obj, source="test")) is True


def test_canary_of_a_live_deployment_drops_server_fields() -> None:
    live = deployment()
    live["metadata"].update(uid="u", resourceVersion="9", generation=3, creationTimestamp="t", managedFields=[])
    live["status"] = {"replicas": 2}
    canary = canary_deployment(live)
    assert set(canary["metadata"]) == {"name", "namespace", "labels"}
    assert "status" not in canary


def test_destination_rule_has_the_two_subsets_on_the_track_label() -> None:
    rule = destination_rule(CanaryTarget("web", "web", "ns"))
    assert rule["spec"] == {
        "host": "web.ns.svc.cluster.local",
        "subsets": [{"name": "stable", "labels": {TRACK: "stable"}}, {"name": "canary", "labels": {TRACK: "canary"}}],
    }


@pytest.mark.parametrize("weight", range(0, 101))
def test_virtual_service_weights_always_sum_to_100(weight: int) -> None:
    virtual = virtual_service(CanaryTarget("web", "web", "ns"), weight, hosts=("web.example.com",))
    assert weights(virtual) == (100 - weight, weight)
    assert virtual["spec"]["hosts"] == ["web", "web.example.com"]


@pytest.mark.parametrize("weight", [-1, 101])
def test_weights_outside_0_to_100_are_refused(weight: int) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        virtual_service(CanaryTarget("web", "web", "ns"), weight)


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
