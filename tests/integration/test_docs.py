"""The documentation holds: every relative link points at a file, and README's deploy.yaml is one the deployer takes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ROOT, run_deployer

PAGES = [ROOT / "README.md", ROOT / "sandbox" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text()) if "://" not in t]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_docs_cover_the_pages_readme_lists() -> None:
    listed = set(LINK.findall((ROOT / "README.md").read_text()))
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} <= listed


def test_the_readme_deploy_yaml_validates(example: Callable[[str], Path]) -> None:
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("A `deploy.yaml`", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    repo = example("hello")
    (repo / "deploy.yaml").write_text(snippet)
    result = run_deployer("validate", "--repo", repo, "--env", "prod")
    assert result.code == 0, result.out + result.err
    assert result.out.startswith("ok   prod (namespace hello-prod)")
