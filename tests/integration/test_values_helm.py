"""Our values layering against the real, pinned helm: what templates see must be what we computed.

A chart prints `.Values` as JSON; bare `helm template -f ... --set ...` (no deployer involved) gives
Helm's answer, and the deployer's render through pyhelm3 must give the same.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.config import RepoFiles, load_deploy_config, load_values_file
from deployer.helm import PINNED_HELM_VERSION, Helm, find_helm
from deployer.pipeline import render_environment
from deployer.render.values import coalesce, layer_values

CHART_VALUES = {
    "replicas": 1,
    "image": {"pullPolicy": "IfNotPresent", "tag": "x", "extra": {"keep": True}},
    "hosts": ["a", "b"],
    "gone": 1,
    "nothing": None,
    "dates": {"released": "2024-01-01"},
}
CASES: list[tuple[list[dict[str, Any]], list[str]]] = [
    ([{"replicas": 3}], []),
    ([{"image": {"tag": "y"}}, {"image": {"pullPolicy": "Always"}}], []),
    ([{"hosts": ["c"]}], ["hosts[1]=d"]),
    ([{"gone": None, "image": {"extra": None}}], []),
    ([{"x": 1}, {"x": None}], []),
    ([{"image": "nginx"}], []),
    ([{"replicas": {"min": 2}}], []),
    ([{"list": [1, 2, 3]}, {"list": [{"a": 1}]}], ["list[0].b=2"]),
    ([], ["a.b.c=1,d={x,y}", "e=012", "f=1.5", "g=true", "h=null", "image.tag=null"]),
    ([{"dates": {"released": "2025-02-02", "on": "yes"}}], ["hosts={}"]),
]


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    chart = root / "charts" / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text(yaml.safe_dump(CHART_VALUES))
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n"
        "data:\n  values: {{ toJson .Values | b64enc | quote }}\n"
    )
    (root / "Dockerfile").write_text("FROM scratch\n")
    return chart


def helm_values(chart: Path, files: list[dict[str, Any]], sets: list[str], tmp_path: Path) -> Any:
    args = [find_helm(), "template", "r", str(chart)]
    for index, data in enumerate(files):
        path = tmp_path / f"f{index}.yaml"
        path.write_text(yaml.safe_dump(data))
        args += ["-f", str(path)]
    for expr in sets:
        args += ["--set", expr]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(base64.b64decode(yaml.safe_load(out)["data"]["values"]))


@pytest.mark.parametrize(("files", "sets"), CASES)
def test_layering_matches_bare_helm(chart: Path, tmp_path: Path, files: list[dict[str, Any]], sets: list[str]) -> None:
    theirs = helm_values(chart, files, sets, tmp_path)  # writes f0.yaml, f1.yaml, ... into tmp_path
    repo = RepoFiles(tmp_path)
    loaded = [(f"f{i}.yaml", load_values_file(repo, f"f{i}.yaml", where="test")) for i in range(len(files))]
    ours = layer_values(defaults=CHART_VALUES, files=loaded, sets=sets, injected={}).final
    del ours["deployer"]
    assert ours == theirs


TRICKY_SCALARS = """\
a: y
b: N
c: yes
d: off
e: 1e3
f: 1:20
g: 0755
h: 0x1F
i: 1_000
j: 0b101
k: .5
l: 5.
m: ~
n: 2024-01-01
o: +1
r: 0o17
s: 1.5e+3
t: 1.5e3
u: 190:20:30.15
v: True
w: =
on: 1
"""


def test_values_files_mean_to_us_what_they_mean_to_helm(chart: Path, tmp_path: Path) -> None:
    (tmp_path / "tricky.yaml").write_text(TRICKY_SCALARS)
    out = subprocess.run(
        [find_helm(), "template", "r", str(chart), "-f", str(tmp_path / "tricky.yaml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    theirs = json.loads(base64.b64decode(yaml.safe_load(out)["data"]["values"]))
    ours = load_values_file(RepoFiles(tmp_path), "tricky.yaml", where="test")
    assert json.loads(json.dumps(coalesce(ours, CHART_VALUES))) == theirs


@pytest.mark.parametrize(("files", "sets"), CASES[:4])
def test_chart_sees_exactly_the_values_the_deployer_computed(
    chart: Path, files: list[dict[str, Any]], sets: list[str]
) -> None:
    repo = chart.parent.parent
    for index, data in enumerate(files):
        (repo / f"f{index}.yaml").write_text(yaml.safe_dump(data))
    names = [f"f{i}.yaml" for i in range(len(files))]
    (repo / "deploy.yaml").write_text(
        yaml.safe_dump(
            {
                "app": "probe",
                "image": {"repository": "127.0.0.1:5000/probe"},
                "render": {"helm": {"chart": "charts/probe"}},
                "environments": {"test": {"branches": ["main"], "namespace": "probe", "values": names}},
            }
        )
    )
    files_repo = RepoFiles(repo)
    rendered = asyncio.run(
        render_environment(
            repo=files_repo,
            config=load_deploy_config(files_repo),
            environment="test",
            commit="a" * 40,
            sets=tuple(sets),
        )
    )
    (configmap,) = rendered.manifests
    seen = json.loads(base64.b64decode(configmap["data"]["values"]))
    assert seen == rendered.values
    assert seen["deployer"]["image"]["ref"] == "127.0.0.1:5000/probe:" + "a" * 40


def test_the_pinned_helm_is_the_one_in_use() -> None:
    assert Helm().version == PINNED_HELM_VERSION
