"""A stand-in for kaniko's executor (gcr.io/kaniko-project/executor), which cannot run on these machines.

The sandbox runs it as a build Job's container (kube-sandbox's `processes`: the image mapped to this command, the
container's args appended). It does what the deployer relies on kaniko for, the same way:
- its flags are kaniko's (README "Additional Flags"); one it does not know fails the build, as kaniko's does;
- the context is fetched as kaniko fetches an https:// context (pkg/buildcontext/https.go): one GET, anything but
  200 fails with "HTTPSTar bad status from server", then the gzipped tar is unpacked;
- the Dockerfile is built and the image pushed with the registry's API (buildah here; kaniko does both itself);
- it logs as kaniko does with --log-format=json (pkg/logging: logrus' JSON formatter, one object per line; the
  instruction as each begins, pkg/executor/build.go), what RUN steps print as it is, and ends with exit status 1
  and an error entry when a step fails.
For the tests' sake it also tries its context URL a second time and every earlier build's URL (kept in
--record), and prints what the deployer answered: each context can be fetched once, by its own build.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from deployer.build import BuildahBuilder, BuildRequest
from deployer.errors import DeployError
from deployer.events import Event

STEP = re.compile(r"^STEP \d+/\d+: (.*)$")


def log(message: str, level: str = "info") -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps({"level": level, "msg": message, "time": stamp}), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="executor", allow_abbrev=False)
    parser.add_argument("--storage", required=True)  # the stand-in's own: buildah's storage
    parser.add_argument("--ca-file", required=True)  # the stand-in's own: kaniko's SSL_CERT_DIR holds it in a pod
    parser.add_argument("--record", required=True)  # the stand-in's own: where earlier builds' URLs are kept
    parser.add_argument("--context", required=True)
    parser.add_argument("--dockerfile", default="Dockerfile")
    parser.add_argument("--destination", action="append", required=True)
    parser.add_argument("--cache", choices=("true", "false"), default="false")
    parser.add_argument("--cache-repo")
    parser.add_argument("--snapshot-mode", choices=("full", "redo", "time"))
    parser.add_argument("--reproducible", action="store_true")
    parser.add_argument("--build-arg", action="append", default=[])
    parser.add_argument("--log-format", choices=("text", "color", "json"), default="color")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--skip-tls-verify", action="store_true")
    return parser.parse_args(argv)


def fetch(url: str, tls: ssl.SSLContext) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, context=tls, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def main(argv: list[str]) -> int:
    args = parse(argv)
    if not args.context.startswith("https://"):
        log("error resolving source context: unknown build context prefix", "error")
        return 1
    tls = ssl.create_default_context(cafile=args.ca_file)
    log("Retrieving https tar file")
    status, body = fetch(args.context, tls)
    if status != 200:
        log(f"error resolving source context: HTTPSTar bad status from server: {status}", "error")
        return 1
    log("Retrieved https tar file")
    again, _ = fetch(args.context, tls)
    record = Path(args.record)
    earlier = record.read_text().split() if record.exists() else []
    answers = [str(fetch(url, tls)[0]) for url in earlier]
    log(f"(stand-in) the same context again: HTTP {again}; earlier builds' contexts: {' '.join(answers) or 'none'}")
    with record.open("a") as kept:
        kept.write(args.context + "\n")
    with tempfile.TemporaryDirectory(prefix="kaniko-standin-") as scratch:
        context = Path(scratch) / "context"
        archive = Path(scratch) / "context.tar.gz"
        archive.write_bytes(body)
        with tarfile.open(archive) as tar:
            tar.extractall(context, filter="data")
        log("Extracted https tar file")
        build_args = dict(arg.split("=", 1) for arg in args.build_arg)
        request = BuildRequest(
            context=context,
            dockerfile=context / args.dockerfile,
            image=args.destination[0],
            args=build_args,
            insecure=args.insecure,
        )

        def show(event: Event) -> None:
            if event.kind != "output":
                return
            step = STEP.match(event.message)
            if step:
                log(step.group(1))
            elif event.message.strip():
                print(event.message, flush=True)

        try:
            asyncio.run(BuildahBuilder(storage=Path(args.storage)).build_and_push(request, show))
        except DeployError as exc:
            log(f"error building image: {exc.message}", "error")
            return 1
    log(f"Pushed {args.destination[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
