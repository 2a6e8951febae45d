"""Secrets stay out of git: scan what a push adds to values and config files with detect-secrets.

Every new commit is scanned against its parent, so a secret added and removed again in the same push is still
refused (it would stay in history). A line can be allowed with detect-secrets' `# pragma: allowlist secret`.
The server's pre-receive and the client's pre-push hook (`deployer init`) run the same scan.
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
)
MAX_COMMITS = 200  # beyond this, the final tree is scanned as one diff instead of commit by commit
_settings_lock = threading.Lock()  # detect-secrets keeps its settings in a global


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str
    commit: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} (commit {self.commit[:12]})"


async def scan_push(repo: Path, *, new: str, exclude: tuple[str, ...], env: GitEnv | None = None) -> list[Finding]:
    """Likely secrets added by the commits reachable from `new` and not from `exclude` (rev-list arguments such
    as `--all` or `--remotes=origin`)."""
    if new == ZERO:
        return []
    listed = await git(repo, "rev-list", "--no-merges", new, "--not", *exclude, env=env)
    commits = listed.decode().split()
    if len(commits) > MAX_COMMITS:
        empty = (await git(repo, "hash-object", "-t", "tree", "--stdin", env=env)).decode().strip()
        diffs = [(new, await git(repo, "diff", "--no-color", "-U0", empty, new, "--", *PATHSPECS, env=env))]
    else:
        diffs = [
            (
                commit,
                await git(
                    repo,
                    "diff-tree",
                    "-p",
                    "--no-color",
                    "-U0",
                    "--root",
                    "--no-commit-id",
                    commit,
                    "--",
                    *PATHSPECS,
                    env=env,
                ),
            )
            for commit in commits
        ]
    found: list[Finding] = []
    for commit, diff in diffs:
        if diff.strip():
            found += await asyncio.to_thread(_scan_diff, diff.decode(errors="replace"), commit)
    return sorted(set(found), key=lambda f: (f.path, f.line, f.kind))


def _scan_diff(diff: str, commit: str) -> list[Finding]:
    from detect_secrets.core.scan import scan_diff  # noqa: PLC0415 - loads 27 plugins; only when there is a diff
    from detect_secrets.settings import default_settings, get_filters, get_settings  # noqa: PLC0415

    with _settings_lock, default_settings():
        # the files are not on disk (they are git objects): drop the filter that skips missing files
        get_settings().disable_filters("detect_secrets.filters.common.is_invalid_file")
        get_filters.cache_clear()
        return [Finding(s.filename, s.line_number or 0, s.type, commit) for s in scan_diff(diff)]
