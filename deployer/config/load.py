"""Load deploy.yaml and values files from a repo into checked models, with errors a developer can act on."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from deployer.config.model import DeployConfig, conflicts
from deployer.config.repo import RepoFiles
from deployer.config.yamlio import Document, load_document
from deployer.errors import DeployError

DEPLOY_FILE = "deploy.yaml"
M = TypeVar("M", bound=BaseModel)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_at(schema: dict[str, Any], path: tuple[str | int, ...]) -> dict[str, Any] | None:
    """The JSON schema of the object at `path`, following $ref, anyOf and additionalProperties."""
    defs = schema.get("$defs", {})
    node: dict[str, Any] | None = schema
    for part in path:
        node = _deref(node, defs)
        if node is None:
            return None
        if isinstance(part, int):
            node = node.get("items")
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif node.get("patternProperties"):
            node = next(iter(node["patternProperties"].values()))
        else:
            return None
    return _deref(node, defs)


def _deref(node: dict[str, Any] | None, defs: dict[str, Any]) -> dict[str, Any] | None:
    while node is not None:
        if "$ref" in node:
            node = defs.get(node["$ref"].rsplit("/", 1)[-1])
        elif "anyOf" in node:
            node = next((o for o in node["anyOf"] if o.get("type") != "null"), None)
        else:
            return node
    return None


def _describe(error: ErrorDetails, doc: Document, schema: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    loc = tuple(error["loc"])
    known = next(loc[:n] for n in range(len(loc), -1, -1) if n == 0 or loc[:n] in doc.positions)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _schema_at(schema, loc[:-1]) or {}
        allowed = ", ".join(parent.get("properties", {})) or "none"
        return loc, f"unknown key {loc[-1]!r} (allowed here: {allowed})"
    if kind == "missing":
        return loc, f"required key {loc[-1]!r} is missing"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if "input" in error and kind not in ("model_type", "dict_type", "list_type") and known == loc:
        message = f"{message} (got {error['input']!r})"
    return known, message


def parse_model(model: type[M], text: str, *, source: str, keys: str) -> tuple[M, Document]:
    """YAML text → a checked `model`, or one DeployError naming `file:line:col` and the field."""
    doc = load_document(text, source=source)
    if not isinstance(doc.data, dict):
        raise DeployError(f"expected a mapping with keys {keys}", where=source)
    try:
        return model.model_validate(doc.data), doc
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        path, message = _describe(errors[0], doc, model.model_json_schema(by_alias=True, mode="validation"))
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise DeployError(f"{_dotted(path)}: {message}{more}", where=doc.where(path)) from None


def parse_deploy_config(text: str, *, source: str = DEPLOY_FILE) -> DeployConfig:
    """deploy.yaml text → DeployConfig, or one DeployError naming `file:line:col` and the field."""
    config, doc = parse_model(DeployConfig, text, source=source, keys="app, image, render, environments")
    found = conflicts(config)
    if found:
        path, message = found[0]
        raise DeployError(f"{_dotted(path)}: {message}", where=doc.where(path))
    return config


def load_deploy_config(repo: RepoFiles) -> DeployConfig:
    """The repo's deploy.yaml, parsed and checked, with every path it names resolved inside the repo."""
    if not (repo.root / DEPLOY_FILE).exists():
        raise DeployError(
            f"not found at the top of {repo.root}; every app repo needs one (see examples/hello/deploy.yaml)",
            where=DEPLOY_FILE,
        )
    config = parse_deploy_config(repo.read_text(DEPLOY_FILE, where=DEPLOY_FILE), source=DEPLOY_FILE)
    check_paths(config, repo)
    return config


def check_paths(config: DeployConfig, repo: RepoFiles) -> None:
    """Every path deploy.yaml names exists inside the repo (no `..`, no absolute path, no symlink out)."""
    if (build := config.builds) is not None:
        repo.directory(build.context, where=f"{DEPLOY_FILE}: build.context", what="build context", check_tree=False)
        repo.file(build.dockerfile, where=f"{DEPLOY_FILE}: build.dockerfile", what="Dockerfile")
    if config.render.helm is not None and not config.render.helm.oci:
        chart = config.render.helm.chart
        repo.directory(chart, where=f"{DEPLOY_FILE}: render.helm.chart", what="chart directory")
        repo.file(f"{chart.rstrip('/')}/Chart.yaml", where=f"{DEPLOY_FILE}: render.helm.chart", what="chart file")
    if config.render.templates is not None:
        repo.directory(
            config.render.templates.dir,
            where=f"{DEPLOY_FILE}: render.templates.dir",
            what="templates directory",
        )
    for env_name, env in config.environments.items():
        for index, path in enumerate(env.values):
            repo.file(path, where=f"{DEPLOY_FILE}: environments.{env_name}.values[{index}]", what="values file")


def load_values_file(repo: RepoFiles, path: str, *, where: str) -> dict[str, Any]:
    """A values file as a mapping (an empty file is an empty mapping)."""
    text = repo.read_text(path, where=where, what="values file")
    data = load_document(text, source=path).data
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DeployError(f"a values file must be a mapping of keys to values, got a {type(data).__name__}", where=path)
    return data
