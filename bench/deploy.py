"""`deployer deploy` of a 20-object chart with `canary: false` against `helm upgrade --install --wait` of the same
chart and values on the same sandbox, each a new process as a user runs it.

The chart: 5 Deployments (1 replica), 5 Services, 5 ConfigMaps, 5 ServiceAccounts. Each run installs into fresh
namespaces (one per tool), then upgrades with a changed image (every Deployment rolls). Prints the median of each
and the ratios (the reliability issue asks deploy for at most 1.0x helm, on the way to 0.5x).

Usage: .venv/bin/python bench/deploy.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kube_sandbox.testing import start_sandbox  # noqa: E402
from runs import repeat, report  # noqa: E402

BIN = Path(sys.executable).parent
HELM = shutil.which("helm", path=str(ROOT / ".tools" / "bin")) or "helm"
IMAGE = "127.0.0.1:5000/bench"

TEMPLATE = """{{- range $i := until 5 }}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: "part-{{ $i }}"}
data: {greeting: "{{ $.Values.greeting }}"}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: "part-{{ $i }}"}
---
apiVersion: v1
kind: Service
metadata: {name: "part-{{ $i }}"}
spec:
  selector: {app: "part-{{ $i }}"}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: "part-{{ $i }}"}
spec:
  replicas: 1
  selector: {matchLabels: {app: "part-{{ $i }}"}}
  template:
    metadata: {labels: {app: "part-{{ $i }}"}}
    spec:
      serviceAccountName: "part-{{ $i }}"
      containers:
        - name: app
          image: "{{ $.Values.deployer.image.ref }}"
          ports: [{name: http, containerPort: 8080}]
          envFrom: [{configMapRef: {name: "part-{{ $i }}"}}]
{{- end }}
"""


def make_repo(tmp: Path) -> Path:
    repo = tmp / "parts"
    (repo / "chart" / "templates").mkdir(parents=True)
    (repo / "chart" / "Chart.yaml").write_text("apiVersion: v2\nname: parts\nversion: 0.1.0\n")
    (repo / "chart" / "values.yaml").write_text(f"greeting: hi\ndeployer: {{image: {{ref: {IMAGE}:v0}}}}\n")
    (repo / "chart" / "templates" / "parts.yaml").write_text(TEMPLATE)
    (repo / "values.yaml").write_text("greeting: hello\n")
    (repo / "Dockerfile").write_text("FROM scratch\n")
    (repo / "deploy.yaml").write_text(
        f"app: parts\nimage: {{repository: {IMAGE}}}\n"
        "render:\n  helm:\n    chart: chart\n"
        "environments:\n  bench:\n    branches: [main]\n    namespace: parts-deployer\n"
        "    values: [values.yaml]\n    canary: false\n"
    )
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    return repo


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{done.stdout}{done.stderr}")
    return elapsed


def one_run(tmp: Path) -> dict[str, float]:
    sandbox = start_sandbox(tmp / "sandbox", ready_delay=0.2)
    try:
        core = client.CoreV1Api(sandbox.api())
        for name in ("parts-deployer", "parts-helm"):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        repo = make_repo(tmp)
        env = {**os.environ, "KUBECONFIG": str(sandbox.kubeconfig)}
        figures: dict[str, float] = {}
        for label, tag in (("install", "v1"), ("upgrade", "v2")):
            figures[f"deployer deploy, {label} (s)"] = timed(
                [str(BIN / "deployer"), "deploy", "--env", "bench", "--repo", str(repo), "--image", f"{IMAGE}:{tag}"],
                env,
            )
            helm = [HELM, "upgrade", "--install", "parts", str(repo / "chart"), "-n", "parts-helm", "--wait"]
            helm += ["-f", str(repo / "values.yaml"), "--set", f"deployer.image.ref={IMAGE}:{tag}"]
            figures[f"helm upgrade --install --wait, {label} (s)"] = timed(helm, env)
        for label in ("install", "upgrade"):
            figures[f"ratio deploy / helm, {label}"] = (
                figures[f"deployer deploy, {label} (s)"] / figures[f"helm upgrade --install --wait, {label} (s)"]
            )
        return figures
    finally:
        sandbox.stop()


def main() -> None:
    # as installed from a wheel: bytecode compiled once (an environment with PYTHONDONTWRITEBYTECODE would otherwise
    # compile every module of the source tree in every process, ~0.15s that no installed deployer pays)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "deployer")], check=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    report(
        f"a 20-object chart, canary: false, on the sandbox; median of {args.runs} runs",
        repeat(one_run, args.runs),
        width=44,
        spec="8.3f",
    )


if __name__ == "__main__":
    main()
