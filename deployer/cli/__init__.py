"""The `deployer` command line. A shell: parses arguments, wires the layers, prints one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from deployer import __version__
from deployer.cli import git as git_commands
from deployer.cli.git import run_async
from deployer.errors import DeployError, TransientError
from deployer.events import Event, Record

if TYPE_CHECKING:
    from deployer.config import DeployConfig, RepoFiles
    from deployer.pipeline import ImageRef, Rendered
    from deployer.pipeline.charts import ChartRegistries

# Each command imports what it uses (pydantic models, the clients, helm, the builders): `deployer --help` and the
# parser load none of them.

UNCOMMITTED = "uncommitted"


def _duration(text: str) -> float:
    """A duration flag such as 15s or 1m, in seconds."""
    from deployer.config.model import parse_duration  # noqa: PLC0415

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_operations(commands: Any) -> None:
    """status, history, rollback and recover: one environment's releases in the cluster."""
    for name, text in [
        ("status", "the live phase, weights and last checks of an environment"),
        ("history", "the releases of an environment"),
        ("rollback", "re-apply a stored release: no rebuild, no analysis"),
        ("recover", "bring releases left mid-flight to a consistent end (rolled back)"),
        ("promote", "promote the canary in flight now, skipping its remaining steps"),
        ("abort", "roll the canary in flight back now"),
    ]:
        op = commands.add_parser(name, help=text)
        op.add_argument("--env", required=True, help="environment name from deploy.yaml")
        op.add_argument("--repo", default=".", type=Path, help="app repository with deploy.yaml (default: .)")
        op.add_argument("--app", help="app name (default: from deploy.yaml)")
        op.add_argument("--namespace", help="namespace (default: the environment's, from deploy.yaml)")
        op.add_argument("--kubeconfig", type=Path, help="the cluster (default: $KUBECONFIG, or in-cluster)")
        op.add_argument("--context", dest="kube_context", help="kubeconfig context")
        op.add_argument("--output", "-o", choices=["text", "json"], default="text")
        if name == "rollback":
            op.add_argument("--to", type=int, metavar="REVISION", help="revision to restore (default: the one before)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deployer", description="git push to deploy on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"deployer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = commands.add_parser("render", help="print the manifests one environment gets")
    render.add_argument("--env", required=True, help="environment name from deploy.yaml")
    render.add_argument("--repo", default=".", type=Path, help="app repository (default: .)")
    render.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="sets",
        help="override a value, as helm --set (repeatable; highest precedence)",
    )
    render.add_argument("--output", "-o", choices=["yaml", "json"], default="yaml")
    _allow_cluster_scoped(render)
    render.add_argument("--commit", help="commit to inject as deployer.commit and image tag (default: HEAD)")

    validate = commands.add_parser("validate", help="check deploy.yaml, values and rendering of environments")
    validate.add_argument("--env", help="only this environment (default: all)")
    validate.add_argument("--repo", default=".", type=Path, help="app repository (default: .)")
    _allow_cluster_scoped(validate)

    commands.add_parser("schema", help="print the JSON Schema of deploy.yaml, for editors")

    build = commands.add_parser("build", help="build the commit's image and push it (skipped if the registry has it)")
    build.add_argument("--repo", default=".", type=Path, help="app repository (default: .)")
    build.add_argument("--commit", default="HEAD", help="commit to build (default: HEAD)")
    build.add_argument(
        "--builder",
        default="auto",
        choices=["auto", "buildah", "docker"],
        help="auto: docker when DOCKER_HOST or its socket is there, else buildah",
    )
    build.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="registry reached over plain http (loopback registries always are)",
    )
    build.add_argument("--authfile", type=Path, help="docker config.json with registry credentials")
    build.add_argument(
        "--secret-build-arg",
        action="append",
        default=[],
        metavar="NAME",
        help="build arg whose value is read from the environment variable NAME and masked in output",
    )
    build.add_argument("--max-context-mb", type=int, default=200, help="refuse larger build contexts (default 200)")
    build.add_argument("--output", "-o", choices=["text", "json"], default="text")

    deploy = commands.add_parser("deploy", help="render and release an image that is already built")
    deploy.add_argument("--env", required=True, help="environment name from deploy.yaml")
    deploy.add_argument("--image", required=True, help="REPO@sha256:DIGEST (or REPO:TAG) to release")
    deploy.add_argument("--repo", default=".", type=Path, help="app repository (default: .)")
    deploy.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets")
    _allow_cluster_scoped(deploy)
    deploy.add_argument("--kubeconfig", type=Path, help="the cluster (default: $KUBECONFIG, or in-cluster)")
    deploy.add_argument("--context", dest="kube_context", help="kubeconfig context")
    deploy.add_argument("--skip-canary", action="store_true", help="apply and wait, without a canary")
    deploy.add_argument("--no-wait", action="store_true", help="fail at once if another release holds the lock")
    deploy.add_argument("--rollout-timeout", type=float, default=300, help="seconds to wait for a rollout")
    deploy.add_argument("--prometheus", metavar="URL", help="Prometheus for the canary's prometheus checks")
    deploy.add_argument(
        "--mesh-gateway",
        metavar="URL",
        help="the Istio ingress gateway's URL: HTTP checks go through it to the canary when the environment names "
        "a gateway (else through the API server's pod proxy, which STRICT mTLS refuses)",
    )
    deploy.add_argument(
        "--mesh-client",
        metavar="direct|URL",
        help="how this process's requests enter the mesh, for HTTP checks of environments that name no gateway: "
        "`direct` when it runs in a pod with a sidecar, or an HTTP proxy whose clients are mesh pods",
    )
    deploy.add_argument(
        "--scrape-interval",
        metavar="DURATION",
        type=_duration,
        default=15.0,
        help="how often that Prometheus scrapes (default 15s); a check's window must be at least twice it",
    )
    deploy.add_argument("--output", "-o", choices=["text", "json"], default="text")

    _add_operations(commands)

    registry = commands.add_parser("registry", help="run a local image registry (docker-registry) for demos and tests")
    registry.add_argument("--port", type=int, default=5000)
    registry.add_argument("--storage", type=Path, default=Path(".state/registry"))

    _add_sandbox(commands)
    git_commands.add_commands(commands)
    return parser


def _allow_cluster_scoped(command: Any) -> None:
    command.add_argument(
        "--allow-cluster-scoped",
        action="append",
        default=[],
        metavar="KIND",
        dest="cluster_scoped",
        help="let the release create objects of this cluster-scoped kind (repeatable; none by default)",
    )


def _add_sandbox(commands: Any) -> None:
    # Listed for --help only: main() hands `deployer sandbox ARGS` to kube-sandbox before parsing.
    commands.add_parser(
        "sandbox",
        help="run the sandbox cluster (kube-sandbox serve; `deployer sandbox traffic` is kube-sandbox traffic)",
        add_help=False,
    )


def _head_commit(repo: Path) -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNCOMMITTED
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else UNCOMMITTED


def _repo(path: Path) -> RepoFiles:
    from deployer.config import RepoFiles  # noqa: PLC0415

    if not path.is_dir():
        raise DeployError("is not a directory", where=f"--repo {path}")
    return RepoFiles(path)


async def _render(args: argparse.Namespace) -> int:
    from deployer.config import load_deploy_config  # noqa: PLC0415
    from deployer.config.yamlio import dump_all  # noqa: PLC0415
    from deployer.pipeline import render_environment  # noqa: PLC0415

    repo = _repo(args.repo)
    config = load_deploy_config(repo)
    rendered = await render_environment(
        repo=repo,
        config=config,
        environment=args.env,
        commit=args.commit or _head_commit(args.repo),
        sets=tuple(args.sets),
        cluster_scoped=frozenset(args.cluster_scoped),
        charts=_charts(config, args.repo),
    )
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": rendered.manifests}, indent=2))
    else:
        sys.stdout.write(dump_all(rendered.manifests))
    _print_notes(rendered, stream=sys.stderr)
    return 0


def _charts(config: DeployConfig, repo: Path) -> ChartRegistries | None:
    """For an oci:// chart or a chart's oci:// dependencies: pulled from wherever deploy.yaml and Chart.yaml say
    (the CLI's operator chose them), each time, with the credentials helm reads by default."""
    import yaml  # noqa: PLC0415 - loaded by the config already; imported here to keep --help light

    helm = config.render.helm
    if helm is None:
        return None
    if not helm.oci:  # a chart in the repo: only if its Chart.yaml has dependencies (aiohttp loads only then)
        try:
            meta = yaml.safe_load((repo / helm.chart / "Chart.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return None
        if not isinstance(meta, dict) or not meta.get("dependencies"):
            return None
    from deployer.build.registry import RegistryClient  # noqa: PLC0415 - aiohttp, only for a chart in a registry
    from deployer.pipeline.charts import ChartRegistries  # noqa: PLC0415

    return ChartRegistries(registry=RegistryClient())


def _print_notes(rendered: Rendered, *, stream: TextIO) -> None:
    for ref in rendered.unvalidated:
        print(f"note: {ref} has no Kubernetes schema here; only its metadata was checked", file=stream)


async def _validate(args: argparse.Namespace) -> int:
    from deployer.config import load_deploy_config  # noqa: PLC0415
    from deployer.helm import Helm  # noqa: PLC0415
    from deployer.pipeline import render_environment  # noqa: PLC0415

    repo = _repo(args.repo)
    config = load_deploy_config(repo)
    names = [args.env] if args.env else list(config.environments)
    helm = Helm() if config.render.helm is not None else None
    commit = _head_commit(args.repo)
    failed = 0
    for name in names:
        try:
            rendered = await render_environment(
                repo=repo,
                config=config,
                environment=name,
                commit=commit,
                helm=helm,
                cluster_scoped=frozenset(args.cluster_scoped),
                charts=_charts(config, args.repo),
            )
        except DeployError as exc:
            failed += 1
            print(f"FAIL {name}: {exc}")
            continue
        kinds = ", ".join(item.ref for item in rendered.objects)
        print(f"ok   {name} (namespace {rendered.namespace}): {len(rendered.objects)} objects: {kinds}")
        _print_notes(rendered, stream=sys.stdout)
    return 1 if failed else 0


def _sandbox(argv: Sequence[str]) -> int:
    """`deployer sandbox [traffic] ARGS`: the kube-sandbox command, a development dependency that may be absent."""
    try:
        from kube_sandbox.cli import main as sandbox_main  # noqa: PLC0415 - a separate program, only when asked for
    except ImportError:
        print(
            "error: sandbox: kube-sandbox is not installed (a development tool: `make setup`, "
            "or pip install ./sandbox)",
            file=sys.stderr,
        )
        return 1
    if argv[:1] == ["traffic"]:
        return sandbox_main(argv, prog="deployer sandbox")
    return sandbox_main(["serve", *argv], prog="deployer sandbox")


def _state_dir() -> Path:
    return Path(os.environ.get("DEPLOYER_STATE_DIR", ".state"))


def _printer(output: str, console: Any = None) -> Callable[[Event], None]:
    """How events reach a person: JSON lines, rich progress in a terminal, else plain lines."""
    if output == "json":

        def as_json(event: Event) -> None:
            print(
                json.dumps({"step": event.step, "kind": event.kind, "message": event.message, **event.data}), flush=True
            )

        return as_json
    if console is not None or sys.stdout.isatty():
        return _rich_printer(console)

    def plain(event: Event) -> None:
        print(event.message if event.kind == "output" else f"[{event.step}] {event.message}", flush=True)

    return plain


def _rich_printer(console: Any = None) -> Callable[[Event], None]:
    from rich.console import Console  # noqa: PLC0415 - only for a terminal
    from rich.text import Text  # noqa: PLC0415

    screen = console or Console(highlight=False)
    styles = {"warning": "bold yellow", "error": "bold red"}

    def show(event: Event) -> None:
        if event.kind == "output":
            screen.print(Text(event.message, style="dim"))
            return
        line = Text.assemble((f"{event.step:>8} ", "bold cyan"), (event.message, styles.get(event.kind, "")))
        weight = event.data.get("canary_weight")
        if isinstance(weight, int):  # the traffic split as a bar: stable | canary
            line.append("  ")
            line.append("█" * round((100 - weight) / 5), style="green")
            line.append("█" * round(weight / 5), style="magenta")
        screen.print(line)

    return show


async def _build(args: argparse.Namespace) -> int:
    from deployer.build import RegistryClient, choose_builder  # noqa: PLC0415
    from deployer.pipeline import BuildSettings, build_image  # noqa: PLC0415

    secrets = {}
    for name in args.secret_build_arg:
        if name not in os.environ:
            raise DeployError(f"environment variable {name} is not set", where=f"--secret-build-arg {name}")
        secrets[name] = os.environ[name]
    builder = choose_builder(args.builder, storage=_state_dir() / "containers")
    settings = BuildSettings(
        builder=builder,
        registry=RegistryClient(insecure=frozenset(args.insecure_registry), auth_file=args.authfile),
        max_context_bytes=args.max_context_mb * 2**20,
        secret_args=secrets,
        auth_file=args.authfile,
    )
    image = await build_image(repo=args.repo, ref=args.commit, settings=settings, sink=_printer(args.output))
    if args.output == "text":
        print(f"image: {image.ref}")
    return 0


def _image(text: str, commit: str) -> ImageRef:
    from deployer.pipeline import ImageRef  # noqa: PLC0415

    if "@" in text:
        repository, digest = text.split("@", 1)
        return ImageRef(repository=repository, tag=commit, digest=digest)
    repository, _, tag = text.rpartition(":")
    if not repository or "/" in tag:
        raise DeployError(f"{text!r} is not REPO@sha256:DIGEST or REPO:TAG", where="--image")
    return ImageRef(repository=repository, tag=tag)


async def _deploy(args: argparse.Namespace) -> int:
    from deployer.config import load_deploy_config  # noqa: PLC0415
    from deployer.kube import connect  # noqa: PLC0415 - the cluster client loads only when needed
    from deployer.pipeline import render_environment  # noqa: PLC0415
    from deployer.pipeline.ports import cluster_ports  # noqa: PLC0415
    from deployer.pipeline.release import ReleaseOptions, release  # noqa: PLC0415

    repo = _repo(args.repo)
    config = load_deploy_config(repo)
    image = _image(args.image, _head_commit(args.repo))  # a REPO:SHA tag names its commit; a digest does not
    rendered = await render_environment(
        repo=repo,
        config=config,
        environment=args.env,
        commit=image.tag,
        digest=image.digest,
        sets=tuple(args.sets),
        cluster_scoped=frozenset(args.cluster_scoped),
        charts=_charts(config, args.repo),
    )
    options = ReleaseOptions(
        skip_canary=args.skip_canary,
        rollout_timeout=args.rollout_timeout,
        prometheus_url=args.prometheus,
        scrape_interval=args.scrape_interval,
        mesh_gateway=args.mesh_gateway,
        mesh_client=args.mesh_client,
        pusher=os.environ.get("USER", ""),
    )
    sink = _printer(args.output)
    async with connect(args.kubeconfig, args.kube_context) as api:
        ports = await cluster_ports(
            api,
            namespace=rendered.namespace,
            app=rendered.app,
            environment=rendered.environment,
            wait=not args.no_wait,
            sink=sink,
        )
        record = await release(
            ports,
            rendered=rendered,
            policy=config.environments[args.env].canary,
            image=image,
            options=options,
            sink=sink,
            jobs=tuple(config.environments[args.env].jobs),
        )
    if args.output == "text":
        print(f"released revision {record.revision} of {config.app} to {args.env}: {image.ref}")
    return 0


def _environment(args: argparse.Namespace) -> Any:
    from deployer.config import load_deploy_config  # noqa: PLC0415
    from deployer.pipeline.operations import Environment  # noqa: PLC0415 - loads the cluster client

    if args.app and args.namespace:
        return Environment(app=args.app, environment=args.env, namespace=args.namespace)
    config = load_deploy_config(_repo(args.repo))
    return Environment(
        app=args.app or config.app,
        environment=args.env,
        namespace=args.namespace or config.environment(args.env).namespace,
    )


def _summary(record: Record) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started))
    extra = f"  ({record.reason})" if record.reason else ""
    return f"{record.revision:>4}  {stamp}  {record.status:<12} {record.image}{extra}"


async def _operation(args: argparse.Namespace) -> int:
    from deployer.kube import connect  # noqa: PLC0415 - the cluster client loads only when needed

    env = _environment(args)
    async with connect(args.kubeconfig, args.kube_context) as api:
        return await _operate(args, env, api)


async def _operate(args: argparse.Namespace, env: Any, api: Any) -> int:
    from deployer.pipeline import operations as ops  # noqa: PLC0415

    show = _printer(args.output)
    if args.command in ("history", "status"):
        records = await ops.records_of(api, env).history()
        if args.command == "history":
            slim = [r.to_json(manifests=False) for r in records]
            print(json.dumps(slim, indent=2) if args.output == "json" else "\n".join(_summary(r) for r in records))
            return 0
        if not records:
            raise DeployError("no release yet", where=f"{env.environment} ({env.namespace})")
        last = records[-1]
        if args.output == "json":
            print(json.dumps(last.to_json(manifests=False), indent=2))
        else:
            print(f"{_summary(last)}\nphase: {last.where}  weights: {list(last.weights or (100, 0))}")
            for check in [c for r in last.rounds[-1:] for c in r.checks]:
                print(f"  {check.name}: {'ok' if check.ok else 'FAILED'} {check.message}")
    elif args.command == "rollback":
        record = await ops.rollback(await ops.ports_of(api, env, sink=show), env=env, to=args.to, sink=show)
        print(f"rolled back: revision {record.revision} runs {record.image}")
    elif args.command in ("promote", "abort"):
        revision = await ops.request(ops.records_of(api, env), env=env, what=args.command)
        print(f"asked revision {revision} to {args.command}; it acts at its next round")
    else:
        recovered = await ops.recover(await ops.ports_of(api, env, sink=show), env=env, sink=show)
        print(f"recovered {len(recovered)} release(s)" + (f": {recovered}" if recovered else ""))
    return 0


def _registry(args: argparse.Namespace) -> int:
    storage = args.storage.resolve()
    storage.mkdir(parents=True, exist_ok=True)
    config = storage / "config.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
                "storage": {"filesystem": {"rootdirectory": str(storage / "data")}, "delete": {"enabled": True}},
                "http": {"addr": f"127.0.0.1:{args.port}"},
            }
        ),
        encoding="utf-8",
    )
    print(f"registry serving on http://127.0.0.1:{args.port} (storage {storage}); stop with Ctrl-C", flush=True)
    if shutil.which("docker-registry") is None:
        raise DeployError("docker-registry is not installed; run `make setup`", where="registry")
    # become the registry, so that stopping this process (Ctrl-C, kill) stops the registry itself
    os.execvp("docker-registry", ["docker-registry", "serve", str(config)])  # noqa: S606 - a fixed program


def _schema(args: argparse.Namespace) -> int:
    from deployer.config import json_schema  # noqa: PLC0415

    print(json.dumps(json_schema(), indent=2))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "render": lambda args: run_async(_render(args)),
    "validate": lambda args: run_async(_validate(args)),
    "schema": _schema,
    "build": lambda args: run_async(_build(args)),
    "deploy": lambda args: run_async(_deploy(args)),
    "registry": _registry,
    "status": lambda args: run_async(_operation(args)),
    "history": lambda args: run_async(_operation(args)),
    "rollback": lambda args: run_async(_operation(args)),
    "recover": lambda args: run_async(_operation(args)),
    "promote": lambda args: run_async(_operation(args)),
    "abort": lambda args: run_async(_operation(args)),
    "serve": git_commands.serve,
    "init": git_commands.init,
    "scan": git_commands.scan,
    "secret": git_commands.secret,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 on success, 1 on a DeployError (one line on stderr), 2 on a usage error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:
        return _sandbox(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for line in exc.details:
            print(f"  | {line}", file=sys.stderr)
        return 1
    except TransientError as exc:  # still failing after its retries: the cluster (or registry) is not answering
        print(f"error: no answer after retries: {exc}; run the command again once it answers", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("DEPLOYER_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
            "(set DEPLOYER_DEBUG=1 for a traceback, and please report it)",
            file=sys.stderr,
        )
        return 2
