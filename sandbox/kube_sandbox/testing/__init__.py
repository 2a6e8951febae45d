"""Helpers for tests against the sandbox, or against an existing cluster: the pytest plugin's fixtures use them.

`kube_sandbox.pytest_plugin` (loaded by pytest through the package's entry point) gives the fixtures; this package
gives what tests call: starting sandboxes, a registry and a busybox image in it, waiting, and workloads.
"""

from kube_sandbox.testing.cluster import KUBECONFIG_VARIABLE, Running, real_cluster, start_sandbox
from kube_sandbox.testing.registry import Registry, free_port, push_busybox, start_registry
from kube_sandbox.testing.waiting import raw, raw_bytes, unless_missing, wait_for

__all__ = [
    "KUBECONFIG_VARIABLE",
    "Registry",
    "Running",
    "free_port",
    "push_busybox",
    "raw",
    "raw_bytes",
    "real_cluster",
    "start_registry",
    "start_sandbox",
    "unless_missing",
    "wait_for",
]
