"""The secret scan (deployer/build/scan.py) against real git histories: each way a secret slipped past it."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from support import commit, git

from deployer.build.scan import Finding, scan_push

SECRET = 'password: "hunter2Xq9zLmP4vR8wTk"\n'


def repo(tmp_path: Path) -> Path:
    path = tmp_path / "app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "values.yaml").write_text("replicas: 1\n")
    commit(path, "first")
    git(path, "update-ref", "refs/remotes/origin/main", "HEAD")  # what the remote already has
    return path


def scan(path: Path, **kwargs: object) -> list[Finding]:
    return asyncio.run(scan_push(path, new="HEAD", exclude=("--remotes",), **kwargs))  # type: ignore[arg-type]


def test_a_clean_push_has_no_findings(tmp_path: Path) -> None:
    path = repo(tmp_path)
    (path / "values.yaml").write_text("replicas: 2\n")
    commit(path, "more")
    assert scan(path) == []


def test_a_secret_added_while_resolving_a_merge_is_found(tmp_path: Path) -> None:
    path = repo(tmp_path)
    git(path, "checkout", "-q", "-b", "side")
    (path / "values.yaml").write_text("replicas: 2\n")
    commit(path, "side")
    git(path, "checkout", "-q", "main")
    (path / "values.yaml").write_text("replicas: 3\n")
    commit(path, "main")
    subprocess.run(["git", "-C", str(path), "merge", "-q", "--no-commit", "side"], capture_output=True, check=False)
    (path / "values.yaml").write_text("replicas: 3\n" + SECRET)  # the "resolution" adds a secret
    merge = commit(path, "merge side")
    assert len(git(path, "rev-list", "--parents", "-n1", "HEAD").split()) == 3, "a merge commit"
    found = scan(path)
    assert [(f.path, f.commit) for f in found] == [("values.yaml", merge)]


def test_a_file_with_a_nul_byte_is_scanned_as_text(tmp_path: Path) -> None:
    path = repo(tmp_path)
    (path / "config.env").write_bytes(b"\x00header\n" + SECRET.encode())
    commit(path, "binary-looking config")
    assert [f.path for f in scan(path)] == ["config.env"]


def test_templates_and_whatever_the_chart_reads_are_scanned(tmp_path: Path) -> None:
    path = repo(tmp_path)
    (path / "templates").mkdir()
    (path / "templates" / "deployment.yaml.j2").write_text("env:\n  " + SECRET)
    (path / "charts" / "hello" / "files").mkdir(parents=True)
    (path / "charts" / "hello" / "templates").mkdir()
    (path / "charts" / "hello" / "templates" / "_helpers.tpl").write_text("{{/* " + SECRET + "*/}}\n")
    (path / "charts" / "hello" / "files" / "app.txt").write_text(SECRET)
    commit(path, "templates")
    found = {f.path for f in scan(path, paths=("charts/hello",))}
    assert found == {
        "templates/deployment.yaml.j2",
        "charts/hello/templates/_helpers.tpl",
        "charts/hello/files/app.txt",
    }
    assert "charts/hello/files/app.txt" not in {f.path for f in scan(path)}, "only the render dirs are read whole"


def test_a_long_push_is_scanned_commit_by_commit(tmp_path: Path) -> None:
    path = repo(tmp_path)
    for i in range(250):
        if i == 10:
            (path / "values.yaml").write_text(f"replicas: {i}\n" + SECRET)
        else:
            (path / "values.yaml").write_text(f"replicas: {i}\n")
        commit(path, f"change {i}")
    found = scan(path)
    assert len(found) == 1 and found[0].path == "values.yaml", "added then removed: still in history"
