"""deploy.yaml and server config models (pure: no cluster, no network, no subprocess)."""

from deployer.config.load import DEPLOY_FILE, load_deploy_config, load_values_file, parse_deploy_config
from deployer.config.model import DeployConfig, Environment, environments_for_branch, json_schema
from deployer.config.repo import RepoFiles

__all__ = [
    "DEPLOY_FILE",
    "DeployConfig",
    "Environment",
    "RepoFiles",
    "environments_for_branch",
    "json_schema",
    "load_deploy_config",
    "load_values_file",
    "parse_deploy_config",
]
