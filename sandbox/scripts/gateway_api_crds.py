"""Make kube_sandbox/gateway_api_crds.json from a checkout of kubernetes-sigs/gateway-api: the standard channel's
CustomResourceDefinitions of GatewayClass, Gateway, HTTPRoute and ReferenceGrant at a release tag, as a cluster
gets them from `kubectl apply -f standard-install.yaml`, with their descriptions dropped (they are most of the
bytes and the sandbox serves no explain).

    python sandbox/scripts/gateway_api_crds.py /path/to/gateway-api v1.4.0 > sandbox/kube_sandbox/gateway_api_crds.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

KINDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")


def _without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_descriptions(v) for k, v in node.items() if k != "description" or not isinstance(v, str)}
    if isinstance(node, list):
        return [_without_descriptions(v) for v in node]
    return node


def main(repo: Path, tag: str) -> None:
    crds = []
    for plural in KINDS:
        path = f"config/crd/standard/gateway.networking.k8s.io_{plural}.yaml"
        text = subprocess.run(
            ["git", "--git-dir", str(repo), "show", f"{tag}:{path}"], capture_output=True, text=True, check=True
        ).stdout
        crds.append(_without_descriptions(yaml.safe_load(text)))
    json.dump({"source": f"kubernetes-sigs/gateway-api@{tag}", "crds": crds}, sys.stdout, separators=(",", ":"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
