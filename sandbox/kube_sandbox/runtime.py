"""Pod runtimes: what runs a pod and reports its status as a kubelet would.

The default, `SimulatedRuntime`, runs nothing: a pod becomes Ready after a short delay, a Job's pod
Succeeds after it, and images can be told to crash, never become ready, become unready later, or fail.

Whoever starts the sandbox may also map an image to a host command (`processes`, `kube-sandbox serve --process
IMAGE=COMMAND`): a pod of that image that runs to completion (restartPolicy Never or OnFailure, a Job's pod) runs
the command on the host with the container's args and env values appended and set, as a kubelet runs the image's
entrypoint; its output is the container's log (followed as it grows), its exit code the container's, and deleting
the pod kills it. That is how tests stand in for images that cannot run here (a kaniko executor).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kube_sandbox.defaults import qos_class

BEHAVIOURS = ("ready", "crash", "never-ready", "unready-after", "fail")


class PodRuntime(Protocol):
    """Runs pods; the controllers ask it for each pod's status, and it calls back when that may have moved."""

    def bind(self, on_change: Callable[[str, str], None]) -> None: ...

    def status(self, pod: dict[str, Any]) -> dict[str, Any] | None: ...

    def forget(self, namespace: str, name: str) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def address(self, namespace: str, name: str) -> str | None:
        """An IP the host can reach the pod on, or None when nothing runs there."""

    def logs(self, namespace: str, name: str, container: str | None, *, previous: bool, tail: int | None) -> bytes:
        """The container's output; ValueError with the apiserver's message when there is none."""


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


@dataclass
class _Run:
    started: float
    behaviour: str
    after: float


LOG_CAP = 4 * 2**20  # bytes of a process's output kept (its last ones)


@dataclass
class _Process:
    started: float
    output: bytearray = field(default_factory=bytearray)
    pid: int | None = None
    code: int | None = None
    finished: float | None = None
    task: asyncio.Task[None] | None = None


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (of command, args and env values): known variables replaced, $$ escapes,
    unknown ones kept as written."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


@dataclass
class SimulatedRuntime:
    """Pods that need no containers: deterministic timings, behaviour chosen per image."""

    ready_delay: float = 0.2
    crash_backoff: float = 1.0
    behaviours: dict[str, tuple[str, float]] = field(default_factory=dict)
    processes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # image -> host command (see above)
    on_change: Callable[[str, str], None] = lambda namespace, name: None
    _runs: dict[tuple[str, str], _Run] = field(default_factory=dict)
    _procs: dict[tuple[str, str], _Process] = field(default_factory=dict)

    def bind(self, on_change: Callable[[str, str], None]) -> None:
        self.on_change = on_change

    def set_behaviour(self, image: str, behaviour: str, after: float = 0.0) -> None:
        """Make pods of `image` behave so from now on (`ready` restores the default)."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {', '.join(BEHAVIOURS)}")
        self.behaviours[image] = (behaviour, after)
        for namespace, name in list(self._runs):
            self.on_change(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        self._runs.pop((namespace, name), None)
        process = self._procs.pop((namespace, name), None)
        if process is not None:
            self._kill(process)

    async def start(self) -> None:
        """Nothing to start: no containers run."""

    async def stop(self) -> None:
        self._runs.clear()
        for process in self._procs.values():
            self._kill(process)
        tasks = [p.task for p in self._procs.values() if p.task is not None]
        self._procs.clear()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    @staticmethod
    def _kill(process: _Process) -> None:
        if process.pid is not None and process.code is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def _spawn(self, key: tuple[str, str], command: tuple[str, ...], container: dict[str, Any]) -> _Process:
        process = _Process(time.time())
        env = {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}
        argv = [*command, *(expand(str(a), env) for a in container.get("args") or [])]

        async def run() -> None:
            try:
                child = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env={**os.environ, **env},
                    start_new_session=True,  # its own process group: deleting the pod kills all of it
                )
            except OSError as exc:
                process.output += f"exec {argv[0]}: {exc.strerror}\n".encode()
                process.code, process.finished = 128, time.time()
                self.on_change(*key)
                return
            process.pid = child.pid
            assert child.stdout is not None
            async for line in child.stdout:
                process.output += line
                if len(process.output) > LOG_CAP:
                    del process.output[: len(process.output) - LOG_CAP]
            code = await child.wait()
            process.code, process.finished = (128 - code if code < 0 else code), time.time()  # a signal: 128+N
            self.on_change(*key)

        process.task = asyncio.get_running_loop().create_task(run())
        return process

    def address(self, namespace: str, name: str) -> str | None:
        return None  # a simulated pod serves nothing: proxying to it is refused as by a dead pod

    def logs(self, namespace: str, name: str, container: str | None, *, previous: bool, tail: int | None) -> bytes:
        process = self._procs.get((namespace, name))
        if process is not None:
            data = bytes(process.output)
            if tail is not None:
                data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""
            return data
        run = self._runs.get((namespace, name))
        if run is None:
            raise ValueError(f'pod "{name}" is not running yet')
        if run.behaviour in ("fail", "crash"):  # what a failing program would leave: a last word and its code
            return b"[sandbox] simulated container failed: exit code 1\n"
        return b""  # simulated containers print nothing

    def _wake(self, namespace: str, name: str, seconds: float) -> None:
        asyncio.get_running_loop().call_later(max(seconds, 0.0) + 0.005, self.on_change, namespace, name)

    def status(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        meta, spec = pod["metadata"], pod["spec"]
        key = (meta["namespace"], meta["name"])
        images = [c.get("image", "") for c in spec.get("containers") or []]
        behaviour, after = next((self.behaviours[i] for i in images if i in self.behaviours), ("ready", 0.0))
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run(time.time(), behaviour, after)
        finishing = spec.get("restartPolicy", "Always") != "Always"
        mapped = next((c for c in spec.get("containers") or [] if c.get("image") in self.processes), None)
        if mapped is not None and finishing:
            process = self._procs.get(key)
            if process is None:
                process = self._procs[key] = self._spawn(key, self.processes[mapped["image"]], mapped)
            if process.code is None:
                return self._running(pod, run, ready=True)
            return self._finished(pod, run, failed=process.code != 0, code=process.code, at=process.finished)
        now = time.time()
        elapsed = now - run.started
        if elapsed < self.ready_delay:
            self._wake(*key, self.ready_delay - elapsed)
            return self._pending(pod, run)
        if finishing:
            return self._finished(pod, run, failed=behaviour in ("fail", "crash"))
        if behaviour == "crash":
            return self._crashing(pod, run, now)
        ready = behaviour == "ready" or (behaviour == "unready-after" and elapsed < self.ready_delay + after)
        if behaviour == "unready-after" and ready:
            self._wake(*key, self.ready_delay + after - elapsed)
        return self._running(pod, run, ready=ready)

    def _base(
        self, pod: dict[str, Any], run: _Run, phase: str, ready: bool, reason: str | None = None
    ) -> dict[str, Any]:
        return base_status(
            run.started, phase, ready=ready, reason=reason, pod_ip=_pod_ip(pod), qos=qos_class(pod.get("spec") or {})
        )

    def _containers(
        self,
        pod: dict[str, Any],
        state: dict[str, Any],
        *,
        ready: bool,
        restarts: int = 0,
        last: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        return [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": ready,
                "restartCount": restarts,
                "started": "running" in state,
                "state": state,
                "lastState": last or {},
                "containerID": f"sandbox://{pod['metadata']['uid'][:12]}-{c['name']}",
            }
            for c in pod["spec"].get("containers") or []
        ]

    def _pending(self, pod: dict[str, Any], run: _Run) -> dict[str, Any]:
        status = self._base(pod, run, "Pending", ready=False, reason="ContainersNotReady")
        status["containerStatuses"] = self._containers(pod, {"waiting": {"reason": "ContainerCreating"}}, ready=False)
        return status

    def _running(self, pod: dict[str, Any], run: _Run, *, ready: bool) -> dict[str, Any]:
        status = self._base(pod, run, "Running", ready=ready, reason=None if ready else "ContainersNotReady")
        state = {"running": {"startedAt": stamp(run.started + self.ready_delay)}}
        status["containerStatuses"] = self._containers(pod, state, ready=ready)
        return status

    def _crashing(self, pod: dict[str, Any], run: _Run, now: float) -> dict[str, Any]:
        # Restarts at ready_delay + backoff * (1 + 2 + 4 + ...), capped as the kubelet caps at 5 minutes.
        restarts, next_at, backoff = 0, run.started + self.ready_delay, self.crash_backoff
        while next_at + backoff <= now:
            next_at += backoff
            restarts += 1
            backoff = min(backoff * 2, 300 * self.crash_backoff)
        self._wake(pod["metadata"]["namespace"], pod["metadata"]["name"], next_at + backoff - now)
        status = self._base(pod, run, "Running", ready=False, reason="ContainersNotReady")
        last = {
            "terminated": {
                "exitCode": 1,
                "reason": "Error",
                "startedAt": stamp(next_at - 0.1),
                "finishedAt": stamp(next_at),
            }
        }
        waiting = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {int(backoff)}s restarting failed container",
            }
        }
        status["containerStatuses"] = self._containers(pod, waiting, ready=False, restarts=restarts + 1, last=last)
        return status

    def _finished(
        self, pod: dict[str, Any], run: _Run, *, failed: bool, code: int | None = None, at: float | None = None
    ) -> dict[str, Any]:
        status = self._base(pod, run, "Failed" if failed else "Succeeded", ready=False, reason="PodCompleted")
        code = code if code is not None else (1 if failed else 0)
        state = {
            "terminated": {
                "exitCode": code,
                "reason": "Error" if failed else "Completed",
                "startedAt": stamp(run.started),
                "finishedAt": stamp(at if at is not None else run.started + self.ready_delay),
            }
        }
        status["containerStatuses"] = self._containers(pod, state, ready=False)
        return status


def base_status(
    started: float,
    phase: str,
    *,
    ready: bool,
    reason: str | None,
    pod_ip: str | None,
    host_ip: str = "10.0.0.1",
    ready_since: float | None = None,
    qos: str = "BestEffort",
) -> dict[str, Any]:
    """A pod's status as a kubelet writes it, without containerStatuses."""
    started_at = stamp(started)
    ready_cond: dict[str, Any] = {
        "type": "Ready",
        "status": "True" if ready else "False",
        "lastProbeTime": None,
        "lastTransitionTime": stamp(ready_since) if ready_since else started_at,
    }
    containers_ready = dict(ready_cond, type="ContainersReady")
    if reason:
        ready_cond["reason"] = containers_ready["reason"] = reason
    status: dict[str, Any] = {"phase": phase, "hostIP": host_ip, "hostIPs": [{"ip": host_ip}]}
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    status["startTime"] = started_at
    status["qosClass"] = qos
    status["conditions"] = [
        {
            "type": "PodReadyToStartContainers",
            "status": "True" if pod_ip else "False",
            "lastProbeTime": None,
            "lastTransitionTime": started_at,
        },
        {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": started_at},
        ready_cond,
        containers_ready,
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": started_at},
    ]
    return status


def _pod_ip(pod: dict[str, Any]) -> str:
    digest = int(pod["metadata"]["uid"].replace("-", "")[:6], 16)
    return f"10.244.{(digest >> 8) % 256}.{digest % 254 + 1}"
