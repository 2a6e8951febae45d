"""Small readings of pod objects shared by the controllers, the API, the runtimes and the mesh."""

from __future__ import annotations

from typing import Any


def ready(pod: dict[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def named_port(containers: list[dict[str, Any]], name: Any) -> int | None:
    """The containerPort a port name stands for in these containers, or None."""
    for container in containers:
        for declared in container.get("ports") or []:
            if declared.get("name") == name:
                return int(declared["containerPort"])
    return None


def target_port(port: dict[str, Any], pods: list[dict[str, Any]]) -> int:
    """A Service port's targetPort on these pods: a number, or a container port's name resolved."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    for pod in pods:
        found = named_port(pod["spec"].get("containers") or [], target)
        if found is not None:
            return found
    return int(port.get("port", 0))
