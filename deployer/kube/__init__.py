"""Adapters over the official `kubernetes` client: the only code that talks to the cluster.

So far: running Jobs to completion (the kaniko builder uses it). The canary engine's issue grows this
package (apply, prune, rollout waits, leases, release records).
"""

from deployer.kube.jobs import KubeJobRunner, connect

__all__ = ["KubeJobRunner", "connect"]
