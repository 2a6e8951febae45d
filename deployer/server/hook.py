"""The pre-receive hook: a thin client (docs/architecture.md §1). It hands the push to the server's pipeline over the
server's local socket and prints the events as they come; git shows them to the pusher as `remote:` lines.

Standard library only, so that it starts fast. If the pusher disconnects, writes fail and are ignored: the hook
still waits for the verdict, so git moves the ref exactly when the release succeeded.
"""

from __future__ import annotations

import json
import os
import socket
import sys

_QUARANTINE = ("GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES")


def _say(text: str) -> None:
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass  # the pusher is gone; the release goes on and git still needs our exit status


def main() -> int:
    updates = [line.split() for line in sys.stdin.read().splitlines() if line.strip()]
    count = int(os.environ.get("GIT_PUSH_OPTION_COUNT") or 0)
    request = {
        "token": os.environ.get("DEPLOYER_PUSH_TOKEN", ""),
        "repo": os.getcwd(),
        "updates": updates,
        "options": [os.environ.get(f"GIT_PUSH_OPTION_{i}", "") for i in range(count)],
        "git_env": {name: os.environ[name] for name in _QUARANTINE if name in os.environ},
    }
    path = os.environ.get("DEPLOYER_HOOK_SOCKET", "")
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        conn.sendall(json.dumps(request).encode() + b"\n")
        stream = conn.makefile("r", encoding="utf-8")
    except OSError as exc:
        _say(f"error: the deployer server is not reachable ({exc.strerror or exc}); nothing was deployed")
        return 1
    for line in stream:
        message = json.loads(line)
        if "line" in message:
            _say(message["line"])
        if "exit" in message:
            return int(message["exit"])
    _say("error: the deployer server closed the connection before a verdict; nothing was accepted")
    return 1


if __name__ == "__main__":
    sys.exit(main())
