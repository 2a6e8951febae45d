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


def _code(text: str) -> list[str]:
    """The code in a page: inline code spans and the lines of fenced blocks."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    lines = [line for block in blocks for line in block.splitlines()]
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return lines + re.findall(r"`([^`\n]+)`", outside)


def _commands(page: Path) -> list[list[str]]:
    """Each `deployer ...` a page shows, as its words (up to a comment, a pipe or another command)."""
    found = []
    for code in _code(page.read_text()):
        for match in re.finditer(r"(?:^|[\s(])deployer ([^#;&`]*)", code):
            words = match.group(1).split(" | ")[0].split()  # a shell pipe ends it; a|b|c are choices
            if words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
                found.append(words)
    return found


def _help(words: list[str]) -> str:
    result = run_deployer(*words, "--help")
    assert result.code == 0, f"`deployer {' '.join(words)} --help` failed: {result.err}"
    return result.out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_flag_the_docs_show_exists(page: Path) -> None:
    commands = set(re.findall(r"^    (\w[\w-]*) ", _help([]), re.M))
    for words in _commands(page):
        if words[0] not in commands:
            continue  # prose in code ("deployer serve's ..."); commands are checked below
        command = [words[0]]
        if len(words) > 1 and words[0] in ("secret", "sandbox") and words[1] in ("set", "traffic"):
            command.append(words[1])
        text = _help(command)
        for index, word in enumerate(words):
            flag = word.strip("[]").split("=", 1)[0]
            if not flag.startswith("--"):
                continue
            assert flag in text, f"{page.relative_to(ROOT)}: `deployer {' '.join(command)}` has no {flag}"
            following = words[index + 1].strip("[]") if index + 1 < len(words) else ""
            if "|" in following and not following.startswith("-"):  # choices shown as a|b|c
                for choice in following.split("|"):
                    assert choice in text, (
                        f"{page.relative_to(ROOT)}: {flag} of `deployer {command[0]}` has no {choice}"
                    )


def test_the_docs_name_every_command() -> None:
    shown = {words[0] for page in PAGES for words in _commands(page)}
    commands = set(re.findall(r"^    (\w[\w-]*) ", _help([]), re.M))
    assert commands <= shown, f"commands no page shows: {sorted(commands - shown)}"
