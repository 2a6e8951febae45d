"""Canary benchmarks on the sandbox (medians of several runs), side by side with `helm upgrade --install --wait`:

- from a failed check crossing the threshold to the VirtualService at 100/0 (goal: under 1 s);
- API requests per release of a 20-object app, counted by the sandbox (goal: at most 3x the objects);
- the deployer's own time per canary step, excluding the configured interval.

Usage: .venv/bin/python bench/canary.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from runs import repeat, report  # bench/runs.py: this script's own folder is on sys.path

from deployer.config import RepoFiles, load_deploy_config
from deployer.errors import DeployError
from deployer.kube import connect
from deployer.pipeline import ImageRef, render_environment
from deployer.pipeline.ports import cluster_ports
from deployer.pipeline.release import release

ROOT = Path(__file__).resolve().parent.parent
OBJECTS = 20
DEPLOY = """\
app: bench
image: {repository: 127.0.0.1:5000/bench}
render: {templates: {dir: templates}}
environments:
  bench:
    branches: [main]
    namespace: NAMESPACE
    canary: {steps: [25, 50, 75], interval: INTERVAL, threshold: 1, grace: 1s}  # the sandbox propagates in 1s
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: bench}
spec:
  replicas: 2
  selector: {matchLabels: {app: bench}}
  template:
    metadata: {labels: {app: bench}}
    spec: {containers: [{name: bench, image: "{{ deployer.image.ref }}"}]}
---
apiVersion: v1
kind: Service
metadata: {name: bench}
spec: {selector: {app: bench}, ports: [{port: 80}]}
"""


def app(tmp: Path, namespace: str, interval: str) -> Path:
    repo = tmp / f"app-{namespace}"
    (repo / "templates").mkdir(parents=True)
    (repo / "deploy.yaml").write_text(DEPLOY.replace("NAMESPACE", namespace).replace("INTERVAL", interval))
    (repo / "Dockerfile").write_text("FROM scratch\n")
    configs = "".join(
        f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: config-{i}}}\ndata: {{k: v{i}}}\n"
        for i in range(OBJECTS - 2)
    )
    (repo / "templates" / "all.yaml.j2").write_text(DEPLOYMENT + configs)
    return repo


def chart(tmp: Path) -> Path:
    """The same 20 objects as a Helm chart, for the side-by-side."""
    path = tmp / "chart"
    (path / "templates").mkdir(parents=True)
    (path / "Chart.yaml").write_text("apiVersion: v2\nname: bench\nversion: 0.1.0\n")
    body = DEPLOYMENT.replace("{{ deployer.image.ref }}", "{{ .Values.image }}")
    body += "".join(
        f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: config-{i}}}\ndata: {{k: v{i}}}\n"
        for i in range(OBJECTS - 2)
    )
    (path / "templates" / "all.yaml").write_text(body)
    return path


class Sandbox:
    """The sandbox as its own process (not a thread of this one), so that it does not share the GIL with the
    release being timed."""

    def __init__(self, tmp: Path) -> None:
        self.kubeconfig = tmp / "kubeconfig"
        exe = shutil.which("deployer", path=str(Path(sys.executable).parent)) or "deployer"
        self.proc = subprocess.Popen(
            [exe, "sandbox", "--kubeconfig", str(self.kubeconfig), "--ready-delay", "0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not self.kubeconfig.exists():
            time.sleep(0.05)
        self.url = self.kubeconfig.read_text().split("server: ")[1].split()[0]

    def post(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).read()

    def requests(self) -> int:
        with urllib.request.urlopen(f"{self.url}/sandbox/stats", timeout=10) as answer:
            return sum(json.load(answer)["requests"].values())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


async def run_release(sandbox: Sandbox, repo: Path, version: str) -> tuple[float, list[tuple[float, str]], bool]:
    files = RepoFiles(repo)
    config = load_deploy_config(files)
    rendered = await render_environment(repo=files, config=config, environment="bench", commit=version)
    events: list[tuple[float, str]] = []
    started = time.perf_counter()
    try:
        async with connect(sandbox.kubeconfig) as api:
            ports = await cluster_ports(api, namespace=rendered.namespace, app=rendered.app, environment="bench")
            await release(
                ports,
                rendered=rendered,
                policy=config.environments["bench"].canary,
                image=ImageRef(repository="127.0.0.1:5000/bench", tag=version),
                sink=lambda e: events.append((time.perf_counter(), e.message)),
            )
        ok = True
    except DeployError:
        ok = False
    return time.perf_counter() - started, events, ok


def one_run(tmp: Path) -> dict[str, float]:
    sandbox = Sandbox(tmp)
    try:
        from kubernetes import client, config  # noqa: PLC0415

        api_ns = config.new_client_from_config(str(sandbox.kubeconfig))

        for ns in ("bench-a", "bench-b", "bench-helm"):
            mesh = {"istio-injection": "enabled"}  # a canary needs sidecars
            client.CoreV1Api(api_ns).create_namespace({"metadata": {"name": ns, "labels": mesh}})
        interval = 0.5
        good = app(tmp, "bench-a", f"{int(interval * 1000)}ms")
        asyncio.run(run_release(sandbox, good, "v1"))
        before = sandbox.requests()
        elapsed, _, ok = asyncio.run(run_release(sandbox, good, "v2"))
        assert ok
        requests = sandbox.requests() - before
        own_per_step = (elapsed - 3 * interval) / 3
        bad = app(tmp, "bench-b", f"{int(interval * 1000)}ms")
        asyncio.run(run_release(sandbox, bad, "v1"))
        # ready at first (so it rolls out and gets traffic), unready 0.2 s later: a readiness check fails
        sandbox.post(
            "/sandbox/pods", {"image": "127.0.0.1:5000/bench:broken", "behaviour": "unready-after", "after": 0.2}
        )
        _, events, ok = asyncio.run(run_release(sandbox, bad, "broken"))
        assert not ok
        failed_at = next(t for t, m in events if "FAILED" in m)
        restored_at = next(t for t, m in events if t > failed_at and m.startswith("weights stable 100%"))
        env = {**os.environ, "KUBECONFIG": str(sandbox.kubeconfig)}
        helm = str(ROOT / ".tools" / "bin" / "helm")
        started = time.perf_counter()
        subprocess.run(
            [
                helm,
                "upgrade",
                "--install",
                "bench",
                str(chart(tmp)),
                "-n",
                "bench-helm",
                "--wait",
                "--set",
                "image=127.0.0.1:5000/bench:v1",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        helm_first = time.perf_counter() - started
        return {
            "failed check -> VirtualService 100/0 (ms)": (restored_at - failed_at) * 1000,
            f"API requests for a {OBJECTS}-object canary release": requests,
            "requests per object": requests / OBJECTS,
            "deployer's own time per step, interval excluded (ms)": own_per_step * 1000,
            f"whole canary release, 3 steps x {interval}s (ms)": elapsed * 1000,
            "helm upgrade --install --wait, same objects, no canary (ms)": helm_first * 1000,
        }
    finally:
        sandbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    report(
        f"canary releases on the sandbox, median of {args.runs} runs",
        repeat(one_run, args.runs),
        width=60,
        spec="9.1f",
    )


if __name__ == "__main__":
    main()
