"""Shared fixtures, and the test kinds by directory: tests/unit (no cluster, no subprocess), tests/integration (real
programs: git, helm, buildah, a registry, ssh; no cluster), tests/e2e (a Kubernetes API: kube-sandbox's, or a real
cluster through DEPLOYER_TEST_KUBECONFIG). Each test gets its directory's marker, so `pytest -m unit` and
`pytest tests/unit` select the same tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support import EXAMPLES

HERE = Path(__file__).parent
KINDS = ("unit", "integration", "e2e")

# kube-sandbox's pytest plugin gives the cluster fixtures; an existing cluster is named to it by its own variable.
if os.environ.get("DEPLOYER_TEST_KUBECONFIG"):
    os.environ.setdefault("KUBE_SANDBOX_KUBECONFIG", os.environ["DEPLOYER_TEST_KUBECONFIG"])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            kind = item.path.relative_to(HERE).parts[0]
        except ValueError:
            continue
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture
def example(tmp_path: Path) -> Callable[[str], Path]:
    """Copy examples/NAME into a temp dir (so a test may break it) and return its path."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(EXAMPLES / name, target, symlinks=True)
        return target

    return copy
