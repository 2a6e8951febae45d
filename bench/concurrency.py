"""Many releases at once through one `deployer serve`: 50 apps pushed to prod together against one pushed alone.

Each app is examples/hello under its own name and namespaces. Set-up (not timed): every app's v1 is pushed to
staging (built) and prod (first release), then v2 to staging (built; staging has `canary: false`). Timed: v2 pushed
to prod, whose image exists, so the push is the release alone: a canary of two steps (20%, 50%) of 5s each,
readiness watched through each interval. First one app alone, then the other 50 at once, real `git push`es over
SSH. Figures:

- wall time of the one push and of the 50 together, and their ratio (the interval-bound floor is 10s each);
- per-release overhead (push duration minus its 10s of intervals), p50 and p95, alone and together;
- the server process's peak RSS (VmHWM, reset before the timed pushes) and the time the event loop was late.

Usage: .venv/bin/python bench/concurrency.py [--apps 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from gitserver import GitServer, Key, make_key, push, push_in_background, server_config, start_server  # noqa: E402
from runs import repeat, report  # noqa: E402
from support import Registry, commit, git, start_registry  # noqa: E402

STEPS, INTERVAL = (20, 50), 5.0
FLOOR = len(STEPS) * INTERVAL


def make_app(tmp: Path, name: str, registry: str) -> Path:
    repo = tmp / name
    shutil.copytree(ROOT / "examples" / "hello", repo)
    deploy = repo / "deploy.yaml"
    text = deploy.read_text().replace("127.0.0.1:5000/hello", f"{registry}/{name}")
    text = re.sub(r"^app: hello$", f"app: {name}", text, flags=re.M)
    text = text.replace("namespace: hello-staging", f"namespace: {name}-staging")
    text = text.replace("namespace: hello-prod", f"namespace: {name}-prod")
    canaries = re.findall(r"    canary:\n(?:      .*\n)+", text)
    text = text.replace(canaries[0], "    canary: false\n")
    steps = ", ".join(str(s) for s in STEPS)
    text = text.replace(canaries[1], f"    canary: {{steps: [{steps}], interval: {INTERVAL:g}s, threshold: 1}}\n")
    deploy.write_text(text)
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "v1")
    return repo


class Sandbox:
    """The sandbox as its own process (a thread of this one would share its GIL with the pushes' threads).
    BENCH_PROFILE_SANDBOX=FILE runs it under cProfile, written to FILE when it stops."""

    def __init__(self, tmp: Path) -> None:
        self.pid = 0
        tmp.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = tmp / "kubeconfig"
        profile = os.environ.get("BENCH_PROFILE_SANDBOX")
        runner = [sys.executable, "-m", "cProfile", "-o", profile] if profile else [sys.executable]
        self.proc = subprocess.Popen(
            [*runner, "-m", "deployer", "sandbox", "--kubeconfig", str(self.kubeconfig), "--ready-delay", "0.1"],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "sandbox.log").open("w"),
        )
        while not self.kubeconfig.exists():
            time.sleep(0.05)
        time.sleep(0.2)
        self.pid = self.proc.pid

    def api(self) -> client.ApiClient:
        return config.new_client_from_config(str(self.kubeconfig))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


class Stack:
    def __init__(self, tmp: Path, names: list[str]) -> None:
        self.registry: Registry = start_registry(tmp / "registry")
        self.sandbox = Sandbox(tmp / "sandbox")
        core = client.CoreV1Api(self.sandbox.api())
        for name in names:
            for env in ("staging", "prod"):
                mesh = {"istio-injection": "enabled"}  # a canary needs sidecars
                meta = client.V1ObjectMeta(name=f"{name}-{env}", labels=mesh)
                core.create_namespace(client.V1Namespace(metadata=meta))
        self.key: Key = make_key(tmp / "keys", "bench")
        config = server_config(
            data=tmp / "data",
            kubeconfig=self.sandbox.kubeconfig,
            registry=self.registry.host,
            bound={},
            users={"bench": {"keys": [self.key.public]}},
        )
        config["apps"] = {n: {"environments": {e: f"{n}-{e}" for e in ("staging", "prod")}} for n in names}
        self.server: GitServer = start_server(tmp / "server", config)

    def push(self, repo: Path, refspec: str) -> float:
        started = time.perf_counter()
        done = push(repo, self.server.ssh_url(repo.name), refspec, key=self.key)
        if done.code != 0:
            raise SystemExit(f"push of {repo.name} {refspec} failed:\n{done.output}")
        return time.perf_counter() - started

    def timed_push(self, repo: Path, refspec: str) -> tuple[float, float]:
        """(the push's duration, when its release began: the `release  revision` line)"""
        started = time.perf_counter()
        proc = push_in_background(repo, self.server.ssh_url(repo.name), refspec, key=self.key)
        assert proc.stdout is not None
        lines = [(time.perf_counter() - started, line) for line in proc.stdout]
        if proc.wait() != 0:
            raise SystemExit(f"push of {repo.name} {refspec} failed:\n" + "".join(line for _, line in lines))
        began = next(t for t, line in lines if "release  revision" in line)
        if os.environ.get("BENCH_TIMELINE") == repo.name:
            Path(os.environ.get("BENCH_TIMELINE_FILE", "/tmp/timeline.txt")).write_text(
                "".join(f"{t:7.2f} {line}" for t, line in lines)
            )
        return time.perf_counter() - started, began

    def stop(self) -> None:
        self.server.stop()
        self.sandbox.stop()
        self.registry.process.terminate()
        self.registry.process.wait()


class Lag:
    """How late a 100ms tick of the server's /healthz answers while the pushes run (the event loop's health)."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self.stop = url, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        import requests  # noqa: PLC0415

        while not self.stop.is_set():
            started = time.perf_counter()
            requests.get(self.url, timeout=30)
            self.worst = max(self.worst, time.perf_counter() - started)
            self.stop.wait(0.1)

    def done(self) -> float:
        self.stop.set()
        self.thread.join()
        return self.worst


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def machine_busy() -> float:
    """CPU seconds every core of the machine spent not idle, since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_run(tmp: Path, apps: int) -> dict[str, float]:
    names = [f"c{i:02d}" for i in range(apps + 1)]
    stack = Stack(tmp, names)
    try:
        repos = [make_app(tmp, name, stack.registry.host) for name in names]

        def prepare(repo: Path) -> None:
            stack.push(repo, "main:main")  # staging, v1 (built)
            stack.push(repo, "main:prod")  # prod's first release, v1
            (repo / "app" / "bench.txt").write_text("v2\n")
            commit(repo, "v2")
            stack.push(repo, "main:main")  # staging, v2 (built): prod's push below builds nothing

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(prepare, repos))
        pid = stack.server.process.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak RSS from here on
        lag = Lag(f"http://127.0.0.1:{stack.server.http_port}/healthz")
        cpu_before = cpu_seconds(pid), cpu_seconds(stack.sandbox.pid)
        alone, alone_began = stack.timed_push(repos[0], "main:prod")
        busy_before = machine_busy()
        started = time.perf_counter()
        with ThreadPoolExecutor(apps) as pool:
            timed = list(pool.map(lambda repo: stack.timed_push(repo, "main:prod"), repos[1:]))
        wall = time.perf_counter() - started
        busy = (machine_busy() - busy_before) / (wall * (os.cpu_count() or 1))
        together = [t for t, _ in timed]
        worst_lag = lag.done()
        server_cpu, sandbox_cpu = cpu_seconds(pid) - cpu_before[0], cpu_seconds(stack.sandbox.pid) - cpu_before[1]
        overheads = [t - FLOOR for t in together]
        return {
            "one release alone (s)": alone,
            "  of which before the release began (s)": alone_began,
            f"{apps} releases at once, wall (s)": wall,
            "  median time before the release began (s)": statistics.median(b for _, b in timed),
            "ratio, at once / alone": wall / alone,
            "overhead per release alone (s)": alone - FLOOR,
            f"overhead per release, {apps} at once, p50 (s)": statistics.median(overheads),
            f"overhead per release, {apps} at once, p95 (s)": percentile(overheads, 0.95),
            "server peak RSS during the timed pushes (MB)": peak_rss_mb(pid),
            "slowest /healthz during the timed pushes (ms)": worst_lag * 1000,
            "CPU of deployer serve during the timed pushes (s)": server_cpu,
            "CPU of the sandbox meanwhile (s)": sandbox_cpu,
            f"the machine's CPU busy meanwhile ({os.cpu_count()} cores, %)": busy * 100,
        }
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")
    report(
        f"{args.apps} canary releases at once through deployer serve "
        f"(steps {list(STEPS)}, {INTERVAL:g}s each: {FLOOR:g}s of intervals), median of {args.runs} runs",
        repeat(lambda tmp: one_run(tmp, args.apps), args.runs),
        width=52,
        spec="9.2f",
    )


if __name__ == "__main__":
    main()
