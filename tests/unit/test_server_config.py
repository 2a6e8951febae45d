"""server.yaml: what the operator allows, checked before anything runs (no server, no cluster)."""

from __future__ import annotations

import re

import pytest

from deployer.config import parse_deploy_config
from deployer.config.server import (
    ServerConfig,
    check_app,
    check_claims,
    check_environment,
    parse_server_config,
    token_digest,
    user_for_key,
    user_for_token,
    with_authorized_keys,
)
from deployer.errors import DeployError
from deployer.pipeline.push import PushOptions

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxkZXBsb3llci10ZXN0LWtleS1ub3QtcmVhbC0xMjM0 alice@laptop"
SERVER = f"""
dataDir: /var/lib/deployer
cluster: {{inCluster: true}}
registry: {{host: "registry.example.com:5000"}}
apps:
  hello: {{environments: {{staging: hello-staging, prod: hello-prod}}}}
users:
  alice: {{keys: ["{KEY}"], tokens: ["{token_digest("s3cret-token")}"]}}
  bob: {{tokens: ["{token_digest("bob-token")}"], environments: [staging]}}
environments:
  prod:
    pushOptions: [dry-run]
    canary: {{required: true, minInterval: 30s}}
canary:
  defaults: {{steps: [10, 50], interval: 20s}}
"""
DEPLOY = """
app: hello
image: {repository: registry.example.com:5000/hello}
render: {helm: {chart: charts/hello}}
environments:
  staging: {branches: [main], namespace: hello-staging}
  prod:
    branches: [prod]
    namespace: hello-prod
    canary: {steps: [5, 50], interval: 1m}
"""


@pytest.fixture
def server() -> ServerConfig:
    return parse_server_config(SERVER, source="server.yaml")


def test_unknown_key_is_refused_with_file_line_and_allowed_keys() -> None:
    with pytest.raises(DeployError) as caught:
        parse_server_config(SERVER.replace("apps:", "aps: {}\napps:"), source="server.yaml")
    assert str(caught.value).startswith("server.yaml:5:1: aps: unknown key 'aps'")
    assert "apps" in str(caught.value)


def test_plain_token_in_config_is_refused_and_digest_explained() -> None:
    with pytest.raises(DeployError, match=r"users.bob.tokens\[0\]: expected 'sha256:' and 64 lowercase hex"):
        parse_server_config(SERVER.replace(token_digest("bob-token"), "bob-token"), source="server.yaml")


def test_malformed_public_key_is_refused(server: ServerConfig) -> None:
    with pytest.raises(DeployError, match=r"users.alice.keys\[0\]: expected an OpenSSH public key line"):
        parse_server_config(SERVER.replace(KEY, "AAAA alice"), source="server.yaml")


def test_cluster_needs_exactly_one_source() -> None:
    with pytest.raises(DeployError, match="cluster: set exactly one of 'kubeconfig' or 'inCluster: true'"):
        parse_server_config(SERVER.replace("{inCluster: true}", "{}"), source="server.yaml")


def test_users_are_found_by_token_and_by_key(server: ServerConfig) -> None:
    assert user_for_token(server, "s3cret-token") == "alice"
    assert user_for_token(server, "bob-token") == "bob"
    assert user_for_token(server, "guess") is None
    assert user_for_key(server, "ssh-ed25519", KEY.split()[1]) == "alice"
    assert user_for_key(server, "ssh-rsa", KEY.split()[1]) is None


def test_unknown_app_is_refused_naming_the_apps(server: ServerConfig) -> None:
    with pytest.raises(DeployError, match="unknown app 'shop': the server deploys hello"):
        check_app(server, user="alice", app="shop")


def test_staging_only_user_is_refused_prod(server: ServerConfig) -> None:
    deploy = parse_deploy_config(DEPLOY)
    check_environment(server, deploy, user="bob", app="hello", environment="staging", options=set())
    with pytest.raises(DeployError, match="user 'bob' may not deploy to prod"):
        check_environment(server, deploy, user="bob", app="hello", environment="prod", options=set())


def test_namespace_the_server_does_not_bind_to_the_environment_is_refused(server: ServerConfig) -> None:
    deploy = parse_deploy_config(DEPLOY.replace("namespace: hello-staging", "namespace: kube-system"))
    with pytest.raises(DeployError) as caught:
        check_environment(server, deploy, user="alice", app="hello", environment="staging", options=set())
    assert str(caught.value) == (
        "deploy.yaml: environments.staging.namespace: 'kube-system' is refused: the server binds staging to "
        "'hello-staging'"
    )


def test_a_staging_only_user_cannot_aim_staging_at_prods_namespace(server: ServerConfig) -> None:
    """The attack: deploy.yaml maps `staging` to prod's namespace; staging's rights and rules must not reach it."""
    swapped = DEPLOY.replace("namespace: hello-staging", "namespace: hello-prod").replace(
        "namespace: hello-prod\n    canary", "namespace: hello-staging\n    canary"
    )
    deploy = parse_deploy_config(swapped)
    with pytest.raises(DeployError) as caught:
        check_environment(server, deploy, user="bob", app="hello", environment="staging", options={"skip-canary"})
    assert str(caught.value) == (
        "deploy.yaml: environments.staging.namespace: 'hello-prod' is refused: the server binds staging to "
        "'hello-staging', which is prod's"
    )


def test_an_environment_the_server_does_not_know_for_the_app_is_refused(server: ServerConfig) -> None:
    deploy = parse_deploy_config(DEPLOY.replace("staging: {branches", "qa: {branches"))
    with pytest.raises(DeployError) as caught:
        check_environment(server, deploy, user="alice", app="hello", environment="qa", options=set())
    assert str(caught.value) == (
        "deploy.yaml: environments.qa: the server has no environment 'qa' for app 'hello' (it has: prod, staging)"
    )


def test_server_yaml_binds_one_environment_per_namespace_and_says_what_replaced_namespaces() -> None:
    twice = SERVER.replace("prod: hello-prod}", "prod: hello-staging}")
    with pytest.raises(DeployError, match="namespace 'hello-staging' is bound to both 'staging' and 'prod'"):
        parse_server_config(twice, source="server.yaml")
    old = SERVER.replace("{environments: {staging: hello-staging, prod: hello-prod}}", "{namespaces: [hello-prod]}")
    with pytest.raises(DeployError) as caught:
        parse_server_config(old, source="server.yaml")
    assert "'namespaces' is replaced by 'environments: {ENVIRONMENT: NAMESPACE}'" in str(caught.value)
    assert str(caught.value).startswith("server.yaml:")


def test_changing_a_branch_that_deploys_prod_now_needs_prods_rights(server: ServerConfig) -> None:
    check_claims(server, ["prod"], user="alice", branch="prod", commit="a" * 40)
    check_claims(server, [], user="bob", branch="prod", commit="a" * 40)
    with pytest.raises(DeployError) as caught:
        check_claims(server, ["prod"], user="bob", branch="prod", commit="a" * 40)
    assert str(caught.value) == (
        "server: branch 'prod' deploys prod now (deploy.yaml at aaaaaaaaaaaa); user 'bob' may not deploy to prod, "
        "so may not change it"
    )


def test_image_outside_the_servers_registry_is_refused(server: ServerConfig) -> None:
    deploy = parse_deploy_config(DEPLOY.replace("registry.example.com:5000/hello", "docker.io/evil/hello"))
    with pytest.raises(DeployError, match=r"is not in the server's registry registry\.example\.com:5000"):
        check_environment(server, deploy, user="alice", app="hello", environment="staging", options=set())


def test_repository_name_must_match_the_app(server: ServerConfig) -> None:
    deploy = parse_deploy_config(DEPLOY.replace("app: hello", "app: other"))
    with pytest.raises(DeployError, match=r"app: 'other' does not match the repository hello.git"):
        check_environment(server, deploy, user="alice", app="hello", environment="staging", options=set())


def test_push_options_are_allowed_per_environment(server: ServerConfig) -> None:
    deploy = parse_deploy_config(DEPLOY)
    check_environment(server, deploy, user="alice", app="hello", environment="staging", options={"async", "set"})
    check_environment(server, deploy, user="alice", app="hello", environment="prod", options={"dry-run"})
    with pytest.raises(DeployError, match=r"push option 'async' is not allowed for prod \(allowed: dry-run\)"):
        check_environment(server, deploy, user="alice", app="hello", environment="prod", options={"async"})


def test_server_defaults_fill_what_deploy_yaml_leaves_unset(server: ServerConfig) -> None:
    deploy = parse_deploy_config(DEPLOY)
    staging = check_environment(server, deploy, user="alice", app="hello", environment="staging", options=set())
    assert (staging.steps, staging.interval) == ([10, 50], 20.0)
    prod = check_environment(server, deploy, user="alice", app="hello", environment="prod", options=set())
    assert (prod.steps, prod.interval) == ([5, 50], 60.0)  # deploy.yaml's own values win


def test_canary_limits_refuse_short_intervals_and_disabled_canaries(server: ServerConfig) -> None:
    short = parse_deploy_config(DEPLOY.replace("interval: 1m", "interval: 5s"))
    with pytest.raises(DeployError, match=r"canary.interval: 5s is below the server's minimum for prod \(30s\)"):
        check_environment(server, short, user="alice", app="hello", environment="prod", options=set())
    off = parse_deploy_config(DEPLOY.replace("canary: {steps: [5, 50], interval: 1m}", "canary: false"))
    with pytest.raises(DeployError, match="canary: false is refused: the server requires a canary for prod"):
        check_environment(server, off, user="alice", app="hello", environment="prod", options=set())


def test_push_options_parse_and_unknown_ones_are_named() -> None:
    parsed = PushOptions.parse(["dry-run", "set.replicaCount=3", "async"])
    assert parsed.dry_run and not parsed.follow and parsed.sets == ("replicaCount=3",)
    assert parsed.names == {"dry-run", "async", "set"}
    with pytest.raises(DeployError, match="unknown push option 'force-it'"):
        PushOptions.parse(["force-it"])


def test_authorized_keys_files_give_each_key_its_environment(server: ServerConfig) -> None:
    carol = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIENDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0ND carol"
    merged = with_authorized_keys(
        server, {"staging": f"# staging deployers\n{carol}\n", "prod": f"{carol}\n{KEY.rsplit(' ', 1)[0]} alice\n"}
    )
    assert user_for_key(merged, "ssh-ed25519", carol.split()[1]) == "carol"
    assert merged.users["carol"].environments == ["staging", "prod"]
    assert merged.users["alice"].environments == ["*"]  # alice could deploy everywhere already
    with pytest.raises(DeployError) as caught:
        with_authorized_keys(
            server, {"prod": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIERERERERERERERERERERERERERERERERERERERERERE\n"}
        )
    assert str(caught.value) == "prod:1: each key needs a comment naming its user (ssh-ed25519 AAAA... alice)"


def test_route_grants_name_gateways_with_their_namespace() -> None:
    granted = SERVER.replace(
        "hello: {environments:",
        'hello: {routes: {gateways: [istio-system/public], hosts: ["*.hello.example.com"]}, environments:',
    )
    routes = parse_server_config(granted, source="server.yaml").apps["hello"].routes
    assert (routes.gateways, routes.hosts) == (["istio-system/public"], ["*.hello.example.com"])
    with pytest.raises(DeployError, match="name it as NAMESPACE/NAME"):
        parse_server_config(granted.replace("istio-system/public", "public"), source="server.yaml")
    assert parse_server_config(SERVER, source="server.yaml").apps["hello"].routes.hosts == []


def test_environments_on_other_clusters_are_bound_by_name() -> None:
    placed = SERVER.replace(
        "  hello: {environments: {staging: hello-staging, prod: hello-prod}}",
        "  hello: {environments: {staging: hello, prod: hello}, clusters: {prod: prod-eu}}",
    ).replace("registry: {", "clusters: {prod-eu: {kubeconfig: /etc/deployer/prod-eu}}\nregistry: {")
    config = parse_server_config(placed, source="server.yaml")
    assert (config.cluster_of("hello", "staging"), config.cluster_of("hello", "prod")) == (None, "prod-eu")
    assert config.apps["hello"].environment_of("hello", "prod-eu") == "prod", "one namespace name, two clusters"
    unknown = placed.replace("clusters: {prod: prod-eu}", "clusters: {prod: prod-us}")
    with pytest.raises(DeployError, match=r"apps.hello.clusters.prod: no cluster 'prod-us' in 'clusters' \(it has: "):
        parse_server_config(unknown, source="server.yaml")
    stray = placed.replace("clusters: {prod: prod-eu}", "clusters: {qa: prod-eu}")
    with pytest.raises(DeployError, match=re.escape("clusters.qa: no such environment in 'environments'")):
        parse_server_config(stray, source="server.yaml")
    same = placed.replace("clusters: {prod: prod-eu}", "clusters: {}")
    with pytest.raises(DeployError, match="namespace 'hello' is bound to both 'staging' and 'prod'"):
        parse_server_config(same, source="server.yaml")
    nowhere = placed.replace("cluster: {inCluster: true}\n", "")
    with pytest.raises(DeployError, match=re.escape("apps.hello.environments.staging: no cluster: give 'cluster'")):
        parse_server_config(nowhere, source="server.yaml")
    everywhere = nowhere.replace("clusters: {prod: prod-eu}", "clusters: {prod: prod-eu, staging: prod-eu}").replace(
        "{staging: hello, prod: hello}", "{staging: hello-staging, prod: hello}"
    )
    assert parse_server_config(everywhere, source="server.yaml").cluster is None
