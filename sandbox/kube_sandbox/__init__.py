"""A strict local Kubernetes API server with simulated controllers (the deployer's docs/architecture.md, section 7).

Its own distribution (kube-sandbox, sandbox/ in the deployer's repository): it imports nothing from the deployer.
"""

from kube_sandbox.server import Sandbox, kubeconfig, serve

__all__ = ["Sandbox", "kubeconfig", "serve"]
