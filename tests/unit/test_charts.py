"""Which registries a chart's dependencies may come from: refused in one line before helm runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deployer.build.registry import RegistryClient
from deployer.errors import DeployError
from deployer.pipeline.charts import ChartRegistries


def chart_with(tmp_path: Path, repository: str) -> Path:
    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    dependency = f"{{name: common, version: 1.0.0, repository: '{repository}'}}"
    (chart / "Chart.yaml").write_text(f"apiVersion: v2\nname: hello\nversion: 0.1.0\ndependencies:\n  - {dependency}\n")
    return chart


def test_a_dependency_from_a_registry_the_server_does_not_allow_is_refused(tmp_path: Path) -> None:
    charts = ChartRegistries(registry=RegistryClient(), allowed=frozenset({"registry.example.com"}))
    chart = chart_with(tmp_path, "oci://elsewhere.example.com/library")
    with pytest.raises(DeployError) as refused:
        asyncio.run(charts.dependencies(None, chart, chart_label="charts/hello", scratch=tmp_path))  # type: ignore[arg-type]
    assert str(refused.value) == (
        "charts/hello/Chart.yaml: dependencies[0] (common) may not come from elsewhere.example.com: "
        "server.yaml charts.registries allows registry.example.com"
    )


def test_vendored_dependencies_and_charts_without_any_need_nothing_pulled(tmp_path: Path) -> None:
    charts = ChartRegistries(registry=RegistryClient(), allowed=frozenset())
    chart = chart_with(tmp_path, "oci://elsewhere.example.com/library")
    (chart / "charts").mkdir()
    (chart / "charts" / "common-1.0.0.tgz").write_bytes(b"")  # vendored: helm uses it as it is
    assert asyncio.run(charts.dependencies(None, chart, chart_label="charts/hello", scratch=tmp_path)) == chart  # type: ignore[arg-type]
