"""`deployer secret set`: a Secret straight into the environment's namespace, never into git or the output."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from kube_sandbox.testing import Running
from kubernetes import client
from support import EXAMPLES, edit, run_deployer_process


def test_secret_set_creates_then_adds_keys_and_never_prints_values(
    cluster: Running, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    repo = tmp_path / "hello"
    shutil.copytree(EXAMPLES / "hello", repo)
    edit(repo / "deploy.yaml", "namespace: hello-staging", f"namespace: {namespace}")
    (tmp_path / "cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n")
    first = run_deployer_process(
        "secret",
        "set",
        "--env",
        "staging",
        "--repo",
        repo,
        "--kubeconfig",
        cluster.kubeconfig,
        "db",
        "password=s3cr3t-Value",
        f"cert=@{tmp_path / 'cert.pem'}",
    )
    assert first.code == 0, first.err
    assert first.out.strip() == f"secret db in {namespace}: created, keys password, cert (values not shown)"
    second = run_deployer_process(
        "secret", "set", "--env", "staging", "--repo", repo, "--kubeconfig", cluster.kubeconfig, "db", "user=app"
    )
    assert second.code == 0 and "updated, keys user" in second.out
    stored = client.CoreV1Api(api).read_namespaced_secret("db", namespace).data
    assert {k: base64.b64decode(v) for k, v in stored.items()} == {
        "password": b"s3cr3t-Value",
        "cert": b"-----BEGIN CERTIFICATE-----\nMIIB\n",
        "user": b"app",
    }
    assert "s3cr3t-Value" not in first.out + first.err + second.out + second.err


def test_secret_set_refuses_bad_pairs_and_names_before_touching_the_cluster(cluster: Running, tmp_path: Path) -> None:
    repo = tmp_path / "hello"
    shutil.copytree(EXAMPLES / "hello", repo)
    bad = run_deployer_process("secret", "set", "--env", "staging", "--repo", repo, "db", "novalue")
    assert bad.code == 1
    assert bad.err.strip().startswith("error: secret set: expected KEY=VALUE, KEY=@FILE or KEY=-")
    name = run_deployer_process("secret", "set", "--env", "staging", "--repo", repo, "DB_Pass", "a=b")
    assert name.code == 1 and "is not a valid Secret name" in name.err
    env = run_deployer_process("secret", "set", "--env", "qa", "--repo", repo, "db", "a=b")
    assert env.code == 1 and "no environment 'qa'" in env.err
