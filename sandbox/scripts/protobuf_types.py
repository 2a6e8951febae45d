"""Make kube_sandbox/protobuf_types.json from a checkout of kubernetes/api (k8s.io/api): the protobuf field numbers
and JSON names of every type of the group versions the sandbox serves, read from the Go types' struct tags
(`json:"replicas,omitempty" protobuf:"varint,1,opt,name=replicas"`), which go-to-protobuf made generated.proto
from. The struct tags also say what the proto files cannot: whether a field is a pointer (a zero value sent is
meant) and whether its JSON omits an empty value.

    python sandbox/scripts/protobuf_types.py /path/to/kubernetes/api > sandbox/kube_sandbox/protobuf_types.json

apimachinery's own types (ObjectMeta, LabelSelector, Time, Quantity, IntOrString, ...) are written out by hand in
kube_sandbox/protobuf.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

GROUP_VERSIONS = [
    "core/v1",
    "apps/v1",
    "batch/v1",
    "autoscaling/v1",
    "autoscaling/v2",
    "networking/v1",
    "discovery/v1",
    "policy/v1",
    "rbac/v1",
    "coordination/v1",
    "scheduling/v1",
    "storage/v1",
    "authorization/v1",
    "authentication/v1",
    "events/v1",
]
# Go packages outside k8s.io/api: the kinds of apimachinery types protobuf.py knows
EXTERNAL = {
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "ObjectMeta"): "meta:ObjectMeta",
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "ListMeta"): "meta:ListMeta",
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "LabelSelector"): "meta:LabelSelector",
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "Condition"): "meta:Condition",
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "OwnerReference"): "meta:OwnerReference",
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "DeleteOptions"): "meta:DeleteOptions",
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "LabelSelectorRequirement"): "meta:LabelSelectorRequirement",
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "Time"): "time",
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "MicroTime"): "microtime",
    ("k8s.io/apimachinery/pkg/apis/meta/v1", "Duration"): "duration",
    ("k8s.io/apimachinery/pkg/api/resource", "Quantity"): "quantity",
    ("k8s.io/apimachinery/pkg/util/intstr", "IntOrString"): "intorstring",
    ("k8s.io/apimachinery/pkg/runtime", "RawExtension"): "rawext",
    ("k8s.io/apimachinery/pkg/types", "UID"): "string",
}
SCALARS = {
    "string": "string",
    "bool": "bool",
    "int32": "int",
    "int64": "int",
    "int": "int",
    "uint32": "int",
    "uint64": "int",
    "float64": "double",
    "float32": "float",
    "[]byte": "bytes",
}
FIELD = re.compile(r"^\t(?:(\w+)\s+)?([\w.\[\]*]+(?:\[[\w.]+\][\w.\[\]*]+)?)\s+`([^`]*)`")
TAG = re.compile(r'(\w+):"([^"]*)"')


def git_files(root: Path, directory: str) -> list[str]:
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-tree", "--name-only", f"HEAD:{directory}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    skip = ("generated", "zz_", "_test.go", "register.go", "doc.go")
    return [f"{directory}/{name}" for name in listed if name.endswith(".go") and not name.startswith(skip)]


def read(root: Path, path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "show", f"HEAD:{path}"], capture_output=True, text=True, check=True
    ).stdout


class Package:
    def __init__(self, name: str, sources: list[str]) -> None:
        self.name = name
        self.imports: dict[str, str] = {}
        self.structs: dict[str, list[tuple[str, str, dict[str, str]]]] = {}  # name -> [(field name, type, tags)]
        self.aliases: dict[str, str] = {}  # named type -> underlying Go type
        for source in sources:
            self._parse(source)

    def _parse(self, text: str) -> None:
        for block in re.findall(r"^import \((.*?)^\)", text, re.S | re.M):
            for line in block.splitlines():
                found = re.match(r'\s*(\w+)?\s*"([^"]+)"', line)
                if found:
                    path = found.group(2)
                    self.imports[found.group(1) or path.rsplit("/", 1)[-1]] = path
        for single in re.findall(r'^import (\w+ )?"([^"]+)"', text, re.M):
            self.imports[(single[0].strip() or single[1].rsplit("/", 1)[-1])] = single[1]
        for name, body in re.findall(r"^type (\w+) struct \{\n(.*?)^\}", text, re.S | re.M):
            fields = []
            for line in body.splitlines():
                found = FIELD.match(line)
                if not found:
                    continue
                tags = dict(TAG.findall(found.group(3)))
                if "protobuf" in tags:
                    fields.append((found.group(1) or "", found.group(2), tags))
            self.structs[name] = fields
        for name, underlying in re.findall(r"^type (\w+) ([\w.\[\]*]+)\s*$", text, re.M):
            self.aliases[name] = underlying


def main(root: Path) -> None:
    packages: dict[str, Package] = {}

    def package_of(name: str) -> Package:  # the group versions served, and those their types refer to
        if name not in packages:
            packages[name] = Package(name, [read(root, p) for p in git_files(root, name)])
        return packages[name]

    for gv in GROUP_VERSIONS:
        package_of(gv)
    types: dict[str, dict[str, list[object]]] = {}
    unknown: set[str] = set()

    def kind_of(package: Package, go: str) -> str:  # noqa: PLR0911 - one answer a form of Go type
        go = go.lstrip("*")
        if go in SCALARS:
            return SCALARS[go]
        if go.startswith("[]"):
            return "list:" + kind_of(package, go[2:])
        if go.startswith("map["):
            value = go[go.index("]") + 1 :]
            return "map:" + kind_of(package, value)
        if "." in go:
            alias, name = go.split(".", 1)
            path = package.imports.get(alias, "")
            if (path, name) in EXTERNAL:
                return EXTERNAL[(path, name)]
            if path.startswith("k8s.io/api/"):
                return kind_of(package_of(path[len("k8s.io/api/") :]), name)
            unknown.add(f"{path}.{name}")
            return f"unknown:{path}.{name}"  # protobuf.py refuses a body that sets such a field
        if go in package.structs:
            return f"msg:{package.name}.{go}"
        if go in package.aliases:
            underlying = package.aliases[go]
            if underlying.startswith("[]") and underlying[2:] not in ("byte",):
                return "wrapped:" + kind_of(package, underlying[2:])  # a named slice: a message {repeated items = 1}
            return kind_of(package, underlying)
        raise SystemExit(f"{package.name}: unknown type {go}")

    for package in list(packages.values()):
        for struct, fields in package.structs.items():
            spec: dict[str, list[object]] = {}
            for _, go, tags in fields:
                proto = tags["protobuf"].split(",")
                number = proto[1]
                json_name = tags.get("json", "").split(",")[0]
                inline = json_name == ""  # an embedded struct whose JSON is inlined (VolumeSource in Volume)
                kind = kind_of(package, go)
                repeated = kind.startswith("list:")
                if repeated:
                    kind = kind[len("list:") :]
                flags = "".join(
                    [
                        "p" if go.startswith("*") else "",
                        "o" if "omitempty" in tags.get("json", "") else "",
                        "i" if inline else "",
                        "r" if repeated else "",
                    ]
                )
                spec[number] = [json_name, kind, flags]
            types[f"{package.name}.{struct}"] = spec
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    json.dump({"source": f"kubernetes/api@{commit.stdout.strip()}", "types": types}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    for name in sorted(unknown):
        print(f"not mapped: {name}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
