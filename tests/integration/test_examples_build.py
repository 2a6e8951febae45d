"""The example apps build with the real buildah, FROM the base image setup built locally (no registry pulls)."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
from support import BUILDAH, EXAMPLES

pytestmark = pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is installed by `make setup`")


def buildah(*args: str) -> str:
    proc = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name", ["hello", "hello-jinja"])
def test_example_image_builds_on_the_local_base_and_serves_its_page(name: str) -> None:
    tag = f"localhost/test-{name}:{uuid.uuid4().hex[:8]}"
    buildah(
        "bud",
        "--quiet",
        "--isolation",
        "chroot",
        "--layers",
        "--build-arg",
        "GIT_COMMIT=abc123",
        "-t",
        tag,
        str(EXAMPLES / name),
    )
    container = buildah("from", "--name", f"t-{uuid.uuid4().hex[:8]}", tag).strip()
    try:
        assert buildah("run", "--isolation", "chroot", container, "cat", "/app/greeting") == "hello from abc123\n"
        assert buildah("run", "--isolation", "chroot", container, "cat", "/app/status") == "200\n"
        assert "/bin/httpd" in buildah("run", "--isolation", "chroot", container, "which", "httpd")
    finally:
        buildah("rm", container)
        buildah("rmi", tag)
