"""Commands around the git remote: `serve` (the server), `init` (set a repo up to deploy), `scan` (the secret scan
the pre-push hook runs) and `secret set` (a Secret straight into the cluster, never into git)."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from deployer.errors import DeployError

T = TypeVar("T")

# The modules these commands use are imported in them: building the parser (and `deployer --help`) loads none.


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, with asyncio imported only by commands that run a loop."""
    import asyncio  # noqa: PLC0415

    return asyncio.run(coroutine)


_VALUES_NOTE = "# secrets never go here: `deployer secret set`, then reference the Secret by name\n"
_HOOK = """#!/bin/sh
# Installed by `deployer init`: refuse to push likely secrets in values and config files (the server checks too).
exec {python} -m deployer scan --pre-push "$1"
"""


def add_commands(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the git remote (SSH and smart HTTP) that deploys on push")
    serve.add_argument("--config", required=True, type=Path, help="server.yaml (from the operator)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    init = commands.add_parser("init", help="set this repo up to deploy: deploy.yaml, environments/, remotes, hook")
    init.add_argument("--repo", default=".", type=Path, help="app repository (default: .)")
    init.add_argument("--app", help="app name (default: the directory's name)")
    init.add_argument(
        "--registry", default="127.0.0.1:5000", help="image registry host[:port] (default 127.0.0.1:5000)"
    )
    init.add_argument("--server", help="the deployer's git URL without the repo, e.g. ssh://git@deployer:2222")

    scan = commands.add_parser("scan", help="look for likely secrets in values and config files about to be pushed")
    scan.add_argument("--repo", default=".", type=Path, help="repository (default: .)")
    scan.add_argument("--pre-push", metavar="REMOTE", help="read git's pre-push lines from stdin (the hook)")

    secret = commands.add_parser("secret", help="manage Secrets in the cluster (never in git)")
    verbs = secret.add_subparsers(dest="verb", required=True, metavar="VERB")
    put = verbs.add_parser("set", help="create a Secret or set keys in it: KEY=VALUE, KEY=@FILE or KEY=- (stdin)")
    put.add_argument("--env", required=True, help="environment name from deploy.yaml")
    put.add_argument("name", help="Secret name")
    put.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    put.add_argument("--repo", default=".", type=Path, help="app repository with deploy.yaml (default: .)")
    put.add_argument("--namespace", help="namespace (default: the environment's, from deploy.yaml)")
    put.add_argument("--kubeconfig", type=Path, help="the cluster (default: $KUBECONFIG, or in-cluster)")
    put.add_argument("--context", dest="kube_context", help="kubeconfig context")


def serve(args: argparse.Namespace) -> int:
    from deployer.config.server import parse_server_config, with_authorized_keys  # noqa: PLC0415
    from deployer.server.main import serve as run  # noqa: PLC0415 - asyncssh and aiohttp load only for the server

    if not args.config.is_file():
        raise DeployError("no such file", where=str(args.config))
    config = parse_server_config(args.config.read_text(encoding="utf-8"), source=str(args.config))
    files = {}
    for environment, path in config.authorized_keys.items():
        if not Path(path).is_file():
            raise DeployError("no such file", where=f"{args.config}: authorizedKeys.{environment}: {path}")
        files[environment] = Path(path).read_text(encoding="utf-8")
    config = with_authorized_keys(config, files)
    if config.host_key and not Path(config.host_key).is_file():
        raise DeployError("no such file", where=f"{args.config}: hostKey: {config.host_key}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    run_async(run(config, announce=lambda line: print(line, flush=True)))
    return 0


def _git(repo: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise DeployError(f"git {args[0]} failed: {' '.join(done.stderr.split())}", where=str(repo))
    return done.stdout.strip()


def _starter(app: str, registry: str, repo: Path) -> str:
    charts = sorted(p.parent.relative_to(repo).as_posix() for p in repo.glob("charts/*/Chart.yaml"))
    render = f"  helm:\n    chart: {charts[0] if charts else f'charts/{app}'}\n"
    if not charts and (repo / "templates").is_dir():
        render = "  templates:\n    dir: templates\n"
    return f"""# deploy.yaml: how the deployer builds, renders and releases this app (`deployer schema` for editors).
app: {app}
image:
  repository: {registry}/{app}
render:
{render}environments:
  staging:
    branches: [main]
    namespace: {app}-staging
    values: [environments/staging.yaml]
    canary:
      steps: [20, 50]
      interval: 30s
      checks:
        - name: homepage
          http: {{path: /, port: http}}
  prod:
    branches: [prod]
    namespace: {app}-prod
    values: [environments/prod.yaml]
    canary:
      steps: [5, 25, 50]
      interval: 1m
      checks:
        - name: homepage
          http: {{path: /, port: http}}
        - name: success-rate
          prometheus: {{template: request-success-rate, min: 0.99, noData: skip}}
"""


def init(args: argparse.Namespace) -> int:
    from deployer.config import parse_deploy_config  # noqa: PLC0415

    repo = args.repo.resolve()
    if _git(repo, "rev-parse", "--is-inside-work-tree", check=False) != "true":
        raise DeployError("not a git work tree; run `git init` first", where=str(repo))
    app = args.app or re.sub(r"[^a-z0-9-]+", "-", repo.name.lower()).strip("-")[:63]
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", app):
        raise DeployError(f"{app!r} is not a DNS-1123 label; pass --app", where="--app")
    files = {
        "deploy.yaml": _starter(app, args.registry, repo),
        "environments/staging.yaml": f"{_VALUES_NOTE}replicaCount: 1\n",
        "environments/prod.yaml": f"{_VALUES_NOTE}replicaCount: 2\n",
    }
    for name, text in files.items():
        path = repo / name
        if path.exists():
            print(f"kept     {name} (exists)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote    {name}")
    if args.server:
        deploy = repo / "deploy.yaml"
        config = parse_deploy_config(deploy.read_text(encoding="utf-8")) if deploy.exists() else None
        url = f"{args.server.rstrip('/')}/{app}.git"
        for env in config.environments if config else ("staging", "prod"):
            if _git(repo, "remote", "get-url", env, check=False):
                print(f"kept     remote {env} (exists)")
                continue
            _git(repo, "remote", "add", env, url)
            print(f"remote   {env} → {url}")
    hooks = Path(_git(repo, "rev-parse", "--git-path", "hooks"))
    hook = (hooks if hooks.is_absolute() else repo / hooks) / "pre-push"
    hook.parent.mkdir(parents=True, exist_ok=True)
    if hook.exists() and "deployer scan" not in hook.read_text(encoding="utf-8", errors="replace"):
        print(f'kept     {hook} (a pre-push hook of your own; add: deployer scan --pre-push "$1")')
    else:
        hook.write_text(_HOOK.format(python=sys.executable), encoding="utf-8")
        hook.chmod(0o755)
        print("hook     pre-push: refuses likely secrets in values and config files")
    print("next: git add deploy.yaml environments && git commit, then git push staging main")
    return 0


def _render_dirs(repo: Path) -> tuple[str, ...]:
    """The chart or templates directory the working tree's deploy.yaml renders from (scanned whole); none if
    it does not parse (the server refuses such a push for that reason anyway)."""
    from deployer.config import RepoFiles, load_deploy_config  # noqa: PLC0415

    try:
        return (load_deploy_config(RepoFiles(repo)).render.directory,)
    except DeployError:
        return ()


def scan(args: argparse.Namespace) -> int:
    from deployer.build.scan import scan_push  # noqa: PLC0415
    from deployer.build.source import ZERO  # noqa: PLC0415

    repo = args.repo.resolve()
    found = []
    paths = _render_dirs(repo)
    if args.pre_push is not None:
        for line in sys.stdin.read().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[1] != ZERO:
                remote = (f"--remotes={args.pre_push}",)
                found += run_async(scan_push(repo, new=parts[1], exclude=remote, paths=paths))
    else:
        found = run_async(scan_push(repo, new="HEAD", exclude=("--remotes",), paths=paths))
    for finding in found:
        print(f"{finding}: looks like a secret", file=sys.stderr)
    if found:
        print(
            "error: secret scan: refusing to push likely secrets; keep them in the cluster (deployer secret set), "
            "or mark a false positive with '# pragma: allowlist secret'",
            file=sys.stderr,
        )
        return 1
    return 0


def secret(args: argparse.Namespace) -> int:
    from deployer.config import RepoFiles, load_deploy_config  # noqa: PLC0415
    from deployer.kube import connect  # noqa: PLC0415 - the cluster client loads only when needed
    from deployer.kube.secrets import set_secret  # noqa: PLC0415

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", args.name) or len(args.name) > 253:
        raise DeployError(f"{args.name!r} is not a valid Secret name (a DNS-1123 subdomain)", where="NAME")
    data: dict[str, bytes] = {}
    for pair in args.pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
            raise DeployError(
                f"expected KEY=VALUE, KEY=@FILE or KEY=- with a key of [-._a-zA-Z0-9], got {key!r}", where="secret set"
            )
        if value == "-":
            data[key] = sys.stdin.buffer.read()
        elif value.startswith("@"):
            path = Path(value[1:])
            if not path.is_file():
                raise DeployError("no such file", where=f"{key}=@{path}")
            data[key] = path.read_bytes()
        else:
            data[key] = value.encode()
    namespace = args.namespace or load_deploy_config(RepoFiles(args.repo)).environment(args.env).namespace

    async def write() -> bool:
        async with connect(args.kubeconfig, args.kube_context) as api:
            return await set_secret(api, namespace=namespace, name=args.name, data=data)

    created = run_async(write())
    done = "created" if created else "updated"
    print(f"secret {args.name} in {namespace}: {done}, keys {', '.join(data)} (values not shown)")
    return 0
