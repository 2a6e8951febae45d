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
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STATE = ROOT / ".state"
BUILDAH = ["buildah", "--root", str(STATE / "containers" / "storage"), "--runroot", str(STATE / "containers" / "run")]
PHASES = ["transfer + plan + scan", "build", "render", "apply", "analysis", "promote", "server overhead"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(path: Path, text: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {text!r} in {path}")


class Stack:
    """Registry, simulated sandbox and `deployer serve` on free ports."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs = tmp, []
        self.registry = f"127.0.0.1:{free_port()}"
        self.start(
            "registry", [BIN / "deployer", "registry", "--port", self.registry.split(":")[1], "--storage", tmp / "reg"]
        )
        self.kubeconfig = tmp / "kubeconfig"
        self.start("sandbox", [BIN / "deployer", "sandbox", "--kubeconfig", self.kubeconfig, "--ready-delay", "0.1"])
        wait_for(tmp / "sandbox.log", "export KUBECONFIG")
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "LC_ALL": "C"}
        for ns in ("hello-staging", "hello-prod", "hello-helm"):
            subprocess.run(
                [ROOT / ".tools/bin/kubectl", "create", "namespace", ns], env=self.env, check=True, capture_output=True
            )
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp / "key"], check=True)
        self.ssh = free_port()
        config = {
            "dataDir": str(tmp / "server"),
            "listen": {"ssh": f"127.0.0.1:{self.ssh}", "http": f"127.0.0.1:{free_port()}"},
            "cluster": {"kubeconfig": str(self.kubeconfig)},
            "registry": {"host": self.registry},
            "builder": {"kind": "buildah", "storage": str(STATE / "containers")},
            "apps": {"hello": {"namespaces": ["hello-staging", "hello-prod", "hello-helm"]}},
            "users": {"bench": {"keys": [(tmp / "key.pub").read_text().strip()]}},
        }
        (tmp / "server.yaml").write_text(json.dumps(config))
        self.start("serve", [BIN / "deployer", "serve", "--config", tmp / "server.yaml"])
        wait_for(tmp / "serve.log", "deployer serving")
        self.env["GIT_SSH_COMMAND"] = (
            f"ssh -i {tmp / 'key'} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o LogLevel=ERROR"
        )

    def start(self, name: str, args: list[object]) -> None:
        log = (self.tmp / f"{name}.log").open("w")
        self.procs.append(subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def app(tmp: Path, registry: str) -> Path:
    """examples/hello with both environments' canaries at the minimum: one 50% step of 100ms, readiness only."""
    repo = tmp / "hello"
    shutil.copytree(ROOT / "examples" / "hello", repo)
    deploy = repo / "deploy.yaml"
    text = deploy.read_text().replace("127.0.0.1:5000/hello", f"{registry}/hello")
    text = re.sub(r"    canary:\n(      .*\n)+", "    canary: {steps: [50], interval: 100ms, threshold: 1}\n", text)
    deploy.write_text(text)
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "v1"],
    ):
        subprocess.run(["git", "-C", repo, *args], check=True)
    return repo


def commit(repo: Path, text: str) -> None:
    (repo / "app" / "bench.txt").write_text(text)
    subprocess.run(["git", "-C", repo, "add", "-A"], check=True)
    subprocess.run(["git", "-C", repo, "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", text], check=True)


def timed_push(stack: Stack, repo: Path, refspec: str) -> tuple[float, list[tuple[float, str]]]:
    """The push's duration and each remote line with the time it arrived."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["git", "-C", str(repo), "push", f"ssh://git@127.0.0.1:{stack.ssh}/hello.git", refspec],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=stack.env,
    )
    assert proc.stdout is not None
    lines = [(time.perf_counter() - started, raw.decode(errors="replace").strip()) for raw in proc.stdout]
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
    image = f"{stack.registry}/hello:helm-{time.time_ns()}"
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


def one_run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-push-") as name:
        tmp = Path(name)
        stack = Stack(tmp)
        try:
            repo = app(tmp, stack.registry)
            timed_push(stack, repo, "main")  # the first release: no canary
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
    runs = [one_run() for _ in range(args.runs)]
    print(f"git push to live (examples/hello, canary one 50% step of 100ms), median of {args.runs} runs")
    for key in runs[0]:
        print(f"  {key:58} {statistics.median(r[key] for r in runs):9.0f}")


if __name__ == "__main__":
    main()
