"""`deployer init` sets an app repository up to deploy, and its pre-push hook keeps secrets out of git (real git)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support import commit, git, run_deployer_process


def repo_with_chart(tmp_path: Path) -> Path:
    repo = tmp_path / "Web App"
    (repo / "charts" / "web").mkdir(parents=True)
    (repo / "charts" / "web" / "Chart.yaml").write_text("apiVersion: v2\nname: web\nversion: 0.1.0\n")
    (repo / "Dockerfile").write_text("FROM localhost/deployer/busybox:1.35\n")
    git(repo, "init", "-q", "-b", "main")
    return repo


def test_init_writes_a_valid_start_adds_remotes_and_keeps_what_exists(tmp_path: Path) -> None:
    repo = repo_with_chart(tmp_path)
    done = run_deployer_process("init", "--repo", repo, "--server", "ssh://git@deployer.example.com:2222")
    assert done.code == 0, done.err
    assert "wrote    deploy.yaml" in done.out
    assert "remote   prod → ssh://git@deployer.example.com:2222/web-app.git" in done.out
    deploy = (repo / "deploy.yaml").read_text()
    assert "app: web-app" in deploy and "chart: charts/web" in deploy
    assert git(repo, "remote", "get-url", "staging") == "ssh://git@deployer.example.com:2222/web-app.git"
    assert (repo / ".git" / "hooks" / "pre-push").stat().st_mode & 0o111
    (repo / "charts" / "web" / "templates").mkdir()
    validated = run_deployer_process("validate", "--repo", repo)
    assert validated.code == 0, validated.err
    again = run_deployer_process("init", "--repo", repo, "--server", "ssh://git@elsewhere:22")
    assert again.code == 0
    assert "kept     deploy.yaml (exists)" in again.out and "kept     remote staging (exists)" in again.out
    assert git(repo, "remote", "get-url", "staging") == "ssh://git@deployer.example.com:2222/web-app.git"


def test_init_outside_a_git_repository_is_one_clear_error(tmp_path: Path) -> None:
    done = run_deployer_process("init", "--repo", tmp_path)
    assert done.code == 1
    assert done.err.strip() == f"error: {tmp_path}: not a git work tree; run `git init` first"
    assert not (tmp_path / "deploy.yaml").exists()


def test_the_pre_push_hook_refuses_a_secret_and_lets_clean_pushes_through(tmp_path: Path) -> None:
    repo = repo_with_chart(tmp_path)
    assert run_deployer_process("init", "--repo", repo).code == 0
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    commit(repo, "start")
    env = {**os.environ, "LC_ALL": "C"}
    clean = subprocess.run(
        ["git", "-C", str(repo), "push", "-q", "origin", "main"], capture_output=True, text=True, env=env, check=False
    )
    assert clean.returncode == 0, clean.stderr
    values = repo / "environments" / "prod.yaml"
    values.write_text(values.read_text() + "aws:\n  key: AKIAIOSFODNN7EXAMPLE\n")
    commit(repo, "oops")
    refused = subprocess.run(
        ["git", "-C", str(repo), "push", "origin", "main"], capture_output=True, text=True, env=env, check=False
    )
    assert refused.returncode != 0
    line = len(values.read_text().splitlines())
    assert f"environments/prod.yaml:{line}: AWS Access Key" in refused.stderr
    assert "error: secret scan: refusing to push likely secrets" in refused.stderr
    assert git(remote, "rev-parse", "main") != git(repo, "rev-parse", "HEAD")
