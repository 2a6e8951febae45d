"""Adapters for image builds: the builders (buildah, docker), the registry client and the build source."""

from deployer.build.builders import (
    BuildahBuilder,
    Builder,
    BuildLimits,
    BuildRequest,
    BuildUser,
    DockerBuilder,
    choose_builder,
)
from deployer.build.kaniko import JobOutcome, JobRunner, KanikoBuilder, kaniko_job
from deployer.build.registry import RegistryClient, Repository
from deployer.build.source import export_commit, resolve_commit, tree_size

__all__ = [
    "BuildLimits",
    "BuildRequest",
    "BuildUser",
    "BuildahBuilder",
    "Builder",
    "DockerBuilder",
    "JobOutcome",
    "JobRunner",
    "KanikoBuilder",
    "RegistryClient",
    "Repository",
    "choose_builder",
    "export_commit",
    "kaniko_job",
    "resolve_commit",
    "tree_size",
]
