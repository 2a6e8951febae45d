"""The kube adapter: the only code that talks to the cluster, through one asyncio client (kube/client.py)."""

from deployer.kube.client import KubeClient, connect
from deployer.kube.jobs import KubeJobRunner

__all__ = ["KubeClient", "KubeJobRunner", "connect"]
