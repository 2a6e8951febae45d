"""The `kube-sandbox` command line: `serve` runs the sandbox cluster, `traffic` sends load through its mesh.

Errors are one line on stderr (`error: WHERE: MESSAGE`), exit 1; usage errors exit 2, as argparse does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path


class CommandError(Exception):
    """A one-line error for the user, naming what it is about."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(f"{where}: {message}")


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="A strict local Kubernetes API with an Istio-like mesh.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,traffic}")
    serve = commands.add_parser("serve", help="run the sandbox cluster until Ctrl-C (or SIGTERM)")
    serve.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    serve.add_argument(
        "--kubeconfig",
        type=Path,
        default=Path(".state/sandbox/kubeconfig"),
        help="where to write the kubeconfig (default: .state/sandbox/kubeconfig)",
    )
    serve.add_argument("--state", type=Path, help="keep objects in this directory across restarts")
    serve.add_argument("--ready-delay", type=float, default=0.5, help="seconds until a simulated pod is Ready")
    serve.add_argument(
        "--runtime",
        choices=("simulated", "containers"),
        default="simulated",
        help="simulated pods (no containers), or real containers in the sandbox's own dockerd",
    )
    serve.add_argument(
        "--crash-backoff", type=float, default=10.0, help="first CrashLoopBackOff delay in seconds (kubelet: 10)"
    )
    serve.add_argument("--prometheus", action="store_true", help="also run Prometheus, scraping the mesh")
    serve.add_argument(
        "--scrape-interval", default="15s", help="Prometheus' scrape interval (default 15s, as common Istio setups)"
    )
    serve.add_argument(
        "--propagation-delay",
        type=float,
        default=1.0,
        help="seconds until a routing change reaches the gateway and the sidecars (default 1)",
    )
    serve.add_argument(
        "--hpa-sync-period", type=float, default=15.0, help="seconds between autoscaler runs (kube's default 15)"
    )
    serve.add_argument(
        "--auth",
        choices=("open", "rbac"),
        default="open",
        help="open: any token is the admin (default); rbac: tokens are checked and RBAC decides, as kube-apiserver",
    )
    serve.add_argument(
        "--process",
        action="append",
        default=[],
        metavar="IMAGE=COMMAND",
        help="simulated pods of IMAGE that run to completion (Job pods) run COMMAND on this host with the "
        "container's args and env (its output is the log, its exit code the container's); repeatable",
    )
    traffic = commands.add_parser(
        "traffic", help="send steady load through the ingress gateway, or from a pod in the mesh (--from)"
    )
    traffic.add_argument("--host", required=True, help="Host header: a gateway host, or with --from a service host")
    traffic.add_argument(
        "--from",
        dest="source",
        metavar="NAMESPACE[/LABELS]",
        help="send as a pod of this namespace (labels k=v,...), through its sidecar if it has one",
    )
    traffic.add_argument("--no-sidecar", action="store_true", help="with --from: a client without a sidecar")
    traffic.add_argument("--rps", type=float, default=10.0, help="requests a second (default 10)")
    traffic.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    traffic.add_argument("--path", default="/", help="request path (default /)")
    traffic.add_argument("--mesh", help="the front door's URL (default: asked of the sandbox in --kubeconfig)")
    traffic.add_argument(
        "--kubeconfig",
        type=Path,
        default=Path(os.environ.get("KUBECONFIG") or ".state/sandbox/kubeconfig"),
        help="the sandbox's kubeconfig (default: $KUBECONFIG, else .state/sandbox/kubeconfig)",
    )
    return parser


def _traffic(args: argparse.Namespace) -> int:
    from kube_sandbox import traffic  # noqa: PLC0415 - aiohttp's client, only when asked for

    if args.no_sidecar and not args.source:
        raise CommandError("--no-sidecar needs --from NAMESPACE", where="traffic")
    mesh = args.mesh
    if mesh is None:
        try:
            mesh = traffic.mesh_url(args.kubeconfig, "clients" if args.source else "gateway")
        except (OSError, ValueError, KeyError) as exc:
            raise CommandError(
                f"cannot find the sandbox's mesh: {exc} (is `kube-sandbox serve` running?)", where=str(args.kubeconfig)
            ) from None
    if args.rps <= 0 or args.duration <= 0:
        raise CommandError("--rps and --duration must be positive", where="traffic")
    print(f"sending {args.rps:g} requests/s for {args.duration:g}s to {args.host}{args.path} via {mesh}", flush=True)
    counts = asyncio.run(
        traffic.send(
            mesh,
            args.host,
            rps=args.rps,
            duration=args.duration,
            path=args.path,
            report=lambda line: print(line, flush=True),
            source=args.source,
            sidecar=not args.no_sidecar,
        )
    )
    total = sum(counts.values())
    ok = sum(v for k, v in counts.items() if k.isdigit() and int(k) < 500)
    print(f"total {total} requests, {ok} without a 5xx or error ({100 * ok / total:.1f}%)", flush=True)
    return 0


def _processes(given: list[str]) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    for text in given:
        image, _, command = text.partition("=")
        argv = tuple(shlex.split(command))
        if not image or not argv:
            raise CommandError("expected IMAGE=COMMAND (a command line, split as a shell would)", where="--process")
        found[image] = argv
    return found


def _serve(args: argparse.Namespace) -> int:
    from kube_sandbox import serve  # noqa: PLC0415 - the server and its controllers, only when asked for
    from kube_sandbox.engine import EngineError  # noqa: PLC0415

    try:
        asyncio.run(
            serve(
                port=args.port,
                kubeconfig_path=args.kubeconfig.resolve(),
                state_dir=args.state,
                ready_delay=args.ready_delay,
                runtime=args.runtime,
                prometheus=args.prometheus,
                crash_backoff=args.crash_backoff,
                scrape_interval=args.scrape_interval,
                propagation_delay=args.propagation_delay,
                hpa_sync_period=args.hpa_sync_period,
                auth=args.auth,
                processes=_processes(args.process),
            )
        )
    except OSError as exc:
        raise CommandError(f"cannot serve: {exc.strerror or exc}", where=f"--port {args.port}") from None
    except (EngineError, RuntimeError) as exc:
        raise CommandError(str(exc), where=f"--runtime {args.runtime}") from None
    except KeyboardInterrupt:
        print("sandbox stopped", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str = "kube-sandbox") -> int:
    """Entry point: 0 on success, 1 on an error (one line on stderr), 2 on a usage error."""
    args = _parser(prog).parse_args(argv)
    try:
        return _serve(args) if args.command == "serve" else _traffic(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("KUBE_SANDBOX_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
            "(set KUBE_SANDBOX_DEBUG=1 for a traceback, and please report it)",
            file=sys.stderr,
        )
        return 2
