"""`kube-sandbox serve` as a user runs it: a kubeconfig, usage printed, kubectl works, state kept, clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.sandbox_only
KUBECTL = shutil.which("kubectl") or "kubectl"


def start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.unlink(missing_ok=True)
    exe = shutil.which("kube-sandbox", path=str(Path(sys.executable).parent)) or "kube-sandbox"
    proc = subprocess.Popen(
        [exe, "serve", "--kubeconfig", str(kubeconfig), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not kubeconfig.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kubeconfig.exists(), proc.stderr.read() if proc.poll() is not None else "no kubeconfig written"
    return proc, kubeconfig


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_sandbox_command_serves_writes_kubeconfig_keeps_state_and_stops(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc, kubeconfig = start(tmp_path, "--state", str(state))
    try:
        server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        assert server.startswith("http://127.0.0.1:")
        namespaces = kubectl(kubeconfig, "get", "namespaces", "-o", "name")
        assert namespaces.stdout.split() == [
            "namespace/default",
            "namespace/istio-system",  # the sandbox models a cluster with Istio installed
            "namespace/kube-public",
            "namespace/kube-system",
        ]
        assert kubectl(kubeconfig, "create", "configmap", "kept", "--from-literal=a=b").returncode == 0
        assert requests.get(f"{server}/openapi/v2", timeout=10).json()["swagger"] == "2.0"
    finally:
        code, out, _ = stop(proc)
    assert code == 0
    assert f"sandbox cluster serving on {server}" in out
    assert f"export KUBECONFIG={kubeconfig}" in out
    proc, kubeconfig = start(tmp_path, "--state", str(state))
    try:
        kept = kubectl(kubeconfig, "get", "configmap", "kept", "-o", "jsonpath={.data.a}")
        assert kept.stdout == "b"
    finally:
        stop(proc)


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    proc, kubeconfig = start(tmp_path)
    try:
        port = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"].rsplit(":", 1)[1]
        exe = shutil.which("kube-sandbox", path=str(Path(sys.executable).parent)) or "kube-sandbox"
        second = subprocess.run(
            [exe, "serve", "--port", port, "--kubeconfig", str(tmp_path / "k2")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 1
        assert second.stderr.startswith(f"error: --port {port}: cannot serve:")
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        stop(proc)
