"""Push-to-live for examples/hello through `deployer serve` (real git over SSH, buildah, docker-registry, the sandbox),
median of several runs, split by phase from the `remote:` lines as the pusher sees them arrive:

- transfer + plan + scan: `git push` starts → the first build line (pack upload, deploy.yaml, policy, secret scan);
- build: buildah build and push into the registry;
- render: Helm chart through pyhelm3, validated;
- apply: the canary applied and rolled out (no traffic yet);
- analysis: the canary steps, the interval at its minimum (100ms, one 50% step) plus the checks;
- promote: stable updated and rolled out, weights 100/0, canary deleted;
- server overhead: the rest (lease, records, verdict, git moving the ref).

Also the same commit pushed to a second environment (the build is skipped), and side by side what a user would run
instead: `buildah bud` + `buildah push` + `helm upgrade --install --wait` (no canary).

Usage: .venv/bin/python bench/push.py [--runs N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from gitserver import make_key, push_in_background, server_config, start_server  # noqa: E402
from kube_sandbox.testing import start_sandbox  # noqa: E402
from runs import repeat, report  # noqa: E402
from support import BUILDAH, commit, git, start_registry  # noqa: E402

PHASES = ["transfer + plan + scan", "build", "render", "apply", "analysis", "promote", "server overhead"]
NAMESPACES = ["hello-staging", "hello-prod", "hello-helm"]


class Stack:
    """A registry, a sandbox and `deployer serve`, through the test suite's own helpers."""

    def __init__(self, tmp: Path) -> None:
        self.registry = start_registry(tmp / "registry")
        self.sandbox = start_sandbox(tmp / "sandbox", ready_delay=0.1)
        core = client.CoreV1Api(self.sandbox.api())
        for name in NAMESPACES:
            mesh = {"istio-injection": "enabled"}  # a canary needs sidecars
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=mesh)))
        self.key = make_key(tmp / "keys", "bench")
        config = server_config(
            data=tmp / "data",
            kubeconfig=self.sandbox.kubeconfig,
            registry=self.registry.host,
            bound={"staging": "hello-staging", "prod": "hello-prod"},
            users={"bench": {"keys": [self.key.public]}},
        )
        self.server = start_server(tmp / "server", config)
        self.env = {**os.environ, "KUBECONFIG": str(self.sandbox.kubeconfig)}

    def stop(self) -> None:
        self.server.stop()
        self.sandbox.stop()
        self.registry.process.terminate()
        self.registry.process.wait()


def app(tmp: Path, registry: str) -> Path:
    """examples/hello with both environments' canaries at the minimum: one 50% step of 100ms, readiness only."""
    repo = tmp / "hello"
    shutil.copytree(ROOT / "examples" / "hello", repo)
    deploy = repo / "deploy.yaml"
    text = deploy.read_text().replace("127.0.0.1:5000/hello", f"{registry}/hello")
    text = re.sub(r"    canary:\n(      .*\n)+", "    canary: {steps: [50], interval: 100ms, threshold: 1}\n", text)
    deploy.write_text(text)
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "v1")
    return repo


def timed_push(stack: Stack, repo: Path, refspec: str) -> tuple[float, list[tuple[float, str]]]:
    """The push's duration and each remote line with the time it arrived."""
    started = time.perf_counter()
    proc = push_in_background(repo, stack.server.ssh_url(), refspec, key=stack.key)
    assert proc.stdout is not None
    lines = [(time.perf_counter() - started, line.strip()) for line in proc.stdout]
    if proc.wait() != 0:
        raise SystemExit("push failed:\n" + "\n".join(text for _, text in lines))
    return time.perf_counter() - started, lines


def phases(total: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    def at(predicate: object, default: float | None = None) -> float:
        found = next((t for t, text in lines if predicate(text)), default)  # type: ignore[operator]
        assert found is not None, predicate
        return found

    build = at(lambda x: "  build  " in x)
    render = at(lambda x: "  render  " in x)
    built = at(lambda x: "  build  " in x and ("pushed " in x or "not rebuilt" in x))
    release = at(lambda x: "release  revision" in x)
    traffic = at(lambda x: "/ canary 50%" in x)
    promote = at(lambda x: "promoting" in x)
    live = at(lambda x: "release  revision" in x and x.endswith("is live"))
    marks = [0.0, build, built, render, traffic, promote, live, total]
    # apply runs from the release line to the first weight above 0; render is build's end to the render line
    durations = dict(zip(PHASES, [b - a for a, b in itertools.pairwise(marks)], strict=True))
    durations["apply"] = traffic - release
    durations["server overhead"] = (total - live) + (release - render)
    return {k: v * 1000 for k, v in durations.items()}


def helm_alternative(stack: Stack, repo: Path) -> float:
    started = time.perf_counter()
    image = f"{stack.registry.host}/hello:helm-{time.time_ns()}"
    subprocess.run([*BUILDAH, "bud", "-q", "-t", image, str(repo)], check=True, capture_output=True)
    subprocess.run([*BUILDAH, "push", "--tls-verify=false", "-q", image], check=True, capture_output=True)
    subprocess.run(
        [
            ROOT / ".tools/bin/helm",
            "upgrade",
            "--install",
            "hello",
            repo / "charts" / "hello",
            "-n",
            "hello-helm",
            "--wait",
            "--set",
            f"deployer.image.ref={image}",
        ],
        env=stack.env,
        check=True,
        capture_output=True,
    )
    return (time.perf_counter() - started) * 1000


def one_run(tmp: Path) -> dict[str, float]:
    stack = Stack(tmp)
    try:
        repo = app(tmp, stack.registry.host)
        timed_push(stack, repo, "main")  # the first release: no canary
        (repo / "app" / "bench.txt").write_text("v2\n")
        commit(repo, "v2")
        total, lines = timed_push(stack, repo, "main")
        result = {f"{k} (ms)": v for k, v in phases(total, lines).items()}
        result["push to live, staging (ms)"] = total * 1000
        skipped, _ = timed_push(stack, repo, "main:prod")
        result["same commit to prod, build skipped, first release (ms)"] = skipped * 1000
        result["buildah bud + push + helm upgrade --wait (ms)"] = helm_alternative(stack, repo)
        return result
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    report(
        f"git push to live (examples/hello, canary one 50% step of 100ms), median of {args.runs} runs",
        repeat(one_run, args.runs),
        width=58,
        spec="9.0f",
    )


if __name__ == "__main__":
    main()
