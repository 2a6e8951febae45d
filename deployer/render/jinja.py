"""Native rendering: Jinja2 templates from a pushed repo, sandboxed.

Templates come from whoever can push, so they run in Jinja's immutable sandbox (no Python internals,
no mutation of values), with StrictUndefined (a typo is an error, not an empty string), a loader that
cannot leave the templates directory, and caps on output size and on `*`/`**` results.
"""

from __future__ import annotations

import base64
import hashlib
import json
import operator
from collections.abc import Callable
from types import TracebackType
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from deployer.config.repo import RepoFiles, check_relative
from deployer.config.yamlio import dump
from deployer.errors import DeployError

TEMPLATE_SUFFIXES = (".yaml.j2", ".yml.j2")
MAX_OUTPUT_CHARS = 4 * 1024 * 1024
MAX_REPEAT = 1_000_000


class _RepoLoader(jinja2.BaseLoader):
    """Loads templates by name relative to the templates dir; names never leave it."""

    def __init__(self, repo: RepoFiles, base: str) -> None:
        self.repo = repo
        self.base = base.rstrip("/")

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        where = f"{self.base}: include {template!r}"
        try:
            check_relative(template, where=where)
        except DeployError as exc:
            raise DeployError(
                f"include of a path outside the templates directory: {exc.message}", where=exc.where
            ) from None
        name = f"{self.base}/{template}"
        real = self.repo.resolve(name, where=where)
        if not real.is_file():
            raise jinja2.TemplateNotFound(template)
        text = self.repo.read_text(name, where=where, what="template")
        return text, name, lambda: True


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, plus caps on `*` and `**` so a template cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise SecurityError(f"exponent {right} is too large")
            return operator.pow(left, right)
        if isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple):
            size = (len(left) if isinstance(left, str | list | tuple) else 1) * (
                right if isinstance(right, int) else left if isinstance(left, int) else 1
            )
            if size > MAX_REPEAT:
                raise SecurityError(f"a repeated value of {size} items is too large")
        return operator.mul(left, right)


def _quote(value: Any) -> str:
    return json.dumps(str(value))


def _b64encode(value: Any) -> str:
    return base64.b64encode(str(value).encode()).decode()


def _b64decode(value: Any) -> str:
    return base64.b64decode(str(value).encode()).decode()


def _sha256(value: Any) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()


def _to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def make_environment(repo: RepoFiles, templates_dir: str) -> jinja2.Environment:
    """The sandboxed Jinja environment for one repo's templates directory."""
    env = _Environment(
        loader=_RepoLoader(repo, templates_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.filters.update(
        to_yaml=lambda v: dump(v).rstrip("\n"),
        to_json=_to_json,
        quote=_quote,
        b64encode=_b64encode,
        b64decode=_b64decode,
        sha256=_sha256,
    )
    return env


def template_names(repo: RepoFiles, templates_dir: str) -> list[str]:
    """Templates to render, relative to the templates dir, sorted; partials (`_*`) are only included."""
    root = repo.directory(
        templates_dir,
        where=f"deploy.yaml: render.templates.dir {templates_dir!r}",
        what="templates directory",
    )
    names = [
        path.relative_to(root).as_posix()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name.endswith(TEMPLATE_SUFFIXES) and not path.name.startswith("_")
    ]
    if not names:
        raise DeployError(f"no templates (*.yaml.j2) found in {templates_dir!r}", where="deploy.yaml")
    return names


def _template_line(tb: TracebackType | None, known: set[str]) -> tuple[str, int] | None:
    found = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in known:
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _explain(exc: Exception) -> str:
    if isinstance(exc, SecurityError):
        return f"not allowed in a sandboxed template: {exc}"
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined value: {exc.message}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"included template {exc.name!r} not found"
    return f"{type(exc).__name__}: {exc}"


def render_template(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    """Render one template to text; any error becomes a DeployError naming the template file and line."""
    base = env.loader.base if isinstance(env.loader, _RepoLoader) else ""
    full = f"{base}/{name}"
    try:
        text = env.get_template(name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise DeployError(
            f"template syntax error: {exc.message}", where=f"{exc.filename or full}:{exc.lineno}"
        ) from None
    except DeployError:
        raise
    except (
        jinja2.TemplateError,
        ArithmeticError,
        TypeError,
        ValueError,
        LookupError,
        RecursionError,
        AttributeError,
        MemoryError,
    ) as exc:
        known = _loaded_names(env) | {full}
        place = _template_line(exc.__traceback__, known)
        where = f"{place[0]}:{place[1]}" if place else full
        raise DeployError(_explain(exc), where=where) from None
    if len(text) > MAX_OUTPUT_CHARS:
        raise DeployError(f"rendered output is larger than {MAX_OUTPUT_CHARS} characters", where=full)
    return text


def _loaded_names(env: jinja2.Environment) -> set[str]:
    names: set[str] = set()
    for template in (env.cache or {}).values():
        if template is not None and template.filename:
            names.add(template.filename)
    return names
