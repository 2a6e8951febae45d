"""The HorizontalPodAutoscaler controller, as kube-controller-manager runs it (autoscaling/v2).

Every sync period (kube's default 15 s) each HPA reads its metrics for the target's ready pods, proposes
replicas as kubernetes/kubernetes pkg/controller/podautoscaler does (ratio = current / target; within the 0.1
tolerance nothing changes; else ceil(ratio x pods)), takes the largest proposal, applies the behavior's
stabilization windows (scale-down 300 s by default, scale-up 0) and the default scale-up rate limit (double, or
+4 pods, per 15 s), bounds it by min/max, and writes the target's replicas through its scale subresource as
`kube-controller-manager`, so that managedFields show who owns `spec.replicas`.

Metrics the sandbox can measure: `Resource` cpu (Utilization of the requests, or AverageValue) from per-pod
figures set through `POST /sandbox/metrics`, and a `Pods` metric named `requests_per_second` (or
`istio_requests_per_second`): the mesh's delivered request rate per pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from kube_sandbox.cluster import Cluster, now
from kube_sandbox.defaults import quantity
from kube_sandbox.errors import ApiError
from kube_sandbox.pods import ready
from kube_sandbox.selectors import match_labels_selector

log = logging.getLogger(__name__)
MANAGER = "kube-controller-manager"
TOLERANCE = 0.1
RATE_METRICS = ("requests_per_second", "istio_requests_per_second")
_TARGETS = {
    "Deployment": ("apps", "deployments"),
    "ReplicaSet": ("apps", "replicasets"),
    "StatefulSet": ("apps", "statefulsets"),
}


class MetricError(Exception):
    """A metric the controller cannot read: the ScalingActive condition's reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, f"the HPA was unable to compute the replica count: {message}"


class Autoscaler:
    """Runs every HPA of the cluster each `period` seconds."""

    def __init__(self, cluster: Cluster, request_rate: Callable[[str, str], float], *, period: float = 15.0) -> None:
        self.cluster = cluster
        self.request_rate = request_rate  # (namespace, pod) -> requests a second
        self.period = period
        self.cpu: dict[tuple[str, str], float] = {}  # (namespace, pod) -> cores in use
        self._recommendations: dict[tuple[str, str], deque[tuple[float, int]]] = defaultdict(deque)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            for hpa in self.cluster.store.items("autoscaling", "horizontalpodautoscalers"):
                try:
                    self.reconcile(hpa)
                except ApiError:  # a conflict with a client's write: the next period tries again
                    continue
                except Exception:  # a sandbox bug must not stop autoscaling: log it, go on
                    log.exception("autoscaler failed on %s", hpa["metadata"].get("name"))

    def reconcile(self, hpa: dict[str, Any]) -> None:
        meta, spec = hpa["metadata"], hpa.get("spec") or {}
        namespace = meta["namespace"]
        ref = spec.get("scaleTargetRef") or {}
        group_plural = _TARGETS.get(str(ref.get("kind")))
        rt = self.cluster.rt(group_plural[0], "v1", group_plural[1]) if group_plural else None
        target = self.cluster.store.get((*group_plural, namespace, str(ref.get("name")))) if group_plural else None
        if rt is None or target is None:
            self._status(
                hpa,
                None,
                [],
                [
                    _condition(
                        "AbleToScale",
                        "False",
                        "FailedGetScale",
                        f"the HPA controller was unable to get the target's current scale: "
                        f'{str(ref.get("kind", "")).lower()}s "{ref.get("name")}" not found',
                    )
                ],
            )
            return
        current = int((target.get("spec") or {}).get("replicas", 1))
        minimum, maximum = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
        if current == 0 and minimum != 0:
            self._status(
                hpa,
                target,
                [],
                [
                    _condition(
                        "ScalingActive",
                        "False",
                        "ScalingDisabled",
                        "scaling is disabled since the replica count of the target is zero",
                    )
                ],
            )
            return
        pods = self._pods(target, namespace)
        try:
            proposals, metrics = self._proposals(spec, pods, current, namespace)
        except MetricError as exc:
            self._status(hpa, target, [], [_condition("ScalingActive", "False", exc.reason, exc.message)])
            return
        desired = self._stabilized(hpa, spec, current, max(proposals) if proposals else current)
        limited = min(max(desired, minimum), maximum)
        conditions = [
            _condition(
                "AbleToScale",
                "True",
                "SucceededRescale" if limited != current else "ReadyForNewScale",
                "the HPA controller was able to update the target scale"
                if limited != current
                else "recommended size matches current size",
            ),
            _condition(
                "ScalingActive",
                "True",
                "ValidMetricFound",
                "the HPA was able to successfully calculate a replica count",
            ),
            _condition(
                "ScalingLimited",
                "True" if limited != desired else "False",
                ("TooManyReplicas" if desired > maximum else "TooFewReplicas")
                if limited != desired
                else "DesiredWithinRange",
                "the desired replica count is more than the maximum replica count"
                if desired > maximum
                else "the desired replica count is less than the minimum replica count"
                if desired < minimum
                else "the desired count is within the acceptable range",
            ),
        ]
        if limited != current:
            self.cluster.patch(
                rt,
                "v1",
                namespace,
                target["metadata"]["name"],
                patch_type="merge",
                body={"spec": {"replicas": limited}},
                manager=MANAGER,
                subresource="scale",
            )
        self._status(hpa, target, metrics, conditions, desired=limited, scaled=limited != current)

    def _pods(self, target: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
        """The target's pods the replica calculator groups: all but the deleted and the failed ones."""
        selector = match_labels_selector((target.get("spec") or {}).get("selector"))
        return [
            p
            for p in self.cluster.store.items("", "pods", namespace)
            if selector(p["metadata"].get("labels") or {})
            and not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") != "Failed"
        ]

    def _proposals(
        self, spec: dict[str, Any], pods: list[dict[str, Any]], current: int, namespace: str
    ) -> tuple[list[int], list[dict[str, Any]]]:
        proposals: list[int] = []
        metrics: list[dict[str, Any]] = []
        default = {"type": "Resource", "resource": {"name": "cpu", "target": {"averageUtilization": 80}}}
        for metric in spec.get("metrics") or [default]:
            kind = metric.get("type")
            if kind == "Resource" and (metric.get("resource") or {}).get("name") == "cpu":
                proposal, shown = self._cpu(metric["resource"], pods, current, namespace)
            elif kind == "Pods" and ((metric.get("pods") or {}).get("metric") or {}).get("name") in RATE_METRICS:
                proposal, shown = self._rate(metric["pods"], pods, current, namespace)
            else:
                raise MetricError(f"FailedGet{kind}Metric", f"the sandbox cannot measure {metric}")
            proposals.append(proposal)
            metrics.append(shown)
        return proposals, metrics

    def _cpu(
        self, resource: dict[str, Any], pods: list[dict[str, Any]], current: int, namespace: str
    ) -> tuple[int, dict[str, Any]]:
        """kube's GetResourceReplicas (pkg/controller/podautoscaler/replica_calculator.go): the ratio over the ready
        pods with metrics; then, if pods have no metrics or are unready, it is recomputed with missing pods at
        100% on a scale-down and 0% on a scale-up (unready ones at 0% on a scale-up), and no scaling happens if
        that flips the direction or lands within the tolerance (as during a rollout)."""
        target = resource.get("target") or {}
        usage = {p["metadata"]["name"]: self.cpu.get((namespace, p["metadata"]["name"])) for p in pods}
        measured = {p["metadata"]["name"]: usage[p["metadata"]["name"]] or 0.0 for p in pods if ready(p)}
        measured = {name: value for name, value in measured.items() if usage[name] is not None}
        if not measured:
            raise MetricError(
                "FailedGetResourceMetric",
                "failed to get cpu utilization: unable to get metrics for resource cpu: "
                "no metrics returned from resource metrics API",
            )
        total = sum(measured.values())
        average = f"{round(total / len(measured) * 1000)}m"
        if target.get("type") == "AverageValue":
            wanted = quantity(target.get("averageValue", 0))
            proposal = _propose(total / len(measured) / wanted, total / wanted, current)
            return proposal, {"type": "Resource", "resource": {"name": "cpu", "current": {"averageValue": average}}}
        requests = {p["metadata"]["name"]: _cpu_request(p) for p in pods}
        wanted = float(target.get("averageUtilization", 80))
        utilization = total / sum(requests[n] for n in measured) * 100
        shown = {"averageUtilization": round(utilization), "averageValue": average}
        metric = {"type": "Resource", "resource": {"name": "cpu", "current": shown}}
        ratio = utilization / wanted
        missing = [n for n in requests if usage[n] is None]
        unready = [n for n in requests if usage[n] is not None and n not in measured]
        if not missing and not (unready and ratio > 1.0):
            return _propose(ratio, ratio * len(measured), current), metric
        filled = dict(measured)
        for name in missing:
            if ratio < 1.0:
                filled[name] = requests[name] * max(100.0, wanted) / 100
            elif ratio > 1.0:
                filled[name] = 0.0
        if ratio > 1.0:
            filled.update({name: 0.0 for name in unready})
        again = sum(filled.values()) / sum(requests[n] for n in filled) * 100 / wanted
        if abs(1.0 - again) <= TOLERANCE or (ratio < 1.0 < again) or (again < 1.0 < ratio):
            return current, metric
        proposal = max(1, math.ceil(again * len(filled) - 1e-9))
        if (again < 1.0 and proposal > current) or (again > 1.0 and proposal < current):
            return current, metric
        return proposal, metric

    def _rate(
        self, metric: dict[str, Any], pods: list[dict[str, Any]], current: int, namespace: str
    ) -> tuple[int, dict[str, Any]]:
        pods = [p for p in pods if ready(p)]
        if not pods:
            raise MetricError("FailedGetPodsMetric", "no ready pods to measure")
        total = sum(self.request_rate(namespace, p["metadata"]["name"]) for p in pods)
        wanted = quantity((metric.get("target") or {}).get("averageValue", 1))
        proposal = _propose(total / len(pods) / wanted, total / wanted, current)
        current_value = {"averageValue": f"{round(total / len(pods) * 1000)}m"}
        return proposal, {"type": "Pods", "pods": {"metric": metric.get("metric") or {}, "current": current_value}}

    def _stabilized(self, hpa: dict[str, Any], spec: dict[str, Any], current: int, proposal: int) -> int:
        """kube's stabilization: the highest recommendation of the scale-down window, the lowest of the up one,
        then the default scale-up limit."""
        behavior = spec.get("behavior") or {}
        down = float((behavior.get("scaleDown") or {}).get("stabilizationWindowSeconds", 300))
        up = float((behavior.get("scaleUp") or {}).get("stabilizationWindowSeconds", 0))
        history = self._recommendations[(hpa["metadata"]["namespace"], hpa["metadata"]["name"])]
        moment = time.monotonic()
        history.append((moment, proposal))
        while history and history[0][0] < moment - max(down, up, 1):
            history.popleft()
        up_bound = min([v for t, v in history if t >= moment - up] or [proposal])
        down_bound = max([v for t, v in history if t >= moment - down] or [proposal])
        desired = current
        if up_bound > current:
            desired = min(up_bound, max(current * 2, current + 4))
        elif down_bound < current:
            desired = down_bound
        return desired

    def _status(
        self,
        hpa: dict[str, Any],
        target: dict[str, Any] | None,
        metrics: list[dict[str, Any]],
        conditions: list[dict[str, Any]],
        *,
        desired: int | None = None,
        scaled: bool = False,
    ) -> None:
        old = hpa.get("status") or {}
        current = int(((target or {}).get("status") or {}).get("replicas", 0))
        status: dict[str, Any] = {
            "currentReplicas": current,
            "desiredReplicas": desired if desired is not None else old.get("desiredReplicas", current),
            "currentMetrics": metrics or None,
            "conditions": conditions,
        }
        if scaled or old.get("lastScaleTime"):
            status["lastScaleTime"] = now() if scaled else old["lastScaleTime"]
        status = {k: v for k, v in status.items() if v is not None}
        for condition in status["conditions"]:
            before = next((c for c in old.get("conditions") or [] if c.get("type") == condition["type"]), None)
            if before and before.get("status") == condition["status"]:
                condition["lastTransitionTime"] = before.get("lastTransitionTime", condition["lastTransitionTime"])
        if {k: v for k, v in old.items() if k != "conditions"} == {
            k: v for k, v in status.items() if k != "conditions"
        } and _plain(old.get("conditions")) == _plain(status["conditions"]):
            return
        rt = self.cluster.rt("autoscaling", "v2", "horizontalpodautoscalers")
        self.cluster.patch(
            rt,
            "v2",
            hpa["metadata"]["namespace"],
            hpa["metadata"]["name"],
            patch_type="merge",
            body={"status": status},
            manager=MANAGER,
            subresource="status",
        )


def _cpu_request(pod: dict[str, Any]) -> float:
    total = 0.0
    for c in pod["spec"].get("containers") or []:
        request = ((c.get("resources") or {}).get("requests") or {}).get("cpu")
        if request is None:
            raise MetricError(
                "FailedGetResourceMetric",
                f"failed to get cpu utilization: missing request for cpu in container {c.get('name')} "
                f"of Pod {pod['metadata']['name']}",
            )
        total += quantity(request)
    return total


def _propose(ratio: float, exact: float, current: int) -> int:
    """kube's replica calculator: no change within the tolerance, else ceil of the usage over the target."""
    if abs(1.0 - ratio) <= TOLERANCE:
        return current
    return max(1, math.ceil(exact - 1e-9))


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": status, "lastTransitionTime": now(), "reason": reason, "message": message}


def _plain(conditions: Any) -> list[tuple[Any, ...]]:
    return [(c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in conditions or []]
