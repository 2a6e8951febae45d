"""Every bad input of the foundation issue: exit code 1, one line naming the file and field or line, no traceback.

Each test breaks a copy of an example repo the way a developer might, and reads what `deployer` prints.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import edit, run_deployer, run_deployer_process

Example = Callable[[str], Path]


def fails(*args: str | Path) -> str:
    """Run `deployer ARGS`, assert it failed as a user should see it, and return the one error line."""
    result = run_deployer(*args)
    assert result.code == 1, result
    line = result.error_line
    assert line.startswith("error: ")
    return line


def test_missing_deploy_yaml(tmp_path: Path) -> None:
    line = fails("validate", "--repo", tmp_path)
    assert "deploy.yaml: not found" in line


def test_yaml_syntax_error_gives_line_and_column(example: Example) -> None:
    repo = example("hello")
    edit(repo / "deploy.yaml", "app: hello", "app: hello: world")
    line = fails("validate", "--repo", repo)
    assert line.startswith("error: deploy.yaml:3:11: YAML error: mapping values are not allowed")


def test_duplicate_key_is_an_error_not_last_one_wins(example: Example) -> None:
    repo = example("hello")
    edit(repo / "deploy.yaml", "app: hello\n", "app: hello\napp: goodbye\n")
    line = fails("validate", "--repo", repo)
    assert "deploy.yaml:4:1" in line
    assert "duplicate key 'app' (first defined on line 3)" in line


def test_duplicate_key_in_values_file(example: Example) -> None:
    repo = example("hello")
    edit(repo / "environments" / "prod.yaml", "replicas: 3\n", "replicas: 3\nreplicas: 4\n")
    line = fails("render", "--env", "prod", "--repo", repo)
    assert "environments/prod.yaml:2:1" in line
    assert "duplicate key 'replicas'" in line


def test_unknown_key_names_it_and_what_is_allowed(example: Example) -> None:
    repo = example("hello")
    edit(
        repo / "deploy.yaml",
        "    namespace: hello-staging\n",
        "    namespace: hello-staging\n    branhces: [x]\n",
    )
    line = fails("validate", "--repo", repo)
    assert "deploy.yaml:18:5: environments.staging.branhces: unknown key 'branhces'" in line
    assert "branches, namespace, values, canary, jobs" in line


def test_an_image_tag_is_only_for_images_built_elsewhere(example: Example) -> None:
    repo = example("hello")
    edit(
        repo / "deploy.yaml",
        "  repository: 127.0.0.1:5000/hello\n",
        "  repository: 127.0.0.1:5000/hello\n  tag: 1.2.3\n",
    )
    line = fails("validate", "--repo", repo)
    assert line.startswith("error: deploy.yaml:6:3: image.tag: is for images built elsewhere (build: false)")
    edit(repo / "deploy.yaml", "  tag: 1.2.3\n", "  tag: '1.2 3'\n")
    edit(
        repo / "deploy.yaml",
        "build:\n  dockerfile: Dockerfile\n  context: .\n  args:\n    GREETING: hello\n",
        "build: false\n",
    )
    assert "image.tag: String should match pattern" in fails("validate", "--repo", repo)
    edit(repo / "deploy.yaml", "  tag: '1.2 3'\n", "  tag: 1.2.3\n")
    assert run_deployer("validate", "--repo", repo).code == 0  # no Dockerfile needed either
    (repo / "Dockerfile").unlink()
    assert run_deployer("validate", "--repo", repo).code == 0


def test_wrong_type_names_field_and_value(example: Example) -> None:
    repo = example("hello")
    edit(
        repo / "deploy.yaml",
        "      threshold: 2\n",
        "      threshold: lots\n",
    )
    line = fails("validate", "--repo", repo)
    assert "deploy.yaml:22:7: environments.staging.canary.threshold:" in line
    assert "'lots'" in line


def test_environment_without_branches(example: Example) -> None:
    repo = example("hello")
    edit(repo / "deploy.yaml", "    branches: [main]\n", "    branches: []\n")
    line = fails("validate", "--repo", repo)
    assert "deploy.yaml:16:5: environments.staging.branches:" in line
    assert "at least 1 item" in line


def test_two_environments_claiming_the_same_branch(example: Example) -> None:
    repo = example("hello")
    edit(repo / "deploy.yaml", "    branches: [prod]\n", "    branches: [prod, main]\n")
    line = fails("validate", "--repo", repo)
    assert "environments.prod.branches[1]: branch 'main' is claimed by both 'staging' and 'prod'" in line
    assert "deploy.yaml:27:22:" in line


def test_missing_values_file(example: Example) -> None:
    repo = example("hello")
    (repo / "environments" / "prod.yaml").unlink()
    line = fails("validate", "--repo", repo)
    assert "environments.prod.values[0]" in line
    assert "values file 'environments/prod.yaml' does not exist" in line


def test_values_file_that_is_not_a_mapping(example: Example) -> None:
    repo = example("hello")
    (repo / "environments" / "prod.yaml").write_text("- replicas: 3\n")
    line = fails("render", "--env", "prod", "--repo", repo)
    assert "error: environments/prod.yaml: a values file must be a mapping" in line


def test_missing_chart_path(example: Example) -> None:
    repo = example("hello")
    edit(repo / "deploy.yaml", "chart: charts/hello", "chart: charts/helo")
    line = fails("validate", "--repo", repo)
    assert "render.helm.chart" in line
    assert "chart directory 'charts/helo' does not exist" in line


def test_helm_template_error_is_helms_message_trimmed(example: Example) -> None:
    repo = example("hello")
    edit(repo / "charts" / "hello" / "templates" / "service.yaml", "port: 80", "port: {{ .Values.svc.port }}")
    line = fails("render", "--env", "staging", "--repo", repo)
    assert line.startswith("error: charts/hello/templates/service.yaml:12:22: helm template failed: executing")
    assert "helm template failed" in line
    assert "nil pointer evaluating interface {}.port" in line
    assert "Use --debug" not in line


def test_helm_error_through_the_console_script_is_one_line(example: Example) -> None:
    repo = example("hello")
    edit(repo / "charts" / "hello" / "templates" / "service.yaml", "port: 80", "port: {{ .Values.svc.port }}")
    result = run_deployer_process("render", "--env", "staging", "--repo", repo)
    assert result.code == 1
    assert result.error_line.startswith("error: charts/hello/templates/service.yaml:12:22: helm template failed")
    assert result.out == ""


def test_helm_required_value_message(example: Example) -> None:
    repo = example("hello")
    edit(
        repo / "charts" / "hello" / "templates" / "service.yaml",
        "port: 80",
        'port: {{ required "set svcPort in your values" .Values.svcPort }}',
    )
    line = fails("render", "--env", "staging", "--repo", repo)
    assert line == "error: charts/hello/templates/service.yaml:12:15: helm template failed: set svcPort in your values"


def test_jinja_syntax_error_gives_file_and_line(example: Example) -> None:
    repo = example("hello-jinja")
    edit(repo / "templates" / "service.yaml.j2", "  name: {{ release.name }}", "  name: {{ release.name }")
    line = fails("render", "--env", "staging", "--repo", repo)
    assert line.startswith("error: templates/service.yaml.j2:5: template syntax error")


def test_jinja_undefined_variable(example: Example) -> None:
    repo = example("hello-jinja")
    edit(repo / "templates" / "deployment.yaml.j2", "{{ values.replicas }}", "{{ values.replica_count }}")
    line = fails("render", "--env", "staging", "--repo", repo)
    assert line.startswith("error: templates/deployment.yaml.j2:10: undefined value:")
    assert "replica_count" in line


def test_jinja_undefined_in_a_partial_names_the_partial(example: Example) -> None:
    repo = example("hello-jinja")
    edit(repo / "templates" / "_macros.j2", "{{ app }}", "{{ application }}")
    line = fails("render", "--env", "staging", "--repo", repo)
    assert line.startswith("error: templates/_macros.j2:2: undefined value:")


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ values.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ values.update({'x': 1}) }}",
        "{{ 'a' * 100000000 }}",
        "{{ 9 ** 9999999 }}",
    ],
)
def test_jinja_sandbox_escape_is_refused(example: Example, expression: str) -> None:
    repo = example("hello-jinja")
    edit(repo / "templates" / "service.yaml.j2", "  name: {{ release.name }}", f"  name: {expression}")
    line = fails("render", "--env", "staging", "--repo", repo)
    assert "templates/service.yaml.j2:5" in line
    assert "not allowed in a sandboxed template" in line or "undefined value" in line


@pytest.mark.parametrize("target", ["../../deploy.yaml", "/etc/passwd", "../environments/prod.yaml"])
def test_jinja_include_outside_the_templates_dir_is_refused(example: Example, target: str) -> None:
    repo = example("hello-jinja")
    edit(repo / "templates" / "service.yaml.j2", "spec:\n", f"spec:\n  x: {{% include '{target}' %}}\n")
    line = fails("render", "--env", "staging", "--repo", repo)
    assert f"include {target!r}" in line
    assert "outside the templates directory" in line


def test_jinja_include_through_a_symlink_out_of_the_repo_is_refused(example: Example, tmp_path: Path) -> None:
    repo = example("hello-jinja")
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2\n")
    os.symlink(secret, repo / "templates" / "_secret.j2")
    line = fails("render", "--env", "staging", "--repo", repo)
    assert "templates/_secret.j2' is a symlink that leads outside the repo" in line
    assert "hunter2" not in line


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"),
    [
        (
            "[environments/prod.yaml]",
            "[../../etc/passwd]",
            "environments.prod.values[0]",
            "'..' is not allowed",
        ),
        ("[environments/prod.yaml]", "[/etc/passwd]", "environments.prod.values[0]", "is absolute"),
        ("chart: charts/hello", "chart: ../hello/charts/hello", "render.helm.chart", "'..' is not allowed"),
        ("dockerfile: Dockerfile", "dockerfile: /Dockerfile", "build.dockerfile", "is absolute"),
    ],
)
def test_path_traversal_is_refused(example: Example, old: str, new: str, field: str, problem: str) -> None:
    repo = example("hello")
    edit(repo / "deploy.yaml", old, new)
    line = fails("validate", "--repo", repo)
    assert field in line
    assert problem in line


def test_values_file_symlink_out_of_the_repo_is_refused(example: Example, tmp_path: Path) -> None:
    repo = example("hello")
    outside = tmp_path / "outside.yaml"
    outside.write_text("replicas: 1\n")
    (repo / "environments" / "prod.yaml").unlink()
    os.symlink(outside, repo / "environments" / "prod.yaml")
    line = fails("validate", "--repo", repo)
    assert "environments.prod.values[0]" in line
    assert "resolves outside the repo through a symlink" in line


def test_chart_containing_a_symlink_out_of_the_repo_is_refused(example: Example) -> None:
    repo = example("hello")
    os.symlink("/etc/passwd", repo / "charts" / "hello" / "templates" / "passwd.yaml")
    line = fails("render", "--env", "staging", "--repo", repo)
    assert "charts/hello/templates/passwd.yaml' is a symlink that leads outside the repo" in line


def test_invalid_rendered_object_names_kind_name_field_and_template(example: Example) -> None:
    repo = example("hello")
    edit(repo / "environments" / "prod.yaml", "replicas: 3", 'replicas: "three"')
    line = fails("render", "--env", "prod", "--repo", repo)
    assert line == (
        "error: charts/hello/templates/deployment.yaml: Deployment/hello: spec.replicas: 'three' is not of type integer"
    )


def test_unknown_field_in_rendered_object(example: Example) -> None:
    repo = example("hello-jinja")
    edit(repo / "templates" / "deployment.yaml.j2", "  replicas:", "  replicaz:")
    line = fails("render", "--env", "prod", "--repo", repo)
    assert "templates/deployment.yaml.j2: Deployment/hello-jinja: spec: unknown field ('replicaz'" in line


def test_invalid_label_value_in_rendered_object(example: Example) -> None:
    repo = example("hello-jinja")
    edit(repo / "templates" / "service.yaml.j2", "  labels:\n", "  labels:\n    team: 'a b'\n")
    line = fails("render", "--env", "prod", "--repo", repo)
    assert "Service/hello-jinja: metadata.labels.team value 'a b' is not a valid label value" in line


def test_object_aimed_at_another_namespace_is_refused(example: Example) -> None:
    repo = example("hello-jinja")
    edit(
        repo / "templates" / "service.yaml.j2",
        "  name: {{ release.name }}\n",
        "  name: {{ release.name }}\n  namespace: kube-system\n",
    )
    line = fails("render", "--env", "prod", "--repo", repo)
    assert "Service/hello-jinja: metadata.namespace is 'kube-system', but this environment deploys to" in line


def test_unknown_environment(example: Example) -> None:
    line = fails("render", "--env", "qa", "--repo", example("hello"))
    assert line == "error: deploy.yaml: no environment 'qa' (environments: staging, prod)"


def test_values_file_may_not_set_the_reserved_deployer_key(example: Example) -> None:
    repo = example("hello")
    (repo / "environments" / "prod.yaml").write_text("deployer:\n  image:\n    ref: evil/image\n")
    line = fails("render", "--env", "prod", "--repo", repo)
    assert line == "error: environments/prod.yaml: key 'deployer' is reserved for the values the deployer injects"


def test_bad_set_expression(example: Example) -> None:
    line = fails("render", "--env", "prod", "--repo", example("hello"), "--set", "replicas")
    assert line.startswith("error: --set replicas: expected KEY=VALUE")


def test_console_script_prints_no_traceback_and_changes_nothing(example: Example) -> None:
    repo = example("hello")
    edit(repo / "deploy.yaml", "app: hello", "app: Hello_World")
    before = sorted((p.relative_to(repo), p.read_bytes()) for p in repo.rglob("*") if p.is_file())
    result = run_deployer_process("validate", "--repo", repo)
    assert result.code == 1
    assert result.error_line.startswith("error: deploy.yaml:3:1: app: String should match pattern")
    assert result.out == ""
    after = sorted((p.relative_to(repo), p.read_bytes()) for p in repo.rglob("*") if p.is_file())
    assert before == after


def test_sandbox_traffic_without_a_sandbox_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "kubeconfig"
    result = run_deployer("sandbox", "traffic", "--kubeconfig", missing, "--host", "web.default")
    assert result.code == 1
    assert result.err == (
        f"error: {missing}: cannot find the sandbox's mesh: [Errno 2] No such file or directory: '{missing}' "
        "(is `kube-sandbox serve` running?)\n"
    )
    bad = run_deployer("sandbox", "traffic", "--mesh", "http://127.0.0.1:9", "--host", "x", "--rps", "0")
    assert bad.code == 1
    assert bad.err == "error: traffic: --rps and --duration must be positive\n"


def test_sandbox_without_kube_sandbox_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kube_sandbox.cli", None)  # what an install without kube-sandbox imports
    for args in (["sandbox"], ["sandbox", "traffic", "--host", "x"]):
        result = run_deployer(*args)
        assert result.code == 1
        assert result.error_line == (
            "error: sandbox: kube-sandbox is not installed (a development tool: `make setup`, or pip install ./sandbox)"
        )


BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)  # 9 levels of 10: about 10^9 nodes from 400 bytes


@pytest.mark.parametrize("where", ["deploy.yaml", "environments/prod.yaml"])
def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(example: Example, where: str) -> None:
    repo = example("hello")
    target = repo / where
    target.write_text(target.read_text() + "\n" + BOMB.replace("a:", "bomb_a:", 1))
    line = fails("render", "--env", "prod", "--repo", repo)
    assert re.match(
        rf"error: {where}: YAML error: aliases expand \d+ nodes to over 1,000,000 \(an alias bomb\?\)", line
    )


def test_a_self_referring_alias_is_refused(example: Example) -> None:
    repo = example("hello")
    edit(repo / "environments" / "prod.yaml", "replicas: 3\n", "replicas: 3\nloop: &l [*l]\n")
    line = fails("render", "--env", "prod", "--repo", repo)
    assert line.startswith("error: environments/prod.yaml: YAML error: an alias refers to a node that contains it")
