"""The canary's objects (DESIGN.md section 3), computed from the rendered objects: pure dicts in, dicts out.

For each Deployment that a Service selects: the stable Deployment gets `deployer.dev/track: stable` in its
selector and pod labels, the canary is `<name>-canary` with the new pod template and `track: canary`, a
DestinationRule names the two subsets, and the VirtualService's route weights are all that changes per step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from deployer.errors import DeployError

TRACK = "deployer.dev/track"
STABLE, CANARY = "stable", "canary"
ISTIO = "networking.istio.io/v1"


@dataclass(frozen=True)
class CanaryTarget:
    """A Deployment the canary covers and the Service through which its traffic is split."""

    deployment: str
    service: str
    namespace: str

    @property
    def host(self) -> str:
        return f"{self.service}.{self.namespace}.svc.cluster.local"


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(((deployment.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {})


def canary_targets(objects: list[dict[str, Any]]) -> list[CanaryTarget]:
    """Every Deployment with a Service selecting its pods (the first Service by name when several do)."""
    services = sorted(
        (o for o in objects if o.get("kind") == "Service" and (o.get("spec") or {}).get("selector")),
        key=lambda o: o["metadata"]["name"],
    )
    targets = []
    for deployment in (o for o in objects if o.get("kind") == "Deployment"):
        labels = _pod_labels(deployment)
        service = next((s for s in services if s["spec"]["selector"].items() <= labels.items()), None)
        if service is not None:
            meta = deployment["metadata"]
            targets.append(CanaryTarget(meta["name"], service["metadata"]["name"], meta.get("namespace", "default")))
    return targets


def require_targets(objects: list[dict[str, Any]]) -> list[CanaryTarget]:
    """canary_targets, or one clear error naming the Deployments no Service selects."""
    targets = canary_targets(objects)
    if not targets:
        names = ", ".join(o["metadata"]["name"] for o in objects if o.get("kind") == "Deployment") or "none"
        raise DeployError(
            f"no Service selects the pods of any Deployment (Deployments: {names}); a canary needs a "
            "Service whose selector matches the pod labels, or set `canary: false`",
            where="canary",
        )
    return targets


def _with_track(deployment: dict[str, Any], track: str) -> dict[str, Any]:
    out = copy.deepcopy(deployment)
    spec = out.setdefault("spec", {})
    spec.setdefault("selector", {}).setdefault("matchLabels", {})[TRACK] = track
    spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})[TRACK] = track
    return out


def stable_objects(objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> list[dict[str, Any]]:
    """The rendered objects, the covered Deployments labelled and selecting `track: stable`."""
    covered = {t.deployment for t in targets}
    return [
        _with_track(o, STABLE) if o.get("kind") == "Deployment" and o["metadata"]["name"] in covered else o
        for o in objects
    ]


def canary_name(deployment: str) -> str:
    """The canary Deployment's name beside the stable `deployment`."""
    return f"{deployment}-canary"


def canary_deployment(deployment: dict[str, Any]) -> dict[str, Any]:
    """`<name>-canary`: the new pod template beside the stable one, selecting `track: canary` only."""
    canary = _with_track(deployment, CANARY)
    canary.pop("status", None)
    meta = canary["metadata"]
    meta["name"] = canary_name(meta["name"])
    meta.setdefault("labels", {})[TRACK] = CANARY
    for key in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"):
        meta.pop(key, None)
    return canary


def destination_rule(target: CanaryTarget) -> dict[str, Any]:
    """The `stable` and `canary` subsets of the Service's host, split on the track label."""
    return {
        "apiVersion": ISTIO,
        "kind": "DestinationRule",
        "metadata": {"name": target.service, "namespace": target.namespace},
        "spec": {
            "host": target.host,
            "subsets": [{"name": STABLE, "labels": {TRACK: STABLE}}, {"name": CANARY, "labels": {TRACK: CANARY}}],
        },
    }


def routes(target: CanaryTarget, canary_weight: int) -> list[dict[str, Any]]:
    """`spec.http` of the VirtualService at one step: written whole, so the weights always sum to 100."""
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"canary weight {canary_weight} is outside 0..100")
    return [
        {
            "name": "deployer",
            "route": [
                {"destination": {"host": target.host, "subset": STABLE}, "weight": 100 - canary_weight},
                {"destination": {"host": target.host, "subset": CANARY}, "weight": canary_weight},
            ],
        }
    ]


def virtual_service(target: CanaryTarget, canary_weight: int, *, hosts: tuple[str, ...] = ()) -> dict[str, Any]:
    """The VirtualService for the Service's host (and any extra hosts) at `canary_weight` percent."""
    return {
        "apiVersion": ISTIO,
        "kind": "VirtualService",
        "metadata": {"name": target.service, "namespace": target.namespace},
        "spec": {"hosts": [target.service, *hosts], "http": routes(target, canary_weight)},
    }


def weights(virtual: dict[str, Any]) -> tuple[int, int]:
    """(stable, canary) weights of a VirtualService the deployer wrote."""
    route = ((virtual.get("spec") or {}).get("http") or [{}])[0].get("route") or []
    by_subset = {r["destination"].get("subset"): int(r.get("weight", 0)) for r in route}
    return by_subset.get(STABLE, 0), by_subset.get(CANARY, 0)


OWNER_LABELS = ("app.kubernetes.io/managed-by", "deployer.dev/app", "deployer.dev/environment")


def owned_by_release(objects: list[dict[str, Any]], *, app: str, environment: str) -> list[dict[str, Any]]:
    """The objects labelled as the deployer's for (app, environment), so a later release can prune them."""
    out = []
    for obj in objects:
        labelled = copy.deepcopy(obj)
        labels = labelled["metadata"].setdefault("labels", {})
        labels.update({OWNER_LABELS[0]: "deployer", OWNER_LABELS[1]: app, OWNER_LABELS[2]: environment})
        out.append(labelled)
    return out


def owner_selector(*, app: str, environment: str) -> str:
    return f"{OWNER_LABELS[0]}=deployer,{OWNER_LABELS[1]}={app},{OWNER_LABELS[2]}={environment}"
