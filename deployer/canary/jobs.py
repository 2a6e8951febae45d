"""Pre-deploy Jobs (migrations): picked from the rendered objects and from deploy.yaml's `jobs` (pure)."""

from __future__ import annotations

import copy
from typing import Any

from deployer.config.model import Job

HOOK = "deployer.dev/hook"
PRE_DEPLOY = "pre-deploy"


def split_pre_deploy(objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Jobs annotated `deployer.dev/hook: pre-deploy`, everything else)."""
    hooks: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for obj in objects:
        annotations = obj["metadata"].get("annotations") or {}
        (hooks if obj["kind"] == "Job" and annotations.get(HOOK) == PRE_DEPLOY else rest).append(obj)
    return hooks, rest


def job_from_config(job: Job, *, image: str, labels: dict[str, str]) -> dict[str, Any]:
    """A deploy.yaml `jobs` entry as a Job running the release's own image."""
    container = {"name": job.name, "image": image, "command": list(job.command), "args": list(job.args)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job.name, "labels": dict(labels), "annotations": {HOOK: PRE_DEPLOY}},
        "spec": {
            "backoffLimit": job.backoff_limit,
            "activeDeadlineSeconds": int(job.timeout),
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }


def for_revision(job: dict[str, Any], revision: int) -> dict[str, Any]:
    """Jobs are immutable: each release runs its own, named `<name>-r<revision>`."""
    out = copy.deepcopy(job)
    out["metadata"]["name"] = f"{job['metadata']['name'][:50]}-r{revision}"
    return out
