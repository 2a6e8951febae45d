"""The canary's workloads (docs/architecture.md §3), computed from the rendered objects: pure dicts in, dicts out.

The model is Flagger's (fluxcd/flagger pkg/canary/deployment_controller.go, pkg/router/kubernetes_default.go),
adapted to a push: for each Deployment `D` that a Service `S` selects,
- `D-primary` serves: D's pod template with `deployer.dev/track: primary` added to its selector and pod labels;
  the rendered `D` itself is never applied, so its selector is never touched (a live `D` made by helm, kubectl or
  an earlier model is scaled to zero once `D-primary` serves: adoption without a deletion);
- `S` keeps every field the chart gave it, and its selector gains `track: primary`: whatever reaches the Service
  without the deployer's routes (a Kubernetes Ingress, a gateway the environment does not name, a pod without a
  sidecar) reaches stable only;
- during a release, `D-canary` (track canary) behind `S-canary`, with its own copies `<name>-canary` of the
  ConfigMaps and Secrets the release renders and the pods reference, and `<hpa>-canary` when an HPA scales D;
- an HPA that targets D targets `D-primary`, and the deployer never writes `replicas` of a Deployment an HPA
  targets (only its initial size, once, under its own field manager).
The router (canary/router.py) splits the traffic for S's host between `S` and `S-canary`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from deployer.errors import DeployError

TRACK = "deployer.dev/track"
PRIMARY, CANARY = "primary", "canary"
CONFIG_HASH = "deployer.dev/config-hash"
HPA = "HorizontalPodAutoscaler"
CONFIG_KINDS = ("ConfigMap", "Secret")
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


@dataclass(frozen=True)
class CanaryTarget:
    """A Deployment the canary covers and the Service through which its traffic is split."""

    deployment: str
    service: str
    namespace: str

    @property
    def host(self) -> str:
        return fqdn(self.service, self.namespace)

    @property
    def primary(self) -> str:
        return primary_name(self.deployment)

    @property
    def canary(self) -> str:
        return canary_name(self.deployment)

    @property
    def canary_service(self) -> str:
        return canary_name(self.service)

    @property
    def canary_host(self) -> str:
        return fqdn(self.canary_service, self.namespace)


def fqdn(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.cluster.local"


def service_port(objects: list[dict[str, Any]], target: CanaryTarget, container_port: int | str) -> int | None:
    """The port of the target's Service that reaches `container_port` of its pods (by targetPort, then by the
    Service port's own number or name); the Service's only port if it has one; else None."""
    service = next((o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == target.service), None)
    ports = ((service or {}).get("spec") or {}).get("ports") or []
    for key in ("targetPort", "port", "name"):
        for port in ports:
            if str(port.get(key, "")) == str(container_port):
                return int(port["port"])
    return int(ports[0]["port"]) if len(ports) == 1 else None


def primary_name(name: str) -> str:
    """The name of the stable copy of `name`."""
    return f"{name}-primary"


def canary_name(name: str) -> str:
    """The name of the canary copy of `name`."""
    return f"{name}-canary"


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
    """canary_targets, or one clear error naming the Deployments no Service selects; and no rendered object may
    carry a name the canary's copies take."""
    targets = canary_targets(objects)
    if not targets:
        names = ", ".join(o["metadata"]["name"] for o in objects if o.get("kind") == "Deployment") or "none"
        raise DeployError(
            f"no Service selects the pods of any Deployment (Deployments: {names}); a canary needs a "
            "Service whose selector matches the pod labels, or set `canary: false`",
            where="canary",
        )
    rendered = {(o["kind"], o["metadata"]["name"]) for o in objects}
    derived = {(o["kind"], o["metadata"]["name"]) for o in canary_set(objects, targets)}
    derived |= {("Deployment", t.primary) for t in targets}
    for kind, name in sorted(rendered & derived):
        raise DeployError(
            f"{kind} {name}: the chart renders an object with the name the canary's copy takes; rename it",
            where="canary",
        )
    return targets


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out.pop("status", None)
    for key in SERVER_FIELDS:
        out.get("metadata", {}).pop(key, None)
    return out


def _track(deployment: dict[str, Any], track: str, name: str) -> dict[str, Any]:
    out = _strip(deployment)
    out["metadata"]["name"] = name
    out["metadata"].setdefault("labels", {})[TRACK] = track
    spec = out.setdefault("spec", {})
    spec.setdefault("selector", {}).setdefault("matchLabels", {})[TRACK] = track
    spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})[TRACK] = track
    return out


def _pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(((deployment.get("spec") or {}).get("template") or {}).get("spec") or {})


def config_refs(pod_spec: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a pod spec reads: volumes (projected too), env and envFrom."""
    refs: set[tuple[str, str]] = set()
    for slot in _config_slots(pod_spec):
        refs.add((slot[0], str(slot[1][slot[2]])))
    return refs


def _config_slots(pod_spec: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """Where a pod spec names a ConfigMap or Secret: (kind, the dict holding the name, its key)."""
    slots: list[tuple[str, dict[str, Any], str]] = []

    def add(kind: str, holder: Any, key: str) -> None:
        if isinstance(holder, dict) and holder.get(key):
            slots.append((kind, holder, key))

    for volume in pod_spec.get("volumes") or []:
        add("ConfigMap", volume.get("configMap"), "name")
        add("Secret", volume.get("secret"), "secretName")
        for source in (volume.get("projected") or {}).get("sources") or []:
            add("ConfigMap", source.get("configMap"), "name")
            add("Secret", source.get("secret"), "name")
    for container in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            add("ConfigMap", source.get("configMapKeyRef"), "name")
            add("Secret", source.get("secretKeyRef"), "name")
        for env_from in container.get("envFrom") or []:
            add("ConfigMap", env_from.get("configMapRef"), "name")
            add("Secret", env_from.get("secretRef"), "name")
    return slots


def _rendered_configs(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The ConfigMaps and Secrets of this release that the Deployment's pods read (secrets that live only in the
    cluster are not the release's, so they are neither copied nor hashed)."""
    refs = config_refs(_pod_spec(deployment))
    return [o for o in objects if o["kind"] in CONFIG_KINDS and (o["kind"], o["metadata"]["name"]) in refs]


def config_hash(configs: list[dict[str, Any]]) -> str:
    """A digest of the config a pod template reads, so that a config-only change rolls the pods out."""
    body = [
        [c["kind"], c["metadata"]["name"], {k: c.get(k) for k in ("data", "binaryData", "stringData")}] for c in configs
    ]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _with_config_hash(deployment: dict[str, Any], configs: list[dict[str, Any]]) -> dict[str, Any]:
    if configs:
        template = deployment["spec"]["template"]
        template.setdefault("metadata", {}).setdefault("annotations", {})[CONFIG_HASH] = config_hash(configs)
    return deployment


def _scale_target(hpa: dict[str, Any]) -> str | None:
    """The Deployment an HPA scales, if it scales one."""
    ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    return str(ref.get("name")) if ref.get("kind") == "Deployment" else None


def hpas_of(objects: list[dict[str, Any]], deployment: str) -> list[dict[str, Any]]:
    """The rendered HPAs that scale `deployment`."""
    return [o for o in objects if o["kind"] == HPA and _scale_target(o) == deployment]


def hpa_minimum(objects: list[dict[str, Any]], deployment: str) -> int | None:
    """The least replicas the rendered HPAs of `deployment` keep (None when none scales it)."""
    scalers = hpas_of(objects, deployment)
    return max(int(h["spec"].get("minReplicas", 1)) for h in scalers) if scalers else None


def _retarget(hpa: dict[str, Any], deployment: str, name: str) -> dict[str, Any]:
    out = _strip(hpa)
    out["metadata"]["name"] = name
    out["spec"]["scaleTargetRef"]["name"] = deployment
    return out


def stable_set(objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> list[dict[str, Any]]:
    """What serves as stable: the rendered objects with each target Deployment replaced by its primary, each
    target Service selecting the primary only, and HPAs retargeted; apply order kept. A primary that an HPA
    scales carries no `replicas`, so applying it never takes the field from the HPA."""
    by_deployment = {t.deployment: t for t in targets}
    by_service = {t.service: t for t in targets}
    out = []
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Deployment" and name in by_deployment:
            primary = _track(obj, PRIMARY, primary_name(name))
            if hpas_of(objects, name):
                primary["spec"].pop("replicas", None)
            out.append(_with_config_hash(primary, _rendered_configs(objects, obj)))
        elif obj["kind"] == "Service" and name in by_service:
            service = copy.deepcopy(obj)
            service["spec"]["selector"][TRACK] = PRIMARY
            out.append(service)
        elif obj["kind"] == HPA and (scaled := _scale_target(obj)) in by_deployment:
            out.append(_retarget(obj, primary_name(scaled), name))
        else:
            out.append(obj)
    return out


def canary_set(objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> list[dict[str, Any]]:
    """The canary's objects, in apply order: config copies, the canary Services, the canary Deployments (reading
    the copies), their HPAs. All of them are deleted when the release ends."""
    by_name = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    configs: dict[tuple[str, str], dict[str, Any]] = {}
    out_services, deployments, hpas = [], [], []
    for target in targets:
        deployment = by_name[target.deployment]
        used = _rendered_configs(objects, deployment)
        for config in used:
            copied = _strip(config)
            copied["metadata"]["name"] = canary_name(config["metadata"]["name"])
            configs[(config["kind"], config["metadata"]["name"])] = copied
        canary = _with_config_hash(_track(deployment, CANARY, target.canary), used)
        for kind, holder, key in _config_slots(canary["spec"]["template"].get("spec") or {}):
            if (kind, holder[key]) in configs:
                holder[key] = canary_name(holder[key])
        scalers = hpas_of(objects, target.deployment)
        if scalers:
            canary["spec"]["replicas"] = max(hpa_minimum(objects, target.deployment) or 1, 1)
        deployments.append(canary)
        hpas += [_retarget(h, target.canary, canary_name(h["metadata"]["name"])) for h in scalers]
        service = _strip(services[target.service])
        service["metadata"]["name"] = target.canary_service
        service["spec"]["selector"][TRACK] = CANARY
        for field in ("clusterIP", "clusterIPs", "externalIPs", "loadBalancerIP", "healthCheckNodePort"):
            service["spec"].pop(field, None)
        for port in service["spec"].get("ports") or []:
            port.pop("nodePort", None)
        out_services.append(service)
    return [*configs.values(), *out_services, *deployments, *hpas]


def initial_replicas(objects: list[dict[str, Any]], target: CanaryTarget, live: dict[str, Any] | None) -> int | None:
    """The size a new primary starts at when an HPA scales it (None when none does): the live Deployment's it
    replaces, at least the HPA's minimum."""
    minimum = hpa_minimum(objects, target.deployment)
    if minimum is None:
        return None
    current = int(((live or {}).get("spec") or {}).get("replicas") or 0)
    return max(minimum, current, 1)


def without_sidecar(pods: list[dict[str, Any]]) -> list[str]:
    """Names of the pods Istio did not inject (istio/istio pkg/kube/inject: the `sidecar.istio.io/status`
    annotation and an `istio-proxy` container, or init container for native sidecars)."""
    names = []
    for pod in pods:
        spec = pod.get("spec") or {}
        containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
        injected = "sidecar.istio.io/status" in ((pod.get("metadata") or {}).get("annotations") or {}) or any(
            c.get("name") == "istio-proxy" for c in containers
        )
        if not injected:
            names.append(str(pod["metadata"]["name"]))
    return names


OWNER_LABELS = ("app.kubernetes.io/managed-by", "deployer.dev/app", "deployer.dev/environment")


def owned_by_release(objects: list[dict[str, Any]], *, app: str, environment: str) -> list[dict[str, Any]]:
    """The objects labelled as the deployer's for (app, environment), so a later release can prune them."""
    out = []
    for obj in objects:
        labelled = copy.deepcopy(obj)
        labelled["metadata"].setdefault("labels", {}).update(owner_labels(app=app, environment=environment))
        out.append(labelled)
    return out


def owner_labels(*, app: str, environment: str) -> dict[str, str]:
    return {OWNER_LABELS[0]: "deployer", OWNER_LABELS[1]: app, OWNER_LABELS[2]: environment}


def owner_selector(*, app: str, environment: str) -> str:
    return ",".join(f"{k}={v}" for k, v in owner_labels(app=app, environment=environment).items())
