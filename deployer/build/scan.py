"""Secrets stay out of git: scan what a push adds to values, config files and templates with detect-secrets.

Every new commit is scanned against its parent (a merge against each of its parents, so a secret added while
resolving one is found), however many the push has: a secret added and removed again in the same push is still
refused (it would stay in history). Files are diffed as text even with NUL bytes in them (git would call them
binary and show nothing). Besides values and config files, the templates of both render modes and everything in
the chart or templates directory (what `.Files.Get` or an include can read) are scanned. A line can be allowed
with detect-secrets' `# pragma: allowlist secret`. The server's pre-receive and the client's pre-push hook
(`deployer init`) run the same scan.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

from deployer.build.source import ZERO, GitEnv, git

# Values and config files: where secrets are pasted by mistake.
PATHSPECS = (
    "*.yaml",
    "*.yml",
    "*.json",
    "*.toml",
    "*.ini",
    "*.cfg",
    "*.conf",
    "*.properties",
    "*.env",
    ".env",
    ".env.*",
    "*/.env",
    "*/.env.*",
    "*.j2",  # Jinja templates (*.yaml.j2)
    "*.tpl",  # Helm helpers
)
MARK = "deployer-scan-commit "
_settings_lock = threading.Lock()  # detect-secrets keeps its settings in a global


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str
    commit: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} (commit {self.commit[:12]})"


async def scan_push(
    repo: Path, *, new: str, exclude: tuple[str, ...], env: GitEnv | None = None, paths: tuple[str, ...] = ()
) -> list[Finding]:
    """Likely secrets added by the commits reachable from `new` and not from `exclude` (rev-list arguments such
    as `--all` or `--remotes=origin`); `paths` adds directories to scan whole (a chart, a templates dir)."""
    if new == ZERO:
        return []
    pathspecs = [*PATHSPECS, *(f"{p.rstrip('/')}/" for p in paths if p and p not in (".", "./"))]
    # one git process for the whole range, each commit's patch after a line naming it; -m: a merge against
    # each parent; --text: a file with a NUL byte is still shown line by line
    log = await git(
        repo,
        "log",
        "-p",
        "-m",
        "--text",
        "--no-color",
        "--no-ext-diff",
        "--no-renames",
        "-U0",
        f"--format={MARK}%H",
        new,
        "--not",
        *exclude,
        "--",
        *pathspecs,
        env=env,
    )
    found: list[Finding] = []
    for commit, diff in _per_commit(log.decode(errors="replace")):
        if diff.strip():
            found += await asyncio.to_thread(_scan_diff, diff, commit)
    return sorted(set(found), key=lambda f: (f.path, f.line, f.kind))


def _per_commit(log: str) -> list[tuple[str, str]]:
    """(commit, its patch) from `git log -p --format=MARK%H` (a merge's patches against each parent come one
    after another under the same commit)."""
    out: list[tuple[str, str]] = []
    for chunk in log.split(MARK)[1:]:
        commit, _, patch = chunk.partition("\n")
        out.append((commit.strip(), patch))
    return out


def _scan_diff(diff: str, commit: str) -> list[Finding]:
    from detect_secrets.core.scan import scan_diff  # noqa: PLC0415 - loads 27 plugins; only when there is a diff
    from detect_secrets.settings import default_settings, get_filters, get_settings  # noqa: PLC0415

    with _settings_lock, default_settings():
        # the files are not on disk (they are git objects): drop the filter that skips missing files
        get_settings().disable_filters("detect_secrets.filters.common.is_invalid_file")
        get_filters.cache_clear()
        return [Finding(s.filename, s.line_number or 0, s.type, commit) for s in scan_diff(diff)]
