"""The sandbox data plane: time to a Ready pod on real containers, and requests/s and latency through the ingress
gateway (a Gateway-bound VirtualService) and from a pod in the mesh (its sidecar's routes), next to the same pod
reached directly on its published port (what a user would curl instead). Medians of several runs.

Usage: .venv/bin/python bench/mesh.py [--requests N] [--runs R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kube_sandbox.testing import start_sandbox  # noqa: E402
from support import push_base_image, start_registry  # noqa: E402

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: bench}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: {image}
          command: [sh, -c, "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: bench}}
spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: http}}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: bench}}
spec:
  hosts: [web, web.bench.test]
  gateways: [mesh, istio-system/istio-ingressgateway]
  http: [{{route: [{{destination: {{host: web}}}}]}}]
"""


async def load(url: str, headers: dict[str, str], count: int) -> tuple[float, float]:
    """(requests/s, median latency in ms) for `count` requests, 8 at a time."""
    limit, latencies = asyncio.Semaphore(8), []

    async def one(session: aiohttp.ClientSession) -> None:
        async with limit:
            started = time.perf_counter()
            async with session.get(url, headers=headers) as answer:
                await answer.read()
                assert answer.status == 200
            latencies.append((time.perf_counter() - started) * 1000)

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(count)))
        elapsed = time.perf_counter() - started
    return count / elapsed, statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    kubectl = str(ROOT / ".tools" / "bin" / "kubectl")
    with tempfile.TemporaryDirectory() as tmp:
        registry = start_registry(Path(tmp) / "registry")
        image = push_base_image(registry)
        running = start_sandbox(Path(tmp), runtime="containers")
        try:
            kube = [kubectl, "--kubeconfig", str(running.kubeconfig)]
            subprocess.run([*kube, "create", "namespace", "bench"], check=True, capture_output=True)
            subprocess.run([*kube, "label", "namespace", "bench", "istio-injection=enabled"], check=True)
            started = time.perf_counter()
            subprocess.run(
                [*kube, "apply", "-f", "-"],
                input=DEPLOYMENT.format(image=image),
                text=True,
                check=True,
                capture_output=True,
            )
            subprocess.run(
                [*kube, "-n", "bench", "rollout", "status", "deploy/web", "--timeout=60s"],
                check=True,
                capture_output=True,
            )
            ready = (time.perf_counter() - started) * 1000
            subprocess.run([*kube, "create", "namespace", "plain"], check=True, capture_output=True)
            plain = DEPLOYMENT.format(image=image).replace("namespace: bench", "namespace: plain").split("---")[0]
            subprocess.run([*kube, "apply", "-f", "-"], input=plain, text=True, check=True, capture_output=True)
            subprocess.run(
                [*kube, "-n", "plain", "rollout", "status", "deploy/web", "--timeout=60s"],
                check=True,
                capture_output=True,
            )
            info = running.info()
            running.propagated()
            published = {p["namespace"]: p["ports"]["8080"] for p in running.control("/sandbox/ports", method="GET")}
            figures: dict[str, list[float]] = {}
            paths = (
                ("ingress gateway", f"{info['gateway']}/", {"Host": "web.bench.test"}),
                ("mesh client (sidecar)", f"{info['clients']}/", {"Host": "web", "X-Sandbox-From": "bench"}),
                ("published port, pod with a sidecar", f"http://127.0.0.1:{published['bench']}/", {}),
                ("published port, pod without (docker-proxy)", f"http://127.0.0.1:{published['plain']}/", {}),
            )
            for _ in range(args.runs):
                for name, url, headers in paths:
                    rps, latency = asyncio.run(load(url, headers, args.requests))
                    figures.setdefault(f"{name}: requests/s", []).append(rps)
                    figures.setdefault(f"{name}: median latency (ms)", []).append(latency)
        finally:
            running.stop()
            registry.process.terminate()
    print(f"sandbox data plane, median of {args.runs} runs of {args.requests} requests (8 concurrent)")
    print(f"  {'kubectl apply to rollout complete, first pod (ms)':62} {ready:9.1f}")
    for key, values in figures.items():
        print(f"  {key:62} {statistics.median(values):9.1f}")


if __name__ == "__main__":
    main()
