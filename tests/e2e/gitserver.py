"""`deployer serve` as its own process for end-to-end push tests, and `git push` as a user runs it (real git,
real ssh, real HTTP)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from support import EXAMPLES, STATE, commit, edit, free_port, git


@dataclass
class Key:
    """An SSH key pair made with ssh-keygen."""

    private: Path

    @property
    def public(self) -> str:
        return Path(f"{self.private}.pub").read_text().strip()


def make_key(directory: Path, name: str) -> Key:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return Key(path)


@dataclass
class GitServer:
    process: subprocess.Popen[str]
    config_path: Path
    data: Path
    ssh_port: int
    http_port: int
    log: Path
    keys: dict[str, Key] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def ssh_url(self, app: str = "hello") -> str:
        return f"ssh://git@127.0.0.1:{self.ssh_port}/{app}.git"

    def http_url(self, app: str = "hello", user: str | None = "alice") -> str:
        auth = f"{user}:{self.tokens[user]}@" if user else ""
        return f"http://{auth}127.0.0.1:{self.http_port}/{app}.git"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def repo(self, app: str = "hello") -> Path:
        return self.data / "repos" / f"{app}.git"

    def ref(self, ref: str, app: str = "hello") -> str | None:
        done = subprocess.run(
            ["git", "-C", str(self.repo(app)), "rev-parse", "--verify", "--quiet", ref],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip() or None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def server_config(
    *,
    data: Path,
    kubeconfig: Path,
    registry: str,
    bound: dict[str, str],
    users: dict[str, dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "dataDir": str(data),
        "listen": {"ssh": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"},
        "cluster": {"kubeconfig": str(kubeconfig)},
        "registry": {"host": registry},
        "builder": {"kind": "buildah", "storage": str(STATE / "containers")},
        "apps": {"hello": {"environments": bound}},  # environment -> namespace
        "users": users,
        # the sandbox's routes reach its proxies in 1s; a grace above that keeps the suite quick
        "canary": {"defaults": {"grace": "1500ms"}},
        **extra,
    }


def start_server(tmp: Path, config: dict[str, Any]) -> GitServer:
    """Write server.yaml, start `deployer serve`, wait until both listeners answer."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp / "server.log"
    exe = shutil.which("deployer", path=str(Path(sys.executable).parent)) or "deployer"
    process = subprocess.Popen(
        [exe, "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env={**os.environ, "DEPLOYER_DEBUG": ""},
    )
    assert process.stdout is not None
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until it says it serves (a listener turned off prints no line)
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"deployer serve exited: {log.read_text()}")
        for scheme in ("ssh", "http"):
            if line.startswith(f"{scheme}: "):
                ports[scheme] = int(line.split("127.0.0.1:")[1].split("/")[0])
        if line.startswith("deployer serving"):
            break
    return GitServer(process, path, Path(config["dataDir"]), ports.get("ssh", 0), ports.get("http", 0), log)


def token_entry(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class Pushed:
    code: int
    output: str

    @property
    def remote(self) -> list[str]:
        """The `remote:` lines, without the prefix."""
        return [line[len("remote: ") :].rstrip() for line in self.output.splitlines() if line.startswith("remote: ")]

    def __str__(self) -> str:
        return self.output


def git_env(key: Key | None = None) -> dict[str, str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    if key is not None:
        env["GIT_SSH_COMMAND"] = (
            f"ssh -i {key.private} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"
        )
    return env


def push(
    repo: Path, url: str, *refspecs: str, options: tuple[str, ...] = (), key: Key | None = None, force: bool = False
) -> Pushed:
    """`git push URL REFSPEC...` with `-o` options; exit code and everything git printed."""
    args = ["git", "-C", str(repo), "push"]
    for option in options:
        args += ["-o", option]
    if force:
        args.append("--force")
    done = subprocess.run(
        [*args, url, *refspecs],
        capture_output=True,
        text=True,
        env=git_env(key),
        timeout=300,
        check=False,
    )
    return Pushed(done.returncode, done.stdout + done.stderr)


def push_in_background(repo: Path, url: str, refspec: str, *, key: Key) -> subprocess.Popen[str]:
    """`git push URL REFSPEC` left running; read its output with `read_until`."""
    return subprocess.Popen(
        ["git", "-C", str(repo), "push", "--progress", url, refspec],
        env=git_env(key),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], text: str) -> list[str]:
    """The push's output lines up to the first containing `text` (all of them if it never comes)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            break
    return seen


def history_json(kubeconfig: Path, namespace: str, env: str = "staging", app: str = "hello") -> list[dict[str, Any]]:
    exe = shutil.which("deployer", path=str(Path(sys.executable).parent)) or "deployer"
    done = subprocess.run(
        [
            exe,
            "history",
            "--env",
            env,
            "--app",
            app,
            "--namespace",
            namespace,
            "--kubeconfig",
            str(kubeconfig),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(done.stdout))


__all__ = [
    "GitServer",
    "Key",
    "Pushed",
    "git",
    "history_json",
    "make_key",
    "new_token",
    "push",
    "push_in_background",
    "read_until",
    "server_config",
    "start_server",
    "token_entry",
]


@dataclass
class App:
    name: str
    repo: Path
    staging: str  # namespaces
    prod: str

    def head(self) -> str:
        return git(self.repo, "rev-parse", "HEAD")


def make_app(tmp: Path, name: str, registry_host: str) -> App:
    """examples/hello as a fresh app repository named `name` (namespaces NAME-staging and NAME-prod): a 1s
    canary of one step, readiness checked (the simulated runtime serves no HTTP), one commit on main."""
    repo = tmp / name
    shutil.copytree(EXAMPLES / "hello", repo)
    deploy = repo / "deploy.yaml"
    edit(deploy, "app: hello", f"app: {name}")
    edit(deploy, "repository: 127.0.0.1:5000/hello", f"repository: {registry_host}/{name}")
    edit(deploy, "namespace: hello-staging", f"namespace: {name}-staging")
    edit(deploy, "namespace: hello-prod", f"namespace: {name}-prod")
    edit(deploy, "steps: [20, 50]\n      interval: 10s", "steps: [50]\n      interval: 1s")
    edit(deploy, "        - name: homepage\n          http: {path: /, port: http, status: 200, timeout: 2s}\n", "")
    edit(deploy, "      threshold: 2\n      checks:\n", "      threshold: 1\n      checks: []\n")
    edit(deploy, "steps: [5, 10, 25, 50]\n      interval: 1m", "steps: [50]\n      interval: 1s")
    # no Prometheus here, and a 1s round is shorter than two scrapes: prod's canary is judged on readiness
    edit(
        deploy,
        "      checks:\n        - name: homepage\n          http: {path: /, port: http}\n"
        "        - name: success-rate\n"
        "          prometheus: {template: request-success-rate, min: 0.99, noData: skip}\n"
        "        - name: latency-p99\n          prometheus: {template: request-duration, max: 500}\n",
        "      checks: []\n",
    )
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "first")
    return App(name, repo, f"{name}-staging", f"{name}-prod")
