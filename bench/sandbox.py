"""Sandbox throughput: requests/s for create, get and server-side apply over N objects (default 1,000), through
the official Python client as the deployer uses it, and the sandbox process's memory. Medians of several runs.

Usage: .venv/bin/python bench/sandbox.py [--objects N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    kubeconfig = tmp / "kubeconfig"
    exe = shutil.which("deployer", path=str(Path(sys.executable).parent)) or "deployer"
    proc = subprocess.Popen(
        [exe, "sandbox", "--kubeconfig", str(kubeconfig)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not kubeconfig.exists():
        time.sleep(0.05)
    return proc, kubeconfig


def rate(count: int, action: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for index in range(count):
        action(index)
    return count / (time.perf_counter() - started)


def one_run(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, kubeconfig = start(Path(tmp))
        try:
            api = config.new_client_from_config(str(kubeconfig))
            core = client.CoreV1Api(api)
            idle = rss_mib(proc.pid)
            body = lambda i: {"metadata": {"name": f"c{i}", "labels": {"app": "bench"}}, "data": {"k": "v" * 64}}  # noqa: E731
            create = rate(count, lambda i: core.create_namespaced_config_map("default", body(i)))
            get = rate(count, lambda i: core.read_namespaced_config_map(f"c{i}", "default"))
            resource = DynamicClient(api).resources.get(api_version="v1", kind="ConfigMap")
            apply = rate(
                count,
                lambda i: resource.server_side_apply(
                    body={
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": f"c{i}", "namespace": "default"},
                        "data": {"k": "w" * 64},
                    },
                    name=f"c{i}",
                    namespace="default",
                    field_manager="bench",
                    force_conflicts=True,
                ),
            )
            return {
                "create/s": create,
                "get/s": get,
                "apply/s": apply,
                "idle MiB": idle,
                "loaded MiB": rss_mib(proc.pid),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.objects) for _ in range(args.runs)]
    print(f"sandbox, {args.objects} ConfigMaps, official Python client, sequential, median of {args.runs} runs")
    for key in runs[0]:
        print(f"  {key:12} {statistics.median(r[key] for r in runs):8.1f}")
    print(f"  (machine: {os.cpu_count()} cores; no real kube-apiserver can run here to compare side by side)")


if __name__ == "__main__":
    main()
